// 新增/修改授權經辦人 (圖3-15, 3-18): 讀取憑證 asks the local card agent for the cards in the
// readers (no PIN), takes the citizen certificate (asking which one when several cards are in the
// readers, e.g. the administrator's beside the operator's), and fills 憑證序號 and 姓名 from it; the
// certificate itself goes in the hidden `certificate` field so the server reads serial and name
// from it and checks the ID's last four. Typing over the serial or name drops the certificate,
// so what is posted is always what is shown.
//
// Which way to the agent is settled when the page loads (detectMode): direct when certreg's agent
// answers this site, else the agent's popup window, opened in the click handler before its first
// await so that a popup blocker lets it through.
import { readCards, detectMode, openAgentWindow, CardError } from '/static/card-client.js';

const form = document.querySelector('form.operator-form');
if (form) {
  const agent = document.querySelector('meta[name="card-agent"]').content;
  const button = form.querySelector('#read-card');
  const status = form.querySelector('#read-status');
  const serial = form.querySelector('#serial');
  const name = form.querySelector('#name');
  const certificate = form.querySelector('#certificate');
  let busy = false;

  const say = (text) => { status.hidden = !text; status.textContent = text || ''; };

  const choiceBox = form.querySelector('#read-choice-box');
  const choice = form.querySelector('#read-choice');
  let found = [];
  // Until the agent has been asked: the popup, which works with either agent.
  let mode = 'popup';
  detectMode({ agent }).then((m) => { mode = m; }, () => {});

  // A citizen certificate carries the last four of the holder's ID (subjectID).
  const citizens = (readers) => {
    const all = [];
    for (const r of readers) {
      for (const c of (r.card && r.card.certs) || []) {
        if (c.certb64 && c.subjectID) all.push(c);
      }
    }
    return all;
  };

  const fill = (cert) => {
    serial.value = cert.sn || '';
    name.value = cert.subjectCN || '';
    certificate.value = cert.certb64;
    say(`已讀取 ${name.value} 的自然人憑證，請輸入身分證統一編號並勾選功能選單`);
    form.querySelector('#national_id').focus();
  };

  choice.addEventListener('change', () => {
    const cert = found[Number(choice.value)];
    if (choice.value !== '' && cert) fill(cert);
  });

  button.addEventListener('click', async () => {
    if (busy) return;
    let agentWindow = null;
    if (mode !== 'direct') {
      try {
        agentWindow = openAgentWindow({ agent });
      } catch (e) {
        say(`${e instanceof CardError ? e.messageZh : e.message}；亦可自行輸入憑證序號及姓名`);
        return;
      }
    }
    busy = true;
    button.disabled = true;
    say('讀取憑證中，請稍候…');
    try {
      const { readers } = await readCards({ agent, mode: 'direct', window: agentWindow });
      found = citizens(readers);
      choiceBox.hidden = found.length < 2;
      if (found.length === 0) {
        say('未讀取到自然人憑證，請插入經辦人之自然人憑證，或自行輸入憑證序號及姓名');
        return;
      }
      if (found.length === 1) {
        fill(found[0]);
        return;
      }
      const placeholder = document.createElement('option');
      placeholder.value = '';
      placeholder.textContent = '請選擇經辦人的自然人憑證';
      choice.replaceChildren(placeholder, ...found.map((c, i) => {
        const option = document.createElement('option');
        option.value = String(i);
        option.textContent = `${c.subjectCN}（憑證序號 ${c.sn}）`;
        return option;
      }));
      say(`讀取到 ${found.length} 張自然人憑證，請選擇經辦人的憑證`);
      choice.focus();
    } catch (e) {
      say(`${e instanceof CardError ? e.messageZh : e.message}；亦可自行輸入憑證序號及姓名`);
    } finally {
      busy = false;
      button.disabled = false;
    }
  });

  for (const input of [serial, name]) {
    input.addEventListener('input', () => { certificate.value = ''; });
  }
}

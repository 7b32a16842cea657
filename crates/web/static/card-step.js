// Card step pages: ask certreg for a challenge, have the local card agent sign it with the
// card and the PIN typed here, then post the proof with the other fields. The PIN goes to the
// agent only; certreg never sees it. With several cards in the readers, the page lists the ones
// that fit the step (organization or citizen, read without a PIN) and signs with the one chosen;
// on a citizen step the card whose ID's last four match the typed ID is chosen by itself.
//
// Which way to the agent is settled when the page loads: direct (certreg's agent answers this
// site through CORS) or the agent's popup window (the real HiPKI agent). The popup is opened in
// the submit handler before its first await — a popup blocker allows a window only while the
// click (or Enter) is being handled — and the challenge is fetched while it loads.
import { sign, readCards, openAgentWindow, CardError } from '/static/card-client.js';

const form = document.querySelector('form.card-step');
if (form) {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const agent = document.querySelector('meta[name="card-agent"]').content;
  const pin = form.querySelector('#pin');
  const progress = form.querySelector('#card-progress');
  const button = form.querySelector('button[type="submit"]');
  const role = form.dataset.card;
  const choiceBox = form.querySelector('#card-choice');
  const choice = form.querySelector('#card-reader');
  const idField = form.querySelector('#national_id');
  let busy = false;
  // The cards that fit this step: [{description (the reader), cert}].
  let offered = [];
  // 'direct' once the agent has answered this page directly; until then the popup, which works
  // with either agent.
  let mode = 'popup';

  // A citizen certificate carries the last four of the holder's ID; an organization's none.
  const fits = (cert) => (role === 'citizen' ? Boolean(cert.subjectID) : !cert.subjectID);
  const day = (iso) => String(iso || '').slice(0, 10).replaceAll('-', '/');

  const matchId = () => {
    if (!idField || role !== 'citizen') return;
    const last4 = idField.value.trim().slice(-4).toUpperCase();
    if (last4.length < 4) return;
    const current = offered.find((o) => o.description === choice.value);
    if (current && current.cert.subjectID.toUpperCase() === last4) return;
    const match = offered.find((o) => o.cert.subjectID.toUpperCase() === last4);
    if (match) choice.value = match.description;
  };

  const listCards = async () => {
    choice.dataset.state = 'reading';
    try {
      // Direct only: a popup nobody asked for would be blocked; without the list, the agent
      // picks the card itself and the submit reports what went wrong.
      const { readers } = await readCards({ agent, mode: 'direct', timeoutMs: 5000 });
      mode = 'direct';
      offered = [];
      for (const r of readers) {
        const cert = r.card && (r.card.certs || []).find((c) => String(c.usage).split('|').includes('digitalSignature'));
        if (cert && fits(cert)) offered.push({ description: r.description, cert });
      }
      choice.replaceChildren(...offered.map((o) => {
        const option = document.createElement('option');
        option.value = o.description;
        option.textContent = `${o.cert.subjectCN}（憑證序號 ${o.cert.sn}，有效期限至 ${day(o.cert.notAfter)}）`;
        return option;
      }));
      choiceBox.hidden = false;
      choice.disabled = offered.length === 0;
      if (offered.length === 0) {
        const option = document.createElement('option');
        option.textContent = role === 'citizen' ? '未偵測到自然人憑證，請插入卡片後點選重新讀取' : '未偵測到機關憑證，請插入卡片後點選重新讀取';
        choice.replaceChildren(option);
      }
      matchId();
      choice.dataset.state = 'ready';
    } catch (e) {
      // An answer with a ret_code (no reader, no card …) came directly: direct works.
      if (e instanceof CardError && e.retCode !== null) mode = 'direct';
      offered = [];
      choiceBox.hidden = true;
      choice.dataset.state = 'unavailable';
    }
  };

  const say = (text) => { progress.hidden = !text; progress.textContent = text || ''; };
  // A field's own message, tied to it for screen readers (aria-describedby) and focused.
  const fieldSays = (input, text) => {
    let box = form.querySelector(`#${input.id}-error`);
    if (!box && text) {
      box = document.createElement('p');
      box.className = 'field-error';
      box.id = `${input.id}-error`;
      input.after(box);
    }
    if (box) {
      box.hidden = !text;
      box.textContent = text || '';
    }
    if (text) {
      input.setAttribute('aria-invalid', 'true');
      input.setAttribute('aria-describedby', box.id);
      input.focus();
    } else {
      input.removeAttribute('aria-invalid');
      input.removeAttribute('aria-describedby');
    }
  };
  const pinSays = (text) => fieldSays(pin, text);

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    if (busy) return;
    const required = [...form.querySelectorAll('input[required]')];
    for (const input of required) fieldSays(input, '');
    for (const input of required) {
      if (!input.value.trim()) {
        const label = form.querySelector(`label[for="${input.id}"]`);
        const name = label ? label.textContent.replace('(必填)', '').trim() : '此欄位';
        fieldSays(input, `請輸入${name}`);
        return;
      }
    }
    // Before any await: the click that allows a window is still being handled.
    let agentWindow = null;
    if (mode !== 'direct') {
      try {
        agentWindow = openAgentWindow({ agent });
      } catch (e) {
        say(e instanceof CardError ? e.messageZh : e.message);
        return;
      }
    }
    busy = true;
    button.disabled = true;
    try {
      say('正在向系統取得簽章資料…');
      const res = await fetch(`/flows/${form.dataset.flow}/challenge`, {
        method: 'POST', headers: { 'x-csrf-token': csrf }, credentials: 'same-origin',
      });
      const body = await res.json();
      if (!res.ok) { throw new Error(body.message || '無法取得簽章資料'); }
      say('請稍候，憑證卡簽章中（請勿拔除卡片）…');
      const slotDescription = offered.length ? choice.value : undefined;
      const signed = await sign(body.tbs, pin.value, {
        agent, mode: 'direct', window: agentWindow, slotDescription,
      });
      pin.value = '';
      form.elements.challenge_id.value = body.challenge_id;
      form.elements.signature.value = signed.signature;
      say('簽章完成，資料送出中…');
      form.submit();
    } catch (e) {
      if (agentWindow) agentWindow.close();
      pin.value = '';
      busy = false;
      button.disabled = false;
      say('');
      if (e instanceof CardError && ['wrong_pin', 'pin_wait', 'pin_length', 'no_pin'].includes(e.code)) {
        pinSays(e.messageZh);
      } else {
        say(e instanceof CardError ? e.messageZh : e.message);
      }
    }
  });

  if (idField) idField.addEventListener('input', matchId);
  form.querySelector('#card-reread').addEventListener('click', listCards);
  listCards();
}

// Card step pages: ask certreg for a challenge, have the local card agent sign it with the
// card and the PIN typed here, then post the proof with the other fields. The PIN goes to the
// agent only; certreg never sees it.
import { sign, CardError } from '/static/card-client.js';

const form = document.querySelector('form.card-step');
if (form) {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const agent = document.querySelector('meta[name="card-agent"]').content;
  const pin = form.querySelector('#pin');
  const pinError = form.querySelector('#pin-error');
  const progress = form.querySelector('#card-progress');
  const button = form.querySelector('button[type="submit"]');
  let busy = false;

  const say = (text) => { progress.hidden = !text; progress.textContent = text || ''; };
  const pinSays = (text) => {
    pinError.hidden = !text;
    pinError.textContent = text || '';
    pin.setAttribute('aria-invalid', text ? 'true' : 'false');
    if (text) pin.focus();
  };

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    if (busy) return;
    pinSays('');
    for (const input of form.querySelectorAll('input[required]')) {
      if (!input.value.trim()) {
        const label = form.querySelector(`label[for="${input.id}"]`);
        const name = label ? label.textContent.replace('(必填)', '').trim() : '此欄位';
        if (input === pin) { pinSays(`請輸入${name}`); } else { input.focus(); say(`請輸入${name}`); }
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
      const signed = await sign(body.tbs, pin.value, { agent, mode: 'auto' });
      pin.value = '';
      form.elements.challenge_id.value = body.challenge_id;
      form.elements.signature.value = signed.signature;
      say('簽章完成，資料送出中…');
      form.submit();
    } catch (e) {
      pin.value = '';
      busy = false;
      button.disabled = false;
      say('');
      if (e instanceof CardError && ['wrong_pin', 'pin_length', 'no_pin'].includes(e.code)) {
        pinSays(e.messageZh);
      } else {
        say(e instanceof CardError ? e.messageZh : e.message);
      }
    }
  });
}

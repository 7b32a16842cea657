// The browser test page's glue: exposes card-client.js to run.mjs as window.cardTest, turning
// results and CardErrors into plain JSON so they cross page.evaluate() intact.
import { readCards, sign, openAgentWindow, CardError } from '/card-client.js';

function plain(e) {
  if (e instanceof CardError) {
    return {
      name: e.name,
      code: e.code,
      retCode: e.retCode,
      lastError: e.lastError,
      triesLeft: e.triesLeft,
      messageZh: e.messageZh,
      message: e.message,
    };
  }
  return { name: e && e.name, code: null, message: String(e && e.message) };
}

async function settle(promise) {
  try {
    return { ok: true, value: await promise };
  } catch (e) {
    return { ok: false, error: plain(e) };
  }
}

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

// A button whose click handler signs after `waitMs` (a slow challenge fetch): with the agent
// window opened in the handler before the wait (`early`), or by sign() after it. The outcome
// lands in window.cardTest.clicked.
function armClick(early, waitMs, tbs, pin, opts) {
  const button = document.createElement('button');
  button.id = 'go';
  button.textContent = '簽章';
  document.body.append(button);
  window.cardTest.clicked = new Promise((resolve) => {
    button.addEventListener('click', () => {
      let win = null;
      try {
        if (early) win = openAgentWindow(opts);
      } catch (e) {
        resolve(settle(Promise.reject(e)));
        return;
      }
      resolve(settle(sleep(waitMs).then(() => sign(tbs, pin, { ...opts, window: win || undefined }))));
    }, { once: true });
  });
}

window.cardTest = {
  readCards: (opts) => settle(readCards(opts)),
  sign: (tbs, pin, opts) => settle(sign(tbs, pin, opts)),
  armClick,
};
document.getElementById('status').textContent = 'ready';

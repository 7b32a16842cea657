// The browser test page's glue: exposes card-client.js to run.mjs as window.cardTest, turning
// results and CardErrors into plain JSON so they cross page.evaluate() intact.
import { readCards, sign, CardError } from '/card-client.js';

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

window.cardTest = {
  readCards: (opts) => settle(readCards(opts)),
  sign: (tbs, pin, opts) => settle(sign(tbs, pin, opts)),
};
document.getElementById('status').textContent = 'ready';

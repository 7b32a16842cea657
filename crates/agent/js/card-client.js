// card-client.js: the certreg pages' client of the local card agent (certreg's own agent or
// Chunghwa Telecom's HiPKI local server on http://127.0.0.1:61161). It lists readers, cards and
// certificates without a PIN and has the card sign a certreg challenge with the PIN the clerk
// typed, and turns every failure into a CardError with a zh-TW sentence for the page.
//
// One ES module, no dependencies, no build step, no eval and no inline handlers, so that the
// pages can run under a CSP without 'unsafe-inline'/'unsafe-eval'. Two transports:
//   direct: fetch() to the agent, which answers with CORS for configured sites (certreg's agent).
//   popup:  window.open(`${agent}/popupForm`) and postMessage, the only way to the real HiPKI
//           agent, which sends no CORS headers. The page must not use
//           `Cross-Origin-Opener-Policy: same-origin` (that cuts the popup off from its opener);
//           `same-origin-allow-popups` works. A popup blocker lets a window open only while the
//           click that asked for it is being handled: a page that must await something first
//           (its challenge) calls openAgentWindow() synchronously in the click handler, before
//           any await, and passes the window to sign()/readCards() as `opts.window`;
//           sign()/readCards() in popup mode without one open it before their first await.
//   auto:   direct first; when the agent is running but refuses CORS, the popup — opened after
//           an await, so only for calls a popup blocker does not stop. detectMode() tells a page
//           beforehand which of the two works.
//
// The package is built as pages written for HiPKI build it: `tbs` and `pin` through
// encodeURIComponent (both agents decode them). certreg's agent takes a PIN of printable ASCII
// other than `%` only (no spaces): anything else is refused as a parameter error before the card
// is asked. After a wrong PIN it takes no PIN for that card for a short while (`pin_wait`).
//
// The PIN lives only in the one request built for it; it is never stored, logged or put into an
// error.

export const DEFAULT_AGENT = 'http://127.0.0.1:61161';
const DEFAULT_TIMEOUT_MS = 60000;
// How long the popup may take to say it is ready. An agent that is not running leaves the popup
// on the browser's error page, which says nothing at all, so this is also how long "no agent"
// takes to be noticed in popup mode.
const DEFAULT_READY_TIMEOUT_MS = 10000;
// After the popup closes, a last answer may still be queued behind the close.
const CLOSE_GRACE_MS = 400;

// HiPKI ret_code / last_error values (certreg's agent adds 0x76000C0x; see protocol.rs).
const RET = Object.freeze({
  NO_CARD: 0x76000006,
  SITE_NOT_TRUSTED: 0x76000031,
  TBS_REFUSED: 0x76000c01,
  ORIGIN_MISMATCH: 0x76000c03,
  NO_ORIGIN: 0x76000c04,
  UNSAFE_REQUEST: 0x76000c05,
  PIN_WAIT: 0x76000c06,
  NO_PIN: 0x76000998,
  CANCELLED: 0x76000999,
  NO_READER: 0x76100003,
  LOGIN_FAILED: 0x76100006,
  CERT_NOT_FOUND: 0x7610000c,
  CERT_NOT_YET_VALID: 0x76500001,
  CERT_EXPIRED: 0x76500002,
});
const LAST = Object.freeze({ PIN_INCORRECT: 0xa0, PIN_LEN_RANGE: 0xa2, PIN_LOCKED: 0xa4 });

const MESSAGES = Object.freeze({
  no_agent: '無法連線至憑證元件，請確認已安裝並啟動',
  popup_blocked: '瀏覽器封鎖了憑證元件視窗，請允許本網站開啟彈出式視窗後再試一次',
  no_reader: '找不到讀卡機，請確認讀卡機已連接',
  no_card: '未偵測到卡片，請插入憑證卡',
  no_cert: '卡片中找不到可簽章的憑證，請確認插入的是正確的憑證卡',
  wrong_pin: 'PIN 碼錯誤，請重新輸入',
  card_locked: '憑證卡已鎖住，請洽發卡單位解鎖',
  pin_length: 'PIN 碼長度不正確，請重新輸入',
  pin_wait: 'PIN 碼錯誤後須稍候數秒才能再試，請稍候再輸入',
  no_pin: '請輸入 PIN 碼',
  cancelled: '已取消操作',
  site_not_trusted: '此網站未被元件信任，請洽系統管理人員設定憑證元件',
  cert_expired: '憑證已過期，請改用有效的憑證卡',
  cert_not_yet_valid: '憑證尚未生效，請於生效日後再使用',
  tbs_refused: '憑證元件拒絕簽署此內容，請重新整理頁面後再試一次',
  origin_mismatch: '憑證元件拒絕簽章：簽章挑戰屬於其他網站，與本網頁的網站不符。請直接由本網站的網址重新操作',
  request_refused: '憑證元件拒絕此請求（請求未標示來源網站或方式不安全），請重新整理頁面後再試一次',
  timeout: '憑證元件未在時限內回應，請再試一次',
  agent_error: '憑證元件發生錯誤',
});

/** A failure of the card agent or the card, with a stable `code` and a zh-TW `messageZh`. */
export class CardError extends Error {
  constructor(code, { retCode = null, lastError = null, triesLeft = null, messageZh, detail } = {}) {
    const zh = messageZh || MESSAGES[code] || MESSAGES.agent_error;
    super(detail ? `${zh} (${detail})` : zh);
    this.name = 'CardError';
    this.code = code;
    this.retCode = retCode;
    this.lastError = lastError;
    this.triesLeft = triesLeft;
    this.messageZh = zh;
  }
}

const hex = (n) => '0x' + (Number(n) >>> 0).toString(16).toUpperCase().padStart(8, '0');

/** The CardError of an agent answer whose ret_code is not 0. */
function errorOfAnswer(answer) {
  const retCode = Number(answer.ret_code) >>> 0;
  const lastError = Number(answer.last_error || 0) >>> 0;
  const base = { retCode, lastError };
  switch (retCode) {
    case RET.NO_READER: return new CardError('no_reader', base);
    case RET.NO_CARD: return new CardError('no_card', base);
    case RET.CERT_NOT_FOUND: return new CardError('no_cert', base);
    case RET.NO_PIN: return new CardError('no_pin', base);
    case RET.CANCELLED: return new CardError('cancelled', base);
    case RET.SITE_NOT_TRUSTED: return new CardError('site_not_trusted', base);
    case RET.CERT_EXPIRED: return new CardError('cert_expired', base);
    case RET.CERT_NOT_YET_VALID: return new CardError('cert_not_yet_valid', base);
    case RET.TBS_REFUSED: return new CardError('tbs_refused', base);
    case RET.ORIGIN_MISMATCH: return new CardError('origin_mismatch', base);
    case RET.NO_ORIGIN: case RET.UNSAFE_REQUEST: return new CardError('request_refused', base);
    case RET.PIN_WAIT: return new CardError('pin_wait', base);
    case RET.LOGIN_FAILED:
      if (lastError === LAST.PIN_LOCKED) return new CardError('card_locked', { ...base, triesLeft: 0 });
      if (lastError === LAST.PIN_LEN_RANGE) return new CardError('pin_length', base);
      if (lastError === LAST.PIN_INCORRECT) return wrongPin(answer, base);
      break;
    default:
      break;
  }
  // The agent's own wording (HiPKI's where it has one) tells the helpdesk more than a bare code.
  const said = typeof answer.message === 'string' && answer.message ? `：${answer.message}` : '';
  return new CardError('agent_error', {
    ...base,
    messageZh: `${MESSAGES.agent_error}（代碼 ${hex(retCode)}${lastError ? ` / ${hex(lastError)}` : ''}）${said}`,
  });
}

/** Wrong PIN: certreg's agent says how many tries are left; HiPKI only says "final try" by flags. */
function wrongPin(answer, base) {
  let triesLeft = null;
  if (Number.isInteger(answer.triesLeft)) triesLeft = answer.triesLeft;
  else if (answer.flags && answer.flags.finalTry) triesLeft = 1;
  let messageZh = MESSAGES.wrong_pin;
  if (triesLeft === 1) messageZh = 'PIN 碼錯誤，尚可再試 1 次，再錯一次卡片將被鎖住';
  else if (triesLeft !== null) messageZh = `PIN 碼錯誤，尚可再試 ${triesLeft} 次`;
  return new CardError('wrong_pin', { ...base, triesLeft, messageZh });
}

function options(opts) {
  const o = opts || {};
  const agent = String(o.agent || DEFAULT_AGENT).replace(/\/+$/, '');
  let agentOrigin;
  try {
    agentOrigin = new URL(agent).origin;
  } catch (e) {
    throw new CardError('agent_error', { detail: `agent URL ${agent} is not a URL` });
  }
  const mode = o.mode || 'auto';
  if (!['direct', 'popup', 'auto'].includes(mode)) {
    throw new CardError('agent_error', { detail: `mode ${mode} is not direct, popup or auto` });
  }
  const timeoutMs = o.timeoutMs > 0 ? o.timeoutMs : DEFAULT_TIMEOUT_MS;
  const readyTimeoutMs = Math.min(
    timeoutMs,
    o.readyTimeoutMs > 0 ? o.readyTimeoutMs : DEFAULT_READY_TIMEOUT_MS,
  );
  return { agent, agentOrigin, mode, timeoutMs, readyTimeoutMs };
}

/** Whether anything answers HTTP at the agent's address. An opaque (no-cors) GET tells a running
 * agent that refuses us CORS apart from no agent at all, which a failed fetch() cannot. */
async function agentReachable(o) {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), Math.min(o.timeoutMs, 5000));
  try {
    await fetch(`${o.agent}/popupForm`, {
      mode: 'no-cors', credentials: 'omit', cache: 'no-store', signal: ctl.signal,
    });
    return true;
  } catch (e) {
    return false;
  } finally {
    clearTimeout(timer);
  }
}

// Thrown by direct() when fetch failed for a network or CORS reason (not a timeout), so that
// auto mode can try the popup.
class Unreachable extends Error {}

async function direct(o, path, body) {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), o.timeoutMs);
  let response;
  try {
    response = await fetch(`${o.agent}${path}`, {
      method: 'POST',
      // JSON makes /sign a preflighted request: the body (with the PIN) leaves the browser only
      // after the agent has accepted this site's origin.
      headers: body === undefined ? {} : { 'Content-Type': 'application/json' },
      body: body === undefined ? '' : body,
      credentials: 'omit',
      cache: 'no-store',
      signal: ctl.signal,
    });
  } catch (e) {
    if (ctl.signal.aborted) throw new CardError('timeout');
    throw new Unreachable();
  } finally {
    clearTimeout(timer);
  }
  try {
    return await response.json();
  } catch (e) {
    throw new CardError('agent_error', { detail: `HTTP ${response.status}, answer is not JSON` });
  }
}

/**
 * Which mode works with the agent at `opts.agent`, asked without a PIN and without a window:
 * `'direct'` when it answers this page through CORS (certreg's agent, for a trusted site),
 * else `'popup'` (the real HiPKI agent, no agent, or a site it does not trust — the popup then
 * says which).
 */
export async function detectMode(opts = {}) {
  const o = options({ ...opts, mode: 'direct', timeoutMs: opts.timeoutMs || 3000 });
  try {
    const answer = await direct(o, '/pkcs11info');
    return answer && typeof answer === 'object' && answer.ret_code !== undefined ? 'direct' : 'popup';
  } catch (e) {
    return 'popup';
  }
}

/** A direct() failure in direct mode: running but refusing us, or not there. */
async function unreachableError(o) {
  return (await agentReachable(o)) ? new CardError('site_not_trusted') : new CardError('no_agent');
}

function parseMessage(data) {
  if (typeof data === 'string') {
    try {
      return JSON.parse(data);
    } catch (e) {
      return null;
    }
  }
  return data && typeof data === 'object' ? data : null;
}

/**
 * Opens the popup and starts listening to it at once (its ready signal may come before the
 * request is known); must run before the caller's first await (popup blockers). Returns the
 * window handle that viaPopup() uses; close() it when it ends up unused.
 */
function openPopup(o) {
  const popup = window.open(
    `${o.agent}/popupForm`,
    '_blank',
    'popup=yes,width=480,height=360',
  );
  if (!popup) throw new CardError('popup_blocked');
  const handle = {
    popup,
    agentOrigin: o.agentOrigin,
    ready: false,
    used: false,
    onReady: null,
    onAnswer: null,
    close() {
      window.removeEventListener('message', listener);
      try {
        if (!popup.closed) popup.close();
      } catch (e) { /* already gone */ }
    },
  };
  // Only our popup, only from the agent's origin: any other window could post look-alikes.
  function listener(event) {
    if (event.source !== popup || event.origin !== o.agentOrigin) return;
    const msg = parseMessage(event.data);
    if (!msg) return;
    if (msg.func === 'getTbs') {
      if (!handle.ready) {
        handle.ready = true;
        if (handle.onReady) handle.onReady();
      }
    } else if (handle.onAnswer) {
      handle.onAnswer(msg);
    }
  }
  window.addEventListener('message', listener);
  return handle;
}

/**
 * Opens the agent's window now — call it synchronously in the click handler, before any await —
 * for one later sign() or readCards() with `{ window: handle }`. Throws CardError
 * `popup_blocked` when the browser refuses. Call `handle.close()` if it is not used after all.
 */
export function openAgentWindow(opts = {}) {
  return openPopup(options({ ...opts, mode: 'popup' }));
}

/**
 * One request through an open popup: wait for its ready signal (perhaps already received), post
 * `makeRequest()` to the agent origin only, wait for the one answer. `makeRequest` is called only
 * then, so the PIN exists in a message for as short a time as possible.
 */
function viaPopup(o, handle, makeRequest) {
  const { popup } = handle;
  if (handle.used) return Promise.reject(new CardError('agent_error', { detail: 'the agent window was used already' }));
  handle.used = true;
  return new Promise((resolve, reject) => {
    let state = 'waiting'; // → 'sent' → 'done'
    let readyTimer = null;
    let answerTimer = null;
    let closeTimer = null;
    const poll = setInterval(() => {
      if (state !== 'done' && popup.closed && closeTimer === null) {
        closeTimer = setTimeout(() => finish(new CardError('cancelled', { detail: 'popup closed' })), CLOSE_GRACE_MS);
      }
    }, 250);
    function finish(result) {
      if (state === 'done') return;
      const wasWaiting = state === 'waiting';
      state = 'done';
      handle.onReady = null;
      handle.onAnswer = null;
      clearInterval(poll);
      clearTimeout(readyTimer);
      clearTimeout(answerTimer);
      clearTimeout(closeTimer);
      handle.close();
      if (result instanceof Error) {
        if (wasWaiting && result.code === 'timeout') {
          // Never ready: either no agent (the popup shows the browser's error page) or an agent
          // that does not trust this site (certreg's agent then sends its ready signal to the
          // configured sites only, which the browser does not deliver here).
          agentReachable(o).then(
            (up) => reject(new CardError(up ? 'site_not_trusted' : 'no_agent')),
            () => reject(new CardError('no_agent')),
          );
        } else {
          reject(result);
        }
      } else {
        resolve(result);
      }
    }
    function send() {
      if (state !== 'waiting') return;
      state = 'sent';
      clearTimeout(readyTimer);
      answerTimer = setTimeout(() => finish(new CardError('timeout')), o.timeoutMs);
      // HiPKI pages post the request as a JSON string; certreg's popup reads both.
      popup.postMessage(JSON.stringify(makeRequest()), handle.agentOrigin);
    }
    handle.onAnswer = (msg) => {
      if (state === 'sent') finish(msg);
    };
    readyTimer = setTimeout(() => finish(new CardError('timeout')), o.readyTimeoutMs);
    if (handle.ready) send();
    else handle.onReady = send;
  });
}

function checkAnswer(answer) {
  if (!answer || typeof answer !== 'object' || answer.ret_code === undefined) {
    throw new CardError('agent_error', { detail: 'the agent answered something else' });
  }
  if (Number(answer.ret_code) !== 0) throw errorOfAnswer(answer);
  return answer;
}

/** Runs one agent request in the chosen mode; `popup` is already open in popup mode. */
async function run(o, popup, directCall, popupRequest) {
  if (o.mode === 'direct') {
    try {
      return checkAnswer(await directCall());
    } catch (e) {
      if (e instanceof Unreachable) throw await unreachableError(o);
      throw e;
    }
  }
  if (o.mode === 'auto') {
    try {
      return checkAnswer(await directCall());
    } catch (e) {
      if (!(e instanceof Unreachable)) throw e;
      // Nothing listening: a popup would only show an error page.
      if (!(await agentReachable(o))) throw new CardError('no_agent');
      popup = openPopup(o);
    }
  }
  return checkAnswer(await viaPopup(o, popup, popupRequest));
}

function readersOf(answer) {
  const slots = Array.isArray(answer.slots) ? answer.slots : [];
  return slots.map((s) => ({
    slotId: s.slotID,
    description: s.slotDescription,
    card: s.token
      ? {
          serialNumber: s.token.serialNumber,
          label: s.token.label,
          flags: s.token.flags || null,
          triesLeft: Number.isInteger(s.token.triesLeft) ? s.token.triesLeft : null,
          certs: (s.token.certs || []).map((c) => ({ ...c })),
        }
      : null,
  }));
}

/**
 * Readers, the cards in them and their certificates (with `certb64`), read without a PIN.
 * Returns `{readers: [{slotId, description, card: null | {serialNumber, label, flags,
 * triesLeft, certs: [{label, usage, certb64, sn, subjectDN, subjectCN, subjectID, issuerDN,
 * notBefore, notAfter}]}}], serverVersion}`.
 */
export async function readCards(opts = {}) {
  const o = options(opts.window ? { ...opts, mode: 'popup' } : opts);
  const popup = opts.window || (o.mode === 'popup' ? openPopup(o) : null);
  const answer = await run(
    o,
    popup,
    () => direct(o, '/pkcs11info?withcert=true'),
    () => ({ func: 'pkcs11info', withcert: true }),
  );
  return { readers: readersOf(answer), serverVersion: answer.serverVersion || null };
}

/**
 * Has the card sign `tbs` (a certreg challenge text) with `pin`. Returns `{signature, certb64,
 * cardSN}` (base64; `signature` is CMS SignedData for PKCS7, the bare signature for PKCS1).
 */
export async function sign(tbs, pin, opts = {}) {
  const o = options(opts.window ? { ...opts, mode: 'popup' } : opts);
  if (typeof tbs !== 'string' || tbs === '') {
    throw new CardError('tbs_refused', { detail: 'no text to sign' });
  }
  if (typeof pin !== 'string' || pin === '') throw new CardError('no_pin');
  const signatureType = opts.signatureType || 'PKCS7';
  if (signatureType !== 'PKCS7' && signatureType !== 'PKCS1') {
    throw new CardError('agent_error', { detail: `signatureType ${signatureType}` });
  }
  const popup = opts.window || (o.mode === 'popup' ? openPopup(o) : null);
  // Built on demand and not kept: the PIN goes into exactly one request body or message.
  const pkg = () => {
    const p = {
      func: 'MakeSignature',
      tbs: encodeURIComponent(tbs),
      tbsEncoding: 'NONE',
      hashAlgorithm: 'SHA256',
      signatureType,
      pin: encodeURIComponent(pin),
      nonce: opts.nonce || '',
      withCardSN: opts.withCardSN ? 'true' : 'false',
    };
    if (opts.slotDescription) p.slotDescription = opts.slotDescription;
    return p;
  };
  const answer = await run(o, popup, () => direct(o, '/sign', JSON.stringify(pkg())), pkg);
  return {
    signature: answer.signature,
    certb64: answer.certb64,
    cardSN: answer.cardSN || null,
  };
}

// The browser half of the HiPKI-style page test (`cargo test -p agent --test browser`): drives
// hipki.html — written the way pages for the real HiPKI local server are — in Debian's headless
// Chromium against certreg's agent: the /p11Image.bmp check, reading the certificate by popup
// with the subject split on ",", signing a certreg challenge by popup and by an IE-style form
// POST, a wrong PIN, a locked card, a refused relay (another trusted site's challenge), a base64
// TBS with a non-ASCII space inside and a window that is not the popup's opener. Prints ONE JSON line ({checks, signatures, elapsedMs});
// exits 1 when a check failed, 2 when it could not run. Logs go to stderr.

import { chromium } from 'playwright-core';

const env = (name) => {
  const v = process.env[name];
  if (!v) {
    console.error(`hipki.mjs: ${name} is not set (run it through cargo test -p agent --test browser)`);
    process.exit(2);
  }
  return v;
};
const SITE = env('CERTREG_SITE_URL');
const FOREIGN = env('CERTREG_FOREIGN_URL');
const AGENT = env('CERTREG_AGENT_URL');
const CASES = JSON.parse(env('CERTREG_BROWSER_CASES'));
const CHROMIUM = process.env.CERTREG_CHROMIUM || '/usr/bin/chromium';

const started = Date.now();
const checks = [];
const signatures = [];
const guard = setTimeout(() => {
  console.error('hipki.mjs: gave up after 120 s');
  console.log(JSON.stringify({ checks, signatures, elapsedMs: Date.now() - started, aborted: true }));
  process.exit(2);
}, 120000);

class CheckFailed extends Error {}
const expect = (cond, what) => {
  if (!cond) throw new CheckFailed(what);
};

let browser;
async function check(name, url, body) {
  const t0 = Date.now();
  const context = await browser.newContext();
  const page = await context.newPage();
  let ok = false;
  let detail = '';
  try {
    await page.goto(`${url}/hipki.html`);
    await page.waitForFunction(() => document.getElementById('status').textContent === 'ready');
    await page.evaluate((a) => window.setAgent(a), AGENT);
    detail = (await body(page, context)) || '';
    ok = true;
  } catch (e) {
    detail = e instanceof CheckFailed ? e.message : `${e.name}: ${e.message}`;
  }
  console.error(`${ok ? 'ok  ' : 'FAIL'} ${name} (${Date.now() - t0} ms)${detail ? ` — ${detail}` : ''}`);
  checks.push({ name, ok, detail });
  await context.close();
}

const { org, lockme } = CASES.cards;

const plan = [
  ['the /p11Image.bmp check reads pkcs11info from the pixels', SITE, async (page) => {
    const r = await page.evaluate(() => window.hipkiCheck());
    expect(r.installed, `not installed: ${JSON.stringify(r)}`);
    expect(r.width === 2000 && r.height === 1, `image ${r.width}x${r.height}`);
    expect(/^certreg-agent\//.test(r.serverVersion), `serverVersion ${r.serverVersion}`);
    const reader = r.info.slots.find((s) => s.slotDescription === org.reader);
    expect(reader && reader.token.serialNumber === org.cardNumber, `slots ${JSON.stringify(r.info.slots)}`);
    return r.serverVersion;
  }],
  ['a site the agent does not trust reads no image: 未安裝元件', FOREIGN, async (page) => {
    const r = await page.evaluate(() => window.hipkiCheck());
    expect(!r.installed && r.message === '未安裝元件', JSON.stringify(r));
    return r.message;
  }],
  ['GetUserCert by popup: the subject split on "," and "=", dates from notAfterT', SITE, async (page) => {
    const r = await page.evaluate(() => window.hipkiGetUserCert());
    expect(r.ret.ret_code === 0, `ret ${JSON.stringify(r.ret).slice(0, 300)}`);
    expect(r.subject.C === 'TW', `C ${JSON.stringify(r.subject)}`);
    const want = CASES.subjects[r.cardSN];
    expect(want, `card ${r.cardSN} is none of the inserted`);
    expect((r.subject.CN ?? null) === want.cn, `CN ${r.subject.CN}, expected ${want.cn}`);
    if (want.serialNumber) expect(r.subject.serialNumber === want.serialNumber, `serialNumber ${r.subject.serialNumber}`);
    expect(r.notAfterT === want.notAfterT, `notAfterT ${r.notAfterT}`);
    expect(r.certb64 === want.certb64, 'certb64 differs');
    return `${r.subject.CN}, ${r.notAfter}`;
  }],
  ['MakeSignature by popup: a certreg challenge, percent-encoded', SITE, async (page) => {
    const r = await page.evaluate(([t, p, s]) => window.hipkiSignPopup(t, p, s), [CASES.tbs['hipki-popup'], org.pin, org.reader]);
    expect(r.ret.ret_code === 0, `${r.shown}`);
    expect(r.ret.cardSN === org.cardNumber, `cardSN ${r.ret.cardSN}`);
    signatures.push({ key: 'hipki-popup', card: org.name, type: 'PKCS7', signature: r.ret.signature, certb64: r.ret.certb64 });
    return r.shown;
  }],
  ['MakeSignature by an IE-style form POST', SITE, async (page) => {
    const r = await page.evaluate(([t, p, s]) => window.hipkiSignDirect(t, p, s), [CASES.tbs['hipki-direct'], org.pin, org.reader]);
    expect(r.ret.ret_code === 0, `${r.shown}`);
    signatures.push({ key: 'hipki-direct', card: org.name, type: 'PKCS7', signature: r.ret.signature, certb64: r.ret.certb64 });
    return r.shown;
  }],
  ['a wrong PIN by popup: PIN碼錯誤', SITE, async (page) => {
    const r = await page.evaluate(([t, p, s]) => window.hipkiSignPopup(t, p, s), [CASES.tbs['hipki-wrong'], org.wrongPin, org.reader]);
    expect(r.ret.ret_code === 0x76100006 && r.ret.last_error === 0xa0, JSON.stringify(r.ret));
    expect(r.shown === 'PIN碼錯誤', r.shown);
    expect(r.ret.message2 === '剩餘 2 次機會', `message2 ${r.ret.message2}`);
    return r.shown;
  }],
  ['three wrong PINs lock the card; the page shows the code and the reason', SITE, async (page) => {
    const sign = (pin) => page.evaluate(([t, p, s]) => window.hipkiSignDirect(t, p, s), [CASES.tbs['hipki-lock'], pin, lockme.reader]);
    for (let i = 0; i < 2; i += 1) {
      const r = await sign(lockme.wrongPin);
      expect(r.ret.last_error === 0xa0, `try ${i + 1}: ${JSON.stringify(r.ret)}`);
    }
    const locked = await sign(lockme.wrongPin);
    expect(locked.ret.ret_code === 0x76100006 && locked.ret.last_error === 0xa4, JSON.stringify(locked.ret));
    const after = await sign(lockme.pin);
    expect(after.ret.last_error === 0xa4, `the right PIN after the lock: ${JSON.stringify(after.ret)}`);
    expect(after.shown.includes('0x76100006') && after.shown.includes('鎖卡'), after.shown);
    return after.shown;
  }],
  ['a refused relay by popup: another trusted site\'s challenge, its own code and message', SITE, async (page) => {
    const r = await page.evaluate(([t, p, s]) => window.hipkiSignPopup(t, p, s), [CASES.tbs['hipki-other'], org.wrongPin, org.reader]);
    expect(r.ret.ret_code === 0x76000c03, JSON.stringify(r.ret));
    expect(r.shown.includes('0x76000C03') && r.shown.includes('其他網站') && r.shown.includes('次原因:'), r.shown);
    const shown = await page.textContent('#result');
    expect(shown === r.shown, `the page shows ${shown}`);
    return r.shown;
  }],
  ['a base64 TBS with U+0085 inside is refused by popup and agent alike, never signed', SITE, async (page) => {
    // The right PIN: had either side taken U+0085 for whitespace, the card would have signed.
    const r = await page.evaluate(([t, p, s]) => {
      const b64 = btoa(t);
      const odd = `${b64.slice(0, 8)}\u0085${b64.slice(8)}`;
      const data = makePackage('MakeSignature', odd, p, { slotDescription: s, tbsEncoding: 'base64' });
      return hipkiPopup(data).then((ret) => ({ ret, shown: showResult(ret) }));
    }, [CASES.tbs['hipki-b64'], org.pin, org.reader]);
    expect(r.ret.ret_code === 0x76600002, JSON.stringify(r.ret));
    expect(!r.ret.signature, 'a signature came back');
    return r.shown;
  }],
  ['a refused relay by form POST: the same code', SITE, async (page) => {
    const r = await page.evaluate(([t, p, s]) => window.hipkiSignDirect(t, p, s), [CASES.tbs['hipki-other'], org.wrongPin, org.reader]);
    expect(r.ret.ret_code === 0x76000c03, JSON.stringify(r.ret));
    return r.shown;
  }],
  ['the popup ignores a window of the same site that did not open it', SITE, async (page, context) => {
    // The page opens the popup, then a second window of the site, and hands it the popup's
    // handle; the second window posts a request (with a wrong PIN) to the popup.
    const popupSeen = context.waitForEvent('page');
    await page.evaluate((a) => { window.__agentPopup = window.open(`${a}/popupForm`, 'signWindow', 'height=200,width=200'); }, AGENT);
    const popup = await popupSeen;
    await popup.waitForLoadState('load');
    const otherSeen = context.waitForEvent('page');
    await page.evaluate((s) => { window.__other = window.open(`${s}/hipki.html`, 'otherWindow'); }, SITE);
    const other = await otherSeen;
    // The new window is about:blank until the site's page has loaded: no #status yet.
    await other.waitForFunction(() => document.getElementById('status')?.textContent === 'ready');
    await page.evaluate(() => { window.__other.__agentPopup = window.__agentPopup; });
    const answered = await other.evaluate(([a, data]) => new Promise((resolve) => {
      const w = window.__agentPopup;
      if (!w || w.closed) { resolve('no handle on the popup'); return; }
      window.addEventListener('message', (ev) => { if (ev.origin === new URL(a).origin && !String(ev.data).includes('getTbs')) resolve(String(ev.data)); });
      w.postMessage(data, new URL(a).origin);
      setTimeout(() => resolve(null), 2000);
    }), [AGENT, JSON.stringify({ func: 'MakeSignature', tbs: encodeURIComponent(CASES.tbs['hipki-unused']), pin: org.wrongPin, slotDescription: org.reader })]);
    expect(answered === null, `the popup answered a window that did not open it: ${answered}`);
    const status = await popup.textContent('#status');
    expect(status.includes('等待網頁的請求'), `popup status: ${status}`);
    return 'ignored';
  }],
];

try {
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  for (const [name, url, body] of plan) await check(name, url, body);
} catch (e) {
  console.error(`hipki.mjs: ${e.stack || e}`);
  checks.push({ name: 'hipki.mjs', ok: false, detail: String(e.message || e) });
} finally {
  if (browser) await browser.close().catch(() => {});
}
clearTimeout(guard);
console.log(JSON.stringify({ checks, signatures, elapsedMs: Date.now() - started }));
process.exit(checks.every((c) => c.ok) ? 0 : 1);

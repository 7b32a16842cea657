// The browser half of `cargo test -p agent --test browser`: drives Debian's headless Chromium
// (playwright-core, no downloaded browser) through card-client.js against the real agent the
// Rust test started, in direct and popup mode. Prints ONE JSON line on stdout ({checks,
// signatures, elapsedMs}) for the Rust side, which verifies the signatures with the pki crate;
// exits 1 when a check failed (with a screenshot in CERTREG_SCREENSHOT_DIR), 2 when it could
// not run at all. Logs go to stderr.

import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import path from 'node:path';

const env = (name) => {
  const v = process.env[name];
  if (!v) {
    console.error(`run.mjs: ${name} is not set (run it through cargo test -p agent --test browser)`);
    process.exit(2);
  }
  return v;
};

const SITE = env('CERTREG_SITE_URL'); // allowed origin, serves page.html
const FOREIGN = env('CERTREG_FOREIGN_URL'); // same files, origin the agent does not trust
const AGENT = env('CERTREG_AGENT_URL');
const DEAD_AGENT = env('CERTREG_DEAD_AGENT_URL'); // nothing listens there
const SILENT_AGENT = env('CERTREG_SILENT_AGENT_URL'); // accepts connections, never answers
const CASES = JSON.parse(env('CERTREG_BROWSER_CASES'));
const SHOTS = env('CERTREG_SCREENSHOT_DIR');
const CHROMIUM = process.env.CERTREG_CHROMIUM || '/usr/bin/chromium';

const started = Date.now();
const checks = [];
const signatures = [];
// chromium.launch() starts from a fresh temporary profile each time: no state between runs.
const LAUNCH = {
  executablePath: CHROMIUM,
  headless: true,
  args: [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ],
};
// Short where a failure is the expected outcome (an agent that never answers the popup).
const QUICK = { readyTimeoutMs: 3000, timeoutMs: 15000 };
const NORMAL = { timeoutMs: 20000 };

const guard = setTimeout(() => {
  console.error('run.mjs: gave up after 120 s');
  console.log(JSON.stringify({ checks, signatures, elapsedMs: Date.now() - started, aborted: true }));
  process.exit(2);
}, 120000);

class CheckFailed extends Error {}
const expect = (cond, what) => {
  if (!cond) throw new CheckFailed(what);
};

/** The error a call should have ended with: code, and optionally text in messageZh. */
function expectError(result, code, { zhIncludes, triesLeft } = {}) {
  expect(!result.ok, `expected ${code}, got success ${String(JSON.stringify(result.value)).slice(0, 200)}`);
  const e = result.error;
  expect(e.name === 'CardError', `not a CardError: ${JSON.stringify(e)}`);
  expect(e.code === code, `expected ${code}, got ${e.code}: ${e.messageZh}`);
  expect(typeof e.messageZh === 'string' && /[\u4e00-\u9fff]/.test(e.messageZh), `no zh-TW message: ${JSON.stringify(e)}`);
  if (zhIncludes) expect(e.messageZh.includes(zhIncludes), `message ${e.messageZh} lacks ${zhIncludes}`);
  if (triesLeft !== undefined) expect(e.triesLeft === triesLeft, `triesLeft ${e.triesLeft}, expected ${triesLeft}`);
  return e;
}

/** A card's tries left as the agent reports them, asked from node (no page, no PIN). */
async function triesLeftOf(card) {
  const info = await (await fetch(`${AGENT}/pkcs11info`, { cache: 'no-store' })).json();
  const slot = (info.slots || []).find((s) => s.slotDescription === card.reader);
  return slot && slot.token ? slot.token.triesLeft : undefined;
}

function expectOk(result) {
  expect(result.ok, `failed: ${JSON.stringify(result.error)}`);
  return result.value;
}

let browser;
const slug = (s) => s.replace(/[^a-z0-9]+/gi, '-').replace(/^-|-$/g, '').toLowerCase();

async function screenshot(name, pages) {
  mkdirSync(SHOTS, { recursive: true });
  const saved = [];
  for (const [i, p] of pages.entries()) {
    if (!p || p.isClosed()) continue;
    const file = path.join(SHOTS, `${slug(name)}${i ? `-${i}` : ''}.png`);
    try {
      await p.screenshot({ path: file, fullPage: true });
      saved.push(file);
    } catch (e) {
      console.error(`screenshot of ${name} failed: ${e.message}`);
    }
  }
  return saved;
}

/** Runs one named check with its own page (and whatever popups it opens). */
async function check(name, url, body) {
  const t0 = Date.now();
  const context = await browser.newContext();
  const pages = [];
  context.on('page', (p) => pages.push(p));
  const page = await context.newPage();
  const cspErrors = [];
  page.on('console', (m) => {
    if (m.type() === 'error' && /Content Security Policy/i.test(m.text())) cspErrors.push(m.text());
  });
  let ok = false;
  let detail = '';
  try {
    if (url) {
      await page.goto(`${url}/page.html`);
      await page.waitForFunction(() => window.cardTest !== undefined, null, { timeout: 10000 });
    }
    detail = (await body(page, context)) || '';
    expect(cspErrors.length === 0, `CSP violations: ${cspErrors.join('; ')}`);
    ok = true;
  } catch (e) {
    detail = e instanceof CheckFailed ? e.message : `${e.name}: ${e.message}`;
    const shots = await screenshot(name, pages);
    for (const s of shots) console.error(`screenshot: ${s}`);
  }
  const ms = Date.now() - t0;
  console.error(`${ok ? 'ok  ' : 'FAIL'} ${name} (${ms} ms)${detail ? ` — ${detail}` : ''}`);
  checks.push({ name, ok, detail, ms });
  await context.close();
}

const call = (page, fn, ...args) => page.evaluate(([f, a]) => window.cardTest[f](...a), [fn, args]);

function modeChecks(mode) {
  const m = { mode, agent: AGENT };
  const { org, admin } = CASES.cards;

  check_(`${mode}: readCards lists the inserted cards and their certificates`, SITE, async (page) => {
    const v = expectOk(await call(page, 'readCards', { ...m, ...NORMAL }));
    for (const want of [org, admin]) {
      const reader = v.readers.find((r) => r.description === want.reader);
      expect(reader, `no reader ${want.reader} in ${JSON.stringify(v.readers.map((r) => r.description))}`);
      expect(reader.card && reader.card.serialNumber === want.cardNumber, `reader ${want.reader}: card ${JSON.stringify(reader.card && reader.card.serialNumber)}`);
      const cert = reader.card.certs[0];
      expect(cert && cert.certb64 === want.certb64, `${want.reader}: certificate differs`);
      // Serials compare as numbers: the agent keeps a leading zero nibble of the DER integer.
      const bare = (x) => String(x).replace(/^0+/, '').toUpperCase();
      expect(bare(cert.sn) === bare(want.sn), `${want.reader}: sn ${cert.sn} != ${want.sn}`);
      expect(cert.usage.split('|').includes('digitalSignature'), `usage ${cert.usage}`);
      expect(reader.card.triesLeft === 3, `triesLeft ${reader.card.triesLeft}`);
    }
    return `${v.readers.length} readers, ${v.serverVersion}`;
  });

  check_(`${mode}: wrong PIN gives wrong_pin with the tries left`, SITE, async (page) => {
    const r = await call(page, 'sign', CASES.tbs[`${mode}-pkcs7`], org.wrongPin, { ...m, ...NORMAL, slotDescription: org.reader });
    const e = expectError(r, 'wrong_pin', { zhIncludes: '尚可再試 2 次', triesLeft: 2 });
    expect(e.retCode === 0x76100006 && e.lastError === 0xa0, `codes ${e.retCode}/${e.lastError}`);
    return e.messageZh;
  });

  check_(`${mode}: sign PKCS7 (organization card, nonce, card number)`, SITE, async (page, context) => {
    // The agent's /sign as the browser sent it: from the page (direct) or from the popup, which
    // names the page that posted to it in the relay header.
    const sent = [];
    context.on('request', (req) => {
      if (req.method() === 'POST' && req.url() === `${AGENT}/sign`) {
        sent.push({ relay: req.headers()['x-certreg-relay-origin'], from: req.frame().page() === page ? 'page' : 'popup' });
      }
    });
    const r = await call(page, 'sign', CASES.tbs[`${mode}-pkcs7`], org.pin, {
      ...m, ...NORMAL, signatureType: 'PKCS7', slotDescription: org.reader, withCardSN: true, nonce: CASES.nonce,
    });
    const v = expectOk(r);
    expect(sent.length === 1, `requests to /sign: ${JSON.stringify(sent)}`);
    if (mode === 'popup') {
      const opener = await page.evaluate(() => window.location.origin);
      expect(sent[0].from === 'popup' && sent[0].relay === opener, `relay header ${JSON.stringify(sent[0])}, opener ${opener}`);
    } else {
      expect(sent[0].from === 'page' && sent[0].relay === undefined, `direct request ${JSON.stringify(sent[0])}`);
    }
    expect(v.cardSN === org.cardNumber, `cardSN ${v.cardSN}`);
    expect(v.certb64 === org.certb64, 'certb64 is not the card certificate');
    signatures.push({ key: `${mode}-pkcs7`, card: org.name, type: 'PKCS7', ...v });
    return `${v.signature.length} base64 chars`;
  });

  check_(`${mode}: sign PKCS1 (citizen card)`, SITE, async (page) => {
    const r = await call(page, 'sign', CASES.tbs[`${mode}-pkcs1`], admin.pin, {
      ...m, ...NORMAL, signatureType: 'PKCS1', slotDescription: admin.reader,
    });
    const v = expectOk(r);
    expect(v.certb64 === admin.certb64, 'certb64 is not the card certificate');
    signatures.push({ key: `${mode}-pkcs1`, card: admin.name, type: 'PKCS1', ...v });
    return `${v.signature.length} base64 chars`;
  });

  check_(`${mode}: another trusted site's challenge gives origin_mismatch (a refused relay)`, SITE, async (page) => {
    const e = expectError(
      await call(page, 'sign', CASES.tbs.other, org.wrongPin, { ...m, ...NORMAL, slotDescription: org.reader }),
      'origin_mismatch',
      { zhIncludes: '其他網站' },
    );
    expect(e.retCode === 0x76000c03, `retCode ${e.retCode}`);
    return e.messageZh;
  });

  check_(`${mode}: a TBS that is not a certreg challenge gives tbs_refused`, SITE, async (page) => {
    const e = expectError(await call(page, 'sign', CASES.badTbs, org.pin, { ...m, ...NORMAL }), 'tbs_refused');
    expect(e.retCode === 0x76000c01, `retCode ${e.retCode}`);
    return e.messageZh;
  });

  check_(`${mode}: a page of a non-allowed origin gets site_not_trusted`, FOREIGN, async (page, context) => {
    let popups = 0;
    context.on('page', () => { popups += 1; });
    const t = Date.now();
    const read = await call(page, 'readCards', { ...m, ...QUICK });
    const e1 = expectError(read, 'site_not_trusted');
    const s = await call(page, 'sign', CASES.tbs.foreign, org.pin, { ...m, ...QUICK });
    expectError(s, 'site_not_trusted');
    if (mode === 'direct') {
      // The agent's own answer (0x76000031) is unreadable without CORS: the client infers it.
      expect(popups === 0, 'direct mode opened a window');
    } else {
      // The agent's popup posts its ready signal to the configured sites only; the browser
      // drops it for this opener, so nothing ever answers and the client, after
      // readyTimeoutMs, finds the agent running and reports site_not_trusted.
      expect(popups === 2, `expected the 2 popups to have been opened, saw ${popups}`);
      expect(Date.now() - t >= 2 * QUICK.readyTimeoutMs, 'answered before the ready timeout');
    }
    return `${e1.messageZh} (both calls ${Date.now() - t} ms)`;
  });

  if (mode === 'popup') {
    check_('popup: the agent popup ignores a request posted by a non-allowed origin', FOREIGN, async (page, context) => {
      // What a hostile page would do: skip the ready signal and post a request right away.
      const popupPage = context.waitForEvent('page');
      await page.evaluate((agent) => { window.__popup = window.open(`${agent}/popupForm`, '_blank', 'popup=yes'); }, AGENT);
      const popup = await popupPage;
      await popup.waitForLoadState('load');
      const answered = await page.evaluate(([agent, req]) => new Promise((resolve) => {
        const onMessage = (ev) => { if (ev.source === window.__popup) resolve(String(ev.data)); };
        window.addEventListener('message', onMessage);
        window.__popup.postMessage(JSON.stringify(req), new URL(agent).origin);
        setTimeout(() => resolve(null), 2000);
      }), [AGENT, { func: 'MakeSignature', tbs: CASES.tbs.foreign, tbsEncoding: 'NONE', hashAlgorithm: 'SHA256', signatureType: 'PKCS7', pin: org.wrongPin, slotDescription: org.reader }]);
      expect(answered === null, `the popup answered a foreign origin: ${answered}`);
      const status = await popup.textContent('#status');
      expect(status.includes('等待網頁的請求'), `popup status: ${status}`);
      // Nothing reached the card: its counter is where the previous right PIN left it.
      const tries = await triesLeftOf(org);
      expect(tries === 3, `triesLeft ${tries} after the foreign page's wrong PIN`);
      return `no answer in 2 s; popup still says ${status}; triesLeft ${tries}`;
    });
    check_('popup: a challenge swapped after the popup\'s own check is refused by the agent itself', SITE, async (page, context) => {
      // The popup checks the challenge's origin itself before it asks the agent; this swaps in
      // another trusted site's challenge on the way from the popup to the agent, so that the
      // agent's own comparison with the relay header is what refuses it.
      const before = await triesLeftOf(org);
      const seen = [];
      await context.route(`${AGENT}/sign`, async (route) => {
        const req = route.request();
        const body = JSON.parse(req.postData());
        body.tbs = encodeURIComponent(CASES.tbs.other);
        const response = await route.fetch({ postData: JSON.stringify(body) });
        const answer = await response.json();
        seen.push({ relay: req.headers()['x-certreg-relay-origin'], retCode: answer.ret_code });
        await route.fulfill({ response });
      });
      const e = expectError(
        await call(page, 'sign', CASES.tbs['relay-swap'], org.wrongPin, { ...m, ...NORMAL, slotDescription: org.reader }),
        'origin_mismatch',
        { zhIncludes: '其他網站' },
      );
      expect(seen.length === 1, `requests to the agent's /sign: ${JSON.stringify(seen)}`);
      expect(seen[0].relay === new URL(SITE).origin, `relay header ${seen[0].relay}`);
      expect(seen[0].retCode === 0x76000c03 && e.retCode === 0x76000c03, `agent ${seen[0].retCode}, page ${e.retCode}`);
      const after = await triesLeftOf(org);
      expect(before === 3 && after === before, `triesLeft ${before} → ${after}`);
      return `${e.messageZh} (the agent's answer; triesLeft ${after})`;
    });
  }

  check_(`${mode}: no agent on the port gives no_agent`, SITE, async (page) => {
    const e = expectError(await call(page, 'readCards', { ...m, ...QUICK, agent: DEAD_AGENT }), 'no_agent');
    const s = await call(page, 'sign', CASES.tbs.foreign, org.pin, { ...m, ...QUICK, agent: DEAD_AGENT });
    expectError(s, 'no_agent');
    return e.messageZh;
  });
}

// Checks are queued and run one after another (one browser, shared agent state).
const queue = [];
const check_ = (name, url, body) => queue.push(() => check(name, url, body));

function directOnlyChecks() {
  const { expired, lockme } = CASES.cards;
  check_('direct: an expired certificate gives cert_expired', SITE, async (page) => {
    const e = expectError(
      await call(page, 'sign', CASES.tbs.expired, expired.pin, { mode: 'direct', agent: AGENT, ...NORMAL, slotDescription: expired.reader }),
      'cert_expired',
    );
    return e.messageZh;
  });
  check_('direct: three wrong PINs count down, then card_locked', SITE, async (page) => {
    const o = { mode: 'direct', agent: AGENT, ...NORMAL, slotDescription: lockme.reader };
    const seen = [];
    const e1 = expectError(await call(page, 'sign', CASES.tbs.lock, lockme.wrongPin, o), 'wrong_pin', { triesLeft: 2, zhIncludes: '尚可再試 2 次' });
    const e2 = expectError(await call(page, 'sign', CASES.tbs.lock, lockme.wrongPin, o), 'wrong_pin', { triesLeft: 1, zhIncludes: '尚可再試 1 次' });
    const e3 = expectError(await call(page, 'sign', CASES.tbs.lock, lockme.wrongPin, o), 'card_locked', { zhIncludes: '鎖住' });
    // Locked means locked: even the right PIN is refused now.
    const e4 = expectError(await call(page, 'sign', CASES.tbs.lock, lockme.pin, o), 'card_locked');
    seen.push(e1.messageZh, e2.messageZh, e3.messageZh, e4.code);
    return seen.join(' / ');
  });
  check_('direct: an agent that never answers gives timeout', SITE, async (page) => {
    const e = expectError(await call(page, 'readCards', { mode: 'direct', agent: SILENT_AGENT, timeoutMs: 1500 }), 'timeout');
    return e.messageZh;
  });
  check_('direct: an empty PIN gives no_pin without asking the agent', SITE, async (page) => {
    const e = expectError(await call(page, 'sign', CASES.tbs.lock, '', { mode: 'direct', agent: AGENT }), 'no_pin');
    return e.messageZh;
  });
  check_('popup: the clerk closing the popup gives cancelled', SITE, async (page, context) => {
    // A dead agent keeps the popup on an error page, so closing it is the only way out.
    context.once('page', (p) => setTimeout(() => p.close().catch(() => {}), 700));
    const e = expectError(
      await call(page, 'readCards', { mode: 'popup', agent: DEAD_AGENT, readyTimeoutMs: 8000, timeoutMs: 15000 }),
      'cancelled',
    );
    return e.messageZh;
  });
  check_('auto: direct when the agent answers CORS', SITE, async (page, context) => {
    let popups = 0;
    context.on('page', () => { popups += 1; });
    const v = expectOk(await call(page, 'readCards', { mode: 'auto', agent: AGENT, ...NORMAL }));
    expect(popups === 0, 'auto mode opened a popup although direct works');
    return `${v.readers.length} readers`;
  });
  check_('auto: falls back to the popup when the agent sends no CORS', FOREIGN, async (page, context) => {
    let popups = 0;
    context.on('page', () => { popups += 1; });
    const e = expectError(await call(page, 'readCards', { mode: 'auto', agent: AGENT, ...QUICK }), 'site_not_trusted');
    expect(popups === 1, `expected one popup, saw ${popups}`);
    return e.messageZh;
  });
}

function ejectedChecks() {
  check_('status page: eject every card (the agent page and its own form)', null, async (page) => {
    await page.goto(`${AGENT}/`);
    for (let n = 0; n < 10; n += 1) {
      const button = page.getByRole('button', { name: '退出' }).first();
      if ((await button.count()) === 0) break;
      await Promise.all([page.waitForEvent('framenavigated'), button.click()]);
      await page.waitForLoadState('load');
    }
    const text = await page.textContent('body');
    expect(text.includes('未插入IC卡'), 'the status page does not show an empty reader');
    return 'all cards ejected';
  });
  for (const mode of ['direct', 'popup']) {
    check_(`${mode}: after ejecting every card, sign gives no_card`, SITE, async (page) => {
      const r = await call(page, 'readCards', { mode, agent: AGENT, ...NORMAL });
      const v = expectOk(r);
      expect(v.readers.length >= 1 && v.readers.every((x) => x.card === null), `readers ${JSON.stringify(v.readers)}`);
      const e = expectError(
        await call(page, 'sign', CASES.tbs.nocard, CASES.cards.org.pin, { mode, agent: AGENT, ...NORMAL }),
        'no_card',
      );
      expect(e.retCode === 0x76000006, `retCode ${e.retCode}`);
      return e.messageZh;
    });
  }
}

async function popupBlockedChecks() {
  // Playwright starts Chromium with --disable-popup-blocking; without it, a window.open that no
  // click caused is blocked, as in a real browser.
  const strict = await chromium.launch({ ...LAUNCH, ignoreDefaultArgs: ['--disable-popup-blocking'] });
  const strictCheck = async (name, body) => {
    const t0 = Date.now();
    const page = await strict.newPage();
    let ok = false;
    let detail = '';
    try {
      await page.goto(`${SITE}/page.html`);
      await page.waitForFunction(() => window.cardTest !== undefined);
      detail = (await body(page)) || '';
      ok = true;
    } catch (e) {
      detail = e.message;
      for (const s of await screenshot(name, [page])) console.error(`screenshot: ${s}`);
    }
    const ms = Date.now() - t0;
    console.error(`${ok ? 'ok  ' : 'FAIL'} ${name} (${ms} ms) — ${detail}`);
    checks.push({ name, ok, detail, ms });
    await page.close().catch(() => {});
  };
  const { org } = CASES.cards;
  const opts = { mode: 'popup', agent: AGENT, ...NORMAL, slotDescription: org.reader, withCardSN: true, nonce: CASES.nonce };
  await strictCheck('popup: window.open without a click gives popup_blocked', async (page) => {
    // page.evaluate runs as if clicked (transient activation); a first window.open consumes
    // that activation, as a page that already opened one window would have.
    const r = await page.evaluate(async (o) => {
      const first = window.open('about:blank', '_blank');
      if (first) first.close();
      return window.cardTest.readCards(o);
    }, { mode: 'popup', agent: AGENT, ...QUICK });
    return expectError(r, 'popup_blocked').messageZh;
  });
  // A click whose handler awaits longer than the click's activation lasts (5 s in Chromium)
  // before the window is opened: the blocker stops it. This shows the blocker is on.
  await strictCheck('popup blocker on: a window opened after a slow await is blocked', async (page) => {
    await page.evaluate(([t, p, o]) => window.cardTest.armClick(false, 5500, t, p, o), [CASES.tbs['blocked-late'], org.pin, opts]);
    await page.click('#go');
    const r = await page.evaluate(() => window.cardTest.clicked);
    return expectError(r, 'popup_blocked').messageZh;
  });
  await strictCheck('popup blocker on: openAgentWindow in the click, then a slow await, signs', async (page) => {
    await page.evaluate(([t, p, o]) => window.cardTest.armClick(true, 5500, t, p, o), [CASES.tbs['blocked-early'], org.pin, opts]);
    await page.click('#go');
    const v = expectOk(await page.evaluate(() => window.cardTest.clicked));
    signatures.push({ key: 'blocked-early', card: org.name, type: 'PKCS7', ...v });
    return `${v.signature.length} base64 chars`;
  });
  await strict.close();
}

try {
  browser = await chromium.launch(LAUNCH);
  console.error(`chromium ${browser.version()}`);
  for (const mode of ['direct', 'popup']) modeChecks(mode);
  directOnlyChecks();
  for (const run of queue.splice(0)) await run();
  // Before the status page ejects every card.
  await popupBlockedChecks();
  ejectedChecks();
  for (const run of queue.splice(0)) await run();
} catch (e) {
  console.error(`run.mjs: ${e.stack || e}`);
  checks.push({ name: 'run.mjs', ok: false, detail: String(e.message || e), ms: 0 });
} finally {
  if (browser) await browser.close().catch(() => {});
}
clearTimeout(guard);
const elapsedMs = Date.now() - started;
console.log(JSON.stringify({ checks, signatures, elapsedMs }));
process.exit(checks.every((c) => c.ok) ? 0 : 1);

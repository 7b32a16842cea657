// The card step in popup mode with Chromium's popup blocker ON (`cargo test -p web --test e2e`):
// Playwright launches Chromium with --disable-popup-blocking unless told otherwise; here it is
// left out. The page's direct calls to the agent fail (as with the real HiPKI agent, which
// answers no CORS), so card-step.js uses the agent's popup window, and certreg's challenge is
// answered 5.5 s late — longer than a click's activation lasts in Chromium (5 s), so a window
// opened after that await would be blocked. The clerk types the PIN and presses Enter; the step
// must complete. Prints ONE JSON line ({checks}); exits 1 when a check failed.

import { chromium } from 'playwright-core';

const env = (name) => {
  const v = process.env[name];
  if (!v) {
    console.error(`popup.mjs: ${name} is not set (run it through cargo test -p web --test e2e)`);
    process.exit(2);
  }
  return v;
};
const WEB = env('CERTREG_WEB_URL');
const AGENT = env('CERTREG_AGENT_URL');
const CASE = JSON.parse(env('CERTREG_E2E_POPUP'));
const CHROMIUM = process.env.CERTREG_CHROMIUM || '/usr/bin/chromium';
const TIMEOUT = 20000;
const checks = [];
const guard = setTimeout(() => {
  console.log(JSON.stringify({ checks, aborted: true }));
  process.exit(2);
}, 90000);
const sleep = (ms) => new Promise((r) => { setTimeout(r, ms); });
class CheckFailed extends Error {}
const expect = (cond, what) => {
  if (!cond) throw new CheckFailed(what);
};

let browser;
async function check(name, body) {
  let ok = false;
  let detail = '';
  try {
    detail = (await body()) || '';
    ok = true;
  } catch (e) {
    detail = e instanceof CheckFailed ? e.message : `${e.name}: ${e.message.split('\n')[0]}`;
  }
  console.error(`${ok ? 'ok  ' : 'FAIL'} ${name}${detail ? ` — ${detail}` : ''}`);
  checks.push({ name, ok, detail });
  return ok;
}

try {
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    ignoreDefaultArgs: ['--disable-popup-blocking'],
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });

  await check('the popup blocker is on: a window opened 5.5 s after the click is blocked', async () => {
    const page = await browser.newPage();
    await page.goto(`${WEB}/`);
    const blocked = await page.evaluate(async () => {
      await new Promise((r) => { setTimeout(r, 5500); });
      const w = window.open('about:blank', '_blank');
      if (w) w.close();
      return w === null;
    });
    await page.close();
    expect(blocked, 'the late window was opened: the blocker is off');
    return 'blocked';
  });

  await check('card step in popup mode: PIN typed, Enter, the popup signs, the step completes', async () => {
    const context = await browser.newContext();
    const page = await context.newPage();
    const problems = [];
    page.on('pageerror', (e) => problems.push(e.message));
    let popups = 0;
    let refusedDirect = 0;
    context.on('page', (p) => { if (p !== page) popups += 1; });
    // The page's own calls to the agent (POSTs) fail as CORS makes them fail with the real
    // HiPKI agent; the page's opaque probe (a no-cors GET) and the popup's requests go through.
    await context.route(`${AGENT}/**`, (route) => {
      // A navigation (the popup's document) may have no frame yet; it is never the page's.
      const request = route.request();
      const frame = request.isNavigationRequest() ? null : request.frame();
      if (frame && frame.page() === page && request.method() === 'POST') {
        refusedDirect += 1;
        return route.abort('failed');
      }
      return route.continue();
    });
    await context.route(/\/flows\/[^/]+\/challenge$/, async (route) => {
      await sleep(5500);
      await route.continue();
    });
    await page.goto(`${WEB}/`);
    await page.getByRole('navigation', { name: '功能列' }).getByRole('link', { name: '首次註冊', exact: true }).click();
    // The flow's door page: 開始 posts the form that starts the flow.
    await page.getByRole('button', { name: '開始', exact: true }).click();
    await page.getByRole('button', { name: '同意條款內容' }).click();
    await page.locator('main h1', { hasText: '首次註冊－機關憑證確認' }).waitFor({ timeout: TIMEOUT });
    const pin = page.locator('#pin');
    expect((await pin.getAttribute('autocomplete')) === 'one-time-code', `PIN autocomplete ${await pin.getAttribute('autocomplete')}`);
    expect((await pin.getAttribute('name')) === null, 'the PIN field has a name');
    await page.getByLabel('機關代號').click();
    await page.keyboard.type(CASE.code);
    await page.waitForFunction(() => document.querySelector('#card-reader').dataset.state !== 'reading', null, { timeout: TIMEOUT });
    await pin.click();
    await page.keyboard.type(CASE.pin);
    const navigated = page.waitForEvent('framenavigated', { timeout: TIMEOUT });
    await page.keyboard.press('Enter');
    try {
      await navigated;
    } catch {
      const said = await page.locator('#card-progress, #pin-error, main .error').allTextContents();
      throw new CheckFailed(`nothing happened after Enter; the page says: ${said.filter(Boolean).join(' / ') || '(nothing)'}`);
    }
    await page.locator('main h1', { hasText: CASE.next }).waitFor({ timeout: TIMEOUT });
    expect(popups === 1, `${popups} agent windows opened`);
    expect(refusedDirect >= 1, 'the page never tried the agent directly');
    expect(problems.length === 0, `page errors: ${problems.join('; ')}`);
    await context.close();
    return `${CASE.next} after the popup signed (${refusedDirect} direct calls refused)`;
  });
} catch (e) {
  console.error(`popup.mjs: ${e.stack || e}`);
  checks.push({ name: 'popup.mjs', ok: false, detail: String(e.message || e) });
} finally {
  if (browser) await browser.close().catch(() => {});
}
clearTimeout(guard);
console.log(JSON.stringify({ checks }));
process.exit(checks.length === 2 && checks.every((c) => c.ok) ? 0 : 1);

// The browser half of `cargo test -p web --test e2e`: walks the manual's chapter 3 through
// certreg's real pages in Debian's headless Chromium (playwright-core, no downloaded browser),
// typing into the fields and pressing the buttons like a person, with the real card agent the
// Rust test started doing the signing. Prints ONE JSON line on stdout ({steps, expected,
// elapsedMs}); exits 1 naming the failed step (its screenshot in CERTREG_SCREENSHOT_DIR/e2e-<step>.png),
// 2 when it could not run at all. Logs go to stderr. Any console error, uncaught page error or
// CSP violation fails the step it happened in.
//
// Steps 8–9 span two days: after the reviewer's 核准 the walk writes advance.json (the
// effective date shown) into CERTREG_E2E_SYNC and waits for the Rust side to move the
// service's clock and answer with advanced.json.

import { chromium } from 'playwright-core';
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';

// axe-core, the accessibility rules engine, evaluated into each page through the DevTools
// protocol (the pages' CSP allows no injected script, and none is needed).
const AXE = readFileSync(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8');
const WCAG21AA = ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'];

const env = (name) => {
  const v = process.env[name];
  if (!v) {
    console.error(`walk.mjs: ${name} is not set (run it through cargo test -p web --test e2e)`);
    process.exit(2);
  }
  return v;
};

const WEB = env('CERTREG_WEB_URL');
const AGENT = env('CERTREG_AGENT_URL');
const W = JSON.parse(env('CERTREG_E2E'));
const SHOTS = env('CERTREG_SCREENSHOT_DIR');
const CHROMIUM = process.env.CERTREG_CHROMIUM || '/usr/bin/chromium';
const SYNC = env('CERTREG_E2E_SYNC');
const C = W.cards;
const A = W.matching;
const M = W.mismatch;
const TIMEOUT = 15000;

const started = Date.now();
const steps = [];
const LAUNCH = {
  executablePath: CHROMIUM,
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
};

const guard = setTimeout(() => {
  console.error('walk.mjs: gave up after 150 s');
  console.log(JSON.stringify({ steps, expected: PLAN.length, elapsedMs: Date.now() - started, aborted: true }));
  process.exit(2);
}, 150000);

class StepFailed extends Error {}
const expect = (cond, what) => {
  if (!cond) throw new StepFailed(what);
};
const bare = (s) => String(s || '').replace(/[^0-9a-f]/gi, '').replace(/^0+/, '').toUpperCase();

// ---------------------------------------------------------------------------------------------
// A person at the browser.

/** Problems the page reported: console errors, uncaught exceptions, CSP violations. */
function watch(page, problems) {
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(`console: ${m.text()}${m.location().url ? ` (${m.location().url})` : ''}`);
  });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
}

const h1 = (page) => page.locator('main h1');

/** Waits until the page's title (h1) is exactly `title`, then checks the page with axe. */
async function onPage(page, title, figure) {
  await page.locator('main h1', { hasText: title }).first().waitFor({ timeout: TIMEOUT });
  const got = (await h1(page).textContent()).trim();
  expect(got === title, `expected the page ${title}, got ${got}`);
  if (figure) {
    const fig = (await h1(page).getAttribute('data-figure')) ?? '';
    expect(fig === figure, `${title}: figure ${fig}, expected ${figure}`);
  }
  await accessible(page, title);
}

/** Pages checked by axe: their title, and whether they showed a message. */
const axeChecked = new Set();

/**
 * axe-core's WCAG 2.1 A and AA rules on the page as it stands: any violation fails the step,
 * naming the rule and the elements. Each page is checked once plain and once with a message
 * (error or notice) shown.
 */
async function accessible(page, title) {
  await page.waitForLoadState('load');
  const where = new URL(page.url());
  const route = `${where.pathname.replace(/\/(?:[0-9a-f-]{16,}|\d+)(?=\/|$)/gi, '/:id')}${where.search ? '?…' : ''}`;
  const said = await page.locator('main .error, main .notice, main .success, main .field-error:not([hidden])').count() > 0;
  const key = `${title} ${route}${said ? ' (with a message)' : ''}`;
  if (axeChecked.has(key)) return;
  axeChecked.add(key);
  if (!(await page.evaluate('typeof window.axe === "object"'))) await page.evaluate(AXE);
  const violations = await page.evaluate(async (tags) => {
    const r = await window.axe.run(document, { runOnly: { type: 'tag', values: tags }, resultTypes: ['violations'] });
    return r.violations.map((v) => `${v.id} (${v.impact}): ${v.help} — ${v.nodes.slice(0, 3).map((n) => n.target.join(' ')).join(', ')}`);
  }, WCAG21AA);
  expect(violations.length === 0, `axe, WCAG 2.1 AA, on ${title}: ${violations.join('; ')}`);
}

/** Chooses a function from the left menu (功能列), as the manual says. */
async function menu(page, item) {
  const nav = page.getByRole('navigation', { name: '功能列' });
  await nav.getByRole('link', { name: item, exact: true }).click();
  await start(page);
}

/** A flow's door page (reading it stores nothing): 開始 posts the form that starts the flow. */
async function start(page) {
  await page.waitForLoadState('load');
  if (/\/flows\/new\//.test(new URL(page.url()).pathname)) {
    await accessible(page, (await h1(page).textContent()).trim());
    await page.getByRole('button', { name: '開始', exact: true }).click();
    await page.waitForLoadState('load');
  }
}

/** Types into the field labelled `label` with the keyboard, replacing what was there. */
async function type(page, label, text) {
  const field = page.getByLabel(label, { exact: false }).first();
  await field.click();
  await page.keyboard.press('ControlOrMeta+A');
  await page.keyboard.press('Delete');
  if (text) await page.keyboard.type(text);
  return field;
}

async function agree(page, title, figure) {
  await onPage(page, title, figure);
  await page.getByRole('button', { name: '同意條款內容' }).click();
}

/**
 * A card step: the fields typed, the card chosen when the page offers a choice, the PIN typed
 * and Enter pressed in it; the card agent signs. Returns once the page has moved on (the next
 * page's title `next`), or, with `stay`, once the page shows the PIN error.
 */
async function cardStep(page, { title, figure, code, card, pin, next, stay, refused }) {
  await onPage(page, title, figure);
  if (code !== undefined) await type(page, '機關代號', code);
  if (card.nationalId && (await page.getByLabel('身分證統一編號').count())) {
    await type(page, '身分證統一編號', card.nationalId);
  }
  await pickCard(page, card);
  const pinField = page.locator('#pin');
  await pinField.click();
  await page.keyboard.type(pin ?? card.pin);
  const navigated = stay ? null : page.waitForEvent('framenavigated', { timeout: TIMEOUT });
  await page.keyboard.press('Enter');
  if (stay) return;
  try {
    await navigated;
  } catch {
    const said = await page.locator('#card-progress, #pin-error, main .error').allTextContents();
    throw new StepFailed(`${title}: nothing happened after Enter in the PIN field; the page says: ${said.filter(Boolean).join(' / ') || '(nothing)'}`);
  }
  await page.waitForLoadState('load');
  const now = (await h1(page).textContent()).trim();
  if (refused) {
    // The service refuses the card: the step comes back with its message.
    expect(now === title, `${title}: expected the step back with a message, got ${now}`);
    await accessible(page, title);
    return (await text(page, '#step-error')).trim();
  }
  if (now === title) {
    const err = await page.locator('main .error, main .field-error:not([hidden])').allTextContents();
    throw new StepFailed(`${title}: the card step stayed on its page: ${err.join(' / ') || '(no message)'}`);
  }
  await onPage(page, next);
}

/** The card the step should use, when the page lets the person choose among the inserted cards. */
async function pickCard(page, card) {
  const choice = page.locator('#card-reader');
  if (!(await choice.count())) return;
  await page.waitForFunction(() => {
    const s = document.querySelector('#card-reader');
    return s && s.dataset.state && s.dataset.state !== 'reading';
  }, null, { timeout: TIMEOUT });
  expect((await choice.getAttribute('data-state')) === 'ready', 'the page could not list the cards in the readers');
  const options = await choice.locator('option').evaluateAll((os) => os.map((o) => ({ value: o.value, text: o.textContent })));
  const mine = options.find((o) => bare(o.text).includes(bare(card.serial)) || o.text.includes(card.serial));
  expect(mine, `no card with serial ${card.serial} (${card.name}) offered: ${options.map((o) => o.text).join(' | ')}`);
  await choice.selectOption(mine.value);
}

/** Confirmation page (圖3-9 …): the administrator's data typed in. */
async function contact(page, { name, email, phone }) {
  await type(page, '姓名', name);
  await type(page, '電子信箱', email);
  await type(page, '連絡電話', phone);
}

const text = async (page, sel = 'main') => (await page.locator(sel).first().innerText()).replace(/\s+/g, ' ');

// ---------------------------------------------------------------------------------------------
// The walk.

const admin = { name: '王大明', email: 'admin@example.gov.tw', phone: '(02)2701-3411' };
const renewedAdmin = { name: '王大明', email: 'wang@example.gov.tw', phone: '02-2345-6789' };
const admin2 = { name: C['moica-admin2'].holder, email: 'chen@example.gov.tw', phone: '02-2345-6780' };
const operator = C['moica-operator-1'];
const granted = ['加保作業', '查詢作業'];

let browser;
let clerk; // the agency's browser (one session through the walk)
let clerkProblems;

async function listRow(page, name) {
  return page.locator('table.list tbody tr', { hasText: name });
}

/**
 * 功能選單 (圖3-15, 3-18) as laid out in the browser, at `width` px: every box directly beside
 * its label, the boxes in columns that line up, nothing wider than the window, and the label
 * clickable (a click on its text checks the box). A screenshot of the fieldset is kept.
 */
async function checkFunctionLayout(page, width) {
  mkdirSync(SHOTS, { recursive: true });
  const before = page.viewportSize();
  await page.setViewportSize({ width, height: 900 });
  try {
    const boxes = await page.locator('fieldset.functions label.check').evaluateAll((labels) => labels.map((l) => {
      const input = l.querySelector('input').getBoundingClientRect();
      const text = l.querySelector('span').getBoundingClientRect();
      return { gap: text.left - input.right, dy: Math.abs((text.top + text.bottom) / 2 - (input.top + input.bottom) / 2), left: input.left };
    }));
    expect(boxes.length > 1, `功能選單 has ${boxes.length} boxes`);
    for (const b of boxes) {
      expect(b.gap >= 0 && b.gap <= 12, `at ${width}px a box sits ${b.gap.toFixed(1)}px from its label`);
      expect(b.dy <= 6, `at ${width}px a box is ${b.dy.toFixed(1)}px off its label's line`);
    }
    const columns = [...new Set(boxes.map((b) => Math.round(b.left)))];
    expect(columns.length <= Math.max(1, Math.ceil(boxes.length / 2)), `at ${width}px the boxes start at ${columns.join(', ')} (columns do not line up)`);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
    expect(overflow <= 0, `at ${width}px the page is ${overflow}px wider than the window`);
    await page.locator('fieldset.functions').screenshot({ path: path.join(SHOTS, `functions-${width}.png`) });
    const first = page.locator('fieldset.functions label.check').first();
    const wasChecked = await first.locator('input').isChecked();
    await first.locator('span').click();
    expect((await first.locator('input').isChecked()) !== wasChecked, 'a click on the label text does not toggle its box');
    await first.locator('span').click();
  } finally {
    if (before) await page.setViewportSize(before);
  }
}

async function addOperator(page, functions) {
  await page.getByRole('button', { name: '新增', exact: true }).click();
  await onPage(page, '授權指派－新增授權經辦人', '圖3-15');
  for (const width of [1280, 360]) await checkFunctionLayout(page, width);
  await page.getByRole('button', { name: '讀取憑證' }).click();
  const choice = page.locator('#read-choice');
  // Several citizen cards in the readers: the page asks which one is the operator's.
  await page.waitForFunction(() => {
    const s = document.querySelector('#serial');
    const c = document.querySelector('#read-choice');
    return (s && s.value) || (c && !c.hidden && c.options.length > 1);
  }, null, { timeout: TIMEOUT });
  if ((await choice.count()) && (await choice.isVisible())) {
    const options = await choice.locator('option').evaluateAll((os) => os.map((o) => ({ value: o.value, text: o.textContent })));
    const mine = options.find((o) => o.text.includes(operator.holder) && bare(o.text).includes(bare(operator.serial)));
    expect(mine, `讀取憑證 offers no ${operator.holder}: ${options.map((o) => o.text).join(' | ')}`);
    await choice.selectOption(mine.value);
  }
  const serial = await page.locator('#serial').inputValue();
  const name = await page.locator('#name').inputValue();
  expect(bare(serial) === bare(operator.serial), `讀取憑證 filled serial ${serial}, expected ${operator.serial}`);
  expect(name === operator.holder, `讀取憑證 filled name ${name}, expected ${operator.holder}`);
  await type(page, '身分證統一編號', operator.nationalId);
  for (const f of functions) await page.getByLabel(f, { exact: true }).check();
  await page.getByRole('button', { name: '確認', exact: true }).click();
  await onPage(page, '授權指派－授權經辦人清單');
  const flash = await text(page, 'main .success');
  expect(flash.includes('新增成功'), `flash ${flash}`);
  const row = await text(page, `table.list tbody tr:has-text("${operator.holder}")`);
  for (const f of functions) expect(row.includes(f), `row lacks ${f}: ${row}`);
}

/**
 * A person at another computer: `body(page)` in a browser context of its own, with the same
 * console/CSP watch as the clerk's (and its screenshot on failure).
 */
/**
 * Presses Tab until the focus is on the control named `name` (a link's or button's text, a
 * field's label); every stop on the way must show a visible focus ring.
 */
async function tabTo(page, name, max = 80) {
  for (let i = 0; i < max; i++) {
    await page.keyboard.press('Tab');
    const f = await page.evaluate(() => {
      const e = document.activeElement;
      if (!e || e === document.body) return null;
      const cs = getComputedStyle(e);
      return {
        tag: e.tagName,
        text: (e.innerText || e.value || '').trim(),
        label: e.labels && e.labels[0] ? e.labels[0].innerText.trim() : '',
        ring: cs.outlineStyle !== 'none' && parseFloat(cs.outlineWidth) >= 2,
      };
    });
    if (!f) continue;
    expect(f.ring, `no visible focus on ${f.tag} ${f.text || f.label}`);
    if (f.text === name || f.label.startsWith(name)) return;
  }
  throw new StepFailed(`Tab never reached ${name}`);
}

async function elsewhere(name, body, allow) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const problems = [];
  watch(page, problems);
  try {
    const detail = await body(page);
    const left = allow ? problems.filter((p) => !allow.test(p)) : problems;
    expect(left.length === 0, `the page reported: ${left.join('; ')}`);
    return detail;
  } catch (e) {
    await shoot(name, page);
    e.shot = true;
    throw e;
  } finally {
    await context.close();
  }
}

let effective; // the date the reviewer's 核准 was shown, YYYY/MM/DD
const reviewNote = '已電話確認識別碼';

const PLAN = [
  ['0 axe finds what it should: an unlabelled field, low contrast, no lang', async () => {
    const context = await browser.newContext();
    try {
      const page = await context.newPage();
      await page.setContent('<html><body><main><h1 style="color:#bbb;background:#fff">標題</h1><input id="x"></main></body></html>');
      await page.evaluate(AXE);
      const ids = await page.evaluate(async (tags) => (await window.axe.run(document, { runOnly: { type: 'tag', values: tags } })).violations.map((v) => v.id), WCAG21AA);
      for (const rule of ['label', 'color-contrast', 'html-has-lang']) expect(ids.includes(rule), `axe missed ${rule}: ${ids.join(', ')}`);
      return ids.join(', ');
    } finally {
      await context.close();
    }
  }],
  ['1 首次註冊 mismatch agency: terms, 機關代號 + PIN, 圖3-6, contact, 圖3-7', async () => {
    const page = clerk;
    await page.goto(`${WEB}/`);
    await onPage(page, '憑證註冊與指派作業', '圖3-2');
    await menu(page, '首次註冊');
    await agree(page, '首次註冊－用戶約定條款', '圖3-4');
    await cardStep(page, {
      title: '首次註冊－機關憑證確認', figure: '圖3-5', code: M, card: C['gca-agency-mismatch'], next: '首次註冊－機關憑證註冊申請人確認',
    });
    const warn = await text(page, 'main .warning');
    expect(warn.includes('貴機關申請憑證註冊，因申請資料比對不符，需進行審核，請填聯絡資料'), `圖3-6 says ${warn}`);
    expect((await h1(page).getAttribute('data-figure')) === '圖3-6', 'not 圖3-6');
    await type(page, '姓名', '林小華');
    await type(page, '電話', '(02)2960-3456');
    await page.getByRole('button', { name: '確認', exact: true }).click();
    await onPage(page, '首次註冊－機關憑證比對不符', '圖3-7');
    const msg = await text(page, 'main');
    for (const want of ['次一營業日', '(02)27013411', '承保第一科', '5312']) expect(msg.includes(want), `圖3-7 lacks ${want}: ${msg}`);
    return msg;
  }],
  ['2 首次註冊 matching agency: org card, administrator card', async () => {
    const page = clerk;
    await menu(page, '首次註冊');
    await agree(page, '首次註冊－用戶約定條款', '圖3-4');
    await cardStep(page, {
      title: '首次註冊－機關憑證確認', figure: '圖3-5', code: A, card: C['gca-agency'], next: '首次註冊－自然人憑證確認',
    });
    await cardStep(page, { title: '首次註冊－自然人憑證確認', figure: '圖3-8', card: C['moica-admin'], next: '首次註冊' });
  }],
  ['2 首次註冊 圖3-9: 電子信箱 left empty, the message beside it', async () => {
    const page = clerk;
    await onPage(page, '首次註冊', '圖3-9');
    const certs = await text(page, 'main section');
    expect(certs.includes(C['gca-agency'].orgIdentifier), `圖3-9 lacks the OID: ${certs}`);
    expect(certs.includes(C['moica-admin'].holder), `圖3-9 lacks the administrator: ${certs}`);
    await contact(page, { ...admin, email: '' });
    await page.getByRole('button', { name: '確認', exact: true }).click();
    await page.locator('#email-error').waitFor({ timeout: TIMEOUT });
    const err = (await page.locator('#email-error').textContent()).trim();
    expect(/電子信箱/.test(err), `the message beside 電子信箱: ${err}`);
    expect((await page.locator('#email').getAttribute('aria-describedby')) === 'email-error', 'the field is not described by its error');
    expect((await page.locator('#name').inputValue()) === admin.name, 'the typed name was lost');
    await accessible(page, '首次註冊');
    return err;
    // The form comes back with its errors as 422, which Chromium logs for the document.
  }, { allow: /status of 422 .*\/confirm\)$/ }],
  ['2 首次註冊 確認 → 圖3-10', async () => {
    const page = clerk;
    await type(page, '電子信箱', admin.email);
    await page.locator('#email').press('Enter');
    await onPage(page, '首次註冊', '圖3-10');
    const msg = await text(page, 'main [role="status"]');
    expect(msg.includes('首次註冊成功'), msg);
    return msg;
  }],
  ['3 授權指派: org card, administrator card, empty operator list', async () => {
    const page = clerk;
    await menu(page, '授權指派');
    await cardStep(page, { title: '授權指派－機關憑證確認', figure: '圖3-12', code: A, card: C['gca-agency'], next: '授權指派－自然人憑證確認' });
    await cardStep(page, { title: '授權指派－自然人憑證確認', figure: '圖3-13', card: C['moica-admin'], next: '授權指派－授權經辦人清單' });
    const t = await text(page);
    expect(t.includes('尚未授權經辦人'), `the list is not empty: ${t}`);
  }],
  ['3 授權指派 新增: 讀取憑證, ID, functions, 確認 → 新增成功', async () => {
    await addOperator(clerk, ['加保作業', '退保作業']);
  }],
  ['3 授權指派 修改 → 修改成功', async () => {
    const page = clerk;
    await page.getByRole('button', { name: `修改 ${operator.holder}` }).click();
    await onPage(page, '授權指派－修改授權經辦人', '圖3-18');
    expect(bare(await page.locator('#serial').inputValue()) === bare(operator.serial), 'the serial on file is not shown');
    await page.getByLabel('退保作業', { exact: true }).uncheck();
    await page.getByLabel('查詢作業', { exact: true }).check();
    await page.getByRole('button', { name: '確認', exact: true }).click();
    await onPage(page, '授權指派－授權經辦人清單');
    expect((await text(page, 'main .success')).includes('修改成功'), 'no 修改成功');
    const row = await text(page, `table.list tbody tr:has-text("${operator.holder}")`);
    expect(row.includes('查詢作業') && !row.includes('退保作業'), `row after 修改: ${row}`);
    return row;
  }],
  ['3 授權指派 刪除 → 確定刪除？ → 刪除成功', async () => {
    const page = clerk;
    await page.getByRole('button', { name: `刪除 ${operator.holder}` }).click();
    await onPage(page, '授權指派－刪除授權經辦人', '圖3-21');
    expect((await text(page)).includes('確定刪除？'), 'no 確定刪除？');
    await page.getByRole('button', { name: '確定', exact: true }).click();
    await onPage(page, '授權指派－授權經辦人清單');
    expect((await text(page, 'main .success')).includes('刪除成功'), 'no 刪除成功');
    expect((await (await listRow(page, operator.holder)).count()) === 0, 'the operator is still listed');
  }],
  ['3 授權指派 新增 again (for 經辦人登入)', async () => {
    await addOperator(clerk, granted);
  }],
  ['3 授權指派 登入與異動紀錄: the logins and the grants, newest first', async () => {
    const page = clerk;
    await page.getByRole('link', { name: '登入與異動紀錄' }).click();
    await onPage(page, '授權指派－登入與異動紀錄');
    const t = await text(page, 'main table');
    expect(t.includes('新增授權經辦人') && bare(t).includes(bare(operator.serial)), `the activity: ${t}`);
    await type(page, '起日', '2026-13-01');
    await page.keyboard.press('Enter');
    await page.locator('#from-error').waitFor({ timeout: TIMEOUT });
    await accessible(page, '授權指派－登入與異動紀錄');
    await page.goBack();
    await page.goBack();
    await onPage(page, '授權指派－授權經辦人清單');
  }, { allow: /status of 422/ }],
  ['3 憑證申請說明 from the menu', async () => {
    const page = clerk;
    await page.getByRole('navigation', { name: '功能列' }).getByRole('link', { name: '憑證申請說明', exact: true }).click();
    await onPage(page, '憑證申請說明');
    const t = await text(page);
    expect(t.includes('MOICA') && t.includes('GCA'), `the help page: ${t.slice(0, 200)}`);
    await page.goBack();
  }],
  ['4 更換機關憑證 (gca-agency-renewed) → 圖3-27', async () => {
    const page = clerk;
    await menu(page, '更換機關憑證');
    await agree(page, '更換機關憑證－用戶約定條款', '圖3-23');
    await cardStep(page, { title: '更換機關憑證－機關憑證確認', figure: '圖3-24', code: A, card: C['gca-agency-renewed'], next: '更換機關憑證－自然人憑證確認' });
    await cardStep(page, { title: '更換機關憑證－自然人憑證確認', figure: '圖3-25', card: C['moica-admin'], next: '更換機關憑證' });
    await onPage(page, '更換機關憑證', '圖3-26');
    // The administrator stays: the data on file is offered for checking.
    expect((await page.locator('#email').inputValue()) === admin.email, 'the administrator data on file is not shown');
    expect(bare(await text(page, 'main section')).includes(bare(C['gca-agency-renewed'].serial)), 'the new card is not shown');
    await page.getByRole('button', { name: '確認', exact: true }).click();
    await onPage(page, '更換機關憑證', '圖3-27');
    const msg = await text(page, 'main [role="status"]');
    expect(msg.includes('更換機關憑證成功'), msg);
  }],
  ['4 更換授權管理者自然人憑證 (moica-admin-renewed) → 圖3-32', async () => {
    const page = clerk;
    await menu(page, '更換授權管理者自然人憑證');
    await agree(page, '更換授權管理者自然人憑證－用戶約定條款', '圖3-28');
    await cardStep(page, { title: '更換授權管理者自然人憑證－機關憑證確認', figure: '圖3-29', code: A, card: C['gca-agency-renewed'], next: '更換授權管理者自然人憑證－自然人憑證確認' });
    await cardStep(page, { title: '更換授權管理者自然人憑證－自然人憑證確認', figure: '圖3-30', card: C['moica-admin-renewed'], next: '更換授權管理者自然人憑證' });
    await onPage(page, '更換授權管理者自然人憑證', '圖3-31');
    await contact(page, renewedAdmin);
    await page.getByRole('button', { name: '確認', exact: true }).click();
    await onPage(page, '更換授權管理者自然人憑證', '圖3-32');
    const msg = await text(page, 'main [role="status"]');
    expect(msg.includes('更換授權管理者自然人憑證成功'), msg);
  }],
  ['4 更換機關憑證和更換授權管理者自然人憑證 (gca-agency, moica-admin2) → 圖3-37', async () => {
    const page = clerk;
    const both = '更換機關憑證和更換授權管理者自然人憑證';
    await menu(page, both);
    await agree(page, `${both}－用戶約定條款`, '圖3-33');
    await cardStep(page, { title: `${both}－機關憑證確認`, figure: '圖3-34', code: A, card: C['gca-agency'], next: `${both}－自然人憑證確認` });
    await cardStep(page, { title: `${both}－自然人憑證確認`, figure: '圖3-35', card: C['moica-admin2'], next: both });
    await onPage(page, both, '圖3-36');
    await contact(page, admin2);
    await page.getByRole('button', { name: '確認', exact: true }).click();
    await onPage(page, both, '圖3-37');
    const msg = await text(page, 'main [role="status"]');
    expect(msg.includes(`${both}成功`), msg);
    // The printable receipt: the serials and the terms version accepted.
    await page.getByRole('link', { name: '列印收據' }).click();
    await onPage(page, `${both}收據`);
    const receipt = await text(page, 'main dl.receipt');
    expect(receipt.includes(A) && bare(receipt).includes(bare(C['gca-agency'].serial)) && receipt.includes('同意之用戶約定條款版本'),
      `the printable receipt: ${receipt}`);
    await page.getByRole('link', { name: '返回' }).click();
    await onPage(page, both, '圖3-37');
  }],
  ['5 查詢憑證註冊收件紀錄: newest first; the review 審核中', async () => {
    const page = clerk;
    await menu(page, '查詢憑證註冊收件紀錄');
    await onPage(page, '查詢作業－查詢憑證註冊收件紀錄', '圖3-38');
    const field = await type(page, '機關代號', A);
    await field.press('Enter');
    await page.locator('table.list').waitFor({ timeout: TIMEOUT });
    expect((await h1(page).getAttribute('data-figure')) === '圖3-39', 'not 圖3-39');
    await accessible(page, '查詢作業－查詢憑證註冊收件紀錄');
    const items = await page.locator('table.list tbody tr td:nth-child(2)').allTextContents();
    const want = ['更換機關憑證和更換授權管理者自然人憑證', '更換授權管理者自然人憑證', '更換機關憑證', '首次註冊'];
    expect(JSON.stringify(items.map((s) => s.trim())) === JSON.stringify(want), `A0001 receipts ${JSON.stringify(items)}`);
    const name = await text(page, 'section dl.cert');
    expect(name.includes(W.agencies.find((a) => a.code === A).name), `agency name: ${name}`);
    const again = await type(page, '機關代號', M);
    await again.press('Enter');
    await page.locator('table.list tbody tr', { hasText: '審核中' }).waitFor({ timeout: TIMEOUT });
    const rows = await page.locator('table.list tbody tr').allInnerTexts();
    expect(rows.length === 1 && rows[0].includes('憑證註冊審核申請') && rows[0].includes('審核中'), `A0002 receipts ${JSON.stringify(rows)}`);
    return `${items.join(' > ')}; ${M}: ${rows[0].replace(/\s+/g, ' ')}`;
  }],
  ['5 查詢機關憑證 OID → 圖3-41', async () => {
    const page = clerk;
    await menu(page, '查詢機關憑證 OID');
    await cardStep(page, { title: '查詢機關憑證 OID－機關憑證確認', figure: '圖3-40', code: A, card: C['gca-agency'], next: '查詢機關憑證 OID－查詢結果' });
    await onPage(page, '查詢機關憑證 OID－查詢結果', '圖3-41');
    const t = await text(page);
    expect(t.includes(C['gca-agency'].orgIdentifier), `no OID: ${t}`);
    expect(t.includes('相符'), `no match line: ${t}`);
  }],
  ['5 查詢自然人憑證序號 → 圖3-43 (the serial)', async () => {
    const page = clerk;
    await menu(page, '查詢自然人憑證序號');
    await cardStep(page, { title: '查詢自然人憑證序號－自然人憑證確認', figure: '圖3-42', card: operator, next: '查詢自然人憑證序號－查詢結果' });
    await onPage(page, '查詢自然人憑證序號－查詢結果', '圖3-43');
    const t = await text(page, 'main dl.cert');
    expect(bare(t).includes(bare(operator.serial)) && t.includes(operator.holder), `result ${t}`);
    return t;
  }],
  ['6 經辦人登入 → only the granted functions', async () => {
    // The operator at another computer: a browser of its own.
    const context = await browser.newContext();
    const page = await context.newPage();
    const problems = [];
    watch(page, problems);
    try {
      await page.goto(`${WEB}/`);
      await menu(page, '經辦人登入');
      await cardStep(page, { title: '經辦人登入', code: A, card: operator, next: '經辦人作業' });
      const items = (await page.locator('ul.granted li').allTextContents()).map((s) => s.trim());
      expect(JSON.stringify(items) === JSON.stringify(granted), `granted functions ${JSON.stringify(items)}`);
      const t = await text(page);
      expect(t.includes(operator.holder) && t.includes(A), `operator home: ${t}`);
      expect(problems.length === 0, problems.join('; '));
      return items.join('、');
    } catch (e) {
      await shoot('6 經辦人登入', page);
      e.shot = true;
      throw e;
    } finally {
      await context.close();
    }
  }],
  ['7 a wrong PIN: the card client\'s message beside the PIN field, with the tries left', async () => {
    const page = clerk;
    await menu(page, '查詢自然人憑證序號');
    const card = C['moica-admin2'];
    const title = '查詢自然人憑證序號－自然人憑證確認';
    await cardStep(page, { title, figure: '圖3-42', card, pin: card.wrongPin, stay: true });
    const err = page.locator('#pin-error');
    await err.waitFor({ state: 'visible', timeout: TIMEOUT });
    const msg = (await err.textContent()).trim();
    expect(msg.includes('PIN 碼錯誤') && msg.includes('尚可再試 2 次'), `PIN message: ${msg}`);
    expect((await page.locator('#pin').getAttribute('aria-invalid')) === 'true', 'the PIN field is not marked invalid');
    expect((await page.locator('#pin').getAttribute('aria-describedby')) === 'pin-error', 'the PIN message is not tied to its field');
    await accessible(page, title);
    expect((await h1(page).textContent()).trim() === title, 'the page moved on');
    // The agent takes no PIN for this card for a moment after a wrong one: a retry at once is
    // refused without touching the card, and the page says to wait.
    const pin = page.locator('#pin');
    await pin.fill('');
    await pin.click();
    await page.keyboard.type(card.pin);
    await page.keyboard.press('Enter');
    await page.waitForFunction(
      () => (document.querySelector('#pin-error')?.textContent || '').includes('稍候'),
      null, { timeout: TIMEOUT });
    expect((await h1(page).textContent()).trim() === title, 'the page moved on during the wait');
    await page.waitForTimeout(2500);
    // Then the right PIN goes through (and the agent's counter starts over).
    await pin.fill('');
    await pin.click();
    await page.keyboard.type(card.pin);
    const navigated = page.waitForEvent('framenavigated', { timeout: TIMEOUT });
    await page.keyboard.press('Enter');
    await navigated;
    await onPage(page, '查詢自然人憑證序號－查詢結果', '圖3-43');
    return msg;
  }],
  ['8 reviewer: 本部審核人員登入, the queue, 核准 with a note → 已核准，生效日', async () => elsewhere('8 reviewer', async (page) => {
    const reviewer = C['moica-reviewer'];
    await page.goto(`${WEB}/backoffice/login`);
    await start(page);
    await cardStep(page, { title: '本部審核人員登入', card: reviewer, next: '待審核申請（承保第一科）' });
    const who = await text(page, 'body');
    expect(who.includes(`審核人員 ${reviewer.holder}（承保第一科）`), `the reviewer is not named: ${who}`);
    const row = page.locator('table.list tbody tr', { hasText: M });
    expect((await row.count()) === 1, `the queue lacks ${M}: ${await text(page)}`);
    const rowText = (await row.innerText()).replace(/\s+/g, ' ');
    for (const want of ['林小華', '(02)2960-3456', C['gca-agency-mismatch'].orgIdentifier, '審核中']) {
      expect(rowText.includes(want), `the queue row lacks ${want}: ${rowText}`);
    }
    await row.getByRole('link', { name: M }).click();
    await onPage(page, `憑證註冊審核申請（機關代號 ${M}）`);
    await type(page, '備註', reviewNote);
    await page.getByRole('button', { name: '核准', exact: true }).click();
    await page.locator('main .success').waitFor({ timeout: TIMEOUT });
    const flash = await text(page, 'main .success');
    const m = flash.match(/已核准，生效日 (\d{4}\/\d{2}\/\d{2})/);
    expect(m, `no 已核准，生效日: ${flash}`);
    effective = m[1];
    expect((await page.locator('button[name="decision"]').count()) === 0, 'the decision buttons are still there');
    const t = await text(page);
    expect(t.includes(reviewNote), `the note is not shown: ${t}`);
    await accessible(page, `憑證註冊審核申請（機關代號 ${M}）`);
    // The search: the agency's receipts and audit; a wrong date is refused beside its field.
    const search = '查詢機關、註冊、收件紀錄及稽核紀錄';
    await page.goto(`${WEB}/backoffice/search?code=${M}`);
    await onPage(page, search);
    expect((await text(page)).includes('憑證註冊審核申請'), 'the search lacks the review application');
    await page.goto(`${WEB}/backoffice/search?from=2026-13-01`);
    await page.locator('#from-error').waitFor({ timeout: TIMEOUT });
    await accessible(page, search);
    return flash;
  }, /status of 422/)],
  ['8 the same day: 首次註冊 with the mismatch card → the 圖3-7 message again', async () => {
    const page = clerk;
    await menu(page, '首次註冊');
    await agree(page, '首次註冊－用戶約定條款', '圖3-4');
    const msg = await cardStep(page, {
      title: '首次註冊－機關憑證確認', figure: '圖3-5', code: M, card: C['gca-agency-mismatch'], refused: true,
    });
    expect(msg.includes(`審核申請已通過，請於 ${effective} 起重新辦理註冊`), `the refusal says ${msg}`);
    const numbers = await text(page, 'main .contacts');
    for (const want of ['(02)27013411', '承保第一科', '5312']) expect(numbers.includes(want), `the numbers to call lack ${want}: ${numbers}`);
    return msg;
    // The refused card step comes back as 409, which Chromium logs for the document.
  }, { allow: /status of 409 / }],
  ['9 the next business day: the Rust side moves the clock', async () => {
    expect(effective, 'no effective date from step 8');
    const tmp = path.join(SYNC, 'advance.json.tmp');
    writeFileSync(tmp, JSON.stringify({ effective }));
    renameSync(tmp, path.join(SYNC, 'advance.json'));
    const answer = path.join(SYNC, 'advanced.json');
    const until = Date.now() + TIMEOUT;
    while (!existsSync(answer)) {
      expect(Date.now() < until, `no advanced.json within ${TIMEOUT} ms`);
      await new Promise((r) => setTimeout(r, 50));
    }
    return `${effective}: ${JSON.parse(readFileSync(answer, 'utf8')).now}`;
  }],
  ['9 首次註冊 with the mismatch card: org card, administrator card, 圖3-9, 圖3-10', async () => elsewhere('9 首次註冊 mismatch', async (page) => {
    await page.goto(`${WEB}/`);
    await menu(page, '首次註冊');
    await agree(page, '首次註冊－用戶約定條款', '圖3-4');
    await cardStep(page, {
      title: '首次註冊－機關憑證確認', figure: '圖3-5', code: M, card: C['gca-agency-mismatch'], next: '首次註冊－自然人憑證確認',
    });
    await cardStep(page, { title: '首次註冊－自然人憑證確認', figure: '圖3-8', card: C['moica-admin'], next: '首次註冊' });
    await onPage(page, '首次註冊', '圖3-9');
    const certs = await text(page, 'main section');
    expect(certs.includes(C['gca-agency-mismatch'].orgIdentifier), `圖3-9 lacks the mismatch card's OID: ${certs}`);
    await contact(page, { name: '林小華', email: 'lin@example.gov.tw', phone: '(02)2960-3456' });
    await page.getByRole('button', { name: '確認', exact: true }).click();
    await onPage(page, '首次註冊', '圖3-10');
    const msg = await text(page, 'main [role="status"]');
    expect(msg.includes('首次註冊成功'), msg);
    return msg;
  })],
  ['10 by keyboard alone: 查詢機關憑證 OID from the menu to 圖3-41 (Tab, typing, arrows, Enter)', async () => elsewhere('10 keyboard', async (page) => {
    const card = C['gca-agency'];
    await page.goto(`${WEB}/`);
    const enterAndGo = async () => {
      const navigated = page.waitForEvent('framenavigated', { timeout: TIMEOUT });
      await page.keyboard.press('Enter');
      await navigated;
      await page.waitForLoadState('load');
    };
    await tabTo(page, '查詢機關憑證 OID');
    await enterAndGo();
    await tabTo(page, '開始');
    await enterAndGo();
    const title = '查詢機關憑證 OID－機關憑證確認';
    await onPage(page, title, '圖3-40');
    await tabTo(page, '機關代號');
    await page.keyboard.type(A);
    if (await page.locator('#card-reader').count()) {
      await page.waitForFunction(() => document.querySelector('#card-reader')?.dataset.state === 'ready', null, { timeout: TIMEOUT });
      await tabTo(page, '使用的機關憑證');
      // The reader list by arrow keys: Home, then down until the card is selected.
      await page.keyboard.press('Home');
      for (let i = 0; i < 12; i++) {
        const chosen = await page.locator('#card-reader').evaluate((s) => s.selectedOptions[0]?.textContent || '');
        if (bare(chosen).includes(bare(card.serial))) break;
        await page.keyboard.press('ArrowDown');
      }
      const chosen = await page.locator('#card-reader').evaluate((s) => s.selectedOptions[0]?.textContent || '');
      expect(bare(chosen).includes(bare(card.serial)), `the arrow keys did not reach ${card.serial}: ${chosen}`);
    }
    await tabTo(page, '機關憑證密碼');
    await page.keyboard.type(card.pin);
    await enterAndGo();
    await onPage(page, '查詢機關憑證 OID－查詢結果', '圖3-41');
    const t = await text(page);
    expect(t.includes(card.orgIdentifier), `no OID: ${t}`);
    return 'menu → 開始 → 機關代號 → card → PIN → Enter → 圖3-41';
  })],
  ['11 the refusal pages: an unknown flow, 授權指派 signed out, an unknown 機關代號', async () => elsewhere('11 refusals', async (page) => {
    const seen = [];
    for (const [url, title] of [
      ['/flows/00000000000000000000000000000000', null],
      ['/admin/operators', '授權指派'],
      ['/receipts?code=Z9999', '查詢作業－查詢憑證註冊收件紀錄'],
    ]) {
      await page.goto(`${WEB}${url}`);
      const got = (await h1(page).textContent()).trim();
      if (title) expect(got === title, `${url}: ${got}`);
      expect(await page.locator('main .error, main [role="alert"], main p').count() > 0, `${url}: no message`);
      await accessible(page, got);
      seen.push(`${url} → ${got}`);
    }
    return seen.join('; ');
  }, /status of 40[0-9]/)],
];

// ---------------------------------------------------------------------------------------------

const slug = (s) => s.replace(/[^a-z0-9\u4e00-\u9fff]+/gi, '-').slice(0, 48).replace(/^-|-$/g, '').toLowerCase();

async function shoot(name, page) {
  mkdirSync(SHOTS, { recursive: true });
  const file = path.join(SHOTS, `e2e-${slug(name)}.png`);
  try {
    await page.screenshot({ path: file, fullPage: true });
    console.error(`screenshot: ${file}`);
  } catch (e) {
    console.error(`screenshot of ${name} failed: ${e.message}`);
  }
  return file;
}

let failed = null;
try {
  browser = await chromium.launch(LAUNCH);
  console.error(`chromium ${browser.version()}; web ${WEB}; agent ${AGENT}`);
  const context = await browser.newContext();
  clerk = await context.newPage();
  clerkProblems = [];
  watch(clerk, clerkProblems);
  for (const [name, body, { allow } = {}] of PLAN) {
    const t0 = Date.now();
    let ok = false;
    let detail = '';
    clerkProblems.length = 0;
    try {
      detail = (await body()) || '';
      if (allow) clerkProblems.splice(0, clerkProblems.length, ...clerkProblems.filter((p) => !allow.test(p)));
      expect(clerkProblems.length === 0, `the page reported: ${clerkProblems.join('; ')}`);
      ok = true;
    } catch (e) {
      detail = e instanceof StepFailed ? e.message : `${e.name}: ${e.message.split('\n')[0]}`;
      if (clerkProblems.length) detail += ` (the page reported: ${clerkProblems.join('; ')})`;
      if (!e.shot) await shoot(name, clerk);
    }
    const ms = Date.now() - t0;
    console.error(`${ok ? 'ok  ' : 'FAIL'} ${name} (${ms} ms)${detail ? ` — ${detail}` : ''}`);
    steps.push({ name, ok, detail, ms });
    if (!ok) {
      failed = name;
      break; // the later steps build on this one
    }
  }
} catch (e) {
  console.error(`walk.mjs: ${e.stack || e}`);
  steps.push({ name: 'walk.mjs', ok: false, detail: String(e.message || e), ms: 0 });
  failed = 'walk.mjs';
} finally {
  if (browser) await browser.close().catch(() => {});
}
clearTimeout(guard);
const elapsedMs = Date.now() - started;
console.log(JSON.stringify({ steps, expected: PLAN.length, elapsedMs, axePages: axeChecked.size, axeChecked: [...axeChecked] }));
if (failed) console.error(`walk.mjs: failed at step «${failed}»`);
process.exit(failed ? 1 : 0);

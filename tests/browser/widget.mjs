// Drives Debian's headless Chromium through the connect widget, as a person would.
// Run by tests/it/widget/browser.rs:
//   node tests/browser/widget.mjs <widget url> <screenshot dir> <demo provider url> <expired widget url>
// Step protocol: at a point where the Rust side must act, this prints one JSON line
// {"step": "..."} on stdout and waits for one line on stdin before going on.
// Every other line it prints is {"log": "..."}; it exits non-zero on any failure.
import { chromium } from 'playwright-core';
import { createInterface } from 'node:readline';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

const [widgetUrl, shots, demoUrl, expiredUrl] = process.argv.slice(2);
if (!widgetUrl || !shots || !demoUrl || !expiredUrl) {
  console.error('usage: widget.mjs <widget url> <screenshot dir> <demo provider url> <expired widget url>');
  process.exit(2);
}
mkdirSync(shots, { recursive: true });

const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const say = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
const log = (text) => say({ log: text });
async function step(name) {
  say({ step: name });
  const answer = await lines.next();
  if (answer.done || answer.value.trim() !== 'ok') throw new Error(`the test answered ${JSON.stringify(answer.value)} to ${name}`);
}

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run'],
});
const context = await browser.newContext({ viewport: { width: 900, height: 620 }, colorScheme: 'light' });
context.setDefaultTimeout(15000);
const page = await context.newPage();
page.on('console', (m) => { if (m.type() === 'error') log(`console error: ${m.text()}`); });
page.on('pageerror', (e) => log(`page error: ${e.message}`));
const shot = (p, name) => p.screenshot({ path: join(shots, name), fullPage: true });

const card = (state) => page.locator(`li[data-slug="demo"][data-state="${state}"]`);

/** Clicks `button` on the widget, then signs in and answers the consent in the popup. */
async function consentInPopup(button, username, decision, consentShot) {
  const [popup] = await Promise.all([page.waitForEvent('popup'), page.getByRole('button', { name: button }).click()]);
  await popup.getByLabel('Username').fill(username);
  await popup.getByRole('button', { name: 'Continue' }).click();
  await popup.getByRole('button', { name: decision }).waitFor();
  if (consentShot) await shot(popup, consentShot);
  const closed = popup.waitForEvent('close');
  await popup.getByRole('button', { name: decision }).click();
  await closed;
}

try {
  // 1. A user with nothing connected sees Connect.
  const token = new URLSearchParams(new URL(widgetUrl).hash.slice(1)).get('token');
  await page.goto(widgetUrl);
  await card('not_connected').waitFor();
  if (page.url().includes(token)) throw new Error('the token stayed in the address bar');
  if ((await page.content()).includes(token)) throw new Error('the token is in the page');
  await shot(page, '01-connect.png');
  log('connect state shown');

  // 2. Connect in a popup: sign in and consent at the demo provider; the widget shows Connected.
  await consentInPopup('Connect Demo Provider', 'alice', 'Approve', '02-consent.png');
  await card('connected').waitFor();
  await card('connected').getByText('files.read').waitFor();
  await shot(page, '03-connected.png');
  await page.emulateMedia({ colorScheme: 'dark' });
  await shot(page, '03-connected-dark.png');
  await page.emulateMedia({ colorScheme: 'light' });
  log('connected');

  // 3. Revoke the grant on the demo provider's page; the test forces a refresh.
  const grants = await context.newPage();
  await grants.goto(`${demoUrl}/grants`);
  await grants.getByRole('button', { name: /^Revoke access of / }).click();
  await grants.getByText('No application has access right now.').waitFor();
  await grants.close();
  await step('revoked');
  await page.reload();
  await card('needs_reauthorization').waitFor();
  await card('needs_reauthorization').getByText('Access was revoked or has expired').waitFor();
  await shot(page, '04-needs-reauthorization.png');
  log('needs reauthorization');

  // 4. Reauthorize without a popup (the redirect fallback): the page goes to the provider and back.
  const url = new URL(page.url());
  url.searchParams.set('mode', 'redirect');
  await page.goto(url.toString());
  await page.getByRole('button', { name: 'Reauthorize Demo Provider' }).click();
  // Without a popup the connect page says whose account this is and asks first.
  await page.getByText('connected to user user_alice').waitFor();
  if (page.url().includes(token)) throw new Error('the token stayed in the connect page address');
  await shot(page, '05-confirm-redirect.png');
  await page.getByRole('button', { name: 'Continue to Demo Provider' }).click();
  await page.getByLabel('Username').fill('alice');
  await page.getByRole('button', { name: 'Continue' }).click();
  await page.getByRole('button', { name: 'Approve' }).click();
  await card('connected').waitFor();
  if (new URL(page.url()).searchParams.has('pipes_status')) throw new Error('the result stayed in the address bar');
  await shot(page, '05-reconnected.png');
  log('reauthorized');

  // 5. Disconnect asks first; Escape cancels; confirming shows Connect again.
  await page.goto(widgetUrl.split('#')[0]);
  await page.getByRole('button', { name: 'Disconnect Demo Provider' }).click();
  await page.getByText('Disconnect Demo Provider? The application will lose access.').waitFor();
  await page.keyboard.press('Escape');
  await page.getByRole('button', { name: 'Disconnect Demo Provider' }).click();
  await shot(page, '06-confirm-disconnect.png');
  await page.getByRole('button', { name: 'Yes, disconnect' }).click();
  await card('not_connected').waitFor();
  await shot(page, '07-disconnected.png');
  log('disconnected');

  // 6. A denied consent is said in plain words.
  await consentInPopup('Connect Demo Provider', 'alice', 'Deny', null);
  await card('not_connected').getByText('Access was not allowed, so Demo Provider was not connected.').waitFor();
  await shot(page, '08-denied.png');
  log('denial shown');

  // 6b. The provider URL of a flow this browser started, opened in another browser
  // (a fresh cookie jar), connects nothing and says why.
  const [popup] = await Promise.all([page.waitForEvent('popup'), page.getByRole('button', { name: 'Connect Demo Provider' }).click()]);
  await popup.getByLabel('Username').waitFor();
  const providerUrl = popup.url();
  await popup.close();
  const other = await browser.newContext({ viewport: { width: 900, height: 620 } });
  const victim = await other.newPage();
  await victim.goto(providerUrl);
  await victim.getByLabel('Username').fill('victim');
  await victim.getByRole('button', { name: 'Continue' }).click();
  await victim.getByRole('button', { name: 'Approve' }).click();
  await victim.getByText('started in another browser, so nothing was connected').waitFor();
  await shot(victim, '08b-other-browser.png');
  await other.close();
  await page.reload();
  await card('not_connected').waitFor();
  log('another browser connects nothing');

  // 7. An expired widget token says so and tells the host page.
  const expired = await context.newPage();
  await expired.addInitScript(() => {
    window.__expiredEvents = 0;
    document.addEventListener('pipes-widget:token-expired', () => { window.__expiredEvents += 1; });
  });
  await expired.goto(expiredUrl);
  await expired.getByText('Session expired').waitFor();
  const events = await expired.evaluate(() => window.__expiredEvents);
  if (events !== 1) throw new Error(`expected one pipes-widget:token-expired event, saw ${events}`);
  await shot(expired, '09-expired.png');
  log('expiry shown');

  say({ done: true });
  await browser.close();
  process.exit(0);
} catch (err) {
  log(`failed: ${err.stack || err}`);
  await shot(page, 'failure.png').catch(() => {});
  await browser.close().catch(() => {});
  process.exit(1);
}

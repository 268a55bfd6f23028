// Drives Debian's headless Chromium through the widget of a user with several
// accounts of one provider and an organization's shared account. Run by
// tests/it/widget/browser.rs:
//   node tests/browser/widget-accounts.mjs <widget url> <screenshot dir>
// Prints {"log": "..."} lines, then {"done": true}; exits non-zero on any failure.
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

const [widgetUrl, shots] = process.argv.slice(2);
if (!widgetUrl || !shots) {
  console.error('usage: widget-accounts.mjs <widget url> <screenshot dir>');
  process.exit(2);
}
mkdirSync(shots, { recursive: true });
const say = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
const log = (text) => say({ log: text });

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run'],
});
const context = await browser.newContext({ viewport: { width: 900, height: 620 }, colorScheme: 'light' });
context.setDefaultTimeout(15000);
const page = await context.newPage();
page.on('pageerror', (e) => log(`page error: ${e.message}`));
const shot = (name) => page.screenshot({ path: join(shots, name), fullPage: true });
const own = (state) => page.locator(`li[data-slug="multi"]:not([data-owner])[data-state="${state}"]`);
const shared = page.locator('li[data-slug="shared"][data-owner="organization"]');

try {
  // 1. One account of its own, with "Add another account"; the organization's, read-only.
  await page.goto(widgetUrl);
  await own('connected').waitFor();
  await own('connected').getByRole('button', { name: 'Add another Demo multi account' }).waitFor();
  await shared.getByText('Shared by your organization').waitFor();
  await shared.getByText('Connected').waitFor();
  if (await shared.getByRole('button').count() !== 0) throw new Error('the shared account offers an action');
  await shot('10-accounts-one.png');
  log('one account and the shared one shown');

  // 2. Add another: the provider consents at once; both accounts are listed by label.
  // (The popup may close before a wait for its closing could start: wait for the result.)
  await Promise.all([
    page.waitForEvent('popup'),
    page.getByRole('button', { name: 'Add another Demo multi account' }).click(),
  ]);
  await own('accounts').waitFor();
  await own('accounts').locator('li.account').nth(1).waitFor();
  await own('accounts').getByText('Work').waitFor();
  await own('accounts').getByText('Account 2').waitFor();
  await shot('11-accounts-two.png');
  log('second account added');

  // 3. Disconnecting one asks first, then leaves the other.
  await page.getByRole('button', { name: 'Disconnect Account 2' }).click();
  await page.getByRole('button', { name: 'Yes, disconnect Account 2' }).click();
  await own('connected').waitFor();
  await shot('12-accounts-back-to-one.png');
  log('one account disconnected');

  say({ done: true });
  await browser.close();
  process.exit(0);
} catch (err) {
  log(`failed: ${err.stack || err}`);
  await shot('failure-accounts.png').catch(() => {});
  await browser.close().catch(() => {});
  process.exit(1);
}

// Drives Debian's headless Chromium through the widget of a user who connects an
// API-key provider by typing the key: a refused key, then the right one. Run by
// tests/it/widget/browser.rs:
//   node tests/browser/widget-keys.mjs <widget url> <screenshot dir>
// Prints {"log": "..."} lines, then {"done": true}; exits non-zero on any failure.
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

const [widgetUrl, shots] = process.argv.slice(2);
if (!widgetUrl || !shots) {
  console.error('usage: widget-keys.mjs <widget url> <screenshot dir>');
  process.exit(2);
}
mkdirSync(shots, { recursive: true });
const say = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
const log = (text) => say({ log: text });
const KEY = 'apikey_widget_0123456789';

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run'],
});
const context = await browser.newContext({ viewport: { width: 900, height: 520 }, colorScheme: 'light' });
context.setDefaultTimeout(15000);
const page = await context.newPage();
page.on('pageerror', (e) => log(`page error: ${e.message}`));
const shot = (name) => page.screenshot({ path: join(shots, name), fullPage: true });
const card = (state) => page.locator(`li[data-slug="keyed"][data-state="${state}"]`);

try {
  // 1. A key field instead of Connect; the provider org_1 switched off is not listed.
  await page.goto(widgetUrl);
  await card('not_connected').locator('form[data-credential="api_key"]').waitFor();
  if (await card('not_connected').getByRole('button', { name: 'Connect Keyed' }).count() !== 0) {
    throw new Error('an API-key provider offers the OAuth Connect button');
  }
  if (await page.locator('li[data-slug="hidden"]').count() !== 0) throw new Error('a provider the organization switched off is listed');
  const field = card('not_connected').getByLabel('API key');
  if (await field.getAttribute('type') !== 'password') throw new Error('the key field shows the key');
  await shot('13-key-form.png');
  log('key field shown');

  // 2. A key the provider refuses: said so, nothing connected, the field emptied.
  await field.fill('apikey_wrong_0123456789');
  await card('not_connected').getByRole('button', { name: 'Connect' }).click();
  await card('not_connected').getByRole('alert').waitFor();
  const refused = await card('not_connected').getByRole('alert').textContent();
  if (!/could not be connected: The provider refused this API key/.test(refused)) throw new Error(`refusal says: ${refused}`);
  if (await card('not_connected').getByLabel('API key').inputValue() !== '') throw new Error('the refused key stays on the page');
  await shot('14-key-refused.png');
  log('refused key reported');

  // 3. The right key: connected, and the key is nowhere on the page.
  await card('not_connected').getByLabel('API key').fill(KEY);
  await card('not_connected').getByRole('button', { name: 'Connect' }).click();
  await card('connected').waitFor();
  await card('connected').getByRole('button', { name: 'Disconnect Keyed' }).waitFor();
  const html = await page.evaluate(() => document.querySelector('pipes-widget').shadowRoot.innerHTML);
  if (html.includes(KEY)) throw new Error('the key is in the page');
  await shot('15-key-connected.png');
  log('key connected');
  say({ done: true });
} catch (err) {
  await shot('99-keys-failure.png').catch(() => {});
  console.error(err.stack || String(err));
  process.exitCode = 1;
} finally {
  await browser.close();
}

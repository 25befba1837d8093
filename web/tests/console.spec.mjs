// The video-wall console in headless Chromium against a real hub.
import { test, expect } from '@playwright/test';
import { TestHub, subtree } from './hub.mjs';

const CITY = '230800';
const DONGFENG = '230805';
const HUANAN = '230822';

let hub;
let tree;
test.beforeAll(async () => {
  hub = await TestHub.start();
  tree = await subtree(hub, CITY);
});
test.afterAll(async () => {
  await hub?.stop();
});

const below = (id) => tree.filter((n) => n.path.includes(id));
const workersOf = (id) => below(id).filter((n) => n.tier === 'worker');

async function open(page, endpoint) {
  await page.goto(hub.link('/', endpoint));
  await expect(page.locator('body')).toHaveAttribute('data-ready', 'true');
}

test('the city console shows the Jiamusi tree and follows presence changes', async ({ page }) => {
  expect(tree.length).toBe(9852);
  await open(page, CITY);
  await expect(page.locator('.kpi[data-k="total"] b')).toHaveText('9,851');
  await expect(page.locator('.kpi[data-k="online"] b')).toHaveText('0');
  const counties = tree.filter((n) => n.tier === 'county');
  expect(counties.length).toBe(10);
  for (const c of counties) {
    const row = page.locator(`#children li[data-id="${c.id}"]`);
    await expect(row).toHaveAttribute('data-total', String(below(c.id).length));
    await expect(row).toHaveAttribute('data-online', '0');
  }
  // The address bar no longer holds the credential.
  expect(page.url()).not.toContain('credential');

  // Terminals come on line in two counties: the rows follow.
  const dongfeng = workersOf(DONGFENG).slice(0, 6);
  const huanan = workersOf(HUANAN).slice(0, 3);
  const terms = [];
  for (const w of [...dongfeng, ...huanan]) terms.push(await hub.terminal(w.id));
  await expect(page.locator(`#children li[data-id="${DONGFENG}"]`)).toHaveAttribute('data-online', '6');
  await expect(page.locator(`#children li[data-id="${HUANAN}"]`)).toHaveAttribute('data-online', '3');
  await expect(page.locator('.kpi[data-k="online"] b')).toHaveText('9');

  // Each change reaches the wall (how fast, under the whole city's load, is measured by
  // scripts/bench-wall: docs/benchmarks.md, "The video wall under a live city").
  const busy = page.locator('.kpi[data-k="busy"] b');
  for (const [i, t] of terms.slice(0, 3).entries()) {
    await t.request('presence.set', { status: 'busy' });
    await expect(busy).toHaveText(String(i + 1));
  }
  terms[8].close();
  await expect(page.locator(`#children li[data-id="${HUANAN}"]`)).toHaveAttribute('data-online', '2');

  // The map holds every terminal of the tree, coloured by status.
  // The map redraws at most once a second: wait for the draw that follows the last change
  // (three busy; five workers and this console itself on line).
  const drawn = await page.waitForFunction(() => {
    const c = window.gridhub.map?.counts;
    return c && c.busy === 3 && c.online === 6 ? c : null;
  });
  const counts = await drawn.jsonValue();
  expect(Object.values(counts).reduce((a, b) => a + b, 0)).toBe(9852);

  // Drill down to a county, a township, a village and back.
  await page.locator(`#children li[data-id="${DONGFENG}"]`).click();
  await expect(page.locator('#focus-name')).toHaveAttribute('data-id', DONGFENG);
  await expect(page.locator('.kpi[data-k="online"] b')).toHaveText('6');
  const township = dongfeng[0].path[2];
  const village = dongfeng[0].path[3];
  await page.locator(`#children li[data-id="${township}"]`).click();
  await page.locator(`#children li[data-id="${village}"]`).click();
  await expect(page.locator(`#children li[data-id="${dongfeng[0].id}"]`)).toHaveAttribute('data-status', 'busy');
  await expect(page.locator('#crumbs button')).toHaveCount(4);
  await page.screenshot({ path: test.info().outputPath('village.png') });
  await page.locator('#crumbs button').first().click();
  await expect(page.locator('#focus-name')).toHaveAttribute('data-id', CITY);
  await page.screenshot({ path: test.info().outputPath('city.png') });
});

test('a county operator sees only their county', async ({ page }) => {
  await open(page, DONGFENG);
  const mine = below(DONGFENG);
  await expect(page.locator('.kpi[data-k="total"] b')).toHaveText(mine.length.toLocaleString('en'));
  await expect(page.locator('#crumbs button')).toHaveCount(1);
  await expect(page.locator('#up')).toBeHidden();
  const townships = mine.filter((n) => n.tier === 'township');
  await expect(page.locator('#children li')).toHaveCount(townships.length);
  const drawn = await page.waitForFunction(() => window.gridhub.map?.counts);
  const counts = await drawn.jsonValue();
  expect(Object.values(counts).reduce((a, b) => a + b, 0)).toBe(mine.length + 1);
  // What lies outside is refused by the hub, as for any terminal.
  const code = await page.evaluate(() =>
    window.gridhub.hub.request('presence.subscribe', { node: '230800' }).then(
      () => 'accepted',
      (e) => e.code,
    ),
  );
  expect(code).toBe('out_of_scope');
});

test('the console speaks English on request and remembers it', async ({ page }) => {
  await open(page, CITY);
  await expect(page.locator('#nav-title [data-t="nav.title"]')).toHaveText('组织层级');
  await page.locator('#lang').click();
  await expect(page.locator('#nav-title [data-t="nav.title"]')).toHaveText('Command tiers');
  await expect(page.locator(`#children li[data-id="${DONGFENG}"] .name`)).toHaveText('Dongfeng District');
  await page.reload();
  await expect(page.locator('body')).toHaveAttribute('data-ready', 'true');
  await expect(page.locator('#nav-title [data-t="nav.title"]')).toHaveText('Command tiers');
});

test('a refused or expired credential asks to sign in again, and a good one gets in', async ({ page }) => {
  await page.goto(`${hub.base}/`);
  const dialog = page.locator('#signin');
  await expect(dialog).toBeVisible();
  // Not a credential at all: refused in the page, before the hub is asked.
  await page.locator('#signin-credential').fill('not a credential');
  await page.locator('#signin-form button[type="submit"]').click();
  await expect(page.locator('#signin-error')).toContainText('malformed_credential');
  // Expired: the hub refuses it and the page says so.
  const good = hub.token(CITY);
  await page.locator('#signin-credential').fill(hub.tokenExpired(CITY));
  await page.locator('#signin-form button[type="submit"]').click();
  await expect(page.locator('#signin-error')).toContainText('登录凭证已过期');
  await page.screenshot({ path: test.info().outputPath('signin.png') });
  await page.locator('#signin-credential').fill(good);
  await page.locator('#signin-form button[type="submit"]').click();
  await expect(page.locator('body')).toHaveAttribute('data-ready', 'true');
  await expect(dialog).toBeHidden();
});

test('a console replaced by a newer one stops and says so', async ({ page, context }) => {
  await open(page, HUANAN);
  const other = await context.newPage();
  await open(other, HUANAN);
  await expect(page.locator('#notice')).toBeVisible();
  await expect(page.locator('#notice-text')).toContainText('另一处登录');
  await expect(page.locator('#conn')).toHaveAttribute('data-state', 'stopped');
  await other.close();
});

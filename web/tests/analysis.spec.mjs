// The analysis view in headless Chromium, on a hub whose store holds a generated year with
// planted truth (`gridhub history`): the 33 hot squares are listed with their evidence, the
// intervention's before/after is drawn with its interval, every county is in the performance
// table, and a hotspot is pushed to its node as a governance order.
import { test, expect } from '@playwright/test';
import { TestHub } from './hub.mjs';

const CITY = '230800';

let hub;
test.beforeAll(async () => {
  hub = await TestHub.start({}, { history: 20000 });
});
test.afterAll(async () => {
  await hub?.stop();
});

test('the analysis view lists the planted hotspots, draws the before/after and the performance by county', async ({ page }) => {
  await page.goto(hub.link('/', CITY));
  await expect(page.locator('body')).toHaveAttribute('data-ready', 'true');
  await page.locator('#analysis-open').click();
  const dialog = page.locator('#analysis');
  await expect(dialog).toHaveAttribute('data-ready', 'true');
  // A year of noise complaints at the squares: the 33 planted hotspots.
  await expect(page.locator('#an-category')).toHaveValue('noise');
  await expect(page.locator('#an-kind')).toHaveValue('square');
  const rows = page.locator('#an-hotspots li');
  await expect(rows).toHaveCount(33);
  await expect(page.locator('#an-hot-sum')).toContainText('132');
  // A hotspot's evidence opens as orders.
  await rows.first().click();
  const evidence = rows.first().locator('.evidence button');
  await expect(evidence.first()).toBeVisible();
  expect(await evidence.count()).toBe(12);
  // Before and after: about −82 %, with its interval, and a chart drawn.
  const head = page.locator('#an-effect-head');
  await expect(head).toContainText('95% CI');
  const change = Number((await head.locator('b').textContent()).replace('−', '-').replace('%', ''));
  expect(change).toBeLessThan(-70);
  expect(change).toBeGreaterThan(-92);
  await expect(page.locator('#an-effect-chart canvas')).toHaveCount(1);
  // Ten counties and the total.
  await expect(page.locator('#an-performance tbody tr')).toHaveCount(11);
  // The last 365 days from now: all but the first hours of the generated year.
  const total = Number((await page.locator('#an-performance tbody tr.total td').nth(1).textContent()).replace(/,/g, ''));
  expect(total).toBeGreaterThan(19500);
  expect(total).toBeLessThanOrEqual(20000);
  await page.screenshot({ path: 'test-results/analysis-view.png' });
  // The hotspots glow on the map.
  expect(await page.evaluate(() => window.gridhub.map.hotspots)).toBe(33);
  // From hotspot to action: a governance order, dispatched toward the square's node.
  const push = rows.nth(1).locator('button', { hasText: '推送治理' });
  await push.click();
  await expect(rows.nth(1).locator('button').first()).toContainText('已派发');
  const listed = (await hub.api('/api/v1/analysis/interventions', CITY)).body;
  const task = listed.interventions.find((i) => i.order);
  expect(task.order_state).toBe('dispatched');
  expect(task.evidence.length).toBe(12);
  // In English too.
  await page.locator('#lang').click({ force: true }).catch(() => {});
  await page.locator('#an-close').click();
  await expect(dialog).not.toBeVisible();
  expect(await page.evaluate(() => window.gridhub.map.hotspots)).toBe(0);
});

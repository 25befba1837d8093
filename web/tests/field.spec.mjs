// The field page on a phone-sized Chromium against a real hub.
import { test, expect } from '@playwright/test';
import { TestHub, PHONE, workerOf, pngImage } from './hub.mjs';

test.use(PHONE);

const CITY = '230800';
let hub;
let worker;
test.beforeAll(async () => {
  hub = await TestHub.start();
  // A grid worker of 桦南县 (Huanan).
  worker = await workerOf(hub, '230822');
});
test.afterAll(async () => {
  await hub?.stop();
});

let key = 0;
/// Takes in an order at the city for the worker's grid and dispatches it down every tier to the
/// worker, as the centers would.
async function orderFor(w, description) {
  const created = await hub.api('/api/v1/orders', CITY, {
    method: 'POST',
    headers: { 'Idempotency-Key': `field-${process.pid}-${++key}` },
    body: JSON.stringify({
      source: 'hotline_12345',
      category: 'noise',
      description,
      location: { node: w.id, address: '长安路 3 号' },
      priority: 'routine',
    }),
  });
  expect(created.status).toBe(201);
  const id = created.body.order.id;
  await hub.dispatchDown(id, w);
  return id;
}

async function open(page) {
  await page.goto(hub.link('/field', worker.id));
  await expect(page.locator('body')).toHaveAttribute('data-ready', 'true');
}

test('a worker sets status, takes an order, reports it, and nothing typed is lost', async ({ page, context }) => {
  await open(page);
  await expect(page.locator('#me')).toContainText('网格员');
  await expect(page.locator('#conn')).toHaveAttribute('data-state', 'open');
  const watcher = await hub.terminal(worker.path[3]);
  const watch = await watcher.request('presence.subscribe', { node: worker.path[3] });
  expect(watch.endpoints.find((e) => e.id === worker.id).status).toBe('online');

  await page.locator('#status button[data-status="busy"]').click();
  await expect(page.locator('#status button[data-status="busy"]')).toHaveAttribute('aria-checked', 'true');
  await watcher.push('presence.delta', (d) => d.endpoints?.some((e) => e.id === worker.id && e.status === 'busy'));

  const id = await orderFor(worker, '广场舞音响太吵');
  const card = page.locator(`#orders li[data-id="${id}"]`);
  await expect(card).toHaveAttribute('data-state', 'dispatched');
  await expect(card).toContainText('广场舞音响太吵');
  await expect(page.locator('#orders-badge')).toHaveText('1');
  await card.locator('button.ack').click();
  await expect(card).toHaveAttribute('data-state', 'in_progress');

  // A result half typed, with its photo, survives a reload.
  await card.locator('button.report').click();
  await card.locator('textarea').fill('已协调，音量降至规定以下');
  await card.locator('input[type="file"]').setInputFiles({ name: 'site.png', mimeType: 'image/png', buffer: pngImage(200, 150) });
  await expect(card.locator('img.photo-thumb')).toBeVisible();
  await page.reload();
  await expect(page.locator('body')).toHaveAttribute('data-ready', 'true');
  await expect(card.locator('textarea')).toHaveValue('已协调，音量降至规定以下');
  await expect(card.locator('img.photo-thumb')).toBeVisible();
  // The status chosen before the reload carries over.
  await expect(page.locator('#status button[data-status="busy"]')).toHaveAttribute('aria-checked', 'true');
  // What caused it, from the category's causes.
  await card.locator('select.cause').selectOption('square_dance');

  // Sent while the network is down: refused locally, the text stays.
  await context.setOffline(true);
  await page.evaluate(() => window.gridhub.hub.ws?.close());
  await expect(page.locator('#conn')).not.toHaveAttribute('data-state', 'open');
  await card.locator('form button[type="submit"]').click();
  await expect(card.locator('.error')).toContainText('草稿已保存');
  await expect(card.locator('textarea')).toHaveValue('已协调，音量降至规定以下');
  await context.setOffline(false);
  await expect(page.locator('#conn')).toHaveAttribute('data-state', 'open', { timeout: 15_000 });
  await card.locator('form button[type="submit"]').click();
  await expect(card).toHaveAttribute('data-state', 'result_reported');
  const { body } = await hub.api(`/api/v1/orders/${id}`, CITY);
  expect(body.order.state).toBe('result_reported');
  expect(body.order.result.text).toBe('已协调，音量降至规定以下');
  expect(body.order.result.by).toBe(worker.id);
  expect(body.order.cause).toBe('square_dance');
  // The photo went with it, once, however many tries the result took.
  const photos = await hub.api(`/api/v1/orders/${id}/attachments`, CITY);
  expect(photos.body.attachments.map((a) => [a.by, a.content_type])).toEqual([[worker.id, 'image/jpeg']]);
  await page.screenshot({ path: test.info().outputPath('field-reported.png') });
});

test('a field page that loses its connection resumes its outbox exactly', async ({ page, context }) => {
  await open(page);
  const before = Number(await page.locator('body').getAttribute('data-last-seq'));
  const first = await orderFor(worker, '路灯不亮');
  await expect(page.locator(`#orders li[data-id="${first}"]`)).toBeVisible();

  // The network goes; three orders arrive meanwhile, and wait in the worker's outbox.
  await context.setOffline(true);
  await page.evaluate(() => window.gridhub.hub.ws?.close());
  await expect(page.locator('#conn')).not.toHaveAttribute('data-state', 'open');
  const missed = [];
  for (const d of ['井盖缺失', '垃圾堆积', '占道经营']) missed.push(await orderFor(worker, d));
  await context.setOffline(false);
  await expect(page.locator('#conn')).toHaveAttribute('data-state', 'open', { timeout: 15_000 });
  for (const id of missed) await expect(page.locator(`#orders li[data-id="${id}"]`)).toHaveCount(1);

  // Exactly: one card per order, each message handled once, all acknowledged to the hub.
  const handled = await page.evaluate(() => window.gridhub.outbox.handled);
  const last = await page.evaluate(() => window.gridhub.outbox.last);
  expect(handled.filter((s) => s > before)).toEqual([...new Set(handled.filter((s) => s > before))]);
  expect(handled.filter((s) => s > before).length).toBe(4);
  await expect(page.locator('#orders li[data-state="dispatched"]')).toHaveCount(4);
  const r = await hub.api(`/api/v1/orders/${missed[2]}`, CITY);
  await expect.poll(async () => (await hub.api(`/api/v1/orders/${missed[2]}`, CITY)).body.order.delivery.delivered).toBe(true);
  expect(r.body.order.delivery.seq).toBe(last);

  // A reload resumes after what it has: nothing replayed twice.
  await page.reload();
  await expect(page.locator('body')).toHaveAttribute('data-ready', 'true');
  expect(await page.evaluate(() => window.gridhub.outbox.handled.length)).toBe(0);
  await expect(page.locator('#orders li[data-state="dispatched"]')).toHaveCount(4);
  await page.screenshot({ path: test.info().outputPath('field-resumed.png') });
});

test('a notice arrives, is read, and the page speaks English on request', async ({ page }) => {
  await open(page);
  const sent = await hub.api('/api/v1/notices', '230822', {
    method: 'POST',
    body: JSON.stringify({ node: '230822', tiers: ['worker'], title: '防汛通知', body: '今晚有暴雨，请巡查低洼地带。' }),
  });
  expect(sent.status).toBe(201);
  await expect(page.locator('#notices-badge')).toHaveText('1');
  await page.locator('.tabs button[data-tab="notices"]').click();
  await expect(page.locator('#notices li')).toContainText('今晚有暴雨');
  await expect(page.locator('#notices-badge')).toHaveText('');
  await expect
    .poll(async () => (await hub.api(`/api/v1/notices/${sent.body.notice.id}`, '230822')).body.notice.read)
    .toBe(1);
  await page.locator('#lang').click();
  await expect(page.locator('.tabs button[data-tab="orders"]')).toContainText('Orders');
});

test('a denied location says so and the page carries on', async ({ page, context }) => {
  await context.clearPermissions();
  await open(page);
  // Denied at once: the box unticks itself, so click rather than check.
  await page.locator('#share-location').click();
  await expect(page.locator('#location-hint')).toContainText('未获得定位权限');
  await expect(page.locator('#share-location')).not.toBeChecked();
  await context.grantPermissions(['geolocation']);
  await context.setGeolocation({ latitude: 46.24, longitude: 130.55 });
  await page.locator('#share-location').check();
  await expect(page.locator('#location-hint')).toContainText('46.24000');
  const watcher = await hub.terminal(worker.path[3]);
  await expect
    .poll(async () => {
      const s = await watcher.request('presence.subscribe', { node: worker.path[3] });
      return s.endpoints.find((e) => e.id === worker.id)?.location?.lat;
    })
    .toBe(46.24);
});

test('a campaign task is recorded household by household and marked done; an order shows its history', async ({ page }) => {
  await open(page);
  const village = worker.path[3];
  const started = await hub.api('/api/v1/campaigns', worker.path[1], {
    method: 'POST',
    body: JSON.stringify({ node: village, title: '人口核查', instructions: '逐户核对常住人口信息' }),
  });
  expect(started.status, JSON.stringify(started.body)).toBe(201);
  const id = started.body.campaign.id;
  await expect(page.locator('#tasks-badge')).toHaveText('1');
  await page.locator('.tabs button[data-tab="tasks"]').click();
  const card = page.locator(`#tasks li[data-id="${id}"]`);
  await expect(card).toContainText('逐户核对');
  for (const [key, persons] of [['hh-001', '3'], ['hh-002', '']]) {
    await card.locator('input[name="key"]').fill(key);
    if (persons) await card.locator('input[name="persons"]').fill(persons);
    await card.locator('form button[type="submit"]').click();
    await expect(card.locator('input[name="key"]')).toHaveValue('');
  }
  await card.locator('button.done').click();
  await expect(page.locator('#tasks-badge')).toHaveText('');
  await expect
    .poll(async () => (await hub.api(`/api/v1/campaigns/${id}`, worker.path[1])).body.campaign.totals)
    .toMatchObject({ verified: 2, workers_done: 1 });

  // History of an order the worker holds: every step so far, oldest first.
  await page.locator('.tabs button[data-tab="orders"]').click();
  const first = page.locator('#orders li[data-id]').first();
  await first.locator('button.history-toggle').click();
  await expect(first.locator('.history li').first()).toContainText('受理');
  await expect(first.locator('.history')).toContainText('派发');
  await page.screenshot({ path: test.info().outputPath('field-task.png') });
});

// A call nobody answers: the caller is told, and the worker's page keeps the missed call.
import { test, expect } from '@playwright/test';
import { TestHub, deviceContext, workerOf } from './hub.mjs';

let hub;
let worker;
test.beforeAll(async () => {
  hub = await TestHub.start({ GRIDHUB_CALLS__RING_TIMEOUT_MS: '1500' });
  worker = await workerOf(hub, '230826');
});
test.afterAll(async () => {
  await hub?.stop();
});

test('an unanswered call ends as no answer for the caller and is kept as a missed call on the phone', async ({ browser }) => {
  const wallCtx = await deviceContext(browser);
  const phoneCtx = await deviceContext(browser, true);
  const wall = await wallCtx.newPage();
  const phone = await phoneCtx.newPage();
  await phone.goto(hub.link('/field', worker.id));
  await expect(phone.locator('body')).toHaveAttribute('data-ready', 'true');
  await wall.goto(hub.link('/', worker.path[1]));
  await expect(wall.locator('body')).toHaveAttribute('data-ready', 'true');
  await wall.evaluate((w) => window.gridhub.calls.place(w, 'audio'), { id: worker.id, name: worker.name, tier: 'worker' });
  await expect(phone.locator('#call')).toHaveAttribute('data-state', 'incoming');
  await expect(wall.locator('#call')).toHaveAttribute('data-state', 'ended', { timeout: 10_000 });
  await expect(wall.locator('#call .call-state')).toContainText('无人接听');
  await expect(phone.locator('#call')).toHaveAttribute('data-state', 'ended');
  await expect(phone.locator('#notices-badge')).toHaveText('1');
  await phone.locator('.tabs button[data-tab="notices"]').click();
  await expect(phone.locator('#notices li')).toContainText('未接来电');
  await wallCtx.close();
  await phoneCtx.close();
});

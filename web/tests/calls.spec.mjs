// A video call between the video wall and a grid worker's phone, with Chromium's fake camera and
// microphone: signaling through the hub, media browser to browser.
import { test, expect } from '@playwright/test';
import { TestHub, subtree, deviceContext } from './hub.mjs';

const CITY = '230800';
let hub;
let worker;
let absent;
test.beforeAll(async () => {
  hub = await TestHub.start();
  const tree = await subtree(hub, CITY);
  worker = tree.find((n) => n.tier === 'worker' && n.path[1] === '230805');
  // Never connected in these tests.
  absent = tree.find((n) => n.tier === 'worker' && n.path[1] === '230883');
});
test.afterAll(async () => {
  await hub?.stop();
});

const frames = (page) => page.evaluate(() => window.gridhub.calls.framesReceived());

test('the wall calls a worker with video: both show in_call, media flows both ways, and the record says completed', async ({ browser }) => {
  const wallCtx = await deviceContext(browser);
  const phoneCtx = await deviceContext(browser, true);
  const wall = await wallCtx.newPage();
  const phone = await phoneCtx.newPage();
  await phone.goto(hub.link('/field', worker.id));
  await expect(phone.locator('body')).toHaveAttribute('data-ready', 'true');
  await wall.goto(hub.link('/', CITY));
  await expect(wall.locator('body')).toHaveAttribute('data-ready', 'true');

  // Down to the worker's village on the wall, and call.
  for (const id of worker.path.slice(1)) await wall.locator(`#children li[data-id="${id}"]`).click();
  const row = wall.locator(`#children li[data-id="${worker.id}"]`);
  await expect(row).toHaveAttribute('data-status', 'online');
  await row.locator('button[data-call="video"]').click();

  const ring = phone.locator('#call');
  await expect(ring).toHaveAttribute('data-state', 'incoming');
  await expect(ring.locator('.call-peer')).toHaveText('佳木斯市 · 市');
  await expect(wall.locator('#call')).toHaveAttribute('data-state', 'ringing');
  await ring.locator('.call-accept').click();

  await expect(wall.locator('#call')).toHaveAttribute('data-state', 'active', { timeout: 20_000 });
  await expect(ring).toHaveAttribute('data-state', 'active', { timeout: 20_000 });
  await expect.poll(() => frames(wall), { timeout: 20_000 }).toBeGreaterThan(10);
  await expect.poll(() => frames(phone), { timeout: 20_000 }).toBeGreaterThan(10);

  // Both show in_call: the wall on the worker's row and its own node, the phone on itself.
  await expect(row).toHaveAttribute('data-status', 'in_call');
  await expect.poll(() => wall.evaluate(() => window.gridhub.presence.status('230800'))).toBe('in_call');
  await expect(phone.locator('#in-call')).toBeVisible();
  await wall.screenshot({ path: test.info().outputPath('wall-in-call.png') });
  await phone.screenshot({ path: test.info().outputPath('phone-in-call.png') });

  await wall.locator('#call .call-hangup').click();
  await expect(ring).toHaveAttribute('data-state', 'ended');
  await expect(ring.locator('.call-state')).toContainText('已完成');
  await expect(phone.locator('#in-call')).toBeHidden();
  await expect(row).toHaveAttribute('data-status', 'online');
  const calls = await hub.api(`/api/v1/calls?node=${worker.path[3]}`, CITY);
  expect(calls.status).toBe(200);
  expect(calls.body.calls[0].outcome).toBe('completed');
  await wallCtx.close();
  await phoneCtx.close();
});

test('a worker calls its village station from the phone; declining is told to the caller', async ({ browser }) => {
  const stationCtx = await deviceContext(browser);
  const phoneCtx = await deviceContext(browser, true);
  const station = await stationCtx.newPage();
  const phone = await phoneCtx.newPage();
  await station.goto(hub.link('/', worker.path[3]));
  await expect(station.locator('body')).toHaveAttribute('data-ready', 'true');
  await phone.goto(hub.link('/field', worker.id));
  await expect(phone.locator('body')).toHaveAttribute('data-ready', 'true');
  await expect(phone.locator('#dial-to option').first()).toHaveAttribute('value', worker.path[3]);
  await phone.locator('#dial-audio').click();
  await expect(station.locator('#call')).toHaveAttribute('data-state', 'incoming');
  await station.locator('#call .call-reject').click();
  await expect(phone.locator('#call')).toHaveAttribute('data-state', 'ended');
  await expect(phone.locator('#call .call-state')).toContainText('对方拒接');
  await stationCtx.close();
  await phoneCtx.close();
});

test('a call to a terminal that is off line is refused at once and said so', async ({ page }) => {
  await page.goto(hub.link('/', CITY));
  await expect(page.locator('body')).toHaveAttribute('data-ready', 'true');
  await page.context().grantPermissions(['camera', 'microphone']);
  const code = await page.evaluate(async (id) => {
    await window.gridhub.calls.place({ id, name: id }, 'audio');
    return document.querySelector('#call').dataset.state;
  }, absent.id);
  expect(code).toBe('ended');
  await expect(page.locator('#call .error')).toContainText('对方不在线');
});

test('a village with a desk, its station PC and a video wall: all stay on line, the call rings the desk and the station, the first to answer takes it, the wall never rings', async ({ browser }) => {
  const village = worker.path[3];
  const open = async (role, seat) => {
    const ctx = await deviceContext(browser);
    const page = await ctx.newPage();
    await page.goto(hub.link('/', village, role, seat));
    await expect(page.locator('body')).toHaveAttribute('data-ready', 'true');
    return { ctx, page };
  };
  const desk = await open('operator', 'desk-1');
  const station = await open('station', 'main');
  const wall = await open('observer', 'wall');
  const phoneCtx = await deviceContext(browser, true);
  const phone = await phoneCtx.newPage();
  await phone.goto(hub.link('/field', worker.id));
  await expect(phone.locator('body')).toHaveAttribute('data-ready', 'true');

  // Nobody evicted anybody: every page is still connected, and the village is one terminal.
  for (const { page } of [desk, station, wall]) await expect(page.locator('#conn')).toHaveAttribute('data-state', 'open');
  await expect(wall.page.locator('#seat')).toHaveText('观察席 · wall');
  await expect(desk.page.locator('#seat')).toHaveText('席位 · desk-1');
  await expect(station.page.locator('#seat')).toBeHidden();
  const seats = await desk.page.evaluate((id) => window.gridhub.presence.endpoints.get(id)?.seats, village);
  expect([...seats].sort()).toEqual(['desk-1', 'main', 'wall']);
  // The wall watches: no call buttons, no intake.
  await expect(desk.page.locator(`#children li[data-id="${worker.id}"] button[data-call]`).first()).toBeVisible();
  await expect(wall.page.locator(`#children li[data-id="${worker.id}"]`)).toHaveAttribute('data-status', 'online');
  await expect(wall.page.locator('#children button[data-call]')).toHaveCount(0);
  await expect(wall.page.locator('#board-new')).toBeHidden();

  await phone.locator('#dial-audio').click();
  await expect(desk.page.locator('#call')).toHaveAttribute('data-state', 'incoming');
  await expect(station.page.locator('#call')).toHaveAttribute('data-state', 'incoming');
  await desk.page.locator('#call .call-accept').click();
  await expect(phone.locator('#call')).toHaveAttribute('data-state', 'active', { timeout: 20_000 });
  await expect(desk.page.locator('#call')).toHaveAttribute('data-state', 'active', { timeout: 20_000 });
  await expect(station.page.locator('#call')).toHaveAttribute('data-state', 'ended');
  await expect(station.page.locator('#call .call-state')).toContainText('已由其他席位接听');
  await expect(wall.page.locator('#call[data-state]')).toHaveCount(0);
  await desk.page.screenshot({ path: test.info().outputPath('desk-answered.png') });
  await station.page.screenshot({ path: test.info().outputPath('station-answered-elsewhere.png') });
  await wall.page.screenshot({ path: test.info().outputPath('wall-observer.png') });
  await phone.locator('#call .call-hangup').click();
  await expect(desk.page.locator('#call')).toHaveAttribute('data-state', 'ended');
  for (const { ctx } of [desk, station, wall]) await ctx.close();
  await phoneCtx.close();
});

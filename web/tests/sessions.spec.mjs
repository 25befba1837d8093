// A command session between the county's console and a grid worker's phone: opened on the
// console, joined on the phone, the worker's camera pulled (the phone says it is watched), ended.
import { test, expect } from '@playwright/test';
import { TestHub, workerOf, deviceContext } from './hub.mjs';

const COUNTY = '230805';
let hub;
let worker;
test.beforeAll(async () => {
  hub = await TestHub.start();
  worker = await workerOf(hub, COUNTY);
});
test.afterAll(async () => {
  await hub?.stop();
});

test('the console opens a session with a worker, pulls its camera and ends it; the phone follows', async ({ browser }) => {
  const wallCtx = await deviceContext(browser);
  const phoneCtx = await deviceContext(browser, true);
  const wall = await wallCtx.newPage();
  const phone = await phoneCtx.newPage();
  await phone.goto(hub.link('/field', worker.id));
  await expect(phone.locator('body')).toHaveAttribute('data-ready', 'true');
  await wall.goto(hub.link('/', COUNTY));
  await expect(wall.locator('body')).toHaveAttribute('data-ready', 'true');

  // Down to the worker's village, and open a session with the worker.
  for (const id of worker.path.slice(2)) await wall.locator(`#children li[data-id="${id}"]`).click();
  await wall.locator('#session-new').click();
  await wall.locator('#session-form input[name=title]').fill('防汛会商');
  await wall.locator(`#session-pick input[value="${worker.id}"]`).check();
  await wall.locator('#session-form button[type=submit]').click();
  const panel = wall.locator('#session');
  await expect(panel).toHaveAttribute('data-state', 'in');
  await expect(panel.locator(`li[data-id="${worker.id}"]`)).toHaveAttribute('data-state', 'invited');

  // The phone is invited, joins, and sees who commands.
  const field = phone.locator('#session');
  await expect(field.locator('.session-invite')).toContainText('防汛会商');
  await field.locator('.session-join').click();
  await expect(field).toHaveAttribute('data-state', 'in');
  await expect(field.locator('.session-commander')).toContainText('东风区');
  await expect(panel.locator(`li[data-id="${worker.id}"]`)).toHaveAttribute('data-state', 'joined');
  // Presence: the wall's row for the worker shows in_session.
  await expect.poll(() => wall.evaluate((id) => window.gridhub.presence.status(id), worker.id)).toBe('in_session');

  // The camera pulled: the phone says it is watched; the roster flags it.
  await panel.locator(`li[data-id="${worker.id}"] .ctl-pull_camera`).click();
  await expect(field.locator('.session-watched')).toBeVisible();
  await expect(panel.locator(`li[data-id="${worker.id}"] .ctl-release_camera`)).toBeVisible();
  // Its camera reaches the wall through the hub's forwarding unit: a tile with its name, frames
  // decoded; the commander's voice reaches the phone.
  const tile = panel.locator(`.session-tile[data-from="${worker.id}"]`);
  await expect(tile).toBeVisible({ timeout: 20_000 });
  await expect.poll(() => wall.evaluate(() => window.gridhub.sessions.framesReceived()), { timeout: 20_000 }).toBeGreaterThan(10);
  await expect(field.locator(`audio[data-from="${COUNTY}"]`)).toHaveCount(1, { timeout: 20_000 });
  // The county's video wall (an observer seat) finds the session, watches, and shows the camera.
  const screenCtx = await deviceContext(browser);
  const screen = await screenCtx.newPage();
  await screen.goto(hub.link('/', COUNTY, 'observer', 'wall'));
  await expect(screen.locator('body')).toHaveAttribute('data-ready', 'true');
  await expect(screen.locator('#session')).toHaveAttribute('data-state', 'in', { timeout: 15_000 });
  await expect(screen.locator(`#session .session-tile[data-from="${worker.id}"]`)).toBeVisible({ timeout: 20_000 });
  await expect.poll(() => screen.evaluate(() => window.gridhub.sessions.framesReceived()), { timeout: 20_000 }).toBeGreaterThan(10);
  await expect(panel.locator('li[data-part="observer"]')).toHaveCount(1);
  await expect(screen.locator('#session .controls')).toHaveCount(0);
  await expect(screen.locator('#session .session-end')).toHaveCount(0);
  await screen.screenshot({ path: test.info().outputPath('wall-watching.png') });

    await expect(panel.locator(`li[data-id="${worker.id}"] .pub`)).toHaveCount(2);
  // Spotlighted, the worker's camera is the large tile on both walls; the spotlight cleared, not.
  await panel.locator(`li[data-id="${worker.id}"] .ctl-spotlight`).click();
  await expect(tile).toHaveClass(/spotlight/);
  await expect(screen.locator(`#session .session-tile[data-from="${worker.id}"]`)).toHaveClass(/spotlight/);
  await wall.screenshot({ path: test.info().outputPath('wall-session.png') });
  await panel.locator('.ctl-clear_spotlight').click();
  await expect(tile).not.toHaveClass(/spotlight/);
  await phone.screenshot({ path: test.info().outputPath('phone-watched.png') });

  // A participant cannot command; the commander ends it and the phone is told.
  const code = await phone.evaluate((s) => window.gridhub.hub.request('session.control', { session: s, action: 'end' }).then(() => 'ok', (e) => e.code),
    await wall.evaluate(() => window.gridhub.sessions.current.session));
  expect(code).toBe('not_commander');
  await panel.locator('.session-end').click();
  await expect(field.locator('.session-notice')).toContainText('会商已结束');
  await expect(field.locator('.session-watched')).toHaveCount(0);
  await expect.poll(() => wall.evaluate((id) => window.gridhub.presence.status(id), worker.id)).toBe('online');
  await expect(screen.locator('#session .session-notice')).toContainText('会商已结束');
  await wallCtx.close();
  await phoneCtx.close();
  await screenCtx.close();
});

test('an operator picks a worker on the map and opens a session with it', async ({ browser }) => {
  const ctx = await deviceContext(browser);
  const wall = await ctx.newPage();
  await wall.goto(hub.link('/', COUNTY));
  await expect(wall.locator('body')).toHaveAttribute('data-ready', 'true');
  // Down to the worker's village: the map frames its terminals, far enough apart to click one.
  for (const id of worker.path.slice(2)) await wall.locator(`#children li[data-id="${id}"]`).click();
  const at = await wall.evaluate((id) => {
    const g = window.gridhub;
    const loc = g.presence.endpoints.get(id)?.location || g.org.get(id).location;
    return g.map.chart.convertToPixel({ geoIndex: 0 }, [loc.lon, loc.lat]);
  }, worker.id);
  const box = await wall.locator('#map').boundingBox();
  await wall.mouse.click(box.x + at[0], box.y + at[1]);
  await expect(wall.locator('#session-picked')).toBeVisible();
  await expect(wall.locator('#session-picked-text')).toContainText('1');
  expect(await wall.evaluate(() => [...window.gridhub.map.picked])).toEqual([worker.id]);

  // The dialog lists it first, ticked; the session opens with it invited and the pick is cleared.
  await wall.locator('#session-new').click();
  await expect(wall.locator(`#session-pick input[value="${worker.id}"]`)).toBeChecked();
  await wall.locator('#session-form input[name=title]').fill('地图选人');
  await wall.locator('#session-form button[type=submit]').click();
  const panel = wall.locator('#session');
  await expect(panel).toHaveAttribute('data-state', 'in');
  await expect(panel.locator(`li[data-id="${worker.id}"]`)).toHaveAttribute('data-state', 'invited');
  await expect(wall.locator('#session-picked')).toBeHidden();
  await panel.locator('.session-end').click();
  await expect(panel).not.toHaveAttribute('data-state', 'in');
  await ctx.close();
});

test('a phone reloaded mid-session rejoins and its pulled camera reaches the wall again', async ({ browser }) => {
  const wallCtx = await deviceContext(browser);
  const phoneCtx = await deviceContext(browser, true);
  const wall = await wallCtx.newPage();
  const phone = await phoneCtx.newPage();
  await phone.goto(hub.link('/field', worker.id));
  await expect(phone.locator('body')).toHaveAttribute('data-ready', 'true');
  await wall.goto(hub.link('/', COUNTY));
  await expect(wall.locator('body')).toHaveAttribute('data-ready', 'true');
  const id = await wall.evaluate((w) => window.gridhub.sessions.create('重连测试', [w]).then((r) => r.session.session), worker.id);
  const field = phone.locator('#session');
  await field.locator('.session-join').click();
  await expect(field).toHaveAttribute('data-state', 'in');
  const panel = wall.locator('#session');
  await panel.locator(`li[data-id="${worker.id}"] .ctl-pull_camera`).click();
  await expect(field.locator('.session-watched')).toBeVisible();
  const frames = () => wall.evaluate(() => window.gridhub.sessions.framesReceived());
  await expect.poll(frames, { timeout: 20_000 }).toBeGreaterThan(10);

  // Reloaded: the page finds its session, joins again on a new media connection, and — its
  // camera still pulled — publishes it; the wall decodes frames from the new track.
  await phone.reload();
  await expect(phone.locator('body')).toHaveAttribute('data-ready', 'true');
  await expect(field).toHaveAttribute('data-state', 'in', { timeout: 15_000 });
  await expect(field.locator('.session-watched')).toBeVisible();
  await expect(panel.locator(`li[data-id="${worker.id}"]`)).toHaveAttribute('data-state', 'joined');
  const tile = panel.locator(`.session-tile[data-from="${worker.id}"]`);
  await expect(tile).toHaveCount(1, { timeout: 20_000 });
  const before = await frames();
  await expect.poll(frames, { timeout: 20_000 }).toBeGreaterThan(before + 10);
  await wall.evaluate((s) => window.gridhub.hub.request('session.control', { session: s, action: 'end' }), id);
  await wallCtx.close();
  await phoneCtx.close();
});

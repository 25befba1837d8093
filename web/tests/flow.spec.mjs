// An order's whole life between the city's video wall and a grid worker's phone.
import { test, expect } from '@playwright/test';
import { TestHub, PHONE, workerOf, pngImage } from './hub.mjs';

const CITY = '230800';
let hub;
let worker;
test.beforeAll(async () => {
  hub = await TestHub.start();
  worker = await workerOf(hub, '230822');
});
test.afterAll(async () => {
  await hub?.stop();
});

test('an order taken in and dispatched on the console is accepted and reported on a field page, and the board follows it to the archive', async ({ browser }) => {
  const wall = await (await browser.newContext({ viewport: { width: 1920, height: 1080 } })).newPage();
  const phone = await (await browser.newContext(PHONE)).newPage();
  await wall.goto(hub.link('/', CITY));
  await expect(wall.locator('body')).toHaveAttribute('data-ready', 'true');
  await phone.goto(hub.link('/field', worker.id));
  await expect(phone.locator('body')).toHaveAttribute('data-ready', 'true');

  // Intake on the wall, at the worker's grid.
  await wall.locator('#board-new').click();
  const form = wall.locator('#new-order-form');
  await form.locator('[name="category"]').selectOption('roads');
  // The causes follow the category.
  await form.locator('[name="cause"]').selectOption('pavement');
  await form.locator('[name="description"]').fill('路面塌陷，需设置警示');
  await form.locator('[name="node"]').fill(worker.id);
  await form.locator('[name="address"]').fill('中心街 12 号');
  await form.locator('button[type="submit"]').click();
  const detail = wall.locator('#order-body .order');
  await expect(detail).toHaveAttribute('data-state', 'intake');
  const id = Number(await detail.getAttribute('data-id'));
  await expect(wall.locator(`#mine li[data-id="${id}"]`)).toBeVisible();
  expect((await hub.api(`/api/v1/orders/${id}`, CITY)).body.order.cause).toBe('pavement');
  // Dispatch towards the grid: the county above it is offered first.
  await expect(detail.locator('select[name="to"]')).toHaveValue(worker.path[1]);
  await detail.locator('button.dispatch').click();
  await expect(detail).toHaveAttribute('data-state', 'dispatched');
  await wall.locator('#order-dialog form[method="dialog"] button').click();
  await expect(wall.locator(`#mine li[data-id="${id}"]`)).toHaveCount(0);

  // The centers below pass it on.
  await hub.dispatchDown(id, worker, 1);
  const chain = [...worker.path, worker.id];

  // The worker takes it and reports, on the phone.
  const card = phone.locator(`#orders li[data-id="${id}"]`);
  await expect(card).toContainText('路面塌陷');
  await card.locator('button.ack').click();
  await expect(wall.locator(`#ticker li[data-id="${id}"][data-state="in_progress"]`)).toBeVisible();
  await card.locator('button.report').click();
  await card.locator('textarea').fill('已设置警示标志，通知市政抢修');
  // With a photo from the phone's camera.
  await card.locator('input[type="file"]').setInputFiles({ name: 'site.png', mimeType: 'image/png', buffer: pngImage(2000, 1500, true) });
  await expect(card.locator('img.photo-thumb')).toBeVisible();
  await card.locator('form button[type="submit"]').click();
  await expect(card).toHaveAttribute('data-state', 'result_reported');
  await expect(wall.locator(`#ticker li[data-id="${id}"][data-state="result_reported"]`).first()).toBeVisible();
  await expect(wall.locator('.step[data-state="result_reported"] b')).toHaveText('1');
  await phone.screenshot({ path: test.info().outputPath('phone.png') });

  // Reviewed back up the chain to the city.
  for (let i = chain.length - 2; i >= 1; i--) {
    const r = await hub.api(`/api/v1/orders/${id}/review`, chain[i], { method: 'POST', body: JSON.stringify({ approve: true }) });
    expect(r.status, JSON.stringify(r.body)).toBe(200);
  }
  await expect(wall.locator(`#mine li[data-id="${id}"]`)).toBeVisible();
  await wall.locator(`#mine li[data-id="${id}"]`).click();
  await expect(detail).toContainText('已设置警示标志');
  // The photo came with the result: the wall shows it, decoded.
  const photo = detail.locator('.photos img.photo');
  await expect(photo).toHaveCount(1);
  // Scaled down on the phone to 1,600 px, and still far larger than any other request.
  await expect.poll(() => photo.evaluate((i) => i.naturalWidth)).toBe(1600);
  const sent = await hub.api(`/api/v1/orders/${id}/attachments`, CITY);
  expect(sent.body.attachments[0].bytes).toBeGreaterThan(256 * 1024);
  await wall.screenshot({ path: test.info().outputPath('wall-result-photo.png') });
  await detail.locator('button.approve').click();
  await detail.locator('button.rate').click();
  await expect(detail).toHaveAttribute('data-state', 'rated');
  await detail.locator('textarea').fill('已修复，路面恢复通行');
  await detail.locator('button.publish').click();
  await expect(detail).toHaveAttribute('data-state', 'published');
  await detail.locator('button.archive').click();
  await expect(detail).toHaveAttribute('data-state', 'archived');
  await expect(wall.locator('.step[data-state="archived"] b')).toHaveText('1');
  await wall.locator('#order-dialog form[method="dialog"] button').click();
  await wall.screenshot({ path: test.info().outputPath('wall.png') });

  // A refused action is told, in the operator's language, and changes nothing.
  const code = await wall.evaluate((o) => window.gridhub.hub.request('order.dispatch', { order: o, to: '230822' }).then(() => 'ok', (e) => e.code), id);
  expect(code).toBe('illegal_transition');
});

test('an intake outside the operator\'s subtree is refused with a clear message and nothing is created', async ({ page }) => {
  await page.goto(hub.link('/', '230805'));
  await expect(page.locator('body')).toHaveAttribute('data-ready', 'true');
  await page.locator('#board-new').click();
  const form = page.locator('#new-order-form');
  await form.locator('[name="description"]').fill('噪音扰民');
  await form.locator('[name="node"]').fill(worker.id);
  await form.locator('button[type="submit"]').click();
  await expect(page.locator('#new-order-error')).toContainText('超出您的管辖范围');
  await expect(form.locator('[name="description"]')).toHaveValue('噪音扰民');
  const list = await hub.api('/api/v1/orders?node=230805', '230805');
  expect(list.body.orders).toHaveLength(0);
});

// The console under a live city, measured in Chromium: frames per second (requestAnimationFrame
// callbacks the page gets, per 10 s window) and the JavaScript heap after a forced collection
// (every minute) while presence changes keep arriving. Run by scripts/bench-wall.
//
//   node web/bench/wall.mjs URL [--minutes 10] [--width 3840] [--height 2160] [--out FILE]

import { chromium } from '@playwright/test';
import { writeFileSync } from 'node:fs';

const args = process.argv.slice(2);
const url = args[0];
const opt = (name, dflt) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : dflt;
};
const minutes = Number(opt('minutes', 10));
const width = Number(opt('width', 3840));
const height = Number(opt('height', 2160));
const out = opt('out', null);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
const page = await browser.newPage({ viewport: { width, height } });
await page.goto(url);
await page.waitForSelector('body[data-ready="true"]', { timeout: 60_000 });
const cdp = await page.context().newCDPSession(page);
await cdp.send('Performance.enable');
// Presence change → drawn: from the hub's time of the change (`since`, same machine clock) to
// the second frame after the delta arrived (the first draws the navigator). Bucketed by 5 ms up
// to 10 s, so a long run holds a fixed amount.
await page.evaluate(() => {
  window.__lat = new Uint32Array(2001);
  window.gridhub.presence.addEventListener('change', (ev) => {
    const p = window.gridhub.presence;
    const sinces = ev.detail.endpoints.map((id) => p.endpoints.get(id)?.since).filter(Boolean);
    requestAnimationFrame(() =>
      requestAnimationFrame(() => {
        const now = Date.now();
        for (const s of sinces) window.__lat[Math.min(2000, Math.max(0, Math.round((now - s) / 5)))]++;
      }),
    );
  });
});
await page.evaluate(() => {
  window.__frames = 0;
  const f = () => {
    window.__frames++;
    requestAnimationFrame(f);
  };
  requestAnimationFrame(f);
});

async function heap() {
  await cdp.send('HeapProfiler.collectGarbage');
  const { metrics } = await cdp.send('Performance.getMetrics');
  const m = Object.fromEntries(metrics.map((x) => [x.name, x.value]));
  return { heap_mb: m.JSHeapUsedSize / 2 ** 20, nodes: m.Nodes, listeners: m.JSEventListeners };
}

const probe = () =>
  page.evaluate(() => ({
    frames: window.__frames,
    t: performance.now(),
    seq: window.gridhub.presence.seq,
    online: window.gridhub.presence.counts(window.gridhub.org.root).online,
  }));

const windows = [];
const heaps = [];
const t0 = Date.now();
heaps.push({ minute: 0, ...(await heap()) });
let last = await probe();
const end = t0 + minutes * 60_000;
while (Date.now() < end) {
  await page.waitForTimeout(10_000);
  const now = await probe();
  windows.push({
    at_s: Math.round((Date.now() - t0) / 1000),
    fps: ((now.frames - last.frames) * 1000) / (now.t - last.t),
    presence_changes_applied: now.seq - last.seq,
    online: now.online,
  });
  last = now;
  const minute = Math.round((Date.now() - t0) / 60_000);
  if (minute > heaps[heaps.length - 1].minute) heaps.push({ minute, ...(await heap()) });
  last = await probe();
}
const lat = await page.evaluate(() => Array.from(window.__lat));
await browser.close();
const total = lat.reduce((a, b) => a + b, 0);
const pct = (q) => {
  let acc = 0;
  for (let i = 0; i < lat.length; i++) {
    acc += lat[i];
    if (acc >= q * total) return i * 5;
  }
  return NaN;
};
const latency = { changes: total, p50_ms: pct(0.5), p99_ms: pct(0.99), max_ms: lat.findLastIndex((n) => n > 0) * 5 };

const fps = windows.map((w) => w.fps).sort((a, b) => a - b);
const median = fps[Math.floor(fps.length / 2)];
const summary = {
  url: url.replace(/#.*/, ''),
  viewport: `${width}x${height}`,
  minutes,
  fps_min: fps[0],
  fps_median: median,
  fps_windows_below_30: fps.filter((x) => x < 30).length,
  windows: windows.length,
  changes_applied_per_s: windows.reduce((s, w) => s + w.presence_changes_applied, 0) / (windows.length * 10),
  heap_first_mb: heaps[1]?.heap_mb ?? heaps[0].heap_mb,
  heap_last_mb: heaps[heaps.length - 1].heap_mb,
  change_to_drawn: latency,
  heaps,
  fps_by_window: windows,
};
const text = JSON.stringify(summary, null, 2);
if (out) writeFileSync(out, text);
console.log(
  `console ${summary.viewport} for ${minutes} min: fps min ${summary.fps_min.toFixed(1)}, median ${median.toFixed(1)}, ` +
    `${summary.fps_windows_below_30} of ${windows.length} windows under 30; presence seq advanced ${summary.changes_applied_per_s.toFixed(0)}/s; ` +
    `heap after GC ${summary.heap_first_mb.toFixed(1)} MB at minute 1 → ${summary.heap_last_mb.toFixed(1)} MB at the end; ` +
    `DOM nodes ${heaps[1]?.nodes ?? heaps[0].nodes} → ${heaps[heaps.length - 1].nodes}; ` +
    `change → drawn p50 ${latency.p50_ms} ms, p99 ${latency.p99_ms} ms, max ${latency.max_ms} ms (${latency.changes} changes)`,
);

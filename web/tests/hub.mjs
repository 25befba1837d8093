// A real hub for the browser tests: the debug binary cargo built, a fresh data folder and key,
// a free loopback port; credentials minted by `gridhub token`, simulated terminals over real
// WebSockets (the `ws` package) speaking protocol v1.

import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';
import WebSocket from 'ws';
import { deflateSync } from 'node:zlib';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const bin = process.env.GRIDHUB_BIN || join(root, 'target', 'debug', 'gridhub');

function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
    s.on('error', reject);
  });
}

export class TestHub {
  /// `history`: requests of a generated year written into the store before the hub starts.
  static async start(env = {}, { history = 0 } = {}) {
    const hub = new TestHub();
    hub.data = mkdtempSync(join(tmpdir(), 'gridhub-web-'));
    hub.port = await freePort();
    hub.base = `http://127.0.0.1:${hub.port}`;
    hub.env = {
      ...process.env,
      GRIDHUB_SERVER__LISTEN: `127.0.0.1:${hub.port}`,
      GRIDHUB_SERVER__DATA_DIR: hub.data,
      GRIDHUB_AUTH__SECRET: randomBytes(32).toString('hex'),
      GRIDHUB_LOG__FILTER: 'warn',
      ...env,
    };
    if (history) execFileSync(bin, ['history', '--orders', String(history)], { cwd: root, env: hub.env, stdio: 'ignore' });
    hub.proc = spawn(bin, ['serve'], { cwd: root, env: hub.env, stdio: ['ignore', 'inherit', 'inherit'] });
    hub.exited = new Promise((r) => hub.proc.on('exit', r));
    const deadline = Date.now() + 30_000;
    for (;;) {
      try {
        const r = await fetch(`${hub.base}/readyz`);
        if (r.ok) break;
      } catch {}
      if (Date.now() > deadline) throw new Error(`the hub did not get ready on ${hub.base}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    hub.terminals = [];
    return hub;
  }

  token(endpoint, role, seat) {
    const args = ['token', '--endpoint', endpoint];
    if (role) args.push('--role', role);
    if (seat) args.push('--seat', seat);
    return execFileSync(bin, args, { cwd: root, env: this.env }).toString().trim();
  }

  /// A credential that expired the moment it was made.
  tokenExpired(endpoint) {
    return execFileSync(bin, ['token', '--endpoint', endpoint, '--ttl', '0'], { cwd: root, env: this.env })
      .toString()
      .trim();
  }

  /// The page's address with the credential in the fragment, as a provisioning link has it.
  link(path, endpoint, role, seat) {
    return `${this.base}${path}#credential=${this.token(endpoint, role, seat)}`;
  }

  async api(path, endpoint, init = {}) {
    const r = await fetch(`${this.base}${path}`, {
      ...init,
      headers: { Authorization: `Bearer ${this.token(endpoint)}`, 'Content-Type': 'application/json', ...(init.headers || {}) },
    });
    return { status: r.status, body: await r.json().catch(() => null) };
  }

  /// A terminal on a real WebSocket, authenticated with its own credential.
  async terminal(endpoint, role) {
    const t = new Terminal(this, endpoint, this.token(endpoint, role));
    await t.open();
    this.terminals.push(t);
    return t;
  }

  /// Dispatches order `id` down the worker's chain of command, tier by tier, as each center
  /// would, starting from `chain[from]` (0: the city).
  async dispatchDown(id, worker, from = 0) {
    const chain = [...worker.path, worker.id];
    for (let i = from; i + 1 < chain.length; i++) {
      const r = await this.api(`/api/v1/orders/${id}/dispatch`, chain[i], {
        method: 'POST',
        body: JSON.stringify({ to: chain[i + 1] }),
      });
      if (r.status !== 200) throw new Error(`dispatch by ${chain[i]}: ${r.status} ${JSON.stringify(r.body)}`);
    }
  }

  async stop() {
    for (const t of this.terminals) t.close();
    this.proc.kill('SIGTERM');
    await Promise.race([this.exited, new Promise((r) => setTimeout(r, 10_000))]);
    if (this.proc.exitCode === null) this.proc.kill('SIGKILL');
    rmSync(this.data, { recursive: true, force: true });
  }
}

export class Terminal {
  constructor(hub, endpoint, token) {
    this.hub = hub;
    this.endpoint = endpoint;
    this.token = token;
    this.nextId = 1;
    this.waiting = new Map();
    this.pushes = [];
    this.listeners = [];
  }

  open() {
    return new Promise((resolve, reject) => {
      this.ws = new WebSocket(`ws://127.0.0.1:${this.hub.port}/ws`, {
        headers: { Authorization: `Bearer ${this.token}` },
      });
      this.ws.on('message', (buf) => {
        const m = JSON.parse(buf.toString());
        if (m.type === 'hello') {
          this.hello = m.data;
          resolve(this);
        } else if ((m.type === 'reply' || m.type === 'error') && this.waiting.has(m.re)) {
          const w = this.waiting.get(m.re);
          this.waiting.delete(m.re);
          m.type === 'reply' ? w.resolve(m.data) : w.reject(Object.assign(new Error(m.data.message), m.data));
        } else {
          this.pushes.push(m);
          for (const l of this.listeners) l(m);
        }
      });
      this.ws.on('error', reject);
      this.ws.on('unexpected-response', (_req, res) => reject(new Error(`upgrade refused: ${res.statusCode}`)));
    });
  }

  request(type, data) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      this.ws.send(JSON.stringify(data === undefined ? { v: 1, id, type } : { v: 1, id, type, data }));
    });
  }

  /// Resolves with the first push of `type` (already received or to come) that `pred` accepts.
  push(type, pred = () => true, timeoutMs = 10_000) {
    const seen = this.pushes.find((m) => m.type === type && pred(m.data));
    if (seen) return Promise.resolve(seen.data);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no ${type} push within ${timeoutMs} ms`)), timeoutMs);
      const l = (m) => {
        if (m.type === type && pred(m.data)) {
          clearTimeout(timer);
          this.listeners = this.listeners.filter((x) => x !== l);
          resolve(m.data);
        }
      };
      this.listeners.push(l);
    });
  }

  close() {
    if (this.ws && this.ws.readyState <= 1) this.ws.close(1000);
  }
}

/// A phone's screen, for the field page.
export const PHONE = { viewport: { width: 360, height: 780 }, isMobile: true, hasTouch: true };

/// A browser context whose pages may use the (fake) camera and microphone: a wall, or a phone.
export async function deviceContext(browser, phone = false) {
  const ctx = await browser.newContext(phone ? PHONE : { viewport: { width: 1920, height: 1080 } });
  await ctx.grantPermissions(['camera', 'microphone']);
  return ctx;
}

/// The first grid worker of a county, from the tree as the city sees it (`path`: city, county,
/// township, village).
export async function workerOf(hub, county) {
  return (await subtree(hub, '230800')).find((n) => n.tier === 'worker' && n.path[1] === county);
}

/// Terminal ids of the committed Jiamusi tree, read through the hub's own REST API.
export async function subtree(hub, node, viewer = node) {
  const { body } = await hub.api(`/api/v1/org/nodes/${node}/subtree?depth=4`, viewer);
  const out = [];
  const walk = (n, path) => {
    out.push({ ...n, path });
    for (const c of n.children || []) walk(c, [...path, n.id]);
  };
  walk(body.tree, []);
  return out;
}

/// A real PNG of `w`×`h` pixels in stripes (with `noise`, grain that does not compress away,
/// as a camera's does), as a phone's camera would hand a page a picture.
export function pngImage(w = 64, h = 48, noise = false) {
  let seed = 2308;
  const grain = () => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return noise ? (seed >> 16) % 64 : 0;
  };
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc = (buf) => {
    let c = 0xffffffff;
    for (const b of buf) c = crcTable[(c ^ b) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const chunk = (type, data) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const body = Buffer.concat([Buffer.from(type, 'ascii'), data]);
    const sum = Buffer.alloc(4);
    sum.writeUInt32BE(crc(body));
    return Buffer.concat([len, body, sum]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // RGB
  const rows = [];
  for (let y = 0; y < h; y++) {
    const row = Buffer.alloc(1 + 3 * w);
    for (let x = 0; x < w; x++) row.set((y % 16 < 8 ? [190, 120, 30] : [40, 90, 190]).map((c) => c + grain()), 1 + 3 * x);
    rows.push(row);
  }
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', deflateSync(Buffer.concat(rows))),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

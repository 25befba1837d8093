// The browser's side of protocol v1 (docs/protocol.md): a terminal like any other.
//
// A credential never goes into a URL: the client asks for a one-use ticket with the credential
// in a header, then opens /ws?ticket=…. It keeps the connection alive with `ping`, matches
// replies to requests by id, hands pushes to listeners, and reconnects with jittered backoff
// except where the protocol says not to (4001 replaced, an expired or refused credential).

const BACKOFF_MIN_MS = 750;
const BACKOFF_MAX_MS = 30000;
// A request that gets no answer this long is failed locally; the hub answers every request that
// carries an id, so this only fires on a dead connection.
const REQUEST_TIMEOUT_MS = 15000;

export class HubError extends Error {
  constructor(code, message, requestType) {
    super(message);
    this.code = code;
    this.requestType = requestType;
  }
}

// Close codes after which reconnecting on our own would be wrong (docs/protocol.md, close codes).
const FINAL = new Map([
  [4001, 'replaced'],
  [4003, 'expired'],
  [1002, 'protocol'],
  [1007, 'protocol'],
  [1009, 'protocol'],
]);

export class Hub extends EventTarget {
  /// `credential()` returns the current credential (a JWT) or null.
  constructor({ credential, base = '' }) {
    super();
    this.credential = credential;
    this.base = base;
    this.ws = null;
    this.hello = null;
    this.state = 'idle'; // idle | connecting | open | waiting | stopped
    this.reason = null;
    this.nextId = 1;
    this.pending = new Map();
    this.backoff = BACKOFF_MIN_MS;
    this.timer = null;
    this.pinger = null;
    this.lastPong = 0;
  }

  start() {
    if (this.state === 'connecting' || this.state === 'open') return;
    this.connect();
  }

  stop(reason = 'stopped') {
    this.setState('stopped', reason);
    clearTimeout(this.timer);
    clearInterval(this.pinger);
    if (this.ws) this.ws.close(1000);
    this.ws = null;
    this.failPending('closed', 'the connection was closed');
  }

  setState(state, reason = null) {
    this.state = state;
    this.reason = reason;
    this.dispatchEvent(new CustomEvent('state', { detail: { state, reason } }));
  }

  async connect() {
    clearTimeout(this.timer);
    const cred = this.credential();
    if (!cred) {
      this.setState('stopped', 'no_credential');
      return;
    }
    this.setState('connecting');
    let ticket;
    try {
      const res = await fetch(`${this.base}/api/v1/tickets`, {
        method: 'POST',
        headers: { Authorization: `Bearer ${cred}` },
      });
      const body = await res.json().catch(() => ({}));
      if (res.status === 401) {
        // The credential itself is refused (expired, forged, unknown): retrying cannot help.
        this.setState('stopped', body?.error?.code || 'unauthorized');
        return;
      }
      if (!res.ok) throw new Error(body?.error?.code || `HTTP ${res.status}`);
      ticket = body;
    } catch (e) {
      this.retry(String(e.message || e));
      return;
    }
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const url = this.base
      ? this.base.replace(/^http/, 'ws') + ticket.url
      : `${proto}//${location.host}${ticket.url}`;
    const ws = new WebSocket(url);
    this.ws = ws;
    ws.onmessage = (ev) => this.onMessage(ev.data);
    ws.onclose = (ev) => this.onClose(ws, ev);
  }

  /// Reconnects after a jittered backoff, never sooner than `floor` ms (1008 asks for a minute).
  retry(reason, floor = 0) {
    this.setState('waiting', reason);
    const wait = floor + this.backoff * (0.5 + Math.random() / 2);
    this.backoff = Math.min(this.backoff * 2, BACKOFF_MAX_MS);
    this.timer = setTimeout(() => this.connect(), wait);
  }

  onClose(ws, ev) {
    if (ws !== this.ws) return;
    this.ws = null;
    clearInterval(this.pinger);
    this.failPending('closed', 'the connection was lost');
    if (this.state === 'stopped') return;
    this.dispatchEvent(new CustomEvent('close', { detail: { code: ev.code, reason: ev.reason } }));
    const final = FINAL.get(ev.code);
    if (final) {
      this.setState('stopped', final);
      return;
    }
    this.retry(`closed_${ev.code}`, ev.code === 1008 ? 60000 : 0);
  }

  onMessage(text) {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      return;
    }
    if (msg.type === 'hello') {
      this.hello = msg.data;
      this.backoff = BACKOFF_MIN_MS;
      this.lastPong = Date.now();
      const every = msg.data.heartbeat?.interval_ms || 20000;
      const timeout = msg.data.heartbeat?.timeout_ms || 60000;
      this.pinger = setInterval(() => {
        if (Date.now() - this.lastPong > timeout && this.ws) {
          // No answer to our pings: the path is dead even if the socket does not know it yet.
          this.ws.close(4000);
          this.onClose(this.ws, { code: 4000, reason: 'no pong' });
          return;
        }
        this.request('ping').then(() => (this.lastPong = Date.now()), () => {});
      }, every);
      this.setState('open');
      this.dispatchEvent(new CustomEvent('hello', { detail: msg.data }));
      return;
    }
    if ((msg.type === 'reply' || msg.type === 'error') && msg.re != null && this.pending.has(msg.re)) {
      const p = this.pending.get(msg.re);
      this.pending.delete(msg.re);
      clearTimeout(p.timer);
      if (msg.type === 'reply') p.resolve(msg.data);
      else p.reject(new HubError(msg.data.code, msg.data.message, msg.data.request_type));
      return;
    }
    if (msg.type === 'error') {
      // An error to a notification (no id): surface it, nothing waits for it.
      this.dispatchEvent(new CustomEvent('error', { detail: msg.data }));
      return;
    }
    // Outbox pushes number their messages in the envelope (`seq`), beside `data`.
    const detail = msg.type === 'outbox' ? { seq: msg.seq, data: msg.data } : msg.data;
    this.dispatchEvent(new CustomEvent(msg.type, { detail }));
  }

  /// Sends a request and resolves with its reply's data, or rejects with a HubError. `timeoutMs`
  /// 0 waits as long as the connection lives (a long outbox replay on a slow link).
  request(type, data, { timeoutMs = REQUEST_TIMEOUT_MS } = {}) {
    return new Promise((resolve, reject) => {
      if (!this.ws || this.state !== 'open') {
        reject(new HubError('not_connected', 'not connected to the hub', type));
        return;
      }
      const id = this.nextId++;
      const timer = timeoutMs
        ? setTimeout(() => {
            this.pending.delete(id);
            reject(new HubError('timeout', 'the hub did not answer', type));
          }, timeoutMs)
        : null;
      this.pending.set(id, { resolve, reject, timer });
      const msg = { v: 1, id, type };
      if (data !== undefined) msg.data = data;
      this.ws.send(JSON.stringify(msg));
    });
  }

  /// Sends a notification: no reply unless it fails (then an `error` event).
  notify(type, data) {
    if (!this.ws || this.state !== 'open') return false;
    const msg = { v: 1, type };
    if (data !== undefined) msg.data = data;
    this.ws.send(JSON.stringify(msg));
    return true;
  }

  failPending(code, message) {
    for (const [, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(new HubError(code, message));
    }
    this.pending.clear();
  }

  /// REST with the credential in the header; rejects with a HubError carrying the API's code.
  /// A Blob body is sent as it is, with its own type (a photo).
  async api(path, { method = 'GET', body, headers = {}, as = 'json' } = {}) {
    const h = { Authorization: `Bearer ${this.credential()}`, ...headers };
    const raw = body instanceof Blob;
    if (body !== undefined) h['Content-Type'] = raw ? body.type : 'application/json';
    const res = await fetch(`${this.base}${path}`, {
      method,
      headers: h,
      body: body === undefined ? undefined : raw ? body : JSON.stringify(body),
    });
    if (res.ok && as === 'blob') return res.blob();
    const json = await res.json().catch(() => null);
    if (!res.ok) {
      const e = json?.error || {};
      throw new HubError(e.code || `http_${res.status}`, e.message || res.statusText, path);
    }
    return json;
  }
}

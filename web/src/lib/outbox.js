// A terminal's durable inbox (docs/protocol.md, "Durable pushes: the outbox"), exactly once:
// the last sequence handled is kept in this browser, every (re)connection resumes after it, a
// message is acknowledged only once it is handled and stored, and one that arrives twice (a
// replay that overlaps what was live before a drop) is recognised by its sequence and skipped.

export class Outbox extends EventTarget {
  constructor(hub, endpoint) {
    super();
    this.hub = hub;
    this.key = `gridhub.outbox.${endpoint}`;
    this.last = Number(localStorage.getItem(this.key) || 0);
    this.resuming = false;
    // Sequences handled since this page loaded (the tests check exactly-once with it); bounded.
    this.handled = [];
    hub.addEventListener('outbox', (ev) => this.onMessage(ev.detail));
  }

  /// After every hello: replay what came while we were away, then live messages.
  async resume() {
    this.resuming = true;
    try {
      for (;;) {
        let r;
        try {
          r = await this.hub.request('outbox.resume', { after: this.last });
        } catch (e) {
          // The hub never sent this far (its data was reset): start again from what it keeps.
          if (e.code !== 'invalid_data' || this.last === 0) throw e;
          this.last = 0;
          continue;
        }
        this.flushAck();
        if (!r.more) return r;
      }
    } finally {
      this.resuming = false;
    }
  }

  onMessage(msg) {
    // `outbox` pushes carry their sequence beside `data` in the envelope; the client passes
    // the whole envelope on.
    const { seq, data } = msg;
    if (seq <= this.last) return; // already handled before a drop
    this.dispatchEvent(new CustomEvent('message', { detail: { seq, ...data } }));
    this.last = seq;
    this.handled.push(seq);
    if (this.handled.length > 1000) this.handled.splice(0, 500);
    localStorage.setItem(this.key, String(seq));
    if (!this.resuming) this.flushAck();
  }

  flushAck() {
    if (this.last > 0) this.hub.notify('outbox.ack', { seq: this.last });
  }
}

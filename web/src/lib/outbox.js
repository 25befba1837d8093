// A terminal's durable inbox (docs/protocol.md, "Durable pushes: the outbox"), exactly once:
// the last sequence handled is kept in this browser, every (re)connection resumes after it, a
// message is acknowledged only once it is handled and stored, and one that arrives twice (a
// replay that overlaps what was live before a drop) is recognised by its sequence and skipped.

export class Outbox {
  /// `handle(message)` must apply and store the message; if it throws, the message is neither
  /// counted as handled nor acknowledged, and comes again at the next resume.
  constructor(hub, endpoint, handle) {
    this.hub = hub;
    this.handle = handle;
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
    this.stalled = false;
    try {
      for (;;) {
        let r;
        try {
          // A replay of a thousand whole orders on a slow link takes what it takes.
          r = await this.hub.request('outbox.resume', { after: this.last }, { timeoutMs: 0 });
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
    // After a failure nothing later is taken either, so nothing is skipped: the next resume
    // starts again from the last message handled.
    if (this.stalled) return;
    try {
      this.handle({ seq, ...data });
    } catch (e) {
      console.error('outbox message not handled; it comes again on resume', seq, e);
      this.stalled = true;
      return;
    }
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

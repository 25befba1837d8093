// Presence of a watched subtree, kept from a snapshot and the deltas after it
// (docs/protocol.md, presence.subscribe / presence.delta).

export class PresenceView extends EventTarget {
  constructor() {
    super();
    this.node = null;
    this.seq = 0;
    this.endpoints = new Map(); // id → {status, text, location, since}; absent = offline
    this.aggregates = new Map(); // node id → {total, online, busy, in_call, in_session, away}
  }

  /// Replaces everything with a snapshot (a new or renewed subscription).
  snapshot(data) {
    this.node = data.node;
    this.seq = data.seq;
    this.endpoints.clear();
    this.aggregates.clear();
    for (const e of data.endpoints || []) this.endpoints.set(e.id, e);
    for (const a of data.aggregates || []) this.aggregates.set(a.node, a);
    this.dispatchEvent(new CustomEvent('reset'));
  }

  delta(data) {
    if (data.node !== this.node || data.chain) return;
    this.seq = data.seq;
    const changed = [];
    for (const e of data.endpoints || []) {
      if (e.status === 'offline' && !e.location) this.endpoints.delete(e.id);
      else this.endpoints.set(e.id, e);
      changed.push(e.id);
    }
    for (const a of data.aggregates || []) this.aggregates.set(a.node, a);
    this.dispatchEvent(
      new CustomEvent('change', {
        detail: { endpoints: changed, aggregates: (data.aggregates || []).map((a) => a.node) },
      }),
    );
  }

  status(id) {
    return this.endpoints.get(id)?.status || 'offline';
  }

  counts(node) {
    return (
      this.aggregates.get(node) || { total: 0, online: 0, busy: 0, in_call: 0, in_session: 0, away: 0 }
    );
  }
}

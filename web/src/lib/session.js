// Command sessions in a page (docs/protocol.md, "Command sessions"): invitations, the session
// one takes part in with its roster, and — for its commander — the controls. The console and
// the field page share it; what each shows follows from who the terminal is in the session.

import { t, nodeName, errorText } from './i18n.js';
import { el } from './dom.js';

export class Sessions extends EventTarget {
  /// `me()`: this terminal's node id (from `hello`). `publish`: what the page sends in a
  /// session — `audio` (its microphone), `video`: `'always'`, `'pulled'` (when the commander
  /// pulls its camera) or `false`.
  constructor(hub, { me, publish = { audio: true, video: false } }) {
    super();
    this.hub = hub;
    this.me = me;
    this.publish = publish;
    this.pc = null; // the peer connection to the hub's forwarding unit
    this.local = { audio: null, video: null }; // what this page publishes
    this.tiles = new Map(); // publisher id → its tile (video) or audio element
    this.tilesEl = el('div', { className: 'session-tiles' });
    this.invites = new Map(); // session id → invitation
    this.current = null; // the roster of the session this terminal takes part in
    this.notice = null; // a line about the last thing that happened to us (ended, removed)
    this.observer = false; // a video wall: watches, never publishes or commands
    this.watched = false; // the commander pulled our camera
    this.muted = false;
    this.ui = this.build();
    hub.addEventListener('session.invited', (ev) => {
      this.invites.set(ev.detail.session, ev.detail);
      this.render();
    });
    hub.addEventListener('session.roster', (ev) => this.roster(ev.detail));
    // Offers and camera changes run one after another: each awaits the browser, and two at
    // once would open the camera twice or answer out of order.
    this.queue = Promise.resolve();
    const inTurn = (f) => (this.queue = this.queue.then(f).catch((e) => console.warn('session media', e)));
    hub.addEventListener('session.camera', (ev) => this.ours(ev.detail) && inTurn(() => this.camera(ev.detail.pull)));
    hub.addEventListener('session.media.offer', (ev) => inTurn(() => this.mediaOffer(ev.detail)));
    // The hub's candidates follow its offer (trickled), in turn after it.
    hub.addEventListener('session.media.candidate', (ev) => this.ours(ev.detail) && inTurn(() => this.pc?.addIceCandidate(ev.detail.candidate)));
    hub.addEventListener('session.muted', (ev) => this.ours(ev.detail) && ((this.muted = ev.detail.muted), this.render()));
    hub.addEventListener('session.removed', (ev) => this.ours(ev.detail) && this.gone('session.removed'));
    hub.addEventListener('session.ended', (ev) => this.ours(ev.detail) && this.gone('session.ended', ev.detail.reason));
    window.addEventListener('langchange', () => this.render());
  }

    /// After a reload or a reconnection: back into the session this terminal is still in (its
  /// seat is kept for the grace period), on a fresh media connection.
  async resume() {
    if (this.current || this.observer) return;
    try {
      const { sessions } = await this.hub.request('session.list', {});
      const mine = sessions.find((s) => !s.ended_at && s.members.some((m) => m.id === this.me() && m.part !== 'observer' && (m.state === 'joined' || m.state === 'away')));
      if (mine) {
        this.closeMedia();
        await this.join(mine.session);
      }
    } catch {
      // Nothing to resume.
    }
  }

  /// A video wall watches its center's sessions: while it is in none, it looks every few
  /// seconds for one live and joins it (as an observer: every camera, nobody sees it).
  watchCenter() {
    if (this.watching) return;
    this.watching = setInterval(async () => {
      if (this.current || this.hub.state !== 'open') return;
      try {
        const { sessions } = await this.hub.request('session.list', {});
        const live = sessions.find((s) => !s.ended_at);
        if (live) await this.join(live.session);
      } catch {
        // Tried again at the next tick.
      }
    }, 3000);
  }

  ours(d) {
    return this.current && d.session === this.current.session;
  }

  /// Whether this terminal commands the session shown.
  commands() {
    return this.current && this.current.commander === this.me() && this.mine()?.part === 'commander';
  }

  /// This page's membership: none for a wall, even at the commander's own node (the desk there
  /// commands; the wall only watches).
  mine() {
    if (this.observer) return null;
    return this.current?.members.find((m) => m.id === this.me() && m.part !== 'observer');
  }

  build() {
    const root = el('section', { className: 'session', id: 'session', hidden: true });
    document.body.append(root);
    return { root };
  }

    roster(r) {
    if (this.current && r.session === this.current.session) {
      this.current = r;
      this.render();
    }
  }

  /// What the roster says of this page (after a join, a reload): muted, camera pulled.
  follow() {
    const m = this.mine();
    if (!m) return;
    this.muted = m.muted;
    this.watched = m.camera_pulled;
  }

  gone(key, reason) {
    this.notice = reason ? `${t(key)} · ${reason}` : t(key);
    this.current = null;
    this.watched = false;
    this.muted = false;
    this.closeMedia();
    this.render();
  }

  // ---- media: one peer connection to the hub; the hub offers, this page answers ------------

  async mediaOffer(d) {
    if (!this.ours(d)) return;
    const pc = (this.pc ??= this.makePc());
    await pc.setRemoteDescription({ type: 'offer', sdp: d.sdp });
    await this.attach();
    const answer = await pc.createAnswer();
    await pc.setLocalDescription(answer);
    await this.hub.request('session.media.answer', { session: d.session, sdp: pc.localDescription.sdp });
  }

  makePc() {
    const pc = new RTCPeerConnection({ iceServers: this.hub.hello?.calls?.ice_servers || [] });
    pc.onicecandidate = (ev) => {
      if (ev.candidate && this.current) this.hub.notify('session.media.candidate', { session: this.current.session, candidate: ev.candidate.toJSON() });
    };
    pc.ontrack = (ev) => this.tile(ev.track, ev.streams[0]);
    return pc;
  }

  /// The hub offers to receive on its first audio and video transceivers (a member that may
  /// publish): this page's microphone and camera go there, and can change without a new offer.
  async attach() {
    const mineNow = this.mine();
    if (!mineNow || mineNow.part === 'observer') return;
    const want = { audio: this.publish.audio, video: this.publish.video === 'always' || (this.publish.video === 'pulled' && this.watched) };
    for (const kind of ['audio', 'video']) {
      const tr = this.pc.getTransceivers().find((x) => x.receiver.track.kind === kind);
      if (!tr) continue;
      if (want[kind] && !this.local[kind]) this.local[kind] = await this.capture(kind);
      // A kind this page never sends stays inactive; one it may send later (a camera pulled)
      // is ready to, so that its track starts without a new offer.
      const may = kind === 'audio' ? this.publish.audio : Boolean(this.publish.video);
      tr.direction = may ? 'sendonly' : 'inactive';
      await tr.sender.replaceTrack(want[kind] ? this.local[kind] : null);
    }
    this.published(want);
  }

  async capture(kind) {
    const session = this.current?.session;
    try {
      const s = await navigator.mediaDevices.getUserMedia({ [kind]: true });
      // Left (or moved on) while the browser asked: the device goes back at once.
      if (this.current?.session !== session) {
        s.getTracks().forEach((x) => x.stop());
        return null;
      }
      return s.getTracks()[0];
    } catch (e) {
      this.notice = `${t('call.media_denied')}`;
      this.render();
      return null;
    }
  }

  published(want) {
    if (!this.current) return;
    const p = { audio: Boolean(want.audio && this.local.audio), video: Boolean(want.video && this.local.video) };
    this.hub.notify('session.publish', { session: this.current.session, ...p });
  }

  /// The commander pulls (or releases) this page's camera: it is sent at once, no new offer.
  async camera(pull) {
    this.watched = pull;
    this.render();
    if (this.publish.video !== 'pulled' || !this.pc) return;
    const tr = this.pc.getTransceivers().find((x) => x.receiver.track.kind === 'video' && x.direction === 'sendonly');
    if (!tr) return;
    if (pull && !this.local.video) this.local.video = await this.capture('video');
    await tr.sender.replaceTrack(pull ? this.local.video : null);
    if (!pull && this.local.video) {
      this.local.video.stop();
      this.local.video = null;
    }
    this.published({ audio: this.publish.audio, video: pull });
  }

    /// A publisher's track: a tile with its name for video, a hidden player for sound. The
  /// hub names the publisher in the track's stream id.
  tile(track, remote) {
    const from = remote?.id;
    const name = nodeName(this.current?.members.find((m) => m.id === from) || { name: from || '?' });
    const media = el(track.kind, { autoplay: true, playsInline: true });
    const stream = new MediaStream([track]);
    media.srcObject = stream;
    const tile = track.kind === 'video' ? el('figure', { className: 'session-tile' }, media, el('figcaption', { textContent: name })) : media;
    if (track.kind === 'audio') tile.hidden = true;
        tile.dataset.from = from || '';
    tile.dataset.kind = track.kind;
    if (track.kind === 'video' && from && this.current?.spotlight === from) tile.classList.add('spotlight');
    const key = `${from}:${track.kind}`;
    this.tiles.get(key)?.remove();
    this.tiles.set(key, tile);
    this.tilesEl.append(tile);
    // A track the hub stops forwarding (its publisher left) is removed by the next
    // negotiation: its tile goes with it.
    const drop = () => {
      if (this.tiles.get(key) === tile) {
        tile.remove();
        this.tiles.delete(key);
      }
    };
    track.addEventListener('ended', drop);
    remote?.addEventListener('removetrack', (ev) => ev.track === track && drop());
  }

  closeMedia() {
    this.pc?.close();
    this.pc = null;
    this.watched = false;
    this.muted = false;
    for (const k of ['audio', 'video']) {
      this.local[k]?.stop();
      this.local[k] = null;
    }
    for (const tile of this.tiles.values()) tile.remove();
    this.tiles.clear();
  }

  /// Video frames decoded from the hub, over every tile (for tests and a health line).
  async framesReceived() {
    if (!this.pc || this.pc.connectionState === 'closed') return 0;
    let n = 0;
    (await this.pc.getStats()).forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'video') n += s.framesDecoded || 0;
    });
    return n;
  }

  async act(type, data) {
    try {
      const r = await this.hub.request(type, data);
            if (r?.session) {
        this.current = r.session.ended_at ? null : r.session;
        this.notice = null;
        if (type === 'session.join') this.follow();
      }
      this.render();
      return r;
    } catch (e) {
      this.notice = errorText(e);
      this.render();
      throw e;
    }
  }

  create(title, invite) {
    return this.act('session.create', { title, invite });
  }

  join(id) {
    this.invites.delete(id);
    return this.act('session.join', { session: id });
  }

  leave() {
    if (!this.current) return;
    const id = this.current.session;
    return this.act('session.leave', { session: id }).then(() => {
      this.current = null;
      this.closeMedia();
      this.render();
    });
  }

  control(action, target) {
    if (!this.current) return;
    return this.act('session.control', { session: this.current.session, action, ...(target ? { target } : {}) });
  }

  render() {
    const root = this.ui.root;
    const parts = [];
    for (const inv of this.invites.values()) {
      if (this.current?.session === inv.session) continue;
      const join = el('button', { className: 'session-join', textContent: t('session.join'), onclick: () => this.join(inv.session).catch(() => {}) });
      const ignore = el('button', {
        className: 'ghost',
        textContent: t('session.ignore'),
        onclick: () => {
          this.invites.delete(inv.session);
          this.render();
        },
      });
      const line = el('div', { className: 'session-invite' },
        el('span', { textContent: `${t('session.invited_by')} ${nodeName(inv.commander)} · 「${inv.title}」` }), join, ignore);
      line.dataset.session = inv.session;
      parts.push(line);
    }
    if (this.notice) parts.push(el('p', { className: 'session-notice', textContent: this.notice }));
    const s = this.current;
    if (s) {
      const commander = s.members.find((m) => m.id === s.commander && m.part === 'commander');
      parts.push(el('h3', {}, `${t('session.title')} · ${s.title}`));
      parts.push(el('p', { className: 'session-commander', textContent: `${t('session.commander')}：${commander ? nodeName(commander) : s.commander}` }));
      if (this.watched) parts.push(el('p', { className: 'session-watched', textContent: t('session.watched') }));
      if (this.muted) parts.push(el('p', { className: 'session-muted', textContent: t('session.muted_you') }));
      const boss = this.commands();
      const list = el('ol', { className: 'session-roster' },
        ...s.members.map((m) => {
          const li = el('li', {},
            el('span', { className: 'name', textContent: nodeName(m) }),
            el('span', { className: 'part', textContent: `${t(`session.part.${m.part}`)} · ${t(`session.state.${m.state}`)}` }),
            // Text, not symbols: a wall PC may have no emoji font.
            m.publishes.video ? el('span', { className: 'pub flag', textContent: t('call.video') }) : null,
            m.publishes.audio ? el('span', { className: 'pub flag', textContent: t('call.audio') }) : null,
            m.muted ? el('span', { className: 'flag', textContent: t('session.flag.muted') }) : null,
            m.camera_pulled ? el('span', { className: 'flag', textContent: t('session.flag.camera') }) : null,
            s.spotlight === m.id && m.part !== 'observer' ? el('span', { className: 'flag', textContent: '★' }) : null);
          li.dataset.id = m.id;
          li.dataset.part = m.part;
          li.dataset.state = m.state;
          if (boss && m.part === 'participant' && m.state !== 'removed') {
            const b = (action, key) => el('button', { className: `ghost small ctl-${action}`, textContent: t(key), onclick: () => this.control(action, m.id).catch(() => {}) });
            li.append(el('span', { className: 'controls' },
              m.muted ? b('unmute', 'session.unmute') : b('mute', 'session.mute'),
              m.camera_pulled ? b('release_camera', 'session.release') : b('pull_camera', 'session.pull'),
              b('spotlight', 'session.spotlight'),
              b('hand_over', 'session.hand_over'),
              b('remove', 'session.remove')));
          }
          return li;
        }));
            parts.push(list);
            // The spotlighted camera is shown large, first on the wall. A participant is sent the
      // commander's and the spotlighted camera; one that was featured before keeps its track
      // (paused by the hub), hidden while it is not.
      const mine = s.members.find((m) => m.id === this.me() && m.part !== 'observer');
      const seesAll = this.observer || mine?.part === 'commander';
      for (const tile of this.tiles.values()) {
        if (tile.dataset.kind !== 'video') continue;
        tile.classList.toggle('spotlight', !!s.spotlight && tile.dataset.from === s.spotlight);
        tile.hidden = !seesAll && tile.dataset.from !== s.commander && tile.dataset.from !== s.spotlight;
      }
      if (boss && s.spotlight) {
        parts.push(el('button', { className: 'ghost small ctl-clear_spotlight', textContent: t('session.clear_spotlight'), onclick: () => this.control('clear_spotlight').catch(() => {}) }));
      }
      parts.push(this.tilesEl);
      parts.push(boss
        ? el('button', { className: 'danger session-end', textContent: t('session.end'), onclick: () => this.control('end').catch(() => {}) })
        : el('button', { className: 'ghost session-leave', textContent: t('session.leave'), onclick: () => this.leave().catch(() => {}) }));
    }
    root.replaceChildren(...parts);
    root.hidden = parts.length === 0;
    root.dataset.state = s ? 'in' : this.invites.size ? 'invited' : 'none';
    this.dispatchEvent(new CustomEvent('change'));
  }
}

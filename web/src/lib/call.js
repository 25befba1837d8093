// Point-to-point calls in the page (docs/protocol.md, "Calls"): the hub relays the signaling,
// media flows browser to browser (or through the TURN server the hub names in `hello`).
// One call at a time, as the hub allows; the window is built here so both pages share it.

import { t, nodeName, errorText } from './i18n.js';
import { el } from './dom.js';

export class Calls extends EventTarget {
  /// `where(peer)` names where a peer is (the console knows the tree), or ''.
  constructor(hub, { where = () => '' } = {}) {
    super();
    this.hub = hub;
    this.where = where;
    this.call = null; // {id, peer, media, role: 'caller'|'callee', pc, local, state, pendingLocal, pendingRemote}
    this.build();
    hub.addEventListener('call.incoming', (ev) => this.incoming(ev.detail));
    hub.addEventListener('call.ringing', (ev) => this.mine(ev.detail) && this.setState('ringing'));
    hub.addEventListener('call.accepted', (ev) => this.accepted(ev.detail));
    hub.addEventListener('call.signal', (ev) => this.signal(ev.detail));
    hub.addEventListener('call.ended', (ev) => this.ended(ev.detail));
    hub.addEventListener('call.offer_superseded', (ev) => this.mine(ev.detail) && this.rollback());
    hub.addEventListener('call.peer_away', (ev) => this.mine(ev.detail) && this.setState('peer_away'));
    hub.addEventListener('call.peer_back', (ev) => this.mine(ev.detail) && this.setState('active'));
    hub.addEventListener('call.resumed', (ev) => this.resumed(ev.detail));
    window.addEventListener('langchange', () => this.render());
  }

  mine(d) {
    return this.call && d.call === this.call.id;
  }

  build() {
    this.ui = {};
    const u = this.ui;
    u.peer = el('div', { className: 'call-peer' });
    u.state = el('div', { className: 'call-state' });
    u.remote = el('video', { autoplay: true, playsInline: true, className: 'call-remote' });
    u.local = el('video', { autoplay: true, playsInline: true, muted: true, className: 'call-local' });
    u.error = el('p', { className: 'error', hidden: true });
    u.accept = el('button', { className: 'call-accept', onclick: () => this.accept() });
    u.reject = el('button', { className: 'call-reject danger', onclick: () => this.reject() });
    u.hangup = el('button', { className: 'call-hangup danger', onclick: () => this.hangup() });
    u.mute = el('button', { className: 'call-mute ghost', onclick: () => this.toggle('audio') });
    u.camera = el('button', { className: 'call-camera ghost', onclick: () => this.toggle('video') });
    u.close = el('button', { className: 'call-close ghost', onclick: () => this.close() });
    u.dialog = el('dialog', { className: 'call', id: 'call' },
      u.peer, u.state, el('div', { className: 'call-media' }, u.remote, u.local), u.error,
      el('div', { className: 'call-buttons' }, u.accept, u.reject, u.mute, u.camera, u.hangup, u.close));
    // A call is ended with its buttons, not by Escape.
    u.dialog.addEventListener('cancel', (ev) => ev.preventDefault());
    document.body.append(u.dialog);
  }

  setState(state, extra = {}) {
    if (!this.call) return;
    this.call.state = state;
    Object.assign(this.call, extra);
    this.render();
    this.dispatchEvent(new CustomEvent('state', { detail: { ...this.call } }));
  }

  render() {
    const u = this.ui;
    const c = this.call;
    if (!c) return;
    u.dialog.dataset.state = c.state;
    // Who and where: the name, the tier it speaks for, and its place when the page knows it.
    const where = c.peer ? this.where(c.peer) : '';
    u.peer.textContent = c.peer ? `${nodeName(c.peer)}${c.peer.tier ? ` · ${t(`tier.${c.peer.tier}`)}` : ''}` : '';
    u.peer.title = where;
    u.state.dataset.place = where;
    if (where && c.state === 'incoming') u.state.textContent = `${t('call.incoming')} · ${where}`;
    u.state.textContent = c.state === 'ended' ? `${t('call.ended')} · ${t(`call.outcome.${c.outcome}`)}` : t(`call.${c.state}`);
    u.accept.textContent = t('call.accept');
    u.reject.textContent = t('call.reject');
    u.hangup.textContent = t('call.hangup');
    u.close.textContent = t('board.close');
    u.mute.textContent = c.muted ? t('call.unmute') : t('call.mute');
    u.camera.textContent = c.cameraOff ? t('call.camera_on') : t('call.camera_off');
    const live = ['inviting', 'ringing', 'active', 'peer_away', 'connecting'].includes(c.state);
    u.accept.hidden = c.state !== 'incoming';
    u.reject.hidden = c.state !== 'incoming';
    u.hangup.hidden = !live;
    u.mute.hidden = !live || !c.local;
    u.camera.hidden = !live || !c.local || c.media !== 'video';
    u.close.hidden = c.state !== 'ended';
    if (!u.dialog.open) u.dialog.show();
  }

  fail(e) {
    this.ui.error.hidden = false;
    this.ui.error.textContent = e?.code ? errorText(e) : mediaError(e);
  }

  iceServers() {
    return this.ice || this.hub.hello?.calls?.ice_servers || [];
  }

  /// TURN credentials minted for this terminal expire (`calls.expires_at`): a page open for days
  /// asks for fresh ones before a call rather than fail to relay media.
  async freshIce() {
    const exp = this.iceExpires ?? this.hub.hello?.calls?.expires_at;
    if (!exp || exp * 1000 - Date.now() > 10 * 60_000) return;
    try {
      const r = await this.hub.request('call.ice_servers');
      this.ice = r.ice_servers;
      this.iceExpires = r.expires_at;
    } catch {
      // The old set may still work; the call goes on with it.
    }
  }

  /// With the devices granted: the peer connection carrying them, unless the call ended while
  /// the browser asked (then the devices are released and this says false).
  connect(c) {
    if (!this.live(c)) {
      for (const tr of c.local.getTracks()) tr.stop();
      return false;
    }
    this.ui.local.srcObject = c.local;
    c.pc = this.peerConnection();
    for (const track of c.local.getTracks()) c.pc.addTrack(track, c.local);
    return true;
  }

  /// Whether `c` is still the call being set up (not hung up or replaced meanwhile).
  live(c) {
    return this.call === c && c.state !== 'ended';
  }

  async media(kind) {
    return navigator.mediaDevices.getUserMedia({ audio: true, video: kind === 'video' });
  }

  peerConnection() {
    const pc = new RTCPeerConnection({ iceServers: this.iceServers() });
    const c = this.call;
    pc.onicecandidate = (ev) => {
      const data = ev.candidate ? { candidate: ev.candidate.toJSON() } : { end_of_candidates: true };
      // Candidates can come before the invite's reply names the call: hold them till then.
      if (c.id == null) c.pendingLocal.push(data);
      else this.hub.notify('call.signal', { call: c.id, ...data });
    };
    pc.ontrack = (ev) => {
      this.ui.remote.srcObject = ev.streams[0] || new MediaStream([ev.track]);
    };
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === 'connected' && this.call === c) this.setState('active');
    };
    return pc;
  }

  /// Places a call; resolves when the hub has taken the invite (or refused it).
  async place(peer, media = 'video') {
    if (this.call && this.call.state !== 'ended') return;
    this.ui.error.hidden = true;
    this.call = { id: null, peer, media, role: 'caller', state: 'inviting', pendingLocal: [], pendingRemote: [] };
    this.render();
    const c = this.call;
    await this.freshIce();
    try {
      c.local = await this.media(media);
    } catch (e) {
      if (this.call === c) {
        this.setState('ended', { outcome: 'failed' });
        this.fail(e);
      }
      return;
    }
    // Hung up while the browser asked for the camera: release it and place nothing.
    if (!this.connect(c)) return;
    const offer = await c.pc.createOffer();
    await c.pc.setLocalDescription(offer);
    if (!this.live(c)) {
      c.pc.close();
      for (const tr of c.local.getTracks()) tr.stop();
      return;
    }
    try {
      const r = await this.hub.request('call.invite', { to: peer.id, media, offer: offer.sdp });
      c.id = r.call;
      if (!this.live(c)) {
        // Hung up before the hub named the call: end it there too.
        this.hub.notify('call.hangup', { call: c.id });
        c.pc?.close();
        for (const tr of c.local?.getTracks() || []) tr.stop();
        return;
      }
      if (r.to) c.peer = { ...peer, ...r.to };
      for (const d of c.pendingLocal.splice(0)) this.hub.notify('call.signal', { call: c.id, ...d });
      this.render();
    } catch (e) {
      this.teardown();
      this.setState('ended', { outcome: e.code || 'failed' });
      this.fail(e);
      // Crossing invites: ours lost; the call that stands may be waiting to ring here.
      if (this.held) this.incoming(this.held);
    }
  }

  incoming(d) {
    if (this.call && this.call.state === 'inviting' && this.call.role === 'caller') {
      // Both sides invited at once: the hub keeps one call. If ours is refused as glare, this
      // is the one to answer.
      this.held = d;
      return;
    }
    this.held = null;
    if (this.call && this.call.state !== 'ended') return; // the hub refuses a second call itself
    this.ui.error.hidden = true;
    this.call = { id: d.call, peer: d.from, media: d.media, role: 'callee', state: 'incoming', offer: d.offer, pendingLocal: [], pendingRemote: [] };
    this.hub.notify('call.ring', { call: d.call });
    this.render();
    navigator.vibrate?.([400, 200, 400]);
  }

  async accept() {
    const c = this.call;
    if (!c || c.state !== 'incoming') return;
    this.setState('connecting');
    await this.freshIce();
    try {
      c.local = await this.media(c.media);
    } catch (e) {
      // No camera or microphone: say so, and decline rather than leave the caller ringing.
      this.fail(e);
      this.hub.notify('call.reject', { call: c.id, reason: t('call.no_media') });
      this.teardown();
      this.setState('ended', { outcome: 'rejected' });
      return;
    }
    // The caller gave up while the browser asked for the camera.
    if (!this.connect(c)) return;
    try {
      await c.pc.setRemoteDescription({ type: 'offer', sdp: c.offer });
      await this.drainRemote();
      const answer = await c.pc.createAnswer();
      await c.pc.setLocalDescription(answer);
      await this.hub.request('call.accept', { call: c.id, answer: answer.sdp });
    } catch (e) {
      this.fail(e);
    }
  }

  reject() {
    const c = this.call;
    if (!c) return;
    this.hub.notify('call.reject', { call: c.id });
    this.teardown();
    this.setState('ended', { outcome: 'rejected' });
  }

  hangup() {
    const c = this.call;
    if (!c) return;
    if (c.id != null) this.hub.notify('call.hangup', { call: c.id });
    this.teardown();
    this.setState('ended', { outcome: c.state === 'active' || c.state === 'peer_away' ? 'completed' : 'cancelled' });
  }

  async accepted(d) {
    if (!this.mine(d)) return;
    this.setState('connecting');
    if (d.answer) {
      await this.call.pc.setRemoteDescription({ type: 'answer', sdp: d.answer });
      await this.drainRemote();
    }
  }

  async signal(d) {
    if (!this.mine(d)) return;
    if (!this.call.pc) {
      // Before we answer: the offer may come as a signal rather than in the invite.
      if (d.candidate) this.call.pendingRemote.push(d.candidate);
      else if (d.description?.type === 'offer') this.call.offer = d.description.sdp;
      return;
    }
    const pc = this.call.pc;
    try {
      if (d.description?.type === 'offer' && this.call.role === 'caller' && pc.signalingState !== 'stable') {
        // Crossing renegotiation: the caller's offer wins (docs/protocol.md); ignore theirs.
        return;
      }
      if (d.description) {
        await pc.setRemoteDescription(d.description);
        await this.drainRemote();
        if (d.description.type === 'offer') {
          const answer = await pc.createAnswer();
          await pc.setLocalDescription(answer);
          this.hub.notify('call.signal', { call: this.call.id, description: { type: 'answer', sdp: answer.sdp } });
        }
      } else if (d.candidate) {
        if (!pc.remoteDescription) this.call.pendingRemote.push(d.candidate);
        else await pc.addIceCandidate(d.candidate);
      }
    } catch (e) {
      console.warn('call signal', e);
    }
  }

  async drainRemote() {
    const c = this.call;
    for (const cand of c.pendingRemote.splice(0)) {
      try {
        await c.pc.addIceCandidate(cand);
      } catch (e) {
        console.warn('candidate', e);
      }
    }
  }

  rollback() {
    // The caller's offer won a crossing renegotiation: drop ours, answer theirs when it comes.
    this.call.pc?.setLocalDescription({ type: 'rollback' }).catch(() => {});
  }

  async resumed(d) {
    // A call this page knows nothing of (it was reloaded mid-call): end it rather than show
    // in_call for ever.
    if (!this.mine(d)) {
      if (!this.call || this.call.state === 'ended') this.hub.notify('call.hangup', { call: d.call });
      return;
    }
    // Back on a new connection mid-call: restart ICE so media finds the new path.
    if (!this.call.pc) return;
    this.call.pc.restartIce();
    const offer = await this.call.pc.createOffer({ iceRestart: true });
    await this.call.pc.setLocalDescription(offer);
    this.hub.notify('call.signal', { call: this.call.id, description: { type: 'offer', sdp: offer.sdp } });
  }

  ended(d) {
    if (this.held && d.call === this.held.call) this.held = null;
    if (!this.mine(d)) return;
    this.teardown();
    this.setState('ended', { outcome: d.outcome, reason: d.reason });
    // Ours was superseded by the other side's invite: that one rings here now.
    if (d.outcome === 'glare' && this.held) this.incoming(this.held);
  }

  toggle(kind) {
    const c = this.call;
    if (!c?.local) return;
    for (const tr of c.local.getTracks().filter((x) => x.kind === kind)) tr.enabled = !tr.enabled;
    if (kind === 'audio') c.muted = !c.muted;
    else c.cameraOff = !c.cameraOff;
    this.render();
  }

  teardown() {
    const c = this.call;
    if (!c) return;
    c.pc?.close();
    for (const tr of c.local?.getTracks() || []) tr.stop();
    c.local = null;
    this.ui.remote.srcObject = null;
    this.ui.local.srcObject = null;
  }

  close() {
    this.ui.dialog.close();
    this.call = null;
  }

  /// Frames decoded from the peer's video so far (for the tests and a health display).
  async framesReceived() {
    const pc = this.call?.pc;
    if (!pc || pc.connectionState === 'closed') return 0;
    let n = 0;
    (await pc.getStats()).forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'video') n += s.framesDecoded || 0;
    });
    return n;
  }
}

function mediaError(e) {
  if (e?.name === 'NotAllowedError') return t('call.media_denied');
  if (e?.name === 'NotFoundError') return t('call.no_media');
  return `${t('err.generic')}: ${e?.message || e}`;
}

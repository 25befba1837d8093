// The video-wall console: signs in, connects like any terminal, watches its subtree.

import { Hub } from '../lib/hub.js';
import { t, lang, nodeName, fmtTime, errorText } from '../lib/i18n.js';
import { store } from '../lib/credential.js';
import { setupPage } from '../lib/page.js';
import { PresenceView } from '../lib/presence.js';
import { Org } from '../lib/org.js';
import { Navigator } from './nav.js';
import { SituationMap } from './map.js';
import { Board } from './board.js';
import { Charts } from './charts.js';
import { Analysis } from './analysis.js';
import { Calls } from '../lib/call.js';
import { Sessions } from '../lib/session.js';
import { el } from '../lib/dom.js';

const cred = store('console');
const hub = new Hub({ credential: cred.get });
const presence = new PresenceView();
// A ringing call says where the caller is: its place in the tree, above it.
const calls = new Calls(hub, {
  where: (peer) => (org?.get(peer.id) ? org.path(peer.id).slice(1, -1).map(nodeName).join(' › ') : ''),
});
let org = null;
let myId = null;
// A desk speaks in its sessions; its camera stays its own. A wall only watches.
const sessions = new Sessions(hub, { me: () => myId, publish: { audio: true, video: false } });
let nav = null;
let map = null;
let geo = null;
let board = null;
let charts = null;
let analysis = null;

// For the browser tests and for operators poking at the wall from DevTools.
window.gridhub = { hub, presence, calls, sessions, get org() { return org; }, get nav() { return nav; }, get map() { return map; }, get board() { return board; }, get charts() { return charts; }, get analysis() { return analysis; } };

const page = setupPage({ hub, cred });

const clock = document.getElementById('clock');
const tick = () => (clock.textContent = fmtTime(Date.now()));
tick();
setInterval(tick, 1000);

function title() {
  const root = org?.get(org.root);
  document.getElementById('org-name').textContent = root ? (lang === 'en' ? `${nodeName(root)} · ` : nodeName(root)) : '';
}
window.addEventListener('langchange', title);

// Which seat of the center this console is (hidden for a center's one main desk).
function seatLabel() {
  const s = document.getElementById('seat');
  if (s.dataset.label) s.textContent = `${t(s.dataset.label)} · ${s.dataset.seat}`;
}
window.addEventListener('langchange', seatLabel);

hub.addEventListener('hello', async (ev) => {
  const me = ev.detail.endpoint;
  if (ev.detail.role === 'worker') {
    // A grid worker's place is the field page; take the credential there.
    localStorage.setItem('gridhub.credential.field', cred.get());
    location.replace('/field');
    return;
  }
  try {
    if (org && org.root !== me.id) {
      // Signed in again as another center: start the wall afresh.
      location.reload();
      return;
    }
    const watchOnly = ev.detail.role === 'observer';
    myId = me.id;
    // An operator opens command sessions; a station or a wall takes part or watches.
    document.getElementById('session-new').hidden = ev.detail.role !== 'operator';
    sessions.observer = watchOnly;
    if (watchOnly) sessions.watchCenter();
    else sessions.resume();
    document.body.dataset.role = ev.detail.role;
    const seat = document.getElementById('seat');
    seat.hidden = !watchOnly && ev.detail.seat === 'main';
    seat.dataset.label = watchOnly ? 'seat.observer' : 'seat.seat';
    seat.dataset.seat = ev.detail.seat;
    seatLabel();
    if (!org) {
      const [o, g] = await Promise.all([Org.load(hub, me.id), geo || fetch('/assets/vendor/jiamusi.geo.json').then((r) => r.json())]);
      org = o;
      geo = g;
      title();
      presence.node = me.id;
      nav = new Navigator({ org, presence, onFocus: (id) => map?.frame(id), onCall: watchOnly ? null : (n, media) => calls.place(n, media) });
            map = new SituationMap({ el: document.getElementById('map'), legend: document.getElementById('legend'), org, presence, geo });
      // An operator picks terminals for a session on the map as well as in the dialog.
      if (ev.detail.role === 'operator') map.onPick = togglePick;
      board = new Board({ hub, org, me: me.id, focus: () => nav.focus, onStats: (s) => charts?.setStats(s), onOpen: (o) => map?.setOrders(o), watchOnly });
    }
    // After every (re)connect: a fresh snapshot resyncs whatever changed while we were away.
    presence.snapshot(await hub.request('presence.subscribe', { node: me.id }));
    charts ??= new Charts({ hub, org, presence, me: me.id });
    analysis ??= new Analysis({ hub, org, me: me.id, board, map, watchOnly });
    document.getElementById('analysis-open').hidden = false;
    await board.start();
    document.body.dataset.ready = 'true';
  } catch (e) {
    console.error('console start', e);
    page.fail(`${t('err.generic')}: ${e.message}`);
  }
});
hub.addEventListener('presence.delta', (ev) => presence.delta(ev.detail));

// Opening a command session: the focused node's children (and the terminals below it the
// operator picks), a topic; the hub checks the scope and the caps and says why it refuses.
const sessionDialog = document.getElementById('session-dialog');
const sessionForm = document.getElementById('session-form');
const sessionError = document.getElementById('session-error');
// Terminals picked on the map, offered first (and ticked) when the dialog opens.
const picked = new Set();
function togglePick(id) {
  if (id === myId) return;
  if (!picked.delete(id)) picked.add(id);
  showPicked();
}
function showPicked() {
  map?.setPicked(picked);
  document.getElementById('session-picked').hidden = picked.size === 0;
  document.getElementById('session-picked-text').textContent = `${t('session.picked')} ${picked.size}`;
}
document.getElementById('session-picked-clear').onclick = () => {
  picked.clear();
  showPicked();
};
window.addEventListener('langchange', showPicked);
document.getElementById('session-new').onclick = () => {
  const focus = org.get(nav.focus);
  const below = focus.id === myId ? focus.children : [focus.id, ...focus.children];
  const listed = [...picked, ...below.filter((id) => !picked.has(id))];
  document.getElementById('session-pick').replaceChildren(
    ...listed.map((id) => {
      const n = org.get(id);
      const box = el('input', { type: 'checkbox', name: 'invite', value: id, checked: picked.has(id) });
      return el('label', { className: 'check' }, box, ` ${nodeName(n)} · ${t(`status.${presence.status(id)}`)}`);
    }),
  );
  sessionError.hidden = true;
  sessionDialog.showModal();
};
document.getElementById('session-cancel').onclick = () => sessionDialog.close();
sessionForm.onsubmit = async (ev) => {
  ev.preventDefault();
  const invite = [...sessionForm.querySelectorAll('input[name=invite]:checked')].map((b) => b.value);
  try {
        await sessions.create(sessionForm.title.value.trim(), invite);
    sessionDialog.close();
    picked.clear();
    showPicked();
  } catch (e) {
    sessionError.hidden = false;
    sessionError.textContent = errorText(e);
  }
};

document.getElementById('analysis-open').onclick = () => analysis?.open();

page.begin();

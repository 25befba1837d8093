// The field page: a grid worker's phone. Status and location, and an inbox fed by the outbox
// exactly once, surviving reloads and network drops.

import { Hub, HubError } from '../lib/hub.js';
import { t, lang, nodeName, errorText, fmtTime } from '../lib/i18n.js';
import { store } from '../lib/credential.js';
import { setupPage } from '../lib/page.js';
import { Outbox } from '../lib/outbox.js';
import { Calls } from '../lib/call.js';
import { Sessions } from '../lib/session.js';
import { el } from '../lib/dom.js';

const cred = store('field');
const hub = new Hub({ credential: cred.get });
const page = setupPage({ hub, cred });
const calls = new Calls(hub);
let me = null;
const sessions = new Sessions(hub, { me: () => me?.id, publish: { audio: true, video: 'pulled' } });
let outbox = null;
let inbox = null;
let categories = new Map();

window.gridhub = { hub, calls, sessions, get outbox() { return outbox; }, get inbox() { return inbox; } };

// ---- the inbox, kept in this browser between visits ----------------------------------------

const OPEN = new Set(['intake', 'dispatched', 'in_progress', 'supervised']);
const KEEP_CLOSED = 30;

class Inbox {
  constructor(endpoint) {
    this.key = `gridhub.inbox.${endpoint}`;
    const saved = JSON.parse(localStorage.getItem(this.key) || '{}');
    this.orders = new Map((saved.orders || []).map((o) => [o.id, o]));
    this.notices = new Map((saved.notices || []).map((n) => [n.id, n]));
    this.tasks = new Map((saved.tasks || []).map((c) => [c.id, c]));
    this.seen = new Set(saved.seen || []);
  }

  save() {
    // Bounded: every open order, the most recent closed ones and notices.
    const orders = [...this.orders.values()].sort((a, b) => b.updated_at - a.updated_at);
    const open = orders.filter((o) => this.mine(o));
    // Drafts for orders no longer this worker's to act on are of no use: drop them.
    const prefix = `gridhub.draft.${me.id}.`;
    const keep = new Set(open.map((o) => String(o.id)));
    for (let i = localStorage.length - 1; i >= 0; i--) {
      const k = localStorage.key(i);
      if (k?.startsWith(prefix) && !keep.has(k.slice(prefix.length).split('.')[0])) localStorage.removeItem(k);
    }
    const closed = orders.filter((o) => !this.mine(o)).slice(0, KEEP_CLOSED);
    this.orders = new Map([...open, ...closed].map((o) => [o.id, o]));
    const notices = [...this.notices.values()].sort((a, b) => b.at - a.at).slice(0, 50);
    this.notices = new Map(notices.map((n) => [n.id, n]));
    const text = JSON.stringify({
      orders: [...this.orders.values()],
      notices,
      tasks: [...this.tasks.values()].sort((a, b) => b.created_at - a.created_at).slice(0, 20),
      seen: [...this.seen].slice(-200),
    });
    try {
      localStorage.setItem(this.key, text);
    } catch {
      // The storage is full: a photo draft is the large thing in it and gives way first (the
      // inbox is what resumes the outbox exactly).
      for (const k of Object.keys(localStorage)) if (k.startsWith(prefix) && k.endsWith('.photo')) localStorage.removeItem(k);
      try {
        localStorage.setItem(this.key, text);
      } catch (e) {
        console.warn('inbox not kept', e);
      }
    }
  }

  mine(o) {
    return o.holder === me.id && OPEN.has(o.state) && !o.withdrawn;
  }

  /// A whole order or a transition's summary: the newer version wins.
  put(o) {
    const old = this.orders.get(o.id);
    if (old && old.version > o.version) return;
    const next = { ...old, ...o, withdrawn: false };
    // Transition summaries leave `acknowledged` out; `in_progress` means it was.
    if (o.acknowledged === undefined && o.state === 'in_progress') next.acknowledged = true;
    this.orders.set(o.id, next);
  }
}

// ---- status and location -------------------------------------------------------------------

const STATUS_KEY = () => `gridhub.status.${me.id}`;
const statusButtons = [...document.querySelectorAll('#status button')];
function showStatus(s) {
  for (const b of statusButtons) b.setAttribute('aria-checked', String(b.dataset.status === s));
}
for (const b of statusButtons) {
  b.onclick = async () => {
    const status = b.dataset.status;
    try {
      await hub.request('presence.set', { status });
      localStorage.setItem(STATUS_KEY(), status);
      showStatus(status);
    } catch (e) {
      page.fail(errorText(e));
    }
  };
}

const share = document.getElementById('share-location');
const hint = document.getElementById('location-hint');
let watch = null;
let lastSent = null;
function sendLocation(pos) {
  const { latitude: lat, longitude: lon, accuracy } = pos.coords;
  const now = Date.now();
  // At most every 15 s unless moved more than ~50 m: a walking worker, not a firehose.
  if (lastSent && now - lastSent.at < 15000 && Math.hypot(lat - lastSent.lat, (lon - lastSent.lon) * 0.68) < 0.00045) {
    return;
  }
  // Not connected: try again with the next position rather than wait 15 s.
  if (!hub.notify('presence.set', { location: { lat, lon, accuracy_m: Math.round(accuracy || 0) } })) return;
  lastSent = { lat, lon, at: now };
  hint.classList.remove('error');
  hint.textContent = `${t('field.location_on')} · ${lat.toFixed(5)}, ${lon.toFixed(5)}`;
}
function startLocation() {
  if (!navigator.geolocation) {
    hint.textContent = t('field.location_unavailable');
    return;
  }
  watch = navigator.geolocation.watchPosition(sendLocation, (err) => {
    hint.classList.add('error');
    if (err.code === err.PERMISSION_DENIED) {
      hint.textContent = t('field.location_denied');
      share.checked = false;
      stopLocation();
    } else {
      hint.textContent = t('field.location_unavailable');
    }
  }, { enableHighAccuracy: true, maximumAge: 10000 });
}
function stopLocation() {
  if (watch != null) navigator.geolocation.clearWatch(watch);
  watch = null;
  lastSent = null;
}
share.onchange = () => {
  localStorage.setItem('gridhub.share_location', share.checked ? '1' : '0');
  if (share.checked) startLocation();
  else {
    stopLocation();
    hint.textContent = '';
  }
};

// ---- tabs ------------------------------------------------------------------------------------

for (const b of document.querySelectorAll('.tabs button')) {
  b.onclick = () => {
    for (const x of document.querySelectorAll('.tabs button')) x.setAttribute('aria-selected', String(x === b));
    for (const s of document.querySelectorAll('.tab')) s.hidden = s.id !== `tab-${b.dataset.tab}`;
    if (b.dataset.tab === 'notices') markNoticesSeen();
  };
}

// ---- rendering -------------------------------------------------------------------------------

const short = (ms) => fmtTime(ms, { month: 'numeric', day: 'numeric', hour: '2-digit', minute: '2-digit' });
const catName = (id) => {
  const c = categories.get(id);
  return c ? (lang === 'en' ? c.name_en : c.name) : id;
};
const draftKey = (id, kind) => `gridhub.draft.${me.id}.${id}.${kind}`;

function renderOrders() {
  const list = document.getElementById('orders');
  const orders = [...inbox.orders.values()].sort((a, b) => {
    const ma = inbox.mine(a), mb = inbox.mine(b);
    if (ma !== mb) return ma ? -1 : 1;
    return ma ? a.due_at - b.due_at : b.updated_at - a.updated_at;
  });
  // Keep a card whose form is open: re-rendering must never eat what the worker is typing.
  const open = new Map([...list.querySelectorAll('li[data-id]')].filter((li) => li.querySelector('form')).map((li) => [Number(li.dataset.id), li]));
  list.replaceChildren(...orders.map((o) => (open.has(o.id) && inbox.mine(o) ? open.get(o.id) : orderCard(o))));
  document.getElementById('orders-empty').hidden = orders.length > 0;
  const waiting = orders.filter((o) => inbox.mine(o) && !o.acknowledged).length;
  document.getElementById('orders-badge').textContent = waiting ? String(waiting) : '';
}

function orderCard(o) {
  const mine = inbox.mine(o);
  const late = mine && (o.state === 'supervised' || o.due_at < Date.now());
  const li = el('li', { className: `card${mine ? '' : ' gone'}` });
  li.dataset.id = o.id;
  li.dataset.state = o.withdrawn ? 'withdrawn' : o.state;
  const state = o.withdrawn ? t('state.withdrawn') : t(`state.${o.state}`);
  li.append(
    el('header', {},
      el('span', { className: 'cat', textContent: catName(o.category) }),
      el('span', { className: `prio-${o.priority}`, textContent: t(`prio.${o.priority}`) }),
      el('span', { className: 'state', textContent: state })),
    o.description ? el('div', { className: 'desc', textContent: o.description }) : null,
    el('div', { className: 'meta', textContent: [o.location?.address, `#${o.id}`].filter(Boolean).join(' · ') }),
    el('div', { className: 'meta' },
      `${t('field.due')} ${short(o.due_at)}`,
      late ? el('span', { className: 'late', textContent: ` ${t('field.late')}` }) : null),
  );
  const more = el('button', { className: 'ghost small history-toggle', type: 'button', textContent: t('field.history') });
  more.onclick = () => showHistory(li, o.id, more);
  li.append(more);
  if (!mine) return li;
  const actions = el('div', { className: 'actions' });
  const error = el('p', { className: 'error', hidden: true });
  if (!o.acknowledged) {
    const ack = el('button', { textContent: t('field.acknowledge'), className: 'ack' });
    ack.onclick = () => act(li, error, 'order.acknowledge', { order: o.id, version: inbox.orders.get(o.id)?.version ?? o.version });
    const ret = el('button', { textContent: t('field.return'), className: 'ghost' });
    ret.onclick = () => textForm(li, o, 'return', 'reason', 'field.return_placeholder', 'field.return_send', 'order.return');
    actions.append(ack, ret);
  } else {
    const rep = el('button', { textContent: t('field.report'), className: 'report' });
    rep.onclick = () => textForm(li, o, 'report', 'result', 'field.report_placeholder', 'field.report_send', 'order.report');
    actions.append(rep);
    if (localStorage.getItem(draftKey(o.id, 'report')) || localStorage.getItem(draftKey(o.id, 'photo'))) queueMicrotask(() => rep.click());
  }
  li.append(actions, error);
  return li;
}

/// A text the worker writes for an action: kept as a draft on every keystroke, removed only
/// once the hub has accepted the action.
function textForm(li, o, kind, field, placeholder, send, type) {
  li.querySelector('.actions').hidden = true;
  const key = draftKey(o.id, kind);
  // The hub's limits: a result up to 2,000 characters, a reason up to 500.
  const text = el('textarea', { placeholder: t(placeholder), required: true, maxLength: field === 'result' ? 2000 : 500, value: localStorage.getItem(key) || '' });
  text.oninput = () => localStorage.setItem(key, text.value);
  const error = li.querySelector('.error');
  const cancel = el('button', { type: 'button', className: 'ghost', textContent: t('field.cancel') });
  // A result may show what was done: a photo, attached to the order before the result is sent.
  const photo = kind === 'report' ? photoPicker(o, error) : null;
  // And what caused it, when the category names causes: the analysis groups requests by it.
  const causes = kind === 'report' ? categories.get(o.category)?.causes || [] : [];
  const cause = causes.length
    ? el('select', { name: 'cause', className: 'cause' },
      el('option', { value: '', textContent: t('field.cause_unknown') }),
      ...causes.map((c) => el('option', { value: c.id, textContent: lang === 'en' ? c.name_en : c.name })))
    : null;
  if (cause) cause.value = o.cause || '';
  const causeLabel = cause ? el('label', { className: 'cause' }, el('span', { textContent: t('field.cause') }), cause) : null;
  const form = el('form', {}, text, causeLabel, photo?.el ?? null, el('div', { className: 'actions' }, cancel, el('button', { type: 'submit', textContent: t(send) })));
  form.dataset.kind = kind;
  cancel.onclick = () => {
    localStorage.removeItem(key);
    photo?.clear();
    renderOrders();
  };
  form.onsubmit = async (ev) => {
    ev.preventDefault();
    if (!text.value.trim()) return;
    if (photo && !(await photo.upload(li))) return;
    // The order as it stands now: the card may have been kept open across updates.
    const version = inbox.orders.get(o.id)?.version ?? o.version;
    const body = { order: o.id, [field]: text.value.trim(), version };
    if (cause?.value) body.cause = cause.value;
    const ok = await act(li, error, type, body);
    if (ok) {
      localStorage.removeItem(key);
      photo?.clear();
    }
  };
  li.append(form);
  text.focus();
}

/// Longest side of a photo as sent: enough to see a drain or a lamp, a few hundred KB.
const PHOTO_SIDE = 1600;

/// Picks a photo (the phone's camera), scales it down to a JPEG once, and keeps it as a draft
/// with the order until the result is sent: the same bytes each try, so a retried upload is the
/// same photo to the hub.
function photoPicker(o, error) {
  const key = draftKey(o.id, 'photo');
  const input = el('input', { type: 'file', accept: 'image/*', capture: 'environment', className: 'photo-input' });
  const thumb = el('img', { className: 'photo-thumb', alt: '', hidden: true });
  const remove = el('button', { type: 'button', className: 'ghost small', textContent: t('field.photo_remove'), hidden: true });
  const pick = el('label', { className: 'photo-pick button ghost' }, t('field.photo_add'), input);
  let blob = null;
  const show = (b) => {
    blob = b;
    if (thumb.src) URL.revokeObjectURL(thumb.src);
    thumb.hidden = remove.hidden = !b;
    pick.hidden = Boolean(b);
    if (b) thumb.src = URL.createObjectURL(b);
    else thumb.removeAttribute('src');
  };
  const saved = localStorage.getItem(key);
  if (saved) {
    try {
      show(fromDataUrl(saved));
    } catch {
      localStorage.removeItem(key);
    }
  }
  input.onchange = async () => {
    const file = input.files?.[0];
    if (!file) return;
    try {
      const b = await scaled(file);
      // Kept across a reload when it fits the browser's storage (before it shows, so a photo
      // on screen is a photo kept); otherwise only while the page is open.
      const url = await new Promise((done, fail) => {
        const r = new FileReader();
        r.onload = () => done(r.result);
        r.onerror = fail;
        r.readAsDataURL(b);
      });
      // One photo draft at a time: they are large, and the inbox shares the storage.
      for (const k of Object.keys(localStorage)) {
        if (k !== key && k.startsWith(`gridhub.draft.${me.id}.`) && k.endsWith('.photo')) localStorage.removeItem(k);
      }
      try {
        localStorage.setItem(key, url);
      } catch {
        localStorage.removeItem(key);
      }
      show(b);
    } catch {
      error.hidden = false;
      error.textContent = t('field.photo_failed');
    }
  };
  remove.onclick = () => {
    show(null);
    input.value = '';
    localStorage.removeItem(key);
  };
  return {
    el: el('div', { className: 'photo' }, pick, thumb, remove),
    clear: () => {
      show(null);
      localStorage.removeItem(key);
    },
    async upload(li) {
      if (!blob) return true;
      error.hidden = true;
      for (const b of li.querySelectorAll('button')) b.disabled = true;
      try {
        await hub.api(`/api/v1/orders/${o.id}/attachments`, { method: 'POST', body: blob });
        return true;
      } catch (e) {
        error.hidden = false;
        error.textContent = `${errorText(e)} ${t('field.draft_kept')}`;
        return false;
      } finally {
        for (const b of li.querySelectorAll('button')) b.disabled = false;
      }
    },
  };
}

/// A `data:` URL back into its Blob (the page may not fetch one: its CSP allows only the hub).
function fromDataUrl(url) {
  const [head, b64] = url.split(',');
  const type = head.match(/^data:([^;]+);base64$/)[1];
  const bin = atob(b64);
  return new Blob([Uint8Array.from(bin, (c) => c.charCodeAt(0))], { type });
}

/// The picked image as a JPEG no larger than PHOTO_SIDE on its longest side.
async function scaled(file) {
  const img = await createImageBitmap(file);
  const k = Math.min(1, PHOTO_SIDE / Math.max(img.width, img.height));
  const canvas = document.createElement('canvas');
  canvas.width = Math.round(img.width * k);
  canvas.height = Math.round(img.height * k);
  canvas.getContext('2d').drawImage(img, 0, 0, canvas.width, canvas.height);
  img.close();
  return new Promise((done, fail) => canvas.toBlob((b) => (b ? done(b) : fail(new Error('encode'))), 'image/jpeg', 0.82));
}

async function act(li, error, type, data) {
  for (const b of li.querySelectorAll('button')) b.disabled = true;
  error.hidden = true;
  try {
    const r = await hub.request(type, data);
    if (r?.order) inbox.put(r.order);
    inbox.save();
    renderOrders();
    return true;
  } catch (e) {
    error.hidden = false;
    error.textContent =
      e.code === 'not_connected' || e.code === 'closed' || e.code === 'timeout'
        ? `${errorText(e)} ${t('field.draft_kept')}`
        : errorText(e);
    for (const b of li.querySelectorAll('button')) b.disabled = false;
    if (e instanceof HubError && (e.code === 'version_conflict' || e.code === 'illegal_transition')) refresh(data.order);
    return false;
  }
}

async function showHistory(li, id, button) {
  const old = li.querySelector('.history');
  if (old) {
    old.remove();
    return;
  }
  button.disabled = true;
  try {
    const { events } = await hub.api(`/api/v1/orders/${id}/history`);
    const list = el('ol', { className: 'history' },
      ...events.map((e) => el('li', {},
        el('b', { textContent: t(`action.${e.action || 'create'}`) }),
        ` ${short(e.at)}`,
        e.note || e.result ? ` · ${e.note || e.result}` : '')));
    button.after(list);
  } catch (e) {
    button.after(el('p', { className: 'error history', textContent: errorText(e) }));
  } finally {
    button.disabled = false;
  }
}

async function refresh(id, render = true) {
  try {
    const r = await hub.request('order.get', { order: id });
    inbox.put(r.order);
  } catch (e) {
    // Gone from our sight (reassigned, closed): keep the card, no longer ours to act on.
    if (e.code === 'not_found' && inbox.orders.has(id)) inbox.orders.get(id).withdrawn = true;
  }
  if (render) {
    inbox.save();
    renderOrders();
  }
}

/// A replayed message holds the order as it was when sent; after a resume, ask for the orders
/// still shown as ours how they stand now (another device may have acted on them meanwhile).
async function refreshOpen() {
  const open = [...inbox.orders.values()].filter((o) => inbox.mine(o)).map((o) => o.id);
  for (let i = 0; i < open.length; i += 8) {
    await Promise.all(open.slice(i, i + 8).map((id) => refresh(id, false)));
  }
  inbox.save();
  renderOrders();
}

function renderNotices() {
  const list = document.getElementById('notices');
  const notices = [...inbox.notices.values()].sort((a, b) => b.at - a.at);
  list.replaceChildren(
    ...notices.map((n) => {
      const li = el('li', { className: 'card' },
        el('header', {}, el('span', { className: 'cat', textContent: n.title })),
        el('div', { className: 'desc', textContent: n.body }),
        el('div', { className: 'meta', textContent: short(n.at) }));
      li.dataset.id = n.id;
      return li;
    }),
  );
  document.getElementById('notices-empty').hidden = notices.length > 0;
  const unseen = notices.filter((n) => !inbox.seen.has(n.id)).length;
  document.getElementById('notices-badge').textContent = unseen ? String(unseen) : '';
}

function markNoticesSeen() {
  for (const n of inbox.notices.values()) {
    // Marked seen only once the receipt is on its way; offline, it goes at the next look.
    if (n.missed) inbox.seen.add(n.id);
    else if (!inbox.seen.has(n.id) && hub.notify('notice.read', { notice: n.id })) inbox.seen.add(n.id);
  }
  inbox.save();
  renderNotices();
}

function onOutbox(m) {
  switch (m.kind) {
    case 'order.assigned':
    case 'order.supervised':
      inbox.put(m.order);
      break;
    case 'order.withdrawn': {
      const o = inbox.orders.get(m.order.id) || m.order;
      inbox.orders.set(o.id, { ...o, ...m.order, withdrawn: true });
      break;
    }
    case 'notice':
      inbox.notices.set(m.notice.id, m.notice);
      break;
    case 'call.missed':
      // A missed call is kept and shown with the notices, who and when.
      inbox.notices.set(`call-${m.call}`, {
        id: `call-${m.call}`,
        title: `${t('field.missed_call')} · ${nodeName(m.from)}`,
        body: '',
        at: m.at,
        missed: true,
      });
      break;
    case 'campaign.task':
      inbox.tasks.set(m.campaign.id, { ...m.campaign, recorded: inbox.tasks.get(m.campaign.id)?.recorded || 0 });
      break;
    default:
      break;
  }
  inbox.save();
  renderOrders();
  renderNotices();
  renderTasks();
}

/// A campaign task: households recorded one by one (`campaign.record`), then done.
function renderTasks() {
  const list = document.getElementById('tasks');
  const tasks = [...inbox.tasks.values()].sort((a, b) => b.created_at - a.created_at);
  // A card whose household fields hold something the worker typed is kept as it is.
  const typing = new Map(
    [...list.querySelectorAll('li[data-id]')]
      .filter((li) => [...li.querySelectorAll('input')].some((i) => i.value !== ''))
      .map((li) => [Number(li.dataset.id), li]),
  );
  list.replaceChildren(...tasks.map((c) => (typing.has(c.id) && !c.done && !c.closed_at ? typing.get(c.id) : taskCard(c))));
  document.getElementById('tasks-empty').hidden = tasks.length > 0;
  const open = tasks.filter((c) => !c.done && !c.closed_at).length;
  document.getElementById('tasks-badge').textContent = open ? String(open) : '';
}

function taskCard(c) {
  const li = el('li', { className: 'card' });
  li.dataset.id = c.id;
  const closed = c.done || c.closed_at;
  li.append(
    el('header', {}, el('span', { className: 'cat', textContent: c.title }),
      closed ? el('span', { className: 'state', textContent: t(c.done ? 'field.done' : 'field.task_closed') }) : null),
    el('div', { className: 'desc', textContent: c.instructions || '' }),
    el('div', { className: 'counts', textContent: `${t('field.recorded')} ${c.recorded || 0}${c.due_at ? ` · ${t('field.due')} ${short(c.due_at)}` : ''}` }));
  if (closed) return li;
  const key = el('input', { placeholder: t('field.household'), required: true, maxLength: 64, name: 'key' });
  const persons = el('input', { placeholder: t('field.persons'), type: 'number', min: 0, max: 99, name: 'persons' });
  const outcome = el('select', { name: 'outcome' },
    ...['verified', 'updated', 'not_found', 'refused'].map((o) => el('option', { value: o, textContent: t(`outcome.${o}`) })));
  const error = el('p', { className: 'error', hidden: true });
  const form = el('form', {}, el('div', { className: 'row' }, key, persons), outcome,
    el('div', { className: 'actions' },
      el('button', { type: 'submit', textContent: t('field.record') }),
      el('button', { type: 'button', className: 'ghost done', textContent: t('field.done'), onclick: () => taskAct(c, error, 'campaign.done', {}) })),
    error);
  form.onsubmit = async (ev) => {
    ev.preventDefault();
    if (!key.value.trim()) return;
    const record = { key: key.value.trim(), outcome: outcome.value };
    if (persons.value !== '') record.data = { persons: Number(persons.value) };
    c.recorded = (c.recorded || 0) + 1;
    if (await taskAct(c, error, 'campaign.record', { records: [record] })) {
      form.reset();
    } else {
      c.recorded -= 1;
      inbox.save();
    }
  };
  li.append(form);
  return li;
}

async function taskAct(c, error, type, data) {
  error.hidden = true;
  try {
    await hub.request(type, { campaign: c.id, ...data });
    if (type === 'campaign.done') c.done = true;
    inbox.save();
    renderTasks();
    return true;
  } catch (e) {
    error.hidden = false;
    error.textContent = errorText(e);
    if (e.code === 'illegal_transition') {
      c.closed_at = c.closed_at || Date.now();
      inbox.save();
      renderTasks();
    }
    return false;
  }
}

// ---- connection ------------------------------------------------------------------------------

hub.addEventListener('hello', async (ev) => {
  const hello = ev.detail;
  if (me && me.id !== hello.endpoint.id) {
    location.reload();
    return;
  }
  // Back into a session this worker is still in (after a reload or a dropped connection).
  queueMicrotask(() => sessions.resume());
  if (!me) {
    me = hello.endpoint;
    inbox = new Inbox(me.id);
    outbox = new Outbox(hub, me.id, onOutbox);
    window.addEventListener('langchange', () => {
      showMe();
      renderOrders();
      renderNotices();
      renderTasks();
    });
    try {
      const r = await fetch('/api/v1/categories').then((x) => x.json());
      categories = new Map(r.categories.map((c) => [c.id, c]));
    } catch {}
    showMe();
    renderOrders();
    renderNotices();
    renderTasks();
    share.checked = localStorage.getItem('gridhub.share_location') === '1';
    if (share.checked) startLocation();
  }
  try {
    // The status chosen before a drop or a reload carries over.
    const status = localStorage.getItem(STATUS_KEY()) || 'online';
    showStatus(status);
    if (status !== 'online') hub.notify('presence.set', { status });
    lastSent = null;
    await outbox.resume();
    await refreshOpen();
    document.body.dataset.ready = 'true';
    document.body.dataset.lastSeq = String(outbox.last);
  } catch (e) {
    page.fail(errorText(e));
  }
});
hub.addEventListener('error', (ev) => page.fail(errorText(ev.detail)));

// A worker calls its chain of command: its village station first, then up to the city.
let chain = [];
async function showMe() {
  document.getElementById('me').textContent = nodeName(me);
  try {
    if (!chain.length) {
      const { ancestors } = await hub.api(`/api/v1/org/nodes/${encodeURIComponent(me.id)}`);
      for (const id of ancestors) chain.push((await hub.api(`/api/v1/org/nodes/${encodeURIComponent(id)}`)).node);
    }
    // The village and the township name the place.
    document.getElementById('place').textContent = chain.slice(0, 2).map(nodeName).reverse().join(' · ');
    const dial = document.getElementById('dial-to');
    const chosen = dial.value;
    dial.replaceChildren(...chain.map((n) => Object.assign(document.createElement('option'), { value: n.id, textContent: nodeName(n) })));
    if (chosen) dial.value = chosen;
  } catch {}
}
// While a call is answered the hub shows this terminal `in_call`; so does the page.
calls.addEventListener('state', (ev) => {
  const live = ['active', 'connecting', 'peer_away'].includes(ev.detail.state) && ev.detail.state !== 'connecting';
  document.getElementById('in-call').hidden = !live;
  document.body.dataset.call = ev.detail.state;
});
for (const media of ['audio', 'video']) {
  document.getElementById(`dial-${media}`).onclick = () => {
    const n = chain.find((x) => x.id === document.getElementById('dial-to').value);
    if (n) calls.place(n, media);
  };
}

page.begin();

// The tier navigator: a focused node, its live counts, and its children to drill into.

import { t, nodeName } from '../lib/i18n.js';

const PARTS = ['busy', 'in_call', 'in_session', 'away'];

export class Navigator {
  constructor({ org, presence, onFocus, onCall }) {
    this.org = org;
    this.presence = presence;
    this.onFocus = onFocus;
    this.onCall = onCall;
    this.focus = org.root;
    this.dirty = false;
    this.el = {
      name: document.getElementById('focus-name'),
      kpis: document.getElementById('kpis'),
      up: document.getElementById('up'),
      list: document.getElementById('children'),
      crumbs: document.getElementById('crumbs'),
    };
    this.el.up.onclick = () => this.go(this.org.get(this.focus).parent);
    this.el.list.onclick = (ev) => {
      const call = ev.target.closest('button[data-call]');
      if (call) {
        ev.stopPropagation();
        this.onCall?.(this.org.get(call.closest('li').dataset.id), call.dataset.call);
        return;
      }
      const li = ev.target.closest('li[data-id]');
      if (li && !li.classList.contains('leaf')) this.go(li.dataset.id);
    };
    this.el.list.onkeydown = (ev) => {
      if (ev.key === 'Enter') this.el.list.onclick(ev);
    };
    presence.addEventListener('reset', () => this.schedule());
    presence.addEventListener('change', (ev) => {
      const focus = this.org.get(this.focus);
      const mine = new Set([focus.id, ...focus.children]);
      if (ev.detail.aggregates.some((n) => mine.has(n)) || ev.detail.endpoints.some((n) => mine.has(n))) {
        this.schedule();
      }
    });
    window.addEventListener('langchange', () => this.render());
    this.render();
  }

  go(id) {
    if (!id || !this.org.get(id)) return;
    this.focus = id;
    this.render();
    this.onFocus?.(id);
  }

  // Many deltas can arrive between two frames: draw once per frame at most.
  schedule() {
    if (this.dirty) return;
    this.dirty = true;
    requestAnimationFrame(() => {
      this.dirty = false;
      this.render();
    });
  }

  render() {
    const org = this.org;
    const focus = org.get(this.focus);
    const c = this.presence.counts(focus.id);
    this.el.name.innerHTML = '';
    this.el.name.append(dot(this.presence.status(focus.id)), ' ', nodeName(focus));
    const tier = document.createElement('small');
    tier.textContent = t(`tier.${focus.tier}`);
    this.el.name.append(tier);
    this.el.name.dataset.id = focus.id;

    const rate = c.total ? Math.round((c.online / c.total) * 1000) / 10 : 0;
    this.el.kpis.replaceChildren(
      kpi('total', c.total, t('nav.terminals')),
      kpi('online', c.online, t('status.online'), 'online'),
      kpi('rate', `${rate}%`, t('nav.rate')),
      ...PARTS.map((p) => kpi(p, c[p], t(`status.${p}`), p)),
    );
    this.el.up.hidden = focus.id === org.root;

    const items = focus.children.map((id) => this.item(org.get(id)));
    this.el.list.replaceChildren(...items);

    const crumbs = [];
    for (const n of org.path(focus.id)) {
      if (crumbs.length) crumbs.push(Object.assign(document.createElement('span'), { className: 'sep', textContent: '›' }));
      const b = document.createElement('button');
      b.textContent = nodeName(n);
      b.onclick = () => this.go(n.id);
      crumbs.push(b);
    }
    this.el.crumbs.replaceChildren(...crumbs);
  }

  item(n) {
    const li = document.createElement('li');
    li.dataset.id = n.id;
    const status = this.presence.status(n.id);
    const name = document.createElement('span');
    name.className = 'name';
    name.textContent = nodeName(n);
    name.title = n.id;
    const count = document.createElement('span');
    count.className = 'count';
    // Anyone on line below may be called, with voice or video.
    const callButtons = [];
    if (status !== 'offline' && this.onCall) {
      for (const media of ['audio', 'video']) {
        const b = document.createElement('button');
        b.className = 'callbtn';
        b.dataset.call = media;
        b.textContent = t(`call.${media}`);
        b.title = `${t('call.call')} ${nodeName(n)}`;
        callButtons.push(' ', b);
      }
    }
    if (!n.children.length) {
      li.classList.add('leaf');
      li.dataset.status = status;
      count.append(t(`status.${status}`), ...callButtons);
      li.append(dot(status), name, count);
      return li;
    }
    li.tabIndex = 0;
    const c = this.presence.counts(n.id);
    li.dataset.online = c.online;
    li.dataset.total = c.total;
    count.innerHTML = `${c.online}<small>/${c.total}</small>`;
    count.append(...callButtons);
    const bar = document.createElement('div');
    bar.className = 'bar-row';
    const other = c.online - PARTS.reduce((s, p) => s + c[p], 0);
    for (const [k, v] of [['online', other], ...PARTS.map((p) => [p, c[p]])]) {
      const i = document.createElement('i');
      i.style.width = c.total ? `${(v / c.total) * 100}%` : '0';
      i.style.background = `var(--s-${k})`;
      bar.append(i);
    }
    const parts = document.createElement('div');
    parts.className = 'parts';
    parts.textContent = PARTS.filter((p) => c[p]).map((p) => `${t(`status.${p}`)} ${c[p]}`).join('  ');
    li.append(dot(status), name, count, bar, parts);
    return li;
  }
}

function dot(status) {
  const d = document.createElement('span');
  d.className = 'dot';
  d.dataset.s = status;
  return d;
}

function kpi(key, value, label, status) {
  const d = document.createElement('div');
  d.className = 'kpi';
  d.dataset.k = key;
  if (status) d.dataset.s = status;
  const b = document.createElement('b');
  b.textContent = typeof value === 'number' ? value.toLocaleString() : value;
  const s = document.createElement('span');
  s.textContent = label;
  d.append(b, s);
  return d;
}

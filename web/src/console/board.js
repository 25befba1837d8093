// The order board: the eight steps counted for the operator's subtree, the orders waiting at
// this center with the actions an operator takes, a live ticker, and intake of new requests.
// Every action goes over the operator's own connection, scoped and refused as for any terminal.

import { t, lang, nodeName, errorText, fmtTime } from '../lib/i18n.js';
import { el } from '../lib/dom.js';

const STEPS = ['intake', 'dispatched', 'in_progress', 'supervised', 'result_reported', 'rated', 'published', 'archived'];
const TICKER_MAX = 40;
const OPEN = new Set(['intake', 'dispatched', 'in_progress', 'supervised']);
// The statistics scan the subtree's orders: at most one read every two seconds however busy.
const REFRESH_MS = 2000;

export class Board {
  constructor({ hub, org, me, focus, onStats, onOpen, watchOnly = false }) {
    // An observer seat (a video wall) shows the board and acts on nothing.
    this.watchOnly = watchOnly;
    this.onStats = onStats;
    this.onOpen = onOpen;
    this.hub = hub;
    this.org = org;
    this.me = me;
    this.focus = focus; // () => the navigator's focused node id
    this.categories = new Map();
    this.stats = null;
    this.mine = [];
    this.ticker = [];
    this.timer = null;
    this.photoUrls = [];
    this.photoGen = 0;
    this.el = {
      steps: document.getElementById('steps'),
      mine: document.getElementById('mine'),
      ticker: document.getElementById('ticker'),
      late: document.getElementById('late'),
      dialog: document.getElementById('order-dialog'),
      body: document.getElementById('order-body'),
      create: document.getElementById('new-order'),
      form: document.getElementById('new-order-form'),
    };
    document.getElementById('board-new').onclick = () => this.openCreate();
    document.getElementById('board-new').hidden = watchOnly;
    this.el.dialog.addEventListener('close', () => this.dropPhotos());
    this.el.mine.onclick = (ev) => {
      const li = ev.target.closest('li[data-id]');
      if (li) this.open(Number(li.dataset.id));
    };
    this.el.ticker.onclick = this.el.mine.onclick;
    this.el.form.onsubmit = (ev) => this.create(ev);
    document.getElementById('new-order-cancel').onclick = () => this.el.create.close();
    hub.addEventListener('orders.delta', (ev) => this.onDelta(ev.detail));
    window.addEventListener('langchange', () => this.render());
  }

  /// After every (re)connect: watch the subtree and read the figures afresh.
  async start() {
    if (!this.categories.size) {
      const r = await fetch('/api/v1/categories').then((x) => x.json());
      this.categories = new Map(r.categories.map((c) => [c.id, c]));
      this.priorities = r.priorities;
    }
    await this.hub.request('orders.subscribe', { node: this.me });
    await this.refresh();
  }

  catName(id) {
    const c = this.categories.get(id);
    return c ? (lang === 'en' ? c.name_en : c.name) : id;
  }

  place(id) {
    const n = this.org.get(id);
    if (!n) return id;
    // The two nearest named places above a terminal say where it is.
    return this.org.path(id).slice(-3).map(nodeName).join(' ');
  }

  async refresh() {
    this.timer = null;
    const [stats, mine] = await Promise.all([
      this.hub.api(`/api/v1/orders/stats?node=${this.me}`),
      this.hub.api(`/api/v1/orders?holder=${this.me}&limit=100`),
    ]);
    this.stats = stats;
    this.mine = mine.orders.filter((o) => o.state !== 'archived');
    this.render();
    this.onStats?.(stats);
    // The newest orders of the subtree, for the map's heat of open ones: less often, it is a
    // bigger read.
    if (this.onOpen && Date.now() - (this.openAt || 0) > 15_000) {
      this.openAt = Date.now();
      const { orders } = await this.hub.api(`/api/v1/orders?node=${this.me}&limit=500`);
      this.onOpen(orders.filter((o) => OPEN.has(o.state)));
    }
  }

  // Counts come from the store; many deltas in a second cost one read.
  schedule() {
    if (this.timer == null) this.timer = setTimeout(() => this.refresh().catch(() => {}), REFRESH_MS);
  }

  onDelta(d) {
    if (d.node !== this.me) return;
    for (const o of d.orders) {
      this.ticker.unshift({ ...o, seen: Date.now() });
    }
    this.ticker.length = Math.min(this.ticker.length, TICKER_MAX);
    this.renderTicker();
    this.schedule();
  }

  render() {
    const by = this.stats?.by_state || {};
    this.el.steps.replaceChildren(
      ...STEPS.map((s, i) => {
        const d = el('div', { className: 'step' }, el('b', { textContent: (by[s] || 0).toLocaleString() }), el('span', { textContent: `${i + 1} ${t(`step.${s}`)}` }));
        d.dataset.state = s;
        d.dataset.n = String(by[s] || 0);
        return d;
      }),
    );
    this.el.late.textContent = this.stats ? `${t('board.late')} ${this.stats.late ?? 0}` : '';
    this.el.late.dataset.count = String(this.stats?.late ?? 0);
    this.el.mine.replaceChildren(
      ...(this.mine.length
        ? this.mine.map((o) => this.row(o))
        : [el('li', { className: 'empty', textContent: t('board.none') })]),
    );
    this.renderTicker();
  }

  row(o) {
    const late = o.supervision > 0 || (o.due_at < Date.now() && !['result_reported', 'rated', 'published', 'archived'].includes(o.state));
    const li = el('li', {},
      el('span', { className: 'id', textContent: `#${o.id}` }),
      el('span', { className: 'cat', textContent: this.catName(o.category) }),
      el('span', { className: `prio prio-${o.priority}`, textContent: t(`prio.${o.priority}`) }),
      el('span', { className: 'st', textContent: t(`step.${o.state}`) }),
      late ? el('span', { className: 'flag', textContent: t('board.late') }) : null,
      el('span', { className: 'where', textContent: this.place(o.node) }));
    li.dataset.id = o.id;
    li.dataset.state = o.state;
    li.tabIndex = 0;
    return li;
  }

  renderTicker() {
    this.el.ticker.replaceChildren(
      ...this.ticker.map((o) => {
        const time = fmtTime(o.updated_at, { hour: '2-digit', minute: '2-digit', second: '2-digit' });
        const li = el('li', {},
          el('time', { textContent: time }),
          el('span', { className: 'id', textContent: `#${o.id}` }),
          el('span', { className: 'cat', textContent: this.catName(o.category) }),
          el('span', { className: 'st', textContent: `→ ${t(`step.${o.state}`)}` }),
          el('span', { className: 'where', textContent: nodeName(this.org.get(o.holder) || { name: o.holder }) }));
        li.dataset.id = o.id;
        li.dataset.state = o.state;
        return li;
      }),
    );
  }

  // ---- one order: what it is, and what this center may do with it now ----------------------

  async open(id) {
    let o;
    try {
      o = (await this.hub.request('order.get', { order: id })).order;
    } catch (e) {
      this.show(el('p', { className: 'error', textContent: errorText(e) }));
      return;
    }
    const error = el('p', { className: 'error', hidden: true });
    const facts = el('dl', {},
      ...[
        [t('board.category'), this.catName(o.category)],
        [t('board.priority'), t(`prio.${o.priority}`)],
        [t('board.source'), t(`source.${o.source}`)],
        [t('board.location'), `${this.place(o.location.node)}${o.location.address ? ` · ${o.location.address}` : ''}`],
        [t('board.holder'), nodeName(this.org.get(o.holder) || { name: o.holder })],
        [t('field.due'), fmtTime(o.due_at)],
        o.reporter ? [t('board.reporter'), [o.reporter.name, o.reporter.phone].filter(Boolean).join(' ')] : null,
        o.result ? [t('board.result'), o.result.text] : null,
      ]
        .filter(Boolean)
        .flatMap(([k, v]) => [el('dt', { textContent: k }), el('dd', { textContent: v })]),
    );
    const photos = el('div', { className: 'photos', hidden: true });
    const body = el('div', { className: 'order' },
      el('h3', {}, `#${o.id} `, el('span', { className: 'st', textContent: `${o.step} ${t(`step.${o.state}`)}` })),
      el('p', { className: 'desc', textContent: o.description }),
      facts,
      photos,
      this.actions(o, error),
      error);
    this.photos(o.id, photos);
    body.dataset.id = o.id;
    body.dataset.state = o.state;
    this.show(body);
  }

  /// The photos attached to the order, shown in `box` (the field's evidence with its result).
  /// Their object URLs live as long as the dialog shows this order: a wall open for days keeps
  /// none it no longer shows.
  async photos(id, box) {
    this.dropPhotos();
    // Another order opened, or the dialog closed, while these load: they are not shown.
    const shown = this.photoGen;
    let list;
    try {
      ({ attachments: list } = await this.hub.api(`/api/v1/orders/${id}/attachments`));
    } catch {
      return; // The order itself is shown; its photos are an extra.
    }
    if (!list.length || shown !== this.photoGen) return;
    box.hidden = false;
    box.append(el('div', { className: 'label', textContent: t('board.photos') }));
    for (const a of list) {
      try {
        const blob = await this.hub.api(a.url, { as: 'blob' });
        if (shown !== this.photoGen) return;
        const url = URL.createObjectURL(blob);
        this.photoUrls.push(url);
        box.append(el('a', { href: url, target: '_blank', rel: 'noopener' }, el('img', { src: url, alt: `#${a.id}`, className: 'photo' })));
      } catch {
        // One photo that does not load leaves the others.
      }
    }
  }

  dropPhotos() {
    this.photoGen++;
    for (const u of this.photoUrls.splice(0)) URL.revokeObjectURL(u);
  }

  show(node) {
    this.el.body.replaceChildren(node);
    if (!this.el.dialog.open) this.el.dialog.showModal();
  }

  actions(o, error) {
    const box = el('form', { className: 'actions', method: 'dialog' });
    if (o.holder !== this.me || this.watchOnly) return box;
    const act = async (type, data) => {
      error.hidden = true;
      for (const b of box.querySelectorAll('button')) b.disabled = true;
      try {
        await this.hub.request(type, { order: o.id, version: o.version, ...data });
      } catch (e) {
        error.hidden = false;
        error.textContent = errorText(e);
        for (const b of box.querySelectorAll('button')) b.disabled = false;
        return;
      }
      // Done; what follows only shows it. If reading back fails, the next delta shows it.
      await this.refresh().catch(() => {});
      await this.open(o.id);
    };
    const button = (key, onclick, cls = '') => el('button', { type: 'button', className: cls, textContent: t(key), onclick });
    // The hub's limits: a comment up to 500 characters, a public summary up to 2,000.
    const text = (key, required = true, max = 500) => el('textarea', { placeholder: t(key), required, rows: 2, maxLength: max });
    if (['intake', 'dispatched', 'in_progress', 'supervised'].includes(o.state)) {
      const me = this.org.get(this.me);
      // Towards the order's place by default: the child of this center above it.
      const toward = this.org.path(o.location.node).find((n) => n.parent === this.me);
      const select = el('select', { name: 'to' },
        ...me.children.map((id) => {
          const opt = el('option', { value: id, textContent: nodeName(this.org.get(id)) });
          if (toward && id === toward.id) opt.selected = true;
          return opt;
        }));
      if (me.children.length) {
        box.append(el('label', {}, t('board.dispatch_to'), select), button('board.dispatch', () => act('order.dispatch', { to: select.value }), 'dispatch'));
      }
    }
    if (o.state === 'result_reported' && !o.reviewed) {
      const comment = text('board.comment', false);
      box.append(comment,
        button('board.review_ok', () => act('order.review', { approve: true, ...(comment.value ? { comment: comment.value } : {}) }), 'approve'),
        button('board.review_back', () => act('order.review', { approve: false, ...(comment.value ? { comment: comment.value } : {}) }), 'ghost'));
    }
    if (o.state === 'result_reported' && o.reviewed) {
      const score = el('select', {}, ...[5, 4, 3, 2, 1].map((n) => el('option', { value: n, textContent: '★'.repeat(n) })));
      const sat = el('input', { type: 'checkbox', checked: true });
      box.append(el('label', {}, t('board.score'), score), el('label', { className: 'check' }, sat, t('board.satisfied')),
        button('board.rate', () => act('order.rate', { score: Number(score.value), satisfied: sat.checked }), 'rate'));
    }
    if (o.state === 'rated') {
      const summary = text('board.summary', true, 2000);
      box.append(summary, button('board.publish', () => summary.value.trim() && act('order.publish', { summary: summary.value.trim() }), 'publish'));
    }
    if (o.state === 'published') box.append(button('board.archive', () => act('order.archive', {}), 'archive'));
    return box;
  }

  // ---- intake ----------------------------------------------------------------------------------

  openCreate() {
    const f = this.el.form;
    f.category.replaceChildren(...[...this.categories.values()].map((c) => el('option', { value: c.id, textContent: lang === 'en' ? c.name_en : c.name })));
    f.priority.replaceChildren(...['routine', 'urgent', 'emergency'].map((p) => el('option', { value: p, textContent: t(`prio.${p}`) })));
    // The cause, when intake already knows it: the category's own list.
    const causes = () => f.cause.replaceChildren(
      el('option', { value: '', textContent: t('field.cause_unknown') }),
      ...(this.categories.get(f.category.value)?.causes || []).map((c) => el('option', { value: c.id, textContent: lang === 'en' ? c.name_en : c.name })));
    f.category.onchange = causes;
    causes();
    f.source.replaceChildren(...['hotline_12345', 'app', 'grid_patrol', 'referral_110', 'referral_120', 'integration'].map((s) => el('option', { value: s, textContent: t(`source.${s}`) })));
    // The place: the terminal or node the operator is looking at.
    if (!f.node.value) f.node.value = this.focus();
    document.getElementById('new-order-error').hidden = true;
    this.el.create.showModal();
    f.description.focus();
  }

  async create(ev) {
    ev.preventDefault();
    const f = this.el.form;
    const err = document.getElementById('new-order-error');
    const data = {
      source: f.source.value,
      category: f.category.value,
      description: f.description.value.trim(),
      location: { node: f.node.value.trim(), ...(f.address.value.trim() ? { address: f.address.value.trim() } : {}) },
      priority: f.priority.value,
      ...(f.cause.value ? { cause: f.cause.value } : {}),
      // A retry after a lost reply must not take the request in twice.
      idempotency_key: f.dataset.key || (f.dataset.key = `console-${this.me}-${Date.now()}-${Math.random().toString(36).slice(2, 8)}`),
    };
    if (f.reporter.value.trim() || f.phone.value.trim()) {
      data.reporter = { name: f.reporter.value.trim(), ...(f.phone.value.trim() ? { phone: f.phone.value.trim() } : {}) };
    }
    try {
      const r = await this.hub.request('order.create', data);
      delete f.dataset.key;
      f.reset();
      this.el.create.close();
      await this.refresh();
      await this.open(r.order.id);
    } catch (e) {
      err.hidden = false;
      err.textContent = errorText(e);
    }
  }
}

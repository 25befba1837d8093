// The analysis view: where requests gather more than they should (hotspots, with the orders
// that make them, pushed to their node as a governance task in one click), what an intervention
// changed (before and after, with its interval), and who performs (completion, on time,
// satisfaction, reopening by county, with the trend against the period before).

import { t, lang, nodeName, fmtTime, errorText } from '../lib/i18n.js';
import { el, css } from '../lib/dom.js';

const DAY = 86_400_000;

const pct = (x, digits = 1) => (x == null ? '—' : `${(x * 100).toFixed(digits)}%`);
const signed = (x) => (x == null ? '—' : `${x > 0 ? '+' : x < 0 ? '−' : ''}${Math.abs(x * 100).toFixed(1)}%`);

export class Analysis {
  constructor({ hub, org, me, board, map, watchOnly }) {
    this.hub = hub;
    this.org = org;
    this.me = me;
    this.board = board;
    this.map = map;
    this.watchOnly = watchOnly;
    this.dialog = document.getElementById('analysis');
    this.$ = (id) => document.getElementById(id);
    this.chart = null;
    this.hot = null;
    this.effect = null;
    this.perf = null;
    this.sites = [];
    for (const id of ['an-category', 'an-kind', 'an-window']) this.$(id).onchange = () => this.loadHotspots();
    this.$('an-intervention').onchange = () => this.loadEffect();
    this.$('an-close').onclick = () => this.close();
    this.dialog.addEventListener('close', () => this.map?.setHotspots([]));
    window.addEventListener('langchange', () => this.dialog.open && this.render());
  }

  async open() {
    this.dialog.showModal();
    if (!this.chart) {
      this.chart = echarts.init(this.$('an-effect-chart'), null, { renderer: 'canvas' });
      new ResizeObserver(() => this.chart.resize()).observe(this.$('an-effect-chart'));
    }
    await this.fillSelects();
    // Each part shows what it could load; one failing leaves the others.
    await Promise.all([this.loadHotspots(), this.loadInterventions().catch(() => {}), this.loadPerformance()]);
    this.dialog.dataset.ready = 'true';
  }

  close() {
    this.dialog.close();
  }

  async fillSelects() {
    const cats = [...this.board.categories.values()];
    const sel = this.$('an-category');
    if (!sel.options.length) {
      sel.append(el('option', { value: '' }, t('an.all')), ...cats.map((c) => el('option', { value: c.id }, this.board.catName(c.id))));
      sel.value = 'noise';
    }
    const kinds = this.$('an-kind');
    if (!kinds.options.length) {
      this.sites = (await this.hub.api(`/api/v1/analysis/sites?node=${this.me}`)).sites;
      const list = [...new Set(this.sites.map((s) => s.kind))].sort();
      kinds.append(
        el('option', { value: 'nodes' }, t('an.villages')),
        ...list.map((k) => el('option', { value: k }, t(`an.kind.${k}`) === `an.kind.${k}` ? k : t(`an.kind.${k}`))),
      );
      if (list.includes('square')) kinds.value = 'square';
    }
  }

  window() {
    const days = Number(this.$('an-window').value);
    const to = Date.now();
    return { from: to - days * DAY, to, days };
  }

  async loadHotspots() {
    const { from, to } = this.window();
    const cat = this.$('an-category').value;
    const kind = this.$('an-kind').value;
    const q = new URLSearchParams({ node: this.me, from, to, evidence: 12 });
    if (cat) q.set('category', cat);
    if (kind === 'nodes') {
      q.set('unit', 'nodes');
      q.set('tier', 'village');
    } else if (kind) q.set('kind', kind);
    try {
      this.hot = await this.hub.api(`/api/v1/analysis/hotspots?${q}`);
      this.hotError = null;
    } catch (e) {
      this.hot = null;
      this.hotError = errorText(e);
    }
    this.renderHotspots();
  }

  async loadInterventions() {
    const list = (await this.hub.api(`/api/v1/analysis/interventions?node=${this.me}`)).interventions;
    const sel = this.$('an-intervention');
    sel.replaceChildren(
      ...list.map((i) => el('option', { value: i.id }, `${i.title} · ${i.at ? fmtTime(i.at, { year: 'numeric', month: 'numeric', day: 'numeric' }) : t('an.pending')}`)),
    );
    // The one in effect first, so the chart says something at once.
    const first = list.find((i) => i.at);
    if (first) sel.value = String(first.id);
    await this.loadEffect();
  }

  async loadEffect() {
    const id = this.$('an-intervention').value;
    this.effect = id ? await this.hub.api(`/api/v1/analysis/interventions/${id}/effect?before_days=120&after_days=120`).catch(() => null) : null;
    this.renderEffect();
  }

  async loadPerformance() {
    const to = Date.now();
    this.perf = await this.hub.api(`/api/v1/analysis/performance?node=${this.me}&from=${to - 365 * DAY}&to=${to}`).catch(() => null);
    this.renderPerformance();
  }

  render() {
    this.renderHotspots();
    this.renderEffect();
    this.renderPerformance();
  }

  placeName(h) {
    if (h.site) return h.site.name;
    return h.node ? nodeName(h.node) : '';
  }

  renderHotspots() {
    const list = this.$('an-hotspots');
    const sum = this.$('an-hot-sum');
    const h = this.hot;
    if (!h) {
      sum.textContent = this.hotError || '';
      list.replaceChildren();
      this.map?.setHotspots([]);
      return;
    }
    const base = h.baseline.kind === 'peers' ? t('an.base.peers').replace('{m}', (h.baseline.median ?? 0).toFixed(1)) : t('an.base.history').replace('{n}', h.baseline.windows);
    sum.textContent = `${t('an.tested').replace('{n}', h.tested).replace('{r}', h.requests)} · ${base} · FDR ${h.fdr}${h.empty ? ` · ${h.empty}` : ''}`;
    list.replaceChildren(
      ...h.hotspots.map((x, i) => {
        const evidence = el('div', { className: 'evidence', hidden: true },
          ...x.evidence.map((id) => {
            const b = el('button', { className: 'ghost small', type: 'button' }, `#${id}`);
            b.onclick = () => this.board.open(id);
            return b;
          }));
        // A task is about one category: none to push when all are shown together.
        const push = el('button', { className: 'small', type: 'button', hidden: this.watchOnly || !this.$('an-category').value }, t('an.push'));
        push.onclick = (ev) => {
          ev.stopPropagation();
          this.push(x, push);
        };
        const li = el('li', {},
          el('span', { className: 'rank' }, String(i + 1)),
          el('span', { className: 'name' }, this.placeName(x)),
          el('span', { className: 'num' }, `${x.observed} / ${x.expected.toFixed(1)}`),
          el('span', { className: 'ratio' }, `×${x.ratio.toFixed(1)}`),
          push,
          evidence);
        li.onclick = () => (evidence.hidden = !evidence.hidden);
        return li;
      }),
    );
    if (!h.hotspots.length) list.append(el('li', { className: 'empty' }, h.empty || t('an.none')));
    this.map?.setHotspots(h.hotspots.map((x) => ({
      lat: x.site ? x.site.lat : x.node?.lat,
      lon: x.site ? x.site.lon : x.node?.lon,
      name: this.placeName(x),
      ratio: x.ratio,
    })).filter((p) => p.lat != null));
  }

  /// From hotspot to action: a governance order to the place's node, with the evidence.
  async push(x, button) {
    button.disabled = true;
    const cat = this.$('an-category').value;
    const body = {
      title: `${this.placeName(x)}：${this.board.catName(cat)}${t('an.task')}`,
      category: cat,
      evidence: x.evidence,
    };
    if (x.site) body.sites = [x.site.id];
    else body.node = x.node.id;
    body.task = { priority: 'urgent' };
    try {
      const r = await this.hub.api('/api/v1/analysis/interventions', { method: 'POST', body });
      button.textContent = `${t('an.pushed')} #${r.order?.id ?? ''}`;
      await this.loadInterventions();
    } catch (e) {
      button.disabled = false;
      button.textContent = errorText(e);
    }
  }

  renderEffect() {
    const e = this.effect;
    const head = this.$('an-effect-head');
    if (!e || e.change == null) {
      head.textContent = e?.note || t('an.no_effect');
      this.chart?.clear();
      return;
    }
    const [lo, hi] = e.ci;
    head.replaceChildren(
      el('b', { className: e.change < 0 ? 'down' : 'up' }, signed(e.change)),
      ` (95% CI ${signed(lo)} ${t('an.to')} ${signed(hi)}) · `,
      `${t('an.before')} ${e.before.per_day.toFixed(2)}/${t('an.day')} → ${t('an.after')} ${e.after.per_day.toFixed(2)}/${t('an.day')}`,
    );
    const at = e.intervention.at;
    const data = e.series.map((s) => [s.from, s.count]);
    this.chart.setOption({
      backgroundColor: 'transparent',
      animation: false,
      textStyle: { color: css('--muted'), fontSize: 12 },
      grid: { left: 40, right: 16, top: 20, bottom: 28 },
      tooltip: { trigger: 'axis' },
      xAxis: { type: 'time', axisLine: { lineStyle: { color: css('--line') } } },
      yAxis: { type: 'value', name: t('an.per_week'), splitLine: { lineStyle: { color: '#1a2742' } } },
      series: [{
        type: 'bar',
        data: data.map(([x, y]) => ({ value: [x, y], itemStyle: { color: x < at ? css('--warn') : css('--ok') } })),
        barMaxWidth: 14,
        markLine: { symbol: 'none', silent: true, label: { formatter: t('an.intervention'), color: css('--text') },
          lineStyle: { color: css('--accent'), type: 'dashed' }, data: [{ xAxis: at }] },
      }],
    }, true);
  }

  renderPerformance() {
    const p = this.perf;
    const table = this.$('an-performance');
    if (!p) {
      table.replaceChildren();
      return;
    }
    // A trend only against a period with enough requests to say one.
    const arrow = (now, before, enough) => {
      if (now == null || before == null || !enough) return '';
      const d = now - before;
      return Math.abs(d) < 0.0005 ? ' →' : d > 0 ? ' ↑' : ' ↓';
    };
    const cells = (r, prev) => {
      const enough = prev.received >= 100;
      return [
        el('td', {}, r.received.toLocaleString()),
        el('td', {}, pct(r.completion) + arrow(r.completion, prev.completion, enough)),
        el('td', {}, pct(r.on_time_rate) + arrow(r.on_time_rate, prev.on_time_rate, enough)),
        el('td', {}, pct(r.satisfaction) + arrow(r.satisfaction, prev.satisfaction, enough)),
        el('td', {}, pct(r.reopen_rate, 2) + arrow(r.reopen_rate, prev.reopen_rate, enough)),
      ];
    };
    const head = el('tr', {}, ...['an.col.node', 'an.col.received', 'an.col.completion', 'an.col.on_time', 'an.col.satisfaction', 'an.col.reopen', 'an.col.top']
      .map((k) => el('th', {}, t(k))));
    const rows = p.rows.map((r) => el('tr', {},
      el('td', {}, r.node ? nodeName(r.node) : this.board.catName(r.category.category)),
      ...cells(r.rates, r.previous),
      el('td', { className: 'top' }, r.top.map((c) => `${this.board.catName(c.category)} ${c.count}`).join(' · '))));
    const total = el('tr', { className: 'total' }, el('td', {}, t('an.total')), ...cells(p.total, p.previous), el('td', {}, ''));
    table.replaceChildren(el('thead', {}, head), el('tbody', {}, ...rows, total));
  }
}

// Charts where people would rather look than read: orders taken in per hour, completion by
// child node against the 97.4 % the seed reports, the share of terminals on line over the last
// hours, and how many calls are answered.

import { t, lang, nodeName } from '../lib/i18n.js';
import { css } from '../lib/dom.js';

const SEED_COMPLETION = 97.4;
const ONLINE_EVERY_MS = 60_000;
const ONLINE_KEEP = 24 * 60; // a day of minutes, per browser
const CALLS_EVERY_MS = 60_000;

export class Charts {
  constructor({ hub, org, presence, me }) {
    this.hub = hub;
    this.org = org;
    this.presence = presence;
    this.me = me;
    this.key = `gridhub.online.${me}`;
    this.samples = JSON.parse(localStorage.getItem(this.key) || '[]');
    this.stats = null;
    this.calls = null;
    const init = (id) => echarts.init(document.getElementById(id), null, { renderer: 'canvas' });
    this.c = {
      hourly: init('chart-hourly'),
      completion: init('chart-completion'),
      online: init('chart-online'),
      calls: init('chart-calls'),
    };
    for (const [id, c] of Object.entries(this.c)) {
      new ResizeObserver(() => c.resize()).observe(document.getElementById(`chart-${id}`));
    }
    this.base = {
      backgroundColor: 'transparent',
      animation: false,
      textStyle: { color: css('--muted'), fontSize: 12 },
      grid: { left: 40, right: 12, top: 34, bottom: 24 },
      title: { textStyle: { color: css('--text'), fontSize: 14, fontWeight: 500 }, left: 4, top: 4 },
    };
    window.addEventListener('langchange', () => this.render());
    this.sample();
    setInterval(() => this.sample(), ONLINE_EVERY_MS);
    setInterval(() => this.loadCalls(), CALLS_EVERY_MS);
    this.loadCalls();
  }

  /// The board's figures, read after every burst of changes.
  setStats(stats) {
    this.stats = stats;
    this.render();
  }

  async loadCalls() {
    try {
      this.calls = await this.hub.api(`/api/v1/calls/stats?node=${this.me}`);
      this.render();
    } catch {
      // Shown as empty until the next try.
    }
  }

  sample() {
    const c = this.presence.counts(this.me);
    if (!c.total) return;
    const now = Date.now();
    this.samples.push([now, Math.round((c.online / c.total) * 1000) / 10]);
    // Bounded: a wall left on for weeks keeps a day.
    const cut = now - ONLINE_KEEP * ONLINE_EVERY_MS;
    this.samples = this.samples.filter(([at]) => at >= cut).slice(-ONLINE_KEEP);
    localStorage.setItem(this.key, JSON.stringify(this.samples));
    this.render();
  }

  render() {
    const accent = css('--accent');
    const ok = css('--ok');
    const warn = css('--warn');
    const axis = { axisLine: { lineStyle: { color: css('--line') } }, splitLine: { lineStyle: { color: '#1a2742' } } };
    const hourly = this.stats?.by_hour || [];
    this.c.hourly.setOption({
      ...this.base,
      title: { ...this.base.title, text: t('chart.hourly') },
      tooltip: { trigger: 'axis' },
      xAxis: { type: 'category', data: hourly.map((h) => new Date(h.at).getHours()), ...axis },
      yAxis: { type: 'value', minInterval: 1, ...axis },
      series: [{ type: 'bar', data: hourly.map((h) => h.received), itemStyle: { color: accent } }],
    });
    const kids = this.stats?.by_node || [];
    this.c.completion.setOption({
      ...this.base,
      title: { ...this.base.title, text: t('chart.completion') },
      tooltip: { trigger: 'axis', valueFormatter: (v) => `${v}%` },
      xAxis: {
        type: 'category',
        data: kids.map((k) => nodeName(this.org.get(k.node) || { name: k.name })),
        axisLabel: { interval: 0, rotate: kids.length > 6 ? 30 : 0, fontSize: 11 },
        ...axis,
      },
      yAxis: { type: 'value', min: 0, max: 100, ...axis },
      series: [{
        type: 'bar',
        data: kids.map((k) => Math.round(k.completion_rate * 1000) / 10),
        itemStyle: { color: (p) => (p.value >= SEED_COMPLETION ? ok : warn) },
        markLine: {
          symbol: 'none',
          data: [{ yAxis: SEED_COMPLETION, name: t('chart.seed') }],
          label: { formatter: `${t('chart.seed')} ${SEED_COMPLETION}%`, color: css('--muted') },
          lineStyle: { color: css('--muted'), type: 'dashed' },
        },
      }],
    });
    this.c.online.setOption({
      ...this.base,
      title: { ...this.base.title, text: t('chart.online') },
      tooltip: { trigger: 'axis', valueFormatter: (v) => `${v}%` },
      xAxis: { type: 'time', ...axis },
      yAxis: { type: 'value', min: 0, max: 100, ...axis },
      series: [{ type: 'line', showSymbol: false, data: this.samples, lineStyle: { color: ok }, areaStyle: { color: 'rgba(56,211,159,.15)' } }],
    });
    const calls = this.calls?.by_node || [];
    this.c.calls.setOption({
      ...this.base,
      title: {
        ...this.base.title,
        text: `${t('chart.calls')}${this.calls?.answered_rate != null ? ` ${Math.round(this.calls.answered_rate * 1000) / 10}%` : ''}`,
      },
      tooltip: { trigger: 'axis' },
      xAxis: {
        type: 'category',
        data: calls.map((k) => nodeName(this.org.get(k.node) || { name: k.name })),
        axisLabel: { interval: 0, rotate: calls.length > 6 ? 30 : 0, fontSize: 11 },
        ...axis,
      },
      yAxis: { type: 'value', min: 0, max: 100, ...axis },
      series: [{ type: 'bar', data: calls.map((k) => (k.answered_rate == null ? 0 : Math.round(k.answered_rate * 1000) / 10)), itemStyle: { color: accent } }],
    });
    document.getElementById('charts').dataset.lang = lang;
  }
}

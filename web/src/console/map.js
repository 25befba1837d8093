// The situation map: Jiamusi's county-level outlines, every visible terminal as a dot coloured
// by its status. Redrawn at most once a second however fast presence changes.

import { t, nodeName } from '../lib/i18n.js';
import { css } from '../lib/dom.js';

// Drawn in this order, the last on top: at city scale a village's workers share a few pixels,
// and the common states must not hide the rare ones that call for attention.
const STATUSES = ['offline', 'away', 'busy', 'online', 'in_session', 'in_call'];
// A redraw repaints every point of the wall's canvas (a 3840×2160 software raster on a wall PC
// without a GPU driver): once a second keeps the map current without eating the frames the
// navigator and board need. The navigator follows every delta at once.
const REDRAW_MS = 1000;

export class SituationMap {
  constructor({ el, legend, org, presence, geo }) {
    this.org = org;
    this.presence = presence;
    this.chart = echarts.init(el, null, { renderer: 'canvas' });
    echarts.registerMap('jiamusi', geo);
    this.timer = null;
    this.colors = Object.fromEntries(STATUSES.map((s) => [s, css(`--s-${s}`)]));
        this.terminals = [...org.nodes.values()].filter((n) => n.location);
    this.legend = legend;
    // Terminals picked on the map for a command session (ringed); `onPick` is set for an
    // operator, who may open one.
    this.picked = new Set();
    this.onPick = null;
    this.chart.setOption({
      backgroundColor: 'transparent',
      animation: false,
      tooltip: {
        trigger: 'item',
        formatter: (p) => this.tooltip(p),
        backgroundColor: css('--panel-2'),
        borderColor: css('--line'),
        textStyle: { color: css('--text'), fontSize: 16 },
      },
      geo: {
        map: 'jiamusi',
        roam: true,
        // The city is long and thin: let it fill the panel.
        left: 12,
        right: 12,
        top: 44,
        bottom: 12,
        nameProperty: 'name',
        label: { show: true, color: css('--muted'), fontSize: 14 },
        itemStyle: { areaColor: '#12203a', borderColor: '#2e4a7a', borderWidth: 1 },
        emphasis: { label: { color: css('--text') }, itemStyle: { areaColor: '#1a2f52' } },
        select: { disabled: true },
      },
      // The heat of open orders, under the terminals.
      visualMap: {
        show: false,
        min: 0,
        max: 4,
        seriesIndex: STATUSES.length,
        inRange: { color: ['rgba(255,93,93,0)', 'rgba(255,176,32,.55)', 'rgba(255,93,93,.85)'] },
      },
      series: [...STATUSES.map((s) => ({
        name: s,
        type: 'scatter',
        coordinateSystem: 'geo',
        symbolSize: s === 'offline' ? 3 : s === 'in_call' || s === 'in_session' ? 7 : 4,
        large: true,
        largeThreshold: 2000,
        // Drawn whole every time: progressive drawing restarts at each redraw, and with changes
        // arriving every few hundred milliseconds the last chunks would never be drawn.
        progressive: 0,
        itemStyle: { color: this.colors[s], opacity: s === 'offline' ? 0.5 : 0.95 },
        data: [],
            })), { name: 'orders', type: 'heatmap', coordinateSystem: 'geo', pointSize: 14, blurSize: 18, z: 1, data: [] },
      {
        name: 'picked',
        type: 'scatter',
        coordinateSystem: 'geo',
        symbolSize: 16,
        silent: true,
        z: 5,
        itemStyle: { color: 'transparent', borderColor: css('--accent'), borderWidth: 3 },
        data: [],
      }, {
        // The analysis's hotspots: a ring that pulses, sized by how far over its baseline.
        name: 'hotspots',
        type: 'effectScatter',
        coordinateSystem: 'geo',
        z: 6,
        rippleEffect: { scale: 3, brushType: 'stroke' },
        symbolSize: (v) => Math.min(26, 8 + 3 * Math.log2(Math.max(1, v[2]))),
        itemStyle: { color: css('--danger') },
        data: [],
      }],
    });
    this.chart.on('click', (p) => {
      if (p.componentType === 'series' && STATUSES.includes(p.seriesName)) this.onPick?.(p.data[2]);
    });
    new ResizeObserver(() => this.chart.resize()).observe(el);
    presence.addEventListener('reset', () => this.schedule(0));
    presence.addEventListener('change', () => this.schedule(REDRAW_MS));
    window.addEventListener('langchange', () => {
      this.renderLegend();
      this.draw();
    });
    this.renderLegend();
    this.draw();
  }

  schedule(delay) {
    if (this.timer != null) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.draw();
    }, delay);
  }

  draw() {
    const by = Object.fromEntries(STATUSES.map((s) => [s, []]));
    for (const n of this.terminals) {
      const s = this.presence.status(n.id);
      // A terminal's reported position when it has one, else where its node is.
      const loc = this.presence.endpoints.get(n.id)?.location || n.location;
      by[s].push([loc.lon, loc.lat, n.id]);
    }
        this.counts = Object.fromEntries(STATUSES.map((s) => [s, by[s].length]));
    this.chart.setOption({ series: [...STATUSES.map((s) => ({ data: by[s] })), {}, { data: this.pickedData() }] });
  }

  /// Rings the terminals picked for a session.
  setPicked(ids) {
    this.picked = new Set(ids);
    this.chart.setOption({ series: [...STATUSES.map(() => ({})), {}, { data: this.pickedData() }] });
  }

  pickedData() {
    const data = [];
    for (const id of this.picked) {
      const loc = this.presence.endpoints.get(id)?.location || this.org.get(id)?.location;
      if (loc) data.push([loc.lon, loc.lat, id]);
    }
    return data;
  }

  /// Hotspots found by the analysis ({lat, lon, name, ratio}); none to clear them.
  setHotspots(list) {
    this.hotspots = list.length;
    const data = list.map((h) => ({ name: h.name, value: [h.lon, h.lat, h.ratio] }));
    this.chart.setOption({ series: [...STATUSES.map(() => ({})), {}, {}, { data }] });
  }

  /// Open orders, weighted by urgency: supervised (late) ones glow hottest.
  setOrders(orders) {
    const data = [];
    for (const o of orders) {
      const n = this.org.get(o.node);
      if (!n?.location) continue;
      const w = o.state === 'supervised' ? 3 : o.priority === 'routine' ? 1 : 2;
      data.push([n.location.lon, n.location.lat, w]);
    }
    this.openOrders = data.length;
    this.chart.setOption({ series: [...STATUSES.map(() => ({})), { data }] });
  }

  tooltip(p) {
    if (p.componentType !== 'series' || p.seriesName === 'orders') return p.seriesName === 'orders' ? '' : p.name;
    if (p.seriesName === 'hotspots') return `<b>${escape(p.name)}</b><br>×${p.value[2].toFixed(1)}`;
    const id = p.data[2];
    const n = this.org.get(id);
    if (!n) return id;
    const path = this.org.path(id).slice(1, -1).map(nodeName).join(' › ');
    const e = this.presence.endpoints.get(id);
    const status = t(`status.${this.presence.status(id)}`);
    const text = e?.text ? ` · ${escape(e.text)}` : '';
    const seats = e?.seats?.length ? `<br>${t('seat.seat')}: ${e.seats.map(escape).join(', ')}` : '';
        const pick = this.onPick ? `<br><i>${t(this.picked.has(id) ? 'map.click_unpick' : 'map.click_pick')}</i>` : '';
    return `<b>${escape(nodeName(n))}</b><br>${escape(path)}<br>${status}${text}${seats}${pick}`;
  }

  renderLegend() {
    this.legend.replaceChildren(
      ...STATUSES.slice().reverse().map((s) => {
        const span = document.createElement('span');
        const d = document.createElement('i');
        d.className = 'dot';
        d.dataset.s = s;
        span.append(d, t(`status.${s}`));
        return span;
      }),
    );
  }

  /// Frames the map on a node's terminals.
  frame(id) {
    let [x0, y0, x1, y1] = [Infinity, Infinity, -Infinity, -Infinity];
    for (const n of this.org.subtree(id)) {
      if (!n.location) continue;
      x0 = Math.min(x0, n.location.lon);
      x1 = Math.max(x1, n.location.lon);
      y0 = Math.min(y0, n.location.lat);
      y1 = Math.max(y1, n.location.lat);
    }
    if (!Number.isFinite(x0) || id === this.org.root) {
      this.chart.setOption({ geo: { center: null, zoom: 1 } });
      return;
    }
    const span = Math.max(x1 - x0, (y1 - y0) * 1.5, 0.02);
    // The whole city spans about 5° of longitude at zoom 1.
    const zoom = Math.max(1, Math.min(60, 4.5 / span));
    this.chart.setOption({ geo: { center: [(x0 + x1) / 2, (y0 + y1) / 2], zoom } });
  }
}

function escape(s) {
  return String(s).replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]);
}

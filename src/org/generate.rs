//! Deterministic generation of a city-scale org tree.
//!
//! The Jiamusi preset has the seed's counts exactly (1 / 10 / 106 / 1,206 / 8,529) under the ten
//! real county-level units with their administrative codes; names below county level are
//! synthetic but plausible. The output depends only on the preset and the scale, so the file in
//! `config/org/` can be regenerated and diffed.

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
    townships: usize,
    urban: bool,
}

const CITY: (&str, &str, &str, f64, f64) = ("230800", "佳木斯市", "Jiamusi", 46.80, 130.32);

/// The ten real county-level units; township counts sum to 106.
const COUNTIES: [County; 10] = [
    County {
        code: "230803",
        name: "前进区",
        name_en: "Qianjin District",
        lat: 46.813,
        lon: 130.375,
        townships: 6,
        urban: true,
    },
    County {
        code: "230804",
        name: "向阳区",
        name_en: "Xiangyang District",
        lat: 46.808,
        lon: 130.345,
        townships: 7,
        urban: true,
    },
    County {
        code: "230805",
        name: "东风区",
        name_en: "Dongfeng District",
        lat: 46.822,
        lon: 130.404,
        townships: 7,
        urban: true,
    },
    County {
        code: "230811",
        name: "郊区",
        name_en: "Jiaoqu District",
        lat: 46.790,
        lon: 130.300,
        townships: 13,
        urban: false,
    },
    County {
        code: "230822",
        name: "桦南县",
        name_en: "Huanan County",
        lat: 46.240,
        lon: 130.553,
        townships: 12,
        urban: false,
    },
    County {
        code: "230826",
        name: "桦川县",
        name_en: "Huachuan County",
        lat: 47.023,
        lon: 130.719,
        townships: 10,
        urban: false,
    },
    County {
        code: "230828",
        name: "汤原县",
        name_en: "Tangyuan County",
        lat: 46.730,
        lon: 129.905,
        townships: 10,
        urban: false,
    },
    County {
        code: "230881",
        name: "同江市",
        name_en: "Tongjiang",
        lat: 47.642,
        lon: 132.510,
        townships: 11,
        urban: false,
    },
    County {
        code: "230882",
        name: "富锦市",
        name_en: "Fujin",
        lat: 47.250,
        lon: 132.037,
        townships: 17,
        urban: false,
    },
    County {
        code: "230883",
        name: "抚远市",
        name_en: "Fuyuan",
        lat: 48.365,
        lon: 134.294,
        townships: 13,
        urban: false,
    },
];

const VILLAGES: usize = 1_206;
const WORKERS: usize = 8_529;

/// Characters for place names, with their pinyin for the English column.
const PLACE: [(&str, &str); 40] = [
    ("新", "Xin"),
    ("长", "Chang"),
    ("安", "An"),
    ("和", "He"),
    ("平", "Ping"),
    ("兴", "Xing"),
    ("东", "Dong"),
    ("西", "Xi"),
    ("南", "Nan"),
    ("北", "Bei"),
    ("红", "Hong"),
    ("光", "Guang"),
    ("胜", "Sheng"),
    ("利", "Li"),
    ("建", "Jian"),
    ("华", "Hua"),
    ("民", "Min"),
    ("丰", "Feng"),
    ("福", "Fu"),
    ("德", "De"),
    ("永", "Yong"),
    ("宁", "Ning"),
    ("太", "Tai"),
    ("阳", "Yang"),
    ("松", "Song"),
    ("江", "Jiang"),
    ("山", "Shan"),
    ("河", "He"),
    ("林", "Lin"),
    ("富", "Fu"),
    ("强", "Qiang"),
    ("盛", "Sheng"),
    ("友", "You"),
    ("谊", "Yi"),
    ("春", "Chun"),
    ("明", "Ming"),
    ("庆", "Qing"),
    ("源", "Yuan"),
    ("星", "Xing"),
    ("桥", "Qiao"),
];
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

/// splitmix64: tiny, fast, and stable across platforms and crate versions.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[(self.next() % items.len() as u64) as usize]
    }
    fn jitter(&mut self, radius: f64) -> f64 {
        (self.unit() * 2.0 - 1.0) * radius
    }
}

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

fn place_name(rng: &mut Rng, taken: &mut std::collections::HashSet<String>) -> (String, String) {
    loop {
        let (a, ae) = rng.pick(&PLACE);
        let (b, be) = rng.pick(&PLACE);
        if a == b {
            continue;
        }
        let zh = format!("{a}{b}");
        if taken.insert(zh.clone()) {
            return (zh, format!("{ae}{}", be.to_lowercase()));
        }
        if taken.len() >= PLACE.len() * (PLACE.len() - 1) {
            // Every two-character name is used under this parent; fall back to a numbered one.
            let n = taken.len();
            taken.insert(format!("{zh}{n}"));
            return (format!("{zh}{n}"), format!("{ae}{} {n}", be.to_lowercase()));
        }
    }
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

/// Writes the preset's tree as org CSV. `scale` multiplies townships, villages and workers
/// (scale 10 is the 10× load-test city: 1 / 10 / 1,060 / 12,060 / 85,290).
pub fn generate_csv(preset: Preset, scale: usize) -> String {
    use super::Tier::*;
    let Preset::Jiamusi = preset;
    let scale = scale.max(1);
    let mut rng = Rng(0x6A69_616D_7573_6931); // "jiamusi1"
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

    let townships: usize = COUNTIES.iter().map(|c| c.townships).sum::<usize>() * scale;
    let village_weights: Vec<f64> = (0..townships).map(|_| 0.6 + rng.unit() * 0.8).collect();
    let villages_per_township = apportion(VILLAGES * scale, &village_weights);
    let total_villages = VILLAGES * scale;
    let worker_weights: Vec<f64> = (0..total_villages).map(|_| 0.5 + rng.unit()).collect();
    let workers_per_village = apportion(WORKERS * scale, &worker_weights);

    let (mut t_index, mut v_index) = (0, 0);
    for c in &COUNTIES {
        w.row(c.code, city, County, c.name, c.name_en, (c.lat, c.lon));
        let (t_radius, v_radius) = if c.urban { (0.03, 0.008) } else { (0.35, 0.06) };
        let mut taken = std::collections::HashSet::new();
        for t in 0..c.townships * scale {
            let tid = format!("{}{:03}", c.code, t + 1);
            let (zh, en) = place_name(&mut rng, &mut taken);
            let (suffix, suffix_en) = match (c.urban, rng.next() % 3) {
                (true, _) => ("街道", "Subdistrict"),
                (false, 0) => ("乡", "Township"),
                (false, _) => ("镇", "Town"),
            };
            let (tlat, tlon) = (
                c.lat + rng.jitter(t_radius),
                c.lon + rng.jitter(t_radius * 1.4),
            );
            w.row(
                &tid,
                c.code,
                Township,
                &format!("{zh}{suffix}"),
                &format!("{en} {suffix_en}"),
                (tlat, tlon),
            );
            let mut vtaken = std::collections::HashSet::new();
            for v in 0..villages_per_township[t_index] {
                let vid = format!("{tid}{:03}", v + 1);
                let (zh, en) = place_name(&mut rng, &mut vtaken);
                let (suffix, suffix_en) = if c.urban || rng.next().is_multiple_of(4) {
                    ("社区", "Community")
                } else {
                    ("村", "Village")
                };
                let (vlat, vlon) = (
                    tlat + rng.jitter(v_radius),
                    tlon + rng.jitter(v_radius * 1.4),
                );
                w.row(
                    &vid,
                    &tid,
                    Village,
                    &format!("{zh}{suffix}"),
                    &format!("{en} {suffix_en}"),
                    (vlat, vlon),
                );
                for g in 0..workers_per_village[v_index] {
                    let gid = format!("{vid}-{:02}", g + 1);
                    let (s, se) = rng.pick(&SURNAMES);
                    let (g1, g1e) = rng.pick(&GIVEN);
                    let (name, name_en) = if rng.next().is_multiple_of(2) {
                        let (g2, g2e) = rng.pick(&GIVEN);
                        (
                            format!("{s}{g1}{g2}"),
                            format!("{se} {g1e}{}", g2e.to_lowercase()),
                        )
                    } else {
                        (format!("{s}{g1}"), format!("{se} {g1e}"))
                    };
                    w.row(
                        &gid,
                        &vid,
                        Worker,
                        &format!("网格员{name}"),
                        &format!("Grid worker {name_en}"),
                        (vlat + rng.jitter(0.004), vlon + rng.jitter(0.006)),
                    );
                }
                v_index += 1;
            }
            t_index += 1;
        }
    }
    debug_assert_eq!(
        w.count,
        [1, 10, 106 * scale, VILLAGES * scale, WORKERS * scale]
    );
    w.out
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn scale_multiplies_the_lower_tiers() {
        let org = super::super::parse_csv(&generate_csv(Preset::Jiamusi, 3)).unwrap();
        assert_eq!(org.tier_counts(), [1, 10, 318, 3_618, 25_587]);
    }
}

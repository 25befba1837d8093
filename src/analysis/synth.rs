//! A generated year of citizen requests with planted truth, so the analysis can be checked and
//! shown: the seed's 132 square-dance sites of which 33 draw noise complaints (and fall by 82 %
//! after an intervention), drains whose flooding has a known mix of causes, and counties that
//! perform at known rates. Everything else is background in the demo's mix of requests, kept away
//! from the sites so that a site's requests are exactly its own process.
//!
//! Pure: the same spec and org give the same year. `history` writes one into the store.

use std::collections::BTreeMap;

use super::geo::{SiteIndex, metres};
use crate::demo::script;
use crate::org::{GeoPoint, NodeIdx, Org, Tier};
use crate::rng::Rng;

pub const DAY_MS: u64 = 86_400_000;

#[derive(Clone, Debug)]
pub struct YearSpec {
    pub seed: u64,
    /// The year's first instant (Unix ms); it lasts `days`.
    pub start: u64,
    pub days: u32,
    /// Requests in all (the seed's year: 320,944).
    pub orders: usize,
    /// Of them, the latest still open at the end (the seed's: 8,293).
    pub in_progress: usize,
    pub squares: usize,
    pub hot_squares: usize,
    /// Day of the year the hot squares' intervention takes effect.
    pub intervention_day: u32,
    /// The hot squares' rate after the intervention, as a share of before (0.18: −82 %).
    pub effect: f64,
    pub drains: usize,
    pub blocked_drains: usize,
    pub backflow_drains: usize,
}

impl YearSpec {
    /// The seed's year: 320,944 requests, 8,293 open at the end, 132 squares with 33 hot.
    pub fn jiamusi(start: u64) -> YearSpec {
        YearSpec {
            seed: 2024,
            start,
            days: 365,
            orders: 320_944,
            in_progress: 8_293,
            squares: 132,
            hot_squares: 33,
            intervention_day: 240,
            effect: 0.18,
            drains: 120,
            blocked_drains: 45,
            backflow_drains: 30,
        }
    }

    /// The same plant with fewer background requests (the sites' own stay as they are).
    pub fn scaled(start: u64, orders: usize) -> YearSpec {
        let full = YearSpec::jiamusi(start);
        YearSpec {
            in_progress: full.in_progress * orders / full.orders,
            orders,
            ..full
        }
    }

    pub fn intervention_at(&self) -> u64 {
        self.start + u64::from(self.intervention_day) * DAY_MS
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct SiteSpec {
    pub kind: &'static str,
    pub name: String,
    pub node: NodeIdx,
    pub point: GeoPoint,
    pub radius_m: f64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Closed {
    pub at: u64,
    pub on_time: bool,
    pub satisfied: bool,
    pub score: u8,
    pub reopened: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub created_at: u64,
    pub source: &'static str,
    pub priority: &'static str,
    pub category: &'static str,
    pub cause: Option<&'static str>,
    pub description: &'static str,
    pub result: &'static str,
    /// A grid worker's node: where the problem is.
    pub node: NodeIdx,
    pub point: GeoPoint,
    /// `None`: still open at the end of the year.
    pub closed: Option<Closed>,
    /// The site whose process made it (the truth the analysis must find).
    pub site: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Truth {
    pub hot_squares: Vec<u32>,
    pub blocked_drains: Vec<u32>,
    pub backflow_drains: Vec<u32>,
    /// Requests by (category, cause).
    pub by_cause: BTreeMap<(&'static str, Option<&'static str>), u64>,
    /// Each county's planted chances: on time, satisfied, reopened.
    pub counties: Vec<(NodeIdx, f64, f64, f64)>,
}

#[derive(Clone, Debug)]
pub struct Year {
    pub spec: YearSpec,
    pub sites: Vec<SiteSpec>,
    /// In order of creation.
    pub requests: Vec<Request>,
    pub truth: Truth,
}

const SQUARE_TEXT: (&str, &str) = (
    "小区广场舞音响太吵，晚上九点后仍未停止",
    "已与组织者沟通，音量降低并于21点前结束",
);
const DRAIN_TEXT: [(&str, &str, &str); 4] = [
    (
        "blocked_drain",
        "雨水篦子堵塞，路口积水没过脚踝",
        "已清掏雨水篦子和支管，积水排除",
    ),
    (
        "manhole_backflow",
        "雨后检查井往外冒水，污水漫到人行道",
        "已联系排水公司疏通主管，井口不再反水",
    ),
    (
        "urban_waterlogging",
        "低洼路段积水严重，车辆无法通行",
        "已调泵车抽排，设置警示标志",
    ),
    (
        "levee_collapse",
        "河堤一段垮塌，附近农田进水",
        "已组织抢修加固堤段，并安排巡查",
    ),
];

/// Poisson draws for the small means of one site's day (Knuth's method).
fn poisson(rng: &mut Rng, lambda: f64) -> u32 {
    let limit = (-lambda).exp();
    let (mut k, mut p) = (0, 1.0);
    loop {
        p *= rng.unit();
        if p <= limit {
            return k;
        }
        k += 1;
    }
}

/// A point `up_to` metres or less from `p`, uniform over the disc.
fn near(rng: &mut Rng, p: GeoPoint, up_to: f64) -> GeoPoint {
    let r = up_to * rng.unit().sqrt();
    let a = rng.unit() * std::f64::consts::TAU;
    GeoPoint {
        lat: p.lat + r * a.sin() / 110_574.0,
        lon: p.lon + r * a.cos() / (111_320.0 * p.lat.to_radians().cos()),
    }
}

/// A time on `day` of the year between `from_h` and `to_h` o'clock, China Standard Time.
fn at_hour(rng: &mut Rng, spec: &YearSpec, day: u32, from_h: f64, to_h: f64) -> u64 {
    let midnight_cst = spec.start + u64::from(day) * DAY_MS;
    let h = from_h + (to_h - from_h) * rng.unit();
    midnight_cst + (h * 3_600_000.0) as u64
}

/// Whether `category` is raised on `day` of a year starting in January: heating in the heating
/// season (mid-October to mid-April), waterlogging in the rains (June to September).
fn in_season(category: &str, day: u32) -> bool {
    match category {
        "heating" => !(105..288).contains(&day),
        "waterlogging" => (151..273).contains(&day),
        _ => true,
    }
}

/// The year. `causes(category)` lists the causes the hub's taxonomy names for a category; the
/// plant needs noise's `square_dance` and waterlogging's four.
pub fn generate(org: &Org, spec: &YearSpec, causes: &dyn Fn(&str) -> Vec<&'static str>) -> Year {
    let mut rng = Rng::new(spec.seed);
    let villages: Vec<NodeIdx> = org
        .nodes()
        .filter(|(_, n)| n.tier == Tier::Village && n.location.is_some())
        .map(|(i, _)| i)
        .collect();
    let workers_of = |v: NodeIdx| -> Vec<NodeIdx> {
        org.children(v)
            .iter()
            .copied()
            .filter(|&w| org.tier(w) == Tier::Worker && org.node(w).location.is_some())
            .collect()
    };
    // Sites: a few hundred metres from a village's centre, never within 600 m of another, so
    // no request can be near two.
    let mut sites: Vec<SiteSpec> = Vec::new();
    let place_site = |rng: &mut Rng, kind: &'static str, n: usize, sites: &mut Vec<SiteSpec>| {
        let mut made = 0;
        let mut tries = 0;
        while made < n && tries < 100_000 {
            tries += 1;
            let v = villages[rng.below(villages.len())];
            let Some(w) = workers_of(v).first().copied() else {
                continue;
            };
            let centre = org.node(v).location.expect("filtered");
            let p = near(rng, centre, 400.0);
            if sites.iter().any(|s| metres(s.point, p) < 600.0) {
                continue;
            }
            made += 1;
            let name = match kind {
                "square" => format!("{}文化广场{}号", org.node(v).name, made),
                _ => format!("{}排水口{}号", org.node(v).name, made),
            };
            sites.push(SiteSpec {
                kind,
                name,
                node: w,
                point: p,
                radius_m: 150.0,
            });
        }
    };
    place_site(&mut rng, "square", spec.squares, &mut sites);
    place_site(&mut rng, "drain", spec.drains, &mut sites);
    let mut truth = Truth::default();
    let squares: Vec<u32> = (0..spec.squares as u32).collect();
    let drains: Vec<u32> = (spec.squares as u32..(spec.squares + spec.drains) as u32).collect();
    // Which squares are hot, which drains of which kind: a shuffle of each.
    let mut shuffled = squares.clone();
    for i in (1..shuffled.len()).rev() {
        shuffled.swap(i, rng.below(i + 1));
    }
    truth.hot_squares = shuffled[..spec.hot_squares].to_vec();
    truth.hot_squares.sort_unstable();
    let mut shuffled = drains.clone();
    for i in (1..shuffled.len()).rev() {
        shuffled.swap(i, rng.below(i + 1));
    }
    truth.blocked_drains = shuffled[..spec.blocked_drains].to_vec();
    truth.backflow_drains =
        shuffled[spec.blocked_drains..spec.blocked_drains + spec.backflow_drains].to_vec();
    truth.blocked_drains.sort_unstable();
    truth.backflow_drains.sort_unstable();

    let mut requests: Vec<Request> = Vec::with_capacity(spec.orders);
    let request =
        |created_at, category, cause, text: (&'static str, &'static str), node, point, site| {
            Request {
                created_at,
                source: "hotline_12345",
                priority: "routine",
                category,
                cause,
                description: text.0,
                result: text.1,
                node,
                point,
                closed: None,
                site,
            }
        };
    // The squares: evening complaints, the hot ones many, until the intervention cuts them.
    for &s in &squares {
        let hot = truth.hot_squares.binary_search(&s).is_ok();
        let per_day = if hot {
            0.22 + 0.13 * rng.unit()
        } else {
            0.008 + 0.012 * rng.unit()
        };
        let site = sites[s as usize].clone();
        for day in 0..spec.days {
            let rate = if hot && day >= spec.intervention_day {
                per_day * spec.effect
            } else {
                per_day
            };
            for _ in 0..poisson(&mut rng, rate) {
                let t = at_hour(&mut rng, spec, day, 18.5, 22.5);
                let p = near(&mut rng, site.point, 80.0);
                requests.push(request(
                    t,
                    "noise",
                    Some("square_dance"),
                    SQUARE_TEXT,
                    site.node,
                    p,
                    Some(s),
                ));
            }
        }
    }
    // The drains, in the rains: each kind with its own mix of causes.
    for &s in &drains {
        let mix: [f64; 4] = if truth.blocked_drains.binary_search(&s).is_ok() {
            [0.8, 0.0, 0.2, 0.0]
        } else if truth.backflow_drains.binary_search(&s).is_ok() {
            [0.0, 0.75, 0.25, 0.0]
        } else {
            [0.15, 0.15, 0.6, 0.1]
        };
        let site = sites[s as usize].clone();
        let per_day = 0.12 + 0.1 * rng.unit();
        for day in 0..spec.days {
            if !in_season("waterlogging", day) {
                continue;
            }
            for _ in 0..poisson(&mut rng, per_day) {
                let mut x = rng.unit();
                let mut k = 0;
                while k < 3 && x >= mix[k] {
                    x -= mix[k];
                    k += 1;
                }
                let (cause, d, r) = DRAIN_TEXT[k];
                let t = at_hour(&mut rng, spec, day, 6.0, 23.0);
                let p = near(&mut rng, site.point, 100.0);
                requests.push(request(
                    t,
                    "waterlogging",
                    Some(cause),
                    (d, r),
                    site.node,
                    p,
                    Some(s),
                ));
            }
        }
    }
    // Background: the demo's mix of requests over every grid worker, away from every site.
    let index = SiteIndex::new(sites.iter().map(|s| (s.point, s.radius_m)));
    let workers: Vec<NodeIdx> = org
        .nodes()
        .filter(|(_, n)| n.tier == Tier::Worker && n.location.is_some())
        .map(|(i, _)| i)
        .collect();
    let planted = requests.len();
    for _ in planted..spec.orders.max(planted) {
        let r = script::request(&mut rng);
        let mut day = rng.below(spec.days as usize) as u32;
        while !in_season(r.category, day) {
            day = rng.below(spec.days as usize) as u32;
        }
        let t = at_hour(&mut rng, spec, day, 7.0, 22.0);
        let (node, point) = loop {
            let w = workers[rng.below(workers.len())];
            let p = near(&mut rng, org.node(w).location.expect("filtered"), 300.0);
            if !index.near_any(p, 300.0) {
                break (w, p);
            }
        };
        let list = causes(r.category);
        let cause = (!list.is_empty() && rng.unit() < 0.6).then(|| list[rng.below(list.len())]);
        requests.push(Request {
            source: r.source,
            priority: r.priority,
            ..request(
                t,
                r.category,
                cause,
                (r.description, r.result),
                node,
                point,
                None,
            )
        });
    }
    requests.sort_by_key(|r| r.created_at);
    // Outcomes: each county at its own planted chances; the latest requests still open.
    let counties: Vec<NodeIdx> = org.children(org.root()).to_vec();
    for (k, &c) in counties.iter().enumerate() {
        let k = k as f64;
        truth
            .counties
            .push((c, 0.80 + 0.015 * k, 0.95 - 0.01 * k, 0.004 + 0.002 * k));
    }
    let open_from = requests.len().saturating_sub(spec.in_progress);
    for (i, r) in requests.iter_mut().enumerate() {
        *truth.by_cause.entry((r.category, r.cause)).or_default() += 1;
        if i >= open_from {
            continue;
        }
        let county = org
            .child_toward(org.root(), r.node)
            .expect("every worker is in a county");
        let &(_, on_time, satisfied, reopened) = truth
            .counties
            .iter()
            .find(|c| c.0 == county)
            .expect("listed");
        let on_time = rng.unit() < on_time;
        let satisfied = rng.unit() < satisfied;
        let hours = if on_time {
            2.0 + 60.0 * rng.unit()
        } else {
            75.0 + 48.0 * rng.unit()
        };
        r.closed = Some(Closed {
            at: r.created_at + (hours * 3_600_000.0) as u64,
            on_time,
            satisfied,
            score: if satisfied {
                4 + rng.below(2) as u8
            } else {
                1 + rng.below(3) as u8
            },
            reopened: rng.unit() < reopened,
        });
    }
    Year {
        spec: spec.clone(),
        sites,
        requests,
        truth,
    }
}

/// The year's requests as the analysis reads them back from the store, ids in creation order
/// from 1, and its sites as the registry holds them (ids from 1).
pub fn facts(
    year: &Year,
    categories: &mut super::core::Names,
    causes: &mut super::core::Names,
) -> (Vec<super::core::Fact>, Vec<super::core::Site>) {
    let facts = year
        .requests
        .iter()
        .enumerate()
        .map(|(i, r)| super::core::Fact {
            id: i as u64 + 1,
            created_at: r.created_at,
            category: categories.intern(r.category),
            cause: r.cause.map(|c| causes.intern(c)),
            node: r.node,
            point: Some(r.point),
            closed: r.closed.is_some(),
            on_time: r.closed.is_some_and(|c| c.on_time),
            satisfied: r.closed.map(|c| c.satisfied),
            reopened: r.closed.is_some_and(|c| c.reopened),
        })
        .collect();
    let sites = year
        .sites
        .iter()
        .enumerate()
        .map(|(i, s)| super::core::Site {
            id: i as u64 + 1,
            kind: s.kind.to_string(),
            name: s.name.clone(),
            node: s.node,
            point: s.point,
            radius_m: s.radius_m,
        })
        .collect();
    (facts, sites)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_year_is_reproducible_and_holds_its_plant() {
        let org = crate::org::parse_csv(&crate::org::generate_csv(crate::org::Preset::Jiamusi, 1))
            .unwrap();
        let spec = YearSpec::scaled(1_704_038_400_000, 30_000);
        let causes = crate::analysis::history::taxonomy(&crate::config::Config::default());
        let a = generate(&org, &spec, &causes);
        let b = generate(&org, &spec, &causes);
        assert_eq!(a.requests, b.requests);
        assert_eq!(a.requests.len(), 30_000);
        assert_eq!(a.sites.len(), 252);
        assert_eq!(a.truth.hot_squares.len(), 33);
        let open = a.requests.iter().filter(|r| r.closed.is_none()).count();
        assert_eq!(open, spec.in_progress);
        assert_eq!(a.truth.by_cause.values().sum::<u64>(), 30_000);
        // Sites are apart; background requests keep away from them.
        for (i, s) in a.sites.iter().enumerate() {
            for t in &a.sites[i + 1..] {
                assert!(metres(s.point, t.point) >= 600.0);
            }
        }
        for r in &a.requests {
            let d = a
                .sites
                .iter()
                .map(|s| metres(s.point, r.point))
                .fold(f64::MAX, f64::min);
            match r.site {
                Some(s) => assert!(metres(a.sites[s as usize].point, r.point) <= 100.5),
                None => assert!(d > 450.0, "{d}"),
            }
            assert!(spec.start <= r.created_at && r.created_at < spec.start + 365 * DAY_MS);
        }
        // A hot square draws complaints every few days before, far fewer after.
        let hot = a.truth.hot_squares[0];
        let at = spec.intervention_at();
        let before = a
            .requests
            .iter()
            .filter(|r| r.site == Some(hot) && r.created_at < at)
            .count();
        assert!(before > 30, "{before}");
    }
}

//! The analysis on a generated year with planted truth, without a store: the numbers the REST
//! routes serve come from these functions.

use super::core::*;
use super::synth::{self, DAY_MS, YearSpec};
use crate::org::Org;

fn org() -> Org {
    crate::org::parse_csv(&crate::org::generate_csv(crate::org::Preset::Jiamusi, 1)).unwrap()
}

struct Fixture {
    org: Org,
    year: synth::Year,
    facts: Vec<Fact>,
    sites: Vec<Site>,
    cats: Names,
    causes: Names,
}

fn fixture(orders: usize) -> Fixture {
    let org = org();
    // 2024-01-01 00:00 CST.
    let spec = YearSpec::scaled(1_704_038_400_000, orders);
    let taxonomy = super::history::taxonomy(&crate::config::Config::default());
    let year = synth::generate(&org, &spec, &taxonomy);
    let (mut cats, mut cs) = (Names::default(), Names::default());
    let (facts, sites) = synth::facts(&year, &mut cats, &mut cs);
    Fixture {
        org,
        year,
        facts,
        sites,
        cats,
        causes: cs,
    }
}

fn of_category(f: &Fixture, c: &str) -> Vec<Fact> {
    let c = f.cats.get(c).unwrap();
    f.facts
        .iter()
        .filter(|x| x.category == c)
        .cloned()
        .collect()
}

#[test]
fn the_planted_noise_hotspots_are_found_with_precision_and_recall_over_095() {
    let f = fixture(60_000);
    let noise = of_category(&f, "noise");
    let squares: Vec<Site> = f
        .sites
        .iter()
        .filter(|s| s.kind == "square")
        .cloned()
        .collect();
    let spec = &f.year.spec;
    // Before the intervention, as the center read it.
    let q = HotspotQuery {
        window: Window {
            from: spec.start,
            to: spec.intervention_at(),
        },
        unit: Unit::Sites,
        baseline: Baseline::Peers,
        fdr: 0.01,
        min_count: 5,
        evidence: 20,
        data_from: spec.start,
    };
    let h = hotspots(&f.org, f.org.root(), &noise, &squares, &q);
    assert_eq!(h.tested, 132);
    let found: Vec<u32> = h
        .hotspots
        .iter()
        .map(|x| match x.place {
            Place::Site(i) => i,
            Place::Node(_) => unreachable!(),
        })
        .collect();
    let truth = &f.year.truth.hot_squares;
    let hits = found.iter().filter(|s| truth.contains(s)).count() as f64;
    let (precision, recall) = (hits / found.len() as f64, hits / truth.len() as f64);
    println!(
        "noise hotspots: {} found, precision {precision:.3}, recall {recall:.3}",
        found.len()
    );
    assert!(
        precision >= 0.95 && recall >= 0.95,
        "precision {precision}, recall {recall}"
    );
    // Evidence is the site's own requests, newest first.
    let top = &h.hotspots[0];
    assert_eq!(top.evidence.len(), 20);
    let Place::Site(s) = top.place else {
        unreachable!()
    };
    let site_id = |id: u64| f.year.requests[id as usize - 1].site;
    assert!(top.evidence.iter().all(|&id| site_id(id) == Some(s)));
    assert!(top.evidence.windows(2).all(|w| w[0] > w[1]));
    assert!(top.q_value <= 0.01 && top.ratio > 3.0);
}

#[test]
fn a_planted_82_percent_fall_is_measured_within_its_interval() {
    let f = fixture(60_000);
    let noise = of_category(&f, "noise");
    let hot: Vec<Site> = f
        .year
        .truth
        .hot_squares
        .iter()
        .map(|&i| f.sites[i as usize].clone())
        .collect();
    let at = match_sites(&noise, &hot);
    let times: Vec<u64> = noise
        .iter()
        .zip(&at)
        .filter(|(_, s)| s.is_some())
        .map(|(x, _)| x.created_at)
        .collect();
    let spec = &f.year.spec;
    let e = effect(
        &times,
        &EffectQuery {
            at: spec.intervention_at(),
            before_ms: 120 * DAY_MS,
            after_ms: 120 * DAY_MS,
            settle_ms: 0,
            now: spec.start + 365 * DAY_MS,
            data_from: spec.start,
            level: 0.95,
            bucket_ms: 7 * DAY_MS,
        },
    );
    let (change, low, high) = e.change.unwrap();
    println!(
        "before {} after {}: {:+.1} % (95 % CI {:+.1} to {:+.1} %)",
        e.before_count,
        e.after_count,
        change * 100.0,
        low * 100.0,
        high * 100.0
    );
    assert!(low <= -0.82 && -0.82 <= high, "{low} {high}");
    assert!(
        high - low < 0.1,
        "a year of 33 sites measures it within a few points"
    );
    assert!(e.note.is_none());
    assert_eq!(
        e.series.iter().map(|s| s.1).sum::<u64>(),
        e.before_count + e.after_count
    );
    // Asked for more before than is stored: the rate is over the days that are, and it says so.
    let long = effect(
        &times,
        &EffectQuery {
            at: spec.intervention_at(),
            before_ms: 300 * DAY_MS,
            after_ms: 120 * DAY_MS,
            settle_ms: 0,
            now: spec.start + 365 * DAY_MS,
            data_from: spec.start,
            level: 0.95,
            bucket_ms: 7 * DAY_MS,
        },
    );
    assert_eq!(long.before.from, spec.start);
    assert!(
        long.note
            .as_deref()
            .unwrap()
            .contains("cut at the first stored request")
    );
    let (c, lo, hi) = long.change.unwrap();
    assert!(lo <= -0.82 && -0.82 <= hi, "{c} {lo} {hi}");
}

#[test]
fn cause_counts_match_the_plant_exactly() {
    let f = fixture(60_000);
    let all = Window {
        from: f.year.spec.start,
        to: f.year.spec.start + 365 * DAY_MS,
    };
    for category in ["noise", "waterlogging", "heating", "other"] {
        let c = causes(&of_category(&f, category), all);
        let want = |cause: Option<&str>| {
            f.year
                .truth
                .by_cause
                .iter()
                .filter(|((cat, c), _)| *cat == category && c.as_deref() == cause)
                .map(|(_, n)| *n)
                .sum::<u64>()
        };
        assert_eq!(c.untagged, want(None), "{category}");
        for (cause, n) in &c.by_cause {
            assert_eq!(
                *n,
                want(Some(f.causes.name(*cause))),
                "{category} {}",
                f.causes.name(*cause)
            );
        }
        let planted: u64 = f
            .year
            .truth
            .by_cause
            .iter()
            .filter(|((cat, _), _)| *cat == category)
            .map(|(_, n)| n)
            .sum();
        assert_eq!(c.total, planted);
    }
}

#[test]
fn drains_like_a_blocked_one_are_the_other_blocked_ones() {
    let f = fixture(60_000);
    let water = of_category(&f, "waterlogging");
    let all = Window {
        from: f.year.spec.start,
        to: f.year.spec.start + 365 * DAY_MS,
    };
    let blocked = &f.year.truth.blocked_drains;
    let s = similar_sites(&water, &f.sites, all, blocked[0], 5, 0.9);
    let found: Vec<u32> = s.similar.iter().map(|x| x.site).collect();
    let hits = found.iter().filter(|x| blocked.contains(x)).count() as f64;
    let precision = hits / found.len() as f64;
    let recall = hits / (blocked.len() - 1) as f64;
    println!(
        "drains like a blocked one: {} found, precision {precision:.3}, recall {recall:.3}",
        found.len()
    );
    assert!(
        precision >= 0.95 && recall >= 0.95,
        "precision {precision}, recall {recall}"
    );
    assert!(
        s.similar
            .windows(2)
            .all(|w| w[0].similarity >= w[1].similarity)
    );
}

#[test]
fn counties_perform_at_their_planted_rates() {
    let f = fixture(60_000);
    let all = Window {
        from: f.year.spec.start,
        to: f.year.spec.start + 365 * DAY_MS,
    };
    let p = performance(
        &f.org,
        f.org.root(),
        &f.facts,
        all,
        Group::Children,
        Period::Month,
    );
    assert_eq!(p.rows.len(), 10);
    assert_eq!(p.total.received, 60_000);
    assert_eq!(p.total.closed, 60_000 - f.year.spec.in_progress as u64);
    assert_eq!(p.trend.len(), 12, "a year of months");
    assert_eq!(p.trend.iter().map(|t| t.1.received).sum::<u64>(), 60_000);
    for row in &p.rows {
        let GroupKey::Node(c) = row.key else {
            unreachable!()
        };
        let &(_, on_time, satisfied, _) = f.year.truth.counties.iter().find(|x| x.0 == c).unwrap();
        // Exact against the rows themselves; near the planted chance by sampling.
        let mine: Vec<&Fact> = f
            .facts
            .iter()
            .filter(|x| f.org.contains(c, x.node))
            .collect();
        assert_eq!(row.now.received, mine.len() as u64);
        assert_eq!(
            row.now.on_time,
            mine.iter().filter(|x| x.closed && x.on_time).count() as u64
        );
        assert!((row.now.on_time_rate().unwrap() - on_time).abs() < 0.03);
        assert!((row.now.satisfaction().unwrap() - satisfied).abs() < 0.03);
        assert!(row.top.len() <= 3 && !row.top.is_empty());
    }
}

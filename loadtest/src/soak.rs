//! `loadtest soak`: a realistic mix — the city's own rates scaled up by a factor — held for a
//! long time, watching the hub's memory and the latencies for drift.
//!
//! The city's rates (Jiamusi, docs/benchmarks.md): 320,944 requests a year, each an order created
//! at the city center and dispatched a tier down; every terminal changing its status about once
//! every half hour of a working day; a couple of notices an hour. All 9,851 terminals held with
//! heartbeats throughout.

use std::time::Duration;

use serde::Serialize;

use crate::presence::city_and_counties;
use crate::report::{Chart, Report, Series};
use crate::run::{Console, RunCtx, errors, every_notice_once, figure, report, timed_bar, verdict};
use crate::timeline::push_resource_charts;
use crate::timeline::{Sample, Timeline};
use crate::{Percentiles, mono_us};

/// Orders a second in the seed's year.
pub const ORDERS_PER_SEC: f64 = 320_944.0 / (365.0 * 86_400.0);
/// Status changes a second: 9,851 terminals, one change each per 30 minutes.
pub const PRESENCE_PER_SEC: f64 = 9_851.0 / 1_800.0;
/// Notices to every terminal, a second: two an hour.
pub const NOTICES_PER_SEC: f64 = 2.0 / 3_600.0;

#[derive(Clone, Debug)]
pub struct SoakOptions {
    pub terminals: usize,
    pub factor: f64,
    pub duration: Duration,
    /// Excluded from the drift comparison.
    pub warmup: Duration,
    pub sample_every: Duration,
}

#[derive(Debug, Serialize)]
pub struct SoakSummary {
    pub scenario: &'static str,
    pub terminals: u64,
    pub connected: u64,
    pub factor: f64,
    pub duration_s: f64,
    pub orders_created: u64,
    pub notices_sent: u64,
    pub presence_sent: u64,
    /// Hub RSS, median of the samples in the first and the last quarter after warm-up, MiB.
    pub rss_early_mib: f64,
    pub rss_late_mib: f64,
    pub rss_growth_percent: f64,
    /// Presence change → city console p99, early and late quarter.
    pub presence_p99_early_ms: f64,
    pub presence_p99_late_ms: f64,
    pub presence: Percentiles,
    /// Order create + dispatch, each a round trip at the city console.
    pub order_round_trip: Percentiles,
    pub order_p99_early_ms: f64,
    pub order_p99_late_ms: f64,
    /// Notice to the last terminal, ms, per notice.
    pub notice_last_ms: Vec<f64>,
    pub terminals_missing_notices: u64,
    pub duplicates: u64,
    pub errors: u64,
    pub first_errors: Vec<String>,
    pub samples: Vec<Sample>,
}

/// Drift is a late p99 more than 1.5× the early one and more than 2 ms above it (a tail of a
/// few ms moves by that much between minutes on a shared machine).
fn drifted(early: f64, late: f64) -> bool {
    late > early * 1.5 && late - early > 2.0
}

pub async fn run(ctx: &RunCtx, o: &SoakOptions) -> Result<(SoakSummary, Report), String> {
    let n = o.terminals.min(ctx.org.len().saturating_sub(1));
    let sampler = ctx.sampler(o.sample_every);
    let mut fleet = ctx.fleet(ctx.hub_backend(), 0, n, true).await?;
    ctx.connected(&fleet, n as u64, "terminals").await?;
    let (city_watch, counties) = city_and_counties(ctx).await?;
    let mut city = Console::city(ctx).await?;
    let root = ctx.org.id(gridhub::org::NodeIdx(0)).to_string();
    // Orders go to the counties' workers' places, round robin, dispatched to the county.
    let places: Vec<(String, String)> = ctx
        .org
        .nodes()
        .filter(|(_, node)| node.tier == gridhub::org::Tier::Worker)
        .filter_map(|(i, node)| {
            let county = ctx
                .org
                .ancestors(i)
                .find(|a| ctx.org.tier(*a) == gridhub::org::Tier::County)?;
            Some((node.id.to_string(), ctx.org.id(county).to_string()))
        })
        .collect();
    fleet.churn(PRESENCE_PER_SEC * o.factor).await?;
    let t_begin = ctx.t();
    let end = tokio::time::Instant::now() + o.duration;
    let order_every = Duration::from_secs_f64(1.0 / (ORDERS_PER_SEC * o.factor));
    let notice_every = Duration::from_secs_f64(1.0 / (NOTICES_PER_SEC * o.factor));
    let mut next_order = tokio::time::Instant::now();
    let mut next_notice = tokio::time::Instant::now() + notice_every / 2;
    let mut orders = Timeline::new(ctx.start_us, ctx.interval);
    let (mut created, mut notices, mut rng) = (0u64, 0u32, gridhub::rng::Rng::new(ctx.seed));
    let mut notice_last = Vec::new();
    let bar = timed_bar(o.duration.as_secs(), "soak");
    while tokio::time::Instant::now() < end {
        let now = tokio::time::Instant::now();
        if now >= next_notice {
            next_notice += notice_every;
            let want = u64::from(notices + 1) * fleet.connected();
            let t0 = mono_us();
            city.notice(&root, notices, 300).await?;
            notices += 1;
            let done = fleet
                .wait_for(Duration::from_secs(30), |f| f.notices() >= want, |_| {})
                .await;
            notice_last.push(if done {
                fleet.notice_at().saturating_sub(t0) as f64 / 1000.0
            } else {
                f64::INFINITY
            });
        }
        if now >= next_order {
            next_order += order_every;
            let (place, county) = &places[rng.below(places.len())];
            let t0 = mono_us();
            let made = city
                .request(
                    "order.create",
                    &format!(
                        r#"{{"source":"hotline_12345","category":"noise","description":"soak","location":{{"node":"{place}"}},"priority":"routine"}}"#
                    ),
                    Duration::from_secs(30),
                    |_| {},
                )
                .await?;
            let id = made["order"]["id"].as_u64().ok_or("order.create: no id")?;
            city.request(
                "order.dispatch",
                &format!(r#"{{"order":{id},"to":"{county}"}}"#),
                Duration::from_secs(30),
                |_| {},
            )
            .await?;
            let at = mono_us();
            orders.record(at, at - t0);
            created += 1;
        }
        // Pushes to the city's own seat (order feeds) are read and dropped as they come.
        let wait = next_order.min(next_notice).min(end);
        let _ = city
            .push(wait.saturating_duration_since(tokio::time::Instant::now()))
            .await?;
        bar.set_position(o.duration.as_secs() - end.saturating_duration_since(now).as_secs());
    }
    bar.finish_and_clear();
    fleet.churn(0.0).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    city.close().await;
    let r = fleet.finish().await?;
    let presence_tl = city_watch.finish().await?;
    for w in counties {
        w.finish().await?;
    }
    let samples = sampler.stop().await;

    // Quarters of the time after warm-up: the first is "early", the last "late".
    let a = t_begin + o.warmup.as_secs_f64();
    let b = t_begin + o.duration.as_secs_f64();
    let q = (b - a) / 4.0;
    let (early, late) = ((a, a + q), (b - q, b));
    let rss_in = |w: (f64, f64)| {
        let v: Vec<f64> = samples
            .iter()
            .filter(|s| s.t >= w.0 && s.t < w.1)
            .map(|s| s.hub_rss_mib)
            .collect();
        crate::median(&v)
    };
    let (rss_early, rss_late) = (rss_in(early), rss_in(late));
    // NaN for a window with nothing in it: a drift verdict on it is "not tested".
    let p99 = |tl: &Timeline, w: (f64, f64)| crate::p99_ms(&tl.window(w.0, w.1));
    let summary = SoakSummary {
        scenario: "soak",
        terminals: r.terminals,
        connected: r.connected,
        factor: o.factor,
        duration_s: o.duration.as_secs_f64(),
        orders_created: created,
        notices_sent: u64::from(notices),
        presence_sent: r.presence_sent,
        rss_early_mib: rss_early,
        rss_late_mib: rss_late,
        rss_growth_percent: (rss_late / rss_early - 1.0) * 100.0,
        presence_p99_early_ms: p99(&presence_tl, early),
        presence_p99_late_ms: p99(&presence_tl, late),
        presence: Percentiles::of(&presence_tl.window(a, b)),
        order_round_trip: Percentiles::of(&orders.all()),
        order_p99_early_ms: p99(&orders, early),
        order_p99_late_ms: p99(&orders, late),
        notice_last_ms: notice_last,
        terminals_missing_notices: r.terminals_without_exactly(u64::from(notices)),
        duplicates: r.duplicates,
        errors: r.errors,
        first_errors: r.first_errors.clone(),
        samples,
    };
    let rep = soak_report(&summary, ctx, o, &presence_tl, &orders);
    Ok((summary, rep))
}

fn soak_report(
    s: &SoakSummary,
    ctx: &RunCtx,
    o: &SoakOptions,
    presence: &Timeline,
    orders: &Timeline,
) -> Report {
    let mut rep = report(
        "soak",
        format!(
            "{} terminals for {} min at {}× the city's rates: {:.1} status changes/s, an order every {:.0} s, a notice every {:.0} s",
            s.connected,
            o.duration.as_secs() / 60,
            o.factor,
            PRESENCE_PER_SEC * o.factor,
            1.0 / (ORDERS_PER_SEC * o.factor),
            1.0 / (NOTICES_PER_SEC * o.factor)
        ),
    );
    rep.verdicts.push(verdict(
        "hub memory, last quarter against the first after warm-up",
        "growth ≤ 5 %",
        format!(
            "{:.1} → {:.1} MiB ({:+.1} %)",
            s.rss_early_mib, s.rss_late_mib, s.rss_growth_percent
        ),
        Some(s.rss_growth_percent <= 5.0),
    ));
    for (what, early, late) in [
        (
            "presence → city console",
            s.presence_p99_early_ms,
            s.presence_p99_late_ms,
        ),
        (
            "order create + dispatch",
            s.order_p99_early_ms,
            s.order_p99_late_ms,
        ),
    ] {
        rep.verdicts.push(verdict(
            &format!("{what} p99, last quarter against the first"),
            "no drift (≤ 1.5× or ≤ 2 ms more)",
            format!("{early:.2} → {late:.2} ms"),
            (early.is_finite() && late.is_finite()).then(|| !drifted(early, late)),
        ));
    }
    let mut once = every_notice_once(
        s.terminals_missing_notices,
        s.notices_sent,
        s.duplicates,
        s.connected == s.terminals,
    );
    if s.notices_sent == 0 {
        once.met = None;
        once.measured = "not tested: no notice was due in the run".into();
    }
    rep.verdicts.push(once);
    rep.figures.push(figure(
        "presence → city console p50 / p99 / max",
        format!(
            "{:.2} / {:.2} / {:.2} ms ({} changes)",
            s.presence.p50_ms, s.presence.p99_ms, s.presence.max_ms, s.presence.count
        ),
    ));
    rep.figures.push(figure(
        "order create + dispatch p50 / p99",
        format!(
            "{:.2} / {:.2} ms ({} orders)",
            s.order_round_trip.p50_ms, s.order_round_trip.p99_ms, s.orders_created
        ),
    ));
    rep.figures.push(figure(
        "notice to the last terminal, each",
        s.notice_last_ms
            .iter()
            .map(|v| format!("{v:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
            + " ms",
    ));
    rep.figures.push(figure("seed", ctx.seed));
    errors(&mut rep, s.errors, &s.first_errors);
    rep.charts.push(Chart {
        title: "Presence change → city console, by interval".into(),
        x_label: "seconds since start".into(),
        y_label: "ms".into(),
        series: presence
            .percentile_series("presence")
            .into_iter()
            .take(2)
            .collect(),
    });
    rep.charts.push(Chart {
        title: "Order create + dispatch round trip, by minute".into(),
        x_label: "seconds since start".into(),
        y_label: "ms".into(),
        series: orders
            .percentile_series("order")
            .into_iter()
            .take(2)
            .collect(),
    });
    rep.charts.push(Chart {
        title: "Notice to the last terminal".into(),
        x_label: "notice".into(),
        y_label: "ms".into(),
        series: vec![Series {
            name: "to the last terminal".into(),
            points: s
                .notice_last_ms
                .iter()
                .enumerate()
                .map(|(i, v)| (i as f64, *v))
                .collect(),
        }],
    });
    push_resource_charts(&mut rep, &s.samples);
    rep
}

#[cfg(test)]
mod tests {
    #[test]
    fn drift_needs_both_a_ratio_and_a_margin() {
        assert!(!super::drifted(1.0, 2.9)); // 2.9× but under 2 ms more
        assert!(!super::drifted(20.0, 29.0)); // 9 ms more but 1.45×
        assert!(super::drifted(10.0, 16.0));
    }

    #[test]
    fn the_city_rates_are_the_seeds() {
        assert!((super::ORDERS_PER_SEC * 86_400.0 - 879.3).abs() < 0.1);
        assert!((super::PRESENCE_PER_SEC - 5.47).abs() < 0.01);
    }
}

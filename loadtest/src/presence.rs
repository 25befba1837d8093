//! `loadtest presence`: terminals change status at a steady rate (stamped with the clock where
//! each change is sent) while consoles — the city's and every county's wall — watch; each
//! change is timed to the delta that shows it.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gridhub::auth::Role;
use gridhub::org::{NodeIdx, Tier};
use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::fleet::stamps;
use crate::report::{Chart, Report};
use crate::run::{Console, RunCtx, figure, report, timed_bar, verdict};
use crate::timeline::push_resource_charts;
use crate::timeline::{Sample, Timeline};
use crate::{Percentiles, mono_us};

/// A console watching a subtree's presence, timing every stamped change it is shown.
pub struct Watch {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), String>>,
    timeline: Arc<Mutex<Timeline>>,
    pub seen: Arc<AtomicU64>,
    /// Changes shown again, already timed: a change should be shown once.
    pub repeated: Arc<AtomicU64>,
}

impl Watch {
    pub async fn start(ctx: &RunCtx, node: &str, role: Role) -> Result<Watch, String> {
        let mut c = Console::open(ctx, node, role, "lt-watch").await?;
        c.request(
            "presence.subscribe",
            &format!(r#"{{"node":"{node}"}}"#),
            Duration::from_secs(30),
            |_| {},
        )
        .await?;
        let stop = CancellationToken::new();
        let st = stop.clone();
        let seen = Arc::new(AtomicU64::new(0));
        let s = Arc::clone(&seen);
        let repeated = Arc::new(AtomicU64::new(0));
        let again = Arc::clone(&repeated);
        let timeline = Arc::new(Mutex::new(Timeline::new(ctx.start_us, ctx.interval)));
        let tl = Arc::clone(&timeline);
        let task = tokio::spawn(async move {
            let mut last = std::collections::HashMap::<String, (u64, String)>::new();
            loop {
                let frame = tokio::select! {
                    _ = st.cancelled() => break,
                    f = c.push(Duration::from_secs(10)) => f?,
                };
                let Some(t) = frame else { continue };
                let at = mono_us();
                if !t.contains(r#""type":"presence.delta""#) {
                    continue;
                }
                let Ok(v) = serde_json::from_str::<Value>(&t) else {
                    continue;
                };
                for e in v["data"]["endpoints"].as_array().into_iter().flatten() {
                    // A terminal going offline (the fleet closing) is listed with the text it
                    // last set: that is no change of its, and is not timed.
                    if e["status"] == "offline" {
                        continue;
                    }
                    let (Some(id), Some(text)) = (e["id"].as_str(), e["text"].as_str()) else {
                        continue;
                    };
                    for (sent, _) in stamps(text.as_bytes()) {
                        // Listed again with the stamp of a change already timed: the same change
                        // shown twice — unless its seats changed (a desk or wall of that node
                        // came or went), which is news of its own.
                        let seats = e["seats"].to_string();
                        match last.insert(id.to_owned(), (sent, seats.clone())) {
                            Some((was, had)) if was == sent => {
                                if had == seats {
                                    again.fetch_add(1, Relaxed);
                                }
                                continue;
                            }
                            _ => {}
                        }
                        lock(&tl).record(at, at.saturating_sub(sent));
                        s.fetch_add(1, Relaxed);
                    }
                }
            }
            c.close().await;
            Ok(())
        });
        Ok(Watch {
            stop,
            task,
            timeline,
            seen,
            repeated,
        })
    }

    /// What the console was shown between `from` and `to` (seconds since the start), so far.
    pub fn window(&self, from: f64, to: f64) -> hdrhistogram::Histogram<u64> {
        lock(&self.timeline).window(from, to)
    }

    pub async fn finish(self) -> Result<Timeline, String> {
        self.stop.cancel();
        self.task.await.map_err(|e| e.to_string())??;
        Ok(lock(&self.timeline).clone())
    }
}

fn lock(t: &Mutex<Timeline>) -> std::sync::MutexGuard<'_, Timeline> {
    // Nothing panics while holding it; a poisoned lock still holds valid figures.
    t.lock().unwrap_or_else(|e| e.into_inner())
}

/// The city's console (an operator seat) and every county's wall (an observer seat).
pub async fn city_and_counties(ctx: &RunCtx) -> Result<(Watch, Vec<Watch>), String> {
    let root = ctx.org.id(NodeIdx(0)).to_string();
    let city = Watch::start(ctx, &root, Role::Operator).await?;
    let mut counties = Vec::new();
    for (_, node) in ctx.org.nodes().filter(|(_, n)| n.tier == Tier::County) {
        counties.push(Watch::start(ctx, &node.id.to_string(), Role::Observer).await?);
    }
    Ok((city, counties))
}

#[derive(Clone, Debug)]
pub struct PresenceOptions {
    pub terminals: usize,
    /// Changes per second over all terminals.
    pub rate: f64,
    pub warmup: Duration,
    pub duration: Duration,
}

#[derive(Debug, Serialize)]
pub struct PresenceSummary {
    pub scenario: &'static str,
    pub terminals: u64,
    pub connected: u64,
    /// Asked for, and achieved (changes sent ÷ seconds of churn).
    pub rate_per_sec: f64,
    pub achieved_per_sec: f64,
    pub changes_sent: u64,
    /// Changes the city console was shown more than once.
    pub city_repeated: u64,
    pub city_received: u64,
    pub city_lost: u64,
    pub city: Percentiles,
    pub counties: Percentiles,
    pub errors: u64,
    pub first_errors: Vec<String>,
    pub samples: Vec<Sample>,
}

pub async fn run(ctx: &RunCtx, o: &PresenceOptions) -> Result<(PresenceSummary, Report), String> {
    let n = o.terminals.min(ctx.org.len().saturating_sub(1));
    let sampler = ctx.sampler(Duration::from_secs(1));
    let mut fleet = ctx.fleet(ctx.hub_backend(), 0, n, false).await?;
    ctx.connected(&fleet, n as u64, "terminals").await?;
    let (city, counties) = city_and_counties(ctx).await?;
    fleet.churn(o.rate).await?;
    let total = (o.warmup + o.duration).as_secs();
    let bar = timed_bar(total, "status churn");
    let from = ctx.t() + o.warmup.as_secs_f64();
    for _ in 0..total {
        tokio::time::sleep(Duration::from_secs(1)).await;
        bar.inc(1);
        bar.set_message(format!("{} shown to the city", city.seen.load(Relaxed)));
    }
    bar.finish_and_clear();
    fleet.churn(0.0).await?;
    // The last deltas: at most one coalescing window, and a margin.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = fleet.finish().await?;
    let city_repeated = city.repeated.load(Relaxed);
    let city_tl = city.finish().await?;
    let mut county_tl = Timeline::new(ctx.start_us, ctx.interval);
    for w in counties {
        county_tl.merge(&w.finish().await?);
    }
    let samples = sampler.stop().await;
    let city_received = city_tl.all().len();
    let summary = PresenceSummary {
        scenario: "presence",
        terminals: r.terminals,
        connected: r.connected,
        rate_per_sec: o.rate,
        achieved_per_sec: r.presence_sent as f64 / total.max(1) as f64,
        city_repeated,
        changes_sent: r.presence_sent,
        city_received,
        city_lost: r.presence_sent.saturating_sub(city_received),
        city: Percentiles::of(&city_tl.window(from, f64::MAX)),
        counties: Percentiles::of(&county_tl.window(from, f64::MAX)),
        errors: r.errors,
        first_errors: r.first_errors.clone(),
        samples,
    };
    let mut rep = report(
        "presence",
        format!(
            "{} terminals changing status {}/s, watched by the city console and {} county walls",
            summary.connected,
            o.rate,
            ctx.org.tier_counts()[1]
        ),
    );
    rep.verdicts.push(verdict(
        "presence change → city console, p99",
        "< 50 ms",
        format!("{:.2} ms", summary.city.p99_ms),
        Some(summary.city.count > 0 && summary.city.p99_ms < 50.0),
    ));
    rep.verdicts.push(verdict(
        "every change shown to the city console, once",
        "none lost or repeated",
        format!(
            "{} of {} shown, {} again",
            city_received, summary.changes_sent, summary.city_repeated
        ),
        Some(
            summary.city_received == summary.changes_sent
                && summary.city_repeated == 0
                && summary.connected == n as u64,
        ),
    ));
    rep.figures.push(figure(
        "city console p50 / p99 / max",
        format!(
            "{:.2} / {:.2} / {:.2} ms",
            summary.city.p50_ms, summary.city.p99_ms, summary.city.max_ms
        ),
    ));
    rep.figures.push(figure(
        "county walls p50 / p99 / max",
        format!(
            "{:.2} / {:.2} / {:.2} ms ({} changes shown)",
            summary.counties.p50_ms,
            summary.counties.p99_ms,
            summary.counties.max_ms,
            summary.counties.count
        ),
    ));
    rep.figures.push(figure(
        "changes per second, asked and achieved",
        format!("{} / {:.1}", o.rate, summary.achieved_per_sec),
    ));
    rep.figures.push(figure(
        "warm-up excluded",
        format!("{} s", o.warmup.as_secs()),
    ));
    rep.charts.push(Chart {
        title: "Presence change → console, by second".into(),
        x_label: "seconds since start".into(),
        y_label: "ms".into(),
        series: city_tl
            .percentile_series("city")
            .into_iter()
            .chain(county_tl.percentile_series("counties").into_iter().take(2))
            .collect(),
    });
    rep.charts.push(Chart {
        title: "Changes shown to the city console per second".into(),
        x_label: "seconds since start".into(),
        y_label: "changes/s".into(),
        series: vec![city_tl.rate_series("city console")],
    });
    push_resource_charts(&mut rep, &summary.samples);
    Ok((summary, rep))
}

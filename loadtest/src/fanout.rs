//! `loadtest fanout`: one notice to every terminal, durable — the time until the last terminal
//! has it, round after round; with `--baseline redis`, the same fleet, client and pinning through
//! a `redis-server` pub/sub started by the harness, and gridhub's figures as ratios to it.

use std::time::Duration;

use serde::Serialize;

use crate::fleet::{Backend, Fleet, FleetReport};
use crate::redis::{Publisher, RedisServer};
use crate::report::{Chart, Report, Series};
use crate::run::{Console, RunCtx, figure, padded, report, timed_bar, verdict};
use crate::timeline::Sample;
use crate::{Percentiles, hubstats, mono_us};

#[derive(Clone, Debug)]
pub struct FanoutOptions {
    pub terminals: usize,
    /// Measured rounds, after `warmup` rounds that are not counted.
    pub rounds: u32,
    pub warmup: u32,
    /// Pause between rounds.
    pub gap: Duration,
    /// Size of the frame each terminal receives.
    pub bytes: usize,
    /// Terminals acknowledge every notice (as the field page does).
    pub ack: bool,
    /// Run the same rounds through a Redis pub/sub first.
    pub baseline_redis: bool,
    /// The CPU to pin the harness's `redis-server` to (the hub's, for a fair comparison).
    pub server_cpu: Option<usize>,
}

/// One side's figures.
#[derive(Debug, Serialize, Clone, Default)]
pub struct Side {
    pub server: String,
    pub terminals: u64,
    pub connected: u64,
    /// Per measured round: ms until the last terminal had it.
    pub last_ms: Vec<f64>,
    pub last_median_ms: f64,
    /// Every copy's time in flight over the measured rounds.
    pub delivery: Percentiles,
    /// Copies expected over the measured rounds, and how many never arrived.
    pub expected: u64,
    pub missing: u64,
    pub duplicates: u64,
    /// Server CPU per delivered copy, µs.
    pub server_cpu_us_per_delivery: f64,
    pub harness_cpu_s: f64,
    pub errors: u64,
    pub first_errors: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct FanoutSummary {
    pub scenario: &'static str,
    pub rounds: u32,
    pub warmup: u32,
    pub bytes: usize,
    pub ack: bool,
    pub hub: Side,
    pub redis: Option<Side>,
    /// gridhub's median time to the last terminal ÷ Redis's.
    pub ratio_last: Option<f64>,
    pub ratio_cpu_per_delivery: Option<f64>,
    pub samples: Vec<Sample>,
}

pub async fn run(ctx: &RunCtx, o: &FanoutOptions) -> Result<(FanoutSummary, Report), String> {
    // Copies of the warm-up rounds are not measured.
    let ctx = &RunCtx {
        measure_from_round: o.warmup,
        ..ctx.clone()
    };
    let n = o.terminals.min(ctx.org.len().saturating_sub(1));
    let sampler = ctx.sampler(Duration::from_secs(1));
    let redis = if o.baseline_redis {
        Some(redis_side(ctx, o, n).await?)
    } else {
        None
    };
    let (hub, hub_timeline) = hub_side(ctx, o, n).await?;
    let samples = sampler.stop().await;
    let ratio_last = redis
        .as_ref()
        .map(|(r, _)| hub.last_median_ms / r.last_median_ms.max(1e-9));
    let ratio_cpu = redis
        .as_ref()
        .map(|(r, _)| hub.server_cpu_us_per_delivery / r.server_cpu_us_per_delivery.max(1e-9));

    let mut rep = report(
        "fanout",
        format!(
            "One durable notice to {} terminals, {} rounds{}{}",
            hub.connected,
            o.rounds,
            if o.ack {
                ", every copy acknowledged"
            } else {
                ""
            },
            if o.baseline_redis {
                ", against Redis pub/sub in the same run"
            } else {
                ""
            }
        ),
    );
    rep.verdicts.push(verdict(
        "every terminal got every notice, once",
        "none missing or repeated",
        format!(
            "{} missing, {} repeated of {}",
            hub.missing, hub.duplicates, hub.expected
        ),
        Some(hub.missing == 0 && hub.duplicates == 0 && hub.connected == n as u64),
    ));
    rep.verdicts.push(match ratio_last {
        Some(r) => verdict(
            "time to the last terminal, gridhub ÷ Redis (medians)",
            "≤ 1.1×",
            format!("{r:.2}×"),
            Some(r <= 1.1),
        ),
        None => verdict(
            "time to the last terminal, gridhub ÷ Redis (medians)",
            "≤ 1.1×",
            "not tested: run with --baseline redis".into(),
            None,
        ),
    });
    let mut last_chart = Chart {
        title: "Time until the last terminal has the message, per round".into(),
        x_label: "round".into(),
        y_label: "ms".into(),
        series: vec![round_series("gridhub", &hub.last_ms, o.warmup)],
    };
    for (name, side) in
        std::iter::once(("gridhub", &hub)).chain(redis.iter().map(|(r, _)| ("Redis", r)))
    {
        rep.figures.push(figure(
            &format!("{name}: to the last terminal, median"),
            format!("{:.1} ms", side.last_median_ms),
        ));
        rep.figures.push(figure(
            &format!("{name}: each copy p50 / p99"),
            format!(
                "{:.1} / {:.1} ms",
                side.delivery.p50_ms, side.delivery.p99_ms
            ),
        ));
        rep.figures.push(figure(
            &format!("{name}: server CPU per delivery"),
            format!("{:.2} µs", side.server_cpu_us_per_delivery),
        ));
    }
    if let Some((r, _)) = &redis {
        last_chart
            .series
            .push(round_series("Redis", &r.last_ms, o.warmup));
        if let Some(c) = ratio_cpu {
            rep.figures.push(figure(
                "server CPU per delivery, gridhub ÷ Redis",
                format!("{c:.2}×"),
            ));
        }
    }
    rep.charts.push(last_chart);
    let mut pct = Chart {
        title: "Each copy's time in flight, by second of arrival".into(),
        x_label: "seconds since start".into(),
        y_label: "ms".into(),
        series: hub_timeline.percentile_series("gridhub"),
    };
    if let Some((_, t)) = &redis {
        pct.series.extend(t.percentile_series("Redis"));
    }
    rep.charts.push(pct);
    crate::timeline::push_resource_charts(&mut rep, &samples);
    crate::run::errors(&mut rep, hub.errors, &hub.first_errors);
    let summary = FanoutSummary {
        scenario: "fanout",
        rounds: o.rounds,
        warmup: o.warmup,
        bytes: o.bytes,
        ack: o.ack,
        hub,
        redis: redis.map(|(r, _)| r),
        ratio_last,
        ratio_cpu_per_delivery: ratio_cpu,
        samples,
    };
    Ok((summary, rep))
}

fn round_series(name: &str, last_ms: &[f64], warmup: u32) -> Series {
    Series {
        name: name.into(),
        points: last_ms
            .iter()
            .enumerate()
            .map(|(i, v)| ((i as u32 + warmup) as f64, *v))
            .collect(),
    }
}

/// Waits until the fleet has `want` stamped copies, at most `within`.
async fn delivered(f: &Fleet, want: u64, within: Duration) -> bool {
    f.wait_for(within, |f| f.notices() >= want, |_| {}).await
}

fn side(
    server: &str,
    r: &FleetReport,
    o: &FanoutOptions,
    cpu_s: f64,
) -> (Side, crate::timeline::Timeline) {
    let measured: Vec<_> = (o.warmup..o.warmup + o.rounds)
        .map(|k| r.rounds.get(&k).copied().unwrap_or_default())
        .collect();
    // A round some terminal never got has no time to the last terminal: infinite, not the
    // time to the last that did.
    let last_ms: Vec<f64> = measured
        .iter()
        .map(|x| {
            if x.received < r.connected {
                f64::INFINITY
            } else {
                x.last_us as f64 / 1000.0
            }
        })
        .collect();
    let received: u64 = measured.iter().map(|x| x.received).sum();
    let expected = r.connected * u64::from(o.rounds);
    let timeline = r.notice_timeline();
    let delivery = Percentiles::of(&r.measured_histogram());
    (
        Side {
            server: server.into(),
            terminals: r.terminals,
            connected: r.connected,
            last_median_ms: crate::median(&last_ms),
            last_ms,
            delivery,
            expected,
            missing: expected.saturating_sub(received),
            duplicates: r.duplicates + received.saturating_sub(expected),
            server_cpu_us_per_delivery: cpu_s * 1e6 / received.max(1) as f64,
            harness_cpu_s: r.cpu_s,
            errors: r.errors,
            first_errors: r.first_errors.clone(),
        },
        timeline,
    )
}

async fn redis_side(
    ctx: &RunCtx,
    o: &FanoutOptions,
    n: usize,
) -> Result<(Side, crate::timeline::Timeline), String> {
    let server = RedisServer::start(o.server_cpu).await?;
    let channel = "gridhub-fanout".to_string();
    let mut fleet = ctx
        .fleet(
            Backend::Redis {
                addr: server.addr,
                channel: channel.clone(),
            },
            0,
            n,
            false,
        )
        .await?;
    ctx.connected(&fleet, n as u64, "Redis subscribers").await?;

    let mut publisher = Publisher::connect(server.addr).await?;
    let bar = timed_bar(u64::from(o.warmup + o.rounds), "Redis rounds");
    let mut cpu0 = 0.0;
    for k in 0..o.warmup + o.rounds {
        if k == o.warmup {
            cpu0 = server.cpu_seconds();
        }
        // The payload is the frame a hub terminal receives, stamped the same way.
        let payload = padded(&crate::fleet::stamp(k), o.bytes);
        let to = publisher.publish(&channel, &payload).await?;
        if to != n as u64 {
            return Err(format!(
                "Redis delivered round {k} to {to} subscribers, not {n}"
            ));
        }
        delivered(
            &fleet,
            fleet.connected() * u64::from(k + 1),
            Duration::from_secs(10),
        )
        .await;
        bar.inc(1);
        tokio::time::sleep(o.gap).await;
    }
    bar.finish_and_clear();
    let cpu = server.cpu_seconds() - cpu0;
    fleet.churn(0.0).await?;
    let r = fleet.finish().await?;
    server.stop().await;
    Ok(side("Redis pub/sub", &r, o, cpu))
}

async fn hub_side(
    ctx: &RunCtx,
    o: &FanoutOptions,
    n: usize,
) -> Result<(Side, crate::timeline::Timeline), String> {
    let fleet = ctx.fleet(ctx.hub_backend(), 0, n, o.ack).await?;
    ctx.connected(&fleet, n as u64, "hub terminals").await?;

    let mut city = Console::city(ctx).await?;
    let root = ctx.org.id(gridhub::org::NodeIdx(0)).to_string();
    let bar = timed_bar(u64::from(o.warmup + o.rounds), "gridhub rounds");
    let mut cpu0 = 0.0;
    for k in 0..o.warmup + o.rounds {
        if k == o.warmup {
            cpu0 = hubstats::scrape(ctx.target.addr).await?.cpu_seconds;
        }
        let t = mono_us();
        city.notice(&root, k, o.bytes).await?;
        let took_reply = mono_us() - t;
        if !delivered(
            &fleet,
            fleet.connected() * u64::from(k + 1),
            Duration::from_secs(30),
        )
        .await
        {
            bar.println(format!(
                "round {k}: {} of {} copies after 30 s",
                fleet.notices(),
                fleet.connected() * u64::from(k + 1)
            ));
        }
        bar.set_message(format!("reply {:.0} ms", took_reply as f64 / 1000.0));
        bar.inc(1);
        tokio::time::sleep(o.gap).await;
    }
    bar.finish_and_clear();
    let cpu = hubstats::scrape(ctx.target.addr).await?.cpu_seconds - cpu0;
    city.close().await;
    let r = fleet.finish().await?;
    Ok(side("gridhub durable notice", &r, o, cpu))
}

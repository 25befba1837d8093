//! `loadtest scale`: steps one node's terminal count up — 5,000, 10,000, 15,000, 19,000 by
//! default — and at each step measures what a terminal costs (RSS, heartbeat CPU) and what the
//! operators feel (presence latency, a notice to everyone), until a target or a limit breaks,
//! and says which. Past 9,851 terminals it needs a larger tree on both sides (`gridhub org
//! generate --scale 2`).

use std::time::Duration;

use serde::Serialize;

use crate::presence::Watch;
use crate::report::{Chart, Report, Series};
use crate::run::{Console, RunCtx, figure, report, timed_bar, verdict};
use crate::timeline::Sample;
use crate::timeline::push_resource_charts;
use crate::{hubstats, mono_us};

#[derive(Clone, Debug)]
pub struct ScaleOptions {
    pub steps: Vec<usize>,
    /// Quiet hold per step: the heartbeat CPU window.
    pub hold: Duration,
    /// Status changes per second, and for how long, for the presence figure at each step.
    pub presence_rate: f64,
    pub presence_for: Duration,
    pub settle: Duration,
    /// Go on through every step after a target breaks (a limit — terminals that could not
    /// connect — still stops the run).
    pub keep_going: bool,
}

#[derive(Debug, Serialize, Clone, Default)]
pub struct Step {
    pub terminals: usize,
    pub connected: u64,
    pub failed: u64,
    /// Seconds to connect this step's new terminals.
    pub connect_s: f64,
    pub hub_rss_mib: f64,
    pub rss_per_terminal_bytes: f64,
    pub heartbeat_cpu_percent: f64,
    pub hub_open_fds: f64,
    pub presence_p99_ms: f64,
    pub presence_changes: u64,
    pub notice_last_ms: f64,
    /// The targets this step broke, by name; empty when all held.
    pub broke: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct ScaleSummary {
    pub scenario: &'static str,
    pub steps: Vec<Step>,
    /// The largest step at which every target held.
    pub held_up_to: usize,
    /// What broke first, and at which step; `None` if every step held. (With `keep_going`
    /// the later steps are measured too, each with what it broke.)
    pub broke_at: Option<(usize, Vec<String>)>,
    pub hub_idle_rss_mib: f64,
    pub errors: u64,
    pub first_errors: Vec<String>,
    pub samples: Vec<Sample>,
}

pub async fn run(ctx: &RunCtx, o: &ScaleOptions) -> Result<(ScaleSummary, Report), String> {
    let available = ctx.org.len().saturating_sub(1);
    if let Some(too_many) = o.steps.iter().find(|s| **s > available) {
        return Err(format!(
            "a step of {too_many} terminals, but the tree has {available} below the city: \
             generate a larger one (gridhub org generate --preset jiamusi --scale 2 --out FILE) \
             and give it to both the hub (GRIDHUB_ORG__FILE) and the harness (--org)"
        ));
    }
    let sampler = ctx.sampler(Duration::from_secs(1));
    tokio::time::sleep(o.settle).await;
    let idle = hubstats::scrape(ctx.target.addr).await?;
    let root = ctx.org.id(gridhub::org::NodeIdx(0)).to_string();
    let mut city = Console::city(ctx).await?;
    let watch = Watch::start(ctx, &root, gridhub::auth::Role::Operator).await?;
    let mut fleet = crate::fleet::Fleet::new(
        ctx.interval,
        std::sync::Arc::clone(&ctx.pids),
        ctx.worker_exe.clone(),
    );
    let mut steps: Vec<Step> = Vec::new();
    let mut broke_at = None;
    let mut prev = 0usize;
    for (round, &count) in (0u32..).zip(&o.steps) {
        let t0 = mono_us();
        ctx.grow(&mut fleet, ctx.hub_backend(), prev, count - prev, false)
            .await?;
        ctx.connected(&fleet, count as u64, &format!("step {count}"))
            .await?;
        let connect_s = mono_us().saturating_sub(t0) as f64 / 1e6;
        prev = count;
        tokio::time::sleep(o.settle).await;
        let at_rest = hubstats::scrape(ctx.target.addr).await?;
        let bar = timed_bar(o.hold.as_secs(), &format!("hold {count}"));
        for _ in 0..o.hold.as_secs() {
            city.idle(Duration::from_secs(1)).await?;
            bar.inc(1);
        }
        bar.finish_and_clear();
        let held = hubstats::scrape(ctx.target.addr).await?;
        let hb_cpu = (held.cpu_seconds - at_rest.cpu_seconds) / o.hold.as_secs_f64() * 100.0;

        // Presence under churn, measured at the city console in this step's window.
        let from = ctx.t();
        let seen0 = watch.seen.load(std::sync::atomic::Ordering::Relaxed);
        fleet.churn(o.presence_rate).await?;
        city.idle(o.presence_for).await?;
        fleet.churn(0.0).await?;
        city.idle(Duration::from_millis(500)).await?;
        let to = ctx.t();
        let seen = watch.seen.load(std::sync::atomic::Ordering::Relaxed) - seen0;

        // One notice to everyone.
        let want = fleet.notices() + fleet.connected();
        let t = mono_us();
        city.notice(&root, round, 300).await?;
        let got = fleet
            .wait_for(Duration::from_secs(30), |f| f.notices() >= want, |_| {})
            .await;
        let notice_last_ms = if got {
            fleet.notice_at().saturating_sub(t) as f64 / 1000.0
        } else {
            f64::INFINITY
        };
        let connected = fleet.connected();
        let mut step = Step {
            terminals: count,
            connected,
            failed: fleet.failed(),
            connect_s,
            hub_rss_mib: at_rest.rss_bytes / 1048576.0,
            rss_per_terminal_bytes: (at_rest.rss_bytes - idle.rss_bytes) / connected.max(1) as f64,
            heartbeat_cpu_percent: hb_cpu,
            hub_open_fds: at_rest.open_fds,
            presence_p99_ms: f64::NAN,
            presence_changes: seen,
            notice_last_ms,
            broke: Vec::new(),
        };
        step.presence_p99_ms = crate::p99_ms(&watch.window(from, to));
        let checks = [
            (
                "every terminal connected",
                step.failed == 0 && connected == count as u64,
            ),
            (
                "RSS ≤ 6 KB per terminal",
                step.rss_per_terminal_bytes <= 6_000.0,
            ),
            ("heartbeat CPU < 5 % of a core", hb_cpu < 5.0),
            ("presence p99 < 50 ms", step.presence_p99_ms < 50.0),
            ("notice to the last terminal < 1 s", notice_last_ms < 1000.0),
        ];
        step.broke = checks
            .iter()
            .filter(|(_, ok)| !ok)
            .map(|(what, _)| (*what).to_string())
            .collect();
        let broke = !step.broke.is_empty();
        let limit = step.failed > 0 || connected < count as u64;
        if broke && broke_at.is_none() {
            broke_at = Some((count, step.broke.clone()));
        }
        steps.push(step);
        if limit || (broke && !o.keep_going) {
            break;
        }
    }
    city.close().await;
    let _ = watch.finish().await?;
    let r = fleet.finish().await?;
    let samples = sampler.stop().await;
    let held_up_to = steps
        .iter()
        .filter(|s| s.broke.is_empty())
        .map(|s| s.terminals)
        .max()
        .unwrap_or(0);
    let summary = ScaleSummary {
        scenario: "scale",
        held_up_to,
        broke_at,
        hub_idle_rss_mib: idle.rss_bytes / 1048576.0,
        errors: r.errors,
        first_errors: r.first_errors.clone(),
        steps,
        samples,
    };
    let rep = scale_report(&summary, o);
    Ok((summary, rep))
}

fn scale_report(s: &ScaleSummary, o: &ScaleOptions) -> Report {
    let mut rep = report(
        "scale",
        format!(
            "One node stepped through {} terminals",
            o.steps
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    let last = o.steps.last().copied().unwrap_or(0);
    rep.verdicts.push(verdict(
        "every target held at every step",
        &format!("up to {last} terminals"),
        match &s.broke_at {
            None => format!("held up to {}", s.held_up_to),
            Some((at, what)) => format!("at {at}: {}", what.join("; ")),
        },
        Some(s.broke_at.is_none() && s.held_up_to == last),
    ));
    for st in &s.steps {
        rep.figures.push(figure(
            &format!("{} terminals", st.terminals),
            format!(
                "connected in {:.1} s; RSS {:.0} MiB ({:.0} B each); heartbeat CPU {:.2} %; presence p99 {:.1} ms ({} changes); notice to the last {:.0} ms{}",
                st.connect_s,
                st.hub_rss_mib,
                st.rss_per_terminal_bytes,
                st.heartbeat_cpu_percent,
                st.presence_p99_ms,
                st.presence_changes,
                st.notice_last_ms,
                if st.broke.is_empty() {
                    String::new()
                } else {
                    format!(" — broke: {}", st.broke.join("; "))
                }
            ),
        ));
    }
    crate::run::errors(&mut rep, s.errors, &s.first_errors);
    let per_step = |name: &str, f: fn(&Step) -> f64| Series {
        name: name.into(),
        points: s
            .steps
            .iter()
            .map(|st| (st.terminals as f64, f(st)))
            .collect(),
    };
    rep.charts.push(Chart {
        title: "Cost per terminal at each step".into(),
        x_label: "terminals".into(),
        y_label: "bytes of RSS per terminal".into(),
        series: vec![per_step("RSS per terminal", |st| st.rss_per_terminal_bytes)],
    });
    rep.charts.push(Chart {
        title: "Latency at each step".into(),
        x_label: "terminals".into(),
        y_label: "ms".into(),
        series: vec![
            per_step("presence p99", |st| st.presence_p99_ms),
            per_step("notice to the last terminal", |st| st.notice_last_ms),
        ],
    });
    rep.charts.push(Chart {
        title: "Heartbeat CPU at each step".into(),
        x_label: "terminals".into(),
        y_label: "% of one core".into(),
        series: vec![per_step("hub, quiet hold", |st| st.heartbeat_cpu_percent)],
    });
    push_resource_charts(&mut rep, &s.samples);
    rep
}

//! `loadtest reconnect-storm`: every terminal drops its connection at once — as after a network
//! blip — and comes straight back, resuming its outbox from the last sequence it has, while the
//! city center sends notices into the storm. Measured: the time until presence is whole again
//! (every terminal resumed, and the city console's count back where it was), and that every
//! terminal has every notice exactly once.

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::Percentiles;
use crate::report::{Chart, Report, Series};
use crate::run::{Console, RunCtx, errors, every_notice_once, figure, report, timed_bar, verdict};
use crate::timeline::Sample;
use crate::timeline::push_resource_charts;

#[derive(Clone, Debug)]
pub struct StormOptions {
    pub terminals: usize,
    pub storms: u32,
    /// Notices sent by the city center right after each storm is called.
    pub notices: u32,
    /// Pause between storms.
    pub gap: Duration,
}

#[derive(Debug, Serialize, Clone)]
pub struct StormRound {
    /// Seconds from the storm until every terminal had resumed its outbox.
    pub all_resumed_s: f64,
    /// Seconds until the city console's on-line count was back to what it was.
    pub console_whole_s: f64,
    /// The lowest on-line count the console saw during the storm.
    pub console_low: u64,
    pub whole_s: f64,
}

#[derive(Debug, Serialize)]
pub struct StormSummary {
    pub scenario: &'static str,
    pub terminals: u64,
    pub connected: u64,
    pub storms: Vec<StormRound>,
    pub whole_median_s: f64,
    pub whole_max_s: f64,
    pub reconnect: Percentiles,
    pub notices_sent: u64,
    /// Terminals that did not end with exactly every notice.
    pub terminals_missing_notices: u64,
    pub duplicates: u64,
    pub errors: u64,
    pub first_errors: Vec<String>,
    pub samples: Vec<Sample>,
}

fn city_online(frame: &str, root: &str) -> Option<u64> {
    let v: Value = serde_json::from_str(frame).ok()?;
    v["data"]["aggregates"]
        .as_array()?
        .iter()
        .find(|a| a["node"] == root)
        .and_then(|a| a["online"].as_u64())
}

pub async fn run(ctx: &RunCtx, o: &StormOptions) -> Result<(StormSummary, Report), String> {
    let n = o.terminals.min(ctx.org.len().saturating_sub(1));
    let sampler = ctx.sampler(Duration::from_millis(500));
    let mut fleet = ctx.fleet(ctx.hub_backend(), 0, n, true).await?;
    ctx.connected(&fleet, n as u64, "terminals").await?;
    let connected = fleet.connected();
    let root = ctx.org.id(gridhub::org::NodeIdx(0)).to_string();
    let mut city = Console::city(ctx).await?;
    let whole = city.city_online(&root).await?;
    // One notice before the storms: every terminal holds it and has acknowledged it.
    let mut sent = 1u64;
    city.notice(&root, 0, 300).await?;
    fleet
        .wait_for(
            Duration::from_secs(30),
            |f| f.notices() >= connected,
            |_| {},
        )
        .await;

    let mut rounds = Vec::new();
    let bar = timed_bar(u64::from(o.storms), "storms");
    for s in 1..=o.storms {
        let at = fleet.storm().await?;
        // The console's view from the storm on, deltas that arrive while a notice is being
        // sent included.
        let mut dip = Dip::new(whole);
        for k in 0..o.notices {
            city.notice_watching(&root, s * 100 + k, 300, |t| dip.see(t, &root))
                .await?;
            sent += 1;
        }
        let want = connected * u64::from(s);
        let end = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut all_back_at = None;
        while tokio::time::Instant::now() < end {
            if let Some(t) = city.push(Duration::from_millis(50)).await? {
                dip.see(&t, &root);
            }
            if fleet.reconnected() >= want {
                let since = *all_back_at.get_or_insert_with(tokio::time::Instant::now);
                // Done when the console is whole again — or, if it never saw a dip, after a
                // second of quiet with everyone back (the hub coalesces deltas every 20 ms).
                if dip.whole_at.is_some()
                    || (!dip.dipped && since.elapsed() > Duration::from_secs(1))
                {
                    break;
                }
            }
        }
        let r = if fleet.reconnected() >= want {
            fleet.reconnected_at().saturating_sub(at) as f64 / 1e6
        } else {
            f64::INFINITY
        };
        let console = match (dip.dipped, dip.whole_at) {
            (_, Some(w)) => w.saturating_sub(at) as f64 / 1e6,
            (true, None) => f64::INFINITY,
            (false, None) => 0.0,
        };
        rounds.push(StormRound {
            all_resumed_s: r,
            console_whole_s: console,
            console_low: dip.low,
            whole_s: r.max(console),
        });
        bar.inc(1);
        tokio::time::sleep(o.gap).await;
    }
    bar.finish_and_clear();
    let want = connected * sent;
    fleet
        .wait_for(Duration::from_secs(30), |f| f.notices() >= want, |_| {})
        .await;
    city.close().await;
    let r = fleet.finish().await?;
    let samples = sampler.stop().await;
    let wholes: Vec<f64> = rounds.iter().map(|r| r.whole_s).collect();
    let whole_median_s = crate::median(&wholes);
    let whole_max_s = wholes.iter().copied().fold(f64::NAN, f64::max);
    let missing = r.terminals_without_exactly(sent);
    let summary = StormSummary {
        scenario: "reconnect-storm",
        terminals: r.terminals,
        connected: r.connected,
        whole_median_s,
        whole_max_s,
        storms: rounds,
        reconnect: Percentiles::of(&r.reconnect_histogram()),
        notices_sent: sent,
        terminals_missing_notices: missing,
        duplicates: r.duplicates,
        errors: r.errors,
        first_errors: r.first_errors.clone(),
        samples,
    };
    let rep = storm_report(&summary, n, o);
    Ok((summary, rep))
}

/// The city console's on-line count through a storm.
pub(crate) struct Dip {
    whole: u64,
    pub(crate) low: u64,
    dipped: bool,
    /// When the count was back to whole after the dip (monotonic µs).
    pub(crate) whole_at: Option<u64>,
}

impl Dip {
    pub(crate) fn new(whole: u64) -> Dip {
        Dip {
            whole,
            low: whole,
            dipped: false,
            whole_at: None,
        }
    }

    pub(crate) fn dipped(&self) -> bool {
        self.dipped
    }

    pub(crate) fn see(&mut self, frame: &str, root: &str) {
        let Some(on) = city_online(frame, root) else {
            return;
        };
        self.low = self.low.min(on);
        if on < self.whole {
            self.dipped = true;
            self.whole_at = None;
        } else if self.dipped && self.whole_at.is_none() {
            self.whole_at = Some(crate::mono_us());
        }
    }
}

fn storm_report(s: &StormSummary, n: usize, o: &StormOptions) -> Report {
    let mut rep = report(
        "reconnect-storm",
        format!(
            "{} terminals drop at once and come back, {} times, {} notices sent into each storm",
            s.connected, o.storms, o.notices
        ),
    );
    rep.verdicts.push(verdict(
        "presence whole again after the storm (worst)",
        "< 5 s",
        format!("{:.2} s (median {:.2} s)", s.whole_max_s, s.whole_median_s),
        Some(s.connected == n as u64 && s.whole_max_s < 5.0),
    ));
    rep.verdicts.push(every_notice_once(
        s.terminals_missing_notices,
        s.notices_sent,
        s.duplicates,
        s.connected == n as u64,
    ));
    rep.figures.push(figure(
        "reconnect (storm called → outbox resumed) p50 / p99 / max",
        format!(
            "{:.0} / {:.0} / {:.0} ms",
            s.reconnect.p50_ms, s.reconnect.p99_ms, s.reconnect.max_ms
        ),
    ));
    for (i, r) in s.storms.iter().enumerate() {
        rep.figures.push(figure(
            &format!("storm {}", i + 1),
            format!(
                "all resumed {:.2} s, console whole {:.2} s (low {})",
                r.all_resumed_s, r.console_whole_s, r.console_low
            ),
        ));
    }
    errors(&mut rep, s.errors, &s.first_errors);
    rep.charts.push(Chart {
        title: "Time until whole again, per storm".into(),
        x_label: "storm".into(),
        y_label: "seconds".into(),
        series: vec![
            Series {
                name: "all resumed".into(),
                points: s
                    .storms
                    .iter()
                    .enumerate()
                    .map(|(i, r)| ((i + 1) as f64, r.all_resumed_s))
                    .collect(),
            },
            Series {
                name: "console whole".into(),
                points: s
                    .storms
                    .iter()
                    .enumerate()
                    .map(|(i, r)| ((i + 1) as f64, r.console_whole_s))
                    .collect(),
            },
        ],
    });
    push_resource_charts(&mut rep, &s.samples);
    rep
}

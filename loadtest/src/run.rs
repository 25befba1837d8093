//! What every fleet scenario shares: the run's options, starting a fleet over worker processes,
//! the progress bar, a console at the city center, and writing the summary and the report.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use gridhub::auth::{Authority, Role, Seat};
use gridhub::org::{NodeIdx, Org};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use crate::fleet::{Backend, Fleet, FleetSpec, slices};
use crate::report::{Figure, Report, Verdict};
use crate::terminal::{Ws, open};
use crate::timeline::Sample;
use crate::{Target, mono_us, why_closed};

/// The options every fleet scenario takes (see `loadtest --help`).
#[derive(Clone, Debug)]
pub struct RunCtx {
    pub target: Target,
    /// The nodes the fleet's terminals spread over, worker by worker (several nodes of one
    /// hub); empty: all on `target`. Consoles stay on `target`.
    pub nodes: Vec<SocketAddr>,
    /// A terminal whose node dies fails over to the others (the failover scenario); otherwise
    /// a lost connection is an error of the run.
    pub failover: bool,
    pub secret: String,
    pub org_path: PathBuf,
    pub org: Arc<Org>,
    /// Worker processes holding the terminals (0: all in this process).
    pub workers: usize,
    /// New connections per second over all workers (0: as fast as `concurrency` allows).
    pub ramp: f64,
    pub concurrency: usize,
    pub heartbeat_ms: Option<u64>,
    pub seed: u64,
    /// The timeline's interval (latency percentiles over time).
    pub interval: Duration,
    /// The run's origin on the monotonic clock.
    pub start_us: u64,
    pub max_seconds: u64,
    /// Stamped rounds before this one are warm-up: not in a fleet's measured histogram.
    pub measure_from_round: u32,
    /// The harness's worker processes, for its CPU and memory.
    pub pids: Arc<Mutex<Vec<u32>>>,
    /// The `loadtest` binary worker processes run (this one, unless a test says otherwise).
    pub worker_exe: PathBuf,
}

impl RunCtx {
    /// Seconds since the run started.
    pub fn t(&self) -> f64 {
        mono_us().saturating_sub(self.start_us) as f64 / 1e6
    }

    /// Samples the hub and the harness every `every` until stopped.
    pub fn sampler(&self, every: Duration) -> crate::timeline::Sampler {
        crate::timeline::Sampler::start(
            self.target.addr,
            self.start_us,
            every,
            Arc::clone(&self.pids),
        )
    }

    pub fn hub_backend(&self) -> Backend {
        Backend::Hub {
            addr: self.target.addr,
            secret: self.secret.clone(),
        }
    }

    /// A fleet of the tree's terminals `first .. first + count` (org order, the city left
    /// out), split over the run's workers.
    pub async fn fleet(
        &self,
        backend: Backend,
        first: usize,
        count: usize,
        ack: bool,
    ) -> Result<Fleet, String> {
        let mut f = Fleet::new(
            self.interval,
            Arc::clone(&self.pids),
            self.worker_exe.clone(),
        );
        self.grow(&mut f, backend, first, count, ack).await?;
        Ok(f)
    }

    /// How many of terminals `first .. first + count` a fleet puts on `node`.
    pub fn terminals_on(&self, node: std::net::SocketAddr, first: usize, count: usize) -> usize {
        slices(first, count, self.workers.max(1))
            .into_iter()
            .enumerate()
            .filter(|(i, _)| self.nodes.get(i % self.nodes.len().max(1)) == Some(&node))
            .map(|(_, (_, c))| c)
            .sum()
    }

    /// Adds terminals `first .. first + count` to a fleet.
    pub async fn grow(
        &self,
        f: &mut Fleet,
        backend: Backend,
        first: usize,
        count: usize,
        ack: bool,
    ) -> Result<(), String> {
        f.grown_at = mono_us();
        let parts = slices(first, count, self.workers.max(1));
        let n = parts.len().max(1) as f64;
        for (i, (first, count)) in parts.into_iter().enumerate() {
            let node = i % self.nodes.len().max(1);
            let backend = match (&backend, self.nodes.get(node)) {
                (Backend::Hub { secret, .. }, Some(addr)) => Backend::Hub {
                    addr: *addr,
                    secret: secret.clone(),
                },
                _ => backend.clone(),
            };
            // In a failover run, a worker of a hub spread over nodes fails over to the others;
            // elsewhere a lost connection stays an error of the run.
            let failover = match backend {
                Backend::Hub { .. } if self.failover && self.nodes.len() > 1 => {
                    (1..self.nodes.len())
                        .map(|d| self.nodes[(node + d) % self.nodes.len()])
                        .collect()
                }
                _ => Vec::new(),
            };
            // Worker processes leave from a loopback address each (127.0.0.2 on), so many
            // connections to a few ports never run out of source ports.
            let source = match &backend {
                Backend::Hub { addr, .. } if self.workers > 0 && addr.ip().is_loopback() => {
                    addr.is_ipv4().then(|| {
                        std::net::IpAddr::V4(std::net::Ipv4Addr::new(
                            127,
                            0,
                            0,
                            2 + (i % 250) as u8,
                        ))
                    })
                }
                _ => None,
            };
            let spec = FleetSpec {
                backend,
                org: self.org_path.clone(),
                first,
                count,
                concurrency: (self.concurrency as f64 / n).ceil() as usize,
                ramp_per_sec: self.ramp / n,
                heartbeat_ms: self.heartbeat_ms,
                ack,
                start_us: self.start_us,
                interval_ms: self.interval.as_millis() as u64,
                stop_after_s: self.max_seconds,
                measure_from_round: self.measure_from_round,
                failover,
                source,
            };
            f.add(spec, self.workers > 0).await?;
        }
        Ok(())
    }

    /// Waits, with a progress bar, until `count` terminals of the fleet have connected (or
    /// failed); returns the seconds from the fleet's last growth to the last connection.
    pub async fn connected(&self, f: &Fleet, count: u64, what: &str) -> Result<f64, String> {
        let bar = bar(count, what);
        let done = f
            .wait_for(
                Duration::from_secs(self.max_seconds),
                |f| f.connected() + f.failed() >= count,
                |f| bar.set_position(f.connected() + f.failed()),
            )
            .await;
        bar.finish_and_clear();
        if !done {
            return Err(format!(
                "{what}: {} of {count} connected, {} failed, when the run gave up{}",
                f.connected(),
                f.failed(),
                if f.alive() {
                    ""
                } else {
                    " (a worker ended early: see its error above)"
                }
            ));
        }
        Ok(f.connected_at().saturating_sub(f.grown_at) as f64 / 1e6)
    }
}

/// A progress bar on standard error (drawn only on a terminal).
pub fn bar(len: u64, what: &str) -> ProgressBar {
    let b = ProgressBar::new(len);
    b.set_style(
        ProgressStyle::with_template("{msg:>24} [{bar:40}] {pos}/{len} {elapsed_precise}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    b.set_message(what.to_owned());
    b
}

/// A bar for a phase of fixed length, in seconds.
pub fn timed_bar(secs: u64, what: &str) -> ProgressBar {
    let b = bar(secs, what);
    b.set_style(
        ProgressStyle::with_template("{msg:>24} [{bar:40}] {pos}/{len} s {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    b
}

/// A center's seat of the harness's own (`lt`): it sends notices and watches presence without
/// displacing a console an operator may have open at the same center.
pub struct Console {
    ws: Ws,
    next: u64,
    /// When this console last sent anything: a console that only watches must still
    /// heartbeat, or the hub closes it (4000).
    last_sent: tokio::time::Instant,
}

impl Console {
    /// `seat` keeps the harness's consoles at one center apart from each other.
    pub async fn open(ctx: &RunCtx, node: &str, role: Role, seat: &str) -> Result<Console, String> {
        let auth = Authority::new(ctx.secret.as_bytes())?;
        let now = gridhub::clock::now_ms() / 1000;
        let seat = Seat::parse(seat)?;
        let token = auth
            .mint_seat(&ctx.org, node, role, seat, 24 * 3600, now)
            .map_err(|e| e.to_string())?;
        Ok(Console {
            ws: open(&ctx.target, &token).await?.ws,
            next: 0,
            last_sent: tokio::time::Instant::now(),
        })
    }

    pub async fn city(ctx: &RunCtx) -> Result<Console, String> {
        let root = ctx.org.id(NodeIdx(0)).to_string();
        Console::open(ctx, &root, Role::Operator, "lt").await
    }

    /// Sends a request and waits for its reply, handing every other frame to `other`.
    pub async fn request(
        &mut self,
        kind: &str,
        data: &str,
        within: Duration,
        mut other: impl FnMut(&str),
    ) -> Result<Value, String> {
        self.next += 1;
        let id = format!("lt{}", self.next);
        self.ws
            .send(Message::text(format!(
                r#"{{"v":1,"id":"{id}","type":"{kind}","data":{data}}}"#
            )))
            .await
            .map_err(|e| format!("{kind}: {e}"))?;
        self.last_sent = tokio::time::Instant::now();
        let re = format!(r#""re":"{id}""#);
        let end = tokio::time::Instant::now() + within;
        loop {
            let m = tokio::time::timeout_at(end, self.ws.next())
                .await
                .map_err(|_| format!("{kind}: no reply within {} s", within.as_secs()))?;
            match m {
                Some(Ok(Message::Text(t))) if t.contains(&re) => {
                    let v: Value = serde_json::from_str(&t).map_err(|e| e.to_string())?;
                    if v["type"] == "error" {
                        if let Some(why) = crate::refused_for_pace(&t) {
                            return Err(why);
                        }
                        return Err(format!("{kind} refused: {}", v["data"]));
                    }
                    return Ok(v["data"].clone());
                }
                Some(Ok(Message::Text(t))) => other(&t),
                Some(Ok(Message::Close(f))) => return Err(why_closed(f.as_ref())),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("{kind}: {e}")),
                None => return Err(why_closed(None)),
            }
        }
    }

    /// The next frame, within `within` (at most 10 s, so a watching console heartbeats).
    pub async fn push(&mut self, within: Duration) -> Result<Option<String>, String> {
        const HEARTBEAT: Duration = Duration::from_secs(15);
        if self.last_sent.elapsed() >= HEARTBEAT {
            self.ws
                .send(Message::text(r#"{"v":1,"id":0,"type":"ping"}"#))
                .await
                .map_err(|e| format!("ping: {e}"))?;
            self.last_sent = tokio::time::Instant::now();
        }
        let within = within.min(Duration::from_secs(10));
        loop {
            match tokio::time::timeout(within, self.ws.next()).await {
                Err(_) => return Ok(None),
                Ok(Some(Ok(Message::Text(t)))) => return Ok(Some(t.to_string())),
                Ok(Some(Ok(Message::Close(f)))) => return Err(why_closed(f.as_ref())),
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => return Err(e.to_string()),
                Ok(None) => return Err(why_closed(None)),
            }
        }
    }

    /// Waits `d`, heartbeating and dropping whatever is pushed meanwhile.
    pub async fn idle(&mut self, d: Duration) -> Result<(), String> {
        let end = tokio::time::Instant::now() + d;
        while let Some(left) = end.checked_duration_since(tokio::time::Instant::now()) {
            if left.is_zero() {
                break;
            }
            self.push(left).await?;
        }
        Ok(())
    }

    /// A stamped notice to every tier below `node`, padded so the pushed frame is about
    /// `bytes` long; returns how many terminals it went to.
    pub async fn notice(&mut self, node: &str, round: u32, bytes: usize) -> Result<u64, String> {
        self.notice_watching(node, round, bytes, |_| {}).await
    }

    /// `notice`, handing every other frame that arrives before the reply to `other`.
    pub async fn notice_watching(
        &mut self,
        node: &str,
        round: u32,
        bytes: usize,
        other: impl FnMut(&str),
    ) -> Result<u64, String> {
        let body = padded(&crate::fleet::stamp(round), bytes.saturating_sub(170));
        let data = format!(r#"{{"node":"{node}","title":"loadtest","body":"{body}"}}"#);
        let reply = self
            .request("notice.send", &data, Duration::from_secs(60), other)
            .await?;
        Ok(reply["notice"]["recipients"].as_u64().unwrap_or(0))
    }

    /// Subscribes (again) to the city's presence and returns its on-line count: a fresh
    /// snapshot, the subscription replaced.
    pub async fn city_online(&mut self, root: &str) -> Result<u64, String> {
        let snap = self
            .request(
                "presence.subscribe",
                &format!(r#"{{"node":"{root}","endpoints":false}}"#),
                Duration::from_secs(30),
                |_| {},
            )
            .await?;
        snap["aggregates"]
            .as_array()
            .and_then(|a| a.iter().find(|a| a["node"] == root))
            .and_then(|a| a["online"].as_u64())
            .ok_or_else(|| "the city's presence snapshot has no aggregate for the city".into())
    }

    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.ws.close(None)).await;
    }
}

/// `head` followed by dots up to `len` bytes.
pub fn padded(head: &str, len: usize) -> String {
    let mut s = head.to_owned();
    while s.len() < len {
        s.push('.');
    }
    s
}

/// A verdict line.
pub fn verdict(what: &str, target: &str, measured: String, met: Option<bool>) -> Verdict {
    Verdict {
        what: what.into(),
        target: target.into(),
        measured,
        met,
    }
}

/// That every terminal ended with every notice, once.
pub fn every_notice_once(missing: u64, sent: u64, repeated: u64, all_connected: bool) -> Verdict {
    verdict(
        "every terminal has every notice exactly once",
        "none lost or repeated",
        format!("{missing} terminals short of {sent} notices, {repeated} repeated"),
        Some(missing == 0 && repeated == 0 && all_connected),
    )
}

/// How many errors the terminals saw, and the first few.
pub fn errors(rep: &mut Report, count: u64, first: &[String]) {
    rep.figures.push(figure("errors seen by terminals", count));
    rep.notes
        .extend(first.iter().take(5).map(|e| format!("error: {e}")));
}

pub fn figure(name: &str, value: impl std::fmt::Display) -> Figure {
    Figure {
        name: name.into(),
        value: value.to_string(),
    }
}

/// The report's common head.
pub fn report(scenario: &str, title: String) -> Report {
    Report {
        scenario: scenario.into(),
        title,
        command: std::env::args()
            .map(|a| if a.contains(' ') { format!("'{a}'") } else { a })
            .collect::<Vec<_>>()
            .join(" "),
        started_at: rfc3339(gridhub::clock::now_ms()),
        machine: serde_json::to_value(crate::Machine::read()).unwrap_or_default(),
        verdicts: Vec::new(),
        figures: Vec::new(),
        charts: Vec::new(),
        notes: Vec::new(),
    }
}

/// Unix milliseconds as RFC 3339 UTC text.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = gridhub::clock::civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Writes `<dir>/<scenario>.json` (the summary, the report inside it) and
/// `<dir>/<scenario>.html`, and prints the summary table.
pub fn finish<T: serde::Serialize>(
    dir: Option<&Path>,
    report: &Report,
    summary: &T,
) -> Result<(), String> {
    print!("{}", crate::report::summary_table(report));
    let Some(dir) = dir else {
        return Ok(());
    };
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut json = serde_json::to_value(summary).map_err(|e| e.to_string())?;
    json["report"] = serde_json::to_value(report).map_err(|e| e.to_string())?;
    let j = dir.join(format!("{}.json", report.scenario));
    let h = dir.join(format!("{}.html", report.scenario));
    std::fs::write(
        &j,
        serde_json::to_string_pretty(&json).map_err(|e| e.to_string())?,
    )
    .map_err(|e| format!("{}: {e}", j.display()))?;
    std::fs::write(&h, crate::report::render_html(report))
        .map_err(|e| format!("{}: {e}", h.display()))?;
    println!("  summary: {}\n  report:  {}", j.display(), h.display());
    Ok(())
}

/// A report for a scenario that prints its own figures: its summary's `targets` (true, false,
/// or null when not tested) become the verdicts, its numbers and percentiles the figures, and
/// the hub sampled during the run the charts.
pub fn from_summary(scenario: &str, title: String, summary: &Value, samples: &[Sample]) -> Report {
    let mut rep = report(scenario, title);
    if let Some(targets) = summary["targets"].as_object() {
        for (k, v) in targets {
            rep.verdicts.push(verdict(
                &k.replace('_', " "),
                "as named",
                "see the figures".into(),
                v.as_bool(),
            ));
        }
    }
    let Some(fields) = summary.as_object() else {
        return rep;
    };
    for (k, v) in fields {
        if matches!(k.as_str(), "machine" | "targets" | "samples" | "scenario") {
            continue;
        }
        let name = k.replace('_', " ");
        match v {
            Value::Number(n) => rep.figures.push(match n.as_f64() {
                Some(x) if n.is_f64() => figure(&name, format!("{x:.3}")),
                _ => figure(&name, n),
            }),
            Value::Object(o) if o.contains_key("p99_ms") => rep.figures.push(figure(
                &name,
                format!(
                    "p50 {:.2} / p99 {:.2} / max {:.2} ms ({} values)",
                    o["p50_ms"].as_f64().unwrap_or(f64::NAN),
                    o["p99_ms"].as_f64().unwrap_or(f64::NAN),
                    o["max_ms"].as_f64().unwrap_or(f64::NAN),
                    o["count"]
                ),
            )),
            Value::Array(a) if k == "first_errors" => {
                rep.notes.extend(a.iter().map(|e| format!("error: {e}")));
            }
            _ => {}
        }
    }
    crate::timeline::push_resource_charts(&mut rep, samples);
    rep
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_of_known_instants() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_796_083_200_000), "2026-12-01T00:00:00Z");
        assert_eq!(
            super::rfc3339(951_782_400_000 + 3_661_000),
            "2000-02-29T01:01:01Z"
        );
    }

    #[test]
    fn padding_reaches_the_length_and_keeps_the_head() {
        let p = super::padded("@t=1@r=2@", 40);
        assert_eq!(p.len(), 40);
        assert!(p.starts_with("@t=1@r=2@"));
        assert_eq!(super::padded("long head", 3), "long head");
    }

    #[test]
    fn a_summary_s_targets_become_verdicts_and_its_numbers_figures() {
        let s = serde_json::json!({
            "scenario": "connect",
            "terminals": 9851,
            "connect_latency": {"count": 3, "p50_ms": 1.0, "p90_ms": 2.0, "p99_ms": 3.0, "max_ms": 4.0, "mean_ms": 1.5},
            "first_errors": ["boom"],
            "targets": {"connect_under_5s": true, "year_under_2_minutes": null, "rss_ok": false}
        });
        let r = super::from_summary("connect", "t".into(), &s, &[]);
        let met: Vec<_> = r
            .verdicts
            .iter()
            .map(|v| (v.what.as_str(), v.met))
            .collect();
        assert!(met.contains(&("connect under 5s", Some(true))));
        assert!(met.contains(&("year under 2 minutes", None)));
        assert!(met.contains(&("rss ok", Some(false))));
        assert!(!crate::report::all_met(&r));
        assert!(
            r.figures
                .iter()
                .any(|f| f.name == "terminals" && f.value == "9851")
        );
        assert!(
            r.figures
                .iter()
                .any(|f| f.value.starts_with("p50 1.00 / p99 3.00"))
        );
        assert_eq!(r.notes.len(), 1);
    }
}

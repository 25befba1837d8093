//! A fleet of terminals held open for a scenario, in this process or spread over worker
//! processes (each under the open-file limit), every worker recording into its own histograms
//! and handing them over encoded at the end, where they are merged.
//!
//! A fleet terminal connects (paced by the ramp), resumes its outbox, heartbeats, records every
//! stamped notice it receives (the stamp is the sender's monotonic clock, read where the notice
//! was sent), acknowledges if asked, changes its presence when the churn picks it, and on a
//! storm drops its connection and comes straight back, resuming from the last sequence it has.
//! Against a Redis baseline a fleet terminal is a pub/sub subscriber on a plain TCP connection.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use gridhub::auth::{Authority, Role};
use gridhub::org::Org;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::terminal::{Ws, open_from};
use crate::timeline::{Timeline, TimelineWire};
use crate::{
    ErrorLog, Target, decode_histogram, encode_histogram, histogram, merge, mono_us, why_closed,
};

/// Where a fleet's terminals connect.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub enum Backend {
    /// A gridhub node; credentials are signed with `secret`.
    Hub { addr: SocketAddr, secret: String },
    /// A `redis-server`: each terminal subscribes to `channel`.
    Redis { addr: SocketAddr, channel: String },
}

/// What one worker (process or task) holds.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct FleetSpec {
    pub backend: Backend,
    pub org: PathBuf,
    /// The slice of the tree's terminals (in org order, the city left out) this worker holds.
    pub first: usize,
    pub count: usize,
    /// Handshakes in flight at once.
    pub concurrency: usize,
    /// New connections per second for this worker (0: as fast as `concurrency` allows).
    pub ramp_per_sec: f64,
    /// Heartbeat interval (default: what the hub announces).
    pub heartbeat_ms: Option<u64>,
    /// Acknowledge every outbox message.
    pub ack: bool,
    /// The timeline's origin (monotonic µs) and interval.
    pub start_us: u64,
    pub interval_ms: u64,
    /// A worker ends by itself this long after it starts, whatever the parent does.
    pub stop_after_s: u64,
    /// Copies of rounds from this one on count in `measured` (the rounds before are warm-up).
    /// Fixed when the worker starts, so no round can arrive before the worker knows it.
    pub measure_from_round: u32,
    /// Other nodes of the hub: a terminal whose connection is lost (its node died) comes back
    /// on the next of these, after a jittered pause, and resumes from its last sequence. Empty:
    /// a lost connection ends the terminal (an error of the run).
    #[serde(default)]
    pub failover: Vec<SocketAddr>,
    /// The local address this worker's connections leave from (a 127.0.0.x of its own, so
    /// 100,000 connections to a few ports never run out of source ports).
    #[serde(default)]
    pub source: Option<std::net::IpAddr>,
}

/// What the parent asks of every terminal, as it changes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq)]
pub struct Ctl {
    /// Each increment is one storm: every terminal drops its connection and comes back.
    pub storm: u32,
    /// When the storm was called (monotonic µs): reconnect times count from here.
    pub storm_at_us: u64,
    /// Presence changes per second over the worker's slice.
    pub churn_per_sec: f64,
    pub stop: bool,
}

/// One fan-out round as the fleet saw it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default)]
pub struct Round {
    pub received: u64,
    /// Time in flight of the first and the last copy to arrive, µs.
    pub first_us: u64,
    pub last_us: u64,
}

/// What a worker measured; reports of several workers merge into one.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct FleetReport {
    pub terminals: u64,
    pub connected: u64,
    pub failed: u64,
    pub errors: u64,
    pub first_errors: Vec<String>,
    /// Encoded histograms (µs): first connections, and reconnections after a storm (from the
    /// storm's call to the outbox resumed).
    pub connect: String,
    pub reconnect: String,
    pub reconnected: u64,
    /// Stamped notices by arrival.
    pub notices: TimelineWire,
    /// Every copy's time in flight of the measured rounds (encoded histogram, µs).
    pub measured: String,
    pub rounds: BTreeMap<u32, Round>,
    /// How many terminals received how many distinct notices.
    pub notices_per_terminal: BTreeMap<u64, u64>,
    /// Outbox messages at or below a sequence the terminal already had.
    pub duplicates: u64,
    pub presence_sent: u64,
    /// The worker's own CPU seconds and memory at the end.
    pub cpu_s: f64,
    pub rss_bytes: f64,
}

impl FleetReport {
    pub fn merge(parts: Vec<FleetReport>, interval: Duration) -> Result<FleetReport, String> {
        let mut out = FleetReport::default();
        let (mut connect, mut reconnect, mut measured) = (histogram(), histogram(), histogram());
        let mut notices: Option<Timeline> = None;
        for p in parts {
            out.terminals += p.terminals;
            out.connected += p.connected;
            out.failed += p.failed;
            out.errors += p.errors;
            for e in p.first_errors {
                if out.first_errors.len() < 10 {
                    out.first_errors.push(e);
                }
            }
            merge(&mut connect, &decode_histogram(&p.connect)?);
            merge(&mut reconnect, &decode_histogram(&p.reconnect)?);
            merge(&mut measured, &decode_histogram(&p.measured)?);
            out.reconnected += p.reconnected;
            let t = Timeline::from_wire(&p.notices)?;
            match &mut notices {
                Some(n) => n.merge(&t),
                None => notices = Some(t),
            }
            for (k, r) in p.rounds {
                let o = out.rounds.entry(k).or_default();
                o.first_us = if o.received == 0 {
                    r.first_us
                } else {
                    o.first_us.min(r.first_us)
                };
                o.received += r.received;
                o.last_us = o.last_us.max(r.last_us);
            }
            for (k, n) in p.notices_per_terminal {
                *out.notices_per_terminal.entry(k).or_default() += n;
            }
            out.duplicates += p.duplicates;
            out.presence_sent += p.presence_sent;
            out.cpu_s += p.cpu_s;
            out.rss_bytes += p.rss_bytes;
        }
        out.connect = encode_histogram(&connect);
        out.reconnect = encode_histogram(&reconnect);
        out.measured = encode_histogram(&measured);
        out.notices = notices
            .unwrap_or_else(|| Timeline::new(0, interval))
            .to_wire();
        Ok(out)
    }

    pub fn connect_histogram(&self) -> Histogram<u64> {
        decode_histogram(&self.connect).unwrap_or_else(|_| histogram())
    }

    pub fn reconnect_histogram(&self) -> Histogram<u64> {
        decode_histogram(&self.reconnect).unwrap_or_else(|_| histogram())
    }

    pub fn measured_histogram(&self) -> Histogram<u64> {
        decode_histogram(&self.measured).unwrap_or_else(|_| histogram())
    }

    pub fn notice_timeline(&self) -> Timeline {
        Timeline::from_wire(&self.notices).unwrap_or_else(|_| Timeline::new(0, Duration::ZERO))
    }

    /// Terminals that did not get exactly `n` distinct notices.
    pub fn terminals_without_exactly(&self, n: u64) -> u64 {
        let with_n = self.notices_per_terminal.get(&n).copied().unwrap_or(0);
        self.connected.saturating_sub(with_n)
    }
}

/// Live counts, read by the parent for the progress bar and to know when a phase is done.
#[derive(Default, Debug)]
pub struct Progress {
    pub connected: AtomicU64,
    pub failed: AtomicU64,
    pub notices: AtomicU64,
    pub reconnected: AtomicU64,
    /// Connections lost with their node, the terminal failing over to another.
    pub lost: AtomicU64,
    /// When (monotonic µs) the last terminal connected, resumed after a storm, and received a
    /// stamped notice: exact ends of a phase, where polling the counts would add its own lag.
    pub connected_at: AtomicU64,
    pub reconnected_at: AtomicU64,
    pub notice_at: AtomicU64,
}

#[derive(Serialize, Deserialize, Debug)]
enum Line {
    Progress {
        connected: u64,
        failed: u64,
        notices: u64,
        reconnected: u64,
        #[serde(default)]
        lost: u64,
        connected_at: u64,
        reconnected_at: u64,
        notice_at: u64,
    },
    Report(Box<FleetReport>),
    Failed(String),
}

/// The marker a stamped message carries: the sender's clock, then the round.
pub const STAMP: &str = "@t=";

/// A stamped text: `@t=<monotonic µs>@r=<round>@`.
pub fn stamp(round: u32) -> String {
    format!("{STAMP}{}@r={round}@", mono_us())
}

/// Every stamp in `text`: (sent at, round).
pub fn stamps(text: &[u8]) -> Vec<(u64, u32)> {
    let mut out = Vec::new();
    let marker = STAMP.as_bytes();
    let mut i = 0;
    while i + marker.len() <= text.len() {
        if &text[i..i + marker.len()] != marker {
            i += 1;
            continue;
        }
        i += marker.len();
        let (t, used) = number(&text[i..]);
        i += used;
        if text[i..].starts_with(b"@r=") {
            let (r, used) = number(&text[i + 3..]);
            if used > 0 {
                out.push((t, r as u32));
            }
            i += 3 + used;
        }
    }
    out
}

fn number(b: &[u8]) -> (u64, usize) {
    let n = b.iter().take_while(|c| c.is_ascii_digit()).count();
    let v = std::str::from_utf8(&b[..n])
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (v, n)
}

/// Shared by a worker's terminals.
struct Shared {
    spec: FleetSpec,
    progress: Arc<Progress>,
    errors: ErrorLog,
    tally: Mutex<Tally>,
    sem: Semaphore,
    ramp_start: tokio::time::Instant,
    measure_from_round: u32,
}

struct Tally {
    connect: Histogram<u64>,
    measured: Histogram<u64>,
    reconnect: Histogram<u64>,
    notices: Timeline,
    rounds: BTreeMap<u32, Round>,
    duplicates: u64,
    presence_sent: u64,
}

impl Shared {
    fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        // Nothing panics while holding it; a poisoned lock still holds valid counts.
        self.tally.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notice(&self, at: u64, sent: u64, round: u32) {
        let lat = at.saturating_sub(sent).max(1);
        let mut t = self.tally();
        t.notices.record(at, lat);
        if round >= self.measure_from_round {
            t.measured.saturating_record(lat);
        }
        let r = t.rounds.entry(round).or_default();
        r.first_us = if r.received == 0 {
            lat
        } else {
            r.first_us.min(lat)
        };
        r.received += 1;
        r.last_us = r.last_us.max(lat);
        drop(t);
        self.progress.notice_at.fetch_max(at, Relaxed);
        self.progress.notices.fetch_add(1, Relaxed);
    }

    /// Waits for the ramp's slot for connection `k` of this worker.
    async fn paced(&self, k: usize) {
        if self.spec.ramp_per_sec > 0.0 {
            let at = self.ramp_start + Duration::from_secs_f64(k as f64 / self.spec.ramp_per_sec);
            tokio::time::sleep_until(at).await;
        }
    }
}

/// Runs one worker's fleet until `ctl` says stop (or its own deadline), then reports.
pub async fn run_worker(
    spec: FleetSpec,
    mut ctl: watch::Receiver<Ctl>,
    progress: Arc<Progress>,
) -> Result<FleetReport, String> {
    let org = Org::load(&spec.org).map_err(|e| format!("{}: {e}", spec.org.display()))?;
    let all = crate::connect::terminals(&org, usize::MAX);
    let slice: Vec<(String, Role)> = all.into_iter().skip(spec.first).take(spec.count).collect();
    let interval = Duration::from_millis(spec.interval_ms.max(1));
    let shared = Arc::new(Shared {
        progress,
        errors: ErrorLog::default(),
        tally: Mutex::new(Tally {
            connect: histogram(),
            measured: histogram(),
            reconnect: histogram(),
            notices: Timeline::new(spec.start_us, interval),
            rounds: BTreeMap::new(),
            duplicates: 0,
            presence_sent: 0,
        }),
        sem: Semaphore::new(spec.concurrency.max(1)),
        ramp_start: tokio::time::Instant::now(),
        measure_from_round: spec.measure_from_round,
        spec: spec.clone(),
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(spec.stop_after_s.max(1));
    let mut tasks = tokio::task::JoinSet::new();
    let mut churn_tx = Vec::new();
    match &spec.backend {
        Backend::Hub { addr, secret } => {
            let auth = Authority::new(secret.as_bytes())?;
            let target = Target {
                addr: *addr,
                secret: secret.as_bytes().to_vec(),
            };
            let now = gridhub::clock::now_ms() / 1000;
            for (k, (id, role)) in slice.iter().enumerate() {
                let token = auth
                    .mint(&org, id, *role, 24 * 3600, now)
                    .map_err(|e| e.to_string())?;
                let (tx, rx) = mpsc::channel(4);
                churn_tx.push(tx);
                tasks.spawn(hub_terminal(
                    k,
                    target.clone(),
                    token,
                    Arc::clone(&shared),
                    ctl.clone(),
                    rx,
                ));
            }
        }
        Backend::Redis { addr, channel } => {
            for k in 0..slice.len() {
                tasks.spawn(redis_terminal(
                    k,
                    *addr,
                    channel.clone(),
                    Arc::clone(&shared),
                    ctl.clone(),
                ));
            }
        }
    }
    // The churn: presence changes spread over the slice at the rate the parent sets.
    let churn = tokio::spawn(churn(churn_tx, ctl.clone(), Arc::clone(&shared)));
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            changed = ctl.changed() => {
                if changed.is_err() || ctl.borrow().stop {
                    break;
                }
            }
        }
    }
    churn.abort();
    let mut per_terminal = BTreeMap::new();
    // Terminals close politely on stop; one that does not within the bound is abandoned.
    let wait = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(j) = tasks.join_next().await {
            if let Ok(n) = j {
                *per_terminal.entry(n).or_insert(0u64) += 1;
            }
        }
    });
    if wait.await.is_err() {
        tasks.abort_all();
    }
    let t = shared.tally();
    let p = &shared.progress;
    Ok(FleetReport {
        terminals: slice.len() as u64,
        connected: p.connected.load(Relaxed),
        failed: p.failed.load(Relaxed),
        errors: shared.errors.count(),
        first_errors: shared.errors.first(),
        connect: encode_histogram(&t.connect),
        reconnect: encode_histogram(&t.reconnect),
        measured: encode_histogram(&t.measured),
        reconnected: p.reconnected.load(Relaxed),
        notices: t.notices.to_wire(),
        rounds: t.rounds.clone(),
        notices_per_terminal: {
            // Terminals that never connected received nothing because they were never there;
            // they are counted as failed, not as losing notices.
            let mut m = per_terminal;
            m.remove(&u64::MAX);
            m
        },
        duplicates: t.duplicates,
        presence_sent: t.presence_sent,
        cpu_s: crate::own_cpu(),
        rss_bytes: crate::proc_rss("self"),
    })
}

async fn churn(
    senders: Vec<mpsc::Sender<&'static str>>,
    mut ctl: watch::Receiver<Ctl>,
    s: Arc<Shared>,
) {
    let n = senders.len();
    if n == 0 {
        return;
    }
    let stride = crate::connect::stride_for(n);
    let mut k = 0usize;
    loop {
        let rate = ctl.borrow().churn_per_sec;
        if rate <= 0.0 {
            if ctl.changed().await.is_err() {
                return;
            }
            continue;
        }
        let period = Duration::from_secs_f64(1.0 / rate);
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                c = ctl.changed() => {
                    if c.is_err() { return; }
                    break;
                }
                _ = tick.tick() => {
                    const STATUS: [&str; 3] = ["busy", "away", "online"];
                    let status = STATUS[(k / n) % STATUS.len()];
                    // A terminal whose queue is full skips this change rather than hold the
                    // others back; it is not counted as sent.
                    if senders[(k * stride) % n].try_send(status).is_ok() {
                        s.tally().presence_sent += 1;
                    }
                    k += 1;
                }
            }
        }
    }
}

/// The sequence and, for a stamped notice, its stamp and id, of an outbox frame.
fn outbox_frame(t: &str) -> Option<(u64, Option<u64>)> {
    if !t.starts_with(r#"{"v":1,"type":"outbox""#) {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(t).ok()?;
    let seq = v["seq"].as_u64()?;
    let notice = v["data"]["notice"]["id"].as_u64();
    Some((seq, notice))
}

/// A hub terminal: returns how many distinct notices it received (`u64::MAX` if it never
/// connected).
async fn hub_terminal(
    k: usize,
    target: Target,
    token: String,
    s: Arc<Shared>,
    mut ctl: watch::Receiver<Ctl>,
    mut churn: mpsc::Receiver<&'static str>,
) -> u64 {
    let mut last_seq = 0u64;
    let mut notices = std::collections::HashSet::new();
    let mut storm_seen = ctl.borrow().storm;
    let mut reconnecting_since: Option<u64> = None;
    // Where it connects: its own node, then (failing over) the others in turn.
    let nodes: Vec<SocketAddr> = std::iter::once(target.addr)
        .chain(s.spec.failover.iter().copied())
        .collect();
    let mut at = 0usize;
    // The node whose connection was lost: skipped while failing over.
    let mut dead: Option<usize> = None;
    let mut target = target;
    let mut failures = 0u32;
    s.paced(k).await;
    loop {
        if ctl.borrow().stop {
            break;
        }
        target.addr = nodes[at % nodes.len()];
        let opened = if dead.is_some() {
            // Failing over, each terminal comes back by itself, as a field terminal does (its
            // jittered pause spreads them): the run's handshake limit, there to pace a fleet's
            // first connections, would measure the harness instead of the hub.
            open_from(&target, &token, s.spec.source).await
        } else {
            let _permit = s.sem.acquire().await;
            open_from(&target, &token, s.spec.source).await
        };
        let o = match opened {
            Ok(o) => o,
            Err(e) => {
                if reconnecting_since.is_none() {
                    s.progress.failed.fetch_add(1, Relaxed);
                    s.errors.record(&format!("connect: {e}"));
                    return u64::MAX;
                }
                // Coming back after a storm, a refusal (the hub busy with everyone at once) is
                // retried after a jittered pause, as a real terminal does; failing over, the
                // next node is tried, the pause growing with each failure.
                if nodes.len() == 1 {
                    s.errors.record(&format!("reconnect: {e}"));
                }
                failures += 1;
                let pause;
                (at, pause) = retry(nodes.len(), at, dead, failures);
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        let mut ws = o.ws;
        let resumed = resume(&mut ws, last_seq, &s, &mut notices, &mut last_seq).await;
        if let Err(e) = resumed {
            s.errors.record(&e);
            if reconnecting_since.is_none() {
                s.progress.failed.fetch_add(1, Relaxed);
                return u64::MAX;
            }
            // As a refused connection.
            failures += 1;
            let pause;
            (at, pause) = retry(nodes.len(), at, dead, failures);
            tokio::time::sleep(pause).await;
            continue;
        }
        match reconnecting_since.take() {
            None => {
                let mut t = s.tally();
                crate::record(&mut t.connect, o.took);
                drop(t);
                s.progress.connected_at.fetch_max(mono_us(), Relaxed);
                s.progress.connected.fetch_add(1, Relaxed);
            }
            Some(since) => {
                let now = mono_us();
                s.tally()
                    .reconnect
                    .saturating_record(now.saturating_sub(since).max(1));
                s.progress.reconnected_at.fetch_max(now, Relaxed);
                s.progress.reconnected.fetch_add(1, Relaxed);
            }
        }
        failures = 0;
        let interval = s
            .spec
            .heartbeat_ms
            .or_else(|| o.hello["data"]["heartbeat"]["interval_ms"].as_u64())
            .map(Duration::from_millis)
            .unwrap_or(Duration::from_secs(20));
        // Phases spread over the interval so heartbeats arrive evenly.
        let phase = interval.mul_f64((k % 1000) as f64 / 1000.0);
        let mut next = tokio::time::Instant::now() + phase;
        let ping = Utf8Bytes::from_static(r#"{"v":1,"id":0,"type":"ping"}"#);
        let end = loop {
            tokio::select! {
                c = ctl.changed() => {
                    let c = if c.is_err() { Ctl { stop: true, ..Ctl::default() } } else { *ctl.borrow() };
                    if c.stop {
                        break End::Stop;
                    }
                    if c.storm != storm_seen {
                        storm_seen = c.storm;
                        reconnecting_since = Some(c.storm_at_us);
                        break End::Storm;
                    }
                }
                _ = tokio::time::sleep_until(next) => {
                    next += interval;
                    if let Err(e) = ws.send(Message::Text(ping.clone())).await {
                        break End::Lost(format!("send: {e}"));
                    }
                }
                Some(status) = churn.recv() => {
                    // Stamped here, just before it is written: the time in flight starts now.
                    let text = format!(
                        r#"{{"v":1,"type":"presence.set","data":{{"status":"{status}","text":"{}"}}}}"#,
                        stamp(0)
                    );
                    if let Err(e) = ws.send(Message::text(text)).await {
                        break End::Lost(format!("send: {e}"));
                    }
                }
                m = ws.next() => match m {
                    Some(Ok(Message::Text(t))) => {
                        if let Some(ack) = on_text(&t, &s, &mut notices, &mut last_seq)
                            && let Err(e) = ws.send(Message::Text(ack)).await
                        {
                            break End::Lost(format!("send: {e}"));
                        }
                    }
                    Some(Ok(Message::Close(f))) => break End::Lost(why_closed(f.as_ref())),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break End::Lost(format!("connection: {e}")),
                    None => break End::Lost(why_closed(None)),
                },
            }
        };
        match end {
            End::Stop => {
                let _ = tokio::time::timeout(Duration::from_secs(5), ws.close(None)).await;
                break;
            }
            // Dropped without a goodbye, as a network blip or a restarted hub leaves it.
            End::Storm => drop(ws),
            // Its node died: back on another, from where it was, after the field page's pause
            // (750 ms × 0.5–1, doubling while refused): a node's terminals all fail over at once.
            End::Lost(_) if nodes.len() > 1 => {
                drop(ws);
                reconnecting_since = Some(mono_us());
                s.progress.lost.fetch_add(1, Relaxed);
                // Spread over the other nodes as a balancer would, not all onto the next one.
                dead = Some(at % nodes.len());
                at += 1 + k % (nodes.len() - 1);
                tokio::time::sleep(field_backoff(0)).await;
            }
            // A terminal lost mid-run is an error of the run: it misses what follows.
            End::Lost(why) => {
                s.errors.record(&why);
                break;
            }
        }
    }
    notices.len() as u64
}

/// After the `failures`-th refused reconnection of a terminal at `nodes[at % nodes]`: the node to
/// try next and the pause before. Alone, the same node after a short jittered pause (a storm's
/// refusals are the hub busy with everyone at once); failing over, the next node but the dead
/// one, after the field page's pause.
fn retry(nodes: usize, at: usize, dead: Option<usize>, failures: u32) -> (usize, Duration) {
    if nodes <= 1 {
        let cap = 200u64 << failures.min(4);
        return (at, Duration::from_millis(50 + mono_us() % cap));
    }
    let mut next = at + 1;
    if nodes > 2 && Some(next % nodes) == dead {
        next += 1;
    }
    (next, field_backoff(failures))
}

/// The field page's reconnect pause (web/src/lib/hub.js): 750 ms doubled per failure up to
/// 30 s, times 0.5–1 at random.
fn field_backoff(failures: u32) -> Duration {
    let base = (750u64 << failures.min(6)).min(30_000);
    let jitter = 0.5 + (mono_us() % 1000) as f64 / 2000.0;
    Duration::from_millis((base as f64 * jitter) as u64)
}

enum End {
    Stop,
    Storm,
    Lost(String),
}

/// Handles one frame; returns the acknowledgement to send, if any.
fn on_text(
    t: &str,
    s: &Shared,
    notices: &mut std::collections::HashSet<u64>,
    last_seq: &mut u64,
) -> Option<Utf8Bytes> {
    if t.starts_with(r#"{"v":1,"type":"reply""#) {
        return None;
    }
    if t.starts_with(r#"{"v":1,"type":"error""#) {
        s.errors
            .record(&crate::refused_for_pace(t).unwrap_or_else(|| format!("refused: {t}")));
        return None;
    }
    let at = mono_us();
    let (seq, notice) = outbox_frame(t)?;
    if seq <= *last_seq {
        s.tally().duplicates += 1;
        return None;
    }
    *last_seq = seq;
    // Only this run's notices count: a hub that keeps its store between runs replays earlier
    // runs' notices to a terminal resuming from 0, stamped before this run began.
    let ours: Vec<(u64, u32)> = stamps(t.as_bytes())
        .into_iter()
        .filter(|(sent, _)| *sent >= s.spec.start_us)
        .collect();
    if let Some(id) = notice
        && !ours.is_empty()
    {
        if notices.insert(id) {
            for (sent, round) in ours {
                s.notice(at, sent, round);
            }
        } else {
            // The same notice again under a new sequence: delivered twice.
            s.tally().duplicates += 1;
        }
    }
    s.spec.ack.then(|| {
        Utf8Bytes::from(format!(
            r#"{{"v":1,"type":"outbox.ack","data":{{"seq":{seq}}}}}"#
        ))
    })
}

/// Resumes the outbox after `after`, handling what it replays, until the hub's reply (more
/// than one round when the replay says there is more).
async fn resume(
    ws: &mut Ws,
    after: u64,
    s: &Shared,
    notices: &mut std::collections::HashSet<u64>,
    last_seq: &mut u64,
) -> Result<(), String> {
    let mut after = after;
    for _ in 0..1000 {
        ws.send(Message::text(format!(
            r#"{{"v":1,"id":"res","type":"outbox.resume","data":{{"after":{after}}}}}"#
        )))
        .await
        .map_err(|e| format!("resume: {e}"))?;
        let more = loop {
            let m = tokio::time::timeout(Duration::from_secs(60), ws.next())
                .await
                .map_err(|_| "resume: no reply within 60 s".to_string())?;
            match m {
                Some(Ok(Message::Text(t))) => {
                    if t.contains(r#""re":"res""#) {
                        let v: serde_json::Value =
                            serde_json::from_str(&t).map_err(|e| format!("resume: {e}"))?;
                        if v["type"] == "error" {
                            return Err(format!("resume refused: {t}"));
                        }
                        break v["data"]["more"].as_bool().unwrap_or(false);
                    }
                    if let Some(ack) = on_text(&t, s, notices, last_seq) {
                        ws.send(Message::Text(ack))
                            .await
                            .map_err(|e| format!("ack: {e}"))?;
                    }
                }
                Some(Ok(Message::Close(f))) => return Err(why_closed(f.as_ref())),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("resume: {e}")),
                None => return Err(why_closed(None)),
            }
        };
        if !more {
            return Ok(());
        }
        after = *last_seq;
    }
    Err("resume: more than 1,000 replay rounds".into())
}

/// A Redis pub/sub subscriber on a plain TCP connection: the same stamps, the same records.
async fn redis_terminal(
    k: usize,
    addr: SocketAddr,
    channel: String,
    s: Arc<Shared>,
    mut ctl: watch::Receiver<Ctl>,
) -> u64 {
    s.paced(k).await;
    let connected = {
        let _permit = s.sem.acquire().await;
        // Timed like a hub terminal's `open`: from the connect, not from the queue for a permit.
        let t0 = std::time::Instant::now();
        redis_subscribe(addr, &channel)
            .await
            .map(|st| (st, t0.elapsed()))
    };
    let (mut stream, took) = match connected {
        Ok(st) => st,
        Err(e) => {
            s.progress.failed.fetch_add(1, Relaxed);
            s.errors.record(&format!("redis subscribe: {e}"));
            return u64::MAX;
        }
    };
    crate::record(&mut s.tally().connect, took);
    s.progress.connected_at.fetch_max(mono_us(), Relaxed);
    s.progress.connected.fetch_add(1, Relaxed);
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let mut got = 0u64;
    loop {
        tokio::select! {
            c = ctl.changed() => {
                if c.is_err() || ctl.borrow().stop {
                    break;
                }
            }
            r = stream.read(&mut chunk) => match r {
                Ok(0) => {
                    s.errors.record("redis-server closed the subscription");
                    break;
                }
                Err(e) => {
                    s.errors.record(&format!("redis subscription: {e}"));
                    break;
                }
                Ok(n) => {
                    let at = mono_us();
                    buf.extend_from_slice(&chunk[..n]);
                    // Whole stamps only; a stamp cut by the read waits for the rest.
                    let cut = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
                    for (sent, round) in stamps(&buf[..cut]) {
                        s.notice(at, sent, round);
                        got += 1;
                    }
                    buf.drain(..cut);
                }
            }
        }
    }
    got
}

async fn redis_subscribe(addr: SocketAddr, channel: &str) -> Result<tokio::net::TcpStream, String> {
    let mut st = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let _ = st.set_nodelay(true);
    st.write_all(
        format!(
            "*2\r\n$9\r\nSUBSCRIBE\r\n${}\r\n{channel}\r\n",
            channel.len()
        )
        .as_bytes(),
    )
    .await
    .map_err(|e| e.to_string())?;
    // The confirmation: *3 $9 subscribe $<n> channel :1 — read until its last line.
    let mut got = Vec::new();
    let mut b = [0u8; 256];
    while !(got.windows(9).any(|w| w == b"subscribe")
        && got.ends_with(b"\r\n")
        && got.contains(&b':'))
    {
        let n = tokio::time::timeout(Duration::from_secs(10), st.read(&mut b))
            .await
            .map_err(|_| "no confirmation within 10 s")?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before confirming".into());
        }
        got.extend_from_slice(&b[..n]);
    }
    Ok(st)
}

/// The worker process's side: the spec on standard input's first line, controls on the next
/// ones (end of input stops), progress and the report on standard output.
pub async fn worker_main() -> Result<(), String> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let first = lines
        .next_line()
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no spec on standard input")?;
    let spec: FleetSpec = serde_json::from_str(&first).map_err(|e| format!("spec: {e}"))?;
    // The parent's control as it stands (a worker added after a storm must not storm).
    let second = lines
        .next_line()
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no control on standard input")?;
    let initial: Ctl = serde_json::from_str(&second).map_err(|e| format!("control: {e}"))?;
    let (tx, rx) = watch::channel(initial);
    let progress = Arc::new(Progress::default());
    let p = Arc::clone(&progress);
    let reporter = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            // The instants first: a count read after them never claims a copy whose arrival
            // the instant does not cover.
            let (connected_at, reconnected_at, notice_at) = (
                p.connected_at.load(Relaxed),
                p.reconnected_at.load(Relaxed),
                p.notice_at.load(Relaxed),
            );
            say(&Line::Progress {
                connected: p.connected.load(Relaxed),
                failed: p.failed.load(Relaxed),
                notices: p.notices.load(Relaxed),
                reconnected: p.reconnected.load(Relaxed),
                lost: p.lost.load(Relaxed),
                connected_at,
                reconnected_at,
                notice_at,
            });
        }
    });
    tokio::spawn(async move {
        loop {
            match lines.next_line().await {
                Ok(Some(l)) => {
                    if let Ok(c) = serde_json::from_str::<Ctl>(&l) {
                        let _ = tx.send(c);
                    }
                }
                _ => {
                    let _ = tx.send(Ctl {
                        stop: true,
                        ..Ctl::default()
                    });
                    return;
                }
            }
        }
    });
    let r = run_worker(spec, rx, Arc::clone(&progress)).await;
    reporter.abort();
    match r {
        Ok(report) => say(&Line::Report(Box::new(report))),
        Err(e) => say(&Line::Failed(e)),
    }
    Ok(())
}

fn say(l: &Line) {
    use std::io::Write;
    if let Ok(text) = serde_json::to_string(l) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    }
}

/// The parent's handle on its workers.
pub struct Fleet {
    parts: Vec<Part>,
    ctl: Ctl,
    interval: Duration,
    pub pids: Arc<Mutex<Vec<u32>>>,
    /// The `loadtest` binary the worker processes run.
    exe: PathBuf,
    /// When terminals were last added (monotonic µs): connect times count from here.
    pub grown_at: u64,
}

struct Part {
    progress: Arc<Progress>,
    kind: PartKind,
}

enum PartKind {
    Local {
        ctl: watch::Sender<Ctl>,
        join: tokio::task::JoinHandle<Result<FleetReport, String>>,
    },
    Child {
        child: Box<tokio::process::Child>,
        stdin: tokio::process::ChildStdin,
        report: tokio::task::JoinHandle<Result<FleetReport, String>>,
    },
}

/// Splits `count` terminals starting at `first` into `workers` slices.
pub fn slices(first: usize, count: usize, workers: usize) -> Vec<(usize, usize)> {
    let w = workers.max(1);
    (0..w)
        .map(|i| {
            let a = count * i / w;
            let b = count * (i + 1) / w;
            (first + a, b - a)
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

impl Fleet {
    /// `pids` collects the worker processes' ids (for the harness's own CPU and memory).
    pub fn new(interval: Duration, pids: Arc<Mutex<Vec<u32>>>, exe: PathBuf) -> Fleet {
        Fleet {
            parts: Vec::new(),
            ctl: Ctl::default(),
            interval,
            pids,
            exe,
            grown_at: mono_us(),
        }
    }

    /// Adds a worker holding `spec`'s slice: a task in this process (`process` false) or a
    /// worker process running this same binary.
    pub async fn add(&mut self, spec: FleetSpec, process: bool) -> Result<(), String> {
        let progress = Arc::new(Progress::default());
        let kind = if process {
            let mut child = tokio::process::Command::new(&self.exe)
                .arg("fleet-worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("worker process: {e}"))?;
            if let Some(pid) = child.id() {
                self.pids
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(pid);
            }
            let mut stdin = child.stdin.take().ok_or("worker stdin")?;
            let stdout = child.stdout.take().ok_or("worker stdout")?;
            let line = serde_json::to_string(&spec).map_err(|e| e.to_string())?;
            stdin
                .write_all(
                    format!(
                        "{line}\n{}\n",
                        serde_json::to_string(&self.ctl).map_err(|e| e.to_string())?
                    )
                    .as_bytes(),
                )
                .await
                .map_err(|e| format!("worker: {e}"))?;
            let p = Arc::clone(&progress);
            let report = tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    match serde_json::from_str::<Line>(&l) {
                        Ok(Line::Progress {
                            connected,
                            failed,
                            notices,
                            reconnected,
                            lost,
                            connected_at,
                            reconnected_at,
                            notice_at,
                        }) => {
                            // Instants before counts, as the worker read them.
                            p.connected_at.store(connected_at, Relaxed);
                            p.reconnected_at.store(reconnected_at, Relaxed);
                            p.notice_at.store(notice_at, Relaxed);
                            p.connected.store(connected, Relaxed);
                            p.failed.store(failed, Relaxed);
                            p.notices.store(notices, Relaxed);
                            p.reconnected.store(reconnected, Relaxed);
                            p.lost.store(lost, Relaxed);
                        }
                        Ok(Line::Report(r)) => return Ok(*r),
                        Ok(Line::Failed(e)) => return Err(format!("worker: {e}")),
                        Err(e) => return Err(format!("worker said {l:?}: {e}")),
                    }
                }
                Err("a worker process ended without a report (see its error above)".into())
            });
            PartKind::Child {
                child: Box::new(child),
                stdin,
                report,
            }
        } else {
            let (tx, rx) = watch::channel(self.ctl);
            let join = tokio::spawn(run_worker(spec, rx, Arc::clone(&progress)));
            PartKind::Local { ctl: tx, join }
        };
        self.parts.push(Part { progress, kind });
        Ok(())
    }

    pub fn connected(&self) -> u64 {
        self.sum(|p| &p.connected)
    }

    pub fn failed(&self) -> u64 {
        self.sum(|p| &p.failed)
    }

    pub fn notices(&self) -> u64 {
        self.sum(|p| &p.notices)
    }

    pub fn reconnected(&self) -> u64 {
        self.sum(|p| &p.reconnected)
    }

    /// Connections lost with their node (each failing over to another).
    pub fn lost(&self) -> u64 {
        self.sum(|p| &p.lost)
    }

    fn sum(&self, f: impl Fn(&Progress) -> &AtomicU64) -> u64 {
        self.parts
            .iter()
            .map(|p| f(&p.progress).load(Relaxed))
            .sum()
    }

    /// Whether every worker is still there (a worker process that died cannot report).
    pub fn alive(&self) -> bool {
        self.parts.iter().all(|p| match &p.kind {
            PartKind::Local { join, .. } => !join.is_finished(),
            PartKind::Child { report, .. } => !report.is_finished(),
        })
    }

    /// Waits until `done` holds, checking every 50 ms, at most `within`; `tick` is called each
    /// time (the progress bar).
    pub async fn wait_for(
        &self,
        within: Duration,
        done: impl Fn(&Fleet) -> bool,
        mut tick: impl FnMut(&Fleet),
    ) -> bool {
        let end = tokio::time::Instant::now() + within;
        loop {
            tick(self);
            if done(self) {
                return true;
            }
            if tokio::time::Instant::now() >= end || !self.alive() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends a new control to every worker.
    pub async fn set(&mut self, ctl: Ctl) -> Result<(), String> {
        self.ctl = ctl;
        let line = format!(
            "{}\n",
            serde_json::to_string(&ctl).map_err(|e| e.to_string())?
        );
        // Every worker is told, even when one of them has gone: half a storm measures nothing.
        let mut failed = None;
        for (i, p) in self.parts.iter_mut().enumerate() {
            match &mut p.kind {
                PartKind::Local { ctl: tx, .. } => {
                    let _ = tx.send(ctl);
                }
                PartKind::Child { stdin, .. } => {
                    if let Err(e) = stdin.write_all(line.as_bytes()).await {
                        failed.get_or_insert(format!("worker process {i} is gone: {e}"));
                    }
                }
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// When the last terminal connected, resumed, or received a stamped notice (monotonic µs).
    pub fn connected_at(&self) -> u64 {
        self.latest(|p| &p.connected_at)
    }

    pub fn reconnected_at(&self) -> u64 {
        self.latest(|p| &p.reconnected_at)
    }

    pub fn notice_at(&self) -> u64 {
        self.latest(|p| &p.notice_at)
    }

    fn latest(&self, f: impl Fn(&Progress) -> &AtomicU64) -> u64 {
        self.parts
            .iter()
            .map(|p| f(&p.progress).load(Relaxed))
            .max()
            .unwrap_or(0)
    }

    pub fn ctl(&self) -> Ctl {
        self.ctl
    }

    /// Every terminal drops its connection now and comes back.
    pub async fn storm(&mut self) -> Result<u64, String> {
        let at = mono_us();
        let c = Ctl {
            storm: self.ctl.storm + 1,
            storm_at_us: at,
            ..self.ctl
        };
        self.set(c).await?;
        Ok(at)
    }

    pub async fn churn(&mut self, per_sec_total: f64) -> Result<(), String> {
        let n = self.parts.len().max(1) as f64;
        let c = Ctl {
            churn_per_sec: per_sec_total / n,
            ..self.ctl
        };
        self.set(c).await
    }

    /// Stops every worker and merges their reports.
    pub async fn finish(mut self) -> Result<FleetReport, String> {
        let _ = self
            .set(Ctl {
                stop: true,
                ..self.ctl
            })
            .await;
        let mut reports = Vec::new();
        let mut lost = Vec::new();
        let mut local = false;
        for (i, p) in self.parts.into_iter().enumerate() {
            match p.kind {
                PartKind::Local { join, .. } => {
                    local = true;
                    match join.await.map_err(|e| e.to_string()).and_then(|r| r) {
                        // Its CPU and memory are this process's, counted once below.
                        Ok(r) => reports.push(FleetReport {
                            cpu_s: 0.0,
                            rss_bytes: 0.0,
                            ..r
                        }),
                        Err(e) => lost.push(format!("worker {i}: {e}")),
                    }
                }
                PartKind::Child {
                    mut child,
                    stdin,
                    report,
                } => {
                    drop(stdin);
                    let r = tokio::time::timeout(Duration::from_secs(60), report).await;
                    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
                    match r {
                        Ok(Ok(Ok(r))) => reports.push(r),
                        other => {
                            let why = match other {
                                Err(_) => "no report within 60 s".to_string(),
                                Ok(Err(e)) => e.to_string(),
                                Ok(Ok(Err(e))) => e,
                                Ok(Ok(Ok(_))) => unreachable!("matched above"),
                            };
                            // How it ended says what no line on its stderr may: a kill by the
                            // kernel (out of memory) leaves none.
                            let ended = match status {
                                Ok(Ok(st)) => format!("; it ended with {st}"),
                                _ => "; it did not end within 10 s".into(),
                            };
                            lost.push(format!("worker process {i}: {why}{ended}"));
                        }
                    }
                }
            }
        }
        if !lost.is_empty() {
            return Err(lost.join("; "));
        }
        let mut merged = FleetReport::merge(reports, self.interval)?;
        if local {
            merged.cpu_s += crate::own_cpu();
            merged.rss_bytes += crate::proc_rss("self");
        }
        Ok(merged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_reconnection_moves_on_past_the_dead_node() {
        assert_eq!(retry(1, 0, None, 1).0, 0, "alone: the same node again");
        assert_eq!(retry(3, 0, Some(1), 1).0, 2, "node 1 is dead: node 2");
        assert_eq!(
            retry(3, 2, Some(0), 1).0 % 3,
            1,
            "past the end, node 0 is dead: node 1"
        );
        assert_eq!(
            retry(2, 1, Some(0), 1).0 % 2,
            0,
            "two nodes: the other is all there is"
        );
        let p = retry(3, 0, None, 1).1;
        assert!(
            (Duration::from_millis(750)..=Duration::from_millis(1500)).contains(&p),
            "{p:?}"
        );
    }

    #[test]
    fn stamps_are_found_whole_wherever_they_are() {
        let text = br#"{"body":"@t=123@r=4@ padding"} *3 $7 message @t=99@r=5@ @t=7"#;
        assert_eq!(stamps(text), vec![(123, 4), (99, 5)]);
        assert!(stamps(b"no stamp here").is_empty());
        let s = stamp(9);
        let found = stamps(s.as_bytes());
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].1, 9);
    }

    #[test]
    fn slices_cover_every_terminal_once() {
        let s = slices(10, 9_851, 3);
        assert_eq!(s.iter().map(|(_, n)| n).sum::<usize>(), 9_851);
        assert_eq!(s[0].0, 10);
        for w in s.windows(2) {
            assert_eq!(w[0].0 + w[0].1, w[1].0);
        }
        assert_eq!(slices(0, 2, 5).len(), 2);
    }

    #[test]
    fn reports_merge_rounds_counts_and_histograms() {
        let mut a = FleetReport::default();
        let mut b = FleetReport::default();
        let (mut ha, mut hb) = (histogram(), histogram());
        ha.record(1000).unwrap();
        hb.record(3000).unwrap();
        a.connect = encode_histogram(&ha);
        b.connect = encode_histogram(&hb);
        for r in [&mut a, &mut b] {
            r.reconnect = encode_histogram(&histogram());
            r.measured = encode_histogram(&histogram());
        }
        a.connected = 2;
        b.connected = 3;
        a.rounds.insert(
            0,
            Round {
                received: 2,
                first_us: 500,
                last_us: 900,
            },
        );
        b.rounds.insert(
            0,
            Round {
                received: 3,
                first_us: 400,
                last_us: 800,
            },
        );
        a.notices_per_terminal.insert(1, 2);
        b.notices_per_terminal.insert(1, 2);
        b.notices_per_terminal.insert(2, 1);
        let m = FleetReport::merge(vec![a, b], Duration::from_secs(1)).unwrap();
        assert_eq!(m.connected, 5);
        let r = m.rounds[&0];
        assert_eq!((r.received, r.first_us, r.last_us), (5, 400, 900));
        assert_eq!(m.connect_histogram().len(), 2);
        assert_eq!(m.terminals_without_exactly(1), 1);
    }
}

//! `loadtest connect`: open every terminal of the org tree with a real credential, hold them with
//! heartbeats, and measure what the issue asks: time to connect and authenticate all of them, the
//! hub's memory per idle terminal, the hub's CPU for heartbeats, and presence-change-to-console
//! latency at the city console.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use gridhub::auth::{Authority, Role};
use gridhub::org::{NodeIdx, Org};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

use crate::hubstats::{HubStats, scrape};
use crate::terminal::{Cmd, HoldStats, hold, open};
use crate::{Machine, Percentiles, Target, histogram, record};

#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// How many terminals, taken in org order after the city (default: all 9,851).
    pub terminals: usize,
    /// Handshakes in flight at once.
    pub concurrency: usize,
    /// How long to hold all terminals with heartbeats (the CPU window).
    pub hold: Duration,
    /// Heartbeat interval; `None` uses the one the hub announces in `hello`.
    pub heartbeat: Option<Duration>,
    /// Presence changes sent for the latency measurement, and their rate per second.
    pub presence_changes: usize,
    pub presence_rate: u32,
    /// Pause before reading the hub's RSS, so allocations settle.
    pub settle: Duration,
    /// Presence changes per second during the hold (terminals cycling online → busy → away),
    /// for watching a console under a live city; 0 holds quietly (the heartbeat CPU figure).
    pub churn_rate: u32,
}

#[derive(Debug, Serialize)]
pub struct PresenceFigures {
    pub changes: usize,
    pub received: u64,
    pub lost: usize,
    pub rate_per_sec: u32,
    pub latency: Percentiles,
}

#[derive(Debug, Serialize)]
pub struct Targets {
    pub connect_under_5s: bool,
    pub rss_per_terminal_at_most_6kb: bool,
    pub heartbeat_cpu_under_5_percent: bool,
    pub presence_p99_under_50ms: bool,
}

#[derive(Debug, Serialize)]
pub struct ConnectSummary {
    pub scenario: &'static str,
    pub machine: Machine,
    pub terminals: usize,
    pub connected: usize,
    pub failed: usize,
    pub first_errors: Vec<String>,
    pub concurrency: usize,
    /// From the first connect to the last `hello`: all terminals connected and authenticated.
    pub connect_wall_s: f64,
    pub connect_latency: Percentiles,
    pub hub_idle: HubStats,
    pub hub_connected: HubStats,
    pub hub_after_hold: HubStats,
    pub hub_after_close: HubStats,
    /// (RSS with all connected − RSS with none) / connected.
    pub rss_per_terminal_bytes: f64,
    pub hold_s: f64,
    pub heartbeat_interval_ms: u64,
    pub heartbeats_sent: u64,
    pub heartbeat_replies: u64,
    /// Hub CPU seconds during the hold ÷ hold seconds, as a percentage of one core.
    pub heartbeat_cpu_percent: f64,
    pub closed_by_hub: usize,
    pub presence: PresenceFigures,
    pub targets: Targets,
    /// The same number of clients connecting to a `redis-server` the harness started, with the
    /// same concurrency and pinning (`--baseline redis`).
    pub baseline: Option<Baseline>,
}

#[derive(Debug, Serialize)]
pub struct Baseline {
    pub server: &'static str,
    pub connected: u64,
    pub connect_wall_s: f64,
    pub connect_latency: Percentiles,
    /// gridhub's time to connect all ÷ the baseline's.
    pub ratio: f64,
}

/// Connects `n` Redis pub/sub subscribers (TCP connect and SUBSCRIBE confirmed) the way the
/// hub's terminals connect (TCP, upgrade, credential, hello): the floor a server's accept path
/// sets on this machine.
pub async fn redis_baseline(
    ctx: &crate::run::RunCtx,
    n: usize,
    server_cpu: Option<usize>,
    hub_wall_s: f64,
) -> Result<Baseline, String> {
    let server = crate::redis::RedisServer::start(server_cpu).await?;
    let backend = crate::fleet::Backend::Redis {
        addr: server.addr,
        channel: "gridhub-connect".into(),
    };
    let fleet = ctx.fleet(backend, 0, n, false).await?;
    let wall = ctx.connected(&fleet, n as u64, "Redis clients").await?;
    let r = fleet.finish().await?;
    server.stop().await;
    Ok(Baseline {
        server: "redis-server",
        connected: r.connected,
        connect_wall_s: wall,
        connect_latency: Percentiles::of(&r.connect_histogram()),
        ratio: hub_wall_s / wall.max(1e-9),
    })
}

/// Dispatchable terminals in org order (everything below the city), with their default role.
pub fn terminals(org: &Org, n: usize) -> Vec<(String, Role)> {
    org.nodes()
        .skip(1)
        .take(n)
        .map(|(_, node)| (node.id.to_string(), Role::default_for(node.tier)))
        .collect()
}

pub async fn run(
    target: &Target,
    org: &Org,
    opts: &ConnectOptions,
) -> Result<ConnectSummary, String> {
    let auth = Authority::new(&target.secret)?;
    let now = gridhub::clock::now_ms() / 1000;
    let ttl = 24 * 3600;
    let list = terminals(org, opts.terminals);
    let tokens: Vec<String> = list
        .iter()
        .map(|(id, role)| {
            auth.mint(org, id, *role, ttl, now)
                .map_err(|e| e.to_string())
        })
        .collect::<Result<_, _>>()?;

    tokio::time::sleep(opts.settle).await;
    let hub_idle = scrape(target.addr).await?;

    // Connect phase.
    let sem = Arc::new(Semaphore::new(opts.concurrency.max(1)));
    let t0 = Instant::now();
    let mut set = JoinSet::new();
    for (i, token) in tokens.into_iter().enumerate() {
        let (sem, target) = (Arc::clone(&sem), target.clone());
        set.spawn(async move {
            // The semaphore is never closed.
            let _permit = sem.acquire_owned().await.expect("semaphore open");
            (i, open(&target, &token).await)
        });
    }
    let mut opened = Vec::with_capacity(list.len());
    let mut lat = histogram();
    let mut errors = Vec::new();
    let mut failed = 0;
    while let Some(joined) = set.join_next().await {
        let (i, r) = joined.map_err(|e| e.to_string())?;
        match r {
            Ok(o) => {
                record(&mut lat, o.took);
                opened.push((i, o));
            }
            Err(e) => {
                failed += 1;
                if errors.len() < 10 {
                    errors.push(format!("{}: {e}", list[i].0));
                }
            }
        }
    }
    let connect_wall = t0.elapsed();
    let connected = opened.len();

    // Hold phase: every terminal heartbeats on its own schedule, phases spread evenly.
    let announced = opened
        .first()
        .and_then(|(_, o)| o.hello["data"]["heartbeat"]["interval_ms"].as_u64())
        .unwrap_or(20_000);
    let interval = opts.heartbeat.unwrap_or(Duration::from_millis(announced));
    let stop = CancellationToken::new();
    let mut holders = JoinSet::new();
    let mut senders: Vec<(String, mpsc::Sender<Cmd>)> = Vec::with_capacity(connected);
    for (k, (i, o)) in opened.into_iter().enumerate() {
        let (tx, rx) = mpsc::channel(4);
        let phase = interval.mul_f64(k as f64 / connected.max(1) as f64);
        holders.spawn(hold(o.ws, interval, phase, rx, stop.clone()));
        senders.push((list[i].0.clone(), tx));
    }
    tokio::time::sleep(opts.settle).await;
    let hub_connected = scrape(target.addr).await?;
    if opts.churn_rate == 0 {
        tokio::time::sleep(opts.hold).await;
    } else {
        churn(&senders, opts.churn_rate, opts.hold).await;
    }
    let hub_after_hold = scrape(target.addr).await?;
    let cpu = (hub_after_hold.cpu_seconds - hub_connected.cpu_seconds) / opts.hold.as_secs_f64();

    let presence = presence_latency(target, org, &auth, &senders, opts).await?;

    stop.cancel();
    drop(senders);
    let mut held = HoldStats::default();
    let mut closed_by_hub = 0;
    while let Some(j) = holders.join_next().await {
        let s = j.map_err(|e| e.to_string())?;
        held.pings += s.pings;
        held.replies += s.replies;
        if s.closed_by_hub.is_some() {
            closed_by_hub += 1;
        }
    }
    tokio::time::sleep(opts.settle).await;
    let hub_after_close = scrape(target.addr).await?;

    let rss_per = (hub_connected.rss_bytes - hub_idle.rss_bytes) / connected.max(1) as f64;
    let connect_latency = Percentiles::of(&lat);
    Ok(ConnectSummary {
        scenario: "connect",
        machine: Machine::read(),
        terminals: list.len(),
        connected,
        failed,
        first_errors: errors,
        concurrency: opts.concurrency,
        connect_wall_s: connect_wall.as_secs_f64(),
        connect_latency,
        hub_idle,
        hub_connected,
        hub_after_hold,
        hub_after_close,
        rss_per_terminal_bytes: rss_per,
        hold_s: opts.hold.as_secs_f64(),
        heartbeat_interval_ms: interval.as_millis() as u64,
        heartbeats_sent: held.pings,
        heartbeat_replies: held.replies,
        heartbeat_cpu_percent: cpu * 100.0,
        closed_by_hub,
        targets: Targets {
            connect_under_5s: failed == 0 && connect_wall.as_secs_f64() < 5.0,
            rss_per_terminal_at_most_6kb: rss_per <= 6_000.0,
            heartbeat_cpu_under_5_percent: cpu * 100.0 < 5.0,
            presence_p99_under_50ms: presence.lost == 0
                && presence.received > 0
                && presence.latency.p99_ms < 50.0,
        },
        presence,
        baseline: None,
    })
}

/// Changes terminals' status at `rate` per second for `until`, spread over the tree: a stride
/// coprime with the count visits every terminal before any twice.
async fn churn(senders: &[(String, mpsc::Sender<Cmd>)], rate: u32, until: Duration) {
    const SET: [&str; 3] = [
        r#"{"v":1,"type":"presence.set","data":{"status":"busy"}}"#,
        r#"{"v":1,"type":"presence.set","data":{"status":"away"}}"#,
        r#"{"v":1,"type":"presence.set","data":{"status":"online"}}"#,
    ];
    let n = senders.len();
    if n == 0 {
        return;
    }
    let stride = stride_for(n);
    let end = Instant::now() + until;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    let mut k = 0usize;
    while Instant::now() < end {
        tick.tick().await;
        let (_, tx) = &senders[(k * stride) % n];
        let msg = Utf8Bytes::from_static(SET[(k / n) % SET.len()]);
        // A terminal whose queue is full skips this change rather than hold the others back.
        let _ = tx.try_send(Cmd::Send(msg));
        k += 1;
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The churn's stride: coprime with `n`, so `k * stride % n` visits every terminal once per `n`.
pub fn stride_for(n: usize) -> usize {
    (1..n)
        .rev()
        .find(|s| gcd(*s, n) == 1 && *s < n / 2)
        .unwrap_or(1)
}

/// A city console subscribes to the whole city; terminals change status one by one at a steady
/// rate; each change is timed from just before it is sent to the delta naming it.
async fn presence_latency(
    target: &Target,
    org: &Org,
    auth: &Authority,
    senders: &[(String, mpsc::Sender<Cmd>)],
    opts: &ConnectOptions,
) -> Result<PresenceFigures, String> {
    let changes = opts.presence_changes.min(senders.len());
    let mut fig = PresenceFigures {
        changes,
        received: 0,
        lost: 0,
        rate_per_sec: opts.presence_rate,
        latency: Percentiles::default(),
    };
    if changes == 0 {
        return Ok(fig);
    }
    let root = org.id(NodeIdx(0)).to_string();
    let now = gridhub::clock::now_ms() / 1000;
    let token = auth
        .mint(org, &root, Role::Operator, 3600, now)
        .map_err(|e| e.to_string())?;
    let mut console = open(target, &token).await?.ws;
    console
        .send(Message::text(format!(
            r#"{{"v":1,"id":"wall","type":"presence.subscribe","data":{{"node":"{root}"}}}}"#
        )))
        .await
        .map_err(|e| e.to_string())?;
    // Wait for the snapshot before changing anything.
    loop {
        match tokio::time::timeout(Duration::from_secs(30), console.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.contains(r#""re":"wall""#) => break,
            Ok(Some(Ok(_))) => {}
            other => return Err(format!("console subscribe failed: {other:?}")),
        }
    }

    let track = Arc::new(Mutex::new(Tracker {
        pending: HashMap::new(),
        hist: histogram(),
    }));
    let reader_track = Arc::clone(&track);
    let reader = tokio::spawn(async move {
        while let Some(Ok(m)) = console.next().await {
            let Message::Text(t) = m else { continue };
            let Ok(v) = serde_json::from_str::<Value>(&t) else {
                continue;
            };
            if v["type"] != "presence.delta" {
                continue;
            }
            let arrived = Instant::now();
            let mut tr = reader_track.lock().unwrap_or_else(|e| e.into_inner());
            for e in v["data"]["endpoints"].as_array().into_iter().flatten() {
                if e["status"] != "busy" {
                    continue;
                }
                if let Some(sent) = e["id"].as_str().and_then(|id| tr.pending.remove(id)) {
                    record(&mut tr.hist, arrived - sent);
                }
            }
        }
    });

    // A text no churn sets, so the change is a change even for a terminal the churn left busy
    // (which would otherwise send no delta and be counted lost).
    let set = Utf8Bytes::from_static(
        r#"{"v":1,"type":"presence.set","data":{"status":"busy","text":"presence check"}}"#,
    );
    let period = Duration::from_secs_f64(1.0 / opts.presence_rate.max(1) as f64);
    let mut tick = tokio::time::interval(period);
    // Spread the changed terminals over the whole tree.
    let stride = (senders.len() / changes).max(1);
    for k in 0..changes {
        tick.tick().await;
        let (id, tx) = &senders[(k * stride) % senders.len()];
        lock(&track).pending.insert(id.clone(), Instant::now());
        let _ = tx.send(Cmd::Send(set.clone())).await;
    }
    // Give the last deltas time to arrive.
    for _ in 0..100 {
        if lock(&track).pending.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    reader.abort();
    let tr = lock(&track);
    fig.lost = tr.pending.len();
    fig.received = tr.hist.len();
    fig.latency = Percentiles::of(&tr.hist);
    Ok(fig)
}

struct Tracker {
    /// Terminal id → when its change was sent.
    pending: HashMap<String, Instant>,
    hist: hdrhistogram::Histogram<u64>,
}

fn lock(t: &Mutex<Tracker>) -> std::sync::MutexGuard<'_, Tracker> {
    // The reader never panics while holding the lock; a poisoned one still has valid data.
    t.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The churn spreads its changes: every terminal once per round, and each change far from
    /// the one before in the tree (a stride of about half the terminals, not 1).
    #[test]
    fn the_churn_visits_every_terminal_before_any_twice() {
        for n in [1, 2, 7, 300, 9_851] {
            let s = stride_for(n);
            let seen: std::collections::HashSet<usize> = (0..n).map(|k| k * s % n).collect();
            assert_eq!(seen.len(), n, "n = {n}, stride {s}");
            if n >= 7 {
                assert!(s > n / 4 && s < n / 2, "n = {n}, stride {s}");
            }
        }
    }

    /// The harness against an in-process hub: every terminal connects, heartbeats are answered,
    /// every presence change reaches the console, and the hub's figures are read.

    #[tokio::test]
    async fn connect_scenario_runs_end_to_end() {
        let hub = crate::testhub::TestHub::start("connect", |_| {}).await;
        let opts = ConnectOptions {
            terminals: 300,
            concurrency: 64,
            hold: Duration::from_millis(1500),
            heartbeat: Some(Duration::from_millis(200)),
            presence_changes: 100,
            presence_rate: 500,
            settle: Duration::from_millis(100),
            churn_rate: 0,
        };
        let s = run(&hub.target, &hub.org, &opts).await.unwrap();
        assert_eq!((s.connected, s.failed), (300, 0), "{:?}", s.first_errors);
        assert!(s.heartbeats_sent >= 300 && s.heartbeat_replies > 0);
        assert_eq!(s.closed_by_hub, 0);
        assert_eq!((s.presence.received, s.presence.lost), (100, 0));
        assert!(s.hub_connected.rss_bytes > 0.0 && s.hub_connected.connections >= 300.0);
        assert!(s.connect_latency.count == 300);
        hub.stop().await;
    }

    #[test]
    fn non_loopback_targets_are_refused() {
        let e = Target::new("10.1.2.3:8080".parse().unwrap(), vec![], false).unwrap_err();
        assert!(e.contains("--allow-remote"));
        assert!(Target::new("127.0.0.9:8080".parse().unwrap(), vec![], false).is_ok());
    }
}

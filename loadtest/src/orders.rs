//! `loadtest orders`: a year of Jiamusi replayed. 320,944 orders taken in at the city, each
//! dispatched down every tier to a grid worker, acknowledged, resolved, reviewed back up by every
//! tier, rated, published and archived — except 8,293 that stay in progress at their workers, as
//! in the seed. Every terminal of the city is connected and acts as its tier would, driven only by
//! what the hub pushes to it. At the end the hub's statistics must match the seed exactly.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use gridhub::auth::{Authority, Role};
use gridhub::org::{NodeIdx, Org, Tier};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::hubstats::{HubStats, http_get, scrape};
use crate::terminal::{Ws, open};
use crate::{ErrorLog, Machine, Percentiles, Target, histogram, record};

#[derive(Clone, Debug)]
pub struct OrdersOptions {
    pub orders: usize,
    /// Orders left in progress at their workers (acknowledged, never reported).
    pub in_progress: usize,
    /// Orders in flight at once (created, not yet archived).
    pub window: usize,
    pub concurrency: usize,
    /// Spread the terminals over these nodes of one hub, one after another (empty: every
    /// terminal on the target); statistics are read from the target.
    pub nodes: Vec<std::net::SocketAddr>,
}

#[derive(Debug, Serialize)]
pub struct OrdersSummary {
    pub scenario: &'static str,
    pub machine: Machine,
    pub terminals: usize,
    pub orders: usize,
    pub kept_in_progress: usize,
    pub window: usize,
    /// First create to the last order settled (all archived or parked in progress).
    pub wall_s: f64,
    pub transitions_per_s: f64,
    pub transitions: u64,
    pub errors: u64,
    pub first_errors: Vec<String>,
    /// Terminals whose connection ended during the run.
    pub terminals_lost: u64,
    /// Dispatch sent by the dispatcher → the order pushed to the new holder.
    pub dispatch_push_latency: Percentiles,
    pub hub_before: HubStats,
    pub hub_after: HubStats,
    pub hub_cpu_s: f64,
    /// This load generator's CPU seconds during the replay.
    pub loadtest_cpu_s: f64,
    /// Share of the machine's CPU time left idle during the replay.
    pub machine_idle_percent: f64,
    pub store_commits: f64,
    pub stats: serde_json::Value,
    pub targets: OrdersTargets,
}

/// The seed's year: 320,944 requests, 8,293 still in progress at its end.
pub const SEED_ORDERS: usize = 320_944;
pub const SEED_IN_PROGRESS: usize = 8_293;

/// Each verdict tests one thing.
#[derive(Debug, Serialize)]
pub struct OrdersTargets {
    /// The seed's whole year replayed in under 2 minutes; `None` for a part of the year, about
    /// which the target says nothing.
    pub year_under_2_minutes: Option<bool>,
    /// The hub's counts are exactly what was replayed (for the whole year, the seed's).
    pub counts_match: bool,
    pub no_errors: bool,
    pub dispatch_push_p99_under_20ms: bool,
}

/// What a bot reads from a pushed order.
#[derive(Deserialize)]
struct Pushed {
    id: u64,
    state: String,
    description: String,
    location: PushedPlace,
}

#[derive(Deserialize)]
struct PushedPlace {
    node: String,
}

#[derive(Deserialize)]
struct OutboxData {
    kind: String,
    order: Pushed,
}

/// The envelope, borrowing from the frame; `data` is parsed only when it matters, into the
/// few typed fields the bots read (no JSON tree is built).
#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    seq: Option<u64>,
    #[serde(borrow)]
    re: Option<&'a str>,
    #[serde(borrow)]
    data: Option<&'a serde_json::value::RawValue>,
}

#[derive(Deserialize)]
struct Created {
    order: CreatedOrder,
}

#[derive(Deserialize)]
struct CreatedOrder {
    id: u64,
    location: PushedPlace,
}

/// Shared between all bots.
struct Shared {
    org: Arc<Org>,
    /// order id → when its latest dispatch was sent.
    dispatched_at: Mutex<HashMap<u64, Instant>>,
    latency: Mutex<hdrhistogram::Histogram<u64>>,
    transitions: AtomicU64,
    errors: ErrorLog,
    /// Orders archived (the city's last step) — the driver's progress.
    archived: AtomicU64,
    /// Orders parked in progress at their worker.
    parked: AtomicU64,
    /// Terminals whose connection ended before the run did (closed by the hub, or failed).
    lost: AtomicU64,
    first_lost: Mutex<Option<String>>,
}

/// Longest a bot waits before acknowledging what it received.
const ACK_EVERY: Duration = Duration::from_millis(250);
/// Bots heartbeat at this interval (the hub's default timeout is three times longer).
const HEARTBEAT: Duration = Duration::from_secs(20);
const PING: &str = r#"{"v":1,"type":"ping"}"#;

const CATEGORIES: [&str; 12] = [
    "noise",
    "waterlogging",
    "sanitation",
    "roads",
    "public_order",
    "government_service",
    "heating",
    "utilities",
    "property",
    "epidemic",
    "dispute",
    "other",
];

/// Which orders stay in progress: `keep` of `n`, spread evenly.
fn kept(i: usize, n: usize, keep: usize) -> bool {
    (i + 1) * keep / n > i * keep / n
}

/// One terminal's bot: reads what the hub pushes and does what its tier does.
async fn bot(ws: Ws, me: NodeIdx, shared: Arc<Shared>, stop: CancellationToken) {
    if let Err(why) = bot_loop(ws, me, &shared, &stop).await
        && !stop.is_cancelled()
    {
        shared.lost.fetch_add(1, Relaxed);
        let mut f = shared.first_lost.lock().unwrap_or_else(|e| e.into_inner());
        f.get_or_insert_with(|| format!("{}: {why}", shared.org.id(me)));
    }
}

async fn bot_loop(
    mut ws: Ws,
    me: NodeIdx,
    shared: &Shared,
    stop: &CancellationToken,
) -> Result<(), String> {
    let org = Arc::clone(&shared.org);
    let tier = org.tier(me);
    let mut acked = 0u64;
    let mut seen = 0u64;
    // A terminal heartbeats like any other, or an idle one would be closed (4000).
    let mut beat = tokio::time::interval(HEARTBEAT);
    beat.tick().await;
    // Receipts: what arrived is acknowledged within a quarter second, or every 64 messages.
    let mut receipt = tokio::time::interval(ACK_EVERY);
    loop {
        let first = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = beat.tick() => {
                ws.send(Message::text(PING)).await.map_err(|e| e.to_string())?;
                continue;
            }
            _ = receipt.tick(), if seen > acked => {
                ws.send(Message::text(format!(r#"{{"v":1,"type":"outbox.ack","data":{{"seq":{seen}}}}}"#)))
                    .await
                    .map_err(|e| e.to_string())?;
                acked = seen;
                continue;
            }
            m = ws.next() => m,
        };
        let mut batch = vec![first];
        // Everything already arrived is handled before one flush.
        while let Some(Some(m)) = futures_util::FutureExt::now_or_never(ws.next()) {
            batch.push(Some(m));
            if batch.len() >= 256 {
                break;
            }
        }
        let mut out: Vec<String> = Vec::new();
        for m in batch {
            let text = match m {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Close(f))) => return Err(crate::why_closed(f.as_ref())),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err(crate::why_closed(None)),
            };
            let Ok(msg) = serde_json::from_str::<Incoming>(&text) else {
                continue;
            };
            match msg.kind {
                "error" => {
                    if let Some(why) = crate::refused_for_pace(&text) {
                        return Err(why);
                    }
                    shared.errors.record(&text)
                }
                "outbox" => {
                    seen = seen.max(msg.seq.unwrap_or(0));
                    let Some(data) = msg.data else { continue };
                    let Ok(d) = serde_json::from_str::<OutboxData>(data.get()) else {
                        continue;
                    };
                    if d.kind != "order.assigned" {
                        continue;
                    }
                    act(&org, me, tier, &d.order, shared, &mut out);
                }
                _ => {}
            }
        }
        send_all(&mut ws, out, seen, &mut acked).await?;
        ws.flush().await.map_err(|e| e.to_string())?;
    }
}

/// Queues `out`, with an acknowledgement once 64 messages have arrived since the last one.
async fn send_all(
    ws: &mut Ws,
    mut out: Vec<String>,
    seen: u64,
    acked: &mut u64,
) -> Result<(), String> {
    if seen >= *acked + 64 {
        out.push(format!(
            r#"{{"v":1,"type":"outbox.ack","data":{{"seq":{seen}}}}}"#
        ));
        *acked = seen;
    }
    for text in out {
        ws.feed(Message::text(text))
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The tier's response to an order it was given. Requests go without an id: notifications,
/// answered only if they fail.
fn act(org: &Org, me: NodeIdx, tier: Tier, o: &Pushed, shared: &Shared, out: &mut Vec<String>) {
    let id = o.id;
    match o.state.as_str() {
        "dispatched" => {
            if let Some(sent) = shared
                .dispatched_at
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id)
            {
                record(
                    &mut shared.latency.lock().unwrap_or_else(|e| e.into_inner()),
                    sent.elapsed(),
                );
            }
            if tier == Tier::Worker {
                out.push(format!(
                    r#"{{"v":1,"type":"order.acknowledge","data":{{"order":{id}}}}}"#
                ));
                shared.transitions.fetch_add(1, Relaxed);
                if o.description.ends_with(" keep") {
                    shared.parked.fetch_add(1, Relaxed);
                } else {
                    out.push(format!(
                        r#"{{"v":1,"type":"order.report","data":{{"order":{id},"result":"已处理完毕，居民确认"}}}}"#
                    ));
                    shared.transitions.fetch_add(1, Relaxed);
                }
            } else if let Some(loc) = org.lookup(&o.location.node)
                && let Some(next) = org.child_toward(me, loc)
            {
                dispatch(org, shared, id, next, out);
            }
        }
        "result_reported" => {
            out.push(format!(
                r#"{{"v":1,"type":"order.review","data":{{"order":{id},"approve":true}}}}"#
            ));
            shared.transitions.fetch_add(1, Relaxed);
            if tier == Tier::City {
                // The city closes the loop: rate, publish, archive — pipelined, decided in order.
                out.push(format!(r#"{{"v":1,"type":"order.rate","data":{{"order":{id},"score":5,"satisfied":true}}}}"#));
                out.push(format!(
                    r#"{{"v":1,"type":"order.publish","data":{{"order":{id},"summary":"诉求已办结，群众满意"}}}}"#
                ));
                out.push(format!(
                    r#"{{"v":1,"type":"order.archive","data":{{"order":{id}}}}}"#
                ));
                shared.transitions.fetch_add(3, Relaxed);
                shared.archived.fetch_add(1, Relaxed);
            }
        }
        _ => {}
    }
}

fn dispatch(org: &Org, shared: &Shared, id: u64, to: NodeIdx, out: &mut Vec<String>) {
    shared
        .dispatched_at
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id, Instant::now());
    out.push(format!(
        r#"{{"v":1,"type":"order.dispatch","data":{{"order":{id},"to":"{}"}}}}"#,
        org.id(to)
    ));
    shared.transitions.fetch_add(1, Relaxed);
}

/// The city: takes in every order (keeping `window` in flight), dispatches each to its county,
/// and acts as a bot for what comes back up.
async fn city(
    mut ws: Ws,
    me: NodeIdx,
    shared: Arc<Shared>,
    opts: OrdersOptions,
    workers: Vec<NodeIdx>,
) -> Result<(), String> {
    let org = Arc::clone(&shared.org);
    let n = opts.orders;
    let keep = opts.in_progress.min(n);
    let mut next = 0usize;
    let mut acked = 0u64;
    let mut seen = 0u64;
    let mut kept_created = 0u64;
    loop {
        // Keep the window full: in flight = created − archived − kept.
        let mut out: Vec<String> = Vec::new();
        let in_flight = next as u64 - shared.archived.load(Relaxed) - kept_created;
        let room = (opts.window as u64).saturating_sub(in_flight);
        for _ in 0..room.min(512) {
            if next >= n {
                break;
            }
            let i = next;
            next += 1;
            let keep_it = kept(i, n, keep);
            if keep_it {
                kept_created += 1;
            }
            let w = workers[(i * 7919) % workers.len()];
            let cat = CATEGORIES[i % CATEGORIES.len()];
            out.push(format!(
                r#"{{"v":1,"id":"c{i}","type":"order.create","data":{{"source":"hotline_12345","category":"{cat}","description":"市民来电反映问题 #{i}{}","location":{{"node":"{}"}},"priority":"routine","reporter":{{"name":"王女士","phone":"13900000000"}}}}}}"#,
                if keep_it { " keep" } else { "" },
                org.id(w)
            ));
            shared.transitions.fetch_add(1, Relaxed);
        }
        if next >= n && shared.archived.load(Relaxed) + kept_created >= n as u64 {
            return Ok(());
        }
        for text in out.drain(..) {
            ws.feed(Message::text(text))
                .await
                .map_err(|e| e.to_string())?;
        }
        ws.flush().await.map_err(|e| e.to_string())?;
        let first = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .map_err(|_| "the city heard nothing for 30 s".to_string())?;
        let mut batch = vec![first];
        while let Some(Some(m)) = futures_util::FutureExt::now_or_never(ws.next()) {
            batch.push(Some(m));
            if batch.len() >= 512 {
                break;
            }
        }
        for m in batch {
            let text = match m {
                Some(Ok(Message::Text(t))) => t,
                // The hub's close frame says why; skipping it left only "ended: None".
                Some(Ok(Message::Close(f))) => {
                    return Err(format!(
                        "the city's connection: {}",
                        crate::why_closed(f.as_ref())
                    ));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(format!("the city's connection: {e}")),
                None => {
                    return Err(format!(
                        "the city's connection: {}",
                        crate::why_closed(None)
                    ));
                }
            };
            let Ok(msg) = serde_json::from_str::<Incoming>(&text) else {
                continue;
            };
            match msg.kind {
                "reply" if msg.re.is_some_and(|r| r.starts_with('c')) => {
                    // A create was committed: send it to the county towards its grid.
                    let Some(c) = msg
                        .data
                        .and_then(|d| serde_json::from_str::<Created>(d.get()).ok())
                    else {
                        continue;
                    };
                    let id = c.order.id;
                    if let Some(loc) = org.lookup(&c.order.location.node)
                        && let Some(county) = org.child_toward(me, loc)
                    {
                        dispatch(&org, &shared, id, county, &mut out);
                    }
                }
                "error" => {
                    if let Some(why) = crate::refused_for_pace(&text) {
                        return Err(why);
                    }
                    shared.errors.record(&text)
                }
                "outbox" => {
                    seen = seen.max(msg.seq.unwrap_or(0));
                    let Some(data) = msg.data else { continue };
                    let Ok(d) = serde_json::from_str::<OutboxData>(data.get()) else {
                        continue;
                    };
                    if d.kind == "order.assigned" {
                        act(&org, me, Tier::City, &d.order, &shared, &mut out);
                    }
                }
                _ => {}
            }
        }
        send_all(&mut ws, out, seen, &mut acked).await?;
    }
}

pub async fn run(
    target: &Target,
    org: Arc<Org>,
    opts: &OrdersOptions,
) -> Result<OrdersSummary, String> {
    let auth = Authority::new(&target.secret)?;
    let now = gridhub::clock::now_ms() / 1000;
    let hub_before = scrape(target.addr).await?;

    // Connect every terminal (the city too) and resume each outbox from the start.
    let nodes: Vec<NodeIdx> = org.nodes().map(|(i, _)| i).collect();
    let sem = Arc::new(tokio::sync::Semaphore::new(opts.concurrency.max(1)));
    let mut set = JoinSet::new();
    for (k, &n) in nodes.iter().enumerate() {
        let role = Role::default_for(org.tier(n));
        let token = auth
            .mint(&org, org.id(n).as_str(), role, 24 * 3600, now)
            .map_err(|e| e.to_string())?;
        let mut at = target.clone();
        if !opts.nodes.is_empty() {
            at.addr = opts.nodes[k % opts.nodes.len()];
        }
        let (sem, target) = (Arc::clone(&sem), at);
        set.spawn(async move {
            let _permit = sem.acquire_owned().await.expect("semaphore open");
            let mut o = open(&target, &token).await?;
            o.ws.send(Message::text(
                r#"{"v":1,"id":"r","type":"outbox.resume","data":{"after":0}}"#,
            ))
            .await
            .map_err(|e| e.to_string())?;
            loop {
                match o.ws.next().await {
                    Some(Ok(Message::Text(t))) if t.contains(r#""re":"r""#) => break,
                    Some(Ok(_)) => {}
                    other => return Err(format!("resume: {other:?}")),
                }
            }
            Ok::<_, String>((n, o.ws))
        });
    }
    let mut conns = HashMap::new();
    while let Some(j) = set.join_next().await {
        let (n, ws) = j.map_err(|e| e.to_string())??;
        conns.insert(n, ws);
    }
    let terminals = conns.len();

    let shared = Arc::new(Shared {
        org: Arc::clone(&org),
        dispatched_at: Mutex::new(HashMap::new()),
        latency: Mutex::new(histogram()),
        transitions: AtomicU64::new(0),
        errors: ErrorLog::default(),
        archived: AtomicU64::new(0),
        parked: AtomicU64::new(0),
        lost: AtomicU64::new(0),
        first_lost: Mutex::new(None),
    });
    let stop = CancellationToken::new();
    let root = org.root();
    let workers: Vec<NodeIdx> = nodes
        .iter()
        .copied()
        .filter(|&n| org.tier(n) == Tier::Worker)
        .collect();
    let mut bots = JoinSet::new();
    let city_ws = conns.remove(&root).ok_or("the city did not connect")?;
    for (n, ws) in conns {
        bots.spawn(bot(ws, n, Arc::clone(&shared), stop.clone()));
    }

    let t0 = Instant::now();
    let cpu0 = scrape(target.addr).await?.cpu_seconds;
    let (busy0, idle0) = crate::machine_cpu();
    let own0 = crate::own_cpu();
    if let Err(e) = city(city_ws, root, Arc::clone(&shared), opts.clone(), workers).await {
        let lost = shared
            .first_lost
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let n = shared.lost.load(Relaxed);
        let lost = if n == 0 {
            String::new()
        } else {
            format!(
                "; terminals lost: {n} (first: {})",
                lost.unwrap_or_default()
            )
        };
        return Err(format!("the replay stopped: {e}{lost}"));
    }
    // Parked orders settle at their workers; then the statistics must match.
    let keep = opts.in_progress.min(opts.orders) as u64;
    let expect_closed = opts.orders as u64 - keep;
    let mut stats = serde_json::Value::Null;
    let settle = Instant::now();
    loop {
        let (status, body) = http_get_auth(target, &auth, &org, "/api/v1/orders/stats").await?;
        if status == 200 {
            stats = serde_json::from_str(&body).map_err(|e| e.to_string())?;
            let in_progress_state = stats["by_state"]["in_progress"].as_u64().unwrap_or(0);
            if stats["closed"].as_u64() == Some(expect_closed) && in_progress_state == keep {
                break;
            }
        }
        if settle.elapsed() > Duration::from_secs(120) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let wall = t0.elapsed();
    let (busy1, idle1) = crate::machine_cpu();
    let own1 = crate::own_cpu();
    let hub_after = scrape(target.addr).await?;
    stop.cancel();
    while bots.join_next().await.is_some() {}

    let transitions = shared.transitions.load(Relaxed);
    let latency = Percentiles::of(&shared.latency.lock().unwrap_or_else(|e| e.into_inner()));
    let counts_match = stats["received"].as_u64() == Some(opts.orders as u64)
        && stats["closed"].as_u64() == Some(expect_closed)
        && stats["in_progress"].as_u64() == Some(keep);
    let (_, metrics) = http_get(target.addr, "/metrics").await?;
    let commits = metrics
        .lines()
        .find_map(|l| l.strip_prefix("gridhub_store_commits_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN);
    let errors = shared.errors.count();
    Ok(OrdersSummary {
        scenario: "orders",
        machine: Machine::read(),
        terminals,
        orders: opts.orders,
        kept_in_progress: keep as usize,
        window: opts.window,
        wall_s: wall.as_secs_f64(),
        transitions_per_s: transitions as f64 / wall.as_secs_f64(),
        transitions,
        errors,
        first_errors: shared.errors.first(),
        terminals_lost: shared.lost.load(Relaxed),
        dispatch_push_latency: latency,
        hub_cpu_s: hub_after.cpu_seconds - cpu0,
        loadtest_cpu_s: own1 - own0,
        machine_idle_percent: 100.0 * (idle1 - idle0)
            / ((busy1 - busy0) + (idle1 - idle0)).max(1e-9),
        hub_before,
        hub_after,
        store_commits: commits,
        targets: OrdersTargets {
            year_under_2_minutes: (opts.orders == SEED_ORDERS
                && opts.in_progress == SEED_IN_PROGRESS)
                .then_some(wall.as_secs_f64() < 120.0),
            counts_match,
            no_errors: errors == 0,
            dispatch_push_p99_under_20ms: latency.p99_ms < 20.0,
        },
        stats,
    })
}

/// GET with the city's credential.
async fn http_get_auth(
    target: &Target,
    auth: &Authority,
    org: &Org,
    path: &str,
) -> Result<(u16, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let now = gridhub::clock::now_ms() / 1000;
    let token = auth
        .mint(org, org.id(org.root()).as_str(), Role::Operator, 3600, now)
        .map_err(|e| e.to_string())?;
    let mut s = tokio::net::TcpStream::connect(target.addr)
        .await
        .map_err(|e| e.to_string())?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no header end")?;
    let status = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or("bad status")?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        crate::hubstats::dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small year against an in-process hub: every order goes the whole way, the kept ones
    /// stay in progress, and the statistics match exactly.
    #[tokio::test]
    async fn a_small_year_replays_exactly() {
        let hub = crate::testhub::TestHub::start("orders", |c| {
            // A year compressed into seconds: every center sends far more than a real one would.
            c.transport.rate_per_sec = 1_000_000;
            c.transport.rate_burst = 1_000_000;
        })
        .await;
        let opts = OrdersOptions {
            orders: 600,
            in_progress: 16,
            window: 200,
            concurrency: 256,
            nodes: Vec::new(),
        };
        let s = run(&hub.target, hub.org.clone(), &opts).await.unwrap();
        assert_eq!(s.errors, 0, "{:?}", s.first_errors);
        assert_eq!(s.terminals_lost, 0);
        // Every push was acknowledged: the delivery receipts are complete.
        let (_, m) = http_get(hub.target.addr, "/metrics").await.unwrap();
        assert!(m.contains("gridhub_order_transitions_total"));
        assert!(s.targets.counts_match, "{}", s.stats);
        // A part of the year: the year's time target says nothing about it.
        assert_eq!(s.targets.year_under_2_minutes, None);
        assert!(s.targets.counts_match && s.targets.no_errors);
        assert_eq!(s.stats["by_state"]["archived"], 584);
        assert_eq!(s.stats["by_state"]["in_progress"], 16);
        assert!(s.dispatch_push_latency.count >= 600 * 4 - 16);
        hub.stop().await;
    }

    #[test]
    fn the_kept_orders_are_exactly_the_seed_count_and_spread() {
        let n = 320_944;
        let k = (0..n).filter(|&i| super::kept(i, n, 8_293)).count();
        assert_eq!(k, 8_293);
        assert!(!super::kept(0, n, 8_293) || super::kept(38, n, 8_293));
    }
}

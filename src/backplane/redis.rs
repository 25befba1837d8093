//! Hub nodes joined through Redis: the link of a cluster of `gridhub serve` processes.
//!
//! What crosses is what `memory` carries, on Redis pub/sub: each node subscribes to its own
//! channel (`…:to:<hub>`) and to one every node hears (`…:all`). One task per node publishes,
//! pipelining what is waiting, from one connection, so a node's messages reach each other node
//! in the order sent — which is what makes a node's roster a consistent cut of its news.
//!
//! Who is in the cluster is leased: every `lease_ms / 3` a node renews its own key (`…:node:<hub>`
//! holding this process's instance id) and, if it runs the services, the owner key, and reads
//! which nodes hold a lease. A node whose lease ran out is gone: each node tells itself so
//! (`Inbound::Gone`), and the terminals it held go off line everywhere within `lease_ms` plus a
//! beat. The directory of who is where is kept by every node from the news, so a message to a
//! terminal costs no Redis read; what Redis holds of it is the leases that make it expire.
//!
//! Redis unreachable: the node says so (`/readyz`, `gridhub_link_up`), keeps serving its own
//! terminals, drops (and counts) what it would send, and once its lease would have run out
//! treats the other nodes as gone. When Redis answers again it takes its lease back, subscribes
//! again and says hello: every node sends it its roster and it sends its own to all, so every
//! directory is set right without replaying what was lost.
//!
//! One Redis server, or a Redis Cluster (`backplane.redis_cluster`). Every key shares one hash
//! tag (`{<cluster>}`), so all of them live in one slot: the link finds the master holding it
//! (`CLUSTER SLOTS`, asked of the configured node or any node listed since) and speaks only to
//! that master, as it would to a lone server. Its publishes reach every node of the Redis
//! Cluster; its subscription sits on the master, where the lease script counts it. When that
//! master is lost or demoted (a renewal fails, or is answered `MOVED`) the link asks again, and
//! its renewals, publishes and subscription follow the new master; the gap is closed by the same
//! hello as a lost Redis.

use std::collections::BTreeSet;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::memory::NODE_QUEUE;
use super::wire::Wire;
use super::{Inbound, JoinError, Joined, Link, LinkStatus};
use crate::telemetry::Metrics;
use crate::transport::dispatch::HubId;

/// Messages published per pipeline at most.
const BATCH: usize = 512;
/// How long start-up waits for Redis to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a command may take before Redis counts as unreachable.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a pipeline of publishes may take before it counts as failed.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
const NO_OWNER: u32 = u32::MAX;

/// Where a node finds the others.
#[derive(Clone, Debug)]
pub struct Settings {
    pub url: String,
    /// `url` names a node of a Redis Cluster, not a lone server.
    pub redis_cluster: bool,
    /// Names the cluster in every key and channel: several clusters may share one Redis.
    pub cluster: String,
    /// How long a node's lease lasts without renewal: a dead node's terminals go off line
    /// within this (plus one renewal period).
    pub lease_ms: u64,
}

struct Keys {
    node_prefix: String,
    node: String,
    owner: String,
    tree: String,
    nodes: String,
    all: String,
    to_prefix: String,
    ticket_prefix: String,
}

impl Keys {
    fn new(cluster: &str, me: HubId) -> Keys {
        let base = format!("gridhub:{{{cluster}}}");
        Keys {
            node_prefix: format!("{base}:node:"),
            node: format!("{base}:node:{}", me.0),
            owner: format!("{base}:owner"),
            tree: format!("{base}:tree"),
            nodes: format!("{base}:nodes"),
            all: format!("{base}:all"),
            to_prefix: format!("{base}:to:"),
            ticket_prefix: format!("{base}:ticket:"),
        }
    }

    fn to(&self, hub: HubId) -> String {
        format!("{}{}", self.to_prefix, hub.0)
    }
}

/// Renews a lease held by `value` (1), takes it if free (2: held by nobody a moment ago), or
/// finds it held by another (0). The org tree's first: a node with another tree takes nothing.
/// Then reads who holds a lease, and how many listen on this node's channel. Returns {node
/// lease, tree lease, owner lease, owner, their tree, alive, subscribers}.
const BEAT: &str = r#"
local function lease(k, v, ms)
  local cur = redis.call('GET', k)
  if cur == v then redis.call('PEXPIRE', k, ms) return 1 end
  if not cur then redis.call('SET', k, v, 'PX', ms) return 2 end
  return 0
end
local ms = tonumber(ARGV[3])
local tree = lease(KEYS[3], ARGV[4], ms * 10)
if tree == 0 then
  return {0, 0, 0, '', redis.call('GET', KEYS[3]) or '', {}, 0}
end
local mine = lease(KEYS[1], ARGV[2], ms)
local owned = 0
if ARGV[5] == '1' and mine > 0 then owned = lease(KEYS[2], ARGV[1] .. '/' .. ARGV[2], ms) end
if mine > 0 then redis.call('SADD', KEYS[4], ARGV[1]) end
local alive = {}
for _, h in ipairs(redis.call('SMEMBERS', KEYS[4])) do
  if redis.call('EXISTS', ARGV[6] .. h) == 1 then
    table.insert(alive, h)
  else
    redis.call('SREM', KEYS[4], h)
  end
end
local owner = redis.call('GET', KEYS[2]) or ''
local listening = redis.call('PUBSUB', 'NUMSUB', ARGV[7])[2]
return {mine, tree, owned, owner, '', alive, listening}
"#;

/// Gives up the leases a node holds (graceful shutdown, or a refused start), only those that
/// are its own.
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[2] then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[3], ARGV[1])
end
if redis.call('GET', KEYS[2]) == ARGV[1] .. '/' .. ARGV[2] then redis.call('DEL', KEYS[2]) end
return 1
"#;

struct Beat {
    mine: bool,
    /// The node's lease was free a moment ago: others may have counted it gone.
    fresh: bool,
    tree: bool,
    owned: bool,
    owner: Option<HubId>,
    theirs: String,
    alive: BTreeSet<HubId>,
    /// Subscribers to this node's channel, as Redis counts them (0 while this node believes it
    /// is subscribed: the subscription is dead without having said so).
    listening: i64,
}

/// Where the link's connections go: the lone server, or the master holding the cluster's slot.
/// Replaced as a whole when a Redis Cluster's master changes.
#[derive(Clone)]
struct Route {
    /// `host:port`, for the logs and to tell whether a lookup found another master.
    addr: String,
    /// For the subscriber, which needs a connection of its own (a subscribed one sends nothing
    /// else).
    client: redis::Client,
    /// Renewals, tickets, the goodbye.
    conn: ConnectionManager,
    /// Publishes, on a connection of their own (see `join`).
    publishing: ConnectionManager,
}

impl Route {
    async fn open(addr: String, client: redis::Client, lease_ms: u64) -> Result<Route, String> {
        // A renewal not answered within a third of the lease is tried again (the lease must not
        // run out waiting on one lost answer); a timeout while the lease holds is slowness, not
        // a lost Redis (see `leases`).
        let answer_within = RESPONSE_TIMEOUT.min(Duration::from_millis(lease_ms / 3));
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(answer_within))
            .set_number_of_retries(1);
        // Without a server listening the manager keeps retrying: bound it.
        let connect = |config| async {
            tokio::time::timeout(
                CONNECT_TIMEOUT,
                ConnectionManager::new_with_config(client.clone(), config),
            )
            .await
            .map_err(|_| format!("{addr}: no answer within 5 s"))?
            .map_err(|e| format!("{addr}: {e}"))
        };
        // Leases on a connection of their own: a renewal never waits behind a backlog of
        // publishes (a burst of 100,000 terminals leaving), where it would time out and the
        // node be taken for dead while it works. Publishes may take longer than a renewal
        // before they count as failed: a slow pipeline is late, not lost.
        let (conn, publishing) = tokio::try_join!(
            connect(config.clone()),
            connect(config.set_response_timeout(Some(PUBLISH_TIMEOUT)))
        )?;
        Ok(Route {
            addr,
            client,
            conn,
            publishing,
        })
    }
}

/// Finds the server the link speaks to.
struct Locator {
    /// The lone server; in a Redis Cluster the first node named, whose credentials go to every
    /// node asked.
    seed: redis::Client,
    /// The Redis Cluster's nodes named in `redis_url` (several, comma-separated, so a node can
    /// join while one of them is down); none for a lone server.
    seeds: Vec<Node>,
    /// A key of this cluster: the hash tag puts every key in its slot.
    key: String,
    /// The Redis Cluster's nodes as last listed, asked too when the master is lost (the ones
    /// named may be the nodes that died).
    known: Mutex<Vec<Node>>,
}

/// A node of a Redis Cluster: host and port.
pub type Node = (String, u16);

impl Locator {
    fn redis_cluster(&self) -> bool {
        !self.seeds.is_empty()
    }

    fn client(&self, (host, port): &Node) -> redis::RedisResult<redis::Client> {
        let info = self
            .seed
            .get_connection_info()
            .clone()
            .set_addr(redis::ConnectionAddr::Tcp(host.clone(), *port));
        redis::Client::open(info)
    }

    /// The lone server; or the master now holding the cluster's slot, as the first node of the
    /// Redis Cluster to answer lists it. Every node is asked at once, so a dead or silent one
    /// costs nothing, and the whole lookup takes at most `RESPONSE_TIMEOUT`: the renewals wait
    /// on it.
    async fn locate(&self) -> Result<(String, redis::Client), String> {
        if !self.redis_cluster() {
            return Ok((
                self.seed.get_connection_info().addr().to_string(),
                self.seed.clone(),
            ));
        }
        let mut ask = self.seeds.clone();
        for n in self.known.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            if !ask.contains(n) {
                ask.push(n.clone());
            }
        }
        let mut asking: futures_util::stream::FuturesUnordered<_> = ask
            .iter()
            .map(|node| async move { (node, self.ask(node).await) })
            .collect();
        let mut why = Vec::new();
        let first = tokio::time::timeout(RESPONSE_TIMEOUT, async {
            while let Some((node, listed)) = asking.next().await {
                match listed {
                    Ok(found) => return Some(found),
                    Err(e) => why.push(format!("{}:{}: {e}", node.0, node.1)),
                }
            }
            None
        })
        .await;
        match first {
            Ok(Some((nodes, master))) => {
                *self.known.lock().unwrap_or_else(|e| e.into_inner()) = nodes;
                self.at(&master)
            }
            Ok(None) => Err(format!(
                "no node of the Redis Cluster names the master of the cluster's keys ({})",
                why.join("; ")
            )),
            Err(_) => Err(format!(
                "no node of the Redis Cluster named the master of the cluster's keys within {} s ({})",
                RESPONSE_TIMEOUT.as_secs(),
                why.join("; ")
            )),
        }
    }

    fn at(&self, node: &Node) -> Result<(String, redis::Client), String> {
        let client = self.client(node).map_err(|e| e.to_string())?;
        Ok((format!("{}:{}", node.0, node.1), client))
    }

    /// What `node` says: every node of the Redis Cluster, and the master of this cluster's slot.
    async fn ask(&self, node: &Node) -> Result<(Vec<Node>, Node), String> {
        let client = self.client(node).map_err(|e| e.to_string())?;
        let mut c = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| e.to_string())?;
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(&self.key)
            .query_async(&mut c)
            .await
            .map_err(|e| e.to_string())?;
        let slots: redis::Value = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut c)
            .await
            .map_err(|e| e.to_string())?;
        master_of(&slots, slot, &node.0)
    }
}

/// The nodes of a Redis Cluster named in `urls` (comma-separated `redis://host:port/`), and a
/// client for the first, whose credentials and database every node is asked with.
pub fn cluster_seeds(urls: &str) -> Result<(redis::Client, Vec<Node>), String> {
    let mut first = None;
    let mut seeds = Vec::new();
    for url in urls.split(',').map(str::trim) {
        let client = redis::Client::open(url).map_err(|e| format!("{url}: {e}"))?;
        let info = client.get_connection_info();
        match info.addr() {
            redis::ConnectionAddr::Tcp(host, port) => seeds.push((host.clone(), *port)),
            _ => {
                return Err(format!(
                    "{url}: a Redis Cluster is reached at redis://host:port/ (plain TCP; not a socket, not TLS)"
                ));
            }
        }
        if info.redis_settings().db() != 0 {
            return Err(format!(
                "{url}: a Redis Cluster has database 0 only (several hub clusters share it by backplane.cluster)"
            ));
        }
        first.get_or_insert(client);
    }
    let first = first.ok_or_else(|| "no Redis Cluster node named".to_string())?;
    Ok((first, seeds))
}

/// From a `CLUSTER SLOTS` answer (per range of slots: first, last, its master, its replicas;
/// per node: host, port, …): every node listed, and the master of `slot`. A node listed without
/// a host is reached at the host asked (`asked`), as Redis means it.
fn master_of(slots: &redis::Value, slot: i64, asked: &str) -> Result<(Vec<Node>, Node), String> {
    use redis::Value::{Array, BulkString, Int, Nil, SimpleString};
    // Redis lists a node it has no address for as NULL or "" (reach it where you asked), and
    // one whose preferred hostname is unset as "?" (unreachable by that name): kept as None.
    let node = |v: &redis::Value| -> Option<Option<Node>> {
        let Array(parts) = v else { return None };
        let host = match parts.first()? {
            BulkString(b) => String::from_utf8_lossy(b).into_owned(),
            SimpleString(h) => h.clone(),
            Nil => String::new(),
            _ => return None,
        };
        let Int(port) = parts.get(1)? else {
            return None;
        };
        let port = u16::try_from(*port).ok()?;
        Some(match host.as_str() {
            "?" => None,
            "" => Some((asked.to_owned(), port)),
            _ => Some((host, port)),
        })
    };
    let Array(ranges) = slots else {
        return Err(format!("CLUSTER SLOTS answered {slots:?}"));
    };
    let mut nodes: Vec<Node> = Vec::new();
    let mut master = None;
    for r in ranges {
        let Array(parts) = r else {
            return Err(format!("CLUSTER SLOTS answered a range {r:?}"));
        };
        let (Some(Int(first)), Some(Int(last))) = (parts.first(), parts.get(1)) else {
            return Err(format!("CLUSTER SLOTS answered a range {r:?}"));
        };
        for (i, n) in parts.iter().skip(2).enumerate() {
            let n = node(n).ok_or_else(|| format!("CLUSTER SLOTS answered a node {n:?}"))?;
            if i == 0 && (*first..=*last).contains(&slot) {
                master = Some(n.clone().ok_or_else(|| {
                    format!("the master of slot {slot} is listed by a hostname it has not set")
                })?);
            }
            if let Some(n) = n
                && !nodes.contains(&n)
            {
                nodes.push(n);
            }
        }
    }
    let master = master.ok_or_else(|| format!("no master serves slot {slot}"))?;
    Ok((nodes, master))
}

struct Shared {
    me: HubId,
    instance: String,
    fingerprint: String,
    runs_services: bool,
    settings: Settings,
    keys: Keys,
    metrics: Arc<Metrics>,
    locator: Locator,
    /// Where the renewals, publishes and subscription go now.
    route: tokio::sync::watch::Sender<Route>,
    /// Subscribed, and the last lease renewal answered.
    up: AtomicBool,
    subscribed: AtomicBool,
    /// Gaps in what this node heard or said — a new subscription, a failed publish — each
    /// closed by a hello (rosters from everyone, its own to all).
    gaps: AtomicU64,
    /// When a full queue to Redis was last said in the log (Unix ms).
    said_full: AtomicU64,
    /// Tells the subscriber to drop a subscription Redis no longer counts and subscribe again.
    resubscribe: tokio::sync::Notify,
    owner: AtomicU32,
    /// The other nodes holding a lease, as last read.
    others: Mutex<BTreeSet<HubId>>,
    /// Why the link is down, for `/readyz`.
    reason: Mutex<Option<String>>,
    /// The lease scripts, hashed once (Redis runs them by hash).
    beat: redis::Script,
    release: redis::Script,
}

impl Shared {
    fn set_up(&self, up: bool, reason: Option<String>) {
        self.up.store(up, Relaxed);
        self.metrics.link_up.store(up as u64, Relaxed);
        *self.reason.lock().unwrap_or_else(|e| e.into_inner()) = reason;
    }

    fn others(&self) -> std::sync::MutexGuard<'_, BTreeSet<HubId>> {
        self.others.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn gap(&self) {
        self.gaps.fetch_add(1, Relaxed);
    }
}

enum Outgoing {
    To(HubId, Vec<u8>),
    All(Vec<u8>),
}

/// A node's link through Redis.
pub struct RedisLink {
    shared: Arc<Shared>,
    out: mpsc::Sender<Outgoing>,
    /// The subscriber and the publisher.
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Stopped first when the node leaves, so it cannot take its lease back.
    leases: Mutex<Option<JoinHandle<()>>>,
}

/// What crosses: the sender's id (two bytes, so a node skips its own broadcasts unread), then
/// the message as JSON.
fn encode(me: HubId, msg: &Wire) -> Vec<u8> {
    let mut b = Vec::with_capacity(128);
    b.extend_from_slice(&me.0.to_be_bytes());
    // Wire is plain data: strings, numbers and enums always serialize.
    serde_json::to_writer(&mut b, msg).expect("wire messages serialize");
    b
}

fn redis_error(url: &str, e: impl std::fmt::Display) -> JoinError {
    JoinError::Redis(format!("{url}: {e}"))
}

async fn beat(conn: &mut ConnectionManager, s: &Shared) -> redis::RedisResult<Beat> {
    type Reply = (i64, i64, i64, String, String, Vec<String>, i64);
    let (mine, tree, owned, owner, theirs, alive, listening): Reply = s
        .beat
        .key(&s.keys.node)
        .key(&s.keys.owner)
        .key(&s.keys.tree)
        .key(&s.keys.nodes)
        .arg(s.me.0)
        .arg(&s.instance)
        .arg(s.settings.lease_ms)
        .arg(&s.fingerprint)
        .arg(if s.runs_services { "1" } else { "0" })
        .arg(&s.keys.node_prefix)
        .arg(s.keys.to(s.me))
        .invoke_async(conn)
        .await?;
    Ok(Beat {
        mine: mine > 0,
        fresh: mine == 2,
        tree: tree > 0,
        owned: owned > 0,
        // "<hub>/<instance>": the instance, so only the process that took it gives it back.
        owner: owner
            .split('/')
            .next()
            .and_then(|h| h.parse().ok())
            .map(HubId),
        theirs,
        alive: alive
            .iter()
            .filter_map(|h| h.parse().ok().map(HubId))
            .collect(),
        listening,
    })
}

/// Joins the cluster named in `settings` on its Redis: checks that this node loaded the
/// cluster's org tree, that no live node has its id, and (if it runs the services) that no
/// other does; a node restarted after a crash waits for its old lease to run out.
pub async fn join(
    settings: Settings,
    me: HubId,
    fingerprint: &str,
    runs_services: bool,
    metrics: Arc<Metrics>,
) -> Result<(Arc<RedisLink>, Joined), JoinError> {
    let url = settings.url.clone();
    let (seed, seeds) = if settings.redis_cluster {
        cluster_seeds(&url).map_err(JoinError::Redis)?
    } else {
        let seed = redis::Client::open(url.as_str()).map_err(|e| redis_error(&url, e))?;
        (seed, Vec::new())
    };
    let keys = Keys::new(&settings.cluster, me);
    let locator = Locator {
        seed,
        seeds,
        key: keys.owner.clone(),
        known: Mutex::default(),
    };
    let (addr, client) = locator.locate().await.map_err(|e| redis_error(&url, e))?;
    let route = Route::open(addr, client, settings.lease_ms)
        .await
        .map_err(|e| redis_error(&url, e))?;
    let mut conn = route.conn.clone();
    metrics.link_up.store(0, Relaxed);
    let shared = Arc::new(Shared {
        me,
        instance: {
            let mut b = [0u8; 8];
            getrandom::fill(&mut b).map_err(|e| redis_error(&url, e))?;
            format!("{:016x}", u64::from_le_bytes(b))
        },
        fingerprint: fingerprint.to_owned(),
        runs_services,
        keys,
        settings,
        metrics,
        locator,
        route: tokio::sync::watch::Sender::new(route),
        up: AtomicBool::new(false),
        subscribed: AtomicBool::new(false),
        gaps: AtomicU64::new(0),
        said_full: AtomicU64::new(0),
        resubscribe: tokio::sync::Notify::new(),
        owner: AtomicU32::new(NO_OWNER),
        others: Mutex::default(),
        reason: Mutex::default(),
        beat: redis::Script::new(BEAT),
        release: redis::Script::new(RELEASE),
    });
    // A node killed a moment ago still holds its lease (and maybe the owner's) until it runs out.
    let patience = Duration::from_millis(shared.settings.lease_ms + 1_000);
    let started = Instant::now();
    loop {
        let b = beat(&mut conn, &shared)
            .await
            .map_err(|e| redis_error(&url, e))?;
        if !b.tree {
            return Err(JoinError::OtherTree {
                ours: fingerprint.into(),
                theirs: b.theirs,
            });
        }
        let refused = if !b.mine {
            Some(JoinError::SameHub(me))
        } else if runs_services && !b.owned {
            Some(JoinError::SecondOwner(b.owner.unwrap_or(me)))
        } else {
            None
        };
        match refused {
            None => {
                // Who runs the services is known from this first renewal: a request forwarded
                // right after joining finds them.
                shared
                    .owner
                    .store(b.owner.map_or(NO_OWNER, |h| h.0 as u32), Relaxed);
                break;
            }
            Some(e) if started.elapsed() > patience => {
                // Our own lease, if taken, is given back.
                let _ = release(&mut conn, &shared).await;
                return Err(e);
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let (in_tx, in_rx) = mpsc::channel(NODE_QUEUE);
    let (out_tx, out_rx) = mpsc::channel(NODE_QUEUE);
    let link = Arc::new(RedisLink {
        shared: Arc::clone(&shared),
        out: out_tx,
        tasks: Mutex::default(),
        leases: Mutex::default(),
    });
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let mut tasks = vec![tokio::spawn(subscriber(
        Arc::clone(&shared),
        in_tx.clone(),
        Some(ready_tx),
    ))];
    // Subscribed before anyone is told this node is here, so no answer is missed.
    if tokio::time::timeout(CONNECT_TIMEOUT, ready_rx)
        .await
        .is_err()
    {
        tasks[0].abort();
        let _ = release(&mut conn, &shared).await;
        return Err(redis_error(&url, "cannot subscribe within 5 s"));
    }
    tasks.push(tokio::spawn(publisher(Arc::clone(&shared), out_rx)));
    *link.leases.lock().unwrap_or_else(|e| e.into_inner()) = Some(tokio::spawn(leases(
        Arc::clone(&shared),
        in_tx,
        link.out.clone(),
    )));
    *link.tasks.lock().unwrap_or_else(|e| e.into_inner()) = tasks;
    let joined: Joined = (Arc::clone(&link) as Arc<dyn Link>, in_rx);
    Ok((link, joined))
}

async fn release(conn: &mut ConnectionManager, s: &Shared) -> redis::RedisResult<()> {
    s.release
        .key(&s.keys.node)
        .key(&s.keys.owner)
        .key(&s.keys.nodes)
        .arg(s.me.0)
        .arg(&s.instance)
        .invoke_async::<i64>(conn)
        .await
        .map(|_| ())
}

/// Receives what is published to this node, until the process ends: reconnects when Redis
/// goes away, and says when it is subscribed again.
async fn subscriber(
    s: Arc<Shared>,
    inbound: mpsc::Sender<Inbound>,
    mut ready: Option<tokio::sync::oneshot::Sender<()>>,
) {
    let own = s.keys.to(s.me);
    let mut route = s.route.subscribe();
    loop {
        let client = route.borrow_and_update().client.clone();
        let subscribed = async {
            let mut ps = tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub())
                .await
                .map_err(|_| "no answer".to_string())?
                .map_err(|e| e.to_string())?;
            ps.subscribe(&own).await.map_err(|e| e.to_string())?;
            ps.subscribe(&s.keys.all).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(ps)
        }
        .await;
        let ps = match subscribed {
            Ok(ps) => ps,
            Err(e) => {
                tracing::debug!(error = %e, "cannot subscribe to Redis; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
        };
        s.gap();
        s.subscribed.store(true, Relaxed);
        if let Some(r) = ready.take() {
            let _ = r.send(());
        }
        let mut stream = ps.into_on_message();
        loop {
            let msg = tokio::select! {
                m = stream.next() => match m {
                    Some(m) => m,
                    None => break,
                },
                _ = s.resubscribe.notified() => break,
                // Another master: subscribed there, where the lease script counts it.
                _ = route.changed() => break,
            };
            let bytes = msg.get_payload_bytes();
            if bytes.len() < 2 {
                s.metrics.link_dropped.fetch_add(1, Relaxed);
                continue;
            }
            let from = HubId(u16::from_be_bytes([bytes[0], bytes[1]]));
            if from == s.me {
                continue;
            }
            // Waits while this node is behind: Redis holds what follows for it (up to its
            // pub/sub output limit, past which it drops the subscription — a gap the hello after
            // resubscribing closes).
            if inbound
                .send(Inbound::Wire(bytes[2..].to_vec()))
                .await
                .is_err()
            {
                return;
            }
        }
        s.subscribed.store(false, Relaxed);
        s.set_up(false, Some("lost the subscription to Redis".into()));
        tracing::warn!("lost the subscription to Redis; resubscribing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Publishes what waits, pipelined, from one connection (so in order).
async fn publisher(s: Arc<Shared>, mut rx: mpsc::Receiver<Outgoing>) {
    let mut route = s.route.subscribe();
    let mut conn = route.borrow_and_update().publishing.clone();
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        if route.has_changed().unwrap_or(false) {
            conn = route.borrow_and_update().publishing.clone();
        }
        let n = batch.len() as u64;
        let mut pipe = redis::pipe();
        for m in batch.drain(..) {
            match m {
                Outgoing::To(hub, bytes) => pipe.publish(s.keys.to(hub), bytes).ignore(),
                Outgoing::All(bytes) => pipe.publish(&s.keys.all, bytes).ignore(),
            };
        }
        // A pipeline stuck on a master that died is given up as soon as the link follows
        // another, not after PUBLISH_TIMEOUT: the hello that closes the gap waits behind it.
        let started = Instant::now();
        let sent = tokio::select! {
            r = pipe.query_async::<()>(&mut conn) => r.map_err(|e| e.to_string()),
            _ = route.changed() => Err("the link moved to another Redis master".to_string()),
        };
        if sent.is_err() {
            // `changed` has marked the new route seen: take its connection now.
            conn = route.borrow_and_update().publishing.clone();
        }
        if started.elapsed() > Duration::from_secs(1) {
            tracing::warn!(
                messages = n,
                took_ms = started.elapsed().as_millis() as u64,
                "a pipeline of publishes to Redis was slow"
            );
        }
        if let Err(e) = sent {
            s.metrics.link_dropped.fetch_add(n, Relaxed);
            // Some of it may have gone out, some not: the others' picture of this node is set
            // right by a hello once Redis takes publishes again.
            s.gap();
            tracing::debug!(error = %e, lost = n, "cannot publish to Redis");
        }
    }
}

/// Renews the leases and follows who is in the cluster, until the process ends. It never
/// waits on a queue: a node behind on what it hears must still renew its lease, or be taken
/// for dead while it works. What it tells its own node waits in `pending` for room.
async fn leases(s: Arc<Shared>, inbound: mpsc::Sender<Inbound>, out: mpsc::Sender<Outgoing>) {
    let period = Duration::from_millis((s.settings.lease_ms / 3).max(50));
    let lease = Duration::from_millis(s.settings.lease_ms);
    let mut last_ok = Instant::now();
    let mut was_up = false;
    // The gap the last hello closed.
    let mut helloed = 0u64;
    // Told the backplane the others are gone, since the link last came up.
    let mut alone = false;
    let mut pending: std::collections::VecDeque<Inbound> = Default::default();
    let mut hello_out: Option<Vec<u8>> = None;
    // The first renewal at once: the node is subscribed and waits to be up.
    let mut first = true;
    let mut conn = s.route.borrow().conn.clone();
    loop {
        if !std::mem::take(&mut first) {
            tokio::time::sleep(period).await;
        }
        let mut b = beat(&mut conn, &s).await;
        if s.locator.redis_cluster()
            && let Err(e) = &b
            && !(passing(e) && last_ok.elapsed() < lease)
            && let Some(followed) = follow_master(&s, e.redirect_node()).await
        {
            conn = followed;
            b = beat(&mut conn, &s).await;
        }
        match b {
            Ok(b) if b.mine => {
                last_ok = Instant::now();
                s.owner
                    .store(b.owner.map_or(NO_OWNER, |h| h.0 as u32), Relaxed);
                if s.runs_services && !b.owned {
                    tracing::error!(
                        owner = ?b.owner,
                        "another node took the services' lease while this one could not renew it"
                    );
                }
                if b.fresh && was_up {
                    // The lease had run out: the others counted this node gone.
                    tracing::warn!("this node's lease had run out; saying hello again");
                    s.gap();
                }
                if s.subscribed.load(Relaxed) && b.listening == 0 {
                    tracing::warn!(
                        "Redis no longer counts this node's subscription; subscribing again"
                    );
                    s.resubscribe.notify_one();
                }
                let alive: BTreeSet<HubId> = b.alive.into_iter().filter(|&h| h != s.me).collect();
                // Read by this node's inbound in order with what the others sent before.
                for &hub in s.others().difference(&alive) {
                    tracing::warn!(node = %hub, "node {hub}'s lease ran out: its terminals are off line");
                    pending.push_back(Inbound::Gone(hub));
                }
                s.metrics.link_nodes.store(alive.len() as u64 + 1, Relaxed);
                *s.others() = alive;
                let up = s.subscribed.load(Relaxed);
                let gaps = s.gaps.load(Relaxed);
                if up && (!was_up || gaps != helloed) {
                    helloed = gaps;
                    alone = false;
                    s.set_up(true, None);
                    tracing::info!(nodes = s.others().len() + 1, "joined the cluster on Redis");
                    // Every node sends this one its roster; this one sends its own to all.
                    hello_out = Some(encode(s.me, &Wire::Hello { hub: s.me }));
                    pending.push_back(Inbound::Joined);
                }
                was_up = up;
            }
            Ok(_) => {
                // Another process took this node's id while it could not renew: it must not
                // serve as this node in the cluster.
                was_up = false;
                s.set_up(
                    false,
                    Some(format!("another process holds {}'s lease", s.me)),
                );
                tracing::error!(hub = %s.me, "another process holds this node's lease");
            }
            // Slow, not gone, while the lease still holds: the next renewal may land.
            Err(e) if passing(&e) && last_ok.elapsed() < lease => {
                tracing::debug!(error = %e, "a lease renewal timed out; trying again");
            }
            Err(e) => {
                if was_up {
                    tracing::warn!(error = %e, "Redis unreachable: serving this node's terminals only");
                }
                was_up = false;
                s.set_up(false, Some(format!("Redis unreachable: {e}")));
            }
        }
        if !was_up && last_ok.elapsed() > lease {
            // Whatever the others did meanwhile, this node cannot know: they count as gone
            // until it hears their rosters again.
            s.others().clear();
            s.owner.store(NO_OWNER, Relaxed);
            s.metrics.link_nodes.store(1, Relaxed);
            if !alone {
                tracing::warn!(
                    "no word from the other nodes for a lease: their terminals count as off line here"
                );
                pending.push_back(Inbound::Alone);
            }
            alone = true;
        }
        // A hello that finds no room goes at the next beat; so does what this node is told.
        if let Some(h) = hello_out.take()
            && let Err(mpsc::error::TrySendError::Full(Outgoing::All(h))) =
                out.try_send(Outgoing::All(h))
        {
            hello_out = Some(h);
        }
        while let Some(m) = pending.pop_front() {
            match inbound.try_send(m) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(m)) => {
                    pending.push_front(m);
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
    }
}

/// A failed renewal worth waiting out while the lease holds: slow, or a Redis Cluster busy
/// with the slot (migrating it, electing its master) — not a sign the master is elsewhere.
fn passing(e: &redis::RedisError) -> bool {
    use redis::ServerErrorKind::{Ask, ClusterDown, MasterDown, TryAgain};
    e.is_timeout()
        || matches!(
            e.kind(),
            redis::ErrorKind::Server(Ask | ClusterDown | MasterDown | TryAgain)
        )
}

/// After a failed renewal in a Redis Cluster: asks which master holds the cluster's slot now
/// and, if it is another, sends everything there. Gives the renewals' connection to it if it did.
async fn follow_master(s: &Shared, moved_to: Option<(&str, u16)>) -> Option<ConnectionManager> {
    // Answered `MOVED`: the answer names the master, no need to ask around.
    let found = match moved_to {
        Some((host, port)) => s.locator.at(&(host.to_owned(), port)),
        None => s.locator.locate().await,
    };
    let (addr, client) = match found {
        Ok(found) => found,
        Err(e) => {
            tracing::debug!(error = %e, "cannot locate the Redis Cluster's master");
            return None;
        }
    };
    if addr == s.route.borrow().addr {
        return None;
    }
    match Route::open(addr.clone(), client, s.settings.lease_ms).await {
        Ok(route) => {
            tracing::warn!(master = %addr, "the cluster's keys are on another Redis master: following it");
            // Not subscribed until the subscriber is, on the new master: a renewal there
            // finding no subscriber meanwhile must not ask for a second resubscription.
            s.subscribed.store(false, Relaxed);
            let conn = route.conn.clone();
            s.route.send_replace(route);
            Some(conn)
        }
        Err(e) => {
            tracing::debug!(error = %e, "cannot reach the Redis Cluster's new master yet");
            None
        }
    }
}

impl Drop for RedisLink {
    fn drop(&mut self) {
        self.stop_tasks();
    }
}

impl RedisLink {
    /// Leaves the cluster at shutdown: stops renewing, lets what waits to be published go out
    /// (its terminals' goodbyes), gives up the leases (the others see it gone at their next
    /// beat) and stops the link's tasks.
    pub async fn leave(&self) {
        let leases = self.leases.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(leases) = leases {
            leases.abort();
            let _ = leases.await;
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        while self.out.capacity() < self.out.max_capacity() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut conn = self.shared.route.borrow().conn.clone();
        if let Err(e) = release(&mut conn, &self.shared).await {
            tracing::warn!(error = %e, "could not give up the leases; they run out by themselves");
        }
        self.stop_tasks();
    }

    fn stop_tasks(&self) {
        let leases = self.leases.lock().unwrap_or_else(|e| e.into_inner()).take();
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for t in tasks.into_iter().chain(leases) {
            t.abort();
        }
    }

    /// Queued for the publisher, which counts what Redis does not take; only a full queue
    /// drops here. While the link is down what waits goes out late, before the hello whose
    /// rosters set it right.
    fn push(&self, m: Outgoing) {
        if self.out.try_send(m).is_err() {
            self.shared.metrics.link_dropped.fetch_add(1, Relaxed);
            // Said once a second at most: a stalled publisher drops thousands a second.
            let now = crate::clock::now_ms();
            let last = self.shared.said_full.load(Relaxed);
            if now >= last + 1000
                && self
                    .shared
                    .said_full
                    .compare_exchange(last, now, Relaxed, Relaxed)
                    .is_ok()
            {
                tracing::warn!(
                    waiting = self.out.max_capacity() - self.out.capacity(),
                    "the queue to Redis is full: messages to the other nodes are dropped"
                );
            }
        }
    }
}

impl Link for RedisLink {
    fn send(&self, to: HubId, msg: Wire) {
        self.push(Outgoing::To(to, encode(self.shared.me, &msg)));
    }

    fn broadcast(&self, msg: Wire) {
        self.push(Outgoing::All(encode(self.shared.me, &msg)));
    }

    fn owner(&self) -> Option<HubId> {
        if !self.shared.up.load(Relaxed) {
            return None;
        }
        match self.shared.owner.load(Relaxed) {
            NO_OWNER => None,
            h => Some(HubId(h as u16)),
        }
    }

    fn name(&self) -> &'static str {
        if self.shared.locator.redis_cluster() {
            "redis-cluster"
        } else {
            "redis"
        }
    }

    fn spend_ticket<'a>(
        &'a self,
        id: &'a str,
        expires_at: u64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>> {
        Box::pin(async move {
            let now = crate::clock::now_ms() / 1000;
            let ttl = expires_at.saturating_sub(now).max(1);
            let key = format!("{}{id}", self.shared.keys.ticket_prefix);
            let mut conn = self.shared.route.borrow().conn.clone();
            let set: redis::RedisResult<Option<String>> = redis::cmd("SET")
                .arg(&key)
                .arg(self.shared.me.0)
                .arg("NX")
                .arg("EX")
                .arg(ttl)
                .query_async(&mut conn)
                .await;
            match set {
                Ok(Some(_)) => true,
                Ok(None) => false,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot tell whether a ticket was used on another node; this node's check stands");
                    true
                }
            }
        })
    }

    fn status(&self) -> LinkStatus {
        LinkStatus {
            up: self.shared.up.load(Relaxed),
            nodes: self.shared.others().len() + 1,
            reason: self
                .shared
                .reason
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use redis::Value::{Array, BulkString, Int};

    use super::*;

    fn node(host: &str, port: i64) -> redis::Value {
        Array(vec![
            BulkString(host.into()),
            Int(port),
            BulkString(b"f00d".to_vec()),
        ])
    }

    #[test]
    fn the_master_of_the_slot_and_every_node_come_from_cluster_slots() {
        let slots = Array(vec![
            Array(vec![
                Int(0),
                Int(5460),
                node("10.0.0.1", 7000),
                node("10.0.0.4", 7003),
            ]),
            Array(vec![
                Int(5461),
                Int(10922),
                node("", 7001),
                node("10.0.0.5", 7004),
            ]),
        ]);
        let (nodes, master) = master_of(&slots, 3971, "10.0.0.9").unwrap();
        assert_eq!(master, ("10.0.0.1".into(), 7000));
        assert_eq!(nodes.len(), 4);
        // A node listed without a host is the one asked.
        let (_, master) = master_of(&slots, 5461, "10.0.0.9").unwrap();
        assert_eq!(master, ("10.0.0.9".into(), 7001));
        let e = master_of(&slots, 16000, "10.0.0.9").unwrap_err();
        assert!(e.contains("no master serves slot 16000"), "{e}");
        // Listed with no address (NULL) is also where asked; "?" has none usable.
        let odd = Array(vec![
            Array(vec![
                Int(0),
                Int(99),
                Array(vec![redis::Value::Nil, Int(7005)]),
                node("?", 7006),
            ]),
            Array(vec![Int(100), Int(199), node("?", 7007)]),
        ]);
        let (nodes, master) = master_of(&odd, 50, "10.0.0.9").unwrap();
        assert_eq!(master, ("10.0.0.9".into(), 7005));
        assert_eq!(nodes, vec![("10.0.0.9".into(), 7005)]);
        let e = master_of(&odd, 150, "10.0.0.9").unwrap_err();
        assert!(e.contains("hostname it has not set"), "{e}");
        let e = master_of(&Int(3), 1, "h").unwrap_err();
        assert!(e.contains("CLUSTER SLOTS answered"), "{e}");
        let bad = Array(vec![Array(vec![Int(0), Int(9), Int(7)])]);
        let e = master_of(&bad, 1, "h").unwrap_err();
        assert!(e.contains("a node"), "{e}");
    }

    #[test]
    fn a_cluster_is_named_by_one_or_more_tcp_nodes() {
        let (_, seeds) = cluster_seeds("redis://a:7000/, redis://b:7001/").unwrap();
        assert_eq!(seeds, vec![("a".into(), 7000), ("b".into(), 7001)]);
        assert!(cluster_seeds("redis+unix:///tmp/r.sock").is_err());
        let e = cluster_seeds("redis://a:7000/3").unwrap_err();
        assert!(e.contains("database 0 only"), "{e}");
        assert!(cluster_seeds("nonsense").is_err());
    }
}

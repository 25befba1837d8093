//! backplane — the one path to terminals.
//!
//! Domains address terminals and connections; they never hold one. Everything bound for a
//! terminal leaves through `Outbound`: a frame for one connection (a reply, a subscription's
//! push), for a terminal wherever it is connected (call signaling), a terminal's outbox message
//! offered live, a frame for every member of a group (campaign progress watchers). `Bus`
//! publishes what every node applies or fans out to its own watchers (presence events, terminals
//! coming and going, order changes), and the directory says which terminal is on which node.
//!
//! `Backplane` is this node's side of it, and the only code besides `transport` that touches a
//! connection. One hub node needs nothing else (the default). Several join through a `Link`:
//! `memory::Broker` joins nodes in one process (tests), `redis` joins `gridhub serve` processes
//! through a Redis server (a cluster). Everything that crosses a
//! link is `wire::Wire`: plain data, terminals by id, checked against one org tree (nodes with
//! different trees are refused when they meet).

pub mod bus;
pub mod memory;
pub mod redis;
#[cfg(test)]
pub mod testing;
pub mod wire;

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

pub use self::bus::{Bus, Topic};
use self::wire::{OriginWire, Seated, Wire};
use crate::auth::{Role, Seat};
use crate::org::{NodeId, NodeIdx, Org};
use crate::telemetry::Metrics;
use crate::transport::conn::{Conn, Offered};
pub use crate::transport::dispatch::{ConnKey, HubId, Origin, hub_of};
use crate::transport::dispatch::{Handler, Lifecycle, Refused, Request, Table};
use crate::transport::frame;
use crate::transport::protocol::{ProtoError, ReqId, outbox_frame};
use crate::transport::registry::Registry;

/// Where a frame goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum To {
    /// One connection, on whichever node holds it (replies, subscription pushes).
    Conn(ConnKey),
    /// Every seat of a terminal, wherever each is connected now.
    Terminal(NodeIdx),
    /// One seat of a terminal, wherever it is connected now (a call ringing at a desk, a
    /// call's party).
    Seat(NodeIdx, Seat),
}

/// Which seats of a terminal a frame is for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pick {
    #[default]
    All,
    Seat(Seat),
}

impl Pick {
    pub fn takes(self, seat: Seat) -> bool {
        match self {
            Pick::All => true,
            Pick::Seat(s) => s == seat,
        }
    }
}

/// Who writes it to the socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// The sender, at once if the socket takes it: the fastest way to fan out to many.
    Write,
    /// The connection's own task: for an actor serving many terminals, which must not spend its
    /// time in socket writes (on loopback and LANs a write also runs the receiver's stack).
    Post,
}

/// A live connection of a terminal (one of its seats), as the directory knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Located {
    pub conn: ConnKey,
    pub role: Role,
    pub seat: Seat,
}

/// A terminal's connected seats, across the cluster; nearly always one.
pub type Located1 = smallvec::SmallVec<[Located; 1]>;

impl Located {
    pub fn hub(&self) -> HubId {
        hub_of(self.conn)
    }
}

/// Connections that receive the same frames, e.g. the watchers of one campaign.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Group {
    pub topic: Box<str>,
    pub id: u64,
}

impl Group {
    pub fn new(topic: &str, id: u64) -> Group {
        Group {
            topic: topic.into(),
            id,
        }
    }
}

/// A terminal connected or left, on some node. Published by the node that holds the
/// connection; every node's directory, presence and calls hear it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TerminalNews {
    Joined {
        ep: NodeId,
        conn: ConnKey,
        role: Role,
        #[serde(default)]
        seat: Seat,
        at: u64,
    },
    Left {
        ep: NodeId,
        conn: ConnKey,
        #[serde(default)]
        seat: Seat,
        at: u64,
    },
}

impl Topic for TerminalNews {
    const NAME: &'static str = "terminals";
}

/// A node (re)joined the cluster and may have missed what this node's terminals set for
/// themselves: this node's domains publish it again. Told only to this node's subscribers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Restate {
    /// This node: the connections whose state to publish again are its own.
    pub here: HubId,
}

impl Topic for Restate {
    const NAME: &'static str = "restate";
}

/// Everything bound for a terminal or a connection leaves through here. Sends never wait: a
/// frame for a terminal that is not connected is dropped (what must not be lost goes through
/// the terminal's durable outbox, which replays on resume).
pub trait Outbound: Send + Sync + 'static {
    fn send(&self, to: To, frame: &Bytes, via: Via);
    /// Offers outbox message `seq` (its stored payload) live: sent if the terminal is connected
    /// and has resumed its outbox, otherwise left for its next resume. The frame is built only
    /// for a terminal that takes it.
    fn offer(&self, ep: NodeIdx, seq: u64, payload: &str);
    /// Offers one payload to many terminals, each at its own sequence (the recipients of one
    /// notice): as `offer` for each, but what crosses to another node crosses once per node.
    fn offer_all(&self, offers: &[(NodeIdx, u64)], payload: &str) {
        for &(ep, seq) in offers {
            self.offer(ep, seq, payload);
        }
    }
    /// Connection `conn` has every outbox message up to `upto`; later ones may flow live.
    fn resumed(&self, conn: ConnKey, upto: u64);
    fn join(&self, group: &Group, conn: ConnKey);
    fn leave(&self, group: &Group, conn: ConnKey);
    /// Sends to every member of the group, on every node.
    fn to_group(&self, group: &Group, frame: &Bytes);
    /// The terminal's live connections (one per seat), wherever they are.
    fn seats(&self, ep: NodeIdx) -> Located1;
    /// Whether connection `conn` may still be open: false once it is known to have closed. A
    /// subscription asked for just before its connection closed may be decided after the
    /// connection's goodbye; it is dropped rather than kept for a connection that is gone.
    fn alive(&self, conn: ConnKey) -> bool;
    fn bus(&self) -> &Bus;
}

/// A connection to the other hub nodes of a cluster. Messages to one node arrive in the order
/// sent. Sends never wait: a node so far behind that its queue is full loses what is sent to it
/// meanwhile — live frames, but also forwarded requests (never answered) and news of terminals
/// (its directory and presence stay wrong until the terminal's next news) — and the loss is
/// counted (`gridhub_link_dropped_total`). Durable messages are not lost: they are in the
/// outbox and come back on resume.
pub trait Link: Send + Sync + 'static {
    fn send(&self, to: HubId, msg: Wire);
    fn broadcast(&self, msg: Wire);
    /// The node that runs the stateful services (orders, outbox, calls).
    fn owner(&self) -> Option<HubId>;
    fn name(&self) -> &'static str;
    fn status(&self) -> LinkStatus {
        LinkStatus::ALONE
    }
    /// Connection ticket `id` is spent on this node: false if it was spent on another first.
    /// A link that cannot tell (Redis unreachable) lets it through: the node's own check
    /// stands, and a hub cut in two keeps letting browsers in.
    fn spend_ticket<'a>(
        &'a self,
        _id: &'a str,
        _expires_at: u64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>> {
        Box::pin(std::future::ready(true))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    #[error(
        "this node's org tree (fingerprint {ours}) differs from the cluster's ({theirs}); every node must load the same tree"
    )]
    OtherTree { ours: String, theirs: String },
    #[error("{0} is already in the cluster; give each node its own backplane.hub_id")]
    SameHub(HubId),
    #[error("{0} already runs the services; set backplane.runs_services = false on this node")]
    SecondOwner(HubId),
    #[error("Redis {0}")]
    Redis(String),
}

/// What reaches a node's backplane from its link: a message another node sent, or the link's
/// own word of the cluster, which no other node can send.
#[derive(Debug)]
pub enum Inbound {
    /// A `Wire` message as the other node encoded it.
    Wire(Vec<u8>),
    /// This node (re)joined: every node is asked for its roster; this one sends its own.
    Joined,
    /// Node `hub`'s lease ran out: its connections have all left.
    Gone(HubId),
    /// This node has not reached the others for longer than a lease: whatever they hold now,
    /// it cannot know, so all their connections count as gone until their rosters come.
    Alone,
}

/// A node's link, and what reaches the node through it.
pub type Joined = (Arc<dyn Link>, mpsc::Receiver<Inbound>);

/// Whether a link reaches the other nodes now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LinkStatus {
    pub up: bool,
    /// Nodes in the cluster as this one sees it, itself included.
    pub nodes: usize,
    /// Why it is down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl LinkStatus {
    /// A node alone, or a link that is always up.
    pub const ALONE: LinkStatus = LinkStatus {
        up: true,
        nodes: 1,
        reason: None,
    };
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BackplaneKind {
    /// One hub process; nothing crosses to other nodes.
    #[default]
    Memory,
    /// Several `gridhub serve` processes joined through Redis (`backplane.redis_url`).
    Redis,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackplaneConfig {
    pub kind: BackplaneKind,
    /// This node's id in its cluster (0–4095), unique per node; it is also in the low bits of
    /// every connection key the node mints.
    pub hub_id: u16,
    /// Whether this node runs the stateful services (orders, outbox, calls). In a cluster one
    /// node does; the others forward those requests to it with their origin.
    pub runs_services: bool,
    /// With `runs_services` and `kind = "redis"`: when another node runs the services, wait —
    /// serving nothing — and take them over once that node's lease lapses, instead of refusing
    /// to start. The services' data must be on PostgreSQL (`store.url`), where both reach it.
    pub standby: bool,
    /// With `kind = "redis"`: the server every node of the cluster uses.
    pub redis_url: String,
    /// With `kind = "redis"`: `redis_url` names nodes of a Redis Cluster (one or more,
    /// comma-separated), not a lone server. The link finds the master holding the cluster's keys
    /// and follows it across a failover.
    pub redis_cluster: bool,
    /// With `kind = "redis"`: the cluster's name in Redis keys and channels.
    pub cluster: String,
    /// With `kind = "redis"`: how long a node stays in the cluster without renewing its lease;
    /// a dead node's terminals go off line everywhere within this and a third of it.
    pub lease_ms: u64,
}

impl Default for BackplaneConfig {
    fn default() -> Self {
        BackplaneConfig {
            kind: BackplaneKind::Memory,
            hub_id: 0,
            runs_services: true,
            standby: false,
            redis_url: "redis://127.0.0.1:6379/".into(),
            redis_cluster: false,
            cluster: "gridhub".into(),
            lease_ms: 3_000,
        }
    }
}

#[derive(Default)]
struct Groups {
    members: HashMap<Group, Vec<ConnKey>>,
    of_conn: HashMap<ConnKey, Vec<Group>>,
}

impl Groups {
    fn join(&mut self, g: &Group, conn: ConnKey) {
        let m = self.members.entry(g.clone()).or_default();
        if !m.contains(&conn) {
            m.push(conn);
            self.of_conn.entry(conn).or_default().push(g.clone());
        }
    }

    fn leave(&mut self, g: &Group, conn: ConnKey) {
        if let Some(m) = self.members.get_mut(g) {
            m.retain(|&c| c != conn);
            if m.is_empty() {
                self.members.remove(g);
            }
        }
        if let Some(gs) = self.of_conn.get_mut(&conn) {
            gs.retain(|x| x != g);
            if gs.is_empty() {
                self.of_conn.remove(&conn);
            }
        }
    }

    fn forget(&mut self, conn: ConnKey) {
        for g in self.of_conn.remove(&conn).unwrap_or_default() {
            if let Some(m) = self.members.get_mut(&g) {
                m.retain(|&c| c != conn);
                if m.is_empty() {
                    self.members.remove(&g);
                }
            }
        }
    }
}

/// This node's side of the backplane.
pub struct Backplane {
    hub: HubId,
    org: Arc<Org>,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    /// Every connected terminal of the cluster: its seats and where each is.
    directory: DashMap<NodeIdx, Located1>,
    groups: Mutex<Groups>,
    bus: Bus,
    link: Option<Arc<dyn Link>>,
    /// Services on this node, for requests forwarded here.
    table: OnceLock<Arc<Table>>,
    /// Held while this node's own connections change in the directory and their news is handed
    /// to the link, and while its roster is taken and handed over: so a roster is a cut of the
    /// news, in the order the others receive them.
    cut: Mutex<()>,
}

impl Backplane {
    pub fn new(
        org: Arc<Org>,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        link: Option<Arc<dyn Link>>,
    ) -> Backplane {
        let bus = Bus::new();
        if let Some(l) = &link {
            bus.attach(Arc::clone(l));
        }
        Backplane {
            hub: registry.hub(),
            org,
            registry,
            metrics,
            directory: DashMap::new(),
            groups: Mutex::default(),
            bus,
            link,
            table: OnceLock::new(),
            cut: Mutex::new(()),
        }
    }

    pub fn hub(&self) -> HubId {
        self.hub
    }

    pub fn name(&self) -> &'static str {
        self.link.as_ref().map_or("memory", |l| l.name())
    }

    /// Whether this node reaches the others (always, alone).
    pub fn status(&self) -> LinkStatus {
        self.link.as_ref().map_or(LinkStatus::ALONE, |l| l.status())
    }

    pub fn link(&self) -> Option<&Arc<dyn Link>> {
        self.link.as_ref()
    }

    /// The services on this node, for requests other nodes forward here.
    pub fn serve(&self, table: Arc<Table>) {
        let _ = self.table.set(table);
    }

    fn groups(&self) -> std::sync::MutexGuard<'_, Groups> {
        // Nothing panics while holding it; a poisoned lock still holds consistent data.
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn over_link(&self, to: HubId, msg: Wire) {
        match &self.link {
            Some(l) => {
                self.metrics.link_sent.fetch_add(1, Relaxed);
                l.send(to, msg);
            }
            // A key or directory entry naming another node without a link cannot happen.
            None => {
                self.metrics.link_dropped.fetch_add(1, Relaxed);
            }
        }
    }

    /// The other nodes holding seats of `ep` that `pick` takes, each once. Alone, this node
    /// needs no directory: its own registry is the whole truth (and one lookup on the relay's
    /// hot path, not two).
    fn elsewhere(&self, ep: NodeIdx, pick: Pick) -> smallvec::SmallVec<[HubId; 1]> {
        let mut hubs = smallvec::SmallVec::new();
        if self.link.is_none() {
            return hubs;
        }
        if let Some(seats) = self.directory.get(&ep) {
            for l in seats.iter().filter(|l| pick.takes(l.seat)) {
                if l.hub() != self.hub && !hubs.contains(&l.hub()) {
                    hubs.push(l.hub());
                }
            }
        }
        hubs
    }

    /// Writes `frame` to the seats of `ep` on this node that `pick` takes.
    fn to_seats_here(&self, ep: NodeIdx, pick: Pick, frame: &Bytes, via: Via) {
        self.registry.each_seat(ep, |c| {
            if pick.takes(c.seat) {
                Self::write(c, frame, via);
            }
        });
    }

    /// Sends to the seats of `ep` that `pick` takes, here and on every node holding one; the
    /// text crosses to each such node once.
    fn to_terminal(&self, ep: NodeIdx, pick: Pick, frame: &Bytes, via: Via) {
        self.to_seats_here(ep, pick, frame, via);
        for hub in self.elsewhere(ep, pick) {
            self.over_link(
                hub,
                Wire::Terminal {
                    ep: self.org.id(ep).clone(),
                    pick,
                    via,
                    text: frame::text_of(frame),
                },
            );
        }
    }

    /// Offers outbox message `seq` to every seat of `ep` on this node that has resumed; the
    /// frame is built once, for the first that takes it.
    fn offer_here(&self, ep: NodeIdx, seq: u64, payload: &str) {
        let mut frame = None;
        let mut gaps: smallvec::SmallVec<[(Origin, u64); 1]> = smallvec::SmallVec::new();
        self.registry.each_seat(ep, |c| match c.outbox_offer(seq) {
            Offered::Send => {
                c.send(frame.get_or_insert_with(|| outbox_frame(seq, payload)));
            }
            Offered::Skip => {}
            Offered::Gap { after } => gaps.push((
                Origin {
                    conn: c.key,
                    endpoint: c.endpoint,
                    role: c.role,
                    seat: c.seat,
                    expires_at: c.expires_at,
                },
                after,
            )),
        });
        for (origin, after) in gaps {
            self.catch_up(origin, after);
        }
    }

    /// Asks the outbox (here, or on the node that runs it) to replay what a connection missed
    /// after `after`, as its own resume would, without a reply; live messages flow again once
    /// the replay is written.
    fn catch_up(&self, origin: Origin, after: u64) {
        let Some(table) = self.table.get().cloned() else {
            return;
        };
        self.metrics.outbox_catch_ups.fetch_add(1, Relaxed);
        tracing::debug!(
            conn = origin.conn,
            after,
            "outbox messages missed live; replaying"
        );
        let registry = Arc::clone(&self.registry);
        tokio::spawn(async move {
            let data = format!(r#"{{"after":{after}}}"#);
            let conn = origin.conn;
            if dispatch(&table, origin, None, "outbox.resume", &data)
                .await
                .is_err()
            {
                // Not taken (the services unreachable): the next live message finds the gap
                // again and asks again.
                if let Some(c) = registry.by_key(conn) {
                    c.outbox_resumed(after);
                }
            }
        });
    }

    fn write(conn: &Conn, frame: &Bytes, via: Via) {
        match via {
            Via::Write => conn.send(frame),
            Via::Post => conn.post(frame),
        };
    }

    /// Keeps the directory in step with the news: per seat, the newest connection. One
    /// connection per seat across nodes too: a connection held here that loses its seat to one
    /// on another node (connected again there; or at the same moment, with a larger key) is
    /// told it was replaced, as a second connection on this node would tell it.
    fn apply(&self, news: &TerminalNews) {
        match news {
            TerminalNews::Joined {
                ep,
                conn,
                role,
                seat,
                ..
            } => {
                self.registry.witness(*conn, crate::clock::now_ms() * 1000);
                if let Some(ep) = self.org.lookup(ep.as_str()) {
                    let new = Located {
                        conn: *conn,
                        role: *role,
                        seat: *seat,
                    };
                    let mut seats = self.directory.entry(ep).or_default();
                    // (winner, loser) of the seat, when it was contested.
                    let contest = match seats.iter_mut().find(|l| l.seat == *seat) {
                        Some(l) if l.conn < *conn => {
                            let lost = l.conn;
                            *l = new;
                            Some((*conn, lost))
                        }
                        Some(l) => Some((l.conn, *conn)),
                        None => {
                            seats.push(new);
                            None
                        }
                    };
                    drop(seats);
                    // A loser replaced on this node was closed by the registry already.
                    if let Some((winner, loser)) = contest
                        && hub_of(winner) != self.hub
                        && hub_of(loser) == self.hub
                        && let Some(c) = self.registry.by_key(loser)
                    {
                        c.close(crate::transport::conn::Close::Replaced);
                    }
                }
            }
            TerminalNews::Left { ep, conn, .. } => {
                if let Some(ep) = self.org.lookup(ep.as_str())
                    && let dashmap::Entry::Occupied(mut e) = self.directory.entry(ep)
                {
                    e.get_mut().retain(|l| l.conn != *conn);
                    if e.get().is_empty() {
                        e.remove();
                    }
                }
            }
        }
    }

    /// Reads what reaches this node through its link until the link closes.
    pub async fn run_inbound(self: Arc<Self>, mut rx: mpsc::Receiver<Inbound>) {
        while let Some(i) = rx.recv().await {
            match i {
                Inbound::Wire(bytes) => {
                    self.metrics.link_received.fetch_add(1, Relaxed);
                    match serde_json::from_slice::<Wire>(&bytes) {
                        Ok(msg) => self.inbound(msg).await,
                        Err(e) => {
                            self.metrics.link_dropped.fetch_add(1, Relaxed);
                            tracing::error!(error = %e, "unreadable message from another hub node");
                        }
                    }
                }
                Inbound::Joined => self.hello(None).await,
                Inbound::Gone(hub) => self.reconcile(hub, &[]).await,
                Inbound::Alone => {
                    let mut others: Vec<HubId> = Vec::new();
                    for e in self.directory.iter() {
                        for l in e.value().iter() {
                            if l.hub() != self.hub && !others.contains(&l.hub()) {
                                others.push(l.hub());
                            }
                        }
                    }
                    for hub in others {
                        self.reconcile(hub, &[]).await;
                    }
                }
            }
        }
    }

    /// Sends this node's roster — to the node that said hello, or to all when this node
    /// (re)joined — then has its domains restate what its terminals set for themselves.
    async fn hello(&self, to: Option<HubId>) {
        {
            let _cut = self.cut.lock().unwrap_or_else(|e| e.into_inner());
            let roster = Wire::Roster {
                hub: self.hub,
                seats: self.own_seats(),
            };
            match (to, &self.link) {
                (Some(hub), _) => self.over_link(hub, roster),
                (None, Some(l)) => {
                    self.metrics.link_sent.fetch_add(1, Relaxed);
                    l.broadcast(roster);
                }
                (None, None) => return,
            }
        }
        // After the roster, in the same order on every link: the connections the restated
        // state belongs to are known where it arrives.
        let _ = self
            .bus
            .deliver_here(Arc::new(Restate { here: self.hub }))
            .await;
    }

    async fn inbound(&self, msg: Wire) {
        match msg {
            Wire::Conn { conn, via, text } => {
                if let Some(c) = self.registry.by_key(conn) {
                    Self::write(&c, &frame::text(text.as_bytes()), via);
                }
            }
            Wire::Terminal {
                ep,
                pick,
                via,
                text,
            } => {
                if let Some(ep) = self.org.lookup(ep.as_str()) {
                    self.to_seats_here(ep, pick, &frame::text(text.as_bytes()), via);
                }
            }
            Wire::Offers { payload, to } => {
                for (ep, seq) in to {
                    if let Some(ep) = self.org.lookup(ep.as_str()) {
                        self.offer_here(ep, seq, &payload);
                    }
                }
            }
            Wire::Resumed { conn, upto } => {
                if let Some(c) = self.registry.by_key(conn) {
                    c.outbox_resumed(upto);
                }
            }
            Wire::Join { group, conn } => self.join(&group, conn),
            Wire::Leave { group, conn } => self.groups().leave(&group, conn),
            Wire::Group { group, text } => self.group_here(&group, &frame::text(text.as_bytes())),
            Wire::Event { topic, body } => {
                let delivered = if topic == TerminalNews::NAME {
                    match serde_json::from_str::<TerminalNews>(&body) {
                        Ok(news) => {
                            self.apply(&news);
                            self.bus.deliver_here(Arc::new(news)).await
                        }
                        Err(e) => Err(e.to_string()),
                    }
                } else {
                    self.bus.deliver_encoded(&topic, &body).await
                };
                if let Err(e) = delivered {
                    self.metrics.link_dropped.fetch_add(1, Relaxed);
                    tracing::error!(topic, error = %e, "unreadable event from another hub node");
                }
            }
            // Another node (re)joined (a node never hears its own messages): it gets this
            // node's roster.
            Wire::Hello { hub } => self.hello(Some(hub)).await,
            Wire::Roster { hub, seats } => self.reconcile(hub, &seats).await,
            Wire::Request {
                origin,
                id,
                kind,
                data,
            } => self.forwarded(origin, id, &kind, &data).await,
        }
    }

    /// The connections this node holds, as its directory has them: in step with the news it has
    /// published, so a roster sent now is a cut of that stream.
    fn own_seats(&self) -> Vec<Seated> {
        let mut seats = Vec::new();
        for e in self.directory.iter() {
            for l in e.value().iter().filter(|l| l.hub() == self.hub) {
                seats.push(Seated {
                    ep: self.org.id(*e.key()).clone(),
                    conn: l.conn,
                    role: l.role,
                    seat: l.seat,
                });
            }
        }
        seats
    }

    /// Makes what this node knows of node `hub`'s connections equal to `seats`: what is missing
    /// there has left, what is new here has joined — told to this node's subscribers as the
    /// news they would have heard. A node that died, or that this one could not hear for a
    /// while, is set right this way.
    async fn reconcile(&self, hub: HubId, seats: &[Seated]) {
        if hub == self.hub {
            return;
        }
        let listed: std::collections::HashSet<ConnKey> = seats.iter().map(|s| s.conn).collect();
        let mut gone = Vec::new();
        for e in self.directory.iter() {
            for l in e.value().iter() {
                if l.hub() == hub && !listed.contains(&l.conn) {
                    gone.push(TerminalNews::Left {
                        ep: self.org.id(*e.key()).clone(),
                        conn: l.conn,
                        seat: l.seat,
                        at: crate::clock::now_ms(),
                    });
                }
            }
        }
        let left = gone.len();
        for news in gone {
            self.apply(&news);
            let _ = self.bus.deliver_here(Arc::new(news)).await;
        }
        let mut joined = 0;
        for s in seats {
            let Some(ep) = self.org.lookup(s.ep.as_str()) else {
                continue;
            };
            let known = |d: &DashMap<NodeIdx, Located1>| {
                d.get(&ep)
                    .is_some_and(|ls| ls.iter().any(|l| l.conn == s.conn))
            };
            if known(&self.directory) {
                continue;
            }
            let news = TerminalNews::Joined {
                ep: s.ep.clone(),
                conn: s.conn,
                role: s.role,
                seat: s.seat,
                at: crate::clock::now_ms(),
            };
            self.apply(&news);
            // A seat that has since connected again elsewhere keeps its newer connection.
            if known(&self.directory) {
                joined += 1;
                let _ = self.bus.deliver_here(Arc::new(news)).await;
            }
        }
        if left + joined > 0 {
            tracing::info!(
                node = %hub,
                left,
                joined,
                "directory set right from {hub}'s roster"
            );
        }
    }

    /// A request another node forwarded to the service that runs here.
    async fn forwarded(&self, o: OriginWire, id: Option<ReqId>, kind: &str, data: &str) {
        let (Some(table), Some(endpoint)) =
            (self.table.get(), self.org.lookup(o.endpoint.as_str()))
        else {
            return;
        };
        let origin = Origin {
            conn: o.conn,
            endpoint,
            role: o.role,
            seat: o.seat,
            expires_at: o.expires_at,
        };
        // Refused: answered to the connection on its node (where it is not counted against the
        // abuse limit: that node only forwarded it).
        if let Err(Refused::Now(e)) = dispatch(table, origin, id, kind, data).await {
            self.send(To::Conn(o.conn), &e.encode(), Via::Post);
        }
    }

    fn group_here(&self, group: &Group, frame: &Bytes) {
        let members = self
            .groups()
            .members
            .get(group)
            .cloned()
            .unwrap_or_default();
        for key in members {
            if let Some(c) = self.registry.by_key(key) {
                c.send(frame);
            }
        }
    }
}

impl Outbound for Backplane {
    fn send(&self, to: To, frame: &Bytes, via: Via) {
        match to {
            To::Conn(key) if hub_of(key) == self.hub => {
                if let Some(c) = self.registry.by_key(key) {
                    Self::write(&c, frame, via);
                }
            }
            To::Conn(key) => self.over_link(
                hub_of(key),
                Wire::Conn {
                    conn: key,
                    via,
                    text: frame::text_of(frame),
                },
            ),
            To::Terminal(ep) => self.to_terminal(ep, Pick::All, frame, via),
            To::Seat(ep, seat) => self.to_terminal(ep, Pick::Seat(seat), frame, via),
        }
    }

    fn offer(&self, ep: NodeIdx, seq: u64, payload: &str) {
        self.offer_all(&[(ep, seq)], payload);
    }

    fn offer_all(&self, offers: &[(NodeIdx, u64)], payload: &str) {
        // Per other node, its recipients and their sequences.
        type Recipients = Vec<(NodeId, u64)>;
        let mut elsewhere: smallvec::SmallVec<[(HubId, Recipients); 4]> = smallvec::SmallVec::new();
        for &(ep, seq) in offers {
            self.offer_here(ep, seq, payload);
            for hub in self.elsewhere(ep, Pick::All) {
                let to = (self.org.id(ep).clone(), seq);
                match elsewhere.iter_mut().find(|(h, _)| *h == hub) {
                    Some((_, list)) => list.push(to),
                    None => elsewhere.push((hub, vec![to])),
                }
            }
        }
        for (hub, to) in elsewhere {
            self.over_link(
                hub,
                Wire::Offers {
                    payload: payload.into(),
                    to,
                },
            );
        }
    }

    fn resumed(&self, conn: ConnKey, upto: u64) {
        if hub_of(conn) == self.hub {
            if let Some(c) = self.registry.by_key(conn) {
                c.outbox_resumed(upto);
            }
        } else {
            self.over_link(hub_of(conn), Wire::Resumed { conn, upto });
        }
    }

    fn join(&self, group: &Group, conn: ConnKey) {
        if hub_of(conn) == self.hub {
            // Under the groups' lock: a connection that closed meanwhile (its memberships are
            // forgotten under the same lock) does not join again.
            let mut groups = self.groups();
            if self.alive(conn) {
                groups.join(group, conn);
            }
        } else {
            self.over_link(
                hub_of(conn),
                Wire::Join {
                    group: group.clone(),
                    conn,
                },
            );
        }
    }

    fn leave(&self, group: &Group, conn: ConnKey) {
        if hub_of(conn) == self.hub {
            self.groups().leave(group, conn);
        } else {
            self.over_link(
                hub_of(conn),
                Wire::Leave {
                    group: group.clone(),
                    conn,
                },
            );
        }
    }

    fn to_group(&self, group: &Group, frame: &Bytes) {
        self.group_here(group, frame);
        if let Some(l) = &self.link {
            self.metrics.link_sent.fetch_add(1, Relaxed);
            l.broadcast(Wire::Group {
                group: group.clone(),
                text: frame::text_of(frame),
            });
        }
    }

    fn seats(&self, ep: NodeIdx) -> Located1 {
        self.directory
            .get(&ep)
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    fn alive(&self, conn: ConnKey) -> bool {
        // Another node's connections: its own node decides what to keep for them.
        hub_of(conn) != self.hub || self.registry.by_key(conn).is_some()
    }

    fn bus(&self) -> &Bus {
        &self.bus
    }
}

#[async_trait::async_trait]
impl Lifecycle for Backplane {
    async fn opened(&self, o: Origin, at: u64) {
        let news = TerminalNews::Joined {
            ep: self.org.id(o.endpoint).clone(),
            conn: o.conn,
            role: o.role,
            seat: o.seat,
            at,
        };
        self.own_news(news).await;
    }

    async fn spend_ticket(&self, id: &str, expires_at: u64) -> bool {
        match &self.link {
            Some(l) => l.spend_ticket(id, expires_at).await,
            None => true,
        }
    }

    async fn closed(&self, o: Origin, at: u64) {
        self.groups().forget(o.conn);
        let news = TerminalNews::Left {
            ep: self.org.id(o.endpoint).clone(),
            conn: o.conn,
            seat: o.seat,
            at,
        };
        self.own_news(news).await;
    }
}

impl Backplane {
    /// A connection of this node came or went: in the directory and on its way to the other
    /// nodes as one step (see `cut`), then to this node's subscribers.
    async fn own_news(&self, news: TerminalNews) {
        {
            let _cut = self.cut.lock().unwrap_or_else(|e| e.into_inner());
            self.apply(&news);
            self.bus.publish_elsewhere(&news);
        }
        let _ = self.bus.deliver_here(Arc::new(news)).await;
    }
}

/// Hands a request that did not come from its connection's own frames (forwarded by another
/// node, or asked by the hub itself) to the service that owns its kind here, or on to the node
/// that runs it.
async fn dispatch(
    table: &Table,
    origin: Origin,
    id: Option<ReqId>,
    kind: &str,
    data: &str,
) -> Result<(), Refused> {
    let Some((kind, handler)) = table.get(kind) else {
        return Ok(());
    };
    handler
        .handle(Request {
            origin,
            id,
            kind,
            data,
            at: Instant::now(),
        })
        .await
}

/// Routes request types to the node that runs their service, with their origin.
pub struct Forward {
    pub backplane: Arc<Backplane>,
}

#[async_trait::async_trait]
impl Handler for Forward {
    async fn handle(&self, req: Request<'_>) -> Result<(), Refused> {
        let owner = self.backplane.link().and_then(|l| l.owner());
        let Some(owner) = owner.filter(|&o| o != self.backplane.hub) else {
            return Err(Refused::Now(req.error(ProtoError::new(
                crate::transport::protocol::ErrorCode::Unavailable,
                format!(
                    "{}: no hub node runs this service at the moment; retry shortly",
                    req.kind
                ),
            ))));
        };
        let o = req.origin;
        self.backplane.over_link(
            owner,
            Wire::Request {
                origin: OriginWire {
                    conn: o.conn,
                    endpoint: self.backplane.org.id(o.endpoint).clone(),
                    role: o.role,
                    seat: o.seat,
                    expires_at: o.expires_at,
                },
                id: req.id,
                kind: req.kind.into(),
                data: req.data.into(),
            },
        );
        Ok(())
    }
}

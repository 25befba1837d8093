//! The async shell around the presence core: one task owns the state, so there are no locks.
//!
//! Inputs: terminals coming and going and presence events from the bus (from every hub node, so
//! every node holds the whole picture), and this node's subscription requests. After each burst
//! of inputs the core is asked for due deltas; each delta is encoded once and the same frame goes
//! to every subscriber through the backplane. Snapshots are sent from here too, which guarantees
//! that a subscriber sees its snapshot before any delta that follows it.

use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::core::{Activity, ConnKey, Fanout, Presence, SubscribeError, Update, Watch};
use super::wire;
use crate::backplane::{HubId, Outbound, Restate, TerminalNews, To, Topic, Via, hub_of};
use crate::clock::Clock;
use crate::org::{NodeId, Org};
use crate::telemetry::Metrics;
use crate::transport::protocol::{ErrorCode, ProtoError, ReqId, ack};

/// A presence change, as every hub node hears it. Terminals are named by id.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// A terminal's own change, from its connection `conn`.
    Updated {
        ep: NodeId,
        conn: ConnKey,
        update: Update,
        at: u64,
    },
    /// What the hub knows it is doing (calls and sessions set it).
    Activity {
        ep: NodeId,
        activity: Activity,
        at: u64,
    },
}

impl Topic for Event {
    const NAME: &'static str = "presence";
}

enum Command {
    Subscribe {
        conn: ConnKey,
        watch: Watch,
        endpoints: bool,
        re: Option<ReqId>,
    },
    Unsubscribe {
        conn: ConnKey,
        watch: Watch,
        re: Option<ReqId>,
    },
    Snapshot {
        watch: Watch,
        endpoints: bool,
        reply: oneshot::Sender<Vec<u8>>,
    },
    Stop,
}

/// Inputs taken per wake-up before flushing, so a burst is coalesced but the loop stays fair.
const BURST: usize = 4096;
/// Bound of each input channel; senders wait (backpressure) when it is full.
pub const INBOX: usize = 65_536;

/// Cheap to clone; the presence handler and REST hold one.
#[derive(Clone)]
pub struct PresenceHandle {
    tx: mpsc::Sender<Command>,
}

impl PresenceHandle {
    /// The actor answers the connection itself: the snapshot, or a typed error.
    pub async fn subscribe(
        &self,
        conn: ConnKey,
        watch: Watch,
        endpoints: bool,
        re: Option<ReqId>,
    ) -> bool {
        let cmd = Command::Subscribe {
            conn,
            watch,
            endpoints,
            re,
        };
        self.tx.send(cmd).await.is_ok()
    }

    pub async fn unsubscribe(&self, conn: ConnKey, watch: Watch, re: Option<ReqId>) -> bool {
        let cmd = Command::Unsubscribe { conn, watch, re };
        self.tx.send(cmd).await.is_ok()
    }

    /// A snapshot as JSON (for REST); `None` if the actor has stopped.
    pub async fn snapshot(&self, watch: Watch, endpoints: bool) -> Option<Vec<u8>> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Snapshot {
                watch,
                endpoints,
                reply,
            })
            .await
            .ok()?;
        rx.await.ok()
    }

    pub async fn stop(&self) {
        let _ = self.tx.send(Command::Stop).await;
    }
}

struct Actor {
    core: Presence,
    out: Arc<dyn Outbound>,
    metrics: Arc<Metrics>,
    clock: Clock,
    /// When each event applied since the last flush arrived, for the fan-out latency histogram.
    pending: Vec<Instant>,
}

pub struct Settings {
    pub coalesce_ms: u64,
    pub max_subscriptions: usize,
}

pub fn spawn(
    org: Arc<Org>,
    settings: Settings,
    out: Arc<dyn Outbound>,
    metrics: Arc<Metrics>,
    clock: Clock,
) -> (PresenceHandle, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(INBOX);
    let news = out.bus().subscribe::<TerminalNews>(INBOX);
    let events = out.bus().subscribe::<Event>(INBOX);
    let restate = out.bus().subscribe::<Restate>(8);
    let actor = Actor {
        core: Presence::new(org, settings.coalesce_ms, settings.max_subscriptions),
        out,
        metrics,
        clock,
        pending: Vec::new(),
    };
    (
        PresenceHandle { tx },
        tokio::spawn(actor.run(rx, news, events, restate)),
    )
}

impl Actor {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Command>,
        mut news: mpsc::Receiver<Arc<TerminalNews>>,
        mut events: mpsc::Receiver<Arc<Event>>,
        mut restate: mpsc::Receiver<Arc<Restate>>,
    ) {
        let mut commands = Vec::with_capacity(64);
        let mut joins = Vec::with_capacity(64);
        let mut changes = Vec::with_capacity(64);
        loop {
            let due = self.core.next_flush_at();
            tokio::select! {
                // A terminal's news is always published before the events of its connection, so
                // it is taken first: an update never finds its connection not yet known.
                biased;
                n = news.recv_many(&mut joins, BURST) => {
                    if n == 0 {
                        return;
                    }
                    for j in joins.drain(..) {
                        self.news(&j);
                    }
                }
                n = events.recv_many(&mut changes, BURST) => {
                    if n == 0 {
                        return;
                    }
                    for e in changes.drain(..) {
                        self.event(&e);
                    }
                }
                Some(r) = restate.recv() => self.restate(r.here),
                n = rx.recv_many(&mut commands, BURST) => {
                    if n == 0 {
                        return;
                    }
                    for cmd in commands.drain(..) {
                        if !self.command(cmd) {
                            return;
                        }
                    }
                }
                _ = self.clock.sleep_until_ms(due.unwrap_or_default()), if due.is_some() => {}
            }
            self.flush();
        }
    }

    fn changed(&mut self, changed: bool) {
        if changed {
            self.metrics
                .presence_changes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if self.core.next_flush_at().is_some() {
            self.pending.push(Instant::now());
        }
    }

    fn news(&mut self, n: &TerminalNews) {
        let org = Arc::clone(self.core.org());
        let changed = match n {
            TerminalNews::Joined {
                ep, conn, seat, at, ..
            } => match org.lookup(ep.as_str()) {
                Some(ep) => self.core.connect(ep, *seat, *conn, *at),
                None => false,
            },
            TerminalNews::Left {
                ep, conn, seat, at, ..
            } => {
                // Subscriptions here are this node's connections'; for others this finds none.
                self.core.drop_subscriber(*conn);
                match org.lookup(ep.as_str()) {
                    Some(ep) => self.core.disconnect(ep, *seat, *conn, *at),
                    None => false,
                }
            }
        };
        self.changed(changed);
    }

    fn event(&mut self, e: &Event) {
        let org = Arc::clone(self.core.org());
        let changed = match e {
            Event::Updated {
                ep,
                conn,
                update,
                at,
            } => org
                .lookup(ep.as_str())
                .is_some_and(|ep| self.core.update(ep, *conn, update, *at)),
            Event::Activity { ep, activity, at } => org
                .lookup(ep.as_str())
                .is_some_and(|ep| self.core.set_activity(ep, *activity, *at)),
        };
        self.changed(changed);
    }

    /// Publishes again what this node's terminals set for themselves, for a node that may have
    /// missed it.
    fn restate(&mut self, here: HubId) {
        let org = Arc::clone(self.core.org());
        let now = self.clock.now_ms();
        let updates = self.core.restate(|c| hub_of(c) == here);
        let n = updates.len();
        for (ep, conn, update) in updates {
            // Not to this node's own subscribers: this actor is one, and holds it already.
            self.out.bus().publish_elsewhere(&Event::Updated {
                ep: org.id(ep).clone(),
                conn,
                update,
                at: now,
            });
        }
        tracing::debug!(terminals = n, "presence of this node's terminals restated");
    }

    fn reply(&self, conn: ConnKey, frame: &bytes::Bytes) {
        self.out.send(To::Conn(conn), frame, Via::Write);
    }

    /// Returns false on `Stop`.
    fn command(&mut self, cmd: Command) -> bool {
        match cmd {
            // Its connection closed before this was decided: nobody to keep it for.
            Command::Subscribe { conn, .. } if !self.out.alive(conn) => {}
            Command::Subscribe {
                conn,
                watch,
                endpoints,
                re,
            } => match self
                .core
                .subscribe(conn, watch, endpoints, self.clock.now_ms())
            {
                Ok((snap, earlier)) => {
                    self.deliver(&earlier);
                    self.reply(conn, &wire::snapshot_reply(&self.core, &snap, re.as_ref()));
                }
                Err(SubscribeError::TooMany(n)) => {
                    let e = ProtoError::new(
                        ErrorCode::TooManySubscriptions,
                        format!(
                            "presence.subscribe: this connection already holds {n} subscriptions, the most allowed; unsubscribe first"
                        ),
                    )
                    .answering(re, "presence.subscribe");
                    self.reply(conn, &e.encode());
                }
            },
            Command::Unsubscribe { conn, watch, re } => {
                if self.core.unsubscribe(conn, watch) {
                    if let Some(f) = ack(re.as_ref(), &serde_json::json!({})) {
                        self.reply(conn, &f);
                    }
                } else {
                    let e = ProtoError::new(
                        ErrorCode::NotSubscribed,
                        "presence.unsubscribe: no such subscription on this connection",
                    )
                    .answering(re, "presence.unsubscribe");
                    self.reply(conn, &e.encode());
                }
            }
            Command::Snapshot {
                watch,
                endpoints,
                reply,
            } => {
                let snap = self.core.snapshot(watch, endpoints);
                let _ = reply.send(wire::snapshot_json(&self.core, &snap));
            }
            Command::Stop => return false,
        }
        true
    }

    fn flush(&mut self) {
        let fanouts = self.core.flush(self.clock.now_ms());
        if fanouts.is_empty() && self.core.next_flush_at().is_some() {
            return;
        }
        self.deliver(&fanouts);
    }

    /// Sends each delta, encoded once, to its recipients.
    fn deliver(&mut self, fanouts: &[Fanout]) {
        for f in fanouts {
            let frame = wire::delta_frame(&self.core, f);
            for &key in &f.recipients {
                self.out.send(To::Conn(key), &frame, Via::Write);
            }
            self.metrics
                .presence_batches
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        for t in self.pending.drain(..) {
            self.metrics.presence_fanout_latency.observe(t.elapsed());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::Value;

    use super::*;
    use crate::auth::Role;
    use crate::backplane::testing::Recorder;
    use crate::presence::core::Chosen;

    struct Fixture {
        org: Arc<Org>,
        out: Arc<Recorder>,
        presence: PresenceHandle,
    }

    fn fixture(coalesce_ms: u64) -> Fixture {
        let org = Arc::new(crate::org::fixture());
        let out = Arc::new(Recorder::new());
        let (presence, _) = spawn(
            Arc::clone(&org),
            Settings {
                coalesce_ms,
                max_subscriptions: 2,
            },
            Arc::clone(&out) as Arc<dyn Outbound>,
            Arc::default(),
            Clock::following_tokio(1_000_000),
        );
        Fixture { org, out, presence }
    }

    impl Fixture {
        fn id(&self, s: &str) -> NodeId {
            NodeId::parse(s).unwrap()
        }

        async fn joined(&self, ep: &str, conn: ConnKey) {
            let news = TerminalNews::Joined {
                ep: self.id(ep),
                conn,
                role: Role::Worker,
                seat: crate::auth::Seat::MAIN,
                at: 1_000_000,
            };
            self.out.bus().publish(news).await;
        }

        async fn set(&self, ep: &str, conn: ConnKey, status: Chosen) {
            let update = Update {
                status: Some(status),
                ..Default::default()
            };
            let ev = Event::Updated {
                ep: self.id(ep),
                conn,
                update,
                at: 1_000_000,
            };
            self.out.bus().publish(ev).await;
        }

        /// A round trip through the actor: everything published or asked before is applied.
        async fn caught_up(&self) {
            self.presence
                .snapshot(
                    Watch::Chain {
                        of: self.org.root(),
                    },
                    false,
                )
                .await;
        }

        fn to(&self, conn: ConnKey) -> Vec<Value> {
            self.out.take_to(To::Conn(conn))
        }
    }

    fn entry<'a>(m: &'a Value, id: &str) -> Option<&'a Value> {
        m["data"]["endpoints"]
            .as_array()?
            .iter()
            .find(|e| e["id"] == id)
    }

    #[tokio::test(start_paused = true)]
    async fn a_subscriber_gets_its_snapshot_then_coalesced_deltas_through_the_backplane() {
        let f = fixture(100);
        let a = f.org.lookup("a").unwrap();
        f.joined("w1", 11).await;
        assert!(
            f.presence
                .subscribe(5, Watch::Subtree(a), true, Some(ReqId::Num(1)))
                .await
        );
        f.caught_up().await;
        let snap = f.to(5);
        assert_eq!(snap.len(), 1);
        assert_eq!(snap[0]["re"], 1);
        assert_eq!(entry(&snap[0], "w1").unwrap()["status"], "online");
        // Two changes inside one window: one delta, with the latest.
        f.set("w1", 11, Chosen::Busy).await;
        f.joined("w2", 12).await;
        f.set("w1", 11, Chosen::Away).await;
        f.caught_up().await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        f.caught_up().await;
        let deltas = f.to(5);
        assert_eq!(deltas.len(), 1, "{deltas:?}");
        assert_eq!(entry(&deltas[0], "w1").unwrap()["status"], "away");
        assert_eq!(entry(&deltas[0], "w2").unwrap()["status"], "online");
        // An update from a connection that is not the terminal's is ignored.
        f.set("w1", 99, Chosen::Busy).await;
        f.caught_up().await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        f.caught_up().await;
        assert!(f.to(5).is_empty());
    }

    #[test]
    fn events_cross_nodes_whole_a_cleared_text_included() {
        for text in [None, Some(None), Some(Some("巡查中".into()))] {
            let ev = Event::Updated {
                ep: NodeId::parse("w1").unwrap(),
                conn: 7,
                update: Update {
                    status: Some(Chosen::Busy),
                    text,
                    location: None,
                },
                at: 5,
            };
            let json = serde_json::to_string(&ev).unwrap();
            assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), ev, "{json}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_leaves_loses_its_subscriptions_and_limits_hold() {
        let f = fixture(20);
        let (a, t) = (f.org.lookup("a").unwrap(), f.org.lookup("t").unwrap());
        for (w, re) in [
            (Watch::Subtree(a), 1),
            (Watch::Subtree(t), 2),
            (Watch::Chain { of: t }, 3),
        ] {
            f.presence
                .subscribe(5, w, false, Some(ReqId::Num(re)))
                .await;
        }
        assert!(
            f.presence
                .unsubscribe(5, Watch::Subtree(a), Some(ReqId::Num(4)))
                .await
        );
        assert!(
            f.presence
                .unsubscribe(5, Watch::Subtree(a), Some(ReqId::Num(5)))
                .await
        );
        f.caught_up().await;
        let replies = f.to(5);
        let codes: Vec<&str> = replies
            .iter()
            .map(|m| m["data"]["code"].as_str().unwrap_or("ok"))
            .collect();
        assert_eq!(
            codes,
            ["ok", "ok", "too_many_subscriptions", "ok", "not_subscribed"]
        );
        // The subscriber's connection ends: its subscription goes with it.
        let news = TerminalNews::Left {
            ep: f.id("t"),
            conn: 5,
            seat: crate::auth::Seat::MAIN,
            at: 1_000_000,
        };
        f.out.bus().publish(news).await;
        f.joined("w1", 11).await;
        f.caught_up().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        f.caught_up().await;
        assert!(f.to(5).is_empty(), "no deltas to a connection that left");
    }

    #[tokio::test(start_paused = true)]
    async fn a_subscription_asked_as_its_connection_closed_is_not_kept() {
        let f = fixture(20);
        let a = f.org.lookup("a").unwrap();
        // The connection closed (and its departure was handled) before the actor got here.
        f.out.close(5);
        f.presence
            .subscribe(5, Watch::Subtree(a), false, Some(ReqId::Num(1)))
            .await;
        f.caught_up().await;
        f.joined("w1", 11).await;
        f.caught_up().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        f.caught_up().await;
        assert!(f.to(5).is_empty(), "neither a snapshot nor deltas");
    }
}

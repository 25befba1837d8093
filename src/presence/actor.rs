//! The async shell around the presence core: one task owns the state, so there are no locks.
//!
//! Inputs arrive on one bounded channel: presence events (from the backplane, i.e. from every
//! hub node) and subscription requests (from this node's connections). After each burst of
//! inputs the core is asked for due deltas; each delta is encoded once and the same frame is
//! written to every recipient's socket. Snapshots are sent from here too, which guarantees that a
//! subscriber sees its snapshot before any delta that follows it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::core::{Activity, ConnKey, Fanout, Presence, SubscribeError, Update, Watch};
use super::wire;
use crate::clock::now_ms;
use crate::org::{NodeIdx, Org};
use crate::telemetry::Metrics;
use crate::transport::conn::Conn;
use crate::transport::protocol::{ErrorCode, ProtoError, ReqId, success};

/// A presence change, as carried between hub nodes by the backplane.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    Connected {
        ep: u32,
        conn: ConnKey,
        at: u64,
    },
    Disconnected {
        ep: u32,
        conn: ConnKey,
        at: u64,
    },
    Updated {
        ep: u32,
        conn: ConnKey,
        update: Update,
        at: u64,
    },
    Activity {
        ep: u32,
        activity: Activity,
        at: u64,
    },
}

enum Command {
    Event(Event, Instant),
    Subscribe {
        conn: Arc<Conn>,
        watch: Watch,
        endpoints: bool,
        re: Option<ReqId>,
    },
    Unsubscribe {
        conn: Arc<Conn>,
        watch: Watch,
        re: Option<ReqId>,
    },
    Forget(ConnKey),
    Snapshot {
        watch: Watch,
        endpoints: bool,
        reply: oneshot::Sender<Vec<u8>>,
    },
    Stop,
}

/// Inputs taken per wake-up before flushing, so a burst is coalesced but the loop stays fair.
const BURST: usize = 4096;
/// Bound of the input channel; senders wait (backpressure) when it is full.
pub const INBOX: usize = 65_536;

/// Cheap to clone; every connection and the backplane hold one.
#[derive(Clone)]
pub struct PresenceHandle {
    tx: mpsc::Sender<Command>,
}

impl PresenceHandle {
    /// Applies a presence event. Waits only if the actor is `INBOX` commands behind.
    pub async fn apply(&self, ev: Event) {
        // Fails only after `stop`, when nothing is listening any more.
        let _ = self.tx.send(Command::Event(ev, Instant::now())).await;
    }

    /// The actor replies to the connection itself: the snapshot, or a typed error.
    pub async fn subscribe(
        &self,
        conn: Arc<Conn>,
        watch: Watch,
        endpoints: bool,
        re: Option<ReqId>,
    ) {
        let _ = self
            .tx
            .send(Command::Subscribe {
                conn,
                watch,
                endpoints,
                re,
            })
            .await;
    }

    pub async fn unsubscribe(&self, conn: Arc<Conn>, watch: Watch, re: Option<ReqId>) {
        let _ = self.tx.send(Command::Unsubscribe { conn, watch, re }).await;
    }

    /// Drops every subscription of a connection that ended.
    pub async fn forget(&self, conn: ConnKey) {
        let _ = self.tx.send(Command::Forget(conn)).await;
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
    /// This node's subscribed connections.
    subscribers: HashMap<ConnKey, Arc<Conn>>,
    metrics: Arc<Metrics>,
    /// When each event applied since the last flush arrived, for the fan-out latency histogram.
    pending: Vec<Instant>,
}

pub fn spawn(
    org: Arc<Org>,
    coalesce_ms: u64,
    max_subscriptions: usize,
    metrics: Arc<Metrics>,
) -> (PresenceHandle, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(INBOX);
    let actor = Actor {
        core: Presence::new(org, coalesce_ms, max_subscriptions),
        subscribers: HashMap::new(),
        metrics,
        pending: Vec::new(),
    };
    (PresenceHandle { tx }, tokio::spawn(actor.run(rx)))
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut batch = Vec::with_capacity(64);
        loop {
            let wait = self
                .core
                .next_flush_at()
                .map(|due| Duration::from_millis(due.saturating_sub(now_ms())));
            tokio::select! {
                n = rx.recv_many(&mut batch, BURST) => {
                    if n == 0 {
                        return;
                    }
                    for cmd in batch.drain(..) {
                        if !self.handle(cmd) {
                            return;
                        }
                    }
                }
                _ = tokio::time::sleep(wait.unwrap_or_default()), if wait.is_some() => {}
            }
            self.flush();
        }
    }

    /// Returns false on `Stop`.
    fn handle(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Event(ev, received) => {
                let changed = match ev {
                    Event::Connected { ep, conn, at } => self.core.connect(NodeIdx(ep), conn, at),
                    Event::Disconnected { ep, conn, at } => {
                        self.core.disconnect(NodeIdx(ep), conn, at)
                    }
                    Event::Updated {
                        ep,
                        conn,
                        update,
                        at,
                    } => self.core.update(NodeIdx(ep), conn, &update, at),
                    Event::Activity { ep, activity, at } => {
                        self.core.set_activity(NodeIdx(ep), activity, at)
                    }
                };
                if changed {
                    self.metrics
                        .presence_changes
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                if self.core.next_flush_at().is_some() {
                    self.pending.push(received);
                }
            }
            Command::Subscribe {
                conn,
                watch,
                endpoints,
                re,
            } => match self.core.subscribe(conn.key, watch, endpoints, now_ms()) {
                Ok((snap, earlier)) => {
                    self.deliver(&earlier);
                    conn.send(&wire::snapshot_reply(&self.core, &snap, re.as_ref()));
                    self.subscribers.insert(conn.key, conn);
                }
                Err(SubscribeError::TooMany(n)) => {
                    let e = ProtoError::new(
                        ErrorCode::TooManySubscriptions,
                        format!(
                            "presence.subscribe: this connection already holds {n} subscriptions, the most allowed; unsubscribe first"
                        ),
                    )
                    .answering(re, "presence.subscribe");
                    conn.send(&e.encode());
                }
            },
            Command::Unsubscribe { conn, watch, re } => {
                if self.core.unsubscribe(conn.key, watch) {
                    if self.core.subscriptions(conn.key) == 0 {
                        self.subscribers.remove(&conn.key);
                    }
                    if let Some(f) =
                        success(re.as_ref(), "presence.unsubscribe", &serde_json::json!({}))
                    {
                        conn.send(&f);
                    }
                } else {
                    let e = ProtoError::new(
                        ErrorCode::NotSubscribed,
                        "presence.unsubscribe: no such subscription on this connection",
                    )
                    .answering(re, "presence.unsubscribe");
                    conn.send(&e.encode());
                }
            }
            Command::Forget(key) => {
                self.core.drop_subscriber(key);
                self.subscribers.remove(&key);
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
        let fanouts = self.core.flush(now_ms());
        if fanouts.is_empty() && self.core.next_flush_at().is_some() {
            return;
        }
        self.deliver(&fanouts);
    }

    /// Sends each delta, encoded once, to its recipients.
    fn deliver(&mut self, fanouts: &[Fanout]) {
        for f in fanouts {
            let frame = wire::delta_frame(&self.core, f);
            for key in &f.recipients {
                if let Some(conn) = self.subscribers.get(key) {
                    conn.send(&frame);
                }
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

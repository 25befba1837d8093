//! hub — this node: its live connections, the shared handles every connection needs, and the
//! background sweep that enforces heartbeats and credential expiry.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::auth::{Authority, Credential};
use crate::backplane::Backplane;
use crate::calls::service::CallsHandle;
use crate::clock::now_ms;
use crate::config::Config;
use crate::orders::feed::FeedHandle;
use crate::orders::service::OrdersHandle;
use crate::org::{NodeIdx, Org};
use crate::presence::actor::{Event, PresenceHandle};
use crate::store::Store;
use crate::telemetry::Metrics;
use crate::transport::conn::{Close, Conn, QueueLimits};

/// This node's connections, one per terminal.
#[derive(Default)]
pub struct Registry {
    by_endpoint: DashMap<NodeIdx, Arc<Conn>>,
    /// Signalled whenever a connection leaves; shutdown waits on it.
    left: Notify,
}

impl Registry {
    pub fn get(&self, ep: NodeIdx) -> Option<Arc<Conn>> {
        self.by_endpoint.get(&ep).map(|c| Arc::clone(&c))
    }

    pub fn len(&self) -> usize {
        self.by_endpoint.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_endpoint.is_empty()
    }

    /// Registers `conn`; returns the connection it replaces, if the terminal was connected.
    fn insert(&self, conn: Arc<Conn>) -> Option<Arc<Conn>> {
        self.by_endpoint.insert(conn.endpoint, conn)
    }

    /// Unregisters `conn` unless a newer connection of the same terminal already took its place.
    fn remove(&self, conn: &Conn) {
        self.by_endpoint
            .remove_if(&conn.endpoint, |_, c| c.key == conn.key);
        self.left.notify_waiters();
    }

    pub fn for_each(&self, mut f: impl FnMut(&Arc<Conn>)) {
        for c in self.by_endpoint.iter() {
            f(c.value());
        }
    }
}

pub struct Hub {
    pub org: Arc<Org>,
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    pub authority: Arc<Authority>,
    pub presence: PresenceHandle,
    pub backplane: Arc<dyn Backplane>,
    pub local: Arc<Registry>,
    pub store: Arc<Store>,
    pub orders: OrdersHandle,
    pub feed: FeedHandle,
    pub calls: CallsHandle,
    pub shutdown: CancellationToken,
    /// Cleared when shutdown begins; `/readyz` reports it.
    pub accepting: AtomicBool,
    /// Most sockets this node holds at once (see `transport.max_connections`).
    pub max_connections: usize,
    /// Sockets being answered 503 at once, beyond which a refused socket is just closed.
    pub max_refusing: usize,
    pub refusing: std::sync::atomic::AtomicUsize,
    pub(crate) next_conn: AtomicU64,
}

/// The first connection key of this process. Keys must differ across restarts (and, later, hub
/// nodes): random high bits; within a process they only grow.
pub(crate) fn first_conn_key() -> AtomicU64 {
    let mut salt = [0u8; 4];
    let _ = getrandom::fill(&mut salt);
    AtomicU64::new((u32::from_le_bytes(salt) as u64) << 32)
}

impl Hub {
    /// Takes over an upgraded socket: registers the terminal (closing an older connection of the
    /// same terminal: the newer wins) and runs the connection until it ends.
    pub(crate) async fn run_connection(
        self: Arc<Self>,
        stream: TcpStream,
        leftover: Bytes,
        cred: Credential,
    ) {
        // hyper's leftover bytes share its whole read buffer (8 KiB even when empty); copy what
        // matters and let the buffer go before this connection settles in for hours.
        let early = leftover.to_vec();
        drop(leftover);
        let t = &self.config.transport;
        let conn = Arc::new(Conn::new(
            self.next_conn.fetch_add(1, Relaxed),
            cred.endpoint,
            cred.role,
            cred.expires_at,
            stream,
            Arc::clone(&self.metrics),
            QueueLimits {
                frames: t.send_queue_frames,
                bytes: t.send_queue_bytes,
            },
            now_ms(),
        ));
        if let Some(old) = self.local.insert(Arc::clone(&conn)) {
            tracing::debug!(endpoint = %self.org.id(conn.endpoint), "replacing an older connection");
            old.close(Close::Replaced);
        }
        if !self.accepting.load(Relaxed) {
            // The upgrade finished after the drain told everyone to go; this one goes too.
            conn.close(Close::GoingAway);
        }
        self.metrics.connections.fetch_add(1, Relaxed);
        self.metrics.connections_opened.fetch_add(1, Relaxed);
        let why = crate::transport::session::run(Arc::clone(&self), Arc::clone(&conn), early).await;
        self.metrics.ended(why);
        conn.end();
        tracing::debug!(endpoint = %self.org.id(conn.endpoint), conn = conn.key, reason = ?why, "connection ended");
        self.local.remove(&conn);
        self.backplane
            .publish_presence(Event::Disconnected {
                ep: conn.endpoint.0,
                conn: conn.key,
                at: now_ms(),
            })
            .await;
        self.presence.forget(conn.key).await;
        self.calls
            .send(crate::calls::service::Cmd::Disconnected {
                ep: conn.endpoint,
                conn: conn.key,
            })
            .await;
        self.feed
            .send(crate::orders::feed::Cmd::Forget(conn.key))
            .await;
        self.metrics.connections.fetch_sub(1, Relaxed);
    }

    /// Closes connections whose terminal fell silent or whose credential expired.
    pub async fn sweep(self: Arc<Self>) {
        let timeout = self.config.transport.heartbeat_timeout_ms;
        let period = Duration::from_millis((timeout / 4).clamp(10, 1000));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.shutdown.cancelled() => return,
            }
            let now = now_ms();
            self.local.for_each(|c| {
                if now.saturating_sub(c.last_seen()) > timeout {
                    c.close(Close::HeartbeatTimeout);
                } else if now / 1000 >= c.expires_at {
                    c.close(Close::CredentialExpired);
                }
            });
        }
    }

    /// Tells every terminal the hub is going away, then waits (at most `deadline`) for their
    /// queues to drain and their connections to end. Returns how many were still open.
    pub async fn drain(&self, deadline: Duration) -> usize {
        self.local.for_each(|c| c.close(Close::GoingAway));
        let wait = async {
            loop {
                let left = self.local.left.notified();
                let mut left = std::pin::pin!(left);
                // Registered before the check, so a departure in between is not missed.
                left.as_mut().enable();
                if self.local.is_empty() {
                    return;
                }
                left.await;
            }
        };
        let _ = tokio::time::timeout(deadline, wait).await;
        self.local.len()
    }
}

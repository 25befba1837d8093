//! transport — WebSocket terminals, knowing no domain: accept and upgrade (`server`), RFC 6455
//! framing as pure functions (`frame`), protocol v1 envelopes and typed errors (`protocol`), one
//! connection's socket and bounded send queue (`conn`), this node's connections (`registry`),
//! the task that serves one (`session`), and the table that hands each request type to the
//! service that owns it (`dispatch`).

pub mod config;
pub mod conn;
pub mod dispatch;
pub mod frame;
pub mod protocol;
pub mod registry;
pub mod server;
pub mod session;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use self::config::TransportConfig;
use self::conn::{Close, Conn, QueueLimits};
use self::dispatch::{Lifecycle, Origin, Table};
use self::registry::Registry;
use crate::auth::{Authority, Credential};
use crate::clock::Clock;
use crate::org::Org;
use crate::telemetry::Metrics;

/// This node's terminals: accepting them, serving them, and letting them go.
pub struct Transport {
    pub org: Arc<Org>,
    pub config: TransportConfig,
    pub metrics: Arc<Metrics>,
    pub authority: Arc<Authority>,
    pub clock: Clock,
    pub registry: Arc<Registry>,
    pub table: Arc<Table>,
    lifecycle: Arc<dyn Lifecycle>,
    /// Announced in `hello`: subscriptions one connection may hold.
    pub max_subscriptions: usize,
    /// Cancelled when shutdown begins.
    pub shutdown: CancellationToken,
    /// Cleared when shutdown begins: new terminals are refused with 503 `shutting_down`.
    pub accepting: AtomicBool,
    /// Set when the drain is over: the listener closes.
    pub closed: CancellationToken,
    pub caps: Caps,
    /// Terminals holding (or being given) a slot under `caps.terminals`.
    pub terminals: AtomicUsize,
    /// Sockets being answered 503 at once past `caps.sockets`.
    pub refusing: AtomicUsize,
    /// Connection tickets already used, until they expire (ticket id → expiry, Unix seconds).
    tickets_used: Mutex<HashMap<String, u64>>,
}

/// How many sockets this node takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    /// Terminals (upgraded WebSockets); past it an upgrade is answered 503 `at_capacity`.
    pub terminals: usize,
    /// Every socket, HTTP included: terminals plus `transport.http_room`. Past it a socket gets
    /// a bare 503 before its request is read.
    pub sockets: usize,
    /// Bare 503s being written at once, beyond which a socket is just closed.
    pub refusing: usize,
}

/// Descriptors kept free: the configured reserve, but at most a quarter of a small limit.
pub fn fd_reserve(fd_limit: u64, reserve: usize) -> usize {
    reserve.min(fd_limit as usize / 4)
}

impl Caps {
    /// From the open-file limit: what is open at start-up (store, listener, logs) and the reserve
    /// stay free; of the rest, `http_room` (at most a quarter) is kept for HTTP and the remainder
    /// goes to terminals, or `configured` terminals if that is lower.
    pub fn from_limits(fd_limit: u64, open_at_start: usize, t: &TransportConfig) -> Caps {
        let fd_limit_us = fd_limit.min(usize::MAX as u64) as usize;
        let reserve = fd_reserve(fd_limit, t.fd_reserve);
        let usable = fd_limit_us
            .saturating_sub(open_at_start)
            .saturating_sub(reserve)
            .max(2);
        let http = t.http_room.min(usable / 4).max(1);
        let from_fds = usable - http;
        let terminals = if t.max_connections == 0 {
            from_fds
        } else {
            t.max_connections.min(from_fds)
        };
        Caps {
            terminals,
            sockets: terminals + http,
            refusing: (reserve / 2).max(1),
        }
    }
}

pub struct Parts {
    pub org: Arc<Org>,
    pub config: TransportConfig,
    pub metrics: Arc<Metrics>,
    pub authority: Arc<Authority>,
    pub clock: Clock,
    pub registry: Arc<Registry>,
    pub table: Arc<Table>,
    pub lifecycle: Arc<dyn Lifecycle>,
    pub max_subscriptions: usize,
    pub caps: Caps,
}

impl Transport {
    pub fn new(p: Parts) -> Transport {
        Transport {
            org: p.org,
            config: p.config,
            metrics: p.metrics,
            authority: p.authority,
            clock: p.clock,
            registry: p.registry,
            table: p.table,
            lifecycle: p.lifecycle,
            max_subscriptions: p.max_subscriptions,
            shutdown: CancellationToken::new(),
            accepting: AtomicBool::new(true),
            closed: CancellationToken::new(),
            caps: p.caps,
            terminals: AtomicUsize::new(0),
            refusing: AtomicUsize::new(0),
            tickets_used: Mutex::new(HashMap::new()),
        }
    }

    /// Records a ticket's use; false if it was used before. Expired entries are dropped as new
    /// ones come, so the map holds at most the tickets of the last `ticket_ttl_secs`.
    pub fn use_ticket(&self, id: String, expires_at: u64, now: u64) -> bool {
        let mut used = self.tickets_used.lock().unwrap_or_else(|e| e.into_inner());
        if used.len() > 1024 {
            used.retain(|_, exp| *exp > now);
        }
        used.insert(id, expires_at).is_none()
    }

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
        let t = &self.config;
        let now_us = self.clock.now_us();
        let now = now_us / 1000;
        let conn = Arc::new(Conn::new(
            // Microseconds: a terminal that moves to another node within the millisecond it
            // connected must still get the larger key there.
            self.registry.mint_key(now_us),
            &cred,
            stream,
            Arc::clone(&self.metrics),
            QueueLimits {
                frames: t.send_queue_frames,
                bytes: t.send_queue_bytes,
            },
            self.clock.mono_ms(),
        ));
        let origin = conn.origin();
        if let Some(old) = self.registry.insert(Arc::clone(&conn)) {
            tracing::debug!(endpoint = %self.org.id(conn.endpoint), "replacing an older connection");
            old.close(Close::Replaced);
        }
        if !self.accepting.load(Relaxed) {
            // The upgrade finished after the drain told everyone to go; this one goes too.
            conn.close(Close::GoingAway);
        }
        self.metrics.connections.fetch_add(1, Relaxed);
        self.metrics.connections_opened.fetch_add(1, Relaxed);
        session::hello(&self, &conn);
        // Cold paths (once per connection) are boxed so that their state does not sit inside
        // every idle connection's task for its whole life.
        Box::pin(self.lifecycle.opened(origin, now)).await;
        let why = session::run(Arc::clone(&self), Arc::clone(&conn), early).await;
        self.metrics.ended(why);
        conn.end();
        tracing::debug!(endpoint = %self.org.id(conn.endpoint), conn = conn.key, reason = ?why, "connection ended");
        self.registry.remove(&conn);
        self.terminals.fetch_sub(1, Relaxed);
        Box::pin(self.lifecycle.closed(origin, self.clock.now_ms())).await;
        self.metrics.connections.fetch_sub(1, Relaxed);
    }

    /// Closes connections whose terminal fell silent or whose credential expired.
    pub async fn sweep(self: Arc<Self>) {
        let timeout = self.config.heartbeat_timeout_ms;
        let period = Duration::from_millis((timeout / 4).clamp(10, 1000));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.shutdown.cancelled() => return,
            }
            let (mono, wall_s) = (self.clock.mono_ms(), self.clock.now_ms() / 1000);
            self.registry.for_each(|c| {
                if mono.saturating_sub(c.last_seen()) > timeout {
                    c.close(Close::HeartbeatTimeout);
                } else if wall_s >= c.expires_at {
                    c.close(Close::CredentialExpired);
                }
            });
        }
    }

    /// Tells every terminal the hub is going away, then waits (at most `deadline`) for their
    /// queues to drain and their connections to end. Returns how many were still open.
    pub async fn drain(&self, deadline: Duration) -> usize {
        self.registry.for_each(|c| c.close(Close::GoingAway));
        let wait = async {
            loop {
                let left = self.registry.left.notified();
                let mut left = std::pin::pin!(left);
                // Registered before the check, so a departure in between is not missed.
                left.as_mut().enable();
                if self.registry.is_empty() {
                    return;
                }
                left.await;
            }
        };
        let _ = tokio::time::timeout(deadline, wait).await;
        self.registry.len()
    }
}

impl Conn {
    /// Who this connection is, as the services see it.
    pub fn origin(&self) -> Origin {
        Origin {
            conn: self.key,
            endpoint: self.endpoint,
            role: self.role,
            seat: self.seat,
            expires_at: self.expires_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_leave_a_reserve_and_room_for_http() {
        let t = TransportConfig::default();
        let c = Caps::from_limits(20_000, 20, &t);
        assert_eq!(c.sockets, 20_000 - 20 - 256);
        assert_eq!(c.terminals, c.sockets - 256);
        let limited = TransportConfig {
            max_connections: 500,
            ..TransportConfig::default()
        };
        let c = Caps::from_limits(20_000, 20, &limited);
        assert_eq!((c.terminals, c.sockets), (500, 756));
        let c = Caps::from_limits(128, 16, &t);
        assert_eq!(c.sockets, 128 - 16 - 32, "small limits keep a quarter");
        assert!(c.terminals >= 3 * c.sockets / 4 - 1, "{c:?}");
    }
}

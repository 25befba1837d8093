//! app — builds a hub from its configuration, serves it, and shuts it down in order.
//!
//! Shutdown is one path: stop accepting (listener dropped, `/readyz` turns 503) → end the calls
//! still going on → tell every terminal the hub is going away (close 1001) and let their queues
//! drain → write what the orders decided → stop presence.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;

use crate::auth::Authority;
use crate::backplane::{Backplane, Memory};
use crate::config::{BackplaneKind, Config, ConfigError};
use crate::hub::{Hub, Registry, first_conn_key};
use crate::orders;
use crate::org::{LoadError, Org};
use crate::presence;
use crate::store::Store;
use crate::telemetry::{Metrics, open_file_limit};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("org tree {path}: {source}")]
    Org { path: String, source: LoadError },
    #[error("auth: {0}")]
    Auth(String),
    #[error("store {path}: {source}")]
    Store {
        path: String,
        source: crate::store::StoreError,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A hub that is serving.
pub struct Running {
    pub hub: Arc<Hub>,
    pub addr: SocketAddr,
    server: JoinHandle<()>,
    sweep: JoinHandle<()>,
    presence: JoinHandle<()>,
    orders: JoinHandle<()>,
    calls: JoinHandle<()>,
}

/// Descriptors kept free: the configured reserve, but at most a quarter of a small limit.
pub fn fd_reserve(fd_limit: u64, reserve: usize) -> usize {
    reserve.min(fd_limit as usize / 4)
}

/// Sockets a process may hold: the open-file limit, less what is already open at start-up
/// (store, listener, logs), less the reserve (store readers, refusing at capacity); or the
/// configured cap if lower.
pub fn connection_cap(
    fd_limit: u64,
    open_at_start: usize,
    reserve: usize,
    configured: usize,
) -> usize {
    let fd_limit = fd_limit.min(usize::MAX as u64) as usize;
    let from_fds = fd_limit
        .saturating_sub(open_at_start)
        .saturating_sub(fd_reserve(fd_limit as u64, reserve))
        .max(1);
    if configured == 0 {
        from_fds
    } else {
        configured.min(from_fds)
    }
}

fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

pub async fn start(config: Config) -> Result<Running, StartError> {
    let org = Arc::new(
        Org::load(&config.org.file).map_err(|source| StartError::Org {
            path: config.org.file.display().to_string(),
            source,
        })?,
    );
    let authority = Arc::new(Authority::new(&config.signing_secret()?).map_err(StartError::Auth)?);
    let metrics = Arc::new(Metrics::default());
    let (presence, presence_task) = presence::actor::spawn(
        Arc::clone(&org),
        config.presence.coalesce_ms,
        config.presence.max_subscriptions,
        Arc::clone(&metrics),
    );
    let local = Arc::new(Registry::default());
    let backplane: Arc<dyn Backplane> = match config.backplane.kind {
        BackplaneKind::Memory => Arc::new(Memory::new(presence.clone(), Arc::clone(&local))),
    };
    let store_path = config.store_path();
    let store = Arc::new(
        Store::open(&store_path, Arc::clone(&metrics)).map_err(|source| StartError::Store {
            path: store_path.display().to_string(),
            source,
        })?,
    );
    let feed = orders::feed::spawn(
        Arc::clone(&org),
        config.orders.feed_coalesce_ms,
        config.presence.max_subscriptions,
    );
    let (orders, orders_task) = orders::service::start(
        Arc::clone(&org),
        config.orders.policy(),
        Arc::clone(&store),
        Arc::clone(&backplane),
        feed.clone(),
        Arc::clone(&metrics),
        orders::service::Retention {
            every: Duration::from_secs(config.store.prune_interval_secs.max(1)),
            keep_ms: config.store.outbox_keep_secs * 1000,
        },
    )
    .map_err(|source| StartError::Store {
        path: store_path.display().to_string(),
        source,
    })?;
    let (calls, calls_task) = crate::calls::service::start(
        Arc::clone(&org),
        config.calls.rules(),
        Arc::clone(&store),
        Arc::clone(&backplane),
        orders.clone(),
        Arc::clone(&metrics),
    )
    .map_err(|source| StartError::Store {
        path: store_path.display().to_string(),
        source,
    })?;
    let listener =
        bind(config.server.listen, config.server.backlog).map_err(|source| StartError::Bind {
            addr: config.server.listen,
            source,
        })?;
    // A bound listener always has a local address.
    let addr = listener
        .local_addr()
        .expect("bound listener has an address");
    let fd_limit = open_file_limit();
    let open_at_start = crate::telemetry::ProcessStats::read().open_fds as usize;
    let tc = &config.transport;
    let max_connections =
        connection_cap(fd_limit, open_at_start, tc.fd_reserve, tc.max_connections);
    let refusing = (fd_reserve(fd_limit, tc.fd_reserve) / 2).max(1);
    metrics.fd_limit.store(fd_limit, Relaxed);
    metrics
        .max_connections
        .store(max_connections as u64, Relaxed);
    let t = org.tier_counts();
    tracing::info!(
        %addr,
        nodes = org.len(),
        tiers = ?t,
        fd_limit,
        open_at_start,
        max_connections,
        backplane = backplane.name(),
        "gridhub serving; open-file limit {fd_limit}, accepting at most {max_connections} connections"
    );
    let hub = Arc::new(Hub {
        org,
        config: Arc::new(config),
        metrics,
        authority,
        presence,
        backplane,
        local,
        store,
        orders,
        feed,
        calls,
        max_connections,
        max_refusing: refusing,
        shutdown: tokio_util::sync::CancellationToken::new(),
        accepting: std::sync::atomic::AtomicBool::new(true),
        refusing: Default::default(),
        next_conn: first_conn_key(),
    });
    let router = crate::api::router(Arc::clone(&hub));
    let server = tokio::spawn(crate::transport::server::accept_loop(
        listener,
        Arc::clone(&hub),
        router,
    ));
    let sweep = tokio::spawn(Arc::clone(&hub).sweep());
    Ok(Running {
        hub,
        addr,
        server,
        sweep,
        presence: presence_task,
        orders: orders_task,
        calls: calls_task,
    })
}

impl Running {
    /// Graceful shutdown; returns how many connections had to be cut at the drain deadline.
    pub async fn shutdown(self) -> usize {
        let hub = &self.hub;
        hub.accepting.store(false, Relaxed);
        hub.shutdown.cancel();
        let _ = self.server.await;
        let _ = self.sweep.await;
        // Calls still going on end as interrupted while their parties can still be told.
        hub.calls.stop().await;
        let _ = self.calls.await;
        let deadline = Duration::from_millis(hub.config.transport.shutdown_drain_ms);
        let left = hub.drain(deadline).await;
        // Everything decided (missed-call notices included) is written before the store closes.
        hub.orders.stop().await;
        let _ = self.orders.await;
        let store = Arc::clone(&hub.store);
        let _ = tokio::task::spawn_blocking(move || store.close()).await;
        hub.presence.stop().await;
        let _ = self.presence.await;
        tracing::info!(cut = left, "gridhub stopped");
        left
    }
}

#[cfg(test)]
mod tests {
    use super::connection_cap;

    #[test]
    fn connection_cap_leaves_a_reserve() {
        assert_eq!(connection_cap(20_000, 20, 256, 0), 19_724);
        assert_eq!(connection_cap(20_000, 20, 256, 500), 500);
        assert_eq!(connection_cap(20_000, 20, 256, 50_000), 19_724);
        assert_eq!(
            connection_cap(128, 16, 256, 0),
            80,
            "small limits keep a quarter"
        );
    }
}

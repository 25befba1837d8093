//! app — builds a hub node from its configuration, serves it, and shuts it down in order.
//!
//! Start-up wires the parts once: the backplane (alone, or joined to other nodes through a
//! broker), the services, and the dispatch table that gives each request type to the service
//! that owns it — here, or forwarded to the node that runs it.
//!
//! Shutdown is one path: stop taking terminals (new ones are told 503 `shutting_down`, `/readyz`
//! turns 503) → end the calls still going on → tell every terminal the hub is going away (close
//! 1001) and let their queues drain → close the listener → write what the orders and the outbox
//! decided → close the store → stop presence.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;

use crate::auth::Authority;
use crate::backplane::memory::Broker;
use crate::backplane::redis::RedisLink;
use crate::backplane::{Backplane, BackplaneKind, Forward, JoinError, Outbound};
use crate::calls;
use crate::clock::Clock;
use crate::config::{Config, ConfigError};
use crate::hub::{Hub, Services};
use crate::orders;
use crate::org::{LoadError, Org};
use crate::outbox;
use crate::presence;
use crate::sessions;
use crate::store::Store;
use crate::telemetry::{Metrics, open_file_limit};
use crate::transport::dispatch::{HubId, Table};
use crate::transport::registry::Registry;
use crate::transport::{Caps, Parts, Transport};

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
    #[error("cannot join the cluster: {0}")]
    Cluster(#[from] JoinError),
}

/// A hub node that is serving.
pub struct Running {
    pub hub: Arc<Hub>,
    pub addr: SocketAddr,
    broker: Option<Arc<Broker>>,
    redis: Option<Arc<RedisLink>>,
    tasks: Tasks,
}

struct Tasks {
    server: JoinHandle<()>,
    sweep: JoinHandle<()>,
    presence: JoinHandle<()>,
    feed: JoinHandle<()>,
    inbound: Option<JoinHandle<()>>,
    services: Option<ServiceTasks>,
}

struct ServiceTasks {
    orders: JoinHandle<()>,
    outbox: JoinHandle<()>,
    outbox_control: outbox::service::OutboxControl,
    calls: JoinHandle<()>,
    sessions: JoinHandle<()>,
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

/// Starts a hub node on its own: the embedded default.
pub async fn start(config: Config) -> Result<Running, StartError> {
    start_node(config, None).await
}

/// Starts a hub node; with a broker, it joins the other nodes that joined it (one process, for
/// tests and demos of a cluster); with `backplane.kind = "redis"`, the nodes of its cluster on
/// that Redis.
pub async fn start_node(
    config: Config,
    broker: Option<Arc<Broker>>,
) -> Result<Running, StartError> {
    let org = Arc::new(
        Org::load(&config.org.file).map_err(|source| StartError::Org {
            path: config.org.file.display().to_string(),
            source,
        })?,
    );
    let authority = Arc::new(Authority::new(&config.signing_secret()?).map_err(StartError::Auth)?);
    let metrics = Arc::new(Metrics::default());
    let clock = Clock::system();
    let hub_id = HubId(config.backplane.hub_id);
    let alone = broker.is_none() && config.backplane.kind == BackplaneKind::Memory;
    let runs_services = config.backplane.runs_services || alone;
    let registry = Arc::new(Registry::new(hub_id));
    metrics.link_up.store(1, Relaxed);
    metrics.store_up.store(1, Relaxed);
    metrics.link_nodes.store(1, Relaxed);
    let (link, inbound, redis) = match (&broker, &config.backplane.kind) {
        (Some(b), _) => {
            let (link, rx) = b.join(hub_id, &org.fingerprint(), runs_services)?;
            (Some(link), Some(rx), None)
        }
        (None, BackplaneKind::Redis) => {
            let b = &config.backplane;
            let settings = crate::backplane::redis::Settings {
                url: b.redis_url.clone(),
                redis_cluster: b.redis_cluster,
                cluster: b.cluster.clone(),
                lease_ms: b.lease_ms,
            };
            let mut waiting = false;
            let (redis, (link, rx)) = loop {
                match crate::backplane::redis::join(
                    settings.clone(),
                    hub_id,
                    &org.fingerprint(),
                    runs_services,
                    Arc::clone(&metrics),
                )
                .await
                {
                    Err(JoinError::SecondOwner(owner)) if b.standby && runs_services => {
                        if !waiting {
                            tracing::info!(
                                %owner,
                                "standing by: {owner} runs the services; taking them over when its lease lapses"
                            );
                            waiting = true;
                        }
                        tokio::time::sleep(Duration::from_millis(b.lease_ms / 3)).await;
                    }
                    joined => break joined?,
                }
            };
            if waiting {
                tracing::info!("taking over the services");
            }
            (Some(link), Some(rx), Some(redis))
        }
        (None, BackplaneKind::Memory) => (None, None, None),
    };
    let backplane = Arc::new(Backplane::new(
        Arc::clone(&org),
        Arc::clone(&registry),
        Arc::clone(&metrics),
        link.clone(),
    ));
    let out: Arc<dyn Outbound> = Arc::clone(&backplane) as Arc<dyn Outbound>;
    let (presence, presence_task) = presence::actor::spawn(
        Arc::clone(&org),
        presence::actor::Settings {
            coalesce_ms: config.presence.coalesce_ms,
            max_subscriptions: config.presence.max_subscriptions,
        },
        Arc::clone(&out),
        Arc::clone(&metrics),
        clock.clone(),
    );
    let (feed, feed_task) = orders::feed::spawn(
        Arc::clone(&org),
        config.orders.feed_coalesce_ms,
        config.presence.max_subscriptions,
        Arc::clone(&out),
        clock.clone(),
    );
    let calls_config = Arc::new(config.calls.clone());
    let mut table = Table::new();
    table
        .route(
            &presence::handler::KINDS,
            Arc::new(presence::handler::PresenceHandler {
                org: Arc::clone(&org),
                presence: presence.clone(),
                out: Arc::clone(&out),
                clock: clock.clone(),
                max_text_chars: config.presence.max_text_chars,
            }),
        )
        .route(&orders::feed::KINDS, feed)
        .greet(
            "calls",
            calls::handler::greeting(Arc::clone(&org), Arc::clone(&calls_config)),
        );
    let (services, service_tasks) = if runs_services {
        let (s, t) = loop {
            match start_services(&config, &org, &metrics, &clock, &out, &calls_config) {
                // The node it takes over from may hold the database a moment longer than its
                // lease (its session not yet ended): a standby waits for that too.
                Err(StartError::Store {
                    source: crate::store::StoreError::Held(why),
                    ..
                }) if config.backplane.standby => {
                    tracing::info!(%why, "standing by for the database's writer lock");
                    tokio::time::sleep(Duration::from_millis(config.backplane.lease_ms / 3)).await;
                }
                started => break started?,
            }
        };
        let forward: Vec<(
            &[&'static str],
            Arc<dyn crate::transport::dispatch::Handler>,
        )> = vec![
            (&orders::handler::KINDS, t.orders_handler.clone()),
            (&outbox::KINDS, t.outbox_handler.clone()),
            (&calls::handler::KINDS, t.calls_handler.clone()),
            (&sessions::handler::KINDS, t.sessions_handler.clone()),
        ];
        for (kinds, h) in forward {
            table.route(kinds, h);
        }
        (Some(s), Some(t.tasks))
    } else {
        let fwd = Arc::new(Forward {
            backplane: Arc::clone(&backplane),
        });
        table
            .route(&orders::handler::KINDS, fwd.clone())
            .route(&outbox::KINDS, fwd.clone())
            .route(&calls::handler::KINDS, fwd.clone())
            .route(&sessions::handler::KINDS, fwd);
        (None, None)
    };
    let table = Arc::new(table);
    backplane.serve(Arc::clone(&table));
    let inbound = inbound.map(|rx| tokio::spawn(Arc::clone(&backplane).run_inbound(rx)));
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
    let caps = Caps::from_limits(fd_limit, open_at_start, &config.transport);
    metrics.fd_limit.store(fd_limit, Relaxed);
    metrics
        .max_connections
        .store(caps.terminals as u64, Relaxed);
    let transport = Arc::new(Transport::new(Parts {
        org: Arc::clone(&org),
        config: config.transport.clone(),
        metrics: Arc::clone(&metrics),
        authority: Arc::clone(&authority),
        clock: clock.clone(),
        registry,
        table,
        lifecycle: Arc::clone(&backplane) as _,
        max_subscriptions: config.presence.max_subscriptions,
        caps,
    }));
    let t = org.tier_counts();
    tracing::info!(
        %addr,
        hub = %hub_id,
        nodes = org.len(),
        tiers = ?t,
        fd_limit,
        open_at_start,
        terminals = caps.terminals,
        sockets = caps.sockets,
        backplane = backplane.name(),
        services = runs_services,
        "gridhub serving; open-file limit {fd_limit}, at most {} terminals",
        caps.terminals
    );
    let hub = Arc::new(Hub {
        org,
        config: Arc::new(config),
        metrics,
        authority,
        clock,
        transport: Arc::clone(&transport),
        backplane,
        presence,
        services,
    });
    let router = crate::api::router(Arc::clone(&hub));
    let server = tokio::spawn(crate::transport::server::accept_loop(
        listener,
        Arc::clone(&transport),
        router,
    ));
    let sweep = tokio::spawn(Arc::clone(&transport).sweep());
    Ok(Running {
        hub,
        addr,
        broker,
        redis,
        tasks: Tasks {
            server,
            sweep,
            presence: presence_task,
            feed: feed_task,
            inbound,
            services: service_tasks,
        },
    })
}

struct Started {
    tasks: ServiceTasks,
    orders_handler: Arc<dyn crate::transport::dispatch::Handler>,
    outbox_handler: Arc<dyn crate::transport::dispatch::Handler>,
    calls_handler: Arc<dyn crate::transport::dispatch::Handler>,
    sessions_handler: Arc<dyn crate::transport::dispatch::Handler>,
}

/// Opens the store and starts the stateful services: outbox, orders, calls, sessions.
fn start_services(
    config: &Config,
    org: &Arc<Org>,
    metrics: &Arc<Metrics>,
    clock: &Clock,
    out: &Arc<dyn Outbound>,
    calls_config: &Arc<crate::config::CallsConfig>,
) -> Result<(Services, Started), StartError> {
    let target = config.store_target();
    let store_error = |source| StartError::Store {
        path: target.to_string(),
        source,
    };
    let store =
        Arc::new(Store::open_target(target.clone(), Arc::clone(metrics)).map_err(store_error)?);
    let ob = outbox::service::start(
        Arc::clone(org),
        Arc::clone(&store),
        Arc::clone(out),
        Arc::clone(metrics),
        clock.clone(),
        config.outbox.clone(),
    )
    .map_err(store_error)?;
    let orders = orders::service::start(
        Arc::clone(org),
        config.orders.policy(),
        Arc::clone(&store),
        ob.outbox.clone(),
        Arc::clone(out),
        Arc::clone(metrics),
        clock.clone(),
    )
    .map_err(store_error)?;
    let (calls, service) = calls::service::prepare(
        Arc::clone(org),
        config.calls.rules(),
        Arc::clone(&store),
        Arc::clone(out),
        ob.outbox.clone(),
        Arc::clone(metrics),
        clock.clone(),
    )
    .map_err(store_error)?;
    let calls_task = calls::service::on_own_thread(service).map_err(|e| {
        store_error(crate::store::StoreError::Db(format!(
            "cannot start the calls thread: {e}"
        )))
    })?;
    let (sessions, sessions_task) = sessions::service::start(
        Arc::clone(org),
        config.sessions.rules(),
        Arc::clone(&store),
        Arc::clone(out),
        clock.clone(),
        sessions::service::Media {
            ip: sessions::sfu::media_ip(config.server.listen.ip()),
            recordings: config
                .sessions
                .record
                .then(|| config.server.data_dir.clone()),
            max_packets_per_sec: config.sessions.max_packets_per_sec,
        },
        Arc::clone(metrics),
    )
    .map_err(store_error)?;
    let started = Started {
        sessions_handler: Arc::new(sessions::handler::SessionsHandler {
            org: Arc::clone(org),
            sessions: sessions.clone(),
            out: Arc::clone(out),
            max_members: config.sessions.max_members,
        }),
        orders_handler: Arc::new(orders::handler::OrdersHandler {
            org: Arc::clone(org),
            orders: orders.handle.clone(),
            out: Arc::clone(out),
        }),
        outbox_handler: ob.handler,
        calls_handler: Arc::new(calls::handler::CallsHandler {
            org: Arc::clone(org),
            calls: calls.clone(),
            out: Arc::clone(out),
            config: Arc::clone(calls_config),
            clock: clock.clone(),
        }),
        tasks: ServiceTasks {
            orders: orders.task,
            outbox: ob.task,
            outbox_control: ob.control,
            calls: calls_task,
            sessions: sessions_task,
        },
    };
    Ok((
        Services {
            store,
            outbox: ob.outbox,
            orders: orders.handle,
            calls,
            sessions,
        },
        started,
    ))
}

impl Running {
    /// Graceful shutdown; returns how many connections had to be cut at the drain deadline.
    pub async fn shutdown(self) -> usize {
        let hub = &self.hub;
        let t = &hub.transport;
        t.accepting.store(false, Relaxed);
        t.shutdown.cancel();
        let _ = self.tasks.sweep.await;
        // Calls still going on end as interrupted while their parties can still be told.
        if let Some(s) = &hub.services {
            s.calls.stop().await;
            // Sessions end too, while their members can still be told.
            s.sessions.stop().await;
        }
        let deadline = Duration::from_millis(t.config.shutdown_drain_ms);
        let left = t.drain(deadline).await;
        // Out of the cluster once its terminals' goodbyes are out, before its services stop:
        // the other nodes then refuse what they would forward here ("unavailable") rather than
        // send it to a node that no longer answers.
        if let Some(r) = &self.redis {
            r.leave().await;
        }
        // The listener stayed open through the drain, telling late terminals `shutting_down`.
        t.closed.cancel();
        let _ = self.tasks.server.await;
        if let (Some(s), Some(tasks)) = (&hub.services, self.tasks.services) {
            let _ = tasks.calls.await;
            let _ = tasks.sessions.await;
            // Everything decided (missed-call notices included) is written before the store
            // closes: the orders first, then the outbox that carries their messages.
            s.orders.stop().await;
            let _ = tasks.orders.await;
            tasks.outbox_control.stop().await;
            let _ = tasks.outbox.await;
            let store = Arc::clone(&s.store);
            let _ = tokio::task::spawn_blocking(move || store.close()).await;
        }
        hub.presence.stop().await;
        let _ = self.tasks.presence.await;
        self.tasks.feed.abort();
        if let Some(b) = &self.broker {
            b.leave(hub.backplane.hub());
        }
        if let Some(i) = self.tasks.inbound {
            i.abort();
        }
        tracing::info!(cut = left, "gridhub stopped");
        left
    }
}

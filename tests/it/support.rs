//! Shared test harness: a hub on port 0 with its own data folder, and a terminal that speaks
//! the real protocol over a real socket.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use gridhub::app::Running;
use gridhub::auth::{Authority, Role};
use gridhub::config::Config;
use gridhub::org::Org;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "test-secret-test-secret-test-secret!";
/// A guard against hangs, never a performance assertion.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Real ids from the committed Jiamusi tree.
pub const CITY: &str = "230800";
pub const DONGFENG: &str = "230805";
pub const HUANAN: &str = "230822";

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

static N: AtomicU64 = AtomicU64::new(0);

pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "gridhub-it-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn test_config() -> Config {
    let mut c = Config::default();
    c.server.listen = "127.0.0.1:0".parse().unwrap();
    c.server.data_dir = temp_dir("data");
    c.auth.secret = SECRET.into();
    c.org.file = repo().join("config/org/jiamusi.csv");
    on_test_postgres(&mut c);
    c
}

/// With `TEST_POSTGRES_SERVER` set to a server (`postgres://user@host:port`), every hub keeps
/// its data there instead of in SQLite: one database per data folder, so a hub restarted on its
/// folder finds its data again. `scripts/test` runs the suite once this way.
pub fn on_test_postgres(c: &mut Config) {
    let Ok(server) = std::env::var("TEST_POSTGRES_SERVER") else {
        return;
    };
    let folder = c.server.data_dir.file_name().unwrap().to_string_lossy();
    let name: String = folder
        .chars()
        .map(|ch| if ch.is_ascii_alphanumeric() { ch } else { '_' })
        .collect();
    c.store.url = Some(gridhub::store::testing::ensure_database(&server, &name));
}

pub struct TestHub {
    pub running: Option<Running>,
    /// Removed when the hub is dropped.
    pub data_dir: Option<PathBuf>,
    pub addr: std::net::SocketAddr,
    pub org: Arc<Org>,
    pub auth: Authority,
}

pub async fn spawn_app(tweak: impl FnOnce(&mut Config)) -> TestHub {
    let mut config = test_config();
    tweak(&mut config);
    start(config, None).await
}

async fn start(
    mut config: Config,
    broker: Option<Arc<gridhub::backplane::memory::Broker>>,
) -> TestHub {
    on_test_postgres(&mut config);
    let data_dir = Some(config.server.data_dir.clone());
    let running = gridhub::app::start_node(config, broker)
        .await
        .expect("hub starts");
    TestHub {
        data_dir,
        addr: running.addr,
        org: Arc::clone(&running.hub.org),
        running: Some(running),
        auth: Authority::new(SECRET.as_bytes()).unwrap(),
    }
}

/// How the nodes of a test cluster meet.
pub enum Net {
    /// In this process, through the in-memory broker.
    Memory(Arc<gridhub::backplane::memory::Broker>),
    /// Through a real `redis-server` (or the nodes of a Redis Cluster, `redis_cluster`), as
    /// separate processes would.
    Redis {
        url: String,
        cluster: String,
        redis_cluster: bool,
    },
}

/// Leases short enough that a test sees a dead node go within a second.
pub const TEST_LEASE_MS: u64 = 600;

impl Net {
    pub fn memory() -> Net {
        Net::Memory(gridhub::backplane::memory::Broker::new())
    }

    /// This node's configuration for the cluster.
    pub fn configure(&self, config: &mut Config, hub_id: u16, runs_services: bool) {
        config.backplane.hub_id = hub_id;
        config.backplane.runs_services = runs_services;
        if let Net::Redis {
            url,
            cluster,
            redis_cluster,
        } = self
        {
            config.backplane.kind = gridhub::backplane::BackplaneKind::Redis;
            config.backplane.redis_url = url.clone();
            config.backplane.redis_cluster = *redis_cluster;
            config.backplane.cluster = cluster.clone();
            config.backplane.lease_ms = TEST_LEASE_MS;
        }
    }

    fn broker(&self) -> Option<Arc<gridhub::backplane::memory::Broker>> {
        match self {
            Net::Memory(b) => Some(Arc::clone(b)),
            Net::Redis { .. } => None,
        }
    }

    /// Starts a node with `config` (already configured for this cluster).
    pub async fn start(&self, config: Config) -> Result<Running, gridhub::app::StartError> {
        gridhub::app::start_node(config, self.broker()).await
    }
}

/// A hub node of a test cluster: `hub_id`, running the stateful services or forwarding them to
/// the node that does.
pub async fn spawn_node(net: &Net, hub_id: u16, runs_services: bool) -> TestHub {
    let mut config = test_config();
    net.configure(&mut config, hub_id, runs_services);
    start(config, net.broker()).await
}

/// A `redis-server` of the test's own: a temporary folder, a free loopback port, no
/// persistence (a restart starts empty, as a lost Redis would).
pub struct RedisServer {
    child: Option<std::process::Child>,
    pub port: u16,
    dir: PathBuf,
    args: Vec<String>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// With these arguments besides the port, folder and no persistence; `FREE_PORT` among
    /// them is a free port of its own. A port taken between being found free and bound (by a
    /// test's outgoing connection) is given up for another.
    pub fn start_with(args: &[&str]) -> RedisServer {
        for attempt in 0.. {
            let mut r = RedisServer {
                child: None,
                port: free_port(),
                dir: temp_dir("redis"),
                args: args
                    .iter()
                    .map(|&a| {
                        if a == FREE_PORT {
                            free_port().to_string()
                        } else {
                            a.to_string()
                        }
                    })
                    .collect(),
            };
            if r.try_start() {
                return r;
            }
            assert!(attempt < 4, "redis-server starts (tried 5 ports)");
        }
        unreachable!()
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The cluster `name` on this server.
    pub fn net(&self, name: &str) -> Net {
        Net::Redis {
            url: self.url(),
            cluster: name.into(),
            redis_cluster: false,
        }
    }

    /// Kills it (SIGKILL): what it held is gone.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it (again) on its port, and waits until it answers.
    pub fn restart(&mut self) {
        assert!(self.try_start(), "redis-server answers on {}", self.port);
    }

    fn try_start(&mut self) -> bool {
        self.stop();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(&self.dir)
            .args(&self.args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server runs (scripts/test installs it: apt-get install redis-server)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            use std::io::{Read, Write};
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                let mut b = [0u8; 7];
                if s.write_all(b"PING\r\n").is_ok()
                    && s.read_exact(&mut b).is_ok()
                    && &b == b"+PONG\r\n"
                {
                    return true;
                }
            }
            let ended = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if ended.is_some() || std::time::Instant::now() > deadline {
                self.stop();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// In `RedisServer::start_with`'s arguments: a free port of the server's own.
pub const FREE_PORT: &str = "{free port}";

/// A Redis Cluster of the test's own: three masters, each with a replica, on loopback. A node
/// is taken for failed after 2 s (not less: a busy 2-core machine must not fail one over by
/// mistake), so a master's loss is failed over within a few.
pub struct RedisCluster {
    pub servers: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let servers: Vec<RedisServer> = (0..6)
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    "2000",
                    // Its own port, not the default port + 10,000 (beyond 65,535 for most).
                    "--cluster-port",
                    FREE_PORT,
                    // A replica's first copy at once, not 5 s later: a replica that never had
                    // its master's data cannot take over.
                    "--repl-diskless-sync-delay",
                    "0",
                ])
            })
            .collect();
        let created = std::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(servers.iter().map(|s| format!("127.0.0.1:{}", s.port)))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("redis-cli runs (scripts/test installs redis-server, which brings it)");
        assert!(created.success(), "redis-cli --cluster create: {created}");
        let rc = RedisCluster { servers };
        for i in 0..rc.servers.len() {
            rc.wait_synced(i);
        }
        rc
    }

    /// Until server `i` says the cluster is whole and, if a replica, holds its master's data.
    pub fn wait_synced(&self, i: usize) {
        let deadline = std::time::Instant::now() + PATIENCE;
        let formed = || {
            let info: String = self.ask(i, redis::cmd("CLUSTER").arg("INFO"))?;
            let repl: String = self.ask(i, redis::cmd("INFO").arg("replication"))?;
            Ok::<_, redis::RedisError>(
                info.contains("cluster_state:ok")
                    && (repl.contains("role:master") || repl.contains("master_link_status:up")),
            )
        };
        while !formed().unwrap_or(false) {
            assert!(
                std::time::Instant::now() < deadline,
                "the Redis Cluster forms"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What each server says it is (for a failure's message).
    pub fn roles(&self) -> Vec<String> {
        (0..self.servers.len())
            .map(|i| {
                self.ask::<String>(i, redis::cmd("CLUSTER").arg("NODES"))
                    .map(|n| {
                        n.lines()
                            .find(|l| l.contains("myself"))
                            .unwrap_or("")
                            .to_owned()
                    })
                    .unwrap_or_else(|e| e.to_string())
            })
            .collect()
    }

    /// Server `i`, a replica, takes over from its master, which stays up (demoted). TAKEOVER:
    /// without the handshake and election of a plain failover, which a loaded machine may let
    /// time out.
    pub fn fail_over_to(&self, i: usize) {
        let ok: String = self
            .ask(i, redis::cmd("CLUSTER").arg("FAILOVER").arg("TAKEOVER"))
            .expect("CLUSTER FAILOVER");
        assert_eq!(ok, "OK");
    }

    fn ask<T: redis::FromRedisValue>(
        &self,
        i: usize,
        cmd: &mut redis::Cmd,
    ) -> redis::RedisResult<T> {
        let mut c = redis::Client::open(self.servers[i].url())?
            .get_connection_with_timeout(Duration::from_secs(1))?;
        cmd.query(&mut c)
    }

    /// Which server is the master holding the keys of the hub cluster `name` (the one that
    /// answers for them rather than redirect).
    pub fn master_of(&self, name: &str) -> Option<usize> {
        let key = format!("gridhub:{{{name}}}:owner");
        // A stopped server's port may be another test's Redis by now.
        (0..self.servers.len()).find(|&i| {
            self.servers[i].child.is_some()
                && self
                    .ask::<Option<String>>(i, redis::cmd("GET").arg(&key))
                    .is_ok()
        })
    }

    /// The hub cluster `name` on this Redis Cluster, its nodes named master first: a hub node
    /// that starts once that master is gone must find another.
    pub fn net(&self, name: &str) -> Net {
        let first = self.master_of(name).expect("a master holds the slot");
        let mut urls = vec![self.servers[first].url()];
        urls.extend(
            (0..self.servers.len())
                .filter(|&i| i != first)
                .map(|i| self.servers[i].url()),
        );
        Net::Redis {
            url: urls.join(","),
            cluster: name.into(),
            redis_cluster: true,
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port()
}

/// A hub node in a process of its own (`gridhub serve`), so a test can kill it with SIGKILL.
pub struct NodeProcess {
    pub child: std::process::Child,
    pub hub: TestHub,
}

impl NodeProcess {
    /// Starts node `hub_id` of the Redis cluster `net`, not running the services, and waits
    /// until it has joined.
    pub async fn spawn(net: &Net, hub_id: u16) -> NodeProcess {
        let mut node = NodeProcess::start(net, hub_id, None);
        node.wait_ready().await;
        node
    }

    /// Starts node `hub_id` running the services on the PostgreSQL database `store`, and waits
    /// until it has joined.
    pub async fn spawn_services(net: &Net, hub_id: u16, store: &str) -> NodeProcess {
        let mut node = NodeProcess::start(net, hub_id, Some((store, false)));
        node.wait_ready().await;
        node
    }

    /// Starts node `hub_id` standing by to take the services over (on `store`), without waiting:
    /// it serves only once it has.
    pub fn standby(net: &Net, hub_id: u16, store: &str) -> NodeProcess {
        NodeProcess::start(net, hub_id, Some((store, true)))
    }

    fn start(net: &Net, hub_id: u16, services: Option<(&str, bool)>) -> NodeProcess {
        let Net::Redis {
            url,
            cluster,
            redis_cluster,
        } = net
        else {
            panic!("a node process joins through Redis");
        };
        let port = free_port();
        let data = temp_dir("node");
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_gridhub"));
        if let Some((store, standby)) = services {
            command
                .env("GRIDHUB_STORE__URL", store)
                .env("GRIDHUB_BACKPLANE__STANDBY", standby.to_string());
        }
        let child = command
            .arg("serve")
            .current_dir(repo())
            .env("GRIDHUB_SERVER__LISTEN", format!("127.0.0.1:{port}"))
            .env("GRIDHUB_SERVER__DATA_DIR", &data)
            .env("GRIDHUB_AUTH__SECRET", SECRET)
            .env("GRIDHUB_BACKPLANE__KIND", "redis")
            .env("GRIDHUB_BACKPLANE__HUB_ID", hub_id.to_string())
            .env(
                "GRIDHUB_BACKPLANE__RUNS_SERVICES",
                services.is_some().to_string(),
            )
            .env("GRIDHUB_BACKPLANE__REDIS_URL", url)
            .env(
                "GRIDHUB_BACKPLANE__REDIS_CLUSTER",
                redis_cluster.to_string(),
            )
            .env("GRIDHUB_BACKPLANE__CLUSTER", cluster)
            .env("GRIDHUB_BACKPLANE__LEASE_MS", TEST_LEASE_MS.to_string())
            .env("GRIDHUB_LOG__FILTER", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("gridhub serve starts");
        let hub = TestHub {
            running: None,
            data_dir: Some(data),
            addr: ([127, 0, 0, 1], port).into(),
            org: Arc::new(Org::load(&repo().join("config/org/jiamusi.csv")).unwrap()),
            auth: Authority::new(SECRET.as_bytes()).unwrap(),
        };
        NodeProcess { child, hub }
    }

    /// Until the node serves and has joined its cluster.
    pub async fn wait_ready(&mut self) {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            // Asked only once it listens: the request helper expects a server there.
            if tokio::net::TcpStream::connect(self.hub.addr).await.is_ok() {
                let (status, v) = crate::auth::http_get(&self.hub, "/readyz", None).await;
                if status == 200 && v["link"]["up"] == true {
                    return;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("gridhub serve ended: {status}");
            }
            assert!(std::time::Instant::now() < deadline, "the node joins");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: no goodbye to anyone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A console that asks `requests` times for the whole city's aggregates (~150 KB each) through a
/// 4 KiB receive window and reads nothing: a consumer the hub cannot keep up with.
pub async fn slow_console(
    hub: &TestHub,
    requests: usize,
) -> WebSocketStream<MaybeTlsStream<TcpStream>> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(hub.addr).await.unwrap();
    let mut req = hub.ws_url().into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", hub.token(CITY)).parse().unwrap(),
    );
    let (mut slow, _) = tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(stream))
        .await
        .unwrap();
    let ask = json!({"v":1,"type":"presence.subscribe","data":{"node": CITY, "endpoints": false}})
        .to_string();
    for _ in 0..requests {
        slow.send(Message::text(ask.clone())).await.unwrap();
    }
    slow
}

pub fn now_s() -> u64 {
    gridhub::clock::now_ms() / 1000
}

impl TestHub {
    pub fn hub(&self) -> &Arc<gridhub::hub::Hub> {
        &self.running.as_ref().expect("running").hub
    }

    pub fn token(&self, ep: &str) -> String {
        let idx = self.org.lookup(ep).expect("endpoint in org");
        let role = Role::default_for(self.org.tier(idx));
        self.auth.mint(&self.org, ep, role, 3600, now_s()).unwrap()
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Opens a WebSocket with this bearer token (or none), returning the handshake error as is.
    pub async fn open(
        &self,
        token: Option<&str>,
    ) -> Result<WebSocketStream<MaybeTlsStream<TcpStream>>, tungstenite::Error> {
        let mut req = self.ws_url().into_client_request().unwrap();
        if let Some(t) = token {
            req.headers_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(req))
            .await
            .expect("handshake finished")
            .map(|(ws, _)| ws)
    }

    pub async fn connect(&self, ep: &str) -> TestTerminal {
        self.connect_with(&self.token(ep)).await
    }

    pub async fn connect_with(&self, token: &str) -> TestTerminal {
        let ws = self.open(Some(token)).await.expect("connects");
        let mut t = TestTerminal::new(ws);
        let hello = t.recv().await;
        assert_eq!(hello["type"], "hello", "{hello}");
        t
    }

    /// A console at `node` (its own center) already subscribed to its subtree.
    pub async fn watching(&self, node: &str) -> TestTerminal {
        let mut console = self.connect(node).await;
        let snap = console
            .call("presence.subscribe", json!({ "node": node }))
            .await;
        assert_eq!(snap["type"], "reply", "{snap}");
        console
    }

    pub async fn shutdown(&mut self) -> usize {
        self.running.take().expect("running").shutdown().await
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.hub.transport.shutdown.cancel();
            r.hub.transport.closed.cancel();
        }
        if let Some(d) = self.data_dir.take() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

pub struct TestTerminal {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next: u64,
    /// Messages received while waiting for something else (pushes, deltas): later helpers look
    /// here first, and tests can inspect them.
    pub pending: std::collections::VecDeque<Value>,
}

impl TestTerminal {
    pub fn new(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> TestTerminal {
        TestTerminal {
            ws,
            next: 0,
            pending: Default::default(),
        }
    }

    /// A terminal on the hub at `addr` with `token`, past its hello.
    pub async fn open_at(addr: std::net::SocketAddr, token: &str) -> TestTerminal {
        let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let (ws, _) = tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(req))
            .await
            .expect("handshake finished")
            .expect("connects");
        let mut t = TestTerminal::new(ws);
        let hello = t.recv().await;
        assert_eq!(hello["type"], "hello", "{hello}");
        t
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    pub async fn send(&mut self, msg: Message) {
        self.ws.send(msg).await.expect("send");
    }

    /// Sends a request and returns its id.
    pub async fn request(&mut self, kind: &str, data: Value) -> Value {
        self.next += 1;
        let id = json!(format!("r{}", self.next));
        let msg = json!({"v": 1, "id": id, "type": kind, "data": data});
        self.send_text(&msg.to_string()).await;
        id
    }

    /// Sends a request and waits for its reply or error, skipping pushes.
    pub async fn call(&mut self, kind: &str, data: Value) -> Value {
        let id = self.request(kind, data).await;
        self.reply_to(&id).await
    }

    /// `call`, but gives up after `within` (a request forwarded to a node that died on its
    /// way is never answered: the terminal asks again, as the field page does).
    pub async fn call_within(
        &mut self,
        kind: &str,
        data: Value,
        within: Duration,
    ) -> Option<Value> {
        let id = self.request(kind, data).await;
        tokio::time::timeout(within, self.reply_to(&id)).await.ok()
    }

    pub async fn reply_to(&mut self, id: &Value) -> Value {
        self.next_where(|m| &m["re"] == id).await
    }

    /// The first message (queued or new) that matches; others stay queued in order.
    pub async fn next_where(&mut self, want: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.pending.iter().position(&want) {
            return self.pending.remove(i).expect("index from position");
        }
        loop {
            let m = self.read().await;
            if want(&m) {
                return m;
            }
            self.pending.push_back(m);
        }
    }

    /// The next JSON message (queued ones first); panics on close or after PATIENCE.
    pub async fn recv(&mut self) -> Value {
        match self.pending.pop_front() {
            Some(m) => m,
            None => self.read().await,
        }
    }

    async fn read(&mut self) -> Value {
        loop {
            let m = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("a message within PATIENCE")
                .expect("stream open")
                .expect("no error");
            match m {
                Message::Text(t) => return serde_json::from_str(&t).expect("hub sends JSON"),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// The next `presence.delta`.
    pub async fn delta(&mut self) -> Value {
        self.next_where(|m| m["type"] == "presence.delta").await
    }

    /// Reads until the hub closes; returns the close code and reason.
    pub async fn closed(&mut self) -> (u16, String) {
        loop {
            let m = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("closed within PATIENCE");
            match m {
                Some(Ok(Message::Close(Some(CloseFrame { code, reason })))) => {
                    return (code.into(), reason.to_string());
                }
                Some(Ok(Message::Close(None))) => return (1005, String::new()),
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("error before close frame: {e}"),
                None => panic!("stream ended without a close frame"),
            }
        }
    }

    /// Resumes the durable outbox after `after`; returns the reply's data.
    pub async fn resume(&mut self, after: u64) -> Value {
        let r = self.call("outbox.resume", json!({ "after": after })).await;
        assert_eq!(r["type"], "reply", "{r}");
        r["data"].clone()
    }

    /// The next durable outbox message: (seq, kind, order document).
    pub async fn outbox(&mut self) -> (u64, String, Value) {
        let m = self.next_where(|m| m["type"] == "outbox").await;
        (
            m["seq"].as_u64().unwrap(),
            m["data"]["kind"].as_str().unwrap().to_owned(),
            m["data"]["order"].clone(),
        )
    }

    pub async fn ack(&mut self, seq: u64) {
        self.send_text(&json!({"v": 1, "type": "outbox.ack", "data": {"seq": seq}}).to_string())
            .await;
    }

    /// An order request that must succeed; returns the order document.
    pub async fn order(&mut self, kind: &str, data: Value) -> Value {
        let r = self.call(kind, data).await;
        assert_eq!(r["type"], "reply", "{kind}: {r}");
        r["data"]["order"].clone()
    }

    /// An order request that must fail; returns the error data.
    pub async fn refused(&mut self, kind: &str, data: Value) -> Value {
        let r = self.call(kind, data).await;
        assert_eq!(r["type"], "error", "{kind} should be refused: {r}");
        r["data"].clone()
    }

    pub async fn ping_ok(&mut self) {
        let r = self.call("ping", json!({})).await;
        assert_eq!(r["type"], "reply", "{r}");
    }
}

/// The HTTP status and JSON body of a refused WebSocket handshake.
pub fn refusal(e: tungstenite::Error) -> (u16, Value) {
    let (status, _, body) = refusal_with_headers(e);
    (status, body)
}

/// The same, with the response's `Retry-After` header.
pub fn refusal_with_headers(e: tungstenite::Error) -> (u16, Option<String>, Value) {
    match e {
        tungstenite::Error::Http(resp) => {
            let status = resp.status().as_u16();
            let retry = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = resp.into_body().unwrap_or_default();
            (
                status,
                retry,
                serde_json::from_slice(&body).unwrap_or(Value::Null),
            )
        }
        other => panic!("expected an HTTP refusal, got {other}"),
    }
}

/// A presence delta's entry for one endpoint, if present.
pub fn entry<'a>(delta: &'a Value, id: &str) -> Option<&'a Value> {
    delta["data"]["endpoints"]
        .as_array()?
        .iter()
        .find(|e| e["id"] == id)
}

pub fn aggregate<'a>(msg: &'a Value, node: &str) -> Option<&'a Value> {
    msg["data"]["aggregates"]
        .as_array()?
        .iter()
        .find(|a| a["node"] == node)
}

/// The chain of command from the city down to `leaf` (inclusive), as ids.
pub fn chain_to(org: &Org, leaf: &str) -> Vec<String> {
    let idx = org.lookup(leaf).unwrap();
    let mut v: Vec<String> = org.ancestors(idx).map(|a| org.id(a).to_string()).collect();
    v.reverse();
    v.push(leaf.to_owned());
    v
}

/// A valid `order.create` body located at `node`.
pub fn new_order(node: &str, description: &str) -> Value {
    json!({
        "source": "hotline_12345",
        "category": "noise",
        "description": description,
        "location": {"node": node, "lat": 46.81, "lon": 130.37, "address": "长安路 3 号"},
        "priority": "routine",
        "reporter": {"name": "张伟", "phone": "13812345678"}
    })
}

/// Some worker (leaf) under `node`, and a second one, from the org tree.
pub fn workers_under(org: &Org, node: &str, n: usize) -> Vec<String> {
    let root = org.lookup(node).unwrap();
    org.subtree(root)
        .map(|i| gridhub::org::NodeIdx(i as u32))
        .filter(|&i| org.tier(i) == gridhub::org::Tier::Worker)
        .take(n)
        .map(|i| org.id(i).to_string())
        .collect()
}

/// The real `gridhub serve` on a free port with the test key, optionally under a shell prefix
/// (`ulimit -n 128`), a given data folder (kept: the caller owns it) and extra settings.
pub async fn spawn_binary(
    shell_prefix: Option<&str>,
    data: Option<&std::path::Path>,
    env: &[(&str, &str)],
) -> (tokio::process::Child, TestHub) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let bin = env!("CARGO_BIN_EXE_gridhub");
    let (data, owned) = match data {
        Some(d) => (d.to_owned(), false),
        None => (temp_dir("bin"), true),
    };
    let mut cmd = match shell_prefix {
        // `ulimit` is a shell builtin: set it, then become the hub.
        Some(prefix) => {
            let mut c = tokio::process::Command::new("sh");
            c.arg("-c")
                .arg(format!("{prefix} && exec \"$0\" serve"))
                .arg(bin);
            c
        }
        None => {
            let mut c = tokio::process::Command::new(bin);
            c.arg("serve");
            c
        }
    };
    cmd.current_dir(repo())
        .env("GRIDHUB_SERVER__LISTEN", "127.0.0.1:0")
        .env("GRIDHUB_SERVER__DATA_DIR", data.to_str().unwrap())
        .env("GRIDHUB_AUTH__SECRET", SECRET)
        .env("GRIDHUB_LOG__FILTER", "warn")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("gridhub binary starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(PATIENCE, lines.next_line())
        .await
        .expect("prints its address")
        .unwrap()
        .expect("a line");
    let addr = line.rsplit("http://").next().unwrap().trim();
    let org = Org::load(&repo().join("config/org/jiamusi.csv")).unwrap();
    let hub = TestHub {
        running: None,
        data_dir: owned.then_some(data),
        addr: addr.parse().unwrap(),
        org: Arc::new(org),
        auth: Authority::new(SECRET.as_bytes()).unwrap(),
    };
    (child, hub)
}

/// A minimal HTTP/1.1 POST of a JSON body over a real socket: status and JSON body. Fails
/// (instead of panicking) when the hub is gone, for tests that kill it.
pub async fn try_post(
    addr: std::net::SocketAddr,
    path: &str,
    token: &str,
    body: &str,
    key: Option<&str>,
) -> std::io::Result<(u16, Value)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let key = key
        .map(|k| format!("idempotency-key: {k}\r\n"))
        .unwrap_or_default();
    s.write_all(
        format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\n{key}content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(PATIENCE, s.read_to_end(&mut buf))
        .await
        .map_err(|_| std::io::Error::other("timed out"))??;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status line"))?;
    let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    Ok((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

//! An in-process hub on a free loopback port with the Jiamusi tree, for the scenarios' own tests
//! (the unit tests here and the end-to-end ones under `tests/`).

use std::path::PathBuf;
use std::sync::Arc;

use gridhub::app::Running;
use gridhub::config::Config;
use gridhub::org::Org;

use crate::Target;

/// One in-process hub at a time: the orders scenario alone holds both ends of 9,852 sockets,
/// near the 20,000 open files a process may have here.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const SECRET: &str = "loadtest-secret-loadtest-secret!!";
const ORG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/org/jiamusi.csv");

pub struct TestHub {
    pub running: Running,
    pub target: Target,
    pub org: Arc<Org>,
    data: PathBuf,
    _turn: Option<tokio::sync::MutexGuard<'static, ()>>,
}

impl TestHub {
    /// A hub with default settings, changed by `tweak`, and a data folder of its own (`name`
    /// keeps the scenarios' tests, which run in one process, apart).
    pub async fn start(name: &str, tweak: impl FnOnce(&mut Config)) -> TestHub {
        let turn = ONE_AT_A_TIME.lock().await;
        Self::node(name, Some(turn), tweak, None).await
    }

    /// Two nodes of one hub joined by the in-memory broker: the first runs the services.
    pub async fn pair(name: &str) -> (TestHub, TestHub) {
        let turn = ONE_AT_A_TIME.lock().await;
        let broker = gridhub::backplane::memory::Broker::new();
        let cluster = |hub_id: u16| {
            move |c: &mut Config| {
                c.backplane.hub_id = hub_id;
                c.backplane.runs_services = hub_id == 1;
            }
        };
        // The pair counts as one hub: the first node holds the turn for both.
        let a = Self::node(&format!("{name}-1"), Some(turn), cluster(1), Some(&broker)).await;
        let b = Self::node(&format!("{name}-2"), None, cluster(2), Some(&broker)).await;
        (a, b)
    }

    async fn node(
        name: &str,
        turn: Option<tokio::sync::MutexGuard<'static, ()>>,
        tweak: impl FnOnce(&mut Config),
        broker: Option<&Arc<gridhub::backplane::memory::Broker>>,
    ) -> TestHub {
        let data = std::env::temp_dir().join(format!("gridhub-lt-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        let mut c = Config::default();
        c.server.listen = "127.0.0.1:0".parse().unwrap();
        c.server.data_dir = data.clone();
        c.auth.secret = SECRET.into();
        c.org.file = ORG.into();
        tweak(&mut c);
        let running = gridhub::app::start_node(c, broker.cloned()).await.unwrap();
        let target = Target::new(running.addr, SECRET.as_bytes().to_vec(), false).unwrap();
        let org = Arc::new(Org::load(std::path::Path::new(ORG)).unwrap());
        TestHub {
            running,
            target,
            org,
            data,
            _turn: turn,
        }
    }

    /// The tree the hub serves.
    pub fn org_path() -> PathBuf {
        ORG.into()
    }

    pub async fn stop(self) {
        self.running.shutdown().await;
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

//! An in-process hub on a free loopback port with the Jiamusi tree, for the scenarios' own tests.

use std::path::PathBuf;
use std::sync::Arc;

use gridhub::app::Running;
use gridhub::config::Config;
use gridhub::org::Org;

use crate::Target;

const SECRET: &str = "loadtest-secret-loadtest-secret!!";
const ORG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/org/jiamusi.csv");

pub struct TestHub {
    pub running: Running,
    pub target: Target,
    pub org: Arc<Org>,
    data: PathBuf,
}

impl TestHub {
    /// A hub with default settings, changed by `tweak`, and a data folder of its own (`name`
    /// keeps the scenarios' tests, which run in one process, apart).
    pub async fn start(name: &str, tweak: impl FnOnce(&mut Config)) -> TestHub {
        let data = std::env::temp_dir().join(format!("gridhub-lt-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        let mut c = Config::default();
        c.server.listen = "127.0.0.1:0".parse().unwrap();
        c.server.data_dir = data.clone();
        c.auth.secret = SECRET.into();
        c.org.file = ORG.into();
        tweak(&mut c);
        let running = gridhub::app::start(c).await.unwrap();
        let target = Target::new(running.addr, SECRET.as_bytes().to_vec(), false).unwrap();
        let org = Arc::new(Org::load(std::path::Path::new(ORG)).unwrap());
        TestHub {
            running,
            target,
            org,
            data,
        }
    }

    pub async fn stop(self) {
        self.running.shutdown().await;
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

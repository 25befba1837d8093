//! What a service's shell test stands on: the test org tree, a store in a fresh temporary
//! folder, a recording backplane, and the outbox service on them, all on a clock that follows
//! tokio's (paused, in the tests that pause it).

use std::path::PathBuf;
use std::sync::Arc;

use super::config::OutboxConfig;
use super::service::{Started, start};
use crate::backplane::Outbound;
use crate::backplane::testing::Recorder;
use crate::clock::Clock;
use crate::org::{NodeIdx, Org};
use crate::store::Store;

pub struct Bench {
    pub org: Arc<Org>,
    pub store: Arc<Store>,
    pub out: Arc<Recorder>,
    pub outbox: Started,
    pub clock: Clock,
    dir: PathBuf,
}

impl Bench {
    /// `tag` names the temporary folder (tests run side by side).
    pub fn new(tag: &str) -> Bench {
        let org = Arc::new(crate::org::fixture());
        let dir = std::env::temp_dir().join(format!("gridhub-bench-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Arc::new(Store::open(&dir.join("t.db"), Arc::default()).unwrap());
        let out = Arc::new(Recorder::new());
        let clock = Clock::following_tokio(1_764_000_000_000);
        let outbox = start(
            Arc::clone(&org),
            Arc::clone(&store),
            Arc::clone(&out) as Arc<dyn Outbound>,
            Arc::default(),
            clock.clone(),
            OutboxConfig::default(),
        )
        .unwrap();
        Bench {
            org,
            store,
            out,
            outbox,
            clock,
            dir,
        }
    }

    /// The recorder as the services take it.
    pub fn outbound(&self) -> Arc<dyn Outbound> {
        Arc::clone(&self.out) as Arc<dyn Outbound>
    }

    pub fn n(&self, id: &str) -> NodeIdx {
        self.org.lookup(id).unwrap()
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        self.store.close();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

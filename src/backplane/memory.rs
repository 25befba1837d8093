//! Several hub nodes in one process, joined as a cluster would be: every message is encoded to
//! bytes on the way in and decoded on the way out, exactly what a networked broker carries, so a
//! test of two nodes proves that what crosses between them is plain data.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::wire::Wire;
use super::{Inbound, JoinError, Joined, Link};
use crate::transport::dispatch::HubId;

/// Messages waiting for one node; past this, live frames to it are dropped (and counted).
pub const NODE_QUEUE: usize = 65_536;

#[derive(Default)]
struct Members {
    fingerprint: Option<String>,
    nodes: HashMap<HubId, mpsc::Sender<Inbound>>,
    owner: Option<HubId>,
    /// Connection tickets spent on any node, until they expire (Unix seconds).
    tickets: HashMap<String, u64>,
}

/// The meeting point of an in-process cluster.
#[derive(Default)]
pub struct Broker {
    members: Mutex<Members>,
    /// Messages dropped because a node's queue was full.
    pub dropped: AtomicU64,
}

impl Broker {
    pub fn new() -> Arc<Broker> {
        Arc::default()
    }

    fn members(&self) -> std::sync::MutexGuard<'_, Members> {
        self.members.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Joins a node: checks that it loaded the cluster's org tree and has its own id, and
    /// returns its link and what other nodes send it.
    pub fn join(
        self: &Arc<Self>,
        hub: HubId,
        fingerprint: &str,
        runs_services: bool,
    ) -> Result<Joined, JoinError> {
        let mut m = self.members();
        match &m.fingerprint {
            Some(theirs) if theirs != fingerprint => {
                return Err(JoinError::OtherTree {
                    ours: fingerprint.into(),
                    theirs: theirs.clone(),
                });
            }
            _ => m.fingerprint = Some(fingerprint.into()),
        }
        if m.nodes.contains_key(&hub) {
            return Err(JoinError::SameHub(hub));
        }
        if runs_services {
            if let Some(o) = m.owner {
                return Err(JoinError::SecondOwner(o));
            }
            m.owner = Some(hub);
        }
        let (tx, rx) = mpsc::channel(NODE_QUEUE);
        m.nodes.insert(hub, tx);
        let link = MemoryLink {
            broker: Arc::clone(self),
            me: hub,
        };
        Ok((Arc::new(link), rx))
    }

    /// The node leaves (it shut down): nothing more reaches it.
    pub fn leave(&self, hub: HubId) {
        let mut m = self.members();
        m.nodes.remove(&hub);
        if m.owner == Some(hub) {
            m.owner = None;
        }
    }

    fn deliver(&self, to: &mpsc::Sender<Inbound>, bytes: Vec<u8>) {
        if to.try_send(Inbound::Wire(bytes)).is_err() {
            self.dropped.fetch_add(1, Relaxed);
        }
    }
}

struct MemoryLink {
    broker: Arc<Broker>,
    me: HubId,
}

fn encode(msg: &Wire) -> Vec<u8> {
    // Wire is plain data: strings, numbers and enums always serialize.
    serde_json::to_vec(msg).expect("wire messages serialize")
}

impl Link for MemoryLink {
    fn send(&self, to: HubId, msg: Wire) {
        let target = self.broker.members().nodes.get(&to).cloned();
        match target {
            Some(tx) => self.broker.deliver(&tx, encode(&msg)),
            None => {
                self.broker.dropped.fetch_add(1, Relaxed);
            }
        }
    }

    fn broadcast(&self, msg: Wire) {
        let others: Vec<mpsc::Sender<Inbound>> = self
            .broker
            .members()
            .nodes
            .iter()
            .filter(|(h, _)| **h != self.me)
            .map(|(_, tx)| tx.clone())
            .collect();
        if others.is_empty() {
            return;
        }
        let bytes = encode(&msg);
        for tx in others {
            self.broker.deliver(&tx, bytes.clone());
        }
    }

    fn owner(&self) -> Option<HubId> {
        self.broker.members().owner
    }

    fn name(&self) -> &'static str {
        "memory-cluster"
    }

    fn spend_ticket<'a>(
        &'a self,
        id: &'a str,
        expires_at: u64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>> {
        let now = crate::clock::now_ms() / 1000;
        let mut m = self.broker.members();
        m.tickets.retain(|_, exp| *exp >= now);
        let fresh = m.tickets.insert(id.to_owned(), expires_at).is_none();
        Box::pin(std::future::ready(fresh))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn nodes_meet_only_with_the_same_tree_and_their_own_ids() {
        let b = Broker::new();
        let (a, mut rx_a) = b.join(HubId(1), "tree-1", true).unwrap();
        let (_, mut rx_b) = b.join(HubId(2), "tree-1", false).unwrap();
        assert!(matches!(
            b.join(HubId(3), "tree-2", false),
            Err(JoinError::OtherTree { .. })
        ));
        assert_eq!(
            b.join(HubId(2), "tree-1", false).err(),
            Some(JoinError::SameHub(HubId(2)))
        );
        assert_eq!(
            b.join(HubId(4), "tree-1", true).err(),
            Some(JoinError::SecondOwner(HubId(1)))
        );
        assert_eq!(a.owner(), Some(HubId(1)));
        a.send(HubId(2), Wire::Resumed { conn: 9, upto: 3 });
        a.broadcast(Wire::Event {
            topic: "t".into(),
            body: "1".into(),
        });
        let Some(Inbound::Wire(first)) = rx_b.recv().await else {
            panic!("a message from another node");
        };
        let first: Wire = serde_json::from_slice(&first).unwrap();
        assert_eq!(first, Wire::Resumed { conn: 9, upto: 3 });
        assert!(rx_b.recv().await.is_some(), "the broadcast, in order");
        assert!(rx_a.try_recv().is_err(), "a broadcast skips its sender");
    }
}

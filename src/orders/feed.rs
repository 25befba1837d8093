//! The live order feed for consoles: "every console watching an ancestor node sees the change".
//!
//! Committed changes arrive from the store's writer thread. The core keeps the latest summary of
//! each changed order and, at most once per window, gives every subscribed node one batch: the
//! orders whose location or holder lies in its subtree. Each batch is encoded once and written to
//! every console subscribed to that node. The feed is a live view; a console that connects late
//! or drops a frame lists orders over REST (or `order.get`) to resync.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::model::OrderId;
use super::wire::Summary;
use crate::clock::now_ms;
use crate::org::{NodeIdx, Org};
use crate::presence::ConnKey;
use crate::transport::conn::Conn;
use crate::transport::protocol::{ErrorCode, ProtoError, ReqId, encode, success};

/// One committed change: the summary, and where the order is and who holds it.
pub struct Item {
    pub summary: Summary,
    pub node: NodeIdx,
    pub holder: NodeIdx,
}

/// Sans-IO: subscriptions and coalescing.
pub struct Feed {
    org: Arc<Org>,
    subs: HashMap<NodeIdx, Vec<ConnKey>>,
    of_conn: HashMap<ConnKey, Vec<NodeIdx>>,
    dirty: HashMap<OrderId, Item>,
    window_ms: u64,
    max_subs: usize,
    last_flush: Option<u64>,
}

impl Feed {
    pub fn new(org: Arc<Org>, window_ms: u64, max_subs: usize) -> Feed {
        Feed {
            org,
            subs: HashMap::new(),
            of_conn: HashMap::new(),
            dirty: HashMap::new(),
            window_ms,
            max_subs,
            last_flush: None,
        }
    }

    /// Returns false when the connection holds the most subscriptions allowed.
    pub fn subscribe(&mut self, conn: ConnKey, node: NodeIdx) -> bool {
        let mine = self.of_conn.entry(conn).or_default();
        if mine.contains(&node) {
            return true;
        }
        if mine.len() >= self.max_subs {
            return false;
        }
        mine.push(node);
        self.subs.entry(node).or_default().push(conn);
        true
    }

    pub fn unsubscribe(&mut self, conn: ConnKey, node: NodeIdx) -> bool {
        let Some(mine) = self.of_conn.get_mut(&conn) else {
            return false;
        };
        let Some(i) = mine.iter().position(|&n| n == node) else {
            return false;
        };
        mine.swap_remove(i);
        if mine.is_empty() {
            self.of_conn.remove(&conn);
        }
        if let Some(v) = self.subs.get_mut(&node) {
            v.retain(|&c| c != conn);
            if v.is_empty() {
                self.subs.remove(&node);
            }
        }
        true
    }

    pub fn forget(&mut self, conn: ConnKey) {
        for node in self.of_conn.remove(&conn).unwrap_or_default() {
            if let Some(v) = self.subs.get_mut(&node) {
                v.retain(|&c| c != conn);
                if v.is_empty() {
                    self.subs.remove(&node);
                }
            }
        }
    }

    pub fn publish(&mut self, item: Item) {
        if !self.subs.is_empty() {
            self.dirty.insert(item.summary.id, item);
        }
    }

    pub fn next_flush_at(&self) -> Option<u64> {
        if self.dirty.is_empty() {
            None
        } else {
            Some(self.last_flush.map_or(0, |t| t + self.window_ms))
        }
    }

    /// Per subscribed node: its subscribers and the changed orders in its subtree.
    pub fn flush(&mut self, now: u64) -> Vec<(NodeIdx, Vec<ConnKey>, Vec<Summary>)> {
        match self.next_flush_at() {
            Some(due) if now >= due => {}
            _ => return Vec::new(),
        }
        self.last_flush = Some(now);
        let mut batches: HashMap<NodeIdx, Vec<Summary>> = HashMap::new();
        let org = Arc::clone(&self.org);
        for (_, item) in self.dirty.drain() {
            let mut covering: Vec<NodeIdx> = Vec::with_capacity(10);
            for start in [item.node, item.holder] {
                for x in std::iter::once(start).chain(org.ancestors(start)) {
                    if self.subs.contains_key(&x) && !covering.contains(&x) {
                        covering.push(x);
                    }
                }
            }
            for x in covering {
                batches.entry(x).or_default().push(item.summary.clone());
            }
        }
        batches
            .into_iter()
            .map(|(node, orders)| (node, self.subs[&node].clone(), orders))
            .collect()
    }
}

pub enum Cmd {
    Item(Item),
    Subscribe {
        conn: Arc<Conn>,
        node: NodeIdx,
        re: Option<ReqId>,
    },
    Unsubscribe {
        conn: Arc<Conn>,
        node: NodeIdx,
        re: Option<ReqId>,
    },
    Forget(ConnKey),
}

#[derive(Clone)]
pub struct FeedHandle {
    tx: mpsc::Sender<Cmd>,
}

impl FeedHandle {
    /// From the store's writer thread (not a runtime thread): waits while the feed is full.
    pub fn publish_blocking(&self, item: Item) {
        if tokio::runtime::Handle::try_current().is_ok() {
            // On a runtime thread (tests driving the writer inline): never block it.
            let _ = self.tx.try_send(Cmd::Item(item));
        } else {
            let _ = self.tx.blocking_send(Cmd::Item(item));
        }
    }

    pub async fn send(&self, cmd: Cmd) {
        let _ = self.tx.send(cmd).await;
    }
}

pub fn spawn(org: Arc<Org>, window_ms: u64, max_subs: usize) -> FeedHandle {
    let (tx, mut rx) = mpsc::channel::<Cmd>(65_536);
    let mut feed = Feed::new(org, window_ms, max_subs);
    let mut conns: HashMap<ConnKey, Arc<Conn>> = HashMap::new();
    tokio::spawn(async move {
        let mut batch = Vec::with_capacity(256);
        loop {
            let wait = feed
                .next_flush_at()
                .map(|due| Duration::from_millis(due.saturating_sub(now_ms())));
            tokio::select! {
                n = rx.recv_many(&mut batch, 4096) => {
                    if n == 0 {
                        return;
                    }
                    for cmd in batch.drain(..) {
                        match cmd {
                            Cmd::Item(item) => feed.publish(item),
                            Cmd::Subscribe { conn, node, re } => {
                                if feed.subscribe(conn.key, node) {
                                    if let Some(f) = success(re.as_ref(), "orders.subscribe", &serde_json::json!({})) {
                                        conn.send(&f);
                                    }
                                    conns.insert(conn.key, conn);
                                } else {
                                    let e = ProtoError::new(
                                        ErrorCode::TooManySubscriptions,
                                        "orders.subscribe: this connection holds the most order feeds allowed",
                                    )
                                    .answering(re, "orders.subscribe");
                                    conn.send(&e.encode());
                                }
                            }
                            Cmd::Unsubscribe { conn, node, re } => {
                                if feed.unsubscribe(conn.key, node) {
                                    if let Some(f) = success(re.as_ref(), "orders.unsubscribe", &serde_json::json!({})) {
                                        conn.send(&f);
                                    }
                                } else {
                                    let e = ProtoError::new(
                                        ErrorCode::NotSubscribed,
                                        "orders.unsubscribe: no such feed on this connection",
                                    )
                                    .answering(re, "orders.unsubscribe");
                                    conn.send(&e.encode());
                                }
                            }
                            Cmd::Forget(key) => {
                                feed.forget(key);
                                conns.remove(&key);
                            }
                        }
                    }
                }
                _ = tokio::time::sleep(wait.unwrap_or_default()), if wait.is_some() => {}
            }
            let org = Arc::clone(&feed.org);
            for (node, recipients, orders) in feed.flush(now_ms()) {
                let frame = encode(
                    "orders.delta",
                    None,
                    &serde_json::json!({ "node": org.id(node), "orders": orders }),
                );
                for key in recipients {
                    if let Some(c) = conns.get(&key) {
                        c.send(&frame);
                    }
                }
            }
        }
    });
    FeedHandle { tx }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orders::model::{Priority, State};

    fn item(org: &Org, id: u64, node: &str, holder: &str, state: State) -> Item {
        Item {
            summary: Summary {
                id: OrderId(id),
                state,
                step: 1,
                category: "noise".into(),
                priority: Priority::Routine,
                node: node.into(),
                holder: holder.into(),
                supervision: 0,
                reopened: 0,
                version: 1,
                updated_at: 0,
                due_at: 0,
            },
            node: org.lookup(node).unwrap(),
            holder: org.lookup(holder).unwrap(),
        }
    }

    #[test]
    fn changes_reach_every_subscribed_ancestor_once_per_window() {
        let org = Arc::new(crate::org::fixture());
        let n = |s| org.lookup(s).unwrap();
        let mut f = Feed::new(Arc::clone(&org), 100, 4);
        f.subscribe(1, n("c"));
        f.subscribe(2, n("a"));
        f.subscribe(3, n("b"));
        f.publish(item(&org, 7, "w1", "a", State::Dispatched));
        let mut out = f.flush(1_000);
        out.sort_by_key(|(node, _, _)| node.0);
        assert_eq!(out.len(), 2, "city and county a; not county b");
        assert!(out.iter().all(|(_, _, orders)| orders.len() == 1));
        // Two changes to one order within a window: the latest only.
        f.publish(item(&org, 7, "w1", "t", State::Dispatched));
        f.publish(item(&org, 7, "w1", "v", State::Dispatched));
        assert!(f.flush(1_050).is_empty(), "inside the window");
        let out = f.flush(1_100);
        assert!(
            out.iter()
                .all(|(_, _, o)| o.len() == 1 && o[0].holder == "v")
        );
        f.forget(1);
        f.forget(2);
        f.forget(3);
        f.publish(item(&org, 8, "w1", "a", State::Intake));
        assert_eq!(f.next_flush_at(), None, "nobody watching: nothing kept");
    }

    #[test]
    fn subscriptions_are_bounded_and_idempotent() {
        let org = Arc::new(crate::org::fixture());
        let n = |s| org.lookup(s).unwrap();
        let mut f = Feed::new(Arc::clone(&org), 100, 1);
        assert!(f.subscribe(1, n("a")));
        assert!(f.subscribe(1, n("a")));
        assert!(!f.subscribe(1, n("b")));
        assert!(f.unsubscribe(1, n("a")));
        assert!(!f.unsubscribe(1, n("a")));
    }
}

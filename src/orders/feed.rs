//! The live order feed for consoles: "every console watching an ancestor node sees the change".
//!
//! Committed changes arrive on the bus from the orders service (wherever it runs). The core keeps
//! the latest summary of each changed order and, at most once per window, gives every subscribed
//! node one batch: the orders whose location or holder lies in its subtree. Each batch is encoded
//! once and sent to every console subscribed to that node on this hub node. The feed is a live
//! view; a console that connects late or drops a frame lists orders over REST (or `order.get`)
//! to resync.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::mpsc;

use super::model::OrderId;
use super::wire::Summary;
use crate::backplane::{ConnKey, Outbound, TerminalNews, To, Topic, Via};
use crate::clock::Clock;
use crate::org::{NodeIdx, Org};
use crate::presence::Watch;
use crate::presence::handler::watch_for;
use crate::presence::wire::Target;
use crate::transport::dispatch::{Handler, Refused, Request};
use crate::transport::protocol::{ErrorCode, ProtoError, ReqId, ack, encode, parse_data};

/// A committed change to an order, as every hub node hears it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrderChanged {
    pub summary: Summary,
}

impl Topic for OrderChanged {
    const NAME: &'static str = "orders";
}

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

    /// Whether any connection here subscribes to anything.
    pub fn watched(&self) -> bool {
        !self.subs.is_empty()
    }

    /// Only while someone watches: the shell checks `watched` before it builds an item.
    pub fn publish(&mut self, item: Item) {
        if self.watched() {
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

/// The request types the feed owns (on every hub node, for its own consoles).
pub const KINDS: [&str; 2] = ["orders.subscribe", "orders.unsubscribe"];

enum Cmd {
    Subscribe {
        conn: ConnKey,
        node: NodeIdx,
        re: Option<ReqId>,
    },
    Unsubscribe {
        conn: ConnKey,
        node: NodeIdx,
        re: Option<ReqId>,
    },
}

/// Takes `orders.subscribe` / `orders.unsubscribe`: the same scope as a presence subscription.
pub struct FeedHandler {
    org: Arc<Org>,
    tx: mpsc::Sender<Cmd>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeRef {
    node: crate::org::NodeId,
}

#[async_trait::async_trait]
impl Handler for FeedHandler {
    async fn handle(&self, req: Request<'_>) -> Result<(), Refused> {
        let n: NodeRef = parse_data(req.kind, req.data).map_err(|e| req.error(e))?;
        let Watch::Subtree(node) =
            watch_for(&self.org, &req.origin, &Target::Node(n.node)).map_err(|e| req.error(e))?
        else {
            unreachable!("a node target is a subtree")
        };
        let (conn, re) = (req.origin.conn, req.id.clone());
        let cmd = if req.kind == "orders.subscribe" {
            Cmd::Subscribe { conn, node, re }
        } else {
            Cmd::Unsubscribe { conn, node, re }
        };
        self.tx.send(cmd).await.map_err(|_| {
            req.error(ProtoError::new(
                ErrorCode::Unavailable,
                "the order feed is shutting down",
            ))
            .into()
        })
    }
}

/// Inputs per wake-up, and the bound of each input channel.
const BURST: usize = 4096;
const INBOX: usize = 65_536;

/// Starts this node's feed.
pub fn spawn(
    org: Arc<Org>,
    window_ms: u64,
    max_subs: usize,
    out: Arc<dyn Outbound>,
    clock: Clock,
) -> (Arc<FeedHandler>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Cmd>(INBOX);
    let mut changes = out.bus().subscribe::<OrderChanged>(INBOX);
    let mut news = out.bus().subscribe::<TerminalNews>(INBOX);
    let mut feed = Feed::new(Arc::clone(&org), window_ms, max_subs);
    let handler = Arc::new(FeedHandler {
        org: Arc::clone(&org),
        tx,
    });
    let task = tokio::spawn(async move {
        let (mut cmds, mut items, mut left) = (Vec::new(), Vec::new(), Vec::new());
        loop {
            let due = feed.next_flush_at();
            tokio::select! {
                // Terminals' news first: a change published after a console left is not for it.
                biased;
                n = news.recv_many(&mut left, BURST) => {
                    if n == 0 {
                        return;
                    }
                    for l in left.drain(..) {
                        if let TerminalNews::Left { conn, .. } = &*l {
                            feed.forget(*conn);
                        }
                    }
                }
                n = changes.recv_many(&mut items, BURST) => {
                    if n == 0 {
                        return;
                    }
                    // Most of the time nobody here watches: no lookups, no copies.
                    if !feed.watched() {
                        items.clear();
                        continue;
                    }
                    for c in items.drain(..) {
                        let s = &c.summary;
                        if let (Some(node), Some(holder)) = (org.lookup(&s.node), org.lookup(&s.holder)) {
                            feed.publish(Item { summary: s.clone(), node, holder });
                        }
                    }
                }
                n = rx.recv_many(&mut cmds, BURST) => {
                    if n == 0 {
                        return;
                    }
                    for cmd in cmds.drain(..) {
                        command(&mut feed, out.as_ref(), cmd);
                    }
                }
                _ = clock.sleep_until_ms(due.unwrap_or_default()), if due.is_some() => {}
            }
            for (node, recipients, orders) in feed.flush(clock.now_ms()) {
                let frame = encode(
                    "orders.delta",
                    None,
                    &json!({ "node": org.id(node), "orders": orders }),
                );
                for key in recipients {
                    out.send(To::Conn(key), &frame, Via::Write);
                }
            }
        }
    });
    (handler, task)
}

fn command(feed: &mut Feed, out: &dyn Outbound, cmd: Cmd) {
    let (conn, frame) = match cmd {
        // Its connection closed before this was decided: nobody to keep it for.
        Cmd::Subscribe { conn, .. } if !out.alive(conn) => return,
        Cmd::Subscribe { conn, node, re } => (
            conn,
            if feed.subscribe(conn, node) {
                ack(re.as_ref(), &json!({}))
            } else {
                Some(
                    ProtoError::new(
                        ErrorCode::TooManySubscriptions,
                        "orders.subscribe: this connection holds the most order feeds allowed",
                    )
                    .answering(re, "orders.subscribe")
                    .encode(),
                )
            },
        ),
        Cmd::Unsubscribe { conn, node, re } => (
            conn,
            if feed.unsubscribe(conn, node) {
                ack(re.as_ref(), &json!({}))
            } else {
                Some(
                    ProtoError::new(
                        ErrorCode::NotSubscribed,
                        "orders.unsubscribe: no such feed on this connection",
                    )
                    .answering(re, "orders.unsubscribe")
                    .encode(),
                )
            },
        ),
    };
    if let Some(f) = frame {
        out.send(To::Conn(conn), &f, Via::Write);
    }
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

    #[tokio::test(start_paused = true)]
    async fn committed_changes_reach_this_nodes_consoles_and_leave_with_them() {
        use crate::auth::Role;
        use crate::backplane::testing::Recorder;
        use crate::transport::dispatch::Origin;
        let org = Arc::new(crate::org::fixture());
        let out = Arc::new(Recorder::new());
        let (handler, _) = spawn(
            Arc::clone(&org),
            50,
            4,
            Arc::clone(&out) as Arc<dyn Outbound>,
            Clock::following_tokio(0),
        );
        let ask = |node: &str, ep: &str, id: u64| {
            let origin = Origin {
                conn: 5,
                endpoint: org.lookup(ep).unwrap(),
                role: Role::Operator,
                seat: crate::auth::Seat::MAIN,
                expires_at: u64::MAX,
            };
            let data = format!(r#"{{"node":"{node}"}}"#);
            let h = Arc::clone(&handler);
            async move {
                h.handle(Request {
                    origin,
                    id: Some(ReqId::Num(id)),
                    kind: "orders.subscribe",
                    data: &data,
                    at: std::time::Instant::now(),
                })
                .await
            }
        };
        let Err(Refused::Now(e)) = ask("c", "a", 1).await else {
            panic!("refused at once")
        };
        assert_eq!(
            e.code,
            ErrorCode::OutOfScope,
            "a county may not watch the city"
        );
        ask("a", "a", 2).await.unwrap();
        // Paused time moves only once every task waits: the subscription is in before the change.
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        let change = |id: u64| {
            let s = item(&org, id, "w1", "v", crate::orders::model::State::Dispatched).summary;
            OrderChanged { summary: s }
        };
        out.bus().publish(change(7)).await;
        tokio::time::sleep(std::time::Duration::from_millis(60)).await;
        let got = out.take_to(To::Conn(5));
        assert_eq!(got[0]["re"], 2, "the subscription's reply first");
        assert_eq!(got[1]["type"], "orders.delta");
        assert_eq!(got[1]["data"]["orders"][0]["id"], 7);
        let left = TerminalNews::Left {
            ep: crate::org::NodeId::parse("a").unwrap(),
            conn: 5,
            seat: crate::auth::Seat::MAIN,
            at: 0,
        };
        out.bus().publish(left).await;
        out.bus().publish(change(8)).await;
        tokio::time::sleep(std::time::Duration::from_millis(60)).await;
        assert!(
            out.take_to(To::Conn(5)).is_empty(),
            "gone with its connection"
        );
        // A subscription asked just before its connection closed is not kept for nobody.
        out.close(5);
        ask("a", "a", 3).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        out.bus().publish(change(9)).await;
        tokio::time::sleep(std::time::Duration::from_millis(60)).await;
        assert!(out.take_to(To::Conn(5)).is_empty(), "nothing kept for it");
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

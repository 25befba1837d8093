//! Tests of the orders service's shell: a real store in a temporary folder, a fake outbound that
//! records what the service sends, tokio's paused clock. Assertions are on what was sent once
//! the service has stopped (which waits for everything asked before), never on timing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::*;
use crate::backplane::Group;
use crate::backplane::To;
use crate::backplane::testing::{Recorder, Sent};
use crate::orders::model::{Priority, Source};
use crate::orders::{Act, NewOrder};
use crate::outbox::testing::Bench;

struct Fixture {
    bench: Bench,
    orders: OrdersHandle,
}

impl Fixture {
    async fn new(tag: &str, deadline_secs: u64) -> Fixture {
        let bench = Bench::new(&format!("orders-{tag}"));
        let mut policy = crate::orders::config::OrdersConfig::default().policy();
        for p in policy.priorities.iter_mut() {
            p.deadline_secs = deadline_secs;
        }
        let started = start(
            Arc::clone(&bench.org),
            policy,
            Arc::clone(&bench.store),
            bench.outbox.outbox.clone(),
            bench.outbound(),
            Arc::default(),
            bench.clock.clone(),
        )
        .unwrap();
        Fixture {
            bench,
            orders: started.handle,
        }
    }

    fn n(&self, id: &str) -> NodeIdx {
        self.bench.n(id)
    }

    fn who(&self, id: &str) -> Who {
        let n = self.n(id);
        Who {
            node: n,
            role: Role::default_for(self.bench.org.tier(n)),
        }
    }

    async fn send(&self, cmd: Cmd) {
        self.orders.send(cmd, self.bench.out.as_ref()).await;
    }

    /// Asks as REST does, and waits for the answer: a point the test knows is behind it.
    async fn ask(&self, make: impl FnOnce(Reply) -> Cmd) -> RestResult {
        let (tx, rx) = oneshot::channel();
        self.send(make(Reply::Rest(tx))).await;
        rx.await.unwrap()
    }

    /// Stops the services: everything asked before is decided, written, answered and offered.
    async fn finish(self) -> Arc<Recorder> {
        self.orders.stop().await;
        self.bench.outbox.control.stop().await;
        Arc::clone(&self.bench.out)
    }
}

fn term(conn: u64, id: u64, kind: &'static str) -> Reply {
    Reply::Terminal {
        conn,
        re: Some(ReqId::Num(id)),
        kind,
    }
}

fn order_at(node: NodeIdx) -> NewOrder {
    NewOrder {
        source: Source::Hotline12345,
        category: "noise".into(),
        cause: None,
        description: "广场舞音响太吵".into(),
        node,
        point: None,
        address: "长安路 3 号".into(),
        priority: Priority::Routine,
        reporter_name: "张伟".into(),
        reporter_phone: "13812345678".into(),
    }
}

fn re(m: &Value) -> u64 {
    m["re"].as_u64().unwrap()
}

#[tokio::test(start_paused = true)]
async fn answers_come_in_the_order_asked_even_when_one_waits_for_the_store() {
    let f = Fixture::new("order", 3600).await;
    let city = f.who("c");
    let w1 = f.n("w1");
    f.send(Cmd::Create {
        who: city,
        new: order_at(w1),
        key: None,
        reply: term(1, 1, "order.create"),
        at: Instant::now(),
    })
    .await;
    // An order the store must be asked about, then a refusal decided at once, then a read of
    // the order just created: each waits for the one before.
    f.send(Cmd::Get {
        who: city,
        id: OrderId(999),
        reply: term(1, 2, "order.get"),
    })
    .await;
    f.send(Cmd::Act {
        who: city,
        id: OrderId(1),
        expect: Some(7),
        act: Act::Acknowledge,
        reply: term(1, 3, "order.acknowledge"),
        at: Instant::now(),
    })
    .await;
    f.send(Cmd::Get {
        who: city,
        id: OrderId(1),
        reply: term(1, 4, "order.get"),
    })
    .await;
    let out = f.finish().await;
    let replies = out.take_to(To::Conn(1));
    assert_eq!(replies.iter().map(re).collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert_eq!(replies[0]["data"]["order"]["state"], "intake");
    assert_eq!(replies[1]["data"]["code"], "not_found");
    assert_eq!(replies[2]["data"]["code"], "version_conflict");
    assert_eq!(replies[3]["data"]["order"]["id"], 1);
}

#[tokio::test(start_paused = true)]
async fn a_deadline_fires_when_its_time_comes_and_tells_the_holder() {
    let f = Fixture::new("deadline", 60).await;
    let (city, w1) = (f.who("c"), f.n("w1"));
    let created = f
        .ask(|reply| Cmd::Create {
            who: city,
            new: order_at(w1),
            key: None,
            reply,
            at: Instant::now(),
        })
        .await;
    assert!(created.is_ok());
    tokio::time::sleep(Duration::from_secs(61)).await;
    let c = f.n("c");
    let out = f.finish().await;
    let offers: Vec<Value> = out
        .take()
        .into_iter()
        .filter_map(|s| match s {
            Sent::Offer { ep, text, .. } if ep == c => serde_json::from_str(&text).ok(),
            _ => None,
        })
        .collect();
    assert_eq!(offers.len(), 1, "{offers:?}");
    assert_eq!(offers[0]["data"]["kind"], "order.supervised");
    assert_eq!(offers[0]["data"]["order"]["state"], "supervised");
}

#[tokio::test(start_paused = true)]
async fn only_recipients_may_give_read_receipts() {
    let f = Fixture::new("receipts", 3600).await;
    f.send(Cmd::NoticeSend {
        who: f.who("a"),
        notice: serde_json::from_value(
            json!({"node": "a", "tiers": ["worker"], "title": "t", "body": "b"}),
        )
        .unwrap(),
        reply: term(1, 1, "notice.send"),
    })
    .await;
    for (conn, who) in [(2, "b"), (3, "w1"), (4, "t")] {
        f.send(Cmd::MarkRead {
            who: f.who(who),
            kind: ReadKind::Notice,
            id: 1,
            reply: term(conn, 1, "notice.read"),
        })
        .await;
    }
    f.send(Cmd::NoticeGet {
        who: f.who("a"),
        id: 1,
        reply: term(1, 2, "notice.get"),
    })
    .await;
    let out = f.finish().await;
    let sender = out.take_to(To::Conn(1));
    assert_eq!(sender[0]["data"]["notice"]["recipients"], 2, "{sender:?}");
    assert_eq!(
        sender[1]["data"]["notice"]["read"], 1,
        "only w1's receipt counts"
    );
    assert_eq!(out.take_to(To::Conn(2))[0]["data"]["code"], "not_found");
    assert_eq!(out.take_to(To::Conn(3))[0]["type"], "reply");
    assert_eq!(
        out.take_to(To::Conn(4))[0]["data"]["code"],
        "not_found",
        "a center of the subtree is not a recipient either"
    );
}

#[tokio::test(start_paused = true)]
async fn campaign_progress_goes_to_its_watchers_group_and_a_closed_one_stays_readable() {
    let f = Fixture::new("campaign", 3600).await;
    f.send(Cmd::CampaignStart {
        who: f.who("a"),
        campaign: serde_json::from_value(
            json!({"node": "a", "title": "核查", "instructions": "逐户"}),
        )
        .unwrap(),
        reply: term(1, 1, "campaign.start"),
    })
    .await;
    f.send(Cmd::CampaignWatch {
        who: f.who("a"),
        conn: 1,
        id: 1,
        watch: true,
        re: Some(ReqId::Num(2)),
    })
    .await;
    let recorded = f
        .ask(|reply| Cmd::CampaignRecord {
            who: f.who("w1"),
            id: 1,
            records: serde_json::from_value(json!([{"key": "h1", "outcome": "verified"}])).unwrap(),
            reply,
        })
        .await;
    assert!(recorded.is_ok());
    // The progress flush comes with time.
    tokio::time::sleep(Duration::from_millis(300)).await;
    f.send(Cmd::CampaignClose {
        who: f.who("a"),
        id: 1,
        reply: term(1, 3, "campaign.close"),
    })
    .await;
    f.send(Cmd::CampaignGet {
        who: f.who("a"),
        id: 1,
        reply: term(1, 4, "campaign.get"),
    })
    .await;
    f.send(Cmd::CampaignRecord {
        who: f.who("w2"),
        id: 1,
        records: serde_json::from_value(json!([{"key": "h2", "outcome": "verified"}])).unwrap(),
        reply: term(8, 1, "campaign.record"),
    })
    .await;
    f.send(Cmd::CampaignGet {
        who: f.who("b"),
        id: 1,
        reply: term(9, 1, "campaign.get"),
    })
    .await;
    let out = f.finish().await;
    let sent = out.take();
    let group = Group::new("campaign", 1);
    assert!(sent.contains(&Sent::Join {
        group: group.clone(),
        conn: 1
    }));
    let progress = sent
        .iter()
        .find_map(|s| match s {
            Sent::Group { group: g, text } if *g == group => Some(text.clone()),
            _ => None,
        })
        .expect("progress sent to the group");
    let p: Value = serde_json::from_str(&progress).unwrap();
    assert_eq!(p["data"]["totals"]["verified"], 1, "{p}");
    let to = |conn: u64| -> Vec<Value> {
        sent.iter()
            .filter(|s| matches!(s, Sent::Frame { to: To::Conn(c), .. } if *c == conn))
            .filter_map(Sent::json)
            .collect()
    };
    let county = to(1);
    let get = county.iter().find(|m| m["re"] == 4).unwrap();
    assert!(get["data"]["campaign"]["closed_at"].is_u64(), "{get}");
    assert_eq!(get["data"]["campaign"]["records"], 1);
    assert_eq!(to(8)[0]["data"]["code"], "illegal_transition");
    assert_eq!(to(9)[0]["data"]["code"], "not_found", "another county");
}

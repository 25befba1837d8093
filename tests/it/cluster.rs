//! Hub nodes as one hub: joined by the in-memory broker (everything between them is encoded and
//! decoded, as a networked broker would carry it) or through a real `redis-server`, each test of
//! what a cluster must do run over both. Node A runs the services; the others forward their
//! terminals' requests to A. A terminal sees one hub whichever node it is on. Over Redis, a node
//! may also be a `gridhub serve` process of its own, killed with SIGKILL; and Redis itself may
//! go away and come back.

use serde_json::{Value, json};

use crate::auth::{error_of, http_get};
use crate::support::*;

/// The outbox message of `kind` on `t`: (seq, data).
async fn outbox_of(t: &mut TestTerminal, kind: &str) -> (u64, Value) {
    let m = t
        .next_where(|m| m["type"] == "outbox" && m["data"]["kind"] == kind)
        .await;
    (m["seq"].as_u64().unwrap(), m["data"].clone())
}

/// The status of `ep` in the next delta that names it.
async fn status_seen(console: &mut TestTerminal, ep: &str) -> String {
    loop {
        let d = console.delta().await;
        if let Some(e) = entry(&d, ep) {
            return e["status"].as_str().unwrap().to_owned();
        }
    }
}

#[tokio::test]
async fn two_nodes_serve_as_one_hub() {
    serve_as_one_hub(&Net::memory(), "memory-cluster").await;
}

#[tokio::test]
async fn two_nodes_on_redis_serve_as_one_hub() {
    let redis = RedisServer::start();
    serve_as_one_hub(&redis.net("one-hub"), "redis").await;
}

async fn serve_as_one_hub(net: &Net, link: &str) {
    let a = spawn_node(net, 1, true).await;
    let b = spawn_node(net, 2, false).await;
    let (w_on_a, w2) = {
        let ws = workers_under(&a.org, DONGFENG, 40);
        (ws[0].clone(), ws[39].clone())
    };
    let chain = chain_to(&a.org, &w2);
    assert_eq!(chain.len(), 5, "city, county, township, village, worker");
    assert_eq!(chain[1], DONGFENG);

    // A console on B watches the county's presence and its orders.
    let mut console = b.watching(DONGFENG).await;
    let r = console
        .call("orders.subscribe", json!({"node": DONGFENG}))
        .await;
    assert_eq!(r["type"], "reply", "{r}");

    // Presence made on A reaches the console on B.
    let mut w = a.connect(&w_on_a).await;
    assert_eq!(status_seen(&mut console, &w_on_a).await, "online");
    let r = w.call("presence.set", json!({"status": "busy"})).await;
    assert_eq!(r["type"], "reply", "{r}");
    assert_eq!(status_seen(&mut console, &w_on_a).await, "busy");

    // A terminal on A calls one on B.
    let mut city = a.connect(CITY).await;
    let mut worker = b.connect(&w2).await;
    assert_eq!(status_seen(&mut console, &w2).await, "online");
    let r = city
        .call(
            "call.invite",
            json!({"to": w2, "media": "audio", "offer": "v=0 offer"}),
        )
        .await;
    assert_eq!(r["type"], "reply", "{r}");
    let call = r["data"]["call"].clone();
    let inc = worker.next_where(|m| m["type"] == "call.incoming").await;
    assert_eq!(
        (&inc["data"]["call"], inc["data"]["from"]["id"].as_str()),
        (&call, Some(CITY))
    );
    // The callee's requests go from B to the calls service on A, and the answers come back.
    let r = worker.call("call.ring", json!({"call": call})).await;
    assert_eq!(r["data"]["state"], "ringing", "{r}");
    city.next_where(|m| m["type"] == "call.ringing").await;
    let r = worker
        .call("call.accept", json!({"call": call, "answer": "v=0 answer"}))
        .await;
    assert_eq!(r["data"]["state"], "active", "{r}");
    let acc = city.next_where(|m| m["type"] == "call.accepted").await;
    assert_eq!(acc["data"]["answer"], "v=0 answer");
    assert_eq!(status_seen(&mut console, &w2).await, "in_call");
    worker
        .send_text(&json!({"v":1,"type":"call.signal","data":{"call": call, "candidate": {"candidate": "candidate:1 1 udp 1 10.0.0.2 5000 typ host", "sdpMid": "0"}}}).to_string())
        .await;
    let sig = city.next_where(|m| m["type"] == "call.signal").await;
    assert_eq!(sig["data"]["candidate"]["sdpMid"], "0");
    // Busy is decided by the one calls service, whichever node asks.
    let mut township_a = a.connect(&chain[2]).await;
    let e = township_a
        .refused("call.invite", json!({"to": w2, "media": "audio"}))
        .await;
    assert_eq!(e["code"], "busy", "{e}");
    let r = worker.call("call.hangup", json!({"call": call})).await;
    assert_eq!(r["data"]["state"], "ended", "{r}");
    let end = city.next_where(|m| m["type"] == "call.ended").await;
    assert_eq!(end["data"]["outcome"], "completed");
    assert_eq!(status_seen(&mut console, &w2).await, "online");

    // An order taken in on A goes down the tiers across both nodes; its holder on B gets it in
    // its outbox, and the console on B sees it change.
    let mut holders: Vec<TestTerminal> = Vec::new();
    for (i, id) in chain.iter().enumerate().take(4).skip(2) {
        let t = if i % 2 == 0 {
            a.connect(id).await
        } else {
            b.connect(id).await
        };
        holders.push(t);
    }
    let mut terms: Vec<&mut TestTerminal> = vec![&mut city, &mut console];
    for h in holders.iter_mut() {
        terms.push(h);
    }
    terms.push(&mut worker);
    for t in terms.iter_mut().skip(1) {
        t.resume(0).await;
    }
    let order = terms[0]
        .order("order.create", new_order(&w2, "广场舞音响太吵"))
        .await;
    let id = order["id"].as_u64().unwrap();
    for i in 0..4 {
        let o = terms[i]
            .order("order.dispatch", json!({"order": id, "to": chain[i + 1]}))
            .await;
        assert_eq!(o["holder"], chain[i + 1]);
        let (seq, data) = outbox_of(terms[i + 1], "order.assigned").await;
        assert_eq!(data["order"]["id"], id);
        terms[i + 1].ack(seq).await;
    }
    let delta = terms[1]
        .next_where(|m| {
            m["type"] == "orders.delta"
                && m["data"]["orders"]
                    .as_array()
                    .is_some_and(|os| os.iter().any(|o| o["id"] == id && o["holder"] == w2))
        })
        .await;
    assert_eq!(delta["data"]["node"], DONGFENG);
    let r = worker.call("order.acknowledge", json!({"order": id})).await;
    assert_eq!(r["data"]["order"]["state"], "in_progress", "{r}");

    // Away from B, the worker misses a notice; back on B, it resumes exactly what it missed.
    let (last, _) = {
        let r = worker.call("outbox.resume", json!({"after": 0})).await;
        (r["data"]["last_seq"].as_u64().unwrap(), r)
    };
    drop(worker);
    assert_eq!(status_seen(&mut console, &w2).await, "offline");
    let village = &chain[3];
    let r = city
        .call(
            "notice.send",
            json!({"node": village, "tiers": ["worker"], "title": "防汛", "body": "今晚巡查"}),
        )
        .await;
    assert_eq!(r["type"], "reply", "{r}");
    let mut worker = b.connect(&w2).await;
    let r = worker.resume(last).await;
    assert_eq!(
        (r["replayed"].as_u64(), r["more"].as_bool()),
        (Some(1), Some(false)),
        "{r}"
    );
    let (seq, notice) = outbox_of(&mut worker, "notice").await;
    assert_eq!(
        (seq, notice["notice"]["title"].as_str()),
        (last + 1, Some("防汛"))
    );
    worker.ack(seq).await;
    worker.ping_ok().await;

    // REST for the services lives on A; B says where to go, and serves what it holds itself.
    let token = b.token(DONGFENG);
    let r = http_get(&b, &format!("/api/v1/orders/{id}"), Some(&token)).await;
    assert_eq!(error_of(&r), (503, Some("not_served_here")));
    let r = http_get(&a, &format!("/api/v1/orders/{id}"), Some(&token)).await;
    assert_eq!(r.0, 200, "{}", r.1);
    let r = http_get(
        &b,
        &format!("/api/v1/presence?node={DONGFENG}&endpoints=false"),
        Some(&token),
    )
    .await;
    assert_eq!(r.0, 200, "{}", r.1);
    let root = r.1["aggregates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["node"] == DONGFENG)
        .cloned()
        .unwrap();
    assert!(root["online"].as_u64().unwrap() >= 4, "{root}");
    assert_eq!(b.hub().backplane.name(), link);
    assert!(
        b.hub()
            .metrics
            .link_received
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
}

#[tokio::test]
async fn a_node_with_another_org_tree_is_refused() {
    refuse_strangers(&Net::memory()).await;
}

#[tokio::test]
async fn a_node_with_another_org_tree_is_refused_by_redis() {
    let redis = RedisServer::start();
    refuse_strangers(&redis.net("strangers")).await;
}

async fn refuse_strangers(net: &Net) {
    let _a = spawn_node(net, 1, true).await;
    let dir = temp_dir("other-tree");
    let file = dir.join("tiny.csv");
    std::fs::write(
        &file,
        "id,parent,tier,name,name_en,lat,lon\nc,,city,C,C,46.8,130.3\nk,c,county,K,K,,\n",
    )
    .unwrap();
    let mut config = test_config();
    config.org.file = file;
    net.configure(&mut config, 2, false);
    let e = net.start(config).await.err().expect("refused");
    assert!(e.to_string().contains("org tree"), "{e}");
    let mut same_id = test_config();
    net.configure(&mut same_id, 1, false);
    let e = net.start(same_id).await.err().expect("refused");
    assert!(
        e.to_string().contains("hub-1 is already in the cluster"),
        "{e}"
    );
    let mut second_owner = test_config();
    net.configure(&mut second_owner, 3, true);
    let e = net.start(second_owner).await.err().expect("refused");
    assert!(
        e.to_string().contains("hub-1 already runs the services"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn the_seats_of_one_center_on_two_nodes_are_one_terminal() {
    seats_are_one_terminal(&Net::memory()).await;
}

#[tokio::test]
async fn the_seats_of_one_center_on_two_nodes_on_redis_are_one_terminal() {
    let redis = RedisServer::start();
    seats_are_one_terminal(&redis.net("seats")).await;
}

async fn seats_are_one_terminal(net: &Net) {
    use gridhub::auth::Role;
    let a = spawn_node(net, 1, true).await;
    let b = spawn_node(net, 2, false).await;
    let w = workers_under(&a.org, DONGFENG, 1).remove(0);
    let mut desk = a.seat(DONGFENG, Role::Operator, "desk-1").await;
    let mut station = b.seat(DONGFENG, Role::Station, "main").await;
    desk.ping_ok().await;
    station.ping_ok().await;
    let mut worker = a.connect(&w).await;
    let r = worker
        .call("call.invite", json!({"to": DONGFENG, "media": "audio"}))
        .await;
    let call = r["data"]["call"].clone();
    assert!(call.is_u64(), "{r}");
    for t in [&mut desk, &mut station] {
        let m = t.next_where(|m| m["type"] == "call.incoming").await;
        assert_eq!(m["data"]["call"], call);
    }
    // The station PC on B answers; the desk on A hears it was answered elsewhere.
    let r = station.call("call.accept", json!({"call": call})).await;
    assert_eq!(r["type"], "reply", "{r}");
    worker.next_where(|m| m["type"] == "call.accepted").await;
    let m = desk.next_where(|m| m["type"] == "call.ended").await;
    assert_eq!(m["data"]["outcome"], "answered_elsewhere", "{m}");
    // The desk seat connecting again on B replaces its connection on A, and only that one.
    let mut desk_b = b.seat(DONGFENG, Role::Operator, "desk-1").await;
    let (code, _) = desk.closed().await;
    assert_eq!(code, 4001);
    desk_b.ping_ok().await;
    station.ping_ok().await;
}

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

#[tokio::test]
async fn two_nodes_on_a_redis_cluster_serve_as_one_hub() {
    let rc = RedisCluster::start();
    serve_as_one_hub(&rc.net("one-hub"), "redis-cluster").await;
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

    // A campaign started by the county on B reaches a worker of the village on A, and the
    // worker's records come back to the county's progress on B.
    let r = console
        .call(
            "campaign.start",
            json!({"node": village, "title": "人口核查", "instructions": "逐户核对常住人口信息"}),
        )
        .await;
    assert_eq!(r["type"], "reply", "{r}");
    let campaign = r["data"]["campaign"]["id"].as_u64().unwrap();
    let r = console
        .call("campaign.watch", json!({"campaign": campaign}))
        .await;
    assert_eq!(r["type"], "reply", "{r}");
    let other = workers_under(&a.org, village, 3)
        .into_iter()
        .find(|x| *x != w2 && *x != w_on_a)
        .unwrap();
    let mut villager = a.connect(&other).await;
    villager.resume(0).await;
    let (seq, task) = outbox_of(&mut villager, "campaign.task").await;
    assert_eq!(task["campaign"]["id"], campaign);
    villager.ack(seq).await;
    let r = villager
        .call(
            "campaign.record",
            json!({"campaign": campaign, "records": [{"key": "hh-1", "outcome": "verified"}]}),
        )
        .await;
    assert_eq!(r["data"]["accepted"], 1, "{r}");
    console
        .next_where(|m| m["type"] == "campaign.progress" && m["data"]["totals"]["verified"] == 1)
        .await;

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
    // A rings the seats it knows: the station's arrival on B must have reached it.
    let token = a.token(CITY);
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let r = http_get(
            &a,
            &format!("/api/v1/presence?node={DONGFENG}"),
            Some(&token),
        )
        .await;
        let seats = r.1["endpoints"]
            .as_array()
            .and_then(|es| es.iter().find(|e| e["id"] == DONGFENG))
            .map(|e| e["seats"].clone());
        if seats == Some(json!(["desk-1", "main"])) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "both seats on A: {}",
            r.1
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
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

/// The county's on-line count as node `hub` reads it (its own aggregates).
async fn online_at(hub: &TestHub, node: &str) -> u64 {
    let token = hub.token(CITY);
    let r = http_get(
        hub,
        &format!("/api/v1/presence?node={node}&endpoints=false"),
        Some(&token),
    )
    .await;
    assert_eq!(r.0, 200, "{}", r.1);
    r.1["aggregates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["node"] == node)
        .map(|x| x["online"].as_u64().unwrap())
        .unwrap()
}

/// Waits until every node reads `want` on line in `node` (a guard against hangs: PATIENCE).
async fn agree_online(hubs: &[&TestHub], node: &str, want: u64) {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let mut seen = Vec::new();
        for h in hubs {
            seen.push(online_at(h, node).await);
        }
        if seen.iter().all(|&n| n == want) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nodes read {seen:?} on line in {node}, want {want} on each"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Waits until every node in `hubs` says it is ready, in a cluster of all of them (a guard
/// against hangs: PATIENCE).
async fn ready_again(hubs: &[&TestHub]) {
    for h in hubs {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            let r = http_get(h, "/readyz", None).await;
            if r.1["status"] == "ready" {
                assert_eq!(r.1["link"]["nodes"], hubs.len(), "{}", r.1);
                break;
            }
            assert!(std::time::Instant::now() < deadline, "ready again: {}", r.1);
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

/// A terminal on another node reaches the services on `a`: its call rings the county's center
/// there.
async fn call_reaches_the_county(a: &TestHub, caller: &mut TestTerminal) {
    let mut county = a.connect(DONGFENG).await;
    let r = caller
        .call("call.invite", json!({"to": DONGFENG, "media": "audio"}))
        .await;
    assert_eq!(r["type"], "reply", "{r}");
    county.next_where(|m| m["type"] == "call.incoming").await;
}

/// Waits until node `hub` reads terminal `ep`'s status as `want` (a guard against hangs:
/// PATIENCE).
async fn status_reads(hub: &TestHub, ep: &str, want: &str) {
    let token = hub.token(CITY);
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let r = http_get(hub, &format!("/api/v1/presence?node={ep}"), Some(&token)).await;
        let e = r.1["endpoints"].as_array().and_then(|es| es.first());
        if e.is_some_and(|e| e["status"] == want) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{ep} {want} on {}: {}",
            hub.addr,
            r.1
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_node_killed_with_sigkill_loses_nothing_and_its_terminals_resume_elsewhere() {
    let redis = RedisServer::start();
    let net = redis.net("kill");
    let a = spawn_node(&net, 1, true).await;
    let c = spawn_node(&net, 3, false).await;
    let mut b = NodeProcess::spawn(&net, 2).await;
    let ws = workers_under(&a.org, DONGFENG, 6);
    let base = online_at(&a, DONGFENG).await;
    let mut city = a.connect(CITY).await;

    // Six workers on B, their outboxes resumed; every node counts them.
    let mut on_b = Vec::new();
    for w in &ws {
        let mut t = b.hub.connect(w).await;
        t.resume(0).await;
        on_b.push(t);
    }
    agree_online(&[&a, &b.hub, &c], DONGFENG, base + 6).await;

    // A notice reaches them on B (through A's outbox); an order taken in on B is acknowledged.
    let notice = |title: &str| json!({"node": DONGFENG, "tiers": ["worker"], "title": title, "body": "今晚巡查"});
    let r = city.call("notice.send", notice("第一")).await;
    assert_eq!(r["type"], "reply", "{r}");
    let mut first = Vec::new();
    for t in on_b.iter_mut() {
        let (seq, data) = outbox_of(t, "notice").await;
        assert_eq!(data["notice"]["title"], "第一");
        first.push(seq);
    }
    let order = on_b[0]
        .order("order.create", new_order(&ws[0], "井盖丢失"))
        .await;
    let id = order["id"].as_u64().unwrap();

    // SIGKILL: B says goodbye to nobody. Every other node sees its terminals go within the
    // lease, and hears nothing from it again.
    b.kill();
    drop(on_b);
    agree_online(&[&a, &c], DONGFENG, base).await;
    let r = city.call("notice.send", notice("第二")).await;
    assert_eq!(r["type"], "reply", "{r}");

    // What B acknowledged before it died is there.
    let token = a.token(DONGFENG);
    let r = http_get(&a, &format!("/api/v1/orders/{id}"), Some(&token)).await;
    assert_eq!(
        (r.0, r.1["order"]["id"].as_u64()),
        (200, Some(id)),
        "{}",
        r.1
    );

    // The workers come back on C and resume from what they had: the second notice, once.
    let mut on_c = Vec::new();
    for (w, last) in ws.iter().zip(&first) {
        let mut t = c.connect(w).await;
        let r = t.resume(*last).await;
        assert_eq!(r["replayed"].as_u64(), Some(1), "{w}: {r}");
        let (seq, data) = outbox_of(&mut t, "notice").await;
        assert_eq!(
            (seq, data["notice"]["title"].as_str()),
            (last + 1, Some("第二"))
        );
        t.ack(seq).await;
        t.ping_ok().await;
        on_c.push(t);
    }
    agree_online(&[&a, &c], DONGFENG, base + 6).await;
    // On C the worker reads the order it took in on B, from the services on A.
    let r = on_c[0].call("order.get", json!({"order": id})).await;
    assert_eq!(r["data"]["order"]["id"], id, "{r}");
}

#[tokio::test]
async fn redis_lost_and_back_heals_the_cluster() {
    let mut redis = RedisServer::start();
    let net = redis.net("heal");
    let a = spawn_node(&net, 1, true).await;
    let b = spawn_node(&net, 2, false).await;
    let ws = workers_under(&a.org, DONGFENG, 3);
    let base = online_at(&a, DONGFENG).await;
    let mut on_b = Vec::new();
    for w in &ws {
        on_b.push(b.connect(w).await);
    }
    let mut on_a = a.connect(&ws[2]).await;
    drop(on_b.pop());
    agree_online(&[&a, &b], DONGFENG, base + 3).await;

    redis.stop();
    // Each node says it is degraded and keeps serving its own terminals.
    for h in [&a, &b] {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            let r = http_get(h, "/readyz", None).await;
            assert_eq!(r.0, 200, "{}", r.1);
            if r.1["status"] == "degraded" {
                assert_eq!(r.1["link"]["up"], false, "{}", r.1);
                assert!(r.1["link"]["reason"].is_string(), "{}", r.1);
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{} degraded", h.addr);
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let metrics = crate::auth::http_raw(h, "/metrics", None).await.2;
        let metrics = String::from_utf8(metrics).unwrap();
        assert!(metrics.contains("gridhub_link_up 0"), "{metrics}");
    }
    for t in on_b.iter_mut() {
        t.ping_ok().await;
        let r = t.call("presence.set", json!({"status": "busy"})).await;
        assert_eq!(r["type"], "reply", "{r}");
    }
    // A request for the services B forwards to A is refused with a reason, not lost silently.
    let e = on_b[0]
        .refused("call.invite", json!({"to": CITY, "media": "audio"}))
        .await;
    assert_eq!(e["code"], "unavailable", "{e}");
    // Past the lease, each node counts only its own terminals.
    agree_online(&[&a], DONGFENG, base + 1).await;
    agree_online(&[&b], DONGFENG, base + 2).await;
    on_a.ping_ok().await;

    // Redis comes back empty: the nodes take their leases again, exchange rosters and agree,
    // on who is on line and on what they set meanwhile.
    redis.restart();
    agree_online(&[&a, &b], DONGFENG, base + 3).await;
    for w in &ws[..2] {
        status_reads(&a, w, "busy").await;
    }
    ready_again(&[&a, &b]).await;
    // And B's terminals reach the services on A again.
    call_reaches_the_county(&a, &mut on_b[0]).await;
    on_a.ping_ok().await;
}

/// The Redis Cluster master holding the hub's keys is killed (SIGKILL): its replica takes over,
/// the nodes follow it by themselves and agree again on who is on line and what was set
/// meanwhile; the services are reached across nodes again; a node started afterwards, whose
/// first named Redis node is the dead master, joins through the next.
#[tokio::test]
async fn a_lost_redis_cluster_master_is_followed_to_its_replica() {
    let mut rc = RedisCluster::start();
    let net = rc.net("failover");
    let a = spawn_node(&net, 1, true).await;
    let b = spawn_node(&net, 2, false).await;
    assert_eq!(b.hub().backplane.name(), "redis-cluster");
    let ws = workers_under(&a.org, DONGFENG, 2);
    let base = online_at(&a, DONGFENG).await;
    let mut on_b = Vec::new();
    for w in &ws {
        on_b.push(b.connect(w).await);
    }
    agree_online(&[&a, &b], DONGFENG, base + 2).await;

    let master = rc.master_of("failover").unwrap();
    rc.servers[master].stop();
    // Set while the nodes may not hear each other: it must reach A all the same.
    for t in on_b.iter_mut() {
        let r = t.call("presence.set", json!({"status": "busy"})).await;
        assert_eq!(r["type"], "reply", "{r}");
    }
    let deadline = std::time::Instant::now() + PATIENCE;
    let promoted = loop {
        if let Some(m) = rc.master_of("failover") {
            break m;
        }
        assert!(std::time::Instant::now() < deadline, "a replica takes over");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_ne!(promoted, master);

    agree_online(&[&a, &b], DONGFENG, base + 2).await;
    for w in &ws {
        status_reads(&a, w, "busy").await;
    }
    ready_again(&[&a, &b]).await;
    call_reaches_the_county(&a, &mut on_b[0]).await;

    // A third node, told of the dead master first, joins through the next node named; a worker
    // on it counts on every node.
    let c = spawn_node(&net, 3, false).await;
    let w3 = workers_under(&a.org, DONGFENG, 3)[2].clone();
    let _on_c = c.connect(&w3).await;
    agree_online(&[&a, &b, &c], DONGFENG, base + 3).await;

    // The dead master comes back, as its replica's replica, and is handed the slot back while
    // the other stays up: the nodes' renewals are answered MOVED, and they follow.
    rc.servers[master].restart();
    rc.wait_synced(master);
    rc.fail_over_to(master);
    let deadline = std::time::Instant::now() + PATIENCE;
    while rc.master_of("failover") != Some(master) {
        assert!(
            std::time::Instant::now() < deadline,
            "the slot handed back to {master}: {:#?}",
            rc.roles()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    drop(on_b.pop());
    agree_online(&[&a, &b, &c], DONGFENG, base + 2).await;
    let r = on_b[0]
        .call("presence.set", json!({"status": "online"}))
        .await;
    assert_eq!(r["type"], "reply", "{r}");
    status_reads(&c, &ws[0], "online").await;
}

/// A connection ticket from one node opens one connection in the whole hub, not one per node.
async fn one_ticket_one_connection(net: &Net) {
    let a = spawn_node(net, 1, true).await;
    let b = spawn_node(net, 2, false).await;
    let token = a.token(HUANAN);
    let (status, body) = try_post(a.addr, "/api/v1/tickets", &token, "", None)
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    let ticket = body["ticket"].as_str().unwrap().to_owned();
    let url = format!("{}?ticket={ticket}", b.ws_url());
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut t = TestTerminal::new(ws);
    assert_eq!(t.recv().await["type"], "hello");
    for hub in [&a, &b] {
        let (code, text) = crate::auth::raw_upgrade(hub, &format!("/ws?ticket={ticket}"), "").await;
        assert_eq!(code, 401, "{text}");
        assert!(text.contains("ticket_used"), "{text}");
    }
}

#[tokio::test]
async fn a_ticket_opens_one_connection_in_the_whole_hub() {
    one_ticket_one_connection(&Net::memory()).await;
}

#[tokio::test]
async fn a_ticket_opens_one_connection_in_the_whole_hub_on_redis() {
    let redis = RedisServer::start();
    one_ticket_one_connection(&redis.net("tickets")).await;
}

/// The services on PostgreSQL: their node killed, a standby takes them over from the same
/// database — what was acknowledged is there, and the terminals' sequences go on where they
/// were; PostgreSQL stopped refuses writes (none acknowledged, none written) and recovers.
#[tokio::test]
async fn a_standby_takes_the_services_over_on_postgres_and_a_lost_database_refuses_writes() {
    let mut pg = gridhub::store::testing::PgServer::start("cluster");
    let store = pg.create_database("hub");
    let redis = RedisServer::start();
    let net = redis.net("standby");
    let mut a = NodeProcess::spawn_services(&net, 1, &store).await;
    let mut s = NodeProcess::standby(&net, 2, &store);
    let c = spawn_node(&net, 3, false).await;
    let ws = workers_under(&c.org, DONGFENG, 3);
    let mut city = c.connect(CITY).await;
    // C hears who runs the services at its first lease renewal after joining.
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let r = city.call("outbox.resume", json!({"after": 0})).await;
        if r["type"] == "reply" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "C finds the services: {r}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let mut on_c = Vec::new();
    for w in &ws {
        let mut t = c.connect(w).await;
        t.resume(0).await;
        on_c.push(t);
    }
    let notice = |title: &str| json!({"node": DONGFENG, "tiers": ["worker"], "title": title, "body": "今晚巡查"});
    let r = city.call("notice.send", notice("第一")).await;
    assert_eq!(r["type"], "reply", "{r}");
    let mut first = Vec::new();
    for t in on_c.iter_mut() {
        let (seq, _) = outbox_of(t, "notice").await;
        t.ack(seq).await;
        first.push(seq);
    }
    let order = on_c[0]
        .order("order.create", new_order(&ws[0], "井盖丢失"))
        .await;
    let id = order["id"].as_u64().unwrap();
    assert!(
        s.child.try_wait().unwrap().is_none(),
        "the standby waits while A runs the services"
    );

    // SIGKILL: the standby takes the services over once A's lease lapses.
    a.kill();
    s.wait_ready().await;
    let deadline = std::time::Instant::now() + PATIENCE;
    // A request forwarded in the moments of the takeover may go to A's channel and is never
    // answered; the terminal asks again.
    let r = loop {
        let r = on_c[0]
            .call_within(
                "order.get",
                json!({"order": id}),
                std::time::Duration::from_secs(2),
            )
            .await
            .unwrap_or_default();
        if r["type"] == "reply" || std::time::Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(r["data"]["order"]["id"], id, "the acknowledged order: {r}");
    // The next notice continues every terminal's sequence: none repeated, none skipped.
    let r = city.call("notice.send", notice("第二")).await;
    assert_eq!(r["type"], "reply", "{r}");
    for (t, last) in on_c.iter_mut().zip(&first) {
        let (seq, data) = outbox_of(t, "notice").await;
        assert_eq!(
            (seq, data["notice"]["title"].as_str()),
            (last + 1, Some("第二"))
        );
        t.ack(seq).await;
    }

    // PostgreSQL stopped: a write is refused (`unavailable`, as every store failure on the
    // socket) saying why, never acknowledged.
    pg.stop();
    let r = on_c[0]
        .call("order.create", new_order(&ws[0], "路灯不亮"))
        .await;
    assert_eq!(
        (r["type"].as_str(), r["data"]["code"].as_str()),
        (Some("error"), Some("unavailable")),
        "{r}"
    );
    assert!(
        r["data"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("the database is unavailable"),
        "says why: {r}"
    );
    let (_, ready) = http_get(&s.hub, "/readyz", None).await;
    assert_eq!(
        (ready["status"].as_str(), &ready["store"]),
        (
            Some("degraded"),
            &json!({"engine": "postgres", "up": false})
        ),
        "{ready}"
    );
    // Back: the writer reconnects by itself and the next write lands.
    pg.restart();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let second = loop {
        let r = on_c[0]
            .call("order.create", new_order(&ws[0], "路灯不亮"))
            .await;
        if r["type"] == "reply" || std::time::Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(second["type"], "reply", "{second}");
    let (_, ready) = http_get(&s.hub, "/readyz", None).await;
    assert_eq!(ready["store"]["up"], true, "{ready}");
    let token = c.token(CITY);
    let (_, stats) = http_get(&s.hub, "/api/v1/orders/stats", Some(&token)).await;
    assert_eq!(
        stats["received"], 2,
        "the refused order was not written: {stats}"
    );
}

//! Work orders over real sockets: the eight steps across five tiers, pushes with receipts, the
//! console feed, history, stats, and every refusal.

use serde_json::{Value, json};

use crate::auth::{error_of, http_get};
use crate::support::*;

/// Terminals for every node on the chain city → county → township → village → worker.
async fn chain(hub: &TestHub, worker: &str) -> (Vec<String>, Vec<TestTerminal>) {
    let ids = chain_to(&hub.org, worker);
    let mut terms = Vec::new();
    for id in &ids {
        let mut t = hub.connect(id).await;
        t.resume(0).await;
        terms.push(t);
    }
    (ids, terms)
}

#[tokio::test]
async fn an_order_goes_down_all_five_tiers_and_its_result_comes_back_up() {
    let hub = spawn_app(|_| {}).await;
    let worker = workers_under(&hub.org, DONGFENG, 1).remove(0);
    let (ids, mut t) = chain(&hub, &worker).await;
    assert_eq!(ids.len(), 5);
    // The county center's terminal also watches its subtree's orders.
    assert_eq!(
        t[1].call("orders.subscribe", json!({"node": DONGFENG}))
            .await["type"],
        "reply"
    );

    // 受理: the city takes a hotline call.
    let o = t[0]
        .order("order.create", new_order(&worker, "广场舞音响太吵"))
        .await;
    let id = o["id"].as_u64().unwrap();
    assert_eq!(
        (o["state"].as_str(), o["step"].as_u64()),
        (Some("intake"), Some(1))
    );
    assert_eq!(o["holder"], CITY);
    assert_eq!(
        o["reporter"]["phone"], "13812345678",
        "the intake center sees the contact"
    );

    // 分类转办: down one tier at a time; each holder is pushed the order and acknowledges.
    for i in 0..4 {
        let o = t[i]
            .order("order.dispatch", json!({"order": id, "to": ids[i + 1]}))
            .await;
        assert_eq!(o["holder"], ids[i + 1]);
        let (seq, kind, pushed) = t[i + 1].outbox().await;
        assert_eq!(
            (kind.as_str(), pushed["id"].as_u64()),
            ("order.assigned", Some(id))
        );
        assert_eq!(pushed["state"], "dispatched");
        assert_eq!(pushed["delivery"]["seq"], seq);
        t[i + 1].ack(seq).await;
    }

    // 跟踪问效 → 结果反馈.
    let o = t[4].order("order.acknowledge", json!({"order": id})).await;
    assert_eq!(
        (o["state"].as_str(), o["step"].as_u64()),
        (Some("in_progress"), Some(3))
    );
    let o = t[4].order("order.read", json!({"order": id})).await;
    let read_at = o["delivery"]["read_at"].as_u64();
    assert!(read_at.is_some());
    // Reading again changes nothing: the first read stands.
    let o = t[4].order("order.read", json!({"order": id})).await;
    assert_eq!(o["delivery"]["read_at"].as_u64(), read_at);
    assert_eq!(
        o["delivery"]["delivered"], true,
        "the worker acknowledged the push"
    );
    let o = t[4]
        .order(
            "order.report",
            json!({"order": id, "result": "已协调，音量降至规定以下"}),
        )
        .await;
    assert_eq!(
        (o["state"].as_str(), o["holder"].as_str()),
        (Some("result_reported"), Some(ids[3].as_str()))
    );

    // Each tier reviews and closes its loop with the one above.
    for i in (1..4).rev() {
        let (_, kind, pushed) = t[i].outbox().await;
        assert_eq!(
            (kind.as_str(), pushed["state"].as_str()),
            ("order.assigned", Some("result_reported"))
        );
        let o = t[i]
            .order("order.review", json!({"order": id, "approve": true}))
            .await;
        assert_eq!(o["holder"], ids[i - 1]);
    }
    let (_, _, pushed) = t[0].outbox().await;
    assert_eq!(pushed["result"]["by"], worker);
    let o = t[0]
        .order("order.review", json!({"order": id, "approve": true}))
        .await;
    assert_eq!(o["state"], "result_reported");
    let full = t[0].order("order.get", json!({"order": id})).await;
    assert_eq!(full["reviewed"], true, "the city closed its own loop");

    // 评价打分 → 信息公示 → 归档销号.
    let o = t[0]
        .order(
            "order.rate",
            json!({"order": id, "score": 5, "satisfied": true}),
        )
        .await;
    assert_eq!(o["state"], "rated");
    let o = t[0]
        .order(
            "order.publish",
            json!({"order": id, "summary": "已处理。居民来电 13812345678 反映的噪音问题已解决"}),
        )
        .await;
    assert_eq!(o["state"], "published");
    let full = t[0].order("order.get", json!({"order": id})).await;
    assert_eq!(
        full["summary"],
        "已处理。居民来电 *********** 反映的噪音问题已解决"
    );
    let o = t[0].order("order.archive", json!({"order": id})).await;
    assert_eq!(
        (o["state"].as_str(), o["step"].as_u64()),
        (Some("archived"), Some(8))
    );

    // The county saw the order move through its subtree on its feed: coalesced, so intermediate
    // states may be skipped, but the latest state always arrives.
    let mut states: Vec<String> = Vec::new();
    while !states.iter().any(|s| s == "archived") {
        let m = t[1].next_where(|m| m["type"] == "orders.delta").await;
        if m["type"] == "orders.delta" {
            assert_eq!(m["data"]["node"], DONGFENG);
            for o in m["data"]["orders"].as_array().unwrap() {
                assert_eq!(o["id"].as_u64(), Some(id));
                states.push(o["state"].as_str().unwrap().to_owned());
            }
        }
    }
    assert!(states.len() >= 2, "{states:?}");

    // History: every step, in order, with who did it.
    let token = hub.token(CITY);
    let (status, h) = http_get(&hub, &format!("/api/v1/orders/{id}/history"), Some(&token)).await;
    assert_eq!(status, 200);
    let actions: Vec<&str> = h["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "create",
            "dispatch",
            "dispatch",
            "dispatch",
            "dispatch",
            "acknowledge",
            "report",
            "review",
            "review",
            "review",
            "review",
            "rate",
            "publish",
            "archive"
        ]
    );
    assert_eq!(h["events"][6]["actor"], worker);
    // Stats see one received, one closed, from the city and from the county.
    for node in [CITY, DONGFENG] {
        let (status, s) = http_get(
            &hub,
            &format!("/api/v1/orders/stats?node={node}"),
            Some(&token),
        )
        .await;
        assert_eq!(status, 200, "{s}");
        assert_eq!(
            (
                s["received"].as_u64(),
                s["closed"].as_u64(),
                s["in_progress"].as_u64()
            ),
            (Some(1), Some(1), Some(0))
        );
        assert_eq!(s["completion_rate"], 1.0);
        assert_eq!(s["satisfaction_rate"], 1.0);
    }
    let (_, s) = http_get(
        &hub,
        &format!("/api/v1/orders/stats?node={HUANAN}"),
        Some(&token),
    )
    .await;
    assert_eq!(s["received"], 0);
    // The published summary is public; the reporter is masked there.
    let (status, p) = http_get(&hub, &format!("/api/v1/public/orders/{id}"), None).await;
    assert_eq!(status, 200);
    assert_eq!(p["reporter"]["phone"], "138****5678");
    assert!(p.get("description").is_none());
    // A closed order takes no more actions.
    let e = t[0].refused("order.archive", json!({"order": id})).await;
    assert_eq!(e["code"], "illegal_transition");
    assert!(e["message"].as_str().unwrap().contains("archived"), "{e}");
}

fn code(e: &Value) -> &str {
    e["code"].as_str().unwrap_or_default()
}

/// Creates an order at the city for `worker`'s grid and dispatches it down to `depth` tiers
/// (1 = county … 4 = the worker), each holder acknowledging its push.
async fn down_to(t: &mut [TestTerminal], ids: &[String], worker: &str, depth: usize) -> u64 {
    let id = t[0]
        .order("order.create", new_order(worker, "路灯不亮"))
        .await["id"]
        .as_u64()
        .unwrap();
    for i in 0..depth {
        t[i].order("order.dispatch", json!({"order": id, "to": ids[i + 1]}))
            .await;
        let (seq, _, _) = t[i + 1].outbox().await;
        t[i + 1].ack(seq).await;
    }
    id
}

#[tokio::test]
async fn returns_reassignments_escalations_and_reopening() {
    let hub = spawn_app(|_| {}).await;
    let ws = workers_under(&hub.org, DONGFENG, 2);
    let (ids, mut t) = chain(&hub, &ws[0]).await;
    let mut other = hub.connect(&ws[1]).await;
    other.resume(0).await;
    let id = down_to(&mut t, &ids, &ws[0], 4).await;

    // Misassigned: the worker returns it; the village gets it back and is told why.
    let o = t[4]
        .order("order.return", json!({"order": id, "reason": "不在本网格"}))
        .await;
    assert_eq!(
        (o["holder"].as_str(), o["state"].as_str()),
        (Some(ids[3].as_str()), Some("in_progress"))
    );
    let (_, kind, pushed) = t[3].outbox().await;
    assert_eq!(
        (kind.as_str(), pushed["holder"].as_str()),
        ("order.assigned", Some(ids[3].as_str()))
    );

    // The village dispatches to the first worker again, then moves it to the second one.
    t[3].order("order.dispatch", json!({"order": id, "to": ws[0]}))
        .await;
    t[4].outbox().await;
    let o = t[3]
        .order(
            "order.reassign",
            json!({"order": id, "to": ws[1], "reason": "换人"}),
        )
        .await;
    assert_eq!(o["holder"], ws[1]);
    let (_, kind, _) = t[4].outbox().await;
    assert_eq!(
        kind, "order.withdrawn",
        "the first worker is told it was taken away"
    );
    let (_, kind, _) = other.outbox().await;
    assert_eq!(kind, "order.assigned");

    // Too big for a grid worker: escalate to the village, which escalates to the township.
    let o = other
        .order(
            "order.escalate",
            json!({"order": id, "reason": "需要执法部门"}),
        )
        .await;
    assert_eq!(o["holder"], ids[3]);
    t[3].outbox().await;
    let o = t[3]
        .order("order.escalate", json!({"order": id, "reason": "协调执法"}))
        .await;
    assert_eq!(o["holder"], ids[2], "transition replies carry the summary");
    let full = t[3].order("order.get", json!({"order": id})).await;
    assert_eq!(full["chain"].as_array().unwrap().len(), 3);
    t[2].outbox().await;

    // The township does it; the result goes up; the city rates it unsatisfied: reopened.
    t[2].order("order.acknowledge", json!({"order": id})).await;
    t[2].order("order.report", json!({"order": id, "result": "已维修"}))
        .await;
    for i in [1, 0] {
        t[i].outbox().await;
        t[i].order("order.review", json!({"order": id, "approve": true}))
            .await;
    }
    let o = t[0]
        .order(
            "order.rate",
            json!({"order": id, "score": 2, "satisfied": false, "comment": "还是不亮"}),
        )
        .await;
    assert_eq!(
        (
            o["state"].as_str(),
            o["holder"].as_str(),
            o["reopened"].as_u64()
        ),
        (Some("dispatched"), Some(ids[2].as_str()), Some(1))
    );
    let (_, kind, pushed) = t[2].outbox().await;
    assert_eq!(
        (kind.as_str(), pushed["reopened"].as_u64()),
        ("order.assigned", Some(1))
    );

    // A review can also send a result back down for rework.
    t[2].order("order.acknowledge", json!({"order": id})).await;
    t[2].order("order.report", json!({"order": id, "result": "更换灯具"}))
        .await;
    t[1].outbox().await;
    let o = t[1]
        .order(
            "order.review",
            json!({"order": id, "approve": false, "comment": "请附照片"}),
        )
        .await;
    assert_eq!(
        (o["holder"].as_str(), o["state"].as_str()),
        (Some(ids[2].as_str()), Some("in_progress"))
    );
}

#[tokio::test]
async fn terminals_act_only_within_their_scope() {
    let hub = spawn_app(|_| {}).await;
    let worker = workers_under(&hub.org, DONGFENG, 1).remove(0);
    let (ids, mut t) = chain(&hub, &worker).await;
    let mut huanan = hub.connect(HUANAN).await;
    let id = down_to(&mut t, &ids, &worker, 1).await;

    // Another county can neither act on nor see it: it is told there is no such order, and
    // learns nothing of its state or holder.
    let e = huanan
        .refused("order.acknowledge", json!({"order": id}))
        .await;
    assert_eq!(code(&e), "not_found");
    assert_eq!(e["message"], format!("no order {id}"), "{e}");
    let e = huanan.refused("order.get", json!({"order": id})).await;
    assert_eq!(code(&e), "not_found");
    let e = huanan.refused("order.read", json!({"order": id})).await;
    assert_eq!(code(&e), "not_found");
    // The city is not the holder any more: it may not dispatch, but it may reassign.
    let e = t[0]
        .refused("order.dispatch", json!({"order": id, "to": ids[2]}))
        .await;
    assert_eq!(code(&e), "out_of_scope");
    // Dispatching outside one's subtree, or skipping tiers for a routine order.
    let e = t[1].refused("order.dispatch", json!({"order": id, "to": hub.org.id(hub.org.children(hub.org.lookup(HUANAN).unwrap())[0]).as_str()})).await;
    assert_eq!(code(&e), "invalid_target");
    let e = t[1]
        .refused("order.dispatch", json!({"order": id, "to": ids[3]}))
        .await;
    assert_eq!(code(&e), "invalid_target");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("one tier at a time"),
        "{e}"
    );
    // A county may not take in an order for another county's grid, or watch its feed.
    let e = huanan
        .refused("order.create", new_order(&worker, "x"))
        .await;
    assert_eq!(code(&e), "out_of_scope");
    let e = huanan
        .refused("orders.subscribe", json!({"node": DONGFENG}))
        .await;
    assert_eq!(code(&e), "out_of_scope");
    // REST says the same.
    let token = hub.token(HUANAN);
    let r = http_get(
        &hub,
        &format!("/api/v1/orders?node={DONGFENG}"),
        Some(&token),
    )
    .await;
    assert_eq!(error_of(&r), (403, Some("out_of_scope")));
    let r = http_get(&hub, &format!("/api/v1/orders/{id}"), Some(&token)).await;
    assert_eq!(error_of(&r), (404, Some("not_found")));
    // Nothing changed.
    let o = t[1].order("order.get", json!({"order": id})).await;
    assert_eq!(
        (o["version"].as_u64(), o["holder"].as_str()),
        (Some(2), Some(ids[1].as_str()))
    );
}

async fn post(
    hub: &TestHub,
    path: &str,
    token: &str,
    body: &str,
    key: Option<&str>,
) -> (u16, Value) {
    try_post(hub.addr, path, token, body, key)
        .await
        .expect("hub answers")
}

#[tokio::test]
async fn a_retried_create_never_makes_two_orders() {
    let hub = spawn_app(|_| {}).await;
    let worker = workers_under(&hub.org, HUANAN, 1).remove(0);
    let token = hub.token(CITY);
    let body = new_order(&worker, "自来水停水").to_string();
    let (s1, a) = post(
        &hub,
        "/api/v1/orders",
        &token,
        &body,
        Some("12345-20261125-0001"),
    )
    .await;
    let (s2, b) = post(
        &hub,
        "/api/v1/orders",
        &token,
        &body,
        Some("12345-20261125-0001"),
    )
    .await;
    assert_eq!((s1, s2), (201, 200));
    assert_eq!(a["order"]["id"], b["order"]["id"]);
    let other = new_order(&worker, "另一件事").to_string();
    let (s3, c) = post(
        &hub,
        "/api/v1/orders",
        &token,
        &other,
        Some("12345-20261125-0001"),
    )
    .await;
    assert_eq!(
        (s3, c["error"]["code"].as_str()),
        (409, Some("idempotency_conflict"))
    );
    // Over WebSocket, the key travels in the body.
    let mut city = hub.connect(CITY).await;
    let mut with_key = new_order(&worker, "自来水停水");
    with_key["idempotency_key"] = json!("app-77");
    let x = city.order("order.create", with_key.clone()).await;
    let y = city.order("order.create", with_key).await;
    assert_eq!(x["id"], y["id"]);
    let (_, s) = http_get(&hub, "/api/v1/orders/stats", Some(&token)).await;
    assert_eq!(s["received"], 2);
}

#[tokio::test]
async fn a_terminal_that_reconnects_gets_exactly_what_it_missed() {
    let hub = spawn_app(|_| {}).await;
    let worker = workers_under(&hub.org, DONGFENG, 1).remove(0);
    let (ids, mut t) = chain(&hub, &worker).await;
    let village = &ids[3];
    let mut w = t.pop().unwrap();
    let id1 = down_to(&mut t, &ids, &worker, 3).await;
    t[3].order("order.dispatch", json!({"order": id1, "to": worker}))
        .await;
    let (seq1, _, _) = w.outbox().await;
    w.ack(seq1).await;
    drop(w);
    // While the worker is away, three more orders are dispatched to it.
    let mut missed = Vec::new();
    for _ in 0..3 {
        let id = down_to(&mut t, &ids, &worker, 3).await;
        t[3].order("order.dispatch", json!({"order": id, "to": worker}))
            .await;
        missed.push(id);
    }
    let mut w = hub.connect(&worker).await;
    let r = w.resume(seq1).await;
    assert_eq!(
        (
            r["replayed"].as_u64(),
            r["last_seq"].as_u64(),
            r["more"].as_bool()
        ),
        (Some(3), Some(seq1 + 3), Some(false))
    );
    for (k, id) in missed.iter().enumerate() {
        let (seq, kind, o) = w.outbox().await;
        assert_eq!(
            (seq, kind.as_str(), o["id"].as_u64()),
            (seq1 + 1 + k as u64, "order.assigned", Some(*id))
        );
    }
    // Then live messages continue, with nothing repeated in between.
    let id5 = down_to(&mut t, &ids, &worker, 3).await;
    t[3].order("order.dispatch", json!({"order": id5, "to": worker}))
        .await;
    let (seq, _, o) = w.outbox().await;
    assert_eq!((seq, o["id"].as_u64()), (seq1 + 4, Some(id5)));
    // Resuming from a sequence that was never sent is an error, not silence.
    let e = w.refused("outbox.resume", json!({"after": 999})).await;
    assert_eq!(code(&e), "invalid_data");
    let _ = village;
}

#[tokio::test]
async fn every_bad_order_request_gets_a_typed_error_and_writes_nothing() {
    let hub = spawn_app(|_| {}).await;
    let worker = workers_under(&hub.org, DONGFENG, 1).remove(0);
    let (ids, mut t) = chain(&hub, &worker).await;
    let id = down_to(&mut t, &ids, &worker, 1).await;
    let token = hub.token(CITY);

    let mut bad = new_order(&worker, "x");
    bad["category"] = json!("ufo");
    assert_eq!(
        code(&t[0].refused("order.create", bad.clone()).await),
        "unknown_category"
    );
    let (s, b) = post(&hub, "/api/v1/orders", &token, &bad.to_string(), None).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (422, Some("unknown_category"))
    );

    let mut bad = new_order(&worker, "x");
    bad["location"]["node"] = json!("nowhere");
    let e = t[0].refused("order.create", bad.clone()).await;
    assert_eq!(code(&e), "invalid_data");
    assert!(e["message"].as_str().unwrap().contains("nowhere"));

    let mut bad = new_order(&worker, "x");
    bad["location"]["lat"] = json!(123.0);
    assert_eq!(
        code(&t[0].refused("order.create", bad).await),
        "invalid_data"
    );

    let long = "很".repeat(2001);
    let e = t[0]
        .refused("order.create", new_order(&worker, &long))
        .await;
    assert!(
        e["message"].as_str().unwrap().contains("2001 characters"),
        "{e}"
    );
    let huge = format!(r#"{{"description":"{}"}}"#, "x".repeat(70_000));
    let (s, b) = post(&hub, "/api/v1/orders", &token, &huge, None).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (413, Some("message_too_large"))
    );

    let mut bad = new_order(&worker, "x");
    bad["priority"] = json!("whenever");
    let (s, b) = post(&hub, "/api/v1/orders", &token, &bad.to_string(), None).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("invalid_data"))
    );
    assert!(b["error"]["message"].as_str().unwrap().contains("whenever"));

    // Wrong state: report before acknowledging; the error names the state and what is allowed.
    let e = t[1]
        .refused("order.report", json!({"order": id, "result": "done"}))
        .await;
    assert_eq!(code(&e), "illegal_transition");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("state dispatched; allowed now: dispatch, acknowledge"),
        "{e}"
    );
    let (s, b) = post(
        &hub,
        &format!("/api/v1/orders/{id}/report"),
        &hub.token(DONGFENG),
        r#"{"result":"done"}"#,
        None,
    )
    .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (409, Some("illegal_transition"))
    );
    // Stale version, missing field, unknown action, unknown order.
    let e = t[1]
        .refused("order.acknowledge", json!({"order": id, "version": 1}))
        .await;
    assert_eq!(code(&e), "version_conflict");
    let e = t[1].refused("order.return", json!({"order": id})).await;
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("missing field `reason`")
    );
    let (s, _) = post(
        &hub,
        &format!("/api/v1/orders/{id}/teleport"),
        &token,
        "{}",
        None,
    )
    .await;
    assert_eq!(s, 404);
    assert_eq!(
        code(
            &t[1]
                .refused("order.acknowledge", json!({"order": 999_999}))
                .await
        ),
        "not_found"
    );

    // Nothing above wrote anything: one order, two events.
    let o = t[1].order("order.get", json!({"order": id})).await;
    assert_eq!(
        (o["version"].as_u64(), o["state"].as_str()),
        (Some(2), Some("dispatched"))
    );
    let (_, s) = http_get(&hub, "/api/v1/orders/stats", Some(&token)).await;
    assert_eq!(s["received"], 1);
    let (_, h) = http_get(&hub, &format!("/api/v1/orders/{id}/history"), Some(&token)).await;
    assert_eq!(h["events"].as_array().unwrap().len(), 2);
    t[1].ping_ok().await;
}

#[tokio::test]
async fn listing_filters_and_pages() {
    let hub = spawn_app(|_| {}).await;
    let worker = workers_under(&hub.org, DONGFENG, 1).remove(0);
    let other = workers_under(&hub.org, HUANAN, 1).remove(0);
    let mut city = hub.connect(CITY).await;
    let mut made = Vec::new();
    for i in 0..5 {
        let mut o = new_order(if i < 3 { &worker } else { &other }, "x");
        if i == 4 {
            o["category"] = json!("waterlogging");
            o["priority"] = json!("urgent");
        }
        made.push(city.order("order.create", o).await["id"].as_u64().unwrap());
    }
    let token = hub.token(CITY);
    let (_, all) = http_get(&hub, "/api/v1/orders?limit=2", Some(&token)).await;
    let ids: Vec<u64> = all["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [made[4], made[3]], "newest first");
    let next = all["next"].as_u64().unwrap();
    let (_, page2) = http_get(
        &hub,
        &format!("/api/v1/orders?limit=2&after={next}"),
        Some(&token),
    )
    .await;
    assert_eq!(page2["orders"][0]["id"].as_u64(), Some(made[2]));
    let (_, df) = http_get(
        &hub,
        &format!("/api/v1/orders?node={DONGFENG}"),
        Some(&token),
    )
    .await;
    assert_eq!(df["orders"].as_array().unwrap().len(), 3);
    let (_, wl) = http_get(
        &hub,
        "/api/v1/orders?category=waterlogging&priority=urgent&state=intake",
        Some(&token),
    )
    .await;
    assert_eq!(wl["orders"].as_array().unwrap().len(), 1);
    let (s, b) = http_get(&hub, "/api/v1/orders?state=sleeping", Some(&token)).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("invalid_query"))
    );
    let (_, late) = http_get(&hub, "/api/v1/orders?late=true", Some(&token)).await;
    assert_eq!(late["orders"].as_array().unwrap().len(), 0);
    let (_, st) = http_get(&hub, "/api/v1/orders/stats", Some(&token)).await;
    assert_eq!(st["by_category"]["noise"]["received"], 4);
    let dongfeng = st["by_node"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == DONGFENG)
        .unwrap();
    assert_eq!(dongfeng["received"], 3);
    assert_eq!(st["open_by_holder_tier"]["city"], 5);
}

#[tokio::test]
async fn pipelined_replies_come_in_the_order_asked() {
    let hub = spawn_app(|_| {}).await;
    let mut city = hub.connect(CITY).await;
    let w = workers_under(&hub.org, DONGFENG, 1).remove(0);
    // Sent without waiting: a create (answered once durable), reads the store must answer (an
    // order, a notice that never existed), refusals decided at once.
    let mut ids = Vec::new();
    for round in 0..5 {
        ids.push(
            city.request("order.create", new_order(&w, &format!("管道 {round}")))
                .await,
        );
        ids.push(city.request("order.get", json!({"order": 999_999})).await);
        ids.push(city.request("notice.get", json!({"notice": 999})).await);
        ids.push(city.request("campaign.get", json!({"campaign": 999})).await);
        ids.push(
            city.request("order.acknowledge", json!({"order": 999_999}))
                .await,
        );
    }
    let mut got = Vec::new();
    for _ in 0..ids.len() {
        got.push(city.recv().await["re"].clone());
    }
    assert_eq!(got, ids);
}

#[tokio::test]
async fn rest_shows_history_as_the_caller_may_see_it_and_never_drops_a_body() {
    let hub = spawn_app(|_| {}).await;
    let w = workers_under(&hub.org, DONGFENG, 1).remove(0);
    let city = hub.token(CITY);
    let (status, body) = try_post(
        hub.addr,
        "/api/v1/orders",
        &city,
        &new_order(&w, "井盖缺失").to_string(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 201, "{body}");
    let id = body["order"]["id"].as_u64().unwrap();
    // The county may see the order but not the reporter's contact: not in the history either.
    let county = hub.token(DONGFENG);
    let (_, o) = http_get(&hub, &format!("/api/v1/orders/{id}"), Some(&county)).await;
    assert_eq!(o["order"]["reporter"]["phone"], "138****5678", "{o}");
    let (_, h) = http_get(&hub, &format!("/api/v1/orders/{id}/history"), Some(&county)).await;
    let created = &h["events"][0];
    assert_eq!(created["action"], "create", "{h}");
    assert_eq!(created["reporter"], o["order"]["reporter"], "{h}");
    assert!(!h.to_string().contains("13812345678"), "{h}");
    let (_, h) = http_get(&hub, &format!("/api/v1/orders/{id}/history"), Some(&city)).await;
    assert_eq!(
        h["events"][0]["reporter"]["phone"], "13812345678",
        "the intake sees it"
    );
    // A body sent without a JSON content type is still read: its `version` is checked.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(hub.addr).await.unwrap();
    let body = r#"{"version":999}"#;
    s.write_all(
        format!(
            "POST /api/v1/orders/{id}/acknowledge HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {city}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 409"), "{answer}");
    assert!(answer.contains("version_conflict"), "{answer}");
    // `late=false` lists the orders on time; a window that ends before it starts is refused.
    let (_, on_time) = http_get(
        &hub,
        &format!("/api/v1/orders?node={DONGFENG}&late=false"),
        Some(&county),
    )
    .await;
    assert_eq!(on_time["orders"].as_array().unwrap().len(), 1, "{on_time}");
    let (_, late) = http_get(
        &hub,
        &format!("/api/v1/orders?node={DONGFENG}&late=true"),
        Some(&county),
    )
    .await;
    assert!(late["orders"].as_array().unwrap().is_empty(), "{late}");
    let r = http_get(
        &hub,
        &format!("/api/v1/orders?node={DONGFENG}&from=10&to=10"),
        Some(&county),
    )
    .await;
    assert_eq!(crate::auth::error_of(&r), (400, Some("invalid_query")));
}

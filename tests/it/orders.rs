//! Work orders over real sockets: the eight steps across five tiers, pushes with receipts, the
//! console feed, history, stats, and every refusal.

use serde_json::{Value, json};

use crate::auth::http_get;
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
    assert!(o["delivery"]["read_at"].as_u64().is_some());
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
    assert_eq!(o["reviewed"], true);

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
    assert_eq!(
        o["summary"],
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
    let mut pending: Vec<Value> = std::mem::take(&mut t[1].skipped);
    while !states.iter().any(|s| s == "archived") {
        let m = if pending.is_empty() {
            t[1].recv().await
        } else {
            pending.remove(0)
        };
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

//! Who may write what: roles × actions × targets, over WebSocket and REST alike. A caller outside
//! a thing's scope learns nothing about it (`not_found`, whether or not it exists); one who may
//! see it but not do this to it is told `out_of_scope`; nothing refused is counted or changed.

use serde_json::{Value, json};

use crate::auth::http_get;
use crate::support::*;

/// One cell: who asks (a node id), over the WebSocket (`kind`, `data`) and REST (`path`, `body`),
/// and the answer both must give (`ok` or an error code).
struct Case {
    who: String,
    kind: &'static str,
    data: Value,
    path: String,
    body: &'static str,
    want: &'static str,
}

async fn check(
    hub: &TestHub,
    terms: &mut std::collections::HashMap<String, TestTerminal>,
    c: &Case,
) {
    let t = match terms.get_mut(&c.who) {
        Some(t) => t,
        None => {
            let t = hub.connect(&c.who).await;
            terms.entry(c.who.clone()).or_insert(t)
        }
    };
    let r = t.call(c.kind, c.data.clone()).await;
    let got = if r["type"] == "reply" {
        "ok"
    } else {
        r["data"]["code"].as_str().unwrap_or("?")
    };
    assert_eq!(got, c.want, "{} {} over the WebSocket: {r}", c.who, c.kind);
    if c.path.is_empty() {
        return;
    }
    let (status, body) = try_post(hub.addr, &c.path, &hub.token(&c.who), c.body, None)
        .await
        .unwrap();
    let got = if status < 300 {
        "ok"
    } else {
        body["error"]["code"].as_str().unwrap_or("?")
    };
    assert_eq!(got, c.want, "{} POST {} ({status}): {body}", c.who, c.path);
}

#[tokio::test]
async fn roles_actions_and_targets_over_websocket_and_rest() {
    let hub = spawn_app(|_| {}).await;
    let org = &hub.org;
    let ws_a = workers_under(org, DONGFENG, 40);
    let (wa1, wa2) = (ws_a[0].clone(), ws_a[39].clone());
    let wb = workers_under(org, HUANAN, 1).remove(0);
    let chain = chain_to(org, &wa1);
    let village = chain[3].clone();
    let mut terms = std::collections::HashMap::new();
    for id in [CITY, DONGFENG, HUANAN, &wa1, &wa2, &wb] {
        let mut t = hub.connect(id).await;
        t.resume(0).await;
        terms.insert(id.to_string(), t);
    }
    let case = |who: &str, kind, data: Value, path: String, body, want| Case {
        who: who.to_string(),
        kind,
        data,
        path,
        body,
        want,
    };

    // A notice from the county to the workers of one village.
    let county = terms.get_mut(DONGFENG).unwrap();
    let r = county
        .call(
            "notice.send",
            json!({"node": village, "tiers": ["worker"], "title": "通知", "body": "b"}),
        )
        .await;
    let notice = r["data"]["notice"]["id"].as_u64().unwrap();
    let np = format!("/api/v1/notices/{notice}/read");
    let nd = json!({ "notice": notice });
    // A campaign from the county to all its workers.
    let r = county
        .call(
            "campaign.start",
            json!({"node": DONGFENG, "title": "核查", "instructions": "i"}),
        )
        .await;
    let camp = r["data"]["campaign"]["id"].as_u64().unwrap();
    let cp = |a: &str| format!("/api/v1/campaigns/{camp}/{a}");
    let cd = json!({ "campaign": camp });
    let rec = json!({"campaign": camp, "records": [{"key": "k", "outcome": "verified"}]});
    let rec_body = r#"{"records":[{"key":"k","outcome":"verified"}]}"#;
    // An order taken in by the city, down to worker a1.
    let city = terms.get_mut(CITY).unwrap();
    let order = city
        .order("order.create", new_order(&wa1, "井盖缺失"))
        .await["id"]
        .as_u64()
        .unwrap();
    for i in 0..4 {
        if !terms.contains_key(&chain[i]) {
            let mut t = hub.connect(&chain[i]).await;
            t.resume(0).await;
            terms.insert(chain[i].clone(), t);
        }
        let t = terms.get_mut(&chain[i]).unwrap();
        t.order(
            "order.dispatch",
            json!({"order": order, "to": chain[i + 1]}),
        )
        .await;
    }
    let op = |a: &str| format!("/api/v1/orders/{order}/{a}");
    let od = json!({ "order": order });

    let cases = [
        // Notice receipts: only recipients.
        case(
            &wb,
            "notice.read",
            nd.clone(),
            np.clone(),
            "{}",
            "not_found",
        ),
        case(
            HUANAN,
            "notice.read",
            nd.clone(),
            np.clone(),
            "{}",
            "not_found",
        ),
        case(
            DONGFENG,
            "notice.read",
            nd.clone(),
            np.clone(),
            "{}",
            "not_found",
        ),
        case(
            CITY,
            "notice.read",
            nd.clone(),
            np.clone(),
            "{}",
            "not_found",
        ),
        case(&wa1, "notice.read", nd.clone(), np.clone(), "{}", "ok"),
        // Notices go only to one's own subtree, from a center.
        case(
            HUANAN,
            "notice.send",
            json!({"node": DONGFENG, "title": "t", "body": "b"}),
            "/api/v1/notices".into(),
            r#"{"node":"230805","title":"t","body":"b"}"#,
            "out_of_scope",
        ),
        case(
            &wa1,
            "notice.send",
            json!({"node": wa1, "title": "t", "body": "b"}),
            String::new(),
            "",
            "out_of_scope",
        ),
        // Campaign records, completion and receipts: its recipients; others learn nothing.
        case(
            &wb,
            "campaign.record",
            rec.clone(),
            cp("records"),
            rec_body,
            "not_found",
        ),
        case(
            HUANAN,
            "campaign.done",
            cd.clone(),
            cp("done"),
            "{}",
            "not_found",
        ),
        case(
            &wb,
            "campaign.close",
            cd.clone(),
            cp("close"),
            "{}",
            "not_found",
        ),
        case(
            DONGFENG,
            "campaign.record",
            rec.clone(),
            cp("records"),
            rec_body,
            "out_of_scope",
        ),
        case(
            &wa2,
            "campaign.close",
            cd.clone(),
            cp("close"),
            "{}",
            "out_of_scope",
        ),
        case(
            &wa1,
            "campaign.record",
            rec.clone(),
            cp("records"),
            rec_body,
            "ok",
        ),
        case(&wa1, "campaign.done", cd.clone(), cp("done"), "{}", "ok"),
        case(
            &wb,
            "campaign.read",
            cd.clone(),
            cp("read"),
            "{}",
            "not_found",
        ),
        case(
            DONGFENG,
            "campaign.read",
            cd.clone(),
            cp("read"),
            "{}",
            "not_found",
        ),
        case(&wa2, "campaign.read", cd.clone(), cp("read"), "{}", "ok"),
        // Orders: outsiders are told there is no such order; those who see it but do not hold
        // it are out of scope; the holder acts.
        case(
            &wb,
            "order.acknowledge",
            od.clone(),
            op("acknowledge"),
            "{}",
            "not_found",
        ),
        case(
            HUANAN,
            "order.archive",
            od.clone(),
            op("archive"),
            "{}",
            "not_found",
        ),
        case(
            &wa2,
            "order.acknowledge",
            od.clone(),
            op("acknowledge"),
            "{}",
            "not_found",
        ),
        case(
            DONGFENG,
            "order.acknowledge",
            od.clone(),
            op("acknowledge"),
            "{}",
            "out_of_scope",
        ),
        case(
            CITY,
            "order.report",
            json!({"order": order, "result": "r"}),
            op("report"),
            r#"{"result":"r"}"#,
            "illegal_transition",
        ),
        case(
            &wa1,
            "order.acknowledge",
            od.clone(),
            String::new(),
            "",
            "ok",
        ),
    ];
    for c in &cases {
        check(&hub, &mut terms, c).await;
    }

    // Nothing refused was counted: one receipt, one worker's records.
    let token = hub.token(DONGFENG);
    let (_, n) = http_get(&hub, &format!("/api/v1/notices/{notice}"), Some(&token)).await;
    assert_eq!(n["notice"]["read"], 1, "{n}");
    let (_, c) = http_get(&hub, &format!("/api/v1/campaigns/{camp}"), Some(&token)).await;
    assert_eq!(
        (
            c["campaign"]["records"].as_u64(),
            c["campaign"]["totals"]["workers_done"].as_u64()
        ),
        (Some(1), Some(1)),
        "{c}"
    );
    let (_, o) = http_get(&hub, &format!("/api/v1/orders/{order}"), Some(&token)).await;
    assert_eq!(o["order"]["state"], "in_progress", "{o}");
}

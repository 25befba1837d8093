//! REST: health, metrics, org, presence, the OpenAPI document — over real HTTP.

use serde_json::json;

use crate::auth::{error_of, http_get, http_raw};
use crate::support::*;

#[tokio::test]
async fn health_readiness_and_metrics() {
    let hub = spawn_app(|_| {}).await;
    assert_eq!(
        http_get(&hub, "/healthz", None).await,
        (200, json!({"status": "ok"}))
    );
    let (status, ready) = http_get(&hub, "/readyz", None).await;
    assert_eq!((status, ready["status"].as_str()), (200, Some("ready")));
    assert_eq!(ready["backplane"], "memory");
    let _t = hub.connect(DONGFENG).await;
    let (status, head, body) = http_raw(&hub, "/metrics", None).await;
    assert_eq!(status, 200);
    assert!(head.contains("text/plain; version=0.0.4"));
    let text = String::from_utf8(body).unwrap();
    for metric in [
        "gridhub_connections 1",
        "gridhub_fd_limit ",
        "gridhub_connections_max ",
        "gridhub_messages_out_total ",
        "gridhub_queue_drops_total 0",
        "gridhub_presence_changes_total ",
        "gridhub_request_duration_seconds_bucket",
        "gridhub_presence_fanout_seconds_count",
        "process_resident_memory_bytes ",
        "process_cpu_seconds_total ",
    ] {
        assert!(text.contains(metric), "missing {metric}");
    }
}

#[tokio::test]
async fn org_routes_respect_scope() {
    let hub = spawn_app(|_| {}).await;
    let county = hub.token(DONGFENG);
    let (status, body) = http_get(&hub, "/api/v1/org", Some(&county)).await;
    assert_eq!(status, 200);
    assert_eq!(body["dispatchable"], 9_851);
    assert_eq!(
        body["tiers"],
        json!({"city":1,"county":10,"township":106,"village":1206,"worker":8529})
    );
    assert_eq!(body["you"]["name"], "东风区");

    let (status, body) = http_get(
        &hub,
        &format!("/api/v1/org/nodes/{DONGFENG}"),
        Some(&county),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["ancestors"], json!([CITY]));
    let kids = body["children"].as_array().unwrap();
    assert_eq!(kids.len(), 6);
    assert!(kids.iter().all(|k| k["tier"] == "township"));

    // Its superior is visible, but not the superior's subtree.
    let (status, body) = http_get(&hub, &format!("/api/v1/org/nodes/{CITY}"), Some(&county)).await;
    assert_eq!(status, 200);
    assert_eq!(body["children"], serde_json::Value::Null);
    let r = http_get(&hub, &format!("/api/v1/org/nodes/{HUANAN}"), Some(&county)).await;
    assert_eq!(error_of(&r), (403, Some("out_of_scope")));
    assert!(
        r.1["error"]["request_id"]
            .as_str()
            .unwrap()
            .starts_with("req-")
    );
    let r = http_get(&hub, "/api/v1/org/nodes/nowhere", Some(&county)).await;
    assert_eq!(error_of(&r), (404, Some("not_found")));

    let (status, body) = http_get(
        &hub,
        &format!("/api/v1/org/nodes/{DONGFENG}/subtree?depth=1"),
        Some(&county),
    )
    .await;
    assert_eq!(status, 200);
    let t = &body["tree"];
    assert_eq!(t["children"].as_array().unwrap().len(), 6);
    assert!(t["children"][0]["children_count"].as_u64().unwrap() > 0);
    let r = http_get(
        &hub,
        &format!("/api/v1/org/nodes/{DONGFENG}/subtree?depth=x"),
        Some(&county),
    )
    .await;
    assert_eq!(error_of(&r), (400, Some("invalid_query")));
    let (status, _) = http_get(
        &hub,
        &format!("/api/v1/org/nodes/{CITY}/subtree"),
        Some(&county),
    )
    .await;
    assert_eq!(status, 403);

    let r = http_get(&hub, "/api/v1/org", None).await;
    assert_eq!(error_of(&r), (401, Some("missing_credential")));
    let r = http_get(&hub, "/api/v1/org", Some("nonsense")).await;
    assert_eq!(error_of(&r), (401, Some("malformed_credential")));
    let r = http_get(&hub, "/api/v1/nothing-here", Some(&county)).await;
    assert_eq!(error_of(&r), (404, Some("not_found")));
}

#[tokio::test]
async fn presence_snapshot_over_rest() {
    let hub = spawn_app(|_| {}).await;
    let w = &workers_under(&hub.org, DONGFENG, 1)[0];
    let mut t = hub.connect(w).await;
    t.call("presence.set", json!({"status": "busy"})).await;
    let token = hub.token(DONGFENG);
    let (status, body) = http_get(
        &hub,
        &format!("/api/v1/presence?node={DONGFENG}"),
        Some(&token),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["node"], DONGFENG);
    let e = body["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == w.as_str())
        .unwrap();
    assert_eq!(e["status"], "busy");
    let agg = body["aggregates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["node"] == DONGFENG)
        .unwrap();
    assert_eq!(
        (agg["online"].as_u64(), agg["busy"].as_u64()),
        (Some(1), Some(1))
    );
    let (status, body) = http_get(
        &hub,
        &format!("/api/v1/presence?node={DONGFENG}&endpoints=false"),
        Some(&token),
    )
    .await;
    assert_eq!(
        (status, body["endpoints"].as_array().unwrap().len()),
        (200, 0)
    );
    let r = http_get(&hub, "/api/v1/presence", Some(&token)).await;
    assert_eq!(error_of(&r), (400, Some("invalid_query")));
    // A credential in the query string would end up in logs: refused, with the way instead.
    let r = http_get(
        &hub,
        &format!("/api/v1/presence?node={DONGFENG}&token={token}&endpoints=false"),
        None,
    )
    .await;
    assert_eq!(error_of(&r), (401, Some("credential_in_url")));
    assert!(
        r.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Authorization"),
        "{}",
        r.1
    );
    let (status, body) = http_get(
        &hub,
        &format!("/api/v1/presence?node={DONGFENG}&depth=2"),
        Some(&token),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_query")),
        "an unknown parameter: {body}"
    );
    assert!(
        body["error"]["message"].as_str().unwrap().contains("depth"),
        "{body}"
    );
    let (status, _) = http_get(&hub, &format!("/api/v1/presence?node={CITY}"), Some(&token)).await;
    assert_eq!(status, 403);
    let worker = hub.token(w);
    let (status, _) = http_get(&hub, &format!("/api/v1/presence?node={w}"), Some(&worker)).await;
    assert_eq!(status, 200, "a worker may read its own presence");
}

#[tokio::test]
async fn openapi_documents_exactly_the_routes_that_exist() {
    let hub = spawn_app(|_| {}).await;
    let (status, doc) = http_get(&hub, "/api/v1/openapi.json", None).await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    let mut documented: Vec<String> = doc["paths"].as_object().unwrap().keys().cloned().collect();
    documented.sort();
    let mut routes: Vec<String> = gridhub::api::ROUTES.iter().map(|s| s.to_string()).collect();
    routes.sort();
    assert_eq!(documented, routes);
    // And every documented path is actually served (anything but the fallback's 404).
    let token = hub.token(CITY);
    for path in &routes {
        let real = path.replace("{id}", DONGFENG);
        let real = if real == "/api/v1/presence" {
            format!("{real}?node={DONGFENG}")
        } else {
            real
        };
        let (status, body) = http_get(&hub, &real, Some(&token)).await;
        assert!(
            status != 404 || body["error"]["message"] != "no such route; see /api/v1/openapi.json",
            "{path} is documented but not routed"
        );
    }
}

#[tokio::test]
async fn every_refusal_is_json_with_its_code_and_documented_bounds_hold() {
    let hub = spawn_app(|_| {}).await;
    let token = hub.token(DONGFENG);
    // A path id that is not a number: the JSON error body naming what was wrong, never
    // axum's plain text.
    for path in [
        "/api/v1/orders/abc",
        "/api/v1/notices/x",
        "/api/v1/campaigns/-1",
        "/api/v1/calls/1.5",
    ] {
        let (status, head, body) = crate::auth::http_raw(&hub, path, Some(&token)).await;
        let body: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert!(
            head.to_ascii_lowercase().contains("application/json"),
            "{path}: {head}"
        );
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("invalid_data")),
            "{path}: {body}"
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("Cannot parse"),
            "{body}"
        );
        assert!(body["error"]["request_id"].is_string(), "{body}");
    }
    // Unknown notices, campaigns and nodes are not found (404), not invalid data.
    for path in ["/api/v1/notices/999", "/api/v1/campaigns/999"] {
        let r = http_get(&hub, path, Some(&token)).await;
        assert_eq!(error_of(&r), (404, Some("not_found")), "{path}");
    }
    let (status, body) = try_post(
        hub.addr,
        "/api/v1/notices",
        &token,
        r#"{"node":"230805999","title":"t","body":"b"}"#,
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    // Bounds the OpenAPI document gives are enforced, not silently clamped.
    for (path, ok) in [
        ("/api/v1/org/nodes/230805/subtree?depth=4", true),
        ("/api/v1/org/nodes/230805/subtree?depth=5", false),
        ("/api/v1/orders?node=230805&limit=500", true),
        ("/api/v1/orders?node=230805&limit=0", false),
        ("/api/v1/orders?node=230805&limit=501", false),
        ("/api/v1/calls?node=230805&limit=1000", false),
    ] {
        let r = http_get(&hub, path, Some(&token)).await;
        if ok {
            assert_eq!(r.0, 200, "{path}: {}", r.1);
        } else {
            assert_eq!(
                error_of(&r),
                (400, Some("invalid_query")),
                "{path}: {}",
                r.1
            );
        }
    }
}

#[tokio::test]
async fn an_oversized_body_is_answered_413_not_reset() {
    let hub = spawn_app(|_| {}).await;
    let token = hub.token(CITY);
    let big = format!(r#"{{"description":"{}"}}"#, "x".repeat(3 << 20));
    for _ in 0..5 {
        let (status, body) = try_post(hub.addr, "/api/v1/orders", &token, &big, None)
            .await
            .expect("an answer, not a reset");
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (413, Some("message_too_large")),
            "{body}"
        );
    }
}

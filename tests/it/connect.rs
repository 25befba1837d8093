//! Connecting, the hello message, duplicate logins, heartbeats.

use std::time::Duration;

use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

#[tokio::test]
async fn hello_describes_the_terminal_and_its_limits() {
    let hub = spawn_app(|_| {}).await;
    let ws = hub.open(Some(&hub.token(DONGFENG))).await.unwrap();
    let mut t = TestTerminal::new(ws);
    let hello = t.recv().await;
    assert_eq!(hello["v"], 1);
    assert_eq!(hello["type"], "hello");
    let d = &hello["data"];
    assert_eq!(d["endpoint"]["id"], DONGFENG);
    assert_eq!(d["endpoint"]["name"], "东风区");
    assert_eq!(d["endpoint"]["tier"], "county");
    assert_eq!(d["role"], "operator");
    assert_eq!(d["heartbeat"]["interval_ms"], 20_000);
    assert_eq!(d["heartbeat"]["timeout_ms"], 60_000);
    assert_eq!(d["limits"]["max_message_bytes"], 65_536);
    assert!(d["expires_at"].as_u64().unwrap() > now_s());
    t.ping_ok().await;
}

#[tokio::test]
async fn a_second_connection_of_the_same_terminal_replaces_the_first() {
    let hub = spawn_app(|_| {}).await;
    let w = &workers_under(&hub.org, DONGFENG, 1)[0];
    let mut console = hub.watching(DONGFENG).await;
    let mut first = hub.connect(w).await;
    first.ping_ok().await;
    let mut second = hub.connect(w).await;
    let (code, reason) = first.closed().await;
    assert_eq!(code, 4001, "{reason}");
    assert!(reason.contains("replaced"), "{reason}");
    second.ping_ok().await;
    // The replaced connection's goodbye must not mark the live terminal offline.
    let snap = console
        .call("presence.subscribe", json!({"node": DONGFENG}))
        .await;
    let me = entry(&snap, w).expect("listed");
    assert_eq!(me["status"], "online", "{snap}");
    assert_eq!(hub.hub().transport.registry.terminals(), 2);
}

#[tokio::test]
async fn a_silent_terminal_is_closed_and_marked_offline() {
    let hub = spawn_app(|c| {
        c.transport.heartbeat_interval_ms = 100;
        c.transport.heartbeat_timeout_ms = 1_000;
    })
    .await;
    let w = &workers_under(&hub.org, DONGFENG, 1)[0];
    let mut console = hub.connect(DONGFENG).await;
    let mut silent = hub.connect(w).await;
    // The console keeps itself alive while the worker stays silent.
    let closed = silent.closed();
    let mut closed = std::pin::pin!(closed);
    let (code, reason) = loop {
        tokio::select! {
            r = &mut closed => break r,
            _ = tokio::time::sleep(Duration::from_millis(50)) => console.ping_ok().await,
        }
    };
    assert_eq!(code, 4000, "{reason}");
    let offline = async {
        loop {
            let snap = console
                .call("presence.subscribe", json!({"node": DONGFENG}))
                .await;
            if entry(&snap, w).is_none() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(PATIENCE, offline)
        .await
        .expect("marked offline");
    assert_eq!(
        hub.hub()
            .metrics
            .ends(gridhub::telemetry::EndReason::Heartbeat),
        1
    );
}

#[tokio::test]
async fn heartbeats_keep_a_terminal_connected() {
    let hub = spawn_app(|c| {
        c.transport.heartbeat_interval_ms = 100;
        c.transport.heartbeat_timeout_ms = 2_000;
    })
    .await;
    let w = &workers_under(&hub.org, HUANAN, 1)[0];
    let mut t = hub.connect(w).await;
    // Application pings and WebSocket pings both count; run well past the timeout.
    for i in 0..30 {
        if i % 2 == 0 {
            t.ping_ok().await;
        } else {
            t.send(Message::Ping(vec![1, 2, 3].into())).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t.ping_ok().await;
    assert_eq!(
        hub.hub()
            .metrics
            .ends(gridhub::telemetry::EndReason::Heartbeat),
        0
    );
}

#[tokio::test]
async fn websocket_pings_are_answered_with_pongs() {
    let hub = spawn_app(|_| {}).await;
    let mut t = hub.connect(HUANAN).await;
    t.send(Message::Ping(b"are you there".to_vec().into()))
        .await;
    let m = tokio::time::timeout(PATIENCE, futures_util::StreamExt::next(&mut t.ws))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(m, Message::Pong(b"are you there".to_vec().into()));
}

#[tokio::test]
async fn an_expired_credential_closes_the_connection() {
    let hub = spawn_app(|c| {
        c.transport.heartbeat_interval_ms = 50;
        c.transport.heartbeat_timeout_ms = 10_000;
    })
    .await;
    // Valid for three more seconds: room to connect on a busy machine, well inside PATIENCE.
    let token = hub
        .auth
        .mint(&hub.org, HUANAN, gridhub::auth::Role::Operator, 3, now_s())
        .unwrap();
    let mut t = hub.connect_with(&token).await;
    let (code, reason) = t.closed().await;
    assert_eq!(code, 4003, "{reason}");
}

#[tokio::test]
async fn a_client_close_is_answered_and_the_terminal_goes_offline() {
    let hub = spawn_app(|_| {}).await;
    let w = &workers_under(&hub.org, DONGFENG, 1)[0];
    let mut console = hub.watching(DONGFENG).await;
    let mut t = hub.connect(w).await;
    let d = console.delta().await;
    assert_eq!(entry(&d, w).unwrap()["status"], "online");
    t.ws.close(None).await.unwrap();
    let d = console.delta().await;
    assert_eq!(entry(&d, w).unwrap()["status"], "offline", "{d}");
}

#[tokio::test]
async fn requests_without_an_id_are_notifications_answered_only_on_failure() {
    let hub = spawn_app(|_| {}).await;
    let mut t = hub.connect(DONGFENG).await;
    t.send_text(r#"{"v":1,"type":"ping"}"#).await;
    t.send_text(r#"{"v":1,"type":"presence.set","data":{"status":"busy"}}"#)
        .await;
    t.send_text(r#"{"v":1,"type":"presence.set","data":{"status":"sleeping"}}"#)
        .await;
    // Data-returning requests are always answered, with or without an id.
    t.send_text(
        r#"{"v":1,"type":"presence.subscribe","data":{"node":"230805","endpoints":false}}"#,
    )
    .await;
    let first = t.recv().await;
    assert_eq!(
        (first["type"].as_str(), first["data"]["code"].as_str()),
        (Some("error"), Some("invalid_data")),
        "{first}"
    );
    assert!(first.get("re").is_none());
    let second = t.recv().await;
    assert_eq!(second["type"], "reply");
    assert_eq!(
        second["data"]["node"], DONGFENG,
        "the snapshot, not an ack of the set: {second}"
    );
    let snap = t
        .call("presence.subscribe", json!({"node": DONGFENG}))
        .await;
    assert_eq!(
        entry(&snap, DONGFENG).unwrap()["status"],
        "busy",
        "the notification took effect"
    );
}

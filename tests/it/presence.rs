//! Presence over real sockets: snapshots, deltas, aggregates, scope, chain of command.

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn a_console_gets_a_snapshot_then_deltas_for_its_subtree_only() {
    let hub = spawn_app(|_| {}).await;
    let ws = workers_under(&hub.org, DONGFENG, 2);
    let outsider = &workers_under(&hub.org, HUANAN, 1)[0];
    let mut early = hub.connect(&ws[0]).await;
    early
        .call(
            "presence.set",
            json!({"status": "busy", "text": "入户走访"}),
        )
        .await;

    let mut console = hub.connect(DONGFENG).await;
    let snap = console
        .call("presence.subscribe", json!({"node": DONGFENG}))
        .await;
    assert_eq!(snap["type"], "reply", "{snap}");
    let d = &snap["data"];
    assert_eq!(d["node"], DONGFENG);
    let me = entry(&snap, &ws[0]).expect("already-online worker in snapshot");
    assert_eq!(
        (me["status"].as_str(), me["text"].as_str()),
        (Some("busy"), Some("入户走访"))
    );
    assert!(
        entry(&snap, &ws[1]).is_none(),
        "offline terminals are implied"
    );
    let dongfeng = hub.org.lookup(DONGFENG).unwrap();
    let agg = aggregate(&snap, DONGFENG).unwrap();
    assert_eq!(
        agg["total"].as_u64().unwrap() as usize,
        hub.org.descendants(dongfeng)
    );
    assert_eq!(agg["busy"], 1);
    // The console itself is the county node, not below it.
    assert_eq!(agg["online"], 1);

    // A terminal elsewhere changes: nothing for this console. Then one inside does.
    let _out = hub.connect(outsider).await;
    let mut second = hub.connect(&ws[1]).await;
    let delta = console.delta().await;
    assert!(
        entry(&delta, outsider).is_none(),
        "outside the subtree: {delta}"
    );
    let e = entry(&delta, &ws[1]).unwrap_or_else(|| panic!("{} not in {delta}", ws[1]));
    assert_eq!(e["status"], "online");
    assert_eq!(aggregate(&delta, DONGFENG).unwrap()["online"], 2);

    second
        .call(
            "presence.set",
            json!({"status": "away", "location": {"lat": 46.82, "lon": 130.41, "accuracy_m": 8.5}}),
        )
        .await;
    let delta = console.delta().await;
    let e = entry(&delta, &ws[1]).unwrap();
    assert_eq!(e["status"], "away");
    assert_eq!(e["location"]["lat"], 46.82);
    assert_eq!(e["location"]["accuracy_m"], 8.5);
    assert!(e["location"]["at"].as_u64().unwrap() > 0);
    assert_eq!(aggregate(&delta, DONGFENG).unwrap()["away"], 1);

    drop(second);
    let delta = console.delta().await;
    let e = entry(&delta, &ws[1]).unwrap();
    assert_eq!(e["status"], "offline");
    assert_eq!(e["location"]["lat"], 46.82, "last known location is kept");
}

#[tokio::test]
async fn aggregates_only_subscriptions_carry_no_endpoint_lists() {
    let hub = spawn_app(|_| {}).await;
    let mut wall = hub.connect(CITY).await;
    let snap = wall
        .call(
            "presence.subscribe",
            json!({"node": CITY, "endpoints": false}),
        )
        .await;
    assert_eq!(snap["data"]["endpoints"], json!([]));
    assert_eq!(aggregate(&snap, CITY).unwrap()["total"], 9_851);
    assert_eq!(
        snap["data"]["aggregates"].as_array().unwrap().len(),
        1 + 10 + 106 + 1_206
    );
    let w = &workers_under(&hub.org, HUANAN, 1)[0];
    let _t = hub.connect(w).await;
    let d = wall.delta().await;
    assert_eq!(d["data"]["endpoints"], json!([]));
    assert_eq!(aggregate(&d, CITY).unwrap()["online"], 1);
    assert_eq!(aggregate(&d, HUANAN).unwrap()["online"], 1);
}

#[tokio::test]
async fn a_reconnect_wave_reaches_the_console_coalesced() {
    let hub = spawn_app(|c| c.presence.coalesce_ms = 200).await;
    let mut console = hub.connect(CITY).await;
    console
        .call("presence.subscribe", json!({"node": CITY}))
        .await;
    let ws = workers_under(&hub.org, HUANAN, 60);
    let mut terms = Vec::new();
    for w in &ws {
        terms.push(hub.connect(w).await);
    }
    // Count deltas until all 60 are seen online.
    let (mut seen, mut deltas) = (std::collections::HashSet::new(), 0);
    while seen.len() < ws.len() {
        let d = console.delta().await;
        deltas += 1;
        for e in d["data"]["endpoints"].as_array().unwrap() {
            seen.insert(e["id"].as_str().unwrap().to_owned());
        }
    }
    assert!(
        deltas < ws.len() / 2,
        "{deltas} deltas for {} changes",
        ws.len()
    );
}

#[tokio::test]
async fn scope_is_enforced_for_operators_and_workers() {
    let hub = spawn_app(|_| {}).await;
    let mut county = hub.connect(DONGFENG).await;
    let r = county
        .call("presence.subscribe", json!({"node": CITY}))
        .await;
    assert_eq!(r["type"], "error");
    assert_eq!(r["data"]["code"], "out_of_scope");
    assert!(
        r["data"]["message"].as_str().unwrap().contains("东风区"),
        "{r}"
    );
    let r = county
        .call("presence.subscribe", json!({"node": HUANAN}))
        .await;
    assert_eq!(r["data"]["code"], "out_of_scope");
    county.ping_ok().await;

    let w = &workers_under(&hub.org, DONGFENG, 1)[0];
    let village = hub
        .org
        .id(hub.org.parent(hub.org.lookup(w).unwrap()).unwrap())
        .to_string();
    let mut worker = hub.connect(w).await;
    let r = worker
        .call("presence.subscribe", json!({"node": village}))
        .await;
    assert_eq!(r["data"]["code"], "out_of_scope", "{r}");
    assert!(r["data"]["message"].as_str().unwrap().contains("chain"));
    let own = worker.call("presence.subscribe", json!({"node": w})).await;
    assert_eq!(own["type"], "reply");
}

#[tokio::test]
async fn a_worker_follows_its_chain_of_command() {
    let hub = spawn_app(|_| {}).await;
    let ws = workers_under(&hub.org, DONGFENG, 2);
    let idx = hub.org.lookup(&ws[0]).unwrap();
    let chain: Vec<String> = hub
        .org
        .ancestors(idx)
        .map(|a| hub.org.id(a).to_string())
        .collect();
    let mut worker = hub.connect(&ws[0]).await;
    let snap = worker
        .call("presence.subscribe", json!({"chain": true}))
        .await;
    let ids: Vec<&str> = snap["data"]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, chain.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(snap["data"]["chain"], true);
    // A sibling worker comes on line: not in the chain. The township center does: in the chain.
    let _sibling = hub.connect(&ws[1]).await;
    let _township = hub.connect(&chain[1]).await;
    let d = worker.delta().await;
    assert_eq!(d["data"]["endpoints"].as_array().unwrap().len(), 1, "{d}");
    assert_eq!(entry(&d, &chain[1]).unwrap()["status"], "online");
}

#[tokio::test]
async fn unsubscribing_stops_deltas_and_unknown_subscriptions_are_errors() {
    let hub = spawn_app(|_| {}).await;
    let mut console = hub.connect(DONGFENG).await;
    console
        .call("presence.subscribe", json!({"node": DONGFENG}))
        .await;
    let r = console
        .call("presence.unsubscribe", json!({"node": DONGFENG}))
        .await;
    assert_eq!(r["type"], "reply");
    let r = console
        .call("presence.unsubscribe", json!({"node": DONGFENG}))
        .await;
    assert_eq!(r["data"]["code"], "not_subscribed");
    let _w = hub.connect(&workers_under(&hub.org, DONGFENG, 1)[0]).await;
    // A ping round trip after the change: no delta may arrive before its reply.
    let id = console.request("ping", json!({})).await;
    let m = console.recv().await;
    assert_eq!(m["re"], id, "no delta after unsubscribing: {m}");
}

#[tokio::test]
async fn subscriptions_per_connection_are_bounded() {
    let hub = spawn_app(|c| c.presence.max_subscriptions = 2).await;
    let mut console = hub.connect(CITY).await;
    assert_eq!(
        console
            .call(
                "presence.subscribe",
                json!({"node": CITY, "endpoints": false})
            )
            .await["type"],
        "reply"
    );
    assert_eq!(
        console
            .call("presence.subscribe", json!({"node": DONGFENG}))
            .await["type"],
        "reply"
    );
    let r = console
        .call("presence.subscribe", json!({"node": HUANAN}))
        .await;
    assert_eq!(r["data"]["code"], "too_many_subscriptions");
    console.ping_ok().await;
}

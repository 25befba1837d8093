//! Nothing acknowledged is ever lost: SIGKILL in the middle of a stream of writes, restart, and
//! check; and deadlines that fall due while the hub is down fire after it restarts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::auth::http_get;
use crate::support::*;

#[tokio::test]
async fn acknowledged_writes_survive_sigkill_and_retries_never_duplicate() {
    let data = temp_dir("kill");
    let (mut child, hub) = spawn_binary(None, Some(&data), &[]).await;
    let workers = workers_under(&hub.org, DONGFENG, 40);
    let city = hub.token(CITY);
    let addr = hub.addr;

    // Eight writers stream creates (each with its own idempotency key), and dispatch every
    // order they created to the county. Each records only what the hub acknowledged.
    let created: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let dispatched: Arc<Mutex<Vec<u64>>> = Arc::default();
    let attempted: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..8 {
        let (created, dispatched, attempted) =
            (created.clone(), dispatched.clone(), attempted.clone());
        let (city, workers) = (city.clone(), workers.clone());
        writers.push(tokio::spawn(async move {
            for i in 0..1_000 {
                let key = format!("kill-{w}-{i}");
                let body = new_order(
                    &workers[(w * 5 + i) % workers.len()],
                    &format!("order {key}"),
                )
                .to_string();
                attempted.lock().unwrap().push((key.clone(), body.clone()));
                let Ok((status, r)) =
                    try_post(addr, "/api/v1/orders", &city, &body, Some(&key)).await
                else {
                    return;
                };
                assert_eq!(status, 201, "{r}");
                let id = r["order"]["id"].as_u64().unwrap();
                created.lock().unwrap().insert(key, id);
                let d = json!({"to": DONGFENG}).to_string();
                let Ok((status, _)) = try_post(
                    addr,
                    &format!("/api/v1/orders/{id}/dispatch"),
                    &city,
                    &d,
                    None,
                )
                .await
                else {
                    return;
                };
                assert_eq!(status, 200);
                dispatched.lock().unwrap().push(id);
            }
        }));
    }
    // Kill the hub mid-stream, without warning.
    while created.lock().unwrap().len() < 300 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
    assert_eq!(
        unsafe { libc::kill(child.id().unwrap() as i32, libc::SIGKILL) },
        0
    );
    child.wait().await.unwrap();
    for w in writers {
        w.await.unwrap();
    }
    let created = created.lock().unwrap().clone();
    let dispatched = dispatched.lock().unwrap().clone();
    let attempted = attempted.lock().unwrap().clone();
    assert!(
        attempted.len() > created.len(),
        "the kill landed mid-stream"
    );

    // Restart on the same data folder.
    let (_child, hub) = spawn_binary(None, Some(&data), &[]).await;
    // Every acknowledged create and dispatch is there.
    for (key, id) in &created {
        let (status, r) = http_get(&hub, &format!("/api/v1/orders/{id}"), Some(&city)).await;
        assert_eq!(status, 200, "acknowledged order {id} ({key}) lost");
        assert_eq!(r["order"]["description"], format!("order {key}"));
    }
    for id in &dispatched {
        let (_, r) = http_get(&hub, &format!("/api/v1/orders/{id}"), Some(&city)).await;
        assert_eq!(
            (r["order"]["state"].as_str(), r["order"]["holder"].as_str()),
            (Some("dispatched"), Some(DONGFENG))
        );
    }
    // Retrying everything that was attempted creates each order exactly once.
    for (key, body) in &attempted {
        let (status, r) = try_post(hub.addr, "/api/v1/orders", &city, body, Some(key))
            .await
            .unwrap();
        match created.get(key) {
            Some(id) => assert_eq!(
                (status, r["order"]["id"].as_u64()),
                (200, Some(*id)),
                "{key}"
            ),
            None => assert!(status == 200 || status == 201, "{key}: {status} {r}"),
        }
    }
    let (_, s) = http_get(&hub, "/api/v1/orders/stats", Some(&city)).await;
    assert_eq!(
        s["received"].as_u64().unwrap() as usize,
        attempted.len(),
        "one order per key: {s}"
    );
    // Histories are intact: events numbered 1..=version with no gaps or repeats.
    for id in dispatched.iter().take(20) {
        let (_, h) = http_get(&hub, &format!("/api/v1/orders/{id}/history"), Some(&city)).await;
        let seqs: Vec<u64> = h["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, [1, 2], "order {id}: {h}");
    }
    drop(hub);
    let _ = std::fs::remove_dir_all(&data);
}

#[tokio::test]
async fn deadlines_that_fall_due_while_the_hub_is_down_fire_after_restart() {
    let data = temp_dir("deadline");
    let tweak = |d: std::path::PathBuf| {
        move |c: &mut gridhub::config::Config| {
            c.server.data_dir = d;
            c.orders.priorities.routine.deadline_secs = 2;
            c.orders.priorities.routine.escalate_after_secs = 3600;
        }
    };
    let mut hub = spawn_app(tweak(data.clone())).await;
    let worker = workers_under(&hub.org, DONGFENG, 1).remove(0);
    let mut city = hub.connect(CITY).await;
    let id = city.order("order.create", new_order(&worker, "积水")).await["id"]
        .as_u64()
        .unwrap();
    let o = city
        .order("order.dispatch", json!({"order": id, "to": DONGFENG}))
        .await;
    let due = o["due_at"].as_u64().unwrap();
    drop(city);
    hub.data_dir = None; // keep the data for the restart
    hub.shutdown().await;

    let mut hub = spawn_app(tweak(data.clone())).await;
    let mut county = hub.connect(DONGFENG).await;
    county.resume(0).await;
    // The dispatch message, then supervision once the deadline passes.
    let (_, kind, _) = county.outbox().await;
    assert_eq!(kind, "order.assigned");
    let (_, kind, o): (u64, String, Value) = county.outbox().await;
    assert_eq!(kind, "order.supervised");
    assert_eq!(
        (o["state"].as_str(), o["supervision"].as_u64()),
        (Some("supervised"), Some(1))
    );
    assert!(gridhub::clock::now_ms() >= due);
    let token = hub.token(CITY);
    let (_, h) = http_get(&hub, &format!("/api/v1/orders/{id}/history"), Some(&token)).await;
    let last = h["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (
            last["action"].as_str(),
            last["actor"].as_str(),
            last["level"].as_u64()
        ),
        (Some("supervise"), Some("hub"), Some(1))
    );
    let (_, late) = http_get(&hub, "/api/v1/orders?late=true", Some(&token)).await;
    assert_eq!(late["orders"].as_array().unwrap().len(), 1);
    hub.data_dir = Some(data);
}

#[tokio::test]
async fn delivered_outbox_messages_are_pruned_and_sequences_never_repeat() {
    let data = temp_dir("prune");
    let cfg = |d: std::path::PathBuf| {
        move |c: &mut gridhub::config::Config| {
            c.server.data_dir = d;
            c.outbox.prune_interval_secs = 1;
            c.outbox.keep_secs = 0;
        }
    };
    let mut hub = spawn_app(cfg(data.clone())).await;
    let ws = workers_under(&hub.org, HUANAN, 2);
    let mut acking = hub.connect(&ws[0]).await;
    acking.resume(0).await;
    let mut silent = hub.connect(&ws[1]).await;
    silent.resume(0).await;
    let mut city = hub.connect(CITY).await;
    for i in 0..3 {
        city.call(
            "notice.send",
            json!({"node": HUANAN, "tiers": ["worker"], "title": format!("n{i}"), "body": "b"}),
        )
        .await;
    }
    let mut last = 0;
    for _ in 0..3 {
        last = acking.outbox().await.0;
    }
    acking.ack(last).await;
    // Pruned once acknowledged and past the (zero) keep period: a resume from the start finds
    // nothing for the terminal that acknowledged, everything for the one that did not.
    let pruned = async {
        loop {
            if acking.resume(0).await["replayed"] == 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(PATIENCE, pruned)
        .await
        .expect("pruned");
    assert_eq!(
        silent.resume(0).await["replayed"],
        3,
        "unacknowledged messages are kept"
    );
    drop((acking, silent, city));
    hub.data_dir = None;
    hub.shutdown().await;

    // After a restart the next message continues the sequence.
    let hub = spawn_app(cfg(data.clone())).await;
    let mut acking = hub.connect(&ws[0]).await;
    let r = acking.resume(last).await;
    assert_eq!(r["replayed"], 0, "{r}");
    let mut city = hub.connect(CITY).await;
    city.call(
        "notice.send",
        json!({"node": HUANAN, "tiers": ["worker"], "title": "after", "body": "b"}),
    )
    .await;
    let (seq, _, _) = acking.outbox().await;
    assert_eq!(seq, last + 1);
    let _ = std::fs::remove_dir_all(&data);
}

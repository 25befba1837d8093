//! Notices and campaigns: many terminals through their durable outboxes.

use serde_json::{Value, json};

use crate::auth::http_get;
use crate::support::*;

/// The next outbox message of a given kind: (seq, its data).
async fn next_of(t: &mut TestTerminal, kind: &str) -> (u64, Value) {
    let m = t
        .next_where(|m| m["type"] == "outbox" && m["data"]["kind"] == kind)
        .await;
    (m["seq"].as_u64().unwrap(), m["data"].clone())
}

#[tokio::test]
async fn a_notice_reaches_every_worker_of_a_county_with_delivery_and_read_counts() {
    let hub = spawn_app(|_| {}).await;
    let huanan_workers = hub
        .org
        .subtree(hub.org.lookup(HUANAN).unwrap())
        .filter(|&i| hub.org.tier(gridhub::org::NodeIdx(i as u32)) == gridhub::org::Tier::Worker)
        .count();
    let ws = workers_under(&hub.org, HUANAN, 4);
    let outsider = workers_under(&hub.org, DONGFENG, 1).remove(0);
    let mut online = Vec::new();
    for w in &ws[..3] {
        let mut t = hub.connect(w).await;
        t.resume(0).await;
        online.push(t);
    }
    let mut other = hub.connect(&outsider).await;
    other.resume(0).await;

    let mut city = hub.connect(CITY).await;
    let r = city
        .call("notice.send", json!({"node": HUANAN, "tiers": ["worker"], "title": "防汛通知", "body": "今晚有暴雨，请各网格员巡查低洼地带。"}))
        .await;
    assert_eq!(r["type"], "reply", "{r}");
    let id = r["data"]["notice"]["id"].as_u64().unwrap();
    assert_eq!(
        r["data"]["notice"]["recipients"].as_u64().unwrap() as usize,
        huanan_workers
    );

    for t in &mut online {
        let (seq, data) = next_of(t, "notice").await;
        assert_eq!(data["notice"]["title"], "防汛通知");
        assert_eq!(data["notice"]["from"], CITY);
        t.ack(seq).await;
    }
    online[0].call("notice.read", json!({"notice": id})).await;
    // The worker outside the county gets nothing.
    other.ping_ok().await;
    assert!(!other.pending.iter().any(|m| m["type"] == "outbox"));

    // A worker that was offline gets it when it comes back and resumes.
    let mut late = hub.connect(&ws[3]).await;
    late.resume(0).await;
    let (seq, data) = next_of(&mut late, "notice").await;
    assert_eq!(data["notice"]["id"].as_u64(), Some(id));
    late.ack(seq).await;
    late.ping_ok().await;

    // Counts: four delivered (acknowledged), one read. Acknowledgements reach the store in
    // batches (on a timer), so the counts are asked for until they settle.
    let counts = async {
        loop {
            let n = city.call("notice.get", json!({"notice": id})).await;
            let n = &n["data"]["notice"];
            if n["delivered"] == 4 && n["read"] == 1 {
                return n.clone();
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    let n = tokio::time::timeout(PATIENCE, counts)
        .await
        .expect("counts settle");
    assert_eq!(n["recipients"].as_u64().unwrap() as usize, huanan_workers);
    // The same over REST.
    let (status, body) = http_get(
        &hub,
        &format!("/api/v1/notices/{id}"),
        Some(&hub.token(CITY)),
    )
    .await;
    assert_eq!(
        (status, body["notice"]["delivered"].as_u64()),
        (200, Some(4))
    );
}

#[tokio::test]
async fn notices_are_refused_outside_scope_and_when_malformed() {
    let hub = spawn_app(|_| {}).await;
    let mut county = hub.connect(DONGFENG).await;
    let e = county
        .refused(
            "notice.send",
            json!({"node": HUANAN, "title": "x", "body": "y"}),
        )
        .await;
    assert_eq!(e["code"], "out_of_scope");
    let e = county
        .refused(
            "notice.send",
            json!({"node": DONGFENG, "title": "", "body": "y"}),
        )
        .await;
    assert!(
        e["message"].as_str().unwrap().contains("title is required"),
        "{e}"
    );
    let e = county
        .refused(
            "notice.send",
            json!({"node": DONGFENG, "title": "t", "body": "长".repeat(2001)}),
        )
        .await;
    assert!(
        e["message"].as_str().unwrap().contains("2001 characters"),
        "{e}"
    );
    let e = county
        .refused(
            "notice.send",
            json!({"node": DONGFENG, "title": "t", "body": "b", "tiers": ["mayor"]}),
        )
        .await;
    assert_eq!(e["code"], "invalid_data");
    let w = workers_under(&hub.org, DONGFENG, 1).remove(0);
    let mut worker = hub.connect(&w).await;
    let e = worker
        .refused("notice.send", json!({"node": w, "title": "t", "body": "b"}))
        .await;
    assert_eq!(e["code"], "out_of_scope");
    let e = county.refused("notice.get", json!({"notice": 999})).await;
    assert_eq!(e["code"], "not_found");
    // A notice nobody would receive is refused, not sent to no one.
    let e = county
        .refused(
            "notice.send",
            json!({"node": DONGFENG, "tiers": ["city"], "title": "t", "body": "b"}),
        )
        .await;
    assert_eq!(e["code"], "invalid_data");
    assert!(e["message"].as_str().unwrap().contains("nobody"), "{e}");
}

#[tokio::test]
async fn a_campaign_collects_records_with_live_progress() {
    let hub = spawn_app(|_| {}).await;
    let township = hub
        .org
        .id(hub.org.children(hub.org.lookup(HUANAN).unwrap())[0])
        .to_string();
    let ws = workers_under(&hub.org, &township, 3);
    let mut county = hub.connect(HUANAN).await;
    let r = county
        .call(
            "campaign.start",
            json!({"node": township, "title": "人口核查", "instructions": "逐户核对常住人口信息"}),
        )
        .await;
    assert_eq!(r["type"], "reply", "{r}");
    let id = r["data"]["campaign"]["id"].as_u64().unwrap();
    let recipients = r["data"]["campaign"]["recipients"].as_u64().unwrap();
    assert!(recipients >= 3);
    let w = county.call("campaign.watch", json!({"campaign": id})).await;
    assert_eq!(w["data"]["campaign"]["records"], 0);

    let mut terms = Vec::new();
    for w in &ws {
        let mut t = hub.connect(w).await;
        t.resume(0).await;
        let (seq, task) = next_of(&mut t, "campaign.task").await;
        assert_eq!(task["campaign"]["title"], "人口核查");
        t.ack(seq).await;
        terms.push(t);
    }
    // Each worker checks households; one corrects an earlier record.
    for (k, t) in terms.iter_mut().enumerate() {
        let records: Vec<Value> = (0..5)
            .map(|i| json!({"key": format!("hh-{k}-{i}"), "outcome": if i == 4 { "not_found" } else { "verified" }, "data": {"persons": i + 1}}))
            .collect();
        let r = t
            .call(
                "campaign.record",
                json!({"campaign": id, "records": records}),
            )
            .await;
        assert_eq!(r["data"]["accepted"], 5, "{r}");
    }
    let r = terms[0]
        .call(
            "campaign.record",
            json!({"campaign": id, "records": [{"key": "hh-0-4", "outcome": "updated"}]}),
        )
        .await;
    assert_eq!(r["data"]["accepted"], 1);
    terms[0]
        .call("campaign.done", json!({"campaign": id}))
        .await;

    // Live progress reaches the watching county, coalesced; the totals converge.
    let progress = async {
        loop {
            let p = county
                .next_where(|m| m["type"] == "campaign.progress")
                .await;
            let t = &p["data"]["totals"];
            if t["verified"] == 12
                && t["updated"] == 1
                && t["not_found"] == 2
                && t["workers_done"] == 1
            {
                return p;
            }
        }
    };
    let p = tokio::time::timeout(PATIENCE, progress)
        .await
        .expect("progress arrives");
    assert!(
        p["data"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["node"] == township)
    );
    let (status, c) = http_get(
        &hub,
        &format!("/api/v1/campaigns/{id}"),
        Some(&hub.token(HUANAN)),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        c["campaign"]["records"], 15,
        "15 households, the correction replaced one"
    );

    // Refusals: a worker of another township (who learns nothing of the campaign), a bad
    // outcome, too many records, data not an object.
    let stranger = workers_under(&hub.org, DONGFENG, 1).remove(0);
    let mut s = hub.connect(&stranger).await;
    let e = s
        .refused(
            "campaign.record",
            json!({"campaign": id, "records": [{"key": "x", "outcome": "verified"}]}),
        )
        .await;
    assert_eq!(e["code"], "not_found");
    let e = terms[1]
        .refused(
            "campaign.record",
            json!({"campaign": id, "records": [{"key": "x", "outcome": "maybe"}]}),
        )
        .await;
    assert_eq!(e["code"], "invalid_data");
    let many: Vec<Value> = (0..101)
        .map(|i| json!({"key": format!("k{i}"), "outcome": "verified"}))
        .collect();
    let e = terms[1]
        .refused("campaign.record", json!({"campaign": id, "records": many}))
        .await;
    assert!(e["message"].as_str().unwrap().contains("1 to 100"), "{e}");
    let e = terms[1]
        .refused(
            "campaign.record",
            json!({"campaign": id, "records": [{"key": "x", "outcome": "verified", "data": [1]}]}),
        )
        .await;
    assert!(e["message"].as_str().unwrap().contains("must be an object"));
    // Closed: no more records.
    let r = county.call("campaign.close", json!({"campaign": id})).await;
    assert_eq!(r["type"], "reply", "{r}");
    let e = terms[1]
        .refused(
            "campaign.record",
            json!({"campaign": id, "records": [{"key": "late", "outcome": "verified"}]}),
        )
        .await;
    assert_eq!(e["code"], "illegal_transition", "{e}");
    assert!(e["message"].as_str().unwrap().contains("closed"), "{e}");
    // Closed, it can still be read, watched and unwatched, with its final counts.
    let r = county.call("campaign.get", json!({"campaign": id})).await;
    assert_eq!(r["type"], "reply", "{r}");
    assert!(r["data"]["campaign"]["closed_at"].as_u64().is_some(), "{r}");
    assert_eq!(r["data"]["campaign"]["records"], 15, "{r}");
    let r = county
        .call("campaign.unwatch", json!({"campaign": id}))
        .await;
    assert_eq!(r["type"], "reply", "{r}");
    let token = hub.token(HUANAN);
    let (status, body) = http_get(&hub, &format!("/api/v1/campaigns/{id}"), Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["campaign"]["records"], 15);
}

#[tokio::test]
async fn campaign_progress_survives_a_restart() {
    let data = temp_dir("campaign");
    let cfg = |d: std::path::PathBuf| move |c: &mut gridhub::config::Config| c.server.data_dir = d;
    let mut hub = spawn_app(cfg(data.clone())).await;
    let w = workers_under(&hub.org, HUANAN, 1).remove(0);
    let mut county = hub.connect(HUANAN).await;
    let id = county
        .call(
            "campaign.start",
            json!({"node": HUANAN, "title": "核查", "instructions": "i"}),
        )
        .await["data"]["campaign"]["id"]
        .as_u64()
        .unwrap();
    let mut t = hub.connect(&w).await;
    t.call("campaign.record", json!({"campaign": id, "records": [{"key": "a", "outcome": "verified"}, {"key": "b", "outcome": "refused"}]})).await;
    drop((county, t));
    hub.data_dir = None;
    hub.shutdown().await;
    let mut hub = spawn_app(cfg(data.clone())).await;
    let mut county = hub.connect(HUANAN).await;
    let c = county.call("campaign.get", json!({"campaign": id})).await;
    let totals = &c["data"]["campaign"]["totals"];
    assert_eq!(
        (totals["verified"].as_u64(), totals["refused"].as_u64()),
        (Some(1), Some(1)),
        "{c}"
    );
    hub.data_dir = Some(data);
}

#[tokio::test]
async fn a_connection_that_missed_live_messages_is_replayed_them_in_order() {
    use gridhub::backplane::Outbound;
    let hub = spawn_app(|_| {}).await;
    let w = workers_under(&hub.org, HUANAN, 1).remove(0);
    let village = hub
        .org
        .id(hub.org.parent(hub.org.lookup(&w).unwrap()).unwrap())
        .to_string();
    let mut county = hub.connect(HUANAN).await;
    let mut t = hub.connect(&w).await;
    t.resume(0).await;
    let notice = |title: &str| json!({"node": village, "tiers": ["worker"], "title": title, "body": "今晚巡查"});
    let r = county.call("notice.send", notice("第一")).await;
    assert_eq!(r["type"], "reply", "{r}");
    let (first, _) = next_of(&mut t, "notice").await;
    // As if the first had never reached this connection live (its node was taken for gone a
    // moment): the next message finds the gap, and both come, in order, without a reply.
    let ep = hub.org.lookup(&w).unwrap();
    let conn = hub.hub().backplane.seats(ep)[0].conn;
    hub.hub().backplane.resumed(conn, first - 1);
    let r = county.call("notice.send", notice("第二")).await;
    assert_eq!(r["type"], "reply", "{r}");
    let mut got = Vec::new();
    while got.len() < 2 {
        let m = t.recv().await;
        assert_ne!(m["type"], "reply", "a catch-up is not answered: {m}");
        if m["type"] == "outbox" {
            got.push((
                m["seq"].as_u64().unwrap(),
                m["data"]["notice"]["title"].clone(),
            ));
        }
    }
    assert_eq!(
        got,
        vec![(first, json!("第一")), (first + 1, json!("第二"))]
    );
    t.ping_ok().await;
    let metrics = String::from_utf8(crate::auth::http_raw(&hub, "/metrics", None).await.2).unwrap();
    assert!(
        metrics.contains("gridhub_outbox_catch_ups_total 1"),
        "{metrics}"
    );
}

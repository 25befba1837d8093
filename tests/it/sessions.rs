//! Command sessions over the protocol: a commander, invited terminals, a wall watching.

use gridhub::auth::Role;
use serde_json::{Value, json};

use crate::support::*;

async fn push(t: &mut TestTerminal, kind: &str) -> Value {
    let k = kind.to_owned();
    t.next_where(move |m| m["type"] == k.as_str()).await["data"].clone()
}

/// The member `id` in a roster.
fn member<'a>(roster: &'a Value, id: &str) -> &'a Value {
    roster["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == id)
        .unwrap_or_else(|| panic!("{id} not in {roster}"))
}

#[tokio::test]
async fn a_commander_pulls_in_a_township_and_a_worker_and_commands_them() {
    let hub = spawn_app(|_| {}).await;
    let w = workers_under(&hub.org, DONGFENG, 1).remove(0);
    let chain = chain_to(&hub.org, &w);
    let township = chain[2].clone();
    let mut city = hub.watching(CITY).await;
    let mut commander = hub.connect(DONGFENG).await;
    let mut town = hub.connect(&township).await;
    let mut worker = hub.connect(&w).await;

    let r = commander
        .call(
            "session.create",
            json!({"title": "防汛会商", "invite": [township, w]}),
        )
        .await;
    assert_eq!(r["type"], "reply", "{r}");
    let s = &r["data"]["session"];
    let id = s["session"].as_u64().unwrap();
    assert_eq!(
        (s["title"].as_str(), s["commander"].as_str()),
        (Some("防汛会商"), Some(DONGFENG))
    );
    assert_eq!(member(s, &w)["state"], "invited");
    for t in [&mut town, &mut worker] {
        let inv = push(t, "session.invited").await;
        assert_eq!(
            (inv["session"].as_u64(), inv["commander"]["id"].as_str()),
            (Some(id), Some(DONGFENG))
        );
    }

    // The worker joins and publishes; the commander's roster follows, the city sees in_session.
    let r = worker.call("session.join", json!({"session": id})).await;
    assert_eq!(member(&r["data"]["session"], &w)["state"], "joined", "{r}");
    let r = worker
        .call(
            "session.publish",
            json!({"session": id, "audio": true, "video": true}),
        )
        .await;
    assert_eq!(r["type"], "reply", "{r}");
    loop {
        let roster = push(&mut commander, "session.roster").await;
        if member(&roster, &w)["publishes"]["video"] == true {
            break;
        }
    }
    loop {
        let d = city.delta().await;
        if entry(&d, &w).is_some_and(|e| e["status"] == "in_session") {
            break;
        }
    }

    // Controls: only the commander's count.
    let e = worker
        .refused("session.control", json!({"session": id, "action": "end"}))
        .await;
    assert_eq!(e["code"], "not_commander", "{e}");
    let ctl = |action: &str| json!({"session": id, "action": action, "target": w});
    commander.call("session.control", ctl("mute")).await;
    assert_eq!(push(&mut worker, "session.muted").await["muted"], true);
    commander.call("session.control", ctl("pull_camera")).await;
    assert_eq!(push(&mut worker, "session.camera").await["pull"], true);
    let r = commander.call("session.control", ctl("spotlight")).await;
    assert_eq!(r["data"]["session"]["spotlight"], w.as_str(), "{r}");
    let e = commander
        .refused("session.control", json!({"session": id, "action": "mute"}))
        .await;
    assert_eq!(e["code"], "invalid_data", "no target: {e}");

    // The county's wall watches uninvited; a terminal not invited may not join.
    let wall = hub.seat_token(DONGFENG, Role::Observer, "wall");
    let mut wall = hub.connect_with(&wall).await;
    let r = wall.call("session.join", json!({"session": id})).await;
    let roster = &r["data"]["session"];
    assert!(
        roster["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["part"] == "observer" && m["seat"] == "wall"),
        "{r}"
    );
    let other = workers_under(&hub.org, DONGFENG, 2).remove(1);
    let mut stranger = hub.connect(&other).await;
    let e = stranger
        .refused("session.join", json!({"session": id}))
        .await;
    assert_eq!(e["code"], "not_invited", "{e}");
    let e = stranger
        .refused("session.get", json!({"session": id}))
        .await;
    assert_eq!(
        e["code"], "not_found",
        "a session is seen by its members and walls: {e}"
    );

    // Leave and rejoin; a lost connection is away, then back.
    worker.call("session.leave", json!({"session": id})).await;
    let r = worker.call("session.join", json!({"session": id})).await;
    assert_eq!(member(&r["data"]["session"], &w)["state"], "joined");
    drop(worker);
    loop {
        let roster = push(&mut commander, "session.roster").await;
        if member(&roster, &w)["state"] == "away" {
            break;
        }
    }
    let mut worker = hub.connect(&w).await;
    loop {
        let roster = push(&mut commander, "session.roster").await;
        if member(&roster, &w)["state"] == "joined" {
            break;
        }
    }
    let list = worker.call("session.list", json!({})).await;
    assert_eq!(list["data"]["sessions"][0]["session"], id, "{list}");

    // Ended by the commander: everyone present is told, presence is back to on line.
    commander
        .call("session.control", json!({"session": id, "action": "end"}))
        .await;
    let e = push(&mut worker, "session.ended").await;
    assert_eq!(e["reason"], "ended by its commander");
    push(&mut wall, "session.ended").await;
    loop {
        let d = city.delta().await;
        if entry(&d, &w).is_some_and(|e| e["status"] == "online") {
            break;
        }
    }
    let e = worker.refused("session.join", json!({"session": id})).await;
    assert_eq!(e["code"], "session_ended");
}

#[tokio::test]
async fn caps_and_bad_requests_are_refused_with_their_reasons() {
    let hub = spawn_app(|c| {
        c.sessions.max_sessions = 1;
        c.sessions.max_members = 3;
    })
    .await;
    let mut county = hub.connect(DONGFENG).await;
    let mut other = hub.connect(HUANAN).await;
    let mut worker = hub.connect(&workers_under(&hub.org, DONGFENG, 1)[0]).await;

    // A subtree invitation: every township of the county, past the cap of three members.
    let e = county
        .refused(
            "session.create",
            json!({"invite_below": {"node": DONGFENG, "tier": "township"}}),
        )
        .await;
    assert_eq!(e["code"], "too_many_members", "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("sessions.max_members")
    );
    let e = county
        .refused("session.create", json!({"invite": [HUANAN]}))
        .await;
    assert_eq!(e["code"], "out_of_scope", "{e}");
    let e = county
        .refused("session.create", json!({"invite": ["nowhere"]}))
        .await;
    assert_eq!(e["code"], "invalid_data", "{e}");
    let e = county
        .refused("session.create", json!({"colour": "red"}))
        .await;
    assert_eq!(e["code"], "invalid_data", "{e}");
    let e = worker.refused("session.create", json!({})).await;
    assert_eq!(e["code"], "out_of_scope", "a worker opens none: {e}");

    let r = county.call("session.create", json!({})).await;
    assert_eq!(r["type"], "reply", "{r}");
    let e = other.refused("session.create", json!({})).await;
    assert_eq!(e["code"], "too_many_sessions", "{e}");
    let e = other.refused("session.join", json!({"session": 999})).await;
    assert_eq!(e["code"], "not_found", "{e}");
    // The connection and the hub carry on.
    other.ping_ok().await;
    county.ping_ok().await;
}

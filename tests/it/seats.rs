//! Seats: a center's video wall, desks and station PC connected at one node at once.

use gridhub::auth::{Role, Seat};
use serde_json::{Value, json};

use crate::support::*;

impl TestHub {
    pub fn seat_token(&self, ep: &str, role: Role, seat: &str) -> String {
        self.auth
            .mint_seat(
                &self.org,
                ep,
                role,
                Seat::parse(seat).unwrap(),
                3600,
                now_s(),
            )
            .unwrap()
    }

    pub async fn seat(&self, ep: &str, role: Role, seat: &str) -> TestTerminal {
        self.connect_with(&self.seat_token(ep, role, seat)).await
    }
}

async fn event(t: &mut TestTerminal, kind: &str) -> Value {
    let k = kind.to_owned();
    t.next_where(move |m| m["type"] == k.as_str()).await["data"].clone()
}

#[tokio::test]
async fn seats_at_one_center_coexist_and_count_once() {
    let hub = spawn_app(|_| {}).await;
    let mut city = hub.watching(CITY).await;
    let mut wall = hub.seat(DONGFENG, Role::Observer, "wall").await;
    let mut desk = hub.seat(DONGFENG, Role::Operator, "desk-1").await;
    let mut station = hub.seat(DONGFENG, Role::Station, "main").await;
    for t in [&mut wall, &mut desk, &mut station] {
        t.ping_ok().await;
    }
    assert_eq!(hub.hub().transport.registry.terminals(), 2);
    let snap = city.call("presence.subscribe", json!({"node": CITY})).await;
    let me = entry(&snap, DONGFENG).expect("listed");
    let mut seats: Vec<&str> = me["seats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    seats.sort_unstable();
    assert_eq!(seats, ["desk-1", "main", "wall"], "{me}");
    let city_agg = aggregate(&snap, CITY).unwrap();
    assert_eq!(city_agg["online"], 1, "one terminal, three seats: {snap}");

    // The newer connection of a seat replaces only that seat.
    let mut desk_again = hub.seat(DONGFENG, Role::Operator, "desk-1").await;
    let (code, _) = desk.closed().await;
    assert_eq!(code, 4001);
    for t in [&mut wall, &mut station, &mut desk_again] {
        t.ping_ok().await;
    }
    // The wall keeps the center on line when the others go.
    drop(desk_again);
    drop(station);
    wall.ping_ok().await;
    loop {
        let d = city.delta().await;
        if let Some(e) = entry(&d, DONGFENG)
            && e["seats"] == json!(["wall"])
        {
            assert_eq!(e["status"], "online", "{e}");
            break;
        }
    }
}

#[tokio::test]
async fn a_call_rings_every_desk_and_the_first_to_answer_takes_it() {
    let hub = spawn_app(|_| {}).await;
    let w = workers_under(&hub.org, DONGFENG, 1).remove(0);
    let mut wall = hub.seat(DONGFENG, Role::Observer, "wall").await;
    let mut desk = hub.seat(DONGFENG, Role::Operator, "desk-1").await;
    let mut station = hub.seat(DONGFENG, Role::Station, "main").await;
    let mut worker = hub.connect(&w).await;
    let r = worker
        .call("call.invite", json!({"to": DONGFENG, "media": "audio"}))
        .await;
    let call = r["data"]["call"].as_u64().expect("placed");
    for t in [&mut desk, &mut station] {
        let e = event(t, "call.incoming").await;
        assert_eq!(e["call"], call);
    }
    // The wall watches: it is not rung, and may not answer.
    let e = wall.refused("call.accept", json!({"call": call})).await;
    assert_eq!(e["code"], "out_of_scope", "{e}");
    let r = desk.call("call.accept", json!({"call": call})).await;
    assert_eq!(r["type"], "reply", "{r}");
    assert_eq!(event(&mut worker, "call.accepted").await["call"], call);
    let e = event(&mut station, "call.ended").await;
    assert_eq!(e["outcome"], "answered_elsewhere", "{e}");
    let e = station.refused("call.accept", json!({"call": call})).await;
    assert_eq!(e["code"], "not_a_party", "{e}");
    // One desk in a call leaves the others free: a second call rings the station PC only.
    let w2 = workers_under(&hub.org, DONGFENG, 2).remove(1);
    let mut worker2 = hub.connect(&w2).await;
    let r = worker2
        .call("call.invite", json!({"to": DONGFENG, "media": "audio"}))
        .await;
    let second = r["data"]["call"]
        .as_u64()
        .expect("placed while a desk talks");
    assert_eq!(event(&mut station, "call.incoming").await["call"], second);
    let r = station.call("call.accept", json!({"call": second})).await;
    assert_eq!(r["type"], "reply", "{r}");
    worker2.call("call.hangup", json!({"call": second})).await;
    worker.call("call.hangup", json!({"call": call})).await;
    assert_eq!(event(&mut desk, "call.ended").await["outcome"], "completed");
    assert!(
        desk.pending.iter().all(|m| m["data"]["call"] != second),
        "the desk in a call was not rung: {:?}",
        desk.pending
    );
    // Nothing about calls ever reached the wall (what came before its pong is queued).
    wall.ping_ok().await;
    assert!(
        wall.pending
            .iter()
            .all(|m| !m["type"].as_str().unwrap_or("").starts_with("call.")),
        "the wall heard of a call: {:?}",
        wall.pending
    );
}

#[tokio::test]
async fn a_station_calls_and_dispatches_in_its_subtree_and_a_wall_acts_on_nothing() {
    let hub = spawn_app(|_| {}).await;
    let w = workers_under(&hub.org, DONGFENG, 1).remove(0);
    let chain = chain_to(&hub.org, &w);
    let village = &chain[3];
    let mut station = hub.seat(village, Role::Station, "main").await;
    let mut worker = hub.connect(&w).await;
    let r = station
        .call("call.invite", json!({"to": w, "media": "audio"}))
        .await;
    assert_eq!(
        r["type"], "reply",
        "a village station calls its own worker: {r}"
    );
    assert!(event(&mut worker, "call.incoming").await["call"].is_u64());

    // An order for the center reaches every seat that resumed its outbox.
    let mut city = hub.connect(CITY).await;
    let mut desk = hub.seat(DONGFENG, Role::Operator, "desk-1").await;
    let mut county = hub.seat(DONGFENG, Role::Station, "main").await;
    let mut wall = hub.seat(DONGFENG, Role::Observer, "wall").await;
    for t in [&mut desk, &mut county, &mut wall] {
        t.resume(0).await;
    }
    let id = city.order("order.create", new_order(&w, "井盖丢失")).await["id"]
        .as_u64()
        .unwrap();
    city.order("order.dispatch", json!({"order": id, "to": DONGFENG}))
        .await;
    let mut seqs = Vec::new();
    for t in [&mut desk, &mut county, &mut wall] {
        let (seq, kind, o) = t.outbox().await;
        assert_eq!(
            (kind.as_str(), o["id"].as_u64()),
            ("order.assigned", Some(id))
        );
        seqs.push(seq);
    }
    assert!(
        seqs.windows(2).all(|s| s[0] == s[1]),
        "one sequence per node: {seqs:?}"
    );

    // The wall watches orders; it acts on none.
    let e = wall
        .refused("order.dispatch", json!({"order": id, "to": village}))
        .await;
    assert_eq!(e["code"], "out_of_scope", "{e}");
    assert!(e["message"].as_str().unwrap().contains("observer"), "{e}");
    let r = wall.call("order.get", json!({"order": id})).await;
    assert_eq!(r["type"], "reply", "{r}");
    let e = wall
        .refused("call.invite", json!({"to": w, "media": "audio"}))
        .await;
    assert_eq!(e["code"], "out_of_scope", "{e}");
    // Nor does it speak for its center, take TURN credentials, or read reporters' phones.
    let e = wall
        .refused("presence.set", json!({"status": "busy"}))
        .await;
    assert_eq!(e["code"], "out_of_scope", "{e}");
    let e = wall.refused("call.ice_servers", json!({})).await;
    assert_eq!(e["code"], "out_of_scope", "{e}");
    let o = wall.call("order.get", json!({"order": id})).await;
    let phone = o["data"]["order"]["reporter"]["phone"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(phone.contains('*'), "masked on the wall: {phone}");
    let o = desk.call("order.get", json!({"order": id})).await;
    assert!(
        !o["data"]["order"]["reporter"]["phone"]
            .as_str()
            .unwrap()
            .contains('*')
    );
    // The station PC dispatches down its own subtree.
    county
        .order("order.dispatch", json!({"order": id, "to": chain[2]}))
        .await;
}

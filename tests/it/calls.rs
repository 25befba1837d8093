//! Point-to-point calls over real sockets: two real WebRTC peers (webrtc-rs) signal through the
//! hub, complete ICE and DTLS on loopback and talk over a data channel; the lifecycle around it
//! (missed, rejected, dropped, resumed, interrupted); every refusal.

use std::sync::Arc;

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio_tungstenite::tungstenite::Message;
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCIceCandidateInit,
    RTCIceGatheringState, RTCPeerConnectionIceEvent, RTCSessionDescription,
};

use crate::auth::{error_of, http_get};
use crate::support::*;

enum PeerEvent {
    Candidate(Option<RTCIceCandidateInit>),
    Channel(Arc<dyn DataChannel>),
    Open,
    Text(String),
}

struct Handler(UnboundedSender<PeerEvent>);

/// Forwards a data channel's events to the test.
fn watch_channel(dc: Arc<dyn DataChannel>, tx: UnboundedSender<PeerEvent>) {
    tokio::spawn(async move {
        while let Some(ev) = dc.poll().await {
            let out = match ev {
                DataChannelEvent::OnOpen => PeerEvent::Open,
                DataChannelEvent::OnMessage(m) => {
                    PeerEvent::Text(String::from_utf8_lossy(&m.data).into_owned())
                }
                DataChannelEvent::OnClose => break,
                _ => continue,
            };
            if tx.send(out).is_err() {
                break;
            }
        }
    });
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, ev: RTCPeerConnectionIceEvent) {
        if let Ok(init) = ev.candidate.to_json() {
            let _ = self.0.send(PeerEvent::Candidate(Some(init)));
        }
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.0.send(PeerEvent::Candidate(None));
        }
    }

    async fn on_data_channel(&self, dc: Arc<dyn DataChannel>) {
        let _ = self.0.send(PeerEvent::Channel(Arc::clone(&dc)));
        watch_channel(dc, self.0.clone());
    }
}

/// One party: its terminal on the hub and its WebRTC peer.
struct Side {
    term: TestTerminal,
    pc: Arc<dyn PeerConnection>,
    events: UnboundedReceiver<PeerEvent>,
    tx: UnboundedSender<PeerEvent>,
    dc: Option<Arc<dyn DataChannel>>,
    open: bool,
    heard: Vec<String>,
    call: u64,
    /// Candidates this side relayed, and received, through the hub.
    sent_candidates: usize,
    got_candidates: usize,
}

impl Side {
    async fn new(term: TestTerminal) -> Side {
        let (tx, events) = unbounded_channel();
        let pc = PeerConnectionBuilder::new()
            .with_handler(Arc::new(Handler(tx.clone())))
            .with_runtime(webrtc::runtime::default_runtime().expect("tokio runtime"))
            .with_udp_addrs(vec!["127.0.0.1:0".to_string()])
            .build()
            .await
            .expect("peer connection");
        Side {
            term,
            pc: Arc::new(pc),
            events,
            tx,
            dc: None,
            open: false,
            heard: Vec::new(),
            call: 0,
            sent_candidates: 0,
            got_candidates: 0,
        }
    }

    async fn offer(&self) -> String {
        let offer = self.pc.create_offer(None).await.unwrap();
        self.pc.set_local_description(offer.clone()).await.unwrap();
        offer.sdp
    }

    async fn answer(&self, offer: &str) -> String {
        self.pc
            .set_remote_description(RTCSessionDescription::offer(offer.to_owned()).unwrap())
            .await
            .unwrap();
        let answer = self.pc.create_answer(None).await.unwrap();
        self.pc.set_local_description(answer.clone()).await.unwrap();
        answer.sdp
    }

    async fn signal(&mut self, data: Value) {
        let mut data = data;
        data["call"] = json!(self.call);
        // Signaling goes as notifications (no id): the hub answers only if it refuses.
        self.term
            .send_text(&json!({"v": 1, "type": "call.signal", "data": data}).to_string())
            .await;
    }

    /// Reacts to one thing from the peer connection.
    async fn on_peer(&mut self, ev: PeerEvent) {
        match ev {
            PeerEvent::Candidate(Some(c)) => {
                self.sent_candidates += 1;
                self.signal(json!({ "candidate": c })).await;
            }
            PeerEvent::Candidate(None) => self.signal(json!({"end_of_candidates": true})).await,
            PeerEvent::Channel(dc) => self.dc = Some(dc),
            PeerEvent::Open => self.open = true,
            PeerEvent::Text(t) => self.heard.push(t),
        }
    }

    /// Reacts to one message from the hub: signaling is applied, anything else is kept.
    async fn on_hub(&mut self, m: Value) {
        if m["type"] != "call.signal" {
            assert_ne!(m["type"], "error", "signaling refused: {m}");
            self.term.pending.push_back(m);
            return;
        }
        assert_eq!(m["data"]["call"], self.call, "relayed to the right call");
        let d = &m["data"];
        if let Some(c) = d.get("candidate") {
            self.got_candidates += 1;
            let init: RTCIceCandidateInit = serde_json::from_value(c.clone()).unwrap();
            self.pc.add_ice_candidate(init).await.unwrap();
        } else if let Some(desc) = d.get("description") {
            let sdp = desc["sdp"].as_str().unwrap().to_owned();
            if desc["type"] == "offer" {
                let answer = self.answer(&sdp).await;
                self.signal(json!({"description": {"type": "answer", "sdp": answer}}))
                    .await;
            } else {
                self.pc
                    .set_remote_description(RTCSessionDescription::answer(sdp).unwrap())
                    .await
                    .unwrap();
            }
        }
    }
}

/// Relays signaling both ways until `done` holds (or fails after a generous guard).
async fn relay_until(a: &mut Side, b: &mut Side, done: impl Fn(&Side, &Side) -> bool) {
    let work = async {
        while !done(a, b) {
            tokio::select! {
                Some(ev) = a.events.recv() => a.on_peer(ev).await,
                Some(ev) = b.events.recv() => b.on_peer(ev).await,
                Some(m) = a.term.ws.next() => {
                    if let Ok(Message::Text(t)) = m {
                        a.on_hub(serde_json::from_str(&t).unwrap()).await;
                    }
                }
                Some(m) = b.term.ws.next() => {
                    if let Ok(Message::Text(t)) = m {
                        b.on_hub(serde_json::from_str(&t).unwrap()).await;
                    }
                }
            }
        }
    };
    tokio::time::timeout(PATIENCE * 3, work)
        .await
        .expect("the peers got there");
}

/// The next `call.*` event of a kind, skipping everything else.
async fn event(t: &mut TestTerminal, kind: &str) -> Value {
    let k = kind.to_owned();
    t.next_where(move |m| m["type"] == k.as_str()).await["data"].clone()
}

async fn status_in(console: &mut TestTerminal, id: &str, want: &str) {
    loop {
        let d = console.delta().await;
        if entry(&d, id).is_some_and(|e| e["status"] == want) {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_webrtc_peers_call_through_the_hub_move_networks_and_hang_up() {
    let hub = spawn_app(|_| {}).await;
    let worker = workers_under(&hub.org, DONGFENG, 1).remove(0);
    let mut console = hub.watching(DONGFENG).await;
    let mut city = Side::new(hub.connect(CITY).await).await;
    let mut field = Side::new(hub.connect(&worker).await).await;

    // The city center calls the worker with an offer; candidates trickle after it.
    let dc = city.pc.create_data_channel("talk", None).await.unwrap();
    watch_channel(Arc::clone(&dc), city.tx.clone());
    city.dc = Some(dc);
    let offer = city.offer().await;
    let r = city
        .term
        .call(
            "call.invite",
            json!({"to": worker, "media": "audio", "offer": offer}),
        )
        .await;
    assert_eq!(r["type"], "reply", "{r}");
    assert_eq!(r["data"]["state"], "inviting");
    assert_eq!(r["data"]["to"]["id"], worker.as_str());
    let id = r["data"]["call"].as_u64().unwrap();
    city.call = id;
    field.call = id;

    let inc = event(&mut field.term, "call.incoming").await;
    assert_eq!(
        (
            inc["call"].as_u64(),
            inc["from"]["id"].as_str(),
            inc["media"].as_str()
        ),
        (Some(id), Some(CITY), Some("audio"))
    );
    let r = field.term.call("call.ring", json!({"call": id})).await;
    assert_eq!(r["data"]["state"], "ringing", "{r}");
    assert_eq!(event(&mut city.term, "call.ringing").await["call"], id);

    let answer = field.answer(inc["offer"].as_str().unwrap()).await;
    let r = field
        .term
        .call("call.accept", json!({"call": id, "answer": answer}))
        .await;
    assert_eq!(r["data"]["state"], "active", "{r}");
    let acc = event(&mut city.term, "call.accepted").await;
    city.pc
        .set_remote_description(
            RTCSessionDescription::answer(acc["answer"].as_str().unwrap().to_owned()).unwrap(),
        )
        .await
        .unwrap();

    // ICE and DTLS complete over loopback; the data channel opens on both sides.
    relay_until(&mut city, &mut field, |a, b| {
        a.open && b.open && b.dc.is_some()
    })
    .await;
    assert!(city.sent_candidates > 0 && field.got_candidates > 0);
    city.dc
        .as_ref()
        .unwrap()
        .send_text("指挥中心呼叫网格员")
        .await
        .unwrap();
    field.dc.as_ref().unwrap().send_text("收到").await.unwrap();
    relay_until(&mut city, &mut field, |a, b| {
        !a.heard.is_empty() && !b.heard.is_empty()
    })
    .await;
    assert_eq!(
        (city.heard[0].as_str(), field.heard[0].as_str()),
        ("收到", "指挥中心呼叫网格员")
    );
    status_in(&mut console, &worker, "in_call").await;

    // The worker's phone moves from Wi-Fi to 4G: a new connection replaces the old one before
    // the hub sees the old one die. The call resumes and an ICE restart renegotiates it.
    let old = std::mem::replace(&mut field.term, hub.connect(&worker).await);
    drop(old);
    let resumed = event(&mut field.term, "call.resumed").await;
    assert_eq!(
        (
            resumed["call"].as_u64(),
            resumed["peer"]["id"].as_str(),
            resumed["party"].as_str()
        ),
        (Some(id), Some(CITY), Some("callee"))
    );
    assert_eq!(event(&mut city.term, "call.peer_back").await["call"], id);
    field.pc.restart_ice().await.unwrap();
    let offer = field.offer().await;
    field
        .signal(json!({"description": {"type": "offer", "sdp": offer}}))
        .await;
    city.dc.as_ref().unwrap().send_text("还在吗").await.unwrap();
    relay_until(&mut city, &mut field, |_, b| b.heard.len() >= 2).await;
    assert_eq!(field.heard[1], "还在吗");
    let r = field.term.call("ping", json!({})).await;
    assert_eq!(r["type"], "reply", "the renegotiation drew no refusal: {r}");

    // The city hangs up: both are told, presence returns to what it was.
    let r = city.term.call("call.hangup", json!({"call": id})).await;
    assert_eq!(r["data"]["state"], "ended", "{r}");
    for t in [&mut city.term, &mut field.term] {
        let e = event(t, "call.ended").await;
        assert_eq!(
            (e["call"].as_u64(), e["outcome"].as_str()),
            (Some(id), Some("completed"))
        );
    }
    status_in(&mut console, &worker, "online").await;

    // The record.
    let token = hub.token(CITY);
    // REST waits for the records of everything decided so far: the end both parties were told
    // of is already there.
    let (status, body) = http_get(&hub, &format!("/api/v1/calls/{id}"), Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    let rec = &body["call"];
    assert_eq!(rec["outcome"], "completed", "{rec}");
    assert_eq!(
        (rec["caller"].as_str(), rec["callee"].as_str()),
        (Some(CITY), Some(worker.as_str()))
    );
    assert_eq!(rec["media"], "audio");
    let (created, ringing, answered, ended) = (
        rec["created_at"].as_u64().unwrap(),
        rec["ringing_at"].as_u64().unwrap(),
        rec["answered_at"].as_u64().unwrap(),
        rec["ended_at"].as_u64().unwrap(),
    );
    assert!(
        created <= ringing && ringing <= answered && answered <= ended,
        "{rec}"
    );
    assert_eq!(rec["duration_ms"].as_u64(), Some(ended - answered));
    let (_, stats) = http_get(
        &hub,
        &format!("/api/v1/calls/stats?node={DONGFENG}"),
        Some(&token),
    )
    .await;
    assert_eq!(
        (stats["received"].as_u64(), stats["answered"].as_u64()),
        (Some(1), Some(1)),
        "{stats}"
    );
    assert_eq!(stats["answered_rate"].as_f64(), Some(1.0));
    let _ = city.pc.close().await;
    let _ = field.pc.close().await;
}

/// An offer-shaped SDP for tests that only need the hub to relay it.
const SDP: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n";

async fn invite(t: &mut TestTerminal, to: &str) -> u64 {
    let r = t
        .call(
            "call.invite",
            json!({"to": to, "media": "video", "offer": SDP}),
        )
        .await;
    assert_eq!(r["type"], "reply", "{r}");
    r["data"]["call"].as_u64().unwrap()
}

#[tokio::test]
async fn unanswered_calls_are_missed_and_dropped_parties_end_the_call() {
    // Short timers: here the timeouts are what is tested, so they must fire.
    let hub = spawn_app(|c| {
        c.calls.ring_timeout_ms = 300;
        c.calls.reconnect_grace_ms = 300;
    })
    .await;
    let w = workers_under(&hub.org, DONGFENG, 1).remove(0);
    let mut county = hub.connect(DONGFENG).await;
    let mut worker = hub.connect(&w).await;
    worker.resume(0).await;

    // Not answered within the ring timeout: both told, and a durable missed call for the worker.
    let id = invite(&mut county, &w).await;
    let e = event(&mut county, "call.ended").await;
    assert_eq!(
        (e["call"].as_u64(), e["outcome"].as_str()),
        (Some(id), Some("no_answer"))
    );
    assert_eq!(
        event(&mut worker, "call.ended").await["outcome"],
        "no_answer"
    );
    let m = worker.next_where(|m| m["type"] == "outbox").await;
    assert_eq!(m["data"]["kind"], "call.missed");
    assert_eq!(
        (m["data"]["call"].as_u64(), m["data"]["from"]["id"].as_str()),
        (Some(id), Some(DONGFENG))
    );
    worker.ack(m["seq"].as_u64().unwrap()).await;

    // Answered, then the worker's connection drops and does not come back in time.
    let id = invite(&mut county, &w).await;
    event(&mut worker, "call.incoming").await;
    worker.call("call.accept", json!({"call": id})).await;
    drop(worker);
    assert_eq!(event(&mut county, "call.peer_away").await["call"], id);
    let e = event(&mut county, "call.ended").await;
    assert_eq!(
        (e["call"].as_u64(), e["outcome"].as_str()),
        (Some(id), Some("dropped"))
    );

    // Unanswered calls end when the ringing device leaves, or comes back on a new connection.
    let worker = hub.connect(&w).await;
    let id = invite(&mut county, &w).await;
    drop(worker);
    let e = event(&mut county, "call.ended").await;
    assert_eq!(
        (e["call"].as_u64(), e["outcome"].as_str()),
        (Some(id), Some("dropped")),
        "the callee left while ringing"
    );
    let _first = hub.connect(&w).await;
    let id = invite(&mut county, &w).await;
    let mut worker = hub.connect(&w).await;
    let e = event(&mut county, "call.ended").await;
    assert_eq!(
        (
            e["call"].as_u64(),
            e["outcome"].as_str(),
            e["reason"].as_str()
        ),
        (Some(id), Some("dropped"), Some("the callee reconnected"))
    );
    let (status, body) = http_get(
        &hub,
        &format!("/api/v1/calls?party={w}&outcome=no_answer"),
        Some(&hub.token(DONGFENG)),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["calls"].as_array().unwrap().len(), 1);
    worker.ping_ok().await;
}

#[tokio::test]
async fn rejected_resumed_and_interrupted_calls() {
    let mut hub = spawn_app(|_| {}).await;
    let w = workers_under(&hub.org, DONGFENG, 1).remove(0);
    let mut county = hub.connect(DONGFENG).await;
    let mut worker = hub.connect(&w).await;

    // Rejected with a reason.
    let id = invite(&mut county, &w).await;
    event(&mut worker, "call.incoming").await;
    let r = worker
        .call("call.reject", json!({"call": id, "reason": "正在入户走访"}))
        .await;
    assert_eq!(r["data"]["state"], "ended", "{r}");
    let e = event(&mut county, "call.ended").await;
    assert_eq!(
        (e["outcome"].as_str(), e["reason"].as_str()),
        (Some("rejected"), Some("正在入户走访"))
    );

    // Answered, dropped, and back within the grace period: the call goes on.
    let id = invite(&mut county, &w).await;
    event(&mut worker, "call.incoming").await;
    worker.call("call.accept", json!({"call": id})).await;
    drop(worker);
    event(&mut county, "call.peer_away").await;
    let mut worker = hub.connect(&w).await;
    assert_eq!(event(&mut worker, "call.resumed").await["call"], id);
    assert_eq!(event(&mut county, "call.peer_back").await["call"], id);
    let (status, body) = http_get(
        &hub,
        "/api/v1/calls?outcome=live",
        Some(&hub.token(DONGFENG)),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["calls"][0]["id"].as_u64(), Some(id), "{body}");

    // The hub stops during the call: the record says so.
    let target = hub.hub().config.store_target();
    let data = hub.data_dir.take();
    let shutting = tokio::spawn(async move {
        hub.shutdown().await;
    });
    for t in [&mut county, &mut worker] {
        let e = event(t, "call.ended").await;
        assert_eq!(
            (e["call"].as_u64(), e["outcome"].as_str()),
            (Some(id), Some("interrupted")),
            "both told"
        );
    }
    shutting.await.unwrap();
    let store = gridhub::store::Store::open_target(target, Default::default()).unwrap();
    let outcomes: Vec<Option<String>> = store
        .read_sync(|c| {
            c.prepare("SELECT outcome FROM calls ORDER BY id")?
                .query_map([], |r| r.get(0))?
                .collect()
        })
        .unwrap();
    assert_eq!(
        outcomes,
        [Some("rejected".to_owned()), Some("interrupted".to_owned())]
    );
    store.close();
    if let Some(d) = data {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[tokio::test]
async fn bad_call_requests_get_typed_errors_and_harm_nothing() {
    let hub = spawn_app(|c| c.calls.max_sdp_bytes = 2048).await;
    let ws = workers_under(&hub.org, DONGFENG, 2);
    let far = workers_under(&hub.org, HUANAN, 1).remove(0);
    let mut county = hub.connect(DONGFENG).await;
    let mut worker = hub.connect(&ws[0]).await;
    let mut other = hub.connect(&ws[1]).await;

    // Placing calls.
    let code = |r: &Value| r["data"]["code"].as_str().unwrap_or("").to_owned();
    let r = county
        .call("call.invite", json!({"to": DONGFENG, "media": "audio"}))
        .await;
    assert_eq!(code(&r), "invalid_data", "calling oneself: {r}");
    let r = county
        .call("call.invite", json!({"to": far, "media": "audio"}))
        .await;
    assert_eq!(code(&r), "out_of_scope", "{r}");
    assert!(r["data"]["message"].as_str().unwrap().contains(&far));
    let r = worker
        .call("call.invite", json!({"to": ws[1], "media": "audio"}))
        .await;
    assert_eq!(
        code(&r),
        "out_of_scope",
        "workers call their chain of command: {r}"
    );
    let r = county
        .call("call.invite", json!({"to": "999999", "media": "audio"}))
        .await;
    assert_eq!(code(&r), "not_found", "{r}");
    let r = county
        .call("call.invite", json!({"to": ws[0], "media": "hologram"}))
        .await;
    assert_eq!(code(&r), "invalid_data", "{r}");
    let offline = workers_under(&hub.org, DONGFENG, 3).remove(2);
    let r = county
        .call("call.invite", json!({"to": offline, "media": "audio"}))
        .await;
    assert_eq!(code(&r), "offline", "{r}");
    let big = "a".repeat(2049);
    let r = county
        .call(
            "call.invite",
            json!({"to": ws[0], "media": "audio", "offer": big}),
        )
        .await;
    assert_eq!(code(&r), "invalid_data", "{r}");
    assert!(
        r["data"]["message"]
            .as_str()
            .unwrap()
            .contains("2049 bytes"),
        "{r}"
    );

    // A live call, answered without an SDP exchange yet.
    let id = county
        .call("call.invite", json!({"to": ws[0], "media": "video"}))
        .await["data"]["call"]
        .as_u64()
        .unwrap();
    event(&mut worker, "call.incoming").await;
    let r = other
        .call("call.invite", json!({"to": DONGFENG, "media": "audio"}))
        .await;
    assert_eq!(
        code(&r),
        "busy",
        "the county center takes one call at a time: {r}"
    );
    let r = worker.call("call.answer", json!({"call": id})).await;
    assert_eq!(code(&r), "unknown_type", "{r}");
    let r = worker
        .call("call.accept", json!({"call": id, "answer": SDP}))
        .await;
    assert_eq!(
        code(&r),
        "illegal_transition",
        "an answer without an offer: {r}"
    );
    worker.call("call.accept", json!({"call": id})).await;
    event(&mut county, "call.accepted").await;

    // Signaling that must not reach the other party.
    let sig = |call: u64, data: Value| {
        let mut d = data;
        d["call"] = json!(call);
        d
    };
    let cand = json!({"candidate": {"candidate": "candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host", "sdpMid": "0"}});
    let cases = [
        (2, sig(id, cand.clone()), "not_a_party"),
        (1, sig(id + 100, cand.clone()), "not_found"),
        (
            1,
            sig(id, json!({"description": {"type": "answer", "sdp": SDP}})),
            "illegal_transition",
        ),
        (
            1,
            sig(
                id,
                json!({"description": {"type": "offer", "sdp": "b".repeat(2049)}}),
            ),
            "invalid_data",
        ),
        (
            1,
            sig(id, json!({"candidate": {"sdpMid": "0"}})),
            "invalid_data",
        ),
        (
            1,
            sig(
                id,
                json!({"candidate": cand["candidate"], "end_of_candidates": true}),
            ),
            "invalid_data",
        ),
        (1, sig(id, json!({})), "invalid_data"),
        (
            0,
            json!({"call": "seven", "end_of_candidates": true}),
            "invalid_data",
        ),
    ];
    for (who, data, want) in cases {
        let t = match who {
            0 => &mut county,
            1 => &mut worker,
            _ => &mut other,
        };
        let r = t.call("call.signal", data).await;
        assert_eq!(code(&r), want, "{r}");
        assert_eq!(r["data"]["request_type"], "call.signal");
    }
    // The call is unharmed: the next thing the county hears is the valid candidate that follows.
    let r = worker.call("call.signal", sig(id, cand.clone())).await;
    assert_eq!(r["type"], "reply", "{r}");
    let next = county
        .next_where(|m| m["type"].as_str().is_some_and(|t| t.starts_with("call.")))
        .await;
    assert_eq!(next["type"], "call.signal");
    assert_eq!(next["data"]["candidate"], cand["candidate"]);
    assert!(county.pending.iter().all(|m| m["type"] != "call.signal"));

    // After hang-up: late signaling is told the call ended; nothing is relayed.
    county.call("call.hangup", json!({"call": id})).await;
    event(&mut worker, "call.ended").await;
    let r = worker.call("call.signal", sig(id, cand.clone())).await;
    assert_eq!(code(&r), "call_ended", "{r}");
    let r = worker.call("call.hangup", json!({"call": id})).await;
    assert_eq!(code(&r), "call_ended", "{r}");
    county.ping_ok().await;
    assert!(
        county.pending.iter().all(|m| m["type"] != "call.signal"),
        "{:?}",
        county.pending
    );
    // Everyone carries on.
    worker.ping_ok().await;
    other.ping_ok().await;
    let r = http_get(&hub, "/api/v1/calls/abc", Some(&hub.token(DONGFENG))).await;
    assert_eq!(error_of(&r), (400, Some("invalid_data")));
    let r = http_get(
        &hub,
        "/api/v1/calls?outcome=exploded",
        Some(&hub.token(DONGFENG)),
    )
    .await;
    assert_eq!(error_of(&r), (400, Some("invalid_query")));
    // Refused invites are on record and can be listed by their outcome.
    for outcome in ["busy", "offline", "out_of_scope", "glare"] {
        let (status, body) = http_get(
            &hub,
            &format!("/api/v1/calls?node={DONGFENG}&outcome={outcome}"),
            Some(&hub.token(DONGFENG)),
        )
        .await;
        assert_eq!(status, 200, "{outcome}: {body}");
        assert!(
            body["calls"]
                .as_array()
                .unwrap()
                .iter()
                .all(|c| c["outcome"] == outcome),
            "{body}"
        );
    }
    // Outside one's scope a call is not found, whether or not it exists.
    let (status, _) = http_get(
        &hub,
        &format!("/api/v1/calls/{id}"),
        Some(&hub.token(HUANAN)),
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn terminals_get_ice_servers_with_minted_turn_credentials() {
    let hub = spawn_app(|c| {
        c.calls.stun_urls = vec!["stun:stun.grid.example:3478".into()];
        c.calls.turn_urls = vec!["turn:turn.grid.example:3478?transport=udp".into()];
        c.calls.turn_secret = "coturn-static-auth-secret".into();
        c.calls.turn_ttl_secs = 600;
    })
    .await;
    let ws = hub.open(Some(&hub.token(DONGFENG))).await.unwrap();
    let mut t = TestTerminal::new(ws);
    let hello = t.recv().await;
    let calls = &hello["data"]["calls"];
    assert_eq!(
        calls["ice_servers"][0]["urls"][0],
        "stun:stun.grid.example:3478"
    );
    let turn = &calls["ice_servers"][1];
    let user = turn["username"].as_str().unwrap();
    let (expiry, who) = user.split_once(':').unwrap();
    assert_eq!(who, DONGFENG);
    let expiry: u64 = expiry.parse().unwrap();
    assert!(expiry > now_s() && expiry <= now_s() + 600, "{user}");
    assert_eq!(calls["expires_at"].as_u64(), Some(expiry));
    assert!(!turn["credential"].as_str().unwrap().is_empty());
    let r = t.call("call.ice_servers", json!({})).await;
    assert_eq!(r["type"], "reply", "{r}");
    assert_eq!(r["data"]["ice_servers"][1]["urls"], turn["urls"]);
}

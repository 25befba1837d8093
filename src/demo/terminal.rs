//! A simulated terminal: a real WebSocket client of the hub, speaking protocol v1 like a phone
//! would. Workers keep a status, walk about, drop off line now and then, and work the orders
//! their outbox brings; stations only keep their presence.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

use super::camera::{Camera, Live};
use super::script::{self, Pace, Rng};

pub struct Sim {
    pub addr: SocketAddr,
    pub pace: Pace,
    pub stop: CancellationToken,
    /// Answers calls with a test card; without it a call is rung and declined.
    pub camera: Option<Arc<Camera>>,
}

/// The call a terminal is in (one at a time), answered with the demo's camera.
struct InCall {
    id: Value,
    /// Once the answer is made.
    live: Option<Live>,
    /// Candidates the caller sent before the answer was made.
    early: Vec<webrtc::peer_connection::RTCIceCandidateInit>,
}

type Answered = (Value, Result<(Live, String), String>);

pub struct Who {
    pub id: String,
    pub token: String,
    pub worker: bool,
    pub lat: f64,
    pub lon: f64,
}

const HEARTBEAT: Duration = Duration::from_secs(20);

/// Runs one terminal until the demo stops, or until a person signs in as it (4001: the newer
/// connection wins, and a replaced terminal must not come back).
pub async fn run(sim: Arc<Sim>, who: Who, seed: u64, start_after: Duration) {
    let mut rng = Rng::new(seed);
    let mut last_seq: u64 = 0;
    // What the terminal promised to do (acknowledge, report): kept across reconnections.
    let mut acts: Vec<(Instant, Value)> = Vec::new();
    tokio::select! {
        _ = sim.stop.cancelled() => return,
        _ = tokio::time::sleep(start_after) => {}
    }
    loop {
        match session(&sim, &who, &mut rng, &mut last_seq, &mut acts).await {
            Ended::Stop | Ended::Replaced => return,
            Ended::Leave(back_in) | Ended::Lost(back_in) => {
                tokio::select! {
                    _ = sim.stop.cancelled() => return,
                    _ = tokio::time::sleep(back_in) => {}
                }
            }
        }
    }
}

enum Ended {
    Stop,
    Replaced,
    /// Went off line on purpose; back after this long.
    Leave(Duration),
    /// The connection failed; try again after this long.
    Lost(Duration),
}

/// What the terminal will do next, and when.
enum Due {
    Ping,
    Status,
    Move,
    Leave,
    Act,
}

async fn session(
    sim: &Sim,
    who: &Who,
    rng: &mut Rng,
    last_seq: &mut u64,
    acts: &mut Vec<(Instant, Value)>,
) -> Ended {
    let lost =
        |rng: &mut Rng| Ended::Lost(rng.between(Duration::from_secs(2), Duration::from_secs(15)));
    let Ok(stream) = TcpStream::connect(sim.addr).await else {
        return lost(rng);
    };
    let Ok(mut req) = format!("ws://{}/ws", sim.addr).into_client_request() else {
        return Ended::Stop;
    };
    let Ok(auth) = format!("Bearer {}", who.token).parse() else {
        return Ended::Stop;
    };
    req.headers_mut().insert("authorization", auth);
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let Ok((ws, _)) = tokio_tungstenite::client_async_with_config(req, stream, Some(config)).await
    else {
        return lost(rng);
    };
    let (mut tx, mut rx) = ws.split();
    let send = |v: Value| Message::text(v.to_string());
    if tx
        .send(send(
            json!({"v":1,"id":"resume","type":"outbox.resume","data":{"after": *last_seq}}),
        ))
        .await
        .is_err()
    {
        return lost(rng);
    }
    let (status, text) = (
        *rng.weighted(&script::STATUSES),
        *rng.weighted(&script::TEXTS),
    );
    let (lat, lon) = script::wander(rng, who.lat, who.lon);
    let _ = tx
        .send(send(json!({"v":1,"type":"presence.set","data":{
            "status": status, "text": text, "location": {"lat": lat, "lon": lon, "accuracy_m": 15}}})))
        .await;

    let now = Instant::now();
    let mut due: Vec<(Instant, Due)> = vec![(now + HEARTBEAT, Due::Ping)];
    let (answered_tx, mut answered_rx) = tokio::sync::mpsc::channel::<Answered>(2);
    let mut in_call: Option<InCall> = None;
    if who.worker {
        due.push((now + rng.exp(sim.pace.status_every), Due::Status));
        due.push((now + rng.exp(sim.pace.move_every), Due::Move));
        due.push((now + rng.exp(sim.pace.leave_every), Due::Leave));
    }
    loop {
        let (mut i, mut at) = due
            .iter()
            .enumerate()
            .min_by_key(|(_, (at, _))| *at)
            .map(|(i, (at, _))| (i, *at))
            .expect("a ping is always due");
        let next_act = acts
            .iter()
            .enumerate()
            .min_by_key(|(_, (at, _))| *at)
            .map(|(j, (a, _))| (j, *a));
        let mut act = false;
        if let Some((j, a)) = next_act
            && a < at
        {
            (i, at, act) = (j, a, true);
        }
        tokio::select! {
            _ = sim.stop.cancelled() => {
                let _ = tx.send(Message::Close(None)).await;
                return Ended::Stop;
            }
            msg = rx.next() => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(f))) => {
                        if f.is_some_and(|f| u16::from(f.code) == 4001) {
                            return Ended::Replaced;
                        }
                        return lost(rng);
                    }
                    Some(Ok(_)) => continue,
                    _ => return lost(rng),
                };
                let Ok(m) = serde_json::from_str::<Value>(&text) else { continue };
                match calls(sim, &m, &mut in_call, &answered_tx).await {
                    Handled::NotMine => {}
                    Handled::Quietly => continue,
                    Handled::Send(out) => {
                        if tx.send(send(out)).await.is_err() {
                            return lost(rng);
                        }
                        continue;
                    }
                }
                for (after, a) in react(who, &m, rng, &sim.pace, last_seq) {
                    acts.push((Instant::now() + after, a));
                }
            }
            Some((id, r)) = answered_rx.recv() => {
                let Some(c) = in_call.as_mut().filter(|c| c.id == id) else { continue };
                let out = match r {
                    Ok((live, sdp)) => {
                        for init in c.early.drain(..) {
                            live.candidate(init).await;
                        }
                        c.live = Some(live);
                        json!({"v":1,"type":"call.accept","data":{"call": id, "answer": sdp}})
                    }
                    Err(e) => {
                        in_call = None;
                        json!({"v":1,"type":"call.reject","data":{"call": id, "reason": format!("演示终端无法接通：{e}")}})
                    }
                };
                if tx.send(send(out)).await.is_err() {
                    return lost(rng);
                }
            }
            _ = sleep_until(at) => {
                let now = Instant::now();
                let (what, act_msg) = if act {
                    (Due::Act, Some(acts.swap_remove(i).1))
                } else {
                    (due.swap_remove(i).1, None)
                };
                let out = match what {
                    Due::Ping => {
                        due.push((now + HEARTBEAT, Due::Ping));
                        json!({"v":1,"type":"ping"})
                    }
                    Due::Status => {
                        due.push((now + rng.exp(sim.pace.status_every), Due::Status));
                        json!({"v":1,"type":"presence.set","data":{
                            "status": rng.weighted(&script::STATUSES), "text": rng.weighted(&script::TEXTS)}})
                    }
                    Due::Move => {
                        due.push((now + rng.exp(sim.pace.move_every), Due::Move));
                        let (lat, lon) = script::wander(rng, who.lat, who.lon);
                        json!({"v":1,"type":"presence.set","data":{"location":{"lat":lat,"lon":lon,"accuracy_m":15}}})
                    }
                    Due::Leave => {
                        let _ = tx.send(Message::Close(None)).await;
                        return Ended::Leave(rng.between(sim.pace.away_for.0, sim.pace.away_for.1));
                    }
                    Due::Act => act_msg.expect("an act carries its message"),
                };
                if tx.send(send(out)).await.is_err() {
                    return lost(rng);
                }
            }
        }
    }
}

enum Handled {
    /// Not a message about a call answered with the camera: `react` takes it.
    NotMine,
    Quietly,
    Send(Value),
}

/// Calls answered with the camera: an invite with an offer rings and is answered (the answer
/// made on its own task comes back through `answered`); the caller's candidates and new offers
/// reach the peer connection; the call's end drops it.
async fn calls(
    sim: &Sim,
    m: &Value,
    in_call: &mut Option<InCall>,
    answered: &tokio::sync::mpsc::Sender<Answered>,
) -> Handled {
    let Some(camera) = sim.camera.as_ref() else {
        return Handled::NotMine;
    };
    let d = &m["data"];
    let ours = in_call.as_ref().is_some_and(|c| c.id == d["call"]);
    match m["type"].as_str().unwrap_or("") {
        "call.incoming" if in_call.is_none() => {
            // Without an offer to answer (a caller that sends it later) the call is declined.
            let Some(offer) = d["offer"].as_str().map(str::to_owned) else {
                return Handled::NotMine;
            };
            let id = d["call"].clone();
            *in_call = Some(InCall {
                id: id.clone(),
                live: None,
                early: Vec::new(),
            });
            let (camera, answered, video) =
                (Arc::clone(camera), answered.clone(), d["media"] == "video");
            let call = id.clone();
            tokio::spawn(async move {
                // Picked up after a ring or two, as a person would.
                tokio::time::sleep(Duration::from_millis(1500)).await;
                let r = camera.answer(&offer, video).await;
                let _ = answered.send((call, r)).await;
            });
            Handled::Send(json!({"v":1,"type":"call.ring","data":{"call": id}}))
        }
        "call.signal" if ours => {
            let Some(c) = in_call.as_mut() else {
                return Handled::Quietly;
            };
            if let Ok(init) = serde_json::from_value(d["candidate"].clone()) {
                match &c.live {
                    Some(live) => live.candidate(init).await,
                    None => c.early.push(init),
                }
                return Handled::Quietly;
            }
            let offer = (d["description"]["type"] == "offer")
                .then(|| d["description"]["sdp"].as_str())
                .flatten();
            let (Some(offer), Some(live)) = (offer, &c.live) else {
                return Handled::Quietly;
            };
            match live.renegotiate(offer).await {
                Ok(answer) => Handled::Send(
                    json!({"v":1,"type":"call.signal","data":{"call": c.id, "description": {"type": "answer", "sdp": answer}}}),
                ),
                Err(e) => {
                    tracing::debug!("demo camera: a new offer was not taken: {e}");
                    Handled::Quietly
                }
            }
        }
        "call.ended" if ours => {
            *in_call = None;
            Handled::Quietly
        }
        _ => Handled::NotMine,
    }
}

/// What a pushed message makes the terminal do, and after how long.
fn react(
    who: &Who,
    m: &Value,
    rng: &mut Rng,
    pace: &Pace,
    last_seq: &mut u64,
) -> Vec<(Duration, Value)> {
    let mut out = Vec::new();
    match m["type"].as_str() {
        Some("outbox") => {
            let seq = m["seq"].as_u64().unwrap_or(0);
            if seq <= *last_seq {
                return out;
            }
            *last_seq = seq;
            out.push((
                Duration::ZERO,
                json!({"v":1,"type":"outbox.ack","data":{"seq": seq}}),
            ));
            let d = &m["data"];
            match d["kind"].as_str() {
                Some("order.assigned") if who.worker => {
                    let o = &d["order"];
                    let id = o["id"].clone();
                    if o["holder"] == who.id.as_str() && o["state"] == "dispatched" {
                        let ack = rng.between(pace.ack_after.0, pace.ack_after.1);
                        let report = ack + rng.between(pace.report_after.0, pace.report_after.1);
                        let result =
                            script::result_for(o["category"].as_str().unwrap_or("other"), rng);
                        out.push((
                            ack,
                            json!({"v":1,"type":"order.acknowledge","data":{"order": id}}),
                        ));
                        out.push((report, json!({"v":1,"type":"order.report","data":{"order": id, "result": result}})));
                    }
                }
                Some("notice") => {
                    let after = rng.between(Duration::from_secs(5), Duration::from_secs(90));
                    out.push((
                        after,
                        json!({"v":1,"type":"notice.read","data":{"notice": d["notice"]["id"]}}),
                    ));
                }
                _ => {}
            }
        }
        Some("call.incoming") => {
            // Not answerable here (no camera, or no offer to answer): ring briefly, then say so
            // rather than leave the caller waiting.
            let call = m["data"]["call"].clone();
            out.push((
                Duration::ZERO,
                json!({"v":1,"type":"call.ring","data":{"call": call}}),
            ));
            out.push((
                Duration::from_secs(3),
                json!({"v":1,"type":"call.reject","data":{"call": call, "reason": "演示终端无法接听此呼叫，请呼叫真实终端"}}),
            ));
        }
        _ => {}
    }
    out
}

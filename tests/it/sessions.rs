//! Command sessions over the protocol: a commander, invited terminals, a wall watching.

use std::time::Duration;

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
    let id = r["data"]["session"]["session"].as_u64().unwrap();

    // Media requests: from a terminal not in the session, malformed, or answering nothing.
    let offer = county
        .next_where(|m| m["type"] == "session.media.offer")
        .await;
    assert_eq!(offer["data"]["session"], id);
    let e = other
        .refused("session.media.answer", json!({"session": id, "sdp": "v=0"}))
        .await;
    assert_eq!(e["code"], "not_invited", "{e}");
    let e = county
        .refused(
            "session.media.answer",
            json!({"session": id, "sdp": "not an sdp"}),
        )
        .await;
    assert_eq!(e["code"], "invalid_data", "{e}");
    let e = county
        .refused("session.media.answer", json!({"session": id}))
        .await;
    assert_eq!(e["code"], "invalid_data", "{e}");
    let e = county
        .refused(
            "session.media.candidate",
            json!({"session": id, "candidate": 7}),
        )
        .await;
    assert_eq!(e["code"], "invalid_data", "{e}");
    let e = other
        .refused("session.media.restart", json!({"session": id}))
        .await;
    assert_eq!(e["code"], "not_invited", "{e}");
    let e = other.refused("session.create", json!({})).await;
    assert_eq!(e["code"], "too_many_sessions", "{e}");
    let e = other.refused("session.join", json!({"session": 999})).await;
    assert_eq!(e["code"], "not_found", "{e}");
    // The connection and the hub carry on.
    other.ping_ok().await;
    county.ping_ok().await;
}

// ---- media through the forwarding unit, with webrtc-rs peers --------------------------------

mod media {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use rtc::media_stream::MediaStreamTrack;
    use rtc::rtp_transceiver::rtp_sender::{
        RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
    };
    use serde_json::{Value, json};
    use tokio::sync::Notify;
    use webrtc::media_stream::track_local::TrackLocal;
    use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
    use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
    use webrtc::peer_connection::{
        PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCIceGatheringState,
        RTCSessionDescription,
    };

    use crate::support::*;

    /// Packets received, per publisher (the stream id the hub gives a forward) and kind.
    pub type Counts = Arc<Mutex<HashMap<(String, RtpCodecKind), usize>>>;

    /// The video tracks a member receives, by publisher: a viewer asks for keyframes on them.
    pub type Remotes = Arc<Mutex<HashMap<String, Arc<dyn TrackRemote>>>>;

    struct Events {
        counts: Counts,
        remotes: Remotes,
        gathered: Arc<Notify>,
    }

    #[async_trait::async_trait]
    impl PeerConnectionEventHandler for Events {
        async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
            if state == RTCIceGatheringState::Complete {
                self.gathered.notify_one();
            }
        }

        async fn on_track(&self, track: Arc<dyn TrackRemote>) {
            let counts = Arc::clone(&self.counts);
            let remotes = Arc::clone(&self.remotes);
            tokio::spawn(async move {
                let (from, kind) = (track.stream_id().await.to_string(), track.kind().await);
                if kind == RtpCodecKind::Video {
                    remotes
                        .lock()
                        .unwrap()
                        .insert(from.clone(), Arc::clone(&track));
                }
                while let Some(ev) = track.poll().await {
                    match ev {
                        TrackRemoteEvent::OnRtpPacket(_) => {
                            *counts
                                .lock()
                                .unwrap()
                                .entry((from.clone(), kind))
                                .or_default() += 1;
                        }
                        TrackRemoteEvent::OnEnded => return,
                        _ => {}
                    }
                }
            });
        }
    }

    /// A member's media: answers every offer of the hub (publishing on its first audio and
    /// video transceivers when asked to), and sends synthetic RTP while it runs.
    pub struct Member {
        pub counts: Counts,
        pub remotes: Remotes,
        pub task: tokio::task::JoinHandle<()>,
        /// Offers answered so far.
        pub offers: Arc<std::sync::atomic::AtomicUsize>,
        /// Keyframe requests the hub sent about the tracks this member publishes.
        pub plis: Arc<std::sync::atomic::AtomicUsize>,
        requests: tokio::sync::mpsc::Sender<(String, Value, tokio::sync::oneshot::Sender<Value>)>,
    }

    impl Member {
        /// A request on the member's connection (which its task holds), and its answer.
        pub async fn call(&self, kind: &str, data: Value) -> Value {
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.requests
                .send((kind.to_owned(), data, tx))
                .await
                .expect("the member runs");
            rx.await.expect("an answer")
        }

        pub fn plis(&self) -> usize {
            self.plis.load(std::sync::atomic::Ordering::Relaxed)
        }

        /// Asks the hub for a keyframe of `from`'s camera, as a viewer that lost packets does.
        pub async fn ask_keyframe(&self, from: &str) {
            let t = self.remotes.lock().unwrap().get(from).cloned();
            let t = t.unwrap_or_else(|| panic!("no camera of {from} received"));
            let ssrc = t.ssrcs().await[0];
            t.write_rtcp(vec![Box::new(
                rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication {
                    sender_ssrc: 0,
                    media_ssrc: ssrc,
                },
            )])
            .await
            .expect("a keyframe request sent");
        }
    }

    fn codec(kind: RtpCodecKind) -> RTCRtpCodec {
        match kind {
            RtpCodecKind::Audio => RTCRtpCodec {
                mime_type: "audio/opus".into(),
                clock_rate: 48_000,
                channels: 2,
                sdp_fmtp_line: "minptime=10;useinbandfec=1".into(),
                rtcp_feedback: vec![],
            },
            _ => RTCRtpCodec {
                mime_type: "video/VP8".into(),
                clock_rate: 90_000,
                channels: 0,
                sdp_fmtp_line: String::new(),
                rtcp_feedback: vec![],
            },
        }
    }

    fn track(kind: RtpCodecKind, ssrc: u32) -> Arc<TrackLocalStaticRTP> {
        Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
            format!("client-{ssrc}"),
            format!("client-{ssrc}-{kind}"),
            format!("client {kind}"),
            kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: codec(kind),
                ..Default::default()
            }],
        )))
    }

    /// Runs a member's media on `term` (which has joined `session`), publishing `kinds`.
    pub async fn run(
        term: TestTerminal,
        session: u64,
        kinds: &[RtpCodecKind],
        seed: u32,
    ) -> Member {
        run_at(term, session, kinds, seed, 1).await
    }

    /// As `run`, sending `per_tick` packets of each kind every 20 ms (1: a camera's pace).
    pub async fn run_at(
        mut term: TestTerminal,
        session: u64,
        kinds: &[RtpCodecKind],
        seed: u32,
        per_tick: usize,
    ) -> Member {
        let counts: Counts = Arc::default();
        let remotes: Remotes = Arc::default();
        let gathered = Arc::new(Notify::new());
        let mut engine = rtc::peer_connection::configuration::media_engine::MediaEngine::default();
        engine.register_default_codecs().unwrap();
        // The hub's keyframe requests reach the application (counted below).
        let registry = gridhub::sessions::keyframes::register(
            rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors(
                rtc::interceptor::Registry::new(),
                &mut engine,
            )
            .unwrap(),
        );
        let pc: Arc<dyn PeerConnection> = Arc::new(
            PeerConnectionBuilder::new()
                .with_media_engine(engine)
                .with_interceptor_registry(registry)
                .with_handler(Arc::new(Events {
                    counts: Arc::clone(&counts),
                    remotes: Arc::clone(&remotes),
                    gathered: Arc::clone(&gathered),
                }))
                .with_runtime(webrtc::runtime::default_runtime().expect("tokio runtime"))
                .with_udp_addrs(vec!["127.0.0.1:0".to_string()])
                .build()
                .await
                .expect("peer connection"),
        );
        let tracks: Vec<(RtpCodecKind, u32, Arc<TrackLocalStaticRTP>)> = kinds
            .iter()
            .enumerate()
            .map(|(i, &k)| (k, seed * 10 + i as u32, track(k, seed * 10 + i as u32)))
            .collect();
        // Added before the first offer: applying it pairs each with the hub's receiving
        // transceiver of its kind.
        let plis: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        for (_, _, t) in &tracks {
            pc.add_track(Arc::clone(t) as Arc<dyn TrackLocal>)
                .await
                .unwrap();
            let (t, plis) = (Arc::clone(t), Arc::clone(&plis));
            tokio::spawn(async move {
                while let Some(ev) = t.poll().await {
                    if let webrtc::media_stream::track_local::TrackLocalEvent::OnRtcpPacket(_) = ev
                    {
                        plis.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
        }
        let sender_tracks = tracks.clone();
        let offers: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let answered = Arc::clone(&offers);
        let (requests, mut requested) =
            tokio::sync::mpsc::channel::<(String, Value, tokio::sync::oneshot::Sender<Value>)>(1);
        let task = tokio::spawn(async move {
            let mut seq: u16 = 0;
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            loop {
                tokio::select! {
                    m = term.next_where(|m| m["type"] == "session.media.offer" || m["type"] == "session.media.candidate") => {
                        // The hub trickles its candidates after its offer.
                        if m["type"] == "session.media.candidate" {
                            let init = serde_json::from_value(m["data"]["candidate"].clone()).unwrap();
                            let _ = pc.add_ice_candidate(init).await;
                            continue;
                        }
                        let sdp = m["data"]["sdp"].as_str().unwrap().to_owned();
                        pc.set_remote_description(RTCSessionDescription::offer(sdp).unwrap()).await.unwrap();

                        let answer = pc.create_answer(None).await.unwrap();
                        let done = gathered.notified();
                        pc.set_local_description(answer).await.unwrap();
                        let _ = tokio::time::timeout(Duration::from_secs(3), done).await;
                        let sdp = pc.local_description().await.unwrap().sdp;
                        let r = term.call("session.media.answer", json!({"session": session, "sdp": sdp})).await;
                        assert_eq!(r["type"], "reply", "{r}");
                        answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                                        Some((kind, data, reply)) = requested.recv() => {
                        let r = term.call(&kind, data).await;
                        let _ = reply.send(r);
                    }
                    _ = tick.tick() => for _ in 0..per_tick {
                        seq = seq.wrapping_add(1);
                        for (kind, ssrc, t) in &sender_tracks {
                            let mut p = rtc::rtp::Packet::default();
                            // A static RTP track sends packets as written: its SSRC too.
                            p.header.ssrc = *ssrc;
                            p.header.version = 2;
                            p.header.sequence_number = seq;
                            p.header.timestamp = seq as u32 * if *kind == RtpCodecKind::Audio { 960 } else { 1800 };
                            p.header.marker = true;
                            p.header.payload_type = if *kind == RtpCodecKind::Audio { 111 } else { 96 };
                            // One packet per frame: a VP8 payload descriptor (start of a
                            // partition) and a keyframe's first bytes; Opus is taken as is.
                            p.payload = bytes::Bytes::from(vec![0x10, 0x00, 0x9d, 0x01, 0x2a, 1, 2, 3]);
                            // Before the first answer the track is not bound yet.
                            let _ = t.write_rtp(p).await;
                        }
                    }
                }
            }
        });
        Member {
            counts,
            remotes,
            task,
            offers,
            plis,
            requests,
        }
    }

    pub fn heard(counts: &Counts, from: &str, kind: RtpCodecKind) -> usize {
        counts
            .lock()
            .unwrap()
            .get(&(from.to_owned(), kind))
            .copied()
            .unwrap_or(0)
    }
}

#[tokio::test]
async fn media_published_by_each_member_reaches_the_others_through_the_hub() {
    use rtc::rtp_transceiver::rtp_sender::RtpCodecKind::{Audio, Video};
    let hub = spawn_app(|c| c.sessions.record = true).await;
    let ws = workers_under(&hub.org, DONGFENG, 3);
    let mut commander = hub.connect(DONGFENG).await;
    let r = commander
        .call("session.create", json!({"invite": ws}))
        .await;
    let id = r["data"]["session"]["session"].as_u64().unwrap();
    // Controls from a second desk of the county: the commanding connection runs its media.
    let desk = hub.seat_token(DONGFENG, Role::Operator, "desk-2");
    let mut desk = hub.connect_with(&desk).await;
    let boss = media::run(commander, id, &[Audio], 1).await;
    let mut members = Vec::new();
    for (i, w) in ws.iter().enumerate() {
        let mut t = hub.connect(w).await;
        let r = t.call("session.join", json!({"session": id})).await;
        assert_eq!(r["type"], "reply", "{r}");
        members.push(media::run(t, id, &[Audio, Video], 2 + i as u32).await);
    }
    let wall = hub.seat_token(DONGFENG, Role::Observer, "wall");
    let mut wall_t = hub.connect_with(&wall).await;
    let r = wall_t.call("session.join", json!({"session": id})).await;
    assert_eq!(r["type"], "reply", "{r}");
    let wall = media::run(wall_t, id, &[], 9).await;

    // Every camera reaches the wall; the commander's voice reaches every member.
    let deadline = tokio::time::Instant::now() + PATIENCE * 3;
    loop {
        let cams = ws
            .iter()
            .filter(|w| media::heard(&wall.counts, w, Video) > 20)
            .count();
        let voice = members
            .iter()
            .filter(|m| media::heard(&m.counts, DONGFENG, Audio) > 20)
            .count();
        if cams == 3 && voice == 3 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "cameras on the wall: {cams}/3, the commander heard by {voice}/3: {:?}",
            wall.counts.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Muted: the first worker's sound stops reaching the others.
    let r = desk
        .call(
            "session.control",
            json!({"session": id, "action": "mute", "target": ws[0]}),
        )
        .await;
    assert_eq!(r["type"], "reply", "{r}");
    // What was on its way when the mute took effect arrives first (a generous second).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = media::heard(&wall.counts, &ws[0], Audio);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        media::heard(&wall.counts, &ws[0], Audio) <= before + 2,
        "muted sound still flows"
    );
    assert!(
        media::heard(&wall.counts, &ws[1], Audio) > 0,
        "the others' sound flows"
    );
    assert!(
        media::heard(&boss.counts, &ws[1], Video) > 0,
        "the commander sees the cameras"
    );

    // The third worker's network changed: an ICE restart keeps it in, its camera still flowing.
    let offers = members[2].offers.load(std::sync::atomic::Ordering::Relaxed);
    let r = members[2]
        .call("session.media.restart", json!({"session": id}))
        .await;
    assert_eq!(r["type"], "reply", "{r}");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while members[2].offers.load(std::sync::atomic::Ordering::Relaxed) == offers {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no new offer after a restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = media::heard(&wall.counts, &ws[2], Video);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while media::heard(&wall.counts, &ws[2], Video) < seen + 20 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the camera stopped after the restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (_, _, metrics) = crate::auth::http_raw_at(hub.addr, "/metrics", None).await;
    let metrics = String::from_utf8(metrics).unwrap();
    let forwarded: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("gridhub_session_packets_forwarded_total "))
        .expect("the forwarding unit's count")
        .parse()
        .unwrap();
    assert!(forwarded > 200.0, "{forwarded} packets forwarded");
    assert!(
        metrics.contains("gridhub_sessions_live 1"),
        "one session live"
    );

    // Ended: every recording is closed and listed, and plays back with every frame it took.
    desk.call("session.control", json!({"session": id, "action": "end"}))
        .await;
    let token = hub.token(DONGFENG);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let recs = loop {
        let (_, _, body) =
            crate::auth::http_raw_at(hub.addr, &format!("/api/v1/sessions/{id}"), Some(&token))
                .await;
        let v: Value = serde_json::from_slice(&body).unwrap();
        let recs = v["recordings"].as_array().unwrap().clone();
        if recs.len() == 7 && recs.iter().all(|r| r["ended_at"].is_u64()) {
            break recs;
        }
        assert!(tokio::time::Instant::now() < deadline, "recordings: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let video = recs
        .iter()
        .find(|r| r["node"] == ws[0].as_str() && r["kind"] == "video")
        .expect("the first worker's camera recorded");
    let (status, _, file) =
        crate::auth::http_raw_at(hub.addr, video["url"].as_str().unwrap(), Some(&token)).await;
    assert_eq!(status, 200);
    assert_eq!(&file[..4], b"DKIF");
    let frames = ivf_frames(&file);
    assert!(frames > 20, "{frames} frames");
    assert_eq!(
        frames as u64,
        video["packets"].as_u64().unwrap(),
        "every frame taken is in the file"
    );
    for m in members.iter().chain([&boss, &wall]) {
        m.task.abort();
    }
}

/// The frames of an IVF file.
fn ivf_frames(b: &[u8]) -> usize {
    let mut at = u16::from_le_bytes([b[6], b[7]]) as usize;
    let mut n = 0;
    while at + 12 <= b.len() {
        at += 12 + u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as usize;
        n += 1;
    }
    n
}

#[tokio::test]
async fn a_publisher_flooding_packets_is_held_to_its_rate_and_the_others_carry_on() {
    use rtc::rtp_transceiver::rtp_sender::RtpCodecKind::Video;
    let hub = spawn_app(|c| c.sessions.max_packets_per_sec = 300).await;
    let ws = workers_under(&hub.org, DONGFENG, 2);
    let mut commander = hub.connect(DONGFENG).await;
    let r = commander
        .call("session.create", json!({"invite": ws}))
        .await;
    let id = r["data"]["session"]["session"].as_u64().unwrap();
    let _boss = media::run(commander, id, &[], 1).await;
    let mut joined = Vec::new();
    for w in &ws {
        let mut t = hub.connect(w).await;
        t.call("session.join", json!({"session": id})).await;
        joined.push(t);
    }
    let flooder = joined.pop().unwrap();
    let calm = media::run(joined.pop().unwrap(), id, &[Video], 2).await;
    // 60 packets every 20 ms: 3,000 a second, ten times the allowance.
    let flood = media::run_at(flooder, id, &[Video], 3, 60).await;
    let wall = hub.seat_token(DONGFENG, Role::Observer, "wall");
    let mut wall_t = hub.connect_with(&wall).await;
    wall_t.call("session.join", json!({"session": id})).await;
    let wall = media::run(wall_t, id, &[], 9).await;
    let deadline = tokio::time::Instant::now() + PATIENCE * 3;
    while media::heard(&wall.counts, &ws[1], Video) == 0
        || media::heard(&wall.counts, &ws[0], Video) == 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            wall.counts.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Past its burst, the flood arrives at about the allowance; the calm camera keeps its pace.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (f0, c0) = (
        media::heard(&wall.counts, &ws[1], Video),
        media::heard(&wall.counts, &ws[0], Video),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (f1, c1) = (
        media::heard(&wall.counts, &ws[1], Video),
        media::heard(&wall.counts, &ws[0], Video),
    );
    let (flooded, calm_rate) = ((f1 - f0) / 2, (c1 - c0) / 2);
    assert!(
        flooded <= 400,
        "{flooded} packets a second got through, past 300"
    );
    assert!(
        flooded >= 100,
        "{flooded} packets a second: the flooder is still forwarded"
    );
    assert!(
        calm_rate >= 30,
        "the calm camera: {calm_rate} packets a second"
    );
    let (_, _, metrics) = crate::auth::http_raw_at(hub.addr, "/metrics", None).await;
    let metrics = String::from_utf8(metrics).unwrap();
    let dropped: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("gridhub_session_packets_dropped_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(dropped > 1000.0, "{dropped} dropped");
    for m in [calm, flood, wall] {
        m.task.abort();
    }
}

/// Waits until `f` holds, or fails with what `why` says.
async fn until(why: impl Fn() -> String, f: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE * 3;
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "{}", why());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn who_sees_which_camera_keyframes_reach_publishers_and_members_leave_and_rejoin() {
    use rtc::rtp_transceiver::rtp_sender::RtpCodecKind::{Audio, Video};
    let hub = spawn_app(|_| {}).await;
    let ws = workers_under(&hub.org, DONGFENG, 2);
    let mut commander = hub.connect(DONGFENG).await;
    let r = commander
        .call("session.create", json!({"invite": ws}))
        .await;
    let id = r["data"]["session"]["session"].as_u64().unwrap();
    let boss = media::run(commander, id, &[Video], 1).await;
    let mut m = Vec::new();
    for (i, w) in ws.iter().enumerate() {
        let mut t = hub.connect(w).await;
        let r = t.call("session.join", json!({"session": id})).await;
        assert_eq!(r["type"], "reply", "{r}");
        m.push(media::run(t, id, &[Audio, Video], 2 + i as u32).await);
    }
    let heard = |m: &media::Member, from: &str, kind| media::heard(&m.counts, from, kind);
    // The commander sees every camera; a participant sees the commander's and hears the others,
    // but is not sent the other participants' cameras.
    until(
        || format!("commander {:?}", boss.counts.lock().unwrap()),
        || heard(&boss, &ws[0], Video) > 10 && heard(&boss, &ws[1], Video) > 10,
    )
    .await;
    until(
        || format!("participant {:?}", m[0].counts.lock().unwrap()),
        || heard(&m[0], DONGFENG, Video) > 10 && heard(&m[0], &ws[1], Audio) > 10,
    )
    .await;
    assert_eq!(
        heard(&m[0], &ws[1], Video),
        0,
        "a participant's camera sent to another"
    );
    assert_eq!(
        heard(&m[1], &ws[0], Video),
        0,
        "a participant's camera sent to another"
    );

    // A wall joining: the cameras it now receives are asked for a keyframe, so it starts on one.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = (m[0].plis(), m[1].plis());
    let wall = hub.seat_token(DONGFENG, Role::Observer, "wall");
    let mut wall_t = hub.connect_with(&wall).await;
    let r = wall_t.call("session.join", json!({"session": id})).await;
    assert_eq!(r["type"], "reply", "{r}");
    let wall = media::run(wall_t, id, &[], 9).await;
    until(
        || format!("wall {:?}", wall.counts.lock().unwrap()),
        || heard(&wall, &ws[0], Video) > 10 && heard(&wall, &ws[1], Video) > 10,
    )
    .await;
    until(
        || {
            format!(
                "keyframe requests {before:?} → ({}, {})",
                m[0].plis(),
                m[1].plis()
            )
        },
        || m[0].plis() > before.0 && m[1].plis() > before.1,
    )
    .await;
    // A viewer that lost packets asks for a keyframe: the hub relays it to the publisher.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = m[1].plis();
    wall.ask_keyframe(&ws[1]).await;
    until(
        || format!("relayed keyframe requests: {before} → {}", m[1].plis()),
        || m[1].plis() > before,
    )
    .await;

    // Spotlighted, the second worker's camera reaches the first; taken off, it stops.
    let r = boss
        .call(
            "session.control",
            json!({"session": id, "action": "spotlight", "target": ws[1]}),
        )
        .await;
    assert_eq!(r["type"], "reply", "{r}");
    until(
        || format!("spotlight {:?}", m[0].counts.lock().unwrap()),
        || heard(&m[0], &ws[1], Video) > 10,
    )
    .await;
    let r = boss
        .call(
            "session.control",
            json!({"session": id, "action": "clear_spotlight"}),
        )
        .await;
    assert_eq!(r["type"], "reply", "{r}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seen = heard(&m[0], &ws[1], Video);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        heard(&m[0], &ws[1], Video) <= seen + 2,
        "the camera still flows after the spotlight went"
    );
    assert!(heard(&wall, &ws[1], Video) > 20, "the wall still sees it");
    // Spotlighted again: the same track resumes, with no new offer (the SDP does not grow as
    // the spotlight moves back and forth), on a keyframe asked of the publisher.
    let (offers, plis) = (
        m[0].offers.load(std::sync::atomic::Ordering::Relaxed),
        m[1].plis(),
    );
    for _ in 0..3 {
        for action in ["clear_spotlight", "spotlight"] {
            let r = boss
                .call(
                    "session.control",
                    json!({"session": id, "action": action, "target": ws[1]}),
                )
                .await;
            assert_eq!(r["type"], "reply", "{r}");
        }
    }
    until(
        || "the camera back after the spotlight returned".into(),
        || heard(&m[0], &ws[1], Video) > seen + 20,
    )
    .await;
    assert_eq!(
        m[0].offers.load(std::sync::atomic::Ordering::Relaxed),
        offers,
        "a new offer when a paused camera resumed"
    );
    until(
        || "no keyframe asked on resuming".into(),
        || m[1].plis() > plis,
    )
    .await;
    let r = boss
        .call(
            "session.control",
            json!({"session": id, "action": "clear_spotlight"}),
        )
        .await;
    assert_eq!(r["type"], "reply", "{r}");

    // Leave and rejoin: gone from the wall, then back on a new media connection.
    let r = m[0].call("session.leave", json!({"session": id})).await;
    assert_eq!(r["type"], "reply", "{r}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seen = heard(&wall, &ws[0], Video);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        heard(&wall, &ws[0], Video) <= seen + 2,
        "the camera of a member who left still flows"
    );
    m.remove(0).task.abort();
    let mut t = hub.connect(&ws[0]).await;
    let r = t.call("session.join", json!({"session": id})).await;
    assert_eq!(r["type"], "reply", "{r}");
    let back = media::run(t, id, &[Audio, Video], 7).await;
    until(
        || format!("after rejoining {:?}", wall.counts.lock().unwrap()),
        || heard(&wall, &ws[0], Video) > seen + 20,
    )
    .await;
    until(
        || "the one who came back hears the other".into(),
        || heard(&back, &ws[1], Audio) > 10,
    )
    .await;

    // Removed: its camera leaves the wall, and the session carries on for the rest.
    let r = boss
        .call(
            "session.control",
            json!({"session": id, "action": "remove", "target": ws[1]}),
        )
        .await;
    assert_eq!(r["type"], "reply", "{r}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seen = heard(&wall, &ws[1], Video);
    let still = heard(&wall, &ws[0], Video);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        heard(&wall, &ws[1], Video) <= seen + 2,
        "a removed camera still flows"
    );
    assert!(
        heard(&wall, &ws[0], Video) > still + 10,
        "the others stopped too"
    );
    for x in m.into_iter().chain([boss, wall, back]) {
        x.task.abort();
    }
}

//! `gridhub demo`: a simulated city around a real hub, whose orders go all the way round.

use std::time::Duration;

use gridhub::auth::Authority;

use crate::auth::http_raw_at;
use crate::support::*;

#[tokio::test]
async fn the_demo_city_connects_and_carries_orders_to_the_archive() {
    let config = test_config();
    let data = config.server.data_dir.clone();
    let mut opts = gridhub::demo::DemoOptions::new(0.01, 600.0, 7);
    opts.stations = false;
    opts.pace = gridhub::demo::script::Pace::quick();
    let stop = tokio_util::sync::CancellationToken::new();
    let running = gridhub::demo::start(config, &opts, stop.clone())
        .await
        .expect("demo starts");
    let hub = std::sync::Arc::clone(&running.hub);
    let token = Authority::new(SECRET.as_bytes())
        .unwrap()
        .mint(
            &hub.org,
            CITY,
            gridhub::auth::Role::Operator,
            3600,
            gridhub::clock::now_ms() / 1000,
        )
        .unwrap();
    // Generous: the quick pace finishes an order in a few seconds.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let mut archived = 0;
    while tokio::time::Instant::now() < deadline {
        let (_, _, body) = http_raw_at(running.addr, "/api/v1/orders/stats", Some(&token)).await;
        let stats: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        archived = stats["by_state"]["archived"].as_u64().unwrap_or(0);
        if archived >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(archived >= 3, "orders archived: {archived}");
    // About 1 % of 8,529 workers are simulated (they join over 20 s), through the hub's own /ws.
    let online = hub.transport.registry.len();
    assert!((1..200).contains(&online), "{online} terminals connected");
    // The demo keeps its city apart from the hub's own data.
    assert!(data.join("demo").read_dir().unwrap().next().is_some());
    stop.cancel();
    running.shutdown().await;
    let _ = std::fs::remove_dir_all(&data);
}

/// What the caller's peer connection hears.
enum Heard {
    Gathered,
    Packet(rtc::rtp_transceiver::rtp_sender::RtpCodecKind),
}

struct Caller(tokio::sync::mpsc::UnboundedSender<Heard>);

#[async_trait::async_trait]
impl webrtc::peer_connection::PeerConnectionEventHandler for Caller {
    async fn on_ice_gathering_state_change(
        &self,
        state: webrtc::peer_connection::RTCIceGatheringState,
    ) {
        if state == webrtc::peer_connection::RTCIceGatheringState::Complete {
            let _ = self.0.send(Heard::Gathered);
        }
    }

    async fn on_track(
        &self,
        track: std::sync::Arc<dyn webrtc::media_stream::track_remote::TrackRemote>,
    ) {
        use webrtc::media_stream::track_remote::TrackRemoteEvent;
        let tx = self.0.clone();
        tokio::spawn(async move {
            let kind = track.kind().await;
            while let Some(ev) = track.poll().await {
                match ev {
                    TrackRemoteEvent::OnRtpPacket(_) if tx.send(Heard::Packet(kind)).is_err() => {
                        return;
                    }
                    TrackRemoteEvent::OnEnded => return,
                    _ => {}
                }
            }
        });
    }
}

#[tokio::test]
async fn a_simulated_worker_answers_a_video_call_with_its_test_card() {
    use rtc::peer_connection::configuration::media_engine::MediaEngine;
    use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
    use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
    use webrtc::peer_connection::{PeerConnection, PeerConnectionBuilder, RTCSessionDescription};

    let config = test_config();
    let data = config.server.data_dir.clone();
    let mut opts = gridhub::demo::DemoOptions::new(0.005, 0.0, 11);
    opts.stations = false;
    opts.pace = gridhub::demo::script::Pace::quick();
    let stop = tokio_util::sync::CancellationToken::new();
    let running = gridhub::demo::start(config, &opts, stop.clone())
        .await
        .expect("demo starts");
    let hub = std::sync::Arc::clone(&running.hub);
    // A simulated worker on line.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let worker = loop {
        let mut found = None;
        hub.transport.registry.for_each(|c| {
            if c.role == gridhub::auth::Role::Worker {
                found = Some(hub.org.id(c.endpoint).to_string());
            }
        });
        if let Some(w) = found {
            break w;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no simulated worker came on line"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let token = Authority::new(SECRET.as_bytes())
        .unwrap()
        .mint(
            &hub.org,
            CITY,
            gridhub::auth::Role::Operator,
            3600,
            gridhub::clock::now_ms() / 1000,
        )
        .unwrap();
    let mut city = TestTerminal::open_at(running.addr, &token).await;

    // The city's console offers to receive sound and video, its candidates in the offer.
    let mut media = MediaEngine::default();
    media.register_default_codecs().unwrap();
    let (tx, mut heard) = tokio::sync::mpsc::unbounded_channel();
    let pc = PeerConnectionBuilder::new()
        .with_media_engine(media)
        .with_handler(std::sync::Arc::new(Caller(tx)))
        .with_runtime(webrtc::runtime::default_runtime().expect("tokio runtime"))
        .with_udp_addrs(vec!["127.0.0.1:0".to_string()])
        .build()
        .await
        .expect("peer connection");
    for kind in [RtpCodecKind::Audio, RtpCodecKind::Video] {
        let init = RTCRtpTransceiverInit {
            direction: RTCRtpTransceiverDirection::Recvonly,
            streams: vec![],
            send_encodings: vec![],
        };
        pc.add_transceiver_from_kind(kind, Some(init))
            .await
            .unwrap();
    }
    let offer = pc.create_offer(None).await.unwrap();
    pc.set_local_description(offer).await.unwrap();
    while !matches!(heard.recv().await, Some(Heard::Gathered)) {}
    let offer = pc.local_description().await.unwrap().sdp;
    let r = city
        .call(
            "call.invite",
            serde_json::json!({"to": worker, "media": "video", "offer": offer}),
        )
        .await;
    assert_eq!(r["type"], "reply", "{r}");
    let accepted = city
        .next_where(|m| m["type"] == "call.accepted" || m["type"] == "call.ended")
        .await;
    assert_eq!(accepted["type"], "call.accepted", "{accepted}");
    let answer = accepted["data"]["answer"]
        .as_str()
        .expect("an answer")
        .to_owned();
    pc.set_remote_description(RTCSessionDescription::answer(answer).unwrap())
        .await
        .unwrap();

    // Frames and sound arrive: 30 video packets is about two seconds of the card.
    let (mut video, mut audio) = (0, 0);
    let within = tokio::time::Instant::now() + Duration::from_secs(30);
    while video < 30 || audio < 30 {
        match tokio::time::timeout_at(within, heard.recv()).await {
            Ok(Some(Heard::Packet(RtpCodecKind::Video))) => video += 1,
            Ok(Some(Heard::Packet(_))) => audio += 1,
            Ok(_) => {}
            Err(_) => panic!("media did not arrive: {video} video and {audio} audio packets"),
        }
    }
    let call = accepted["data"]["call"].clone();
    city.call("call.hangup", serde_json::json!({"call": call}))
        .await;
    let _ = pc.close().await;
    stop.cancel();
    running.shutdown().await;
    let _ = std::fs::remove_dir_all(&data);
}

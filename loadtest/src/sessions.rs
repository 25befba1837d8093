//! `loadtest sessions`: command sessions carrying synthetic cameras and microphones through the
//! hub's selective forwarding unit, as real WebRTC peers (the `webrtc` crate, as the hub uses).
//!
//! Each session has a commander at a center whose console subscribes to every track (the wall
//! of the scenario) and `publishers` grid workers of its subtree, each publishing VP8 video at
//! `video_kbps` and Opus sound: `talkers` of them speak (50 packets a second), the others are
//! silent and send what an Opus encoder with DTX sends (a packet every 400 ms), as the hub asks
//! for. Every member hears every other one, as in the product.
//!
//! Every packet carries the time it was written (microseconds since the run's start) and its
//! index in its stream, in its payload: a receiver knows how long it took through the hub, and
//! which of the packets its publisher wrote inside the measured window (after a warm-up) never
//! arrived — for every stream that should have reached it, including one that never did. The latency includes the harness's own sending and receiving on the
//! same machine: an upper bound on what the hub adds.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use gridhub::auth::{Authority, Role, Seat};
use gridhub::org::{NodeIdx, Org, Tier};
use hdrhistogram::Histogram;
use rtc::media_stream::MediaStreamTrack;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCIceGatheringState,
    RTCSessionDescription,
};

use crate::hubstats::{HubStats, http_get, scrape};
use crate::terminal::{Ws, open};
use crate::{ErrorLog, Machine, Percentiles, Target, histogram};

#[derive(Debug, Clone)]
pub struct SessionsOptions {
    pub sessions: usize,
    pub publishers: usize,
    pub video_kbps: u32,
    pub fps: u32,
    /// Publishers per session speaking all the time; the rest are silent (DTX).
    pub talkers: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

/// One received stream's figures, inside the measured window.
struct Stream {
    kind: RtpCodecKind,
    /// Received by the commander's console (every track) or by a participant (sound).
    wall: bool,
    /// Whose member's connection received it, and whose track it is (the hub names the
    /// publisher in the stream id).
    receiver: String,
    publisher: String,
    latency: Histogram<u64>,
    /// Which of the publisher's packets (by the index it writes in each) arrived.
    seen: Vec<u64>,
}

/// Packet indices are counted up to this many per stream (over 18 hours of video).
const MAX_INDEX: u32 = 1 << 22;

impl Stream {
    fn new(kind: RtpCodecKind, wall: bool, receiver: String, publisher: String) -> Stream {
        Stream {
            kind,
            wall,
            receiver,
            publisher,
            latency: histogram(),
            seen: Vec::new(),
        }
    }

    /// The publisher's packet `index`, written at `sent_us`, arrived at `now_us`.
    fn packet(&mut self, index: u32, sent_us: u64, now_us: u64, window: &Window) {
        if !window.open(sent_us) || index >= MAX_INDEX {
            return;
        }
        let _ = self.latency.record(now_us.saturating_sub(sent_us).max(1));
        let (word, bit) = ((index / 64) as usize, index % 64);
        if self.seen.len() <= word {
            self.seen.resize(word + 1, 0);
        }
        self.seen[word] |= 1 << bit;
    }

    /// How many of the packets `first..=last` arrived (a retransmission counts once).
    fn received(&self, first: u32, last: u32) -> u64 {
        (first..=last.min(MAX_INDEX - 1))
            .filter(|&i| {
                self.seen
                    .get((i / 64) as usize)
                    .is_some_and(|w| w & (1 << (i % 64)) != 0)
            })
            .count() as u64
    }
}

/// What a publisher wrote inside the window, per kind: its first and last packet index.
#[derive(Default)]
struct Written {
    first: AtomicU64,
    last: AtomicU64,
    any: AtomicBool,
}

impl Written {
    fn new() -> Written {
        Written {
            first: AtomicU64::new(u64::MAX),
            ..Written::default()
        }
    }

    fn wrote(&self, index: u32, sent_us: u64, window: &Window) {
        if window.open(sent_us) {
            self.first.fetch_min(u64::from(index), Relaxed);
            self.last.fetch_max(u64::from(index), Relaxed);
            self.any.store(true, Relaxed);
        }
    }

    fn range(&self) -> Option<(u32, u32)> {
        self.any.load(Relaxed).then(|| {
            (
                self.first.load(Relaxed) as u32,
                self.last.load(Relaxed) as u32,
            )
        })
    }
}

/// The measured window, by the time a packet was written (microseconds since `EPOCH`).
#[derive(Default)]
struct Window {
    from: AtomicU64,
    to: AtomicU64,
}

impl Window {
    fn open(&self, sent_us: u64) -> bool {
        let from = self.from.load(Relaxed);
        from != 0 && sent_us >= from && sent_us < self.to.load(Relaxed)
    }
}

static EPOCH: OnceLock<Instant> = OnceLock::new();

fn now_us() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// What every member task shares.
#[derive(Default)]
struct Shared {
    window: Window,
    streams: Mutex<Vec<Arc<Mutex<Stream>>>>,
    /// Per publisher and kind, what it wrote inside the window.
    written: Mutex<HashMap<(String, RtpCodecKind), Arc<Written>>>,
    errors: ErrorLog,
    /// Video tracks the commanders' consoles receive packets on.
    wall_cameras: AtomicU64,
    packets_sent: AtomicU64,
    bytes_sent: AtomicU64,
}

struct Events {
    shared: Arc<Shared>,
    wall: bool,
    me: String,
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
        let (shared, wall, me) = (Arc::clone(&self.shared), self.wall, self.me.clone());
        tokio::spawn(async move {
            let kind = track.kind().await;
            let from = track.stream_id().await.to_string();
            let stream = Arc::new(Mutex::new(Stream::new(kind, wall, me, from)));
            shared
                .streams
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Arc::clone(&stream));
            let mut counted = false;
            while let Some(ev) = track.poll().await {
                match ev {
                    TrackRemoteEvent::OnRtpPacket(p) => {
                        let at = if kind == RtpCodecKind::Video { 1 } else { 0 };
                        let Some((sent, index)) = stamp_of(&p.payload[..], at) else {
                            continue;
                        };
                        let now = now_us();
                        stream.lock().unwrap_or_else(|e| e.into_inner()).packet(
                            index,
                            sent,
                            now,
                            &shared.window,
                        );
                        if wall && kind == RtpCodecKind::Video && !counted {
                            counted = true;
                            shared.wall_cameras.fetch_add(1, Relaxed);
                        }
                    }
                    TrackRemoteEvent::OnEnded => return,
                    _ => {}
                }
            }
        });
    }
}

/// A packet's stamp at `at`: when it was written (µs since `EPOCH`) and its index in its stream.
fn stamp_of(payload: &[u8], at: usize) -> Option<(u64, u32)> {
    let b = payload.get(at..at + 12)?;
    Some((
        u64::from_le_bytes(b[..8].try_into().ok()?),
        u32::from_le_bytes(b[8..].try_into().ok()?),
    ))
}

fn stamp(payload: &mut [u8], at: usize, index: u32) -> u64 {
    let now = now_us();
    payload[at..at + 8].copy_from_slice(&now.to_le_bytes());
    payload[at + 8..at + 12].copy_from_slice(&index.to_le_bytes());
    now
}

fn codec(kind: RtpCodecKind) -> RTCRtpCodec {
    match kind {
        RtpCodecKind::Audio => RTCRtpCodec {
            mime_type: "audio/opus".into(),
            clock_rate: 48_000,
            channels: 2,
            sdp_fmtp_line: "minptime=10;useinbandfec=1;usedtx=1".into(),
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
        format!("lt-{ssrc}"),
        format!("lt-{ssrc}-{kind}"),
        format!("loadtest {kind}"),
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

/// What a member publishes.
#[derive(Clone)]
struct Publish {
    me: String,
    ssrc: u32,
    talks: bool,
    video_kbps: u32,
    fps: u32,
}

/// The largest RTP payload written: a 1,200-byte packet with its headers, as browsers send.
const MAX_PAYLOAD: usize = 1_100;

/// Sends a synthetic camera and microphone until `stop`: VP8 frames split into packets of at
/// most `MAX_PAYLOAD` bytes, each stamped with its sending time; Opus every 20 ms while
/// talking, every 400 ms while silent.
async fn send_media(
    p: Publish,
    video: Arc<TrackLocalStaticRTP>,
    audio: Arc<TrackLocalStaticRTP>,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let written = |kind| {
        let w = Arc::new(Written::new());
        shared
            .written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((p.me.clone(), kind), Arc::clone(&w));
        w
    };
    let (vw, aw) = (written(RtpCodecKind::Video), written(RtpCodecKind::Audio));
    let frame_bytes = (p.video_kbps as usize * 1000 / 8 / p.fps.max(1) as usize).max(16);
    let per_frame = frame_bytes.div_ceil(MAX_PAYLOAD);
    let chunk = frame_bytes.div_ceil(per_frame);
    // Phases spread so the publishers do not all write in the same instant.
    let phase = Duration::from_micros(u64::from(p.ssrc.wrapping_mul(2_654_435_761)) % 33_000);
    tokio::time::sleep(phase).await;
    let mut vtick = tokio::time::interval(Duration::from_secs(1) / p.fps.max(1));
    let mut atick = tokio::time::interval(Duration::from_millis(20));
    vtick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    atick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut vseq, mut aseq, mut frame, mut atime) = (0u32, 0u32, 0u32, 0u32);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = vtick.tick() => {
                frame = frame.wrapping_add(1);
                for i in 0..per_frame {
                                        let mut payload = vec![0u8; (chunk + 1).max(13)];
                    // VP8 payload descriptor: S bit on the frame's first packet.
                    payload[0] = if i == 0 { 0x10 } else { 0x00 };
                    let sent = stamp(&mut payload, 1, vseq);
                    vw.wrote(vseq, sent, &shared.window);
                    let pkt = rtp(p.ssrc, 96, vseq as u16, frame.wrapping_mul(90_000 / p.fps.max(1)), i + 1 == per_frame, payload);
                    vseq = vseq.wrapping_add(1);
                    shared.bytes_sent.fetch_add(pkt.payload.len() as u64, Relaxed);
                    if video.write_rtp(pkt).await.is_ok() {
                        shared.packets_sent.fetch_add(1, Relaxed);
                    }
                }
            }
            _ = atick.tick() => {
                atime = atime.wrapping_add(960);
                // Silent with DTX: one comfort-noise packet in twenty.
                if !p.talks && atime % (960 * 20) != 0 {
                    continue;
                }
                                let mut payload = vec![0u8; if p.talks { 100 } else { 12 }];
                let sent = stamp(&mut payload, 0, aseq);
                aw.wrote(aseq, sent, &shared.window);
                let pkt = rtp(p.ssrc + 1, 111, aseq as u16, atime, false, payload);
                aseq = aseq.wrapping_add(1);
                shared.bytes_sent.fetch_add(pkt.payload.len() as u64, Relaxed);
                if audio.write_rtp(pkt).await.is_ok() {
                    shared.packets_sent.fetch_add(1, Relaxed);
                }
            }
        }
    }
}

fn rtp(ssrc: u32, pt: u8, seq: u16, ts: u32, marker: bool, payload: Vec<u8>) -> rtc::rtp::Packet {
    let mut p = rtc::rtp::Packet::default();
    p.header.version = 2;
    p.header.ssrc = ssrc;
    p.header.payload_type = pt;
    p.header.sequence_number = seq;
    p.header.timestamp = ts;
    p.header.marker = marker;
    p.payload = bytes::Bytes::from(payload);
    p
}

/// A member of a session: its signaling connection and its media, until `stop`.
struct Member {
    ws: Ws,
    /// The member's node id.
    me: String,
    session: u64,
    /// Receives every track (the commander's console) or publishes (a worker).
    wall: bool,
    publish: Option<Publish>,
    heartbeat: Duration,
}

async fn send(ws: &mut Ws, v: Value) -> Result<(), String> {
    ws.send(Message::Text(v.to_string().into()))
        .await
        .map_err(|e| format!("send: {e}"))
}

async fn run_member(
    m: Member,
    shared: Arc<Shared>,
    stop: CancellationToken,
    answered: Arc<AtomicU64>,
) -> Result<(), String> {
    let Member {
        mut ws,
        me,
        session,
        wall,
        publish,
        heartbeat,
    } = m;
    let gathered = Arc::new(Notify::new());
    let mut engine = rtc::peer_connection::configuration::media_engine::MediaEngine::default();
    engine
        .register_default_codecs()
        .map_err(|e| e.to_string())?;
    // No interceptors (no NACKs, reports or congestion feedback): the harness shares the
    // machine with the hub, and its peers' own work is kept to encryption and sockets. The hub
    // runs its full chain; a packet lost is counted lost, not repaired.
    let registry = rtc::interceptor::Registry::new();
    let pc: Arc<dyn PeerConnection> = Arc::new(
        PeerConnectionBuilder::new()
            .with_media_engine(engine)
            .with_interceptor_registry(registry)
            .with_handler(Arc::new(Events {
                shared: Arc::clone(&shared),
                wall,
                me,
                gathered: Arc::clone(&gathered),
            }))
            .with_runtime(webrtc::runtime::default_runtime().ok_or("no runtime for WebRTC")?)
            .with_udp_addrs(vec!["127.0.0.1:0".to_string()])
            .build()
            .await
            .map_err(|e| e.to_string())?,
    );
    let sender = match publish {
        Some(p) => {
            let p = p.clone();
            let (v, a) = (
                track(RtpCodecKind::Video, p.ssrc),
                track(RtpCodecKind::Audio, p.ssrc + 1),
            );
            // Added before the first offer: applying it pairs each with the hub's receiver.
            for t in [&a, &v] {
                pc.add_track(Arc::clone(t) as Arc<dyn TrackLocal>)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Some(tokio::spawn(send_media(
                p,
                v,
                a,
                Arc::clone(&shared),
                stop.clone(),
            )))
        }
        None => None,
    };
    let mut ping = tokio::time::interval(heartbeat);
    ping.tick().await;
    let mut next_id = 0u64;
    let out = loop {
        tokio::select! {
            // First: at the end, the commanders' `end` must not read as a session lost.
            biased;
            _ = stop.cancelled() => break Ok(()),
            _ = ping.tick() => {
                if let Err(e) = send(&mut ws, json!({"v":1,"id":"hb","type":"ping"})).await {
                    break Err(e);
                }
            }
            m = ws.next() => {
                let text = match m {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(f))) => break Err(crate::why_closed(f.as_ref())),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => break Err(e.to_string()),
                    None => break Err(crate::why_closed(None)),
                };
                let Ok(v) = serde_json::from_str::<Value>(&text) else { continue };
                match v["type"].as_str() {
                    Some("session.media.candidate") => {
                        if let Ok(init) = serde_json::from_value(v["data"]["candidate"].clone()) {
                            let _ = pc.add_ice_candidate(init).await;
                        }
                    }
                    Some("session.media.offer") => {
                        let sdp = v["data"]["sdp"].as_str().unwrap_or_default().to_owned();
                        let answered_sdp = async {
                            let offer = RTCSessionDescription::offer(sdp).map_err(|e| e.to_string())?;
                            pc.set_remote_description(offer).await.map_err(|e| e.to_string())?;
                            let answer = pc.create_answer(None).await.map_err(|e| e.to_string())?;
                            let done = gathered.notified();
                            pc.set_local_description(answer).await.map_err(|e| e.to_string())?;
                            let _ = tokio::time::timeout(Duration::from_secs(3), done).await;
                            pc.local_description().await.map(|d| d.sdp).ok_or_else(|| "no answer".to_owned())
                        }.await;
                        match answered_sdp {
                            Ok(sdp) => {
                                next_id += 1;
                                let msg = json!({"v":1,"id":format!("a{next_id}"),"type":"session.media.answer","data":{"session":session,"sdp":sdp}});
                                if let Err(e) = send(&mut ws, msg).await {
                                    break Err(e);
                                }
                                answered.fetch_add(1, Relaxed);
                            }
                            Err(e) => shared.errors.record(&format!("answering an offer: {e}")),
                        }
                    }
                    Some("error") => shared.errors.record(&format!("the hub answered {text}")),
                                        Some("session.ended") | Some("session.removed") if !stop.is_cancelled() => {
                        break Err(format!("left the session early: {text}"));
                    }
                    _ => {}
                }
            }
        }
    };
    if let Some(s) = sender {
        s.abort();
    }
    // The commander ends its session: the next run finds the hub's sessions free.
    if wall {
        let end = json!({"v":1,"id":"end","type":"session.control","data":{"session":session,"action":"end"}});
        let _ = send(&mut ws, end).await;
    }
    let _ = pc.close().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    out
}

/// The centers commanding and the workers each pulls in: the city, then counties, then
/// townships (each inviting workers of its own subtree not taken by another session).
pub fn plan(
    org: &Org,
    sessions: usize,
    publishers: usize,
) -> Result<Vec<(NodeIdx, Vec<NodeIdx>)>, String> {
    let mut centers: Vec<NodeIdx> = [Tier::City, Tier::County, Tier::Township]
        .iter()
        .flat_map(|&t| {
            org.nodes()
                .filter(move |(_, n)| n.tier == t)
                .map(|(i, _)| i)
        })
        .take(sessions)
        .collect();
    if centers.len() < sessions {
        return Err(format!(
            "the tree has {} centers (city, counties, townships); at most that many sessions",
            centers.len()
        ));
    }
    // The deepest centers choose first: a township has only its own workers to take.
    centers.reverse();
    let mut taken: HashSet<NodeIdx> = HashSet::new();
    let mut plan = Vec::new();
    for c in centers {
        let ws: Vec<NodeIdx> = org
            .subtree(c)
            .map(|i| NodeIdx(i as u32))
            .filter(|&n| org.tier(n) == Tier::Worker && !taken.contains(&n))
            .take(publishers)
            .collect();
        if ws.len() < publishers {
            return Err(format!(
                "{} has {} free workers below it; {publishers} asked",
                org.id(c),
                ws.len()
            ));
        }
        taken.extend(&ws);
        plan.push((c, ws));
    }
    plan.reverse();
    Ok(plan)
}

#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub at_s: f64,
    pub hub_cpu_percent: f64,
    pub hub_rss_mib: f64,
    pub forwarded_per_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Targets {
    pub latency_p99_under_10ms: bool,
    pub loss_under_1_percent: bool,
    pub hub_cpu_at_most_one_core: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct SessionsSummary {
    pub machine: Machine,
    pub sessions: usize,
    pub publishers_per_session: usize,
    pub talkers_per_session: usize,
    pub video_kbps: u32,
    pub fps: u32,
    pub window_s: f64,
    pub set_up_s: f64,
    pub peers: usize,
    /// Cameras the commanders' consoles received, of those published.
    pub wall_cameras: u64,
    pub cameras: usize,
    pub streams_received: usize,
    pub streams_expected: usize,
    /// Streams that should have reached a receiver and never did (their packets count lost).
    pub streams_missing: usize,
    pub packets_sent_per_s: f64,
    pub megabits_sent_per_s: f64,
    pub forwarded_per_s: f64,
    pub wall_video: Percentiles,
    pub wall_audio: Percentiles,
    pub participant_audio: Percentiles,
    pub all: Percentiles,
    pub expected: u64,
    pub received: u64,
    pub loss_percent: f64,
    pub hub_cpu_percent: f64,
    pub hub_rss_before_mib: f64,
    pub hub_rss_mib: f64,
    pub hub_dropped_by_flood_limit: f64,
    pub loadtest_cpu_percent: f64,
    pub machine_idle_percent: f64,
    pub samples: Vec<Sample>,
    pub errors: u64,
    pub first_errors: Vec<String>,
    pub targets: Targets,
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn forwarded(target: &Target) -> Result<(f64, f64), String> {
    let (_, m) = http_get(target.addr, "/metrics").await?;
    Ok((
        metric(&m, "gridhub_session_packets_forwarded_total"),
        metric(&m, "gridhub_session_packets_dropped_total"),
    ))
}

pub async fn run(
    target: &Target,
    org: Arc<Org>,
    opts: &SessionsOptions,
) -> Result<SessionsSummary, String> {
    now_us();
    let auth = Authority::new(&target.secret)?;
    let now = gridhub::clock::now_ms() / 1000;
    let plan = plan(&org, opts.sessions, opts.publishers)?;
    let hub_before = scrape(target.addr).await?;
    let shared = Arc::new(Shared::default());
    let stop = CancellationToken::new();
    let answered: Arc<AtomicU64> = Arc::default();
    let mut members = JoinSet::new();

    let t0 = Instant::now();
    let token = |n: NodeIdx, seat: Seat| {
        auth.mint_seat(
            &org,
            org.id(n).as_str(),
            Role::default_for(org.tier(n)),
            seat,
            24 * 3600,
            now,
        )
        .map_err(|e| e.to_string())
    };
    let mut ssrc = 1_000u32;
    for (i, (center, workers)) in plan.iter().enumerate() {
        let o = open(target, &token(*center, Seat::MAIN)?).await?;
        let heartbeat = Duration::from_millis(
            o.hello["data"]["heartbeat"]["interval_ms"]
                .as_u64()
                .unwrap_or(20_000),
        );
        let mut ws = o.ws;
        let invite: Vec<&str> = workers.iter().map(|w| org.id(*w).as_str()).collect();
        send(
            &mut ws,
            json!({"v":1,"id":"c","type":"session.create","data":{"title":format!("loadtest {}", i + 1),"invite":invite}}),
        )
        .await?;
        let id = loop {
            let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .map_err(|_| "no answer to session.create in 10 s")?;
            let Some(Ok(Message::Text(t))) = m else {
                return Err(format!("session.create: the connection ended: {m:?}"));
            };
            let v: Value = serde_json::from_str(&t).map_err(|e| e.to_string())?;
            if v["type"] == "reply" {
                break v["data"]["session"]["session"]
                    .as_u64()
                    .ok_or_else(|| format!("session.create answered {v}"))?;
            }
            if v["type"] == "error" {
                return Err(format!("session {} not created: {v}", i + 1));
            }
        };

        members.spawn(run_member(
            Member {
                ws,
                me: org.id(*center).to_string(),
                session: id,
                wall: true,
                publish: None,
                heartbeat,
            },
            Arc::clone(&shared),
            stop.clone(),
            Arc::clone(&answered),
        ));
        for (k, w) in workers.iter().enumerate() {
            let o = open(target, &token(*w, Seat::MAIN)?).await?;
            let mut ws = o.ws;
            send(
                &mut ws,
                json!({"v":1,"id":"j","type":"session.join","data":{"session":id}}),
            )
            .await?;
            ssrc += 2;
            members.spawn(run_member(
                Member {
                    ws,
                    me: org.id(*w).to_string(),
                    session: id,
                    wall: false,
                    publish: Some(Publish {
                        me: org.id(*w).to_string(),
                        ssrc,
                        talks: k < opts.talkers,
                        video_kbps: opts.video_kbps,
                        fps: opts.fps,
                    }),
                    heartbeat,
                },
                Arc::clone(&shared),
                stop.clone(),
                Arc::clone(&answered),
            ));
        }
    }
    let peers = plan.len() * (opts.publishers + 1);
    let cameras = plan.len() * opts.publishers;
    // Set up: every camera on its commander's console.
    let deadline = Instant::now() + Duration::from_secs(120);
    while (shared.wall_cameras.load(Relaxed) as usize) < cameras {
        if Instant::now() > deadline || members.is_empty() {
            break;
        }
        if let Some(Ok(Err(e))) =
            tokio::time::timeout(Duration::from_millis(200), members.join_next())
                .await
                .ok()
                .flatten()
        {
            shared.errors.record(&e);
        }
    }
    let set_up_s = t0.elapsed().as_secs_f64();
    println!(
        "  set up in {set_up_s:.1} s: {} of {cameras} cameras on the consoles, {} offers answered; warming up {} s",
        shared.wall_cameras.load(Relaxed),
        answered.load(Relaxed),
        opts.warmup.as_secs()
    );
    tokio::time::sleep(opts.warmup).await;

    // The measured window.
    let from = now_us();
    shared.window.from.store(from, Relaxed);
    shared.window.to.store(u64::MAX, Relaxed);
    let hub0 = scrape(target.addr).await?;
    let (fwd0, drop0) = forwarded(target).await?;
    let (own0, mach0) = (crate::own_cpu(), crate::machine_cpu());
    let (sent0, bytes0) = (
        shared.packets_sent.load(Relaxed),
        shared.bytes_sent.load(Relaxed),
    );
    let w0 = Instant::now();
    let mut samples = Vec::new();
    let (mut last_cpu, mut last_fwd, mut last_t) = (hub0.cpu_seconds, fwd0, Instant::now());
    let every = Duration::from_secs(5).min(opts.duration);
    while w0.elapsed() < opts.duration {
        tokio::time::sleep(every.min(opts.duration.saturating_sub(w0.elapsed()))).await;
        let h = scrape(target.addr).await?;
        let (f, _) = forwarded(target).await?;
        let dt = last_t.elapsed().as_secs_f64().max(1e-3);
        let s = Sample {
            at_s: w0.elapsed().as_secs_f64(),
            hub_cpu_percent: (h.cpu_seconds - last_cpu) / dt * 100.0,
            hub_rss_mib: h.rss_bytes / 1048576.0,
            forwarded_per_s: (f - last_fwd) / dt,
        };
        if samples.len() % 6 == 5 || w0.elapsed() >= opts.duration {
            println!(
                "  {:>4.0} s: hub {:.0} % CPU, {:.0} MiB, {:.0} packets forwarded a second",
                s.at_s, s.hub_cpu_percent, s.hub_rss_mib, s.forwarded_per_s
            );
        }
        (last_cpu, last_fwd, last_t) = (h.cpu_seconds, f, Instant::now());
        samples.push(s);
    }
    let window_s = w0.elapsed().as_secs_f64();
    shared.window.to.store(now_us(), Relaxed);
    let hub1: HubStats = scrape(target.addr).await?;
    let (fwd1, drop1) = forwarded(target).await?;
    let (own1, mach1) = (crate::own_cpu(), crate::machine_cpu());
    let (sent1, bytes1) = (
        shared.packets_sent.load(Relaxed),
        shared.bytes_sent.load(Relaxed),
    );
    // What was on its way when the window closed arrives.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (mut wall_video, mut wall_audio, mut part_audio, mut all) =
        (histogram(), histogram(), histogram(), histogram());
    let streams: Vec<_> = shared
        .streams
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let mut by_pair: HashMap<(String, String, RtpCodecKind), Arc<Mutex<Stream>>> = HashMap::new();
    for s in &streams {
        let g = s.lock().unwrap_or_else(|e| e.into_inner());
        let h = match (g.wall, g.kind) {
            (true, RtpCodecKind::Video) => &mut wall_video,
            (true, _) => &mut wall_audio,
            _ => &mut part_audio,
        };
        let _ = h.add(&g.latency);
        let _ = all.add(&g.latency);
        by_pair.insert(
            (g.receiver.clone(), g.publisher.clone(), g.kind),
            Arc::clone(s),
        );
    }
    // Loss against what each publisher wrote inside the window, for every stream that should
    // have reached a receiver — one that never arrived loses all of it.
    let written: HashMap<(String, RtpCodecKind), Arc<Written>> = shared
        .written
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let (mut expected, mut received, mut streams_expected, mut missing) =
        (0u64, 0u64, 0usize, 0usize);
    for (center, workers) in &plan {
        let ids: Vec<String> = workers.iter().map(|w| org.id(*w).to_string()).collect();
        let console = org.id(*center).to_string();
        let mut pairs = Vec::new();
        for p in &ids {
            pairs.push((console.clone(), p.clone(), RtpCodecKind::Video));
            pairs.push((console.clone(), p.clone(), RtpCodecKind::Audio));
            for r in ids.iter().filter(|r| *r != p) {
                pairs.push((r.clone(), p.clone(), RtpCodecKind::Audio));
            }
        }
        for (r, p, kind) in pairs {
            streams_expected += 1;
            let Some((first, last)) = written.get(&(p.clone(), kind)).and_then(|w| w.range())
            else {
                continue;
            };
            expected += u64::from(last - first) + 1;
            match by_pair.get(&(r, p, kind)) {
                Some(s) => {
                    received += s
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .received(first, last)
                }
                None => missing += 1,
            }
        }
    }

    // Ended by their commanders; every member then leaves.
    stop.cancel();
    while let Ok(Some(j)) = tokio::time::timeout(Duration::from_secs(30), members.join_next()).await
    {
        if let Ok(Err(e)) = j {
            shared.errors.record(&e);
        }
    }

    let hub_cpu_percent = (hub1.cpu_seconds - hub0.cpu_seconds) / window_s * 100.0;
    let loss_percent = if expected == 0 {
        100.0
    } else {
        (expected - received.min(expected)) as f64 / expected as f64 * 100.0
    };
    let allp = Percentiles::of(&all);
    let (busy, idle) = (mach1.0 - mach0.0, mach1.1 - mach0.1);
    Ok(SessionsSummary {
        machine: Machine::read(),
        sessions: plan.len(),
        publishers_per_session: opts.publishers,
        talkers_per_session: opts.talkers.min(opts.publishers),
        video_kbps: opts.video_kbps,
        fps: opts.fps,
        window_s,
        set_up_s,
        peers,
        wall_cameras: shared.wall_cameras.load(Relaxed),
        cameras,
        streams_received: streams.len(),
        streams_expected,
        streams_missing: missing,
        packets_sent_per_s: (sent1 - sent0) as f64 / window_s,
        megabits_sent_per_s: (bytes1 - bytes0) as f64 * 8.0 / window_s / 1e6,
        forwarded_per_s: (fwd1 - fwd0) / window_s,
        wall_video: Percentiles::of(&wall_video),
        wall_audio: Percentiles::of(&wall_audio),
        participant_audio: Percentiles::of(&part_audio),
        all: allp,
        expected,
        received,
        loss_percent,
        hub_cpu_percent,
        hub_rss_before_mib: hub_before.rss_bytes / 1048576.0,
        hub_rss_mib: hub1.rss_bytes / 1048576.0,
        hub_dropped_by_flood_limit: drop1 - drop0,
        loadtest_cpu_percent: (own1 - own0) / window_s * 100.0,
        machine_idle_percent: idle / (busy + idle).max(1e-9) * 100.0,
        samples,
        errors: shared.errors.count(),
        first_errors: shared.errors.first(),
        targets: Targets {
            latency_p99_under_10ms: allp.count > 0 && allp.p99_ms < 10.0,
            loss_under_1_percent: loss_percent < 1.0,
            hub_cpu_at_most_one_core: hub_cpu_percent <= 100.0,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_and_latency_count_only_the_window() {
        let w = Window::default();
        w.from.store(1_000, Relaxed);
        w.to.store(u64::MAX, Relaxed);
        let written = Written::new();
        assert_eq!(written.range(), None);
        let mut s = Stream::new(RtpCodecKind::Video, true, "c".into(), "p".into());
        // Before the window: neither latency nor loss.
        written.wrote(4, 500, &w);
        s.packet(4, 500, 600, &w);
        // In it: 5..=13 written; 8 lost and 10 repeated.
        for i in 5..=13 {
            written.wrote(i, 2_000, &w);
        }
        for i in [5u32, 6, 7, 9, 10, 10, 11, 12, 13] {
            s.packet(i, 2_000, 2_500, &w);
        }
        assert_eq!(written.range(), Some((5, 13)));
        assert_eq!(s.received(5, 13), 8);
        assert_eq!(s.latency.len(), 9);
        assert_eq!(s.latency.value_at_quantile(0.5), 500);
        let mut payload = [0u8; 13];
        let sent = stamp(&mut payload, 1, 77);
        assert_eq!(stamp_of(&payload, 1), Some((sent, 77)));
        assert_eq!(stamp_of(&payload[..12], 1), None);
    }

    #[test]
    fn plans_disjoint_workers_within_each_center() {
        let org = Org::load(std::path::Path::new("../config/org/jiamusi.csv")).unwrap();
        let p = plan(&org, 27, 10).unwrap();
        assert_eq!(p.len(), 27);
        assert_eq!(org.tier(p[0].0), Tier::City);
        let mut all = HashSet::new();
        for (c, ws) in &p {
            assert_eq!(ws.len(), 10);
            for w in ws {
                assert!(org.contains(*c, *w));
                assert!(all.insert(*w), "a worker in two sessions");
            }
        }
        assert!(plan(&org, 200, 10).is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn small_sessions_reach_every_console_and_lose_nothing() {
        let hub = crate::testhub::TestHub::start("sessions", |_| {}).await;
        let opts = SessionsOptions {
            sessions: 2,
            publishers: 3,
            video_kbps: 200,
            fps: 15,
            talkers: 1,
            warmup: Duration::from_secs(1),
            duration: Duration::from_secs(3),
        };
        let s = run(&hub.target, hub.org.clone(), &opts).await.unwrap();
        assert_eq!(s.errors, 0, "{:?}", s.first_errors);
        assert_eq!(s.wall_cameras, 6);
        // Each console: 3 cameras and 3 microphones; each worker: the other two's sound.
        assert_eq!(s.streams_expected, 2 * (6 + 3 * 2));
        assert_eq!(s.streams_received, s.streams_expected);
        assert_eq!(s.streams_missing, 0);
        assert!(s.wall_video.count > 200, "{:?}", s.wall_video);
        assert!(s.participant_audio.count > 100, "{:?}", s.participant_audio);
        assert!(
            s.expected > 0 && s.loss_percent < 5.0,
            "{} %",
            s.loss_percent
        );
        assert!(s.forwarded_per_s > 100.0, "{}", s.forwarded_per_s);
        hub.stop().await;
    }
}

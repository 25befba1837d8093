//! The selective forwarding unit: the media of command sessions. Every member present has one
//! peer connection to the hub (`webrtc` crate). What a member publishes arrives on it; each RTP
//! packet is forwarded, untouched but for its SSRC, to every other member of the session on a
//! track of theirs — never mixed, never transcoded. The hub is always the offerer: a member's
//! peer connection is offered when it joins and offered again whenever the tracks it receives
//! change; the member answers (a browser attaches its camera and microphone to the first video
//! and audio transceivers, which the hub offers to receive).
//!
//! Owned by the sessions service's task (single-threaded use); the peer connections' own tasks
//! report new tracks back to it as `MediaEvent`s. Packets go through a bounded broadcast per
//! published track: a subscriber too slow to keep up loses packets (and asks for a keyframe),
//! never holds memory.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use rtc::interceptor::Registry;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::RTCOfferOptions;
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use tokio::sync::{broadcast, mpsc};
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCIceCandidateInit,
    RTCSessionDescription,
};
use webrtc::rtp_transceiver::RtpSender;

use super::core::SessionId;
use crate::auth::Seat;
use crate::backplane::{Outbound, To, Via};
use crate::org::{NodeIdx, Org};
use crate::transport::protocol::encode;

/// A member's seat: whose peer connection.
pub type Key = (NodeIdx, Seat);

/// Packets buffered per published track for its slowest subscriber: a broadcast keeps its
/// last `BUFFER` packets (and their payloads) whoever has read them, so this is also memory —
/// ~4 s of 500 kbit/s video, a keyframe burst of a 1080p camera.
const BUFFER: usize = 256;

/// Packets kept per stream the hub sends, to answer a viewer's NACKs. The crate's default,
/// 1,024, kept 17 s of every forwarded camera alive (most of the hub's memory with many
/// viewers); 256 is 4 s of 500 kbit/s video, far past any retransmission worth making.
const NACK_HISTORY: u16 = 256;

/// The crate's default chain (NACK responder and generator, transport-wide congestion
/// feedback for publishers, RTCP reports) with a NACK history of `NACK_HISTORY` packets.
fn interceptors(media: &mut MediaEngine) -> webrtc::error::Result<Registry> {
    use rtc::interceptor::{NackGeneratorBuilder, NackResponderBuilder, Slot};
    use rtc::peer_connection::configuration::interceptor_registry::{
        configure_rtcp_reports, configure_simulcast_extension_headers, configure_twcc_receiver_only,
    };
    use rtc::rtp_transceiver::rtp_sender::RTCPFeedback;
    for parameter in ["", "pli"] {
        media.register_feedback(
            RTCPFeedback {
                typ: "nack".into(),
                parameter: parameter.into(),
            },
            RtpCodecKind::Video,
        );
    }
    let registry = Registry::new()
        .with(
            Slot::NackResponder,
            NackResponderBuilder::new().with_size(NACK_HISTORY).build(),
        )
        .with(Slot::NackGenerator, NackGeneratorBuilder::new().build());
    configure_simulcast_extension_headers(media)?;
    let registry = configure_twcc_receiver_only(registry, media)?;
    Ok(configure_rtcp_reports(registry))
}

/// What the peer connections' tasks tell the service.
pub enum MediaEvent {
    Track {
        session: SessionId,
        from: Key,
        /// Which peer connection of that member (a rejoin makes a new one): news of an older
        /// one is ignored.
        generation: u64,
        track: Arc<dyn TrackRemote>,
    },
    /// A member's media connected (or reconnected): what it receives needs keyframes.
    Connected {
        session: SessionId,
        key: Key,
        generation: u64,
    },
    /// A candidate of the hub's side of a member's connection, for the member (trickled: the
    /// offer does not wait for gathering).
    Candidate {
        session: SessionId,
        key: Key,
        generation: u64,
        init: RTCIceCandidateInit,
    },
}

/// Keyframe requests reach a publisher at most this often: several viewers losing the same
/// packet, or one asking in a loop, cost the publisher one keyframe, not a stream of them.
const PLI_GAP: Duration = Duration::from_millis(250);

struct Source {
    codec: RTCRtpCodec,
    tx: broadcast::Sender<rtc::rtp::Packet>,
    /// Video only: asks its publisher for a keyframe (spaced by `PLI_GAP`; a request while
    /// one is waiting is the same request).
    keyframe: Option<mpsc::Sender<()>>,
    /// Audio only: the commander muted its publisher.
    muted: Arc<AtomicBool>,
}

/// A forward's gate. Its writer sends only once its subscriber has answered an offer that
/// carries it: packets on an SSRC the subscriber's browser has not been told of yet become an
/// "unsignaled" stream there, which then clashes with the offer that signals it. A forward
/// whose publisher or subscriber left is stopped (its task ends). One whose camera left the
/// subscriber's view is paused, not taken away: its m-line stays for the next time that camera
/// is featured, so moving the spotlight back and forth never grows the member's SDP, and a
/// paused task reads nothing (it drops its broadcast receiver and waits to be woken).
#[derive(Default)]
struct Gate {
    state: AtomicU8,
    paused: AtomicBool,
    wake: tokio::sync::Notify,
}

impl Gate {
    fn stop(&self) {
        self.state.store(STOPPED, Relaxed);
        self.wake.notify_one();
    }

    fn pause(&self, paused: bool) {
        self.paused.store(paused, Relaxed);
        self.wake.notify_one();
    }
}

type Live = Arc<Gate>;
const PENDING: u8 = 0;
const LIVE: u8 = 1;
const STOPPED: u8 = 2;

/// Who is shown which cameras. Everyone present hears everyone (the commander and each
/// other); the commander's seat and the walls are shown every camera; a participant is shown
/// only the featured ones — the commander's and the spotlighted member's — so a worker's phone
/// is not sent nine cameras it has no room to show, and the hub forwards what is looked at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct View {
    pub sees_all: HashSet<Key>,
    pub featured: Vec<NodeIdx>,
}

impl View {
    /// Whether `peer` receives the source `(from, kind)`.
    fn wants(&self, peer: Key, (from, kind): (Key, RtpCodecKind)) -> bool {
        from != peer
            && (kind == RtpCodecKind::Audio
                || self.sees_all.contains(&peer)
                || self.featured.contains(&from.0))
    }
}

struct Peer {
    pc: Arc<dyn PeerConnection>,
    generation: u64,
    /// When this member last asked for an ICE restart (they are limited: each is an offer).
    restarted: Option<std::time::Instant>,
    /// Forwards added since the last offer was made, and those in the offer out now.
    unoffered: Vec<((Key, RtpCodecKind), Live)>,
    offered: Vec<((Key, RtpCodecKind), Live)>,
    /// What this member receives: the publisher and kind, the sender carrying it and its gate.
    forwards: HashMap<(Key, RtpCodecKind), (Arc<dyn RtpSender>, Live)>,
    /// An offer awaits its answer; `again`: things changed meanwhile, offer once more after.
    offering: bool,
    again: bool,
}

#[derive(Default)]
struct Room {
    peers: HashMap<Key, Peer>,
    sources: HashMap<(Key, RtpCodecKind), Source>,
    /// Members whose sound the commander muted: a track they publish later starts muted.
    muted: HashSet<NodeIdx>,
    view: View,
}

struct Events {
    session: SessionId,
    key: Key,
    generation: u64,
    tx: mpsc::Sender<MediaEvent>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Events {
    async fn on_connection_state_change(
        &self,
        state: webrtc::peer_connection::RTCPeerConnectionState,
    ) {
        if state == webrtc::peer_connection::RTCPeerConnectionState::Connected {
            let _ = self.tx.try_send(MediaEvent::Connected {
                session: self.session,
                key: self.key,
                generation: self.generation,
            });
        }
    }

    async fn on_ice_candidate(&self, ev: webrtc::peer_connection::RTCPeerConnectionIceEvent) {
        if let Ok(init) = ev.candidate.to_json() {
            let _ = self.tx.try_send(MediaEvent::Candidate {
                session: self.session,
                key: self.key,
                generation: self.generation,
                init,
            });
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        // Full means the service is far behind (the queue holds every member joining at once):
        // the track is lost rather than the connection's task blocked, and said.
        let sent = self.tx.try_send(MediaEvent::Track {
            session: self.session,
            from: self.key,
            generation: self.generation,
            track,
        });
        if sent.is_err() {
            tracing::warn!(session = %self.session, "session media: a published track was lost (the service is far behind)");
        }
    }
}

/// Where published tracks are recorded, when they are.
pub struct Recorder {
    pub data_dir: std::path::PathBuf,
    pub store: Arc<crate::store::Store>,
    pub clock: crate::clock::Clock,
}

impl Recorder {
    /// Records one published track until it ends: a file under the data folder, and its row.
    fn record(
        self: &Arc<Self>,
        session: SessionId,
        node: String,
        kind: RtpCodecKind,
        mut rx: broadcast::Receiver<rtc::rtp::Packet>,
    ) {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let started = me.clock.now_ms();
            let (kind_s, ext) = match kind {
                RtpCodecKind::Audio => ("audio", "ogg"),
                _ => ("video", "ivf"),
            };
            let rel = format!("recordings/{session}/{node}-{kind_s}-{started}.{ext}");
            let path = me.data_dir.join(&rel);
            let opened = std::fs::create_dir_all(path.parent().expect("a file in a folder"))
                .and_then(|()| std::fs::File::create(&path))
                .map(std::io::BufWriter::new);
            let file = match opened {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(session = %session, "recording not started: {}: {e}", path.display());
                    return;
                }
            };
            let mut writer: Box<dyn rtc::media::io::Writer + Send> = match kind {
                RtpCodecKind::Audio => {
                    match rtc::media::io::ogg_writer::OggWriter::new(file, 48_000, 2) {
                        Ok(w) => Box::new(w),
                        Err(e) => return tracing::warn!("recording not started: {e}"),
                    }
                }
                _ => {
                    let header = rtc::media::io::ivf_reader::IVFFileHeader {
                        signature: *b"DKIF",
                        version: 0,
                        header_size: 32,
                        four_cc: *b"VP80",
                        width: 640,
                        height: 480,
                        timebase_denominator: 30,
                        timebase_numerator: 1,
                        num_frames: 0,
                        unused: 0,
                    };
                    match rtc::media::io::ivf_writer::IVFWriter::new(file, &header) {
                        Ok(w) => Box::new(w),
                        Err(e) => return tracing::warn!("recording not started: {e}"),
                    }
                }
            };
            let (id_tx, mut id_rx) = crate::store::inbox();
            let row = (session.0, node.clone(), kind_s, rel.clone(), started);
            me.store
                .submit_async(crate::store::Job::query(
                    move |c| {
                        super::records::recording_started(c, row.0, &row.1, row.2, &row.3, row.4)
                    },
                    &id_tx,
                    |r| r,
                ))
                .await;
            let id = match id_rx.recv().await {
                Some(Ok(id)) => id,
                _ => {
                    return tracing::warn!(session = %session, "recording not listed: the store failed");
                }
            };
            let (mut packets, mut bytes) = (0u64, 0u64);
            loop {
                match rx.recv().await {
                    Ok(p) => {
                        packets += 1;
                        bytes += p.payload.len() as u64;
                        // A packet the format cannot take (before the first keyframe, say) is
                        // skipped by the writer; an I/O error ends the recording.
                        if let Err(e) = writer.write_rtp(&p)
                            && e.to_string().contains("os error")
                        {
                            tracing::warn!(session = %session, "recording cut: {e}");
                            break;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::debug!(session = %session, "recording lost {n} packets");
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
            let _ = writer.close();
            let ended = me.clock.now_ms();
            me.store
                .submit_async(crate::store::Job::new(move |c| {
                    super::records::recording_ended(c, id, ended, packets, bytes)
                }))
                .await;
        });
    }
}

pub struct Sfu {
    ip: IpAddr,
    /// Records published tracks (`sessions.record`).
    recorder: Option<Arc<Recorder>>,
    org: Arc<Org>,
    out: Arc<dyn Outbound>,
    events: mpsc::Sender<MediaEvent>,
    rooms: HashMap<SessionId, Room>,
    /// Packets forwarded to subscribers, over the hub's life.
    pub forwarded: Arc<AtomicU64>,
    /// The last peer connection's generation.
    generations: u64,
    flood: Flood,
}

/// How many packets a published track may bring, and the count of those dropped past it.
#[derive(Clone)]
pub struct Flood {
    pub per_sec: u32,
    pub dropped: Arc<AtomicU64>,
}

fn err(e: webrtc::error::Error) -> String {
    e.to_string()
}

impl Sfu {
    pub fn new(
        events: usize,
        ip: IpAddr,
        org: Arc<Org>,
        out: Arc<dyn Outbound>,
        recorder: Option<Recorder>,
        forwarded: Arc<AtomicU64>,
        flood: Flood,
    ) -> (Sfu, mpsc::Receiver<MediaEvent>) {
        let (events, rx) = mpsc::channel(events);
        (
            Sfu {
                ip,
                recorder: recorder.map(Arc::new),
                org,
                out,
                events,
                rooms: HashMap::new(),
                forwarded,
                flood,
                generations: 0,
            },
            rx,
        )
    }

    /// Peer connections open now.
    pub fn peers(&self) -> usize {
        self.rooms.values().map(|r| r.peers.len()).sum()
    }

    /// A member came into a session: its peer connection, receiving what the others publish
    /// and — unless it only watches — able to publish; then the hub's offer.
    pub async fn admit(
        &mut self,
        session: SessionId,
        key: Key,
        publishes: bool,
        muted: bool,
    ) -> Result<(), String> {
        // The same seat again (its page reloaded): its old connection and what it published go.
        self.remove(session, key).await;
        let room = self.rooms.entry(session).or_default();
        if muted {
            room.muted.insert(key.0);
        } else {
            room.muted.remove(&key.0);
        }
        self.generations += 1;
        let generation = self.generations;
        let mut media = MediaEngine::default();
        // Opus as the defaults have it, with discontinuous transmission asked for: a member who
        // is silent (most of a command session's members, most of the time) sends a packet
        // every 400 ms instead of 50 a second, to the hub and through it to everyone. Registered
        // first, so the defaults' Opus (same payload type) does not replace it.
        media
            .register_codec(
                RTCRtpCodecParameters {
                    rtp_codec: RTCRtpCodec {
                        mime_type: "audio/opus".into(),
                        clock_rate: 48_000,
                        channels: 2,
                        sdp_fmtp_line: "minptime=10;useinbandfec=1;usedtx=1".into(),
                        rtcp_feedback: vec![],
                    },
                    payload_type: 111,
                },
                RtpCodecKind::Audio,
            )
            .map_err(err)?;
        media.register_default_codecs().map_err(err)?;
        let registry = super::keyframes::register(interceptors(&mut media).map_err(err)?);

        let events = Arc::new(Events {
            session,
            key,
            generation,
            tx: self.events.clone(),
        });
        let runtime = webrtc::runtime::default_runtime().ok_or("no async runtime for WebRTC")?;
        let pc: Arc<dyn PeerConnection> = Arc::new(
            PeerConnectionBuilder::new()
                .with_media_engine(media)
                .with_interceptor_registry(registry)
                .with_handler(events as Arc<dyn PeerConnectionEventHandler>)
                .with_runtime(runtime)
                .with_udp_addrs(vec![format!("{}:0", self.ip)])
                .build()
                .await
                .map_err(err)?,
        );
        if publishes {
            for kind in [RtpCodecKind::Audio, RtpCodecKind::Video] {
                let init = RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Recvonly,
                    streams: vec![],
                    send_encodings: vec![],
                };
                pc.add_transceiver_from_kind(kind, Some(init))
                    .await
                    .map_err(err)?;
            }
        }
        let mut peer = Peer {
            pc,
            generation,
            restarted: None,
            unoffered: Vec::new(),
            offered: Vec::new(),
            forwards: HashMap::new(),
            offering: false,
            again: false,
        };
        let room = self.rooms.entry(session).or_default();
        let from_others: Vec<(Key, RtpCodecKind)> = room
            .sources
            .keys()
            .filter(|s| room.view.wants(key, **s))
            .copied()
            .collect();
        for s in from_others {
            let src = &room.sources[&s];
            Self::forward(&self.org, &self.forwarded, &mut peer, s, src).await?;
        }
        room.peers.insert(key, peer);
        // The keyframes it needs are asked for when it answers (`answer`), for what it then
        // starts to receive: asked now, they would reach nobody.
        self.offer(session, key, false).await;
        Ok(())
    }

    /// Adds to `peer` a track carrying source `s`, and the task that feeds it.
    async fn forward(
        org: &Org,
        forwarded: &Arc<AtomicU64>,
        peer: &mut Peer,
        s: (Key, RtpCodecKind),
        src: &Source,
    ) -> Result<(), String> {
        let mut ssrc = [0u8; 4];
        getrandom::fill(&mut ssrc).map_err(|e| e.to_string())?;
        let ssrc = u32::from_le_bytes(ssrc);
        let publisher = org.id(s.0.0).to_string();
        // The stream id names the publisher, so a page knows whose camera a track is.
        let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
            publisher.clone(),
            format!("{publisher}-{}", s.1),
            format!("{publisher} {}", s.1),
            s.1,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: src.codec.clone(),
                ..Default::default()
            }],
        )));
        // A transceiver of its own, send-only: `add_track` would reuse the member's receiving
        // transceiver of the same kind (the one its own camera or microphone arrives on).
        let init = RTCRtpTransceiverInit {
            direction: RTCRtpTransceiverDirection::Sendonly,
            streams: vec![],
            send_encodings: vec![],
        };
        let sender = peer
            .pc
            .add_transceiver_from_track(Arc::clone(&track) as Arc<dyn TrackLocal>, Some(init))
            .await
            .map_err(err)?
            .sender()
            .await
            .map_err(err)?
            .ok_or("a send-only transceiver without a sender")?;
        let source = src.tx.downgrade();
        let mut rx = Some(src.tx.subscribe());
        let forwarded = Arc::clone(forwarded);
        let live: Live = Arc::default();
        peer.unoffered.push((s, Arc::clone(&live)));
        let gate = Arc::clone(&live);
        let keyframe = src.keyframe.clone();
        tokio::spawn(async move {
            // The viewer's keyframe requests come back on the track it receives: relayed.
            let mut feedback = keyframe.is_some();
            loop {
                if live.state.load(Relaxed) == STOPPED {
                    return;
                }
                if live.paused.load(Relaxed) {
                    // Out of view: nothing read meanwhile; back in view, from the live edge.
                    rx = None;
                    let woken = live.wake.notified();
                    if live.paused.load(Relaxed) && live.state.load(Relaxed) != STOPPED {
                        woken.await;
                    }
                    continue;
                }
                let Some(r) = rx.as_mut() else {
                    // The publisher's track has ended if its broadcast is gone.
                    let Some(tx) = source.upgrade() else { return };
                    rx = Some(tx.subscribe());
                    continue;
                };
                tokio::select! {
                    r = r.recv() => match r {
                        Ok(mut p) => {
                            match live.state.load(Relaxed) {
                                PENDING => continue,
                                STOPPED => return,
                                _ => {}
                            }
                            p.header.ssrc = ssrc;
                            if track.write_rtp(p).await.is_err() {
                                return;
                            }
                            forwarded.fetch_add(1, Relaxed);
                        }
                        // Too slow: what was missed is lost (the decoder asks for a keyframe).
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    ev = track.poll(), if feedback => match ev {
                        Some(TrackLocalEvent::OnRtcpPacket(_)) => {
                            if let Some(k) = &keyframe {
                                let _ = k.try_send(());
                            }
                        }
                        Some(_) => {}
                        // Unbound: the sender was taken away, or the connection closed.
                        None => feedback = false,
                    },
                    // Paused or stopped while waiting for a packet.
                    _ = live.wake.notified() => {}
                }
            }
        });
        peer.forwards.insert(s, (sender, gate));
        Ok(())
    }

    /// Offers `key`'s peer connection (again), unless an offer is out: then once it is answered.
    async fn offer(&mut self, session: SessionId, key: Key, restart: bool) {
        let Some(peer) = self
            .rooms
            .get_mut(&session)
            .and_then(|r| r.peers.get_mut(&key))
        else {
            return;
        };
        if peer.offering && !restart {
            peer.again = true;
            return;
        }
        // Nothing to negotiate yet (a wall joining before anyone publishes): the first forward
        // brings the first offer.
        if peer.pc.get_transceivers().await.is_empty() {
            return;
        }
        let made = async {
            let offer = peer
                .pc
                .create_offer(Some(RTCOfferOptions {
                    ice_restart: restart,
                }))
                .await
                .map_err(err)?;
            // The hub's candidates are trickled as they are gathered (`MediaEvent::Candidate`):
            // the service never waits on gathering.
            peer.pc.set_local_description(offer).await.map_err(err)?;
            peer.pc
                .local_description()
                .await
                .map(|d| d.sdp)
                .ok_or_else(|| "no local description after the offer".to_owned())
        }
        .await;
        match made {
            Ok(sdp) => {
                peer.offering = true;
                peer.again = false;
                let now_offered: Vec<_> = peer.unoffered.drain(..).collect();
                peer.offered.extend(now_offered);
                #[derive(serde::Serialize)]
                struct Offer<'a> {
                    session: SessionId,
                    sdp: &'a str,
                }
                let f = encode("session.media.offer", None, &Offer { session, sdp: &sdp });
                self.out.send(To::Seat(key.0, key.1), &f, Via::Post);
            }
            Err(e) => tracing::warn!(session = %session, "session media: no offer made: {e}"),
        }
    }

    /// The member's answer to the hub's offer.
    pub async fn answer(
        &mut self,
        session: SessionId,
        key: Key,
        sdp: String,
    ) -> Result<(), String> {
        let peer = self
            .rooms
            .get_mut(&session)
            .and_then(|r| r.peers.get_mut(&key))
            .ok_or("no media offer is out to you in this session")?;
        if !peer.offering {
            return Err("no media offer is out to you in this session; answer the last one".into());
        }
        let answer = RTCSessionDescription::answer(sdp).map_err(err)?;
        peer.pc.set_remote_description(answer).await.map_err(err)?;
        peer.offering = false;
        let started: Vec<(Key, RtpCodecKind)> = peer
            .offered
            .drain(..)
            .map(|(s, live)| {
                // A forward stopped while its offer was out stays stopped.
                let _ = live.state.compare_exchange(PENDING, LIVE, Relaxed, Relaxed);
                (s, live.paused.load(Relaxed))
            })
            .filter(|(_, paused)| !paused)
            .map(|(s, _)| s)
            .collect();
        let again = peer.again;
        // What it now receives starts on a keyframe.
        if let Some(room) = self.rooms.get(&session) {
            for s in started {
                if s.1 == RtpCodecKind::Video
                    && let Some(src) = room.sources.get(&s)
                {
                    pli(src);
                }
            }
        }
        if again {
            self.offer(session, key, false).await;
        }
        Ok(())
    }

    /// Sends a candidate of the hub's side to the member, if it is still that connection's.
    pub fn trickle(
        &self,
        session: SessionId,
        key: Key,
        generation: u64,
        init: RTCIceCandidateInit,
    ) {
        let current = self
            .rooms
            .get(&session)
            .and_then(|r| r.peers.get(&key))
            .is_some_and(|p| p.generation == generation);
        if !current {
            return;
        }
        #[derive(serde::Serialize)]
        struct Candidate {
            session: SessionId,
            candidate: RTCIceCandidateInit,
        }
        let f = encode(
            "session.media.candidate",
            None,
            &Candidate {
                session,
                candidate: init,
            },
        );
        self.out.send(To::Seat(key.0, key.1), &f, Via::Post);
    }

    /// A candidate the member trickled.
    pub async fn candidate(
        &mut self,
        session: SessionId,
        key: Key,
        init: RTCIceCandidateInit,
    ) -> Result<(), String> {
        let peer = self
            .rooms
            .get(&session)
            .and_then(|r| r.peers.get(&key))
            .ok_or("you have no media connection in this session")?;
        peer.pc.add_ice_candidate(init).await.map_err(err)
    }

    /// The member's network changed: a new offer with fresh ICE credentials. One every few
    /// seconds at most, and not while an offer is out: each takes the service's time.
    pub async fn restart(&mut self, session: SessionId, key: Key) -> Result<(), String> {
        let peer = self
            .rooms
            .get_mut(&session)
            .and_then(|r| r.peers.get_mut(&key))
            .ok_or("you have no media connection in this session")?;
        if peer.offering {
            return Err("an offer is out to you: answer it first".into());
        }
        if peer
            .restarted
            .is_some_and(|t| t.elapsed() < Duration::from_secs(5))
        {
            return Err("an ICE restart was made less than 5 s ago; wait for it".into());
        }
        peer.restarted = Some(std::time::Instant::now());
        self.offer(session, key, true).await;
        Ok(())
    }

    /// A member published a track: every other member receives it.
    pub async fn track(
        &mut self,
        session: SessionId,
        from: Key,
        generation: u64,
        track: Arc<dyn TrackRemote>,
    ) {
        let kind = track.kind().await;
        let ssrc = track.ssrcs().await.first().copied();
        let codec = match ssrc {
            Some(s) => track.codec(s).await,
            None => None,
        };
        let room = self.rooms.get_mut(&session);
        // A track not taken is still read to its end: the crate queues its packets for the
        // application, and a queue nobody reads is an error logged per packet.
        let ignored = match (&room, ssrc, &codec) {
            (None, ..) => Some("the session's media is gone"),
            // News of a connection the member has replaced since.
            (Some(r), ..)
                if r.peers
                    .get(&from)
                    .is_none_or(|p| p.generation != generation) =>
            {
                Some("from a connection replaced since")
            }
            (_, None, _) => Some("no SSRC"),
            (_, _, None) => Some("no negotiated codec"),
            // One source per member and kind: a second track of the same kind (its
            // retransmission stream, or the same media announced again) would replace the
            // forwards every member has already negotiated, under new SSRCs their browsers
            // refuse to demultiplex.
            (_, _, Some(c)) if c.mime_type.to_ascii_lowercase().ends_with("/rtx") => {
                Some("a retransmission stream")
            }
            (Some(r), ..) if r.sources.contains_key(&(from, kind)) => {
                Some("a second track of the same kind")
            }
            _ => None,
        };
        let (Some(room), Some(ssrc), Some(codec), None) = (room, ssrc, codec, ignored) else {
            tracing::info!(
                session = %session,
                publisher = %self.org.id(from.0),
                "session media: a {kind} track not forwarded: {}",
                ignored.unwrap_or("")
            );
            tokio::spawn(async move { while track.poll().await.is_some() {} });
            return;
        };
        let (tx, _) = broadcast::channel(BUFFER);
        // Subscribed before the first packet is read: a recording holds every frame sent.
        if let Some(r) = &self.recorder {
            r.record(
                session,
                self.org.id(from.0).to_string(),
                kind,
                tx.subscribe(),
            );
        }
        let muted = Arc::new(AtomicBool::new(
            kind == RtpCodecKind::Audio && room.muted.contains(&from.0),
        ));
        let (reader_tx, reader_muted, reader_track) =
            (tx.clone(), Arc::clone(&muted), Arc::clone(&track));
        let keyframe = (kind == RtpCodecKind::Video).then(|| {
            let (want, mut wanted) = mpsc::channel::<()>(1);
            // Weak: the broadcast closes (and a recording finishes) when the reader ends. The
            // task ends when the source and every forward of it are gone.
            let weak = Arc::downgrade(&track);
            tokio::spawn(async move {
                let mut last: Option<tokio::time::Instant> = None;
                while wanted.recv().await.is_some() {
                    if let Some(l) = last {
                        tokio::time::sleep_until(l + PLI_GAP).await;
                    }
                    let Some(t) = weak.upgrade() else { return };
                    last = Some(tokio::time::Instant::now());
                    let pli = PictureLossIndication {
                        sender_ssrc: 0,
                        media_ssrc: ssrc,
                    };
                    if t.write_rtcp(vec![Box::new(pli)]).await.is_err() {
                        return;
                    }
                }
            });
            want
        });
        let (per_sec, dropped) = (
            f64::from(self.flood.per_sec),
            Arc::clone(&self.flood.dropped),
        );
        tokio::spawn(async move {
            // A token bucket: `per_sec` a second, as many again in a burst.
            let (mut tokens, mut last) = (per_sec, std::time::Instant::now());
            while let Some(ev) = reader_track.poll().await {
                if let TrackRemoteEvent::OnRtpPacket(_) = &ev {
                    let now = std::time::Instant::now();
                    tokens = (tokens + now.duration_since(last).as_secs_f64() * per_sec)
                        .min(2.0 * per_sec);
                    last = now;
                    if tokens < 1.0 {
                        dropped.fetch_add(1, Relaxed);
                        continue;
                    }
                    tokens -= 1.0;
                }
                match ev {
                    // No subscriber yet is not an error.
                    TrackRemoteEvent::OnRtpPacket(p) if !reader_muted.load(Relaxed) => {
                        let _ = reader_tx.send(p);
                    }
                    TrackRemoteEvent::OnEnded => return,
                    _ => {}
                }
            }
        });
        let src = Source {
            codec,
            tx,
            keyframe,
            muted,
        };
        let others: Vec<Key> = room
            .peers
            .keys()
            .filter(|k| room.view.wants(**k, (from, kind)))
            .copied()
            .collect();
        for k in &others {
            let peer = room.peers.get_mut(k).expect("listed");
            if let Some((old, gate)) = peer.forwards.remove(&(from, kind)) {
                gate.stop();
                let _ = peer.pc.remove_track(&old).await;
            }
            if let Err(e) =
                Self::forward(&self.org, &self.forwarded, peer, (from, kind), &src).await
            {
                tracing::warn!(session = %session, "session media: not forwarded: {e}");
            }
        }
        pli(&src);
        room.sources.insert((from, kind), src);
        for k in others {
            self.offer(session, k, false).await;
        }
    }

    /// A member's media connected: the cameras it receives are asked for a keyframe.
    pub async fn connected(&self, session: SessionId, key: Key, generation: u64) {
        let Some(room) = self.rooms.get(&session) else {
            return;
        };
        let Some(peer) = room.peers.get(&key).filter(|p| p.generation == generation) else {
            return;
        };
        for (s, kind) in peer.forwards.keys() {
            if *kind == RtpCodecKind::Video
                && let Some(src) = room.sources.get(&(*s, *kind))
            {
                pli(src);
            }
        }
    }

    /// The commander muted (or unmuted) a member: its sound is (no longer) forwarded.
    pub fn set_muted(&mut self, session: SessionId, node: NodeIdx, muted: bool) {
        if let Some(room) = self.rooms.get_mut(&session) {
            if muted {
                room.muted.insert(node);
            } else {
                room.muted.remove(&node);
            }
            for ((k, kind), src) in &room.sources {
                if k.0 == node && *kind == RtpCodecKind::Audio {
                    src.muted.store(muted, Relaxed);
                }
            }
        }
    }

    /// Who is shown which cameras now (the roster changed). Applied to the members' forwards
    /// by `reconcile`; a member admitted meanwhile is set up by it at once.
    pub fn set_view(&mut self, session: SessionId, view: View) {
        self.rooms.entry(session).or_default().view = view;
    }

    /// Brings every member's forwards in line with the session's view: forwards out of view
    /// paused, those back in view resumed (on a keyframe), new ones added — and an offer to each
    /// member who has new ones (pausing and resuming need none).
    pub async fn reconcile(&mut self, session: SessionId) {
        let Some(room) = self.rooms.get_mut(&session) else {
            return;
        };
        if room.peers.is_empty() {
            self.rooms.remove(&session);
            return;
        }
        let mut changed = Vec::new();
        for (&key, peer) in room.peers.iter_mut() {
            for (s, (_, gate)) in &peer.forwards {
                let wanted = room.view.wants(key, *s);
                if gate.paused.load(Relaxed) == wanted {
                    gate.pause(!wanted);
                    if wanted && let Some(src) = room.sources.get(s) {
                        pli(src);
                    }
                }
            }
            let mut added = false;
            for (s, src) in &room.sources {
                if room.view.wants(key, *s) && !peer.forwards.contains_key(s) {
                    match Self::forward(&self.org, &self.forwarded, peer, *s, src).await {
                        Ok(()) => added = true,
                        Err(e) => {
                            tracing::warn!(session = %session, "session media: not forwarded: {e}")
                        }
                    }
                }
            }
            if added {
                changed.push(key);
            }
        }
        for k in changed {
            self.offer(session, k, false).await;
        }
    }

    /// A member left: its peer connection closes, and what it published leaves the others'.
    pub async fn remove(&mut self, session: SessionId, key: Key) {
        let Some(room) = self.rooms.get_mut(&session) else {
            return;
        };
        if let Some(peer) = room.peers.remove(&key) {
            // Its forwards end with it (one never answered would otherwise wait for packets
            // until its publisher left).
            for (_, gate) in peer.forwards.values() {
                gate.stop();
            }
            let _ = peer.pc.close().await;
        }
        room.sources.retain(|(k, _), _| *k != key);
        let mut changed = Vec::new();
        for (k, peer) in room.peers.iter_mut() {
            let gone: Vec<(Key, RtpCodecKind)> = peer
                .forwards
                .keys()
                .filter(|(p, _)| *p == key)
                .copied()
                .collect();
            for g in &gone {
                if let Some((sender, gate)) = peer.forwards.remove(g) {
                    gate.stop();
                    let _ = peer.pc.remove_track(&sender).await;
                }
            }
            if !gone.is_empty() {
                changed.push(*k);
            }
        }
        // An empty room (and its view) goes in `reconcile`, which follows every change.
        for k in changed {
            self.offer(session, k, false).await;
        }
    }
}

/// The address the hub's peer connections gather candidates on: its listen address when it has
/// one, else the one the default route leaves from (nothing is sent to find it).
pub fn media_ip(listen: IpAddr) -> IpAddr {
    use std::net::{Ipv4Addr, UdpSocket};
    if !listen.is_unspecified() {
        return listen;
    }
    UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .and_then(|s| {
            s.connect((Ipv4Addr::new(10, 255, 255, 255), 9))?;
            s.local_addr()
        })
        .map(|a| a.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// Asks a camera for a keyframe (nothing for a microphone).
fn pli(src: &Source) {
    if let Some(k) = &src.keyframe {
        let _ = k.try_send(());
    }
}

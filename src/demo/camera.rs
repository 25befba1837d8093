//! The demo's synthetic camera: a call to a simulated grid worker is answered over a real
//! WebRTC peer connection, with a test card for video (VP8, a four-second loop embedded in the
//! binary) and silence for sound (Opus), so that an operator trying the console sees a call go
//! through end to end. Nothing is encoded here: the frames were encoded once, ahead of time
//! (`scripts/make-testcard`), and are sent as they are, a keyframe every second so a picture
//! appears soon after the call connects.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rtc::interceptor::Registry;
use rtc::media::Sample;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_OPUS, MIME_TYPE_VP8, MediaEngine,
};
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use webrtc::media_stream::Track;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCIceCandidateInit,
    RTCIceGatheringState, RTCPeerConnectionState, RTCSessionDescription,
};
use webrtc::rtp_transceiver::RtpSender;

/// `testsrc2` at 320×240, 15 frames a second, VP8 at ~160 kbit/s (see `scripts/make-testcard`).
const TESTCARD: &[u8] = include_bytes!("testcard.ivf");
/// One 20 ms Opus frame of silence (TOC 0xF8: CELT fullband, one frame; an empty payload).
const SILENCE: [u8; 3] = [0xF8, 0xFF, 0xFE];
const AUDIO_FRAME: Duration = Duration::from_millis(20);
/// Calls answered with the camera at once: each costs a peer connection and a sending task.
const MAX_LIVE: usize = 8;
/// How long to wait for the caller's media to connect before giving up on the call's picture.
const CONNECT_WITHIN: Duration = Duration::from_secs(30);

/// The frames of an IVF file and the time each lasts.
fn parse_ivf(data: &[u8]) -> Result<(Vec<Bytes>, Duration), String> {
    let u16_at = |i: usize| u16::from_le_bytes([data[i], data[i + 1]]);
    let u32_at = |i: usize| u32::from_le_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]);
    if data.len() < 32 || &data[..4] != b"DKIF" || &data[8..12] != b"VP80" {
        return Err("not a VP8 IVF file".into());
    }
    let header = u16_at(6) as usize;
    let (rate, scale) = (u32_at(16), u32_at(20));
    if rate == 0 || scale == 0 {
        return Err("the IVF file has no frame rate".into());
    }
    let mut frames = Vec::new();
    let mut at = header;
    while at + 12 <= data.len() {
        let size = u32_at(at) as usize;
        let start = at + 12;
        let end = start
            .checked_add(size)
            .filter(|&e| e <= data.len())
            .ok_or("a frame runs past the end of the IVF file")?;
        frames.push(Bytes::copy_from_slice(&data[start..end]));
        at = end;
    }
    if frames.is_empty() {
        return Err("the IVF file holds no frame".into());
    }
    let frame = Duration::from_secs_f64(scale as f64 / rate as f64);
    Ok((frames, frame))
}

pub struct Camera {
    frames: Vec<Bytes>,
    frame: Duration,
    ip: IpAddr,
    live: AtomicUsize,
}

/// A call answered with the camera. Dropping it ends the media and closes the connection.
pub struct Live {
    pc: Arc<dyn PeerConnection>,
    stop: CancellationToken,
}

impl Live {
    /// A new offer from the caller (an ICE restart after its network changed): the answer.
    pub async fn renegotiate(&self, offer: &str) -> Result<String, String> {
        let err = |e: webrtc::error::Error| e.to_string();
        let offer = RTCSessionDescription::offer(offer.to_owned()).map_err(err)?;
        self.pc.set_remote_description(offer).await.map_err(err)?;
        let answer = self.pc.create_answer(None).await.map_err(err)?;
        let sdp = answer.sdp.clone();
        self.pc.set_local_description(answer).await.map_err(err)?;
        Ok(sdp)
    }

    /// A candidate the caller trickled.
    pub async fn candidate(&self, init: RTCIceCandidateInit) {
        if let Err(e) = self.pc.add_ice_candidate(init).await {
            tracing::debug!("demo camera: a caller's candidate was refused: {e}");
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct Events {
    gathered: Notify,
    connected: Notify,
    stop: CancellationToken,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Events {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.gathered.notify_one();
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        match state {
            RTCPeerConnectionState::Connected => self.connected.notify_one(),
            RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => self.stop.cancel(),
            _ => {}
        }
    }
}

fn codec(kind: RtpCodecKind) -> RTCRtpCodecParameters {
    let (mime, clock_rate, channels, payload_type) = match kind {
        RtpCodecKind::Audio => (MIME_TYPE_OPUS, 48_000, 2, 111),
        _ => (MIME_TYPE_VP8, 90_000, 0, 96),
    };
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: mime.to_owned(),
            clock_rate,
            channels,
            sdp_fmtp_line: String::new(),
            rtcp_feedback: vec![],
        },
        payload_type,
    }
}

/// A sending track of `kind` added to `pc`: the track, and its sender (which knows the payload
/// type the caller chose).
async fn add_track(
    pc: &dyn PeerConnection,
    kind: RtpCodecKind,
    ssrc: u32,
) -> Result<(Arc<TrackLocalStaticSample>, Arc<dyn RtpSender>), String> {
    let track = Arc::new(
        TrackLocalStaticSample::new(
            Instant::now(),
            MediaStreamTrack::new(
                "gridhub-demo".to_owned(),
                format!("gridhub-demo-{kind}"),
                format!("gridhub demo {kind}"),
                kind,
                vec![RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        ssrc: Some(ssrc),
                        ..Default::default()
                    },
                    codec: codec(kind).rtp_codec,
                    ..Default::default()
                }],
            ),
        )
        .map_err(|e| e.to_string())?,
    );
    let sender = pc
        .add_track(Arc::clone(&track) as Arc<dyn TrackLocal>)
        .await
        .map_err(|e| e.to_string())?;
    Ok((track, sender))
}

async fn payload_type(sender: &Arc<dyn RtpSender>) -> Option<u8> {
    let p = sender.get_parameters().await.ok()?;
    p.rtp_parameters.codecs.first().map(|c| c.payload_type)
}

impl Camera {
    pub fn new(ip: IpAddr) -> Result<Camera, String> {
        let (frames, frame) = parse_ivf(TESTCARD)?;
        Ok(Camera {
            frames,
            frame,
            ip,
            live: AtomicUsize::new(0),
        })
    }

    /// Answers `offer` (the caller's SDP): a peer connection with the test card (when `video`)
    /// and silence; returns the answer SDP, with its candidates, and the live call. Refused when
    /// as many calls as the demo allows are live.
    pub async fn answer(
        self: &Arc<Self>,
        offer: &str,
        video: bool,
    ) -> Result<(Live, String), String> {
        if self.live.fetch_add(1, Relaxed) >= MAX_LIVE {
            self.live.fetch_sub(1, Relaxed);
            return Err("the demo's cameras are all in calls".into());
        }
        let built = self.connect(offer, video).await;
        if built.is_err() {
            self.live.fetch_sub(1, Relaxed);
        }
        built
    }

    async fn connect(self: &Arc<Self>, offer: &str, video: bool) -> Result<(Live, String), String> {
        let err = |e: webrtc::error::Error| e.to_string();
        let mut media = MediaEngine::default();
        media
            .register_codec(codec(RtpCodecKind::Audio), RtpCodecKind::Audio)
            .map_err(err)?;
        media
            .register_codec(codec(RtpCodecKind::Video), RtpCodecKind::Video)
            .map_err(err)?;
        let registry = register_default_interceptors(Registry::new(), &mut media).map_err(err)?;
        let stop = CancellationToken::new();
        let events = Arc::new(Events {
            gathered: Notify::new(),
            connected: Notify::new(),
            stop: stop.clone(),
        });
        let runtime = webrtc::runtime::default_runtime().ok_or("no async runtime for WebRTC")?;
        let pc: Arc<dyn PeerConnection> = Arc::new(
            PeerConnectionBuilder::new()
                .with_media_engine(media)
                .with_interceptor_registry(registry)
                .with_handler(Arc::clone(&events) as Arc<dyn PeerConnectionEventHandler>)
                .with_runtime(runtime)
                .with_udp_addrs(vec![format!("{}:0", self.ip)])
                .build()
                .await
                .map_err(err)?,
        );
        let mut ssrc = [0u8; 8];
        getrandom::fill(&mut ssrc).map_err(|e| e.to_string())?;
        let ssrc = |i: usize| u32::from_le_bytes([ssrc[i], ssrc[i + 1], ssrc[i + 2], ssrc[i + 3]]);
        let audio = add_track(pc.as_ref(), RtpCodecKind::Audio, ssrc(0)).await?;
        let video = if video {
            Some(add_track(pc.as_ref(), RtpCodecKind::Video, ssrc(4)).await?)
        } else {
            None
        };
        let offer = RTCSessionDescription::offer(offer.to_owned()).map_err(err)?;
        pc.set_remote_description(offer).await.map_err(err)?;
        let answer = pc.create_answer(None).await.map_err(err)?;
        // Not trickled: the answer carries this side's candidates, all of them host ones.
        let gathered = events.gathered.notified();
        pc.set_local_description(answer).await.map_err(err)?;
        let _ = tokio::time::timeout(Duration::from_secs(5), gathered).await;
        let sdp = pc
            .local_description()
            .await
            .ok_or("no local description after the answer")?
            .sdp;
        let camera = Arc::clone(self);
        let (pc2, stop2) = (Arc::clone(&pc), stop.clone());
        tokio::spawn(async move {
            camera.stream(audio, video, events, stop2).await;
            let _ = pc2.close().await;
            camera.live.fetch_sub(1, Relaxed);
        });
        Ok((Live { pc, stop }, sdp))
    }

    /// Sends the test card and silence from the moment the call connects until it stops.
    async fn stream(
        &self,
        audio: (Arc<TrackLocalStaticSample>, Arc<dyn RtpSender>),
        video: Option<(Arc<TrackLocalStaticSample>, Arc<dyn RtpSender>)>,
        events: Arc<Events>,
        stop: CancellationToken,
    ) {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(CONNECT_WITHIN) => return,
            _ = events.connected.notified() => {}
        }
        let (Some(apt), Some(ssrc_a)) = (
            payload_type(&audio.1).await,
            audio.0.ssrcs().await.first().copied(),
        ) else {
            return;
        };
        let video = match &video {
            Some((t, s)) => match (payload_type(s).await, t.ssrcs().await.first().copied()) {
                (Some(pt), Some(ssrc)) => Some((t, pt, ssrc)),
                _ => None,
            },
            None => None,
        };
        let mut audio_tick = tokio::time::interval(AUDIO_FRAME);
        let mut video_tick = tokio::time::interval(self.frame);
        let mut next = 0;
        let silence = Bytes::from_static(&SILENCE);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = audio_tick.tick() => {
                    let s = Sample { data: silence.clone(), duration: AUDIO_FRAME, ..Sample::new(Instant::now()) };
                    if audio.0.sample_writer(ssrc_a, apt).write_sample(&s).await.is_err() {
                        return;
                    }
                }
                _ = video_tick.tick(), if video.is_some() => {
                    let Some((track, pt, ssrc)) = &video else { continue };
                    let s = Sample { data: self.frames[next].clone(), duration: self.frame, ..Sample::new(Instant::now()) };
                    next = (next + 1) % self.frames.len();
                    if track.sample_writer(*ssrc, *pt).write_sample(&s).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_card_is_a_loop_of_vp8_frames_starting_on_a_keyframe() {
        let (frames, frame) = parse_ivf(TESTCARD).unwrap();
        assert_eq!(frames.len(), 60, "four seconds at 15 frames a second");
        assert_eq!(frame.as_millis(), 66);
        // A VP8 keyframe has bit 0 of its first byte clear (RFC 6386 §9.1).
        let keyframes = frames.iter().filter(|f| f[0] & 1 == 0).count();
        assert!(frames[0][0] & 1 == 0 && keyframes >= 4, "{keyframes}");
        assert!(parse_ivf(b"DKIF").is_err());
        let mut cut = TESTCARD.to_vec();
        cut.truncate(100);
        assert!(parse_ivf(&cut).is_err(), "a frame past the end");
    }
}

//! The task behind one connection: reads and decodes frames, answers requests, enforces rate and
//! abuse limits, flushes the send queue when the socket drains, and performs the closing
//! handshake.
//!
//! Reads go into one scratch buffer per worker thread; only the tail of an incomplete frame is
//! copied into the connection's own buffer, which is released once empty. An idle terminal
//! therefore holds no read buffer at all — the main reason a connection costs a few KB.

use std::cell::RefCell;
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::Transport;
use super::conn::{Close, Conn};
use super::dispatch::{Refused, Request};
use super::frame::{Decoder, Inbound, OP_PONG, ProtocolError, frame};
use super::protocol::{self, Empty, ErrorCode, ProtoError, ack, encode, parse_data};
use crate::telemetry::EndReason;

/// Bytes read per `read` call; one buffer per worker thread, shared by all its connections.
const SCRATCH: usize = 64 * 1024;
/// Reads per readiness wake-up before yielding to other connections.
const READS_PER_WAKE: usize = 16;
/// A partial-frame buffer larger than this is freed once it empties.
const KEEP_PENDING: usize = 4 * 1024;
/// How long the close frame (and what is queued before it) may take to leave: long enough for a
/// consumer that fell behind to catch up and read a clean close, bounded so it cannot hold the
/// socket.
const CLOSE_FLUSH: Duration = Duration::from_secs(5);
/// How long the peer then has to close its side.
const LINGER: Duration = Duration::from_secs(1);

thread_local! {
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH].into_boxed_slice());
}

enum ReadOnce {
    Data,
    Drained,
    Eof,
}

/// Sliding-ish window of typed errors: more than `limit` within `window_ms` is abuse.
struct ErrorWindow {
    start: u64,
    count: u32,
}

/// Token bucket in thousandths of a message.
struct Bucket {
    milli: u64,
    last: u64,
}

struct Session {
    transport: Arc<Transport>,
    conn: Arc<Conn>,
    decoder: Decoder,
    pending: Vec<u8>,
    events: Vec<Inbound>,
    errors: ErrorWindow,
    bucket: Bucket,
    peer_closed: bool,
    /// Frames the decoder had finished at the last look: only finished frames are a sign of life.
    frames_seen: u64,
}

/// Runs a registered connection to its end and says why it ended.
pub(crate) async fn run(transport: Arc<Transport>, conn: Arc<Conn>, early: Vec<u8>) -> EndReason {
    let t = &transport.config;
    let now = transport.clock.mono_ms();
    let mut s = Session {
        decoder: Decoder::new(t.max_message_bytes),
        pending: Vec::new(),
        events: Vec::new(),
        errors: ErrorWindow {
            start: now,
            count: 0,
        },
        bucket: Bucket {
            milli: t.rate_burst as u64 * 1000,
            last: now,
        },
        peer_closed: false,
        frames_seen: 0,
        transport,
        conn,
    };
    if !early.is_empty() {
        s.pending = early;
        if let Err(e) = s.decode_pending() {
            s.conn.close(Close::Protocol(e));
        }
        s.seen_alive();
        s.handle_events().await;
    }
    match s.serve().await {
        Some(gone) => gone,
        None => Box::pin(s.finish()).await,
    }
}

#[derive(Serialize)]
struct Hello<'a> {
    protocol: u32,
    conn: String,
    endpoint: EndpointInfo<'a>,
    role: &'static str,
    seat: &'a str,
    heartbeat: Heartbeat,
    limits: Limits,
    expires_at: u64,
    /// Sections the services add (`calls`: ICE servers for this terminal).
    #[serde(flatten)]
    sections: serde_json::Map<String, serde_json::Value>,
    server: ServerInfo,
}

#[derive(Serialize)]
struct EndpointInfo<'a> {
    id: &'a str,
    name: &'a str,
    name_en: &'a str,
    tier: crate::org::Tier,
}

#[derive(Serialize)]
struct Heartbeat {
    interval_ms: u64,
    timeout_ms: u64,
}

#[derive(Serialize)]
struct Limits {
    max_message_bytes: usize,
    rate_per_sec: u32,
    rate_burst: u32,
    max_subscriptions: usize,
}

#[derive(Serialize)]
struct ServerInfo {
    name: &'static str,
    version: &'static str,
}

/// Sends `hello`, the first thing a terminal hears: before the services learn it is here, so
/// nothing they say to it (a call it is coming back to) can come first.
pub(crate) fn hello(t: &Transport, conn: &Conn) {
    let node = t.org.node(conn.endpoint);
    let c = &t.config;
    let now = t.clock.now_ms();
    let origin = conn.origin();
    let sections = t
        .table
        .greetings()
        .iter()
        .map(|(name, g)| ((*name).to_owned(), g(&origin, now)))
        .collect();
    let hello = Hello {
        protocol: protocol::VERSION,
        conn: format!("{:016x}", conn.key),
        endpoint: EndpointInfo {
            id: node.id.as_str(),
            name: &node.name,
            name_en: &node.name_en,
            tier: node.tier,
        },
        role: conn.role.as_str(),
        seat: conn.seat.as_str(),
        heartbeat: Heartbeat {
            interval_ms: c.heartbeat_interval_ms,
            timeout_ms: c.heartbeat_timeout_ms,
        },
        limits: Limits {
            max_message_bytes: c.max_message_bytes,
            rate_per_sec: c.rate_per_sec,
            rate_burst: c.rate_burst,
            max_subscriptions: t.max_subscriptions,
        },
        expires_at: conn.expires_at,
        sections,
        server: ServerInfo {
            name: "gridhub",
            version: env!("CARGO_PKG_VERSION"),
        },
    };
    conn.send(&encode("hello", None, &hello));
}

impl Session {
    /// The main loop. `Some(reason)` if the peer vanished (nothing left to say to it), `None`
    /// when a close was started and `finish` should complete the handshake.
    async fn serve(&mut self) -> Option<EndReason> {
        loop {
            let (closing, broken, backlog) = self.conn.state();
            if broken {
                return Some(EndReason::Gone);
            }
            if closing.is_some() {
                return None;
            }
            tokio::select! {
                biased;
                _ = self.conn.wake.notified() => {}
                r = self.conn.stream.writable(), if backlog => {
                    if r.is_err() || self.conn.flush().is_err() {
                        return Some(EndReason::Gone);
                    }
                }
                r = self.conn.stream.readable() => {
                    if r.is_err() {
                        return Some(EndReason::Gone);
                    }
                    match self.read().await {
                        Ok(true) => {}
                        Ok(false) => return Some(EndReason::Gone),
                        Err(e) => self.conn.close(Close::Protocol(e)),
                    }
                }
            }
        }
    }

    /// Reads until the socket has no more data (or the per-wake cap). `Ok(false)` on EOF.
    async fn read(&mut self) -> Result<bool, ProtocolError> {
        for _ in 0..READS_PER_WAKE {
            let step = SCRATCH_BUF.with_borrow_mut(|buf| self.read_once(buf));
            self.seen_alive();
            let step = match step {
                Ok(s) => s,
                Err(e) => {
                    // Answer what was decoded before the violation, then close.
                    self.handle_events().await;
                    return Err(e);
                }
            };
            self.handle_events().await;
            match step {
                ReadOnce::Data => {}
                ReadOnce::Drained => break,
                ReadOnce::Eof => return Ok(false),
            }
            if self.conn.closing().is_some() {
                break;
            }
        }
        if self.pending.is_empty() && self.pending.capacity() > KEEP_PENDING {
            self.pending = Vec::new();
        }
        Ok(true)
    }

    /// Counts the terminal as alive if a frame was finished since the last look. Bytes alone do
    /// not count: a frame announced and trickled a byte at a time never ends, and its sender must
    /// not outlive the heartbeat timeout.
    fn seen_alive(&mut self) {
        let frames = self.decoder.frames();
        if frames != self.frames_seen {
            self.frames_seen = frames;
            self.conn.touch(self.transport.clock.mono_ms());
        }
    }

    /// One non-blocking read into the thread's scratch buffer, decoded in place; only an
    /// incomplete frame's tail is copied into `pending`.
    fn read_once(&mut self, buf: &mut [u8]) -> Result<ReadOnce, ProtocolError> {
        let n = match self.conn.stream.try_read(buf) {
            Ok(0) => return Ok(ReadOnce::Eof),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(ReadOnce::Drained),
            Err(_) => return Ok(ReadOnce::Eof),
        };
        self.transport.metrics.bytes_in.fetch_add(n as u64, Relaxed);
        if self.pending.is_empty() {
            let used = self.decoder.decode(&buf[..n], &mut self.events)?;
            self.pending.extend_from_slice(&buf[used..n]);
        } else {
            self.pending.extend_from_slice(&buf[..n]);
            self.decode_pending()?;
        }
        Ok(ReadOnce::Data)
    }

    fn decode_pending(&mut self) -> Result<(), ProtocolError> {
        let used = self.decoder.decode(&self.pending, &mut self.events)?;
        self.pending.drain(..used);
        Ok(())
    }

    async fn handle_events(&mut self) {
        let mut events = std::mem::take(&mut self.events);
        for ev in events.drain(..) {
            if self.peer_closed {
                break;
            }
            self.on_event(ev).await;
        }
        if events.capacity() <= 16 {
            // Keep a small allocation for the next read; drop a burst-sized one.
            self.events = events;
        }
    }

    async fn on_event(&mut self, ev: Inbound) {
        let m = &self.transport.metrics;
        match ev {
            Inbound::Text(bytes) => {
                m.messages_in.fetch_add(1, Relaxed);
                let t0 = Instant::now();
                self.on_text(&bytes).await;
                self.transport.metrics.request_latency.observe(t0.elapsed());
            }
            Inbound::Binary => {
                m.messages_in.fetch_add(1, Relaxed);
                self.error(ProtoError::new(
                    ErrorCode::BinaryNotSupported,
                    "binary frames are not part of protocol v1; send JSON text frames",
                ));
            }
            Inbound::TooLarge { declared } => {
                m.messages_in.fetch_add(1, Relaxed);
                let max = self.transport.config.max_message_bytes;
                self.error(ProtoError::new(
                    ErrorCode::MessageTooLarge,
                    format!("a message of at least {declared} bytes exceeds the {max}-byte limit and was discarded"),
                ));
            }
            Inbound::Ping(payload) => {
                self.conn.send(&frame(OP_PONG, &payload));
            }
            Inbound::Pong => {}
            Inbound::Close { code, .. } => {
                // Nothing after a close is read (RFC 6455 §5.5.1); it is answered with its code.
                self.peer_closed = true;
                self.conn.close(Close::Peer(code));
            }
        }
    }

    async fn on_text(&mut self, bytes: &[u8]) {
        let env = match protocol::decode(bytes) {
            Ok(r) => r,
            Err(e) => return self.error(e),
        };
        let kind = env.kind.as_ref();
        if !self.take_token(self.transport.clock.mono_ms()) {
            let rate = self.transport.config.rate_per_sec;
            return self.error(
                ProtoError::new(
                    ErrorCode::RateLimited,
                    format!("more than {rate} messages per second; this one was not processed"),
                )
                .answering(env.id, kind),
            );
        }
        if kind == "ping" {
            // Answered only when it carries an id, like any notification: a client that wants
            // its heartbeat to detect a dead hub sends one.
            return match parse_data::<Empty>("ping", env.data) {
                Ok(Empty {}) => {
                    let now = self.transport.clock.now_ms();
                    if let Some(f) = ack(env.id.as_ref(), &serde_json::json!({ "now": now })) {
                        self.conn.send(&f);
                    }
                }
                Err(e) => self.error(e.answering(env.id, "ping")),
            };
        }
        let transport = Arc::clone(&self.transport);
        let Some((kind, handler)) = transport.table.get(kind) else {
            let known = std::iter::once("ping")
                .chain(transport.table.kinds().iter().copied())
                .collect::<Vec<_>>()
                .join(", ");
            let e = ProtoError::new(
                ErrorCode::UnknownType,
                format!("unknown message type {kind:?}; known types: {known}"),
            )
            .answering(env.id, kind);
            return self.error(e);
        };
        let req = Request {
            origin: self.conn.origin(),
            id: env.id,
            kind,
            data: env.data,
            at: Instant::now(),
        };
        match handler.handle(req).await {
            Ok(()) => {}
            Err(Refused::Now(e)) => self.error(e),
            // The service sends the answer in its turn; it counts all the same.
            Err(Refused::InTurn(code)) => {
                self.transport.metrics.errors_sent.fetch_add(1, Relaxed);
                self.count_error(code)
            }
        }
    }

    fn take_token(&mut self, now: u64) -> bool {
        let t = &self.transport.config;
        let cap = t.rate_burst as u64 * 1000;
        let b = &mut self.bucket;
        b.milli = (b.milli + now.saturating_sub(b.last) * t.rate_per_sec as u64).min(cap);
        b.last = now;
        if b.milli >= 1000 {
            b.milli -= 1000;
            true
        } else {
            false
        }
    }

    /// Sends a typed error; too many within the window closes the connection with 1008. Being
    /// throttled is not misbehaving: `rate_limited` slows a client down and never counts here.
    fn error(&mut self, e: ProtoError) {
        self.transport.metrics.errors_sent.fetch_add(1, Relaxed);
        self.conn.send(&e.encode());
        self.count_error(e.code);
    }

    /// Counts an error against the abuse limit — unless it says the hub cannot serve now
    /// (throttled, shutting down), which is no fault of the client's.
    fn count_error(&mut self, code: ErrorCode) {
        if matches!(code, ErrorCode::RateLimited | ErrorCode::Unavailable) {
            return;
        }
        let t = &self.transport.config;
        let now = self.transport.clock.mono_ms();
        if now.saturating_sub(self.errors.start) > t.abuse_window_ms {
            self.errors = ErrorWindow {
                start: now,
                count: 0,
            };
        }
        self.errors.count += 1;
        if self.errors.count > t.abuse_errors {
            self.conn.close(Close::Policy("too many bad requests"));
        }
    }

    /// Completes a close this side started (or answered): flush the queue with its close frame,
    /// half-close, and give the peer a moment to close its side.
    async fn finish(&mut self) -> EndReason {
        // `serve` returns `None` only once a close has begun.
        let why = self.conn.closing().unwrap_or(Close::GoingAway);
        let conn = Arc::clone(&self.conn);
        let flushed = tokio::time::timeout(CLOSE_FLUSH, async {
            loop {
                match conn.flush() {
                    Ok(true) => return true,
                    Ok(false) => {
                        if conn.stream.writable().await.is_err() {
                            return false;
                        }
                    }
                    Err(_) => return false,
                }
            }
        })
        .await
        .unwrap_or(false);
        conn.shutdown_write();
        if flushed && !self.peer_closed {
            // Wait for the peer's close frame or EOF, discarding anything else it sends.
            let _ = tokio::time::timeout(LINGER, async {
                loop {
                    if conn.stream.readable().await.is_err() {
                        return;
                    }
                    let r = SCRATCH_BUF.with_borrow_mut(|buf| conn.stream.try_read(buf));
                    match r {
                        Ok(0) => return,
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(_) => return,
                    }
                }
            })
            .await;
        }
        why.end_reason()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::protocol::ReqId;

    #[test]
    fn req_id_round_trips_in_errors() {
        let e = ProtoError {
            re: Some(ReqId::Str("r-1".into())),
            kind: Some("presence.set".into()),
            code: ErrorCode::InvalidData,
            message: "x".into(),
        };
        let f = e.encode();
        let text = std::str::from_utf8(&f[2..]).unwrap();
        assert!(
            text.contains(r#""re":"r-1""#) && text.contains(r#""request_type":"presence.set""#)
        );
    }
}

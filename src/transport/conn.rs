//! One terminal's WebSocket connection: the socket, its bounded send queue, and close reasons.
//!
//! Sending never waits and never wakes a task in the common case: `send` writes the encoded frame
//! straight into the socket with a non-blocking `try_write` from whichever task is fanning out,
//! exactly as a C server would call write() once per subscriber. Only when the kernel's buffer is
//! full does the frame wait in a queue (bounded in frames and bytes), and the connection's own
//! task is woken to flush it when the socket is writable again. A consumer that lets the queue
//! overflow is closed with 4002 and never slows anyone else.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Buf, Bytes};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::dispatch::ConnKey;
use super::frame::{ProtocolError, close_frame};
use crate::auth::{Credential, Role, Seat};
use crate::org::NodeIdx;
use crate::telemetry::{EndReason, Metrics};

/// Why the hub closes a connection. Codes and reconnect advice are documented in
/// docs/protocol.md; 4000–4099 are gridhub's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Close {
    /// The terminal closed: its close is answered with the code it sent (none if it sent none).
    Peer(Option<u16>),
    /// 1001: the hub is shutting down; reconnect with backoff.
    GoingAway,
    /// 1002 (1007 for a close reason that is not UTF-8, 1009 for a frame over the limit): the
    /// byte stream broke the WebSocket protocol; do not retry unchanged.
    Protocol(ProtocolError),
    /// 1008: repeated bad requests or flooding; back off before reconnecting.
    Policy(&'static str),
    /// 4000: no heartbeat within the timeout; reconnect.
    HeartbeatTimeout,
    /// 4001: the same terminal connected again; this older connection is closed. Do not
    /// reconnect automatically, or two devices will take turns evicting each other.
    Replaced,
    /// 4002: the terminal read too slowly and its send queue overflowed; reconnect and resync.
    Slow,
    /// 4003: the credential expired; get a new one, then reconnect.
    CredentialExpired,
}

impl Close {
    pub fn code(self) -> u16 {
        match self {
            Close::Peer(code) => code.unwrap_or(1005),
            Close::GoingAway => 1001,
            Close::Protocol(e) => e.close_code(),
            Close::Policy(_) => 1008,
            Close::HeartbeatTimeout => 4000,
            Close::Replaced => 4001,
            Close::Slow => 4002,
            Close::CredentialExpired => 4003,
        }
    }

    pub fn reason(self) -> String {
        match self {
            Close::Peer(_) => "closed".into(),
            Close::GoingAway => "hub shutting down; reconnect".into(),
            Close::Protocol(e) => format!("protocol error: {e}"),
            Close::Policy(why) => format!("policy violation: {why}"),
            Close::HeartbeatTimeout => "heartbeat timeout; reconnect".into(),
            Close::Replaced => "replaced by a newer connection of this terminal".into(),
            Close::Slow => "slow consumer: send queue overflowed; reconnect".into(),
            Close::CredentialExpired => "credential expired; renew and reconnect".into(),
        }
    }

    /// The close frame that says it. An answer to a close without a code carries none either
    /// (1005 is never sent: it stands for "no code" only).
    pub fn frame(self) -> Bytes {
        match self {
            Close::Peer(None) => super::frame::frame(super::frame::OP_CLOSE, &[]),
            _ => close_frame(self.code(), &self.reason()),
        }
    }

    pub fn end_reason(self) -> EndReason {
        match self {
            Close::Peer(_) => EndReason::Normal,
            Close::GoingAway => EndReason::Shutdown,
            Close::Protocol(_) => EndReason::Protocol,
            Close::Policy(_) => EndReason::Policy,
            Close::HeartbeatTimeout => EndReason::Heartbeat,
            Close::Replaced => EndReason::Replaced,
            Close::Slow => EndReason::Slow,
            Close::CredentialExpired => EndReason::Expired,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendOutcome {
    /// In the kernel's buffer already.
    Written,
    /// Waiting in the send queue for the socket to drain.
    Queued,
    /// The connection is closing or broken; the frame was dropped.
    Closed,
}

#[derive(Clone, Copy, Debug)]
pub struct QueueLimits {
    pub frames: usize,
    pub bytes: usize,
}

#[derive(Default)]
struct Outbox {
    queue: VecDeque<Bytes>,
    bytes: usize,
    /// The front frame is partly in the socket already: whatever happens, the rest of it goes
    /// out before anything else, or the byte stream would break mid-frame.
    front_started: bool,
    closing: Option<Close>,
    broken: bool,
}

/// `outbox_cursor` before the terminal resumes: live outbox messages wait for the resume.
const NOT_RESUMED: u64 = u64::MAX;

/// What a connection does with a live outbox message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offered {
    Send,
    /// Not now: not resumed yet, or already had.
    Skip,
    /// Messages after `after` never reached it: they are to be replayed from there.
    Gap {
        after: u64,
    },
}

/// Frames written per `writev` when flushing a queue.
const FLUSH_BATCH: usize = 64;

pub struct Conn {
    pub key: ConnKey,
    pub endpoint: NodeIdx,
    pub role: Role,
    pub seat: Seat,
    /// Unix seconds at which the credential expires.
    pub expires_at: u64,
    pub(super) stream: TcpStream,
    out: Mutex<Outbox>,
    pub(super) wake: Notify,
    /// When the last whole frame was received (the transport clock's monotonic milliseconds).
    last_seen: AtomicU64,
    /// Highest durable outbox sequence delivered on this connection; `NOT_RESUMED` until the
    /// terminal resumes its outbox. Only the outbox service changes it (through the backplane),
    /// in commit order, so live pushes and replays stay in sequence.
    outbox_cursor: AtomicU64,
    metrics: Arc<Metrics>,
    limits: QueueLimits,
}

impl Conn {
    pub(crate) fn new(
        key: ConnKey,
        cred: &Credential,
        stream: TcpStream,
        metrics: Arc<Metrics>,
        limits: QueueLimits,
        mono_ms: u64,
    ) -> Conn {
        Conn {
            key,
            endpoint: cred.endpoint,
            role: cred.role,
            seat: cred.seat,
            expires_at: cred.expires_at,
            stream,
            out: Mutex::new(Outbox::default()),
            wake: Notify::new(),
            last_seen: AtomicU64::new(mono_ms),
            outbox_cursor: AtomicU64::new(NOT_RESUMED),
            metrics,
            limits,
        }
    }

    fn outbox(&self) -> MutexGuard<'_, Outbox> {
        // Nothing panics while holding this lock (only queue operations and try_write), so a
        // poisoned lock still holds consistent data.
        self.out.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends one encoded frame without waiting. Safe to call from any task, concurrently.
    pub fn send(&self, frame: &Bytes) -> SendOutcome {
        let mut out = self.outbox();
        if out.closing.is_some() || out.broken {
            return SendOutcome::Closed;
        }
        self.metrics.messages_out.fetch_add(1, Relaxed);
        if out.queue.is_empty() {
            match self.stream.try_write(frame) {
                Ok(n) if n == frame.len() => {
                    self.metrics.bytes_out.fetch_add(n as u64, Relaxed);
                    return SendOutcome::Written;
                }
                Ok(n) => {
                    self.metrics.bytes_out.fetch_add(n as u64, Relaxed);
                    out.bytes += frame.len() - n;
                    out.queue.push_back(frame.slice(n..));
                    out.front_started = n > 0;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    out.bytes += frame.len();
                    out.queue.push_back(frame.clone());
                }
                Err(_) => {
                    out.broken = true;
                    drop(out);
                    self.wake.notify_one();
                    return SendOutcome::Closed;
                }
            }
            self.metrics.frames_queued.fetch_add(1, Relaxed);
            drop(out);
            self.wake.notify_one();
            return SendOutcome::Queued;
        }
        if self.overflows(&mut out, frame.len()) {
            return SendOutcome::Closed;
        }
        self.metrics.frames_queued.fetch_add(1, Relaxed);
        out.bytes += frame.len();
        out.queue.push_back(frame.clone());
        // The connection task was already woken when the queue became non-empty.
        SendOutcome::Queued
    }

    /// Queues one encoded frame for the connection's own task to write, never writing here: for
    /// a sender that relays for many terminals (calls) and must not spend its time in socket
    /// writes — on loopback and LANs a write also runs the receiving side's network stack. The
    /// connection's task writes what has gathered with one `writev`. Same limits as `send`.
    pub fn post(&self, frame: &Bytes) -> SendOutcome {
        let mut out = self.outbox();
        if out.closing.is_some() || out.broken {
            return SendOutcome::Closed;
        }
        if self.overflows(&mut out, frame.len()) {
            return SendOutcome::Closed;
        }
        self.metrics.messages_out.fetch_add(1, Relaxed);
        let was_empty = out.queue.is_empty();
        out.bytes += frame.len();
        out.queue.push_back(frame.clone());
        drop(out);
        if was_empty {
            self.wake.notify_one();
        }
        SendOutcome::Queued
    }

    /// A slow consumer: past either queue limit, closes the connection instead of queueing.
    /// What is queued is lost to this consumer either way; it is dropped so the close frame goes
    /// out next — after the rest of a frame the socket has already taken part of, so the
    /// consumer reads whole frames and then a clean close — and the terminal resyncs when it
    /// reconnects.
    fn overflows(&self, out: &mut Outbox, len: usize) -> bool {
        if out.queue.len() < self.limits.frames && out.bytes + len <= self.limits.bytes {
            return false;
        }
        let keep = usize::from(out.front_started);
        self.metrics
            .queue_drops
            .fetch_add((out.queue.len() - keep) as u64 + 1, Relaxed);
        out.queue.truncate(keep);
        out.bytes = out.queue.front().map_or(0, Bytes::len);
        self.begin_close(out, Close::Slow);
        true
    }

    /// Starts closing: queues the close frame and wakes the connection's task. Idempotent; the
    /// first reason wins.
    pub fn close(&self, why: Close) {
        let mut out = self.outbox();
        self.begin_close(&mut out, why);
    }

    fn begin_close(&self, out: &mut Outbox, why: Close) {
        if out.closing.is_some() {
            return;
        }
        out.closing = Some(why);
        let frame = why.frame();
        out.bytes += frame.len();
        out.queue.push_back(frame);
        self.wake.notify_one();
    }

    pub fn closing(&self) -> Option<Close> {
        self.outbox().closing
    }

    /// Marks the connection finished (its task has returned): nothing more will be sent.
    pub(crate) fn end(&self) {
        self.outbox().broken = true;
    }

    /// (closing reason, socket broken, frames waiting) under one lock.
    pub(super) fn state(&self) -> (Option<Close>, bool, bool) {
        let out = self.outbox();
        (out.closing, out.broken, !out.queue.is_empty())
    }

    /// Writes as much of the queue as the socket accepts; `Ok(true)` when the queue is empty.
    pub(super) fn flush(&self) -> io::Result<bool> {
        let mut out = self.outbox();
        while !out.queue.is_empty() {
            let result = {
                let mut slices = [io::IoSlice::new(&[]); FLUSH_BATCH];
                let mut k = 0;
                for (slot, frame) in slices.iter_mut().zip(out.queue.iter()) {
                    *slot = io::IoSlice::new(frame);
                    k += 1;
                }
                self.stream.try_write_vectored(&slices[..k])
            };
            let written = match result {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => {
                    out.broken = true;
                    return Err(e);
                }
            };
            self.metrics.bytes_out.fetch_add(written as u64, Relaxed);
            out.bytes -= written;
            let mut left = written;
            while left > 0 {
                // `written` never exceeds the queued bytes, so the queue has a front here.
                let front = out.queue.front_mut().expect("written bytes were queued");
                if front.len() <= left {
                    left -= front.len();
                    out.queue.pop_front();
                    out.front_started = false;
                } else {
                    front.advance(left);
                    left = 0;
                    out.front_started = true;
                }
            }
        }
        if out.queue.capacity() > FLUSH_BATCH {
            // A burst grew the queue; give the memory back now that it is empty.
            out.queue = VecDeque::new();
        }
        Ok(true)
    }

    /// The terminal has everything up to `last`; live outbox messages after it may flow.
    pub fn outbox_resumed(&self, last: u64) {
        self.outbox_cursor.store(last, Relaxed);
    }

    /// Whether outbox message `seq` should be sent live now (and records it as sent). A
    /// terminal's messages are offered in sequence; one past the next means some never reached
    /// this connection (its node was taken for gone a moment, a link dropped them): rather than
    /// skip ahead, the connection waits for those to be replayed from its cursor, in order.
    pub fn outbox_offer(&self, seq: u64) -> Offered {
        let cur = self.outbox_cursor.load(Relaxed);
        if cur == NOT_RESUMED || seq <= cur {
            return Offered::Skip;
        }
        if seq > cur + 1 {
            // Until the replay ends (`outbox_resumed`), live messages wait like a new resume's.
            return match self
                .outbox_cursor
                .compare_exchange(cur, NOT_RESUMED, Relaxed, Relaxed)
            {
                Ok(_) => Offered::Gap { after: cur },
                Err(_) => Offered::Skip,
            };
        }
        self.outbox_cursor.store(seq, Relaxed);
        Offered::Send
    }

    pub(super) fn touch(&self, mono_ms: u64) {
        self.last_seen.store(mono_ms, Relaxed);
    }

    pub fn last_seen(&self) -> u64 {
        self.last_seen.load(Relaxed)
    }

    /// Half-closes the socket after the close frame: the peer sees EOF and closes its side.
    pub(super) fn shutdown_write(&self) {
        use std::os::fd::AsRawFd;
        // SAFETY: the fd is owned by `stream`, which outlives this call; shutdown(2) does not
        // close it, so tokio's registration stays valid.
        unsafe {
            libc::shutdown(self.stream.as_raw_fd(), libc::SHUT_WR);
        }
    }
}

/// Counts an open socket for as long as it lives (the connection cap is in sockets).
pub struct SocketGuard(Arc<Metrics>);

impl SocketGuard {
    pub fn new(m: &Arc<Metrics>) -> SocketGuard {
        m.sockets_open.fetch_add(1, Relaxed);
        SocketGuard(Arc::clone(m))
    }
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        self.0.sockets_open.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::transport::frame::{OP_CLOSE, OP_TEXT, frame};

    fn shrink(fd: &impl AsRawFd, opt: libc::c_int) {
        let size: libc::c_int = 16 * 1024;
        // SAFETY: a valid socket and a c_int option value of the right size.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }

    /// A loopback pair with small buffers, so a few frames fill them.
    async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        shrink(&server, libc::SO_SNDBUF);
        shrink(&client, libc::SO_RCVBUF);
        (server, client)
    }

    /// Splits a byte stream of unmasked frames into (opcode, payload), or says where it broke.
    fn frames(mut b: &[u8]) -> Result<Vec<(u8, Vec<u8>)>, String> {
        let mut out = Vec::new();
        while !b.is_empty() {
            if b.len() < 2 {
                return Err(format!("{} stray bytes", b.len()));
            }
            let (len, at) = match b[1] & 0x7F {
                126 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
                127 => (
                    u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                n => (n as usize, 2),
            };
            if b.len() < at + len {
                return Err(format!("a frame of {len} bytes cut at {}", b.len() - at));
            }
            out.push((b[0] & 0x0F, b[at..at + len].to_vec()));
            b = &b[at + len..];
        }
        Ok(out)
    }

    #[tokio::test]
    async fn a_slow_consumer_reads_whole_frames_then_a_clean_4002() {
        let (server, mut client) = pair().await;
        let conn = Arc::new(Conn::new(
            1,
            &Credential {
                endpoint: NodeIdx(0),
                role: Role::Worker,
                seat: Seat::MAIN,
                expires_at: u64::MAX,
            },
            server,
            Arc::default(),
            QueueLimits {
                frames: 8,
                bytes: 300_000,
            },
            0,
        ));
        // An odd size, so the socket's buffer fills in the middle of one.
        let payload = vec![b'x'; 99_991];
        let f = frame(OP_TEXT, &payload);
        let mut accepted = 0;
        for _ in 0..100 {
            if conn.send(&f) == SendOutcome::Closed {
                break;
            }
            accepted += 1;
        }
        assert_eq!(conn.closing(), Some(Close::Slow));
        assert!(accepted >= 1);
        // The consumer catches up: what reaches it is whole frames, then the close.
        let flusher = {
            let conn = Arc::clone(&conn);
            tokio::spawn(async move {
                while let Ok(false) = conn.flush() {
                    if conn.stream.writable().await.is_err() {
                        break;
                    }
                }
                conn.shutdown_write();
            })
        };
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut got))
            .await
            .expect("the hub side finishes")
            .unwrap();
        flusher.await.unwrap();
        let fs = frames(&got).expect("no frame is cut");
        let (close, data) = fs.split_last().unwrap();
        assert_eq!(close.0, OP_CLOSE);
        assert_eq!(u16::from_be_bytes([close.1[0], close.1[1]]), 4002);
        assert!(!data.is_empty() && data.len() <= accepted);
        assert!(
            data.iter()
                .all(|(op, p)| *op == OP_TEXT && p.len() == payload.len())
        );
    }

    #[tokio::test]
    async fn a_peer_close_is_answered_with_its_own_code_or_none() {
        assert_eq!(Close::Peer(Some(4321)).frame()[..4], [0x88, 8, 0x10, 0xE1]);
        assert_eq!(&Close::Peer(None).frame()[..], &[0x88, 0]);
        assert_eq!(
            Close::Protocol(ProtocolError::BadCloseReason).code(),
            1007,
            "a close reason that is not UTF-8"
        );
    }
}

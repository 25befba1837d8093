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

use super::conn::{Close, Conn};
use super::frame::{Decoder, Inbound, OP_PONG, ProtocolError, frame};
use super::protocol::{self, Body, ErrorCode, ProtoError, Request, encode, success};
use crate::auth::Credential;
use crate::clock::now_ms;
use crate::hub::Hub;
use crate::presence::Watch;
use crate::presence::actor::Event;
use crate::presence::wire::Target;
use crate::scope;
use crate::telemetry::EndReason;

/// Bytes read per `read` call; one buffer per worker thread, shared by all its connections.
const SCRATCH: usize = 64 * 1024;
/// Reads per readiness wake-up before yielding to other connections.
const READS_PER_WAKE: usize = 16;
/// A partial-frame buffer larger than this is freed once it empties.
const KEEP_PENDING: usize = 4 * 1024;
/// How long the closing handshake may take per direction.
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

/// Where an orders-family request goes.
enum Routed {
    Orders(crate::orders::service::Cmd),
    Feed(crate::orders::feed::Cmd),
}

struct Session {
    hub: Arc<Hub>,
    conn: Arc<Conn>,
    decoder: Decoder,
    pending: Vec<u8>,
    events: Vec<Inbound>,
    errors: ErrorWindow,
    bucket: Bucket,
    peer_closed: bool,
}

/// Runs a registered connection to its end and says why it ended.
pub(crate) async fn run(hub: Arc<Hub>, conn: Arc<Conn>, early: Vec<u8>) -> EndReason {
    let t = &hub.config.transport;
    let now = now_ms();
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
        hub,
        conn,
    };
    // Cold paths (once per connection, or rare requests) are boxed so that their state does not
    // sit inside every idle connection's task for its whole life.
    Box::pin(s.open()).await;
    if !early.is_empty() {
        s.pending = early;
        if let Err(e) = s.decode_pending() {
            s.conn.close(Close::Protocol(e));
        }
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
    heartbeat: Heartbeat,
    limits: Limits,
    expires_at: u64,
    calls: CallsInfo,
    server: ServerInfo,
}

#[derive(Serialize)]
struct CallsInfo {
    ring_timeout_ms: u64,
    max_sdp_bytes: usize,
    #[serde(flatten)]
    ice: crate::calls::turn::IceConfig,
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

impl Session {
    fn credential(&self) -> Credential {
        Credential {
            endpoint: self.conn.endpoint,
            role: self.conn.role,
            expires_at: self.conn.expires_at,
        }
    }

    async fn open(&mut self) {
        self.hub
            .backplane
            .publish_presence(Event::Connected {
                ep: self.conn.endpoint.0,
                conn: self.conn.key,
                at: now_ms(),
            })
            .await;
        let node = self.hub.org.node(self.conn.endpoint);
        let c = &self.hub.config;
        let hello = Hello {
            protocol: protocol::VERSION,
            conn: format!("{:016x}", self.conn.key),
            endpoint: EndpointInfo {
                id: node.id.as_str(),
                name: &node.name,
                name_en: &node.name_en,
                tier: node.tier,
            },
            role: self.conn.role.as_str(),
            heartbeat: Heartbeat {
                interval_ms: c.transport.heartbeat_interval_ms,
                timeout_ms: c.transport.heartbeat_timeout_ms,
            },
            limits: Limits {
                max_message_bytes: c.transport.max_message_bytes,
                rate_per_sec: c.transport.rate_per_sec,
                rate_burst: c.transport.rate_burst,
                max_subscriptions: c.presence.max_subscriptions,
            },
            expires_at: self.conn.expires_at,
            calls: CallsInfo {
                ring_timeout_ms: c.calls.ring_timeout_ms,
                max_sdp_bytes: c.calls.max_sdp_bytes,
                ice: crate::calls::turn::ice_config(
                    &c.calls,
                    node.id.as_str(),
                    now_ms() / 1000,
                    self.conn.expires_at,
                ),
            },
            server: ServerInfo {
                name: "gridhub",
                version: env!("CARGO_PKG_VERSION"),
            },
        };
        self.conn.send(&encode("hello", None, &hello));
        self.hub
            .calls
            .send(crate::calls::service::Cmd::Connected {
                ep: self.conn.endpoint,
                conn: self.conn.key,
            })
            .await;
    }

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

    /// One non-blocking read into the thread's scratch buffer, decoded in place; only an
    /// incomplete frame's tail is copied into `pending`.
    fn read_once(&mut self, buf: &mut [u8]) -> Result<ReadOnce, ProtocolError> {
        let n = match self.conn.stream.try_read(buf) {
            Ok(0) => return Ok(ReadOnce::Eof),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(ReadOnce::Drained),
            Err(_) => return Ok(ReadOnce::Eof),
        };
        self.hub.metrics.bytes_in.fetch_add(n as u64, Relaxed);
        self.conn.touch(now_ms());
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
        let m = &self.hub.metrics;
        match ev {
            Inbound::Text(bytes) => {
                m.messages_in.fetch_add(1, Relaxed);
                let t0 = Instant::now();
                self.on_text(&bytes).await;
                self.hub.metrics.request_latency.observe(t0.elapsed());
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
                let max = self.hub.config.transport.max_message_bytes;
                self.error(ProtoError::new(
                    ErrorCode::MessageTooLarge,
                    format!("a message of at least {declared} bytes exceeds the {max}-byte limit and was discarded"),
                ));
            }
            Inbound::Ping(payload) => {
                self.conn.send(&frame(OP_PONG, &payload));
            }
            Inbound::Pong => {}
            Inbound::Close { .. } => {
                self.peer_closed = true;
                self.conn.close(Close::Normal);
            }
        }
    }

    async fn on_text(&mut self, bytes: &[u8]) {
        let req = match protocol::decode(bytes) {
            Ok(r) => r,
            Err(e) => return self.error(e),
        };
        let now = now_ms();
        if !self.take_token(now) {
            let rate = self.hub.config.transport.rate_per_sec;
            return self.error(
                ProtoError::new(
                    ErrorCode::RateLimited,
                    format!("more than {rate} messages per second; this one was not processed"),
                )
                .to(&req),
            );
        }
        self.dispatch(req, now).await;
    }

    async fn dispatch(&mut self, req: Request, now: u64) {
        let Request { id: re, body } = req;
        let kind = body.kind();
        let err = |code, message: String| ProtoError {
            re: re.clone(),
            kind: Some(kind.into()),
            code,
            message,
        };
        match body {
            Body::Ping => {
                if let Some(f) = success(re.as_ref(), kind, &serde_json::json!({ "now": now })) {
                    self.conn.send(&f);
                }
            }
            Body::PresenceSet(set) => {
                let max = self.hub.config.presence.max_text_chars;
                match set.validate(max, now) {
                    Err(m) => self.error(err(ErrorCode::InvalidData, m)),
                    Ok(update) => {
                        self.hub
                            .backplane
                            .publish_presence(Event::Updated {
                                ep: self.conn.endpoint.0,
                                conn: self.conn.key,
                                update,
                                at: now,
                            })
                            .await;
                        if let Some(f) = success(re.as_ref(), kind, &serde_json::json!({})) {
                            self.conn.send(&f);
                        }
                    }
                }
            }
            Body::PresenceSubscribe(sub) => match self.watch_for(&sub.target) {
                Err((code, m)) => self.error(err(code, m)),
                Ok(w) => {
                    let conn = Arc::clone(&self.conn);
                    let presence = &self.hub.presence;
                    Box::pin(presence.subscribe(conn, w, sub.endpoints, re.clone())).await
                }
            },
            Body::PresenceUnsubscribe(unsub) => match self.watch_for(&unsub.target) {
                Err((code, m)) => self.error(err(code, m)),
                Ok(w) => {
                    let conn = Arc::clone(&self.conn);
                    Box::pin(self.hub.presence.unsubscribe(conn, w, re.clone())).await
                }
            },
            Body::CallIceServers => {
                let c = &self.hub.config.calls;
                let ice = crate::calls::turn::ice_config(
                    c,
                    self.hub.org.id(self.conn.endpoint).as_str(),
                    now / 1000,
                    self.conn.expires_at,
                );
                if let Some(f) = success(re.as_ref(), kind, &ice) {
                    self.conn.send(&f);
                }
            }
            body @ (Body::CallInvite(_)
            | Body::CallRing(_)
            | Body::CallAccept(_)
            | Body::CallReject(_)
            | Body::CallHangup(_)
            | Body::CallSignal(_)) => match self.call_request(body) {
                Ok(req) => {
                    let cmd = crate::calls::service::Cmd::Request {
                        conn: Arc::clone(&self.conn),
                        re: re.clone(),
                        kind,
                        req,
                        at: Instant::now(),
                    };
                    Box::pin(self.hub.calls.send(cmd)).await
                }
                Err((code, m)) => self.error(err(code, m)),
            },
            body => {
                // Orders and their feed: rarer per connection than heartbeats, and their
                // commands are large, so the send is boxed rather than kept in every task.
                match self.orders_command(body, re.clone(), kind) {
                    Ok(Routed::Orders(cmd)) => Box::pin(self.hub.orders.send(cmd)).await,
                    Ok(Routed::Feed(cmd)) => Box::pin(self.hub.feed.send(cmd)).await,
                    Err((code, m)) => self.error(err(code, m)),
                }
            }
        }
    }

    /// Turns an order or feed request into a command for its service.
    fn orders_command(
        &self,
        body: Body,
        re: Option<crate::transport::protocol::ReqId>,
        kind: &'static str,
    ) -> Result<Routed, (ErrorCode, String)> {
        use crate::orders::service::{Cmd, Reply};
        let org = &self.hub.org;
        let who = crate::orders::Who {
            node: self.conn.endpoint,
            role: self.conn.role,
        };
        let reply = Reply::Ws {
            conn: Arc::clone(&self.conn),
            re: re.clone(),
            kind,
        };
        let at = Instant::now();
        Ok(match body {
            Body::OrderCreate(c) => {
                let (new, key) = c
                    .into_new(org)
                    .map_err(|m| (ErrorCode::InvalidData, format!("order.create: {m}")))?;
                Routed::Orders(Cmd::Create {
                    who,
                    new,
                    key,
                    reply,
                    at,
                })
            }
            Body::OrderAct(action, a) => {
                let id = a.order.expect("checked when decoded");
                let expect = a.version;
                let act = a
                    .into_act(action, org)
                    .map_err(|m| (ErrorCode::InvalidData, m))?;
                Routed::Orders(Cmd::Act {
                    who,
                    id,
                    expect,
                    act,
                    reply,
                    at,
                })
            }
            Body::OrderGet(r) => Routed::Orders(Cmd::Get {
                who,
                id: r.order,
                reply,
            }),
            Body::OrderRead(r) => Routed::Orders(Cmd::Read {
                who,
                id: r.order,
                reply,
            }),
            Body::OutboxResume(r) => Routed::Orders(Cmd::Resume {
                conn: Arc::clone(&self.conn),
                after: r.after,
                re,
            }),
            Body::OutboxAck(a) => Routed::Orders(Cmd::Ack {
                conn: Arc::clone(&self.conn),
                seq: a.seq,
                re,
            }),
            Body::NoticeSend(n) => Routed::Orders(Cmd::NoticeSend {
                who,
                notice: *n,
                reply,
            }),
            Body::NoticeGet(n) => Routed::Orders(Cmd::NoticeGet {
                who,
                id: n.notice,
                reply,
            }),
            Body::NoticeRead(n) => Routed::Orders(Cmd::MarkRead {
                who,
                kind: "notice",
                id: n.notice,
                reply,
            }),
            Body::CampaignStart(c) => Routed::Orders(Cmd::CampaignStart {
                who,
                campaign: *c,
                reply,
            }),
            Body::CampaignGet(c) => Routed::Orders(Cmd::CampaignGet {
                who,
                id: c.campaign,
                reply,
            }),
            Body::CampaignRecord(r) => Routed::Orders(Cmd::CampaignRecord {
                who,
                id: r.campaign,
                records: r.records,
                reply,
            }),
            Body::CampaignDone(c) => Routed::Orders(Cmd::CampaignDone {
                who,
                id: c.campaign,
                reply,
            }),
            Body::CampaignClose(c) => Routed::Orders(Cmd::CampaignClose {
                who,
                id: c.campaign,
                reply,
            }),
            Body::CampaignWatch(c) | Body::CampaignUnwatch(c) => {
                Routed::Orders(Cmd::CampaignWatch {
                    conn: Arc::clone(&self.conn),
                    id: c.campaign,
                    watch: kind == "campaign.watch",
                    re,
                })
            }
            Body::OrdersSubscribe(n) | Body::OrdersUnsubscribe(n) => {
                let target = crate::presence::wire::Target::Node(n.node);
                let Watch::Subtree(node) = self.watch_for(&target)? else {
                    unreachable!("a node target is a subtree")
                };
                let conn = Arc::clone(&self.conn);
                Routed::Feed(if kind == "orders.subscribe" {
                    crate::orders::feed::Cmd::Subscribe { conn, node, re }
                } else {
                    crate::orders::feed::Cmd::Unsubscribe { conn, node, re }
                })
            }
            Body::Ping
            | Body::PresenceSet(_)
            | Body::PresenceSubscribe(_)
            | Body::PresenceUnsubscribe(_)
            | Body::CallInvite(_)
            | Body::CallRing(_)
            | Body::CallAccept(_)
            | Body::CallReject(_)
            | Body::CallHangup(_)
            | Body::CallSignal(_)
            | Body::CallIceServers => {
                unreachable!("handled by dispatch")
            }
        })
    }

    /// Turns a call request into a request for the calls service.
    fn call_request(&self, body: Body) -> Result<crate::calls::service::Req, (ErrorCode, String)> {
        use crate::calls::service::Req;
        Ok(match body {
            Body::CallInvite(i) => {
                let to = self.hub.org.lookup(i.to.as_str()).ok_or_else(|| {
                    (
                        ErrorCode::NotFound,
                        format!("call.invite: no node {} in the org tree", i.to),
                    )
                })?;
                Req::Invite {
                    to,
                    media: i.media,
                    offer: i.offer,
                }
            }
            Body::CallRing(r) => Req::Ring(r.call),
            Body::CallAccept(a) => Req::Accept(a.call, a.answer),
            Body::CallReject(r) => Req::Reject(r.call, r.reason),
            Body::CallHangup(r) => Req::Hangup(r.call),
            Body::CallSignal(sig) => {
                let (id, signal) = sig.into_signal().map_err(|m| (ErrorCode::InvalidData, m))?;
                Req::Signal(id, signal)
            }
            _ => unreachable!("only call requests are routed here"),
        })
    }

    /// Resolves a subscription target and checks it against the caller's scope.
    fn watch_for(&self, target: &Target) -> Result<Watch, (ErrorCode, String)> {
        let org = &self.hub.org;
        let node = match target {
            Target::Chain => {
                return Ok(Watch::Chain {
                    of: self.conn.endpoint,
                });
            }
            Target::Node(id) => org
                .lookup(id.as_str())
                .ok_or_else(|| (ErrorCode::NotFound, format!("no node {id} in the org tree")))?,
        };
        if !scope::can_watch_subtree(org, &self.credential(), node) {
            let me = org.node(self.conn.endpoint);
            let it = org.node(node);
            let allowed = match self.conn.role {
                crate::auth::Role::Worker => format!(
                    "a worker may watch only its own node ({}) or its chain of command (`chain: true`)",
                    me.id
                ),
                _ => format!("you may watch the subtree of {} ({})", me.id, me.name),
            };
            return Err((
                ErrorCode::OutOfScope,
                format!(
                    "node {} ({}) is outside your scope: {allowed}",
                    it.id, it.name
                ),
            ));
        }
        Ok(Watch::Subtree(node))
    }

    fn take_token(&mut self, now: u64) -> bool {
        let t = &self.hub.config.transport;
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

    /// Sends a typed error; too many within the window closes the connection with 1008.
    fn error(&mut self, e: ProtoError) {
        self.hub.metrics.errors_sent.fetch_add(1, Relaxed);
        self.conn.send(&e.encode());
        let t = &self.hub.config.transport;
        let now = now_ms();
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
        let flushed = tokio::time::timeout(LINGER, async {
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

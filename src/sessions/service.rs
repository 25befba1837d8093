//! The async shell around the session state machine: one task owns the core and takes every
//! session request, terminal coming and going (from the bus, so from every hub node) and timer
//! in arrival order. Effects are carried out here: the roster encoded once and written to every
//! member present (at the seat it takes part from), messages for one member, presence activity
//! (`in_session`) on the bus, records to the store (written behind the signaling; a session left
//! live by a crash is ended at the next start-up).

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use super::core::{Control, Effect, SessionError, SessionId, Sessions, Who};
use super::sfu::{MediaEvent, Sfu};
use super::wire::{RosterView, encode_msg, roster};
use crate::backplane::{Outbound, TerminalNews, To, Via};
use crate::clock::Clock;
use crate::org::{NodeIdx, Org};
use crate::presence::actor::Event;
use crate::presence::core::Activity;
use crate::store::{Job, Notifier, Store, StoreError, inbox};
use crate::transport::dispatch::Origin;
use crate::transport::protocol::{ErrorCode, ProtoError, ReqId, reply};

/// Requests waiting for the sessions service; senders wait when it is full.
const QUEUE: usize = 1024;

/// A session request, checked for form by the handler.
#[derive(Debug)]
pub enum Req {
    Create { title: String, invite: Vec<NodeIdx> },
    Invite(SessionId, Vec<NodeIdx>),
    Join(SessionId),
    Leave(SessionId),
    Publish(SessionId, super::core::Publishes),
    Control(SessionId, Control),
    Get(SessionId),
    List,
    MediaAnswer(SessionId, String),
    MediaCandidate(SessionId, webrtc::peer_connection::RTCIceCandidateInit),
    MediaRestart(SessionId),
}

pub enum Cmd {
    Request {
        origin: Origin,
        re: Option<ReqId>,
        kind: &'static str,
        req: Req,
    },
    /// Answered once everything sent before it is decided.
    Barrier(oneshot::Sender<()>),
    /// Answered once the records of everything decided before it are committed.
    Settled(oneshot::Sender<()>),
    Stop(oneshot::Sender<()>),
}

impl SessionError {
    fn ws_code(&self) -> ErrorCode {
        match self {
            SessionError::NotFound(_) => ErrorCode::NotFound,
            SessionError::Ended(_) => ErrorCode::SessionEnded,
            SessionError::NotInvited(_) => ErrorCode::NotInvited,
            SessionError::NotCommander(_) => ErrorCode::NotCommander,
            SessionError::OutOfScope(_) => ErrorCode::OutOfScope,
            SessionError::TooManySessions { .. } => ErrorCode::TooManySessions,
            SessionError::TooManyMembers { .. } => ErrorCode::TooManyMembers,
            SessionError::Busy(_) => ErrorCode::Busy,
            SessionError::Invalid(_) => ErrorCode::InvalidData,
            SessionError::Illegal(_) => ErrorCode::IllegalTransition,
        }
    }
}

#[derive(Clone)]
pub struct SessionsHandle {
    tx: mpsc::Sender<Cmd>,
}

impl SessionsHandle {
    /// Queues a command; a request after the service stopped is answered `unavailable`.
    pub async fn send(&self, cmd: Cmd, out: &dyn Outbound) {
        if let Err(e) = self.tx.send(cmd).await
            && let Cmd::Request {
                origin, re, kind, ..
            } = e.0
        {
            let p = ProtoError::new(ErrorCode::Unavailable, "sessions are shutting down")
                .answering(re, kind);
            out.send(To::Conn(origin.conn), &p.encode(), Via::Post);
        }
    }

    /// Waits until the service has decided everything sent to it before.
    pub async fn caught_up(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Barrier(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Waits until the records of everything the service has decided so far are committed, so
    /// a reader sees every session as its members have been told it is.
    pub async fn settled(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Settled(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Ends every live session (their members are told) and stops the service.
    pub async fn stop(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Stop(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Where the forwarding unit's peer connections gather candidates, and where tracks are
/// recorded (none: not recorded).
pub struct Media {
    pub ip: std::net::IpAddr,
    pub recordings: Option<std::path::PathBuf>,
    /// RTP packets a published track may bring per second.
    pub max_packets_per_sec: u32,
}

/// Ends the sessions a previous run left live and starts the service on the current runtime.
pub fn start(
    org: Arc<Org>,
    rules: super::core::Rules,
    store: Arc<Store>,
    out: Arc<dyn Outbound>,
    clock: Clock,
    media: Media,
    metrics: Arc<crate::telemetry::Metrics>,
) -> Result<(SessionsHandle, tokio::task::JoinHandle<()>), StoreError> {
    let (next_id, cut) = store.read_sync(|c| super::records::recover(c, clock.now_ms()))?;
    if cut > 0 {
        tracing::warn!(
            sessions = cut,
            "sessions live when the hub last stopped are recorded as ended by the restart"
        );
    }
    let (tx, rx) = mpsc::channel(QUEUE);
    let terminals = out.bus().subscribe::<TerminalNews>(QUEUE);
    let (failed, failures) = inbox();
    let recorder = media.recordings.map(|data_dir| super::sfu::Recorder {
        data_dir,
        store: Arc::clone(&store),
        clock: clock.clone(),
    });
    // Every member's connection reports a few events as it is set up (its tracks, its state,
    // the hub's candidates); a full queue would lose a track for good, so it holds a burst of
    // every possible member joining at once.
    let events = (rules.max_sessions * rules.max_members * 8).max(1024);
    let (sfu, media) = Sfu::new(
        events,
        media.ip,
        Arc::clone(&org),
        Arc::clone(&out),
        recorder,
        Arc::clone(&metrics.session_packets_forwarded),
        super::sfu::Flood {
            per_sec: media.max_packets_per_sec.max(1),
            dropped: Arc::clone(&metrics.session_packets_dropped),
        },
    );
    let svc = Service {
        core: Sessions::new(Arc::clone(&org), rules, next_id),
        org,
        store,
        out,
        clock,
        failed,
        sfu,
        metrics,
    };
    Ok((
        SessionsHandle { tx },
        tokio::spawn(svc.run(rx, terminals, failures, media)),
    ))
}

struct Service {
    core: Sessions,
    org: Arc<Org>,
    store: Arc<Store>,
    out: Arc<dyn Outbound>,
    clock: Clock,
    /// Record writes that failed (successes are not told).
    failed: Notifier<StoreError>,
    sfu: Sfu,
    metrics: Arc<crate::telemetry::Metrics>,
}

impl Service {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Cmd>,
        mut terminals: mpsc::Receiver<Arc<TerminalNews>>,
        mut failures: mpsc::UnboundedReceiver<StoreError>,
        mut media: mpsc::Receiver<MediaEvent>,
    ) {
        loop {
            let due = self.core.next_deadline();
            tokio::select! {
                // A terminal's arrival is published before anything it sends can reach here.
                biased;
                n = terminals.recv() => {
                    let Some(n) = n else { return };
                    self.news(&n).await;
                }
                Some(e) = failures.recv() => {
                    tracing::error!("session record not written: {e}");
                }
                Some(ev) = media.recv() => match ev {
                    MediaEvent::Track {
                        session,
                        from,
                        generation,
                        track,
                    } => {
                        self.sfu.track(session, from, generation, track).await;
                    }
                    MediaEvent::Connected {
                        session,
                        key,
                        generation,
                    } => self.sfu.connected(session, key, generation).await,
                    MediaEvent::Candidate {
                        session,
                        key,
                        generation,
                        init,
                    } => self.sfu.trickle(session, key, generation, init),
                },
                cmd = rx.recv() => match cmd {
                    None => return,
                    Some(Cmd::Stop(done)) => {
                        let now = self.clock.now_ms();
                        let fx = self.core.end_all("the hub is shutting down", now);
                        self.apply(fx).await;
                        let _ = done.send(());
                        return;
                    }
                    Some(Cmd::Barrier(done)) => {
                        let _ = done.send(());
                    }
                    Some(Cmd::Settled(done)) => {
                        // The writer commits jobs in the order queued.
                        let (tx, mut rx) = inbox::<()>();
                        self.store
                            .submit_async(Job::new(|_| Ok(())).notify(&tx, |_| ()))
                            .await;
                        tokio::spawn(async move {
                            let _ = rx.recv().await;
                            let _ = done.send(());
                        });
                    }
                    Some(Cmd::Request { origin, re, kind, req }) => {
                        self.request(origin, re, kind, req).await;
                    }
                },
                _ = self.clock.sleep_until_ms(due.unwrap_or_default()), if due.is_some() => {
                    let fx = self.core.tick(self.clock.now_ms());
                    self.apply(fx).await;
                }
            }
        }
    }

    async fn news(&mut self, n: &TerminalNews) {
        let now = self.clock.now_ms();
        let fx = match n {
            TerminalNews::Joined { ep, conn, seat, .. } => match self.org.lookup(ep.as_str()) {
                Some(ep) => self.core.connected(ep, *seat, *conn),
                None => return,
            },
            TerminalNews::Left { ep, conn, seat, .. } => match self.org.lookup(ep.as_str()) {
                Some(ep) => self.core.disconnected(ep, *seat, *conn, now),
                None => return,
            },
        };
        self.apply(fx).await;
    }

    async fn request(&mut self, origin: Origin, re: Option<ReqId>, kind: &'static str, req: Req) {
        let who = Who {
            node: origin.endpoint,
            seat: origin.seat,
            conn: origin.conn,
            role: origin.role,
        };
        // A connection that closed before its request was decided (news of terminals is taken
        // first) would be left in the session, present on a connection that is gone and never
        // told away. Nobody is left to answer.
        if matches!(req, Req::Create { .. } | Req::Join(_)) && !self.out.alive(origin.conn) {
            return;
        }
        let now = self.clock.now_ms();
        let answer =
            |out: &dyn Outbound, f: bytes::Bytes| out.send(To::Conn(origin.conn), &f, Via::Post);
        let result = match req {
            Req::Create { title, invite } => self
                .core
                .create(who, &title, &invite, now)
                .map(|(id, fx)| (Some(id), fx)),
            Req::Invite(id, nodes) => self
                .core
                .invite(who, id, &nodes, now)
                .map(|fx| (Some(id), fx)),
            Req::Join(id) => self.core.join(who, id, now).map(|fx| (Some(id), fx)),
            Req::Leave(id) => self.core.leave(who, id, now).map(|fx| (Some(id), fx)),
            Req::Publish(id, p) => self.core.publish(who, id, p).map(|fx| (Some(id), fx)),
            Req::Control(id, c) => self.core.control(who, id, c, now).map(|fx| (Some(id), fx)),
            Req::MediaAnswer(id, sdp) => {
                let r = match self.present(&who, id) {
                    Ok(()) => self.sfu.answer(id, (who.node, who.seat), sdp).await,
                    Err(e) => Err(e),
                };
                return self.media_reply(origin, re, kind, r);
            }
            Req::MediaCandidate(id, init) => {
                let r = match self.present(&who, id) {
                    Ok(()) => self.sfu.candidate(id, (who.node, who.seat), init).await,
                    Err(e) => Err(e),
                };
                return self.media_reply(origin, re, kind, r);
            }
            Req::MediaRestart(id) => {
                let r = match self.present(&who, id) {
                    Ok(()) => self.sfu.restart(id, (who.node, who.seat)).await,
                    Err(e) => Err(e),
                };
                return self.media_reply(origin, re, kind, r);
            }
            Req::Get(id) => match self.core.get(id) {
                Some(s) if self.may_see(&who, s) => Ok((Some(id), Vec::new())),
                _ => Err(SessionError::NotFound(id)),
            },
            Req::List => {
                #[derive(Serialize)]
                struct List<'a> {
                    sessions: Vec<RosterView<'a>>,
                }
                let ids = self.core.of(who.node);
                let sessions = ids
                    .iter()
                    .filter_map(|&id| self.core.get(id))
                    .filter(|s| self.may_see(&who, s))
                    .map(|s| RosterView::of(&self.org, s))
                    .collect();
                if let Some(f) = reply_frame(re.as_ref(), &List { sessions }) {
                    answer(self.out.as_ref(), f);
                }
                return;
            }
        };
        match result {
            Ok((id, fx)) => {
                // The requester hears its answer, the session as it now stands, before the
                // roster pushed to every member.
                if let Some(s) = id.and_then(|id| self.core.get(id)) {
                    #[derive(Serialize)]
                    struct One<'a> {
                        session: RosterView<'a>,
                    }
                    let data = One {
                        session: RosterView::of(&self.org, s),
                    };
                    // A create is always answered: the creator needs the session's number.
                    if re.is_some() || kind == "session.create" {
                        answer(self.out.as_ref(), reply(re.as_ref(), &data));
                    }
                }
                self.apply(fx).await;
            }
            Err(e) => {
                let p = ProtoError::new(e.ws_code(), e.to_string()).answering(re, kind);
                answer(self.out.as_ref(), p.encode());
            }
        }
    }

    /// Whether `who` takes part in session `id` now, from this seat (media is a member's).
    fn present(&self, who: &Who, id: SessionId) -> Result<(), String> {
        let s = self.core.get(id).ok_or(format!("no session {id}"))?;
        s.members
            .iter()
            .any(|m| m.node == who.node && m.seat == Some(who.seat) && m.present())
            .then_some(())
            .ok_or(format!("you are not in session {id} from this seat"))
    }

    fn media_reply(
        &self,
        origin: Origin,
        re: Option<ReqId>,
        kind: &'static str,
        r: Result<(), String>,
    ) {
        let f = match r {
            Ok(()) => match reply_frame(re.as_ref(), &serde_json::json!({})) {
                Some(f) => f,
                None => return,
            },
            Err(m) => {
                let code = if m.starts_with("no session") || m.starts_with("you are not") {
                    ErrorCode::NotInvited
                } else {
                    ErrorCode::InvalidData
                };
                ProtoError::new(code, format!("{kind}: {m}"))
                    .answering(re, kind)
                    .encode()
            }
        };
        self.out.send(To::Conn(origin.conn), &f, Via::Post);
    }

    /// Members see their session; so do the walls of its center and of the centers above.
    fn may_see(&self, who: &Who, s: &super::core::Session) -> bool {
        s.members.iter().any(|m| m.node == who.node) || self.org.contains(who.node, s.center)
    }

    async fn apply(&mut self, effects: Vec<Effect>) {
        self.apply_effects(effects).await;
        use std::sync::atomic::Ordering::Relaxed;
        self.metrics
            .sessions_live
            .store(self.core.live_count() as u64, Relaxed);
        self.metrics
            .session_peers
            .store(self.sfu.peers() as u64, Relaxed);
    }

    async fn apply_effects(&mut self, effects: Vec<Effect>) {
        let now = self.clock.now_ms();
        // Who is shown which cameras follows the roster: set before anyone is admitted, and
        // applied to the forwards once everything else is done.
        let mut touched: Vec<SessionId> = Vec::new();
        for e in &effects {
            let id = match e {
                Effect::Roster(id) => *id,
                Effect::Joined { session, .. } | Effect::Left { session, .. } => *session,
                _ => continue,
            };
            if !touched.contains(&id) {
                touched.push(id);
                let view = self.core.get(id).map(view).unwrap_or_default();
                self.sfu.set_view(id, view);
            }
        }
        for e in effects {
            match e {
                Effect::Send { to, seat, msg } => {
                    if let super::core::Msg::Muted { session, muted } = msg {
                        self.sfu.set_muted(session, to, muted);
                    }
                    let f = encode_msg(&self.org, &self.core, &msg);
                    let to = match seat {
                        Some(s) => To::Seat(to, s),
                        None => To::Terminal(to),
                    };
                    self.out.send(to, &f, Via::Post);
                }
                Effect::Roster(id) => {
                    let Some(s) = self.core.get(id) else { continue };
                    let f = roster(&self.org, s);
                    for m in s.present() {
                        if let Some(seat) = m.seat {
                            self.out.send(To::Seat(m.node, seat), &f, Via::Post);
                        }
                    }
                }
                Effect::Record(id) => {
                    let Some(s) = self.core.get(id).cloned() else {
                        continue;
                    };
                    let org = Arc::clone(&self.org);
                    self.write(move |c| super::records::write(c, &org, &s))
                        .await;
                }
                Effect::Joined {
                    session,
                    node,
                    seat,
                    part,
                    at,
                } => {
                    let publishes = part != super::core::Part::Observer;
                    let muted = self
                        .core
                        .get(session)
                        .and_then(|s| s.member(node))
                        .is_some_and(|m| m.muted && publishes);
                    if let Err(e) = self
                        .sfu
                        .admit(session, (node, seat), publishes, muted)
                        .await
                    {
                        tracing::warn!(session = %session, "session media not set up: {e}");
                    }
                    let id = self.org.id(node).to_string();
                    self.write(move |c| {
                        super::records::joined(c, session.0, (&id, node), part, seat.as_str(), at)
                    })
                    .await;
                }
                Effect::Left {
                    session,
                    node,
                    seat,
                    at,
                } => {
                    self.sfu.remove(session, (node, seat)).await;
                    let id = self.org.id(node).to_string();
                    self.write(move |c| super::records::left(c, session.0, &id, seat.as_str(), at))
                        .await;
                }
                Effect::InSession { ep, active } => {
                    let activity = if active {
                        Activity::InSession
                    } else {
                        Activity::Idle
                    };
                    self.out
                        .bus()
                        .publish(Event::Activity {
                            ep: self.org.id(ep).clone(),
                            activity,
                            at: now,
                        })
                        .await;
                }
            }
        }
        for id in touched {
            self.sfu.reconcile(id).await;
        }
    }
}

/// Who is shown which cameras in `s` (see `sfu::View`).
fn view(s: &super::core::Session) -> super::sfu::View {
    use super::core::Part;
    let sees_all = s
        .present()
        .filter(|m| matches!(m.part, Part::Commander | Part::Observer))
        .filter_map(|m| m.seat.map(|seat| (m.node, seat)))
        .collect();
    let mut featured = vec![s.commander];
    featured.extend(s.spotlight);
    super::sfu::View { sees_all, featured }
}

impl Service {
    async fn write(
        &self,
        f: impl FnOnce(&crate::store::Connection) -> crate::store::db::Result<()> + Send + 'static,
    ) {
        self.store
            .submit_async(Job::new(f).notify_failure(&self.failed, |e| e))
            .await;
    }
}

/// A reply frame for a request with an id (a notification is answered only on failure).
fn reply_frame<T: Serialize>(re: Option<&ReqId>, data: &T) -> Option<bytes::Bytes> {
    re.map(|_| reply(re, data))
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::auth::{Role, Seat};
    use crate::backplane::testing::Sent;
    use crate::outbox::testing::Bench;
    use crate::transport::dispatch::Origin;

    struct Fixture {
        bench: Bench,
        sessions: SessionsHandle,
    }

    impl Fixture {
        fn new(tag: &str) -> Fixture {
            let bench = Bench::new(&format!("sessions-{tag}"));
            let rules = super::super::core::Rules {
                max_sessions: 2,
                max_members: 5,
                grace_ms: 20_000,
                max_title_chars: 40,
            };
            let media = Media {
                ip: std::net::Ipv4Addr::LOCALHOST.into(),
                recordings: None,
                max_packets_per_sec: 100,
            };
            let (sessions, _task) = start(
                Arc::clone(&bench.org),
                rules,
                Arc::clone(&bench.store),
                bench.outbound(),
                bench.clock.clone(),
                media,
                Arc::default(),
            )
            .unwrap();
            Fixture { bench, sessions }
        }

        fn origin(&self, id: &str, conn: u64) -> Origin {
            let n = self.bench.n(id);
            Origin {
                conn,
                endpoint: n,
                role: Role::default_for(self.bench.org.tier(n)),
                seat: Seat::MAIN,
                expires_at: u64::MAX,
            }
        }

        async fn news(&self, n: TerminalNews) {
            self.bench.out.bus().publish(n).await;
        }

        async fn joined(&self, id: &str, conn: u64) {
            let o = self.origin(id, conn);
            self.news(TerminalNews::Joined {
                ep: self.bench.org.id(o.endpoint).clone(),
                conn,
                seat: Seat::MAIN,
                role: o.role,
                at: 0,
            })
            .await;
        }

        async fn request(&self, id: &str, conn: u64, kind: &'static str, req: Req) {
            let cmd = Cmd::Request {
                origin: self.origin(id, conn),
                re: Some(ReqId::Num(1)),
                kind,
                req,
            };
            self.sessions.send(cmd, self.bench.out.as_ref()).await;
            self.sessions.caught_up().await;
        }

        /// Messages sent since the last look, as JSON.
        fn sent(&self) -> Vec<Value> {
            self.bench
                .out
                .take()
                .iter()
                .filter_map(Sent::json)
                .collect()
        }
    }

    #[tokio::test]
    async fn a_join_from_a_connection_that_closed_first_leaves_the_member_out() {
        let f = Fixture::new("closed-join");
        f.joined("a", 1).await;
        let w1 = f.bench.n("w1");
        f.request(
            "a",
            1,
            "session.create",
            Req::Create {
                title: "t".into(),
                invite: vec![w1],
            },
        )
        .await;
        let id = f
            .sent()
            .iter()
            .find(|m| m["type"] == "reply")
            .and_then(|m| m["data"]["session"]["session"].as_u64())
            .expect("created");
        // The worker connects, asks to join and its connection closes; the goodbye is decided
        // before the join.
        f.joined("w1", 2).await;
        f.bench.out.close(2);
        f.news(TerminalNews::Left {
            ep: f.bench.org.id(w1).clone(),
            conn: 2,
            seat: Seat::MAIN,
            at: 0,
        })
        .await;
        f.sessions.caught_up().await;
        f.request("w1", 2, "session.join", Req::Join(SessionId(id)))
            .await;
        f.request("a", 1, "session.get", Req::Get(SessionId(id)))
            .await;
        let sent = f.sent();
        let roster = sent
            .iter()
            .rev()
            .find(|m| m["type"] == "reply")
            .expect("the roster")["data"]["session"]
            .clone();
        let member = roster["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == "w1")
            .unwrap()
            .clone();
        assert_eq!(member["state"], "invited", "{roster}");
        assert!(
            !sent.iter().any(|m| m["type"] == "session.media.offer"),
            "media offered to a connection that is gone"
        );
        // The same worker on a live connection joins.
        f.joined("w1", 3).await;
        f.request("w1", 3, "session.join", Req::Join(SessionId(id)))
            .await;
        f.request("a", 1, "session.get", Req::Get(SessionId(id)))
            .await;
        let sent = f.sent();
        let roster = &sent.iter().rev().find(|m| m["type"] == "reply").unwrap()["data"]["session"];
        assert!(
            roster["members"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["id"] == "w1" && m["state"] == "joined"),
            "{roster}"
        );
    }
}

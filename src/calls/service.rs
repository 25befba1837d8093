//! The async shell around the call state machine.
//!
//! One task owns the core and takes every call request, terminal coming and going (from the
//! bus, so from every hub node) and timer in arrival order, so the signaling between two parties
//! is relayed in the order it was sent. Effects are carried out here: frames to the parties
//! through the backplane (encoded once, written by the parties' own connection tasks), presence
//! activity on the bus, call records to the store, and missed calls to the callee's durable
//! outbox. Records are written behind the relay, not before it: a call is live signaling first
//! and a record second, and a record lost to a crash is marked `interrupted` at the next start-up
//! rather than delaying every SDP by a disk flush.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use super::core::{
    self, CallError, CallId, Callee, Calls, Effect, Media, Msg, Rules, SeatAt, Signal, Terminal,
    phase_str,
};
use super::records;
use super::wire::{Who, encode_msg};
use crate::auth::Role;
use crate::backplane::{Outbound, TerminalNews, To, Via};
use crate::clock::Clock;
use crate::org::{NodeIdx, Org};
use crate::outbox::Outbox;
use crate::presence::actor::Event;
use crate::presence::core::Activity;
use crate::store::{Job, Notifier, Store, StoreError, inbox};
use crate::telemetry::Metrics;
use crate::transport::dispatch::Origin;
use crate::transport::protocol::{ErrorCode, ProtoError, ReqId, reply};

/// Requests waiting for the calls service; senders wait when it is full.
const QUEUE: usize = 4096;

/// A call request, checked for form by the protocol layer.
#[derive(Debug)]
pub enum Req {
    Invite {
        to: NodeIdx,
        media: Media,
        offer: Option<String>,
    },
    Ring(CallId),
    Accept(CallId, Option<String>),
    Reject(CallId, Option<String>),
    Hangup(CallId),
    Signal(CallId, Signal),
}

pub enum Cmd {
    Request {
        origin: Origin,
        re: Option<ReqId>,
        kind: &'static str,
        req: Req,
        /// When the request was decoded.
        at: Instant,
    },
    /// Answered once every record decided before it is committed (see `CallsHandle::settled`).
    Settled(oneshot::Sender<()>),
    /// Answered once everything sent before it is decided (see `CallsHandle::caught_up`).
    Barrier(oneshot::Sender<()>),
    Stop(oneshot::Sender<()>),
}

/// What the store says about the service's jobs.
enum Stored {
    /// A record failed (successes are not told).
    Record(CallId, StoreError),
    Missed(CallId, StoreError),
    Settled(oneshot::Sender<()>),
}

#[derive(Clone)]
pub struct CallsHandle {
    tx: mpsc::Sender<Cmd>,
    metrics: Arc<Metrics>,
}

impl CallsHandle {
    /// Queues a command; a request after the service stopped is answered `unavailable`.
    pub async fn send(&self, cmd: Cmd, out: &dyn Outbound) {
        self.metrics.calls_queue.store(
            (self.tx.max_capacity() - self.tx.capacity()) as u64,
            Relaxed,
        );
        if let Err(e) = self.tx.send(cmd).await
            && let Cmd::Request {
                origin, re, kind, ..
            } = e.0
        {
            let p = ProtoError::new(ErrorCode::Unavailable, "calls are shutting down")
                .answering(re, kind);
            out.send(To::Conn(origin.conn), &p.encode(), Via::Post);
        }
    }

    /// Waits until the records of everything the service has decided so far are committed.
    /// Records are written behind the relay; a reader that waits here first sees every call
    /// as its parties have already been told it is (a call they saw end is not listed as live).
    pub async fn settled(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Settled(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Waits until the service has decided everything sent to it before (its effects sent; the
    /// records may still be on their way to the store).
    pub async fn caught_up(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Barrier(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Ends the calls still going on (recorded as interrupted) and stops.
    pub async fn stop(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Stop(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

impl CallError {
    fn ws_code(&self) -> ErrorCode {
        match self {
            CallError::NotFound(_) => ErrorCode::NotFound,
            CallError::Ended(_) => ErrorCode::CallEnded,
            CallError::NotAParty(_) => ErrorCode::NotAParty,
            CallError::OutOfScope(_) => ErrorCode::OutOfScope,
            CallError::Offline(_) => ErrorCode::Offline,
            CallError::Busy(_) => ErrorCode::Busy,
            CallError::Invalid(_) => ErrorCode::InvalidData,
            CallError::Illegal(_) => ErrorCode::IllegalTransition,
            CallError::Glare { .. } => ErrorCode::Glare,
        }
    }
}

/// Runs the service on a thread of its own. On the shared runtime the relay would wait its turn
/// behind every connection task that has data (thousands in a storm) each time it wakes, which
/// was most of a relayed message's time in the hub; here it is scheduled as soon as a request
/// arrives. The returned task ends when the service does.
pub fn on_own_thread(
    service: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (done_tx, done_rx) = oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("gridhub-calls".into())
        .spawn(move || {
            rt.block_on(service);
            let _ = done_tx.send(());
        })?;
    Ok(tokio::spawn(async move {
        let _ = done_rx.await;
    }))
}

/// Opens the call records (cutting calls a previous run left open) and makes the service: a
/// future to run wherever the caller likes (`on_own_thread` in the hub; the test's paused
/// runtime in tests).
#[allow(clippy::too_many_arguments)]
pub fn prepare(
    org: Arc<Org>,
    rules: Rules,
    store: Arc<Store>,
    out: Arc<dyn Outbound>,
    outbox: Outbox,
    metrics: Arc<Metrics>,
    clock: Clock,
) -> Result<(CallsHandle, impl std::future::Future<Output = ()> + Send), StoreError> {
    let (next_id, cut) = store.read_sync(|c| records::recover(c, clock.now_ms()))?;
    if cut > 0 {
        tracing::warn!(
            calls = cut,
            "calls open when the hub last stopped are recorded as interrupted"
        );
    }
    let (tx, rx) = mpsc::channel(QUEUE);
    let (news, stored) = inbox();
    let terminals = out.bus().subscribe::<TerminalNews>(QUEUE);
    let svc = Service {
        core: Calls::new(Arc::clone(&org), rules, next_id),
        org,
        store,
        out,
        outbox,
        metrics: Arc::clone(&metrics),
        clock,
        news,
    };
    Ok((CallsHandle { tx, metrics }, svc.run(rx, terminals, stored)))
}

struct Service {
    core: Calls,
    org: Arc<Org>,
    store: Arc<Store>,
    out: Arc<dyn Outbound>,
    outbox: Outbox,
    metrics: Arc<Metrics>,
    clock: Clock,
    news: Notifier<Stored>,
}

impl Service {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Cmd>,
        mut terminals: mpsc::Receiver<Arc<TerminalNews>>,
        mut stored: mpsc::UnboundedReceiver<Stored>,
    ) {
        loop {
            let due = self.core.next_deadline();
            let t0;
            tokio::select! {
                // A terminal's arrival is published before anything it sends can reach here.
                biased;
                n = terminals.recv() => {
                    let Some(n) = n else { return };
                    t0 = Instant::now();
                    self.news(&n).await;
                }
                s = stored.recv() => {
                    // The service holds a sender itself, so this never ends first.
                    let Some(s) = s else { return };
                    t0 = Instant::now();
                    self.stored(s);
                }
                cmd = rx.recv() => {
                    t0 = Instant::now();
                    if !self.handle(cmd).await {
                        return;
                    }
                }
                _ = self.clock.sleep_until_ms(due.unwrap_or_default()), if due.is_some() => {
                    t0 = Instant::now();
                    let fx = self.core.tick(self.clock.now_ms());
                    self.apply(fx).await;
                }
            }
            self.metrics
                .calls_busy_us
                .fetch_add(t0.elapsed().as_micros() as u64, Relaxed);
        }
    }

    fn stored(&mut self, s: Stored) {
        match s {
            Stored::Record(id, e) => {
                tracing::error!(call = %id, "call record not written: {e}")
            }
            Stored::Missed(id, e) => {
                tracing::error!(call = %id, "missed-call notice not written: {e}")
            }
            Stored::Settled(done) => {
                let _ = done.send(());
            }
        }
    }

    /// A terminal connected (it may be coming back to a call) or left, on any hub node.
    async fn news(&mut self, n: &TerminalNews) {
        let now = self.clock.now_ms();
        let fx = match n {
            TerminalNews::Joined { ep, conn, seat, .. } => match self.org.lookup(ep.as_str()) {
                Some(ep) => self.core.connected(ep, *seat, *conn, now),
                None => return,
            },
            TerminalNews::Left { ep, conn, seat, .. } => {
                let Some(ep) = self.org.lookup(ep.as_str()) else {
                    return;
                };
                // A newer connection of the seat took over: its calls go on there.
                let replaced = self
                    .out
                    .seats(ep)
                    .iter()
                    .any(|l| l.seat == *seat && l.conn != *conn);
                if replaced || self.core.of(ep).is_empty() {
                    return;
                }
                self.core.disconnected(ep, *seat, *conn, now)
            }
        };
        self.apply(fx).await;
    }

    /// One command; `false` when the service is to stop.
    async fn handle(&mut self, cmd: Option<Cmd>) -> bool {
        match cmd {
            None => return false,
            Some(Cmd::Stop(done)) => {
                let fx = self.core.interrupt_all(self.clock.now_ms());
                self.apply(fx).await;
                let _ = done.send(());
                return false;
            }
            Some(Cmd::Barrier(done)) => {
                let _ = done.send(());
            }
            Some(Cmd::Settled(done)) => {
                // The writer commits jobs in the order queued, so this one's completion follows
                // every record queued before it.
                self.store
                    .submit_async(
                        Job::new(|_| Ok(())).notify(&self.news, move |_| Stored::Settled(done)),
                    )
                    .await;
            }
            Some(Cmd::Request {
                origin,
                re,
                kind,
                req,
                at,
            }) => self.request(origin, re, kind, req, at).await,
        }
        true
    }

    async fn request(
        &mut self,
        origin: Origin,
        re: Option<ReqId>,
        kind: &'static str,
        req: Req,
        at: Instant,
    ) {
        let who = core::Who {
            node: origin.endpoint,
            seat: origin.seat,
            conn: origin.conn,
        };
        let now = self.clock.now_ms();
        let mut refusal = None;
        let result = match req {
            // An observer seat places no call (the core says why) and takes none.
            _ if origin.role == Role::Observer && kind != "call.invite" => {
                Err(CallError::OutOfScope(
                    "an observer seat (a video wall) takes no part in calls: answer at an operator's or the station's seat".into(),
                ))
            }
            Req::Invite { to, media, offer } => {
                // Observer seats are not rung: a center whose only connected seat is its video
                // wall is off line for calls.
                let from = Terminal {
                    node: who.node,
                    role: origin.role,
                    seat: origin.seat,
                    conn: Some(origin.conn),
                };
                let callee_node = to;
                let to = Callee {
                    node: to,
                    seats: self
                        .out
                        .seats(to)
                        .iter()
                        .filter(|l| l.role != Role::Observer)
                        .map(|l| SeatAt {
                            seat: l.seat,
                            role: l.role,
                            conn: l.conn,
                        })
                        .collect(),
                };
                let r = self.core.invite(from, to, media, offer, now);
                match &r {
                    Ok(_) => {
                        self.metrics.calls_placed.fetch_add(1, Relaxed);
                    }
                    Err(e) => {
                        refusal = self.core.refused(who.node, callee_node, media, e, now)
                    }
                }
                r
            }
            Req::Ring(id) => self.core.ring(who, id, now).map(|fx| (id, fx)),
            Req::Accept(id, answer) => self.core.accept(who, id, answer, now).map(|fx| {
                self.metrics.calls_answered.fetch_add(1, Relaxed);
                (id, fx)
            }),
            Req::Reject(id, reason) => self.core.reject(who, id, reason, now).map(|fx| (id, fx)),
            Req::Hangup(id) => self.core.hangup(who, id, now).map(|fx| (id, fx)),
            Req::Signal(id, signal) => self.core.signal(who, id, signal).map(|fx| (id, fx)),
        };
        match result {
            Ok((id, fx)) => {
                #[derive(Serialize)]
                struct Ok<'a> {
                    call: CallId,
                    state: &'static str,
                    #[serde(skip_serializing_if = "Option::is_none")]
                    to: Option<Who<'a>>,
                }
                let c = self.core.get(id).expect("a call just acted on is kept");
                let data = Ok {
                    call: id,
                    state: phase_str(c.phase),
                    to: (kind == "call.invite").then(|| Who::of(&self.org, c.callee)),
                };
                // The requester hears its answer before anything the call causes. An invite is
                // always answered: the caller needs the call's number.
                if re.is_some() || kind == "call.invite" {
                    self.out
                        .send(To::Conn(origin.conn), &reply(re.as_ref(), &data), Via::Post);
                }
                self.apply_for(fx, Some(at)).await;
            }
            Err(e) => {
                self.metrics.calls_refused.fetch_add(1, Relaxed);
                let p = ProtoError::new(e.ws_code(), e.to_string()).answering(re, kind);
                self.out.send(To::Conn(origin.conn), &p.encode(), Via::Post);
                if let Some(record) = refusal {
                    self.apply(vec![record]).await;
                }
            }
        }
    }

    async fn apply(&mut self, effects: Vec<Effect>) {
        self.apply_for(effects, None).await
    }

    /// Carries out effects; `at`: when the request that caused them was decoded.
    async fn apply_for(&mut self, effects: Vec<Effect>, at: Option<Instant>) {
        let now = self.clock.now_ms();
        for e in effects {
            match e {
                Effect::Send { to, msg } => {
                    if matches!(msg, Msg::Signal { .. }) {
                        self.metrics.call_signals.fetch_add(1, Relaxed);
                    }
                    // Undeliverable means the party is gone; its disconnect reaches the core next.
                    self.out.send(
                        To::Seat(to.node, to.seat),
                        &encode_msg(&self.org, &msg),
                        Via::Post,
                    );
                    if let Some(at) = at {
                        self.metrics.call_relay_latency.observe(at.elapsed());
                    }
                }
                Effect::InCall { ep, active } => {
                    let activity = if active {
                        Activity::InCall
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
                Effect::Record(call) => {
                    let org = Arc::clone(&self.org);
                    let id = call.id;
                    self.store
                        .submit_async(
                            Job::new(move |c| records::write(c, &org, &call))
                                .notify_failure(&self.news, move |e| Stored::Record(id, e)),
                        )
                        .await;
                }
                Effect::Missed {
                    callee,
                    call,
                    from,
                    at,
                } => {
                    #[derive(Serialize)]
                    struct Missed<'a> {
                        kind: &'static str,
                        call: CallId,
                        from: Who<'a>,
                        media: Option<Media>,
                        at: u64,
                    }
                    let media = self.core.get(call).map(|c| c.media);
                    let payload = serde_json::to_string(&Missed {
                        kind: "call.missed",
                        call,
                        from: Who::of(&self.org, from),
                        media,
                        at,
                    })
                    .expect("missed-call notices serialize");
                    let mut batch = self.outbox.batch().await;
                    batch.push(callee, "call.missed", Some(call.0), payload.into());
                    batch
                        .commit(
                            Job::new(|_| Ok(()))
                                .notify_failure(&self.news, move |e| Stored::Missed(call, e)),
                        )
                        .await;
                }
            }
        }
        self.metrics
            .calls_live
            .store(self.core.live_count() as u64, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::Value;

    use super::*;
    use crate::auth::Seat;
    use crate::backplane::Located;
    use crate::backplane::testing::Sent;
    use crate::outbox::testing::Bench;

    struct Fixture {
        bench: Bench,
        calls: CallsHandle,
    }

    const RULES: Rules = Rules {
        ring_timeout_ms: 30_000,
        grace_ms: 20_000,
        max_sdp_bytes: 16_384,
        max_calls: 1,
        operator_max_calls: 1,
    };

    impl Fixture {
        fn new(tag: &str) -> Fixture {
            let bench = Bench::new(&format!("calls-{tag}"));
            let (calls, service) = prepare(
                Arc::clone(&bench.org),
                RULES,
                Arc::clone(&bench.store),
                bench.outbound(),
                bench.outbox.outbox.clone(),
                Arc::default(),
                bench.clock.clone(),
            )
            .unwrap();
            tokio::spawn(service);
            Fixture { bench, calls }
        }

        fn n(&self, id: &str) -> NodeIdx {
            self.bench.n(id)
        }

        /// The terminal connects on connection `conn`: the directory and the bus say so.
        async fn join(&self, id: &str, conn: u64) {
            let role = Role::default_for(self.bench.org.tier(self.n(id)));
            self.bench.out.place(
                self.n(id),
                Some(Located {
                    conn,
                    role,
                    seat: crate::auth::Seat::MAIN,
                }),
            );
            self.bench
                .out
                .bus()
                .publish(TerminalNews::Joined {
                    ep: self.bench.org.id(self.n(id)).clone(),
                    conn,
                    seat: crate::auth::Seat::MAIN,
                    role,
                    at: 0,
                })
                .await;
        }

        async fn leave(&self, id: &str, conn: u64) {
            self.bench.out.place(self.n(id), None);
            self.bench
                .out
                .bus()
                .publish(TerminalNews::Left {
                    ep: self.bench.org.id(self.n(id)).clone(),
                    conn,
                    seat: crate::auth::Seat::MAIN,
                    at: 0,
                })
                .await;
        }

        async fn ask(&self, id: &str, conn: u64, kind: &'static str, req: Req) {
            let role = Role::default_for(self.bench.org.tier(self.n(id)));
            self.ask_at(id, (conn, role, Seat::MAIN), kind, req).await
        }

        /// Asks from one seat of a terminal: (connection, role, seat).
        async fn ask_at(
            &self,
            id: &str,
            (conn, role, seat): (u64, Role, Seat),
            kind: &'static str,
            req: Req,
        ) {
            let origin = Origin {
                conn,
                endpoint: self.n(id),
                role,
                seat,
                expires_at: u64::MAX,
            };
            let cmd = Cmd::Request {
                origin,
                re: Some(ReqId::Num(1)),
                kind,
                req,
                at: Instant::now(),
            };
            self.calls.send(cmd, self.bench.out.as_ref()).await;
        }

        /// Everything asked so far is decided and its messages sent; nothing waited on the store,
        /// so tokio's paused clock has not moved.
        async fn caught_up(&self) {
            self.calls.caught_up().await;
        }

        /// Everything asked so far is decided, recorded and offered.
        async fn settle(&self) {
            self.calls.settled().await;
            self.bench.outbox.control.settled().await;
        }

        fn record(&self, id: u64) -> (String, Option<i64>, Option<String>) {
            self.bench
                .store
                .read_sync(|c| {
                    c.query_row(
                        "SELECT outcome, duration_ms, reason FROM calls WHERE id = ?1",
                        [id as i64],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )
                })
                .unwrap()
        }
    }

    fn kinds(msgs: &[Value]) -> Vec<&str> {
        msgs.iter().map(|m| m["type"].as_str().unwrap()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_to_a_center_rings_every_desk_and_the_first_to_answer_takes_it() {
        let f = Fixture::new("seats");
        let (a, w1) = (f.n("a"), f.n("w1"));
        let seat = |s| Seat::parse(s).unwrap();
        let desk1 = (10, Role::Operator, seat("desk-1"));
        let desk2 = (11, Role::Station, seat("desk-2"));
        let wall = (12, Role::Observer, seat("wall"));
        let at = |(conn, role, seat): (u64, Role, Seat)| Located { conn, role, seat };
        f.bench
            .out
            .place_seats(a, &[at(desk1), at(desk2), at(wall)]);
        f.join("w1", 20).await;
        let invite = Req::Invite {
            to: a,
            media: Media::Audio,
            offer: Some("v=0".into()),
        };
        f.ask("w1", 20, "call.invite", invite).await;
        f.caught_up().await;
        for desk in [desk1, desk2] {
            let rung = f.bench.out.take_to(To::Seat(a, desk.2));
            assert_eq!(kinds(&rung), ["call.incoming"]);
        }
        assert!(
            f.bench.out.take_to(To::Seat(a, wall.2)).is_empty(),
            "the wall is not rung"
        );
        let call = CallId(1);
        // Both desks ring; the caller hears it once.
        f.ask_at("a", desk1, "call.ring", Req::Ring(call)).await;
        f.ask_at("a", desk2, "call.ring", Req::Ring(call)).await;
        // The wall watches: it may not answer.
        let accept = || Req::Accept(call, Some("v=0".into()));
        f.ask_at("a", wall, "call.accept", accept()).await;
        // Desk 2 answers first and takes the call; desk 1 is too late.
        f.ask_at("a", desk2, "call.accept", accept()).await;
        f.ask_at("a", desk1, "call.accept", accept()).await;
        f.caught_up().await;
        let code =
            |conn| f.bench.out.take_to(To::Conn(conn)).last().unwrap()["data"]["code"].clone();
        assert_eq!(code(12), "out_of_scope");
        assert_eq!(code(10), "not_a_party");
        assert_eq!(
            kinds(&f.bench.out.take_to(To::Seat(w1, Seat::MAIN))),
            ["call.ringing", "call.accepted"]
        );
        let elsewhere = f.bench.out.take_to(To::Seat(a, desk1.2));
        assert_eq!(elsewhere.len(), 1, "{elsewhere:?}");
        assert_eq!(elsewhere[0]["type"], "call.ended");
        assert_eq!(elsewhere[0]["data"]["outcome"], "answered_elsewhere");
        // From now on the call is desk 2's alone: desk 1's hangup is refused, the caller's
        // reaches desk 2.
        f.ask_at("a", desk1, "call.hangup", Req::Hangup(call)).await;
        f.ask("w1", 20, "call.hangup", Req::Hangup(call)).await;
        f.caught_up().await;
        assert_eq!(code(10), "not_a_party");
        let ended = f.bench.out.take_to(To::Seat(a, desk2.2));
        assert_eq!(ended[0]["data"]["outcome"], "completed", "{ended:?}");
        assert!(f.bench.out.take_to(To::Seat(a, wall.2)).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn an_unanswered_call_is_missed_when_the_ring_timeout_passes() {
        let f = Fixture::new("missed");
        f.join("a", 10).await;
        f.join("w1", 11).await;
        let w1 = f.n("w1");
        let invite = Req::Invite {
            to: w1,
            media: Media::Audio,
            offer: None,
        };
        f.ask("a", 10, "call.invite", invite).await;
        // Not waiting on the store yet: paused time would run on to the ring timeout meanwhile.
        f.caught_up().await;
        let caller = f.bench.out.take_to(To::Conn(10));
        assert_eq!(caller[0]["data"]["state"], "inviting", "{caller:?}");
        assert_eq!(
            kinds(&f.bench.out.take_to(To::Seat(w1, Seat::MAIN))),
            ["call.incoming"]
        );
        tokio::time::sleep(Duration::from_secs(31)).await;
        f.settle().await;
        let ended = f.bench.out.take_to(To::Seat(w1, Seat::MAIN));
        assert_eq!(ended[0]["data"]["outcome"], "no_answer", "{ended:?}");
        let missed: Vec<Sent> = f
            .bench
            .out
            .take()
            .into_iter()
            .filter(|s| matches!(s, Sent::Offer { ep, .. } if *ep == w1))
            .collect();
        assert_eq!(missed.len(), 1);
        assert_eq!(missed[0].json().unwrap()["data"]["kind"], "call.missed");
        assert_eq!(f.record(1).0, "no_answer");
    }

    #[tokio::test(start_paused = true)]
    async fn refused_invites_are_on_record() {
        let f = Fixture::new("refused");
        f.join("a", 10).await;
        let invite = |to| Req::Invite {
            to,
            media: Media::Video,
            offer: None,
        };
        // Off line, then out of scope (a county calling another county's worker is fine, so:
        // a worker calling a sibling worker).
        f.ask("a", 10, "call.invite", invite(f.n("w1"))).await;
        f.caught_up().await;
        f.join("w1", 11).await;
        f.join("w2", 12).await;
        f.ask("w1", 11, "call.invite", invite(f.n("w2"))).await;
        f.settle().await;
        let codes: Vec<Value> = f.bench.out.take_to(To::Conn(10));
        assert_eq!(codes[0]["data"]["code"], "offline", "{codes:?}");
        assert_eq!(
            f.bench.out.take_to(To::Conn(11))[0]["data"]["code"],
            "out_of_scope"
        );
        assert_eq!(f.record(1).0, "offline");
        let (outcome, duration, reason) = f.record(2);
        assert_eq!((outcome.as_str(), duration), ("out_of_scope", None));
        assert!(reason.unwrap().contains("chain of command"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_party_back_after_its_call_dropped_is_told_and_the_grace_is_not_talking_time() {
        let f = Fixture::new("dropped");
        f.join("a", 10).await;
        f.join("w1", 11).await;
        let (w1, a) = (f.n("w1"), f.n("a"));
        let invite = Req::Invite {
            to: w1,
            media: Media::Audio,
            offer: Some("v=0".into()),
        };
        // No waiting on the store until the call has ended, so the paused clock moves only
        // where the test moves it: answered at 0 s, the callee gone at 5 s.
        f.ask("a", 10, "call.invite", invite).await;
        f.ask(
            "w1",
            11,
            "call.accept",
            Req::Accept(CallId(1), Some("v=0".into())),
        )
        .await;
        f.caught_up().await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        f.leave("w1", 11).await;
        f.caught_up().await;
        assert!(kinds(&f.bench.out.take_to(To::Seat(a, Seat::MAIN))).contains(&"call.peer_away"));
        tokio::time::sleep(Duration::from_secs(21)).await;
        // Still not waiting on the store: while the test waits on it the paused clock may jump
        // ahead, past the five minutes a returning party is told within.
        f.caught_up().await;
        let ended = f.bench.out.take_to(To::Seat(a, Seat::MAIN));
        assert_eq!(ended.last().unwrap()["data"]["outcome"], "dropped");
        f.bench.out.take();
        // Back after the grace: it hears how its call ended.
        f.join("w1", 13).await;
        f.caught_up().await;
        let told = f.bench.out.take_to(To::Seat(w1, Seat::MAIN));
        assert_eq!(kinds(&told), ["call.ended"], "{told:?}");
        assert_eq!(told[0]["data"]["outcome"], "dropped");
        f.settle().await;
        // Talking time: from the answer until the party left, not until the grace ran out.
        let (outcome, duration, _) = f.record(1);
        assert_eq!((outcome.as_str(), duration), ("dropped", Some(5_000)));
    }
}

//! The async shell around the orders core.
//!
//! One task owns the core and the campaigns and decides every request in arrival order. A
//! decision becomes one store job — the order row, its history event and the outbox messages it
//! causes (through an outbox batch), written atomically — and an entry in the answer pipeline.
//! The store tells the task of each commit, in order; only then is the requester answered and
//! the change published to every node's consoles. Refusals and reads join the same pipeline, so
//! a terminal's replies come in the order it asked, and nothing is said before it is durable.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

mod broadcast;
#[cfg(test)]
mod tests;

pub use broadcast::{CampaignIn, NoticeIn, RECORDS_PER_REQUEST, RecordIn};
use broadcast::{CampaignState, Correction, NoticeRow};

use super::core::{
    Act, Applied, Created, NewOrder, Notify, OrderError, Orders, Policy, Who, can_view,
};
use super::feed::OrderChanged;
use super::model::{Action, Order, OrderId, State};
use super::persist::{self, EventRow, OrderRow, TransitionRows};
use super::wire::{DocView, OrderDoc, Summary, request_hash};
use crate::auth::Role;
use crate::backplane::{ConnKey, Outbound, To, Via};
use crate::clock::Clock;
use crate::org::{NodeIdx, Org};
use crate::outbox::Outbox;
use crate::store::{Job, Notifier, Store, StoreError, inbox};
use crate::telemetry::Metrics;
use crate::transport::protocol::{ErrorCode, ProtoError, ReqId, reply};

/// Campaign progress reaches watching consoles at most this often.
const PROGRESS_FLUSH: Duration = Duration::from_millis(250);
/// How soon an order whose write failed while the database was away is asked for again.
const RELOAD_RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Order(#[from] OrderError),
    #[error("{0}")]
    Invalid(String),
    /// No such notice or campaign — or one the caller may not know of.
    #[error("{0}")]
    NotFound(String),
    /// Not possible in the campaign's state (it is closed).
    #[error("{0}")]
    Closed(String),
    #[error("the store failed: {0}")]
    Store(#[from] StoreError),
    #[error("orders are shutting down")]
    Unavailable,
}

impl ServiceError {
    pub fn code(&self) -> &'static str {
        match self {
            ServiceError::Order(e) => e.code(),
            ServiceError::Invalid(_) => "invalid_data",
            ServiceError::NotFound(_) => "not_found",
            ServiceError::Closed(_) => "illegal_transition",
            ServiceError::Store(_) => "store_unavailable",
            ServiceError::Unavailable => "unavailable",
        }
    }

    fn ws_code(&self) -> ErrorCode {
        match self.code() {
            "not_found" => ErrorCode::NotFound,
            "illegal_transition" => ErrorCode::IllegalTransition,
            "out_of_scope" => ErrorCode::OutOfScope,
            "unknown_category" => ErrorCode::UnknownCategory,
            "unknown_cause" => ErrorCode::UnknownCause,
            "invalid_target" => ErrorCode::InvalidTarget,
            "idempotency_conflict" => ErrorCode::IdempotencyConflict,
            "version_conflict" => ErrorCode::VersionConflict,
            "invalid_data" => ErrorCode::InvalidData,
            _ => ErrorCode::Unavailable,
        }
    }
}

/// What a REST request gets back: an order, or (notices, campaigns) a JSON value.
pub enum RestBody {
    Order(Box<OrderDoc>),
    Value(serde_json::Value),
}

pub type RestResult = Result<(bool, RestBody), ServiceError>;

/// Where an answer goes.
pub enum Reply {
    /// A terminal's request, answered on the connection it came from.
    Terminal {
        conn: ConnKey,
        re: Option<ReqId>,
        kind: &'static str,
    },
    Rest(oneshot::Sender<RestResult>),
    /// The hub's own actions (the deadline scheduler): nobody to answer.
    None,
}

/// What a successful answer carries.
pub enum Answer {
    /// The whole order (creates, reads, and every REST answer).
    Full(Box<OrderDoc>),
    /// Its summary: enough to confirm a WebSocket transition, a tenth of the size.
    Brief(Summary),
    /// A notice's or a campaign's JSON.
    Value(serde_json::Value),
}

#[derive(PartialEq, Eq)]
enum Wants {
    Nothing,
    Brief,
    Full,
}

impl Reply {
    fn wants(&self) -> Wants {
        match self {
            Reply::Rest(_) => Wants::Full,
            Reply::None => Wants::Nothing,
            Reply::Terminal { kind, .. }
                if matches!(*kind, "order.create" | "order.get" | "order.read") =>
            {
                Wants::Full
            }
            // A notification (no id) is answered only if it fails.
            Reply::Terminal { re: None, .. } => Wants::Nothing,
            Reply::Terminal { .. } => Wants::Brief,
        }
    }

    /// `created`: a new order, notice or campaign (REST answers 201).
    fn ok(self, out: &dyn Outbound, created: bool, answer: Answer) {
        #[derive(serde::Serialize)]
        struct Data<'a, T> {
            order: &'a T,
        }
        match self {
            Reply::Terminal { conn, re, kind } => {
                // Reads and creates return data and are always answered; the rest only when
                // they carried an id.
                let always = matches!(
                    kind,
                    "order.create"
                        | "order.get"
                        | "order.read"
                        | "notice.send"
                        | "notice.get"
                        | "campaign.start"
                        | "campaign.get"
                        | "campaign.watch"
                );
                if re.is_none() && !always {
                    return;
                }
                let f: Bytes = match &answer {
                    Answer::Full(doc) => reply(re.as_ref(), &Data { order: doc }),
                    Answer::Brief(s) => reply(re.as_ref(), &Data { order: s }),
                    Answer::Value(v) => reply(re.as_ref(), v),
                };
                out.send(To::Conn(conn), &f, Via::Post);
            }
            Reply::Rest(tx) => {
                let body = match answer {
                    Answer::Full(doc) => RestBody::Order(doc),
                    Answer::Value(v) => RestBody::Value(v),
                    // `wants` asks REST for the whole order.
                    Answer::Brief(s) => RestBody::Value(serde_json::json!({ "order": s })),
                };
                let _ = tx.send(Ok((created, body)));
            }
            Reply::None => {}
        }
    }

    fn err(self, out: &dyn Outbound, e: ServiceError) {
        match self {
            Reply::Terminal { conn, re, kind } => {
                let p = ProtoError::new(e.ws_code(), e.to_string()).answering(re, kind);
                out.send(To::Conn(conn), &p.encode(), Via::Post);
            }
            Reply::Rest(tx) => {
                let _ = tx.send(Err(e));
            }
            Reply::None => {}
        }
    }

    /// `ok` for `Ok`, `err` for `Err`.
    fn answer(self, out: &dyn Outbound, r: Result<(bool, Answer), ServiceError>) {
        match r {
            Ok((created, a)) => self.ok(out, created, a),
            Err(e) => self.err(out, e),
        }
    }
}

pub enum Cmd {
    Create {
        who: Who,
        new: NewOrder,
        key: Option<String>,
        reply: Reply,
        at: Instant,
    },
    Act {
        who: Who,
        id: OrderId,
        expect: Option<u32>,
        act: Act,
        reply: Reply,
        at: Instant,
    },
    Get {
        who: Who,
        id: OrderId,
        reply: Reply,
    },
    Read {
        who: Who,
        id: OrderId,
        reply: Reply,
    },
    NoticeSend {
        who: Who,
        notice: NoticeIn,
        reply: Reply,
    },
    NoticeGet {
        who: Who,
        id: u64,
        reply: Reply,
    },
    /// A read receipt for a notice or a campaign task: only its recipients may give one.
    MarkRead {
        who: Who,
        kind: ReadKind,
        id: u64,
        reply: Reply,
    },
    CampaignStart {
        who: Who,
        campaign: CampaignIn,
        reply: Reply,
    },
    CampaignGet {
        who: Who,
        id: u64,
        reply: Reply,
    },
    CampaignRecord {
        who: Who,
        id: u64,
        records: Vec<RecordIn>,
        reply: Reply,
    },
    CampaignDone {
        who: Who,
        id: u64,
        reply: Reply,
    },
    CampaignWatch {
        who: Who,
        conn: ConnKey,
        id: u64,
        watch: bool,
        re: Option<ReqId>,
    },
    CampaignClose {
        who: Who,
        id: u64,
        reply: Reply,
    },
    /// A request its handler refused (its `data` did not parse), answered in its turn.
    Refuse {
        conn: ConnKey,
        error: ProtoError,
    },
    Stop(oneshot::Sender<()>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadKind {
    Notice,
    Campaign,
}

impl ReadKind {
    fn as_str(self) -> &'static str {
        match self {
            ReadKind::Notice => "notice",
            ReadKind::Campaign => "campaign",
        }
    }
}

#[derive(Clone)]
pub struct OrdersHandle {
    tx: mpsc::Sender<Cmd>,
    metrics: Arc<Metrics>,
}

impl OrdersHandle {
    /// Queues a command; if the service has stopped (shutdown), says so to whoever asked.
    pub async fn send(&self, cmd: Cmd, out: &dyn Outbound) {
        self.metrics.orders_queue.store(
            (self.tx.max_capacity() - self.tx.capacity()) as u64,
            Relaxed,
        );
        if let Err(e) = self.tx.send(cmd).await {
            refuse_stopped(e.0, out);
        }
    }

    /// Stops after everything queued so far is decided and written.
    pub async fn stop(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Stop(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Tells whoever asked that the service has stopped (shutdown).
fn refuse_stopped(cmd: Cmd, out: &dyn Outbound) {
    match cmd {
        Cmd::Create { reply, .. }
        | Cmd::Act { reply, .. }
        | Cmd::Get { reply, .. }
        | Cmd::Read { reply, .. }
        | Cmd::NoticeSend { reply, .. }
        | Cmd::NoticeGet { reply, .. }
        | Cmd::MarkRead { reply, .. }
        | Cmd::CampaignStart { reply, .. }
        | Cmd::CampaignGet { reply, .. }
        | Cmd::CampaignRecord { reply, .. }
        | Cmd::CampaignDone { reply, .. }
        | Cmd::CampaignClose { reply, .. } => reply.err(out, ServiceError::Unavailable),
        Cmd::CampaignWatch {
            conn, re, watch, ..
        } => Reply::Terminal {
            conn,
            re,
            kind: if watch {
                "campaign.watch"
            } else {
                "campaign.unwatch"
            },
        }
        .err(out, ServiceError::Unavailable),
        Cmd::Refuse { conn, error } => out.send(To::Conn(conn), &error.encode(), Via::Post),
        Cmd::Stop(done) => {
            let _ = done.send(());
        }
    }
}

/// The order as `viewer` may see it: the reporter's contact is shown to those handling the
/// order and the centers above them, masked for everyone else.
pub fn view_for(org: &Org, o: &Order, acked: u64, viewer: Option<(NodeIdx, Role)>) -> OrderDoc {
    let doc = OrderDoc::of(org, o, acked);
    if viewer.is_some_and(|(v, role)| !sees_contact(org, o, v, role)) {
        doc.masked()
    } else {
        doc
    }
}

/// Whether `v` sees the reporter's contact: those handling the order, and centers above its
/// intake node; never a video wall (an observer seat), which a room full of people can read.
pub fn sees_contact(org: &Org, o: &Order, v: NodeIdx, role: Role) -> bool {
    if role == Role::Observer {
        return false;
    }
    o.chain.contains(&v)
        || o.report_chain.contains(&v)
        || o.holder == v
        || (role != Role::Worker && org.contains(v, o.intake()))
}

/// What a store job of this service hands back.
enum Read {
    Nothing,
    Doc(Option<Box<OrderDoc>>),
    /// An order rebuilt from its history.
    Reloaded(Option<Box<Order>>),
    Notice(Option<NoticeRow>),
    Corrections(Vec<Correction>),
    /// Whether the reader was a recipient (its receipt was written).
    Recipient(bool),
}

/// The store's word on one job, in commit order.
struct Stored {
    ticket: u64,
    result: Result<Read, StoreError>,
}

/// What to do once a request's turn comes (its job committed, or at once if nothing waits).
enum Effect {
    /// An order transition was written.
    Transition {
        reply: Reply,
        answer: Option<Answer>,
        created: bool,
        changed: Box<Summary>,
        id: OrderId,
        at: Instant,
    },
    /// An answer decided already (a refusal, a read of an open order, a campaign's state).
    Ready(Reply, Result<(bool, Answer), ServiceError>),
    /// Written, then answered with this (or the failure).
    Written(Reply, bool, Answer),
    /// A closed order read from the store, for `who`.
    Stored(Reply, Who, OrderId),
    /// An action on an order that is not open: why it cannot be done.
    NotOpen(Reply, Who, OrderId, Action),
    /// A write failed: the order is read back from the store.
    Reload(OrderId),
    NoticeGet(Reply, Who, u64),
    Receipt(Reply, ReadKind, u64),
    Records(Reply, u64, NodeIdx, usize),
    Done(Reply, u64, NodeIdx),
    Closed(Reply, u64),
    CampaignStarted(Reply, u64, serde_json::Value),
    /// A refusal decided before the request reached the service.
    Refused(ConnKey, ProtoError),
    /// A campaign's state as `who` may see it, when its turn comes: after everything asked
    /// before it took effect (records counted, a close written).
    CampaignStatus(Reply, Who, u64),
    Stop(oneshot::Sender<()>),
}

/// One answer in line: the job it waits for (none: it waits only for those before it), what to
/// do, and, once the job is done, how it went.
struct Entry {
    ticket: Option<u64>,
    effect: Effect,
    result: Option<Result<Read, StoreError>>,
}

/// Answers in the order requests arrived: an answer waits for every job queued before it.
struct Pipeline {
    next: u64,
    queue: VecDeque<Entry>,
}

impl Pipeline {
    fn new() -> Pipeline {
        Pipeline {
            next: 0,
            queue: VecDeque::new(),
        }
    }

    /// An effect waiting for a job; returns the job's ticket.
    fn wait(&mut self, e: Effect) -> u64 {
        self.next += 1;
        self.queue.push_back(Entry {
            ticket: Some(self.next),
            effect: e,
            result: None,
        });
        self.next
    }

    /// An effect with nothing of its own to wait for: due at once unless others wait.
    fn ready(&mut self, e: Effect) -> Option<Effect> {
        if self.queue.is_empty() {
            Some(e)
        } else {
            self.queue.push_back(Entry {
                ticket: None,
                effect: e,
                result: None,
            });
            None
        }
    }

    /// A job is done; returns the effects now due, in order.
    fn done(
        &mut self,
        ticket: u64,
        r: Result<Read, StoreError>,
    ) -> Vec<(Effect, Option<Result<Read, StoreError>>)> {
        if let Some(slot) = self.queue.iter_mut().find(|e| e.ticket == Some(ticket)) {
            slot.result = Some(r);
        }
        let mut due = Vec::new();
        while let Some(front) = self.queue.front() {
            if front.ticket.is_some() && front.result.is_none() {
                break;
            }
            let e = self.queue.pop_front().expect("checked above");
            due.push((e.effect, e.result));
        }
        due
    }
}

struct Service {
    core: Orders,
    org: Arc<Org>,
    store: Arc<Store>,
    outbox: Outbox,
    out: Arc<dyn Outbound>,
    metrics: Arc<Metrics>,
    clock: Clock,
    news: Notifier<Stored>,
    /// Orders to take back from the store again, once it answers (their write failed while it
    /// was away).
    reloads: mpsc::UnboundedSender<OrderId>,
    /// Orders waiting to be taken back: one retry each, however many of its writes failed.
    reloading: std::collections::HashSet<OrderId>,
    pipeline: Pipeline,
    campaigns: HashMap<u64, CampaignState>,
    next_notice: u64,
    next_campaign: u64,
}

pub struct Started {
    pub handle: OrdersHandle,
    pub task: tokio::task::JoinHandle<()>,
}

#[allow(clippy::too_many_arguments)]
pub fn start(
    org: Arc<Org>,
    policy: Policy,
    store: Arc<Store>,
    outbox: Outbox,
    out: Arc<dyn Outbound>,
    metrics: Arc<Metrics>,
    clock: Clock,
) -> Result<Started, StoreError> {
    let fingerprint = org.fingerprint();
    let keys_since = clock.now_ms().saturating_sub(policy.idempotency_ms);
    let (loaded, (campaigns, next_notice, next_campaign)) = store.read_sync(|c| {
        let moved = persist::reindex_nodes(c, &org, &fingerprint)?;
        if moved > 0 {
            tracing::warn!(
                orders = moved,
                "the org tree changed; order locations re-indexed"
            );
        }
        Ok((
            persist::load(c, &org, keys_since)?,
            broadcast::load_campaigns(c, &org)?,
        ))
    })?;
    for s in &loaded.skipped {
        tracing::error!("not loaded: {s}");
    }
    let mut core = Orders::new(Arc::clone(&org), policy);
    let open = loaded.open.len();
    core.restore(loaded.open, loaded.next_id, loaded.keys);
    tracing::info!(open, next_id = loaded.next_id, "orders loaded");
    let (tx, rx) = mpsc::channel(crate::store::QUEUE);
    let (news, news_rx) = inbox();
    let (reloads, reloads_rx) = mpsc::unbounded_channel();
    let svc = Service {
        core,
        org,
        store,
        outbox,
        out,
        metrics: Arc::clone(&metrics),
        clock,
        news,
        reloads,
        reloading: Default::default(),
        pipeline: Pipeline::new(),
        campaigns,
        next_notice,
        next_campaign,
    };
    Ok(Started {
        handle: OrdersHandle { tx, metrics },
        task: tokio::spawn(svc.run(rx, news_rx, reloads_rx)),
    })
}

fn role_of(org: &Org, n: NodeIdx) -> Role {
    Role::default_for(org.tier(n))
}

impl Cmd {
    /// `Err(reply)` for a command that changes something sent by an observer seat, which
    /// watches and never acts.
    fn observer_acting(self) -> Result<Cmd, Reply> {
        match self {
            Cmd::Create { who, reply, .. }
            | Cmd::Act { who, reply, .. }
            | Cmd::Read { who, reply, .. }
            | Cmd::NoticeSend { who, reply, .. }
            | Cmd::MarkRead { who, reply, .. }
            | Cmd::CampaignStart { who, reply, .. }
            | Cmd::CampaignRecord { who, reply, .. }
            | Cmd::CampaignDone { who, reply, .. }
            | Cmd::CampaignClose { who, reply, .. }
                if who.role == Role::Observer =>
            {
                Err(reply)
            }
            cmd => Ok(cmd),
        }
    }
}

impl Service {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Cmd>,
        mut stored: mpsc::UnboundedReceiver<Stored>,
        mut reloads: mpsc::UnboundedReceiver<OrderId>,
    ) {
        let mut buf = Vec::with_capacity(256);
        let mut done = Vec::with_capacity(256);
        let mut progress_tick = tokio::time::interval(PROGRESS_FLUSH);
        progress_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stopping = false;
        loop {
            let due = self.core.next_deadline();
            tokio::select! {
                biased;
                // A commit tells of many jobs at once: take them together rather than go round
                // the loop (and re-arm its timer) for each.
                n = stored.recv_many(&mut done, 1024) => {
                    // The service holds a sender itself, so this never ends first.
                    if n == 0 {
                        return;
                    }
                    for s in done.drain(..) {
                        for (effect, result) in self.pipeline.done(s.ticket, s.result) {
                            if !self.perform(effect, result).await {
                                return;
                            }
                        }
                    }
                }
                Some(id) = reloads.recv(), if !stopping => {
                    self.reloading.remove(&id);
                    self.reload(id).await
                }
                n = rx.recv_many(&mut buf, 1024), if !stopping => {
                    if n == 0 {
                        return;
                    }
                    for cmd in buf.drain(..) {
                        if stopping {
                            // After the stop: nothing more is decided, but every asker hears so.
                            refuse_stopped(cmd, self.out.as_ref());
                            continue;
                        }
                        if let Cmd::Stop(done) = cmd {
                            // Completes after every job queued before it has committed.
                            let t = self.pipeline.wait(Effect::Stop(done));
                            self.submit(t, Job::new(|_| Ok(()))).await;
                            stopping = true;
                            continue;
                        }
                        self.handle(cmd).await;
                    }
                }
                _ = self.clock.sleep_until_ms(due.unwrap_or_default()), if due.is_some() && !stopping => {
                    for applied in self.core.tick(self.clock.now_ms()) {
                        self.persist(applied, None, Reply::None, Instant::now(), false).await;
                    }
                }
                _ = progress_tick.tick() => self.flush_progress(),
            }
        }
    }

    /// Queues a job that tells this service, with its ticket, when it is done.
    async fn submit(&self, ticket: u64, job: Job) {
        self.store
            .submit_async(job.notify(&self.news, move |r| Stored {
                ticket,
                result: r.map(|()| Read::Nothing),
            }))
            .await;
    }

    /// Queues a job that reads something for its effect.
    /// Takes order `id` back as the store has it (its history replayed).
    async fn reload(&mut self, id: OrderId) {
        let t = self.pipeline.wait(Effect::Reload(id));
        let org = Arc::clone(&self.org);
        self.query(
            t,
            move |c| persist::reload(c, &org, id),
            |o| Read::Reloaded(o.map(Box::new)),
        )
        .await;
    }

    async fn query<T: Send + 'static>(
        &self,
        ticket: u64,
        work: impl FnOnce(&crate::store::Connection) -> crate::store::db::Result<T> + Send + 'static,
        read: fn(T) -> Read,
    ) {
        self.store
            .submit_async(Job::query(work, &self.news, move |r| Stored {
                ticket,
                result: r.map(read),
            }))
            .await;
    }

    /// Carries out an effect now or, if answers wait before it, when its turn comes.
    async fn now_or_later(&mut self, e: Effect) {
        if let Some(e) = self.pipeline.ready(e) {
            self.perform(e, None).await;
        }
    }

    async fn reject(&mut self, reply: Reply, e: ServiceError) {
        self.metrics.orders_rejected.fetch_add(1, Relaxed);
        self.now_or_later(Effect::Ready(reply, Err(e))).await;
    }

    fn acked_of(&self, n: NodeIdx) -> u64 {
        self.outbox.acked(n)
    }

    async fn handle(&mut self, cmd: Cmd) {
        let now = self.clock.now_ms();
        let cmd = match cmd.observer_acting() {
            Ok(cmd) => cmd,
            Err(reply) => {
                let e = OrderError::OutOfScope(
                    "an observer seat (a video wall) watches orders; it does not act on them: use an operator's or a station's credential".into(),
                );
                return self.reject(reply, e.into()).await;
            }
        };
        match cmd {
            Cmd::Create {
                who,
                new,
                key,
                reply,
                at,
            } => {
                let idem = key.map(|k| {
                    // Keys are per intake node: two centers may use the same key independently.
                    let scoped = format!("{}:{k}", self.org.id(who.node));
                    (scoped.into_boxed_str(), request_hash(&new))
                });
                match self.core.create(who, new, idem.clone(), now) {
                    Err(e) => self.reject(reply, e.into()).await,
                    Ok(Created::Replay(id)) => self.answer_existing(who, id, reply).await,
                    Ok(Created::New(applied)) => {
                        let idem = idem.map(|(k, h)| (k.into_string(), h));
                        self.persist(*applied, idem, reply, at, true).await;
                    }
                }
            }
            Cmd::Act {
                who,
                id,
                expect,
                act,
                reply,
                at,
            } => match self.core.act(who, id, expect, act.clone(), now) {
                Ok(applied) => self.persist(applied, None, reply, at, false).await,
                Err(OrderError::NotFound(id)) if self.core.get(id).is_none() => {
                    let t = self
                        .pipeline
                        .wait(Effect::NotOpen(reply, who, id, act.action()));
                    self.query(
                        t,
                        move |c| persist::order_doc(c, id),
                        |d| Read::Doc(d.map(Box::new)),
                    )
                    .await;
                }
                Err(e) => self.reject(reply, e.into()).await,
            },
            Cmd::Get { who, id, reply } => self.answer_existing(who, id, reply).await,
            Cmd::Read { who, id, reply } => {
                if !self.core.mark_read(id, who.node, now) {
                    return self.answer_existing(who, id, reply).await;
                }
                // The holder's first read (a holder may always view its order): recorded, then
                // answered.
                let o = self.core.get(id).expect("only open orders are marked read");
                let doc = view_for(
                    &self.org,
                    o,
                    self.acked_of(o.holder),
                    Some((who.node, who.role)),
                );
                let endpoint = self.org.id(who.node).to_string();
                let t =
                    self.pipeline
                        .wait(Effect::Written(reply, false, Answer::Full(Box::new(doc))));
                self.submit(
                    t,
                    Job::new(move |c| persist::write_read(c, "order", id.0, &endpoint, now)),
                )
                .await;
            }
            Cmd::NoticeSend { who, notice, reply } => self.notice_send(who, notice, reply).await,
            Cmd::NoticeGet { who, id, reply } => self.notice_get(who, id, reply).await,
            Cmd::MarkRead {
                who,
                kind,
                id,
                reply,
            } => self.mark_read(who, kind, id, reply).await,
            Cmd::CampaignStart {
                who,
                campaign,
                reply,
            } => self.campaign_start(who, campaign, reply).await,
            Cmd::CampaignGet { who, id, reply } => self.campaign_get(who, id, reply).await,
            Cmd::CampaignRecord {
                who,
                id,
                records,
                reply,
            } => self.campaign_record(who, id, records, reply).await,
            Cmd::CampaignDone { who, id, reply } => self.campaign_done(who, id, reply).await,
            Cmd::CampaignWatch {
                who,
                conn,
                id,
                watch,
                re,
            } => self.campaign_watch(who, conn, id, watch, re).await,
            Cmd::CampaignClose { who, id, reply } => self.campaign_close(who, id, reply).await,
            Cmd::Refuse { conn, error } => {
                self.metrics.orders_rejected.fetch_add(1, Relaxed);
                self.now_or_later(Effect::Refused(conn, error)).await;
            }
            Cmd::Stop(_) => unreachable!("handled in run"),
        }
    }

    /// Answers with an order's current (committed) state, from memory or from the store. Anyone
    /// who may not see it is told there is no such order.
    async fn answer_existing(&mut self, who: Who, id: OrderId, reply: Reply) {
        if let Some(o) = self.core.get(id) {
            let r = if can_view(&self.org, o, who.node, who.role) {
                let doc = view_for(
                    &self.org,
                    o,
                    self.acked_of(o.holder),
                    Some((who.node, who.role)),
                );
                Ok((false, Answer::Full(Box::new(doc))))
            } else {
                Err(OrderError::NotFound(id).into())
            };
            return self.now_or_later(Effect::Ready(reply, r)).await;
        }
        let t = self.pipeline.wait(Effect::Stored(reply, who, id));
        self.query(
            t,
            move |c| persist::order_doc(c, id),
            |d| Read::Doc(d.map(Box::new)),
        )
        .await;
    }

    /// Makes a decision durable: the order's rows and the outbox messages it causes, in one job.
    async fn persist(
        &mut self,
        mut applied: Applied,
        idem: Option<(String, u64)>,
        reply: Reply,
        at: Instant,
        created: bool,
    ) {
        let org = Arc::clone(&self.org);
        let id = applied.order.id;
        let outbox = self.outbox.clone();
        let mut batch = outbox.batch().await;
        // Sequence numbers first: the holder's copy, and the event, record which message told it.
        let mut messages = Vec::with_capacity(applied.notify.len());
        for &(to, why) in &applied.notify {
            let seq = batch.next(to);
            if why == Notify::Assigned && to == applied.order.holder {
                applied.order.assigned_seq = Some(seq);
                applied.event.detail.message = Some(seq);
                self.core.set_assigned_seq(id, to, seq);
            }
            messages.push((to, why, seq));
        }
        let o = &applied.order;
        let acked = self.acked_of(o.holder);
        #[derive(serde::Serialize)]
        struct Payload<'a> {
            kind: &'static str,
            order: DocView<'a>,
        }
        for (to, why, seq) in messages {
            let order = DocView {
                org: &org,
                order: o,
                acked,
                masked: !sees_contact(&org, o, to, role_of(&org, to)),
            };
            // Serializing our own document types cannot fail.
            let payload = serde_json::to_string(&Payload {
                kind: why.kind(),
                order,
            })
            .expect("outbox payloads serialize");
            batch.add(to, seq, why.kind(), Some(id.0), payload.into());
        }
        // The history is the record; the whole document is stored only where it is read from
        // the store: the creation (in its event), publication and archiving.
        let stored = applied.event.action == Action::Create
            || matches!(o.state, State::Published | State::Archived);
        let full = stored.then(|| OrderDoc::of(&org, o, acked));
        let doc = full
            .as_ref()
            .filter(|_| applied.event.action != Action::Create)
            .map(|d| serde_json::to_string(d).expect("order documents serialize"));
        let answer = match reply.wants() {
            Wants::Nothing => None,
            Wants::Brief => Some(Answer::Brief(Summary::of(&org, o))),
            Wants::Full => Some(Answer::Full(Box::new(match &reply {
                Reply::Terminal { .. } => {
                    let who = applied.event.actor.map(|a| (a, role_of(&org, a)));
                    view_for(&org, o, acked, who)
                }
                _ => full.clone().unwrap_or_else(|| OrderDoc::of(&org, o, acked)),
            }))),
        };
        let rows = TransitionRows {
            created,
            order: OrderRow::of(&org, o, doc, idem),
            event: EventRow::of(
                &org,
                &applied.event,
                full.as_ref()
                    .filter(|_| applied.event.action == Action::Create),
            ),
        };
        let t = self.pipeline.wait(Effect::Transition {
            reply,
            answer,
            created,
            changed: Box::new(Summary::of(&org, o)),
            id,
            at,
        });
        let news = self.news.clone();
        batch
            .commit(
                Job::new(move |c| persist::write_transition(c, &rows)).notify(&news, move |r| {
                    Stored {
                        ticket: t,
                        result: r.map(|()| Read::Nothing),
                    }
                }),
            )
            .await;
    }

    /// Carries out one effect whose turn has come; false when the service is to stop.
    async fn perform(&mut self, effect: Effect, result: Option<Result<Read, StoreError>>) -> bool {
        let out = Arc::clone(&self.out);
        let out = out.as_ref();
        let result = result.unwrap_or(Ok(Read::Nothing));
        match effect {
            Effect::Transition {
                reply,
                answer,
                created,
                changed,
                id,
                at,
            } => match result {
                Ok(_) => {
                    if let Some(a) = answer {
                        reply.ok(out, created, a);
                    }
                    self.metrics.push_latency.observe(at.elapsed());
                    self.metrics.orders_transitions.fetch_add(1, Relaxed);
                    self.out
                        .bus()
                        .publish(OrderChanged { summary: *changed })
                        .await;
                }
                Err(e) => {
                    reply.err(out, e.into());
                    // The core moved on before the write failed: take the order back as stored.
                    self.reload(id).await;
                }
            },
            Effect::Ready(reply, r) => reply.answer(out, r),
            Effect::Refused(conn, e) => out.send(To::Conn(conn), &e.encode(), Via::Post),
            Effect::Written(reply, created, answer) => match result {
                Ok(_) => reply.ok(out, created, answer),
                Err(e) => reply.err(out, e.into()),
            },
            Effect::Stored(reply, who, id) => {
                let r = match result {
                    Ok(Read::Doc(Some(d))) => match d.to_order(&self.org) {
                        Ok(o) if can_view(&self.org, &o, who.node, who.role) => Ok((
                            false,
                            Answer::Full(Box::new(view_for(
                                &self.org,
                                &o,
                                u64::MAX,
                                Some((who.node, who.role)),
                            ))),
                        )),
                        _ => Err(OrderError::NotFound(id).into()),
                    },
                    Ok(_) => Err(OrderError::NotFound(id).into()),
                    Err(e) => Err(e.into()),
                };
                reply.answer(out, r);
            }
            Effect::NotOpen(reply, who, id, action) => {
                let e = match result {
                    Ok(Read::Doc(Some(d))) => match d.to_order(&self.org) {
                        Ok(o) if can_view(&self.org, &o, who.node, who.role) => {
                            OrderError::IllegalTransition {
                                action,
                                state: o.state,
                                allowed: Vec::new(),
                            }
                            .into()
                        }
                        _ => OrderError::NotFound(id).into(),
                    },
                    Ok(_) => OrderError::NotFound(id).into(),
                    Err(e) => e.into(),
                };
                self.metrics.orders_rejected.fetch_add(1, Relaxed);
                reply.err(out, e);
            }
            Effect::Reload(id) => match result {
                Ok(Read::Reloaded(Some(o))) => self.core.reload(*o),
                Ok(Read::Reloaded(None)) => self.core.discard(id),
                // The database is away: the order stays as the core has it (its writes are
                // refused meanwhile) and is taken back once the store answers.
                Err(StoreError::Unavailable(_)) if self.reloading.insert(id) => {
                    let again = self.reloads.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(RELOAD_RETRY).await;
                        let _ = again.send(id);
                    });
                }
                Err(StoreError::Unavailable(_)) => {}
                _ => self.core.forget(id),
            },
            Effect::NoticeGet(reply, who, id) => {
                let r = match result {
                    Ok(Read::Notice(n)) => self.notice_view(who, id, n),
                    Ok(_) => Err(ServiceError::NotFound(format!("no notice {id}"))),
                    Err(e) => Err(e.into()),
                };
                reply.answer(out, r.map(|v| (false, Answer::Value(v))));
            }
            Effect::Receipt(reply, kind, id) => {
                let r = match result {
                    Ok(Read::Recipient(true)) => Ok((false, Answer::Value(serde_json::json!({})))),
                    Ok(_) => Err(ServiceError::NotFound(format!("no {} {id}", kind.as_str()))),
                    Err(e) => Err(e.into()),
                };
                reply.answer(out, r);
            }
            Effect::Records(reply, id, worker, n) => match result {
                Ok(Read::Corrections(changes)) => {
                    if let Some(c) = self.campaigns.get_mut(&id) {
                        for (before, after) in changes {
                            c.progress.record(worker, before, after);
                        }
                    }
                    reply.ok(
                        out,
                        false,
                        Answer::Value(serde_json::json!({ "accepted": n })),
                    );
                }
                Ok(_) => reply.ok(
                    out,
                    false,
                    Answer::Value(serde_json::json!({ "accepted": n })),
                ),
                Err(e) => reply.err(out, e.into()),
            },
            Effect::Done(reply, id, worker) => match result {
                Ok(_) => {
                    if let Some(c) = self.campaigns.get_mut(&id) {
                        c.progress.done(worker);
                    }
                    reply.ok(out, false, Answer::Value(serde_json::json!({})));
                }
                Err(e) => reply.err(out, e.into()),
            },
            Effect::Closed(reply, id) => match result {
                Ok(_) => {
                    let status = self.campaigns.get(&id).map(|c| c.status(&self.org, id));
                    let v = serde_json::json!({ "campaign": status });
                    reply.ok(out, false, Answer::Value(v));
                }
                Err(e) => {
                    // Not written: it is open after all.
                    if let Some(c) = self.campaigns.get_mut(&id) {
                        c.closed_at = None;
                    }
                    reply.err(out, e.into());
                }
            },
            Effect::CampaignStatus(reply, who, id) => {
                let r = self.visible_campaign(who, id).map(|c| {
                    let status = serde_json::json!({ "campaign": c.status(&self.org, id) });
                    (false, Answer::Value(status))
                });
                reply.answer(out, r);
            }
            Effect::CampaignStarted(reply, id, status) => match result {
                Ok(_) => reply.ok(
                    out,
                    true,
                    Answer::Value(serde_json::json!({ "campaign": status })),
                ),
                Err(e) => {
                    // It was never written: it never was.
                    self.campaigns.remove(&id);
                    reply.err(out, e.into());
                }
            },
            Effect::Stop(done) => {
                let _ = done.send(());
                return false;
            }
        }
        true
    }
}

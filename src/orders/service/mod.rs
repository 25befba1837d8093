//! The async shell around the orders core.
//!
//! One task owns the core and decides every request in arrival order. A decision becomes one
//! store job: the order row, the history event and the outbox messages it causes, written
//! atomically. The job's completion runs on the store's writer thread right after the commit:
//! it answers the requester, pushes the outbox messages to connected holders and feeds the
//! consoles. Nothing is said to anyone before it is durable. Refusals and reads are answered
//! through the same queue, so a terminal's replies come in the order it asked.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

mod broadcast;

use broadcast::Campaigns;
pub use broadcast::{CampaignIn, NoticeIn, RECORDS_PER_REQUEST, RecordIn};

use super::core::{Act, Applied, Created, NewOrder, Notify, OrderError, Orders, Policy, Who};
use super::feed::{FeedHandle, Item};
use super::model::{Action, Order, OrderId, State};
use super::persist::{self, EventRow, OrderRow, OutboxRow, TransitionRows};
use super::wire::{DocView, OrderDoc, Summary, request_hash};
use crate::auth::Role;
use crate::backplane::Backplane;
use crate::clock::now_ms;
use crate::org::{NodeIdx, Org};
use crate::store::{Job, Store, StoreError};
use crate::telemetry::Metrics;
use crate::transport::conn::Conn;
use crate::transport::protocol::{ErrorCode, ProtoError, ReqId, outbox_frame, reply, success};

/// Outbox messages replayed per `outbox.resume`; the reply says when there are more.
pub const REPLAY_MAX: usize = 1000;
/// Acknowledgements are written at most this often (the latest per terminal).
const ACK_FLUSH: Duration = Duration::from_millis(100);
/// Campaign progress reaches watching consoles at most this often.
const PROGRESS_FLUSH: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Order(#[from] OrderError),
    #[error("{0}")]
    Invalid(String),
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
    Ws {
        conn: Arc<Conn>,
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
            Reply::Ws { kind, .. }
                if matches!(*kind, "order.create" | "order.get" | "order.read") =>
            {
                Wants::Full
            }
            // A notification (no id) is answered only if it fails.
            Reply::Ws { re: None, .. } => Wants::Nothing,
            Reply::Ws { .. } => Wants::Brief,
        }
    }

    /// `created`: a new order (REST answers 201).
    pub fn ok(self, created: bool, answer: Answer) {
        #[derive(serde::Serialize)]
        struct Data<'a, T> {
            order: &'a T,
        }
        match (self, answer) {
            (Reply::Ws { conn, re, kind }, Answer::Full(doc)) => {
                if let Some(f) = success(re.as_ref(), kind, &Data { order: &doc }) {
                    conn.send(&f);
                }
            }
            (Reply::Ws { conn, re, kind }, Answer::Brief(summary)) => {
                if let Some(f) = success(re.as_ref(), kind, &Data { order: &summary }) {
                    conn.send(&f);
                }
            }
            (Reply::Rest(tx), Answer::Full(doc)) => {
                let _ = tx.send(Ok((created, RestBody::Order(doc))));
            }
            // `wants` asks REST for the whole order; nothing else reaches here.
            (Reply::Rest(_), Answer::Brief(_)) | (Reply::None, _) => {}
        }
    }

    pub fn err(self, e: ServiceError) {
        match self {
            Reply::Ws { conn, re, kind } => {
                let p = ProtoError::new(e.ws_code(), e.to_string()).answering(re, kind);
                conn.send(&p.encode());
            }
            Reply::Rest(tx) => {
                let _ = tx.send(Err(e));
            }
            Reply::None => {}
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
    Resume {
        conn: Arc<Conn>,
        after: u64,
        re: Option<ReqId>,
    },
    Ack {
        conn: Arc<Conn>,
        seq: u64,
        re: Option<ReqId>,
    },
    /// Writes for these orders failed: take them back from the store.
    Reload(Vec<OrderId>),
    /// Prune more delivered outbox messages (the last chunk was full).
    Prune,
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
    /// A read receipt for a notice or a campaign task.
    MarkRead {
        who: Who,
        kind: &'static str,
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
        conn: Arc<Conn>,
        id: u64,
        watch: bool,
        re: Option<ReqId>,
    },
    CampaignClose {
        who: Who,
        id: u64,
        reply: Reply,
    },
    /// A durable message for one terminal from another domain (a missed call): written to its
    /// outbox like any order message, pushed if it is connected, replayed if not.
    Deliver {
        to: NodeIdx,
        kind: &'static str,
        reference: u64,
        payload: String,
    },
    Stop(oneshot::Sender<()>),
}

#[derive(Clone)]
pub struct OrdersHandle {
    tx: mpsc::Sender<Cmd>,
    metrics: Arc<Metrics>,
}

impl OrdersHandle {
    pub async fn send(&self, cmd: Cmd) {
        self.metrics.orders_queue.store(
            (self.tx.max_capacity() - self.tx.capacity()) as u64,
            Relaxed,
        );
        if let Err(e) = self.tx.send(cmd).await {
            // The service has stopped (shutdown): say so to whoever asked.
            match e.0 {
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
                | Cmd::CampaignClose { reply, .. } => reply.err(ServiceError::Unavailable),
                _ => {}
            }
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

/// May `viewer` see this order at all?
pub fn can_view(org: &Org, o: &Order, viewer: NodeIdx, role: Role) -> bool {
    if o.chain.contains(&viewer) || o.report_chain.contains(&viewer) || o.holder == viewer {
        return true;
    }
    role != Role::Worker
        && (org.contains(viewer, o.holder)
            || org.contains(viewer, o.place.node)
            || org.contains(viewer, o.intake()))
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
/// intake node.
pub fn sees_contact(org: &Org, o: &Order, v: NodeIdx, role: Role) -> bool {
    o.chain.contains(&v)
        || o.report_chain.contains(&v)
        || o.holder == v
        || (role != Role::Worker && org.contains(v, o.intake()))
}

struct Service {
    core: Orders,
    org: Arc<Org>,
    store: Arc<Store>,
    backplane: Arc<dyn Backplane>,
    feed: FeedHandle,
    metrics: Arc<Metrics>,
    me: mpsc::Sender<Cmd>,
    /// Per endpoint: last outbox sequence written, last acknowledged.
    last_seq: Vec<u64>,
    acked: Vec<u64>,
    campaigns: Campaigns,
    retention: Retention,
    next_notice: u64,
    next_campaign: u64,
    /// Endpoints whose acknowledgement changed since the last write, each once.
    dirty_acks: Vec<NodeIdx>,
    ack_dirty: Vec<bool>,
}

/// How long delivered outbox messages are kept, and how often they are pruned.
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    pub every: Duration,
    pub keep_ms: u64,
}

pub fn start(
    org: Arc<Org>,
    policy: Policy,
    store: Arc<Store>,
    backplane: Arc<dyn Backplane>,
    feed: FeedHandle,
    metrics: Arc<Metrics>,
    retention: Retention,
) -> Result<(OrdersHandle, tokio::task::JoinHandle<()>), StoreError> {
    let fingerprint = org.fingerprint();
    let keys_since = now_ms().saturating_sub(policy.idempotency_ms);
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
    let mut last_seq = vec![0; org.len()];
    for (n, s) in loaded.last_seq {
        last_seq[n.get()] = s;
    }
    let mut acked = vec![0; org.len()];
    for (n, s) in loaded.acked {
        acked[n.get()] = s;
    }
    tracing::info!(open, next_id = loaded.next_id, "orders loaded");
    let (tx, rx) = mpsc::channel(crate::store::QUEUE);
    let svc = Service {
        core,
        org,
        store,
        backplane,
        feed,
        metrics,
        me: tx.clone(),
        last_seq,
        ack_dirty: vec![false; acked.len()],
        acked,
        campaigns: Arc::new(std::sync::Mutex::new(campaigns)),
        retention,
        next_notice,
        next_campaign,
        dirty_acks: Vec::new(),
    };
    Ok((
        OrdersHandle {
            tx,
            metrics: Arc::clone(&svc.metrics),
        },
        tokio::spawn(svc.run(rx)),
    ))
}

fn role_of(org: &Org, n: NodeIdx) -> Role {
    Role::default_for(org.tier(n))
}

impl Service {
    async fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        let mut buf = Vec::with_capacity(256);
        let mut ack_tick = tokio::time::interval(ACK_FLUSH);
        ack_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut progress_tick = tokio::time::interval(PROGRESS_FLUSH);
        progress_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut prune_tick = tokio::time::interval(self.retention.every);
        prune_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        prune_tick.tick().await;
        loop {
            let wait = self
                .core
                .next_deadline()
                .map(|t| Duration::from_millis(t.saturating_sub(now_ms())));
            tokio::select! {
                n = rx.recv_many(&mut buf, 1024) => {
                    if n == 0 {
                        return;
                    }
                    for cmd in buf.drain(..) {
                        if let Cmd::Stop(done) = cmd {
                            self.flush_acks().await;
                            // Completes after every job queued before it has committed.
                            self.after_commit(move || { let _ = done.send(()); }).await;
                            return;
                        }
                        self.handle(cmd).await;
                    }
                }
                _ = tokio::time::sleep(wait.unwrap_or_default()), if wait.is_some() => {
                    for applied in self.core.tick(now_ms()) {
                        self.persist(applied, None, Reply::None, Instant::now(), false).await;
                    }
                }
                _ = ack_tick.tick(), if !self.dirty_acks.is_empty() => self.flush_acks().await,
                _ = progress_tick.tick() => self.flush_progress(),
                _ = prune_tick.tick() => self.prune().await,
            }
        }
    }

    fn acked_of(&self, n: NodeIdx) -> u64 {
        self.acked[n.get()]
    }

    /// Runs `f` on the writer thread once every job queued before it has committed.
    async fn after_commit(&self, f: impl FnOnce() + Send + 'static) {
        self.store
            .submit_async(Job::new(|_| Ok(()), move |_| f()))
            .await;
    }

    async fn reject(&self, reply: Reply, e: ServiceError) {
        self.metrics.orders_rejected.fetch_add(1, Relaxed);
        self.after_commit(move || reply.err(e)).await;
    }

    async fn handle(&mut self, cmd: Cmd) {
        let now = now_ms();
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
                Err(OrderError::NotFound(id)) => self.not_open(who, id, act, reply).await,
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
                self.store
                    .submit_async(Job::new(
                        move |c| persist::write_read(c, "order", id.0, &endpoint, now),
                        move |r| match r {
                            Ok(()) => reply.ok(false, Answer::Full(Box::new(doc))),
                            Err(e) => reply.err(e.into()),
                        },
                    ))
                    .await;
            }
            Cmd::Resume { conn, after, re } => self.resume(conn, after, re).await,
            Cmd::Ack { conn, seq, re } => {
                let n = conn.endpoint;
                if seq > self.last_seq[n.get()] {
                    let reply = Reply::Ws {
                        conn,
                        re,
                        kind: "outbox.ack",
                    };
                    let last = self.last_seq[n.get()];
                    return self
                        .reject(
                            reply,
                            ServiceError::Invalid(format!(
                                "outbox.ack: sequence {seq} was never sent; the last is {last}"
                            )),
                        )
                        .await;
                }
                if seq > self.acked[n.get()] {
                    if !self.ack_dirty[n.get()] {
                        self.ack_dirty[n.get()] = true;
                        self.dirty_acks.push(n);
                    }
                    self.acked[n.get()] = seq;
                }
            }
            Cmd::Reload(ids) => {
                for id in ids {
                    let doc = self.store.read(move |c| persist::order_doc(c, id)).await;
                    match doc.ok().flatten().map(|d| d.to_order(&self.org)) {
                        Some(Ok(o)) => self.core.reload(o),
                        _ => self.core.forget(id),
                    }
                }
            }
            Cmd::Prune => self.prune().await,
            Cmd::Deliver {
                to,
                kind,
                reference,
                payload,
            } => self.deliver(to, kind, reference, payload).await,
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
                conn,
                id,
                watch,
                re,
            } => self.campaign_watch(conn, id, watch, re).await,
            Cmd::CampaignClose { who, id, reply } => self.campaign_close(who, id, reply).await,
            Cmd::Stop(_) => unreachable!("handled in run"),
        }
    }

    /// An action on an order that is not open: archived (closed), or no such order.
    async fn not_open(&self, who: Who, id: OrderId, act: Act, reply: Reply) {
        let org = Arc::clone(&self.org);
        let doc = self.store.read(move |c| persist::order_doc(c, id)).await;
        let e = match doc {
            Ok(Some(d)) => match d.to_order(&org) {
                Ok(o) if can_view(&org, &o, who.node, who.role) => OrderError::IllegalTransition {
                    action: act.action(),
                    state: o.state,
                    allowed: Vec::new(),
                },
                _ => OrderError::NotFound(id),
            },
            Ok(None) => OrderError::NotFound(id),
            Err(e) => return self.reject(reply, e.into()).await,
        };
        self.reject(reply, e.into()).await;
    }

    /// Answers with an order's current (committed) state, from memory or from the store.
    async fn answer_existing(&self, who: Who, id: OrderId, reply: Reply) {
        if let Some(o) = self.core.get(id) {
            if !can_view(&self.org, o, who.node, who.role) {
                let e = OrderError::OutOfScope(format!("order {id} is outside your scope"));
                return self.reject(reply, e.into()).await;
            }
            let doc = view_for(
                &self.org,
                o,
                self.acked_of(o.holder),
                Some((who.node, who.role)),
            );
            return self
                .after_commit(move || reply.ok(false, Answer::Full(Box::new(doc))))
                .await;
        }
        let org = Arc::clone(&self.org);
        let store = Arc::clone(&self.store);
        tokio::spawn(async move {
            match store.read(move |c| persist::order_doc(c, id)).await {
                Ok(Some(d)) => match d.to_order(&org) {
                    Ok(o) if can_view(&org, &o, who.node, who.role) => reply.ok(
                        false,
                        Answer::Full(Box::new(view_for(
                            &org,
                            &o,
                            u64::MAX,
                            Some((who.node, who.role)),
                        ))),
                    ),
                    _ => reply.err(OrderError::NotFound(id).into()),
                },
                Ok(None) => reply.err(OrderError::NotFound(id).into()),
                Err(e) => reply.err(e.into()),
            }
        });
    }

    /// Makes a decision durable, then (on the writer thread) answers, pushes and feeds.
    async fn persist(
        &mut self,
        mut applied: Applied,
        idem: Option<(String, u64)>,
        reply: Reply,
        at: Instant,
        created: bool,
    ) {
        let org = Arc::clone(&self.org);
        let now = applied.event.at;
        let id = applied.order.id;
        // Sequence numbers first: the holder's copy, and the event, record which message told it.
        let mut messages = Vec::with_capacity(applied.notify.len());
        for &(to, why) in &applied.notify {
            let seq = {
                let s = &mut self.last_seq[to.get()];
                *s += 1;
                *s
            };
            if why == Notify::Assigned && to == applied.order.holder {
                applied.order.assigned_seq = Some(seq);
                applied.event.detail.message = Some(seq);
                self.core.set_assigned_seq(id, to, seq);
            }
            messages.push((to, why, seq));
        }
        let o = &applied.order;
        let acked = self.acked_of(o.holder);
        let mut outbox = Vec::with_capacity(messages.len());
        let mut pushes: Vec<(NodeIdx, u64, Bytes)> = Vec::with_capacity(messages.len());
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
            pushes.push((to, seq, outbox_frame(seq, &payload)));
            outbox.push(OutboxRow {
                endpoint: org.id(to).to_string().into(),
                seq,
                at: now,
                kind: why.kind(),
                reference: Some(id.0),
                payload: payload.into(),
            });
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
                Reply::Ws { conn, .. } => {
                    view_for(&org, o, acked, Some((conn.endpoint, conn.role)))
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
            outbox,
        };
        let item = Item {
            summary: Summary::of(&org, o),
            node: o.place.node,
            holder: o.holder,
        };
        let (backplane, feed, metrics, me) = (
            Arc::clone(&self.backplane),
            self.feed.clone(),
            Arc::clone(&self.metrics),
            self.me.clone(),
        );
        let n_out = pushes.len() as u64;
        let job = Job::new(
            move |c| persist::write_transition(c, &rows),
            move |r| match r {
                Ok(()) => {
                    if let Some(a) = answer {
                        reply.ok(created, a);
                    }
                    for (to, seq, frame) in &pushes {
                        backplane.deliver_outbox(*to, *seq, frame);
                    }
                    metrics.push_latency.observe(at.elapsed());
                    metrics.orders_transitions.fetch_add(1, Relaxed);
                    metrics.outbox_messages.fetch_add(n_out, Relaxed);
                    feed.publish_blocking(item);
                }
                Err(e) => {
                    reply.err(e.into());
                    let _ = me.try_send(Cmd::Reload(vec![id]));
                }
            },
        );
        self.store.submit_async(job).await;
    }

    async fn resume(&mut self, conn: Arc<Conn>, after: u64, re: Option<ReqId>) {
        let last = self.last_seq[conn.endpoint.get()];
        if after > last {
            let reply = Reply::Ws {
                conn,
                re,
                kind: "outbox.resume",
            };
            return self
                .reject(reply, ServiceError::Invalid(format!(
                    "outbox.resume: after {after} is beyond the last sequence {last}; resume from {last} or earlier"
                )))
                .await;
        }
        let endpoint = self.org.id(conn.endpoint).to_string();
        let slot: Arc<Mutex<Vec<(u64, String)>>> = Arc::default();
        let fill = Arc::clone(&slot);
        let job = Job::new(
            move |c| {
                let rows = persist::outbox_after(c, &endpoint, after, REPLAY_MAX)?;
                *fill.lock().unwrap_or_else(|e| e.into_inner()) = rows;
                Ok(())
            },
            move |r| {
                if let Err(e) = r {
                    return Reply::Ws {
                        conn,
                        re,
                        kind: "outbox.resume",
                    }
                    .err(e.into());
                }
                let rows = std::mem::take(&mut *slot.lock().unwrap_or_else(|e| e.into_inner()));
                let more = rows.len() == REPLAY_MAX;
                let upto = rows.last().map_or(after, |r| r.0);
                for (seq, payload) in &rows {
                    conn.send(&outbox_frame(*seq, payload));
                }
                if !more {
                    // Live messages flow from here; anything older was just replayed.
                    conn.outbox_resumed(upto);
                }
                conn.send(&reply(
                    re.as_ref(),
                    &serde_json::json!({ "replayed": rows.len(), "last_seq": upto, "more": more }),
                ));
            },
        );
        self.store.submit_async(job).await;
    }

    /// Deletes delivered outbox messages past the retention period, a chunk per job; a full
    /// chunk queues the next one behind whatever arrived meanwhile.
    async fn prune(&mut self) {
        let before = now_ms().saturating_sub(self.retention.keep_ms);
        let (me, metrics) = (self.me.clone(), Arc::clone(&self.metrics));
        let deleted: Arc<AtomicUsize> = Arc::default();
        let d2 = Arc::clone(&deleted);
        self.store
            .submit_async(Job::new(
                move |c| {
                    d2.store(persist::prune_outbox(c, before)?, Relaxed);
                    Ok(())
                },
                move |r| {
                    let n = deleted.load(Relaxed);
                    if r.is_ok() {
                        metrics.outbox_pruned.fetch_add(n as u64, Relaxed);
                        if n == persist::PRUNE_CHUNK {
                            let _ = me.try_send(Cmd::Prune);
                        }
                    }
                },
            ))
            .await;
    }

    async fn flush_acks(&mut self) {
        if self.dirty_acks.is_empty() {
            return;
        }
        let acks: Vec<(String, u64)> = self
            .dirty_acks
            .drain(..)
            .map(|n| {
                self.ack_dirty[n.get()] = false;
                (self.org.id(n).to_string(), self.acked[n.get()])
            })
            .collect();
        let now = now_ms();
        self.store
            .submit_async(Job::new(
                move |c| persist::write_acks(c, &acks, now),
                |_| {},
            ))
            .await;
    }
}

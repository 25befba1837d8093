//! The outbox's shell: one task that offers committed messages live and replays them on resume
//! (both in commit order, as the store reports commits), records acknowledgements (written at
//! most every `ACK_FLUSH`), and prunes delivered messages past their retention.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::config::OutboxConfig;
use super::{
    Message, Outbox, PositionError, REPLAY_MAX, check_ack, check_resume, frame, replayed, store,
};
use crate::backplane::{Outbound, To, Via};
use crate::clock::Clock;
use crate::org::{NodeIdx, Org};
use crate::store::{Job, Notifier, Store, StoreError, inbox};
use crate::telemetry::Metrics;
use crate::transport::dispatch::{ConnKey, Handler, Origin, Refused, Request};
use crate::transport::protocol::{ErrorCode, ProtoError, ReqId, ack, parse_data, reply};

/// Acknowledgements are written at most this often (the latest per terminal).
pub const ACK_FLUSH: Duration = Duration::from_millis(100);
/// Requests waiting for the service; senders wait when it is full.
const QUEUE: usize = 16_384;

/// What the store says about the outbox's jobs, in commit order.
pub enum Stored {
    /// A batch committed (or failed): offer its messages live.
    Committed {
        result: Result<(), StoreError>,
        messages: Arc<[Message]>,
    },
    /// A resume's messages, read in order with the writes before it.
    Replay {
        result: Result<Vec<(u64, String)>, StoreError>,
        conn: ConnKey,
        re: Option<ReqId>,
        after: u64,
    },
    /// Acknowledgements not written (successes are not told).
    AcksFailed(StoreError),
    Pruned(Result<usize, StoreError>),
    /// Everything queued before it is committed.
    Settled(oneshot::Sender<()>),
    /// The same, for the stop: the service ends after answering it.
    Stopped(oneshot::Sender<()>),
}

enum Req {
    Resume {
        origin: Origin,
        after: u64,
        re: Option<ReqId>,
    },
    Ack {
        origin: Origin,
        seq: u64,
        re: Option<ReqId>,
    },
    /// Answered once everything asked before it is written (and offered).
    Settle(oneshot::Sender<()>),
    Stop(oneshot::Sender<()>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResumeIn {
    /// The last sequence the terminal has; 0 for everything still kept.
    #[serde(default)]
    after: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AckIn {
    seq: u64,
}

/// Takes `outbox.resume` and `outbox.ack` from terminals.
pub struct OutboxHandler {
    tx: mpsc::Sender<Req>,
}

#[async_trait::async_trait]
impl Handler for OutboxHandler {
    async fn handle(&self, req: Request<'_>) -> Result<(), Refused> {
        let r = match req.kind {
            "outbox.resume" => {
                let r: ResumeIn = parse_data(req.kind, req.data).map_err(|e| req.error(e))?;
                Req::Resume {
                    origin: req.origin,
                    after: r.after,
                    re: req.id,
                }
            }
            _ => {
                let a: AckIn = parse_data(req.kind, req.data).map_err(|e| req.error(e))?;
                Req::Ack {
                    origin: req.origin,
                    seq: a.seq,
                    re: req.id,
                }
            }
        };
        let kind = req.kind;
        self.tx.send(r).await.map_err(|e| {
            let re = match e.0 {
                Req::Resume { re, .. } | Req::Ack { re, .. } => re,
                Req::Settle(_) | Req::Stop(_) => None,
            };
            ProtoError::new(ErrorCode::Unavailable, "the outbox is shutting down")
                .answering(re, kind)
                .into()
        })
    }
}

/// Stops the service once everything queued before is written.
pub struct OutboxControl {
    tx: mpsc::Sender<Req>,
}

impl OutboxControl {
    /// Waits until everything asked of the outbox so far is written and its effects sent.
    pub async fn settled(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Req::Settle(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    pub async fn stop(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Req::Stop(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

struct Service {
    outbox: Outbox,
    org: Arc<Org>,
    store: Arc<Store>,
    out: Arc<dyn Outbound>,
    metrics: Arc<Metrics>,
    clock: Clock,
    config: OutboxConfig,
    news: Notifier<Stored>,
    /// Terminals whose acknowledgement moved since the last write, each once.
    dirty: Vec<NodeIdx>,
    is_dirty: Vec<bool>,
}

pub struct Started {
    pub outbox: Outbox,
    pub handler: Arc<OutboxHandler>,
    pub control: OutboxControl,
    pub task: JoinHandle<()>,
}

/// Reads every terminal's position from the store and starts the service.
pub fn start(
    org: Arc<Org>,
    store: Arc<Store>,
    out: Arc<dyn Outbound>,
    metrics: Arc<Metrics>,
    clock: Clock,
    config: OutboxConfig,
) -> Result<Started, StoreError> {
    let loaded = store.read_sync(|c| store::load(c, &org))?;
    let (news, news_rx) = inbox();
    let outbox = Outbox::new(
        Arc::clone(&org),
        Arc::clone(&store),
        loaded,
        news.clone(),
        clock.clone(),
    );
    let (tx, rx) = mpsc::channel(QUEUE);
    let svc = Service {
        outbox: outbox.clone(),
        is_dirty: vec![false; org.len()],
        org,
        store,
        out,
        metrics,
        clock,
        config,
        news,
        dirty: Vec::new(),
    };
    Ok(Started {
        outbox,
        handler: Arc::new(OutboxHandler { tx: tx.clone() }),
        control: OutboxControl { tx },
        task: tokio::spawn(svc.run(rx, news_rx)),
    })
}

impl Service {
    async fn run(
        mut self,
        mut requests: mpsc::Receiver<Req>,
        mut stored: mpsc::UnboundedReceiver<Stored>,
    ) {
        let mut ack_tick = tokio::time::interval(ACK_FLUSH);
        ack_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut prune_tick =
            tokio::time::interval(Duration::from_secs(self.config.prune_interval_secs.max(1)));
        prune_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        prune_tick.tick().await;
        let mut stopping = false;
        let mut news = Vec::with_capacity(256);
        loop {
            tokio::select! {
                biased;
                // Many at once: a commit tells of many jobs.
                n = stored.recv_many(&mut news, 1024) => {
                    // The store keeps a sender for every job in flight; ours is in `self`.
                    if n == 0 {
                        return;
                    }
                    for n in news.drain(..) {
                        match n {
                            Stored::Stopped(done) => {
                                let _ = done.send(());
                                return;
                            }
                            n => self.stored(n).await,
                        }
                    }
                }
                r = requests.recv(), if !stopping => match r {
                    None => return,
                    Some(Req::Stop(done)) => {
                        self.flush_acks().await;
                        self.store
                            .submit_async(
                                Job::new(|_| Ok(())).notify(&self.news, |_| Stored::Stopped(done)),
                            )
                            .await;
                        stopping = true;
                    }
                    Some(r) => self.request(r).await,
                },
                _ = ack_tick.tick(), if !self.dirty.is_empty() => self.flush_acks().await,
                _ = prune_tick.tick() => self.prune().await,
            }
        }
    }

    async fn request(&mut self, r: Req) {
        match r {
            Req::Resume { origin, after, re } => {
                let ep = origin.endpoint;
                if let Err(e) = check_resume(self.outbox.last(ep), after) {
                    return self.refuse(origin.conn, re, "outbox.resume", e);
                }
                let endpoint = self.org.id(ep).to_string();
                let conn = origin.conn;
                self.store
                    .submit_async(Job::query(
                        move |c| store::after(c, &endpoint, after, REPLAY_MAX),
                        &self.news,
                        move |result| Stored::Replay {
                            result,
                            conn,
                            re,
                            after,
                        },
                    ))
                    .await;
            }
            Req::Ack { origin, seq, re } => {
                let ep = origin.endpoint;
                match check_ack(self.outbox.last(ep), self.outbox.acked(ep), seq) {
                    Err(e) => self.refuse(origin.conn, re, "outbox.ack", e),
                    Ok(moved) => {
                        // A video wall having shown a message is not a person at the center
                        // having it: an observer's acknowledgement keeps its own stream going
                        // but does not say the node has it (delivery receipts, pruning).
                        if moved && origin.role != crate::auth::Role::Observer {
                            self.outbox.ack(ep, seq);
                            if !self.is_dirty[ep.get()] {
                                self.is_dirty[ep.get()] = true;
                                self.dirty.push(ep);
                            }
                        }
                        if let Some(f) = ack(re.as_ref(), &json!({})) {
                            self.out.send(To::Conn(origin.conn), &f, Via::Post);
                        }
                    }
                }
            }
            Req::Settle(done) => {
                self.store
                    .submit_async(
                        Job::new(|_| Ok(())).notify(&self.news, move |_| Stored::Settled(done)),
                    )
                    .await;
            }
            Req::Stop(_) => unreachable!("handled in run"),
        }
    }

    fn refuse(&self, conn: ConnKey, re: Option<ReqId>, kind: &str, e: PositionError) {
        let p = ProtoError::new(ErrorCode::InvalidData, e.to_string()).answering(re, kind);
        self.out.send(To::Conn(conn), &p.encode(), Via::Post);
    }

    async fn stored(&mut self, n: Stored) {
        match n {
            Stored::Committed { result, messages } => {
                if result.is_err() {
                    // Whoever wrote the batch reports the failure; nothing was written to offer.
                    return;
                }
                // Recipients of one notice share its payload: offered together, so it crosses
                // to each other node once.
                let mut same = Vec::new();
                for (i, m) in messages.iter().enumerate() {
                    same.push((m.to, m.seq));
                    let last_of_run = messages
                        .get(i + 1)
                        .is_none_or(|n| !Arc::ptr_eq(&n.payload, &m.payload));
                    if last_of_run {
                        self.out.offer_all(&same, &m.payload);
                        same.clear();
                    }
                }
                self.metrics
                    .outbox_messages
                    .fetch_add(messages.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
            Stored::Replay {
                result,
                conn,
                re,
                after,
            } => match result {
                Err(e) => {
                    if re.is_none() {
                        // The hub's own catch-up: the next live message finds the gap and asks
                        // again.
                        self.out.resumed(conn, after);
                    }
                    let p = ProtoError::new(ErrorCode::Unavailable, format!("outbox.resume: {e}"))
                        .answering(re, "outbox.resume");
                    self.out.send(To::Conn(conn), &p.encode(), Via::Post);
                }
                Ok(rows) => {
                    let (upto, more) = replayed(&rows, after);
                    for (seq, payload) in &rows {
                        self.out
                            .send(To::Conn(conn), &frame(*seq, payload), Via::Write);
                    }
                    // Live messages flow from here; anything older was just replayed. A
                    // resume without an id (the hub's own catch-up after a gap) does not ask
                    // again for `more`: the next live message finds the gap and asks.
                    if !more || re.is_none() {
                        self.out.resumed(conn, upto);
                    }
                    // A request without an id is answered only if it fails.
                    if re.is_some() {
                        let r = reply(
                            re.as_ref(),
                            &json!({ "replayed": rows.len(), "last_seq": upto, "more": more }),
                        );
                        self.out.send(To::Conn(conn), &r, Via::Write);
                    }
                }
            },
            Stored::AcksFailed(e) => {
                // Acknowledgements are cumulative: a terminal's next one writes its place again.
                tracing::error!(error = %e, "acknowledgements not written");
            }
            Stored::Pruned(r) => match r {
                Ok(n) => {
                    self.metrics
                        .outbox_pruned
                        .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                    if n == store::PRUNE_CHUNK {
                        // More to do: the next chunk queues behind whatever arrived meanwhile.
                        self.prune().await;
                    }
                }
                Err(e) => tracing::error!(error = %e, "outbox pruning failed"),
            },
            Stored::Settled(done) => {
                let _ = done.send(());
            }
            Stored::Stopped(_) => unreachable!("the run loop answers a stop before this"),
        }
    }

    async fn flush_acks(&mut self) {
        if self.dirty.is_empty() {
            return;
        }
        let acks: Vec<(String, u64)> = self
            .dirty
            .drain(..)
            .map(|n| {
                self.is_dirty[n.get()] = false;
                (self.org.id(n).to_string(), self.outbox.acked(n))
            })
            .collect();
        let now = self.clock.now_ms();
        self.store
            .submit_async(
                Job::new(move |c| store::write_acks(c, &acks, now))
                    .notify_failure(&self.news, Stored::AcksFailed),
            )
            .await;
    }

    /// Deletes delivered messages past the retention period, a chunk per job.
    async fn prune(&mut self) {
        let before = self
            .clock
            .now_ms()
            .saturating_sub(self.config.keep_secs * 1000);
        self.store
            .submit_async(Job::query(
                move |c| store::prune(c, before),
                &self.news,
                Stored::Pruned,
            ))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;
    use crate::backplane::testing::Sent;

    use crate::outbox::testing::Bench;

    fn origin(org: &Org, ep: &str, conn: ConnKey) -> Origin {
        Origin {
            conn,
            endpoint: org.lookup(ep).unwrap(),
            role: Role::Worker,
            seat: crate::auth::Seat::MAIN,
            expires_at: u64::MAX,
        }
    }

    async fn settle(f: &Bench) {
        f.outbox.control.settled().await;
    }

    async fn ask(f: &Bench, kind: &'static str, data: &str, o: Origin) -> Result<(), ProtoError> {
        f.outbox
            .handler
            .handle(Request {
                origin: o,
                id: Some(ReqId::Num(1)),
                kind,
                data,
                at: std::time::Instant::now(),
            })
            .await
            .map_err(|r| match r {
                Refused::Now(e) => e,
                Refused::InTurn(_) => panic!("the outbox answers refusals at once"),
            })
    }

    #[tokio::test]
    async fn committed_messages_are_offered_in_sequence_then_replayed_on_resume() {
        let f = Bench::new("outbox-offer");
        let w1 = f.org.lookup("w1").unwrap();
        for text in ["a", "b"] {
            let mut b = f.outbox.outbox.batch().await;
            let seq = b.push(w1, "notice", Some(7), format!(r#"{{"t":"{text}"}}"#).into());
            assert_eq!(seq, f.outbox.outbox.last(w1));
            b.commit(Job::new(|_| Ok(()))).await;
        }
        settle(&f).await;
        let offers: Vec<(u64, String)> = f
            .out
            .take()
            .into_iter()
            .filter_map(|s| match s {
                Sent::Offer { ep, seq, text } if ep == w1 => Some((seq, text)),
                _ => None,
            })
            .collect();
        assert_eq!(offers.len(), 2);
        assert_eq!(offers[0].0, 1);
        assert!(offers[1].1.contains(r#""seq":2"#) && offers[1].1.contains(r#"{"t":"b"}"#));

        let o = origin(&f.org, "w1", 77);
        ask(&f, "outbox.resume", r#"{"after":1}"#, o).await.unwrap();
        settle(&f).await;
        let sent = f.out.take();
        assert!(
            matches!(&sent[0], Sent::Frame { to: To::Conn(77), text, .. } if text.contains(r#""seq":2"#))
        );
        assert_eq!(sent[1], Sent::Resumed { conn: 77, upto: 2 });
        let r = sent[2].json().unwrap();
        assert_eq!(
            r["data"],
            json!({"replayed": 1, "last_seq": 2, "more": false})
        );
    }

    #[tokio::test]
    async fn bad_positions_are_refused_and_acks_are_written() {
        let f = Bench::new("outbox-acks");
        let w1 = f.org.lookup("w1").unwrap();
        let mut b = f.outbox.outbox.batch().await;
        b.push(w1, "notice", None, "{}".into());
        b.commit(Job::new(|_| Ok(()))).await;
        settle(&f).await;
        f.out.take();
        let o = origin(&f.org, "w1", 5);
        ask(&f, "outbox.resume", r#"{"after":9}"#, o).await.unwrap();
        ask(&f, "outbox.ack", r#"{"seq":2}"#, o).await.unwrap();
        let e = ask(&f, "outbox.ack", r#"{"sequence":1}"#, o)
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidData, "{}", e.message);
        ask(&f, "outbox.ack", r#"{"seq":1}"#, o).await.unwrap();
        settle(&f).await;
        let replies = f.out.take_to(To::Conn(5));
        assert!(
            replies[0]["data"]["message"]
                .as_str()
                .unwrap()
                .contains("beyond the last sequence 1")
        );
        assert!(
            replies[1]["data"]["message"]
                .as_str()
                .unwrap()
                .contains("never sent")
        );
        assert_eq!(replies[2]["type"], "reply");
        assert_eq!(f.outbox.outbox.acked(w1), 1);
        f.outbox.control.stop().await;
        let stored: i64 = f
            .store
            .read_sync(|c| {
                c.query_row("SELECT seq FROM acks WHERE endpoint='w1'", [], |r| r.get(0))
            })
            .unwrap();
        assert_eq!(stored, 1, "written by the stop at the latest");
    }
}

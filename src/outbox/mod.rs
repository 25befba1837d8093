//! outbox — each terminal's durable inbox, for every domain: orders, notices, campaign tasks,
//! missed calls (and, later, sessions).
//!
//! A message gets the terminal's next sequence number and is written in the same transaction as
//! the change that caused it (an order's new state, a notice's recipients), so it exists exactly
//! when the change does. Once committed it is offered live; a terminal that was away asks for
//! everything after the last sequence it has (`outbox.resume`) and acknowledges what it has
//! (`outbox.ack`); acknowledged messages are pruned after `outbox.keep_secs`.
//!
//! Two rules keep a terminal's stream exact, with no message lost or repeated:
//! - per terminal, sequences are committed in the order they were given out: a `Batch` holds the
//!   outbox's turn from allocating its numbers until its job is queued, and the store commits
//!   jobs in the order queued;
//! - live offers and replays for a terminal happen in commit order, on one task (`service`),
//!   which the store tells of every commit in order.
//!
//! The positions (the last sequence given out, the last acknowledged) are shared atomics, so
//! the orders service can say whether its assignment reached the holder without asking.

pub mod config;
pub mod service;
pub mod store;
#[cfg(test)]
pub mod testing;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::clock::Clock;
use crate::org::{NodeIdx, Org};
use crate::store::{Job, Notifier, Store};

/// Messages replayed per `outbox.resume`; the reply says when there are more.
pub const REPLAY_MAX: usize = 1000;

/// The request types the outbox owns.
pub const KINDS: [&str; 2] = ["outbox.resume", "outbox.ack"];

pub use crate::transport::protocol::outbox_frame as frame;

/// One message for one terminal. Recipients of one notice share its payload.
#[derive(Clone, Debug)]
pub struct Message {
    pub to: NodeIdx,
    pub seq: u64,
    pub kind: &'static str,
    pub reference: Option<u64>,
    pub payload: Arc<str>,
}

/// Why an acknowledgement or a resume was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PositionError {
    #[error(
        "outbox.resume: after {after} is beyond the last sequence {last}; resume from {last} or earlier"
    )]
    ResumeBeyond { after: u64, last: u64 },
    #[error("outbox.ack: sequence {seq} was never sent; the last is {last}")]
    AckBeyond { seq: u64, last: u64 },
}

/// Where a terminal may resume from: anything up to what was written.
pub fn check_resume(last: u64, after: u64) -> Result<(), PositionError> {
    if after > last {
        return Err(PositionError::ResumeBeyond { after, last });
    }
    Ok(())
}

/// What an acknowledgement may name: anything up to what was written. `Ok(true)` if it moves
/// the terminal's acknowledged position forward.
pub fn check_ack(last: u64, acked: u64, seq: u64) -> Result<bool, PositionError> {
    if seq > last {
        return Err(PositionError::AckBeyond { seq, last });
    }
    Ok(seq > acked)
}

/// A replay's outcome: the last sequence it covers, and whether more remain.
pub fn replayed(rows: &[(u64, String)], after: u64) -> (u64, bool) {
    let more = rows.len() == REPLAY_MAX;
    (rows.last().map_or(after, |r| r.0), more)
}

struct Positions {
    last: Box<[AtomicU64]>,
    acked: Box<[AtomicU64]>,
}

struct Shared {
    org: Arc<Org>,
    store: Arc<Store>,
    positions: Positions,
    /// Taken from allocating a batch's numbers until its job is queued (see the module's rules).
    turn: tokio::sync::Mutex<()>,
    news: Notifier<service::Stored>,
    clock: Clock,
}

/// The handle domains write durable messages through; cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    shared: Arc<Shared>,
}

impl Outbox {
    fn new(
        org: Arc<Org>,
        store: Arc<Store>,
        loaded: store::Loaded,
        news: Notifier<service::Stored>,
        clock: Clock,
    ) -> Outbox {
        let n = org.len();
        let zeros = || (0..n).map(|_| AtomicU64::new(0)).collect::<Box<[_]>>();
        let positions = Positions {
            last: zeros(),
            acked: zeros(),
        };
        for (ep, s) in loaded.last {
            positions.last[ep.get()].store(s, Relaxed);
        }
        for (ep, s) in loaded.acked {
            positions.acked[ep.get()].store(s, Relaxed);
        }
        Outbox {
            shared: Arc::new(Shared {
                org,
                store,
                positions,
                turn: tokio::sync::Mutex::new(()),
                news,
                clock,
            }),
        }
    }

    /// The last sequence given out for a terminal (its message may still be on its way to the
    /// disk; a failed write leaves the number unused).
    pub fn last(&self, ep: NodeIdx) -> u64 {
        self.shared.positions.last[ep.get()].load(Relaxed)
    }

    /// The last sequence a terminal acknowledged.
    pub fn acked(&self, ep: NodeIdx) -> u64 {
        self.shared.positions.acked[ep.get()].load(Relaxed)
    }

    fn ack(&self, ep: NodeIdx, seq: u64) {
        self.shared.positions.acked[ep.get()].fetch_max(seq, Relaxed);
    }

    /// Starts a batch: waits for the outbox's turn, which the batch holds until it commits.
    pub async fn batch(&self) -> Batch<'_> {
        Batch {
            shared: &self.shared,
            _turn: self.shared.turn.lock().await,
            messages: Vec::new(),
        }
    }
}

/// Messages being written together with a domain's own rows.
pub struct Batch<'a> {
    shared: &'a Shared,
    _turn: tokio::sync::MutexGuard<'a, ()>,
    messages: Vec<Message>,
}

impl Batch<'_> {
    /// Gives `to` its next sequence, for a message added with `add` (a payload may need to know
    /// the sequences of the whole batch before it is written).
    pub fn next(&mut self, to: NodeIdx) -> u64 {
        self.shared.positions.last[to.get()].fetch_add(1, Relaxed) + 1
    }

    /// Adds a message under a sequence `next` gave out.
    pub fn add(
        &mut self,
        to: NodeIdx,
        seq: u64,
        kind: &'static str,
        reference: Option<u64>,
        payload: Arc<str>,
    ) {
        self.messages.push(Message {
            to,
            seq,
            kind,
            reference,
            payload,
        });
    }

    /// Gives `to` its next sequence and adds the message; returns the sequence.
    pub fn push(
        &mut self,
        to: NodeIdx,
        kind: &'static str,
        reference: Option<u64>,
        payload: Arc<str>,
    ) -> u64 {
        let seq = self.next(to);
        self.add(to, seq, kind, reference, payload);
        seq
    }

    /// Queues `job` with the batch's messages written after its own rows, in one transaction;
    /// once it commits the messages are offered live. A failed job writes none of them (the
    /// numbers it took are never used: a terminal's sequence may skip, never repeat).
    pub async fn commit(self, job: Job) {
        let s = self.shared;
        if self.messages.is_empty() {
            return s.store.submit_async(job).await;
        }
        let messages: Arc<[Message]> = self.messages.into();
        let rows = Arc::clone(&messages);
        let org = Arc::clone(&s.org);
        let at = s.clock.now_ms();
        let job = job
            .and(move |c| {
                for m in rows.iter() {
                    store::write(
                        c,
                        &store::Row {
                            endpoint: org.id(m.to).as_str(),
                            seq: m.seq,
                            at,
                            kind: m.kind,
                            reference: m.reference,
                            payload: &m.payload,
                        },
                    )?;
                }
                Ok(())
            })
            .notify(&s.news, move |result| service::Stored::Committed {
                result,
                messages,
            });
        s.store.submit_async(job).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_checked() {
        assert_eq!(check_resume(5, 5), Ok(()));
        assert_eq!(
            check_resume(5, 6),
            Err(PositionError::ResumeBeyond { after: 6, last: 5 })
        );
        assert_eq!(check_ack(5, 2, 4), Ok(true));
        assert_eq!(check_ack(5, 4, 3), Ok(false), "an old ack changes nothing");
        assert_eq!(
            check_ack(5, 4, 6),
            Err(PositionError::AckBeyond { seq: 6, last: 5 })
        );
    }

    #[test]
    fn replays_say_where_they_end_and_whether_more_remain() {
        assert_eq!(replayed(&[], 7), (7, false));
        assert_eq!(
            replayed(&[(8, "{}".into()), (9, "{}".into())], 7),
            (9, false)
        );
        let full: Vec<(u64, String)> = (1..=REPLAY_MAX as u64).map(|s| (s, "{}".into())).collect();
        assert_eq!(replayed(&full, 0), (REPLAY_MAX as u64, true));
    }

    #[test]
    fn frames_carry_the_sequence_and_the_stored_payload() {
        let f = frame(42, r#"{"kind":"notice"}"#);
        assert_eq!(
            crate::transport::frame::text_of(&f),
            r#"{"v":1,"type":"outbox","seq":42,"data":{"kind":"notice"}}"#
        );
    }
}

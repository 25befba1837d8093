//! The call state machine: no IO, no clock (every input carries `now`, Unix ms).
//!
//! ```text
//! invite ─▶ inviting ─ring─▶ ringing ─accept─▶ active ─hangup─▶ ended (completed)
//!              │                │                 │
//!              ├─ reject ───────┴─▶ ended (rejected)   a party drops: grace period, then
//!              ├─ cancel (caller hangs up) ─▶ ended (cancelled)       ended (dropped)
//!              └─ ring timeout ─▶ ended (no_answer): a missed call for the callee
//! ```
//!
//! A terminal may have several seats (a center's desks and station PC): a call to it rings every
//! seat that takes calls and is free, the first to answer takes it and the others hear it was
//! answered elsewhere; from then on each party is one seat, and only that seat's connection
//! counts for the call. Being busy is a seat's matter: one desk in a call leaves the others free.
//!
//! The hub relays SDP and ICE candidates between the two parties only, in order, and keeps the
//! negotiation honest: an answer needs an offer from the other side; when offers cross, the
//! caller's wins. When two terminals invite each other, the call from the lower node wins.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use smallvec::SmallVec;

use crate::auth::{Role, Seat};
use crate::org::{NodeIdx, Org};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CallId(pub u64);

impl std::fmt::Display for CallId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Media {
    Audio,
    /// Audio and video.
    Video,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Sent to the callee; its device has not confirmed ringing yet.
    Inviting,
    Ringing,
    Active,
    Ended,
}

/// How a call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Answered, then hung up.
    Completed,
    Rejected,
    /// The caller gave up before an answer.
    Cancelled,
    /// Not answered within the ring timeout: a missed call.
    NoAnswer,
    /// A party's connection dropped and it did not come back within the grace period.
    Dropped,
    /// Superseded: the callee was calling the caller at the same moment, and that call won.
    Glare,
    /// Cut when the hub restarted.
    Interrupted,
    /// Refused at once: the callee (or the caller) was in another call.
    Busy,
    /// Refused at once: the callee was not connected.
    Offline,
    /// Refused at once: the caller may not call the callee.
    OutOfScope,
}

impl Outcome {
    pub const ALL: [Outcome; 10] = [
        Outcome::Completed,
        Outcome::Rejected,
        Outcome::Cancelled,
        Outcome::NoAnswer,
        Outcome::Dropped,
        Outcome::Glare,
        Outcome::Interrupted,
        Outcome::Busy,
        Outcome::Offline,
        Outcome::OutOfScope,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Rejected => "rejected",
            Outcome::Cancelled => "cancelled",
            Outcome::NoAnswer => "no_answer",
            Outcome::Dropped => "dropped",
            Outcome::Glare => "glare",
            Outcome::Interrupted => "interrupted",
            Outcome::Busy => "busy",
            Outcome::Offline => "offline",
            Outcome::OutOfScope => "out_of_scope",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Party {
    // Explicit: they index `Call::conns`.
    Caller = 0,
    Callee = 1,
}

impl Party {
    fn other(self) -> Party {
        match self {
            Party::Caller => Party::Callee,
            Party::Callee => Party::Caller,
        }
    }
}

/// A terminal as the hub sees it when a call is placed.
#[derive(Clone, Copy, Debug)]
pub struct Terminal {
    pub node: NodeIdx,
    pub role: Role,
    /// The seat placing the call (a callee's seat is chosen when one answers).
    pub seat: Seat,
    /// Its live connection (keys grow with each new connection on a hub node); `None`: off line.
    /// A callee's is its newest seat's.
    pub conn: Option<u64>,
}

/// Who sent a request: a seat of a terminal, on one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Who {
    pub node: NodeIdx,
    pub seat: Seat,
    pub conn: u64,
}

impl From<NodeIdx> for Who {
    /// The terminal's `main` seat (a terminal with one seat).
    fn from(node: NodeIdx) -> Who {
        Who {
            node,
            seat: Seat::MAIN,
            conn: 0,
        }
    }
}

/// Where a message for a party goes: one seat of a terminal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dest {
    pub node: NodeIdx,
    pub seat: Seat,
}

impl Dest {
    pub fn node(self) -> NodeIdx {
        self.node
    }
}

/// A seat of the callee that could ring: connected, taking calls (not an observer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeatAt {
    pub seat: Seat,
    pub role: Role,
    pub conn: u64,
}

/// The terminal called, as the hub sees it when the call is placed.
#[derive(Clone, Debug)]
pub struct Callee {
    pub node: NodeIdx,
    /// Its connected seats that take calls; none: off line.
    pub seats: SmallVec<[SeatAt; 2]>,
}

impl From<Terminal> for Callee {
    /// A terminal with its one seat.
    fn from(t: Terminal) -> Callee {
        Callee {
            node: t.node,
            seats: t
                .conn
                .map(|conn| SeatAt {
                    seat: t.seat,
                    role: t.role,
                    conn,
                })
                .into_iter()
                .collect(),
        }
    }
}

/// A seat a call rang at, with the connection it rang on; `left` once that connection ended.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Rung {
    seat: Seat,
    conn: u64,
    left: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    pub id: CallId,
    pub caller: NodeIdx,
    pub callee: NodeIdx,
    pub media: Media,
    pub phase: Phase,
    pub created_at: u64,
    pub ringing_at: Option<u64>,
    pub answered_at: Option<u64>,
    pub ended_at: Option<u64>,
    pub outcome: Option<Outcome>,
    pub reason: Option<String>,
    /// Whose SDP offer awaits an answer.
    offer_from: Option<Party>,
    /// A party whose connection dropped during the call, and since when.
    away: Option<(Party, u64)>,
    /// Parties whose connection had gone when the call ended: told when they come back.
    gone: [bool; 2],
    /// The connection each party (caller, callee) is known by in this call. Connection news
    /// about an older or the same connection is stale: a terminal's `connected` can reach the
    /// service after an invite that already found that connection.
    conns: [u64; 2],
    /// The seat each party is (the callee's is chosen by answering).
    seats: [Option<Seat>; 2],
    /// The callee's seats the call rang at, until one answers.
    rung: SmallVec<[Rung; 2]>,
}

impl Call {
    /// A call just placed.
    pub fn new(id: CallId, caller: NodeIdx, callee: NodeIdx, media: Media, now: u64) -> Call {
        Call {
            id,
            caller,
            callee,
            media,
            phase: Phase::Inviting,
            created_at: now,
            ringing_at: None,
            answered_at: None,
            ended_at: None,
            outcome: None,
            reason: None,
            offer_from: None,
            away: None,
            gone: [false; 2],
            conns: [0; 2],
            seats: [Some(Seat::MAIN), None],
            rung: SmallVec::new(),
        }
    }

    /// Where messages for party `p` go: its seat, or every seat a callee not yet answered is
    /// ringing at.
    fn dests(&self, p: Party) -> SmallVec<[Dest; 2]> {
        let node = self.node(p);
        match self.seats[p as usize] {
            Some(seat) => smallvec::smallvec![Dest { node, seat }],
            None => self
                .rung
                .iter()
                .filter(|r| !r.left)
                .map(|r| Dest { node, seat: r.seat })
                .collect(),
        }
    }

    /// `msg` for party `p`, at each of its seats.
    fn to(&self, p: Party, msg: Msg) -> impl Iterator<Item = Effect> {
        self.dests(p).into_iter().map(move |to| Effect::Send {
            to,
            msg: msg.clone(),
        })
    }

    /// Whether the call is ringing at `seat` of its (unanswered) callee.
    fn rings_at(&self, seat: Seat) -> bool {
        self.rung.iter().any(|r| r.seat == seat && !r.left)
    }

    /// The seat a party is, once known.
    pub fn seat(&self, p: Party) -> Option<Seat> {
        self.seats[p as usize]
    }

    fn node(&self, p: Party) -> NodeIdx {
        match p {
            Party::Caller => self.caller,
            Party::Callee => self.callee,
        }
    }

    /// The party `who` is: its terminal's, unless the party is another seat of it (or, not yet
    /// answered, a seat it did not ring at).
    fn party(&self, who: Who) -> Option<Party> {
        let p = self.party_of(who.node)?;
        match self.seats[p as usize] {
            Some(s) if s != who.seat => None,
            None if !self.rings_at(who.seat) => None,
            _ => Some(p),
        }
    }

    fn party_of(&self, n: NodeIdx) -> Option<Party> {
        if n == self.caller {
            Some(Party::Caller)
        } else if n == self.callee {
            Some(Party::Callee)
        } else {
            None
        }
    }

    pub fn duration_ms(&self) -> Option<u64> {
        Some(self.ended_at?.saturating_sub(self.answered_at?))
    }
}

/// What is relayed between the parties.
#[derive(Clone, Debug, PartialEq)]
pub enum Signal {
    Offer(String),
    Answer(String),
    Candidate(Candidate),
    EndOfCandidates,
}

/// An ICE candidate in its standard JSON form (`RTCIceCandidateInit`: `candidate`, `sdpMid`,
/// `sdpMLineIndex`, …), kept as the terminal wrote it: checked, then relayed verbatim, never
/// rebuilt.
#[derive(Clone, Debug)]
pub struct Candidate(pub Box<serde_json::value::RawValue>);

impl PartialEq for Candidate {
    fn eq(&self, other: &Candidate) -> bool {
        self.0.get() == other.0.get()
    }
}

/// Largest candidate relayed: a real one is about 100–200 bytes.
pub const MAX_CANDIDATE_BYTES: usize = 2048;

/// A message for one party.
#[derive(Clone, Debug, PartialEq)]
pub enum Msg {
    /// To the seats that rang but did not answer: another seat of their terminal took it.
    AnsweredElsewhere {
        call: CallId,
    },
    Incoming {
        call: CallId,
        from: NodeIdx,
        media: Media,
        offer: Option<String>,
    },
    Ringing {
        call: CallId,
    },
    Accepted {
        call: CallId,
        answer: Option<String>,
    },
    Signal {
        call: CallId,
        signal: Signal,
    },
    Ended {
        call: CallId,
        outcome: Outcome,
        reason: Option<String>,
        replaced_by: Option<CallId>,
    },
    /// The other party's connection dropped; the call waits for it (the grace period).
    PeerAway {
        call: CallId,
    },
    /// It is back; a client may need an ICE restart (a new offer).
    PeerBack {
        call: CallId,
    },
    /// Both parties offered at once and the caller's offer won: the callee rolls back its own
    /// and answers the caller's, which follows.
    OfferSuperseded {
        call: CallId,
    },
    /// To a terminal that connected again: its answered call goes on. `peer` is the other
    /// party; a new offer (ICE restart) brings the media back.
    Resumed {
        call: CallId,
        peer: NodeIdx,
        party: Party,
        media: Media,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    Send {
        to: Dest,
        msg: Msg,
    },
    /// Whether a terminal is in an active call (presence shows `in_call`).
    InCall {
        ep: NodeIdx,
        active: bool,
    },
    /// Store the call's record (on invite, and again when it ends).
    Record(Call),
    /// A durable missed-call notice for the callee.
    Missed {
        callee: NodeIdx,
        call: CallId,
        from: NodeIdx,
        at: u64,
    },
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum CallError {
    #[error("no call {0}")]
    NotFound(CallId),
    #[error("call {0} has ended")]
    Ended(CallId),
    #[error("you are not a party to call {0}")]
    NotAParty(CallId),
    #[error("{0}")]
    OutOfScope(String),
    #[error("{0} is off line")]
    Offline(String),
    #[error("{0} is busy in another call")]
    Busy(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Illegal(String),
    /// Both sides started at once; the other side won. `call` is the one to answer instead.
    #[error("{message}")]
    Glare {
        message: String,
        call: Option<CallId>,
    },
}

impl CallError {
    pub fn code(&self) -> &'static str {
        match self {
            CallError::NotFound(_) => "not_found",
            CallError::Ended(_) => "call_ended",
            CallError::NotAParty(_) => "not_a_party",
            CallError::OutOfScope(_) => "out_of_scope",
            CallError::Offline(_) => "offline",
            CallError::Busy(_) => "busy",
            CallError::Invalid(_) => "invalid_data",
            CallError::Illegal(_) => "illegal_transition",
            CallError::Glare { .. } => "glare",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Rules {
    pub ring_timeout_ms: u64,
    pub grace_ms: u64,
    pub max_sdp_bytes: usize,
    /// Calls a terminal may be in at once (ringing or active); operators may have more.
    pub max_calls: usize,
    pub operator_max_calls: usize,
}

/// Who may call whom: an operator or a station anyone in its subtree or its chain of command
/// (a village station calls its own grid workers); a worker its chain of command; an observer
/// (a video wall) nobody.
pub fn may_call(org: &Org, caller: NodeIdx, role: Role, callee: NodeIdx) -> bool {
    let chain = org.ancestors(caller).any(|a| a == callee);
    match role {
        Role::Operator | Role::Station => chain || org.contains(caller, callee),
        Role::Worker => chain,
        Role::Observer => false,
    }
}

/// Calls kept after they end, so late signaling gets "ended" rather than "no such call".
const ENDED_KEPT_MS: u64 = 5 * 60 * 1000;

pub struct Calls {
    org: Arc<Org>,
    rules: Rules,
    calls: HashMap<CallId, Call>,
    /// Unended calls per terminal.
    by_party: HashMap<NodeIdx, Vec<CallId>>,
    /// (when, call): ring timeouts, grace periods, and forgetting ended calls.
    timers: BTreeSet<(u64, CallId)>,
    /// Ended calls still kept.
    ended: usize,
    /// Calls that ended while a party was disconnected, per party: it is told when it comes
    /// back (while the call is still kept).
    untold: HashMap<NodeIdx, Vec<CallId>>,
    next_id: u64,
}

impl Calls {
    pub fn new(org: Arc<Org>, rules: Rules, next_id: u64) -> Calls {
        Calls {
            org,
            rules,
            calls: HashMap::new(),
            by_party: HashMap::new(),
            timers: BTreeSet::new(),
            ended: 0,
            untold: HashMap::new(),
            next_id: next_id.max(1),
        }
    }

    pub fn get(&self, id: CallId) -> Option<&Call> {
        self.calls.get(&id)
    }

    pub fn of(&self, ep: NodeIdx) -> &[CallId] {
        self.by_party.get(&ep).map_or(&[], Vec::as_slice)
    }

    pub fn next_deadline(&self) -> Option<u64> {
        self.timers.first().map(|&(t, _)| t)
    }

    fn name(&self, n: NodeIdx) -> String {
        let node = self.org.node(n);
        format!("{} ({})", node.id, node.name)
    }

    /// Whether seat `seat` of `ep` is in as many calls as it may be (answered, placed, or
    /// ringing there), not counting `except`.
    fn busy_besides(&self, ep: NodeIdx, seat: Seat, role: Role, except: Option<CallId>) -> bool {
        let max = if role == Role::Operator {
            self.rules.operator_max_calls.max(self.rules.max_calls)
        } else {
            self.rules.max_calls
        };
        let load = self
            .of(ep)
            .iter()
            .filter(|&&id| Some(id) != except)
            .filter(|id| {
                let c = &self.calls[id];
                let p = c.party_of(ep).expect("indexed by party");
                match c.seats[p as usize] {
                    Some(s) => s == seat,
                    None => c.rings_at(seat),
                }
            })
            .count();
        load >= max
    }

    fn check_sdp(&self, sdp: &str) -> Result<(), CallError> {
        if sdp.len() > self.rules.max_sdp_bytes {
            return Err(CallError::Invalid(format!(
                "sdp is {} bytes; at most {} are allowed",
                sdp.len(),
                self.rules.max_sdp_bytes
            )));
        }
        if sdp.is_empty() {
            return Err(CallError::Invalid("sdp is empty".into()));
        }
        Ok(())
    }

    /// A call from `from` to `to`.
    pub fn invite(
        &mut self,
        from: Terminal,
        to: impl Into<Callee>,
        media: Media,
        offer: Option<String>,
        now: u64,
    ) -> Result<(CallId, Vec<Effect>), CallError> {
        let to = to.into();
        let (caller, role, callee) = (from.node, from.role, to.node);
        if caller == callee {
            return Err(CallError::Invalid("a terminal cannot call itself".into()));
        }
        if !may_call(&self.org, caller, role, callee) {
            let allowed = match role {
                Role::Operator | Role::Station => "its subtree and its chain of command",
                Role::Worker => "its chain of command",
                Role::Observer => "nobody: an observer seat (a video wall) watches only",
            };
            return Err(CallError::OutOfScope(format!(
                "{} may call only {allowed}; {} is neither",
                self.name(caller),
                self.name(callee)
            )));
        }
        if let Some(sdp) = &offer {
            self.check_sdp(sdp)?;
        }
        let mut effects = Vec::new();
        // Glare: the callee is calling the caller right now.
        let crossing = self.of(caller).iter().copied().find(|id| {
            let c = &self.calls[id];
            c.caller == callee && matches!(c.phase, Phase::Inviting | Phase::Ringing)
        });
        if let Some(existing) = crossing
            && callee < caller
        {
            return Err(CallError::Glare {
                message: format!(
                    "{} is calling you at this moment (call {existing}); answer that call",
                    self.name(callee)
                ),
                call: Some(existing),
            });
        }
        // Every refusal is decided before anything changes: a crossing call this one would
        // supersede is ended only once this one is sure to stand (it does not count as busy).
        if to.seats.is_empty() {
            return Err(CallError::Offline(self.name(callee)));
        }
        // It rings at every seat that is free; busy when none is.
        let rung: SmallVec<[Rung; 2]> = to
            .seats
            .iter()
            .filter(|s| !self.busy_besides(callee, s.seat, s.role, crossing))
            .map(|s| Rung {
                seat: s.seat,
                conn: s.conn,
                left: false,
            })
            .collect();
        if rung.is_empty() {
            return Err(CallError::Busy(self.name(callee)));
        }
        if self.busy_besides(caller, from.seat, role, crossing) {
            return Err(CallError::Busy(format!("you ({})", self.name(caller))));
        }
        if let Some(existing) = crossing {
            let new_id = CallId(self.next_id);
            effects.extend(self.end(
                existing,
                Outcome::Glare,
                Some("superseded by a crossing call".into()),
                Some(new_id),
                now,
            ));
        }
        let id = CallId(self.next_id);
        self.next_id += 1;
        let call = Call {
            offer_from: offer.is_some().then_some(Party::Caller),
            conns: [from.conn.unwrap_or(0), 0],
            seats: [Some(from.seat), None],
            rung,
            ..Call::new(id, caller, callee, media, now)
        };
        effects.push(Effect::Record(call.clone()));
        effects.extend(call.to(
            Party::Callee,
            Msg::Incoming {
                call: id,
                from: caller,
                media,
                offer,
            },
        ));
        self.by_party.entry(caller).or_default().push(id);
        self.by_party.entry(callee).or_default().push(id);
        self.timers.insert((now + self.rules.ring_timeout_ms, id));
        self.calls.insert(id, call);
        Ok((id, effects))
    }

    /// The record of an invite refused at once (busy, offline, out of scope, crossing), so every
    /// attempt is on record; other refusals (a malformed invite) are not attempts.
    pub fn refused(
        &mut self,
        caller: NodeIdx,
        callee: NodeIdx,
        media: Media,
        e: &CallError,
        now: u64,
    ) -> Option<Effect> {
        let outcome = match e {
            CallError::Busy(_) => Outcome::Busy,
            CallError::Offline(_) => Outcome::Offline,
            CallError::OutOfScope(_) => Outcome::OutOfScope,
            CallError::Glare { .. } => Outcome::Glare,
            _ => return None,
        };
        let id = CallId(self.next_id);
        self.next_id += 1;
        Some(Effect::Record(Call {
            phase: Phase::Ended,
            ended_at: Some(now),
            outcome: Some(outcome),
            reason: Some(e.to_string()),
            ..Call::new(id, caller, callee, media, now)
        }))
    }

    /// The call and the sender's side of it, if the call is live.
    fn live(&self, id: CallId, who: Who) -> Result<(&Call, Party), CallError> {
        let c = self.calls.get(&id).ok_or(CallError::NotFound(id))?;
        let p = c.party(who).ok_or(CallError::NotAParty(id))?;
        if c.phase == Phase::Ended {
            return Err(CallError::Ended(id));
        }
        Ok((c, p))
    }

    /// The callee's device is ringing (each of its seats says so; the caller hears it once).
    pub fn ring(
        &mut self,
        who: impl Into<Who>,
        id: CallId,
        now: u64,
    ) -> Result<Vec<Effect>, CallError> {
        let (c, p) = self.live(id, who.into())?;
        if p == Party::Callee && c.phase == Phase::Ringing {
            return Ok(Vec::new());
        }
        if p != Party::Callee || c.phase != Phase::Inviting {
            return Err(CallError::Illegal(format!(
                "only the callee rings, once, before answering; call {id} is {}",
                phase_str(c.phase)
            )));
        }
        let c = self.calls.get_mut(&id).expect("checked by live");
        c.phase = Phase::Ringing;
        c.ringing_at = Some(now);
        Ok(c.to(Party::Caller, Msg::Ringing { call: id }).collect())
    }

    /// The callee answers, at one of its seats: that seat takes the call.
    pub fn accept(
        &mut self,
        who: impl Into<Who>,
        id: CallId,
        answer: Option<String>,
        now: u64,
    ) -> Result<Vec<Effect>, CallError> {
        let who = who.into();
        let (c, p) = self.live(id, who)?;
        if p != Party::Callee || !matches!(c.phase, Phase::Inviting | Phase::Ringing) {
            return Err(CallError::Illegal(format!(
                "only the callee accepts, before the call is answered; call {id} is {}",
                phase_str(c.phase)
            )));
        }
        if let Some(sdp) = &answer {
            self.check_sdp(sdp)?;
            if c.offer_from != Some(Party::Caller) {
                return Err(CallError::Illegal(format!(
                    "call {id}: an answer needs an offer from the caller first"
                )));
            }
        }
        let (caller, callee) = (c.caller, c.callee);
        self.timers
            .remove(&(c.created_at + self.rules.ring_timeout_ms, id));
        let c = self.calls.get_mut(&id).expect("checked by live");
        // The other seats it rang at hear that this one took it.
        let elsewhere: Vec<Effect> = c
            .dests(Party::Callee)
            .into_iter()
            .filter(|d| d.seat != who.seat)
            .map(|to| Effect::Send {
                to,
                msg: Msg::AnsweredElsewhere { call: id },
            })
            .collect();
        c.seats[Party::Callee as usize] = Some(who.seat);
        c.conns[Party::Callee as usize] = who.conn;
        c.rung.clear();
        c.phase = Phase::Active;
        c.answered_at = Some(now);
        c.ringing_at.get_or_insert(now);
        if answer.is_some() {
            c.offer_from = None;
        }
        let mut out = vec![Effect::Record(c.clone())];
        out.extend(c.to(Party::Caller, Msg::Accepted { call: id, answer }));
        out.extend(elsewhere);
        out.extend([
            Effect::InCall {
                ep: caller,
                active: true,
            },
            Effect::InCall {
                ep: callee,
                active: true,
            },
        ]);
        Ok(out)
    }

    pub fn reject(
        &mut self,
        who: impl Into<Who>,
        id: CallId,
        reason: Option<String>,
        now: u64,
    ) -> Result<Vec<Effect>, CallError> {
        let (c, p) = self.live(id, who.into())?;
        if p != Party::Callee || !matches!(c.phase, Phase::Inviting | Phase::Ringing) {
            return Err(CallError::Illegal(format!(
                "only the callee rejects, before answering; call {id} is {}",
                phase_str(c.phase)
            )));
        }
        if reason.as_ref().is_some_and(|r| r.chars().count() > 200) {
            return Err(CallError::Invalid(
                "reason is longer than 200 characters".into(),
            ));
        }
        Ok(self.end(id, Outcome::Rejected, reason, None, now))
    }

    /// Either side ends it: before an answer the caller cancels (the callee should reject);
    /// after, the call is completed.
    pub fn hangup(
        &mut self,
        who: impl Into<Who>,
        id: CallId,
        now: u64,
    ) -> Result<Vec<Effect>, CallError> {
        let (c, p) = self.live(id, who.into())?;
        let outcome = match (c.phase, p) {
            (Phase::Active, _) => Outcome::Completed,
            (_, Party::Caller) => Outcome::Cancelled,
            (_, Party::Callee) => Outcome::Rejected,
        };
        Ok(self.end(id, outcome, None, None, now))
    }

    /// Relays SDP or a candidate to the other party, keeping offer/answer in order.
    pub fn signal(
        &mut self,
        who: impl Into<Who>,
        id: CallId,
        signal: Signal,
    ) -> Result<Vec<Effect>, CallError> {
        let (c, p) = self.live(id, who.into())?;
        let other = c.dests(p.other());
        let send = |msg: Msg| {
            other
                .iter()
                .map(|&to| Effect::Send {
                    to,
                    msg: msg.clone(),
                })
                .collect::<Vec<_>>()
        };
        match &signal {
            Signal::Offer(sdp) => {
                self.check_sdp(sdp)?;
                if c.phase != Phase::Active && p == Party::Callee {
                    return Err(CallError::Illegal(format!(
                        "call {id}: before the call is answered only the caller offers"
                    )));
                }
                // Offers crossing: the caller's wins; the callee rolls back and answers.
                if c.offer_from == Some(p.other()) && p == Party::Callee {
                    return Err(CallError::Glare {
                        message: format!(
                            "call {id}: the caller's offer is pending; roll back and answer it"
                        ),
                        call: Some(id),
                    });
                }
                let superseded = c.offer_from == Some(Party::Callee) && p == Party::Caller;
                self.calls.get_mut(&id).expect("checked by live").offer_from = Some(p);
                if superseded {
                    // The callee's offer reached the hub first and was relayed; the caller's
                    // still wins. The callee hears so before the caller's offer arrives (the
                    // caller, holding its own offer, ignores the callee's).
                    let mut out = send(Msg::OfferSuperseded { call: id });
                    out.extend(send(Msg::Signal { call: id, signal }));
                    return Ok(out);
                }
            }
            Signal::Answer(sdp) => {
                self.check_sdp(sdp)?;
                // A ringing seat answers with `call.accept`, which also says which seat took it.
                if p == Party::Callee && c.phase != Phase::Active {
                    return Err(CallError::Illegal(format!(
                        "call {id}: answer the call with call.accept (its `answer`), not a signal"
                    )));
                }
                if c.offer_from != Some(p.other()) {
                    return Err(CallError::Illegal(format!(
                        "call {id}: an answer needs a pending offer from the other party"
                    )));
                }
                self.calls.get_mut(&id).expect("checked by live").offer_from = None;
            }
            Signal::Candidate(Candidate(raw)) => {
                if raw.get().len() > MAX_CANDIDATE_BYTES {
                    return Err(CallError::Invalid(format!(
                        "candidate is larger than {MAX_CANDIDATE_BYTES} bytes"
                    )));
                }
                #[derive(Deserialize)]
                struct Init<'a> {
                    #[serde(borrow)]
                    #[allow(dead_code)]
                    // read only to check that it is there and a string
                    candidate: std::borrow::Cow<'a, str>,
                }
                if serde_json::from_str::<Init<'_>>(raw.get()).is_err() {
                    return Err(CallError::Invalid(
                        "candidate must be an object with a `candidate` string (RTCIceCandidateInit)".into(),
                    ));
                }
            }
            Signal::EndOfCandidates => {}
        }
        Ok(send(Msg::Signal { call: id, signal }))
    }

    /// A seat's connection ended: unanswered calls end (one ringing at several seats when the
    /// last of them has gone); answered ones wait for it.
    pub fn disconnected(&mut self, ep: NodeIdx, seat: Seat, conn: u64, now: u64) -> Vec<Effect> {
        let mut out = Vec::new();
        for id in self.of(ep).to_vec() {
            let c = self.calls.get_mut(&id).expect("indexed");
            let p = c.party_of(ep).expect("indexed by party");
            match c.seats[p as usize] {
                // Another seat of the terminal is the party.
                Some(s) if s != seat => continue,
                // An older connection, already replaced in this call.
                Some(_) if conn < c.conns[p as usize] => continue,
                Some(_) => {}
                None => {
                    let Some(r) = c.rung.iter_mut().find(|r| r.seat == seat && !r.left) else {
                        continue;
                    };
                    if conn < r.conn {
                        continue;
                    }
                    r.left = true;
                    if c.rung.iter().any(|r| !r.left) {
                        // Still ringing at other seats.
                        continue;
                    }
                }
            }
            match c.phase {
                Phase::Active => {
                    let other = c.dests(p.other());
                    if c.away.is_none() {
                        c.away = Some((p, now));
                        self.timers.insert((now + self.rules.grace_ms, id));
                        out.extend(other.into_iter().map(|to| Effect::Send {
                            to,
                            msg: Msg::PeerAway { call: id },
                        }));
                    } else {
                        // Both sides gone: nothing left to wait for. The media stopped when the
                        // first left.
                        let since = c.away.map_or(now, |(_, t)| t);
                        c.gone[p as usize] = true;
                        out.extend(self.end(
                            id,
                            Outcome::Dropped,
                            Some("both parties disconnected".into()),
                            None,
                            since,
                        ));
                    }
                }
                Phase::Inviting | Phase::Ringing => {
                    let (outcome, why) = match p {
                        Party::Caller => (Outcome::Cancelled, "the caller disconnected"),
                        Party::Callee => (Outcome::Dropped, "the callee disconnected"),
                    };
                    c.gone[p as usize] = true;
                    out.extend(self.end(id, outcome, Some(why.into()), None, now));
                }
                Phase::Ended => {}
            }
        }
        out
    }

    /// A seat of a terminal (re)connected. Its answered calls resume: a party that dropped is
    /// back within the grace period, or a new connection replaced one the hub had not yet seen
    /// die (a phone changing networks). Its unanswered calls stop ringing there: the device that
    /// rang is gone (the call ends when no seat rings any more).
    pub fn connected(&mut self, ep: NodeIdx, seat: Seat, conn: u64, now: u64) -> Vec<Effect> {
        let mut out = Vec::new();
        // Calls that ended while it was away: `call.ended` reaches both parties however a
        // call ends, so it hears now (at the seat that was in the call, or that it rang at).
        let untold = self.untold.remove(&ep).unwrap_or_default();
        let mut later = Vec::new();
        for id in untold {
            let Some(c) = self.calls.get(&id) else {
                continue;
            };
            let p = c.party_of(ep).expect("a party's untold call");
            let was_there = match c.seats[p as usize] {
                Some(s) => s == seat,
                None => c.rung.iter().any(|r| r.seat == seat),
            };
            if !was_there {
                later.push(id);
                continue;
            }
            if let Some(outcome) = c.outcome {
                out.push(Effect::Send {
                    to: Dest { node: ep, seat },
                    msg: Msg::Ended {
                        call: id,
                        outcome,
                        reason: c.reason.clone(),
                        replaced_by: None,
                    },
                });
            }
        }
        if !later.is_empty() {
            self.untold.insert(ep, later);
        }
        for id in self.of(ep).to_vec() {
            let c = self.calls.get_mut(&id).expect("indexed");
            let p = c.party_of(ep).expect("indexed by party");
            match c.seats[p as usize] {
                Some(s) if s != seat => continue,
                // The connection this call already knows (its news came after the invite that
                // found it), or an older one: nothing changed.
                Some(_) if conn <= c.conns[p as usize] => continue,
                Some(_) => c.conns[p as usize] = conn,
                None => {
                    let Some(r) = c.rung.iter_mut().find(|r| r.seat == seat && !r.left) else {
                        continue;
                    };
                    if conn <= r.conn {
                        continue;
                    }
                    r.left = true;
                    if c.rung.iter().any(|r| !r.left) {
                        continue;
                    }
                }
            }
            match c.phase {
                Phase::Active => {
                    let other = c.dests(p.other());
                    if let Some((away, since)) = c.away
                        && away == p
                    {
                        c.away = None;
                        self.timers.remove(&(since + self.rules.grace_ms, id));
                    }
                    let media = c.media;
                    out.push(Effect::Send {
                        to: Dest { node: ep, seat },
                        msg: Msg::Resumed {
                            call: id,
                            peer: c.node(p.other()),
                            party: p,
                            media,
                        },
                    });
                    out.extend(other.into_iter().map(|to| Effect::Send {
                        to,
                        msg: Msg::PeerBack { call: id },
                    }));
                    out.push(Effect::InCall { ep, active: true });
                }
                Phase::Inviting | Phase::Ringing => {
                    let (outcome, why) = match p {
                        Party::Caller => (Outcome::Cancelled, "the caller reconnected"),
                        Party::Callee => (Outcome::Dropped, "the callee reconnected"),
                    };
                    out.extend(self.end(id, outcome, Some(why.into()), None, now));
                }
                Phase::Ended => {}
            }
        }
        out
    }

    /// The hub is stopping: every call still going on ends as interrupted.
    pub fn interrupt_all(&mut self, now: u64) -> Vec<Effect> {
        let mut ids: Vec<CallId> = self.by_party.values().flatten().copied().collect();
        ids.sort_unstable();
        ids.dedup();
        let mut out = Vec::new();
        for id in ids {
            out.extend(self.end(
                id,
                Outcome::Interrupted,
                Some("the hub is shutting down".into()),
                None,
                now,
            ));
        }
        out
    }

    /// Calls ringing or answered.
    pub fn live_count(&self) -> usize {
        self.calls.len() - self.ended
    }

    /// Ring timeouts (missed calls), grace periods that ran out, ended calls to forget.
    pub fn tick(&mut self, now: u64) -> Vec<Effect> {
        let mut out = Vec::new();
        while let Some(&(t, id)) = self.timers.first() {
            if t > now {
                break;
            }
            self.timers.pop_first();
            let Some(c) = self.calls.get(&id) else {
                continue;
            };
            match c.phase {
                Phase::Inviting | Phase::Ringing
                    if t >= c.created_at + self.rules.ring_timeout_ms =>
                {
                    out.extend(self.end(id, Outcome::NoAnswer, None, None, now));
                }
                Phase::Active
                    if c.away
                        .is_some_and(|(_, since)| t >= since + self.rules.grace_ms) =>
                {
                    // The call ended when the party left: the grace is not talking time.
                    let since = c.away.map_or(now, |(_, since)| since);
                    out.extend(self.end(
                        id,
                        Outcome::Dropped,
                        Some("a party did not come back".into()),
                        None,
                        since,
                    ));
                }
                Phase::Ended if c.ended_at.is_some_and(|e| t >= e + ENDED_KEPT_MS) => {
                    let (caller, callee) = (c.caller, c.callee);
                    self.calls.remove(&id);
                    self.ended -= 1;
                    for ep in [caller, callee] {
                        if let Some(v) = self.untold.get_mut(&ep) {
                            v.retain(|&x| x != id);
                            if v.is_empty() {
                                self.untold.remove(&ep);
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        out
    }

    fn end(
        &mut self,
        id: CallId,
        outcome: Outcome,
        reason: Option<String>,
        replaced_by: Option<CallId>,
        now: u64,
    ) -> Vec<Effect> {
        let ring_deadline = (self.calls[&id].created_at + self.rules.ring_timeout_ms, id);
        let c = self.calls.get_mut(&id).expect("ending a known call");
        let was_active = c.phase == Phase::Active;
        let was_ringing = matches!(c.phase, Phase::Inviting | Phase::Ringing);
        // Its pending timers die with it, so deadlines stay exact.
        if was_ringing {
            self.timers.remove(&ring_deadline);
        }
        if let Some((p, since)) = c.away.take() {
            self.timers.remove(&(since + self.rules.grace_ms, id));
            c.gone[p as usize] = true;
        }
        c.phase = Phase::Ended;
        self.ended += 1;
        c.ended_at = Some(now);
        c.outcome = Some(outcome);
        c.reason = reason.clone();
        let snapshot = c.clone();
        let (caller, callee) = (c.caller, c.callee);
        for (ep, gone) in [caller, callee].into_iter().zip(c.gone) {
            if gone {
                self.untold.entry(ep).or_default().push(id);
            }
        }
        for ep in [caller, callee] {
            if let Some(v) = self.by_party.get_mut(&ep) {
                v.retain(|&x| x != id);
                if v.is_empty() {
                    self.by_party.remove(&ep);
                }
            }
        }
        self.timers.insert((now + ENDED_KEPT_MS, id));
        let dests = [snapshot.dests(Party::Caller), snapshot.dests(Party::Callee)];
        let mut out = Vec::new();
        for to in dests.into_iter().flatten() {
            out.push(Effect::Send {
                to,
                msg: Msg::Ended {
                    call: id,
                    outcome,
                    reason: reason.clone(),
                    replaced_by,
                },
            });
        }
        if was_active {
            for ep in [caller, callee] {
                // Still in another active call (operators may take several): stays in_call.
                let other_active = self
                    .of(ep)
                    .iter()
                    .any(|x| self.calls[x].phase == Phase::Active);
                out.push(Effect::InCall {
                    ep,
                    active: other_active,
                });
            }
        }
        if was_ringing && outcome == Outcome::NoAnswer {
            out.push(Effect::Missed {
                callee,
                call: id,
                from: caller,
                at: now,
            });
        }
        out.push(Effect::Record(snapshot));
        out
    }
}

pub fn phase_str(p: Phase) -> &'static str {
    match p {
        Phase::Inviting => "inviting",
        Phase::Ringing => "ringing",
        Phase::Active => "active",
        Phase::Ended => "ended",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct T {
        c: Calls,
        org: Arc<Org>,
    }

    fn rules() -> Rules {
        Rules {
            ring_timeout_ms: 30_000,
            grace_ms: 20_000,
            max_sdp_bytes: 100,
            max_calls: 1,
            operator_max_calls: 2,
        }
    }

    impl T {
        fn new() -> T {
            let org = Arc::new(crate::org::fixture());
            T {
                c: Calls::new(Arc::clone(&org), rules(), 1),
                org,
            }
        }
        fn n(&self, s: &str) -> NodeIdx {
            self.org.lookup(s).unwrap()
        }
        /// A terminal on its first connection (key 1).
        fn on(&self, s: &str) -> Terminal {
            let node = self.n(s);
            Terminal {
                node,
                role: Role::default_for(self.org.tier(node)),
                seat: Seat::MAIN,
                conn: Some(1),
            }
        }
        fn call(
            &mut self,
            from: &str,
            to: &str,
            now: u64,
        ) -> Result<(CallId, Vec<Effect>), CallError> {
            let (a, b) = (self.on(from), self.on(to));
            self.c.invite(a, b, Media::Video, Some("offer".into()), now)
        }
    }

    fn cand(json: &str) -> Signal {
        Signal::Candidate(Candidate(
            serde_json::value::RawValue::from_string(json.into()).unwrap(),
        ))
    }

    fn sent(effects: &[Effect]) -> Vec<(NodeIdx, &Msg)> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Send { to, msg } => Some((to.node(), msg)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_call_rings_is_answered_and_completed() {
        let mut t = T::new();
        let (a, w1) = (t.n("a"), t.n("w1"));
        let (id, fx) = t.call("a", "w1", 1_000).unwrap();
        assert!(matches!(sent(&fx)[..], [(to, Msg::Incoming { offer: Some(_), .. })] if to == w1));
        assert!(matches!(fx[0], Effect::Record(_)));
        let fx = t.c.ring(w1, id, 1_200).unwrap();
        assert_eq!(sent(&fx), [(a, &Msg::Ringing { call: id })]);
        let fx = t.c.accept(w1, id, Some("answer".into()), 3_000).unwrap();
        assert!(fx.contains(&Effect::InCall {
            ep: a,
            active: true
        }));
        assert!(fx.contains(&Effect::InCall {
            ep: w1,
            active: true
        }));
        assert_eq!(t.c.get(id).unwrap().phase, Phase::Active);
        // Renegotiation (an ICE restart after a network change), both ways, in order.
        let fx = t.c.signal(w1, id, Signal::Offer("restart".into())).unwrap();
        assert_eq!(
            sent(&fx),
            [(
                a,
                &Msg::Signal {
                    call: id,
                    signal: Signal::Offer("restart".into())
                }
            )]
        );
        t.c.signal(a, id, Signal::Answer("ok".into())).unwrap();
        t.c.signal(
            a,
            id,
            cand(r#"{"candidate": "candidate:1 1 udp 1 127.0.0.1 5000 typ host"}"#),
        )
        .unwrap();
        let fx = t.c.hangup(a, id, 63_000).unwrap();
        let c = t.c.get(id).unwrap();
        assert_eq!(
            (c.phase, c.outcome, c.duration_ms()),
            (Phase::Ended, Some(Outcome::Completed), Some(60_000))
        );
        assert!(fx.contains(&Effect::InCall {
            ep: a,
            active: false
        }));
        assert_eq!(sent(&fx).len(), 2, "both told");
        assert!(t.c.of(a).is_empty() && t.c.of(w1).is_empty());
        // Late signaling: a clear "ended", not "no such call".
        let e = t.c.signal(w1, id, Signal::EndOfCandidates).unwrap_err();
        assert_eq!(e.code(), "call_ended");
    }

    #[test]
    fn rejected_cancelled_and_missed() {
        let mut t = T::new();
        let (a, w1) = (t.n("a"), t.n("w1"));
        let (id, _) = t.call("a", "w1", 0).unwrap();
        let fx = t.c.reject(w1, id, Some("在开会".into()), 1).unwrap();
        assert_eq!(t.c.get(id).unwrap().outcome, Some(Outcome::Rejected));
        assert!(sent(&fx).iter().any(|(to, m)| *to == a
            && matches!(
                m,
                Msg::Ended {
                    outcome: Outcome::Rejected,
                    reason: Some(_),
                    ..
                }
            )));
        assert!(
            !fx.iter().any(|e| matches!(e, Effect::InCall { .. })),
            "never active: presence untouched"
        );
        let (id, _) = t.call("a", "w1", 10).unwrap();
        t.c.hangup(a, id, 11).unwrap();
        assert_eq!(t.c.get(id).unwrap().outcome, Some(Outcome::Cancelled));
        let (id, _) = t.call("a", "w1", 100).unwrap();
        t.c.ring(w1, id, 200).unwrap();
        assert_eq!(t.c.next_deadline(), Some(30_100));
        assert!(t.c.tick(30_099).is_empty());
        let fx = t.c.tick(30_100);
        assert_eq!(t.c.get(id).unwrap().outcome, Some(Outcome::NoAnswer));
        assert!(fx.contains(&Effect::Missed {
            callee: w1,
            call: id,
            from: a,
            at: 30_100
        }));
    }

    #[test]
    fn busy_offline_self_and_out_of_scope_fail_at_once() {
        let mut t = T::new();
        let (w1, v) = (t.n("w1"), t.n("v"));
        assert_eq!(t.call("a", "a", 0).unwrap_err().code(), "invalid_data");
        assert_eq!(
            t.call("w1", "w2", 0).unwrap_err().code(),
            "out_of_scope",
            "workers call their chain only"
        );
        assert_eq!(
            t.call("a", "b", 0).unwrap_err().code(),
            "out_of_scope",
            "another county"
        );
        assert!(
            t.call("w1", "c", 0).is_ok(),
            "a worker may call the city: its chain of command"
        );
        let off = Terminal {
            conn: None,
            ..t.on("w2")
        };
        let e =
            t.c.invite(t.on("a"), off, Media::Audio, None, 0)
                .unwrap_err();
        assert_eq!(e.code(), "offline");
        // w1 is in a call with c: busy for a second caller.
        let e = t.call("v", "w1", 1).unwrap_err();
        assert_eq!(e.code(), "busy");
        assert!(e.to_string().contains("w1"));
        let _ = (w1, v);
        // An operator may take two; a third is busy.
        assert!(t.call("t", "a", 2).is_ok(), "station t calls its chain");
        let e = t.call("v", "a", 3);
        assert!(e.is_ok(), "operators take two: {e:?}");
        assert_eq!(t.call("w2", "a", 4).unwrap_err().code(), "busy");
        let long = "x".repeat(101);
        let e =
            t.c.invite(t.on("b"), t.on("c"), Media::Audio, Some(long), 5)
                .unwrap_err();
        assert!(e.to_string().contains("101 bytes"));
    }

    #[test]
    fn signaling_is_checked() {
        let mut t = T::new();
        let (a, w1, w2) = (t.n("a"), t.n("w1"), t.n("w2"));
        let (id, _) = t.call("a", "w1", 0).unwrap();
        assert_eq!(
            t.c.signal(w2, id, Signal::EndOfCandidates)
                .unwrap_err()
                .code(),
            "not_a_party"
        );
        assert_eq!(
            t.c.signal(a, CallId(99), Signal::EndOfCandidates)
                .unwrap_err()
                .code(),
            "not_found"
        );
        // The caller's offer is pending: the callee may not offer over it before answering.
        assert_eq!(
            t.c.signal(w1, id, Signal::Offer("x".into()))
                .unwrap_err()
                .code(),
            "illegal_transition"
        );
        // An answer from the side that offered: refused.
        assert_eq!(
            t.c.signal(a, id, Signal::Answer("x".into()))
                .unwrap_err()
                .code(),
            "illegal_transition"
        );
        assert_eq!(
            t.c.signal(a, id, cand(r#"{"no": 1}"#)).unwrap_err().code(),
            "invalid_data"
        );
        assert_eq!(
            t.c.signal(a, id, cand(r#"{"candidate": 7}"#))
                .unwrap_err()
                .code(),
            "invalid_data",
            "the candidate line must be a string"
        );
        let big = format!(r#"{{"candidate": "{}"}}"#, "x".repeat(MAX_CANDIDATE_BYTES));
        let e = t.c.signal(a, id, cand(&big)).unwrap_err();
        assert!(e.to_string().contains("2048 bytes"), "{e}");
        assert_eq!(
            t.c.signal(a, id, Signal::Offer("x".repeat(101)))
                .unwrap_err()
                .code(),
            "invalid_data"
        );
        t.c.accept(w1, id, Some("answer".into()), 1).unwrap();
        // Renegotiation glare: both offer; the caller's wins.
        t.c.signal(a, id, Signal::Offer("caller".into())).unwrap();
        let e =
            t.c.signal(w1, id, Signal::Offer("callee".into()))
                .unwrap_err();
        assert_eq!(e.code(), "glare");
        t.c.signal(w1, id, Signal::Answer("ok".into())).unwrap();
        t.c.signal(w1, id, Signal::Offer("callee".into())).unwrap();
        // The caller offering over the callee's pending offer wins; the callee must roll back.
        assert!(
            t.c.signal(a, id, Signal::Offer("caller again".into()))
                .is_ok()
        );
        assert_eq!(
            t.c.get(id).unwrap().phase,
            Phase::Active,
            "errors never harm the call"
        );
    }

    #[test]
    fn crossing_offers_the_callers_wins_whichever_reaches_the_hub_first() {
        let mut t = T::new();
        let (a, w1) = (t.n("a"), t.n("w1"));
        let (id, _) = t.call("a", "w1", 0).unwrap();
        t.c.accept(w1, id, Some("answer".into()), 1).unwrap();
        // The callee's renegotiation offer arrives first and is relayed; then the caller's.
        t.c.signal(w1, id, Signal::Offer("callee".into())).unwrap();
        let fx = t.c.signal(a, id, Signal::Offer("caller".into())).unwrap();
        assert_eq!(
            sent(&fx),
            [
                (w1, &Msg::OfferSuperseded { call: id }),
                (
                    w1,
                    &Msg::Signal {
                        call: id,
                        signal: Signal::Offer("caller".into())
                    }
                )
            ],
            "the callee is told to roll back, then gets the winning offer"
        );
        // The caller's offer is the one pending: the callee answers it; the caller may not
        // answer the superseded one.
        assert!(matches!(
            t.c.signal(a, id, Signal::Answer("late".into())),
            Err(CallError::Illegal(_))
        ));
        t.c.signal(w1, id, Signal::Answer("ok".into())).unwrap();
        // The other way round: the caller's arrives first, the callee's is refused with glare.
        t.c.signal(a, id, Signal::Offer("caller 2".into())).unwrap();
        assert!(matches!(
            t.c.signal(w1, id, Signal::Offer("callee 2".into())),
            Err(CallError::Glare { .. })
        ));
    }

    #[test]
    fn a_crossing_invite_that_is_refused_leaves_the_call_it_crossed_alone() {
        let mut t = T::new();
        let (a, w1) = (t.n("a"), t.n("w1"));
        // The worker calls its county; the county (lower) calls back at the same moment, but
        // the hub already knows the worker's connection is gone.
        let (first, _) = t.call("w1", "a", 0).unwrap();
        let gone = Terminal {
            conn: None,
            ..t.on("w1")
        };
        let e =
            t.c.invite(t.on("a"), gone, Media::Audio, None, 1)
                .unwrap_err();
        assert!(matches!(e, CallError::Offline(_)), "{e:?}");
        let c = t.c.get(first).unwrap();
        assert_eq!(
            c.phase,
            Phase::Inviting,
            "untouched: nothing was said about it"
        );
        assert_eq!(t.c.of(a), [first]);
        assert_eq!(t.c.of(w1), [first]);
    }

    #[test]
    fn crossing_invites_resolve_to_the_lower_node() {
        let mut t = T::new();
        let (a, w1) = (t.n("a"), t.n("w1"));
        assert!(a < w1);
        // w1 calls a; a calls w1 at the same moment: a (lower) wins, w1's call is superseded.
        let (first, _) = t.call("w1", "a", 0).unwrap();
        let (second, fx) = t.call("a", "w1", 1).unwrap();
        assert_eq!(t.c.get(first).unwrap().outcome, Some(Outcome::Glare));
        assert!(sent(&fx).iter().any(|(to, m)| *to == w1 && matches!(m, Msg::Ended { outcome: Outcome::Glare, replaced_by: Some(r), .. } if *r == second)));
        // The other order: a calls w1, then w1 calls a: w1's invite is refused, pointing at a's.
        let mut t = T::new();
        let (id, _) = t.call("a", "w1", 0).unwrap();
        match t.call("w1", "a", 1).unwrap_err() {
            CallError::Glare { call, .. } => assert_eq!(call, Some(id)),
            other => panic!("{other}"),
        }
        assert_eq!(t.c.get(id).unwrap().phase, Phase::Inviting);
    }

    #[test]
    fn a_dropped_party_has_a_grace_period() {
        let mut t = T::new();
        let (a, w1) = (t.n("a"), t.n("w1"));
        let (id, _) = t.call("a", "w1", 0).unwrap();
        t.c.accept(w1, id, None, 1).unwrap();
        let fx = t.c.disconnected(w1, Seat::MAIN, 1, 10);
        assert_eq!(sent(&fx), [(a, &Msg::PeerAway { call: id })]);
        let fx = t.c.connected(w1, Seat::MAIN, 2, 15_000);
        assert!(
            fx.contains(&Effect::InCall {
                ep: w1,
                active: true
            }),
            "presence re-asserted"
        );
        assert!(sent(&fx).contains(&(a, &Msg::PeerBack { call: id })));
        assert!(sent(&fx).contains(&(
            w1,
            &Msg::Resumed {
                call: id,
                peer: a,
                party: Party::Callee,
                media: Media::Video
            }
        )));
        assert_eq!(t.c.get(id).unwrap().phase, Phase::Active);
        assert!(t.c.tick(20_010).is_empty(), "the grace timer was cleared");
        t.c.disconnected(w1, Seat::MAIN, 2, 30_000);
        let fx = t.c.tick(50_000);
        assert_eq!(t.c.get(id).unwrap().outcome, Some(Outcome::Dropped));
        assert!(fx.contains(&Effect::InCall {
            ep: a,
            active: false
        }));
        // Unanswered calls end at once when a side disconnects.
        let (id, _) = t.call("a", "w1", 60_000).unwrap();
        t.c.disconnected(a, Seat::MAIN, 1, 60_001);
        assert_eq!(t.c.get(id).unwrap().outcome, Some(Outcome::Cancelled));
        // Ended calls are forgotten after a while.
        assert_eq!(t.c.live_count(), 0);
        t.c.tick(60_001 + ENDED_KEPT_MS);
        assert!(t.c.get(id).is_none());
    }

    #[test]
    fn news_of_a_connection_the_call_already_knows_changes_nothing() {
        // The callee's `connected` reaches the service after an invite that found that very
        // connection (its session announced it a moment late): the call rings on.
        let mut t = T::new();
        let (a, w1) = (t.n("a"), t.n("w1"));
        let (id, _) = t.call("a", "w1", 0).unwrap();
        assert!(t.c.connected(w1, Seat::MAIN, 1, 1).is_empty());
        assert_eq!(t.c.get(id).unwrap().phase, Phase::Inviting);
        t.c.ring(w1, id, 2).unwrap();
        t.c.accept(w1, id, Some("answer".into()), 3).unwrap();
        // A new connection, then the old one's end arriving after it: the call stays with the new.
        assert!(
            sent(&t.c.connected(w1, Seat::MAIN, 2, 4)).contains(&(a, &Msg::PeerBack { call: id }))
        );
        assert!(t.c.disconnected(w1, Seat::MAIN, 1, 5).is_empty());
        assert_eq!(t.c.get(id).unwrap().phase, Phase::Active);
        assert_eq!(t.c.next_deadline(), None, "no grace timer");
        // The new connection's end counts.
        assert_eq!(
            sent(&t.c.disconnected(w1, Seat::MAIN, 2, 6)),
            [(a, &Msg::PeerAway { call: id })]
        );
    }

    #[test]
    fn a_new_connection_resumes_answered_calls_and_ends_unanswered_ones() {
        // The hub had not seen the old connection die (a phone moving to 4G): no `disconnected`.
        let mut t = T::new();
        let (a, w1) = (t.n("a"), t.n("w1"));
        let (answered, _) = t.call("a", "w1", 0).unwrap();
        t.c.accept(w1, answered, Some("answer".into()), 1).unwrap();
        let fx = t.c.connected(w1, Seat::MAIN, 2, 5);
        assert_eq!(t.c.get(answered).unwrap().phase, Phase::Active);
        assert!(sent(&fx).contains(&(a, &Msg::PeerBack { call: answered })));
        // ICE restart over the new connection: the callee offers, the caller answers.
        t.c.signal(w1, answered, Signal::Offer("restart".into()))
            .unwrap();
        t.c.signal(a, answered, Signal::Answer("restarted".into()))
            .unwrap();
        t.c.hangup(a, answered, 10).unwrap();
        let (ringing, _) = t.call("a", "w1", 20).unwrap();
        assert_eq!(t.c.live_count(), 1);
        t.c.connected(w1, Seat::MAIN, 3, 25);
        let c = t.c.get(ringing).unwrap();
        assert_eq!(
            (c.outcome, c.reason.as_deref()),
            (Some(Outcome::Dropped), Some("the callee reconnected"))
        );
        assert_eq!(
            t.c.next_deadline(),
            Some(10 + ENDED_KEPT_MS),
            "no ring timer left"
        );
    }

    #[test]
    fn a_call_rings_at_every_free_seat_until_one_answers_or_the_last_leaves() {
        let mut t = T::new();
        let (a, w1) = (t.n("a"), t.n("w1"));
        let seat = |s| Seat::parse(s).unwrap();
        let (main, desk) = (Seat::MAIN, seat("desk-2"));
        let center = |conns: [u64; 2]| Callee {
            node: a,
            seats: [(main, conns[0]), (desk, conns[1])]
                .into_iter()
                // Stations take one call at a time (operators two, in these rules).
                .map(|(seat, conn)| SeatAt {
                    seat,
                    role: Role::Station,
                    conn,
                })
                .collect(),
        };
        let caller = t.on("w1");
        let (id, fx) =
            t.c.invite(caller, center([10, 20]), Media::Audio, None, 0)
                .unwrap();
        let rung: Vec<Dest> = fx
            .iter()
            .filter_map(|e| match e {
                Effect::Send { to, .. } => Some(*to),
                _ => None,
            })
            .collect();
        assert_eq!(
            rung,
            [
                Dest {
                    node: a,
                    seat: main
                },
                Dest {
                    node: a,
                    seat: desk
                }
            ]
        );
        // The desk with the newer connection drops: the call rings on at the other; the older
        // one going too ends it, though its connection key is the smaller.
        assert!(t.c.disconnected(a, desk, 20, 1).is_empty());
        assert_eq!(t.c.get(id).unwrap().phase, Phase::Inviting);
        let who = |seat, conn| Who {
            node: a,
            seat,
            conn,
        };
        assert_eq!(
            t.c.ring(who(desk, 21), id, 2),
            Err(CallError::NotAParty(id)),
            "not rung there"
        );
        t.c.disconnected(a, main, 10, 3);
        assert_eq!(t.c.get(id).unwrap().outcome, Some(Outcome::Dropped));

        // Answered at the desk: the main seat hears it was answered elsewhere.
        let (id, _) =
            t.c.invite(caller, center([11, 21]), Media::Audio, None, 10)
                .unwrap();
        t.c.ring(who(main, 11), id, 11).unwrap();
        assert!(
            t.c.ring(who(desk, 21), id, 11).unwrap().is_empty(),
            "the caller hears ringing once"
        );
        let e =
            t.c.signal(who(main, 11), id, Signal::Answer("x".into()))
                .unwrap_err();
        assert_eq!(
            e.code(),
            "illegal_transition",
            "a ringing seat answers with accept"
        );
        let fx = t.c.accept(who(desk, 21), id, None, 12).unwrap();
        assert!(fx.contains(&Effect::Send {
            to: Dest {
                node: a,
                seat: main
            },
            msg: Msg::AnsweredElsewhere { call: id }
        }));
        assert_eq!(t.c.get(id).unwrap().seat(Party::Callee), Some(desk));
        // The main seat is free: a second call rings there only, while the desk talks.
        let w2 = t.on("w2");
        let (second, fx) =
            t.c.invite(w2, center([11, 21]), Media::Audio, None, 13)
                .unwrap();
        assert!(matches!(&fx[1], Effect::Send { to, .. } if *to == Dest { node: a, seat: main }));
        assert_eq!(fx.len(), 2, "{fx:?}");
        t.c.hangup(w2.node, second, 14).unwrap();
        // The main seat's comings and goings are nothing to the desk's call.
        assert!(t.c.disconnected(a, main, 11, 15).is_empty());
        assert_eq!(
            t.c.signal(who(main, 12), id, Signal::EndOfCandidates),
            Err(CallError::NotAParty(id))
        );
        let fx = t.c.disconnected(a, desk, 21, 16);
        assert_eq!(sent(&fx), [(w1, &Msg::PeerAway { call: id })]);
    }
}

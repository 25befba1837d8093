//! The work-order state machine: no IO, no clock (every call takes `now`, Unix ms).
//!
//! Orders flow down the dispatch chain and results flow back up it:
//!
//! ```text
//! create ─▶ intake ─dispatch─▶ dispatched ─acknowledge─▶ in_progress ─report─▶ result_reported
//!             ▲ (dispatch again, one tier at a time;            │        review ▲ (each tier up
//!             │  return / escalate / reassign)                  │               │  the chain)
//!             └── late: supervised ◀────────────────────────────┘   rate ─▶ rated ─publish─▶
//!                                                                    published ─archive─▶ archived
//! ```
//!
//! The core keeps open orders in memory and answers each request with the new order, the event
//! to append to its history, and the terminals to notify; the shell makes those durable before
//! anyone hears of them. Archived orders leave memory (the store keeps them).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use super::model::{
    Action, Detail, Event, Order, OrderId, Outcome, Place, Priority, Rating, Reporter, Source,
    State,
};
use crate::auth::Role;
use crate::org::{GeoPoint, NodeIdx, Org, Tier};

/// Deadlines and escalation per priority.
#[derive(Clone, Debug, PartialEq)]
pub struct PriorityRule {
    pub deadline_secs: u64,
    /// After the deadline, how long supervision waits before escalating to the tier above.
    pub escalate_after_secs: u64,
    /// May be dispatched past intermediate tiers (e.g. city straight to a village).
    pub skip_tiers: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CategoryRule {
    pub name: String,
    pub name_en: String,
    /// Overrides the priority's deadline when shorter.
    pub deadline_secs: Option<u64>,
    /// The causes an order of this category may name (ids).
    pub causes: Vec<String>,
}

impl CategoryRule {
    /// A cause this category names, or the error that lists those it does.
    pub fn check_cause(&self, category: &str, cause: &str) -> Result<(), OrderError> {
        if self.causes.iter().any(|c| c == cause) {
            return Ok(());
        }
        Err(OrderError::UnknownCause {
            category: category.to_string(),
            given: cause.to_string(),
            known: self.causes.clone(),
        })
    }
}

/// Longest texts accepted, in characters.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    pub description: usize,
    pub address: usize,
    pub text: usize,
    pub note: usize,
    pub name: usize,
    pub phone: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub categories: BTreeMap<String, CategoryRule>,
    pub priorities: [PriorityRule; 3],
    pub limits: Limits,
    /// How long idempotency keys are remembered.
    pub idempotency_ms: u64,
}

impl Policy {
    fn rule(&self, p: Priority) -> &PriorityRule {
        &self.priorities[p as usize]
    }

    pub fn deadline_ms(&self, p: Priority, category: &str) -> u64 {
        let base = self.rule(p).deadline_secs;
        let cat = self
            .categories
            .get(category)
            .and_then(|c| c.deadline_secs)
            .unwrap_or(base);
        base.min(cat) * 1000
    }
}

/// Who is acting: a terminal (by its node and role), or the hub's scheduler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Who {
    pub node: NodeIdx,
    pub role: Role,
}

/// A request for a new order, already parsed from the wire.
#[derive(Clone, Debug, PartialEq)]
pub struct NewOrder {
    pub source: Source,
    pub category: String,
    pub cause: Option<String>,
    pub description: String,
    pub node: NodeIdx,
    pub point: Option<GeoPoint>,
    pub address: String,
    pub priority: Priority,
    pub reporter_name: String,
    pub reporter_phone: String,
}

/// An action on an existing order.
#[derive(Clone, Debug, PartialEq)]
pub enum Act {
    Dispatch {
        to: NodeIdx,
        note: Option<String>,
    },
    Acknowledge,
    Return {
        reason: String,
    },
    Reassign {
        to: NodeIdx,
        reason: Option<String>,
    },
    Escalate {
        reason: String,
    },
    Report {
        result: String,
        /// The cause found, if the reporter names one.
        cause: Option<String>,
    },
    Review {
        approve: bool,
        comment: Option<String>,
    },
    Rate {
        score: u8,
        satisfied: bool,
        comment: Option<String>,
    },
    Publish {
        summary: String,
    },
    Archive,
}

impl Act {
    pub fn action(&self) -> Action {
        match self {
            Act::Dispatch { .. } => Action::Dispatch,
            Act::Acknowledge => Action::Acknowledge,
            Act::Return { .. } => Action::Return,
            Act::Reassign { .. } => Action::Reassign,
            Act::Escalate { .. } => Action::Escalate,
            Act::Report { .. } => Action::Report,
            Act::Review { .. } => Action::Review,
            Act::Rate { .. } => Action::Rate,
            Act::Publish { .. } => Action::Publish,
            Act::Archive => Action::Archive,
        }
    }
}

/// Why a terminal is told about an order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notify {
    /// The order is now yours to act on (dispatched, returned, escalated, reassigned, reopened,
    /// or a result came back to you for review).
    Assigned,
    /// It was taken from you (reassigned elsewhere).
    Withdrawn,
    /// It is late (you hold it, or you are the holder's superior).
    Supervised,
}

impl Notify {
    pub fn kind(self) -> &'static str {
        match self {
            Notify::Assigned => "order.assigned",
            Notify::Withdrawn => "order.withdrawn",
            Notify::Supervised => "order.supervised",
        }
    }
}

/// The result of a successful request: what to persist and whom to tell.
#[derive(Clone, Debug, PartialEq)]
pub struct Applied {
    pub order: Order,
    pub event: Event,
    pub notify: Vec<(NodeIdx, Notify)>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Created {
    New(Box<Applied>),
    /// The idempotency key was used before with the same request: this is that order.
    Replay(OrderId),
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum OrderError {
    #[error("no order {0}")]
    NotFound(OrderId),
    #[error("cannot {} order in state {}; allowed now: {}", .action.as_str(), .state.as_str(),
        if .allowed.is_empty() { "nothing (the order is closed)".to_string() }
        else { .allowed.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(", ") })]
    IllegalTransition {
        action: Action,
        state: State,
        allowed: Vec<Action>,
    },
    #[error("{0}")]
    OutOfScope(String),
    #[error("unknown category {given:?}; known: {}", .known.join(", "))]
    UnknownCategory { given: String, known: Vec<String> },
    #[error("unknown cause {given:?} for category {category}; known: {}",
        if .known.is_empty() { "none (this category names no causes)".to_string() } else { .known.join(", ") })]
    UnknownCause {
        category: String,
        given: String,
        known: Vec<String>,
    },
    #[error("{0}")]
    InvalidTarget(String),
    #[error("{0}")]
    Invalid(String),
    #[error("idempotency key {key:?} was used for order {existing} with a different request")]
    IdempotencyConflict { key: String, existing: OrderId },
    #[error("order is at version {current}, not {expected}: it changed since you looked")]
    VersionConflict { expected: u32, current: u32 },
}

impl OrderError {
    /// Stable machine-readable code (REST and WebSocket).
    pub fn code(&self) -> &'static str {
        match self {
            OrderError::NotFound(_) => "not_found",
            OrderError::IllegalTransition { .. } => "illegal_transition",
            OrderError::OutOfScope(_) => "out_of_scope",
            OrderError::UnknownCategory { .. } => "unknown_category",
            OrderError::UnknownCause { .. } => "unknown_cause",
            OrderError::InvalidTarget(_) => "invalid_target",
            OrderError::Invalid(_) => "invalid_data",
            OrderError::IdempotencyConflict { .. } => "idempotency_conflict",
            OrderError::VersionConflict { .. } => "version_conflict",
        }
    }
}

/// May `viewer` see this order at all? Those handling it (its dispatch and report chains, its
/// holder), and centers whose subtree holds its holder, its place or its intake node.
pub fn can_view(org: &Org, o: &Order, viewer: NodeIdx, role: Role) -> bool {
    if o.chain.contains(&viewer) || o.report_chain.contains(&viewer) || o.holder == viewer {
        return true;
    }
    role != Role::Worker
        && (org.contains(viewer, o.holder)
            || org.contains(viewer, o.place.node)
            || org.contains(viewer, o.intake()))
}

/// Actions possible in an order's present state, whoever asks.
pub fn allowed(o: &Order) -> Vec<Action> {
    use Action::*;
    match o.state {
        State::Intake => vec![Dispatch, Acknowledge, Escalate],
        State::Dispatched => vec![Dispatch, Acknowledge, Return, Reassign, Escalate],
        State::InProgress => vec![Dispatch, Report, Return, Reassign, Escalate],
        State::Supervised if o.acknowledged => vec![Dispatch, Report, Return, Reassign, Escalate],
        State::Supervised => vec![Dispatch, Acknowledge, Return, Reassign, Escalate],
        State::ResultReported if o.reviewed => vec![Rate],
        State::ResultReported => vec![Review],
        State::Rated => vec![Publish],
        State::Published => vec![Archive],
        State::Archived => vec![],
    }
}

fn work_state(o: &Order, base: State) -> State {
    if o.supervision > 0 {
        State::Supervised
    } else {
        base
    }
}

/// Holder → its org parent (if any); the chain follows.
fn escalate(org: &Org, o: &mut Order) {
    let Some(p) = org.parent(o.holder) else {
        return;
    };
    o.chain.pop();
    if o.chain.last() != Some(&p) {
        o.chain.push(p);
    }
    o.holder = p;
    o.acknowledged = false;
    o.state = work_state(o, State::Dispatched);
}

/// Back to the node that reported the result, along the chain it had then.
fn back_to_resolver(o: &mut Order, base: State, acknowledged: bool) {
    let resolver = o.result.as_ref().map_or(o.holder, |r| r.by);
    o.chain = std::mem::take(&mut o.report_chain);
    if o.chain.last() != Some(&resolver) {
        o.chain.push(resolver);
    }
    o.holder = resolver;
    o.result = None;
    o.reviewed = false;
    o.acknowledged = acknowledged;
    o.state = work_state(o, base);
}

/// Applies a recorded event to an order: the only place an order changes. Deciding uses it
/// after validation, and start-up uses it to rebuild open orders from their history, so a replay
/// reproduces exactly what was decided. Events are facts here: nothing is checked.
pub fn evolve(org: &Org, o: &mut Order, e: &Event) {
    let d = &e.detail;
    let holder0 = o.holder;
    let target = || d.to.as_deref().and_then(|id| org.lookup(id));
    match e.action {
        // The create event carries the whole new order; it is read, not applied.
        Action::Create => {}
        Action::Dispatch => {
            if let Some(to) = target() {
                o.chain.push(to);
                o.holder = to;
                o.acknowledged = false;
                o.state = work_state(o, State::Dispatched);
            }
        }
        Action::Acknowledge => {
            o.acknowledged = true;
            o.state = work_state(o, State::InProgress);
        }
        Action::Return => {
            if o.chain.len() > 1 {
                o.chain.pop();
            }
            o.holder = *o.chain.last().expect("chain is never empty");
            o.acknowledged = true;
            o.state = if o.chain.len() == 1 && o.supervision == 0 {
                State::Intake
            } else {
                work_state(o, State::InProgress)
            };
        }
        Action::Reassign => {
            if let (Some(by), Some(to)) = (e.actor, target()) {
                let at = o.chain.iter().position(|&c| c == by).unwrap_or(0);
                o.chain.truncate(at + 1);
                o.chain.push(to);
                o.holder = to;
                o.acknowledged = false;
                o.state = work_state(o, State::Dispatched);
            }
        }
        Action::Escalate => escalate(org, o),
        Action::Report => {
            o.result = Some(Outcome {
                text: d.result.as_deref().unwrap_or_default().into(),
                by: o.holder,
                at: e.at,
            });
            if let Some(c) = &d.cause {
                o.cause = Some(c.as_str().into());
            }
            o.report_chain = o.chain.clone();
            if o.chain.len() > 1 {
                o.chain.pop();
            }
            o.holder = *o.chain.last().expect("chain is never empty");
            o.reviewed = false;
            o.state = State::ResultReported;
        }
        Action::Review => {
            if d.approve == Some(true) {
                if o.chain.len() > 1 {
                    o.chain.pop();
                    o.holder = *o.chain.last().expect("chain is never empty");
                } else {
                    o.reviewed = true;
                }
            } else {
                back_to_resolver(o, State::InProgress, true);
            }
        }
        Action::Rate => {
            let satisfied = d.satisfied.unwrap_or(true);
            o.rating = Some(Rating {
                score: d.score.unwrap_or(0),
                satisfied,
                comment: d.note.as_deref().unwrap_or_default().into(),
                at: e.at,
            });
            if satisfied {
                o.state = State::Rated;
            } else {
                o.reopened += 1;
                o.supervision = 0;
                o.due_at = d.due_at.unwrap_or(o.due_at);
                back_to_resolver(o, State::Dispatched, false);
            }
        }
        Action::Publish => {
            o.summary = d.summary.as_deref().map(Into::into);
            o.state = State::Published;
        }
        Action::Archive => {
            o.state = State::Archived;
            o.closed_at = Some(e.at);
        }
        Action::Supervise => {
            o.late = true;
            o.supervision = d.level.unwrap_or(o.supervision + 1);
            if o.supervision >= 2 {
                escalate(org, o);
            }
            o.state = State::Supervised;
        }
    }
    o.version = e.seq;
    o.updated_at = e.at;
    if o.holder != holder0 {
        o.read_at = None;
        o.assigned_seq = None;
    }
    if let Some(m) = d.message {
        o.assigned_seq = Some(m);
    }
}

/// Masks runs of seven or more digits (phone and id numbers) in published text.
pub fn redact(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_ascii_digit() {
            let start = i;
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
            let run = i - start;
            if run >= 7 {
                out.extend(std::iter::repeat_n('*', run));
            } else {
                out.extend(&chars[start..i]);
            }
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

pub struct Orders {
    org: Arc<Org>,
    policy: Policy,
    open: HashMap<OrderId, Order>,
    /// Next supervision step of each working order: (when, order).
    deadlines: BTreeSet<(u64, OrderId)>,
    next_id: u64,
    /// Idempotency key → (order, request hash, first use).
    idem: HashMap<Box<str>, (OrderId, u64, u64)>,
}

fn text(field: &str, value: &str, max: usize, required: bool) -> Result<Box<str>, OrderError> {
    let v = value.trim();
    if required && v.is_empty() {
        return Err(OrderError::Invalid(format!("{field} is required")));
    }
    let n = v.chars().count();
    if n > max {
        return Err(OrderError::Invalid(format!(
            "{field} is {n} characters; at most {max} are allowed"
        )));
    }
    if v.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(OrderError::Invalid(format!(
            "{field} must not contain control characters"
        )));
    }
    Ok(v.into())
}

impl Orders {
    pub fn new(org: Arc<Org>, policy: Policy) -> Orders {
        Orders {
            org,
            policy,
            open: HashMap::new(),
            deadlines: BTreeSet::new(),
            next_id: 1,
            idem: HashMap::new(),
        }
    }

    pub fn org(&self) -> &Arc<Org> {
        &self.org
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Loads state saved by the store: open orders, the next id, recent idempotency keys.
    pub fn restore(
        &mut self,
        orders: impl IntoIterator<Item = Order>,
        next_id: u64,
        keys: impl IntoIterator<Item = (Box<str>, OrderId, u64, u64)>,
    ) {
        for o in orders {
            if let Some(k) = self.deadline_key(&o) {
                self.deadlines.insert((k, o.id));
            }
            self.open.insert(o.id, o);
        }
        self.next_id = self.next_id.max(next_id);
        for (key, id, hash, at) in keys {
            self.idem.insert(key, (id, hash, at));
        }
    }

    pub fn get(&self, id: OrderId) -> Option<&Order> {
        self.open.get(&id)
    }

    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    /// Forgets an order (its write failed); the shell reloads it from the store if it exists.
    pub fn forget(&mut self, id: OrderId) {
        if let Some(o) = self.open.remove(&id)
            && let Some(k) = self.deadline_key(&o)
        {
            self.deadlines.remove(&(k, id));
        }
    }

    /// An order the store never took (its create failed): gone, and so is its idempotency key,
    /// so that the client's retry creates it rather than being told of an order that is not.
    pub fn discard(&mut self, id: OrderId) {
        self.forget(id);
        self.idem.retain(|_, (i, _, _)| *i != id);
    }

    /// Puts back an order as the store has it.
    pub fn reload(&mut self, o: Order) {
        self.forget(o.id);
        if o.state != State::Archived {
            if let Some(k) = self.deadline_key(&o) {
                self.deadlines.insert((k, o.id));
            }
            self.open.insert(o.id, o);
        }
    }

    fn deadline_key(&self, o: &Order) -> Option<u64> {
        if !o.state.is_working() {
            return None;
        }
        match o.supervision {
            0 => Some(o.due_at),
            1 => Some(o.due_at + self.policy.rule(o.priority).escalate_after_secs * 1000),
            _ => None,
        }
    }

    pub fn next_deadline(&self) -> Option<u64> {
        self.deadlines.first().map(|&(t, _)| t)
    }

    fn name(&self, n: NodeIdx) -> String {
        let node = self.org.node(n);
        format!("{} ({})", node.id, node.name)
    }

    pub fn create(
        &mut self,
        who: Who,
        new: NewOrder,
        idem: Option<(Box<str>, u64)>,
        now: u64,
    ) -> Result<Created, OrderError> {
        if let Some((key, hash)) = &idem
            && let Some(&(id, h, _)) = self.idem.get(key)
        {
            return if h == *hash {
                Ok(Created::Replay(id))
            } else {
                Err(OrderError::IdempotencyConflict {
                    key: key.to_string(),
                    existing: id,
                })
            };
        }
        let Some(rule) = self.policy.categories.get(&new.category) else {
            return Err(OrderError::UnknownCategory {
                given: new.category,
                known: self.policy.categories.keys().cloned().collect(),
            });
        };
        if let Some(c) = &new.cause {
            rule.check_cause(&new.category, c)?;
        }
        if !self.org.contains(who.node, new.node) {
            return Err(OrderError::OutOfScope(format!(
                "{} may take in orders only for its own subtree; {} is outside it",
                self.name(who.node),
                self.name(new.node)
            )));
        }
        if let Some(p) = new.point
            && !p.is_valid()
        {
            return Err(OrderError::Invalid(format!(
                "location ({}, {}) is outside [-90, 90] × [-180, 180]",
                p.lat, p.lon
            )));
        }
        let l = &self.policy.limits;
        let description = text("description", &new.description, l.description, true)?;
        let address = text("address", &new.address, l.address, false)?;
        let name = text("reporter.name", &new.reporter_name, l.name, false)?;
        let phone = text("reporter.phone", &new.reporter_phone, l.phone, false)?;
        if !phone
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '+' | '-' | ' '))
        {
            return Err(OrderError::Invalid(
                "reporter.phone may contain only digits, spaces, '+' and '-'".into(),
            ));
        }
        let id = OrderId(self.next_id);
        self.next_id += 1;
        let order = Order {
            id,
            source: new.source,
            due_at: now + self.policy.deadline_ms(new.priority, &new.category),
            category: new.category.into(),
            cause: new.cause.map(Into::into),
            description,
            place: Place {
                node: new.node,
                point: new.point,
                address,
            },
            priority: new.priority,
            reporter: Reporter { name, phone },
            created_at: now,
            updated_at: now,
            state: State::Intake,
            holder: who.node,
            chain: vec![who.node],
            acknowledged: false,
            report_chain: Vec::new(),
            result: None,
            reviewed: false,
            rating: None,
            summary: None,
            supervision: 0,
            late: false,
            reopened: 0,
            version: 1,
            closed_at: None,
            assigned_seq: None,
            read_at: None,
        };
        if let Some((key, hash)) = idem {
            self.idem.insert(key, (id, hash, now));
        }
        let event = Event {
            order: id,
            seq: 1,
            at: now,
            actor: Some(who.node),
            action: Action::Create,
            detail: Detail {
                to_state: Some(State::Intake),
                to: Some(self.org.id(who.node).to_string()),
                ..Detail::default()
            },
        };
        if let Some(k) = self.deadline_key(&order) {
            self.deadlines.insert((k, id));
        }
        self.open.insert(id, order.clone());
        Ok(Created::New(Box::new(Applied {
            order,
            event,
            notify: Vec::new(),
        })))
    }

    /// Checks that `to` is a dispatch target from `from` for an order of priority `p`.
    fn check_target(
        &self,
        from: NodeIdx,
        to: NodeIdx,
        p: Priority,
        verb: &str,
    ) -> Result<(), OrderError> {
        if to == from || !self.org.contains(from, to) {
            return Err(OrderError::InvalidTarget(format!(
                "can {verb} only to a node below {}; {} is not",
                self.name(from),
                self.name(to)
            )));
        }
        if self.org.parent(to) != Some(from) && !self.policy.rule(p).skip_tiers {
            let example = self
                .org
                .child_toward(from, to)
                .map(|c| self.name(c))
                .unwrap_or_default();
            return Err(OrderError::InvalidTarget(format!(
                "{} orders go down one tier at a time: {verb} to a direct child of {} (towards {}: {example}); \
                 only priorities with skip_tiers may skip",
                p.as_str(),
                self.name(from),
                self.name(to)
            )));
        }
        Ok(())
    }

    /// Applies an action by a terminal. `expect` (optional) is the version the caller saw.
    ///
    /// Decides only: validates the request against the order and the caller, then builds the
    /// event; `evolve` applies it, exactly as a replay of the history would.
    pub fn act(
        &mut self,
        who: Who,
        id: OrderId,
        expect: Option<u32>,
        act: Act,
        now: u64,
    ) -> Result<Applied, OrderError> {
        let o = self.open.get(&id).ok_or(OrderError::NotFound(id))?;
        // Someone who may not see the order learns nothing about it, not even that it exists.
        if !can_view(&self.org, o, who.node, who.role) {
            return Err(OrderError::NotFound(id));
        }
        if let Some(v) = expect
            && v != o.version
        {
            return Err(OrderError::VersionConflict {
                expected: v,
                current: o.version,
            });
        }
        let action = act.action();
        let may = allowed(o);
        if !may.contains(&action) {
            return Err(OrderError::IllegalTransition {
                action,
                state: o.state,
                allowed: may,
            });
        }
        // Who may act: the holder, a dispatcher above it, or the intake node.
        match action {
            Action::Reassign => {
                let above = &o.chain[..o.chain.len().saturating_sub(1)];
                if !above.contains(&who.node) {
                    return Err(OrderError::OutOfScope(format!(
                        "only a dispatcher above the holder may reassign order {id} (its chain: {})",
                        o.chain
                            .iter()
                            .map(|&n| self.org.id(n).as_str())
                            .collect::<Vec<_>>()
                            .join(" → ")
                    )));
                }
            }
            Action::Rate | Action::Publish | Action::Archive => {
                if who.node != o.intake() {
                    return Err(OrderError::OutOfScope(format!(
                        "only the intake node {} may {} order {id}",
                        self.name(o.intake()),
                        action.as_str()
                    )));
                }
            }
            _ => {
                if who.node != o.holder {
                    return Err(OrderError::OutOfScope(format!(
                        "only the holder {} may {} order {id}",
                        self.name(o.holder),
                        action.as_str()
                    )));
                }
            }
        }

        let l = &self.policy.limits;
        let node_id = |n: NodeIdx| Some(self.org.id(n).to_string());
        let mut d = Detail::default();
        match act {
            Act::Dispatch { to, note } => {
                if self.org.tier(o.holder) == Tier::Worker || who.role == Role::Worker {
                    return Err(OrderError::InvalidTarget(
                        "a grid worker cannot dispatch; report a result, return or escalate".into(),
                    ));
                }
                self.check_target(o.holder, to, o.priority, "dispatch")?;
                d.note = note
                    .map(|s| text("note", &s, l.note, false))
                    .transpose()?
                    .map(Into::into);
                d.to = node_id(to);
            }
            Act::Acknowledge => {}
            Act::Return { reason } => {
                if o.chain.len() < 2 {
                    return Err(OrderError::InvalidTarget(format!(
                        "order {id} is at its intake node; there is no dispatcher to return it to"
                    )));
                }
                d.note = Some(text("reason", &reason, l.note, true)?.into());
            }
            Act::Reassign { to, reason } => {
                self.check_target(who.node, to, o.priority, "reassign")?;
                if to == o.holder {
                    return Err(OrderError::InvalidTarget(format!(
                        "{} already holds order {id}",
                        self.name(to)
                    )));
                }
                d.note = reason
                    .map(|s| text("reason", &s, l.note, false))
                    .transpose()?
                    .map(Into::into);
                d.to = node_id(to);
            }
            Act::Escalate { reason } => {
                d.note = Some(text("reason", &reason, l.note, true)?.into());
                if self.org.parent(o.holder).is_none() {
                    return Err(OrderError::InvalidTarget(format!(
                        "{} is the top tier; there is no tier above to escalate to",
                        self.name(o.holder)
                    )));
                }
            }
            Act::Report { result, cause } => {
                d.result = Some(text("result", &result, l.text, true)?.into());
                if let Some(c) = &cause {
                    match self.policy.categories.get(&*o.category) {
                        Some(rule) => rule.check_cause(&o.category, c)?,
                        // A category since removed from the taxonomy names no causes any more.
                        None => {
                            return Err(OrderError::UnknownCause {
                                category: o.category.to_string(),
                                given: c.clone(),
                                known: Vec::new(),
                            });
                        }
                    }
                }
                d.cause = cause;
            }
            Act::Review { approve, comment } => {
                d.approve = Some(approve);
                d.note = comment
                    .map(|s| text("comment", &s, l.note, false))
                    .transpose()?
                    .map(Into::into);
            }
            Act::Rate {
                score,
                satisfied,
                comment,
            } => {
                if !(1..=5).contains(&score) {
                    return Err(OrderError::Invalid(format!(
                        "score {score} is not between 1 and 5"
                    )));
                }
                d.note = comment
                    .map(|s| text("comment", &s, l.note, false))
                    .transpose()?
                    .map(Into::into);
                d.score = Some(score);
                d.satisfied = Some(satisfied);
                if !satisfied {
                    // Reopened with a fresh deadline.
                    d.due_at = Some(now + self.policy.deadline_ms(o.priority, &o.category));
                }
            }
            Act::Publish { summary } => {
                let summary = text("summary", &summary, l.text, true)?;
                d.summary = Some(redact(&summary));
            }
            Act::Archive => {}
        }
        let event = Event {
            order: id,
            seq: o.version + 1,
            at: now,
            actor: Some(who.node),
            action,
            detail: d,
        };
        let old_key = self.deadline_key(o);
        let before = o.clone();
        Ok(self.commit(old_key, before, event))
    }

    /// Applies a decided event, keeps the deadline index in step, and works out whom to tell:
    /// whoever holds the order now (and, on a reassignment, the one it was taken from).
    fn commit(&mut self, old_key: Option<u64>, mut n: Order, mut event: Event) -> Applied {
        let (state0, holder0) = (n.state, n.holder);
        evolve(&self.org, &mut n, &event);
        let d = &mut event.detail;
        let mut notify = Vec::new();
        if n.holder != holder0 {
            d.from = Some(self.org.id(holder0).to_string());
            d.to = Some(self.org.id(n.holder).to_string());
            if event.action == Action::Reassign {
                notify.push((holder0, Notify::Withdrawn));
            }
            notify.push((n.holder, Notify::Assigned));
        }
        if n.state != state0 {
            d.from_state = Some(state0);
            d.to_state = Some(n.state);
        }
        if let Some(k) = old_key {
            self.deadlines.remove(&(k, n.id));
        }
        if let Some(k) = self.deadline_key(&n) {
            self.deadlines.insert((k, n.id));
        }
        if n.state == State::Archived {
            self.open.remove(&n.id);
        } else {
            self.open.insert(n.id, n.clone());
        }
        Applied {
            order: n,
            event,
            notify,
        }
    }

    /// Supervision: orders past their deadline are marked supervised (holder and its superior
    /// told); past the second threshold they are escalated to the tier above. Also forgets
    /// idempotency keys older than the policy's window.
    pub fn tick(&mut self, now: u64) -> Vec<Applied> {
        let mut out = Vec::new();
        while let Some(&(t, id)) = self.deadlines.first() {
            if t > now {
                break;
            }
            // The key is removed here; `commit` inserts the next one.
            self.deadlines.pop_first();
            let Some(o) = self.open.get(&id) else {
                continue;
            };
            let event = Event {
                order: id,
                seq: o.version + 1,
                at: now,
                actor: None,
                action: Action::Supervise,
                detail: Detail {
                    level: Some(o.supervision + 1),
                    ..Detail::default()
                },
            };
            let mut a = self.commit(None, o.clone(), event);
            let holder = a.order.holder;
            a.notify.push((holder, Notify::Supervised));
            if let Some(p) = self.org.parent(holder) {
                a.notify.push((p, Notify::Supervised));
            }
            out.push(a);
        }
        let window = self.policy.idempotency_ms;
        self.idem
            .retain(|_, &mut (_, _, at)| now.saturating_sub(at) < window);
        out
    }

    /// Records which outbox message told the holder (for delivery receipts).
    pub fn set_assigned_seq(&mut self, id: OrderId, holder: NodeIdx, seq: u64) {
        if let Some(o) = self.open.get_mut(&id)
            && o.holder == holder
        {
            o.assigned_seq = Some(seq);
        }
    }

    /// The holder opened the order: a read receipt. Returns whether it is new.
    pub fn mark_read(&mut self, id: OrderId, who: NodeIdx, now: u64) -> bool {
        match self.open.get_mut(&id) {
            Some(o) if o.holder == who && o.read_at.is_none() => {
                o.read_at = Some(now);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn policy() -> Policy {
        let mut categories = BTreeMap::new();
        for (id, name) in [("noise", "噪音扰民"), ("waterlogging", "积水内涝")] {
            categories.insert(
                id.to_string(),
                CategoryRule {
                    name: name.into(),
                    name_en: id.into(),
                    deadline_secs: None,
                    causes: if id == "waterlogging" {
                        vec!["blocked_drain".into(), "manhole_backflow".into()]
                    } else {
                        Vec::new()
                    },
                },
            );
        }
        Policy {
            categories,
            priorities: [
                PriorityRule {
                    deadline_secs: 100,
                    escalate_after_secs: 50,
                    skip_tiers: false,
                },
                PriorityRule {
                    deadline_secs: 40,
                    escalate_after_secs: 20,
                    skip_tiers: true,
                },
                PriorityRule {
                    deadline_secs: 10,
                    escalate_after_secs: 5,
                    skip_tiers: true,
                },
            ],
            limits: Limits {
                description: 100,
                address: 50,
                text: 100,
                note: 50,
                name: 10,
                phone: 20,
            },
            idempotency_ms: 1_000_000,
        }
    }

    struct T {
        o: Orders,
    }

    impl T {
        fn new() -> T {
            T {
                o: Orders::new(Arc::new(crate::org::fixture()), policy()),
            }
        }
        fn n(&self, id: &str) -> NodeIdx {
            self.o.org().lookup(id).unwrap()
        }
        fn who(&self, id: &str) -> Who {
            let node = self.n(id);
            let role = Role::default_for(self.o.org().tier(node));
            Who { node, role }
        }
        fn new_order(&self, priority: Priority) -> NewOrder {
            NewOrder {
                source: Source::Hotline12345,
                category: "noise".into(),
                cause: None,
                description: "广场舞噪音".into(),
                node: self.n("w1"),
                point: Some(GeoPoint {
                    lat: 46.8,
                    lon: 130.3,
                }),
                address: "长安路 3 号".into(),
                priority,
                reporter_name: "张伟".into(),
                reporter_phone: "13812345678".into(),
            }
        }
        fn create(&mut self, priority: Priority, now: u64) -> OrderId {
            match self
                .o
                .create(self.who("c"), self.new_order(priority), None, now)
                .unwrap()
            {
                Created::New(a) => a.order.id,
                Created::Replay(_) => unreachable!(),
            }
        }
        fn act(
            &mut self,
            who: &str,
            id: OrderId,
            act: Act,
            now: u64,
        ) -> Result<Applied, OrderError> {
            self.o.act(self.who(who), id, None, act, now)
        }
        fn ok(&mut self, who: &str, id: OrderId, act: Act, now: u64) -> Applied {
            self.act(who, id, act, now)
                .unwrap_or_else(|e| panic!("{who}: {e}"))
        }
        fn dispatch(&mut self, who: &str, id: OrderId, to: &str, now: u64) -> Applied {
            let to = self.n(to);
            self.ok(who, id, Act::Dispatch { to, note: None }, now)
        }
    }

    #[test]
    fn a_cause_is_one_of_its_categorys_named_at_intake_or_with_the_result() {
        let mut t = T::new();
        let who = t.who("c");
        let mut bad = t.new_order(Priority::Routine);
        bad.category = "waterlogging".into();
        bad.cause = Some("square_dance".into());
        let e = t.o.create(who, bad.clone(), None, 1).unwrap_err();
        assert_eq!(e.code(), "unknown_cause");
        assert!(
            e.to_string().contains("blocked_drain, manhole_backflow"),
            "{e}"
        );
        // A category that names no causes says so.
        bad.category = "noise".into();
        let e = t.o.create(who, bad.clone(), None, 1).unwrap_err();
        assert!(e.to_string().contains("names no causes"), "{e}");
        bad.category = "waterlogging".into();
        bad.cause = Some("manhole_backflow".into());
        let Created::New(a) = t.o.create(who, bad, None, 1).unwrap() else {
            unreachable!()
        };
        let id = a.order.id;
        assert_eq!(a.order.cause.as_deref(), Some("manhole_backflow"));
        for (f, to) in [("c", "a"), ("a", "t"), ("t", "v"), ("v", "w1")] {
            t.dispatch(f, id, to, 2);
        }
        t.ok("w1", id, Act::Acknowledge, 3);
        let e = t
            .act(
                "w1",
                id,
                Act::Report {
                    result: "疏通".into(),
                    cause: Some("levee".into()),
                },
                4,
            )
            .unwrap_err();
        assert_eq!(e.code(), "unknown_cause");
        // What the worker found replaces what intake guessed.
        let a = t.ok(
            "w1",
            id,
            Act::Report {
                result: "疏通雨水管".into(),
                cause: Some("blocked_drain".into()),
            },
            5,
        );
        assert_eq!(a.order.cause.as_deref(), Some("blocked_drain"));
        assert_eq!(a.event.detail.cause.as_deref(), Some("blocked_drain"));
    }

    fn approve() -> Act {
        Act::Review {
            approve: true,
            comment: None,
        }
    }

    #[test]
    fn full_lifecycle_across_five_tiers() {
        let mut t = T::new();
        let id = t.create(Priority::Routine, 1_000);
        assert_eq!(t.o.get(id).unwrap().state, State::Intake);
        for (from, to) in [("c", "a"), ("a", "t"), ("t", "v"), ("v", "w1")] {
            let a = t.dispatch(from, id, to, 2_000);
            assert_eq!(a.order.state, State::Dispatched);
            assert_eq!(a.notify, [(t.n(to), Notify::Assigned)]);
        }
        let a = t.ok("w1", id, Act::Acknowledge, 3_000);
        assert_eq!(a.order.state, State::InProgress);
        let a = t.ok(
            "w1",
            id,
            Act::Report {
                result: "已协调降低音量".into(),
                cause: None,
            },
            4_000,
        );
        assert_eq!(
            (a.order.state, a.order.holder),
            (State::ResultReported, t.n("v"))
        );
        assert_eq!(a.notify, [(t.n("v"), Notify::Assigned)]);
        // Each tier closes its loop with the one above.
        for (who, next) in [("v", "t"), ("t", "a"), ("a", "c")] {
            let a = t.ok(who, id, approve(), 5_000);
            assert_eq!(a.order.holder, t.n(next));
        }
        let a = t.ok("c", id, approve(), 5_500);
        assert!(a.order.reviewed);
        let a = t.ok(
            "c",
            id,
            Act::Rate {
                score: 5,
                satisfied: true,
                comment: None,
            },
            6_000,
        );
        assert_eq!(a.order.state, State::Rated);
        let a = t.ok(
            "c",
            id,
            Act::Publish {
                summary: "已处理，回访电话13812345678".into(),
            },
            7_000,
        );
        assert_eq!(
            a.order.summary.as_deref(),
            Some("已处理，回访电话***********")
        );
        let a = t.ok("c", id, Act::Archive, 8_000);
        assert_eq!(
            (a.order.state, a.order.closed_at),
            (State::Archived, Some(8_000))
        );
        assert_eq!(a.event.seq, 14, "one event per transition, numbered");
        assert!(t.o.get(id).is_none(), "archived orders leave memory");
        assert_eq!(t.o.next_deadline(), None);
    }

    #[test]
    fn routine_orders_go_one_tier_at_a_time_urgent_ones_may_skip() {
        let mut t = T::new();
        let id = t.create(Priority::Routine, 0);
        let v = t.n("v");
        let e = t
            .act("c", id, Act::Dispatch { to: v, note: None }, 1)
            .unwrap_err();
        assert_eq!(e.code(), "invalid_target");
        assert!(e.to_string().contains("one tier at a time"), "{e}");
        let b = t.n("b");
        t.dispatch("c", id, "b", 1);
        let e = t
            .act("b", id, Act::Dispatch { to: v, note: None }, 2)
            .unwrap_err();
        assert!(e.to_string().contains("only to a node below"), "{e}");
        let _ = b;
        let id = t.create(Priority::Urgent, 0);
        let a = t.dispatch("c", id, "v", 1);
        assert_eq!(a.order.chain, [t.n("c"), t.n("v")]);
    }

    #[test]
    fn illegal_transitions_name_the_state_and_what_is_allowed() {
        let mut t = T::new();
        let id = t.create(Priority::Routine, 0);
        t.dispatch("c", id, "a", 1);
        let e = t
            .act(
                "a",
                id,
                Act::Report {
                    result: "x".into(),
                    cause: None,
                },
                2,
            )
            .unwrap_err();
        match &e {
            OrderError::IllegalTransition {
                action,
                state,
                allowed,
            } => {
                assert_eq!((*action, *state), (Action::Report, State::Dispatched));
                assert!(allowed.contains(&Action::Acknowledge));
            }
            other => panic!("{other}"),
        }
        assert!(
            e.to_string().contains("allowed now: dispatch, acknowledge"),
            "{e}"
        );
        let e = t.act("c", id, Act::Archive, 3).unwrap_err();
        assert_eq!(e.code(), "illegal_transition");
    }

    #[test]
    fn only_the_holder_dispatchers_or_intake_may_act() {
        let mut t = T::new();
        let id = t.create(Priority::Routine, 0);
        t.dispatch("c", id, "a", 1);
        let t_ = t.n("t");
        let e = t
            .act("c", id, Act::Dispatch { to: t_, note: None }, 2)
            .unwrap_err();
        assert_eq!(e.code(), "out_of_scope");
        assert!(e.to_string().contains("only the holder a"), "{e}");
        // Another county may not even see it: it learns nothing, not the state, not the holder.
        let e = t.act("b", id, Act::Acknowledge, 2).unwrap_err();
        assert_eq!(e, OrderError::NotFound(id));
        let e = t.act("b", id, Act::Archive, 2).unwrap_err();
        assert_eq!(
            e,
            OrderError::NotFound(id),
            "not illegal_transition naming the state"
        );
        let w2 = t.n("w2");
        let e = t
            .act(
                "t",
                id,
                Act::Reassign {
                    to: w2,
                    reason: None,
                },
                2,
            )
            .unwrap_err();
        assert!(e.to_string().contains("only a dispatcher above"), "{e}");
    }

    #[test]
    fn return_escalate_and_reassign() {
        let mut t = T::new();
        let id = t.create(Priority::Routine, 0);
        for (f, to) in [("c", "a"), ("a", "t"), ("t", "v"), ("v", "w1")] {
            t.dispatch(f, id, to, 1);
        }
        // Misassigned: back to the dispatcher.
        let a = t.ok(
            "w1",
            id,
            Act::Return {
                reason: "不在本网格".into(),
            },
            2,
        );
        assert_eq!(
            (a.order.holder, a.order.state),
            (t.n("v"), State::InProgress)
        );
        assert_eq!(a.notify, [(t.n("v"), Notify::Assigned)]);
        assert_eq!(a.event.detail.note.as_deref(), Some("不在本网格"));
        t.dispatch("v", id, "w1", 3);
        // The village moves it to the other grid worker; the first is told it was withdrawn.
        let w2 = t.n("w2");
        let a = t.ok(
            "v",
            id,
            Act::Reassign {
                to: w2,
                reason: Some("换人".into()),
            },
            4,
        );
        assert_eq!(a.order.holder, w2);
        assert_eq!(
            a.notify,
            [(t.n("w1"), Notify::Withdrawn), (w2, Notify::Assigned)]
        );
        // The county takes it back to the township level with a reassignment of its own.
        let tt = t.n("t");
        let e = t.act(
            "a",
            id,
            Act::Reassign {
                to: tt,
                reason: None,
            },
            5,
        );
        assert!(e.is_ok(), "{e:?}");
        // Escalate to the tier above: township → county.
        let a = t.ok(
            "t",
            id,
            Act::Escalate {
                reason: "需区里协调".into(),
            },
            6,
        );
        assert_eq!(
            (a.order.holder, a.order.chain.clone()),
            (t.n("a"), vec![t.n("c"), t.n("a")])
        );
        let e = t
            .act("a", id, Act::Escalate { reason: "".into() }, 7)
            .unwrap_err();
        assert!(e.to_string().contains("reason is required"));
        // At the intake node there is nobody to return to.
        let a = t.ok(
            "a",
            id,
            Act::Escalate {
                reason: "市级统筹".into(),
            },
            8,
        );
        assert_eq!(a.order.chain, [t.n("c")]);
        let e = t
            .act("c", id, Act::Escalate { reason: "x".into() }, 9)
            .unwrap_err();
        assert!(e.to_string().contains("top tier"), "{e}");
    }

    #[test]
    fn review_rejection_and_unsatisfied_rating_go_back_to_the_worker() {
        let mut t = T::new();
        let id = t.create(Priority::Routine, 0);
        for (f, to) in [("c", "a"), ("a", "t"), ("t", "v"), ("v", "w1")] {
            t.dispatch(f, id, to, 1);
        }
        t.ok("w1", id, Act::Acknowledge, 2);
        t.ok(
            "w1",
            id,
            Act::Report {
                result: "done".into(),
                cause: None,
            },
            3,
        );
        t.ok("v", id, approve(), 4);
        let a = t.ok(
            "t",
            id,
            Act::Review {
                approve: false,
                comment: Some("照片不清".into()),
            },
            5,
        );
        assert_eq!(
            (a.order.holder, a.order.state),
            (t.n("w1"), State::InProgress)
        );
        assert_eq!(a.order.chain.len(), 5, "the full chain is back");
        assert!(a.order.result.is_none());
        t.ok(
            "w1",
            id,
            Act::Report {
                result: "done again".into(),
                cause: None,
            },
            6,
        );
        for who in ["v", "t", "a", "c"] {
            t.ok(who, id, approve(), 7);
        }
        let a = t.ok(
            "c",
            id,
            Act::Rate {
                score: 2,
                satisfied: false,
                comment: Some("仍然很吵".into()),
            },
            100_000,
        );
        assert_eq!(
            (a.order.holder, a.order.state),
            (t.n("w1"), State::Dispatched)
        );
        assert_eq!(a.order.reopened, 1);
        assert_eq!(a.order.due_at, 100_000 + 100_000, "a fresh deadline");
        assert_eq!(a.notify, [(t.n("w1"), Notify::Assigned)]);
        let e = t
            .act(
                "c",
                id,
                Act::Rate {
                    score: 9,
                    satisfied: true,
                    comment: None,
                },
                1,
            )
            .unwrap_err();
        assert_eq!(e.code(), "illegal_transition");
    }

    #[test]
    fn late_orders_are_supervised_then_escalated() {
        let mut t = T::new();
        let id = t.create(Priority::Routine, 0);
        for (f, to) in [("c", "a"), ("a", "t"), ("t", "v"), ("v", "w1")] {
            t.dispatch(f, id, to, 1);
        }
        assert_eq!(t.o.next_deadline(), Some(100_000));
        assert!(t.o.tick(99_999).is_empty());
        let out = t.o.tick(100_000);
        assert_eq!(out.len(), 1);
        let a = &out[0];
        assert_eq!((a.order.state, a.order.supervision), (State::Supervised, 1));
        assert!(a.order.late);
        assert_eq!(a.event.actor, None);
        assert_eq!(
            a.notify,
            [
                (t.n("w1"), Notify::Supervised),
                (t.n("v"), Notify::Supervised)
            ]
        );
        assert_eq!(t.o.next_deadline(), Some(150_000));
        // Acknowledging keeps it supervised.
        let a = t.ok("w1", id, Act::Acknowledge, 120_000);
        assert_eq!(a.order.state, State::Supervised);
        let out = t.o.tick(150_000);
        let a = &out[0];
        assert_eq!((a.order.holder, a.order.supervision), (t.n("v"), 2));
        assert!(a.notify.contains(&(t.n("v"), Notify::Assigned)));
        assert!(a.notify.contains(&(t.n("t"), Notify::Supervised)));
        assert_eq!(t.o.next_deadline(), None, "no third step");
        // A result stops the clock.
        t.ok("v", id, Act::Acknowledge, 151_000);
        t.ok(
            "v",
            id,
            Act::Report {
                result: "ok".into(),
                cause: None,
            },
            152_000,
        );
        assert!(t.o.tick(10_000_000).is_empty());
        // Reopened by an unsatisfied rating: the new round starts on time, but the order was
        // late, and stays counted so.
        for who in ["t", "a", "c"] {
            t.ok(who, id, approve(), 10_000_001);
        }
        let a = t.ok(
            "c",
            id,
            Act::Rate {
                score: 2,
                satisfied: false,
                comment: None,
            },
            10_000_002,
        );
        assert_eq!(
            (a.order.reopened, a.order.supervision, a.order.late),
            (1, 0, true)
        );
    }

    #[test]
    fn idempotency_keys_replay_or_conflict() {
        let mut t = T::new();
        let who = t.who("c");
        let key: Box<str> = "hotline-42".into();
        let first =
            t.o.create(
                who,
                t.new_order(Priority::Routine),
                Some((key.clone(), 7)),
                0,
            )
            .unwrap();
        let Created::New(a) = first else { panic!() };
        let again =
            t.o.create(
                who,
                t.new_order(Priority::Routine),
                Some((key.clone(), 7)),
                1,
            )
            .unwrap();
        assert_eq!(again, Created::Replay(a.order.id));
        let e =
            t.o.create(
                who,
                t.new_order(Priority::Urgent),
                Some((key.clone(), 8)),
                2,
            )
            .unwrap_err();
        assert_eq!(e.code(), "idempotency_conflict");
        // Forgotten after the window.
        t.o.tick(2_000_000);
        assert!(matches!(
            t.o.create(
                who,
                t.new_order(Priority::Routine),
                Some((key, 7)),
                2_000_001
            ),
            Ok(Created::New(_))
        ));
    }

    #[test]
    fn bad_requests_are_refused_without_changing_anything() {
        let mut t = T::new();
        let who = t.who("c");
        let mut n = t.new_order(Priority::Routine);
        n.category = "ufo".into();
        let e = t.o.create(who, n, None, 0).unwrap_err();
        assert_eq!(e.code(), "unknown_category");
        assert!(e.to_string().contains("noise, waterlogging"), "{e}");
        let mut n = t.new_order(Priority::Routine);
        n.description = "x".repeat(101);
        assert!(
            t.o.create(who, n, None, 0)
                .unwrap_err()
                .to_string()
                .contains("101 characters")
        );
        let mut n = t.new_order(Priority::Routine);
        n.point = Some(GeoPoint {
            lat: 99.0,
            lon: 0.0,
        });
        assert_eq!(
            t.o.create(who, n, None, 0).unwrap_err().code(),
            "invalid_data"
        );
        let mut n = t.new_order(Priority::Routine);
        n.reporter_phone = "call me".into();
        assert_eq!(
            t.o.create(who, n, None, 0).unwrap_err().code(),
            "invalid_data"
        );
        // A county cannot take in an order for another county.
        let mut n = t.new_order(Priority::Routine);
        n.node = t.n("b");
        assert_eq!(
            t.o.create(t.who("a"), n, None, 0).unwrap_err().code(),
            "out_of_scope"
        );
        assert_eq!(t.o.open_count(), 0);
        let id = t.create(Priority::Routine, 0);
        let e =
            t.o.act(t.who("c"), id, Some(7), Act::Acknowledge, 1)
                .unwrap_err();
        assert_eq!(
            e,
            OrderError::VersionConflict {
                expected: 7,
                current: 1
            }
        );
        assert_eq!(t.o.get(id).unwrap().version, 1);
        assert_eq!(
            t.o.act(t.who("c"), OrderId(999), None, Act::Acknowledge, 1)
                .unwrap_err()
                .code(),
            "not_found"
        );
    }

    #[test]
    fn workers_cannot_dispatch_and_intake_can_resolve_itself() {
        let mut t = T::new();
        let id = t.create(Priority::Routine, 0);
        t.ok("c", id, Act::Acknowledge, 1);
        let a = t.ok(
            "c",
            id,
            Act::Report {
                result: "电话答复".into(),
                cause: None,
            },
            2,
        );
        assert_eq!(
            (a.order.holder, a.order.state),
            (t.n("c"), State::ResultReported)
        );
        assert!(a.notify.is_empty());
        let a = t.ok("c", id, approve(), 3);
        assert!(a.order.reviewed);
    }

    /// Event sourcing: the create snapshot plus every later event, folded through `evolve`,
    /// gives back exactly the order the core holds — through every kind of transition.
    #[test]
    fn replaying_the_history_rebuilds_the_order() {
        let mut t = T::new();
        let Created::New(created) =
            t.o.create(t.who("c"), t.new_order(Priority::Routine), None, 0)
                .unwrap()
        else {
            panic!()
        };
        let id = created.order.id;
        let mut events = Vec::new();
        let mut step = |t: &mut T, who: &str, act: Act, now: u64| {
            events.push(t.ok(who, id, act, now).event);
        };
        let n = |t: &T, s: &str| t.n(s);
        for (f, to) in [("c", "a"), ("a", "t"), ("t", "v"), ("v", "w1")] {
            let to = n(&t, to);
            step(
                &mut t,
                f,
                Act::Dispatch {
                    to,
                    note: Some("n".into()),
                },
                1,
            );
        }
        step(&mut t, "w1", Act::Return { reason: "r".into() }, 2);
        let w2 = n(&t, "w2");
        step(&mut t, "v", Act::Dispatch { to: w2, note: None }, 3);
        let w1 = n(&t, "w1");
        step(
            &mut t,
            "v",
            Act::Reassign {
                to: w1,
                reason: None,
            },
            4,
        );
        step(&mut t, "w1", Act::Escalate { reason: "e".into() }, 5);
        step(&mut t, "v", Act::Acknowledge, 6);
        step(
            &mut t,
            "v",
            Act::Report {
                result: "x".into(),
                cause: None,
            },
            7,
        );
        step(
            &mut t,
            "t",
            Act::Review {
                approve: false,
                comment: None,
            },
            8,
        );
        step(
            &mut t,
            "v",
            Act::Report {
                result: "y".into(),
                cause: None,
            },
            9,
        );
        // The escalation shortened the chain: township, county, then the city's own review.
        for who in ["t", "a", "c"] {
            step(&mut t, who, approve(), 10);
        }
        step(
            &mut t,
            "c",
            Act::Rate {
                score: 1,
                satisfied: false,
                comment: None,
            },
            11,
        );
        events.extend(t.o.tick(10_000_000).into_iter().map(|a| a.event));
        events.extend(t.o.tick(20_000_000).into_iter().map(|a| a.event));
        let expected = t.o.get(id).unwrap().clone();
        assert_eq!(expected.supervision, 2);
        let mut rebuilt = created.order.clone();
        for e in &events {
            evolve(t.o.org(), &mut rebuilt, e);
        }
        assert_eq!(rebuilt, expected);
    }

    #[test]
    fn read_receipts_and_assignment_sequence() {
        let mut t = T::new();
        let id = t.create(Priority::Routine, 0);
        t.dispatch("c", id, "a", 1);
        t.o.set_assigned_seq(id, t.n("a"), 42);
        assert_eq!(t.o.get(id).unwrap().assigned_seq, Some(42));
        assert!(
            !t.o.mark_read(id, t.n("b"), 5),
            "only the holder's read counts"
        );
        assert!(t.o.mark_read(id, t.n("a"), 5));
        assert!(!t.o.mark_read(id, t.n("a"), 6), "once");
        let a = t.dispatch("a", id, "t", 7);
        assert_eq!((a.order.read_at, a.order.assigned_seq), (None, None));
    }
}

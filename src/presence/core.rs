//! The presence state machine: no IO, no clock. Every input carries `now` (Unix milliseconds).
//!
//! State per endpoint (node) and per-node aggregates over each node's strict descendants. A status
//! change updates the aggregates of the node's ancestors only — at most four — so a city-wide
//! count is never recomputed by scanning. Subscribers watch a subtree (or, for any terminal, its
//! own chain of command); changes are marked dirty and `flush` turns them into one batch per
//! distinct payload, at most once per coalescing window, so a wave of reconnects reaches a console
//! as a few large deltas rather than thousands of small ones.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::auth::Seat;
use crate::org::{GeoPoint, NodeIdx, Org};

/// Identifies a connection, unique across hub nodes and restarts within a run.
pub use crate::backplane::ConnKey;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Online,
    Busy,
    InCall,
    InSession,
    Away,
    Offline,
}

impl Status {
    pub const ALL: [Status; 6] = [
        Status::Online,
        Status::Busy,
        Status::InCall,
        Status::InSession,
        Status::Away,
        Status::Offline,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Online => "online",
            Status::Busy => "busy",
            Status::InCall => "in_call",
            Status::InSession => "in_session",
            Status::Away => "away",
            Status::Offline => "offline",
        }
    }
}

/// The statuses a terminal may choose for itself; the others are set by the hub.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Chosen {
    Online,
    Busy,
    Away,
}

impl From<Chosen> for Status {
    fn from(c: Chosen) -> Status {
        match c {
            Chosen::Online => Status::Online,
            Chosen::Busy => Status::Busy,
            Chosen::Away => Status::Away,
        }
    }
}

/// What the hub knows the terminal is doing; it outranks the chosen status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activity {
    Idle,
    InCall,
    InSession,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Location {
    pub lat: f64,
    pub lon: f64,
    /// Accuracy radius in metres, if the device reports one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy_m: Option<f32>,
    /// When the hub received it (Unix ms).
    pub at: u64,
}

impl Location {
    pub fn point(&self) -> GeoPoint {
        GeoPoint {
            lat: self.lat,
            lon: self.lon,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Entry {
    /// The live connection of each connected seat; a newer connection of the same seat replaces
    /// its older one. The terminal is on line while any seat is.
    pub seats: SmallVec<[(Seat, ConnKey); 1]>,
    pub chosen: Chosen,
    pub activity: Activity,
    pub text: Option<Box<str>>,
    /// Last known location; kept while offline ("last seen here").
    pub location: Option<Location>,
    /// When the effective status last changed (Unix ms; 0 = never seen).
    pub since: u64,
}

impl Entry {
    pub fn status(&self) -> Status {
        match (self.online(), self.activity) {
            (false, _) => Status::Offline,
            (true, Activity::InSession) => Status::InSession,
            (true, Activity::InCall) => Status::InCall,
            (true, Activity::Idle) => self.chosen.into(),
        }
    }

    pub fn online(&self) -> bool {
        !self.seats.is_empty()
    }

    fn conn_of(&self, seat: Seat) -> Option<ConnKey> {
        self.seats.iter().find(|s| s.0 == seat).map(|s| s.1)
    }

    /// Whether the seats are worth listing: a terminal with its one `main` seat lists none.
    pub fn lists_seats(&self) -> bool {
        !(self.seats.is_empty() || self.seats.len() == 1 && self.seats[0].0.is_main())
    }
}

/// Counts by status over a node's strict descendants.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Aggregate {
    pub by_status: [u32; 6],
}

impl Aggregate {
    pub fn total(&self) -> u32 {
        self.by_status.iter().sum()
    }
    pub fn count(&self, s: Status) -> u32 {
        self.by_status[s as usize]
    }
    /// Everything but offline.
    pub fn online(&self) -> u32 {
        self.total() - self.count(Status::Offline)
    }
}

/// A change reported by a terminal (already validated by the protocol layer).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Update {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Chosen>,
    /// `Some(None)` clears the text. It crosses between hub nodes as `null`, read back as a
    /// clear rather than as no change.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub text: Option<Option<Box<str>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
}

/// Distinguishes an absent field (`None`) from an explicit `null` (`Some(None)`).
pub fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// What a subscription watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Watch {
    /// Every endpoint in the subtree rooted here, with aggregates.
    Subtree(NodeIdx),
    /// The subscriber's own chain of command: these ancestors of `of`.
    Chain { of: NodeIdx },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    #[error("this connection already holds {0} subscriptions, the most allowed")]
    TooMany(usize),
}

/// Who receives one delta, and what it covers. Payloads are read from the core's state by the
/// encoder right after `flush`, so nothing is copied here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fanout {
    pub recipients: Vec<ConnKey>,
    /// `None` for chain-of-command deltas.
    pub node: Option<NodeIdx>,
    pub endpoints: Vec<NodeIdx>,
    pub aggregates: Vec<NodeIdx>,
}

/// A subtree's state at subscription time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub node: Option<NodeIdx>,
    pub seq: u64,
    /// Endpoints that are not offline, plus any with a known location (offline ones are implied).
    pub endpoints: Vec<NodeIdx>,
    /// Nodes with at least one descendant.
    pub aggregates: Vec<NodeIdx>,
}

#[derive(Default, Debug)]
struct Group {
    full: Vec<ConnKey>,
    aggregates_only: Vec<ConnKey>,
}

impl Group {
    fn is_empty(&self) -> bool {
        self.full.is_empty() && self.aggregates_only.is_empty()
    }
}

pub struct Presence {
    org: Arc<Org>,
    entries: Vec<Entry>,
    aggs: Vec<Aggregate>,
    seq: u64,
    /// Endpoints changed since the last flush, each once.
    dirty: Vec<NodeIdx>,
    is_dirty: Vec<bool>,
    /// Nodes whose aggregate changed since the last flush.
    agg_dirty: Vec<bool>,
    /// Scratch for `flush`: `mark[n] == mark_gen` means n is already in the current batch.
    mark: Vec<u64>,
    mark_gen: u64,
    subtree_subs: HashMap<NodeIdx, Group>,
    /// Watched endpoint → chain subscribers watching it.
    chain_subs: HashMap<NodeIdx, Vec<ConnKey>>,
    subs_of: HashMap<ConnKey, Vec<(Watch, bool)>>,
    max_subs: usize,
    window_ms: u64,
    last_flush: Option<u64>,
}

fn remove_key(v: &mut Vec<ConnKey>, k: ConnKey) {
    if let Some(i) = v.iter().position(|&x| x == k) {
        v.swap_remove(i);
    }
}

impl Presence {
    pub fn new(org: Arc<Org>, window_ms: u64, max_subs: usize) -> Presence {
        let n = org.len();
        let entries = vec![
            Entry {
                seats: SmallVec::new(),
                chosen: Chosen::Online,
                activity: Activity::Idle,
                text: None,
                location: None,
                since: 0,
            };
            n
        ];
        let aggs = (0..n)
            .map(|i| {
                let mut a = Aggregate::default();
                a.by_status[Status::Offline as usize] = org.descendants(NodeIdx(i as u32)) as u32;
                a
            })
            .collect();
        Presence {
            org,
            entries,
            aggs,
            seq: 0,
            dirty: Vec::new(),
            is_dirty: vec![false; n],
            agg_dirty: vec![false; n],
            mark: vec![0; n],
            mark_gen: 0,
            subtree_subs: HashMap::new(),
            chain_subs: HashMap::new(),
            subs_of: HashMap::new(),
            max_subs,
            window_ms,
            last_flush: None,
        }
    }

    pub fn org(&self) -> &Arc<Org> {
        &self.org
    }
    pub fn entry(&self, n: NodeIdx) -> &Entry {
        &self.entries[n.get()]
    }
    pub fn aggregate(&self, n: NodeIdx) -> &Aggregate {
        &self.aggs[n.get()]
    }
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Applies `edit` to an endpoint and propagates any status change; returns whether the
    /// effective status changed.
    fn change(&mut self, ep: NodeIdx, now: u64, edit: impl FnOnce(&mut Entry)) -> bool {
        let e = &mut self.entries[ep.get()];
        let seats = |e: &Entry| e.seats.iter().map(|s| s.0).collect::<SmallVec<[Seat; 2]>>();
        let before = (e.status(), e.text.clone(), e.location, seats(e));
        edit(e);
        let after = e.status();
        let status_changed = after != before.0;
        if status_changed {
            e.since = now;
        }
        if !status_changed && e.text == before.1 && e.location == before.2 && seats(e) == before.3 {
            return false;
        }
        self.seq += 1;
        if !self.is_dirty[ep.get()] {
            self.is_dirty[ep.get()] = true;
            self.dirty.push(ep);
        }
        if status_changed {
            // Ancestors only: aggregates count strict descendants.
            let org = Arc::clone(&self.org);
            for a in org.ancestors(ep) {
                let agg = &mut self.aggs[a.get()];
                agg.by_status[before.0 as usize] -= 1;
                agg.by_status[after as usize] += 1;
                self.agg_dirty[a.get()] = true;
            }
        }
        status_changed
    }

    /// A seat of a terminal connected (on any hub node). A terminal coming on line starts
    /// `online` with no text. One already on line at another seat, one whose connection replaces
    /// a live one (a phone moving networks before the hub saw the old one die), or one coming
    /// back while still in a call or session, resumes: the status and text chosen and what it
    /// is doing stay, so it never shows `online` for a moment mid-call. News of an older
    /// connection than the seat's current one is stale.
    pub fn connect(&mut self, ep: NodeIdx, seat: Seat, conn: ConnKey, now: u64) -> bool {
        if self.entries[ep.get()]
            .conn_of(seat)
            .is_some_and(|c| c > conn)
        {
            return false;
        }
        self.change(ep, now, |e| {
            let resuming = e.online() || e.activity != Activity::Idle;
            match e.seats.iter_mut().find(|s| s.0 == seat) {
                Some(s) => s.1 = conn,
                None => e.seats.push((seat, conn)),
            }
            if !resuming {
                e.chosen = Chosen::Online;
                e.text = None;
            }
        })
    }

    /// A seat's connection ended. Ignored when a newer connection of the same seat already
    /// replaced it, so the replaced one's late goodbye cannot mark a live terminal offline. The
    /// terminal stays on line while another seat is. What it is doing stays: the call or
    /// session it is in ends it, or takes it back.
    pub fn disconnect(&mut self, ep: NodeIdx, seat: Seat, conn: ConnKey, now: u64) -> bool {
        if self.entries[ep.get()].conn_of(seat) != Some(conn) {
            return false;
        }
        self.change(ep, now, |e| e.seats.retain(|s| s.0 != seat))
    }

    /// A terminal's own update, from any of its seats; ignored unless `conn` is the current
    /// connection of one.
    pub fn update(&mut self, ep: NodeIdx, conn: ConnKey, u: &Update, now: u64) -> bool {
        if !self.entries[ep.get()].seats.iter().any(|s| s.1 == conn) {
            return false;
        }
        self.change(ep, now, |e| {
            if let Some(s) = u.status {
                e.chosen = s;
            }
            if let Some(t) = &u.text {
                e.text = t.clone();
            }
            if let Some(l) = u.location {
                e.location = Some(l);
            }
        })
    }

    /// What the terminals connected through `local` (this node's connections) have set for
    /// themselves, as the updates that would set it again: for nodes that may have missed it
    /// (they could not hear this one for a while). Every such terminal, those back at the
    /// defaults too: a node that missed the change back still shows the old state.
    pub fn restate(&self, local: impl Fn(ConnKey) -> bool) -> Vec<(NodeIdx, ConnKey, Update)> {
        let mut out = Vec::new();
        for (i, e) in self.entries.iter().enumerate() {
            let Some(&(_, conn)) = e.seats.iter().find(|s| local(s.1)) else {
                continue;
            };
            out.push((
                NodeIdx(i as u32),
                conn,
                Update {
                    status: Some(e.chosen),
                    text: Some(e.text.clone()),
                    location: e.location,
                },
            ));
        }
        out
    }

    /// Set by the calls and sessions domains while a terminal is in a call or a session.
    pub fn set_activity(&mut self, ep: NodeIdx, activity: Activity, now: u64) -> bool {
        self.change(ep, now, |e| e.activity = activity)
    }

    /// Subscribes `sub` and returns its snapshot, after the changes still waiting for the
    /// coalescing window (returned, for the existing subscribers): those are in the snapshot, so
    /// the new subscriber's deltas carry only what changes after it.
    pub fn subscribe(
        &mut self,
        sub: ConnKey,
        watch: Watch,
        endpoints: bool,
        now: u64,
    ) -> Result<(Snapshot, Vec<Fanout>), SubscribeError> {
        let mine = self.subs_of.entry(sub).or_default();
        if let Some(i) = mine.iter().position(|(w, _)| *w == watch) {
            // Subscribing again replaces the flavour and returns a fresh snapshot.
            let (_, old) = mine.swap_remove(i);
            self.detach(sub, watch, old);
        } else if mine.len() >= self.max_subs {
            return Err(SubscribeError::TooMany(self.max_subs));
        }
        let earlier = if self.dirty.is_empty() {
            Vec::new()
        } else {
            self.emit(now)
        };
        self.subs_of
            .entry(sub)
            .or_default()
            .push((watch, endpoints));
        match watch {
            Watch::Subtree(n) => {
                let g = self.subtree_subs.entry(n).or_default();
                if endpoints {
                    g.full.push(sub)
                } else {
                    g.aggregates_only.push(sub)
                }
            }
            Watch::Chain { of } => {
                let org = Arc::clone(&self.org);
                for a in org.ancestors(of) {
                    self.chain_subs.entry(a).or_default().push(sub);
                }
            }
        }
        Ok((self.snapshot(watch, endpoints), earlier))
    }

    fn detach(&mut self, sub: ConnKey, watch: Watch, endpoints: bool) {
        match watch {
            Watch::Subtree(n) => {
                if let Some(g) = self.subtree_subs.get_mut(&n) {
                    remove_key(
                        if endpoints {
                            &mut g.full
                        } else {
                            &mut g.aggregates_only
                        },
                        sub,
                    );
                    if g.is_empty() {
                        self.subtree_subs.remove(&n);
                    }
                }
            }
            Watch::Chain { of } => {
                let org = Arc::clone(&self.org);
                for a in org.ancestors(of) {
                    if let Some(v) = self.chain_subs.get_mut(&a) {
                        remove_key(v, sub);
                        if v.is_empty() {
                            self.chain_subs.remove(&a);
                        }
                    }
                }
            }
        }
    }

    /// Returns whether the subscription existed.
    pub fn unsubscribe(&mut self, sub: ConnKey, watch: Watch) -> bool {
        let Some(mine) = self.subs_of.get_mut(&sub) else {
            return false;
        };
        let Some(i) = mine.iter().position(|(w, _)| *w == watch) else {
            return false;
        };
        let (_, endpoints) = mine.swap_remove(i);
        if mine.is_empty() {
            self.subs_of.remove(&sub);
        }
        self.detach(sub, watch, endpoints);
        true
    }

    /// Drops every subscription of a connection that ended.
    pub fn drop_subscriber(&mut self, sub: ConnKey) {
        for (watch, endpoints) in self.subs_of.remove(&sub).unwrap_or_default() {
            self.detach(sub, watch, endpoints);
        }
    }

    pub fn subscriptions(&self, sub: ConnKey) -> usize {
        self.subs_of.get(&sub).map_or(0, Vec::len)
    }

    pub fn snapshot(&self, watch: Watch, endpoints: bool) -> Snapshot {
        match watch {
            Watch::Subtree(n) => {
                let range = self.org.subtree(n);
                let eps = if endpoints {
                    range
                        .clone()
                        .filter(|&i| {
                            let e = &self.entries[i];
                            e.online() || e.location.is_some()
                        })
                        .map(|i| NodeIdx(i as u32))
                        .collect()
                } else {
                    Vec::new()
                };
                let aggs = range
                    .map(|i| NodeIdx(i as u32))
                    .filter(|&i| self.org.descendants(i) > 0)
                    .collect();
                Snapshot {
                    node: Some(n),
                    seq: self.seq,
                    endpoints: eps,
                    aggregates: aggs,
                }
            }
            Watch::Chain { of } => Snapshot {
                node: None,
                seq: self.seq,
                endpoints: self.org.ancestors(of).collect(),
                aggregates: Vec::new(),
            },
        }
    }

    /// When the next flush is due, if anything is dirty.
    pub fn next_flush_at(&self) -> Option<u64> {
        if self.dirty.is_empty() {
            return None;
        }
        Some(self.last_flush.map_or(0, |t| t + self.window_ms))
    }

    /// Emits the coalesced deltas if the window has passed; otherwise nothing (call again at
    /// `next_flush_at`). Leading edge: the first change after a quiet window goes out at once.
    pub fn flush(&mut self, now: u64) -> Vec<Fanout> {
        match self.next_flush_at() {
            Some(due) if now >= due => self.emit(now),
            _ => Vec::new(),
        }
    }

    /// The deltas of everything dirty, now.
    fn emit(&mut self, now: u64) -> Vec<Fanout> {
        self.last_flush = Some(now);
        let dirty = std::mem::take(&mut self.dirty);
        let org = Arc::clone(&self.org);
        // Pass 1: the dirty endpoints inside each subscribed subtree, and chain deltas.
        let mut batches: HashMap<NodeIdx, (Vec<NodeIdx>, Vec<NodeIdx>)> = HashMap::new();
        let mut chain: Vec<Fanout> = Vec::new();
        for &ep in &dirty {
            for x in std::iter::once(ep).chain(org.ancestors(ep)) {
                if self.subtree_subs.contains_key(&x) {
                    batches.entry(x).or_default().0.push(ep);
                }
            }
            if let Some(watchers) = self.chain_subs.get(&ep) {
                chain.push(Fanout {
                    recipients: watchers.clone(),
                    node: None,
                    endpoints: vec![ep],
                    aggregates: Vec::new(),
                });
            }
        }
        // Pass 2: per batch, the changed aggregates between its endpoints and its root, each
        // once (a generation mark per batch instead of a set).
        for (&x, (eps, aggs)) in batches.iter_mut() {
            self.mark_gen += 1;
            for &ep in eps.iter() {
                for a in org.ancestors(ep).take_while(|&a| org.contains(x, a)) {
                    if self.agg_dirty[a.get()] && self.mark[a.get()] != self.mark_gen {
                        self.mark[a.get()] = self.mark_gen;
                        aggs.push(a);
                    }
                }
            }
        }
        for &ep in &dirty {
            self.is_dirty[ep.get()] = false;
            for a in org.ancestors(ep) {
                self.agg_dirty[a.get()] = false;
            }
        }
        let mut out = chain;
        for (node, (eps, aggs)) in batches {
            let g = &self.subtree_subs[&node];
            if !g.full.is_empty() {
                out.push(Fanout {
                    recipients: g.full.clone(),
                    node: Some(node),
                    endpoints: eps,
                    aggregates: aggs.clone(),
                });
            }
            if !g.aggregates_only.is_empty() && !aggs.is_empty() {
                out.push(Fanout {
                    recipients: g.aggregates_only.clone(),
                    node: Some(node),
                    endpoints: Vec::new(),
                    aggregates: aggs,
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAIN: Seat = Seat::MAIN;
    use crate::org::{Preset, generate_csv, parse_csv};

    fn small() -> Arc<Org> {
        Arc::new(crate::org::fixture())
    }

    fn id(p: &Presence, s: &str) -> NodeIdx {
        p.org().lookup(s).unwrap()
    }

    #[test]
    fn aggregates_follow_connects_and_status_changes() {
        let mut p = Presence::new(small(), 20, 4);
        let (c, a, v, w1) = (id(&p, "c"), id(&p, "a"), id(&p, "v"), id(&p, "w1"));
        assert_eq!(p.aggregate(c).total(), 6);
        assert_eq!(p.aggregate(c).online(), 0);
        assert!(p.connect(w1, MAIN, 7, 1_000));
        assert_eq!(p.aggregate(c).online(), 1);
        assert_eq!(p.aggregate(v).online(), 1);
        assert_eq!(p.entry(w1).since, 1_000);
        let busy = Update {
            status: Some(Chosen::Busy),
            ..Default::default()
        };
        assert!(p.update(w1, 7, &busy, 1_100));
        assert_eq!(p.aggregate(a).count(Status::Busy), 1);
        assert!(p.set_activity(w1, Activity::InCall, 1_200));
        assert_eq!(p.entry(w1).status(), Status::InCall);
        assert!(p.set_activity(w1, Activity::Idle, 1_300));
        assert_eq!(
            p.entry(w1).status(),
            Status::Busy,
            "returns to the chosen status"
        );
        assert!(p.disconnect(w1, MAIN, 7, 1_400));
        assert_eq!(p.aggregate(c), &{
            let mut x = Aggregate::default();
            x.by_status[Status::Offline as usize] = 6;
            x
        });
    }

    #[test]
    fn restating_gives_what_local_terminals_set_and_replays_to_the_same_state() {
        let mut p = Presence::new(small(), 20, 4);
        let (w1, w2, a) = (id(&p, "w1"), id(&p, "w2"), id(&p, "a"));
        // Connections ending in 1 are this node's; w2's (…2) is another node's.
        let local = |c: ConnKey| c % 10 == 1;
        p.connect(w1, MAIN, 11, 0);
        p.connect(w2, MAIN, 12, 0);
        p.connect(a, MAIN, 21, 0);
        let set = Update {
            status: Some(Chosen::Busy),
            text: Some(Some("巡查中".into())),
            location: None,
        };
        p.update(w1, 11, &set, 1);
        p.update(w2, 12, &set, 1);
        let again = p.restate(local);
        let eps: Vec<(NodeIdx, ConnKey)> = again.iter().map(|(e, c, _)| (*e, *c)).collect();
        assert_eq!(eps, vec![(a, 21), (w1, 11)], "this node's terminals only");
        // A node that missed the change to busy, and one that missed the change back, both
        // reach this node's state from what is restated.
        let mut missed_busy = Presence::new(small(), 20, 4);
        missed_busy.connect(w1, MAIN, 11, 0);
        let mut missed_back = Presence::new(small(), 20, 4);
        missed_back.connect(a, MAIN, 21, 0);
        missed_back.update(a, 21, &set, 1);
        for (ep, conn, u) in &again {
            missed_busy.update(*ep, *conn, u, 2);
            missed_back.update(*ep, *conn, u, 2);
        }
        for (q, ep) in [(&missed_busy, w1), (&missed_back, a)] {
            let (e, f) = (p.entry(ep), q.entry(ep));
            assert_eq!(
                (e.status(), &e.text, e.location),
                (f.status(), &f.text, f.location)
            );
        }
    }

    #[test]
    fn a_replaced_connection_cannot_mark_the_terminal_offline() {
        let mut p = Presence::new(small(), 20, 4);
        let w1 = id(&p, "w1");
        p.connect(w1, MAIN, 1, 0);
        p.connect(w1, MAIN, 2, 5);
        assert!(!p.disconnect(w1, MAIN, 1, 6));
        assert_eq!(p.entry(w1).status(), Status::Online);
        let away = Update {
            status: Some(Chosen::Away),
            ..Default::default()
        };
        assert!(
            !p.update(w1, 1, &away, 7),
            "the stale connection's update is ignored"
        );
        assert!(p.disconnect(w1, MAIN, 2, 8));
    }

    #[test]
    fn a_terminal_that_comes_back_mid_call_stays_in_call_and_keeps_its_chosen_status() {
        let mut p = Presence::new(small(), 20, 4);
        let w1 = id(&p, "w1");
        let busy = Update {
            status: Some(Chosen::Busy),
            text: Some(Some("入户走访".into())),
            ..Default::default()
        };
        p.connect(w1, MAIN, 1, 0);
        p.update(w1, 1, &busy, 1);
        p.set_activity(w1, Activity::InCall, 2);
        // Its connection replaced (a phone moving networks before the old one was seen to die):
        // never `online` for a moment.
        assert!(!p.connect(w1, MAIN, 2, 3), "nothing visible changed");
        assert_eq!(p.entry(w1).status(), Status::InCall);
        assert!(
            !p.connect(w1, MAIN, 1, 4),
            "news of an older connection is stale"
        );
        // Dropped, then back within the call's grace: in_call again at once.
        assert!(p.disconnect(w1, MAIN, 2, 5));
        assert_eq!(p.entry(w1).status(), Status::Offline);
        assert!(p.connect(w1, MAIN, 3, 6));
        assert_eq!(p.entry(w1).status(), Status::InCall);
        // After the call: the status it chose, text and all.
        assert!(p.set_activity(w1, Activity::Idle, 7));
        assert_eq!(p.entry(w1).status(), Status::Busy);
        assert_eq!(p.entry(w1).text.as_deref(), Some("入户走访"));
        // A fresh connection after being off line with nothing going on starts `online`.
        p.disconnect(w1, MAIN, 3, 8);
        p.connect(w1, MAIN, 4, 9);
        assert_eq!(p.entry(w1).status(), Status::Online);
        assert_eq!(p.entry(w1).text, None);
    }

    #[test]
    fn deltas_reach_only_subscribers_whose_subtree_changed() {
        let mut p = Presence::new(small(), 20, 4);
        let (c, a, b, t, v, w1) = (
            id(&p, "c"),
            id(&p, "a"),
            id(&p, "b"),
            id(&p, "t"),
            id(&p, "v"),
            id(&p, "w1"),
        );
        p.subscribe(100, Watch::Subtree(c), true, 0).unwrap();
        p.subscribe(200, Watch::Subtree(b), true, 0).unwrap();
        p.subscribe(300, Watch::Subtree(a), false, 0).unwrap();
        p.connect(w1, MAIN, 1, 1_000);
        let mut out = p.flush(1_000);
        out.sort_by_key(|f| f.recipients[0]);
        assert_eq!(
            out,
            [
                Fanout {
                    recipients: vec![100],
                    node: Some(c),
                    endpoints: vec![w1],
                    aggregates: vec![v, t, a, c]
                },
                Fanout {
                    recipients: vec![300],
                    node: Some(a),
                    endpoints: vec![],
                    aggregates: vec![v, t, a]
                },
            ]
        );
        assert!(p.flush(1_001).is_empty(), "nothing dirty");
    }

    #[test]
    fn changes_inside_a_window_coalesce_into_one_delta() {
        let mut p = Presence::new(small(), 20, 4);
        let (c, w1, w2) = (id(&p, "c"), id(&p, "w1"), id(&p, "w2"));
        p.subscribe(100, Watch::Subtree(c), true, 0).unwrap();
        p.connect(w1, MAIN, 1, 1_000);
        assert_eq!(p.flush(1_000).len(), 1, "leading edge: sent at once");
        p.connect(w2, MAIN, 2, 1_005);
        p.disconnect(w1, MAIN, 1, 1_006);
        p.connect(w1, MAIN, 3, 1_007);
        assert_eq!(p.next_flush_at(), Some(1_020));
        assert!(p.flush(1_010).is_empty(), "inside the window");
        let out = p.flush(1_020);
        assert_eq!(out.len(), 1);
        let mut eps = out[0].endpoints.clone();
        eps.sort();
        assert_eq!(
            eps,
            [w1, w2],
            "each endpoint once, however often it changed"
        );
        assert_eq!(p.next_flush_at(), None);
    }

    #[test]
    fn a_new_subscriber_gets_no_delta_of_what_its_snapshot_holds() {
        let mut p = Presence::new(small(), 20, 4);
        let (c, w1, w2) = (id(&p, "c"), id(&p, "w1"), id(&p, "w2"));
        p.subscribe(100, Watch::Subtree(c), true, 0).unwrap();
        p.connect(w2, MAIN, 2, 990);
        p.flush(990);
        // Inside the window: w1's change waits, then a console subscribes.
        p.connect(w1, MAIN, 1, 1_000);
        assert!(p.flush(1_001).is_empty());
        let (snap, earlier) = p.subscribe(200, Watch::Subtree(c), true, 1_002).unwrap();
        assert!(
            snap.endpoints.contains(&w1),
            "the change is in the snapshot"
        );
        assert_eq!(earlier.len(), 1, "and went out to the existing subscriber");
        assert_eq!(
            (
                earlier[0].recipients.as_slice(),
                earlier[0].endpoints.as_slice()
            ),
            (&[100][..], &[w1][..])
        );
        assert_eq!(p.next_flush_at(), None, "nothing left for the newcomer");
        // Later changes reach both.
        p.disconnect(w2, MAIN, 2, 1_030);
        let out = p.flush(1_030);
        let mut to = out[0].recipients.clone();
        to.sort();
        assert_eq!((to, out[0].endpoints.clone()), (vec![100, 200], vec![w2]));
    }

    #[test]
    fn text_and_location_changes_do_not_resend_aggregates() {
        let mut p = Presence::new(small(), 0, 4);
        let (c, w1) = (id(&p, "c"), id(&p, "w1"));
        p.connect(w1, MAIN, 1, 0);
        p.subscribe(9, Watch::Subtree(c), true, 0).unwrap();
        p.flush(0);
        let u = Update {
            text: Some(Some("巡查中".into())),
            location: Some(Location {
                lat: 46.8,
                lon: 130.3,
                accuracy_m: None,
                at: 5,
            }),
            ..Default::default()
        };
        assert!(!p.update(w1, 1, &u, 5), "status unchanged");
        let out = p.flush(5);
        assert_eq!(out[0].endpoints, [w1]);
        assert!(out[0].aggregates.is_empty());
        assert!(!p.update(w1, 1, &u, 6));
        assert!(p.flush(6).is_empty(), "an identical update is not a change");
    }

    #[test]
    fn chain_of_command_subscriptions() {
        let mut p = Presence::new(small(), 0, 4);
        let (w1, w2, v, a, b) = (
            id(&p, "w1"),
            id(&p, "w2"),
            id(&p, "v"),
            id(&p, "a"),
            id(&p, "b"),
        );
        let (snap, _) = p.subscribe(50, Watch::Chain { of: w1 }, true, 0).unwrap();
        assert_eq!(snap.endpoints.len(), 4);
        p.connect(v, MAIN, 1, 0);
        p.connect(w2, MAIN, 2, 0);
        p.connect(b, MAIN, 3, 0);
        let out = p.flush(0);
        assert_eq!(
            out,
            [Fanout {
                recipients: vec![50],
                node: None,
                endpoints: vec![v],
                aggregates: vec![]
            }],
            "a sibling and another county are not in the chain"
        );
        assert!(p.unsubscribe(50, Watch::Chain { of: w1 }));
        p.connect(a, MAIN, 4, 1);
        assert!(p.flush(1).is_empty());
    }

    #[test]
    fn subscription_limits_and_cleanup() {
        let mut p = Presence::new(small(), 0, 2);
        let (c, a, b) = (id(&p, "c"), id(&p, "a"), id(&p, "b"));
        p.subscribe(1, Watch::Subtree(c), true, 0).unwrap();
        p.subscribe(1, Watch::Subtree(a), true, 0).unwrap();
        assert_eq!(
            p.subscribe(1, Watch::Subtree(b), true, 0),
            Err(SubscribeError::TooMany(2))
        );
        // Re-subscribing to the same node is not a new subscription.
        p.subscribe(1, Watch::Subtree(a), false, 0).unwrap();
        assert_eq!(p.subscriptions(1), 2);
        p.drop_subscriber(1);
        assert_eq!(p.subscriptions(1), 0);
        assert!(p.subtree_subs.is_empty() && p.chain_subs.is_empty());
    }

    #[test]
    fn snapshots_list_live_endpoints_and_every_center() {
        let mut p = Presence::new(small(), 0, 4);
        let (c, a, w1, w2) = (id(&p, "c"), id(&p, "a"), id(&p, "w1"), id(&p, "w2"));
        p.connect(w1, MAIN, 1, 0);
        p.connect(w2, MAIN, 2, 0);
        p.disconnect(w2, MAIN, 2, 1);
        let s = p.snapshot(Watch::Subtree(a), true);
        assert_eq!(s.endpoints, [w1]);
        assert_eq!(s.aggregates.len(), 3, "a, t, v have descendants");
        let s = p.snapshot(Watch::Subtree(c), false);
        assert!(s.endpoints.is_empty());
        assert_eq!(s.seq, p.seq());
    }

    /// The city at full scale: a reconnect wave of all 9,851 terminals inside one window reaches
    /// the city console as one delta naming each terminal once, and the aggregates add up.
    #[test]
    fn reconnect_wave_at_city_scale_is_one_delta() {
        let org = Arc::new(parse_csv(&generate_csv(Preset::Jiamusi, 1)).unwrap());
        let mut p = Presence::new(Arc::clone(&org), 20, 4);
        let root = org.root();
        p.subscribe(1, Watch::Subtree(root), true, 0).unwrap();
        p.connect(NodeIdx(1), MAIN, 1, 0);
        assert_eq!(p.flush(0).len(), 1);
        for i in 2..org.len() as u32 {
            p.connect(NodeIdx(i), MAIN, i as u64, 10);
        }
        let out = p.flush(20);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].endpoints.len(), 9_850);
        assert_eq!(
            out[0].aggregates.len(),
            1 + 10 + 106 + 1_206,
            "every center once"
        );
        assert_eq!(p.aggregate(root).online(), 9_851);
        let dongfeng = org.lookup("230805").unwrap();
        assert_eq!(
            p.aggregate(dongfeng).online() as usize,
            org.descendants(dongfeng)
        );
    }

    #[test]
    fn a_center_is_one_terminal_on_line_while_any_seat_is() {
        let org = Arc::new(crate::org::fixture());
        let mut p = Presence::new(Arc::clone(&org), 100, 4);
        let (a, root) = (org.lookup("a").unwrap(), org.lookup("c").unwrap());
        let wall = Seat::parse("wall").unwrap();
        assert!(p.connect(a, MAIN, 1, 0));
        assert!(
            !p.entry(a).lists_seats(),
            "one main seat is not worth listing"
        );
        let seq = p.seq();
        assert!(!p.connect(a, wall, 2, 1), "the status stays");
        assert!(
            p.entry(a).lists_seats() && p.seq() > seq,
            "the seats are news"
        );
        assert_eq!(
            p.aggregate(root).online(),
            1,
            "one terminal however many seats"
        );
        assert!(!p.connect(a, wall, 1, 2), "stale news of the seat");
        assert!(!p.disconnect(a, MAIN, 1, 3), "the status stays");
        assert_eq!(
            p.entry(a).status(),
            Status::Online,
            "the wall keeps it on line"
        );
        assert!(!p.disconnect(a, wall, 9, 4), "not the wall's connection");
        assert!(p.disconnect(a, wall, 2, 5));
        assert_eq!(p.entry(a).status(), Status::Offline);
        assert_eq!(p.aggregate(root).online(), 0);
    }
}

//! The command-session state machine: no IO, no clock (every input carries `now`, Unix ms).
//!
//! ```text
//! create ─▶ live ─ end (the commander, or the commander gone past the grace) ─▶ ended
//!   member: invited ─join─▶ joined ─leave─▶ left ─join─▶ joined …
//!                              │  └─ connection lost ─▶ away ─ back within the grace ─▶ joined
//!                              │                          └─ past the grace ─▶ left
//!                              └─ removed by the commander (may not join again unless invited)
//! ```
//!
//! A session is opened by an operator at a center (the commander), who invites terminals of its
//! subtree; the center's video walls (observer seats) may watch without an invitation. The
//! commander controls it: mute, remove, spotlight, pull a worker's camera, hand command over, end.
//! A terminal takes part in one session at a time. Media is not here: the shell's forwarding
//! unit follows what this core decides (who is in, who publishes, who is muted).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::auth::{Role, Seat};
use crate::org::{NodeIdx, Org, Tier};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(pub u64);

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A member's part in a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Part {
    Commander,
    Participant,
    /// A video wall: watches every camera, is not heard or seen.
    Observer,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Invited,
    Joined,
    /// Its connection dropped; back within the grace period, it is still in.
    Away,
    Left,
    Removed,
}

/// What a member sends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publishes {
    #[serde(default)]
    pub audio: bool,
    #[serde(default)]
    pub video: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    pub node: NodeIdx,
    pub part: Part,
    pub state: State,
    /// The seat taking part (from its first join), and its connection.
    pub seat: Option<Seat>,
    pub conn: u64,
    /// What its credential lets it be (the commander hands over only to an operator).
    pub role: Option<Role>,
    /// Muted by the commander: its sound is not forwarded.
    pub muted: bool,
    /// The commander asked for its camera (the field page is told it is being watched).
    pub camera_pulled: bool,
    pub publishes: Publishes,
    pub invited_at: u64,
    pub joined_at: Option<u64>,
    pub left_at: Option<u64>,
    away_since: Option<u64>,
}

impl Member {
    fn new(node: NodeIdx, part: Part, now: u64) -> Member {
        Member {
            node,
            part,
            state: State::Invited,
            seat: None,
            conn: 0,
            role: None,
            muted: false,
            camera_pulled: false,
            publishes: Publishes::default(),
            invited_at: now,
            joined_at: None,
            left_at: None,
            away_since: None,
        }
    }

    /// In the session now (joined, or away within the grace period).
    pub fn present(&self) -> bool {
        matches!(self.state, State::Joined | State::Away)
    }

    /// Counts against the cap: everyone invited and not gone for good.
    fn counted(&self) -> bool {
        self.part != Part::Observer && self.state != State::Removed
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Session {
    pub id: SessionId,
    pub title: String,
    /// The center that opened it: invitations stay in its subtree, its walls may watch.
    pub center: NodeIdx,
    pub commander: NodeIdx,
    pub created_at: u64,
    pub ended_at: Option<u64>,
    pub end_reason: Option<String>,
    pub spotlight: Option<NodeIdx>,
    pub members: Vec<Member>,
}

impl Session {
    pub fn member(&self, node: NodeIdx) -> Option<&Member> {
        self.members
            .iter()
            .find(|m| m.node == node && m.part != Part::Observer)
    }

    fn member_mut(&mut self, node: NodeIdx) -> Option<&mut Member> {
        self.members
            .iter_mut()
            .find(|m| m.node == node && m.part != Part::Observer)
    }

    /// The member a request comes from: the node's participant (or commander), or the
    /// observer seat.
    fn of(&self, who: &Who) -> Option<usize> {
        self.members.iter().position(|m| {
            m.node == who.node
                && if who.role == Role::Observer {
                    m.part == Part::Observer && m.seat == Some(who.seat)
                } else {
                    m.part != Part::Observer
                }
        })
    }

    pub fn live(&self) -> bool {
        self.ended_at.is_none()
    }

    /// Members present now, with the seat each takes part from.
    pub fn present(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|m| m.present())
    }
}

/// Who sends a request: a seat of a terminal, on one connection, with its credential's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Who {
    pub node: NodeIdx,
    pub seat: Seat,
    pub conn: u64,
    pub role: Role,
}

/// A commander's control.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    Mute { node: NodeIdx, muted: bool },
    Remove { node: NodeIdx },
    Spotlight { node: Option<NodeIdx> },
    PullCamera { node: NodeIdx, pull: bool },
    HandOver { node: NodeIdx },
    End,
}

/// A message for a member.
#[derive(Clone, Debug, PartialEq)]
pub enum Msg {
    /// To an invited terminal (every seat of it that takes part).
    Invited {
        session: SessionId,
    },
    /// To the member's seat: the commander muted or unmuted it.
    Muted {
        session: SessionId,
        muted: bool,
    },
    /// To the member's seat: the commander wants (or no longer wants) its camera.
    Camera {
        session: SessionId,
        pull: bool,
    },
    /// To a removed member.
    Removed {
        session: SessionId,
    },
    Ended {
        session: SessionId,
        reason: String,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// `seat: None`: every seat of the terminal.
    Send {
        to: NodeIdx,
        seat: Option<Seat>,
        msg: Msg,
    },
    /// The roster changed: every member present hears it (encoded once by the shell).
    Roster(SessionId),
    /// Whether a terminal is in a session (presence shows `in_session`).
    InSession { ep: NodeIdx, active: bool },
    /// Store the session's record (opened, commander changed, ended).
    Record(SessionId),
    /// A member came into the session (a span of its record begins).
    Joined {
        session: SessionId,
        node: NodeIdx,
        seat: Seat,
        part: Part,
        at: u64,
    },
    /// A member present is no longer (its span ends).
    Left {
        session: SessionId,
        node: NodeIdx,
        seat: Seat,
        at: u64,
    },
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum SessionError {
    #[error("no session {0}")]
    NotFound(SessionId),
    #[error("session {0} has ended")]
    Ended(SessionId),
    #[error("{0}")]
    NotInvited(String),
    #[error("only the commander of session {0} may do that")]
    NotCommander(SessionId),
    #[error("{0}")]
    OutOfScope(String),
    #[error("{live} sessions are live, the most allowed (sessions.max_sessions); end one first")]
    TooManySessions { live: usize },
    #[error(
        "session {session} would have {would} members; at most {max} are allowed (sessions.max_members)"
    )]
    TooManyMembers {
        session: SessionId,
        would: usize,
        max: usize,
    },
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Illegal(String),
}

impl SessionError {
    pub fn code(&self) -> &'static str {
        match self {
            SessionError::NotFound(_) => "not_found",
            SessionError::Ended(_) => "session_ended",
            SessionError::NotInvited(_) => "not_invited",
            SessionError::NotCommander(_) => "not_commander",
            SessionError::OutOfScope(_) => "out_of_scope",
            SessionError::TooManySessions { .. } => "too_many_sessions",
            SessionError::TooManyMembers { .. } => "too_many_members",
            SessionError::Busy(_) => "busy",
            SessionError::Invalid(_) => "invalid_data",
            SessionError::Illegal(_) => "illegal_transition",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Rules {
    /// Sessions live at once (the seed's center ran 27).
    pub max_sessions: usize,
    /// Members of one session, the commander included, observers not.
    pub max_members: usize,
    /// How long a member whose connection dropped stays in.
    pub grace_ms: u64,
    pub max_title_chars: usize,
}

/// Ended sessions kept, so late requests get "ended" rather than "no such session".
const ENDED_KEPT_MS: u64 = 10 * 60 * 1000;

pub struct Sessions {
    org: Arc<Org>,
    rules: Rules,
    sessions: HashMap<SessionId, Session>,
    /// The live session each terminal takes part in (at most one).
    joined: HashMap<NodeIdx, SessionId>,
    /// (when, session): grace periods running out, ended sessions to forget.
    timers: BTreeSet<(u64, SessionId)>,
    live: usize,
    next_id: u64,
}

impl Sessions {
    pub fn new(org: Arc<Org>, rules: Rules, next_id: u64) -> Sessions {
        Sessions {
            org,
            rules,
            sessions: HashMap::new(),
            joined: HashMap::new(),
            timers: BTreeSet::new(),
            live: 0,
            next_id: next_id.max(1),
        }
    }

    pub fn get(&self, id: SessionId) -> Option<&Session> {
        self.sessions.get(&id)
    }

    pub fn live_count(&self) -> usize {
        self.live
    }

    pub fn next_deadline(&self) -> Option<u64> {
        self.timers.first().map(|&(t, _)| t)
    }

    /// Live sessions `node` is invited to or takes part in, or commands.
    pub fn of(&self, node: NodeIdx) -> Vec<SessionId> {
        let mut ids: Vec<SessionId> = self
            .sessions
            .values()
            .filter(|s| s.live() && s.members.iter().any(|m| m.node == node))
            .map(|s| s.id)
            .collect();
        ids.sort_unstable();
        ids
    }

    fn name(&self, n: NodeIdx) -> String {
        let node = self.org.node(n);
        format!("{} ({})", node.id, node.name)
    }

    fn live_session(&self, id: SessionId) -> Result<&Session, SessionError> {
        let s = self.sessions.get(&id).ok_or(SessionError::NotFound(id))?;
        if !s.live() {
            return Err(SessionError::Ended(id));
        }
        Ok(s)
    }

    fn commanding(&self, who: &Who, id: SessionId) -> Result<&Session, SessionError> {
        let s = self.live_session(id)?;
        if s.commander != who.node || who.role == Role::Observer {
            return Err(SessionError::NotCommander(id));
        }
        Ok(s)
    }

    /// Checks invitees: distinct, in the center's subtree, not the center itself (its own
    /// desks take part as the commander), within the cap.
    fn check_invites(
        &self,
        s: Option<&Session>,
        center: NodeIdx,
        id: SessionId,
        nodes: &[NodeIdx],
    ) -> Result<Vec<NodeIdx>, SessionError> {
        let mut fresh: Vec<NodeIdx> = Vec::new();
        for &n in nodes {
            if n == center || !self.org.contains(center, n) {
                return Err(SessionError::OutOfScope(format!(
                    "{} is not below {}: a session invites only its center's subtree",
                    self.name(n),
                    self.name(center)
                )));
            }
            // Invited again: new terminals, and members who left (they are told once more);
            // a removed member comes back only this way.
            let known = s.and_then(|s| s.member(n)).map(|m| m.state);
            let again = matches!(known, None | Some(State::Left | State::Removed));
            if again && !fresh.contains(&n) {
                fresh.push(n);
            }
        }
        let counted = s.map_or(1, |s| s.members.iter().filter(|m| m.counted()).count());
        let added = fresh
            .iter()
            .filter(|&&n| {
                s.and_then(|s| s.member(n))
                    .is_none_or(|m| m.state == State::Removed)
            })
            .count();
        let would = counted + added;
        if would > self.rules.max_members {
            return Err(SessionError::TooManyMembers {
                session: id,
                would,
                max: self.rules.max_members,
            });
        }
        Ok(fresh)
    }

    /// An operator at a center opens a session and invites terminals of its subtree.
    pub fn create(
        &mut self,
        who: Who,
        title: &str,
        invite: &[NodeIdx],
        now: u64,
    ) -> Result<(SessionId, Vec<Effect>), SessionError> {
        if who.role != Role::Operator || self.org.tier(who.node) == Tier::Worker {
            return Err(SessionError::OutOfScope(
                "a session is opened by an operator at a center (an operator's credential)".into(),
            ));
        }
        let title = title.trim();
        if title.chars().count() > self.rules.max_title_chars {
            return Err(SessionError::Invalid(format!(
                "title is longer than {} characters",
                self.rules.max_title_chars
            )));
        }
        if self.live >= self.rules.max_sessions {
            return Err(SessionError::TooManySessions { live: self.live });
        }
        if let Some(other) = self.joined.get(&who.node) {
            return Err(SessionError::Busy(format!(
                "you ({}) take part in session {other}; leave it first",
                self.name(who.node)
            )));
        }
        let id = SessionId(self.next_id);
        let invited = self.check_invites(None, who.node, id, invite)?;
        self.next_id += 1;
        let mut commander = Member::new(who.node, Part::Commander, now);
        commander.state = State::Joined;
        commander.seat = Some(who.seat);
        commander.conn = who.conn;
        commander.role = Some(who.role);
        commander.joined_at = Some(now);
        let mut members = vec![commander];
        members.extend(
            invited
                .iter()
                .map(|&n| Member::new(n, Part::Participant, now)),
        );
        let title = if title.is_empty() {
            format!("{}指挥会商", self.org.node(who.node).name)
        } else {
            title.to_owned()
        };
        self.sessions.insert(
            id,
            Session {
                id,
                title,
                center: who.node,
                commander: who.node,
                created_at: now,
                ended_at: None,
                end_reason: None,
                spotlight: None,
                members,
            },
        );
        self.live += 1;
        self.joined.insert(who.node, id);
        let mut fx = vec![
            Effect::Record(id),
            Effect::Joined {
                session: id,
                node: who.node,
                seat: who.seat,
                part: Part::Commander,
                at: now,
            },
            Effect::InSession {
                ep: who.node,
                active: true,
            },
        ];
        fx.extend(invited.iter().map(|&n| Effect::Send {
            to: n,
            seat: None,
            msg: Msg::Invited { session: id },
        }));
        fx.push(Effect::Roster(id));
        Ok((id, fx))
    }

    /// The commander invites more terminals (one by one, or a subtree expanded by the shell).
    pub fn invite(
        &mut self,
        who: Who,
        id: SessionId,
        nodes: &[NodeIdx],
        now: u64,
    ) -> Result<Vec<Effect>, SessionError> {
        let s = self.commanding(&who, id)?;
        let fresh = self.check_invites(Some(s), s.center, id, nodes)?;
        let s = self.sessions.get_mut(&id).expect("checked");
        for &n in &fresh {
            match s.member_mut(n) {
                Some(m) => {
                    *m = Member {
                        invited_at: now,
                        ..Member::new(n, m.part, now)
                    }
                }
                None => s.members.push(Member::new(n, Part::Participant, now)),
            }
        }
        let mut fx: Vec<Effect> = fresh
            .iter()
            .map(|&n| Effect::Send {
                to: n,
                seat: None,
                msg: Msg::Invited { session: id },
            })
            .collect();
        if !fresh.is_empty() {
            fx.push(Effect::Roster(id));
        }
        Ok(fx)
    }

    /// A seat joins: an invited terminal's (as a participant), or a video wall of the center or
    /// above it (as an observer, uninvited). A member who left may join again.
    pub fn join(&mut self, who: Who, id: SessionId, now: u64) -> Result<Vec<Effect>, SessionError> {
        let s = self.live_session(id)?;
        let observer = who.role == Role::Observer;
        if observer {
            if !self.org.contains(who.node, s.center) {
                return Err(SessionError::NotInvited(format!(
                    "a video wall watches the sessions of its own center and those below it; session {id} is {}'s",
                    self.name(s.center)
                )));
            }
        } else {
            match s.member(who.node).map(|m| m.state) {
                None => {
                    return Err(SessionError::NotInvited(format!(
                        "{} is not invited to session {id}",
                        self.name(who.node)
                    )));
                }
                Some(State::Removed) => {
                    return Err(SessionError::NotInvited(format!(
                        "{} was removed from session {id} by its commander",
                        self.name(who.node)
                    )));
                }
                Some(State::Joined | State::Away) => {
                    // The same terminal again: another seat, or the same one reconnecting.
                    let m = s.member(who.node).expect("matched");
                    if m.seat != Some(who.seat) {
                        return Err(SessionError::Busy(format!(
                            "{} takes part from its seat {}; one seat per terminal",
                            self.name(who.node),
                            m.seat.unwrap_or_default()
                        )));
                    }
                }
                Some(_) => {}
            }
            if let Some(&other) = self.joined.get(&who.node)
                && other != id
            {
                return Err(SessionError::Busy(format!(
                    "{} takes part in session {other}; leave it first",
                    self.name(who.node)
                )));
            }
        }
        let s = self.sessions.get_mut(&id).expect("checked");
        let i = match s.of(&who) {
            Some(i) => i,
            None => {
                s.members.push(Member::new(who.node, Part::Observer, now));
                s.members.len() - 1
            }
        };
        let m = &mut s.members[i];
        // Present already from this seat (its page reloaded, and joins afresh): it comes in
        // again, on a new media connection. Its connection may already be the new one (the
        // terminal's reconnection reached the session first).
        let again = m.present() && m.seat == Some(who.seat);
        let arrived = !m.present() || again;
        let part = m.part;
        m.state = State::Joined;
        m.seat = Some(who.seat);
        m.conn = who.conn;
        m.role = Some(who.role);
        m.joined_at = Some(now);
        m.away_since = None;
        m.left_at = None;
        let mut fx = Vec::new();
        if again {
            fx.push(Effect::Left {
                session: id,
                node: who.node,
                seat: who.seat,
                at: now,
            });
        }
        if arrived {
            fx.push(Effect::Joined {
                session: id,
                node: who.node,
                seat: who.seat,
                part,
                at: now,
            });
        }
        if !observer && self.joined.insert(who.node, id).is_none() {
            fx.push(Effect::InSession {
                ep: who.node,
                active: true,
            });
        }
        fx.push(Effect::Roster(id));
        Ok(fx)
    }

    /// What a member publishes (its audio, its camera).
    pub fn publish(
        &mut self,
        who: Who,
        id: SessionId,
        publishes: Publishes,
    ) -> Result<Vec<Effect>, SessionError> {
        let s = self.live_session(id)?;
        let i = self.present_member(s, &who)?;
        if s.members[i].part == Part::Observer && (publishes.audio || publishes.video) {
            return Err(SessionError::Illegal(
                "a video wall watches; it does not publish".into(),
            ));
        }
        let s = self.sessions.get_mut(&id).expect("checked");
        let m = &mut s.members[i];
        if m.publishes == publishes {
            return Ok(Vec::new());
        }
        m.publishes = publishes;
        Ok(vec![Effect::Roster(id)])
    }

    fn present_member(&self, s: &Session, who: &Who) -> Result<usize, SessionError> {
        s.of(who)
            .filter(|&i| s.members[i].present() && s.members[i].seat == Some(who.seat))
            .ok_or_else(|| {
                SessionError::NotInvited(format!(
                    "you ({}) are not in session {}",
                    self.name(who.node),
                    s.id
                ))
            })
    }

    /// A member leaves; the commander leaving ends the session (it hands over first to leave
    /// it running).
    pub fn leave(
        &mut self,
        who: Who,
        id: SessionId,
        now: u64,
    ) -> Result<Vec<Effect>, SessionError> {
        let s = self.live_session(id)?;
        let i = self.present_member(s, &who)?;
        if s.members[i].part == Part::Commander {
            return Ok(self.end(id, "the commander left".into(), now));
        }
        Ok(self.gone(id, i, State::Left, now))
    }

    /// Member `i` is no longer present.
    fn gone(&mut self, id: SessionId, i: usize, state: State, now: u64) -> Vec<Effect> {
        let s = self.sessions.get_mut(&id).expect("a known session");
        let m = &mut s.members[i];
        let was_present = m.present();
        m.state = state;
        m.left_at = Some(now);
        m.away_since = None;
        m.publishes = Publishes::default();
        m.camera_pulled = false;
        let (node, part, seat) = (m.node, m.part, m.seat);
        if s.spotlight == Some(node) && part != Part::Observer {
            s.spotlight = None;
        }
        let mut fx = Vec::new();
        if let (true, Some(seat)) = (was_present, seat) {
            fx.push(Effect::Left {
                session: id,
                node,
                seat,
                at: now,
            });
        }
        if was_present && part != Part::Observer && self.joined.get(&node) == Some(&id) {
            self.joined.remove(&node);
            fx.push(Effect::InSession {
                ep: node,
                active: false,
            });
        }
        fx.push(Effect::Roster(id));
        fx
    }

    /// A commander's control.
    pub fn control(
        &mut self,
        who: Who,
        id: SessionId,
        c: Control,
        now: u64,
    ) -> Result<Vec<Effect>, SessionError> {
        let s = self.commanding(&who, id)?;
        let target = |node: NodeIdx| -> Result<usize, SessionError> {
            s.members
                .iter()
                .position(|m| m.node == node && m.part == Part::Participant)
                .filter(|&i| s.members[i].state != State::Removed)
                .ok_or_else(|| {
                    SessionError::Invalid(format!(
                        "{} is not a participant of session {id}",
                        self.name(node)
                    ))
                })
        };
        match c {
            Control::End => Ok(self.end(id, "ended by its commander".into(), now)),
            Control::Remove { node } => {
                let i = target(node)?;
                let seat = s.members[i].seat;
                let mut fx = vec![Effect::Send {
                    to: node,
                    seat,
                    msg: Msg::Removed { session: id },
                }];
                fx.extend(self.gone(id, i, State::Removed, now));
                Ok(fx)
            }
            Control::Mute { node, muted } => {
                let i = target(node)?;
                let seat = s.members[i].seat;
                let s = self.sessions.get_mut(&id).expect("checked");
                s.members[i].muted = muted;
                Ok(vec![
                    Effect::Send {
                        to: node,
                        seat,
                        msg: Msg::Muted { session: id, muted },
                    },
                    Effect::Roster(id),
                ])
            }
            Control::PullCamera { node, pull } => {
                let i = target(node)?;
                let m = &s.members[i];
                if pull && !m.present() {
                    return Err(SessionError::Illegal(format!(
                        "{} has not joined session {id}: its camera can be pulled once it has",
                        self.name(node)
                    )));
                }
                let seat = m.seat;
                let s = self.sessions.get_mut(&id).expect("checked");
                s.members[i].camera_pulled = pull;
                Ok(vec![
                    Effect::Send {
                        to: node,
                        seat,
                        msg: Msg::Camera { session: id, pull },
                    },
                    Effect::Roster(id),
                ])
            }
            Control::Spotlight { node } => {
                if let Some(n) = node {
                    let i = target(n)?;
                    if !s.members[i].present() {
                        return Err(SessionError::Illegal(format!(
                            "{} is not in session {id} now",
                            self.name(n)
                        )));
                    }
                }
                let s = self.sessions.get_mut(&id).expect("checked");
                s.spotlight = node;
                Ok(vec![Effect::Roster(id)])
            }
            Control::HandOver { node } => {
                let i = target(node)?;
                let m = &s.members[i];
                if !m.present() || m.role != Some(Role::Operator) {
                    return Err(SessionError::Illegal(format!(
                        "command passes to an operator taking part; {} is not one now",
                        self.name(node)
                    )));
                }
                let s = self.sessions.get_mut(&id).expect("checked");
                let old = s
                    .members
                    .iter()
                    .position(|m| m.part == Part::Commander)
                    .expect("a session has a commander");
                s.members[old].part = Part::Participant;
                s.members[i].part = Part::Commander;
                let was_muted = std::mem::replace(&mut s.members[i].muted, false);
                let seat = s.members[i].seat;
                s.commander = node;
                let mut fx = vec![Effect::Record(id), Effect::Roster(id)];
                // A commander is heard: a mute it had is lifted, and its page is told.
                if was_muted {
                    fx.push(Effect::Send {
                        to: node,
                        seat,
                        msg: Msg::Muted {
                            session: id,
                            muted: false,
                        },
                    });
                }
                Ok(fx)
            }
        }
    }

    /// Ends a session: everyone present is told, and leaves.
    fn end(&mut self, id: SessionId, reason: String, now: u64) -> Vec<Effect> {
        let s = self.sessions.get_mut(&id).expect("a known session");
        s.ended_at = Some(now);
        s.end_reason = Some(reason.clone());
        s.spotlight = None;
        self.live -= 1;
        let mut fx = vec![Effect::Record(id)];
        for m in s.members.iter_mut() {
            if m.present() {
                if let Some(seat) = m.seat {
                    fx.push(Effect::Left {
                        session: id,
                        node: m.node,
                        seat,
                        at: now,
                    });
                }
                fx.push(Effect::Send {
                    to: m.node,
                    seat: m.seat,
                    msg: Msg::Ended {
                        session: id,
                        reason: reason.clone(),
                    },
                });
                m.state = State::Left;
                m.left_at = Some(now);
                if m.part != Part::Observer && self.joined.get(&m.node) == Some(&id) {
                    self.joined.remove(&m.node);
                    fx.push(Effect::InSession {
                        ep: m.node,
                        active: false,
                    });
                }
            }
        }
        self.timers.insert((now + ENDED_KEPT_MS, id));
        fx
    }

    /// Ends every live session (the hub is stopping): their members are told.
    pub fn end_all(&mut self, reason: &str, now: u64) -> Vec<Effect> {
        let mut ids: Vec<SessionId> = self
            .sessions
            .values()
            .filter(|s| s.live())
            .map(|s| s.id)
            .collect();
        ids.sort_unstable();
        ids.into_iter()
            .flat_map(|id| self.end(id, reason.into(), now))
            .collect()
    }

    /// A seat's connection ended: a member taking part from it is away for the grace period.
    pub fn disconnected(&mut self, node: NodeIdx, seat: Seat, conn: u64, now: u64) -> Vec<Effect> {
        let mut fx = Vec::new();
        let ids: Vec<SessionId> = self
            .sessions
            .values()
            .filter(|s| s.live())
            .filter(|s| {
                s.members.iter().any(|m| {
                    m.node == node
                        && m.seat == Some(seat)
                        && m.conn == conn
                        && m.state == State::Joined
                })
            })
            .map(|s| s.id)
            .collect();
        for id in ids {
            let s = self.sessions.get_mut(&id).expect("listed");
            for m in s.members.iter_mut().filter(|m| {
                m.node == node && m.seat == Some(seat) && m.conn == conn && m.state == State::Joined
            }) {
                m.state = State::Away;
                m.away_since = Some(now);
            }
            self.timers.insert((now + self.rules.grace_ms, id));
            fx.push(Effect::Roster(id));
        }
        fx
    }

    /// A seat connected again: a member away from it is back (its media reconnects on its own
    /// peer connection; the session does not change).
    pub fn connected(&mut self, node: NodeIdx, seat: Seat, conn: u64) -> Vec<Effect> {
        let mut fx = Vec::new();
        for s in self.sessions.values_mut().filter(|s| s.live()) {
            let mut back = false;
            for m in s.members.iter_mut().filter(|m| {
                m.node == node && m.seat == Some(seat) && m.state == State::Away && conn > m.conn
            }) {
                m.state = State::Joined;
                m.conn = conn;
                m.away_since = None;
                back = true;
            }
            if back {
                fx.push(Effect::Roster(s.id));
            }
        }
        fx
    }

    /// Grace periods that ran out (the member leaves; the commander's ends the session), and
    /// ended sessions to forget.
    pub fn tick(&mut self, now: u64) -> Vec<Effect> {
        let mut fx = Vec::new();
        while let Some(&(t, id)) = self.timers.first() {
            if t > now {
                break;
            }
            self.timers.pop_first();
            let Some(s) = self.sessions.get(&id) else {
                continue;
            };
            if !s.live() {
                if s.ended_at.is_some_and(|e| now >= e + ENDED_KEPT_MS) {
                    self.sessions.remove(&id);
                }
                continue;
            }
            let expired: Vec<(usize, Part)> = s
                .members
                .iter()
                .enumerate()
                .filter(|(_, m)| {
                    m.state == State::Away
                        && m.away_since.is_some_and(|a| now >= a + self.rules.grace_ms)
                })
                .map(|(i, m)| (i, m.part))
                .collect();
            if expired.iter().any(|&(_, p)| p == Part::Commander) {
                fx.extend(self.end(id, "the commander's connection was lost".into(), now));
                continue;
            }
            for (i, _) in expired {
                fx.extend(self.gone(id, i, State::Left, now));
            }
        }
        fx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules {
            max_sessions: 2,
            max_members: 3,
            grace_ms: 20_000,
            max_title_chars: 40,
        }
    }

    struct T {
        s: Sessions,
        org: Arc<Org>,
    }

    impl T {
        fn new() -> T {
            let org = Arc::new(crate::org::fixture());
            T {
                s: Sessions::new(Arc::clone(&org), rules(), 1),
                org,
            }
        }
        fn n(&self, id: &str) -> NodeIdx {
            self.org.lookup(id).unwrap()
        }
        fn who(&self, id: &str, conn: u64) -> Who {
            let node = self.n(id);
            Who {
                node,
                seat: Seat::MAIN,
                conn,
                role: Role::default_for(self.org.tier(node)),
            }
        }
        fn wall(&self, id: &str, conn: u64) -> Who {
            Who {
                seat: Seat::parse("wall").unwrap(),
                role: Role::Observer,
                ..self.who(id, conn)
            }
        }
    }

    fn sent(fx: &[Effect]) -> Vec<(NodeIdx, &Msg)> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::Send { to, msg, .. } => Some((*to, msg)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_commander_opens_invites_and_members_join_and_leave() {
        let mut t = T::new();
        let (a, v, w1) = (t.n("a"), t.n("v"), t.n("w1"));
        let (id, fx) =
            t.s.create(t.who("a", 1), " 防汛会商 ", &[v, w1, v], 0)
                .unwrap();
        assert_eq!(
            sent(&fx),
            [
                (v, &Msg::Invited { session: id }),
                (w1, &Msg::Invited { session: id })
            ]
        );
        assert!(fx.contains(&Effect::InSession {
            ep: a,
            active: true
        }));
        assert_eq!(t.s.get(id).unwrap().title, "防汛会商");
        assert_eq!(
            t.s.get(id).unwrap().members.len(),
            3,
            "the commander and two"
        );
        // The worker joins; its presence shows in_session.
        let fx = t.s.join(t.who("w1", 2), id, 5).unwrap();
        assert!(fx.contains(&Effect::InSession {
            ep: w1,
            active: true
        }));
        assert_eq!(
            t.s.get(id).unwrap().member(w1).unwrap().state,
            State::Joined
        );
        let fx =
            t.s.publish(
                t.who("w1", 2),
                id,
                Publishes {
                    audio: true,
                    video: true,
                },
            )
            .unwrap();
        assert_eq!(fx, [Effect::Roster(id)]);
        // Leaves, and joins again.
        let fx = t.s.leave(t.who("w1", 2), id, 6).unwrap();
        assert!(fx.contains(&Effect::InSession {
            ep: w1,
            active: false
        }));
        let m = t.s.get(id).unwrap().member(w1).unwrap();
        assert_eq!((m.state, m.publishes), (State::Left, Publishes::default()));
        t.s.join(t.who("w1", 3), id, 7).unwrap();
        assert_eq!(t.s.of(w1), [id]);
        // The commander leaving ends it for everyone present.
        let fx = t.s.leave(t.who("a", 1), id, 8).unwrap();
        assert!(sent(&fx).contains(&(
            w1,
            &Msg::Ended {
                session: id,
                reason: "the commander left".into()
            }
        )));
        assert!(fx.contains(&Effect::InSession {
            ep: w1,
            active: false
        }));
        assert_eq!(t.s.live_count(), 0);
        assert_eq!(
            t.s.join(t.who("w1", 3), id, 9),
            Err(SessionError::Ended(id))
        );
        // Forgotten ten minutes later.
        t.s.tick(8 + ENDED_KEPT_MS);
        assert_eq!(
            t.s.join(t.who("w1", 3), id, 9),
            Err(SessionError::NotFound(id))
        );
    }

    #[test]
    fn who_may_open_join_and_command() {
        let mut t = T::new();
        let (b, v, w1) = (t.n("b"), t.n("v"), t.n("w1"));
        let e = t.s.create(t.who("w1", 1), "", &[], 0).unwrap_err();
        assert_eq!(e.code(), "out_of_scope", "a worker opens no session");
        let e = t.s.create(t.who("a", 1), "", &[b], 0).unwrap_err();
        assert_eq!(e.code(), "out_of_scope", "another county is not below");
        let (id, _) = t.s.create(t.who("a", 1), "", &[v], 0).unwrap();
        assert_eq!(t.s.get(id).unwrap().title, "A指挥会商");
        assert_eq!(
            t.s.join(t.who("w1", 2), id, 1).unwrap_err().code(),
            "not_invited"
        );
        let e = t.s.control(t.who("v", 3), id, Control::End, 1).unwrap_err();
        assert_eq!(e, SessionError::NotCommander(id));
        let e = t.s.control(
            t.who("a", 1),
            id,
            Control::Mute {
                node: w1,
                muted: true,
            },
            1,
        );
        assert_eq!(e.unwrap_err().code(), "invalid_data", "not a participant");
        // A wall of the center (or above) watches uninvited; one of another county does not.
        t.s.join(t.wall("a", 4), id, 2).unwrap();
        t.s.join(t.wall("c", 5), id, 2).unwrap();
        assert_eq!(
            t.s.join(t.wall("b", 6), id, 2).unwrap_err().code(),
            "not_invited"
        );
        let e = t.s.publish(
            t.wall("a", 4),
            id,
            Publishes {
                audio: false,
                video: true,
            },
        );
        assert_eq!(e.unwrap_err().code(), "illegal_transition");
        assert_eq!(
            t.s.control(t.wall("a", 4), id, Control::End, 3),
            Err(SessionError::NotCommander(id)),
            "the commander's own wall does not command"
        );
        // One seat per terminal, one session per terminal.
        t.s.join(t.who("v", 7), id, 3).unwrap();
        let desk = Who {
            seat: Seat::parse("desk-2").unwrap(),
            ..t.who("v", 8)
        };
        assert_eq!(t.s.join(desk, id, 3).unwrap_err().code(), "busy");
        let e = t.s.create(t.who("v", 7), "", &[w1], 4).unwrap_err();
        assert_eq!(e.code(), "busy", "it takes part in a session already");
    }

    #[test]
    fn caps_on_sessions_and_members_hold() {
        let mut t = T::new();
        let (t_, v, w1, w2) = (t.n("t"), t.n("v"), t.n("w1"), t.n("w2"));
        let e = t.s.create(t.who("a", 1), "", &[t_, v, w1], 0).unwrap_err();
        assert_eq!(
            e,
            SessionError::TooManyMembers {
                session: SessionId(1),
                would: 4,
                max: 3
            }
        );
        let (id, _) = t.s.create(t.who("a", 1), "", &[t_, v], 0).unwrap();
        assert_eq!(
            t.s.invite(t.who("a", 1), id, &[w1], 1).unwrap_err().code(),
            "too_many_members"
        );
        // Removing one makes room; walls do not count.
        t.s.control(t.who("a", 1), id, Control::Remove { node: v }, 2)
            .unwrap();
        t.s.invite(t.who("a", 1), id, &[w1], 3).unwrap();
        t.s.join(t.wall("a", 9), id, 3).unwrap();
        assert_eq!(
            t.s.invite(t.who("a", 1), id, &[w2], 4).unwrap_err().code(),
            "too_many_members"
        );
        // Two sessions at most.
        t.s.create(t.who("b", 2), "", &[], 5).unwrap();
        let e = t.s.create(t.who("c", 3), "", &[], 5).unwrap_err();
        assert_eq!(e, SessionError::TooManySessions { live: 2 });
        assert!(e.to_string().contains("sessions.max_sessions"));
    }

    #[test]
    fn the_commanders_controls_take_effect() {
        let mut t = T::new();
        let (t_, v, w1) = (t.n("t"), t.n("v"), t.n("w1"));
        let cmd = t.who("a", 1);
        let (id, _) = t.s.create(cmd, "", &[t_, w1], 0).unwrap();
        t.s.join(t.who("w1", 2), id, 1).unwrap();
        t.s.join(t.who("t", 3), id, 1).unwrap();
        let fx =
            t.s.control(
                cmd,
                id,
                Control::Mute {
                    node: w1,
                    muted: true,
                },
                2,
            )
            .unwrap();
        assert_eq!(
            sent(&fx),
            [(
                w1,
                &Msg::Muted {
                    session: id,
                    muted: true
                }
            )]
        );
        assert!(t.s.get(id).unwrap().member(w1).unwrap().muted);
        let fx =
            t.s.control(
                cmd,
                id,
                Control::PullCamera {
                    node: w1,
                    pull: true,
                },
                3,
            )
            .unwrap();
        assert_eq!(
            sent(&fx),
            [(
                w1,
                &Msg::Camera {
                    session: id,
                    pull: true
                }
            )]
        );
        t.s.control(cmd, id, Control::Spotlight { node: Some(w1) }, 4)
            .unwrap();
        assert_eq!(t.s.get(id).unwrap().spotlight, Some(w1));
        // Removed: told, out, its spotlight gone, and it may not come back uninvited.
        let fx =
            t.s.control(cmd, id, Control::Remove { node: w1 }, 5)
                .unwrap();
        assert_eq!(sent(&fx), [(w1, &Msg::Removed { session: id })]);
        assert!(fx.contains(&Effect::InSession {
            ep: w1,
            active: false
        }));
        assert_eq!(t.s.get(id).unwrap().spotlight, None);
        assert_eq!(
            t.s.join(t.who("w1", 4), id, 6).unwrap_err().code(),
            "not_invited"
        );
        let e = t.s.control(
            cmd,
            id,
            Control::PullCamera {
                node: v,
                pull: true,
            },
            6,
        );
        assert_eq!(e.unwrap_err().code(), "invalid_data");
        // Command handed to the township's operator: the old commander is a participant.
        t.s.control(cmd, id, Control::HandOver { node: t_ }, 7)
            .unwrap();
        let s = t.s.get(id).unwrap();
        assert_eq!(s.commander, t_);
        assert_eq!(s.member(t.n("a")).unwrap().part, Part::Participant);
        assert_eq!(
            t.s.control(cmd, id, Control::End, 8),
            Err(SessionError::NotCommander(id))
        );
        // The new commander ends it.
        let fx = t.s.control(t.who("t", 3), id, Control::End, 9).unwrap();
        assert_eq!(sent(&fx).len(), 2, "the two present are told");
        assert_eq!(t.s.live_count(), 0);
    }

    #[test]
    fn a_lost_connection_is_away_for_the_grace_then_gone() {
        let mut t = T::new();
        let w1 = t.n("w1");
        let cmd = t.who("a", 1);
        let (id, _) = t.s.create(cmd, "", &[w1], 0).unwrap();
        t.s.join(t.who("w1", 2), id, 1).unwrap();
        // A late goodbye of an older connection changes nothing.
        assert!(t.s.disconnected(w1, Seat::MAIN, 1, 2).is_empty());
        assert_eq!(t.s.disconnected(w1, Seat::MAIN, 2, 2), [Effect::Roster(id)]);
        assert_eq!(t.s.get(id).unwrap().member(w1).unwrap().state, State::Away);
        // Back within the grace, on a new connection: still in.
        assert_eq!(t.s.connected(w1, Seat::MAIN, 3), [Effect::Roster(id)]);
        assert!(t.s.tick(2 + 20_000).is_empty());
        assert_eq!(
            t.s.get(id).unwrap().member(w1).unwrap().state,
            State::Joined
        );
        // Gone past the grace: left.
        t.s.disconnected(w1, Seat::MAIN, 3, 30_000);
        let fx = t.s.tick(50_000);
        assert!(fx.contains(&Effect::InSession {
            ep: w1,
            active: false
        }));
        assert_eq!(t.s.get(id).unwrap().member(w1).unwrap().state, State::Left);
        // The commander gone past the grace ends the session.
        t.s.disconnected(t.n("a"), Seat::MAIN, 1, 60_000);
        t.s.tick(80_000);
        assert_eq!(t.s.live_count(), 0);
        assert_eq!(
            t.s.get(id).unwrap().end_reason.as_deref(),
            Some("the commander's connection was lost")
        );
    }

    #[test]
    fn joining_again_from_the_same_seat_starts_over_and_a_new_commander_is_heard() {
        let mut t = T::new();
        let (t_, w1) = (t.n("t"), t.n("w1"));
        let cmd = t.who("a", 1);
        let (id, _) = t.s.create(cmd, "", &[t_, w1], 0).unwrap();
        t.s.join(t.who("w1", 2), id, 1).unwrap();
        // Its page reloaded (the connection may already be the new one): out, then in again,
        // so its media starts over on a new peer connection.
        let fx = t.s.join(t.who("w1", 3), id, 2).unwrap();
        let kinds: Vec<&str> = fx
            .iter()
            .map(|e| match e {
                Effect::Left { .. } => "left",
                Effect::Joined { .. } => "joined",
                Effect::InSession { .. } => "in_session",
                _ => "other",
            })
            .collect();
        assert_eq!(kinds, ["left", "joined", "other"], "{fx:?}");
        // A muted township handed command is unmuted, and told.
        t.s.join(t.who("t", 4), id, 3).unwrap();
        t.s.control(
            cmd,
            id,
            Control::Mute {
                node: t_,
                muted: true,
            },
            4,
        )
        .unwrap();
        let fx =
            t.s.control(cmd, id, Control::HandOver { node: t_ }, 5)
                .unwrap();
        assert!(sent(&fx).contains(&(
            t_,
            &Msg::Muted {
                session: id,
                muted: false
            }
        )));
        assert!(!t.s.get(id).unwrap().member(t_).unwrap().muted);
    }
}

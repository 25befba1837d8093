//! Command-session messages on the wire: requests as terminals send them, and what the hub
//! sends (the roster, encoded once for every member; the messages for one member).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::core::{Member, Msg, Part, Publishes, Session, SessionId, State};
use crate::calls::wire::Who;
use crate::org::{NodeId, NodeIdx, Org, Tier};
use crate::transport::protocol::encode;

/// Terminals to invite: listed one by one, and/or every node of a tier below one node ("every
/// township center of 东风区": `{"node": "230805", "tier": "township"}`).
#[derive(Debug, Default)]
pub struct Invitees<'a> {
    pub invite: &'a [NodeId],
    pub invite_below: Option<&'a Below>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Below {
    pub node: NodeId,
    pub tier: Tier,
}

impl Invitees<'_> {
    /// The nodes named, in order, each once; an unknown id is an error naming it. `most` bounds
    /// a subtree's expansion (a request past it is refused by the core's cap anyway).
    pub fn resolve(&self, org: &Org, most: usize) -> Result<Vec<NodeIdx>, String> {
        let mut out = Vec::new();
        for id in self.invite {
            let n = org
                .lookup(id.as_str())
                .ok_or_else(|| format!("`invite`: no node {id} in the org tree"))?;
            if !out.contains(&n) {
                out.push(n);
            }
        }
        if let Some(b) = self.invite_below {
            let root = org.lookup(b.node.as_str()).ok_or_else(|| {
                format!("`invite_below.node`: no node {} in the org tree", b.node)
            })?;
            for i in org.subtree(root) {
                let n = NodeIdx(i as u32);
                if org.tier(n) == b.tier && !out.contains(&n) {
                    out.push(n);
                    if out.len() > most {
                        break;
                    }
                }
            }
        }
        Ok(out)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateIn {
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub invite: Vec<NodeId>,
    #[serde(default)]
    pub invite_below: Option<Below>,
}

impl CreateIn {
    pub fn invitees(&self) -> Invitees<'_> {
        Invitees {
            invite: &self.invite,
            invite_below: self.invite_below.as_ref(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InviteIn {
    pub session: SessionId,
    #[serde(default)]
    pub invite: Vec<NodeId>,
    #[serde(default)]
    pub invite_below: Option<Below>,
}

impl InviteIn {
    pub fn invitees(&self) -> Invitees<'_> {
        Invitees {
            invite: &self.invite,
            invite_below: self.invite_below.as_ref(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionRef {
    pub session: SessionId,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishIn {
    pub session: SessionId,
    #[serde(default)]
    pub audio: bool,
    #[serde(default)]
    pub video: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Mute,
    Unmute,
    Remove,
    Spotlight,
    ClearSpotlight,
    PullCamera,
    ReleaseCamera,
    HandOver,
    End,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlIn {
    pub session: SessionId,
    pub action: Action,
    /// The member it is about (every action but `clear_spotlight` and `end`).
    #[serde(default)]
    pub target: Option<NodeId>,
}

#[derive(Serialize)]
struct MemberView<'a> {
    #[serde(flatten)]
    who: Who<'a>,
    part: Part,
    state: State,
    #[serde(skip_serializing_if = "Option::is_none")]
    seat: Option<&'a str>,
    muted: bool,
    camera_pulled: bool,
    publishes: Publishes,
}

/// A session as its members see it.
#[derive(Serialize)]
pub struct RosterView<'a> {
    session: SessionId,
    title: &'a str,
    center: Who<'a>,
    commander: &'a str,
    created_at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    ended_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    end_reason: Option<&'a str>,
    spotlight: Option<&'a str>,
    members: Vec<MemberView<'a>>,
}

impl<'a> RosterView<'a> {
    pub fn of(org: &'a Org, s: &'a Session) -> RosterView<'a> {
        let member = |m: &'a Member| MemberView {
            who: Who::of(org, m.node),
            part: m.part,
            state: m.state,
            seat: m
                .seat
                .as_ref()
                .filter(|_| m.part == Part::Observer)
                .map(|s| s.as_str()),
            muted: m.muted,
            camera_pulled: m.camera_pulled,
            publishes: m.publishes,
        };
        RosterView {
            session: s.id,
            title: &s.title,
            center: Who::of(org, s.center),
            commander: org.id(s.commander).as_str(),
            created_at: s.created_at,
            ended_at: s.ended_at,
            end_reason: s.end_reason.as_deref(),
            spotlight: s.spotlight.map(|n| org.id(n).as_str()),
            members: s.members.iter().map(member).collect(),
        }
    }
}

/// `session.roster`, for every member present.
pub fn roster(org: &Org, s: &Session) -> Bytes {
    encode("session.roster", None, &RosterView::of(org, s))
}

/// A message for one member.
pub fn encode_msg(org: &Org, sessions: &super::core::Sessions, msg: &Msg) -> Bytes {
    #[derive(Serialize)]
    struct Invited<'a> {
        session: SessionId,
        title: &'a str,
        commander: Who<'a>,
    }
    #[derive(Serialize)]
    struct Muted {
        session: SessionId,
        muted: bool,
    }
    #[derive(Serialize)]
    struct Camera {
        session: SessionId,
        pull: bool,
    }
    #[derive(Serialize)]
    struct Bare {
        session: SessionId,
    }
    #[derive(Serialize)]
    struct Ended<'a> {
        session: SessionId,
        reason: &'a str,
    }
    match msg {
        Msg::Invited { session } => {
            let s = sessions
                .get(*session)
                .expect("an invitation names a known session");
            encode(
                "session.invited",
                None,
                &Invited {
                    session: *session,
                    title: &s.title,
                    commander: Who::of(org, s.commander),
                },
            )
        }
        Msg::Muted { session, muted } => encode(
            "session.muted",
            None,
            &Muted {
                session: *session,
                muted: *muted,
            },
        ),
        Msg::Camera { session, pull } => encode(
            "session.camera",
            None,
            &Camera {
                session: *session,
                pull: *pull,
            },
        ),
        Msg::Removed { session } => encode("session.removed", None, &Bare { session: *session }),
        Msg::Ended { session, reason } => encode(
            "session.ended",
            None,
            &Ended {
                session: *session,
                reason,
            },
        ),
    }
}

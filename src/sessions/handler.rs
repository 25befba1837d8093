//! Terminals' session requests: parsed and checked for form here, decided by the service.

use std::sync::Arc;

use super::core::{Control, Publishes};
use super::service::{Cmd, Req, SessionsHandle};
use super::wire::{Action, ControlIn, CreateIn, InviteIn, PublishIn, SessionRef};
use crate::backplane::Outbound;
use crate::org::Org;
use crate::transport::dispatch::{Handler, Refused, Request};
use crate::transport::protocol::{ErrorCode, ProtoError, parse_data};

/// The request types the sessions service owns.
pub const KINDS: [&str; 11] = [
    "session.create",
    "session.invite",
    "session.join",
    "session.leave",
    "session.publish",
    "session.control",
    "session.get",
    "session.list",
    "session.media.answer",
    "session.media.candidate",
    "session.media.restart",
];

/// Largest SDP answer taken (a browser's, with two transceivers per member, stays far below).
const MAX_SDP: usize = 60_000;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MediaAnswerIn {
    session: super::core::SessionId,
    sdp: String,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MediaCandidateIn {
    session: super::core::SessionId,
    candidate: webrtc::peer_connection::RTCIceCandidateInit,
}

pub struct SessionsHandler {
    pub org: Arc<Org>,
    pub sessions: SessionsHandle,
    pub out: Arc<dyn Outbound>,
    /// Invitations expanded from a subtree stop past this many (the cap refuses them anyway).
    pub max_members: usize,
}

impl SessionsHandler {
    fn request(&self, req: &Request<'_>) -> Result<Req, ProtoError> {
        let (kind, data) = (req.kind, req.data);
        let invalid = |m: String| ProtoError::new(ErrorCode::InvalidData, format!("{kind}: {m}"));
        Ok(match kind {
            "session.create" => {
                let c: Box<CreateIn> = parse_data(kind, data)?;
                let invite = c
                    .invitees()
                    .resolve(&self.org, self.max_members)
                    .map_err(invalid)?;
                Req::Create {
                    title: c.title,
                    invite,
                }
            }
            "session.invite" => {
                let i: Box<InviteIn> = parse_data(kind, data)?;
                let nodes = i
                    .invitees()
                    .resolve(&self.org, self.max_members)
                    .map_err(invalid)?;
                if nodes.is_empty() {
                    return Err(invalid(
                        "name whom to invite: `invite` (node ids) or `invite_below` ({node, tier})"
                            .into(),
                    ));
                }
                Req::Invite(i.session, nodes)
            }
            "session.join" => Req::Join(parse_data::<SessionRef>(kind, data)?.session),
            "session.leave" => Req::Leave(parse_data::<SessionRef>(kind, data)?.session),
            "session.get" => Req::Get(parse_data::<SessionRef>(kind, data)?.session),
            "session.media.answer" => {
                let a: Box<MediaAnswerIn> = parse_data(kind, data)?;
                if a.sdp.is_empty() || a.sdp.len() > MAX_SDP {
                    return Err(invalid(format!(
                        "`sdp` must be 1 to {MAX_SDP} bytes; it is {}",
                        a.sdp.len()
                    )));
                }
                Req::MediaAnswer(a.session, a.sdp)
            }
            "session.media.candidate" => {
                let c: MediaCandidateIn = parse_data(kind, data)?;
                Req::MediaCandidate(c.session, c.candidate)
            }
            "session.media.restart" => {
                Req::MediaRestart(parse_data::<SessionRef>(kind, data)?.session)
            }
            "session.list" => {
                parse_data::<crate::transport::protocol::Empty>(kind, data)?;
                Req::List
            }
            "session.publish" => {
                let p: PublishIn = parse_data(kind, data)?;
                Req::Publish(
                    p.session,
                    Publishes {
                        audio: p.audio,
                        video: p.video,
                    },
                )
            }
            "session.control" => {
                let c: ControlIn = parse_data(kind, data)?;
                let target = match &c.target {
                    Some(id) => Some(
                        self.org
                            .lookup(id.as_str())
                            .ok_or_else(|| invalid(format!("no node {id} in the org tree")))?,
                    ),
                    None => None,
                };
                let need =
                    || target.ok_or_else(|| invalid(format!("`{:?}` needs a `target`", c.action)));
                let control = match c.action {
                    Action::Mute => Control::Mute {
                        node: need()?,
                        muted: true,
                    },
                    Action::Unmute => Control::Mute {
                        node: need()?,
                        muted: false,
                    },
                    Action::Remove => Control::Remove { node: need()? },
                    Action::Spotlight => Control::Spotlight {
                        node: Some(need()?),
                    },
                    Action::ClearSpotlight => Control::Spotlight { node: None },
                    Action::PullCamera => Control::PullCamera {
                        node: need()?,
                        pull: true,
                    },
                    Action::ReleaseCamera => Control::PullCamera {
                        node: need()?,
                        pull: false,
                    },
                    Action::HandOver => Control::HandOver { node: need()? },
                    Action::End => Control::End,
                };
                Req::Control(c.session, control)
            }
            other => return Err(invalid(format!("{other}: not a session request"))),
        })
    }
}

#[async_trait::async_trait]
impl Handler for SessionsHandler {
    async fn handle(&self, req: Request<'_>) -> Result<(), Refused> {
        let r = self.request(&req).map_err(|e| req.error(e))?;
        let cmd = Cmd::Request {
            origin: req.origin,
            re: req.id,
            kind: req.kind,
            req: r,
        };
        self.sessions.send(cmd, self.out.as_ref()).await;
        Ok(())
    }
}

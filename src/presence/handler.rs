//! Presence requests from terminals: `presence.set` (published to every hub node),
//! `presence.subscribe` and `presence.unsubscribe` (this node's presence actor answers them).

use std::sync::Arc;

use serde_json::json;

use super::Watch;
use super::actor::{Event, PresenceHandle};
use super::wire::{SetRequest, SubscribeRequest, Target, UnsubscribeRequest};
use crate::auth::Role;
use crate::backplane::{Outbound, To, Via};
use crate::clock::Clock;
use crate::org::Org;
use crate::scope;
use crate::transport::dispatch::{Handler, Origin, Refused, Request};
use crate::transport::protocol::{ErrorCode, ProtoError, ack};

/// The request types presence owns.
pub const KINDS: [&str; 3] = ["presence.set", "presence.subscribe", "presence.unsubscribe"];

pub struct PresenceHandler {
    pub org: Arc<Org>,
    pub presence: PresenceHandle,
    pub out: Arc<dyn Outbound>,
    pub clock: Clock,
    pub max_text_chars: usize,
}

/// Resolves a subscription target and checks it against the caller's scope.
pub fn watch_for(org: &Org, o: &Origin, target: &Target) -> Result<Watch, ProtoError> {
    let node = match target {
        Target::Chain => return Ok(Watch::Chain { of: o.endpoint }),
        Target::Node(id) => org.lookup(id.as_str()).ok_or_else(|| {
            ProtoError::new(ErrorCode::NotFound, format!("no node {id} in the org tree"))
        })?,
    };
    let cred = o.credential();
    if !scope::can_watch_subtree(org, &cred, node) {
        let me = org.node(o.endpoint);
        let it = org.node(node);
        let allowed = match o.role {
            Role::Worker => format!(
                "a worker may watch only its own node ({}) or its chain of command (`chain: true`)",
                me.id
            ),
            _ => format!("you may watch the subtree of {} ({})", me.id, me.name),
        };
        return Err(ProtoError::new(
            ErrorCode::OutOfScope,
            format!(
                "node {} ({}) is outside your scope: {allowed}",
                it.id, it.name
            ),
        ));
    }
    Ok(Watch::Subtree(node))
}

fn invalid(m: String) -> ProtoError {
    ProtoError::new(ErrorCode::InvalidData, m)
}

fn stopped() -> ProtoError {
    ProtoError::new(ErrorCode::Unavailable, "presence is shutting down")
}

#[async_trait::async_trait]
impl Handler for PresenceHandler {
    async fn handle(&self, req: Request<'_>) -> Result<(), Refused> {
        let o = req.origin;
        let fail = |e: ProtoError| req.error(e);
        match req.kind {
            // A center's status is for the people at its desks to say, not its video wall.
            "presence.set" if o.role == Role::Observer => Err(Refused::Now(fail(ProtoError::new(
                ErrorCode::OutOfScope,
                "presence.set: an observer seat (a video wall) does not set its center's status; its desks and station do",
            )))),
            "presence.set" => {
                let now = self.clock.now_ms();
                let update = SetRequest::parse(req.data)
                    .and_then(|s| s.validate(self.max_text_chars, now))
                    .map_err(|m| fail(invalid(m)))?;
                self.out
                    .bus()
                    .publish(Event::Updated {
                        ep: self.org.id(o.endpoint).clone(),
                        conn: o.conn,
                        update,
                        at: now,
                    })
                    .await;
                if let Some(f) = ack(req.id.as_ref(), &json!({})) {
                    self.out.send(To::Conn(o.conn), &f, Via::Write);
                }
                Ok(())
            }
            "presence.subscribe" => {
                let sub = SubscribeRequest::parse(req.data).map_err(|m| fail(invalid(m)))?;
                let watch = watch_for(&self.org, &o, &sub.target).map_err(fail)?;
                if self
                    .presence
                    .subscribe(o.conn, watch, sub.endpoints, req.id.clone())
                    .await
                {
                    Ok(())
                } else {
                    Err(fail(stopped()).into())
                }
            }
            _ => {
                let unsub = UnsubscribeRequest::parse(req.data).map_err(|m| fail(invalid(m)))?;
                let watch = watch_for(&self.org, &o, &unsub.target).map_err(fail)?;
                if self
                    .presence
                    .unsubscribe(o.conn, watch, req.id.clone())
                    .await
                {
                    Ok(())
                } else {
                    Err(fail(stopped()).into())
                }
            }
        }
    }
}

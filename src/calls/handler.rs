//! Call requests from terminals: parsed here, decided by the calls service (which answers on the
//! connection they came from), except `call.ice_servers`, answered at once. The `calls` section
//! of `hello` comes from here too.

use std::sync::Arc;

use serde::Serialize;

use super::config::CallsConfig;
use super::service::{CallsHandle, Cmd, Req};
use super::turn::{IceConfig, ice_config};
use super::wire::{AcceptIn, CallRef, InviteIn, RejectIn, SignalIn};
use crate::backplane::{Outbound, To, Via};
use crate::clock::Clock;
use crate::org::Org;
use crate::transport::dispatch::{Greeting, Handler, Origin, Refused, Request};
use crate::transport::protocol::{Empty, ErrorCode, ProtoError, parse_data, reply};

/// The request types the calls service owns.
pub const KINDS: [&str; 7] = [
    "call.invite",
    "call.ring",
    "call.accept",
    "call.reject",
    "call.hangup",
    "call.signal",
    "call.ice_servers",
];

pub struct CallsHandler {
    pub org: Arc<Org>,
    pub calls: CallsHandle,
    pub out: Arc<dyn Outbound>,
    pub config: Arc<CallsConfig>,
    pub clock: Clock,
}

/// The ICE servers for this terminal's calls; none for an observer seat, which takes no calls
/// (a TURN credential is a relay's bandwidth, handed out only to whoever may use it).
fn ice(cfg: &CallsConfig, org: &Org, o: &Origin, now_ms: u64) -> IceConfig {
    if o.role == crate::auth::Role::Observer {
        return IceConfig {
            ice_servers: Vec::new(),
            expires_at: None,
        };
    }
    ice_config(
        cfg,
        org.id(o.endpoint).as_str(),
        now_ms / 1000,
        o.expires_at,
    )
}

/// The `calls` section of `hello`: what a terminal needs to place and take calls.
pub fn greeting(org: Arc<Org>, cfg: Arc<CallsConfig>) -> Greeting {
    #[derive(Serialize)]
    struct CallsInfo {
        ring_timeout_ms: u64,
        max_sdp_bytes: usize,
        #[serde(flatten)]
        ice: IceConfig,
    }
    Arc::new(move |o: &Origin, now_ms: u64| {
        // Plain numbers and strings always serialize.
        serde_json::to_value(CallsInfo {
            ring_timeout_ms: cfg.ring_timeout_ms,
            max_sdp_bytes: cfg.max_sdp_bytes,
            ice: ice(&cfg, &org, o, now_ms),
        })
        .expect("the calls greeting serializes")
    })
}

impl CallsHandler {
    /// Turns a call request into a request for the calls service.
    fn request(&self, req: &Request<'_>) -> Result<Req, ProtoError> {
        let (kind, data) = (req.kind, req.data);
        let invalid = |m: String| ProtoError::new(ErrorCode::InvalidData, m);
        Ok(match kind {
            "call.invite" => {
                let i: Box<InviteIn> = parse_data(kind, data)?;
                let to = self.org.lookup(i.to.as_str()).ok_or_else(|| {
                    ProtoError::new(
                        ErrorCode::NotFound,
                        format!("call.invite: no node {} in the org tree", i.to),
                    )
                })?;
                Req::Invite {
                    to,
                    media: i.media,
                    offer: i.offer,
                }
            }
            "call.ring" => Req::Ring(parse_data::<CallRef>(kind, data)?.call),
            "call.accept" => {
                let a: Box<AcceptIn> = parse_data(kind, data)?;
                Req::Accept(a.call, a.answer)
            }
            "call.reject" => {
                let r: RejectIn = parse_data(kind, data)?;
                Req::Reject(r.call, r.reason)
            }
            "call.hangup" => Req::Hangup(parse_data::<CallRef>(kind, data)?.call),
            _ => {
                let sig: Box<SignalIn> = parse_data(kind, data)?;
                let (id, signal) = sig.into_signal().map_err(invalid)?;
                Req::Signal(id, signal)
            }
        })
    }
}

#[async_trait::async_trait]
impl Handler for CallsHandler {
    async fn handle(&self, req: Request<'_>) -> Result<(), Refused> {
        if req.kind == "call.ice_servers" {
            parse_data::<Empty>(req.kind, req.data).map_err(|e| req.error(e))?;
            if req.origin.role == crate::auth::Role::Observer {
                return Err(Refused::Now(req.error(ProtoError::new(
                    ErrorCode::OutOfScope,
                    "call.ice_servers: an observer seat (a video wall) takes no part in calls",
                ))));
            }
            let c = ice(&self.config, &self.org, &req.origin, self.clock.now_ms());
            let f = reply(req.id.as_ref(), &c);
            self.out.send(To::Conn(req.origin.conn), &f, Via::Write);
            return Ok(());
        }
        let r = self.request(&req).map_err(|e| req.error(e))?;
        let cmd = Cmd::Request {
            origin: req.origin,
            re: req.id,
            kind: req.kind,
            req: r,
            at: req.at,
        };
        self.calls.send(cmd, self.out.as_ref()).await;
        Ok(())
    }
}

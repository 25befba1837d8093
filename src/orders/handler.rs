//! Order, notice and campaign requests from terminals: parsed here, decided by the orders
//! service, answered by it through the backplane on the connection they came from.

use std::sync::Arc;

use serde::Deserialize;

use super::Who;
use super::model::{Action, OrderId};
use super::service::{CampaignIn, Cmd, NoticeIn, OrdersHandle, ReadKind, RecordIn, Reply};
use super::wire::{ActIn, CreateIn};
use crate::backplane::Outbound;
use crate::org::Org;
use crate::transport::dispatch::{Handler, Refused, Request};
use crate::transport::protocol::{ErrorCode, ProtoError, parse_data};

/// The order actions, by request type.
pub const ACTIONS: [(&str, Action); 10] = [
    ("order.dispatch", Action::Dispatch),
    ("order.acknowledge", Action::Acknowledge),
    ("order.return", Action::Return),
    ("order.reassign", Action::Reassign),
    ("order.escalate", Action::Escalate),
    ("order.report", Action::Report),
    ("order.review", Action::Review),
    ("order.rate", Action::Rate),
    ("order.publish", Action::Publish),
    ("order.archive", Action::Archive),
];

/// The request types the orders service owns.
pub const KINDS: [&str; 24] = [
    "order.create",
    "order.dispatch",
    "order.acknowledge",
    "order.return",
    "order.reassign",
    "order.escalate",
    "order.report",
    "order.review",
    "order.rate",
    "order.publish",
    "order.archive",
    "order.get",
    "order.read",
    "notice.send",
    "notice.get",
    "notice.read",
    "campaign.start",
    "campaign.get",
    "campaign.record",
    "campaign.done",
    "campaign.watch",
    "campaign.unwatch",
    "campaign.close",
    "campaign.read",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OrderRef {
    order: OrderId,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoticeRef {
    notice: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CampaignRef {
    campaign: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordsIn {
    campaign: u64,
    records: Vec<RecordIn>,
}

pub struct OrdersHandler {
    pub org: Arc<Org>,
    pub orders: OrdersHandle,
    pub out: Arc<dyn Outbound>,
}

fn invalid(m: String) -> ProtoError {
    ProtoError::new(ErrorCode::InvalidData, m)
}

impl OrdersHandler {
    /// Turns a request into a command for the service.
    fn command(&self, req: &Request<'_>) -> Result<Cmd, ProtoError> {
        let who = Who {
            node: req.origin.endpoint,
            role: req.origin.role,
        };
        let (kind, data) = (req.kind, req.data);
        let reply = || Reply::Terminal {
            conn: req.origin.conn,
            re: req.id.clone(),
            kind,
        };
        let at = req.at;
        Ok(match kind {
            "order.create" => {
                let c: Box<CreateIn> = parse_data(kind, data)?;
                let (new, key) = c
                    .into_new(&self.org)
                    .map_err(|m| invalid(format!("order.create: {m}")))?;
                Cmd::Create {
                    who,
                    new,
                    key,
                    reply: reply(),
                    at,
                }
            }
            "order.get" | "order.read" => {
                let r: OrderRef = parse_data(kind, data)?;
                if kind == "order.get" {
                    Cmd::Get {
                        who,
                        id: r.order,
                        reply: reply(),
                    }
                } else {
                    Cmd::Read {
                        who,
                        id: r.order,
                        reply: reply(),
                    }
                }
            }
            "notice.send" => Cmd::NoticeSend {
                who,
                notice: parse_data::<NoticeIn>(kind, data)?,
                reply: reply(),
            },
            "notice.get" | "notice.read" => {
                let n: NoticeRef = parse_data(kind, data)?;
                if kind == "notice.get" {
                    Cmd::NoticeGet {
                        who,
                        id: n.notice,
                        reply: reply(),
                    }
                } else {
                    Cmd::MarkRead {
                        who,
                        kind: ReadKind::Notice,
                        id: n.notice,
                        reply: reply(),
                    }
                }
            }
            "campaign.start" => Cmd::CampaignStart {
                who,
                campaign: parse_data::<CampaignIn>(kind, data)?,
                reply: reply(),
            },
            "campaign.record" => {
                let r: RecordsIn = parse_data(kind, data)?;
                Cmd::CampaignRecord {
                    who,
                    id: r.campaign,
                    records: r.records,
                    reply: reply(),
                }
            }
            "campaign.get" | "campaign.done" | "campaign.close" | "campaign.watch"
            | "campaign.unwatch" | "campaign.read" => {
                let id = parse_data::<CampaignRef>(kind, data)?.campaign;
                match kind {
                    "campaign.get" => Cmd::CampaignGet {
                        who,
                        id,
                        reply: reply(),
                    },
                    "campaign.done" => Cmd::CampaignDone {
                        who,
                        id,
                        reply: reply(),
                    },
                    "campaign.close" => Cmd::CampaignClose {
                        who,
                        id,
                        reply: reply(),
                    },
                    "campaign.read" => Cmd::MarkRead {
                        who,
                        kind: ReadKind::Campaign,
                        id,
                        reply: reply(),
                    },
                    _ => Cmd::CampaignWatch {
                        who,
                        conn: req.origin.conn,
                        id,
                        watch: kind == "campaign.watch",
                        re: req.id.clone(),
                    },
                }
            }
            other => {
                // Every other type routed here is an order action.
                let action = ACTIONS
                    .iter()
                    .find(|(k, _)| *k == other)
                    .map(|&(_, a)| a)
                    .ok_or_else(|| invalid(format!("{other}: not an order request")))?;
                let a: Box<ActIn> = parse_data(kind, data)?;
                let id = a
                    .order
                    .ok_or_else(|| invalid(format!("{other}: missing field `order`")))?;
                let expect = a.version;
                let act = a.into_act(action, &self.org).map_err(invalid)?;
                Cmd::Act {
                    who,
                    id,
                    expect,
                    act,
                    reply: reply(),
                    at,
                }
            }
        })
    }
}

#[async_trait::async_trait]
impl Handler for OrdersHandler {
    async fn handle(&self, req: Request<'_>) -> Result<(), Refused> {
        let (cmd, refused) = match self.command(&req) {
            Ok(cmd) => (cmd, None),
            // Answered in its turn like any other answer of the service: a malformed request
            // after an order still being written must not overtake that order's answer.
            Err(e) => {
                let code = e.code;
                let error = req.error(e);
                (
                    Cmd::Refuse {
                        conn: req.origin.conn,
                        error,
                    },
                    Some(code),
                )
            }
        };
        self.orders.send(cmd, self.out.as_ref()).await;
        match refused {
            Some(code) => Err(Refused::InTurn(code)),
            None => Ok(()),
        }
    }
}

//! What crosses between hub nodes: plain data, terminals named by id (never by a node's local
//! index), frames carried as their JSON text and framed again on arrival.

use serde::{Deserialize, Serialize};

use super::{Group, Pick, Via};
use crate::auth::{Role, Seat};
use crate::org::NodeId;
use crate::transport::dispatch::{ConnKey, HubId};
use crate::transport::protocol::ReqId;

/// A request's origin between nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginWire {
    pub conn: ConnKey,
    pub endpoint: NodeId,
    pub role: Role,
    #[serde(default)]
    pub seat: Seat,
    pub expires_at: u64,
}

/// One connection in a node's roster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seated {
    pub ep: NodeId,
    pub conn: ConnKey,
    pub role: Role,
    #[serde(default)]
    pub seat: Seat,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "w", rename_all = "snake_case")]
pub enum Wire {
    /// A message for one connection held by the receiving node.
    Conn {
        conn: ConnKey,
        via: Via,
        text: String,
    },
    /// A message for the seats of a terminal connected to the receiving node.
    Terminal {
        ep: NodeId,
        #[serde(default)]
        pick: Pick,
        via: Via,
        text: String,
    },
    /// One payload offered live to many terminals connected to the receiving node, each at its
    /// own sequence (the recipients of one notice there).
    Offers {
        payload: String,
        to: Vec<(NodeId, u64)>,
    },
    /// A connection has everything up to `upto`: live outbox messages after it may flow.
    Resumed {
        conn: ConnKey,
        upto: u64,
    },
    Join {
        group: Group,
        conn: ConnKey,
    },
    Leave {
        group: Group,
        conn: ConnKey,
    },
    /// A message for every member of a group on the receiving node.
    Group {
        group: Group,
        text: String,
    },
    /// A published event (see `Bus`).
    Event {
        topic: String,
        body: String,
    },
    /// Node `hub` joined the cluster, or came back to it after losing the link: each node
    /// answers with its `Roster`, and the node itself sends its own to all.
    Hello {
        hub: HubId,
    },
    /// Every connection node `hub` holds, as of this message: entries of that node the receiver
    /// has and this lacks have left, and this one's are there. Sent in order with the node's
    /// news, so it is a consistent cut of them.
    Roster {
        hub: HubId,
        seats: Vec<Seated>,
    },
    /// A request for a service that runs on the receiving node.
    Request {
        origin: OriginWire,
        id: Option<ReqId>,
        kind: String,
        data: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_round_trips_as_json() {
        let msgs = [
            Wire::Conn {
                conn: 7,
                via: Via::Post,
                text: r#"{"v":1}"#.into(),
            },
            Wire::Terminal {
                ep: NodeId::parse("230805").unwrap(),
                pick: Pick::Seat(Seat::MAIN),
                via: Via::Write,
                text: "{}".into(),
            },
            Wire::Offers {
                payload: "{}".into(),
                to: vec![(NodeId::parse("230805007").unwrap(), 4)],
            },
            Wire::Join {
                group: Group::new("campaign", 9),
                conn: 1,
            },
            Wire::Hello { hub: HubId(3) },
            Wire::Roster {
                hub: HubId(3),
                seats: vec![Seated {
                    ep: NodeId::parse("230805").unwrap(),
                    conn: 8195,
                    role: Role::Operator,
                    seat: Seat::MAIN,
                }],
            },
            Wire::Request {
                origin: OriginWire {
                    conn: 5,
                    endpoint: NodeId::parse("230805").unwrap(),
                    role: Role::Operator,
                    seat: Seat::parse("desk-2").unwrap(),
                    expires_at: 99,
                },
                id: Some(ReqId::Num(4)),
                kind: "order.get".into(),
                data: r#"{"order":1}"#.into(),
            },
        ];
        for m in msgs {
            let text = serde_json::to_string(&m).unwrap();
            assert_eq!(serde_json::from_str::<Wire>(&text).unwrap(), m, "{text}");
        }
    }
}

//! Orders on the wire and on disk: the order document, requests parsed into core types, views.
//!
//! The document names nodes by id (never by the in-memory index), so a stored order survives a
//! change of org file; it is what the store keeps, what `GET` returns and what pushes carry.

use serde::{Deserialize, Serialize};

use super::core::{Act, NewOrder};
use super::model::{Order, OrderId, Outcome, Place, Priority, Rating, Reporter, Source, State};
use crate::org::{GeoPoint, NodeId, NodeIdx, Org};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LocationDoc {
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lat: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lon: Option<f64>,
    #[serde(default)]
    pub address: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ReporterDoc {
    pub name: String,
    pub phone: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ResultDoc {
    pub text: String,
    pub by: String,
    pub at: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RatingDoc {
    pub score: u8,
    pub satisfied: bool,
    #[serde(default)]
    pub comment: String,
    pub at: u64,
}

/// Delivery of the order to its current holder: sent (seq), delivered (acknowledged), read.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DeliveryDoc {
    pub to: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    pub delivered: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_at: Option<u64>,
}

/// The whole order, as stored and as shown.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct OrderDoc {
    pub id: OrderId,
    pub source: Source,
    pub category: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    pub description: String,
    pub location: LocationDoc,
    pub priority: Priority,
    pub reporter: ReporterDoc,
    pub state: State,
    /// 1–8: the step of the eight-step method the order is at.
    pub step: u8,
    pub holder: String,
    pub chain: Vec<String>,
    pub acknowledged: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub report_chain: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<ResultDoc>,
    #[serde(default)]
    pub reviewed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rating: Option<RatingDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    pub supervision: u8,
    /// Ever supervised (late), whatever a reopening reset since; absent when never.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub late: bool,
    pub reopened: u16,
    pub version: u32,
    pub created_at: u64,
    pub updated_at: u64,
    pub due_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliveryDoc>,
}

fn step(s: State) -> u8 {
    s as u8 + 1
}

impl OrderDoc {
    /// `acked`: the highest outbox sequence the holder has acknowledged.
    pub fn of(org: &Org, o: &Order, acked: u64) -> OrderDoc {
        let id = |n: NodeIdx| org.id(n).to_string();
        OrderDoc {
            id: o.id,
            source: o.source,
            category: o.category.to_string(),
            cause: o.cause.as_deref().map(str::to_string),
            description: o.description.to_string(),
            location: LocationDoc {
                node: id(o.place.node),
                lat: o.place.point.map(|p| p.lat),
                lon: o.place.point.map(|p| p.lon),
                address: o.place.address.to_string(),
            },
            priority: o.priority,
            reporter: ReporterDoc {
                name: o.reporter.name.to_string(),
                phone: o.reporter.phone.to_string(),
            },
            state: o.state,
            step: step(o.state),
            holder: id(o.holder),
            chain: o.chain.iter().map(|&n| id(n)).collect(),
            acknowledged: o.acknowledged,
            report_chain: o.report_chain.iter().map(|&n| id(n)).collect(),
            result: o.result.as_ref().map(|r| ResultDoc {
                text: r.text.to_string(),
                by: id(r.by),
                at: r.at,
            }),
            reviewed: o.reviewed,
            rating: o.rating.as_ref().map(|r| RatingDoc {
                score: r.score,
                satisfied: r.satisfied,
                comment: r.comment.to_string(),
                at: r.at,
            }),
            summary: o.summary.as_ref().map(|s| s.to_string()),
            supervision: o.supervision,
            late: o.late,
            reopened: o.reopened,
            version: o.version,
            created_at: o.created_at,
            updated_at: o.updated_at,
            due_at: o.due_at,
            closed_at: o.closed_at,
            delivery: (o.state.is_working() || o.state == State::ResultReported).then(|| {
                DeliveryDoc {
                    to: id(o.holder),
                    seq: o.assigned_seq,
                    delivered: o.assigned_seq.is_some_and(|s| acked >= s),
                    read_at: o.read_at,
                }
            }),
        }
    }

    /// Back to the core's form; fails if a node no longer exists in the org tree.
    pub fn to_order(&self, org: &Org) -> Result<Order, String> {
        let n = |id: &str| {
            org.lookup(id)
                .ok_or_else(|| format!("order {}: node {id} is not in the org tree", self.id))
        };
        let point = match (self.location.lat, self.location.lon) {
            (Some(lat), Some(lon)) => Some(GeoPoint { lat, lon }),
            _ => None,
        };
        Ok(Order {
            id: self.id,
            source: self.source,
            category: self.category.as_str().into(),
            cause: self.cause.as_deref().map(Into::into),
            description: self.description.as_str().into(),
            place: Place {
                node: n(&self.location.node)?,
                point,
                address: self.location.address.as_str().into(),
            },
            priority: self.priority,
            reporter: Reporter {
                name: self.reporter.name.as_str().into(),
                phone: self.reporter.phone.as_str().into(),
            },
            created_at: self.created_at,
            updated_at: self.updated_at,
            due_at: self.due_at,
            state: self.state,
            holder: n(&self.holder)?,
            chain: self.chain.iter().map(|c| n(c)).collect::<Result<_, _>>()?,
            acknowledged: self.acknowledged,
            report_chain: self
                .report_chain
                .iter()
                .map(|c| n(c))
                .collect::<Result<_, _>>()?,
            result: match &self.result {
                Some(r) => Some(Outcome {
                    text: r.text.as_str().into(),
                    by: n(&r.by)?,
                    at: r.at,
                }),
                None => None,
            },
            reviewed: self.reviewed,
            rating: self.rating.as_ref().map(|r| Rating {
                score: r.score,
                satisfied: r.satisfied,
                comment: r.comment.as_str().into(),
                at: r.at,
            }),
            summary: self.summary.as_deref().map(Into::into),
            supervision: self.supervision,
            late: self.late,
            reopened: self.reopened,
            version: self.version,
            closed_at: self.closed_at,
            assigned_seq: self.delivery.as_ref().and_then(|d| d.seq),
            read_at: self.delivery.as_ref().and_then(|d| d.read_at),
        })
    }

    /// The form every public view shows: reporter masked.
    pub fn masked(mut self) -> OrderDoc {
        let r = Reporter {
            name: self.reporter.name.as_str().into(),
            phone: self.reporter.phone.as_str().into(),
        }
        .masked();
        self.reporter = ReporterDoc {
            name: r.name.into(),
            phone: r.phone.into(),
        };
        self
    }
}

/// The order document serialized straight from the order, borrowing everything: the same JSON
/// as `OrderDoc::of` (a test holds them equal) without building the owned document first. Every
/// push and reply uses it; `OrderDoc` remains the form read back from storage.
pub struct DocView<'a> {
    pub org: &'a Org,
    pub order: &'a Order,
    /// Highest outbox sequence the holder acknowledged.
    pub acked: u64,
    /// Show the reporter masked.
    pub masked: bool,
}

struct Ids<'a>(&'a Org, &'a [NodeIdx]);

impl Serialize for Ids<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.1.iter().map(|&n| self.0.id(n).as_str()))
    }
}

impl Serialize for DocView<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let (org, o) = (self.org, self.order);
        let id = |n: NodeIdx| org.id(n).as_str();
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("id", &o.id)?;
        m.serialize_entry("source", &o.source)?;
        m.serialize_entry("category", &*o.category)?;
        if let Some(c) = &o.cause {
            m.serialize_entry("cause", &**c)?;
        }
        m.serialize_entry("description", &*o.description)?;
        #[derive(Serialize)]
        struct Loc<'b> {
            node: &'b str,
            #[serde(skip_serializing_if = "Option::is_none")]
            lat: Option<f64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            lon: Option<f64>,
            address: &'b str,
        }
        m.serialize_entry(
            "location",
            &Loc {
                node: id(o.place.node),
                lat: o.place.point.map(|p| p.lat),
                lon: o.place.point.map(|p| p.lon),
                address: &o.place.address,
            },
        )?;
        m.serialize_entry("priority", &o.priority)?;
        #[derive(Serialize)]
        struct Who<'b> {
            name: &'b str,
            phone: &'b str,
        }
        if self.masked {
            let r = o.reporter.masked();
            m.serialize_entry(
                "reporter",
                &Who {
                    name: &r.name,
                    phone: &r.phone,
                },
            )?;
        } else {
            m.serialize_entry(
                "reporter",
                &Who {
                    name: &o.reporter.name,
                    phone: &o.reporter.phone,
                },
            )?;
        }
        m.serialize_entry("state", &o.state)?;
        m.serialize_entry("step", &step(o.state))?;
        m.serialize_entry("holder", id(o.holder))?;
        m.serialize_entry("chain", &Ids(org, &o.chain))?;
        m.serialize_entry("acknowledged", &o.acknowledged)?;
        if !o.report_chain.is_empty() {
            m.serialize_entry("report_chain", &Ids(org, &o.report_chain))?;
        }
        if let Some(r) = &o.result {
            #[derive(Serialize)]
            struct R<'b> {
                text: &'b str,
                by: &'b str,
                at: u64,
            }
            m.serialize_entry(
                "result",
                &R {
                    text: &r.text,
                    by: id(r.by),
                    at: r.at,
                },
            )?;
        }
        m.serialize_entry("reviewed", &o.reviewed)?;
        if let Some(r) = &o.rating {
            #[derive(Serialize)]
            struct R<'b> {
                score: u8,
                satisfied: bool,
                comment: &'b str,
                at: u64,
            }
            m.serialize_entry(
                "rating",
                &R {
                    score: r.score,
                    satisfied: r.satisfied,
                    comment: &r.comment,
                    at: r.at,
                },
            )?;
        }
        if let Some(sm) = &o.summary {
            m.serialize_entry("summary", &**sm)?;
        }
        m.serialize_entry("supervision", &o.supervision)?;
        if o.late {
            m.serialize_entry("late", &true)?;
        }
        m.serialize_entry("reopened", &o.reopened)?;
        m.serialize_entry("version", &o.version)?;
        m.serialize_entry("created_at", &o.created_at)?;
        m.serialize_entry("updated_at", &o.updated_at)?;
        m.serialize_entry("due_at", &o.due_at)?;
        if let Some(c) = o.closed_at {
            m.serialize_entry("closed_at", &c)?;
        }
        if o.state.is_working() || o.state == State::ResultReported {
            #[derive(Serialize)]
            struct D<'b> {
                to: &'b str,
                #[serde(skip_serializing_if = "Option::is_none")]
                seq: Option<u64>,
                delivered: bool,
                #[serde(skip_serializing_if = "Option::is_none")]
                read_at: Option<u64>,
            }
            m.serialize_entry(
                "delivery",
                &D {
                    to: id(o.holder),
                    seq: o.assigned_seq,
                    delivered: o.assigned_seq.is_some_and(|s| self.acked >= s),
                    read_at: o.read_at,
                },
            )?;
        }
        m.end()
    }
}

/// What consoles watching a subtree receive for each changed order.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub id: OrderId,
    pub state: State,
    pub step: u8,
    pub category: String,
    pub priority: Priority,
    pub node: String,
    pub holder: String,
    pub supervision: u8,
    pub reopened: u16,
    pub version: u32,
    pub updated_at: u64,
    pub due_at: u64,
}

impl Summary {
    pub fn of(org: &Org, o: &Order) -> Summary {
        Summary {
            id: o.id,
            state: o.state,
            step: step(o.state),
            category: o.category.to_string(),
            priority: o.priority,
            node: org.id(o.place.node).to_string(),
            holder: org.id(o.holder).to_string(),
            supervision: o.supervision,
            reopened: o.reopened,
            version: o.version,
            updated_at: o.updated_at,
            due_at: o.due_at,
        }
    }
}

// ---- Requests ----------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocationIn {
    pub node: NodeId,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
    #[serde(default)]
    pub address: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReporterIn {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub phone: String,
}

/// `order.create` / `POST /api/v1/orders`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateIn {
    pub source: Source,
    pub category: String,
    /// One of the category's causes, when the intake already knows it.
    #[serde(default)]
    pub cause: Option<String>,
    pub description: String,
    pub location: LocationIn,
    pub priority: Priority,
    #[serde(default)]
    pub reporter: Option<ReporterIn>,
    /// Over WebSocket; REST uses the `Idempotency-Key` header.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// Longest idempotency key accepted.
pub const MAX_IDEMPOTENCY_KEY: usize = 128;

impl CreateIn {
    /// Resolves node ids against the org tree.
    pub fn into_new(self, org: &Org) -> Result<(NewOrder, Option<String>), String> {
        if self.source == Source::Analysis {
            return Err("source analysis is the hub's own, for tasks pushed from a hotspot (POST /api/v1/analysis/interventions)".into());
        }
        let node = org.lookup(self.location.node.as_str()).ok_or_else(|| {
            format!(
                "location.node {} is not in the org tree",
                self.location.node
            )
        })?;
        let point = match (self.location.lat, self.location.lon) {
            (Some(lat), Some(lon)) => Some(GeoPoint { lat, lon }),
            (None, None) => None,
            _ => return Err("location needs both lat and lon, or neither".into()),
        };
        if let Some(k) = &self.idempotency_key {
            check_key(k)?;
        }
        let reporter = self.reporter.unwrap_or(ReporterIn {
            name: String::new(),
            phone: String::new(),
        });
        Ok((
            NewOrder {
                source: self.source,
                category: self.category,
                cause: self.cause,
                description: self.description,
                node,
                point,
                address: self.location.address,
                priority: self.priority,
                reporter_name: reporter.name,
                reporter_phone: reporter.phone,
            },
            self.idempotency_key,
        ))
    }
}

pub fn check_key(k: &str) -> Result<(), String> {
    if k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY || !k.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "idempotency key must be 1–{MAX_IDEMPOTENCY_KEY} visible ASCII characters"
        ));
    }
    Ok(())
}

/// A stable 64-bit hash (FNV-1a) of a create request, to tell a retry from a different request
/// under the same idempotency key.
pub fn request_hash(new: &NewOrder) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut canonical = format!(
        "{}\u{1}{}\u{1}{}\u{1}{}\u{1}{:?}\u{1}{}\u{1}{}\u{1}{}\u{1}{}",
        new.source.as_str(),
        new.category,
        new.description,
        new.node.0,
        new.point.map(|p| (p.lat.to_bits(), p.lon.to_bits())),
        new.address,
        new.priority.as_str(),
        new.reporter_name,
        new.reporter_phone
    );
    // Appended only when named, so a request without one hashes as it did before causes were.
    if let Some(c) = &new.cause {
        canonical.push_str("\u{1}cause\u{1}");
        canonical.push_str(c);
    }
    for b in canonical.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Fields any action may carry; each action uses its own.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActIn {
    /// The order (WebSocket; REST has it in the path).
    #[serde(default)]
    pub order: Option<OrderId>,
    /// Optimistic concurrency: refuse if the order moved past this version.
    #[serde(default)]
    pub version: Option<u32>,
    pub to: Option<NodeId>,
    pub note: Option<String>,
    pub reason: Option<String>,
    pub result: Option<String>,
    /// With a report: the cause found (one of the category's).
    pub cause: Option<String>,
    pub approve: Option<bool>,
    pub comment: Option<String>,
    pub score: Option<u8>,
    pub satisfied: Option<bool>,
    pub summary: Option<String>,
}

impl ActIn {
    /// Builds the core action named `action` from these fields.
    pub fn into_act(self, action: super::model::Action, org: &Org) -> Result<Act, String> {
        use super::model::Action as A;
        let name = action.as_str();
        let need = |v: Option<String>, field: &str| {
            v.ok_or_else(|| format!("order.{name}: missing field `{field}`"))
        };
        let node = |v: Option<NodeId>| -> Result<NodeIdx, String> {
            let id = v.ok_or_else(|| format!("order.{name}: missing field `to`"))?;
            org.lookup(id.as_str())
                .ok_or_else(|| format!("order.{name}: `to` {id} is not in the org tree"))
        };
        Ok(match action {
            A::Dispatch => Act::Dispatch {
                to: node(self.to)?,
                note: self.note,
            },
            A::Acknowledge => Act::Acknowledge,
            A::Return => Act::Return {
                reason: need(self.reason, "reason")?,
            },
            A::Reassign => Act::Reassign {
                to: node(self.to)?,
                reason: self.reason,
            },
            A::Escalate => Act::Escalate {
                reason: need(self.reason, "reason")?,
            },
            A::Report => Act::Report {
                result: need(self.result, "result")?,
                cause: self.cause,
            },
            A::Review => Act::Review {
                approve: self
                    .approve
                    .ok_or_else(|| format!("order.{name}: missing field `approve`"))?,
                comment: self.comment,
            },
            A::Rate => Act::Rate {
                score: self
                    .score
                    .ok_or_else(|| format!("order.{name}: missing field `score`"))?,
                satisfied: self
                    .satisfied
                    .ok_or_else(|| format!("order.{name}: missing field `satisfied`"))?,
                comment: self.comment,
            },
            A::Publish => Act::Publish {
                summary: need(self.summary, "summary")?,
            },
            A::Archive => Act::Archive,
            A::Create | A::Supervise => {
                return Err(format!("{name} is not an action on an existing order"));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orders::model::Action;

    #[test]
    fn documents_round_trip_through_node_ids() {
        let org = crate::org::fixture();
        let n = |s| org.lookup(s).unwrap();
        let o = Order {
            id: OrderId(7),
            source: Source::App,
            category: "noise".into(),
            cause: Some("square_dance".into()),
            description: "d".into(),
            place: Place {
                node: n("w1"),
                point: Some(GeoPoint { lat: 1.0, lon: 2.0 }),
                address: "a".into(),
            },
            priority: Priority::Urgent,
            reporter: Reporter {
                name: "张伟".into(),
                phone: "13812345678".into(),
            },
            created_at: 1,
            updated_at: 2,
            due_at: 3,
            state: State::ResultReported,
            holder: n("v"),
            chain: vec![n("c"), n("v")],
            acknowledged: true,
            report_chain: vec![n("c"), n("v"), n("w1")],
            result: Some(Outcome {
                text: "r".into(),
                by: n("w1"),
                at: 4,
            }),
            reviewed: false,
            rating: None,
            summary: None,
            supervision: 1,
            late: true,
            reopened: 0,
            version: 5,
            closed_at: None,
            assigned_seq: Some(9),
            read_at: Some(5),
        };
        let doc = OrderDoc::of(&org, &o, 9);
        assert_eq!(doc.step, 5);
        assert!(doc.delivery.as_ref().unwrap().delivered);
        let json = serde_json::to_string(&doc).unwrap();
        let back: OrderDoc = serde_json::from_str(&json).unwrap();
        assert_eq!(back.to_order(&org).unwrap(), o);
        let masked = doc.masked();
        assert_eq!(
            (
                masked.reporter.name.as_str(),
                masked.reporter.phone.as_str()
            ),
            ("张*", "138****5678")
        );
    }

    #[test]
    fn actions_need_their_fields() {
        let org = crate::org::fixture();
        let a: ActIn = serde_json::from_str(r#"{"order":3,"to":"a"}"#).unwrap();
        assert!(matches!(
            a.into_act(Action::Dispatch, &org),
            Ok(Act::Dispatch { .. })
        ));
        let a: ActIn = serde_json::from_str(r#"{"order":3}"#).unwrap();
        assert_eq!(
            a.into_act(Action::Return, &org).unwrap_err(),
            "order.return: missing field `reason`"
        );
        let a: ActIn = serde_json::from_str(r#"{"order":3,"to":"nowhere"}"#).unwrap();
        assert!(
            a.into_act(Action::Dispatch, &org)
                .unwrap_err()
                .contains("not in the org tree")
        );
        assert!(serde_json::from_str::<ActIn>(r#"{"order":3,"colour":"red"}"#).is_err());
    }

    #[test]
    fn create_requests_resolve_nodes_and_hash_stably() {
        let org = crate::org::fixture();
        let json = r#"{"source":"hotline_12345","category":"noise","description":"吵",
            "location":{"node":"w1","lat":46.8,"lon":130.3},"priority":"routine",
            "reporter":{"name":"张伟","phone":"13812345678"},"idempotency_key":"k1"}"#;
        let (new, key) = serde_json::from_str::<CreateIn>(json)
            .unwrap()
            .into_new(&org)
            .unwrap();
        assert_eq!(key.as_deref(), Some("k1"));
        let again = serde_json::from_str::<CreateIn>(json)
            .unwrap()
            .into_new(&org)
            .unwrap()
            .0;
        assert_eq!(request_hash(&new), request_hash(&again));
        let mut other = again.clone();
        other.description = "很吵".into();
        assert_ne!(request_hash(&new), request_hash(&other));
        let bad = r#"{"source":"fax","category":"noise","description":"x","location":{"node":"w1"},"priority":"routine"}"#;
        assert!(
            serde_json::from_str::<CreateIn>(bad)
                .unwrap_err()
                .to_string()
                .contains("fax")
        );
        let half = r#"{"source":"app","category":"noise","description":"x","location":{"node":"w1","lat":1},"priority":"routine"}"#;
        assert!(
            serde_json::from_str::<CreateIn>(half)
                .unwrap()
                .into_new(&org)
                .unwrap_err()
                .contains("both lat and lon")
        );
    }
}

//! Presence on the wire: request bodies (parsed and validated at the edge) and the encoders that
//! turn a snapshot or a fan-out batch into JSON, reading straight from the core's state.

use bytes::Bytes;
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Serialize, Serializer};

use super::core::{Chosen, Fanout, Location, Presence, Snapshot, Status, Update, present};
use crate::org::{GeoPoint, NodeId, NodeIdx};
use crate::transport::protocol::{ReqId, encode};

/// `presence.set`: any of status, text, location.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetRequest {
    pub status: Option<Chosen>,
    /// `null` or `""` clears the text.
    #[serde(default, deserialize_with = "present")]
    pub text: Option<Option<String>>,
    pub location: Option<LocationIn>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocationIn {
    pub lat: f64,
    pub lon: f64,
    pub accuracy_m: Option<f32>,
}

impl SetRequest {
    /// Checks the values and stamps the location with the time it arrived.
    pub fn validate(self, max_text_chars: usize, now: u64) -> Result<Update, String> {
        if self.status.is_none() && self.text.is_none() && self.location.is_none() {
            return Err("presence.set: nothing to change; give status, text or location".into());
        }
        let text = match self.text {
            None => None,
            Some(None) => Some(None),
            Some(Some(t)) if t.is_empty() => Some(None),
            Some(Some(t)) => {
                let n = t.chars().count();
                if n > max_text_chars {
                    return Err(format!(
                        "presence.set: text is {n} characters; at most {max_text_chars} are allowed"
                    ));
                }
                if t.chars().any(char::is_control) {
                    return Err("presence.set: text must not contain control characters".into());
                }
                Some(Some(t.into_boxed_str()))
            }
        };
        let location = match self.location {
            None => None,
            Some(l) => {
                if !(GeoPoint {
                    lat: l.lat,
                    lon: l.lon,
                })
                .is_valid()
                {
                    return Err(format!(
                        "presence.set: location ({}, {}) is outside [-90, 90] × [-180, 180]",
                        l.lat, l.lon
                    ));
                }
                if let Some(a) = l.accuracy_m
                    && !(a.is_finite() && a >= 0.0)
                {
                    return Err("presence.set: accuracy_m must be a non-negative number".into());
                }
                Some(Location {
                    lat: l.lat,
                    lon: l.lon,
                    accuracy_m: l.accuracy_m,
                    at: now,
                })
            }
        };
        Ok(Update {
            status: self.status,
            text,
            location,
        })
    }
}

/// What a subscription is for: a subtree, or the caller's own chain of command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Node(NodeId),
    Chain,
}

/// Shared by subscribe and unsubscribe: `node`, or `chain: true`, never both.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetIn {
    node: Option<NodeId>,
    #[serde(default)]
    chain: bool,
    #[serde(default = "yes")]
    endpoints: bool,
}

fn yes() -> bool {
    true
}

impl TargetIn {
    fn target(&self, kind: &str) -> Result<Target, String> {
        match (&self.node, self.chain) {
            (Some(n), false) => Ok(Target::Node(n.clone())),
            (None, true) => Ok(Target::Chain),
            (Some(_), true) => Err(format!(
                "{kind}: give either `node` or `chain: true`, not both"
            )),
            (None, false) => Err(format!("{kind}: missing field `node` (or `chain: true`)")),
        }
    }
}

/// `presence.subscribe`.
#[derive(Debug)]
pub struct SubscribeRequest {
    pub target: Target,
    /// `false`: aggregates only (a wall overview that does not list terminals).
    pub endpoints: bool,
}

/// `presence.unsubscribe`: the same target as the subscription.
#[derive(Debug)]
pub struct UnsubscribeRequest {
    pub target: Target,
}

impl SubscribeRequest {
    pub fn parse(data: &str) -> Result<SubscribeRequest, String> {
        let t: TargetIn = from_data("presence.subscribe", data)?;
        Ok(SubscribeRequest {
            target: t.target("presence.subscribe")?,
            endpoints: t.endpoints,
        })
    }
}

impl UnsubscribeRequest {
    pub fn parse(data: &str) -> Result<UnsubscribeRequest, String> {
        let t: TargetIn = from_data("presence.unsubscribe", data)?;
        if !t.endpoints {
            return Err("presence.unsubscribe: `endpoints` belongs to presence.subscribe".into());
        }
        Ok(UnsubscribeRequest {
            target: t.target("presence.unsubscribe")?,
        })
    }
}

impl SetRequest {
    pub fn parse(data: &str) -> Result<SetRequest, String> {
        from_data("presence.set", data)
    }
}

/// Parses a request's `data`, prefixing serde's message (which names the field) with the kind.
pub fn from_data<'a, T: Deserialize<'a>>(kind: &str, data: &'a str) -> Result<T, String> {
    serde_json::from_str(data).map_err(|e| {
        // The position serde reports is within `data`, not the frame: drop it.
        let msg = e.to_string();
        let msg = msg.split(" at line ").next().unwrap_or(&msg);
        format!("{kind}: {msg}")
    })
}

struct EndpointView<'a>(&'a Presence, NodeIdx);

impl Serialize for EndpointView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let e = self.0.entry(self.1);
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("id", self.0.org().id(self.1))?;
        m.serialize_entry("status", &e.status())?;
        if let Some(t) = &e.text {
            m.serialize_entry("text", t)?;
        }
        if let Some(l) = &e.location {
            m.serialize_entry("location", l)?;
        }
        m.serialize_entry("since", &e.since)?;
        if e.lists_seats() {
            let mut seats: smallvec::SmallVec<[&str; 4]> =
                e.seats.iter().map(|s| s.0.as_str()).collect();
            seats.sort_unstable();
            m.serialize_entry("seats", &seats[..])?;
        }
        m.end()
    }
}

struct AggregateView<'a>(&'a Presence, NodeIdx);

impl Serialize for AggregateView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let a = self.0.aggregate(self.1);
        let mut m = s.serialize_map(Some(7))?;
        m.serialize_entry("node", self.0.org().id(self.1))?;
        m.serialize_entry("total", &a.total())?;
        m.serialize_entry("online", &a.online())?;
        for st in [
            Status::Busy,
            Status::InCall,
            Status::InSession,
            Status::Away,
        ] {
            m.serialize_entry(st.as_str(), &a.count(st))?;
        }
        m.end()
    }
}

struct List<'a, F>(&'a Presence, &'a [NodeIdx], F);

impl<'a, V: Serialize, F: Fn(&'a Presence, NodeIdx) -> V> Serialize for List<'a, F> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.1.len()))?;
        for &n in self.1 {
            seq.serialize_element(&(self.2)(self.0, n))?;
        }
        seq.end()
    }
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<&'a NodeId>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    chain: bool,
    seq: u64,
    endpoints: List<'a, fn(&'a Presence, NodeIdx) -> EndpointView<'a>>,
    aggregates: List<'a, fn(&'a Presence, NodeIdx) -> AggregateView<'a>>,
}

fn body<'a>(
    p: &'a Presence,
    node: Option<NodeIdx>,
    eps: &'a [NodeIdx],
    aggs: &'a [NodeIdx],
) -> Body<'a> {
    Body {
        node: node.map(|n| p.org().id(n)),
        chain: node.is_none(),
        seq: p.seq(),
        endpoints: List(p, eps, EndpointView),
        aggregates: List(p, aggs, AggregateView),
    }
}

/// The snapshot as the `data` of a reply (WebSocket) or a response body (REST).
pub fn snapshot_json(p: &Presence, s: &Snapshot) -> Vec<u8> {
    // Serializing into a Vec cannot fail for these types.
    serde_json::to_vec(&body(p, s.node, &s.endpoints, &s.aggregates)).expect("snapshot encodes")
}

pub fn snapshot_reply(p: &Presence, s: &Snapshot, re: Option<&ReqId>) -> Bytes {
    crate::transport::protocol::reply(re, &body(p, s.node, &s.endpoints, &s.aggregates))
}

/// One `presence.delta` frame for every recipient of a fan-out.
pub fn delta_frame(p: &Presence, f: &Fanout) -> Bytes {
    encode(
        "presence.delta",
        None,
        &body(p, f.node, &f.endpoints, &f.aggregates),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(json: &str) -> Result<Update, String> {
        SetRequest::parse(json)?.validate(8, 42)
    }

    #[test]
    fn set_requests_are_validated() {
        let u = set(r#"{"status":"busy","text":"巡查中","location":{"lat":46.8,"lon":130.3}}"#)
            .unwrap();
        assert_eq!(u.status, Some(Chosen::Busy));
        assert_eq!(u.text, Some(Some("巡查中".into())));
        assert_eq!(u.location.unwrap().at, 42);
        assert_eq!(set(r#"{"text":null}"#).unwrap().text, Some(None));
        assert_eq!(set(r#"{"text":""}"#).unwrap().text, Some(None));
        assert!(set("{}").unwrap_err().contains("nothing to change"));
        assert!(
            set(r#"{"text":"123456789"}"#)
                .unwrap_err()
                .contains("9 characters")
        );
        assert!(
            set(r#"{"text":"a\u0007"}"#)
                .unwrap_err()
                .contains("control")
        );
        assert!(
            set(r#"{"location":{"lat":91,"lon":0}}"#)
                .unwrap_err()
                .contains("outside")
        );
        assert!(set(r#"{"location":{"lat":1,"lon":0,"accuracy_m":-1}}"#).is_err());
        assert!(
            set(r#"{"status":"in_call"}"#)
                .unwrap_err()
                .contains("unknown variant")
        );
        assert!(
            set(r#"{"status":"busy","mood":1}"#)
                .unwrap_err()
                .contains("mood")
        );
    }

    #[test]
    fn targets() {
        assert!(
            SubscribeRequest::parse(r#"{"node":"a","chain":true}"#)
                .unwrap_err()
                .contains("not both")
        );
        assert!(
            SubscribeRequest::parse("{}")
                .unwrap_err()
                .contains("missing field `node`")
        );
        assert_eq!(
            SubscribeRequest::parse(r#"{"chain":true}"#).unwrap().target,
            Target::Chain
        );
        let s = SubscribeRequest::parse(r#"{"node":"a","endpoints":false}"#).unwrap();
        assert_eq!(
            (s.target, s.endpoints),
            (Target::Node(NodeId::parse("a").unwrap()), false)
        );
        let e = SubscribeRequest::parse(r#"{"node":"a b"}"#).unwrap_err();
        assert!(e.contains("only letters, digits"), "{e}");
        assert!(UnsubscribeRequest::parse(r#"{"node":"a","endpoints":false}"#).is_err());
    }
}

//! Protocol v1: JSON text frames in a versioned envelope.
//!
//! Inbound: `{"v":1,"id":<string|number>,"type":"<kind>","data":{...}}`. The envelope is parsed
//! first, borrowing `data` as raw JSON, and then `data` is parsed for its kind — so an error can
//! say exactly which part was wrong and echo the request id. Outbound frames are encoded once,
//! straight into a WebSocket frame buffer. docs/protocol.md documents every message.

use std::borrow::Cow;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::frame::text_frame_with;
use crate::orders::model::{Action, OrderId};
use crate::orders::service::{CampaignIn, NoticeIn, RecordIn};
use crate::orders::wire::{ActIn, CreateIn};
use crate::org::NodeId;
use crate::presence::wire::{SetRequest, SubscribeRequest, UnsubscribeRequest, from_data};

pub const VERSION: u32 = 1;
/// Longest request id echoed back; longer ones are refused so replies stay small.
pub const MAX_ID_LEN: usize = 64;

/// A request id as the client sent it: echoed back verbatim in `re`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum ReqId {
    Num(u64),
    Str(Box<str>),
}

impl<'de> Deserialize<'de> for ReqId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw<'a> {
            Num(u64),
            #[serde(borrow)]
            Str(Cow<'a, str>),
        }
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom("`id` must be a string or a non-negative integer")
        })? {
            Raw::Num(n) => Ok(ReqId::Num(n)),
            Raw::Str(s) if s.len() <= MAX_ID_LEN => Ok(ReqId::Str(s.into())),
            Raw::Str(s) => Err(serde::de::Error::custom(format!(
                "`id` is {} bytes long; at most {MAX_ID_LEN} are allowed",
                s.len()
            ))),
        }
    }
}

/// Machine-readable error codes. Stable: clients switch on them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadUtf8,
    BadJson,
    BadEnvelope,
    UnsupportedVersion,
    UnknownType,
    InvalidData,
    MessageTooLarge,
    BinaryNotSupported,
    OutOfScope,
    NotFound,
    RateLimited,
    TooManySubscriptions,
    NotSubscribed,
    Unavailable,
    IllegalTransition,
    UnknownCategory,
    InvalidTarget,
    IdempotencyConflict,
    VersionConflict,
    Offline,
    Busy,
    NotAParty,
    CallEnded,
    Glare,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadUtf8 => "bad_utf8",
            ErrorCode::BadJson => "bad_json",
            ErrorCode::BadEnvelope => "bad_envelope",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::InvalidData => "invalid_data",
            ErrorCode::MessageTooLarge => "message_too_large",
            ErrorCode::BinaryNotSupported => "binary_not_supported",
            ErrorCode::OutOfScope => "out_of_scope",
            ErrorCode::NotFound => "not_found",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::NotSubscribed => "not_subscribed",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::IllegalTransition => "illegal_transition",
            ErrorCode::UnknownCategory => "unknown_category",
            ErrorCode::InvalidTarget => "invalid_target",
            ErrorCode::IdempotencyConflict => "idempotency_conflict",
            ErrorCode::VersionConflict => "version_conflict",
            ErrorCode::Offline => "offline",
            ErrorCode::Busy => "busy",
            ErrorCode::NotAParty => "not_a_party",
            ErrorCode::CallEnded => "call_ended",
            ErrorCode::Glare => "glare",
        }
    }
}

/// A typed error reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtoError {
    pub re: Option<ReqId>,
    /// The request's `type`, when it was readable.
    pub kind: Option<Box<str>>,
    pub code: ErrorCode,
    pub message: String,
}

impl ProtoError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ProtoError {
        ProtoError {
            re: None,
            kind: None,
            code,
            message: message.into(),
        }
    }

    /// The error answers request `re` of type `kind` (for services that hold only those).
    pub fn answering(mut self, re: Option<ReqId>, kind: &str) -> ProtoError {
        self.re = re;
        self.kind = Some(kind.into());
        self
    }

    pub fn to(mut self, req: &Request) -> ProtoError {
        self.re = req.id.clone();
        self.kind = Some(req.body.kind().into());
        self
    }

    pub fn encode(&self) -> Bytes {
        #[derive(Serialize)]
        struct Data<'a> {
            code: ErrorCode,
            message: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            request_type: Option<&'a str>,
        }
        encode(
            "error",
            self.re.as_ref(),
            &Data {
                code: self.code,
                message: &self.message,
                request_type: self.kind.as_deref(),
            },
        )
    }
}

#[derive(Debug)]
pub struct Request {
    pub id: Option<ReqId>,
    pub body: Body,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderRef {
    pub order: OrderId,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRef {
    pub node: NodeId,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoticeRef {
    pub notice: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignRef {
    pub campaign: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordsIn {
    pub campaign: u64,
    pub records: Vec<RecordIn>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResumeIn {
    /// The last sequence the terminal has; 0 for everything still kept.
    #[serde(default)]
    pub after: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckIn {
    pub seq: u64,
}

/// A request that takes no data: `{}` or none at all.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

/// Every request a terminal may send.
#[derive(Debug)]
pub enum Body {
    Ping,
    PresenceSet(SetRequest),
    PresenceSubscribe(SubscribeRequest),
    PresenceUnsubscribe(UnsubscribeRequest),
    OrderCreate(Box<CreateIn>),
    OrderAct(Action, Box<ActIn>),
    OrderGet(OrderRef),
    OrderRead(OrderRef),
    OrdersSubscribe(NodeRef),
    OrdersUnsubscribe(NodeRef),
    OutboxResume(ResumeIn),
    OutboxAck(AckIn),
    NoticeSend(Box<NoticeIn>),
    NoticeGet(NoticeRef),
    NoticeRead(NoticeRef),
    CampaignStart(Box<CampaignIn>),
    CampaignGet(CampaignRef),
    CampaignRecord(RecordsIn),
    CampaignDone(CampaignRef),
    CampaignWatch(CampaignRef),
    CampaignUnwatch(CampaignRef),
    CampaignClose(CampaignRef),
    CallInvite(Box<crate::calls::wire::InviteIn>),
    CallRing(crate::calls::wire::CallRef),
    CallAccept(Box<crate::calls::wire::AcceptIn>),
    CallReject(crate::calls::wire::RejectIn),
    CallHangup(crate::calls::wire::CallRef),
    CallSignal(Box<crate::calls::wire::SignalIn>),
    CallIceServers,
}

/// The order actions, by request type.
const ORDER_ACTIONS: [(&str, Action); 10] = [
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

impl Body {
    pub fn kind(&self) -> &'static str {
        match self {
            Body::Ping => "ping",
            Body::PresenceSet(_) => "presence.set",
            Body::PresenceSubscribe(_) => "presence.subscribe",
            Body::PresenceUnsubscribe(_) => "presence.unsubscribe",
            Body::OrderCreate(_) => "order.create",
            Body::OrderAct(a, _) => ORDER_ACTIONS
                .iter()
                .find(|(_, x)| x == a)
                .map_or("order.act", |(k, _)| k),
            Body::OrderGet(_) => "order.get",
            Body::OrderRead(_) => "order.read",
            Body::OrdersSubscribe(_) => "orders.subscribe",
            Body::OrdersUnsubscribe(_) => "orders.unsubscribe",
            Body::OutboxResume(_) => "outbox.resume",
            Body::OutboxAck(_) => "outbox.ack",
            Body::NoticeSend(_) => "notice.send",
            Body::NoticeGet(_) => "notice.get",
            Body::NoticeRead(_) => "notice.read",
            Body::CampaignStart(_) => "campaign.start",
            Body::CampaignGet(_) => "campaign.get",
            Body::CampaignRecord(_) => "campaign.record",
            Body::CampaignDone(_) => "campaign.done",
            Body::CampaignWatch(_) => "campaign.watch",
            Body::CampaignUnwatch(_) => "campaign.unwatch",
            Body::CampaignClose(_) => "campaign.close",
            Body::CallInvite(_) => "call.invite",
            Body::CallRing(_) => "call.ring",
            Body::CallAccept(_) => "call.accept",
            Body::CallReject(_) => "call.reject",
            Body::CallHangup(_) => "call.hangup",
            Body::CallSignal(_) => "call.signal",
            Body::CallIceServers => "call.ice_servers",
        }
    }
}

/// The request types, for `unknown_type` messages.
pub const KINDS: [&str; 38] = [
    "ping",
    "presence.set",
    "presence.subscribe",
    "presence.unsubscribe",
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
    "orders.subscribe",
    "orders.unsubscribe",
    "outbox.resume",
    "outbox.ack",
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
    "call.invite",
    "call.ring",
    "call.accept",
    "call.reject",
    "call.hangup",
    "call.signal",
    "call.ice_servers",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope<'a> {
    v: Option<u32>,
    id: Option<ReqId>,
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

/// Salvages the id from an envelope that failed strict parsing, so the error can echo it.
fn salvage_id(text: &str) -> Option<ReqId> {
    #[derive(Deserialize)]
    struct IdOnly {
        id: Option<ReqId>,
    }
    serde_json::from_str::<IdOnly>(text).ok().and_then(|x| x.id)
}

/// Parses one text message into a request. Pure: fuzzable, no IO.
pub fn decode(bytes: &[u8]) -> Result<Request, ProtoError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        ProtoError::new(
            ErrorCode::BadUtf8,
            format!("text frame is not valid UTF-8 ({e})"),
        )
    })?;
    let env: Envelope<'_> = serde_json::from_str(text).map_err(|e| {
        let (code, what) = if e.is_syntax() || e.is_eof() {
            (ErrorCode::BadJson, "message is not valid JSON")
        } else {
            (ErrorCode::BadEnvelope, "bad envelope")
        };
        ProtoError {
            re: salvage_id(text),
            kind: None,
            code,
            message: format!("{what}: {e}"),
        }
    })?;
    let fail = |code, message: String| ProtoError {
        re: env.id.clone(),
        kind: env.kind.as_deref().map(Into::into),
        code,
        message,
    };
    match env.v {
        Some(VERSION) => {}
        Some(v) => {
            return Err(fail(
                ErrorCode::UnsupportedVersion,
                format!("protocol version {v} is not supported; this hub speaks version {VERSION}"),
            ));
        }
        None => {
            return Err(fail(
                ErrorCode::BadEnvelope,
                format!("missing field `v` (the protocol version, {VERSION})"),
            ));
        }
    }
    let Some(kind) = env.kind.as_deref() else {
        return Err(fail(ErrorCode::BadEnvelope, "missing field `type`".into()));
    };
    let invalid = |m: String| fail(ErrorCode::InvalidData, m);
    // An absent `data` reads as an empty object, so "missing field" errors name the field.
    let data = env.data.map_or("{}", RawValue::get);
    let body = match kind {
        "ping" => Body::Ping,
        "presence.set" => Body::PresenceSet(SetRequest::parse(data).map_err(invalid)?),
        "presence.subscribe" => {
            Body::PresenceSubscribe(SubscribeRequest::parse(data).map_err(invalid)?)
        }
        "presence.unsubscribe" => {
            Body::PresenceUnsubscribe(UnsubscribeRequest::parse(data).map_err(invalid)?)
        }
        "order.create" => Body::OrderCreate(from_data(kind, data).map_err(invalid)?),
        "order.get" => Body::OrderGet(from_data(kind, data).map_err(invalid)?),
        "order.read" => Body::OrderRead(from_data(kind, data).map_err(invalid)?),
        "orders.subscribe" => Body::OrdersSubscribe(from_data(kind, data).map_err(invalid)?),
        "orders.unsubscribe" => Body::OrdersUnsubscribe(from_data(kind, data).map_err(invalid)?),
        "outbox.resume" => Body::OutboxResume(from_data(kind, data).map_err(invalid)?),
        "outbox.ack" => Body::OutboxAck(from_data(kind, data).map_err(invalid)?),
        "notice.send" => Body::NoticeSend(from_data(kind, data).map_err(invalid)?),
        "notice.get" => Body::NoticeGet(from_data(kind, data).map_err(invalid)?),
        "notice.read" => Body::NoticeRead(from_data(kind, data).map_err(invalid)?),
        "campaign.start" => Body::CampaignStart(from_data(kind, data).map_err(invalid)?),
        "campaign.get" => Body::CampaignGet(from_data(kind, data).map_err(invalid)?),
        "campaign.record" => Body::CampaignRecord(from_data(kind, data).map_err(invalid)?),
        "campaign.done" => Body::CampaignDone(from_data(kind, data).map_err(invalid)?),
        "campaign.watch" => Body::CampaignWatch(from_data(kind, data).map_err(invalid)?),
        "campaign.unwatch" => Body::CampaignUnwatch(from_data(kind, data).map_err(invalid)?),
        "campaign.close" => Body::CampaignClose(from_data(kind, data).map_err(invalid)?),
        "call.invite" => Body::CallInvite(from_data(kind, data).map_err(invalid)?),
        "call.ring" => Body::CallRing(from_data(kind, data).map_err(invalid)?),
        "call.accept" => Body::CallAccept(from_data(kind, data).map_err(invalid)?),
        "call.reject" => Body::CallReject(from_data(kind, data).map_err(invalid)?),
        "call.hangup" => Body::CallHangup(from_data(kind, data).map_err(invalid)?),
        "call.signal" => Body::CallSignal(from_data(kind, data).map_err(invalid)?),
        "call.ice_servers" => {
            from_data::<Empty>(kind, data).map_err(invalid)?;
            Body::CallIceServers
        }
        other if other.starts_with("order.") && ORDER_ACTIONS.iter().any(|(k, _)| *k == other) => {
            let action = ORDER_ACTIONS
                .iter()
                .find(|(k, _)| *k == other)
                .map(|&(_, a)| a)
                .expect("checked by the guard");
            let a: Box<ActIn> = from_data(kind, data).map_err(invalid)?;
            if a.order.is_none() {
                return Err(fail(
                    ErrorCode::InvalidData,
                    format!("{other}: missing field `order`"),
                ));
            }
            Body::OrderAct(action, a)
        }
        other => {
            return Err(fail(
                ErrorCode::UnknownType,
                format!(
                    "unknown message type {other:?}; known types: {}",
                    KINDS.join(", ")
                ),
            ));
        }
    };
    Ok(Request { id: env.id, body })
}

#[derive(Serialize)]
struct Out<'a, T: Serialize> {
    v: u32,
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    re: Option<&'a ReqId>,
    data: &'a T,
}

/// Encodes one outbound message as a complete WebSocket frame, ready for any number of sockets.
pub fn encode<T: Serialize>(kind: &str, re: Option<&ReqId>, data: &T) -> Bytes {
    text_frame_with(256, |buf| {
        // Serializing our own types into a Vec cannot fail: no map has non-string keys and the
        // writer never errors.
        serde_json::to_writer(
            buf,
            &Out {
                v: VERSION,
                kind,
                re,
                data,
            },
        )
        .expect("serializing an outbound message");
    })
}

/// A durable outbox message: `{"v":1,"type":"outbox","seq":N,"data":<payload>}`. The payload is
/// stored JSON, copied in once.
pub fn outbox_frame(seq: u64, payload: &str) -> Bytes {
    text_frame_with(payload.len() + 48, |buf| {
        use std::io::Write;
        // Writing into a Vec cannot fail.
        let _ = write!(
            buf,
            r#"{{"v":{VERSION},"type":"outbox","seq":{seq},"data":"#
        );
        buf.extend_from_slice(payload.as_bytes());
        buf.push(b'}');
    })
}

/// Requests whose reply carries data the client asked for: always answered.
const RETURNS_DATA: [&str; 12] = [
    "presence.subscribe",
    "order.create",
    "order.get",
    "order.read",
    "outbox.resume",
    "notice.send",
    "notice.get",
    "campaign.start",
    "campaign.get",
    "campaign.watch",
    "call.invite",
    "call.ice_servers",
];

/// The success reply to a request, or nothing for a notification: like JSON-RPC, a request
/// that only changes something and carries no `id` is answered only if it fails.
pub fn success<T: Serialize>(re: Option<&ReqId>, kind: &str, data: &T) -> Option<Bytes> {
    (re.is_some() || RETURNS_DATA.contains(&kind)).then(|| reply(re, data))
}

/// A successful reply to request `re`.
pub fn reply<T: Serialize>(re: Option<&ReqId>, data: &T) -> Bytes {
    encode("reply", re, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(s: &str) -> ProtoError {
        decode(s.as_bytes()).unwrap_err()
    }

    #[test]
    fn decodes_requests() {
        let r = decode(br#"{"v":1,"id":"a1","type":"ping"}"#).unwrap();
        assert_eq!(r.id, Some(ReqId::Str("a1".into())));
        assert!(matches!(r.body, Body::Ping));
        let r = decode(br#"{"v":1,"id":7,"type":"presence.subscribe","data":{"node":"230805"}}"#)
            .unwrap();
        assert_eq!(r.id, Some(ReqId::Num(7)));
        let Body::PresenceSubscribe(s) = r.body else {
            panic!("{:?}", r.body)
        };
        assert_eq!(
            s.target,
            crate::presence::wire::Target::Node(crate::org::NodeId::parse("230805").unwrap())
        );
    }

    #[test]
    fn every_malformed_case_has_its_code_and_keeps_the_id_when_readable() {
        assert_eq!(decode(&[0xff, 0xfe]).unwrap_err().code, ErrorCode::BadUtf8);
        let e = err(r#"{"v":1,"id":3,"type":"ping""#);
        assert_eq!((e.code, e.re), (ErrorCode::BadJson, None));
        let e = err(r#"{"v":1,"id":3,"typo":"ping"}"#);
        assert_eq!(e.code, ErrorCode::BadEnvelope);
        assert_eq!(e.re, Some(ReqId::Num(3)), "id salvaged");
        assert!(e.message.contains("typo"), "{}", e.message);
        let e = err(r#"{"id":3,"type":"ping"}"#);
        assert_eq!(
            (e.code, e.re.clone()),
            (ErrorCode::BadEnvelope, Some(ReqId::Num(3)))
        );
        let e = err(r#"{"v":2,"id":"x","type":"ping"}"#);
        assert_eq!(e.code, ErrorCode::UnsupportedVersion);
        let e = err(r#"{"v":1,"id":"x","type":"teleport"}"#);
        assert_eq!(e.code, ErrorCode::UnknownType);
        assert!(e.message.contains("presence.set"));
        let e = err(r#"{"v":1,"id":"x","type":"presence.subscribe","data":{}}"#);
        assert_eq!(e.code, ErrorCode::InvalidData);
        assert_eq!(e.kind.as_deref(), Some("presence.subscribe"));
        let e = err(r#"{"v":1,"id":"x","type":"presence.set","data":{"status":"sleeping"}}"#);
        assert_eq!(e.code, ErrorCode::InvalidData);
        assert!(e.message.contains("sleeping"), "{}", e.message);
        let long = "y".repeat(65);
        let e = err(&format!(r#"{{"v":1,"id":"{long}","type":"ping"}}"#));
        assert_eq!(e.code, ErrorCode::BadEnvelope);
        assert_eq!(err("[1,2]").code, ErrorCode::BadEnvelope);
    }

    #[test]
    fn encodes_a_frame_with_envelope() {
        let f = reply(Some(&ReqId::Num(9)), &serde_json::json!({"ok":true}));
        let body = std::str::from_utf8(&f[2..]).unwrap();
        assert_eq!(body, r#"{"v":1,"type":"reply","re":9,"data":{"ok":true}}"#);
        let e = ProtoError::new(ErrorCode::OutOfScope, "no").encode();
        assert!(
            std::str::from_utf8(&e[2..])
                .unwrap()
                .contains(r#""code":"out_of_scope""#)
        );
    }

    /// Random mutations of valid requests never panic the decoder.
    #[test]
    fn fuzz_mutated_requests() {
        let seeds: [&[u8]; 3] = [
            br#"{"v":1,"id":"a","type":"presence.set","data":{"status":"busy","text":"x","location":{"lat":1,"lon":2}}}"#,
            br#"{"v":1,"id":2,"type":"presence.subscribe","data":{"node":"230805","endpoints":false}}"#,
            br#"{"v":1,"type":"ping"}"#,
        ];
        let mut x: u64 = 0x1234_5678;
        for i in 0..30_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut m = seeds[i % 3].to_vec();
            for k in 0..(x % 4 + 1) {
                let at = ((x >> (8 * k)) as usize) % m.len();
                m[at] = (x >> (16 + k)) as u8;
            }
            let _ = decode(&m);
        }
    }
}

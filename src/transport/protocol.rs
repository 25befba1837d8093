//! Protocol v1: JSON text frames in a versioned envelope.
//!
//! Inbound: `{"v":1,"id":<string|number>,"type":"<kind>","data":{...}}`. Transport parses the
//! envelope, borrowing `data` as raw JSON; the service that owns the type parses `data` (with
//! `parse_data`) — so an error can say exactly which part was wrong and echo the request id.
//! Outbound frames are encoded once, straight into a WebSocket frame buffer, and the same bytes
//! go to every recipient. docs/protocol.md documents every message.

use std::borrow::Cow;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::frame::text_frame_with;

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
    UnknownCause,
    InvalidTarget,
    IdempotencyConflict,
    VersionConflict,
    Offline,
    Busy,
    NotAParty,
    CallEnded,
    Glare,
    SessionEnded,
    NotInvited,
    NotCommander,
    TooManySessions,
    TooManyMembers,
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
            ErrorCode::UnknownCause => "unknown_cause",
            ErrorCode::InvalidTarget => "invalid_target",
            ErrorCode::IdempotencyConflict => "idempotency_conflict",
            ErrorCode::VersionConflict => "version_conflict",
            ErrorCode::Offline => "offline",
            ErrorCode::Busy => "busy",
            ErrorCode::NotAParty => "not_a_party",
            ErrorCode::CallEnded => "call_ended",
            ErrorCode::Glare => "glare",
            ErrorCode::SessionEnded => "session_ended",
            ErrorCode::NotInvited => "not_invited",
            ErrorCode::NotCommander => "not_commander",
            ErrorCode::TooManySessions => "too_many_sessions",
            ErrorCode::TooManyMembers => "too_many_members",
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnvelope<'a> {
    v: Option<u32>,
    /// Absent: a notification. Present, it must be a string or a number; `null` is refused
    /// rather than read as "no id", so a client that meant to send one learns it did not.
    #[serde(default, deserialize_with = "present")]
    id: Option<Option<ReqId>>,
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

/// Distinguishes an absent field (`None`) from an explicit `null` (`Some(None)`).
pub fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// One request's envelope; `data` is left for the service that owns `kind` to parse.
#[derive(Debug)]
pub struct Envelope<'a> {
    pub id: Option<ReqId>,
    pub kind: Cow<'a, str>,
    /// The raw JSON of `data`; `{}` when absent, so "missing field" errors name the field.
    pub data: &'a str,
}

/// Salvages the id from an envelope that failed strict parsing, so the error can echo it.
fn salvage_id(text: &str) -> Option<ReqId> {
    #[derive(Deserialize)]
    struct IdOnly {
        id: Option<ReqId>,
    }
    serde_json::from_str::<IdOnly>(text).ok().and_then(|x| x.id)
}

/// Parses one text message's envelope. Pure: fuzzable, no IO.
pub fn decode(bytes: &[u8]) -> Result<Envelope<'_>, ProtoError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        ProtoError::new(
            ErrorCode::BadUtf8,
            format!("text frame is not valid UTF-8 ({e})"),
        )
    })?;
    let env: RawEnvelope<'_> = serde_json::from_str(text).map_err(|e| {
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
    let null_id = matches!(env.id, Some(None));
    let id = env.id.flatten();
    let fail = |code, message: String| ProtoError {
        re: id.clone(),
        kind: env.kind.as_deref().map(Into::into),
        code,
        message,
    };
    if null_id {
        return Err(fail(
            ErrorCode::BadEnvelope,
            "`id` is null: give a string or a non-negative integer, or leave `id` out for a notification".into(),
        ));
    }
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
    let Some(kind) = env.kind else {
        return Err(fail(ErrorCode::BadEnvelope, "missing field `type`".into()));
    };
    Ok(Envelope {
        id,
        kind,
        data: env.data.map_or("{}", RawValue::get),
    })
}

/// Parses a request's `data` for `kind`, prefixing serde's message (which names the field) with
/// the kind: `invalid_data` when it does not fit.
pub fn parse_data<'a, T: Deserialize<'a>>(kind: &str, data: &'a str) -> Result<T, ProtoError> {
    serde_json::from_str(data).map_err(|e| {
        // The position serde reports is within `data`, not the frame: drop it.
        let msg = e.to_string();
        let msg = msg.split(" at line ").next().unwrap_or(&msg);
        ProtoError::new(ErrorCode::InvalidData, format!("{kind}: {msg}"))
    })
}

/// A request that takes no data: `{}` or none at all; anything else is refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

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

/// A message of a terminal's durable outbox: `{"v":1,"type":"outbox","seq":N,"data":<payload>}`.
/// The payload is stored JSON, copied in once.
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

/// The reply to a request that only changes something: sent only when the request carried an
/// `id`. Like JSON-RPC, a request without one is a notification, answered only if it fails.
pub fn ack<T: Serialize>(re: Option<&ReqId>, data: &T) -> Option<Bytes> {
    re.map(|re| reply(Some(re), data))
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
    fn decodes_envelopes() {
        let r = decode(br#"{"v":1,"id":"a1","type":"ping"}"#).unwrap();
        assert_eq!(r.id, Some(ReqId::Str("a1".into())));
        assert_eq!((&*r.kind, r.data), ("ping", "{}"));
        let r = decode(br#"{"v":1,"id":7,"type":"presence.subscribe","data":{"node":"230805"}}"#)
            .unwrap();
        assert_eq!(r.id, Some(ReqId::Num(7)));
        assert_eq!(r.data, r#"{"node":"230805"}"#);
        let r = decode(br#"{"v":1,"type":"presence.set","data":{}}"#).unwrap();
        assert_eq!(r.id, None, "a notification");
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
        let long = "y".repeat(65);
        let e = err(&format!(r#"{{"v":1,"id":"{long}","type":"ping"}}"#));
        assert_eq!(e.code, ErrorCode::BadEnvelope);
        assert_eq!(err("[1,2]").code, ErrorCode::BadEnvelope);
        let e = err(r#"{"v":1,"id":null,"type":"ping"}"#);
        assert_eq!((e.code, e.re), (ErrorCode::BadEnvelope, None));
        assert!(e.message.contains("null"), "{}", e.message);
        assert_eq!(
            err(r#"{"v":1,"id":-1,"type":"ping"}"#).code,
            ErrorCode::BadEnvelope
        );
        assert_eq!(
            err(r#"{"v":1,"id":1.5,"type":"ping"}"#).code,
            ErrorCode::BadEnvelope
        );
    }

    #[test]
    fn data_errors_name_the_kind_and_field() {
        let e = parse_data::<Empty>("ping", r#"{"x":1}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidData);
        assert!(
            e.message.starts_with("ping: ") && e.message.contains('x'),
            "{}",
            e.message
        );
        assert!(!e.message.contains("line"), "{}", e.message);
        assert!(parse_data::<Empty>("ping", "{}").is_ok());
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
        assert!(ack(None, &serde_json::json!({})).is_none());
        assert!(ack(Some(&ReqId::Num(1)), &serde_json::json!({})).is_some());
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

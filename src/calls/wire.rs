//! Call messages on the wire: the requests terminals send and the events the hub relays.
//! docs/protocol.md documents each with examples.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::core::{CallId, Candidate, Media, Msg, Outcome, Party, Signal};
use crate::org::{NodeId, NodeIdx, Org, Tier};
use crate::transport::protocol::encode;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InviteIn {
    /// The callee's node id.
    pub to: NodeId,
    pub media: Media,
    /// The caller's SDP offer, if it has one ready (it may also send it with `call.signal`).
    pub offer: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallRef {
    pub call: CallId,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcceptIn {
    pub call: CallId,
    /// The callee's SDP answer to the caller's offer.
    pub answer: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RejectIn {
    pub call: CallId,
    pub reason: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SdpType {
    Offer,
    Answer,
}

/// An `RTCSessionDescriptionInit`: `{"type":"offer","sdp":"v=0…"}`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Description {
    #[serde(rename = "type")]
    pub kind: SdpType,
    pub sdp: String,
}

/// `call.signal`: exactly one of `description`, `candidate`, `end_of_candidates`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalIn {
    pub call: CallId,
    pub description: Option<Description>,
    /// An `RTCIceCandidateInit` (`candidate`, `sdpMid`, `sdpMLineIndex`, `usernameFragment`).
    pub candidate: Option<Box<serde_json::value::RawValue>>,
    #[serde(default)]
    pub end_of_candidates: bool,
}

impl SignalIn {
    pub fn into_signal(self) -> Result<(CallId, Signal), String> {
        let signal = match (self.description, self.candidate, self.end_of_candidates) {
            (Some(d), None, false) => match d.kind {
                SdpType::Offer => Signal::Offer(d.sdp),
                SdpType::Answer => Signal::Answer(d.sdp),
            },
            (None, Some(c), false) => Signal::Candidate(Candidate(c)),
            (None, None, true) => Signal::EndOfCandidates,
            _ => {
                return Err(
                    "call.signal: give exactly one of `description`, `candidate`, `end_of_candidates: true`"
                        .into(),
                );
            }
        };
        Ok((self.call, signal))
    }
}

#[derive(Serialize)]
pub struct Who<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub tier: Tier,
}

impl<'a> Who<'a> {
    pub fn of(org: &'a Org, n: NodeIdx) -> Who<'a> {
        let node = org.node(n);
        Who {
            id: node.id.as_str(),
            name: &node.name,
            tier: node.tier,
        }
    }
}

/// Encodes a message for a party once, as a complete frame.
pub fn encode_msg(org: &Org, msg: &Msg) -> Bytes {
    #[derive(Serialize)]
    struct Incoming<'a> {
        call: CallId,
        from: Who<'a>,
        media: Media,
        #[serde(skip_serializing_if = "Option::is_none")]
        offer: Option<&'a str>,
    }
    #[derive(Serialize)]
    struct Bare {
        call: CallId,
    }
    #[derive(Serialize)]
    struct Accepted<'a> {
        call: CallId,
        #[serde(skip_serializing_if = "Option::is_none")]
        answer: Option<&'a str>,
    }
    #[derive(Serialize)]
    struct DescriptionOut<'a> {
        #[serde(rename = "type")]
        kind: SdpType,
        sdp: &'a str,
    }
    #[derive(Serialize)]
    struct SignalOut<'a> {
        call: CallId,
        #[serde(skip_serializing_if = "Option::is_none")]
        description: Option<DescriptionOut<'a>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        candidate: Option<&'a serde_json::value::RawValue>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        end_of_candidates: bool,
    }
    #[derive(Serialize)]
    struct Ended<'a> {
        call: CallId,
        outcome: Outcome,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        replaced_by: Option<CallId>,
    }
    #[derive(Serialize)]
    struct Resumed<'a> {
        call: CallId,
        peer: Who<'a>,
        party: Party,
        media: Media,
    }
    match msg {
        Msg::Incoming {
            call,
            from,
            media,
            offer,
        } => encode(
            "call.incoming",
            None,
            &Incoming {
                call: *call,
                from: Who::of(org, *from),
                media: *media,
                offer: offer.as_deref(),
            },
        ),
        Msg::Ringing { call } => encode("call.ringing", None, &Bare { call: *call }),
        Msg::OfferSuperseded { call } => {
            encode("call.offer_superseded", None, &Bare { call: *call })
        }
        Msg::Accepted { call, answer } => encode(
            "call.accepted",
            None,
            &Accepted {
                call: *call,
                answer: answer.as_deref(),
            },
        ),
        Msg::Signal { call, signal } => {
            let mut out = SignalOut {
                call: *call,
                description: None,
                candidate: None,
                end_of_candidates: false,
            };
            match signal {
                Signal::Offer(sdp) => {
                    out.description = Some(DescriptionOut {
                        kind: SdpType::Offer,
                        sdp,
                    })
                }
                Signal::Answer(sdp) => {
                    out.description = Some(DescriptionOut {
                        kind: SdpType::Answer,
                        sdp,
                    })
                }
                Signal::Candidate(Candidate(c)) => out.candidate = Some(c),
                Signal::EndOfCandidates => out.end_of_candidates = true,
            }
            encode("call.signal", None, &out)
        }
        Msg::Ended {
            call,
            outcome,
            reason,
            replaced_by,
        } => encode(
            "call.ended",
            None,
            &Ended {
                call: *call,
                outcome: *outcome,
                reason: reason.as_deref(),
                replaced_by: *replaced_by,
            },
        ),
        Msg::AnsweredElsewhere { call } => {
            #[derive(Serialize)]
            struct Elsewhere {
                call: CallId,
                outcome: &'static str,
                reason: &'static str,
            }
            encode(
                "call.ended",
                None,
                &Elsewhere {
                    call: *call,
                    outcome: "answered_elsewhere",
                    reason: "another seat of this terminal answered",
                },
            )
        }
        Msg::PeerAway { call } => encode("call.peer_away", None, &Bare { call: *call }),
        Msg::PeerBack { call } => encode("call.peer_back", None, &Bare { call: *call }),
        Msg::Resumed {
            call,
            peer,
            party,
            media,
        } => encode(
            "call.resumed",
            None,
            &Resumed {
                call: *call,
                peer: Who::of(org, *peer),
                party: *party,
                media: *media,
            },
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(f: &Bytes) -> serde_json::Value {
        // Server frames are unmasked; the payload starts after a 2- or 4-byte header.
        let start = if f[1] & 0x7f == 126 { 4 } else { 2 };
        serde_json::from_slice(&f[start..]).unwrap()
    }

    #[test]
    fn signal_requests_carry_exactly_one_thing() {
        let parse = |s: &str| serde_json::from_str::<SignalIn>(s).unwrap().into_signal();
        let (id, s) = parse(r#"{"call":4,"description":{"type":"offer","sdp":"v=0"}}"#).unwrap();
        assert_eq!((id, s), (CallId(4), Signal::Offer("v=0".into())));
        assert_eq!(
            parse(r#"{"call":4,"end_of_candidates":true}"#).unwrap().1,
            Signal::EndOfCandidates
        );
        assert!(parse(r#"{"call":4}"#).unwrap_err().contains("exactly one"));
        assert!(
            parse(r#"{"call":4,"candidate":{"candidate":"x"},"end_of_candidates":true}"#).is_err()
        );
        let e = serde_json::from_str::<SignalIn>(
            r#"{"call":4,"description":{"type":"pranswer","sdp":"v=0"}}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("pranswer"), "{e}");
    }

    #[test]
    fn relayed_messages_mirror_the_requests() {
        let org = crate::org::fixture();
        let f = encode_msg(
            &org,
            &Msg::Signal {
                call: CallId(7),
                signal: Signal::Answer("v=0".into()),
            },
        );
        assert_eq!(
            text(&f),
            serde_json::json!({"v":1,"type":"call.signal","data":{"call":7,"description":{"type":"answer","sdp":"v=0"}}})
        );
        // A candidate goes out exactly as it came in.
        let c =
            r#"{"candidate": "candidate:1 1 udp 2130706431 10.0.0.2 5000 typ host", "sdpMid":"0"}"#;
        let (_, signal) =
            serde_json::from_str::<SignalIn>(&format!(r#"{{"call":7,"candidate":{c}}}"#))
                .unwrap()
                .into_signal()
                .unwrap();
        let f = encode_msg(
            &org,
            &Msg::Signal {
                call: CallId(7),
                signal,
            },
        );
        let start = if f[1] & 0x7f == 126 { 4 } else { 2 };
        let out = std::str::from_utf8(&f[start..]).unwrap();
        assert!(out.ends_with(&format!(r#""candidate":{c}}}}}"#)), "{out}");
        let a = org.lookup("a").unwrap();
        let f = encode_msg(
            &org,
            &Msg::Incoming {
                call: CallId(7),
                from: a,
                media: Media::Audio,
                offer: None,
            },
        );
        let v = text(&f);
        assert_eq!(v["type"], "call.incoming");
        assert_eq!(v["data"]["from"]["id"], "a");
        assert_eq!(v["data"]["media"], "audio");
        assert!(v["data"].get("offer").is_none());
    }
}

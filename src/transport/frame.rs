//! WebSocket framing (RFC 6455), server side, as pure functions.
//!
//! `Decoder::decode` takes whatever bytes have arrived and returns how many it consumed plus the
//! complete messages among them; it never reads a socket, so it is tested and fuzzed without one.
//! Two choices keep an idle connection cheap: a frame that will be refused (too large, or binary,
//! which protocol v1 does not use) is skipped as its bytes arrive instead of being buffered, and
//! nothing is kept between calls except a message that is still arriving in fragments.
//!
//! Server frames are never masked, so one encoded frame is byte-identical for every recipient:
//! a fan-out encodes once and writes the same `Bytes` to every socket.

use bytes::Bytes;

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Longest possible frame header: 2 + 8 (length) + 4 (mask).
pub const MAX_HEADER: usize = 14;
/// Control frames carry at most 125 bytes (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: u64 = 125;
/// Largest data frame the decoder will skip through. A refused message's bytes are read and
/// dropped as they arrive, but a header announcing more than this (up to 2^63 bytes) is a client
/// that will never finish: the connection is closed with 1009 at once instead.
pub const MAX_FRAME: u64 = 16 * 1024 * 1024;

/// A complete inbound event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// A whole text message, unmasked; UTF-8 is checked by the protocol layer, which can then
    /// answer with a typed error instead of dropping the connection.
    Text(Vec<u8>),
    /// A binary message began; its bytes are skipped. Reported once per message.
    Binary,
    Ping(Vec<u8>),
    Pong,
    Close {
        code: Option<u16>,
        reason: String,
    },
    /// A message longer than the limit began; its bytes are skipped. `declared` is what was known
    /// when it was refused (the frames so far plus the frame that crossed the limit).
    TooLarge {
        declared: u64,
    },
}

/// Violations after which the byte stream cannot be trusted; the connection is closed with 1002.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("reserved bits set without a negotiated extension")]
    ReservedBits,
    #[error("client frames must be masked")]
    Unmasked,
    #[error("unknown opcode {0:#x}")]
    UnknownOpcode(u8),
    #[error("control frames must not be fragmented")]
    FragmentedControl,
    #[error("control frame payload over 125 bytes")]
    ControlTooLong,
    #[error("continuation frame without a message in progress")]
    UnexpectedContinuation,
    #[error("new data frame while a fragmented message is in progress")]
    ExpectedContinuation,
    #[error("payload length has its most significant bit set")]
    LengthOverflow,
    #[error("close frame with a one-byte payload")]
    BadClosePayload,
    #[error("close code {0} may not be sent by an endpoint")]
    BadCloseCode(u16),
    #[error("close reason is not valid UTF-8")]
    BadCloseReason,
    #[error("a frame of {0} bytes is larger than the {MAX_FRAME}-byte limit")]
    FrameTooBig(u64),
}

impl ProtocolError {
    /// The close code that answers this violation (RFC 6455 §7.4.1): 1007 for a payload that is
    /// not what it claims to be, 1009 for a frame too large to take, 1002 for everything else.
    pub fn close_code(self) -> u16 {
        match self {
            ProtocolError::BadCloseReason => 1007,
            ProtocolError::FrameTooBig(_) => 1009,
            _ => 1002,
        }
    }
}

/// Whether a peer may send this close code (RFC 6455 §7.4): the defined codes other than those
/// reserved for reporting (1005, 1006, 1015) or never assigned (1004), and the ranges for
/// libraries (3000–3999) and applications (4000–4999). 1012–1014 are registered with IANA.
pub fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

#[derive(Debug)]
struct Header {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    len: u64,
    header_len: usize,
}

/// Reads a frame header, `Ok(None)` if more bytes are needed.
fn parse_header(buf: &[u8]) -> Result<Option<Header>, ProtocolError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        return Err(ProtocolError::ReservedBits);
    }
    if b1 & 0x80 == 0 {
        return Err(ProtocolError::Unmasked);
    }
    let (len, at) = match b1 & 0x7F {
        126 => {
            let Some(b) = buf.get(2..4) else {
                return Ok(None);
            };
            (u16::from_be_bytes([b[0], b[1]]) as u64, 4)
        }
        127 => {
            let Some(b) = buf.get(2..10) else {
                return Ok(None);
            };
            // `get(2..10)` returned exactly eight bytes.
            let len = u64::from_be_bytes(b.try_into().expect("eight bytes"));
            if len >> 63 != 0 {
                return Err(ProtocolError::LengthOverflow);
            }
            (len, 10)
        }
        n => (n as u64, 2),
    };
    let Some(m) = buf.get(at..at + 4) else {
        return Ok(None);
    };
    Ok(Some(Header {
        fin: b0 & 0x80 != 0,
        opcode: b0 & 0x0F,
        mask: [m[0], m[1], m[2], m[3]],
        len,
        header_len: at + 4,
    }))
}

fn unmask(payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    payload
        .iter()
        .zip(mask.iter().cycle())
        .map(|(b, m)| b ^ m)
        .collect()
}

/// What a message in progress is.
#[derive(Debug)]
enum Partial {
    None,
    /// Text fragments received so far.
    Text(Vec<u8>),
    /// A refused message (binary or too large): its remaining frames are skipped.
    Skipping,
}

/// Per-connection decoder state; empty between messages.
#[derive(Debug)]
pub struct Decoder {
    max_message: usize,
    partial: Partial,
    /// Payload bytes of the current frame still to skip.
    skip: u64,
    /// Frames read to their end so far, skipped ones included. A connection counts as alive
    /// only when this moves: bytes of a frame that never ends are not a sign of life.
    frames: u64,
}

impl Decoder {
    pub fn new(max_message: usize) -> Decoder {
        Decoder {
            max_message,
            partial: Partial::None,
            skip: 0,
            frames: 0,
        }
    }

    /// Frames completed so far (see the field).
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// True when no message is half-received: the connection holds no decoder buffers.
    pub fn is_idle(&self) -> bool {
        matches!(self.partial, Partial::None) && self.skip == 0
    }

    /// Decodes complete frames from `buf`, appending events to `out`, and returns how many bytes
    /// were consumed. Unconsumed bytes are an incomplete frame: call again with them at the front
    /// and more appended. Skipped payloads are consumed as they arrive.
    pub fn decode(&mut self, buf: &[u8], out: &mut Vec<Inbound>) -> Result<usize, ProtocolError> {
        let mut pos = 0;
        loop {
            if self.skip > 0 {
                let n = self.skip.min((buf.len() - pos) as u64);
                pos += n as usize;
                self.skip -= n;
                if self.skip > 0 {
                    return Ok(pos);
                }
                self.frames += 1;
            }
            let Some(h) = parse_header(&buf[pos..])? else {
                return Ok(pos);
            };
            let control = h.opcode & 0x8 != 0;
            if control {
                if !matches!(h.opcode, OP_CLOSE | OP_PING | OP_PONG) {
                    return Err(ProtocolError::UnknownOpcode(h.opcode));
                }
                if !h.fin {
                    return Err(ProtocolError::FragmentedControl);
                }
                if h.len > MAX_CONTROL_PAYLOAD {
                    return Err(ProtocolError::ControlTooLong);
                }
            } else {
                if h.len > MAX_FRAME {
                    return Err(ProtocolError::FrameTooBig(h.len));
                }
                match (h.opcode, &self.partial) {
                    (OP_CONTINUATION, Partial::None) => {
                        return Err(ProtocolError::UnexpectedContinuation);
                    }
                    (OP_TEXT | OP_BINARY, Partial::Text(_) | Partial::Skipping) => {
                        return Err(ProtocolError::ExpectedContinuation);
                    }
                    (OP_CONTINUATION | OP_TEXT | OP_BINARY, _) => {}
                    (op, _) => return Err(ProtocolError::UnknownOpcode(op)),
                }
                // Refused messages are skipped header by header, payload unread.
                let so_far = match &self.partial {
                    Partial::Text(v) => v.len() as u64,
                    _ => 0,
                };
                let refuse = match self.partial {
                    Partial::Skipping => None,
                    _ if h.opcode == OP_BINARY => Some(Inbound::Binary),
                    _ if so_far + h.len > self.max_message as u64 => Some(Inbound::TooLarge {
                        declared: so_far + h.len,
                    }),
                    _ => None,
                };
                if let Some(event) = refuse {
                    out.push(event);
                    self.partial = Partial::Skipping;
                }
                if matches!(self.partial, Partial::Skipping) {
                    pos += h.header_len;
                    if h.fin {
                        self.partial = Partial::None;
                    }
                    if h.len == 0 {
                        self.frames += 1;
                    } else {
                        self.skip = h.len;
                    }
                    continue;
                }
            }

            let total = h.header_len as u64 + h.len;
            if ((buf.len() - pos) as u64) < total {
                return Ok(pos);
            }
            let start = pos + h.header_len;
            let payload = &buf[start..start + h.len as usize];
            pos = start + h.len as usize;
            self.frames += 1;
            match h.opcode {
                OP_PING => out.push(Inbound::Ping(unmask(payload, h.mask))),
                OP_PONG => out.push(Inbound::Pong),
                OP_CLOSE => {
                    let body = unmask(payload, h.mask);
                    let (code, reason) = match body.len() {
                        0 => (None, String::new()),
                        1 => return Err(ProtocolError::BadClosePayload),
                        _ => {
                            let code = u16::from_be_bytes([body[0], body[1]]);
                            if !close_code_allowed(code) {
                                return Err(ProtocolError::BadCloseCode(code));
                            }
                            let reason = String::from_utf8(body[2..].to_vec())
                                .map_err(|_| ProtocolError::BadCloseReason)?;
                            (Some(code), reason)
                        }
                    };
                    out.push(Inbound::Close { code, reason });
                }
                _ => {
                    let data = unmask(payload, h.mask);
                    match (&mut self.partial, h.fin) {
                        (Partial::None, true) => out.push(Inbound::Text(data)),
                        (Partial::None, false) => self.partial = Partial::Text(data),
                        (Partial::Text(acc), fin) => {
                            acc.extend_from_slice(&data);
                            if fin {
                                let Partial::Text(msg) =
                                    std::mem::replace(&mut self.partial, Partial::None)
                                else {
                                    unreachable!("matched Partial::Text above")
                                };
                                out.push(Inbound::Text(msg));
                            }
                        }
                        (Partial::Skipping, _) => unreachable!("skipped frames continue above"),
                    }
                }
            }
        }
    }
}

/// Header length of an unmasked server frame with `len` payload bytes.
pub fn header_len(len: usize) -> usize {
    match len {
        0..=125 => 2,
        126..=65535 => 4,
        _ => 10,
    }
}

fn write_header(dst: &mut [u8], opcode: u8, len: usize) {
    dst[0] = 0x80 | opcode;
    match dst.len() {
        2 => dst[1] = len as u8,
        4 => {
            dst[1] = 126;
            dst[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            dst[1] = 127;
            dst[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        }
    }
}

/// Builds a complete text frame with one allocation: `fill` writes the payload after room kept
/// for the largest header, and the header is written in front of it afterwards.
pub fn text_frame_with(capacity: usize, fill: impl FnOnce(&mut Vec<u8>)) -> Bytes {
    let mut v = Vec::with_capacity(capacity + 10);
    v.extend_from_slice(&[0u8; 10]);
    fill(&mut v);
    let len = v.len() - 10;
    let start = 10 - header_len(len);
    write_header(&mut v[start..10], OP_TEXT, len);
    Bytes::from(v).slice(start..)
}

pub fn frame(opcode: u8, payload: &[u8]) -> Bytes {
    let hl = header_len(payload.len());
    let mut v = vec![0u8; hl + payload.len()];
    write_header(&mut v[..hl], opcode, payload.len());
    v[hl..].copy_from_slice(payload);
    Bytes::from(v)
}

/// A text frame carrying `payload`.
pub fn text(payload: &[u8]) -> Bytes {
    frame(OP_TEXT, payload)
}

/// The payload of a frame this side encoded (unmasked), as text: what crosses to another hub
/// node, which frames it again.
pub fn text_of(f: &[u8]) -> String {
    let header = match f.get(1).map(|b| b & 0x7F) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    };
    String::from_utf8_lossy(f.get(header..).unwrap_or_default()).into_owned()
}

/// A close frame; the reason is cut to the 123 bytes a control frame allows, at a char boundary.
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut payload = Vec::with_capacity(2 + cut);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..cut]);
    frame(OP_CLOSE, &payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client-side (masked) frame, as a browser would send it.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut v = vec![(if fin { 0x80 } else { 0 }) | opcode];
        match payload.len() {
            n @ 0..=125 => v.push(0x80 | n as u8),
            n @ 126..=65535 => {
                v.push(0x80 | 126);
                v.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                v.push(0x80 | 127);
                v.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        v.extend_from_slice(&mask);
        v.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
        v
    }

    fn decode_all(d: &mut Decoder, bytes: &[u8]) -> Result<(Vec<Inbound>, usize), ProtocolError> {
        let mut out = Vec::new();
        let n = d.decode(bytes, &mut out)?;
        Ok((out, n))
    }

    const M: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    #[test]
    fn text_ping_close() {
        let mut bytes = client_frame(true, OP_TEXT, b"hello", M);
        bytes.extend(client_frame(true, OP_PING, b"p", M));
        bytes.extend(client_frame(true, OP_CLOSE, b"\x03\xe8bye", M));
        let mut d = Decoder::new(1024);
        let (ev, n) = decode_all(&mut d, &bytes).unwrap();
        assert_eq!(n, bytes.len());
        assert_eq!(
            ev,
            [
                Inbound::Text(b"hello".to_vec()),
                Inbound::Ping(b"p".to_vec()),
                Inbound::Close {
                    code: Some(1000),
                    reason: "bye".into()
                }
            ]
        );
        assert!(d.is_idle());
    }

    #[test]
    fn partial_frames_consume_nothing_until_complete() {
        let bytes = client_frame(true, OP_TEXT, &[b'x'; 300], M);
        let mut d = Decoder::new(1024);
        for cut in 0..bytes.len() {
            let (ev, n) = decode_all(&mut d, &bytes[..cut]).unwrap();
            assert!(ev.is_empty() && n == 0, "cut {cut}");
        }
        let (ev, n) = decode_all(&mut d, &bytes).unwrap();
        assert_eq!((ev.len(), n), (1, bytes.len()));
    }

    #[test]
    fn fragments_are_joined_and_controls_may_interleave() {
        let mut bytes = client_frame(false, OP_TEXT, b"he", M);
        bytes.extend(client_frame(true, OP_PING, b"", M));
        bytes.extend(client_frame(false, OP_CONTINUATION, b"ll", M));
        bytes.extend(client_frame(true, OP_CONTINUATION, b"o", M));
        let mut d = Decoder::new(1024);
        let (ev, _) = decode_all(&mut d, &bytes).unwrap();
        assert_eq!(
            ev,
            [Inbound::Ping(vec![]), Inbound::Text(b"hello".to_vec())]
        );
    }

    #[test]
    fn oversized_messages_are_skipped_without_buffering_and_the_stream_continues() {
        let big = vec![b'a'; 5000];
        let mut bytes = client_frame(true, OP_TEXT, &big, M);
        bytes.extend(client_frame(true, OP_TEXT, b"after", M));
        let mut d = Decoder::new(1024);
        // Feed only the header: the refusal is known before any payload arrives.
        let (ev, n) = decode_all(&mut d, &bytes[..8]).unwrap();
        assert_eq!(ev, [Inbound::TooLarge { declared: 5000 }]);
        assert_eq!(n, 8);
        let (ev, n2) = decode_all(&mut d, &bytes[8..]).unwrap();
        assert_eq!(ev, [Inbound::Text(b"after".to_vec())]);
        assert_eq!(n + n2, bytes.len());
    }

    #[test]
    fn oversized_fragmented_message_is_refused_once() {
        let mut bytes = client_frame(false, OP_TEXT, &[b'a'; 600], M);
        bytes.extend(client_frame(false, OP_CONTINUATION, &[b'b'; 600], M));
        bytes.extend(client_frame(true, OP_CONTINUATION, &[b'c'; 600], M));
        bytes.extend(client_frame(true, OP_TEXT, b"ok", M));
        let mut d = Decoder::new(1000);
        let (ev, n) = decode_all(&mut d, &bytes).unwrap();
        assert_eq!(
            ev,
            [
                Inbound::TooLarge { declared: 1200 },
                Inbound::Text(b"ok".to_vec())
            ]
        );
        assert_eq!(n, bytes.len());
    }

    #[test]
    fn binary_is_reported_once_and_skipped() {
        let mut bytes = client_frame(false, OP_BINARY, &[1, 2, 3], M);
        bytes.extend(client_frame(true, OP_CONTINUATION, &[4], M));
        bytes.extend(client_frame(true, OP_TEXT, b"t", M));
        let mut d = Decoder::new(1000);
        let (ev, _) = decode_all(&mut d, &bytes).unwrap();
        assert_eq!(ev, [Inbound::Binary, Inbound::Text(b"t".to_vec())]);
    }

    #[test]
    fn protocol_violations() {
        let mut d = Decoder::new(1000);
        let mut unmasked = client_frame(true, OP_TEXT, b"x", M);
        unmasked[1] &= 0x7F;
        assert_eq!(decode_all(&mut d, &unmasked), Err(ProtocolError::Unmasked));
        let cases: [(Vec<u8>, ProtocolError); 5] = [
            (
                {
                    let mut f = client_frame(true, OP_TEXT, b"x", M);
                    f[0] |= 0x40;
                    f
                },
                ProtocolError::ReservedBits,
            ),
            (
                client_frame(true, 0x3, b"x", M),
                ProtocolError::UnknownOpcode(3),
            ),
            (
                client_frame(false, OP_PING, b"x", M),
                ProtocolError::FragmentedControl,
            ),
            (
                client_frame(true, OP_PING, &[0; 126], M),
                ProtocolError::ControlTooLong,
            ),
            (
                client_frame(true, OP_CONTINUATION, b"x", M),
                ProtocolError::UnexpectedContinuation,
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(decode_all(&mut Decoder::new(1000), &bytes), Err(want));
        }
        let mut two = client_frame(false, OP_TEXT, b"x", M);
        two.extend(client_frame(true, OP_TEXT, b"y", M));
        assert_eq!(
            decode_all(&mut Decoder::new(1000), &two),
            Err(ProtocolError::ExpectedContinuation)
        );
        assert_eq!(
            decode_all(
                &mut Decoder::new(1000),
                &client_frame(true, OP_CLOSE, b"x", M)
            ),
            Err(ProtocolError::BadClosePayload)
        );
    }

    #[test]
    fn close_codes_and_reasons_are_checked() {
        let close = |payload: &[u8]| {
            decode_all(
                &mut Decoder::new(1000),
                &client_frame(true, OP_CLOSE, payload, M),
            )
            .map(|(ev, _)| ev)
        };
        for ok in [
            1000u16, 1001, 1002, 1003, 1007, 1011, 1014, 3000, 3999, 4000, 4999,
        ] {
            let mut p = ok.to_be_bytes().to_vec();
            p.extend_from_slice("再见".as_bytes());
            assert_eq!(
                close(&p),
                Ok(vec![Inbound::Close {
                    code: Some(ok),
                    reason: "再见".into()
                }]),
                "{ok}"
            );
        }
        for bad in [
            0u16, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535,
        ] {
            assert_eq!(
                close(&bad.to_be_bytes()),
                Err(ProtocolError::BadCloseCode(bad)),
                "{bad}"
            );
        }
        assert_eq!(
            close(&[0x03, 0xe8, 0xce, 0xba, 0xe1, 0xbd]),
            Err(ProtocolError::BadCloseReason)
        );
        assert_eq!(ProtocolError::BadCloseReason.close_code(), 1007);
        assert_eq!(ProtocolError::BadCloseCode(5).close_code(), 1002);
    }

    #[test]
    fn a_frame_announcing_more_than_the_limit_is_refused_at_its_header() {
        // 2^62 bytes announced, nothing sent: skipping it would never end.
        let mut h = vec![0x81, 0x80 | 127];
        h.extend_from_slice(&(1u64 << 62).to_be_bytes());
        h.extend_from_slice(&M);
        let e = decode_all(&mut Decoder::new(1000), &h).unwrap_err();
        assert_eq!(e, ProtocolError::FrameTooBig(1 << 62));
        assert_eq!(e.close_code(), 1009);
        // At the limit it is refused as too large for a message and skipped.
        let mut h = vec![0x81, 0x80 | 127];
        h.extend_from_slice(&MAX_FRAME.to_be_bytes());
        h.extend_from_slice(&M);
        let (ev, n) = decode_all(&mut Decoder::new(1000), &h).unwrap();
        assert_eq!(
            (ev, n),
            (
                vec![Inbound::TooLarge {
                    declared: MAX_FRAME
                }],
                h.len()
            )
        );
    }

    #[test]
    fn only_finished_frames_count() {
        let mut d = Decoder::new(10);
        let big = client_frame(true, OP_TEXT, &[b'x'; 100], M);
        let (_, n) = decode_all(&mut d, &big[..50]).unwrap();
        assert_eq!((n, d.frames()), (50, 0), "a refused frame being skipped");
        let (_, _) = decode_all(&mut d, &big[50..]).unwrap();
        assert_eq!(d.frames(), 1, "its end counts");
        let ping = client_frame(true, OP_PING, b"p", M);
        decode_all(&mut d, &ping[..3]).unwrap();
        assert_eq!(d.frames(), 1, "an incomplete ping does not");
        let mut d2 = Decoder::new(10);
        let (ev, _) = decode_all(&mut d2, &ping).unwrap();
        assert_eq!((ev.len(), d2.frames()), (1, 1));
    }

    #[test]
    fn encoded_frames_have_minimal_headers() {
        for len in [0usize, 125, 126, 65535, 65536] {
            let payload = vec![b'z'; len];
            let f = text_frame_with(len, |v| v.extend_from_slice(&payload));
            assert_eq!(f.len(), header_len(len) + len);
            assert_eq!(f[0], 0x81);
            assert_eq!(&f[header_len(len)..], &payload[..]);
            assert_eq!(f, frame(OP_TEXT, &payload));
        }
        for len in [0usize, 125, 126, 70_000] {
            let t = "页".repeat(len / 3);
            assert_eq!(text_of(&text(t.as_bytes())), t);
        }
        let c = close_frame(4001, &"长".repeat(100));
        assert!(c.len() <= 2 + 125);
        assert!(std::str::from_utf8(&c[4..]).is_ok());
    }

    /// Deterministic xorshift so the fuzz cases are the same on every run.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Random byte soup never panics and never claims to consume more than it was given.
    #[test]
    fn fuzz_random_bytes() {
        let mut rng = Rng(0x5eed);
        for _ in 0..20_000 {
            let len = rng.below(64);
            let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let mut d = Decoder::new(64);
            let mut out = Vec::new();
            if let Ok(n) = d.decode(&bytes, &mut out) {
                assert!(n <= bytes.len());
            }
        }
    }

    /// Valid streams split at random points decode to the same messages as in one piece, with
    /// the caller keeping the unconsumed tail exactly as a connection does.
    #[test]
    fn fuzz_random_splits_of_valid_streams() {
        let mut rng = Rng(0xfeed);
        for _ in 0..2_000 {
            let mut stream = Vec::new();
            let mut want = Vec::new();
            for _ in 0..rng.below(6) + 1 {
                let len = rng.below(300);
                let msg: Vec<u8> = (0..len).map(|_| b'a' + rng.below(26) as u8).collect();
                let mask = (rng.next() as u32).to_be_bytes();
                if len > 200 {
                    want.push(Inbound::TooLarge {
                        declared: len as u64,
                    });
                    stream.extend(client_frame(true, OP_TEXT, &msg, mask));
                } else if len > 100 {
                    // Send as three fragments.
                    let (a, rest) = msg.split_at(len / 3);
                    let (b, c) = rest.split_at(rest.len() / 2);
                    stream.extend(client_frame(false, OP_TEXT, a, mask));
                    stream.extend(client_frame(false, OP_CONTINUATION, b, mask));
                    stream.extend(client_frame(true, OP_CONTINUATION, c, mask));
                    want.push(Inbound::Text(msg));
                } else {
                    stream.extend(client_frame(true, OP_TEXT, &msg, mask));
                    want.push(Inbound::Text(msg));
                }
            }
            let mut d = Decoder::new(200);
            let (mut got, mut pending, mut at) = (Vec::new(), Vec::new(), 0);
            while at < stream.len() {
                let step = (rng.below(40) + 1).min(stream.len() - at);
                pending.extend_from_slice(&stream[at..at + step]);
                at += step;
                let n = d.decode(&pending, &mut got).unwrap();
                pending.drain(..n);
            }
            assert!(pending.is_empty());
            assert_eq!(got, want);
            assert!(d.is_idle());
        }
    }
}

//! Fuzz target for the hub's RFC 6455 frame decoder (`src/transport/frame.rs`).
//!
//! One input drives one of two halves, chosen by the low bit of its first byte:
//!
//! * **A — arbitrary bytes, arbitrary splits.** The rest of the input is a client byte stream fed
//!   to a `Decoder` the way a connection does (append to a pending buffer, decode, drain the
//!   consumed prefix), in chunks whose sizes come from the input. The result must not depend on
//!   how the bytes were split (one call, one byte at a time up to 4 KiB, the input's chunks), and it
//!   must agree
//!   with the independent whole-buffer reference parser below.
//! * **B — well-formed streams.** A valid masked client stream (text, possibly oversized and
//!   fragmented with interleaved pings/pongs, binary, ping, pong, close; every length encoding,
//!   including non-minimal ones) is built from the input together with the events it must give.
//!   The reference parser must read it back to exactly those events, and the decoder, fed in
//!   chunks, must give the same events, consume everything, end idle and count every frame. A
//!   quarter of B inputs also flip a few bytes of the stream and then get the checks of A.
//!
//! The reference parser is written from RFC 6455 and the decoder's doc comments, not from its code.

#![no_main]

use arbitrary::{Result as AResult, Unstructured};
use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../src/transport/frame.rs"]
mod frame;

use frame::{Decoder, Inbound, MAX_FRAME, ProtocolError};

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(mode) = u.arbitrary::<u8>() else {
        return;
    };
    let Ok(max) = pick_max(&mut u) else { return };
    let Ok(chunks) = pick_chunks(&mut u) else {
        return;
    };
    if mode & 1 == 0 {
        let stream = u.take_rest();
        check_stream(max, stream, &chunks);
    } else {
        let flips = if mode & 0x6 == 0x6 {
            usize::from((mode >> 3) & 3) + 1
        } else {
            0
        };
        let Ok(flips) = (0..flips)
            .map(|_| Ok((u.arbitrary::<u32>()?, u.arbitrary::<u8>()?)))
            .collect::<AResult<Vec<_>>>()
        else {
            return;
        };
        let Ok(g) = generate(&mut u, max) else { return };
        if flips.is_empty() {
            check_well_formed(max, &g, &chunks);
        } else {
            let mut stream = g.stream;
            if stream.is_empty() {
                return;
            }
            for (at, x) in flips {
                let at = at as usize % stream.len();
                stream[at] ^= x.max(1);
            }
            check_stream(max, &stream, &chunks);
        }
    }
});

/// The decoder's message limit: tiny, around the sizes generated, or as large as a frame may be.
fn pick_max(u: &mut Unstructured) -> AResult<usize> {
    Ok(match u.int_in_range(0..=3u8)? {
        0 => u.int_in_range(0..=8)?,
        1 => u.int_in_range(0..=300)?,
        2 => u.int_in_range(0..=4096)?,
        _ => *u.choose(&[65535, 65536, 1 << 20, MAX_FRAME as usize])?,
    })
}

/// Chunk sizes for feeding, used in a cycle: a byte below 0xE0 is 1..=224 bytes, above it a
/// power of two from 256 up.
fn pick_chunks(u: &mut Unstructured) -> AResult<Vec<usize>> {
    let n = u.int_in_range(0..=8u8)?;
    let mut v = Vec::with_capacity(n.into());
    for _ in 0..n {
        let b: u8 = u.arbitrary()?;
        v.push(if b < 0xE0 {
            usize::from(b) + 1
        } else {
            1usize << (b - 0xE0 + 8)
        });
    }
    if v.is_empty() {
        v.extend([1, 5, 64, 2, 300]);
    }
    Ok(v)
}

// ---------------------------------------------------------------------------------------------
// Feeding the decoder like a connection does.

/// What feeding a whole stream produced.
#[derive(Debug)]
struct Outcome {
    events: Vec<Inbound>,
    result: Result<(), ProtocolError>,
    /// On error: the byte range of the stream fed by the call that failed.
    error_chunk: Option<(usize, usize)>,
    /// On success: bytes consumed in total, `frames()` and `is_idle()` at the end.
    consumed: usize,
    frames: u64,
    idle: bool,
}

fn feed(max: usize, stream: &[u8], mut next_chunk: impl FnMut() -> usize) -> Outcome {
    let mut d = Decoder::new(max);
    let mut events = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    let (mut fed, mut consumed) = (0usize, 0usize);
    while fed < stream.len() {
        let step = next_chunk().clamp(1, stream.len() - fed);
        pending.extend_from_slice(&stream[fed..fed + step]);
        let chunk = (fed, fed + step);
        fed += step;
        let before = events.len();
        match d.decode(&pending, &mut events) {
            Ok(n) => {
                assert!(
                    n <= pending.len(),
                    "consumed {n} of {} bytes given",
                    pending.len()
                );
                assert!(
                    n > 0 || events.len() == before,
                    "events without consuming anything"
                );
                pending.drain(..n);
                consumed += n;
                // What is left is an incomplete frame: decoding it again finds nothing.
                let again = events.len();
                assert_eq!(
                    d.decode(&pending, &mut events),
                    Ok(0),
                    "the unconsumed tail decodes further on its own"
                );
                assert_eq!(events.len(), again, "the unconsumed tail gave events");
            }
            Err(e) => {
                // The connection is closed: nothing more is fed.
                return Outcome {
                    events,
                    result: Err(e),
                    error_chunk: Some(chunk),
                    consumed,
                    frames: d.frames(),
                    idle: d.is_idle(),
                };
            }
        }
    }
    assert_eq!(consumed + pending.len(), stream.len());
    Outcome {
        events,
        result: Ok(()),
        error_chunk: None,
        consumed,
        frames: d.frames(),
        idle: d.is_idle(),
    }
}

/// Feeds `stream` whole, in the input's chunks and (if small) one byte at a time; checks the three agree
/// with each other and with the reference parser. Returns the chunked outcome.
fn check_stream(max: usize, stream: &[u8], chunks: &[usize]) -> Outcome {
    let whole = feed(max, stream, || usize::MAX);
    let mut cycle = chunks.iter().copied().cycle();
    let split = feed(max, stream, || cycle.next().unwrap());
    let bytewise = (stream.len() <= BYTEWISE_LIMIT).then(|| feed(max, stream, || 1));

    for (name, other) in [
        ("split", Some(&split)),
        ("byte-at-a-time", bytewise.as_ref()),
    ] {
        let Some(other) = other else { continue };
        assert_eq!(
            whole.result, other.result,
            "{name}: result differs from one call"
        );
        assert_eq!(
            whole.events, other.events,
            "{name}: events differ from one call"
        );
        if whole.result.is_ok() {
            assert_eq!(whole.consumed, other.consumed, "{name}: consumed differs");
            assert_eq!(whole.frames, other.frames, "{name}: frames() differs");
            assert_eq!(whole.idle, other.idle, "{name}: is_idle() differs");
        }
    }
    // An error surfaces with the byte that reveals it, however the stream is split.
    if let Some((_, revealed)) = bytewise.as_ref().and_then(|b| b.error_chunk) {
        let (from, to) = split.error_chunk.unwrap();
        assert!(
            from < revealed && revealed <= to,
            "error revealed by byte {revealed} surfaced feeding {from}..{to}"
        );
    }

    compare_with_reference(max, stream, &whole);
    split
}

// ---------------------------------------------------------------------------------------------
// Reference parser: whole buffer at once, written from RFC 6455 and the decoder's doc comments.

#[derive(Debug)]
enum RefEnd {
    /// No violation in the bytes present. `consumed` is what the decoder must have taken: every
    /// complete frame plus a refused frame whose header has arrived (its payload is skipped as it
    /// comes). `in_header` says the stream stops inside a frame header.
    Fine {
        consumed: usize,
        idle: bool,
        in_header: bool,
    },
    /// The first frame that breaks a rule; any of `allowed` is a right answer.
    Invalid { allowed: Vec<ProtocolError> },
}

#[derive(Debug)]
struct RefResult {
    events: Vec<Inbound>,
    frames: u64,
    end: RefEnd,
}

#[derive(Debug)]
struct RefHeader {
    fin: bool,
    rsv: u8,
    opcode: u8,
    len: u64,
    key: Option<[u8; 4]>,
    size: usize,
}

/// `None` until the whole header (masking key included, if the mask bit is set) is there.
fn ref_header(b: &[u8]) -> Option<RefHeader> {
    let (&b0, &b1) = (b.first()?, b.get(1)?);
    let mut size = 2;
    let len = match b1 & 0b0111_1111 {
        126 => {
            size += 2;
            b.get(2..4)?
                .iter()
                .fold(0u64, |a, &x| a << 8 | u64::from(x))
        }
        127 => {
            size += 8;
            b.get(2..10)?
                .iter()
                .fold(0u64, |a, &x| a << 8 | u64::from(x))
        }
        n => u64::from(n),
    };
    let key = if b1 & 0b1000_0000 != 0 {
        let k = b.get(size..size + 4)?;
        size += 4;
        Some([k[0], k[1], k[2], k[3]])
    } else {
        None
    };
    Some(RefHeader {
        fin: b0 & 0b1000_0000 != 0,
        rsv: (b0 >> 4) & 0b111,
        opcode: b0 & 0b1111,
        len,
        key,
        size,
    })
}

fn ref_unmask(p: &[u8], key: [u8; 4]) -> Vec<u8> {
    (0..p.len()).map(|i| p[i] ^ key[i % 4]).collect()
}

/// RFC 6455 §7.4.1/§7.4.2 and the IANA registry: codes an endpoint may put in a Close frame.
fn ref_close_code_ok(c: u16) -> bool {
    match c {
        1000 | 1001 | 1002 | 1003 => true,
        1004 | 1005 | 1006 => false, // reserved; "no status" and "abnormal" are local-only
        1007 | 1008 | 1009 | 1010 | 1011 => true,
        1012 | 1013 | 1014 => true, // IANA: service restart, try again later, bad gateway
        1015 => false,              // TLS failure, local-only
        3000..=4999 => true,        // libraries/frameworks, private use
        _ => false,                 // 0-999 unused, 1016-2999 protocol/extensions, 5000+
    }
}

#[derive(Debug, PartialEq)]
enum RefMsg {
    Idle,
    Text(Vec<u8>),
    Refused,
}

fn reference(max: usize, s: &[u8]) -> RefResult {
    let mut events = Vec::new();
    let mut frames = 0u64;
    let mut msg = RefMsg::Idle;
    let mut at = 0usize;
    let end = loop {
        if at == s.len() {
            break RefEnd::Fine {
                consumed: at,
                idle: msg == RefMsg::Idle,
                in_header: false,
            };
        }
        let Some(h) = ref_header(&s[at..]) else {
            break RefEnd::Fine {
                consumed: at,
                idle: msg == RefMsg::Idle,
                in_header: true,
            };
        };

        // Header-level rules: every one this frame breaks is an acceptable error.
        let mut bad = Vec::new();
        if h.rsv != 0 {
            bad.push(ProtocolError::ReservedBits); // no extension is negotiated
        }
        if h.key.is_none() {
            bad.push(ProtocolError::Unmasked); // §5.1: a client masks every frame
        }
        if h.len >> 63 != 0 {
            bad.push(ProtocolError::LengthOverflow); // §5.2: MSB of the 64-bit length is 0
        }
        let control = h.opcode & 0b1000 != 0;
        if control {
            if !matches!(h.opcode, 0x8 | 0x9 | 0xA) {
                bad.push(ProtocolError::UnknownOpcode(h.opcode));
            }
            if !h.fin {
                bad.push(ProtocolError::FragmentedControl);
            }
            if h.len > 125 {
                bad.push(ProtocolError::ControlTooLong);
            }
        } else {
            if h.len > MAX_FRAME {
                bad.push(ProtocolError::FrameTooBig(h.len));
            }
            match (h.opcode, &msg) {
                (0x0, RefMsg::Idle) => bad.push(ProtocolError::UnexpectedContinuation),
                (0x1 | 0x2, RefMsg::Text(_) | RefMsg::Refused) => {
                    bad.push(ProtocolError::ExpectedContinuation)
                }
                (0x0..=0x2, _) => {}
                (op, _) => bad.push(ProtocolError::UnknownOpcode(op)),
            }
        }
        if !bad.is_empty() {
            break RefEnd::Invalid { allowed: bad };
        }
        let key = h.key.unwrap();
        let body_at = at + h.size;
        let have = s.len() - body_at; // payload bytes present
        let complete = have as u64 >= h.len;

        if !control {
            // A message is refused at the frame that makes it binary or longer than the limit;
            // the rest of a refused message is skipped frame by frame as it arrives.
            let refusal = match (&msg, h.opcode) {
                (RefMsg::Refused, _) => None,
                (RefMsg::Idle, 0x2) => Some(Inbound::Binary),
                (RefMsg::Idle, _) if h.len > max as u64 => {
                    Some(Inbound::TooLarge { declared: h.len })
                }
                (RefMsg::Text(acc), _) if acc.len() as u64 + h.len > max as u64 => {
                    Some(Inbound::TooLarge {
                        declared: acc.len() as u64 + h.len,
                    })
                }
                _ => None,
            };
            if let Some(ev) = refusal {
                events.push(ev);
                msg = RefMsg::Refused;
            }
            if msg == RefMsg::Refused {
                if h.fin {
                    msg = RefMsg::Idle;
                }
                if !complete {
                    // Mid-skip: all bytes are taken, the decoder is not idle.
                    break RefEnd::Fine {
                        consumed: s.len(),
                        idle: false,
                        in_header: false,
                    };
                }
                frames += 1;
                at = body_at + h.len as usize;
                continue;
            }
        }

        if !complete {
            break RefEnd::Fine {
                consumed: at,
                idle: msg == RefMsg::Idle,
                in_header: false,
            };
        }
        let payload = ref_unmask(&s[body_at..body_at + h.len as usize], key);
        frames += 1;
        at = body_at + h.len as usize;
        match h.opcode {
            0x9 => events.push(Inbound::Ping(payload)),
            0xA => events.push(Inbound::Pong),
            0x8 => {
                if payload.is_empty() {
                    events.push(Inbound::Close {
                        code: None,
                        reason: String::new(),
                    });
                } else if payload.len() == 1 {
                    break RefEnd::Invalid {
                        allowed: vec![ProtocolError::BadClosePayload],
                    };
                } else {
                    let code = u16::from(payload[0]) << 8 | u16::from(payload[1]);
                    let reason = std::str::from_utf8(&payload[2..]);
                    let mut bad = Vec::new();
                    if !ref_close_code_ok(code) {
                        bad.push(ProtocolError::BadCloseCode(code));
                    }
                    if reason.is_err() {
                        bad.push(ProtocolError::BadCloseReason);
                    }
                    if !bad.is_empty() {
                        break RefEnd::Invalid { allowed: bad };
                    }
                    events.push(Inbound::Close {
                        code: Some(code),
                        reason: reason.unwrap().to_owned(),
                    });
                }
            }
            _ => {
                // Accepted text (binary and oversized were refused above).
                msg = match (std::mem::replace(&mut msg, RefMsg::Idle), h.fin) {
                    (RefMsg::Idle, true) => {
                        events.push(Inbound::Text(payload));
                        RefMsg::Idle
                    }
                    (RefMsg::Idle, false) => RefMsg::Text(payload),
                    (RefMsg::Text(mut acc), fin) => {
                        acc.extend_from_slice(&payload);
                        if fin {
                            events.push(Inbound::Text(acc));
                            RefMsg::Idle
                        } else {
                            RefMsg::Text(acc)
                        }
                    }
                    (RefMsg::Refused, _) => unreachable!("refused frames are skipped above"),
                };
            }
        }
    };
    RefResult {
        events,
        frames,
        end,
    }
}

/// Whether an error the decoder reported inside an incomplete header is visible in the bytes
/// that are there (the reference waits for the whole header before judging).
fn justified_early(e: ProtocolError, partial: &[u8]) -> bool {
    match e {
        ProtocolError::ReservedBits => partial[0] & 0x70 != 0,
        ProtocolError::Unmasked => partial.len() >= 2 && partial[1] & 0x80 == 0,
        ProtocolError::LengthOverflow => {
            partial.len() >= 10 && partial[1] & 0x7F == 127 && partial[2] & 0x80 != 0
        }
        _ => false,
    }
}

fn compare_with_reference(max: usize, stream: &[u8], got: &Outcome) -> RefResult {
    let want = reference(max, stream);
    assert_eq!(got.events, want.events, "events differ from the reference");
    match (&want.end, got.result) {
        (RefEnd::Invalid { allowed }, Err(e)) => {
            assert!(
                allowed.contains(&e),
                "decoder says {e:?}, reference {allowed:?}"
            );
        }
        (RefEnd::Invalid { allowed }, Ok(())) => {
            panic!("decoder accepted a stream the reference refuses with {allowed:?}")
        }
        (
            RefEnd::Fine {
                in_header: true,
                consumed,
                ..
            },
            Err(e),
        ) => {
            assert!(
                justified_early(e, &stream[*consumed..]),
                "decoder says {e:?} inside a header the reference finds fine so far"
            );
        }
        (RefEnd::Fine { .. }, Err(e)) => panic!("decoder says {e:?}, reference finds no fault"),
        (RefEnd::Fine { consumed, idle, .. }, Ok(())) => {
            assert_eq!(
                got.consumed, *consumed,
                "consumed differs from the reference"
            );
            assert_eq!(got.idle, *idle, "is_idle() differs from the reference");
            assert_eq!(
                got.frames, want.frames,
                "frames() differs from the reference"
            );
        }
    }
    want
}

// ---------------------------------------------------------------------------------------------
// Well-formed streams.

struct Generated {
    stream: Vec<u8>,
    /// The events the stream must give, by the documented semantics.
    events: Vec<Inbound>,
    frames: u64,
}

/// Upper bound on a generated stream, to keep executions fast; room for one message that needs
/// the minimal 64-bit length encoding (65536 bytes and more).
const BUDGET: usize = 70_000;
/// Streams up to this size are also fed one byte at a time.
const BYTEWISE_LIMIT: usize = 4096;

const CLOSE_CODES: [u16; 12] = [
    1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
];

impl Generated {
    /// Appends one masked client frame, with a length encoding chosen by the input: the minimal
    /// one or a longer one (RFC 6455 asks senders for the minimal one; the decoder accepts all).
    fn frame(
        &mut self,
        u: &mut Unstructured,
        fin: bool,
        opcode: u8,
        payload: &[u8],
    ) -> AResult<()> {
        let key: [u8; 4] = u.arbitrary()?;
        let wide: u8 = u.int_in_range(0..=2)?;
        let n = payload.len();
        let minimal = match n {
            0..=125 => 0,
            126..=65535 => 1,
            _ => 2,
        };
        self.stream.push(u8::from(fin) << 7 | opcode);
        match wide.max(minimal) {
            0 => self.stream.push(0x80 | n as u8),
            1 => {
                self.stream.push(0x80 | 126);
                self.stream.extend_from_slice(&(n as u16).to_be_bytes());
            }
            _ => {
                self.stream.push(0x80 | 127);
                self.stream.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        self.stream.extend_from_slice(&key);
        self.stream
            .extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        self.frames += 1;
        Ok(())
    }

    fn control(&mut self, u: &mut Unstructured) -> AResult<()> {
        let n = u.int_in_range(0..=125usize)?;
        let payload = u.bytes(n.min(u.len()))?.to_vec();
        if u.arbitrary()? {
            self.frame(u, true, 0x9, &payload)?;
            self.events.push(Inbound::Ping(payload));
        } else {
            self.frame(u, true, 0xA, &payload)?;
            self.events.push(Inbound::Pong);
        }
        Ok(())
    }

    /// A data message cut into fragments, with pings/pongs between them.
    fn message(&mut self, u: &mut Unstructured, max: usize, binary: bool) -> AResult<()> {
        let body = message_body(u, max, BUDGET.saturating_sub(self.stream.len()))?;
        let pieces = u.int_in_range(1..=6usize)?;
        let mut cuts = (1..pieces)
            .map(|_| u.int_in_range(0..=body.len()))
            .collect::<AResult<Vec<_>>>()?;
        cuts.push(body.len());
        cuts.sort_unstable();
        let (mut from, mut refused) = (0usize, false);
        for (i, &to) in cuts.iter().enumerate() {
            let last = i + 1 == cuts.len();
            let opcode = match (i, binary) {
                (0, false) => 0x1,
                (0, true) => 0x2,
                _ => 0x0,
            };
            self.frame(u, last, opcode, &body[from..to])?;
            if !refused {
                if binary {
                    self.events.push(Inbound::Binary);
                    refused = true;
                } else if to > max {
                    // The fragment that crosses the limit is where the message is refused.
                    self.events.push(Inbound::TooLarge {
                        declared: to as u64,
                    });
                    refused = true;
                } else if last {
                    self.events.push(Inbound::Text(body.clone()));
                }
            }
            from = to;
            if !last && u.ratio(1, 3)? {
                self.control(u)?;
            }
        }
        Ok(())
    }

    fn close(&mut self, u: &mut Unstructured) -> AResult<()> {
        let code = match u.int_in_range(0..=2u8)? {
            0 => None,
            1 => Some(*u.choose(&CLOSE_CODES)?),
            _ => Some(u.int_in_range(3000..=4999u16)?),
        };
        let mut payload = Vec::new();
        let mut reason = String::new();
        if let Some(c) = code {
            let r: &str = u.arbitrary()?;
            let mut cut = r.len().min(123);
            while !r.is_char_boundary(cut) {
                cut -= 1;
            }
            reason = r[..cut].to_owned();
            payload.extend_from_slice(&c.to_be_bytes());
            payload.extend_from_slice(reason.as_bytes());
        }
        self.frame(u, true, 0x8, &payload)?;
        self.events.push(Inbound::Close { code, reason });
        Ok(())
    }
}

/// A UTF-8 message body: text from the input, or filler of a length picked around the limit,
/// around the 16/64-bit length boundary, or small.
fn message_body(u: &mut Unstructured, max: usize, room: usize) -> AResult<Vec<u8>> {
    let len = match u.int_in_range(0..=4u8)? {
        0 => return Ok(u.arbitrary::<&str>()?.as_bytes().to_vec()),
        1 => u.int_in_range(0..=130usize)?,
        2 if max <= 65536 => max.saturating_sub(2) + u.int_in_range(0..=4usize)?,
        3 => 65534 + u.int_in_range(0..=3usize)?,
        _ => u.int_in_range(0..=1000usize)?,
    }
    .min(room);
    let seed: u8 = u.arbitrary()?;
    Ok((0..len)
        .map(|i| b' ' + (seed as usize + i * 7) as u8 % 95)
        .collect())
}

fn generate(u: &mut Unstructured, max: usize) -> AResult<Generated> {
    let mut g = Generated {
        stream: Vec::new(),
        events: Vec::new(),
        frames: 0,
    };
    for _ in 0..16 {
        if u.is_empty() || g.stream.len() >= BUDGET {
            break;
        }
        match u.int_in_range(0..=5u8)? {
            0 | 1 => g.message(u, max, false)?,
            2 => g.message(u, max, true)?,
            3 | 4 => g.control(u)?,
            _ => {
                g.close(u)?;
                break;
            }
        }
    }
    Ok(g)
}

fn check_well_formed(max: usize, g: &Generated, chunks: &[usize]) {
    // The reference reads the generated stream back to the events it was built with.
    let want = reference(max, &g.stream);
    assert_eq!(want.events, g.events, "reference vs generator");
    assert_eq!(want.frames, g.frames, "reference frame count vs generator");
    assert!(
        matches!(
            want.end,
            RefEnd::Fine { consumed, idle: true, in_header: false } if consumed == g.stream.len()
        ),
        "reference does not find the generated stream complete and valid: {:?}",
        want.end
    );
    // The decoder, however fed, agrees with the reference (events, nothing pending, idle at the
    // end, every frame counted).
    let got = check_stream(max, &g.stream, chunks);
    assert_eq!(got.result, Ok(()));
    assert_eq!(got.events, g.events);
    assert_eq!(got.consumed, g.stream.len(), "bytes left pending");
    assert!(got.idle, "decoder not idle after a complete stream");
    assert_eq!(got.frames, g.frames, "frames() vs frames sent");
}

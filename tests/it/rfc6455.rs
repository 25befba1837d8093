//! The WebSocket layer against RFC 6455, case by case after the Autobahn test suite's fuzzing
//! client (sections 1–7 and 9), on a raw socket against the real hub. The hub is not an echo
//! server: a text message it can act on is a `ping` request (padded with JSON whitespace to the
//! length a case needs), and what it answers shows the message arrived whole. Where the hub
//! differs from an echo server on purpose, the case says so (docs/protocol.md, "The WebSocket
//! layer"): binary messages and text over `max_message_bytes` are refused with a typed error and
//! the connection carries on; a text message that is not UTF-8 is answered `bad_utf8` (a
//! protocol error, not a framing one) instead of closing with 1007.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CONT: u8 = 0x0;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;
const MASK: [u8; 4] = [0x12, 0x34, 0x56, 0x78];

/// A client frame: `fin`, reserved bits (`rsv` in the 0x70 position), opcode, masked payload.
fn frame_rsv(fin: bool, rsv: u8, op: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![(if fin { 0x80 } else { 0 }) | rsv | op];
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
    v.extend_from_slice(&MASK);
    v.extend(payload.iter().zip(MASK.iter().cycle()).map(|(b, m)| b ^ m));
    v
}

fn frame(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
    frame_rsv(fin, 0, op, payload)
}

/// A `ping` request with id `id`, padded with spaces to exactly `len` bytes.
fn ping_text(id: &str, len: usize) -> Vec<u8> {
    let mut s = json!({"v": 1, "id": id, "type": "ping"}).to_string();
    assert!(s.len() <= len, "{len} is too short for a request");
    s.extend(std::iter::repeat_n(' ', len - s.len()));
    s.into_bytes()
}

fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

/// What the hub sent: a data or control frame, or the end of the stream.
#[derive(Debug, PartialEq)]
enum Got {
    Text(Value),
    Pong(Vec<u8>),
    Close(Option<u16>, String),
    Eof,
}

/// A WebSocket client that writes exactly the bytes a case needs.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn open(hub: &TestHub) -> Raw {
        let s = TcpStream::connect(hub.addr).await.unwrap();
        let mut r = Raw { s, buf: Vec::new() };
        let req = format!(
            "GET /ws HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer {}\r\n\r\n",
            hub.addr,
            hub.token(DONGFENG)
        );
        r.write(req.as_bytes()).await;
        let head = loop {
            if let Some(end) = r.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&r.buf[..end]).to_string();
                r.buf.drain(..end + 4);
                break head;
            }
            r.fill().await;
        };
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        match r.next().await {
            Got::Text(h) => assert_eq!(h["type"], "hello"),
            other => panic!("{other:?}"),
        }
        r
    }

    async fn write(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.unwrap();
    }

    /// Writes in pieces of `chunk` bytes, each its own write.
    async fn write_chunked(&mut self, bytes: &[u8], chunk: usize) {
        for piece in bytes.chunks(chunk) {
            self.s.write_all(piece).await.unwrap();
            self.s.flush().await.unwrap();
        }
    }

    async fn send(&mut self, op: u8, payload: &[u8]) {
        self.write(&frame(true, op, payload)).await;
    }

    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(PATIENCE, self.s.read(&mut chunk))
            .await
            .expect("the hub answers within PATIENCE")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// The next frame from the hub (server frames are never masked).
    async fn next(&mut self) -> Got {
        loop {
            if self.buf.len() >= 2 {
                let (len, at) = match self.buf[1] & 0x7F {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => (
                        u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize,
                        10,
                    ),
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                assert_eq!(self.buf[1] & 0x80, 0, "server frames are unmasked");
                if len != usize::MAX && self.buf.len() >= at + len {
                    let op = self.buf[0] & 0x0F;
                    assert_ne!(self.buf[0] & 0x80, 0, "the hub does not fragment");
                    let payload: Vec<u8> = self.buf[at..at + len].to_vec();
                    self.buf.drain(..at + len);
                    return match op {
                        TEXT => Got::Text(serde_json::from_slice(&payload).unwrap()),
                        PONG => Got::Pong(payload),
                        CLOSE => {
                            let code = (payload.len() >= 2)
                                .then(|| u16::from_be_bytes([payload[0], payload[1]]));
                            let reason =
                                String::from_utf8(payload.get(2..).unwrap_or_default().to_vec())
                                    .expect("close reasons are UTF-8");
                            Got::Close(code, reason)
                        }
                        other => panic!("unexpected opcode {other}"),
                    };
                }
            }
            if !self.fill().await {
                assert!(self.buf.is_empty(), "EOF inside a frame");
                return Got::Eof;
            }
        }
    }

    /// The next text message's JSON.
    async fn text(&mut self) -> Value {
        match self.next().await {
            Got::Text(v) => v,
            other => panic!("expected a text message, got {other:?}"),
        }
    }

    /// The answer to ping `id`, which must be a reply.
    async fn replied(&mut self, id: &str) {
        let m = self.text().await;
        assert_eq!(
            (m["type"].as_str(), m["re"].as_str()),
            (Some("reply"), Some(id)),
            "{m}"
        );
    }

    /// A typed error answer.
    async fn error(&mut self) -> String {
        let m = self.text().await;
        assert_eq!(m["type"], "error", "{m}");
        m["data"]["code"].as_str().unwrap().to_owned()
    }

    /// The hub closes with `code` and then ends the stream; nothing else comes first.
    async fn closed_with(&mut self, code: u16) {
        match self.next().await {
            Got::Close(c, reason) => assert_eq!(c, Some(code), "{reason}"),
            other => panic!("expected a close with {code}, got {other:?}"),
        }
        // The client's half of the closing handshake, then the TCP close.
        let _ = self
            .s
            .write_all(&frame(true, CLOSE, &code.to_be_bytes()))
            .await;
        assert_eq!(self.next().await, Got::Eof);
    }

    /// Proves the connection is alive and everything before was answered.
    async fn alive(&mut self) {
        self.send(TEXT, &ping_text("alive", 40)).await;
        self.replied("alive").await;
    }
}

async fn hub() -> TestHub {
    spawn_app(|c| {
        // The cases send bursts; throttling is tested elsewhere.
        c.transport.rate_per_sec = 100_000;
        c.transport.rate_burst = 100_000;
        c.transport.abuse_errors = 1_000;
    })
    .await
}

#[tokio::test]
async fn section_1_framing() {
    let hub = hub().await;
    let mut r = Raw::open(&hub).await;
    // 1.1.1–1.1.6: text of 0, 125, 126, 127, 128, 65535 and 65536 bytes (the limit is 64 KiB).
    r.send(TEXT, b"").await;
    assert_eq!(
        r.error().await,
        "bad_json",
        "an empty text message is not a request"
    );
    for len in [125usize, 126, 127, 128, 65535, 65536] {
        r.send(TEXT, &ping_text(&format!("t{len}"), len)).await;
        r.replied(&format!("t{len}")).await;
    }
    // 1.1.7–1.1.8: the same in 997-byte writes.
    for len in [65535usize, 65536] {
        let f = frame(true, TEXT, &ping_text(&format!("c{len}"), len));
        r.write_chunked(&f, 997).await;
        r.replied(&format!("c{len}")).await;
    }
    // 1.2.x: binary of every length is refused with a typed error, once per message.
    for len in [0usize, 125, 126, 65535, 65536] {
        r.send(BINARY, &vec![0xfe; len]).await;
        assert_eq!(r.error().await, "binary_not_supported");
    }
    r.alive().await;
}

#[tokio::test]
async fn section_2_pings_and_pongs() {
    let hub = hub().await;
    let mut r = Raw::open(&hub).await;
    // 2.1–2.4: pings with no, text, binary and 125-byte payloads: pongs echo them.
    for payload in [
        vec![],
        b"Hello, world!".to_vec(),
        vec![0x00, 0xff, 0xfe, 0xfd, 0xfc, 0xfb],
        vec![0xfe; 125],
    ] {
        r.send(PING, &payload).await;
        assert_eq!(r.next().await, Got::Pong(payload));
    }
    // 2.6: a 125-byte ping written a byte at a time.
    r.write_chunked(&frame(true, PING, &[0x42; 125]), 1).await;
    assert_eq!(r.next().await, Got::Pong(vec![0x42; 125]));
    // 2.7–2.9: unsolicited pongs are ignored; a ping after them is answered alone.
    r.send(PONG, b"").await;
    r.send(PONG, b"unsolicited").await;
    r.send(PING, b"after").await;
    assert_eq!(r.next().await, Got::Pong(b"after".to_vec()));
    // 2.10–2.11: ten pings, at once and in 1-byte writes: ten pongs, in order.
    let mut ten = Vec::new();
    for i in 0..10u8 {
        ten.extend(frame(true, PING, &[i]));
    }
    r.write(&ten).await;
    r.write_chunked(&ten, 1).await;
    for i in (0..10u8).chain(0..10) {
        assert_eq!(r.next().await, Got::Pong(vec![i]));
    }
    r.alive().await;
    // 2.5: a ping over 125 bytes breaks the protocol.
    r.send(PING, &[0x01; 126]).await;
    r.closed_with(1002).await;
}

#[tokio::test]
async fn section_3_reserved_bits() {
    let hub = hub().await;
    // 3.1–3.7: a reserved bit on a text, binary, ping or close frame fails the connection; what
    // came before it is answered, what comes after is not.
    for (rsv, op, payload) in [
        (0x40, TEXT, ping_text("x", 40)),
        (0x20, TEXT, ping_text("x", 40)),
        (0x60, TEXT, ping_text("x", 40)),
        (0x10, BINARY, vec![0; 8]),
        (0x50, BINARY, vec![0; 8]),
        (0x30, PING, b"p".to_vec()),
        (0x70, CLOSE, 1000u16.to_be_bytes().to_vec()),
    ] {
        let mut r = Raw::open(&hub).await;
        let mut bytes = frame(true, TEXT, &ping_text("before", 40));
        bytes.extend(frame_rsv(true, rsv, op, &payload));
        bytes.extend(frame(true, PING, b"after"));
        r.write(&bytes).await;
        r.replied("before").await;
        r.closed_with(1002).await;
    }
}

#[tokio::test]
async fn section_4_opcodes() {
    let hub = hub().await;
    // 4.1.1–4.2.5: reserved data opcodes 3–7 and control opcodes 0xB–0xF fail the connection.
    for op in [0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF] {
        let mut r = Raw::open(&hub).await;
        let mut bytes = frame(true, TEXT, &ping_text("before", 40));
        bytes.extend(frame(true, op, b"reserved"));
        bytes.extend(frame(true, PING, b"after"));
        r.write(&bytes).await;
        r.replied("before").await;
        r.closed_with(1002).await;
    }
}

#[tokio::test]
async fn section_5_fragmentation() {
    let hub = hub().await;
    let mut r = Raw::open(&hub).await;
    let msg = ping_text("frag", 300);
    // 5.3–5.5: one text message in one fragment plus an empty continuation, and in many
    // fragments, written whole and a byte at a time.
    let mut one = frame(false, TEXT, &msg);
    one.extend(frame(true, CONT, b""));
    r.write(&one).await;
    r.replied("frag").await;
    let mut many = frame(false, TEXT, &msg[..10]);
    for piece in msg[10..290].chunks(7) {
        many.extend(frame(false, CONT, piece));
    }
    many.extend(frame(true, CONT, &msg[290..]));
    r.write(&many).await;
    r.replied("frag").await;
    r.write_chunked(&many, 1).await;
    r.replied("frag").await;
    // 5.6–5.8: a ping between fragments is answered at once, the message once it is whole.
    let mut with_ping = frame(false, TEXT, &msg[..100]);
    with_ping.extend(frame(true, PING, b"between"));
    with_ping.extend(frame(true, CONT, &msg[100..]));
    r.write_chunked(&with_ping, 3).await;
    assert_eq!(r.next().await, Got::Pong(b"between".to_vec()));
    r.replied("frag").await;
    // 5.19–5.20: several pings interleaved with a message in many fragments.
    let mut mixed = Vec::new();
    for (i, piece) in msg.chunks(60).enumerate() {
        let last = (i + 1) * 60 >= msg.len();
        mixed.extend(frame(last, if i == 0 { TEXT } else { CONT }, piece));
        if !last {
            mixed.extend(frame(true, PING, &[i as u8]));
        }
    }
    r.write(&mixed).await;
    for i in 0..4u8 {
        assert_eq!(r.next().await, Got::Pong(vec![i]));
    }
    r.replied("frag").await;
    r.alive().await;

    // 5.1–5.2: a fragmented ping or pong breaks the protocol.
    for op in [PING, PONG] {
        let mut r = Raw::open(&hub).await;
        let mut bytes = frame(false, op, b"frag");
        bytes.extend(frame(true, CONT, b"ment"));
        r.write(&bytes).await;
        r.closed_with(1002).await;
    }
    // 5.9–5.18: continuations with no message started, and a new message inside one.
    let cases: Vec<Vec<u8>> = vec![
        frame(true, CONT, b"orphan"),
        frame(false, CONT, b"orphan"),
        [frame(false, TEXT, b"{\"v\""), frame(false, TEXT, b":1}")].concat(),
        [frame(false, TEXT, b"{\"v\""), frame(true, BINARY, b"x")].concat(),
    ];
    for bytes in cases {
        let mut r = Raw::open(&hub).await;
        r.write(&frame(true, TEXT, &ping_text("before", 40))).await;
        r.replied("before").await;
        r.write(&bytes).await;
        r.closed_with(1002).await;
    }
}

#[tokio::test]
async fn section_6_utf8() {
    let hub = hub().await;
    let mut r = Raw::open(&hub).await;
    // 6.1–6.4 and 6.5–6.23: valid UTF-8 of 1 to 4 bytes per character, whole and split between
    // fragments in the middle of a character: the message is taken once it is whole.
    let id = "κόσμε-网格-𝄞-\u{10ffff}";
    let msg = json!({"v": 1, "id": id, "type": "ping"})
        .to_string()
        .into_bytes();
    r.send(TEXT, &msg).await;
    r.replied(id).await;
    for cut in 1..msg.len() {
        let mut split = frame(false, TEXT, &msg[..cut]);
        split.extend(frame(true, CONT, &msg[cut..]));
        r.write(&split).await;
        r.replied(id).await;
    }
    // 6.3, 6.6, 6.8–6.22: text that is not UTF-8 (a stray continuation byte, a truncated
    // sequence, an overlong form, a surrogate, a code point past U+10FFFF). The hub answers
    // `bad_utf8` as a protocol error and keeps the connection, where an echo server closes with
    // 1007: the terminal learns which message was wrong and its other requests carry on.
    for bad in [
        &b"\x80"[..],
        b"\xce\xba\xe1\xbd",
        b"\xc0\xaf",
        b"\xed\xa0\x80",
        b"\xf4\x90\x80\x80",
        b"\xfe\xff",
    ] {
        r.send(TEXT, bad).await;
        assert_eq!(r.error().await, "bad_utf8");
        // The same split over fragments.
        let mut split = frame(false, TEXT, &bad[..1]);
        split.extend(frame(true, CONT, &bad[1..]));
        r.write(&split).await;
        assert_eq!(r.error().await, "bad_utf8");
    }
    r.alive().await;
}

#[tokio::test]
async fn section_7_close_handling() {
    let hub = hub().await;
    // 7.1.1: a close is answered with the same code, then the hub closes TCP.
    let mut r = Raw::open(&hub).await;
    r.send(CLOSE, &close_payload(1000, b"bye")).await;
    assert_eq!(r.next().await, Got::Close(Some(1000), "closed".into()));
    assert_eq!(r.next().await, Got::Eof);
    // 7.1.2–7.1.6: after a close, nothing more is read: a second close, a ping, a text, the
    // rest of a fragmented message.
    let mut r = Raw::open(&hub).await;
    let mut bytes = frame(false, TEXT, b"{\"v\":1,");
    bytes.extend(frame(true, CLOSE, &close_payload(1000, b"")));
    bytes.extend(frame(true, CLOSE, &close_payload(1001, b"")));
    bytes.extend(frame(true, PING, b"after close"));
    bytes.extend(frame(true, TEXT, &ping_text("after", 40)));
    r.write(&bytes).await;
    assert_eq!(r.next().await, Got::Close(Some(1000), "closed".into()));
    assert_eq!(r.next().await, Got::Eof);
    // 7.3.1: an empty close is answered with an empty close.
    let mut r = Raw::open(&hub).await;
    r.send(CLOSE, b"").await;
    assert_eq!(r.next().await, Got::Close(None, String::new()));
    // 7.3.3–7.3.5: a code, a code and a reason, a code and a 123-byte reason: echoed.
    for (code, reason) in [
        (1000u16, vec![]),
        (1001, b"Hello World!".to_vec()),
        (1000, vec![b'*'; 123]),
    ] {
        let mut r = Raw::open(&hub).await;
        r.send(CLOSE, &close_payload(code, &reason)).await;
        assert!(matches!(r.next().await, Got::Close(Some(c), _) if c == code));
    }
    // 7.7.1–7.7.13: every code an endpoint may send is echoed.
    for code in [
        1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
    ] {
        let mut r = Raw::open(&hub).await;
        r.send(CLOSE, &code.to_be_bytes()).await;
        assert_eq!(
            r.next().await,
            Got::Close(Some(code), "closed".into()),
            "{code}"
        );
    }
    // 7.3.2, 7.3.6: a one-byte close payload, a reason that makes the frame over 125 bytes.
    for payload in [vec![0x03], close_payload(1000, &[b'*'; 124])] {
        let mut r = Raw::open(&hub).await;
        r.send(CLOSE, &payload).await;
        r.closed_with(1002).await;
    }
    // 7.9.1–7.9.9, 7.13.1–7.13.2: codes nobody may send (1005, 1006 and 1015 only report).
    for code in [
        0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        let mut r = Raw::open(&hub).await;
        r.send(CLOSE, &code.to_be_bytes()).await;
        r.closed_with(1002).await;
    }
    // 7.5.1: a close reason that is not UTF-8.
    let mut r = Raw::open(&hub).await;
    r.send(CLOSE, &close_payload(1000, b"\xce\xba\xe1\xbd"))
        .await;
    r.closed_with(1007).await;
}

#[tokio::test]
async fn section_9_limits_and_performance() {
    let hub = hub().await;
    let mut r = Raw::open(&hub).await;
    // 9.1.1–9.1.6, 9.2.x: text messages of 64 KiB to 16 MiB, binary of the same sizes. Over the
    // 64 KiB limit a message is refused at its header and skipped as it arrives, never
    // buffered; the connection carries on. An echo server would echo them.
    r.send(TEXT, &ping_text("64k", 65536)).await;
    r.replied("64k").await;
    for len in [256 * 1024usize, 1 << 20, 4 << 20, 16 << 20] {
        r.send(TEXT, &vec![b' '; len]).await;
        assert_eq!(r.error().await, "message_too_large", "{len}");
        r.send(BINARY, &vec![0; len]).await;
        assert_eq!(r.error().await, "binary_not_supported", "{len}");
    }
    // 9.3.x, 9.5.x: 4 MiB in fragments of 64 B to 4 MiB, and written in pieces of 64 B to 128 KiB.
    for frag in [64usize, 4096, 65536, 1 << 20] {
        let big = vec![b' '; 4 << 20];
        let mut bytes = Vec::with_capacity(big.len() + big.len() / frag * 14 + 14);
        for (i, piece) in big.chunks(frag).enumerate() {
            let last = (i + 1) * frag >= big.len();
            bytes.extend(frame(last, if i == 0 { TEXT } else { CONT }, piece));
        }
        r.write(&bytes).await;
        assert_eq!(r.error().await, "message_too_large", "fragments of {frag}");
    }
    let one_mib = frame(true, TEXT, &vec![b' '; 1 << 20]);
    for piece in [64usize, 4096, 128 * 1024] {
        r.write_chunked(&one_mib, piece).await;
        assert_eq!(
            r.error().await,
            "message_too_large",
            "written {piece} at a time"
        );
    }
    // 9.7.x: a thousand requests of 0 to 64 KiB, one after another, each answered before the next.
    let started = std::time::Instant::now();
    for i in 0..1000usize {
        let len = [40, 128, 1024, 4096, 16384, 65536][i % 6];
        let id = format!("m{i}");
        r.send(TEXT, &ping_text(&id, len)).await;
        r.replied(&id).await;
    }
    let elapsed = started.elapsed();
    println!("9.7: 1000 round trips of 40 B – 64 KiB in {elapsed:?}");
    r.alive().await;
    // Past 16 MiB a frame is not skipped: its sender would never finish (see the deadline test).
    r.write(&{
        let mut h = vec![0x81, 0x80 | 127];
        h.extend_from_slice(&((16u64 << 20) + 1).to_be_bytes());
        h.extend_from_slice(&MASK);
        h
    })
    .await;
    r.closed_with(1009).await;
}

#[tokio::test]
async fn a_frame_that_never_ends_does_not_keep_its_connection_alive() {
    let hub = spawn_app(|c| {
        c.transport.heartbeat_interval_ms = 200;
        c.transport.heartbeat_timeout_ms = 600;
    })
    .await;
    let mut r = Raw::open(&hub).await;
    // A header announcing 2^62 bytes: refused at once with 1009.
    let mut h = vec![0x81, 0x80 | 127];
    h.extend_from_slice(&(1u64 << 62).to_be_bytes());
    h.extend_from_slice(&MASK);
    r.write(&h).await;
    r.closed_with(1009).await;
    // A frame within the limits whose bytes trickle in, one every 100 ms, never finishing:
    // bytes are not a sign of life, finished frames are. The heartbeat timeout ends it.
    let mut r = Raw::open(&hub).await;
    let f = frame(true, TEXT, &ping_text("never", 2000));
    r.write(&f[..8]).await;
    let (mut rd, mut wr) = r.s.split();
    let trickle = async {
        for b in &f[8..] {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if wr.write_all(&[*b]).await.is_err() {
                break;
            }
        }
    };
    let mut got = Vec::new();
    let close = async {
        let mut chunk = [0u8; 256];
        while got.len() < 4 {
            match rd.read(&mut chunk).await {
                Ok(n) if n > 0 => got.extend_from_slice(&chunk[..n]),
                _ => break,
            }
        }
    };
    // Bounded: 2,000 bytes at 100 ms would take 200 s; the hub closes after 0.6–1 s.
    tokio::time::timeout(PATIENCE, async {
        tokio::select! {
            _ = close => {}
            _ = trickle => panic!("the trickle ran out before the hub closed"),
        }
    })
    .await
    .expect("closed within PATIENCE");
    assert_eq!(got[0], 0x88, "a close frame: {got:?}");
    assert_eq!(u16::from_be_bytes([got[2], got[3]]), 4000);
}

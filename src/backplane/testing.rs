//! A fake `Outbound` for the shells' unit tests: it records what a service sends, and holds a
//! directory the test sets, with no sockets.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;

use super::{Bus, ConnKey, Group, Located, Located1, Outbound, To, Via};
use crate::org::NodeIdx;
use crate::transport::frame;

/// One thing a service sent, as text.
#[derive(Clone, Debug, PartialEq)]
pub enum Sent {
    Frame { to: To, text: String, via: Via },
    Offer { ep: NodeIdx, seq: u64, text: String },
    Resumed { conn: ConnKey, upto: u64 },
    Join { group: Group, conn: ConnKey },
    Leave { group: Group, conn: ConnKey },
    Group { group: Group, text: String },
}

impl Sent {
    /// The message as JSON (frames only).
    pub fn json(&self) -> Option<serde_json::Value> {
        match self {
            Sent::Frame { text, .. } | Sent::Offer { text, .. } | Sent::Group { text, .. } => {
                serde_json::from_str(text).ok()
            }
            _ => None,
        }
    }
}

#[derive(Default)]
pub struct Recorder {
    sent: Mutex<Vec<Sent>>,
    directory: Mutex<HashMap<NodeIdx, Located1>>,
    closed: Mutex<Vec<ConnKey>>,
    bus: Bus,
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder::default()
    }

    /// Says a terminal is connected at one seat (or not at all, with `None`).
    pub fn place(&self, ep: NodeIdx, at: Option<Located>) {
        let mut d = self.directory.lock().unwrap();
        match at {
            Some(l) => d.insert(ep, smallvec::smallvec![l]),
            None => d.remove(&ep),
        };
    }

    /// Says a terminal is connected at these seats.
    pub fn place_seats(&self, ep: NodeIdx, seats: &[Located]) {
        self.directory
            .lock()
            .unwrap()
            .insert(ep, seats.iter().copied().collect());
    }

    /// Says connection `conn` has closed.
    pub fn close(&self, conn: ConnKey) {
        self.closed.lock().unwrap().push(conn);
    }

    /// Everything sent since the last call.
    pub fn take(&self) -> Vec<Sent> {
        std::mem::take(&mut *self.sent.lock().unwrap())
    }

    /// The JSON messages sent to `to` since the last call, leaving the others recorded.
    pub fn take_to(&self, to: To) -> Vec<serde_json::Value> {
        let mut sent = self.sent.lock().unwrap();
        let (mine, rest): (Vec<Sent>, Vec<Sent>) = sent
            .drain(..)
            .partition(|s| matches!(s, Sent::Frame { to: t, .. } if *t == to));
        *sent = rest;
        mine.iter().filter_map(Sent::json).collect()
    }

    fn push(&self, s: Sent) {
        self.sent.lock().unwrap().push(s);
    }
}

impl Outbound for Recorder {
    fn send(&self, to: To, f: &Bytes, via: Via) {
        self.push(Sent::Frame {
            to,
            text: frame::text_of(f),
            via,
        });
    }

    fn offer(&self, ep: NodeIdx, seq: u64, payload: &str) {
        self.push(Sent::Offer {
            ep,
            seq,
            text: frame::text_of(&crate::transport::protocol::outbox_frame(seq, payload)),
        });
    }

    fn resumed(&self, conn: ConnKey, upto: u64) {
        self.push(Sent::Resumed { conn, upto });
    }

    fn join(&self, group: &Group, conn: ConnKey) {
        self.push(Sent::Join {
            group: group.clone(),
            conn,
        });
    }

    fn leave(&self, group: &Group, conn: ConnKey) {
        self.push(Sent::Leave {
            group: group.clone(),
            conn,
        });
    }

    fn to_group(&self, group: &Group, f: &Bytes) {
        self.push(Sent::Group {
            group: group.clone(),
            text: frame::text_of(f),
        });
    }

    fn seats(&self, ep: NodeIdx) -> Located1 {
        self.directory
            .lock()
            .unwrap()
            .get(&ep)
            .cloned()
            .unwrap_or_default()
    }

    fn alive(&self, conn: ConnKey) -> bool {
        !self.closed.lock().unwrap().contains(&conn)
    }

    fn bus(&self) -> &Bus {
        &self.bus
    }
}

//! backplane — how hub nodes share presence and route messages to terminals.
//!
//! Domains publish presence events and address terminals only through this trait, so running
//! several hub nodes (Redis) changes the implementation chosen at start-up, not the domains.
//! The in-process default delivers to this node's presence actor and connection registry.

use std::sync::Arc;

use bytes::Bytes;

use crate::auth::Role;
use crate::hub::Registry;
use crate::org::NodeIdx;
use crate::presence::actor::{Event, PresenceHandle};
use crate::transport::conn::SendOutcome;

/// What happened to a message addressed to a terminal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Written to (or queued on) the terminal's connection.
    Sent,
    /// The terminal is not connected anywhere.
    Offline,
    /// The terminal's connection is closing; the message was dropped.
    Dropped,
    /// Connected but not resumed yet: the message goes out with the replay.
    Deferred,
}

#[async_trait::async_trait]
pub trait Backplane: Send + Sync + 'static {
    /// Sends a presence event to every hub node's presence state, this node's included, in one
    /// order that every node sees alike.
    async fn publish_presence(&self, ev: Event);

    /// Delivers an encoded frame to a terminal wherever it is connected.
    fn deliver(&self, to: NodeIdx, frame: &Bytes) -> Delivery;

    /// Like `deliver`, but the caller never writes to a socket itself: the frame is queued for
    /// the terminal's connection task. For relays that serve many terminals from one task.
    fn relay(&self, to: NodeIdx, frame: &Bytes) -> Delivery;

    /// Delivers durable outbox message `seq` live, if the terminal is connected and has resumed
    /// its outbox; otherwise it is replayed when the terminal resumes.
    fn deliver_outbox(&self, to: NodeIdx, seq: u64, frame: &Bytes) -> Delivery;

    /// The terminal's live connection, if it is connected: its key and role.
    fn connection(&self, ep: NodeIdx) -> Option<(u64, Role)>;

    fn name(&self) -> &'static str;
}

/// One hub process: everything stays in memory.
pub struct Memory {
    presence: PresenceHandle,
    local: Arc<Registry>,
}

impl Memory {
    pub fn new(presence: PresenceHandle, local: Arc<Registry>) -> Memory {
        Memory { presence, local }
    }
}

#[async_trait::async_trait]
impl Backplane for Memory {
    async fn publish_presence(&self, ev: Event) {
        self.presence.apply(ev).await;
    }

    fn deliver(&self, to: NodeIdx, frame: &Bytes) -> Delivery {
        match self.local.get(to) {
            None => Delivery::Offline,
            Some(conn) => match conn.send(frame) {
                SendOutcome::Written | SendOutcome::Queued => Delivery::Sent,
                SendOutcome::Closed => Delivery::Dropped,
            },
        }
    }

    fn relay(&self, to: NodeIdx, frame: &Bytes) -> Delivery {
        match self.local.get(to) {
            None => Delivery::Offline,
            Some(conn) => match conn.post(frame) {
                SendOutcome::Written | SendOutcome::Queued => Delivery::Sent,
                SendOutcome::Closed => Delivery::Dropped,
            },
        }
    }

    fn deliver_outbox(&self, to: NodeIdx, seq: u64, frame: &Bytes) -> Delivery {
        match self.local.get(to) {
            Some(conn) if conn.outbox_offer(seq) => match conn.send(frame) {
                SendOutcome::Written | SendOutcome::Queued => Delivery::Sent,
                SendOutcome::Closed => Delivery::Dropped,
            },
            Some(_) => Delivery::Deferred,
            None => Delivery::Offline,
        }
    }

    fn connection(&self, ep: NodeIdx) -> Option<(u64, Role)> {
        self.local.get(ep).map(|c| (c.key, c.role))
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}

//! calls — point-to-point voice and video calls. The hub carries the signaling (invite, ring,
//! answer, SDP and ICE candidates relayed in order between the two parties only), tracks who is
//! busy, mints TURN credentials and records every call; media flows peer to peer or via TURN.
//! `core` is the state machine (no IO), `service` its async shell, `handler` terminals'
//! requests, `records` the call records in the store, `wire` the protocol messages, `turn` the
//! ICE servers handed to terminals, `config` the `[calls]` section.

pub mod config;
pub mod core;
pub mod handler;
pub mod records;
pub mod service;
pub mod turn;
pub mod wire;

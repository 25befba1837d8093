//! presence — who is on line, busy, in a call, where; per-node aggregates; subtree subscriptions.
//!
//! `core` is the state machine (no IO); `actor` is the async shell that owns it, hears every
//! node's terminals and presence events on the bus and writes encoded deltas to this node's
//! subscribers; `handler` takes terminals' requests; `wire` parses requests and encodes
//! snapshots and deltas; `config` is the `[presence]` section.

pub mod actor;
pub mod config;
pub mod core;
pub mod handler;
pub mod wire;

pub use self::core::{Activity, Chosen, ConnKey, Location, Presence, Status, Update, Watch};

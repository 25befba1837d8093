//! presence — who is on line, busy, in a call, where; per-node aggregates; subtree subscriptions.
//!
//! `core` is the state machine (no IO); `actor` is the async shell that owns it, takes events
//! from the backplane and requests from connections, and writes encoded deltas to subscribers;
//! `wire` parses requests and encodes snapshots and deltas.

pub mod actor;
pub mod core;
pub mod wire;

pub use self::core::{Activity, Chosen, ConnKey, Location, Presence, Status, Update, Watch};

//! sessions — command sessions: a commander at a center, the terminals it pulls in, and the
//! center's video walls watching. `core` is the state machine (no IO); the shell, the protocol
//! messages and the selective forwarding unit that carries the media build on it.

pub mod core;

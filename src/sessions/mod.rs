//! sessions — command sessions: a commander at a center, the terminals it pulls in, and the
//! center's video walls watching. `core` is the state machine (no IO), `service` its async
//! shell, `handler` terminals' requests, `wire` the protocol messages, `config` the
//! `[sessions]` section. The selective forwarding unit that carries the media builds on it.

pub mod config;
pub mod core;
pub mod handler;
pub mod keyframes;
pub mod records;
pub mod service;
pub mod sfu;
pub mod wire;

//! gridhub — the real-time command-and-dispatch hub of a five-tier city grid-management center.
//!
//! A map of the crate, from the wire inwards:
//!
//! - `transport` — WebSocket terminals: accept and upgrade (`server`), RFC 6455 framing as pure
//!   functions (`frame`), protocol v1 envelopes and typed errors (`protocol`), one connection's
//!   socket and bounded send queue (`conn`), and the task that serves it (`session`).
//! - `api` — REST (axum): health, metrics, org tree, presence snapshots, OpenAPI.
//! - `hub` — this node: its connections (one per terminal; the newer wins), heartbeat sweep,
//!   drain on shutdown.
//! - `backplane` — how presence events and messages reach every hub node; in memory by default.
//! - Domains, each a sans-IO core with a thin async shell:
//!   - `org` — the five-tier tree, preorder-indexed so subtree tests are O(1);
//!   - `presence` — who is on line, busy, in a call, where; incremental per-node aggregates;
//!     coalesced subtree deltas.
//! - `auth` (credentials), `scope` (who may see what), `config`, `telemetry`, `clock`.
//! - `app` — builds all of the above from a `Config` and shuts it down in order.

pub mod api;
pub mod app;
pub mod auth;
pub mod backplane;
pub mod calls;
pub mod clock;
pub mod config;
pub mod hub;
pub mod orders;
pub mod org;
pub mod presence;
pub mod scope;
pub mod store;
pub mod telemetry;
pub mod transport;

//! gridhub — the real-time command-and-dispatch hub of a five-tier city grid-management center.
//!
//! A map of the crate, from the wire inwards:
//!
//! - `transport` — WebSocket terminals, knowing no domain: accept and upgrade (`server`), RFC
//!   6455 framing as pure functions (`frame`), protocol v1 envelopes and typed errors
//!   (`protocol`), one connection's socket and bounded send queue (`conn`), this node's
//!   connections (`registry`), the task serving one (`session`), and the table that hands each
//!   request type, with its origin, to the service that owns it (`dispatch`).
//! - `api` — REST (axum): health, metrics, the org tree, presence, orders, notices, campaigns,
//!   calls, sessions, analysis, connection tickets, OpenAPI. `http` — the HTTP error body both share. `web` — the
//!   console and field pages, embedded in the binary.
//! - `backplane` — the one path to terminals: services address terminals and connections, never
//!   hold one; what every node hears goes over its bus; the directory says who is where. Alone by
//!   default; several nodes join through a link (`memory` in one process).
//! - `outbox` — each terminal's durable inbox, for every domain: sequences, resume, ack,
//!   retention, live offers.
//! - Domains, each a sans-IO core with a thin async shell and a handler for its requests:
//!   - `org` — the five-tier tree, preorder-indexed so subtree tests are O(1);
//!   - `presence` — who is on line, busy, in a call, where; incremental per-node aggregates;
//!     coalesced subtree deltas;
//!   - `orders` — work orders through the eight steps, notices, campaigns, the consoles' feed;
//!   - `calls` — point-to-point call signaling, TURN credentials, call records;
//!   - `sessions` — command sessions: commander, invited terminals, watching walls, controls.
//!   - `analysis` — hotspots, causes and similar sites, before and after, performance, over the
//!     stored orders (a core over compact facts, SQL beside it, a generated year for the demo).
//! - `store` — SQLite with group commit; actors hear of their jobs as messages.
//! - `auth` (credentials and tickets), `scope` (who may see what), `config` (the sections beside
//!   their modules, loaded together), `telemetry`, `clock` (injected into every shell).
//! - `hub` — this node's handles; `app` — builds them from a `Config` and shuts them down in order;
//!   `demo` — the hub with a simulated city around it.

pub mod analysis;
pub mod api;
pub mod app;
pub mod auth;
pub mod backplane;
pub mod calls;
pub mod clock;
pub mod config;
pub mod demo;
pub mod http;
pub mod hub;
pub mod orders;
pub mod org;
pub mod outbox;
pub mod presence;
pub mod rng;
pub mod scope;
pub mod sessions;
pub mod store;
pub mod telemetry;
pub mod transport;
pub mod web;

//! orders — citizen requests as work orders through the eight steps, down the five tiers and
//! back up; notices and campaigns to many terminals at once. `model` holds the types, `core` the
//! state machine (no IO), `campaigns` a campaign's progress (no IO), `service` the async shell,
//! `handler` terminals' requests, `feed` every node's live view for its consoles, `persist` the
//! SQL, `wire` the documents, `config` the `[orders]` section.

pub mod attachments;
pub mod campaigns;
pub mod config;
pub mod core;
pub mod feed;
pub mod handler;
pub mod model;
pub mod persist;
pub mod service;
pub mod wire;

pub use self::core::{Act, Applied, Created, NewOrder, Notify, OrderError, Orders, Policy, Who};
pub use self::model::{Action, Order, OrderId, Priority, Source, State};

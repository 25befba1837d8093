//! orders — citizen requests as work orders through the eight steps, down the five tiers and
//! back up. `model` holds the types, `core` the state machine (no IO).

pub mod campaigns;
pub mod core;
pub mod feed;
pub mod model;
pub mod persist;
pub mod service;
pub mod wire;

pub use self::core::{Act, Applied, Created, NewOrder, Notify, OrderError, Orders, Policy, Who};
pub use self::model::{Action, Order, OrderId, Priority, Source, State};

//! analysis — what the center reads from a year of requests to act on it: hotspots by place and
//! kind, causes and similar sites, the rate before and after an intervention, and who performs.
//!
//! The core (`core`, `stats`, `geo`) works on compact facts, one per stored order, and knows no
//! store; the shell reads the facts, the site registry and the interventions from the store.

pub mod core;
pub mod geo;
pub mod history;
pub mod stats;
pub mod store;
pub mod synth;
#[cfg(test)]
mod tests;

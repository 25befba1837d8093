pub mod org;
pub mod auth;
pub mod config;
pub mod transport;
pub mod telemetry;
pub mod presence;
pub mod scope;

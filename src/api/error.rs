//! REST errors: the hub's HTTP error body (see `crate::http`).

pub use crate::http::{ApiError, REQUEST_ID, next_request_id};

//! transport — WebSocket terminals: upgrade and authentication (`server`), framing (`frame`),
//! protocol v1 envelopes (`protocol`), the connection and its send queue (`conn`) and the task
//! that serves it (`session`).

pub mod conn;
pub mod frame;
pub mod protocol;
pub mod server;
pub mod session;

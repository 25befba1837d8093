//! `[transport]`: connections, limits, heartbeats.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransportConfig {
    /// How often terminals are asked to send a heartbeat (told to them in `hello`).
    pub heartbeat_interval_ms: u64,
    /// A terminal silent for this long is disconnected and marked offline.
    pub heartbeat_timeout_ms: u64,
    /// Largest inbound message; larger ones are discarded with a `message_too_large` error.
    pub max_message_bytes: usize,
    /// Per-connection send queue bound, in frames and in bytes; past either the consumer is slow
    /// and is closed with code 4002.
    pub send_queue_frames: usize,
    pub send_queue_bytes: usize,
    /// Connection cap. 0: derived from the open-file limit minus `fd_reserve`.
    pub max_connections: usize,
    /// File descriptors kept free for the store, logs and refusing sockets cleanly (on top of
    /// `http_room`).
    pub fd_reserve: usize,
    /// Typed errors tolerated within `abuse_window_ms` before closing with 1008.
    pub abuse_errors: u32,
    pub abuse_window_ms: u64,
    /// Inbound messages per second per connection (token bucket), and the burst allowed.
    pub rate_per_sec: u32,
    pub rate_burst: u32,
    /// How long shutdown waits for send queues to drain before closing sockets.
    pub shutdown_drain_ms: u64,
    /// How long a client has to complete the WebSocket upgrade request.
    pub handshake_timeout_ms: u64,
    /// Sockets kept for HTTP beyond the terminal cap: health probes, metrics and REST (the
    /// 12345 hotline's intake among them) still get through when every terminal slot is taken.
    pub http_room: usize,
    /// `Origin`s a browser may open a WebSocket from, e.g. `https://wall.grid.example`. A page
    /// served by the hub itself (same host and port) is always allowed; requests without an
    /// `Origin` (devices, not browsers) are not affected.
    pub allowed_origins: Vec<String>,
    /// Lifetime of a connection ticket from `POST /api/v1/tickets` (single use).
    pub ticket_ttl_secs: u64,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            heartbeat_interval_ms: 20_000,
            heartbeat_timeout_ms: 60_000,
            max_message_bytes: 64 * 1024,
            send_queue_frames: 1024,
            send_queue_bytes: 8 * 1024 * 1024,
            max_connections: 0,
            fd_reserve: 256,
            abuse_errors: 20,
            abuse_window_ms: 10_000,
            rate_per_sec: 50,
            rate_burst: 200,
            shutdown_drain_ms: 5_000,
            handshake_timeout_ms: 10_000,
            http_room: 256,
            allowed_origins: Vec::new(),
            ticket_ttl_secs: 30,
        }
    }
}

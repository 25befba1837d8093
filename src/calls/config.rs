//! `[calls]`: ringing, grace, SDP limits, ICE servers.

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallsConfig {
    /// An unanswered call ends after this long (a missed call for the callee).
    pub ring_timeout_ms: u64,
    /// How long an answered call waits for a party whose connection dropped (a phone moving
    /// from Wi-Fi to 4G) before it ends.
    pub reconnect_grace_ms: u64,
    /// Largest SDP offer or answer accepted.
    pub max_sdp_bytes: usize,
    /// Whether a seat in a call may receive (and place) a second one.
    pub call_waiting: bool,
    /// Calls an operator's seat (a center's desk) may be in at once.
    pub operator_max_calls: usize,
    /// STUN servers handed to terminals, e.g. `stun:stun.grid.example:3478`.
    pub stun_urls: Vec<String>,
    /// TURN servers, e.g. `turn:turn.grid.example:3478?transport=udp`.
    pub turn_urls: Vec<String>,
    /// coturn's `static-auth-secret`: the hub mints per-terminal credentials that expire.
    pub turn_secret: String,
    /// Lifetime of a minted TURN credential (capped by the terminal's own credential).
    pub turn_ttl_secs: u64,
    /// Fixed TURN credentials, for a server without a shared secret.
    pub turn_username: String,
    pub turn_password: String,
}

impl Default for CallsConfig {
    fn default() -> Self {
        CallsConfig {
            ring_timeout_ms: 30_000,
            reconnect_grace_ms: 20_000,
            max_sdp_bytes: 16_384,
            call_waiting: false,
            operator_max_calls: 1,
            stun_urls: Vec::new(),
            turn_urls: Vec::new(),
            turn_secret: String::new(),
            turn_ttl_secs: 24 * 3600,
            turn_username: String::new(),
            turn_password: String::new(),
        }
    }
}

impl CallsConfig {
    pub fn rules(&self) -> super::core::Rules {
        let max_calls = if self.call_waiting { 2 } else { 1 };
        super::core::Rules {
            ring_timeout_ms: self.ring_timeout_ms,
            grace_ms: self.reconnect_grace_ms,
            max_sdp_bytes: self.max_sdp_bytes,
            max_calls,
            operator_max_calls: self.operator_max_calls.max(max_calls),
        }
    }

    pub fn validate(&self, max_message_bytes: usize) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(format!("calls.{m}")));
        if self.ring_timeout_ms == 0 || self.reconnect_grace_ms == 0 {
            return bad("ring_timeout_ms and reconnect_grace_ms must be positive".into());
        }
        // An SDP travels inside one message with its envelope.
        if self.max_sdp_bytes < 1024 || self.max_sdp_bytes + 1024 > max_message_bytes {
            return bad(format!(
                "max_sdp_bytes ({}) must be at least 1024 and leave 1024 bytes of \
                 transport.max_message_bytes ({max_message_bytes}) for the envelope",
                self.max_sdp_bytes
            ));
        }
        if self.operator_max_calls == 0 {
            return bad("operator_max_calls must be at least 1".into());
        }
        for (key, urls, schemes) in [
            ("stun_urls", &self.stun_urls, ["stun:", "stuns:"]),
            ("turn_urls", &self.turn_urls, ["turn:", "turns:"]),
        ] {
            if let Some(u) = urls
                .iter()
                .find(|u| !schemes.iter().any(|s| u.starts_with(s)))
            {
                return bad(format!(
                    "{key}: {u:?} must start with {} or {}",
                    schemes[0], schemes[1]
                ));
            }
        }
        let fixed = !self.turn_username.is_empty() || !self.turn_password.is_empty();
        if !self.turn_urls.is_empty() && self.turn_secret.is_empty() && !fixed {
            return bad(
                "turn_urls needs turn_secret (coturn use-auth-secret) or turn_username and turn_password"
                    .into(),
            );
        }
        if !self.turn_secret.is_empty() && fixed {
            return bad("set turn_secret or turn_username/turn_password, not both".into());
        }
        if !self.turn_secret.is_empty() && self.turn_ttl_secs < 60 {
            return bad("turn_ttl_secs must be at least 60".into());
        }
        Ok(())
    }
}

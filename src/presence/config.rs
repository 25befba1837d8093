//! `[presence]`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceConfig {
    /// Deltas to a console are sent at most once per window; changes inside it coalesce.
    pub coalesce_ms: u64,
    /// Subscriptions one connection may hold at once.
    pub max_subscriptions: usize,
    /// Longest status text, in characters.
    pub max_text_chars: usize,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig {
            coalesce_ms: 20,
            max_subscriptions: 16,
            max_text_chars: 64,
        }
    }
}

//! `[outbox]`: how long delivered messages are kept.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxConfig {
    /// Acknowledged messages older than this are deleted; unacknowledged ones are always kept.
    pub keep_secs: u64,
    /// How often they are looked for.
    pub prune_interval_secs: u64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            keep_secs: 7 * 24 * 3600,
            prune_interval_secs: 300,
        }
    }
}

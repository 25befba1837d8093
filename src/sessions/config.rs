//! `[sessions]`: caps and timing of command sessions.

use serde::{Deserialize, Serialize};

use super::core::Rules;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsConfig {
    /// Sessions live at once on the hub (the seed's center ran 27).
    pub max_sessions: usize,
    /// Members of one session, the commander included; video walls watching are not counted.
    pub max_members: usize,
    /// How long a member whose connection dropped stays in the session.
    pub reconnect_grace_ms: u64,
    pub max_title_chars: usize,
    /// Record every published track to a file (IVF for VP8 video, Ogg for Opus sound) under
    /// `<data_dir>/recordings/<session>/`, listed in the session's record.
    pub record: bool,
    /// RTP packets a published track may bring per second (a burst of as many again is
    /// allowed); what floods past it is dropped, so one publisher cannot take the forwarding
    /// unit from the others. A 720p camera sends ~250 a second.
    pub max_packets_per_sec: u32,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        SessionsConfig {
            max_sessions: 27,
            max_members: 27,
            reconnect_grace_ms: 20_000,
            max_title_chars: 40,
            record: false,
            max_packets_per_sec: 2000,
        }
    }
}

impl SessionsConfig {
    pub fn rules(&self) -> Rules {
        Rules {
            max_sessions: self.max_sessions,
            max_members: self.max_members,
            grace_ms: self.reconnect_grace_ms,
            max_title_chars: self.max_title_chars,
        }
    }

    pub fn validate(&self) -> Result<(), crate::config::ConfigError> {
        if self.max_sessions == 0 || self.max_members < 2 || self.reconnect_grace_ms == 0 {
            return Err(crate::config::ConfigError::Invalid(
                "sessions.max_sessions must be at least 1, sessions.max_members at least 2 and \
                 sessions.reconnect_grace_ms positive"
                    .into(),
            ));
        }
        Ok(())
    }
}

//! ICE servers for terminals: the STUN and TURN servers from config, and for a TURN server in
//! shared-secret mode (coturn `use-auth-secret`) credentials minted per terminal that expire on
//! their own — the TURN REST convention: the username is `<expiry>:<endpoint>`, the password
//! base64(HMAC-SHA1(secret, username)). The TURN server checks both without asking the hub.

use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha1::Sha1;

use super::config::CallsConfig;

/// One entry of `RTCConfiguration.iceServers`, in the form browsers and webrtc-rs accept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// What a terminal is handed: its ICE servers and, when a TURN credential was minted, when it
/// expires (Unix seconds) — ask `call.ice_servers` again before then.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IceConfig {
    pub ice_servers: Vec<IceServer>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

/// The TURN REST credential for `endpoint`, valid until `expires_at` (Unix seconds).
pub fn turn_credential(secret: &[u8], endpoint: &str, expires_at: u64) -> (String, String) {
    let username = format!("{expires_at}:{endpoint}");
    let mut mac = Hmac::<Sha1>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(username.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (username, password)
}

/// The ICE servers for `endpoint` at `now` (Unix seconds). A minted credential lives
/// `turn_ttl_secs`, but never past the terminal's own credential (`cred_expires`).
pub fn ice_config(cfg: &CallsConfig, endpoint: &str, now: u64, cred_expires: u64) -> IceConfig {
    let mut servers = Vec::new();
    if !cfg.stun_urls.is_empty() {
        servers.push(IceServer {
            urls: cfg.stun_urls.clone(),
            username: None,
            credential: None,
        });
    }
    let mut expires_at = None;
    if !cfg.turn_urls.is_empty() {
        let (username, credential) = if cfg.turn_secret.is_empty() {
            (cfg.turn_username.clone(), cfg.turn_password.clone())
        } else {
            let until = (now + cfg.turn_ttl_secs).min(cred_expires.max(now + 60));
            expires_at = Some(until);
            turn_credential(cfg.turn_secret.as_bytes(), endpoint, until)
        };
        servers.push(IceServer {
            urls: cfg.turn_urls.clone(),
            username: Some(username),
            credential: Some(credential),
        });
    }
    IceConfig {
        ice_servers: servers,
        expires_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_credentials_follow_the_turn_rest_convention() {
        // Reference value computed independently (Python hmac/hashlib/base64).
        let (u, p) = turn_credential(b"north-gate-turn-secret", "230805", 1_764_115_200);
        assert_eq!(u, "1764115200:230805");
        assert_eq!(p, "m9YrXuD59w1omAlOZ/U0X1JG8BA=");
    }

    #[test]
    fn servers_from_config() {
        let mut cfg = CallsConfig::default();
        assert!(
            ice_config(&cfg, "230805", 1000, 99_999)
                .ice_servers
                .is_empty()
        );
        cfg.stun_urls = vec!["stun:stun.grid.example:3478".into()];
        cfg.turn_urls = vec!["turn:turn.grid.example:3478?transport=udp".into()];
        cfg.turn_secret = "s".into();
        cfg.turn_ttl_secs = 3600;
        let c = ice_config(&cfg, "230805", 1000, 99_999);
        assert_eq!(c.ice_servers.len(), 2);
        assert_eq!(c.expires_at, Some(4600));
        assert_eq!(c.ice_servers[1].username.as_deref(), Some("4600:230805"));
        // Never outlives the terminal's own credential.
        let c = ice_config(&cfg, "230805", 1000, 2000);
        assert_eq!(c.expires_at, Some(2000));
        // Fixed credentials pass through and do not expire.
        cfg.turn_secret.clear();
        cfg.turn_username = "grid".into();
        cfg.turn_password = "pw".into();
        let c = ice_config(&cfg, "230805", 1000, 2000);
        assert_eq!(c.expires_at, None);
        assert_eq!(c.ice_servers[1].credential.as_deref(), Some("pw"));
    }
}

//! config — settings from `config/gridhub.toml`, every key overridable by environment.
//!
//! `GRIDHUB_TRANSPORT__HEARTBEAT_TIMEOUT_MS=5000` sets `[transport] heartbeat_timeout_ms`: the
//! section and key are joined by a double underscore because keys contain single ones. Values are
//! read as TOML literals when they parse as one (numbers, booleans) and as strings otherwise.
//! Unknown keys are refused, so a typo is an error at start-up rather than a silent default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const DEFAULT_PATH: &str = "config/gridhub.toml";
pub const ENV_PREFIX: &str = "GRIDHUB_";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub auth: AuthConfig,
    pub org: OrgConfig,
    pub transport: TransportConfig,
    pub presence: PresenceConfig,
    pub backplane: BackplaneConfig,
    pub store: StoreConfig,
    pub orders: OrdersConfig,
    pub calls: CallsConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on; port 0 picks a free port (tests).
    pub listen: SocketAddr,
    /// Where the hub keeps its files (key, database).
    pub data_dir: PathBuf,
    /// TCP listen backlog: a wave of reconnects arrives faster than it is accepted.
    pub backlog: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("data"),
            backlog: 4096,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// HS256 signing key (at least 32 bytes). Empty: use `secret_file`.
    pub secret: String,
    /// Key file, created with a random key on first run. Relative paths are under `data_dir`.
    pub secret_file: PathBuf,
    /// Lifetime of credentials minted by `gridhub token` unless `--ttl` says otherwise.
    pub default_ttl_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            secret: String::new(),
            secret_file: PathBuf::from("secret.key"),
            default_ttl_secs: 7 * 24 * 3600,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrgConfig {
    pub file: PathBuf,
}

impl Default for OrgConfig {
    fn default() -> Self {
        OrgConfig {
            file: PathBuf::from("config/org/jiamusi.csv"),
        }
    }
}

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
    /// File descriptors kept free for the store, logs and refusing connections cleanly.
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
        }
    }
}

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

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BackplaneKind {
    /// One hub process; presence and messages stay in memory.
    #[default]
    Memory,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackplaneConfig {
    pub kind: BackplaneKind,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// The SQLite file; relative paths are under `server.data_dir`.
    pub path: PathBuf,
    /// How often acknowledged outbox messages older than `outbox_keep_secs` are pruned.
    pub prune_interval_secs: u64,
    pub outbox_keep_secs: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: PathBuf::from("gridhub.db"),
            prune_interval_secs: 300,
            outbox_keep_secs: 7 * 24 * 3600,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PriorityConfig {
    /// Time to a result.
    pub deadline_secs: u64,
    /// After the deadline: supervision; after this much more: escalation to the tier above.
    pub escalate_after_secs: u64,
    /// May be dispatched past intermediate tiers.
    pub skip_tiers: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PrioritiesConfig {
    pub routine: PriorityConfig,
    pub urgent: PriorityConfig,
    pub emergency: PriorityConfig,
}

impl Default for PrioritiesConfig {
    fn default() -> Self {
        PrioritiesConfig {
            routine: PriorityConfig {
                deadline_secs: 72 * 3600,
                escalate_after_secs: 24 * 3600,
                skip_tiers: false,
            },
            urgent: PriorityConfig {
                deadline_secs: 24 * 3600,
                escalate_after_secs: 4 * 3600,
                skip_tiers: true,
            },
            emergency: PriorityConfig {
                deadline_secs: 2 * 3600,
                escalate_after_secs: 3600,
                skip_tiers: true,
            },
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CategoryConfig {
    pub id: String,
    pub name: String,
    pub name_en: String,
    /// A shorter deadline than the priority's, for this kind of request.
    #[serde(default)]
    pub deadline_secs: Option<u64>,
}

fn default_categories() -> Vec<CategoryConfig> {
    [
        ("noise", "噪音扰民", "Noise", None),
        ("waterlogging", "积水内涝", "Waterlogging", Some(12 * 3600)),
        ("sanitation", "环境卫生", "Sanitation", None),
        ("roads", "道路设施", "Roads and facilities", None),
        ("public_order", "社会治安", "Public order", None),
        ("government_service", "政务服务", "Government service", None),
        ("heating", "供暖供热", "Heating", Some(24 * 3600)),
        ("utilities", "水电燃气", "Water, power and gas", None),
        ("property", "物业管理", "Property management", None),
        ("epidemic", "疫情防控", "Epidemic control", Some(12 * 3600)),
        ("dispute", "矛盾纠纷", "Disputes and mediation", None),
        ("other", "其他", "Other", None),
    ]
    .into_iter()
    .map(|(id, name, name_en, deadline_secs)| CategoryConfig {
        id: id.into(),
        name: name.into(),
        name_en: name_en.into(),
        deadline_secs,
    })
    .collect()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrdersConfig {
    pub priorities: PrioritiesConfig,
    pub categories: Vec<CategoryConfig>,
    pub max_description_chars: usize,
    pub max_text_chars: usize,
    pub max_note_chars: usize,
    /// How long an idempotency key is remembered.
    pub idempotency_secs: u64,
    /// Order changes reach a watching console at most once per window.
    pub feed_coalesce_ms: u64,
}

impl Default for OrdersConfig {
    fn default() -> Self {
        OrdersConfig {
            priorities: PrioritiesConfig::default(),
            categories: default_categories(),
            max_description_chars: 2000,
            max_text_chars: 2000,
            max_note_chars: 500,
            idempotency_secs: 48 * 3600,
            feed_coalesce_ms: 100,
        }
    }
}

impl OrdersConfig {
    pub fn policy(&self) -> crate::orders::Policy {
        use crate::orders::core::{CategoryRule, Limits, PriorityRule};
        let rule = |p: &PriorityConfig| PriorityRule {
            deadline_secs: p.deadline_secs,
            escalate_after_secs: p.escalate_after_secs,
            skip_tiers: p.skip_tiers,
        };
        crate::orders::Policy {
            categories: self
                .categories
                .iter()
                .map(|c| {
                    (
                        c.id.clone(),
                        CategoryRule {
                            name: c.name.clone(),
                            name_en: c.name_en.clone(),
                            deadline_secs: c.deadline_secs,
                        },
                    )
                })
                .collect(),
            priorities: [
                rule(&self.priorities.routine),
                rule(&self.priorities.urgent),
                rule(&self.priorities.emergency),
            ],
            limits: Limits {
                description: self.max_description_chars,
                address: 200,
                text: self.max_text_chars,
                note: self.max_note_chars,
                name: 50,
                phone: 20,
            },
            idempotency_ms: self.idempotency_secs * 1000,
        }
    }
}

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
    /// Whether a terminal in a call may receive (and place) a second one.
    pub call_waiting: bool,
    /// Calls an operator (a center's console) may be in at once.
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
    pub fn rules(&self) -> crate::calls::core::Rules {
        let max_calls = if self.call_waiting { 2 } else { 1 };
        crate::calls::core::Rules {
            ring_timeout_ms: self.ring_timeout_ms,
            grace_ms: self.reconnect_grace_ms,
            max_sdp_bytes: self.max_sdp_bytes,
            max_calls,
            operator_max_calls: self.operator_max_calls.max(max_calls),
        }
    }

    fn validate(&self, max_message_bytes: usize) -> Result<(), ConfigError> {
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

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// tracing filter, e.g. `info` or `gridhub=debug`; `RUST_LOG` wins when set.
    pub filter: String,
    /// `text` for people, `json` for log shippers.
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            filter: "info".into(),
            format: "text".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("invalid setting: {0}")]
    Invalid(String),
}

impl Config {
    /// Loads `path` (or the default file when it exists), then applies `GRIDHUB_*` overrides.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let (text, shown) = match path {
            Some(p) => (
                std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.display().to_string(),
                    source,
                })?,
                p.display().to_string(),
            ),
            None => match std::fs::read_to_string(DEFAULT_PATH) {
                Ok(t) => (t, DEFAULT_PATH.to_owned()),
                Err(_) => (String::new(), "built-in defaults".to_owned()),
            },
        };
        let file: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        // Defaults first, the file over them, the environment over both: a partial section or a
        // single nested override still yields a complete configuration.
        let mut table = match toml::Value::try_from(Config::default()) {
            Ok(toml::Value::Table(t)) => t,
            _ => toml::Table::new(),
        };
        merge(&mut table, file);
        for (var, value) in env {
            let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
            if path.len() < 2 || path.iter().any(|p| p.is_empty()) {
                return Err(ConfigError::Env {
                    var,
                    message: "expected GRIDHUB_<SECTION>__<KEY>, e.g. GRIDHUB_SERVER__LISTEN"
                        .into(),
                });
            }
            let (key, sections) = path.split_last().expect("at least two parts");
            let mut table = &mut table;
            for (depth, name) in sections.iter().enumerate() {
                let entry = table
                    .entry(name.clone())
                    .or_insert_with(|| toml::Value::Table(Default::default()));
                let Some(inner) = entry.as_table_mut() else {
                    return Err(ConfigError::Env {
                        var,
                        message: format!("[{}] is not a section", path[..=depth].join(".")),
                    });
                };
                table = inner;
            }
            table.insert(key.clone(), literal(&value));
        }
        let config: Config =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    path: format!("{shown} with GRIDHUB_* overrides"),
                    message: e.to_string(),
                })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let t = &self.transport;
        if t.heartbeat_timeout_ms <= t.heartbeat_interval_ms {
            return Err(ConfigError::Invalid(format!(
                "transport.heartbeat_timeout_ms ({}) must exceed heartbeat_interval_ms ({})",
                t.heartbeat_timeout_ms, t.heartbeat_interval_ms
            )));
        }
        if t.max_message_bytes < 1024 {
            return Err(ConfigError::Invalid(
                "transport.max_message_bytes must be at least 1024".into(),
            ));
        }
        if t.send_queue_frames == 0 || t.send_queue_bytes < t.max_message_bytes {
            return Err(ConfigError::Invalid(
                "transport.send_queue_frames must be positive and send_queue_bytes at least max_message_bytes".into(),
            ));
        }
        if t.rate_per_sec == 0 || t.rate_burst == 0 {
            return Err(ConfigError::Invalid(
                "transport.rate_per_sec and rate_burst must be positive".into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for c in &self.orders.categories {
            if crate::org::NodeId::parse(&c.id).is_err() || !seen.insert(c.id.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "orders.categories: id {:?} is empty, malformed or repeated",
                    c.id
                )));
            }
        }
        if self.orders.categories.is_empty() {
            return Err(ConfigError::Invalid("orders.categories is empty".into()));
        }
        self.calls.validate(t.max_message_bytes)?;
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(ConfigError::Invalid(format!(
                "log.format must be \"text\" or \"json\", not {:?}",
                self.log.format
            )));
        }
        Ok(())
    }

    /// The database file: relative paths are under the data folder.
    pub fn store_path(&self) -> PathBuf {
        if self.store.path.is_absolute() {
            self.store.path.clone()
        } else {
            self.server.data_dir.join(&self.store.path)
        }
    }

    /// The key file's path: relative paths are under the data folder.
    pub fn secret_file(&self) -> PathBuf {
        if self.auth.secret_file.is_absolute() {
            self.auth.secret_file.clone()
        } else {
            self.server.data_dir.join(&self.auth.secret_file)
        }
    }

    /// The signing key: the configured secret, else the key file (created on first use).
    pub fn signing_secret(&self) -> Result<Vec<u8>, ConfigError> {
        if !self.auth.secret.is_empty() {
            return Ok(self.auth.secret.as_bytes().to_vec());
        }
        let path = self.secret_file();
        crate::auth::Authority::load_or_create_secret(&path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })
    }
}

/// Deep-merges `over` into `base`: tables merge key by key, anything else is replaced.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

fn literal(value: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn write(text: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!(
            "gridhub-config-{}-{}.toml",
            std::process::id(),
            text.len()
        ));
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn env_overrides_file_values_with_typed_literals() {
        let p = write("[transport]\nheartbeat_interval_ms = 1000\nheartbeat_timeout_ms = 3000\n");
        let c = Config::load(
            Some(&p),
            env(&[
                ("GRIDHUB_TRANSPORT__HEARTBEAT_TIMEOUT_MS", "4000"),
                ("GRIDHUB_SERVER__LISTEN", "127.0.0.1:0"),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.transport.heartbeat_interval_ms, 1000);
        assert_eq!(c.transport.heartbeat_timeout_ms, 4000);
        assert_eq!(c.server.listen.port(), 0);
        std::fs::remove_file(p).unwrap();
        let c = Config::load(
            None,
            env(&[("GRIDHUB_ORDERS__PRIORITIES__URGENT__DEADLINE_SECS", "60")]),
        )
        .unwrap();
        assert_eq!(c.orders.priorities.urgent.deadline_secs, 60);
        assert_eq!(c.orders.priorities.routine.deadline_secs, 72 * 3600);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let p = write("[transport]\nheartbeat_intervall_ms = 5\n");
        let e = Config::load(Some(&p), vec![]).unwrap_err().to_string();
        assert!(e.contains("heartbeat_intervall_ms"), "{e}");
        std::fs::remove_file(p).unwrap();
        let e = Config::load(None, env(&[("GRIDHUB_LISTEN", "x")])).unwrap_err();
        assert!(matches!(e, ConfigError::Env { .. }));
        let e = Config::load(
            None,
            env(&[("GRIDHUB_TRANSPORT__HEARTBEAT_TIMEOUT_MS", "10")]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("must exceed"), "{e}");
    }

    #[test]
    fn the_shipped_config_file_loads() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_PATH);
        let c = Config::load(Some(&p), vec![]).unwrap();
        assert_eq!(c.org.file, PathBuf::from("config/org/jiamusi.csv"));
    }
}

//! config — settings from `config/gridhub.toml`, every key overridable by environment.
//!
//! `GRIDHUB_TRANSPORT__HEARTBEAT_TIMEOUT_MS=5000` sets `[transport] heartbeat_timeout_ms`: the
//! section and key are joined by a double underscore because keys contain single ones. Values are
//! read as TOML literals when they parse as one (numbers, booleans) and as strings otherwise.
//! Unknown keys are refused, so a typo is an error at start-up rather than a silent default.
//!
//! Each section is defined beside the module it configures (`transport::config`,
//! `orders::config`, …); this file puts them together, loads them and checks them as a whole.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::backplane::BackplaneConfig;
pub use crate::calls::config::CallsConfig;
pub use crate::orders::config::{CategoryConfig, OrdersConfig, PrioritiesConfig, PriorityConfig};
pub use crate::outbox::config::OutboxConfig;
pub use crate::presence::config::PresenceConfig;
pub use crate::sessions::config::SessionsConfig;
pub use crate::store::config::StoreConfig;
pub use crate::transport::config::TransportConfig;

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
    pub outbox: OutboxConfig,
    pub orders: OrdersConfig,
    pub calls: CallsConfig,
    pub sessions: SessionsConfig,
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
pub struct LogConfig {
    /// tracing filter, e.g. `info` or `gridhub=debug`; `RUST_LOG` wins when set.
    pub filter: String,
    /// `text` for people, `json` for log shippers.
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            // The `webrtc` crate warns once per packet its connection cannot send or read yet
            // (before DTLS completes, or a connectivity check ahead of the answer): expected
            // races when a session is set up, thousands of lines with many members; and its
            // DTLS warns of every TLS extension a browser offers that it does not know.
            filter: "info,rtc::peer_connection::handler=error,rtc_dtls::handshake=error".into(),
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
            let mut causes = std::collections::HashSet::new();
            for x in &c.causes {
                if crate::org::NodeId::parse(&x.id).is_err() || !causes.insert(x.id.as_str()) {
                    return Err(ConfigError::Invalid(format!(
                        "orders.categories {}: cause id {:?} is empty, malformed or repeated",
                        c.id, x.id
                    )));
                }
            }
        }
        if self.orders.categories.is_empty() {
            return Err(ConfigError::Invalid("orders.categories is empty".into()));
        }
        self.calls.validate(t.max_message_bytes)?;
        self.sessions.validate()?;
        let max_hub = crate::transport::dispatch::HubId::MAX;
        if self.backplane.hub_id > max_hub {
            return Err(ConfigError::Invalid(format!(
                "backplane.hub_id ({}) must be at most {max_hub}: connection keys hold it in 12 bits",
                self.backplane.hub_id
            )));
        }
        if self.backplane.kind == crate::backplane::BackplaneKind::Redis {
            let b = &self.backplane;
            if !(300..=600_000).contains(&b.lease_ms) {
                return Err(ConfigError::Invalid(format!(
                    "backplane.lease_ms ({}) must be within 300–600000: shorter leases lapse under load, longer ones keep a dead node's terminals on line",
                    b.lease_ms
                )));
            }
            if b.cluster.is_empty() || b.cluster.contains(['{', '}', ':']) {
                return Err(ConfigError::Invalid(format!(
                    "backplane.cluster {:?} must be a non-empty name without braces or colons (it is part of Redis keys)",
                    b.cluster
                )));
            }
            let named = if b.redis_cluster {
                crate::backplane::redis::cluster_seeds(&b.redis_url).map(|_| ())
            } else {
                redis::Client::open(b.redis_url.as_str())
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            };
            if let Err(e) = named {
                return Err(ConfigError::Invalid(format!(
                    "backplane.redis_url {:?}: {e}",
                    b.redis_url
                )));
            }
        } else if self.backplane.redis_cluster {
            return Err(ConfigError::Invalid(
                "backplane.redis_cluster needs kind = \"redis\"".into(),
            ));
        }
        let b = &self.backplane;
        if b.standby
            && (!b.runs_services
                || b.kind != crate::backplane::BackplaneKind::Redis
                || self.store.url.is_none())
        {
            return Err(ConfigError::Invalid(
                "backplane.standby needs runs_services = true, kind = \"redis\" and the services' data on PostgreSQL (store.url), which the node taking over reaches too".into(),
            ));
        }
        if let Some(url) = &self.store.url {
            let scheme = url.starts_with("postgres://") || url.starts_with("postgresql://");
            if let Err(e) = url
                .parse::<tokio_postgres::Config>()
                .map_err(|e| e.to_string())
                .and_then(|_| {
                    scheme
                        .then_some(())
                        .ok_or_else(|| "not a postgres:// URL".into())
                })
            {
                return Err(ConfigError::Invalid(format!(
                    "store.url {:?}: {e}",
                    crate::store::postgres::redact(url)
                )));
            }
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(ConfigError::Invalid(format!(
                "log.format must be \"text\" or \"json\", not {:?}",
                self.log.format
            )));
        }
        Ok(())
    }

    /// Where the services keep their data: the PostgreSQL server if one is named, else the
    /// SQLite file.
    pub fn store_target(&self) -> crate::store::Target {
        match &self.store.url {
            Some(url) => crate::store::Target::Postgres(url.clone()),
            None => crate::store::Target::Sqlite(self.store_path()),
        }
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
        let e = Config::load(None, env(&[("GRIDHUB_BACKPLANE__HUB_ID", "4096")])).unwrap_err();
        assert!(e.to_string().contains("at most 4095"), "{e}");
        let e =
            Config::load(None, env(&[("GRIDHUB_BACKPLANE__REDIS_CLUSTER", "true")])).unwrap_err();
        assert!(e.to_string().contains("needs kind"), "{e}");
        let cluster = |url: &str| {
            Config::load(
                None,
                env(&[
                    ("GRIDHUB_BACKPLANE__KIND", "redis"),
                    ("GRIDHUB_BACKPLANE__REDIS_CLUSTER", "true"),
                    ("GRIDHUB_BACKPLANE__REDIS_URL", url),
                ]),
            )
        };
        cluster("redis://10.0.0.1:7000/, redis://10.0.0.2:7000/").unwrap();
        let e = cluster("redis://10.0.0.1:7000/,redis+unix:///run/redis.sock").unwrap_err();
        assert!(e.to_string().contains("plain TCP"), "{e}");
        let e = cluster("redis://10.0.0.1:7000/,").unwrap_err();
        assert!(e.to_string().contains("redis_url"), "{e}");
    }

    /// The shipped file lists every setting, with its default: nothing an operator can set is
    /// missing from it.
    #[test]
    fn the_shipped_config_file_lists_every_setting_with_its_default() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_PATH);
        let shipped: toml::Table = toml::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        fn missing(d: &toml::Table, s: &toml::Table, at: &str, out: &mut Vec<String>) {
            for (k, v) in d {
                match (v, s.get(k)) {
                    (toml::Value::Table(dt), Some(toml::Value::Table(st))) => {
                        missing(dt, st, &format!("{at}{k}."), out)
                    }
                    (_, None) => out.push(format!("{at}{k}")),
                    (dv, Some(sv)) if dv != sv => out.push(format!("{at}{k} (differs)")),
                    _ => {}
                }
            }
        }
        let mut out = Vec::new();
        missing(&defaults, &shipped, "", &mut out);
        assert!(
            out.is_empty(),
            "not in config/gridhub.toml as defaults: {out:?}"
        );
    }

    #[test]
    fn the_shipped_config_file_loads() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_PATH);
        let c = Config::load(Some(&p), vec![]).unwrap();
        assert_eq!(c.org.file, PathBuf::from("config/org/jiamusi.csv"));
    }
}

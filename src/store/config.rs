//! `[store]`: where the database lives.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// The SQLite file; relative paths are under `server.data_dir`.
    pub path: PathBuf,
    /// A PostgreSQL server instead (`postgres://user:password@host:port/database`), shared by
    /// the nodes of one hub; `path` is then unused.
    pub url: Option<String>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: PathBuf::from("gridhub.db"),
            url: None,
        }
    }
}

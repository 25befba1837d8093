//! A PostgreSQL server of a test's own: a fresh cluster in a temporary folder on a free loopback
//! port, started and stopped by `scripts/pg-server` (the one way this project runs a server:
//! `scripts/test` and `scripts/cluster` use it too), removed when dropped.

use std::path::PathBuf;
use std::process::Command;

use crate::store::db::OptionalExtension;
use crate::store::postgres::off_runtime;

pub struct PgServer {
    pub port: u16,
    dir: PathBuf,
    running: bool,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

impl PgServer {
    /// A new cluster, started, with a database per `create_database`.
    pub fn start(tag: &str) -> PgServer {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("gridhub-pg-{tag}-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut s = PgServer {
            port,
            dir,
            running: false,
        };
        s.restart();
        s
    }

    /// A new empty database.
    pub fn create_database(&self, name: &str) -> String {
        ensure_database(&format!("postgres://gridhub@127.0.0.1:{}", self.port), name)
    }

    /// Stops it as an operator would (fast shutdown: sessions cut, nothing committed lost).
    pub fn stop(&mut self) {
        if std::mem::take(&mut self.running) {
            self.script(&["stop"]);
        }
    }

    /// Starts it (again) on its port; returns once it takes connections.
    pub fn restart(&mut self) {
        self.stop();
        self.script(&["start", &self.port.to_string()]);
        self.running = true;
    }

    fn script(&self, args: &[&str]) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/pg-server");
        let out = Command::new(script)
            .arg(args[0])
            .arg(&self.dir)
            .args(&args[1..])
            // A test cluster: nothing to survive a power cut.
            .env("FSYNC", "off")
            .output()
            .expect("scripts/pg-server runs");
        assert!(
            out.status.success(),
            "scripts/pg-server {} failed (PostgreSQL installed? scripts/test installs it): {}",
            args[0],
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The URL of database `name` on `server` (`postgres://user@host:port`), created if missing.
pub fn ensure_database(server: &str, name: &str) -> String {
    let admin = format!("{server}/postgres");
    off_runtime(|| {
        let c = crate::store::Connection::Pg(crate::store::db::PgConn::connect(&admin)?);
        let there: Option<i64> = c
            .query_row(
                "SELECT 1 FROM pg_database WHERE datname = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()?;
        if there.is_none() {
            c.execute_batch(&format!("CREATE DATABASE {name}"))?;
        }
        Ok::<_, crate::store::db::Error>(())
    })
    .unwrap_or_else(|e| panic!("database {name} on {server}: {e}"));
    format!("{server}/{name}")
}

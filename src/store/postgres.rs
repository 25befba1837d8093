//! The store on PostgreSQL: connecting, the schema at start-up, the writer's lock, and telling a
//! server that went away from a statement that failed.

use std::time::{Duration, Instant};

use super::db::{self, Connection, PgConn};
use super::{SCHEMA_VERSION, StoreError};

const SCHEMA: &str = include_str!("schema_pg.sql");

/// Advisory lock keys (any two numbers no other application on the database uses): one held
/// while the schema is migrated, one by the services' writer for as long as its connection
/// lives.
const MIGRATE_LOCK: i64 = 0x6772_6964_6875_6201;
const WRITER_LOCK: i64 = 0x6772_6964_6875_6202;

/// How often a writer that lost its server tries again; batches in between are refused at once.
const RETRY_EVERY: Duration = Duration::from_millis(500);

/// Runs `f` on a thread of its own and waits for it. A PostgreSQL connection blocks on a runtime
/// of its own, which cannot start, block or be dropped inside the caller's (start-up and tests
/// run in one). A panic in `f` carries on in the caller.
pub fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(f)
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// The URL without its password, for logs and errors.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let user = &url[s + 3..at];
            match user.split_once(':') {
                Some((name, _)) => format!("{}{name}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

fn unreachable(url: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("{}: {e}", redact(url)))
}

/// A reader's connection.
pub fn connect(url: &str) -> Result<Connection, StoreError> {
    PgConn::connect(url)
        .map(Connection::Pg)
        .map_err(|e| unreachable(url, e))
}

/// The writer's connection: the schema brought up to date, then the writer's lock taken, which
/// no other node's services can hold at the same time.
pub fn open_writer(url: &str) -> Result<Connection, StoreError> {
    let conn = connect(url)?;
    migrate(&conn)?;
    let held: bool = conn.query_row("SELECT pg_try_advisory_lock(?1)", [WRITER_LOCK], |r| {
        r.get(0)
    })?;
    if !held {
        return Err(StoreError::Held(format!(
            "another hub node's services are writing to {}: one node runs them at a time",
            redact(url)
        )));
    }
    Ok(conn)
}

/// Brings a database to `SCHEMA_VERSION`, whichever node gets there first: the others wait on
/// the lock and find it done.
fn migrate(c: &Connection) -> Result<(), StoreError> {
    let version = || -> db::Result<i64> {
        c.query_row(
            "SELECT COALESCE(MAX(version), 0) FROM gridhub_schema",
            [],
            |r| r.get(0),
        )
    };
    c.transaction(|c| -> Result<(), StoreError> {
        c.query_row("SELECT pg_advisory_xact_lock(?1)", [MIGRATE_LOCK], |_| {
            Ok(())
        })?;
        c.execute_batch("CREATE TABLE IF NOT EXISTS gridhub_schema (version BIGINT NOT NULL)")?;
        let v = version()?;
        if v > SCHEMA_VERSION {
            return Err(StoreError::Db(format!(
                "the database has schema version {v}, newer than this build's {SCHEMA_VERSION}"
            )));
        }
        // Until a step from one version to the next is written, an older schema is refused
        // rather than taken for this one.
        if v != 0 && v < SCHEMA_VERSION {
            return Err(StoreError::Db(format!(
                "the database has schema version {v}; this build has no migration from it to {SCHEMA_VERSION}"
            )));
        }
        if v == 0 {
            c.execute_batch(SCHEMA)?;
            c.execute(
                "INSERT INTO gridhub_schema (version) VALUES (?1)",
                [SCHEMA_VERSION],
            )?;
        }
        Ok(())
    })
}

/// A failed statement as the store reports it: `Unavailable` when the server is gone (nothing
/// was written), else the database's own error.
pub fn classify(c: &Connection, e: db::Error) -> StoreError {
    match e {
        db::Error::Postgres(m) if c.is_closed() || server_gone(&m) => StoreError::Unavailable(m),
        e => e.into(),
    }
}

/// SQLSTATEs of a server that is shutting down or cut the session (class 57P: an operator
/// intervened; class 08: the connection failed), which arrive before the socket closes.
fn server_gone(message: &str) -> bool {
    ["57P01", "57P02", "57P03", "08"]
        .iter()
        .any(|code| message.starts_with(code))
}

/// A writer whose server went away: since when, and why its last try to come back failed.
pub struct Lost {
    since: Instant,
    tried: Option<Instant>,
    why: String,
}

impl Default for Lost {
    fn default() -> Lost {
        Lost {
            since: Instant::now(),
            tried: None,
            why: "the connection closed".into(),
        }
    }
}

impl Lost {
    pub fn error(&self) -> StoreError {
        StoreError::Unavailable(format!(
            "{} (for {} ms)",
            self.why,
            self.since.elapsed().as_millis()
        ))
    }
}

/// The writer's connection again, unless it was tried too recently or the server still refuses
/// (then what was lost, with why).
pub fn reconnect_writer(url: &str, mut l: Lost) -> Result<Connection, Lost> {
    if l.tried.is_some_and(|t| t.elapsed() < RETRY_EVERY) {
        return Err(l);
    }
    l.tried = Some(Instant::now());
    match open_writer(url) {
        Ok(c) => {
            tracing::info!(
                after_ms = l.since.elapsed().as_millis() as u64,
                "the store's database is back"
            );
            Ok(c)
        }
        Err(e) => {
            let why = match e {
                StoreError::Unavailable(m) => m,
                e => e.to_string(),
            };
            if l.why != why {
                tracing::warn!(error = %why, "the store's database is still unavailable");
            }
            l.why = why;
            Err(l)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(
            redact("postgres://hub:s3cret@db:5432/gridhub"),
            "postgres://hub:***@db:5432/gridhub"
        );
        assert_eq!(
            redact("postgres://hub@db/gridhub"),
            "postgres://hub@db/gridhub"
        );
        assert_eq!(redact("host=db user=hub"), "host=db user=hub");
    }
}

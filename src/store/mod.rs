//! store — durability: an embedded SQLite file (WAL) with group commit.
//!
//! All writes go through one writer thread. Each `Job` is one atomic unit (for an order: its
//! event, its new state and the outbox messages it causes). The writer takes every job that is
//! waiting, runs them in one transaction and commits once — one fsync for the whole batch — and
//! only then calls each job's `done`, which is where replies and pushes happen. So nothing is
//! acknowledged before it is durable, and a busy hub commits thousands of transitions per fsync.
//! If a batch fails, it is rolled back whole and every job in it is told so.
//!
//! Reads use a small pool of separate connections (WAL readers never block the writer).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use rusqlite::Connection;

use crate::telemetry::Metrics;

/// Schema version this build writes; older databases are migrated on open.
pub const SCHEMA_VERSION: i64 = 1;
const SCHEMA_V1: &str = include_str!("schema.sql");

/// Jobs waiting for the writer; submitters wait (backpressure) when it is full.
pub const QUEUE: usize = 16_384;
/// Jobs per transaction at most, so one commit's latency stays bounded.
const MAX_BATCH: usize = 4_096;
/// Reader connections kept open.
const READERS: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(String),
    #[error("the store is closed")]
    Closed,
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        StoreError::Sqlite(e.to_string())
    }
}

type WriteFn = Box<dyn FnOnce(&Connection) -> rusqlite::Result<()> + Send>;
type DoneFn = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// One atomic unit of writes, and what to do once it is committed (or failed).
pub struct Job {
    write: WriteFn,
    done: DoneFn,
}

impl Job {
    pub fn new(
        write: impl FnOnce(&Connection) -> rusqlite::Result<()> + Send + 'static,
        done: impl FnOnce(Result<(), StoreError>) + Send + 'static,
    ) -> Job {
        Job {
            write: Box::new(write),
            done: Box::new(done),
        }
    }
}

pub struct Store {
    path: PathBuf,
    jobs: Mutex<Option<SyncSender<Job>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    readers: Mutex<Vec<Connection>>,
}

fn open_conn(path: &Path) -> rusqlite::Result<Connection> {
    let c = Connection::open(path)?;
    // WAL: readers never block the writer. FULL: the WAL is fsynced at every commit, so a
    // committed transaction survives power loss, not only a killed process.
    c.pragma_update(None, "journal_mode", "WAL")?;
    c.pragma_update(None, "synchronous", "FULL")?;
    c.pragma_update(None, "busy_timeout", 5000)?;
    c.pragma_update(None, "temp_store", "MEMORY")?;
    c.pragma_update(None, "cache_size", -32_768)?;
    Ok(c)
}

fn migrate(c: &Connection) -> rusqlite::Result<()> {
    let version: i64 = c.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version < 1 {
        c.execute_batch(&format!(
            "BEGIN; {SCHEMA_V1}; PRAGMA user_version = 1; COMMIT;"
        ))?;
    }
    Ok(())
}

impl Store {
    /// Opens (creating if needed) the database at `path` and starts the writer thread.
    pub fn open(path: &Path, metrics: Arc<Metrics>) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Sqlite(format!("{}: {e}", dir.display())))?;
        }
        let conn = open_conn(path)?;
        migrate(&conn)?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Sqlite(format!(
                "{} has schema version {version}, newer than this build's {SCHEMA_VERSION}",
                path.display()
            )));
        }
        let (tx, rx) = sync_channel(QUEUE);
        let writer = std::thread::Builder::new()
            .name("gridhub-store".into())
            .spawn(move || writer_loop(conn, rx, metrics))
            .map_err(|e| StoreError::Sqlite(format!("cannot start the writer thread: {e}")))?;
        Ok(Store {
            path: path.to_owned(),
            jobs: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            readers: Mutex::new(Vec::new()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues a job; blocks the calling thread while the queue is full. For async callers use
    /// `submit_async`.
    pub fn submit(&self, job: Job) {
        let tx = self.jobs.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match tx {
            Some(tx) => {
                if let Err(e) = tx.send(job) {
                    (e.0.done)(Err(StoreError::Closed));
                }
            }
            None => (job.done)(Err(StoreError::Closed)),
        }
    }

    /// Queues a job without blocking a runtime thread: waits asynchronously while full.
    pub async fn submit_async(&self, mut job: Job) {
        let tx = self.jobs.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(tx) = tx else {
            return (job.done)(Err(StoreError::Closed));
        };
        let mut pause = std::time::Duration::from_micros(100);
        loop {
            match tx.try_send(job) {
                Ok(()) => return,
                Err(TrySendError::Full(j)) => {
                    job = j;
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_millis(5));
                }
                Err(TrySendError::Disconnected(j)) => return (j.done)(Err(StoreError::Closed)),
            }
        }
    }

    /// Runs a read on a pooled reader connection, on a blocking thread.
    pub async fn read<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let me = Arc::clone(self);
        tokio::task::spawn_blocking(move || me.read_sync(f))
            .await
            .map_err(|e| StoreError::Sqlite(format!("reader task failed: {e}")))?
    }

    /// A read on the calling thread (start-up, tests, blocking contexts).
    pub fn read_sync<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let pooled = self.readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match pooled {
            Some(c) => c,
            None => open_conn(&self.path)?,
        };
        let out = f(&conn).map_err(StoreError::from);
        let mut pool = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < READERS {
            pool.push(conn);
        }
        out
    }

    /// Stops taking jobs, lets the writer finish what is queued, and waits for it.
    pub fn close(&self) {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = h.join();
        }
        self.readers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

fn writer_loop(conn: Connection, rx: Receiver<Job>, metrics: Arc<Metrics>) {
    let mut writes: Vec<WriteFn> = Vec::with_capacity(MAX_BATCH);
    let mut dones: Vec<DoneFn> = Vec::with_capacity(MAX_BATCH);
    while let Ok(first) = rx.recv() {
        writes.push(first.write);
        dones.push(first.done);
        while writes.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => {
                    writes.push(j.write);
                    dones.push(j.done);
                }
                Err(_) => break,
            }
        }
        let t0 = Instant::now();
        let n = writes.len() as u64;
        let result = commit(&conn, &mut writes);
        metrics.store_commit_latency.observe(t0.elapsed());
        metrics.store_commits.fetch_add(1, Relaxed);
        metrics.store_jobs.fetch_add(n, Relaxed);
        if let Err(e) = &result {
            metrics.store_failures.fetch_add(1, Relaxed);
            tracing::error!(error = %e, jobs = n, "store batch failed and was rolled back");
        }
        for done in dones.drain(..) {
            done(result.clone());
        }
    }
}

fn commit(conn: &Connection, writes: &mut Vec<WriteFn>) -> Result<(), StoreError> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    for w in writes.drain(..) {
        if let Err(e) = w(conn) {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e.into());
        }
    }
    if let Err(e) = conn.execute_batch("COMMIT") {
        let _ = conn.execute_batch("ROLLBACK");
        return Err(e.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("gridhub-store-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d.join("test.db")
    }

    #[test]
    fn jobs_commit_together_and_report_after_commit() {
        let path = temp("commit");
        let store = Store::open(&path, Arc::default()).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        for i in 0..100 {
            let tx = tx.clone();
            store.submit(Job::new(
                move |c| {
                    c.execute(
                        "INSERT INTO meta(key, value) VALUES (?1, 'x')",
                        [format!("k{i}")],
                    )
                    .map(drop)
                },
                move |r| tx.send(r).unwrap(),
            ));
        }
        for _ in 0..100 {
            assert_eq!(rx.recv().unwrap(), Ok(()));
        }
        let n: i64 = store
            .read_sync(|c| c.query_row("SELECT COUNT(*) FROM meta", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(n, 100);
        store.close();
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_failing_job_rolls_back_its_whole_batch() {
        let path = temp("rollback");
        let store = Store::open(&path, Arc::default()).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let t1 = tx.clone();
        // Hold the writer inside an earlier batch, so the next two jobs queue up and land in
        // one batch together.
        let (gate_tx, gate_rx) = std::sync::mpsc::channel::<()>();
        let (inside_tx, inside_rx) = std::sync::mpsc::channel::<()>();
        store.submit(Job::new(
            move |_| {
                inside_tx.send(()).unwrap();
                gate_rx.recv().ok();
                Ok(())
            },
            |_| {},
        ));
        inside_rx.recv().unwrap();
        store.submit(Job::new(
            |c| {
                c.execute("INSERT INTO meta(key, value) VALUES ('a', '1')", [])
                    .map(drop)
            },
            move |r| t1.send(r).unwrap(),
        ));
        store.submit(Job::new(
            |c| {
                c.execute("INSERT INTO no_such_table VALUES (1)", [])
                    .map(drop)
            },
            move |r| tx.send(r).unwrap(),
        ));
        gate_tx.send(()).unwrap();
        assert!(rx.recv().unwrap().is_err());
        assert!(rx.recv().unwrap().is_err());
        let n: i64 = store
            .read_sync(|c| c.query_row("SELECT COUNT(*) FROM meta", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(n, 0, "the good job was rolled back with its batch");
        store.close();
        let (tx, rx) = std::sync::mpsc::channel();
        store.submit(Job::new(|_| Ok(()), move |r| tx.send(r).unwrap()));
        assert_eq!(rx.recv().unwrap(), Err(StoreError::Closed));
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn reopening_keeps_data_and_schema() {
        let path = temp("reopen");
        {
            let store = Store::open(&path, Arc::default()).unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            store.submit(Job::new(
                |c| {
                    c.execute("INSERT INTO meta VALUES ('k', 'v')", [])
                        .map(drop)
                },
                move |r| tx.send(r).unwrap(),
            ));
            rx.recv().unwrap().unwrap();
        }
        let store = Store::open(&path, Arc::default()).unwrap();
        let v: String = store
            .read_sync(|c| c.query_row("SELECT value FROM meta WHERE key='k'", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(v, "v");
        store.close();
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }
}

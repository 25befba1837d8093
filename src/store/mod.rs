//! store — durability: an embedded SQLite file (WAL) with group commit.
//!
//! All writes go through one writer thread. Each `Job` is one atomic unit (for an order: its
//! event, its new state and the outbox messages it causes). The writer takes every job that is
//! waiting, runs them in one transaction and commits once — one fsync for the whole batch — and
//! only then hands the batch's notices to a completion thread, which posts each to the inbox of
//! the actor that submitted the job, in commit order, while the writer moves on to the next
//! batch. The actors answer and push: nothing is acknowledged before it is durable, a busy hub
//! commits thousands of transitions per fsync, and neither socket writes nor domain state ever
//! sit on the store's threads. If a batch fails, it is rolled back whole and every job in it is
//! told so.
//!
//! WAL checkpoints run on a third thread with its own connection (passive: they never block the
//! writer), and reads use a small pool of separate connections (WAL readers never block it
//! either).
//!
//! The same store runs on PostgreSQL when several hub nodes share it (`store.url`): the same
//! jobs, batches and commits over one connection (`db`), the schema migrated at start-up under a
//! lock, and the writer's connection holding an advisory lock for as long as it lives, so that
//! only one node's services ever write — a second is refused, and deadlines fire once.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::telemetry::Metrics;

pub mod config;
pub mod copy;
pub mod db;
pub mod postgres;
pub mod testing;

pub use db::Connection;

/// Schema version this build writes; older databases are migrated on open.
pub const SCHEMA_VERSION: i64 = 5;
const SCHEMA_V1: &str = include_str!("schema.sql");
const SCHEMA_V2: &str = include_str!("schema_v2.sql");
const SCHEMA_V3: &str = include_str!("schema_v3.sql");
const SCHEMA_V4: &str = include_str!("schema_v4.sql");
const SCHEMA_V5: &str = include_str!("schema_v5.sql");

/// Jobs waiting for the writer; submitters wait (backpressure) when it is full.
pub const QUEUE: usize = 16_384;
/// Jobs per transaction at most, so one commit's latency stays bounded.
const MAX_BATCH: usize = 4_096;
/// Reader connections kept open.
const READERS: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(String),
    /// The database server cannot be reached: nothing was written.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// Another node's services hold the database's writer lock.
    #[error("{0}")]
    Held(String),
    #[error("the store is closed")]
    Closed,
}

impl From<db::Error> for StoreError {
    fn from(e: db::Error) -> StoreError {
        StoreError::Db(e.to_string())
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        StoreError::Db(e.to_string())
    }
}

type WriteFn = Box<dyn FnOnce(&Connection) -> db::Result<()> + Send>;
type DoneFn = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// Where the store tells an actor how its jobs ended: the actor's own inbox for store news.
/// Unbounded by type but bounded by construction — one message per job, and jobs in flight are
/// bounded by `QUEUE` plus the batches being committed — so the completion thread never waits
/// on an actor that may itself be waiting to submit.
pub type Notifier<M> = tokio::sync::mpsc::UnboundedSender<M>;

/// A new inbox for store news.
pub fn inbox<M>() -> (Notifier<M>, tokio::sync::mpsc::UnboundedReceiver<M>) {
    tokio::sync::mpsc::unbounded_channel()
}

/// One atomic unit of writes, and who is told once it is committed (or failed). All that runs
/// after the commit is posting those messages: replies, pushes and domain state stay with the
/// actors that own them.
pub struct Job {
    write: WriteFn,
    done: Vec<DoneFn>,
}

impl Job {
    pub fn new(write: impl FnOnce(&Connection) -> db::Result<()> + Send + 'static) -> Job {
        Job {
            write: Box::new(write),
            done: Vec::new(),
        }
    }

    /// A job that reads (or reads and writes) and hands what it read to an actor. It runs on the
    /// writer in submission order, so it sees every job submitted before it.
    pub fn query<T: Send + 'static, M: Send + 'static>(
        work: impl FnOnce(&Connection) -> db::Result<T> + Send + 'static,
        to: &Notifier<M>,
        msg: impl FnOnce(Result<T, StoreError>) -> M + Send + 'static,
    ) -> Job {
        let slot: Arc<Mutex<Option<T>>> = Arc::default();
        let fill = Arc::clone(&slot);
        Job::new(move |c| {
            let v = work(c)?;
            *fill.lock().unwrap_or_else(|e| e.into_inner()) = Some(v);
            Ok(())
        })
        .notify(to, move |r| {
            let taken = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
            msg(r.and_then(|()| taken.ok_or(StoreError::Closed)))
        })
    }

    /// Tells an actor how the job ended, as a message in its inbox.
    pub fn notify<M: Send + 'static>(
        mut self,
        to: &Notifier<M>,
        msg: impl FnOnce(Result<(), StoreError>) -> M + Send + 'static,
    ) -> Job {
        let to = to.clone();
        // A closed inbox means its actor has stopped; nobody is left to tell.
        self.done.push(Box::new(move |r| drop(to.send(msg(r)))));
        self
    }

    /// Tells an actor only if the job failed: for writes whose success changes nothing the
    /// actor holds, so that every commit does not wake it.
    pub fn notify_failure<M: Send + 'static>(
        mut self,
        to: &Notifier<M>,
        msg: impl FnOnce(StoreError) -> M + Send + 'static,
    ) -> Job {
        let to = to.clone();
        self.done.push(Box::new(move |r| {
            if let Err(e) = r {
                drop(to.send(msg(e)));
            }
        }));
        self
    }

    /// More writes in the same transaction, after this job's own.
    pub fn and(self, more: impl FnOnce(&Connection) -> db::Result<()> + Send + 'static) -> Job {
        let first = self.write;
        Job {
            write: Box::new(move |c| {
                first(c)?;
                more(c)
            }),
            done: self.done,
        }
    }

    fn finish(self, r: Result<(), StoreError>) {
        for d in self.done {
            d(r.clone());
        }
    }
}

/// Where the store keeps its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An embedded SQLite file: one hub node, no other server.
    Sqlite(PathBuf),
    /// A PostgreSQL server (`postgres://user@host:port/db`) shared by the hub's nodes.
    Postgres(String),
}

impl Target {
    pub fn engine(&self) -> &'static str {
        match self {
            Target::Sqlite(_) => "sqlite",
            Target::Postgres(_) => "postgres",
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Sqlite(p) => write!(f, "{}", p.display()),
            Target::Postgres(url) => write!(f, "{}", postgres::redact(url)),
        }
    }
}

pub struct Store {
    target: Target,
    metrics: Arc<Metrics>,
    jobs: Mutex<Option<SyncSender<Job>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    stop_checkpoints: Arc<(Mutex<bool>, std::sync::Condvar)>,
    readers: Mutex<Vec<Connection>>,
}

/// Committed batches waiting for their `done` calls; the writer waits if the completion thread
/// falls this far behind.
const COMPLETIONS: usize = 64;
/// How often the checkpointer copies the WAL back into the database file.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(200);
/// Past this size the writer restarts the WAL between two batches. Under steady writing a
/// passive checkpoint never quite catches up, and SQLite rewinds the WAL only after one that did,
/// so without this it grows without bound (13 GB in the year replay). The restart must be the
/// writer's own: another connection waiting for the write lock starves, because the writer takes
/// it again right after every commit.
const WAL_LIMIT: u64 = 64 * 1024 * 1024;
/// The writer's page cache, in KiB.
const WRITER_CACHE_KIB: i64 = 256 * 1024;
/// Commits between two looks at the WAL's size.
const WAL_CHECK_EVERY: u64 = 16;

fn open_conn(path: &Path) -> rusqlite::Result<Connection> {
    let c = rusqlite::Connection::open(path)?;
    // WAL: readers never block the writer. FULL: the WAL is fsynced at every commit, so a
    // committed transaction survives power loss, not only a killed process.
    c.pragma_update(None, "journal_mode", "WAL")?;
    c.pragma_update(None, "synchronous", "FULL")?;
    c.pragma_update(None, "busy_timeout", 5000)?;
    c.pragma_update(None, "temp_store", "MEMORY")?;
    c.pragma_update(None, "cache_size", -32_768)?;
    // Every domain's statements stay prepared (rusqlite keeps 16 by default).
    c.set_prepared_statement_cache_capacity(256);
    Ok(Connection::Lite(c))
}

fn migrate(c: &rusqlite::Connection) -> rusqlite::Result<()> {
    let version: i64 = c.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version < 1 {
        c.execute_batch(&format!(
            "BEGIN; {SCHEMA_V1}; PRAGMA user_version = 1; COMMIT;"
        ))?;
    }
    if version < 2 {
        c.execute_batch(&format!(
            "BEGIN; {SCHEMA_V2}; PRAGMA user_version = 2; COMMIT;"
        ))?;
    }
    if version < 3 {
        c.execute_batch(&format!(
            "BEGIN; {SCHEMA_V3}; PRAGMA user_version = 3; COMMIT;"
        ))?;
    }
    if version < 4 {
        c.execute_batch(&format!(
            "BEGIN; {SCHEMA_V4}; PRAGMA user_version = 4; COMMIT;"
        ))?;
    }
    if version < 5 {
        c.execute_batch(&format!(
            "BEGIN; {SCHEMA_V5}; PRAGMA user_version = 5; COMMIT;"
        ))?;
    }
    Ok(())
}

/// The SQLite writer's connection: the schema migrated and checked, and tuned for writing.
fn open_sqlite_writer(path: &Path) -> Result<Connection, StoreError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Db(format!("{}: {e}", dir.display())))?;
    }
    let conn = open_conn(path)?;
    let c = conn.sqlite().expect("a SQLite connection");
    migrate(c)?;
    let version: i64 = c.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Db(format!(
            "{} has schema version {version}, newer than this build's {SCHEMA_VERSION}",
            path.display()
        )));
    }
    // The checkpointer thread does this work instead of whichever commit crosses the limit,
    // and a rewound WAL is cut back to the limit rather than keeping its largest size.
    c.pragma_update(None, "wal_autocheckpoint", 0)?;
    c.pragma_update(None, "journal_size_limit", WAL_LIMIT as i64)?;
    // The writer touches index pages all over (one terminal's outbox, one order's row);
    // keeping more of them cached matters once the indexes outgrow the default.
    c.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
    Ok(conn)
}

impl Store {
    /// Opens (creating if needed) the SQLite database at `path` and starts the writer thread.
    pub fn open(path: &Path, metrics: Arc<Metrics>) -> Result<Store, StoreError> {
        Store::open_target(Target::Sqlite(path.to_owned()), metrics)
    }

    /// Opens the store at `target`, migrating its schema, and starts the writer thread.
    pub fn open_target(target: Target, metrics: Arc<Metrics>) -> Result<Store, StoreError> {
        let (conn, checkpointer) = match &target {
            Target::Sqlite(path) => {
                let conn = open_sqlite_writer(path)?;
                (conn, Some(open_conn(path)?))
            }
            Target::Postgres(url) => (postgres::off_runtime(|| postgres::open_writer(url))?, None),
        };
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(|e| StoreError::Db(format!("cannot start thread {name}: {e}")))
        };
        let (tx, rx) = sync_channel(QUEUE);
        let (done_tx, done_rx) = sync_channel::<Completion>(COMPLETIONS);
        let metrics2 = Arc::clone(&metrics);
        let metrics3 = Arc::clone(&metrics);
        let stop: Arc<(Mutex<bool>, std::sync::Condvar)> = Arc::default();
        let stop2 = Arc::clone(&stop);
        let engine = match &target {
            Target::Sqlite(path) => Engine::Sqlite {
                wal: PathBuf::from(format!("{}-wal", path.display())),
            },
            Target::Postgres(url) => Engine::Postgres { url: url.clone() },
        };
        let mut threads = vec![
            spawn(
                "gridhub-store",
                Box::new(move || writer_loop(conn, engine, rx, done_tx, metrics)),
            )?,
            spawn(
                "gridhub-done",
                Box::new(move || completion_loop(done_rx, metrics3)),
            )?,
        ];
        if let Some(c) = checkpointer {
            threads.push(spawn(
                "gridhub-ckpt",
                Box::new(move || checkpoint_loop(c, stop2)),
            )?);
        }
        Ok(Store {
            metrics: Arc::clone(&metrics2),
            target,
            jobs: Mutex::new(Some(tx)),
            threads: Mutex::new(threads),
            stop_checkpoints: stop,
            readers: Mutex::new(Vec::new()),
        })
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Whether the last batch found the database there (a SQLite file always is).
    pub fn up(&self) -> bool {
        self.metrics.store_up.load(Relaxed) == 1
    }

    fn open_reader(&self) -> Result<Connection, StoreError> {
        match &self.target {
            Target::Sqlite(path) => Ok(open_conn(path)?),
            Target::Postgres(url) => postgres::connect(url),
        }
    }

    /// Queues a job; blocks the calling thread while the queue is full. For async callers use
    /// `submit_async`.
    pub fn submit(&self, job: Job) {
        self.metrics.store_queue.fetch_add(1, Relaxed);
        let tx = self.jobs.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match tx {
            Some(tx) => {
                if let Err(e) = tx.send(job) {
                    e.0.finish(Err(StoreError::Closed));
                }
            }
            None => job.finish(Err(StoreError::Closed)),
        }
    }

    /// Queues a job without blocking a runtime thread: waits asynchronously while full.
    pub async fn submit_async(&self, mut job: Job) {
        self.metrics.store_queue.fetch_add(1, Relaxed);
        let tx = self.jobs.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(tx) = tx else {
            return job.finish(Err(StoreError::Closed));
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
                Err(TrySendError::Disconnected(j)) => return j.finish(Err(StoreError::Closed)),
            }
        }
    }

    /// Runs a read on a pooled reader connection, on a blocking thread.
    pub async fn read<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Connection) -> db::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let me = Arc::clone(self);
        tokio::task::spawn_blocking(move || me.read_here(f))
            .await
            .map_err(|e| StoreError::Db(format!("reader task failed: {e}")))?
    }

    /// A read on the calling thread (start-up, tests, blocking contexts).
    pub fn read_sync<T: Send>(
        &self,
        f: impl FnOnce(&Connection) -> db::Result<T> + Send,
    ) -> Result<T, StoreError> {
        match self.target {
            Target::Sqlite(_) => self.read_here(f),
            Target::Postgres(_) => postgres::off_runtime(|| self.read_here(f)),
        }
    }

    fn read_here<T>(&self, f: impl FnOnce(&Connection) -> db::Result<T>) -> Result<T, StoreError> {
        let pooled = self.readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
        // A pooled connection may have lost its server since its last read (a restart, even a
        // quick one): asked first (one round trip on PostgreSQL, nothing on SQLite), so that it
        // is replaced rather than fail the read.
        let conn = match pooled {
            Some(c) if c.alive() => c,
            _ => self.open_reader()?,
        };
        let out = f(&conn).map_err(|e| postgres::classify(&conn, e));
        let mut pool = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < READERS && !conn.is_closed() {
            pool.push(conn);
        }
        out
    }

    /// Stops taking jobs, lets the writer and the completions finish what is queued, checkpoints
    /// the WAL into the database file, and waits for all three threads.
    pub fn close(&self) {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).take();
        let mut threads =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        // Writer and completions first (they finish the queue), the checkpointer last, so its
        // final checkpoint covers the last batch.
        let checkpointer = threads.pop();
        for h in threads {
            let _ = h.join();
        }
        {
            let (flag, cv) = &*self.stop_checkpoints;
            *flag.lock().unwrap_or_else(|e| e.into_inner()) = true;
            cv.notify_all();
        }
        if let Some(h) = checkpointer {
            let _ = h.join();
        }
        let readers = std::mem::take(&mut *self.readers.lock().unwrap_or_else(|e| e.into_inner()));
        postgres::off_runtime(move || drop(readers));
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

/// A committed (or failed) batch's `done` calls.
type Completion = (Result<(), StoreError>, Vec<DoneFn>);

/// A PostgreSQL writer idle this long checks its connection before the next batch.
const IDLE_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// What the writer does besides committing, per engine.
enum Engine {
    /// Restarts the WAL when it grows past `WAL_LIMIT`.
    Sqlite { wal: PathBuf },
    /// Reconnects (and takes the writer's lock again) after the server went away.
    Postgres { url: String },
}

fn writer_loop(
    conn: Connection,
    engine: Engine,
    rx: Receiver<Job>,
    completions: SyncSender<Completion>,
    metrics: Arc<Metrics>,
) {
    // The connection, or while a PostgreSQL writer has no server, since when and why: the old
    // connection is dropped at once, since its session holds the lock the next one must take.
    let mut writer: Result<Connection, postgres::Lost> = Ok(conn);
    let mut writes: Vec<WriteFn> = Vec::with_capacity(MAX_BATCH);
    let mut commits: u64 = 0;
    let mut checked = Instant::now();
    loop {
        // Only a PostgreSQL writer has a server to look for while idle.
        let next = match engine {
            Engine::Postgres { .. } => rx.recv_timeout(IDLE_CHECK),
            Engine::Sqlite { .. } => rx
                .recv()
                .map_err(|_| std::sync::mpsc::RecvTimeoutError::Disconnected),
        };
        let first = match next {
            Ok(j) => j,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                // Idle: a PostgreSQL writer looks for its server now, so that `/readyz` tells
                // the truth and the connection is back before the next write needs it.
                if let Engine::Postgres { url } = &engine {
                    ensure_server(&mut writer, url);
                    metrics.store_up.store(u64::from(writer.is_ok()), Relaxed);
                    checked = Instant::now();
                }
                continue;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let mut dones: Vec<DoneFn> = Vec::with_capacity(64);
        writes.push(first.write);
        dones.extend(first.done);
        while writes.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => {
                    writes.push(j.write);
                    dones.extend(j.done);
                }
                Err(_) => break,
            }
        }
        let t0 = Instant::now();
        let n = writes.len() as u64;
        metrics.store_queue.fetch_sub(n, Relaxed);
        if let Engine::Postgres { url } = &engine
            && !writer
                .as_ref()
                .is_ok_and(|c| !c.is_closed() && t0.duration_since(checked) <= IDLE_CHECK)
        {
            ensure_server(&mut writer, url);
        }
        let result = match &writer {
            Ok(c) => commit(c, &mut writes),
            // Refused before anything is sent: the server is away, nothing of it was written.
            Err(l) => Err(l.error()),
        };
        // Whatever `commit` did not run (it stops at the first failure) is refused with the
        // batch: never left for the next one.
        writes.clear();
        if let (Engine::Postgres { .. }, Err(StoreError::Unavailable(_)), Ok(_)) =
            (&engine, &result, &writer)
        {
            writer = Err(postgres::Lost::default());
        }
        checked = Instant::now();
        metrics.store_up.store(u64::from(writer.is_ok()), Relaxed);
        metrics.store_commit_latency.observe(t0.elapsed());
        metrics.store_commits.fetch_add(1, Relaxed);
        metrics.store_jobs.fetch_add(n, Relaxed);
        if let Err(e) = &result {
            metrics.store_failures.fetch_add(1, Relaxed);
            tracing::error!(error = %e, jobs = n, "store batch failed and was rolled back");
        }
        metrics.store_completions_queue.fetch_add(1, Relaxed);
        if let Err(e) = completions.send((result, dones)) {
            // The completion thread is gone only if a `done` panicked; run them here instead.
            let (result, dones) = e.0;
            for done in dones {
                done(result.clone());
            }
        }
        commits += 1;
        if let Engine::Sqlite { wal } = &engine
            && commits.is_multiple_of(WAL_CHECK_EVERY)
            && std::fs::metadata(wal).is_ok_and(|m| m.len() > WAL_LIMIT)
            && let Some(c) = writer.as_ref().ok().and_then(Connection::sqlite)
        {
            let t = Instant::now();
            // Most frames were already copied by the checkpointer; this copies the rest and lets
            // the next commit rewind the WAL.
            if let Err(e) = c.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(())) {
                tracing::warn!(error = %e, "WAL restart failed");
            }
            metrics.store_wal_restarts.fetch_add(1, Relaxed);
            metrics.store_commit_latency.observe(t.elapsed());
        }
    }
}

/// A PostgreSQL writer with a live connection to its server afterwards, unless the server is
/// away (then since when and why).
fn ensure_server(writer: &mut Result<Connection, postgres::Lost>, url: &str) {
    if writer.as_ref().is_ok_and(|c| c.alive()) {
        return;
    }
    // The dead connection goes first: its session holds the lock the new one must take.
    let lost = std::mem::replace(writer, Err(postgres::Lost::default()))
        .err()
        .unwrap_or_default();
    *writer = postgres::reconnect_writer(url, lost);
}

/// Runs each batch's `done` calls in commit order.
fn completion_loop(rx: Receiver<Completion>, metrics: Arc<Metrics>) {
    while let Ok((result, dones)) = rx.recv() {
        metrics.store_completions_queue.fetch_sub(1, Relaxed);
        for done in dones {
            done(result.clone());
        }
    }
}

/// Copies the WAL back into the database file in the background, then once more on close.
fn checkpoint_loop(conn: Connection, stop: Arc<(Mutex<bool>, std::sync::Condvar)>) {
    let (flag, cv) = &*stop;
    let mut stopped = flag.lock().unwrap_or_else(|e| e.into_inner());
    while !*stopped {
        stopped = cv
            .wait_timeout(stopped, CHECKPOINT_EVERY)
            .unwrap_or_else(|e| e.into_inner())
            .0;
        drop(stopped);
        // PASSIVE copies what no reader needs and never waits for the writer.
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "WAL checkpoint failed");
        }
        stopped = flag.lock().unwrap_or_else(|e| e.into_inner());
    }
    drop(stopped);
    let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
}

fn commit(conn: &Connection, writes: &mut Vec<WriteFn>) -> Result<(), StoreError> {
    conn.transaction(|c| writes.drain(..).try_for_each(|w| w(c)))
        .map_err(|e| postgres::classify(conn, e))
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
        let (tx, mut rx) = inbox();
        for i in 0..100 {
            store.submit(
                Job::new(move |c| {
                    c.execute(
                        "INSERT INTO meta(key, value) VALUES (?1, 'x')",
                        [format!("k{i}")],
                    )
                    .map(drop)
                })
                .notify(&tx, move |r| (i, r)),
            );
        }
        for i in 0..100 {
            assert_eq!(
                rx.blocking_recv().unwrap(),
                (i, Ok(())),
                "in submission order"
            );
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
        let (tx, mut rx) = inbox();
        // Hold the writer inside an earlier batch, so the next two jobs queue up and land in
        // one batch together.
        let (gate_tx, gate_rx) = std::sync::mpsc::channel::<()>();
        let (inside_tx, inside_rx) = std::sync::mpsc::channel::<()>();
        store.submit(Job::new(move |_| {
            inside_tx.send(()).unwrap();
            gate_rx.recv().ok();
            Ok(())
        }));
        inside_rx.recv().unwrap();
        store.submit(
            Job::new(|c| {
                c.execute("INSERT INTO meta(key, value) VALUES ('a', '1')", [])
                    .map(drop)
            })
            .notify(&tx, |r| r),
        );
        store.submit(
            Job::new(|c| {
                c.execute("INSERT INTO no_such_table VALUES (1)", [])
                    .map(drop)
            })
            .notify(&tx, |r| r),
        );
        gate_tx.send(()).unwrap();
        assert!(rx.blocking_recv().unwrap().is_err());
        assert!(rx.blocking_recv().unwrap().is_err());
        let n: i64 = store
            .read_sync(|c| c.query_row("SELECT COUNT(*) FROM meta", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(n, 0, "the good job was rolled back with its batch");
        store.close();
        store.submit(Job::new(|_| Ok(())).notify(&tx, |r| r));
        assert_eq!(rx.blocking_recv().unwrap(), Err(StoreError::Closed));
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_query_hands_what_it_read_to_the_actor_in_order_with_writes() {
        let path = temp("query");
        let store = Store::open(&path, Arc::default()).unwrap();
        let (tx, mut rx) = inbox();
        store.submit(Job::new(|c| {
            c.execute("INSERT INTO meta VALUES ('k', 'v1')", [])
                .map(drop)
        }));
        store.submit(Job::query(
            |c| {
                c.query_row("SELECT value FROM meta WHERE key='k'", [], |r| {
                    r.get::<_, String>(0)
                })
            },
            &tx,
            |r| r,
        ));
        assert_eq!(rx.blocking_recv().unwrap(), Ok("v1".to_string()));
        // Alone in its batch, so that its failure rolls back nothing else.
        store.submit(Job::query(
            |c| {
                c.query_row("SELECT value FROM no_such_table", [], |r| {
                    r.get::<_, String>(0)
                })
            },
            &tx,
            |r| r,
        ));
        assert!(matches!(
            rx.blocking_recv().unwrap(),
            Err(StoreError::Db(_))
        ));
        store.close();
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn reopening_keeps_data_and_schema() {
        let path = temp("reopen");
        {
            let store = Store::open(&path, Arc::default()).unwrap();
            let (tx, mut rx) = inbox();
            store.submit(
                Job::new(|c| {
                    c.execute("INSERT INTO meta VALUES ('k', 'v')", [])
                        .map(drop)
                })
                .notify(&tx, |r| r),
            );
            rx.blocking_recv().unwrap().unwrap();
        }
        let store = Store::open(&path, Arc::default()).unwrap();
        let v: String = store
            .read_sync(|c| c.query_row("SELECT value FROM meta WHERE key='k'", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(v, "v");
        store.close();
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_version_1_database_is_migrated_in_place() {
        let path = temp("migrate");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(&format!(
                "BEGIN; {SCHEMA_V1}; PRAGMA user_version = 1; INSERT INTO meta VALUES ('k', 'v'); COMMIT;"
            ))
            .unwrap();
        }
        let store = Store::open(&path, Arc::default()).unwrap();
        let (version, kept, calls, photos): (i64, String, i64, i64) = store
            .read_sync(|c| {
                Ok((
                    c.query_row("PRAGMA user_version", [], |r| r.get(0))?,
                    c.query_row("SELECT value FROM meta WHERE key='k'", [], |r| r.get(0))?,
                    c.query_row("SELECT COUNT(*) FROM calls", [], |r| r.get(0))?,
                    c.query_row(
                        "SELECT COUNT(*) FROM attachments, sessions, session_spans, sites",
                        [],
                        |r| r.get(0),
                    )?,
                ))
            })
            .unwrap();
        assert_eq!(
            (version, kept.as_str(), calls, photos),
            (SCHEMA_VERSION, "v", 0, 0)
        );
        store.close();
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    /// The same store on a PostgreSQL server of the test's own.
    mod on_postgres {
        use super::*;
        use crate::store::testing::PgServer;

        fn open(url: &str) -> Store {
            Store::open_target(Target::Postgres(url.into()), Arc::default()).unwrap()
        }

        fn put(store: &Store, key: &str) -> Result<(), StoreError> {
            let (tx, mut rx) = inbox();
            let key = key.to_owned();
            store.submit(
                Job::new(move |c| {
                    c.execute("INSERT INTO meta (key, value) VALUES (?1, 'x')", [key])
                        .map(drop)
                })
                .notify(&tx, |r| r),
            );
            rx.blocking_recv().unwrap()
        }

        fn count(store: &Store) -> i64 {
            store
                .read_sync(|c| c.query_row("SELECT COUNT(*) FROM meta", [], |r| r.get(0)))
                .unwrap()
        }

        #[test]
        fn jobs_commit_roll_back_and_read_back_as_on_sqlite() {
            let pg = PgServer::start("store");
            let url = pg.create_database("jobs");
            let store = open(&url);
            for i in 0..50 {
                put(&store, &format!("k{i}")).unwrap();
            }
            assert_eq!(count(&store), 50);
            let e = put(&store, "k7").unwrap_err();
            assert!(
                matches!(&e, StoreError::Db(m) if m.contains("23505")),
                "a duplicate key is the database's error: {e}"
            );
            let (tx, mut rx) = inbox();
            store.submit(Job::query(
                |c| {
                    c.query_row(
                        "SELECT value, COUNT(*) OVER () FROM meta WHERE key = ?",
                        ["k3"],
                        |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
                    )
                },
                &tx,
                |r| r,
            ));
            assert_eq!(rx.blocking_recv().unwrap(), Ok(("x".to_string(), 1)));
            store.close();
            // Opening again finds the schema in place and the data kept.
            let store = open(&url);
            assert_eq!(count(&store), 50);
            store.close();
        }

        #[test]
        fn pipelined_writes_land_in_order_and_a_failing_one_fails_its_batch() {
            let pg = PgServer::start("pipe");
            let store = open(&pg.create_database("pipe"));
            let insert = "INSERT INTO meta (key, value) VALUES (?1, ?2)";
            let (tx, mut rx) = inbox();
            store.submit(Job::query(
                move |c| {
                    for i in 0..1000 {
                        c.write(insert, [format!("p{i}"), i.to_string()])?;
                    }
                    // A statement that waits for its answer reads every write sent before it.
                    c.query_row("SELECT COUNT(*), MAX(value) FROM meta", [], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
                    })
                },
                &tx,
                |r| r,
            ));
            assert_eq!(rx.blocking_recv().unwrap(), Ok((1000, "999".to_string())));
            let (tx, mut rx) = inbox();
            store.submit(
                Job::new(move |c| {
                    for i in 0..10 {
                        c.write(insert, [format!("q{i}"), "x".into()])?;
                    }
                    c.write(insert, ["p5".to_string(), "again".into()])?;
                    c.write(insert, ["q99".to_string(), "x".into()])
                })
                .notify(&tx, |r| r),
            );
            let e = rx.blocking_recv().unwrap().unwrap_err();
            assert!(
                e.to_string().contains("23505"),
                "the duplicate, at the commit: {e}"
            );
            assert_eq!(count(&store), 1000, "the whole batch rolled back");
            // A job that fails on its own with a failing write still unread: the rollback still
            // happens, and the next batch starts clean.
            let (tx, mut rx) = inbox();
            store.submit(
                Job::new(move |c| {
                    c.write(insert, ["p6".to_string(), "again".into()])?;
                    Err(db::Error::Other("the job gave up".into()))
                })
                .notify(&tx, |r| r),
            );
            let e = rx.blocking_recv().unwrap().unwrap_err();
            assert!(
                e.to_string().contains("the job gave up"),
                "its own reason: {e}"
            );
            put(&store, "after").unwrap();
            store.close();
        }

        #[test]
        fn one_writer_at_a_time_and_writes_refused_while_the_server_is_away() {
            let mut pg = PgServer::start("fence");
            let url = pg.create_database("fence");
            let store = open(&url);
            let e = Store::open_target(Target::Postgres(url.clone()), Arc::default())
                .err()
                .expect("a second writer is refused");
            assert!(e.to_string().contains("one node runs them"), "{e}");
            put(&store, "before").unwrap();

            pg.stop();
            for _ in 0..3 {
                let e = put(&store, "meanwhile").unwrap_err();
                assert!(
                    matches!(e, StoreError::Unavailable(_)),
                    "refused as unavailable, not acknowledged: {e}"
                );
            }
            pg.restart();
            // The writer comes back by itself (it retries every half second).
            let deadline = Instant::now() + std::time::Duration::from_secs(30);
            while put(&store, "after").is_err() {
                assert!(Instant::now() < deadline, "the writer reconnects");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            let keys: Vec<String> = store
                .read_sync(|c| {
                    c.prepare("SELECT key FROM meta ORDER BY key")?
                        .query_map([], |r| r.get(0))?
                        .collect()
                })
                .unwrap();
            assert_eq!(keys, ["after", "before"], "nothing refused was written");
            store.close();
            // The lock went with the writer's connection: another node's services may start.
            let other = open(&url);
            put(&other, "other").unwrap();
            other.close();
        }
    }
}

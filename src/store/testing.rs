//! A PostgreSQL server of a test's own: a fresh cluster in a temporary folder on a free loopback
//! port, started with the server's own binaries (`apt-get install postgresql`; `scripts/test`
//! installs it), stopped and removed when dropped.
//!
//! PostgreSQL refuses to run as root; as root the cluster belongs to the `postgres` user the
//! package creates, and its processes run as that user.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::store::db::OptionalExtension;

pub struct PgServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    user: Option<(u32, u32)>,
}

/// How long the server may take to start or stop on a busy machine.
const PATIENCE: Duration = Duration::from_secs(60);

/// The newest installed server's binaries.
fn bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, p)| p.join("postgres").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, p)| p)
        .expect("PostgreSQL is installed (scripts/test installs it: apt-get install postgresql)")
}

/// The `postgres` user's ids, when running as root.
fn server_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let name = std::ffi::CString::new("postgres").expect("no NUL");
    // SAFETY: a valid C string; the returned record is read at once, before any other call
    // that could reuse its static storage.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !pw.is_null(),
        "running as root, PostgreSQL needs the `postgres` user (apt-get install postgresql creates it)"
    );
    // SAFETY: checked non-null above.
    Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
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
        let dir = std::env::temp_dir().join(format!(
            "gridhub-pg-{tag}-{}-{}",
            std::process::id(),
            free_port()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temporary folder");
        let user = server_user();
        if let Some((uid, gid)) = user {
            chown(&dir, uid, gid);
        }
        let bin = bin_dir();
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-U", "gridhub", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        as_user(&mut initdb, user);
        let out = initdb.output().expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut s = PgServer {
            child: None,
            port: free_port(),
            dir,
            bin,
            user,
        };
        s.restart();
        s
    }

    /// The URL of `db` on this server.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://gridhub@127.0.0.1:{}/{db}", self.port)
    }

    /// A new empty database.
    pub fn create_database(&self, name: &str) -> String {
        ensure_database(&format!("postgres://gridhub@127.0.0.1:{}", self.port), name)
    }

    /// Stops it as an operator would (fast shutdown: sessions cut, nothing committed lost).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child by its pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
            let _ = c.wait();
        }
    }

    /// Starts it (again) on its port, and waits until it takes connections.
    pub fn restart(&mut self) {
        self.stop();
        let mut postgres = Command::new(self.bin.join("postgres"));
        postgres
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-p", &self.port.to_string(), "-h", "127.0.0.1", "-k"])
            .arg(&self.dir)
            // A test cluster: nothing to survive a power cut, and room for several hubs.
            .args(["-c", "fsync=off", "-c", "max_connections=200"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        as_user(&mut postgres, self.user);
        self.child = Some(postgres.spawn().expect("postgres starts"));
        let deadline = Instant::now() + PATIENCE;
        while off_runtime({
            let url = self.url("postgres");
            move || crate::store::db::PgConn::connect(&url).map(drop)
        })
        .is_err()
        {
            assert!(Instant::now() < deadline, "postgres takes connections");
            std::thread::sleep(Duration::from_millis(50));
        }
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
    let (admin, name2) = (format!("{server}/postgres"), name.to_owned());
    off_runtime(move || {
        let c = crate::store::Connection::Pg(crate::store::db::PgConn::connect(&admin)?);
        let there: Option<i64> = c
            .query_row(
                "SELECT 1 FROM pg_database WHERE datname = ?1",
                [&name2],
                |r| r.get(0),
            )
            .optional()?;
        if there.is_none() {
            c.execute_batch(&format!("CREATE DATABASE {name2}"))?;
        }
        Ok(())
    })
    .unwrap_or_else(|e| panic!("database {name} on {server}: {e}"));
    format!("{server}/{name}")
}

/// A PostgreSQL connection blocks on a runtime of its own, which cannot start inside a test's:
/// the work runs on a thread of its own.
fn off_runtime<T: Send + 'static>(
    f: impl FnOnce() -> crate::store::db::Result<T> + Send + 'static,
) -> crate::store::db::Result<T> {
    std::thread::spawn(f)
        .join()
        .unwrap_or_else(|_| Err(crate::store::db::Error::Other("panicked".into())))
}

fn as_user(c: &mut Command, user: Option<(u32, u32)>) {
    use std::os::unix::process::CommandExt;
    if let Some((uid, gid)) = user {
        c.uid(uid).gid(gid);
    }
}

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(p, Some(uid), Some(gid)).expect("the folder can be given away");
}

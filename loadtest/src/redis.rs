//! A `redis-server` of the harness's own, for baselines: started in a temporary folder on a
//! free loopback port (pinned to a CPU when asked, like the hub), published to over plain TCP,
//! stopped at the end.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct RedisServer {
    child: tokio::process::Child,
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl RedisServer {
    /// Starts `redis-server` with persistence off, on CPU `cpu` when given.
    pub async fn start(cpu: Option<usize>) -> Result<RedisServer, String> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let dir =
            std::env::temp_dir().join(format!("gridhub-lt-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let args = [
            "--port".to_string(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
            "--maxclients".into(),
            "19000".into(),
            "--dir".into(),
            dir.display().to_string(),
            "--daemonize".into(),
            "no".into(),
        ];
        let mut cmd = match cpu {
            Some(c) => {
                let mut cmd = tokio::process::Command::new("taskset");
                cmd.args(["-c", &c.to_string(), "redis-server"]);
                cmd
            }
            None => tokio::process::Command::new("redis-server"),
        };
        let child = cmd
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                let _ = std::fs::remove_dir_all(&dir);
                format!(
                    "redis-server{}: {e} (install it: apt-get install redis-server{})",
                    if cpu.is_some() { " under taskset" } else { "" },
                    if cpu.is_some() { " util-linux" } else { "" }
                )
            })?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        for _ in 0..100 {
            if let Ok(mut s) = TcpStream::connect(addr).await {
                let _ = s.write_all(b"PING\r\n").await;
                let mut b = [0u8; 16];
                if let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_secs(1), s.read(&mut b)).await
                    && b[..n].starts_with(b"+PONG")
                {
                    return Ok(RedisServer { child, addr, dir });
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = std::fs::remove_dir_all(&dir);
        Err("redis-server did not answer PING within 5 s".into())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// CPU seconds the server has used.
    pub fn cpu_seconds(&self) -> f64 {
        self.pid().map_or(0.0, |p| crate::proc_cpu(&p.to_string()))
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A publishing connection.
pub struct Publisher(TcpStream);

impl Publisher {
    pub async fn connect(addr: SocketAddr) -> Result<Publisher, String> {
        let s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let _ = s.set_nodelay(true);
        Ok(Publisher(s))
    }

    /// PUBLISH; returns how many subscribers the server says it delivered to.
    pub async fn publish(&mut self, channel: &str, payload: &str) -> Result<u64, String> {
        let cmd = format!(
            "*3\r\n$7\r\nPUBLISH\r\n${}\r\n{channel}\r\n${}\r\n{payload}\r\n",
            channel.len(),
            payload.len()
        );
        self.0
            .write_all(cmd.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut b = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(10), self.0.read(&mut b))
            .await
            .map_err(|_| "PUBLISH: no answer within 10 s")?
            .map_err(|e| e.to_string())?;
        let text = std::str::from_utf8(&b[..n]).unwrap_or_default();
        text.strip_prefix(':')
            .and_then(|r| r.trim().parse().ok())
            .ok_or_else(|| format!("PUBLISH answered {text:?}"))
    }
}

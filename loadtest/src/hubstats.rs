//! The hub's own figures, read from its `/metrics` over plain HTTP/1.1.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct HubStats {
    pub rss_bytes: f64,
    pub cpu_seconds: f64,
    pub connections: f64,
    pub open_fds: f64,
    pub messages_in: f64,
    pub messages_out: f64,
    pub queue_drops: f64,
    pub presence_changes: f64,
}

/// GET `path`; returns the status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP header end")?;
        let status = head
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .ok_or("bad status line")?;
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body)
        } else {
            body.to_owned()
        };
        Ok::<_, String>((status, body))
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| format!("GET {path}: timed out"))?
}

pub fn dechunk(mut b: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = b.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        b = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

pub async fn scrape(addr: SocketAddr) -> Result<HubStats, String> {
    let (status, text) = http_get(addr, "/metrics").await?;
    if status != 200 {
        return Err(format!("/metrics answered {status}"));
    }
    Ok(HubStats {
        rss_bytes: value(&text, "process_resident_memory_bytes"),
        cpu_seconds: value(&text, "process_cpu_seconds_total"),
        connections: value(&text, "gridhub_connections"),
        open_fds: value(&text, "process_open_fds"),
        messages_in: value(&text, "gridhub_messages_in_total"),
        messages_out: value(&text, "gridhub_messages_out_total"),
        queue_drops: value(&text, "gridhub_queue_drops_total"),
        presence_changes: value(&text, "gridhub_presence_changes_total"),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_exposition_lines_by_exact_name() {
        let text =
            "gridhub_connections_max 10\ngridhub_connections 3\nprocess_cpu_seconds_total 1.5\n";
        assert_eq!(super::value(text, "gridhub_connections"), 3.0);
        assert_eq!(super::value(text, "process_cpu_seconds_total"), 1.5);
        assert!(super::value(text, "missing").is_nan());
        assert_eq!(super::dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), "abcde");
    }
}

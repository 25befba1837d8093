//! A load-test terminal: a real WebSocket client with small buffers, heartbeats, and commands.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{WebSocketStream, client_async_with_config};
use tokio_util::sync::CancellationToken;

use crate::Target;

pub type Ws = WebSocketStream<TcpStream>;

/// Client buffers kept small: ten thousand clients in one process must not need gigabytes.
fn client_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(1 << 20)
}

pub struct Opened {
    pub ws: Ws,
    pub hello: Value,
    /// TCP connect + upgrade + hello received.
    pub took: Duration,
}

/// How long a handshake may take before it counts as failed: a hub that accepts the TCP
/// connection but never upgrades it must not hold the harness's handshake slots forever.
const OPEN_WITHIN: Duration = Duration::from_secs(30);

/// Connects and authenticates, returning once the hub's `hello` has arrived.
pub async fn open(target: &Target, token: &str) -> Result<Opened, String> {
    open_from(target, token, None).await
}

/// As `open`, the connection leaving from `source` when given.
pub async fn open_from(
    target: &Target,
    token: &str,
    source: Option<std::net::IpAddr>,
) -> Result<Opened, String> {
    tokio::time::timeout(OPEN_WITHIN, open_now(target, token, source))
        .await
        .map_err(|_| format!("no hello within {} s", OPEN_WITHIN.as_secs()))?
}

async fn open_now(
    target: &Target,
    token: &str,
    source: Option<std::net::IpAddr>,
) -> Result<Opened, String> {
    let t0 = Instant::now();
    let stream = match source {
        None => TcpStream::connect(target.addr).await,
        Some(ip) => {
            let socket = if ip.is_ipv4() {
                tokio::net::TcpSocket::new_v4()
            } else {
                tokio::net::TcpSocket::new_v6()
            }
            .map_err(|e| format!("socket: {e}"))?;
            socket
                .bind((ip, 0).into())
                .map_err(|e| format!("bind {ip}: {e}"))?;
            socket.connect(target.addr).await
        }
    }
    .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let mut req = format!("ws://{}/ws", target.addr)
        .into_client_request()
        .map_err(|e| e.to_string())?;
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {token}")
            .parse()
            .map_err(|_| "token is not a valid header value")?,
    );
    let (mut ws, _) = client_async_with_config(req, stream, Some(client_config()))
        .await
        .map_err(|e| format!("upgrade: {e}"))?;
    let hello = loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                break serde_json::from_str::<Value>(&t).map_err(|e| format!("hello: {e}"))?;
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(format!("before hello: {e}")),
            None => return Err("closed before hello".into()),
        }
    };
    if hello["type"] != "hello" {
        return Err(format!("expected hello, got {hello}"));
    }
    Ok(Opened {
        ws,
        hello,
        took: t0.elapsed(),
    })
}

/// What the controller may ask a held terminal to do.
#[derive(Debug)]
pub enum Cmd {
    /// Send this exact text frame (already encoded by the controller).
    Send(Utf8Bytes),
}

#[derive(Debug, Default, Clone, Copy)]
pub struct HoldStats {
    pub pings: u64,
    pub replies: u64,
    pub errors: u64,
    /// Close code if the hub closed this terminal before the end of the hold.
    pub closed_by_hub: Option<u16>,
}

const PING: &str = r#"{"v":1,"id":0,"type":"ping"}"#;

/// Holds a terminal: heartbeats at `interval` (first after `phase`), runs commands, counts
/// replies, until `stop`; then closes politely.
pub async fn hold(
    mut ws: Ws,
    interval: Duration,
    phase: Duration,
    mut cmds: mpsc::Receiver<Cmd>,
    stop: CancellationToken,
) -> HoldStats {
    let mut st = HoldStats::default();
    let mut next = tokio::time::Instant::now() + phase;
    let ping = Utf8Bytes::from_static(PING);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(next) => {
                next += interval;
                st.pings += 1;
                if ws.send(Message::Text(ping.clone())).await.is_err() {
                    return st;
                }
            }
            Some(cmd) = cmds.recv() => match cmd {
                Cmd::Send(text) => {
                    if ws.send(Message::Text(text)).await.is_err() {
                        return st;
                    }
                }
            },
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    if t.contains(r#""type":"reply""#) {
                        st.replies += 1;
                    } else if t.contains(r#""type":"error""#) {
                        st.errors += 1;
                    }
                }
                Some(Ok(Message::Close(f))) => {
                    st.closed_by_hub = Some(f.map_or(1005, |f| f.code.into()));
                    return st;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    st.closed_by_hub.get_or_insert(1006);
                    return st;
                }
            },
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), ws.close(None)).await;
    st
}

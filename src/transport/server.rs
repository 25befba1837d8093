//! Accepting sockets, serving HTTP on them, and upgrading `/ws` requests to terminal connections.
//!
//! The accept loop is ours rather than `axum::serve` for two reasons. First, the connection cap:
//! a process here may hold at most 20,000 open files, so past `max_connections` a socket is
//! answered with a clean 503 while every existing terminal carries on, and `accept` failing with
//! EMFILE backs off instead of spinning. Second, after the upgrade hyper hands back the very
//! `TcpStream` it was given (HTTP/1 only, no wrapping), so the connection writes to the socket
//! directly with no per-connection buffers in between.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

use super::conn::SocketGuard;
use crate::api::error::ApiError;
use crate::auth::AuthError;
use crate::clock::now_ms;
use crate::hub::Hub;

/// Serves until the hub's shutdown token is cancelled; then stops accepting (the listener is
/// dropped) and returns. Open connections are drained by the caller.
pub async fn accept_loop(listener: TcpListener, hub: Arc<Hub>, router: Router) {
    let last_warning = AtomicU64::new(0);
    loop {
        let accepted = tokio::select! {
            _ = hub.shutdown.cancelled() => return,
            r = listener.accept() => r,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                hub.metrics.accept_errors.fetch_add(1, Relaxed);
                let now = now_ms();
                if now - last_warning.load(Relaxed) > 10_000 {
                    last_warning.store(now, Relaxed);
                    tracing::warn!(error = %e, open = hub.metrics.sockets_open.load(Relaxed), "accept failed (open-file limit?); backing off");
                }
                // The pending connection stays in the backlog; retry once something closes.
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        if hub.metrics.sockets_open.load(Relaxed) as usize >= hub.max_connections {
            refuse(&hub, stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let guard = SocketGuard::new(&hub.metrics);
        tokio::spawn(serve_http(Arc::clone(&hub), stream, router.clone(), guard));
    }
}

/// Answers 503 at capacity, then closes after the peer has read it.
fn refuse(hub: &Arc<Hub>, stream: TcpStream) {
    hub.metrics.refused_capacity.fetch_add(1, Relaxed);
    if hub.refusing.fetch_add(1, Relaxed) >= hub.max_refusing {
        hub.refusing.fetch_sub(1, Relaxed);
        return;
    }
    let hub = Arc::clone(hub);
    const BODY: &str = r#"{"error":{"code":"at_capacity","message":"this hub node is at its connection limit; retry later or use another node"}}"#;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 5\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    tokio::spawn(async move {
        // A fresh socket's send buffer is empty, so the whole response fits at once.
        let _ = stream.try_write(response.as_bytes());
        let mut stream = stream;
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
        // Read until the peer closes so the kernel sends FIN, not RST, and the 503 is seen.
        let mut sink = [0u8; 1024];
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while let Ok(n) = stream.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
        hub.refusing.fetch_sub(1, Relaxed);
    });
}

async fn serve_http(hub: Arc<Hub>, stream: TcpStream, router: Router, guard: SocketGuard) {
    let timeout = Duration::from_millis(hub.config.transport.handshake_timeout_ms);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(router))
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = hub.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
        }
    }
    drop(guard);
}

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The credential from `Authorization: Bearer …`, else from the `token` query parameter
/// (browsers cannot set headers on a WebSocket).
pub fn credential_token<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<&'a str> {
    let from_header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    from_header.or_else(|| {
        query?
            .split('&')
            .find_map(|kv| kv.strip_prefix("token="))
            .filter(|t| !t.is_empty())
    })
}

/// `GET /ws`: checks the handshake and the credential, answers 101, and hands the socket to
/// the hub once hyper has released it.
pub async fn ws_handler(State(hub): State<Arc<Hub>>, mut req: Request) -> Response {
    let h = req.headers();
    if req.method() != Method::GET {
        return ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "use GET to open a WebSocket",
        )
        .into_response();
    }
    if !has_token(h, header::CONNECTION, "upgrade") || !has_token(h, header::UPGRADE, "websocket") {
        return ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
            "this endpoint speaks WebSocket: send Connection: Upgrade and Upgrade: websocket",
        )
        .into_response();
    }
    if h.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        let mut r = ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            "unsupported_websocket_version",
            "only WebSocket version 13 is supported",
        )
        .into_response();
        r.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return r;
    }
    let Some(key) = h
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| k.as_bytes().to_vec())
    else {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_handshake",
            "missing Sec-WebSocket-Key",
        )
        .into_response();
    };
    let verified = match credential_token(h, req.uri().query()) {
        None => Err(AuthError::Missing),
        Some(t) => hub.authority.verify(&hub.org, t, now_ms() / 1000),
    };
    let cred = match verified {
        Ok(c) => c,
        Err(e) => {
            hub.metrics.refused_auth.fetch_add(1, Relaxed);
            return ApiError::from(e).into_response();
        }
    };
    if !hub.accepting.load(Relaxed) {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the hub is shutting down; reconnect to another node or retry shortly",
        )
        .into_response();
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    let hub2 = Arc::clone(&hub);
    let fut = async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "WebSocket upgrade did not complete");
                return;
            }
        };
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                let guard = SocketGuard::new(&hub2.metrics);
                hub2.run_connection(parts.io.into_inner(), parts.read_buf, cred)
                    .await;
                drop(guard);
            }
            Err(_) => tracing::error!("upgraded connection is not a plain TCP stream"),
        }
    };
    tokio::spawn(fut);
    let accept = tungstenite::handshake::derive_accept_key(&key);
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(Body::empty())
        // The status and these three headers are always valid.
        .expect("101 response")
}

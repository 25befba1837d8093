//! Accepting sockets, serving HTTP on them, and upgrading `/ws` requests to terminal connections.
//!
//! The accept loop is ours rather than `axum::serve` for three reasons. First, capacity: a
//! process here may hold at most 20,000 open files. The cap is for terminals — past it an upgrade
//! is answered 503 `at_capacity` with `Retry-After` — while health probes, metrics and REST keep
//! their own room (`transport.http_room`); only when that is gone too does a socket get a bare
//! 503 before its request is read, and `accept` failing with EMFILE backs off instead of
//! spinning. Second, shutdown: the listener stays open through the drain, so a terminal that
//! tries to connect then is told 503 `shutting_down` instead of finding nobody there. Third,
//! after the upgrade hyper hands back the very `TcpStream` it was given (HTTP/1 only, no
//! wrapping), so the connection writes to the socket directly with no buffers in between.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

use super::Transport;
use super::conn::SocketGuard;
use crate::auth::AuthError;
use crate::http::{ApiError, next_request_id};

/// Seconds a refused terminal is told to wait (`Retry-After`).
const RETRY_AFTER: &str = "5";

/// Serves until the drain is over (`transport.closed`); then stops accepting (the listener is
/// dropped) and returns.
pub async fn accept_loop(listener: TcpListener, transport: Arc<Transport>, router: Router) {
    let last_warning = AtomicU64::new(0);
    loop {
        let accepted = tokio::select! {
            _ = transport.closed.cancelled() => return,
            r = listener.accept() => r,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                transport.metrics.accept_errors.fetch_add(1, Relaxed);
                let now = transport.clock.now_ms();
                if now - last_warning.load(Relaxed) > 10_000 {
                    last_warning.store(now, Relaxed);
                    tracing::warn!(error = %e, open = transport.metrics.sockets_open.load(Relaxed), "accept failed (open-file limit?); backing off");
                }
                // The pending connection stays in the backlog; retry once something closes.
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        if transport.metrics.sockets_open.load(Relaxed) as usize >= transport.caps.sockets {
            refuse(&transport, stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let guard = SocketGuard::new(&transport.metrics);
        tokio::spawn(serve_http(
            Arc::clone(&transport),
            stream,
            router.clone(),
            guard,
        ));
    }
}

/// Answers 503 when even HTTP's room is taken, before reading the request, then closes after the
/// peer has read it.
fn refuse(transport: &Arc<Transport>, stream: TcpStream) {
    transport.metrics.refused_capacity.fetch_add(1, Relaxed);
    if transport.refusing.fetch_add(1, Relaxed) >= transport.caps.refusing {
        transport.refusing.fetch_sub(1, Relaxed);
        return;
    }
    let hub = Arc::clone(transport);
    let body = format!(
        r#"{{"error":{{"code":"at_capacity","message":"this hub node is at its socket limit; retry later or use another node","request_id":"{}"}}}}"#,
        next_request_id()
    );
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: {RETRY_AFTER}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
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

async fn serve_http(
    transport: Arc<Transport>,
    stream: TcpStream,
    router: Router,
    guard: SocketGuard,
) {
    let timeout = Duration::from_millis(transport.config.handshake_timeout_ms);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(router))
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        // Served through the drain (a new terminal is told `shutting_down`), closed after it.
        _ = transport.closed.cancelled() => {
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

/// The credential from `Authorization: Bearer …`. A credential in the URL (`?token=`) is refused:
/// URLs end up in proxy and access logs, and a credential lives for days.
pub fn credential_token<'a>(
    headers: &'a HeaderMap,
    query: Option<&str>,
) -> Result<&'a str, AuthError> {
    if query_param(query, "token").is_some() {
        return Err(AuthError::InUrl);
    }
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .ok_or(AuthError::Missing)
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

/// Whether a browser page at `origin` may open a WebSocket here: one served by this hub (same
/// host and port as the request), or one the operators listed.
fn origin_allowed(t: &Transport, origin: &str, host: Option<&str>) -> bool {
    let same_host = origin
        .split_once("://")
        .map(|(_, rest)| rest)
        .is_some_and(|h| Some(h) == host);
    same_host || t.config.allowed_origins.iter().any(|o| o == origin)
}

/// A well-formed `Sec-WebSocket-Key` is 16 random bytes in base64 (RFC 6455 §4.1).
fn key_is_valid(key: &[u8]) -> bool {
    base64::engine::general_purpose::STANDARD
        .decode(key)
        .is_ok_and(|k| k.len() == 16)
}

/// `GET /ws`: checks the handshake, the page's origin (browsers) and the credential or ticket,
/// takes a terminal slot, answers 101, and hands the socket over once hyper has released it.
pub async fn ws_handler(State(t): State<Arc<Transport>>, mut req: Request) -> Response {
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
    let key = match h.get(header::SEC_WEBSOCKET_KEY).map(|k| k.as_bytes()) {
        Some(k) if key_is_valid(k) => k.to_vec(),
        Some(_) => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_handshake",
                "Sec-WebSocket-Key must be 16 random bytes in base64 (24 characters)",
            )
            .into_response();
        }
        None => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_handshake",
                "missing Sec-WebSocket-Key",
            )
            .into_response();
        }
    };
    if let Some(origin) = h.get(header::ORIGIN) {
        let host = h.get(header::HOST).and_then(|v| v.to_str().ok());
        let allowed = origin.to_str().is_ok_and(|o| origin_allowed(&t, o, host));
        if !allowed {
            t.metrics.refused_auth.fetch_add(1, Relaxed);
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "origin_not_allowed",
                format!(
                    "pages from {} may not open a WebSocket here; an operator can add the origin to transport.allowed_origins",
                    String::from_utf8_lossy(origin.as_bytes())
                ),
            )
            .into_response();
        }
    }
    let now_s = t.clock.now_ms() / 1000;
    // A ticket is checked now and spent only once the terminal is let in: one refused for
    // capacity or a drain may try again with the same ticket while it lasts.
    let mut ticket_id = None;
    let verified = match query_param(req.uri().query(), "ticket") {
        Some(ticket) => t
            .authority
            .verify_ticket(&t.org, ticket, now_s)
            .map(|(cred, id, exp)| {
                ticket_id = Some((id, exp));
                cred
            }),
        None => credential_token(h, req.uri().query())
            .and_then(|tok| t.authority.verify(&t.org, tok, now_s)),
    };
    let cred = match verified {
        Ok(c) => c,
        Err(e) => {
            t.metrics.refused_auth.fetch_add(1, Relaxed);
            return ApiError::from(e).into_response();
        }
    };
    if !t.accepting.load(Relaxed) {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the hub is shutting down; reconnect to another node or retry shortly",
        )
        .into_response();
    }
    if t.terminals.fetch_add(1, Relaxed) >= t.caps.terminals {
        t.terminals.fetch_sub(1, Relaxed);
        t.metrics.refused_capacity.fetch_add(1, Relaxed);
        let mut r = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "at_capacity",
            "this hub node is at its connection limit; retry later or use another node",
        )
        .into_response();
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER));
        return r;
    }
    if let Some((id, exp)) = ticket_id
        && !(t.use_ticket(id.clone(), exp, now_s) && t.lifecycle.spend_ticket(&id, exp).await)
    {
        t.terminals.fetch_sub(1, Relaxed);
        t.metrics.refused_auth.fetch_add(1, Relaxed);
        return ApiError::from(AuthError::TicketUsed).into_response();
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    let t2 = Arc::clone(&t);
    let fut = async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "WebSocket upgrade did not complete");
                t2.terminals.fetch_sub(1, Relaxed);
                return;
            }
        };
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                let guard = SocketGuard::new(&t2.metrics);
                t2.run_connection(parts.io.into_inner(), parts.read_buf, cred)
                    .await;
                drop(guard);
            }
            Err(_) => {
                t2.terminals.fetch_sub(1, Relaxed);
                tracing::error!("upgraded connection is not a plain TCP stream");
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_must_be_sixteen_bytes_of_base64() {
        assert!(key_is_valid(b"dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!key_is_valid(b"dGhlIHNhbXBsZSBub25jZQ"), "unpadded");
        assert!(!key_is_valid(b"c2hvcnQ="), "5 bytes");
        assert!(!key_is_valid(b"not base64 at all!!!!!!="));
        assert!(!key_is_valid(b""));
    }

    #[test]
    fn query_parameters_are_matched_whole() {
        assert_eq!(query_param(Some("a=1&ticket=xyz"), "ticket"), Some("xyz"));
        assert_eq!(query_param(Some("myticket=xyz"), "ticket"), None);
        assert_eq!(query_param(Some("token"), "token"), Some(""));
        assert_eq!(query_param(None, "token"), None);
    }
}

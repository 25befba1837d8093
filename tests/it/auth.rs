//! Credentials are checked before the upgrade: every failure is an HTTP 401 with its reason.

use gridhub::auth::{Authority, Role};

use crate::support::*;

async fn refused(hub: &TestHub, token: Option<&str>) -> (u16, String, String) {
    let err = hub.open(token).await.expect_err("refused");
    let (status, body) = refusal(err);
    (
        status,
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

#[tokio::test]
async fn missing_forged_expired_unknown_and_misrouted_credentials_get_401() {
    let hub = spawn_app(|_| {}).await;
    let (status, code, msg) = refused(&hub, None).await;
    assert_eq!(
        (status, code.as_str()),
        (401, "missing_credential"),
        "{msg}"
    );

    let other = Authority::new(b"some-other-key-some-other-key-!!").unwrap();
    let forged = other
        .mint(&hub.org, DONGFENG, Role::Operator, 60, now_s())
        .unwrap();
    assert_eq!(refused(&hub, Some(&forged)).await.1, "bad_signature");

    let expired = hub
        .auth
        .mint_unchecked(DONGFENG, Role::Operator, now_s() - 100, now_s() - 10)
        .unwrap();
    let (status, code, msg) = refused(&hub, Some(&expired)).await;
    assert_eq!((status, code.as_str()), (401, "expired_credential"));
    assert!(msg.contains("expired at"), "{msg}");

    let ghost = hub
        .auth
        .mint_unchecked("999999", Role::Operator, now_s(), now_s() + 60)
        .unwrap();
    assert_eq!(refused(&hub, Some(&ghost)).await.1, "unknown_endpoint");

    let w = &workers_under(&hub.org, DONGFENG, 1)[0];
    let wrong = hub
        .auth
        .mint_unchecked(w, Role::Operator, now_s(), now_s() + 60)
        .unwrap();
    assert_eq!(refused(&hub, Some(&wrong)).await.1, "role_not_allowed");

    assert_eq!(
        refused(&hub, Some("garbage")).await.1,
        "malformed_credential"
    );
    let m = &hub.hub().metrics;
    assert_eq!(m.refused_auth.load(std::sync::atomic::Ordering::Relaxed), 6);
    assert_eq!(hub.hub().transport.registry.len(), 0);
}

/// Sends a raw request and reads the response's head and (by its `content-length`) body; a
/// 101 has no body and the socket is left to the hub.
pub async fn raw_exchange(addr: std::net::SocketAddr, req: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    tokio::time::timeout(PATIENCE, async {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                if buf.len() >= end + 4 + len {
                    return;
                }
            }
            let n = s.read(&mut chunk).await.unwrap();
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("an answer");
    String::from_utf8_lossy(&buf).into_owned()
}

/// Upgrades with a raw request, returning the status code and the whole answer.
pub async fn raw_upgrade(hub: &TestHub, path_and_query: &str, extra: &str) -> (u16, String) {
    let req = format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n",
        hub.addr
    );
    let text = raw_exchange(hub.addr, &req).await;
    let code = text[9..12].parse().unwrap();
    (code, text)
}

#[tokio::test]
async fn a_credential_in_the_url_is_refused_and_browsers_connect_with_a_one_time_ticket() {
    let hub = spawn_app(|_| {}).await;
    let token = hub.token(HUANAN);
    let (code, text) = raw_upgrade(&hub, &format!("/ws?token={token}"), "").await;
    assert_eq!(code, 401);
    assert!(text.contains("credential_in_url"), "{text}");

    // A ticket from REST opens one connection.
    let (status, body) = try_post(hub.addr, "/api/v1/tickets", &token, "", None)
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    let ticket = body["ticket"].as_str().unwrap().to_owned();
    assert!(body["expires_at"].as_u64().unwrap() <= now_s() + 30);
    assert_eq!(body["url"], format!("/ws?ticket={ticket}"));
    let url = format!("{}?ticket={ticket}", hub.ws_url());
    let (ws, _) = tokio_tungstenite::connect_async(url.clone()).await.unwrap();
    let mut t = TestTerminal::new(ws);
    let hello = t.recv().await;
    assert_eq!(hello["data"]["endpoint"]["id"], HUANAN);
    assert_eq!(hello["data"]["role"], "operator");
    // The connection lasts as long as the credential, not the ticket.
    assert!(hello["data"]["expires_at"].as_u64().unwrap() > now_s() + 3000);
    let (code, text) = raw_upgrade(&hub, &format!("/ws?ticket={ticket}"), "").await;
    assert_eq!(code, 401);
    assert!(text.contains("ticket_used"), "{text}");
    // A ticket is not a credential, and a credential is not a ticket.
    let r = http_get(&hub, "/api/v1/org", Some(&ticket)).await;
    assert_eq!(error_of(&r), (401, Some("ticket_not_credential")));
    let (code, text) = raw_upgrade(&hub, &format!("/ws?ticket={token}"), "").await;
    assert_eq!(code, 401);
    assert!(text.contains("not_a_ticket"), "{text}");
    // Without a credential, no ticket.
    let (status, body) = try_post(hub.addr, "/api/v1/tickets", "", "", None)
        .await
        .unwrap();
    assert_eq!(status, 401, "{body}");
}

#[tokio::test]
async fn browsers_connect_only_from_allowed_origins() {
    let hub = spawn_app(|c| {
        c.transport.allowed_origins = vec!["https://wall.grid.example".into()];
    })
    .await;
    let auth = format!("Authorization: Bearer {}\r\n", hub.token(HUANAN));
    let (code, text) = raw_upgrade(
        &hub,
        "/ws",
        &format!("{auth}Origin: https://evil.example\r\n"),
    )
    .await;
    assert_eq!(code, 403);
    assert!(
        text.contains("origin_not_allowed") && text.contains("evil.example"),
        "{text}"
    );
    for ok in [
        "https://wall.grid.example".to_owned(),
        format!("http://{}", hub.addr),
    ] {
        let (code, text) = raw_upgrade(&hub, "/ws", &format!("{auth}Origin: {ok}\r\n")).await;
        assert_eq!(code, 101, "{ok}: {text}");
    }
    let (code, _) = raw_upgrade(&hub, "/ws", &auth).await;
    assert_eq!(code, 101, "devices send no Origin");
}

#[tokio::test]
async fn a_malformed_websocket_key_is_refused() {
    let hub = spawn_app(|_| {}).await;
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\nAuthorization: Bearer {}\r\n\r\n",
        hub.addr,
        hub.token(HUANAN)
    );
    let text = raw_exchange(hub.addr, &req).await;
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(
        text.contains("bad_handshake") && text.contains("Sec-WebSocket-Key"),
        "{text}"
    );
}

#[tokio::test]
async fn a_plain_http_request_to_ws_is_told_to_upgrade() {
    let hub = spawn_app(|_| {}).await;
    let (status, body) = http_get(&hub, "/ws", None).await;
    assert_eq!(status, 426);
    assert_eq!(body["error"]["code"], "upgrade_required");
}

/// A minimal HTTP/1.1 GET over a real socket.
/// A REST answer's status and typed error code, for asserting both at once.
pub fn error_of(r: &(u16, serde_json::Value)) -> (u16, Option<&str>) {
    (r.0, r.1["error"]["code"].as_str())
}

pub async fn http_get(hub: &TestHub, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    let (status, _, body) = http_raw(hub, path, token).await;
    (
        status,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    )
}

pub async fn http_raw(hub: &TestHub, path: &str, token: Option<&str>) -> (u16, String, Vec<u8>) {
    http_raw_at(hub.addr, path, token).await
}

pub async fn http_raw_at(
    addr: std::net::SocketAddr,
    path: &str,
    token: Option<&str>,
) -> (u16, String, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: x\r\n{auth}connection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(PATIENCE, s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header end");
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let status = head[9..12].parse().unwrap();
    let mut body = buf[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, head, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 2 + n + 2..];
    }
}

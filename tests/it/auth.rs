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
    assert_eq!(hub.hub().local.len(), 0);
}

#[tokio::test]
async fn the_token_may_come_in_the_query_string() {
    let hub = spawn_app(|_| {}).await;
    let url = format!("{}?token={}", hub.ws_url(), hub.token(HUANAN));
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut t = TestTerminal::new(ws);
    assert_eq!(t.recv().await["data"]["endpoint"]["id"], HUANAN);
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(hub.addr).await.unwrap();
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

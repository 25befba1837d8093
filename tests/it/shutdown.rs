//! Graceful shutdown and the open-file limit, including against the real binary.

use std::time::Duration;

use crate::auth::http_get;
use crate::support::*;

#[tokio::test]
async fn shutdown_tells_every_terminal_and_drains() {
    let mut hub = spawn_app(|_| {}).await;
    let ws = workers_under(&hub.org, HUANAN, 20);
    let mut terms = Vec::new();
    for w in &ws {
        terms.push(hub.connect(w).await);
    }
    let cut = hub.shutdown().await;
    assert_eq!(cut, 0, "every connection drained before the deadline");
    for t in &mut terms {
        let (code, reason) = t.closed().await;
        assert_eq!(code, 1001, "{reason}");
        assert!(reason.contains("reconnect"));
    }
}

#[tokio::test]
async fn sigterm_closes_terminals_with_going_away_and_exits_cleanly() {
    let (mut child, hub) = spawn_binary(None, None, &[]).await;
    let mut a = hub.connect(DONGFENG).await;
    let mut b = hub.connect(&workers_under(&hub.org, HUANAN, 1)[0]).await;
    a.ping_ok().await;
    let pid = child.id().unwrap() as i32;
    // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    assert_eq!(a.closed().await.0, 1001);
    assert_eq!(b.closed().await.0, 1001);
    let status = tokio::time::timeout(PATIENCE, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn a_terminal_that_comes_during_the_drain_is_told_the_hub_is_shutting_down() {
    let mut hub = spawn_app(|c| c.transport.shutdown_drain_ms = 8_000).await;
    // A console that asked for the whole city's aggregates and reads nothing: its close frame
    // cannot go out, so the drain waits on it a few seconds.
    let stubborn = slow_console(&hub, 10).await;
    let addr = hub.addr;
    let running = hub.running.take().unwrap();
    let shutdown = tokio::spawn(running.shutdown());
    // Ready no more...
    let draining = async {
        loop {
            let (status, _) = http_get(&hub, "/readyz", None).await;
            if status == 503 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(PATIENCE, draining).await.unwrap();
    // ...but still answering: a terminal that comes now is told why it cannot stay.
    let e = hub
        .open(Some(&hub.token(HUANAN)))
        .await
        .expect_err("refused");
    let (status, body) = refusal(e);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("shutting_down")),
        "{body}"
    );
    drop(stubborn);
    tokio::time::timeout(PATIENCE, shutdown)
        .await
        .unwrap()
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener closed after the drain"
    );
}

#[tokio::test]
async fn at_the_open_file_limit_new_connections_are_refused_and_existing_ones_carry_on() {
    // 128 open files: the hub subtracts what it has open at start-up and keeps a quarter of the
    // limit in reserve.
    let (_child, hub) = spawn_binary(Some("ulimit -n 128"), None, &[]).await;
    let text = String::from_utf8(crate::auth::http_raw(&hub, "/metrics", None).await.2).unwrap();
    assert!(
        text.contains("gridhub_fd_limit 128"),
        "limit exposed in /metrics"
    );
    let cap: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("gridhub_connections_max "))
        .unwrap()
        .parse()
        .unwrap();
    assert!((40..=96).contains(&cap), "cap {cap}");

    let ws = workers_under(&hub.org, HUANAN, 120);
    let mut open = Vec::new();
    let mut refusal_seen = None;
    for w in &ws {
        match hub.open(Some(&hub.token(w))).await {
            Ok(s) => {
                let mut t = TestTerminal::new(s);
                assert_eq!(t.recv().await["type"], "hello");
                open.push(t);
            }
            Err(e) => {
                refusal_seen = Some(refusal(e));
                break;
            }
        }
    }
    let (status, body) = refusal_seen.expect("refused at the cap");
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "at_capacity");
    // Every terminal refused at the cap is told so, with when to retry — none gets a bare EOF.
    for w in &ws[open.len() + 1..open.len() + 16] {
        let e = hub.open(Some(&hub.token(w))).await.expect_err("still full");
        let (status, retry, body) = refusal_with_headers(e);
        assert_eq!((status, retry.as_deref()), (503, Some("5")), "{body}");
        assert_eq!(body["error"]["code"], "at_capacity");
        assert!(body["error"]["request_id"].is_string(), "{body}");
    }
    // The cap is for terminals: probes, metrics and REST (the hotline's intake) keep room.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let (status, _, _) = crate::auth::http_raw(&hub, path, None).await;
        assert_eq!(status, 200, "{path}");
    }
    let (status, body) = try_post(
        hub.addr,
        "/api/v1/orders",
        &hub.token(CITY),
        &new_order(&ws[0], "at capacity").to_string(),
        Some("at-capacity-1"),
    )
    .await
    .unwrap();
    assert_eq!(status, 201, "{body}");
    // Sockets still finishing an upgrade count twice for a moment, so a few fewer may fit.
    assert!(
        (cap - 8..=cap).contains(&open.len()),
        "{} accepted, cap {cap}",
        open.len()
    );
    // Everyone already connected still works.
    for t in &mut open {
        t.ping_ok().await;
    }
    // Room frees up when terminals leave.
    for mut t in open.drain(..5) {
        t.ws.close(None).await.unwrap();
        let _ = t.closed().await;
    }
    let mut again = None;
    for _ in 0..50 {
        if let Ok(s) = hub.open(Some(&hub.token(&ws[119]))).await {
            again = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(again.is_some(), "a slot opened again");
    let (status, _) = http_get(&hub, "/healthz", None).await;
    assert_eq!(status, 200);
}

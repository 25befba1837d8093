//! `gridhub demo`: a simulated city around a real hub, whose orders go all the way round.

use std::time::Duration;

use gridhub::auth::Authority;

use crate::auth::http_raw_at;
use crate::support::*;

#[tokio::test]
async fn the_demo_city_connects_and_carries_orders_to_the_archive() {
    let config = test_config();
    let data = config.server.data_dir.clone();
    let mut opts = gridhub::demo::DemoOptions::new(0.01, 600.0, 7);
    opts.stations = false;
    opts.pace = gridhub::demo::script::Pace::quick();
    let stop = tokio_util::sync::CancellationToken::new();
    let running = gridhub::demo::start(config, &opts, stop.clone())
        .await
        .expect("demo starts");
    let hub = std::sync::Arc::clone(&running.hub);
    let token = Authority::new(SECRET.as_bytes())
        .unwrap()
        .mint(
            &hub.org,
            CITY,
            gridhub::auth::Role::Operator,
            3600,
            gridhub::clock::now_ms() / 1000,
        )
        .unwrap();
    // Generous: the quick pace finishes an order in a few seconds.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let mut archived = 0;
    while tokio::time::Instant::now() < deadline {
        let (_, _, body) = http_raw_at(running.addr, "/api/v1/orders/stats", Some(&token)).await;
        let stats: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        archived = stats["by_state"]["archived"].as_u64().unwrap_or(0);
        if archived >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(archived >= 3, "orders archived: {archived}");
    // About 1 % of 8,529 workers are simulated (they join over 20 s), through the hub's own /ws.
    let online = hub.transport.registry.len();
    assert!((1..200).contains(&online), "{online} terminals connected");
    // The demo keeps its city apart from the hub's own data.
    assert!(data.join("demo").read_dir().unwrap().next().is_some());
    stop.cancel();
    running.shutdown().await;
    let _ = std::fs::remove_dir_all(&data);
}

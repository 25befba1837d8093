//! The fleet scenarios end to end against an in-process hub, on small runs: what they count
//! (nothing lost, nothing repeated, every figure present) rather than how fast this machine is.
//! Worker processes run the `loadtest` binary itself, as a real run does.

use std::sync::Arc;
use std::time::Duration;

use loadtest::run::RunCtx;
use loadtest::testhub::TestHub;

fn ctx(hub: &TestHub, workers: usize) -> RunCtx {
    RunCtx {
        target: hub.target.clone(),
        nodes: Vec::new(),
        failover: false,
        secret: String::from_utf8(hub.target.secret.clone()).unwrap(),
        org_path: TestHub::org_path(),
        org: Arc::clone(&hub.org),
        workers,
        ramp: 0.0,
        concurrency: 64,
        heartbeat_ms: Some(500),
        seed: 7,
        interval: Duration::from_millis(250),
        start_us: loadtest::mono_us(),
        max_seconds: 120,
        measure_from_round: 0,
        pids: Default::default(),
        worker_exe: env!("CARGO_BIN_EXE_loadtest").into(),
    }
}

/// The report a scenario writes renders, with a plot per chart, and survives its JSON.
fn check_report(r: &loadtest::report::Report) {
    let html = loadtest::report::render_html(r);
    assert_eq!(html.matches("<svg").count(), r.charts.len(), "{}", r.title);
    assert!(!r.verdicts.is_empty());
    let back: loadtest::report::Report =
        serde_json::from_str(&serde_json::to_string(r).unwrap()).unwrap();
    assert_eq!(back.verdicts, r.verdicts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_reaches_every_terminal_through_worker_processes_and_redis() {
    let hub = TestHub::start("fanout", |_| {}).await;
    let c = ctx(&hub, 2);
    let redis = std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok();
    assert!(redis, "redis-server is needed (scripts/test installs it)");
    let o = loadtest::fanout::FanoutOptions {
        terminals: 300,
        rounds: 3,
        warmup: 1,
        gap: Duration::from_millis(100),
        bytes: 300,
        ack: true,
        baseline_redis: true,
        server_cpu: None,
    };
    let (s, r) = loadtest::fanout::run(&c, &o).await.unwrap();
    assert_eq!(s.hub.connected, 300, "{:?}", s.hub.first_errors);
    assert_eq!((s.hub.missing, s.hub.duplicates), (0, 0));
    assert_eq!(s.hub.last_ms.len(), 3);
    assert_eq!(s.hub.delivery.count, 900);
    let redis = s.redis.as_ref().unwrap();
    assert_eq!((redis.connected, redis.missing), (300, 0));
    assert_eq!(redis.delivery.count, 900);
    assert!(s.ratio_last.unwrap() > 0.0);
    assert_eq!(r.verdicts[0].met, Some(true), "{:?}", r.verdicts);
    check_report(&r);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_storm_loses_and_repeats_nothing() {
    let hub = TestHub::start("storm", |_| {}).await;
    let c = ctx(&hub, 0);
    let o = loadtest::storm::StormOptions {
        terminals: 300,
        storms: 2,
        notices: 2,
        gap: Duration::from_millis(200),
    };
    let (s, r) = loadtest::storm::run(&c, &o).await.unwrap();
    assert_eq!(s.connected, 300, "{:?}", s.first_errors);
    assert_eq!(s.notices_sent, 5);
    assert_eq!((s.terminals_missing_notices, s.duplicates), (0, 0));
    assert_eq!(s.storms.len(), 2);
    assert_eq!(s.reconnect.count, 600);
    assert!(s.storms.iter().all(|r| r.whole_s.is_finite()));
    check_report(&r);
    // Again on the same hub: the first run's notices, replayed to terminals resuming from 0,
    // are not this run's and count neither as received nor as repeated.
    let (s, _) = loadtest::storm::run(&ctx(&hub, 0), &o).await.unwrap();
    assert_eq!((s.terminals_missing_notices, s.duplicates), (0, 0));
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_changes_reach_the_city_and_the_county_walls() {
    let hub = TestHub::start("presence", |_| {}).await;
    let c = ctx(&hub, 2);
    let o = loadtest::presence::PresenceOptions {
        terminals: 400,
        rate: 200.0,
        warmup: Duration::from_secs(1),
        duration: Duration::from_secs(2),
    };
    let (s, r) = loadtest::presence::run(&c, &o).await.unwrap();
    assert_eq!(s.connected, 400, "{:?}", s.first_errors);
    assert!(s.changes_sent > 300, "{}", s.changes_sent);
    // Each change shown exactly once: none lost, none shown twice.
    assert_eq!((s.city_received, s.city_repeated), (s.changes_sent, 0));
    // The first 400 terminals in org order are all in the first county: its wall sees them.
    assert!(s.counties.count > 0);
    check_report(&r);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_soak_runs_the_whole_mix() {
    let hub = TestHub::start("soak", |_| {}).await;
    let c = ctx(&hub, 0);
    let o = loadtest::soak::SoakOptions {
        terminals: 300,
        // An order every 0.2 s, a notice every 1.8 s, 27 status changes a second.
        factor: 500.0,
        duration: Duration::from_secs(6),
        warmup: Duration::from_secs(1),
        sample_every: Duration::from_millis(500),
    };
    let (s, r) = loadtest::soak::run(&c, &o).await.unwrap();
    assert_eq!(s.connected, 300, "{:?}", s.first_errors);
    assert!(s.orders_created >= 10, "{}", s.orders_created);
    assert!(s.notices_sent >= 2, "{}", s.notices_sent);
    assert_eq!((s.terminals_missing_notices, s.duplicates), (0, 0));
    assert!(s.presence.count > 0 && s.samples.len() >= 5);
    assert!(s.rss_early_mib > 0.0 && s.rss_late_mib > 0.0);
    check_report(&r);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_steps_up_and_reports_every_step() {
    let hub = TestHub::start("scale", |_| {}).await;
    let c = ctx(&hub, 1);
    let o = loadtest::scale::ScaleOptions {
        steps: vec![100, 250],
        hold: Duration::from_secs(1),
        presence_rate: 100.0,
        presence_for: Duration::from_secs(1),
        settle: Duration::from_millis(200),
        keep_going: true,
    };
    let (s, r) = loadtest::scale::run(&c, &o).await.unwrap();
    // Going on past a broken target (timings on a busy test machine), every step is measured.
    assert_eq!(s.steps.len(), 2);
    for st in &s.steps {
        assert_eq!(st.connected, st.terminals as u64);
        assert!(st.hub_rss_mib > 0.0 && st.notice_last_ms.is_finite());
        assert!(st.presence_changes > 0);
    }
    check_report(&r);
    let too_big = loadtest::scale::ScaleOptions {
        steps: vec![20_000],
        ..o
    };
    let e = loadtest::scale::run(&c, &too_big).await.unwrap_err();
    assert!(e.contains("--scale 2"), "{e}");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_brings_a_lost_nodes_terminals_back_on_the_other_with_every_notice() {
    let (a, b) = TestHub::pair("failover").await;
    let mut c = ctx(&a, 2);
    c.nodes = vec![a.target.addr, b.target.addr];
    c.failover = true;
    let killed = b.target.addr;
    // The in-process node goes away (its terminals lose their connections) when the run says.
    let o = loadtest::failover::FailoverOptions {
        terminals: 300,
        kill_node: killed,
        kill: Box::new(move || {
            Box::pin(async move {
                b.stop().await;
                Ok(())
            })
        }),
        notices: 2,
        hold: Duration::ZERO,
    };
    let (mut s, rep) = loadtest::failover::run(&c, o).await.unwrap();
    check_report(&rep);
    // What the assertions print, without the samples.
    s.samples.clear();
    assert_eq!((s.connected, s.on_killed_node), (300, 150), "{s:?}");
    assert_eq!(s.lost, 150, "every terminal of the node lost it: {s:?}");
    assert_eq!(s.notices_sent, 3);
    assert_eq!(
        (s.terminals_missing_notices, s.duplicates, s.errors),
        (0, 0, 0),
        "{:?}",
        s.first_errors
    );
    assert!(
        s.all_resumed_s.is_finite() && s.console_whole_s.is_finite(),
        "{s:?}"
    );
    check_report(&rep);
    a.stop().await;
}

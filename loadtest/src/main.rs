//! `loadtest` — scenarios that measure gridhub against its targets. See docs/benchmarks.md.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use loadtest::Target;
use loadtest::connect::{ConnectOptions, ConnectSummary};

#[derive(Parser)]
#[command(
    name = "loadtest",
    about = "Load-test scenarios for gridhub (loopback targets only unless told otherwise)"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Args, Clone)]
struct Common {
    /// The hub's address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    hub: SocketAddr,
    /// The org tree the hub serves.
    #[arg(long, default_value = "config/org/jiamusi.csv")]
    org: PathBuf,
    /// The hub's signing key (as in `auth.secret`).
    #[arg(long, env = "GRIDHUB_AUTH__SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// The hub's key file, when no secret is given.
    #[arg(long, default_value = "data/secret.key")]
    secret_file: PathBuf,
    /// Allow a target outside 127.0.0.0/8.
    #[arg(long)]
    allow_remote: bool,
    /// Stop the whole scenario after this many seconds, whatever happens (default: 900; for
    /// the soak, its duration and ten minutes more).
    #[arg(long)]
    max_seconds: Option<u64>,
    /// Write the JSON summary here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Run even when the machine is already busy (its figures then mix with whatever else runs).
    #[arg(long)]
    allow_busy: bool,
    /// Write `<scenario>.json` and `<scenario>.html` (the report with plots) here.
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Seed for whatever a scenario chooses at random.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// How the terminals of a fleet scenario are opened and held.
#[derive(Args, Clone)]
struct FleetArgs {
    /// Terminals (default: every terminal of the tree below the city).
    #[arg(long)]
    terminals: Option<usize>,
    /// Worker processes holding the terminals (0: all in this process). Default: one process
    /// up to 15,000 terminals on one node; past that, or over several --nodes, as many workers
    /// as keep each under 15,000 terminals (a process may hold 20,000 open files here), and at
    /// least one per node.
    #[arg(long)]
    workers: Option<usize>,
    /// New connections per second over all workers (0: as fast as --concurrency allows).
    #[arg(long, default_value_t = 0.0)]
    ramp: f64,
    /// Handshakes in flight at once, over all workers.
    #[arg(long, default_value_t = 512)]
    concurrency: usize,
    /// Heartbeat interval in ms (default: what the hub announces).
    #[arg(long)]
    heartbeat_ms: Option<u64>,
    /// The interval of the latency-over-time figures, ms.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Spread the terminals over these nodes of one hub, worker by worker (give as many
    /// --workers); the consoles stay on --hub. Default: every terminal on --hub.
    #[arg(long, value_delimiter = ',')]
    nodes: Vec<SocketAddr>,
}

/// Terminals one worker process holds at most when the harness chooses: under the 20,000
/// open files a process may hold here, with room for the process's own.
const PER_WORKER: usize = 15_000;

/// Worker processes for `terminals` over `nodes` nodes: none (this process) for a fleet that
/// fits on one node; else enough for `PER_WORKER` each, a whole number per node.
fn auto_workers(terminals: usize, nodes: usize) -> usize {
    if terminals <= PER_WORKER && nodes <= 1 {
        return 0;
    }
    let nodes = nodes.max(1);
    terminals.div_ceil(PER_WORKER).div_ceil(nodes) * nodes
}

/// The run's shared options, checked: a loopback target, a quiet machine, the tree loaded.
fn ctx(common: &Common, f: &FleetArgs) -> Result<(loadtest::run::RunCtx, usize), String> {
    quiet_enough(common)?;
    let secret = secret(common)?;
    let target = Target::new(common.hub, secret.clone(), common.allow_remote)?;
    let org = std::sync::Arc::new(
        gridhub::org::Org::load(&common.org)
            .map_err(|e| format!("{}: {e}", common.org.display()))?,
    );
    let terminals = f.terminals.unwrap_or(org.dispatchable());
    for n in &f.nodes {
        Target::new(*n, Vec::new(), common.allow_remote)?;
    }
    let workers = f
        .workers
        .unwrap_or_else(|| auto_workers(terminals, f.nodes.len()));
    if f.nodes.len() > 1 && workers < f.nodes.len() {
        return Err(format!(
            "{} nodes need at least as many --workers: each worker holds its terminals on one node",
            f.nodes.len()
        ));
    }
    Ok((
        loadtest::run::RunCtx {
            target,
            nodes: f.nodes.clone(),
            failover: false,
            secret: String::from_utf8(secret).map_err(|_| "the secret is not UTF-8")?,
            org_path: common.org.clone(),
            org,
            workers,
            ramp: f.ramp,
            concurrency: f.concurrency,
            heartbeat_ms: f.heartbeat_ms,
            seed: common.seed,
            interval: Duration::from_millis(f.interval_ms.max(10)),
            start_us: loadtest::mono_us(),
            max_seconds: common.max_seconds(),
            measure_from_round: 0,
            pids: Default::default(),
            worker_exe: std::env::current_exe().map_err(|e| e.to_string())?,
        },
        terminals,
    ))
}

/// Runs a fleet scenario within --max-seconds, then prints and writes its results; fails when a
/// target is not met, so scripts can tell.
async fn fleet_scenario<S: serde::Serialize>(
    common: &Common,
    fut: impl std::future::Future<Output = Result<(S, loadtest::report::Report), String>>,
) -> Result<(), String> {
    let (summary, report) = tokio::time::timeout(Duration::from_secs(common.max_seconds()), fut)
        .await
        .map_err(|_| format!("gave up after --max-seconds {}", common.max_seconds()))??;
    loadtest::run::finish(common.out_dir.as_deref(), &report, &summary)?;
    if let Some(out) = &common.out {
        write_summary(Some(out), &summary)?;
    }
    if loadtest::report::all_met(&report) {
        Ok(())
    } else {
        Err("a target was not met (see above)".into())
    }
}

impl Common {
    fn max_seconds(&self) -> u64 {
        self.max_seconds.unwrap_or(900)
    }
}

/// Most of the machine idle before a run, or the run's figures measure something else too.
const BUSY_LIMIT: f64 = 0.25;

/// Refuses to start on a machine already busy with something else, unless told to.
fn quiet_enough(common: &Common) -> Result<(), String> {
    if common.allow_busy {
        return Ok(());
    }
    let busy = loadtest::machine_busy(Duration::from_secs(1));
    if busy > BUSY_LIMIT {
        return Err(format!(
            "the machine is already {:.0} % busy before the run (another load, a build?): the \
             figures would mix with it; wait or stop it, or pass --allow-busy",
            busy * 100.0
        ));
    }
    Ok(())
}

#[derive(Subcommand)]
enum Scenario {
    /// Terminals change status at a steady rate while the city console and every county's wall
    /// watch: each change timed to the delta that shows it.
    Presence {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        fleet: FleetArgs,
        /// Status changes per second over all terminals.
        #[arg(long, default_value_t = 500.0)]
        rate: f64,
        #[arg(long, default_value_t = 10)]
        warmup: u64,
        #[arg(long, default_value_t = 60)]
        duration: u64,
    },
    /// One durable notice to every terminal, round after round: the time until the last has it;
    /// `--baseline redis` runs the same rounds through a Redis pub/sub first.
    Fanout {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        fleet: FleetArgs,
        #[arg(long, default_value_t = 20)]
        rounds: u32,
        #[arg(long, default_value_t = 3)]
        warmup: u32,
        /// Pause between rounds, ms.
        #[arg(long, default_value_t = 1000)]
        gap_ms: u64,
        /// Size of the frame each terminal receives.
        #[arg(long, default_value_t = 300)]
        bytes: usize,
        /// Terminals acknowledge every notice, as the field page does.
        #[arg(long)]
        ack: bool,
        /// `redis`: the same rounds through a harness-started redis-server's pub/sub first.
        #[arg(long, value_parser = ["redis"])]
        baseline: Option<String>,
        /// Pin the baseline server to this CPU (pin it where the hub is pinned).
        #[arg(long)]
        server_cpu: Option<usize>,
    },
    /// Every terminal drops its connection at once and comes back while notices are sent into
    /// the storm: time until presence is whole, nothing lost or repeated.
    ReconnectStorm {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        fleet: FleetArgs,
        #[arg(long, default_value_t = 5)]
        storms: u32,
        /// Notices sent into each storm.
        #[arg(long, default_value_t = 2)]
        notices: u32,
        /// Pause between storms, ms.
        #[arg(long, default_value_t = 3000)]
        gap_ms: u64,
    },
    /// A fleet over the nodes of a cluster (--nodes), one node killed with SIGKILL: the time
    /// until its terminals are on line again elsewhere, and that no notice is lost or repeated.
    Failover {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        fleet: FleetArgs,
        /// The node to kill (one of --nodes, not --hub).
        #[arg(long)]
        kill_node: SocketAddr,
        /// The process serving --kill-node (scripts/cluster writes it in <dir>/node-N.pid).
        #[arg(long)]
        kill_pid: i32,
        /// Notices the city sends right after the kill.
        #[arg(long, default_value_t = 2)]
        notices: u32,
        /// Seconds the connected fleet only heartbeats before the run goes on.
        #[arg(long, default_value_t = 0)]
        hold_s: u64,
    },
    /// The city's real rates scaled by a factor, held for a long time: memory and latency drift.
    Soak {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        fleet: FleetArgs,
        #[arg(long, default_value_t = 10.0)]
        factor: f64,
        /// Seconds to run.
        #[arg(long, default_value_t = 1800)]
        duration: u64,
        /// Seconds excluded from the drift comparison.
        #[arg(long, default_value_t = 120)]
        warmup: u64,
        /// Seconds between readings of the hub.
        #[arg(long, default_value_t = 5)]
        sample_every: u64,
    },
    /// Steps one node's terminal count up until a target or a limit breaks, and says which.
    Scale {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        fleet: FleetArgs,
        /// Terminal counts to step through.
        #[arg(long, value_delimiter = ',', default_value = "5000,10000,15000,19000")]
        steps: Vec<usize>,
        /// Seconds of quiet hold per step (the heartbeat CPU window).
        #[arg(long, default_value_t = 60)]
        hold: u64,
        #[arg(long, default_value_t = 200.0)]
        presence_rate: f64,
        #[arg(long, default_value_t = 20)]
        presence_for: u64,
        /// Measure every step even after a target breaks (a limit still stops the run).
        #[arg(long)]
        keep_going: bool,
    },
    /// A worker process of a fleet (started by the harness itself).
    #[command(hide = true)]
    FleetWorker,
    /// Two runs' JSON summaries side by side: every number both hold, with B's ratio to A.
    Compare { a: PathBuf, b: PathBuf },
    /// Connect N terminals, hold them with heartbeats, measure memory, CPU and presence latency.
    Connect {
        #[command(flatten)]
        common: Common,
        /// Terminals to open (default: every dispatchable terminal of the tree).
        #[arg(long)]
        terminals: Option<usize>,
        #[arg(long, default_value_t = 512)]
        concurrency: usize,
        /// Seconds to hold all terminals (the heartbeat CPU window).
        #[arg(long, default_value_t = 60)]
        hold: u64,
        /// Heartbeat interval in ms (default: what the hub announces).
        #[arg(long)]
        heartbeat_ms: Option<u64>,
        /// Presence changes for the latency measurement, and their rate per second.
        #[arg(long, default_value_t = 2000)]
        presence_changes: usize,
        #[arg(long, default_value_t = 200)]
        presence_rate: u32,
        /// Seconds to let the hub settle before each RSS reading.
        #[arg(long, default_value_t = 2)]
        settle: u64,
        /// Presence changes per second during the hold (0: a quiet hold).
        #[arg(long, default_value_t = 0)]
        churn: u32,
        /// `redis`: then connect as many clients to a harness-started redis-server, the same
        /// way, and give gridhub's connect time as a ratio to it.
        #[arg(long, value_parser = ["redis"])]
        baseline: Option<String>,
        /// Pin the baseline server to this CPU (pin it where the hub is pinned).
        #[arg(long)]
        server_cpu: Option<usize>,
    },
    /// Replay a Jiamusi year of work orders through every tier with all terminals connected.
    Orders {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 320_944)]
        orders: usize,
        /// Orders left in progress at their workers.
        #[arg(long, default_value_t = 8_293)]
        in_progress: usize,
        /// Orders in flight at once. Past ~1,000 the hub's writer is saturated: more only adds
        /// queueing (see docs/benchmarks.md).
        #[arg(long, default_value_t = 1_000)]
        window: usize,
        #[arg(long, default_value_t = 512)]
        concurrency: usize,
        /// Spread the terminals over these nodes of one hub (the services' node and
        /// statistics stay on --hub). Default: every terminal on --hub.
        #[arg(long, value_delimiter = ',')]
        nodes: Vec<SocketAddr>,
    },
    /// Storms of concurrent calls with all terminals connected: signaling latency, nothing lost.
    Calls {
        #[command(flatten)]
        common: Common,
        /// Calls at once per storm (village stations and one worker each; at most 1,206).
        #[arg(long, default_value_t = 1000)]
        pairs: usize,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// ICE candidates each side trickles per call.
        #[arg(long, default_value_t = 8)]
        candidates: usize,
        #[arg(long, default_value_t = 512)]
        concurrency: usize,
        /// Invites spread over this many ms (0: all in the same instant).
        #[arg(long, default_value_t = 0)]
        spread_ms: u64,
        /// Callees pick up within this many ms of ringing (0: at once).
        #[arg(long, default_value_t = 0)]
        answer_within_ms: u64,
        /// Gap between one side's candidates, as ICE gathers them (0: all at once).
        #[arg(long, default_value_t = 0)]
        trickle_ms: u64,
        /// Connect only the terminals in calls, not the whole tree.
        #[arg(long)]
        pairs_only: bool,
        /// Callees (and the terminals not in calls) on this node of a cluster, callers on
        /// --hub: every signal crosses between nodes.
        #[arg(long)]
        callee_hub: Option<SocketAddr>,
    },
    /// Command sessions through the hub's forwarding unit: synthetic cameras and microphones
    /// on real WebRTC peers, each commander's console receiving every track.
    Sessions {
        #[command(flatten)]
        common: Common,
        /// Sessions at once (the hub's `sessions.max_sessions` must allow them).
        #[arg(long, default_value_t = 27)]
        sessions: usize,
        /// Camera publishers per session (grid workers of the commanding center).
        #[arg(long, default_value_t = 10)]
        publishers: usize,
        /// Publishers per session speaking all the time; the others are silent (Opus DTX).
        #[arg(long, default_value_t = 1)]
        talkers: usize,
        #[arg(long, default_value_t = 500)]
        video_kbps: u32,
        #[arg(long, default_value_t = 30)]
        fps: u32,
        /// Seconds of forwarding before the measured window.
        #[arg(long, default_value_t = 10)]
        warmup: u64,
        /// Seconds measured.
        #[arg(long, default_value_t = 300)]
        duration: u64,
    },
}

fn print_sessions(s: &loadtest::sessions::SessionsSummary) {
    let yes = |b: bool| if b { "met" } else { "NOT met" };
    println!(
        "loadtest sessions — {} sessions × {} publishers ({} talking) at {} kbit/s, {} fps; {} peers; measured {:.0} s",
        s.sessions,
        s.publishers_per_session,
        s.talkers_per_session,
        s.video_kbps,
        s.fps,
        s.peers,
        s.window_s
    );
    println!(
        "  set up in {:.1} s; cameras on the consoles {} of {}; streams received {} of {} ({} never arrived)",
        s.set_up_s,
        s.wall_cameras,
        s.cameras,
        s.streams_received,
        s.streams_expected,
        s.streams_missing
    );
    for e in &s.first_errors {
        println!("  error: {e}");
    }
    println!(
        "  sent {:.0} packets/s ({:.1} Mbit/s); the hub forwarded {:.0} packets/s",
        s.packets_sent_per_s, s.megabits_sent_per_s, s.forwarded_per_s
    );
    for (name, l) in [
        ("consoles, video", &s.wall_video),
        ("consoles, sound", &s.wall_audio),
        ("participants, sound", &s.participant_audio),
    ] {
        println!(
            "    {name}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} packets)",
            l.p50_ms, l.p99_ms, l.max_ms, l.count
        );
    }
    println!(
        "  through the hub, all packets: p50 {:.2} ms, p99 {:.2} ms  [target p99 < 10 ms: {}]",
        s.all.p50_ms,
        s.all.p99_ms,
        yes(s.targets.latency_p99_under_10ms)
    );
    println!(
        "  loss: {} of {} packets written in the window, every expected stream counted ({:.3} %)  [target < 1 %: {}]",
        s.expected - s.received.min(s.expected),
        s.expected,
        s.loss_percent,
        yes(s.targets.loss_under_1_percent)
    );
    println!(
        "  hub CPU {:.0} % of one core  [target ≤ 100 %: {}]; RSS {:.0} → {:.0} MiB; flood-limit drops {}",
        s.hub_cpu_percent,
        yes(s.targets.hub_cpu_at_most_one_core),
        s.hub_rss_before_mib,
        s.hub_rss_mib,
        s.hub_dropped_by_flood_limit
    );
    println!(
        "  load generator CPU {:.0} % of one core; machine {:.0} % idle",
        s.loadtest_cpu_percent, s.machine_idle_percent
    );
}

fn secret(c: &Common) -> Result<Vec<u8>, String> {
    match &c.secret {
        Some(s) => Ok(s.as_bytes().to_vec()),
        None => std::fs::read_to_string(&c.secret_file)
            .map(|s| s.trim().as_bytes().to_vec())
            .map_err(|e| {
                format!(
                    "{}: {e} (pass --secret or --secret-file)",
                    c.secret_file.display()
                )
            }),
    }
}

fn print_connect(s: &ConnectSummary) {
    let kb = s.rss_per_terminal_bytes / 1000.0;
    let yes = |b: bool| if b { "met" } else { "NOT met" };
    println!(
        "loadtest connect — {} terminals ({} connected, {} failed), concurrency {}",
        s.terminals, s.connected, s.failed, s.concurrency
    );
    for e in &s.first_errors {
        println!("  error: {e}");
    }
    println!(
        "  all connected and authenticated in {:.2} s  [target < 5 s: {}]",
        s.connect_wall_s,
        yes(s.targets.connect_under_5s)
    );
    let l = &s.connect_latency;
    println!(
        "  per-terminal connect: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms
    );
    println!(
        "  hub RSS: idle {:.1} MiB, all connected {:.1} MiB → {:.0} bytes ({kb:.2} KB) per terminal  [target ≤ 6 KB: {}]",
        s.hub_idle.rss_bytes / 1048576.0,
        s.hub_connected.rss_bytes / 1048576.0,
        s.rss_per_terminal_bytes,
        yes(s.targets.rss_per_terminal_at_most_6kb)
    );
    println!(
        "  heartbeats: {} sent every {} ms over {:.0} s, {} replies; hub CPU {:.2} % of one core  [target < 5 %: {}]",
        s.heartbeats_sent,
        s.heartbeat_interval_ms,
        s.hold_s,
        s.heartbeat_replies,
        s.heartbeat_cpu_percent,
        yes(s.targets.heartbeat_cpu_under_5_percent)
    );
    let p = &s.presence;
    println!(
        "  presence change → city console: {} changes at {}/s, {} received, {} lost; p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms  [target p99 < 50 ms: {}]",
        p.changes,
        p.rate_per_sec,
        p.received,
        p.lost,
        p.latency.p50_ms,
        p.latency.p99_ms,
        p.latency.max_ms,
        yes(s.targets.presence_p99_under_50ms)
    );
    if let Some(b) = &s.baseline {
        println!(
            "  baseline: {} {} clients connected in {:.2} s (p50 {:.2} ms, p99 {:.2} ms): gridhub took {:.2}× as long",
            b.connected,
            b.server,
            b.connect_wall_s,
            b.connect_latency.p50_ms,
            b.connect_latency.p99_ms,
            b.ratio
        );
    }
    println!(
        "  closed by the hub during the run: {}; hub RSS after all closed {:.1} MiB",
        s.closed_by_hub,
        s.hub_after_close.rss_bytes / 1048576.0
    );
}

fn write_summary<T: serde::Serialize>(out: Option<&PathBuf>, summary: &T) -> Result<(), String> {
    if let Some(out) = out {
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        }
        let json = serde_json::to_string_pretty(summary).map_err(|e| e.to_string())?;
        std::fs::write(out, json).map_err(|e| format!("{}: {e}", out.display()))?;
        println!("  summary: {}", out.display());
    }
    Ok(())
}

fn print_orders(s: &loadtest::orders::OrdersSummary) {
    let yes = |b: bool| if b { "met" } else { "NOT met" };
    println!(
        "loadtest orders — {} orders ({} left in progress), {} terminals connected, window {}",
        s.orders, s.kept_in_progress, s.terminals, s.window
    );
    let year = match s.targets.year_under_2_minutes {
        Some(b) => format!("the year in < 120 s: {}", yes(b)),
        None => format!(
            "the year in < 120 s: not tested — {} of the year's {} orders",
            s.orders,
            loadtest::orders::SEED_ORDERS
        ),
    };
    println!(
        "  replayed in {:.1} s: {} transitions, {:.0} per second  [{year}]",
        s.wall_s, s.transitions, s.transitions_per_s,
    );
    println!(
        "  errors: {}  [none: {}]",
        s.errors,
        yes(s.targets.no_errors)
    );
    for e in &s.first_errors {
        println!("  error: {e}");
    }
    let st = &s.stats;
    println!(
        "  stats: received {}, closed {}, in progress {}, completion {:.1} %  [{}: {}]",
        st["received"],
        st["closed"],
        st["in_progress"],
        st["completion_rate"].as_f64().unwrap_or(0.0) * 100.0,
        if s.targets.year_under_2_minutes.is_some() {
            "the seed's counts"
        } else {
            "the counts replayed"
        },
        yes(s.targets.counts_match)
    );
    let l = &s.dispatch_push_latency;
    println!(
        "  dispatch → holder push: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} pushes)  [target p99 < 20 ms: {}]",
        l.p50_ms,
        l.p90_ms,
        l.p99_ms,
        l.max_ms,
        l.count,
        yes(s.targets.dispatch_push_p99_under_20ms)
    );
    println!(
        "  hub: {:.1} CPU-seconds, RSS {:.0} MiB, {} store commits; load generator {:.1} CPU-seconds; machine {:.0} % idle",
        s.hub_cpu_s,
        s.hub_after.rss_bytes / 1048576.0,
        s.store_commits,
        s.loadtest_cpu_s,
        s.machine_idle_percent
    );
}

fn print_calls(s: &loadtest::calls::CallsSummary) {
    let yes = |b: bool| if b { "met" } else { "NOT met" };
    println!(
        "loadtest calls — {} terminals connected; {} rounds of {} calls at once, {} candidates per side",
        s.terminals, s.rounds, s.pairs, s.candidates_per_side
    );
    let p = &s.pacing;
    println!(
        "  pacing: invites over {} ms, answered within {} ms, candidates {} ms apart{}",
        p.spread.as_millis(),
        p.answer_within.as_millis(),
        p.trickle.as_millis(),
        if p.spread.is_zero() && p.answer_within.is_zero() && p.trickle.is_zero() {
            " (everything at once: the hardest burst)"
        } else {
            ""
        }
    );
    println!(
        "  calls completed {}, failed {}; storms took {:?} s",
        s.calls_completed,
        s.calls_failed,
        s.storm_s
            .iter()
            .map(|x| (x * 100.0).round() / 100.0)
            .collect::<Vec<_>>()
    );
    for e in &s.first_errors {
        println!("  error: {e}");
    }
    let r = &s.invite_to_ringing;
    println!(
        "  invite → ringing (caller): p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} calls)",
        r.p50_ms, r.p90_ms, r.p99_ms, r.max_ms, r.count
    );
    let l = &s.relay;
    println!(
        "  relay, one way: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} messages)  [target p99 < 5 ms: {}]",
        l.p50_ms,
        l.p90_ms,
        l.p99_ms,
        l.max_ms,
        l.count,
        yes(s.targets.relay_p99_under_5ms)
    );
    for (kind, l) in loadtest::calls::KINDS.iter().zip(&s.relay_by_kind) {
        println!(
            "    {kind}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({})",
            l.p50_ms, l.p99_ms, l.max_ms, l.count
        );
    }
    let h = &s.hub_relay;
    println!(
        "  inside the hub (request decoded → queued for the peer): {} messages, mean {:.3} ms, p50 ≤ {} ms, p99 ≤ {} ms",
        h.count, h.mean_ms, h.p50_le_ms, h.p99_le_ms
    );
    println!(
        "  relayed {} of {} expected: lost {}, misrouted {}, out of order {}, errors {}  [nothing lost or misrouted: {}]",
        s.relayed,
        s.expected_relayed,
        s.lost,
        s.misrouted,
        s.out_of_order,
        s.errors,
        yes(s.targets.nothing_lost_or_misrouted)
    );
    println!(
        "  hub: {} calls placed, {} signals relayed, {:.1} CPU-seconds, RSS {:.0} MiB; load generator {:.1} CPU-seconds",
        s.hub_calls_placed,
        s.hub_call_signals,
        s.hub_cpu_s,
        s.hub_after.rss_bytes / 1048576.0,
        s.loadtest_cpu_s
    );
}

async fn run(cli: Cli) -> Result<(), String> {
    match cli.scenario {
        Scenario::FleetWorker => {
            let r = loadtest::fleet::worker_main().await;
            // Standard input's reader blocks the runtime's shutdown until the parent closes it;
            // a worker that reported (or stopped at its own deadline) ends here, now.
            std::process::exit(match r {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("loadtest fleet-worker: {e}");
                    1
                }
            })
        }
        Scenario::Presence {
            common,
            fleet,
            rate,
            warmup,
            duration,
        } => {
            let (ctx, terminals) = ctx(&common, &fleet)?;
            let o = loadtest::presence::PresenceOptions {
                terminals,
                rate,
                warmup: Duration::from_secs(warmup),
                duration: Duration::from_secs(duration),
            };
            fleet_scenario(&common, loadtest::presence::run(&ctx, &o)).await
        }
        Scenario::Fanout {
            common,
            fleet,
            rounds,
            warmup,
            gap_ms,
            bytes,
            ack,
            baseline,
            server_cpu,
        } => {
            let (ctx, terminals) = ctx(&common, &fleet)?;
            let o = loadtest::fanout::FanoutOptions {
                terminals,
                rounds,
                warmup,
                gap: Duration::from_millis(gap_ms),
                bytes,
                ack,
                baseline_redis: baseline.is_some(),
                server_cpu,
            };
            fleet_scenario(&common, loadtest::fanout::run(&ctx, &o)).await
        }
        Scenario::ReconnectStorm {
            common,
            fleet,
            storms,
            notices,
            gap_ms,
        } => {
            let (ctx, terminals) = ctx(&common, &fleet)?;
            let o = loadtest::storm::StormOptions {
                terminals,
                storms,
                notices,
                gap: Duration::from_millis(gap_ms),
            };
            fleet_scenario(&common, loadtest::storm::run(&ctx, &o)).await
        }
        Scenario::Failover {
            common,
            fleet,
            kill_node,
            kill_pid,
            notices,
            hold_s,
        } => {
            let (mut ctx, terminals) = ctx(&common, &fleet)?;
            ctx.failover = true;
            let o = loadtest::failover::FailoverOptions {
                terminals,
                kill_node,
                kill: loadtest::failover::sigkill(kill_pid),
                notices,
                hold: Duration::from_secs(hold_s),
            };
            fleet_scenario(&common, loadtest::failover::run(&ctx, o)).await
        }
        Scenario::Soak {
            common,
            fleet,
            factor,
            duration,
            warmup,
            sample_every,
        } => {
            let mut common = common;
            let bound = *common.max_seconds.get_or_insert(duration + 600);
            if bound <= duration {
                return Err(format!(
                    "--duration {duration} does not fit in --max-seconds {bound}: raise it"
                ));
            }
            let (ctx, terminals) = ctx(&common, &fleet)?;
            let o = loadtest::soak::SoakOptions {
                terminals,
                factor,
                duration: Duration::from_secs(duration),
                warmup: Duration::from_secs(warmup),
                sample_every: Duration::from_secs(sample_every.max(1)),
            };
            fleet_scenario(&common, loadtest::soak::run(&ctx, &o)).await
        }
        Scenario::Scale {
            common,
            fleet,
            steps,
            hold,
            presence_rate,
            presence_for,
            keep_going,
        } => {
            if !fleet.nodes.is_empty() {
                // Its figures are one node's /metrics: terminals elsewhere would cost nothing.
                return Err("scale measures one node: give it --hub, not --nodes".into());
            }
            let (ctx, _) = ctx(&common, &fleet)?;
            let o = loadtest::scale::ScaleOptions {
                steps,
                hold: Duration::from_secs(hold),
                presence_rate,
                presence_for: Duration::from_secs(presence_for),
                settle: Duration::from_secs(2),
                keep_going,
            };
            fleet_scenario(&common, loadtest::scale::run(&ctx, &o)).await
        }
        Scenario::Compare { a, b } => {
            let read = |p: &PathBuf| -> Result<serde_json::Value, String> {
                let text =
                    std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
                serde_json::from_str(&text)
                    .map_err(|e| format!("{}: not a summary: {e}", p.display()))
            };
            let (va, vb) = (read(&a)?, read(&b)?);
            if va["scenario"] != vb["scenario"] {
                println!(
                    "note: A is a {} run, B a {} run; only the figures both hold are compared",
                    va["scenario"], vb["scenario"]
                );
            }
            println!("A: {}\nB: {}", a.display(), b.display());
            let (rows, only) = loadtest::compare::compare(&va, &vb);
            print!("{}", loadtest::compare::render(&rows, &only));
            Ok(())
        }
        Scenario::Sessions {
            common,
            sessions,
            publishers,
            talkers,
            video_kbps,
            fps,
            warmup,
            duration,
        } => {
            quiet_enough(&common)?;
            let target = Target::new(common.hub, secret(&common)?, common.allow_remote)?;
            let sampler = sampler(&common);
            let org = std::sync::Arc::new(
                gridhub::org::Org::load(&common.org).map_err(|e| e.to_string())?,
            );
            let opts = loadtest::sessions::SessionsOptions {
                sessions,
                publishers,
                video_kbps,
                fps,
                talkers,
                warmup: Duration::from_secs(warmup),
                duration: Duration::from_secs(duration),
            };
            let summary = tokio::time::timeout(
                Duration::from_secs(common.max_seconds()),
                loadtest::sessions::run(&target, org, &opts),
            )
            .await
            .map_err(|_| format!("gave up after --max-seconds {}", common.max_seconds()))??;
            print_sessions(&summary);
            write_summary(common.out.as_ref(), &summary)?;
            old_report(&common, "sessions", &summary, sampler).await
        }
        Scenario::Calls {
            common,
            pairs,
            rounds,
            candidates,
            concurrency,
            spread_ms,
            answer_within_ms,
            trickle_ms,
            pairs_only,
            callee_hub,
        } => {
            quiet_enough(&common)?;
            let target = Target::new(common.hub, secret(&common)?, common.allow_remote)?;
            let sampler = sampler(&common);
            let org = std::sync::Arc::new(
                gridhub::org::Org::load(&common.org).map_err(|e| e.to_string())?,
            );
            let opts = loadtest::calls::CallsOptions {
                pairs,
                rounds,
                candidates,
                concurrency,
                pacing: loadtest::calls::Pacing {
                    spread: Duration::from_millis(spread_ms),
                    answer_within: Duration::from_millis(answer_within_ms),
                    trickle: Duration::from_millis(trickle_ms),
                },
                pairs_only,
                callee_hub,
            };
            let summary = tokio::time::timeout(
                Duration::from_secs(common.max_seconds()),
                loadtest::calls::run(&target, org, &opts),
            )
            .await
            .map_err(|_| format!("gave up after --max-seconds {}", common.max_seconds()))??;
            print_calls(&summary);
            write_summary(common.out.as_ref(), &summary)?;
            old_report(&common, "calls", &summary, sampler).await
        }
        Scenario::Orders {
            common,
            orders,
            in_progress,
            window,
            concurrency,
            nodes,
        } => {
            quiet_enough(&common)?;
            let target = Target::new(common.hub, secret(&common)?, common.allow_remote)?;
            let sampler = sampler(&common);
            let org = std::sync::Arc::new(
                gridhub::org::Org::load(&common.org).map_err(|e| e.to_string())?,
            );
            let opts = loadtest::orders::OrdersOptions {
                orders,
                in_progress,
                window,
                concurrency,
                nodes,
            };
            let summary = tokio::time::timeout(
                Duration::from_secs(common.max_seconds()),
                loadtest::orders::run(&target, org, &opts),
            )
            .await
            .map_err(|_| format!("gave up after --max-seconds {}", common.max_seconds()))??;
            print_orders(&summary);
            write_summary(common.out.as_ref(), &summary)?;
            old_report(&common, "orders", &summary, sampler).await
        }
        Scenario::Connect {
            common,
            terminals,
            concurrency,
            hold,
            heartbeat_ms,
            presence_changes,
            presence_rate,
            settle,
            churn,
            baseline,
            server_cpu,
        } => {
            quiet_enough(&common)?;
            let target = Target::new(common.hub, secret(&common)?, common.allow_remote)?;
            let sampler = sampler(&common);
            let org = gridhub::org::Org::load(&common.org).map_err(|e| e.to_string())?;
            let opts = ConnectOptions {
                terminals: terminals.unwrap_or(org.dispatchable()),
                concurrency,
                hold: Duration::from_secs(hold),
                heartbeat: heartbeat_ms.map(Duration::from_millis),
                presence_changes,
                presence_rate,
                settle: Duration::from_secs(settle),
                churn_rate: churn,
            };
            let summary = tokio::time::timeout(
                Duration::from_secs(common.max_seconds()),
                loadtest::connect::run(&target, &org, &opts),
            )
            .await
            .map_err(|_| format!("gave up after --max-seconds {}", common.max_seconds()))??;
            let mut summary = summary;
            if baseline.is_some() {
                let f = FleetArgs {
                    terminals: Some(opts.terminals),
                    workers: Some(0),
                    ramp: 0.0,
                    concurrency,
                    heartbeat_ms: None,
                    interval_ms: 1000,
                    nodes: Vec::new(),
                };
                let mut c = common.clone();
                c.allow_busy = true;
                let (rc, n) = ctx(&c, &f)?;
                let run =
                    loadtest::connect::redis_baseline(&rc, n, server_cpu, summary.connect_wall_s);
                summary.baseline = Some(
                    tokio::time::timeout(Duration::from_secs(common.max_seconds()), run)
                        .await
                        .map_err(|_| {
                            format!(
                                "the baseline gave up after --max-seconds {}",
                                common.max_seconds()
                            )
                        })??,
                );
            }
            print_connect(&summary);
            write_summary(common.out.as_ref(), &summary)?;
            old_report(&common, "connect", &summary, sampler).await
        }
    }
}

/// The hub and the harness sampled every second from now.
fn sampler(common: &Common) -> loadtest::timeline::Sampler {
    loadtest::timeline::Sampler::start(
        common.hub,
        loadtest::mono_us(),
        Duration::from_secs(1),
        Default::default(),
    )
}

/// The summary table, JSON and HTML report of a scenario that prints its own figures.
async fn old_report<S: serde::Serialize>(
    common: &Common,
    scenario: &str,
    summary: &S,
    sampler: loadtest::timeline::Sampler,
) -> Result<(), String> {
    let samples = sampler.stop().await;
    let value = serde_json::to_value(summary).map_err(|e| e.to_string())?;
    let title = format!("loadtest {scenario}");
    let report = loadtest::run::from_summary(scenario, title, &value, &samples);
    let mut with_samples = value;
    with_samples["samples"] = serde_json::to_value(&samples).map_err(|e| e.to_string())?;
    loadtest::run::finish(common.out_dir.as_deref(), &report, &with_samples)
}

fn main() -> ExitCode {
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadtest: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(Cli::parse())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadtest: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::auto_workers;

    #[test]
    fn workers_keep_each_process_under_its_files_and_whole_per_node() {
        assert_eq!(
            auto_workers(9_851, 1),
            0,
            "one node's city fits in this process"
        );
        assert_eq!(auto_workers(19_000, 1), 2);
        assert_eq!(auto_workers(9_851, 3), 3, "at least one per node");
        assert_eq!(
            auto_workers(100_000, 6),
            12,
            "7 would do, but 6 nodes take 2 each"
        );
        assert_eq!(auto_workers(90_000, 6), 6);
    }
}

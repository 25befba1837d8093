//! `loadtest failover`: a fleet spread over the nodes of a cluster, one node taken down (killed
//! with SIGKILL from the command line) while the city center sends notices. Measured: the time from the kill until every terminal
//! it held is on line again on another node (resumed there) and the city console — on a node
//! that lives — counts the whole fleet again; and that every terminal has every notice exactly
//! once (nothing lost in the gap, nothing repeated by the resume).

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

use crate::Percentiles;
use crate::report::Report;
use crate::run::{Console, RunCtx, errors, every_notice_once, figure, report, verdict};
use crate::timeline::{Sample, push_resource_charts};

/// How long the console is watched after the last terminal is back.
const SETTLE: Duration = Duration::from_secs(6);

/// Takes the node down, the moment the run says.
pub type Kill =
    Box<dyn FnOnce() -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send>;

/// SIGKILL to the process serving the node (started by whoever runs the cluster).
pub fn sigkill(pid: i32) -> Kill {
    Box::new(move || {
        Box::pin(async move {
            // SAFETY: kill(2) with a pid and a signal number has no memory effects.
            if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
                return Err(format!(
                    "cannot kill {pid}: {}",
                    std::io::Error::last_os_error()
                ));
            }
            Ok(())
        })
    })
}

pub struct FailoverOptions {
    pub terminals: usize,
    /// The node to kill, and how.
    pub kill_node: SocketAddr,
    pub kill: Kill,
    /// Notices sent by the city center right after the kill.
    pub notices: u32,
    /// Seconds the connected fleet only heartbeats before anything else (the nodes' idle cost,
    /// read from outside).
    pub hold: Duration,
}

#[derive(Debug, Serialize)]
pub struct FailoverSummary {
    pub scenario: &'static str,
    pub terminals: u64,
    pub connected: u64,
    pub nodes: usize,
    /// Seconds from the first connection to the last.
    pub connect_s: f64,
    /// Terminals the killed node held.
    pub on_killed_node: u64,
    /// Connections the fleet saw lost with the node.
    pub lost: u64,
    /// Seconds from the kill until every lost terminal had resumed on another node.
    pub all_resumed_s: f64,
    /// Seconds until the city console counted the whole fleet on line again.
    pub console_whole_s: f64,
    /// The lowest on-line count the console saw.
    pub console_low: u64,
    pub whole_s: f64,
    pub reconnect: Percentiles,
    pub notices_sent: u64,
    pub terminals_missing_notices: u64,
    pub duplicates: u64,
    pub errors: u64,
    pub first_errors: Vec<String>,
    pub samples: Vec<Sample>,
}

pub async fn run(ctx: &RunCtx, o: FailoverOptions) -> Result<(FailoverSummary, Report), String> {
    if ctx.nodes.len() < 2 || !ctx.nodes.contains(&o.kill_node) {
        return Err("failover needs --nodes (two or more) and --kill-node among them".into());
    }
    if ctx.target.addr == o.kill_node {
        return Err("the consoles are on --hub: give a node that is not killed".into());
    }
    let n = o.terminals.min(ctx.org.len().saturating_sub(1));
    let on_killed = ctx.terminals_on(o.kill_node, 0, n) as u64;
    let sampler = ctx.sampler(Duration::from_millis(500));
    let fleet = ctx.fleet(ctx.hub_backend(), 0, n, true).await?;
    let connect_s = ctx.connected(&fleet, n as u64, "terminals").await?;
    let connected = fleet.connected();
    tokio::time::sleep(o.hold).await;
    let root = ctx.org.id(gridhub::org::NodeIdx(0)).to_string();
    let mut city = Console::city(ctx).await?;
    // The whole fleet on line, as the city sees it, before the kill.
    let whole = {
        let end = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let on = city.city_online(&root).await?;
            if on >= connected || tokio::time::Instant::now() > end {
                break on;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let mut sent = 1u64;
    city.notice(&root, 0, 300).await?;
    fleet
        .wait_for(
            Duration::from_secs(60),
            |f| f.notices() >= connected,
            |_| {},
        )
        .await;

    let at = crate::mono_us();
    (o.kill)().await?;
    let mut dip = crate::storm::Dip::new(whole);
    for k in 0..o.notices {
        city.notice_watching(&root, 100 + k, 300, |t| dip.see(t, &root))
            .await?;
        sent += 1;
    }
    // Watched until every lost terminal has resumed elsewhere and then for SETTLE more: past the
    // dead node's lease, when every node drops what it still held of it (a terminal back by
    // then is not counted off line: its newer connection stands).
    let end = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut back_at = None;
    while tokio::time::Instant::now() < end {
        if let Some(t) = city.push(Duration::from_millis(50)).await? {
            dip.see(&t, &root);
        }
        let lost = fleet.lost();
        if lost >= on_killed && fleet.reconnected() >= lost {
            let since = *back_at.get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() > SETTLE && (!dip.dipped() || dip.whole_at.is_some()) {
                break;
            }
        }
    }
    let lost = fleet.lost();
    let all_resumed_s = if lost >= on_killed && fleet.reconnected() >= lost {
        fleet.reconnected_at().saturating_sub(at) as f64 / 1e6
    } else {
        f64::INFINITY
    };
    let console_whole_s = match (dip.dipped(), dip.whole_at) {
        (_, Some(w)) => w.saturating_sub(at) as f64 / 1e6,
        (true, None) => f64::INFINITY,
        // Never short: the terminals were back before the node's lease ran out.
        (false, None) => 0.0,
    };
    let want = connected * sent;
    fleet
        .wait_for(Duration::from_secs(60), |f| f.notices() >= want, |_| {})
        .await;
    city.close().await;
    let r = fleet.finish().await?;
    let samples = sampler.stop().await;
    let summary = FailoverSummary {
        scenario: "failover",
        terminals: r.terminals,
        connected: r.connected,
        nodes: ctx.nodes.len(),
        connect_s,
        on_killed_node: on_killed,
        lost,
        all_resumed_s,
        console_whole_s,
        console_low: dip.low,
        whole_s: all_resumed_s.max(console_whole_s),
        reconnect: Percentiles::of(&r.reconnect_histogram()),
        notices_sent: sent,
        terminals_missing_notices: r.terminals_without_exactly(sent),
        duplicates: r.duplicates,
        errors: r.errors,
        first_errors: r.first_errors.clone(),
        samples,
    };
    let mut rep = report(
        "failover",
        format!(
            "{} terminals on {} nodes; {} (holding {on_killed}) taken down, {} notices sent into the gap",
            summary.connected, summary.nodes, o.kill_node, o.notices
        ),
    );
    rep.verdicts.push(verdict(
        "the killed node's terminals on line again elsewhere",
        "< 10 s",
        format!(
            "{:.2} s (all resumed {:.2} s, console whole {:.2} s)",
            summary.whole_s, summary.all_resumed_s, summary.console_whole_s
        ),
        Some(summary.connected == n as u64 && summary.whole_s < 10.0),
    ));
    rep.verdicts.push(every_notice_once(
        summary.terminals_missing_notices,
        summary.notices_sent,
        summary.duplicates,
        summary.connected == n as u64,
    ));
    rep.figures.push(figure(
        "connect (first to last)",
        format!("{connect_s:.1} s"),
    ));
    rep.figures.push(figure(
        "terminals on the killed node / connections lost",
        format!("{on_killed} / {}", summary.lost),
    ));
    rep.figures.push(figure(
        "failover (connection lost → resumed elsewhere) p50 / p99 / max",
        format!(
            "{:.0} / {:.0} / {:.0} ms",
            summary.reconnect.p50_ms, summary.reconnect.p99_ms, summary.reconnect.max_ms
        ),
    ));
    rep.figures.push(figure(
        "city console's low",
        format!("{} of {whole}", summary.console_low),
    ));
    errors(&mut rep, summary.errors, &summary.first_errors);
    push_resource_charts(&mut rep, &summary.samples);
    Ok((summary, rep))
}

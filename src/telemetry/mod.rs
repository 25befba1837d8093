//! telemetry — Prometheus metrics, process statistics and log set-up.
//!
//! Metrics are plain atomics owned by one `Metrics` per hub (tests run several hubs in one
//! process and must not see each other's counts) and rendered by hand: the hot path pays one
//! relaxed atomic add, and `/metrics` does the formatting.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Latency bucket upper bounds, in seconds.
const BUCKETS: [f64; 14] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

#[derive(Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&b| secs <= b) {
            self.counts[i].fetch_add(1, Relaxed);
        }
        self.sum_ns.fetch_add(d.as_nanos() as u64, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, c) in BUCKETS.iter().zip(&self.counts) {
            cumulative += c.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}\n{name}_count {count}",
            self.sum_ns.load(Relaxed) as f64 / 1e9
        );
    }
}

/// Why a WebSocket connection ended; one counter each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    Normal,
    Shutdown,
    Protocol,
    Policy,
    Heartbeat,
    Replaced,
    Slow,
    Expired,
    Gone,
}

impl EndReason {
    const ALL: [EndReason; 9] = [
        EndReason::Normal,
        EndReason::Shutdown,
        EndReason::Protocol,
        EndReason::Policy,
        EndReason::Heartbeat,
        EndReason::Replaced,
        EndReason::Slow,
        EndReason::Expired,
        EndReason::Gone,
    ];
    fn label(self) -> &'static str {
        match self {
            EndReason::Normal => "normal",
            EndReason::Shutdown => "shutdown",
            EndReason::Protocol => "protocol_error",
            EndReason::Policy => "policy_violation",
            EndReason::Heartbeat => "heartbeat_timeout",
            EndReason::Replaced => "replaced",
            EndReason::Slow => "slow_consumer",
            EndReason::Expired => "credential_expired",
            EndReason::Gone => "peer_gone",
        }
    }
}

#[derive(Default)]
pub struct Metrics {
    pub connections: AtomicU64,
    pub connections_opened: AtomicU64,
    pub sockets_open: AtomicU64,
    pub refused_capacity: AtomicU64,
    pub refused_auth: AtomicU64,
    pub accept_errors: AtomicU64,
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Frames that could not be written at once and waited in a send queue.
    pub frames_queued: AtomicU64,
    /// Frames discarded because their connection's send queue overflowed.
    pub queue_drops: AtomicU64,
    pub errors_sent: AtomicU64,
    pub presence_changes: AtomicU64,
    pub presence_batches: AtomicU64,
    ends: [AtomicU64; EndReason::ALL.len()],
    pub request_latency: Histogram,
    pub presence_fanout_latency: Histogram,
    pub http_requests: AtomicU64,
    pub store_commits: AtomicU64,
    pub store_jobs: AtomicU64,
    pub store_failures: AtomicU64,
    pub store_wal_restarts: AtomicU64,
    /// Jobs waiting for the store's writer, and committed batches waiting for completion.
    pub store_queue: AtomicU64,
    pub store_completions_queue: AtomicU64,
    /// Requests waiting for the orders service.
    pub orders_queue: AtomicU64,
    pub store_commit_latency: Histogram,
    pub orders_transitions: AtomicU64,
    pub orders_rejected: AtomicU64,
    pub outbox_messages: AtomicU64,
    pub outbox_pruned: AtomicU64,
    pub push_latency: Histogram,
    /// Requests waiting for the calls service.
    pub calls_queue: AtomicU64,
    /// Calls ringing or answered right now.
    pub calls_live: AtomicU64,
    pub sessions_live: AtomicU64,
    pub session_peers: AtomicU64,
    pub session_packets_forwarded: Arc<AtomicU64>,
    pub session_packets_dropped: Arc<AtomicU64>,
    pub calls_placed: AtomicU64,
    pub calls_answered: AtomicU64,
    pub calls_refused: AtomicU64,
    pub call_signals: AtomicU64,
    /// A call request decoded → what it causes queued for the other party.
    pub call_relay_latency: Histogram,
    /// An analysis request: reading the facts and computing.
    pub analysis_latency: Histogram,
    /// Microseconds the calls service spent working (not waiting): its saturation.
    pub calls_busy_us: AtomicU64,
    /// Set once at start-up.
    /// Messages sent to, received from, and lost between hub nodes.
    pub link_sent: AtomicU64,
    pub link_received: AtomicU64,
    pub link_dropped: AtomicU64,
    /// Connections that missed live outbox messages and were replayed them.
    pub outbox_catch_ups: AtomicU64,
    /// 1 while this node reaches the other nodes (always, alone), 0 while it cannot.
    pub link_up: AtomicU64,
    /// 1 while the services' store takes writes; 0 while its database is unreachable.
    pub store_up: AtomicU64,
    /// Nodes in the cluster as this one sees it, itself included.
    pub link_nodes: AtomicU64,
    pub fd_limit: AtomicU64,
    pub max_connections: AtomicU64,
}

impl Metrics {
    pub fn ended(&self, why: EndReason) {
        self.ends[why as usize].fetch_add(1, Relaxed);
    }

    pub fn ends(&self, why: EndReason) -> u64 {
        self.ends[why as usize].load(Relaxed)
    }

    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let gauge = |out: &mut String, name: &str, help: &str, v: f64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        let counter = |out: &mut String, name: &str, help: &str, v: &AtomicU64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Relaxed)
            );
        };
        let gauges: [(&str, &str, &AtomicU64); 14] = [
            (
                "gridhub_connections",
                "Open WebSocket terminal connections.",
                &self.connections,
            ),
            (
                "gridhub_sockets_open",
                "Open TCP sockets (HTTP and WebSocket).",
                &self.sockets_open,
            ),
            (
                "gridhub_connections_max",
                "Connection cap (from the open-file limit unless configured).",
                &self.max_connections,
            ),
            (
                "gridhub_store_queue",
                "Jobs waiting for the store's writer.",
                &self.store_queue,
            ),
            (
                "gridhub_store_completions_queue",
                "Committed batches whose owners are still to be told.",
                &self.store_completions_queue,
            ),
            (
                "gridhub_orders_queue",
                "Requests waiting for the orders service.",
                &self.orders_queue,
            ),
            (
                "gridhub_calls_queue",
                "Requests waiting for the calls service.",
                &self.calls_queue,
            ),
            (
                "gridhub_calls_live",
                "Calls ringing or answered right now.",
                &self.calls_live,
            ),
            (
                "gridhub_sessions_live",
                "Command sessions live right now.",
                &self.sessions_live,
            ),
            (
                "gridhub_session_peers",
                "Peer connections of members present in sessions (one each).",
                &self.session_peers,
            ),
            (
                "gridhub_fd_limit",
                "The process's open-file limit at start-up.",
                &self.fd_limit,
            ),
            (
                "gridhub_link_up",
                "1 while this node reaches the other hub nodes (always when alone), 0 while cross-node features are degraded.",
                &self.link_up,
            ),
            (
                "gridhub_store_up",
                "1 while the services' store takes writes (always on a node without them), 0 while its database is unreachable and writes are refused.",
                &self.store_up,
            ),
            (
                "gridhub_link_nodes",
                "Hub nodes in the cluster as this node sees it, itself included.",
                &self.link_nodes,
            ),
        ];
        for (name, help, v) in gauges {
            gauge(&mut out, name, help, v.load(Relaxed) as f64);
        }
        let counters: [(&str, &str, &AtomicU64); 30] = [
            (
                "gridhub_session_packets_dropped_total",
                "RTP packets of a publisher over sessions.max_packets_per_sec, dropped.",
                &*self.session_packets_dropped,
            ),
            (
                "gridhub_session_packets_forwarded_total",
                "RTP packets the forwarding unit sent to session members.",
                &*self.session_packets_forwarded,
            ),
            (
                "gridhub_link_sent_total",
                "Messages sent to other hub nodes.",
                &self.link_sent,
            ),
            (
                "gridhub_link_received_total",
                "Messages received from other hub nodes.",
                &self.link_received,
            ),
            (
                "gridhub_link_dropped_total",
                "Messages between hub nodes lost (a peer too far behind, or unreadable).",
                &self.link_dropped,
            ),
            (
                "gridhub_outbox_catch_ups_total",
                "Connections that missed live outbox messages (a sequence skipped) and were replayed them.",
                &self.outbox_catch_ups,
            ),
            (
                "gridhub_connections_opened_total",
                "WebSocket connections authenticated and opened.",
                &self.connections_opened,
            ),
            (
                "gridhub_accept_errors_total",
                "accept() failures (e.g. EMFILE at the open-file limit).",
                &self.accept_errors,
            ),
            (
                "gridhub_messages_in_total",
                "WebSocket messages received.",
                &self.messages_in,
            ),
            (
                "gridhub_messages_out_total",
                "WebSocket frames sent.",
                &self.messages_out,
            ),
            (
                "gridhub_bytes_in_total",
                "WebSocket bytes received.",
                &self.bytes_in,
            ),
            (
                "gridhub_bytes_out_total",
                "WebSocket bytes written.",
                &self.bytes_out,
            ),
            (
                "gridhub_frames_queued_total",
                "Frames that waited in a send queue (socket buffer full).",
                &self.frames_queued,
            ),
            (
                "gridhub_queue_drops_total",
                "Frames dropped when a slow consumer's send queue overflowed.",
                &self.queue_drops,
            ),
            (
                "gridhub_errors_sent_total",
                "Typed error replies sent to terminals.",
                &self.errors_sent,
            ),
            (
                "gridhub_presence_changes_total",
                "Presence changes applied.",
                &self.presence_changes,
            ),
            (
                "gridhub_presence_batches_total",
                "Coalesced presence delta frames fanned out.",
                &self.presence_batches,
            ),
            (
                "gridhub_http_requests_total",
                "HTTP requests served (excluding upgrades).",
                &self.http_requests,
            ),
            (
                "gridhub_store_commits_total",
                "Store transactions committed (each one fsync).",
                &self.store_commits,
            ),
            (
                "gridhub_store_jobs_total",
                "Atomic units written (group commit puts many in one transaction).",
                &self.store_jobs,
            ),
            (
                "gridhub_store_failures_total",
                "Store batches rolled back.",
                &self.store_failures,
            ),
            (
                "gridhub_store_wal_restarts_total",
                "Times the writer rewound a WAL past its size limit.",
                &self.store_wal_restarts,
            ),
            (
                "gridhub_order_transitions_total",
                "Work-order transitions committed.",
                &self.orders_transitions,
            ),
            (
                "gridhub_order_rejections_total",
                "Work-order requests refused with a typed error.",
                &self.orders_rejected,
            ),
            (
                "gridhub_outbox_messages_total",
                "Durable outbox messages written.",
                &self.outbox_messages,
            ),
            (
                "gridhub_calls_placed_total",
                "Calls placed (invites accepted by the hub).",
                &self.calls_placed,
            ),
            (
                "gridhub_calls_answered_total",
                "Calls answered by the callee.",
                &self.calls_answered,
            ),
            (
                "gridhub_call_refusals_total",
                "Call requests refused with a typed error.",
                &self.calls_refused,
            ),
            (
                "gridhub_call_signals_total",
                "SDP and ICE messages relayed between call parties.",
                &self.call_signals,
            ),
            (
                "gridhub_outbox_pruned_total",
                "Delivered outbox messages deleted after the retention period.",
                &self.outbox_pruned,
            ),
        ];
        for (name, help, v) in counters {
            counter(&mut out, name, help, v);
        }
        let _ = writeln!(
            out,
            "# HELP gridhub_connections_refused_total Connections refused, by reason.\n# TYPE gridhub_connections_refused_total counter\n\
             gridhub_connections_refused_total{{reason=\"capacity\"}} {}\n\
             gridhub_connections_refused_total{{reason=\"auth\"}} {}",
            self.refused_capacity.load(Relaxed),
            self.refused_auth.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP gridhub_connections_closed_total WebSocket connections ended, by reason.\n# TYPE gridhub_connections_closed_total counter"
        );
        for r in EndReason::ALL {
            let _ = writeln!(
                out,
                "gridhub_connections_closed_total{{reason=\"{}\"}} {}",
                r.label(),
                self.ends(r)
            );
        }
        let _ = writeln!(
            out,
            "# HELP gridhub_calls_busy_seconds_total Time the calls service spent working; its rate is how busy it is (1 = saturated).\n# TYPE gridhub_calls_busy_seconds_total counter\ngridhub_calls_busy_seconds_total {}",
            self.calls_busy_us.load(Relaxed) as f64 / 1e6
        );
        self.store_commit_latency.render(
            &mut out,
            "gridhub_store_commit_seconds",
            "Store batch write and commit time.",
        );
        self.call_relay_latency.render(
            &mut out,
            "gridhub_call_relay_seconds",
            "Call signaling: request decoded to the message queued for the other party.",
        );
        self.analysis_latency.render(
            &mut out,
            "gridhub_analysis_seconds",
            "Analysis request: reading the stored orders and computing the answer.",
        );
        self.push_latency.render(
            &mut out,
            "gridhub_order_push_seconds",
            "Order request received to commit and push to the holder.",
        );
        self.request_latency.render(
            &mut out,
            "gridhub_request_duration_seconds",
            "WebSocket request handling time, decode to reply.",
        );
        self.presence_fanout_latency.render(
            &mut out,
            "gridhub_presence_fanout_seconds",
            "Presence change received to delta written to subscribers.",
        );
        let p = ProcessStats::read();
        gauge(
            &mut out,
            "process_resident_memory_bytes",
            "Resident set size.",
            p.rss_bytes as f64,
        );
        let _ = writeln!(
            out,
            "# HELP process_cpu_seconds_total User and system CPU time.\n# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {}",
            p.cpu_seconds
        );
        gauge(
            &mut out,
            "process_open_fds",
            "Open file descriptors.",
            p.open_fds as f64,
        );
        gauge(
            &mut out,
            "process_max_fds",
            "Open-file limit.",
            open_file_limit() as f64,
        );
        gauge(&mut out, "process_threads", "OS threads.", p.threads as f64);
        out
    }
}

/// What /proc says about this process.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessStats {
    pub rss_bytes: u64,
    pub cpu_seconds: f64,
    pub open_fds: u64,
    pub threads: u64,
}

impl ProcessStats {
    pub fn read() -> ProcessStats {
        let mut s = ProcessStats::default();
        // SAFETY: sysconf only reads a system constant.
        let (page, ticks) = unsafe {
            (
                libc::sysconf(libc::_SC_PAGESIZE).max(1) as u64,
                libc::sysconf(libc::_SC_CLK_TCK).max(1) as f64,
            )
        };
        if let Ok(statm) = std::fs::read_to_string("/proc/self/statm")
            && let Some(rss) = statm
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        {
            s.rss_bytes = rss * page;
        }
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the parenthesised command name, which may itself contain spaces.
            if let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) {
                let f: Vec<&str> = rest.split_whitespace().collect();
                let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
                s.cpu_seconds = (num(11) + num(12)) as f64 / ticks;
                s.threads = num(17);
            }
        }
        s.open_fds = std::fs::read_dir("/proc/self/fd")
            .map(|d| d.count() as u64)
            .unwrap_or(0);
        s
    }
}

/// The soft open-file limit (RLIMIT_NOFILE) of this process.
pub fn open_file_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and has no other effect.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur
    } else {
        1024
    }
}

/// Installs the global tracing subscriber. `RUST_LOG` wins over the configured filter.
pub fn init_logging(filter: &str, json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    // A second init (tests, `demo`) keeps the first subscriber; that is fine.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(10));
        let mut s = String::new();
        h.render(&mut s, "x", "help");
        assert!(s.contains("x_bucket{le=\"0.0001\"} 1\n"));
        assert!(s.contains("x_bucket{le=\"0.005\"} 2\n"));
        assert!(s.contains("x_bucket{le=\"2.5\"} 2\n"));
        assert!(s.contains("x_bucket{le=\"+Inf\"} 3\n"));
        assert!(s.contains("x_count 3\n"));
    }

    #[test]
    fn process_stats_are_read() {
        let p = ProcessStats::read();
        assert!(p.rss_bytes > 0 && p.open_fds > 0 && p.threads > 0);
        assert!(open_file_limit() > 0);
        let text = Metrics::default().render();
        assert!(text.contains("process_resident_memory_bytes "));
        assert!(text.contains("gridhub_connections_closed_total{reason=\"slow_consumer\"} 0"));
    }
}

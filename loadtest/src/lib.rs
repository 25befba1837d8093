//! loadtest — scenarios that prove gridhub's targets against a running hub.
//!
//! Every scenario is bounded in count and time, refuses non-loopback targets unless told
//! otherwise, reads the hub's own figures (RSS, CPU) from `/metrics`, and writes a JSON summary.

pub mod calls;
pub mod compare;
pub mod connect;
pub mod failover;
pub mod fanout;
pub mod fleet;
pub mod hubstats;
pub mod orders;
pub mod presence;
pub mod redis;
pub mod report;
pub mod run;
pub mod scale;
pub mod sessions;
pub mod soak;
pub mod storm;
pub mod terminal;
#[doc(hidden)]
pub mod testhub;
pub mod timeline;

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Why a connection to the hub ended, and what to change: the close code and reason the hub
/// sent (docs/protocol.md, "Close codes"), or that it sent none.
pub fn why_closed(frame: Option<&tokio_tungstenite::tungstenite::protocol::CloseFrame>) -> String {
    let Some(f) = frame else {
        return "the connection ended without a close frame: the hub exited or was killed, or \
                the network broke; see the hub's log"
            .into();
    };
    let code = u16::from(f.code);
    let said = format!("closed by the hub with {code} ({:?})", f.reason.as_str());
    let hint = match code {
        1001 => "the hub is shutting down; run again once it is back",
        1002 | 1007 | 1009 => "the hub says the harness broke the protocol: a harness bug",
        1008 => {
            "too many refused requests on one connection: the hub's per-connection rate limit \
             (transport.rate_per_sec, rate_burst) is below this scenario's pace; raise both \
             (GRIDHUB_TRANSPORT__RATE_PER_SEC=1000000 GRIDHUB_TRANSPORT__RATE_BURST=1000000, \
             as the scripts/bench-* do) or slow the scenario down"
        }
        4000 => {
            "heartbeats went unanswered: the machine is too busy for this load; give the hub \
             and the harness a CPU each (taskset) or lower the load"
        }
        4001 => {
            "replaced by a newer connection with the same credential and seat: is another \
             harness running against this hub?"
        }
        4002 => {
            "the harness read too slowly and the hub's send queue for it overflowed: give the \
             harness a CPU of its own, or raise transport.send_queue_frames"
        }
        4003 => "the harness's credential expired: the run outlived auth.default_ttl_secs",
        _ => "see docs/protocol.md, Close codes",
    };
    format!("{said}: {hint}")
}

/// What to change when the hub refuses one of the scenario's requests for its pace: a refused
/// request is lost work, so the run cannot count on finishing. `None` for any other error.
pub fn refused_for_pace(error_frame: &str) -> Option<String> {
    if !error_frame.contains(r#""code":"rate_limited""#) {
        return None;
    }
    let said = serde_json::from_str::<serde_json::Value>(error_frame)
        .ok()
        .and_then(|v| v["data"]["message"].as_str().map(str::to_owned))
        .unwrap_or_default();
    Some(format!(
        "the hub refused a request as rate_limited ({said}): its per-connection rate limit \
         (transport.rate_per_sec, rate_burst) is below this scenario's pace; raise both \
         (GRIDHUB_TRANSPORT__RATE_PER_SEC=1000000 GRIDHUB_TRANSPORT__RATE_BURST=1000000, as the \
         scripts/bench-* do) or slow the scenario down"
    ))
}

/// Where the hub is and how to sign credentials for it.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub secret: Vec<u8>,
}

impl Target {
    /// Checks the loopback rule: load goes to 127.0.0.0/8 (or ::1) unless `allow_remote`.
    pub fn new(addr: SocketAddr, secret: Vec<u8>, allow_remote: bool) -> Result<Target, String> {
        if !addr.ip().is_loopback() && !allow_remote {
            return Err(format!(
                "{addr} is not a loopback address; pass --allow-remote to load another machine"
            ));
        }
        Ok(Target { addr, secret })
    }
}

/// Errors the terminals of a scenario saw: how many, and the first few for the report.
#[derive(Default)]
pub struct ErrorLog {
    count: AtomicU64,
    first: Mutex<Vec<String>>,
}

impl ErrorLog {
    const KEPT: usize = 10;
    const KEPT_CHARS: usize = 300;

    pub fn record(&self, what: &str) {
        self.count.fetch_add(1, Relaxed);
        let mut f = self.first.lock().unwrap_or_else(|e| e.into_inner());
        if f.len() < Self::KEPT {
            f.push(what.chars().take(Self::KEPT_CHARS).collect());
        }
    }

    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    pub fn first(&self) -> Vec<String> {
        self.first.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        }
    }
}

/// Microseconds on the machine's monotonic clock. Every process on the machine reads the same
/// clock, so a stamp written into a message by one worker process and read on arrival by another
/// gives the message's time in flight.
pub fn mono_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

/// A histogram in the HDR V2 compressed form, base64: how worker processes hand theirs over.
pub fn encode_histogram(h: &Histogram<u64>) -> String {
    use base64::Engine;
    use hdrhistogram::serialization::{Serializer, V2DeflateSerializer};
    let mut bytes = Vec::new();
    // Serializing into a Vec cannot fail for a histogram of u64 counts.
    let _ = V2DeflateSerializer::new().serialize(h, &mut bytes);
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The inverse of `encode_histogram`.
pub fn decode_histogram(text: &str) -> Result<Histogram<u64>, String> {
    use base64::Engine;
    use hdrhistogram::serialization::Deserializer;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| format!("histogram: {e}"))?;
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| format!("histogram: {e:?}"))
}

/// Adds `from` into `into`; both have `histogram()`'s bounds, so nothing is out of range.
pub fn merge(into: &mut Histogram<u64>, from: &Histogram<u64>) {
    let _ = into.add(from);
}

/// The median of `v` (the mean of the middle two for an even count); NaN for none.
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// The 99th percentile in milliseconds; NaN for an empty histogram, so that no "under a
/// target" verdict can pass on nothing.
pub fn p99_ms(h: &Histogram<u64>) -> f64 {
    if h.is_empty() {
        return f64::NAN;
    }
    h.value_at_quantile(0.99) as f64 / 1000.0
}

/// A histogram of microseconds from 1 µs to 60 s at 3 significant figures.
pub fn histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Records a duration; one past the histogram's 60 s is recorded as 60 s rather than lost.
pub fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record((d.as_micros() as u64).max(1));
}

/// CPU time of the whole machine (all CPUs), in seconds: (busy, idle).
/// The share of the machine's CPU time (all cores) spent busy over `over`: how much else is
/// running before a scenario starts.
pub fn machine_busy(over: Duration) -> f64 {
    let (b0, i0) = machine_cpu();
    std::thread::sleep(over);
    let (b1, i1) = machine_cpu();
    let (busy, idle) = (b1 - b0, i1 - i0);
    if busy + idle <= 0.0 {
        0.0
    } else {
        busy / (busy + idle)
    }
}

pub fn machine_cpu() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let idle = f.get(3).copied().unwrap_or(0.0) + f.get(4).copied().unwrap_or(0.0);
    let total: f64 = f.iter().take(8).sum();
    ((total - idle) / hz, idle / hz)
}

/// This process's own CPU seconds.
pub fn own_cpu() -> f64 {
    proc_cpu("self")
}

/// CPU seconds of the process `pid` (a number, or `self`); 0 once it has gone.
pub fn proc_cpu(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    stat.rfind(')')
        .map(|i| &stat[i + 2..])
        .map(|rest| {
            // Fields from the state on: utime and stime are the 12th and 13th. (The state is a
            // letter: parsing every field as a number and dropping the rest shifted them.)
            let f: Vec<&str> = rest.split_whitespace().collect();
            let field = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            (field(11) + field(12)) / hz
        })
        .unwrap_or(0.0)
}

/// Resident memory of the process `pid` in bytes; 0 once it has gone.
pub fn proc_rss(pid: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb * 1024.0)
}

/// What machine produced the figures.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPUs on the machine.
    pub cpus: usize,
    /// CPUs this load generator may run on (fewer when pinned with taskset).
    pub cpus_for_loadtest: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub memory_gib: f64,
}

impl Machine {
    pub fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kb: f64 = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        Machine {
            cpus: cpuinfo
                .lines()
                .filter(|l| l.starts_with("processor"))
                .count(),
            cpus_for_loadtest: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            memory_gib: (mem_kb / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_close_says_its_code_its_reason_and_what_to_change() {
        use super::why_closed;
        use tokio_tungstenite::tungstenite::protocol::CloseFrame;
        use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
        let f = CloseFrame {
            code: CloseCode::Policy,
            reason: "too many bad requests".into(),
        };
        let m = why_closed(Some(&f));
        assert!(
            m.contains("1008") && m.contains("too many bad requests"),
            "{m}"
        );
        assert!(m.contains("GRIDHUB_TRANSPORT__RATE_PER_SEC"), "{m}");
        let f = CloseFrame {
            code: CloseCode::from(4002),
            reason: "slow consumer".into(),
        };
        assert!(why_closed(Some(&f)).contains("send_queue_frames"));
        assert!(why_closed(None).contains("without a close frame"));
    }

    #[test]
    fn a_request_refused_for_its_pace_says_what_to_raise() {
        let e = r#"{"v":1,"type":"error","re":"c7","data":{"code":"rate_limited","message":"more than 50 messages per second; this one was not processed"}}"#;
        let m = super::refused_for_pace(e).unwrap();
        assert!(
            m.contains("more than 50 messages per second") && m.contains("transport.rate_per_sec"),
            "{m}"
        );
        let other = r#"{"v":1,"type":"error","re":"c7","data":{"code":"not_found","message":"no order 7"}}"#;
        assert_eq!(super::refused_for_pace(other), None);
    }

    /// Worker processes hand over their histograms encoded; merged, they give the percentiles
    /// of all the values together, as if one process had recorded them.
    #[test]
    fn histograms_survive_encoding_and_merge_exactly() {
        let (mut a, mut b, mut all) = (super::histogram(), super::histogram(), super::histogram());
        for v in 1..=1000u64 {
            let h = if v % 3 == 0 { &mut a } else { &mut b };
            h.record(v * 37).unwrap();
            all.record(v * 37).unwrap();
        }
        let mut merged = super::decode_histogram(&super::encode_histogram(&a)).unwrap();
        super::merge(
            &mut merged,
            &super::decode_histogram(&super::encode_histogram(&b)).unwrap(),
        );
        assert_eq!(merged.len(), 1000);
        for q in [0.5, 0.9, 0.99, 1.0] {
            assert_eq!(
                merged.value_at_quantile(q),
                all.value_at_quantile(q),
                "q {q}"
            );
        }
        assert!(super::decode_histogram("not base64!").is_err());
        assert!(super::decode_histogram("AAAA").is_err());
    }

    #[test]
    fn the_monotonic_clock_moves_forward() {
        let a = super::mono_us();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let b = super::mono_us();
        assert!(b >= a + 4_000, "{a} → {b}");
    }

    #[test]
    fn the_machine_busy_share_is_a_share() {
        let b = super::machine_busy(std::time::Duration::from_millis(50));
        assert!((0.0..=1.0).contains(&b), "{b}");
    }

    /// Spinning is counted: 0.2 CPU-seconds of it show, however long a busy machine takes to
    /// give them (bounded at 60 s of wall time, where a broken reading would stop).
    #[test]
    fn own_cpu_counts_user_time() {
        let t0 = super::own_cpu();
        let start = std::time::Instant::now();
        let mut x = 0u64;
        let mut used = 0.0;
        while used < 0.2 && start.elapsed() < std::time::Duration::from_secs(60) {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            used = super::own_cpu() - t0;
        }
        assert!(
            used >= 0.2,
            "{used} CPU-seconds counted for {:?} of spinning",
            start.elapsed()
        );
    }
}

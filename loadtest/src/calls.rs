//! `loadtest calls`: every terminal of the tree connected, then storms of concurrent calls —
//! village stations calling one of their grid workers and workers calling their station, all at
//! once — with synthetic SDP and trickled candidates, a renegotiation, and a hang-up.
//!
//! Measured: invite → `call.ringing` at the caller (two relays and the callee's answer), and the
//! one-way relay latency of every message that carries its send time (the offer and answer
//! carry it in the SDP `o=` line, candidates in their foundation). Checked: every relayed
//! message arrives, at the right terminal, in the order sent.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use gridhub::auth::{Authority, Role};
use gridhub::org::{NodeIdx, Org, Tier};
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::hubstats::{HubStats, http_get, scrape};
use crate::terminal::{Ws, hold, open};
use crate::{ErrorLog, Machine, Percentiles, Target, histogram};

#[derive(Clone, Debug)]
pub struct CallsOptions {
    /// Calls at once in each storm (at most one per village station).
    pub pairs: usize,
    /// Storms, one after another.
    pub rounds: usize,
    /// ICE candidates each side trickles per call.
    pub candidates: usize,
    /// Handshakes in flight at once while connecting.
    pub concurrency: usize,
    pub pacing: Pacing,
    /// Connect only the terminals in calls, not the whole tree (quick runs, tests).
    pub pairs_only: bool,
    /// Callees (and the terminals not in calls) on this node of a cluster, callers on the
    /// target: every signal crosses between nodes.
    pub callee_hub: Option<std::net::SocketAddr>,
}

/// How the calls of a storm are spread in time. All zero: every message of every call is sent
/// the moment it may be — the hardest burst. Otherwise: invites spread over `spread`, callees
/// picking up within `answer_within`, candidates `trickle` apart (as ICE gathers them).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Pacing {
    #[serde(serialize_with = "ms")]
    pub spread: Duration,
    #[serde(serialize_with = "ms")]
    pub answer_within: Duration,
    #[serde(serialize_with = "ms")]
    pub trickle: Duration,
}

fn ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

#[derive(Debug, Serialize)]
pub struct CallsTargets {
    pub relay_p99_under_5ms: bool,
    pub nothing_lost_or_misrouted: bool,
}

#[derive(Debug, Serialize)]
pub struct CallsSummary {
    pub scenario: &'static str,
    pub machine: Machine,
    pub terminals: usize,
    pub pairs: usize,
    pub rounds: usize,
    pub candidates_per_side: usize,
    pub pacing: Pacing,
    pub calls_completed: u64,
    pub calls_failed: u64,
    /// Relayed messages that carried their send time, received.
    pub relayed: u64,
    pub expected_relayed: u64,
    pub lost: u64,
    pub misrouted: u64,
    pub out_of_order: u64,
    pub errors: u64,
    pub first_errors: Vec<String>,
    pub invite_to_ringing: Percentiles,
    /// One way, terminal to terminal: the hub, both kernels' TCP and the load generator.
    pub relay: Percentiles,
    /// By kind of message, in `KINDS` order.
    pub relay_by_kind: Vec<Percentiles>,
    /// The hub's own share, from its `gridhub_call_relay_seconds` histogram.
    pub hub_relay: BucketFigures,
    /// Each storm: from the start signal to the last call ended.
    pub storm_s: Vec<f64>,
    pub hub_cpu_s: f64,
    pub loadtest_cpu_s: f64,
    pub hub_calls_placed: f64,
    pub hub_call_signals: f64,
    pub hub_before: HubStats,
    pub hub_after: HubStats,
    pub targets: CallsTargets,
}

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Kinds of relayed message, for latency by kind.
const OFFER: usize = 0;
const ANSWER: usize = 1;
const CANDIDATE: usize = 2;
const RENEGOTIATION: usize = 3;
pub const KINDS: [&str; 4] = [
    "offer (call.incoming)",
    "answer (call.accepted)",
    "candidates",
    "renegotiation",
];

/// Stands for the send time in a message being built; replaced just before it is sent.
const MARK: &str = "@T@";

/// Microseconds since the run began: the send time carried in messages (one process, one clock).
fn now_us() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// An SDP the size and shape of a browser's audio+video offer; the hub relays it unread. The
/// `o=` line carries the pair and the send time.
fn sdp(pair: usize, sent_us: &str, answer: bool) -> String {
    let setup = if answer { "active" } else { "actpass" };
    let mut s = format!(
        "v=0\r\no=- {sent_us} {pair} IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
         a=group:BUNDLE 0 1\r\na=extmap-allow-mixed\r\na=msid-semantic: WMS grid\r\n"
    );
    for (mid, kind, pts) in [
        (0, "audio", "111 63 9 0 8 13 110 126"),
        (1, "video", "96 97 98 99 100 101 45 46"),
    ] {
        s.push_str(&format!(
            "m={kind} 9 UDP/TLS/RTP/SAVPF {pts}\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\n\
             a=ice-ufrag:g{pair:05}\r\na=ice-pwd:gridhubloadtestpassword{pair:08}\r\na=ice-options:trickle\r\n\
             a=fingerprint:sha-256 4F:2A:19:C0:7B:55:E1:9D:33:0A:6E:B2:81:F4:5C:27:99:1D:AB:3E:60:C8:72:05:DE:14:9A:B7:46:E3:0F:88\r\n\
             a=setup:{setup}\r\na=mid:{mid}\r\na=sendrecv\r\na=msid:grid {kind}-track\r\na=rtcp-mux\r\na=rtcp-rsize\r\n"
        ));
        for pt in pts.split(' ') {
            s.push_str(&format!(
                "a=rtpmap:{pt} {}/90000\r\na=rtcp-fb:{pt} nack\r\na=fmtp:{pt} level-asymmetry-allowed=1\r\n",
                if kind == "audio" { "opus" } else { "VP8" }
            ));
        }
    }
    s
}

/// The send time and pair carried in an SDP's `o=` line.
fn sdp_stamp(sdp: &str) -> Option<(u64, usize)> {
    let line = sdp.lines().find(|l| l.starts_with("o="))?;
    let mut f = line.split(' ').skip(1);
    Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
}

/// A host candidate: the foundation carries the send time, the address the pair, the port the
/// sequence number.
fn candidate(pair: usize, seq: usize, sent_us: &str) -> Value {
    json!({
        "candidate": format!(
            "candidate:{sent_us} 1 udp 2130706431 10.{}.{}.1 {} typ host generation 0",
            pair / 256,
            pair % 256,
            40_000 + seq
        ),
        "sdpMid": "0",
        "sdpMLineIndex": 0
    })
}

/// (send time, pair, sequence) from a candidate made by `candidate`.
fn candidate_stamp(c: &Value) -> Option<(u64, usize, usize)> {
    let s = c["candidate"].as_str()?;
    let f: Vec<&str> = s.split(' ').collect();
    let sent = f.first()?.strip_prefix("candidate:")?.parse().ok()?;
    let ip: Vec<usize> = f
        .get(4)?
        .split('.')
        .filter_map(|x| x.parse().ok())
        .collect();
    let pair = ip.get(1)? * 256 + ip.get(2)?;
    let seq = f.get(5)?.parse::<usize>().ok()?.checked_sub(40_000)?;
    Some((sent, pair, seq))
}

#[derive(Default)]
struct Shared {
    errors: ErrorLog,
    misrouted: AtomicU64,
    out_of_order: AtomicU64,
    relayed: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    Caller,
    Callee,
}

struct Bot {
    ws: Ws,
    side: Side,
    pair: usize,
    /// The other party's node id.
    peer: String,
    k: usize,
    pacing: Pacing,
    shared: Arc<Shared>,
    relay: Histogram<u64>,
    /// The same, by kind of message (`KINDS`).
    by_kind: [Histogram<u64>; 4],
    ringing: Histogram<u64>,
}

/// One round's progress at one bot.
#[derive(Default)]
struct Round {
    call: Option<u64>,
    invited_us: u64,
    /// Candidates received from the peer, and whether its end-of-candidates came.
    got: usize,
    got_end: bool,
    /// The caller's renegotiation: offered, and answered.
    reoffered: bool,
    reanswered: bool,
    sent_candidates: bool,
    hung_up: bool,
    /// Candidates (and the end-of-candidates) this side still has to send, and when the next
    /// is due.
    to_send: usize,
    next_cand: Option<tokio::time::Instant>,
    /// When the callee picks up.
    accept_at: Option<tokio::time::Instant>,
}

impl Bot {
    async fn send(&mut self, v: Value) -> Result<(), String> {
        self.ws
            .send(Message::text(v.to_string()))
            .await
            .map_err(|e| format!("send: {e}"))
    }

    /// Sends a message whose send time is still `MARK`: the time is taken after the message is
    /// built, so that the load generator's own work does not count as relay time.
    async fn send_stamped(&mut self, v: Value) -> Result<u64, String> {
        let text = v.to_string();
        let t = now_us();
        let text = text.replacen(MARK, &t.to_string(), 1);
        self.ws
            .send(Message::text(text))
            .await
            .map_err(|e| format!("send: {e}"))?;
        Ok(t)
    }

    fn relayed(&mut self, kind: usize, sent_us: u64) {
        let us = now_us().saturating_sub(sent_us).max(1);
        let _ = self.relay.record(us);
        let _ = self.by_kind[kind].record(us);
        self.shared.relayed.fetch_add(1, Relaxed);
    }

    /// Starts trickling this side's candidates (and then its end-of-candidates).
    fn start_trickle(&self, r: &mut Round) {
        r.to_send = self.k + 1;
        r.next_cand = Some(tokio::time::Instant::now());
    }

    /// Whatever a timer says is due: the callee's answer, the next candidate.
    async fn on_timer(&mut self, r: &mut Round) -> Result<(), String> {
        let now = tokio::time::Instant::now();
        let call = r.call.ok_or("a timer before the call")?;
        if r.accept_at.is_some_and(|t| t <= now) {
            r.accept_at = None;
            let answer = sdp(self.pair, MARK, true);
            self.send_stamped(
                json!({"v":1,"type":"call.accept","data":{"call":call,"answer":answer}}),
            )
            .await?;
            self.start_trickle(r);
        }
        if r.next_cand.is_some_and(|t| t <= now) {
            let seq = self.k + 1 - r.to_send;
            if seq < self.k {
                let c = candidate(self.pair, seq, MARK);
                self.send_stamped(
                    json!({"v":1,"type":"call.signal","data":{"call":call,"candidate":c}}),
                )
                .await?;
            } else {
                self.send(
                    json!({"v":1,"type":"call.signal","data":{"call":call,"end_of_candidates":true}}),
                )
                .await?;
            }
            r.to_send -= 1;
            r.next_cand = (r.to_send > 0).then(|| now + self.pacing.trickle);
            if r.to_send == 0 {
                r.sent_candidates = true;
                if self.side == Side::Caller {
                    // A renegotiation, as after a network change.
                    let offer = sdp(self.pair, MARK, false);
                    self.send_stamped(json!({"v":1,"type":"call.signal","data":{"call":call,
                        "description":{"type":"offer","sdp":offer}}}))
                        .await?;
                    r.reoffered = true;
                }
            }
        }
        Ok(())
    }

    /// Plays one call to its end. `Ok(true)` when it completed as it should.
    async fn round(&mut self, round: usize) -> Result<bool, String> {
        let mut r = Round::default();
        let invite_id = format!("i{round}");
        if self.side == Side::Caller {
            tokio::time::sleep(jitter(self.pair, round, 1, self.pacing.spread)).await;
            let offer = sdp(self.pair, MARK, false);
            r.invited_us = self
                .send_stamped(json!({"v":1,"id":invite_id,"type":"call.invite",
                "data":{"to":self.peer,"media":"video","offer":offer}}))
                .await?;
        }
        loop {
            let due = match (r.accept_at, r.next_cand) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let m = tokio::select! {
                m = self.ws.next() => m,
                _ = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() => {
                    self.on_timer(&mut r).await?;
                    continue;
                }
            };
            let m = match m {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Close(f))) => return Err(crate::why_closed(f.as_ref())),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(format!("read: {e}")),
                None => return Err(crate::why_closed(None)),
            };
            let v: Value = serde_json::from_str(&m).map_err(|e| format!("json: {e}"))?;
            let d = &v["data"];
            match v["type"].as_str().unwrap_or("") {
                "reply" if v["re"] == invite_id.as_str() => r.call = d["call"].as_u64(),
                "error" => {
                    self.shared
                        .errors
                        .record(&format!("{:?} pair {}: {m}", self.side, self.pair));
                    if v["re"] == invite_id.as_str() {
                        return Ok(false);
                    }
                }
                "call.incoming" => {
                    let call = d["call"].as_u64().ok_or("incoming without call")?;
                    let stamp = d["offer"].as_str().and_then(sdp_stamp);
                    if d["from"]["id"] != self.peer.as_str()
                        || stamp.map(|s| s.1) != Some(self.pair)
                    {
                        self.shared.misrouted.fetch_add(1, Relaxed);
                    }
                    if let Some((sent, _)) = stamp {
                        self.relayed(OFFER, sent);
                    }
                    r.call = Some(call);
                    self.send(json!({"v":1,"type":"call.ring","data":{"call":call}}))
                        .await?;
                    // People take a moment to pick up.
                    r.accept_at = Some(
                        tokio::time::Instant::now()
                            + jitter(self.pair, round, 2, self.pacing.answer_within),
                    );
                }
                "call.ringing" => {
                    let _ = self
                        .ringing
                        .record(now_us().saturating_sub(r.invited_us).max(1));
                }
                "call.accepted" => {
                    if r.call.is_none() {
                        return Err("accepted before the invite's reply".into());
                    }
                    match d["answer"].as_str().and_then(sdp_stamp) {
                        Some((sent, pair)) if pair == self.pair => self.relayed(ANSWER, sent),
                        _ => {
                            self.shared.misrouted.fetch_add(1, Relaxed);
                        }
                    }
                    self.start_trickle(&mut r);
                }
                "call.signal" => {
                    if d["call"].as_u64() != r.call {
                        self.shared.misrouted.fetch_add(1, Relaxed);
                        continue;
                    }
                    if let Some(c) = d.get("candidate") {
                        match candidate_stamp(c) {
                            Some((sent, pair, seq)) if pair == self.pair => {
                                if seq != r.got {
                                    self.shared.out_of_order.fetch_add(1, Relaxed);
                                }
                                r.got += 1;
                                self.relayed(CANDIDATE, sent);
                            }
                            _ => {
                                self.shared.misrouted.fetch_add(1, Relaxed);
                            }
                        }
                    } else if d["end_of_candidates"] == true {
                        if r.got != self.k {
                            self.shared.out_of_order.fetch_add(1, Relaxed);
                        }
                        r.got_end = true;
                    } else if let Some(desc) = d.get("description") {
                        match desc["sdp"].as_str().and_then(sdp_stamp) {
                            Some((sent, pair)) if pair == self.pair => {
                                self.relayed(RENEGOTIATION, sent)
                            }
                            _ => {
                                self.shared.misrouted.fetch_add(1, Relaxed);
                            }
                        }
                        if desc["type"] == "offer" {
                            let call = r.call.ok_or("offer before the call")?;
                            let answer = sdp(self.pair, MARK, true);
                            self.send_stamped(
                                json!({"v":1,"type":"call.signal","data":{"call":call,
                                "description":{"type":"answer","sdp":answer}}}),
                            )
                            .await?;
                        } else {
                            r.reanswered = true;
                        }
                    }
                }
                "call.ended" => {
                    let completed = d["outcome"] == "completed" && d["call"].as_u64() == r.call;
                    if !completed {
                        self.shared
                            .errors
                            .record(&format!("{:?} pair {}: ended {d}", self.side, self.pair));
                    }
                    if self.side == Side::Callee && !(r.got_end && r.got == self.k) {
                        self.shared.out_of_order.fetch_add(1, Relaxed);
                    }
                    return Ok(completed);
                }
                _ => {}
            }
            if self.side == Side::Caller
                && !r.hung_up
                && r.sent_candidates
                && r.got_end
                && r.reoffered
                && r.reanswered
                && let Some(call) = r.call
            {
                r.hung_up = true;
                self.send(json!({"v":1,"type":"call.hangup","data":{"call":call}}))
                    .await?;
            }
        }
    }
}

/// A deterministic spread in `[0, max)` for one pair, round and purpose.
fn jitter(pair: usize, round: usize, salt: u64, max: Duration) -> Duration {
    let ms = max.as_millis() as u64;
    if ms == 0 {
        return Duration::ZERO;
    }
    // splitmix64: cheap and well spread.
    let mut x = (pair as u64) << 32 ^ (round as u64) << 8 ^ salt;
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    Duration::from_millis(x % ms)
}

/// A bot plays every round it is told to start, reporting each call's end.
async fn run_bot(
    mut bot: Bot,
    mut start: watch::Receiver<usize>,
    done: mpsc::UnboundedSender<bool>,
    stop: CancellationToken,
) -> (Histogram<u64>, [Histogram<u64>; 4], Histogram<u64>) {
    let mut played = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            changed = start.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
        let round = *start.borrow_and_update();
        while played < round {
            played += 1;
            let ok = match bot.round(played).await {
                Ok(ok) => ok,
                Err(e) => {
                    bot.shared
                        .errors
                        .record(&format!("{:?} pair {}: {e}", bot.side, bot.pair));
                    false
                }
            };
            let _ = done.send(ok);
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), bot.ws.close(None)).await;
    (bot.relay, bot.by_kind, bot.ringing)
}

/// Figures from a Prometheus histogram's buckets: quantiles are bucket upper bounds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct BucketFigures {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_le_ms: f64,
    pub p99_le_ms: f64,
}

/// The histogram `name` between two scrapes.
fn bucket_figures(before: &str, after: &str, name: &str) -> BucketFigures {
    let buckets = |text: &str| -> Vec<(f64, f64)> {
        let prefix = format!("{name}_bucket{{le=\"");
        text.lines()
            .filter_map(|l| l.strip_prefix(prefix.as_str()))
            .filter_map(|rest| {
                let (le, n) = rest.split_once("\"} ")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, n.trim().parse().ok()?))
            })
            .collect()
    };
    let (b0, b1) = (buckets(before), buckets(after));
    let delta: Vec<(f64, f64)> = b1
        .iter()
        .map(|&(le, n)| {
            let old = b0.iter().find(|x| x.0 == le).map_or(0.0, |x| x.1);
            (le, n - old)
        })
        .collect();
    let count = delta.last().map_or(0.0, |x| x.1);
    let q = |q: f64| {
        delta
            .iter()
            .find(|&&(_, n)| count > 0.0 && n >= q * count)
            .map_or(f64::NAN, |&(le, _)| le * 1000.0)
    };
    let sum = metric(after, &format!("{name}_sum")) - metric(before, &format!("{name}_sum"));
    BucketFigures {
        count: count as u64,
        mean_ms: if count > 0.0 {
            sum / count * 1000.0
        } else {
            f64::NAN
        },
        p50_le_ms: q(0.5),
        p99_le_ms: q(0.99),
    }
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(f64::NAN)
}

/// Village stations and one worker of each: `pairs` disjoint pairs, half of them placed by the
/// station and half by the worker.
fn pairs(org: &Org, n: usize) -> Vec<(NodeIdx, NodeIdx)> {
    org.nodes()
        .filter(|(_, node)| node.tier == Tier::Village)
        .filter_map(|(v, _)| {
            let w = *org.children(v).first()?;
            (org.tier(w) == Tier::Worker).then_some((v, w))
        })
        .take(n)
        .enumerate()
        .map(|(i, (v, w))| if i % 2 == 0 { (v, w) } else { (w, v) })
        .collect()
}

pub async fn run(
    target: &Target,
    org: Arc<Org>,
    opts: &CallsOptions,
) -> Result<CallsSummary, String> {
    now_us();
    let auth = Authority::new(&target.secret)?;
    let now = gridhub::clock::now_ms() / 1000;
    let hub_before = scrape(target.addr).await?;
    let (_, metrics0) = http_get(target.addr, "/metrics").await?;
    let chosen = pairs(&org, opts.pairs);
    if chosen.len() < opts.pairs {
        return Err(format!(
            "the tree has {} village stations with workers; at most that many pairs",
            chosen.len()
        ));
    }
    let mut role_of: HashMap<NodeIdx, (Side, usize)> = HashMap::new();
    for (i, &(a, b)) in chosen.iter().enumerate() {
        role_of.insert(a, (Side::Caller, i));
        role_of.insert(b, (Side::Callee, i));
    }

    // Every terminal of the tree connects; those not in a call hold with heartbeats.
    let sem = Arc::new(Semaphore::new(opts.concurrency.max(1)));
    let mut set = JoinSet::new();
    for (n, _) in org.nodes() {
        if opts.pairs_only && !role_of.contains_key(&n) {
            continue;
        }
        let token = auth
            .mint(
                &org,
                org.id(n).as_str(),
                Role::default_for(org.tier(n)),
                24 * 3600,
                now,
            )
            .map_err(|e| e.to_string())?;
        let (sem, mut target) = (Arc::clone(&sem), target.clone());
        if let Some(addr) = opts.callee_hub
            && !matches!(role_of.get(&n), Some((Side::Caller, _)))
        {
            target.addr = addr;
        }
        set.spawn(async move {
            let _permit = sem.acquire_owned().await.expect("semaphore open");
            let o = open(&target, &token).await?;
            Ok::<_, String>((n, o.ws, o.hello))
        });
    }
    let shared = Arc::new(Shared::default());
    let stop = CancellationToken::new();
    let (start_tx, start_rx) = watch::channel(0usize);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut bots = JoinSet::new();
    let mut holders = JoinSet::new();
    let mut terminals = 0;
    while let Some(j) = set.join_next().await {
        let (n, ws, hello) = j.map_err(|e| e.to_string())??;
        terminals += 1;
        match role_of.get(&n) {
            Some(&(side, pair)) => {
                let (a, b) = chosen[pair];
                let peer = if side == Side::Caller { b } else { a };
                bots.spawn(run_bot(
                    Bot {
                        ws,
                        side,
                        pair,
                        peer: org.id(peer).to_string(),
                        k: opts.candidates,
                        pacing: opts.pacing,
                        shared: Arc::clone(&shared),
                        relay: histogram(),
                        by_kind: std::array::from_fn(|_| histogram()),
                        ringing: histogram(),
                    },
                    start_rx.clone(),
                    done_tx.clone(),
                    stop.clone(),
                ));
            }
            None => {
                let interval = Duration::from_millis(
                    hello["data"]["heartbeat"]["interval_ms"]
                        .as_u64()
                        .unwrap_or(20_000),
                );
                let phase = interval.mul_f64((n.0 % 1000) as f64 / 1000.0);
                let (_tx, rx) = mpsc::channel(1);
                holders.spawn(hold(ws, interval, phase, rx, stop.clone()));
            }
        }
    }

    let cpu0 = scrape(target.addr).await?.cpu_seconds;
    let own0 = crate::own_cpu();
    let mut storm_s = Vec::new();
    for round in 1..=opts.rounds {
        let t0 = Instant::now();
        start_tx.send_replace(round);
        let mut ended = 0;
        while ended < 2 * chosen.len() {
            match tokio::time::timeout(Duration::from_secs(60), done_rx.recv()).await {
                Ok(Some(ok)) => {
                    ended += 1;
                    if ok {
                        shared.completed.fetch_add(1, Relaxed);
                    } else {
                        shared.failed.fetch_add(1, Relaxed);
                    }
                }
                _ => {
                    stop.cancel();
                    return Err(format!(
                        "round {round} stalled: {ended} of {} parties finished; first errors: {:?}",
                        2 * chosen.len(),
                        shared.errors.first()
                    ));
                }
            }
        }
        storm_s.push(t0.elapsed().as_secs_f64());
    }
    let own1 = crate::own_cpu();
    let hub_after = scrape(target.addr).await?;
    stop.cancel();
    let mut relay = histogram();
    let mut by_kind: [Histogram<u64>; 4] = std::array::from_fn(|_| histogram());
    let mut ringing = histogram();
    while let Some(j) = bots.join_next().await {
        let (r, k, g) = j.map_err(|e| e.to_string())?;
        let _ = relay.add(&r);
        for (all, one) in by_kind.iter_mut().zip(&k) {
            let _ = all.add(one);
        }
        let _ = ringing.add(&g);
    }
    while holders.join_next().await.is_some() {}
    let (_, metrics) = http_get(target.addr, "/metrics").await?;
    // Per call: the offer and the answer, each side's candidates, the renegotiation's offer and
    // answer.
    let calls = (chosen.len() * opts.rounds) as u64;
    let expected = calls * (2 + 2 * opts.candidates as u64 + 2);
    let relayed = shared.relayed.load(Relaxed);
    let (misrouted, out_of_order) = (
        shared.misrouted.load(Relaxed),
        shared.out_of_order.load(Relaxed),
    );
    let relay = Percentiles::of(&relay);
    let lost = expected.saturating_sub(relayed);
    let errors = shared.errors.count();
    Ok(CallsSummary {
        scenario: "calls",
        machine: Machine::read(),
        terminals,
        pairs: chosen.len(),
        rounds: opts.rounds,
        candidates_per_side: opts.candidates,
        pacing: opts.pacing,
        calls_completed: shared.completed.load(Relaxed) / 2,
        calls_failed: shared.failed.load(Relaxed),
        relayed,
        expected_relayed: expected,
        lost,
        misrouted,
        out_of_order,
        errors,
        first_errors: shared.errors.first(),
        invite_to_ringing: Percentiles::of(&ringing),
        relay_by_kind: by_kind.iter().map(Percentiles::of).collect(),
        hub_relay: bucket_figures(&metrics0, &metrics, "gridhub_call_relay_seconds"),
        storm_s,
        hub_cpu_s: hub_after.cpu_seconds - cpu0,
        loadtest_cpu_s: own1 - own0,
        hub_calls_placed: metric(&metrics, "gridhub_calls_placed_total")
            - metric(&metrics0, "gridhub_calls_placed_total"),
        hub_call_signals: metric(&metrics, "gridhub_call_signals_total")
            - metric(&metrics0, "gridhub_call_signals_total"),
        hub_before,
        hub_after,
        targets: CallsTargets {
            relay_p99_under_5ms: relay.p99_ms < 5.0,
            nothing_lost_or_misrouted: lost == 0
                && misrouted == 0
                && out_of_order == 0
                && errors == 0,
        },
        relay,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_through_sdp_and_candidates() {
        let s = sdp(731, "123456", false);
        assert_eq!(sdp_stamp(&s), Some((123_456, 731)));
        assert!(s.len() > 2000, "browser-sized: {} bytes", s.len());
        let c = candidate(731, 5, "99");
        assert_eq!(candidate_stamp(&c), Some((99, 731, 5)));
        assert_eq!(candidate_stamp(&json!({"candidate": "candidate:x"})), None);
    }

    #[test]
    fn histogram_deltas_give_bucket_quantiles() {
        let before = "h_bucket{le=\"0.001\"} 10\nh_bucket{le=\"0.005\"} 10\nh_bucket{le=\"+Inf\"} 10\nh_sum 0.005\n";
        let after = "h_bucket{le=\"0.001\"} 60\nh_bucket{le=\"0.005\"} 109\nh_bucket{le=\"+Inf\"} 110\nh_sum 0.205\n";
        let f = bucket_figures(before, after, "h");
        assert_eq!(f.count, 100);
        assert_eq!((f.p50_le_ms, f.p99_le_ms), (1.0, 5.0));
        assert!((f.mean_ms - 2.0).abs() < 1e-9);
    }

    #[test]
    fn pairs_are_disjoint_and_within_scope() {
        let org = Org::load(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../config/org/jiamusi.csv"
        )))
        .unwrap();
        let p = pairs(&org, 1000);
        assert_eq!(p.len(), 1000);
        let mut seen = std::collections::HashSet::new();
        for &(a, b) in &p {
            assert!(seen.insert(a) && seen.insert(b), "disjoint");
            let (v, w) = if org.tier(a) == Tier::Village {
                (a, b)
            } else {
                (b, a)
            };
            assert_eq!(org.parent(w), Some(v));
        }
    }

    /// A few small storms against an in-process hub: every message arrives, in order, at the
    /// right terminal.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn small_storms_lose_nothing() {
        let hub = crate::testhub::TestHub::start("calls", |_| {}).await;
        let opts = CallsOptions {
            callee_hub: None,
            pairs: 40,
            rounds: 2,
            candidates: 3,
            concurrency: 256,
            pacing: Pacing {
                spread: Duration::from_millis(50),
                answer_within: Duration::from_millis(50),
                trickle: Duration::from_millis(2),
            },
            // Only the terminals in calls: the whole tree is the benchmark's.
            pairs_only: true,
        };
        let s = run(&hub.target, hub.org.clone(), &opts).await.unwrap();
        assert_eq!(s.errors, 0, "{:?}", s.first_errors);
        assert_eq!((s.lost, s.misrouted, s.out_of_order), (0, 0, 0));
        assert_eq!(s.calls_completed, 80);
        assert_eq!(s.relayed, s.expected_relayed);
        assert_eq!(s.hub_calls_placed, 80.0);
        assert_eq!(s.invite_to_ringing.count, 80);
        assert_eq!(s.terminals, 80);
        hub.stop().await;
    }
}

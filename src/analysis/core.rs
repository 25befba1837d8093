//! The analysis core: hotspots, causes, similar sites, before and after, and who performs, over
//! the facts of stored orders (one compact row per order), decided without I/O. The shell reads
//! the facts and the site registry from the store and hands them here with the time.

use std::collections::HashMap;

use super::geo::SiteIndex;
use super::stats;
use crate::clock::{civil_from_days, days_from_civil};
use crate::org::{GeoPoint, NodeIdx, Org, Tier};

/// One order as the analysis sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Fact {
    pub id: u64,
    pub created_at: u64,
    pub category: u16,
    pub cause: Option<u16>,
    /// Where the problem is.
    pub node: NodeIdx,
    pub point: Option<GeoPoint>,
    /// The loop closed (archived), as the order statistics count it.
    pub closed: bool,
    /// Never supervised: the result came before the deadline.
    pub on_time: bool,
    pub satisfied: Option<bool>,
    pub reopened: bool,
}

/// Texts (categories, causes) as small numbers, so facts carry no strings.
#[derive(Debug, Default, Clone)]
pub struct Names {
    names: Vec<Box<str>>,
    index: HashMap<Box<str>, u16>,
}

impl Names {
    pub fn intern(&mut self, s: &str) -> u16 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = u16::try_from(self.names.len()).unwrap_or(u16::MAX);
        self.names.push(s.into());
        self.index.insert(s.into(), i);
        i
    }
    pub fn get(&self, s: &str) -> Option<u16> {
        self.index.get(s).copied()
    }
    pub fn name(&self, i: u16) -> &str {
        self.names.get(i as usize).map_or("", |s| s)
    }
}

/// A named place of the registry: a square, a market, a drain.
#[derive(Clone, Debug, PartialEq)]
pub struct Site {
    pub id: u64,
    pub kind: String,
    pub name: String,
    /// The org node responsible for it.
    pub node: NodeIdx,
    pub point: GeoPoint,
    /// Requests within this many metres are the site's (the nearest site wins).
    pub radius_m: f64,
}

/// A half-open span of time, Unix ms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub from: u64,
    pub to: u64,
}

impl Window {
    pub fn len(&self) -> u64 {
        self.to.saturating_sub(self.from)
    }
    pub fn is_empty(&self) -> bool {
        self.to <= self.from
    }
    pub fn holds(&self, t: u64) -> bool {
        self.from <= t && t < self.to
    }
}

/// Each fact's site: the nearest of `sites` whose radius holds its point.
pub fn match_sites(facts: &[Fact], sites: &[Site]) -> Vec<Option<u32>> {
    let index = SiteIndex::new(sites.iter().map(|s| (s.point, s.radius_m)));
    facts
        .iter()
        .map(|f| f.point.and_then(|p| index.nearest(p)))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Hotspots

/// What a hotspot is counted at.
#[derive(Clone, Debug, PartialEq)]
pub enum Unit {
    /// Registered sites (of one kind, or all), requests matched by distance.
    Sites,
    /// Org nodes of one tier, requests counted where the problem is.
    Nodes(Tier),
}

/// What a place's count is compared with.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Baseline {
    /// The median count of the places tested in the same window: places of a kind are alike,
    /// and a place that has drawn requests all along is still found.
    Peers,
    /// The place's own count in up to this many windows of the same length just before:
    /// adjusts for size (a large community always raises more), finds what changed.
    History(u32),
}

#[derive(Clone, Debug)]
pub struct HotspotQuery {
    pub window: Window,
    pub unit: Unit,
    pub baseline: Baseline,
    /// Hotspots are reported at this false-discovery rate (Benjamini–Hochberg).
    pub fdr: f64,
    /// Fewer requests than this in the window is never a hotspot, however rare.
    pub min_count: u64,
    /// Order ids kept as evidence per hotspot, newest first.
    pub evidence: usize,
    /// Nothing before this time is history (the first order stored).
    pub data_from: u64,
}

/// A place that is tested: a site (its index in the list given) or a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Place {
    Site(u32),
    Node(NodeIdx),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Hotspot {
    pub place: Place,
    pub observed: u64,
    pub expected: f64,
    pub ratio: f64,
    pub p_value: f64,
    pub q_value: f64,
    pub evidence: Vec<u64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Hotspots {
    /// Places tested.
    pub tested: usize,
    /// Requests in the window (of the facts given).
    pub requests: u64,
    /// Of those, at none of the places tested (no site near, or above the tier).
    pub unplaced: u64,
    /// Windows of history the baseline used (0 for peers).
    pub history_windows: u32,
    /// The peers' median, when that is the baseline.
    pub peer_median: Option<f64>,
    pub hotspots: Vec<Hotspot>,
    /// Why nothing could be tested, when nothing was.
    pub empty: Option<String>,
}

/// The places of `unit` within `root`, and which of them each fact counts at.
fn places(
    org: &Org,
    root: NodeIdx,
    unit: &Unit,
    facts: &[Fact],
    sites: &[Site],
) -> (Vec<Place>, Vec<Option<u32>>) {
    match unit {
        Unit::Sites => {
            let list: Vec<Place> = (0..sites.len() as u32).map(Place::Site).collect();
            (list, match_sites(facts, sites))
        }
        Unit::Nodes(tier) => {
            let mut list = Vec::new();
            let mut slot = HashMap::new();
            for i in org.subtree(root) {
                let n = NodeIdx(i as u32);
                if org.tier(n) == *tier {
                    slot.insert(n, list.len() as u32);
                    list.push(Place::Node(n));
                }
            }
            let at = facts
                .iter()
                .map(|f| {
                    let up = std::iter::once(f.node).chain(org.ancestors(f.node));
                    up.take_while(|&a| org.tier(a) >= *tier)
                        .find(|&a| org.tier(a) == *tier)
                        .and_then(|a| slot.get(&a).copied())
                })
                .collect();
            (list, at)
        }
    }
}

/// Places with significantly more requests in the window than their baseline, ranked (most
/// significant first). `facts` are those of the category and subtree asked about, over the
/// window and, for a history baseline, the windows before it; `sites` the registry's sites of
/// the kind asked about within the subtree.
pub fn hotspots(
    org: &Org,
    root: NodeIdx,
    facts: &[Fact],
    sites: &[Site],
    q: &HotspotQuery,
) -> Hotspots {
    let mut out = Hotspots {
        tested: 0,
        requests: 0,
        unplaced: 0,
        history_windows: 0,
        peer_median: None,
        hotspots: Vec::new(),
        empty: None,
    };
    let (list, at) = places(org, root, &q.unit, facts, sites);
    if list.is_empty() {
        out.empty = Some(match q.unit {
            Unit::Sites => "no registered site of this kind in this subtree".into(),
            Unit::Nodes(t) => format!("no node of tier {t} in this subtree"),
        });
        return out;
    }
    let len = q.window.len();
    let windows = match q.baseline {
        Baseline::Peers => 0,
        Baseline::History(k) => {
            let room = q.window.from.saturating_sub(q.data_from) / len.max(1);
            k.min(u32::try_from(room).unwrap_or(u32::MAX))
        }
    };
    if matches!(q.baseline, Baseline::History(_)) && windows == 0 {
        out.empty =
            Some("no history before the window: nothing stored a whole window earlier".into());
        return out;
    }
    out.history_windows = windows;
    let history = Window {
        from: q.window.from.saturating_sub(len * windows as u64),
        to: q.window.from,
    };
    let mut now = vec![0u64; list.len()];
    let mut before = vec![0u64; list.len()];
    let mut evidence: Vec<Vec<(u64, u64)>> = vec![Vec::new(); list.len()];
    for (f, p) in facts.iter().zip(&at) {
        let in_window = q.window.holds(f.created_at);
        out.requests += u64::from(in_window);
        match p {
            Some(p) if in_window => {
                now[*p as usize] += 1;
                evidence[*p as usize].push((f.created_at, f.id));
            }
            Some(p) if windows > 0 && history.holds(f.created_at) => before[*p as usize] += 1,
            None if in_window => out.unplaced += 1,
            _ => {}
        }
    }
    let k = f64::from(windows.max(1));
    let expected: Vec<f64> = match q.baseline {
        Baseline::Peers => {
            let m = stats::median(&now);
            out.peer_median = Some(m);
            vec![m.max(0.5); list.len()]
        }
        Baseline::History(_) => before.iter().map(|&b| b as f64 / k).collect(),
    };
    let p: Vec<f64> = (0..list.len())
        .map(|i| {
            let (n, e) = (now[i], expected[i]);
            if n < q.min_count || n as f64 <= e {
                return 1.0;
            }
            match q.baseline {
                // The peers' median as a known rate: the median of many places is steady.
                Baseline::Peers => stats::poisson_at_least(n, e),
                // The place's own history is a count too: the exact conditional test.
                Baseline::History(_) => stats::binomial_at_least(n, n + before[i], 1.0 / (1.0 + k)),
            }
        })
        .collect();
    let qv = stats::benjamini_hochberg(&p);
    out.tested = list.len();
    if out.requests == 0 {
        out.empty = Some("no requests in the window (of this category, in this subtree)".into());
    }
    for i in 0..list.len() {
        if qv[i] <= q.fdr && p[i] < 1.0 {
            let mut ev = std::mem::take(&mut evidence[i]);
            ev.sort_unstable_by(|a, b| b.cmp(a));
            out.hotspots.push(Hotspot {
                place: list[i],
                observed: now[i],
                expected: expected[i],
                // A place with no history counts half a request in it, so the ratio is finite.
                ratio: now[i] as f64 / expected[i].max(0.5 / k),
                p_value: p[i],
                q_value: qv[i],
                evidence: ev.into_iter().take(q.evidence).map(|(_, id)| id).collect(),
            });
        }
    }
    out.hotspots.sort_by(|a, b| {
        a.p_value
            .total_cmp(&b.p_value)
            .then(b.ratio.total_cmp(&a.ratio))
            .then(b.observed.cmp(&a.observed))
    });
    out
}

// ---------------------------------------------------------------------------------------------
// Causes and similar sites

#[derive(Clone, Debug, PartialEq, Default)]
pub struct CauseCounts {
    pub total: u64,
    pub untagged: u64,
    /// Most frequent first (then by name order of the index).
    pub by_cause: Vec<(u16, u64)>,
}

/// Requests by cause among `facts` inside `window`.
pub fn causes<'a>(facts: impl IntoIterator<Item = &'a Fact>, window: Window) -> CauseCounts {
    let mut counts: HashMap<u16, u64> = HashMap::new();
    let mut out = CauseCounts::default();
    for f in facts.into_iter().filter(|f| window.holds(f.created_at)) {
        out.total += 1;
        match f.cause {
            Some(c) => *counts.entry(c).or_default() += 1,
            None => out.untagged += 1,
        }
    }
    out.by_cause = counts.into_iter().collect();
    out.by_cause
        .sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    out
}

#[derive(Clone, Debug, PartialEq)]
pub struct Similar {
    /// Index in the sites given.
    pub site: u32,
    pub similarity: f64,
    pub requests: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SimilarSites {
    /// The cause indices the profiles are over, and the reference's counts on them.
    pub causes: Vec<u16>,
    pub profile: Vec<u64>,
    pub profiles: Vec<Vec<u64>>,
    pub similar: Vec<Similar>,
    pub empty: Option<String>,
}

/// Sites whose requests in `window` have the same mix of causes as `reference`'s (cosine
/// similarity of the cause counts at least `threshold`, and at least `min_requests` tagged),
/// most similar first. `facts` are those of one category.
pub fn similar_sites(
    facts: &[Fact],
    sites: &[Site],
    window: Window,
    reference: u32,
    min_requests: u64,
    threshold: f64,
) -> SimilarSites {
    let at = match_sites(facts, sites);
    let mut cause_list: Vec<u16> = facts
        .iter()
        .filter(|f| window.holds(f.created_at))
        .filter_map(|f| f.cause)
        .collect();
    cause_list.sort_unstable();
    cause_list.dedup();
    let col: HashMap<u16, usize> = cause_list
        .iter()
        .enumerate()
        .map(|(i, &c)| (c, i))
        .collect();
    let mut profiles = vec![vec![0u64; cause_list.len()]; sites.len()];
    for (f, s) in facts.iter().zip(&at) {
        if let (Some(s), Some(c), true) = (s, f.cause, window.holds(f.created_at)) {
            profiles[*s as usize][col[&c]] += 1;
        }
    }
    let mine = profiles
        .get(reference as usize)
        .cloned()
        .unwrap_or_default();
    let mut out = SimilarSites {
        causes: cause_list,
        profile: mine.clone(),
        profiles: Vec::new(),
        similar: Vec::new(),
        empty: None,
    };
    if mine.iter().sum::<u64>() == 0 {
        out.empty =
            Some("the site has no requests with a cause in this window and category".into());
        return out;
    }
    for (i, prof) in profiles.iter().enumerate() {
        let n: u64 = prof.iter().sum();
        if i as u32 == reference || n < min_requests {
            continue;
        }
        let s = stats::cosine(&mine, prof);
        if s >= threshold {
            out.similar.push(Similar {
                site: i as u32,
                similarity: s,
                requests: n,
            });
        }
    }
    out.similar.sort_by(|a, b| {
        b.similarity
            .total_cmp(&a.similarity)
            .then(b.requests.cmp(&a.requests))
    });
    out.profiles = out
        .similar
        .iter()
        .map(|s| profiles[s.site as usize].clone())
        .collect();
    out
}

// ---------------------------------------------------------------------------------------------
// Before and after

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EffectQuery {
    /// When the intervention took effect.
    pub at: u64,
    pub before_ms: u64,
    pub after_ms: u64,
    /// Time after `at` left out, while the change settles in.
    pub settle_ms: u64,
    pub now: u64,
    /// The first request stored: before it there is no rate to measure.
    pub data_from: u64,
    pub level: f64,
    /// The series' bucket length.
    pub bucket_ms: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Effect {
    pub before: Window,
    pub after: Window,
    pub before_count: u64,
    pub after_count: u64,
    /// Requests per day in each.
    pub before_rate: f64,
    pub after_rate: f64,
    /// after/before − 1 (−0.82 is "−82 %"), with its interval; `None` when nothing came before.
    pub change: Option<(f64, f64, f64)>,
    /// Requests per bucket from the start of before to the end of after.
    pub series: Vec<(u64, u64)>,
    pub note: Option<String>,
}

const DAY_MS: u64 = 86_400_000;

/// The request rate before and after an intervention, from the times of the requests at its
/// places (already filtered to its sites or subtree and category).
pub fn effect(times: &[u64], q: &EffectQuery) -> Effect {
    // Before begins no earlier than the first request stored: days with no data would read as
    // days with no requests.
    let before = Window {
        from: q.at.saturating_sub(q.before_ms).max(q.data_from.min(q.at)),
        to: q.at,
    };
    let start = q.at.saturating_add(q.settle_ms);
    let end = start.saturating_add(q.after_ms);
    let after = Window {
        from: start,
        to: end.min(q.now.max(start)),
    };
    let mut note = None;
    if before.len() < q.before_ms {
        note = Some(format!(
            "the before window is cut at the first stored request: {:.1} of {:.1} days",
            before.len() as f64 / DAY_MS as f64,
            q.before_ms as f64 / DAY_MS as f64
        ));
    }
    if after.to < end {
        let cut = if after.is_empty() {
            "the after window has not begun yet".to_string()
        } else {
            format!(
                "the after window is cut at now: {:.1} of {:.1} days",
                after.len() as f64 / DAY_MS as f64,
                q.after_ms as f64 / DAY_MS as f64
            )
        };
        note = Some(note.map_or(cut.clone(), |n| format!("{n}; {cut}")));
    }
    let b = times.iter().filter(|&&t| before.holds(t)).count() as u64;
    let a = times.iter().filter(|&&t| after.holds(t)).count() as u64;
    let days = |w: Window| w.len() as f64 / DAY_MS as f64;
    let rate = |n: u64, w: Window| {
        if w.is_empty() {
            0.0
        } else {
            n as f64 / days(w)
        }
    };
    let change = if after.is_empty() || before.is_empty() {
        None
    } else {
        stats::rate_ratio(b, days(before), a, days(after), q.level)
            .map(|r| (r.ratio - 1.0, r.low - 1.0, r.high - 1.0))
    };
    if change.is_none() && note.is_none() {
        note = Some("no requests before the intervention: there is no rate to compare with".into());
    }
    let bucket = q.bucket_ms.max(1);
    let span = Window {
        from: before.from,
        to: after.to.max(q.at),
    };
    let n = span.len().div_ceil(bucket) as usize;
    let mut series: Vec<(u64, u64)> = (0..n).map(|i| (span.from + i as u64 * bucket, 0)).collect();
    for &t in times.iter().filter(|&&t| span.holds(t)) {
        series[((t - span.from) / bucket) as usize].1 += 1;
    }
    Effect {
        before,
        after,
        before_count: b,
        after_count: a,
        before_rate: rate(b, before),
        after_rate: rate(a, after),
        change,
        series,
        note,
    }
}

// ---------------------------------------------------------------------------------------------
// Who performs

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rates {
    pub received: u64,
    pub closed: u64,
    pub on_time: u64,
    pub rated: u64,
    pub satisfied: u64,
    pub reopened: u64,
}

impl Rates {
    fn add(&mut self, f: &Fact) {
        self.received += 1;
        if f.closed {
            self.closed += 1;
            self.on_time += u64::from(f.on_time);
            self.reopened += u64::from(f.reopened);
        }
        if let Some(s) = f.satisfied {
            self.rated += 1;
            self.satisfied += u64::from(s);
        }
    }
    fn share(n: u64, of: u64) -> Option<f64> {
        (of > 0).then(|| n as f64 / of as f64)
    }
    /// Closed of received.
    pub fn completion(&self) -> Option<f64> {
        Self::share(self.closed, self.received)
    }
    /// Closed without ever being supervised, of closed.
    pub fn on_time_rate(&self) -> Option<f64> {
        Self::share(self.on_time, self.closed)
    }
    /// Satisfied, of rated.
    pub fn satisfaction(&self) -> Option<f64> {
        Self::share(self.satisfied, self.rated)
    }
    /// Reopened after a rating, of closed.
    pub fn reopen_rate(&self) -> Option<f64> {
        Self::share(self.reopened, self.closed)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    /// The root's children (a city's counties).
    Children,
    Tier(Tier),
    Category,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GroupKey {
    Node(NodeIdx),
    Category(u16),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Period {
    Day,
    Week,
    Month,
}

/// The city keeps China Standard Time: periods start at its midnights.
const CST_MS: i64 = 8 * 3_600_000;

impl Period {
    /// The start of the period holding `t` (Unix ms); 0 for the first period of 1970, which
    /// began (China Standard Time) before the epoch.
    pub fn start(self, t: u64) -> u64 {
        let local = t as i64 + CST_MS;
        let day = local.div_euclid(DAY_MS as i64);
        let first = match self {
            Period::Day => day,
            // 1970-01-01 was a Thursday: Monday-based weeks start 3 days earlier.
            Period::Week => (day + 3).div_euclid(7) * 7 - 3,
            Period::Month => {
                let (y, m, _) = civil_from_days(day);
                days_from_civil(y, m, 1)
            }
        };
        (first * DAY_MS as i64 - CST_MS).max(0) as u64
    }
    /// The start of the next period after the one starting at `start`.
    pub fn next(self, start: u64) -> u64 {
        // Always after `start`, even for the truncated first period of 1970.
        let after = |d: u64| Period::start(self, start.saturating_add(d)).max(start + 1);
        match self {
            Period::Day => after(DAY_MS),
            Period::Week => after(7 * DAY_MS),
            Period::Month => after(32 * DAY_MS),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct PerfRow {
    pub key: GroupKey,
    pub now: Rates,
    /// The same length of time just before the window: the trend.
    pub previous: Rates,
    /// What people raised most here, most first (at most 3).
    pub top: Vec<(u16, u64)>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Performance {
    pub total: Rates,
    pub previous: Rates,
    pub rows: Vec<PerfRow>,
    /// Per period over the window, oldest first.
    pub trend: Vec<(u64, Rates)>,
    /// Requests the grouping could not place (above the tier asked for).
    pub unplaced: u64,
}

/// Completion, on time, satisfaction and reopening by group over `window`, with the window
/// before it for comparison and a series by `period`. `facts` cover both windows, within the
/// root's subtree.
pub fn performance(
    org: &Org,
    root: NodeIdx,
    facts: &[Fact],
    window: Window,
    group: Group,
    period: Period,
) -> Performance {
    let previous = Window {
        from: window.from.saturating_sub(window.len()),
        to: window.from,
    };
    let key_of = |f: &Fact| -> Option<GroupKey> {
        match group {
            Group::Category => Some(GroupKey::Category(f.category)),
            Group::Children => org.child_toward(root, f.node).map(GroupKey::Node),
            Group::Tier(t) => std::iter::once(f.node)
                .chain(org.ancestors(f.node))
                .find(|&a| org.tier(a) == t && org.contains(root, a))
                .map(GroupKey::Node),
        }
    };
    let mut rows: HashMap<GroupKey, (Rates, Rates, HashMap<u16, u64>)> = HashMap::new();
    // Every child or tier node is listed, those with no requests too.
    match group {
        Group::Children => {
            for &c in org.children(root) {
                rows.entry(GroupKey::Node(c)).or_default();
            }
        }
        Group::Tier(t) => {
            for i in org.subtree(root) {
                if org.tier(NodeIdx(i as u32)) == t {
                    rows.entry(GroupKey::Node(NodeIdx(i as u32))).or_default();
                }
            }
        }
        Group::Category => {}
    }
    let mut total = Rates::default();
    let mut before = Rates::default();
    let mut unplaced = 0;
    let mut trend: Vec<(u64, Rates)> = Vec::new();
    let mut p = period.start(window.from);
    while p < window.to {
        trend.push((p, Rates::default()));
        p = period.next(p);
    }
    for f in facts {
        let now = window.holds(f.created_at);
        if !now && !previous.holds(f.created_at) {
            continue;
        }
        if now {
            total.add(f);
            let k = trend.partition_point(|(s, _)| *s <= f.created_at);
            if k > 0 {
                trend[k - 1].1.add(f);
            }
        } else {
            before.add(f);
        }
        let Some(key) = key_of(f) else {
            unplaced += u64::from(now);
            continue;
        };
        let row = rows.entry(key).or_default();
        if now {
            row.0.add(f);
            *row.2.entry(f.category).or_default() += 1;
        } else {
            row.1.add(f);
        }
    }
    let mut rows: Vec<PerfRow> = rows
        .into_iter()
        .map(|(key, (now, previous, cats))| {
            let mut top: Vec<(u16, u64)> = cats.into_iter().collect();
            top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            top.truncate(3);
            PerfRow {
                key,
                now,
                previous,
                top,
            }
        })
        .collect();
    rows.sort_by(|a, b| match (a.key, b.key) {
        (GroupKey::Category(_), GroupKey::Category(_)) => {
            b.now.received.cmp(&a.now.received).then(a.key.cmp(&b.key))
        }
        _ => a.key.cmp(&b.key),
    });
    Performance {
        total,
        previous: before,
        rows,
        trend,
        unplaced,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fact(id: u64, at: u64, node: NodeIdx) -> Fact {
        Fact {
            id,
            created_at: at,
            category: 0,
            cause: None,
            node,
            point: None,
            closed: true,
            on_time: true,
            satisfied: None,
            reopened: false,
        }
    }

    #[test]
    fn a_place_against_its_own_history_is_a_hotspot_only_when_it_changed() {
        let org = crate::org::fixture();
        let (w1, w2) = (org.lookup("w1").unwrap(), org.lookup("w2").unwrap());
        let len = 10 * DAY_MS;
        let from = 60 * len;
        let mut facts = Vec::new();
        // The village had 2 requests in each of the 6 windows before, then 12 in the window.
        for k in 1..=6u64 {
            for j in 0..2 {
                facts.push(fact(
                    facts.len() as u64 + 1,
                    from - k * len + j * DAY_MS,
                    w1,
                ));
            }
        }
        for j in 0..12 {
            facts.push(fact(facts.len() as u64 + 1, from + j * DAY_MS / 2, w2));
        }
        let q = HotspotQuery {
            window: Window {
                from,
                to: from + len,
            },
            unit: Unit::Nodes(Tier::Village),
            baseline: Baseline::History(6),
            fdr: 0.05,
            min_count: 5,
            evidence: 3,
            data_from: 0,
        };
        let h = hotspots(&org, org.root(), &facts, &[], &q);
        assert_eq!((h.tested, h.history_windows, h.requests), (1, 6, 12));
        assert_eq!(h.hotspots.len(), 1);
        let x = &h.hotspots[0];
        assert_eq!((x.observed, x.expected, x.ratio), (12, 2.0, 6.0));
        // Exact: 12 or more of 24 when the window holds a seventh of the time.
        let want = crate::analysis::stats::binomial_at_least(12, 24, 1.0 / 7.0);
        assert!((x.p_value - want).abs() < 1e-15 && want < 1e-4);
        assert_eq!(x.evidence.len(), 3);
        // The same 12 when it always had 12: nothing changed, no hotspot.
        for k in 1..=6u64 {
            for j in 0..10 {
                facts.push(fact(
                    facts.len() as u64 + 1,
                    from - k * len + j * DAY_MS / 2,
                    w2,
                ));
            }
        }
        let h = hotspots(&org, org.root(), &facts, &[], &q);
        assert!(h.hotspots.is_empty(), "{:?}", h.hotspots);
        // Too little history: fewer windows, said; none at all, said why.
        let early = HotspotQuery {
            data_from: from - 2 * len,
            ..q.clone()
        };
        assert_eq!(
            hotspots(&org, org.root(), &facts, &[], &early).history_windows,
            2
        );
        let none = HotspotQuery {
            data_from: from,
            ..q
        };
        assert!(
            hotspots(&org, org.root(), &facts, &[], &none)
                .empty
                .unwrap()
                .contains("no history")
        );
    }

    #[test]
    fn periods_start_at_the_citys_midnights() {
        // 2024-03-15 10:00 CST = 02:00 UTC.
        let t = 1_710_468_000_000;
        let day = Period::Day.start(t);
        assert_eq!(day, 1_710_432_000_000); // 2024-03-15 00:00 CST
        assert_eq!(Period::Week.start(t), day - 4 * DAY_MS); // Monday 2024-03-11
        assert_eq!(Period::Month.start(t), day - 14 * DAY_MS); // 2024-03-01
        assert_eq!(
            Period::Month.next(Period::Month.start(t)),
            day + 17 * DAY_MS
        ); // 2024-04-01
        // February of a leap year.
        let feb = Period::Month.start(day - 20 * DAY_MS);
        assert_eq!(Period::Month.next(feb), Period::Month.start(t));
        assert_eq!(Period::Month.start(t) - feb, 29 * DAY_MS);
        // The first periods of 1970 began before the epoch: cut at 0, and still moving on.
        for p in [Period::Day, Period::Week, Period::Month] {
            assert_eq!(p.start(0), 0);
            assert!(p.next(0) > 0 && p.next(0) <= 31 * DAY_MS);
        }
        for d in [-1000i64, 0, 59, 365 * 30, 20_000] {
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
    }
}

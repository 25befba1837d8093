//! Figures over the run: latency histograms per interval (mergeable across worker processes)
//! and the hub's and the harness's own CPU and memory, sampled while the scenario runs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::report::Series;
use crate::{decode_histogram, encode_histogram, histogram, merge, mono_us};

/// Latencies by the interval in which they arrived, on the shared monotonic clock.
#[derive(Clone)]
pub struct Timeline {
    start_us: u64,
    interval_us: u64,
    buckets: BTreeMap<u64, Histogram<u64>>,
}

/// A timeline as worker processes hand it over.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct TimelineWire {
    pub start_us: u64,
    pub interval_us: u64,
    pub buckets: Vec<(u64, String)>,
}

impl Timeline {
    pub fn new(start_us: u64, interval: Duration) -> Timeline {
        Timeline {
            start_us,
            interval_us: (interval.as_micros() as u64).max(1),
            buckets: BTreeMap::new(),
        }
    }

    /// A latency that ended at `at_us` (monotonic); arrivals before the start are dropped.
    pub fn record(&mut self, at_us: u64, latency_us: u64) {
        let Some(since) = at_us.checked_sub(self.start_us) else {
            return;
        };
        let h = self
            .buckets
            .entry(since / self.interval_us)
            .or_insert_with(histogram);
        h.saturating_record(latency_us.max(1));
    }

    pub fn merge(&mut self, other: &Timeline) {
        for (k, h) in &other.buckets {
            merge(self.buckets.entry(*k).or_insert_with(histogram), h);
        }
    }

    pub fn to_wire(&self) -> TimelineWire {
        TimelineWire {
            start_us: self.start_us,
            interval_us: self.interval_us,
            buckets: self
                .buckets
                .iter()
                .map(|(k, h)| (*k, encode_histogram(h)))
                .collect(),
        }
    }

    pub fn from_wire(w: &TimelineWire) -> Result<Timeline, String> {
        let mut t = Timeline {
            start_us: w.start_us,
            interval_us: w.interval_us.max(1),
            buckets: BTreeMap::new(),
        };
        for (k, text) in &w.buckets {
            t.buckets.insert(*k, decode_histogram(text)?);
        }
        Ok(t)
    }

    /// Every latency recorded between `from` and `to` (seconds since the start).
    pub fn window(&self, from: f64, to: f64) -> Histogram<u64> {
        let mut h = histogram();
        for (k, b) in &self.buckets {
            let t = self.at(*k);
            if t >= from && t < to {
                merge(&mut h, b);
            }
        }
        h
    }

    pub fn all(&self) -> Histogram<u64> {
        self.window(f64::MIN, f64::MAX)
    }

    fn at(&self, bucket: u64) -> f64 {
        (bucket * self.interval_us) as f64 / 1e6
    }

    /// p50, p99 and max in milliseconds per interval, plotted at the interval's start.
    pub fn percentile_series(&self, what: &str) -> Vec<Series> {
        let pick = |name: &str, f: &dyn Fn(&Histogram<u64>) -> u64| Series {
            name: format!("{what} {name}"),
            points: self
                .buckets
                .iter()
                .map(|(k, h)| (self.at(*k), f(h) as f64 / 1000.0))
                .collect(),
        };
        vec![
            pick("p50", &|h| h.value_at_quantile(0.5)),
            pick("p99", &|h| h.value_at_quantile(0.99)),
            pick("max", &|h| h.max()),
        ]
    }

    /// Arrivals per second in each interval.
    pub fn rate_series(&self, what: &str) -> Series {
        let secs = self.interval_us as f64 / 1e6;
        Series {
            name: what.into(),
            points: self
                .buckets
                .iter()
                .map(|(k, h)| (self.at(*k), h.len() as f64 / secs))
                .collect(),
        }
    }
}

/// One reading of the hub and the harness.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default)]
pub struct Sample {
    /// Seconds since the run started.
    pub t: f64,
    pub hub_rss_mib: f64,
    /// Hub CPU over the last interval, percent of one core.
    pub hub_cpu_percent: f64,
    pub connections: f64,
    pub hub_messages_out_per_s: f64,
    /// The harness's processes together (this one and its workers), percent of one core.
    pub harness_cpu_percent: f64,
    pub harness_rss_mib: f64,
    /// The whole machine, percent of all its cores.
    pub machine_busy_percent: f64,
}

/// Reads the hub's `/metrics` and the harness's processes every `every` until stopped.
pub struct Sampler {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Vec<Sample>>,
}

impl Sampler {
    /// `pids` are the harness's worker processes, added to as they start.
    pub fn start(
        hub: SocketAddr,
        start_us: u64,
        every: Duration,
        pids: Arc<Mutex<Vec<u32>>>,
    ) -> Sampler {
        let stop = CancellationToken::new();
        let st = stop.clone();
        let task = tokio::spawn(async move {
            let mut out = Vec::new();
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last: Option<(f64, crate::hubstats::HubStats, f64, (f64, f64))> = None;
            // A worker's CPU as last read: one that has ended reads 0 from then on, and its
            // seconds must not leave the sum.
            let mut worker_cpu = std::collections::HashMap::<u32, f64>::new();
            loop {
                tokio::select! {
                    _ = st.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let Ok(hub_now) = crate::hubstats::scrape(hub).await else {
                    continue;
                };
                let t = mono_us().saturating_sub(start_us) as f64 / 1e6;
                let list: Vec<u32> = pids.lock().unwrap_or_else(|e| e.into_inner()).clone();
                for p in &list {
                    let now = crate::proc_cpu(&p.to_string());
                    let seen = worker_cpu.entry(*p).or_insert(0.0);
                    *seen = seen.max(now);
                }
                let harness_cpu = crate::own_cpu() + worker_cpu.values().sum::<f64>();
                let harness_rss = crate::proc_rss("self")
                    + list
                        .iter()
                        .map(|p| crate::proc_rss(&p.to_string()))
                        .sum::<f64>();
                let machine = crate::machine_cpu();
                if let Some((t0, h0, c0, m0)) = last {
                    let dt = (t - t0).max(1e-3);
                    let (busy, idle) = (machine.0 - m0.0, machine.1 - m0.1);
                    out.push(Sample {
                        t,
                        hub_rss_mib: hub_now.rss_bytes / 1048576.0,
                        hub_cpu_percent: (hub_now.cpu_seconds - h0.cpu_seconds) / dt * 100.0,
                        connections: hub_now.connections,
                        hub_messages_out_per_s: (hub_now.messages_out - h0.messages_out) / dt,
                        harness_cpu_percent: (harness_cpu - c0) / dt * 100.0,
                        harness_rss_mib: harness_rss / 1048576.0,
                        machine_busy_percent: if busy + idle > 0.0 {
                            busy / (busy + idle) * 100.0
                        } else {
                            0.0
                        },
                    });
                }
                last = Some((t, hub_now, harness_cpu, machine));
            }
            out
        });
        Sampler { stop, task }
    }

    pub async fn stop(self) -> Vec<Sample> {
        self.stop.cancel();
        self.task.await.unwrap_or_default()
    }
}

/// A named figure read from each sample.
pub type Pick<'a> = (&'a str, fn(&Sample) -> f64);

/// The samples as plot series: one per figure.
pub fn sample_series(samples: &[Sample], pick: &[Pick<'_>]) -> Vec<Series> {
    pick.iter()
        .map(|(name, f)| Series {
            name: (*name).into(),
            points: samples.iter().map(|s| (s.t, f(s))).collect(),
        })
        .collect()
}

/// The hub's CPU, memory and connections, and the harness's CPU, over the run.
pub fn push_resource_charts(rep: &mut crate::report::Report, samples: &[Sample]) {
    rep.charts.push(crate::report::Chart {
        title: "CPU".into(),
        x_label: "seconds since start".into(),
        y_label: "% of one core".into(),
        series: sample_series(
            samples,
            &[
                ("hub", |s| s.hub_cpu_percent),
                ("harness", |s| s.harness_cpu_percent),
            ],
        ),
    });
    rep.charts.push(crate::report::Chart {
        title: "Hub memory".into(),
        x_label: "seconds since start".into(),
        y_label: "RSS, MiB".into(),
        series: sample_series(samples, &[("hub RSS", |s| s.hub_rss_mib)]),
    });
    rep.charts.push(crate::report::Chart {
        title: "Connections and throughput".into(),
        x_label: "seconds since start".into(),
        y_label: "count, or messages/s ÷ 10".into(),
        series: sample_series(
            samples,
            &[
                ("connections", |s| s.connections),
                ("hub messages out per s ÷ 10", |s| {
                    s.hub_messages_out_per_s / 10.0
                }),
            ],
        ),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeline_buckets_by_arrival_and_merges_across_workers() {
        let start = 1_000_000;
        let mut a = Timeline::new(start, Duration::from_secs(1));
        let mut b = Timeline::new(start, Duration::from_secs(1));
        a.record(start + 100, 5_000);
        a.record(start + 1_500_000, 7_000);
        b.record(start + 1_600_000, 9_000);
        b.record(start - 1, 1); // before the start: not counted
        let mut m = Timeline::from_wire(&a.to_wire()).unwrap();
        m.merge(&Timeline::from_wire(&b.to_wire()).unwrap());
        assert_eq!(m.all().len(), 3);
        assert_eq!(m.window(1.0, 2.0).len(), 2);
        let p = m.percentile_series("x");
        assert_eq!(p[2].points.len(), 2);
        assert!((p[2].points[1].1 - 9.0).abs() < 0.01, "{:?}", p[2].points);
        assert_eq!(m.rate_series("r").points[1], (1.0, 2.0));
    }
}

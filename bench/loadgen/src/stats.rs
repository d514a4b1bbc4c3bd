//! What a run counts, and how it is reported.

use crate::agents::Outcome;
use std::collections::BTreeMap;
use std::time::Duration;

/// Counts of one worker, or of a whole run once merged.
#[derive(Default)]
pub struct Stats {
    /// Latency of every acknowledged request, in microseconds.
    pub latencies_us: Vec<u32>,
    /// When each acknowledged request started (or was due), in milliseconds since the
    /// measurement began, in the order of `latencies_us` (until they are sorted).
    pub started_ms: Vec<u32>,
    /// Findings in each acknowledged request, in the same order.
    pub findings_each: Vec<u32>,
    /// Acknowledged requests.
    pub requests: u64,
    /// Findings in acknowledged requests.
    pub findings: u64,
    /// Heartbeats in acknowledged requests.
    pub heartbeats: u64,
    /// Events the collector stored (its `accepted`).
    pub accepted: u64,
    /// Events the collector had already (its `duplicates`): should stay 0.
    pub duplicates: u64,
    /// Requests that failed, by kind, with the first message of each kind.
    pub errors: BTreeMap<String, (u64, String)>,
}

impl Stats {
    /// Counts one request of `findings` findings and one heartbeat that took `latency`.
    pub fn record(
        &mut self,
        outcome: Outcome,
        findings: usize,
        started_ms: u32,
        latency: Duration,
    ) {
        match outcome {
            Outcome::Acked(ack) => {
                self.requests += 1;
                self.findings += findings as u64;
                self.heartbeats += 1;
                self.accepted += u64::from(ack.accepted);
                self.duplicates += u64::from(ack.duplicates);
                self.latencies_us
                    .push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
                self.started_ms.push(started_ms);
                self.findings_each
                    .push(u32::try_from(findings).unwrap_or(u32::MAX));
            }
            Outcome::Failed(kind, message) => self.error(kind, message),
        }
    }

    /// Counts one failure.
    pub fn error(&mut self, kind: String, message: String) {
        self.errors.entry(kind).or_insert((0, message)).0 += 1;
    }

    /// Adds `other`'s counts.
    pub fn merge(&mut self, other: Stats) {
        self.latencies_us.extend(other.latencies_us);
        self.started_ms.extend(other.started_ms);
        self.findings_each.extend(other.findings_each);
        self.requests += other.requests;
        self.findings += other.findings;
        self.heartbeats += other.heartbeats;
        self.accepted += other.accepted;
        self.duplicates += other.duplicates;
        for (kind, (count, message)) in other.errors {
            self.errors.entry(kind).or_insert((0, message)).0 += count;
        }
    }

    /// Failed requests.
    pub fn failed(&self) -> u64 {
        self.errors.values().map(|(n, _)| n).sum()
    }

    /// Latency percentiles in milliseconds (nearest rank): p50, p90, p99, p99.9, max.
    pub fn percentiles_ms(&self) -> Option<[f64; 5]> {
        percentiles_ms(self.latencies_us.clone())
    }

    /// Per second of the measurement: (second, requests started in it, their p99 and
    /// max latency in milliseconds).
    pub fn timeline(&self) -> Vec<(u32, usize, f64, f64)> {
        let mut seconds: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        for (started, latency) in self.started_ms.iter().zip(&self.latencies_us) {
            seconds.entry(started / 1000).or_default().push(*latency);
        }
        seconds
            .into_iter()
            .filter_map(|(second, latencies)| {
                let count = latencies.len();
                let [_, _, p99, _, max] = percentiles_ms(latencies)?;
                Some((second, count, p99, max))
            })
            .collect()
    }
}

impl Stats {
    /// Acknowledged requests and findings per second in each third of a measurement
    /// `duration_ms` long, by when requests started: a collector that slows down as
    /// its database grows shows it here.
    pub fn thirds(&self, duration_ms: u32) -> [(f64, f64); 3] {
        let third = (duration_ms / 3).max(1);
        let mut counts = [(0u64, 0u64); 3];
        for (started, findings) in self.started_ms.iter().zip(&self.findings_each) {
            let slot = ((started / third) as usize).min(2);
            counts[slot].0 += 1;
            counts[slot].1 += u64::from(*findings);
        }
        let secs = f64::from(third) / 1000.0;
        counts.map(|(requests, findings)| (requests as f64 / secs, findings as f64 / secs))
    }
}

/// p50, p90, p99, p99.9 and max of `latencies_us`, in milliseconds (nearest rank).
fn percentiles_ms(mut latencies_us: Vec<u32>) -> Option<[f64; 5]> {
    if latencies_us.is_empty() {
        return None;
    }
    latencies_us.sort_unstable();
    let sorted = &latencies_us;
    // Nearest rank, in integers: p per mille of n, rounded up.
    let at = |per_mille: usize| {
        let rank = (per_mille * sorted.len()).div_ceil(1000);
        f64::from(sorted[rank.clamp(1, sorted.len()) - 1]) / 1000.0
    };
    Some([at(500), at(900), at(990), at(999), at(1000)])
}

/// CPU and memory around the measured part of a run.
#[derive(Default)]
pub struct Resources {
    /// CPU seconds the load generator used.
    pub loadgen_cpu_secs: Option<f64>,
    /// CPU seconds the collector used.
    pub collector_cpu_secs: Option<f64>,
    /// The collector's VmRSS and VmHWM at the end, in KiB.
    pub collector_memory_kib: Option<(u64, u64)>,
    /// CPU seconds every other process on the machine used meanwhile (the machine's
    /// busy time less the load generator's and the collector's).
    pub other_cpu_secs: Option<f64>,
}

impl Resources {
    /// Starts measuring.
    pub fn start(collector_pid: Option<u32>) -> ResourceMeter {
        ResourceMeter {
            pid: collector_pid,
            machine: crate::procfs::machine_busy_secs(),
            loadgen: crate::procfs::cpu_secs("self"),
            collector: collector_pid.and_then(|p| crate::procfs::cpu_secs(&p.to_string())),
        }
    }
}

/// CPU times at the start of a measurement.
pub struct ResourceMeter {
    pid: Option<u32>,
    machine: Option<f64>,
    loadgen: Option<f64>,
    collector: Option<f64>,
}

impl ResourceMeter {
    /// CPU used since the start, and memory now.
    pub fn stop(&self) -> Resources {
        let delta = |start: Option<f64>, now: Option<f64>| Some(now? - start?);
        let pid = self.pid.map(|p| p.to_string());
        let machine = delta(self.machine, crate::procfs::machine_busy_secs());
        let loadgen = delta(self.loadgen, crate::procfs::cpu_secs("self"));
        let collector = delta(
            self.collector,
            pid.as_deref().and_then(crate::procfs::cpu_secs),
        );
        Resources {
            loadgen_cpu_secs: loadgen,
            collector_cpu_secs: collector,
            collector_memory_kib: pid.as_deref().and_then(crate::procfs::memory_kib),
            // Without the collector's pid its time counts as "other".
            other_cpu_secs: machine
                .zip(loadgen)
                .map(|(m, l)| (m - l - collector.unwrap_or(0.0)).max(0.0)),
        }
    }
}

/// Formats a rate with thousands separators (`12,345`) or one decimal below 100.
pub fn rate(value: f64) -> String {
    if value < 100.0 {
        return format!("{value:.1}");
    }
    thousands(value.round() as u64)
}

/// `12345` as `12,345`.
pub fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// KiB as MiB with one decimal.
pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let stats = Stats {
            latencies_us: (1..=1000).rev().map(|ms| ms * 1000).collect(),
            started_ms: (0..1000).collect(),
            findings_each: vec![2; 1000],
            ..Stats::default()
        };
        assert_eq!(stats.timeline().len(), 1);
        let steady = Stats {
            started_ms: (0..999).collect(),
            findings_each: vec![2; 999],
            ..Stats::default()
        };
        assert_eq!(steady.thirds(999), [(1000.0, 2000.0); 3]);
        assert_eq!(
            stats.percentiles_ms().unwrap(),
            [500.0, 900.0, 990.0, 999.0, 1000.0]
        );
        assert!(Stats::default().percentiles_ms().is_none());
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(rate(12.34), "12.3");
        assert_eq!(rate(5012.6), "5,013");
    }
}

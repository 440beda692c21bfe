//! What a simulation measured, per policy and per backend.
//!
//! [`Raw`] tallies while the engine runs; [`PolicyReport`] is the summary
//! that tables, JSON and plots are drawn from. This module does no
//! formatting: presenting the figures is `cargo xtask simulate`'s job.

use super::config::{SimConfig, SimPolicy};

/// One backend of the simulated fleet.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BackendInfo {
    /// Its (made-up) address.
    pub address: String,
    /// Its zone.
    pub zone: String,
    /// Service-time multiplier: 1 for a normal backend, the slow factor for
    /// a slow one.
    pub slowness: f64,
}

/// The figures for one policy, measured after the warm-up.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PolicyReport {
    /// The policy.
    pub policy: SimPolicy,
    /// Requests sent after the warm-up.
    pub requests: u64,
    /// Highest per-backend utilisation over the mean: 1 is perfect balance.
    pub max_over_mean_utilization: f64,
    /// Highest per-backend utilisation over the lowest; infinite (`null` in
    /// JSON) when a backend received nothing.
    pub max_over_min_utilization: f64,
    /// Highest per-backend utilisation; above 1 that backend's queue grows
    /// without bound.
    pub max_utilization: f64,
    /// Mean per-backend utilisation.
    pub mean_utilization: f64,
    /// Coefficient of variation (standard deviation over mean) of the
    /// number of requests each backend received.
    pub request_rate_cv: f64,
    /// Mean latency (queueing plus service), in milliseconds.
    pub mean_ms: f64,
    /// Median latency, in milliseconds.
    pub p50_ms: f64,
    /// 90th percentile latency, in milliseconds.
    pub p90_ms: f64,
    /// 99th percentile latency, in milliseconds.
    pub p99_ms: f64,
    /// 99.9th percentile latency, in milliseconds.
    pub p999_ms: f64,
    /// Share of requests that finished within one second of being sent
    /// (the deadline the benchmark suite's distribution scenario uses).
    pub within_1s_fraction: f64,
    /// Share of requests sent to a backend outside the client's zone.
    pub cross_zone_fraction: f64,
    /// Per backend: work received (service time of the requests sent to it)
    /// over the measured time. This is offered load, so it can exceed 1,
    /// which is how an overloaded backend shows.
    pub utilization: Vec<f64>,
    /// Per backend: share of the measured time it was busy (at most 1).
    pub busy_fraction: Vec<f64>,
    /// Per backend: requests received.
    pub requests_per_backend: Vec<u64>,
}

/// A whole run: the fleet and one report per policy, in the order asked.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Report {
    /// The configuration that produced it.
    pub config: SimConfig,
    /// Requests per second over all clients.
    pub total_rate: f64,
    /// The backends, indexed like the per-backend vectors.
    pub backends: Vec<BackendInfo>,
    /// One entry per policy.
    pub policies: Vec<PolicyReport>,
}

/// Running tallies for one policy.
#[derive(Debug)]
pub(crate) struct Raw {
    from: f64,
    to: f64,
    requests: Vec<u64>,
    work: Vec<f64>,
    busy: Vec<f64>,
    latencies: Vec<f64>,
    cross_zone: u64,
}

impl Raw {
    pub(crate) fn new(backends: usize, from: f64, to: f64) -> Self {
        Self {
            from,
            to,
            requests: vec![0; backends],
            work: vec![0.0; backends],
            busy: vec![0.0; backends],
            latencies: Vec::new(),
            cross_zone: 0,
        }
    }

    /// A request sent at `sent`, served on `backend` from `start` to `done`.
    pub(crate) fn record(
        &mut self,
        backend: usize,
        sent: f64,
        start: f64,
        done: f64,
        service: f64,
        cross_zone: bool,
    ) {
        // Busy time counts whenever it falls in the window, whoever sent it.
        let overlap = done.min(self.to) - start.max(self.from);
        if overlap > 0.0 {
            self.busy[backend] += overlap;
        }
        if sent < self.from {
            return;
        }
        self.requests[backend] += 1;
        self.work[backend] += service;
        self.latencies.push(done - sent);
        self.cross_zone += u64::from(cross_zone);
    }

    pub(crate) fn summarise(mut self, policy: SimPolicy) -> PolicyReport {
        let window = self.to - self.from;
        let utilization: Vec<f64> = self.work.iter().map(|w| w / window).collect();
        let busy_fraction: Vec<f64> = self.busy.iter().map(|b| b / window).collect();
        let max = utilization
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        let min = utilization.iter().copied().fold(f64::INFINITY, f64::min);
        let mean = utilization.iter().sum::<f64>() / utilization.len() as f64;
        let counts: Vec<f64> = self.requests.iter().map(|&r| r as f64).collect();
        let count_mean = counts.iter().sum::<f64>() / counts.len() as f64;
        let count_var =
            counts.iter().map(|c| (c - count_mean).powi(2)).sum::<f64>() / counts.len() as f64;
        let requests: u64 = self.requests.iter().sum();
        self.latencies.sort_unstable_by(f64::total_cmp);
        let ms = |secs: f64| secs * 1000.0;
        let pct = |q: f64| ms(percentile(&self.latencies, q));
        let mean_latency = self.latencies.iter().sum::<f64>() / self.latencies.len() as f64;
        PolicyReport {
            policy,
            requests,
            max_over_mean_utilization: max / mean,
            max_over_min_utilization: max / min,
            max_utilization: max,
            mean_utilization: mean,
            request_rate_cv: count_var.sqrt() / count_mean,
            mean_ms: ms(mean_latency),
            p50_ms: pct(0.50),
            p90_ms: pct(0.90),
            p99_ms: pct(0.99),
            p999_ms: pct(0.999),
            within_1s_fraction: self.latencies.partition_point(|&l| l <= 1.0) as f64
                / self.latencies.len() as f64,
            cross_zone_fraction: self.cross_zone as f64 / requests as f64,
            utilization,
            busy_fraction,
            requests_per_backend: self.requests,
        }
    }
}

/// Nearest-rank percentile of sorted values; NaN when there are none.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_windows() {
        let v: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 500.0);
        assert_eq!(percentile(&v, 0.999), 999.0);
        assert_eq!(percentile(&v, 1.0), 1000.0);
        assert!(percentile(&[], 0.5).is_nan());

        let mut raw = Raw::new(2, 10.0, 20.0);
        // Sent before the window: only its busy time inside the window counts.
        raw.record(0, 5.0, 5.0, 12.0, 7.0, false);
        raw.record(1, 11.0, 11.0, 25.0, 14.0, true);
        let r = raw.summarise(SimPolicy::Random);
        assert_eq!(r.requests, 1);
        assert_eq!(r.busy_fraction, vec![0.2, 0.9]);
        assert_eq!(r.utilization, vec![0.0, 1.4]);
        assert_eq!(r.max_over_min_utilization, f64::INFINITY);
        assert_eq!(r.cross_zone_fraction, 1.0);
        assert_eq!(r.p50_ms, 14_000.0);
        assert_eq!(r.within_1s_fraction, 0.0);
    }
}

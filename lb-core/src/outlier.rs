//! Error-aware scoring and outlier ejection.
//!
//! ```text
//!                 consecutive failures >= threshold, or
//!                 success rate < mean - k * stdev (at evaluation)
//!   +---------+ ------------------------------------------> +---------+
//!   | in pool |        (only while ejected share < max)      | ejected |
//!   +---------+ <------------------------------------------ +---------+
//!                 base * times_ejected elapsed (capped at max)
//! ```
//!
//! Ejection is per endpoint key and capped by `max_ejected_fraction`, with at
//! least one endpoint always left in the pool, so ejection never empties it.
//! Between ejections, an exponentially weighted error rate gives every
//! endpoint a weight penalty, so an endpoint that fails some of the time gets
//! less traffic before it fails enough to be ejected. Time is a monotonic
//! `Duration` since any fixed origin, passed in by the caller. The detector
//! does not see requests; the caller reports outcomes.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

use crate::error::ConfigError;

/// Outlier detection settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutlierConfig {
    /// Failures in a row that eject an endpoint. 0 turns this off.
    pub consecutive_failures: u32,
    /// First ejection lasts this long; the n-th lasts n times as long.
    pub base_ejection: Duration,
    /// No ejection lasts longer than this.
    pub max_ejection: Duration,
    /// At most this share of endpoints is ejected at once, in [0, 1].
    pub max_ejected_fraction: f64,
    /// Success-rate ejection, when set.
    pub success_rate: Option<SuccessRate>,
    /// Weight of the newest outcome in the error-rate average, in (0, 1].
    pub error_ewma_alpha: f64,
    /// How hard the error rate cuts an endpoint's weight: the multiplier is
    /// `1 / (1 + penalty * error_rate)`.
    pub error_penalty: f64,
}

/// Success-rate outlier detection, applied at each evaluation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SuccessRate {
    /// Endpoints with fewer requests in the interval are not judged.
    pub min_requests: u32,
    /// At least this many endpoints must be judged for any to be ejected.
    pub min_hosts: usize,
    /// Eject below `mean - stdev_factor * stdev`.
    pub stdev_factor: f64,
}

impl Default for SuccessRate {
    fn default() -> Self {
        Self {
            min_requests: 100,
            min_hosts: 5,
            stdev_factor: 1.9,
        }
    }
}

impl Default for OutlierConfig {
    fn default() -> Self {
        // Envoy's defaults, except the ejected share: 50% rather than 10%,
        // because client-side pools are small and a 10% cap would never eject
        // anything in a pool of fewer than ten.
        Self {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejected_fraction: 0.5,
            success_rate: Some(SuccessRate::default()),
            error_ewma_alpha: 0.1,
            error_penalty: 10.0,
        }
    }
}

impl OutlierConfig {
    /// Checks every field, reporting the first one out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        ConfigError::check(
            "max ejected fraction",
            "in [0, 1]",
            self.max_ejected_fraction,
            0.0,
            1.0,
        )?;
        ConfigError::check(
            "error EWMA alpha",
            "in (0, 1]",
            self.error_ewma_alpha,
            f64::MIN_POSITIVE,
            1.0,
        )?;
        ConfigError::check(
            "error penalty",
            "in [0, 1000]",
            self.error_penalty,
            0.0,
            1000.0,
        )?;
        if self.base_ejection.is_zero() || self.max_ejection < self.base_ejection {
            return Err(ConfigError::OutOfRange {
                name: "ejection time",
                expected: "a base above zero and a maximum at least the base",
                value: self.base_ejection.as_secs_f64(),
            });
        }
        if let Some(sr) = &self.success_rate {
            ConfigError::check(
                "success-rate stdev factor",
                "in [0, 100]",
                sr.stdev_factor,
                0.0,
                100.0,
            )?;
        }
        Ok(())
    }
}

/// The result of one request, as far as outlier detection cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The endpoint answered well (including application errors that are
    /// the caller's fault, such as `INVALID_ARGUMENT`).
    Success,
    /// Transport failure, or a status that blames the server
    /// (`UNAVAILABLE`, `INTERNAL`, `UNKNOWN`, `DEADLINE_EXCEEDED`...).
    Failure,
}

/// Why an endpoint was ejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EjectionReason {
    /// Too many failures in a row.
    ConsecutiveFailures,
    /// Success rate far below its peers'.
    SuccessRate,
}

#[derive(Debug, Clone, Default)]
struct Host {
    consecutive_failures: u32,
    interval_requests: u32,
    interval_successes: u32,
    error_rate: f64,
    ejected_until: Option<Duration>,
    times_ejected: u32,
    last_reason: Option<EjectionReason>,
}

/// Per-endpoint outlier state for one service.
#[derive(Debug, Clone)]
pub struct OutlierDetector<K> {
    config: OutlierConfig,
    hosts: HashMap<K, Host>,
}

/// A view of one endpoint's outlier state, for debugging.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct HostStatus {
    /// Whether it is ejected now.
    pub ejected: bool,
    /// Why it was last ejected.
    pub last_reason: Option<EjectionReason>,
    /// Times ejected (decays while healthy).
    pub times_ejected: u32,
    /// Averaged error rate in [0, 1].
    pub error_rate: f64,
    /// Weight multiplier from the error rate.
    pub weight_factor: f64,
}

impl<K: Eq + Hash + Clone> OutlierDetector<K> {
    /// A detector with validated settings.
    pub fn new(config: OutlierConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            config,
            hosts: HashMap::new(),
        })
    }

    /// Makes the tracked endpoints exactly `keys`: new ones start clean,
    /// departed ones are forgotten.
    pub fn set_members<'a>(&mut self, keys: impl IntoIterator<Item = &'a K>)
    where
        K: 'a,
    {
        let mut next = HashMap::new();
        for k in keys {
            let host = self.hosts.remove(k).unwrap_or_default();
            next.insert(k.clone(), host);
        }
        self.hosts = next;
    }

    fn ejected_now(&self, now: Duration) -> usize {
        self.hosts
            .values()
            .filter(|h| h.ejected_until.is_some_and(|t| t > now))
            .count()
    }

    fn may_eject(&self, now: Duration) -> bool {
        let n = self.hosts.len();
        let ejected = self.ejected_now(now);
        let cap = (self.config.max_ejected_fraction * n as f64).floor() as usize;
        ejected < cap.min(n.saturating_sub(1))
    }

    fn eject(&mut self, key: &K, reason: EjectionReason, now: Duration) {
        let (base, max) = (self.config.base_ejection, self.config.max_ejection);
        if let Some(h) = self.hosts.get_mut(key) {
            h.times_ejected = h.times_ejected.saturating_add(1);
            let length = base.saturating_mul(h.times_ejected).min(max);
            h.ejected_until = Some(now + length);
            h.last_reason = Some(reason);
            h.consecutive_failures = 0;
        }
    }

    /// Records one outcome; returns the reason if this ejected the endpoint.
    /// Outcomes for unknown keys are ignored (the endpoint already left).
    pub fn record(&mut self, key: &K, outcome: Outcome, now: Duration) -> Option<EjectionReason> {
        let alpha = self.config.error_ewma_alpha;
        let threshold = self.config.consecutive_failures;
        let host = self.hosts.get_mut(key)?;
        host.interval_requests = host.interval_requests.saturating_add(1);
        let failed = outcome == Outcome::Failure;
        host.error_rate = host.error_rate * (1.0 - alpha) + if failed { alpha } else { 0.0 };
        if failed {
            host.consecutive_failures = host.consecutive_failures.saturating_add(1);
        } else {
            host.interval_successes = host.interval_successes.saturating_add(1);
            host.consecutive_failures = 0;
        }
        let trip = failed
            && threshold > 0
            && host.consecutive_failures >= threshold
            && host.ejected_until.is_none_or(|t| t <= now);
        if trip && self.may_eject(now) {
            self.eject(key, EjectionReason::ConsecutiveFailures, now);
            return Some(EjectionReason::ConsecutiveFailures);
        }
        None
    }

    /// Periodic evaluation (Envoy's `interval`): returns ejected endpoints to
    /// the pool when their time is up, forgives one past ejection of
    /// endpoints that stayed in the pool, and applies success-rate ejection
    /// over the interval's counts. Returns the keys ejected now.
    pub fn evaluate(&mut self, now: Duration) -> Vec<K> {
        for h in self.hosts.values_mut() {
            match h.ejected_until {
                Some(t) if t <= now => {
                    h.ejected_until = None;
                    // A returning endpoint starts with a clean error record.
                    h.error_rate = 0.0;
                }
                None => h.times_ejected = h.times_ejected.saturating_sub(1),
                Some(_) => {}
            }
        }
        let mut ejected = Vec::new();
        if let Some(sr) = self.config.success_rate {
            let judged: Vec<(K, f64)> = self
                .hosts
                .iter()
                .filter(|(_, h)| {
                    h.ejected_until.is_none() && h.interval_requests >= sr.min_requests.max(1)
                })
                .map(|(k, h)| {
                    (
                        k.clone(),
                        f64::from(h.interval_successes) / f64::from(h.interval_requests),
                    )
                })
                .collect();
            if judged.len() >= sr.min_hosts.max(2) {
                let n = judged.len() as f64;
                let mean = judged.iter().map(|j| j.1).sum::<f64>() / n;
                let var = judged.iter().map(|j| (j.1 - mean).powi(2)).sum::<f64>() / n;
                let floor = mean - sr.stdev_factor * var.sqrt();
                let mut worst: Vec<(K, f64)> = judged.into_iter().filter(|j| j.1 < floor).collect();
                worst.sort_by(|a, b| a.1.total_cmp(&b.1));
                for (k, _) in worst {
                    if !self.may_eject(now) {
                        break;
                    }
                    self.eject(&k, EjectionReason::SuccessRate, now);
                    ejected.push(k);
                }
            }
        }
        for h in self.hosts.values_mut() {
            h.interval_requests = 0;
            h.interval_successes = 0;
        }
        ejected
    }

    /// Whether `key` is ejected at `now`.
    pub fn is_ejected(&self, key: &K, now: Duration) -> bool {
        self.hosts
            .get(key)
            .is_some_and(|h| h.ejected_until.is_some_and(|t| t > now))
    }

    /// Weight multiplier in (0, 1] from the endpoint's recent error rate.
    pub fn weight_factor(&self, key: &K) -> f64 {
        self.hosts.get(key).map_or(1.0, |h| {
            1.0 / (1.0 + self.config.error_penalty * h.error_rate)
        })
    }

    /// The state of one endpoint, for debug views.
    pub fn status(&self, key: &K, now: Duration) -> Option<HostStatus> {
        self.hosts.get(key).map(|h| HostStatus {
            ejected: h.ejected_until.is_some_and(|t| t > now),
            last_reason: h.last_reason,
            times_ejected: h.times_ejected,
            error_rate: h.error_rate,
            weight_factor: self.weight_factor(key),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn detector(n: u32) -> OutlierDetector<u32> {
        let mut d = OutlierDetector::new(OutlierConfig::default()).unwrap();
        d.set_members(&(0..n).collect::<Vec<_>>());
        d
    }

    #[test]
    fn consecutive_failures_eject_and_time_returns() {
        let mut d = detector(4);
        for i in 0..4 {
            assert_eq!(d.record(&0, Outcome::Failure, S(0)), None, "failure {i}");
        }
        assert_eq!(
            d.record(&0, Outcome::Failure, S(0)),
            Some(EjectionReason::ConsecutiveFailures)
        );
        assert!(d.is_ejected(&0, S(29)));
        assert!(!d.is_ejected(&0, S(30)));
        d.evaluate(S(30));
        // Second ejection lasts twice as long.
        for _ in 0..5 {
            d.record(&0, Outcome::Failure, S(31));
        }
        assert!(d.is_ejected(&0, S(31 + 59)));
        assert!(!d.is_ejected(&0, S(31 + 60)));
    }

    #[test]
    fn a_success_resets_the_count() {
        let mut d = detector(4);
        for _ in 0..4 {
            d.record(&1, Outcome::Failure, S(0));
        }
        d.record(&1, Outcome::Success, S(0));
        for _ in 0..4 {
            assert_eq!(d.record(&1, Outcome::Failure, S(0)), None);
        }
        assert!(
            d.weight_factor(&1) < 0.5,
            "errors cut the weight: {}",
            d.weight_factor(&1)
        );
        assert_eq!(d.weight_factor(&2), 1.0);
    }

    #[test]
    fn success_rate_ejects_the_outlier() {
        let mut d = detector(6);
        for k in 0..6 {
            for i in 0..200 {
                let fail = if k == 3 { i % 2 == 0 } else { i % 100 == 0 };
                // Interleave so consecutive failures never trip.
                let o = if fail {
                    Outcome::Failure
                } else {
                    Outcome::Success
                };
                d.record(&k, o, S(0));
                if k == 3 {
                    d.record(&k, Outcome::Success, S(0));
                }
            }
        }
        assert_eq!(d.evaluate(S(10)), vec![3]);
        assert_eq!(
            d.status(&3, S(10)).unwrap().last_reason,
            Some(EjectionReason::SuccessRate)
        );
    }

    #[test]
    fn bad_config_is_refused() {
        let bad = OutlierConfig {
            max_ejected_fraction: 1.5,
            ..Default::default()
        };
        assert!(OutlierDetector::<u32>::new(bad).is_err());
        let bad = OutlierConfig {
            base_ejection: Duration::ZERO,
            ..Default::default()
        };
        assert!(OutlierDetector::<u32>::new(bad).is_err());
        let bad = OutlierConfig {
            error_ewma_alpha: f64::NAN,
            ..Default::default()
        };
        assert!(OutlierDetector::<u32>::new(bad).is_err());
    }

    proptest! {
        #[test]
        fn ejection_never_empties_the_pool(
            n in 1u32..12,
            fraction in 0.0f64..=1.0,
            events in proptest::collection::vec((0u32..12, any::<bool>(), 0u64..5), 0..400),
        ) {
            let config = OutlierConfig {
                consecutive_failures: 2,
                max_ejected_fraction: fraction,
                success_rate: Some(SuccessRate { min_requests: 3, min_hosts: 2, stdev_factor: 0.5 }),
                ..Default::default()
            };
            let mut d = OutlierDetector::new(config).unwrap();
            d.set_members(&(0..n).collect::<Vec<_>>());
            let mut now = Duration::ZERO;
            for (k, fail, step) in events {
                now += Duration::from_secs(step);
                let outcome = if fail { Outcome::Failure } else { Outcome::Success };
                d.record(&(k % n), outcome, now);
                if step == 4 {
                    d.evaluate(now);
                }
                let ejected = (0..n).filter(|k| d.is_ejected(k, now)).count();
                prop_assert!(ejected < n as usize, "all {n} ejected");
                prop_assert!(ejected as f64 <= (fraction * f64::from(n)).floor());
            }
        }
    }
}

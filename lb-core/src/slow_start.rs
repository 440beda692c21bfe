//! Slow start: a newly ready endpoint's weight ramps up over a window.
//!
//! Age is measured from the endpoint's `ready_since`, which eds-server takes
//! from Kubernetes, so a client that restarts still knows which endpoints are
//! new (Envoy's slow start, keyed on when the client first saw a host, resets
//! on every client restart). The ramp is Envoy's:
//!
//! ```text
//!   factor(age) = max(min_weight, (age / window) ^ (1 / aggression))   for age < window
//!               = 1                                                     afterwards
//! ```

use std::time::{Duration, SystemTime};

use crate::error::ConfigError;

/// Slow-start configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlowStart {
    window: Duration,
    aggression: f64,
    min_weight: f64,
}

impl SlowStart {
    /// `window` > 0; `aggression` in (0, 10] (1 is linear, larger ramps
    /// faster at first); `min_weight` in (0, 1], the share a brand-new
    /// endpoint starts with so it is not starved entirely.
    pub fn new(window: Duration, aggression: f64, min_weight: f64) -> Result<Self, ConfigError> {
        if window.is_zero() {
            return Err(ConfigError::OutOfRange {
                name: "slow-start window",
                expected: "longer than zero",
                value: 0.0,
            });
        }
        let aggression = ConfigError::check(
            "slow-start aggression",
            "in (0, 10]",
            aggression,
            f64::MIN_POSITIVE,
            10.0,
        )?;
        let min_weight = ConfigError::check(
            "slow-start minimum weight",
            "in (0, 1]",
            min_weight,
            f64::MIN_POSITIVE,
            1.0,
        )?;
        Ok(Self {
            window,
            aggression,
            min_weight,
        })
    }

    /// The window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// The weight multiplier, in `[min_weight, 1]`, of an endpoint ready
    /// since `ready_since`. Unknown readiness counts as old: better to treat
    /// a new endpoint as warm than to starve an old one forever. A time in
    /// the future (clock skew) counts as just ready.
    pub fn factor(&self, ready_since: Option<SystemTime>, now: SystemTime) -> f64 {
        let Some(since) = ready_since else {
            return 1.0;
        };
        let age = now.duration_since(since).unwrap_or(Duration::ZERO);
        if age >= self.window {
            return 1.0;
        }
        let t = age.as_secs_f64() / self.window.as_secs_f64();
        t.powf(1.0 / self.aggression).max(self.min_weight)
    }
}

impl Default for SlowStart {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(30),
            aggression: 1.0,
            min_weight: 0.1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ramps_over_the_window() {
        let ss = SlowStart::new(Duration::from_secs(10), 1.0, 0.1).unwrap();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let at = |s: u64| ss.factor(Some(t0), t0 + Duration::from_secs(s));
        assert_eq!(at(0), 0.1);
        assert!((at(5) - 0.5).abs() < 1e-9);
        assert_eq!(at(10), 1.0);
        assert_eq!(at(1000), 1.0);
        assert_eq!(ss.factor(None, t0), 1.0);
        assert_eq!(
            ss.factor(Some(t0 + Duration::from_secs(5)), t0),
            0.1,
            "future counts as new"
        );
        let aggressive = SlowStart::new(Duration::from_secs(10), 2.0, 0.1).unwrap();
        assert!(aggressive.factor(Some(t0), t0 + Duration::from_secs(2)) > at(2));
    }

    #[test]
    fn rejects_bad_config() {
        assert!(SlowStart::new(Duration::ZERO, 1.0, 0.1).is_err());
        assert!(SlowStart::new(Duration::from_secs(1), 0.0, 0.1).is_err());
        assert!(SlowStart::new(Duration::from_secs(1), f64::NAN, 0.1).is_err());
        assert!(SlowStart::new(Duration::from_secs(1), 1.0, 0.0).is_err());
        assert!(SlowStart::new(Duration::from_secs(1), 1.0, 1.5).is_err());
    }

    proptest! {
        #[test]
        fn factor_is_monotone_and_bounded(a in 0u64..20_000, b in 0u64..20_000, aggr in 0.1f64..5.0, min in 0.01f64..1.0) {
            let ss = SlowStart::new(Duration::from_secs(10), aggr, min).unwrap();
            let t0 = SystemTime::UNIX_EPOCH;
            let (lo, hi) = (a.min(b), a.max(b));
            let f = |ms: u64| ss.factor(Some(t0), t0 + Duration::from_millis(ms));
            prop_assert!(f(lo) <= f(hi));
            prop_assert!((min..=1.0).contains(&f(lo)));
        }
    }
}

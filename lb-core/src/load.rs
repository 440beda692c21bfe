//! How algorithms read load, and the peak-EWMA latency estimator.
//!
//! Pickers never own load counters: the caller (lb-client's connection pool,
//! or the simulator) keeps them and lends them through [`Load`], indexed like
//! the endpoint slice the picker was given. This keeps the algorithms pure and
//! lets the same code run over atomics in production and plain integers in
//! the simulator.

use std::time::Duration;

/// Load of endpoints, by index into the endpoint list a picker was built from.
pub trait Load {
    /// Requests currently outstanding on endpoint `i`.
    fn in_flight(&self, i: usize) -> u32;

    /// Estimated latency of endpoint `i` in seconds (for example peak EWMA),
    /// when known. `None` means no estimate: pickers fall back to in-flight.
    #[inline]
    fn latency(&self, _i: usize) -> Option<f64> {
        None
    }
}

impl Load for [u32] {
    #[inline]
    fn in_flight(&self, i: usize) -> u32 {
        self[i]
    }
}

impl Load for Vec<u32> {
    #[inline]
    fn in_flight(&self, i: usize) -> u32 {
        self[i]
    }
}

/// Peak-EWMA latency: jumps up at once on a slow response, decays towards the
/// recent mean with time constant `tau`.
///
/// Reacting to peaks at once and forgetting them slowly is what makes a
/// sudden slowdown steer traffic away within one request, while a single fast
/// answer cannot make a slow endpoint look good (the Finagle/linkerd design).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeakEwma {
    estimate: f64,
    /// Time of the last observation, in seconds on the caller's clock.
    last: f64,
    tau: f64,
}

impl PeakEwma {
    /// An estimator starting at `initial` seconds with decay time `tau`.
    pub fn new(initial: Duration, tau: Duration) -> Self {
        Self {
            estimate: initial.as_secs_f64(),
            last: f64::NEG_INFINITY,
            tau: tau.as_secs_f64().max(f64::MIN_POSITIVE),
        }
    }

    /// Records a response that took `rtt` seconds, observed at `now` seconds.
    /// Non-finite or negative observations are ignored rather than poisoning
    /// the estimate.
    pub fn observe(&mut self, rtt: f64, now: f64) {
        if !rtt.is_finite() || rtt < 0.0 || !now.is_finite() {
            return;
        }
        if rtt > self.estimate || !self.last.is_finite() {
            self.estimate = rtt;
        } else {
            let elapsed = (now - self.last).max(0.0);
            let w = (-elapsed / self.tau).exp();
            self.estimate = self.estimate * w + rtt * (1.0 - w);
        }
        self.last = now;
    }

    /// The current estimate in seconds.
    pub fn get(&self) -> f64 {
        self.estimate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peaks_at_once_and_decays_slowly() {
        let mut e = PeakEwma::new(Duration::from_millis(10), Duration::from_secs(1));
        e.observe(0.010, 0.0);
        e.observe(0.100, 0.1);
        assert_eq!(e.get(), 0.100, "a slow answer is taken at once");
        e.observe(0.010, 0.2);
        assert!(
            e.get() > 0.09,
            "one fast answer barely moves it: {}",
            e.get()
        );
        for i in 0..100 {
            e.observe(0.010, 0.3 + f64::from(i) * 0.1);
        }
        assert!(
            e.get() < 0.011,
            "decays towards the recent mean: {}",
            e.get()
        );
        e.observe(f64::NAN, 20.0);
        e.observe(-1.0, 20.0);
        assert!(e.get().is_finite() && e.get() > 0.0);
    }
}

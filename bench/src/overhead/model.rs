//! What the in-flight distribution of the `overhead` benchmark would be
//! with no CPU, no network and no clock noise: a closed loop of callers over
//! backends that are pure delays, picking with lb-core's own P2C picker, with
//! round robin, pure two choices and least-request-over-all beside it.
//!
//! It answers one question the measurement alone cannot: is a max/mean
//! above the target the client's fault (stale counts, unfair sampling) or
//! what the picker itself does on this fleet? lb-core's `P2c` scans every
//! endpoint of a set of at most `lb_core::pick::SCAN_ALL_UP_TO` (16) and
//! samples two above that, so on this 10-backend fleet it is least in
//! flight over all, ties broken at random, and should match `LeastOfAll`
//! (an independent implementation here) within noise. `TwoChoices` keeps
//! the rule it replaced on small sets: comparing two random endpoints, with
//! a handful of requests per endpoint the slow ones keep a higher count for
//! longer than the fast ones do.
//!
//! Deterministic (seeded, time is a number), no IO. Not lb-core's simulator
//! (`lb_core::sim`), which models FIFO servers with Poisson arrivals rather
//! than a closed loop over fixed delays.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use lb_core::pick::{P2c, two_choices_by};
use lb_core::{Rng, SmallRng};

/// How the model picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ModelPolicy {
    /// lb-core's `P2c` over in-flight counts, as lb-client runs it: a full
    /// scan up to `SCAN_ALL_UP_TO` endpoints, two choices above.
    P2c,
    /// Power of two choices whatever the endpoint count
    /// (`lb_core::pick::two_choices_by`): what `P2c` does above the scan
    /// threshold, and did on every set before it had one.
    TwoChoices,
    /// Round robin.
    RoundRobin,
    /// The least in-flight of all endpoints (random among ties).
    LeastOfAll,
}

/// Time-averaged in flight per backend for `callers` closed-loop callers
/// over backends taking `delays_us` each, until `horizon_us` of model time.
pub(crate) fn mean_in_flight(
    delays_us: &[u64],
    callers: usize,
    policy: ModelPolicy,
    horizon_us: u64,
    seed: u64,
) -> Vec<f64> {
    let n = delays_us.len();
    if n == 0 {
        return Vec::new();
    }
    let candidates: Vec<u32> = (0..n as u32).collect();
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut in_flight = vec![0u32; n];
    let mut area = vec![0u128; n];
    let mut next_rr = 0usize;
    let mut pick = |in_flight: &[u32], rng: &mut SmallRng| -> usize {
        match policy {
            ModelPolicy::P2c => P2c::default()
                .pick(&candidates, &[], in_flight, rng)
                .map_or(0, |i| i as usize),
            ModelPolicy::TwoChoices => {
                two_choices_by(&candidates, rng, |i| f64::from(in_flight[i as usize]))
                    .map_or(0, |i| i as usize)
            }
            ModelPolicy::RoundRobin => {
                next_rr = (next_rr + 1) % n;
                next_rr
            }
            ModelPolicy::LeastOfAll => {
                let min = in_flight.iter().copied().min().unwrap_or(0);
                let ties = in_flight.iter().filter(|&&c| c == min).count() as u32;
                let k = rng.below(ties) as usize;
                in_flight
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| **c == min)
                    .nth(k)
                    .map_or(0, |(i, _)| i)
            }
        }
    };
    // (completion time, sequence for a stable order, backend)
    let mut events = BinaryHeap::new();
    let mut seq = 0u64;
    for _ in 0..callers {
        let i = pick(&in_flight, &mut rng);
        in_flight[i] += 1;
        events.push(Reverse((delays_us[i], seq, i)));
        seq += 1;
    }
    let mut last = 0u64;
    while let Some(Reverse((t, _, i))) = events.pop() {
        if t > horizon_us {
            break;
        }
        for (a, c) in area.iter_mut().zip(&in_flight) {
            *a += u128::from(*c) * u128::from(t - last);
        }
        last = t;
        in_flight[i] -= 1;
        let j = pick(&in_flight, &mut rng);
        in_flight[j] += 1;
        events.push(Reverse((t + delays_us[j], seq, j)));
        seq += 1;
    }
    let span = last.max(1) as f64;
    area.into_iter().map(|a| a as f64 / span).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max_over_mean(v: &[f64]) -> f64 {
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        v.iter().copied().fold(0.0, f64::max) / mean
    }

    #[test]
    fn callers_are_conserved_and_runs_repeat() {
        let delays: Vec<u64> = (1..=10).map(|ms| ms * 1000).collect();
        for policy in [
            ModelPolicy::P2c,
            ModelPolicy::TwoChoices,
            ModelPolicy::RoundRobin,
            ModelPolicy::LeastOfAll,
        ] {
            let a = mean_in_flight(&delays, 32, policy, 2_000_000, 7);
            let total: f64 = a.iter().sum();
            assert!((total - 32.0).abs() < 1e-6, "{policy:?}: {total}");
            assert_eq!(a, mean_in_flight(&delays, 32, policy, 2_000_000, 7));
        }
    }

    #[test]
    fn round_robin_load_follows_latency_and_least_of_all_evens_it() {
        let delays: Vec<u64> = (1..=10).map(|ms| ms * 1000).collect();
        let ratio = |policy| max_over_mean(&mean_in_flight(&delays, 64, policy, 5_000_000, 1));
        // Round robin sends equal rates, so in flight is proportional to the
        // delay: max/mean = 10 / 5.5.
        let rr = ratio(ModelPolicy::RoundRobin);
        assert!((rr - 10.0 / 5.5).abs() < 0.02);
        let two = ratio(ModelPolicy::TwoChoices);
        let p2c = ratio(ModelPolicy::P2c);
        let least = ratio(ModelPolicy::LeastOfAll);
        // 10 endpoints are within lb-core's full scan: P2c is least of all.
        assert!(delays.len() <= lb_core::pick::SCAN_ALL_UP_TO);
        assert!((p2c - least).abs() < 0.02, "{p2c} {least}");
        assert!(p2c < two && two < rr, "{p2c} {two} {rr}");
    }
}

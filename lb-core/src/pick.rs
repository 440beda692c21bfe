//! The per-request pickers that need no hash key: power of two choices (on
//! in-flight requests, optionally weighted by peak-EWMA latency), round robin,
//! random and smooth weighted round robin.
//!
//! Each picker chooses among `candidates`, a slice of endpoint indices that
//! the caller prepared (usually [`crate::balancer::Balancer`], which filters
//! health, ejection and zone first). Picks never allocate: the candidate
//! slice and any per-endpoint state are sized when the endpoint set changes,
//! not per request. Pickers do not track load; they read it through
//! [`Load`].

use crate::load::Load;
use crate::rng::Rng;

/// Two distinct uniform positions in `0..n`, `n >= 2`.
#[inline]
fn distinct_pair<R: Rng + ?Sized>(n: u32, rng: &mut R) -> (u32, u32) {
    debug_assert!(n >= 2);
    let a = rng.below(n);
    // Draw from n-1 slots and skip over `a`: uniform over the others, no retry loop.
    let mut b = rng.below(n - 1);
    if b >= a {
        b += 1;
    }
    debug_assert_ne!(a, b);
    (a, b)
}

/// Power of two choices with an arbitrary cost: samples two distinct
/// candidates and returns the cheaper (the first sampled on a tie).
///
/// A NaN cost counts as infinitely expensive, so a broken estimate can only
/// push traffic away from an endpoint, never towards it.
#[inline]
pub fn p2c_by<R, F>(candidates: &[u32], rng: &mut R, mut cost: F) -> Option<u32>
where
    R: Rng + ?Sized,
    F: FnMut(u32) -> f64,
{
    match candidates.len() {
        0 => None,
        1 => Some(candidates[0]),
        n => {
            let n = u32::try_from(n).unwrap_or(u32::MAX);
            let (a, b) = distinct_pair(n, rng);
            let (a, b) = (candidates[a as usize], candidates[b as usize]);
            let finite = |c: f64| if c.is_nan() { f64::INFINITY } else { c };
            let (ca, cb) = (finite(cost(a)), finite(cost(b)));
            Some(if cb < ca { b } else { a })
        }
    }
}

/// What power of two choices compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum P2cCost {
    /// Requests in flight, divided by the endpoint's effective weight.
    #[default]
    InFlight,
    /// Peak-EWMA latency times (in-flight + 1), divided by the effective
    /// weight: an estimate of how long a new request would wait.
    PeakEwma,
}

/// Power of two choices over in-flight requests or peak-EWMA cost.
#[derive(Debug, Clone, Copy, Default)]
pub struct P2c {
    /// What to compare.
    pub cost: P2cCost,
}

impl P2c {
    /// Picks among `candidates`. `weights[i]` is endpoint `i`'s effective
    /// weight (endpoint weight, slow start, error penalty), all positive; an
    /// empty `weights` means all equal. With equal weights and
    /// [`P2cCost::InFlight`], the result is never the more loaded of the two
    /// sampled candidates.
    #[inline]
    pub fn pick<L, R>(
        &self,
        candidates: &[u32],
        weights: &[f64],
        load: &L,
        rng: &mut R,
    ) -> Option<u32>
    where
        L: Load + ?Sized,
        R: Rng + ?Sized,
    {
        let weight = |i: u32| weights.get(i as usize).copied().unwrap_or(1.0);
        match self.cost {
            P2cCost::InFlight => p2c_by(candidates, rng, |i| {
                f64::from(load.in_flight(i as usize)) / weight(i)
            }),
            P2cCost::PeakEwma => p2c_by(candidates, rng, |i| {
                let pending = f64::from(load.in_flight(i as usize)) + 1.0;
                // Without an estimate yet, fall back to counting requests.
                let latency = load.latency(i as usize).unwrap_or(1.0);
                latency * pending / weight(i)
            }),
        }
    }
}

/// Round robin over the candidates, in their order.
#[derive(Debug, Clone, Default)]
pub struct RoundRobin {
    next: usize,
}

impl RoundRobin {
    /// A round robin starting at `offset`; clients should start at a random
    /// offset so they do not all hit the first endpoint together.
    pub fn starting_at(offset: usize) -> Self {
        Self { next: offset }
    }

    /// The next candidate.
    #[inline]
    pub fn pick(&mut self, candidates: &[u32]) -> Option<u32> {
        if candidates.is_empty() {
            return None;
        }
        let i = self.next % candidates.len();
        self.next = i + 1;
        Some(candidates[i])
    }
}

/// A uniformly random candidate.
#[inline]
pub fn random<R: Rng + ?Sized>(candidates: &[u32], rng: &mut R) -> Option<u32> {
    match candidates.len() {
        0 => None,
        n => Some(candidates[rng.below(u32::try_from(n).unwrap_or(u32::MAX)) as usize]),
    }
}

/// Smooth weighted round robin (the nginx algorithm): over any window of
/// `sum(weights)` picks each candidate is chosen in proportion to its weight,
/// and heavy candidates are interleaved with light ones instead of bunched.
#[derive(Debug, Clone, Default)]
pub struct SmoothWeighted {
    current: Vec<f64>,
}

impl SmoothWeighted {
    /// Sizes the state for `n` endpoints and forgets the old rotation. Call
    /// when the endpoint set changes, not per pick.
    pub fn reset(&mut self, n: usize) {
        self.current.clear();
        self.current.resize(n, 0.0);
    }

    /// Picks among `candidates` with `weights[i]` for endpoint `i`
    /// (non-positive or NaN weights count as zero; all zero picks the first).
    #[inline]
    pub fn pick(&mut self, candidates: &[u32], weights: &[f64]) -> Option<u32> {
        let first = *candidates.first()?;
        let mut total = 0.0;
        let mut best = first;
        let mut best_value = f64::NEG_INFINITY;
        for &c in candidates {
            let w = weights.get(c as usize).copied().unwrap_or(1.0);
            let w = if w > 0.0 { w } else { 0.0 };
            // Endpoints outside the sized state (a stale reset) are still pickable.
            let Some(cur) = self.current.get_mut(c as usize) else {
                continue;
            };
            *cur += w;
            total += w;
            if *cur > best_value {
                best_value = *cur;
                best = c;
            }
        }
        if let Some(cur) = self.current.get_mut(best as usize) {
            *cur -= total;
        }
        Some(best)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SmallRng;
    use proptest::prelude::*;

    #[test]
    fn empty_and_single() {
        let mut rng = SmallRng::seed_from_u64(0);
        let load: Vec<u32> = vec![5];
        assert_eq!(P2c::default().pick(&[], &[], &load, &mut rng), None);
        assert_eq!(P2c::default().pick(&[0], &[], &load, &mut rng), Some(0));
        assert_eq!(RoundRobin::default().pick(&[]), None);
        assert_eq!(random(&[], &mut rng), None);
        assert_eq!(SmoothWeighted::default().pick(&[], &[]), None);
    }

    #[test]
    fn round_robin_cycles() {
        let mut rr = RoundRobin::starting_at(1);
        let picks: Vec<u32> = (0..5).filter_map(|_| rr.pick(&[7, 8, 9])).collect();
        assert_eq!(picks, vec![8, 9, 7, 8, 9]);
        // A shrinking set keeps going without panicking.
        assert_eq!(rr.pick(&[1]), Some(1));
    }

    #[test]
    fn smooth_weighted_interleaves_in_proportion() {
        let mut swrr = SmoothWeighted::default();
        swrr.reset(3);
        let weights = [5.0, 1.0, 1.0];
        let picks: Vec<u32> = (0..7)
            .filter_map(|_| swrr.pick(&[0, 1, 2], &weights))
            .collect();
        // nginx's reference sequence for {a:5, b:1, c:1}.
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn peak_ewma_avoids_the_slow_endpoint() {
        struct L;
        impl Load for L {
            fn in_flight(&self, _: usize) -> u32 {
                0
            }
            fn latency(&self, i: usize) -> Option<f64> {
                Some(if i == 0 { 1.0 } else { 0.01 })
            }
        }
        let p2c = P2c {
            cost: P2cCost::PeakEwma,
        };
        let mut rng = SmallRng::seed_from_u64(3);
        for _ in 0..100 {
            assert_eq!(p2c.pick(&[0, 1], &[], &L, &mut rng), Some(1));
        }
    }

    #[test]
    fn nan_cost_is_never_preferred() {
        let mut rng = SmallRng::seed_from_u64(9);
        for _ in 0..100 {
            let pick = p2c_by(&[0, 1], &mut rng, |i| if i == 0 { f64::NAN } else { 5.0 });
            assert_eq!(pick, Some(1));
        }
    }

    /// Load that records which endpoints P2C looked at.
    struct Recording<'a> {
        in_flight: &'a [u32],
        seen: std::cell::RefCell<Vec<usize>>,
    }
    impl Load for Recording<'_> {
        fn in_flight(&self, i: usize) -> u32 {
            self.seen.borrow_mut().push(i);
            self.in_flight[i]
        }
    }

    proptest! {
        #[test]
        fn p2c_never_picks_the_more_loaded_of_its_two(
            in_flight in proptest::collection::vec(0u32..50, 2..40),
            seed: u64,
        ) {
            let candidates: Vec<u32> = (0..in_flight.len() as u32).collect();
            let mut rng = SmallRng::seed_from_u64(seed);
            for _ in 0..20 {
                let load = Recording { in_flight: &in_flight, seen: Default::default() };
                let pick = P2c::default().pick(&candidates, &[], &load, &mut rng).unwrap() as usize;
                let seen = load.seen.into_inner();
                prop_assert_eq!(seen.len(), 2);
                prop_assert_ne!(seen[0], seen[1], "two distinct candidates");
                prop_assert!(seen.contains(&pick));
                let other = if seen[0] == pick { seen[1] } else { seen[0] };
                prop_assert!(in_flight[pick] <= in_flight[other]);
            }
        }

        #[test]
        fn picks_are_always_candidates(
            candidates in proptest::collection::vec(0u32..64, 1..20),
            seed: u64,
        ) {
            let load = vec![1u32; 64];
            let weights = vec![1.0; 64];
            let mut rng = SmallRng::seed_from_u64(seed);
            let mut rr = RoundRobin::default();
            let mut sw = SmoothWeighted::default();
            sw.reset(64);
            for _ in 0..10 {
                for pick in [
                    P2c::default().pick(&candidates, &weights, &load, &mut rng),
                    P2c { cost: P2cCost::PeakEwma }.pick(&candidates, &weights, &load, &mut rng),
                    rr.pick(&candidates),
                    random(&candidates, &mut rng),
                    sw.pick(&candidates, &weights),
                ] {
                    prop_assert!(candidates.contains(&pick.unwrap()));
                }
            }
        }

        #[test]
        fn smooth_weighted_share_matches_weights(
            weights in proptest::collection::vec(1u32..6, 1..8),
        ) {
            let n = weights.len();
            let w: Vec<f64> = weights.iter().map(|&x| f64::from(x)).collect();
            let candidates: Vec<u32> = (0..n as u32).collect();
            let mut sw = SmoothWeighted::default();
            sw.reset(n);
            let total: u32 = weights.iter().sum();
            let mut counts = vec![0u32; n];
            for _ in 0..total * 3 {
                counts[sw.pick(&candidates, &w).unwrap() as usize] += 1;
            }
            for i in 0..n {
                prop_assert_eq!(counts[i], weights[i] * 3);
            }
        }
    }
}

//! The per-request pickers that need no hash key: least-request choice (on
//! in-flight requests, optionally weighted by peak-EWMA latency), round
//! robin, random and smooth weighted round robin.
//!
//! The least-request picker ([`P2c`], [`p2c_by`]) is Envoy's least-request
//! `choice_count` generalised by candidate count: it returns the cheapest of
//! `d` distinct random candidates, where `d` is
//! - every candidate when there are at most [`SCAN_ALL_UP_TO`] (16): a full
//!   scan, ties broken uniformly at random, so equal-load endpoints share
//!   traffic evenly;
//! - two above that (power of two choices): a pick costs the same at 17
//!   endpoints as at 10,000.
//!
//! Why not always two: with a few requests per endpoint and heterogeneous
//! latency, two choices leave slow endpoints with more in flight for longer
//! (on 10 endpoints at 1..10 ms and 32 callers, a model of the closed loop
//! gives max/mean in flight about 1.31 for two choices against about 1.06
//! for the full scan; `bench/src/overhead/model.rs`). Two choices exist for
//! large fleets, where a scan is O(n), and for shared or delayed load views,
//! where every caller scanning for the same minimum herds onto it. Neither
//! applies to a small set read through [`Load`] as the caller's own live
//! counters (lb-client counts and picks under one lock). The scan costs
//! more than two random draws, but a bounded few nanoseconds (see
//! [`SCAN_ALL_UP_TO`]).
//!
//! What it is not: not Envoy's weighted least-request, which switches to a
//! weighted round-robin schedule when weights differ (here weights divide
//! the cost, in both modes); not a global least-loaded balancer (each
//! caller sees only the load it lends through [`Load`]); and not two
//! choices on small sets, so the supermarket model of `lb_core::sim::theory`
//! describes it only above [`SCAN_ALL_UP_TO`] candidates.
//!
//! Each picker chooses among `candidates`, a slice of endpoint indices that
//! the caller prepared (usually [`crate::balancer::Balancer`], which filters
//! health, ejection and zone first). Picks never allocate: the candidate
//! slice and any per-endpoint state are sized when the endpoint set changes,
//! not per request, and the full scan keeps its ties in a fixed array on
//! the stack. Pickers do not track load; they read it through [`Load`].

use crate::load::Load;
use crate::rng::Rng;

/// Candidate sets up to this size are scanned whole; larger ones sample two.
///
/// The cost that sets it: a scan reads, divides and compares one counter and
/// weight per candidate and draws at most one random number (only on a
/// tie); two choices draw two random numbers and read two counters. The
/// scan is not free: measured on this project's 2-core machine with random
/// in-flight counts, two choices take about 5 ns and 120 instructions at any
/// size, the scan about 1.5 ns per candidate, so about 16 ns and 340
/// instructions at 10 and 25 ns at 16 (`bench/src/bin/picker.rs`), where
/// two choices would cost about what a scan of 4 does. At 16 that is still
/// about a thousandth of lb-client's own CPU per request (about 20 us in
/// `bench/src/bin/overhead.rs`). 16 covers the fleets where two choices
/// fall shortest (a handful of requests in flight per endpoint: on 10
/// endpoints at 1..10 ms, max/mean in flight about 1.04 measured against
/// about 1.22 for two choices) and a typical zone of a larger service, and
/// bounds the worst pick near 25 ns; any larger set keeps an O(1) pick.
pub const SCAN_ALL_UP_TO: usize = 16;

/// A cost with NaN counted as infinitely expensive, so a broken estimate can
/// only push traffic away from an endpoint, never towards it.
#[inline]
fn finite(c: f64) -> f64 {
    if c.is_nan() { f64::INFINITY } else { c }
}

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

/// The least-request pick with an arbitrary cost: the cheapest of every
/// candidate when there are at most [`SCAN_ALL_UP_TO`], else of two distinct
/// random ones (see the module docs). Ties are broken uniformly at random.
/// A NaN cost counts as infinitely expensive.
#[inline]
pub fn p2c_by<R, F>(candidates: &[u32], rng: &mut R, cost: F) -> Option<u32>
where
    R: Rng + ?Sized,
    F: FnMut(u32) -> f64,
{
    match candidates.len() {
        0 => None,
        1 => Some(candidates[0]),
        n if n <= SCAN_ALL_UP_TO => least_of_all_by(candidates, rng, cost),
        _ => two_choices_by(candidates, rng, cost),
    }
}

/// Power of two choices with an arbitrary cost, whatever the candidate
/// count: samples two distinct candidates and returns the cheaper. On a tie
/// it returns the first sampled, which is itself a uniform draw, so tied
/// pairs split evenly. [`p2c_by`] uses it above [`SCAN_ALL_UP_TO`]
/// candidates; it is public for models and tests that compare the rules.
#[inline]
pub fn two_choices_by<R, F>(candidates: &[u32], rng: &mut R, mut cost: F) -> Option<u32>
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
            let (ca, cb) = (finite(cost(a)), finite(cost(b)));
            Some(if cb < ca { b } else { a })
        }
    }
}

/// The cheapest of every candidate, a uniformly random one among those
/// tied for cheapest (all of them if every cost is NaN or infinite).
///
/// One pass: the candidates tied for the cheapest cost so far are kept in a
/// fixed array on the stack (restarted when a cheaper one appears), so the
/// scan never allocates, reads each cost once (a counter that moves during
/// the scan cannot make the tie set inconsistent), and draws one random
/// number, only on a tie. [`p2c_by`] never passes more than
/// [`SCAN_ALL_UP_TO`] candidates (any past it would be ignored).
#[inline]
fn least_of_all_by<R, F>(candidates: &[u32], rng: &mut R, mut cost: F) -> Option<u32>
where
    R: Rng + ?Sized,
    F: FnMut(u32) -> f64,
{
    debug_assert!(candidates.len() <= SCAN_ALL_UP_TO);
    let candidates = &candidates[..candidates.len().min(SCAN_ALL_UP_TO)];
    let mut tied = [0u32; SCAN_ALL_UP_TO];
    let mut ties = 0usize;
    let mut best = f64::INFINITY;
    for &c in candidates {
        let x = finite(cost(c));
        if x < best {
            best = x;
            tied[0] = c;
            ties = 1;
        } else if x == best {
            // At most one store per candidate, so `ties` < SCAN_ALL_UP_TO here.
            tied[ties] = c;
            ties += 1;
        }
    }
    match ties {
        // Empty candidates.
        0 => None,
        1 => Some(tied[0]),
        n => {
            let k = rng.below(u32::try_from(n).unwrap_or(u32::MAX));
            tied.get(k as usize).copied()
        }
    }
}

/// What the least-request picker compares.
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

/// The least-request picker over in-flight requests or peak-EWMA cost: the
/// cheapest of every candidate up to [`SCAN_ALL_UP_TO`], of two random ones
/// above (see the module docs).
///
/// Peak EWMA uses the same choice rule as in-flight. Its cost is the
/// in-flight count (the caller's own, exact at pick time) scaled by a
/// latency estimate, so the scan sends a request where it is expected to
/// wait least, and the in-flight factor spreads a burst as soon as the
/// cheapest endpoint fills up, as it does for the in-flight cost. An
/// estimate that lags (peak EWMA moves only when answers arrive) is no
/// better served by two choices on a small set: an endpoint whose estimate
/// is far above the rest loses every comparison under either rule.
#[derive(Debug, Clone, Copy, Default)]
pub struct P2c {
    /// What to compare.
    pub cost: P2cCost,
}

impl P2c {
    /// Picks among `candidates`. `weights[i]` is endpoint `i`'s effective
    /// weight (endpoint weight, slow start, error penalty), all positive; an
    /// empty `weights` means all equal. With equal weights and
    /// [`P2cCost::InFlight`], the result has the fewest requests in flight
    /// of all candidates when there are at most [`SCAN_ALL_UP_TO`], and is
    /// never the more loaded of the two sampled candidates above that.
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
        // Small sets (scanned) and large ones (two choices).
        for n in [2u32, 5, SCAN_ALL_UP_TO as u32, 40] {
            let candidates: Vec<u32> = (0..n).collect();
            for _ in 0..200 {
                let pick = p2c_by(
                    &candidates,
                    &mut rng,
                    |i| {
                        if i == 0 { 5.0 } else { f64::NAN }
                    },
                );
                if n <= SCAN_ALL_UP_TO as u32 {
                    assert_eq!(pick, Some(0), "the only real cost wins a scan");
                }
                let pick =
                    two_choices_by(&[0, 1], &mut rng, |i| if i == 0 { f64::NAN } else { 5.0 });
                assert_eq!(pick, Some(1));
            }
        }
        // All NaN: every candidate is as bad as the others, so any may win.
        let mut seen = [false; 4];
        for _ in 0..200 {
            let pick = p2c_by(&[0, 1, 2, 3], &mut rng, |_| f64::NAN).unwrap();
            seen[pick as usize] = true;
        }
        assert_eq!(seen, [true; 4]);
    }

    /// How many times each of `0..n` is picked in `picks` picks with fixed
    /// loads and a fixed seed.
    fn counts(in_flight: &[u32], weights: &[f64], cost: P2cCost, picks: u32) -> Vec<u32> {
        let candidates: Vec<u32> = (0..in_flight.len() as u32).collect();
        let mut rng = SmallRng::seed_from_u64(42);
        let mut counts = vec![0u32; in_flight.len()];
        let p2c = P2c { cost };
        for _ in 0..picks {
            let load = in_flight.to_vec();
            let i = p2c.pick(&candidates, weights, &load, &mut rng).unwrap();
            counts[i as usize] += 1;
        }
        counts
    }

    #[test]
    fn ties_for_least_are_spread_evenly() {
        // Four endpoints tied at the minimum, among ten: each gets a quarter
        // of the picks (binomial sd about 87 of 7,500), the others none.
        let in_flight = [3, 1, 2, 1, 5, 1, 4, 2, 1, 3];
        let c = counts(&in_flight, &[], P2cCost::InFlight, 30_000);
        for (i, &n) in c.iter().enumerate() {
            if in_flight[i] == 1 {
                assert!((7_100..7_900).contains(&n), "{c:?}");
            } else {
                assert_eq!(n, 0, "{c:?}");
            }
        }
        // The same with peak EWMA (no estimate: in-flight + 1) and weights
        // that tie 2/2.0 with 1/1.0.
        let weights = [1.0, 1.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
        let in_flight = [3, 1, 2, 2, 5, 4, 4, 2, 3, 3];
        let c = counts(&in_flight, &weights, P2cCost::InFlight, 20_000);
        assert!((9_600..10_400).contains(&c[1]), "{c:?}");
        assert_eq!(c[1] + c[2], 20_000, "{c:?}");
        let c = counts(&[0; 8], &[], P2cCost::PeakEwma, 16_000);
        assert!(c.iter().all(|n| (1_800..2_200).contains(n)), "{c:?}");
        // Above the scan threshold, two choices on equal loads is uniform too.
        let n = SCAN_ALL_UP_TO + 4;
        let c = counts(&vec![2; n], &[], P2cCost::InFlight, 2_000 * n as u32);
        assert!(c.iter().all(|n| (1_800..2_200).contains(n)), "{c:?}");
    }

    #[test]
    fn small_sets_are_scanned_large_ones_sampled() {
        for n in [2usize, 3, 10, SCAN_ALL_UP_TO, SCAN_ALL_UP_TO + 1, 1000] {
            let in_flight: Vec<u32> = (0..n as u32).map(|i| i % 7).collect();
            let candidates: Vec<u32> = (0..n as u32).collect();
            let load = Recording {
                in_flight: &in_flight,
                seen: Default::default(),
            };
            let mut rng = SmallRng::seed_from_u64(1);
            P2c::default().pick(&candidates, &[], &load, &mut rng);
            let seen = load.seen.into_inner();
            let expected = if n <= SCAN_ALL_UP_TO { n } else { 2 };
            assert_eq!(seen.len(), expected, "{n} candidates");
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
        fn small_sets_always_get_a_least_cost_candidate(
            in_flight in proptest::collection::vec(0u32..12, 2..=SCAN_ALL_UP_TO),
            weights in proptest::collection::vec(
                prop_oneof![Just(1.0f64), Just(2.0), 0.25f64..4.0],
                SCAN_ALL_UP_TO,
            ),
            // Candidates in a shuffled order, so position cannot matter.
            rotate in 0usize..SCAN_ALL_UP_TO,
            seed: u64,
        ) {
            let n = in_flight.len();
            let mut candidates: Vec<u32> = (0..n as u32).collect();
            candidates.rotate_left(rotate % n);
            let cost = |i: usize| f64::from(in_flight[i]) / weights[i];
            let least = (0..n).map(cost).fold(f64::INFINITY, f64::min);
            let mut rng = SmallRng::seed_from_u64(seed);
            for _ in 0..20 {
                let load = Recording { in_flight: &in_flight, seen: Default::default() };
                let pick = P2c::default().pick(&candidates, &weights, &load, &mut rng).unwrap() as usize;
                let mut seen = load.seen.into_inner();
                seen.sort_unstable();
                prop_assert_eq!(seen, (0..n).collect::<Vec<_>>(), "every candidate read once");
                prop_assert_eq!(cost(pick), least);
            }
        }

        #[test]
        fn large_sets_never_get_the_more_loaded_of_two(
            in_flight in proptest::collection::vec(0u32..50, SCAN_ALL_UP_TO + 1..80),
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
        fn two_choices_never_picks_the_more_loaded_of_its_two(
            in_flight in proptest::collection::vec(0u32..50, 2..40),
            seed: u64,
        ) {
            let candidates: Vec<u32> = (0..in_flight.len() as u32).collect();
            let mut rng = SmallRng::seed_from_u64(seed);
            for _ in 0..20 {
                let mut seen = Vec::new();
                let pick = two_choices_by(&candidates, &mut rng, |i| {
                    seen.push(i as usize);
                    f64::from(in_flight[i as usize])
                })
                .unwrap() as usize;
                prop_assert_eq!(seen.len(), 2);
                prop_assert_ne!(seen[0], seen[1], "two distinct candidates");
                prop_assert!(seen.contains(&pick));
                let other = if seen[0] == pick { seen[1] } else { seen[0] };
                prop_assert!(in_flight[pick] <= in_flight[other]);
            }
        }

        #[test]
        fn picks_are_always_candidates(
            candidates in proptest::collection::vec(0u32..64, 1..40),
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

//! Consistent hashing: a ring of virtual nodes, and consistent hashing with
//! bounded loads (Mirrokni, Thorup and Zadimoghaddam, 2016).
//!
//! ```text
//!   key hash --> first vnode clockwise --> owner endpoint
//!                    |
//!                    +-- bounded: owner full (in_flight + 1 > ceil(c * mean))?
//!                        keep walking clockwise to the next owner with room
//! ```
//!
//! Vnode positions depend only on each endpoint's identity hash (the caller
//! hashes the address), so every client builds the same ring, and adding or
//! removing one of n endpoints moves about 1/n of the keys. The ring does not
//! track load or health; the caller lends both per pick.

use crate::error::ConfigError;
use crate::load::Load;
use crate::rng::mix64;

/// How big a ring to build.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RingConfig {
    /// Virtual nodes per unit of endpoint weight. More spreads keys more
    /// evenly (the spread of shares falls as 1/sqrt(vnodes)) at the cost of
    /// memory and build time. The count depends on the endpoint's own weight
    /// only, not on the other members, so a membership change moves only the
    /// keys of the endpoint that came or went.
    pub vnodes_per_weight: f64,
    /// Upper bound on the ring size; above it every endpoint's count is
    /// scaled down in proportion, so huge sets stay within memory.
    pub max_ring_size: usize,
}

impl Default for RingConfig {
    fn default() -> Self {
        // 100 per endpoint keeps the share spread near 10%, and 10,000
        // endpoints still fit in ~12 MiB.
        Self {
            vnodes_per_weight: 100.0,
            max_ring_size: 1 << 21,
        }
    }
}

/// The bounded-load factor `c`: no endpoint takes more than `ceil(c * mean)`
/// requests in flight, counting the new one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadFactor(f64);

impl LoadFactor {
    /// `c` must be at least 1 (a cap below the mean cannot be met) and finite.
    pub fn new(c: f64) -> Result<Self, ConfigError> {
        ConfigError::check(
            "hash load factor",
            "a number from 1.0 to 100.0",
            c,
            1.0,
            100.0,
        )
        .map(Self)
    }

    /// The factor.
    pub fn get(self) -> f64 {
        self.0
    }

    /// The most requests one endpoint may have in flight after taking a new
    /// one, when `total_in_flight` are outstanding over `n` endpoints.
    #[inline]
    pub fn cap(self, total_in_flight: u64, n: usize) -> u64 {
        let mean = (total_in_flight as f64 + 1.0) / n.max(1) as f64;
        (self.0 * mean).ceil() as u64
    }
}

impl Default for LoadFactor {
    fn default() -> Self {
        Self(1.25)
    }
}

/// A hash ring of virtual nodes.
#[derive(Debug, Clone, Default)]
pub struct Ring {
    /// Sorted vnode positions.
    hashes: Vec<u64>,
    /// `owners[k]` owns `hashes[k]`; an index into the members given to `build`.
    owners: Vec<u32>,
}

impl Ring {
    /// Builds a ring over `members`: `(identity_hash, weight)` per endpoint,
    /// where the identity hash must be the same on every client (hash the
    /// address with [`crate::rng::hash_bytes`]).
    pub fn build(members: &[(u64, f64)], config: RingConfig) -> Result<Ring, ConfigError> {
        for (index, &(_, w)) in members.iter().enumerate() {
            if !(w.is_finite() && w > 0.0) {
                return Err(ConfigError::BadWeight { index, value: w });
            }
        }
        if !(config.vnodes_per_weight.is_finite() && config.vnodes_per_weight > 0.0)
            || config.max_ring_size == 0
        {
            return Err(ConfigError::OutOfRange {
                name: "ring vnodes per weight",
                expected: "a positive number, with a positive maximum ring size",
                value: config.vnodes_per_weight,
            });
        }
        if members.is_empty() {
            return Ok(Ring::default());
        }
        let wanted: f64 = members.iter().map(|m| m.1 * config.vnodes_per_weight).sum();
        let scale = (config.max_ring_size as f64 / wanted).min(1.0);
        let mut points: Vec<(u64, u32)> =
            Vec::with_capacity(wanted.min(config.max_ring_size as f64) as usize + members.len());
        for (owner, &(id, w)) in members.iter().enumerate() {
            let vnodes = (w * config.vnodes_per_weight * scale).round().max(1.0) as u64;
            for replica in 0..vnodes {
                points.push((mix64(id ^ mix64(replica.wrapping_add(1))), owner as u32));
            }
        }
        // Ties (astronomically rare) break by owner so every client agrees.
        points.sort_unstable();
        Ok(Ring {
            hashes: points.iter().map(|p| p.0).collect(),
            owners: points.iter().map(|p| p.1).collect(),
        })
    }

    /// Number of virtual nodes.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Whether the ring has no members.
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    #[inline]
    fn start(&self, key: u64) -> usize {
        let i = self.hashes.partition_point(|&h| h < key);
        if i == self.hashes.len() { 0 } else { i }
    }

    /// The owner of `key`: plain consistent hashing.
    #[inline]
    pub fn pick(&self, key: u64) -> Option<u32> {
        if self.is_empty() {
            return None;
        }
        Some(self.owners[self.start(key)])
    }

    /// The owner of `key` among members for which `usable` holds, ignoring load.
    #[inline]
    pub fn pick_usable<F: Fn(u32) -> bool>(&self, key: u64, usable: F) -> Option<u32> {
        let start = self.start(key);
        let n = self.len();
        (0..n)
            .map(|k| self.owners[(start + k) % n])
            .find(|&o| usable(o))
    }

    /// Consistent hashing with bounded loads: the first owner clockwise from
    /// `key` that is `usable` and would stay within `factor.cap(total, n)` in
    /// flight after this request. `total_in_flight` and `n` describe the
    /// usable members. When every usable member is at the cap (only possible
    /// when `load` disagrees with `total_in_flight`), the least loaded usable
    /// member seen is returned, so a usable member always gets the request.
    #[inline]
    pub fn pick_bounded<L, F>(
        &self,
        key: u64,
        load: &L,
        total_in_flight: u64,
        n: usize,
        factor: LoadFactor,
        usable: F,
    ) -> Option<u32>
    where
        L: Load + ?Sized,
        F: Fn(u32) -> bool,
    {
        let cap = factor.cap(total_in_flight, n);
        let start = self.start(key);
        let len = self.len();
        let mut fallback: Option<(u32, u32)> = None;
        for k in 0..len {
            let owner = self.owners[(start + k) % len];
            if !usable(owner) {
                continue;
            }
            let in_flight = load.in_flight(owner as usize);
            if u64::from(in_flight) < cap {
                return Some(owner);
            }
            if fallback.is_none_or(|(_, f)| in_flight < f) {
                fallback = Some((owner, in_flight));
            }
        }
        fallback.map(|(o, _)| o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{Rng, SmallRng, hash_bytes};
    use proptest::prelude::*;

    fn members(ids: &[u32]) -> Vec<(u64, f64)> {
        ids.iter()
            .map(|i| {
                (
                    hash_bytes(format!("10.0.{}.{}:80", i / 256, i % 256).as_bytes()),
                    1.0,
                )
            })
            .collect()
    }

    #[test]
    fn rejects_bad_input() {
        assert!(matches!(
            Ring::build(&[(1, 0.0)], RingConfig::default()),
            Err(ConfigError::BadWeight { index: 0, .. })
        ));
        assert!(Ring::build(&[(1, f64::NAN)], RingConfig::default()).is_err());
        assert!(LoadFactor::new(0.9).is_err());
        assert!(LoadFactor::new(f64::NAN).is_err());
        assert!(LoadFactor::new(1.25).is_ok());
        let empty = Ring::build(&[], RingConfig::default()).unwrap();
        assert_eq!(empty.pick(42), None);
        let load: Vec<u32> = vec![];
        assert_eq!(
            empty.pick_bounded(42, &load, 0, 0, LoadFactor::default(), |_| true),
            None
        );
    }

    #[test]
    fn weights_shift_key_shares() {
        let mut m = members(&[0, 1]);
        m[0].1 = 3.0;
        let ring = Ring::build(&m, RingConfig::default()).unwrap();
        let mut rng = SmallRng::seed_from_u64(5);
        let heavy = (0..20_000)
            .filter(|_| ring.pick(rng.next_u64()) == Some(0))
            .count();
        let share = heavy as f64 / 20_000.0;
        assert!(
            (0.68..0.82).contains(&share),
            "weight 3:1 gave share {share}"
        );
    }

    #[test]
    fn bounded_load_spreads_one_hot_key() {
        let ring = Ring::build(
            &members(&(0..10).collect::<Vec<_>>()),
            RingConfig::default(),
        )
        .unwrap();
        let mut load = vec![0u32; 10];
        let factor = LoadFactor::default();
        // 100 concurrent requests for the same key: plain hashing would put all on one endpoint.
        for total in 0..100 {
            let o = ring
                .pick_bounded(7, &load, total, 10, factor, |_| true)
                .unwrap();
            load[o as usize] += 1;
        }
        let max = *load.iter().max().unwrap();
        assert!(u64::from(max) <= factor.cap(99, 10), "{load:?}");
        // Without contention the bounded pick is the plain owner.
        let idle = vec![0u32; 10];
        assert_eq!(
            ring.pick_bounded(7, &idle, 0, 10, factor, |_| true),
            ring.pick(7)
        );
    }

    proptest! {
        #[test]
        fn bounded_load_cap_holds(
            n in 1usize..30,
            c in 1.0f64..3.0,
            ops in proptest::collection::vec((any::<u64>(), any::<bool>()), 1..300),
        ) {
            let ring = Ring::build(&members(&(0..n as u32).collect::<Vec<_>>()), RingConfig::default()).unwrap();
            let factor = LoadFactor::new(c).unwrap();
            let mut load = vec![0u32; n];
            let mut total = 0u64;
            let mut rng = SmallRng::seed_from_u64(ops.len() as u64);
            for (key, finish) in ops {
                if finish && total > 0 {
                    // Finish a request on a random busy endpoint.
                    let busy: Vec<usize> = (0..n).filter(|&i| load[i] > 0).collect();
                    let i = busy[rng.below(busy.len() as u32) as usize];
                    load[i] -= 1;
                    total -= 1;
                } else {
                    let cap = factor.cap(total, n);
                    let o = ring.pick_bounded(key, &load, total, n, factor, |_| true).unwrap() as usize;
                    load[o] += 1;
                    total += 1;
                    prop_assert!(u64::from(load[o]) <= cap, "load {} > cap {}", load[o], cap);
                }
            }
        }

        #[test]
        fn adding_one_endpoint_moves_about_one_in_n_keys(n in 5u32..60, seed: u64) {
            let before = Ring::build(&members(&(0..n).collect::<Vec<_>>()), RingConfig::default()).unwrap();
            let after = Ring::build(&members(&(0..=n).collect::<Vec<_>>()), RingConfig::default()).unwrap();
            let mut rng = SmallRng::seed_from_u64(seed);
            let keys = 4000;
            let mut moved = 0;
            for _ in 0..keys {
                let k = rng.next_u64();
                let (a, b) = (before.pick(k).unwrap(), after.pick(k).unwrap());
                if a != b {
                    // Keys only ever move to the new endpoint.
                    prop_assert_eq!(b, n);
                    moved += 1;
                }
            }
            let share = f64::from(moved) / f64::from(keys);
            let ideal = 1.0 / f64::from(n + 1);
            prop_assert!(share < ideal * 1.6 + 0.01, "moved {share}, ideal {ideal}");
        }

        #[test]
        fn removing_one_endpoint_moves_only_its_keys(n in 5u32..60, gone in 0u32..5, seed: u64) {
            let all: Vec<u32> = (0..n).collect();
            let rest: Vec<u32> = all.iter().copied().filter(|&i| i != gone).collect();
            let before = Ring::build(&members(&all), RingConfig::default()).unwrap();
            let after = Ring::build(&members(&rest), RingConfig::default()).unwrap();
            let mut rng = SmallRng::seed_from_u64(seed);
            for _ in 0..2000 {
                let k = rng.next_u64();
                let a = all[before.pick(k).unwrap() as usize];
                let b = rest[after.pick(k).unwrap() as usize];
                prop_assert!(a == b || a == gone);
            }
        }
    }
}

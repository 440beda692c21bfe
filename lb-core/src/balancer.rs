//! The balancer: every policy of this crate composed over one service's
//! endpoint set, as lb-client and the simulator use it.
//!
//! ```text
//!  EndpointSet --set_endpoints--> per-endpoint view + hash ring
//!                                      |
//!  now, ejected(i), penalty(i) --refresh--> tier, candidates, zone shares
//!                                      |          (allocates; on change or a timer)
//!  load, hash key, rng ----------pick--> Pick { index, reason }   (never allocates)
//! ```
//!
//! Tiers, checked in order at refresh:
//! 1. **Normal**: healthy (ready), non-ejected endpoints. Used unless
//!    outlier ejection left fewer than `panic_threshold` of the healthy ones.
//! 2. **Panic**: below the threshold, every healthy endpoint, ejected or
//!    not: better to spread over all ready pods than to overload the few the
//!    client's own error accounting still trusts.
//! 3. **Draining**: when no healthy endpoint exists, draining endpoints are
//!    better than failing the request, until `drain_margin` before their
//!    `drain_deadline` (when the kubelet kills the pod): a request sent later
//!    would likely be cut off mid-way.
//! 4. **NotReady**: endpoints exist but none is healthy or draining with
//!    time left; nothing is picked and the request fails with
//!    [`PickError::NoneUsable`].
//!
//! Not-ready (unhealthy) endpoints are never picked, in any tier, and do not
//! count towards the panic threshold: they only size each zone's capacity for
//! spillover. Envoy's panic mode counts them and then spreads traffic over
//! them, so during a scale-up whose new pods are mostly not ready, most
//! requests land on pods that are still warming up (istio/istio#39825).
//! Draining endpoints are left out of the threshold too, so a rollout's
//! terminating pods never trip it (istio/istio#54711).
//!
//! Within the normal tier, zone affinity chooses a zone (see [`crate::zone`])
//! and the policy picks inside it; hash policies ignore zones, because
//! stickiness is what they are for. The balancer keeps no load counters and
//! no clock: callers pass them in.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use crate::endpoint::Health;
use crate::error::{ConfigError, PickError};
use crate::load::Load;
use crate::pick::{P2c, P2cCost, RoundRobin, SmoothWeighted, random};
use crate::ring::{LoadFactor, Ring, RingConfig};
use crate::rng::{Rng, hash_bytes};
use crate::slow_start::SlowStart;
use crate::snapshot::EndpointSet;
use crate::zone::{ZoneCapacity, spill_shares};

/// A balancing policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Least request on in-flight requests divided by effective weight (the
    /// default): the least loaded of every candidate in the chosen zone when
    /// there are at most [`crate::pick::SCAN_ALL_UP_TO`], power of two
    /// choices above that; ties broken at random (see [`crate::pick`]).
    #[default]
    P2c,
    /// The same choice rule on peak-EWMA latency times pending requests.
    PeakEwma,
    /// Round robin.
    RoundRobin,
    /// Uniformly random.
    Random,
    /// Smooth weighted round robin over effective weights.
    WeightedRoundRobin,
    /// Consistent hashing on a ring.
    RingHash,
    /// Consistent hashing with bounded loads.
    BoundedLoadHash,
}

impl Policy {
    /// Every policy, in documentation order.
    pub const ALL: [Policy; 7] = [
        Policy::P2c,
        Policy::PeakEwma,
        Policy::RoundRobin,
        Policy::Random,
        Policy::WeightedRoundRobin,
        Policy::RingHash,
        Policy::BoundedLoadHash,
    ];

    /// The name used in flags, annotations and output.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::P2c => "p2c",
            Policy::PeakEwma => "peak-ewma",
            Policy::RoundRobin => "round-robin",
            Policy::Random => "random",
            Policy::WeightedRoundRobin => "weighted-round-robin",
            Policy::RingHash => "ring-hash",
            Policy::BoundedLoadHash => "bounded-load-hash",
        }
    }

    /// Whether the policy needs a hash key per request.
    pub fn is_hash(self) -> bool {
        matches!(self, Policy::RingHash | Policy::BoundedLoadHash)
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown policy name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown balancing policy {0:?}; known: p2c (or least-request), peak-ewma, round-robin, random, weighted-round-robin, ring-hash, bounded-load-hash"
)]
pub struct UnknownPolicy(pub String);

impl FromStr for Policy {
    type Err = UnknownPolicy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "least-request" {
            return Ok(Policy::P2c);
        }
        Policy::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownPolicy(s.to_owned()))
    }
}

/// Balancer settings for one service.
#[derive(Debug, Clone, PartialEq)]
pub struct BalancerConfig {
    /// The policy.
    pub policy: Policy,
    /// The caller's zone; `None` turns zone affinity off.
    pub zone: Option<String>,
    /// Distribution of callers over zones (any scale); `None` assumes it
    /// follows the endpoints' full capacity per zone.
    pub caller_zones: Option<BTreeMap<String, f64>>,
    /// Slow start for new endpoints, when set.
    pub slow_start: Option<SlowStart>,
    /// When outlier ejection leaves fewer than this share of the healthy
    /// endpoints, pick from every healthy endpoint, ejected or not (0
    /// disables). Not-ready endpoints never count and are never picked.
    pub panic_threshold: f64,
    /// Bound for [`Policy::BoundedLoadHash`].
    pub load_factor: LoadFactor,
    /// Ring size for the hash policies.
    pub ring: RingConfig,
    /// A draining endpoint takes no new request this close to its
    /// `drain_deadline`, so requests are not started on a pod about to be
    /// killed.
    pub drain_margin: Duration,
}

impl Default for BalancerConfig {
    fn default() -> Self {
        Self {
            policy: Policy::P2c,
            zone: None,
            caller_zones: None,
            slow_start: None,
            panic_threshold: 0.5,
            load_factor: LoadFactor::default(),
            ring: RingConfig::default(),
            // A typical gRPC request finishes well within this; a pod's
            // grace period (30 s by default) is much longer.
            drain_margin: Duration::from_secs(2),
        }
    }
}

/// Which tier the balancer is picking from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tier {
    /// Healthy, non-ejected endpoints.
    Normal,
    /// Every healthy endpoint, ejected or not: ejection left too few.
    Panic,
    /// No healthy endpoint; draining ones with time left take the traffic.
    Draining,
    /// Endpoints exist, but none is healthy, nor draining with time left
    /// before its deadline: nothing to pick.
    NotReady,
    /// No endpoints at all.
    Empty,
}

/// Why an endpoint was picked, for debug views and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PickReason {
    /// In the caller's own zone.
    Local,
    /// In another zone, because the local zone lacks capacity.
    Spill,
    /// Zone affinity is off or the caller's zone is unknown.
    AnyZone,
    /// Chosen by a hash policy.
    Hash,
    /// Panic tier.
    Panic,
    /// Last resort: a draining endpoint.
    Draining,
}

/// A pick: the endpoint's index in the set given to `set_endpoints`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Pick {
    /// Index into the endpoint set.
    pub index: usize,
    /// Why.
    pub reason: PickReason,
}

#[derive(Debug, Clone)]
struct View {
    address: SocketAddr,
    zone: usize,
    health: Health,
    weight: f64,
    ready_since: Option<SystemTime>,
    drain_deadline: Option<SystemTime>,
}

/// The composed balancer for one service. See the module docs.
#[derive(Debug, Clone)]
pub struct Balancer {
    config: BalancerConfig,
    p2c: P2c,
    endpoints: Vec<View>,
    zones: Vec<String>,
    local_zone: Option<usize>,
    ring: Ring,
    // Refreshed state.
    tier: Tier,
    usable: Vec<bool>,
    usable_count: usize,
    weights: Vec<f64>,
    all: Vec<u32>,
    by_zone: Vec<Vec<u32>>,
    cumulative_shares: Vec<f64>,
    // Rotation state.
    rr: RoundRobin,
    swrr: SmoothWeighted,
}

impl Balancer {
    /// A balancer with no endpoints yet.
    pub fn new(config: BalancerConfig) -> Result<Self, ConfigError> {
        ConfigError::check(
            "panic threshold",
            "in [0, 1]",
            config.panic_threshold,
            0.0,
            1.0,
        )?;
        if let Some(callers) = &config.caller_zones {
            for &v in callers.values() {
                ConfigError::check("caller share", "a finite number >= 0", v, 0.0, f64::MAX)?;
            }
        }
        // Validate the ring settings now rather than on the first endpoint update.
        Ring::build(&[], config.ring)?;
        let p2c = P2c {
            cost: if config.policy == Policy::PeakEwma {
                P2cCost::PeakEwma
            } else {
                P2cCost::InFlight
            },
        };
        Ok(Self {
            config,
            p2c,
            endpoints: Vec::new(),
            zones: Vec::new(),
            local_zone: None,
            ring: Ring::default(),
            tier: Tier::Empty,
            usable: Vec::new(),
            usable_count: 0,
            weights: Vec::new(),
            all: Vec::new(),
            by_zone: Vec::new(),
            cumulative_shares: Vec::new(),
            rr: RoundRobin::default(),
            swrr: SmoothWeighted::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &BalancerConfig {
        &self.config
    }

    /// Replaces the endpoint set and refreshes with nothing ejected and no
    /// penalties. Indices in later picks refer to `set.endpoints()`.
    pub fn set_endpoints(&mut self, set: &EndpointSet, now: SystemTime) {
        let mut zones: Vec<String> = set
            .endpoints()
            .iter()
            .map(|e| e.zone_or_empty().to_owned())
            .collect();
        zones.sort_unstable();
        zones.dedup();
        self.endpoints = set
            .endpoints()
            .iter()
            .map(|e| View {
                address: e.address,
                zone: zones
                    .binary_search_by(|z| z.as_str().cmp(e.zone_or_empty()))
                    .unwrap_or(0),
                health: e.health,
                weight: f64::from(e.weight.get()),
                ready_since: e.ready_since,
                drain_deadline: e.drain_deadline,
            })
            .collect();
        self.local_zone = self
            .config
            .zone
            .as_deref()
            .and_then(|z| zones.binary_search_by(|x| x.as_str().cmp(z)).ok());
        self.zones = zones;
        if self.config.policy.is_hash() {
            let members: Vec<(u64, f64)> = self
                .endpoints
                .iter()
                .map(|v| (hash_bytes(v.address.to_string().as_bytes()), v.weight))
                .collect();
            // Weights are NonZeroU32, so this cannot fail; an empty ring is the safe fallback.
            self.ring = Ring::build(&members, self.config.ring).unwrap_or_default();
        }
        self.swrr.reset(self.endpoints.len());
        self.refresh(now, |_| false, |_| 1.0);
    }

    /// Recomputes tiers, effective weights and zone shares. `ejected(i)` and
    /// `penalty(i)` (a weight multiplier in (0, 1]) come from the caller's
    /// outlier detector. Call after outcomes change ejections, and every
    /// second or so while slow start is ramping.
    pub fn refresh(
        &mut self,
        now: SystemTime,
        ejected: impl Fn(usize) -> bool,
        penalty: impl Fn(usize) -> f64,
    ) {
        let n = self.endpoints.len();
        self.weights.clear();
        self.weights
            .extend(self.endpoints.iter().enumerate().map(|(i, v)| {
                let ramp = self
                    .config
                    .slow_start
                    .map_or(1.0, |ss| ss.factor(v.ready_since, now));
                let p = penalty(i);
                let p = if p.is_finite() && p > 0.0 {
                    p.min(1.0)
                } else {
                    1.0
                };
                v.weight * ramp * p
            }));
        let healthy = |i: usize| self.endpoints[i].health == Health::Healthy;
        let draining = |i: usize| self.endpoints[i].health == Health::Draining;
        let margin = self.config.drain_margin;
        // Draining with enough time left before the kubelet kills the pod
        // (no deadline known: until it is gone).
        let drainable = |i: usize| {
            draining(i)
                && self.endpoints[i]
                    .drain_deadline
                    .is_none_or(|d| d.duration_since(now).is_ok_and(|left| left > margin))
        };
        let normal: Vec<bool> = (0..n).map(|i| healthy(i) && !ejected(i)).collect();
        let normal_count = normal.iter().filter(|&&u| u).count();
        // Only ready endpoints size the threshold: not-ready ones are not
        // capacity this client may use, whatever their number.
        let healthy_count = (0..n).filter(|&i| healthy(i)).count();
        self.tier = if normal_count > 0
            && normal_count as f64 >= self.config.panic_threshold * healthy_count as f64
        {
            Tier::Normal
        } else if healthy_count > 0 {
            Tier::Panic
        } else if (0..n).any(drainable) {
            Tier::Draining
        } else if n > 0 {
            Tier::NotReady
        } else {
            Tier::Empty
        };
        self.usable = match self.tier {
            Tier::Normal => normal,
            Tier::Panic => (0..n).map(healthy).collect(),
            Tier::Draining => (0..n).map(drainable).collect(),
            Tier::NotReady => vec![false; n],
            Tier::Empty => Vec::new(),
        };
        self.usable_count = self.usable.iter().filter(|&&u| u).count();
        self.all = (0..n as u32).filter(|&i| self.usable[i as usize]).collect();

        // Zone buckets only matter in the normal tier with a known local zone.
        self.by_zone.clear();
        self.cumulative_shares.clear();
        if self.tier == Tier::Normal && self.local_zone.is_some() && !self.config.policy.is_hash() {
            let z = self.zones.len();
            let mut caps = vec![ZoneCapacity::default(); z];
            self.by_zone = vec![Vec::new(); z];
            for (i, v) in self.endpoints.iter().enumerate() {
                if !draining(i) {
                    caps[v.zone].total += v.weight;
                }
                if self.usable[i] {
                    caps[v.zone].healthy += self.weights[i];
                    self.by_zone[v.zone].push(i as u32);
                }
            }
            let callers: Option<Vec<f64>> = self.config.caller_zones.as_ref().map(|c| {
                self.zones
                    .iter()
                    .map(|z| c.get(z).copied().unwrap_or(0.0))
                    .collect()
            });
            // Inputs are validated sums of positive weights; on error fall back to no affinity.
            if let Ok(shares) = spill_shares(self.local_zone, &caps, callers.as_deref()) {
                let mut acc = 0.0;
                self.cumulative_shares = shares
                    .iter()
                    .map(|s| {
                        acc += s;
                        acc
                    })
                    .collect();
            } else {
                self.by_zone.clear();
            }
        }
    }

    /// The tier picks come from.
    pub fn tier(&self) -> Tier {
        self.tier
    }

    /// Number of endpoints picks may choose from.
    pub fn usable_count(&self) -> usize {
        self.usable_count
    }

    /// Whether picks may choose endpoint `i` in the current tier.
    pub fn is_usable(&self, i: usize) -> bool {
        self.usable.get(i).copied().unwrap_or(false)
    }

    /// Effective weight of each endpoint (weight x slow start x penalty).
    pub fn weights(&self) -> &[f64] {
        &self.weights
    }

    /// Share of this caller's traffic per zone, as `(zone, share)`; empty
    /// when zone affinity is not in effect.
    pub fn zone_shares(&self) -> Vec<(&str, f64)> {
        let mut prev = 0.0;
        self.zones
            .iter()
            .zip(&self.cumulative_shares)
            .map(|(z, &c)| {
                let s = c - prev;
                prev = c;
                (z.as_str(), s)
            })
            .collect()
    }

    /// Picks an endpoint for one request. `hash_key` is used by the hash
    /// policies (without one they fall back to P2C); `total_in_flight` is the
    /// sum of in-flight requests over all endpoints, needed by
    /// [`Policy::BoundedLoadHash`]. Never allocates.
    pub fn pick<L, R>(
        &mut self,
        load: &L,
        hash_key: Option<u64>,
        total_in_flight: u64,
        rng: &mut R,
    ) -> Result<Pick, PickError>
    where
        L: Load + ?Sized,
        R: Rng + ?Sized,
    {
        let tier_reason = match self.tier {
            Tier::Empty => return Err(PickError::NoEndpoints),
            Tier::NotReady => return Err(PickError::NoneUsable),
            Tier::Panic => Some(PickReason::Panic),
            Tier::Draining => Some(PickReason::Draining),
            Tier::Normal => None,
        };
        if self.usable_count == 0 {
            return Err(PickError::NoneUsable);
        }
        let policy = self.config.policy;
        if let (true, Some(key)) = (policy.is_hash(), hash_key) {
            let usable = |o: u32| self.usable[o as usize];
            let index = match policy {
                Policy::BoundedLoadHash => self.ring.pick_bounded(
                    key,
                    load,
                    total_in_flight,
                    self.usable_count,
                    self.config.load_factor,
                    usable,
                ),
                _ => self.ring.pick_usable(key, usable),
            };
            let index = index.ok_or(PickError::NoneUsable)?;
            return Ok(Pick {
                index: index as usize,
                reason: tier_reason.unwrap_or(PickReason::Hash),
            });
        }
        let (candidates, reason) = if self.cumulative_shares.is_empty() {
            (&self.all[..], tier_reason.unwrap_or(PickReason::AnyZone))
        } else {
            let u = rng.unit() * self.cumulative_shares.last().copied().unwrap_or(1.0);
            let zone = self
                .cumulative_shares
                .partition_point(|&c| c <= u)
                .min(self.by_zone.len() - 1);
            let reason = if Some(zone) == self.local_zone {
                PickReason::Local
            } else {
                PickReason::Spill
            };
            if self.by_zone[zone].is_empty() {
                (&self.all[..], PickReason::AnyZone)
            } else {
                (&self.by_zone[zone][..], reason)
            }
        };
        let index = match policy {
            Policy::P2c | Policy::PeakEwma | Policy::RingHash | Policy::BoundedLoadHash => {
                self.p2c.pick(candidates, &self.weights, load, rng)
            }
            Policy::RoundRobin => self.rr.pick(candidates),
            Policy::Random => random(candidates, rng),
            Policy::WeightedRoundRobin => self.swrr.pick(candidates, &self.weights),
        };
        let index = index.ok_or(PickError::NoneUsable)?;
        Ok(Pick {
            index: index as usize,
            reason,
        })
    }

    /// Address of endpoint `i`.
    pub fn address(&self, i: usize) -> Option<SocketAddr> {
        self.endpoints.get(i).map(|v| v.address)
    }

    /// Zone of endpoint `i` (`""` when unknown).
    pub fn zone_of(&self, i: usize) -> Option<&str> {
        self.endpoints.get(i).map(|v| self.zones[v.zone].as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::Endpoint;
    use crate::rng::SmallRng;
    use proptest::prelude::*;

    fn set(spec: &[(&str, Health)]) -> EndpointSet {
        EndpointSet::merge(
            spec.iter()
                .enumerate()
                .map(|(i, (zone, h))| {
                    Endpoint::new(SocketAddr::from(([10, 244, 0, i as u8 + 1], 80)))
                        .with_zone(*zone)
                        .with_health(*h)
                })
                .collect(),
        )
    }

    fn counts(b: &mut Balancer, n: usize, picks: usize) -> Vec<usize> {
        let mut rng = SmallRng::seed_from_u64(11);
        let load = vec![0u32; n];
        let mut c = vec![0; n];
        for _ in 0..picks {
            c[b.pick(&load, None, 0, &mut rng).unwrap().index] += 1;
        }
        c
    }

    const H: Health = Health::Healthy;
    const D: Health = Health::Draining;
    const U: Health = Health::Unhealthy;

    #[test]
    fn policy_names_round_trip() {
        for p in Policy::ALL {
            assert_eq!(p.as_str().parse::<Policy>(), Ok(p));
        }
        assert_eq!("least-request".parse::<Policy>(), Ok(Policy::P2c));
        assert!(
            "fastest"
                .parse::<Policy>()
                .unwrap_err()
                .to_string()
                .contains("known:")
        );
    }

    #[test]
    fn draining_only_as_last_resort() {
        let mut b = Balancer::new(BalancerConfig::default()).unwrap();
        b.set_endpoints(
            &set(&[("a", D), ("a", H), ("a", D)]),
            SystemTime::UNIX_EPOCH,
        );
        assert_eq!(b.tier(), Tier::Normal, "draining pods do not trip panic");
        assert_eq!(counts(&mut b, 3, 100), vec![0, 100, 0]);
        b.set_endpoints(&set(&[("a", D), ("a", D)]), SystemTime::UNIX_EPOCH);
        assert_eq!(b.tier(), Tier::Draining);
        let mut rng = SmallRng::seed_from_u64(0);
        assert_eq!(
            b.pick(&vec![0u32; 2], None, 0, &mut rng).unwrap().reason,
            PickReason::Draining
        );
        b.set_endpoints(&EndpointSet::default(), SystemTime::UNIX_EPOCH);
        assert_eq!(
            b.pick(&Vec::<u32>::new(), None, 0, &mut rng),
            Err(PickError::NoEndpoints)
        );
    }

    #[test]
    fn not_ready_endpoints_are_never_picked_and_never_trip_panic() {
        // A scale-up: 2 ready pods, 6 not ready yet. The ready ones stay the
        // normal tier, however many are still warming up.
        let mut b = Balancer::new(BalancerConfig::default()).unwrap();
        let spec = [
            ("a", H),
            ("a", H),
            ("a", U),
            ("a", U),
            ("a", U),
            ("a", U),
            ("a", U),
            ("a", U),
        ];
        b.set_endpoints(&set(&spec), SystemTime::UNIX_EPOCH);
        assert_eq!(b.tier(), Tier::Normal);
        let c = counts(&mut b, 8, 1000);
        assert_eq!(c[2..].iter().sum::<usize>(), 0, "{c:?}");
        assert!(c[0] > 0 && c[1] > 0, "{c:?}");
        // Only not-ready endpoints: a clear error, no pick.
        b.set_endpoints(&set(&[("a", U), ("a", U)]), SystemTime::UNIX_EPOCH);
        assert_eq!(b.tier(), Tier::NotReady);
        let mut rng = SmallRng::seed_from_u64(0);
        assert_eq!(
            b.pick(&vec![0u32; 2], None, 0, &mut rng),
            Err(PickError::NoneUsable)
        );
        // Draining beats not ready.
        b.set_endpoints(&set(&[("a", U), ("a", D)]), SystemTime::UNIX_EPOCH);
        assert_eq!(b.tier(), Tier::Draining);
        assert_eq!(counts(&mut b, 2, 100), vec![0, 100]);
    }

    #[test]
    fn draining_endpoints_take_no_request_close_to_their_deadline() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let deadline = t0 + Duration::from_secs(10);
        let set = EndpointSet::merge(vec![
            Endpoint::new(SocketAddr::from(([10, 244, 0, 1], 80)))
                .with_health(D)
                .with_drain_deadline(deadline),
            Endpoint::new(SocketAddr::from(([10, 244, 0, 2], 80))).with_health(U),
        ]);
        let mut b = Balancer::new(BalancerConfig::default()).unwrap();
        b.set_endpoints(&set, t0);
        assert_eq!(b.tier(), Tier::Draining);
        assert!(b.is_usable(0) && !b.is_usable(1));
        // 2 s (the default margin) before the deadline and later: no more.
        for at in [8, 9, 11] {
            b.refresh(t0 + Duration::from_secs(at), |_| false, |_| 1.0);
            assert_eq!(b.tier(), Tier::NotReady, "{at} s");
            assert!(!b.is_usable(0));
            let mut rng = SmallRng::seed_from_u64(0);
            assert_eq!(
                b.pick(&vec![0u32; 2], None, 0, &mut rng),
                Err(PickError::NoneUsable)
            );
        }
        b.refresh(t0 + Duration::from_secs(7), |_| false, |_| 1.0);
        assert_eq!(b.tier(), Tier::Draining, "3 s left is enough");
    }

    #[test]
    fn panic_threshold_spreads_over_every_ready_endpoint() {
        let mut b = Balancer::new(BalancerConfig::default()).unwrap();
        let spec = [("a", H), ("a", H), ("a", H), ("a", U), ("a", D)];
        b.set_endpoints(&set(&spec), SystemTime::UNIX_EPOCH);
        // Ejection leaves 1 of 3 ready endpoints: below half, so all three
        // ready ones take traffic again; the not-ready and draining do not.
        b.refresh(SystemTime::UNIX_EPOCH, |i| i == 1 || i == 2, |_| 1.0);
        assert_eq!(b.tier(), Tier::Panic);
        let c = counts(&mut b, 5, 3000);
        assert!(
            c[0] > 0 && c[1] > 0 && c[2] > 0 && c[3] == 0 && c[4] == 0,
            "{c:?}"
        );
        // One of three ejected keeps two thirds: normal tier.
        b.refresh(SystemTime::UNIX_EPOCH, |i| i == 2, |_| 1.0);
        assert_eq!(b.tier(), Tier::Normal);
        assert_eq!(counts(&mut b, 5, 100)[2], 0);
        // A threshold of 0 never panics while anything is usable.
        let mut b = Balancer::new(BalancerConfig {
            panic_threshold: 0.0,
            ..Default::default()
        })
        .unwrap();
        b.set_endpoints(&set(&spec), SystemTime::UNIX_EPOCH);
        b.refresh(SystemTime::UNIX_EPOCH, |i| i == 1 || i == 2, |_| 1.0);
        assert_eq!(counts(&mut b, 5, 100), vec![100, 0, 0, 0, 0]);
    }

    #[test]
    fn zone_affinity_keeps_local_then_spills() {
        let config = BalancerConfig {
            zone: Some("a".into()),
            ..Default::default()
        };
        let mut b = Balancer::new(config).unwrap();
        b.set_endpoints(
            &set(&[("a", H), ("a", H), ("b", H), ("b", H)]),
            SystemTime::UNIX_EPOCH,
        );
        let c = counts(&mut b, 4, 1000);
        assert_eq!(c[2] + c[3], 0, "stays in zone a: {c:?}");
        // Zone a loses one of its two pods: half of its traffic spills to b.
        b.set_endpoints(
            &set(&[("a", H), ("a", U), ("b", H), ("b", H)]),
            SystemTime::UNIX_EPOCH,
        );
        let shares = b.zone_shares();
        assert_eq!(shares.len(), 2);
        assert!((shares[0].1 - 2.0 / 3.0).abs() < 1e-9, "{shares:?}");
        assert!((shares[1].1 - 1.0 / 3.0).abs() < 1e-9, "{shares:?}");
        let c = counts(&mut b, 4, 20_000);
        let local = c[0] as f64 / 20_000.0;
        // u_a = 1/3, c_a = 1/2: keep 2/3 locally.
        assert!((local - 2.0 / 3.0).abs() < 0.02, "local share {local}");
    }

    #[test]
    fn slow_start_and_penalties_shape_weights() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let config = BalancerConfig {
            policy: Policy::WeightedRoundRobin,
            slow_start: Some(SlowStart::new(Duration::from_secs(10), 1.0, 0.1).unwrap()),
            ..Default::default()
        };
        let mut b = Balancer::new(config).unwrap();
        let mut eps = set(&[("a", H), ("a", H)]).endpoints().to_vec();
        eps[1].ready_since = Some(now - Duration::from_secs(2));
        b.set_endpoints(&EndpointSet::merge(eps), now);
        assert!((b.weights()[1] - 0.2).abs() < 1e-9);
        let c = counts(&mut b, 2, 1200);
        assert_eq!(c, vec![1000, 200]);
        b.refresh(now, |_| false, |i| if i == 0 { 0.1 } else { 1.0 });
        assert!((b.weights()[0] - 0.1).abs() < 1e-9);
        b.refresh(now, |i| i == 0, |_| f64::NAN);
        assert_eq!(b.usable_count(), 1, "ejected endpoint left out");
    }

    #[test]
    fn hash_policies_stick_and_fall_back_without_a_key() {
        for policy in [Policy::RingHash, Policy::BoundedLoadHash] {
            let mut b = Balancer::new(BalancerConfig {
                policy,
                ..Default::default()
            })
            .unwrap();
            b.set_endpoints(
                &set(&[("a", H), ("a", H), ("b", H)]),
                SystemTime::UNIX_EPOCH,
            );
            let mut rng = SmallRng::seed_from_u64(1);
            let load = vec![0u32; 3];
            let first = b.pick(&load, Some(42), 0, &mut rng).unwrap();
            assert_eq!(first.reason, PickReason::Hash);
            for _ in 0..50 {
                assert_eq!(b.pick(&load, Some(42), 0, &mut rng).unwrap(), first);
            }
            assert!(b.pick(&load, None, 0, &mut rng).is_ok());
        }
    }

    #[test]
    fn bad_config() {
        assert!(
            Balancer::new(BalancerConfig {
                panic_threshold: 1.5,
                ..Default::default()
            })
            .is_err()
        );
        assert!(
            Balancer::new(BalancerConfig {
                panic_threshold: f64::NAN,
                ..Default::default()
            })
            .is_err()
        );
        let bad_ring = RingConfig {
            vnodes_per_weight: 0.0,
            ..Default::default()
        };
        assert!(
            Balancer::new(BalancerConfig {
                ring: bad_ring,
                ..Default::default()
            })
            .is_err()
        );
        let callers = BTreeMap::from([("a".to_owned(), -1.0)]);
        assert!(
            Balancer::new(BalancerConfig {
                caller_zones: Some(callers),
                ..Default::default()
            })
            .is_err()
        );
    }

    fn arb_health() -> impl Strategy<Value = Health> {
        prop_oneof![Just(H), Just(D), Just(U)]
    }

    proptest! {
        /// A pick is always a usable endpoint when one exists, in the best tier available.
        #[test]
        fn pick_is_usable_when_one_exists(
            spec in proptest::collection::vec((0usize..3, arb_health()), 0..20),
            policy in proptest::sample::select(Policy::ALL.to_vec()),
            zone in proptest::option::of(0usize..4),
            ejected_mask: u32,
            seed: u64,
        ) {
            let zones = ["a", "b", "c", "d"];
            let spec: Vec<(&str, Health)> = spec.iter().map(|&(z, h)| (zones[z], h)).collect();
            let config = BalancerConfig { policy, zone: zone.map(|z| zones[z].to_owned()), ..Default::default() };
            let mut b = Balancer::new(config).unwrap();
            let s = set(&spec);
            b.set_endpoints(&s, SystemTime::UNIX_EPOCH);
            let ejected = |i: usize| ejected_mask & (1 << i) != 0;
            b.refresh(SystemTime::UNIX_EPOCH, ejected, |_| 1.0);
            let mut rng = SmallRng::seed_from_u64(seed);
            let load: Vec<u32> = (0..s.len() as u32).map(|i| i % 3).collect();
            let total: u64 = load.iter().map(|&x| u64::from(x)).sum();
            for k in 0..20u64 {
                let key = policy.is_hash().then_some(k);
                let any_healthy = s.endpoints().iter().any(|e| e.health == H);
                let any_draining = s.endpoints().iter().any(|e| e.health == D);
                match b.pick(&load, key, total, &mut rng) {
                    Ok(p) => {
                        let e = &s.endpoints()[p.index];
                        // Whatever the tier, a not-ready endpoint is never picked.
                        prop_assert!(e.health != U, "picked a not-ready endpoint in {:?}", b.tier());
                        match b.tier() {
                            Tier::Normal => prop_assert!(e.health == H && !ejected(p.index)),
                            Tier::Panic => prop_assert!(e.health == H),
                            Tier::Draining => prop_assert!(e.health == D && !any_healthy),
                            Tier::NotReady | Tier::Empty => prop_assert!(false, "picked from {:?}", b.tier()),
                        }
                    }
                    Err(e) => {
                        prop_assert!(!any_healthy && !any_draining, "{e} with {} endpoints", s.len());
                    }
                }
            }
        }
    }
}

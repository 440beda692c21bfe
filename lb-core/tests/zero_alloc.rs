//! Picks never allocate: a counting global allocator watches every
//! algorithm's pick path after setup.
//!
//! Covered, at 10, 1,000 and 10,000 endpoints: every bare picker (P2C
//! in-flight and peak EWMA, round robin, random, smooth weighted round robin,
//! ring hash, ring hash over usable members, bounded-load consistent hash)
//! and the composed [`Balancer`] for every [`Policy`] in every tier it can
//! pick from (normal with the caller's zone healthy, normal with spillover
//! to other zones, normal without zone affinity, panic, draining-only), hash
//! policies with and without a hash key. The per-response bookkeeping a
//! client does after each request (outlier `record`, peak-EWMA `observe`)
//! is checked too.
//!
//! What it does not cover: setup and refresh (`set_endpoints`, `refresh`,
//! `Ring::build`, `OutlierDetector::set_members`/`evaluate`), which allocate
//! by design when the endpoint set changes; and time, which
//! eds-bench's `picker` (`cargo xtask bench picker`) measures.
//!
//! This is the one place in lb-core with `unsafe`: a `GlobalAlloc` impl has
//! to be `unsafe impl`, and it only forwards to the system allocator.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use lb_core::load::PeakEwma;
use lb_core::outlier::{Outcome, OutlierConfig, OutlierDetector};
use lb_core::pick::{P2c, P2cCost, RoundRobin, SmoothWeighted, random};
use lb_core::ring::{LoadFactor, Ring, RingConfig};
use lb_core::rng::{Rng, SmallRng};
use lb_core::{Balancer, BalancerConfig, Endpoint, EndpointSet, Health, PickReason, Policy, Tier};

struct Counting;

thread_local! {
    /// Allocations made by this thread. Per thread, because the test harness
    /// allocates on its own threads (spawning tests, printing results) while
    /// a test counts.
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn count() {
    // `try_with`: the slot is gone while a thread is being torn down.
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

fn allocated() -> usize {
    ALLOCATIONS.with(Cell::get)
}

// SAFETY: forwards every call unchanged to `System`, which upholds the contract.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same layout the caller gave us.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same layout the caller gave us.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const PICKS: usize = 1_000;
const SIZES: [usize; 3] = [10, 1_000, 10_000];

/// Runs `f` [`PICKS`] times on this thread and returns how many allocations
/// it made.
fn allocations<T>(mut f: impl FnMut() -> T) -> usize {
    let before = allocated();
    for _ in 0..PICKS {
        // black_box keeps the optimiser from discarding the pick.
        black_box(f());
    }
    allocated() - before
}

fn assert_none(checks: Vec<(String, usize)>) {
    // Sanity: the counter does see allocations.
    assert!(allocations(|| Vec::<u8>::with_capacity(8)) >= PICKS);
    let failed: Vec<String> = checks
        .iter()
        .filter(|(_, count)| *count > 0)
        .map(|(name, count)| format!("{name}: {count} allocations in {PICKS} picks"))
        .collect();
    assert!(failed.is_empty(), "picks allocated:\n{}", failed.join("\n"));
    assert!(!checks.is_empty());
}

#[test]
fn no_bare_picker_allocates() {
    let mut checks = Vec::new();
    for n in SIZES {
        let mut rng = SmallRng::seed_from_u64(3);
        let load: Vec<u32> = (0..n).map(|_| rng.below(10)).collect();
        let total: u64 = load.iter().map(|&x| u64::from(x)).sum();
        let candidates: Vec<u32> = (0..n as u32).collect();
        let weights = vec![1.0; n];
        let members: Vec<(u64, f64)> = (0..n as u64)
            .map(|i| (i.wrapping_mul(0x9E37_79B9), 1.0))
            .collect();
        let ring = Ring::build(&members, RingConfig::default()).unwrap();
        let mut rr = RoundRobin::default();
        let mut sw = SmoothWeighted::default();
        sw.reset(n);
        let factor = LoadFactor::default();
        let peak = P2c {
            cost: P2cCost::PeakEwma,
        };
        let mut check = |name: &str, count: usize| checks.push((format!("{name}/{n}"), count));
        check(
            "p2c",
            allocations(|| P2c::default().pick(&candidates, &weights, &load, &mut rng)),
        );
        check(
            "p2c-peak-ewma",
            allocations(|| peak.pick(&candidates, &weights, &load, &mut rng)),
        );
        check("round-robin", allocations(|| rr.pick(&candidates)));
        check("random", allocations(|| random(&candidates, &mut rng)));
        check(
            "smooth-weighted-round-robin",
            allocations(|| sw.pick(&candidates, &weights)),
        );
        check("ring-hash", allocations(|| ring.pick(rng.next_u64())));
        check(
            "ring-hash-usable",
            allocations(|| ring.pick_usable(rng.next_u64(), |o| o % 2 == 0)),
        );
        check(
            "bounded-load-hash",
            allocations(|| ring.pick_bounded(rng.next_u64(), &load, total, n, factor, |_| true)),
        );
        // Every member at the cap: the walk goes round the whole ring.
        let full = vec![u32::MAX; n];
        check(
            "bounded-load-hash-all-full",
            allocations(|| ring.pick_bounded(rng.next_u64(), &full, 0, n, factor, |_| true)),
        );
    }
    assert_none(checks);
}

/// Endpoint sets that put a balancer in each tier it picks from.
#[derive(Debug, Clone, Copy)]
enum Scenario {
    /// All healthy, caller in zone `a`: picks stay local.
    ZoneLocal,
    /// Two thirds of zone `a` unhealthy: picks spill to `b` and `c`.
    ZoneSpill,
    /// All healthy, no caller zone.
    NoZone,
    /// 70% ejected by outlier detection: below the panic threshold.
    Panic,
    /// Everything draining.
    Draining,
}

impl Scenario {
    const ALL: [Scenario; 5] = [
        Scenario::ZoneLocal,
        Scenario::ZoneSpill,
        Scenario::NoZone,
        Scenario::Panic,
        Scenario::Draining,
    ];

    fn health(self, i: usize) -> Health {
        let zone_a = i.is_multiple_of(3);
        match self {
            Scenario::ZoneLocal | Scenario::NoZone => Health::Healthy,
            Scenario::ZoneSpill if zone_a && (i / 3) % 3 < 2 => Health::Unhealthy,
            Scenario::ZoneSpill => Health::Healthy,
            Scenario::Panic => Health::Healthy,
            Scenario::Draining => Health::Draining,
        }
    }

    fn tier(self) -> Tier {
        match self {
            Scenario::ZoneLocal | Scenario::ZoneSpill | Scenario::NoZone => Tier::Normal,
            Scenario::Panic => Tier::Panic,
            Scenario::Draining => Tier::Draining,
        }
    }

    fn balancer(self, policy: Policy, n: usize) -> Balancer {
        let set = EndpointSet::merge(
            (0..n)
                .map(|i| {
                    let addr =
                        SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 80));
                    Endpoint::new(addr)
                        .with_zone(["a", "b", "c"][i % 3])
                        .with_health(self.health(i))
                })
                .collect(),
        );
        let config = BalancerConfig {
            policy,
            zone: (!matches!(self, Scenario::NoZone)).then(|| "a".to_owned()),
            ..Default::default()
        };
        let mut b = Balancer::new(config).unwrap();
        b.set_endpoints(&set, SystemTime::UNIX_EPOCH);
        if matches!(self, Scenario::Panic) {
            b.refresh(SystemTime::UNIX_EPOCH, |i| i % 10 < 7, |_| 1.0);
        }
        assert_eq!(b.tier(), self.tier(), "{self:?} with {policy} over {n}");
        b
    }
}

#[test]
fn no_balancer_pick_allocates_in_any_tier() {
    let mut checks = Vec::new();
    for n in SIZES {
        let mut rng = SmallRng::seed_from_u64(5);
        let load: Vec<u32> = (0..n).map(|_| rng.below(10)).collect();
        let total: u64 = load.iter().map(|&x| u64::from(x)).sum();
        for scenario in Scenario::ALL {
            for policy in Policy::ALL {
                let mut b = scenario.balancer(policy, n);
                // Hash policies with a fresh key per pick, and without one
                // (they fall back to P2C).
                let keyed: &[bool] = if policy.is_hash() {
                    &[true, false]
                } else {
                    &[false]
                };
                for &with_key in keyed {
                    // The path under test must be a successful pick.
                    let first = b
                        .pick(&load, with_key.then_some(1), total, &mut rng)
                        .unwrap();
                    if let Scenario::ZoneSpill = scenario
                        && !policy.is_hash()
                    {
                        // Spill picks happen; check one lands outside zone a.
                        let spilled = (0..200).any(|_| {
                            b.pick(&load, None, total, &mut rng).unwrap().reason
                                == PickReason::Spill
                        });
                        assert!(spilled, "{policy} over {n}: no spill ({first:?})");
                    }
                    let count = allocations(|| {
                        let key = with_key.then(|| rng.next_u64());
                        b.pick(&load, key, total, &mut rng)
                    });
                    let key = if with_key { "+key" } else { "" };
                    checks.push((format!("balancer/{scenario:?}/{policy}{key}/{n}"), count));
                }
            }
        }
    }
    assert_none(checks);
}

#[test]
fn no_per_response_bookkeeping_allocates() {
    let n = 1_000;
    let keys: Vec<SocketAddr> = (0..n)
        .map(|i: usize| SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 80)))
        .collect();
    let mut detector = OutlierDetector::new(OutlierConfig::default()).unwrap();
    detector.set_members(&keys);
    let mut ewma = vec![PeakEwma::new(Duration::from_millis(5), Duration::from_secs(10)); n];
    let mut rng = SmallRng::seed_from_u64(9);
    let mut now = Duration::ZERO;
    let checks = vec![
        (
            "outlier-record".to_owned(),
            allocations(|| {
                now += Duration::from_millis(1);
                let key = &keys[rng.below(n as u32) as usize];
                // One in five fails: some endpoints trip ejection on the way.
                let outcome = if rng.below(5) == 0 {
                    Outcome::Failure
                } else {
                    Outcome::Success
                };
                detector.record(key, outcome, now)
            }),
        ),
        (
            "outlier-is-ejected+weight-factor".to_owned(),
            allocations(|| {
                let key = &keys[rng.below(n as u32) as usize];
                (detector.is_ejected(key, now), detector.weight_factor(key))
            }),
        ),
        (
            "peak-ewma-observe".to_owned(),
            allocations(|| {
                now += Duration::from_millis(1);
                let i = rng.below(n as u32) as usize;
                ewma[i].observe(0.001 + rng.unit() * 0.01, now.as_secs_f64());
                ewma[i].get()
            }),
        ),
    ];
    assert_none(checks);
}

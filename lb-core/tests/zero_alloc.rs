//! Picks never allocate: a counting global allocator watches every
//! algorithm's pick path after setup.
//!
//! This is the one place in lb-core with `unsafe`: a `GlobalAlloc` impl has
//! to be `unsafe impl`, and it only forwards to the system allocator.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

use lb_core::pick::{P2c, P2cCost, RoundRobin, SmoothWeighted, random};
use lb_core::ring::{LoadFactor, Ring, RingConfig};
use lb_core::rng::{Rng, SmallRng};
use lb_core::{Balancer, BalancerConfig, Endpoint, EndpointSet, Policy};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call unchanged to `System`, which upholds the contract.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same layout the caller gave us.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `f` 1,000 times and returns how many allocations it made.
fn allocations<T>(mut f: impl FnMut() -> T) -> usize {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..1_000 {
        // black_box keeps the optimiser from discarding the pick.
        black_box(f());
    }
    ALLOCATIONS.load(Ordering::Relaxed) - before
}

#[test]
fn no_pick_allocates() {
    let n = 1_000;
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
    let set = EndpointSet::merge(
        (0..n)
            .map(|i| {
                Endpoint::new(SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 80)))
                    .with_zone(["a", "b", "c"][i % 3])
            })
            .collect(),
    );
    let mut balancers: Vec<Balancer> = Policy::ALL
        .iter()
        .map(|&policy| {
            let config = BalancerConfig {
                policy,
                zone: Some("a".into()),
                ..Default::default()
            };
            let mut b = Balancer::new(config).unwrap();
            b.set_endpoints(&set, SystemTime::UNIX_EPOCH);
            b
        })
        .collect();

    let factor = LoadFactor::default();
    let peak = P2c {
        cost: P2cCost::PeakEwma,
    };
    let mut checks: Vec<(&str, usize)> = vec![
        (
            "p2c",
            allocations(|| P2c::default().pick(&candidates, &weights, &load, &mut rng)),
        ),
        (
            "p2c-peak-ewma",
            allocations(|| peak.pick(&candidates, &weights, &load, &mut rng)),
        ),
        ("round-robin", allocations(|| rr.pick(&candidates))),
        ("random", allocations(|| random(&candidates, &mut rng))),
        (
            "smooth-weighted",
            allocations(|| sw.pick(&candidates, &weights)),
        ),
        ("ring-hash", allocations(|| ring.pick(rng.next_u64()))),
        (
            "bounded-load-hash",
            allocations(|| ring.pick_bounded(rng.next_u64(), &load, total, n, factor, |_| true)),
        ),
    ];
    for b in &mut balancers {
        let key = b.config().policy.is_hash().then_some(42);
        checks.push((
            b.config().policy.as_str(),
            allocations(|| b.pick(&load, key, total, &mut rng)),
        ));
    }
    // Sanity: the counter does see allocations.
    assert!(allocations(|| Vec::<u8>::with_capacity(8)) >= 1000);
    for (name, count) in checks {
        assert_eq!(count, 0, "{name} allocated {count} times in 1,000 picks");
    }
}

//! Pick cost per algorithm and endpoint count (10, 100, 1,000, 10,000), with
//! `tower::balance::p2c` as the peer measured in the same run.
//!
//! Run with
//! `cargo bench -p lb-core --bench pick -- --warm-up-time 1 --measurement-time 3`
//! (add a filter such as `pick/1000/p2c` or `p2c-vs-tower` to run a part).
//! Medians are in `$CARGO_TARGET_DIR/criterion/<group>/<name>/new/estimates.json`.
//!
//! What is measured: one pick over a prepared endpoint set with random
//! in-flight counts (0..8) and latencies, all endpoints healthy and ready.
//!
//! - `pick/<n>/<algorithm>`: the bare algorithm over the candidate slice
//!   `0..n` (P2C in-flight, P2C peak EWMA, round robin, random, smooth
//!   weighted round robin, ring hash, bounded-load consistent hash).
//! - `pick/<n>/balancer-*`: the composed [`Balancer`] as lb-client calls it:
//!   tier check, zone choice over three zones, then the policy.
//!   `zone-local`: the caller's zone is healthy so picks stay local;
//!   `zone-spill`: two thirds of the caller's zone is unhealthy, so picks
//!   spill to the other zones in proportion; `bounded-load-hash`: a fresh
//!   hash key per pick, load cap checked against the ring walk.
//! - `p2c-vs-tower/<n>/*`: the peer comparison. Both sides see the same `n`
//!   always-ready services whose load is the same in-flight vector, and both
//!   draw from a small non-cryptographic RNG (xoshiro256++ here, rand's
//!   `SmallRng` in tower). `tower-poll_ready+call` is `Balance::poll_ready`
//!   (P2C over tower's ready cache) plus `call` on the chosen service: tower
//!   offers no way to pick without calling, and its ready cache moves a
//!   called service back to "pending" until it is polled ready again, so
//!   that bookkeeping is part of every tower request, not a harness
//!   artifact. `lb-core-pick` is the bare pick; `lb-core-pick+call` is the
//!   same pick plus `call` on the chosen service, the like-for-like figure
//!   for the ratio.
//!
//! What is not measured: building the endpoint set, ring or balancer
//! (`set_endpoints`, `refresh`), in-flight accounting after the pick,
//! connection handling, or contention between threads (picks here run on
//! one thread). Allocation-freedom is checked by `tests/zero_alloc.rs`, not
//! here; instruction counts under callgrind, next to wall and CPU time per
//! pick over repeated rounds, come from the suite's `picker` program
//! (`cargo xtask bench picker`, source in `bench/src/bin/picker.rs`).

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::SystemTime;

use criterion::{Criterion, criterion_group, criterion_main};
use lb_core::pick::{P2c, P2cCost, RoundRobin, SmoothWeighted, random};
use lb_core::ring::{LoadFactor, Ring, RingConfig};
use lb_core::rng::{Rng, SmallRng, hash_bytes};
use lb_core::{Balancer, BalancerConfig, Endpoint, EndpointSet, Health, Load, Policy, Tier};

const SIZES: [usize; 4] = [10, 100, 1_000, 10_000];

struct Loads {
    in_flight: Vec<u32>,
    latency: Vec<f64>,
}

impl Load for Loads {
    #[inline]
    fn in_flight(&self, i: usize) -> u32 {
        self.in_flight[i]
    }
    #[inline]
    fn latency(&self, i: usize) -> Option<f64> {
        Some(self.latency[i])
    }
}

fn loads(n: usize, rng: &mut SmallRng) -> Loads {
    Loads {
        in_flight: (0..n).map(|_| rng.below(8)).collect(),
        latency: (0..n).map(|_| 0.001 + rng.unit() * 0.01).collect(),
    }
}

/// `n` endpoints over three zones; in `zone-0`, `unhealthy_local` of every
/// three are unhealthy.
fn set(n: usize, unhealthy_local: usize) -> EndpointSet {
    EndpointSet::merge(
        (0..n)
            .map(|i| {
                let addr = SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 8080));
                let zone = i % 3;
                let health = if zone == 0 && (i / 3) % 3 < unhealthy_local {
                    Health::Unhealthy
                } else {
                    Health::Healthy
                };
                Endpoint::new(addr)
                    .with_zone(format!("zone-{zone}"))
                    .with_health(health)
            })
            .collect(),
    )
}

fn balancer(policy: Policy, set: &EndpointSet) -> Balancer {
    let config = BalancerConfig {
        policy,
        zone: Some("zone-0".into()),
        ..Default::default()
    };
    let mut balancer = Balancer::new(config).expect("valid config");
    balancer.set_endpoints(set, SystemTime::UNIX_EPOCH);
    assert_eq!(balancer.tier(), Tier::Normal);
    balancer
}

fn algorithms(c: &mut Criterion) {
    for n in SIZES {
        let mut rng = SmallRng::seed_from_u64(1);
        let load = loads(n, &mut rng);
        let total: u64 = load.in_flight.iter().map(|&x| u64::from(x)).sum();
        let candidates: Vec<u32> = (0..n as u32).collect();
        let weights = vec![1.0; n];
        let mut group = c.benchmark_group(format!("pick/{n}"));

        group.bench_function("p2c", |b| {
            let p2c = P2c::default();
            b.iter(|| p2c.pick(black_box(&candidates), &weights, &load, &mut rng));
        });
        group.bench_function("p2c-peak-ewma", |b| {
            let p2c = P2c {
                cost: P2cCost::PeakEwma,
            };
            b.iter(|| p2c.pick(black_box(&candidates), &weights, &load, &mut rng));
        });
        group.bench_function("round-robin", |b| {
            let mut rr = RoundRobin::default();
            b.iter(|| rr.pick(black_box(&candidates)));
        });
        group.bench_function("random", |b| {
            b.iter(|| random(black_box(&candidates), &mut rng));
        });
        group.bench_function("smooth-weighted-round-robin", |b| {
            let mut sw = SmoothWeighted::default();
            sw.reset(n);
            b.iter(|| sw.pick(black_box(&candidates), &weights));
        });
        let members: Vec<(u64, f64)> = (0..n)
            .map(|i| (hash_bytes(&i.to_le_bytes()), 1.0))
            .collect();
        let ring = Ring::build(&members, RingConfig::default()).expect("valid ring");
        group.bench_function("ring-hash", |b| {
            b.iter(|| ring.pick(black_box(rng.next_u64())));
        });
        group.bench_function("bounded-load-hash", |b| {
            let factor = LoadFactor::default();
            b.iter(|| {
                ring.pick_bounded(black_box(rng.next_u64()), &load, total, n, factor, |_| true)
            });
        });

        let healthy = set(n, 0);
        let degraded = set(n, 2);
        group.bench_function("balancer-p2c-zone-local", |b| {
            let mut balancer = balancer(Policy::P2c, &healthy);
            b.iter(|| balancer.pick(&load, None, total, &mut rng));
        });
        group.bench_function("balancer-p2c-zone-spill", |b| {
            let mut balancer = balancer(Policy::P2c, &degraded);
            assert!(
                balancer
                    .zone_shares()
                    .iter()
                    .filter(|(_, s)| *s > 0.0)
                    .count()
                    > 1,
                "the degraded zone must spill"
            );
            b.iter(|| balancer.pick(&load, None, total, &mut rng));
        });
        group.bench_function("balancer-bounded-load-hash", |b| {
            let mut balancer = balancer(Policy::BoundedLoadHash, &healthy);
            b.iter(|| balancer.pick(&load, Some(black_box(rng.next_u64())), total, &mut rng));
        });
        group.finish();
    }
}

/// An always-ready service with a constant load, so tower's cost is its own.
#[derive(Clone)]
struct Instant(u32);

impl tower::Service<()> for Instant {
    type Response = ();
    type Error = Infallible;
    type Future = Ready<Result<(), Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: ()) -> Self::Future {
        ready(Ok(()))
    }
}

impl tower::load::Load for Instant {
    type Metric = u32;
    fn load(&self) -> u32 {
        self.0
    }
}

fn peer_tower(c: &mut Criterion) {
    use tower::Service;
    use tower::balance::p2c::Balance;
    use tower::discover::ServiceList;

    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    for n in SIZES {
        let mut group = c.benchmark_group(format!("p2c-vs-tower/{n}"));
        let mut rng = SmallRng::seed_from_u64(2);
        let load = loads(n, &mut rng);
        let candidates: Vec<u32> = (0..n as u32).collect();
        let weights = vec![1.0; n];
        let mut services: Vec<Instant> = load.in_flight.iter().map(|&l| Instant(l)).collect();
        let p2c = P2c::default();
        group.bench_function("lb-core-pick", |b| {
            b.iter(|| p2c.pick(black_box(&candidates), &weights, &load, &mut rng));
        });
        group.bench_function("lb-core-pick+call", |b| {
            b.iter(|| {
                let i = p2c
                    .pick(black_box(&candidates), &weights, &load, &mut rng)
                    .expect("n >= 1");
                services[i as usize].call(())
            });
        });
        let mut balance = Balance::new(ServiceList::new(services.clone()));
        // Fill tower's ready cache before timing.
        assert!(matches!(balance.poll_ready(&mut cx), Poll::Ready(Ok(()))));
        assert_eq!(balance.len(), n);
        group.bench_function("tower-poll_ready+call", |b| {
            b.iter(|| {
                // Every service is always ready, so this never returns Pending;
                // `call` would panic if it had.
                let ready = balance.poll_ready(&mut cx);
                debug_assert!(ready.is_ready());
                balance.call(())
            });
        });
        group.finish();
    }
}

criterion_group!(benches, algorithms, peer_tower);
criterion_main!(benches);

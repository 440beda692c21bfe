//! Pick cost per algorithm and endpoint count, with `tower::balance::p2c` as
//! the peer measured in the same run.
//!
//! Run with `cargo bench -p lb-core --bench pick` (add `-- p2c/1000` to run
//! one group member). What is measured is one pick over a prepared endpoint
//! set with random in-flight counts; building the set, ring or balancer is
//! not. For tower, a pick is `poll_ready` (which chooses with P2C over its
//! ready cache) plus `call` on the chosen, always-ready service, which is the
//! least tower's balancer does per request.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::SystemTime;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use lb_core::pick::{P2c, P2cCost, RoundRobin, SmoothWeighted, random};
use lb_core::ring::{LoadFactor, Ring, RingConfig};
use lb_core::rng::{Rng, SmallRng, hash_bytes};
use lb_core::{Balancer, BalancerConfig, Endpoint, EndpointSet, Load, Policy};

const SIZES: [usize; 4] = [10, 100, 1_000, 10_000];

struct Loads {
    in_flight: Vec<u32>,
    latency: Vec<f64>,
}

impl Load for Loads {
    fn in_flight(&self, i: usize) -> u32 {
        self.in_flight[i]
    }
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

fn set(n: usize, zones: usize) -> EndpointSet {
    EndpointSet::merge(
        (0..n)
            .map(|i| {
                let addr = SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 8080));
                Endpoint::new(addr).with_zone(format!("zone-{}", i % zones))
            })
            .collect(),
    )
}

fn algorithms(c: &mut Criterion) {
    for n in SIZES {
        let mut rng = SmallRng::seed_from_u64(1);
        let load = loads(n, &mut rng);
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
        let total: u64 = load.in_flight.iter().map(|&x| u64::from(x)).sum();
        group.bench_function("ring-hash", |b| {
            b.iter(|| ring.pick(black_box(rng.next_u64())));
        });
        group.bench_function("bounded-load-hash", |b| {
            let factor = LoadFactor::default();
            b.iter(|| {
                ring.pick_bounded(black_box(rng.next_u64()), &load, total, n, factor, |_| true)
            });
        });
        group.bench_function("balancer-p2c-zone-aware", |b| {
            let config = BalancerConfig {
                policy: Policy::P2c,
                zone: Some("zone-0".into()),
                ..Default::default()
            };
            let mut balancer = Balancer::new(config).expect("valid config");
            balancer.set_endpoints(&set(n, 3), SystemTime::UNIX_EPOCH);
            b.iter(|| balancer.pick(&load, None, total, &mut rng));
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
        group.bench_function(BenchmarkId::new("lb-core", "p2c"), |b| {
            let p2c = P2c::default();
            b.iter(|| p2c.pick(black_box(&candidates), &weights, &load, &mut rng));
        });
        let services: Vec<Instant> = load.in_flight.iter().map(|&l| Instant(l)).collect();
        let mut balance = Balance::new(ServiceList::new(services));
        // Fill tower's ready cache before timing.
        assert!(balance.poll_ready(&mut cx).is_ready());
        group.bench_function(BenchmarkId::new("tower", "p2c"), |b| {
            b.iter(|| {
                let ready = balance.poll_ready(&mut cx);
                debug_assert!(ready.is_ready());
                black_box(balance.call(()))
            });
        });
        group.finish();
    }
}

criterion_group!(benches, algorithms, peer_tower);
criterion_main!(benches);

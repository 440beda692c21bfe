//! Instruction counts per pick, for callgrind: P2C over `n` endpoints against
//! `tower::balance::p2c` over the same `n` services, plus a few lb-core
//! pickers for context. Instruction counts do not depend on the machine's
//! other load, which the criterion figures of `benches/pick.rs` do.
//!
//! This binary only runs picks; it measures nothing by itself. Each case
//! runs its picks inside `measured`, a non-inlined function, so callgrind can
//! count exactly that loop (inclusive of everything it calls, allocator
//! included) and nothing of the setup:
//!
//! ```text
//! cargo bench -p lb-core --bench pick_instructions --no-run   # prints the executable
//! valgrind --tool=callgrind --toggle-collect='*measured*' \
//!     --callgrind-out-file=p2c.out <executable> p2c 1000 100000
//! callgrind_annotate p2c.out | grep 'PROGRAM TOTALS'          # Ir / 100000 = per pick
//! ```
//!
//! Arguments: `<case> <endpoints> <picks>`; with none (as under
//! `cargo bench`) every case runs once, briefly, as a smoke test. The `empty`
//! case is the loop alone (its per-iteration count is the harness overhead
//! to subtract). Cases: `empty`, `p2c`, `p2c+call` (pick, then `call` on the
//! chosen always-ready service), `bounded-load-hash`,
//! `balancer-p2c-zone-local` and `tower` (`Balance::poll_ready` + `call`, see
//! `benches/pick.rs` for why that is tower's per-request pick path).
//!
//! What it does not measure: time, cache misses (add `--cache-sim=yes` for
//! those), or anything outside the measured loop.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::SystemTime;

use lb_core::pick::P2c;
use lb_core::ring::{LoadFactor, Ring, RingConfig};
use lb_core::rng::{Rng, SmallRng, hash_bytes};
use lb_core::{Balancer, BalancerConfig, Endpoint, EndpointSet, Policy};

const CASES: [&str; 6] = [
    "empty",
    "p2c",
    "p2c+call",
    "bounded-load-hash",
    "balancer-p2c-zone-local",
    "tower",
];

/// Runs `f` `iters` times. Never inlined: callgrind's `--toggle-collect`
/// needs a function to attach to.
#[inline(never)]
fn measured<T>(iters: u64, mut f: impl FnMut() -> T) {
    for _ in 0..iters {
        black_box(f());
    }
}

/// An always-ready service with a constant load (as in `benches/pick.rs`).
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

fn run(case: &str, n: usize, iters: u64) {
    use tower::Service;

    let mut rng = SmallRng::seed_from_u64(2);
    let load: Vec<u32> = (0..n).map(|_| rng.below(8)).collect();
    let total: u64 = load.iter().map(|&x| u64::from(x)).sum();
    let candidates: Vec<u32> = (0..n as u32).collect();
    let weights = vec![1.0; n];
    let p2c = P2c::default();
    match case {
        "empty" => measured(iters, || ()),
        "p2c" => measured(iters, || {
            p2c.pick(black_box(&candidates), &weights, &load, &mut rng)
        }),
        "p2c+call" => {
            let mut services: Vec<Instant> = load.iter().map(|&l| Instant(l)).collect();
            measured(iters, || {
                let i = p2c
                    .pick(black_box(&candidates), &weights, &load, &mut rng)
                    .expect("n >= 1");
                services[i as usize].call(())
            });
        }
        "bounded-load-hash" => {
            let members: Vec<(u64, f64)> = (0..n)
                .map(|i| (hash_bytes(&i.to_le_bytes()), 1.0))
                .collect();
            let ring = Ring::build(&members, RingConfig::default()).expect("valid ring");
            let factor = LoadFactor::default();
            measured(iters, || {
                ring.pick_bounded(black_box(rng.next_u64()), &load, total, n, factor, |_| true)
            });
        }
        "balancer-p2c-zone-local" => {
            let set = EndpointSet::merge(
                (0..n)
                    .map(|i| {
                        let addr = SocketAddr::from((
                            [10, (i >> 16) as u8, (i >> 8) as u8, i as u8],
                            8080,
                        ));
                        Endpoint::new(addr).with_zone(format!("zone-{}", i % 3))
                    })
                    .collect(),
            );
            let config = BalancerConfig {
                policy: Policy::P2c,
                zone: Some("zone-0".into()),
                ..Default::default()
            };
            let mut balancer = Balancer::new(config).expect("valid config");
            balancer.set_endpoints(&set, SystemTime::UNIX_EPOCH);
            measured(iters, || balancer.pick(&load, None, total, &mut rng));
        }
        "tower" => {
            use tower::balance::p2c::Balance;
            use tower::discover::ServiceList;
            let waker = futures::task::noop_waker();
            let mut cx = Context::from_waker(&waker);
            let services: Vec<Instant> = load.iter().map(|&l| Instant(l)).collect();
            let mut balance = Balance::new(ServiceList::new(services));
            // Fill the ready cache outside the measured loop.
            assert!(matches!(balance.poll_ready(&mut cx), Poll::Ready(Ok(()))));
            assert_eq!(balance.len(), n);
            measured(iters, || {
                // Always ready; `call` panics if it was not.
                let _ = balance.poll_ready(&mut cx);
                balance.call(())
            });
        }
        other => {
            eprintln!("unknown case {other:?}; known: {CASES:?}");
            std::process::exit(2);
        }
    }
}

fn main() {
    // `cargo bench` passes `--bench`; only positional arguments count.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    match args.as_slice() {
        [] => {
            for case in CASES {
                run(case, 1_000, 1_000);
            }
            println!(
                "pick_instructions: smoke run of {CASES:?} done; run under callgrind \
                 with `<case> <endpoints> <picks>` to count instructions (see the file's docs)"
            );
        }
        [case, n, iters] => {
            let (Ok(n), Ok(iters)) = (n.parse::<usize>(), iters.parse::<u64>()) else {
                eprintln!("usage: pick_instructions <case> <endpoints> <picks>");
                std::process::exit(2);
            };
            if n == 0 {
                eprintln!("endpoints must be at least 1");
                std::process::exit(2);
            }
            run(case, n, iters);
            println!("ran {case} over {n} endpoints, {iters} picks");
        }
        _ => {
            eprintln!("usage: pick_instructions [<case> <endpoints> <picks>]; cases: {CASES:?}");
            std::process::exit(2);
        }
    }
}

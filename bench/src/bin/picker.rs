//! Benchmark 1, `picker`: the cost of one pick, per algorithm and endpoint
//! count (10, 100, 1,000), with `tower::balance::p2c` as the peer measured
//! in the same run, alternately, over repeated rounds: wall and CPU
//! nanoseconds per pick, and instructions per pick under callgrind.
//!
//! ```sh
//! cargo run --release -p eds-bench --bin picker -- --json target/bench/picker.json [--quick]
//! ```
//!
//! What is measured: picks over a prepared endpoint set with random
//! in-flight counts (0..8) and latencies, every endpoint healthy, on one
//! thread. The paired rows are like for like: lb-core's P2C pick plus
//! `call` on the chosen always-ready service, against tower's
//! `Balance::poll_ready` plus `call` over the same number of always-ready
//! services wrapped in tower's own load trackers (`PendingRequests` for
//! in-flight, `PeakEwma` for latency). At 10 endpoints lb-core's P2C
//! compares every candidate (up to `lb_core::pick::SCAN_ALL_UP_TO`) where
//! tower samples two, so that pair is the same job done by a different
//! rule; at 100 and 1,000 both sample two. tower offers no way to pick without
//! calling, and its ready cache moves a called service back to pending
//! until polled, so that bookkeeping is part of each tower request. The
//! other lb-core algorithms (round robin, random, smooth weighted, ring
//! hash, bounded-load hash, the composed zone-aware `Balancer`) have no
//! tower counterpart and are shown alone.
//!
//! Wall time is a batch of picks (about 50 ms) over `Instant`; CPU time is
//! the thread's own (`CLOCK_THREAD_CPUTIME_ID`), both divided by the batch
//! size; on a busy machine wall exceeds CPU by the time spent waiting for a
//! core. This program replaces lb-core's former `pick_instructions` bench. Instruction counts run
//! this program again under `valgrind --tool=callgrind` in
//! `--callgrind-child` mode, counting only the `measured` loop, and
//! subtract the empty loop's count; they do not depend on the machine's
//! other load. What is not measured: building sets, rings or balancers,
//! load accounting after the pick, contention between threads.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use clap::Parser;
use eds_bench::machine::Machine;
use eds_bench::report::{BenchResult, Better, Chart, ChartKind, Row, Series, median};
use lb_core::pick::{P2c, P2cCost, RoundRobin, SmoothWeighted, random};
use lb_core::ring::{LoadFactor, Ring, RingConfig};
use lb_core::rng::{Rng, SmallRng, hash_bytes};
use lb_core::{Balancer, BalancerConfig, Endpoint, EndpointSet, Load, Policy};
use tower::Service as _;

const SIZES: [usize; 3] = [10, 100, 1_000];

/// A measured case: one kind of pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    /// The loop alone: the baseline instruction counts subtract.
    Empty,
    P2cCall,
    PeakEwmaCall,
    TowerPending,
    TowerPeakEwma,
    P2cPick,
    RoundRobin,
    Random,
    SmoothWeighted,
    RingHash,
    BoundedLoadHash,
    BalancerZoneLocal,
}

impl Case {
    const ALL: [Case; 12] = [
        Case::Empty,
        Case::P2cCall,
        Case::TowerPending,
        Case::PeakEwmaCall,
        Case::TowerPeakEwma,
        Case::P2cPick,
        Case::RoundRobin,
        Case::Random,
        Case::SmoothWeighted,
        Case::RingHash,
        Case::BoundedLoadHash,
        Case::BalancerZoneLocal,
    ];

    fn name(self) -> &'static str {
        match self {
            Case::Empty => "empty",
            Case::P2cCall => "p2c+call",
            Case::PeakEwmaCall => "p2c-peak-ewma+call",
            Case::TowerPending => "tower-pending-requests",
            Case::TowerPeakEwma => "tower-peak-ewma",
            Case::P2cPick => "p2c",
            Case::RoundRobin => "round-robin",
            Case::Random => "random",
            Case::SmoothWeighted => "smooth-weighted-round-robin",
            Case::RingHash => "ring-hash",
            Case::BoundedLoadHash => "bounded-load-hash",
            Case::BalancerZoneLocal => "balancer-p2c-zone-local",
        }
    }

    fn parse(s: &str) -> Option<Case> {
        Case::ALL.into_iter().find(|c| c.name() == s)
    }

    /// The lb-core case each tower case is compared with.
    fn peer(self) -> Option<Case> {
        match self {
            Case::P2cCall => Some(Case::TowerPending),
            Case::PeakEwmaCall => Some(Case::TowerPeakEwma),
            _ => None,
        }
    }

    fn is_peer(self) -> bool {
        matches!(self, Case::TowerPending | Case::TowerPeakEwma)
    }

    /// The row's metric label.
    fn label(self) -> &'static str {
        match self {
            Case::P2cCall => "P2C on in-flight, pick + call (peer: tower p2c over PendingRequests)",
            Case::PeakEwmaCall => "P2C on peak EWMA, pick + call (peer: tower p2c over PeakEwma)",
            Case::P2cPick => "P2C on in-flight, bare pick",
            Case::RoundRobin => "round robin",
            Case::Random => "random",
            Case::SmoothWeighted => "smooth weighted round robin",
            Case::RingHash => "ring hash",
            Case::BoundedLoadHash => "bounded-load consistent hash",
            Case::BalancerZoneLocal => "composed Balancer, P2C, zone-local (3 zones)",
            Case::Empty | Case::TowerPending | Case::TowerPeakEwma => "",
        }
    }
}

#[derive(Debug, Parser)]
struct Args {
    /// Write the result as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// A short run: fewer rounds, shorter batches, fewer callgrind picks.
    #[arg(long)]
    quick: bool,
    /// Rounds [default: 9, quick 3].
    #[arg(long, env = "EDS_BENCH_ROUNDS")]
    rounds: Option<usize>,
    /// Skip the callgrind instruction counts.
    #[arg(long)]
    no_callgrind: bool,
    /// Internal: run one case's loop for callgrind and exit.
    #[arg(long, value_name = "CASE")]
    callgrind_child: Option<String>,
    /// Internal: endpoints for `--callgrind-child`.
    #[arg(long, default_value_t = 100)]
    endpoints: usize,
    /// Internal: picks for `--callgrind-child`.
    #[arg(long, default_value_t = 100_000)]
    picks: u64,
}

/// Runs `f` `iters` times. Never inlined: callgrind's `--toggle-collect`
/// attaches to it, so only this loop is counted.
#[inline(never)]
fn measured<T>(iters: u64, mut f: impl FnMut() -> T) {
    for _ in 0..iters {
        black_box(f());
    }
}

/// Per-endpoint load both lb-core pickers read.
#[derive(Debug, Clone)]
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

/// An always-ready service, so tower's cost (and ours after the pick) is
/// the balancer's own.
#[derive(Debug, Clone, Copy)]
struct Always;

impl tower::Service<()> for Always {
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

/// `n` healthy endpoints over three zones.
fn endpoint_set(n: usize) -> EndpointSet {
    EndpointSet::merge(
        (0..n)
            .map(|i| {
                let addr = SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 8080));
                Endpoint::new(addr).with_zone(format!("zone-{}", i % 3))
            })
            .collect(),
    )
}

/// Builds a case's state over `n` endpoints and returns its loop: call it
/// with a pick count. All setup happens here, outside the loop.
fn make(case: Case, n: usize) -> anyhow::Result<Box<dyn FnMut(u64)>> {
    let mut rng = SmallRng::seed_from_u64(2);
    let load = Loads {
        in_flight: (0..n).map(|_| rng.below(8)).collect(),
        latency: (0..n).map(|_| 0.001 + rng.unit() * 0.01).collect(),
    };
    let total: u64 = load.in_flight.iter().map(|&x| u64::from(x)).sum();
    let candidates: Vec<u32> = (0..u32::try_from(n)?).collect();
    let weights = vec![1.0; n];
    let ring = || -> anyhow::Result<Ring> {
        let members: Vec<(u64, f64)> = (0..n)
            .map(|i| (hash_bytes(&i.to_le_bytes()), 1.0))
            .collect();
        Ok(Ring::build(&members, RingConfig::default())?)
    };
    let waker = futures::task::noop_waker();
    Ok(match case {
        Case::Empty => Box::new(|k| measured(k, || ())),
        Case::P2cPick => Box::new(move |k| {
            let p2c = P2c::default();
            measured(k, || {
                p2c.pick(black_box(&candidates), &weights, &load, &mut rng)
            });
        }),
        Case::P2cCall | Case::PeakEwmaCall => {
            let p2c = P2c {
                cost: if case == Case::P2cCall {
                    P2cCost::InFlight
                } else {
                    P2cCost::PeakEwma
                },
            };
            let mut services = vec![Always; n];
            Box::new(move |k| {
                measured(k, || {
                    let i = p2c
                        .pick(black_box(&candidates), &weights, &load, &mut rng)
                        .unwrap_or(0);
                    services[i as usize].call(())
                });
            })
        }
        Case::TowerPending | Case::TowerPeakEwma => {
            use tower::balance::p2c::Balance;
            use tower::discover::ServiceList;
            use tower::load::{CompleteOnResponse, PeakEwma, PendingRequests};
            // Each side's loop captures its own balancer; both are boxed
            // behind the same `FnMut(u64)` so the timing code is shared.
            fn drive<S>(mut balance: S, waker: std::task::Waker) -> Box<dyn FnMut(u64)>
            where
                S: tower::Service<(), Error = tower::BoxError> + 'static,
            {
                let mut cx = Context::from_waker(&waker);
                // Fill tower's ready cache outside the timed loop.
                let _ = balance.poll_ready(&mut cx);
                Box::new(move |k| {
                    let mut cx = Context::from_waker(&waker);
                    measured(k, || {
                        // Always ready, so never Pending; `call` would
                        // panic if it were.
                        let _ = balance.poll_ready(&mut cx);
                        balance.call(())
                    });
                })
            }
            if case == Case::TowerPending {
                let services: Vec<_> = (0..n)
                    .map(|_| PendingRequests::new(Always, CompleteOnResponse::default()))
                    .collect();
                drive(Balance::new(ServiceList::new(services)), waker)
            } else {
                // tower's harness defaults: 30 ms initial estimate, 10 s decay.
                let services: Vec<_> = (0..n)
                    .map(|_| {
                        PeakEwma::new(
                            Always,
                            Duration::from_millis(30),
                            Duration::from_secs(10).as_nanos() as f64,
                            CompleteOnResponse::default(),
                        )
                    })
                    .collect();
                drive(Balance::new(ServiceList::new(services)), waker)
            }
        }
        Case::RoundRobin => {
            let mut rr = RoundRobin::default();
            Box::new(move |k| measured(k, || rr.pick(black_box(&candidates))))
        }
        Case::Random => Box::new(move |k| measured(k, || random(black_box(&candidates), &mut rng))),
        Case::SmoothWeighted => {
            let mut sw = SmoothWeighted::default();
            sw.reset(n);
            Box::new(move |k| measured(k, || sw.pick(black_box(&candidates), &weights)))
        }
        Case::RingHash => {
            let ring = ring()?;
            Box::new(move |k| measured(k, || ring.pick(black_box(rng.next_u64()))))
        }
        Case::BoundedLoadHash => {
            let ring = ring()?;
            let factor = LoadFactor::default();
            Box::new(move |k| {
                measured(k, || {
                    ring.pick_bounded(black_box(rng.next_u64()), &load, total, n, factor, |_| true)
                });
            })
        }
        Case::BalancerZoneLocal => {
            let config = BalancerConfig {
                policy: Policy::P2c,
                zone: Some("zone-0".into()),
                ..Default::default()
            };
            let mut balancer = Balancer::new(config)?;
            balancer.set_endpoints(&endpoint_set(n), SystemTime::UNIX_EPOCH);
            Box::new(move |k| measured(k, || balancer.pick(&load, None, total, &mut rng)))
        }
    })
}

/// This thread's CPU time so far, in nanoseconds, from
/// `CLOCK_THREAD_CPUTIME_ID` (exact to the nanosecond on Linux, unlike
/// `/proc` counters, which advance by scheduler ticks).
#[allow(unsafe_code)]
fn thread_cpu_ns() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration,
    // and CLOCK_THREAD_CPUTIME_ID is a clock every Linux supports.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return f64::NAN;
    }
    ts.tv_sec as f64 * 1e9 + ts.tv_nsec as f64
}

/// Wall and CPU nanoseconds per pick of one batch of `iters` picks.
fn batch(run: &mut dyn FnMut(u64), iters: u64) -> (f64, f64) {
    let cpu = thread_cpu_ns();
    let t = Instant::now();
    run(iters);
    let wall = t.elapsed().as_nanos() as f64;
    let cpu = thread_cpu_ns() - cpu;
    (wall / iters as f64, cpu / iters as f64)
}

/// Picks per batch so one batch takes about `target`.
fn calibrate(run: &mut dyn FnMut(u64), target: Duration) -> u64 {
    let mut iters = 1_000u64;
    // Bounded: at most ~20 doublings before a batch is long enough.
    for _ in 0..30 {
        let t = Instant::now();
        run(iters);
        let took = t.elapsed();
        if took >= target / 4 {
            let per = took.as_secs_f64() / iters as f64;
            return ((target.as_secs_f64() / per) as u64).max(1);
        }
        iters *= 2;
    }
    iters
}

/// Instructions callgrind counts for `picks` picks of `case` over `n`
/// endpoints, inside `measured` only.
fn callgrind(exe: &Path, case: Case, n: usize, picks: u64) -> anyhow::Result<f64> {
    let out = std::env::temp_dir().join(format!(
        "eds-picker-{}-{}-{n}.callgrind",
        std::process::id(),
        case.name()
    ));
    let status = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg("--toggle-collect=*measured*")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(exe)
        .args(["--callgrind-child", case.name()])
        .args(["--endpoints", &n.to_string(), "--picks", &picks.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .context("running valgrind (is it installed?)")?;
    if !status.success() {
        bail!("valgrind {} {n}: {status}", case.name());
    }
    let text = std::fs::read_to_string(&out)?;
    let _ = std::fs::remove_file(&out);
    parse_callgrind_total(&text).context("no totals: or summary: line in the callgrind output")
}

/// The first event count (Ir) of the `totals:` line of a callgrind output
/// file, or of `summary:` when there is no `totals:`.
fn parse_callgrind_total(text: &str) -> Option<f64> {
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
    };
    field("totals:").or_else(|| field("summary:"))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(name) = &args.callgrind_child {
        let Some(case) = Case::parse(name) else {
            bail!("unknown case {name:?}");
        };
        let mut run = make(case, args.endpoints.max(1))?;
        run(args.picks);
        return Ok(());
    }

    let machine = Machine::probe(false);
    let rounds = args.rounds.unwrap_or(if args.quick { 3 } else { 9 }).max(1);
    let target = Duration::from_millis(if args.quick { 20 } else { 50 });
    let measured_cases: Vec<Case> = Case::ALL
        .into_iter()
        .filter(|c| *c != Case::Empty)
        .collect();
    let mut rows = Vec::new();
    let mut chart_points: Vec<(Case, Vec<(f64, f64)>)> = [
        Case::P2cCall,
        Case::TowerPending,
        Case::PeakEwmaCall,
        Case::TowerPeakEwma,
    ]
    .into_iter()
    .map(|c| (c, Vec::new()))
    .collect();
    let mut wall: Vec<Vec<Vec<f64>>> = Vec::new();
    let mut cpu: Vec<Vec<Vec<f64>>> = Vec::new();
    for &n in &SIZES {
        let mut loops = Vec::new();
        for &case in &measured_cases {
            let mut run = make(case, n)?;
            let iters = calibrate(&mut *run, target);
            loops.push((case, run, iters));
        }
        let mut w = vec![Vec::new(); loops.len()];
        let mut c = vec![Vec::new(); loops.len()];
        for round in 0..rounds {
            // Ours and the peer alternate within a round; odd rounds run
            // the cases in reverse so neither always goes first.
            let order: Vec<usize> = if round % 2 == 0 {
                (0..loops.len()).collect()
            } else {
                (0..loops.len()).rev().collect()
            };
            for k in order {
                let (_, run, iters) = &mut loops[k];
                let (wn, cn) = batch(&mut **run, *iters);
                w[k].push(wn);
                c[k].push(cn);
            }
        }
        println!("{n} endpoints ({rounds} rounds, ns per pick, median wall / CPU):");
        for (k, (case, _, iters)) in loops.iter().enumerate() {
            println!(
                "  {:<30} {:>9.1} / {:>9.1}   ({iters} picks per batch)",
                case.name(),
                median(&w[k]).unwrap_or(f64::NAN),
                median(&c[k]).unwrap_or(f64::NAN)
            );
        }
        wall.push(w);
        cpu.push(c);
    }

    // Instruction counts: deterministic, so one run per case and size.
    let picks = if args.quick { 20_000 } else { 100_000 };
    let exe = std::env::current_exe()?;
    let mut instructions: Vec<Vec<Option<f64>>> = Vec::new();
    let mut callgrind_note = None;
    for &n in &SIZES {
        let mut per = Vec::new();
        if args.no_callgrind {
            callgrind_note = Some("Instruction counts were skipped (--no-callgrind).".to_owned());
            instructions.push(vec![None; measured_cases.len()]);
            continue;
        }
        let empty = match callgrind(&exe, Case::Empty, n, picks) {
            Ok(v) => Some(v),
            Err(e) => {
                callgrind_note = Some(format!("Instruction counts are missing: {e:#}."));
                None
            }
        };
        for &case in &measured_cases {
            let count = match empty {
                Some(empty) => match callgrind(&exe, case, n, picks) {
                    Ok(v) => Some((v - empty) / picks as f64),
                    Err(e) => {
                        callgrind_note =
                            Some(format!("Some instruction counts are missing: {e:#}."));
                        None
                    }
                },
                None => None,
            };
            per.push(count);
        }
        println!(
            "{n} endpoints, instructions per pick: {}",
            measured_cases
                .iter()
                .zip(&per)
                .map(|(c, v)| format!(
                    "{} {}",
                    c.name(),
                    v.map_or("-".into(), |v| format!("{v:.0}"))
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
        instructions.push(per);
    }

    let index = |case: Case| measured_cases.iter().position(|c| *c == case).unwrap_or(0);
    for (s, &n) in SIZES.iter().enumerate() {
        let case = format!("{n} endpoints");
        for &ours in &measured_cases {
            if ours.is_peer() {
                continue;
            }
            let o = index(ours);
            let peer = ours.peer().map(index);
            let row = |metric: String, unit: &str, mine: Vec<f64>, theirs: Vec<f64>| Row {
                case: case.clone(),
                metric,
                unit: unit.to_owned(),
                better: Better::Lower,
                ours: mine,
                peer: theirs,
                target: None,
            };
            rows.push(row(
                format!("{}: wall time per pick", ours.label()),
                "ns",
                wall[s][o].clone(),
                peer.map(|p| wall[s][p].clone()).unwrap_or_default(),
            ));
            if let Some(p) = peer {
                rows.push(row(
                    format!("{}: CPU time per pick", ours.label()),
                    "ns",
                    cpu[s][o].clone(),
                    cpu[s][p].clone(),
                ));
            }
            if let Some(mine) = instructions[s][o] {
                let theirs = peer.and_then(|p| instructions[s][p]);
                rows.push(row(
                    format!("{}: instructions per pick (callgrind)", ours.label()),
                    "instructions",
                    vec![mine],
                    theirs.into_iter().collect(),
                ));
            }
        }
        for (case, points) in &mut chart_points {
            points.push((n as f64, median(&wall[s][index(*case)]).unwrap_or(f64::NAN)));
        }
    }

    let mut notes = vec![
        format!(
            "Wall and CPU rows hold one value per round ({rounds} rounds); each value is a batch of about {} ms of picks divided by its size.",
            target.as_millis()
        ),
        "Instruction counts are one callgrind run per case and size (they are deterministic), the empty loop's count subtracted.".into(),
        "tower's PeakEwma reads the clock (Instant::now) on every load comparison; lb-core's peak-EWMA pick reads precomputed estimates, and lb-client updates them when responses complete.".into(),
    ];
    notes.extend(callgrind_note);
    let result = BenchResult {
        name: "picker".into(),
        title: "Pick cost: lb-core's pickers against tower's p2c".into(),
        command: eds_bench::command::command("picker", args.quick, args.rounds),
        ours: format!("lb-core {} pickers (pick + call on an always-ready service where paired)", env!("CARGO_PKG_VERSION")),
        peer: "tower 0.5 balance::p2c::Balance over ServiceList of always-ready services wrapped in load::PendingRequests or load::PeakEwma (30 ms initial, 10 s decay, CompleteOnResponse): poll_ready + call".into(),
        machine,
        rows,
        charts: vec![Chart {
            id: "p2c".into(),
            title: "Wall time per pick + call, median over rounds".into(),
            kind: ChartKind::Bars,
            x_label: "endpoints".into(),
            y_label: "ns per pick".into(),
            series: chart_points
                .into_iter()
                .map(|(case, points)| Series {
                    name: match case {
                        Case::P2cCall => "lb-core P2C in-flight",
                        Case::TowerPending => "tower PendingRequests",
                        Case::PeakEwmaCall => "lb-core P2C peak EWMA",
                        _ => "tower PeakEwma",
                    }
                    .into(),
                    points,
                })
                .collect(),
        }],
        notes,
    };
    if let Some(path) = &args.json {
        result.write(path)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_callgrind_totals_before_summary() {
        let text = "events: Ir\nsummary: 900\nfn=x\n1 2\ntotals: 1234 5\n";
        assert_eq!(parse_callgrind_total(text), Some(1234.0));
        assert_eq!(parse_callgrind_total("summary: 77\n"), Some(77.0));
        assert_eq!(parse_callgrind_total("events: Ir\n"), None);
    }

    #[test]
    fn every_case_names_round_trip_and_pairs_are_peers() {
        for c in Case::ALL {
            assert_eq!(Case::parse(c.name()), Some(c));
            if let Some(p) = c.peer() {
                assert!(p.is_peer());
            }
        }
    }
}

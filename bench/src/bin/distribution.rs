//! Benchmark 2, `distribution`: how evenly load spreads and how many
//! requests finish within a second, from lb-core's deterministic load
//! simulator (`lb_core::sim`), for P2C on in-flight requests (ours, the
//! policy lb-client uses by default) against per-request round robin and
//! least-loaded (the peers: what most proxies and client libraries offer).
//!
//! ```sh
//! cargo run --release -p eds-bench --bin distribution -- --json target/bench/distribution.json [--quick]
//! ```
//!
//! Scenarios, each over 32 backends in 3 zones and 64 clients with
//! lognormal costs (sigma 1, mean 10 ms) at 80% utilisation, every client
//! seeing only its own in-flight requests:
//!
//! - `steady`: the headline scenario of `cargo xtask simulate`;
//! - `two slow pods`: 2 backends 3x slower for the whole run;
//! - `one pod slow for 30 s`: one backend turns 20x slower from 30 s to
//!   60 s of a 90 s run, with the arrival rate of the healthy fleet.
//!
//! Rounds are seeds: every policy runs over the same fleet and the same
//! requests in a round, one round per seed. Simulated time says nothing
//! about our code's speed; the wall and CPU time rows only show what the
//! simulation itself costs. It is not a network benchmark (see `harness`).

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use eds_bench::machine::{Machine, ProcUsage};
use eds_bench::report::{BenchResult, Better, Chart, ChartKind, Row, Series, median};
use lb_core::sim::{self, Report, SimConfig, SimPolicy, SlowWindow};

#[derive(Debug, Parser)]
struct Args {
    /// Write the result as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// A short run: shorter simulations, fewer seeds.
    #[arg(long)]
    quick: bool,
    /// Rounds (seeds 1..=R) [default: 9, quick 3].
    #[arg(long, env = "EDS_BENCH_ROUNDS")]
    rounds: Option<u64>,
}

/// Ours first, then the peers, in table order.
const POLICIES: [SimPolicy; 3] = [
    SimPolicy::P2c,
    SimPolicy::RoundRobin,
    SimPolicy::LeastLoaded,
];

fn label(p: SimPolicy) -> &'static str {
    match p {
        SimPolicy::P2c => "P2C on in-flight (ours)",
        SimPolicy::RoundRobin => "round robin",
        SimPolicy::LeastLoaded => "least-loaded",
        other => other.as_str(),
    }
}

struct Scenario {
    name: &'static str,
    id: &'static str,
    config: SimConfig,
    window: Option<SlowWindow>,
}

fn scenarios(quick: bool) -> Vec<Scenario> {
    let base = SimConfig {
        policies: POLICIES.to_vec(),
        duration_secs: if quick { 20.0 } else { 60.0 },
        ..SimConfig::default()
    };
    vec![
        Scenario {
            name: "steady: 32 backends, 3 zones, 80% utilisation",
            id: "steady",
            config: base.clone(),
            window: None,
        },
        Scenario {
            name: "two pods 3x slower for the whole run",
            id: "two-slow",
            config: SimConfig {
                slow_backends: 2,
                slow_factor: 3.0,
                ..base.clone()
            },
            window: None,
        },
        Scenario {
            name: "one pod 20x slower from 30 s to 60 s of 90 s",
            id: "slow-30s",
            config: SimConfig {
                slow_backends: 1,
                slow_factor: 20.0,
                duration_secs: 90.0,
                ..base
            },
            window: Some(SlowWindow {
                from_secs: 30.0,
                to_secs: 60.0,
            }),
        },
    ]
}

fn run(s: &Scenario, seed: u64) -> anyhow::Result<Report> {
    let config = SimConfig {
        seed,
        ..s.config.clone()
    };
    Ok(match s.window {
        Some(w) => sim::run_with_slow_window(&config, w)?,
        None => sim::run(&config)?,
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let machine = Machine::probe(false);
    let rounds = args.rounds.unwrap_or(if args.quick { 3 } else { 9 }).max(1);
    let mut rows = Vec::new();
    let mut charts = Vec::new();
    let mut sim_wall = Vec::new();
    let mut sim_cpu = Vec::new();
    for s in scenarios(args.quick) {
        let mut reports = Vec::new();
        for seed in 1..=rounds {
            let cpu = ProcUsage::of(std::process::id())?.cpu_seconds;
            let t = Instant::now();
            reports.push(run(&s, seed)?);
            sim_wall.push(t.elapsed().as_secs_f64());
            sim_cpu.push(ProcUsage::of(std::process::id())?.cpu_seconds - cpu);
        }
        // One value per seed for each policy and figure.
        let per = |p: SimPolicy, f: &dyn Fn(&sim::PolicyReport) -> f64| -> Vec<f64> {
            reports
                .iter()
                .filter_map(|r| r.policies.iter().find(|x| x.policy == p))
                .map(f)
                .collect()
        };
        println!("{} ({rounds} seeds):", s.name);
        for p in POLICIES {
            println!(
                "  {:<24} within 1 s {:>7.3}%  p99 {:>8.1} ms  max/mean utilisation {:>5.2}",
                label(p),
                median(&per(p, &|r| r.within_1s_fraction * 100.0)).unwrap_or(f64::NAN),
                median(&per(p, &|r| r.p99_ms)).unwrap_or(f64::NAN),
                median(&per(p, &|r| r.max_over_mean_utilization)).unwrap_or(f64::NAN),
            );
        }
        type Figure = (
            &'static str,
            &'static str,
            Better,
            fn(&sim::PolicyReport) -> f64,
        );
        let figures: [Figure; 3] = [
            (
                "share of requests finished within 1 s",
                "%",
                Better::Higher,
                |r| r.within_1s_fraction * 100.0,
            ),
            ("p99 latency", "ms", Better::Lower, |r| r.p99_ms),
            (
                "busiest pod's utilisation over the mean",
                "ratio",
                Better::Lower,
                |r| r.max_over_mean_utilization,
            ),
        ];
        for peer in &POLICIES[1..] {
            for (metric, unit, better, f) in &figures {
                rows.push(Row {
                    case: format!("{} (peer: {})", s.name, label(*peer)),
                    metric: (*metric).to_owned(),
                    unit: (*unit).to_owned(),
                    better: *better,
                    ours: per(SimPolicy::P2c, f),
                    peer: per(*peer, f),
                    target: None,
                });
            }
        }
        // Per-pod load of the first seed: the bars a reader compares.
        if let Some(first) = reports.first() {
            charts.push(Chart {
                id: s.id.to_owned(),
                title: format!("Per-pod utilisation, {} (seed 1)", s.name),
                kind: ChartKind::Bars,
                x_label: "pod (backend index; the slow ones first)".into(),
                y_label: "utilisation (work sent / capacity)".into(),
                series: first
                    .policies
                    .iter()
                    .map(|p| Series {
                        name: label(p.policy).to_owned(),
                        points: p
                            .utilization
                            .iter()
                            .enumerate()
                            .map(|(i, &u)| (i as f64, u))
                            .collect(),
                    })
                    .collect(),
            });
        }
    }
    rows.push(Row {
        case: "all scenarios, every seed".into(),
        metric: "simulation wall time per scenario run (all three policies)".into(),
        unit: "s".into(),
        better: Better::Lower,
        ours: sim_wall,
        peer: Vec::new(),
        target: None,
    });
    rows.push(Row {
        case: "all scenarios, every seed".into(),
        metric: "simulation CPU time per scenario run (all three policies)".into(),
        unit: "s".into(),
        better: Better::Lower,
        ours: sim_cpu,
        peer: Vec::new(),
        target: None,
    });

    let result = BenchResult {
        name: "distribution".into(),
        title: "Load distribution in the simulator: P2C against round robin and least-loaded".into(),
        command: eds_bench::command::command("distribution", args.quick, args.rounds),
        ours: format!(
            "lb-core {} Balancer with Policy::P2c, one per client, each seeing only its own in-flight requests",
            env!("CARGO_PKG_VERSION")
        ),
        peer: "round robin (lb-core Policy::RoundRobin, each client starting at a random place) and least-loaded (a full scan for the fewest in-flight requests in the client's view, ties at random), in the same simulator over the same requests".into(),
        machine,
        rows,
        charts,
        notes: vec![
            "Rounds are seeds 1..R; each row holds one value per seed. The simulator is deterministic: the same seed gives the same figures on any machine.".into(),
            "Clients: 64, each with its own balancer and its own view of load (no global view); backends serve one request at a time, first in first out.".into(),
            "The slow-spell scenario keeps the healthy fleet's arrival rate, so the fleet is short of capacity while the pod is slow; a request is slow when its service starts inside the spell.".into(),
            "Wall and CPU rows time the simulation itself (this process), not a balancer under real traffic.".into(),
        ],
    };
    if let Some(path) = &args.json {
        result.write(path)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

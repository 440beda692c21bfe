//! Benchmark `overhead`: what lb-client costs a tonic client, and how evenly
//! it spreads real load, against the peers a user would otherwise pick, in
//! one run.
//!
//! ```text
//!  this process (client, pinned to CPU 0)           child process (backends, pinned to CPU 1)
//!  raw tonic Channel ------------------------------> backend 0            (10 at 0 ms)
//!  lb-client P2C over 1, 2, 4, 8, 10 --------------> backends 0..n
//!  tonic Channel::balance_list over 10 ------------> backends 0..10
//!  lb-client P2C / round robin --------------------> 10 backends at 1..10 ms
//! ```
//!
//! 1. Closed loop: a fixed number of callers, each sending as soon as its
//!    last answer came; gives the maximum throughput and its latency. The
//!    throughput target is judged on a paired run: one-second slices of
//!    the raw Channel and lb-client back to back, the ratio taken per pair,
//!    because this VM's speed drifts more between rounds than the 5% judged.
//! 2. Open loop: fixed rates below saturation (fractions of the raw
//!    Channel's closed-loop maximum), every request timed from its scheduled
//!    send time, so stalls are charged (no coordinated omission). Each
//!    rate also runs interleaved: every other request of one schedule
//!    through the raw Channel, the rest through lb-client, so the latency
//!    lb-client adds is read from the same moments of the machine; separate
//!    runs a few seconds apart differ by more than that on this VM.
//! 3. Distribution: time-averaged requests in flight per backend with
//!    heterogeneous latency, from the client side (exact, by Little's law
//!    over the client-measured latencies; and sampled from lb-client's own
//!    counters as a cross-check), P2C against round robin.
//!
//! Contenders alternate within every round and the starting contender
//! rotates, so a machine that gets busier mid-run hurts all alike. Client and
//! backends run in separate processes so the client's CPU time per request
//! is its own. Traffic goes to 127.0.0.1 only. A benchmark: it asserts
//! nothing about timings and stops by itself (every loop is bounded).
//!
//! ```sh
//! cargo run --release -p eds-bench --bin overhead -- --quick --json target/bench/overhead.json
//! ```

#[path = "../overhead/backends.rs"]
mod backends;
#[path = "../overhead/load.rs"]
mod load;
#[path = "../overhead/model.rs"]
mod model;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use eds_bench::machine::{Machine, ProcUsage, pin_self};
use eds_bench::report::{
    BenchResult, Better, Chart, ChartKind, Row, Series, Target, median, quantile,
};
use lb_client::{LbChannel, LbClient, LbConfig, ServiceOptions};
use lb_core::{Endpoint, Policy};
use proto::echo::echo_client::EchoClient;
use tonic::transport::Channel;

use backends::Backends;
use load::LoadResult;

#[derive(Debug, Parser)]
#[command(about = "lb-client overhead against a raw tonic Channel, and P2C against round robin")]
struct Args {
    /// Write the result here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// A short run (about a minute).
    #[arg(long)]
    quick: bool,
    /// Do not pin the client and the backends to separate CPUs.
    #[arg(long)]
    no_pin: bool,
    /// Callers of the closed loop (overhead part).
    #[arg(long, default_value_t = 64)]
    callers: usize,
    /// Callers of the distribution part.
    #[arg(long, default_value_t = 32)]
    dist_callers: usize,
    /// Override the rounds per part.
    #[arg(long)]
    rounds: Option<usize>,
    /// Override the seconds per measured run.
    #[arg(long)]
    seconds: Option<f64>,
    /// Run only these parts (comma-separated: closed, open, dist).
    #[arg(long, default_value = "closed,open,dist")]
    parts: String,
    /// Measure only these contenders in the closed and open loops
    /// (comma-separated ids: raw1, balance10, lb1, lb2, lb4, lb8, lb10), for
    /// profiling or comparing one path.
    #[arg(long)]
    contenders: Option<String>,
    /// Open-loop rates in req/s (comma-separated), instead of fractions of
    /// the raw Channel's measured maximum.
    #[arg(long)]
    rates: Option<String>,
    /// Pairs of alternating slices in the paired closed-loop comparison.
    #[arg(long)]
    pairs: Option<usize>,
    /// Seconds per slice of the paired closed-loop comparison.
    #[arg(long)]
    slice: Option<f64>,
}

/// Backend counts lb-client is measured over.
const SIZES: [usize; 5] = [1, 2, 4, 8, 10];
/// Quantiles shown in the latency charts.
const QUANTILES: [f64; 5] = [0.5, 0.9, 0.99, 0.999, 0.9999];

#[derive(Debug, Clone)]
enum Transportish {
    Tonic(Channel),
    Lb(LbChannel),
}

/// One thing being measured.
#[derive(Debug, Clone)]
struct Contender {
    id: String,
    label: String,
    transport: Transportish,
}

impl Contender {
    async fn closed(&self, callers: usize, d: Duration) -> LoadResult {
        match &self.transport {
            Transportish::Tonic(c) => {
                load::closed_loop(EchoClient::new(c.clone()), callers, d).await
            }
            Transportish::Lb(c) => load::closed_loop(EchoClient::new(c.clone()), callers, d).await,
        }
    }

    async fn open(&self, rate: f64, d: Duration) -> anyhow::Result<LoadResult> {
        match &self.transport {
            Transportish::Tonic(c) => load::open_loop(EchoClient::new(c.clone()), rate, d).await,
            Transportish::Lb(c) => load::open_loop(EchoClient::new(c.clone()), rate, d).await,
        }
    }

    /// Sends through this contender, for an interleaved schedule.
    fn caller(&self) -> load::Caller {
        match &self.transport {
            Transportish::Tonic(c) => load::caller(EchoClient::new(c.clone())),
            Transportish::Lb(c) => load::caller(EchoClient::new(c.clone())),
        }
    }
}

/// One measured run with the CPU both processes spent on it.
#[derive(Debug, Clone)]
struct Run {
    load: LoadResult,
    client_cpu: f64,
    backends_cpu: f64,
}

impl Run {
    fn cpu_ms_per_1k(cpu: f64, ok: u64) -> f64 {
        cpu * 1000.0 / (ok.max(1) as f64 / 1000.0)
    }
    fn client_ms_per_1k(&self) -> f64 {
        Self::cpu_ms_per_1k(self.client_cpu, self.load.ok)
    }
    fn backends_ms_per_1k(&self) -> f64 {
        Self::cpu_ms_per_1k(self.backends_cpu, self.load.ok)
    }
    fn line(&self, label: &str) -> String {
        let l = &self.load;
        format!(
            "{label:<44} {:>9.0} req/s  p50 {:>6.0}  p99 {:>6.0}  p99.9 {:>6.0} us  client {:>5.1} / backends {:>5.1} ms CPU per 1k  errors {}",
            l.throughput(),
            l.latency(0.5),
            l.latency(0.99),
            l.latency(0.999),
            self.client_ms_per_1k(),
            self.backends_ms_per_1k(),
            l.errors
        )
    }
}

/// Measures `f` with the CPU time of this process and the backends'.
async fn measured<F: Future<Output = anyhow::Result<LoadResult>>>(
    backends_pid: u32,
    f: F,
) -> anyhow::Result<Run> {
    let me = std::process::id();
    let (c0, b0) = (ProcUsage::of(me)?, ProcUsage::of(backends_pid)?);
    let load = f.await?;
    let (c1, b1) = (ProcUsage::of(me)?, ProcUsage::of(backends_pid)?);
    Ok(Run {
        load,
        client_cpu: c1.cpu_seconds - c0.cpu_seconds,
        backends_cpu: b1.cpu_seconds - b0.cpu_seconds,
    })
}

fn lb_client(policy: Policy) -> anyhow::Result<LbClient> {
    let mut config = LbConfig::from_env();
    config.control_plane = None;
    config.snapshot_file = None;
    config.zone = None;
    config.dns_fallback.enabled = false;
    config.default_service = ServiceOptions {
        policy: Some(policy),
        slow_start: None,
        zone_affinity: false,
        ..ServiceOptions::default()
    };
    Ok(LbClient::connect(config)?)
}

fn row(
    case: &str,
    metric: &str,
    unit: &str,
    better: Better,
    ours: Vec<f64>,
    peer: Vec<f64>,
) -> Row {
    Row {
        case: case.to_owned(),
        metric: metric.to_owned(),
        unit: unit.to_owned(),
        better,
        ours,
        peer,
        target: None,
    }
}

fn with_target(mut r: Row, t: Target) -> Row {
    r.target = Some(t);
    r
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// max/mean of per-backend loads (1.0 is perfectly even); NaN when there
/// was no load at all, so an empty run can never pass a target.
fn max_over_mean(v: &[f64]) -> f64 {
    let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
    if mean <= 0.0 || mean.is_nan() {
        return f64::NAN;
    }
    v.iter().copied().fold(0.0, f64::max) / mean
}

fn main() -> anyhow::Result<()> {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some(backends::CHILD_FLAG) {
        return backends::child_main(&argv[2..]);
    }
    let args = Args::parse();
    let machine = Machine::probe(false);
    let pin = !args.no_pin && machine.cores >= 2;
    if pin {
        pin_self(0)?;
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if pin {
        builder.worker_threads(1);
    }
    let runtime = builder.enable_all().build()?;
    let command = std::iter::once("overhead".to_owned())
        .chain(argv.iter().skip(1).cloned())
        .collect::<Vec<_>>()
        .join(" ");
    runtime.block_on(run(args, machine, pin, command))
}

async fn run(args: Args, machine: Machine, pin: bool, command: String) -> anyhow::Result<()> {
    let parts: Vec<&str> = args.parts.split(',').map(str::trim).collect();
    let rounds = args.rounds.unwrap_or(if args.quick { 3 } else { 5 });
    let seconds = args.seconds.unwrap_or(if args.quick { 1.5 } else { 4.0 });
    let d = Duration::from_secs_f64(seconds);
    let load_start = loadavg();

    // 10 fast backends for the overhead parts, 10 at 1..10 ms for the distribution.
    let latencies: Vec<u64> = std::iter::repeat_n(0, 10).chain(1..=10).collect();
    let backends = Backends::spawn(&latencies, pin.then_some(1))?;
    let fast = &backends.addrs[..10];
    let slow = &backends.addrs[10..];
    let bpid = backends.pid();
    println!(
        "# overhead: client pid {} {}, backends pid {bpid} {}; {rounds} rounds of {seconds} s; load average {load_start}",
        std::process::id(),
        if pin {
            "on CPU 0 (1 runtime worker)"
        } else {
            "unpinned"
        },
        if pin {
            "on CPU 1 (1 runtime worker)"
        } else {
            "unpinned"
        },
    );

    let endpoint = |a: &std::net::SocketAddr| {
        tonic::transport::Endpoint::from_shared(format!("http://{a}")).map(|e| e.tcp_nodelay(true))
    };
    let raw = Contender {
        id: "raw1".into(),
        label: "raw tonic Channel, 1 backend".into(),
        transport: Transportish::Tonic(endpoint(&fast[0])?.connect().await?),
    };
    let balance = Contender {
        id: "balance10".into(),
        label: "tonic balance_list, 10 backends".into(),
        transport: Transportish::Tonic(Channel::balance_list(
            fast.iter()
                .map(endpoint)
                .collect::<Result<Vec<_>, _>>()?
                .into_iter(),
        )),
    };
    let p2c = lb_client(Policy::P2c)?;
    let mut lbs = Vec::new();
    for n in SIZES {
        let key = format!("fast{n}.bench:8080");
        p2c.set_endpoints(&key, fast[..n].iter().map(|a| Endpoint::new(*a)).collect())?;
        lbs.push(Contender {
            id: format!("lb{n}"),
            label: format!(
                "lb-client P2C, {n} backend{}",
                if n == 1 { "" } else { "s" }
            ),
            transport: Transportish::Lb(p2c.channel(&key)?),
        });
    }
    let lb10 = lbs.last().cloned().context("no lb-client contender")?;

    let mut rows = Vec::new();
    let mut charts = Vec::new();
    let mut notes = vec![format!(
        "Client and backends in separate processes{}; the client runs a tokio runtime with {} and {} closed-loop callers; backends are tonic echo servers on 127.0.0.1. Load average at start {load_start}.",
        if pin {
            ", pinned with taskset (client CPU 0, backends CPU 1), one runtime worker each"
        } else {
            ", not pinned"
        },
        if pin { "1 worker" } else { "default workers" },
        args.callers
    )];

    // Warm every path (connections, allocator, HTTP/2 windows) before measuring.
    let mut all = vec![raw.clone(), balance.clone()];
    all.extend(lbs.iter().cloned());
    if let Some(only) = &args.contenders {
        let only: Vec<&str> = only.split(',').map(str::trim).collect();
        all.retain(|c| only.contains(&c.id.as_str()));
        anyhow::ensure!(
            !all.is_empty(),
            "no contender matches --contenders {only:?}"
        );
    }
    for c in &all {
        let _ = c.closed(args.callers, Duration::from_millis(500)).await;
    }

    let mut raw_max = Vec::new();
    if parts.contains(&"closed") {
        println!("\n## closed loop, {} callers", args.callers);
        let mut runs: BTreeMap<String, Vec<Run>> = BTreeMap::new();
        for round in 0..rounds {
            let mut order = all.clone();
            order.rotate_left(round % all.len());
            for c in &order {
                let run = measured(bpid, async { Ok(c.closed(args.callers, d).await) }).await?;
                println!("round {round} {}", run.line(&c.label));
                runs.entry(c.id.clone()).or_default().push(run);
            }
        }
        let get = |id: &str, f: &dyn Fn(&Run) -> f64| -> Vec<f64> {
            runs.get(id)
                .map(|v| v.iter().map(f).collect())
                .unwrap_or_default()
        };
        let rps = |r: &Run| r.load.throughput();
        let p99 = |r: &Run| r.load.latency(0.99);
        let cpu = |r: &Run| r.client_ms_per_1k();
        let bcpu = |r: &Run| r.backends_ms_per_1k();
        raw_max = get("raw1", &rps);
        for n in SIZES {
            let case = format!(
                "closed loop, {} callers: lb-client P2C over {n} vs raw tonic Channel to 1",
                args.callers
            );
            let id = format!("lb{n}");
            let t = row(
                &case,
                "max throughput",
                "req/s",
                Better::Higher,
                get(&id, &rps),
                get("raw1", &rps),
            );
            rows.push(t);
            rows.push(row(
                &case,
                "p99 latency",
                "us",
                Better::Lower,
                get(&id, &p99),
                get("raw1", &p99),
            ));
            rows.push(row(
                &case,
                "client CPU per 1k requests",
                "ms",
                Better::Lower,
                get(&id, &cpu),
                get("raw1", &cpu),
            ));
            if n == 1 || n == 10 {
                rows.push(row(
                    &case,
                    "backends' CPU per 1k requests",
                    "ms",
                    Better::Lower,
                    get(&id, &bcpu),
                    get("raw1", &bcpu),
                ));
            }
        }
        let case = format!(
            "closed loop, {} callers: lb-client P2C over 10 vs tonic Channel::balance_list over the same 10",
            args.callers
        );
        rows.push(row(
            &case,
            "max throughput",
            "req/s",
            Better::Higher,
            get("lb10", &rps),
            get("balance10", &rps),
        ));
        rows.push(row(
            &case,
            "p99 latency",
            "us",
            Better::Lower,
            get("lb10", &p99),
            get("balance10", &p99),
        ));
        rows.push(row(
            &case,
            "client CPU per 1k requests",
            "ms",
            Better::Lower,
            get("lb10", &cpu),
            get("balance10", &cpu),
        ));
        let ratio = |a: &str, b: &str| {
            median(&get(a, &rps)).unwrap_or(f64::NAN) / median(&get(b, &rps)).unwrap_or(f64::NAN)
        };
        notes.push(format!(
            "Closed-loop throughput medians relative to the raw Channel to 1 backend: lb-client over 1 {:.3}, over 10 {:.3}; tonic balance_list over 10 {:.3}. The balance_list figure is the cost of spreading over 10 connections without lb-client.",
            ratio("lb1", "raw1"),
            ratio("lb10", "raw1"),
            ratio("balance10", "raw1"),
        ));
        if let (Some(raw), Some(lb)) = (
            all.iter().find(|c| c.id == "raw1"),
            all.iter().find(|c| c.id == "lb10"),
        ) {
            let pairs = args.pairs.unwrap_or(if args.quick { 8 } else { 30 });
            let slice = Duration::from_secs_f64(args.slice.unwrap_or(1.0));
            paired_closed(raw, lb, args.callers, pairs, slice, &mut rows, &mut notes).await?;
        }
        charts.push(percentile_chart(
            "closed-latency",
            &format!(
                "Closed-loop latency percentiles, {} callers (median of rounds)",
                args.callers
            ),
            &runs,
            &[
                ("raw1", "raw tonic Channel, 1 backend"),
                ("lb1", "lb-client, 1 backend"),
                ("lb10", "lb-client, 10 backends"),
                ("balance10", "tonic balance_list, 10 backends"),
            ],
        ));
    }

    if parts.contains(&"open") {
        // An open-loop request costs the client 2-4x the CPU of a closed-loop
        // one (the runtime parks and wakes between requests, and requests
        // travel alone instead of sharing writes), so 30% of the closed-loop
        // maximum already keeps the client's core ~80% busy; above that both
        // paths queue and p99 measures the queue, not the client.
        let fractions: &[f64] = if args.quick {
            &[0.1, 0.25]
        } else {
            &[0.1, 0.2, 0.3]
        };
        let rates: Vec<f64> = match &args.rates {
            Some(list) => list
                .split(',')
                .map(|r| r.trim().parse::<f64>())
                .collect::<Result<_, _>>()
                .with_context(|| format!("--rates {list:?}"))?,
            None => {
                let base = match median(&raw_max) {
                    Some(m) => m,
                    // No closed-loop part ran: measure the raw maximum once.
                    None => raw.closed(args.callers, d).await.throughput(),
                };
                // Rounded to readable rates.
                fractions
                    .iter()
                    .map(|f| ((base * f) / 100.0).round().max(1.0) * 100.0)
                    .collect()
            }
        };
        anyhow::ensure!(
            rates.iter().all(|r| r.is_finite() && *r >= 1.0),
            "open-loop rates must be at least 1 req/s: {rates:?}"
        );
        let mut contenders = vec![raw.clone(), lb10.clone(), balance.clone()];
        if let Some(only) = &args.contenders {
            // Profiling one path: take exactly the contenders asked for.
            let only: Vec<&str> = only.split(',').map(str::trim).collect();
            contenders = all
                .iter()
                .filter(|c| only.contains(&c.id.as_str()))
                .cloned()
                .collect();
        }
        for (k, &rate) in rates.iter().enumerate() {
            println!("\n## open loop at {rate:.0} req/s");
            let mut runs: BTreeMap<String, Vec<Run>> = BTreeMap::new();
            for round in 0..rounds {
                let mut order = contenders.to_vec();
                order.rotate_left(round % contenders.len());
                for c in &order {
                    let run = measured(bpid, c.open(rate, d)).await?;
                    println!("round {round} {}", run.line(&c.label));
                    runs.entry(c.id.clone()).or_default().push(run);
                }
            }
            let get = |id: &str, q: f64| -> Vec<f64> {
                runs.get(id)
                    .map(|v| v.iter().map(|r| r.load.latency(q)).collect())
                    .unwrap_or_default()
            };
            let case = format!(
                "open loop at {rate:.0} req/s: lb-client P2C over 10 vs raw tonic Channel to 1"
            );
            for (q, name) in [
                (0.5, "p50 latency"),
                (0.99, "p99 latency"),
                (0.999, "p99.9 latency"),
            ] {
                rows.push(row(
                    &case,
                    name,
                    "us",
                    Better::Lower,
                    get("lb10", q),
                    get("raw1", q),
                ));
            }
            // Paired by round: each round's lb-client p99 minus the raw p99
            // of the same round, runs seconds apart (the interleaved rows
            // below compare the same moments).
            let added: Vec<f64> = get("lb10", 0.99)
                .iter()
                .zip(get("raw1", 0.99))
                .map(|(a, b)| a - b)
                .collect();
            rows.push(row(
                &case,
                "added p99 latency (lb-client minus raw, separate runs of the same round)",
                "us",
                Better::Lower,
                added,
                Vec::new(),
            ));
            let cpu = |id: &str| -> Vec<f64> {
                runs.get(id)
                    .map(|v| v.iter().map(Run::client_ms_per_1k).collect())
                    .unwrap_or_default()
            };
            rows.push(row(
                &case,
                "client CPU per 1k requests",
                "ms",
                Better::Lower,
                cpu("lb10"),
                cpu("raw1"),
            ));
            if contenders.iter().any(|c| c.id == "raw1")
                && contenders.iter().any(|c| c.id == "lb10")
            {
                // Twice the rounds: a p99 over seconds moves with every stall
                // of the VM, and the median of more paired rounds settles.
                interleaved(rate, d, 2 * rounds, &raw, &lb10, &mut rows).await?;
            }
            let case = format!(
                "open loop at {rate:.0} req/s: lb-client P2C over 10 vs tonic balance_list over 10"
            );
            rows.push(row(
                &case,
                "p99 latency",
                "us",
                Better::Lower,
                get("lb10", 0.99),
                get("balance10", 0.99),
            ));
            // How busy the client's one core was: near saturation, queueing
            // turns a few percent more CPU per request into a long tail.
            let busy = |id: &str| median(&cpu(id)).map(|ms_per_1k| ms_per_1k * rate / 1e6);
            if let (Some(lb), Some(raw)) = (busy("lb10"), busy("raw1")) {
                notes.push(format!(
                    "Open loop at {rate:.0} req/s: the client needs {:.0}% of its one core with lb-client over 10 backends and {:.0}% with the raw Channel to 1 (client CPU per 1k requests x rate, medians; above 100% it cannot keep up and requests queue); p99 {}.",
                    lb * 100.0,
                    raw * 100.0,
                    match (median(&get("lb10", 0.99)), median(&get("raw1", 0.99))) {
                        (Some(a), Some(b)) => format!("{a:.0} us against the raw Channel's {b:.0} us"),
                        _ => "not available".to_owned(),
                    }
                ));
            }
            if k == rates.len() / 2 {
                charts.push(percentile_chart(
                    "open-latency",
                    &format!("Open-loop latency percentiles at {rate:.0} req/s, timed from the scheduled send (median of rounds)"),
                    &runs,
                    &[("raw1", "raw tonic Channel, 1 backend"), ("lb10", "lb-client, 10 backends"), ("balance10", "tonic balance_list, 10 backends")],
                ));
            }
        }
    }

    if parts.contains(&"dist") {
        distribution(
            &args,
            slow,
            fast.len(),
            bpid,
            rounds,
            d,
            &mut rows,
            &mut charts,
            &mut notes,
        )
        .await?;
    }

    let load_end = loadavg();
    notes.push(format!(
        "Load average at the end {load_end} (other work on the machine shows here)."
    ));
    print_summary(&rows);
    let result = BenchResult {
        name: "overhead".into(),
        title: "Client overhead and real load distribution (lb-client)".into(),
        command,
        ours: format!("lb-client {}", env!("CARGO_PKG_VERSION")),
        peer: "tonic 0.14 Channel (one backend; and Channel::balance_list over the same backends); round robin for the distribution".into(),
        machine,
        rows,
        charts,
        notes,
    };
    if let Some(path) = &args.json {
        result.write(path)?;
        println!("\nwrote {}", path.display());
    }
    Ok(())
}

/// Saturation throughput of `lb` against `raw` as a paired measurement:
/// `pairs` pairs of back-to-back closed-loop slices, in the order
/// raw-lb, lb-raw, raw-lb, ... (so neither side always goes first), each
/// pair's ratio taken on its own. The rounds above run each contender for
/// seconds at a time, and this VM's speed drifts by more than the 5% being
/// judged between them (the same path measured 58k and 68k req/s in
/// consecutive rounds); slices a second apart see nearly the same machine,
/// and the median of the per-pair ratios ignores the pairs a drift split.
async fn paired_closed(
    raw: &Contender,
    lb: &Contender,
    callers: usize,
    pairs: usize,
    slice: Duration,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> anyhow::Result<()> {
    anyhow::ensure!(pairs > 0, "--pairs must be at least 1");
    println!(
        "\n## closed loop, paired: {pairs} pairs of {:.1} s slices, {callers} callers",
        slice.as_secs_f64()
    );
    let (mut raw_rps, mut lb_rps, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for pair in 0..pairs {
        let order = if pair % 2 == 0 { [raw, lb] } else { [lb, raw] };
        let mut got = [0.0; 2];
        for c in order {
            let rps = c.closed(callers, slice).await.throughput();
            got[usize::from(c.id != raw.id)] = rps;
        }
        println!(
            "pair {pair:>2}  raw {:>8.0}  lb-client {:>8.0} req/s  ratio {:.3}",
            got[0],
            got[1],
            got[1] / got[0]
        );
        raw_rps.push(got[0]);
        lb_rps.push(got[1]);
        ratios.push(got[1] / got[0]);
    }
    let case = format!(
        "closed loop, {callers} callers, paired {:.1} s slices: lb-client P2C over 10 vs raw tonic Channel to 1",
        slice.as_secs_f64()
    );
    rows.push(row(
        &case,
        "max throughput",
        "req/s",
        Better::Higher,
        lb_rps,
        raw_rps,
    ));
    rows.push(with_target(
        row(
            &case,
            "throughput ratio per pair (lb-client / raw)",
            "x",
            Better::Higher,
            ratios.clone(),
            Vec::new(),
        ),
        Target::AtLeast(0.95),
    ));
    let mut sorted = ratios;
    sorted.sort_by(f64::total_cmp);
    let q = |p: f64| quantile(&sorted, p).unwrap_or(f64::NAN);
    notes.push(format!(
        "Paired closed loop ({pairs} pairs of {:.1} s slices, alternating which goes first): lb-client over 10 backends / raw Channel to 1, per pair: median {:.3}, quartiles {:.3} to {:.3}, range {:.3} to {:.3}.",
        slice.as_secs_f64(),
        // The row's median (the mean of the middle two for an even count),
        // so note and row agree.
        median(&sorted).unwrap_or(f64::NAN),
        q(0.25),
        q(0.75),
        q(0.0),
        q(1.0),
    ));
    Ok(())
}

/// The open loop at `rate` with every other request through `raw` and the
/// rest through `lb`, `rounds` times: the latency lb-client adds, with both
/// paths seeing the same machine at the same moments.
async fn interleaved(
    rate: f64,
    d: Duration,
    rounds: usize,
    raw: &Contender,
    lb: &Contender,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let mut by_path: [Vec<LoadResult>; 2] = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        // Alternate which path takes the even slots.
        let (first, second) = if round % 2 == 0 { (raw, lb) } else { (lb, raw) };
        let mut results =
            load::open_loop_interleaved(vec![first.caller(), second.caller()], rate, d).await?;
        if round % 2 == 1 {
            results.reverse();
        }
        for (path, r) in results.into_iter().enumerate() {
            println!(
                "round {round} interleaved {:<32} {:>9.0} req/s  p50 {:>6.0}  p99 {:>6.0}  p99.9 {:>6.0} us  errors {}",
                [&raw.label, &lb.label][path],
                r.throughput(),
                r.latency(0.5),
                r.latency(0.99),
                r.latency(0.999),
                r.errors
            );
            by_path[path].push(r);
        }
    }
    let q =
        |path: usize, q: f64| -> Vec<f64> { by_path[path].iter().map(|r| r.latency(q)).collect() };
    let case = format!(
        "open loop at {rate:.0} req/s, interleaved (every other request through each): lb-client P2C over 10 vs raw tonic Channel to 1"
    );
    for (quantile, name) in [
        (0.5, "p50 latency"),
        (0.99, "p99 latency"),
        (0.999, "p99.9 latency"),
    ] {
        rows.push(row(
            &case,
            name,
            "us",
            Better::Lower,
            q(1, quantile),
            q(0, quantile),
        ));
    }
    let added: Vec<f64> = q(1, 0.99)
        .iter()
        .zip(q(0, 0.99))
        .map(|(a, b)| a - b)
        .collect();
    rows.push(with_target(
        row(
            &case,
            "added p99 latency (lb-client minus raw, same run)",
            "us",
            Better::Lower,
            added,
            Vec::new(),
        ),
        Target::AtMost(50.0),
    ));
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn distribution(
    args: &Args,
    slow: &[std::net::SocketAddr],
    offset: usize,
    bpid: u32,
    rounds: usize,
    d: Duration,
    rows: &mut Vec<Row>,
    charts: &mut Vec<Chart>,
    notes: &mut Vec<String>,
) -> anyhow::Result<()> {
    println!(
        "\n## distribution: 10 backends at 1..10 ms, {} callers",
        args.dist_callers
    );
    let key = "hetero.bench:8080";
    let mut policies = Vec::new();
    for policy in [Policy::P2c, Policy::RoundRobin] {
        let client = lb_client(policy)?;
        client.set_endpoints(key, slow.iter().map(|a| Endpoint::new(*a)).collect())?;
        let channel = client.channel(key)?;
        // Warm: connections up, peak-EWMA and counters settled.
        let _ = load::closed_loop(
            EchoClient::new(channel.clone()),
            args.dist_callers,
            Duration::from_millis(500),
        )
        .await;
        policies.push((policy, client, channel));
    }
    let mut exact: BTreeMap<&str, Vec<Vec<f64>>> = BTreeMap::new();
    let mut sampled: BTreeMap<&str, Vec<Vec<f64>>> = BTreeMap::new();
    let mut runs: BTreeMap<&str, Vec<Run>> = BTreeMap::new();
    for round in 0..rounds {
        let mut order: Vec<usize> = (0..policies.len()).collect();
        order.rotate_left(round % policies.len());
        for i in order {
            let (policy, client, channel) = &policies[i];
            let name = policy.as_str();
            let sampler = sample_in_flight(client.clone(), key, slow.to_vec());
            let run = measured(bpid, async {
                Ok(load::closed_loop(EchoClient::new(channel.clone()), args.dist_callers, d).await)
            })
            .await?;
            let seen = sampler.stop().await?;
            // These backends answer with their index in the child, after the 10 fast ones.
            let mut per_backend = run.load.mean_in_flight();
            per_backend.resize(offset + slow.len(), 0.0);
            let per_backend = per_backend.split_off(offset);
            println!(
                "round {round} {}  in flight max/mean {:.3} (sampled {:.3})  per backend {:?}",
                run.line(&format!("lb-client {name}, 1..10 ms")),
                max_over_mean(&per_backend),
                max_over_mean(&seen),
                per_backend
                    .iter()
                    .map(|x| (x * 10.0).round() / 10.0)
                    .collect::<Vec<_>>()
            );
            exact.entry(name).or_default().push(per_backend);
            sampled.entry(name).or_default().push(seen);
            runs.entry(name).or_default().push(run);
        }
    }
    let (p, r) = (Policy::P2c.as_str(), Policy::RoundRobin.as_str());
    let mom = |m: &BTreeMap<&str, Vec<Vec<f64>>>, k: &str| -> Vec<f64> {
        m.get(k)
            .map(|v| v.iter().map(|x| max_over_mean(x)).collect())
            .unwrap_or_default()
    };
    let case = format!(
        "10 backends at 1..10 ms, {} callers: P2C vs round robin",
        args.dist_callers
    );
    rows.push(with_target(
        row(
            &case,
            "in-flight max/mean (time-averaged from client-side latencies)",
            "ratio",
            Better::Lower,
            mom(&exact, p),
            mom(&exact, r),
        ),
        Target::AtMost(1.10),
    ));
    rows.push(row(
        &case,
        "in-flight max/mean (lb-client's counters sampled every 2 ms)",
        "ratio",
        Better::Lower,
        mom(&sampled, p),
        mom(&sampled, r),
    ));
    let get = |k: &str, f: &dyn Fn(&Run) -> f64| -> Vec<f64> {
        runs.get(k)
            .map(|v| v.iter().map(f).collect())
            .unwrap_or_default()
    };
    rows.push(row(
        &case,
        "throughput",
        "req/s",
        Better::Higher,
        get(p, &|x| x.load.throughput()),
        get(r, &|x| x.load.throughput()),
    ));
    rows.push(row(
        &case,
        "p99 latency",
        "us",
        Better::Lower,
        get(p, &|x| x.load.latency(0.99)),
        get(r, &|x| x.load.latency(0.99)),
    ));
    let bars = |k: &str| -> Vec<(f64, f64)> {
        (0..slow.len())
            .map(|i| {
                let vals: Vec<f64> = exact
                    .get(k)
                    .map(|v| v.iter().map(|x| x[i]).collect())
                    .unwrap_or_default();
                ((i + 1) as f64, median(&vals).unwrap_or(f64::NAN))
            })
            .collect()
    };
    charts.push(Chart {
        id: "in-flight".into(),
        title: format!("Time-averaged requests in flight per backend (x: its latency in ms), {} callers, median of rounds", args.dist_callers),
        kind: ChartKind::Bars,
        x_label: "backend latency (ms)".into(),
        y_label: "requests in flight".into(),
        series: vec![
            Series { name: "lb-client P2C".into(), points: bars(p) },
            Series { name: "lb-client round robin".into(), points: bars(r) },
        ],
    });
    // The same fleet and callers with no CPU, network or clock in the way:
    // what P2C itself does here, one seed per round.
    let delays: Vec<u64> = (1..=slow.len() as u64).map(|ms| ms * 1000).collect();
    let modelled = |policy, callers, seed| {
        max_over_mean(&model::mean_in_flight(
            &delays, callers, policy, 20_000_000, seed,
        ))
    };
    let seeds: Vec<u64> = (1..=rounds as u64).collect();
    let model_rows = |policy, callers| -> Vec<f64> {
        seeds
            .iter()
            .map(|&s| modelled(policy, callers, s))
            .collect()
    };
    rows.push(row(
        &format!(
            "model of the same fleet, {} callers, pure delays, no CPU: lb-core P2C vs round robin",
            args.dist_callers
        ),
        "in-flight max/mean (time-averaged)",
        "ratio",
        Better::Lower,
        model_rows(model::ModelPolicy::P2c, args.dist_callers),
        model_rows(model::ModelPolicy::RoundRobin, args.dist_callers),
    ));
    let med = |v: Vec<f64>| median(&v).unwrap_or(f64::NAN);
    notes.push(format!(
        "Model (bench/src/overhead/model.rs: closed loop, backends that are pure 1..10 ms delays, lb-core's own P2C picker, 20 s of model time): P2C in-flight max/mean {:.3} at 16 callers, {:.3} at 32, {:.3} at 64, {:.3} at 128, {:.3} at 256. lb-core's P2C scans every endpoint of a set of at most {} (least in flight, ties at random) and samples two above that, so on these 10 it should match the model's own least-in-flight over all, {:.3} at {} callers; pure two random choices, its rule above {} endpoints, gives {:.3} here, because a slow endpoint it did not sample keeps a higher count for longer.",
        med(model_rows(model::ModelPolicy::P2c, 16)),
        med(model_rows(model::ModelPolicy::P2c, 32)),
        med(model_rows(model::ModelPolicy::P2c, 64)),
        med(model_rows(model::ModelPolicy::P2c, 128)),
        med(model_rows(model::ModelPolicy::P2c, 256)),
        lb_core::pick::SCAN_ALL_UP_TO,
        med(model_rows(model::ModelPolicy::LeastOfAll, args.dist_callers)),
        args.dist_callers,
        lb_core::pick::SCAN_ALL_UP_TO,
        med(model_rows(model::ModelPolicy::TwoChoices, args.dist_callers)),
    ));
    notes.push("In flight per backend is measured from the client: each request's client-side latency summed per backend (the reply names it) over the run's duration, which is the exact time average (Little's law), including time queued in the client. The sampled row reads lb-client's own per-endpoint counters every 2 ms as a cross-check.".into());
    Ok(())
}

/// Samples lb-client's per-endpoint in-flight counters every 2 ms.
#[derive(Debug)]
struct Sampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<Vec<f64>>,
}

impl Sampler {
    async fn stop(self) -> anyhow::Result<Vec<f64>> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(self.task.await?)
    }
}

fn sample_in_flight(
    client: LbClient,
    key: &'static str,
    addrs: Vec<std::net::SocketAddr>,
) -> Sampler {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let task = tokio::spawn(async move {
        let mut sums = vec![0.0; addrs.len()];
        let mut samples = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(2));
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            tick.tick().await;
            let debug = client.debug();
            let Some(service) = debug.services.iter().find(|s| s.service == key) else {
                continue;
            };
            for e in &service.endpoints {
                if let Some(i) = addrs.iter().position(|a| *a == e.address) {
                    sums[i] += f64::from(e.in_flight);
                }
            }
            samples += 1;
        }
        sums.into_iter()
            .map(|s| s / samples.max(1) as f64)
            .collect()
    });
    Sampler { stop, task }
}

fn percentile_chart(
    id: &str,
    title: &str,
    runs: &BTreeMap<String, Vec<Run>>,
    series: &[(&str, &str)],
) -> Chart {
    Chart {
        id: id.into(),
        title: title.into(),
        kind: ChartKind::Lines,
        x_label: "percentile".into(),
        y_label: "latency (us)".into(),
        series: series
            .iter()
            .filter_map(|(key, name)| {
                let v = runs.get(*key)?;
                Some(Series {
                    name: (*name).into(),
                    points: QUANTILES
                        .iter()
                        .map(|&q| {
                            let per_round: Vec<f64> = v.iter().map(|r| r.load.latency(q)).collect();
                            (q * 100.0, median(&per_round).unwrap_or(f64::NAN))
                        })
                        .collect(),
                })
            })
            .collect(),
    }
}

fn print_summary(rows: &[Row]) {
    println!("\n## summary (medians over rounds)");
    println!(
        "{:<96} {:<58} {:>10} {:>10} {:>7}  target",
        "case", "metric", "ours", "peer", "ratio"
    );
    for r in rows {
        let ours = median(&r.ours).unwrap_or(f64::NAN);
        let peer = median(&r.peer);
        let ratio = peer.map_or(f64::NAN, |p| ours / p);
        let target = match &r.target {
            None => String::new(),
            Some(t) => {
                let (text, met) = match *t {
                    Target::AtMost(x) => (format!("<= {x}"), ours <= x),
                    Target::AtLeast(x) => (format!(">= {x}"), ours >= x),
                    Target::RatioAtMost(x) => (format!("ratio <= {x}"), ratio <= x),
                    Target::RatioAtLeast(x) => (format!("ratio >= {x}"), ratio >= x),
                };
                format!("{text} {}", if met { "met" } else { "NOT MET" })
            }
        };
        // Ratios (unit "x") need their decimals.
        let digits = if r.unit == "x" { 3 } else { 1 };
        println!(
            "{:<96} {:<58} {:>10.digits$} {:>10} {:>7}  {target}",
            r.case,
            format!("{} ({})", r.metric, r.unit),
            ours,
            peer.map_or_else(String::new, |p| format!("{p:.1}")),
            if ratio.is_nan() {
                String::new()
            } else {
                format!("{ratio:.3}")
            }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_over_mean_is_one_when_even_and_nan_when_idle() {
        assert_eq!(max_over_mean(&[2.0, 2.0, 2.0]), 1.0);
        assert_eq!(max_over_mean(&[1.0, 3.0]), 1.5);
        assert!(max_over_mean(&[0.0, 0.0]).is_nan());
        assert!(max_over_mean(&[]).is_nan());
    }
}

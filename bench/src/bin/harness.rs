//! Benchmark 3, `harness`: the shape of tower's own balance harness, run
//! against lb-client and `tower::balance::p2c` with `PeakEwma` in the same
//! process, alternately, over several rounds: 10 endpoints whose
//! per-request latency is uniform in [0, max], with the maxima spread from
//! 1 ms to 1 s; a fixed number of requests at a fixed concurrency; latency
//! percentiles, the share sent to the 1 s endpoint, wall and CPU time.
//!
//! ```sh
//! cargo run --release -p eds-bench --bin harness -- --json target/bench/harness.json [--quick]
//! ```
//!
//! Both contenders send real gRPC over loopback (127.0.0.1) to the same
//! in-process echo servers, so transport costs are equal and only the
//! balancing differs. CPU time is the whole process's (servers included)
//! during a contender's run, so it compares like with like but is not the
//! balancer's cost alone (benchmark 1, `picker`, has that). A benchmark: it
//! prints and writes JSON, it asserts nothing about timings.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use eds_bench::machine::{Machine, ProcUsage};
use eds_bench::report::{
    BenchResult, Better, Chart, ChartKind, Row, Series, Target, median, quantile,
};
use lb_client::{LbClient, LbConfig, ServiceOptions};
use lb_core::{Endpoint, Policy, Rng, SmallRng};
use proto::echo::echo_client::EchoClient;
use proto::echo::echo_server::{Echo, EchoServer};
use proto::echo::{EchoReply, EchoRequest};
use tonic::{Request, Response, Status};

/// Maximum latency per endpoint, as in tower's balance example.
const MAX_LATENCY_MS: [u64; 10] = [1, 5, 10, 10, 10, 100, 100, 100, 100, 1000];

/// Percentiles reported and drawn.
const PERCENTILES: [(f64, &str); 3] = [(0.5, "p50"), (0.99, "p99"), (0.999, "p999")];

#[derive(Debug, Parser)]
struct Args {
    /// Write the result as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// A short run: fewer requests and rounds.
    #[arg(long)]
    quick: bool,
    /// Rounds (each runs both contenders) [default: 5, quick 2].
    #[arg(long, env = "EDS_BENCH_ROUNDS")]
    rounds: Option<usize>,
    /// Requests per contender per round [default: 100,000, quick 20,000].
    #[arg(long)]
    requests: Option<usize>,
    /// Concurrent request loops.
    #[arg(long, default_value_t = 500)]
    concurrency: usize,
}

#[derive(Debug)]
struct Backend {
    index: usize,
    max: Duration,
    rng: Mutex<SmallRng>,
}

#[tonic::async_trait]
impl Echo for Backend {
    async fn echo(&self, _r: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let u = self.rng.lock().map(|mut r| r.unit()).unwrap_or(0.5);
        tokio::time::sleep(self.max.mul_f64(u)).await;
        Ok(Response::new(EchoReply {
            pod: self.index.to_string(),
            ..Default::default()
        }))
    }
}

async fn start(index: usize, max: Duration) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let backend = Backend {
        index,
        max,
        rng: Mutex::new(SmallRng::seed_from_u64(index as u64 + 1)),
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(EchoServer::new(backend))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    Ok(addr)
}

/// One contender's round.
#[derive(Debug)]
struct Outcome {
    /// Sorted latencies of successful requests, in milliseconds.
    latencies_ms: Vec<f64>,
    by_endpoint: [u64; 10],
    errors: u64,
    wall: Duration,
    cpu_seconds: f64,
}

impl Outcome {
    fn share_to_slowest(&self) -> f64 {
        let total: u64 = self.by_endpoint.iter().sum();
        self.by_endpoint[9] as f64 * 100.0 / total.max(1) as f64
    }

    fn percentile(&self, q: f64) -> f64 {
        quantile(&self.latencies_ms, q).unwrap_or(f64::NAN)
    }
}

async fn run<S>(client: EchoClient<S>, requests: usize, concurrency: usize) -> Outcome
where
    S: tonic::client::GrpcService<tonic::body::Body> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<tonic::codegen::StdError>,
    S::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <S::ResponseBody as http_body::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let by = Arc::new(Mutex::new([0u64; 10]));
    let cpu_before = ProcUsage::of(std::process::id()).map_or(f64::NAN, |u| u.cpu_seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (mut c, next, errors, by) =
                (client.clone(), next.clone(), errors.clone(), by.clone());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                // Bounded: the shared counter hands out exactly `requests` slots.
                while next.fetch_add(1, Ordering::Relaxed) < requests {
                    let t = Instant::now();
                    match c.echo(EchoRequest::default()).await {
                        Ok(r) => {
                            lat.push(t.elapsed().as_secs_f64() * 1000.0);
                            if let Ok(i) = r.into_inner().pod.parse::<usize>()
                                && let Ok(mut by) = by.lock()
                                && i < 10
                            {
                                by[i] += 1;
                            }
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                lat
            })
        })
        .collect();
    let mut latencies_ms = Vec::with_capacity(requests);
    for t in tasks {
        latencies_ms.extend(t.await.unwrap_or_default());
    }
    let wall = started.elapsed();
    let cpu_after = ProcUsage::of(std::process::id()).map_or(f64::NAN, |u| u.cpu_seconds);
    latencies_ms.sort_unstable_by(f64::total_cmp);
    let by_endpoint = *by.lock().unwrap_or_else(|e| e.into_inner());
    Outcome {
        latencies_ms,
        by_endpoint,
        errors: errors.load(Ordering::Relaxed),
        wall,
        cpu_seconds: cpu_after - cpu_before,
    }
}

fn print(name: &str, o: &Outcome) {
    println!(
        "{name:<30} p50 {:>7.1} ms  p99 {:>7.1} ms  p999 {:>7.1} ms  to the 1 s endpoint {:>5.2}%  errors {}  wall {:.1} s  cpu {:.1} s",
        o.percentile(0.5),
        o.percentile(0.99),
        o.percentile(0.999),
        o.share_to_slowest(),
        o.errors,
        o.wall.as_secs_f64(),
        o.cpu_seconds,
    );
    println!("{:<30} per endpoint {:?}", "", o.by_endpoint);
}

fn row(
    case: &str,
    metric: &str,
    unit: &str,
    ours: &[Outcome],
    peer: &[Outcome],
    f: impl Fn(&Outcome) -> f64,
) -> Row {
    Row {
        case: case.to_owned(),
        metric: metric.to_owned(),
        unit: unit.to_owned(),
        better: Better::Lower,
        ours: ours.iter().map(&f).collect(),
        peer: peer.iter().map(&f).collect(),
        target: None,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let machine = Machine::probe(false);
    let rounds = args.rounds.unwrap_or(if args.quick { 2 } else { 5 }).max(1);
    let requests = args
        .requests
        .unwrap_or(if args.quick { 20_000 } else { 100_000 });
    let concurrency = args.concurrency.max(1);
    let mut addrs = Vec::new();
    for (i, ms) in MAX_LATENCY_MS.iter().enumerate() {
        addrs.push(start(i, Duration::from_millis(*ms)).await?);
    }
    println!(
        "# tower balance harness shape: 10 endpoints, max latency {MAX_LATENCY_MS:?} ms, \
         {requests} requests at concurrency {concurrency}, {rounds} rounds"
    );

    // lb-client: peak EWMA, the policy tower's harness exercises.
    let mut config = LbConfig::from_env();
    config.control_plane = None;
    config.dns_fallback.enabled = false;
    config.default_service = ServiceOptions {
        policy: Some(Policy::PeakEwma),
        slow_start: None,
        zone_affinity: false,
        ..ServiceOptions::default()
    };
    let lb = LbClient::connect(config)?;
    lb.set_endpoints(
        "harness.bench:8080",
        addrs.iter().map(|a| Endpoint::new(*a)).collect(),
    )?;
    let lb_channel = lb.channel("harness.bench:8080")?;

    // tower: p2c over PeakEwma-wrapped tonic channels, buffered to be
    // cloneable, with the defaults tower's own harness uses (30 ms initial
    // estimate, 10 s decay, complete on response).
    let mut services = Vec::new();
    for a in &addrs {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{a}"))?
            .tcp_nodelay(true)
            .connect()
            .await?;
        services.push(tower::load::PeakEwma::new(
            channel,
            Duration::from_millis(30),
            Duration::from_secs(10).as_nanos() as f64,
            tower::load::CompleteOnResponse::default(),
        ));
    }
    let balance = tower::balance::p2c::Balance::new(tower::discover::ServiceList::new(services));
    let tower_channel = tower::buffer::Buffer::new(balance, concurrency * 2);

    // Alternate, swapping who goes first each round, so neither always
    // runs on a warmer (or busier) machine.
    let mut ours = Vec::new();
    let mut peer = Vec::new();
    for round in 0..rounds {
        for turn in 0..2 {
            if (round + turn) % 2 == 0 {
                let o = run(EchoClient::new(lb_channel.clone()), requests, concurrency).await;
                print(&format!("round {round} lb-client peak-ewma"), &o);
                ours.push(o);
            } else {
                let o = run(
                    EchoClient::new(tower_channel.clone()),
                    requests,
                    concurrency,
                )
                .await;
                print(&format!("round {round} tower p2c PeakEwma"), &o);
                peer.push(o);
            }
        }
    }

    let case = format!("10 endpoints 1 ms..1 s, {requests} requests, concurrency {concurrency}");
    let mut rows: Vec<Row> = PERCENTILES
        .iter()
        .map(|&(q, name)| {
            row(&case, &format!("{name} latency"), "ms", &ours, &peer, |o| {
                o.percentile(q)
            })
        })
        .collect();
    let mut share = row(
        &case,
        "share sent to the 1 s endpoint",
        "%",
        &ours,
        &peer,
        |o| o.share_to_slowest(),
    );
    share.target = Some(Target::AtMost(2.0));
    rows.push(share);
    rows.push(row(&case, "wall time", "s", &ours, &peer, |o| {
        o.wall.as_secs_f64()
    }));
    rows.push(row(&case, "process CPU time", "s", &ours, &peer, |o| {
        o.cpu_seconds
    }));
    rows.push(row(&case, "failed requests", "count", &ours, &peer, |o| {
        o.errors as f64
    }));

    // Charts: medians over rounds.
    let percentile_points = |side: &[Outcome]| -> Vec<(f64, f64)> {
        [0.5, 0.9, 0.99, 0.999]
            .iter()
            .map(|&q| {
                let v: Vec<f64> = side.iter().map(|o| o.percentile(q)).collect();
                (q * 100.0, median(&v).unwrap_or(f64::NAN))
            })
            .collect()
    };
    let endpoint_points = |side: &[Outcome]| -> Vec<(f64, f64)> {
        (0..10)
            .map(|i| {
                let v: Vec<f64> = side
                    .iter()
                    .map(|o| {
                        o.by_endpoint[i] as f64 * 100.0
                            / o.by_endpoint.iter().sum::<u64>().max(1) as f64
                    })
                    .collect();
                (
                    MAX_LATENCY_MS[i] as f64 + i as f64 * 1e-3,
                    median(&v).unwrap_or(0.0),
                )
            })
            .collect()
    };
    let charts = vec![
        Chart {
            id: "latency".into(),
            title: "Latency percentiles (median over rounds)".into(),
            kind: ChartKind::Lines,
            x_label: "percentile".into(),
            y_label: "latency (ms)".into(),
            series: vec![
                Series {
                    name: "lb-client peak EWMA".into(),
                    points: percentile_points(&ours),
                },
                Series {
                    name: "tower p2c PeakEwma".into(),
                    points: percentile_points(&peer),
                },
            ],
        },
        Chart {
            id: "per-endpoint".into(),
            title:
                "Share of requests per endpoint, by the endpoint's max latency (median over rounds)"
                    .into(),
            kind: ChartKind::Bars,
            x_label: "endpoint's max latency (ms)".into(),
            y_label: "share of requests (%)".into(),
            series: vec![
                Series {
                    name: "lb-client peak EWMA".into(),
                    points: endpoint_points(&ours),
                },
                Series {
                    name: "tower p2c PeakEwma".into(),
                    points: endpoint_points(&peer),
                },
            ],
        },
    ];

    let result = BenchResult {
        name: "harness".into(),
        title: "tower's balance harness shape: lb-client against tower p2c".into(),
        command: eds_bench::command::command("harness", args.quick, args.rounds),
        ours: format!(
            "lb-client {} (policy PeakEwma, no slow start, no zone affinity), one HTTP/2 connection per endpoint",
            env!("CARGO_PKG_VERSION")
        ),
        peer: "tower 0.5 balance::p2c::Balance over load::PeakEwma(tonic Channel, 30 ms initial, 10 s decay, CompleteOnResponse) behind a Buffer, as tower's balance example configures it".into(),
        machine,
        rows,
        charts,
        notes: vec![
            "Both contenders call the same in-process echo servers over 127.0.0.1; a server sleeps uniform [0, max] per request, max from 1 ms to 1 s.".into(),
            "CPU time is the whole benchmark process's during a contender's run (client, the shared servers, the runtime).".into(),
            "Rounds alternate the order (ours first in even rounds, tower first in odd ones).".into(),
            "The per-endpoint chart labels each bar with the endpoint's max latency; endpoints with equal maxima are separate bars.".into(),
        ],
    };
    if let Some(path) = &args.json {
        result.write(path)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

//! Measures lb-client against its peers on loopback, in one run:
//!
//! 1. **Overhead**: closed-loop echo throughput and latency through an
//!    `LbChannel` over 10 local backends against a raw tonic `Channel` to one
//!    backend, alternating rounds so both see the same machine state.
//! 2. **Distribution**: 10 backends whose latency ranges from 1 to 10 ms;
//!    the time-averaged in-flight requests per backend under P2C against
//!    round robin (max/mean; 1.0 is perfectly even).
//!
//! ```sh
//! cargo run --release -p lb-client --example overhead -- --seconds 5 --concurrency 64
//! ```
//!
//! A benchmark, not a test: it asserts nothing and prints figures. Every
//! server runs in this process on 127.0.0.1; loops are bounded by time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use lb_client::{LbClient, LbConfig, ServiceOptions};
use lb_core::{Endpoint, Policy};
use proto::echo::echo_client::EchoClient;
use proto::echo::echo_server::{Echo, EchoServer};
use proto::echo::{EchoReply, EchoRequest};
use tonic::{Request, Response, Status};

#[derive(Debug, Parser)]
struct Args {
    /// Seconds per measured round.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Concurrent request loops.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Rounds per contender (alternated).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
}

#[derive(Debug)]
struct Backend {
    latency: Duration,
    in_flight: Arc<AtomicU32>,
}

#[tonic::async_trait]
impl Echo for Backend {
    async fn echo(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let n = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        Ok(Response::new(EchoReply {
            message: request.into_inner().message,
            pod: String::new(),
            zone: String::new(),
            in_flight: n,
        }))
    }
}

async fn start_backend(latency: Duration) -> anyhow::Result<(SocketAddr, Arc<AtomicU32>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let in_flight = Arc::new(AtomicU32::new(0));
    let backend = Backend {
        latency,
        in_flight: in_flight.clone(),
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(EchoServer::new(backend))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    Ok((addr, in_flight))
}

/// Closed-loop load: (requests per second, sorted latencies in µs, errors).
async fn closed_loop<S>(
    client: EchoClient<S>,
    concurrency: usize,
    duration: Duration,
) -> (f64, Vec<u64>, u64)
where
    S: tonic::client::GrpcService<tonic::body::Body> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<tonic::codegen::StdError>,
    S::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <S::ResponseBody as http_body::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (mut c, stop, errors) = (client.clone(), stop.clone(), errors.clone());
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(1 << 16);
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    match c
                        .echo(EchoRequest {
                            message: "x".into(),
                            work_us: 0,
                        })
                        .await
                    {
                        Ok(_) => lat.push(t.elapsed().as_micros() as u64),
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                lat
            })
        })
        .collect();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    (
        all.len() as f64 / elapsed,
        all,
        errors.load(Ordering::Relaxed),
    )
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn lb(policy: Policy) -> LbClient {
    let mut config = LbConfig::from_env();
    config.control_plane = None;
    config.dns_fallback.enabled = false;
    config.default_service = ServiceOptions {
        policy,
        slow_start: None,
        zone_affinity: false,
        ..ServiceOptions::default()
    };
    // Only built from constants above; a failure here is a bug worth a panic in a benchmark.
    LbClient::connect(config).expect("valid benchmark configuration")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let duration = Duration::from_secs(args.seconds);
    let key = "echo.bench:8080";

    println!(
        "# 1. overhead: {} loops, {} s rounds, {} rounds each",
        args.concurrency, args.seconds, args.rounds
    );
    let mut backends = Vec::new();
    for _ in 0..10 {
        backends.push(start_backend(Duration::ZERO).await?);
    }
    let raw = tonic::transport::Endpoint::from_shared(format!("http://{}", backends[0].0))?
        .tcp_nodelay(true)
        .connect()
        .await?;
    let client = lb(Policy::P2c);
    client.set_endpoints(
        key,
        backends.iter().map(|(a, _)| Endpoint::new(*a)).collect(),
    )?;
    let channel = client.channel(key)?;
    let single = lb(Policy::P2c);
    single.set_endpoints("one.bench:8080", vec![Endpoint::new(backends[0].0)])?;
    let single = single.channel("one.bench:8080")?;
    // Warm both paths (connections, allocator) before measuring.
    closed_loop(
        EchoClient::new(raw.clone()),
        args.concurrency,
        Duration::from_secs(1),
    )
    .await;
    closed_loop(
        EchoClient::new(channel.clone()),
        args.concurrency,
        Duration::from_secs(1),
    )
    .await;
    let (mut raw_rps, mut lb_rps, mut raw_lat, mut lb_lat) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut one_rps = Vec::new();
    for round in 0..args.rounds {
        let (rps, lat, err) =
            closed_loop(EchoClient::new(raw.clone()), args.concurrency, duration).await;
        println!(
            "round {round} raw tonic Channel (1 backend): {rps:>9.0} rps  p50 {:>5} us  p99 {:>5} us  errors {err}",
            pct(&lat, 0.5),
            pct(&lat, 0.99)
        );
        raw_rps.push(rps);
        raw_lat.push((pct(&lat, 0.5), pct(&lat, 0.99)));
        let (rps, lat, err) =
            closed_loop(EchoClient::new(channel.clone()), args.concurrency, duration).await;
        println!(
            "round {round} lb-client P2C (10 backends): {rps:>9.0} rps  p50 {:>5} us  p99 {:>5} us  errors {err}",
            pct(&lat, 0.5),
            pct(&lat, 0.99)
        );
        lb_rps.push(rps);
        lb_lat.push((pct(&lat, 0.5), pct(&lat, 0.99)));
        let (rps, lat, err) =
            closed_loop(EchoClient::new(single.clone()), args.concurrency, duration).await;
        println!(
            "round {round} lb-client P2C (1 backend):   {rps:>9.0} rps  p50 {:>5} us  p99 {:>5} us  errors {err}",
            pct(&lat, 0.5),
            pct(&lat, 0.99)
        );
        one_rps.push(rps);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let mean_p = |v: &[(u64, u64)], f: fn(&(u64, u64)) -> u64| {
        v.iter().map(f).sum::<u64>() as f64 / v.len().max(1) as f64
    };
    println!(
        "overhead: lb-client over 1 backend / raw tonic over the same backend: throughput {:.3}",
        mean(&one_rps) / mean(&raw_rps)
    );
    println!(
        "overhead: lb-client over 10 backends / raw tonic over 1: throughput {:.3}; p50 {:+.0} us; p99 {:+.0} us (means over rounds)",
        mean(&lb_rps) / mean(&raw_rps),
        mean_p(&lb_lat, |x| x.0) - mean_p(&raw_lat, |x| x.0),
        mean_p(&lb_lat, |x| x.1) - mean_p(&raw_lat, |x| x.1),
    );

    println!(
        "\n# 2. distribution: 10 backends at 1..10 ms, {} loops, {} s per policy",
        args.concurrency, args.seconds
    );
    let mut slow = Vec::new();
    for i in 1..=10u64 {
        slow.push(start_backend(Duration::from_millis(i)).await?);
    }
    for policy in [
        Policy::P2c,
        Policy::RoundRobin,
        Policy::P2c,
        Policy::RoundRobin,
    ] {
        let client = lb(policy);
        let key = format!("hetero-{}.bench:8080", policy.as_str());
        client.set_endpoints(&key, slow.iter().map(|(a, _)| Endpoint::new(*a)).collect())?;
        let channel = client.channel(&key)?;
        let sampling = Arc::new(AtomicBool::new(true));
        let counters: Vec<Arc<AtomicU32>> = slow.iter().map(|(_, c)| c.clone()).collect();
        let sampler = {
            let sampling = sampling.clone();
            tokio::spawn(async move {
                let mut sums = vec![0u64; counters.len()];
                let mut samples = 0u64;
                while sampling.load(Ordering::Relaxed) {
                    for (s, c) in sums.iter_mut().zip(&counters) {
                        *s += u64::from(c.load(Ordering::Relaxed));
                    }
                    samples += 1;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                sums.into_iter()
                    .map(|s| s as f64 / samples.max(1) as f64)
                    .collect::<Vec<f64>>()
            })
        };
        let (rps, lat, err) =
            closed_loop(EchoClient::new(channel), args.concurrency, duration).await;
        sampling.store(false, Ordering::Relaxed);
        let avg = sampler.await?;
        let m = avg.iter().sum::<f64>() / avg.len() as f64;
        let max = avg.iter().copied().fold(0.0, f64::max);
        println!(
            "{:<12} in-flight max/mean {:.2}  per backend (1..10 ms) {:?}  {rps:.0} rps  p99 {} us  errors {err}",
            policy.as_str(),
            max / m.max(f64::MIN_POSITIVE),
            avg.iter()
                .map(|a| (a * 10.0).round() / 10.0)
                .collect::<Vec<_>>(),
            pct(&lat, 0.99)
        );
    }
    Ok(())
}

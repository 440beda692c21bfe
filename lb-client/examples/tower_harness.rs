//! The shape of tower's own balance harness, run against lb-client and
//! `tower::balance::p2c` with `PeakEwma` in the same process and run:
//! 10 endpoints whose per-request latency is uniform in [0, max], with the
//! maxima spread from 1 ms to 1 s; a fixed number of requests at a fixed
//! concurrency; latency percentiles and the share sent to the 1 s endpoint.
//!
//! ```sh
//! cargo run --release -p lb-client --example tower_harness -- --requests 100000 --concurrency 500
//! ```
//!
//! Both contenders send real gRPC over loopback to the same in-process echo
//! servers, so transport costs are equal and only the balancing differs.
//! A benchmark: it prints, it asserts nothing.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use lb_client::{LbClient, LbConfig, ServiceOptions};
use lb_core::{Endpoint, Policy, Rng, SmallRng};
use proto::echo::echo_client::EchoClient;
use proto::echo::echo_server::{Echo, EchoServer};
use proto::echo::{EchoReply, EchoRequest};
use tonic::{Request, Response, Status};

/// Maximum latency per endpoint, as in tower's balance example.
const MAX_LATENCY_MS: [u64; 10] = [1, 5, 10, 10, 10, 100, 100, 100, 100, 1000];

#[derive(Debug, Parser)]
struct Args {
    /// Requests per contender.
    #[arg(long, default_value_t = 100_000)]
    requests: usize,
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

struct Outcome {
    latencies_us: Vec<u64>,
    by_endpoint: [u64; 10],
    errors: u64,
    wall: Duration,
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
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (mut c, next, errors, by) =
                (client.clone(), next.clone(), errors.clone(), by.clone());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                while next.fetch_add(1, Ordering::Relaxed) < requests {
                    let t = Instant::now();
                    match c.echo(EchoRequest::default()).await {
                        Ok(r) => {
                            lat.push(t.elapsed().as_micros() as u64);
                            if let Ok(i) = r.into_inner().pod.parse::<usize>()
                                && let Ok(mut by) = by.lock()
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
    let mut latencies_us = Vec::with_capacity(requests);
    for t in tasks {
        latencies_us.extend(t.await.unwrap_or_default());
    }
    latencies_us.sort_unstable();
    let by_endpoint = *by.lock().unwrap_or_else(|e| e.into_inner());
    Outcome {
        latencies_us,
        by_endpoint,
        errors: errors.load(Ordering::Relaxed),
        wall: started.elapsed(),
    }
}

fn report(name: &str, o: &Outcome) {
    let p = |q: f64| {
        o.latencies_us
            .get(((o.latencies_us.len().max(1) - 1) as f64 * q).round() as usize)
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    let total: u64 = o.by_endpoint.iter().sum();
    println!(
        "{name:<26} p50 {:>7.1} ms  p90 {:>7.1} ms  p99 {:>7.1} ms  p999 {:>7.1} ms  to the 1 s endpoint {:>5.2}%  errors {}  wall {:.1} s",
        p(0.5),
        p(0.9),
        p(0.99),
        p(0.999),
        o.by_endpoint[9] as f64 * 100.0 / total.max(1) as f64,
        o.errors,
        o.wall.as_secs_f64()
    );
    println!("{:<26} per endpoint {:?}", "", o.by_endpoint);
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut addrs = Vec::new();
    for (i, ms) in MAX_LATENCY_MS.iter().enumerate() {
        addrs.push(start(i, Duration::from_millis(*ms)).await?);
    }
    println!(
        "# tower balance harness shape: 10 endpoints, max latency {MAX_LATENCY_MS:?} ms, {} requests at concurrency {}",
        args.requests, args.concurrency
    );

    // lb-client: peak EWMA, the policy tower's harness exercises.
    let mut config = LbConfig::from_env();
    config.control_plane = None;
    config.dns_fallback.enabled = false;
    config.default_service = ServiceOptions {
        policy: Policy::PeakEwma,
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

    // tower: p2c over PeakEwma-wrapped tonic channels, buffered to be cloneable.
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
    let tower_channel = tower::buffer::Buffer::new(balance, args.concurrency.max(1) * 2);

    // Alternate, twice each, so neither always runs on a warmer machine.
    for round in 0..2 {
        let o = run(
            EchoClient::new(lb_channel.clone()),
            args.requests,
            args.concurrency,
        )
        .await;
        report(&format!("round {round} lb-client peak-ewma"), &o);
        let o = run(
            EchoClient::new(tower_channel.clone()),
            args.requests,
            args.concurrency,
        )
        .await;
        report(&format!("round {round} tower p2c PeakEwma"), &o);
    }
    Ok(())
}

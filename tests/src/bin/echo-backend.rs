//! The echo backend that test "pods" run: a real gRPC server answering with
//! its pod name and zone, so tests and the demo can count where traffic went.
//!
//! Behaviour knobs: fixed added latency, an error rate (answered with
//! UNAVAILABLE), and a slow start (latency several times higher right after
//! start, falling linearly to normal over the window), so balancer tests
//! have something real to react to. Not a load generator and not a benchmark
//! target of its own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use lb_core::rng::{Rng, SmallRng};
use proto::echo::echo_server::{Echo, EchoServer};
use proto::echo::{EchoReply, EchoRequest};
use tonic::{Request, Response, Status};

#[derive(Debug, Parser)]
#[command(about = "Echo gRPC backend for tests and the demo")]
struct Args {
    /// Address to listen on (a pod IP inside the pod network).
    #[arg(long)]
    listen: SocketAddr,
    /// Pod name reported in replies.
    #[arg(long)]
    pod: String,
    /// Zone reported in replies.
    #[arg(long, default_value = "")]
    zone: String,
    /// Added latency per request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Share of requests failed with UNAVAILABLE (0..=1).
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Seconds after start during which the backend is slower (x4 at start).
    #[arg(long, default_value_t = 0)]
    slow_start_secs: u64,
    /// While this file exists, every request fails with UNAVAILABLE: lets a
    /// test turn a healthy backend bad and back without restarting it.
    #[arg(long)]
    fail_file: Option<std::path::PathBuf>,
    /// Seed for the error draw.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Debug)]
struct Backend {
    args: Args,
    started: Instant,
    in_flight: AtomicU32,
    rng: Mutex<SmallRng>,
}

impl Backend {
    fn latency(&self, work_us: u64) -> Duration {
        let base = Duration::from_millis(self.args.latency_ms) + Duration::from_micros(work_us);
        if self.args.slow_start_secs == 0 {
            return base;
        }
        let window = self.args.slow_start_secs as f64;
        let age = self.started.elapsed().as_secs_f64();
        // 4x at start, 1x at the end of the window.
        let factor = 1.0 + 3.0 * (1.0 - (age / window).min(1.0));
        base.mul_f64(factor)
    }
}

/// The service handle tonic clones per connection.
#[derive(Debug, Clone)]
struct Shared(Arc<Backend>);

impl std::ops::Deref for Shared {
    type Target = Backend;
    fn deref(&self) -> &Backend {
        &self.0
    }
}

#[tonic::async_trait]
impl Echo for Shared {
    async fn echo(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let in_flight = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        let req = request.into_inner();
        tokio::time::sleep(self.latency(req.work_us)).await;
        let fail = {
            let mut rng = self
                .rng
                .lock()
                .map_err(|_| Status::internal("rng poisoned"))?;
            rng.unit() < self.args.error_rate
        } || self.args.fail_file.as_ref().is_some_and(|f| f.exists());
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        if fail {
            return Err(Status::unavailable(format!(
                "{} is failing on purpose",
                self.args.pod
            )));
        }
        Ok(Response::new(EchoReply {
            message: req.message,
            pod: self.args.pod.clone(),
            zone: self.args.zone.clone(),
            in_flight,
        }))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !(0.0..=1.0).contains(&args.error_rate) {
        bail!("--error-rate must be within 0..=1, got {}", args.error_rate);
    }
    let listen = args.listen;
    let backend = Arc::new(Backend {
        rng: Mutex::new(SmallRng::seed_from_u64(args.seed)),
        args,
        started: Instant::now(),
        in_flight: AtomicU32::new(0),
    });
    println!("echo backend {} listening on {listen}", backend.args.pod);
    tonic::transport::Server::builder()
        .add_service(EchoServer::new(Shared(backend)))
        // SIGTERM (what the test harness and the kubelet send) drains too:
        // in-flight requests finish, as a well-behaved gRPC server's do.
        .serve_with_shutdown(listen, async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        })
        .await
        .with_context(|| format!("serving on {listen}"))
}

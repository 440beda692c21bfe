//! The echo backend that test "pods" run: a real gRPC server answering with
//! its pod name and zone, so tests and the demo can count where traffic went.
//!
//! Behaviour knobs: fixed added latency, an error rate (answered with
//! UNAVAILABLE), and a slow start (latency several times higher right after
//! start, falling linearly to normal over the window), so balancer tests
//! have something real to react to. Not a load generator and not a benchmark
//! target of its own.
//!
//! It serves the standard gRPC health service (`grpc.health.v1`), so a
//! pod of it can have a real gRPC readiness probe.
//!
//! Misbehaviours for lb-client's drills: `--refuse <mode>` replaces the
//! gRPC server by a bare HTTP/2 one (the `h2` crate) that processes
//! nothing: `refused-stream` resets every stream with REFUSED_STREAM,
//! `goaway` sends GOAWAY (last stream id 0) on every new connection before
//! any stream, `never-answer` accepts every stream and never answers it,
//! printing each one the client resets. A tonic server cannot stand for a
//! backend that hangs: it answers a request's `grpc-timeout` itself.

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
    /// Process no request: refuse every stream (see the module docs).
    #[arg(long, value_enum)]
    refuse: Option<Refuse>,
}

/// How a refusing backend turns streams away.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Refuse {
    /// RST_STREAM(REFUSED_STREAM) on every stream.
    RefusedStream,
    /// GOAWAY(last stream id 0, NO_ERROR) on every connection, first thing.
    Goaway,
    /// Accept every stream, never answer; print each the client resets.
    NeverAnswer,
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
        // A guard, not a decrement at the end: a request the client cancels
        // (RST_STREAM) is dropped mid-sleep and must leave the count too, so
        // replies tell a test whether cancelled requests are still running.
        let guard = Counted::new(&self.in_flight);
        let in_flight = guard.at_start;
        let req = request.into_inner();
        tokio::time::sleep(self.latency(req.work_us)).await;
        let fail = {
            let mut rng = self
                .rng
                .lock()
                .map_err(|_| Status::internal("rng poisoned"))?;
            rng.unit() < self.args.error_rate
        } || self.args.fail_file.as_ref().is_some_and(|f| f.exists());
        drop(guard);
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

/// One request in the backend's in-flight count, for as long as it lives.
#[derive(Debug)]
struct Counted<'a> {
    count: &'a AtomicU32,
    /// The count with this request, when it started.
    at_start: u32,
}

impl<'a> Counted<'a> {
    fn new(count: &'a AtomicU32) -> Self {
        let at_start = count.fetch_add(1, Ordering::SeqCst) + 1;
        Self { count, at_start }
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serves bare HTTP/2 that refuses every stream, until killed (SIGTERM's
/// default action is fine: there is nothing to drain).
async fn refuse(listen: SocketAddr, mode: Refuse) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    println!("echo backend refusing streams ({mode:?}) on {listen}");
    loop {
        let (tcp, peer) = listener.accept().await.context("accepting")?;
        tokio::spawn(async move {
            let result = match mode {
                Refuse::RefusedStream => reset_every_stream(tcp).await,
                Refuse::Goaway => go_away_at_once(tcp).await,
                Refuse::NeverAnswer => never_answer(tcp).await,
            };
            if let Err(e) = result {
                println!("connection from {peer}: {e:#}");
            }
        });
    }
}

async fn reset_every_stream(tcp: tokio::net::TcpStream) -> anyhow::Result<()> {
    let mut conn = h2::server::handshake(tcp).await?;
    let mut refused = 0u64;
    while let Some(stream) = conn.accept().await {
        let (_request, mut respond) = stream?;
        respond.send_reset(h2::Reason::REFUSED_STREAM);
        refused += 1;
    }
    println!("connection closed after refusing {refused} streams");
    Ok(())
}

async fn never_answer(tcp: tokio::net::TcpStream) -> anyhow::Result<()> {
    let mut conn = h2::server::handshake(tcp).await?;
    while let Some(stream) = conn.accept().await {
        let (request, mut respond) = stream?;
        let accepted = Instant::now();
        tokio::spawn(async move {
            // Hold the stream open until the client gives up on it.
            let _request = request;
            match std::future::poll_fn(|cx| respond.poll_reset(cx)).await {
                Ok(reason) => println!(
                    "stream reset by the client ({reason:?}) after {} ms",
                    accepted.elapsed().as_millis()
                ),
                Err(e) => println!("stream ended without a reset: {e}"),
            }
        });
    }
    Ok(())
}

async fn go_away_at_once(tcp: tokio::net::TcpStream) -> anyhow::Result<()> {
    // A second handle on the socket outlives h2's: closing a socket with
    // unread bytes (the client's first request, which h2 ignores after the
    // GOAWAY) sends a TCP reset, which can overtake the GOAWAY. Reading
    // the socket to its end first closes it cleanly.
    let std = tcp.into_std()?;
    let spare = std.try_clone()?;
    let mut conn = h2::server::handshake(tokio::net::TcpStream::from_std(std)?).await?;
    // No stream processed yet: the GOAWAY's last stream id is 0, so every
    // stream the client opened is above it.
    conn.abrupt_shutdown(h2::Reason::NO_ERROR);
    // Drives the GOAWAY out and the connection to its end; streams above
    // the last id are ignored by h2, so none should come.
    while let Some(Ok((_request, mut respond))) = conn.accept().await {
        respond.send_reset(h2::Reason::REFUSED_STREAM);
    }
    drop(conn);
    spare.set_nonblocking(true)?;
    let mut spare = tokio::net::TcpStream::from_std(spare)?;
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        use tokio::io::AsyncReadExt;
        while matches!(spare.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !(0.0..=1.0).contains(&args.error_rate) {
        bail!("--error-rate must be within 0..=1, got {}", args.error_rate);
    }
    let listen = args.listen;
    if let Some(mode) = args.refuse {
        return refuse(listen, mode).await;
    }
    let backend = Arc::new(Backend {
        rng: Mutex::new(SmallRng::seed_from_u64(args.seed)),
        args,
        started: Instant::now(),
        in_flight: AtomicU32::new(0),
    });
    println!("echo backend {} listening on {listen}", backend.args.pod);
    // grpc.health.v1 for the kubelet's gRPC readiness probe (and any
    // client that checks health): the whole server ("") and the echo
    // service answer SERVING until SIGTERM, NOT_SERVING while draining.
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<EchoServer<Shared>>().await;
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(EchoServer::new(Shared(backend)))
        // SIGTERM (what the test harness and the kubelet send) drains too:
        // in-flight requests finish, as a well-behaved gRPC server's do.
        .serve_with_shutdown(listen, async move {
            terminated().await;
            health.set_not_serving::<EchoServer<Shared>>().await;
            health
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
        })
        .await
        .with_context(|| format!("serving on {listen}"))
}

/// Resolves on SIGTERM or Ctrl-C.
async fn terminated() {
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
}

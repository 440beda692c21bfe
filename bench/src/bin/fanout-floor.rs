//! Floors under the fan-out benchmark: how fast the same bytes reach the
//! same number of subscribers on this machine with the xDS server taken
//! out, so the fan-out's time can be split into what the kernel and the
//! HTTP/2 stack cost and what eds-server adds on top.
//!
//! Two stacks, each with the fan-out's shape (N subscribers, 100 per
//! connection, one message of the ClusterLoadAssignment's size each) and
//! pinning (sender on CPU 0, receiver on CPU 1):
//!
//! - `tcp`: plain loopback TCP. The sender writes each subscriber's message
//!   from one shared buffer, in writes of `--chunk` bytes (default: the
//!   256 KiB eds-server's listener gathers h2's 16 KiB DATA frames into,
//!   `eds_server::coalesce`); the receiver counts bytes.
//! - `http2`: hyper's HTTP/2 server, over eds-server's write-gathering
//!   socket wrapper, and the fan-out load generator's own client
//!   (`eds_bench::h2_mux`), one gRPC-framed stream per subscriber. The
//!   sender answers every stream with a pre-encoded message and, on a
//!   change, hands every stream the next one (a shared `Bytes`); it reads
//!   and drops what subscribers send. The receivers decode `version_info`
//!   and ACK, exactly as the fan-out's SotW subscribers do. This is the
//!   HTTP/2 stack eds-server runs on, with no xDS, no tonic and no
//!   per-subscriber state.
//!
//! ```sh
//! cargo run --release -p eds-bench --bin fanout-floor -- --stack http2
//! cargo run --release -p eds-bench --bin fanout-floor -- --stack tcp --chunk 16393
//! ```
//!
//! Not a benchmark of anything we ship, and it asserts nothing.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use eds_bench::h2_mux::{self, Windows, grpc_message};
use eds_bench::machine::{pin_self, schedstat_ns};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message as _;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Stack {
    Tcp,
    Http2,
}

#[derive(Debug, Parser)]
struct Args {
    /// What carries the bytes.
    #[arg(long, value_enum, default_value_t = Stack::Http2)]
    stack: Stack,
    /// Subscribers (messages per change), as in the fan-out benchmark.
    #[arg(long, default_value_t = 10_000)]
    subscribers: usize,
    /// Subscribers per connection (the fan-out's `--streams-per-conn`).
    #[arg(long, default_value_t = 100)]
    per_conn: usize,
    /// Bytes per message (the ClusterLoadAssignment's encoded size).
    #[arg(long, default_value_t = 154_000)]
    bytes: usize,
    /// `tcp` only: bytes per write; 0 writes each message whole.
    #[arg(long, default_value_t = eds_gather::CAPACITY)]
    chunk: usize,
    /// Changes measured.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Internal: run as the sender.
    #[arg(long, hide = true)]
    sender: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match (args.sender, args.stack) {
        (true, Stack::Tcp) => runtime.block_on(tcp_sender(&args)),
        (true, Stack::Http2) => runtime.block_on(http2_sender(&args)),
        (false, _) => runtime.block_on(receiver(&args)),
    }
}

/// Blocks until the driver writes a line; false at end of input.
async fn next_change() -> anyhow::Result<bool> {
    let n =
        tokio::task::spawn_blocking(|| std::io::stdin().read_line(&mut String::new())).await??;
    Ok(n > 0)
}

async fn tcp_sender(args: &Args) -> anyhow::Result<()> {
    let connections = args.subscribers.div_ceil(args.per_conn);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("addr={}", listener.local_addr()?);
    let mut sockets = Vec::with_capacity(connections);
    for _ in 0..connections {
        let (s, _) = listener.accept().await?;
        s.set_nodelay(true)?;
        sockets.push(Some(s));
    }
    let message = Bytes::from(vec![7u8; args.bytes]);
    let chunk = if args.chunk == 0 {
        args.bytes
    } else {
        args.chunk
    };
    while next_change().await? {
        let mut tasks = Vec::with_capacity(connections);
        for slot in &mut sockets {
            let mut s = slot.take().context("socket")?;
            let message = message.clone();
            let per_conn = args.per_conn;
            tasks.push(tokio::spawn(async move {
                for _ in 0..per_conn {
                    for part in message.chunks(chunk) {
                        s.write_all(part).await?;
                    }
                }
                anyhow::Ok(s)
            }));
        }
        for (slot, t) in sockets.iter_mut().zip(tasks) {
            *slot = Some(t.await??);
        }
        println!("done");
    }
    Ok(())
}

/// What the HTTP/2 floor sends: DiscoveryResponse-shaped, `version_info`
/// (field 1) and a body the receivers do not declare (field 2, where
/// `resources` sits).
#[derive(Clone, PartialEq, prost::Message)]
struct FloorMessage {
    #[prost(string, tag = "1")]
    version_info: String,
    #[prost(bytes = "vec", tag = "2")]
    body: Vec<u8>,
}

/// One floor message of `bytes` body bytes, gRPC-framed.
fn floor_message(version: &str, bytes: usize) -> Bytes {
    grpc_message(&FloorMessage {
        version_info: version.to_owned(),
        body: vec![7; bytes],
    })
}

async fn http2_sender(args: &Args) -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("addr={}", listener.local_addr()?);
    let (tx, rx) = watch::channel(floor_message("v0", args.bytes));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let _ = tcp.set_nodelay(true);
            let rx = rx.clone();
            let service = hyper::service::service_fn(move |request: http::Request<_>| {
                let rx = rx.clone();
                async move {
                    // Drain what the subscriber sends (its ACKs) unread.
                    let mut incoming: hyper::body::Incoming = request.into_body();
                    tokio::spawn(async move { while incoming.frame().await.is_some() {} });
                    let body = futures::stream::unfold((rx, true), |(mut rx, first)| async move {
                        if !first && rx.changed().await.is_err() {
                            return None;
                        }
                        let message = rx.borrow_and_update().clone();
                        Some((Ok::<_, Infallible>(Frame::data(message)), (rx, false)))
                    });
                    let response = http::Response::builder()
                        .header(http::header::CONTENT_TYPE, "application/grpc")
                        .body(StreamBody::new(body))?;
                    anyhow::Ok(response)
                }
            });
            tokio::spawn(async move {
                // eds-server's listener gathers h2's writes; so does its floor.
                let io = TokioIo::new(eds_gather::Coalesced::new(tcp));
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    let mut version = 0;
    while next_change().await? {
        version += 1;
        tx.send_replace(floor_message(&format!("v{version}"), args.bytes));
    }
    Ok(())
}

/// What the HTTP/2 receivers decode from each message.
#[derive(Clone, PartialEq, prost::Message)]
struct Lite {
    #[prost(string, tag = "1")]
    version_info: String,
}

/// The ACK each subscriber sends back.
#[derive(Clone, PartialEq, prost::Message)]
struct Ack {
    #[prost(string, tag = "1")]
    version_info: String,
}

async fn receiver(args: &Args) -> anyhow::Result<()> {
    pin_self(1)?;
    let exe = std::env::current_exe()?;
    let mut child = tokio::process::Command::new("taskset")
        .arg("-c")
        .arg("0")
        .arg(&exe)
        .arg("--sender")
        .args([
            "--stack",
            args.stack.to_possible_value().context("stack")?.get_name(),
        ])
        .args(["--subscribers", &args.subscribers.to_string()])
        .args(["--per-conn", &args.per_conn.to_string()])
        .args(["--bytes", &args.bytes.to_string()])
        .args(["--chunk", &args.chunk.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().context("sender pid")?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let mut out = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let line = out
        .next_line()
        .await?
        .context("no address from the sender")?;
    let addr: SocketAddr = line
        .strip_prefix("addr=")
        .context("address line")?
        .parse()?;
    let connections = args.subscribers.div_ceil(args.per_conn);
    let total_gb = (args.subscribers * args.bytes) as f64 / 1e9;
    let mut subscribers = match args.stack {
        Stack::Tcp => Subscribers::tcp(addr, connections, args.per_conn * args.bytes).await?,
        Stack::Http2 => Subscribers::http2(addr, args.subscribers, args.per_conn).await?,
    };
    for round in 1..=args.rounds {
        let cpu0 = cpu_pair(pid)?;
        let t0 = Instant::now();
        stdin.write_all(b"go\n").await?;
        let last = subscribers.all_received(round, t0).await?;
        if args.stack == Stack::Tcp {
            let done = out.next_line().await?.context("sender exited")?;
            if done != "done" {
                bail!("unexpected sender line {done}");
            }
        }
        let cpu1 = cpu_pair(pid)?;
        // One line per change, parsed by the fan-out benchmark.
        println!(
            "floor stack={} round={round} subscribers={} connections={connections} gb={total_gb:.3} \
             until_all_ms={:.3} sender_cpu_ms={:.3} receiver_cpu_ms={:.3}",
            args.stack.to_possible_value().context("stack")?.get_name(),
            args.subscribers,
            last.as_secs_f64() * 1e3,
            (cpu1.0 - cpu0.0) as f64 / 1e6,
            (cpu1.1 - cpu0.1) as f64 / 1e6,
        );
    }
    drop(stdin);
    child.wait().await?;
    Ok(())
}

/// CPU time so far of the sender (`pid`) and of this process, in ns.
fn cpu_pair(pid: u32) -> anyhow::Result<(u64, u64)> {
    let of = |pid| schedstat_ns(pid).with_context(|| format!("no schedstat for {pid}"));
    Ok((of(pid)?, of(std::process::id())?))
}

enum Subscribers {
    Tcp {
        sockets: Vec<TcpStream>,
        per_round: usize,
    },
    Http2 {
        /// Subscribers holding each round's version, by round.
        counts: Arc<Vec<AtomicUsize>>,
        /// When the last subscriber got each round's version.
        last: Arc<Mutex<Vec<Option<Instant>>>>,
        n: usize,
    },
}

/// Rounds an HTTP/2 run can count (changes beyond are not recorded).
const MAX_ROUNDS: usize = 64;

impl Subscribers {
    async fn tcp(addr: SocketAddr, connections: usize, per_round: usize) -> anyhow::Result<Self> {
        let mut sockets = Vec::with_capacity(connections);
        for _ in 0..connections {
            sockets.push(TcpStream::connect(addr).await?);
        }
        Ok(Self::Tcp { sockets, per_round })
    }

    async fn http2(addr: SocketAddr, n: usize, per_conn: usize) -> anyhow::Result<Self> {
        let counts: Arc<Vec<AtomicUsize>> =
            Arc::new((0..=MAX_ROUNDS).map(|_| AtomicUsize::new(0)).collect());
        let last = Arc::new(Mutex::new(vec![None; MAX_ROUNDS + 1]));
        for first in (0..n).step_by(per_conn.max(1)) {
            let subscribers = (first + per_conn).min(n) - first;
            let (counts, last) = (Arc::clone(&counts), Arc::clone(&last));
            tokio::spawn(async move {
                // The fan-out load generator's client and windows.
                let firsts = vec![grpc_message(&Ack::default()); subscribers];
                let result = h2_mux::run(addr, Windows::FANOUT, "/floor", firsts, |_, message| {
                    let at = Instant::now();
                    let m = Lite::decode(message)?;
                    let round: usize = m.version_info[1..].parse().unwrap_or(usize::MAX);
                    if let Some(c) = counts.get(round)
                        && c.fetch_add(1, Ordering::AcqRel) + 1 == n
                        && let Ok(mut last) = last.lock()
                    {
                        last[round] = Some(at);
                    }
                    Ok(Some(grpc_message(&Ack {
                        version_info: m.version_info,
                    })))
                })
                .await;
                // The sender closing its connections at exit ends them with Ok.
                if let Err(e) = result {
                    eprintln!("fanout-floor: a connection failed: {e:#}");
                }
            });
        }
        let this = Self::Http2 { counts, last, n };
        this.wait(0).await?;
        Ok(this)
    }

    async fn wait(&self, round: usize) -> anyhow::Result<()> {
        let Self::Http2 { counts, n, .. } = self else {
            return Ok(());
        };
        let started = Instant::now();
        while counts[round].load(Ordering::Acquire) < *n {
            if started.elapsed() > Duration::from_secs(60) {
                bail!(
                    "round {round}: {} of {n} subscribers after 60 s",
                    counts[round].load(Ordering::Acquire)
                );
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(())
    }

    /// Waits for every subscriber to receive round `round`; the time from
    /// `t0` until the last one did.
    async fn all_received(&mut self, round: usize, t0: Instant) -> anyhow::Result<Duration> {
        match self {
            Self::Tcp { sockets, per_round } => {
                let want = *per_round;
                let mut tasks = Vec::with_capacity(sockets.len());
                for mut s in sockets.drain(..) {
                    tasks.push(tokio::spawn(async move {
                        let mut buf = vec![0u8; 256 << 10];
                        let mut got = 0;
                        while got < want {
                            let n = s.read(&mut buf).await?;
                            if n == 0 {
                                bail!("the sender closed");
                            }
                            got += n;
                        }
                        anyhow::Ok((s, t0.elapsed()))
                    }));
                }
                let mut last = Duration::ZERO;
                for t in tasks {
                    let (s, at) = t.await??;
                    last = last.max(at);
                    sockets.push(s);
                }
                Ok(last)
            }
            Self::Http2 { last, .. } => {
                if round > MAX_ROUNDS {
                    bail!("at most {MAX_ROUNDS} rounds");
                }
                let last = Arc::clone(last);
                self.wait(round).await?;
                let at = last.lock().map_err(|_| anyhow::anyhow!("poisoned"))?[round]
                    .context("no time recorded")?;
                Ok(at - t0)
            }
        }
    }
}

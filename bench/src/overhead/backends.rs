//! The echo backends of the `overhead` benchmark, run in a child process of
//! their own so the client's CPU time is measured apart from the servers'.
//!
//! ```text
//!  parent: Backends::spawn(latencies, cpu) --> [taskset -c cpu] <this exe> --backends-child --latency-ms 0,0,1,2..
//!  child:  one listener per latency on 127.0.0.1:0 --> prints "ADDRS a b c .." --> serves until stdin closes
//! ```
//!
//! Each backend answers with its index as `pod`, so the client can tell
//! which one served a request without asking the balancer. A backend with a
//! latency sleeps that long before answering (a pure delay, like a call to
//! a slower dependency; it takes no CPU). The child exits when its stdin
//! closes, so it cannot outlive the benchmark even if the parent is killed.
//!
//! Not a general echo server (see `eds-tests`' `echo-backend` for that) and
//! not a load generator.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use proto::echo::echo_server::{Echo, EchoServer};
use proto::echo::{EchoReply, EchoRequest};
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// The flag that turns this binary into the backends' process.
pub(crate) const CHILD_FLAG: &str = "--backends-child";

/// Backends running in a child process.
#[derive(Debug)]
pub(crate) struct Backends {
    child: Child,
    // Held only so the pipe stays open: dropping it tells the child to exit.
    _stdin: ChildStdin,
    /// One address per requested latency, in the same order.
    pub(crate) addrs: Vec<SocketAddr>,
}

impl Backends {
    /// Starts one backend per entry of `latencies_ms` in a child process,
    /// pinned to `cpu` with `taskset` when given.
    pub(crate) fn spawn(latencies_ms: &[u64], cpu: Option<usize>) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("finding this executable")?;
        let list = latencies_ms
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let mut command = match cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpu.to_string()).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        command
            .arg(CHILD_FLAG)
            .arg("--latency-ms")
            .arg(&list)
            .arg("--workers")
            .arg(if cpu.is_some() { "1" } else { "0" })
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command
            .spawn()
            .with_context(|| format!("starting backends: {command:?}"))?;
        let stdin = child.stdin.take().context("child stdin")?;
        let stdout = child.stdout.take().context("child stdout")?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .context("reading the backends' addresses")?;
        let addrs = line
            .strip_prefix("ADDRS")
            .with_context(|| format!("backends child said {line:?}"))?
            .split_whitespace()
            .map(|a| {
                a.parse::<SocketAddr>()
                    .with_context(|| format!("address {a:?}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        if addrs.len() != latencies_ms.len() {
            bail!(
                "asked for {} backends, child reported {}",
                latencies_ms.len(),
                addrs.len()
            );
        }
        Ok(Self {
            child,
            _stdin: stdin,
            addrs,
        })
    }

    /// The child's process id, for reading its CPU time.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Backends {
    fn drop(&mut self) {
        // Closing stdin (when `_stdin` drops after this) would end it too;
        // killing our own child by its id makes the end immediate.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
struct Backend {
    index: String,
    latency: Duration,
}

#[tonic::async_trait]
impl Echo for Backend {
    async fn echo(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        Ok(Response::new(EchoReply {
            message: request.into_inner().message,
            pod: self.index.clone(),
            zone: String::new(),
            in_flight: 0,
        }))
    }
}

/// Parses the child's flags (everything after [`CHILD_FLAG`]).
fn parse_child_args(args: &[String]) -> anyhow::Result<(Vec<u64>, usize)> {
    let mut latencies = None;
    let mut workers = 0;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--latency-ms" => {
                let list = it.next().context("--latency-ms needs a value")?;
                latencies = Some(
                    list.split(',')
                        .map(|v| v.trim().parse::<u64>())
                        .collect::<Result<Vec<_>, _>>()
                        .with_context(|| format!("--latency-ms {list:?}"))?,
                );
            }
            "--workers" => {
                workers = it
                    .next()
                    .context("--workers needs a value")?
                    .parse()
                    .context("--workers")?;
            }
            other => bail!("unknown backends-child flag {other:?}"),
        }
    }
    Ok((latencies.context("--latency-ms is required")?, workers))
}

/// The child's main: serve until stdin closes. `args` are the flags after
/// [`CHILD_FLAG`].
pub(crate) fn child_main(args: &[String]) -> anyhow::Result<()> {
    let (latencies, workers) = parse_child_args(args)?;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if workers > 0 {
        builder.worker_threads(workers);
    }
    let runtime = builder.enable_all().build()?;
    runtime.block_on(async {
        let mut addrs = Vec::new();
        for (i, ms) in latencies.iter().enumerate() {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            addrs.push(listener.local_addr()?.to_string());
            let backend = Backend {
                index: i.to_string(),
                latency: Duration::from_millis(*ms),
            };
            // `serve_with_incoming` ignores the builder's `tcp_nodelay`: set it
            // on the incoming stream, or Nagle holds small responses behind
            // the client's delayed ACK (a 40 ms tail on lightly used connections).
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(EchoServer::new(backend))
                    .serve_with_incoming(incoming),
            );
        }
        println!("ADDRS {}", addrs.join(" "));
        // Wait for the parent to close our stdin (or die), off the runtime.
        tokio::task::spawn_blocking(|| {
            let mut sink = [0u8; 64];
            let mut stdin = std::io::stdin();
            while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        })
        .await?;
        anyhow::Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_flags_parse_and_reject_garbage() {
        let args = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            parse_child_args(&args(&["--latency-ms", "0,1,10", "--workers", "1"])).unwrap(),
            (vec![0, 1, 10], 1)
        );
        assert!(parse_child_args(&args(&["--latency-ms", "1,x"])).is_err());
        assert!(parse_child_args(&args(&["--workers", "1"])).is_err());
        assert!(parse_child_args(&args(&["--bogus"])).is_err());
    }
}

//! An application calling a Kubernetes Service through lb-client: the
//! smallest complete use of the library, runnable as it stands.
//!
//! ```sh
//! cargo xtask cluster up        # or any cluster where eds-server runs
//! cargo run -p lb-client --example echo_client -- \
//!     --control-plane http://127.0.0.1:18000 --service echo.demo:8080 --zone zone-a
//! ```
//!
//! It sends `--requests` echoes over `--concurrency` callers that share one
//! channel; lb-client picks an endpoint for every request. At the end it
//! prints which pod (and zone) answered how often, the failures by status,
//! and what the client knew: where the endpoints came from, the policy and
//! why, the endpoints it could pick. `--output json` prints the same as one
//! JSON object, with lb-client's whole debug view.
//!
//! It speaks the echo protocol (`proto/proto/echo.proto`) that the demo's and
//! the tests' backends (`tests/src/bin/echo-backend.rs`) serve. For your own
//! service the only change is the generated client: `EchoClient::new(channel)`
//! becomes `YourClient::new(channel)`.
//!
//! What it is not: a load generator or a benchmark (those are in `bench/`).
//! It exits non-zero when any request failed, so a script can use it as a
//! check.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use lb_client::{HashKey, LbClient, LbConfig, ServiceOptions};
use lb_core::Policy;
use proto::echo::EchoRequest;
use proto::echo::echo_client::EchoClient;
use serde::Serialize;

#[derive(Debug, Parser)]
#[command(
    about = "Call a Kubernetes Service's echo endpoint through lb-client, one balancing decision per request"
)]
struct Args {
    /// eds-server's xDS address. Without one, the client runs on the
    /// snapshot file and the DNS fallback alone.
    #[arg(long, env = "EDS_XDS_SERVER")]
    control_plane: Option<String>,
    /// The service key: `<service>.<namespace>:<port>` (number or name).
    #[arg(long)]
    service: String,
    /// This client's zone, for zone affinity.
    #[arg(long, env = "EDS_ZONE")]
    zone: Option<String>,
    /// Requests to send in all.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    requests: u64,
    /// Callers sending at the same time, sharing one channel.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    concurrency: u64,
    /// Pace the requests at this many per second in all (0: as fast as the
    /// callers go). With `--requests`, it fixes how long a run lasts, for
    /// keeping traffic flowing while something else happens.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    rate: u64,
    /// The balancing policy; without it, the one the operator annotated on
    /// the Service (`eds.rs/lb-policy`), else P2C.
    #[arg(long, value_parser = parse_policy)]
    policy: Option<Policy>,
    /// Send every request with this hash key (for `ring-hash` and
    /// `bounded-load-hash`).
    #[arg(long)]
    hash_key: Option<String>,
    /// Keep the last good endpoints here, and start from them when the
    /// control plane cannot be reached.
    #[arg(long, env = "EDS_SNAPSHOT_FILE")]
    snapshot_file: Option<std::path::PathBuf>,
    /// How long a request waits for the service's first endpoints, in seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    wait_secs: u64,
    /// `text` for people, `json` for scripts.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

/// lb-core's parser; its error lists the policies it knows.
fn parse_policy(s: &str) -> Result<Policy, String> {
    s.parse::<Policy>().map_err(|e| e.to_string())
}

/// What the run saw, as printed with `--output json`.
#[derive(Debug, Default, Serialize)]
struct Report {
    service: String,
    requests: u64,
    ok: u64,
    failed: u64,
    /// Replies per answering pod.
    by_pod: BTreeMap<String, PodTally>,
    /// Failures per gRPC status (code and message).
    errors: BTreeMap<String, u64>,
    latency_ms: Latency,
    /// lb-client's debug view after the run (`LbClient::debug`).
    client: Option<lb_client::ClientDebug>,
}

#[derive(Debug, Default, Serialize)]
struct PodTally {
    zone: String,
    replies: u64,
}

#[derive(Debug, Default, Serialize)]
struct Latency {
    p50: f64,
    p99: f64,
    max: f64,
}

#[derive(Debug, Default)]
struct CallerResult {
    by_pod: BTreeMap<String, PodTally>,
    errors: BTreeMap<String, u64>,
    latencies: Vec<Duration>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();

    let mut config = LbConfig::from_env();
    config.control_plane = args.control_plane.clone();
    config.zone = args.zone.clone();
    config.snapshot_file = args.snapshot_file.clone();
    config.wait_for_endpoints = Duration::from_secs(args.wait_secs);
    config.default_service = ServiceOptions {
        policy: args.policy,
        ..ServiceOptions::default()
    };
    let client = LbClient::connect(config).context("starting lb-client")?;
    // The channel is a tower Service; any tonic-generated client takes it.
    let channel = client
        .channel(&args.service)
        .with_context(|| format!("--service {}", args.service))?;

    let next = Arc::new(AtomicUsize::new(0));
    let total = usize::try_from(args.requests).context("--requests")?;
    let start = tokio::time::Instant::now();
    let rate = args.rate;
    let callers: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let mut echo = EchoClient::new(channel.clone());
            let next = next.clone();
            let hash_key = args.hash_key.as_deref().map(HashKey::from_str_key);
            tokio::spawn(async move {
                let mut out = CallerResult::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    if rate > 0 {
                        // Request i is due i/rate seconds after the start.
                        let due = Duration::from_secs_f64(i as f64 / rate as f64);
                        tokio::time::sleep_until(start + due).await;
                    }
                    let mut request = tonic::Request::new(EchoRequest {
                        message: "hello".to_owned(),
                        work_us: 0,
                    });
                    if let Some(key) = hash_key {
                        request.extensions_mut().insert(key);
                    }
                    let started = Instant::now();
                    match echo.echo(request).await {
                        Ok(reply) => {
                            out.latencies.push(started.elapsed());
                            let reply = reply.into_inner();
                            let tally = out.by_pod.entry(reply.pod).or_default();
                            tally.zone = reply.zone;
                            tally.replies += 1;
                        }
                        Err(status) => {
                            let what = format!("{:?}: {}", status.code(), status.message());
                            *out.errors.entry(what).or_default() += 1;
                        }
                    }
                }
                out
            })
        })
        .collect();

    let mut report = Report {
        service: args.service.clone(),
        requests: args.requests,
        ..Report::default()
    };
    let mut latencies = Vec::new();
    for caller in callers {
        let result = caller.await.context("a caller task panicked")?;
        for (pod, tally) in result.by_pod {
            let entry = report.by_pod.entry(pod).or_default();
            entry.zone = tally.zone;
            entry.replies += tally.replies;
        }
        for (what, n) in result.errors {
            *report.errors.entry(what).or_default() += n;
        }
        latencies.extend(result.latencies);
    }
    report.ok = report.by_pod.values().map(|t| t.replies).sum();
    report.failed = report.errors.values().sum();
    report.latency_ms = latency(&mut latencies);
    report.client = Some(client.debug());

    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Text => print_text(&report),
    }
    if report.failed > 0 {
        bail!("{} of {} requests failed", report.failed, report.requests);
    }
    Ok(())
}

fn latency(samples: &mut [Duration]) -> Latency {
    samples.sort_unstable();
    let at = |q: f64| -> f64 {
        if samples.is_empty() {
            return 0.0;
        }
        // Nearest rank: the smallest sample with at least q of them at or below it.
        let rank = (q * samples.len() as f64).ceil().max(1.0) as usize;
        samples[rank.min(samples.len()) - 1].as_secs_f64() * 1e3
    };
    Latency {
        p50: at(0.50),
        p99: at(0.99),
        max: at(1.0),
    }
}

fn print_text(report: &Report) {
    println!(
        "{}: {} requests, {} ok, {} failed; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        report.service,
        report.requests,
        report.ok,
        report.failed,
        report.latency_ms.p50,
        report.latency_ms.p99,
        report.latency_ms.max
    );
    println!("\n{:<32} {:<16} {:>8}", "POD", "ZONE", "REPLIES");
    for (pod, tally) in &report.by_pod {
        println!("{pod:<32} {:<16} {:>8}", tally.zone, tally.replies);
    }
    if !report.errors.is_empty() {
        println!("\n{:<64} {:>8}", "FAILURE", "COUNT");
        for (what, n) in &report.errors {
            println!("{what:<64} {n:>8}");
        }
    }
    let Some(client) = &report.client else {
        return;
    };
    println!(
        "\ncontrol plane: {} (EDS version {:?}, CDS version {:?})",
        client.control_plane.state,
        client.control_plane.accepted_version,
        client.control_plane.cluster_version
    );
    for s in &client.services {
        println!(
            "{}: endpoints from {:?}, policy {} ({}){}, {} usable of {}",
            s.service,
            s.source,
            s.policy,
            s.policy_source.as_str(),
            s.policy_note
                .as_deref()
                .map(|n| format!(" [{n}]"))
                .unwrap_or_default(),
            s.usable,
            s.endpoints.len()
        );
    }
}

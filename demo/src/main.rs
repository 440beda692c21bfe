//! `eds-demo`, which `cargo xtask demo` runs: the README's first command.
//! Runs this crate's demo (lb-client's P2C next to kube-proxy-style
//! per-connection balancing, a pod killed mid-run) on the local control
//! plane and prints a live table, then a chart.
//!
//! It attaches to `$EDS_CLUSTER_DIR` (a `cargo xtask cluster up` cluster)
//! when set, and otherwise starts a control plane tied to this process, as
//! `cluster up` would but gone when the demo ends. Not the demo itself: the
//! logic lives in the library, so a test runs the same code headless.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use eds_demo::{DemoOptions, run_blocking};

/// Show lb-client's per-request balancing next to per-connection balancing, live, with a pod killed mid-run.
#[derive(Debug, Parser)]
#[command(name = "eds-demo", bin_name = "cargo xtask demo", version)]
struct Args {
    /// How long load runs, in seconds.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Kill a pod this many seconds in (0: kill nothing). Ctrl-C at any time cleans up.
    #[arg(long, default_value_t = 25)]
    kill_after: u64,
    /// Plain lines, no redrawn screen (CI, logs).
    #[arg(long)]
    headless: bool,
    /// Concurrent requests per side.
    #[arg(long, default_value_t = 24)]
    workers: usize,
    /// Per-connection side: connections, each pinned to one random pod.
    #[arg(long, default_value_t = 12)]
    connections: usize,
    /// Seed for the per-connection side's random pod choice.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if std::env::var_os("EDS_CLUSTER_DIR").is_none() {
        eprintln!("==> local control plane binaries (built once from Go modules, then cached)");
        eds_devkit::cluster::ensure_built(true).context("building the local control plane")?;
        eds_devkit::netns::preflight().context("checking what the pod network needs")?;
        eprintln!(
            "==> starting a local control plane for this demo (set EDS_CLUSTER_DIR to attach to `cargo xtask cluster up`'s)"
        );
    }
    ensure_echo_backend()?;
    let opts = DemoOptions {
        duration: Duration::from_secs(args.duration),
        kill_after: (args.kill_after > 0).then(|| Duration::from_secs(args.kill_after)),
        headless: args.headless,
        workers: args.workers,
        connections: args.connections,
        seed: args.seed,
        ..DemoOptions::default()
    };
    let mut out = std::io::stdout();
    let summary = run_blocking(opts, &mut out)?;
    if summary.lb_failed > 0 {
        bail!(
            "lb-client had {} failed requests: {:?}",
            summary.lb_failed,
            summary.lb_errors
        );
    }
    Ok(())
}

/// Builds the echo backend the demo's pods run (`$EDS_ECHO_BACKEND` overrides it).
fn ensure_echo_backend() -> anyhow::Result<()> {
    if std::env::var_os("EDS_ECHO_BACKEND").is_some() {
        return Ok(());
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(&cargo)
        .args(["build", "-p", "eds-tests", "--bin", "echo-backend"])
        .status()
        .with_context(|| format!("running {cargo} build"))?;
    if !status.success() {
        bail!("building the echo backend failed ({status})");
    }
    // The harness looks next to the running binary (target/debug/), where cargo just put it.
    let path = eds_devkit::harness::echo_backend_path()?;
    eprintln!("==> echo backend {}", path.display());
    Ok(())
}

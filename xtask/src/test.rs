//! `cargo xtask test`: what CI runs (`.ci/run` calls exactly this).
//!
//! It first installs what the tests need, idempotently and cached (the local
//! Kubernetes control plane's binaries, built from Go modules), then runs the
//! hygiene checks and the whole workspace's tests. It is not a test runner of
//! its own: every check is a cargo command a developer can run alone.

use std::process::Command;

use anyhow::{Context, bail};
use eds_tests::interop::{ensure_grpc_go_client, ensure_grpcio_venv};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Skip `cargo fmt --check` and clippy (for a quick local loop).
    #[arg(long)]
    no_lint: bool,
    /// Also build the node components (kubelet, kube-proxy, kube-scheduler,
    /// containerd, runc, CoreDNS: about an hour cold on 2 cores, seconds
    /// cached) and run the tests that start real nodes (`node_image`,
    /// `node_cluster`, ignored in a plain `cargo test`). Needs root and python3
    /// (node_cluster asks DNS from inside a pod's network namespace with it).
    #[arg(long)]
    nodes: bool,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    step("install: local control-plane binaries (built from Go modules once, then cached)");
    eds_tests::cluster::ensure_built(true).context("building the local control plane")?;
    ensure_grpc_go_client(true).context("building the grpc-go interop client")?;
    ensure_grpcio_venv(true).context("creating the grpcio interop venv")?;
    eds_tests::tools::ensure_helm(true).context("building Helm for the deploy tests")?;
    eds_tests::netns::preflight().context("checking what the pod network needs")?;
    if args.nodes {
        step("install: node components (built from Go modules once, then cached; Debian packages)");
        eds_tests::cluster::ensure_node_built(true).context("building the node components")?;
    }

    if !args.no_lint {
        step("cargo fmt --check");
        cargo(&["fmt", "--all", "--", "--check"])?;
        step("cargo clippy -D warnings");
        cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ])?;
    }
    step("cargo test");
    cargo(&["test", "--workspace", "--locked"])?;
    if args.nodes {
        step("cargo test: real nodes (containerd, runc, kubelet, kube-proxy)");
        // The images hold these binaries; node_cluster builds them too, but
        // building here first keeps that build's output in this log.
        let mut build = vec!["build", "--locked"];
        build.extend(eds_tests::image::IMAGE_BINARIES);
        cargo(&build)?;
        cargo(&[
            "test",
            "--locked",
            "-p",
            "eds-tests",
            "--test",
            "node_image",
            "--test",
            "node_cluster",
            "--",
            "--ignored",
            // One at a time: each starts its own containerd (and the
            // cluster test a whole control plane) on a small machine.
            "--test-threads=1",
        ])?;
    }
    step("all checks passed");
    Ok(())
}

fn step(what: &str) {
    eprintln!("\n==> {what}");
}

fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(&cargo)
        .args(args)
        .status()
        .with_context(|| format!("running {cargo} {}", args.join(" ")))?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

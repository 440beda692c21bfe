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
    /// Skip the real nodes: building the node components (kubelet,
    /// kube-proxy, kube-scheduler, containerd, runc, CoreDNS: about an hour
    /// cold on 2 cores, seconds cached) and the tests that start them
    /// (`node_image`, `node_cluster`, `node_e2e`, ignored in a plain `cargo
    /// test`). They need root; CI runs them.
    #[arg(long)]
    no_nodes: bool,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    step("install: local control-plane binaries (built from Go modules once, then cached)");
    eds_tests::cluster::ensure_built(true).context("building the local control plane")?;
    ensure_grpc_go_client(true).context("building the grpc-go interop client")?;
    ensure_grpcio_venv(true).context("creating the grpcio interop venv")?;
    eds_tests::tools::ensure_helm(true).context("building Helm for the deploy tests")?;
    eds_tests::netns::preflight().context("checking what the pod network needs")?;
    if !args.no_nodes {
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
    if !args.no_nodes {
        step("cargo test: real nodes (containerd, runc, kubelet, kube-proxy, CoreDNS)");
        // The images hold these binaries; the tests build them too, but
        // building here first keeps that build's output in this log.
        let mut build = vec!["build", "--locked"];
        build.extend(eds_tests::image::IMAGE_BINARIES);
        cargo(&build)?;
        cargo(&["build", "--locked", "-p", "lb-client", "--examples"])?;
        cargo(&["build", "--locked", "-p", "edsctl"])?;
        cargo(&[
            "test",
            "--locked",
            "-p",
            "eds-tests",
            "--test",
            "node_image",
            "--test",
            "node_cluster",
            "--test",
            "node_e2e",
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

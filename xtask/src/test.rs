//! `cargo xtask test`: what CI runs (`.ci/run` calls exactly this).
//!
//! It first installs what the suites need, idempotently and cached (the
//! local Kubernetes control plane's binaries, built from Go modules, through
//! `eds-dev install`), then runs the hygiene checks and every test tier:
//!
//! ```text
//!  hermetic   cargo test (default members)   unit, property, golden: no root, Go or cluster
//!  cluster    eds-tests, edsctl's cluster-tests feature: the local control
//!             plane, interop clients, deploy, demo
//!  nodes      node_image, node_cluster, node_e2e (ignored elsewhere; root, one at a time)
//! ```
//!
//! CI runs the first two in one `cargo test --workspace --all-features`
//! and the third with the same selection, so dependencies build once.
//!
//! It is not a test runner of its own: every step is a cargo command a
//! developer can run alone (CONTRIBUTING.md lists them).

use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};

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
    /// Only the hermetic tier (plain `cargo test`) after the lints: no
    /// install, no cluster, no root.
    #[arg(long)]
    hermetic: bool,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    if !args.hermetic {
        step(
            "install: local control plane, interop clients, Helm (built once from Go modules, then cached)",
        );
        let mut install = vec![
            "run",
            "--locked",
            "--quiet",
            "-p",
            "eds-devkit",
            "--bin",
            "eds-dev",
            "--",
            "install",
        ];
        if !args.no_nodes {
            install.push("--nodes");
        }
        cargo(&install)?;
    }

    if !args.no_lint {
        step("cargo fmt --check");
        cargo(&["fmt", "--all", "--", "--check"])?;
        step("cargo clippy -D warnings");
        cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--all-features",
            "--locked",
            "--",
            "-D",
            "warnings",
        ])?;
    }

    if args.hermetic {
        step("hermetic tier: cargo test");
        let started = Instant::now();
        cargo(&["test", "--locked"])?;
        eprintln!(
            "hermetic tier passed in {:.0} s",
            started.elapsed().as_secs_f64()
        );
        return Ok(());
    }

    // Every cargo invocation below selects the whole workspace with every
    // feature, as clippy did: cargo unifies dependency features over the
    // packages selected, so `-p` here would build the dependency graph
    // again under other features (minutes per selection on 2 cores).
    step("hermetic and cluster tiers: cargo test --workspace --all-features");
    let started = Instant::now();
    cargo(WORKSPACE_TEST)?;
    eprintln!("passed in {:.0} s", started.elapsed().as_secs_f64());

    if !args.no_nodes {
        step("node tier: containerd, runc, kubelet, kube-proxy, CoreDNS");
        // The tests build the binaries the images hold (one cargo build
        // each, shared with `cargo xtask image`), then run one at a time:
        // each starts its own containerd, the cluster test a whole control
        // plane, on a small machine.
        let started = Instant::now();
        cargo(
            &[
                WORKSPACE_TEST,
                &[
                    "--test",
                    "node_image",
                    "--test",
                    "node_cluster",
                    "--test",
                    "node_e2e",
                ],
                &["--", "--ignored", "--test-threads=1"],
            ]
            .concat(),
        )?;
        eprintln!("passed in {:.0} s", started.elapsed().as_secs_f64());
    }
    step("all checks passed");
    Ok(())
}

/// `cargo test` over the one package selection every step shares.
const WORKSPACE_TEST: &[&str] = &["test", "--workspace", "--all-features", "--locked"];

fn step(what: &str) {
    eprintln!("\n==> {what}");
}

fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let cargo = crate::cargo_path();
    let status = Command::new(&cargo)
        .args(args)
        .status()
        .with_context(|| format!("running {cargo} {}", args.join(" ")))?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

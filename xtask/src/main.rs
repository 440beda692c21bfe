//! `cargo xtask`: the one entry point for the project's automation.
//!
//! This file parses the command line and dispatches. Two kinds of command:
//! the light ones run here (`bench` renders records and runs release
//! programs, `simulate` runs lb-core's simulator, `test` runs cargo); the
//! ones that start control planes or build images run as programs of the
//! crates that hold them (`eds-dev` in devkit, `eds-demo` in demo), so xtask
//! links neither the server nor Kubernetes and `cargo xtask --help` builds
//! in seconds. It is not a build system: cargo builds, xtask orchestrates.

mod bench;
mod simulate;
mod svg;
mod test;

use std::process::{Command as Process, ExitCode};

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "Project automation for eds", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The arguments of a command another program parses, passed on verbatim
/// (`--help` included, so each command's help is its program's).
#[derive(Debug, clap::Args)]
#[command(disable_help_flag = true)]
struct Passed {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the benchmark suite (ours against each peer), print the figures and regenerate docs/benchmarks.md.
    Bench(bench::Args),
    /// Build, start, stop and inspect the local Kubernetes control plane (runs `eds-dev cluster`).
    Cluster(Passed),
    /// Show lb-client's per-request balancing next to per-connection balancing, live, with a pod killed mid-run (runs `eds-demo`).
    Demo(Passed),
    /// Build the eds-server, echo-backend and pause images as OCI layout tarballs, no Docker or registry (runs `eds-dev image`).
    Image(Passed),
    /// Run the end-to-end scenarios on the local control plane (or check for kind) and summarise them (runs `eds-dev e2e`).
    E2e(Passed),
    /// Run stock proxyless gRPC clients (grpc-go, grpcio, tonic-xds) against eds-server and report the numbers (runs `eds-dev interop`).
    Interop(Passed),
    /// Run the deterministic load simulator and compare balancing policies.
    Simulate(simulate::Args),
    /// Run everything CI runs: install what the tests need, then fmt, clippy and every test tier.
    Test(test::Args),
}

fn main() -> anyhow::Result<ExitCode> {
    match Cli::parse().command {
        Command::Bench(args) => bench::run(args).map(|()| ExitCode::SUCCESS),
        Command::Simulate(args) => simulate::run(args).map(|()| ExitCode::SUCCESS),
        Command::Test(args) => test::run(args).map(|()| ExitCode::SUCCESS),
        Command::Cluster(p) => program("eds-devkit", "eds-dev", Some("cluster"), p),
        Command::Image(p) => program("eds-devkit", "eds-dev", Some("image"), p),
        Command::E2e(p) => program("eds-devkit", "eds-dev", Some("e2e"), p),
        Command::Interop(p) => program("eds-devkit", "eds-dev", Some("interop"), p),
        Command::Demo(p) => program("eds-demo", "eds-demo", None, p),
    }
}

/// `cargo run` of `package`'s `bin`, with `subcommand` and the passed
/// arguments; its exit code becomes ours.
fn program(
    package: &str,
    bin: &str,
    subcommand: Option<&str>,
    passed: Passed,
) -> anyhow::Result<ExitCode> {
    let cargo = cargo_path();
    let status = Process::new(&cargo)
        .args(["run", "--quiet", "--package", package, "--bin", bin, "--"])
        .args(subcommand)
        .args(&passed.args)
        .status()
        .with_context(|| format!("running {cargo} run --package {package} --bin {bin}"))?;
    // A signal (Ctrl-C) has no code; 130 is what a shell reports for it.
    Ok(ExitCode::from(
        status.code().map_or(130, |c| u8::try_from(c).unwrap_or(1)),
    ))
}

/// The cargo that runs us (`$CARGO`), so a toolchain override carries over.
fn cargo_path() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

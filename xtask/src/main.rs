//! `cargo xtask`: the one entry point for the project's automation.
//!
//! Each subcommand lives in its own module; this file only parses the command
//! line and dispatches. It is not a build system: cargo builds, xtask orchestrates.

mod bench;
mod cluster;
mod demo;
mod e2e;
mod image;
mod interop;
mod simulate;
mod svg;
mod test;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "Project automation for eds", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the benchmark suite (ours against each peer), print the figures and regenerate docs/benchmarks.md.
    Bench(bench::Args),
    /// Build, start, stop and inspect the local Kubernetes control plane.
    #[command(subcommand)]
    Cluster(cluster::ClusterCmd),
    /// Show lb-client's per-request balancing next to per-connection balancing, live, with a pod killed mid-run.
    Demo(demo::Args),
    /// Build the eds-server, echo-backend and pause images as OCI layout tarballs (no Docker, no registry), optionally loading them into a containerd.
    Image(image::Args),
    /// Run the end-to-end scenarios on the local control plane (or check for kind) and summarise them.
    E2e(e2e::Args),
    /// Run stock proxyless gRPC clients (grpc-go, grpcio, tonic-xds) against eds-server and report the numbers.
    Interop(interop::Args),
    /// Run the deterministic load simulator and compare balancing policies.
    Simulate(simulate::Args),
    /// Run everything CI runs: install what the tests need, then fmt, clippy and the tests.
    Test(test::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Bench(args) => bench::run(args),
        Command::Cluster(cmd) => cluster::run(cmd),
        Command::Demo(args) => demo::run(args),
        Command::E2e(args) => e2e::run(args),
        Command::Image(args) => image::run(args),
        Command::Interop(args) => interop::run(args),
        Command::Simulate(args) => simulate::run(args),
        Command::Test(args) => test::run(args),
    }
}

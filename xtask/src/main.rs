//! `cargo xtask`: the one entry point for the project's automation.
//!
//! Each subcommand lives in its own module; this file only parses the command
//! line and dispatches. It is not a build system: cargo builds, xtask orchestrates.

mod cluster;
mod interop;
mod simulate;
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
    /// Build, start, stop and inspect the local Kubernetes control plane.
    #[command(subcommand)]
    Cluster(cluster::ClusterCmd),
    /// Run stock proxyless gRPC clients (grpc-go, grpcio, tonic-xds) against eds-server and report the numbers.
    Interop(interop::Args),
    /// Run the deterministic load simulator and compare balancing policies.
    Simulate(simulate::Args),
    /// Run everything CI runs: install what the tests need, then fmt, clippy and the tests.
    Test(test::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Cluster(cmd) => cluster::run(cmd),
        Command::Interop(args) => interop::run(args),
        Command::Simulate(args) => simulate::run(args),
        Command::Test(args) => test::run(args),
    }
}

//! `eds-dev`: the program behind `cargo xtask cluster`, `image`, `e2e`,
//! `interop` and the install step of `cargo xtask test`.
//!
//! These commands start control planes, build images and run suites, so
//! they link the whole stack; xtask runs this program instead of linking it,
//! which keeps `cargo xtask --help` a seconds-long build. Each subcommand
//! lives in its own module; this file only parses and dispatches.

mod cluster;
mod e2e;
mod image;
mod interop;

use anyhow::Context;
use clap::{Parser, Subcommand};
use eds_devkit::interop::{ensure_grpc_go_client, ensure_grpcio_venv};

#[derive(Debug, Parser)]
#[command(
    name = "eds-dev",
    bin_name = "cargo xtask",
    about = "The local Kubernetes and the suites that run on it",
    version
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build, start, stop and inspect the local Kubernetes control plane.
    #[command(subcommand)]
    Cluster(cluster::ClusterCmd),
    /// Build the eds-server, echo-backend and pause images as OCI layout tarballs (no Docker, no registry), optionally loading them into a containerd.
    Image(image::Args),
    /// Run the end-to-end scenarios on the local control plane (or check for kind) and summarise them.
    E2e(e2e::Args),
    /// Run stock proxyless gRPC clients (grpc-go, grpcio, tonic-xds) against eds-server and report the numbers.
    Interop(interop::Args),
    /// Install what the cluster suites need, idempotently and cached: the control plane's and (with --nodes) a node's binaries from Go modules, the interop clients, Helm.
    Install(InstallArgs),
}

#[derive(Debug, clap::Args)]
struct InstallArgs {
    /// Also the node components (kubelet, kube-proxy, kube-scheduler,
    /// containerd, runc, CoreDNS: about an hour cold on 2 cores, seconds
    /// cached) and the binaries the node images hold.
    #[arg(long)]
    nodes: bool,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Cluster(cmd) => cluster::run(cmd),
        Command::E2e(args) => e2e::run(args),
        Command::Image(args) => image::run(args),
        Command::Interop(args) => interop::run(args),
        Command::Install(args) => install(&args),
    }
}

fn install(args: &InstallArgs) -> anyhow::Result<()> {
    eds_devkit::cluster::ensure_built(true).context("building the local control plane")?;
    ensure_grpc_go_client(true).context("building the grpc-go interop client")?;
    ensure_grpcio_venv(true).context("creating the grpcio interop venv")?;
    eds_devkit::tools::ensure_helm(true).context("building Helm for the deploy tests")?;
    eds_devkit::netns::preflight().context("checking what the pod network needs")?;
    if args.nodes {
        eds_devkit::cluster::ensure_node_built(true).context("building the node components")?;
    }
    Ok(())
}

//! `cargo xtask interop`: stock proxyless gRPC clients (grpc-go, Python
//! grpcio, tonic-xds) against eds-server, every scenario, and the numbers.
//!
//! ```text
//!  install   each client, cached (go build; venv + pip; cargo build --bin)
//!  run       cargo test -p eds-tests --test interop_<client> -- --nocapture, one client at a time
//!            (scenario lines stream to the terminal as they finish)
//!  report    target/interop/report-<client>.json -> one table + target/interop/report.json
//! ```
//!
//! It uses the local control plane in `$EDS_CLUSTER_DIR` if set (from
//! `cargo xtask cluster up`), otherwise each test binary starts its own.
//! Clients run one after another so their timings do not compete for the
//! CPU. The scenarios themselves live in `eds_devkit::interop::scenario`;
//! this module only installs, runs and summarises. It asserts nothing
//! itself: a client run fails when its test does.

use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use eds_devkit::interop::scenario::{ClientReport, format_table, report_dir, report_path};
use eds_devkit::interop::{CLIENTS, ClientKind, client_kind};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Clients to run, comma-separated (default: all): grpc-go, grpcio, tonic-xds.
    #[arg(long = "client", value_delimiter = ',')]
    clients: Vec<String>,
    /// Only these scenarios, comma-separated (default: all): reach-all,
    /// zone-local, zone-spill, readiness, scale-up, least-request, ring-hash, bad-input.
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<String>,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let kinds: Vec<&ClientKind> = if args.clients.is_empty() {
        CLIENTS.iter().collect()
    } else {
        args.clients
            .iter()
            .map(|name| {
                client_kind(name).with_context(|| {
                    let known: Vec<&str> = CLIENTS.iter().map(|k| k.name).collect();
                    format!("unknown client {name:?}; known: {known:?}")
                })
            })
            .collect::<anyhow::Result<_>>()?
    };

    for kind in &kinds {
        step(&format!("install {} ({})", kind.name, kind.about));
        let started = Instant::now();
        match kind.cargo_bin {
            Some(bin) => cargo(&["build", "--package", "eds-tests", "--bin", bin], &[])?,
            None => {
                (kind.install)(true)?;
            }
        }
        eprintln!("    ready in {:.1?}", started.elapsed());
    }

    let scenarios = args.scenarios.join(",");
    let mut failed = Vec::new();
    let mut reports = Vec::new();
    for kind in &kinds {
        step(&format!("interop scenarios: {}", kind.name));
        // A stale report from an earlier run must not pass for this one.
        let path = report_path(kind.name);
        let _ = std::fs::remove_file(&path);
        let env: Vec<(&str, &str)> = if scenarios.is_empty() {
            Vec::new()
        } else {
            vec![("EDS_INTEROP_SCENARIOS", scenarios.as_str())]
        };
        if let Err(e) = cargo(
            &[
                "test",
                "--package",
                "eds-tests",
                "--test",
                kind.test,
                "--",
                "--nocapture",
            ],
            &env,
        ) {
            eprintln!("    {}: {e:#}", kind.name);
            failed.push(kind.name);
        }
        match std::fs::read(&path) {
            Ok(bytes) => reports.push(
                serde_json::from_slice::<ClientReport>(&bytes)
                    .with_context(|| format!("parsing {}", path.display()))?,
            ),
            Err(_) => eprintln!(
                "    {} wrote no report ({}): it did not get as far as its scenarios",
                kind.name,
                path.display()
            ),
        }
    }

    step("summary");
    eprint!("{}", format_table(&reports));
    for r in &reports {
        eprintln!(
            "  {}: {}, install/check {} ms",
            r.client, r.about, r.install_ms
        );
    }
    let all = report_dir().join("report.json");
    std::fs::write(&all, serde_json::to_vec_pretty(&reports)?)
        .with_context(|| format!("writing {}", all.display()))?;
    eprintln!("report: {}", all.display());
    if !failed.is_empty() {
        bail!("interop failed for {failed:?}");
    }
    Ok(())
}

fn step(what: &str) {
    eprintln!("\n==> {what}");
}

fn cargo(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(&cargo)
        .args(args)
        .envs(env.iter().copied())
        .status()
        .with_context(|| format!("running {cargo} {}", args.join(" ")))?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

//! `cargo xtask bench`: runs the benchmark suite's programs, prints each
//! one's figures, and regenerates `docs/benchmarks.md` and its charts.
//!
//! The registry below names the seven benchmarks and the binary that runs
//! each; every program follows one contract (`--json <path>`, `--quick`,
//! ours and the peer alternately, every round recorded) and writes an
//! [`eds_bench_report::report::BenchResult`]. This module only orchestrates: it
//! measures nothing itself and never edits a program's figures. A benchmark
//! that fails, or has no binary yet, is recorded as failed and shown as
//! such in the report; the command then exits non-zero after running the
//! others.

mod render;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use eds_bench_report::report::BenchResult;
use serde::{Deserialize, Serialize};

/// One benchmark of the suite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Its name: the `cargo xtask bench` argument and the JSON file stem.
    pub(crate) name: &'static str,
    /// One line on what it compares.
    pub(crate) what: &'static str,
    /// The cargo package holding its program.
    pub(crate) package: &'static str,
    /// The binary target.
    pub(crate) bin: &'static str,
}

const fn entry(name: &'static str, what: &'static str) -> Entry {
    Entry {
        name,
        what,
        package: "eds-bench",
        bin: name,
    }
}

/// The seven benchmarks, in report order.
pub(crate) const REGISTRY: [Entry; 7] = [
    entry(
        "picker",
        "pick cost per algorithm and endpoint count, lb-core against tower's p2c",
    ),
    entry(
        "distribution",
        "simulated per-pod load and share within 1 s: P2C against round robin and least-loaded",
    ),
    entry(
        "harness",
        "tower's balance harness shape over loopback gRPC: lb-client against tower p2c PeakEwma",
    ),
    entry(
        "overhead",
        "per-request cost of lb-client against a plain tonic Channel",
    ),
    entry(
        "fanout",
        "pushing a change to many xDS subscribers: eds-server against go-control-plane",
    ),
    entry(
        "propagation",
        "Kubernetes change to client: eds-server against the peer path",
    ),
    entry(
        "scale",
        "memory and rebuild time at 10,000 Services / 100,000 endpoints",
    ),
];

/// How the last run of a benchmark into the output directory ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Status {
    /// It ran and wrote its JSON.
    Ok,
    /// It failed; why, in a few words.
    Failed(String),
    /// Not run by `cargo xtask bench` into this directory (a JSON there may
    /// still come from running the program by hand).
    NotRun,
}

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Benchmarks to run (default: all): picker, distribution, harness,
    /// overhead, fanout, propagation, scale.
    names: Vec<String>,
    /// A short run of each (under about two minutes each).
    #[arg(long)]
    quick: bool,
    /// Rounds per benchmark, passed to the programs as `EDS_BENCH_ROUNDS`
    /// (programs that take a round count read it; the default is theirs).
    #[arg(long)]
    rounds: Option<u32>,
    /// Where the JSON results go [default: target/bench].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Only re-render docs/benchmarks.md from the JSON already in the out
    /// directory; run nothing.
    #[arg(long)]
    render_only: bool,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// The registry entries `names` asks for, in registry order; all when empty.
fn select(names: &[String]) -> anyhow::Result<Vec<Entry>> {
    for n in names {
        if !REGISTRY.iter().any(|e| e.name == n) {
            let known: Vec<&str> = REGISTRY.iter().map(|e| e.name).collect();
            bail!("unknown benchmark {n:?}; known: {}", known.join(", "));
        }
    }
    Ok(REGISTRY
        .iter()
        .filter(|e| names.is_empty() || names.iter().any(|n| n == e.name))
        .cloned()
        .collect())
}

fn status_path(out: &Path) -> PathBuf {
    out.join("status.json")
}

fn read_statuses(out: &Path) -> BTreeMap<String, Status> {
    std::fs::read(status_path(out))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Runs one benchmark's program; `Ok` only when it exited successfully and
/// left a JSON result that parses.
fn run_one(entry: &Entry, json: &Path, args: &Args, root: &Path) -> Status {
    // A stale result must not pass for this run's.
    let _ = std::fs::remove_file(json);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    // Some programs start others of their package (the fan-out runs
    // eds-fanout-server and fanout-floor from its own directory): build them all.
    let built = Command::new(&cargo)
        .current_dir(root)
        .args(["build", "--release", "-p", entry.package, "--bins"])
        .status();
    match built {
        Ok(s) if s.success() => {}
        Ok(s) => return Status::Failed(format!("building {}'s programs: {s}", entry.package)),
        Err(e) => return Status::Failed(format!("could not start {cargo}: {e}")),
    }
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(root)
        .args([
            "run",
            "--release",
            "-p",
            entry.package,
            "--bin",
            entry.bin,
            "--",
        ])
        .arg("--json")
        .arg(json);
    if args.quick {
        cmd.arg("--quick");
    }
    if let Some(r) = args.rounds {
        cmd.env("EDS_BENCH_ROUNDS", r.to_string());
    }
    println!(
        "\n=== {}: cargo run --release -p {} --bin {} -- --json {}{}",
        entry.name,
        entry.package,
        entry.bin,
        json.display(),
        if args.quick { " --quick" } else { "" }
    );
    let started = Instant::now();
    let status = match cmd.status() {
        Ok(s) => s,
        Err(e) => return Status::Failed(format!("could not start {cargo}: {e}")),
    };
    let took = started.elapsed().as_secs_f64();
    if !status.success() {
        return Status::Failed(format!("{status} after {took:.0} s"));
    }
    match BenchResult::read(json) {
        Ok(result) => {
            println!("\n{}", render::plain(&result));
            println!("({} took {took:.0} s)", entry.name);
            Status::Ok
        }
        Err(e) => Status::Failed(format!(
            "exited successfully but wrote no usable JSON: {e:#}"
        )),
    }
}

/// Regenerates `docs/benchmarks.md` and `docs/bench/*.svg` from the out dir.
fn render_docs(out: &Path, root: &Path) -> anyhow::Result<()> {
    let statuses = read_statuses(out);
    let mut entries = Vec::new();
    for entry in &REGISTRY {
        let path = out.join(format!("{}.json", entry.name));
        let mut status = statuses.get(entry.name).cloned().unwrap_or(Status::NotRun);
        // An unreadable result shows as a failure, not as a crash of the
        // whole report.
        let result = match path.exists().then(|| BenchResult::read(&path)) {
            Some(Ok(r)) => Some(r),
            Some(Err(e)) => {
                status = Status::Failed(format!("unreadable result: {e:#}"));
                None
            }
            None => None,
        };
        entries.push((entry.clone(), status, result));
    }
    let (doc, charts) = render::markdown(&entries);
    let docs = root.join("docs");
    let chart_dir = docs.join("bench");
    std::fs::create_dir_all(&chart_dir)
        .with_context(|| format!("creating {}", chart_dir.display()))?;
    // Charts of a benchmark that no longer has them must not linger.
    for f in std::fs::read_dir(&chart_dir)?.flatten() {
        if f.path().extension().is_some_and(|e| e == "svg") {
            std::fs::remove_file(f.path())?;
        }
    }
    for (file, svg) in &charts {
        std::fs::write(chart_dir.join(file), svg).with_context(|| format!("writing {file}"))?;
    }
    let md = docs.join("benchmarks.md");
    std::fs::write(&md, doc).with_context(|| format!("writing {}", md.display()))?;
    println!(
        "wrote {} and {} chart(s) in {}",
        md.display(),
        charts.len(),
        chart_dir.display()
    );
    Ok(())
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let root = root();
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| root.join("target/bench"));
    let selected = select(&args.names)?;
    let mut failed = Vec::new();
    if !args.render_only {
        std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
        for entry in &selected {
            let json = out.join(format!("{}.json", entry.name));
            let status = run_one(entry, &json, &args, &root);
            if let Status::Failed(why) = &status {
                eprintln!("{} failed: {why}", entry.name);
                failed.push(entry.name);
            }
            // Saved after each benchmark, so an interrupted run still
            // renders what it finished.
            let mut statuses = read_statuses(&out);
            statuses.insert(entry.name.to_owned(), status);
            std::fs::write(status_path(&out), serde_json::to_vec_pretty(&statuses)?)?;
        }
    }
    render_docs(&out, &root)?;
    if !failed.is_empty() {
        bail!(
            "{} benchmark(s) failed: {}",
            failed.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_names_are_unique_and_selectable() {
        let mut names: Vec<&str> = REGISTRY.iter().map(|e| e.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), 7);
        assert_eq!(select(&[]).unwrap().len(), 7);
        let one = select(&["scale".to_owned(), "picker".to_owned()]).unwrap();
        assert_eq!(
            one.iter().map(|e| e.name).collect::<Vec<_>>(),
            ["picker", "scale"]
        );
        assert!(select(&["nope".to_owned()]).is_err());
    }

    #[test]
    fn status_round_trips_as_json() {
        let mut m = BTreeMap::new();
        m.insert("a".to_owned(), Status::Failed("exit status: 1".into()));
        m.insert("b".to_owned(), Status::Ok);
        let back: BTreeMap<String, Status> =
            serde_json::from_slice(&serde_json::to_vec(&m).unwrap()).unwrap();
        assert_eq!(back, m);
    }
}

//! `cargo xtask e2e`: the end-to-end scenarios, one test binary each, with
//! a per-scenario summary, failing if any scenario failed.
//!
//! `--cluster local` (the default) runs on the local control plane: the
//! binaries are ensured (built from Go modules once, then cached), then each
//! scenario runs as `cargo test -p eds-tests --test <name> -- --nocapture`
//! (lb-client's examples are built first: the `lb_client` scenario runs one).
//! Each test binary starts its own control plane tied to its process (gone
//! when it exits, pass or fail), or attaches to `$EDS_CLUSTER_DIR`. The
//! `deploy` scenario applies deploy/'s RBAC and runs eds-server on nothing
//! but that ServiceAccount's token (there is no kubelet to run the
//! Deployment itself).
//!
//! The node scenarios (`node_image`, `node_cluster`, `node_e2e`) run last,
//! on real nodes (containerd, runc, kubelet, kube-proxy, CoreDNS, built
//! once and cached): `node_e2e` installs the Helm chart and runs the
//! echo backend, lb-client's example, grpc-go and edsctl as an operator and
//! a service team would. `--scenario node_e2e` runs it alone.
//!
//! `--cluster kind` creates a kind cluster with a worker per zone (the
//! only kind-specific steps are creating it and `kind load image-archive`),
//! then runs the stages of `eds_devkit::e2e` that `node_e2e` runs locally:
//! the same images, chart, manifests and assertions. It needs Docker and
//! kind, which this project's machines do not have: that path has not run
//! here, and the shared stages are what the local run tests.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use eds_devkit::e2e;

/// The scenarios, in the order they run: cheap and foundational first.
const SCENARIOS: [&str; 4] = ["deploy", "eds_server", "lb_client", "demo"];

/// The scenarios on real nodes, after the others: ignored by a plain
/// `cargo test` (they need root and the node components), so they run with
/// `--ignored`, one test at a time.
const NODE_SCENARIOS: [&str; 3] = ["node_image", "node_cluster", "node_e2e"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ClusterKind {
    /// The local control plane (processes built from Go modules).
    Local,
    /// A kind cluster (needs Docker).
    Kind,
}

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Where the scenarios run.
    #[arg(long, value_enum, default_value_t = ClusterKind::Local)]
    cluster: ClusterKind,
    /// Run only these scenarios (repeatable), e.g. `--scenario demo`
    /// (`--cluster local`).
    #[arg(long = "scenario")]
    only: Vec<String>,
    /// Keep the kind cluster after the run (`--cluster kind`).
    #[arg(long)]
    keep: bool,
}

/// One scenario's outcome.
#[derive(Debug)]
struct Outcome {
    name: String,
    passed: u32,
    failed: u32,
    ignored: u32,
    ok: bool,
    took: Duration,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    match args.cluster {
        ClusterKind::Local => local(&args.only),
        ClusterKind::Kind => kind(args.keep),
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every scenario: the fixed list, then `interop_*` test files if present.
fn scenarios() -> anyhow::Result<Vec<String>> {
    let dir = workspace().join("tests/tests");
    let mut all: Vec<String> = SCENARIOS
        .iter()
        .filter(|s| dir.join(format!("{s}.rs")).is_file())
        .map(|s| (*s).to_owned())
        .collect();
    let mut interop: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let stem = name.strip_suffix(".rs")?;
            stem.starts_with("interop_").then(|| stem.to_owned())
        })
        .collect();
    interop.sort();
    all.extend(interop);
    all.extend(
        NODE_SCENARIOS
            .iter()
            .filter(|s| dir.join(format!("{s}.rs")).is_file())
            .map(|s| (*s).to_owned()),
    );
    Ok(all)
}

fn local(only: &[String]) -> anyhow::Result<()> {
    let mut names = scenarios()?;
    if !only.is_empty() {
        for o in only {
            if !names.contains(o) {
                bail!("no scenario {o}; scenarios: {}", names.join(", "));
            }
        }
        names.retain(|n| only.contains(n));
    }
    eprintln!("==> local control plane binaries (built once from Go modules, then cached)");
    eds_devkit::cluster::ensure_built(true).context("building the local control plane")?;
    eds_devkit::netns::preflight().context("checking what the pod network needs")?;
    if names.iter().any(|n| NODE_SCENARIOS.contains(&n.as_str())) {
        eprintln!("==> node components (built once from Go modules, then cached; Debian packages)");
        eds_devkit::cluster::ensure_node_built(true).context("building the node components")?;
    }
    if names.iter().any(|n| n == "lb_client" || n == "node_e2e") {
        // A scenario runs lb-client's documented example as a user would;
        // `cargo test -p eds-tests` alone does not build another package's examples.
        eprintln!("==> cargo build -p lb-client --examples");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let status = Command::new(&cargo)
            .current_dir(workspace())
            .args(["build", "-p", "lb-client", "--examples"])
            .status()
            .with_context(|| format!("running {cargo} build --examples"))?;
        if !status.success() {
            bail!("building lb-client's examples failed ({status})");
        }
    }
    match std::env::var_os("EDS_CLUSTER_DIR") {
        Some(dir) => eprintln!(
            "==> scenarios attach to the control plane in {}",
            Path::new(&dir).display()
        ),
        None => eprintln!("==> each scenario starts its own control plane, tied to its process"),
    }
    let started = Instant::now();
    let mut outcomes = Vec::new();
    for name in &names {
        outcomes.push(scenario(name)?);
    }
    eprintln!(
        "\n==> e2e summary (local cluster, {:.0?} in all)",
        started.elapsed()
    );
    println!(
        "{:<22} {:<6} {:>6} {:>6} {:>7} {:>9}",
        "SCENARIO", "RESULT", "PASSED", "FAILED", "IGNORED", "DURATION"
    );
    for o in &outcomes {
        println!(
            "{:<22} {:<6} {:>6} {:>6} {:>7} {:>8.1}s",
            o.name,
            if o.ok { "ok" } else { "FAILED" },
            o.passed,
            o.failed,
            o.ignored,
            o.took.as_secs_f64()
        );
    }
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| !o.ok)
        .map(|o| o.name.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("e2e: scenario(s) failed: {}", failed.join(", "));
    }
    Ok(())
}

/// Runs one test binary, echoing its output and reading its `test result:` line.
fn scenario(name: &str) -> anyhow::Result<Outcome> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let started = Instant::now();
    let mut args = vec![
        "test",
        "-p",
        "eds-tests",
        "--test",
        name,
        "--",
        "--nocapture",
    ];
    if NODE_SCENARIOS.contains(&name) {
        args.extend(["--ignored", "--test-threads=1"]);
    }
    eprintln!("\n==> scenario {name}: cargo {}", args.join(" "));
    let mut child = Command::new(&cargo)
        .current_dir(workspace())
        .args(&args)
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {cargo} test --test {name}"))?;
    let stdout = child.stdout.take().context("the child's stdout")?;
    let mut result: Option<(u32, u32, u32)> = None;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(r) = parse_result(&line) {
            result = Some(r);
        }
    }
    let status = child.wait()?;
    let (passed, failed, ignored) = result.unwrap_or((0, 0, 0));
    Ok(Outcome {
        name: name.to_owned(),
        passed,
        failed,
        ignored,
        // A binary that did not build or crashed has no result line: that is a failure too.
        ok: status.success() && result.is_some() && failed == 0,
        took: started.elapsed(),
    })
}

/// `test result: ok. 3 passed; 0 failed; 1 ignored; ...` -> (3, 0, 1).
fn parse_result(line: &str) -> Option<(u32, u32, u32)> {
    let rest = line.trim().strip_prefix("test result: ")?;
    let count = |what: &str| {
        rest.split(['.', ';'])
            .find_map(|part| part.trim().strip_suffix(what)?.trim().parse::<u32>().ok())
    };
    Some((
        count(" passed")?,
        count(" failed")?,
        count(" ignored").unwrap_or(0),
    ))
}

/// `--cluster kind`: what it needs, checked first; then a kind cluster
/// with a worker per zone, the images loaded, and [`e2e::run`]'s stages,
/// the same the local nodes run.
fn kind(keep: bool) -> anyhow::Result<()> {
    let mut missing = Vec::new();
    let docker = which("docker");
    let kind = which("kind");
    if docker.is_none() {
        missing.push("`docker` is not on PATH".to_owned());
    }
    if kind.is_none() {
        missing.push("`kind` is not on PATH (https://kind.sigs.k8s.io)".to_owned());
    }
    if let Some(docker) = &docker {
        match Command::new(docker)
            .arg("info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
        {
            Ok(o) if o.status.success() => {}
            Ok(o) => missing.push(format!(
                "the Docker daemon is not reachable (`docker info` failed: {})",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => missing.push(format!("`docker info` could not run: {e}")),
        }
    }
    if !missing.is_empty() {
        for m in &missing {
            eprintln!("e2e --cluster kind: {m}");
        }
        bail!(
            "e2e --cluster kind cannot run here: {}. `cargo xtask e2e` (--cluster local) needs neither.",
            missing.join("; ")
        );
    }
    let kind = kind.context("kind is on PATH")?;
    let dir = workspace().join("target/eds-kind");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;

    // The same binaries and images as the local nodes run.
    eprintln!("==> building eds-server, the echo backend, lb-client's example, edsctl, grpc-go");
    let bins = e2e::build_binaries()?;
    let tars = e2e::app_images(&dir.join("images"), &bins)?;
    let kubectl = eds_devkit::cluster::ensure_built(true)?.kubectl;
    let helm = eds_devkit::tools::ensure_helm(true)?;

    // Only these two steps are kind's own: creating the cluster, loading images.
    let config = dir.join("kind.yaml");
    std::fs::write(&config, e2e::kind_config())?;
    let kubeconfig = dir.join("kubeconfig");
    eprintln!("==> kind create cluster --name {KIND_CLUSTER} (3 workers in zone-a..c)");
    checked(
        Command::new(&kind)
            .args([
                "create",
                "cluster",
                "--name",
                KIND_CLUSTER,
                "--wait",
                "180s",
            ])
            .arg("--config")
            .arg(&config)
            .arg("--kubeconfig")
            .arg(&kubeconfig),
    )?;
    let result = (|| {
        for tar in &tars {
            eprintln!("==> kind load image-archive {}", tar.display());
            checked(
                Command::new(&kind)
                    .args(["load", "image-archive", "--name", KIND_CLUSTER])
                    .arg(tar),
            )?;
        }
        let nodes = e2e::KindNodes;
        let target = e2e::Target {
            kubectl,
            helm,
            kubeconfig: kubeconfig.clone(),
            work_dir: dir.clone(),
            nodes: &nodes,
        };
        e2e::run(&target, &bins)
    })();
    if keep {
        eprintln!(
            "==> kept the kind cluster {KIND_CLUSTER} (KUBECONFIG={}); `kind delete cluster --name {KIND_CLUSTER}` removes it",
            kubeconfig.display()
        );
    } else {
        eprintln!("==> kind delete cluster --name {KIND_CLUSTER}");
        checked(Command::new(&kind).args(["delete", "cluster", "--name", KIND_CLUSTER]))?;
    }
    result
}

/// The kind cluster `--cluster kind` creates (and deletes unless `--keep`).
const KIND_CLUSTER: &str = "eds-e2e";

fn checked(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::parse_result;

    #[test]
    fn parses_the_libtest_result_line() {
        assert_eq!(
            parse_result(
                "test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 2.01s"
            ),
            Some((3, 0, 1))
        );
        assert_eq!(
            parse_result(
                "test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out"
            ),
            Some((1, 2, 0))
        );
        assert_eq!(parse_result("running 3 tests"), None);
    }
}

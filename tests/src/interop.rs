//! Stock third-party xDS clients for interop tests: build them (cached) and
//! run them against an eds-server.
//!
//! ```text
//!  tests/interop/grpc-go/{go.mod,go.sum,main.go}
//!     ──go build -mod=readonly (modules through the Go module proxy)──>
//!  <cache>/interop/grpc-go-<hash of the three files>/client
//!
//!  GrpcGoClient::start(bootstrap, target, n)   xds:///<target>, n Echo calls
//!     .summary()  -> EchoSummary                 replies per pod and zone, errors
//!     .stop()                                    (held clients stay connected until then)
//! ```
//!
//! The client runs on the host: it reaches eds-server on loopback and the
//! echo backends through the pod network's route (callers check it with
//! [`crate::netns::PodNetwork::verify_route`] first). It is a tied child
//! process, so it never outlives the test. This module builds and drives
//! the client; what to assert about its traffic is the tests' business.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Deserialize;
use serde_json::json;

use crate::cluster::build::cache_dir;
use crate::process::{ChildProcess, Lifetime};

/// The files the grpc-go client is built from; their contents name the build.
const GRPC_GO_FILES: [&str; 3] = ["go.mod", "go.sum", "main.go"];

/// The grpc-go client's source: `tests/interop/grpc-go`.
pub fn grpc_go_source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/grpc-go")
}

/// Where the client for the current source is (or will be) cached:
/// `<cache>/interop/grpc-go-<hash>/client`.
pub fn grpc_go_client_path() -> anyhow::Result<PathBuf> {
    let src = grpc_go_source();
    let mut content = Vec::new();
    for name in GRPC_GO_FILES {
        let path = src.join(name);
        let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        content.extend_from_slice(name.as_bytes());
        content.push(0);
        content.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        content.extend_from_slice(&bytes);
    }
    let hash = lb_core::rng::hash_bytes(&content);
    Ok(cache_dir()?
        .join("interop")
        .join(format!("grpc-go-{hash:016x}"))
        .join("client"))
}

/// Returns the cached grpc-go client, building it first if this version of
/// the source has not been built. `progress` prints what happens to stderr.
pub fn ensure_grpc_go_client(progress: bool) -> anyhow::Result<PathBuf> {
    let client = grpc_go_client_path()?;
    if client.is_file() {
        return Ok(client);
    }
    let dir = client.parent().context("the client path has a parent")?;
    let root = dir.parent().context("the client dir has a parent")?;
    fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    // Test binaries and `cargo xtask test` may race to build.
    let lock = File::create(root.join("grpc-go-build.lock"))?;
    lock.lock().context("locking the interop build cache")?;
    if client.is_file() {
        return Ok(client);
    }
    let go = Command::new("go").arg("version").output().context(
        "the Go toolchain is needed to build the grpc-go interop client (tests/interop/grpc-go), and `go` was not found on PATH",
    )?;
    if !go.status.success() {
        bail!(
            "`go version` failed: {}",
            String::from_utf8_lossy(&go.stderr)
        );
    }
    if progress {
        eprintln!(
            "==> go build the grpc-go interop client ({}) -> {}",
            String::from_utf8_lossy(&go.stdout).trim(),
            client.display()
        );
    }
    let started = Instant::now();
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let partial = dir.join("client.partial");
    let out = Command::new("go")
        .arg("build")
        .arg("-o")
        .arg(&partial)
        .arg(".")
        .current_dir(grpc_go_source())
        // The committed go.sum pins every module: never rewrite go.mod or go.sum.
        .env("GOFLAGS", "-mod=readonly -buildvcs=false")
        .output()
        .context("running `go build` for the grpc-go interop client")?;
    if !out.status.success() {
        bail!(
            "`go build` of the grpc-go interop client in {} failed ({}); if go.mod changed, run `go mod tidy` there and commit go.sum:\n{}{}",
            grpc_go_source().display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    fs::rename(&partial, &client)
        .with_context(|| format!("moving the built client to {}", client.display()))?;
    if progress {
        eprintln!(
            "    built in {:.0?} (Go's module and build caches make rebuilds cheap)",
            started.elapsed()
        );
    }
    Ok(client)
}

/// A gRPC xDS bootstrap (gRFC A27) for one eds-server: insecure channel
/// credentials, xDS v3, and the node's id and zone (`locality.zone`), from
/// which eds-server shapes the client's locality priorities and weights.
pub fn grpc_bootstrap(xds: SocketAddr, node_id: &str, zone: Option<&str>) -> serde_json::Value {
    let mut node = json!({ "id": node_id });
    if let Some(zone) = zone {
        node["locality"] = json!({ "zone": zone });
    }
    json!({
        "xds_servers": [{
            "server_uri": xds.to_string(),
            "channel_creds": [{ "type": "insecure" }],
            "server_features": ["xds_v3"],
        }],
        "node": node,
    })
}

/// What the grpc-go client prints when its calls are done.
#[derive(Debug, Clone, Deserialize)]
pub struct EchoSummary {
    /// The xDS target it dialled (without `xds:///`).
    pub target: String,
    /// Calls asked for.
    pub requested: usize,
    /// Calls answered.
    pub ok: usize,
    /// Calls that failed.
    pub failed: usize,
    /// Calls not started because the overall deadline passed.
    pub not_sent: usize,
    /// Answers per pod.
    pub pods: BTreeMap<String, usize>,
    /// Answers per zone.
    pub zones: BTreeMap<String, usize>,
    /// Failures by `<code>: <message>` (a few kinds at most).
    pub errors: BTreeMap<String, usize>,
    /// How long the calls took, in milliseconds.
    pub elapsed_ms: u64,
}

impl EchoSummary {
    /// Answers from `pod`.
    pub fn pod(&self, pod: &str) -> usize {
        self.pods.get(pod).copied().unwrap_or(0)
    }
}

/// A run of the grpc-go client.
#[derive(Debug, Clone)]
pub struct GrpcGoRun {
    /// The target, dialled as `xds:///<target>`.
    pub target: String,
    /// Number of Echo calls, one after another.
    pub calls: usize,
    /// The bootstrap file (`GRPC_XDS_BOOTSTRAP`).
    pub bootstrap: PathBuf,
    /// Where the summary and the log go.
    pub dir: PathBuf,
    /// A name for its files, unique within `dir`.
    pub name: String,
    /// Stay connected after the calls until stopped, so the server's view of
    /// the stream can be inspected.
    pub hold: bool,
}

/// A running grpc-go client; stopped when dropped.
#[derive(Debug)]
pub struct GrpcGoClient {
    process: ChildProcess,
    summary: PathBuf,
}

impl GrpcGoClient {
    /// Starts the client (built with [`ensure_grpc_go_client`]).
    pub fn start(binary: &Path, run: &GrpcGoRun) -> anyhow::Result<Self> {
        fs::create_dir_all(&run.dir)?;
        let summary = run.dir.join(format!("{}.summary.json", run.name));
        let _ = fs::remove_file(&summary);
        let mut cmd = Command::new(binary);
        cmd.arg("-target")
            .arg(&run.target)
            .arg("-n")
            .arg(run.calls.to_string())
            .arg("-summary")
            .arg(&summary)
            .env("GRPC_XDS_BOOTSTRAP", &run.bootstrap)
            .env_remove("GRPC_XDS_BOOTSTRAP_CONFIG");
        // grpc-go's warnings and errors (a NACK's reason among them) go to
        // the log; GRPC_GO_LOG_SEVERITY_LEVEL=info (and
        // GRPC_GO_LOG_VERBOSITY_LEVEL=99) in the test's environment say more.
        if std::env::var_os("GRPC_GO_LOG_SEVERITY_LEVEL").is_none() {
            cmd.env("GRPC_GO_LOG_SEVERITY_LEVEL", "warning");
        }
        if run.hold {
            cmd.arg("-hold");
        }
        let log = run.dir.join(format!("{}.log", run.name));
        let process = ChildProcess::spawn(
            &format!("grpc-go client {}", run.name),
            cmd,
            &log,
            Lifetime::Tied,
        )?;
        Ok(Self { process, summary })
    }

    /// Waits for the summary; fails with the client's log if it exits
    /// without one or `timeout` passes.
    pub async fn summary(&mut self, timeout: Duration) -> anyhow::Result<EchoSummary> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(text) = fs::read_to_string(&self.summary) {
                return serde_json::from_str(&text)
                    .with_context(|| format!("parsing the grpc-go summary {text:?}"));
            }
            self.process.check_running()?;
            if Instant::now() > deadline {
                bail!(
                    "the grpc-go client printed no summary within {timeout:?}; its log {}:\n{}",
                    self.log().display(),
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The client's log file.
    pub fn log(&self) -> &Path {
        self.process.log()
    }

    /// The client's log (grpc-go warnings and errors), for failure messages.
    pub fn log_text(&self) -> String {
        fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// Stops the client (SIGTERM, which a held client waits for).
    pub fn stop(mut self) {
        self.process.stop(Duration::from_secs(3));
    }
}

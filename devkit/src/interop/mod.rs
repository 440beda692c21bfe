//! Stock third-party xDS clients against eds-server: one contract every
//! client program speaks, the table of clients, and the scenario driver
//! ([`scenario`]) that runs the same scenarios against each.
//!
//! ```text
//!  CLIENTS (data)   grpc-go    devkit/interop/grpc-go   go build, cached by source hash
//!                   grpcio     devkit/interop/grpcio    venv under <cache>/interop, pinned
//!                   tonic-xds  src/bin/tonic-xds-client.rs (crates.io tonic-xds, same tonic)
//!
//!  the contract     <program> --target NAME [--count N] [--rate R] [--header name=value
//!                   [--key-cycle N]] [--rpc-timeout S] [--out FILE] [--hold]
//!                   env GRPC_XDS_BOOTSTRAP=<bootstrap.json>; dials xds:///NAME
//!                   one JSON line per call:
//!                   {"t_ms":<unix ms at the end>,"lat_ms":..,"code":0,"pod":..,"zone":..,"key":..}
//!                   {"t_ms":..,"lat_ms":..,"code":14,"msg":..}
//!
//!  ClientKind::install  -> Program        RunningClient::start(kind, program, &ClientRun)
//!                                           .poll() / .records()   tails --out as calls end
//!                                           .stop()                 SIGTERM, SIGKILL later
//! ```
//!
//! Calls are one at a time, paced at `--rate` against the start, so the
//! per-call records are a timeline the driver can read readiness shifts off
//! (`t_ms` is wall-clock: the driver and every client share the host clock).
//! Clients run on the host: they reach eds-server on loopback and the echo
//! backends through the pod network's route (callers check it with
//! [`crate::netns::PodNetwork::verify_route`] first). Every client is a tied
//! child process, so none outlives the test. What to assert is the
//! scenarios' business; this module builds, starts and reads clients.

pub mod grpc_go;
pub mod grpcio;
pub mod scenario;

use std::ffi::OsString;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;
use serde_json::json;

pub use grpc_go::{ensure_grpc_go_client, grpc_go_client_path, grpc_go_source};
pub use grpcio::{ensure_grpcio_venv, grpcio_client_script};

use crate::process::{ChildProcess, Lifetime};

/// A behaviour a client may lack. A scenario checking it still runs and
/// reports its numbers for such a client, but prints the reason instead of
/// asserting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    /// Keeps traffic in its own zone (priorities and locality weights).
    ZoneAffinity,
    /// Ring hash on a request header (from the gRFC A52 list or the legacy enum).
    RingHash,
}

/// How to start a client program: the executable and its leading arguments.
#[derive(Debug, Clone)]
pub struct Program {
    /// The executable.
    pub program: PathBuf,
    /// Arguments before the contract's flags (a script path, say).
    pub args: Vec<OsString>,
}

/// One kind of interop client. Adding a client is one more entry in
/// [`CLIENTS`]: a program speaking the contract and these few facts.
#[derive(Debug, Clone, Copy)]
pub struct ClientKind {
    /// Short name: reports, node ids and file names.
    pub name: &'static str,
    /// What it is and where it comes from, for the report.
    pub about: &'static str,
    /// Builds, installs or finds the program (idempotent and cached);
    /// `progress` prints what happens to stderr.
    pub install: fn(progress: bool) -> anyhow::Result<Program>,
    /// A bin of this package, which cargo builds with the tests, so
    /// `install` only finds it; automation builds it with `cargo build --bin`.
    pub cargo_bin: Option<&'static str>,
    /// The integration test (`tests/tests/<test>.rs`) that runs the suite for it.
    pub test: &'static str,
    /// The bootstrap's `server_uri` for an xDS server on `addr`.
    pub server_uri: fn(addr: SocketAddr) -> String,
    /// Environment that makes the client's own log useful (warnings, NACK reasons).
    pub env: &'static [(&'static str, &'static str)],
    /// What the client is known not to do, and why.
    pub lacks: &'static [(Capability, &'static str)],
}

impl ClientKind {
    /// Why this client lacks `cap`, if it does.
    pub fn lacks(&self, cap: Capability) -> Option<&'static str> {
        self.lacks
            .iter()
            .find(|(c, _)| *c == cap)
            .map(|(_, why)| *why)
    }
}

fn host_port(addr: SocketAddr) -> String {
    addr.to_string()
}

fn http_uri(addr: SocketAddr) -> String {
    // tonic-xds hands the URI to tonic's Endpoint, which needs a scheme for
    // a plaintext connection (a bare authority means TLS to it).
    format!("http://{addr}")
}

/// grpc-go, built from `devkit/interop/grpc-go` (grpc v1.85.0).
pub const GRPC_GO: ClientKind = ClientKind {
    name: "grpc-go",
    about: "grpc-go v1.85.0 (devkit/interop/grpc-go, Go module proxy)",
    install: |progress| {
        Ok(Program {
            program: ensure_grpc_go_client(progress)?,
            args: Vec::new(),
        })
    },
    cargo_bin: None,
    test: "interop_grpc_go",
    server_uri: host_port,
    env: &[("GRPC_GO_LOG_SEVERITY_LEVEL", "warning")],
    lacks: &[],
};

/// Python grpcio (C-core), from PyPI into a cached venv.
pub const GRPCIO: ClientKind = ClientKind {
    name: "grpcio",
    about: "Python grpcio 1.85.3, C-core (devkit/interop/grpcio, PyPI venv)",
    install: |progress| {
        Ok(Program {
            program: ensure_grpcio_venv(progress)?,
            args: vec![grpcio_client_script().into()],
        })
    },
    cargo_bin: None,
    test: "interop_grpcio",
    server_uri: host_port,
    // C-core's own log: errors only, so a NACK's reason is there and little else.
    env: &[("GRPC_VERBOSITY", "ERROR")],
    lacks: &[],
};

/// tonic-xds 0.1.0-alpha.4 from crates.io, built as a bin of this crate.
pub const TONIC_XDS: ClientKind = ClientKind {
    name: "tonic-xds",
    about: "tonic-xds 0.1.0-alpha.4 (crates.io; src/bin/tonic-xds-client.rs)",
    install: |_| {
        Ok(Program {
            program: tonic_xds_client_path()?,
            args: Vec::new(),
        })
    },
    cargo_bin: Some("tonic-xds-client"),
    test: "interop_tonic_xds",
    server_uri: http_uri,
    env: &[("RUST_LOG", "warn")],
    lacks: &[
        (
            Capability::ZoneAffinity,
            "tonic-xds 0.1.0-alpha.4 puts every HEALTHY/UNKNOWN endpoint of the \
             ClusterLoadAssignment into one P2C pool: it ignores priorities and \
             locality weights, so it cannot keep traffic in its zone",
        ),
        (
            Capability::RingHash,
            "tonic-xds 0.1.0-alpha.4 reads only the legacy Cluster.lb_policy \
             (ROUND_ROBIN, LEAST_REQUEST), not the gRFC A52 list; eds-server \
             puts the list's round-robin fallback there, so it ACKs a ring-hash \
             Service's Cluster and balances round robin, without stickiness",
        ),
    ],
};

/// Every interop client, in report order.
pub const CLIENTS: &[ClientKind] = &[GRPC_GO, GRPCIO, TONIC_XDS];

/// The client named `name`.
pub fn client_kind(name: &str) -> Option<&'static ClientKind> {
    CLIENTS.iter().find(|k| k.name == name)
}

/// The tonic-xds client binary: `$EDS_TONIC_XDS_CLIENT`, or next to the
/// running test binary, where cargo puts this package's binaries.
pub fn tonic_xds_client_path() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("EDS_TONIC_XDS_CLIENT") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    [exe.parent(), exe.parent().and_then(Path::parent)]
        .into_iter()
        .flatten()
        .map(|d| d.join("tonic-xds-client"))
        .find(|p| p.is_file())
        .context("tonic-xds-client not found next to the test binary; build it (`cargo build -p eds-tests --bins`) or set EDS_TONIC_XDS_CLIENT")
}

/// A hash naming the contents of `files` in `dir`, for build caches.
pub fn source_hash(dir: &Path, files: &[&str]) -> anyhow::Result<u64> {
    let mut content = Vec::new();
    for name in files {
        let path = dir.join(name);
        let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        content.extend_from_slice(name.as_bytes());
        content.push(0);
        content.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        content.extend_from_slice(&bytes);
    }
    Ok(lb_core::rng::hash_bytes(&content))
}

/// A gRPC xDS bootstrap (gRFC A27) for one eds-server at `server_uri`:
/// insecure channel credentials, xDS v3, and the node's id and zone
/// (`locality.zone`), from which eds-server shapes the client's locality
/// priorities and weights.
pub fn grpc_bootstrap(server_uri: &str, node_id: &str, zone: Option<&str>) -> serde_json::Value {
    let mut node = json!({ "id": node_id });
    if let Some(zone) = zone {
        node["locality"] = json!({ "zone": zone });
    }
    json!({
        "xds_servers": [{
            "server_uri": server_uri,
            "channel_creds": [{ "type": "insecure" }],
            "server_features": ["xds_v3"],
        }],
        "node": node,
    })
}

/// One call, as a client printed it.
#[derive(Debug, Clone, Deserialize)]
pub struct Rpc {
    /// Wall-clock time the call ended, in Unix milliseconds.
    pub t_ms: u64,
    /// How long the call took, in milliseconds.
    #[serde(default)]
    pub lat_ms: f64,
    /// The gRPC status code (0 is OK).
    pub code: i32,
    /// The pod that answered (OK calls).
    #[serde(default)]
    pub pod: Option<String>,
    /// Its zone (OK calls).
    #[serde(default)]
    pub zone: Option<String>,
    /// The header value sent, if any.
    #[serde(default)]
    pub key: Option<String>,
    /// The status message (failed calls).
    #[serde(default)]
    pub msg: Option<String>,
}

impl Rpc {
    /// Whether the call succeeded.
    pub fn ok(&self) -> bool {
        self.code == 0
    }
}

/// What to run a client with.
#[derive(Debug, Clone)]
pub struct ClientRun {
    /// The target, dialled as `xds:///<target>`.
    pub target: String,
    /// The xDS node id (unique per run: the server's view is looked up by it).
    pub node_id: String,
    /// The node's zone, if any.
    pub zone: Option<String>,
    /// eds-server's xDS address.
    pub xds: SocketAddr,
    /// Calls to make; 0: until stopped.
    pub count: u64,
    /// Calls per second.
    pub rate: f64,
    /// Request metadata `name=value`, and how many values to cycle through.
    pub header: Option<(String, u32)>,
    /// Seconds per call.
    pub rpc_timeout: f64,
    /// Stay connected after the last call until stopped.
    pub hold: bool,
    /// Where the bootstrap, the records and the log go.
    pub dir: PathBuf,
}

impl ClientRun {
    /// A run of `count` calls at `rate` from `node_id` in `zone`.
    pub fn new(
        target: &str,
        node_id: &str,
        zone: Option<&str>,
        xds: SocketAddr,
        dir: &Path,
    ) -> Self {
        Self {
            target: target.to_owned(),
            node_id: node_id.to_owned(),
            zone: zone.map(str::to_owned),
            xds,
            count: 0,
            rate: 100.0,
            header: None,
            rpc_timeout: 5.0,
            hold: false,
            dir: dir.to_owned(),
        }
    }
}

/// A running client; stopped when dropped.
#[derive(Debug)]
pub struct RunningClient {
    process: ChildProcess,
    out: PathBuf,
    offset: u64,
    partial: String,
    records: Vec<Rpc>,
    count: u64,
}

impl RunningClient {
    /// Writes the bootstrap and starts `program` as `kind` for `run`.
    pub fn start(kind: &ClientKind, program: &Program, run: &ClientRun) -> anyhow::Result<Self> {
        fs::create_dir_all(&run.dir)?;
        let bootstrap = run.dir.join(format!("{}.bootstrap.json", run.node_id));
        let json = grpc_bootstrap(
            &(kind.server_uri)(run.xds),
            &run.node_id,
            run.zone.as_deref(),
        );
        fs::write(&bootstrap, serde_json::to_vec_pretty(&json)?)?;
        let out = run.dir.join(format!("{}.jsonl", run.node_id));
        let _ = fs::remove_file(&out);
        let mut cmd = Command::new(&program.program);
        cmd.args(&program.args)
            .arg("--target")
            .arg(&run.target)
            .arg("--count")
            .arg(run.count.to_string())
            .arg("--rate")
            .arg(run.rate.to_string())
            .arg("--rpc-timeout")
            .arg(run.rpc_timeout.to_string())
            .arg("--out")
            .arg(&out)
            .env("GRPC_XDS_BOOTSTRAP", &bootstrap)
            .env_remove("GRPC_XDS_BOOTSTRAP_CONFIG");
        if let Some((header, cycle)) = &run.header {
            cmd.arg("--header").arg(header);
            cmd.arg("--key-cycle").arg(cycle.to_string());
        }
        if run.hold {
            cmd.arg("--hold");
        }
        // The caller's environment wins, so a person can turn logs up.
        for (k, v) in kind.env {
            if std::env::var_os(k).is_none() {
                cmd.env(k, v);
            }
        }
        let log = run.dir.join(format!("{}.log", run.node_id));
        let process = ChildProcess::spawn(
            &format!("{} client {}", kind.name, run.node_id),
            cmd,
            &log,
            Lifetime::Tied,
        )?;
        Ok(Self {
            process,
            out,
            offset: 0,
            partial: String::new(),
            records: Vec::new(),
            count: run.count,
        })
    }

    /// Reads the records written since the last poll; fails if the client
    /// exited before its calls were done, or printed something that is not
    /// a record.
    pub fn poll(&mut self) -> anyhow::Result<&[Rpc]> {
        let before = self.records.len();
        self.read_new(true)?;
        if !self.done()
            && let Err(e) = self.process.check_running()
        {
            // It may have written its last records and exited since the read.
            self.read_new(true)?;
            if !self.done() {
                return Err(e);
            }
        }
        Ok(&self.records[before..])
    }

    fn read_new(&mut self, strict: bool) -> anyhow::Result<()> {
        let Ok(mut file) = fs::File::open(&self.out) else {
            return Ok(()); // not created yet
        };
        file.seek(SeekFrom::Start(self.offset))?;
        let mut buf = String::new();
        self.offset += file.read_to_string(&mut buf)? as u64;
        self.partial.push_str(&buf);
        // Only whole lines: the last one may still be being written.
        while let Some(end) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=end).collect();
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            match serde_json::from_str::<Rpc>(line) {
                Ok(rpc) => self.records.push(rpc),
                Err(e) if strict => {
                    return Err(e)
                        .with_context(|| format!("a client record that does not parse: {line:?}"));
                }
                Err(_) => {}
            }
        }
        Ok(())
    }

    /// Every record so far (as of the last poll).
    pub fn records(&self) -> &[Rpc] {
        &self.records
    }

    /// Whether a counted run has made all its calls.
    pub fn done(&self) -> bool {
        self.count > 0 && self.records.len() as u64 >= self.count
    }

    /// Polls until a counted run is done; fails with the log after `timeout`.
    pub async fn wait_done(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            self.poll()?;
            if self.done() {
                return Ok(());
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "the client made {} of {} calls within {timeout:?}; its log {}:\n{}",
                self.records.len(),
                self.count,
                self.log().display(),
                crate::process::log_tail(self.log(), 30)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The client's log file (its stderr and stdout).
    pub fn log(&self) -> &Path {
        self.process.log()
    }

    /// The last lines of the client's log, for failure messages.
    pub fn log_tail(&self) -> String {
        crate::process::log_tail(self.log(), 30)
    }

    /// Stops the client (SIGTERM, SIGKILL after 3 s) and reads what it
    /// wrote until then.
    pub fn stop(&mut self) -> &[Rpc] {
        self.process.stop(Duration::from_secs(3));
        // A line cut short by the kill is dropped rather than failing the run.
        let _ = self.read_new(false);
        &self.records
    }
}

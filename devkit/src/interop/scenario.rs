//! The interop scenarios, run the same way against every [`ClientKind`]:
//! one eds-server, six echo pods in two zones, and the client's own
//! per-call records as the only evidence of what it did.
//!
//! ```text
//!  run_suite(kind)
//!    namespace, zone-a: echo-a0..a2, zone-b: echo-b0..b2 (real backends on pod IPs)
//!    Services echo (default policy), echo-lr (least-request), echo-rh (ring-hash on x-eds-key)
//!    eds-server in-process, default flags (a not-ready pod is not sent to stock
//!      clients but still counts as its zone's capacity, so a zone that loses
//!      pods spills in proportion instead of hiding the loss)
//!    reach-all  zone-local  zone-spill  readiness x20  scale-up  least-request
//!    ring-hash  bad-input
//!  -> ClientReport: stderr table + target/interop/report-<client>.json
//! ```
//!
//! Scenarios assert behaviour only (traffic reaches every ready pod, leaves
//! a not-ready one, stays in zone, spills, sticks per key, finds a new pod,
//! the Cluster is ACKed); every wait is bounded by a generous timeout, and
//! the times measured (readiness change to traffic shift) are reported,
//! never asserted. A client that lacks a behaviour ([`ClientKind::lacks`])
//! still runs the scenario; the report says `limited` with the reason.
//!
//! Not a benchmark: clients call one at a time at a modest rate, so the
//! shift times have a resolution of a few calls (about 15 ms at 200 calls
//! per second over three pods).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::{Capability, ClientKind, ClientRun, Program, Rpc, RunningClient};
use crate::harness::{
    Backend, EchoOptions, PodSpec, ServicePortSpec, Target, TestCluster, TestNamespace, TestPod,
    eventually,
};
use crate::server::{Server, start_server};
use crate::xds::{CDS, LDS};

/// The zone every zoned client says it is in.
pub const CLIENT_ZONE: &str = "zone-a";
/// The header the ring-hash Service hashes on.
pub const HASH_HEADER: &str = "x-eds-key";
/// Readiness changes measured per client.
pub const CHANGES: usize = 20;
/// How long a pod must be absent from the client's answers (with calls
/// going on) before traffic counts as having left it.
const QUIET: Duration = Duration::from_secs(2);
/// Calls that must have been answered elsewhere during [`QUIET`].
const QUIET_CALLS: usize = 40;
/// The upper bound of every wait for the control plane or a client.
const WAIT: Duration = Duration::from_secs(60);
/// gRPC's UNAVAILABLE status code.
const UNAVAILABLE: i32 = 14;
/// Calls per second for clients whose timeline is measured.
const RATE: f64 = 200.0;

/// How a scenario ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Every check held.
    Pass,
    /// It ran and its numbers are reported, but the client lacks the
    /// behaviour checked; the note says why.
    Limited,
    /// A check failed or the scenario could not run; the note says what.
    Fail,
}

/// Readiness change to traffic shift, over [`CHANGES`] changes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShiftStats {
    /// Changes measured.
    pub changes: usize,
    /// Not-ready to the last answer from that pod: median, in ms.
    pub leave_median_ms: f64,
    /// ... and maximum.
    pub leave_max_ms: f64,
    /// Ready again to the first answer from it: median, in ms.
    pub return_median_ms: f64,
    /// ... and maximum.
    pub return_max_ms: f64,
}

/// One scenario's result for one client.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScenarioReport {
    /// Scenario name.
    pub scenario: String,
    /// How it ended.
    pub outcome: Outcome,
    /// Why it failed or is limited; notable observations.
    pub note: String,
    /// Calls made.
    pub requests: usize,
    /// Calls that failed.
    pub errors: usize,
    /// Share of answers from outside the client's zone (zoned scenarios).
    pub cross_zone_share: Option<f64>,
    /// Shift times (readiness and scale-up scenarios).
    pub shift: Option<ShiftStats>,
    /// Answers per pod.
    pub pods: BTreeMap<String, usize>,
}

/// Every scenario's result for one client.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientReport {
    /// The client's short name.
    pub client: String,
    /// What it is.
    pub about: String,
    /// How long installing (or finding the cached) client took, in ms.
    pub install_ms: u64,
    /// Per scenario, in run order.
    pub scenarios: Vec<ScenarioReport>,
}

impl ClientReport {
    /// Whether any scenario failed.
    pub fn failed(&self) -> bool {
        self.scenarios.iter().any(|s| s.outcome == Outcome::Fail)
    }
}

/// Where reports go: `<target>/interop`.
pub fn report_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    target.join("interop")
}

/// The report file of client `name`.
pub fn report_path(name: &str) -> PathBuf {
    report_dir().join(format!("report-{name}.json"))
}

/// The table printed for people: one line per scenario.
pub fn format_table(reports: &[ClientReport]) -> String {
    let mut out = format!(
        "{:<10} {:<14} {:<8} {:>6} {:>6} {:>7} {:>21} {:>21}\n",
        "client",
        "scenario",
        "outcome",
        "calls",
        "errors",
        "x-zone",
        "leave med/max ms",
        "return med/max ms"
    );
    for r in reports {
        for s in &r.scenarios {
            let outcome = match s.outcome {
                Outcome::Pass => "pass",
                Outcome::Limited => "limited",
                Outcome::Fail => "FAIL",
            };
            let cross = s
                .cross_zone_share
                .map_or_else(|| "-".to_owned(), |c| format!("{:.1}%", c * 100.0));
            let (leave, back) = s.shift.as_ref().map_or_else(
                || ("-".to_owned(), "-".to_owned()),
                |t| {
                    (
                        format!(
                            "{:.0}/{:.0} (n={})",
                            t.leave_median_ms, t.leave_max_ms, t.changes
                        ),
                        format!("{:.0}/{:.0}", t.return_median_ms, t.return_max_ms),
                    )
                },
            );
            out.push_str(&format!(
                "{:<10} {:<14} {:<8} {:>6} {:>6} {:>7} {:>21} {:>21}\n",
                r.client, s.scenario, outcome, s.requests, s.errors, cross, leave, back
            ));
        }
    }
    let notes: Vec<String> = reports
        .iter()
        .flat_map(|r| {
            r.scenarios
                .iter()
                .filter(|s| !s.note.is_empty())
                .map(move |s| format!("  {} {}: {}", r.client, s.scenario, s.note))
        })
        .collect();
    if !notes.is_empty() {
        out.push_str("notes:\n");
        out.push_str(&notes.join("\n"));
        out.push('\n');
    }
    out
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The middle value (mean of the two middle ones for an even count).
fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// What a scenario saw and which of its checks failed.
#[derive(Debug)]
struct Findings {
    scenario: &'static str,
    failures: Vec<String>,
    limits: Vec<String>,
    /// Why the client lacks what `limits` lists (said once).
    limit_reason: Option<&'static str>,
    notes: Vec<String>,
    requests: usize,
    errors: usize,
    cross_zone_share: Option<f64>,
    shift: Option<ShiftStats>,
    pods: BTreeMap<String, usize>,
}

impl Findings {
    fn new(scenario: &'static str) -> Self {
        Self {
            scenario,
            failures: Vec::new(),
            limits: Vec::new(),
            limit_reason: None,
            notes: Vec::new(),
            requests: 0,
            errors: 0,
            cross_zone_share: None,
            shift: None,
            pods: BTreeMap::new(),
        }
    }

    /// Adds `records` to the counts; with `zone`, also the cross-zone share
    /// of everything counted so far.
    fn count(&mut self, records: &[Rpc], zone: Option<&str>) {
        self.requests += records.len();
        self.errors += records.iter().filter(|r| !r.ok()).count();
        for r in records.iter().filter(|r| r.ok()) {
            *self
                .pods
                .entry(r.pod.clone().unwrap_or_default())
                .or_default() += 1;
        }
        if let Some(zone) = zone {
            let ok: Vec<&Rpc> = records.iter().filter(|r| r.ok()).collect();
            if !ok.is_empty() {
                let away = ok
                    .iter()
                    .filter(|r| r.zone.as_deref() != Some(zone))
                    .count();
                self.cross_zone_share = Some(away as f64 / ok.len() as f64);
            }
        }
    }

    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.failures.push(what());
        }
    }

    /// A check of a behaviour the client may lack: if it does, the result
    /// is noted instead of asserted.
    fn check_unless(
        &mut self,
        lacking: Option<&'static str>,
        ok: bool,
        what: impl FnOnce() -> String,
    ) {
        match (ok, lacking) {
            (true, _) => {}
            (false, Some(why)) => {
                self.limits.push(what());
                self.limit_reason = Some(why);
            }
            (false, None) => self.failures.push(what()),
        }
    }

    fn report(self) -> ScenarioReport {
        let outcome = if !self.failures.is_empty() {
            Outcome::Fail
        } else if !self.limits.is_empty() {
            Outcome::Limited
        } else {
            Outcome::Pass
        };
        let note = self
            .failures
            .into_iter()
            .chain(self.limits)
            .chain(self.limit_reason.map(|why| format!("limited: {why}")))
            .chain(self.notes)
            .collect::<Vec<_>>()
            .join("; ");
        ScenarioReport {
            scenario: self.scenario.to_owned(),
            outcome,
            note,
            requests: self.requests,
            errors: self.errors,
            cross_zone_share: self.cross_zone_share,
            shift: self.shift,
            pods: self.pods,
        }
    }
}

/// Whether a client ACKed or NACKed a type, as eds-server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum AckState {
    /// The last version sent is acknowledged.
    Acked(String),
    /// The client rejected a response; its reason.
    Nacked(String),
    /// Not subscribed yet, or the last response awaits an answer.
    Pending(String),
}

async fn ack_state(server: &Server, node_id: &str, ty: &str) -> anyhow::Result<AckState> {
    let view = server.get_json("/debug/clients").await?;
    let stats = view["clients"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["stats"]["client"]["node_id"] == node_id)
        .find_map(|c| {
            c["stats"]["types"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|t| t["type_url"] == ty)
                .cloned()
        });
    let Some(stats) = stats else {
        return Ok(AckState::Pending(format!("{node_id} has no {ty} stream")));
    };
    if !stats["last_nack"].is_null() {
        return Ok(AckState::Nacked(
            stats["last_nack"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        ));
    }
    let sent = &stats["sent_version"];
    Ok(if !sent.is_null() && stats["acked_version"] == *sent {
        AckState::Acked(sent.as_str().unwrap_or_default().to_owned())
    } else {
        AckState::Pending(stats.to_string())
    })
}

/// The subscribed names of `node_id`'s `ty` stream.
async fn subscribed(server: &Server, node_id: &str, ty: &str) -> anyhow::Result<Vec<String>> {
    let view = server.get_json("/debug/clients").await?;
    Ok(view["clients"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["stats"]["client"]["node_id"] == node_id)
        .flat_map(|c| {
            c["stats"]["types"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|t| t["type_url"] == ty)
                .flat_map(|t| t["subscribed"].as_array().cloned().unwrap_or_default())
                .collect::<Vec<_>>()
        })
        .filter_map(|n| n.as_str().map(str::to_owned))
        .collect())
}

/// The fixture every scenario of one client runs in.
struct Suite {
    kind: &'static ClientKind,
    program: Program,
    ns: TestNamespace,
    server: Server,
    /// zone-a pods, then zone-b pods.
    pods: Vec<TestPod>,
    backends: Vec<Backend>,
    dir: PathBuf,
    echo: String,
    least_request: String,
    ring_hash: String,
    runs: std::cell::Cell<u32>,
}

fn grpc_port() -> Vec<ServicePortSpec> {
    vec![ServicePortSpec {
        name: "grpc".into(),
        port: 8080,
        target: Target::Name("grpc".into()),
    }]
}

impl Suite {
    async fn start(kind: &'static ClientKind, program: Program) -> anyhow::Result<Self> {
        let cluster = TestCluster::shared()?;
        let ns = cluster.namespace(&format!("interop-{}", kind.name)).await?;
        let dir = cluster.state().dir.join(format!("interop-{}", ns.name()));
        std::fs::create_dir_all(&dir)?;
        ns.node("node-zone-a", "zone-a").await?;
        ns.node("node-zone-b", "zone-b").await?;
        ns.service("echo", "echo", &grpc_port(), &[]).await?;
        ns.service(
            "echo-lr",
            "echo",
            &grpc_port(),
            &[("eds.rs/lb-policy", "least-request")],
        )
        .await?;
        ns.service(
            "echo-rh",
            "echo",
            &grpc_port(),
            &[
                ("eds.rs/lb-policy", "ring-hash"),
                ("eds.rs/hash-header", HASH_HEADER),
            ],
        )
        .await?;
        let mut suite = Self {
            kind,
            program,
            server: start_server(cluster, ns.name(), &[]).await?,
            echo: format!("echo.{}:8080", ns.name()),
            least_request: format!("echo-lr.{}:8080", ns.name()),
            ring_hash: format!("echo-rh.{}:8080", ns.name()),
            ns,
            pods: Vec::new(),
            backends: Vec::new(),
            dir,
            runs: std::cell::Cell::new(0),
        };
        for (name, zone) in [
            ("echo-a0", "zone-a"),
            ("echo-a1", "zone-a"),
            ("echo-a2", "zone-a"),
            ("echo-b0", "zone-b"),
            ("echo-b1", "zone-b"),
            ("echo-b2", "zone-b"),
        ] {
            let (pod, backend) = suite.add_pod(name, zone).await?;
            suite.pods.push(pod);
            suite.backends.push(backend);
        }
        suite.server.wait_ready().await?;
        suite
            .wait_healthy(&suite.pods.iter().collect::<Vec<_>>())
            .await?;
        Ok(suite)
    }

    /// Creates a ready pod with a running echo backend in `zone`.
    async fn add_pod(&self, name: &str, zone: &str) -> anyhow::Result<(TestPod, Backend)> {
        let pod = self
            .ns
            .pod(PodSpec::new(name, "echo", &format!("node-{zone}")).port("grpc", 9090))
            .await?;
        // Clients run on the host: their traffic must go into the pod network.
        self.ns.cluster().network().verify_route(pod.ip())?;
        let backend = pod
            .start_backend(9090, zone, &EchoOptions::default())
            .await?;
        pod.set_ready(true).await?;
        Ok((pod, backend))
    }

    fn local(&self) -> &[TestPod] {
        &self.pods[..3]
    }

    /// Waits until eds-server serves exactly `pods` as HEALTHY endpoints of
    /// every Service (the others are kept as UNHEALTHY: the admin view shows
    /// the index, not what a stock client is sent).
    async fn wait_healthy(&self, pods: &[&TestPod]) -> anyhow::Result<()> {
        let mut want: Vec<String> = pods.iter().map(|p| p.name().to_owned()).collect();
        want.sort();
        for key in [&self.echo, &self.least_request, &self.ring_hash] {
            eventually(
                &format!("eds-server serving {want:?} as HEALTHY for {key}"),
                WAIT,
                || {
                    let want = want.clone();
                    async move {
                        let (code, body) =
                            match self.server.get(&format!("/debug/endpoints/{key}")).await {
                                Ok(r) => r,
                                Err(e) => return Ok(Err(e.to_string())),
                            };
                        if code != 200 {
                            return Ok(Err(format!("{code} {body}")));
                        }
                        let view: serde_json::Value = serde_json::from_str(&body)?;
                        let mut healthy: Vec<String> = view["endpoints"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter(|e| e["health"] == "HEALTHY")
                            .filter_map(|e| e["pod"].as_str().map(str::to_owned))
                            .collect();
                        healthy.sort();
                        Ok(if healthy == want { Ok(()) } else { Err(body) })
                    }
                },
            )
            .await?;
        }
        Ok(())
    }

    /// Every pod ready and served again, after a scenario that failed midway.
    async fn restore(&self) -> anyhow::Result<()> {
        for pod in &self.pods {
            pod.set_ready(true).await?;
        }
        self.wait_healthy(&self.pods.iter().collect::<Vec<_>>())
            .await
    }

    fn run(&self, scenario: &str, target: &str, zone: Option<&str>) -> ClientRun {
        let n = self.runs.get();
        self.runs.set(n + 1);
        let node_id = format!("{}-{scenario}-{n}", self.kind.name);
        ClientRun::new(target, &node_id, zone, self.server.xds, &self.dir)
    }

    fn start_client(&self, run: &ClientRun) -> anyhow::Result<RunningClient> {
        RunningClient::start(self.kind, &self.program, run)
    }

    /// Runs a counted client to the end and returns its records.
    async fn counted(&self, run: &ClientRun) -> anyhow::Result<Vec<Rpc>> {
        let mut client = self.start_client(run)?;
        client.wait_done(WAIT * 2).await?;
        Ok(client.stop().to_vec())
    }

    /// Polls `client` until it has answers from every pod in `pods`.
    async fn warm_up(&self, client: &mut RunningClient, pods: &[&str]) -> anyhow::Result<()> {
        let deadline = Instant::now() + WAIT;
        loop {
            client.poll()?;
            let seen: BTreeSet<&str> = client
                .records()
                .iter()
                .filter_map(|r| r.pod.as_deref())
                .collect();
            if pods.iter().all(|p| seen.contains(p)) {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the client did not reach all of {pods:?} within {WAIT:?} (seen {seen:?}); its log:\n{}",
                client.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // ---- scenarios ----

    /// A client without a zone reaches every ready pod.
    async fn reach_all(&self) -> anyhow::Result<Findings> {
        let mut f = Findings::new("reach-all");
        let mut run = self.run("all", &self.echo, None);
        run.count = 300;
        run.rate = RATE;
        let records = self.counted(&run).await?;
        f.count(&records, None);
        for pod in &self.pods {
            let n = f.pods.get(pod.name()).copied().unwrap_or(0);
            f.check(n > 0, || format!("{} got no calls", pod.name()));
        }
        let errors = f.errors;
        f.check(errors == 0, || format!("{errors} calls failed"));
        Ok(f)
    }

    /// A zone-a client with healthy zone-a capacity stays in zone-a.
    async fn zone_local(&self) -> anyhow::Result<Findings> {
        let mut f = Findings::new("zone-local");
        let mut run = self.run("local", &self.echo, Some(CLIENT_ZONE));
        run.count = 300;
        run.rate = RATE;
        let records = self.counted(&run).await?;
        f.count(&records, Some(CLIENT_ZONE));
        let cross = f.cross_zone_share.unwrap_or(1.0);
        f.check_unless(
            self.kind.lacks(Capability::ZoneAffinity),
            cross == 0.0,
            || {
                format!(
                    "{:.1}% of answers came from outside {CLIENT_ZONE}",
                    cross * 100.0
                )
            },
        );
        for pod in self.local() {
            let n = f.pods.get(pod.name()).copied().unwrap_or(0);
            f.check(n > 0, || format!("{} got no calls", pod.name()));
        }
        let errors = f.errors;
        f.check(errors == 0, || format!("{errors} calls failed"));
        Ok(f)
    }

    /// Two of zone-a's three pods not ready: zone-a keeps what it can serve
    /// (a third of its intended share) and spills the rest to zone-b.
    async fn zone_spill(&self) -> anyhow::Result<Findings> {
        let mut f = Findings::new("zone-spill");
        for pod in &self.local()[1..] {
            pod.set_ready(false).await?;
        }
        let healthy: Vec<&TestPod> = std::iter::once(&self.pods[0])
            .chain(&self.pods[3..])
            .collect();
        self.wait_healthy(&healthy).await?;
        let mut run = self.run("spill", &self.echo, Some(CLIENT_ZONE));
        run.count = 400;
        run.rate = RATE;
        let records = self.counted(&run).await;
        self.restore().await?;
        let records = records?;
        f.count(&records, Some(CLIENT_ZONE));
        let cross = f.cross_zone_share.unwrap_or(0.0);
        // eds-server's rule gives zone-a half its calls here (1 of 4 healthy
        // over 3 of 6 intended); anything clearly between "none" and "all" is
        // a spill in proportion rather than a cliff.
        let lacking = self.kind.lacks(Capability::ZoneAffinity);
        // Without zone affinity any share is chance (its spread over the
        // healthy pods), not a spill: never count it as one.
        f.check_unless(
            lacking,
            lacking.is_none() && (0.2..=0.8).contains(&cross),
            || {
                format!(
                    "cross-zone share {:.1}%, want a partial spill",
                    cross * 100.0
                )
            },
        );
        for pod in &self.local()[1..] {
            let n = f.pods.get(pod.name()).copied().unwrap_or(0);
            f.check(n == 0, || format!("not-ready {} got {n} calls", pod.name()));
        }
        let errors = f.errors;
        f.check(errors == 0, || format!("{errors} calls failed"));
        Ok(f)
    }

    /// [`CHANGES`] times: a zone-a pod goes not ready (traffic must leave
    /// it), then ready again (traffic must come back).
    async fn readiness(&self) -> anyhow::Result<Findings> {
        let mut f = Findings::new("readiness");
        let mut run = self.run("ready", &self.echo, Some(CLIENT_ZONE));
        run.rate = RATE;
        let mut client = self.start_client(&run)?;
        let local: Vec<&str> = self.local().iter().map(TestPod::name).collect();
        self.warm_up(&mut client, &local).await?;
        let (mut leave, mut back) = (Vec::new(), Vec::new());
        let result: anyhow::Result<()> = async {
            for i in 0..CHANGES {
                let pod = &self.local()[i % self.local().len()];
                let t0 = now_ms();
                pod.set_ready(false).await?;
                leave.push(wait_leave(&mut client, pod.name(), t0).await? as f64);
                let t1 = now_ms();
                pod.set_ready(true).await?;
                back.push(wait_return(&mut client, pod.name(), t1).await? as f64);
            }
            Ok(())
        }
        .await;
        let records = client.stop().to_vec();
        if result.is_err() {
            self.restore().await?;
        }
        result.with_context(|| format!("the client's log:\n{}", client.log_tail()))?;
        f.count(&records, None);
        let errors = f.errors;
        f.check(errors == 0, || format!("{errors} calls failed"));
        f.shift = Some(ShiftStats {
            changes: leave.len(),
            leave_median_ms: median(&leave),
            leave_max_ms: leave.iter().copied().fold(0.0, f64::max),
            return_median_ms: median(&back),
            return_max_ms: back.iter().copied().fold(0.0, f64::max),
        });
        Ok(f)
    }

    /// A new pod in zone-a becomes ready while a client runs: it gets traffic.
    async fn scale_up(&self) -> anyhow::Result<Findings> {
        let mut f = Findings::new("scale-up");
        let mut run = self.run("scale", &self.echo, Some(CLIENT_ZONE));
        run.rate = RATE;
        let mut client = self.start_client(&run)?;
        let local: Vec<&str> = self.local().iter().map(TestPod::name).collect();
        self.warm_up(&mut client, &local).await?;
        let pod = self
            .ns
            .pod(PodSpec::new("echo-a3", "echo", "node-zone-a").port("grpc", 9090))
            .await?;
        self.ns.cluster().network().verify_route(pod.ip())?;
        let backend = pod
            .start_backend(9090, "zone-a", &EchoOptions::default())
            .await?;
        let t0 = now_ms();
        pod.set_ready(true).await?;
        let found = wait_return(&mut client, pod.name(), t0).await;
        let records = client.stop().to_vec();
        pod.delete_now().await?;
        backend.stop();
        self.wait_healthy(&self.pods.iter().collect::<Vec<_>>())
            .await?;
        let found =
            found.with_context(|| format!("the client's log:\n{}", client.log_tail()))? as f64;
        f.count(&records, None);
        let errors = f.errors;
        f.check(errors == 0, || format!("{errors} calls failed"));
        f.notes.push(format!(
            "new pod's first answer {found:.0} ms after it became ready"
        ));
        Ok(f)
    }

    /// Waits until `node_id` has ACKed or NACKed CDS, polling `client` too.
    async fn cds_verdict(
        &self,
        client: &mut RunningClient,
        node_id: &str,
    ) -> anyhow::Result<AckState> {
        let deadline = Instant::now() + WAIT;
        loop {
            client.poll()?;
            let state = ack_state(&self.server, node_id, CDS).await?;
            if !matches!(state, AckState::Pending(_)) {
                return Ok(state);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{node_id} neither ACKed nor NACKed CDS within {WAIT:?}: {state:?}; its log:\n{}",
                client.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `eds.rs/lb-policy: least-request`: the client takes a policy it
    /// supports from the A52 list (grpc-go least request; C-core round robin),
    /// ACKs the Cluster, and its calls succeed.
    async fn least_request(&self) -> anyhow::Result<Findings> {
        let mut f = Findings::new("least-request");
        let mut run = self.run("lr", &self.least_request, Some(CLIENT_ZONE));
        run.count = 200;
        run.rate = RATE;
        run.hold = true;
        let mut client = self.start_client(&run)?;
        let verdict = self.cds_verdict(&mut client, &run.node_id).await?;
        if matches!(verdict, AckState::Acked(_)) {
            client.wait_done(WAIT).await?;
        }
        let records = client.stop().to_vec();
        f.count(&records, Some(CLIENT_ZONE));
        match verdict {
            AckState::Acked(v) => f.notes.push(format!("CDS ACKed (version {v})")),
            other => f.failures.push(format!("CDS not ACKed: {other:?}")),
        }
        let (errors, requests) = (f.errors, f.requests);
        f.check(errors == 0 && requests > 0, || {
            format!("{errors} of {requests} calls failed")
        });
        Ok(f)
    }

    /// `eds.rs/lb-policy: ring-hash` on a header: the Cluster is ACKed and
    /// every key goes to one backend every time.
    async fn ring_hash(&self) -> anyhow::Result<Findings> {
        const KEYS: u32 = 16;
        let mut f = Findings::new("ring-hash");
        let lacking = self.kind.lacks(Capability::RingHash);
        let mut run = self.run("rh", &self.ring_hash, Some(CLIENT_ZONE));
        run.count = u64::from(KEYS) * 20;
        run.rate = RATE;
        run.hold = true;
        run.header = Some((format!("{HASH_HEADER}=user-"), KEYS));
        run.rpc_timeout = 2.0;
        let mut client = self.start_client(&run)?;
        let verdict = self.cds_verdict(&mut client, &run.node_id).await?;
        if matches!(verdict, AckState::Acked(_)) {
            client.wait_done(WAIT).await?;
        } else {
            // A client without the Cluster fails every call; a few show how.
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        let records = client.stop().to_vec();
        let mut theirs = Vec::new();
        // The same keys from a client in the other zone: eds-server sends
        // hashing Services the same localities whatever the client's zone,
        // so a key must land on the same pod from everywhere.
        if matches!(verdict, AckState::Acked(_)) {
            let mut other = self.run("rh-b", &self.ring_hash, Some("zone-b"));
            other.count = run.count;
            other.rate = RATE;
            other.header = run.header.clone();
            theirs = self.counted(&other).await?;
            let ours: BTreeMap<&str, &str> = records
                .iter()
                .filter(|r| r.ok())
                .filter_map(|r| Some((r.key.as_deref()?, r.pod.as_deref()?)))
                .collect();
            let differ: Vec<String> = theirs
                .iter()
                .filter(|r| r.ok())
                .filter_map(|r| {
                    let (key, pod) = (r.key.as_deref()?, r.pod.as_deref()?);
                    let mine = ours.get(key)?;
                    (mine != &pod).then(|| format!("{key}: zone-a {mine}, zone-b {pod}"))
                })
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            f.check_unless(lacking, differ.is_empty(), || {
                format!(
                    "clients in different zones hash keys to different pods: {}",
                    sample(&differ)
                )
            });
            f.notes.push(
                "hashing Services get no per-zone shaping (a key must map to one pod for \
                 every client), so the cross-zone share here is by design"
                    .to_owned(),
            );
        }
        f.count(&records, Some(CLIENT_ZONE));
        f.count(&theirs, None);
        // Every client must end up with a policy it supports: one without
        // ring hash takes the fallback and still ACKs and serves.
        match &verdict {
            AckState::Acked(v) => f.notes.push(format!("CDS ACKed (version {v})")),
            other => {
                f.check(false, || format!("CDS not ACKed: {other:?}"));
                return Ok(f);
            }
        }
        let mut per_key: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for r in records.iter().filter(|r| r.ok()) {
            per_key
                .entry(r.key.as_deref().unwrap_or_default())
                .or_default()
                .insert(r.pod.as_deref().unwrap_or_default());
        }
        let split: Vec<String> = per_key
            .iter()
            .filter(|(_, pods)| pods.len() > 1)
            .map(|(k, pods)| format!("{k} -> {pods:?}"))
            .collect();
        f.check_unless(lacking, split.is_empty() && !per_key.is_empty(), || {
            format!(
                "keys not sticking to one backend: {} ({} keys answered)",
                sample(&split),
                per_key.len()
            )
        });
        let backends: BTreeSet<&str> = per_key.values().flatten().copied().collect();
        // 16 keys on one pod of three by chance: about one in 3^15.
        f.check_unless(lacking, backends.len() > 1, || {
            format!("all keys hashed to {backends:?}")
        });
        let (errors, requests) = (f.errors, f.requests);
        f.check(errors == 0, || {
            let sample = records
                .iter()
                .find_map(|r| r.msg.clone())
                .unwrap_or_default();
            format!("{errors} of {requests} calls failed (e.g. {sample:?})")
        });
        if !per_key.is_empty() {
            f.notes.push(format!(
                "{} keys over {} backends",
                per_key.len(),
                backends.len()
            ));
        }
        Ok(f)
    }

    /// Names that are not a service key, a Service that does not exist, a
    /// port the Service does not have: each client gets the protocol's
    /// answer for a missing resource (its calls fail, naming it) while
    /// another client of the same server keeps working.
    async fn bad_input(&self) -> anyhow::Result<Findings> {
        let mut f = Findings::new("bad-input");
        let mut good_run = self.run("good", &self.echo, Some(CLIENT_ZONE));
        good_run.rate = 100.0;
        let mut good = self.start_client(&good_run)?;
        let local: Vec<&str> = self.local().iter().map(TestPod::name).collect();
        self.warm_up(&mut good, &local).await?;
        let before = good.records().len();
        let names = [
            "not-a-service-key".to_owned(),
            format!("nope.{}:8080", self.ns.name()),
            format!("echo.{}:9999", self.ns.name()),
        ];
        let mut bad = Vec::new();
        let started = now_ms();
        for name in &names {
            let mut run = self.run("bad", name, Some(CLIENT_ZONE));
            run.count = 10;
            run.rate = 5.0;
            run.rpc_timeout = 2.0;
            run.hold = true;
            let client = self.start_client(&run)?;
            bad.push((name, run.node_id, client));
        }
        for (name, node_id, client) in &mut bad {
            client.wait_done(WAIT).await?;
            let lds = subscribed(&self.server, node_id, LDS).await?;
            f.check(lds.iter().any(|n| n == *name), || {
                format!("eds-server does not show {node_id} subscribed to LDS {name}: {lds:?}")
            });
            let lds_state = ack_state(&self.server, node_id, LDS).await?;
            f.check(!matches!(lds_state, AckState::Nacked(_)), || {
                format!("{node_id} NACKed LDS: {lds_state:?}")
            });
            let records = client.stop().to_vec();
            f.count(&records, None);
            let ok = records.iter().filter(|r| r.ok()).count();
            f.check(ok == 0, || format!("{ok} calls to {name} succeeded"));
            let last = records
                .last()
                .and_then(|r| r.msg.clone())
                .unwrap_or_default();
            let codes: BTreeSet<i32> = records.iter().map(|r| r.code).collect();
            // The client's own words: whether its error names the resource.
            let named = records
                .iter()
                .any(|r| r.msg.as_deref().is_some_and(|m| m.contains(name.as_str())));
            // Until the client decides the resource is missing, its calls
            // wait (DEADLINE_EXCEEDED); this is when it decided.
            let answered = records.iter().find(|r| r.code == UNAVAILABLE).map_or_else(
                || "never".to_owned(),
                |r| {
                    format!(
                        "after {:.1} s",
                        (r.t_ms.saturating_sub(started)) as f64 / 1000.0
                    )
                },
            );
            f.notes.push(format!(
                "{name}: codes {codes:?}, UNAVAILABLE {answered}, error {} the name: {last:?}",
                if named { "names" } else { "does not name" }
            ));
        }
        good.poll()?;
        let during = good.records()[before..].to_vec();
        good.stop();
        let good_errors = during.iter().filter(|r| !r.ok()).count();
        f.check(!during.is_empty() && good_errors == 0, || {
            format!(
                "the good client made {} calls with {good_errors} errors while the bad ones ran",
                during.len()
            )
        });
        f.notes.push(format!(
            "good client meanwhile: {} calls, {good_errors} errors",
            during.len()
        ));
        Ok(f)
    }

    async fn teardown(self) -> anyhow::Result<()> {
        drop(self.server);
        for backend in self.backends {
            backend.stop();
        }
        self.ns.delete_with_pods(&self.pods).await
    }
}

/// Waits until `pod` has been absent from `client`'s answers for [`QUIET`]
/// (and [`QUIET_CALLS`] calls) after `t0`; returns how long after `t0` its
/// last answer was, in ms (0 if none came after `t0`).
async fn wait_leave(client: &mut RunningClient, pod: &str, t0: u64) -> anyhow::Result<u64> {
    let deadline = Instant::now() + WAIT;
    let quiet = u64::try_from(QUIET.as_millis()).unwrap_or(u64::MAX);
    loop {
        client.poll()?;
        let records = client.records();
        let from = records.partition_point(|r| r.t_ms < t0);
        let recent = &records[from..];
        let last = recent
            .iter()
            .filter(|r| r.pod.as_deref() == Some(pod))
            .map(|r| r.t_ms)
            .max()
            .unwrap_or(t0);
        let since: Vec<&Rpc> = recent.iter().filter(|r| r.t_ms > last).collect();
        if since.len() >= QUIET_CALLS && since.last().is_some_and(|r| r.t_ms >= last + quiet) {
            return Ok(last - t0);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "traffic did not leave not-ready {pod} within {WAIT:?} ({} calls since the change, last answer from it at +{} ms)",
            recent.len(),
            last - t0
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for `client`'s first answer from `pod` after `t0`; returns how
/// long after `t0` it came, in ms.
async fn wait_return(client: &mut RunningClient, pod: &str, t0: u64) -> anyhow::Result<u64> {
    let deadline = Instant::now() + WAIT;
    loop {
        client.poll()?;
        let records = client.records();
        let from = records.partition_point(|r| r.t_ms < t0);
        if let Some(r) = records[from..]
            .iter()
            .find(|r| r.pod.as_deref() == Some(pod))
        {
            return Ok(r.t_ms - t0);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{pod} got no calls within {WAIT:?} of becoming ready ({} calls since)",
            records.len() - from
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs every scenario against `kind`, prints the table, writes
/// [`report_path`], and fails if any scenario failed. Scenarios listed in
/// `$EDS_INTEROP_SCENARIOS` (comma-separated) are the only ones run, if set.
pub async fn run_suite(kind: &'static ClientKind) -> anyhow::Result<ClientReport> {
    let started = Instant::now();
    let program = tokio::task::spawn_blocking(move || (kind.install)(true))
        .await?
        .with_context(|| format!("installing the {} interop client", kind.name))?;
    let install_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let only: Option<Vec<String>> = std::env::var("EDS_INTEROP_SCENARIOS")
        .ok()
        .map(|s| s.split(',').map(|x| x.trim().to_owned()).collect());
    let wanted = |name: &str| only.as_ref().is_none_or(|o| o.iter().any(|x| x == name));

    let suite = Suite::start(kind, program).await?;
    let mut scenarios = Vec::new();
    macro_rules! scenario {
        ($name:literal, $method:ident) => {
            if wanted($name) {
                eprintln!("--- {} {}", kind.name, $name);
                let t = Instant::now();
                let report = match suite.$method().await {
                    Ok(findings) => findings.report(),
                    Err(e) => {
                        // Leave the pods as the next scenario expects them.
                        if let Err(re) = suite.restore().await {
                            eprintln!("    restoring the pods failed too: {re:#}");
                        }
                        let mut f = Findings::new($name);
                        f.failures.push(format!("{e:#}"));
                        f.report()
                    }
                };
                eprintln!(
                    "    {:?} in {:.1?}: {} calls, {} errors{}{}",
                    report.outcome,
                    t.elapsed(),
                    report.requests,
                    report.errors,
                    report
                        .cross_zone_share
                        .map_or_else(String::new, |c| format!(", cross-zone {:.1}%", c * 100.0)),
                    if report.note.is_empty() {
                        String::new()
                    } else {
                        format!("\n    {}", report.note)
                    }
                );
                scenarios.push(report);
            }
        };
    }
    scenario!("reach-all", reach_all);
    scenario!("zone-local", zone_local);
    scenario!("zone-spill", zone_spill);
    scenario!("readiness", readiness);
    scenario!("scale-up", scale_up);
    scenario!("least-request", least_request);
    scenario!("ring-hash", ring_hash);
    scenario!("bad-input", bad_input);
    suite.teardown().await?;

    let report = ClientReport {
        client: kind.name.to_owned(),
        about: kind.about.to_owned(),
        install_ms,
        scenarios,
    };
    let path = report_path(kind.name);
    std::fs::create_dir_all(report_dir())?;
    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!(
        "\n{} ({}), report {}:\n{}",
        kind.name,
        kind.about,
        path.display(),
        format_table(std::slice::from_ref(&report))
    );
    anyhow::ensure!(
        !report.failed(),
        "{} failed interop scenarios:\n{}",
        kind.name,
        report
            .scenarios
            .iter()
            .filter(|s| s.outcome == Outcome::Fail)
            .map(|s| format!("  {}: {}", s.scenario, s.note))
            .collect::<Vec<_>>()
            .join("\n")
    );
    Ok(report)
}

/// The first few of `items` and how many there are: enough to see the
/// pattern in a report line without printing every key.
fn sample(items: &[String]) -> String {
    const SHOWN: usize = 3;
    if items.len() <= SHOWN {
        return format!("{items:?}");
    }
    format!("{:?} and {} more", &items[..SHOWN], items.len() - SHOWN)
}

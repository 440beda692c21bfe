//! The demo behind `cargo xtask demo` (this crate's `eds-demo` program)
//! and its headless test (`tests/tests/demo.rs`): per-request balancing
//! with lb-client next to kube-proxy-style per-connection balancing, on the
//! local control plane, with a pod killed mid-run.
//!
//! ```text
//!  namespace demo-*   nodes in zone-a/b/c   Service echo:8080 -> 6 pods (2 per zone)
//!  backends           fast (1 ms) and slow (15 ms) echo processes on the pod IPs
//!  eds-server         in-process, default flags (a not-ready pod stays visible as UNHEALTHY)
//!  lb-client side     one LbClient (P2C), `workers` concurrent request loops
//!  per-connection     `connections` tonic Channels, each pinned to one pod chosen
//!                     at random (seeded), the same `workers` loops spread over them
//!  every second       per-pod req/s and p99 for both sides; what eds-server serves
//!  kill               pod goes NotReady, lb-client sees it, its backend stops
//!  end                ASCII chart of per-pod share and p99; a [`DemoSummary`]
//! ```
//!
//! The lb-client side has no zone on purpose: the comparison is per-request
//! against per-connection balancing on equal terms, and kube-proxy knows no
//! zones either. Zone affinity has its own tests (`tests/tests/lb_client.rs`);
//! with a zone-a client, four of six pods would idle by design and the
//! spread figures would compare two different things.
//!
//! The pod is killed the way Kubernetes kills one: it goes NotReady first
//! (a failing probe or a deletion), then its process exits once lb-client has
//! nothing in flight there. kube-proxy keeps established connections to a
//! NotReady pod (conntrack), which the baseline mimics: its pinned
//! connections keep going until the process is gone, then fail.
//!
//! Not a benchmark: both sides share two cores with the backends, and the
//! figures are for people. The [`DemoSummary`] carries only what the headless
//! test asserts as robust inequalities, never timings. Not `edsctl` either:
//! the endpoints table renders eds-server's admin JSON, the data `edsctl
//! endpoints` shows, without depending on that crate.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use lb_client::{LbClient, LbConfig, ServiceOptions, Source};
use lb_core::Policy;
use lb_core::rng::{Rng, SmallRng};
use proto::echo::echo_client::EchoClient;
use proto::echo::{EchoReply, EchoRequest};

use eds_devkit::harness::{
    Backend, EchoOptions, PodSpec, ServicePortSpec, Target, TestCluster, TestNamespace, TestPod,
    eventually,
};
use eds_devkit::server::{Server, start_server};

/// How long to wait for the control plane, eds-server and lb-client.
const WAIT: Duration = Duration::from_secs(60);
/// The first second mixes connection set-up into the figures; comparisons skip it.
const WARMUP: Duration = Duration::from_secs(1);
/// After a failed request a loop pauses, so a dead pod costs a bounded rate of attempts.
const FAILURE_PAUSE: Duration = Duration::from_millis(50);

/// What the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// How long load runs (extended if the kill sequence needs it, so the
    /// baseline's failures are seen).
    pub duration: Duration,
    /// When to kill a pod, from the start of load; `None` kills nothing.
    pub kill_after: Option<Duration>,
    /// Plain lines instead of a redrawn screen.
    pub headless: bool,
    /// Concurrent request loops per side (the same offered load on both).
    pub workers: usize,
    /// Per-connection side: client connections, each pinned to one pod.
    pub connections: usize,
    /// Seed for the per-connection side's pod choice (kube-proxy picks at random).
    pub seed: u64,
    /// Fast and slow backends' added latency.
    pub fast_ms: u64,
    /// See `fast_ms`.
    pub slow_ms: u64,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(60),
            kill_after: Some(Duration::from_secs(25)),
            headless: false,
            workers: 24,
            connections: 12,
            seed: 42,
            fast_ms: 1,
            slow_ms: 15,
        }
    }
}

/// One pod's figures for one side, over the whole run.
#[derive(Debug, Clone, Default)]
pub struct SideFigures {
    /// Successful requests.
    pub requests: u64,
    /// Failed requests (only the per-connection side knows the pod of a failure).
    pub failed: u64,
    /// 99th percentile latency of successes, ms.
    pub p99_ms: f64,
    /// Average requests in flight before the kill (Little's law: summed
    /// latency over the window).
    pub in_flight: f64,
}

/// One pod in the summary.
#[derive(Debug, Clone)]
pub struct PodSummary {
    /// Pod name.
    pub pod: String,
    /// Zone.
    pub zone: String,
    /// Backend's added latency, ms.
    pub latency_ms: u64,
    /// Per-connection side's connections pinned to it.
    pub connections: usize,
    /// lb-client side.
    pub lb: SideFigures,
    /// Per-connection side.
    pub per_connection: SideFigures,
}

/// What happened to the killed pod.
#[derive(Debug, Clone)]
pub struct KillReport {
    /// The pod.
    pub pod: String,
    /// From NotReady to lb-client marking it unusable.
    pub propagated_after: Duration,
    /// lb-client requests started after it saw the pod go that the pod
    /// answered anyway (must be 0: lb-client routed around it).
    pub lb_replies_after_propagation: u64,
    /// lb-client requests that failed after the backend stopped.
    pub lb_failed_after_stop: u64,
    /// Per-connection requests that failed after the backend stopped.
    pub per_connection_failed_after_stop: u64,
}

/// What the demo measured.
#[derive(Debug, Clone)]
pub struct DemoSummary {
    /// Every pod, in creation order.
    pub pods: Vec<PodSummary>,
    /// lb-client failures, with the first few messages.
    pub lb_failed: u64,
    /// See `lb_failed`.
    pub lb_errors: Vec<String>,
    /// Per-connection failures.
    pub per_connection_failed: u64,
    /// max/mean of per-pod average in-flight before the kill among pods of
    /// the same speed (the worst speed group), lb-client side.
    pub lb_in_flight_spread: f64,
    /// The same for the per-connection side.
    pub per_connection_in_flight_spread: f64,
    /// The kill, if one happened.
    pub kill: Option<KillReport>,
}

impl DemoSummary {
    /// max/mean of `f` within each group of pods of the same speed, the
    /// worst group's. Among identical pods any imbalance is the balancer's
    /// doing; across speeds some is physics (a slow pod holds each request
    /// longer), so pods of different speeds are not compared.
    fn spread(pods: &[PodSummary], f: impl Fn(&PodSummary) -> f64) -> f64 {
        let mut groups: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
        for p in pods {
            groups.entry(p.latency_ms).or_default().push(f(p));
        }
        groups
            .values()
            .map(|v| {
                let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
                let max = v.iter().copied().fold(0.0, f64::max);
                if mean > 0.0 { max / mean } else { 0.0 }
            })
            .fold(0.0, f64::max)
    }
}

/// Runs the demo on a fresh runtime; for callers without one (xtask).
pub fn run_blocking(opts: DemoOptions, out: &mut impl Write) -> anyhow::Result<DemoSummary> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(opts, out))
}

/// Runs the demo on the shared test cluster (attached through
/// `$EDS_CLUSTER_DIR`, or started for this process), writing the live view
/// to `out`. Everything it creates is removed at the end, on error, and on
/// Ctrl-C or SIGTERM (which return an error after cleaning up).
pub async fn run(opts: DemoOptions, out: &mut impl Write) -> anyhow::Result<DemoSummary> {
    anyhow::ensure!(
        opts.workers > 0 && opts.connections > 0,
        "workers and connections must be above zero"
    );
    let cluster = TestCluster::shared()?;
    let mut fleet = Fleet::new(cluster).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listening for SIGTERM")?;
    let result = tokio::select! {
        r = demo(&opts, &mut fleet, out) => r,
        r = tokio::signal::ctrl_c() => {
            r.context("listening for Ctrl-C")?;
            Err(anyhow::anyhow!("interrupted by Ctrl-C"))
        }
        // `timeout` and CI cancel with SIGTERM: clean up for it as for Ctrl-C.
        _ = term.recv() => Err(anyhow::anyhow!("terminated (SIGTERM)")),
    };
    if result.is_err() {
        eprintln!("demo: cleaning up namespace, pods and backends");
    }
    let cleanup = fleet.delete().await;
    let summary = result?;
    cleanup.context("cleaning up the demo namespace")?;
    Ok(summary)
}

/// The demo's namespace, pods and backends; deleted whatever happens.
struct Fleet {
    ns: Option<TestNamespace>,
    pods: Vec<DemoPod>,
}

struct DemoPod {
    pod: TestPod,
    zone: String,
    latency_ms: u64,
    backend: Option<Backend>,
}

impl Fleet {
    async fn new(cluster: &'static TestCluster) -> anyhow::Result<Self> {
        let ns = cluster.namespace("demo").await?;
        Ok(Self {
            ns: Some(ns),
            pods: Vec::new(),
        })
    }

    fn ns(&self) -> &TestNamespace {
        self.ns.as_ref().expect("the namespace lives until delete")
    }

    async fn delete(&mut self) -> anyhow::Result<()> {
        let mut pods = Vec::new();
        let mut stopping = Vec::new();
        for p in self.pods.drain(..) {
            if let Some(b) = p.backend {
                // Stopping waits for the process (up to its grace); all at once, off the runtime.
                stopping.push(tokio::task::spawn_blocking(move || b.stop()));
            }
            pods.push(p.pod);
        }
        for s in stopping {
            let _ = s.await;
        }
        match self.ns.take() {
            Some(ns) => ns.delete_with_pods(&pods).await,
            None => Ok(()),
        }
    }
}

/// One side's records.
#[derive(Default)]
struct Log {
    /// (start since load began, latency, pod index)
    samples: Vec<(Duration, Duration, usize)>,
    /// (start, pod index if known)
    failures: Vec<(Duration, Option<usize>)>,
    errors: Vec<String>,
}

type SharedLog = Arc<Mutex<Log>>;

fn lock(log: &SharedLog) -> std::sync::MutexGuard<'_, Log> {
    log.lock().unwrap_or_else(|e| e.into_inner())
}

async fn demo(
    opts: &DemoOptions,
    fleet: &mut Fleet,
    out: &mut impl Write,
) -> anyhow::Result<DemoSummary> {
    let ns_name = fleet.ns().name().to_owned();
    writeln!(
        out,
        "== demo namespace {ns_name}: Service echo, 6 pods in 3 zones"
    )?;
    for zone in ["zone-a", "zone-b", "zone-c"] {
        fleet.ns().node(&format!("node-{zone}"), zone).await?;
    }
    fleet
        .ns()
        .service(
            "echo",
            "echo",
            &[ServicePortSpec {
                name: "grpc".into(),
                port: 8080,
                target: Target::Name("grpc".into()),
            }],
            &[],
        )
        .await?;
    for zone in ["a", "b", "c"] {
        for i in 0..2 {
            // One slow pod in zone-b and one in zone-c: uneven speed, as after a noisy neighbour.
            let slow = i == 1 && zone != "a";
            let latency_ms = if slow { opts.slow_ms } else { opts.fast_ms };
            let zone_name = format!("zone-{zone}");
            let pod = fleet
                .ns()
                .pod(
                    PodSpec::new(
                        &format!("echo-{zone}-{i}"),
                        "echo",
                        &format!("node-{zone_name}"),
                    )
                    .port("grpc", 9090),
                )
                .await?;
            let backend = pod
                .start_backend(
                    9090,
                    &zone_name,
                    &EchoOptions {
                        latency_ms,
                        ..Default::default()
                    },
                )
                .await?;
            pod.set_ready(true).await?;
            fleet.pods.push(DemoPod {
                pod,
                zone: zone_name,
                latency_ms,
                backend: Some(backend),
            });
        }
    }
    let key = format!("echo.{ns_name}:8080");
    let server = start_server(fleet.ns().cluster(), &ns_name, &[]).await?;
    server.wait_ready().await?;
    writeln!(
        out,
        "== eds-server ready (xDS {}, admin {}); what `edsctl endpoints {key}` shows:",
        server.xds, server.admin
    )?;
    wait_served(&server, &key, fleet.pods.len()).await?;
    render_endpoints(&server, &key, out).await?;

    let mut config = LbConfig::new(format!("http://{}", server.xds));
    config.node_id = format!("eds-demo-{}", std::process::id());
    config.zone = None;
    config.eager_connect = true;
    config.wait_for_endpoints = Duration::from_secs(30);
    config.default_service = ServiceOptions {
        // Explicit, so an annotation on the demo Service cannot change the comparison.
        policy: Some(Policy::P2c),
        // Every pod became ready seconds ago; a ramp would only blur the comparison.
        slow_start: None,
        ..ServiceOptions::default()
    };
    let client = LbClient::connect(config)?;
    let channel = client.channel(&key)?;
    until_usable(&client, &key, fleet.pods.len()).await?;

    // kube-proxy picks a pod per connection, at random; a seed makes the run repeatable.
    let mut rng = SmallRng::seed_from_u64(opts.seed);
    let pinned: Vec<usize> = (0..opts.connections)
        .map(|_| rng.below(fleet.pods.len() as u32) as usize)
        .collect();
    let mut conns_per_pod = vec![0usize; fleet.pods.len()];
    for &p in &pinned {
        conns_per_pod[p] += 1;
    }
    let index: Arc<HashMap<String, usize>> = Arc::new(
        fleet
            .pods
            .iter()
            .enumerate()
            .map(|(i, p)| (p.pod.name().to_owned(), i))
            .collect(),
    );

    writeln!(
        out,
        "== load: {} concurrent requests per side; lb-client P2C (no zone) vs {} per-connection channels pinned at random",
        opts.workers, opts.connections
    )?;
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let lb_log = SharedLog::default();
    let pc_log = SharedLog::default();
    let mut tasks = Vec::new();
    for _ in 0..opts.workers {
        let client = EchoClient::new(channel.clone());
        tasks.push(tokio::spawn(worker(
            move |req| {
                let mut c = client.clone();
                async move { c.echo(req).await }
            },
            None,
            index.clone(),
            lb_log.clone(),
            stop.clone(),
            started,
        )));
    }
    let mut pc_channels = Vec::new();
    for &p in &pinned {
        let addr = fleet.pods[p]
            .backend
            .as_ref()
            .map(Backend::addr)
            .context("every pod has a backend before the kill")?;
        pc_channels.push((
            p,
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
                .connect_timeout(Duration::from_secs(2))
                .connect_lazy(),
        ));
    }
    for w in 0..opts.workers {
        let (p, ch) = &pc_channels[w % pc_channels.len()];
        let client = EchoClient::new(ch.clone());
        tasks.push(tokio::spawn(worker(
            move |req| {
                let mut c = client.clone();
                async move { c.echo(req).await }
            },
            Some(*p),
            index.clone(),
            pc_log.clone(),
            stop.clone(),
            started,
        )));
    }

    // The victim: the fast pod the most per-connection channels are pinned to (a "hot" pod).
    let victim = (0..fleet.pods.len())
        .filter(|&i| fleet.pods[i].latency_ms == opts.fast_ms)
        .max_by_key(|&i| (conns_per_pod[i], std::cmp::Reverse(i)))
        .context("no fast pod")?;
    let mut kill: Option<KillTimes> = None;
    let mut end = opts.duration;
    let mut seen = (0usize, 0usize);
    let mut last = Duration::ZERO;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // After the kill stalls this loop, carry on once a second rather than catching up.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let view = View {
        pods: fleet
            .pods
            .iter()
            .map(|p| (p.pod.name().to_owned(), p.zone.clone(), p.latency_ms))
            .collect(),
        conns: conns_per_pod.clone(),
        headless: opts.headless,
    };
    loop {
        tick.tick().await;
        let now = started.elapsed();
        seen = view.tick(now, now.saturating_sub(last), &lb_log, &pc_log, seen, out)?;
        last = now;
        if !opts.headless {
            render_endpoints(&server, &key, out).await?;
        }
        if kill.is_none()
            && let Some(at) = opts.kill_after
            && now >= at
        {
            let k = kill_pod(fleet, &view, victim, &client, &key, started, out).await?;
            // Keep load going long enough after the stop for the baseline to hit the dead pod.
            end = end.max(k.stopped + Duration::from_secs(3));
            kill = Some(k);
            writeln!(out, "== after the kill, eds-server serves:")?;
            render_endpoints(&server, &key, out).await?;
        }
        if now >= end {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let total = started.elapsed();
    let summary = summarise(
        fleet,
        &conns_per_pod,
        &lb_log,
        &pc_log,
        kill.as_ref().map(|k| (victim, k)),
        total,
    );
    writeln!(out, "\n== at the end, eds-server serves:")?;
    render_endpoints(&server, &key, out).await?;
    chart(&summary, out)?;
    drop(client);
    drop(server);
    Ok(summary)
}

/// One closed-loop request loop; `call` sends one echo on its side's channel.
async fn worker<F, Fut>(
    mut call: F,
    pinned: Option<usize>,
    index: Arc<HashMap<String, usize>>,
    log: SharedLog,
    stop: Arc<AtomicBool>,
    started: Instant,
) where
    F: FnMut(EchoRequest) -> Fut,
    Fut: Future<Output = Result<tonic::Response<EchoReply>, tonic::Status>>,
{
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let start = started.elapsed();
        let result = call(EchoRequest {
            message: format!("m{i}"),
            work_us: 0,
        })
        .await;
        let latency = started.elapsed().saturating_sub(start);
        let failed = {
            let mut l = lock(&log);
            match result.map(|r| index.get(&r.into_inner().pod).copied()) {
                Ok(Some(pod)) => {
                    l.samples.push((start, latency, pod));
                    false
                }
                Ok(None) => {
                    l.failures.push((start, pinned));
                    if l.errors.len() < 5 {
                        l.errors.push("a reply from an unknown pod".to_owned());
                    }
                    true
                }
                Err(status) => {
                    l.failures.push((start, pinned));
                    if l.errors.len() < 5 {
                        l.errors
                            .push(format!("{:?}: {}", status.code(), status.message()));
                    }
                    true
                }
            }
        };
        if failed {
            tokio::time::sleep(FAILURE_PAUSE).await;
        }
    }
}

struct KillTimes {
    unready: Duration,
    propagated: Duration,
    stopped: Duration,
}

async fn kill_pod(
    fleet: &mut Fleet,
    view: &View,
    victim: usize,
    client: &LbClient,
    key: &str,
    started: Instant,
    out: &mut impl Write,
) -> anyhow::Result<KillTimes> {
    let pod = &fleet.pods[victim];
    let name = pod.pod.name().to_owned();
    writeln!(
        out,
        "== t={:>4.1}s kill {name} ({}, {} per-connection channels pinned to it): NotReady first",
        started.elapsed().as_secs_f64(),
        pod.zone,
        view.conns[victim]
    )?;
    pod.pod.set_ready(false).await?;
    let unready = started.elapsed();
    // lb-client routes around it once the endpoint is no longer HEALTHY in its pool.
    eventually(&format!("lb-client sees {name} go"), WAIT, || async {
        let d = client.debug();
        let state = d
            .services
            .iter()
            .find(|s| s.service == key)
            .and_then(|s| s.endpoints.iter().find(|e| e.pod.as_deref() == Some(&name)))
            .map(|e| e.health.clone());
        Ok(match state {
            Some(h) if h == "HEALTHY" => Err(h),
            _ => Ok(()),
        })
    })
    .await?;
    let propagated = started.elapsed();
    writeln!(
        out,
        "== t={:>4.1}s lb-client sees {name} unusable {:.0} ms after NotReady",
        propagated.as_secs_f64(),
        (propagated - unready).as_secs_f64() * 1000.0
    )?;
    // Let lb-client's last requests there finish, so stopping the process cannot fail them.
    eventually(
        &format!("lb-client has nothing in flight to {name}"),
        WAIT,
        || async {
            let d = client.debug();
            let n = d
                .services
                .iter()
                .find(|s| s.service == key)
                .and_then(|s| s.endpoints.iter().find(|e| e.pod.as_deref() == Some(&name)))
                .map_or(0, |e| e.in_flight);
            Ok(if n == 0 {
                Ok(())
            } else {
                Err(format!("{n} in flight"))
            })
        },
    )
    .await?;
    // Stop the process: the pod is now dead. Stopping waits on the process, so off the
    // runtime; the time taken is before, as requests fail from the moment it begins.
    let stopped = started.elapsed();
    if let Some(backend) = fleet.pods[victim].backend.take() {
        tokio::task::spawn_blocking(move || backend.stop()).await?;
    }
    writeln!(
        out,
        "== t={:>4.1}s {name}'s process stopped ({:.1} s to exit); per-connection channels pinned to it now fail",
        stopped.as_secs_f64(),
        started.elapsed().saturating_sub(stopped).as_secs_f64()
    )?;
    Ok(KillTimes {
        unready,
        propagated,
        stopped,
    })
}

/// What the live table shows of each pod: (name, zone, latency ms), and
/// per-connection channels pinned to it.
struct View {
    pods: Vec<(String, String, u64)>,
    conns: Vec<usize>,
    headless: bool,
}

impl View {
    /// Prints the requests since the last tick, `since` ago, as rates; returns
    /// how many samples of each side it has seen.
    fn tick(
        &self,
        now: Duration,
        since: Duration,
        lb: &SharedLog,
        pc: &SharedLog,
        seen: (usize, usize),
        out: &mut impl Write,
    ) -> anyhow::Result<(usize, usize)> {
        let n = self.pods.len();
        let take = |log: &SharedLog, from: usize| {
            let l = lock(log);
            let mut lat: Vec<Vec<Duration>> = vec![Vec::new(); n];
            for &(_, d, p) in &l.samples[from.min(l.samples.len())..] {
                lat[p].push(d);
            }
            (lat, l.samples.len(), l.failures.len())
        };
        let (lb_lat, lb_len, lb_fail) = take(lb, seen.0);
        let (pc_lat, pc_len, pc_fail) = take(pc, seen.1);
        // A kill stalls the loop for a moment; rates are over the time that really passed.
        let secs = since.as_secs_f64().max(1e-3);
        let rate = |n: usize| (n as f64 / secs).round() as u64;
        if !self.headless {
            // Clear the screen and home the cursor: a live table.
            write!(out, "\x1b[2J\x1b[H")?;
        }
        writeln!(
            out,
            "-- t={:>3}s  lb-client {:>6} req/s, {} failed so far | per-connection {:>6} req/s, {} failed so far",
            now.as_secs(),
            rate(lb_len - seen.0),
            lb_fail,
            rate(pc_len - seen.1),
            pc_fail
        )?;
        writeln!(
            out,
            "{:<10} {:<7} {:>6} {:>5} | {:>8} {:>8} | {:>8} {:>8}",
            "POD", "ZONE", "SPEED", "CONNS", "LB req/s", "LB p99", "PC req/s", "PC p99"
        )?;
        for (i, (name, zone, latency_ms)) in self.pods.iter().enumerate() {
            writeln!(
                out,
                "{:<10} {:<7} {:>4}ms {:>5} | {:>8} {:>8} | {:>8} {:>8}",
                name,
                zone,
                latency_ms,
                self.conns[i],
                rate(lb_lat[i].len()),
                p99_text(&mut lb_lat[i].clone()),
                rate(pc_lat[i].len()),
                p99_text(&mut pc_lat[i].clone()),
            )?;
        }
        out.flush()?;
        Ok((lb_len, pc_len))
    }
}

fn p99(lat: &mut [Duration]) -> Option<Duration> {
    if lat.is_empty() {
        return None;
    }
    lat.sort_unstable();
    let i = ((lat.len() as f64 * 0.99).ceil() as usize).clamp(1, lat.len()) - 1;
    Some(lat[i])
}

fn p99_text(lat: &mut [Duration]) -> String {
    p99(lat).map_or_else(
        || "-".to_owned(),
        |d| format!("{:.1}ms", d.as_secs_f64() * 1000.0),
    )
}

fn summarise(
    fleet: &Fleet,
    conns: &[usize],
    lb: &SharedLog,
    pc: &SharedLog,
    kill: Option<(usize, &KillTimes)>,
    total: Duration,
) -> DemoSummary {
    let n = fleet.pods.len();
    // The comparison window: after warm-up, before the kill changes the pool.
    let window_end = kill.map_or(total, |(_, k)| k.unready);
    let window = window_end.saturating_sub(WARMUP).as_secs_f64().max(1e-3);
    let figures = |log: &SharedLog| -> Vec<SideFigures> {
        let l = lock(log);
        let mut lat: Vec<Vec<Duration>> = vec![Vec::new(); n];
        let mut busy = vec![Duration::ZERO; n];
        for &(start, d, p) in &l.samples {
            lat[p].push(d);
            if start >= WARMUP && start < window_end {
                busy[p] += d;
            }
        }
        let mut failed = vec![0u64; n];
        for &(_, p) in &l.failures {
            if let Some(p) = p {
                failed[p] += 1;
            }
        }
        (0..n)
            .map(|i| SideFigures {
                requests: lat[i].len() as u64,
                failed: failed[i],
                p99_ms: p99(&mut lat[i]).map_or(0.0, |d| d.as_secs_f64() * 1000.0),
                in_flight: busy[i].as_secs_f64() / window,
            })
            .collect()
    };
    let lb_fig = figures(lb);
    let pc_fig = figures(pc);
    let pods: Vec<PodSummary> = fleet
        .pods
        .iter()
        .enumerate()
        .map(|(i, p)| PodSummary {
            pod: p.pod.name().to_owned(),
            zone: p.zone.clone(),
            latency_ms: p.latency_ms,
            connections: conns[i],
            lb: lb_fig[i].clone(),
            per_connection: pc_fig[i].clone(),
        })
        .collect();
    let (lb_l, pc_l) = (lock(lb), lock(pc));
    let kill = kill.map(|(victim, k)| KillReport {
        pod: pods[victim].pod.clone(),
        propagated_after: k.propagated.saturating_sub(k.unready),
        lb_replies_after_propagation: lb_l
            .samples
            .iter()
            .filter(|&&(start, _, p)| p == victim && start >= k.propagated)
            .count() as u64,
        lb_failed_after_stop: lb_l
            .failures
            .iter()
            .filter(|(start, _)| *start >= k.stopped)
            .count() as u64,
        per_connection_failed_after_stop: pc_l
            .failures
            .iter()
            .filter(|(start, _)| *start >= k.stopped)
            .count() as u64,
    });
    DemoSummary {
        lb_in_flight_spread: DemoSummary::spread(&pods, |p| p.lb.in_flight),
        per_connection_in_flight_spread: DemoSummary::spread(&pods, |p| p.per_connection.in_flight),
        pods,
        lb_failed: lb_l.failures.len() as u64,
        lb_errors: lb_l.errors.clone(),
        per_connection_failed: pc_l.failures.len() as u64,
        kill,
    }
}

/// The end-of-run chart: per-pod share of requests and p99, both sides.
fn chart(s: &DemoSummary, out: &mut impl Write) -> anyhow::Result<()> {
    const WIDTH: f64 = 40.0;
    let lb_total: u64 = s.pods.iter().map(|p| p.lb.requests).sum();
    let pc_total: u64 = s.pods.iter().map(|p| p.per_connection.requests).sum();
    let max_p99 = s
        .pods
        .iter()
        .flat_map(|p| [p.lb.p99_ms, p.per_connection.p99_ms])
        .fold(0.0, f64::max)
        .max(1e-3);
    writeln!(
        out,
        "\n== share of requests per pod (whole run); lb = lb-client P2C, pc = per-connection"
    )?;
    for p in &s.pods {
        for (side, f, total) in [("lb", &p.lb, lb_total), ("pc", &p.per_connection, pc_total)] {
            let share = f.requests as f64 / total.max(1) as f64;
            writeln!(
                out,
                "{:<10} {:>4}ms {side} {:<40} {:>5.1}%  ({} ok, {} failed)",
                p.pod,
                p.latency_ms,
                "#".repeat((share * WIDTH).round() as usize),
                share * 100.0,
                f.requests,
                f.failed
            )?;
        }
    }
    writeln!(out, "\n== p99 latency per pod (whole run)")?;
    for p in &s.pods {
        for (side, f) in [("lb", &p.lb), ("pc", &p.per_connection)] {
            writeln!(
                out,
                "{:<10} {:>4}ms {side} {:<40} {:>6.1} ms",
                p.pod,
                p.latency_ms,
                "#".repeat((f.p99_ms / max_p99 * WIDTH).round() as usize),
                f.p99_ms
            )?;
        }
    }
    writeln!(
        out,
        "\n== summary: lb-client {lb_total} ok / {} failed; per-connection {pc_total} ok / {} failed",
        s.lb_failed, s.per_connection_failed
    )?;
    writeln!(
        out,
        "   average in flight per pod before the kill, max/mean among pods of one speed: lb-client {:.2}, per-connection {:.2}",
        s.lb_in_flight_spread, s.per_connection_in_flight_spread
    )?;
    writeln!(
        out,
        "   in flight per pod, lb-client:      {}",
        in_flight_list(s, |p| p.lb.in_flight)
    )?;
    writeln!(
        out,
        "   in flight per pod, per-connection: {}",
        in_flight_list(s, |p| p.per_connection.in_flight)
    )?;
    if let Some(k) = &s.kill {
        writeln!(
            out,
            "   killed {}: lb-client saw it {:.0} ms after NotReady, sent it nothing after ({} replies), {} lb-client failures after the stop; per-connection: {} failures after the stop",
            k.pod,
            k.propagated_after.as_secs_f64() * 1000.0,
            k.lb_replies_after_propagation,
            k.lb_failed_after_stop,
            k.per_connection_failed_after_stop
        )?;
    }
    out.flush()?;
    Ok(())
}

fn in_flight_list(s: &DemoSummary, f: impl Fn(&PodSummary) -> f64) -> String {
    s.pods
        .iter()
        .map(|p| format!("{}={:.1}", p.pod, f(p)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Waits until eds-server serves `n` endpoints for `key`.
async fn wait_served(server: &Server, key: &str, n: usize) -> anyhow::Result<()> {
    eventually(
        &format!("eds-server serves {n} endpoints of {key}"),
        WAIT,
        || async {
            Ok(match server.get(&format!("/debug/endpoints/{key}")).await {
                Ok((200, body)) => {
                    let v: serde_json::Value = serde_json::from_str(&body)?;
                    let got = v["endpoints"].as_array().map_or(0, Vec::len);
                    if got == n {
                        Ok(())
                    } else {
                        Err(format!("{got} endpoints"))
                    }
                }
                Ok((code, body)) => Err(format!("{code} {body}")),
                Err(e) => Err(e.to_string()),
            })
        },
    )
    .await
}

/// Waits until lb-client balances over `n` endpoints from eds-server.
async fn until_usable(client: &LbClient, key: &str, n: usize) -> anyhow::Result<()> {
    eventually(
        &format!("lb-client sees {n} endpoints of {key}"),
        WAIT,
        || async {
            let d = client.debug();
            Ok(match d.services.iter().find(|s| s.service == key) {
                Some(s) if s.source == Source::ControlPlane && s.usable == n => Ok(()),
                Some(s) => Err(format!("{:?}, {} usable", s.source, s.usable)),
                None => Err("not subscribed".to_owned()),
            })
        },
    )
    .await
}

/// eds-server's admin view of one service key as a table: the data `edsctl
/// endpoints <key>` shows.
async fn render_endpoints(server: &Server, key: &str, out: &mut impl Write) -> anyhow::Result<()> {
    let v = server.get_json(&format!("/debug/endpoints/{key}")).await?;
    let Some(endpoints) = v["endpoints"].as_array() else {
        bail!("/debug/endpoints/{key}: no endpoints array: {v}");
    };
    let s = |e: &serde_json::Value, k: &str| e[k].as_str().unwrap_or("-").to_owned();
    writeln!(
        out,
        "   {} version {}",
        s(&v, "canonical"),
        s(&v, "version").chars().take(12).collect::<String>()
    )?;
    writeln!(
        out,
        "   {:<18} {:<10} {:<12} {:<7} {:<9} {:>6}  READY-SINCE",
        "ADDRESS", "POD", "NODE", "ZONE", "HEALTH", "WEIGHT"
    )?;
    let mut rows: BTreeMap<String, String> = BTreeMap::new();
    for e in endpoints {
        rows.insert(
            s(e, "pod"),
            format!(
                "   {:<18} {:<10} {:<12} {:<7} {:<9} {:>6}  {}",
                s(e, "address"),
                s(e, "pod"),
                s(e, "node"),
                s(e, "zone"),
                s(e, "health"),
                e["weight"].as_u64().unwrap_or(0),
                s(e, "ready_since")
            ),
        );
    }
    for row in rows.values() {
        writeln!(out, "{row}")?;
    }
    out.flush()?;
    Ok(())
}

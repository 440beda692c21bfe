//! lb-client end to end: the real local control plane, the real eds-server,
//! echo backends as pods in the pod network, and tonic clients sending
//! through `LbClient` channels.
//!
//! Each test asserts behaviour (where traffic goes, whether any request
//! failed), never a latency figure; the figures are printed for the issue
//! notes. Loads are bounded loops on loopback and the pod network.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use eds_devkit::blackhole::Blackhole;
use eds_devkit::harness::{
    Backend, EchoOptions, PodSpec, ServicePortSpec, Target, TestCluster, TestNamespace, TestPod,
    eventually,
};
use eds_devkit::server::{Server, start_server, wait_ready};
use lb_client::{HashSource, LbClient, LbConfig, PolicySource, ServiceOptions, Source};
use lb_core::Policy;
use lb_core::outlier::OutlierConfig;
use lb_core::slow_start::SlowStart;
use proto::echo::EchoRequest;
use proto::echo::echo_client::EchoClient;

const WAIT: Duration = Duration::from_secs(60);

/// A Service `echo` (port 8080 -> container port `grpc` 9090) with pods
/// and their backends.
struct Fleet {
    ns: TestNamespace,
    pods: Vec<(TestPod, Backend)>,
}

impl Fleet {
    async fn new(prefix: &str) -> anyhow::Result<Self> {
        Self::annotated(prefix, &[]).await
    }

    /// A fleet whose Service carries `annotations` (`eds.rs/lb-policy`, ...).
    async fn annotated(prefix: &str, annotations: &[(&str, &str)]) -> anyhow::Result<Self> {
        let cluster = TestCluster::shared()?;
        let ns = cluster.namespace(prefix).await?;
        for zone in ["zone-a", "zone-b"] {
            ns.node(&format!("node-{zone}"), zone).await?;
        }
        ns.service(
            "echo",
            "echo",
            &[ServicePortSpec {
                name: "grpc".into(),
                port: 8080,
                target: Target::Name("grpc".into()),
            }],
            annotations,
        )
        .await?;
        Ok(Self {
            ns,
            pods: Vec::new(),
        })
    }

    fn key(&self) -> String {
        format!("echo.{}:8080", self.ns.name())
    }

    /// Sets (or with `None` removes) an annotation on the Service, as an
    /// operator's `kubectl annotate` would.
    async fn annotate(&self, key: &str, value: Option<&str>) -> anyhow::Result<()> {
        let services: kube::Api<k8s_openapi::api::core::v1::Service> =
            kube::Api::namespaced(self.ns.client().clone(), self.ns.name());
        let patch = serde_json::json!({"metadata": {"annotations": {key: value}}});
        services
            .patch(
                "echo",
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
            .with_context(|| format!("annotating the echo Service with {key}={value:?}"))?;
        Ok(())
    }

    async fn add(&mut self, name: &str, zone: &str, opts: &EchoOptions) -> anyhow::Result<usize> {
        let pod = self
            .ns
            .pod(PodSpec::new(name, "echo", &format!("node-{zone}")).port("grpc", 9090))
            .await?;
        let backend = pod.start_backend(9090, zone, opts).await?;
        pod.set_ready(true).await?;
        self.pods.push((pod, backend));
        Ok(self.pods.len() - 1)
    }

    async fn server(&self) -> anyhow::Result<Server> {
        self.server_with(&[]).await
    }

    async fn server_with(&self, flags: &[&str]) -> anyhow::Result<Server> {
        let server = start_server(self.ns.cluster(), self.ns.name(), flags).await?;
        wait_ready(&server).await?;
        Ok(server)
    }

    async fn delete(self) -> anyhow::Result<()> {
        let pods: Vec<TestPod> = self
            .pods
            .into_iter()
            .map(|(p, b)| {
                b.stop();
                p
            })
            .collect();
        self.ns.delete_with_pods(&pods).await
    }
}

fn config(server: &Server, zone: Option<&str>, options: ServiceOptions) -> LbConfig {
    let mut c = LbConfig::new(format!("http://{}", server.xds));
    c.node_id = format!("lb-client-test-{}", std::process::id());
    c.zone = zone.map(str::to_owned);
    c.default_service = options;
    c.wait_for_endpoints = Duration::from_secs(30);
    c
}

fn options(policy: Policy) -> ServiceOptions {
    ServiceOptions {
        policy: Some(policy),
        slow_start: None,
        ..ServiceOptions::default()
    }
}

/// Replies by pod, and failures, from a bounded closed-loop load.
#[derive(Debug, Default, Clone)]
struct Tally {
    by_pod: BTreeMap<String, u64>,
    errors: Vec<String>,
    /// (time since start, pod) of every success, for time-sliced views.
    timeline: Vec<(Duration, String)>,
}

impl Tally {
    fn total(&self) -> u64 {
        self.by_pod.values().sum()
    }

    fn share(&self, pod: &str) -> f64 {
        self.by_pod.get(pod).copied().unwrap_or(0) as f64 / self.total().max(1) as f64
    }

    /// The successes between `from` and `to` after the load started.
    fn between(&self, from: Duration, to: Duration) -> Tally {
        let mut t = Tally::default();
        for (at, pod) in self
            .timeline
            .iter()
            .filter(|(at, _)| (from..to).contains(at))
        {
            *t.by_pod.entry(pod.clone()).or_default() += 1;
            t.timeline.push((*at, pod.clone()));
        }
        t
    }
}

/// Sends `requests` echoes over `workers` concurrent loops (or until `stop`).
async fn load(
    channel: lb_client::LbChannel,
    workers: usize,
    requests: usize,
    stop: Option<Arc<AtomicBool>>,
    request: impl Fn(usize) -> tonic::Request<EchoRequest> + Send + Sync + 'static,
) -> Tally {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let request = Arc::new(request);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let mut client = EchoClient::new(channel.clone());
        let (tally, next, stop, request) =
            (tally.clone(), next.clone(), stop.clone(), request.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests || stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed)) {
                    return;
                }
                let result = client.echo(request(i)).await;
                let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
                match result {
                    Ok(r) => {
                        let pod = r.into_inner().pod;
                        *t.by_pod.entry(pod.clone()).or_default() += 1;
                        t.timeline.push((started.elapsed(), pod));
                    }
                    Err(status) => {
                        t.errors
                            .push(format!("{:?}: {}", status.code(), status.message()));
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    tally.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

fn echo(work_us: u64) -> impl Fn(usize) -> tonic::Request<EchoRequest> + Send + Sync + 'static {
    move |i| {
        tonic::Request::new(EchoRequest {
            message: format!("m{i}"),
            work_us,
        })
    }
}

/// Waits until the client balances over exactly `n` endpoints from eds-server.
async fn until_endpoints(client: &LbClient, key: &str, n: usize) -> anyhow::Result<()> {
    eventually(
        &format!("lb-client sees {n} endpoints of {key}"),
        WAIT,
        || async {
            let d = client.debug();
            let s = d.services.iter().find(|s| s.service == key);
            Ok(match s {
                Some(s) if s.source == Source::ControlPlane && s.usable == n => Ok(()),
                Some(s) => Err(format!(
                    "{:?} with {} usable of {}",
                    s.source,
                    s.usable,
                    s.endpoints.len()
                )),
                None => Err("not subscribed".to_owned()),
            })
        },
    )
    .await
}

/// Waits until the client balances `key` with `policy`, taken from `source`.
async fn until_policy(
    client: &LbClient,
    key: &str,
    policy: &str,
    source: PolicySource,
) -> anyhow::Result<()> {
    eventually(
        &format!(
            "lb-client balances {key} with {policy} ({})",
            source.as_str()
        ),
        WAIT,
        || async {
            let d = client.debug();
            Ok(match d.services.iter().find(|s| s.service == key) {
                Some(s) if s.policy == policy && s.policy_source == source => Ok(()),
                Some(s) => Err(format!(
                    "{} ({}), note {:?}, CDS version {:?}",
                    s.policy,
                    s.policy_source.as_str(),
                    s.policy_note,
                    d.control_plane.cluster_version
                )),
                None => Err("not subscribed".to_owned()),
            })
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_services_annotated_policy_applies_when_the_client_sets_none() -> anyhow::Result<()> {
    let mut fleet = Fleet::annotated("lbc-cds", &[("eds.rs/lb-policy", "round-robin")]).await?;
    for i in 0..3 {
        fleet
            .add(&format!("echo-{i}"), "zone-a", &EchoOptions::default())
            .await?;
    }
    let server = fleet.server().await?;
    let key = fleet.key();
    // No local policy and no local hash header: both come from the Service.
    let unset = ServiceOptions {
        slow_start: None,
        ..ServiceOptions::default()
    };
    assert!(unset.policy.is_none());
    let client = LbClient::connect(config(&server, None, unset))?;
    let channel = client.channel(&key)?;
    until_endpoints(&client, &key, 3).await?;
    until_policy(&client, &key, "round-robin", PolicySource::Cds).await?;

    // Round robin, one request at a time: the pods take turns in a fixed
    // cycle, so each gets exactly a third (P2C would only get close).
    let t = load(channel.clone(), 1, 300, None, echo(0)).await;
    ensure!(t.errors.is_empty(), "errors: {:?}", t.errors);
    eprintln!(
        "eds.rs/lb-policy: round-robin, no local policy: {:?}",
        t.by_pod
    );
    ensure!(
        t.by_pod.len() == 3 && t.by_pod.values().all(|n| *n == 100),
        "not round robin: {:?}",
        t.by_pod
    );
    for (i, w) in t.timeline.windows(4).enumerate() {
        ensure!(
            w[0].1 == w[3].1,
            "request {} broke the cycle: {:?}",
            i + 3,
            &t.timeline[i..i + 4]
        );
    }

    // A client that chose its policy keeps it; the debug view says why.
    let local = LbClient::connect(config(&server, None, options(Policy::P2c)))?;
    let _ = local.channel(&key)?;
    until_endpoints(&local, &key, 3).await?;
    eventually("the local client's Cluster arrives", WAIT, || async {
        let d = local.debug();
        Ok(match d.services[0].policy_note.as_deref() {
            Some(note) if note.contains("round-robin") => Ok(()),
            other => Err(format!(
                "{other:?}, CDS {:?}",
                d.control_plane.cluster_version
            )),
        })
    })
    .await?;
    until_policy(&local, &key, "p2c", PolicySource::Local).await?;

    // The operator switches the Service to ring hash on a header: the
    // client follows without a restart (the header rides on the Cluster),
    // and a user's requests now stick to one pod.
    fleet
        .annotate("eds.rs/lb-policy", Some("ring-hash"))
        .await?;
    fleet.annotate("eds.rs/hash-header", Some("x-user")).await?;
    until_policy(&client, &key, "ring-hash", PolicySource::Cds).await?;
    eventually("the Service's hash header arrives", WAIT, || async {
        let d = client.debug();
        Ok(match d.services.iter().find(|s| s.service == key) {
            Some(s) if s.hash_header.as_deref() == Some("x-user") => Ok(()),
            other => Err(format!("{:?}", other.map(|s| &s.hash_header))),
        })
    })
    .await?;
    let mut echo_client = EchoClient::new(channel.clone());
    let mut by_user: BTreeMap<usize, std::collections::BTreeSet<String>> = BTreeMap::new();
    for round in 0..4 {
        for u in 0..20 {
            let mut req = tonic::Request::new(EchoRequest {
                message: format!("{round}"),
                work_us: 0,
            });
            req.metadata_mut()
                .insert("x-user", format!("user-{u}").parse()?);
            let pod = echo_client.echo(req).await?.into_inner().pod;
            by_user.entry(u).or_default().insert(pod);
        }
    }
    for (u, pods) in &by_user {
        ensure!(pods.len() == 1, "user-{u} went to {pods:?} under ring hash");
    }
    let spread: std::collections::BTreeSet<_> = by_user.values().flatten().collect();
    eprintln!("eds.rs/lb-policy: ring-hash: 20 users on {spread:?}");
    ensure!(spread.len() >= 2, "20 keys should spread: {spread:?}");

    // A policy only lb-client runs reaches it as itself (stock clients get
    // least request), and the Service's slow-start window comes with it.
    fleet
        .annotate("eds.rs/slow-start-window", Some("20s"))
        .await?;
    fleet
        .annotate("eds.rs/lb-policy", Some("peak-ewma"))
        .await?;
    until_policy(&client, &key, "peak-ewma", PolicySource::Cds).await?;
    eventually("the Service's slow-start window arrives", WAIT, || async {
        let d = client.debug();
        Ok(match d.services.iter().find(|s| s.service == key) {
            Some(s) if s.slow_start_window_ms == Some(20_000) => Ok(()),
            other => Err(format!("{:?}", other.map(|s| s.slow_start_window_ms))),
        })
    })
    .await?;
    let t = load(channel.clone(), 4, 200, None, echo(0)).await;
    ensure!(
        t.errors.is_empty(),
        "errors under peak-ewma: {:?}",
        t.errors
    );
    fleet.annotate("eds.rs/slow-start-window", None).await?;

    // Without the annotation the server's default, least request, is P2C here.
    fleet.annotate("eds.rs/lb-policy", None).await?;
    until_policy(&client, &key, "p2c", PolicySource::Cds).await?;
    ensure!(
        client.metrics_text().contains(&format!(
            "lb_client_policy{{service=\"{key}\",policy=\"p2c\",source=\"cds\"}} 1"
        )),
        "policy metric: {}",
        client.metrics_text()
    );
    drop(server);
    fleet.delete().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_sends_less_to_a_slow_backend_than_round_robin() -> anyhow::Result<()> {
    let mut fleet = Fleet::new("lbc-slow").await?;
    for i in 0..10 {
        let latency_ms = if i == 0 { 40 } else { 2 };
        let zone = if i % 2 == 0 { "zone-a" } else { "zone-b" };
        fleet
            .add(
                &format!("echo-{i}"),
                zone,
                &EchoOptions {
                    latency_ms,
                    ..Default::default()
                },
            )
            .await?;
    }
    let server = fleet.server().await?;
    let key = fleet.key();
    let mut shares = Vec::new();
    for policy in [Policy::P2c, Policy::RoundRobin] {
        let client = LbClient::connect(config(&server, None, options(policy)))?;
        let channel = client.channel(&key)?;
        until_endpoints(&client, &key, 10).await?;
        let t = load(channel, 20, 2_000, None, echo(0)).await;
        ensure!(
            t.errors.is_empty(),
            "{policy}: {} errors: {:?}",
            t.errors.len(),
            &t.errors[..t.errors.len().min(3)]
        );
        eprintln!(
            "{policy}: slow pod echo-0 got {:.1}% of {} requests; all: {:?}",
            t.share("echo-0") * 100.0,
            t.total(),
            t.by_pod
        );
        shares.push(t.share("echo-0"));
    }
    let (p2c, rr) = (shares[0], shares[1]);
    ensure!(
        rr > 0.08,
        "round robin must give the slow pod about 1/10, gave {rr:.3}"
    );
    ensure!(
        p2c < rr / 2.0,
        "P2C gave the slow pod {p2c:.3}, not clearly less than round robin's {rr:.3}"
    );
    drop(server);
    fleet.delete().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_affinity_stays_local_and_spills_when_the_zone_loses_most_pods() -> anyhow::Result<()>
{
    let mut fleet = Fleet::new("lbc-zone").await?;
    for zone in ["a", "b"] {
        for i in 0..3 {
            fleet
                .add(
                    &format!("{zone}-{i}"),
                    &format!("zone-{zone}"),
                    &EchoOptions::default(),
                )
                .await?;
        }
    }
    // Default server flags: not-ready pods reach lb-client (as UNHEALTHY)
    // because it asks for them (the `eds.rs/unhealthy-endpoints` client
    // feature), so it knows how much of its zone is gone; left out, the zone
    // would just look small.
    let server = fleet.server().await?;
    let key = fleet.key();
    let client = LbClient::connect(config(&server, Some("zone-a"), options(Policy::P2c)))?;
    let channel = client.channel(&key)?;
    until_endpoints(&client, &key, 6).await?;

    let t = load(channel.clone(), 8, 600, None, echo(0)).await;
    ensure!(t.errors.is_empty(), "errors: {:?}", t.errors);
    let cross = |t: &Tally| {
        t.by_pod
            .iter()
            .filter(|(p, _)| p.starts_with("b-"))
            .map(|(_, n)| n)
            .sum::<u64>() as f64
            / t.total().max(1) as f64
    };
    eprintln!(
        "zone-a client, zone-a at full capacity: cross-zone share {:.1}% ({:?})",
        cross(&t) * 100.0,
        t.by_pod
    );
    ensure!(
        cross(&t) == 0.0,
        "traffic left zone-a while it had capacity: {:?}",
        t.by_pod
    );
    ensure!(
        t.by_pod.len() == 3,
        "every zone-a pod should serve: {:?}",
        t.by_pod
    );

    // Two of three zone-a pods go not-ready: zone-a keeps a third of its capacity.
    fleet.pods[0].0.set_ready(false).await?;
    fleet.pods[1].0.set_ready(false).await?;
    until_endpoints(&client, &key, 4).await?;
    let view = &client.debug().services[0];
    eprintln!(
        "client view: tier {:?}, zone shares {:?}, endpoints {:?}",
        view.tier,
        view.zone_shares,
        view.endpoints
            .iter()
            .map(|e| (e.pod.clone().unwrap_or_default(), e.health.clone()))
            .collect::<Vec<_>>()
    );
    let t = load(channel, 8, 600, None, echo(0)).await;
    ensure!(t.errors.is_empty(), "errors: {:?}", t.errors);
    eprintln!(
        "zone-a client, zone-a at 1/3 capacity: cross-zone share {:.1}% ({:?})",
        cross(&t) * 100.0,
        t.by_pod
    );
    ensure!(
        cross(&t) > 0.3,
        "expected spillover to zone-b, got {:?}",
        t.by_pod
    );
    ensure!(
        t.share("a-2") > 0.1,
        "the remaining zone-a pod should still serve: {:?}",
        t.by_pod
    );
    ensure!(
        !t.by_pod.contains_key("a-0") && !t.by_pod.contains_key("a-1"),
        "not-ready pods served: {:?}",
        t.by_pod
    );
    drop(server);
    fleet.delete().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_keys_stick_and_move_only_to_a_new_backend() -> anyhow::Result<()> {
    let mut fleet = Fleet::new("lbc-hash").await?;
    for i in 0..4 {
        fleet
            .add(&format!("echo-{i}"), "zone-a", &EchoOptions::default())
            .await?;
    }
    let server = fleet.server().await?;
    let key = fleet.key();
    let client = LbClient::connect(config(
        &server,
        None,
        ServiceOptions {
            hash: HashSource::Header("x-user".into()),
            ..options(Policy::RingHash)
        },
    ))?;
    let channel = client.channel(&key)?;
    until_endpoints(&client, &key, 4).await?;

    let users = 40;
    let by_user = |client_channel: lb_client::LbChannel| async move {
        let mut echo = EchoClient::new(client_channel);
        let mut out: BTreeMap<usize, std::collections::BTreeSet<String>> = BTreeMap::new();
        for round in 0..5 {
            for u in 0..users {
                let mut req = tonic::Request::new(EchoRequest {
                    message: format!("{round}"),
                    work_us: 0,
                });
                req.metadata_mut()
                    .insert("x-user", format!("user-{u}").parse()?);
                let pod = echo.echo(req).await?.into_inner().pod;
                out.entry(u).or_default().insert(pod);
            }
        }
        anyhow::Ok(out)
    };
    let before = by_user(channel.clone()).await?;
    for (u, pods) in &before {
        ensure!(pods.len() == 1, "user-{u} went to {pods:?}");
    }
    let distinct: std::collections::BTreeSet<_> = before.values().flatten().collect();
    ensure!(
        distinct.len() >= 3,
        "40 keys should spread over the ring: {distinct:?}"
    );

    fleet
        .add("echo-new", "zone-a", &EchoOptions::default())
        .await?;
    until_endpoints(&client, &key, 5).await?;
    let after = by_user(channel).await?;
    let mut moved = 0;
    for (u, pods) in &after {
        ensure!(
            pods.len() == 1,
            "user-{u} went to {pods:?} after the scale-up"
        );
        if before[u] != *pods {
            moved += 1;
            ensure!(
                pods.contains("echo-new"),
                "user-{u} moved from {:?} to {pods:?}, not to the new pod",
                before[u]
            );
        }
    }
    eprintln!(
        "ring hash: {moved} of {users} keys moved when a 5th backend joined (ideal {:.0})",
        users as f64 / 5.0
    );
    ensure!(moved > 0, "the new backend took no keys");
    drop(server);
    fleet.delete().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_backend_ramps_up_over_the_slow_start_window() -> anyhow::Result<()> {
    let mut fleet = Fleet::new("lbc-ramp").await?;
    for i in 0..3 {
        fleet
            .add(&format!("echo-{i}"), "zone-a", &EchoOptions::default())
            .await?;
    }
    let server = fleet.server().await?;
    let key = fleet.key();
    let window = Duration::from_secs(8);
    let client = LbClient::connect(config(
        &server,
        None,
        ServiceOptions {
            slow_start: Some(SlowStart::new(window, 1.0, 0.05)?),
            ..options(Policy::WeightedRoundRobin)
        },
    ))?;
    let channel = client.channel(&key)?;
    until_endpoints(&client, &key, 3).await?;
    // The first three are past the window before the new one arrives.
    tokio::time::sleep(window).await;
    fleet
        .add("echo-new", "zone-a", &EchoOptions::default())
        .await?;
    until_endpoints(&client, &key, 4).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let loader = tokio::spawn(load(channel, 4, usize::MAX, Some(stop.clone()), echo(500)));
    tokio::time::sleep(window + Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let t = loader.await?;
    ensure!(t.errors.is_empty(), "errors: {:?}", t.errors);
    let early = t.between(Duration::ZERO, Duration::from_secs(2));
    let late = t.between(window + Duration::from_secs(1), Duration::MAX);
    eprintln!(
        "slow start ({window:?}): new pod share {:.1}% in the first 2 s, {:.1}% after the window (fair share 25%); {} requests",
        early.share("echo-new") * 100.0,
        late.share("echo-new") * 100.0,
        t.total()
    );
    ensure!(early.total() > 0 && late.total() > 0, "no traffic measured");
    ensure!(
        early.share("echo-new") < late.share("echo-new") / 2.0,
        "no ramp: {:.3} early vs {:.3} late",
        early.share("echo-new"),
        late.share("echo-new")
    );
    ensure!(
        late.share("echo-new") > 0.15,
        "after the window the new pod should get about a fair share"
    );
    drop(server);
    fleet.delete().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_backend_is_ejected_and_returns_after_recovery() -> anyhow::Result<()> {
    let mut fleet = Fleet::new("lbc-eject").await?;
    let fail_file = std::env::temp_dir().join(format!("lbc-eject-{}", std::process::id()));
    let _ = std::fs::remove_file(&fail_file);
    for i in 0..4 {
        let opts = EchoOptions {
            fail_file: (i == 0).then(|| fail_file.clone()),
            ..Default::default()
        };
        fleet.add(&format!("echo-{i}"), "zone-a", &opts).await?;
    }
    let server = fleet.server().await?;
    let key = fleet.key();
    let mut cfg = config(&server, None, options(Policy::P2c));
    cfg.outlier = OutlierConfig {
        base_ejection: Duration::from_secs(2),
        max_ejection: Duration::from_secs(4),
        success_rate: None,
        ..OutlierConfig::default()
    };
    let client = LbClient::connect(cfg)?;
    let channel = client.channel(&key)?;
    until_endpoints(&client, &key, 4).await?;

    let t = load(channel.clone(), 4, 200, None, echo(0)).await;
    ensure!(
        t.errors.is_empty() && t.by_pod.len() == 4,
        "healthy start: {:?} {:?}",
        t.by_pod,
        t.errors
    );

    std::fs::write(&fail_file, b"fail")?;
    let t = load(channel.clone(), 4, 400, None, echo(0)).await;
    let ejected = client.debug().services[0]
        .endpoints
        .iter()
        .any(|e| e.pod.as_deref() == Some("echo-0") && e.ejected);
    eprintln!(
        "echo-0 failing: {} errors of 400 before ejection; ejected now: {ejected}",
        t.errors.len()
    );
    ensure!(
        ejected,
        "echo-0 should be ejected after consecutive failures"
    );
    ensure!(
        t.errors.len() <= 10,
        "ejection should stop the errors quickly, got {}",
        t.errors.len()
    );
    ensure!(
        client.metrics_text().contains("lb_client_ejections_total"),
        "ejection metric missing"
    );

    std::fs::remove_file(&fail_file)?;
    eventually("echo-0 serves again after recovering", WAIT, || {
        let channel = channel.clone();
        async move {
            let t = load(channel, 4, 200, None, echo(0)).await;
            Ok(if t.by_pod.contains_key("echo-0") && t.errors.is_empty() {
                Ok(())
            } else {
                Err(format!("{:?} {:?}", t.by_pod, t.errors))
            })
        }
    })
    .await?;
    drop(server);
    fleet.delete().await
}

/// Hardening drill (issue 24, item 1): a scale-up whose new pods are not
/// ready yet, listen already and fail every request, as a warming JVM or a
/// cache still loading does. lb-client asks eds-server for not-ready
/// endpoints (to size zones), so it sees 6 UNHEALTHY pods next to 2 ready
/// ones: below a 50% panic threshold if not-ready pods counted. None of
/// them may get a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scale_up_of_not_ready_pods_gets_no_request() -> anyhow::Result<()> {
    let mut fleet = Fleet::new("lbc-scaleup").await?;
    for (pod, zone) in [("ready-a", "zone-a"), ("ready-b", "zone-b")] {
        fleet.add(pod, zone, &EchoOptions::default()).await?;
    }
    let server = fleet.server().await?;
    let key = fleet.key();
    let client = LbClient::connect(config(&server, Some("zone-a"), options(Policy::P2c)))?;
    let channel = client.channel(&key)?;
    until_endpoints(&client, &key, 2).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let loader = tokio::spawn(load(channel, 8, usize::MAX, Some(stop.clone()), echo(200)));
    // The new pods fail every request from the start, and never become ready.
    let fail_file = std::env::temp_dir().join(format!("lbc-scaleup-{}", std::process::id()));
    std::fs::write(&fail_file, b"warming up")?;
    let failing = EchoOptions {
        fail_file: Some(fail_file.clone()),
        ..Default::default()
    };
    let mut warming = Vec::new();
    for i in 0..6 {
        let zone = ["zone-a", "zone-b"][i % 2];
        let pod = fleet
            .ns
            .pod(
                PodSpec::new(&format!("warming-{i}"), "echo", &format!("node-{zone}"))
                    .port("grpc", 9090),
            )
            .await?;
        let backend = pod.start_backend(9090, zone, &failing).await?;
        pod.set_ready(false).await?;
        warming.push((pod, backend));
    }
    eventually(
        "lb-client sees the 6 not-ready pods next to the 2 ready ones",
        WAIT,
        || async {
            let d = client.debug();
            let s = d.services.iter().find(|s| s.service == key);
            Ok(match s {
                Some(s)
                    if s.endpoints.len() == 8
                        && s.endpoints
                            .iter()
                            .filter(|e| e.health == "UNHEALTHY")
                            .count()
                            == 6 =>
                {
                    Ok(())
                }
                Some(s) => Err(format!(
                    "{} endpoints: {:?}",
                    s.endpoints.len(),
                    s.endpoints.iter().map(|e| &e.health).collect::<Vec<_>>()
                )),
                None => Err("not subscribed".to_owned()),
            })
        },
    )
    .await?;
    // Load keeps running over the scaled-up set for a while.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let debug = client.debug();
    stop.store(true, Ordering::Relaxed);
    let t = loader.await?;
    let service = debug
        .services
        .iter()
        .find(|s| s.service == key)
        .context("the service left the debug view")?;
    let not_ready_picks: u64 = service
        .endpoints
        .iter()
        .filter(|e| e.health == "UNHEALTHY")
        .map(|e| e.picks)
        .sum();
    eprintln!(
        "scale-up with 6 not-ready pods: {} requests, {} failed, {not_ready_picks} picks of a not-ready pod, tier {:?}, by pod {:?}",
        t.total(),
        t.errors.len(),
        service.tier,
        t.by_pod
    );
    ensure!(
        t.errors.is_empty(),
        "{} requests failed, e.g. {:?}",
        t.errors.len(),
        &t.errors[..t.errors.len().min(3)]
    );
    ensure!(
        not_ready_picks == 0,
        "{not_ready_picks} picks of a not-ready pod (tier {:?})",
        service.tier
    );
    ensure!(
        t.by_pod.keys().all(|p| p.starts_with("ready-")) && t.by_pod.len() == 2,
        "replies came from {:?}",
        t.by_pod
    );
    let _ = std::fs::remove_file(&fail_file);
    drop(server);
    fleet.pods.extend(warming);
    fleet.delete().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_fails_no_request() -> anyhow::Result<()> {
    let mut fleet = Fleet::new("lbc-roll").await?;
    for i in 0..3 {
        fleet
            .add(&format!("v1-{i}"), "zone-a", &EchoOptions::default())
            .await?;
    }
    let server = fleet.server().await?;
    let key = fleet.key();
    let client = LbClient::connect(config(&server, None, options(Policy::P2c)))?;
    let channel = client.channel(&key)?;
    until_endpoints(&client, &key, 3).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let loader = tokio::spawn(load(
        channel,
        8,
        usize::MAX,
        Some(stop.clone()),
        echo(1_000),
    ));
    // Surge one, then retire one, as a Deployment with maxSurge 1, maxUnavailable 0 does.
    for i in 0..3 {
        fleet
            .add(&format!("v2-{i}"), "zone-a", &EchoOptions::default())
            .await?;
        let (old, backend) = fleet.pods.remove(0);
        let finished = old.delete_gracefully(Duration::from_secs(2)).await?;
        // The kubelet stops the container after the endpoint update propagates;
        // the backend drains in-flight requests on SIGTERM.
        tokio::time::sleep(Duration::from_secs(1)).await;
        backend.stop();
        finished.await??;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let t = loader.await?;
    eprintln!(
        "rolling update: {} requests, {} failed; by pod {:?}",
        t.total(),
        t.errors.len(),
        t.by_pod
    );
    ensure!(
        t.errors.is_empty(),
        "failed requests during the rollout: {:?}",
        &t.errors[..t.errors.len().min(5)]
    );
    ensure!(
        t.by_pod.keys().any(|p| p.starts_with("v2-")),
        "the new pods never served"
    );
    let end = t.timeline.last().map_or(Duration::ZERO, |l| l.0);
    let last = t.between(
        end.saturating_sub(Duration::from_millis(500)),
        Duration::MAX,
    );
    ensure!(
        last.by_pod.keys().all(|p| p.starts_with("v2-")),
        "old pods still served at the end: {:?}",
        last.by_pod
    );
    drop(server);
    fleet.delete().await
}

/// Hardening drill (issue 24, item 3): the network between lb-client and
/// its control plane starts dropping everything without closing anything
/// (a lost node, a dead route). Nothing but the client's own liveness check
/// can notice; without one, the ADS stream waits for the next change
/// forever and the client never hears of one again. With HTTP/2 keepalive
/// it declares the connection dead, reconnects (here the address now leads
/// to another replica) and applies a change made after the drop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_dead_control_plane_connection_is_replaced() -> anyhow::Result<()> {
    let mut fleet = Fleet::new("lbc-blackhole").await?;
    fleet
        .add("echo-0", "zone-a", &EchoOptions::default())
        .await?;
    let first = fleet.server().await?;
    let second = fleet.server().await?;
    let proxy = Blackhole::start(first.xds).await?;
    let key = fleet.key();
    // The library's default keepalive, as a service team gets it.
    let mut cfg = config(&first, None, options(Policy::P2c));
    cfg.control_plane = Some(format!("http://{}", proxy.addr()));
    let client = LbClient::connect(cfg)?;
    let _channel = client.channel(&key)?;
    until_endpoints(&client, &key, 1).await?;

    proxy.blackhole(second.xds);
    let dropped = Instant::now();
    fleet
        .add("echo-1", "zone-a", &EchoOptions::default())
        .await?;
    until_endpoints(&client, &key, 2).await?;
    let took = dropped.elapsed();
    let d = client.debug();
    eprintln!(
        "silent control-plane connection: change applied {took:.1?} after the drop, {} connections through the proxy, last error {:?}",
        proxy.accepted(),
        d.control_plane.last_error
    );
    ensure!(
        proxy.accepted() >= 2,
        "the change arrived without a reconnect: {} connections",
        proxy.accepted()
    );
    drop((first, second));
    fleet.delete().await
}

/// Hardening drill (issue 24, item 4): a pod being deleted is DRAINING
/// for its grace period. While another pod is ready, lb-client sends the
/// draining one nothing new, and once its last request has ended it closes
/// the connection, long before the kubelet would kill the pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_pods_connection_is_closed_once_idle() -> anyhow::Result<()> {
    let mut fleet = Fleet::new("lbc-drain").await?;
    for pod in ["stays", "leaves"] {
        fleet.add(pod, "zone-a", &EchoOptions::default()).await?;
    }
    let server = fleet.server().await?;
    let key = fleet.key();
    let client = LbClient::connect(config(&server, None, options(Policy::P2c)))?;
    let channel = client.channel(&key)?;
    until_endpoints(&client, &key, 2).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let loader = tokio::spawn(load(channel, 4, usize::MAX, Some(stop.clone()), echo(500)));
    let endpoint = |pod: &str| {
        client
            .debug()
            .services
            .iter()
            .find(|s| s.service == key)
            .and_then(|s| {
                s.endpoints
                    .iter()
                    .find(|e| e.pod.as_deref() == Some(pod))
                    .cloned()
            })
    };
    eventually("both pods serve over open connections", WAIT, || async {
        Ok(match (endpoint("stays"), endpoint("leaves")) {
            (Some(a), Some(b)) if a.connected && b.connected && b.picks > 0 => Ok(()),
            other => Err(format!("{other:?}")),
        })
    })
    .await?;

    let leaving = fleet
        .pods
        .iter()
        .position(|(p, _)| p.name() == "leaves")
        .context("the leaving pod")?;
    let grace = Duration::from_secs(30);
    let (pod, backend) = fleet.pods.remove(leaving);
    let deleted = Instant::now();
    let finished = pod.delete_gracefully(grace).await?;
    let closed = eventually(
        "lb-client closes its idle connection to the draining pod",
        WAIT,
        || async {
            Ok(match endpoint("leaves") {
                Some(e) if e.health == "DRAINING" && !e.connected => Ok(e.picks),
                other => Err(format!("{other:?}")),
            })
        },
    )
    .await?;
    let took = deleted.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let later = endpoint("leaves").map(|e| (e.picks, e.connected));
    stop.store(true, Ordering::Relaxed);
    let t = loader.await?;
    eprintln!(
        "draining pod: connection closed {took:.1?} after the deletion (grace {grace:?}); picks {closed} then {later:?}; {} requests, {} failed",
        t.total(),
        t.errors.len()
    );
    ensure!(took < grace, "the connection outlived the grace period");
    ensure!(
        later == Some((closed, false)),
        "the draining pod was picked or reconnected after its connection closed: {later:?}"
    );
    ensure!(
        t.errors.is_empty(),
        "failed requests: {:?}",
        &t.errors[..t.errors.len().min(3)]
    );
    backend.stop();
    pod.delete_now().await?;
    finished.abort();
    drop(server);
    fleet.delete().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eds_server_restart_fails_no_request() -> anyhow::Result<()> {
    let mut fleet = Fleet::new("lbc-restart").await?;
    for i in 0..3 {
        fleet
            .add(&format!("echo-{i}"), "zone-a", &EchoOptions::default())
            .await?;
    }
    let server = fleet.server().await?;
    let (xds, admin) = (server.xds, server.admin);
    let key = fleet.key();
    let client = LbClient::connect(config(&server, None, options(Policy::P2c)))?;
    let channel = client.channel(&key)?;
    until_endpoints(&client, &key, 3).await?;
    let acks_before = client.debug().control_plane.acks;

    let stop = Arc::new(AtomicBool::new(false));
    let loader = tokio::spawn(load(channel, 4, usize::MAX, Some(stop.clone()), echo(500)));
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(server);
    eventually("the client notices the server is gone", WAIT, || async {
        let s = client.debug().control_plane.state;
        Ok(if s == "connected" {
            Err(s.to_owned())
        } else {
            Ok(())
        })
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let flags = [
        format!("--kubeconfig={}", fleet.ns.cluster().kubeconfig().display()),
        format!("--namespace={}", fleet.ns.name()),
        "--coalesce-window=50ms".to_owned(),
    ];
    let server = Server::start_on(xds, admin, &flags)?;
    wait_ready(&server).await?;
    eventually(
        "the client resubscribes to the restarted server",
        WAIT,
        || async {
            let d = client.debug();
            Ok(
                if d.control_plane.state == "connected" && d.control_plane.acks > acks_before {
                    Ok(())
                } else {
                    Err(format!("{:?}", d.control_plane))
                },
            )
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let t = loader.await?;
    eprintln!(
        "eds-server restart: {} requests, {} failed",
        t.total(),
        t.errors.len()
    );
    ensure!(
        t.errors.is_empty(),
        "failed requests across the restart: {:?}",
        &t.errors[..t.errors.len().min(5)]
    );
    ensure!(
        t.total() > 100,
        "too little traffic to mean anything: {}",
        t.total()
    );
    drop(server);
    fleet.delete().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_start_without_a_control_plane_uses_the_snapshot_file_or_dns() -> anyhow::Result<()> {
    let mut fleet = Fleet::new("lbc-cold").await?;
    for i in 0..2 {
        fleet
            .add(&format!("echo-{i}"), "zone-a", &EchoOptions::default())
            .await?;
    }
    let server = fleet.server().await?;
    let key = fleet.key();
    let dir = std::env::temp_dir().join(format!("lbc-cold-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let snapshot: PathBuf = dir.join("endpoints.snapshot");
    let _ = std::fs::remove_file(&snapshot);

    // A first client runs with the control plane and leaves a snapshot behind.
    let mut cfg = config(&server, None, options(Policy::P2c));
    cfg.snapshot_file = Some(snapshot.clone());
    let warm = LbClient::connect(cfg)?;
    let _ = warm.channel(&key)?;
    until_endpoints(&warm, &key, 2).await?;
    eventually("the snapshot file is written", WAIT, || async {
        Ok(if snapshot.exists() {
            Ok(())
        } else {
            Err("absent".to_owned())
        })
    })
    .await?;
    drop(warm);
    drop(server);

    // The control plane is gone (nothing listens there any more).
    let dead = format!(
        "http://127.0.0.1:{}",
        std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
    );
    let mut cfg = LbConfig::new(dead.clone());
    cfg.snapshot_file = Some(snapshot.clone());
    cfg.default_service = options(Policy::P2c);
    cfg.dns_fallback.enabled = false;
    let cold = LbClient::connect(cfg)?;
    let t = load(cold.channel(&key)?, 2, 50, None, echo(0)).await;
    eprintln!(
        "cold start from the snapshot file: {} ok, {} failed, {:?}",
        t.total(),
        t.errors.len(),
        t.by_pod
    );
    ensure!(
        t.errors.is_empty() && t.by_pod.len() == 2,
        "{:?} {:?}",
        t.by_pod,
        t.errors
    );
    ensure!(cold.debug().services[0].source == Source::SnapshotFile);

    // A damaged snapshot is ignored; the DNS fallback takes over. There is no
    // cluster DNS here, so the fallback name is pointed at the pods' address
    // through the override (resolved by the system resolver all the same).
    let mut bytes = std::fs::read(&snapshot)?;
    let n = bytes.len();
    bytes.truncate(n - 3);
    std::fs::write(&snapshot, &bytes)?;
    let mut cfg = LbConfig::new(dead);
    cfg.snapshot_file = Some(snapshot.clone());
    cfg.default_service = options(Policy::P2c);
    cfg.dns_fallback.after = Duration::from_millis(200);
    let first = fleet.pods[0].0.ip();
    cfg.dns_fallback
        .overrides
        .insert(key.clone(), format!("{first}:9090"));
    let dns = LbClient::connect(cfg)?;
    let t = load(dns.channel(&key)?, 2, 50, None, echo(0)).await;
    eprintln!(
        "cold start with a damaged snapshot, DNS fallback: {} ok, {} failed, {:?}",
        t.total(),
        t.errors.len(),
        t.by_pod
    );
    ensure!(
        t.errors.is_empty() && t.total() == 50,
        "{:?} {:?}",
        t.by_pod,
        t.errors
    );
    ensure!(dns.debug().services[0].source == Source::Dns);
    std::fs::remove_dir_all(&dir).context("cleaning up")?;
    fleet.delete().await
}

/// The documented example client (`lb-client/examples/echo_client.rs`), run
/// as a user runs it: its own process, flags only. From zone A it reaches
/// every zone-A pod and no other, with no failed request, and it reports
/// where its endpoints and policy came from. A bad service key or policy is
/// refused with a message naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_client_balances_from_its_zone() -> anyhow::Result<()> {
    let example = example_path("echo_client")?;
    let mut fleet = Fleet::new("lbc-example").await?;
    for (pod, zone) in [
        ("a-0", "zone-a"),
        ("a-1", "zone-a"),
        ("b-0", "zone-b"),
        ("b-1", "zone-b"),
    ] {
        fleet.add(pod, zone, &EchoOptions::default()).await?;
    }
    let server = fleet.server().await?;
    let key = fleet.key();
    eventually("eds-server to serve the four pods", WAIT, || async {
        let view = server.get_json(&format!("/debug/endpoints/{key}")).await?;
        let healthy = view["endpoints"]
            .as_array()
            .map(|eps| eps.iter().filter(|e| e["health"] == "HEALTHY").count())
            .unwrap_or(0);
        Ok(if healthy == 4 {
            Ok(())
        } else {
            Err(format!("{view:#}"))
        })
    })
    .await?;

    let control_plane = format!("http://{}", server.xds);
    let out = tokio::process::Command::new(&example)
        .args(["--control-plane", &control_plane, "--service", &key])
        .args([
            "--zone",
            "zone-a",
            "--requests",
            "300",
            "--concurrency",
            "6",
        ])
        .args(["--output", "json"])
        .env_remove("EDS_XDS_SERVER")
        .env_remove("EDS_SNAPSHOT_FILE")
        .output()
        .await
        .context("running the example client")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "the example failed ({}): {stderr}",
        out.status
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("its JSON report: {}", String::from_utf8_lossy(&out.stdout)))?;
    eprintln!(
        "example client report: ok {}, failed {}, by pod {}",
        report["ok"], report["failed"], report["by_pod"]
    );
    ensure!(
        report["ok"] == 300 && report["failed"] == 0,
        "requests: {report:#}"
    );
    let pods: Vec<&str> = report["by_pod"]
        .as_object()
        .map(|m| m.keys().map(String::as_str).collect())
        .unwrap_or_default();
    ensure!(
        pods == ["a-0", "a-1"],
        "a zone-a client should reach exactly the zone-a pods: {report:#}"
    );
    for pod in ["a-0", "a-1"] {
        let replies = report["by_pod"][pod]["replies"].as_u64().unwrap_or(0);
        ensure!(replies >= 50, "{pod} answered {replies} of 300: {report:#}");
    }
    // No annotation on the Service: eds-server's Cluster carries least
    // request, which lb-client runs as P2C.
    let service = &report["client"]["services"][0];
    ensure!(
        service["source"] == "control-plane"
            && service["policy_source"] == "cds"
            && service["policy"] == "p2c"
            && service["usable"] == 4,
        "the client's view of {key}: {service:#}"
    );

    // The text output a person reads names the pods and the policy.
    let text = tokio::process::Command::new(&example)
        .args([
            "--control-plane",
            &control_plane,
            "--service",
            &key,
            "--requests",
            "20",
        ])
        .args(["--policy", "round-robin"])
        .env_remove("EDS_ZONE")
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&text.stdout);
    ensure!(
        text.status.success(),
        "text run failed: {}",
        String::from_utf8_lossy(&text.stderr)
    );
    ensure!(
        stdout.contains("20 ok, 0 failed")
            && stdout.contains("policy round-robin (local)")
            && stdout.contains("b-0"),
        "text output: {stdout}"
    );

    // Bad input: refused before anything is sent, naming what is wrong.
    for (flags, says) in [
        (
            vec!["--service", "echo-without-namespace"],
            "echo-without-namespace",
        ),
        (
            vec!["--service", key.as_str(), "--policy", "fastest"],
            "fastest",
        ),
    ] {
        let out = tokio::process::Command::new(&example)
            .args(["--control-plane", &control_plane])
            .args(&flags)
            .output()
            .await?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success() && stderr.contains(says),
            "{flags:?}: {} {stderr}",
            out.status
        );
    }
    drop(server);
    fleet.delete().await
}

/// An example program of the workspace, built next to the test binaries
/// (`cargo test --workspace` builds every example; `cargo xtask e2e` builds
/// them before its scenarios).
fn example_path(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe
        .parent()
        .and_then(std::path::Path::parent)
        .map(|d| d.join("examples").join(name))
        .context("the test binary's directory")?;
    ensure!(
        path.is_file(),
        "{} not found; build it with `cargo build -p lb-client --example {name}`",
        path.display()
    );
    Ok(path)
}

/// eds-server serving xDS over mTLS (`--tls-cert`, `--tls-key`,
/// `--tls-client-ca`) and lb-client connecting with `control_plane_tls`: the
/// endpoints arrive and requests flow. A client without a certificate from
/// the server's client CA is refused at the handshake, never answered, and
/// says why in its status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_is_reached_over_mtls_and_refuses_a_client_without_a_certificate()
-> anyhow::Result<()> {
    use eds_devkit::cluster::pki::{self, Authority};
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};

    let ca = Authority::new()?;
    let serving = ca.serving(&["eds-server.eds-system.svc".to_owned()])?;
    let client_cert = ca.client("lb-client", &[])?;
    let dir = std::env::temp_dir().join(format!("eds-xds-mtls-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = |name: &str, pem: &str| -> anyhow::Result<String> {
        Ok(pki::write_file(&dir, name, pem)?.display().to_string())
    };
    let flags = [
        format!("--tls-cert={}", file("server.crt", &serving.cert_pem)?),
        format!("--tls-key={}", file("server.key", &serving.key_pem)?),
        format!("--tls-client-ca={}", file("ca.crt", ca.ca_pem())?),
    ];

    let mut fleet = Fleet::new("lbc-mtls").await?;
    for (pod, zone) in [("a-0", "zone-a"), ("b-0", "zone-b")] {
        fleet.add(pod, zone, &EchoOptions::default()).await?;
    }
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let server = fleet.server_with(&flags).await?;
    let key = fleet.key();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.ca_pem()))
        .domain_name("eds-server.eds-system.svc");

    let mut with_cert = config(&server, None, options(Policy::RoundRobin));
    with_cert.control_plane = Some(format!("https://{}", server.xds));
    with_cert.control_plane_tls = Some(tls.clone().identity(Identity::from_pem(
        &client_cert.cert_pem,
        &client_cert.key_pem,
    )));
    let client = LbClient::connect(with_cert)?;
    let channel = client.channel(&key)?;
    until_endpoints(&client, &key, 2)
        .await
        .with_context(|| format!("over mTLS: {:?}", client.debug().control_plane))?;
    let t = load(channel, 2, 40, None, echo(0)).await;
    ensure!(t.errors.is_empty(), "errors over mTLS: {:?}", t.errors);
    ensure!(
        t.total() == 40 && t.by_pod.len() == 2,
        "replies: {:?}",
        t.by_pod
    );

    let mut without_cert = config(&server, None, options(Policy::RoundRobin));
    without_cert.control_plane = Some(format!("https://{}", server.xds));
    without_cert.control_plane_tls = Some(tls);
    without_cert.dns_fallback.enabled = false;
    let refused = LbClient::connect(without_cert)?;
    let _channel = refused.channel(&key)?;
    let status = eventually(
        "the client without a certificate to fail its connection attempts",
        WAIT,
        || async {
            let s = refused.debug().control_plane;
            Ok(if s.failed_attempts >= 2 && s.last_error.is_some() {
                Ok(s)
            } else {
                Err(format!("{s:?}"))
            })
        },
    )
    .await?;
    eprintln!("refused client: {status:?}");
    ensure!(
        !status.ever_answered && status.acks == 0,
        "a client without a certificate was answered: {status:?}"
    );
    drop((client, refused, server));
    let _ = std::fs::remove_dir_all(&dir);
    fleet.delete().await
}

/// `lb_client_retries_total` for `key`, from the client's metrics text.
fn retries(client: &LbClient, key: &str) -> u64 {
    let prefix = format!("lb_client_retries_total{{service=\"{key}\"}} ");
    client
        .metrics_text()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_ends_a_request_to_a_hanging_backend_on_time() -> anyhow::Result<()> {
    let mut fleet = Fleet::new("lbc-deadline").await?;
    // Accepts every stream and never answers (a tonic server would answer
    // the request's grpc-timeout itself, so it is bare HTTP/2).
    let never = EchoOptions {
        refuse: Some(eds_devkit::harness::Refuse::NeverAnswer),
        ..Default::default()
    };
    fleet.add("echo-0", "zone-a", &never).await?;
    let server = fleet.server().await?;
    let key = fleet.key();
    let client = LbClient::connect(config(&server, None, options(Policy::P2c)))?;
    let channel = client.channel(&key)?;
    until_endpoints(&client, &key, 1).await?;
    let mut echo_client = EchoClient::new(channel.clone());

    let deadline = Duration::from_millis(200);
    let mut took = Vec::new();
    for _ in 0..4 {
        let mut request = echo(0)(0);
        request.set_timeout(deadline);
        let started = Instant::now();
        // Bounded here too, so that without the deadline enforced the test
        // fails rather than wait forever.
        let result = tokio::time::timeout(Duration::from_secs(10), echo_client.echo(request)).await;
        let elapsed = started.elapsed();
        let status = match result {
            Err(_) => anyhow::bail!(
                "no answer within 10 s to a request with a {deadline:?} deadline to a backend that never answers"
            ),
            Ok(Ok(reply)) => anyhow::bail!("the hanging backend answered: {reply:?}"),
            Ok(Err(status)) => status,
        };
        ensure!(
            status.code() == tonic::Code::DeadlineExceeded
                && status.message().contains(&key)
                && status.message().contains("200ms"),
            "{status:?}"
        );
        took.push(elapsed);
    }
    let ms: Vec<f64> = took.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    eprintln!(
        "{deadline:?} deadline against a backend that never answers: DEADLINE_EXCEEDED after {ms:.1?} ms"
    );
    // Generous: a loaded two-core machine must not make this flaky; the
    // printed figures are what "within 300 ms" is judged on.
    ensure!(
        took.iter().all(|d| *d < Duration::from_secs(2)),
        "deadline enforced late: {ms:?} ms"
    );

    let endpoint = client.debug().services[0].endpoints[0].clone();
    eprintln!(
        "after the deadlines: in flight {}, failures {}",
        endpoint.in_flight, endpoint.failures
    );
    ensure!(endpoint.in_flight == 0, "claims not released: {endpoint:?}");
    ensure!(
        endpoint.failures >= 4,
        "a request that hit its deadline after it was sent charges the endpoint: {endpoint:?}"
    );
    // The streams were reset, not left open at the backend.
    let log = fleet.pods[0].1.log().to_owned();
    let resets = eventually(
        "the backend to see the expired streams reset",
        Duration::from_secs(10),
        || {
            let log = log.clone();
            async move {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let resets: Vec<String> = text
                    .lines()
                    .filter(|l| l.starts_with("stream reset by the client"))
                    .map(str::to_owned)
                    .collect();
                Ok(if resets.len() >= 4 {
                    Ok(resets)
                } else {
                    Err(format!("{} resets in {}", resets.len(), log.display()))
                })
            }
        },
    )
    .await?;
    eprintln!("backend: {resets:?}");

    // The deadline bounds the wait for endpoints too (the configured wait is 30 s).
    let mut nowhere =
        EchoClient::new(client.channel(&format!("nothing.{}:8080", fleet.ns.name()))?);
    let mut request = tonic::Request::new(EchoRequest::default());
    request.set_timeout(deadline);
    let started = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(10), nowhere.echo(request))
        .await
        .context("waiting for endpoints outlived the deadline")?
        .expect_err("a service without endpoints answered");
    let elapsed = started.elapsed();
    eprintln!(
        "{deadline:?} deadline, service without endpoints: {:?} after {:.1} ms",
        status.code(),
        elapsed.as_secs_f64() * 1000.0
    );
    ensure!(
        status.code() == tonic::Code::DeadlineExceeded && elapsed < Duration::from_secs(2),
        "{status:?} after {elapsed:?}"
    );
    drop(server);
    fleet.delete().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_streams_are_retried_on_another_endpoint() -> anyhow::Result<()> {
    use eds_devkit::harness::Refuse;
    let mut fleet = Fleet::new("lbc-refuse").await?;
    fleet
        .add("echo-0", "zone-a", &EchoOptions::default())
        .await?;
    fleet
        .add("echo-1", "zone-b", &EchoOptions::default())
        .await?;
    let refusing = |mode| EchoOptions {
        refuse: Some(mode),
        ..Default::default()
    };
    fleet
        .add("refuse-stream", "zone-a", &refusing(Refuse::RefusedStream))
        .await?;
    fleet
        .add("refuse-goaway", "zone-b", &refusing(Refuse::Goaway))
        .await?;
    let server = fleet.server().await?;
    let key = fleet.key();
    let client = LbClient::connect(config(&server, None, options(Policy::P2c)))?;
    let channel = client.channel(&key)?;
    until_endpoints(&client, &key, 4).await?;

    let t = load(channel.clone(), 4, 400, None, echo(0)).await;
    let d = client.debug();
    let service = d
        .services
        .iter()
        .find(|s| s.service == key)
        .context("service not in the debug view")?;
    let by_pod: BTreeMap<String, (u64, u64, bool)> = service
        .endpoints
        .iter()
        .map(|e| {
            (
                e.pod.clone().unwrap_or_default(),
                (e.picks, e.failures, e.ejected),
            )
        })
        .collect();
    let retried = retries(&client, &key);
    eprintln!(
        "refused streams: {} ok {:?}, {} failed; (picks, failures, ejected) by pod {by_pod:?}; retries {retried}",
        t.total(),
        t.by_pod,
        t.errors.len()
    );
    ensure!(t.errors.is_empty(), "failed requests: {:?}", t.errors);
    ensure!(t.total() == 400, "{:?}", t.by_pod);
    for pod in ["refuse-stream", "refuse-goaway"] {
        ensure!(
            by_pod.get(pod).is_some_and(|(picks, _, _)| *picks > 0),
            "{pod} was never picked, so the drill proves nothing: {by_pod:?}"
        );
        ensure!(
            !t.by_pod.contains_key(pod),
            "{pod} answered: {:?}",
            t.by_pod
        );
    }
    ensure!(retried > 0, "no retry counted");
    drop(server);
    fleet.delete().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_never_holds_more_requests_than_its_cap() -> anyhow::Result<()> {
    let mut fleet = Fleet::new("lbc-cap").await?;
    // Slow enough that "refused at once" and "queued behind a request"
    // are seconds apart, however loaded the machine.
    let slow = EchoOptions {
        latency_ms: 3000,
        ..Default::default()
    };
    fleet.add("echo-0", "zone-a", &slow).await?;
    let server = fleet.server().await?;
    let key = fleet.key();
    let capped = ServiceOptions {
        max_in_flight_per_endpoint: Some(2),
        ..options(Policy::P2c)
    };
    let client = LbClient::connect(config(&server, None, capped))?;
    let channel = client.channel(&key)?;
    until_endpoints(&client, &key, 1).await?;
    EchoClient::new(channel.clone()).echo(echo(0)(0)).await?;

    // The client's own view, sampled while the requests run.
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (client, done) = (client.clone(), done.clone());
        tokio::spawn(async move {
            let mut most = 0;
            while !done.load(Ordering::Relaxed) {
                most = most.max(client.debug().services[0].endpoints[0].in_flight);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            most
        })
    };
    let requests: Vec<_> = (0..6)
        .map(|i| {
            let mut echo_client = EchoClient::new(channel.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let result = echo_client.echo(echo(0)(i)).await;
                (result, started.elapsed())
            })
        })
        .collect();
    let (mut served, mut exhausted, mut backend_most) = (Vec::new(), Vec::new(), 0);
    for r in requests {
        let (result, elapsed) = r.await?;
        match result {
            Ok(reply) => {
                backend_most = backend_most.max(reply.into_inner().in_flight);
                served.push(elapsed);
            }
            Err(status) => {
                ensure!(
                    status.code() == tonic::Code::ResourceExhausted
                        && status.message().contains(&key)
                        && status.message().contains(" 2 "),
                    "{status:?}"
                );
                exhausted.push(elapsed);
            }
        }
    }
    done.store(true, Ordering::Relaxed);
    let client_most = sampler.await?;
    let ms = |v: &[Duration]| -> Vec<u128> { v.iter().map(Duration::as_millis).collect() };
    eprintln!(
        "cap 2, 6 concurrent requests to a 3 s backend: {} served after {:?} ms, {} RESOURCE_EXHAUSTED after {:?} ms; most in flight: backend {backend_most}, client {client_most}",
        served.len(),
        ms(&served),
        exhausted.len(),
        ms(&exhausted)
    );
    ensure!(
        backend_most <= 2 && client_most <= 2,
        "over the cap: backend saw {backend_most}, client {client_most}"
    );
    ensure!(
        !served.is_empty() && served.len() + exhausted.len() == 6,
        "{served:?} {exhausted:?}"
    );
    // Refused at once, not queued behind the slow requests.
    ensure!(
        exhausted.iter().all(|d| *d < Duration::from_millis(2500)),
        "the excess waited: {:?}",
        ms(&exhausted)
    );
    drop(server);
    fleet.delete().await
}

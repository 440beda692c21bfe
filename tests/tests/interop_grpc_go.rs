//! A stock grpc-go xDS client balances from eds-server: `xds:///echo.<ns>:8080`
//! with nothing but a bootstrap file, against real echo backends on pod IPs
//! of the local cluster.
//!
//! ```text
//!  grpc-go client (host) ──ADS, 127.0.0.1──> eds-server (in-process) ──watch──> kube-apiserver
//!         │                                   LDS → RDS → CDS → EDS
//!         └──Echo, pod IPs via the pod network route──> echo backends (2 in zone-a, 2 in zone-b)
//! ```
//!
//! eds-server shapes each client's localities from its bootstrap zone: a
//! zone-a client with healthy zone-a capacity gets zone-b only as a failover
//! priority, so it must see zone-a pods only; a client without a zone spreads
//! over all; when zone-a has nothing ready, zone-a clients spill to zone-b.
//! A Service annotated `eds.rs/lb-policy: round-robin` works the same way.
//! Every run also checks, while the client is still connected, that it ACKed
//! all four resource types (a NACK and its reason would show up there).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use eds_tests::harness::{
    Backend, EchoOptions, PodSpec, ServicePortSpec, Target, TestCluster, TestNamespace, TestPod,
    eventually,
};
use eds_tests::interop::{
    EchoSummary, GrpcGoClient, GrpcGoRun, ensure_grpc_go_client, grpc_bootstrap,
};
use eds_tests::server::{Server, start_server};
use eds_tests::xds::{CDS, EDS, LDS, RDS};

const WAIT: Duration = Duration::from_secs(60);
/// Echo calls per run: enough to see a distribution, few enough to be quick.
const CALLS: usize = 200;

/// Waits until eds-server serves exactly `pods` as HEALTHY endpoints of `key`.
async fn wait_serving(server: &Server, key: &str, pods: &[&TestPod]) -> anyhow::Result<()> {
    let mut want: Vec<String> = pods.iter().map(|p| p.name().to_owned()).collect();
    want.sort();
    eventually(
        &format!("eds-server serving {want:?} for {key}"),
        WAIT,
        || {
            let want = want.clone();
            async move {
                let (code, body) = match server.get(&format!("/debug/endpoints/{key}")).await {
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
    .await
}

/// The grpc-go node's streams must have ACKed the version last sent of every
/// type, with no NACK; returns the acked versions per type.
async fn wait_acked_all_types(server: &Server, node_id: &str) -> anyhow::Result<Vec<String>> {
    eventually(
        &format!("{node_id} to ACK LDS, RDS, CDS and EDS"),
        Duration::from_secs(15),
        || async {
            let view = server.get_json("/debug/clients").await?;
            let streams: Vec<&serde_json::Value> = view["clients"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|c| c["stats"]["client"]["node_id"] == node_id)
                .collect();
            let mut acked = Vec::new();
            for ty in [LDS, RDS, CDS, EDS] {
                let Some(stats) = streams.iter().find_map(|s| {
                    s["stats"]["types"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|t| t["type_url"] == ty)
                }) else {
                    return Ok(Err(format!(
                        "no stream of {node_id} asked for {ty}: {view}"
                    )));
                };
                // A NACK fails at once, with grpc-go's reason.
                anyhow::ensure!(
                    stats["last_nack"].is_null(),
                    "grpc-go NACKed {ty}: {}",
                    serde_json::to_string_pretty(&stats["last_nack"])?
                );
                let sent = &stats["sent_version"];
                if sent.is_null() || stats["acked_version"] != *sent {
                    return Ok(Err(format!("{ty} not acked yet: {stats}")));
                }
                acked.push(format!("{ty}={sent}"));
            }
            Ok(Ok(acked))
        },
    )
    .await
}

/// One test's fixture: the server, the client binary and where files go.
struct Interop {
    server: Server,
    client: PathBuf,
    dir: PathBuf,
}

impl Interop {
    /// Writes a bootstrap for `node_id` in `zone` and returns its path.
    fn bootstrap(&self, node_id: &str, zone: Option<&str>) -> anyhow::Result<PathBuf> {
        let path = self.dir.join(format!("{node_id}.bootstrap.json"));
        let json = grpc_bootstrap(self.server.xds, node_id, zone);
        std::fs::write(&path, serde_json::to_vec_pretty(&json)?)?;
        Ok(path)
    }

    /// Runs the client as `node_id` in `zone` against `target`, checks while
    /// it is still connected that it ACKed every type, and returns what it saw.
    async fn run(
        &self,
        node_id: &str,
        zone: Option<&str>,
        target: &str,
    ) -> anyhow::Result<EchoSummary> {
        let run = GrpcGoRun {
            target: target.to_owned(),
            calls: CALLS,
            bootstrap: self.bootstrap(node_id, zone)?,
            dir: self.dir.clone(),
            name: node_id.to_owned(),
            hold: true,
        };
        let mut client = GrpcGoClient::start(&self.client, &run)?;
        let summary = client.summary(Duration::from_secs(120)).await?;
        let acked = wait_acked_all_types(&self.server, node_id)
            .await
            .with_context(|| format!("grpc-go's log:\n{}", client.log_text()))?;
        eprintln!(
            "{node_id} ({}) -> {target}: ok {} failed {} pods {:?} zones {:?} in {} ms; acked {acked:?}",
            zone.unwrap_or("no zone"),
            summary.ok,
            summary.failed,
            summary.pods,
            summary.zones,
            summary.elapsed_ms,
        );
        let log = client.log_text();
        client.stop();
        anyhow::ensure!(
            summary.ok == CALLS && summary.failed == 0 && summary.not_sent == 0,
            "every call must succeed: {summary:?}\ngrpc-go's log:\n{log}"
        );
        Ok(summary)
    }
}

/// Asserts every answer came from `pods`, each with more than `min_share`.
fn assert_spread(summary: &EchoSummary, pods: &[&TestPod], min_share: f64, what: &str) {
    let names: Vec<&str> = pods.iter().map(|p| p.name()).collect();
    let inside: usize = names.iter().map(|p| summary.pod(p)).sum();
    assert_eq!(
        inside, summary.ok,
        "{what}: every answer must come from {names:?}: {summary:?}"
    );
    for pod in &names {
        let share = summary.pod(pod) as f64 / summary.ok as f64;
        assert!(
            share > min_share,
            "{what}: {pod} got {share:.2} of the answers, want > {min_share}: {summary:?}"
        );
    }
}

async fn echo_pods(ns: &TestNamespace) -> anyhow::Result<(Vec<TestPod>, Vec<Backend>)> {
    ns.node("node-zone-a", "zone-a").await?;
    ns.node("node-zone-b", "zone-b").await?;
    let mut pods = Vec::new();
    let mut backends = Vec::new();
    for (name, node, zone) in [
        ("echo-a0", "node-zone-a", "zone-a"),
        ("echo-a1", "node-zone-a", "zone-a"),
        ("echo-b0", "node-zone-b", "zone-b"),
        ("echo-b1", "node-zone-b", "zone-b"),
    ] {
        let pod = ns
            .pod(PodSpec::new(name, "echo", node).port("grpc", 9090))
            .await?;
        // The client runs on the host: its traffic must go into the pod network.
        ns.cluster().network().verify_route(pod.ip())?;
        backends.push(
            pod.start_backend(9090, zone, &EchoOptions::default())
                .await?,
        );
        pod.set_ready(true).await?;
        pods.push(pod);
    }
    Ok((pods, backends))
}

fn grpc_port() -> Vec<ServicePortSpec> {
    vec![ServicePortSpec {
        name: "grpc".into(),
        port: 8080,
        target: Target::Name("grpc".into()),
    }]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_go_balances_from_eds_server() -> anyhow::Result<()> {
    let client = tokio::task::spawn_blocking(|| ensure_grpc_go_client(true))
        .await?
        .context("building the grpc-go interop client")?;
    let cluster = TestCluster::shared()?;
    let ns = cluster.namespace("grpcgo").await?;
    let dir = cluster.state().dir.join(format!("interop-{}", ns.name()));
    std::fs::create_dir_all(&dir)?;

    // No annotation: the default policy (least request, round robin after it
    // in the A52 list). A second Service over the same pods asks for round robin.
    ns.service("echo", "echo", &grpc_port(), &[]).await?;
    ns.service(
        "echo-rr",
        "echo",
        &grpc_port(),
        &[("eds.rs/lb-policy", "round-robin")],
    )
    .await?;
    let (pods, backends) = echo_pods(&ns).await?;
    let (zone_a, zone_b) = ([&pods[0], &pods[1]], [&pods[2], &pods[3]]);
    let all: Vec<&TestPod> = pods.iter().collect();

    let server = start_server(cluster, ns.name(), &[]).await?;
    server.wait_ready().await?;
    let echo = format!("echo.{}:8080", ns.name());
    let echo_rr = format!("echo-rr.{}:8080", ns.name());
    wait_serving(&server, &echo, &all).await?;
    wait_serving(&server, &echo_rr, &all).await?;
    let it = Interop {
        server,
        client,
        dir,
    };

    // A zone-a client with healthy zone-a capacity: zone-b is only a failover
    // priority, so zone-a pods take everything, shared fairly.
    let local = it.run("grpc-go-zone-a", Some("zone-a"), &echo).await?;
    assert_spread(&local, &zone_a, 0.25, "zone-a client, default policy");
    assert_eq!(local.zones.get("zone-a"), Some(&CALLS), "{local:?}");

    // No zone in the bootstrap: one priority, every pod gets some.
    let anywhere = it.run("grpc-go-no-zone", None, &echo).await?;
    assert_spread(&anywhere, &all, 0.0, "client without a zone");

    // round-robin is accepted (ACKed) and balances within the local zone.
    let rr = it
        .run("grpc-go-rr-zone-a", Some("zone-a"), &echo_rr)
        .await?;
    assert_spread(&rr, &zone_a, 0.25, "zone-a client, round robin");

    // Nothing ready in zone-a: a zone-a client spills to zone-b.
    for pod in zone_a {
        pod.set_ready(false).await?;
    }
    wait_serving(&it.server, &echo, &zone_b).await?;
    let spilled = it
        .run("grpc-go-zone-a-spill", Some("zone-a"), &echo)
        .await?;
    assert_spread(&spilled, &zone_b, 0.25, "zone-a client, zone-a not ready");

    drop(it);
    for backend in backends {
        backend.stop();
    }
    for pod in &pods {
        pod.delete_now().await?;
    }
    ns.delete().await?;
    Ok(())
}

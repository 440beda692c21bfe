//! eds-server over its life against the real local control plane: what a
//! client sees when it rejects a response, when it moves between replicas,
//! before the server has synced, through scale-ups, scale-downs and a
//! rolling update, and during a 2,000-endpoint rollout.
//!
//! - A NACK is tracked per stream and type (`/debug/clients`: the last NACK
//!   with its message, nonce and versions), counted (`eds_xds_nacks_total`),
//!   and does not wedge the stream: the next different state is sent.
//! - Two replicas watching the same state publish the same `version_info`
//!   and the same per-resource versions, and a client that reconnects to the
//!   other replica with its `version_info` is answered with that version.
//! - Before the initial sync nothing is sent (a negative check, bounded by a
//!   window; see the test), while the stream is accepted and recorded.
//! - Scale 3 -> 6 -> 2 and a one-by-one rolling update end in exactly the
//!   expected endpoints, and the rolling update never dips below two healthy.
//! - A 2,000-pod rollout reaches a subscriber in a few coalesced pushes.
//!
//! The servers run in-process (`eds_devkit::server`) with the cluster's
//! kubeconfig, scoped to each test's namespace; the clients are the plain
//! test client of `eds_devkit::xds`. An API server outage has its own binary
//! (`apiserver_restart.rs`), because it disturbs every test sharing a cluster.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use eds_devkit::harness::{
    PodSpec, ServicePortSpec, Target, TestCluster, TestNamespace, TestPod, eventually,
};
use eds_devkit::server::{
    Server, echo_addresses, echo_placement, echo_pod, echo_service, metric_sum, refused_kubeconfig,
    serves_exactly, start_server,
};
use eds_devkit::xds::{CDS, DeltaClient, EDS, SotwClient, clas, endpoints_named};
use futures::{StreamExt, TryStreamExt};
use proto::xds::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryResponse};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

/// `echo.<ns>:8080`, the key of the echo Service's port.
fn echo_key(ns: &TestNamespace) -> String {
    format!("echo.{}:8080", ns.name())
}

/// The stats of `type_url` on the stream of node `node_id` in `/debug/clients`.
fn client_type(clients: &Value, node_id: &str, type_url: &str) -> Option<Value> {
    clients["clients"]
        .as_array()?
        .iter()
        .filter(|c| c["stats"]["client"]["node_id"] == node_id)
        .flat_map(|c| c["stats"]["types"].as_array().cloned().unwrap_or_default())
        .find(|t| t["type_url"] == type_url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_is_tracked_counted_and_does_not_wedge_the_stream() -> anyhow::Result<()> {
    const MSG: &str = "eds-tests: rejecting this ClusterLoadAssignment on purpose";
    let cluster = TestCluster::shared()?;
    let ns = cluster.namespace("nack").await?;
    let mut pods = echo_service(&ns, 2).await?;
    let server = start_server(cluster, ns.name(), &[]).await?;
    server.wait_ready().await?;
    let key = echo_key(&ns);
    let names = [key.as_str()];
    let nacks_before = server.metric("eds_xds_nacks_total").await?;

    // A well-behaved client first: it accepts the two-pod state.
    let mut client = SotwClient::connect(server.xds, "nacker", Some("zone-a")).await?;
    client.send(EDS, &names, "", "", None).await?;
    let mut accepted = client
        .recv_until(&names, WAIT, |r| {
            serves_exactly(r, &key, &echo_addresses(&pods))
        })
        .await?
        .version_info;

    // A third pod: the client rejects the first response that carries it
    // and keeps the version it accepted, as an xDS client does.
    pods.push(echo_pod(&ns, "echo-2", 2).await?);
    let want = echo_addresses(&pods);
    let mut rejected = loop {
        let resp = client.recv(WAIT).await?;
        if serves_exactly(&resp, &key, &want) {
            break resp;
        }
        client.ack(&resp, &names).await?;
        accepted = resp.version_info;
    };
    // If the server sent something newer before our NACK arrived, the NACK
    // is stale (recorded, but not of the latest response): reject the newer
    // one too, until a NACK lands on the latest response. Bounded: only a
    // few state changes can follow one pod becoming ready.
    let mut nack = None;
    for _ in 0..5 {
        client
            .send(EDS, &names, &accepted, &rejected.nonce, Some(MSG))
            .await?;
        let nonce = rejected.nonce.clone();
        let record = eventually("the NACK in /debug/clients", WAIT, || async {
            let clients = server.get_json("/debug/clients").await?;
            let eds = client_type(&clients, "nacker", EDS);
            Ok(match eds.as_ref().map(|t| &t["last_nack"]) {
                Some(last) if last["nonce"] == nonce.as_str() => {
                    Ok(eds.clone().unwrap_or_default())
                }
                other => Err(format!("{other:?}")),
            })
        })
        .await?;
        if record["last_nack"]["stale"] == false {
            nack = Some(record);
            break;
        }
        rejected = client.recv(WAIT).await?;
    }
    let eds = nack.context("every NACK crossed a newer response; the state never settled")?;
    let last = &eds["last_nack"];
    assert_eq!(last["message"], MSG, "{eds:#}");
    assert_eq!(last["code"], 3, "{eds:#}");
    assert_eq!(
        last["rejected_version"],
        rejected.version_info.as_str(),
        "{eds:#}"
    );
    assert_eq!(last["client_version"], accepted.as_str(), "{eds:#}");
    assert_eq!(last["resources"], serde_json::json!([key]), "{eds:#}");
    assert!(eds["counters"]["nacks"].as_u64() >= Some(1), "{eds:#}");
    // The NACK does not count as an ACK: the client still runs what it accepted.
    assert_eq!(eds["acked_version"], accepted.as_str(), "{eds:#}");
    let nacks_after = server.metric("eds_xds_nacks_total").await?;
    assert!(
        nacks_after > nacks_before,
        "eds_xds_nacks_total went from {nacks_before} to {nacks_after}"
    );

    // The stream is not wedged: the next different state is sent (never the
    // rejected version again), and an ACK of it is recorded.
    pods[0].set_ready(false).await?;
    let want = echo_addresses(&pods[1..]);
    let mut resent_rejected = false;
    let next = client
        .recv_until(&names, WAIT, |r| {
            resent_rejected |= r.version_info == rejected.version_info;
            serves_exactly(r, &key, &want)
        })
        .await?;
    assert!(
        !resent_rejected,
        "the server sent the rejected version {} again",
        rejected.version_info
    );
    let version = next.version_info.clone();
    eventually("the ACK after the NACK", WAIT, || async {
        let clients = server.get_json("/debug/clients").await?;
        let eds = client_type(&clients, "nacker", EDS).unwrap_or_default();
        Ok(if eds["acked_version"] == version.as_str() {
            Ok(())
        } else {
            Err(format!("{eds:#}"))
        })
    })
    .await?;

    drop(client);
    drop(server);
    ns.delete_with_pods(&pods).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_agree_and_a_reconnect_to_another_gets_nothing_new() -> anyhow::Result<()> {
    let cluster = TestCluster::shared()?;
    let ns = cluster.namespace("replicas").await?;
    let pods = echo_service(&ns, 3).await?;
    // Both replicas watch Pods (`--watch-pods`, the default, spelled out):
    // `ready_since` then comes from each Pod's Ready condition time, stored
    // in the API, which every replica reads alike. Without the Pod watch it
    // is the time a replica first saw the endpoint ready, which differs
    // between replicas (and so would their versions). `--pod-labels=shard`
    // puts the label in the metadata, which tells the test when a replica
    // has applied an endpoint's Pod (see below).
    let a = start_server(
        cluster,
        ns.name(),
        &["--watch-pods=true", "--pod-labels=shard"],
    )
    .await?;
    let b = start_server(
        cluster,
        ns.name(),
        &["--watch-pods=true", "--pod-labels=shard"],
    )
    .await?;
    a.wait_ready().await?;
    b.wait_ready().await?;
    let key = echo_key(&ns);
    let names = [key.as_str()];
    let want = echo_addresses(&pods);

    // Each replica on its own reaches the final state: the three pods, each
    // with its `shard` label, so each endpoint's Pod is known and its
    // `ready_since` is the Pod's. Only then are they the "same state".
    let mut views = Vec::new();
    for (name, server) in [("A", &a), ("B", &b)] {
        let view = eventually(
            &format!("replica {name} to serve the three pods with their Pods applied"),
            WAIT,
            || async {
                let view = server.get_json(&format!("/debug/endpoints/{key}")).await?;
                let eps = view["endpoints"].as_array().cloned().unwrap_or_default();
                let seen: BTreeSet<String> = eps
                    .iter()
                    .filter(|e| e["health"] == "HEALTHY" && e["labels"]["shard"].is_string())
                    .filter_map(|e| e["address"].as_str().map(str::to_owned))
                    .collect();
                Ok(if seen == want && eps.len() == want.len() {
                    Ok(view)
                } else {
                    Err(format!("{view:#}"))
                })
            },
        )
        .await?;
        views.push(view);
    }
    assert_eq!(
        views[0], views[1],
        "the replicas' views of {key} differ (endpoints with metadata, and version)"
    );
    let snap_a = a.get_json("/debug/snapshot").await?;
    let snap_b = b.get_json("/debug/snapshot").await?;
    assert_eq!(
        snap_a["version"], snap_b["version"],
        "snapshot versions differ"
    );

    // Per-resource versions (delta carries them) agree.
    let mut resource_versions = Vec::new();
    for server in [&a, &b] {
        let mut delta = DeltaClient::connect(server.xds, "replica-delta", Some("zone-a")).await?;
        delta
            .send(DeltaDiscoveryRequest {
                type_url: EDS.into(),
                resource_names_subscribe: vec![key.clone()],
                ..Default::default()
            })
            .await?;
        let resp = delta.recv(WAIT).await?;
        let resource = resp
            .resources
            .iter()
            .find(|r| r.name == key)
            .with_context(|| format!("no {key} in {resp:?}"))?;
        resource_versions.push(resource.version.clone());
    }
    assert_eq!(
        resource_versions[0], resource_versions[1],
        "per-resource versions differ between replicas"
    );

    // A client gets the state from A...
    let mut client = SotwClient::connect(a.xds, "roaming", Some("zone-a")).await?;
    client.send(EDS, &names, "", "", None).await?;
    let from_a = client
        .recv_until(&names, WAIT, |r| serves_exactly(r, &key, &want))
        .await?;
    drop(client);

    // ...then reconnects to B, saying what it has. B answers (one idempotent
    // response per reconnect, see eds-server's sotw module) with the very
    // same version: nothing new for the client.
    let mut client = SotwClient::connect(b.xds, "roaming", Some("zone-a")).await?;
    client
        .send(EDS, &names, &from_a.version_info, "", None)
        .await?;
    let from_b = client.recv(WAIT).await?;
    assert_eq!(
        from_b.version_info, from_a.version_info,
        "replica B sent a different version for the same state"
    );
    assert_eq!(
        clas(&from_b)?,
        clas(&from_a)?,
        "same version, different content"
    );
    // B shows the client at A's version even before it ACKs on this stream.
    let clients = b.get_json("/debug/clients").await?;
    let eds = client_type(&clients, "roaming", EDS).context("roaming client on B")?;
    assert_eq!(
        eds["acked_version"],
        from_a.version_info.as_str(),
        "{eds:#}"
    );
    client.ack(&from_b, &names).await?;

    drop(client);
    drop((a, b));
    ns.delete_with_pods(&pods).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_nothing_before_the_initial_sync() -> anyhow::Result<()> {
    let cluster = TestCluster::shared()?;
    let ns = cluster.namespace("nosync").await?;
    // The API server refuses this identity, so the initial lists never
    // finish: the server stays unsynced for as long as the test likes.
    let kubeconfig = refused_kubeconfig(cluster, ns.name())?;
    let server = Server::start(&[
        format!("--kubeconfig={}", kubeconfig.display()),
        format!("--namespace={}", ns.name()),
    ])?;
    eventually("a watch error on /readyz", WAIT, || async {
        Ok(match server.get("/readyz").await {
            Ok((503, body)) if body.contains("last watch error") => Ok(()),
            Ok((code, body)) => Err(format!("{code} {body}")),
            Err(e) => Err(e.to_string()),
        })
    })
    .await?;

    let key = format!("echo.{}:8080", ns.name());
    let names = [key.as_str()];
    let mut client = SotwClient::connect(server.xds, "early", Some("zone-a")).await?;
    client.send(EDS, &names, "", "", None).await?;
    client.send(CDS, &names, "", "", None).await?;

    // Positive evidence first: the server holds both subscriptions, having
    // answered neither.
    let clients = eventually(
        "the early subscriptions in /debug/clients",
        WAIT,
        || async {
            let clients = server.get_json("/debug/clients").await?;
            let both = [EDS, CDS].iter().all(|ty| {
                client_type(&clients, "early", ty)
                    .is_some_and(|t| t["subscribed"] == serde_json::json!([key]))
            });
            Ok(if both {
                Ok(clients)
            } else {
                Err(format!("{clients:#}"))
            })
        },
    )
    .await?;
    for ty in [EDS, CDS] {
        let t = client_type(&clients, "early", ty).context("type stats")?;
        assert_eq!(t["counters"]["responses"], 0, "{t:#}");
        assert!(t["sent_version"].is_null(), "{t:#}");
    }

    // The negative check, on the wire: no response within a 2 s window. It
    // cannot prove "never"; it is bounded by the window, and backed by the
    // stream state above and below.
    match client.recv(Duration::from_secs(2)).await {
        Err(e) if e.to_string().contains("no xDS response within") => {}
        Err(e) => bail!("the stream failed instead of waiting: {e:#}"),
        Ok(resp) => bail!("a response before the initial sync: {resp:?}"),
    }
    let (code, body) = server.get("/readyz").await?;
    assert_eq!(code, 503, "{body}");
    let clients = server.get_json("/debug/clients").await?;
    for ty in [EDS, CDS] {
        let t = client_type(&clients, "early", ty).context("type stats")?;
        assert_eq!(t["counters"]["responses"], 0, "{t:#}");
    }

    drop(client);
    drop(server);
    ns.delete().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_up_scale_down_and_a_rolling_update_propagate() -> anyhow::Result<()> {
    let cluster = TestCluster::shared()?;
    let ns = cluster.namespace("scale").await?;
    let mut pods = echo_service(&ns, 3).await?;
    // Default flags otherwise: the mass-drop guard is on, and must not hold
    // back a planned scale-down (terminating pods drain; draining ones leaving
    // is no drop).
    let server = start_server(cluster, ns.name(), &[]).await?;
    server.wait_ready().await?;
    let key = echo_key(&ns);
    let names = [key.as_str()];
    let mut client = SotwClient::connect(server.xds, "scaler", Some("zone-a")).await?;
    client.send(EDS, &names, "", "", None).await?;
    client
        .recv_until(&names, WAIT, |r| {
            serves_exactly(r, &key, &echo_addresses(&pods))
        })
        .await
        .context("3 pods")?;

    // Scale up 3 -> 6.
    for i in 3..6 {
        pods.push(echo_pod(&ns, &format!("echo-{i}"), i).await?);
    }
    client
        .recv_until(&names, WAIT, |r| {
            serves_exactly(r, &key, &echo_addresses(&pods))
        })
        .await
        .context("scaled up to 6 pods")?;

    // Scale down 6 -> 2 as a ReplicaSet does: delete with a grace period;
    // the pods terminate (draining), then go.
    let gone = pods.split_off(2);
    let mut finishing = Vec::new();
    for pod in &gone {
        finishing.push(pod.delete_gracefully(Duration::from_secs(3)).await?);
    }
    for task in finishing {
        task.await??;
    }
    client
        .recv_until(&names, WAIT, |r| {
            serves_exactly(r, &key, &echo_addresses(&pods))
        })
        .await
        .context("scaled down to 2 pods")?;

    // A rolling update with surge 1 and nothing unavailable: per old pod,
    // a new pod becomes ready and is served, then the old one is deleted
    // gracefully and goes. Every state the client is sent keeps two healthy.
    let old = std::mem::take(&mut pods);
    let mut fewest_healthy = usize::MAX;
    let mut count_healthy = |r: &DiscoveryResponse| {
        if let Ok(Some(set)) = endpoints_named(r, &key) {
            fewest_healthy = fewest_healthy.min(set.health_counts().0);
        }
    };
    for (j, outgoing) in old.iter().enumerate() {
        let incoming = echo_pod(&ns, &format!("echo-v2-{j}"), j).await?;
        pods.push(incoming);
        let want: BTreeSet<String> = echo_addresses(old[j..].iter().chain(&pods));
        client
            .recv_until(&names, WAIT, |r| {
                count_healthy(r);
                serves_exactly(r, &key, &want)
            })
            .await
            .with_context(|| format!("new pod echo-v2-{j} served"))?;
        outgoing
            .delete_gracefully(Duration::from_secs(2))
            .await?
            .await??;
        let want: BTreeSet<String> = echo_addresses(old[j + 1..].iter().chain(&pods));
        client
            .recv_until(&names, WAIT, |r| {
                count_healthy(r);
                serves_exactly(r, &key, &want)
            })
            .await
            .with_context(|| format!("old pod {} gone", outgoing.name()))?;
    }
    assert!(
        fewest_healthy >= 2,
        "a state with {fewest_healthy} healthy endpoints was sent during the rolling update"
    );

    // Exactly the new pods, in their zones, and nothing else.
    let (code, body) = server.get(&format!("/debug/endpoints/{key}")).await?;
    assert_eq!(code, 200, "{body}");
    let view: Value = serde_json::from_str(&body)?;
    let mut got: Vec<(String, String, String)> = view["endpoints"]
        .as_array()
        .context("endpoints")?
        .iter()
        .map(|e| {
            (
                e["pod"].as_str().unwrap_or_default().to_owned(),
                e["address"].as_str().unwrap_or_default().to_owned(),
                e["zone"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    got.sort();
    let expected: Vec<(String, String, String)> = pods
        .iter()
        .enumerate()
        .map(|(j, p)| {
            (
                p.name().to_owned(),
                format!("{}:9090", p.ip()),
                echo_placement(j).1.to_owned(),
            )
        })
        .collect();
    assert_eq!(got, expected);

    drop(client);
    drop(server);
    ns.delete_with_pods(&pods).await
}

/// Pods in the rollout: 4,000 API writes, about 20 s on 2 cores.
const ROLLOUT_PODS: usize = 2_000;
/// Most pushes a subscriber may get for the rollout.
const MAX_PUSHES: usize = 50;
/// The server's coalescing window for the rollout. Pushes are bounded by
/// the span of the rollout divided by the window, whatever the number of
/// events in it: 1 s keeps a rollout of ~10-20 s (measured here: 10 pushes)
/// well under [`MAX_PUSHES`] even on a machine several times slower. With
/// the default 100 ms the same rollout measured 44 pushes, too close to the
/// bound to assert on.
const ROLLOUT_WINDOW: &str = "1s";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2000_endpoint_rollout_reaches_a_subscriber_in_few_pushes() -> anyhow::Result<()> {
    let cluster = TestCluster::shared()?;
    let ns = cluster.namespace("rollout").await?;
    ns.node("node-zone-a", "zone-a").await?;
    ns.node("node-zone-b", "zone-b").await?;
    ns.service(
        "bulk",
        "bulk",
        &[ServicePortSpec {
            name: "grpc".into(),
            port: 8080,
            target: Target::Number(9090),
        }],
        &[],
    )
    .await?;
    let server = Server::start(&[
        format!("--kubeconfig={}", cluster.kubeconfig().display()),
        format!("--namespace={}", ns.name()),
        format!("--coalesce-window={ROLLOUT_WINDOW}"),
    ])?;
    server.wait_ready().await?;
    let key = format!("bulk.{}:8080", ns.name());

    // The subscriber: counts every response from the first (the empty
    // Service) to the first complete one, ACKing each.
    let mut client = SotwClient::connect(server.xds, "rollout-watcher", Some("zone-a")).await?;
    client.send(EDS, &[&key], "", "", None).await?;
    let first = client.recv(WAIT).await?;
    client.ack(&first, &[&key]).await?;
    let watcher = {
        let key = key.clone();
        tokio::spawn(async move {
            let mut sizes = vec![endpoints_named(&first, &key)?.map_or(0, |s| s.len())];
            loop {
                let resp = client.recv(Duration::from_secs(120)).await?;
                client.ack(&resp, &[&key]).await?;
                let n = endpoints_named(&resp, &key)?.map_or(0, |s| s.len());
                sizes.push(n);
                if n == ROLLOUT_PODS {
                    return anyhow::Ok(sizes);
                }
            }
        })
    };

    // The rollout, as a ReplicaSet and kubelets make it: every pod is
    // created, then each becomes ready. 32 requests in flight at a time.
    let started = Instant::now();
    let results: Vec<anyhow::Result<TestPod>> = futures::stream::iter(0..ROLLOUT_PODS)
        .map(|i| {
            let ns = ns.clone();
            async move {
                let node = if i % 2 == 0 {
                    "node-zone-a"
                } else {
                    "node-zone-b"
                };
                ns.pod(PodSpec::new(&format!("bulk-{i}"), "bulk", node).port("grpc", 9090))
                    .await
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let created = started.elapsed();
    let mut pods = Vec::with_capacity(results.len());
    let mut failure = None;
    for result in results {
        match result {
            Ok(pod) => pods.push(pod),
            Err(e) => failure = failure.or(Some(e)),
        }
    }
    // Everything that can fail runs here, so 2,000 pods and their IPs are
    // cleaned up whatever happens; the assertions come after.
    let outcome = async {
        if let Some(e) = failure {
            return Err(e);
        }
        futures::stream::iter(&pods)
            .map(|pod| pod.set_ready(true))
            .buffer_unordered(32)
            .try_collect::<Vec<()>>()
            .await?;
        let readied = started.elapsed();
        let sizes = watcher.await??;
        let complete = started.elapsed();
        let (code, metrics) = server.get("/metrics").await?;
        anyhow::ensure!(code == 200, "GET /metrics: {code}");
        anyhow::Ok((sizes, metrics, readied, complete))
    }
    .await;
    drop(server);
    ns.delete_with_pods(&pods).await?;
    let (sizes, metrics, readied, complete) = outcome?;

    let kube_events = metric_sum(&metrics, "eds_state", &[("name", "kube_events")]);
    let published = metric_sum(&metrics, "eds_state", &[("name", "topologies_published")]);
    let pushes = sizes.len();
    let writes = 2 * ROLLOUT_PODS;
    eprintln!(
        "rollout of {ROLLOUT_PODS} pods, coalescing window {ROLLOUT_WINDOW}: {pushes} EDS responses to the subscriber \
         (endpoint counts {sizes:?}); {published} topologies published; \
         {kube_events} Kubernetes events applied by the server; {writes} API writes by the test; \
         pods created after {created:.1?}, ready after {readied:.1?}, complete after {complete:.1?}"
    );
    assert!(
        pushes <= MAX_PUSHES,
        "{pushes} pushes for a {ROLLOUT_PODS}-pod rollout (at most {MAX_PUSHES}); sizes {sizes:?}"
    );
    assert!(
        pushes * 10 <= writes,
        "{pushes} pushes is not far below the {writes} Kubernetes changes of the rollout"
    );
    assert_eq!(sizes.last(), Some(&ROLLOUT_PODS));
    Ok(())
}

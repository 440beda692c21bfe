//! eds-server rides out a kube-apiserver outage: while the API server is
//! down it keeps serving the last snapshot (a client that connects during
//! the outage gets the full ClusterLoadAssignment at once, never an empty
//! one, and stays ready), and when the API server is back it catches up (a
//! pod change made after the restart reaches clients).
//!
//! Stopping the API server disturbs every test that shares a cluster, so
//! this binary always starts and owns its cluster ([`TestCluster::owned`]),
//! even when `EDS_CLUSTER_DIR` points at a shared one.

use std::time::Duration;

use eds_devkit::harness::{TestCluster, eventually};
use eds_devkit::server::{echo_addresses, echo_pod, echo_service, serves_exactly, start_server};
use eds_devkit::xds::{EDS, SotwClient, clas, endpoints_named};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use proto::xds::pb::envoy::service::discovery::v3::DiscoveryResponse;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_serving_through_an_apiserver_restart_and_catches_up() -> anyhow::Result<()> {
    let cluster = TestCluster::owned()?;
    let ns = cluster.namespace("outage").await?;
    let mut pods = echo_service(&ns, 3).await?;
    let server = start_server(cluster, ns.name(), &[]).await?;
    server.wait_ready().await?;
    let key = format!("echo.{}:8080", ns.name());
    let names = [key.as_str()];

    // A subscriber connected throughout. From here on, every state it is
    // sent is recorded: none may ever have fewer than three endpoints.
    let mut steady = SotwClient::connect(server.xds, "steady", Some("zone-a")).await?;
    steady.send(EDS, &names, "", "", None).await?;
    let before = steady
        .recv_until(&names, WAIT, |r| {
            serves_exactly(r, &key, &echo_addresses(&pods))
        })
        .await?;
    let mut fewest = usize::MAX;
    let mut count = |r: &DiscoveryResponse| {
        let n = endpoints_named(r, &key)
            .ok()
            .flatten()
            .map_or(0, |s| s.len());
        fewest = fewest.min(n);
    };

    // The outage. The server notices: its watches fail and are retried.
    let watch_errors = || async {
        let (_, metrics) = server.get("/metrics").await?;
        anyhow::Ok(eds_devkit::server::metric_sum(
            &metrics,
            "eds_state",
            &[("name", "kube_watch_errors")],
        ))
    };
    let errors_before = watch_errors().await?;
    cluster.stop_apiserver().await?;
    eventually("the server to see the API server gone", WAIT, || async {
        let errors = watch_errors().await?;
        Ok(if errors > errors_before {
            Ok(())
        } else {
            Err(format!("{errors} watch errors"))
        })
    })
    .await?;

    // It stays ready and serves what it had: a client connecting now gets
    // the full assignment in its first response, the same version as before.
    let (code, body) = server.get("/readyz").await?;
    assert_eq!(code, 200, "ready during the outage: {body}");
    let mut late = SotwClient::connect(server.xds, "late", Some("zone-a")).await?;
    late.send(EDS, &names, "", "", None).await?;
    let first = late.recv(WAIT).await?;
    late.ack(&first, &names).await?;
    assert_eq!(
        clas(&first)?,
        clas(&before)?,
        "a client connecting during the outage got a different assignment"
    );
    assert_eq!(first.version_info, before.version_info);

    // The API server comes back (same flags, port and etcd data).
    cluster.start_apiserver().await?;
    // Our own kube client reconnects on its next request; make sure it has
    // before changing anything, so the change is made once.
    eventually(
        "the API server to answer the test's client",
        WAIT,
        || async {
            let api: Api<Pod> = Api::namespaced(ns.client().clone(), ns.name());
            Ok(match api.list(&ListParams::default()).await {
                Ok(list) => Ok(list.items.len()),
                Err(e) => Err(e.to_string()),
            })
        },
    )
    .await?;

    // A change made after the restart reaches both clients: a new pod, and
    // the first one going not ready.
    pods.push(echo_pod(&ns, "echo-3", 3).await?);
    pods[0].set_ready(false).await?;
    let want = echo_addresses(&pods[1..]);
    steady
        .recv_until(&names, WAIT, |r| {
            count(r);
            serves_exactly(r, &key, &want)
        })
        .await?;
    late.recv_until(&names, WAIT, |r| {
        count(r);
        serves_exactly(r, &key, &want)
    })
    .await?;
    assert!(
        fewest >= 3,
        "a state with {fewest} endpoints was sent around the outage"
    );
    let (code, body) = server.get("/readyz").await?;
    assert_eq!(code, 200, "{body}");

    drop((steady, late));
    drop(server);
    ns.delete_with_pods(&pods).await
}

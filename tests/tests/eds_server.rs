//! eds-server against the real local control plane: Services and
//! EndpointSlices made by the real EndpointSlice controller come out as xDS,
//! live, in every accepted name form, over SotW and delta ADS.
//!
//! The server runs in-process (its library's `run_until`) with the cluster's
//! kubeconfig, scoped to the test's namespace; clients are the plain test
//! client of `eds_devkit::xds`.

use std::time::Duration;

use anyhow::Context;
use eds_devkit::harness::TestCluster;
use eds_devkit::server::{
    Server, echo_service, http_get, refused_kubeconfig, start_server, wait_ready,
};
use eds_devkit::xds::{CDS, DeltaClient, EDS, LDS, RDS, SotwClient, endpoints_named};
use lb_core::Health;
use proto::xds::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;

const WAIT: Duration = Duration::from_secs(60);

fn summary(set: &lb_core::EndpointSet) -> Vec<(String, String, Health, Option<String>)> {
    set.endpoints()
        .iter()
        .map(|e| {
            (
                e.address.to_string(),
                e.zone.clone().unwrap_or_default(),
                e.health,
                e.pod.clone(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_live_endpoints_over_sotw_ads() -> anyhow::Result<()> {
    let cluster = TestCluster::shared()?;
    let ns = cluster.namespace("eds").await?;
    let pods = echo_service(&ns, 3).await?;
    let server = start_server(cluster, ns.name(), &["--pod-labels=shard"]).await?;
    wait_ready(&server).await?;

    let numeric = format!("echo.{}:8080", ns.name());
    let named = format!("echo.{}:grpc", ns.name());
    let fqdn = format!("echo.{}.svc.cluster.local:8080", ns.name());
    let names = [numeric.as_str(), named.as_str(), fqdn.as_str()];
    let mut client = SotwClient::connect(server.xds, "test-node", Some("zone-a")).await?;
    client.send(EDS, &names, "", "", None).await?;
    let expected: Vec<_> = {
        let mut v: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let zone = if i % 3 == 2 { "zone-b" } else { "zone-a" };
                (
                    format!("{}:9090", p.ip()),
                    zone.to_owned(),
                    Health::Healthy,
                    Some(p.name().to_owned()),
                )
            })
            .collect();
        v.sort();
        v
    };
    let resp = client
        .recv_until(&names, WAIT, |r| {
            endpoints_named(r, &numeric)
                .ok()
                .flatten()
                .is_some_and(|s| s.len() == 3)
        })
        .await?;
    // Every accepted form is answered, under the exact name asked.
    for name in &names {
        let set = endpoints_named(&resp, name)?.with_context(|| format!("no CLA named {name}"))?;
        assert_eq!(summary(&set), expected, "{name}");
    }
    // Pod labels chosen by the operator travel in the endpoint metadata.
    let set = endpoints_named(&resp, &numeric)?.context("CLA")?;
    let shard = set
        .endpoints()
        .iter()
        .find(|e| e.pod.as_deref() == Some("echo-0"))
        .context("echo-0")?;
    assert_eq!(shard.labels.get("shard").map(String::as_str), Some("s0"));
    assert!(shard.ready_since.is_some(), "ready_since is set");

    // A pod that goes not-ready is withdrawn.
    pods[0].set_ready(false).await?;
    let gone = format!("{}:9090", pods[0].ip());
    client
        .recv_until(&names, WAIT, |r| {
            endpoints_named(r, &numeric)
                .ok()
                .flatten()
                .is_some_and(|s| {
                    s.len() == 2 && s.endpoints().iter().all(|e| e.address.to_string() != gone)
                })
        })
        .await?;

    // A terminating pod is DRAINING with a drain deadline, then disappears.
    let finished = pods[1].delete_gracefully(Duration::from_secs(5)).await?;
    let draining = format!("{}:9090", pods[1].ip());
    let resp = client
        .recv_until(&names, WAIT, |r| {
            endpoints_named(r, &numeric)
                .ok()
                .flatten()
                .is_some_and(|s| {
                    s.endpoints()
                        .iter()
                        .any(|e| e.address.to_string() == draining && e.health == Health::Draining)
                })
        })
        .await?;
    let set = endpoints_named(&resp, &numeric)?.context("CLA")?;
    let ep = set
        .endpoints()
        .iter()
        .find(|e| e.address.to_string() == draining)
        .context("draining endpoint")?;
    assert!(
        ep.drain_deadline.is_some(),
        "a draining endpoint carries its drain deadline"
    );
    finished.await??;
    client
        .recv_until(&names, WAIT, |r| {
            endpoints_named(r, &numeric)
                .ok()
                .flatten()
                .is_some_and(|s| {
                    s.endpoints()
                        .iter()
                        .all(|e| e.address.to_string() != draining)
                })
        })
        .await?;

    // The admin views agree.
    let (code, body) = http_get(server.admin, &format!("/debug/endpoints/{named}")).await?;
    assert_eq!(code, 200, "{body}");
    let view: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(view["canonical"], numeric.as_str());
    // The view is the index: the not-ready pod is kept as UNHEALTHY (zone
    // capacity) though no stock client is sent it.
    let mut healths: Vec<&str> = view["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["health"].as_str())
        .collect();
    healths.sort_unstable();
    assert_eq!(healths, ["HEALTHY", "UNHEALTHY"], "{body}");
    let (code, body) = http_get(server.admin, "/debug/clients").await?;
    assert_eq!(code, 200);
    assert!(body.contains("test-node"), "{body}");
    let (code, body) = http_get(server.admin, "/metrics").await?;
    assert_eq!(code, 200);
    assert!(body.contains("eds_xds_responses_total"), "{body}");
    let (code, _) = http_get(server.admin, "/debug/endpoints/not-a-key").await?;
    assert_eq!(code, 400);

    for pod in &pods {
        pod.delete_now().await?;
    }
    ns.delete().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_proxyless_chain_and_delta() -> anyhow::Result<()> {
    let cluster = TestCluster::shared()?;
    let ns = cluster.namespace("chain").await?;
    let pods = echo_service(&ns, 2).await?;
    let server = start_server(cluster, ns.name(), &[]).await?;
    wait_ready(&server).await?;
    let target = format!("echo.{}:8080", ns.name());

    // The chain a proxyless gRPC client walks: LDS -> RDS -> CDS -> EDS, one name each.
    let mut client = SotwClient::connect(server.xds, "grpc-like", Some("zone-b")).await?;
    for ty in [LDS, RDS, CDS, EDS] {
        client.send(ty, &[&target], "", "", None).await?;
        let resp = client.recv(WAIT).await?;
        assert_eq!(resp.type_url, ty);
        assert_eq!(resp.resources.len(), 1, "{ty}: {resp:?}");
        client.ack(&resp, &[&target]).await?;
    }

    // Delta: subscribe to one that exists and one that does not.
    let missing = format!("nope.{}:1", ns.name());
    let mut delta = DeltaClient::connect(server.xds, "delta-node", Some("zone-a")).await?;
    delta
        .send(DeltaDiscoveryRequest {
            type_url: EDS.into(),
            resource_names_subscribe: vec![target.clone(), missing.clone()],
            ..Default::default()
        })
        .await?;
    let mut seen_found = false;
    let mut seen_removed = false;
    while !(seen_found && seen_removed) {
        let resp = delta.recv(WAIT).await?;
        seen_found |= resp.resources.iter().any(|r| r.name == target);
        seen_removed |= resp.removed_resources.contains(&missing);
        delta
            .send(DeltaDiscoveryRequest {
                type_url: EDS.into(),
                response_nonce: resp.nonce.clone(),
                ..Default::default()
            })
            .await?;
    }

    // An unknown type URL ends the stream with InvalidArgument.
    let mut bad = SotwClient::connect(server.xds, "bad", None).await?;
    bad.send("type.googleapis.com/envoy.Nope", &[], "", "", None)
        .await?;
    let err = bad
        .recv(WAIT)
        .await
        .expect_err("an unknown type must fail the stream");
    assert!(err.to_string().contains("unknown xDS type URL"), "{err:#}");

    for pod in &pods {
        pod.delete_now().await?;
    }
    ns.delete().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn is_not_ready_while_it_cannot_list() -> anyhow::Result<()> {
    let cluster = TestCluster::shared()?;
    // A namespace that does not exist yet lists fine; use a kubeconfig whose
    // identity cannot list at all instead: an empty token is refused.
    let ns = cluster.namespace("notready").await?;
    let kubeconfig = refused_kubeconfig(cluster, ns.name())?;
    let server = Server::start(&[format!("--kubeconfig={}", kubeconfig.display())])?;
    let (code, body) =
        eds_devkit::harness::eventually("a watch error on /readyz", WAIT, || async {
            Ok(match http_get(server.admin, "/readyz").await {
                Ok((code, body)) if body.contains("last watch error") => Ok((code, body)),
                Ok((code, body)) => Err(format!("{code} {body}")),
                Err(e) => Err(e.to_string()),
            })
        })
        .await?;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("401") || body.to_lowercase().contains("unauthorized"),
        "{body}"
    );
    ns.delete().await?;
    Ok(())
}

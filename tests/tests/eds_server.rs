//! eds-server against the real local control plane: Services and
//! EndpointSlices made by the real EndpointSlice controller come out as xDS,
//! live, in every accepted name form, over SotW and delta ADS.
//!
//! The server runs in-process (its library's `run_until`) with the cluster's
//! kubeconfig, scoped to the test's namespace; clients are the plain test
//! client of `eds_tests::xds`.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use eds_tests::harness::{PodSpec, ServicePortSpec, Target, TestCluster, TestNamespace, TestPod};
use eds_tests::xds::{CDS, DeltaClient, EDS, LDS, RDS, SotwClient, endpoints_named};
use lb_core::Health;
use proto::xds::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(60);

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A running in-process eds-server; stopped when dropped.
struct Server {
    xds: SocketAddr,
    admin: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

async fn start_server(cluster: &TestCluster, ns: &str, extra: &[&str]) -> anyhow::Result<Server> {
    let xds = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let kubeconfig = cluster.kubeconfig().display().to_string();
    let mut args = vec![
        "eds-server".to_owned(),
        format!("--xds-addr={xds}"),
        format!("--admin-addr={admin}"),
        format!("--kubeconfig={kubeconfig}"),
        format!("--namespace={ns}"),
        "--coalesce-window=50ms".to_owned(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let config = eds_server::config::Args::try_parse_from(args)?.validate()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(eds_server::app::run_until(config, async move {
        let _ = stopped.await;
    }));
    Ok(Server {
        xds,
        admin,
        stop: Some(stop),
        task,
    })
}

/// A minimal HTTP/1.0 GET: (status code, body).
async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await?;
    let code = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("bad HTTP response: {raw:?}"))?;
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((code, body))
}

async fn wait_ready(server: &Server) -> anyhow::Result<()> {
    eds_tests::harness::eventually("eds-server /readyz", WAIT, || async {
        Ok(match http_get(server.admin, "/readyz").await {
            Ok((200, _)) => Ok(()),
            Ok((code, body)) => Err(format!("{code} {body}")),
            Err(e) => Err(e.to_string()),
        })
    })
    .await
}

async fn echo_service(ns: &TestNamespace, pods: usize) -> anyhow::Result<Vec<TestPod>> {
    ns.node("node-zone-a", "zone-a").await?;
    ns.node("node-zone-b", "zone-b").await?;
    ns.service(
        "echo",
        "echo",
        &[ServicePortSpec {
            name: "grpc".into(),
            port: 8080,
            target: Target::Name("grpc".into()),
        }],
        &[("eds.rs/lb-policy", "round-robin")],
    )
    .await?;
    let mut out = Vec::new();
    for i in 0..pods {
        let node = if i % 3 == 2 {
            "node-zone-b"
        } else {
            "node-zone-a"
        };
        let pod = ns
            .pod(
                PodSpec::new(&format!("echo-{i}"), "echo", node)
                    .port("grpc", 9090)
                    .label("shard", &format!("s{i}")),
            )
            .await?;
        pod.set_ready(true).await?;
        out.push(pod);
    }
    Ok(out)
}

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
    assert_eq!(view["endpoints"].as_array().map(Vec::len), Some(1));
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
    let dir = cluster
        .state()
        .dir
        .join(format!("bad-kubeconfig-{}", ns.name()));
    let config = serde_json::json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": cluster.state().api_url, "certificate-authority": cluster.state().dir.join("pki/ca.crt")}}],
        "users": [{"name": "u", "user": {"token": "not-a-valid-token"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    });
    std::fs::write(&dir, serde_json::to_vec(&config)?)?;
    let server = {
        let xds = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let config = eds_server::config::Args::try_parse_from([
            "eds-server".to_owned(),
            format!("--xds-addr={xds}"),
            format!("--admin-addr={admin}"),
            format!("--kubeconfig={}", dir.display()),
        ])?
        .validate()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(eds_server::app::run_until(config, async move {
            let _ = stopped.await;
        }));
        Server {
            xds,
            admin,
            stop: Some(stop),
            task,
        }
    };
    let (code, body) = eds_tests::harness::eventually("a watch error on /readyz", WAIT, || async {
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

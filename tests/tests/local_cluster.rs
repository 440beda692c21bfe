//! The local control plane is the real thing: the real EndpointSlice
//! controller turns harness-made Pods into slices, the garbage collector and
//! namespace controller finish deletions, RBAC refuses what a role does not
//! grant, and traffic reaches backends inside the pod network.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use eds_devkit::harness::{
    EchoOptions, PodSpec, ServicePortSpec, Target, TestCluster, TestNamespace, eventually,
};
use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, Config};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

/// What one endpoint of a slice says, flattened for comparisons.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Seen {
    address: String,
    zone: String,
    ready: bool,
    serving: bool,
    terminating: bool,
}

async fn slices(ns: &TestNamespace, service: &str) -> anyhow::Result<Vec<EndpointSlice>> {
    let api: Api<EndpointSlice> = Api::namespaced(ns.client().clone(), ns.name());
    let lp = ListParams::default().labels(&format!("kubernetes.io/service-name={service}"));
    Ok(api.list(&lp).await?.items)
}

async fn seen(ns: &TestNamespace, service: &str) -> anyhow::Result<Vec<Seen>> {
    let mut out = Vec::new();
    for slice in slices(ns, service).await? {
        for ep in slice.endpoints.unwrap_or_default() {
            let c = ep.conditions.unwrap_or_default();
            out.push(Seen {
                address: ep.addresses.join(","),
                zone: ep.zone.unwrap_or_default(),
                ready: c.ready.unwrap_or(false),
                serving: c.serving.unwrap_or(false),
                terminating: c.terminating.unwrap_or(false),
            });
        }
    }
    out.sort();
    Ok(out)
}

fn ready(address: String, zone: &str) -> Seen {
    Seen {
        address,
        zone: zone.into(),
        ready: true,
        serving: true,
        terminating: false,
    }
}

fn grpc_port() -> Vec<ServicePortSpec> {
    vec![ServicePortSpec {
        name: "grpc".into(),
        port: 8080,
        target: Target::Name("grpc".into()),
    }]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slices_follow_pods_through_ready_not_ready_and_terminating() -> anyhow::Result<()> {
    let cluster = TestCluster::shared()?;
    let ns = cluster.namespace("slices").await?;
    ns.node("node-zone-a", "zone-a").await?;
    ns.node("node-zone-b", "zone-b").await?;
    ns.service("echo", "echo", &grpc_port(), &[]).await?;

    let mut pods = Vec::new();
    let mut backends = Vec::new();
    for (i, node, zone) in [
        (0, "node-zone-a", "zone-a"),
        (1, "node-zone-a", "zone-a"),
        (2, "node-zone-b", "zone-b"),
    ] {
        let pod = ns
            .pod(PodSpec::new(&format!("echo-{i}"), "echo", node).port("grpc", 9090))
            .await?;
        pod.set_ready(true).await?;
        backends.push(
            pod.start_backend(9090, zone, &EchoOptions::default())
                .await?,
        );
        pods.push((pod, zone));
    }
    let all_ready: Vec<Seen> = {
        let mut v: Vec<_> = pods
            .iter()
            .map(|(p, z)| ready(p.ip().to_string(), z))
            .collect();
        v.sort();
        v
    };
    eventually("three ready endpoints in two zones", WAIT, || async {
        let now = seen(&ns, "echo").await?;
        Ok(if now == all_ready {
            Ok(())
        } else {
            Err(format!("{now:?}"))
        })
    })
    .await?;
    // The named targetPort resolved to the container port.
    let ports: Vec<Option<i32>> = slices(&ns, "echo")
        .await?
        .iter()
        .flat_map(|s| s.ports.clone().unwrap_or_default())
        .map(|p| p.port)
        .collect();
    assert_eq!(ports, vec![Some(9090)]);

    // Traffic reaches every "pod" inside the pod network, and each says who it is.
    for ((pod, zone), backend) in pods.iter().zip(&backends) {
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{}", backend.addr()))?
                .connect()
                .await
                .with_context(|| format!("connecting to {}", backend.addr()))?;
        let reply = proto::echo::echo_client::EchoClient::new(channel)
            .echo(proto::echo::EchoRequest {
                message: "hello".into(),
                work_us: 0,
            })
            .await?
            .into_inner();
        assert_eq!(
            (reply.pod.as_str(), reply.zone.as_str()),
            (pod.name(), *zone)
        );
    }

    // A pod that goes not-ready flips to ready=false, serving=false.
    let (flipped, zone) = &pods[0];
    flipped.set_ready(false).await?;
    let expect_flip = Seen {
        ready: false,
        serving: false,
        ..ready(flipped.ip().to_string(), zone)
    };
    eventually("the not-ready pod to flip", WAIT, || async {
        let now = seen(&ns, "echo").await?;
        Ok(if now.contains(&expect_flip) {
            Ok(())
        } else {
            Err(format!("{now:?}"))
        })
    })
    .await?;

    // A deleted pod is serving and terminating during its grace period, then gone.
    let (leaving, zone) = &pods[2];
    let finished = leaving.delete_gracefully(Duration::from_secs(4)).await?;
    let draining = Seen {
        ready: false,
        serving: true,
        terminating: true,
        ..ready(leaving.ip().to_string(), zone)
    };
    eventually(
        "the deleted pod to be serving and terminating",
        WAIT,
        || async {
            let now = seen(&ns, "echo").await?;
            Ok(if now.contains(&draining) {
                Ok(())
            } else {
                Err(format!("{now:?}"))
            })
        },
    )
    .await?;
    finished.await??;
    let gone = leaving.ip().to_string();
    eventually("the deleted pod to disappear", WAIT, || async {
        let now = seen(&ns, "echo").await?;
        Ok(if now.iter().all(|s| s.address != gone) {
            Ok(())
        } else {
            Err(format!("{now:?}"))
        })
    })
    .await?;

    // Deleting the Service lets the garbage collector remove its slices.
    Api::<Service>::namespaced(ns.client().clone(), ns.name())
        .delete("echo", &DeleteParams::default())
        .await?;
    eventually(
        "the garbage collector to remove the slices",
        WAIT,
        || async {
            let left = slices(&ns, "echo").await?.len();
            Ok(if left == 0 {
                Ok(())
            } else {
                Err(format!("{left} slices left"))
            })
        },
    )
    .await?;
    for (pod, _) in &pods[..2] {
        pod.delete_now().await?;
    }
    // The namespace controller finishes deleting the namespace.
    let client = ns.client().clone();
    let name = ns.name().to_owned();
    ns.delete().await?;
    eventually("the namespace to finish deleting", WAIT, || async {
        let found = Api::<Namespace>::all(client.clone()).get_opt(&name).await?;
        Ok(match found {
            None => Ok(()),
            Some(n) => Err(format!("{:?}", n.status.and_then(|s| s.phase))),
        })
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_service_spreads_over_several_slices() -> anyhow::Result<()> {
    let cluster = TestCluster::shared()?;
    let ns = cluster.namespace("large").await?;
    ns.node("node-zone-a", "zone-a").await?;
    ns.node("node-zone-b", "zone-b").await?;
    ns.service("big", "big", &grpc_port(), &[]).await?;
    let mut pods = Vec::new();
    for i in 0..250 {
        let node = if i % 2 == 0 {
            "node-zone-a"
        } else {
            "node-zone-b"
        };
        let pod = ns
            .pod(PodSpec::new(&format!("big-{i}"), "big", node).port("grpc", 9090))
            .await?;
        pod.set_ready(true).await?;
        pods.push(pod);
    }
    let found = eventually("250 endpoints", Duration::from_secs(120), || async {
        let s = slices(&ns, "big").await?;
        let n: usize = s
            .iter()
            .map(|s| s.endpoints.as_ref().map_or(0, Vec::len))
            .sum();
        Ok(if n == 250 {
            Ok(s)
        } else {
            Err(format!("{n} endpoints in {} slices", s.len()))
        })
    })
    .await?;
    assert!(
        found.len() >= 3,
        "250 endpoints at 100 per slice need at least 3 slices, got {}",
        found.len()
    );
    let mut zones: BTreeMap<String, usize> = BTreeMap::new();
    for s in &found {
        let endpoints = s.endpoints.as_deref().unwrap_or_default();
        assert!(
            endpoints.len() <= 100,
            "a slice holds at most --max-endpoints-per-slice"
        );
        for ep in endpoints {
            *zones
                .entry(ep.zone.clone().unwrap_or_default())
                .or_default() += 1;
        }
    }
    assert_eq!(
        zones,
        BTreeMap::from([("zone-a".into(), 125), ("zone-b".into(), 125)])
    );
    // No kubelet finishes graceful deletions: delete the pods at once.
    ns.delete_with_pods(&pods).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_gets_exactly_what_its_role_grants() -> anyhow::Result<()> {
    let cluster = TestCluster::shared()?;
    let ns = cluster.namespace("rbac").await?;
    let client = ns.client().clone();
    let sa_name = "slice-reader";
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": sa_name}}))?;
    Api::<ServiceAccount>::namespaced(client.clone(), ns.name())
        .create(&PostParams::default(), &sa)
        .await?;
    let role_name = format!("{}-slice-reader", ns.name());
    let role: ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": role_name},
        "rules": [{"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]}],
    }))?;
    Api::<ClusterRole>::all(client.clone())
        .create(&PostParams::default(), &role)
        .await?;
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": role_name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role_name},
        "subjects": [{"kind": "ServiceAccount", "name": sa_name, "namespace": ns.name()}],
    }))?;
    Api::<ClusterRoleBinding>::all(client.clone())
        .create(&PostParams::default(), &binding)
        .await?;

    // A token for the ServiceAccount, from the TokenRequest API.
    let request = json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"expirationSeconds": 600},
    });
    let response: serde_json::Value = Api::<ServiceAccount>::namespaced(client.clone(), ns.name())
        .create_subresource("token", sa_name, &PostParams::default(), &request)
        .await?;
    let token = response["status"]["token"]
        .as_str()
        .context("no token in the TokenRequest response")?;
    let mut config: Config = cluster.config().await?;
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.to_owned().into()),
        ..Default::default()
    };
    let as_sa = Client::try_from(config)?;

    // Granted: list (and watch, which is a list with watch=true) EndpointSlices anywhere.
    Api::<EndpointSlice>::all(as_sa.clone())
        .list(&ListParams::default())
        .await?;
    let mut watch = std::pin::pin!(
        Api::<EndpointSlice>::all(as_sa.clone())
            .watch(&kube::api::WatchParams::default().timeout(1), "0")
            .await?
    );
    use futures::StreamExt;
    while let Some(event) = watch.next().await {
        event?;
    }
    // Refused: what the role does not grant.
    let refused = |r: Result<_, kube::Error>, what: &str| match r {
        Err(kube::Error::Api(e)) if e.code == 403 => Ok(()),
        other => anyhow::bail!("{what} should be forbidden, got {other:?}"),
    };
    refused(
        Api::<Service>::all(as_sa.clone())
            .list(&ListParams::default())
            .await
            .map(|_| ()),
        "listing services",
    )?;
    refused(
        Api::<EndpointSlice>::namespaced(as_sa.clone(), ns.name())
            .delete("anything", &DeleteParams::default())
            .await
            .map(|_| ()),
        "deleting an endpointslice",
    )?;
    refused(
        Api::<EndpointSlice>::namespaced(as_sa, ns.name())
            .get("anything")
            .await
            .map(|_| ()),
        "getting one endpointslice",
    )?;

    Api::<ClusterRoleBinding>::all(client.clone())
        .delete(&role_name, &DeleteParams::default())
        .await?;
    Api::<ClusterRole>::all(client)
        .delete(&role_name, &DeleteParams::default())
        .await?;
    ns.delete().await?;
    Ok(())
}

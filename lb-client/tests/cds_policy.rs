//! The balancing policy from CDS, through the real client against scripted
//! ADS servers: a Cluster's policy is applied when the application set none,
//! a malformed Cluster is NACKed while the last good policy stays, the
//! Cluster's hash header keys requests, a Cluster
//! that disappears brings back the default, a local policy wins, and a
//! server that refuses CDS still serves endpoints.
//!
//! The backends are real tonic echo servers on loopback; the scripted
//! server answers each type in turn (the next scripted response of a type
//! after each request of that type), so every response is ACKed or NACKed
//! before the next one of its type goes out. The end-to-end test against
//! eds-server and a real Kubernetes control plane is in
//! `tests/tests/lb_client.rs`.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, ensure};
use futures::Stream;
use lb_client::{LbClient, LbConfig, PolicySource, ServiceDebug, ServiceOptions};
use lb_core::{Endpoint, EndpointSet, Policy};
use proto::echo::echo_client::EchoClient;
use proto::echo::echo_server::{Echo, EchoServer};
use proto::echo::{EchoReply, EchoRequest};
use proto::resources::{
    CLUSTER_LOAD_ASSIGNMENT_TYPE_URL, CLUSTER_TYPE_URL, ClaOptions, LbPolicy, cluster,
    cluster_load_assignment, pack,
};
use proto::xds::pb::envoy::config::cluster::v3::{Cluster, LoadBalancingPolicy};
use proto::xds::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use proto::xds::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

const KEY: &str = "echo.demo:8080";

struct Backend(&'static str);

#[tonic::async_trait]
impl Echo for Backend {
    async fn echo(&self, r: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        Ok(Response::new(EchoReply {
            message: r.into_inner().message,
            pod: self.0.into(),
            ..Default::default()
        }))
    }
}

/// Per type URL, the responses to send, one after each request of that type.
#[derive(Clone, Default)]
struct Scripted {
    scripts: BTreeMap<String, Vec<DiscoveryResponse>>,
    /// Ends the first stream with this status on the first request of this
    /// type URL, as a server that does not know the type does.
    refuse: Option<String>,
    seen: Arc<Mutex<Vec<DiscoveryRequest>>>,
    streams: Arc<Mutex<u32>>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Scripted {
    type StreamAggregatedResourcesStream = BoxStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = BoxStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let mut requests = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let first_stream = {
            let mut n = self.streams.lock().unwrap();
            *n += 1;
            *n == 1
        };
        let this = self.clone();
        tokio::spawn(async move {
            let mut scripts: BTreeMap<String, std::vec::IntoIter<DiscoveryResponse>> = this
                .scripts
                .into_iter()
                .map(|(k, v)| (k, v.into_iter()))
                .collect();
            while let Some(Ok(req)) = requests.next().await {
                this.seen.lock().unwrap().push(req.clone());
                if first_stream && this.refuse.as_deref() == Some(req.type_url.as_str()) {
                    let status = Status::invalid_argument(format!(
                        "unknown xDS type URL {:?}: this server serves {CLUSTER_LOAD_ASSIGNMENT_TYPE_URL} only",
                        req.type_url
                    ));
                    let _ = tx.send(Err(status)).await;
                    return;
                }
                let next = scripts.get_mut(&req.type_url).and_then(Iterator::next);
                if let Some(r) = next
                    && tx.send(Ok(r)).await.is_err()
                {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented("this test server speaks SotW only"))
    }
}

/// Two echo backends, `a` and `b`, and the EDS response listing both.
async fn backends() -> anyhow::Result<DiscoveryResponse> {
    let a = common::serve(EchoServer::new(Backend("a"))).await?;
    let b = common::serve(EchoServer::new(Backend("b"))).await?;
    let cla = cluster_load_assignment(
        KEY,
        &EndpointSet::merge(vec![Endpoint::new(a), Endpoint::new(b)]),
        &ClaOptions::default(),
    );
    Ok(DiscoveryResponse {
        version_info: "e1".into(),
        nonce: "n-e1".into(),
        type_url: CLUSTER_LOAD_ASSIGNMENT_TYPE_URL.into(),
        resources: vec![pack(&cla)],
        ..Default::default()
    })
}

fn cds(version: &str, clusters: &[Cluster]) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: version.into(),
        nonce: format!("n-{version}"),
        type_url: CLUSTER_TYPE_URL.into(),
        resources: clusters.iter().map(pack).collect(),
        ..Default::default()
    }
}

fn client(control: SocketAddr, options: ServiceOptions) -> anyhow::Result<LbClient> {
    let mut config = LbConfig::new(format!("http://{control}"));
    config.node_id = "cds-test".into();
    config.zone = None;
    config.default_service = ServiceOptions {
        slow_start: None,
        ..options
    };
    config.dns_fallback.enabled = false;
    Ok(LbClient::connect(config)?)
}

/// Waits until the service's debug view satisfies `ok`.
async fn until(
    client: &LbClient,
    what: &str,
    ok: impl Fn(&ServiceDebug) -> bool,
) -> anyhow::Result<ServiceDebug> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let debug = client.debug();
        if let Some(s) = debug.services.iter().find(|s| s.service == KEY)
            && ok(s)
        {
            return Ok(s.clone());
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "{what} within 20 s: {debug:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The pods answering `n` sequential requests.
async fn pods(client: &LbClient, n: usize) -> anyhow::Result<Vec<String>> {
    let mut echo = EchoClient::new(client.channel(KEY)?);
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(echo.echo(EchoRequest::default()).await?.into_inner().pod);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clusters_policy_applies_and_a_malformed_one_is_nacked_keeping_it() -> anyhow::Result<()>
{
    let eds = backends().await?;
    let mut bad = cluster(KEY, &LbPolicy::Random);
    bad.load_balancing_policy = Some(LoadBalancingPolicy { policies: vec![] });
    let scripted = Scripted {
        scripts: BTreeMap::from([
            (
                CLUSTER_TYPE_URL.to_owned(),
                vec![
                    cds("c1", &[cluster(KEY, &LbPolicy::RoundRobin)]),
                    cds("c2", &[bad]),
                ],
            ),
            (CLUSTER_LOAD_ASSIGNMENT_TYPE_URL.to_owned(), vec![eds]),
        ]),
        ..Default::default()
    };
    let seen = scripted.seen.clone();
    let control = common::serve(AggregatedDiscoveryServiceServer::new(scripted)).await?;
    let client = client(control, ServiceOptions::default())?;
    let _ = client.channel(KEY)?;

    let view = until(&client, "a CDS NACK", |_| {
        client.debug().control_plane.nacks == 1
    })
    .await?;
    ensure!(
        view.policy == "round-robin" && view.policy_source == PolicySource::Cds,
        "the last good Cluster's policy stays: {view:?}"
    );
    let status = client.debug().control_plane;
    ensure!(status.cluster_version == "c1", "{status:?}");
    ensure!(
        status
            .last_nack
            .as_deref()
            .is_some_and(|m| m.contains("load_balancing_policy.policies")),
        "{status:?}"
    );
    let nack = seen
        .lock()
        .unwrap()
        .iter()
        .find(|r| r.error_detail.is_some())
        .cloned()
        .context("no NACK sent")?;
    ensure!(nack.type_url == CLUSTER_TYPE_URL, "{nack:?}");
    ensure!(
        nack.version_info == "c1" && nack.response_nonce == "n-c2",
        "a NACK carries the last accepted version and the rejected nonce: {nack:?}"
    );
    ensure!(
        nack.error_detail
            .as_ref()
            .is_some_and(|d| d.message.contains(KEY)),
        "{nack:?}"
    );

    // Round robin over two endpoints, one request at a time: strict alternation.
    let got = pods(&client, 10).await?;
    for pair in got.windows(2) {
        ensure!(pair[0] != pair[1], "not round robin: {got:?}");
    }
    ensure!(
        client.metrics_text().contains(&format!(
            "lb_client_policy{{service=\"{KEY}\",policy=\"round-robin\",source=\"cds\"}} 1"
        )),
        "{}",
        client.metrics_text()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_or_unsupported_cluster_brings_back_the_default() -> anyhow::Result<()> {
    let eds = backends().await?;
    let mut pick_first_only = cluster(KEY, &LbPolicy::RoundRobin);
    pick_first_only.load_balancing_policy = Some(LoadBalancingPolicy {
        policies: vec![
            proto::xds::pb::envoy::config::cluster::v3::load_balancing_policy::Policy {
                typed_extension_config: Some(
                    proto::xds::pb::envoy::config::core::v3::TypedExtensionConfig {
                        name: "pick_first".into(),
                        typed_config: Some(pack(
                            &proto::xds::pb::envoy::extensions::load_balancing_policies::pick_first::v3::PickFirst::default(),
                        )),
                    },
                ),
            },
        ],
    });
    let scripted = Scripted {
        scripts: BTreeMap::from([
            (
                CLUSTER_TYPE_URL.to_owned(),
                vec![
                    cds("c1", &[cluster(KEY, &LbPolicy::RingHash { header: None })]),
                    // CDS responses are complete: without it, it is gone.
                    cds("c2", &[]),
                    cds("c3", &[cluster(KEY, &LbPolicy::Random)]),
                    cds("c4", &[pick_first_only]),
                ],
            ),
            (CLUSTER_LOAD_ASSIGNMENT_TYPE_URL.to_owned(), vec![eds]),
        ]),
        ..Default::default()
    };
    let control = common::serve(AggregatedDiscoveryServiceServer::new(scripted)).await?;
    let client = client(control, ServiceOptions::default())?;
    let _ = client.channel(KEY)?;
    let view = until(&client, "the last Cluster", |_| {
        client.debug().control_plane.cluster_version == "c4"
    })
    .await?;
    ensure!(
        view.policy == "p2c" && view.policy_source == PolicySource::Default,
        "{view:?}"
    );
    ensure!(
        view.policy_note
            .as_deref()
            .is_some_and(|n| n.contains("PickFirst")),
        "{view:?}"
    );
    ensure!(
        client.debug().control_plane.nacks == 0,
        "unsupported is not malformed"
    );
    ensure!(pods(&client, 4).await?.len() == 4);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clusters_hash_header_keys_requests() -> anyhow::Result<()> {
    let eds = backends().await?;
    let hashing = LbPolicy::RingHash { header: None }.with_hash_header("x-user")?;
    let scripted = Scripted {
        scripts: BTreeMap::from([
            (
                CLUSTER_TYPE_URL.to_owned(),
                vec![cds("c1", &[cluster(KEY, &hashing)])],
            ),
            (CLUSTER_LOAD_ASSIGNMENT_TYPE_URL.to_owned(), vec![eds]),
        ]),
        ..Default::default()
    };
    let control = common::serve(AggregatedDiscoveryServiceServer::new(scripted)).await?;
    let client = client(control, ServiceOptions::default())?;
    let mut echo = EchoClient::new(client.channel(KEY)?);
    let view = until(&client, "the hashing Cluster with both endpoints", |s| {
        s.hash_header.is_some() && s.usable == 2
    })
    .await?;
    ensure!(
        view.policy == "ring-hash" && view.hash_header.as_deref() == Some("x-user"),
        "{view:?}"
    );
    // Each user sticks to one pod; 20 users over a two-endpoint ring land
    // on both (all on one has odds of about one in half a million).
    let mut homes = BTreeMap::new();
    for user in 0..20 {
        for _ in 0..5 {
            let mut request = Request::new(EchoRequest::default());
            request
                .metadata_mut()
                .insert("x-user", format!("user-{user}").parse()?);
            let pod = echo.echo(request).await?.into_inner().pod;
            let home = homes.entry(user).or_insert_with(|| pod.clone());
            ensure!(*home == pod, "user-{user} moved from {home} to {pod}");
        }
    }
    let pods: std::collections::BTreeSet<_> = homes.values().collect();
    ensure!(pods.len() == 2, "every user on one pod: {homes:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_policy_wins_over_the_cluster() -> anyhow::Result<()> {
    let eds = backends().await?;
    let scripted = Scripted {
        scripts: BTreeMap::from([
            (
                CLUSTER_TYPE_URL.to_owned(),
                vec![cds("c1", &[cluster(KEY, &LbPolicy::RoundRobin)])],
            ),
            (CLUSTER_LOAD_ASSIGNMENT_TYPE_URL.to_owned(), vec![eds]),
        ]),
        ..Default::default()
    };
    let control = common::serve(AggregatedDiscoveryServiceServer::new(scripted)).await?;
    let client = client(
        control,
        ServiceOptions::default().with_policy(Policy::Random),
    )?;
    let _ = client.channel(KEY)?;
    let view = until(&client, "the Cluster", |s| s.policy_note.is_some()).await?;
    ensure!(
        view.policy == "random" && view.policy_source == PolicySource::Local,
        "{view:?}"
    );
    ensure!(client.debug().control_plane.cluster_version == "c1");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_refuses_cds_still_serves_endpoints() -> anyhow::Result<()> {
    let eds = backends().await?;
    let scripted = Scripted {
        scripts: BTreeMap::from([(CLUSTER_LOAD_ASSIGNMENT_TYPE_URL.to_owned(), vec![eds])]),
        refuse: Some(CLUSTER_TYPE_URL.to_owned()),
        ..Default::default()
    };
    let (seen, streams) = (scripted.seen.clone(), scripted.streams.clone());
    let control = common::serve(AggregatedDiscoveryServiceServer::new(scripted)).await?;
    let client = client(control, ServiceOptions::default())?;
    let got = pods(&client, 4).await?;
    ensure!(got.len() == 4, "{got:?}");
    let debug = client.debug();
    ensure!(debug.control_plane.cds_refused, "{:?}", debug.control_plane);
    let view = &debug.services[0];
    ensure!(
        view.policy == "p2c" && view.policy_source == PolicySource::Default,
        "{view:?}"
    );
    ensure!(*streams.lock().unwrap() == 2, "one reconnect, without CDS");
    let cds_requests = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.type_url == CLUSTER_TYPE_URL)
        .count();
    ensure!(cds_requests == 1, "CDS asked {cds_requests} times");
    Ok(())
}

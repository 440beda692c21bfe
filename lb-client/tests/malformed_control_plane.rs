//! A control plane that sends a malformed resource: the client NACKs it with
//! the reason, keeps balancing over the last good endpoints, and takes the
//! next good version.
//!
//! The "control plane" here is a scripted ADS server in this test (eds-server
//! never sends malformed resources, which is the point), and the backend a
//! real tonic echo server on loopback. Everything in between is the real
//! client: its stream, its NACK and its pool.

mod common;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, ensure};
use futures::Stream;
use lb_client::{LbClient, LbConfig, Source};
use lb_core::{Endpoint, EndpointSet};
use proto::echo::echo_client::EchoClient;
use proto::echo::echo_server::{Echo, EchoServer};
use proto::echo::{EchoReply, EchoRequest};
use proto::resources::{
    CLUSTER_LOAD_ASSIGNMENT_TYPE_URL, ClaOptions, cluster_load_assignment, pack,
};
use proto::xds::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
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

struct Backend;

#[tonic::async_trait]
impl Echo for Backend {
    async fn echo(&self, r: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        Ok(Response::new(EchoReply {
            message: r.into_inner().message,
            pod: "good".into(),
            ..Default::default()
        }))
    }
}

/// Sends each scripted response after the client's previous request, and
/// records every request.
struct Scripted {
    responses: Vec<DiscoveryResponse>,
    seen: Arc<Mutex<Vec<DiscoveryRequest>>>,
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
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let (responses, seen) = (self.responses.clone(), self.seen.clone());
        tokio::spawn(async move {
            let mut script = responses.into_iter();
            while let Some(Ok(req)) = requests.next().await {
                seen.lock().unwrap().push(req);
                // After the script: keep the stream open, answer nothing.
                if let Some(r) = script.next()
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

fn response(version: &str, cla: &ClusterLoadAssignment) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: version.into(),
        nonce: format!("n-{version}"),
        type_url: CLUSTER_LOAD_ASSIGNMENT_TYPE_URL.into(),
        resources: vec![pack(cla)],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_update_is_nacked_and_the_last_good_endpoints_stay() -> anyhow::Result<()> {
    let backend = common::serve(EchoServer::new(Backend)).await?;
    let good = cluster_load_assignment(
        KEY,
        &EndpointSet::merge(vec![Endpoint::new(backend)]),
        &ClaOptions::default(),
    );
    // The same address twice: stock gRPC clients reject such a resource too.
    let mut bad = good.clone();
    let dup = bad.endpoints[0].lb_endpoints[0].clone();
    bad.endpoints[0].lb_endpoints.push(dup);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let control = common::serve(AggregatedDiscoveryServiceServer::new(Scripted {
        responses: vec![response("v1", &good), response("v2", &bad)],
        seen: seen.clone(),
    }))
    .await?;

    let mut config = LbConfig::new(format!("http://{control}"));
    config.node_id = "nack-test".into();
    let client = LbClient::connect(config)?;
    let mut echo = EchoClient::new(client.channel(KEY)?);
    let reply = echo.echo(EchoRequest::default()).await?.into_inner();
    ensure!(reply.pod == "good");

    // The client ACKs v1 (which triggers v2), then NACKs v2.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let nack = loop {
        let found = seen
            .lock()
            .unwrap()
            .iter()
            .find(|r| r.error_detail.is_some())
            .cloned();
        if let Some(n) = found {
            break n;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "no NACK within 20 s: {:?}",
            seen.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let detail = nack.error_detail.context("error detail")?;
    ensure!(
        nack.version_info == "v1",
        "a NACK carries the last accepted version, got {:?}",
        nack.version_info
    );
    ensure!(
        nack.response_nonce == "n-v2",
        "a NACK names the rejected response's nonce"
    );
    ensure!(
        detail.message.contains(KEY) && detail.message.contains("already appears"),
        "reason: {}",
        detail.message
    );

    // Still serving from v1.
    for _ in 0..10 {
        ensure!(echo.echo(EchoRequest::default()).await?.into_inner().pod == "good");
    }
    let debug = client.debug();
    ensure!(
        debug.control_plane.nacks == 1 && debug.control_plane.acks == 1,
        "{:?}",
        debug.control_plane
    );
    ensure!(
        debug
            .control_plane
            .last_nack
            .as_deref()
            .is_some_and(|m| m.contains("already appears"))
    );
    ensure!(debug.services[0].source == Source::ControlPlane && debug.services[0].version == "v1");
    ensure!(
        client
            .metrics_text()
            .contains("lb_client_control_plane_updates_total{result=\"nack\"} 1")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_service_keys_are_refused_with_the_reason() -> anyhow::Result<()> {
    let mut config = LbConfig::from_env();
    config.control_plane = None;
    let client = LbClient::connect(config)?;
    for bad in [
        "",
        "echo",
        "echo.demo",
        "Echo.demo:80",
        "echo.demo:0",
        "echo.demo:99999",
        "echo.demo:not_a_port!",
    ] {
        let e = client
            .channel(bad)
            .err()
            .with_context(|| format!("{bad:?} was accepted"))?;
        ensure!(
            e.to_string().contains("is not a service key"),
            "{bad:?}: {e}"
        );
    }
    // An endpoint with an unusable address (nothing listens) fails the request cleanly.
    client.set_endpoints("dead.demo:80", vec![Endpoint::new("127.0.0.1:1".parse()?)])?;
    let mut echo = EchoClient::new(client.channel("dead.demo:80")?);
    let status = echo
        .echo(EchoRequest::default())
        .await
        .err()
        .context("a dead endpoint answered")?;
    ensure!(status.code() == tonic::Code::Unavailable, "{status:?}");
    ensure!(
        status.message().contains("127.0.0.1:1"),
        "the error names the endpoint: {status:?}"
    );
    Ok(())
}

/// A Service with well over 4 MiB of endpoints: gRPC's default receive
/// limit would refuse the response, and the client would reconnect and be
/// refused again, forever. `LbConfig::max_xds_message_bytes` makes the
/// limit explicit; the whole assignment is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assignment_over_four_mebibytes_is_applied_whole() -> anyhow::Result<()> {
    // Loopback addresses that nothing is asked of: no eager connects, no
    // requests. 175,000 endpoints encode to about 5 MiB.
    let endpoints: Vec<Endpoint> = (0..175_000u32)
        .map(|i| {
            let [_, b, c, d] = (i + 1).to_be_bytes();
            Endpoint::new(SocketAddr::from(([127, b, c, d], 1)))
        })
        .collect();
    let cla = cluster_load_assignment(KEY, &EndpointSet::merge(endpoints), &ClaOptions::default());
    let big = response("v1", &cla);
    let size = prost::Message::encoded_len(&big);
    ensure!(
        size > 4 << 20,
        "the response is {size} bytes, not over 4 MiB"
    );
    let seen = Arc::new(Mutex::new(Vec::new()));
    let control = common::serve(AggregatedDiscoveryServiceServer::new(Scripted {
        responses: vec![big],
        seen: seen.clone(),
    }))
    .await?;

    let mut config = LbConfig::new(format!("http://{control}"));
    config.node_id = "large-test".into();
    config.eager_connect = false;
    let client = LbClient::connect(config)?;
    client.channel(KEY)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let debug = client.debug();
        if debug.control_plane.acks == 1 {
            let service = &debug.services[0];
            ensure!(
                service.source == Source::ControlPlane && service.usable == 175_000,
                "every endpoint applied: {service:?}"
            );
            println!(
                "a {:.1} MiB response: 175,000 endpoints applied",
                size as f64 / f64::from(1 << 20)
            );
            return Ok(());
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "not applied within 20 s: {:?}; the server saw {} requests",
            debug.control_plane,
            seen.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

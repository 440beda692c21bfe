//! A minimal xDS test client: opens an ADS stream (state of the world or
//! delta), sends exactly the requests a test writes, and decodes responses.
//!
//! It is deliberately dumb (no ACK logic of its own) so tests can play a
//! well-behaved client, a NACKing one or a reconnecting one. Not the
//! product's client: that is `lb-client`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use lb_core::EndpointSet;
use proto::resources::{ParsedCla, parse_cla, unpack};
use proto::xds::pb::envoy::config::core::v3::{Locality, Node};
use proto::xds::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use proto::xds::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use proto::xds::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use proto::xds::pb::google::rpc::Status as RpcStatus;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

/// Type URL of ClusterLoadAssignment.
pub const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
/// Type URL of Cluster.
pub const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// Type URL of Listener.
pub const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// Type URL of RouteConfiguration.
pub const RDS: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

fn node(id: &str, zone: Option<&str>) -> Node {
    Node {
        id: id.to_owned(),
        locality: zone.map(|z| Locality {
            zone: z.to_owned(),
            ..Default::default()
        }),
        user_agent_name: "eds-tests".into(),
        ..Default::default()
    }
}

async fn channel(
    addr: SocketAddr,
) -> anyhow::Result<AggregatedDiscoveryServiceClient<tonic::transport::Channel>> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("connecting to the xDS server at {addr}"))?;
    Ok(AggregatedDiscoveryServiceClient::new(channel))
}

/// A state-of-the-world ADS stream.
#[derive(Debug)]
pub struct SotwClient {
    node: Node,
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
}

impl SotwClient {
    /// Opens an ADS stream as node `id` in `zone`.
    pub async fn connect(addr: SocketAddr, id: &str, zone: Option<&str>) -> anyhow::Result<Self> {
        let (tx, rx) = mpsc::channel(16);
        let response = channel(addr)
            .await?
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await?;
        Ok(Self {
            node: node(id, zone),
            tx,
            rx: response.into_inner(),
        })
    }

    /// Sends a request. `nack` sets `error_detail`.
    pub async fn send(
        &self,
        type_url: &str,
        names: &[&str],
        version: &str,
        nonce: &str,
        nack: Option<&str>,
    ) -> anyhow::Result<()> {
        let req = DiscoveryRequest {
            node: Some(self.node.clone()),
            type_url: type_url.to_owned(),
            resource_names: names.iter().map(|s| (*s).to_owned()).collect(),
            version_info: version.to_owned(),
            response_nonce: nonce.to_owned(),
            error_detail: nack.map(|m| RpcStatus {
                code: 3,
                message: m.to_owned(),
                details: Vec::new(),
            }),
            ..Default::default()
        };
        self.tx.send(req).await.context("the ADS stream is closed")
    }

    /// ACKs `resp` for `names`.
    pub async fn ack(&self, resp: &DiscoveryResponse, names: &[&str]) -> anyhow::Result<()> {
        self.send(&resp.type_url, names, &resp.version_info, &resp.nonce, None)
            .await
    }

    /// The next response, or an error after `timeout` or when the stream ends.
    pub async fn recv(&mut self, timeout: Duration) -> anyhow::Result<DiscoveryResponse> {
        match tokio::time::timeout(timeout, self.rx.message()).await {
            Err(_) => bail!("no xDS response within {timeout:?}"),
            Ok(Err(status)) => bail!("the xDS stream failed: {status}"),
            Ok(Ok(None)) => bail!("the xDS stream ended"),
            Ok(Ok(Some(resp))) => Ok(resp),
        }
    }

    /// Receives until `pred` holds for a response, ACKing each one for
    /// `names` on the way (a well-behaved client); fails after `timeout`.
    pub async fn recv_until(
        &mut self,
        names: &[&str],
        timeout: Duration,
        mut pred: impl FnMut(&DiscoveryResponse) -> bool,
    ) -> anyhow::Result<DiscoveryResponse> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let resp = self.recv(left).await?;
            self.ack(&resp, names).await?;
            if pred(&resp) {
                return Ok(resp);
            }
        }
    }
}

/// A delta ADS stream.
#[derive(Debug)]
pub struct DeltaClient {
    node: Node,
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: Streaming<DeltaDiscoveryResponse>,
}

impl DeltaClient {
    /// Opens a delta ADS stream as node `id` in `zone`.
    pub async fn connect(addr: SocketAddr, id: &str, zone: Option<&str>) -> anyhow::Result<Self> {
        let (tx, rx) = mpsc::channel(16);
        let response = channel(addr)
            .await?
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await?;
        Ok(Self {
            node: node(id, zone),
            tx,
            rx: response.into_inner(),
        })
    }

    /// Sends a request.
    pub async fn send(&self, req: DeltaDiscoveryRequest) -> anyhow::Result<()> {
        let req = DeltaDiscoveryRequest {
            node: Some(self.node.clone()),
            ..req
        };
        self.tx
            .send(req)
            .await
            .context("the delta stream is closed")
    }

    /// The next response, or an error after `timeout`.
    pub async fn recv(&mut self, timeout: Duration) -> anyhow::Result<DeltaDiscoveryResponse> {
        match tokio::time::timeout(timeout, self.rx.message()).await {
            Err(_) => bail!("no delta xDS response within {timeout:?}"),
            Ok(Err(status)) => bail!("the delta xDS stream failed: {status}"),
            Ok(Ok(None)) => bail!("the delta xDS stream ended"),
            Ok(Ok(Some(resp))) => Ok(resp),
        }
    }
}

/// Every ClusterLoadAssignment in a response, validated and converted.
pub fn clas(resp: &DiscoveryResponse) -> anyhow::Result<Vec<ParsedCla>> {
    resp.resources
        .iter()
        .map(|any| {
            let cla: ClusterLoadAssignment = unpack(any)?;
            Ok(parse_cla(&cla)?)
        })
        .collect()
}

/// The endpoints of the one CLA named `name` in a response.
pub fn endpoints_named(
    resp: &DiscoveryResponse,
    name: &str,
) -> anyhow::Result<Option<EndpointSet>> {
    Ok(clas(resp)?
        .into_iter()
        .find(|c| c.name == name)
        .map(|c| c.endpoints))
}

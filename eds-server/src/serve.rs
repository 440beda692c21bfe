//! The tonic services: ADS and the per-type EDS, CDS, LDS and RDS services,
//! state-of-the-world and delta, as thin glue around the protocol state
//! machines of [`crate::xds`].
//!
//! ```text
//!  client ──requests──> stream task ──handle_request──> SotwStream / DeltaStream
//!                           │  ▲                                │
//!           TopologyWatch ──┘  └── on_update (latest only) ─────┤
//!                           │                                   v
//!  client <──responses── bounded mpsc <─────────────────── responses
//! ```
//!
//! One task per stream. A new topology reaches every task through a
//! `watch` channel, which holds only the latest value: a subscriber that is
//! slow to read never makes the publisher wait, never makes another stream
//! wait, and never accumulates more than its bounded outbox plus the latest
//! topology; intermediate topologies are skipped, which is exactly the
//! "latest state per resource" a slow subscriber needs.
//!
//! On shutdown every stream ends with UNAVAILABLE so clients reconnect to
//! another replica at once. Not here: resource building (see
//! [`crate::source`]) and protocol rules (see [`crate::xds`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use futures::Stream;
use proto::xds::pb::envoy::service::cluster::v3::cluster_discovery_service_server::ClusterDiscoveryService;
use proto::xds::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryService;
use proto::xds::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use proto::xds::pb::envoy::service::endpoint::v3::endpoint_discovery_service_server::EndpointDiscoveryService;
use proto::xds::pb::envoy::service::listener::v3::listener_discovery_service_server::ListenerDiscoveryService;
use proto::xds::pb::envoy::service::route::v3::route_discovery_service_server::RouteDiscoveryService;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info};

use crate::metrics::Metrics;
use crate::source::SourceProvider;
use crate::topology::TopologyWatch;
use crate::xds::{DeltaStream, ResourceType, SotwStream, StreamKind, SubscriberStats};

/// One connected stream, as the admin API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClientEntry {
    /// Server-local stream id.
    pub id: u64,
    /// The peer's address, when known.
    pub peer: Option<SocketAddr>,
    /// When the stream opened.
    pub connected_at: SystemTime,
    /// When the stream last did something.
    pub last_activity: SystemTime,
    /// The protocol state.
    pub stats: SubscriberStats,
}

/// Every open stream, for `/debug/clients` and `edsctl clients`.
#[derive(Debug, Default)]
pub struct ClientRegistry {
    next: AtomicU64,
    streams: Mutex<BTreeMap<u64, ClientEntry>>,
}

impl ClientRegistry {
    /// Every open stream, ordered by id.
    pub fn list(&self) -> Vec<ClientEntry> {
        self.streams
            .lock()
            .map(|s| s.values().cloned().collect())
            .unwrap_or_default()
    }

    fn register(
        self: &Arc<Self>,
        peer: Option<SocketAddr>,
        stats: SubscriberStats,
    ) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now();
        if let Ok(mut streams) = self.streams.lock() {
            streams.insert(
                id,
                ClientEntry {
                    id,
                    peer,
                    connected_at: now,
                    last_activity: now,
                    stats,
                },
            );
        }
        Registration {
            id,
            registry: Arc::clone(self),
        }
    }
}

/// Removes a stream from the registry when its task ends, however it ends.
struct Registration {
    id: u64,
    registry: Arc<ClientRegistry>,
}

impl Registration {
    fn update(&self, stats: SubscriberStats) {
        if let Ok(mut streams) = self.registry.streams.lock()
            && let Some(entry) = streams.get_mut(&self.id)
        {
            entry.stats = stats;
            entry.last_activity = SystemTime::now();
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut streams) = self.registry.streams.lock() {
            streams.remove(&self.id);
        }
    }
}

/// What every stream task shares.
#[derive(Debug)]
pub struct Shared {
    /// Published topologies (`None` until the first full sync).
    pub topology: TopologyWatch,
    /// Turns a topology into resources, cached per version.
    pub sources: SourceProvider,
    /// Open streams.
    pub clients: Arc<ClientRegistry>,
    /// Flips to `true` on shutdown.
    pub shutdown: watch::Receiver<bool>,
    /// Responses buffered per stream before the task waits for the client.
    pub outbox: usize,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
}

/// The xDS gRPC services, all backed by one [`Shared`].
#[derive(Debug, Clone)]
pub struct XdsServices(pub Arc<Shared>);

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

impl XdsServices {
    fn sotw(
        &self,
        kind: StreamKind,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Response<BoxStream<DiscoveryResponse>> {
        let peer = request.remote_addr();
        let requests = request.into_inner();
        let (tx, rx) = mpsc::channel(self.0.outbox.max(1));
        tokio::spawn(run_sotw(kind, peer, requests, tx, Arc::clone(&self.0)));
        Response::new(Box::pin(ReceiverStream::new(rx)))
    }

    fn delta(
        &self,
        kind: StreamKind,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Response<BoxStream<DeltaDiscoveryResponse>> {
        let peer = request.remote_addr();
        let requests = request.into_inner();
        let (tx, rx) = mpsc::channel(self.0.outbox.max(1));
        tokio::spawn(run_delta(kind, peer, requests, tx, Arc::clone(&self.0)));
        Response::new(Box::pin(ReceiverStream::new(rx)))
    }
}

fn protocol_name(kind: StreamKind) -> &'static str {
    match kind {
        StreamKind::Aggregated => "ads",
        StreamKind::Single(ty) => ty.short_name(),
    }
}

async fn run_sotw(
    kind: StreamKind,
    peer: Option<SocketAddr>,
    mut requests: Streaming<DiscoveryRequest>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    shared: Arc<Shared>,
) {
    let mut machine = SotwStream::new(kind);
    let registration = shared.clients.register(peer, machine.stats());
    let mut topology = shared.topology.clone();
    let mut shutdown = shared.shutdown.clone();
    let metrics = &shared.metrics;
    metrics.stream_opened("sotw", protocol_name(kind));
    debug!(?peer, kind = protocol_name(kind), "SotW stream opened");
    let end = loop {
        let source = shared.sources.source(topology.borrow_and_update().clone());
        let out = tokio::select! {
            biased;
            _ = shutdown.changed() => break Some(Status::unavailable("eds-server is shutting down; reconnect to another replica")),
            msg = requests.message() => match msg {
                Ok(Some(req)) => {
                    let nacks = machine.stats().counters.nacks;
                    metrics.request("sotw", &req.type_url);
                    let result = machine.handle_request(req, &*source, SystemTime::now());
                    if machine.stats().counters.nacks > nacks {
                        metrics.nack(protocol_name(kind));
                    }
                    match result {
                        Ok(out) => out,
                        Err(e) => break Some(e.into()),
                    }
                }
                Ok(None) => break None,
                Err(status) => {
                    debug!(?peer, %status, "SotW stream ended by the client");
                    break None;
                }
            },
            changed = topology.changed() => {
                if changed.is_err() { break Some(Status::unavailable("eds-server is shutting down")); }
                let source = shared.sources.source(topology.borrow_and_update().clone());
                machine.on_update(&*source)
            }
        };
        registration.update(machine.stats());
        for response in out {
            metrics.response("sotw", &response.type_url);
            if tx.send(Ok(response)).await.is_err() {
                break;
            }
        }
    };
    if let Some(status) = end {
        let _ = tx.send(Err(status)).await;
    }
    metrics.stream_closed("sotw", protocol_name(kind));
    info!(?peer, node = %machine.client().node_id, "SotW stream closed");
}

async fn run_delta(
    kind: StreamKind,
    peer: Option<SocketAddr>,
    mut requests: Streaming<DeltaDiscoveryRequest>,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    shared: Arc<Shared>,
) {
    let mut machine = DeltaStream::new(kind);
    let registration = shared.clients.register(peer, machine.stats());
    let mut topology = shared.topology.clone();
    let mut shutdown = shared.shutdown.clone();
    let metrics = &shared.metrics;
    metrics.stream_opened("delta", protocol_name(kind));
    let end = loop {
        let out = tokio::select! {
            biased;
            _ = shutdown.changed() => break Some(Status::unavailable("eds-server is shutting down; reconnect to another replica")),
            msg = requests.message() => match msg {
                Ok(Some(req)) => {
                    let source = shared.sources.source(topology.borrow().clone());
                    let nacks = machine.stats().counters.nacks;
                    metrics.request("delta", &req.type_url);
                    let result = machine.handle_request(req, &*source, SystemTime::now());
                    if machine.stats().counters.nacks > nacks {
                        metrics.nack(protocol_name(kind));
                    }
                    match result {
                        Ok(out) => out,
                        Err(e) => break Some(e.into()),
                    }
                }
                Ok(None) => break None,
                Err(_) => break None,
            },
            changed = topology.changed() => {
                if changed.is_err() { break Some(Status::unavailable("eds-server is shutting down")); }
                let source = shared.sources.source(topology.borrow_and_update().clone());
                machine.on_update(&*source)
            }
        };
        registration.update(machine.stats());
        for response in out {
            metrics.response("delta", &response.type_url);
            if tx.send(Ok(response)).await.is_err() {
                break;
            }
        }
    };
    if let Some(status) = end {
        let _ = tx.send(Err(status)).await;
    }
    metrics.stream_closed("delta", protocol_name(kind));
}

fn unary_unsupported() -> Status {
    Status::unimplemented(
        "eds-server serves xDS over streams only (REST-style Fetch is not supported)",
    )
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for XdsServices {
    type StreamAggregatedResourcesStream = BoxStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = BoxStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        Ok(self.sotw(StreamKind::Aggregated, request))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Ok(self.delta(StreamKind::Aggregated, request))
    }
}

/// Implements one per-type discovery service by delegating to the shared glue.
macro_rules! per_type_service {
    ($trait:ident, $ty:expr, $sotw:ident, $sotw_stream:ident, $delta:ident, $delta_stream:ident, $fetch:ident) => {
        #[tonic::async_trait]
        impl $trait for XdsServices {
            type $sotw_stream = BoxStream<DiscoveryResponse>;
            type $delta_stream = BoxStream<DeltaDiscoveryResponse>;

            async fn $sotw(
                &self,
                request: Request<Streaming<DiscoveryRequest>>,
            ) -> Result<Response<Self::$sotw_stream>, Status> {
                Ok(self.sotw(StreamKind::Single($ty), request))
            }

            async fn $delta(
                &self,
                request: Request<Streaming<DeltaDiscoveryRequest>>,
            ) -> Result<Response<Self::$delta_stream>, Status> {
                Ok(self.delta(StreamKind::Single($ty), request))
            }

            async fn $fetch(
                &self,
                _request: Request<DiscoveryRequest>,
            ) -> Result<Response<DiscoveryResponse>, Status> {
                Err(unary_unsupported())
            }
        }
    };
}

per_type_service!(
    EndpointDiscoveryService,
    ResourceType::ClusterLoadAssignment,
    stream_endpoints,
    StreamEndpointsStream,
    delta_endpoints,
    DeltaEndpointsStream,
    fetch_endpoints
);
per_type_service!(
    ClusterDiscoveryService,
    ResourceType::Cluster,
    stream_clusters,
    StreamClustersStream,
    delta_clusters,
    DeltaClustersStream,
    fetch_clusters
);
per_type_service!(
    ListenerDiscoveryService,
    ResourceType::Listener,
    stream_listeners,
    StreamListenersStream,
    delta_listeners,
    DeltaListenersStream,
    fetch_listeners
);
per_type_service!(
    RouteDiscoveryService,
    ResourceType::RouteConfiguration,
    stream_routes,
    StreamRoutesStream,
    delta_routes,
    DeltaRoutesStream,
    fetch_routes
);

//! eds-server's real serving stack fed from a synthetic topology instead of
//! Kubernetes: the "ours" side of the xDS fan-out benchmark
//! (`src/bin/fanout.rs` starts it as a child process and measures it alone).
//!
//! ```text
//!  POST /change ─> k8s::Index.apply_slice ─> k8s::Publisher (coalescing window)
//!                                               │ poll at the deadline
//!                                               v
//!                  topology::channel (Published) ─> serve::XdsServices ─> N ADS streams
//!                                                   (source::SourceProvider: one encode per version)
//! ```
//!
//! What is the same as production (`eds_server::app::run_until`): the
//! `Index`, the `Publisher` with its coalescing window and mass-drop guard,
//! the topology watch channel with its publish and first-change times, the
//! `SourceProvider`, the `Shared` state and the tonic services (ADS and EDS,
//! SotW and delta) with tonic's default HTTP/2 settings, the subscriber
//! queue default (1024). What is different: the objects come from a generator
//! (one Service, `--endpoints` endpoints over 100-endpoint EndpointSlices and
//! three zones) instead of kube-runtime watchers, there is no admin server,
//! no CSDS, no TLS, and no tracing subscriber (so nothing is logged per
//! stream). The coalescing window defaults to 0 here (production: 100 ms) so
//! the benchmark times fan-out rather than a deliberate wait; `--coalesce-window-ms`
//! sets another.
//!
//! Control endpoint (HTTP on loopback, for the driver only):
//!
//! ```text
//!  POST /change      flip one endpoint's readiness in the first slice (a
//!                    one-endpoint change); answers once the index has it
//!  GET  /ready       200 once a topology is published, else 503
//!  GET  /cla?name=N  the ClusterLoadAssignment bytes the server currently
//!                    sends for resource N to a client without a zone
//! ```
//!
//! It prints `xds=<addr> control=<addr>` on stdout once both listen.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use clap::Parser;
use eds_server::grpc::{Ads, Eds, XdsGrpc};
use eds_server::k8s::{Index, IndexConfig, Publisher, PublisherConfig};
use eds_server::metrics::Metrics;
use eds_server::serve::{ClientRegistry, Shared, XdsServices};
use eds_server::source::{SourceConfig, SourceProvider};
use eds_server::topology::{self, Published, TopologySender, TopologyWatch};
use eds_server::xds::{ClientInfo, Lookup, ResourceType};
use k8s_openapi::api::core::v1::{ObjectReference, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::sync::{mpsc, oneshot, watch};

/// The benchmark's Service: namespace, name, port.
const NAMESPACE: &str = "bench";
const NAME: &str = "echo";
const PORT: u16 = 8080;
/// Endpoints per EndpointSlice, as the EndpointSlice controller writes them.
const PER_SLICE: usize = 100;
const ZONES: [&str; 3] = ["zone-a", "zone-b", "zone-c"];

#[derive(Debug, Parser)]
#[command(
    about = "eds-server's serving stack over a synthetic topology, for the fan-out benchmark"
)]
struct Args {
    /// Loopback address of the xDS server.
    #[arg(long, default_value = "127.0.0.1:0")]
    xds_addr: SocketAddr,
    /// Loopback address of the control endpoint.
    #[arg(long, default_value = "127.0.0.1:0")]
    control_addr: SocketAddr,
    /// Endpoints of the Service.
    #[arg(long, default_value_t = 1000)]
    endpoints: usize,
    /// The publisher's coalescing window in milliseconds (production default: 100).
    #[arg(long, default_value_t = 0)]
    coalesce_window_ms: u64,
    /// Responses buffered per stream (production default: 16).
    #[arg(long, default_value_t = 16)]
    subscriber_queue: usize,
    /// Tokio worker threads; 0 = one per CPU this process may run on.
    #[arg(long, default_value_t = 0)]
    workers: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if args.workers > 0 {
        runtime.worker_threads(args.workers);
    }
    runtime.enable_all().build()?.block_on(run(args))
}

fn service() -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(NAME.to_owned()),
            namespace: Some(NAMESPACE.to_owned()),
            uid: Some("00000000-0000-4000-8000-000000000001".to_owned()),
            resource_version: Some("1".to_owned()),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            ports: Some(vec![ServicePort {
                name: Some("grpc".to_owned()),
                port: i32::from(PORT),
                protocol: Some("TCP".to_owned()),
                target_port: Some(IntOrString::String("grpc".to_owned())),
                ..ServicePort::default()
            }]),
            selector: Some(BTreeMap::from([("app".to_owned(), NAME.to_owned())])),
            type_: Some("ClusterIP".to_owned()),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

fn endpoint(global: usize, ready: bool) -> Endpoint {
    let ip = global + 1;
    Endpoint {
        addresses: vec![format!("10.64.{}.{}", (ip >> 8) & 0xff, ip & 0xff)],
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            serving: Some(ready),
            terminating: Some(false),
        }),
        node_name: Some(format!("node-{:03}", global % 100)),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".to_owned()),
            name: Some(format!("{NAME}-{global:05}")),
            namespace: Some(NAMESPACE.to_owned()),
            ..ObjectReference::default()
        }),
        zone: Some(ZONES[global % ZONES.len()].to_owned()),
        ..Endpoint::default()
    }
}

/// Slice `n` of the Service; `resource_version` changes with every edit.
fn slice(n: usize, endpoints: Vec<Endpoint>, resource_version: u64) -> EndpointSlice {
    EndpointSlice {
        address_type: "IPv4".to_owned(),
        endpoints: Some(endpoints),
        metadata: ObjectMeta {
            name: Some(format!("{NAME}-{n:04}")),
            namespace: Some(NAMESPACE.to_owned()),
            resource_version: Some(resource_version.to_string()),
            labels: Some(BTreeMap::from([(
                "kubernetes.io/service-name".to_owned(),
                NAME.to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        ports: Some(vec![EndpointPort {
            name: Some("grpc".to_owned()),
            port: Some(50051),
            protocol: Some("TCP".to_owned()),
            app_protocol: None,
        }]),
    }
}

/// Owns the index and the publisher, as `eds_server::watch::run` does, with
/// change requests in place of watch events.
struct Topology {
    index: Index,
    publisher: Publisher,
    endpoints: usize,
    /// Whether endpoint 0 is currently ready (each change flips it).
    first_ready: bool,
    resource_version: u64,
    /// When the oldest unpublished change arrived.
    first_change: Option<Instant>,
}

impl Topology {
    fn new(endpoints: usize, window: Duration) -> anyhow::Result<Self> {
        let mut index = Index::new(IndexConfig::default());
        let now = SystemTime::now();
        index.apply_service(&service());
        let all: Vec<Endpoint> = (0..endpoints).map(|g| endpoint(g, true)).collect();
        for (n, chunk) in all.chunks(PER_SLICE).enumerate() {
            index.apply_slice(&slice(n, chunk.to_vec(), 1), now);
        }
        let mut publisher = Publisher::new(PublisherConfig {
            coalesce_window: window,
            ..PublisherConfig::default()
        })?;
        // As after the initial lists: the first topology publishes one window later.
        publisher.on_change(Instant::now());
        Ok(Self {
            index,
            publisher,
            endpoints,
            first_ready: true,
            resource_version: 1,
            first_change: None,
        })
    }

    /// Flips endpoint 0's readiness: the one-endpoint change.
    fn change(&mut self) {
        self.first_ready = !self.first_ready;
        self.resource_version += 1;
        let first: Vec<Endpoint> = (0..self.endpoints.min(PER_SLICE))
            .map(|g| endpoint(g, g != 0 || self.first_ready))
            .collect();
        let changed = self
            .index
            .apply_slice(&slice(0, first, self.resource_version), SystemTime::now());
        if changed {
            let at = Instant::now();
            self.publisher.on_change(at);
            self.first_change.get_or_insert(at);
        }
    }

    /// Publishes when a deadline has passed, as the watch driver does.
    fn poll(&mut self, sender: &TopologySender) {
        let first_publish = self.publisher.published().is_none();
        let index = &self.index;
        if let Some(topology) = self.publisher.poll(Instant::now(), index) {
            let first_change = self.first_change.take().filter(|_| !first_publish);
            sender.send_replace(Some(Published {
                topology,
                first_change,
                published_at: Instant::now(),
            }));
        }
    }
}

async fn drive(
    mut topology: Topology,
    sender: TopologySender,
    mut changes: mpsc::Receiver<oneshot::Sender<()>>,
) {
    loop {
        let deadline = topology.publisher.next_deadline();
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sleep => {}
            change = changes.recv() => {
                let Some(reply) = change else { return };
                topology.change();
                let _ = reply.send(());
            }
        }
        topology.poll(&sender);
    }
}

#[derive(Clone)]
struct Control {
    topology: TopologyWatch,
    shared: Arc<Shared>,
    changes: mpsc::Sender<oneshot::Sender<()>>,
}

async fn change(State(control): State<Control>) -> impl IntoResponse {
    let (tx, rx) = oneshot::channel();
    if control.changes.send(tx).await.is_err() || rx.await.is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    StatusCode::NO_CONTENT
}

async fn ready(State(control): State<Control>) -> StatusCode {
    if control.topology.borrow().is_some() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn cla(
    State(control): State<Control>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Result<Vec<u8>, (StatusCode, String)> {
    let name = query
        .get("name")
        .ok_or((StatusCode::BAD_REQUEST, "missing ?name=".to_owned()))?;
    let current = control.topology.borrow().clone();
    let source = control.shared.sources.source(current.map(|p| p.topology));
    match source.get(
        ResourceType::ClusterLoadAssignment,
        name,
        &ClientInfo::new("fanout-driver", None),
    ) {
        Lookup::Found(resource) => Ok(resource.value().to_vec()),
        other => Err((StatusCode::NOT_FOUND, format!("{name}: {other:?}"))),
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let window = Duration::from_millis(args.coalesce_window_ms);
    let topology = Topology::new(args.endpoints, window)?;
    let (topology_tx, topology_rx) = topology::channel();
    let (_shutdown_tx, shutdown_rx) = watch::channel(false);
    let metrics = Arc::new(Metrics::new());
    let shared = Arc::new(Shared {
        topology: topology_rx.clone(),
        sources: SourceProvider::new(SourceConfig::default(), Arc::clone(&metrics)),
        clients: Arc::new(ClientRegistry::default()),
        shutdown: shutdown_rx,
        outbox: args.subscriber_queue.max(1),
        max_request_bytes: 4 * 1024 * 1024,
        metrics,
    });
    let (changes_tx, changes_rx) = mpsc::channel(8);
    tokio::spawn(drive(topology, topology_tx, changes_rx));

    let xds_listener = tokio::net::TcpListener::bind(args.xds_addr)
        .await
        .with_context(|| format!("binding the xDS server to {} (port busy?)", args.xds_addr))?;
    let control_listener = tokio::net::TcpListener::bind(args.control_addr)
        .await
        .with_context(|| {
            format!(
                "binding the control endpoint to {} (port busy?)",
                args.control_addr
            )
        })?;
    let xds_addr = xds_listener.local_addr()?;
    let control_addr = control_listener.local_addr()?;
    let services = XdsServices(Arc::clone(&shared));
    let xds = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(XdsGrpc::<Ads>::new(services.clone()))
            .add_service(XdsGrpc::<Eds>::new(services))
            // eds-server's own listener: Nagle off, writes gathered.
            .serve_with_incoming(eds_server::coalesce::xds_incoming(xds_listener, true)),
    );
    let app = axum::Router::new()
        .route("/change", post(change))
        .route("/ready", get(ready))
        .route("/cla", get(cla))
        .with_state(Control {
            topology: topology_rx,
            shared,
            changes: changes_tx,
        });
    let control = tokio::spawn(async move { axum::serve(control_listener, app).await });
    println!("xds={xds_addr} control={control_addr}");
    tokio::select! {
        r = xds => r?.context("the xDS server stopped")?,
        r = control => r?.context("the control endpoint stopped")?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

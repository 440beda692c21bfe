//! The admin HTTP server: liveness, readiness, Prometheus metrics and JSON
//! views of the snapshot and of connected clients, for operators and edsctl.
//!
//! ```text
//!  GET /healthz                 200 while the process serves
//!  GET /readyz                  200 once every watch has listed and a topology is published; 503 before
//!  GET /metrics                 Prometheus text format
//!  GET /debug/snapshot          every service key: version, endpoint counts by zone and health, subscribers
//!  GET /debug/endpoints/{key}   one service key (any accepted form): every endpoint with its metadata
//!  GET /debug/clients           every open xDS stream: node, zone, subscriptions, acked versions, last NACK
//! ```
//!
//! The JSON shapes are the contract with `edsctl`; they are plain views,
//! built on request from the published topology and the client registry.
//! Not a control API: nothing here changes server state.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use lb_core::{Endpoint, EndpointSet, ServiceKey};
use serde::Serialize;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::serve::ClientRegistry;
use crate::topology::TopologyWatch;
use crate::watch::WatchStatus;

/// What the admin handlers read.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// Published topologies.
    pub topology: TopologyWatch,
    /// Watcher progress.
    pub status: watch::Receiver<WatchStatus>,
    /// Open xDS streams.
    pub clients: Arc<ClientRegistry>,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
}

/// The admin router.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/debug/snapshot", get(snapshot))
        .route("/debug/endpoints/{key}", get(endpoints))
        .route("/debug/clients", get(clients))
        .with_state(state)
}

/// Serves the admin API on `addr` until `shutdown` flips.
pub async fn serve(
    addr: SocketAddr,
    state: AdminState,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await?;
    Ok(())
}

async fn readyz(State(state): State<AdminState>) -> Response {
    let status = state.status.borrow().clone();
    if status.synced && state.topology.borrow().is_some() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        let why = match &status.last_error {
            Some(e) => format!(
                "not ready: waiting for the initial Kubernetes lists; last watch error: {e}\n"
            ),
            None => "not ready: waiting for the initial Kubernetes lists\n".to_owned(),
        };
        (StatusCode::SERVICE_UNAVAILABLE, why).into_response()
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let status = state.status.borrow().clone();
    let m = &state.metrics;
    if let Some(topology) = state
        .topology
        .borrow()
        .as_ref()
        .map(|p| Arc::clone(&p.topology))
    {
        let (mut healthy, mut draining, mut unhealthy) = (0, 0, 0);
        for (_, set) in topology.snapshot.services() {
            let (h, d, u) = set.health_counts();
            healthy += h;
            draining += d;
            unhealthy += u;
        }
        m.set_state("service_keys", topology.snapshot.services().len() as i64);
        m.set_state("endpoints_healthy", healthy as i64);
        m.set_state("endpoints_draining", draining as i64);
        m.set_state("endpoints_unhealthy", unhealthy as i64);
    }
    m.set_state("synced", i64::from(status.synced));
    m.set_state("kube_events", status.events as i64);
    m.set_state("kube_watch_errors", status.errors as i64);
    m.set_state("mass_drops_held", status.publish.held_back as i64);
    m.set_state("topologies_published", status.publish.published as i64);
    m.set_state("skipped_fqdn_slices", status.index.fqdn_slices as i64);
    m.set_state("skipped_endpoints", status.index.skipped_endpoints as i64);
    m.set_state(
        "skipped_slices_without_service",
        status.index.slices_without_service as i64,
    );
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
        .into_response()
}

/// One service key in `/debug/snapshot`.
#[derive(Debug, Serialize)]
pub struct ServiceView {
    /// Canonical key.
    pub key: String,
    /// Content version of its endpoint set.
    pub version: String,
    /// Endpoints by zone and health.
    pub zones: BTreeMap<String, BTreeMap<&'static str, usize>>,
    /// Streams subscribed to it (under any name).
    pub subscribers: usize,
}

/// `/debug/snapshot`.
#[derive(Debug, Serialize)]
pub struct SnapshotView {
    /// Whether the server has synced and serves.
    pub ready: bool,
    /// Content version of the whole snapshot.
    pub version: Option<String>,
    /// Every service key.
    pub services: Vec<ServiceView>,
}

/// One endpoint in `/debug/endpoints/{key}`.
#[derive(Debug, Serialize)]
pub struct EndpointView {
    /// `ip:port`.
    pub address: String,
    /// Pod name.
    pub pod: Option<String>,
    /// Node name.
    pub node: Option<String>,
    /// Zone.
    pub zone: Option<String>,
    /// HEALTHY, DRAINING or UNHEALTHY.
    pub health: &'static str,
    /// Load-balancing weight.
    pub weight: u32,
    /// When it became ready (RFC 3339).
    pub ready_since: Option<String>,
    /// When a draining endpoint goes away (RFC 3339).
    pub drain_deadline: Option<String>,
    /// Chosen pod labels.
    pub labels: BTreeMap<String, String>,
}

impl From<&Endpoint> for EndpointView {
    fn from(e: &Endpoint) -> Self {
        Self {
            address: e.address.to_string(),
            pod: e.pod.clone(),
            node: e.node.clone(),
            zone: e.zone.clone(),
            health: e.health.as_str(),
            weight: e.weight.get(),
            ready_since: e.ready_since.map(proto::resources::rfc3339::format),
            drain_deadline: e.drain_deadline.map(proto::resources::rfc3339::format),
            labels: e.labels.clone(),
        }
    }
}

/// `/debug/endpoints/{key}`.
#[derive(Debug, Serialize)]
pub struct EndpointsView {
    /// The key as asked.
    pub key: String,
    /// The canonical key it resolved to.
    pub canonical: String,
    /// Content version of the endpoint set.
    pub version: String,
    /// Every endpoint.
    pub endpoints: Vec<EndpointView>,
}

fn zone_counts(set: &EndpointSet) -> BTreeMap<String, BTreeMap<&'static str, usize>> {
    let mut zones: BTreeMap<String, BTreeMap<&'static str, usize>> = BTreeMap::new();
    for e in set.endpoints() {
        *zones
            .entry(e.zone_or_empty().to_owned())
            .or_default()
            .entry(e.health.as_str())
            .or_default() += 1;
    }
    zones
}

async fn snapshot(State(state): State<AdminState>) -> Json<SnapshotView> {
    let topology = state
        .topology
        .borrow()
        .as_ref()
        .map(|p| Arc::clone(&p.topology));
    let clients = state.clients.list();
    let Some(topology) = topology else {
        return Json(SnapshotView {
            ready: false,
            version: None,
            services: Vec::new(),
        });
    };
    let services = topology
        .snapshot
        .services()
        .map(|(key, set)| {
            let subscribers = clients
                .iter()
                .filter(|c| {
                    c.stats.types.iter().any(|t| {
                        t.subscribed.iter().any(|name| {
                            name.parse::<ServiceKey>()
                                .ok()
                                .and_then(|k| topology.resolve(&k))
                                .is_some_and(|k| &k == key)
                        })
                    })
                })
                .count();
            ServiceView {
                key: key.to_string(),
                version: set.version().to_string(),
                zones: zone_counts(set),
                subscribers,
            }
        })
        .collect();
    Json(SnapshotView {
        ready: true,
        version: Some(topology.snapshot.version().to_string()),
        services,
    })
}

async fn endpoints(State(state): State<AdminState>, Path(key): Path<String>) -> Response {
    let parsed: ServiceKey = match key.parse() {
        Ok(k) => k,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let Some(topology) = state
        .topology
        .borrow()
        .as_ref()
        .map(|p| Arc::clone(&p.topology))
    else {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response();
    };
    let (Some(canonical), Some(set)) = (topology.resolve(&parsed), topology.endpoints(&parsed))
    else {
        return (
            StatusCode::NOT_FOUND,
            format!("no service key {key} in the snapshot\n"),
        )
            .into_response();
    };
    Json(EndpointsView {
        key,
        canonical: canonical.to_string(),
        version: set.version().to_string(),
        endpoints: set.endpoints().iter().map(EndpointView::from).collect(),
    })
    .into_response()
}

async fn clients(State(state): State<AdminState>) -> Json<serde_json::Value> {
    let now = SystemTime::now();
    let list = state.clients.list();
    Json(serde_json::json!({
        "at": proto::resources::rfc3339::format(now),
        "clients": list,
    }))
}

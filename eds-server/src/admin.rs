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
//! The JSON shapes are defined once, in the `eds-admin-api` crate edsctl
//! reads them with; this module builds them on request from the published
//! topology and the client registry.
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
use eds_admin_api::{
    self as api, API_VERSION, ClientsView, EndpointView, EndpointsView, ServiceView, SnapshotView,
    Time,
};
use lb_core::{EndpointSet, ServiceKey};
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::serve::{ClientEntry, ClientRegistry};
use crate::topology::TopologyWatch;
use crate::watch::WatchStatus;
use crate::xds::ResourceVersion;
use crate::xds::StreamKind;
use crate::xds::stats::{Counters, Protocol, TypeStats};

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

fn zone_counts(set: &EndpointSet) -> BTreeMap<String, BTreeMap<String, usize>> {
    let mut zones: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for e in set.endpoints() {
        *zones
            .entry(e.zone_or_empty().to_owned())
            .or_default()
            .entry(e.health.as_str().to_owned())
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
            api_version: API_VERSION.to_owned(),
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
        api_version: API_VERSION.to_owned(),
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
        api_version: API_VERSION.to_owned(),
        key,
        canonical: canonical.to_string(),
        version: set.version().to_string(),
        endpoints: set
            .endpoints()
            .iter()
            .map(EndpointView::from_endpoint)
            .collect(),
    })
    .into_response()
}

async fn clients(State(state): State<AdminState>) -> Json<ClientsView> {
    Json(clients_view(SystemTime::now(), state.clients.list()))
}

/// The registry's entries as the admin contract shows them.
fn clients_view(at: SystemTime, entries: Vec<ClientEntry>) -> ClientsView {
    ClientsView {
        api_version: API_VERSION.to_owned(),
        at: Time(at),
        clients: entries.into_iter().map(client_entry).collect(),
    }
}

fn client_entry(e: ClientEntry) -> api::ClientEntry {
    let s = e.stats;
    api::ClientEntry {
        id: e.id,
        peer: e.peer.map(|p| p.to_string()),
        connected_at: Time(e.connected_at),
        last_activity: Time(e.last_activity),
        stats: api::SubscriberStats {
            client: api::ClientInfo {
                node_id: s.client.node_id,
                cluster: s.client.cluster,
                zone: s.client.zone,
                unhealthy_endpoints: s.client.unhealthy_endpoints,
            },
            protocol: match s.protocol {
                Protocol::Sotw => api::Protocol::Sotw,
                Protocol::Delta => api::Protocol::Delta,
            },
            stream: match s.stream {
                StreamKind::Aggregated => api::StreamKind::Aggregated,
                StreamKind::Single(ty) => api::StreamKind::Single(ty.short_name().to_owned()),
            },
            counters: counters(s.counters),
            errors: s.errors,
            types: s.types.into_iter().map(type_stats).collect(),
        },
        backlog: api::Backlog {
            queued: e.backlog.queued,
            superseded: e.backlog.superseded,
        },
    }
}

fn counters(c: Counters) -> api::Counters {
    api::Counters {
        requests: c.requests,
        responses: c.responses,
        acks: c.acks,
        nacks: c.nacks,
        stale: c.stale,
    }
}

fn type_stats(t: TypeStats) -> api::TypeStats {
    let versions = |m: BTreeMap<String, ResourceVersion>| {
        m.into_iter()
            .map(|(name, v)| (name, v.as_str().to_owned()))
            .collect()
    };
    api::TypeStats {
        type_url: t.type_url.to_owned(),
        wildcard: t.wildcard,
        subscribed: t.subscribed,
        sent_version: t.sent_version,
        sent_resources: versions(t.sent_resources),
        pending_nonce: t.pending_nonce,
        acked_version: t.acked_version,
        acked_resources: versions(t.acked_resources),
        nacked_resources: versions(t.nacked_resources),
        last_ack_at: t.last_ack_at.map(Time),
        last_nack: t.last_nack.map(|n| api::NackRecord {
            rejected_version: n.rejected_version,
            client_version: n.client_version,
            nonce: n.nonce,
            code: n.code,
            message: n.message,
            resources: n.resources,
            stale: n.stale,
            at: Time(n.at),
        }),
        counters: counters(t.counters),
    }
}

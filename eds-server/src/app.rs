//! Wires the parts together and runs them until SIGTERM or Ctrl-C.
//!
//! ```text
//!  kube Client ─> watch::run ─> TopologySender ─┬─> xDS services (tonic, TLS optional) ─> ClientRegistry
//!                     │                         └─> admin (axum)                                   │
//!                     └─> WatchStatus ──────────────> /readyz, /metrics                             │
//!                                       CSDS (on the xDS port) and /debug/clients  <────────────────┘
//! ```
//!
//! Shutdown: a signal flips one `watch` flag; the xDS server stops
//! accepting, every stream ends with UNAVAILABLE so clients move to another
//! replica, the admin server and the watchers stop; after
//! `--shutdown-grace` the process exits regardless.

use std::sync::Arc;

use anyhow::Context;
use proto::xds::pb::envoy::service::status::v3::client_status_discovery_service_server::ClientStatusDiscoveryServiceServer;
use tokio::sync::watch;
use tonic::service::Routes;
use tracing::{info, warn};

use crate::admin::{self, AdminState};
use crate::config::ServerConfig;
use crate::csds::CsdsService;
use crate::grpc::{Ads, Cds, Eds, Lds, Rds, XdsGrpc};
use crate::metrics::Metrics;
use crate::serve::{ClientRegistry, Shared, XdsServices};
use crate::source::{SourceConfig, SourceProvider};
use crate::topology;
use crate::watch::{self as kwatch, Outputs, Scope, WatchStatus};

async fn kube_client(config: &ServerConfig) -> anyhow::Result<kube::Client> {
    let kube_config = match &config.args.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(
                kubeconfig,
                &kube::config::KubeConfigOptions::default(),
            )
            .await
            .with_context(|| format!("loading kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no --kubeconfig, and neither in-cluster config nor $KUBECONFIG works")?,
    };
    Ok(kube::Client::try_from(kube_config)?)
}

/// Resolves on SIGTERM or Ctrl-C.
async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Runs the server until SIGTERM or Ctrl-C.
pub async fn run(config: ServerConfig) -> anyhow::Result<()> {
    run_until(config, signal()).await
}

/// Runs the server until `stop` resolves (in-process tests pass their own).
pub async fn run_until(
    config: ServerConfig,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let client = kube_client(&config).await?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (topology_tx, topology_rx) = topology::channel();
    let (status_tx, status_rx) = watch::channel(WatchStatus::default());
    let metrics = Arc::new(Metrics::new());
    let clients = Arc::new(ClientRegistry::default());

    let scope = Scope {
        namespaces: config.args.namespaces.clone(),
        service_selector: config.args.service_selector.clone(),
    };
    let watcher = tokio::spawn(kwatch::run(
        client,
        scope,
        config.index.clone(),
        config.publisher.clone(),
        Outputs {
            topology: topology_tx,
            status: status_tx,
            metrics: Arc::clone(&metrics),
        },
        shutdown_rx.clone(),
    ));

    let shared = Arc::new(Shared {
        topology: topology_rx.clone(),
        sources: SourceProvider::new(
            SourceConfig {
                zone_aware: config.args.zone_aware,
                include_unhealthy: config.args.include_unhealthy,
            },
            Arc::clone(&metrics),
        ),
        clients: Arc::clone(&clients),
        shutdown: shutdown_rx.clone(),
        outbox: config.args.subscriber_queue,
        max_request_bytes: config.args.max_request_bytes,
        metrics: Arc::clone(&metrics),
    });
    let services = XdsServices(shared);
    // Limits and liveness on every xDS connection: a bounded number of
    // connections and of streams on each, PINGs so a vanished client's
    // state is released, and an age so clients spread over replicas.
    let limits = crate::connections::Limits {
        max_connections: config.args.max_connections,
        max_streams: config.args.max_streams_per_connection,
        keepalive: (
            config.args.keepalive_interval,
            config.args.keepalive_timeout,
        ),
        max_age: Some(config.args.max_connection_age).filter(|age| !age.is_zero()),
        max_age_grace: config.args.max_connection_age_grace,
    };
    let tls = match (&config.args.tls_cert, &config.args.tls_key) {
        (Some(cert), Some(key)) => Some(crate::connections::tls_config(
            cert,
            key,
            config.args.tls_client_ca.as_deref(),
        )?),
        _ => None,
    };
    let xds_addr = config.args.xds_addr;
    let listener = tokio::net::TcpListener::bind(xds_addr)
        .await
        .with_context(|| format!("binding the xDS server to {xds_addr}"))?;
    info!(addr = %listener.local_addr()?, "xDS server listening");
    let routes = Routes::new(XdsGrpc::<Ads>::new(services.clone()))
        .add_service(XdsGrpc::<Eds>::new(services.clone()))
        .add_service(XdsGrpc::<Cds>::new(services.clone()))
        .add_service(XdsGrpc::<Lds>::new(services.clone()))
        .add_service(XdsGrpc::<Rds>::new(services))
        .add_service(ClientStatusDiscoveryServiceServer::new(CsdsService::new(
            Arc::clone(&clients),
        )));
    let xds = tokio::spawn(crate::connections::serve(
        listener,
        routes,
        tls,
        limits,
        Arc::clone(&metrics),
        shutdown_rx.clone(),
    ));

    let admin_state = AdminState {
        topology: topology_rx,
        status: status_rx,
        clients,
        metrics,
    };
    info!(addr = %config.args.admin_addr, "admin server listening");
    let admin = tokio::spawn(admin::serve(
        config.args.admin_addr,
        admin_state,
        shutdown_rx.clone(),
    ));

    tokio::select! {
        _ = stop => info!("stopping: closing streams so clients reconnect elsewhere"),
        r = watcher => return Err(flatten(r).err().unwrap_or_else(|| anyhow::anyhow!("the Kubernetes watcher stopped"))),
        r = admin => return Err(flatten(r).err().unwrap_or_else(|| anyhow::anyhow!("the admin server stopped"))),
    }
    let _ = shutdown_tx.send(true);
    match tokio::time::timeout(config.args.shutdown_grace, xds).await {
        Ok(r) => r.context("the xDS server task failed")?,
        Err(_) => {
            warn!(grace = ?config.args.shutdown_grace, "streams did not close within the grace period; exiting");
        }
    }
    Ok(())
}

fn flatten<T>(r: Result<anyhow::Result<T>, tokio::task::JoinError>) -> anyhow::Result<T> {
    r.map_err(anyhow::Error::from)?
}

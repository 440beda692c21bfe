//! `LbClient`: the handle applications hold. It owns the control-plane
//! task, the per-service pools, the refresh timer and the fallbacks.
//!
//! ```text
//!  LbClient::connect(config) --> control task (ADS: EDS endpoints, CDS policy) --apply--> pools
//!                            --> refresh task (ticks)    --tick---> pools
//!  client.channel(key)       --> pool (created once)     --> LbChannel
//!                                 |-- seeded from the snapshot file
//!                                 `-- DNS fallback task, if the control
//!                                     plane never answers
//! ```
//!
//! Background tasks hold weak references: dropping the last `LbClient`
//! stops them, while channels already handed out keep working on the
//! endpoints they have.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use lb_core::{Endpoint, EndpointSet, PortRef, ServiceKey};
use proto::resources::ParsedCla;
use proto::xds::pb::envoy::config::core::v3::{Locality, Node};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tower::retry::budget::TpsBudget;

use crate::channel::{CallSettings, LbChannel};
use crate::cluster::ClusterPolicy;
use crate::config::LbConfig;
use crate::control::{ControlPlaneStatus, ControlTask, Target};
use crate::error::{BuildError, ChannelError};
use crate::metrics::Metrics;
use crate::pool::{PoolContext, ServiceDebug, ServicePool, Source};
use crate::tls::Dialer;

/// A per-request load balancer for any number of services, fed by
/// eds-server. Cheap to clone; clones share everything.
#[derive(Debug, Clone)]
pub struct LbClient {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    config: LbConfig,
    pools: Mutex<HashMap<String, Arc<ServicePool>>>,
    commands: Option<mpsc::UnboundedSender<String>>,
    status: Arc<Mutex<ControlPlaneStatus>>,
    pub(crate) metrics: Arc<Metrics>,
    epoch: Instant,
    persisted: Mutex<HashMap<String, ParsedCla>>,
    settings: Arc<CallSettings>,
    tasks: Mutex<Vec<AbortHandle>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("node_id", &self.config.node_id)
            .field("control_plane", &self.config.control_plane)
            .finish_non_exhaustive()
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        for t in self
            .tasks
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            t.abort();
        }
    }
}

impl Target for Shared {
    fn apply(&self, parsed: ParsedCla, version: &str) {
        Shared::apply(self, parsed, version);
    }

    fn apply_cluster(&self, name: &str, cluster: Option<ClusterPolicy>) {
        Shared::apply_cluster(self, name, cluster);
    }

    fn status(&self) -> std::sync::MutexGuard<'_, ControlPlaneStatus> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

impl Shared {
    fn status_now(&self) -> ControlPlaneStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Applies one accepted assignment from the control plane.
    pub(crate) fn apply(&self, parsed: ParsedCla, version: &str) {
        let pool = self
            .pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&parsed.name)
            .cloned();
        if let Some(pool) = pool {
            tracing::debug!(service = %parsed.name, endpoints = parsed.endpoints.len(), %version, "endpoints updated");
            pool.update(
                parsed.endpoints,
                Source::ControlPlane,
                version.to_owned(),
                self.config.eager_connect,
            );
        }
    }

    /// Applies one accepted Cluster (or its absence from a CDS response) to
    /// the service's pool; see [`ServicePool::set_cluster`].
    pub(crate) fn apply_cluster(&self, name: &str, cluster: Option<ClusterPolicy>) {
        let pool = self
            .pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned();
        if let Some(pool) = pool {
            pool.set_cluster(cluster);
        }
    }

    fn track(&self, handle: AbortHandle) {
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(handle);
    }
}

impl LbClient {
    /// Starts a client: validates the configuration, reads the snapshot
    /// file (a damaged one is ignored with a warning), and starts the
    /// control-plane connection in the background. Returns at once; requests
    /// wait for endpoints (bounded by `wait_for_endpoints`).
    ///
    /// Must be called within a Tokio runtime.
    pub fn connect(config: LbConfig) -> Result<Self, BuildError> {
        config.validate()?;
        let persisted = match config.snapshot_file.as_deref().map(crate::persist::load) {
            None => Vec::new(),
            Some(Ok(v)) => {
                if !v.is_empty() {
                    tracing::info!(
                        services = v.len(),
                        "loaded the endpoint snapshot file for a cold start"
                    );
                }
                v
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "not using the endpoint snapshot file");
                Vec::new()
            }
        };
        let endpoint = config
            .control_plane
            .as_deref()
            .map(|address| {
                let mut e = tonic::transport::Endpoint::from_shared(address.to_owned())
                    .map_err(|source| BuildError::ControlPlane {
                        address: address.to_owned(),
                        source,
                    })?
                    .connect_timeout(config.connect_timeout)
                    .tcp_nodelay(true)
                    // The ADS stream is quiet between changes: without pings
                    // a silently dead peer is never noticed (see the field docs).
                    .http2_keep_alive_interval(config.control_plane_keepalive)
                    .keep_alive_timeout(config.control_plane_keepalive_timeout)
                    .keep_alive_while_idle(true)
                    .tcp_keepalive(Some(config.control_plane_keepalive));
                if let Some(tls) = config.control_plane_tls.clone() {
                    e = e
                        .tls_config(tls)
                        .map_err(|source| BuildError::ControlPlane {
                            address: address.to_owned(),
                            source,
                        })?;
                }
                Ok::<_, BuildError>(e)
            })
            .transpose()?;
        let status = Arc::new(Mutex::new(ControlPlaneStatus {
            state: if endpoint.is_some() {
                "connecting"
            } else {
                "disabled"
            },
            ..Default::default()
        }));
        let settings = Arc::new(CallSettings {
            wait_for_endpoints: config.wait_for_endpoints,
            max_attempts: config.retry.max_attempts.max(1),
            budget: TpsBudget::new(
                Duration::from_secs(10),
                config.retry.min_per_sec,
                config.retry.ratio,
            ),
            status: status.clone(),
        });
        let (commands, receiver) = match endpoint {
            Some(_) => {
                let (tx, rx) = mpsc::unbounded_channel();
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        let node = Node {
            id: config.node_id.clone(),
            user_agent_name: "lb-client".to_owned(),
            locality: config.zone.clone().map(|zone| Locality {
                zone,
                ..Default::default()
            }),
            // Not-serving endpoints count as zone capacity in lb-core's
            // spillover; the balancer never picks them.
            client_features: vec![proto::resources::UNHEALTHY_ENDPOINTS_FEATURE.to_owned()],
            ..Default::default()
        };
        let shared = Arc::new(Shared {
            pools: Mutex::new(HashMap::new()),
            commands,
            status,
            metrics: Arc::new(Metrics::new()),
            epoch: Instant::now(),
            persisted: Mutex::new(persisted.into_iter().map(|p| (p.name.clone(), p)).collect()),
            settings,
            tasks: Mutex::new(Vec::new()),
            config,
        });
        if let (Some(endpoint), Some(commands)) = (endpoint, receiver) {
            let task = ControlTask {
                shared: Arc::downgrade(&shared) as std::sync::Weak<dyn Target>,
                endpoint,
                node,
                backoff: shared.config.backoff,
                snapshot_file: shared.config.snapshot_file.clone(),
                commands,
                max_message_bytes: shared.config.max_xds_message_bytes,
            };
            shared.track(tokio::spawn(task.run()).abort_handle());
        }
        shared.track(
            tokio::spawn(refresh(
                Arc::downgrade(&shared),
                shared.config.refresh_interval,
            ))
            .abort_handle(),
        );
        Ok(Self { shared })
    }

    /// A channel balancing over `service_key` (`<svc>.<ns>:<port>` or any
    /// form `lb_core::ServiceKey` accepts). Subscribes on first use; later
    /// calls for the same key share the pool.
    pub fn channel(&self, service_key: &str) -> Result<LbChannel, ChannelError> {
        let key: ServiceKey = service_key.parse().map_err(|source| ChannelError::BadKey {
            name: service_key.to_owned(),
            source,
        })?;
        let name = key.to_string();
        let shared = &self.shared;
        let mut pools = shared.pools.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pool) = pools.get(&name) {
            return Ok(LbChannel::new(pool.clone(), shared.settings.clone()));
        }
        let options = shared.config.service_options(&key);
        let timeout = shared.config.connect_timeout;
        let dialer = match &shared.config.backend_tls {
            None => Dialer::plaintext(timeout),
            Some(tls) => {
                let server_name = options
                    .tls_server_name
                    .clone()
                    .unwrap_or_else(|| key.dns_name(&shared.config.dns_fallback.cluster_domain));
                tls.dialer(&name, &server_name, timeout)?
            }
        };
        let context = PoolContext {
            zone: shared.config.zone.clone(),
            outlier: shared.config.outlier,
            dialer: Arc::new(dialer),
            epoch: shared.epoch,
            metrics: shared.metrics.clone(),
        };
        let pool = Arc::new(ServicePool::new(
            key.clone(),
            name.clone(),
            options,
            context,
        )?);
        pools.insert(name.clone(), pool.clone());
        drop(pools);
        if let Some(cold) = shared
            .persisted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&name)
        {
            tracing::info!(service = %name, endpoints = cold.endpoints.len(), "serving from the snapshot file until the control plane answers");
            pool.update(
                cold.endpoints,
                Source::SnapshotFile,
                String::new(),
                shared.config.eager_connect,
            );
        }
        if let Some(commands) = &shared.commands {
            // The control task ends only when the client does, so a send can fail only then.
            let _ = commands.send(name.clone());
        }
        if shared.config.dns_fallback.enabled {
            let task = tokio::spawn(dns_fallback(Arc::downgrade(shared), Arc::downgrade(&pool)));
            shared.track(task.abort_handle());
        }
        Ok(LbChannel::new(pool, shared.settings.clone()))
    }

    /// Sets a service's endpoints by hand, for services outside the control
    /// plane's view (and for benchmarks). A later control-plane update for
    /// the same key replaces them.
    pub fn set_endpoints(
        &self,
        service_key: &str,
        endpoints: Vec<Endpoint>,
    ) -> Result<(), ChannelError> {
        let channel = self.channel(service_key)?;
        let pool = channel.pool();
        pool.update(
            EndpointSet::merge(endpoints),
            Source::Static,
            String::new(),
            self.shared.config.eager_connect,
        );
        Ok(())
    }

    /// What the client knows and why it picks what it picks.
    pub fn debug(&self) -> ClientDebug {
        let pools: Vec<Arc<ServicePool>> = {
            let pools = self.shared.pools.lock().unwrap_or_else(|e| e.into_inner());
            let mut v: Vec<_> = pools.values().cloned().collect();
            v.sort_by(|a, b| a.name.cmp(&b.name));
            v
        };
        ClientDebug {
            node_id: self.shared.config.node_id.clone(),
            zone: self.shared.config.zone.clone(),
            control_plane: self.shared.status_now(),
            services: pools.iter().map(|p| p.debug()).collect(),
        }
    }

    /// The client's metrics in the Prometheus text format.
    pub fn metrics_text(&self) -> String {
        self.shared.metrics.encode()
    }
}

/// The debug view of a whole client.
#[derive(Debug, Clone, Serialize)]
pub struct ClientDebug {
    /// `Node.id` as the server sees it.
    pub node_id: String,
    /// The client's zone.
    pub zone: Option<String>,
    /// The control-plane connection.
    pub control_plane: ControlPlaneStatus,
    /// Every service the client balances.
    pub services: Vec<ServiceDebug>,
}

async fn refresh(shared: Weak<Shared>, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let pools: Vec<Arc<ServicePool>> = shared
            .pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        drop(shared);
        for p in pools {
            p.tick();
        }
    }
}

/// Resolves the Service's DNS name while the control plane has never
/// answered and nothing better is known.
async fn dns_fallback(shared: Weak<Shared>, pool: Weak<ServicePool>) {
    let (after, target) = {
        let (Some(shared), Some(pool)) = (shared.upgrade(), pool.upgrade()) else {
            return;
        };
        let fallback = &shared.config.dns_fallback;
        let target = match (fallback.overrides.get(&pool.name), pool.key.port()) {
            (Some(t), _) => t.clone(),
            (None, PortRef::Number(port)) => {
                format!("{}:{port}", pool.key.dns_name(&fallback.cluster_domain))
            }
            (None, PortRef::Name(_)) => {
                tracing::warn!(service = %pool.name, "no DNS fallback for a named port: DNS cannot resolve port names; subscribe with the port number");
                return;
            }
        };
        (fallback.after, target)
    };
    tokio::time::sleep(after).await;
    loop {
        let (Some(shared), Some(pool)) = (shared.upgrade(), pool.upgrade()) else {
            return;
        };
        if shared.status_now().ever_answered || !matches!(pool.source(), Source::None | Source::Dns)
        {
            return;
        }
        let eager = shared.config.eager_connect;
        drop(shared);
        match tokio::net::lookup_host(target.as_str()).await {
            Ok(addresses) => {
                let set = EndpointSet::merge(addresses.map(Endpoint::new).collect());
                if !set.is_empty() && pool.source() != Source::ControlPlane {
                    tracing::warn!(service = %pool.name, %target, endpoints = set.len(), "control plane never answered; balancing over the DNS fallback");
                    pool.update(set, Source::Dns, String::new(), eager);
                }
            }
            Err(e) => {
                tracing::warn!(service = %pool.name, %target, error = %e, "DNS fallback failed");
            }
        }
        drop(pool);
        // DNS answers change as pods come and go; re-resolve like a DNS client would at a short TTL.
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

//! The control-plane connection: one ADS stream to eds-server, reconnected
//! with exponential backoff and full jitter, feeding the service pools.
//!
//! ```text
//!        +--> connect --ok--> stream: subscribe / response -> verdict -> pools
//!        |        |                 (CDS: policy, EDS: endpoints)  \-> ACK or NACK
//!   backoff <-----+--error / stream ends------------------+
//! ```
//!
//! While the stream is down, pools keep their last endpoints and policies: a
//! control plane restart costs nothing but freshness. The task holds only a
//! weak reference to the client, so dropping the last `LbClient` ends it.
//!
//! CDS is asked for alongside EDS, and endpoints never wait for it. A server
//! that ends the stream refusing the Cluster type (one that predates CDS)
//! is asked for EDS only from the next connection on, so it keeps working
//! with the local or default policy.
//!
//! Not protocol logic: `ads` decides what to send; this module moves bytes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{MutexGuard, Weak};

use proto::resources::{CLUSTER_TYPE_URL, ParsedCla};
use proto::xds::pb::envoy::config::core::v3::Node;
use proto::xds::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use proto::xds::pb::envoy::service::discovery::v3::DiscoveryRequest;
use proto::xds::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::ads::{AdsSession, Update, Verdict};
use crate::cluster::ClusterPolicy;
use crate::config::Backoff;
use crate::metrics::Metrics;

/// The control-plane connection, as the debug view shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ControlPlaneStatus {
    /// `disabled`, `connecting`, `connected` or `disconnected`.
    pub state: &'static str,
    /// Whether any response ever arrived (DNS fallback only before that).
    pub ever_answered: bool,
    /// The last EDS version accepted.
    pub accepted_version: String,
    /// The last CDS version accepted (empty before the first, or when the
    /// server serves no CDS).
    pub cluster_version: String,
    /// The server refused CDS subscriptions, so policies come from local
    /// configuration or the default.
    pub cds_refused: bool,
    /// Responses accepted.
    pub acks: u64,
    /// Responses rejected.
    pub nacks: u64,
    /// Why the last response was rejected.
    pub last_nack: Option<String>,
    /// Why the connection last failed.
    pub last_error: Option<String>,
    /// Connection attempts that failed in a row.
    pub failed_attempts: u32,
}

/// What the control task updates: the client's pools, its metrics and the
/// status its debug view shows. The client implements it; the task holds it
/// weakly (it ends when the client is dropped) and knows no client type, so
/// the client owns the task without the two modules importing each other.
pub(crate) trait Target: Send + Sync {
    /// Applies one accepted ClusterLoadAssignment at `version`.
    fn apply(&self, parsed: ParsedCla, version: &str);
    /// Applies a service's Cluster, or its absence.
    fn apply_cluster(&self, name: &str, cluster: Option<ClusterPolicy>);
    /// The control-plane status, locked.
    fn status(&self) -> MutexGuard<'_, ControlPlaneStatus>;
    /// The client's metrics.
    fn metrics(&self) -> &Metrics;
}

/// Runs `f` on `target`'s status under its lock.
fn with_status(target: &dyn Target, f: impl FnOnce(&mut ControlPlaneStatus)) {
    f(&mut target.status());
}

pub(crate) struct ControlTask {
    pub(crate) shared: Weak<dyn Target>,
    pub(crate) endpoint: tonic::transport::Endpoint,
    pub(crate) node: Node,
    pub(crate) backoff: Backoff,
    pub(crate) snapshot_file: Option<PathBuf>,
    pub(crate) commands: mpsc::UnboundedReceiver<String>,
    /// The largest response accepted ([`crate::LbConfig::max_xds_message_bytes`]).
    pub(crate) max_message_bytes: usize,
}

enum StreamEnd {
    ClientGone,
    Broken(String),
}

impl ControlTask {
    pub(crate) async fn run(mut self) {
        let mut session = AdsSession::new(self.node.clone());
        let mut saved: BTreeMap<String, ClusterLoadAssignment> = BTreeMap::new();
        let mut seed = lb_core::SmallRng::seed_from_u64(
            lb_core::rng::hash_bytes(self.node.id.as_bytes())
                ^ std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64),
        );
        let mut failures: u32 = 0;
        loop {
            // Names asked for while disconnected join the first request.
            while let Ok(name) = self.commands.try_recv() {
                session.subscribe(&name);
            }
            self.set_state("connecting", None);
            let end = match self.endpoint.connect().await {
                Err(e) => StreamEnd::Broken(format!("connecting to {}: {e}", self.endpoint.uri())),
                Ok(channel) => {
                    self.stream(
                        AggregatedDiscoveryServiceClient::new(channel)
                            .max_decoding_message_size(self.max_message_bytes),
                        &mut session,
                        &mut saved,
                        &mut failures,
                    )
                    .await
                }
            };
            let reason = match end {
                StreamEnd::ClientGone => return,
                StreamEnd::Broken(reason) => reason,
            };
            let Some(shared) = self.shared.upgrade() else {
                return;
            };
            shared.metrics().set_connected(false);
            with_status(&*shared, |s| {
                s.state = "disconnected";
                s.last_error = Some(reason.clone());
                s.failed_attempts = failures + 1;
            });
            drop(shared);
            tracing::warn!(error = %reason, attempt = failures + 1, "control plane unavailable; serving from the last known endpoints");
            let delay = self.backoff.delay(failures, lb_core::Rng::unit(&mut seed));
            failures = failures.saturating_add(1);
            // Keep taking subscriptions while waiting, so none is lost.
            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    () = &mut sleep => break,
                    name = self.commands.recv() => match name {
                        Some(name) => { session.subscribe(&name); }
                        None => return,
                    },
                }
            }
        }
    }

    fn set_state(&self, state: &'static str, error: Option<String>) {
        if let Some(shared) = self.shared.upgrade() {
            with_status(&*shared, |s| {
                s.state = state;
                if error.is_some() {
                    s.last_error = error;
                }
            });
        }
    }

    async fn stream(
        &mut self,
        mut client: AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
        session: &mut AdsSession,
        saved: &mut BTreeMap<String, ClusterLoadAssignment>,
        failures: &mut u32,
    ) -> StreamEnd {
        // Requests are few (one per subscription change or response), so a
        // small queue never fills in practice; if it did, sending waits.
        let (tx, rx) = mpsc::channel::<DiscoveryRequest>(16);
        for first in session.on_connect() {
            let _ = tx.send(first).await;
        }
        let mut responses = match client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
        {
            Ok(r) => r.into_inner(),
            Err(status) => {
                self.cds_refused(session, &status, false);
                return StreamEnd::Broken(format!("opening the ADS stream: {status}"));
            }
        };
        // Whether this stream ever carried a Cluster: then the server knows CDS.
        let mut cds_answered = false;
        self.set_state("connected", None);
        if let Some(shared) = self.shared.upgrade() {
            shared.metrics().set_connected(true);
        }
        loop {
            tokio::select! {
                name = self.commands.recv() => {
                    let Some(name) = name else { return StreamEnd::ClientGone };
                    for request in session.subscribe(&name) {
                        if tx.send(request).await.is_err() {
                            return StreamEnd::Broken("request stream closed".into());
                        }
                    }
                }
                message = responses.message() => {
                    let response = match message {
                        Ok(Some(r)) => r,
                        Ok(None) => return StreamEnd::Broken("the server ended the stream".into()),
                        Err(status) => {
                            self.cds_refused(session, &status, cds_answered);
                            return StreamEnd::Broken(format!("stream failed: {status}"));
                        }
                    };
                    *failures = 0;
                    let Some(shared) = self.shared.upgrade() else { return StreamEnd::ClientGone };
                    let reply = match session.on_response(&response) {
                        Verdict::Accepted { update, unrequested, ack } => {
                            if !unrequested.is_empty() {
                                tracing::debug!(?unrequested, "ignoring resources this client did not ask for");
                            }
                            let version = response.version_info.clone();
                            let is_eds = matches!(update, Update::Endpoints(_));
                            match update {
                                Update::Endpoints(updates) => {
                                    for (parsed, raw) in updates {
                                        saved.insert(parsed.name.clone(), raw);
                                        shared.apply(parsed, &version);
                                    }
                                    self.persist(saved);
                                }
                                Update::Clusters { clusters, absent } => {
                                    cds_answered = true;
                                    for cluster in clusters {
                                        let name = cluster.name.clone();
                                        shared.apply_cluster(&name, Some(cluster));
                                    }
                                    // Complete by protocol: a missing Cluster is gone, and
                                    // its service falls back to the local or default policy.
                                    for name in absent {
                                        shared.apply_cluster(&name, None);
                                    }
                                }
                            }
                            shared.metrics().update(true);
                            with_status(&*shared, |s| {
                                s.ever_answered = true;
                                s.acks += 1;
                                if is_eds {
                                    s.accepted_version.clone_from(&version);
                                } else {
                                    s.cluster_version.clone_from(&version);
                                }
                                s.failed_attempts = 0;
                            });
                            ack
                        }
                        Verdict::Rejected { resource_type, errors, nack } => {
                            tracing::warn!(?errors, r#type = resource_type.short_name(), nonce = %response.nonce, "rejecting an xDS response; keeping the last good state");
                            shared.metrics().update(false);
                            with_status(&*shared, |s| {
                                s.ever_answered = true;
                                s.nacks += 1;
                                s.last_nack = Some(errors.join("; "));
                            });
                            nack
                        }
                        Verdict::Unexpected { type_url } => {
                            tracing::warn!(%type_url, nonce = %response.nonce, "ignoring a response of a type this client never asked for");
                            continue;
                        }
                    };
                    drop(shared);
                    if tx.send(reply).await.is_err() {
                        return StreamEnd::Broken("request stream closed".into());
                    }
                }
            }
        }
    }

    /// Turns CDS off when the stream ended with the server refusing the
    /// Cluster type before ever sending one (eds-server answers an unknown
    /// type with INVALID_ARGUMENT naming it; others say UNIMPLEMENTED).
    fn cds_refused(&self, session: &mut AdsSession, status: &tonic::Status, cds_answered: bool) {
        let refused = session.cds_enabled()
            && !cds_answered
            && matches!(
                status.code(),
                tonic::Code::InvalidArgument | tonic::Code::Unimplemented
            )
            && status.message().contains(CLUSTER_TYPE_URL);
        if !refused {
            return;
        }
        tracing::warn!(error = %status.message(), "the control plane refuses CDS; subscribing to endpoints only, with local or default policies");
        session.disable_cds();
        if let Some(shared) = self.shared.upgrade() {
            with_status(&*shared, |s| s.cds_refused = true);
        }
    }

    fn persist(&self, saved: &BTreeMap<String, ClusterLoadAssignment>) {
        let Some(path) = self.snapshot_file.clone() else {
            return;
        };
        let saved = saved.clone();
        // Disk latency must not hold up the ACK.
        tokio::task::spawn_blocking(move || {
            if let Err(e) = crate::persist::save(&path, &saved) {
                tracing::warn!(error = %e, "could not write the endpoint snapshot file");
            }
        });
    }
}

impl std::fmt::Debug for ControlTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlTask")
            .field("endpoint", &self.endpoint.uri())
            .field("node", &self.node.id)
            .finish_non_exhaustive()
    }
}

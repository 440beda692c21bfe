//! lb-client: per-request load balancing for tonic services, fed by
//! eds-server over ADS.
//!
//! ```text
//!  eds-server --ADS (EDS, CDS)--> control --> pool per service --> LbChannel (tower Service)
//!                              |          lb-core Balancer         |
//!                      snapshot file      conn per endpoint        v
//!                      DNS fallback       outlier detector   tonic generated client
//! ```
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use lb_client::{LbClient, LbConfig};
//! use proto::echo::echo_client::EchoClient;
//!
//! let client = LbClient::connect(LbConfig::new("http://eds-server.eds-system:18000"))?;
//! let mut echo = EchoClient::new(client.channel("echo.demo:8080")?);
//! let reply = echo.echo(proto::echo::EchoRequest::default()).await?;
//! # Ok(()) }
//! ```
//!
//! Every request is balanced on its own with the service's policy from
//! `lb-core`, zone affinity from `LbConfig::zone` (or `$EDS_ZONE`), slow
//! start from each endpoint's `ready_since`, outlier ejection from gRPC
//! statuses and transport errors, draining endpoints only as a last resort,
//! and a panic threshold.
//!
//! The policy of a service is, in order: the application's, when
//! [`ServiceOptions::policy`] is set; else the one the operator put on the
//! Kubernetes Service (`eds.rs/lb-policy`), which eds-server serves in the
//! service's CDS `Cluster` and lb-client reads over the same ADS stream
//! ([`cluster`] says how each Cluster field maps); else P2C on in-flight
//! requests. Endpoints never wait for the Cluster. The debug view
//! ([`ServiceDebug::policy_source`]) and the `lb_client_policy` metric say
//! which one applies: `local`, `cds` or `default`.
//!
//! Connections to endpoints are plaintext HTTP/2 unless
//! [`LbConfig::backend_tls`] is set ([`BackendTls`]: CA, optional client
//! identity for mTLS); then every connection is TLS with ALPN `h2`, checked
//! against the Service's name (see [`ServiceOptions::tls_server_name`]).
//!
//! A request's deadline (`grpc-timeout`, tonic's `Request::set_timeout`)
//! is enforced until response headers, as tonic's `Channel` does, and ends
//! it with DEADLINE_EXCEEDED. A request is retried on another endpoint only
//! when it provably never reached application code: never sent, or its
//! stream refused by the backend (REFUSED_STREAM, or above a GOAWAY's last
//! stream id) with a body small enough to have been kept (unary requests).
//! [`ServiceOptions::max_in_flight_per_endpoint`] caps the requests in
//! flight on one endpoint; a request finding no endpoint under the cap
//! fails with RESOURCE_EXHAUSTED rather than queue.
//!
//! What it is not: a general xDS client (EDS and CDS for the keys it is
//! asked for; no LDS, RDS or delta: the hash header comes from
//! [`ServiceOptions::hash`] or else from the Cluster's `eds.rs` metadata,
//! where eds-server repeats the route's header, not from routes).

mod ads;
mod channel;
mod client;
pub mod cluster;
mod config;
mod conn;
mod control;
mod error;
mod metrics;
mod persist;
mod pool;
mod replay;
mod tls;

pub use ads::{AdsSession, Update, Verdict};
pub use channel::{BoxError, LbChannel};
pub use client::{ClientDebug, LbClient};
pub use cluster::PolicySource;
pub use cluster::{ClusterError, ClusterPolicy, parse_cluster};
pub use config::{
    Backoff, DEFAULT_MAX_XDS_MESSAGE_BYTES, DnsFallback, HashSource, LbConfig, RetryConfig,
    ServiceOptions,
};
pub use control::ControlPlaneStatus;
pub use error::{BuildError, ChannelError, RequestError};
pub use persist::SnapshotFileError;
pub use pool::{EndpointDebug, PickRecord, ServiceDebug, Source};
pub use tls::{BackendTls, TlsError};
/// The rustls this crate links, for [`BackendTls::from_rustls`].
pub use tokio_rustls::rustls;

/// A request extension carrying the hash key for the hash policies, set by
/// the caller: `request.extensions_mut().insert(HashKey::from_str_key("user-42"))`.
/// It wins over a configured hash header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HashKey(pub u64);

impl HashKey {
    /// A key from a string, hashed the same way a header value is.
    pub fn from_str_key(key: &str) -> Self {
        Self(lb_core::rng::hash_bytes(key.as_bytes()))
    }
}

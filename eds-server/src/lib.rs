//! eds-server: Kubernetes Services and EndpointSlices in, Envoy xDS out.
//!
//! ```text
//!  kube watchers --> k8s::Index (apply/delete/reset) --> publish (coalesce, guard)
//!                                                           |
//!                                          TopologyWatch (Published: Arc<Topology> + event time)
//!                                                           |
//!                      serve (tonic) <-- xds::sotw / xds::delta (no IO)
//!                        |
//!                        └─ ClientRegistry --> csds (CSDS over gRPC), admin (JSON)
//! ```
//!
//! Each layer is testable alone: the index with hand-built objects, the
//! protocol state machines with plain requests, and the whole against a
//! real local control plane in `tests/`.

pub mod admin;
pub mod app;
pub mod coalesce;
pub mod config;
pub mod connections;
pub mod csds;
pub mod grpc;
pub mod k8s;
pub mod metrics;
pub mod outbox;
pub mod serve;
pub mod source;
pub mod telemetry;
pub mod topology;
pub mod watch;
pub mod xds;

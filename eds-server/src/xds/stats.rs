//! Per-subscriber statistics for the admin API and `edsctl clients`: who the
//! client is, what it subscribed to, what it acknowledged, its last
//! rejection, and counters.
//!
//! ```text
//!   SotwStream / DeltaStream ──stats()──> SubscriberStats ──serde──> JSON admin view
//!                                          ├─ node id, zone, protocol, stream kind
//!                                          ├─ counters (requests, responses, acks, nacks, stale)
//!                                          └─ per type: TypeStats
//!                                               ├─ subscription (wildcard, names)
//!                                               ├─ sent version (+ per resource) + nonce awaiting ACK
//!                                               ├─ acked version (+ per resource)
//!                                               ├─ resources whose sent version was NACKed
//!                                               └─ last NACK (version, nonce, message, when)
//! ```
//!
//! The same snapshot feeds the JSON admin view and CSDS ([`crate::csds`]
//! maps it to `ClientConfig`), so both always agree.
//!
//! What this module is not: a metrics registry. It is a plain snapshot of one
//! stream's state, taken on demand; Prometheus counters aggregate elsewhere.
//! Times are the ones the caller passed in with each request.

use std::collections::BTreeMap;
use std::time::SystemTime;

use super::StreamKind;
use super::resource::{ClientInfo, ResourceVersion};

/// Which protocol variant a stream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Protocol {
    /// State of the world (`Stream*` and `StreamAggregatedResources`).
    Sotw,
    /// Incremental (`Delta*` and `DeltaAggregatedResources`).
    Delta,
}

/// Event counts, per type and per stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    /// Requests received.
    pub requests: u64,
    /// Responses produced.
    pub responses: u64,
    /// ACKs of a response this stream sent.
    pub acks: u64,
    /// NACKs (requests with `error_detail`), stale or not.
    pub nacks: u64,
    /// Requests carrying a nonce that is not the latest one sent (SotW) or
    /// not one in flight (delta); ignored for ACK purposes.
    pub stale: u64,
}

impl Counters {
    pub(crate) fn add(&mut self, other: &Counters) {
        self.requests += other.requests;
        self.responses += other.responses;
        self.acks += other.acks;
        self.nacks += other.nacks;
        self.stale += other.stale;
    }
}

/// A rejected response, kept for the admin view.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NackRecord {
    /// The version the client rejected (`version_info` or
    /// `system_version_info` of the response with that nonce; empty when the
    /// nonce was stale and no longer known).
    pub rejected_version: String,
    /// The version the client says it still uses (SotW `version_info`).
    pub client_version: String,
    /// The nonce of the rejected response.
    pub nonce: String,
    /// `error_detail.code` (a `google.rpc.Code`).
    pub code: i32,
    /// `error_detail.message`, as the client wrote it.
    pub message: String,
    /// The resources in the rejected response, when known.
    pub resources: Vec<String>,
    /// Whether the nonce was the latest sent (SotW) or in flight (delta).
    pub stale: bool,
    /// When the NACK arrived (the time passed in with the request).
    pub at: SystemTime,
}

/// One resource type's state on one stream.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TypeStats {
    /// The type URL.
    pub type_url: &'static str,
    /// Whether the client has a wildcard subscription (LDS/CDS only).
    pub wildcard: bool,
    /// Explicitly subscribed names, sorted.
    pub subscribed: Vec<String>,
    /// Version of the last response produced (SotW `version_info`, delta
    /// `system_version_info`).
    pub sent_version: Option<String>,
    /// Per resource: the version the server last sent, as far as the client
    /// should hold it now (SotW: the last response; delta: every resource
    /// sent or declared in `initial_resource_versions` and not removed).
    pub sent_resources: BTreeMap<String, ResourceVersion>,
    /// Nonce of the last response, while it awaits an ACK or NACK.
    pub pending_nonce: Option<String>,
    /// The version the client last acknowledged (SotW `version_info`; delta:
    /// `system_version_info` of the acknowledged response). On a new stream,
    /// the version the client said it had.
    pub acked_version: Option<String>,
    /// Per resource: the version the client has acknowledged.
    pub acked_resources: BTreeMap<String, ResourceVersion>,
    /// Per resource: a version in `sent_resources` the client rejected and
    /// that nothing newer has replaced yet. The client still runs the one in
    /// `acked_resources`, if any.
    pub nacked_resources: BTreeMap<String, ResourceVersion>,
    /// When the last ACK arrived.
    pub last_ack_at: Option<SystemTime>,
    /// The last NACK.
    pub last_nack: Option<NackRecord>,
    /// Counters for this type.
    pub counters: Counters,
}

/// One connected client, as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SubscriberStats {
    /// Who the client is (node id, cluster, zone).
    pub client: ClientInfo,
    /// State of the world or delta.
    pub protocol: Protocol,
    /// ADS or a per-type service.
    pub stream: StreamKind,
    /// Totals over all types, plus requests that failed before a type was
    /// known.
    pub counters: Counters,
    /// Requests rejected with an error (unknown type URL and the like).
    pub errors: u64,
    /// Per type, in push order (CDS, EDS, LDS, RDS).
    pub types: Vec<TypeStats>,
}

impl SubscriberStats {
    /// The stats of one type, if the client ever asked for it.
    pub fn of(&self, ty: super::ResourceType) -> Option<&TypeStats> {
        self.types.iter().find(|t| t.type_url == ty.type_url())
    }
}

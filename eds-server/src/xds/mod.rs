//! The xDS protocol logic of eds-server, as state machines without IO.
//!
//! ```text
//!   snapshot (Topology) ──builders──> ResourceSource  (crate::source: one body per
//!                                          │           name, version and zone shape)
//!                                          │ get / version_of / names
//!        DiscoveryRequest ──> SotwStream ──┤──> Vec<SotwResponse>   (resources shared
//!   DeltaDiscoveryRequest ──> DeltaStream ─┘──> Vec<DeltaResponse>   by Arc; see wire)
//!                                 │                      │
//!                      stats() ──>│ SubscriberStats      └──> every response, in order,
//!                                 v  (admin, CSDS, edsctl)     onto the stream's bounded outbox
//! ```
//!
//! One [`sotw::SotwStream`] or [`delta::DeltaStream`] exists per gRPC stream.
//! It is fed two kinds of events: a request from the client
//! (`handle_request`) and a new snapshot from the server (`on_update`), and
//! it answers with the responses to send. Time is passed in; nothing here
//! reads a clock, spawns a task or touches a socket, so every protocol case is
//! a plain unit test.
//!
//! How a slow subscriber stays cheap is the glue's business ([`crate::serve`]),
//! and it needs nothing from these machines beyond "send what they return":
//! each stream task reads the topology through a `tokio::sync::watch`, which
//! holds only the latest value, so a task that falls behind skips the
//! intermediate topologies and calls `on_update` once with the newest; what
//! it returns goes to a bounded outbox (an mpsc channel) that the task waits
//! on. Memory per subscriber is therefore the outbox plus one topology, and
//! no response is ever merged or dropped after it leaves a state machine,
//! which keeps nonce bookkeeping exact.
//!
//! What this module is not: it does not build Envoy resources from endpoint
//! sets (`proto::resources` does), does not decide per-zone weights (the
//! [`resource::ResourceSource`] implementation does), and does not run the tonic
//! services or the async glue.
//!
//! References are to the Envoy "xDS REST and gRPC protocol" document
//! (`docs/root/api-docs/xds_protocol.rst` in envoyproxy/envoy), cited by
//! section title.

pub mod delta;
pub mod resource;
pub mod sotw;
pub mod stats;
pub mod wire;

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod proptests;

use std::sync::Arc;

use proto::resources::{
    CLUSTER_LOAD_ASSIGNMENT_TYPE_URL, CLUSTER_TYPE_URL, LISTENER_TYPE_URL,
    ROUTE_CONFIGURATION_TYPE_URL,
};

pub use delta::DeltaStream;
pub use resource::{ClientInfo, Lookup, MemorySource, Resource, ResourceSource, ResourceVersion};
pub use sotw::SotwStream;
pub use stats::{Counters, NackRecord, Protocol, SubscriberStats, TypeStats};
pub use wire::{DeltaResponse, SotwResponse, WireMessage};

/// The four resource types, shared with the builders in `proto::resources`.
pub use proto::resources::ResourceType;

/// The order in which updates of several types go out on one ADS stream:
/// "make before break" (xDS protocol, "Eventual consistency considerations"):
/// CDS, then EDS, then LDS, then RDS, so a client never sees a reference to a
/// cluster or route it does not know yet. (`ResourceType`'s own order is the
/// order a proxyless client subscribes in, which is different.)
pub const PUSH_ORDER: [ResourceType; 4] = [
    ResourceType::Cluster,
    ResourceType::ClusterLoadAssignment,
    ResourceType::Listener,
    ResourceType::RouteConfiguration,
];

/// Whether state-of-the-world responses of `ty` must carry the complete set,
/// so that absence means deletion ("Grouping Resources into Responses",
/// "Deleting Resources"). That is LDS and CDS, exactly the types that also
/// have wildcard subscriptions ("How the client specifies what resources to
/// return").
fn is_full_state(ty: ResourceType) -> bool {
    ty.allows_wildcard()
}

/// The most a response carries when a change can be split across several
/// (SotW EDS and RDS, every delta type): a quarter of gRPC's default 4 MiB
/// receive limit, so grpc-go, grpc-java and grpcio with default settings
/// accept every such response whatever the size of the subscription, with
/// room for a resource that is itself large. A resource is never split.
pub const CHUNK_BYTES: usize = 1 << 20;

/// Splits `resources` into runs whose encoded size stays within `limit`,
/// keeping their order; a resource larger than `limit` travels alone.
fn chunked(resources: Vec<Arc<Resource>>, limit: usize) -> Vec<Vec<Arc<Resource>>> {
    let mut chunks = Vec::new();
    let mut current = Vec::new();
    let mut size = 0;
    for res in resources {
        let len = res.encoded_len();
        if !current.is_empty() && size + len > limit {
            chunks.push(std::mem::take(&mut current));
            size = 0;
        }
        size += len;
        current.push(res);
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

/// Which gRPC service a stream belongs to: ADS multiplexes every type on one
/// stream, the per-type services (`StreamClusters`, `StreamEndpoints`, ...)
/// carry one implicit type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum StreamKind {
    /// `AggregatedDiscoveryService`: `type_url` is required on every request.
    Aggregated,
    /// A per-type service: `type_url` may be empty (it is implicit) and must
    /// otherwise name this type.
    Single(#[serde(serialize_with = "serialize_type")] ResourceType),
}

fn serialize_type<S: serde::Serializer>(ty: &ResourceType, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(ty.short_name())
}

impl StreamKind {
    /// The resource type a request on this stream is about.
    pub fn resolve(self, type_url: &str) -> Result<ResourceType, XdsError> {
        match (self, ResourceType::from_type_url(type_url)) {
            (StreamKind::Aggregated, Some(ty)) => Ok(ty),
            (StreamKind::Aggregated, None) if type_url.is_empty() => Err(XdsError::MissingTypeUrl),
            (StreamKind::Single(ty), _) if type_url.is_empty() => Ok(ty),
            (StreamKind::Single(ty), Some(asked)) if asked == ty => Ok(ty),
            (StreamKind::Single(ty), Some(_)) => Err(XdsError::WrongType {
                serves: ty,
                type_url: type_url.to_owned(),
            }),
            (_, None) => Err(XdsError::UnknownTypeUrl {
                type_url: type_url.to_owned(),
            }),
        }
    }
}

/// A request the protocol cannot serve. The stream ends with
/// `InvalidArgument` (see the `From` impl for [`tonic::Status`]); the client
/// reconnects, and nothing the server holds is lost.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XdsError {
    /// The type URL names no resource type this server serves (a typo, a v2
    /// URL, or a type such as `Secret` that eds-server does not provide).
    #[error(
        "unknown xDS type URL {type_url:?}: eds-server serves {LISTENER_TYPE_URL}, \
         {ROUTE_CONFIGURATION_TYPE_URL}, {CLUSTER_TYPE_URL} and {CLUSTER_LOAD_ASSIGNMENT_TYPE_URL}"
    )]
    UnknownTypeUrl {
        /// The type URL as the client sent it.
        type_url: String,
    },
    /// An ADS request without a `type_url`: on the aggregated stream the type
    /// cannot be implied (xDS protocol, "Aggregated Discovery Service").
    #[error("ADS request without a type_url: it is required on the aggregated stream")]
    MissingTypeUrl,
    /// A per-type service received a request for another known type.
    #[error("this {serves} stream serves only {}, not {type_url:?}", serves.type_url())]
    WrongType {
        /// The type this stream serves.
        serves: ResourceType,
        /// The type URL as the client sent it.
        type_url: String,
    },
}

impl From<XdsError> for tonic::Status {
    fn from(err: XdsError) -> Self {
        tonic::Status::invalid_argument(err.to_string())
    }
}

/// What every stream, SotW or delta, knows besides its per-type state:
/// which service it belongs to, who the client is (from the first request
/// that carries a `Node`), and how many requests it refused.
#[derive(Debug)]
struct StreamIdentity {
    kind: StreamKind,
    client: ClientInfo,
    client_known: bool,
    errors: u64,
}

impl StreamIdentity {
    fn new(kind: StreamKind) -> Self {
        StreamIdentity {
            kind,
            client: ClientInfo::default(),
            client_known: false,
            errors: 0,
        }
    }

    /// The type a request is about, learning the client from its `Node` the
    /// first time one arrives. A refusal is counted and logged; the caller
    /// ends the stream with it and changes nothing else.
    fn admit(
        &mut self,
        type_url: &str,
        node: Option<&proto::xds::pb::envoy::config::core::v3::Node>,
        protocol: &str,
    ) -> Result<ResourceType, XdsError> {
        let ty = self.kind.resolve(type_url).map_err(|err| {
            self.errors += 1;
            tracing::warn!(node = %self.client.node_id, %err, protocol, "rejecting xDS request");
            err
        })?;
        if !self.client_known
            && let Some(node) = node
        {
            self.client = ClientInfo::from_node(node);
            self.client_known = true;
        }
        Ok(ty)
    }
}

/// Nonces unique within one stream. A nonce is only meaningful on the stream
/// that issued it (xDS protocol, "Basic Protocol Overview"), so a counter is
/// enough; it is printed in decimal and parsed back for delta bookkeeping.
#[derive(Debug, Default, Clone)]
struct NonceSeq(u64);

impl NonceSeq {
    fn next(&mut self) -> (u64, String) {
        self.0 += 1;
        (self.0, self.0.to_string())
    }
}

/// A content-derived version over `(name, version)` pairs, so two replicas
/// serving the same resources to the same client give the same string
/// (DESIGN.md: versions derived from content; projectcontour/contour#6250).
/// The pairs must come sorted by name; lengths are prefixed so that no two
/// different lists encode to the same bytes.
fn content_version<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut bytes = Vec::with_capacity(256);
    for (name, version) in pairs {
        for part in [name, version] {
            bytes.extend_from_slice(&(part.len() as u64).to_be_bytes());
            bytes.extend_from_slice(part.as_bytes());
        }
    }
    format!("{:016x}", lb_core::rng::hash_bytes(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_kind_resolves_type_urls_precisely() {
        let eds = ResourceType::ClusterLoadAssignment;
        let ads = StreamKind::Aggregated;
        let single = StreamKind::Single(eds);
        assert_eq!(ads.resolve(eds.type_url()), Ok(eds));
        assert_eq!(ads.resolve(""), Err(XdsError::MissingTypeUrl));
        assert_eq!(single.resolve(""), Ok(eds));
        assert_eq!(single.resolve(eds.type_url()), Ok(eds));
        assert!(matches!(
            single.resolve(CLUSTER_TYPE_URL),
            Err(XdsError::WrongType { serves, .. }) if serves == eds
        ));
        let v2 = "type.googleapis.com/envoy.api.v2.ClusterLoadAssignment";
        for kind in [ads, single] {
            let err = kind.resolve(v2).unwrap_err();
            assert_eq!(
                err,
                XdsError::UnknownTypeUrl {
                    type_url: v2.into()
                }
            );
            let status = tonic::Status::from(err);
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(status.message().contains(v2), "{}", status.message());
        }
    }

    #[test]
    fn content_versions_are_stable_and_unambiguous() {
        let a = content_version([("a", "1"), ("b", "2")]);
        assert_eq!(a, content_version([("a", "1"), ("b", "2")]));
        assert_eq!(a.len(), 16);
        assert_ne!(a, content_version([("a", "1"), ("b", "3")]));
        assert_ne!(a, content_version([("a", "1")]));
        // Length prefixes keep ("ab","") and ("a","b") apart.
        assert_ne!(content_version([("ab", "")]), content_version([("a", "b")]));
    }
}

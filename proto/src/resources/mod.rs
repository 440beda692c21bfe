//! xDS resources for one service key, built from `lb-core` types, and the
//! validated reverse conversion that lb-client uses.
//!
//! ```text
//!   EndpointSet ----cluster_load_assignment----> ClusterLoadAssignment   (EDS)
//!   ClusterLoadAssignment --endpoint_set_from_cla--> EndpointSet         (validated)
//!   name ---listener---------------------------> Listener               (LDS, api_listener)
//!   name ---route_configuration----------------> RouteConfiguration     (RDS)
//!   name ---cluster(name, LbPolicy)------------> Cluster                (CDS, type EDS)
//! ```
//!
//! Every resource is named by the exact string the client asked for (a
//! service key in any accepted form, DESIGN.md "Names everyone shares"), so
//! `xds:///echo.demo:8080` works in a stock proxyless gRPC client (gRFC A27).
//!
//! What this module is not: it does not decide *which* endpoints a client
//! gets, or with what per-zone weights and priorities (eds-server computes
//! those and passes them in through [`ClaOptions`]); it does no IO and keeps
//! no state. Validation of what stock gRPC clients accept lives in
//! [`crate::validate`].

pub mod endpoints;
pub mod proxyless;
pub mod rfc3339;

pub use endpoints::{
    ClaOptions, METADATA_NAMESPACE, ParsedCla, Problem, ResourceError, cluster_load_assignment,
    endpoint_set_from_cla, parse_cla,
};
pub use proxyless::{
    ClusterOptions, HASH_HEADER_METADATA_KEY, LbPolicy, LbPolicyError, POLICY_METADATA_KEY,
    ads_config_source, cluster, cluster_with, listener, route_configuration,
};

use prost::Name;

use crate::xds::pb::google::protobuf::Any;

/// Type URL of a v3 `Listener` (LDS).
pub const LISTENER_TYPE_URL: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// Type URL of a v3 `RouteConfiguration` (RDS).
pub const ROUTE_CONFIGURATION_TYPE_URL: &str =
    "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
/// Type URL of a v3 `Cluster` (CDS).
pub const CLUSTER_TYPE_URL: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// Type URL of a v3 `ClusterLoadAssignment` (EDS).
pub const CLUSTER_LOAD_ASSIGNMENT_TYPE_URL: &str =
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
/// Type URL of the `HttpConnectionManager` packed into a Listener's `api_listener`.
pub const HTTP_CONNECTION_MANAGER_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

/// The `Node.client_features` entry by which a client asks eds-server for
/// not-serving endpoints too, as UNHEALTHY. lb-client sends it: it counts
/// them as zone capacity (so it spills over from a degraded zone) without
/// picking them. Stock gRPC clients do not, and are sent only what they use.
pub const UNHEALTHY_ENDPOINTS_FEATURE: &str = "eds.rs/unhealthy-endpoints";

/// The four xDS resource types this project serves, one per service key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceType {
    /// LDS: `envoy.config.listener.v3.Listener`.
    Listener,
    /// RDS: `envoy.config.route.v3.RouteConfiguration`.
    RouteConfiguration,
    /// CDS: `envoy.config.cluster.v3.Cluster`.
    Cluster,
    /// EDS: `envoy.config.endpoint.v3.ClusterLoadAssignment`.
    ClusterLoadAssignment,
}

impl ResourceType {
    /// All types, in the order a proxyless client subscribes to them.
    pub const ALL: [ResourceType; 4] = [
        ResourceType::Listener,
        ResourceType::RouteConfiguration,
        ResourceType::Cluster,
        ResourceType::ClusterLoadAssignment,
    ];

    /// The v3 type URL.
    pub fn type_url(self) -> &'static str {
        match self {
            ResourceType::Listener => LISTENER_TYPE_URL,
            ResourceType::RouteConfiguration => ROUTE_CONFIGURATION_TYPE_URL,
            ResourceType::Cluster => CLUSTER_TYPE_URL,
            ResourceType::ClusterLoadAssignment => CLUSTER_LOAD_ASSIGNMENT_TYPE_URL,
        }
    }

    /// The type for a v3 type URL; `None` for anything else (v2 URLs included:
    /// the v2 API is gone from every client we serve).
    pub fn from_type_url(url: &str) -> Option<ResourceType> {
        ResourceType::ALL.into_iter().find(|t| t.type_url() == url)
    }

    /// The short name used in logs, metrics and `edsctl`: LDS, RDS, CDS, EDS.
    pub fn short_name(self) -> &'static str {
        match self {
            ResourceType::Listener => "LDS",
            ResourceType::RouteConfiguration => "RDS",
            ResourceType::Cluster => "CDS",
            ResourceType::ClusterLoadAssignment => "EDS",
        }
    }

    /// Whether the xDS protocol allows a wildcard subscription to this type.
    /// Only LDS and CDS do; RDS and EDS are always subscribed by name
    /// (xDS protocol, "How the client specifies what resources to return").
    pub fn allows_wildcard(self) -> bool {
        matches!(self, ResourceType::Listener | ResourceType::Cluster)
    }
}

impl std::fmt::Display for ResourceType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.short_name())
    }
}

/// Packs a message into the `Any` that xDS responses and typed configs carry.
///
/// This is `envoy_types`' own generated `google.protobuf.Any`, not
/// `prost_types::Any`: envoy-types generates the well-known types itself, and
/// every xDS message field that holds an `Any` has that type.
pub fn pack<M: Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: prost::Message::encode_to_vec(message),
    }
}

/// Why an `Any` could not be unpacked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnpackError {
    /// The `Any` holds a different message type than the one asked for.
    #[error("expected a {expected}, got type URL {found:?}")]
    WrongType {
        /// The type URL asked for.
        expected: String,
        /// The type URL found.
        found: String,
    },
    /// The type URL matched but the bytes are not a valid message.
    #[error("{type_url}: {source}")]
    Decode {
        /// The type URL of the message.
        type_url: String,
        /// What the decoder said.
        #[source]
        source: prost::DecodeError,
    },
}

/// Unpacks an `Any`, checking its type URL first.
pub fn unpack<M: Name + Default>(any: &Any) -> Result<M, UnpackError> {
    let expected = M::type_url();
    if any.type_url != expected {
        return Err(UnpackError::WrongType {
            expected,
            found: any.type_url.clone(),
        });
    }
    prost::Message::decode(any.value.as_slice()).map_err(|source| UnpackError::Decode {
        type_url: expected,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::pb::envoy::config::cluster::v3::Cluster;
    use crate::xds::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use crate::xds::pb::envoy::config::listener::v3::Listener;
    use crate::xds::pb::envoy::config::route::v3::RouteConfiguration;
    use crate::xds::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;

    #[test]
    fn type_urls_match_the_generated_messages() {
        let cases = [
            (LISTENER_TYPE_URL, Listener::type_url()),
            (ROUTE_CONFIGURATION_TYPE_URL, RouteConfiguration::type_url()),
            (CLUSTER_TYPE_URL, Cluster::type_url()),
            (
                CLUSTER_LOAD_ASSIGNMENT_TYPE_URL,
                ClusterLoadAssignment::type_url(),
            ),
            (
                HTTP_CONNECTION_MANAGER_TYPE_URL,
                HttpConnectionManager::type_url(),
            ),
        ];
        for (constant, generated) in cases {
            assert_eq!(constant, generated);
        }
    }

    #[test]
    fn resource_types_round_trip_through_their_urls() {
        for t in ResourceType::ALL {
            assert_eq!(ResourceType::from_type_url(t.type_url()), Some(t));
        }
        assert_eq!(
            ResourceType::from_type_url("type.googleapis.com/envoy.api.v2.Cluster"),
            None
        );
        assert_eq!(ResourceType::from_type_url(""), None);
        let wildcard: Vec<_> = ResourceType::ALL
            .into_iter()
            .filter(|t| t.allows_wildcard())
            .map(ResourceType::short_name)
            .collect();
        assert_eq!(wildcard, ["LDS", "CDS"]);
    }

    #[test]
    fn pack_then_unpack_checks_the_type() {
        let cla = ClusterLoadAssignment {
            cluster_name: "echo.demo:8080".into(),
            ..Default::default()
        };
        let any = pack(&cla);
        assert_eq!(any.type_url, CLUSTER_LOAD_ASSIGNMENT_TYPE_URL);
        assert_eq!(unpack::<ClusterLoadAssignment>(&any), Ok(cla));
        assert!(matches!(
            unpack::<Cluster>(&any),
            Err(UnpackError::WrongType { .. })
        ));
        let garbage = Any {
            type_url: CLUSTER_LOAD_ASSIGNMENT_TYPE_URL.into(),
            value: vec![0xff, 0xff, 0xff],
        };
        let err = unpack::<ClusterLoadAssignment>(&garbage).unwrap_err();
        assert!(matches!(err, UnpackError::Decode { .. }), "{err}");
    }
}

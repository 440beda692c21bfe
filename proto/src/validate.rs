//! Validation of wire data: what stock gRPC clients require of a
//! `ClusterLoadAssignment`, and `DiscoveryRequest` / `DeltaDiscoveryRequest`
//! checked as domain input.
//!
//! [`check_grpc_compat`] encodes the rules of gRFC A27 as grpc-go applies them
//! (`xdsresource/unmarshal_eds.go`), plus Envoy's documented weight-sum limit:
//!
//! - every locality has an ID and a non-zero `load_balancing_weight`
//!   (grpc-go silently ignores a locality with weight 0 or unset);
//! - every locality has at least one endpoint (DESIGN.md: no empty locality);
//! - a locality appears once per priority, and priorities run from 0 without gaps;
//! - every address is an IP and TCP port, unique across all localities;
//! - endpoint weights are non-zero when set; weight sums fit in a `u32`;
//! - with [`Profile::StockGrpc`], only HEALTHY and UNKNOWN endpoints, the
//!   only ones a stock client uses.
//!
//! [`validate_discovery_request`] and [`validate_delta_request`] turn a request
//! into a [`SotwRequest`] / [`DeltaRequest`]: the type URL must be one we
//! serve and the node must be identified, or the whole request is rejected;
//! each resource name is parsed as a service key on its own, so one bad name
//! does not hide the good ones.
//!
//! What this module is not: it keeps no stream state (ACK/NACK tracking,
//! what a subscriber has, the legacy-wildcard rule after the first request
//! are eds-server's), and it does not validate Listener, RouteConfiguration
//! or Cluster resources, which only this crate builds.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;

use lb_core::{KeyError, ServiceKey};

use crate::resources::ResourceType;
use crate::resources::endpoints::{ResourceError, parse_socket_address};
use crate::xds::pb::envoy::config::core::v3::{HealthStatus, Node};
use crate::xds::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use crate::xds::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};

/// Which clients a `ClusterLoadAssignment` must suit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Profile {
    /// Stock proxyless gRPC (grpc-go, grpc-java, grpcio, tonic-xds): also
    /// requires every endpoint to be HEALTHY or UNKNOWN, the only states they
    /// use (gRFC A27).
    StockGrpc,
    /// Our lb-client and Envoy, which also understand DRAINING and UNHEALTHY.
    EdsClient,
}

/// A rule of gRFC A27 (as stock gRPC clients enforce it) that a
/// `ClusterLoadAssignment` breaks. Each variant names the resource.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum A27Violation {
    /// An endpoint's address cannot be used at all (see [`ResourceError`]).
    #[error(transparent)]
    Endpoint(#[from] ResourceError),
    /// A locality has no `locality` ID; grpc-go rejects the resource.
    #[error("ClusterLoadAssignment {cluster:?}: endpoints[{index}] has no locality")]
    MissingLocality {
        /// The resource name.
        cluster: String,
        /// Index in `endpoints`.
        index: usize,
    },
    /// A locality's weight is 0 or unset; gRPC ignores such a locality.
    #[error(
        "ClusterLoadAssignment {cluster:?}: endpoints[{index}] (zone {zone:?}) has no load_balancing_weight; gRPC would ignore it"
    )]
    ZeroLocalityWeight {
        /// The resource name.
        cluster: String,
        /// Index in `endpoints`.
        index: usize,
        /// The locality's zone.
        zone: String,
    },
    /// A locality has no endpoints.
    #[error("ClusterLoadAssignment {cluster:?}: endpoints[{index}] (zone {zone:?}) is empty")]
    EmptyLocality {
        /// The resource name.
        cluster: String,
        /// Index in `endpoints`.
        index: usize,
        /// The locality's zone.
        zone: String,
    },
    /// The same locality appears twice in one priority; grpc-go rejects it.
    #[error(
        "ClusterLoadAssignment {cluster:?}: locality (region {region:?}, zone {zone:?}, sub_zone {sub_zone:?}) appears twice in priority {priority}"
    )]
    DuplicateLocality {
        /// The resource name.
        cluster: String,
        /// The locality's region.
        region: String,
        /// The locality's zone.
        zone: String,
        /// The locality's sub-zone.
        sub_zone: String,
        /// The priority it repeats in.
        priority: u32,
    },
    /// Priorities skip a value; gRPC rejects the resource.
    #[error(
        "ClusterLoadAssignment {cluster:?}: priority {missing} is missing (priorities must run from 0 without gaps)"
    )]
    PriorityGap {
        /// The resource name.
        cluster: String,
        /// The first priority with no locality.
        missing: u32,
    },
    /// The sum of locality weights in one priority exceeds `u32::MAX`.
    #[error(
        "ClusterLoadAssignment {cluster:?}: locality weights in priority {priority} sum past u32::MAX"
    )]
    LocalityWeightOverflow {
        /// The resource name.
        cluster: String,
        /// The priority.
        priority: u32,
    },
    /// The sum of endpoint weights in one locality exceeds `u32::MAX`.
    #[error(
        "ClusterLoadAssignment {cluster:?}: endpoint weights in endpoints[{index}] sum past u32::MAX"
    )]
    EndpointWeightOverflow {
        /// The resource name.
        cluster: String,
        /// Index in `endpoints`.
        index: usize,
    },
    /// An endpoint weight is explicitly 0; grpc-go rejects the resource.
    #[error("ClusterLoadAssignment {cluster:?}: {field} is 0")]
    ZeroEndpointWeight {
        /// The resource name.
        cluster: String,
        /// Path of the weight field.
        field: String,
    },
    /// An address appears twice; grpc-go rejects the resource.
    #[error(
        "ClusterLoadAssignment {cluster:?}: {field}: address {address} already appears at {first}"
    )]
    DuplicateAddress {
        /// The resource name.
        cluster: String,
        /// Path of the second occurrence.
        field: String,
        /// The repeated address.
        address: SocketAddr,
        /// Path of the first occurrence.
        first: String,
    },
    /// In the stock profile, an endpoint whose health a stock client ignores.
    #[error(
        "ClusterLoadAssignment {cluster:?}: {field} is {status}; stock gRPC clients use only HEALTHY and UNKNOWN endpoints"
    )]
    UnusableHealth {
        /// The resource name.
        cluster: String,
        /// Path of the `health_status` field.
        field: String,
        /// The status name, or the number when outside the enum.
        status: String,
    },
}

/// Checks that stock gRPC clients accept `cla` and use every endpoint in it
/// as intended (see the module docs for the rules). Returns the first
/// violation, in wire order.
pub fn check_grpc_compat(
    cla: &ClusterLoadAssignment,
    profile: Profile,
) -> Result<(), A27Violation> {
    let cluster = || cla.cluster_name.clone();
    let mut seen: HashMap<SocketAddr, String> = HashMap::new();
    let mut localities: HashSet<(&str, &str, &str, u32)> = HashSet::new();
    let mut weight_by_priority: BTreeMap<u32, u64> = BTreeMap::new();
    for (index, loc) in cla.endpoints.iter().enumerate() {
        let Some(id) = &loc.locality else {
            return Err(A27Violation::MissingLocality {
                cluster: cluster(),
                index,
            });
        };
        let weight = loc.load_balancing_weight.map_or(0, |w| w.value);
        if weight == 0 {
            return Err(A27Violation::ZeroLocalityWeight {
                cluster: cluster(),
                index,
                zone: id.zone.clone(),
            });
        }
        if loc.lb_endpoints.is_empty() {
            return Err(A27Violation::EmptyLocality {
                cluster: cluster(),
                index,
                zone: id.zone.clone(),
            });
        }
        if !localities.insert((&id.region, &id.zone, &id.sub_zone, loc.priority)) {
            return Err(A27Violation::DuplicateLocality {
                cluster: cluster(),
                region: id.region.clone(),
                zone: id.zone.clone(),
                sub_zone: id.sub_zone.clone(),
                priority: loc.priority,
            });
        }
        let sum = weight_by_priority.entry(loc.priority).or_default();
        *sum += u64::from(weight);
        if *sum > u64::from(u32::MAX) {
            return Err(A27Violation::LocalityWeightOverflow {
                cluster: cluster(),
                priority: loc.priority,
            });
        }

        let mut endpoint_sum: u64 = 0;
        for (j, lb) in loc.lb_endpoints.iter().enumerate() {
            let at = format!("endpoints[{index}].lb_endpoints[{j}]");
            let address =
                parse_socket_address(lb, &at).map_err(|(field, problem)| ResourceError {
                    resource: cluster(),
                    field,
                    problem,
                })?;
            let field = format!("{at}.endpoint.address");
            if let Some(first) = seen.get(&address) {
                return Err(A27Violation::DuplicateAddress {
                    cluster: cluster(),
                    field,
                    address,
                    first: first.clone(),
                });
            }
            seen.insert(address, field);
            let w = lb.load_balancing_weight.map_or(1, |w| w.value);
            if w == 0 {
                return Err(A27Violation::ZeroEndpointWeight {
                    cluster: cluster(),
                    field: format!("{at}.load_balancing_weight"),
                });
            }
            endpoint_sum += u64::from(w);
            if profile == Profile::StockGrpc {
                let usable = matches!(
                    HealthStatus::try_from(lb.health_status),
                    Ok(HealthStatus::Healthy | HealthStatus::Unknown)
                );
                if !usable {
                    return Err(A27Violation::UnusableHealth {
                        cluster: cluster(),
                        field: format!("{at}.health_status"),
                        status: HealthStatus::try_from(lb.health_status).map_or_else(
                            |_| lb.health_status.to_string(),
                            |s| s.as_str_name().to_owned(),
                        ),
                    });
                }
            }
        }
        if endpoint_sum > u64::from(u32::MAX) {
            return Err(A27Violation::EndpointWeightOverflow {
                cluster: cluster(),
                index,
            });
        }
    }
    // Keys are sorted: the first key that differs from its index is the gap.
    for (expected, &priority) in (0u32..).zip(weight_by_priority.keys()) {
        if priority != expected {
            return Err(A27Violation::PriorityGap {
                cluster: cluster(),
                missing: expected,
            });
        }
    }
    Ok(())
}

/// Whether a request is the first on its stream. The node is required only
/// there: xDS lets clients omit it afterwards (Envoy's
/// `set_node_on_first_message_only`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamPosition {
    /// The first request on the stream.
    First,
    /// Any later request.
    Later,
}

/// Why a whole discovery request is rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// `type_url` is empty (required on ADS, where the stream carries every type).
    #[error("type_url is empty; an ADS request must say which resource type it is for")]
    MissingTypeUrl,
    /// `type_url` is not one of the v3 LDS, RDS, CDS, EDS types.
    #[error(
        "type_url {0:?} is not served here; expected a v3 Listener, RouteConfiguration, Cluster or ClusterLoadAssignment"
    )]
    UnknownTypeUrl(String),
    /// The first request on a stream has no `node`.
    #[error(
        "the first request on a stream must carry a node (set node.id in the client's bootstrap)"
    )]
    MissingNode,
    /// `node.id` is empty.
    #[error("node.id is empty; set node.id in the client's bootstrap")]
    MissingNodeId,
}

/// The client, as its `Node` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// `node.id`, never empty.
    pub id: String,
    /// `node.cluster`; may be empty.
    pub cluster: String,
    /// `node.locality.zone`, which drives per-client zone affinity; `None` when unset or empty.
    pub zone: Option<String>,
    /// `node.locality.region`; `None` when unset or empty.
    pub region: Option<String>,
    /// `node.user_agent_name` and version, e.g. `gRPC Go 1.72.0`; may be empty.
    pub user_agent: String,
}

/// One requested resource name: the exact text (which the response must use)
/// and whether it parses as a service key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceName {
    /// The name as the client wrote it.
    pub name: String,
    /// The name as a service key, or why it is not one.
    pub key: Result<ServiceKey, KeyError>,
}

/// A client's NACK of an earlier response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nack {
    /// `error_detail.code` (a gRPC status code).
    pub code: i32,
    /// `error_detail.message`, the client's reason.
    pub message: String,
}

/// A validated state-of-the-world `DiscoveryRequest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SotwRequest {
    /// The requested type.
    pub resource_type: ResourceType,
    /// The client, when the request carries a node.
    pub node: Option<NodeInfo>,
    /// A wildcard subscription: `*` among the names, or (first request only)
    /// no names at all, for LDS and CDS.
    pub wildcard: bool,
    /// The named resources without repeats, in request order; without `*`
    /// for LDS and CDS, where it means the wildcard.
    pub names: Vec<ResourceName>,
    /// `version_info`: the version being ACKed or NACKed; empty at first.
    pub version_info: String,
    /// `response_nonce`: the response this request answers; empty at first.
    pub response_nonce: String,
    /// Set when the request NACKs the response named by the nonce.
    pub nack: Option<Nack>,
}

/// A validated incremental `DeltaDiscoveryRequest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaRequest {
    /// The requested type.
    pub resource_type: ResourceType,
    /// The client, when the request carries a node.
    pub node: Option<NodeInfo>,
    /// `*` among the subscribed names, or (first request only) no names at
    /// all, for LDS and CDS.
    pub wildcard: bool,
    /// Newly subscribed names without repeats (and without `*` for LDS, CDS).
    pub subscribe: Vec<ResourceName>,
    /// Unsubscribed names without repeats (and without `*` for LDS, CDS).
    /// Names that are not service keys are listed too: a client may drop a
    /// name it got wrong.
    pub unsubscribe: Vec<ResourceName>,
    /// `*` among the unsubscribed names: the client leaves the wildcard.
    pub unsubscribe_wildcard: bool,
    /// Versions the client already has, by name (on reconnect).
    pub initial_resource_versions: BTreeMap<String, String>,
    /// `response_nonce`: the response this request answers; empty otherwise.
    pub response_nonce: String,
    /// Set when the request NACKs the response named by the nonce.
    pub nack: Option<Nack>,
}

/// Validates a state-of-the-world request. Fails only for the whole-request
/// problems of [`RequestError`]; bad names are reported per name.
pub fn validate_discovery_request(
    req: &DiscoveryRequest,
    at: StreamPosition,
) -> Result<SotwRequest, RequestError> {
    let resource_type = resource_type(&req.type_url)?;
    let node = node_info(req.node.as_ref(), at)?;
    let (names, star) = names(&req.resource_names, resource_type);
    let wildcard = star
        || (resource_type.allows_wildcard()
            && at == StreamPosition::First
            && req.resource_names.is_empty());
    Ok(SotwRequest {
        resource_type,
        node,
        wildcard,
        names,
        version_info: req.version_info.clone(),
        response_nonce: req.response_nonce.clone(),
        nack: req.error_detail.as_ref().map(|s| Nack {
            code: s.code,
            message: s.message.clone(),
        }),
    })
}

/// Validates an incremental request, like [`validate_discovery_request`].
pub fn validate_delta_request(
    req: &DeltaDiscoveryRequest,
    at: StreamPosition,
) -> Result<DeltaRequest, RequestError> {
    let resource_type = resource_type(&req.type_url)?;
    let node = node_info(req.node.as_ref(), at)?;
    let (subscribe, star) = names(&req.resource_names_subscribe, resource_type);
    let (unsubscribe, unstar) = names(&req.resource_names_unsubscribe, resource_type);
    let wildcard = star
        || (resource_type.allows_wildcard()
            && at == StreamPosition::First
            && req.resource_names_subscribe.is_empty());
    Ok(DeltaRequest {
        resource_type,
        node,
        wildcard,
        subscribe,
        unsubscribe,
        unsubscribe_wildcard: unstar,
        initial_resource_versions: req
            .initial_resource_versions
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        response_nonce: req.response_nonce.clone(),
        nack: req.error_detail.as_ref().map(|s| Nack {
            code: s.code,
            message: s.message.clone(),
        }),
    })
}

fn resource_type(url: &str) -> Result<ResourceType, RequestError> {
    if url.is_empty() {
        return Err(RequestError::MissingTypeUrl);
    }
    ResourceType::from_type_url(url).ok_or_else(|| RequestError::UnknownTypeUrl(url.to_owned()))
}

fn node_info(node: Option<&Node>, at: StreamPosition) -> Result<Option<NodeInfo>, RequestError> {
    let Some(node) = node else {
        return match at {
            StreamPosition::First => Err(RequestError::MissingNode),
            StreamPosition::Later => Ok(None),
        };
    };
    if node.id.is_empty() {
        return Err(RequestError::MissingNodeId);
    }
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    let locality = node.locality.as_ref();
    let version = match &node.user_agent_version_type {
        Some(
            crate::xds::pb::envoy::config::core::v3::node::UserAgentVersionType::UserAgentVersion(
                v,
            ),
        ) => v.as_str(),
        _ => "",
    };
    Ok(Some(NodeInfo {
        id: node.id.clone(),
        cluster: node.cluster.clone(),
        zone: locality.and_then(|l| non_empty(&l.zone)),
        region: locality.and_then(|l| non_empty(&l.region)),
        user_agent: [node.user_agent_name.as_str(), version]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" "),
    }))
}

/// Names parsed one by one, repeats dropped, and `*` split off for types
/// that allow a wildcard; for RDS and EDS it stays a name that is not a key.
fn names(raw: &[String], resource_type: ResourceType) -> (Vec<ResourceName>, bool) {
    let mut star = false;
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for name in raw {
        if name == "*" && resource_type.allows_wildcard() {
            star = true;
        } else if seen.insert(name.as_str()) {
            out.push(ResourceName {
                name: name.clone(),
                key: name.parse(),
            });
        }
    }
    (out, star)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{ClaOptions, cluster_load_assignment};
    use crate::test_support::*;
    use crate::xds::pb::envoy::config::core::v3::{self as core, node};
    use crate::xds::pb::google::protobuf::UInt32Value;
    use crate::xds::pb::google::rpc::Status;
    use lb_core::EndpointSet;
    use proptest::prelude::*;

    const EDS: &str = crate::resources::CLUSTER_LOAD_ASSIGNMENT_TYPE_URL;
    const LDS: &str = crate::resources::LISTENER_TYPE_URL;

    #[test]
    fn fixture_passes_both_profiles() {
        check_grpc_compat(&valid_cla(), Profile::StockGrpc).unwrap();
        check_grpc_compat(&valid_cla(), Profile::EdsClient).unwrap();
    }

    /// One row per rule: how to break the valid fixture, and the violation.
    #[test]
    fn each_a27_rule_is_enforced() {
        type Break = fn(&mut ClusterLoadAssignment);
        type Check = fn(&A27Violation) -> bool;
        let h = |s: HealthStatus| s as i32;
        let cases: &[(&str, Break, Profile, Check)] = &[
            (
                "no locality id",
                |c| c.endpoints[1].locality = None,
                Profile::EdsClient,
                |v| matches!(v, A27Violation::MissingLocality { index: 1, .. }),
            ),
            (
                "unset locality weight",
                |c| c.endpoints[0].load_balancing_weight = None,
                Profile::EdsClient,
                |v| matches!(v, A27Violation::ZeroLocalityWeight { index: 0, .. }),
            ),
            (
                "zero locality weight",
                |c| c.endpoints[1].load_balancing_weight = Some(UInt32Value { value: 0 }),
                Profile::EdsClient,
                |v| matches!(v, A27Violation::ZeroLocalityWeight { index: 1, zone, .. } if zone == "b"),
            ),
            (
                "empty locality",
                |c| c.endpoints[1].lb_endpoints.clear(),
                Profile::EdsClient,
                |v| matches!(v, A27Violation::EmptyLocality { index: 1, .. }),
            ),
            (
                "same locality twice",
                |c| {
                    let again = loc(
                        "a",
                        Some(1),
                        0,
                        vec![lbe("10.0.0.3", 80, HealthStatus::Healthy)],
                    );
                    c.endpoints.push(again);
                },
                Profile::EdsClient,
                |v| matches!(v, A27Violation::DuplicateLocality { priority: 0, zone, .. } if zone == "a"),
            ),
            (
                "priority gap",
                |c| c.endpoints[1].priority = 2,
                Profile::EdsClient,
                |v| matches!(v, A27Violation::PriorityGap { missing: 1, .. }),
            ),
            (
                "no priority 0",
                |c| {
                    c.endpoints[0].priority = 1;
                    c.endpoints[1].priority = 1;
                },
                Profile::EdsClient,
                |v| matches!(v, A27Violation::PriorityGap { missing: 0, .. }),
            ),
            (
                "locality weights overflow",
                |c| {
                    c.endpoints[0].load_balancing_weight = Some(UInt32Value { value: u32::MAX });
                },
                Profile::EdsClient,
                |v| matches!(v, A27Violation::LocalityWeightOverflow { priority: 0, .. }),
            ),
            (
                "endpoint weights overflow",
                |c| {
                    let mut big = lbe("10.0.0.9", 80, HealthStatus::Healthy);
                    big.load_balancing_weight = Some(UInt32Value { value: u32::MAX });
                    c.endpoints[0].lb_endpoints.push(big);
                },
                Profile::EdsClient,
                |v| matches!(v, A27Violation::EndpointWeightOverflow { index: 0, .. }),
            ),
            (
                "zero endpoint weight",
                |c| lb0(c).load_balancing_weight = Some(UInt32Value { value: 0 }),
                Profile::EdsClient,
                |v| matches!(v, A27Violation::ZeroEndpointWeight { field, .. } if field == "endpoints[0].lb_endpoints[0].load_balancing_weight"),
            ),
            (
                "duplicate address across localities",
                |c| {
                    c.endpoints[1]
                        .lb_endpoints
                        .push(lbe("10.0.0.1", 8080, HealthStatus::Healthy));
                },
                Profile::EdsClient,
                |v| matches!(v, A27Violation::DuplicateAddress { first, .. } if first == "endpoints[0].lb_endpoints[0].endpoint.address"),
            ),
            (
                "same address spelled differently",
                |c| {
                    c.endpoints[0]
                        .lb_endpoints
                        .push(lbe("fd00::1", 80, HealthStatus::Healthy));
                    c.endpoints[1].lb_endpoints.push(lbe(
                        "fd00:0:0::0:1",
                        80,
                        HealthStatus::Healthy,
                    ));
                },
                Profile::EdsClient,
                |v| matches!(v, A27Violation::DuplicateAddress { .. }),
            ),
            (
                "hostname",
                |c| sa0(c).address = "echo.demo".into(),
                Profile::EdsClient,
                |v| matches!(v, A27Violation::Endpoint(e) if e.field.ends_with("socket_address.address")),
            ),
            (
                "draining in stock profile",
                |c| lb0(c).health_status = HealthStatus::Draining as i32,
                Profile::StockGrpc,
                |v| matches!(v, A27Violation::UnusableHealth { status, .. } if status == "DRAINING"),
            ),
            (
                "out-of-enum health in stock profile",
                |c| lb0(c).health_status = 9,
                Profile::StockGrpc,
                |v| matches!(v, A27Violation::UnusableHealth { status, .. } if status == "9"),
            ),
        ];
        for (what, break_it, profile, check) in cases {
            let mut c = valid_cla();
            break_it(&mut c);
            let v = check_grpc_compat(&c, *profile).expect_err(what);
            assert!(check(&v), "{what}: {v:?}");
            assert!(v.to_string().contains("echo.demo:8080"), "{what}: {v}");
        }
        // The lenient profile accepts every health state; UNKNOWN passes both.
        for status in [
            HealthStatus::Draining,
            HealthStatus::Unhealthy,
            HealthStatus::Degraded,
        ] {
            let mut c = valid_cla();
            lb0(&mut c).health_status = h(status);
            check_grpc_compat(&c, Profile::EdsClient).unwrap();
        }
        let mut c = valid_cla();
        lb0(&mut c).health_status = h(HealthStatus::Unknown);
        check_grpc_compat(&c, Profile::StockGrpc).unwrap();
        // A locality may repeat in another priority.
        let mut c = valid_cla();
        c.endpoints.push(loc(
            "a",
            Some(1),
            1,
            vec![lbe("10.0.0.3", 80, HealthStatus::Healthy)],
        ));
        check_grpc_compat(&c, Profile::StockGrpc).unwrap();
    }

    proptest! {
        /// Whatever the input (duplicates, several zones, draining and
        /// unhealthy endpoints, any placement), the stock-client CLA passes
        /// the stock profile and the default CLA passes the lenient one.
        #[test]
        fn built_clas_pass_the_checks(
            eps in arb_endpoints(0..32),
            placement in prop::collection::btree_map(
                prop::sample::select(vec!["a", "b", "c", ""]).prop_map(str::to_owned),
                (1u32..=u32::MAX, 0u32..8),
                0..4,
            ),
        ) {
            let set = EndpointSet::merge(eps);
            let placement: BTreeMap<String, (std::num::NonZeroU32, u32)> = placement
                .into_iter()
                .filter_map(|(z, (w, p))| Some((z, (std::num::NonZeroU32::new(w)?, p))))
                .collect();
            let stock = ClaOptions::stock_grpc().with_placement_map(placement.clone());
            let cla = cluster_load_assignment("echo.demo:8080", &set, &stock);
            prop_assert_eq!(check_grpc_compat(&cla, Profile::StockGrpc), Ok(()));
            let ours = ClaOptions::default()
                .with_unhealthy(true)
                .with_placement_map(placement);
            let cla = cluster_load_assignment("echo.demo:8080", &set, &ours);
            prop_assert_eq!(check_grpc_compat(&cla, Profile::EdsClient), Ok(()));
        }
    }

    fn node(id: &str, zone: &str) -> Node {
        Node {
            id: id.into(),
            locality: Some(core::Locality {
                zone: zone.into(),
                ..Default::default()
            }),
            user_agent_name: "gRPC Go".into(),
            user_agent_version_type: Some(node::UserAgentVersionType::UserAgentVersion(
                "1.72.0".into(),
            )),
            ..Default::default()
        }
    }

    fn sotw(type_url: &str, names: &[&str], node: Option<Node>) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: type_url.into(),
            resource_names: names.iter().map(|&n| n.to_owned()).collect(),
            node,
            ..Default::default()
        }
    }

    #[test]
    fn sotw_request_names_are_judged_one_by_one() {
        let req = sotw(
            EDS,
            &[
                "echo.demo:8080",
                "Bad Name",
                "echo.demo:8080",
                "echo.demo.svc.cluster.local:grpc",
            ],
            Some(node("client-1", "zone-a")),
        );
        let v = validate_discovery_request(&req, StreamPosition::First).unwrap();
        assert_eq!(v.resource_type, ResourceType::ClusterLoadAssignment);
        let n = v.node.unwrap();
        assert_eq!(
            (n.id.as_str(), n.zone.as_deref(), n.region),
            ("client-1", Some("zone-a"), None)
        );
        assert_eq!(n.user_agent, "gRPC Go 1.72.0");
        let summary: Vec<(&str, bool)> = v
            .names
            .iter()
            .map(|n| (n.name.as_str(), n.key.is_ok()))
            .collect();
        assert_eq!(
            summary,
            [
                ("echo.demo:8080", true),
                ("Bad Name", false),
                ("echo.demo.svc.cluster.local:grpc", true)
            ]
        );
        assert!(!v.wildcard, "EDS is never wildcard");
        assert_eq!(v.nack, None);
    }

    #[test]
    fn wildcards_follow_the_xds_rules() {
        let cases: &[(&str, &[&str], StreamPosition, bool, usize)] = &[
            (LDS, &[], StreamPosition::First, true, 0),
            (LDS, &[], StreamPosition::Later, false, 0),
            (LDS, &["*", "echo.demo:80"], StreamPosition::Later, true, 1),
            (LDS, &["echo.demo:80"], StreamPosition::First, false, 1),
            (EDS, &[], StreamPosition::First, false, 0),
            (EDS, &["*"], StreamPosition::First, false, 1),
        ];
        for &(url, names, at, wildcard, count) in cases {
            let v = validate_discovery_request(&sotw(url, names, Some(node("n", ""))), at).unwrap();
            assert_eq!(
                (v.wildcard, v.names.len()),
                (wildcard, count),
                "{url} {names:?} {at:?}"
            );
            assert_eq!(v.node.unwrap().zone, None, "empty zone is no zone");
        }
    }

    #[test]
    fn whole_request_errors() {
        let cases: &[(DiscoveryRequest, StreamPosition, RequestError)] = &[
            (
                sotw("", &[], Some(node("n", "a"))),
                StreamPosition::First,
                RequestError::MissingTypeUrl,
            ),
            (
                sotw(
                    "type.googleapis.com/envoy.api.v2.ClusterLoadAssignment",
                    &[],
                    Some(node("n", "a")),
                ),
                StreamPosition::First,
                RequestError::UnknownTypeUrl(
                    "type.googleapis.com/envoy.api.v2.ClusterLoadAssignment".into(),
                ),
            ),
            (
                sotw(EDS, &[], None),
                StreamPosition::First,
                RequestError::MissingNode,
            ),
            (
                sotw(EDS, &[], Some(node("", "a"))),
                StreamPosition::First,
                RequestError::MissingNodeId,
            ),
            (
                sotw(EDS, &[], Some(node("", "a"))),
                StreamPosition::Later,
                RequestError::MissingNodeId,
            ),
        ];
        for (req, at, want) in cases {
            assert_eq!(
                validate_discovery_request(req, *at).as_ref().map(|_| ()),
                Err(want)
            );
            assert!(!want.to_string().is_empty());
        }
        // Later requests may omit the node.
        let v = validate_discovery_request(&sotw(EDS, &["a.b:1"], None), StreamPosition::Later)
            .unwrap();
        assert_eq!(v.node, None);
    }

    #[test]
    fn ack_and_nack_are_reported() {
        let mut req = sotw(EDS, &["echo.demo:8080"], None);
        req.version_info = "00000000000000ab".into();
        req.response_nonce = "7".into();
        let v = validate_discovery_request(&req, StreamPosition::Later).unwrap();
        assert_eq!(
            (v.version_info.as_str(), v.response_nonce.as_str(), &v.nack),
            ("00000000000000ab", "7", &None)
        );
        req.error_detail = Some(Status {
            code: 3,
            message: "duplicate endpoint".into(),
            details: vec![],
        });
        let v = validate_discovery_request(&req, StreamPosition::Later).unwrap();
        assert_eq!(
            v.nack,
            Some(Nack {
                code: 3,
                message: "duplicate endpoint".into()
            })
        );
    }

    #[test]
    fn delta_requests() {
        let req = DeltaDiscoveryRequest {
            type_url: crate::resources::CLUSTER_TYPE_URL.into(),
            node: Some(node("n", "b")),
            resource_names_subscribe: vec!["*".into(), "echo.demo:80".into(), "nope".into()],
            resource_names_unsubscribe: vec!["old.demo:80".into(), "Nope".into()],
            initial_resource_versions: HashMap::from([("echo.demo:80".into(), "v1".into())]),
            ..Default::default()
        };
        let v = validate_delta_request(&req, StreamPosition::First).unwrap();
        assert_eq!(v.resource_type, ResourceType::Cluster);
        assert!(v.wildcard && !v.unsubscribe_wildcard);
        let ok = |names: &[ResourceName]| names.iter().map(|n| n.key.is_ok()).collect::<Vec<_>>();
        assert_eq!(ok(&v.subscribe), [true, false]);
        assert_eq!(ok(&v.unsubscribe), [true, false]);
        assert_eq!(v.initial_resource_versions["echo.demo:80"], "v1");

        let first_empty = DeltaDiscoveryRequest {
            type_url: LDS.into(),
            node: Some(node("n", "b")),
            ..Default::default()
        };
        assert!(
            validate_delta_request(&first_empty, StreamPosition::First)
                .unwrap()
                .wildcard
        );
        let leave = DeltaDiscoveryRequest {
            type_url: LDS.into(),
            resource_names_unsubscribe: vec!["*".into()],
            ..Default::default()
        };
        let v = validate_delta_request(&leave, StreamPosition::Later).unwrap();
        assert!(!v.wildcard && v.unsubscribe_wildcard);
        assert_eq!(
            validate_delta_request(&DeltaDiscoveryRequest::default(), StreamPosition::Later)
                .unwrap_err(),
            RequestError::MissingTypeUrl
        );
    }
}

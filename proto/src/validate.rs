//! Validation of wire data: what stock gRPC clients require of a
//! `ClusterLoadAssignment`.
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
//! What this module is not: requests are eds-server's to judge (its `xds`
//! state machines read them, with the stream state that decides what a
//! request means), and it does not validate Listener, RouteConfiguration or
//! Cluster resources, which only this crate builds.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;

use crate::resources::endpoints::{ResourceError, parse_socket_address};
use crate::xds::pb::envoy::config::core::v3::HealthStatus;
use crate::xds::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{ClaOptions, cluster_load_assignment};
    use crate::test_support::*;
    use crate::xds::pb::google::protobuf::UInt32Value;
    use lb_core::EndpointSet;
    use proptest::prelude::*;

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
}

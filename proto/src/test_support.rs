//! Test fixtures shared by this crate's unit tests: small builders for lb-core
//! endpoints and xDS messages, and proptest strategies for endpoint sets.
//!
//! Not part of the public API; compiled only for tests.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lb_core::{Endpoint, Health};
use proptest::prelude::*;

use crate::xds::pb::envoy::config::core::v3::{
    self as core, Address, HealthStatus, Metadata, SocketAddress, address, socket_address,
};
use crate::xds::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as XdsEndpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use crate::xds::pb::google::protobuf::{Struct, UInt32Value, Value, value::Kind};

/// An lb-core endpoint at `addr` ("10.0.0.1:80", "[fd00::1]:80") in `zone`.
pub(crate) fn ep(addr: &str, zone: &str, health: Health) -> Endpoint {
    Endpoint::new(addr.parse().expect("fixture address"))
        .with_zone(zone)
        .with_health(health)
}

/// A wire endpoint with weight 1 and no metadata.
pub(crate) fn lbe(ip: &str, port: u32, health: HealthStatus) -> LbEndpoint {
    LbEndpoint {
        health_status: health as i32,
        load_balancing_weight: Some(UInt32Value { value: 1 }),
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(XdsEndpoint {
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: ip.to_owned(),
                    port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
                    ..Default::default()
                })),
            }),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// A wire locality; `weight: None` leaves `load_balancing_weight` unset.
pub(crate) fn loc(
    zone: &str,
    weight: Option<u32>,
    priority: u32,
    lb_endpoints: Vec<LbEndpoint>,
) -> LocalityLbEndpoints {
    LocalityLbEndpoints {
        locality: Some(core::Locality {
            zone: zone.to_owned(),
            ..Default::default()
        }),
        lb_endpoints,
        load_balancing_weight: weight.map(|value| UInt32Value { value }),
        priority,
        ..Default::default()
    }
}

/// A CLA from localities.
pub(crate) fn cla(name: &str, endpoints: Vec<LocalityLbEndpoints>) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: name.to_owned(),
        endpoints,
        ..Default::default()
    }
}

/// A CLA that every validator accepts: two zones, priority 0, one HEALTHY
/// endpoint each, the first with `eds.rs` zone metadata.
pub(crate) fn valid_cla() -> ClusterLoadAssignment {
    let mut first = lbe("10.0.0.1", 8080, HealthStatus::Healthy);
    set_meta(&mut first, "zone", Kind::StringValue("a".into()));
    cla(
        "echo.demo:8080",
        vec![
            loc("a", Some(2), 0, vec![first]),
            loc(
                "b",
                Some(1),
                0,
                vec![lbe("10.0.0.2", 8080, HealthStatus::Healthy)],
            ),
        ],
    )
}

/// The first endpoint of the first locality.
pub(crate) fn lb0(c: &mut ClusterLoadAssignment) -> &mut LbEndpoint {
    &mut c.endpoints[0].lb_endpoints[0]
}

/// The address of the first endpoint.
pub(crate) fn addr0(c: &mut ClusterLoadAssignment) -> &mut Address {
    match &mut lb0(c).host_identifier {
        Some(lb_endpoint::HostIdentifier::Endpoint(e)) => {
            e.address.as_mut().expect("fixture has an address")
        }
        _ => panic!("fixture has an endpoint"),
    }
}

/// The socket address of the first endpoint.
pub(crate) fn sa0(c: &mut ClusterLoadAssignment) -> &mut SocketAddress {
    match &mut addr0(c).address {
        Some(address::Address::SocketAddress(sa)) => sa,
        _ => panic!("fixture has a socket address"),
    }
}

/// Sets `filter_metadata["eds.rs"][key]`.
pub(crate) fn set_meta(lb: &mut LbEndpoint, key: &str, kind: Kind) {
    lb.metadata
        .get_or_insert_with(Metadata::default)
        .filter_metadata
        .entry("eds.rs".to_owned())
        .or_insert_with(|| Struct {
            fields: HashMap::new(),
        })
        .fields
        .insert(key.to_owned(), Value { kind: Some(kind) });
}

fn arb_time() -> impl Strategy<Value = SystemTime> {
    // All of 0000..=9999, before and after the epoch, with nanoseconds.
    (-62_167_219_200i64..=253_402_300_799, 0u32..1_000_000_000).prop_map(|(secs, nanos)| {
        if secs >= 0 {
            UNIX_EPOCH + Duration::new(secs.unsigned_abs(), nanos)
        } else {
            UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
                + Duration::from_nanos(u64::from(nanos))
        }
    })
}

fn arb_address() -> impl Strategy<Value = SocketAddr> {
    // Few distinct values, so merged inputs often repeat an address.
    let ip = prop_oneof![
        (0u8..12).prop_map(|n| IpAddr::V4(Ipv4Addr::new(10, 244, 0, n))),
        (0u16..6).prop_map(|n| IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, n))),
        Just(IpAddr::V6("::ffff:10.0.0.1".parse().expect("mapped v4"))),
    ];
    (ip, prop::sample::select(vec![80u16, 8080, 65535]))
        .prop_map(|(ip, port)| SocketAddr::new(ip, port))
}

/// Endpoints with every field the CLA carries: several zones (including none
/// and ""), every health, weights, times, labels, and repeated addresses.
pub(crate) fn arb_endpoint() -> impl Strategy<Value = Endpoint> {
    let zone = prop::option::of(prop::sample::select(vec!["a", "b", "c", ""]));
    let health = prop::sample::select(vec![Health::Healthy, Health::Draining, Health::Unhealthy]);
    let name = || prop::option::of("[a-z0-9][a-z0-9.-]{0,12}");
    let labels = prop::collection::btree_map("[a-z./]{1,12}", "[A-Za-z0-9_.-]{0,8}", 0..3);
    (
        arb_address(),
        zone,
        (name(), name()),
        health,
        1u32..=1000,
        (prop::option::of(arb_time()), prop::option::of(arb_time())),
        labels,
    )
        .prop_map(
            |(address, zone, (node, pod), health, weight, (ready, drain), labels)| Endpoint {
                address,
                zone: zone.map(str::to_owned),
                node,
                pod,
                health,
                weight: NonZeroU32::new(weight).unwrap_or(NonZeroU32::MIN),
                ready_since: ready,
                drain_deadline: drain,
                labels,
            },
        )
}

/// A list of endpoints, unmerged.
pub(crate) fn arb_endpoints(len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<Endpoint>> {
    prop::collection::vec(arb_endpoint(), len)
}

//! EDS: a `ClusterLoadAssignment` from an `lb-core` [`EndpointSet`], and the
//! validated way back for lb-client.
//!
//! On the wire (DESIGN.md "Endpoint states" and "Names everyone shares"):
//!
//! ```text
//! ClusterLoadAssignment { cluster_name: <the exact name asked for>
//!   endpoints: one LocalityLbEndpoints per zone, ordered by (priority, zone)
//!     locality.zone, load_balancing_weight >= 1, priority (contiguous from 0)
//!     lb_endpoints: address (IP, TCP port), health_status HEALTHY | DRAINING | UNHEALTHY,
//!       load_balancing_weight >= 1,
//!       metadata.filter_metadata["eds.rs"] = { pod, node, zone, ready_since, drain_deadline,
//!                                               labels: { <chosen pod labels> } } }
//! ```
//!
//! The builder never emits what a stock gRPC client rejects or ignores
//! (gRFC A27; grpc-go `unmarshal_eds.go`): no empty locality, no locality
//! without weight, no gap in priorities, no duplicate address (an
//! [`EndpointSet`] is already deduplicated), no weight sum above `u32::MAX`.
//! [`crate::validate::check_grpc_compat`] checks the same rules on any CLA.
//!
//! The reader, [`parse_cla`], is strict where being lenient would hide a bug
//! (zero weights, duplicate addresses, unknown health, unparsable addresses)
//! and names the resource and the field in every error, in the spirit of
//! tonic-xds's `EndpointsResource::validate` but without truncating ports or
//! skipping endpoints silently.
//!
//! What this module is not: it does not choose per-client weights or
//! priorities (eds-server does, and passes them through
//! [`ClaOptions::with_placement`]) and does not resolve hostnames.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;

use lb_core::{Endpoint, EndpointSet, Health, Locality};

use super::rfc3339::{self, Rfc3339Error};
use crate::xds::pb::envoy::config::core::v3::{
    self as core, Address, HealthStatus, Metadata, SocketAddress, address, socket_address,
};
use crate::xds::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as XdsEndpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
    locality_lb_endpoints,
};
use crate::xds::pb::google::protobuf::{Struct, UInt32Value, Value, value::Kind};

/// The one metadata namespace for everything we add (`filter_metadata["eds.rs"]`).
pub const METADATA_NAMESPACE: &str = "eds.rs";

/// Keys inside `filter_metadata["eds.rs"]`.
///
/// Pod labels go under their own [`LABELS`](keys::LABELS) struct rather than
/// next to these keys, so a label called `zone` or `pod` cannot collide with
/// ours and the reader can tell them apart without a reserved-word list.
pub mod keys {
    /// Pod name (string).
    pub const POD: &str = "pod";
    /// Node name (string).
    pub const NODE: &str = "node";
    /// Zone (string); the same as the locality's zone.
    pub const ZONE: &str = "zone";
    /// When the endpoint became ready (RFC 3339 string).
    pub const READY_SINCE: &str = "ready_since";
    /// When a draining endpoint will be gone (RFC 3339 string).
    pub const DRAIN_DEADLINE: &str = "drain_deadline";
    /// The pod labels the operator chose to publish (struct of strings).
    pub const LABELS: &str = "labels";
}

/// Chooses a locality's (weight, priority) from its default: the zone, the
/// summed weight of its best endpoints and priority 0.
pub type Placement = dyn Fn(&Locality) -> (NonZeroU32, u32) + Send + Sync;

/// What goes into a `ClusterLoadAssignment` besides the endpoints themselves.
#[derive(Clone)]
pub struct ClaOptions {
    /// Send DRAINING endpoints. Yes for our client and Envoy, which finish
    /// in-flight work there; stock gRPC clients ignore them, so sending is
    /// safe but [`ClaOptions::stock_grpc`] leaves them out.
    pub include_draining: bool,
    /// Send UNHEALTHY endpoints (only when the operator asks for it).
    pub include_unhealthy: bool,
    placement: Option<Arc<Placement>>,
}

impl fmt::Debug for ClaOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClaOptions")
            .field("include_draining", &self.include_draining)
            .field("include_unhealthy", &self.include_unhealthy)
            .field("placement", &self.placement.as_ref().map(|_| "custom"))
            .finish()
    }
}

impl Default for ClaOptions {
    /// For our lb-client and Envoy: HEALTHY and DRAINING, default placement.
    fn default() -> Self {
        Self {
            include_draining: true,
            include_unhealthy: false,
            placement: None,
        }
    }
}

impl ClaOptions {
    /// For stock proxyless gRPC clients: HEALTHY only, which is all they use
    /// (gRFC A27), so the CLA passes the stock profile of
    /// [`crate::validate::check_grpc_compat`].
    pub fn stock_grpc() -> Self {
        Self {
            include_draining: false,
            ..Self::default()
        }
    }

    /// Builder: whether to send DRAINING endpoints.
    pub fn with_draining(mut self, include: bool) -> Self {
        self.include_draining = include;
        self
    }

    /// Builder: whether to send UNHEALTHY endpoints.
    pub fn with_unhealthy(mut self, include: bool) -> Self {
        self.include_unhealthy = include;
        self
    }

    /// Per-locality weight and priority chosen by the caller (eds-server's
    /// per-client-zone affinity). Priorities may have gaps or start above 0:
    /// the builder renumbers them densely from 0, keeping their order, because
    /// gRPC rejects a CLA with a missing priority.
    pub fn with_placement(
        mut self,
        placement: impl Fn(&Locality) -> (NonZeroU32, u32) + Send + Sync + 'static,
    ) -> Self {
        self.placement = Some(Arc::new(placement));
        self
    }

    /// [`with_placement`](Self::with_placement) from a map of zone to
    /// (weight, priority); zones not in the map keep the default.
    pub fn with_placement_map(self, map: BTreeMap<String, (NonZeroU32, u32)>) -> Self {
        self.with_placement(move |l| map.get(&l.zone).copied().unwrap_or((l.weight, l.priority)))
    }

    fn includes(&self, health: Health) -> bool {
        match health {
            Health::Healthy => true,
            Health::Draining => self.include_draining,
            Health::Unhealthy => self.include_unhealthy,
        }
    }

    fn place(&self, default: &Locality) -> (NonZeroU32, u32) {
        match &self.placement {
            Some(f) => f(default),
            None => (default.weight, default.priority),
        }
    }
}

/// Builds the `ClusterLoadAssignment` named `name` (the exact name the client
/// asked for) from one service's endpoints.
///
/// Localities are one per zone (endpoints without a zone share the locality
/// with zone `""`), each with the summed weight of its healthy endpoints (of
/// its draining ones when none is healthy, of whatever it has otherwise) and
/// priority 0, unless [`ClaOptions::with_placement`] says otherwise. A zone
/// whose endpoints are all left out is not emitted. If the weights of one
/// locality's endpoints, or of one priority's localities, would sum past
/// `u32::MAX` (which Envoy and gRPC reject), they are scaled down
/// proportionally, each staying at least 1.
pub fn cluster_load_assignment(
    name: &str,
    set: &EndpointSet,
    opts: &ClaOptions,
) -> ClusterLoadAssignment {
    let mut by_zone: BTreeMap<&str, Vec<&Endpoint>> = BTreeMap::new();
    for e in set.endpoints() {
        if opts.includes(e.health) {
            by_zone.entry(e.zone_or_empty()).or_default().push(e);
        }
    }
    let mut groups: Vec<(Locality, Vec<&Endpoint>)> = by_zone
        .into_iter()
        .map(|(zone, eps)| {
            let default = Locality {
                zone: zone.to_owned(),
                priority: 0,
                weight: default_locality_weight(&eps),
            };
            let (weight, priority) = opts.place(&default);
            (
                Locality {
                    weight,
                    priority,
                    ..default
                },
                eps,
            )
        })
        .collect();

    // Dense priorities from 0, same order: gRPC rejects a gap (A27).
    let mut priorities: Vec<u32> = groups.iter().map(|(l, _)| l.priority).collect();
    priorities.sort_unstable();
    priorities.dedup();
    for (l, _) in &mut groups {
        let rank = priorities.partition_point(|&p| p < l.priority);
        l.priority = u32::try_from(rank).unwrap_or(u32::MAX);
    }
    groups.sort_by(|(a, _), (b, _)| (a.priority, &a.zone).cmp(&(b.priority, &b.zone)));

    // Locality weights of one priority must sum to at most u32::MAX.
    let mut start = 0;
    while start < groups.len() {
        let priority = groups[start].0.priority;
        let end = start
            + groups[start..]
                .iter()
                .take_while(|(l, _)| l.priority == priority)
                .count();
        let mut weights: Vec<u32> = groups[start..end]
            .iter()
            .map(|(l, _)| l.weight.get())
            .collect();
        fit_sum_in_u32(&mut weights);
        for ((l, _), w) in groups[start..end].iter_mut().zip(weights) {
            l.weight = NonZeroU32::new(w).unwrap_or(NonZeroU32::MIN);
        }
        start = end;
    }

    ClusterLoadAssignment {
        cluster_name: name.to_owned(),
        endpoints: groups
            .iter()
            .map(|(l, eps)| locality_lb_endpoints(l, eps))
            .collect(),
        ..Default::default()
    }
}

/// The summed weight of the best tier present, never zero.
fn default_locality_weight(eps: &[&Endpoint]) -> NonZeroU32 {
    let sum = |h: Option<Health>| -> u64 {
        eps.iter()
            .filter(|e| h.is_none_or(|h| e.health == h))
            .map(|e| u64::from(e.weight.get()))
            .sum()
    };
    let total = [Some(Health::Healthy), Some(Health::Draining), None]
        .into_iter()
        .map(sum)
        .find(|&s| s > 0)
        .unwrap_or(1);
    NonZeroU32::new(u32::try_from(total).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MIN)
}

/// Scales weights down so their sum fits in a `u32`, keeping each at least 1.
/// With `f = ceil(sum / (MAX - n))`, `Σ max(1, w / f) <= sum / f + n <= MAX`.
fn fit_sum_in_u32(weights: &mut [u32]) {
    let max = u64::from(u32::MAX);
    let sum: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    if sum <= max {
        return;
    }
    let n = weights.len() as u64;
    let factor = sum.div_ceil(max.saturating_sub(n).max(1));
    for w in weights {
        *w = u32::try_from((u64::from(*w) / factor).max(1)).unwrap_or(u32::MAX);
    }
}

fn locality_lb_endpoints(l: &Locality, eps: &[&Endpoint]) -> LocalityLbEndpoints {
    let mut weights: Vec<u32> = eps.iter().map(|e| e.weight.get()).collect();
    fit_sum_in_u32(&mut weights);
    LocalityLbEndpoints {
        // Always present, even for zone "": grpc-go rejects a locality without ID.
        locality: Some(core::Locality {
            zone: l.zone.clone(),
            ..Default::default()
        }),
        lb_endpoints: eps
            .iter()
            .zip(weights)
            .map(|(e, w)| lb_endpoint_of(e, w))
            .collect(),
        load_balancing_weight: Some(UInt32Value {
            value: l.weight.get(),
        }),
        priority: l.priority,
        ..Default::default()
    }
}

fn lb_endpoint_of(e: &Endpoint, weight: u32) -> LbEndpoint {
    let metadata = endpoint_metadata(e);
    LbEndpoint {
        health_status: health_to_wire(e.health) as i32,
        metadata: (!metadata.fields.is_empty()).then(|| Metadata {
            filter_metadata: HashMap::from([(METADATA_NAMESPACE.to_owned(), metadata)]),
            ..Default::default()
        }),
        load_balancing_weight: Some(UInt32Value { value: weight }),
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(XdsEndpoint {
            address: Some(socket_address_of(e.address)),
            ..Default::default()
        })),
    }
}

/// A TCP socket address in the form gRPC and Envoy read: the IP as text
/// (IPv6 without brackets) and a numeric port. IPv6 scope ids and flow info
/// are not carried; pod IPs have neither.
fn socket_address_of(addr: SocketAddr) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            protocol: socket_address::Protocol::Tcp as i32,
            address: addr.ip().to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
                addr.port(),
            ))),
            ..Default::default()
        })),
    }
}

fn health_to_wire(h: Health) -> HealthStatus {
    match h {
        Health::Healthy => HealthStatus::Healthy,
        Health::Draining => HealthStatus::Draining,
        Health::Unhealthy => HealthStatus::Unhealthy,
    }
}

/// Wire health to ours. UNKNOWN is HEALTHY (DESIGN.md: unknown means ready);
/// TIMEOUT is UNHEALTHY, as Envoy reads it; DEGRADED ("use only when nothing
/// healthy is left" in Envoy) is our DRAINING tier, which means exactly that.
/// `None` for a value outside the enum.
pub(crate) fn health_from_wire(status: i32) -> Option<Health> {
    Some(match HealthStatus::try_from(status).ok()? {
        HealthStatus::Unknown | HealthStatus::Healthy => Health::Healthy,
        HealthStatus::Draining | HealthStatus::Degraded => Health::Draining,
        HealthStatus::Unhealthy | HealthStatus::Timeout => Health::Unhealthy,
    })
}

fn endpoint_metadata(e: &Endpoint) -> Struct {
    let string = |s: String| Value {
        kind: Some(Kind::StringValue(s)),
    };
    let mut fields = HashMap::new();
    let optional = [
        (keys::POD, e.pod.clone()),
        (keys::NODE, e.node.clone()),
        (keys::ZONE, e.zone.clone()),
        (keys::READY_SINCE, e.ready_since.map(rfc3339::format)),
        (keys::DRAIN_DEADLINE, e.drain_deadline.map(rfc3339::format)),
    ];
    for (key, value) in optional {
        if let Some(v) = value {
            fields.insert(key.to_owned(), string(v));
        }
    }
    if !e.labels.is_empty() {
        let labels = e
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), string(v.clone())))
            .collect();
        fields.insert(
            keys::LABELS.to_owned(),
            Value {
                kind: Some(Kind::StructValue(Struct { fields: labels })),
            },
        );
    }
    Struct { fields }
}

/// A `ClusterLoadAssignment` that cannot be turned into an [`EndpointSet`]:
/// which resource, which field, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ClusterLoadAssignment {resource:?}: {field}: {problem}")]
pub struct ResourceError {
    /// The resource name (`cluster_name`).
    pub resource: String,
    /// Path of the offending field, e.g.
    /// `endpoints[0].lb_endpoints[2].endpoint.address.socket_address.port_value`.
    pub field: String,
    /// What is wrong with it.
    pub problem: Problem,
}

/// What is wrong with one field of a `ClusterLoadAssignment`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// `cluster_name` is empty, so the resource cannot be matched to a subscription.
    #[error("is empty; a ClusterLoadAssignment must be named by its service key")]
    MissingClusterName,
    /// An `LbEndpoint` has no `endpoint`.
    #[error("is missing; every LbEndpoint needs an endpoint with an address")]
    MissingEndpoint,
    /// An `LbEndpoint` refers to a named endpoint, which xDS clients do not implement.
    #[error("refers to named endpoint {0:?}, which is not supported")]
    NamedEndpoint(String),
    /// An endpoint has no address.
    #[error("is missing")]
    MissingAddress,
    /// The address is a pipe or an Envoy internal address, not IP and port.
    #[error("is a {0} address; only socket addresses (IP and port) are supported")]
    NotSocketAddress(&'static str),
    /// The socket address is UDP.
    #[error("is UDP; gRPC endpoints are TCP")]
    NotTcp,
    /// The socket address has no port.
    #[error("is missing")]
    MissingPort,
    /// The socket address has a named port, which needs a resolver we do not have.
    #[error("named port {0:?} is not supported; send port_value")]
    NamedPort(String),
    /// The port is 0 or larger than 65535.
    #[error("port {0} is out of range 1..=65535")]
    BadPort(u32),
    /// The address is not an IP literal.
    #[error("{0:?} is not an IP address (hostnames are not resolved)")]
    BadIp(String),
    /// A load-balancing weight is explicitly 0; xDS requires at least 1 when set.
    #[error("is 0; a weight must be at least 1 (or unset)")]
    ZeroWeight,
    /// The same address appears twice (gRPC rejects the whole resource).
    #[error("address {address} already appears at {first}")]
    DuplicateAddress {
        /// The repeated address.
        address: SocketAddr,
        /// Where it appeared first.
        first: String,
    },
    /// `health_status` is not a value of `envoy.config.core.v3.HealthStatus`.
    #[error("{0} is not a known HealthStatus")]
    UnknownHealth(i32),
    /// A feature we do not implement, such as LEDS.
    #[error("{0} is not supported")]
    Unsupported(&'static str),
    /// A metadata value of the wrong protobuf `Value` kind.
    #[error("must be a {0}")]
    MetadataType(&'static str),
    /// A metadata timestamp that is not RFC 3339.
    #[error("{0}")]
    BadTimestamp(Rfc3339Error),
    /// The endpoint's `zone` metadata disagrees with its locality.
    #[error("zone {metadata:?} disagrees with the locality's zone {locality:?}")]
    ZoneMismatch {
        /// The zone in the endpoint metadata.
        metadata: String,
        /// The zone of the enclosing locality.
        locality: String,
    },
}

/// A validated `ClusterLoadAssignment`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedCla {
    /// `cluster_name`.
    pub name: String,
    /// The endpoints, merged (sorted, one per address).
    pub endpoints: EndpointSet,
    /// Localities in wire order, with the weight and priority the server
    /// chose. An unset locality weight (Envoy-oriented control planes omit
    /// it) is reported as the sum of the locality's endpoint weights.
    pub localities: Vec<Locality>,
}

/// [`parse_cla`], keeping only the endpoints.
pub fn endpoint_set_from_cla(cla: &ClusterLoadAssignment) -> Result<EndpointSet, ResourceError> {
    parse_cla(cla).map(|p| p.endpoints)
}

/// Validates a `ClusterLoadAssignment` and converts it to lb-core types.
///
/// Rejected, with the field named: empty `cluster_name`, LEDS, missing
/// endpoint or address, non-socket or UDP address, missing, named or
/// out-of-range port, non-IP address, explicit zero weight (endpoint or
/// locality), the same address twice, a `health_status` outside the enum,
/// `eds.rs` metadata of the wrong type or with a bad timestamp. Accepted:
/// unset weights (1 for endpoints), empty localities, unknown metadata keys
/// and namespaces (forward compatibility).
pub fn parse_cla(cla: &ClusterLoadAssignment) -> Result<ParsedCla, ResourceError> {
    let fail = |field: String, problem: Problem| ResourceError {
        resource: cla.cluster_name.clone(),
        field,
        problem,
    };
    if cla.cluster_name.is_empty() {
        return Err(fail("cluster_name".into(), Problem::MissingClusterName));
    }
    let mut seen: HashMap<SocketAddr, String> = HashMap::new();
    let mut endpoints = Vec::new();
    let mut localities = Vec::with_capacity(cla.endpoints.len());
    for (i, loc) in cla.endpoints.iter().enumerate() {
        let at = format!("endpoints[{i}]");
        if let Some(config) = &loc.lb_config {
            let (field, what) = unsupported_lb_config(config);
            return Err(fail(format!("{at}.{field}"), Problem::Unsupported(what)));
        }
        let explicit_weight =
            match &loc.load_balancing_weight {
                None => None,
                Some(w) => Some(NonZeroU32::new(w.value).ok_or_else(|| {
                    fail(format!("{at}.load_balancing_weight"), Problem::ZeroWeight)
                })?),
            };
        let zone = loc.locality.as_ref().map_or("", |l| l.zone.as_str());
        let mut sum: u64 = 0;
        for (j, lb) in loc.lb_endpoints.iter().enumerate() {
            let at = format!("{at}.lb_endpoints[{j}]");
            let e = parse_lb_endpoint(lb, zone, &at).map_err(|(f, p)| fail(f, p))?;
            match seen.entry(e.address) {
                std::collections::hash_map::Entry::Occupied(first) => {
                    return Err(fail(
                        format!("{at}.endpoint.address"),
                        Problem::DuplicateAddress {
                            address: e.address,
                            first: first.get().clone(),
                        },
                    ));
                }
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(format!("{at}.endpoint.address"));
                }
            }
            sum += u64::from(e.weight.get());
            endpoints.push(e);
        }
        let weight = explicit_weight.unwrap_or_else(|| {
            NonZeroU32::new(u32::try_from(sum).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MIN)
        });
        localities.push(Locality {
            zone: zone.to_owned(),
            priority: loc.priority,
            weight,
        });
    }
    Ok(ParsedCla {
        name: cla.cluster_name.clone(),
        endpoints: EndpointSet::merge(endpoints),
        localities,
    })
}

/// The field and feature name of a locality's `lb_config`, which we reject.
#[allow(deprecated)] // Naming the deprecated variant is the point: it is rejected too.
fn unsupported_lb_config(config: &locality_lb_endpoints::LbConfig) -> (&'static str, &'static str) {
    match config {
        locality_lb_endpoints::LbConfig::LedsClusterLocalityConfig(_) => {
            ("leds_cluster_locality_config", "LEDS")
        }
        locality_lb_endpoints::LbConfig::LoadBalancerEndpoints(_) => (
            "load_balancer_endpoints",
            "load_balancer_endpoints (deprecated, never implemented)",
        ),
    }
}

/// One `LbEndpoint` to an [`Endpoint`]; errors are (field path, problem).
fn parse_lb_endpoint(
    lb: &LbEndpoint,
    locality_zone: &str,
    at: &str,
) -> Result<Endpoint, (String, Problem)> {
    let address = parse_socket_address(lb, at)?;
    let health = health_from_wire(lb.health_status).ok_or_else(|| {
        (
            format!("{at}.health_status"),
            Problem::UnknownHealth(lb.health_status),
        )
    })?;
    let weight = match &lb.load_balancing_weight {
        None => NonZeroU32::MIN,
        Some(w) => NonZeroU32::new(w.value)
            .ok_or_else(|| (format!("{at}.load_balancing_weight"), Problem::ZeroWeight))?,
    };
    let mut e = Endpoint::new(address)
        .with_health(health)
        .with_weight(weight);
    if let Some(meta) = lb
        .metadata
        .as_ref()
        .and_then(|m| m.filter_metadata.get(METADATA_NAMESPACE))
    {
        let at = format!("{at}.metadata.filter_metadata[\"{METADATA_NAMESPACE}\"]");
        read_metadata(&mut e, meta, &at)?;
    }
    match &e.zone {
        Some(zone) if zone != locality_zone => {
            return Err((
                format!("{at}.metadata.filter_metadata[\"{METADATA_NAMESPACE}\"].zone"),
                Problem::ZoneMismatch {
                    metadata: zone.clone(),
                    locality: locality_zone.to_owned(),
                },
            ));
        }
        Some(_) => {}
        // No metadata (another control plane): the locality says where it is.
        None if !locality_zone.is_empty() => e.zone = Some(locality_zone.to_owned()),
        None => {}
    }
    Ok(e)
}

/// The socket address of an `LbEndpoint`; errors are (field path, problem).
/// Shared with [`crate::validate`], which applies gRPC's rules to the same field.
pub(crate) fn parse_socket_address(
    lb: &LbEndpoint,
    at: &str,
) -> Result<SocketAddr, (String, Problem)> {
    let endpoint = match &lb.host_identifier {
        Some(lb_endpoint::HostIdentifier::Endpoint(e)) => e,
        Some(lb_endpoint::HostIdentifier::EndpointName(name)) => {
            return Err((
                format!("{at}.endpoint_name"),
                Problem::NamedEndpoint(name.clone()),
            ));
        }
        None => return Err((format!("{at}.endpoint"), Problem::MissingEndpoint)),
    };
    let at = format!("{at}.endpoint.address");
    let sa = match endpoint.address.as_ref().and_then(|a| a.address.as_ref()) {
        Some(address::Address::SocketAddress(sa)) => sa,
        Some(address::Address::Pipe(_)) => {
            return Err((format!("{at}.pipe"), Problem::NotSocketAddress("pipe")));
        }
        Some(address::Address::EnvoyInternalAddress(_)) => {
            return Err((
                format!("{at}.envoy_internal_address"),
                Problem::NotSocketAddress("Envoy internal"),
            ));
        }
        None => return Err((at, Problem::MissingAddress)),
    };
    let at = format!("{at}.socket_address");
    if sa.protocol != socket_address::Protocol::Tcp as i32 {
        return Err((format!("{at}.protocol"), Problem::NotTcp));
    }
    let port = match &sa.port_specifier {
        Some(socket_address::PortSpecifier::PortValue(p)) => match u16::try_from(*p) {
            Ok(p) if p != 0 => p,
            _ => return Err((format!("{at}.port_value"), Problem::BadPort(*p))),
        },
        Some(socket_address::PortSpecifier::NamedPort(name)) => {
            return Err((format!("{at}.named_port"), Problem::NamedPort(name.clone())));
        }
        None => return Err((format!("{at}.port_value"), Problem::MissingPort)),
    };
    let ip: IpAddr = sa
        .address
        .parse()
        .map_err(|_| (format!("{at}.address"), Problem::BadIp(sa.address.clone())))?;
    Ok(SocketAddr::new(ip, port))
}

fn read_metadata(e: &mut Endpoint, meta: &Struct, at: &str) -> Result<(), (String, Problem)> {
    let string = |key: &str| -> Result<Option<String>, (String, Problem)> {
        match meta.fields.get(key).and_then(|v| v.kind.as_ref()) {
            None => Ok(None),
            Some(Kind::StringValue(s)) => Ok(Some(s.clone())),
            Some(_) => Err((format!("{at}.{key}"), Problem::MetadataType("string"))),
        }
    };
    let time = |key: &str| -> Result<Option<std::time::SystemTime>, (String, Problem)> {
        string(key)?
            .map(|s| {
                rfc3339::parse(&s)
                    .map_err(|err| (format!("{at}.{key}"), Problem::BadTimestamp(err)))
            })
            .transpose()
    };
    e.pod = string(keys::POD)?;
    e.node = string(keys::NODE)?;
    e.zone = string(keys::ZONE)?;
    e.ready_since = time(keys::READY_SINCE)?;
    e.drain_deadline = time(keys::DRAIN_DEADLINE)?;
    match meta.fields.get(keys::LABELS).and_then(|v| v.kind.as_ref()) {
        None => {}
        Some(Kind::StructValue(labels)) => {
            for (k, v) in &labels.fields {
                match &v.kind {
                    Some(Kind::StringValue(s)) => {
                        e.labels.insert(k.clone(), s.clone());
                    }
                    _ => {
                        return Err((
                            format!("{at}.{}[{k:?}]", keys::LABELS),
                            Problem::MetadataType("string"),
                        ));
                    }
                }
            }
        }
        Some(_) => {
            return Err((
                format!("{at}.{}", keys::LABELS),
                Problem::MetadataType("struct of strings"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::*;
    use crate::xds::pb::envoy::config::core::v3::Pipe;
    use proptest::prelude::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    /// (zone, weight, priority, [(address, health, weight)]) per locality.
    type Row = (String, u32, u32, Vec<(String, i32, u32)>);

    fn summary(cla: &ClusterLoadAssignment) -> Vec<Row> {
        cla.endpoints
            .iter()
            .map(|l| {
                (
                    l.locality.as_ref().unwrap().zone.clone(),
                    l.load_balancing_weight.unwrap().value,
                    l.priority,
                    l.lb_endpoints
                        .iter()
                        .map(|e| {
                            (
                                parse_socket_address(e, "").unwrap().to_string(),
                                e.health_status,
                                e.load_balancing_weight.unwrap().value,
                            )
                        })
                        .collect(),
                )
            })
            .collect()
    }

    fn s(x: &str) -> String {
        x.to_owned()
    }

    const H: i32 = HealthStatus::Healthy as i32;
    const D: i32 = HealthStatus::Draining as i32;
    const U: i32 = HealthStatus::Unhealthy as i32;

    #[test]
    fn groups_by_zone_with_health_weights_and_options() {
        let set = EndpointSet::merge(vec![
            ep("10.0.0.1:80", "a", Health::Healthy).with_weight(nz(3)),
            ep("10.0.0.2:80", "a", Health::Draining),
            ep("10.0.0.3:80", "b", Health::Draining).with_weight(nz(2)),
            ep("10.0.0.4:80", "c", Health::Unhealthy),
            Endpoint::new("[fd00::5]:80".parse().unwrap()),
        ]);
        let cases: Vec<(&str, ClaOptions, Vec<Row>)> = vec![
            (
                "default: healthy and draining",
                ClaOptions::default(),
                vec![
                    (s(""), 1, 0, vec![(s("[fd00::5]:80"), H, 1)]),
                    (
                        s("a"),
                        3,
                        0,
                        vec![(s("10.0.0.1:80"), H, 3), (s("10.0.0.2:80"), D, 1)],
                    ),
                    (s("b"), 2, 0, vec![(s("10.0.0.3:80"), D, 2)]),
                ],
            ),
            (
                "stock gRPC: healthy only, zone b disappears",
                ClaOptions::stock_grpc(),
                vec![
                    (s(""), 1, 0, vec![(s("[fd00::5]:80"), H, 1)]),
                    (s("a"), 3, 0, vec![(s("10.0.0.1:80"), H, 3)]),
                ],
            ),
            (
                "everything",
                ClaOptions::default().with_unhealthy(true),
                vec![
                    (s(""), 1, 0, vec![(s("[fd00::5]:80"), H, 1)]),
                    (
                        s("a"),
                        3,
                        0,
                        vec![(s("10.0.0.1:80"), H, 3), (s("10.0.0.2:80"), D, 1)],
                    ),
                    (s("b"), 2, 0, vec![(s("10.0.0.3:80"), D, 2)]),
                    (s("c"), 1, 0, vec![(s("10.0.0.4:80"), U, 1)]),
                ],
            ),
        ];
        for (what, opts, want) in cases {
            let cla = cluster_load_assignment("echo.demo:8080", &set, &opts);
            assert_eq!(cla.cluster_name, "echo.demo:8080", "{what}");
            assert_eq!(summary(&cla), want, "{what}");
        }
    }

    #[test]
    fn placement_overrides_and_priorities_are_compacted() {
        let set = EndpointSet::merge(vec![
            ep("10.0.0.1:80", "a", Health::Healthy),
            ep("10.0.0.2:80", "b", Health::Healthy),
            ep("10.0.0.3:80", "c", Health::Healthy),
        ]);
        // The client is in zone "z", which has no endpoints: priorities 1 and 5
        // must become 0 and 1, or gRPC would reject the gap.
        let opts = ClaOptions::default().with_placement_map(BTreeMap::from([
            (s("a"), (nz(70), 1)),
            (s("b"), (nz(30), 1)),
            (s("c"), (nz(9), 5)),
        ]));
        let got: Vec<(String, u32, u32)> = summary(&cluster_load_assignment("x.y:1", &set, &opts))
            .into_iter()
            .map(|(z, w, p, _)| (z, w, p))
            .collect();
        assert_eq!(got, vec![(s("a"), 70, 0), (s("b"), 30, 0), (s("c"), 9, 1)]);

        let opts =
            ClaOptions::default().with_placement(|l| (l.weight, u32::from(l.zone != "c") * 3));
        let got: Vec<(String, u32)> = summary(&cluster_load_assignment("x.y:1", &set, &opts))
            .into_iter()
            .map(|(z, _, p, _)| (z, p))
            .collect();
        assert_eq!(got, vec![(s("c"), 0), (s("a"), 1), (s("b"), 1)]);
        assert!(format!("{opts:?}").contains("custom"));
    }

    #[test]
    fn weight_sums_are_scaled_into_u32() {
        let big = nz(u32::MAX);
        let set = EndpointSet::merge(vec![
            ep("10.0.0.1:80", "a", Health::Healthy).with_weight(big),
            ep("10.0.0.2:80", "a", Health::Healthy).with_weight(big),
            ep("10.0.0.3:80", "a", Health::Healthy),
            ep("10.0.0.4:80", "b", Health::Healthy).with_weight(big),
        ]);
        let cla = cluster_load_assignment("x.y:1", &set, &ClaOptions::default());
        let rows = summary(&cla);
        let locality_sum: u64 = rows.iter().map(|r| u64::from(r.1)).sum();
        assert!(locality_sum <= u64::from(u32::MAX));
        for (zone, _, _, eps) in &rows {
            let sum: u64 = eps.iter().map(|e| u64::from(e.2)).sum();
            assert!(sum <= u64::from(u32::MAX), "zone {zone}");
            assert!(eps.iter().all(|e| e.2 >= 1));
        }
        // Proportions survive: the two big endpoints stay equal, the small one is 1.
        let a = &rows[0].3;
        assert_eq!(a[0].2, a[1].2);
        assert_eq!(a[2].2, 1);
        crate::validate::check_grpc_compat(&cla, crate::validate::Profile::StockGrpc).unwrap();
    }

    #[test]
    fn metadata_carries_pod_node_zone_times_and_labels() {
        let ready = UNIX_EPOCH + Duration::from_secs(1_714_564_800);
        let mut e = ep("10.0.0.1:80", "a", Health::Draining)
            .with_pod("echo-0")
            .with_ready_since(ready);
        e.node = Some(s("node-1"));
        e.drain_deadline = Some(ready + Duration::from_millis(30_500));
        e.labels.insert(s("shard"), s("3"));
        e.labels.insert(s("zone"), s("label, not ours"));
        let cla = cluster_load_assignment(
            "x.y:1",
            &EndpointSet::merge(vec![e.clone()]),
            &ClaOptions::default(),
        );
        let lb = &cla.endpoints[0].lb_endpoints[0];
        let meta = &lb.metadata.as_ref().unwrap().filter_metadata["eds.rs"].fields;
        let text = |k: &str| match &meta[k].kind {
            Some(Kind::StringValue(s)) => s.clone(),
            other => panic!("{k}: {other:?}"),
        };
        assert_eq!(text("pod"), "echo-0");
        assert_eq!(text("node"), "node-1");
        assert_eq!(text("zone"), "a");
        assert_eq!(text("ready_since"), "2024-05-01T12:00:00Z");
        assert_eq!(text("drain_deadline"), "2024-05-01T12:00:30.5Z");
        let Some(Kind::StructValue(labels)) = &meta["labels"].kind else {
            panic!("labels")
        };
        assert_eq!(labels.fields.len(), 2);
        assert_eq!(endpoint_set_from_cla(&cla).unwrap().endpoints(), [e]);

        // No metadata at all for a bare endpoint.
        let bare = cluster_load_assignment(
            "x.y:1",
            &EndpointSet::merge(vec![Endpoint::new("10.0.0.9:80".parse().unwrap())]),
            &ClaOptions::default(),
        );
        assert_eq!(bare.endpoints[0].lb_endpoints[0].metadata, None);
        assert_eq!(bare.endpoints[0].locality.as_ref().unwrap().zone, "");
    }

    #[test]
    fn reads_foreign_clas_leniently_where_xds_allows() {
        // Another control plane: no weights, UNKNOWN health, no eds.rs metadata.
        let mut e = lbe("10.0.0.1", 80, HealthStatus::Unknown);
        e.load_balancing_weight = None;
        let mut l = loc(
            "a",
            None,
            2,
            vec![e, lbe("fd00::1", 443, HealthStatus::Degraded)],
        );
        l.lb_endpoints[1].metadata = Some(Metadata {
            filter_metadata: HashMap::from([(s("envoy.lb"), Struct::default())]),
            ..Default::default()
        });
        let parsed = parse_cla(&cla("x.y:1", vec![l, loc("b", Some(5), 0, vec![])])).unwrap();
        let eps = parsed.endpoints.endpoints();
        assert_eq!(eps[0].health, Health::Healthy);
        assert_eq!(eps[0].weight, NonZeroU32::MIN);
        assert_eq!(eps[0].zone.as_deref(), Some("a"));
        assert_eq!(eps[1].health, Health::Draining);
        assert_eq!(eps[1].address, "[fd00::1]:443".parse().unwrap());
        assert_eq!(
            parsed.localities,
            vec![
                Locality {
                    zone: s("a"),
                    priority: 2,
                    weight: nz(2)
                },
                Locality {
                    zone: s("b"),
                    priority: 0,
                    weight: nz(5)
                },
            ]
        );
    }

    /// One row per rejection: how to break a valid CLA, which field, which problem.
    #[test]
    fn rejects_bad_input_naming_resource_and_field() {
        type Break = fn(&mut ClusterLoadAssignment);
        let e0 = "endpoints[0].lb_endpoints[0]";
        let sa = |f: &str| format!("{e0}.endpoint.address.socket_address.{f}");
        let meta = |f: &str| format!("{e0}.metadata.filter_metadata[\"eds.rs\"].{f}");
        type Check = fn(&Problem) -> bool;
        let cases: &[(Break, String, Check)] = &[
            (
                |c| c.cluster_name.clear(),
                s("cluster_name"),
                |p| matches!(p, Problem::MissingClusterName),
            ),
            (
                |c| lb0(c).host_identifier = None,
                format!("{e0}.endpoint"),
                |p| matches!(p, Problem::MissingEndpoint),
            ),
            (
                |c| {
                    lb0(c).host_identifier =
                        Some(lb_endpoint::HostIdentifier::EndpointName(s("n")));
                },
                format!("{e0}.endpoint_name"),
                |p| matches!(p, Problem::NamedEndpoint(_)),
            ),
            (
                |c| *addr0(c) = Address { address: None },
                format!("{e0}.endpoint.address"),
                |p| matches!(p, Problem::MissingAddress),
            ),
            (
                |c| {
                    addr0(c).address = Some(address::Address::Pipe(Pipe {
                        path: s("/tmp/s"),
                        mode: 0,
                    }));
                },
                format!("{e0}.endpoint.address.pipe"),
                |p| matches!(p, Problem::NotSocketAddress("pipe")),
            ),
            (
                |c| sa0(c).protocol = socket_address::Protocol::Udp as i32,
                sa("protocol"),
                |p| matches!(p, Problem::NotTcp),
            ),
            (
                |c| sa0(c).port_specifier = None,
                sa("port_value"),
                |p| matches!(p, Problem::MissingPort),
            ),
            (
                |c| {
                    sa0(c).port_specifier =
                        Some(socket_address::PortSpecifier::NamedPort(s("grpc")));
                },
                sa("named_port"),
                |p| matches!(p, Problem::NamedPort(_)),
            ),
            (
                |c| sa0(c).port_specifier = Some(socket_address::PortSpecifier::PortValue(70_000)),
                sa("port_value"),
                |p| *p == Problem::BadPort(70_000),
            ),
            (
                |c| sa0(c).port_specifier = Some(socket_address::PortSpecifier::PortValue(0)),
                sa("port_value"),
                |p| *p == Problem::BadPort(0),
            ),
            (
                |c| sa0(c).address = s("echo.demo.svc"),
                sa("address"),
                |p| matches!(p, Problem::BadIp(_)),
            ),
            (
                |c| sa0(c).address = s("[fd00::1]"),
                sa("address"),
                |p| matches!(p, Problem::BadIp(_)),
            ),
            (
                |c| lb0(c).load_balancing_weight = Some(UInt32Value { value: 0 }),
                format!("{e0}.load_balancing_weight"),
                |p| *p == Problem::ZeroWeight,
            ),
            (
                |c| c.endpoints[0].load_balancing_weight = Some(UInt32Value { value: 0 }),
                s("endpoints[0].load_balancing_weight"),
                |p| *p == Problem::ZeroWeight,
            ),
            (
                |c| {
                    c.endpoints[0].lb_config =
                        Some(locality_lb_endpoints::LbConfig::LedsClusterLocalityConfig(
                            Default::default(),
                        ));
                },
                s("endpoints[0].leds_cluster_locality_config"),
                |p| *p == Problem::Unsupported("LEDS"),
            ),
            (
                |c| lb0(c).health_status = 42,
                format!("{e0}.health_status"),
                |p| *p == Problem::UnknownHealth(42),
            ),
            (
                |c| {
                    // Same address, other zone: only the address is repeated.
                    let mut dup = c.endpoints[0].lb_endpoints[0].clone();
                    dup.metadata = None;
                    c.endpoints[1].lb_endpoints.push(dup);
                },
                s("endpoints[1].lb_endpoints[1].endpoint.address"),
                |p| matches!(p, Problem::DuplicateAddress { first, .. } if first == "endpoints[0].lb_endpoints[0].endpoint.address"),
            ),
            (
                |c| set_meta(lb0(c), "ready_since", Kind::StringValue(s("yesterday"))),
                meta("ready_since"),
                |p| matches!(p, Problem::BadTimestamp(_)),
            ),
            (
                |c| set_meta(lb0(c), "pod", Kind::NumberValue(1.0)),
                meta("pod"),
                |p| *p == Problem::MetadataType("string"),
            ),
            (
                |c| set_meta(lb0(c), "labels", Kind::StringValue(s("shard=1"))),
                meta("labels"),
                |p| matches!(p, Problem::MetadataType(_)),
            ),
            (
                |c| set_meta(lb0(c), "zone", Kind::StringValue(s("b"))),
                meta("zone"),
                |p| matches!(p, Problem::ZoneMismatch { .. }),
            ),
        ];
        for (i, (break_it, field, problem)) in cases.iter().enumerate() {
            let mut c = valid_cla();
            parse_cla(&c).expect("fixture is valid");
            break_it(&mut c);
            let err = parse_cla(&c).expect_err(field);
            assert_eq!(&err.field, field, "case {i}: {err}");
            assert!(problem(&err.problem), "case {i}: {err}");
            assert_eq!(err.resource, c.cluster_name);
            assert!(err.to_string().contains(field.as_str()), "case {i}: {err}");
        }
    }

    proptest! {
        #[test]
        fn set_to_cla_to_set_is_identity(eps in arb_endpoints(0..24)) {
            let set = EndpointSet::merge(eps);
            let opts = ClaOptions::default().with_unhealthy(true);
            let cla = cluster_load_assignment("echo.demo:8080", &set, &opts);
            let back = endpoint_set_from_cla(&cla).unwrap();
            prop_assert_eq!(back.version(), set.version());
            prop_assert_eq!(back, set);
        }

        #[test]
        fn localities_are_never_empty_or_zero(eps in arb_endpoints(0..24), stock in any::<bool>()) {
            let set = EndpointSet::merge(eps);
            let opts = if stock { ClaOptions::stock_grpc() } else { ClaOptions::default() };
            let cla = cluster_load_assignment("echo.demo:8080", &set, &opts);
            let parsed = parse_cla(&cla).unwrap();
            for l in &cla.endpoints {
                prop_assert!(!l.lb_endpoints.is_empty());
                prop_assert!(l.load_balancing_weight.is_some_and(|w| w.value > 0));
            }
            let sent = set.endpoints().iter().filter(|e| opts.includes(e.health)).count();
            prop_assert_eq!(parsed.endpoints.len(), sent);
        }
    }
}

//! LDS, RDS and CDS resources for proxyless gRPC clients, and the per-service
//! load-balancing policy.
//!
//! A stock gRPC client given `xds:///echo.demo:8080` (gRFC A27) asks for:
//!
//! ```text
//! Listener "echo.demo:8080"            api_listener = HttpConnectionManager {
//!                                        rds { config_source: ads, route_config_name: "echo.demo:8080" }
//!                                        http_filters: [envoy.filters.http.router (Router)] }
//! RouteConfiguration "echo.demo:8080"  virtual_hosts: [{ domains: ["echo.demo:8080", "*"],
//!                                        routes: [{ prefix: "", route { cluster: "echo.demo:8080",
//!                                                   hash_policy: [header] if hashing } }] }]
//! Cluster "echo.demo:8080"             type: EDS, eds_config: ads, lb_policy: <legacy enum>,
//!                                        load_balancing_policy { policies: [preferred, ..., round_robin] },
//!                                        [slow_start_config in least_request / round_robin and lb_config],
//!                                        [metadata.filter_metadata["eds.rs"] { lb-policy: <lb-core name>,
//!                                                                     hash-header: <header> }]
//! ClusterLoadAssignment "echo.demo:8080"   (see `endpoints`)
//! ```
//!
//! The policy is sent as an ordered list (gRFC A52, Envoy
//! `Cluster.load_balancing_policy`): each client takes the first entry it
//! supports. Least request is understood by grpc-go, grpc-java and Envoy but
//! not by the C-core clients (grpcio) or grpc-js, so every list ends in
//! `round_robin`, which all support; an unsupported *only* entry would make
//! them NACK the whole CDS response. Clients that read
//! `load_balancing_policy` ignore the legacy `lb_policy` enum (Envoy documents
//! that the field supersedes it), so the enum only serves clients that read
//! nothing else, such as tonic-xds (0.1 alphas), which accept ROUND_ROBIN and
//! LEAST_REQUEST and reject the whole Cluster otherwise. It therefore carries
//! the A52 list's fallback, never a hashing policy: such a client balances
//! round robin instead of failing every call. The cost is borne only by gRPC
//! releases from before A52 (2022), which honoured a legacy RING_HASH; they
//! too fall back to round robin.
//!
//! Ring hash uses `XX_HASH` because gRPC accepts no other hash function
//! (gRFC A42; grpc-go rejects the resource otherwise). Non-hashing policies
//! enable locality-weighted balancing in Envoy, so the per-client-zone
//! locality weights eds-server sends take effect there as they do in gRPC.
//!
//! Two more Service settings ride on the Cluster ([`ClusterOptions`]). A
//! slow-start window (`eds.rs/slow-start-window`) becomes Envoy's
//! `slow_start_config` on the least-request and round-robin entries and in
//! the legacy `lb_config`: Envoy and lb-client ramp new endpoints up; gRPC
//! clients ignore the field. An annotation naming an lb-core policy
//! (`peak-ewma`, `weighted-round-robin`, `bounded-load-hash`, or any other
//! lb-core name) is also written, verbatim, to the Cluster's `eds.rs`
//! metadata, where lb-client reads it first; everyone else balances by the
//! nearest xDS policy ([`LbPolicy::nearest`]).
//!
//! What this module is not: it does not read Service annotations (it only
//! parses the annotation *value*), and it builds nothing for server-side
//! (xDS-enabled gRPC server) listeners.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::pack;
use crate::resources::METADATA_NAMESPACE;
use crate::xds::pb::envoy::config::cluster::v3::{
    Cluster, LoadBalancingPolicy, cluster, load_balancing_policy,
};
use crate::xds::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ApiVersion, ConfigSource, Metadata, TypedExtensionConfig, config_source,
};
use crate::xds::pb::envoy::config::listener::v3::{ApiListener, Listener};
use crate::xds::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route, route_action,
    route_match,
};
use crate::xds::pb::envoy::extensions::filters::http::router::v3::Router;
use crate::xds::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use crate::xds::pb::envoy::extensions::load_balancing_policies::common::v3::{
    LocalityLbConfig, SlowStartConfig, locality_lb_config,
};
use crate::xds::pb::envoy::extensions::load_balancing_policies::{
    least_request::v3::LeastRequest, maglev::v3::Maglev, random::v3::Random,
    ring_hash::v3::RingHash, ring_hash::v3::ring_hash, round_robin::v3::RoundRobin,
    wrr_locality::v3::WrrLocality,
};
use crate::xds::pb::google::protobuf::{
    Duration as PbDuration, Struct, UInt32Value, UInt64Value, Value, value::Kind,
};

/// The key of `Cluster.metadata.filter_metadata["eds.rs"]` naming the
/// service's lb-core policy (lb-client reads it before the policy list).
pub const POLICY_METADATA_KEY: &str = "lb-policy";

/// The key of `Cluster.metadata.filter_metadata["eds.rs"]` naming the
/// request header a hashing policy hashes (the same header the route's
/// `hash_policy` names), so lb-client, which reads CDS but not RDS, hashes
/// on the header the operator chose.
pub const HASH_HEADER_METADATA_KEY: &str = "hash-header";

/// Name of the router HTTP filter, the last (here: only) filter gRPC requires.
pub const ROUTER_FILTER_NAME: &str = "envoy.filters.http.router";
/// Smallest ring that ring hash builds; Envoy's and gRPC's default.
pub const MIN_RING_SIZE: u64 = 1024;
/// Largest ring that ring hash may build; gRPC rejects anything above 8M (gRFC A42).
pub const MAX_RING_SIZE: u64 = 8 * 1024 * 1024;
/// Candidates least request samples: power of two choices.
pub const LEAST_REQUEST_CHOICES: u32 = 2;

/// The load-balancing policy of one service, from the `eds.rs/lb-policy`
/// annotation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum LbPolicy {
    /// `round-robin`.
    RoundRobin,
    /// `least-request` (alias `p2c`): power of two choices on in-flight
    /// requests, the project's default (DESIGN.md).
    #[default]
    LeastRequest,
    /// `ring-hash`: consistent hashing on a request header; without a header
    /// gRPC hashes each request randomly (gRFC A42).
    RingHash {
        /// The header whose value is hashed.
        header: Option<String>,
    },
    /// `random`.
    Random,
    /// `maglev`: Envoy's Maglev; gRPC clients fall back to ring hash on the
    /// same header.
    Maglev {
        /// The header whose value is hashed.
        header: Option<String>,
    },
}

/// Why an annotation value or hash header is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LbPolicyError {
    /// The annotation value names no policy we know.
    #[error(
        "unknown load-balancing policy {0:?}: expected one of round-robin, least-request (or p2c), ring-hash, random, maglev"
    )]
    Unknown(String),
    /// A hash header was given for a policy that does not hash.
    #[error("policy {0} does not hash requests, so it takes no hash header")]
    NotHashing(&'static str),
    /// The header name is not a lower-case HTTP/2 header gRPC can hash on.
    #[error(
        "hash header {0:?} is not valid: lower-case letters, digits, '-', '_' and '.', not ending in -bin (gRPC does not hash binary headers)"
    )]
    BadHeader(String),
}

/// What a Cluster carries besides its policy, from the Service's other
/// `eds.rs/...` annotations. The default adds nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ClusterOptions {
    /// New endpoints ramp up over this window (`slow_start_config`), on the
    /// least-request and round-robin entries; `None` or zero: no slow start.
    pub slow_start_window: Option<Duration>,
    /// The lb-core policy the annotation named, for lb-client (metadata).
    pub lb_core_policy: Option<lb_core::Policy>,
}

impl ClusterOptions {
    fn slow_start(&self) -> Option<SlowStartConfig> {
        let window = self.slow_start_window.filter(|w| !w.is_zero())?;
        Some(SlowStartConfig {
            slow_start_window: Some(PbDuration {
                seconds: i64::try_from(window.as_secs()).unwrap_or(i64::MAX),
                // Below one second, so it fits.
                nanos: i32::try_from(window.subsec_nanos()).unwrap_or(0),
            }),
            ..Default::default()
        })
    }

    /// `eds.rs` metadata: the lb-core policy and the hash header, when set.
    fn metadata(&self, hash_header: Option<&str>) -> Option<Metadata> {
        let string = |v: &str| Value {
            kind: Some(Kind::StringValue(v.to_owned())),
        };
        let fields: HashMap<String, Value> = [
            (POLICY_METADATA_KEY, self.lb_core_policy.map(|p| p.as_str())),
            (HASH_HEADER_METADATA_KEY, hash_header),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((k.to_owned(), string(v?))))
        .collect();
        if fields.is_empty() {
            return None;
        }
        Some(Metadata {
            filter_metadata: HashMap::from([(METADATA_NAMESPACE.to_owned(), Struct { fields })]),
            ..Default::default()
        })
    }
}

impl LbPolicy {
    /// The xDS policy closest to an lb-core one, for clients that cannot
    /// run it: load-aware policies become least request, weighted round
    /// robin plain round robin (Envoy weighs endpoints in it; gRPC does not),
    /// bounded-load hashing ring hash (same key-to-endpoint mapping, no
    /// bound).
    pub fn nearest(policy: lb_core::Policy) -> LbPolicy {
        use lb_core::Policy as P;
        match policy {
            P::P2c | P::PeakEwma => LbPolicy::LeastRequest,
            P::RoundRobin | P::WeightedRoundRobin => LbPolicy::RoundRobin,
            P::Random => LbPolicy::Random,
            P::RingHash | P::BoundedLoadHash => LbPolicy::RingHash { header: None },
        }
    }

    /// The annotation value, e.g. `least-request` (also for `p2c`).
    pub fn annotation_value(&self) -> &'static str {
        match self {
            LbPolicy::RoundRobin => "round-robin",
            LbPolicy::LeastRequest => "least-request",
            LbPolicy::RingHash { .. } => "ring-hash",
            LbPolicy::Random => "random",
            LbPolicy::Maglev { .. } => "maglev",
        }
    }

    /// The header hashed by ring hash or Maglev, if any.
    pub fn hash_header(&self) -> Option<&str> {
        match self {
            LbPolicy::RingHash { header } | LbPolicy::Maglev { header } => header.as_deref(),
            _ => None,
        }
    }

    /// The same hashing policy, hashing on `header` (validated).
    pub fn with_hash_header(self, header: &str) -> Result<LbPolicy, LbPolicyError> {
        let valid = !header.is_empty()
            && !header.ends_with("-bin")
            && header
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"-_.".contains(&c));
        if !valid {
            return Err(LbPolicyError::BadHeader(header.to_owned()));
        }
        let header = Some(header.to_owned());
        match self {
            LbPolicy::RingHash { .. } => Ok(LbPolicy::RingHash { header }),
            LbPolicy::Maglev { .. } => Ok(LbPolicy::Maglev { header }),
            other => Err(LbPolicyError::NotHashing(other.annotation_value())),
        }
    }

    /// The legacy `Cluster.lb_policy` value for the same choice, for clients
    /// that read only this enum: only values every gRPC client accepts,
    /// because grpc-go validates it even when `load_balancing_policy` is set
    /// and NACKs the Cluster otherwise ("unexpected lbPolicy RANDOM"), and
    /// only values the legacy-only clients implement. Random and the hashing
    /// policies fall back to round robin, as their A52 lists end.
    pub fn legacy_lb_policy(&self) -> cluster::LbPolicy {
        match self {
            LbPolicy::RoundRobin
            | LbPolicy::Random
            | LbPolicy::RingHash { .. }
            | LbPolicy::Maglev { .. } => cluster::LbPolicy::RoundRobin,
            LbPolicy::LeastRequest => cluster::LbPolicy::LeastRequest,
        }
    }

    /// The gRFC A52 ordered list, most preferred first, always ending in
    /// round robin so every client finds one it supports.
    pub fn policies(&self) -> Vec<load_balancing_policy::Policy> {
        self.policies_with(None)
    }

    /// [`Self::policies`], with `slow_start` on the entries that take it.
    fn policies_with(
        &self,
        slow_start: Option<SlowStartConfig>,
    ) -> Vec<load_balancing_policy::Policy> {
        let mut list = match self {
            LbPolicy::RoundRobin => vec![],
            LbPolicy::LeastRequest => vec![typed(
                "envoy.load_balancing_policies.least_request",
                &LeastRequest {
                    choice_count: Some(UInt32Value {
                        value: LEAST_REQUEST_CHOICES,
                    }),
                    locality_lb_config: Some(locality_weighted()),
                    slow_start_config: slow_start.clone(),
                    ..Default::default()
                },
            )],
            LbPolicy::RingHash { .. } => vec![ring_hash_policy()],
            LbPolicy::Random => vec![typed(
                "envoy.load_balancing_policies.random",
                &Random {
                    locality_lb_config: Some(locality_weighted()),
                },
            )],
            LbPolicy::Maglev { .. } => vec![
                typed("envoy.load_balancing_policies.maglev", &Maglev::default()),
                ring_hash_policy(),
            ],
        };
        list.push(typed(
            "envoy.load_balancing_policies.round_robin",
            &RoundRobin {
                locality_lb_config: Some(locality_weighted()),
                slow_start_config: slow_start,
            },
        ));
        if self.hashes() {
            return list;
        }
        // gRPC honours locality weights only under wrr_locality (gRFC A52):
        // a bare round_robin or least_request entry gets every endpoint of a
        // priority as one flat list, so per-zone weights would be ignored.
        // The same list inside it lets each client pick its endpoint policy.
        let inner = list.clone();
        list.insert(
            0,
            typed(
                "envoy.load_balancing_policies.wrr_locality",
                &WrrLocality {
                    endpoint_picking_policy: Some(LoadBalancingPolicy { policies: inner }),
                },
            ),
        );
        list
    }

    /// Whether the policy hashes requests (ring hash, Maglev).
    fn hashes(&self) -> bool {
        matches!(self, LbPolicy::RingHash { .. } | LbPolicy::Maglev { .. })
    }
}

fn typed<M: prost::Name>(name: &str, config: &M) -> load_balancing_policy::Policy {
    load_balancing_policy::Policy {
        typed_extension_config: Some(TypedExtensionConfig {
            name: name.to_owned(),
            typed_config: Some(pack(config)),
        }),
    }
}

fn ring_hash_policy() -> load_balancing_policy::Policy {
    // No locality weighting here: hashing must map a key to the same endpoint
    // for every client, whatever per-zone weights each one was sent.
    typed(
        "envoy.load_balancing_policies.ring_hash",
        &RingHash {
            hash_function: ring_hash::HashFunction::XxHash as i32,
            minimum_ring_size: Some(UInt64Value {
                value: MIN_RING_SIZE,
            }),
            maximum_ring_size: Some(UInt64Value {
                value: MAX_RING_SIZE,
            }),
            ..Default::default()
        },
    )
}

fn locality_weighted() -> LocalityLbConfig {
    LocalityLbConfig {
        locality_config_specifier: Some(
            locality_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(
                locality_lb_config::LocalityWeightedLbConfig {},
            ),
        ),
    }
}

impl fmt::Display for LbPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.annotation_value())?;
        if let Some(h) = self.hash_header() {
            write!(f, " (header {h})")?;
        }
        Ok(())
    }
}

impl FromStr for LbPolicy {
    type Err = LbPolicyError;

    /// Parses an `eds.rs/lb-policy` annotation value. Surrounding whitespace
    /// is ignored (YAML block scalars leave a newline); case is not.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.trim() {
            "round-robin" => LbPolicy::RoundRobin,
            "least-request" | "p2c" => LbPolicy::LeastRequest,
            "ring-hash" => LbPolicy::RingHash { header: None },
            "random" => LbPolicy::Random,
            "maglev" => LbPolicy::Maglev { header: None },
            _ => return Err(LbPolicyError::Unknown(s.to_owned())),
        })
    }
}

/// `ConfigSource { ads: {}, resource_api_version: V3 }`: fetch over the same
/// ADS stream. gRPC accepts only `ads` (or `self`) here (gRFC A27).
pub fn ads_config_source() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        resource_api_version: ApiVersion::V3 as i32,
        ..Default::default()
    }
}

/// The Listener a proxyless gRPC client asks for: named exactly `name`, with
/// an `api_listener` holding an HttpConnectionManager that fetches the
/// RouteConfiguration `name` over ADS and ends in the router filter.
pub fn listener(name: &str) -> Listener {
    let hcm = HttpConnectionManager {
        // Required non-empty by Envoy's validation; gRPC ignores it.
        stat_prefix: name.to_owned(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads_config_source()),
            route_config_name: name.to_owned(),
        })),
        http_filters: vec![HttpFilter {
            name: ROUTER_FILTER_NAME.to_owned(),
            config_type: Some(http_filter::ConfigType::TypedConfig(pack(
                &Router::default(),
            ))),
            ..Default::default()
        }],
        ..Default::default()
    };
    Listener {
        name: name.to_owned(),
        api_listener: Some(ApiListener {
            api_listener: Some(pack(&hcm)),
        }),
        ..Default::default()
    }
}

/// The RouteConfiguration `name`: one virtual host matching `name` exactly
/// (and `*`, so a client that overrides its authority still matches), with
/// one default route (prefix `""`) to the cluster `name`. Hashing policies
/// add a header hash policy when they have a header.
pub fn route_configuration(name: &str, policy: &LbPolicy) -> RouteConfiguration {
    let hash_policy = policy
        .hash_header()
        .map(|header| route_action::HashPolicy {
            policy_specifier: Some(route_action::hash_policy::PolicySpecifier::Header(
                route_action::hash_policy::Header {
                    header_name: header.to_owned(),
                    regex_rewrite: None,
                },
            )),
            terminal: false,
        })
        .into_iter()
        .collect();
    let route = Route {
        name: "default".to_owned(),
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix(String::new())),
            ..Default::default()
        }),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(name.to_owned())),
            hash_policy,
            ..Default::default()
        })),
        ..Default::default()
    };
    RouteConfiguration {
        name: name.to_owned(),
        virtual_hosts: vec![VirtualHost {
            name: name.to_owned(),
            domains: vec![name.to_owned(), "*".to_owned()],
            routes: vec![route],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The Cluster `name`: type EDS over ADS, ClusterLoadAssignment `name`, the
/// policy as the gRFC A52 list and as the legacy enum.
pub fn cluster(name: &str, policy: &LbPolicy) -> Cluster {
    cluster_with(name, policy, &ClusterOptions::default())
}

/// [`cluster`] with the Service's other settings (`options`).
pub fn cluster_with(name: &str, policy: &LbPolicy, options: &ClusterOptions) -> Cluster {
    let slow_start = options.slow_start();
    let legacy = policy.legacy_lb_policy();
    // The legacy field has its own message with the same fields.
    let legacy_slow_start = slow_start.as_ref().map(|s| cluster::SlowStartConfig {
        slow_start_window: s.slow_start_window,
        ..Default::default()
    });
    let lb_config = legacy_slow_start.map(|s| match legacy {
        cluster::LbPolicy::LeastRequest => {
            cluster::LbConfig::LeastRequestLbConfig(cluster::LeastRequestLbConfig {
                slow_start_config: Some(s),
                ..Default::default()
            })
        }
        _ => cluster::LbConfig::RoundRobinLbConfig(cluster::RoundRobinLbConfig {
            slow_start_config: Some(s),
        }),
    });
    Cluster {
        name: name.to_owned(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: Some(ads_config_source()),
            // Explicit, though empty would mean the same: the EDS resource is `name`.
            service_name: name.to_owned(),
        }),
        lb_policy: legacy as i32,
        lb_config,
        load_balancing_policy: Some(LoadBalancingPolicy {
            policies: policy.policies_with(slow_start),
        }),
        metadata: options.metadata(policy.hash_header()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{HTTP_CONNECTION_MANAGER_TYPE_URL, unpack};

    const NAME: &str = "echo.demo:8080";

    fn policy_urls(p: &LbPolicy) -> Vec<String> {
        p.policies()
            .into_iter()
            .map(|p| {
                let cfg = p.typed_extension_config.unwrap();
                let url = cfg.typed_config.unwrap().type_url;
                assert!(cfg.name.starts_with("envoy.load_balancing_policies."));
                url.rsplit('.').next().unwrap().to_owned()
            })
            .collect()
    }

    #[test]
    fn annotation_values_parse() {
        let cases: &[(&str, LbPolicy)] = &[
            ("round-robin", LbPolicy::RoundRobin),
            ("least-request", LbPolicy::LeastRequest),
            ("p2c", LbPolicy::LeastRequest),
            ("ring-hash", LbPolicy::RingHash { header: None }),
            ("random", LbPolicy::Random),
            ("maglev", LbPolicy::Maglev { header: None }),
            (" least-request\n", LbPolicy::LeastRequest),
        ];
        for (text, want) in cases {
            assert_eq!(&text.parse::<LbPolicy>().unwrap(), want, "{text:?}");
            assert_eq!(
                want.annotation_value().parse::<LbPolicy>().as_ref(),
                Ok(want)
            );
        }
        for bad in [
            "",
            "Round-Robin",
            "round_robin",
            "least_request",
            "wrr",
            "ring-hash:x",
        ] {
            let err = bad.parse::<LbPolicy>().unwrap_err();
            assert_eq!(err, LbPolicyError::Unknown(bad.to_owned()));
            assert!(err.to_string().contains("round-robin"), "{err}");
        }
        assert_eq!(LbPolicy::default(), LbPolicy::LeastRequest);
    }

    #[test]
    fn hash_headers_are_validated() {
        let rh = LbPolicy::RingHash { header: None };
        assert_eq!(
            rh.clone()
                .with_hash_header("x-user-id")
                .unwrap()
                .hash_header(),
            Some("x-user-id")
        );
        assert_eq!(
            LbPolicy::Maglev { header: None }
                .with_hash_header("shard")
                .unwrap()
                .to_string(),
            "maglev (header shard)"
        );
        for bad in ["", "X-User", "x user", "trace-bin", ":path"] {
            assert_eq!(
                rh.clone().with_hash_header(bad),
                Err(LbPolicyError::BadHeader(bad.to_owned()))
            );
        }
        assert_eq!(
            LbPolicy::RoundRobin.with_hash_header("x"),
            Err(LbPolicyError::NotHashing("round-robin"))
        );
    }

    #[test]
    fn policy_lists_end_in_round_robin_and_match_the_legacy_enum() {
        use cluster::LbPolicy as Legacy;
        let cases: &[(LbPolicy, &[&str], Legacy)] = &[
            (
                LbPolicy::RoundRobin,
                &["WrrLocality", "RoundRobin"],
                Legacy::RoundRobin,
            ),
            (
                LbPolicy::LeastRequest,
                &["WrrLocality", "LeastRequest", "RoundRobin"],
                Legacy::LeastRequest,
            ),
            (
                LbPolicy::RingHash { header: None },
                &["RingHash", "RoundRobin"],
                Legacy::RoundRobin,
            ),
            (
                LbPolicy::Random,
                &["WrrLocality", "Random", "RoundRobin"],
                Legacy::RoundRobin,
            ),
            (
                LbPolicy::Maglev { header: None },
                &["Maglev", "RingHash", "RoundRobin"],
                Legacy::RoundRobin,
            ),
        ];
        for (policy, urls, legacy) in cases {
            assert_eq!(&policy_urls(policy), urls, "{policy}");
            let c = cluster(NAME, policy);
            assert_eq!(c.lb_policy, *legacy as i32, "{policy}");
            assert_eq!(c.load_balancing_policy.unwrap().policies, policy.policies());
        }
    }

    #[test]
    fn typed_configs_carry_what_grpc_checks() {
        let list = LbPolicy::LeastRequest.policies();
        let any = list[0]
            .typed_extension_config
            .as_ref()
            .unwrap()
            .typed_config
            .as_ref()
            .unwrap();
        let wrr: WrrLocality = unpack(any).unwrap();
        assert_eq!(
            wrr.endpoint_picking_policy.unwrap().policies,
            list[1..],
            "wrr_locality wraps the same list"
        );
        let any = list[1]
            .typed_extension_config
            .as_ref()
            .unwrap()
            .typed_config
            .as_ref()
            .unwrap();
        let lr: LeastRequest = unpack(any).unwrap();
        assert_eq!(lr.choice_count, Some(UInt32Value { value: 2 }));
        assert!(lr.locality_lb_config.is_some());

        let list = LbPolicy::RingHash { header: None }.policies();
        let any = list[0]
            .typed_extension_config
            .as_ref()
            .unwrap()
            .typed_config
            .as_ref()
            .unwrap();
        let rh: RingHash = unpack(any).unwrap();
        assert_eq!(rh.hash_function, ring_hash::HashFunction::XxHash as i32);
        let (min, max) = (
            rh.minimum_ring_size.unwrap().value,
            rh.maximum_ring_size.unwrap().value,
        );
        assert!(0 < min && min <= max && max <= 8 * 1024 * 1024);
        assert!(rh.locality_weighted_lb_config.is_none());
    }

    #[test]
    fn slow_start_and_the_lb_core_policy_ride_on_the_cluster() {
        let config = |p: &load_balancing_policy::Policy| {
            p.typed_extension_config
                .as_ref()
                .and_then(|t| t.typed_config.clone())
                .unwrap()
        };
        let window = PbDuration {
            seconds: 30,
            nanos: 500_000_000,
        };
        let options = ClusterOptions {
            slow_start_window: Some(Duration::from_millis(30_500)),
            lb_core_policy: Some(lb_core::Policy::PeakEwma),
        };
        let policy = LbPolicy::nearest(lb_core::Policy::PeakEwma);
        assert_eq!(policy, LbPolicy::LeastRequest);
        let c = cluster_with(NAME, &policy, &options);

        let meta = &c.metadata.as_ref().unwrap().filter_metadata[METADATA_NAMESPACE];
        assert_eq!(
            meta.fields[POLICY_METADATA_KEY].kind,
            Some(Kind::StringValue("peak-ewma".into()))
        );
        // Inside wrr_locality and at the top level, least request and round
        // robin both carry the window.
        let list = &c.load_balancing_policy.as_ref().unwrap().policies;
        let wrr: WrrLocality = unpack(&config(&list[0])).unwrap();
        let inner = wrr.endpoint_picking_policy.unwrap().policies;
        for entries in [&inner[..], &list[1..]] {
            let lr: LeastRequest = unpack(&config(&entries[0])).unwrap();
            let rr: RoundRobin = unpack(&config(&entries[1])).unwrap();
            for ss in [lr.slow_start_config, rr.slow_start_config] {
                assert_eq!(ss.unwrap().slow_start_window, Some(window));
            }
        }
        match &c.lb_config {
            Some(cluster::LbConfig::LeastRequestLbConfig(l)) => assert_eq!(
                l.slow_start_config.as_ref().unwrap().slow_start_window,
                Some(window)
            ),
            other => panic!("legacy lb_config {other:?}"),
        }

        // Round robin's legacy config; a zero window and no lb-core policy
        // add nothing.
        let rr = cluster_with(NAME, &LbPolicy::RoundRobin, &options);
        assert!(matches!(
            rr.lb_config,
            Some(cluster::LbConfig::RoundRobinLbConfig(_))
        ));
        let off = ClusterOptions {
            slow_start_window: Some(Duration::ZERO),
            lb_core_policy: None,
        };
        for opts in [off, ClusterOptions::default()] {
            let plain = cluster_with(NAME, &LbPolicy::LeastRequest, &opts);
            assert_eq!(plain.metadata, None);
            assert_eq!(plain.lb_config, None);
            assert_eq!(
                plain.load_balancing_policy.unwrap().policies,
                LbPolicy::LeastRequest.policies()
            );
        }
    }

    #[test]
    fn the_hash_header_rides_on_the_cluster_metadata() {
        let field = |c: &Cluster, key: &str| {
            c.metadata
                .as_ref()
                .and_then(|m| m.filter_metadata.get(METADATA_NAMESPACE))
                .and_then(|m| m.fields.get(key))
                .and_then(|v| v.kind.clone())
        };
        let bounded = ClusterOptions {
            lb_core_policy: Some(lb_core::Policy::BoundedLoadHash),
            ..ClusterOptions::default()
        };
        let policy = LbPolicy::nearest(lb_core::Policy::BoundedLoadHash)
            .with_hash_header("x-user")
            .unwrap();
        let c = cluster_with(NAME, &policy, &bounded);
        assert_eq!(
            field(&c, HASH_HEADER_METADATA_KEY),
            Some(Kind::StringValue("x-user".into()))
        );
        assert_eq!(
            field(&c, POLICY_METADATA_KEY),
            Some(Kind::StringValue("bounded-load-hash".into()))
        );
        // A plain ring hash on a header carries only the header.
        let c = cluster(
            NAME,
            &LbPolicy::RingHash { header: None }
                .with_hash_header("shard")
                .unwrap(),
        );
        assert_eq!(
            field(&c, HASH_HEADER_METADATA_KEY),
            Some(Kind::StringValue("shard".into()))
        );
        assert_eq!(field(&c, POLICY_METADATA_KEY), None);
        // Hashing without a header adds nothing.
        assert_eq!(
            cluster(NAME, &LbPolicy::RingHash { header: None }).metadata,
            None
        );
    }

    #[test]
    fn every_lb_core_policy_has_a_nearest_xds_policy() {
        use lb_core::Policy as P;
        for p in P::ALL {
            let nearest = LbPolicy::nearest(p);
            assert_eq!(nearest.hashes(), p.is_hash(), "{p} -> {nearest}");
        }
        // Where the names agree, the annotation value parses to the same.
        for p in [P::P2c, P::RoundRobin, P::Random, P::RingHash] {
            assert_eq!(p.as_str().parse::<LbPolicy>(), Ok(LbPolicy::nearest(p)));
        }
    }

    #[test]
    fn listener_is_an_api_listener_with_rds_over_ads() {
        let l = listener(NAME);
        assert_eq!(l.name, NAME);
        let any = l.api_listener.unwrap().api_listener.unwrap();
        assert_eq!(any.type_url, HTTP_CONNECTION_MANAGER_TYPE_URL);
        let hcm: HttpConnectionManager = unpack(&any).unwrap();
        let Some(http_connection_manager::RouteSpecifier::Rds(rds)) = hcm.route_specifier else {
            panic!("rds expected");
        };
        assert_eq!(rds.route_config_name, NAME);
        assert_eq!(rds.config_source, Some(ads_config_source()));
        let [router] = hcm.http_filters.as_slice() else {
            panic!("one filter expected");
        };
        assert_eq!(router.name, ROUTER_FILTER_NAME);
        let Some(http_filter::ConfigType::TypedConfig(cfg)) = &router.config_type else {
            panic!("typed router config expected");
        };
        let _: Router = unpack(cfg).unwrap();
    }

    #[test]
    fn route_configuration_routes_everything_to_the_cluster() {
        for (policy, hash) in [
            (LbPolicy::LeastRequest, None),
            (LbPolicy::RingHash { header: None }, None),
            (
                LbPolicy::RingHash {
                    header: Some("x-user".into()),
                },
                Some("x-user"),
            ),
        ] {
            let rc = route_configuration(NAME, &policy);
            assert_eq!(rc.name, NAME);
            let [vh] = rc.virtual_hosts.as_slice() else {
                panic!("one virtual host");
            };
            assert_eq!(vh.domains, [NAME, "*"]);
            let [r] = vh.routes.as_slice() else {
                panic!("one route");
            };
            assert_eq!(
                r.r#match.as_ref().unwrap().path_specifier,
                Some(route_match::PathSpecifier::Prefix(String::new()))
            );
            let Some(route::Action::Route(action)) = &r.action else {
                panic!("route action");
            };
            assert_eq!(
                action.cluster_specifier,
                Some(route_action::ClusterSpecifier::Cluster(NAME.into()))
            );
            let headers: Vec<&str> = action
                .hash_policy
                .iter()
                .map(|h| match &h.policy_specifier {
                    Some(route_action::hash_policy::PolicySpecifier::Header(h)) => {
                        h.header_name.as_str()
                    }
                    other => panic!("{other:?}"),
                })
                .collect();
            assert_eq!(headers, hash.into_iter().collect::<Vec<_>>());
        }
    }

    #[test]
    fn cluster_is_eds_over_ads_under_the_asked_name() {
        let fqdn = "echo.demo.svc.cluster.local:8080";
        let c = cluster(fqdn, &LbPolicy::default());
        assert_eq!(c.name, fqdn);
        assert_eq!(
            c.cluster_discovery_type,
            Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Eds as i32
            ))
        );
        let eds = c.eds_cluster_config.unwrap();
        assert_eq!(eds.eds_config, Some(ads_config_source()));
        assert_eq!(eds.service_name, fqdn);
    }
}

//! What lb-client takes from a CDS `Cluster`: the service's balancing policy
//! and, when the Cluster carries one, its slow-start ramp. Pure: a Cluster
//! in, a [`ClusterPolicy`] or a [`ClusterError`] naming the field out; and
//! [`PolicySource`], where the policy a service balances with came from.
//!
//! ```text
//!  metadata.filter_metadata["eds.rs"]["lb-policy"]   an lb-core policy name   (wins when set and known)
//!  metadata.filter_metadata["eds.rs"]["hash-header"] the header hashing policies hash (the route's hash_policy)
//!  load_balancing_policy.policies (gRFC A52)         first entry lb-client supports, in order:
//!      wrr_locality        -> look inside (lb-client does its own zone weighting)
//!      least_request       -> p2c          (+ slow_start_config)
//!      round_robin         -> round-robin  (+ slow_start_config)
//!      random              -> random
//!      ring_hash           -> ring-hash
//!      anything else       -> skipped (maglev, pick_first, client-side WRR, custom)
//!  lb_policy (legacy enum, only without the list)
//!      ROUND_ROBIN, LEAST_REQUEST, RING_HASH, RANDOM (+ lb_config's slow_start_config)
//! ```
//!
//! This mirrors what a stock gRPC client does with the same resource (it
//! takes the first policy it supports), so eds-server's lists, which always
//! end in `round_robin`, mean the same thing to both: `eds.rs/lb-policy:
//! maglev` becomes ring hash, `least-request` becomes P2C.
//!
//! Malformed (the response is NACKed): an empty name, an empty policy list,
//! an entry without a typed config, a known policy whose bytes do not decode
//! or whose settings are out of range (least request with fewer than two
//! choices, a ring whose minimum exceeds its maximum or 8M, a slow-start
//! window below zero or an aggression outside (0, 10]), nesting deeper than
//! gRPC allows, `eds.rs` metadata of the wrong type, or a hash header that
//! is not a lower-case HTTP header name. Merely unsupported
//! (ACKed; the caller falls back to the default policy and warns): a list
//! in which nothing is supported, or a legacy enum value lb-client does not
//! implement.
//!
//! Not read: the RouteConfiguration (eds-server repeats the route's hash
//! header in the Cluster's metadata, above, so lb-client needs no RDS),
//! locality settings (zone affinity is the client's own), and everything a
//! proxy needs (timeouts, circuit breakers, transport sockets).

use lb_core::Policy;
use lb_core::slow_start::SlowStart;
use prost::Name;
use proto::resources::{METADATA_NAMESPACE, UnpackError, unpack};
use proto::xds::pb::envoy::config::cluster::v3::{Cluster, LoadBalancingPolicy, cluster};
use proto::xds::pb::envoy::config::core::v3::RuntimeDouble;
use proto::xds::pb::envoy::extensions::load_balancing_policies::{
    common::v3::SlowStartConfig, least_request::v3::LeastRequest, random::v3::Random,
    ring_hash::v3::RingHash, round_robin::v3::RoundRobin, wrr_locality::v3::WrrLocality,
};
use proto::xds::pb::envoy::r#type::v3::Percent;
use proto::xds::pb::google::protobuf::{Duration as PbDuration, value::Kind};

/// Where a service's balancing policy came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicySource {
    /// The application's configuration ([`crate::ServiceOptions::policy`] set).
    Local,
    /// The service's CDS Cluster (eds-server: the `eds.rs/lb-policy` annotation).
    Cds,
    /// lb-core's default (P2C): no local policy, and no usable Cluster (none
    /// yet, none served, or one asking only for unsupported policies).
    Default,
}

impl PolicySource {
    /// `local`, `cds` or `default`, as in the debug view and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicySource::Local => "local",
            PolicySource::Cds => "cds",
            PolicySource::Default => "default",
        }
    }
}

/// The key in `Cluster.metadata.filter_metadata["eds.rs"]` that may name an
/// lb-core policy directly (for policies no xDS entry expresses, such as
/// `peak-ewma` or `bounded-load-hash`); eds-server writes it from the
/// Service's `eds.rs/lb-policy` annotation.
pub use proto::resources::POLICY_METADATA_KEY;

/// The key in `Cluster.metadata.filter_metadata["eds.rs"]` naming the
/// request header the hashing policies hash; eds-server writes it from the
/// Service's `eds.rs/hash-header` annotation.
pub use proto::resources::HASH_HEADER_METADATA_KEY;

/// How deep `wrr_locality` may nest lists; gRPC's limit (gRFC A52).
const MAX_DEPTH: usize = 16;

/// Largest ring gRPC accepts (gRFC A42); a larger one is malformed.
const MAX_RING_SIZE: u64 = 8 * 1024 * 1024;

/// Smallest share of its weight an endpoint in slow start gets; an Envoy
/// `min_weight_percent` of 0 would starve it, which lb-client never does.
const MIN_SLOW_START_WEIGHT: f64 = 0.01;

/// What a valid Cluster says about balancing, as lb-client understands it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterPolicy {
    /// The Cluster's name: the service key as subscribed.
    pub name: String,
    /// The policy to balance with; `None` when the Cluster asks only for
    /// policies lb-client does not implement (the default applies then).
    pub policy: Option<Policy>,
    /// Slow start from the chosen policy's `slow_start_config`, if any.
    pub slow_start: Option<SlowStart>,
    /// The request header the hashing policies hash, from the metadata;
    /// a lower-case header name.
    pub hash_header: Option<String>,
    /// Where the choice came from, for logs and the debug view, e.g.
    /// `load_balancing_policy.policies[0] wrr_locality > least_request`.
    pub chosen_from: String,
    /// What was asked for but not supported, in order (type URLs or enum
    /// names), for the warning when nothing was.
    pub unsupported: Vec<String>,
}

/// A Cluster lb-client rejects: which resource, which field, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Cluster {resource:?}: {field}: {problem}")]
pub struct ClusterError {
    /// The Cluster's name.
    pub resource: String,
    /// Path of the offending field, e.g. `load_balancing_policy.policies[1].typed_extension_config`.
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

/// What one policy entry (or the legacy enum) resolved to.
struct Choice {
    policy: Policy,
    slow_start: Option<SlowStart>,
    from: String,
}

/// Reads the policy and slow start of `cluster`. See the module docs for
/// what is malformed and what is merely unsupported.
pub fn parse_cluster(cluster: &Cluster) -> Result<ClusterPolicy, ClusterError> {
    let name = cluster.name.as_str();
    let err = |field: String, problem: String| ClusterError {
        resource: name.to_owned(),
        field,
        problem,
    };
    if name.is_empty() {
        return Err(err(
            "name".into(),
            "is empty; a Cluster must be named by its service key".into(),
        ));
    }
    let mut unsupported = Vec::new();
    let choice = match &cluster.load_balancing_policy {
        // Envoy: the field supersedes the legacy enum, which is then ignored.
        Some(list) => from_list(list, "load_balancing_policy", 0, &mut unsupported)
            .map_err(|(field, problem)| err(field, problem))?,
        None => from_legacy(cluster, &mut unsupported).map_err(|(f, p)| err(f, p))?,
    };
    let mut out = ClusterPolicy {
        name: name.to_owned(),
        policy: choice.as_ref().map(|c| c.policy),
        slow_start: choice.as_ref().and_then(|c| c.slow_start),
        hash_header: None,
        chosen_from: choice.map(|c| c.from).unwrap_or_default(),
        unsupported,
    };
    let meta = cluster
        .metadata
        .as_ref()
        .and_then(|m| m.filter_metadata.get(METADATA_NAMESPACE));
    if let Some(value) = meta.and_then(|m| m.fields.get(HASH_HEADER_METADATA_KEY)) {
        let field = format!(
            "metadata.filter_metadata[\"{METADATA_NAMESPACE}\"].{HASH_HEADER_METADATA_KEY}"
        );
        let header = match &value.kind {
            Some(Kind::StringValue(text))
                // HTTP/2 header names are lower case; `HeaderName` would
                // quietly fold an upper-case one.
                if !text.bytes().any(|b| b.is_ascii_uppercase())
                    && http::HeaderName::try_from(text.as_str()).is_ok() =>
            {
                text.clone()
            }
            _ => {
                return Err(err(
                    field,
                    "must be a string naming a lower-case HTTP header".into(),
                ));
            }
        };
        out.hash_header = Some(header);
    }
    if let Some(value) = meta.and_then(|m| m.fields.get(POLICY_METADATA_KEY)) {
        let field =
            format!("metadata.filter_metadata[\"{METADATA_NAMESPACE}\"].{POLICY_METADATA_KEY}");
        let Some(Kind::StringValue(text)) = &value.kind else {
            return Err(err(field, "must be a string naming a policy".into()));
        };
        match text.parse::<Policy>() {
            Ok(p) => {
                out.policy = Some(p);
                out.chosen_from = field;
            }
            Err(_) => out.unsupported.insert(0, format!("{field} {text:?}")),
        }
    }
    Ok(out)
}

type FieldError = (String, String);

/// The first supported entry of a gRFC A52 list, `None` if none is.
fn from_list(
    list: &LoadBalancingPolicy,
    at: &str,
    depth: usize,
    unsupported: &mut Vec<String>,
) -> Result<Option<Choice>, FieldError> {
    if depth >= MAX_DEPTH {
        return Err((
            at.to_owned(),
            format!("policies nest deeper than {MAX_DEPTH} levels"),
        ));
    }
    if list.policies.is_empty() {
        return Err((
            format!("{at}.policies"),
            "is empty; a load-balancing policy list needs at least one entry".into(),
        ));
    }
    for (i, entry) in list.policies.iter().enumerate() {
        let at = format!("{at}.policies[{i}].typed_extension_config");
        let Some(config) = &entry.typed_extension_config else {
            return Err((at, "is missing".into()));
        };
        let at = format!("{at}.typed_config");
        let Some(any) = &config.typed_config else {
            return Err((at, "is missing".into()));
        };
        let decode_err = |e: UnpackError| (at.clone(), e.to_string());
        let label = |what: &str| format!("{at} {what}");
        let choice = match any.type_url.as_str() {
            u if u == RoundRobin::type_url() => {
                let rr: RoundRobin = unpack(any).map_err(decode_err)?;
                Choice {
                    policy: Policy::RoundRobin,
                    slow_start: slow_start(rr.slow_start_config.as_ref(), &at)?,
                    from: label("round_robin"),
                }
            }
            u if u == LeastRequest::type_url() => {
                let lr: LeastRequest = unpack(any).map_err(decode_err)?;
                check_choices(lr.choice_count.map(|c| c.value), &at)?;
                Choice {
                    policy: Policy::P2c,
                    slow_start: slow_start(lr.slow_start_config.as_ref(), &at)?,
                    from: label("least_request"),
                }
            }
            u if u == Random::type_url() => {
                let _: Random = unpack(any).map_err(decode_err)?;
                Choice {
                    policy: Policy::Random,
                    slow_start: None,
                    from: label("random"),
                }
            }
            u if u == RingHash::type_url() => {
                let rh: RingHash = unpack(any).map_err(decode_err)?;
                check_ring(
                    rh.minimum_ring_size.map(|v| v.value),
                    rh.maximum_ring_size.map(|v| v.value),
                    &at,
                )?;
                Choice {
                    policy: Policy::RingHash,
                    slow_start: None,
                    from: label("ring_hash"),
                }
            }
            u if u == WrrLocality::type_url() => {
                let wrr: WrrLocality = unpack(any).map_err(decode_err)?;
                let inner_at = format!("{at}.endpoint_picking_policy");
                let Some(inner) = &wrr.endpoint_picking_policy else {
                    return Err((inner_at, "is missing".into()));
                };
                match from_list(inner, &inner_at, depth + 1, unsupported)? {
                    // Per-zone weights are the client's own business
                    // (zone affinity), so only the endpoint policy matters.
                    Some(c) => Choice {
                        from: format!("{at} wrr_locality > {}", short(&c.from)),
                        ..c
                    },
                    None => {
                        unsupported.push(any.type_url.clone());
                        continue;
                    }
                }
            }
            other => {
                unsupported.push(other.to_owned());
                continue;
            }
        };
        return Ok(Some(choice));
    }
    Ok(None)
}

/// The last word of a choice's label: `... least_request` -> `least_request`.
fn short(from: &str) -> &str {
    from.rsplit(' ').next().unwrap_or(from)
}

/// The legacy `lb_policy` enum and its `lb_config`.
fn from_legacy(
    cluster: &Cluster,
    unsupported: &mut Vec<String>,
) -> Result<Option<Choice>, FieldError> {
    use cluster::LbPolicy as Legacy;
    let legacy = Legacy::try_from(cluster.lb_policy);
    let from = match legacy {
        Ok(l) => format!("lb_policy {}", l.as_str_name()),
        Err(_) => format!("lb_policy {}", cluster.lb_policy),
    };
    let config = cluster.lb_config.as_ref();
    let policy = match legacy {
        Ok(Legacy::RoundRobin) => Policy::RoundRobin,
        Ok(Legacy::LeastRequest) => Policy::P2c,
        Ok(Legacy::RingHash) => Policy::RingHash,
        Ok(Legacy::Random) => Policy::Random,
        _ => {
            unsupported.push(from);
            return Ok(None);
        }
    };
    let slow = match (policy, config) {
        (Policy::RoundRobin, Some(cluster::LbConfig::RoundRobinLbConfig(c))) => {
            let at = "round_robin_lb_config.slow_start_config";
            legacy_slow_start(c.slow_start_config.as_ref(), at)?
        }
        (Policy::P2c, Some(cluster::LbConfig::LeastRequestLbConfig(c))) => {
            check_choices(c.choice_count.map(|c| c.value), "least_request_lb_config")?;
            let at = "least_request_lb_config.slow_start_config";
            legacy_slow_start(c.slow_start_config.as_ref(), at)?
        }
        (Policy::RingHash, Some(cluster::LbConfig::RingHashLbConfig(c))) => {
            check_ring(
                c.minimum_ring_size.map(|v| v.value),
                c.maximum_ring_size.map(|v| v.value),
                "ring_hash_lb_config",
            )?;
            None
        }
        _ => None,
    };
    Ok(Some(Choice {
        policy,
        slow_start: slow,
        from,
    }))
}

fn check_choices(count: Option<u32>, at: &str) -> Result<(), FieldError> {
    match count {
        // lb-core chooses its own count (every endpoint up to 16, two above);
        // any valid choice_count still means least request.
        Some(n) if n < 2 => Err((
            format!("{at}.choice_count"),
            format!("is {n}; least request needs at least 2 choices"),
        )),
        _ => Ok(()),
    }
}

fn check_ring(min: Option<u64>, max: Option<u64>, at: &str) -> Result<(), FieldError> {
    if let Some(max) = max
        && max > MAX_RING_SIZE
    {
        return Err((
            format!("{at}.maximum_ring_size"),
            format!("is {max}; gRPC accepts at most {MAX_RING_SIZE}"),
        ));
    }
    if let (Some(min), Some(max)) = (min, max)
        && min > max
    {
        return Err((
            format!("{at}.minimum_ring_size"),
            format!("is {min}, above maximum_ring_size {max}"),
        ));
    }
    Ok(())
}

fn slow_start(c: Option<&SlowStartConfig>, at: &str) -> Result<Option<SlowStart>, FieldError> {
    let Some(c) = c else { return Ok(None) };
    to_slow_start(
        c.slow_start_window.as_ref(),
        c.aggression.as_ref(),
        c.min_weight_percent.as_ref(),
        &format!("{at}.slow_start_config"),
    )
}

fn legacy_slow_start(
    c: Option<&cluster::SlowStartConfig>,
    at: &str,
) -> Result<Option<SlowStart>, FieldError> {
    let Some(c) = c else { return Ok(None) };
    to_slow_start(
        c.slow_start_window.as_ref(),
        c.aggression.as_ref(),
        c.min_weight_percent.as_ref(),
        at,
    )
}

/// Envoy's slow-start settings as lb-core's. No window, or a zero one,
/// means no slow start (Envoy: "if set, ... remains in slow start mode").
fn to_slow_start(
    window: Option<&PbDuration>,
    aggression: Option<&RuntimeDouble>,
    min_weight_percent: Option<&Percent>,
    at: &str,
) -> Result<Option<SlowStart>, FieldError> {
    let Some(window) = window else {
        return Ok(None);
    };
    if window.seconds < 0 || !(0..1_000_000_000).contains(&window.nanos) {
        return Err((
            format!("{at}.slow_start_window"),
            format!(
                "is {}s {}ns; a window is a non-negative duration",
                window.seconds, window.nanos
            ),
        ));
    }
    let window = std::time::Duration::new(window.seconds as u64, window.nanos as u32);
    if window.is_zero() {
        return Ok(None);
    }
    // The runtime key is Envoy's; lb-client has no runtime, so the default value stands.
    let aggression = aggression.map_or(1.0, |a| a.default_value);
    let min_weight = match min_weight_percent {
        None => 0.1,
        Some(p) if (0.0..=100.0).contains(&p.value) => (p.value / 100.0).max(MIN_SLOW_START_WEIGHT),
        Some(p) => {
            return Err((
                format!("{at}.min_weight_percent"),
                format!("is {}; a percentage is in [0, 100]", p.value),
            ));
        }
    };
    SlowStart::new(window, aggression, min_weight)
        .map(Some)
        .map_err(|e| (at.to_owned(), e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::resources::{
        ClusterOptions, LbPolicy, cluster as build_cluster, cluster_with, pack,
    };
    use proto::xds::pb::envoy::config::cluster::v3::load_balancing_policy;
    use proto::xds::pb::envoy::config::core::v3::{Metadata, TypedExtensionConfig};
    use proto::xds::pb::envoy::extensions::load_balancing_policies::maglev::v3::Maglev;
    use proto::xds::pb::envoy::extensions::load_balancing_policies::pick_first::v3::PickFirst;
    use proto::xds::pb::google::protobuf::{Any, Struct, UInt32Value, UInt64Value, Value};
    use std::collections::HashMap;
    use std::time::Duration;

    const NAME: &str = "echo.demo:8080";

    fn entry<M: Name>(m: &M) -> load_balancing_policy::Policy {
        load_balancing_policy::Policy {
            typed_extension_config: Some(TypedExtensionConfig {
                name: M::NAME.to_owned(),
                typed_config: Some(pack(m)),
            }),
        }
    }

    fn with_list(policies: Vec<load_balancing_policy::Policy>) -> Cluster {
        Cluster {
            name: NAME.into(),
            load_balancing_policy: Some(LoadBalancingPolicy { policies }),
            ..Default::default()
        }
    }

    fn ss_config(window_s: i64, aggression: f64, percent: f64) -> SlowStartConfig {
        SlowStartConfig {
            slow_start_window: Some(PbDuration {
                seconds: window_s,
                nanos: 0,
            }),
            aggression: Some(RuntimeDouble {
                default_value: aggression,
                runtime_key: String::new(),
            }),
            min_weight_percent: Some(Percent { value: percent }),
        }
    }

    #[test]
    fn every_annotation_eds_server_serves_maps_to_the_policy_it_means() {
        // The real builder eds-server uses, so the two cannot drift apart.
        let cases = [
            (LbPolicy::RoundRobin, Policy::RoundRobin),
            (LbPolicy::LeastRequest, Policy::P2c),
            (LbPolicy::Random, Policy::Random),
            (LbPolicy::RingHash { header: None }, Policy::RingHash),
            (
                LbPolicy::RingHash {
                    header: Some("x-user".into()),
                },
                Policy::RingHash,
            ),
            // No Maglev in lb-core: the next entry, as a gRPC client would.
            (LbPolicy::Maglev { header: None }, Policy::RingHash),
        ];
        for (annotation, want) in cases {
            let parsed = parse_cluster(&build_cluster(NAME, &annotation)).unwrap();
            assert_eq!(parsed.name, NAME);
            assert_eq!(parsed.policy, Some(want), "{annotation}: {parsed:?}");
            assert_eq!(parsed.slow_start, None);
            assert!(!parsed.chosen_from.is_empty());
        }
        let lr = parse_cluster(&build_cluster(NAME, &LbPolicy::LeastRequest)).unwrap();
        assert!(
            lr.chosen_from.ends_with("wrr_locality > least_request"),
            "{}",
            lr.chosen_from
        );
        let maglev =
            parse_cluster(&build_cluster(NAME, &LbPolicy::Maglev { header: None })).unwrap();
        assert_eq!(maglev.unsupported, vec![Maglev::type_url()]);
    }

    #[test]
    fn lb_core_policies_and_slow_start_from_eds_server_arrive_intact() {
        // As eds-server builds the Cluster for `eds.rs/lb-policy: <p>` and
        // `eds.rs/slow-start-window: 30s`: every lb-core policy reaches
        // lb-client as itself, with the window, whatever stock clients get.
        for p in Policy::ALL {
            let options = ClusterOptions {
                slow_start_window: Some(std::time::Duration::from_secs(30)),
                lb_core_policy: Some(p),
            };
            let nearest = LbPolicy::nearest(p);
            let parsed = parse_cluster(&cluster_with(NAME, &nearest, &options)).unwrap();
            assert_eq!(parsed.policy, Some(p), "{p}: {parsed:?}");
            assert!(parsed.chosen_from.starts_with("metadata"), "{parsed:?}");
            // Slow start rides on the entry lb-client reads first: least
            // request and round robin take it, random and ring hash do not.
            let want = matches!(nearest, LbPolicy::LeastRequest | LbPolicy::RoundRobin)
                .then_some(std::time::Duration::from_secs(30));
            assert_eq!(parsed.slow_start.map(|s| s.window()), want, "{p}");
        }
    }

    #[test]
    fn the_first_supported_entry_wins_and_carries_its_slow_start() {
        let c = with_list(vec![
            entry(&PickFirst::default()),
            entry(&RoundRobin {
                slow_start_config: Some(ss_config(20, 2.0, 5.0)),
                ..Default::default()
            }),
            entry(&LeastRequest::default()),
        ]);
        let p = parse_cluster(&c).unwrap();
        assert_eq!(p.policy, Some(Policy::RoundRobin));
        assert_eq!(p.unsupported, vec![PickFirst::type_url()]);
        let ss = p.slow_start.expect("slow start");
        assert_eq!(
            ss,
            SlowStart::new(Duration::from_secs(20), 2.0, 0.05).unwrap()
        );
        assert!(p.chosen_from.contains("policies[1]"), "{}", p.chosen_from);

        // A zero window is no slow start; 0 % is raised so nothing starves.
        let c = with_list(vec![entry(&LeastRequest {
            slow_start_config: Some(ss_config(0, 1.0, 10.0)),
            ..Default::default()
        })]);
        assert_eq!(parse_cluster(&c).unwrap().slow_start, None);
        let c = with_list(vec![entry(&LeastRequest {
            slow_start_config: Some(ss_config(10, 1.0, 0.0)),
            ..Default::default()
        })]);
        assert_eq!(
            parse_cluster(&c).unwrap().slow_start,
            Some(SlowStart::new(Duration::from_secs(10), 1.0, 0.01).unwrap())
        );
    }

    #[test]
    fn nothing_supported_is_accepted_without_a_policy() {
        let custom = load_balancing_policy::Policy {
            typed_extension_config: Some(TypedExtensionConfig {
                name: "acme.lb".into(),
                typed_config: Some(Any {
                    type_url: "type.googleapis.com/acme.Lb".into(),
                    value: vec![1, 2, 3],
                }),
            }),
        };
        let c = with_list(vec![entry(&Maglev::default()), custom]);
        let p = parse_cluster(&c).unwrap();
        assert_eq!(p.policy, None);
        assert_eq!(
            p.unsupported,
            vec![Maglev::type_url(), "type.googleapis.com/acme.Lb".to_owned()]
        );
        // A wrr_locality around nothing supported is itself unsupported.
        let c = with_list(vec![entry(&WrrLocality {
            endpoint_picking_policy: Some(LoadBalancingPolicy {
                policies: vec![entry(&PickFirst::default())],
            }),
        })]);
        assert_eq!(parse_cluster(&c).unwrap().policy, None);
    }

    #[test]
    fn the_legacy_enum_is_read_only_without_a_list() {
        use cluster::LbPolicy as Legacy;
        for (legacy, want) in [
            (Legacy::RoundRobin, Some(Policy::RoundRobin)),
            (Legacy::LeastRequest, Some(Policy::P2c)),
            (Legacy::RingHash, Some(Policy::RingHash)),
            (Legacy::Random, Some(Policy::Random)),
            (Legacy::Maglev, None),
            (Legacy::ClusterProvided, None),
        ] {
            let c = Cluster {
                name: NAME.into(),
                lb_policy: legacy as i32,
                ..Default::default()
            };
            let p = parse_cluster(&c).unwrap();
            assert_eq!(p.policy, want, "{legacy:?}");
            assert_eq!(p.unsupported.is_empty(), want.is_some());
        }
        // With a list, the enum is ignored (eds-server sends ROUND_ROBIN for ring hash).
        let c = build_cluster(NAME, &LbPolicy::RingHash { header: None });
        assert_eq!(c.lb_policy, Legacy::RoundRobin as i32);
        assert_eq!(parse_cluster(&c).unwrap().policy, Some(Policy::RingHash));
        // The legacy lb_config's slow start.
        let c = Cluster {
            name: NAME.into(),
            lb_policy: Legacy::LeastRequest as i32,
            lb_config: Some(cluster::LbConfig::LeastRequestLbConfig(
                cluster::LeastRequestLbConfig {
                    slow_start_config: Some(cluster::SlowStartConfig {
                        slow_start_window: Some(PbDuration {
                            seconds: 45,
                            nanos: 0,
                        }),
                        aggression: None,
                        min_weight_percent: None,
                    }),
                    ..Default::default()
                },
            )),
            ..Default::default()
        };
        assert_eq!(
            parse_cluster(&c).unwrap().slow_start,
            Some(SlowStart::new(Duration::from_secs(45), 1.0, 0.1).unwrap())
        );
    }

    #[test]
    fn eds_rs_metadata_names_a_policy_directly() {
        let meta = |v: Kind| Metadata {
            filter_metadata: HashMap::from([(
                METADATA_NAMESPACE.to_owned(),
                Struct {
                    fields: [(POLICY_METADATA_KEY.to_owned(), Value { kind: Some(v) })].into(),
                },
            )]),
            ..Default::default()
        };
        let mut c = build_cluster(NAME, &LbPolicy::LeastRequest);
        c.metadata = Some(meta(Kind::StringValue("peak-ewma".into())));
        let p = parse_cluster(&c).unwrap();
        assert_eq!(p.policy, Some(Policy::PeakEwma));
        assert!(p.chosen_from.starts_with("metadata"), "{}", p.chosen_from);
        // Unknown name: the list still decides, and the name is reported.
        c.metadata = Some(meta(Kind::StringValue("fastest".into())));
        let p = parse_cluster(&c).unwrap();
        assert_eq!(p.policy, Some(Policy::P2c));
        assert!(p.unsupported[0].contains("fastest"), "{:?}", p.unsupported);
        // Wrong type: malformed.
        c.metadata = Some(meta(Kind::NumberValue(1.0)));
        let e = parse_cluster(&c).unwrap_err();
        assert!(e.field.ends_with(".lb-policy"), "{e}");
    }

    #[test]
    fn the_hash_header_comes_from_the_metadata_eds_server_writes() {
        let policy = LbPolicy::RingHash { header: None }
            .with_hash_header("x-user")
            .unwrap();
        let mut c = build_cluster(NAME, &policy);
        let p = parse_cluster(&c).unwrap();
        assert_eq!(p.hash_header.as_deref(), Some("x-user"));
        assert_eq!(p.policy, Some(Policy::RingHash));
        assert_eq!(
            parse_cluster(&build_cluster(NAME, &LbPolicy::RingHash { header: None }))
                .unwrap()
                .hash_header,
            None
        );

        fn fields(c: &mut Cluster) -> &mut HashMap<String, Value> {
            &mut c
                .metadata
                .as_mut()
                .unwrap()
                .filter_metadata
                .get_mut(METADATA_NAMESPACE)
                .unwrap()
                .fields
        }
        for bad in [
            Kind::NumberValue(1.0),
            Kind::StringValue("X-User".into()),
            Kind::StringValue("x user".into()),
            Kind::StringValue(String::new()),
        ] {
            fields(&mut c).insert(
                HASH_HEADER_METADATA_KEY.to_owned(),
                Value {
                    kind: Some(bad.clone()),
                },
            );
            let e = parse_cluster(&c).unwrap_err();
            assert!(e.field.ends_with(".hash-header"), "{bad:?}: {e}");
            assert!(e.problem.contains("lower-case HTTP header"), "{e}");
        }
    }

    #[test]
    fn malformed_clusters_name_the_field() {
        let cases: Vec<(Cluster, &str)> = vec![
            (
                Cluster {
                    name: String::new(),
                    ..build_cluster(NAME, &LbPolicy::RoundRobin)
                },
                "name",
            ),
            (with_list(vec![]), "load_balancing_policy.policies"),
            (
                with_list(vec![load_balancing_policy::Policy::default()]),
                "load_balancing_policy.policies[0].typed_extension_config",
            ),
            (
                with_list(vec![load_balancing_policy::Policy {
                    typed_extension_config: Some(TypedExtensionConfig {
                        name: "rr".into(),
                        typed_config: Some(Any {
                            type_url: RoundRobin::type_url(),
                            value: vec![0xff, 0xff, 0xff],
                        }),
                    }),
                }]),
                "load_balancing_policy.policies[0].typed_extension_config.typed_config",
            ),
            (
                with_list(vec![entry(&LeastRequest {
                    choice_count: Some(UInt32Value { value: 1 }),
                    ..Default::default()
                })]),
                "typed_config.choice_count",
            ),
            (
                with_list(vec![entry(&RingHash {
                    minimum_ring_size: Some(UInt64Value { value: 4096 }),
                    maximum_ring_size: Some(UInt64Value { value: 1024 }),
                    ..Default::default()
                })]),
                "typed_config.minimum_ring_size",
            ),
            (
                with_list(vec![entry(&RingHash {
                    maximum_ring_size: Some(UInt64Value {
                        value: MAX_RING_SIZE + 1,
                    }),
                    ..Default::default()
                })]),
                "typed_config.maximum_ring_size",
            ),
            (
                with_list(vec![entry(&WrrLocality::default())]),
                "typed_config.endpoint_picking_policy",
            ),
            (
                with_list(vec![entry(&RoundRobin {
                    slow_start_config: Some(ss_config(-1, 1.0, 10.0)),
                    ..Default::default()
                })]),
                "slow_start_config.slow_start_window",
            ),
            (
                with_list(vec![entry(&RoundRobin {
                    slow_start_config: Some(ss_config(10, 0.0, 10.0)),
                    ..Default::default()
                })]),
                "slow_start_config",
            ),
            (
                with_list(vec![entry(&RoundRobin {
                    slow_start_config: Some(ss_config(10, 1.0, 150.0)),
                    ..Default::default()
                })]),
                "slow_start_config.min_weight_percent",
            ),
        ];
        for (c, field) in cases {
            let e = parse_cluster(&c).expect_err(field);
            assert!(e.field.ends_with(field), "want ..{field}, got {e}");
            assert!(e.to_string().starts_with("Cluster "), "{e}");
        }
        // Nesting beyond gRPC's limit.
        let mut list = LoadBalancingPolicy {
            policies: vec![entry(&RoundRobin::default())],
        };
        for _ in 0..MAX_DEPTH {
            list = LoadBalancingPolicy {
                policies: vec![entry(&WrrLocality {
                    endpoint_picking_policy: Some(list),
                })],
            };
        }
        let c = Cluster {
            name: NAME.into(),
            load_balancing_policy: Some(list),
            ..Default::default()
        };
        let e = parse_cluster(&c).unwrap_err();
        assert!(e.problem.contains("nest"), "{e}");
    }
}

//! From a published [`Topology`] to the xDS resources each client sees: the
//! [`ResourceSource`] the protocol state machines read.
//!
//! ```text
//!  Arc<Topology> ──SourceProvider::source──> Arc<SnapshotSource>   (one per topology version)
//!                                               │ get(type, name as asked, client zone)
//!                                               v
//!                       encode once per (type, name, zone shape), cache, share the Arc
//! ```
//!
//! - Every accepted form of a service key resolves to the same Service port
//!   and is answered under the exact name asked (DESIGN.md, "Names").
//! - Versions are a hash of the encoded bytes: derived from content, so two
//!   replicas agree and a client that reconnects elsewhere is sent nothing new.
//! - Per-client zone awareness: with the client's zone (xDS `Node.locality`),
//!   locality weights follow `lb_core::zone::spill_shares`; zones that get
//!   no share stay as a failover priority. Stock gRPC clients and Envoy get
//!   zone affinity with proportional spillover without a "local cluster".
//! - The service's policy comes from the `eds.rs/lb-policy` annotation
//!   (`eds.rs/lb-policy.<port-name>` overrides per port) and
//!   `eds.rs/hash-header`; an unknown value is logged, counted and replaced
//!   by the default. A value only lb-core implements (`peak-ewma`,
//!   `weighted-round-robin`, `bounded-load-hash`) is sent to everyone as the
//!   nearest xDS policy and to lb-client, in the Cluster's metadata, as is.
//!   `eds.rs/slow-start-window` becomes the Cluster's slow-start config.
//!
//! Not here: protocol state (see [`crate::xds`]) or message layout (see
//! `proto::resources`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use lb_core::zone::{ZoneCapacity, spill_shares};
use lb_core::{EndpointSet, Health, PortRef, ServiceKey};
use proto::resources::{
    ClaOptions, ClusterOptions, LbPolicy, cluster_load_assignment, cluster_with, listener, pack,
    route_configuration,
};
use tracing::warn;

use crate::metrics::Metrics;
use crate::topology::{ServiceMeta, Topology};
use crate::xds::{ClientInfo, Lookup, Resource, ResourceSource, ResourceType, ResourceVersion};
use proto::xds::pb::google::protobuf::Any;

/// Settings that shape resources.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Shape locality weights per client zone.
    pub zone_aware: bool,
    /// Send UNHEALTHY endpoints (the index only includes them when asked).
    pub include_unhealthy: bool,
}

impl Default for SourceConfig {
    fn default() -> Self {
        Self {
            zone_aware: true,
            include_unhealthy: false,
        }
    }
}

/// Hands out one [`SnapshotSource`] per topology, so every stream reading the
/// same topology shares one encode cache.
#[derive(Debug)]
pub struct SourceProvider {
    config: SourceConfig,
    metrics: Arc<Metrics>,
    current: Mutex<Option<Arc<SnapshotSource>>>,
}

impl SourceProvider {
    /// A provider with nothing published yet.
    pub fn new(config: SourceConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            config,
            metrics,
            current: Mutex::new(None),
        }
    }

    /// [`SnapshotSource::cached`] of the latest topology's source.
    pub fn cached(&self) -> (usize, usize) {
        self.current
            .lock()
            .ok()
            .and_then(|c| c.as_ref().map(|s| s.cached()))
            .unwrap_or_default()
    }

    /// The source for `topology`; `None` (not synced yet) gives a source that
    /// answers "not ready" to everything, so early streams wait.
    pub fn source(&self, topology: Option<Arc<Topology>>) -> Arc<dyn ResourceSource + Send + Sync> {
        let Some(topology) = topology else {
            return Arc::new(NotReady);
        };
        let Ok(mut current) = self.current.lock() else {
            return Arc::new(SnapshotSource::new(
                topology,
                self.config.clone(),
                Arc::clone(&self.metrics),
            ));
        };
        match &*current {
            Some(s) if Arc::ptr_eq(&s.topology, &topology) => Arc::clone(s) as _,
            previous => {
                let fresh =
                    SnapshotSource::new(topology, self.config.clone(), Arc::clone(&self.metrics));
                // Unchanged resources are taken from the previous topology's
                // encodings instead of encoded again. One generation back only:
                // the previous source lets go of its own predecessor.
                if let Some(prev) = previous {
                    if let Ok(mut older) = prev.previous.lock() {
                        *older = None;
                    }
                    if let Ok(mut mine) = fresh.previous.lock() {
                        *mine = Some(Arc::clone(prev));
                    }
                }
                let fresh = Arc::new(fresh);
                *current = Some(Arc::clone(&fresh));
                fresh
            }
        }
    }
}

/// Before the first sync: nothing exists and nothing is missing.
#[derive(Debug)]
struct NotReady;

impl ResourceSource for NotReady {
    fn get(&self, _: ResourceType, _: &str, _: &ClientInfo) -> Lookup<Arc<Resource>> {
        Lookup::NotReady
    }

    fn names(&self, _: ResourceType, _: &ClientInfo) -> Option<Vec<String>> {
        None
    }
}

/// What a resource's bytes depend on besides the topology: type, name as
/// asked, and for CLAs the client's zone and whether it takes UNHEALTHY
/// endpoints. Everything else about a client is irrelevant to its resources.
type CacheKey = (ResourceType, String, ClientZone, bool);

/// A client's zone as far as a ClusterLoadAssignment's bytes depend on it.
///
/// The zone is the client's to choose (xDS `Node.locality`). Every zone no
/// endpoint in the cluster is in places endpoints the same way (the client
/// has no local capacity anywhere), so all of them share one cache entry:
/// a client inventing zones cannot mint entries.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ClientZone {
    /// Zone-unaware: not a CLA, zone awareness off, or no zone given.
    Ignored,
    /// A zone no endpoint of the topology is in.
    Elsewhere,
    /// A zone some endpoint of the topology is in.
    In(String),
}

/// The resources of one topology, encoded lazily and cached.
#[derive(Debug)]
pub struct SnapshotSource {
    topology: Arc<Topology>,
    config: SourceConfig,
    cache: Mutex<HashMap<CacheKey, Arc<Resource>>>,
    /// The source of the topology published before this one, whose cached
    /// resources are reused when their version is unchanged.
    previous: Mutex<Option<Arc<SnapshotSource>>>,
    /// Names already logged as missing in this topology: a client that keeps
    /// asking gets one log line per topology, not one per request. At most
    /// [`MISSING_LOGGED`] names: the names are the client's to choose.
    missing: Mutex<HashSet<(ResourceType, String)>>,
    /// Every zone an endpoint of the topology is in (zone-less endpoints as
    /// ""), computed when a zone-aware client first asks.
    zones: OnceLock<HashSet<String>>,
}

/// Missing names logged per topology at most; beyond it a client asking for
/// random names would grow the set without bound until the next publish.
const MISSING_LOGGED: usize = 1000;

impl SnapshotSource {
    /// A source over `topology`.
    pub fn new(topology: Arc<Topology>, config: SourceConfig, metrics: Arc<Metrics>) -> Self {
        metrics.set_state(
            "invalid_lb_policy_annotations",
            invalid_policy_annotations(&topology),
        );
        Self {
            topology,
            config,
            cache: Mutex::new(HashMap::new()),
            previous: Mutex::new(None),
            missing: Mutex::new(HashSet::new()),
            zones: OnceLock::new(),
        }
    }

    /// Resources encoded and cached for this topology (every client shape
    /// counted), and names logged as missing.
    pub fn cached(&self) -> (usize, usize) {
        let cache = self.cache.lock().map(|c| c.len()).unwrap_or_default();
        let missing = self.missing.lock().map(|m| m.len()).unwrap_or_default();
        (cache, missing)
    }

    /// Why `name` names no resource, for the operator's log.
    fn why_missing(&self, name: &str) -> &'static str {
        match name.parse::<ServiceKey>() {
            Err(_) => "not a service key (<service>.<namespace>:<port>)",
            Ok(key) if self.topology.service(&key).is_none() => {
                "no such Service in the watched namespaces"
            }
            Ok(_) => "the Service has no such port",
        }
    }

    /// The resource named `name` as this client shape sees it. Its version
    /// is computed from what it is made of before anything is encoded, so an
    /// unchanged resource is taken from the previous topology's cache.
    fn build(&self, key: &CacheKey) -> Option<Arc<Resource>> {
        let (ty, name, unhealthy) = (key.0, key.1.as_str(), key.3);
        // Outer `None`: zone-unaware; inner `None`: in no endpoint's zone.
        let zone = match &key.2 {
            ClientZone::Ignored => None,
            ClientZone::Elsewhere => Some(None),
            ClientZone::In(zone) => Some(Some(zone.as_str())),
        };
        let service: ServiceKey = name.parse().ok()?;
        let canonical = self.topology.resolve(&service)?;
        let meta = self.topology.service(&service)?;
        // The version hashes what the body is made of, never its bytes:
        // prost encodes protobuf maps (endpoint metadata) in hash order, so
        // bytes differ between processes for the same content.
        let (recipe, encode): (String, Box<dyn FnOnce() -> Any + '_>) = match ty {
            ResourceType::Listener => (String::new(), Box::new(|| pack(&listener(name)))),
            ResourceType::RouteConfiguration | ResourceType::Cluster => {
                let policy = self.policy(meta, &canonical);
                // Each version covers only what its resource is built from,
                // so a slow-start change does not re-push the routes.
                if ty == ResourceType::Cluster {
                    let options = self.cluster_options(meta, &canonical);
                    let recipe = format!("{policy:?}|{options:?}");
                    let encode = move || pack(&cluster_with(name, &policy, &options));
                    (recipe, Box::new(encode) as Box<dyn FnOnce() -> Any + '_>)
                } else {
                    let recipe = format!("{policy:?}");
                    let encode = move || pack(&route_configuration(name, &policy));
                    (recipe, Box::new(encode) as Box<dyn FnOnce() -> Any + '_>)
                }
            }
            ResourceType::ClusterLoadAssignment => {
                let all = self
                    .topology
                    .snapshot
                    .get(&canonical)
                    .cloned()
                    .unwrap_or_default();
                // Zone capacity counts not-serving endpoints even when they are
                // not sent: a zone that lost pods is degraded, not small.
                let mut placement = BTreeMap::new();
                // Ring hash multiplies locality weight into endpoint weight: per-zone
                // weights would map one key to different endpoints from different zones.
                let hashing = matches!(
                    self.policy(meta, &canonical),
                    LbPolicy::RingHash { .. } | LbPolicy::Maglev { .. }
                );
                if let (Some(zone), false) = (zone, hashing) {
                    placement = zone_placement(&all, zone);
                }
                // The version covers what is sent, so a change to a withheld
                // endpoint alone gives the same version and nothing is pushed.
                let sent = if unhealthy || all.health_counts().2 == 0 {
                    all
                } else {
                    EndpointSet::merge(
                        all.endpoints()
                            .iter()
                            .filter(|e| e.health != Health::Unhealthy)
                            .cloned()
                            .collect(),
                    )
                };
                let recipe = format!("{}|{unhealthy}|{placement:?}", sent.version());
                let encode = move || {
                    let mut opts = ClaOptions::default().with_unhealthy(unhealthy);
                    if !placement.is_empty() {
                        opts = opts.with_placement_map(placement);
                    }
                    pack(&cluster_load_assignment(name, &sent, &opts))
                };
                (recipe, Box::new(encode))
            }
        };
        let version = ResourceVersion::new(&format!(
            "{:016x}",
            lb_core::rng::hash_bytes(format!("{}|{name}|{recipe}", ty.short_name()).as_bytes())
        ));
        if let Some(reused) = self.reusable(key, &version) {
            return Some(reused);
        }
        Some(Arc::new(Resource::new(name, version, encode())))
    }

    /// The previous topology's resource for `key`, if it has this version.
    fn reusable(&self, key: &CacheKey, version: &ResourceVersion) -> Option<Arc<Resource>> {
        let previous = self.previous.lock().ok()?.clone()?;
        let cache = previous.cache.lock().ok()?;
        cache
            .get(key)
            .filter(|r| r.version() == version)
            .map(Arc::clone)
    }

    /// The service port's `eds.rs/lb-policy` (or `lb-policy.<port-name>`)
    /// annotation, if any.
    fn policy_annotation<'m>(meta: &'m ServiceMeta, key: &ServiceKey) -> Option<&'m String> {
        let port_name = meta
            .ports
            .iter()
            .find(|p| matches!(key.port(), PortRef::Number(n) if *n == p.port))
            .and_then(|p| p.name.clone());
        port_name
            .and_then(|n| meta.annotations.get(&format!("lb-policy.{n}")))
            .or_else(|| meta.annotations.get("lb-policy"))
    }

    /// The Cluster-only settings from the Service's annotations: the
    /// slow-start window and the lb-core policy name. Kept apart from
    /// [`Self::policy`] so the EDS path, which needs only the policy, neither
    /// parses nor warns about them.
    fn cluster_options(&self, meta: &ServiceMeta, key: &ServiceKey) -> ClusterOptions {
        ClusterOptions {
            slow_start_window: self.slow_start_window(meta, key),
            lb_core_policy: Self::policy_annotation(meta, key)
                .and_then(|v| v.trim().parse::<lb_core::Policy>().ok()),
        }
    }

    /// The service port's xDS policy from its annotations.
    fn policy(&self, meta: &ServiceMeta, key: &ServiceKey) -> LbPolicy {
        let Some(value) = Self::policy_annotation(meta, key) else {
            return LbPolicy::default();
        };
        let policy = match (
            value.parse::<LbPolicy>(),
            value.trim().parse::<lb_core::Policy>(),
        ) {
            (Ok(p), _) => p,
            (Err(_), Ok(p)) => LbPolicy::nearest(p),
            (Err(e), Err(_)) => {
                // Counted per topology in `invalid_policy_annotations`.
                warn!(service = %key, %e, "unknown eds.rs/lb-policy; using the default");
                return LbPolicy::default();
            }
        };
        match meta.annotations.get("hash-header") {
            Some(header) if policy.hash_header().is_none() => {
                match policy.clone().with_hash_header(header) {
                    Ok(p) => p,
                    Err(e) => {
                        warn!(service = %key, %e, "unusable eds.rs/hash-header; hashing without a header");
                        policy
                    }
                }
            }
            _ => policy,
        }
    }

    /// `eds.rs/slow-start-window` (`30s`, `2m`, ...); an unreadable value is
    /// logged and ignored.
    fn slow_start_window(&self, meta: &ServiceMeta, key: &ServiceKey) -> Option<Duration> {
        let value = meta.annotations.get("slow-start-window")?;
        match lb_core::duration::parse(value) {
            Ok(window) => Some(window),
            Err(e) => {
                warn!(service = %key, %e, "unusable eds.rs/slow-start-window; no slow start");
                None
            }
        }
    }
}

/// Services with an `eds.rs/lb-policy` (or per-port `lb-policy.<port>`)
/// annotation that names no policy: the `invalid_lb_policy_annotations`
/// gauge, recomputed for every topology so it falls back to 0 once fixed.
fn invalid_policy_annotations(topology: &Topology) -> i64 {
    let invalid =
        |v: &String| v.parse::<LbPolicy>().is_err() && v.trim().parse::<lb_core::Policy>().is_err();
    let count = topology
        .services
        .values()
        .filter(|meta| {
            meta.annotations
                .iter()
                .any(|(k, v)| (k == "lb-policy" || k.starts_with("lb-policy.")) && invalid(v))
        })
        .count();
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// Per-zone (weight, priority) for a client in `local`: zones with a share of
/// the client's traffic at priority 0, weighted by it (scaled to 1..=10000);
/// the rest at priority 1, a failover that takes traffic only if priority 0
/// has nothing healthy.
///
/// `local` is `None` for a client whose zone has no endpoint of the set.
pub fn zone_placement(
    set: &EndpointSet,
    local: Option<&str>,
) -> BTreeMap<String, (NonZeroU32, u32)> {
    let mut zones: BTreeMap<&str, ZoneCapacity> = BTreeMap::new();
    for e in set.endpoints() {
        let z = zones.entry(e.zone_or_empty()).or_default();
        let w = f64::from(e.weight.get());
        z.total += w;
        if e.health == Health::Healthy {
            z.healthy += w;
        }
    }
    let names: Vec<&str> = zones.keys().copied().collect();
    let caps: Vec<ZoneCapacity> = zones.values().copied().collect();
    let local_index = local.and_then(|local| names.iter().position(|z| *z == local));
    let Ok(shares) = spill_shares(local_index, &caps, None) else {
        return BTreeMap::new();
    };
    if shares.iter().all(|s| *s <= 0.0) {
        // Nothing healthy anywhere: leave the default placement alone.
        return BTreeMap::new();
    }
    names
        .iter()
        .zip(shares)
        .map(|(zone, share)| {
            let placement = if share > 0.0 {
                let weight = (share * 10_000.0).round().clamp(1.0, 10_000.0) as u32;
                (NonZeroU32::new(weight).unwrap_or(NonZeroU32::MIN), 0)
            } else {
                (NonZeroU32::MIN, 1)
            };
            ((*zone).to_owned(), placement)
        })
        .collect()
}

impl ResourceSource for SnapshotSource {
    fn get(&self, ty: ResourceType, name: &str, client: &ClientInfo) -> Lookup<Arc<Resource>> {
        let cla = ty == ResourceType::ClusterLoadAssignment;
        let zone = match client.zone.as_deref() {
            Some(zone) if cla && self.config.zone_aware => {
                let known = self.zones.get_or_init(|| {
                    self.topology
                        .snapshot
                        .services()
                        .flat_map(|(_, set)| set.endpoints().iter())
                        .map(|e| e.zone_or_empty().to_owned())
                        .collect()
                });
                if known.contains(zone) {
                    ClientZone::In(zone.to_owned())
                } else {
                    ClientZone::Elsewhere
                }
            }
            _ => ClientZone::Ignored,
        };
        let unhealthy = cla && (self.config.include_unhealthy || client.unhealthy_endpoints);
        let key = (ty, name.to_owned(), zone, unhealthy);
        if let Ok(cache) = self.cache.lock()
            && let Some(found) = cache.get(&key)
        {
            return Lookup::Found(Arc::clone(found));
        }
        match self.build(&key) {
            Some(resource) => {
                if let Ok(mut cache) = self.cache.lock() {
                    cache.insert(key, Arc::clone(&resource));
                }
                Lookup::Found(resource)
            }
            None => {
                let (first, last) = self
                    .missing
                    .lock()
                    .map(|mut m| {
                        if m.len() >= MISSING_LOGGED {
                            return (false, false);
                        }
                        let first = m.insert((ty, name.to_owned()));
                        (first, first && m.len() == MISSING_LOGGED)
                    })
                    .unwrap_or((false, false));
                if last {
                    tracing::info!(
                        limit = MISSING_LOGGED,
                        "clients asked for this many resources that do not exist; \
                         no more are logged until the next topology"
                    );
                }
                if first {
                    tracing::info!(
                        resource = name,
                        r#type = ty.short_name(),
                        node = %client.node_id,
                        reason = self.why_missing(name),
                        "a client asked for a resource that does not exist"
                    );
                }
                Lookup::DoesNotExist
            }
        }
    }

    fn names(&self, ty: ResourceType, _client: &ClientInfo) -> Option<Vec<String>> {
        match ty {
            ResourceType::Listener | ResourceType::Cluster => Some(
                self.topology
                    .snapshot
                    .services()
                    .map(|(k, _)| k.to_string())
                    .collect(),
            ),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_core::Endpoint;
    use proto::xds::pb::envoy::config::cluster::v3::{Cluster, cluster};
    use std::net::SocketAddr;

    fn set(zones: &[(&str, Health)]) -> EndpointSet {
        EndpointSet::merge(
            zones
                .iter()
                .enumerate()
                .map(|(i, (z, h))| {
                    Endpoint::new(SocketAddr::from(([10, 0, 0, i as u8 + 1], 80)))
                        .with_zone(*z)
                        .with_health(*h)
                })
                .collect(),
        )
    }

    #[test]
    fn a_healthy_local_zone_keeps_everything_local() {
        use Health::Healthy as H;
        let p = zone_placement(&set(&[("a", H), ("a", H), ("b", H), ("b", H)]), Some("a"));
        assert_eq!(p["a"], (NonZeroU32::new(10_000).unwrap(), 0));
        assert_eq!(p["b"].1, 1, "b is failover only: {p:?}");
    }

    #[test]
    fn a_degraded_local_zone_spills_in_proportion() {
        use Health::{Healthy as H, Unhealthy as U};
        // a has 1 of 3 healthy, b has 3 of 3: a keeps what it can, spills the rest to b.
        let p = zone_placement(
            &set(&[("a", H), ("a", U), ("a", U), ("b", H), ("b", H), ("b", H)]),
            Some("a"),
        );
        assert_eq!(p["a"].1, 0);
        assert_eq!(p["b"].1, 0);
        let (wa, wb) = (f64::from(p["a"].0.get()), f64::from(p["b"].0.get()));
        let local = wa / (wa + wb);
        // u_a = 1/4, c_a = 1/2: local share = 0.5.
        assert!((local - 0.5).abs() < 0.01, "local share {local}");
    }

    /// A source over one Service `echo.demo:8080` with these endpoints.
    fn source(endpoints: &[(&str, Health)], config: SourceConfig) -> SnapshotSource {
        annotated(endpoints, config, &[])
    }

    /// [`source`], the Service carrying these `eds.rs/` annotations (keys
    /// without the prefix, as the index stores them).
    fn annotated(
        endpoints: &[(&str, Health)],
        config: SourceConfig,
        annotations: &[(&str, &str)],
    ) -> SnapshotSource {
        annotated_in(endpoints, config, annotations, Arc::new(Metrics::new()))
    }

    /// [`annotated`], reporting into `metrics`.
    fn annotated_in(
        endpoints: &[(&str, Health)],
        config: SourceConfig,
        annotations: &[(&str, &str)],
        metrics: Arc<Metrics>,
    ) -> SnapshotSource {
        let key: ServiceKey = "echo.demo:8080".parse().unwrap();
        let topology = Topology {
            snapshot: lb_core::Snapshot::new([(key, set(endpoints))]),
            services: [(
                ("demo".to_owned(), "echo".to_owned()),
                ServiceMeta {
                    ports: vec![crate::topology::ServicePort {
                        name: Some("grpc".to_owned()),
                        port: 8080,
                    }],
                    annotations: annotations
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                },
            )]
            .into(),
        };
        SnapshotSource::new(Arc::new(topology), config, metrics)
    }

    /// The `ty` resource of `echo.demo:8080`, as a grpc-go client gets it.
    fn echo(source: &SnapshotSource, ty: ResourceType) -> Arc<Resource> {
        let Lookup::Found(r) = source.get(ty, "echo.demo:8080", &ClientInfo::new("grpc-go", None))
        else {
            panic!("echo.demo:8080 exists");
        };
        r
    }

    fn cluster_of(source: &SnapshotSource) -> (Cluster, String) {
        let r = echo(source, ResourceType::Cluster);
        (
            proto::resources::unpack(&r.body()).unwrap(),
            r.version().to_string(),
        )
    }

    #[test]
    fn lb_core_policies_and_slow_start_reach_the_cluster() {
        use proto::xds::pb::google::protobuf::value::Kind;
        let eps = [("a", Health::Healthy)];
        let (plain, plain_version) = cluster_of(&source(&eps, SourceConfig::default()));
        assert_eq!((plain.metadata, plain.lb_config), (None, None));

        let src = annotated(
            &eps,
            SourceConfig::default(),
            &[("lb-policy", "peak-ewma"), ("slow-start-window", "45s")],
        );
        let (c, version) = cluster_of(&src);
        assert_ne!(version, plain_version, "the version covers the options");
        let meta = &c.metadata.unwrap().filter_metadata["eds.rs"];
        assert_eq!(
            meta.fields["lb-policy"].kind,
            Some(Kind::StringValue("peak-ewma".into()))
        );
        // Stock clients get least request, the nearest they run.
        assert_eq!(c.lb_policy, cluster::LbPolicy::LeastRequest as i32);
        let Some(cluster::LbConfig::LeastRequestLbConfig(legacy)) = c.lb_config else {
            panic!("no legacy slow start: {:?}", c.lb_config);
        };
        assert_eq!(
            legacy
                .slow_start_config
                .unwrap()
                .slow_start_window
                .unwrap()
                .seconds,
            45
        );

        // A window that does not parse is dropped, not the Cluster.
        let bad = annotated(
            &eps,
            SourceConfig::default(),
            &[("lb-policy", "round-robin"), ("slow-start-window", "soon")],
        );
        let (c, _) = cluster_of(&bad);
        assert_eq!(c.lb_config, None);
        assert_eq!(c.lb_policy, cluster::LbPolicy::RoundRobin as i32);
        assert_eq!(
            c.metadata.unwrap().filter_metadata["eds.rs"].fields["lb-policy"].kind,
            Some(Kind::StringValue("round-robin".into()))
        );

        // The slow-start window is the Cluster's alone: the routes keep
        // their version.
        let route = |src: &SnapshotSource| {
            echo(src, ResourceType::RouteConfiguration)
                .version()
                .to_string()
        };
        let windowed = |w: &str| {
            annotated(
                &eps,
                SourceConfig::default(),
                &[("lb-policy", "round-robin"), ("slow-start-window", w)],
            )
        };
        let (a, b) = (windowed("10s"), windowed("20s"));
        assert_ne!(cluster_of(&a).1, cluster_of(&b).1);
        assert_eq!(route(&a), route(&b));

        // xDS-only names carry no lb-core metadata: maglev means ring hash
        // to lb-client through the list, as to gRPC.
        let (c, _) = cluster_of(&annotated(
            &eps,
            SourceConfig::default(),
            &[("lb-policy", "maglev")],
        ));
        assert_eq!(c.metadata, None);
    }

    #[test]
    fn the_invalid_policy_gauge_counts_services_and_clears() {
        let eps = [("a", Health::Healthy)];
        // One registry across topologies, as in the server.
        let metrics = Arc::new(Metrics::new());
        let gauge_after = |annotations: &[(&str, &str)]| {
            annotated_in(
                &eps,
                SourceConfig::default(),
                annotations,
                Arc::clone(&metrics),
            );
            metrics
                .encode()
                .lines()
                .find(|l| l.contains("invalid_lb_policy_annotations"))
                .map(str::to_owned)
                .expect("the gauge is exported")
        };
        let line = gauge_after(&[("lb-policy", "fastest")]);
        assert!(line.ends_with(" 1"), "{line}");
        // A per-port annotation counts too; lb-core names are valid.
        let line = gauge_after(&[("lb-policy", "peak-ewma"), ("lb-policy.grpc", "nope")]);
        assert!(line.ends_with(" 1"), "{line}");
        let line = gauge_after(&[("lb-policy", "peak-ewma")]);
        assert!(line.ends_with(" 0"), "fixed: {line}");
    }

    fn cla(source: &SnapshotSource, client: &ClientInfo) -> (proto::resources::ParsedCla, String) {
        use prost::Message;
        let Lookup::Found(r) = source.get(
            ResourceType::ClusterLoadAssignment,
            "echo.demo:8080",
            client,
        ) else {
            panic!("echo.demo:8080 exists");
        };
        let cla = proto::xds::pb::envoy::config::endpoint::v3::ClusterLoadAssignment::decode(
            r.body().value.as_slice(),
        )
        .unwrap();
        (
            proto::resources::parse_cla(&cla).unwrap(),
            r.version().to_string(),
        )
    }

    #[test]
    fn withheld_endpoints_still_count_as_zone_capacity() {
        use Health::{Healthy as H, Unhealthy as U};
        // Zone a lost 2 of its 3 pods (not ready), b has all 3.
        let eps = [("a", H), ("a", U), ("a", U), ("b", H), ("b", H), ("b", H)];
        let src = source(&eps, SourceConfig::default());

        // A stock client in a: only what it can use is sent...
        let stock = ClientInfo::new("grpc-go", Some("a"));
        let (parsed, _) = cla(&src, &stock);
        assert_eq!(parsed.endpoints.len(), 4, "{:?}", parsed.endpoints);
        assert_eq!(parsed.endpoints.health_counts(), (4, 0, 0));
        // ...yet a spills half its traffic, as a degraded zone should
        // (u_a = 1/4, c_a = 1/2), instead of looking small and staying local.
        let weight = |zone: &str| {
            let l = parsed.localities.iter().find(|l| l.zone == zone).unwrap();
            assert_eq!(l.priority, 0, "{zone} takes traffic");
            f64::from(l.weight.get())
        };
        let local = weight("a") / (weight("a") + weight("b"));
        assert!((local - 0.5).abs() < 0.01, "local share {local}");

        // lb-client asks for the not-serving ones and gets them, UNHEALTHY.
        let lb = ClientInfo {
            unhealthy_endpoints: true,
            ..ClientInfo::new("lb-client", Some("a"))
        };
        let (parsed, _) = cla(&src, &lb);
        assert_eq!(parsed.endpoints.health_counts(), (4, 0, 2));

        // The operator's flag sends them to everyone.
        let everyone = source(
            &eps,
            SourceConfig {
                include_unhealthy: true,
                ..SourceConfig::default()
            },
        );
        assert_eq!(
            cla(&everyone, &stock).0.endpoints.health_counts(),
            (4, 0, 2)
        );
    }

    #[test]
    fn a_withheld_endpoint_changing_alone_keeps_the_version() {
        use Health::{Draining as D, Healthy as H, Unhealthy as U};
        // No client zone, so no placement: what is sent is the same in both
        // topologies and so must be the version (nothing is pushed).
        // (`set` numbers addresses by position: the third is the one that changes.)
        let before = source(&[("a", H), ("b", H), ("a", U)], SourceConfig::default());
        let after = source(&[("a", H), ("b", H), ("a", D)], SourceConfig::default());
        let no_zone = ClientInfo::new("n", None);
        let (b, vb) = cla(&before, &no_zone);
        let (a, va) = cla(&after, &no_zone);
        assert_eq!(b.endpoints.len(), 2);
        assert_eq!(a.endpoints.len(), 3, "the DRAINING endpoint is sent");
        assert_ne!(vb, va);
        let still = source(&[("a", H), ("b", H)], SourceConfig::default());
        assert_eq!(cla(&still, &no_zone).1, vb, "an UNHEALTHY endpoint removed");
    }

    #[test]
    fn invented_zones_and_names_cost_one_entry_each_at_most() {
        use Health::Healthy as H;
        let src = source(&[("a", H), ("b", H)], SourceConfig::default());
        let in_a = cla(&src, &ClientInfo::new("c", Some("a")));
        let nowhere = cla(&src, &ClientInfo::new("c", Some("zone-0")));
        for i in 1..1000 {
            let zone = format!("zone-{i}");
            let (parsed, version) = cla(&src, &ClientInfo::new("c", Some(&zone)));
            assert_eq!(version, nowhere.1, "{zone}");
            assert_eq!(parsed.localities, nowhere.0.localities, "{zone}");
        }
        assert_ne!(in_a.1, nowhere.1, "a real zone is placed as such");
        // a, and every zone without endpoints.
        assert_eq!(src.cached(), (2, 0));
        for i in 0..5000 {
            let name = format!("nothing-{i}.demo:8080");
            let asked = src.get(
                ResourceType::ClusterLoadAssignment,
                &name,
                &ClientInfo::new("c", None),
            );
            assert!(matches!(asked, Lookup::DoesNotExist), "{name}");
        }
        assert_eq!(src.cached(), (2, MISSING_LOGGED));
    }

    #[test]
    fn nothing_healthy_leaves_placement_alone() {
        assert!(zone_placement(&set(&[("a", Health::Draining)]), Some("a")).is_empty());
    }
}

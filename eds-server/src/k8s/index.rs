//! The Kubernetes index: Services, EndpointSlices and (optionally) Pods in,
//! a [`Topology`] out, as plain synchronous code.
//!
//! ```text
//!  watcher events (apply / delete / reset)        Index                          topology()
//!  Service       --parse--> services (ns, svc)       -> ServiceRec  ------------+
//!  EndpointSlice --parse--> slices   (ns, svc)       -> {slice -> SliceRec} ----+--> Topology
//!  Pod (opt.)    --parse--> pods     ns -> pod       -> PodRec (labels, times) -+    (one EndpointSet
//!                           seen     (ns, svc)       -> first-seen ready /          per Service port)
//!                                                       terminating times
//! ```
//!
//! Every object is parsed once, when it arrives, into a small record holding
//! only what the topology needs; whatever is malformed (missing names, port 0,
//! duplicate ports, FQDN slices, unparsable addresses) is skipped, counted in
//! [`IndexStats`] and logged at debug level. Nothing here panics on data from
//! Kubernetes. The rules (DESIGN.md, "Endpoint states"):
//!
//! - a slice belongs to the Service named by its `kubernetes.io/service-name`
//!   label; all slices of a Service are merged and addresses deduplicated
//!   (kubernetes/kubernetes#114144), keeping the best state;
//! - one endpoint set per Service port, keyed `<svc>.<ns>:<service-port>`;
//!   the endpoint port comes from the slice port of the same name and
//!   protocol, per slice, because the EndpointSlice controller resolves a named
//!   `targetPort` per pod and pods with different numbers land in different
//!   slices;
//! - `ready` true or nil: HEALTHY; `serving` and `terminating`: DRAINING;
//!   anything else UNHEALTHY. The index keeps not-serving endpoints so that
//!   a zone that lost pods looks degraded rather than small (per-zone
//!   capacity, DESIGN.md "per-client zone awareness"); whether a client is
//!   sent them is decided per client when resources are built
//!   (`crate::source`).
//!
//! What it is not: no watcher, no async, no clock. Times that depend on "now"
//! (the first time an endpoint was seen ready or terminating, used when the
//! Pod is not known) are computed from the `now` passed to the slice calls, so
//! tests are deterministic. When to publish, and the mass-drop guard, live in
//! [`super::publish`]; Service label selectors and namespace scoping are the
//! watcher's business.
//!
//! One caveat worth knowing: first-seen times differ between replicas that
//! started at different moments, and so do content versions of sets that use
//! them. Watching Pods ([`IndexConfig::watch_pods`]) replaces them with times
//! stored in the API (the Ready condition's `lastTransitionTime` and the Pod's
//! `deletionTimestamp`), which every replica agrees on.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::{self as discovery, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use lb_core::{Endpoint, EndpointSet, Health, PortRef, ServiceKey, Snapshot};
use tracing::debug;

use crate::topology::{ServiceMeta, ServicePort, Topology};

/// The label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Prefix of the Service annotations copied into [`ServiceMeta::annotations`].
pub const ANNOTATION_PREFIX: &str = "eds.rs/";
/// Service annotation listing the pod labels to publish, comma-separated.
pub const POD_LABELS_ANNOTATION: &str = "eds.rs/pod-labels";

/// How the index maps Kubernetes state to endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexConfig {
    /// Pod labels published for every Service, in addition to each Service's
    /// `eds.rs/pod-labels` annotation.
    pub pod_labels: Vec<String>,
    /// Use Pods for `ready_since` and `drain_deadline` even when no labels are
    /// wanted (see [`Index::wants_pods`]).
    pub watch_pods: bool,
    /// Drain deadline of a terminating endpoint whose Pod is not known:
    /// first seen terminating plus this. Kubernetes' default
    /// `terminationGracePeriodSeconds` is 30 s.
    pub default_drain_grace: Duration,
}

impl Default for IndexConfig {
    fn default() -> Self {
        Self {
            pod_labels: Vec::new(),
            watch_pods: false,
            default_drain_grace: Duration::from_secs(30),
        }
    }
}

/// What the index skipped on the way in, counted per event (a skipped object
/// applied twice counts twice). Exposed as metrics by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IndexStats {
    /// Services without name or namespace, or with a name that is no valid
    /// service key.
    pub invalid_services: u64,
    /// ExternalName Services (they have no endpoints to balance).
    pub external_name_services: u64,
    /// Service ports left out: number outside 1..=65535, duplicate number or
    /// name, or not TCP.
    pub skipped_service_ports: u64,
    /// EndpointSlices without name or namespace.
    pub invalid_slices: u64,
    /// EndpointSlices without the `kubernetes.io/service-name` label.
    pub slices_without_service: u64,
    /// EndpointSlices of addressType FQDN (gRPC clients need IPs).
    pub fqdn_slices: u64,
    /// EndpointSlices of an addressType other than IPv4, IPv6 and FQDN.
    pub unknown_address_type_slices: u64,
    /// Slice ports left out: number outside 1..=65535, or duplicate name.
    pub skipped_slice_ports: u64,
    /// Slice endpoints left out: no address, or one that is not an IP of the
    /// slice's family.
    pub skipped_endpoints: u64,
    /// Pods without name or namespace.
    pub invalid_pods: u64,
}

/// Counts from one build of the topology (gauges: they describe the state).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BuildStats {
    /// Services in the topology.
    pub services: usize,
    /// Service keys (Service ports) in the topology.
    pub keys: usize,
    /// Ready endpoints.
    pub healthy: usize,
    /// Serving and terminating endpoints.
    pub draining: usize,
    /// Endpoints neither ready nor draining: kept for zone capacity, sent only
    /// to clients that ask for them.
    pub unhealthy: usize,
    /// Addresses that appeared more than once for one key and were merged.
    pub duplicates: usize,
    /// (slice, Service port) pairs where the slice had no port for the
    /// Service port, so its endpoints do not serve that port.
    pub unmatched_slice_ports: usize,
    /// Services without a selector and without slices, left out.
    pub services_without_slices: usize,
}

impl BuildStats {
    /// Adds another build's (one Service's) counts to these.
    fn add(&mut self, other: &BuildStats) {
        self.services += other.services;
        self.keys += other.keys;
        self.healthy += other.healthy;
        self.draining += other.draining;
        self.unhealthy += other.unhealthy;
        self.duplicates += other.duplicates;
        self.unmatched_slice_ports += other.unmatched_slice_ports;
        self.services_without_slices += other.services_without_slices;
    }
}

/// An object's `(namespace, name)`.
pub type ObjKey = (String, String);

/// The port protocol when none is given, as the API server defaults it.
const TCP: &str = "TCP";

/// A Service as the index keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ServiceRec {
    /// TCP ports with valid, unique numbers and names, in spec order.
    ports: Vec<PortRec>,
    /// Whether the Service selects pods; a Service without one counts only
    /// when it has slices (mirrored or managed by someone else).
    has_selector: bool,
    annotations: BTreeMap<String, String>,
    pod_labels: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PortRec {
    /// `""` when unnamed; the EndpointSlice controller writes `""` too.
    name: String,
    port: u16,
    /// Only used when a matching slice port carries no number.
    target: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct SliceRec {
    ports: Vec<SlicePortRec>,
    endpoints: Vec<EndpointRec>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct SlicePortRec {
    name: String,
    protocol: String,
    /// `None`: the slice does not say (allowed by the API for non-Service
    /// slices); the Service's numeric target port is used then.
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct EndpointRec {
    ip: IpAddr,
    state: State,
    terminating: bool,
    zone: Option<String>,
    node: Option<String>,
    pod: Option<String>,
}

/// Endpoint state from its conditions, best first (merging keeps the minimum).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum State {
    Ready,
    Draining,
    NotServing,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PodRec {
    /// Only the labels some Service wants (see `Index::wanted_labels`).
    labels: BTreeMap<String, String>,
    /// `lastTransitionTime` of the Ready condition while it is True; after it
    /// turns False, the last such time is kept (see [`Index::apply_pod`]).
    ready_since: Option<SystemTime>,
    /// `deletionTimestamp`: the API server sets it to the deletion request
    /// time plus the grace period, so it already is the drain deadline.
    deletion: Option<SystemTime>,
}

/// When the index first saw an endpoint ready and terminating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Seen {
    ready: Option<SystemTime>,
    terminating: Option<SystemTime>,
}

/// An endpoint across slices: its IP and pod, so a reused IP starts afresh.
type EndpointId = (IpAddr, Option<String>);

/// Why an object was left out; the message is what the debug log says.
#[derive(Debug, thiserror::Error)]
enum Ignored {
    #[error("{kind} without name or namespace")]
    NoName { kind: &'static str },
    #[error("Service {0}/{1}: name is not a valid service key: {2}")]
    BadServiceName(String, String, lb_core::KeyError),
    #[error("Service {0}/{1} is of type ExternalName")]
    ExternalName(String, String),
    #[error("EndpointSlice {0}/{1} has no {SERVICE_NAME_LABEL} label")]
    NoServiceLabel(String, String),
    #[error("EndpointSlice {0}/{1} has addressType FQDN; gRPC clients need IP addresses")]
    Fqdn(String, String),
    #[error("EndpointSlice {0}/{1} has unknown addressType {2:?}")]
    AddressType(String, String, String),
}

/// Services, EndpointSlices and Pods, indexed for building a [`Topology`].
///
/// Every mutator returns whether the index changed, so the caller can skip
/// telling the publisher about updates that change nothing the index keeps
/// (most Pod status updates, for example).
#[derive(Debug, Clone)]
pub struct Index {
    config: IndexConfig,
    services: BTreeMap<ObjKey, ServiceRec>,
    /// Slices grouped by the Service they belong to: (ns, service) -> name -> slice.
    slices: BTreeMap<ObjKey, BTreeMap<String, SliceRec>>,
    /// (ns, slice) -> service, to find a slice's group on delete.
    slice_owner: BTreeMap<ObjKey, String>,
    /// ns -> pod name -> record.
    pods: BTreeMap<String, BTreeMap<String, PodRec>>,
    /// (ns, service) -> endpoint -> first-seen times.
    seen: BTreeMap<ObjKey, BTreeMap<EndpointId, Seen>>,
    /// Union of the configured labels and every Service's annotation.
    wanted_labels: BTreeSet<String>,
    pod_resync: bool,
    stats: IndexStats,
    /// What the last build produced per Service, and what changed since.
    built: Built,
}

/// The last build's output per Service, reused for Services nothing touched
/// since: one change costs one Service's rebuild, not the whole cluster's,
/// and unchanged endpoint sets are shared between successive topologies
/// (an [`EndpointSet`] clone is a reference count), so a push does not hold
/// two copies of the cluster.
///
/// Invalidation is by marking, in every mutator: the Service's own key for
/// Service and slice changes (first-seen times live with the slices), its
/// namespace for Pod changes, everything for resets and for a change of the
/// wanted pod labels. Tests compare every build with one from scratch.
#[derive(Debug, Default)]
struct BuildCache {
    groups: BTreeMap<ObjKey, BuiltGroup>,
    dirty: BTreeSet<ObjKey>,
    dirty_namespaces: BTreeSet<String>,
    dirty_all: bool,
}

/// The cache behind a lock, so that building takes `&self`.
#[derive(Debug, Default)]
struct Built(std::sync::Mutex<BuildCache>);

impl Clone for Built {
    /// A cloned index starts with an empty cache: it builds everything once.
    fn clone(&self) -> Self {
        Built::default()
    }
}

/// One Service's share of a build.
#[derive(Debug, Clone)]
struct BuiltGroup {
    /// `None` when the Service is left out (no selector and no slices).
    meta: Option<ServiceMeta>,
    sets: Vec<(ServiceKey, EndpointSet)>,
    stats: BuildStats,
}

impl Index {
    /// An empty index.
    pub fn new(mut config: IndexConfig) -> Self {
        config.pod_labels = config
            .pod_labels
            .iter()
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty())
            .collect();
        let wanted_labels = config.pod_labels.iter().cloned().collect();
        Self {
            config,
            services: BTreeMap::new(),
            slices: BTreeMap::new(),
            slice_owner: BTreeMap::new(),
            pods: BTreeMap::new(),
            seen: BTreeMap::new(),
            wanted_labels,
            pod_resync: false,
            stats: IndexStats::default(),
            built: Built::default(),
        }
    }

    /// Marks one Service for rebuilding.
    fn touch(&mut self, key: &ObjKey) {
        if let Ok(cache) = self.built.0.get_mut() {
            cache.dirty.insert(key.clone());
        }
    }

    /// Marks every Service of a namespace for rebuilding (its Pods changed).
    fn touch_namespace(&mut self, ns: &str) {
        if let Ok(cache) = self.built.0.get_mut() {
            cache.dirty_namespaces.insert(ns.to_owned());
        }
    }

    /// Forgets what earlier builds produced: the next build is a full one.
    /// For benchmarks that time full rebuilds; the server never needs it.
    pub fn forget_builds(&mut self) {
        self.touch_all();
    }

    /// Marks everything for rebuilding.
    fn touch_all(&mut self) {
        if let Ok(cache) = self.built.0.get_mut() {
            cache.dirty_all = true;
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &IndexConfig {
        &self.config
    }

    /// What was skipped so far.
    pub fn stats(&self) -> IndexStats {
        self.stats
    }

    // ---- Services ----------------------------------------------------------

    /// A Service was created or changed.
    pub fn apply_service(&mut self, svc: &Service) -> bool {
        let Some(key) = self.object_key(&svc.metadata, "Service") else {
            return false;
        };
        let changed = match parse_service(&key, svc, &mut self.stats) {
            Ok(rec) => insert_if_changed(&mut self.services, key.clone(), rec),
            Err(why) => {
                self.count(&why);
                self.services.remove(&key).is_some()
            }
        };
        if changed {
            self.touch(&key);
            self.refresh_wanted_labels();
        }
        changed
    }

    /// A Service was deleted: its keys leave the topology. Its slices stay
    /// until they are deleted too (the garbage collector removes them), so a
    /// Service recreated under the same name finds them again.
    pub fn delete_service(&mut self, svc: &Service) -> bool {
        let Some(key) = self.object_key(&svc.metadata, "Service") else {
            return false;
        };
        self.delete_service_key(&key)
    }

    /// [`Index::delete_service`] by `(namespace, name)`: a re-list knows
    /// only the keys of what vanished.
    pub fn delete_service_key(&mut self, key: &ObjKey) -> bool {
        let changed = self.services.remove(key).is_some();
        if changed {
            self.touch(key);
            self.refresh_wanted_labels();
        }
        changed
    }

    /// The full list of Services after a watch (re)start replaces everything
    /// known about Services.
    pub fn reset_services(&mut self, services: Vec<Service>) -> bool {
        let mut fresh = BTreeMap::new();
        for svc in &services {
            let Some(key) = self.object_key(&svc.metadata, "Service") else {
                continue;
            };
            match parse_service(&key, svc, &mut self.stats) {
                Ok(rec) => {
                    fresh.insert(key, rec);
                }
                Err(why) => self.count(&why),
            }
        }
        let changed = fresh != self.services;
        self.services = fresh;
        if changed {
            self.touch_all();
            self.refresh_wanted_labels();
        }
        changed
    }

    // ---- EndpointSlices ----------------------------------------------------

    /// An EndpointSlice was created or changed. `now` is when the event was
    /// seen; it dates endpoints first seen ready or terminating.
    pub fn apply_slice(&mut self, slice: &EndpointSlice, now: SystemTime) -> bool {
        let Some((ns, name)) = self.object_key(&slice.metadata, "EndpointSlice") else {
            return false;
        };
        match parse_slice(&ns, &name, slice, &mut self.stats) {
            Ok((service, rec)) => {
                let mut changed = false;
                // A slice whose service label changed moves to its new group.
                let old_owner = self.slice_owner.get(&(ns.clone(), name.clone())).cloned();
                if let Some(old) = old_owner
                    && old != service
                {
                    changed |= self.remove_slice(&ns, &name, now);
                }
                let group_key = (ns.clone(), service.clone());
                let group = self.slices.entry(group_key.clone()).or_default();
                changed |= insert_if_changed(group, name.clone(), rec);
                self.slice_owner.insert((ns, name), service);
                changed |= self.refresh_seen(&group_key, now);
                if changed {
                    self.touch(&group_key);
                }
                changed
            }
            Err(why) => {
                self.count(&why);
                // Whatever was stored under this name no longer applies.
                self.remove_slice(&ns, &name, now)
            }
        }
    }

    /// An EndpointSlice was deleted.
    pub fn delete_slice(&mut self, slice: &EndpointSlice, now: SystemTime) -> bool {
        let Some((ns, name)) = self.object_key(&slice.metadata, "EndpointSlice") else {
            return false;
        };
        self.remove_slice(&ns, &name, now)
    }

    /// [`Index::delete_slice`] by `(namespace, name)`.
    pub fn delete_slice_key(&mut self, (ns, name): &ObjKey, now: SystemTime) -> bool {
        self.remove_slice(ns, name, now)
    }

    /// The full list of EndpointSlices after a watch (re)start.
    pub fn reset_slices(&mut self, slices: Vec<EndpointSlice>, now: SystemTime) -> bool {
        let mut groups: BTreeMap<ObjKey, BTreeMap<String, SliceRec>> = BTreeMap::new();
        let mut owners = BTreeMap::new();
        for slice in &slices {
            let Some((ns, name)) = self.object_key(&slice.metadata, "EndpointSlice") else {
                continue;
            };
            match parse_slice(&ns, &name, slice, &mut self.stats) {
                Ok((service, rec)) => {
                    // A name listed twice (it cannot be, but be robust):
                    // the later one wins, as an apply would.
                    if let Some(old) = owners.insert((ns.clone(), name.clone()), service.clone())
                        && let Some(group) = groups.get_mut(&(ns.clone(), old))
                    {
                        group.remove(&name);
                    }
                    groups.entry((ns, service)).or_default().insert(name, rec);
                }
                Err(why) => self.count(&why),
            }
        }
        groups.retain(|_, g| !g.is_empty());
        let mut changed = groups != self.slices;
        let touched: BTreeSet<ObjKey> = self
            .slices
            .keys()
            .chain(groups.keys())
            .chain(self.seen.keys())
            .cloned()
            .collect();
        self.slices = groups;
        self.slice_owner = owners;
        for key in &touched {
            changed |= self.refresh_seen(key, now);
        }
        if changed {
            self.touch_all();
        }
        changed
    }

    fn remove_slice(&mut self, ns: &str, name: &str, now: SystemTime) -> bool {
        let Some(service) = self.slice_owner.remove(&(ns.to_owned(), name.to_owned())) else {
            return false;
        };
        let group_key = (ns.to_owned(), service);
        let mut changed = false;
        if let Some(group) = self.slices.get_mut(&group_key) {
            changed = group.remove(name).is_some();
            if group.is_empty() {
                self.slices.remove(&group_key);
            }
        }
        changed |= self.refresh_seen(&group_key, now);
        if changed {
            self.touch(&group_key);
        }
        changed
    }

    /// Brings the first-seen times of one Service's endpoints up to date with
    /// its slices: started when first seen, kept while the state lasts,
    /// forgotten when it ends (a pod that becomes ready again starts afresh).
    fn refresh_seen(&mut self, group_key: &ObjKey, now: SystemTime) -> bool {
        let mut merged: BTreeMap<EndpointId, (State, bool)> = BTreeMap::new();
        for slice in self
            .slices
            .get(group_key)
            .into_iter()
            .flat_map(|g| g.values())
        {
            for ep in &slice.endpoints {
                let entry = merged
                    .entry((ep.ip, ep.pod.clone()))
                    .or_insert((ep.state, ep.terminating));
                entry.0 = entry.0.min(ep.state);
                entry.1 |= ep.terminating;
            }
        }
        let old = self.seen.remove(group_key).unwrap_or_default();
        let mut fresh = BTreeMap::new();
        for (id, (state, terminating)) in merged {
            let prev = old.get(&id).copied().unwrap_or_default();
            let seen = Seen {
                ready: match state {
                    State::Ready => Some(prev.ready.unwrap_or(now)),
                    // Keep when it was ready before it started draining;
                    // first seen draining means we never saw it ready.
                    State::Draining => prev.ready,
                    State::NotServing => None,
                },
                terminating: terminating.then(|| prev.terminating.unwrap_or(now)),
            };
            if seen != Seen::default() {
                fresh.insert(id, seen);
            }
        }
        let changed = fresh != old;
        if !fresh.is_empty() {
            self.seen.insert(group_key.clone(), fresh);
        }
        changed
    }

    // ---- Pods --------------------------------------------------------------

    /// Whether the watcher should feed Pods: labels are wanted or the
    /// configuration asks for Pod-based times.
    pub fn wants_pods(&self) -> bool {
        self.config.watch_pods || !self.wanted_labels.is_empty()
    }

    /// The pod label keys the index keeps (configured ones plus every
    /// Service's `eds.rs/pod-labels`).
    pub fn wanted_labels(&self) -> &BTreeSet<String> {
        &self.wanted_labels
    }

    /// True once after a Service asked for a pod label the index did not
    /// keep before. Pods seen earlier were stored without it, so the caller
    /// should (re)start its Pod watch, whose initial list ends in
    /// [`Index::reset_pods`].
    pub fn take_pod_resync(&mut self) -> bool {
        std::mem::take(&mut self.pod_resync)
    }

    /// A Pod was created or changed. Only the wanted labels, the Ready
    /// condition's transition time and the deletion time are kept.
    pub fn apply_pod(&mut self, pod: &Pod) -> bool {
        self.apply_pod_facts(&PodFacts::of(pod))
    }

    /// [`Index::apply_pod`] for facts taken on arrival (what the watch holds).
    pub fn apply_pod_facts(&mut self, pod: &PodFacts) -> bool {
        let Some((ns, name)) = self.pod_key(pod) else {
            return false;
        };
        let mut rec = pod.rec(&self.wanted_labels);
        let pods = self.pods.entry(ns.clone()).or_default();
        // A Pod's Ready=False usually arrives before the EndpointSlice that
        // withdraws it. Dropping its ready time then would change the still
        // ready endpoint's `ready_since` and push a metadata-only update that
        // opens a coalescing window just before the real change (measured:
        // +100 ms to every not-ready propagation). Keep the last ready time;
        // the slice decides health, and a Pod ready again gets a new time.
        if rec.ready_since.is_none()
            && let Some(old) = pods.get(&name)
        {
            rec.ready_since = old.ready_since;
        }
        let changed = insert_if_changed(pods, name, rec);
        if changed {
            self.touch_namespace(&ns);
        }
        changed
    }

    /// A Pod was deleted.
    pub fn delete_pod(&mut self, pod: &Pod) -> bool {
        self.delete_pod_facts(&PodFacts::of(pod))
    }

    /// [`Index::delete_pod`] for facts taken on arrival.
    pub fn delete_pod_facts(&mut self, pod: &PodFacts) -> bool {
        let Some(key) = self.pod_key(pod) else {
            return false;
        };
        self.delete_pod_key(&key)
    }

    /// [`Index::delete_pod_facts`] by `(namespace, name)`.
    pub fn delete_pod_key(&mut self, (ns, name): &ObjKey) -> bool {
        let Some(pods) = self.pods.get_mut(ns) else {
            return false;
        };
        let changed = pods.remove(name).is_some();
        if pods.is_empty() {
            self.pods.remove(ns);
        }
        if changed {
            self.touch_namespace(ns);
        }
        changed
    }

    /// The full list of Pods after a watch (re)start.
    pub fn reset_pods(&mut self, pods: Vec<Pod>) -> bool {
        self.reset_pod_facts(pods.iter().map(PodFacts::of).collect())
    }

    /// [`Index::reset_pods`] for facts taken on arrival.
    pub fn reset_pod_facts(&mut self, pods: Vec<PodFacts>) -> bool {
        let mut fresh: BTreeMap<String, BTreeMap<String, PodRec>> = BTreeMap::new();
        for pod in &pods {
            let Some((ns, name)) = self.pod_key(pod) else {
                continue;
            };
            let rec = pod.rec(&self.wanted_labels);
            fresh.entry(ns).or_default().insert(name, rec);
        }
        let changed = fresh != self.pods;
        self.pods = fresh;
        if changed {
            self.touch_all();
        }
        changed
    }

    /// A Pod's namespace and name; a Pod without either is counted and ignored.
    fn pod_key(&mut self, pod: &PodFacts) -> Option<ObjKey> {
        if pod.namespace.is_empty() || pod.name.is_empty() {
            self.count(&Ignored::NoName { kind: "Pod" });
            return None;
        }
        Some((pod.namespace.clone(), pod.name.clone()))
    }

    fn refresh_wanted_labels(&mut self) {
        let wanted: BTreeSet<String> = self
            .config
            .pod_labels
            .iter()
            .chain(self.services.values().flat_map(|s| &s.pod_labels))
            .cloned()
            .collect();
        if !wanted.is_subset(&self.wanted_labels) {
            self.pod_resync = true;
        }
        if wanted != self.wanted_labels {
            // Published labels are chosen per Service, but the Pod records
            // keep only wanted keys: rebuild everything.
            self.touch_all();
        }
        self.wanted_labels = wanted;
    }

    // ---- Topology ----------------------------------------------------------

    /// The topology for the current state.
    pub fn topology(&self) -> Topology {
        self.topology_with_stats().0
    }

    /// The topology and counts describing it. Services nothing touched since
    /// the last build are taken from it (see `BuildCache`).
    pub fn topology_with_stats(&self) -> (Topology, BuildStats) {
        let mut guard = self
            .built
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let cache = &mut *guard;
        if std::mem::take(&mut cache.dirty_all) {
            cache.groups.clear();
        }
        let dirty = std::mem::take(&mut cache.dirty);
        let dirty_namespaces = std::mem::take(&mut cache.dirty_namespaces);
        cache.groups.retain(|key, _| {
            self.services.contains_key(key)
                && !dirty.contains(key)
                && !dirty_namespaces.contains(&key.0)
        });
        let mut stats = BuildStats::default();
        let mut sets = Vec::new();
        let mut services = BTreeMap::new();
        for (key, svc) in &self.services {
            let group = cache
                .groups
                .entry(key.clone())
                .or_insert_with(|| self.build_group(key, svc));
            stats.add(&group.stats);
            if let Some(meta) = &group.meta {
                sets.extend(group.sets.iter().cloned());
                services.insert(key.clone(), meta.clone());
            }
        }
        let topology = Topology {
            snapshot: Snapshot::new(sets),
            services,
        };
        (topology, stats)
    }

    /// The topology built from scratch, ignoring and leaving the cache alone:
    /// what every cached build must equal.
    #[cfg(test)]
    pub(crate) fn topology_uncached(&self) -> (Topology, BuildStats) {
        // A clone starts with an empty cache.
        self.clone().topology_with_stats()
    }

    /// One Service's endpoint sets (one per port), metadata and counts.
    fn build_group(&self, group_key: &ObjKey, svc: &ServiceRec) -> BuiltGroup {
        let (ns, name) = group_key;
        let mut stats = BuildStats::default();
        let no_slices = BTreeMap::new();
        let slices = self.slices.get(group_key).unwrap_or(&no_slices);
        if !svc.has_selector && slices.is_empty() {
            stats.services_without_slices += 1;
            return BuiltGroup {
                meta: None,
                sets: Vec::new(),
                stats,
            };
        }
        let seen = self.seen.get(group_key);
        let pods = self.pods.get(ns);
        let wanted: BTreeSet<&String> = self
            .config
            .pod_labels
            .iter()
            .chain(&svc.pod_labels)
            .collect();
        let mut sets = Vec::new();
        for port in &svc.ports {
            // Names were validated on the way in, so this only fails if
            // the two validations ever disagree; skip rather than panic.
            let Ok(key) = ServiceKey::new(name, ns, PortRef::Number(port.port)) else {
                continue;
            };
            let mut endpoints = Vec::new();
            for slice in slices.values() {
                let Some(target) = resolve_port(slice, port) else {
                    stats.unmatched_slice_ports += 1;
                    continue;
                };
                for ep in &slice.endpoints {
                    let health = match ep.state {
                        State::Ready => Health::Healthy,
                        State::Draining => Health::Draining,
                        State::NotServing => Health::Unhealthy,
                    };
                    let id = (ep.ip, ep.pod.clone());
                    let seen = seen.and_then(|s| s.get(&id)).copied().unwrap_or_default();
                    let pod = ep
                        .pod
                        .as_deref()
                        .and_then(|p| pods.and_then(|pods| pods.get(p)));
                    endpoints.push(self.endpoint(ep, target, health, seen, pod, &wanted));
                }
            }
            let before = endpoints.len();
            let set = EndpointSet::merge(endpoints);
            stats.duplicates += before - set.len();
            let (h, d, u) = set.health_counts();
            stats.healthy += h;
            stats.draining += d;
            stats.unhealthy += u;
            stats.keys += 1;
            sets.push((key, set));
        }
        stats.services += 1;
        let meta = ServiceMeta {
            ports: svc
                .ports
                .iter()
                .map(|p| ServicePort {
                    name: (!p.name.is_empty()).then(|| p.name.clone()),
                    port: p.port,
                })
                .collect(),
            annotations: svc.annotations.clone(),
        };
        BuiltGroup {
            meta: Some(meta),
            sets,
            stats,
        }
    }

    fn endpoint(
        &self,
        ep: &EndpointRec,
        port: u16,
        health: Health,
        seen: Seen,
        pod: Option<&PodRec>,
        wanted: &BTreeSet<&String>,
    ) -> Endpoint {
        let mut out = Endpoint::new(SocketAddr::new(ep.ip, port)).with_health(health);
        out.zone = ep.zone.clone();
        out.node = ep.node.clone();
        out.pod = ep.pod.clone();
        if health != Health::Unhealthy {
            out.ready_since = pod.and_then(|p| p.ready_since).or(seen.ready);
        }
        if health == Health::Draining {
            out.drain_deadline = pod.and_then(|p| p.deletion).or_else(|| {
                seen.terminating
                    .and_then(|t| t.checked_add(self.config.default_drain_grace))
            });
        }
        if let Some(pod) = pod {
            out.labels = pod
                .labels
                .iter()
                .filter(|(k, _)| wanted.contains(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
        }
        out
    }

    // ---- helpers -----------------------------------------------------------

    fn object_key(&mut self, meta: &ObjectMeta, kind: &'static str) -> Option<ObjKey> {
        match (non_empty(&meta.namespace), non_empty(&meta.name)) {
            (Some(ns), Some(name)) => Some((ns.to_owned(), name.to_owned())),
            _ => {
                self.count(&Ignored::NoName { kind });
                None
            }
        }
    }

    fn count(&mut self, why: &Ignored) {
        debug!(reason = %why, "ignoring Kubernetes object");
        let s = &mut self.stats;
        match why {
            Ignored::NoName { kind: "Service" } | Ignored::BadServiceName(..) => {
                s.invalid_services += 1;
            }
            Ignored::NoName {
                kind: "EndpointSlice",
            } => s.invalid_slices += 1,
            Ignored::NoName { .. } => s.invalid_pods += 1,
            Ignored::ExternalName(..) => s.external_name_services += 1,
            Ignored::NoServiceLabel(..) => s.slices_without_service += 1,
            Ignored::Fqdn(..) => s.fqdn_slices += 1,
            Ignored::AddressType(..) => s.unknown_address_type_slices += 1,
        }
    }
}

fn insert_if_changed<K: Ord, V: PartialEq>(map: &mut BTreeMap<K, V>, key: K, value: V) -> bool {
    if map.get(&key) == Some(&value) {
        return false;
    }
    map.insert(key, value);
    true
}

fn non_empty(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|s| !s.is_empty())
}

fn port_number(n: i32) -> Option<u16> {
    u16::try_from(n).ok().filter(|n| *n != 0)
}

/// The endpoint port of `port` in `slice`: the slice port with the same name
/// and protocol.
fn resolve_port(slice: &SliceRec, port: &PortRec) -> Option<u16> {
    let found = slice
        .ports
        .iter()
        .find(|p| p.name == port.name && p.protocol == TCP)?;
    found.port.or(port.target)
}

fn parse_service(
    key: &ObjKey,
    svc: &Service,
    stats: &mut IndexStats,
) -> Result<ServiceRec, Ignored> {
    let (ns, name) = key;
    if let Err(e) = ServiceKey::new(name, ns, PortRef::Number(1)) {
        return Err(Ignored::BadServiceName(ns.clone(), name.clone(), e));
    }
    let spec = svc.spec.as_ref();
    if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
        return Err(Ignored::ExternalName(ns.clone(), name.clone()));
    }
    let mut ports: Vec<PortRec> = Vec::new();
    for p in spec.and_then(|s| s.ports.as_ref()).into_iter().flatten() {
        match parse_service_port(p, &ports) {
            Ok(port) => ports.push(port),
            Err(problem) => {
                stats.skipped_service_ports += 1;
                debug!(
                    service = %format_args!("{ns}/{name}"),
                    port = p.port,
                    problem,
                    "ignoring Service port"
                );
            }
        }
    }
    let annotations = svc.metadata.annotations.as_ref();
    let pod_labels = annotations
        .and_then(|a| a.get(POD_LABELS_ANNOTATION))
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    Ok(ServiceRec {
        ports,
        has_selector: spec
            .and_then(|s| s.selector.as_ref())
            .is_some_and(|s| !s.is_empty()),
        annotations: annotations
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| {
                let k = k.strip_prefix(ANNOTATION_PREFIX)?;
                (!k.is_empty()).then(|| (k.to_owned(), v.clone()))
            })
            .collect(),
        pod_labels,
    })
}

/// One Service port, or why it is left out. `taken` are the ports kept so
/// far: numbers and names must be unique (the API server checks this, but
/// the index does not rely on it).
fn parse_service_port(
    p: &k8s_openapi::api::core::v1::ServicePort,
    taken: &[PortRec],
) -> Result<PortRec, &'static str> {
    // gRPC and Envoy clusters here are TCP; a UDP twin of a TCP port (DNS)
    // would otherwise collide on the key.
    if p.protocol.as_deref().unwrap_or(TCP) != TCP {
        return Err("not TCP");
    }
    let port = port_number(p.port).ok_or("number outside 1..=65535")?;
    let target = match &p.target_port {
        // Unset means "same as port", as the API server defaults it.
        None => Some(port),
        Some(IntOrString::String(s)) if s.is_empty() => Some(port),
        Some(IntOrString::Int(t)) => Some(port_number(*t).ok_or("targetPort outside 1..=65535")?),
        // Named: resolved per pod, so only the slices know the number.
        Some(IntOrString::String(_)) => None,
    };
    let name = p.name.clone().unwrap_or_default();
    if taken.iter().any(|q| q.port == port) {
        return Err("duplicate number");
    }
    if taken.iter().any(|q| q.name == name) {
        return Err("duplicate name");
    }
    Ok(PortRec { name, port, target })
}

fn parse_slice(
    ns: &str,
    name: &str,
    slice: &EndpointSlice,
    stats: &mut IndexStats,
) -> Result<(String, SliceRec), Ignored> {
    let service = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Ignored::NoServiceLabel(ns.to_owned(), name.to_owned()))?;
    let v6 = match slice.address_type.as_str() {
        "IPv4" => false,
        "IPv6" => true,
        "FQDN" => return Err(Ignored::Fqdn(ns.to_owned(), name.to_owned())),
        other => {
            return Err(Ignored::AddressType(
                ns.to_owned(),
                name.to_owned(),
                other.to_owned(),
            ));
        }
    };
    let mut ports: Vec<SlicePortRec> = Vec::new();
    for p in slice.ports.iter().flatten() {
        let port_name = p.name.clone().unwrap_or_default();
        let protocol = p.protocol.clone().unwrap_or_else(|| TCP.to_owned());
        let number = match p.port {
            None => Ok(None),
            Some(n) => port_number(n).map(Some).ok_or(n),
        };
        let duplicate = ports
            .iter()
            .any(|q| q.name == port_name && q.protocol == protocol);
        match number {
            Ok(port) if !duplicate => ports.push(SlicePortRec {
                name: port_name,
                protocol,
                port,
            }),
            _ => {
                stats.skipped_slice_ports += 1;
                debug!(slice = %format_args!("{ns}/{name}"), port = ?p.port, duplicate, "ignoring slice port");
            }
        }
    }
    // `endpoints` is optional from Kubernetes 1.36 on (an empty slice).
    let slice_endpoints = slice.endpoints.as_deref().unwrap_or_default();
    let mut endpoints = Vec::with_capacity(slice_endpoints.len());
    for ep in slice_endpoints {
        // Only the first address has meaning (the API reference says so,
        // and kube-proxy reads no other).
        let ip = ep.addresses.first().and_then(|a| parse_ip(a, v6));
        let Some(ip) = ip else {
            stats.skipped_endpoints += 1;
            debug!(slice = %format_args!("{ns}/{name}"), addresses = ?ep.addresses, "ignoring endpoint");
            continue;
        };
        let (state, terminating) = state(ep.conditions.as_ref());
        let pod = ep
            .target_ref
            .as_ref()
            .filter(|r| r.kind.as_deref() == Some("Pod"))
            .and_then(|r| non_empty(&r.name))
            .map(str::to_owned);
        endpoints.push(EndpointRec {
            ip,
            state,
            terminating,
            zone: non_empty(&ep.zone).map(str::to_owned),
            node: non_empty(&ep.node_name).map(str::to_owned),
            pod,
        });
    }
    Ok((service.clone(), SliceRec { ports, endpoints }))
}

fn parse_ip(s: &str, v6: bool) -> Option<IpAddr> {
    if v6 {
        s.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
    } else {
        s.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
    }
}

/// The condition mapping of DESIGN.md, with one refinement: `terminating`
/// is looked at first. The EndpointSlice controller only reports `ready`
/// true for a terminating pod when the Service publishes not-ready
/// addresses, and a terminating pod should get no new requests then either.
fn state(c: Option<&discovery::EndpointConditions>) -> (State, bool) {
    let (ready, serving, terminating) =
        c.map_or((None, None, None), |c| (c.ready, c.serving, c.terminating));
    if terminating == Some(true) {
        // `serving` is nil on clusters older than 1.20; `ready` true stands
        // in for it there.
        let serving = serving.or(ready) == Some(true);
        let state = if serving {
            State::Draining
        } else {
            State::NotServing
        };
        return (state, true);
    }
    match ready {
        Some(true) | None => (State::Ready, false),
        Some(false) => (State::NotServing, false),
    }
}

/// What the index reads of a Pod, taken from it as it arrives: the watch
/// holds these rather than Pods. A k8s-openapi `Pod` is kilobytes even with
/// its spec and status dropped (its structs are inline), and the watch
/// holds one per Pod, two during a relist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFacts {
    /// `metadata.namespace`; empty when missing (the index ignores such a Pod).
    pub namespace: String,
    /// `metadata.name`; empty when missing.
    pub name: String,
    /// Every label: which ones the index keeps can change while the watch runs.
    labels: BTreeMap<String, String>,
    /// The Ready condition's transition time, when it is True.
    ready_since: Option<SystemTime>,
    /// `metadata.deletionTimestamp`.
    deletion: Option<SystemTime>,
}

impl PodFacts {
    /// The facts of `pod`.
    pub fn of(pod: &Pod) -> Self {
        let ready_since = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .filter(|c| c.status == "True")
            .and_then(|c| c.last_transition_time.as_ref())
            .and_then(system_time);
        PodFacts {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            ready_since,
            deletion: pod
                .metadata
                .deletion_timestamp
                .as_ref()
                .and_then(system_time),
        }
    }

    /// The record the index keeps: only the `wanted` labels.
    fn rec(&self, wanted: &BTreeSet<String>) -> PodRec {
        PodRec {
            labels: self
                .labels
                .iter()
                .filter(|(k, _)| wanted.contains(*k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            ready_since: self.ready_since,
            deletion: self.deletion,
        }
    }
}

/// Kubernetes time to `SystemTime`; `None` only for times `SystemTime`
/// cannot represent.
fn system_time(t: &Time) -> Option<SystemTime> {
    let since_epoch = t.0.as_duration();
    if since_epoch.is_negative() {
        UNIX_EPOCH.checked_sub(since_epoch.unsigned_abs())
    } else {
        UNIX_EPOCH.checked_add(since_epoch.unsigned_abs())
    }
}

#[cfg(test)]
mod tests;

//! A synthetic cluster for the scale figures: 10,000 Services and their
//! EndpointSlices, 100,000 endpoints over three zones, shared by
//! `benches/snapshot.rs`, `examples/scale_rss.rs` and eds-bench's `scale`
//! program, which also builds it at other sizes ([`generate_for`],
//! [`for_each_service`]). Compiled only with the `test-support` feature:
//! it is test data, not part of the server.
//!
//! The objects look like what the API server sends after eds-server's
//! watcher strips `managedFields`: uid, resourceVersion, creation time,
//! owner reference, the EndpointSlice controller's labels and annotation,
//! per-endpoint `targetRef` with uid, node name and zone. Shape:
//!
//! ```text
//!   Services          10,000 in 100 namespaces; one TCP port `grpc` 8080,
//!                     targetPort `grpc` (named, resolved per slice)
//!   endpoints/service 10 x 1,000, 90 x 100, 9,900 cycling 1..24 (mean 8.2)
//!   EndpointSlices    at most 100 endpoints each; every 10th Service is
//!                     mid-rollout: half its pods serve `grpc` on 50052
//!                     instead of 50051, so they sit in separate slices, as
//!                     the EndpointSlice controller groups by port mapping
//!   conditions        1% draining (serving, terminating), 0.5% not ready,
//!                     the rest ready
//! ```
//!
//! Pods come separately: [`pod_template`] is a Deployment's pod as the
//! watch receives it (spec, status, no `managedFields`), [`pod_of`] names
//! it after an endpoint, and [`list_pods`] feeds Pods through a [`Listing`]
//! as the Pod watch does.
//!
//! What it is not: a model of any particular cluster's object sizes (real
//! objects may carry more labels and annotations).

use std::collections::BTreeMap;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::watcher::Event;

use crate::k8s::Index;
use crate::k8s::index::PodFacts;
use crate::k8s::listing::Listing;

/// Services in the cluster.
pub const SERVICES: usize = 10_000;
/// Endpoints over all Services.
pub const ENDPOINTS: usize = 100_000;
/// Endpoints of each of the largest Services.
pub const BIG: usize = 1_000;
/// Zones endpoints are spread over.
pub const ZONES: [&str; 3] = ["zone-a", "zone-b", "zone-c"];
/// The Service port every Service has.
pub const PORT: u16 = 8080;
/// Most endpoints per slice, as the EndpointSlice controller writes them.
pub const MAX_PER_SLICE: usize = 100;

/// Endpoints per Service, in Service order; sums to [`ENDPOINTS`].
pub fn sizes() -> Vec<usize> {
    let sizes = sizes_for(SERVICES);
    assert_eq!(sizes.iter().sum::<usize>(), ENDPOINTS);
    sizes
}

/// Endpoints per Service for a cluster of `services` Services with the
/// same shape scaled down or up: a thousandth of them at [`BIG`], a
/// hundredth at 100, the rest cycling 1..24. For a multiple of 1,000
/// Services that is ten endpoints per Service on average.
pub fn sizes_for(services: usize) -> Vec<usize> {
    // 11 sizes summing to 90: 9,900 Services take 81,000 endpoints.
    const CYCLE: [usize; 11] = [1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 24];
    let (big, hundred) = (services / 1000, services / 100);
    (0..services)
        .map(|i| {
            if i < big {
                BIG
            } else if i < hundred {
                100
            } else {
                CYCLE[i % CYCLE.len()]
            }
        })
        .collect()
}

/// Namespace and name of Service `i`.
pub fn service_name(i: usize) -> (String, String) {
    (format!("team-{:02}", i % 100), format!("svc-{i:05}"))
}

/// The canonical service key (and CLA name) of Service `i`.
pub fn key(i: usize) -> String {
    let (ns, name) = service_name(i);
    format!("{name}.{ns}:{PORT}")
}

/// The synthetic cluster's objects.
#[derive(Debug)]
pub struct Cluster {
    /// Every Service.
    pub services: Vec<Service>,
    /// Every EndpointSlice, grouped by Service in Service order.
    pub slices: Vec<EndpointSlice>,
}

fn time(secs: i64) -> Time {
    Time(Timestamp::from_second(1_780_000_000 + secs).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// A uid-shaped string, distinct per `(kind, n)`.
fn uid(kind: u8, n: usize) -> String {
    let x = (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(kind);
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        x >> 32,
        (x >> 16) & 0xffff,
        x & 0xfff,
        (n >> 12) & 0xfff,
        n
    )
}

/// A 5-character generateName suffix.
fn suffix(n: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut x = (n as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9) >> 20;
    (0..5)
        .map(|_| {
            let c = ALPHABET[(x % ALPHABET.len() as u64) as usize];
            x /= ALPHABET.len() as u64;
            char::from(c)
        })
        .collect()
}

fn service(i: usize) -> Service {
    let (ns, name) = service_name(i);
    Service {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns),
            uid: Some(uid(1, i)),
            resource_version: Some(format!("{}", 1_000_000 + i)),
            creation_timestamp: Some(time(i as i64)),
            labels: Some(BTreeMap::from([("app".to_owned(), name.clone())])),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some(format!("10.96.{}.{}", i / 256, i % 256)),
            cluster_ips: Some(vec![format!("10.96.{}.{}", i / 256, i % 256)]),
            internal_traffic_policy: Some("Cluster".to_owned()),
            ip_families: Some(vec!["IPv4".to_owned()]),
            ip_family_policy: Some("SingleStack".to_owned()),
            ports: Some(vec![ServicePort {
                name: Some("grpc".to_owned()),
                port: i32::from(PORT),
                protocol: Some("TCP".to_owned()),
                target_port: Some(IntOrString::String("grpc".to_owned())),
                ..ServicePort::default()
            }]),
            selector: Some(BTreeMap::from([("app".to_owned(), name)])),
            session_affinity: Some("None".to_owned()),
            type_: Some("ClusterIP".to_owned()),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// Ready, draining or not ready, by the endpoint's global number.
fn conditions(global: usize) -> EndpointConditions {
    let (ready, serving, terminating) = if global % 100 == 97 {
        (false, true, true)
    } else if global % 200 == 199 {
        (false, false, false)
    } else {
        (true, true, false)
    };
    EndpointConditions {
        ready: Some(ready),
        serving: Some(serving),
        terminating: Some(terminating),
    }
}

fn endpoint(ns: &str, name: &str, global: usize) -> Endpoint {
    let ip = global + 1;
    Endpoint {
        addresses: vec![format!(
            "10.{}.{}.{}",
            64 + (ip >> 16),
            (ip >> 8) & 0xff,
            ip & 0xff
        )],
        conditions: Some(conditions(global)),
        node_name: Some(format!("node-{:03}", global % 300)),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".to_owned()),
            name: Some(format!(
                "{name}-{}-{}",
                suffix(global / 1000),
                suffix(global)
            )),
            namespace: Some(ns.to_owned()),
            uid: Some(uid(2, global)),
            ..ObjectReference::default()
        }),
        zone: Some(ZONES[global % ZONES.len()].to_owned()),
        ..Endpoint::default()
    }
}

fn slice(i: usize, n: usize, target: i32, endpoints: Vec<Endpoint>) -> EndpointSlice {
    let (ns, name) = service_name(i);
    let labels = BTreeMap::from([
        ("app".to_owned(), name.clone()),
        (
            "endpointslice.kubernetes.io/managed-by".to_owned(),
            "endpointslice-controller.k8s.io".to_owned(),
        ),
        ("kubernetes.io/service-name".to_owned(), name.clone()),
    ]);
    EndpointSlice {
        address_type: "IPv4".to_owned(),
        endpoints: Some(endpoints),
        metadata: ObjectMeta {
            name: Some(format!("{name}-{}", suffix(n))),
            generate_name: Some(format!("{name}-")),
            namespace: Some(ns),
            uid: Some(uid(3, n)),
            resource_version: Some(format!("{}", 2_000_000 + n)),
            generation: Some(1),
            creation_timestamp: Some(time(n as i64)),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(
                "endpoints.kubernetes.io/last-change-trigger-time".to_owned(),
                "2026-05-28T10:00:00Z".to_owned(),
            )])),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".to_owned(),
                block_owner_deletion: Some(true),
                controller: Some(true),
                kind: "Service".to_owned(),
                name,
                uid: uid(1, i),
            }]),
            ..ObjectMeta::default()
        },
        ports: Some(vec![EndpointPort {
            name: Some("grpc".to_owned()),
            port: Some(target),
            protocol: Some("TCP".to_owned()),
            app_protocol: None,
        }]),
    }
}

/// Builds every object. Deterministic: the same call gives the same objects.
pub fn generate() -> Cluster {
    let cluster = generate_for(SERVICES);
    assert_eq!(sizes().len(), cluster.services.len());
    cluster
}

/// Builds every object of a cluster of `services` Services (see [`sizes_for`]).
pub fn generate_for(services: usize) -> Cluster {
    let mut cluster = Cluster {
        services: Vec::with_capacity(services),
        slices: Vec::new(),
    };
    for_each_service(services, |svc, slices| {
        cluster.services.push(svc);
        cluster.slices.extend(slices);
    });
    cluster
}

/// Hands each Service with its EndpointSlices to `f`, one at a time, in
/// Service order, so a caller can feed an index the way a watch stream does
/// without ever holding every object.
pub fn for_each_service(services: usize, mut f: impl FnMut(Service, Vec<EndpointSlice>)) {
    let sizes = sizes_for(services);
    let mut global = 0;
    let mut n = 0;
    for (i, &size) in sizes.iter().enumerate() {
        let (ns, name) = service_name(i);
        let endpoints: Vec<Endpoint> = (global..global + size)
            .map(|g| endpoint(&ns, &name, g))
            .collect();
        global += size;
        // Mid-rollout Services: the second half of the pods serve another port.
        let split = if i % 10 == 0 { size / 2 } else { size };
        let (old, new) = endpoints.split_at(split);
        let mut slices = Vec::new();
        for (target, group) in [(50051, old), (50052, new)] {
            for chunk in group.chunks(MAX_PER_SLICE) {
                slices.push(slice(i, n, target, chunk.to_vec()));
                n += 1;
            }
        }
        f(service(i), slices);
    }
}

/// Feeds every object to `index` as the watcher does after its initial lists.
pub fn populate(index: &mut Index, cluster: &Cluster, now: SystemTime) {
    for svc in &cluster.services {
        index.apply_service(svc);
    }
    for slice in &cluster.slices {
        index.apply_slice(slice, now);
    }
}

/// The first slice of Service 0 (a 1,000-endpoint Service) in two versions
/// that differ in one pod's readiness: the event a one-pod change sends.
pub fn one_pod_change(cluster: &Cluster) -> [EndpointSlice; 2] {
    let (_, name) = service_name(0);
    let original = cluster
        .slices
        .iter()
        .find(|s| {
            s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("kubernetes.io/service-name"))
                == Some(&name)
        })
        .expect("Service 0 has slices");
    one_pod_change_of(original)
}

/// `original` in two versions that differ in its first pod's readiness:
/// `[changed, original]`.
pub fn one_pod_change_of(original: &EndpointSlice) -> [EndpointSlice; 2] {
    let original = original.clone();
    let mut changed = original.clone();
    if let Some(ep) = changed.endpoints.as_mut().and_then(|e| e.first_mut()) {
        ep.conditions = Some(EndpointConditions {
            ready: Some(false),
            serving: Some(false),
            terminating: Some(false),
        });
    }
    [changed, original]
}

/// A Deployment's Pod as the watch receives it (`pod.json`: spec, status,
/// no `managedFields`), to be renamed per endpoint.
pub fn pod_template() -> Pod {
    serde_json::from_str(include_str!("pod.json")).expect("synthetic/pod.json is a Pod")
}

/// `template` renamed after `endpoint`'s `targetRef`, at list round `round`
/// (its resourceVersion); `None` for an endpoint without a target.
pub fn pod_of(template: &Pod, endpoint: &Endpoint, round: usize) -> Option<Pod> {
    let target = endpoint.target_ref.as_ref()?;
    let mut pod = template.clone();
    pod.metadata.name.clone_from(&target.name);
    pod.metadata.namespace.clone_from(&target.namespace);
    pod.metadata.uid.clone_from(&target.uid);
    pod.metadata.resource_version = Some(format!("{round}"));
    Some(pod)
}

/// Lists Pods into `index` through `listing` as the Pod watch does:
/// `Init`, one `InitApply` per Pod that `pods` hands over, reduced to
/// [`PodFacts`] at once (no Pod object held, so a memory figure sees what
/// the watch holds), then `InitDone`, which deletes the keys this list
/// lacked. Returns the Pods listed.
pub fn list_pods(
    listing: &mut Listing,
    index: &mut Index,
    pods: impl FnOnce(&mut dyn FnMut(Pod)),
) -> usize {
    // The listing calls back into the index for an apply and for a delete,
    // never both at once; the RefCell lets both callbacks hold it.
    let event = |listing: &mut Listing, index: &mut Index, ev: Event<PodFacts>| {
        let index = std::cell::RefCell::new(index);
        listing.event(
            0,
            ev,
            |p| index.borrow_mut().apply_pod_facts(p),
            |k| index.borrow_mut().delete_pod_key(k),
        )
    };
    event(listing, index, Event::Init);
    let mut listed = 0;
    pods(&mut |pod| {
        event(listing, index, Event::InitApply(PodFacts::of(&pod)));
        listed += 1;
    });
    event(listing, index, Event::InitDone);
    listed
}

//! Test-only vocabulary for writing Kubernetes objects as data.
//!
//! ```text
//! svc("echo", "demo").port("grpc", 8080, target_name("grpc"))
//! slice("echo-abc", "demo", "echo").ipv4().port("grpc", 9090)
//!     .ep("10.244.0.1", [ready(), zone("a"), pod("echo-0"), node("n1")])
//! k8s_pod("echo-0", "demo").label("shard", "3").ready_at(100)
//! ```
//!
//! Builders deref to the Kubernetes object, so `index.apply_service(&svc(..))`
//! reads as it should; `.build()` gives the object itself for `reset_*`.
//! Only well-formed objects are easy to write; odd ones are built by
//! mutating the object (`.edit(|s| ..)`), which keeps the odd part visible in
//! the test. Not part of the server.

use std::collections::BTreeMap;
use std::ops::Deref;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::{
    ObjectReference, Pod, PodCondition, PodSpec, PodStatus, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;

use super::index::SERVICE_NAME_LABEL;

/// `UNIX_EPOCH + secs`: every test time is a small number of seconds.
pub(crate) fn t(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// A Kubernetes timestamp `secs` after the epoch.
pub(crate) fn k8s_time(secs: i64) -> Time {
    Time(Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH))
}

fn meta(name: &str, ns: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(ns.to_owned()),
        ..ObjectMeta::default()
    }
}

// ---- Services ---------------------------------------------------------------

/// A numeric target port.
pub(crate) fn target(n: i32) -> Option<IntOrString> {
    Some(IntOrString::Int(n))
}

/// A named target port (resolved per pod by the EndpointSlice controller).
pub(crate) fn target_name(name: &str) -> Option<IntOrString> {
    Some(IntOrString::String(name.to_owned()))
}

/// A ClusterIP Service selecting `app: <name>`, with no ports yet.
pub(crate) fn svc(name: &str, ns: &str) -> Svc {
    Svc(Service {
        metadata: meta(name, ns),
        spec: Some(ServiceSpec {
            selector: Some(BTreeMap::from([("app".to_owned(), name.to_owned())])),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}

#[derive(Debug, Clone)]
pub(crate) struct Svc(Service);

impl Svc {
    fn spec(&mut self) -> &mut ServiceSpec {
        self.0.spec.get_or_insert_with(ServiceSpec::default)
    }

    /// A named TCP port; `target` as from [`target`] or [`target_name`], or
    /// `None` for "same as port".
    pub(crate) fn port(mut self, name: &str, port: i32, target: Option<IntOrString>) -> Self {
        self.spec()
            .ports
            .get_or_insert_with(Vec::new)
            .push(ServicePort {
                name: (!name.is_empty()).then(|| name.to_owned()),
                port,
                target_port: target,
                ..ServicePort::default()
            });
        self
    }

    /// Sets the protocol of the last port added.
    pub(crate) fn protocol(mut self, protocol: &str) -> Self {
        if let Some(p) = self.spec().ports.as_mut().and_then(|p| p.last_mut()) {
            p.protocol = Some(protocol.to_owned());
        }
        self
    }

    /// No selector: endpoints come from mirrored or hand-made slices.
    pub(crate) fn no_selector(mut self) -> Self {
        self.spec().selector = None;
        self
    }

    pub(crate) fn external_name(mut self, host: &str) -> Self {
        let spec = self.spec();
        spec.type_ = Some("ExternalName".to_owned());
        spec.external_name = Some(host.to_owned());
        self
    }

    pub(crate) fn annotation(mut self, key: &str, value: &str) -> Self {
        self.0
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(key.to_owned(), value.to_owned());
        self
    }

    /// Anything the vocabulary does not cover.
    pub(crate) fn edit(mut self, f: impl FnOnce(&mut Service)) -> Self {
        f(&mut self.0);
        self
    }

    pub(crate) fn build(self) -> Service {
        self.0
    }
}

impl Deref for Svc {
    type Target = Service;
    fn deref(&self) -> &Service {
        &self.0
    }
}

// ---- EndpointSlices -----------------------------------------------------------

/// An IPv4 slice of Service `service`, with no ports or endpoints yet.
pub(crate) fn slice(name: &str, ns: &str, service: &str) -> Slice {
    let mut metadata = meta(name, ns);
    metadata.labels = Some(BTreeMap::from([(
        SERVICE_NAME_LABEL.to_owned(),
        service.to_owned(),
    )]));
    Slice(EndpointSlice {
        address_type: "IPv4".to_owned(),
        endpoints: None,
        metadata,
        ports: Some(Vec::new()),
    })
}

#[derive(Debug, Clone)]
pub(crate) struct Slice(EndpointSlice);

/// One property of a slice endpoint.
#[derive(Debug, Clone)]
pub(crate) enum Ep {
    Conditions(EndpointConditions),
    Zone(String),
    Pod(String),
    Node(String),
}

fn conditions(ready: Option<bool>, serving: Option<bool>, terminating: Option<bool>) -> Ep {
    Ep::Conditions(EndpointConditions {
        ready,
        serving,
        terminating,
    })
}

/// Ready, serving, not terminating: what the controller writes for a ready pod.
pub(crate) fn ready() -> Ep {
    conditions(Some(true), Some(true), Some(false))
}
/// All conditions nil (unknown means ready).
pub(crate) fn unknown() -> Ep {
    conditions(None, None, None)
}
/// Not ready, not terminating: a pod failing its readiness probe.
pub(crate) fn not_ready() -> Ep {
    conditions(Some(false), Some(false), Some(false))
}
/// Terminating but still serving: a pod in its grace period.
pub(crate) fn draining() -> Ep {
    conditions(Some(false), Some(true), Some(true))
}
/// Terminating and no longer serving.
pub(crate) fn terminated() -> Ep {
    conditions(Some(false), Some(false), Some(true))
}
pub(crate) fn zone(z: &str) -> Ep {
    Ep::Zone(z.to_owned())
}
pub(crate) fn pod(name: &str) -> Ep {
    Ep::Pod(name.to_owned())
}
pub(crate) fn node(name: &str) -> Ep {
    Ep::Node(name.to_owned())
}

impl Slice {
    pub(crate) fn ipv4(mut self) -> Self {
        "IPv4".clone_into(&mut self.0.address_type);
        self
    }

    pub(crate) fn ipv6(mut self) -> Self {
        "IPv6".clone_into(&mut self.0.address_type);
        self
    }

    pub(crate) fn address_type(mut self, t: &str) -> Self {
        t.clone_into(&mut self.0.address_type);
        self
    }

    /// A TCP port named like the Service port it serves (`""` for unnamed).
    pub(crate) fn port(mut self, name: &str, port: i32) -> Self {
        self.0
            .ports
            .get_or_insert_with(Vec::new)
            .push(EndpointPort {
                name: Some(name.to_owned()),
                port: Some(port),
                protocol: Some("TCP".to_owned()),
                app_protocol: None,
            });
        self
    }

    /// `ports: null`.
    pub(crate) fn no_ports(mut self) -> Self {
        self.0.ports = None;
        self
    }

    /// An endpoint at `address`; with no conditions given, conditions are nil.
    pub(crate) fn ep(mut self, address: &str, props: impl IntoIterator<Item = Ep>) -> Self {
        let mut ep = Endpoint {
            addresses: vec![address.to_owned()],
            ..Endpoint::default()
        };
        for p in props {
            match p {
                Ep::Conditions(c) => ep.conditions = Some(c),
                Ep::Zone(z) => ep.zone = Some(z),
                Ep::Node(n) => ep.node_name = Some(n),
                Ep::Pod(name) => {
                    ep.target_ref = Some(ObjectReference {
                        kind: Some("Pod".to_owned()),
                        name: Some(name),
                        namespace: self.0.metadata.namespace.clone(),
                        ..ObjectReference::default()
                    });
                }
            }
        }
        self.0.endpoints.get_or_insert_with(Vec::new).push(ep);
        self
    }

    pub(crate) fn edit(mut self, f: impl FnOnce(&mut EndpointSlice)) -> Self {
        f(&mut self.0);
        self
    }

    pub(crate) fn build(self) -> EndpointSlice {
        self.0
    }
}

impl Deref for Slice {
    type Target = EndpointSlice;
    fn deref(&self) -> &EndpointSlice {
        &self.0
    }
}

// ---- Pods ---------------------------------------------------------------------

/// A Pod with no labels and no conditions.
pub(crate) fn k8s_pod(name: &str, ns: &str) -> PodB {
    PodB(Pod {
        metadata: meta(name, ns),
        spec: Some(PodSpec::default()),
        status: Some(PodStatus::default()),
    })
}

#[derive(Debug, Clone)]
pub(crate) struct PodB(Pod);

impl PodB {
    pub(crate) fn label(mut self, key: &str, value: &str) -> Self {
        self.0
            .metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(key.to_owned(), value.to_owned());
        self
    }

    fn condition(mut self, status: &str, at: i64) -> Self {
        let status_obj = self.0.status.get_or_insert_with(PodStatus::default);
        status_obj
            .conditions
            .get_or_insert_with(Vec::new)
            .push(PodCondition {
                type_: "Ready".to_owned(),
                status: status.to_owned(),
                last_transition_time: Some(k8s_time(at)),
                ..PodCondition::default()
            });
        self
    }

    /// Ready condition True since `secs`.
    pub(crate) fn ready_at(self, secs: i64) -> Self {
        self.condition("True", secs)
    }

    /// Ready condition False since `secs`.
    pub(crate) fn not_ready_at(self, secs: i64) -> Self {
        self.condition("False", secs)
    }

    /// Deleted at `requested` with a grace period of `grace` seconds: the API
    /// server sets `deletionTimestamp` to `requested + grace`.
    pub(crate) fn deleted(mut self, requested: i64, grace: i64) -> Self {
        self.0.metadata.deletion_timestamp = Some(k8s_time(requested + grace));
        self.0.metadata.deletion_grace_period_seconds = Some(grace);
        self
    }

    pub(crate) fn build(self) -> Pod {
        self.0
    }
}

impl Deref for PodB {
    type Target = Pod;
    fn deref(&self) -> &Pod {
        &self.0
    }
}

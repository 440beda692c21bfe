//! The server's view of the cluster at one moment: every service port's
//! endpoints plus the Service metadata xDS needs (port names, annotations).
//!
//! The Kubernetes side builds a [`Topology`] and publishes it, with the
//! times latency metrics need ([`Published`]), through a [`TopologyWatch`];
//! the xDS side only reads it. Nothing here talks to Kubernetes or to
//! clients.
//!
//! Keys in [`Topology::snapshot`] are canonical and numeric
//! (`<svc>.<ns>:<service-port>`); [`Topology::resolve`] maps every other
//! accepted form (port names, the fully qualified form) onto them, so the
//! server can answer under the exact name a client asked for.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use lb_core::{EndpointSet, PortRef, ServiceKey, Snapshot};
use tokio::sync::watch;

/// One port of a Service, as declared in its spec.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServicePort {
    /// The port's name, if it has one.
    pub name: Option<String>,
    /// The Service port number (what clients put in the key).
    pub port: u16,
}

/// What the server knows about a Service besides its endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceMeta {
    /// Declared ports.
    pub ports: Vec<ServicePort>,
    /// The Service's `eds.rs/*` annotations, keys without the prefix
    /// (for example `lb-policy`).
    pub annotations: BTreeMap<String, String>,
}

/// Every watched service port and its endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Topology {
    /// Endpoints by canonical numeric key.
    pub snapshot: Snapshot,
    /// Service metadata by (namespace, name).
    pub services: BTreeMap<(String, String), ServiceMeta>,
}

impl Topology {
    /// The canonical numeric key for any accepted form of `key`, if the
    /// Service and port exist.
    pub fn resolve(&self, key: &ServiceKey) -> Option<ServiceKey> {
        let meta = self
            .services
            .get(&(key.namespace().to_owned(), key.name().to_owned()))?;
        let port = match key.port() {
            PortRef::Number(n) => meta.ports.iter().find(|p| p.port == *n)?.port,
            PortRef::Name(name) => {
                meta.ports
                    .iter()
                    .find(|p| p.name.as_deref() == Some(name))?
                    .port
            }
        };
        key.with_port_number(port).ok()
    }

    /// The endpoints for any accepted form of `key`. A Service port with no
    /// endpoints yields an empty set; an unknown Service or port yields `None`.
    pub fn endpoints(&self, key: &ServiceKey) -> Option<&EndpointSet> {
        let canonical = self.resolve(key)?;
        self.snapshot.get(&canonical)
    }

    /// The Service metadata for a key.
    pub fn service(&self, key: &ServiceKey) -> Option<&ServiceMeta> {
        self.services
            .get(&(key.namespace().to_owned(), key.name().to_owned()))
    }
}

/// One published topology and when the change it carries happened, so the
/// xDS side can measure push and propagation latency per stream.
///
/// The times are process-local monotonic instants, never sent anywhere and
/// never part of any version: two replicas publish the same topology with
/// different times.
#[derive(Debug, Clone)]
pub struct Published {
    /// The topology.
    pub topology: Arc<Topology>,
    /// When the oldest Kubernetes event folded into this topology reached
    /// the server; `None` for the first publish after start-up (the initial
    /// list is not a change) and for releases of a mass-drop hold (delayed
    /// on purpose, so not a propagation delay).
    pub first_change: Option<Instant>,
    /// When it was handed to the channel.
    pub published_at: Instant,
}

impl Published {
    /// A topology published now without an event time (tests, start-up).
    pub fn now(topology: Arc<Topology>) -> Self {
        Self {
            topology,
            first_change: None,
            published_at: Instant::now(),
        }
    }
}

/// The publishing end: the Kubernetes side sends a new topology whenever
/// it changes. `None` until every watch has finished its initial list.
pub type TopologySender = watch::Sender<Option<Published>>;

/// The reading end, cloned into every xDS stream and the admin server.
pub type TopologyWatch = watch::Receiver<Option<Published>>;

/// A new channel with nothing published yet (not ready).
pub fn channel() -> (TopologySender, TopologyWatch) {
    watch::channel(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_core::Endpoint;
    use std::net::SocketAddr;

    fn topology() -> Topology {
        let key: ServiceKey = "echo.demo:8080".parse().unwrap();
        let set = EndpointSet::merge(vec![Endpoint::new(SocketAddr::from((
            [10, 244, 0, 1],
            9090,
        )))]);
        let meta = ServiceMeta {
            ports: vec![
                ServicePort {
                    name: Some("grpc".into()),
                    port: 8080,
                },
                ServicePort {
                    name: Some("admin".into()),
                    port: 9000,
                },
            ],
            annotations: BTreeMap::new(),
        };
        Topology {
            snapshot: Snapshot::new([(key, set)]),
            services: BTreeMap::from([(("demo".into(), "echo".into()), meta)]),
        }
    }

    #[test]
    fn every_form_resolves_to_the_numeric_key() {
        let t = topology();
        for form in [
            "echo.demo:8080",
            "echo.demo:grpc",
            "echo.demo.svc.cluster.local:8080",
            "echo.demo.svc.cluster.local:grpc",
        ] {
            let key: ServiceKey = form.parse().unwrap();
            assert_eq!(
                t.resolve(&key).unwrap().to_string(),
                "echo.demo:8080",
                "{form}"
            );
            assert_eq!(t.endpoints(&key).unwrap().len(), 1, "{form}");
        }
        let admin: ServiceKey = "echo.demo:admin".parse().unwrap();
        assert_eq!(t.resolve(&admin).unwrap().to_string(), "echo.demo:9000");
        assert!(t.endpoints(&admin).is_none(), "port without endpoint set");
        for missing in ["echo.demo:7", "echo.other:8080", "nope.demo:grpc"] {
            assert!(t.resolve(&missing.parse().unwrap()).is_none(), "{missing}");
        }
    }
}

//! What Kubernetes itself says a service key's endpoints are, read straight
//! from its Service and EndpointSlices, for `edsctl diff`.
//!
//! ```text
//!  Service <svc>.<ns>  ─ port by number or name ─┐
//!  EndpointSlices (kubernetes.io/service-name) ──┴─> [KubeEndpoint { address, state, pod, slice }]
//! ```
//!
//! The mapping is DESIGN.md's, written again here on purpose rather than
//! borrowed from eds-server: a diff that reused the server's own code would
//! agree with the server's bugs. Conditions: `terminating` first (serving
//! or, when serving is unknown, ready: draining; otherwise not serving),
//! then `ready` true or unknown: ready; anything else: not serving. The
//! endpoint port is the slice port named like the Service port (TCP), else
//! a numeric `targetPort`. An address in several slices counts once, in its
//! best state. [`expected`] is pure; [`read`] only fetches.

use std::net::SocketAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, ListParams};
use lb_core::{Health, PortRef, ServiceKey};
use serde::Serialize;

use crate::discovery::SERVICE_NAME_LABEL;
use crate::error::Error;

/// An endpoint's state as its EndpointSlice conditions say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KubeState {
    /// Ready (or unknown): should be served HEALTHY.
    Ready,
    /// Terminating but serving: should be served DRAINING.
    Draining,
    /// Neither: should not be served (or UNHEALTHY, when the server is
    /// configured to include unhealthy endpoints).
    NotServing,
}

impl KubeState {
    /// The health eds-server should serve it with; `None`: left out.
    pub fn expected_health(self) -> Option<Health> {
        match self {
            KubeState::Ready => Some(Health::Healthy),
            KubeState::Draining => Some(Health::Draining),
            KubeState::NotServing => None,
        }
    }

    /// Lower-case text for tables.
    pub fn as_str(self) -> &'static str {
        match self {
            KubeState::Ready => "ready",
            KubeState::Draining => "draining",
            KubeState::NotServing => "not-serving",
        }
    }
}

/// One endpoint as Kubernetes has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KubeEndpoint {
    /// Pod IP and resolved port.
    pub address: SocketAddr,
    /// From the conditions.
    pub state: KubeState,
    /// The pod, when the endpoint refers to one.
    pub pod: Option<String>,
    /// The slice it came from.
    pub slice: String,
}

/// Reads the Service and its slices and maps them ([`expected`]).
pub async fn read(client: &kube::Client, key: &ServiceKey) -> Result<Vec<KubeEndpoint>, Error> {
    let ns = key.namespace();
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let svc = services
        .get_opt(key.name())
        .await
        .map_err(|source| Error::Kube {
            action: format!("get Service {ns}/{}", key.name()),
            source: source.into(),
        })?
        .ok_or_else(|| Error::NotFound {
            key: key.to_string(),
            place: "in Kubernetes (no such Service)",
            suggestions: Vec::new(),
        })?;
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let list = slices
        .list(&ListParams::default().labels(&format!("{SERVICE_NAME_LABEL}={}", key.name())))
        .await
        .map_err(|source| Error::Kube {
            action: format!("list EndpointSlices of Service {ns}/{}", key.name()),
            source: source.into(),
        })?;
    expected(key, &svc, &list.items)
}

/// The endpoints Kubernetes declares for `key`, sorted by address.
pub fn expected(
    key: &ServiceKey,
    svc: &Service,
    slices: &[EndpointSlice],
) -> Result<Vec<KubeEndpoint>, Error> {
    let ports = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .unwrap_or_default();
    let tcp = |p: &Option<String>| p.as_deref().unwrap_or("TCP") == "TCP";
    let port = ports
        .iter()
        .filter(|p| tcp(&p.protocol))
        .find(|p| match key.port() {
            PortRef::Number(n) => p.port == i32::from(*n),
            PortRef::Name(name) => p.name.as_deref() == Some(name),
        })
        .ok_or_else(|| Error::NotFound {
            key: key.to_string(),
            place: "in Kubernetes (the Service has no such TCP port)",
            suggestions: ports
                .iter()
                .filter(|p| tcp(&p.protocol))
                .filter_map(|p| {
                    let n = u16::try_from(p.port).ok()?;
                    key.with_port_number(n).ok().map(|k| k.to_string())
                })
                .collect(),
        })?;
    let port_name = port.name.clone().unwrap_or_default();
    let numeric_target = match &port.target_port {
        None => u16::try_from(port.port).ok(),
        Some(IntOrString::String(s)) if s.is_empty() => u16::try_from(port.port).ok(),
        Some(IntOrString::Int(n)) => u16::try_from(*n).ok(),
        Some(IntOrString::String(_)) => None,
    };
    let mut out: Vec<KubeEndpoint> = Vec::new();
    for slice in slices {
        let v6 = match slice.address_type.as_str() {
            "IPv4" => false,
            "IPv6" => true,
            _ => continue, // FQDN slices carry no addresses to serve
        };
        let slice_name = slice.metadata.name.clone().unwrap_or_default();
        let target = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.clone().unwrap_or_default() == port_name && tcp(&p.protocol))
            .map(|p| {
                p.port
                    .and_then(|n| u16::try_from(n).ok())
                    .or(numeric_target)
            });
        let Some(Some(target)) = target else {
            continue;
        };
        for ep in slice.endpoints.iter().flatten() {
            // Only the first address has meaning (the EndpointSlice API says so).
            let Some(ip) = ep.addresses.first().and_then(|a| a.parse().ok()) else {
                continue;
            };
            let ip: std::net::IpAddr = ip;
            if ip.is_ipv6() != v6 {
                continue;
            }
            let c = ep.conditions.as_ref();
            let (ready, serving, terminating) =
                c.map_or((None, None, None), |c| (c.ready, c.serving, c.terminating));
            let state = if terminating == Some(true) {
                if serving.or(ready) == Some(true) {
                    KubeState::Draining
                } else {
                    KubeState::NotServing
                }
            } else if ready.unwrap_or(true) {
                KubeState::Ready
            } else {
                KubeState::NotServing
            };
            out.push(KubeEndpoint {
                address: SocketAddr::new(ip, target),
                state,
                pod: ep
                    .target_ref
                    .as_ref()
                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                    .and_then(|r| r.name.clone()),
                slice: slice_name.clone(),
            });
        }
    }
    out.sort_by_key(|e| (e.address, e.state));
    out.dedup_by(|later, kept| later.address == kept.address);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(target: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "echo", "namespace": "demo"},
            "spec": {"ports": [
                {"name": "grpc", "port": 8080, "targetPort": target},
                {"name": "dns", "port": 53, "protocol": "UDP"},
            ]},
        }))
        .unwrap()
    }

    fn slice(name: &str, port: Option<i32>, endpoints: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "demo"},
            "addressType": "IPv4",
            "ports": [{"name": "grpc", "port": port, "protocol": "TCP"}],
            "endpoints": endpoints,
        }))
        .unwrap()
    }

    #[test]
    fn conditions_map_as_designed_and_duplicates_merge() {
        let key: ServiceKey = "echo.demo:grpc".parse().unwrap();
        let a = slice(
            "a",
            Some(9090),
            json!([
                {"addresses": ["10.0.0.1"], "targetRef": {"kind": "Pod", "name": "p1"}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false}},
                {"addresses": ["10.0.0.3"], "conditions": {"ready": false, "serving": true, "terminating": true}},
                {"addresses": ["10.0.0.4"], "conditions": {"ready": true, "serving": false, "terminating": true}},
                {"addresses": ["10.0.0.5"], "conditions": {"ready": false}},
                {"addresses": ["not-an-ip"]},
            ]),
        );
        // The same address again in another slice, ready there: best state wins.
        let b = slice("b", Some(9090), json!([{"addresses": ["10.0.0.5"]}]));
        let got = expected(&key, &svc(json!("grpc")), &[a, b]).unwrap();
        let states: Vec<(String, KubeState)> = got
            .iter()
            .map(|e| (e.address.to_string(), e.state))
            .collect();
        assert_eq!(
            states,
            [
                ("10.0.0.1:9090".to_owned(), KubeState::Ready),
                ("10.0.0.2:9090".to_owned(), KubeState::NotServing),
                ("10.0.0.3:9090".to_owned(), KubeState::Draining),
                ("10.0.0.4:9090".to_owned(), KubeState::NotServing),
                ("10.0.0.5:9090".to_owned(), KubeState::Ready),
            ]
        );
        assert_eq!(got[0].pod.as_deref(), Some("p1"));
    }

    #[test]
    fn numeric_target_port_fills_in_for_a_portless_slice_port() {
        let key: ServiceKey = "echo.demo:8080".parse().unwrap();
        let s = slice("a", None, json!([{"addresses": ["10.0.0.1"]}]));
        let got = expected(&key, &svc(json!(7070)), std::slice::from_ref(&s)).unwrap();
        assert_eq!(got[0].address.to_string(), "10.0.0.1:7070");
        // A named target needs the slice's number; without it, nothing.
        assert!(
            expected(&key, &svc(json!("grpc")), &[s])
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_missing_port_is_not_found_with_the_real_ports() {
        let key: ServiceKey = "echo.demo:53".parse().unwrap();
        let err = expected(&key, &svc(json!("grpc")), &[]).unwrap_err();
        match err {
            Error::NotFound { suggestions, .. } => assert_eq!(suggestions, ["echo.demo:8080"]),
            other => panic!("unexpected {other:?}"),
        }
    }
}

//! Finding eds-server through the kubeconfig, as kubectl would: the
//! Kubernetes client from `--kubeconfig`/`--context`, the eds-server Service
//! (default `eds-system/eds-server`), a ready pod behind it from its
//! EndpointSlices, and the pod port behind the Service's `admin` port.
//!
//! ```text
//!  kubeconfig ─> Service eds-system/eds-server ─> port "admin" (Service port)
//!                     │                                  │ same name in the slice
//!                     v                                  v
//!            EndpointSlices (kubernetes.io/service-name) ─> ready endpoint, Pod ref, pod port
//!                                                                 │
//!                                        Api::<Pod>::portforward(pod, [port])  (crate::http)
//! ```
//!
//! Every failure names what was looked up and what was found instead. The
//! choice of a pod is pure ([`pick_backend`]) and unit-tested; only the two
//! API reads are IO. Not here: the HTTP that runs over the forward.

use std::path::PathBuf;

use k8s_openapi::api::core::v1::{Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::error::Error;
use crate::http::Transport;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Where the kubeconfig comes from.
#[derive(Debug, Clone, Default)]
pub struct KubeSettings {
    /// `--kubeconfig`; `$KUBECONFIG` or `~/.kube/config` when unset.
    pub kubeconfig: Option<PathBuf>,
    /// `--context`; the current context when unset.
    pub context: Option<String>,
}

impl KubeSettings {
    fn describe(&self) -> String {
        let file = match &self.kubeconfig {
            Some(p) => p.display().to_string(),
            None => "$KUBECONFIG or ~/.kube/config".to_owned(),
        };
        match &self.context {
            Some(c) => format!("{file}, context {c}"),
            None => format!("{file}, current context"),
        }
    }

    /// A Kubernetes client for these settings.
    pub async fn client(&self) -> Result<kube::Client, Error> {
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..KubeConfigOptions::default()
        };
        let kubeconfig_err = |e: Box<dyn std::error::Error + Send + Sync>| Error::Kubeconfig {
            tried: self.describe(),
            source: e,
        };
        let config = match &self.kubeconfig {
            Some(path) => {
                let file = Kubeconfig::read_from(path).map_err(|e| kubeconfig_err(Box::new(e)))?;
                kube::Config::from_custom_kubeconfig(file, &options)
                    .await
                    .map_err(|e| kubeconfig_err(Box::new(e)))?
            }
            None => kube::Config::from_kubeconfig(&options)
                .await
                .map_err(|e| kubeconfig_err(Box::new(e)))?,
        };
        kube::Client::try_from(config).map_err(|source| Error::Kube {
            action: format!("building a client from {}", self.describe()),
            source: source.into(),
        })
    }
}

/// Which Service is eds-server's.
#[derive(Debug, Clone)]
pub struct ServerLocation {
    /// Namespace of the Service.
    pub namespace: String,
    /// Service name.
    pub service: String,
    /// Service port, by name or number (`admin` by default).
    pub port: String,
    /// This pod only (`--server-pod`), to look at one replica; otherwise
    /// the first ready one by name.
    pub pod: Option<String>,
}

/// A pod and port to forward to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// Pod name.
    pub pod: String,
    /// Pod port.
    pub port: u16,
}

/// Finds a ready eds-server pod and returns a port-forward transport to it.
pub async fn locate(client: &kube::Client, at: &ServerLocation) -> Result<Transport, Error> {
    let ns = &at.namespace;
    let what = format!("Service {ns}/{}", at.service);
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let svc = match services.get_opt(&at.service).await {
        Ok(Some(svc)) => svc,
        Ok(None) => {
            return Err(Error::Discovery {
                tried: what,
                problem: "no such Service in this cluster".into(),
            });
        }
        Err(source) => {
            return Err(Error::Kube {
                action: format!("get {what}"),
                source: source.into(),
            });
        }
    };
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let list = slices
        .list(&ListParams::default().labels(&format!("{SERVICE_NAME_LABEL}={}", at.service)))
        .await
        .map_err(|source| Error::Kube {
            action: format!("list EndpointSlices of {what}"),
            source: source.into(),
        })?;
    let backend =
        pick_backend(&svc, &list.items, &at.port, at.pod.as_deref()).map_err(|problem| {
            Error::Discovery {
                tried: format!("{what}, port {}", at.port),
                problem,
            }
        })?;
    Ok(Transport::PortForward {
        api: Api::<Pod>::namespaced(client.clone(), ns),
        namespace: ns.clone(),
        pod: backend.pod,
        port: backend.port,
    })
}

/// The Service port named (or numbered) `wanted`.
fn service_port<'a>(svc: &'a Service, wanted: &str) -> Result<&'a ServicePort, String> {
    let ports = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .unwrap_or_default();
    ports
        .iter()
        .find(|p| p.name.as_deref() == Some(wanted) || p.port.to_string() == wanted)
        .ok_or_else(|| {
            let have: Vec<String> = ports
                .iter()
                .map(|p| match &p.name {
                    Some(n) => format!("{n} ({})", p.port),
                    None => p.port.to_string(),
                })
                .collect();
            format!(
                "it has no port {wanted:?} (ports: {}); pick one with --server-port",
                if have.is_empty() {
                    "none".to_owned()
                } else {
                    have.join(", ")
                }
            )
        })
}

/// The first ready, non-terminating pod endpoint behind `svc`'s port
/// `wanted`, in slice and endpoint order sorted by pod name so the choice
/// is stable; with `only`, that pod or an error naming the ready ones.
/// Pure: `Err` says what was found instead.
pub fn pick_backend(
    svc: &Service,
    slices: &[EndpointSlice],
    wanted: &str,
    only: Option<&str>,
) -> Result<Backend, String> {
    let port = service_port(svc, wanted)?;
    let name = port.name.clone().unwrap_or_default();
    let numeric_target = match &port.target_port {
        None => u16::try_from(port.port).ok(),
        Some(IntOrString::Int(n)) => u16::try_from(*n).ok(),
        Some(IntOrString::String(_)) => None,
    };
    let mut candidates = Vec::new();
    let mut seen = 0usize;
    for slice in slices {
        let slice_port = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.clone().unwrap_or_default() == name)
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
            .or(numeric_target);
        for ep in slice.endpoints.iter().flatten() {
            seen += 1;
            let c = ep.conditions.as_ref();
            let ready = c.and_then(|c| c.ready).unwrap_or(true);
            let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
            let pod = ep
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| r.name.clone());
            if let (true, false, Some(pod), Some(port)) = (ready, terminating, pod, slice_port) {
                candidates.push(Backend { pod, port });
            }
        }
    }
    candidates.sort_by(|a, b| a.pod.cmp(&b.pod));
    if let Some(only) = only {
        let ready: Vec<&str> = candidates.iter().map(|b| b.pod.as_str()).collect();
        return candidates
            .iter()
            .find(|b| b.pod == only)
            .cloned()
            .ok_or_else(|| {
                format!(
                    "pod {only:?} is not a ready, non-terminating endpoint with port {wanted:?} (ready: {})",
                    if ready.is_empty() {
                        "none".to_owned()
                    } else {
                        ready.join(", ")
                    }
                )
            });
    }
    candidates.into_iter().next().ok_or_else(|| {
        if seen == 0 {
            "the Service has no endpoints: no eds-server pod is running or none matches its selector"
                .to_owned()
        } else {
            format!(
                "none of its {seen} endpoint(s) is a ready, non-terminating pod with port {wanted:?}"
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc() -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "eds-server", "namespace": "eds-system"},
            "spec": {"ports": [
                {"name": "xds", "port": 18000, "targetPort": "xds"},
                {"name": "admin", "port": 18001, "targetPort": "admin"},
            ]},
        }))
        .unwrap()
    }

    fn slice(endpoints: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": "eds-server-abc", "namespace": "eds-system"},
            "addressType": "IPv4",
            "ports": [{"name": "xds", "port": 8000}, {"name": "admin", "port": 8001}],
            "endpoints": endpoints,
        }))
        .unwrap()
    }

    #[test]
    fn picks_a_ready_pod_and_its_admin_port() {
        let s = slice(json!([
            {"addresses": ["10.0.0.2"], "conditions": {"ready": false}, "targetRef": {"kind": "Pod", "name": "eds-a"}},
            {"addresses": ["10.0.0.3"], "conditions": {"ready": true, "terminating": true}, "targetRef": {"kind": "Pod", "name": "eds-b"}},
            {"addresses": ["10.0.0.4"], "conditions": {"ready": true}, "targetRef": {"kind": "Pod", "name": "eds-d"}},
            {"addresses": ["10.0.0.5"], "targetRef": {"kind": "Pod", "name": "eds-c"}},
        ]));
        let got = pick_backend(&svc(), std::slice::from_ref(&s), "admin", None).unwrap();
        assert_eq!(
            got,
            Backend {
                pod: "eds-c".into(),
                port: 8001
            }
        );
        let by_number = pick_backend(
            &svc(),
            &[slice(
                json!([{"addresses": ["10.0.0.4"], "targetRef": {"kind": "Pod", "name": "p"}}]),
            )],
            "18001",
            None,
        )
        .unwrap();
        assert_eq!(by_number.port, 8001);
        let chosen =
            pick_backend(&svc(), std::slice::from_ref(&s), "admin", Some("eds-d")).unwrap();
        assert_eq!(chosen.pod, "eds-d");
        let err = pick_backend(&svc(), &[s], "admin", Some("eds-b")).unwrap_err();
        assert!(err.contains(r#"pod "eds-b" is not a ready"#), "{err}");
        assert!(err.contains("(ready: eds-c, eds-d)"), "{err}");
    }

    #[test]
    fn says_what_it_found_instead() {
        let err = pick_backend(&svc(), &[], "admin", None).unwrap_err();
        assert!(err.contains("no endpoints"), "{err}");
        let err = pick_backend(&svc(), &[], "metrics", None).unwrap_err();
        assert!(err.contains("xds (18000), admin (18001)"), "{err}");
        let not_ready = slice(
            json!([{"addresses": ["10.0.0.2"], "conditions": {"ready": false}, "targetRef": {"kind": "Pod", "name": "eds-a"}}]),
        );
        let err = pick_backend(&svc(), &[not_ready], "admin", None).unwrap_err();
        assert!(err.contains("none of its 1 endpoint"), "{err}");
    }
}

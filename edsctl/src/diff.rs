//! `edsctl diff`: Kubernetes vs the server's snapshot vs what each client
//! acknowledged, for one service key. Pure: the command fetches, this
//! compares.
//!
//! ```text
//!  Kubernetes (EndpointSlices)   eds-server (/debug/endpoints)   clients (/debug/clients)
//!        address + state    <->      address + health             per (stream, type, name):
//!                                                                  sent vs acked version, NACK
//! ```
//!
//! Endpoints agree when the server serves exactly the addresses Kubernetes
//! says are ready (HEALTHY) or terminating-and-serving (DRAINING), and
//! nothing else; a not-serving endpoint may be absent or UNHEALTHY.
//! A client agrees when, for every resource named like the key (any type:
//! CDS, EDS, LDS, RDS), it has acknowledged the version the server last
//! sent it and no NACK of it is outstanding.
//!
//! What this cannot see: the server's admin API does not expose the
//! resource version it *would* send a client now (that depends on the
//! client's zone), so a stream whose push is still in flight shows as
//! `pending`, not as behind the topology.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Serialize;

use crate::k8s::{KubeEndpoint, KubeState};
use crate::model::{ClientsView, EndpointsView, TypeStats};

/// How one address compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndpointVerdict {
    /// Same address, expected health.
    Agree,
    /// Not serving in Kubernetes, and absent (or UNHEALTHY) on the server.
    Withheld,
    /// Kubernetes serves it; the server does not have it.
    MissingOnServer,
    /// The server serves it; Kubernetes does not have it.
    OnlyOnServer,
    /// Both have it, with different health.
    HealthDiffers,
}

impl EndpointVerdict {
    /// Whether this is agreement.
    pub fn agrees(self) -> bool {
        matches!(self, EndpointVerdict::Agree | EndpointVerdict::Withheld)
    }

    /// Text for tables.
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointVerdict::Agree => "ok",
            EndpointVerdict::Withheld => "ok (withheld)",
            EndpointVerdict::MissingOnServer => "missing on server",
            EndpointVerdict::OnlyOnServer => "only on server",
            EndpointVerdict::HealthDiffers => "health differs",
        }
    }
}

/// One address in the diff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointRow {
    /// `ip:port`.
    pub address: String,
    /// Pod, from whichever side knows it.
    pub pod: Option<String>,
    /// Kubernetes' state, if Kubernetes has it.
    pub kubernetes: Option<KubeState>,
    /// The server's health, if the server has it.
    pub server: Option<String>,
    /// The comparison.
    pub verdict: EndpointVerdict,
}

/// How one client's copy of one resource compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientVerdict {
    /// Acknowledged the version last sent.
    Acked,
    /// Sent a newer version than it acknowledged (in flight, or stuck).
    Pending,
    /// Rejected the version it was sent.
    Nacked,
    /// Subscribed, but the server has sent it nothing for this name.
    NotSent,
}

impl ClientVerdict {
    /// Whether this is agreement.
    pub fn agrees(self) -> bool {
        self == ClientVerdict::Acked
    }

    /// Text for tables.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientVerdict::Acked => "acked",
            ClientVerdict::Pending => "pending",
            ClientVerdict::Nacked => "NACKED",
            ClientVerdict::NotSent => "not sent",
        }
    }
}

/// One (stream, type, resource name) in the diff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientRow {
    /// Server-local stream id.
    pub stream: u64,
    /// Node id.
    pub node_id: String,
    /// Client zone.
    pub zone: Option<String>,
    /// `eds`, `cds`, `lds`, `rds`.
    #[serde(rename = "type")]
    pub type_: String,
    /// The resource name as the client asked for it.
    pub resource: String,
    /// Version the server last sent this resource in.
    pub sent: Option<String>,
    /// Version the client acknowledged.
    pub acked: Option<String>,
    /// The comparison.
    pub verdict: ClientVerdict,
    /// The NACK's message, for [`ClientVerdict::Nacked`].
    pub reason: Option<String>,
}

/// The whole comparison.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiffReport {
    /// The key as asked.
    pub key: String,
    /// The canonical key.
    pub canonical: String,
    /// The server's content version of the endpoint set.
    pub server_version: String,
    /// Every address either side has, sorted.
    pub endpoints: Vec<EndpointRow>,
    /// Every client resource named like the key, by stream, type, name.
    pub clients: Vec<ClientRow>,
    /// Whether everything agrees.
    pub agree: bool,
}

impl DiffReport {
    /// Addresses that disagree.
    pub fn endpoint_disagreements(&self) -> usize {
        self.endpoints
            .iter()
            .filter(|e| !e.verdict.agrees())
            .count()
    }

    /// Client resources that disagree.
    pub fn client_disagreements(&self) -> usize {
        self.clients.iter().filter(|c| !c.verdict.agrees()).count()
    }
}

/// Where one client stands on resource `name` of type `t`, and the NACK
/// reason when it rejected it.
pub fn resource_state(t: &TypeStats, name: &str) -> (ClientVerdict, Option<String>) {
    if let Some(reason) = t.nack_outstanding_for(name) {
        return (ClientVerdict::Nacked, Some(reason));
    }
    let sent = t.sent_resources.get(name);
    let verdict = match sent {
        None => ClientVerdict::NotSent,
        Some(v) if t.acked_resources.get(name) == Some(v) => ClientVerdict::Acked,
        Some(_) => ClientVerdict::Pending,
    };
    (verdict, None)
}

/// Compares the three views. `names_key(name)` says whether a resource
/// name (any accepted form) denotes this service key; the caller resolves
/// port names through the server.
pub fn compare(
    kube: &[KubeEndpoint],
    server: &EndpointsView,
    clients: &ClientsView,
    names_key: &dyn Fn(&str) -> bool,
) -> DiffReport {
    // Keyed by parsed address so `10.0.0.1:80` and an odd spelling of it
    // meet; an address the server sends unparsed keeps its own text.
    let mut rows: BTreeMap<(Option<SocketAddr>, String), EndpointRow> = BTreeMap::new();
    for k in kube {
        rows.insert(
            (Some(k.address), k.address.to_string()),
            EndpointRow {
                address: k.address.to_string(),
                pod: k.pod.clone(),
                kubernetes: Some(k.state),
                server: None,
                verdict: EndpointVerdict::Agree,
            },
        );
    }
    for e in &server.endpoints {
        let parsed: Option<SocketAddr> = e.address.parse().ok();
        let text = parsed.map_or_else(|| e.address.clone(), |a| a.to_string());
        let row = rows.entry((parsed, text.clone())).or_insert(EndpointRow {
            address: text,
            pod: None,
            kubernetes: None,
            server: None,
            verdict: EndpointVerdict::Agree,
        });
        row.server = Some(e.health.clone());
        if row.pod.is_none() {
            row.pod = e.pod.clone();
        }
    }
    for row in rows.values_mut() {
        row.verdict = match (row.kubernetes, row.server.as_deref()) {
            (Some(state), None) => match state.expected_health() {
                None => EndpointVerdict::Withheld,
                Some(_) => EndpointVerdict::MissingOnServer,
            },
            (None, _) => EndpointVerdict::OnlyOnServer,
            (Some(state), Some(health)) => match state.expected_health() {
                Some(h) if h.as_str() == health => EndpointVerdict::Agree,
                None if health == "UNHEALTHY" => EndpointVerdict::Withheld,
                _ => EndpointVerdict::HealthDiffers,
            },
        };
    }
    let endpoints: Vec<EndpointRow> = rows.into_values().collect();

    let mut client_rows = Vec::new();
    for c in &clients.clients {
        for t in &c.stats.types {
            let mut names: Vec<&String> = t
                .subscribed
                .iter()
                .chain(t.sent_resources.keys())
                .chain(t.acked_resources.keys())
                .chain(t.nacked_resources.keys())
                .filter(|n| names_key(n))
                .collect();
            names.sort();
            names.dedup();
            for name in names {
                let sent = t.sent_resources.get(name).cloned();
                let acked = t.acked_resources.get(name).cloned();
                let (verdict, reason) = resource_state(t, name);
                client_rows.push(ClientRow {
                    stream: c.id,
                    node_id: c.stats.client.node_id.clone(),
                    zone: c.stats.client.zone.clone(),
                    type_: t.short_type().to_owned(),
                    resource: name.clone(),
                    sent,
                    acked,
                    verdict,
                    reason,
                });
            }
        }
    }
    client_rows
        .sort_by(|a, b| (a.stream, &a.type_, &a.resource).cmp(&(b.stream, &b.type_, &b.resource)));
    let agree = endpoints.iter().all(|e| e.verdict.agrees())
        && client_rows.iter().all(|c| c.verdict.agrees());
    DiffReport {
        key: server.key.clone(),
        canonical: server.canonical.clone(),
        server_version: server.version.clone(),
        endpoints,
        clients: client_rows,
        agree,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        ClientEntry, ClientInfo, Counters, EndpointView, NackRecord, Protocol, StreamKind,
        SubscriberStats, Time,
    };
    use std::time::{Duration, UNIX_EPOCH};

    const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

    fn at(s: u64) -> Time {
        Time(UNIX_EPOCH + Duration::from_secs(s))
    }

    fn kube(addr: &str, state: KubeState) -> KubeEndpoint {
        KubeEndpoint {
            address: addr.parse().unwrap(),
            state,
            pod: Some(format!("pod-{addr}")),
            slice: "s".into(),
        }
    }

    fn server(eps: &[(&str, &str)]) -> EndpointsView {
        EndpointsView {
            api_version: crate::model::API_VERSION.into(),
            key: "echo.demo:8080".into(),
            canonical: "echo.demo:8080".into(),
            version: "v1".into(),
            endpoints: eps
                .iter()
                .map(|(a, h)| EndpointView {
                    address: (*a).into(),
                    pod: None,
                    node: None,
                    zone: None,
                    health: (*h).into(),
                    weight: 1,
                    ready_since: None,
                    drain_deadline: None,
                    labels: BTreeMap::new(),
                })
                .collect(),
        }
    }

    fn client(id: u64, name: &str, sent: &str, acked: &str, nack: Option<&str>) -> ClientEntry {
        let map = |v: &str| {
            if v.is_empty() {
                BTreeMap::new()
            } else {
                BTreeMap::from([(name.to_owned(), v.to_owned())])
            }
        };
        ClientEntry {
            id,
            peer: None,
            connected_at: at(0),
            last_activity: at(0),
            backlog: Default::default(),
            stats: SubscriberStats {
                client: ClientInfo {
                    node_id: format!("node-{id}"),
                    cluster: String::new(),
                    zone: Some("zone-a".into()),
                    unhealthy_endpoints: false,
                },
                protocol: Protocol::Sotw,
                stream: StreamKind::Aggregated,
                counters: Counters::default(),
                errors: 0,
                types: vec![TypeStats {
                    type_url: EDS.into(),
                    wildcard: false,
                    subscribed: vec![name.into(), "other.demo:1".into()],
                    sent_version: None,
                    sent_resources: map(sent),
                    pending_nonce: None,
                    acked_version: None,
                    acked_resources: map(acked),
                    nacked_resources: if nack.is_some() {
                        map(sent)
                    } else {
                        BTreeMap::new()
                    },
                    last_ack_at: Some(at(1)),
                    last_nack: nack.map(|m| NackRecord {
                        rejected_version: sent.into(),
                        client_version: acked.into(),
                        nonce: "2".into(),
                        code: 3,
                        message: m.into(),
                        resources: vec![name.into()],
                        stale: false,
                        at: at(2),
                    }),
                    counters: Counters::default(),
                }],
            },
        }
    }

    fn clients(list: Vec<ClientEntry>) -> ClientsView {
        ClientsView {
            api_version: crate::model::API_VERSION.into(),
            at: at(10),
            clients: list,
        }
    }

    fn is_echo(name: &str) -> bool {
        name.starts_with("echo.demo")
    }

    #[test]
    fn agreement_everywhere() {
        let k = [
            kube("10.0.0.1:9090", KubeState::Ready),
            kube("10.0.0.2:9090", KubeState::Draining),
            kube("10.0.0.3:9090", KubeState::NotServing),
        ];
        let s = server(&[("10.0.0.1:9090", "HEALTHY"), ("10.0.0.2:9090", "DRAINING")]);
        let c = clients(vec![client(1, "echo.demo:grpc", "a", "a", None)]);
        let r = compare(&k, &s, &c, &is_echo);
        assert!(r.agree, "{r:#?}");
        assert_eq!(r.endpoints[2].verdict, EndpointVerdict::Withheld);
        // Only the resource named like the key is compared.
        assert_eq!(r.clients.len(), 1);
        assert_eq!(r.clients[0].resource, "echo.demo:grpc");
    }

    #[test]
    fn every_endpoint_disagreement_is_named() {
        let k = [
            kube("10.0.0.1:9090", KubeState::Ready),
            kube("10.0.0.2:9090", KubeState::NotServing),
            kube("10.0.0.4:9090", KubeState::Draining),
        ];
        let s = server(&[
            ("10.0.0.2:9090", "HEALTHY"),
            ("10.0.0.3:9090", "HEALTHY"),
            ("10.0.0.4:9090", "HEALTHY"),
        ]);
        let r = compare(&k, &s, &clients(vec![]), &is_echo);
        let verdicts: Vec<_> = r.endpoints.iter().map(|e| e.verdict).collect();
        assert_eq!(
            verdicts,
            [
                EndpointVerdict::MissingOnServer,
                EndpointVerdict::HealthDiffers,
                EndpointVerdict::OnlyOnServer,
                EndpointVerdict::HealthDiffers,
            ]
        );
        assert!(!r.agree);
        assert_eq!(r.endpoint_disagreements(), 4);
    }

    #[test]
    fn nacked_pending_and_unsent_clients_disagree() {
        let k = [kube("10.0.0.1:9090", KubeState::Ready)];
        let s = server(&[("10.0.0.1:9090", "HEALTHY")]);
        let c = clients(vec![
            client(1, "echo.demo:8080", "b", "a", Some("duplicate address")),
            client(2, "echo.demo:8080", "b", "a", None),
            client(3, "echo.demo:8080", "", "", None),
            client(4, "echo.demo:8080", "b", "b", None),
        ]);
        let r = compare(&k, &s, &c, &is_echo);
        let verdicts: Vec<_> = r.clients.iter().map(|c| c.verdict).collect();
        assert_eq!(
            verdicts,
            [
                ClientVerdict::Nacked,
                ClientVerdict::Pending,
                ClientVerdict::NotSent,
                ClientVerdict::Acked,
            ]
        );
        assert_eq!(r.clients[0].reason.as_deref(), Some("duplicate address"));
        assert!(!r.agree);
        assert_eq!(r.client_disagreements(), 3);
    }
}

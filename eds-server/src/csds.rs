//! The Client Status Discovery Service (`envoy.service.status.v3`, CSDS):
//! what every connected xDS stream asked for, was sent, acknowledged or
//! rejected, in the standard shape tools such as `istioctl`-style status
//! views and `edsctl` read.
//!
//! ```text
//!  ClientRegistry (serve.rs) ──list()──> ClientEntry { stats: SubscriberStats }   one per open stream
//!        │                                               │
//!        │   ClientStatusRequest.node_matchers ──filter──┤ (node id: exact, prefix,
//!        │                                               │  suffix, contains; OR-ed)
//!        v                                               v
//!  ClientStatusResponse { config: [ClientConfig { node, generic_xds_configs: per type, per resource }] }
//! ```
//!
//! Per resource, from the stream's [`TypeStats`]:
//!
//! | server sent | client acked | rejected     | `config_status` | `client_status` |
//! |-------------|--------------|--------------|-----------------|-----------------|
//! | v           | v            | -            | SYNCED          | ACKED           |
//! | v           | u (older)    | -            | STALE           | ACKED           |
//! | v           | nothing      | -            | STALE           | REQUESTED       |
//! | v           | any          | v            | ERROR           | NACKED          |
//! | nothing     | u            | -            | STALE if a response awaits its ACK, else NOT_SENT | ACKED |
//! | nothing     | nothing      | -            | NOT_SENT        | REQUESTED       |
//!
//! `version_info` is the resource's version the client acknowledged (empty
//! when none); `last_updated` is when the stream's last ACK of that type
//! arrived; `error_state` carries the rejected version and the client's
//! NACK message. Resources listed are the subscribed names, plus, for a
//! wildcard subscription, everything sent or acknowledged.
//!
//! What this is not: a config dump. Resource bodies are never included
//! (`xds_config` stays empty whatever `exclude_resource_contents` says):
//! streams keep versions, not bodies, which are shared per version and
//! may be gone by the time CSDS asks. Node matching supports node id string
//! matchers only; regular expressions, custom matchers and node metadata
//! matchers are refused with `InvalidArgument` rather than silently
//! ignored, so a tool never mistakes "unsupported" for "no such client".

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use futures::{Stream, StreamExt};
use proto::xds::pb::envoy::admin::v3::{ClientResourceStatus, UpdateFailureState};
use proto::xds::pb::envoy::config::core::v3::{Locality, Node};
use proto::xds::pb::envoy::service::status::v3::client_config::GenericXdsConfig;
use proto::xds::pb::envoy::service::status::v3::client_status_discovery_service_server::ClientStatusDiscoveryService;
use proto::xds::pb::envoy::service::status::v3::{
    ClientConfig, ClientStatusRequest, ClientStatusResponse, ConfigStatus,
};
use proto::xds::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use proto::xds::pb::envoy::r#type::matcher::v3::{NodeMatcher, StringMatcher};
use proto::xds::pb::google::protobuf::Timestamp;
use tonic::{Request, Response, Status, Streaming};

use crate::serve::{ClientEntry, ClientRegistry};
use crate::xds::{ClientInfo, SubscriberStats, TypeStats};

/// A `ClientStatusRequest` this server cannot answer faithfully.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsdsError {
    /// A node matcher uses a feature eds-server does not evaluate.
    #[error(
        "node_matchers[{index}]: {what} is not supported by eds-server's CSDS; \
         match on node_id with exact, prefix, suffix or contains"
    )]
    UnsupportedMatcher {
        /// Position of the matcher in `node_matchers`.
        index: usize,
        /// What it asked for.
        what: &'static str,
    },
    /// A node id matcher without a pattern (the oneof is required).
    #[error("node_matchers[{index}].node_id has no match pattern")]
    EmptyMatcher {
        /// Position of the matcher in `node_matchers`.
        index: usize,
    },
}

impl From<CsdsError> for Status {
    fn from(err: CsdsError) -> Self {
        Status::invalid_argument(err.to_string())
    }
}

/// One supported node id pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Any,
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
}

/// A node id matcher, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
struct IdMatcher {
    pattern: Pattern,
    ignore_case: bool,
}

impl IdMatcher {
    fn parse(index: usize, matcher: &NodeMatcher) -> Result<Self, CsdsError> {
        if !matcher.node_metadatas.is_empty() {
            return Err(CsdsError::UnsupportedMatcher {
                index,
                what: "node_metadatas",
            });
        }
        let Some(StringMatcher {
            ignore_case,
            match_pattern,
        }) = &matcher.node_id
        else {
            // No criterion at all: every node.
            return Ok(IdMatcher {
                pattern: Pattern::Any,
                ignore_case: false,
            });
        };
        let fold = |s: &str| {
            if *ignore_case {
                s.to_lowercase()
            } else {
                s.to_owned()
            }
        };
        let pattern = match match_pattern {
            None => return Err(CsdsError::EmptyMatcher { index }),
            Some(MatchPattern::Exact(s)) => Pattern::Exact(fold(s)),
            Some(MatchPattern::Prefix(s)) => Pattern::Prefix(fold(s)),
            Some(MatchPattern::Suffix(s)) => Pattern::Suffix(fold(s)),
            Some(MatchPattern::Contains(s)) => Pattern::Contains(fold(s)),
            Some(MatchPattern::SafeRegex(_)) => {
                return Err(CsdsError::UnsupportedMatcher {
                    index,
                    what: "node_id.safe_regex",
                });
            }
            Some(MatchPattern::Custom(_)) => {
                return Err(CsdsError::UnsupportedMatcher {
                    index,
                    what: "node_id.custom",
                });
            }
        };
        Ok(IdMatcher {
            pattern,
            ignore_case: *ignore_case,
        })
    }

    fn matches(&self, node_id: &str) -> bool {
        let id = if self.ignore_case {
            node_id.to_lowercase()
        } else {
            node_id.to_owned()
        };
        match &self.pattern {
            Pattern::Any => true,
            Pattern::Exact(s) => id == *s,
            Pattern::Prefix(s) => id.starts_with(s.as_str()),
            Pattern::Suffix(s) => id.ends_with(s.as_str()),
            Pattern::Contains(s) => id.contains(s.as_str()),
        }
    }
}

/// Which streams a request selects: all without matchers, otherwise those
/// any matcher accepts ("The match follows OR semantics", csds.proto).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFilter(Vec<IdMatcher>);

impl NodeFilter {
    /// Validates a request's `node_matchers`.
    pub fn from_request(req: &ClientStatusRequest) -> Result<Self, CsdsError> {
        req.node_matchers
            .iter()
            .enumerate()
            .map(|(i, m)| IdMatcher::parse(i, m))
            .collect::<Result<_, _>>()
            .map(NodeFilter)
    }

    /// Whether a client with this node id is selected.
    pub fn matches(&self, node_id: &str) -> bool {
        self.0.is_empty() || self.0.iter().any(|m| m.matches(node_id))
    }
}

/// The answer to one request, from the streams open now.
pub fn client_status(
    clients: &[ClientEntry],
    req: &ClientStatusRequest,
) -> Result<ClientStatusResponse, CsdsError> {
    let filter = NodeFilter::from_request(req)?;
    Ok(ClientStatusResponse {
        config: clients
            .iter()
            .filter(|c| filter.matches(&c.stats.client.node_id))
            .map(|c| client_config(&c.stats))
            .collect(),
    })
}

/// The `Node` a client identified itself with, as far as the server keeps it.
pub fn node(client: &ClientInfo) -> Node {
    Node {
        id: client.node_id.clone(),
        cluster: client.cluster.clone(),
        locality: client.zone.as_ref().map(|zone| Locality {
            zone: zone.clone(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// One stream's state as a CSDS `ClientConfig`.
pub fn client_config(stats: &SubscriberStats) -> ClientConfig {
    ClientConfig {
        node: Some(node(&stats.client)),
        generic_xds_configs: stats.types.iter().flat_map(type_configs).collect(),
        ..Default::default()
    }
}

/// Every resource of one type the stream is concerned with, sorted by name.
fn type_configs(ty: &TypeStats) -> Vec<GenericXdsConfig> {
    let mut names: BTreeSet<&str> = ty.subscribed.iter().map(String::as_str).collect();
    if ty.wildcard {
        names.extend(ty.sent_resources.keys().map(String::as_str));
        names.extend(ty.acked_resources.keys().map(String::as_str));
    }
    names
        .into_iter()
        .map(|name| resource_config(ty, name))
        .collect()
}

/// One resource's status (see the table in the module documentation).
fn resource_config(ty: &TypeStats, name: &str) -> GenericXdsConfig {
    let sent = ty.sent_resources.get(name);
    let acked = ty.acked_resources.get(name);
    // Rejected only while the rejected version is still the one sent.
    let rejected = ty.nacked_resources.get(name).filter(|v| Some(*v) == sent);
    let acked_status = if acked.is_some() {
        ClientResourceStatus::Acked
    } else {
        ClientResourceStatus::Requested
    };
    let (config_status, client_status) = match (sent, acked, rejected) {
        (Some(_), _, Some(_)) => (ConfigStatus::Error, ClientResourceStatus::Nacked),
        (Some(s), Some(a), None) if s == a => (ConfigStatus::Synced, ClientResourceStatus::Acked),
        (Some(_), _, None) => (ConfigStatus::Stale, acked_status),
        (None, Some(_), _) if ty.pending_nonce.is_some() => (ConfigStatus::Stale, acked_status),
        (None, _, _) => (ConfigStatus::NotSent, acked_status),
    };
    let error_state = rejected.map(|version| {
        let nack = ty.last_nack.as_ref();
        UpdateFailureState {
            failed_configuration: None,
            last_update_attempt: nack.map(|n| timestamp(n.at)),
            details: nack.map(|n| n.message.clone()).unwrap_or_default(),
            version_info: version.as_str().to_owned(),
        }
    });
    GenericXdsConfig {
        type_url: ty.type_url.to_owned(),
        name: name.to_owned(),
        version_info: acked.map(|v| v.as_str().to_owned()).unwrap_or_default(),
        xds_config: None,
        last_updated: acked.and(ty.last_ack_at).map(timestamp),
        config_status: config_status as i32,
        client_status: client_status as i32,
        error_state,
        is_static_resource: false,
    }
}

fn timestamp(at: SystemTime) -> Timestamp {
    // Times come from SystemTime::now() of this process: after the epoch.
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(since.subsec_nanos()).unwrap_or(0),
    }
}

/// The tonic service, reading the server's [`ClientRegistry`].
#[derive(Debug, Clone)]
pub struct CsdsService {
    clients: Arc<ClientRegistry>,
}

impl CsdsService {
    /// A service answering from `clients`.
    pub fn new(clients: Arc<ClientRegistry>) -> Self {
        Self { clients }
    }
}

type StatusStream = Pin<Box<dyn Stream<Item = Result<ClientStatusResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ClientStatusDiscoveryService for CsdsService {
    type StreamClientStatusStream = StatusStream;

    async fn stream_client_status(
        &self,
        request: Request<Streaming<ClientStatusRequest>>,
    ) -> Result<Response<Self::StreamClientStatusStream>, Status> {
        let clients = Arc::clone(&self.clients);
        // Each request is answered with the state at that moment; the first
        // invalid request (or a client error) ends the stream.
        let answers = request
            .into_inner()
            .scan(false, move |failed, req| {
                if *failed {
                    return futures::future::ready(None);
                }
                let answer =
                    req.and_then(|req| client_status(&clients.list(), &req).map_err(Status::from));
                *failed = answer.is_err();
                futures::future::ready(Some(answer))
            })
            .boxed();
        Ok(Response::new(answers))
    }

    async fn fetch_client_status(
        &self,
        request: Request<ClientStatusRequest>,
    ) -> Result<Response<ClientStatusResponse>, Status> {
        Ok(Response::new(client_status(
            &self.clients.list(),
            request.get_ref(),
        )?))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use proto::xds::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
    use proto::xds::pb::envoy::r#type::matcher::v3::{RegexMatcher, StructMatcher};
    use proto::xds::pb::google::rpc::Status as RpcStatus;

    use super::*;
    use crate::xds::{
        Counters, DeltaStream, MemorySource, NackRecord, Protocol, ResourceType, ResourceVersion,
        SotwStream, StreamKind,
    };

    const EDS: ResourceType = ResourceType::ClusterLoadAssignment;
    const CDS: ResourceType = ResourceType::Cluster;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn versions(pairs: &[(&str, &str)]) -> BTreeMap<String, ResourceVersion> {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), ResourceVersion::new(v)))
            .collect()
    }

    fn type_stats(ty: ResourceType) -> TypeStats {
        TypeStats {
            type_url: ty.type_url(),
            wildcard: false,
            subscribed: Vec::new(),
            sent_version: None,
            sent_resources: BTreeMap::new(),
            pending_nonce: None,
            acked_version: None,
            acked_resources: BTreeMap::new(),
            nacked_resources: BTreeMap::new(),
            last_ack_at: None,
            last_nack: None,
            counters: Counters::default(),
        }
    }

    fn subscriber(node_id: &str, types: Vec<TypeStats>) -> SubscriberStats {
        SubscriberStats {
            client: ClientInfo::new(node_id, Some("zone-a")),
            protocol: Protocol::Sotw,
            stream: StreamKind::Aggregated,
            counters: Counters::default(),
            errors: 0,
            types,
        }
    }

    fn entry(id: u64, stats: SubscriberStats) -> ClientEntry {
        ClientEntry {
            id,
            peer: None,
            connected_at: at(0),
            last_activity: at(0),
            stats,
            backlog: crate::outbox::Backlog::default(),
        }
    }

    /// (name, config status, client status, version_info) per resource.
    fn summary(config: &ClientConfig) -> Vec<(String, ConfigStatus, ClientResourceStatus, String)> {
        config
            .generic_xds_configs
            .iter()
            .map(|g| {
                (
                    g.name.clone(),
                    ConfigStatus::try_from(g.config_status).unwrap(),
                    ClientResourceStatus::try_from(g.client_status).unwrap(),
                    g.version_info.clone(),
                )
            })
            .collect()
    }

    fn row(
        name: &str,
        config: ConfigStatus,
        client: ClientResourceStatus,
        version: &str,
    ) -> (String, ConfigStatus, ClientResourceStatus, String) {
        (name.to_owned(), config, client, version.to_owned())
    }

    #[test]
    fn every_resource_state_maps_to_its_csds_status() {
        let mut eds = type_stats(EDS);
        eds.subscribed = ["synced", "stale", "requested", "nacked", "missing", "gone"]
            .map(str::to_owned)
            .to_vec();
        eds.sent_resources = versions(&[
            ("synced", "1"),
            ("stale", "2"),
            ("requested", "1"),
            ("nacked", "3"),
        ]);
        eds.acked_resources = versions(&[
            ("synced", "1"),
            ("stale", "1"),
            ("nacked", "2"),
            ("gone", "1"),
        ]);
        eds.nacked_resources = versions(&[("nacked", "3")]);
        eds.last_ack_at = Some(at(10));
        eds.last_nack = Some(NackRecord {
            rejected_version: "v3".into(),
            client_version: "v2".into(),
            nonce: "7".into(),
            code: 3,
            message: "duplicate address 10.0.0.1:80".into(),
            resources: vec!["nacked".into()],
            stale: false,
            at: at(20),
        });
        let config = client_config(&subscriber("pod-1", vec![eds]));

        let node = config.node.as_ref().unwrap();
        assert_eq!(node.id, "pod-1");
        assert_eq!(node.locality.as_ref().unwrap().zone, "zone-a");

        use ClientResourceStatus as C;
        use ConfigStatus as S;
        assert_eq!(
            summary(&config),
            [
                row("gone", S::NotSent, C::Acked, "1"),
                row("missing", S::NotSent, C::Requested, ""),
                row("nacked", S::Error, C::Nacked, "2"),
                row("requested", S::Stale, C::Requested, ""),
                row("stale", S::Stale, C::Acked, "1"),
                row("synced", S::Synced, C::Acked, "1"),
            ]
        );
        let nacked = &config.generic_xds_configs[2];
        let error = nacked.error_state.as_ref().unwrap();
        assert_eq!(error.details, "duplicate address 10.0.0.1:80");
        assert_eq!(error.version_info, "3", "the rejected version");
        assert_eq!(error.last_update_attempt.as_ref().unwrap().seconds, 20);
        let synced = &config.generic_xds_configs[5];
        assert!(synced.error_state.is_none());
        assert_eq!(synced.last_updated.as_ref().unwrap().seconds, 10);
        assert_eq!(synced.type_url, EDS.type_url());
        assert!(synced.xds_config.is_none(), "no resource bodies");
        assert_eq!(
            config.generic_xds_configs[1].last_updated, None,
            "nothing acked"
        );
    }

    #[test]
    fn a_removal_awaiting_its_ack_is_stale() {
        let mut cds = type_stats(CDS);
        cds.wildcard = true;
        cds.acked_resources = versions(&[("a", "1"), ("b", "1")]);
        cds.sent_resources = versions(&[("a", "1")]);
        cds.pending_nonce = Some("4".into());
        use ClientResourceStatus as C;
        use ConfigStatus as S;
        assert_eq!(
            summary(&client_config(&subscriber("n", vec![cds]))),
            [
                row("a", S::Synced, C::Acked, "1"),
                row("b", S::Stale, C::Acked, "1")
            ],
            "wildcard lists what was sent or acked"
        );
    }

    #[test]
    fn a_rejected_version_replaced_by_a_newer_one_is_stale_not_error() {
        let mut eds = type_stats(EDS);
        eds.subscribed = vec!["a".into()];
        eds.sent_resources = versions(&[("a", "4")]);
        eds.acked_resources = versions(&[("a", "2")]);
        eds.nacked_resources = versions(&[("a", "3")]);
        let config = client_config(&subscriber("n", vec![eds]));
        assert_eq!(
            summary(&config),
            [row(
                "a",
                ConfigStatus::Stale,
                ClientResourceStatus::Acked,
                "2"
            )]
        );
    }

    fn sotw_request(names: &[&str]) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: EDS.type_url().into(),
            resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
            node: Some(Node {
                id: "grpc-client".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn state_machines_feed_the_mapping_sotw() {
        let mut src = MemorySource::new();
        src.insert(EDS, "a.demo:80", "1", b"a1")
            .insert(EDS, "b.demo:80", "1", b"b1");
        let mut s = SotwStream::new(StreamKind::Aggregated);
        let names = ["a.demo:80", "b.demo:80", "c.demo:80"];
        let r1 = s
            .handle_request(sotw_request(&names), &src, at(1))
            .unwrap()
            .remove(0);
        use ClientResourceStatus as C;
        use ConfigStatus as S;
        assert_eq!(
            summary(&client_config(&s.stats())),
            [
                row("a.demo:80", S::Stale, C::Requested, ""),
                row("b.demo:80", S::Stale, C::Requested, ""),
                row("c.demo:80", S::NotSent, C::Requested, ""),
            ]
        );
        let ack = DiscoveryRequest {
            response_nonce: r1.nonce.clone(),
            version_info: r1.version_info.clone(),
            ..sotw_request(&names)
        };
        s.handle_request(ack, &src, at(2)).unwrap();
        src.insert(EDS, "a.demo:80", "2", b"a2");
        let r2 = s.on_update(&src).remove(0);
        let nack = DiscoveryRequest {
            response_nonce: r2.nonce.clone(),
            version_info: r1.version_info.clone(),
            error_detail: Some(RpcStatus {
                code: 3,
                message: "bad endpoint".into(),
                details: vec![],
            }),
            ..sotw_request(&names)
        };
        s.handle_request(nack, &src, at(3)).unwrap();
        let config = client_config(&s.stats());
        assert_eq!(config.node.unwrap().id, "grpc-client");
        assert_eq!(
            summary(&client_config(&s.stats())),
            [
                // SotW rejects a response as a whole: b was in it too.
                row("a.demo:80", S::Error, C::Nacked, "1"),
                row("b.demo:80", S::Error, C::Nacked, "1"),
                row("c.demo:80", S::NotSent, C::Requested, ""),
            ]
        );
    }

    #[test]
    fn state_machines_feed_the_mapping_delta() {
        let mut src = MemorySource::new();
        src.insert(EDS, "a.demo:80", "1", b"a1")
            .insert(EDS, "b.demo:80", "1", b"b1");
        let mut s = DeltaStream::new(StreamKind::Aggregated);
        let subscribe = DeltaDiscoveryRequest {
            type_url: EDS.type_url().into(),
            resource_names_subscribe: vec!["a.demo:80".into(), "b.demo:80".into()],
            ..Default::default()
        };
        let r1 = s.handle_request(subscribe, &src, at(1)).unwrap().remove(0);
        let answer = |nonce: &str, nack: Option<&str>| DeltaDiscoveryRequest {
            type_url: EDS.type_url().into(),
            response_nonce: nonce.into(),
            error_detail: nack.map(|m| RpcStatus {
                code: 3,
                message: m.into(),
                details: vec![],
            }),
            ..Default::default()
        };
        s.handle_request(answer(&r1.nonce, None), &src, at(2))
            .unwrap();
        src.insert(EDS, "a.demo:80", "2", b"a2");
        let r2 = s.on_update(&src).remove(0);
        s.handle_request(answer(&r2.nonce, Some("no")), &src, at(3))
            .unwrap();
        use ClientResourceStatus as C;
        use ConfigStatus as S;
        assert_eq!(
            summary(&client_config(&s.stats())),
            [
                // Delta rejects per response, and b was not in it.
                row("a.demo:80", S::Error, C::Nacked, "1"),
                row("b.demo:80", S::Synced, C::Acked, "1"),
            ]
        );
        src.insert(EDS, "a.demo:80", "3", b"a3");
        let r3 = s.on_update(&src).remove(0);
        assert_eq!(
            summary(&client_config(&s.stats()))[0],
            row("a.demo:80", S::Stale, C::Acked, "1"),
            "a newer version replaces the rejected one"
        );
        s.handle_request(answer(&r3.nonce, None), &src, at(4))
            .unwrap();
        assert_eq!(
            summary(&client_config(&s.stats()))[0],
            row("a.demo:80", S::Synced, C::Acked, "3")
        );
    }

    fn exact(id: &str) -> NodeMatcher {
        NodeMatcher {
            node_id: Some(StringMatcher {
                match_pattern: Some(MatchPattern::Exact(id.into())),
                ignore_case: false,
            }),
            node_metadatas: vec![],
        }
    }

    fn request(matchers: Vec<NodeMatcher>) -> ClientStatusRequest {
        ClientStatusRequest {
            node_matchers: matchers,
            ..Default::default()
        }
    }

    fn ids(response: &ClientStatusResponse) -> Vec<String> {
        response
            .config
            .iter()
            .map(|c| c.node.as_ref().unwrap().id.clone())
            .collect()
    }

    #[test]
    fn node_matchers_select_streams_by_node_id() {
        let clients = [
            entry(0, subscriber("web-1", vec![])),
            entry(1, subscriber("web-2", vec![])),
            entry(2, subscriber("Batch-1", vec![])),
            entry(3, subscriber("web-1", vec![type_stats(EDS)])),
        ];
        let all = client_status(&clients, &request(vec![])).unwrap();
        assert_eq!(ids(&all), ["web-1", "web-2", "Batch-1", "web-1"]);

        let one = client_status(&clients, &request(vec![exact("web-1")])).unwrap();
        assert_eq!(ids(&one), ["web-1", "web-1"], "one config per stream");

        let either = client_status(&clients, &request(vec![exact("web-2"), exact("Batch-1")]));
        assert_eq!(ids(&either.unwrap()), ["web-2", "Batch-1"], "OR semantics");

        let prefix = NodeMatcher {
            node_id: Some(StringMatcher {
                match_pattern: Some(MatchPattern::Prefix("batch".into())),
                ignore_case: true,
            }),
            node_metadatas: vec![],
        };
        let batch = client_status(&clients, &request(vec![prefix])).unwrap();
        assert_eq!(ids(&batch), ["Batch-1"]);

        let none = client_status(&clients, &request(vec![exact("nope")])).unwrap();
        assert!(none.config.is_empty());

        let any = NodeMatcher::default();
        assert_eq!(
            client_status(&clients, &request(vec![any]))
                .unwrap()
                .config
                .len(),
            4
        );
    }

    #[test]
    fn unsupported_matchers_are_invalid_arguments() {
        let regex = NodeMatcher {
            node_id: Some(StringMatcher {
                match_pattern: Some(MatchPattern::SafeRegex(RegexMatcher {
                    regex: "web-.*".into(),
                    ..Default::default()
                })),
                ignore_case: false,
            }),
            node_metadatas: vec![],
        };
        let err = client_status(&[], &request(vec![exact("a"), regex])).unwrap_err();
        assert_eq!(
            err,
            CsdsError::UnsupportedMatcher {
                index: 1,
                what: "node_id.safe_regex"
            }
        );
        let status = Status::from(err);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().contains("node_matchers[1]") && status.message().contains("exact"),
            "{}",
            status.message()
        );

        let metadata = NodeMatcher {
            node_id: None,
            node_metadatas: vec![StructMatcher::default()],
        };
        assert!(matches!(
            client_status(&[], &request(vec![metadata])),
            Err(CsdsError::UnsupportedMatcher {
                what: "node_metadatas",
                ..
            })
        ));
        let empty = NodeMatcher {
            node_id: Some(StringMatcher::default()),
            node_metadatas: vec![],
        };
        assert_eq!(
            client_status(&[], &request(vec![empty])),
            Err(CsdsError::EmptyMatcher { index: 0 })
        );
    }
}

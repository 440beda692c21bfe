//! The client side of one ADS stream for EDS, as a state machine without IO.
//!
//! ```text
//!  subscribe(name) ----------------------> Some(request)   (names changed)
//!  on_connect() -------------------------> request with every name, the last
//!                                          accepted version and no nonce
//!  on_response(resp) --all resources ok--> Accepted { updates, ack }
//!                    --any resource bad--> Rejected { errors, nack }  (state kept)
//! ```
//!
//! State of the world, as the xDS protocol describes it: every request
//! carries the whole subscription list, an ACK echoes the response's
//! `version_info` and `nonce`, a NACK echoes the nonce with the last
//! *accepted* version and an `error_detail`. A response is accepted or
//! rejected as a whole, so a half-valid update never reaches the balancer.
//!
//! This module decides; `control` does the IO. It is not a general xDS
//! client: it speaks EDS only, because the client's policies come from its
//! own configuration (see the crate docs).

use std::collections::BTreeSet;

use proto::resources::{CLUSTER_LOAD_ASSIGNMENT_TYPE_URL, ParsedCla, parse_cla, unpack};
use proto::xds::pb::envoy::config::core::v3::Node;
use proto::xds::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use proto::xds::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use proto::xds::pb::google::rpc::Status as RpcStatus;

/// What to do with one response.
#[derive(Debug)]
pub enum Verdict {
    /// Every resource parsed: apply `updates`, send `ack`.
    Accepted {
        /// Resources we subscribed to, validated, with their wire form
        /// (kept for the snapshot file). Others are ignored.
        updates: Vec<(ParsedCla, ClusterLoadAssignment)>,
        /// Names in the response that we never asked for.
        unrequested: Vec<String>,
        /// The ACK.
        ack: DiscoveryRequest,
    },
    /// Something was wrong: keep the last good state, send `nack`.
    Rejected {
        /// One line per problem, naming the resource and field.
        errors: Vec<String>,
        /// The NACK, carrying the errors in `error_detail`.
        nack: DiscoveryRequest,
    },
}

/// One ADS session's protocol state.
#[derive(Debug, Clone)]
pub struct AdsSession {
    node: Node,
    names: BTreeSet<String>,
    accepted_version: String,
    nonce: String,
}

impl AdsSession {
    /// A session announcing itself as `node`.
    pub fn new(node: Node) -> Self {
        Self {
            node,
            names: BTreeSet::new(),
            accepted_version: String::new(),
            nonce: String::new(),
        }
    }

    /// Names subscribed to.
    pub fn names(&self) -> &BTreeSet<String> {
        &self.names
    }

    /// The last version accepted, empty before the first.
    pub fn accepted_version(&self) -> &str {
        &self.accepted_version
    }

    /// Adds a name; returns the request to send when the set changed.
    pub fn subscribe(&mut self, name: &str) -> Option<DiscoveryRequest> {
        self.names
            .insert(name.to_owned())
            .then(|| self.request(self.accepted_version.clone(), None))
    }

    /// The first request on a new stream. The nonce belongs to the old
    /// stream, so it is dropped; the accepted version tells the server what
    /// we hold, so an unchanged server need not resend it.
    pub fn on_connect(&mut self) -> Option<DiscoveryRequest> {
        self.nonce.clear();
        (!self.names.is_empty()).then(|| self.request(self.accepted_version.clone(), None))
    }

    /// Judges one response.
    pub fn on_response(&mut self, response: &DiscoveryResponse) -> Verdict {
        self.nonce.clone_from(&response.nonce);
        let mut errors = Vec::new();
        let mut updates = Vec::new();
        let mut unrequested = Vec::new();
        if response.type_url != CLUSTER_LOAD_ASSIGNMENT_TYPE_URL {
            errors.push(format!(
                "type {:?} was not asked for; this client subscribes to {CLUSTER_LOAD_ASSIGNMENT_TYPE_URL} only",
                response.type_url
            ));
        } else {
            for (i, any) in response.resources.iter().enumerate() {
                let cla: ClusterLoadAssignment = match unpack(any) {
                    Ok(cla) => cla,
                    Err(e) => {
                        errors.push(format!("resources[{i}]: {e}"));
                        continue;
                    }
                };
                if !self.names.contains(&cla.cluster_name) {
                    unrequested.push(cla.cluster_name);
                    continue;
                }
                match parse_cla(&cla) {
                    Ok(parsed) => updates.push((parsed, cla)),
                    Err(e) => errors.push(e.to_string()),
                }
            }
        }
        if errors.is_empty() {
            self.accepted_version.clone_from(&response.version_info);
            let ack = self.request(self.accepted_version.clone(), None);
            Verdict::Accepted {
                updates,
                unrequested,
                ack,
            }
        } else {
            let detail = RpcStatus {
                // INVALID_ARGUMENT: the resource, not the transport, is at fault.
                code: tonic::Code::InvalidArgument as i32,
                message: errors.join("; "),
                details: Vec::new(),
            };
            let nack = self.request(self.accepted_version.clone(), Some(detail));
            Verdict::Rejected { errors, nack }
        }
    }

    fn request(&self, version_info: String, error_detail: Option<RpcStatus>) -> DiscoveryRequest {
        DiscoveryRequest {
            version_info,
            node: Some(self.node.clone()),
            resource_names: self.names.iter().cloned().collect(),
            type_url: CLUSTER_LOAD_ASSIGNMENT_TYPE_URL.to_owned(),
            response_nonce: self.nonce.clone(),
            error_detail,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_core::{Endpoint, EndpointSet};
    use proto::resources::{ClaOptions, cluster_load_assignment, pack};
    use proto::xds::pb::envoy::config::endpoint::v3::{LbEndpoint, LocalityLbEndpoints};

    fn node() -> Node {
        Node {
            id: "test".into(),
            ..Default::default()
        }
    }

    fn cla(name: &str, ips: &[&str]) -> ClusterLoadAssignment {
        let set = EndpointSet::merge(
            ips.iter()
                .map(|ip| Endpoint::new(format!("{ip}:8080").parse().unwrap()).with_zone("a"))
                .collect(),
        );
        cluster_load_assignment(name, &set, &ClaOptions::default())
    }

    fn response(
        version: &str,
        nonce: &str,
        resources: Vec<ClusterLoadAssignment>,
    ) -> DiscoveryResponse {
        DiscoveryResponse {
            version_info: version.into(),
            nonce: nonce.into(),
            type_url: CLUSTER_LOAD_ASSIGNMENT_TYPE_URL.into(),
            resources: resources.iter().map(pack).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn subscribing_sends_every_name_once() {
        let mut s = AdsSession::new(node());
        assert!(s.on_connect().is_none(), "nothing to ask for yet");
        let r = s.subscribe("b.ns:80").expect("new name");
        assert_eq!(r.resource_names, vec!["b.ns:80"]);
        assert!(s.subscribe("b.ns:80").is_none(), "already subscribed");
        let r = s.subscribe("a.ns:80").expect("new name");
        assert_eq!(r.resource_names, vec!["a.ns:80", "b.ns:80"]);
        assert_eq!(r.node.expect("node").id, "test");
        assert!(r.version_info.is_empty() && r.response_nonce.is_empty());
    }

    #[test]
    fn accepted_response_is_acked_with_its_version_and_nonce() {
        let mut s = AdsSession::new(node());
        s.subscribe("a.ns:80");
        let v = s.on_response(&response("v1", "n1", vec![cla("a.ns:80", &["10.0.0.1"])]));
        let Verdict::Accepted { updates, ack, .. } = v else {
            panic!("expected an ACK, got {v:?}")
        };
        assert_eq!(updates.len(), 1);
        assert_eq!(updates[0].0.endpoints.len(), 1);
        assert_eq!(
            (ack.version_info.as_str(), ack.response_nonce.as_str()),
            ("v1", "n1")
        );
        assert!(ack.error_detail.is_none());
        assert_eq!(s.accepted_version(), "v1");
    }

    #[test]
    fn a_bad_resource_rejects_the_whole_response_and_keeps_the_version() {
        let mut s = AdsSession::new(node());
        s.subscribe("a.ns:80");
        s.subscribe("b.ns:80");
        s.on_response(&response("v1", "n1", vec![cla("a.ns:80", &["10.0.0.1"])]));
        let mut bad = cla("b.ns:80", &["10.0.0.2"]);
        let dup = bad.endpoints[0].lb_endpoints[0].clone();
        bad.endpoints[0].lb_endpoints.push(dup);
        let v = s.on_response(&response(
            "v2",
            "n2",
            vec![cla("a.ns:80", &["10.0.0.9"]), bad],
        ));
        let Verdict::Rejected { errors, nack } = v else {
            panic!("expected a NACK, got {v:?}")
        };
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].contains("b.ns:80") && errors[0].contains("already appears"),
            "{errors:?}"
        );
        assert_eq!(
            nack.version_info, "v1",
            "a NACK carries the last accepted version"
        );
        assert_eq!(nack.response_nonce, "n2");
        let detail = nack.error_detail.expect("error detail");
        assert_eq!(detail.code, tonic::Code::InvalidArgument as i32);
        assert!(detail.message.contains("b.ns:80"));
        assert_eq!(s.accepted_version(), "v1");
    }

    #[test]
    fn wrong_type_and_undecodable_resources_are_rejected() {
        let mut s = AdsSession::new(node());
        s.subscribe("a.ns:80");
        let mut r = response("v1", "n1", vec![]);
        r.type_url = "type.googleapis.com/envoy.config.cluster.v3.Cluster".into();
        assert!(matches!(s.on_response(&r), Verdict::Rejected { .. }));
        let mut r = response("v1", "n2", vec![cla("a.ns:80", &["10.0.0.1"])]);
        r.resources[0].value = vec![0xff, 0xff, 0xff];
        let Verdict::Rejected { errors, .. } = s.on_response(&r) else {
            panic!("undecodable bytes must be rejected")
        };
        assert!(errors[0].starts_with("resources[0]"), "{errors:?}");
    }

    #[test]
    fn unrequested_names_are_ignored_not_applied() {
        let mut s = AdsSession::new(node());
        s.subscribe("a.ns:80");
        let v = s.on_response(&response(
            "v1",
            "n1",
            vec![cla("other.ns:80", &["10.0.0.1"])],
        ));
        let Verdict::Accepted {
            updates,
            unrequested,
            ..
        } = v
        else {
            panic!("expected an ACK")
        };
        assert!(updates.is_empty());
        assert_eq!(unrequested, vec!["other.ns:80"]);
    }

    #[test]
    fn reconnect_resends_names_with_the_accepted_version_and_no_nonce() {
        let mut s = AdsSession::new(node());
        s.subscribe("a.ns:80");
        s.on_response(&response("v7", "n3", vec![cla("a.ns:80", &["10.0.0.1"])]));
        let r = s.on_connect().expect("names to resend");
        assert_eq!(r.resource_names, vec!["a.ns:80"]);
        assert_eq!(r.version_info, "v7");
        assert!(r.response_nonce.is_empty(), "a nonce never crosses streams");
    }

    #[test]
    fn an_endpoint_without_address_is_named_in_the_nack() {
        let mut s = AdsSession::new(node());
        s.subscribe("a.ns:80");
        let mut c = cla("a.ns:80", &["10.0.0.1"]);
        c.endpoints.push(LocalityLbEndpoints {
            lb_endpoints: vec![LbEndpoint::default()],
            ..Default::default()
        });
        let Verdict::Rejected { errors, .. } = s.on_response(&response("v1", "n1", vec![c])) else {
            panic!("expected a NACK")
        };
        assert!(
            errors[0].contains("endpoints[1].lb_endpoints[0]"),
            "{errors:?}"
        );
    }
}

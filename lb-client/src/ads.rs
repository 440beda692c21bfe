//! The client side of one ADS stream, EDS and CDS for the same names, as a
//! state machine without IO.
//!
//! ```text
//!  subscribe(name) ----------------------> [CDS request, EDS request]   (names changed)
//!  on_connect() -------------------------> the same, each with every name, its type's
//!                                          last accepted version and no nonce
//!  on_response(resp) --all resources ok--> Accepted { update, ack }
//!                    --any resource bad--> Rejected { errors, nack }  (state kept)
//!                    --type not asked for-> Unexpected                (nothing to send)
//! ```
//!
//! State of the world, as the xDS protocol describes it, per type on the
//! one stream: every request carries the whole subscription list, an ACK
//! echoes the response's `version_info` and `nonce`, a NACK echoes the nonce
//! with the last *accepted* version of that type and an `error_detail`. A
//! response is accepted or rejected as a whole, so a half-valid update never
//! reaches a balancer.
//!
//! Every service key is subscribed twice: EDS for its endpoints, CDS for its
//! `Cluster`, from which [`crate::cluster`] reads the balancing policy the
//! operator set (`eds.rs/lb-policy`). CDS is asked first, as Envoy does, so
//! the policy usually arrives before the endpoints; nothing waits for it.
//! CDS responses are complete (xDS: for CDS, a subscribed name missing from
//! a response no longer exists), so they report the absent names too. A
//! CDS request is never sent without names: an empty list would be the
//! legacy wildcard. [`AdsSession::disable_cds`] turns CDS off for a server
//! that refuses the type.
//!
//! This module decides; `control` does the IO. It is not a general xDS
//! client: no LDS or RDS (routes and listeners mean nothing to a client that
//! is handed a service key), no delta protocol.

use std::collections::BTreeSet;

use proto::resources::{
    CLUSTER_LOAD_ASSIGNMENT_TYPE_URL, CLUSTER_TYPE_URL, ParsedCla, ResourceType, parse_cla, unpack,
};
use proto::xds::pb::envoy::config::cluster::v3::Cluster;
use proto::xds::pb::envoy::config::core::v3::Node;
use proto::xds::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use proto::xds::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use proto::xds::pb::google::rpc::Status as RpcStatus;

use crate::cluster::{ClusterPolicy, parse_cluster};

/// What to do with one response.
#[derive(Debug)]
pub enum Verdict {
    /// Every resource parsed: apply `update`, send `ack`.
    Accepted {
        /// The validated resources we subscribed to. Others are ignored.
        update: Update,
        /// Names in the response that we never asked for.
        unrequested: Vec<String>,
        /// The ACK.
        ack: DiscoveryRequest,
    },
    /// Something was wrong: keep the last good state, send `nack`.
    Rejected {
        /// The response's type.
        resource_type: ResourceType,
        /// One line per problem, naming the resource and field.
        errors: Vec<String>,
        /// The NACK, carrying the errors in `error_detail`.
        nack: DiscoveryRequest,
    },
    /// A type this session never subscribed to. Nothing is sent back: a
    /// request for it would subscribe to it (for LDS and CDS without names,
    /// to everything).
    Unexpected {
        /// The response's type URL.
        type_url: String,
    },
}

/// What an accepted response changes.
#[derive(Debug)]
pub enum Update {
    /// EDS: endpoints, validated, with their wire form (kept for the
    /// snapshot file).
    Endpoints(Vec<(ParsedCla, ClusterLoadAssignment)>),
    /// CDS: the policy of every subscribed service the response carries,
    /// and the subscribed names it does not carry (deleted, or never there).
    Clusters {
        /// One per Cluster in the response that we asked for.
        clusters: Vec<ClusterPolicy>,
        /// Subscribed names missing from the response.
        absent: Vec<String>,
    },
}

/// Per-type protocol state.
#[derive(Debug, Clone, Default)]
struct TypeState {
    accepted_version: String,
    nonce: String,
}

/// One ADS session's protocol state.
#[derive(Debug, Clone)]
pub struct AdsSession {
    node: Node,
    names: BTreeSet<String>,
    eds: TypeState,
    /// `None` once CDS is off.
    cds: Option<TypeState>,
}

impl AdsSession {
    /// A session announcing itself as `node`, subscribing each name to EDS
    /// and CDS.
    pub fn new(node: Node) -> Self {
        Self {
            node,
            names: BTreeSet::new(),
            eds: TypeState::default(),
            cds: Some(TypeState::default()),
        }
    }

    /// Stops asking for Clusters (a server that refuses CDS); takes effect
    /// on the next [`AdsSession::on_connect`]. EDS is unaffected.
    pub fn disable_cds(&mut self) {
        self.cds = None;
    }

    /// Whether names are subscribed to CDS as well as EDS.
    pub fn cds_enabled(&self) -> bool {
        self.cds.is_some()
    }

    /// Names subscribed to.
    pub fn names(&self) -> &BTreeSet<String> {
        &self.names
    }

    /// The last version of `ty` accepted, empty before the first (and for
    /// types this session does not subscribe to).
    pub fn accepted_version(&self, ty: ResourceType) -> &str {
        match (ty, &self.cds) {
            (ResourceType::ClusterLoadAssignment, _) => &self.eds.accepted_version,
            (ResourceType::Cluster, Some(cds)) => &cds.accepted_version,
            _ => "",
        }
    }

    /// Adds a name; returns the requests to send (CDS first) when the set
    /// changed, none otherwise.
    pub fn subscribe(&mut self, name: &str) -> Vec<DiscoveryRequest> {
        if self.names.insert(name.to_owned()) {
            self.requests()
        } else {
            Vec::new()
        }
    }

    /// The first requests on a new stream. Nonces belong to the old stream,
    /// so they are dropped; the accepted versions tell the server what we
    /// hold, so an unchanged server need not resend it.
    pub fn on_connect(&mut self) -> Vec<DiscoveryRequest> {
        self.eds.nonce.clear();
        if let Some(cds) = &mut self.cds {
            cds.nonce.clear();
        }
        if self.names.is_empty() {
            Vec::new()
        } else {
            self.requests()
        }
    }

    /// Judges one response.
    pub fn on_response(&mut self, response: &DiscoveryResponse) -> Verdict {
        match response.type_url.as_str() {
            CLUSTER_LOAD_ASSIGNMENT_TYPE_URL => self.on_endpoints(response),
            CLUSTER_TYPE_URL if self.cds.is_some() => self.on_clusters(response),
            other => Verdict::Unexpected {
                type_url: other.to_owned(),
            },
        }
    }

    fn on_endpoints(&mut self, response: &DiscoveryResponse) -> Verdict {
        self.eds.nonce.clone_from(&response.nonce);
        let (updates, errors, unrequested) = self.sort(
            response,
            |cla: &ClusterLoadAssignment| &cla.cluster_name,
            |cla| parse_cla(&cla).map(|parsed| (parsed, cla)),
        );
        self.verdict(
            ResourceType::ClusterLoadAssignment,
            response,
            errors,
            Update::Endpoints(updates),
            unrequested,
        )
    }

    fn on_clusters(&mut self, response: &DiscoveryResponse) -> Verdict {
        if let Some(cds) = &mut self.cds {
            cds.nonce.clone_from(&response.nonce);
        }
        let (clusters, errors, unrequested) = self.sort(
            response,
            |cluster: &Cluster| &cluster.name,
            |cluster| parse_cluster(&cluster),
        );
        let absent = self
            .names
            .iter()
            .filter(|n| !clusters.iter().any(|c| &c.name == *n))
            .cloned()
            .collect();
        self.verdict(
            ResourceType::Cluster,
            response,
            errors,
            Update::Clusters { clusters, absent },
            unrequested,
        )
    }

    /// Unpacks every resource of `response` and parses the ones this client
    /// asked for: (parsed, errors naming the resource, names not asked for).
    fn sort<M, P, E>(
        &self,
        response: &DiscoveryResponse,
        name: impl Fn(&M) -> &String,
        parse: impl Fn(M) -> Result<P, E>,
    ) -> (Vec<P>, Vec<String>, Vec<String>)
    where
        M: prost::Message + prost::Name + Default,
        E: std::fmt::Display,
    {
        let (mut parsed, mut errors, mut unrequested) = (Vec::new(), Vec::new(), Vec::new());
        for (i, any) in response.resources.iter().enumerate() {
            let message: M = match unpack(any) {
                Ok(m) => m,
                Err(e) => {
                    errors.push(format!("resources[{i}]: {e}"));
                    continue;
                }
            };
            if !self.names.contains(name(&message)) {
                unrequested.push(name(&message).clone());
                continue;
            }
            match parse(message) {
                Ok(p) => parsed.push(p),
                Err(e) => errors.push(e.to_string()),
            }
        }
        (parsed, errors, unrequested)
    }

    fn verdict(
        &mut self,
        ty: ResourceType,
        response: &DiscoveryResponse,
        errors: Vec<String>,
        update: Update,
        unrequested: Vec<String>,
    ) -> Verdict {
        if errors.is_empty() {
            if let Some(state) = self.state_mut(ty) {
                state.accepted_version.clone_from(&response.version_info);
            }
            Verdict::Accepted {
                update,
                unrequested,
                ack: self.request(ty, None),
            }
        } else {
            let detail = RpcStatus {
                // INVALID_ARGUMENT: the resource, not the transport, is at fault.
                code: tonic::Code::InvalidArgument as i32,
                message: errors.join("; "),
                details: Vec::new(),
            };
            Verdict::Rejected {
                resource_type: ty,
                errors,
                nack: self.request(ty, Some(detail)),
            }
        }
    }

    fn state_mut(&mut self, ty: ResourceType) -> Option<&mut TypeState> {
        match ty {
            ResourceType::ClusterLoadAssignment => Some(&mut self.eds),
            ResourceType::Cluster => self.cds.as_mut(),
            _ => None,
        }
    }

    fn state(&self, ty: ResourceType) -> Option<&TypeState> {
        match ty {
            ResourceType::ClusterLoadAssignment => Some(&self.eds),
            ResourceType::Cluster => self.cds.as_ref(),
            _ => None,
        }
    }

    /// A request per subscribed type, CDS first.
    fn requests(&self) -> Vec<DiscoveryRequest> {
        [ResourceType::Cluster, ResourceType::ClusterLoadAssignment]
            .into_iter()
            .filter(|ty| self.state(*ty).is_some())
            .map(|ty| self.request(ty, None))
            .collect()
    }

    /// A request for `ty` with that type's last accepted version and nonce.
    fn request(&self, ty: ResourceType, error_detail: Option<RpcStatus>) -> DiscoveryRequest {
        let state = self.state(ty).cloned().unwrap_or_default();
        DiscoveryRequest {
            version_info: state.accepted_version,
            node: Some(self.node.clone()),
            resource_names: self.names.iter().cloned().collect(),
            type_url: ty.type_url().to_owned(),
            response_nonce: state.nonce,
            error_detail,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_core::{Endpoint, EndpointSet, Policy};
    use proto::resources::{ClaOptions, LbPolicy, cluster, cluster_load_assignment, pack};
    use proto::xds::pb::envoy::config::cluster::v3::LoadBalancingPolicy;
    use proto::xds::pb::envoy::config::endpoint::v3::{LbEndpoint, LocalityLbEndpoints};

    const EDS: ResourceType = ResourceType::ClusterLoadAssignment;
    const CDS: ResourceType = ResourceType::Cluster;

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

    fn cds_response(version: &str, nonce: &str, resources: Vec<Cluster>) -> DiscoveryResponse {
        DiscoveryResponse {
            version_info: version.into(),
            nonce: nonce.into(),
            type_url: CLUSTER_TYPE_URL.into(),
            resources: resources.iter().map(pack).collect(),
            ..Default::default()
        }
    }

    fn types(requests: &[DiscoveryRequest]) -> Vec<&str> {
        requests.iter().map(|r| r.type_url.as_str()).collect()
    }

    #[test]
    fn subscribing_sends_every_name_once_to_cds_then_eds() {
        let mut s = AdsSession::new(node());
        assert!(s.on_connect().is_empty(), "nothing to ask for yet");
        let r = s.subscribe("b.ns:80");
        assert_eq!(
            types(&r),
            [CLUSTER_TYPE_URL, CLUSTER_LOAD_ASSIGNMENT_TYPE_URL]
        );
        assert_eq!(r[0].resource_names, vec!["b.ns:80"]);
        assert_eq!(r[1].resource_names, vec!["b.ns:80"]);
        assert!(s.subscribe("b.ns:80").is_empty(), "already subscribed");
        let r = s.subscribe("a.ns:80");
        for req in &r {
            assert_eq!(req.resource_names, vec!["a.ns:80", "b.ns:80"]);
            assert_eq!(req.node.as_ref().expect("node").id, "test");
            assert!(req.version_info.is_empty() && req.response_nonce.is_empty());
        }
    }

    #[test]
    fn accepted_response_is_acked_with_its_version_and_nonce() {
        let mut s = AdsSession::new(node());
        s.subscribe("a.ns:80");
        let v = s.on_response(&response("v1", "n1", vec![cla("a.ns:80", &["10.0.0.1"])]));
        let Verdict::Accepted {
            update: Update::Endpoints(updates),
            ack,
            ..
        } = v
        else {
            panic!("expected an ACK, got {v:?}")
        };
        assert_eq!(updates.len(), 1);
        assert_eq!(updates[0].0.endpoints.len(), 1);
        assert_eq!(ack.type_url, CLUSTER_LOAD_ASSIGNMENT_TYPE_URL);
        assert_eq!(
            (ack.version_info.as_str(), ack.response_nonce.as_str()),
            ("v1", "n1")
        );
        assert!(ack.error_detail.is_none());
        assert_eq!(s.accepted_version(EDS), "v1");
        assert_eq!(s.accepted_version(CDS), "", "types keep their own versions");
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
        let Verdict::Rejected {
            resource_type,
            errors,
            nack,
        } = v
        else {
            panic!("expected a NACK, got {v:?}")
        };
        assert_eq!(resource_type, EDS);
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
        assert_eq!(s.accepted_version(EDS), "v1");
    }

    #[test]
    fn unasked_types_are_not_answered_and_undecodable_resources_are_rejected() {
        let mut s = AdsSession::new(node());
        s.subscribe("a.ns:80");
        let mut r = response("v1", "n1", vec![]);
        r.type_url = proto::resources::LISTENER_TYPE_URL.into();
        assert!(matches!(s.on_response(&r), Verdict::Unexpected { .. }));
        let mut r = response("v1", "n2", vec![cla("a.ns:80", &["10.0.0.1"])]);
        r.resources[0].value = vec![0xff, 0xff, 0xff];
        let Verdict::Rejected { errors, .. } = s.on_response(&r) else {
            panic!("undecodable bytes must be rejected")
        };
        assert!(errors[0].starts_with("resources[0]"), "{errors:?}");
        // A Cluster packed into an EDS response is the wrong type.
        let mut r = response("v1", "n3", vec![]);
        r.resources
            .push(pack(&cluster("a.ns:80", &LbPolicy::RoundRobin)));
        assert!(matches!(s.on_response(&r), Verdict::Rejected { .. }));
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
            update: Update::Endpoints(updates),
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
    fn reconnect_resends_names_with_each_accepted_version_and_no_nonce() {
        let mut s = AdsSession::new(node());
        s.subscribe("a.ns:80");
        s.on_response(&response("v7", "n3", vec![cla("a.ns:80", &["10.0.0.1"])]));
        s.on_response(&cds_response(
            "c2",
            "n4",
            vec![cluster("a.ns:80", &LbPolicy::RoundRobin)],
        ));
        let r = s.on_connect();
        assert_eq!(
            types(&r),
            [CLUSTER_TYPE_URL, CLUSTER_LOAD_ASSIGNMENT_TYPE_URL]
        );
        assert_eq!(r[0].version_info, "c2");
        assert_eq!(r[1].version_info, "v7");
        for req in &r {
            assert_eq!(req.resource_names, vec!["a.ns:80"]);
            assert!(
                req.response_nonce.is_empty(),
                "a nonce never crosses streams"
            );
        }
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

    #[test]
    fn a_cluster_is_acked_with_its_policy_and_absent_names_reported() {
        let mut s = AdsSession::new(node());
        s.subscribe("a.ns:80");
        s.subscribe("b.ns:80");
        let v = s.on_response(&cds_response(
            "c1",
            "n1",
            vec![
                cluster("a.ns:80", &LbPolicy::RingHash { header: None }),
                cluster("x.ns:80", &LbPolicy::Random),
            ],
        ));
        let Verdict::Accepted {
            update: Update::Clusters { clusters, absent },
            unrequested,
            ack,
        } = v
        else {
            panic!("expected a CDS ACK, got {v:?}")
        };
        assert_eq!(clusters.len(), 1);
        assert_eq!(
            (clusters[0].name.as_str(), clusters[0].policy),
            ("a.ns:80", Some(Policy::RingHash))
        );
        assert_eq!(absent, vec!["b.ns:80"], "CDS responses are complete");
        assert_eq!(unrequested, vec!["x.ns:80"]);
        assert_eq!(ack.type_url, CLUSTER_TYPE_URL);
        assert_eq!(
            (ack.version_info.as_str(), ack.response_nonce.as_str()),
            ("c1", "n1")
        );
        assert_eq!(ack.resource_names, vec!["a.ns:80", "b.ns:80"]);
        assert!(ack.error_detail.is_none());
        assert_eq!(s.accepted_version(CDS), "c1");
        assert_eq!(s.accepted_version(EDS), "");
    }

    #[test]
    fn a_malformed_cluster_is_nacked_with_the_reason_and_the_last_good_version() {
        let mut s = AdsSession::new(node());
        s.subscribe("a.ns:80");
        s.on_response(&response("e1", "n1", vec![cla("a.ns:80", &["10.0.0.1"])]));
        s.on_response(&cds_response(
            "c1",
            "n2",
            vec![cluster("a.ns:80", &LbPolicy::RoundRobin)],
        ));
        let mut bad = cluster("a.ns:80", &LbPolicy::LeastRequest);
        bad.load_balancing_policy = Some(LoadBalancingPolicy { policies: vec![] });
        let v = s.on_response(&cds_response("c2", "n3", vec![bad]));
        let Verdict::Rejected {
            resource_type,
            errors,
            nack,
        } = v
        else {
            panic!("expected a NACK, got {v:?}")
        };
        assert_eq!(resource_type, CDS);
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].starts_with("Cluster \"a.ns:80\": load_balancing_policy.policies"),
            "{errors:?}"
        );
        assert_eq!(nack.type_url, CLUSTER_TYPE_URL);
        assert_eq!(nack.version_info, "c1", "the last accepted CDS version");
        assert_eq!(nack.response_nonce, "n3");
        let detail = nack.error_detail.expect("error detail");
        assert_eq!(detail.code, tonic::Code::InvalidArgument as i32);
        assert!(detail.message.contains("a.ns:80"), "{}", detail.message);
        assert_eq!(s.accepted_version(CDS), "c1");
        assert_eq!(s.accepted_version(EDS), "e1", "EDS is untouched");
        // Undecodable Cluster bytes are rejected the same way.
        let mut r = cds_response("c3", "n4", vec![cluster("a.ns:80", &LbPolicy::RoundRobin)]);
        r.resources[0].value = vec![0xff, 0xff, 0xff];
        let Verdict::Rejected { errors, nack, .. } = s.on_response(&r) else {
            panic!("expected a NACK")
        };
        assert!(errors[0].starts_with("resources[0]"), "{errors:?}");
        assert_eq!(nack.version_info, "c1");
    }

    #[test]
    fn without_cds_only_eds_is_asked_for_and_clusters_are_unexpected() {
        let mut s = AdsSession::new(node());
        s.subscribe("a.ns:80");
        s.disable_cds();
        assert!(!s.cds_enabled());
        let r = s.on_connect();
        assert_eq!(types(&r), [CLUSTER_LOAD_ASSIGNMENT_TYPE_URL]);
        assert_eq!(
            types(&s.subscribe("b.ns:80")),
            [CLUSTER_LOAD_ASSIGNMENT_TYPE_URL]
        );
        let v = s.on_response(&cds_response(
            "c1",
            "n1",
            vec![cluster("a.ns:80", &LbPolicy::RoundRobin)],
        ));
        assert!(matches!(v, Verdict::Unexpected { .. }), "{v:?}");
    }
}

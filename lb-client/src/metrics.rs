//! Prometheus metrics of one client, in its own registry (no globals, so
//! two clients in one process, or in one test, never mix their counts).
//!
//! ```text
//!  lb_client_picks_total{service,endpoint,reason}       counter
//!  lb_client_requests_total{service,endpoint,outcome}   counter (success | failure)
//!  lb_client_ejections_total{service,endpoint,reason}   counter
//!  lb_client_in_flight{service,endpoint}                gauge, sampled every refresh
//!  lb_client_retries_total{service}                     counter (never-sent or refused requests retried)
//!  lb_client_control_plane_connected                    gauge 0/1
//!  lb_client_control_plane_updates_total{result}        counter (ack | nack)
//!  lb_client_policy{service,policy,source}              gauge 1 (source: local | cds | default)
//! ```
//!
//! Not an exporter: the application serves [`crate::LbClient::metrics_text`]
//! or registers the families in its own registry.

use std::net::SocketAddr;

use lb_core::outlier::{EjectionReason, Outcome};
use lb_core::{PickReason, Policy};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::cluster::PolicySource;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    service: String,
    endpoint: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    service: String,
    endpoint: String,
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    service: String,
    endpoint: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabels {
    service: String,
    policy: &'static str,
    source: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

const PICK_REASONS: [(PickReason, &str); 6] = [
    (PickReason::Local, "local"),
    (PickReason::Spill, "spill"),
    (PickReason::AnyZone, "any-zone"),
    (PickReason::Hash, "hash"),
    (PickReason::Panic, "panic"),
    (PickReason::Draining, "draining"),
];

/// One endpoint's request counters, shared with its family.
#[derive(Debug)]
pub(crate) struct EndpointCounters {
    picks: [Counter; 6],
    success: Counter,
    failure: Counter,
}

impl EndpointCounters {
    pub(crate) fn pick(&self, reason: PickReason) {
        if let Some(i) = PICK_REASONS.iter().position(|(r, _)| *r == reason) {
            self.picks[i].inc();
        }
    }

    pub(crate) fn outcome(&self, outcome: Outcome) {
        match outcome {
            Outcome::Success => self.success.inc(),
            Outcome::Failure => self.failure.inc(),
        };
    }
}

/// The client's metric families and their registry.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    picks: Family<ReasonLabels, Counter>,
    requests: Family<OutcomeLabels, Counter>,
    ejections: Family<ReasonLabels, Counter>,
    in_flight: Family<EndpointLabels, Gauge>,
    retries: Family<ServiceLabels, Counter>,
    connected: Gauge,
    updates: Family<ResultLabels, Counter>,
    policies: Family<PolicyLabels, Gauge>,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("lb_client");
        let picks = Family::default();
        let requests = Family::default();
        let ejections = Family::default();
        let in_flight = Family::default();
        let retries = Family::default();
        let connected = Gauge::default();
        let updates = Family::default();
        let policies = Family::default();
        registry.register("picks", "Endpoint picks by reason", picks.clone());
        registry.register("requests", "Finished requests by outcome", requests.clone());
        registry.register(
            "ejections",
            "Outlier ejections by reason",
            ejections.clone(),
        );
        registry.register(
            "in_flight",
            "Requests in flight per endpoint",
            in_flight.clone(),
        );
        registry.register(
            "retries",
            "Requests retried on another endpoint because they were never sent",
            retries.clone(),
        );
        registry.register(
            "control_plane_connected",
            "1 while the ADS stream is up",
            connected.clone(),
        );
        registry.register(
            "control_plane_updates",
            "xDS responses accepted (ack) or rejected (nack)",
            updates.clone(),
        );
        registry.register(
            "policy",
            "1 for each service's balancing policy, labelled with where it came from (local, cds or default)",
            policies.clone(),
        );
        Self {
            registry,
            picks,
            requests,
            ejections,
            in_flight,
            retries,
            connected,
            updates,
            policies,
        }
    }

    /// The per-request counters of one endpoint, looked up once when the
    /// endpoint appears: a label lookup per request would cost more than
    /// the pick itself.
    pub(crate) fn endpoint(&self, service: &str, endpoint: SocketAddr) -> EndpointCounters {
        let pick = |reason| {
            self.picks
                .get_or_create(&ReasonLabels {
                    service: service.to_owned(),
                    endpoint: endpoint.to_string(),
                    reason,
                })
                .clone()
        };
        let outcome = |outcome| {
            self.requests
                .get_or_create(&OutcomeLabels {
                    service: service.to_owned(),
                    endpoint: endpoint.to_string(),
                    outcome,
                })
                .clone()
        };
        EndpointCounters {
            picks: PICK_REASONS.map(|(_, name)| pick(name)),
            success: outcome("success"),
            failure: outcome("failure"),
        }
    }

    pub(crate) fn ejection(&self, service: &str, endpoint: SocketAddr, reason: EjectionReason) {
        let reason = match reason {
            EjectionReason::ConsecutiveFailures => "consecutive-failures",
            EjectionReason::SuccessRate => "success-rate",
        };
        self.ejections
            .get_or_create(&ReasonLabels {
                service: service.to_owned(),
                endpoint: endpoint.to_string(),
                reason,
            })
            .inc();
    }

    pub(crate) fn set_in_flight(&self, service: &str, endpoint: SocketAddr, n: u32) {
        self.in_flight
            .get_or_create(&EndpointLabels {
                service: service.to_owned(),
                endpoint: endpoint.to_string(),
            })
            .set(i64::from(n));
    }

    /// Drops the gauge of an endpoint that left, so dashboards do not show
    /// a stale in-flight count forever. Counters stay: they are history.
    pub(crate) fn forget_endpoint(&self, service: &str, endpoint: SocketAddr) {
        self.in_flight.remove(&EndpointLabels {
            service: service.to_owned(),
            endpoint: endpoint.to_string(),
        });
    }

    pub(crate) fn retry(&self, service: &str) {
        self.retries
            .get_or_create(&ServiceLabels {
                service: service.to_owned(),
            })
            .inc();
    }

    pub(crate) fn set_connected(&self, up: bool) {
        self.connected.set(i64::from(up));
    }

    pub(crate) fn update(&self, accepted: bool) {
        self.updates
            .get_or_create(&ResultLabels {
                result: if accepted { "ack" } else { "nack" },
            })
            .inc();
    }

    /// Moves a service's policy series from `old` to `new`.
    pub(crate) fn set_policy(
        &self,
        service: &str,
        old: Option<(Policy, PolicySource)>,
        new: (Policy, PolicySource),
    ) {
        let labels = |(policy, source): (Policy, PolicySource)| PolicyLabels {
            service: service.to_owned(),
            policy: policy.as_str(),
            source: source.as_str(),
        };
        if let Some(old) = old.filter(|o| *o != new) {
            self.policies.remove(&labels(old));
        }
        self.policies.get_or_create(&labels(new)).set(1);
    }

    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

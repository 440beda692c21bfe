//! Endpoints and localities: what one backend address is, as every part of the
//! system sees it.
//!
//! An [`Endpoint`] carries the metadata DESIGN.md requires (`pod`, `node`,
//! `zone`, `ready_since`, `drain_deadline`, chosen labels) and a [`Health`]
//! that follows the EndpointSlice condition mapping. This module holds data
//! only; where the data comes from (Kubernetes, xDS) is the adapters' business.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::SystemTime;

/// Health of an endpoint, from its EndpointSlice conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Health {
    /// `ready` true or unknown: takes new requests.
    Healthy,
    /// `serving` and `terminating`: finishing its work; new requests only
    /// when nothing else is left.
    Draining,
    /// Neither: sent only when the operator asks for it (and to lb-client,
    /// to size zones); never picked, whatever the panic threshold.
    Unhealthy,
}

impl Health {
    /// Upper-case name as used on the wire and in `edsctl`.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "HEALTHY",
            Health::Draining => "DRAINING",
            Health::Unhealthy => "UNHEALTHY",
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One backend address of one service port, with its metadata.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Where to connect: pod IP and resolved target port.
    pub address: SocketAddr,
    /// `topology.kubernetes.io/zone` of the pod's node; `None` when unknown.
    pub zone: Option<String>,
    /// Node name.
    pub node: Option<String>,
    /// Pod name.
    pub pod: Option<String>,
    /// Health from the slice conditions.
    pub health: Health,
    /// Relative capacity; zero is not representable, which is what xDS needs.
    pub weight: NonZeroU32,
    /// When the endpoint became ready; drives slow start, also across client restarts.
    pub ready_since: Option<SystemTime>,
    /// When a draining endpoint will be gone (deletion time plus grace period).
    pub drain_deadline: Option<SystemTime>,
    /// Pod labels the operator chose to publish (for example `shard`).
    pub labels: BTreeMap<String, String>,
}

impl Endpoint {
    /// A healthy endpoint of weight 1 with no metadata.
    pub fn new(address: SocketAddr) -> Self {
        Self {
            address,
            zone: None,
            node: None,
            pod: None,
            health: Health::Healthy,
            weight: NonZeroU32::MIN,
            ready_since: None,
            drain_deadline: None,
            labels: BTreeMap::new(),
        }
    }

    /// Builder: set the zone.
    pub fn with_zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = Some(zone.into());
        self
    }

    /// Builder: set the health.
    pub fn with_health(mut self, health: Health) -> Self {
        self.health = health;
        self
    }

    /// Builder: set the weight.
    pub fn with_weight(mut self, weight: NonZeroU32) -> Self {
        self.weight = weight;
        self
    }

    /// Builder: set the pod name.
    pub fn with_pod(mut self, pod: impl Into<String>) -> Self {
        self.pod = Some(pod.into());
        self
    }

    /// Builder: set when the endpoint became ready.
    pub fn with_ready_since(mut self, at: SystemTime) -> Self {
        self.ready_since = Some(at);
        self
    }

    /// With a drain deadline (when a terminating endpoint will be gone).
    pub fn with_drain_deadline(mut self, at: SystemTime) -> Self {
        self.drain_deadline = Some(at);
        self
    }

    /// The zone, or `""` when unknown; unknown zones form one locality.
    pub fn zone_or_empty(&self) -> &str {
        self.zone.as_deref().unwrap_or("")
    }
}

/// A group of endpoints sharing a zone, as sent in an xDS `LocalityLbEndpoints`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Locality {
    /// The zone; `""` for endpoints whose zone is unknown.
    pub zone: String,
    /// xDS priority: 0 is tried first.
    pub priority: u32,
    /// Relative share of traffic among localities of the same priority; never
    /// zero, because gRPC ignores a locality of weight 0 (gRFC A27).
    pub weight: NonZeroU32,
}

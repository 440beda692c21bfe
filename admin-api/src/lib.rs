//! The admin API's JSON: the one definition eds-server serves and edsctl
//! reads (and anyone else may: the views are plain serde types).
//!
//! ```text
//!  GET /debug/snapshot          -> SnapshotView  { api_version, ready, version, services: [ServiceView] }
//!  GET /debug/endpoints/{key}   -> EndpointsView { api_version, key, canonical, version, endpoints: [EndpointView] }
//!  GET /debug/clients           -> ClientsView   { api_version, at, clients: [ClientEntry { stats: { types: [TypeStats] } }] }
//! ```
//!
//! The contract: every top-level view names [`API_VERSION`]; times are RFC
//! 3339 text in UTC ([`Time`]); fields may be added within a version and
//! readers ignore fields they do not know, while removing or changing one
//! needs a new version, which [`check_api_version`] makes readers refuse
//! with a message instead of misreading. The golden files in
//! `tests/golden/` pin the shape (`tests/schema.rs`).
//!
//! Reading stays lenient about what older servers sent: no `api_version`,
//! and times in serde's `SystemTime` form
//! (`{"secs_since_epoch", "nanos_since_epoch"}`).
//!
//! Not here: fetching, presenting, or building the views from the server's
//! state (eds-server's `admin` module does that).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lb_core::{Endpoint, EndpointSet, Health};
use serde::{Deserialize, Serialize};

/// The admin API's version, written in every top-level view.
pub const API_VERSION: &str = "eds.rs/admin/v1";

/// A value in a view that cannot be used (an address that does not parse,
/// an unknown health, a time out of range).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("eds-server sent an unusable value: {0}")]
pub struct ValueError(pub String);

/// A view from a server speaking another version of the API than this
/// reader understands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "eds-server speaks admin API {server}; this reader understands {API_VERSION}: use a matching edsctl"
)]
pub struct VersionError {
    /// What the server wrote.
    pub server: String,
}

/// Accepts a view's `api_version` if it is ours, or absent (servers before
/// the field existed wrote the same shapes).
pub fn check_api_version(api_version: &str) -> Result<(), VersionError> {
    if api_version.is_empty() || api_version == API_VERSION {
        Ok(())
    } else {
        Err(VersionError {
            server: api_version.to_owned(),
        })
    }
}

/// Formats `t` as RFC 3339 in UTC, with as many fractional digits as it has.
pub fn format_time(t: SystemTime) -> String {
    jiff::Timestamp::try_from(t)
        .map(|ts| ts.to_string())
        .unwrap_or_else(|_| "out-of-range".to_owned())
}

/// Parses RFC 3339 text (any offset) into a point in time.
pub fn parse_time(s: &str) -> Result<SystemTime, ValueError> {
    s.parse::<jiff::Timestamp>()
        .map(SystemTime::from)
        .map_err(|e| ValueError(format!("time {s:?}: {e}")))
}

/// A point in time, read from either form the server writes, written as RFC 3339.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Time(pub SystemTime);

impl Serialize for Time {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_time(self.0))
    }
}

impl<'de> Deserialize<'de> for Time {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Epoch {
                secs_since_epoch: u64,
                #[serde(default)]
                nanos_since_epoch: u32,
            },
        }
        match Raw::deserialize(d)? {
            Raw::Text(s) => parse_time(&s).map(Time).map_err(serde::de::Error::custom),
            Raw::Epoch {
                secs_since_epoch,
                nanos_since_epoch,
            } => UNIX_EPOCH
                .checked_add(Duration::new(secs_since_epoch, nanos_since_epoch))
                .map(Time)
                .ok_or_else(|| serde::de::Error::custom("time out of range")),
        }
    }
}

impl Time {
    /// RFC 3339 text.
    pub fn rfc3339(self) -> String {
        format_time(self.0)
    }
}

/// `/debug/snapshot`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotView {
    /// [`API_VERSION`] (empty from servers older than the field).
    #[serde(default)]
    pub api_version: String,
    /// Whether the server has synced and serves.
    pub ready: bool,
    /// Content version of the whole snapshot.
    #[serde(default)]
    pub version: Option<String>,
    /// Every service key.
    #[serde(default)]
    pub services: Vec<ServiceView>,
}

/// One service key in `/debug/snapshot`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceView {
    /// Canonical key.
    pub key: String,
    /// Content version of its endpoint set.
    pub version: String,
    /// Endpoint counts by zone (`""` unknown), then by health.
    #[serde(default)]
    pub zones: BTreeMap<String, BTreeMap<String, usize>>,
    /// Streams subscribed to it.
    #[serde(default)]
    pub subscribers: usize,
}

impl ServiceView {
    /// Endpoints in `health` over every zone.
    pub fn count(&self, health: Health) -> usize {
        self.zones
            .values()
            .filter_map(|by| by.get(health.as_str()))
            .sum()
    }

    /// Every endpoint, whatever its health.
    pub fn total(&self) -> usize {
        self.zones.values().flat_map(|by| by.values()).sum()
    }

    /// The namespace part of the key (`<svc>.<ns>:<port>`), if it parses.
    pub fn namespace(&self) -> Option<String> {
        self.key
            .parse::<lb_core::ServiceKey>()
            .ok()
            .map(|k| k.namespace().to_owned())
    }
}

/// `/debug/endpoints/{key}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointsView {
    /// [`API_VERSION`] (empty from servers older than the field).
    #[serde(default)]
    pub api_version: String,
    /// The key as asked.
    pub key: String,
    /// The canonical key it resolved to.
    pub canonical: String,
    /// Content version of the endpoint set.
    pub version: String,
    /// Every endpoint.
    #[serde(default)]
    pub endpoints: Vec<EndpointView>,
}

impl EndpointsView {
    /// The endpoints as an `lb-core` set (sorted, one per address).
    pub fn to_set(&self) -> Result<EndpointSet, ValueError> {
        let endpoints = self
            .endpoints
            .iter()
            .map(EndpointView::to_endpoint)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(EndpointSet::merge(endpoints))
    }
}

/// One endpoint in `/debug/endpoints/{key}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointView {
    /// `ip:port`.
    pub address: String,
    /// Pod name.
    #[serde(default)]
    pub pod: Option<String>,
    /// Node name.
    #[serde(default)]
    pub node: Option<String>,
    /// Zone.
    #[serde(default)]
    pub zone: Option<String>,
    /// HEALTHY, DRAINING or UNHEALTHY.
    pub health: String,
    /// Load-balancing weight.
    #[serde(default = "one")]
    pub weight: u32,
    /// When it became ready (RFC 3339).
    #[serde(default)]
    pub ready_since: Option<String>,
    /// When a draining endpoint goes away (RFC 3339).
    #[serde(default)]
    pub drain_deadline: Option<String>,
    /// Chosen pod labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

fn one() -> u32 {
    1
}

/// `HEALTHY` / `DRAINING` / `UNHEALTHY` back to [`Health`].
pub fn parse_health(s: &str) -> Option<Health> {
    match s {
        "HEALTHY" => Some(Health::Healthy),
        "DRAINING" => Some(Health::Draining),
        "UNHEALTHY" => Some(Health::Unhealthy),
        _ => None,
    }
}

impl EndpointView {
    /// The endpoint as `lb-core` sees it.
    pub fn to_endpoint(&self) -> Result<Endpoint, ValueError> {
        let address: SocketAddr = self
            .address
            .parse()
            .map_err(|_| ValueError(format!("endpoint address {:?}", self.address)))?;
        let health = parse_health(&self.health)
            .ok_or_else(|| ValueError(format!("endpoint health {:?}", self.health)))?;
        let time = |t: &Option<String>, what: &str| -> Result<Option<SystemTime>, ValueError> {
            t.as_deref()
                .map(|s| {
                    parse_time(s)
                        .map_err(|e| ValueError(format!("{what} of {}: {}", self.address, e.0)))
                })
                .transpose()
        };
        let mut e = Endpoint::new(address)
            .with_health(health)
            .with_weight(NonZeroU32::new(self.weight).unwrap_or(NonZeroU32::MIN));
        e.zone = self.zone.clone();
        e.node = self.node.clone();
        e.pod = self.pod.clone();
        e.ready_since = time(&self.ready_since, "ready_since")?;
        e.drain_deadline = time(&self.drain_deadline, "drain_deadline")?;
        e.labels = self.labels.clone();
        Ok(e)
    }

    /// The view of an `lb-core` endpoint (the inverse of [`Self::to_endpoint`]).
    pub fn from_endpoint(e: &Endpoint) -> Self {
        Self {
            address: e.address.to_string(),
            pod: e.pod.clone(),
            node: e.node.clone(),
            zone: e.zone.clone(),
            health: e.health.as_str().to_owned(),
            weight: e.weight.get(),
            ready_since: e.ready_since.map(format_time),
            drain_deadline: e.drain_deadline.map(format_time),
            labels: e.labels.clone(),
        }
    }
}

/// `/debug/clients`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientsView {
    /// [`API_VERSION`] (empty from servers older than the field).
    #[serde(default)]
    pub api_version: String,
    /// The server's clock when it answered; ages are measured from it, so
    /// clock skew between edsctl and the server does not matter.
    pub at: Time,
    /// Every open xDS stream.
    #[serde(default)]
    pub clients: Vec<ClientEntry>,
}

/// One open xDS stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientEntry {
    /// Server-local stream id.
    pub id: u64,
    /// The peer's address.
    #[serde(default)]
    pub peer: Option<String>,
    /// When the stream opened.
    pub connected_at: Time,
    /// When it last did something.
    pub last_activity: Time,
    /// Protocol state.
    pub stats: SubscriberStats,
    /// Responses queued at the server for this stream (absent from servers
    /// older than the field: shown as zero).
    #[serde(default)]
    pub backlog: Backlog,
}

/// A stream's outbox at the server: what the client has not read yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Backlog {
    /// Responses waiting for the client to read them.
    #[serde(default)]
    pub queued: usize,
    /// Responses never sent because a newer one replaced them.
    #[serde(default)]
    pub superseded: u64,
}

/// Protocol state of one stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscriberStats {
    /// Who the client is.
    pub client: ClientInfo,
    /// State of the world or delta.
    pub protocol: Protocol,
    /// ADS or one per-type service.
    pub stream: StreamKind,
    /// Totals.
    #[serde(default)]
    pub counters: Counters,
    /// Requests rejected with an error.
    #[serde(default)]
    pub errors: u64,
    /// Per resource type.
    #[serde(default)]
    pub types: Vec<TypeStats>,
}

/// The client's node.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ClientInfo {
    /// `Node.id`.
    #[serde(default)]
    pub node_id: String,
    /// `Node.cluster`.
    #[serde(default)]
    pub cluster: String,
    /// `Node.locality.zone`.
    #[serde(default)]
    pub zone: Option<String>,
    /// The client asked for not-serving endpoints (marked UNHEALTHY).
    #[serde(default)]
    pub unhealthy_endpoints: bool,
}

/// Event counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Counters {
    /// Requests received.
    #[serde(default)]
    pub requests: u64,
    /// Responses produced.
    #[serde(default)]
    pub responses: u64,
    /// ACKs.
    #[serde(default)]
    pub acks: u64,
    /// NACKs.
    #[serde(default)]
    pub nacks: u64,
    /// Stale requests.
    #[serde(default)]
    pub stale: u64,
}

/// One resource type on one stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TypeStats {
    /// The type URL.
    pub type_url: String,
    /// Wildcard subscription.
    #[serde(default)]
    pub wildcard: bool,
    /// Subscribed names.
    #[serde(default)]
    pub subscribed: Vec<String>,
    /// Version of the last response.
    #[serde(default)]
    pub sent_version: Option<String>,
    /// Per resource: the version last sent.
    #[serde(default)]
    pub sent_resources: BTreeMap<String, String>,
    /// Nonce awaiting an ACK.
    #[serde(default)]
    pub pending_nonce: Option<String>,
    /// Version last acknowledged.
    #[serde(default)]
    pub acked_version: Option<String>,
    /// Per resource: the version acknowledged.
    #[serde(default)]
    pub acked_resources: BTreeMap<String, String>,
    /// Per resource: a sent version the client rejected.
    #[serde(default)]
    pub nacked_resources: BTreeMap<String, String>,
    /// When the last ACK arrived.
    #[serde(default)]
    pub last_ack_at: Option<Time>,
    /// The last NACK.
    #[serde(default)]
    pub last_nack: Option<NackRecord>,
    /// Counters for this type.
    #[serde(default)]
    pub counters: Counters,
}

impl TypeStats {
    /// `eds`, `cds`, `lds`, `rds` from the type URL, or the URL's last part.
    pub fn short_type(&self) -> &str {
        let last = self.type_url.rsplit('.').next().unwrap_or(&self.type_url);
        match last {
            "ClusterLoadAssignment" => "eds",
            "Cluster" => "cds",
            "Listener" => "lds",
            "RouteConfiguration" => "rds",
            other => other,
        }
    }

    /// Why `name` stands rejected, if it does: the server lists it in
    /// `nacked_resources` (a sent version the client rejected and nothing
    /// newer has replaced), or the last NACK names it, no ACK came after,
    /// and the client's acknowledged version is not the one last sent.
    /// The reason is the client's message, or the rejected version.
    pub fn nack_outstanding_for(&self, name: &str) -> Option<String> {
        let reason = |n: &NackRecord| {
            if n.message.is_empty() {
                format!("rejected version {}", n.rejected_version)
            } else {
                n.message.clone()
            }
        };
        if let Some(v) = self.nacked_resources.get(name) {
            return Some(match &self.last_nack {
                Some(n) => reason(n),
                None => format!("rejected version {v}"),
            });
        }
        let nack = self.last_nack.as_ref()?;
        let concerns = nack.resources.iter().any(|r| r == name);
        let superseded = self.last_ack_at.is_some_and(|ack| ack > nack.at);
        // A rejected response may carry resources the client already runs
        // at the sent version; those are not behind.
        let behind = self.sent_resources.get(name) != self.acked_resources.get(name);
        (concerns && !superseded && behind).then(|| reason(nack))
    }
}

/// A rejected response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NackRecord {
    /// The version rejected.
    #[serde(default)]
    pub rejected_version: String,
    /// The version the client still uses.
    #[serde(default)]
    pub client_version: String,
    /// The nonce of the rejected response.
    #[serde(default)]
    pub nonce: String,
    /// `google.rpc.Code`.
    #[serde(default)]
    pub code: i32,
    /// The client's message.
    #[serde(default)]
    pub message: String,
    /// Resources in the rejected response.
    #[serde(default)]
    pub resources: Vec<String>,
    /// Whether the nonce was stale.
    #[serde(default)]
    pub stale: bool,
    /// When it arrived.
    pub at: Time,
}

/// Which protocol variant a stream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protocol {
    /// State of the world.
    Sotw,
    /// Incremental.
    Delta,
}

/// Which gRPC service a stream belongs to: `"Aggregated"` (ADS) or
/// `{"Single": "eds"}` (a per-type service, by its short type name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamKind {
    /// `AggregatedDiscoveryService`.
    Aggregated,
    /// A per-type service: `eds`, `cds`, `lds` or `rds`.
    Single(String),
}

impl SubscriberStats {
    /// `ads` for an aggregated stream, else the single type's short name.
    pub fn stream_kind(&self) -> String {
        match &self.stream {
            StreamKind::Aggregated => "ads".into(),
            StreamKind::Single(ty) => ty.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_round_trips_through_lb_core() {
        let view = EndpointView {
            address: "10.1.0.5:9090".into(),
            pod: Some("echo-0".into()),
            node: Some("n".into()),
            zone: Some("zone-a".into()),
            health: "DRAINING".into(),
            weight: 3,
            ready_since: Some("2024-05-01T12:00:00Z".into()),
            drain_deadline: Some("2024-05-01T12:00:30Z".into()),
            labels: BTreeMap::from([("shard".into(), "s0".into())]),
        };
        let e = view.to_endpoint().unwrap();
        assert_eq!(e.health, Health::Draining);
        assert_eq!(EndpointView::from_endpoint(&e), view);
    }

    #[test]
    fn unusable_values_are_errors_not_panics() {
        let mut view = EndpointView {
            address: "not-an-address".into(),
            pod: None,
            node: None,
            zone: None,
            health: "HEALTHY".into(),
            weight: 0,
            ready_since: None,
            drain_deadline: None,
            labels: BTreeMap::new(),
        };
        assert!(view.to_endpoint().is_err());
        view.address = "10.0.0.1:1".into();
        view.health = "SICK".into();
        assert!(view.to_endpoint().is_err());
        view.health = "HEALTHY".into();
        // Weight 0 is not representable; it reads as 1 rather than failing.
        assert_eq!(view.to_endpoint().unwrap().weight.get(), 1);
    }

    #[test]
    fn a_nack_is_outstanding_until_an_ack_follows_it() {
        let t = |s: u64| Time(UNIX_EPOCH + Duration::from_secs(s));
        let mut ts = TypeStats {
            type_url: "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment".into(),
            wildcard: false,
            subscribed: vec!["echo.demo:8080".into()],
            sent_version: None,
            pending_nonce: None,
            acked_version: None,
            acked_resources: BTreeMap::new(),
            nacked_resources: BTreeMap::new(),
            sent_resources: BTreeMap::from([("echo.demo:8080".into(), "v2".into())]),
            last_ack_at: Some(t(5)),
            last_nack: Some(NackRecord {
                rejected_version: "v2".into(),
                client_version: "v1".into(),
                nonce: "2".into(),
                code: 3,
                message: "bad".into(),
                resources: vec!["echo.demo:8080".into()],
                stale: false,
                at: t(10),
            }),
            counters: Counters::default(),
        };
        assert_eq!(ts.short_type(), "eds");
        assert_eq!(
            ts.nack_outstanding_for("echo.demo:8080").as_deref(),
            Some("bad")
        );
        assert!(ts.nack_outstanding_for("other.demo:8080").is_none());
        ts.last_ack_at = Some(t(20));
        assert!(ts.nack_outstanding_for("echo.demo:8080").is_none());
        ts.nacked_resources
            .insert("echo.demo:8080".into(), "v3".into());
        assert!(ts.nack_outstanding_for("echo.demo:8080").is_some());
    }
}

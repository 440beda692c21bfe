//! Endpoint sets and versioned snapshots, and the diff between two snapshots.
//!
//! ```text
//!   Vec<Endpoint> --EndpointSet::merge--> EndpointSet (sorted, unique addresses, version)
//!   ServiceKey -> EndpointSet ----------> Snapshot (version over all sets)
//!   Snapshot, Snapshot -----------------> SnapshotDiff
//! ```
//!
//! Versions are derived from content (SHA-256 over a canonical encoding), so
//! two server replicas that see the same state publish the same version, and
//! a client reconnecting to the other replica is sent nothing new. This module
//! does not decide when to publish; coalescing and guards live in eds-server.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::endpoint::{Endpoint, Health, Locality};
use crate::key::ServiceKey;

/// A content-derived version: the first 64 bits of a SHA-256, printed as hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Version(u64);

impl Version {
    /// The version of nothing at all (an empty snapshot or set).
    pub const EMPTY: Version = Version(0);

    /// Parses the 16-hex-digit form printed by `Display`.
    pub fn parse(s: &str) -> Option<Version> {
        (s.len() == 16)
            .then(|| u64::from_str_radix(s, 16).ok())
            .flatten()
            .map(Version)
    }

    fn of(hasher: Sha256) -> Version {
        let digest = hasher.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        Version(u64::from_be_bytes(first))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl serde::Serialize for Version {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// The endpoints of one service port: sorted by address, each address once.
///
/// Immutable once built, and shared: cloning is a reference count, so
/// successive snapshots that did not touch a service hold the same memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSet {
    endpoints: Arc<[Endpoint]>,
    version: Version,
}

impl Default for EndpointSet {
    fn default() -> Self {
        Self::merge(Vec::new())
    }
}

impl EndpointSet {
    /// Merges endpoints from any number of sources (for example every
    /// EndpointSlice of a Service). An address seen twice is kept once, in its
    /// best state (Healthy over Draining over Unhealthy), because EndpointSlices
    /// may repeat an address (kubernetes/kubernetes#114144) and gRPC clients
    /// reject duplicates.
    pub fn merge(mut endpoints: Vec<Endpoint>) -> Self {
        // Best first within an address, so dedup keeps the best.
        endpoints.sort_by_key(|e| (e.address, e.health));
        endpoints.dedup_by(|later, kept| later.address == kept.address);
        let version = Self::hash(&endpoints);
        Self {
            endpoints: endpoints.into(),
            version,
        }
    }

    /// The endpoints, sorted by address.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// Number of endpoints in any state.
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Whether there are no endpoints at all.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// The content-derived version of this set.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The endpoint at an address.
    pub fn get(&self, address: &SocketAddr) -> Option<&Endpoint> {
        self.endpoints
            .binary_search_by(|e| e.address.cmp(address))
            .ok()
            .map(|i| &self.endpoints[i])
    }

    /// Localities by zone, in zone order, each with the sum of its healthy
    /// weights (or of its draining weights when none is healthy, so it is
    /// never zero) and priority 0. Zones whose endpoints are all unhealthy are
    /// left out: an empty locality is not allowed on the wire (gRFC A27).
    pub fn localities(&self) -> Vec<(Locality, Vec<&Endpoint>)> {
        let mut by_zone: BTreeMap<&str, Vec<&Endpoint>> = BTreeMap::new();
        for e in self.endpoints.iter() {
            if e.health != Health::Unhealthy {
                by_zone.entry(e.zone_or_empty()).or_default().push(e);
            }
        }
        by_zone
            .into_iter()
            .filter_map(|(zone, eps)| {
                let sum = |h: Health| -> u64 {
                    eps.iter()
                        .filter(|e| e.health == h)
                        .map(|e| u64::from(e.weight.get()))
                        .sum()
                };
                let weight = match sum(Health::Healthy) {
                    0 => sum(Health::Draining),
                    w => w,
                };
                let weight = std::num::NonZeroU32::new(u32::try_from(weight).unwrap_or(u32::MAX))?;
                Some((
                    Locality {
                        zone: zone.to_owned(),
                        priority: 0,
                        weight,
                    },
                    eps,
                ))
            })
            .collect()
    }

    /// Counts by health: (healthy, draining, unhealthy).
    pub fn health_counts(&self) -> (usize, usize, usize) {
        self.endpoints
            .iter()
            .fold((0, 0, 0), |(h, d, u), e| match e.health {
                Health::Healthy => (h + 1, d, u),
                Health::Draining => (h, d + 1, u),
                Health::Unhealthy => (h, d, u + 1),
            })
    }

    fn hash(endpoints: &[Endpoint]) -> Version {
        if endpoints.is_empty() {
            return Version::EMPTY;
        }
        let mut h = Sha256::new();
        for e in endpoints {
            hash_endpoint(&mut h, e);
        }
        Version::of(h)
    }
}

/// Feeds an unambiguous encoding of an endpoint: every variable-length field
/// is length-prefixed, so no two different endpoints encode alike.
fn hash_endpoint(h: &mut Sha256, e: &Endpoint) {
    fn bytes(h: &mut Sha256, b: &[u8]) {
        h.update((b.len() as u64).to_be_bytes());
        h.update(b);
    }
    fn opt_str(h: &mut Sha256, s: Option<&str>) {
        match s {
            None => h.update([0]),
            Some(s) => {
                h.update([1]);
                bytes(h, s.as_bytes());
            }
        }
    }
    fn time(h: &mut Sha256, t: Option<SystemTime>) {
        match t.map(|t| t.duration_since(UNIX_EPOCH)) {
            None => h.update([0]),
            Some(Ok(d)) => {
                h.update([1]);
                h.update(d.as_nanos().to_be_bytes());
            }
            // Before 1970: encode as negative so it cannot alias a later time.
            Some(Err(before)) => {
                h.update([2]);
                h.update(before.duration().as_nanos().to_be_bytes());
            }
        }
    }
    bytes(h, e.address.to_string().as_bytes());
    opt_str(h, e.zone.as_deref());
    opt_str(h, e.node.as_deref());
    opt_str(h, e.pod.as_deref());
    h.update([e.health as u8]);
    h.update(e.weight.get().to_be_bytes());
    time(h, e.ready_since);
    time(h, e.drain_deadline);
    h.update((e.labels.len() as u64).to_be_bytes());
    for (k, v) in &e.labels {
        bytes(h, k.as_bytes());
        bytes(h, v.as_bytes());
    }
}

/// Every service's endpoints at one moment, with a version over all of them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    services: BTreeMap<ServiceKey, EndpointSet>,
    version: Version,
}

impl Snapshot {
    /// A snapshot of the given services. Keys are stored in canonical form,
    /// so `a.b.svc.cluster.local:80` and `a.b:80` name the same entry.
    pub fn new(services: impl IntoIterator<Item = (ServiceKey, EndpointSet)>) -> Self {
        let services: BTreeMap<ServiceKey, EndpointSet> = services
            .into_iter()
            .map(|(k, v)| (k.canonical(), v))
            .collect();
        let version = if services.is_empty() {
            Version::EMPTY
        } else {
            let mut h = Sha256::new();
            for (key, set) in &services {
                let key = key.to_string();
                h.update((key.len() as u64).to_be_bytes());
                h.update(key.as_bytes());
                h.update(set.version.0.to_be_bytes());
            }
            Version::of(h)
        };
        Self { services, version }
    }

    /// The content-derived version of the whole snapshot.
    pub fn version(&self) -> Version {
        self.version
    }

    /// One service's endpoints, by any form of its key.
    pub fn get(&self, key: &ServiceKey) -> Option<&EndpointSet> {
        if key.cluster_domain().is_some() {
            self.services.get(&key.canonical())
        } else {
            self.services.get(key)
        }
    }

    /// All services, in key order.
    pub fn services(&self) -> impl ExactSizeIterator<Item = (&ServiceKey, &EndpointSet)> {
        self.services.iter()
    }

    /// What changed from `self` to `newer`.
    pub fn diff(&self, newer: &Snapshot) -> SnapshotDiff {
        let mut diff = SnapshotDiff::default();
        for (key, old) in &self.services {
            match newer.services.get(key) {
                None => diff.removed.push(key.clone()),
                Some(new) if new.version != old.version => {
                    diff.changed.push((key.clone(), old.diff(new)));
                }
                Some(_) => {}
            }
        }
        for key in newer.services.keys() {
            if !self.services.contains_key(key) {
                diff.added.push(key.clone());
            }
        }
        diff
    }
}

impl EndpointSet {
    /// What changed from `self` to `newer`, matched by address.
    pub fn diff(&self, newer: &EndpointSet) -> EndpointDiff {
        let mut diff = EndpointDiff::default();
        let (mut i, mut j) = (0, 0);
        let (old, new) = (&self.endpoints, &newer.endpoints);
        // Both sides are sorted by address: one merge pass.
        while i < old.len() || j < new.len() {
            match (old.get(i), new.get(j)) {
                (Some(a), Some(b)) if a.address == b.address => {
                    if a != b {
                        diff.changed.push((a.clone(), b.clone()));
                    }
                    i += 1;
                    j += 1;
                }
                (Some(a), Some(b)) if a.address < b.address => {
                    diff.removed.push(a.clone());
                    i += 1;
                }
                (Some(a), None) => {
                    diff.removed.push(a.clone());
                    i += 1;
                }
                (_, Some(b)) => {
                    diff.added.push(b.clone());
                    j += 1;
                }
                (None, None) => unreachable!("loop condition"),
            }
        }
        diff
    }
}

/// Services added, removed and changed between two snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SnapshotDiff {
    /// Services present only in the newer snapshot.
    pub added: Vec<ServiceKey>,
    /// Services present only in the older snapshot.
    pub removed: Vec<ServiceKey>,
    /// Services in both whose endpoints differ.
    pub changed: Vec<(ServiceKey, EndpointDiff)>,
}

impl SnapshotDiff {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// Endpoints added, removed and changed within one service.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EndpointDiff {
    /// Addresses only in the newer set.
    pub added: Vec<Endpoint>,
    /// Addresses only in the older set.
    pub removed: Vec<Endpoint>,
    /// Addresses in both with different metadata or health: (old, new).
    pub changed: Vec<(Endpoint, Endpoint)>,
}

impl EndpointDiff {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::num::NonZeroU32;

    fn ep(last: u8, zone: &str, health: Health) -> Endpoint {
        Endpoint::new(SocketAddr::from(([10, 244, 0, last], 8080)))
            .with_zone(zone)
            .with_health(health)
    }

    #[test]
    fn merge_deduplicates_keeping_the_best_state() {
        let set = EndpointSet::merge(vec![
            ep(2, "a", Health::Draining),
            ep(1, "a", Health::Healthy),
            ep(2, "a", Health::Healthy),
            ep(2, "a", Health::Unhealthy),
        ]);
        assert_eq!(set.len(), 2);
        assert_eq!(set.endpoints()[1].health, Health::Healthy);
        assert!(
            set.endpoints()
                .windows(2)
                .all(|w| w[0].address < w[1].address)
        );
    }

    #[test]
    fn version_follows_content_not_order() {
        let a = EndpointSet::merge(vec![
            ep(1, "a", Health::Healthy),
            ep(2, "b", Health::Healthy),
        ]);
        let b = EndpointSet::merge(vec![
            ep(2, "b", Health::Healthy),
            ep(1, "a", Health::Healthy),
        ]);
        assert_eq!(a.version(), b.version());
        let c = EndpointSet::merge(vec![
            ep(1, "a", Health::Healthy),
            ep(2, "b", Health::Draining),
        ]);
        assert_ne!(a.version(), c.version());
        assert_eq!(EndpointSet::default().version(), Version::EMPTY);
        assert_eq!(Version::parse(&a.version().to_string()), Some(a.version()));
        assert_eq!(Version::parse("xyz"), None);
    }

    #[test]
    fn localities_have_nonzero_weights_and_skip_all_unhealthy_zones() {
        let set = EndpointSet::merge(vec![
            ep(1, "a", Health::Healthy).with_weight(NonZeroU32::new(3).unwrap()),
            ep(2, "a", Health::Draining),
            ep(3, "b", Health::Draining),
            ep(4, "c", Health::Unhealthy),
        ]);
        let locs = set.localities();
        let summary: Vec<(&str, u32, usize)> = locs
            .iter()
            .map(|(l, eps)| (l.zone.as_str(), l.weight.get(), eps.len()))
            .collect();
        assert_eq!(summary, vec![("a", 3, 2), ("b", 1, 1)]);
        assert_eq!(set.health_counts(), (1, 2, 1));
    }

    #[test]
    fn snapshot_diff_and_fqdn_lookup() {
        let k1: ServiceKey = "a.ns:80".parse().unwrap();
        let k2: ServiceKey = "b.ns:80".parse().unwrap();
        let k3: ServiceKey = "c.ns.svc.cluster.local:80".parse().unwrap();
        let old = Snapshot::new([
            (
                k1.clone(),
                EndpointSet::merge(vec![
                    ep(1, "a", Health::Healthy),
                    ep(2, "a", Health::Healthy),
                ]),
            ),
            (
                k2.clone(),
                EndpointSet::merge(vec![ep(3, "a", Health::Healthy)]),
            ),
        ]);
        let new = Snapshot::new([
            (
                k1.clone(),
                EndpointSet::merge(vec![
                    ep(1, "a", Health::Draining),
                    ep(4, "b", Health::Healthy),
                ]),
            ),
            (k3.clone(), EndpointSet::default()),
        ]);
        let diff = old.diff(&new);
        assert_eq!(diff.added, vec![k3.canonical()]);
        assert_eq!(diff.removed, vec![k2]);
        let (key, d) = &diff.changed[0];
        assert_eq!(key, &k1);
        assert_eq!(d.added.len(), 1);
        assert_eq!(d.removed.len(), 1);
        assert_eq!(d.changed.len(), 1);
        assert!(new.get(&k3).is_some(), "FQDN key finds the canonical entry");
        assert!(old.diff(&old).is_empty());
        assert_ne!(old.version(), new.version());
    }

    fn arb_endpoint() -> impl Strategy<Value = Endpoint> {
        (0u8..16, 0u8..3, 0u8..3).prop_map(|(last, z, h)| {
            let health = [Health::Healthy, Health::Draining, Health::Unhealthy][h as usize];
            ep(last, ["a", "b", "c"][z as usize], health)
        })
    }

    proptest! {
        #[test]
        fn diff_applied_to_old_gives_new(
            old in proptest::collection::vec(arb_endpoint(), 0..12),
            new in proptest::collection::vec(arb_endpoint(), 0..12),
        ) {
            let (old, new) = (EndpointSet::merge(old), EndpointSet::merge(new));
            let d = old.diff(&new);
            let mut rebuilt: Vec<Endpoint> = old
                .endpoints()
                .iter()
                .filter(|e| !d.removed.iter().any(|r| r.address == e.address))
                .map(|e| d.changed.iter().find(|(o, _)| o.address == e.address).map_or(e.clone(), |(_, n)| n.clone()))
                .collect();
            rebuilt.extend(d.added.iter().cloned());
            prop_assert_eq!(EndpointSet::merge(rebuilt), new.clone());
            prop_assert_eq!(d.is_empty(), old.version() == new.version());
        }
    }
}

//! The shared resource model the protocol state machines read from: encoded
//! resources, their versions, who is asking, and the [`ResourceSource`]
//! trait with an in-memory implementation for tests.
//!
//! ```text
//!   ResourceSource::get(type, name as asked, client)
//!        │
//!        ├── Found(Arc<Resource>)   encoded once per (type, name, version, zone shape),
//!        │                          the same Arc handed to every subscriber
//!        ├── DoesNotExist           SotW: omitted; delta: listed in removed_resources
//!        └── NotReady               not known yet: say nothing, neither "exists" nor
//!                                   "removed", until a later update
//! ```
//!
//! Why the body is per name as asked, not per canonical service: a client may
//! ask for `echo.demo:grpc` or `echo.demo.svc.cluster.local:8080`, and every
//! Envoy resource carries its own name inside the encoded message
//! (`Listener.name`, `Cluster.name`, `ClusterLoadAssignment.cluster_name`);
//! state-of-the-world responses have nowhere else to put it, and clients match
//! on it. Aliases are few in practice (one or two per service across all
//! clients), so one encoding per alias, shared by every client using it,
//! costs little. Per-zone shaping (locality weights and priorities for the
//! client's own zone) is a second key: clients in the same zone share one
//! body.
//!
//! What this module is not: it does not build Envoy messages from endpoint
//! sets (`proto::resources` does) and does not own the snapshot; an
//! implementation of [`ResourceSource`] is expected to be an immutable view
//! of one snapshot, so that `version_of` and `get` agree within one call of a
//! state machine.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use proto::xds::pb::envoy::config::core::v3::Node;
use proto::xds::pb::envoy::service::discovery::v3::Resource as DeltaResource;
use proto::xds::pb::google::protobuf::Any;

use super::ResourceType;

/// Who is asking: what the first request's `Node` says about the client.
///
/// Resources may differ per zone (locality weights that keep traffic in the
/// client's zone), so the zone is part of every lookup.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, serde::Serialize)]
pub struct ClientInfo {
    /// `Node.id`; empty when the client sent none.
    pub node_id: String,
    /// `Node.cluster`, the client's service cluster, for the admin view.
    pub cluster: String,
    /// `Node.locality.zone`; `None` when absent or empty.
    pub zone: Option<String>,
    /// The client listed [`proto::resources::UNHEALTHY_ENDPOINTS_FEATURE`] in
    /// `Node.client_features`: send it not-serving endpoints as UNHEALTHY.
    pub unhealthy_endpoints: bool,
}

impl ClientInfo {
    /// A client with this node id and zone.
    pub fn new(node_id: impl Into<String>, zone: Option<&str>) -> Self {
        ClientInfo {
            node_id: node_id.into(),
            cluster: String::new(),
            zone: zone.filter(|z| !z.is_empty()).map(str::to_owned),
            unhealthy_endpoints: false,
        }
    }

    /// What a `Node` says. Only the first request of a stream is guaranteed
    /// to carry one (xDS protocol, "Basic Protocol Overview").
    pub fn from_node(node: &Node) -> Self {
        ClientInfo {
            node_id: node.id.clone(),
            cluster: node.cluster.clone(),
            zone: node
                .locality
                .as_ref()
                .map(|l| l.zone.as_str())
                .filter(|z| !z.is_empty())
                .map(str::to_owned),
            unhealthy_endpoints: node
                .client_features
                .iter()
                .any(|f| f == proto::resources::UNHEALTHY_ENDPOINTS_FEATURE),
        }
    }
}

/// An opaque per-resource version, cheap to clone and compare.
///
/// Derived from content by whoever builds the resource (for example the
/// endpoint set's version combined with the zone shape), never from a counter
/// or a clock, so replicas agree.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceVersion(Arc<str>);

impl ResourceVersion {
    /// A version from its text form.
    pub fn new(version: &str) -> Self {
        ResourceVersion(Arc::from(version))
    }

    /// The text form sent on the wire.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ResourceVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for ResourceVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for ResourceVersion {
    fn from(v: &str) -> Self {
        ResourceVersion::new(v)
    }
}

impl From<lb_core::Version> for ResourceVersion {
    fn from(v: lb_core::Version) -> Self {
        ResourceVersion::new(&v.to_string())
    }
}

impl serde::Serialize for ResourceVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// One encoded xDS resource, as one client asked for it.
///
/// Built once per (type, name, version, zone shape) and shared by all
/// subscribers through an `Arc`; the state machines never re-encode it, and
/// the wire encoder ([`super::wire`]) sends its body by reference.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    name: String,
    version: ResourceVersion,
    type_url: String,
    /// `Any.value`: the encoded Envoy message.
    value: Bytes,
}

impl Resource {
    /// A resource named `name` (the name the client asked for, which is also
    /// the name inside `body`) at `version`.
    pub fn new(name: impl Into<String>, version: ResourceVersion, body: Any) -> Self {
        Resource {
            name: name.into(),
            version,
            type_url: body.type_url,
            // Takes the Vec's allocation; no copy.
            value: Bytes::from(body.value),
        }
    }

    /// The resource's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The resource's version.
    pub fn version(&self) -> &ResourceVersion {
        &self.version
    }

    /// `Any.type_url` of the body.
    pub fn type_url(&self) -> &str {
        &self.type_url
    }

    /// The size of the resource inside a response (its `Any`), in bytes:
    /// what response splitting adds up.
    pub fn encoded_len(&self) -> usize {
        // Tag and length prefixes of the Any and its two fields.
        let framing = 3 * (1 + prost::length_delimiter_len(self.value.len()));
        self.type_url.len() + self.value.len() + framing
    }

    /// The encoded message (`Any.value`), shared.
    pub fn value(&self) -> &Bytes {
        &self.value
    }

    /// The body as a protobuf `Any`, copied: for tests, views and logs, not
    /// for sending.
    pub fn body(&self) -> Any {
        Any {
            type_url: self.type_url.clone(),
            value: self.value.to_vec(),
        }
    }

    /// The delta wrapper (`envoy.service.discovery.v3.Resource`), copied
    /// like [`Resource::body`].
    pub fn to_delta(&self) -> DeltaResource {
        DeltaResource {
            name: self.name.clone(),
            version: self.version.as_str().to_owned(),
            resource: Some(self.body()),
            ..Default::default()
        }
    }
}

/// The answer to "what is this resource now?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<T> {
    /// It exists.
    Found(T),
    /// It does not exist in the current snapshot (the service or port is
    /// unknown, or the name does not parse as a service key).
    DoesNotExist,
    /// The server cannot tell yet (its watches have not finished their first
    /// list). Saying "does not exist" now would make a client drop a
    /// resource it has, so the state machines say nothing until a later
    /// update.
    NotReady,
}

impl<T> Lookup<T> {
    /// Applies `f` to a found value.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Lookup<U> {
        match self {
            Lookup::Found(t) => Lookup::Found(f(t)),
            Lookup::DoesNotExist => Lookup::DoesNotExist,
            Lookup::NotReady => Lookup::NotReady,
        }
    }
}

/// Where the state machines read resources from: an immutable view of one
/// snapshot, shaped for one client.
pub trait ResourceSource {
    /// The resource `name` (exactly as the client asked) of type `ty`, as
    /// `client` should see it.
    fn get(&self, ty: ResourceType, name: &str, client: &ClientInfo) -> Lookup<Arc<Resource>>;

    /// Only the version of what [`get`](Self::get) would return. The state
    /// machines compare versions first and fetch bodies only for what they
    /// send, so an implementation that encodes lazily can skip encoding for
    /// unchanged resources. Must agree with `get`.
    fn version_of(
        &self,
        ty: ResourceType,
        name: &str,
        client: &ClientInfo,
    ) -> Lookup<ResourceVersion> {
        self.get(ty, name, client).map(|r| r.version().clone())
    }

    /// Every resource name of `ty` a wildcard subscription of `client` covers
    /// (canonical names), or `None` if not ready. Asked only for LDS and CDS.
    fn names(&self, ty: ResourceType, client: &ClientInfo) -> Option<Vec<String>>;
}

impl<T: ResourceSource + ?Sized> ResourceSource for &T {
    fn get(&self, ty: ResourceType, name: &str, client: &ClientInfo) -> Lookup<Arc<Resource>> {
        (**self).get(ty, name, client)
    }

    fn version_of(
        &self,
        ty: ResourceType,
        name: &str,
        client: &ClientInfo,
    ) -> Lookup<ResourceVersion> {
        (**self).version_of(ty, name, client)
    }

    fn names(&self, ty: ResourceType, client: &ClientInfo) -> Option<Vec<String>> {
        (**self).names(ty, client)
    }
}

impl<T: ResourceSource + ?Sized> ResourceSource for Arc<T> {
    fn get(&self, ty: ResourceType, name: &str, client: &ClientInfo) -> Lookup<Arc<Resource>> {
        (**self).get(ty, name, client)
    }

    fn version_of(
        &self,
        ty: ResourceType,
        name: &str,
        client: &ClientInfo,
    ) -> Lookup<ResourceVersion> {
        (**self).version_of(ty, name, client)
    }

    fn names(&self, ty: ResourceType, client: &ClientInfo) -> Option<Vec<String>> {
        (**self).names(ty, client)
    }
}

/// One resource in a [`MemorySource`]: a default body and per-zone variants.
#[derive(Debug, Clone, Default)]
struct Entry {
    default: Option<Arc<Resource>>,
    by_zone: BTreeMap<String, Arc<Resource>>,
}

/// An in-memory [`ResourceSource`] for tests and in-process servers: fake
/// bodies (an `Any` with the type's URL and a byte payload), optional per-zone
/// variants, and a readiness switch.
#[derive(Debug, Clone)]
pub struct MemorySource {
    ready: bool,
    entries: BTreeMap<(ResourceType, String), Entry>,
}

impl Default for MemorySource {
    fn default() -> Self {
        Self::new()
    }
}

impl MemorySource {
    /// An empty, ready source.
    pub fn new() -> Self {
        MemorySource {
            ready: true,
            entries: BTreeMap::new(),
        }
    }

    /// An empty source that answers [`Lookup::NotReady`] to everything.
    pub fn not_ready() -> Self {
        MemorySource {
            ready: false,
            entries: BTreeMap::new(),
        }
    }

    /// Marks the source ready or not.
    pub fn set_ready(&mut self, ready: bool) -> &mut Self {
        self.ready = ready;
        self
    }

    /// The fake resource `name` at `version` with `payload` as its body.
    pub fn fake(ty: ResourceType, name: &str, version: &str, payload: &[u8]) -> Resource {
        Resource::new(
            name,
            ResourceVersion::new(version),
            Any {
                type_url: ty.type_url().to_owned(),
                value: payload.to_vec(),
            },
        )
    }

    /// Sets the body every zone without its own variant sees.
    pub fn insert(
        &mut self,
        ty: ResourceType,
        name: &str,
        version: &str,
        payload: &[u8],
    ) -> &mut Self {
        let res = Arc::new(Self::fake(ty, name, version, payload));
        self.entries
            .entry((ty, name.to_owned()))
            .or_default()
            .default = Some(res);
        self
    }

    /// Sets the body clients in `zone` see.
    pub fn insert_for_zone(
        &mut self,
        ty: ResourceType,
        name: &str,
        zone: &str,
        version: &str,
        payload: &[u8],
    ) -> &mut Self {
        let res = Arc::new(Self::fake(ty, name, version, payload));
        self.entries
            .entry((ty, name.to_owned()))
            .or_default()
            .by_zone
            .insert(zone.to_owned(), res);
        self
    }

    /// Removes a resource and all its zone variants.
    pub fn remove(&mut self, ty: ResourceType, name: &str) -> &mut Self {
        self.entries.remove(&(ty, name.to_owned()));
        self
    }
}

impl ResourceSource for MemorySource {
    fn get(&self, ty: ResourceType, name: &str, client: &ClientInfo) -> Lookup<Arc<Resource>> {
        if !self.ready {
            return Lookup::NotReady;
        }
        let Some(entry) = self.entries.get(&(ty, name.to_owned())) else {
            return Lookup::DoesNotExist;
        };
        let zoned = client.zone.as_ref().and_then(|z| entry.by_zone.get(z));
        match zoned.or(entry.default.as_ref()) {
            Some(res) => Lookup::Found(Arc::clone(res)),
            None => Lookup::DoesNotExist,
        }
    }

    fn names(&self, ty: ResourceType, _client: &ClientInfo) -> Option<Vec<String>> {
        self.ready.then(|| {
            self.entries
                .range((ty, String::new())..)
                .take_while(|((t, _), _)| *t == ty)
                .map(|((_, name), _)| name.clone())
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::xds::pb::envoy::config::core::v3::Locality;

    const EDS: ResourceType = ResourceType::ClusterLoadAssignment;

    #[test]
    fn client_info_reads_node_id_and_zone() {
        let node = Node {
            id: "pod-1".into(),
            cluster: "web".into(),
            locality: Some(Locality {
                zone: "zone-a".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let info = ClientInfo::from_node(&node);
        assert_eq!(info.node_id, "pod-1");
        assert_eq!(info.cluster, "web");
        assert_eq!(info.zone.as_deref(), Some("zone-a"));

        let no_zone = Node {
            locality: Some(Locality::default()),
            ..node
        };
        assert_eq!(ClientInfo::from_node(&no_zone).zone, None);
        assert_eq!(ClientInfo::new("x", Some("")).zone, None);
    }

    #[test]
    fn same_zone_shares_one_body_other_zones_differ() {
        let mut src = MemorySource::new();
        src.insert(EDS, "echo.demo:8080", "v1", b"default")
            .insert_for_zone(EDS, "echo.demo:8080", "zone-a", "v1-a", b"a-local");
        let a1 = ClientInfo::new("a1", Some("zone-a"));
        let a2 = ClientInfo::new("a2", Some("zone-a"));
        let b = ClientInfo::new("b", Some("zone-b"));

        let (Lookup::Found(r1), Lookup::Found(r2), Lookup::Found(rb)) = (
            src.get(EDS, "echo.demo:8080", &a1),
            src.get(EDS, "echo.demo:8080", &a2),
            src.get(EDS, "echo.demo:8080", &b),
        ) else {
            panic!("all exist");
        };
        assert!(Arc::ptr_eq(&r1, &r2), "one encoding per zone shape");
        assert_eq!(r1.body().value, b"a-local");
        assert_eq!(rb.body().value, b"default");
        assert_eq!(
            src.version_of(EDS, "echo.demo:8080", &b),
            Lookup::Found(ResourceVersion::new("v1"))
        );
        assert_eq!(src.get(EDS, "nope.demo:1", &b), Lookup::DoesNotExist);
    }

    #[test]
    fn names_lists_one_type_and_readiness_gates_everything() {
        let mut src = MemorySource::new();
        src.insert(ResourceType::Cluster, "b", "1", b"")
            .insert(ResourceType::Cluster, "a", "1", b"")
            .insert(EDS, "a", "1", b"");
        let c = ClientInfo::default();
        assert_eq!(
            src.names(ResourceType::Cluster, &c),
            Some(vec!["a".to_owned(), "b".to_owned()])
        );
        assert_eq!(src.names(ResourceType::Listener, &c), Some(vec![]));
        src.set_ready(false);
        assert_eq!(src.names(ResourceType::Cluster, &c), None);
        assert_eq!(src.get(EDS, "a", &c), Lookup::NotReady);
    }

    #[test]
    fn delta_wrapper_carries_name_version_and_body() {
        let r = MemorySource::fake(EDS, "echo.demo:8080", "v7", b"x");
        let d = r.to_delta();
        assert_eq!(d.name, "echo.demo:8080");
        assert_eq!(d.version, "v7");
        assert_eq!(d.resource.unwrap().type_url, EDS.type_url());
    }
}

//! Test fixtures: requests that read like data, and a fake source.
//!
//! ```text
//!   req(EDS).names(["echo.demo:8080"]).nonce("1").version("v").nack("bad")
//!   dreq(CDS).subscribe(["*"]).initial([("a", "1")]).nonce("3")
//!   source(&[(EDS, "echo.demo:8080", "1")])  -> bodies "echo.demo:8080@1"
//! ```
//!
//! Not a public API: only the protocol tests use it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proto::xds::pb::envoy::config::core::v3::{Locality, Node};
use proto::xds::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use proto::xds::pb::google::rpc::Status;

use std::sync::Arc;

use super::{CHUNK_BYTES, MemorySource, Resource, ResourceType};

pub(super) const LDS: ResourceType = ResourceType::Listener;
pub(super) const RDS: ResourceType = ResourceType::RouteConfiguration;
pub(super) const CDS: ResourceType = ResourceType::Cluster;
pub(super) const EDS: ResourceType = ResourceType::ClusterLoadAssignment;

/// A fixed point in time `secs` after the epoch.
pub(super) fn t(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn node(id: &str, zone: &str) -> Node {
    Node {
        id: id.into(),
        locality: Some(Locality {
            zone: zone.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn nack_status(message: &str) -> Status {
    Status {
        code: 3, // INVALID_ARGUMENT, what Envoy and gRPC clients send
        message: message.into(),
        details: vec![],
    }
}

/// A state-of-the-world request under construction.
#[derive(Debug, Clone)]
pub(super) struct Req(DiscoveryRequest);

/// A request for `ty` with no names, nonce or version.
pub(super) fn req(ty: ResourceType) -> Req {
    Req(DiscoveryRequest {
        type_url: ty.type_url().into(),
        ..Default::default()
    })
}

impl Req {
    pub(super) fn names<'a>(mut self, names: impl IntoIterator<Item = &'a str>) -> Self {
        self.0.resource_names = names.into_iter().map(str::to_owned).collect();
        self
    }

    pub(super) fn nonce(mut self, nonce: &str) -> Self {
        self.0.response_nonce = nonce.into();
        self
    }

    pub(super) fn version(mut self, version: &str) -> Self {
        self.0.version_info = version.into();
        self
    }

    pub(super) fn nack(mut self, message: &str) -> Self {
        self.0.error_detail = Some(nack_status(message));
        self
    }

    pub(super) fn node(mut self, id: &str, zone: &str) -> Self {
        self.0.node = Some(node(id, zone));
        self
    }

    pub(super) fn type_url(mut self, url: &str) -> Self {
        self.0.type_url = url.into();
        self
    }
}

impl From<Req> for DiscoveryRequest {
    fn from(r: Req) -> Self {
        r.0
    }
}

/// A delta request under construction.
#[derive(Debug, Clone)]
pub(super) struct DReq(DeltaDiscoveryRequest);

/// A delta request for `ty` that subscribes to nothing.
pub(super) fn dreq(ty: ResourceType) -> DReq {
    DReq(DeltaDiscoveryRequest {
        type_url: ty.type_url().into(),
        ..Default::default()
    })
}

impl DReq {
    pub(super) fn subscribe<'a>(mut self, names: impl IntoIterator<Item = &'a str>) -> Self {
        self.0.resource_names_subscribe = names.into_iter().map(str::to_owned).collect();
        self
    }

    pub(super) fn unsubscribe<'a>(mut self, names: impl IntoIterator<Item = &'a str>) -> Self {
        self.0.resource_names_unsubscribe = names.into_iter().map(str::to_owned).collect();
        self
    }

    pub(super) fn initial<'a>(
        mut self,
        versions: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Self {
        self.0.initial_resource_versions = versions
            .into_iter()
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect();
        self
    }

    pub(super) fn nonce(mut self, nonce: &str) -> Self {
        self.0.response_nonce = nonce.into();
        self
    }

    pub(super) fn nack(mut self, message: &str) -> Self {
        self.0.error_detail = Some(nack_status(message));
        self
    }

    pub(super) fn node(mut self, id: &str, zone: &str) -> Self {
        self.0.node = Some(node(id, zone));
        self
    }

    pub(super) fn type_url(mut self, url: &str) -> Self {
        self.0.type_url = url.into();
        self
    }
}

impl From<DReq> for DeltaDiscoveryRequest {
    fn from(r: DReq) -> Self {
        r.0
    }
}

/// A ready source holding `(type, name, version)` resources whose bodies
/// read `name@version`.
pub(super) fn source(resources: &[(ResourceType, &str, &str)]) -> MemorySource {
    let mut src = MemorySource::new();
    for (ty, name, version) in resources {
        src.insert(*ty, name, version, format!("{name}@{version}").as_bytes());
    }
    src
}

/// The bodies of a SotW response, as text, in order.
pub(super) fn bodies<R: Clone + Into<DiscoveryResponse>>(r: &R) -> Vec<String> {
    let r: DiscoveryResponse = r.clone().into();
    r.resources
        .iter()
        .map(|a| String::from_utf8_lossy(&a.value).into_owned())
        .collect()
}

/// The `name@version` of each resource in a delta response, in order.
pub(super) fn sent<R: Clone + Into<DeltaDiscoveryResponse>>(r: &R) -> Vec<String> {
    let r: DeltaDiscoveryResponse = r.clone().into();
    r.resources
        .iter()
        .map(|res| format!("{}@{}", res.name, res.version))
        .collect()
}

/// Five EDS resources of 400 KiB each (2 MiB in all), and their names: a
/// change that must be split into parts of at most [`CHUNK_BYTES`].
pub(super) fn large_eds() -> (MemorySource, Vec<String>) {
    let big = vec![b'x'; 400 * 1024];
    let names: Vec<String> = (0..5).map(|i| format!("svc-{i}.demo:80")).collect();
    let mut src = MemorySource::new();
    for name in &names {
        src.insert(ResourceType::ClusterLoadAssignment, name, "1", &big);
    }
    (src, names)
}

/// Checks the parts [`large_eds`] arrives in: 2 + 2 + 1 resources, each
/// part within [`CHUNK_BYTES`], every name once and in order.
pub(super) fn assert_split_into_parts(parts: &[&[Arc<Resource>]], names: &[String]) {
    let sizes: Vec<usize> = parts
        .iter()
        .map(|p| p.iter().map(|r| r.encoded_len()).sum())
        .collect();
    assert_eq!(parts.len(), 3, "2 + 2 + 1 resources of 400 KiB: {sizes:?}");
    assert!(sizes.iter().all(|&n| n <= CHUNK_BYTES), "{sizes:?}");
    let carried: Vec<&str> = parts
        .iter()
        .flat_map(|p| p.iter().map(|r| r.name()))
        .collect();
    assert_eq!(
        carried,
        names.iter().map(String::as_str).collect::<Vec<_>>()
    );
}

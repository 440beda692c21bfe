//! The responses the state machines return, and their gRPC wire form built
//! from shared buffers.
//!
//! A [`SotwResponse`] or [`DeltaResponse`] holds the resources it carries as
//! `Arc<Resource>`: the very encodings the [`super::ResourceSource`] built
//! once per version. [`WireMessage::encode_frames`] writes a response as a
//! length-prefixed gRPC message in chunks: the small fields (version, nonce,
//! type URL, names, length prefixes) are written into one fresh buffer, and
//! every large resource body is a reference-counted clone of the shared
//! bytes. Ten thousand subscribers of one 150 KB ClusterLoadAssignment
//! therefore cost ten thousand small headers and one body, and the only copy
//! of the body per subscriber is the kernel's, into the socket.
//!
//! Why not prost and tonic's codec: a `DiscoveryResponse` owns its
//! resources as `Any { value: Vec<u8> }`, so building one per subscriber
//! copies every body, and tonic's encoder then copies the message again into
//! a per-stream buffer that stays allocated at the size of the largest
//! message the stream ever sent. Profiles of the 10,000-subscriber fan-out
//! showed those two copies, and the page faults of the buffers they fill, as
//! about half of the server's CPU.
//!
//! The bytes are exactly what prost would write for [`SotwResponse::to_proto`]
//! (fields in tag order, proto3 defaults omitted); the unit tests compare
//! them. What this module is not: it does not decide what to send (the state
//! machines do) and does not touch a socket (`crate::grpc` turns the chunks
//! into an HTTP/2 body).

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use proto::xds::pb::envoy::service::discovery::v3::{DeltaDiscoveryResponse, DiscoveryResponse};

use super::Resource;

/// Resource bodies at least this large are sent as their own chunk, by
/// reference; smaller ones are copied into the header buffer, where a copy
/// costs less than the extra HTTP/2 DATA frame a separate chunk becomes.
const SHARE_AT_LEAST: usize = 1024;

/// A message that can be written as one gRPC length-prefixed message.
pub trait WireMessage {
    /// Appends the 5-byte gRPC prefix (uncompressed, big-endian length) and
    /// the protobuf encoding, as chunks whose concatenation is the message.
    fn encode_frames(&self, out: &mut Vec<Bytes>);
}

/// A state-of-the-world response.
#[derive(Debug, Clone, PartialEq)]
pub struct SotwResponse {
    /// `version_info`: the version of the whole set sent.
    pub version_info: String,
    /// The resources, shared with the resource cache.
    pub resources: Vec<Arc<Resource>>,
    /// `type_url`.
    pub type_url: String,
    /// `nonce`.
    pub nonce: String,
}

impl SotwResponse {
    /// The protobuf message, with every body copied: for tests, logs and
    /// anything that is not the hot path.
    pub fn to_proto(&self) -> DiscoveryResponse {
        DiscoveryResponse {
            version_info: self.version_info.clone(),
            resources: self.resources.iter().map(|r| r.body()).collect(),
            type_url: self.type_url.clone(),
            nonce: self.nonce.clone(),
            ..Default::default()
        }
    }
}

impl From<SotwResponse> for DiscoveryResponse {
    fn from(r: SotwResponse) -> Self {
        r.to_proto()
    }
}

/// An incremental (delta) response.
#[derive(Debug, Clone, PartialEq)]
pub struct DeltaResponse {
    /// `system_version_info`: the version of everything the client holds.
    pub system_version_info: String,
    /// Added or changed resources, shared with the resource cache.
    pub resources: Vec<Arc<Resource>>,
    /// `type_url`.
    pub type_url: String,
    /// Names of resources the client must drop.
    pub removed_resources: Vec<String>,
    /// `nonce`.
    pub nonce: String,
}

impl DeltaResponse {
    /// The protobuf message, with every body copied (see
    /// [`SotwResponse::to_proto`]).
    pub fn to_proto(&self) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse {
            system_version_info: self.system_version_info.clone(),
            resources: self.resources.iter().map(|r| r.to_delta()).collect(),
            type_url: self.type_url.clone(),
            removed_resources: self.removed_resources.clone(),
            nonce: self.nonce.clone(),
            ..Default::default()
        }
    }
}

impl From<DeltaResponse> for DeltaDiscoveryResponse {
    fn from(r: DeltaResponse) -> Self {
        r.to_proto()
    }
}

/// Length of a length-delimited field (key, length, payload) with a payload
/// of `len` bytes.
fn delimited_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

/// Length of a proto3 string field; an empty string is omitted.
fn string_len(tag: u32, s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        delimited_len(tag, s.len())
    }
}

/// Length of the `google.protobuf.Any` message of `r`.
fn any_len(r: &Resource) -> usize {
    string_len(1, r.type_url()) + bytes_field_len(2, r.value())
}

/// Length of a proto3 bytes field; empty bytes are omitted.
fn bytes_field_len(tag: u32, b: &[u8]) -> usize {
    if b.is_empty() {
        0
    } else {
        delimited_len(tag, b.len())
    }
}

/// Length of the delta wrapper `envoy.service.discovery.v3.Resource` of `r`:
/// `version` (1), `resource` (2), `name` (3).
fn delta_resource_len(r: &Resource) -> usize {
    string_len(1, r.version().as_str()) + delimited_len(2, any_len(r)) + string_len(3, r.name())
}

/// Writes chunks: small pieces accumulate in `head`; a large body flushes
/// `head` and goes out by reference.
struct Chunks<'a> {
    out: &'a mut Vec<Bytes>,
    head: BytesMut,
}

impl<'a> Chunks<'a> {
    fn new(out: &'a mut Vec<Bytes>, message_len: usize) -> Self {
        let mut head = BytesMut::with_capacity(256);
        head.put_u8(0); // not compressed
        // gRPC frames carry a u32 length; tonic refuses larger messages and
        // so do clients, long before this limit.
        head.put_u32(u32::try_from(message_len).unwrap_or(u32::MAX));
        Chunks { out, head }
    }

    fn key(&mut self, tag: u32, len: usize) {
        encode_key(tag, WireType::LengthDelimited, &mut self.head);
        encode_varint(len as u64, &mut self.head);
    }

    fn string(&mut self, tag: u32, s: &str) {
        if !s.is_empty() {
            self.key(tag, s.len());
            self.head.put_slice(s.as_bytes());
        }
    }

    fn bytes(&mut self, tag: u32, b: &Bytes) {
        if b.is_empty() {
            return;
        }
        self.key(tag, b.len());
        if b.len() < SHARE_AT_LEAST {
            self.head.put_slice(b);
        } else {
            self.flush();
            self.out.push(b.clone());
        }
    }

    fn any(&mut self, tag: u32, r: &Resource) {
        self.key(tag, any_len(r));
        self.string(1, r.type_url());
        self.bytes(2, r.value());
    }

    fn flush(&mut self) {
        if !self.head.is_empty() {
            self.out.push(self.head.split().freeze());
        }
    }
}

impl Drop for Chunks<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

impl WireMessage for SotwResponse {
    fn encode_frames(&self, out: &mut Vec<Bytes>) {
        // DiscoveryResponse: version_info 1, resources 2, type_url 4, nonce 5.
        let len = string_len(1, &self.version_info)
            + self
                .resources
                .iter()
                .map(|r| delimited_len(2, any_len(r)))
                .sum::<usize>()
            + string_len(4, &self.type_url)
            + string_len(5, &self.nonce);
        let mut w = Chunks::new(out, len);
        w.string(1, &self.version_info);
        for r in &self.resources {
            w.any(2, r);
        }
        w.string(4, &self.type_url);
        w.string(5, &self.nonce);
    }
}

impl WireMessage for DeltaResponse {
    fn encode_frames(&self, out: &mut Vec<Bytes>) {
        // DeltaDiscoveryResponse: system_version_info 1, resources 2,
        // type_url 4, nonce 5, removed_resources 6.
        let len = string_len(1, &self.system_version_info)
            + self
                .resources
                .iter()
                .map(|r| delimited_len(2, delta_resource_len(r)))
                .sum::<usize>()
            + string_len(4, &self.type_url)
            + string_len(5, &self.nonce)
            + self
                .removed_resources
                .iter()
                .map(|n| delimited_len(6, n.len()))
                .sum::<usize>();
        let mut w = Chunks::new(out, len);
        w.string(1, &self.system_version_info);
        for r in &self.resources {
            w.key(2, delta_resource_len(r));
            w.string(1, r.version().as_str());
            w.any(2, r);
            w.string(3, r.name());
        }
        w.string(4, &self.type_url);
        w.string(5, &self.nonce);
        // Repeated strings are written even when empty.
        for name in &self.removed_resources {
            w.key(6, name.len());
            w.head.put_slice(name.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::ResourceVersion;
    use prost::Message;
    use proto::xds::pb::google::protobuf::Any;

    fn resource(name: &str, body_len: usize) -> Arc<Resource> {
        let value: Vec<u8> = (0..body_len).map(|i| (i % 251) as u8).collect();
        Arc::new(Resource::new(
            name,
            ResourceVersion::new("v1"),
            Any {
                type_url: proto::resources::CLUSTER_LOAD_ASSIGNMENT_TYPE_URL.to_owned(),
                value,
            },
        ))
    }

    fn grpc_frame(message: &impl Message) -> Vec<u8> {
        let body = message.encode_to_vec();
        let mut framed = vec![0];
        framed.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
        framed.extend_from_slice(&body);
        framed
    }

    fn concat(chunks: &[Bytes]) -> Vec<u8> {
        chunks.iter().flat_map(|c| c.iter().copied()).collect()
    }

    fn sotw(resources: Vec<Arc<Resource>>) -> SotwResponse {
        SotwResponse {
            version_info: "abc".into(),
            resources,
            type_url: proto::resources::CLUSTER_LOAD_ASSIGNMENT_TYPE_URL.into(),
            nonce: "7".into(),
        }
    }

    #[test]
    fn sotw_bytes_are_what_prost_writes() {
        for bodies in [
            vec![],
            vec![0],
            vec![10],
            vec![200_000],
            vec![5, 5000, 0, 300],
        ] {
            let resources = bodies
                .iter()
                .enumerate()
                .map(|(i, &n)| resource(&format!("svc{i}.ns:grpc"), n))
                .collect();
            let response = sotw(resources);
            let mut chunks = Vec::new();
            response.encode_frames(&mut chunks);
            assert_eq!(
                concat(&chunks),
                grpc_frame(&response.to_proto()),
                "{bodies:?}"
            );
        }
    }

    #[test]
    fn empty_fields_are_omitted_like_prost() {
        let response = SotwResponse {
            version_info: String::new(),
            resources: vec![],
            type_url: String::new(),
            nonce: String::new(),
        };
        let mut chunks = Vec::new();
        response.encode_frames(&mut chunks);
        assert_eq!(concat(&chunks), vec![0, 0, 0, 0, 0]);
    }

    #[test]
    fn delta_bytes_are_what_prost_writes() {
        for (bodies, removed) in [
            (vec![], vec![]),
            (vec![3000], vec![]),
            (vec![], vec!["gone.ns:grpc".to_owned(), String::new()]),
            (vec![0, 1, 70_000], vec!["x.y:1".to_owned()]),
        ] {
            let response = DeltaResponse {
                system_version_info: "sys".into(),
                resources: bodies
                    .iter()
                    .enumerate()
                    .map(|(i, &n)| resource(&format!("svc{i}.ns:grpc"), n))
                    .collect(),
                type_url: proto::resources::CLUSTER_LOAD_ASSIGNMENT_TYPE_URL.into(),
                removed_resources: removed.clone(),
                nonce: "12".into(),
            };
            let mut chunks = Vec::new();
            response.encode_frames(&mut chunks);
            assert_eq!(
                concat(&chunks),
                grpc_frame(&response.to_proto()),
                "{bodies:?} {removed:?}"
            );
        }
    }

    #[test]
    fn large_bodies_are_shared_not_copied() {
        let big = resource("big.ns:grpc", 150_000);
        let response = sotw(vec![Arc::clone(&big), resource("small.ns:grpc", 10)]);
        let mut chunks = Vec::new();
        response.encode_frames(&mut chunks);
        // The chunk carrying the body points into the resource's own buffer.
        let shared = chunks
            .iter()
            .find(|c| c.len() == 150_000)
            .expect("the body is its own chunk");
        assert_eq!(shared.as_ptr(), big.value().as_ptr());
        // Header, body, then the rest in one buffer.
        assert_eq!(chunks.len(), 3);
    }
}

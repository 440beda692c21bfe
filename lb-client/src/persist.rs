//! The last good endpoints on disk, for cold starts while the control plane
//! is away.
//!
//! ```text
//!  eds-lb-snapshot v1 sha256=<hex of the rest>\n
//!  <DiscoveryResponse protobuf: one packed ClusterLoadAssignment per service>
//! ```
//!
//! The file is never trusted: a wrong header or checksum, or a resource that
//! fails the same validation as wire input (`proto::resources::parse_cla`),
//! discards the whole file with a warning, and the client waits for the
//! control plane or DNS instead. Writes go to a temporary file renamed into
//! place, so a crash mid-write leaves the previous snapshot.
//!
//! Not a cache of anything else: policies are not kept, so a cold start
//! balances with the local or default policy until the control plane's
//! Cluster arrives.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use prost::Message;
use proto::resources::{CLUSTER_LOAD_ASSIGNMENT_TYPE_URL, ParsedCla, pack, parse_cla, unpack};
use proto::xds::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use proto::xds::pb::envoy::service::discovery::v3::DiscoveryResponse;
use sha2::{Digest, Sha256};

const MAGIC: &str = "eds-lb-snapshot v1 sha256=";

/// Why a snapshot file was not used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotFileError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a snapshot, or is damaged.
    #[error("{path}: {problem}; ignoring it")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

/// Writes every service's last accepted assignment.
pub(crate) fn save(
    path: &Path,
    assignments: &BTreeMap<String, ClusterLoadAssignment>,
) -> Result<(), SnapshotFileError> {
    let io = |source| SnapshotFileError::Io {
        path: path.to_owned(),
        source,
    };
    let body = DiscoveryResponse {
        type_url: CLUSTER_LOAD_ASSIGNMENT_TYPE_URL.to_owned(),
        resources: assignments.values().map(pack).collect(),
        ..Default::default()
    }
    .encode_to_vec();
    let digest = hex(&Sha256::digest(&body));
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(format!("{MAGIC}{digest}\n").as_bytes())
        .and_then(|()| f.write_all(&body))
        .and_then(|()| f.sync_all())
        .map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Reads and validates a snapshot file. A missing file is not an error.
pub(crate) fn load(path: &Path) -> Result<Vec<ParsedCla>, SnapshotFileError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(SnapshotFileError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    let corrupt = |problem: String| SnapshotFileError::Corrupt {
        path: path.to_owned(),
        problem,
    };
    let newline = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| corrupt("no header line".into()))?;
    let header =
        std::str::from_utf8(&bytes[..newline]).map_err(|_| corrupt("header is not text".into()))?;
    let digest = header
        .strip_prefix(MAGIC)
        .ok_or_else(|| corrupt(format!("header {header:?} is not {MAGIC}<sha256>")))?;
    let body = &bytes[newline + 1..];
    if hex(&Sha256::digest(body)) != digest {
        return Err(corrupt("checksum mismatch (truncated or edited)".into()));
    }
    let response = DiscoveryResponse::decode(body)
        .map_err(|e| corrupt(format!("not a DiscoveryResponse: {e}")))?;
    response
        .resources
        .iter()
        .map(|any| {
            let cla: ClusterLoadAssignment =
                unpack(any).map_err(|e| corrupt(format!("resource: {e}")))?;
            parse_cla(&cla).map_err(|e| corrupt(e.to_string()))
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_core::{Endpoint, EndpointSet};
    use proto::resources::{ClaOptions, cluster_load_assignment};

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "lb-client-persist-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn assignments() -> BTreeMap<String, ClusterLoadAssignment> {
        let set = EndpointSet::merge(vec![
            Endpoint::new("10.0.0.1:8080".parse().unwrap()).with_zone("a"),
            Endpoint::new("10.0.0.2:8080".parse().unwrap()).with_zone("b"),
        ]);
        BTreeMap::from([(
            "echo.demo:8080".to_owned(),
            cluster_load_assignment("echo.demo:8080", &set, &ClaOptions::default()),
        )])
    }

    #[test]
    fn round_trips() {
        let path = dir().join("round_trip.snapshot");
        save(&path, &assignments()).unwrap();
        let loaded = load(&path).unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].name, "echo.demo:8080");
        assert_eq!(loaded[0].endpoints.len(), 2);
    }

    #[test]
    fn a_missing_file_is_empty_not_an_error() {
        assert!(load(&dir().join("absent.snapshot")).unwrap().is_empty());
    }

    #[test]
    fn damage_is_detected_and_named() {
        let path = dir().join("damaged.snapshot");
        save(&path, &assignments()).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("checksum mismatch"), "{e}");

        std::fs::write(&path, b"hello world").unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("no header line"), "{e}");

        std::fs::write(&path, b"something else\n").unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("is not eds-lb-snapshot"), "{e}");
    }

    #[test]
    fn a_valid_checksum_over_invalid_endpoints_is_still_refused() {
        let path = dir().join("invalid.snapshot");
        let mut a = assignments();
        let cla = a.get_mut("echo.demo:8080").unwrap();
        let dup = cla.endpoints[0].lb_endpoints[0].clone();
        cla.endpoints[0].lb_endpoints.push(dup);
        save(&path, &a).unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("already appears"), "{e}");
    }
}

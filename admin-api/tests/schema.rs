//! The admin API's shape, pinned: one of each view with every field set,
//! written as JSON and compared with `tests/golden/<view>.json`. A change
//! to the contract shows up here as a golden diff to review (and, if a
//! field was removed or changed, as a reason for a new [`API_VERSION`]).
//! `UPDATE_GOLDEN=1` rewrites the files.
//!
//! Each golden file is also read back and must give the same value, so
//! what eds-server writes is exactly what edsctl reads.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use eds_admin_api::*;
use serde::Serialize;
use serde::de::DeserializeOwned;

fn at(secs: u64) -> Time {
    Time(UNIX_EPOCH + Duration::from_secs(secs))
}

#[track_caller]
fn pinned<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(name: &str, view: &T) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    let json = serde_json::to_string_pretty(view).expect("serialises") + "\n";
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::write(&path, &json).expect("write golden");
    }
    let golden = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    assert_eq!(
        json, golden,
        "{name} changed shape; review, then UPDATE_GOLDEN=1"
    );
    let read: T = serde_json::from_str(&golden).expect("the golden file reads back");
    assert_eq!(&read, view, "{name} does not read back as written");
}

#[test]
fn snapshot_view() {
    pinned(
        "snapshot.json",
        &SnapshotView {
            api_version: API_VERSION.into(),
            ready: true,
            version: Some("v7f3a".into()),
            services: vec![ServiceView {
                key: "echo.demo:8080".into(),
                version: "e1c2".into(),
                zones: BTreeMap::from([(
                    "zone-a".into(),
                    BTreeMap::from([("HEALTHY".into(), 2), ("DRAINING".into(), 1)]),
                )]),
                subscribers: 3,
            }],
        },
    );
}

#[test]
fn endpoints_view() {
    pinned(
        "endpoints.json",
        &EndpointsView {
            api_version: API_VERSION.into(),
            key: "echo.demo.svc.cluster.local:8080".into(),
            canonical: "echo.demo:8080".into(),
            version: "e1c2".into(),
            endpoints: vec![EndpointView {
                address: "10.0.1.5:50051".into(),
                pod: Some("echo-0".into()),
                node: Some("node-1".into()),
                zone: Some("zone-a".into()),
                health: "DRAINING".into(),
                weight: 2,
                ready_since: Some(at(1_714_564_800).rfc3339()),
                drain_deadline: Some(format_time(
                    UNIX_EPOCH + Duration::from_millis(1_714_564_830_250),
                )),
                labels: BTreeMap::from([("shard".into(), "s0".into())]),
            }],
        },
    );
}

#[test]
fn clients_view() {
    let counters = Counters {
        requests: 4,
        responses: 3,
        acks: 2,
        nacks: 1,
        stale: 0,
    };
    pinned(
        "clients.json",
        &ClientsView {
            api_version: API_VERSION.into(),
            at: at(1_714_564_900),
            clients: vec![ClientEntry {
                id: 7,
                peer: Some("10.0.2.9:41000".into()),
                connected_at: at(1_714_564_800),
                last_activity: at(1_714_564_890),
                stats: SubscriberStats {
                    client: ClientInfo {
                        node_id: "checkout-5d9f".into(),
                        cluster: "checkout".into(),
                        zone: Some("zone-b".into()),
                        unhealthy_endpoints: true,
                    },
                    protocol: Protocol::Sotw,
                    stream: StreamKind::Single("eds".into()),
                    counters,
                    errors: 0,
                    types: vec![TypeStats {
                        type_url:
                            "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
                                .into(),
                        wildcard: false,
                        subscribed: vec!["echo.demo:8080".into()],
                        sent_version: Some("v2".into()),
                        sent_resources: BTreeMap::from([("echo.demo:8080".into(), "e2".into())]),
                        pending_nonce: None,
                        acked_version: Some("v1".into()),
                        acked_resources: BTreeMap::from([("echo.demo:8080".into(), "e1".into())]),
                        nacked_resources: BTreeMap::from([("echo.demo:8080".into(), "e2".into())]),
                        last_ack_at: Some(at(1_714_564_850)),
                        last_nack: Some(NackRecord {
                            rejected_version: "v2".into(),
                            client_version: "v1".into(),
                            nonce: "3".into(),
                            code: 3,
                            message: "endpoint weight 0".into(),
                            resources: vec!["echo.demo:8080".into()],
                            stale: false,
                            at: at(1_714_564_860),
                        }),
                        counters,
                    }],
                },
                backlog: Backlog {
                    queued: 1,
                    superseded: 4,
                },
            }],
        },
    );
}

#[test]
fn another_api_version_is_refused_and_none_is_accepted() {
    assert_eq!(check_api_version(API_VERSION), Ok(()));
    assert_eq!(check_api_version(""), Ok(()), "servers before the field");
    let e = check_api_version("eds.rs/admin/v2").unwrap_err();
    assert!(e.to_string().contains("eds.rs/admin/v2"), "{e}");
}

#[test]
fn times_read_in_either_form_and_write_as_rfc3339() {
    let text: Time = serde_json::from_str("\"2024-05-01T14:00:00+02:00\"").unwrap();
    let legacy: Time =
        serde_json::from_str(r#"{"secs_since_epoch":1714564800,"nanos_since_epoch":0}"#).unwrap();
    assert_eq!(text, legacy);
    assert_eq!(
        serde_json::to_string(&text).unwrap(),
        "\"2024-05-01T12:00:00Z\""
    );
    assert!(serde_json::from_str::<Time>("\"yesterday\"").is_err());
    assert!(
        parse_time("2024-05-01T12:00:00").is_err(),
        "no offset names no instant"
    );
}

//! Golden files for every view, from fixed admin-JSON fixtures
//! (`tests/golden/fixtures/`): table, wide, JSON and YAML, byte for byte.
//! No server and no cluster: the fixtures are what eds-server's admin API
//! writes, and the goldens are what edsctl prints for them.
//! `UPDATE_GOLDEN=1 cargo test -p edsctl --test render_golden` rewrites them.

mod common;

use std::time::{Duration, UNIX_EPOCH};

use edsctl::cli::OutputFormat;
use edsctl::k8s::{KubeEndpoint, KubeState};
use edsctl::model::{ClientsView, EndpointsView, SnapshotView};
use edsctl::simulate::{SimConfig, simulate};
use edsctl::{diff, render};
use lb_core::Policy;

fn fixture<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let path = common::golden_path(&format!("fixtures/{name}"));
    let text = std::fs::read_to_string(&path).expect("fixture");
    serde_json::from_str(&text).expect("fixture parses")
}

fn all_formats(
    name: &str,
    table: impl Fn(bool) -> String,
    structured: impl Fn(OutputFormat) -> String,
) {
    common::check(&format!("{name}.table.txt"), &table(false));
    common::check(&format!("{name}.wide.txt"), &table(true));
    common::check(&format!("{name}.json"), &structured(OutputFormat::Json));
    common::check(&format!("{name}.yaml"), &structured(OutputFormat::Yaml));
}

#[test]
fn services() {
    let view: SnapshotView = fixture("snapshot.json");
    all_formats(
        "services",
        |wide| render::services(&view, wide, false),
        |f| render::structured(&view, f).expect("serialises"),
    );
}

#[test]
fn endpoints() {
    let view: EndpointsView = fixture("endpoints.json");
    all_formats(
        "endpoints",
        |wide| render::endpoints(&view, wide, false),
        |f| render::structured(&view, f).expect("serialises"),
    );
}

#[test]
fn clients() {
    let view: ClientsView = fixture("clients.json");
    all_formats(
        "clients",
        |wide| render::clients(&view, wide, false),
        |f| render::structured(&view, f).expect("serialises"),
    );
}

#[test]
fn colour_only_when_asked() {
    let view: EndpointsView = fixture("endpoints.json");
    let plain = render::endpoints(&view, false, false);
    assert!(!plain.contains('\x1b'));
    let coloured = render::endpoints(&view, false, true);
    assert!(coloured.contains("\x1b[33mDRAINING\x1b[0m"), "{coloured}");
    common::check("endpoints.color.txt", &coloured);
}

#[test]
fn diff_with_a_nacking_client_and_a_missing_endpoint() {
    let server: EndpointsView = fixture("endpoints.json");
    let clients: ClientsView = fixture("clients.json");
    let kube = |addr: &str, state, pod: &str| KubeEndpoint {
        address: addr.parse().expect("address"),
        state,
        pod: Some(pod.into()),
        slice: "echo-abcde".into(),
    };
    let kube = [
        kube("10.244.0.5:9090", KubeState::Ready, "echo-0"),
        kube("10.244.0.6:9090", KubeState::Draining, "echo-1"),
        kube("10.244.0.7:9090", KubeState::Ready, "echo-2"),
        kube("10.244.0.9:9090", KubeState::Ready, "echo-4"),
        kube("10.244.0.10:9090", KubeState::NotServing, "echo-5"),
    ];
    let report = diff::compare(&kube, &server, &clients, &|n| n.starts_with("echo.demo:"));
    assert!(!report.agree);
    all_formats(
        "diff",
        |wide| render::diff(&report, wide, false),
        |f| render::structured(&report, f).expect("serialises"),
    );
}

#[test]
fn simulate_from_a_zone() {
    let view: EndpointsView = fixture("endpoints.json");
    let set = view.to_set().expect("valid endpoints");
    let report = simulate(
        &view.canonical,
        &set,
        &SimConfig {
            policies: vec![Policy::P2c, Policy::RoundRobin, Policy::RingHash],
            from_zone: Some("zone-a".into()),
            key: None,
            requests: 1000,
            concurrency: 8,
            seed: 1,
            now: UNIX_EPOCH + Duration::from_secs(1_714_565_100),
        },
    )
    .expect("simulates");
    all_formats(
        "simulate",
        |wide| render::simulate(&report, wide, false),
        |f| render::structured(&report, f).expect("serialises"),
    );
}

#[test]
fn empty_views_say_so() {
    let view = SnapshotView {
        api_version: edsctl::model::API_VERSION.into(),
        ready: true,
        version: None,
        services: vec![],
    };
    assert_eq!(render::services(&view, false, false), "No service keys.\n");
}

#[test]
fn masking_keeps_what_matters() {
    let masked = common::mask_volatile(
        "echo.x:8080  1a2b3c4d5e6f7081  2024-05-01T12:00:00.25Z  12s ago  3m4s ago  abcdef",
    );
    assert_eq!(
        masked,
        "echo.x:8080  <version>  <time>  <age> ago  <age> ago  abcdef"
    );
    assert_eq!(
        common::realign("A  B\nlonger-value  x\n"),
        "A              B\nlonger-value   x\n"
    );
}

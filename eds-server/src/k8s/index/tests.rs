//! Index tests: hand-built objects in, topology out. No cluster, no clock.

use super::*;
use crate::k8s::fixtures::*;
use proptest::prelude::*;

fn index() -> Index {
    Index::new(IndexConfig::default())
}

fn key(s: &str) -> ServiceKey {
    s.parse().unwrap()
}

/// `"<address> <HEALTH>"` for every endpoint of `k`, in address order.
#[track_caller]
fn health(t: &Topology, k: &str) -> Vec<String> {
    t.endpoints(&key(k))
        .unwrap_or_else(|| panic!("no key {k}"))
        .endpoints()
        .iter()
        .map(|e| format!("{} {}", e.address, e.health))
        .collect()
}

#[track_caller]
fn endpoint(t: &Topology, k: &str, addr: &str) -> Endpoint {
    let addr: SocketAddr = addr.parse().unwrap();
    t.endpoints(&key(k))
        .and_then(|s| s.get(&addr))
        .unwrap_or_else(|| panic!("no {addr} in {k}"))
        .clone()
}

fn keys(t: &Topology) -> Vec<String> {
    t.snapshot.services().map(|(k, _)| k.to_string()).collect()
}

fn echo() -> Svc {
    svc("echo", "demo").port("grpc", 8080, target_name("grpc"))
}

#[test]
fn merges_every_slice_of_a_service() {
    let mut ix = index();
    ix.apply_service(&echo());
    ix.apply_slice(
        &slice("echo-abc", "demo", "echo")
            .ipv4()
            .port("grpc", 9090)
            .ep(
                "10.244.0.1",
                [ready(), zone("a"), pod("echo-0"), node("n1")],
            )
            .ep("10.244.0.2", [ready(), zone("b")]),
        t(100),
    );
    ix.apply_slice(
        &slice("echo-def", "demo", "echo")
            .port("grpc", 9090)
            .ep("10.244.0.3", [ready(), zone("a")]),
        t(100),
    );
    let topo = ix.topology();
    assert_eq!(keys(&topo), ["echo.demo:8080"]);
    assert_eq!(
        health(&topo, "echo.demo:8080"),
        [
            "10.244.0.1:9090 HEALTHY",
            "10.244.0.2:9090 HEALTHY",
            "10.244.0.3:9090 HEALTHY"
        ]
    );
    let e = endpoint(&topo, "echo.demo:grpc", "10.244.0.1:9090");
    assert_eq!(e.zone.as_deref(), Some("a"));
    assert_eq!(e.pod.as_deref(), Some("echo-0"));
    assert_eq!(e.node.as_deref(), Some("n1"));
    assert_eq!(e.ready_since, Some(t(100)), "first seen ready");
    assert_eq!(e.drain_deadline, None);
    assert!(e.labels.is_empty());
    let meta = &topo.services[&("demo".to_owned(), "echo".to_owned())];
    assert_eq!(
        meta.ports,
        [ServicePort {
            name: Some("grpc".into()),
            port: 8080
        }]
    );
}

#[test]
fn duplicate_addresses_keep_the_best_state() {
    // kubernetes/kubernetes#114144: one address in two slices.
    let mut ix = index();
    ix.apply_service(&echo());
    ix.apply_slice(
        &slice("echo-a", "demo", "echo")
            .port("grpc", 9090)
            .ep("10.244.0.1", [draining(), zone("a")])
            .ep("10.244.0.2", [ready()])
            .ep("10.244.0.2", [ready()]),
        t(1),
    );
    ix.apply_slice(
        &slice("echo-b", "demo", "echo")
            .port("grpc", 9090)
            .ep("10.244.0.1", [ready(), zone("a")]),
        t(1),
    );
    let (topo, stats) = ix.topology_with_stats();
    assert_eq!(
        health(&topo, "echo.demo:8080"),
        ["10.244.0.1:9090 HEALTHY", "10.244.0.2:9090 HEALTHY"]
    );
    assert_eq!(stats.duplicates, 2);
    let e = endpoint(&topo, "echo.demo:8080", "10.244.0.1:9090");
    assert_eq!(e.drain_deadline, None, "the healthy copy wins, whole");
}

#[test]
fn ipv6_and_dual_stack_slices() {
    let mut ix = index();
    ix.apply_service(&echo());
    ix.apply_slice(
        &slice("echo-v6", "demo", "echo")
            .ipv6()
            .port("grpc", 9090)
            .ep("fd00:10:244::1", [ready()]),
        t(1),
    );
    ix.apply_slice(
        &slice("echo-v4", "demo", "echo")
            .port("grpc", 9090)
            .ep("10.244.0.1", [ready()]),
        t(1),
    );
    assert_eq!(
        health(&ix.topology(), "echo.demo:8080"),
        ["10.244.0.1:9090 HEALTHY", "[fd00:10:244::1]:9090 HEALTHY"]
    );
}

#[test]
fn fqdn_and_unknown_address_types_are_skipped_and_counted() {
    let mut ix = index();
    ix.apply_service(&echo());
    let v4 = slice("echo-a", "demo", "echo")
        .port("grpc", 9090)
        .ep("10.244.0.1", [ready()]);
    assert!(ix.apply_slice(&v4, t(1)));
    let fqdn = slice("echo-f", "demo", "echo")
        .address_type("FQDN")
        .port("grpc", 9090)
        .ep("backend.example.com", [ready()]);
    assert!(!ix.apply_slice(&fqdn, t(1)));
    let odd = slice("echo-x", "demo", "echo")
        .address_type("AppleTalk")
        .port("grpc", 9090)
        .ep("1.2", [ready()]);
    assert!(!ix.apply_slice(&odd, t(1)));
    assert_eq!(ix.stats().fqdn_slices, 1);
    assert_eq!(ix.stats().unknown_address_type_slices, 1);
    assert_eq!(
        health(&ix.topology(), "echo.demo:8080"),
        ["10.244.0.1:9090 HEALTHY"]
    );
    // A stored slice re-applied as something we skip is dropped, not kept stale.
    assert!(ix.apply_slice(&v4.clone().address_type("FQDN"), t(2)));
    assert!(health(&ix.topology(), "echo.demo:8080").is_empty());
    assert_eq!(ix.stats().fqdn_slices, 2);
}

#[test]
fn named_target_port_is_resolved_per_slice() {
    // Two pod templates (mid-rollout) name port "grpc" differently; the
    // controller puts them in different slices.
    let mut ix = index();
    ix.apply_service(&echo());
    ix.apply_slice(
        &slice("echo-old", "demo", "echo")
            .port("grpc", 9090)
            .ep("10.244.0.1", [ready()]),
        t(1),
    );
    ix.apply_slice(
        &slice("echo-new", "demo", "echo")
            .port("grpc", 9091)
            .ep("10.244.0.2", [ready()]),
        t(1),
    );
    assert_eq!(
        health(&ix.topology(), "echo.demo:8080"),
        ["10.244.0.1:9090 HEALTHY", "10.244.0.2:9091 HEALTHY"]
    );
}

#[test]
fn numeric_and_defaulted_target_ports() {
    let mut ix = index();
    ix.apply_service(
        &svc("web", "demo")
            .port("http", 80, target(8080))
            .port("admin", 9000, None),
    );
    ix.apply_slice(
        &slice("web-a", "demo", "web")
            .port("http", 8080)
            .port("admin", 9000)
            .ep("10.244.0.1", [ready()]),
        t(1),
    );
    // A slice port without a number (allowed for non-controller slices)
    // falls back to the Service's numeric target port.
    ix.apply_slice(
        &slice("web-b", "demo", "web")
            .port("http", 1)
            .edit(|s| s.ports.as_mut().unwrap()[0].port = None)
            .ep("10.244.0.2", [ready()]),
        t(1),
    );
    let (topo, stats) = ix.topology_with_stats();
    assert_eq!(keys(&topo), ["web.demo:80", "web.demo:9000"]);
    assert_eq!(
        health(&topo, "web.demo:80"),
        ["10.244.0.1:8080 HEALTHY", "10.244.0.2:8080 HEALTHY"]
    );
    assert_eq!(health(&topo, "web.demo:admin"), ["10.244.0.1:9000 HEALTHY"]);
    assert_eq!(stats.unmatched_slice_ports, 1, "web-b has no admin port");
}

#[test]
fn unnamed_single_port() {
    // The controller names the slice port "" for an unnamed Service port.
    let mut ix = index();
    ix.apply_service(&svc("web", "demo").port("", 80, target(8080)));
    ix.apply_slice(
        &slice("web-a", "demo", "web")
            .port("", 8080)
            .ep("10.244.0.1", [ready()]),
        t(1),
    );
    let topo = ix.topology();
    assert_eq!(health(&topo, "web.demo:80"), ["10.244.0.1:8080 HEALTHY"]);
    assert_eq!(
        topo.services[&("demo".into(), "web".into())].ports[0].name,
        None
    );
}

#[test]
fn condition_mapping() {
    let cases = [
        ("ready", vec![ready()], Some(Health::Healthy)),
        ("all nil", vec![unknown()], Some(Health::Healthy)),
        ("no conditions", vec![], Some(Health::Healthy)),
        (
            "serving and terminating",
            vec![draining()],
            Some(Health::Draining),
        ),
        ("not ready", vec![not_ready()], None),
        ("terminating, not serving", vec![terminated()], None),
        // publishNotReadyAddresses: the controller reports ready=true even
        // while terminating; still no new requests.
        (
            "ready and terminating",
            vec![Ep::Conditions(discovery::EndpointConditions {
                ready: Some(true),
                serving: Some(true),
                terminating: Some(true),
            })],
            Some(Health::Draining),
        ),
        // Before 1.20 `serving` is nil; `ready` stands in for it.
        (
            "terminating, serving unknown, not ready",
            vec![Ep::Conditions(discovery::EndpointConditions {
                ready: Some(false),
                serving: None,
                terminating: Some(true),
            })],
            None,
        ),
    ];
    // Not-serving endpoints stay in the index as UNHEALTHY (zone capacity);
    // leaving them out of what stock clients are sent is the source's job.
    let mut ix = index();
    ix.apply_service(&echo());
    for (i, (name, conds, expected)) in cases.iter().enumerate() {
        ix.apply_slice(
            &slice("echo-a", "demo", "echo")
                .port("grpc", 9090)
                .ep("10.244.0.1", conds.clone()),
            t(i as u64),
        );
        let topo = ix.topology();
        let got = topo
            .endpoints(&key("echo.demo:8080"))
            .unwrap()
            .endpoints()
            .first()
            .map(|e| e.health);
        assert_eq!(got, Some(expected.unwrap_or(Health::Unhealthy)), "{name}");
    }
}

#[test]
fn draining_carries_a_drain_deadline() {
    let mut ix = index();
    ix.apply_service(&echo());
    let at = |cond: Ep| {
        slice("echo-a", "demo", "echo")
            .port("grpc", 9090)
            .ep("10.244.0.1", [cond, pod("echo-0")])
    };
    ix.apply_slice(&at(ready()), t(100));
    assert!(ix.apply_slice(&at(draining()), t(200)));
    // Re-seen later: first-seen times do not move.
    assert!(!ix.apply_slice(&at(draining()), t(210)));
    let e = endpoint(&ix.topology(), "echo.demo:8080", "10.244.0.1:9090");
    assert_eq!(e.health, Health::Draining);
    assert_eq!(e.ready_since, Some(t(100)));
    assert_eq!(
        e.drain_deadline,
        Some(t(230)),
        "first seen terminating + 30 s default"
    );

    // With the Pod known, its deletionTimestamp is the deadline.
    ix.apply_pod(&k8s_pod("echo-0", "demo").ready_at(50).deleted(195, 45));
    let e = endpoint(&ix.topology(), "echo.demo:8080", "10.244.0.1:9090");
    assert_eq!(e.ready_since, Some(t(50)));
    assert_eq!(e.drain_deadline, Some(t(240)));

    // The configured default applies when the Pod is unknown.
    let mut ix = Index::new(IndexConfig {
        default_drain_grace: Duration::from_secs(5),
        ..IndexConfig::default()
    });
    ix.apply_service(&echo());
    ix.apply_slice(&at(draining()), t(300));
    let e = endpoint(&ix.topology(), "echo.demo:8080", "10.244.0.1:9090");
    assert_eq!(e.drain_deadline, Some(t(305)));
    assert_eq!(e.ready_since, None, "never seen ready");
}

#[test]
fn ready_since_is_the_earliest_time_seen_ready() {
    let mut ix = index();
    ix.apply_service(&echo());
    let a = |cond: Ep| {
        slice("echo-a", "demo", "echo")
            .port("grpc", 9090)
            .ep("10.244.0.1", [cond, pod("echo-0")])
    };
    ix.apply_slice(&a(not_ready()), t(10));
    ix.apply_slice(&a(ready()), t(20));
    ix.apply_slice(&a(ready()), t(30));
    let ready_since =
        |ix: &Index| endpoint(&ix.topology(), "echo.demo:8080", "10.244.0.1:9090").ready_since;
    assert_eq!(ready_since(&ix), Some(t(20)));

    // The controller moves an endpoint between slices (add, then remove):
    // it stays the same endpoint.
    ix.apply_slice(
        &slice("echo-b", "demo", "echo")
            .port("grpc", 9090)
            .ep("10.244.0.1", [ready(), pod("echo-0")]),
        t(40),
    );
    ix.delete_slice(&a(ready()), t(41));
    assert_eq!(ready_since(&ix), Some(t(20)));

    // Not ready, then ready again: a fresh start.
    let b = |cond: Ep| {
        slice("echo-b", "demo", "echo")
            .port("grpc", 9090)
            .ep("10.244.0.1", [cond, pod("echo-0")])
    };
    ix.apply_slice(&b(not_ready()), t(50));
    ix.apply_slice(&b(ready()), t(60));
    assert_eq!(ready_since(&ix), Some(t(60)));

    // The same IP for another pod is another endpoint.
    ix.apply_slice(
        &slice("echo-b", "demo", "echo")
            .port("grpc", 9090)
            .ep("10.244.0.1", [ready(), pod("echo-1")]),
        t(70),
    );
    assert_eq!(ready_since(&ix), Some(t(70)));

    // A known Pod's Ready transition time wins over first-seen.
    ix.apply_pod(&k8s_pod("echo-1", "demo").ready_at(65));
    assert_eq!(ready_since(&ix), Some(t(65)));
    // The Pod turning not ready before its slice does changes nothing: the
    // endpoint keeps the Pod's last ready time (no metadata-only push).
    assert!(!ix.apply_pod(&k8s_pod("echo-1", "demo").not_ready_at(66)));
    assert_eq!(ready_since(&ix), Some(t(65)));
    // Ready again: the new transition time.
    ix.apply_pod(&k8s_pod("echo-1", "demo").ready_at(80));
    assert_eq!(ready_since(&ix), Some(t(80)));
    // A Pod never seen ready leaves the first-seen time.
    ix.apply_pod(&k8s_pod("echo-2", "demo").not_ready_at(66));
    ix.apply_slice(
        &slice("echo-c", "demo", "echo")
            .port("grpc", 9090)
            .ep("10.244.0.3", [ready(), pod("echo-2")]),
        t(90),
    );
    let topo = ix.topology();
    assert_eq!(
        endpoint(&topo, "echo.demo:8080", "10.244.0.3:9090").ready_since,
        Some(t(90))
    );
}

#[test]
fn deleting_a_service_removes_its_keys() {
    let mut ix = index();
    ix.apply_service(&echo());
    ix.apply_service(&svc("other", "demo").port("http", 80, None));
    let s = slice("echo-a", "demo", "echo")
        .port("grpc", 9090)
        .ep("10.244.0.1", [ready()]);
    ix.apply_slice(&s, t(1));
    assert_eq!(keys(&ix.topology()), ["echo.demo:8080", "other.demo:80"]);
    assert!(ix.delete_service(&echo()));
    assert!(!ix.delete_service(&echo()), "already gone");
    let topo = ix.topology();
    assert_eq!(keys(&topo), ["other.demo:80"]);
    assert!(topo.resolve(&key("echo.demo:grpc")).is_none());
    // Recreated before the garbage collector removed the slices: they count.
    ix.apply_service(&echo());
    assert_eq!(
        health(&ix.topology(), "echo.demo:8080"),
        ["10.244.0.1:9090 HEALTHY"]
    );
}

#[test]
fn deleting_a_slice_removes_its_endpoints() {
    let mut ix = index();
    ix.apply_service(&echo());
    let a = slice("echo-a", "demo", "echo")
        .port("grpc", 9090)
        .ep("10.244.0.1", [ready()]);
    let b = slice("echo-b", "demo", "echo")
        .port("grpc", 9090)
        .ep("10.244.0.2", [ready()]);
    ix.apply_slice(&a, t(1));
    ix.apply_slice(&b, t(1));
    assert!(ix.delete_slice(&a, t(2)));
    assert!(!ix.delete_slice(&a, t(2)));
    assert_eq!(
        health(&ix.topology(), "echo.demo:8080"),
        ["10.244.0.2:9090 HEALTHY"]
    );
    assert!(ix.delete_slice(&b, t(3)));
    let topo = ix.topology();
    assert!(
        health(&topo, "echo.demo:8080").is_empty(),
        "the key stays, empty"
    );
    assert!(ix.seen.is_empty(), "first-seen times are forgotten");
    assert!(ix.slices.is_empty() && ix.slice_owner.is_empty());
}

#[test]
fn reset_replaces_everything() {
    let mut ix = index();
    ix.apply_service(&echo());
    ix.apply_service(&svc("old", "demo").port("http", 80, None));
    ix.apply_slice(
        &slice("echo-a", "demo", "echo")
            .port("grpc", 9090)
            .ep("10.244.0.1", [ready()]),
        t(1),
    );
    ix.apply_pod(&k8s_pod("gone", "demo").ready_at(1));

    let services = vec![
        echo().build(),
        svc("new", "demo").port("http", 80, None).build(),
    ];
    assert!(ix.reset_services(services.clone()));
    assert!(!ix.reset_services(services), "same list, no change");
    let slices = vec![
        slice("echo-z", "demo", "echo")
            .port("grpc", 9090)
            .ep("10.244.0.9", [ready()])
            .build(),
    ];
    assert!(ix.reset_slices(slices.clone(), t(5)));
    assert!(!ix.reset_slices(slices, t(6)));
    assert!(ix.reset_pods(vec![]));

    let topo = ix.topology();
    assert_eq!(keys(&topo), ["echo.demo:8080", "new.demo:80"]);
    assert_eq!(health(&topo, "echo.demo:8080"), ["10.244.0.9:9090 HEALTHY"]);
    let e = endpoint(&topo, "echo.demo:8080", "10.244.0.9:9090");
    assert_eq!(e.ready_since, Some(t(5)));
    assert!(ix.pods.is_empty());
    assert_eq!(ix.seen.len(), 1, "only echo-z's endpoint is remembered");
}

#[test]
fn pod_labels_from_annotation_and_config() {
    let mut ix = Index::new(IndexConfig {
        pod_labels: vec!["team".into(), " ".into()],
        ..IndexConfig::default()
    });
    assert!(ix.wants_pods());
    ix.apply_service(&echo().annotation(POD_LABELS_ANNOTATION, "shard, version,"));
    ix.apply_service(&svc("plain", "demo").port("http", 80, None));
    assert!(ix.take_pod_resync(), "shard and version are new");
    assert!(!ix.take_pod_resync());
    assert_eq!(
        ix.wanted_labels().iter().collect::<Vec<_>>(),
        ["shard", "team", "version"]
    );
    ix.apply_pod(
        &k8s_pod("echo-0", "demo")
            .label("shard", "3")
            .label("version", "v2")
            .label("team", "core")
            .label("pod-template-hash", "abc"),
    );
    assert_eq!(
        ix.pods["demo"]["echo-0"].labels.keys().collect::<Vec<_>>(),
        ["shard", "team", "version"],
        "only wanted labels are stored"
    );
    for (name, service, port) in [("echo-a", "echo", "grpc"), ("plain-a", "plain", "http")] {
        ix.apply_slice(
            &slice(name, "demo", service)
                .port(port, 9090)
                .ep("10.244.0.1", [ready(), pod("echo-0")]),
            t(1),
        );
    }
    let topo = ix.topology();
    let labels = |k: &str| endpoint(&topo, k, "10.244.0.1:9090").labels;
    assert_eq!(
        labels("echo.demo:8080"),
        BTreeMap::from([
            ("shard".into(), "3".into()),
            ("team".into(), "core".into()),
            ("version".into(), "v2".into()),
        ])
    );
    assert_eq!(
        labels("plain.demo:80"),
        BTreeMap::from([("team".into(), "core".into())]),
        "server-wide labels only"
    );
    // Pod changes that touch nothing kept are not changes.
    assert!(
        !ix.apply_pod(
            &k8s_pod("echo-0", "demo")
                .label("shard", "3")
                .label("version", "v2")
                .label("team", "core")
                .label("pod-template-hash", "def"),
        )
    );
    assert!(ix.delete_pod(&k8s_pod("echo-0", "demo")));
    assert!(ix.pods.is_empty());
    assert!(
        labels_of(&ix.topology(), "echo.demo:8080").is_empty(),
        "pod gone, labels gone"
    );
}

fn labels_of(t: &Topology, k: &str) -> BTreeMap<String, String> {
    endpoint(t, k, "10.244.0.1:9090").labels
}

#[test]
fn no_pods_wanted_by_default() {
    let mut ix = index();
    assert!(!ix.wants_pods());
    ix.apply_service(&echo());
    assert!(!ix.wants_pods());
    assert!(!ix.take_pod_resync());
    ix.apply_service(&echo().annotation(POD_LABELS_ANNOTATION, "shard"));
    assert!(ix.wants_pods());
    assert!(ix.take_pod_resync());
    let watch = Index::new(IndexConfig {
        watch_pods: true,
        ..IndexConfig::default()
    });
    assert!(watch.wants_pods());
}

#[test]
fn service_without_ports() {
    // A headless Service may have no ports; it has no keys.
    let mut ix = index();
    ix.apply_service(&svc("headless", "demo"));
    ix.apply_slice(
        &slice("headless-a", "demo", "headless")
            .no_ports()
            .ep("10.244.0.1", [ready()]),
        t(1),
    );
    let topo = ix.topology();
    assert!(keys(&topo).is_empty());
    assert!(
        topo.services[&("demo".into(), "headless".into())]
            .ports
            .is_empty()
    );
}

#[test]
fn slice_without_service_label_is_ignored() {
    let mut ix = index();
    ix.apply_service(&echo());
    let orphan = slice("orphan", "demo", "echo")
        .port("grpc", 9090)
        .ep("10.244.0.1", [ready()])
        .edit(|s| s.metadata.labels = None);
    assert!(!ix.apply_slice(&orphan, t(1)));
    assert_eq!(ix.stats().slices_without_service, 1);
    assert!(health(&ix.topology(), "echo.demo:8080").is_empty());
}

#[test]
fn slice_whose_service_label_changes_moves() {
    let mut ix = index();
    ix.apply_service(&echo());
    ix.apply_service(&svc("api", "demo").port("grpc", 8080, target_name("grpc")));
    let s = |service: &str| {
        slice("shared", "demo", service)
            .port("grpc", 9090)
            .ep("10.244.0.1", [ready()])
    };
    ix.apply_slice(&s("echo"), t(1));
    assert!(ix.apply_slice(&s("api"), t(2)));
    let topo = ix.topology();
    assert!(health(&topo, "echo.demo:8080").is_empty());
    assert_eq!(health(&topo, "api.demo:8080"), ["10.244.0.1:9090 HEALTHY"]);
    assert!(ix.delete_slice(&s("whatever"), t(3)), "deleted by name");
    assert!(health(&ix.topology(), "api.demo:8080").is_empty());
}

#[test]
fn eds_annotations_are_copied_without_prefix() {
    let mut ix = index();
    ix.apply_service(
        &echo()
            .annotation("eds.rs/lb-policy", "ring-hash")
            .annotation("eds.rs/slow-start-window", "30s")
            .annotation("eds.rs/", "no key")
            .annotation("example.com/eds.rs/x", "other")
            .annotation("kubectl.kubernetes.io/last-applied-configuration", "{}"),
    );
    let topo = ix.topology();
    let meta = topo.service(&key("echo.demo:8080")).unwrap();
    assert_eq!(
        meta.annotations,
        BTreeMap::from([
            ("lb-policy".into(), "ring-hash".into()),
            ("slow-start-window".into(), "30s".into()),
        ])
    );
}

#[test]
fn selectorless_services_count_only_with_slices_and_external_names_never() {
    let mut ix = index();
    let mirrored = svc("db", "demo").port("pg", 5432, None).no_selector();
    ix.apply_service(&mirrored);
    let (topo, stats) = ix.topology_with_stats();
    assert!(keys(&topo).is_empty());
    assert!(topo.services.is_empty());
    assert_eq!(stats.services_without_slices, 1);
    ix.apply_slice(
        &slice("db-mirror", "demo", "db")
            .port("pg", 5432)
            .ep("192.168.1.10", [ready()]),
        t(1),
    );
    assert_eq!(
        health(&ix.topology(), "db.demo:5432"),
        ["192.168.1.10:5432 HEALTHY"]
    );

    // Turned into an ExternalName Service: gone, and counted.
    assert!(ix.apply_service(&mirrored.clone().external_name("db.example.com")));
    assert!(keys(&ix.topology()).is_empty());
    assert!(!ix.apply_service(&svc("ext", "demo").external_name("x.example.com")));
    assert_eq!(ix.stats().external_name_services, 2);
}

#[test]
fn odd_objects_are_skipped_and_counted() {
    let mut ix = index();
    // Services: no name, no namespace, a name that is no DNS-1035 label.
    assert!(!ix.apply_service(&svc("x", "demo").edit(|s| s.metadata.name = None)));
    assert!(!ix.apply_service(&svc("x", "demo").edit(|s| s.metadata.namespace = None)));
    assert!(!ix.apply_service(&svc("1x", "demo")));
    assert!(!ix.delete_service(&svc("", "demo")));
    assert_eq!(ix.stats().invalid_services, 4);

    // Ports: 0, too big, negative, duplicate number, duplicate name, UDP,
    // bad numeric target; only "grpc" and "admin" survive.
    ix.apply_service(
        &svc("echo", "demo")
            .port("grpc", 8080, target_name("grpc"))
            .port("zero", 0, None)
            .port("big", 70000, None)
            .port("neg", -1, None)
            .port("again", 8080, None)
            .port("grpc", 8081, None)
            .port("dns", 53, None)
            .protocol("UDP")
            .port("badtarget", 8082, target(0))
            .port("admin", 9000, target(70000 - 60999)),
    );
    assert_eq!(ix.stats().skipped_service_ports, 7);

    // Slice ports: 0, too big, duplicate; endpoints: no address, not an IP,
    // an IPv6 address in an IPv4 slice. A non-Pod targetRef is no pod.
    ix.apply_slice(
        &slice("echo-a", "demo", "echo")
            .port("grpc", 9090)
            .port("admin", 0)
            .port("admin", 70000)
            .port("grpc", 9091)
            .ep("10.244.0.1", [ready()])
            .ep("not-an-ip", [ready()])
            .ep("fd00::1", [ready()])
            .ep("10.244.0.2", [ready()])
            .edit(|s| {
                s.endpoints
                    .get_or_insert_with(Vec::new)
                    .push(discovery::Endpoint::default());
                s.endpoints.as_mut().unwrap()[3].target_ref =
                    Some(k8s_openapi::api::core::v1::ObjectReference {
                        kind: Some("Node".into()),
                        name: Some("n1".into()),
                        ..Default::default()
                    });
            }),
        t(1),
    );
    assert!(!ix.apply_slice(
        &slice("x", "demo", "echo").edit(|s| s.metadata.name = None),
        t(1)
    ));
    assert!(!ix.delete_slice(&slice("never-seen", "demo", "echo"), t(1)));
    assert!(!ix.apply_pod(&k8s_pod("p", "demo").edit_ns_none()));
    let stats = ix.stats();
    assert_eq!(stats.skipped_slice_ports, 3);
    assert_eq!(stats.skipped_endpoints, 3);
    assert_eq!(stats.invalid_slices, 1);
    assert_eq!(stats.invalid_pods, 1);

    let (topo, build) = ix.topology_with_stats();
    assert_eq!(keys(&topo), ["echo.demo:8080", "echo.demo:9000"]);
    assert_eq!(
        health(&topo, "echo.demo:8080"),
        ["10.244.0.1:9090 HEALTHY", "10.244.0.2:9090 HEALTHY"]
    );
    assert_eq!(
        endpoint(&topo, "echo.demo:8080", "10.244.0.2:9090").pod,
        None
    );
    assert!(
        health(&topo, "echo.demo:9000").is_empty(),
        "no valid admin port in the slice"
    );
    assert_eq!(build.unmatched_slice_ports, 1);
}

impl PodB {
    fn edit_ns_none(self) -> Pod {
        let mut p = self.build();
        p.metadata.namespace = None;
        p
    }
}

#[test]
fn applying_the_same_object_twice_is_no_change() {
    let mut ix = index();
    assert!(ix.apply_service(&echo()));
    assert!(!ix.apply_service(&echo()));
    let s = slice("echo-a", "demo", "echo")
        .port("grpc", 9090)
        .ep("10.244.0.1", [ready()]);
    assert!(ix.apply_slice(&s, t(1)));
    assert!(!ix.apply_slice(&s, t(2)));
    let p = k8s_pod("echo-0", "demo").ready_at(1);
    assert!(ix.apply_pod(&p));
    assert!(!ix.apply_pod(&p));
}

// ---- properties -------------------------------------------------------------

#[derive(Debug, Clone)]
enum Event {
    Service(Box<Service>),
    Slice(Box<EndpointSlice>),
    Pod(Box<Pod>),
}

/// Applies events as the driver would, including its side of the pod-label
/// contract: when the index asks for a Pod resync, the Pod watch restarts
/// and its initial list arrives as a reset.
fn apply(ix: &mut Index, events: &[Event], now: SystemTime) {
    let mut pods_so_far = Vec::new();
    for e in events {
        match e {
            Event::Service(s) => ix.apply_service(s),
            Event::Slice(s) => ix.apply_slice(s, now),
            Event::Pod(p) => {
                pods_so_far.push(Pod::clone(p));
                ix.apply_pod(p)
            }
        };
        if ix.take_pod_resync() {
            ix.reset_pods(pods_so_far.clone());
        }
    }
}

fn arb_conditions() -> impl Strategy<Value = Ep> {
    prop_oneof![
        Just(ready()),
        Just(unknown()),
        Just(not_ready()),
        Just(draining()),
        Just(terminated()),
    ]
}

/// Slices for two Services, overlapping in addresses and pods, each with
/// its own port number.
fn arb_slices() -> impl Strategy<Value = Vec<EndpointSlice>> {
    let ep = (1u8..6, arb_conditions(), 0usize..3, 0u8..3);
    let one = (
        prop_oneof![Just("echo"), Just("db")],
        prop_oneof![Just(9090), Just(9091)],
        prop::collection::vec(ep, 0..5),
    );
    prop::collection::vec(one, 0..6).prop_map(|slices| {
        slices
            .into_iter()
            .enumerate()
            .map(|(i, (service, port, eps))| {
                let port_name = if service == "echo" { "grpc" } else { "pg" };
                let mut s = slice(&format!("{service}-{i}"), "demo", service).port(port_name, port);
                for (last, cond, z, p) in eps {
                    s = s.ep(
                        &format!("10.244.0.{last}"),
                        [cond, zone(["a", "b", "c"][z]), pod(&format!("p{p}"))],
                    );
                }
                s.build()
            })
            .collect()
    })
}

fn universe(slices: Vec<EndpointSlice>) -> Vec<Event> {
    let mut events = vec![
        Event::Service(Box::new(
            echo().annotation(POD_LABELS_ANNOTATION, "shard").build(),
        )),
        Event::Service(Box::new(
            svc("db", "demo")
                .port("pg", 5432, None)
                .no_selector()
                .build(),
        )),
    ];
    for p in 0..3 {
        events.push(Event::Pod(Box::new(
            k8s_pod(&format!("p{p}"), "demo")
                .label("shard", &p.to_string())
                .ready_at(p)
                .build(),
        )));
    }
    events.extend(slices.into_iter().map(|s| Event::Slice(Box::new(s))));
    events
}

proptest! {
    #[test]
    fn order_of_events_does_not_matter(
        (events, shuffled) in arb_slices()
            .prop_map(universe)
            .prop_flat_map(|e| (Just(e.clone()), Just(e).prop_shuffle()))
    ) {
        let mut a = index();
        apply(&mut a, &events, t(7));
        let mut b = index();
        apply(&mut b, &shuffled, t(7));
        let (ta, tb) = (a.topology(), b.topology());
        prop_assert_eq!(ta.snapshot.version(), tb.snapshot.version());
        prop_assert_eq!(&ta, &tb);
        // And a reset with the same objects gives the same again.
        let mut c = index();
        let slices = events.iter().filter_map(|e| match e {
            Event::Slice(s) => Some(EndpointSlice::clone(s)),
            _ => None,
        }).collect();
        apply(&mut c, &events.iter().filter(|e| !matches!(e, Event::Slice(_))).cloned().collect::<Vec<_>>(), t(7));
        c.reset_slices(slices, t(7));
        prop_assert_eq!(c.topology(), ta);
    }

    #[test]
    fn odd_input_never_panics(
        ports in prop::collection::vec((any::<i32>(), "[a-z]{0,3}", prop::option::of(any::<i32>())), 0..4),
        slice_ports in prop::collection::vec((prop::option::of(any::<i32>()), "[a-z]{0,3}"), 0..4),
        addresses in prop::collection::vec(prop::collection::vec("[0-9a-f:.]{0,12}", 0..3), 0..4),
        address_type in prop_oneof![Just("IPv4"), Just("IPv6"), Just("FQDN"), Just(""), Just("x")],
        name in "[a-z0-9-]{0,5}",
    ) {
        let mut service = svc(if name.is_empty() { "x" } else { &name }, "demo");
        for (port, pname, target) in &ports {
            service = service.port(pname, *port, target.map(IntOrString::Int));
        }
        let mut s = slice("s", "demo", &name).address_type(address_type);
        for (port, pname) in &slice_ports {
            s = s.port(pname, 1).edit(|s| {
                if let Some(last) = s.ports.as_mut().and_then(|p| p.last_mut()) {
                    last.port = *port;
                }
            });
        }
        let s = s.edit(|s| {
            for a in &addresses {
                s.endpoints.get_or_insert_with(Vec::new).push(discovery::Endpoint { addresses: a.clone(), ..Default::default() });
            }
        });
        let mut ix = index();
        ix.apply_service(&service);
        ix.apply_slice(&s, t(1));
        let _ = ix.topology_with_stats();
        ix.reset_slices(vec![s.build()], t(2));
        ix.reset_services(vec![service.build()]);
        let _ = ix.topology();
    }
}

proptest! {
    /// Builds reuse Services nothing touched (`BuildCache`): after any
    /// sequence of applies, deletes and resets, building from the cache
    /// gives exactly what building from scratch gives.
    #[test]
    fn cached_builds_equal_builds_from_scratch(
        slices in arb_slices(),
        ops in prop::collection::vec((0u8..8, 0usize..16, 0u64..3), 1..40),
    ) {
        let events = universe(slices);
        let mut ix = index();
        let mut pods_so_far: Vec<Pod> = Vec::new();
        for (step, (op, pick, later)) in ops.into_iter().enumerate() {
            let now = t(10 + later);
            let event = &events[pick % events.len()];
            match (op, event) {
                // Mostly applies, as a watch delivers them.
                (0..=3, Event::Service(s)) => { ix.apply_service(s); }
                (0..=3, Event::Slice(s)) => { ix.apply_slice(s, now); }
                (0..=3, Event::Pod(p)) => {
                    pods_so_far.push(Pod::clone(p));
                    ix.apply_pod(p);
                }
                (4, Event::Service(s)) => { ix.delete_service(s); }
                (4, Event::Slice(s)) => { ix.delete_slice(s, now); }
                (4, Event::Pod(p)) => {
                    pods_so_far.retain(|q| q.metadata.name != p.metadata.name);
                    ix.delete_pod(p);
                }
                // A pod turning not ready, and a slice losing its endpoints.
                (5, Event::Pod(p)) => {
                    let mut p = Pod::clone(p);
                    if let Some(c) = p.status.as_mut().and_then(|s| s.conditions.as_mut()) {
                        c.iter_mut().for_each(|c| c.status = "False".to_owned());
                    }
                    pods_so_far.push(p.clone());
                    ix.apply_pod(&p);
                }
                (5, Event::Slice(s)) => {
                    let mut s = EndpointSlice::clone(s);
                    s.endpoints = Default::default();
                    ix.apply_slice(&s, now);
                }
                // Watch restarts: everything of a kind listed again.
                (6, _) => {
                    let slices = events.iter().filter_map(|e| match e {
                        Event::Slice(s) if pick % 2 == 0 => Some(EndpointSlice::clone(s)),
                        _ => None,
                    }).collect();
                    ix.reset_slices(slices, now);
                }
                (7, _) => { ix.reset_pods(pods_so_far.clone()); }
                _ => {}
            }
            if ix.take_pod_resync() {
                ix.reset_pods(pods_so_far.clone());
            }
            // Build only now and then, so several changes pile up between builds.
            if step % 3 == 0 {
                let (cached, cached_stats) = ix.topology_with_stats();
                let (fresh, fresh_stats) = ix.topology_uncached();
                prop_assert_eq!(&cached, &fresh, "step {}", step);
                prop_assert_eq!(cached_stats, fresh_stats, "step {}", step);
            }
        }
        let (cached, _) = ix.topology_with_stats();
        prop_assert_eq!(cached, ix.topology_uncached().0);
    }
}

#[test]
fn an_untouched_service_is_shared_between_builds() {
    let mut ix = index();
    ix.apply_service(&echo());
    ix.apply_service(&svc("db", "demo").port("pg", 5432, None));
    let ep = |name: &str, svc: &str, port: &str, ip: &str| {
        slice(name, "demo", svc)
            .port(port, 9090)
            .ep(ip, [ready(), zone("a")])
    };
    ix.apply_slice(&ep("echo-a", "echo", "grpc", "10.244.0.1"), t(1));
    ix.apply_slice(&ep("db-a", "db", "pg", "10.244.1.1"), t(1));
    let before = ix.topology();
    ix.apply_slice(&ep("echo-a", "echo", "grpc", "10.244.0.2"), t(2));
    let after = ix.topology();
    let db = |t: &Topology| {
        t.endpoints(&key("db.demo:5432"))
            .unwrap()
            .endpoints()
            .as_ptr()
    };
    assert_eq!(db(&before), db(&after), "db's set is the same memory");
    assert_eq!(
        health(&after, "echo.demo:8080"),
        ["10.244.0.2:9090 HEALTHY"]
    );
}

/// A Pod as a Deployment's ReplicaSet makes it, with the fields a real API
/// server fills in (shared with the `scale_rss` example).
fn realistic_pod() -> Pod {
    serde_json::from_str(include_str!("../synthetic/pod.json")).unwrap()
}

#[test]
fn pod_facts_keep_everything_the_index_reads_and_little_else() {
    let full = realistic_pod();
    let facts = PodFacts::of(&full);
    assert_eq!(
        (facts.namespace.as_str(), facts.name.as_str()),
        ("demo", "echo-7d4b9c-x2x4k")
    );
    let rec = facts.rec(&BTreeSet::from(["version".to_owned(), "absent".to_owned()]));
    assert_eq!(
        rec.labels,
        BTreeMap::from([("version".to_owned(), "v2".to_owned())])
    );
    // Ready since 2026-12-07T10:00:05Z; not being deleted.
    assert_eq!(
        rec.ready_since,
        Some(UNIX_EPOCH + Duration::from_secs(1_796_637_605))
    );
    assert_eq!(rec.deletion, None);
    let mut deleting = full.clone();
    deleting.metadata.deletion_timestamp = Some(k8s_time(1_800_000_000));
    deleting.status = None;
    let rec = PodFacts::of(&deleting).rec(&BTreeSet::new());
    assert_eq!(
        rec.deletion,
        Some(UNIX_EPOCH + Duration::from_secs(1_800_000_000))
    );
    assert_eq!(rec.ready_since, None);

    // What the watch holds per Pod: the facts against the Pod itself.
    let held = std::mem::size_of::<PodFacts>()
        + facts.namespace.len()
        + facts.name.len()
        + facts
            .labels
            .iter()
            .map(|(k, v)| k.len() + v.len() + 48)
            .sum::<usize>();
    let pod = std::mem::size_of::<Pod>() + serde_json::to_vec(&full).unwrap().len();
    println!(
        "a typical Pod: {pod} bytes (inline struct + JSON as a proxy for its heap), {held} as facts"
    );
    assert!(held * 10 < pod, "{held} of {pod} bytes");

    // Through the index: the same as from the Pod.
    let mut from_pod = index();
    let mut from_facts = index();
    assert!(from_pod.apply_pod(&full));
    assert!(from_facts.apply_pod_facts(&facts));
    assert_eq!(from_pod.pods, from_facts.pods);
    let mut nameless = full.clone();
    nameless.metadata.name = None;
    assert!(!from_facts.apply_pod_facts(&PodFacts::of(&nameless)));
    assert!(from_facts.delete_pod_facts(&facts));
    assert!(from_facts.pods.is_empty());
}

//! eds-server at the scale of issue 4: 10,000 Services and 100,000 endpoints
//! over three zones (the shape is described in `k8s::synthetic`).
//!
//! Run with
//! `cargo bench -p eds-server --features test-support --bench snapshot -- --warm-up-time 1 --measurement-time 10`.
//! Medians are in `$CARGO_TARGET_DIR/criterion/<group>/<name>/new/estimates.json`.
//!
//! What is measured, on one thread, after the index holds every object:
//!
//! - `snapshot/topology-full-rebuild`: `Index::topology()`, the full rebuild
//!   the publisher does on every push (every key's endpoint set merged,
//!   deduplicated, sorted and hashed). The result's drop is not timed
//!   (`iter_with_large_drop`); `snapshot/topology-full-rebuild+drop` times it
//!   too, which is what a push really costs once the old one goes.
//! - `snapshot/publish-one-pod-change`: one pod of a 1,000-endpoint Service
//!   turns not-ready (or back): `Index::apply_slice`, `Publisher::on_change`
//!   and `Publisher::poll` at the end of the window, which rebuilds,
//!   runs the mass-drop guard against the published topology, compares and
//!   publishes. Its peer `snapshot/apply-slice-one-pod-change` is the
//!   `apply_slice` alone, to show where the time goes.
//! - `cla/encode-1000`: the first `SnapshotSource::get` of one
//!   ClusterLoadAssignment with 1,000 endpoints (about 990 sent) on a fresh
//!   source: key resolution, policy lookup, protobuf build and encode,
//!   content version. `cla/encode-1000-zone-aware` is the same for a client
//!   that reported a zone (locality weights from spillover shares).
//!   Their peer `cla/cached-1000` is the cache hit every later subscriber
//!   gets for the same version.
//!
//! What is not measured: the Kubernetes watch (JSON decoding, network),
//! the xDS streams and their queues, memory (see `examples/scale_rss.rs`),
//! or anything under contention; the machine's other load shows in the
//! spread, not in the medians alone.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use criterion::{BatchSize, Criterion, SamplingMode, criterion_group, criterion_main};
use eds_server::k8s::synthetic as cluster;
use eds_server::k8s::{Index, IndexConfig, Publisher, PublisherConfig};
use eds_server::metrics::Metrics;
use eds_server::source::{SnapshotSource, SourceConfig};
use eds_server::topology::Topology;
use eds_server::xds::{ClientInfo, Lookup, ResourceSource, ResourceType};

fn index(cluster: &cluster::Cluster) -> Index {
    let mut index = Index::new(IndexConfig::default());
    cluster::populate(&mut index, cluster, UNIX_EPOCH);
    let (_, stats) = index.topology_with_stats();
    eprintln!(
        "cluster: {} Services, {} EndpointSlices; topology: {} keys, {} healthy + {} draining endpoints sent, {} not serving",
        cluster.services.len(),
        cluster.slices.len(),
        stats.keys,
        stats.healthy,
        stats.draining,
        stats.unhealthy,
    );
    assert_eq!(stats.keys, cluster::SERVICES);
    assert_eq!(
        stats.healthy + stats.draining + stats.unhealthy,
        cluster::ENDPOINTS
    );
    index
}

fn snapshot(c: &mut Criterion) {
    let cluster = cluster::generate();
    let mut index = index(&cluster);
    let mut group = c.benchmark_group("snapshot");
    // Each iteration takes tens to hundreds of milliseconds: few, equal samples.
    group.sample_size(10).sampling_mode(SamplingMode::Flat);

    group.bench_function("topology-full-rebuild", |b| {
        b.iter_with_large_drop(|| index.topology());
    });
    group.bench_function("topology-full-rebuild+drop", |b| {
        b.iter(|| index.topology());
    });

    let versions = cluster::one_pod_change(&cluster);
    // Odd: the first apply is the changed version (index 0).
    let mut flip = 1usize;
    let mut seconds = 1;
    group.bench_function("apply-slice-one-pod-change", |b| {
        b.iter(|| {
            flip += 1;
            seconds += 1;
            let changed = index.apply_slice(
                &versions[flip % 2],
                UNIX_EPOCH + Duration::from_secs(seconds),
            );
            assert!(changed);
        });
    });

    let config = PublisherConfig::default();
    let window = config.coalesce_window;
    let mut publisher = Publisher::new(config).expect("valid config");
    let mut now = Instant::now();
    publisher.on_change(now);
    now += window;
    assert!(publisher.poll(now, &index).is_some(), "first publish");
    group.bench_function("publish-one-pod-change", |b| {
        b.iter(|| {
            flip += 1;
            seconds += 1;
            let changed = index.apply_slice(
                &versions[flip % 2],
                UNIX_EPOCH + Duration::from_secs(seconds),
            );
            assert!(changed);
            publisher.on_change(now);
            now += window;
            let published = publisher.poll(now, &index);
            assert!(published.is_some(), "a one-pod change is published");
            published
        });
    });
    group.finish();
    let stats = publisher.stats();
    assert_eq!(stats.held_back, 0, "one pod is no mass drop");
}

fn cla(c: &mut Criterion) {
    let index = index(&cluster::generate());
    let topology: Arc<Topology> = Arc::new(index.topology());
    drop(index);
    let metrics = Arc::new(Metrics::new());
    let name = cluster::key(0);
    let plain = ClientInfo::new("bench", None);
    let zoned = ClientInfo::new("bench", Some(cluster::ZONES[0]));
    let fresh = || {
        SnapshotSource::new(
            Arc::clone(&topology),
            SourceConfig::default(),
            Arc::clone(&metrics),
        )
    };
    let get = |source: &SnapshotSource, client: &ClientInfo| match source.get(
        ResourceType::ClusterLoadAssignment,
        &name,
        client,
    ) {
        Lookup::Found(resource) => resource,
        _ => panic!("{name} has a ClusterLoadAssignment"),
    };
    let sent = topology
        .snapshot
        .get(&name.parse().expect("valid key"))
        .map_or(0, |s| s.len());
    let encoded = get(&fresh(), &plain).body().value.len();
    eprintln!("cla: {name}, {sent} endpoints sent, {encoded} bytes encoded");

    let mut group = c.benchmark_group("cla");
    group.bench_function("encode-1000", |b| {
        b.iter_batched(fresh, |source| get(&source, &plain), BatchSize::SmallInput);
    });
    group.bench_function("encode-1000-zone-aware", |b| {
        b.iter_batched(fresh, |source| get(&source, &zoned), BatchSize::SmallInput);
    });
    group.bench_function("cached-1000", |b| {
        let source = fresh();
        get(&source, &plain);
        b.iter(|| get(black_box(&source), &plain));
    });
    group.finish();
}

criterion_group!(benches, snapshot, cla);
criterion_main!(benches);

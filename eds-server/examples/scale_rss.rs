//! Memory of eds-server's state at the scale of issue 4 (10,000 Services,
//! 100,000 endpoints; shape in eds-server's `k8s::synthetic`): prints the
//! process's own `VmRSS` and `VmHWM` (peak RSS) from `/proc/self/status`
//! after each phase, next to the live heap bytes counted by a wrapping
//! global allocator (exact, unlike RSS, which keeps pages the allocator has
//! not returned).
//!
//! Run with `cargo run --release -p eds-server --features test-support --example scale_rss`.
//!
//! Phases, each adding what the server holds:
//!
//! 1. the raw k8s-openapi objects (Services and EndpointSlices, no
//!    `managedFields`): the peer figure. The watch driver keeps every
//!    current object anyway, so this is the floor for any design that
//!    watches through kube-runtime.
//! 2. the `Index` fed from them as the watcher does after its initial list;
//! 3. the first published `Topology` (`Publisher::poll`);
//! 4. every ClusterLoadAssignment encoded once (`SnapshotSource`, no client
//!    zone), as when one subscriber asks for all of them;
//! 5. a one-pod change published and every CLA encoded again while the
//!    previous topology and its encodings are still held (streams that
//!    have not moved on yet): the transient peak of a push;
//! 6. the previous topology and source dropped: the steady state;
//! 7. 100,000 Pods (one per endpoint, `k8s::synthetic::pod_template` as a
//!    Deployment's pod looks) listed as the watch lists them: each reduced
//!    to `PodFacts` on arrival and applied, only its key kept (`Listing`),
//!    and the Index's record of each;
//! 8. a forced re-list: every Pod again, applied as it arrives;
//! 9. for comparison only: the same Pods held as k8s-openapi objects, as
//!    the watch held them before.
//!
//! This process also holds phase 1's raw objects throughout, which the
//! server does not: `cargo xtask bench scale` (eds-bench's `scale`) gives
//! the server's own peak, the figure issue 24 bounds at 300 MiB.
//!
//! What it does not measure: the tokio runtime, tonic, the kube client and
//! its buffers (lists come in pages of 500), per-stream queues,
//! zone-specific encodings (one more cache entry per zone a client
//! reports), or time (see `benches/snapshot.rs`; the durations printed here are single
//! runs for orientation only).
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, UNIX_EPOCH};

use eds_server::k8s::listing::Listing;
use eds_server::k8s::synthetic as cluster;
use eds_server::k8s::{Index, IndexConfig, Publisher, PublisherConfig};
use eds_server::metrics::Metrics;
use eds_server::source::{SnapshotSource, SourceConfig};
use eds_server::topology::Topology;
use eds_server::xds::{ClientInfo, Lookup, ResourceSource, ResourceType};
use k8s_openapi::api::core::v1::Pod;

/// Counts live heap bytes and their peak; forwards everything to `System`.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: every call is forwarded unchanged to `System`, which upholds the
// `GlobalAlloc` contract; the counters have no effect on the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same layout the caller gave us.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same layout the caller gave us.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// `VmRSS` and `VmHWM` in KiB.
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn mib_kib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

struct Report {
    last_live: usize,
}

impl Report {
    fn header() -> Self {
        println!(
            "| phase | VmRSS MiB | VmHWM MiB | live heap MiB | added heap MiB | peak heap MiB | took |"
        );
        println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
        Report {
            last_live: LIVE.load(Ordering::Relaxed),
        }
    }

    fn row(&mut self, phase: &str, took: Duration) {
        let (rss, hwm) = rss();
        let live = LIVE.load(Ordering::Relaxed);
        let added = live as f64 - self.last_live as f64;
        self.last_live = live;
        println!(
            "| {phase} | {:.1} | {:.1} | {:.1} | {:+.1} | {:.1} | {took:.2?} |",
            mib_kib(rss),
            mib_kib(hwm),
            mib(live),
            added / (1024.0 * 1024.0),
            mib(PEAK.load(Ordering::Relaxed)),
        );
    }
}

/// Encodes every CLA once; returns the total encoded bytes.
fn encode_all(source: &SnapshotSource, client: &ClientInfo) -> usize {
    (0..cluster::SERVICES)
        .map(|i| {
            match source.get(
                ResourceType::ClusterLoadAssignment,
                &cluster::key(i),
                client,
            ) {
                Lookup::Found(r) => r.body().value.len(),
                _ => panic!("{} has a ClusterLoadAssignment", cluster::key(i)),
            }
        })
        .sum()
}

fn main() {
    let mut report = Report::header();
    report.row("0. start", Duration::ZERO);

    let t = Instant::now();
    let objects = cluster::generate();
    report.row("1. raw k8s-openapi objects held (peer)", t.elapsed());

    let t = Instant::now();
    let mut index = Index::new(IndexConfig::default());
    cluster::populate(&mut index, &objects, UNIX_EPOCH);
    report.row("2. + Index", t.elapsed());

    let t = Instant::now();
    let config = PublisherConfig::default();
    let window = config.coalesce_window;
    let mut publisher = Publisher::new(config).expect("valid config");
    let mut now = Instant::now();
    publisher.on_change(now);
    now += window;
    let first: Arc<Topology> = publisher.poll(now, &index).expect("first publish");
    report.row("3. + published Topology", t.elapsed());

    let t = Instant::now();
    let metrics = Arc::new(Metrics::new());
    let client = ClientInfo::new("scale", None);
    let old_source = SnapshotSource::new(first, SourceConfig::default(), Arc::clone(&metrics));
    let encoded = encode_all(&old_source, &client);
    report.row("4. + every CLA encoded", t.elapsed());

    let t = Instant::now();
    let [changed, _] = cluster::one_pod_change(&objects);
    assert!(index.apply_slice(&changed, UNIX_EPOCH + Duration::from_secs(1)));
    publisher.on_change(now);
    now += window;
    let second = publisher
        .poll(now, &index)
        .expect("one-pod change published");
    let source = SnapshotSource::new(second, SourceConfig::default(), Arc::clone(&metrics));
    let encoded_again = encode_all(&source, &client);
    report.row(
        "5. one-pod change: 2nd Topology + encodings, 1st still held",
        t.elapsed(),
    );

    let t = Instant::now();
    drop(old_source);
    report.row("6. 1st Topology and encodings dropped", t.elapsed());

    // Pods: one per endpoint. The watch reduces each to `PodFacts` on
    // arrival, applies it and keeps its key (`Listing`); the Index keeps a
    // small record per Pod.
    let template = cluster::pod_template();
    let pod = |round: usize, i: usize| -> Pod {
        let mut pod = template.clone();
        pod.metadata.name = Some(format!("pod-{i}"));
        pod.metadata.namespace = Some(format!("ns-{}", i % 100));
        pod.metadata.resource_version = Some((round * cluster::ENDPOINTS + i).to_string());
        pod
    };
    let mut keys = Listing::default();
    let mut list = |round: usize, index: &mut Index| {
        cluster::list_pods(&mut keys, index, |push| {
            (0..cluster::ENDPOINTS).for_each(|i| push(pod(round, i)));
        })
    };
    let t = Instant::now();
    list(1, &mut index);
    report.row(
        "7. + 100,000 Pods: the watch's keys and the Index's records",
        t.elapsed(),
    );

    let t = Instant::now();
    list(2, &mut index);
    report.row(
        "8. forced re-list: every Pod again, applied as it arrives",
        t.elapsed(),
    );
    let (_, peak_kib) = rss();

    // For comparison, after every figure above: what holding the same
    // Pods as k8s-openapi objects (as the watch did before) adds.
    let t = Instant::now();
    let objects_held: Vec<Pod> = (0..cluster::ENDPOINTS).map(|i| pod(3, i)).collect();
    report.row(
        "9. (comparison) + the same Pods as Pod objects",
        t.elapsed(),
    );
    drop(objects_held);
    println!();
    println!(
        "Peak RSS through the re-list (phases 0 to 8): {:.1} MiB",
        mib_kib(peak_kib)
    );

    let (_, stats) = index.topology_with_stats();
    println!();
    println!(
        "{} Services, {} EndpointSlices, {} keys; endpoints sent: {} healthy + {} draining ({} not serving, withheld from stock clients); \
         CLAs encoded: {:.1} MiB, then {:.1} MiB",
        objects.services.len(),
        objects.slices.len(),
        stats.keys,
        stats.healthy,
        stats.draining,
        stats.unhealthy,
        mib(encoded),
        mib(encoded_again),
    );
    // Context only, after every measurement: the objects' size as JSON,
    // roughly what the API server sends for them.
    let json: usize = objects
        .services
        .iter()
        .map(|s| serde_json::to_vec(s).map_or(0, |v| v.len()))
        .chain(
            objects
                .slices
                .iter()
                .map(|s| serde_json::to_vec(s).map_or(0, |v| v.len())),
        )
        .sum();
    println!("The same objects as JSON: {:.1} MiB", mib(json));
    assert_eq!(stats.keys, cluster::SERVICES);
    assert_eq!(
        stats.healthy + stats.draining + stats.unhealthy,
        cluster::ENDPOINTS
    );
    drop(source);
}

//! The product installed and run the way operators and service teams do,
//! on three real local nodes (containerd, runc, kubelet; one zone each),
//! with kube-proxy routing ClusterIPs and CoreDNS answering names: every
//! stage of [`eds_devkit::e2e`] (helm install of the chart, confined as
//! shipped; the echo backend over the zones with a gRPC readiness probe;
//! lb-client's example in a pod through a rollout restart and the loss of
//! its eds-server replica with 0 failed requests; grpc-go in a pod through
//! `xds:///`; edsctl through a real port-forward, `diff` clean on each
//! replica; the DNS fallback through CoreDNS and the ClusterIP). `cargo
//! xtask e2e --cluster kind` runs the same stages on kind.
//!
//! The kustomize base is installed on a node by `node_cluster`.
//!
//! Ignored in a plain `cargo test`: it needs root and the node components.
//! `cargo xtask test` and `cargo xtask e2e` run it; alone:
//! `cargo test -p eds-tests --test node_e2e -- --ignored --nocapture`.
//! Everything it starts goes at the end, pass or fail.

use std::time::Instant;

use anyhow::{Context, ensure};
use eds_devkit::cluster::node::{self, Node};
use eds_devkit::cluster::workload::{cpu_seconds, target_dir};
use eds_devkit::cluster::{ControlPlane, PlaneOptions, node_build, rss_kib};
use eds_devkit::e2e::{self, LocalNodes, Target};
use eds_devkit::process::Lifetime;

/// Starts the cluster, runs the stages, reports what the nodes cost.
fn on_nodes(
    plane: &ControlPlane,
    nodes: &mut Vec<Node>,
    bins: &e2e::Binaries,
    node_bins: &node_build::NodeBinaries,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let dir = &plane.state().dir;
    let mut tars = node::build_node_images(&dir.join("images"), node_bins)?;
    tars.extend(e2e::app_images(&dir.join("images"), bins)?);
    for index in 1..=e2e::ZONES.len() as u8 {
        assert_eq!(node::zone_of(index), e2e::ZONES[usize::from(index) - 1]);
        nodes.push(Node::start(plane, node_bins, index, &tars, Lifetime::Tied)?);
    }
    node::install_cluster_dns(plane, dir)?;
    eprintln!(
        "{} nodes Ready, images loaded, cluster DNS up after {:.1?}",
        nodes.len(),
        started.elapsed()
    );
    let local = LocalNodes(nodes.iter().map(|n| n.state().clone()).collect());
    let target = Target {
        kubectl: plane.binaries().kubectl.clone(),
        helm: eds_devkit::tools::ensure_helm(false)?,
        kubeconfig: plane.state().kubeconfig.clone(),
        work_dir: dir.clone(),
        nodes: &local,
    };
    e2e::run(&target, bins)?;
    for n in nodes.iter() {
        let s = n.state();
        let ctd = n.containerd().pid();
        eprintln!(
            "{}: kubelet RSS {} MiB, CPU {:.1} s; containerd RSS {} MiB, CPU {:.1} s",
            s.name,
            rss_kib(s.kubelet_pid).unwrap_or(0) / 1024,
            cpu_seconds(s.kubelet_pid).unwrap_or(0.0),
            rss_kib(ctd).unwrap_or(0) / 1024,
            cpu_seconds(ctd).unwrap_or(0.0),
        );
    }
    Ok(())
}

#[test]
#[ignore = "needs root and `cargo xtask cluster build --nodes`; about four minutes"]
fn the_product_installed_and_run_on_three_nodes() -> anyhow::Result<()> {
    let node_bins = node_build::node_binaries()?;
    ensure!(
        node_bins.present(),
        "the node components are not built: run `cargo xtask cluster build --nodes`"
    );
    let bins = e2e::build_binaries()?;
    let dir = target_dir().join(format!("eds-e2e-{}", std::process::id()));
    let started = Instant::now();
    let plane =
        ControlPlane::start_with(&dir, Lifetime::Tied, false, PlaneOptions { nodes: true })?;
    let mut nodes = Vec::new();
    let result = on_nodes(&plane, &mut nodes, &bins, &node_bins);
    eprintln!(
        "e2e on nodes: {:.1?} from the control plane's start",
        started.elapsed()
    );
    let teardown = Instant::now();
    // Side by side: each node's teardown is mostly waiting on its own
    // containerd and kubelet.
    std::thread::scope(|s| {
        for n in nodes.iter_mut() {
            s.spawn(|| n.stop());
        }
    });
    drop(plane);
    std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    eprintln!("teardown: {:.1?}", teardown.elapsed());
    result
}

//! `cargo xtask cluster build|up|down|status`: the local Kubernetes control
//! plane for people (tests start their own through the same library).
//!
//! `up` starts detached processes in `.eds/cluster/` (the directory it
//! owns), writes `state.json` there and leaves them running; `down` stops
//! what `state.json` records; `status` says what runs. The work itself lives
//! in `eds_devkit::cluster`; this module only parses and prints.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use eds_devkit::cluster::node::{self, Node};
use eds_devkit::cluster::{self, ClusterState, ControlPlane, PlaneOptions, node_build, versions};
use eds_devkit::e2e;
use eds_devkit::process::Lifetime;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum ClusterCmd {
    /// Build (or find cached) kube-apiserver, kube-controller-manager, kubectl and etcd.
    Build(BuildArgs),
    /// Start the control plane in the background and print how to use it.
    Up(UpArgs),
    /// Stop everything `up` started.
    Down(DirArgs),
    /// Say what runs.
    Status(DirArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct BuildArgs {
    /// Also build what a node runs: kubelet, kube-proxy, kube-scheduler,
    /// containerd (with its runc shim and ctr), runc and CoreDNS, and
    /// install the Debian packages a node needs (iptables, conntrack, CNI
    /// plugins, and libseccomp-dev and pkg-config to build runc).
    #[arg(long)]
    nodes: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct UpArgs {
    #[command(flatten)]
    dir: DirArgs,
    /// Also start this many real nodes (kubelet and containerd each, one
    /// zone each, pods on a CNI bridge in the pod network namespace) and
    /// kube-scheduler. 0: process pods only, as the fast tests use.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=5))]
    nodes: u8,
    /// Run the product on the nodes as an operator would (needs `--nodes
    /// 3`, one node per zone): build the images, load them into each node,
    /// `helm install` the chart (eds-server, 2 replicas) and the echo
    /// backend (`demo/echo`, 2 pods per zone). The same steps as the e2e.
    #[arg(long)]
    install: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct DirArgs {
    /// The directory the control plane owns.
    #[arg(long, default_value = ".eds/cluster", env = "EDS_CLUSTER_DIR")]
    dir: PathBuf,
}

pub(crate) fn run(cmd: ClusterCmd) -> anyhow::Result<()> {
    match cmd {
        ClusterCmd::Build(args) => {
            // Nodes first when asked: the control plane's build then finds most
            // of its packages in Go's build cache, left there by the kubelet's.
            if args.nodes {
                let started = Instant::now();
                let node = cluster::ensure_node_built(true)?;
                eprintln!(
                    "node components (containerd {}, runc {}, CoreDNS {}) ready in {:.1?}:",
                    versions::CONTAINERD,
                    versions::RUNC,
                    versions::COREDNS,
                    started.elapsed()
                );
                for (_, path) in node.built() {
                    println!("{}", path.display());
                }
                println!("{} (CNI plugins)", node.cni_bin_dir.display());
            }
            let started = Instant::now();
            let bins = cluster::ensure_built(true)?;
            eprintln!(
                "Kubernetes {} and etcd {} ready in {:.1?}:",
                versions::KUBERNETES,
                versions::ETCD,
                started.elapsed()
            );
            for path in [
                &bins.kube_apiserver,
                &bins.kube_controller_manager,
                &bins.kubectl,
                &bins.etcd,
            ] {
                println!("{}", path.display());
            }
            Ok(())
        }
        ClusterCmd::Up(args) => {
            let started = Instant::now();
            anyhow::ensure!(
                !args.install || usize::from(args.nodes) == e2e::ZONES.len(),
                "--install needs --nodes {}: the chart and the echo backend spread over {} zones, one node each",
                e2e::ZONES.len(),
                e2e::ZONES.len()
            );
            // Built before the cluster starts: a failed build leaves nothing running.
            let apps = if args.install {
                eprintln!(
                    "building eds-server, the echo backend, lb-client's example, edsctl and grpc-go"
                );
                Some(e2e::build_binaries()?)
            } else {
                None
            };
            let node_bins = if args.nodes > 0 {
                let bins = node_build::node_binaries()?;
                anyhow::ensure!(
                    bins.present(),
                    "--nodes needs the node components: run `cargo xtask cluster build --nodes`"
                );
                Some(bins)
            } else {
                None
            };
            let mut plane = ControlPlane::start_with(
                &args.dir.dir,
                Lifetime::Detached,
                true,
                PlaneOptions {
                    nodes: args.nodes > 0,
                },
            )?;
            if let Some(bins) = &node_bins {
                let image_dir = plane.state().dir.join("images");
                let mut images = node::build_node_images(&image_dir, bins)?;
                if let Some(apps) = &apps {
                    images.extend(e2e::app_images(&image_dir, apps)?);
                }
                let mut nodes = Vec::new();
                for index in 1..=args.nodes {
                    let n = Node::start(&plane, bins, index, &images, Lifetime::Detached)?;
                    eprintln!(
                        "{} Ready ({}, pods {}) after {:.1?}",
                        n.state().name,
                        n.state().zone,
                        n.state().pod_cidr,
                        started.elapsed()
                    );
                    nodes.push(n);
                }
                node::install_cluster_dns(&plane, &plane.state().dir)?;
                eprintln!("CoreDNS Ready behind kube-dns ({})", node::CLUSTER_DNS_IP);
                // Recorded first: if installing fails, `cluster down` still
                // finds every node.
                let states: Vec<_> = nodes.into_iter().map(Node::release).collect();
                plane.record_nodes(states.clone())?;
                if apps.is_some() {
                    let local = e2e::LocalNodes(states);
                    let target = e2e::Target {
                        kubectl: plane.binaries().kubectl.clone(),
                        helm: eds_devkit::tools::ensure_helm(true)?,
                        kubeconfig: plane.state().kubeconfig.clone(),
                        work_dir: plane.state().dir.clone(),
                        nodes: &local,
                    };
                    e2e::install_chart(&target)?;
                    e2e::deploy_echo(&target)?;
                }
            }
            let kubectl = cluster::build::binaries()?.kubectl;
            let state = plane.release();
            eprintln!("control plane up in {:.1?}", started.elapsed());
            print_state(&state);
            println!(
                "\nUse it:\n  export KUBECONFIG={}\n  {} get namespaces",
                state.kubeconfig.display(),
                kubectl.display()
            );
            println!(
                "Tests attach to it with EDS_CLUSTER_DIR={}",
                state.dir.display()
            );
            Ok(())
        }
        ClusterCmd::Down(args) => {
            match ClusterState::load(&args.dir)? {
                Some(state) => {
                    state.stop();
                    std::thread::sleep(Duration::from_millis(200));
                    // Anything a node mounted (and so would refuse removal).
                    cluster::containerd::unmount_under(&state.dir);
                    std::fs::remove_dir_all(&args.dir)
                        .with_context(|| format!("removing {}", args.dir.display()))?;
                    println!("stopped the control plane in {}", args.dir.display());
                }
                None => println!("no control plane recorded in {}", args.dir.display()),
            }
            Ok(())
        }
        ClusterCmd::Status(args) => {
            match ClusterState::load(&args.dir)? {
                Some(state) => print_state(&state),
                None => println!(
                    "no control plane recorded in {} (run `cargo xtask cluster up`)",
                    args.dir.display()
                ),
            }
            Ok(())
        }
    }
}

fn print_state(state: &ClusterState) {
    println!(
        "Kubernetes {}  API {}  etcd {}",
        state.kubernetes_version, state.api_url, state.etcd_url
    );
    println!(
        "pod network {} (host side {} on {})",
        state.network.cidr(),
        state.network.host_ip(),
        state.network.host_if
    );
    println!(
        "{:<26} {:>8} {:>8} {:>10}",
        "PROCESS", "PID", "STATE", "RSS"
    );
    for (name, pid, alive) in state.alive() {
        let rss =
            cluster::rss_kib(pid).map_or_else(|| "-".to_owned(), |k| format!("{} MiB", k / 1024));
        println!(
            "{name:<26} {pid:>8} {:>8} {rss:>10}",
            if alive { "running" } else { "gone" }
        );
    }
    println!("kubeconfig {}", state.kubeconfig.display());
}

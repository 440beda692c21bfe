//! A real Kubernetes control plane as local processes: etcd,
//! kube-apiserver and kube-controller-manager, plus the pod network.
//!
//! ```text
//!  etcd (127.0.0.1:E) <-- kube-apiserver (https://127.0.0.1:A, RBAC, SA tokens)
//!                               ^
//!                               +-- kube-controller-manager: endpointslice,
//!                                   endpointslice-mirroring, garbage-collector,
//!                                   namespace controllers
//!  pod network 10.X.0.0/16 (netns): advertise address 10.X.0.1, pod IPs, backends
//! ```
//!
//! Everything lives in one directory the control plane owns (`pki/`,
//! `etcd/`, logs, `kubeconfig`, `state.json`). Starting over a directory
//! left by a crash stops whatever the old state recorded and wipes it.
//! There is no kubelet, scheduler or kube-proxy: the test harness
//! ([`crate::harness`]) plays the kubelet's part for pod status.
//!
//! kube-apiserver alone can be stopped and started again
//! ([`ControlPlane::stop_apiserver`], [`ControlPlane::start_apiserver`]) with
//! the same flags, port and directory, so tests can prove that clients of the
//! API ride out an API server outage; etcd keeps the data meanwhile.

pub mod build;
pub mod containerd;
pub mod node;
pub mod node_build;
pub mod pki;
pub mod versions;
pub mod workload;

use std::fs;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

pub use build::{Binaries, ensure_built};
pub use node_build::{NodeBinaries, ensure_node_built};

use crate::netns::{PodNetwork, PodNetworkInfo};
use crate::process::{ChildProcess, Lifetime, log_tail};

/// The service CIDR. Without nodes nothing routes to it (Services just need
/// ClusterIPs); with nodes, kube-proxy does, inside the pod network
/// namespace only.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";

/// The `kubernetes` Service's ClusterIP: the first address of [`SERVICE_CIDR`].
pub const KUBERNETES_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);

/// What a running control plane writes to `state.json`, so another process
/// (`cluster status`, `cluster down`, a test attaching) can find it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterState {
    /// The directory the control plane owns.
    pub dir: PathBuf,
    /// Admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// `https://127.0.0.1:<port>`.
    pub api_url: String,
    /// etcd client URL.
    pub etcd_url: String,
    /// Process ids (each leads its own process group), by name.
    pub pids: Vec<(String, u32)>,
    /// The pod network.
    pub network: PodNetworkInfo,
    /// Pinned Kubernetes version.
    pub kubernetes_version: String,
    /// The nodes (kubelet and containerd each), if the cluster has any.
    #[serde(default)]
    pub nodes: Vec<node::NodeState>,
}

impl ClusterState {
    /// Reads `state.json` from `dir`, if there is one.
    pub fn load(dir: &Path) -> anyhow::Result<Option<Self>> {
        let path = dir.join("state.json");
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(
                serde_json::from_slice(&bytes)
                    .with_context(|| format!("parsing {}", path.display()))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Which recorded processes are still alive.
    pub fn alive(&self) -> Vec<(String, u32, bool)> {
        let mut all = self.pids.clone();
        for n in &self.nodes {
            if let Some(pid) = n.kube_proxy_pid {
                all.push((format!("{} kube-proxy", n.name), pid));
            }
            all.push((format!("{} kubelet", n.name), n.kubelet_pid));
            all.push((format!("{} containerd", n.name), n.containerd_pid));
        }
        all.push(("pod network holder".into(), self.network.holder_pid));
        all.into_iter()
            .map(|(name, pid)| {
                let alive = crate::process::alive(pid);
                (name, pid, alive)
            })
            .collect()
    }

    /// Stops the nodes, every recorded process group (reverse start
    /// order) and the pod network.
    pub fn stop(&self) {
        for n in self.nodes.iter().rev() {
            n.stop();
        }
        for (_, pid) in self.pids.iter().rev() {
            crate::process::stop_group(*pid, Duration::from_secs(5));
        }
        crate::process::stop_group(self.network.holder_pid, Duration::from_secs(2));
    }
}

/// Where kube-apiserver sits in [`ControlPlane`]'s start order.
const APISERVER: usize = 1;

/// What a control plane runs beyond etcd, kube-apiserver and the
/// EndpointSlice controllers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlaneOptions {
    /// Ready for real nodes ([`node::Node`]): kube-apiserver listens on the
    /// pod network's host address (kubelets and pods reach it from the pod
    /// network namespace; loopback there is their own), pods get
    /// ServiceAccount tokens (admission plugin, the ServiceAccount and
    /// root-CA publisher controllers), Deployments get ReplicaSets and
    /// pods, and kube-scheduler places them.
    pub nodes: bool,
}

/// A running control plane.
#[derive(Debug)]
pub struct ControlPlane {
    state: ClusterState,
    binaries: Binaries,
    lifetime: Lifetime,
    /// kube-apiserver's flags, kept so a restart uses exactly the same ones.
    apiserver_args: Vec<String>,
    /// Restarts so far, to give each restarted API server its own log.
    apiserver_restarts: AtomicU32,
    /// The processes' names, in start order.
    names: Vec<&'static str>,
    // Dropped (and so stopped) in reverse order of start: kcm, apiserver, etcd, network.
    // Behind a lock so a shared control plane can restart its API server.
    processes: Mutex<Vec<ChildProcess>>,
    // `None` only after `release`, which consumes the control plane.
    network: Option<PodNetwork>,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl ControlPlane {
    /// Starts a control plane in `dir` (wiped first). `progress` narrates to stderr.
    pub fn start(dir: &Path, lifetime: Lifetime, progress: bool) -> anyhow::Result<Self> {
        Self::start_with(dir, lifetime, progress, PlaneOptions::default())
    }

    /// [`ControlPlane::start`] with more parts running (see [`PlaneOptions`]).
    pub fn start_with(
        dir: &Path,
        lifetime: Lifetime,
        progress: bool,
        options: PlaneOptions,
    ) -> anyhow::Result<Self> {
        let started = Instant::now();
        let binaries = ensure_built(progress)?;
        if let Some(old) = ClusterState::load(dir)? {
            // Left over by a crash or an earlier `up`: stop it so ports and the network are free.
            old.stop();
        }
        if dir.exists() {
            fs::remove_dir_all(dir).with_context(|| format!("wiping {}", dir.display()))?;
        }
        fs::create_dir_all(dir)?;
        let dir = dir.canonicalize()?;

        let network = PodNetwork::create(&dir, lifetime)?;
        let host_ip = network.info().host_ip();
        let pki = pki::generate(
            &dir.join("pki"),
            &[
                Ipv4Addr::LOCALHOST.into(),
                host_ip.into(),
                // The `kubernetes` Service's ClusterIP (the CIDR's first
                // address), which in-cluster clients dial and verify.
                KUBERNETES_CLUSTER_IP.into(),
            ],
        )?;
        let (etcd_port, peer_port, api_port) = (free_port()?, free_port()?, free_port()?);
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        // With nodes, the API must be reachable from the pod network
        // namespace, whose loopback is its own: listen on our veth end only
        // (still nothing outside the machine can reach it).
        let api_ip: Ipv4Addr = if options.nodes {
            host_ip
        } else {
            Ipv4Addr::LOCALHOST
        };
        let api_url = format!("https://{api_ip}:{api_port}");

        let mut processes = Vec::new();
        let mut etcd = Command::new(&binaries.etcd);
        etcd.arg(format!("--data-dir={}", dir.join("etcd").display()))
            .arg(format!("--listen-client-urls={etcd_url}"))
            .arg(format!("--advertise-client-urls={etcd_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=default={peer_url}"))
            // A throwaway test store: durability is not worth the fsync latency.
            .arg("--unsafe-no-fsync")
            .arg("--log-level=warn");
        processes.push(ChildProcess::spawn(
            "etcd",
            etcd,
            &dir.join("etcd.log"),
            lifetime,
        )?);

        let mut apiserver_args: Vec<String> = vec![
            format!("--etcd-servers={etcd_url}"),
            format!("--bind-address={api_ip}"),
            format!("--secure-port={api_port}"),
            // Must not be loopback; the pod network's host address is ours.
            format!("--advertise-address={host_ip}"),
            // With nodes, the `kubernetes` Service gets this API server's
            // address and port as its endpoint, which kube-proxy routes its
            // ClusterIP to; without, nothing routes ClusterIPs.
            format!(
                "--endpoint-reconciler-type={}",
                if options.nodes { "lease" } else { "none" }
            ),
            format!("--tls-cert-file={}", pki.serving_cert.display()),
            format!("--tls-private-key-file={}", pki.serving_key.display()),
            format!("--client-ca-file={}", pki.ca_cert.display()),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".to_owned(),
            format!("--service-account-key-file={}", pki.sa_pub.display()),
            format!(
                "--service-account-signing-key-file={}",
                pki.sa_key.display()
            ),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            "--authorization-mode=RBAC".to_owned(),
            "--allow-privileged=true".to_owned(),
            "--profiling=false".to_owned(),
            format!("--cert-dir={}", dir.join("pki").display()),
        ];
        if !options.nodes {
            // No ServiceAccount controller runs and no kubelet asks for
            // tokens; pods the harness creates would wait for a `default`
            // ServiceAccount that never comes.
            apiserver_args.push("--disable-admission-plugins=ServiceAccount".to_owned());
        }
        // Written before kube-apiserver starts: with nodes it presents the
        // admin certificate to kubelets (logs, exec, port-forward).
        let kubeconfig = dir.join("kubeconfig");
        write_kubeconfig(
            &kubeconfig,
            &api_url,
            &pki.ca_cert,
            &pki.admin,
            &dir.join("pki"),
        )?;
        if options.nodes {
            // Reach kubelets by their Node's InternalIP: a Node's name is no
            // host name, and resolving it would ask the machine's DNS server.
            apiserver_args.push("--kubelet-preferred-address-types=InternalIP".to_owned());
            let pki_dir = dir.join("pki");
            apiserver_args.push(format!(
                "--kubelet-client-certificate={}",
                pki_dir.join("admin.crt").display()
            ));
            apiserver_args.push(format!(
                "--kubelet-client-key={}",
                pki_dir.join("admin.key").display()
            ));
        }
        let mut api = Command::new(&binaries.kube_apiserver);
        api.args(&apiserver_args);
        processes.push(ChildProcess::spawn(
            "kube-apiserver",
            api,
            &dir.join("kube-apiserver.log"),
            lifetime,
        )?);

        let mut plane = Self {
            state: ClusterState {
                dir: dir.clone(),
                kubeconfig: kubeconfig.clone(),
                api_url,
                etcd_url,
                pids: Vec::new(),
                network: network.info().clone(),
                kubernetes_version: versions::KUBERNETES.to_owned(),
                nodes: Vec::new(),
            },
            binaries,
            lifetime,
            apiserver_args,
            apiserver_restarts: AtomicU32::new(0),
            names: vec!["etcd", "kube-apiserver", "kube-controller-manager"],
            processes: Mutex::new(processes),
            network: Some(network),
        };
        plane.wait_ready(Duration::from_secs(90))?;
        if progress {
            eprintln!("kube-apiserver ready after {:.1?}", started.elapsed());
        }

        let mut controllers = "endpointslice-controller,endpointslice-mirroring-controller,garbage-collector-controller,namespace-controller".to_owned();
        if options.nodes {
            // Workloads as operators write them (Deployments), ServiceAccounts
            // and the kube-root-ca.crt ConfigMap a pod's token volume
            // projects, clean-up of pods whose node is gone, and the node
            // lifecycle controller, which lifts the not-ready taint a new
            // Node is registered with (nothing schedules onto it until then).
            controllers.push_str(",deployment-controller,replicaset-controller,serviceaccount-controller,root-ca-certificate-publisher-controller,pod-garbage-collector-controller,node-lifecycle-controller");
        }
        let mut kcm = Command::new(&plane.binaries.kube_controller_manager);
        kcm.arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!("--controllers={controllers}"))
            .arg(format!("--root-ca-file={}", pki.ca_cert.display()))
            .arg("--leader-elect=false")
            .arg("--secure-port=0")
            .arg("--use-service-account-credentials=false")
            .arg("--max-endpoints-per-slice=100");
        plane.processes_mut().push(ChildProcess::spawn(
            "kube-controller-manager",
            kcm,
            &dir.join("kube-controller-manager.log"),
            lifetime,
        )?);
        if options.nodes {
            let scheduler = node_build::node_binaries()?.kube_scheduler;
            if !scheduler.is_file() {
                bail!(
                    "{} is not built: run `cargo xtask cluster build --nodes`",
                    scheduler.display()
                );
            }
            let mut sched = Command::new(scheduler);
            sched
                .arg(format!("--kubeconfig={}", kubeconfig.display()))
                .arg("--leader-elect=false")
                // No metrics or health endpoint to serve: nothing scrapes it.
                .arg("--secure-port=0");
            plane.processes_mut().push(ChildProcess::spawn(
                "kube-scheduler",
                sched,
                &dir.join("kube-scheduler.log"),
                lifetime,
            )?);
            plane.names.push("kube-scheduler");
        }
        plane.state.pids = plane.pids();
        plane.write_state(&plane.state)?;
        Ok(plane)
    }

    fn processes_mut(&mut self) -> &mut Vec<ChildProcess> {
        // A poisoned lock only means a panic while it was held; the list is still valid.
        self.processes
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<ChildProcess>> {
        self.processes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The pids of the running processes, by name, in start order.
    fn pids(&self) -> Vec<(String, u32)> {
        self.lock()
            .iter()
            .zip(&self.names)
            .map(|(p, name)| ((*name).to_owned(), p.pid()))
            .collect()
    }

    /// Records the nodes started on this control plane in `state.json`, so
    /// `cluster down` stops them too.
    pub fn record_nodes(&mut self, nodes: Vec<node::NodeState>) -> anyhow::Result<()> {
        self.state.nodes = nodes;
        self.write_state(&self.state)
    }

    fn write_state(&self, state: &ClusterState) -> anyhow::Result<()> {
        fs::write(
            self.state.dir.join("state.json"),
            serde_json::to_vec_pretty(state)?,
        )?;
        Ok(())
    }

    /// Polls `/readyz` through kubectl until it answers `ok`.
    fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = {
                let mut processes = self.lock();
                for p in processes.iter_mut() {
                    p.check_running()?;
                }
                processes
                    .get(APISERVER)
                    .map(|p| p.log().to_owned())
                    .unwrap_or_else(|| self.state.dir.join("kube-apiserver.log"))
            };
            let out = self.kubectl().args(["get", "--raw=/readyz"]).output()?;
            if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok" {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "kube-apiserver not ready after {timeout:?}; last lines of {}:\n{}",
                    log.display(),
                    log_tail(&log, 20)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Stops kube-apiserver (SIGTERM, SIGKILL after 5 s) and waits until it
    /// has exited; etcd, the controller manager and the pod network keep
    /// running, and clients of the API see connection errors until
    /// [`ControlPlane::start_apiserver`]. Fails if it is already stopped.
    /// Blocks the calling thread.
    pub fn stop_apiserver(&self) -> anyhow::Result<()> {
        let mut processes = self.lock();
        let api = processes
            .get_mut(APISERVER)
            .context("the control plane has no kube-apiserver process")?;
        api.check_running()
            .context("kube-apiserver is not running, so it cannot be stopped")?;
        api.stop(Duration::from_secs(5));
        Ok(())
    }

    /// Starts kube-apiserver again after [`ControlPlane::stop_apiserver`],
    /// with the same flags (so the same port, certificates and etcd) and
    /// waits until `/readyz` says `ok`. Its log goes to
    /// `kube-apiserver-restart-<n>.log` next to the first one, and
    /// `state.json` records its pid (while [`ControlPlane::state`] keeps the
    /// pids at start). Fails if it is running. Blocks the calling thread.
    pub fn start_apiserver(&self) -> anyhow::Result<()> {
        {
            let mut processes = self.lock();
            let api = processes
                .get_mut(APISERVER)
                .context("the control plane has no kube-apiserver process")?;
            if api.check_running().is_ok() {
                bail!("kube-apiserver is running already; stop_apiserver first");
            }
            let n = self.apiserver_restarts.fetch_add(1, Ordering::Relaxed) + 1;
            let mut cmd = Command::new(&self.binaries.kube_apiserver);
            cmd.args(&self.apiserver_args);
            *api = ChildProcess::spawn(
                "kube-apiserver",
                cmd,
                &self
                    .state
                    .dir
                    .join(format!("kube-apiserver-restart-{n}.log")),
                self.lifetime,
            )?;
        }
        let state = ClusterState {
            pids: self.pids(),
            ..self.state.clone()
        };
        self.write_state(&state)?;
        self.wait_ready(Duration::from_secs(90))
    }

    /// A kubectl command against this cluster.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(&self.binaries.kubectl);
        cmd.arg(format!("--kubeconfig={}", self.state.kubeconfig.display()));
        cmd
    }

    /// The binaries it runs (and the kubectl that talks to it).
    pub fn binaries(&self) -> &Binaries {
        &self.binaries
    }

    /// What `state.json` records.
    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    /// The pod network.
    pub fn network(&self) -> &PodNetwork {
        self.network
            .as_ref()
            .expect("the network is present until release() consumes self")
    }

    /// Fails if any control-plane process has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        for p in self.processes_mut() {
            p.check_running()?;
        }
        Ok(())
    }

    /// Leaves a detached control plane running (for `cluster up`).
    pub fn release(mut self) -> ClusterState {
        for p in self.processes_mut().drain(..) {
            p.release();
        }
        if let Some(network) = self.network.take() {
            network.release();
        }
        self.state.clone()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // Reverse start order: controllers first, etcd last.
        while let Some(mut p) = self.processes_mut().pop() {
            p.stop(Duration::from_secs(5));
        }
    }
}

/// Writes an admin kubeconfig that refers to the PKI files by path.
fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca: &Path,
    admin: &pki::ClientCert,
    pki_dir: &Path,
) -> anyhow::Result<()> {
    let cert = pki_dir.join("admin.crt");
    let key = pki_dir.join("admin.key");
    fs::write(&cert, &admin.cert_pem)?;
    fs::write(&key, &admin.key_pem)?;
    // JSON is YAML, so kubectl and kube-rs read it as a kubeconfig.
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "eds-local", "cluster": {"server": server, "certificate-authority": ca}}],
        "users": [{"name": "eds-admin", "user": {"client-certificate": cert, "client-key": key}}],
        "contexts": [{"name": "eds-local", "context": {"cluster": "eds-local", "user": "eds-admin"}}],
        "current-context": "eds-local",
    });
    fs::write(path, serde_json::to_vec_pretty(&config)?)?;
    Ok(())
}

/// Resident memory of a process in KiB, from `/proc/<pid>/status`.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

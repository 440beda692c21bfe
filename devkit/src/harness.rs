//! The test-support harness: one shared local control plane per test
//! binary, and a small vocabulary for namespaces, zoned Nodes, Services and
//! Pods, with the harness playing the kubelet.
//!
//! ```text
//!  TestCluster::shared()            one per test binary (or attach: EDS_CLUSTER_DIR)
//!  TestCluster::owned()             one per test binary, never attached: may be disturbed
//!    .stop_apiserver() / .start_apiserver()   an API server outage (owned clusters only)
//!    .namespace("slices")           a fresh namespace per test
//!      .node("node-a", "zone-a")    Node labelled topology.kubernetes.io/zone
//!      .service(..)                 Service with a selector and ports
//!      .pod(PodSpec::new(..))       Pod bound to a Node (no scheduler)
//!        .set_ready(true)           status subresource: Running, pod IP, Ready
//!        .start_backend(..)         echo backend listening on the pod IP
//!        .delete_gracefully(..)     terminating for the grace period, then gone
//! ```
//!
//! There is no kubelet: pod status comes from [`TestPod::set_ready`], and a
//! graceful deletion is finished by a task that force-deletes the pod when
//! the grace period ends. Not a general Kubernetes client library: it builds
//! exactly the objects the tests need.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::json;

use crate::cluster::{ClusterState, ControlPlane};
use crate::netns::PodNetwork;
use crate::process::{ChildProcess, Lifetime};

/// The zone label the EndpointSlice controller copies into endpoints.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// A control plane the tests of one binary share.
#[derive(Debug)]
pub struct TestCluster {
    state: ClusterState,
    network: Option<PodNetwork>,
    // Held for its Drop; statics never drop, so the parent-death signal ends it.
    plane: Option<ControlPlane>,
}

static SHARED: OnceLock<Result<TestCluster, String>> = OnceLock::new();
static OWNED: OnceLock<Result<TestCluster, String>> = OnceLock::new();
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The workspace's `target/` directory, where per-run cluster dirs live.
fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target")
}

impl TestCluster {
    /// The cluster for this test binary: attaches to the one in
    /// `$EDS_CLUSTER_DIR` (from `cargo xtask cluster up`) if set, otherwise
    /// starts one tied to this process.
    pub fn shared() -> anyhow::Result<&'static TestCluster> {
        SHARED
            .get_or_init(|| Self::start().map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow::anyhow!("the shared test cluster failed to start: {e}"))
    }

    /// A cluster this test binary starts and owns even when
    /// `$EDS_CLUSTER_DIR` is set, for tests that disturb the control plane
    /// (stopping kube-apiserver) and so must never touch one others share.
    /// Costs a cluster start; a binary should use either this or
    /// [`TestCluster::shared`], not both.
    pub fn owned() -> anyhow::Result<&'static TestCluster> {
        OWNED
            .get_or_init(|| Self::start_owned().map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow::anyhow!("the owned test cluster failed to start: {e}"))
    }

    fn start() -> anyhow::Result<Self> {
        if let Some(dir) = std::env::var_os("EDS_CLUSTER_DIR") {
            let dir = PathBuf::from(dir);
            let state = ClusterState::load(&dir)?.with_context(|| {
                format!(
                    "EDS_CLUSTER_DIR={} holds no running cluster; run `cargo xtask cluster up`",
                    dir.display()
                )
            })?;
            let network = PodNetwork::attach(state.network.clone())?;
            return Ok(Self {
                state,
                network: Some(network),
                plane: None,
            });
        }
        Self::start_owned()
    }

    fn start_owned() -> anyhow::Result<Self> {
        let root = target_dir().join("eds-clusters");
        remove_stale(&root);
        let dir = root.join(format!("test-{}", std::process::id()));
        let plane = ControlPlane::start(&dir, Lifetime::Tied, false)?;
        Ok(Self {
            state: plane.state().clone(),
            network: None,
            plane: Some(plane),
        })
    }

    /// What the control plane recorded about itself.
    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    /// The pod network.
    pub fn network(&self) -> &PodNetwork {
        match (&self.plane, &self.network) {
            (Some(plane), _) => plane.network(),
            (None, Some(network)) => network,
            (None, None) => unreachable!("a TestCluster always has a plane or an attached network"),
        }
    }

    /// The control plane, if this process owns it; an attached cluster
    /// belongs to whoever ran `cargo xtask cluster up` and to every test
    /// sharing it, so it cannot be disturbed from here.
    fn owned_plane(&'static self, what: &str) -> anyhow::Result<&'static ControlPlane> {
        self.plane.as_ref().with_context(|| {
            format!(
                "cannot {what}: this test is attached to the shared cluster in {} \
                 (EDS_CLUSTER_DIR), which other tests use; use TestCluster::owned() \
                 or run without EDS_CLUSTER_DIR",
                self.state.dir.display()
            )
        })
    }

    /// Stops kube-apiserver of an owned cluster and waits until it has
    /// exited; etcd, the controller manager and the pod network keep running.
    /// Fails on an attached cluster (see [`TestCluster::owned`]).
    pub async fn stop_apiserver(&'static self) -> anyhow::Result<()> {
        let plane = self.owned_plane("stop kube-apiserver")?;
        tokio::task::spawn_blocking(move || plane.stop_apiserver()).await?
    }

    /// Starts the stopped kube-apiserver of an owned cluster again (same
    /// flags, port and data) and waits until it is ready. Kube clients made
    /// before keep working: they reconnect on their next request.
    pub async fn start_apiserver(&'static self) -> anyhow::Result<()> {
        let plane = self.owned_plane("start kube-apiserver")?;
        tokio::task::spawn_blocking(move || plane.start_apiserver()).await?
    }

    /// The admin kubeconfig path.
    pub fn kubeconfig(&self) -> &Path {
        &self.state.kubeconfig
    }

    /// A kube config for the admin identity.
    pub async fn config(&self) -> anyhow::Result<Config> {
        let kubeconfig = Kubeconfig::read_from(&self.state.kubeconfig)?;
        Ok(Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?)
    }

    /// An admin client. Create one per test: a client belongs to the tokio
    /// runtime that made it, and each `#[tokio::test]` has its own.
    pub async fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::try_from(self.config().await?)?)
    }

    /// A new namespace named `<prefix>-<pid>-<n>`.
    pub async fn namespace(&'static self, prefix: &str) -> anyhow::Result<TestNamespace> {
        let client = self.client().await?;
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        Ok(TestNamespace {
            name,
            client,
            cluster: self,
        })
    }

    /// Creates a Node in `zone` unless it exists. Nodes are cluster-scoped,
    /// so tests share them; the name should say which zone it is in.
    pub async fn node(&self, client: &Client, name: &str, zone: &str) -> anyhow::Result<()> {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {ZONE_LABEL: zone}},
        }))?;
        match Api::<Node>::all(client.clone())
            .create(&PostParams::default(), &node)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(e) => Err(e).with_context(|| format!("creating node {name}")),
        }
    }
}

/// Removes cluster directories of test runs whose process is gone.
fn remove_stale(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix("test-")
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && !crate::process::alive(pid)
        {
            if let Ok(Some(state)) = ClusterState::load(&entry.path()) {
                state.stop();
            }
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A namespace one test owns.
#[derive(Clone)]
pub struct TestNamespace {
    name: String,
    client: Client,
    cluster: &'static TestCluster,
}

// kube's Client has no Debug; show what identifies the object instead.
impl std::fmt::Debug for TestNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestNamespace")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for TestPod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPod")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("ip", &self.ip)
            .finish_non_exhaustive()
    }
}

/// A Service port: name, port, and target port (number or name).
#[derive(Debug, Clone)]
pub struct ServicePortSpec {
    /// Port name.
    pub name: String,
    /// Service port.
    pub port: u16,
    /// `targetPort`: a number or a container port name.
    pub target: Target,
}

/// A Service's `targetPort`.
#[derive(Debug, Clone)]
pub enum Target {
    /// A port number.
    Number(u16),
    /// A named container port.
    Name(String),
}

/// What a test Pod looks like.
#[derive(Debug, Clone)]
pub struct PodSpec {
    /// Pod name.
    pub name: String,
    /// Node the pod is bound to.
    pub node: String,
    /// Labels (include the Service's selector).
    pub labels: BTreeMap<String, String>,
    /// Named container ports (name, number).
    pub ports: Vec<(String, u16)>,
}

impl PodSpec {
    /// A pod with label `app=<app>` on `node`.
    pub fn new(name: &str, app: &str, node: &str) -> Self {
        Self {
            name: name.to_owned(),
            node: node.to_owned(),
            labels: BTreeMap::from([("app".to_owned(), app.to_owned())]),
            ports: Vec::new(),
        }
    }

    /// Adds a named container port.
    pub fn port(mut self, name: &str, number: u16) -> Self {
        self.ports.push((name.to_owned(), number));
        self
    }

    /// Adds a label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_owned(), value.to_owned());
        self
    }
}

impl TestNamespace {
    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The admin client this namespace was made with.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The cluster.
    pub fn cluster(&self) -> &'static TestCluster {
        self.cluster
    }

    /// Ensures a Node in `zone` (see [`TestCluster::node`]).
    pub async fn node(&self, name: &str, zone: &str) -> anyhow::Result<()> {
        self.cluster.node(&self.client, name, zone).await
    }

    /// Creates a Service selecting `app=<app>`, with `annotations`.
    pub async fn service(
        &self,
        name: &str,
        app: &str,
        ports: &[ServicePortSpec],
        annotations: &[(&str, &str)],
    ) -> anyhow::Result<Service> {
        let ports: Vec<_> = ports
            .iter()
            .map(|p| {
                let target = match &p.target {
                    Target::Number(n) => json!(n),
                    Target::Name(s) => json!(s),
                };
                json!({"name": p.name, "port": p.port, "targetPort": target, "protocol": "TCP"})
            })
            .collect();
        let annotations: BTreeMap<&str, &str> = annotations.iter().copied().collect();
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": self.name, "annotations": annotations},
            "spec": {"selector": {"app": app}, "ports": ports},
        }))?;
        Api::<Service>::namespaced(self.client.clone(), &self.name)
            .create(&PostParams::default(), &svc)
            .await
            .with_context(|| format!("creating service {}/{name}", self.name))
    }

    /// Creates a Pod bound to its node (there is no scheduler) and assigns it
    /// an IP in the pod network. It is not ready until [`TestPod::set_ready`].
    pub async fn pod(&self, spec: PodSpec) -> anyhow::Result<TestPod> {
        let ports: Vec<_> = spec
            .ports
            .iter()
            .map(|(name, port)| json!({"name": name, "containerPort": port, "protocol": "TCP"}))
            .collect();
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": spec.name, "namespace": self.name, "labels": spec.labels},
            "spec": {
                "nodeName": spec.node,
                "containers": [{"name": "app", "image": "eds.rs/echo-backend:local", "ports": ports}],
            },
        }))?;
        Api::<Pod>::namespaced(self.client.clone(), &self.name)
            .create(&PostParams::default(), &pod)
            .await
            .with_context(|| format!("creating pod {}/{}", self.name, spec.name))?;
        let ip = self.cluster.network().allocate_ip()?;
        Ok(TestPod {
            name: spec.name,
            namespace: self.name.clone(),
            ip,
            client: self.client.clone(),
            cluster: self.cluster,
        })
    }

    /// Removes every pod in the namespace at once (grace period 0: there is
    /// no kubelet to finish a graceful deletion, and the namespace controller
    /// would leave them terminating), frees the IPs of `pods`, and deletes
    /// the namespace. For tests with many pods; one API call for all of them.
    pub async fn delete_with_pods(self, pods: &[TestPod]) -> anyhow::Result<()> {
        Api::<Pod>::namespaced(self.client.clone(), &self.name)
            .delete_collection(
                &DeleteParams::default().grace_period(0),
                &kube::api::ListParams::default(),
            )
            .await
            .with_context(|| format!("deleting the pods of namespace {}", self.name))?;
        for pod in pods {
            self.cluster.network().release_ip(pod.ip)?;
        }
        self.delete().await
    }

    /// Deletes the namespace (the namespace controller finishes it).
    pub async fn delete(self) -> anyhow::Result<()> {
        Api::<Namespace>::all(self.client.clone())
            .delete(&self.name, &DeleteParams::default())
            .await?;
        Ok(())
    }
}

/// A pod created by the harness, with its IP in the pod network.
#[derive(Clone)]
pub struct TestPod {
    name: String,
    namespace: String,
    ip: Ipv4Addr,
    client: Client,
    cluster: &'static TestCluster,
}

impl TestPod {
    /// The pod's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pod's IP.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    fn api(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Plays the kubelet: phase Running, the pod IP, and the Ready condition.
    pub async fn set_ready(&self, ready: bool) -> anyhow::Result<()> {
        let status = if ready { "True" } else { "False" };
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let patch = json!({
            "status": {
                "phase": "Running",
                "podIP": self.ip.to_string(),
                "podIPs": [{"ip": self.ip.to_string()}],
                "conditions": [
                    {"type": "Ready", "status": status, "lastTransitionTime": now},
                    {"type": "ContainersReady", "status": status, "lastTransitionTime": now},
                ],
            }
        });
        self.api()
            .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .with_context(|| {
                format!("setting pod {}/{} ready={ready}", self.namespace, self.name)
            })?;
        Ok(())
    }

    /// Deletes the pod with a grace period: it stays, terminating, until the
    /// period ends, when the returned task (the harness's kubelet) removes it
    /// for good and frees its IP.
    pub async fn delete_gracefully(
        &self,
        grace: Duration,
    ) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<()>>> {
        let params = DeleteParams {
            grace_period_seconds: Some(u32::try_from(grace.as_secs()).unwrap_or(u32::MAX).max(1)),
            ..DeleteParams::default()
        };
        self.api()
            .delete(&self.name, &params)
            .await
            .with_context(|| format!("deleting pod {}/{}", self.namespace, self.name))?;
        let pod = self.clone();
        Ok(tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            pod.delete_now().await
        }))
    }

    /// Removes the pod at once (grace period 0) and frees its IP.
    pub async fn delete_now(&self) -> anyhow::Result<()> {
        match self
            .api()
            .delete(&self.name, &DeleteParams::default().grace_period(0))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e).context("force-deleting pod"),
        }
        self.cluster.network().release_ip(self.ip)
    }

    /// Starts an echo backend listening on `<pod IP>:port` inside the pod
    /// network, and waits until it accepts connections.
    pub async fn start_backend(
        &self,
        port: u16,
        zone: &str,
        opts: &EchoOptions,
    ) -> anyhow::Result<Backend> {
        let network = self.cluster.network();
        network.verify_route(self.ip)?;
        let addr = SocketAddr::from((self.ip, port));
        let mut cmd = network.command(echo_backend_path()?);
        cmd.arg("--listen")
            .arg(addr.to_string())
            .arg("--pod")
            .arg(&self.name)
            .arg("--zone")
            .arg(zone)
            .arg("--latency-ms")
            .arg(opts.latency_ms.to_string())
            .arg("--error-rate")
            .arg(opts.error_rate.to_string())
            .arg("--slow-start-secs")
            .arg(opts.slow_start_secs.to_string());
        if let Some(f) = &opts.fail_file {
            cmd.arg("--fail-file").arg(f);
        }
        if let Some(r) = opts.refuse {
            cmd.arg("--refuse").arg(match r {
                Refuse::RefusedStream => "refused-stream",
                Refuse::Goaway => "goaway",
                Refuse::NeverAnswer => "never-answer",
            });
        }
        let log = self
            .cluster
            .state()
            .dir
            .join(format!("backend-{}-{}.log", self.name, self.ip));
        let mut process = ChildProcess::spawn(
            &format!("echo backend {}", self.name),
            cmd,
            &log,
            Lifetime::Tied,
        )?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                break;
            }
            process.check_running()?;
            if Instant::now() > deadline {
                bail!(
                    "echo backend for {} did not listen on {addr} within 20 s",
                    self.name
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Backend { addr, process })
    }
}

/// How an echo backend behaves.
#[derive(Debug, Clone, Default)]
pub struct EchoOptions {
    /// Added latency per request.
    pub latency_ms: u64,
    /// Share of requests answered with UNAVAILABLE, 0..=1.
    pub error_rate: f64,
    /// For this long after start, latency is higher, falling linearly to normal.
    pub slow_start_secs: u64,
    /// While this file exists, the backend fails every request with UNAVAILABLE.
    pub fail_file: Option<PathBuf>,
    /// Process nothing: refuse every stream this way (not a gRPC server then).
    pub refuse: Option<Refuse>,
}

/// How a refusing echo backend turns streams away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refuse {
    /// RST_STREAM(REFUSED_STREAM) on every stream.
    RefusedStream,
    /// GOAWAY with last stream id 0 on every connection, before any stream.
    Goaway,
    /// Accept every stream and never answer; the log says which the
    /// client reset ("stream reset by the client").
    NeverAnswer,
}

/// A running echo backend; stopped when dropped.
#[derive(Debug)]
pub struct Backend {
    addr: SocketAddr,
    process: ChildProcess,
}

impl Backend {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its output (stdout and stderr).
    pub fn log(&self) -> &Path {
        self.process.log()
    }

    /// Stops it.
    pub fn stop(mut self) {
        self.process.stop(Duration::from_secs(2));
    }
}

/// The echo backend binary: `$EDS_ECHO_BACKEND`, or next to the running test
/// binary's `deps/` directory, where cargo puts the package's binaries.
pub fn echo_backend_path() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("EDS_ECHO_BACKEND") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    let candidates = [
        exe.parent().map(|d| d.join("echo-backend")),
        exe.parent()
            .and_then(Path::parent)
            .map(|d| d.join("echo-backend")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
        .context("echo-backend binary not found next to the test binary; build it (`cargo build -p eds-tests`) or set EDS_ECHO_BACKEND")
}

/// Polls `check` every 100 ms until it returns `Some`, or fails after `timeout`
/// with the last state it saw. For waiting on controllers, never for timing.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Result<T, String>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = check().await?;
        match last {
            Ok(v) => return Ok(v),
            Err(state) if Instant::now() > deadline => {
                bail!("timed out after {timeout:?} waiting for {what}; last seen: {state}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

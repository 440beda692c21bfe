//! The product installed and run the way operators and service teams do,
//! against any cluster with three zoned worker nodes that a kubeconfig
//! reaches: the local node cluster (`tests/tests/node_e2e.rs`, `cargo
//! xtask cluster up --nodes 3 --install`) and kind (`cargo xtask e2e
//! --cluster kind`) run these same stages; only creating the cluster and
//! loading the images differ.
//!
//! ```text
//!  build_binaries ─> app_images (OCI archives) ─> the cluster's nodes (imported / kind load)
//!  run(target):
//!   1 install_chart      helm install deploy/helm/eds-server, image overridden, pullPolicy Never;
//!                        Ready through its probes, ServiceAccount token, securityContext read
//!                        from the kernel (/proc of the container's process)
//!   2 deploy_echo        echo Deployment, 2 pods per zone, gRPC readiness probe (grpc.health.v1)
//!   3 traffic_through_disruption  lb-client's example as a pod: rollout restart of the backends
//!                        and deletion of its eds-server replica, 0 failed requests
//!   4 grpc_go            the stock grpc-go interop client as a pod, xds:///echo.demo:8080
//!   5 edsctl             discovery through a real port-forward; `diff` clean on each replica
//!   6 dns_fallback       eds-server scaled to 0: CoreDNS and the ClusterIP carry it
//! ```
//!
//! Everything goes through the Kubernetes API (kubectl, helm, edsctl, and
//! the API server's pod proxy for eds-server's admin port), so nothing here
//! needs a route into the pod network; only the confinement check looks
//! inside a node ([`NodeAccess`]).
//!
//! What this is not: a cluster (callers bring one) nor a test (the callers
//! decide when it runs; every stage fails with what it saw).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::Value;

use crate::cluster::workload::{
    Confinement, cargo_build, pods_and_events, run_kubectl, wait_for, workspace,
};
use crate::image;

/// The tag of every image built here.
pub const TAG: &str = "e2e";
/// The worker nodes' zones, one node each: the local cluster's
/// ([`crate::cluster::node::zone_of`]) and kind's config agree on them.
pub const ZONES: [&str; 3] = ["zone-a", "zone-b", "zone-c"];
/// Echo pods: two per zone.
pub const ECHO_REPLICAS: usize = 6;
/// eds-server's image repository (its tag is [`TAG`]).
pub const EDS_IMAGE: &str = "docker.io/eds-rs/eds-server";
const ECHO_IMAGE: &str = "docker.io/eds-rs/echo-backend:e2e";
const CLIENT_IMAGE: &str = "docker.io/eds-rs/echo-client:e2e";
const GRPC_GO_IMAGE: &str = "docker.io/eds-rs/grpc-go-client:e2e";
const CLIENT_PATH: &str = "/usr/local/bin/echo-client";
const GRPC_GO_PATH: &str = "/usr/local/bin/grpc-go-client";
/// How clients in pods reach eds-server: its Service, through cluster DNS
/// and kube-proxy, as the chart's NOTES tell users.
const XDS_SERVICE: &str = "eds-server.eds-system.svc.cluster.local:18000";
const EDS_SELECTOR: &str = "app.kubernetes.io/name=eds-server";

/// The project's binaries the images hold, and edsctl.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// eds-server.
    pub eds_server: PathBuf,
    /// The echo backend.
    pub echo_backend: PathBuf,
    /// lb-client's documented example client.
    pub echo_client: PathBuf,
    /// edsctl (runs where the test runs, as an SRE's would).
    pub edsctl: PathBuf,
    /// The grpc-go interop client.
    pub grpc_go: PathBuf,
}

/// Builds (or finds, when up to date) every binary the stages need.
pub fn build_binaries() -> anyhow::Result<Binaries> {
    // Three builds, each the selection another command makes too (`cargo
    // xtask image`, `cargo xtask e2e`, `cargo build -p edsctl`), so each
    // shares their artifacts instead of resolving features anew.
    let debug = cargo_build(&image::IMAGE_BINARIES)?;
    cargo_build(&["-p", "lb-client", "--examples"])?;
    cargo_build(&["-p", "edsctl"])?;
    Ok(Binaries {
        eds_server: debug.join("eds-server"),
        echo_backend: debug.join("echo-backend"),
        echo_client: debug.join("examples/echo_client"),
        edsctl: debug.join("edsctl"),
        grpc_go: crate::interop::ensure_grpc_go_client(false)?,
    })
}

/// The four application images as OCI archives in `dir`: eds-server, the
/// echo backend, the example client and the grpc-go client.
pub fn app_images(dir: &Path, bins: &Binaries) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let apps = [
        (
            "eds-server",
            image::eds_server_image(&bins.eds_server, &format!("{EDS_IMAGE}:{TAG}"))?,
        ),
        (
            "echo-backend",
            image::echo_backend_image(&bins.echo_backend, ECHO_IMAGE)?,
        ),
        (
            "echo-client",
            image::app_image(&bins.echo_client, CLIENT_PATH, CLIENT_IMAGE)?,
        ),
        (
            "grpc-go-client",
            image::app_image(&bins.grpc_go, GRPC_GO_PATH, GRPC_GO_IMAGE)?,
        ),
    ];
    let mut tars = Vec::new();
    for (name, app) in &apps {
        let tar = dir.join(format!("{name}.tar"));
        image::write_oci_archive(app, &tar)?;
        tars.push(tar);
    }
    Ok(tars)
}

/// How to look inside a node: enough to read what the kernel enforces on a
/// container's process.
pub trait NodeAccess: std::fmt::Debug {
    /// `/proc/<pid>/<file>` of the process behind `container_id`
    /// (`containerd://<id>`) on node `node`.
    fn proc_file(&self, node: &str, container_id: &str, file: &str) -> anyhow::Result<String>;
}

/// A cluster to run the stages on.
#[derive(Debug)]
pub struct Target<'a> {
    /// kubectl (the pinned one).
    pub kubectl: PathBuf,
    /// Helm.
    pub helm: PathBuf,
    /// The admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// Manifests written here.
    pub work_dir: PathBuf,
    /// Looks inside nodes.
    pub nodes: &'a dyn NodeAccess,
}

impl Target<'_> {
    /// kubectl with `args`; stdout, or an error with all it said.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = Command::new(&self.kubectl);
        cmd.arg(format!("--kubeconfig={}", self.kubeconfig.display()));
        run_kubectl(cmd, args)
    }

    fn json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl(&all)?)
            .with_context(|| format!("kubectl {} -o json", args.join(" ")))
    }

    fn apply(&self, name: &str, yaml: &str) -> anyhow::Result<()> {
        let file = self.work_dir.join(name);
        std::fs::write(&file, yaml).with_context(|| format!("writing {}", file.display()))?;
        self.kubectl(&["apply", "-f", file.to_str().context("UTF-8 path")?])
            .map(drop)
    }

    /// Pods and events: what to print when something does not come up.
    pub fn diagnose(&self) -> String {
        pods_and_events(|args| self.kubectl(args))
    }

    fn pods(&self, ns: &str, selector: &str) -> anyhow::Result<Vec<Value>> {
        let list = self.json(&["-n", ns, "get", "pods", "-l", selector])?;
        Ok(list["items"].as_array().cloned().unwrap_or_default())
    }

    /// Ready pods matching `selector` that are not being deleted.
    fn ready_pods(&self, ns: &str, selector: &str) -> anyhow::Result<Vec<Value>> {
        Ok(self
            .pods(ns, selector)?
            .into_iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null() && is_ready(p))
            .collect())
    }

    fn phase(&self, ns: &str, pod: &str) -> anyhow::Result<String> {
        Ok(self
            .kubectl(&[
                "-n",
                ns,
                "get",
                "pod",
                pod,
                "-o",
                "jsonpath={.status.phase}",
            ])?
            .trim()
            .to_owned())
    }

    /// Waits for a pod to end; its phase and its stdout.
    fn finished(&self, ns: &str, pod: &str, timeout: Duration) -> anyhow::Result<(String, String)> {
        let phase = wait_for(
            &format!("pod {ns}/{pod} finished"),
            timeout,
            || {
                let phase = self.phase(ns, pod)?;
                Ok(match phase.as_str() {
                    "Succeeded" | "Failed" => Ok(phase),
                    _ => Err(phase),
                })
            },
            || self.diagnose(),
        )?;
        let logs = self.kubectl(&["-n", ns, "logs", pod])?;
        Ok((phase, logs))
    }

    /// GET on an eds-server pod's admin port through the API server's pod
    /// proxy (so the caller needs no route to pods).
    fn admin_get(&self, pod: &str, path: &str) -> anyhow::Result<String> {
        self.kubectl(&[
            "get",
            "--raw",
            &format!("/api/v1/namespaces/eds-system/pods/{pod}:18001/proxy{path}"),
        ])
    }

    /// The eds-server replica whose `/debug/clients` lists `node_id`.
    fn replica_serving(&self, node_id: &str) -> anyhow::Result<Option<String>> {
        for pod in self.ready_pods("eds-system", EDS_SELECTOR)? {
            let body = self.admin_get(name(&pod), "/debug/clients")?;
            if body.contains(&format!("\"{node_id}\"")) {
                return Ok(Some(name(&pod).to_owned()));
            }
        }
        Ok(None)
    }

    fn edsctl(&self, bin: &Path, args: &[&str]) -> anyhow::Result<std::process::Output> {
        Command::new(bin)
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(args)
            .output()
            .context("running edsctl")
    }
}

fn name(pod: &Value) -> &str {
    pod["metadata"]["name"].as_str().unwrap_or("?")
}

fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// The echo backend over the zones: two pods per zone (the scheduler must
/// spread them), a gRPC readiness probe against its health service, and a
/// preStop pause so the endpoint's removal reaches clients before the
/// server stops taking requests, as production services do.
fn echo_manifest() -> String {
    format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{ name: demo }}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{ name: echo, namespace: demo }}
spec:
  replicas: {ECHO_REPLICAS}
  selector:
    matchLabels: {{ app: echo }}
  template:
    metadata:
      labels: {{ app: echo }}
    spec:
      automountServiceAccountToken: false
      terminationGracePeriodSeconds: 15
      topologySpreadConstraints:
        - maxSkew: 1
          topologyKey: topology.kubernetes.io/zone
          whenUnsatisfiable: DoNotSchedule
          labelSelector:
            matchLabels: {{ app: echo }}
      securityContext:
        runAsNonRoot: true
        seccompProfile: {{ type: RuntimeDefault }}
      containers:
        - name: echo
          image: {ECHO_IMAGE}
          imagePullPolicy: Never
          # Replies carry the node's name where a zone would go: the
          # downward API cannot read the node's zone label.
          args: ["--listen=0.0.0.0:8080", "--pod=$(POD_NAME)", "--zone=$(NODE_NAME)"]
          env:
            - name: POD_NAME
              valueFrom: {{ fieldRef: {{ fieldPath: metadata.name }} }}
            - name: NODE_NAME
              valueFrom: {{ fieldRef: {{ fieldPath: spec.nodeName }} }}
          ports:
            - {{ name: grpc, containerPort: 8080 }}
          readinessProbe:
            grpc: {{ port: 8080 }}
            periodSeconds: 1
            failureThreshold: 1
          lifecycle:
            preStop:
              sleep: {{ seconds: 3 }}
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities: {{ drop: ["ALL"] }}
---
apiVersion: v1
kind: Service
metadata: {{ name: echo, namespace: demo }}
spec:
  selector: {{ app: echo }}
  ports:
    - {{ name: grpc, port: 8080, targetPort: grpc }}
"#
    )
}

/// A pod that runs `image` once in `zone` (pinned there by the node label),
/// confined as the chart's pods are. `container` is the rest of its
/// container (args, env, mounts) and `spec` the rest of its spec (volumes),
/// as YAML lines at their indentation.
fn run_once_pod(name: &str, zone: &str, image: &str, container: &str, spec: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{ name: {name}, namespace: demo }}
spec:
  restartPolicy: Never
  automountServiceAccountToken: false
  nodeSelector: {{ topology.kubernetes.io/zone: {zone} }}
  securityContext:
    runAsNonRoot: true
    seccompProfile: {{ type: RuntimeDefault }}
  containers:
    - name: client
      image: {image}
      imagePullPolicy: Never
      securityContext:
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        capabilities: {{ drop: ["ALL"] }}
{container}{spec}"#
    )
}

/// lb-client's example run once in `zone` (told by `EDS_ZONE`), its JSON
/// report on stdout.
fn client_pod(name: &str, zone: &str, requests: u64, rate: u64) -> String {
    let container = format!(
        r#"      args: ["--service=echo.demo:8080", "--requests={requests}", "--rate={rate}",
             "--concurrency=4", "--wait-secs=30", "--output=json"]
      env:
        - {{ name: EDS_XDS_SERVER, value: "http://{XDS_SERVICE}" }}
        - {{ name: EDS_ZONE, value: {zone} }}
"#
    );
    run_once_pod(name, zone, CLIENT_IMAGE, &container, "")
}

/// The grpc-go interop client as a pod: its bootstrap from a ConfigMap,
/// `xds:///echo.demo:8080`, one JSON line per call on stdout.
fn grpc_go_manifest(zone: &str, count: u32) -> anyhow::Result<String> {
    let bootstrap = crate::interop::grpc_bootstrap(XDS_SERVICE, "grpc-go-pod", Some(zone));
    let bootstrap = serde_json::to_string(&bootstrap)?;
    let container = format!(
        r#"      args: ["--target=echo.demo:8080", "--count={count}", "--rate=50"]
      env:
        - {{ name: GRPC_XDS_BOOTSTRAP, value: /etc/xds/bootstrap.json }}
      volumeMounts:
        - {{ name: bootstrap, mountPath: /etc/xds, readOnly: true }}
"#
    );
    let volumes =
        "  volumes:\n    - name: bootstrap\n      configMap: { name: grpc-go-bootstrap }\n";
    Ok(format!(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {{ name: grpc-go-bootstrap, namespace: demo }}
data:
  bootstrap.json: '{bootstrap}'
---{}"#,
        run_once_pod("grpc-go", zone, GRPC_GO_IMAGE, &container, volumes)
    ))
}

/// The example's `--output json` report.
#[derive(Debug, serde::Deserialize)]
struct Report {
    requests: u64,
    ok: u64,
    failed: u64,
    by_pod: BTreeMap<String, Tally>,
    errors: BTreeMap<String, u64>,
    client: Value,
}

#[derive(Debug, serde::Deserialize)]
struct Tally {
    zone: String,
    replies: u64,
}

/// The JSON report in a client pod's log (its whole stdout; `kubectl logs`
/// interleaves stderr's warnings, which are lines of their own).
fn report(phase: &str, logs: &str) -> anyhow::Result<Report> {
    let start = if logs.starts_with('{') {
        Some(0)
    } else {
        logs.find("\n{").map(|i| i + 1)
    }
    .with_context(|| format!("no JSON report in the client's output ({phase}):\n{logs}"))?;
    let end = logs[start..]
        .find("\n}")
        .map_or(logs.len(), |i| start + i + 2);
    serde_json::from_str(&logs[start..end])
        .with_context(|| format!("the client's report ({phase}):\n{logs}"))
}

/// `helm install` of the chart with the local image, never pulled. Extra
/// `--set` values come from `$EDS_E2E_HELM_SET` (comma-separated), so a
/// value can be broken on purpose to watch a stage fail.
pub fn helm_install(target: &Target<'_>) -> anyhow::Result<()> {
    let chart = workspace().join("deploy/helm/eds-server");
    let mut sets = vec![
        format!("image.repository={EDS_IMAGE}"),
        format!("image.tag={TAG}"),
        "image.pullPolicy=Never".to_owned(),
    ];
    if let Ok(extra) = std::env::var("EDS_E2E_HELM_SET") {
        sets.extend(
            extra
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
        );
    }
    let mut cmd = Command::new(&target.helm);
    cmd.arg(format!("--kubeconfig={}", target.kubeconfig.display()))
        .args(["install", "eds-server"])
        .arg(&chart)
        .args(["--namespace", "eds-system", "--create-namespace"])
        .args(["--wait", "--timeout", "120s"]);
    for s in &sets {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().context("running helm install")?;
    if !out.status.success() {
        bail!(
            "helm install failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            target.diagnose()
        );
    }
    Ok(())
}

/// Stage 1: the chart, Ready through its probes and confined as shipped.
pub fn install_chart(target: &Target<'_>) -> anyhow::Result<()> {
    let started = Instant::now();
    helm_install(target)?;
    let pods = target.ready_pods("eds-system", EDS_SELECTOR)?;
    ensure!(
        pods.len() == 2,
        "two Ready eds-server replicas, got {}:\n{}",
        pods.len(),
        target.diagnose()
    );
    eprintln!(
        "[helm] chart installed, 2 replicas Ready after {:.1?}",
        started.elapsed()
    );
    for pod in &pods {
        let spec = &pod["spec"];
        ensure!(
            spec["serviceAccountName"] == "eds-server",
            "runs as the chart's ServiceAccount: {}",
            spec["serviceAccountName"]
        );
        let probe = &spec["containers"][0]["readinessProbe"]["httpGet"];
        ensure!(
            probe["path"] == "/readyz",
            "Ready through the chart's /readyz probe: {probe}"
        );
        let node = spec["nodeName"].as_str().context("scheduled")?;
        let cid = pod["status"]["containerStatuses"][0]["containerID"]
            .as_str()
            .context("a container id")?;
        let c = Confinement::parse(
            &target.nodes.proc_file(node, cid, "status")?,
            &target.nodes.proc_file(node, cid, "mountinfo")?,
        )?;
        let pod = name(pod);
        eprintln!("[helm] {pod} on {node}: {c:?}");
        ensure!(c.uids == [65532; 4], "{pod}: runs as 65532: {c:?}");
        ensure!(c.cap_eff == 0, "{pod}: no capabilities (drop ALL): {c:?}");
        ensure!(
            c.no_new_privs,
            "{pod}: allowPrivilegeEscalation false: {c:?}"
        );
        ensure!(c.seccomp == 2, "{pod}: seccomp RuntimeDefault: {c:?}");
        ensure!(c.root_read_only, "{pod}: readOnlyRootFilesystem: {c:?}");
    }
    Ok(())
}

/// Stage 2: the echo Deployment, spread and Ready; both replicas serve it
/// in every zone.
pub fn deploy_echo(target: &Target<'_>) -> anyhow::Result<()> {
    let started = Instant::now();
    target.apply("echo.yaml", &echo_manifest())?;
    let pods = wait_for(
        "echo Deployment Ready in every zone",
        Duration::from_secs(180),
        || {
            let ready = target.ready_pods("demo", "app=echo")?;
            Ok(if ready.len() == ECHO_REPLICAS {
                Ok(ready)
            } else {
                Err(format!("{} Ready", ready.len()))
            })
        },
        || target.diagnose(),
    )?;
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for p in &pods {
        *per_node
            .entry(p["spec"]["nodeName"].as_str().unwrap_or("?").to_owned())
            .or_default() += 1;
        let probe = &p["spec"]["containers"][0]["readinessProbe"]["grpc"];
        ensure!(probe["port"] == 8080, "a gRPC readiness probe: {probe}");
    }
    eprintln!(
        "[echo] {ECHO_REPLICAS} pods Ready after {:.1?}: {per_node:?}",
        started.elapsed()
    );
    let per_zone = ECHO_REPLICAS / ZONES.len();
    ensure!(
        per_node.len() == ZONES.len() && per_node.values().all(|n| *n == per_zone),
        "spread evenly over the {} zones: {per_node:?}",
        ZONES.len()
    );
    for eds in target.ready_pods("eds-system", EDS_SELECTOR)? {
        wait_for(
            &format!("{} serving echo.demo:8080 in every zone", name(&eds)),
            Duration::from_secs(30),
            || {
                let v: Value =
                    serde_json::from_str(&target.admin_get(name(&eds), "/debug/snapshot")?)?;
                let zones = v["services"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|s| s["key"] == "echo.demo:8080")
                    .map(|s| s["zones"].clone())
                    .unwrap_or(Value::Null);
                let healthy = ZONES
                    .iter()
                    .all(|z| zones[*z]["HEALTHY"].as_u64() == Some(per_zone as u64));
                Ok(if healthy {
                    Ok(())
                } else {
                    Err(zones.to_string())
                })
            },
            || target.diagnose(),
        )?;
    }
    Ok(())
}

/// Stage 3: lb-client in a pod through a backend rollout and the loss of
/// the eds-server replica it is connected to.
pub fn traffic_through_disruption(target: &Target<'_>) -> anyhow::Result<()> {
    let before: Vec<String> = target
        .pods("demo", "app=echo")?
        .iter()
        .map(|p| name(p).to_owned())
        .collect();
    // 100 requests a second for 60 s: longer than both disruptions take
    // (checked below: the client must still be running after them).
    target.apply(
        "client.yaml",
        &client_pod("echo-client", ZONES[0], 6000, 100),
    )?;
    let started = Instant::now();
    let replica = wait_for(
        "the client connected to an eds-server replica",
        Duration::from_secs(60),
        || {
            Ok(target
                .replica_serving("echo-client")?
                .ok_or_else(|| "no replica lists it".to_owned()))
        },
        || target.diagnose(),
    )?;
    eprintln!(
        "[client] connected to {replica} after {:.1?}",
        started.elapsed()
    );

    target.kubectl(&["-n", "demo", "rollout", "restart", "deployment/echo"])?;
    target.kubectl(&[
        "-n",
        "demo",
        "rollout",
        "status",
        "deployment/echo",
        "--timeout=120s",
    ])?;
    eprintln!(
        "[client] backends restarted after {:.1?}",
        started.elapsed()
    );

    target.kubectl(&["-n", "eds-system", "delete", "pod", &replica])?;
    let other = wait_for(
        "the client reconnected to another replica",
        Duration::from_secs(60),
        || {
            Ok(match target.replica_serving("echo-client")? {
                Some(r) if r != replica => Ok(r),
                other => Err(format!("{other:?}")),
            })
        },
        || target.diagnose(),
    )?;
    eprintln!(
        "[client] {replica} deleted; the client moved to {other} after {:.1?}",
        started.elapsed()
    );
    let phase = target.phase("demo", "echo-client")?;
    ensure!(
        phase == "Running",
        "the client ended ({phase}) before both disruptions were over: send more requests"
    );

    let (phase, logs) = target.finished("demo", "echo-client", Duration::from_secs(180))?;
    let r = report(&phase, &logs)?;
    let by_pod: Vec<_> = r
        .by_pod
        .iter()
        .map(|(p, t)| (p.as_str(), t.zone.as_str(), t.replies))
        .collect();
    eprintln!(
        "[client] {} requests, {} ok, {} failed, {:.1?} after start; by pod: {by_pod:?}",
        r.requests,
        r.ok,
        r.failed,
        started.elapsed()
    );
    ensure!(
        r.failed == 0 && r.ok == r.requests,
        "0 failed requests: {:?}",
        r.errors
    );
    ensure!(
        phase == "Succeeded",
        "the example exits 0 when nothing failed: {phase}"
    );
    let old = r.by_pod.keys().filter(|p| before.contains(p)).count();
    let new = r.by_pod.keys().filter(|p| !before.contains(p)).count();
    ensure!(
        old > 0 && new > 0,
        "answered by pods from before the rollout and after it: {:?}",
        r.by_pod.keys()
    );
    ensure!(
        r.client["services"][0]["source"] == "control-plane",
        "the endpoints came from eds-server: {}",
        r.client["services"][0]
    );
    Ok(())
}

/// Stage 4: a stock grpc-go client in a pod, through `xds:///`.
pub fn grpc_go(target: &Target<'_>) -> anyhow::Result<()> {
    let count = 200;
    target.apply("grpc-go.yaml", &grpc_go_manifest(ZONES[1], count)?)?;
    let (phase, logs) = target.finished("demo", "grpc-go", Duration::from_secs(120))?;
    let calls: Vec<crate::interop::Rpc> = logs
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .with_context(|| format!("grpc-go's output:\n{logs}"))?;
    let failed = calls.iter().filter(|c| c.code != 0).count();
    let mut by_pod: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &calls {
        *by_pod.entry(c.pod.as_deref().unwrap_or("-")).or_default() += 1;
    }
    eprintln!(
        "[grpc-go] {phase}: {} calls, {failed} failed, by pod {by_pod:?}",
        calls.len()
    );
    ensure!(phase == "Succeeded", "grpc-go exited 0: {phase}\n{logs}");
    ensure!(
        calls.len() == count as usize && failed == 0,
        "{count} calls, 0 failed:\n{logs}"
    );
    Ok(())
}

/// Stage 5: edsctl through a real port-forward, then `diff` on each replica.
pub fn edsctl(target: &Target<'_>, bin: &Path) -> anyhow::Result<()> {
    let out = target.edsctl(bin, &["-o", "json", "services"])?;
    ensure!(
        out.status.success(),
        "edsctl services through a port-forward: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = String::from_utf8_lossy(&out.stdout);
    ensure!(
        listing.contains("echo.demo:8080"),
        "edsctl lists the echo Service:\n{listing}"
    );
    let replicas = target.ready_pods("eds-system", EDS_SELECTOR)?;
    ensure!(replicas.len() == 2, "two replicas to compare");
    for pod in &replicas {
        let out = target.edsctl(bin, &["--server-pod", name(pod), "diff", "echo.demo:8080"])?;
        let text = String::from_utf8_lossy(&out.stdout);
        eprintln!(
            "[edsctl] diff on {}: {}",
            name(pod),
            text.lines().last().unwrap_or("")
        );
        ensure!(
            out.status.success(),
            "edsctl diff on {} is clean: {text}{}",
            name(pod),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Stage 6: no eds-server at all; cluster DNS and the ClusterIP carry it.
pub fn dns_fallback(target: &Target<'_>) -> anyhow::Result<()> {
    target.kubectl(&[
        "-n",
        "eds-system",
        "scale",
        "deployment/eds-server",
        "--replicas=0",
    ])?;
    wait_for(
        "eds-server scaled to 0",
        Duration::from_secs(60),
        || {
            let left = target.pods("eds-system", EDS_SELECTOR)?.len();
            Ok(if left == 0 {
                Ok(())
            } else {
                Err(format!("{left} pods left"))
            })
        },
        || target.diagnose(),
    )?;
    target.apply(
        "client-dns.yaml",
        &client_pod("echo-client-dns", ZONES[2], 300, 50),
    )?;
    let (phase, logs) = target.finished("demo", "echo-client-dns", Duration::from_secs(120))?;
    let r = report(&phase, &logs)?;
    let service = &r.client["services"][0];
    eprintln!(
        "[dns] {} requests, {} ok, {} failed; by pod {:?}; source {}",
        r.requests,
        r.ok,
        r.failed,
        r.by_pod
            .iter()
            .map(|(p, t)| (p.as_str(), t.replies))
            .collect::<Vec<_>>(),
        service["source"]
    );
    ensure!(
        r.failed == 0 && r.ok == r.requests,
        "0 failed requests: {:?}",
        r.errors
    );
    ensure!(phase == "Succeeded", "{phase}");
    ensure!(
        service["source"] == "dns",
        "the endpoints came from DNS: {service}"
    );
    let echo_ip = target.kubectl(&[
        "-n",
        "demo",
        "get",
        "service",
        "echo",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ])?;
    ensure!(
        service.to_string().contains(echo_ip.trim()),
        "it balanced over the ClusterIP {echo_ip} (CoreDNS's answer): {service}"
    );
    Ok(())
}

/// Every stage, in order.
pub fn run(target: &Target<'_>, bins: &Binaries) -> anyhow::Result<()> {
    install_chart(target)?;
    deploy_echo(target)?;
    traffic_through_disruption(target)?;
    grpc_go(target)?;
    edsctl(target, &bins.edsctl)?;
    dns_fallback(target)
}

/// A kind cluster's config: a control plane and one worker per zone of
/// [`ZONES`], labelled as the local nodes are.
pub fn kind_config() -> String {
    let mut out = String::from(
        "kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\nnodes:\n  - role: control-plane\n",
    );
    for zone in ZONES {
        out.push_str(&format!(
            "  - role: worker\n    labels:\n      topology.kubernetes.io/zone: {zone}\n"
        ));
    }
    out
}

/// The local cluster's nodes: a container's process is a process of this
/// machine, found through the node's containerd.
#[derive(Debug, Clone)]
pub struct LocalNodes(pub Vec<crate::cluster::node::NodeState>);

impl NodeAccess for LocalNodes {
    fn proc_file(&self, node: &str, container_id: &str, file: &str) -> anyhow::Result<String> {
        let n = self
            .0
            .iter()
            .find(|n| n.name == node)
            .with_context(|| format!("no local node {node}"))?;
        let pid = crate::cluster::workload::container_pid(n, container_id)?;
        std::fs::read_to_string(format!("/proc/{pid}/{file}"))
            .with_context(|| format!("reading /proc/{pid}/{file}"))
    }
}

/// kind's nodes are Docker containers named `<cluster>-worker[N]`; a
/// container's process is found with the node's own `ctr`.
#[derive(Debug)]
pub struct KindNodes;

impl NodeAccess for KindNodes {
    fn proc_file(&self, node: &str, container_id: &str, file: &str) -> anyhow::Result<String> {
        let id = container_id
            .strip_prefix("containerd://")
            .with_context(|| format!("{container_id:?} is not a containerd id"))?;
        ensure!(
            id.chars().all(|c| c.is_ascii_hexdigit())
                && file.chars().all(|c| c.is_ascii_alphanumeric()),
            "unexpected container id {id:?} or file {file:?}"
        );
        let script = format!(
            "cat /proc/$(ctr -n k8s.io task ls | awk '$1 == \"{id}\" {{ print $2 }}')/{file}"
        );
        let out = Command::new("docker")
            .args(["exec", node, "sh", "-c", &script])
            .output()
            .context("running docker exec")?;
        ensure!(
            out.status.success(),
            "reading /proc/<pid>/{file} of {id} on {node}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_report_among_log_lines() {
        let logs = "2026-12-07T10:00:00Z WARN lb_client: control plane never answered\n{\n  \"requests\": 2,\n  \"ok\": 2,\n  \"failed\": 0,\n  \"by_pod\": {\"p\": {\"zone\": \"node-1\", \"replies\": 2}},\n  \"errors\": {},\n  \"client\": {\"services\": []}\n}\n";
        let r = report("Succeeded", logs).unwrap();
        assert_eq!((r.requests, r.ok, r.failed), (2, 2, 0));
        assert_eq!(r.by_pod["p"].replies, 2);
        assert!(report("Failed", "no report here\n").is_err());
    }

    #[test]
    fn client_pods_render_as_confined_one_shot_pods() {
        let pod: Value =
            serde_saphyr::from_str(&client_pod("c", "zone-b", 10, 5)).expect("valid YAML");
        let c = &pod["spec"]["containers"][0];
        assert_eq!(
            pod["spec"]["nodeSelector"]["topology.kubernetes.io/zone"],
            "zone-b"
        );
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(c["args"][2], "--rate=5");
        assert_eq!(c["env"][1]["value"], "zone-b");
        let docs = grpc_go_manifest("zone-a", 3).unwrap();
        let (config_map, pod) = docs.split_once("\n---").expect("two documents");
        let config_map: Value = serde_saphyr::from_str(config_map).expect("valid YAML");
        let bootstrap: Value =
            serde_json::from_str(config_map["data"]["bootstrap.json"].as_str().unwrap()).unwrap();
        assert_eq!(bootstrap["node"]["locality"]["zone"], "zone-a");
        let pod: Value = serde_saphyr::from_str(pod).expect("valid YAML");
        assert_eq!(
            pod["spec"]["volumes"][0]["configMap"]["name"],
            "grpc-go-bootstrap"
        );
        let c = &pod["spec"]["containers"][0];
        assert_eq!(c["volumeMounts"][0]["mountPath"], "/etc/xds");
        assert_eq!(c["capabilities"], Value::Null);
        assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
    }

    #[test]
    fn kind_workers_carry_the_zones_the_stages_expect() {
        let config = kind_config();
        assert_eq!(config.matches("role: worker").count(), ZONES.len());
        for zone in ZONES {
            assert!(config.contains(&format!("topology.kubernetes.io/zone: {zone}")));
        }
    }
}

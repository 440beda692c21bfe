//! The product installed and run the way operators and service teams do,
//! on three real nodes (containerd, runc, kubelet; one zone each), with
//! kube-proxy routing ClusterIPs and CoreDNS answering names:
//!
//! 1. `helm install` of the real chart, image overridden to the one built
//!    here and never pulled. eds-server becomes Ready through the chart's
//!    own probes, on its chart ServiceAccount's mounted token, and the
//!    kernel enforces the chart's securityContext (read from `/proc`).
//! 2. The echo backend as a Deployment spread over the zones, Ready
//!    through a real gRPC readiness probe (`grpc.health.v1`).
//! 3. lb-client's documented example as a pod, finding eds-server by its
//!    Service name: traffic keeps flowing with 0 failed requests through a
//!    `kubectl rollout restart` of the backends and the deletion of the
//!    eds-server replica the client is connected to.
//! 4. The stock grpc-go interop client as a pod, dialling `xds:///`.
//! 5. edsctl finding eds-server through a real port-forward, and `edsctl
//!    diff` clean on each replica.
//! 6. The DNS fallback for real: with eds-server scaled to 0, the example
//!    resolves the echo Service through CoreDNS and reaches pods through its
//!    ClusterIP, 0 failed requests.
//!
//! The kustomize base is installed on a node by `node_cluster`.
//!
//! Ignored in a plain `cargo test`: it needs root and the node components.
//! `cargo xtask test` and `cargo xtask e2e` run it; alone:
//! `cargo test -p eds-tests --test node_e2e -- --ignored --nocapture`.
//! Everything it starts goes at the end, pass or fail.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use eds_tests::cluster::node::{self, Node};
use eds_tests::cluster::workload::{
    self, apply, cargo_build, confinement, container_pid, cpu_seconds, kubectl, kubectl_json,
    wait_for, workspace,
};
use eds_tests::cluster::{ControlPlane, PlaneOptions, node_build};
use eds_tests::image;
use eds_tests::process::Lifetime;
use serde_json::Value;

const TAG: &str = "e2e";
const NODES: u8 = 3;
const ECHO_REPLICAS: usize = 6;
const EDS_IMAGE: &str = "docker.io/eds-rs/eds-server";
const ECHO_IMAGE: &str = "docker.io/eds-rs/echo-backend:e2e";
const CLIENT_IMAGE: &str = "docker.io/eds-rs/echo-client:e2e";
const GRPC_GO_IMAGE: &str = "docker.io/eds-rs/grpc-go-client:e2e";
const CLIENT_PATH: &str = "/usr/local/bin/echo-client";
const GRPC_GO_PATH: &str = "/usr/local/bin/grpc-go-client";
/// How clients in pods reach eds-server: its Service, through CoreDNS and
/// kube-proxy, as the chart's NOTES tell users.
const XDS_SERVICE: &str = "eds-server.eds-system.svc.cluster.local:18000";

/// The binaries the images hold.
struct Binaries {
    eds_server: PathBuf,
    echo_backend: PathBuf,
    echo_client: PathBuf,
    edsctl: PathBuf,
    grpc_go: PathBuf,
}

fn build() -> anyhow::Result<Binaries> {
    // Three builds, each the selection another command makes too (`cargo
    // xtask image`, `cargo xtask e2e`), so each shares their artifacts.
    let debug = cargo_build(&image::IMAGE_BINARIES)?;
    cargo_build(&["-p", "lb-client", "--examples"])?;
    cargo_build(&["-p", "edsctl"])?;
    Ok(Binaries {
        eds_server: debug.join("eds-server"),
        echo_backend: debug.join("echo-backend"),
        echo_client: debug.join("examples/echo_client"),
        edsctl: debug.join("edsctl"),
        grpc_go: eds_tests::interop::ensure_grpc_go_client(false)?,
    })
}

/// Every image the nodes need, as OCI archives under `dir`.
fn images(
    dir: &Path,
    bins: &Binaries,
    node_bins: &node_build::NodeBinaries,
) -> anyhow::Result<Vec<PathBuf>> {
    let mut tars = node::build_node_images(dir, node_bins)?;
    let apps = [
        image::eds_server_image(&bins.eds_server, &format!("{EDS_IMAGE}:{TAG}"))?,
        image::echo_backend_image(&bins.echo_backend, ECHO_IMAGE)?,
        image::app_image(&bins.echo_client, CLIENT_PATH, CLIENT_IMAGE)?,
        image::app_image(&bins.grpc_go, GRPC_GO_PATH, GRPC_GO_IMAGE)?,
    ];
    for (i, app) in apps.iter().enumerate() {
        let tar = dir.join(format!("app-{i}.tar"));
        image::write_oci_archive(app, &tar)?;
        tars.push(tar);
    }
    Ok(tars)
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

/// A pod running lb-client's example once, in `zone` (pinned there by the
/// node label, told by `EDS_ZONE`), JSON report on stdout.
fn client_pod(name: &str, zone: &str, requests: u64, rate: u64) -> String {
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
      image: {CLIENT_IMAGE}
      imagePullPolicy: Never
      args: ["--service=echo.demo:8080", "--requests={requests}", "--rate={rate}",
             "--concurrency=4", "--wait-secs=30", "--output=json"]
      env:
        - {{ name: EDS_XDS_SERVER, value: "http://{XDS_SERVICE}" }}
        - {{ name: EDS_ZONE, value: {zone} }}
      securityContext:
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        capabilities: {{ drop: ["ALL"] }}
"#
    )
}

/// The grpc-go interop client as a pod: its bootstrap from a ConfigMap,
/// `xds:///echo.demo:8080`, one JSON line per call on stdout.
fn grpc_go_manifest(zone: &str, count: u32) -> anyhow::Result<String> {
    let bootstrap = eds_tests::interop::grpc_bootstrap(XDS_SERVICE, "grpc-go-pod", Some(zone));
    let bootstrap = serde_json::to_string(&bootstrap)?;
    Ok(format!(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {{ name: grpc-go-bootstrap, namespace: demo }}
data:
  bootstrap.json: '{bootstrap}'
---
apiVersion: v1
kind: Pod
metadata: {{ name: grpc-go, namespace: demo }}
spec:
  restartPolicy: Never
  automountServiceAccountToken: false
  nodeSelector: {{ topology.kubernetes.io/zone: {zone} }}
  securityContext:
    runAsNonRoot: true
    seccompProfile: {{ type: RuntimeDefault }}
  containers:
    - name: client
      image: {GRPC_GO_IMAGE}
      imagePullPolicy: Never
      args: ["--target=echo.demo:8080", "--count={count}", "--rate=50"]
      env:
        - {{ name: GRPC_XDS_BOOTSTRAP, value: /etc/xds/bootstrap.json }}
      volumeMounts:
        - {{ name: bootstrap, mountPath: /etc/xds, readOnly: true }}
      securityContext:
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        capabilities: {{ drop: ["ALL"] }}
  volumes:
    - name: bootstrap
      configMap: {{ name: grpc-go-bootstrap }}
"#
    ))
}

/// The running test cluster.
struct Env<'a> {
    plane: &'a ControlPlane,
    nodes: &'a [Node],
    dir: &'a Path,
    rt: tokio::runtime::Runtime,
}

impl Env<'_> {
    fn diagnose(&self) -> String {
        workload::diagnosis(self.plane, &self.nodes.iter().collect::<Vec<_>>())
    }

    fn node(&self, name: &str) -> anyhow::Result<&Node> {
        self.nodes
            .iter()
            .find(|n| n.state().name == name)
            .with_context(|| format!("no node {name}"))
    }

    /// Pods matching `selector` in `ns`.
    fn pods(&self, ns: &str, selector: &str) -> anyhow::Result<Vec<Value>> {
        let list = kubectl_json(self.plane, &["-n", ns, "get", "pods", "-l", selector])?;
        Ok(list["items"].as_array().cloned().unwrap_or_default())
    }

    /// Ready, not terminating pods matching `selector`.
    fn ready_pods(&self, ns: &str, selector: &str) -> anyhow::Result<Vec<Value>> {
        Ok(self
            .pods(ns, selector)?
            .into_iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null() && is_ready(p))
            .collect())
    }

    /// Waits for a pod to end; its phase and stdout.
    fn finished(&self, ns: &str, pod: &str, timeout: Duration) -> anyhow::Result<(String, String)> {
        let phase = wait_for(
            &format!("pod {ns}/{pod} finished"),
            timeout,
            || {
                let phase = kubectl(
                    self.plane,
                    &[
                        "-n",
                        ns,
                        "get",
                        "pod",
                        pod,
                        "-o",
                        "jsonpath={.status.phase}",
                    ],
                )?;
                Ok(match phase.trim() {
                    p @ ("Succeeded" | "Failed") => Ok(p.to_owned()),
                    other => Err(other.to_owned()),
                })
            },
            || self.diagnose(),
        )?;
        let logs = kubectl(self.plane, &["-n", ns, "logs", pod])?;
        Ok((phase, logs))
    }

    fn phase(&self, ns: &str, pod: &str) -> anyhow::Result<String> {
        Ok(kubectl(
            self.plane,
            &[
                "-n",
                ns,
                "get",
                "pod",
                pod,
                "-o",
                "jsonpath={.status.phase}",
            ],
        )?
        .trim()
        .to_owned())
    }

    /// GET on a pod's admin port, after checking the route goes into the
    /// project's pod network.
    fn admin_get(&self, ip: Ipv4Addr, path: &str) -> anyhow::Result<String> {
        self.plane.network().verify_route(ip)?;
        let (status, body) = self.rt.block_on(eds_tests::server::http_get(
            SocketAddr::from((ip, 18001)),
            path,
        ))?;
        ensure!(status == 200, "GET {path} on {ip}: {status} {body}");
        Ok(body)
    }

    /// The eds-server replica (pod name) whose `/debug/clients` lists `node_id`.
    fn replica_serving(&self, node_id: &str) -> anyhow::Result<Option<String>> {
        for pod in self.ready_pods("eds-system", EDS_SELECTOR)? {
            let ip = pod_ip(&pod)?;
            let body = self.admin_get(ip, "/debug/clients")?;
            if body.contains(&format!("\"{node_id}\"")) {
                return Ok(Some(name(&pod).to_owned()));
            }
        }
        Ok(None)
    }

    fn edsctl(&self, bin: &Path, args: &[&str]) -> anyhow::Result<std::process::Output> {
        Command::new(bin)
            .arg(format!(
                "--kubeconfig={}",
                self.plane.state().kubeconfig.display()
            ))
            .args(args)
            .output()
            .context("running edsctl")
    }
}

const EDS_SELECTOR: &str = "app.kubernetes.io/name=eds-server";

fn name(pod: &Value) -> &str {
    pod["metadata"]["name"].as_str().unwrap_or("?")
}

fn pod_ip(pod: &Value) -> anyhow::Result<Ipv4Addr> {
    pod["status"]["podIP"]
        .as_str()
        .with_context(|| format!("pod {} has no IP", name(pod)))?
        .parse()
        .context("pod IP")
}

fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
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

fn report(phase: &str, logs: &str) -> anyhow::Result<Report> {
    // The JSON report is the whole of stdout (logs go to stderr, which
    // `kubectl logs` interleaves): from the first `{` at a line start.
    let start = logs
        .find("\n{")
        .map(|i| i + 1)
        .or_else(|| logs.starts_with('{').then_some(0))
        .with_context(|| format!("no JSON report in the client's output ({phase}):\n{logs}"))?;
    let end = logs.rfind("\n}").map(|i| i + 2).unwrap_or(logs.len());
    serde_json::from_str(&logs[start..end])
        .with_context(|| format!("the client's report ({phase}):\n{logs}"))
}

fn helm_install(env: &Env<'_>) -> anyhow::Result<()> {
    let helm = eds_tests::tools::ensure_helm(false)?;
    let chart = workspace().join("deploy/helm/eds-server");
    let tag = format!("image.tag={TAG}");
    let repo = format!("image.repository={EDS_IMAGE}");
    let out = Command::new(&helm)
        .arg(format!(
            "--kubeconfig={}",
            env.plane.state().kubeconfig.display()
        ))
        .args(["install", "eds-server"])
        .arg(&chart)
        .args(["--namespace", "eds-system", "--create-namespace"])
        .args([
            "--set",
            &repo,
            "--set",
            &tag,
            "--set",
            "image.pullPolicy=Never",
        ])
        .args(["--wait", "--timeout", "120s"])
        .output()
        .context("running helm install")?;
    if !out.status.success() {
        bail!(
            "helm install failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            env.diagnose()
        );
    }
    Ok(())
}

/// Stage 1: the chart, Ready and confined.
fn install_chart(env: &Env<'_>) -> anyhow::Result<Vec<Value>> {
    let started = Instant::now();
    helm_install(env)?;
    let pods = env.ready_pods("eds-system", EDS_SELECTOR)?;
    ensure!(
        pods.len() == 2,
        "two Ready eds-server replicas, got {}: {}",
        pods.len(),
        env.diagnose()
    );
    eprintln!(
        "[helm] chart installed, 2 replicas Ready after {:.1?}",
        started.elapsed()
    );
    for pod in &pods {
        let spec = &pod["spec"];
        ensure!(
            spec["serviceAccountName"] == "eds-server",
            "runs as the chart's ServiceAccount: {spec}"
        );
        let probe = &spec["containers"][0]["readinessProbe"]["httpGet"];
        ensure!(
            probe["path"] == "/readyz",
            "Ready through the chart's /readyz probe: {probe}"
        );
        let node = env.node(spec["nodeName"].as_str().context("scheduled")?)?;
        let cid = pod["status"]["containerStatuses"][0]["containerID"]
            .as_str()
            .context("container id")?;
        let c = confinement(container_pid(node, cid)?)?;
        eprintln!("[helm] {} on {}: {c:?}", name(pod), node.state().name);
        ensure!(
            c.uids == [65532; 4],
            "{}: runs as 65532 (runAsUser): {c:?}",
            name(pod)
        );
        ensure!(
            c.cap_eff == 0,
            "{}: no capabilities (drop ALL): {c:?}",
            name(pod)
        );
        ensure!(
            c.no_new_privs,
            "{}: allowPrivilegeEscalation false: {c:?}",
            name(pod)
        );
        ensure!(
            c.seccomp == 2,
            "{}: seccomp RuntimeDefault: {c:?}",
            name(pod)
        );
        ensure!(
            c.root_read_only,
            "{}: readOnlyRootFilesystem: {c:?}",
            name(pod)
        );
    }
    // The Service's ports lead to the containers' named ports.
    let svc = kubectl_json(
        env.plane,
        &["-n", "eds-system", "get", "service", "eds-server"],
    )?;
    let ports: Vec<(String, u64)> = svc["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or("").to_owned(),
                p["port"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    ensure!(
        ports.contains(&("xds".into(), 18000)) && ports.contains(&("admin".into(), 18001)),
        "the Service exposes xds 18000 and admin 18001: {ports:?}"
    );
    Ok(pods)
}

/// Stage 2: the echo Deployment, spread and Ready; eds-server sees it.
fn deploy_echo(env: &Env<'_>) -> anyhow::Result<()> {
    let started = Instant::now();
    apply(env.plane, env.dir, "echo.yaml", &echo_manifest())?;
    let pods = wait_for(
        "echo Deployment Ready on every zone",
        Duration::from_secs(180),
        || {
            let ready = env.ready_pods("demo", "app=echo")?;
            Ok(if ready.len() == ECHO_REPLICAS {
                Ok(ready)
            } else {
                Err(format!("{} Ready", ready.len()))
            })
        },
        || env.diagnose(),
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
    ensure!(
        per_node.len() == usize::from(NODES)
            && per_node
                .values()
                .all(|n| *n == ECHO_REPLICAS / usize::from(NODES)),
        "spread evenly over the {NODES} zones: {per_node:?}"
    );
    // Both replicas learn them, each pod in its node's zone.
    for eds in env.ready_pods("eds-system", EDS_SELECTOR)? {
        let ip = pod_ip(&eds)?;
        wait_for(
            &format!("{} serving echo.demo:8080 in every zone", name(&eds)),
            Duration::from_secs(30),
            || {
                let body = env.admin_get(ip, "/debug/snapshot")?;
                let v: Value = serde_json::from_str(&body)?;
                let zones = v["services"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|s| s["key"] == "echo.demo:8080")
                    .map(|s| s["zones"].clone())
                    .unwrap_or(Value::Null);
                let healthy = (1..=NODES).all(|i| {
                    zones[node::zone_of(i).as_str()]["HEALTHY"].as_u64()
                        == Some((ECHO_REPLICAS / usize::from(NODES)) as u64)
                });
                Ok(if healthy {
                    Ok(())
                } else {
                    Err(zones.to_string())
                })
            },
            || env.diagnose(),
        )?;
    }
    Ok(())
}

/// Stage 3: lb-client in a pod through a backend rollout and the loss of
/// its eds-server replica.
fn traffic_through_disruption(env: &Env<'_>) -> anyhow::Result<()> {
    let before: Vec<String> = env
        .pods("demo", "app=echo")?
        .iter()
        .map(|p| name(p).to_owned())
        .collect();
    // 100 requests a second for 60 s: longer than both disruptions take
    // here (checked below: the client must still be running after them).
    apply(
        env.plane,
        env.dir,
        "client.yaml",
        &client_pod("echo-client", "zone-a", 6000, 100),
    )?;
    let started = Instant::now();
    let replica = wait_for(
        "the client connected to an eds-server replica",
        Duration::from_secs(60),
        || {
            Ok(env
                .replica_serving("echo-client")?
                .ok_or_else(|| "no replica lists it".to_owned()))
        },
        || env.diagnose(),
    )?;
    eprintln!(
        "[client] connected to {replica} after {:.1?}",
        started.elapsed()
    );

    kubectl(
        env.plane,
        &["-n", "demo", "rollout", "restart", "deployment/echo"],
    )?;
    kubectl(
        env.plane,
        &[
            "-n",
            "demo",
            "rollout",
            "status",
            "deployment/echo",
            "--timeout=120s",
        ],
    )?;
    eprintln!(
        "[client] backends restarted after {:.1?}",
        started.elapsed()
    );

    kubectl(env.plane, &["-n", "eds-system", "delete", "pod", &replica])?;
    let other = wait_for(
        "the client reconnected to another replica",
        Duration::from_secs(60),
        || {
            Ok(match env.replica_serving("echo-client")? {
                Some(r) if r != replica => Ok(r),
                other => Err(format!("{other:?}")),
            })
        },
        || env.diagnose(),
    )?;
    eprintln!(
        "[client] {replica} deleted; the client moved to {other} after {:.1?}",
        started.elapsed()
    );
    let phase = env.phase("demo", "echo-client")?;
    ensure!(
        phase == "Running",
        "the client ended ({phase}) before both disruptions were over: send more requests"
    );

    let (phase, logs) = env.finished("demo", "echo-client", Duration::from_secs(180))?;
    let r = report(&phase, &logs)?;
    eprintln!(
        "[client] {} requests, {} ok, {} failed, {:.1?} after start; by pod: {:?}",
        r.requests,
        r.ok,
        r.failed,
        started.elapsed(),
        r.by_pod
            .iter()
            .map(|(p, t)| (p.as_str(), t.zone.as_str(), t.replies))
            .collect::<Vec<_>>()
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
        "answered by the pods before the rollout and after it: {:?}",
        r.by_pod.keys()
    );
    ensure!(
        r.client["services"][0]["source"] == "control-plane",
        "endpoints came from eds-server: {}",
        r.client["services"][0]
    );
    Ok(())
}

/// Stage 4: a stock grpc-go client in a pod, through `xds:///`.
fn grpc_go(env: &Env<'_>) -> anyhow::Result<()> {
    let count = 200;
    apply(
        env.plane,
        env.dir,
        "grpc-go.yaml",
        &grpc_go_manifest("zone-b", count)?,
    )?;
    let (phase, logs) = env.finished("demo", "grpc-go", Duration::from_secs(120))?;
    let calls: Vec<eds_tests::interop::Rpc> = logs
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

/// Stage 5: edsctl through a real port-forward, on each replica.
fn edsctl(env: &Env<'_>, bin: &Path) -> anyhow::Result<()> {
    let out = env.edsctl(bin, &["-o", "json", "services"])?;
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
    let replicas = env.ready_pods("eds-system", EDS_SELECTOR)?;
    ensure!(replicas.len() == 2, "two replicas to compare");
    for pod in &replicas {
        let out = env.edsctl(bin, &["--server-pod", name(pod), "diff", "echo.demo:8080"])?;
        eprintln!(
            "[edsctl] diff on {}: {}",
            name(pod),
            String::from_utf8_lossy(&out.stdout).trim()
        );
        ensure!(
            out.status.success(),
            "edsctl diff on {} is clean: {}{}",
            name(pod),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Stage 6: no eds-server at all; cluster DNS and the ClusterIP carry it.
fn dns_fallback(env: &Env<'_>) -> anyhow::Result<()> {
    kubectl(
        env.plane,
        &[
            "-n",
            "eds-system",
            "scale",
            "deployment/eds-server",
            "--replicas=0",
        ],
    )?;
    wait_for(
        "eds-server scaled to 0",
        Duration::from_secs(60),
        || {
            let left = env.pods("eds-system", EDS_SELECTOR)?.len();
            Ok(if left == 0 {
                Ok(())
            } else {
                Err(format!("{left} pods left"))
            })
        },
        || env.diagnose(),
    )?;
    apply(
        env.plane,
        env.dir,
        "client-dns.yaml",
        &client_pod("echo-client-dns", "zone-c", 300, 50),
    )?;
    let (phase, logs) = env.finished("demo", "echo-client-dns", Duration::from_secs(120))?;
    let r = report(&phase, &logs)?;
    eprintln!(
        "[dns] {} requests, {} ok, {} failed; by pod {:?}; source {}",
        r.requests,
        r.ok,
        r.failed,
        r.by_pod
            .iter()
            .map(|(p, t)| (p.as_str(), t.replies))
            .collect::<Vec<_>>(),
        r.client["services"][0]["source"]
    );
    ensure!(
        r.failed == 0 && r.ok == r.requests,
        "0 failed requests: {:?}",
        r.errors
    );
    ensure!(phase == "Succeeded", "{phase}");
    ensure!(
        r.client["services"][0]["source"] == "dns",
        "the endpoints came from DNS: {}",
        r.client["services"][0]
    );
    let echo_ip = kubectl(
        env.plane,
        &[
            "-n",
            "demo",
            "get",
            "service",
            "echo",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ],
    )?;
    let endpoints = r.client["services"][0].to_string();
    ensure!(
        endpoints.contains(echo_ip.trim()),
        "it balanced over the ClusterIP {echo_ip} (CoreDNS's answer): {endpoints}"
    );
    Ok(())
}

fn scenario(env: &Env<'_>, bins: &Binaries) -> anyhow::Result<()> {
    install_chart(env)?;
    deploy_echo(env)?;
    traffic_through_disruption(env)?;
    grpc_go(env)?;
    edsctl(env, &bins.edsctl)?;
    dns_fallback(env)?;
    Ok(())
}

#[test]
#[ignore = "needs root and `cargo xtask cluster build --nodes`; about five minutes"]
fn the_product_installed_and_run_on_three_nodes() -> anyhow::Result<()> {
    let node_bins = node_build::node_binaries()?;
    ensure!(
        node_bins.present(),
        "the node components are not built: run `cargo xtask cluster build --nodes`"
    );
    let bins = build()?;
    let dir = workload::target_dir().join(format!("eds-e2e-{}", std::process::id()));
    let started = Instant::now();
    let plane =
        ControlPlane::start_with(&dir, Lifetime::Tied, false, PlaneOptions { nodes: true })?;
    let tars = images(&dir.join("images"), &bins, &node_bins)?;
    let mut nodes = Vec::new();
    let mut result = Ok(());
    for index in 1..=NODES {
        match Node::start(&plane, &node_bins, index, &tars, Lifetime::Tied) {
            Ok(n) => nodes.push(n),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    if result.is_ok() {
        result = node::install_cluster_dns(&plane, &dir);
    }
    if result.is_ok() {
        eprintln!(
            "control plane and {NODES} nodes Ready after {:.1?}",
            started.elapsed()
        );
        let env = Env {
            plane: &plane,
            nodes: &nodes,
            dir: &dir,
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
        };
        result = scenario(&env, &bins);
        for n in &nodes {
            let s = n.state();
            eprintln!(
                "{}: kubelet RSS {} MiB CPU {:.1} s; containerd RSS {} MiB CPU {:.1} s",
                s.name,
                eds_tests::cluster::rss_kib(s.kubelet_pid).unwrap_or(0) / 1024,
                cpu_seconds(s.kubelet_pid).unwrap_or(0.0),
                eds_tests::cluster::rss_kib(n.containerd().pid()).unwrap_or(0) / 1024,
                cpu_seconds(n.containerd().pid()).unwrap_or(0.0),
            );
        }
        eprintln!("e2e on nodes: {:.1?} in all", started.elapsed());
    }
    for n in nodes.iter_mut().rev() {
        n.stop();
    }
    drop(plane);
    std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    result
}

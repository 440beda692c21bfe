//! A real node on the local control plane: kube-scheduler places a
//! Deployment of the echo backend's image (written by `eds_devkit::image`,
//! no registry) on a kubelet whose containerd runs it with runc, on a CNI
//! bridge inside the pod network namespace; the pod becomes Ready through
//! a real readiness probe, the EndpointSlice controller publishes its IP
//! with the node's zone, and a gRPC call to that IP from the host reaches
//! the container. CoreDNS answers for the Service's name at its pod IP,
//! and through the `kube-dns` ClusterIP from inside a pod's network
//! namespace. Then eds-server's own image runs as a pod from the
//! kustomize base (its ServiceAccount, RBAC and securityContext as
//! shipped), becomes Ready through its own `/readyz` probe (so it listed
//! the API with its mounted token, through the `kubernetes` Service's
//! ClusterIP, which only kube-proxy's rules route), and serves the echo
//! Service's endpoint over its admin API.
//!
//! Ignored by default: it needs root, the node components (`cargo xtask
//! cluster build --nodes`) and about two minutes. Run it with
//! `cargo test -p eds-tests --test node_cluster -- --ignored --nocapture`.
//! Everything it starts (processes, mounts, the pod network namespace and
//! with it the bridge and the kubelet's iptables chains) goes at the end.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use eds_devkit::cluster::node::{self, Node};
use eds_devkit::cluster::workload::{
    self, apply, cargo_build, cpu_seconds, kubectl, relative, wait_for, workspace,
};
use eds_devkit::cluster::{ControlPlane, PlaneOptions, node_build};
use eds_devkit::image;
use eds_devkit::process::Lifetime;
use proto::echo::EchoRequest;
use proto::echo::echo_client::EchoClient;

const TAG: &str = "node-cluster-test";

/// Short: containerd's socket path must stay under 108 bytes.
fn test_dir() -> PathBuf {
    eds_devkit::cluster::workload::target_dir().join(format!("eds-nc-{}", std::process::id()))
}

const ECHO: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: demo
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: echo
  namespace: demo
spec:
  replicas: 1
  selector:
    matchLabels: { app: echo }
  template:
    metadata:
      labels: { app: echo }
    spec:
      automountServiceAccountToken: false
      securityContext:
        runAsNonRoot: true
        seccompProfile: { type: RuntimeDefault }
      containers:
        - name: echo
          image: docker.io/eds-rs/echo-backend:TAG
          imagePullPolicy: Never
          args: ["--listen=0.0.0.0:8080", "--pod=$(POD_NAME)", "--zone=from-the-pod"]
          env:
            - name: POD_NAME
              valueFrom: { fieldRef: { fieldPath: metadata.name } }
          ports:
            - { name: grpc, containerPort: 8080 }
          readinessProbe:
            tcpSocket: { port: grpc }
            periodSeconds: 1
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities: { drop: ["ALL"] }
---
apiVersion: v1
kind: Service
metadata:
  name: echo
  namespace: demo
spec:
  selector: { app: echo }
  ports:
    - { name: grpc, port: 8080, targetPort: grpc }
"#;

/// The kustomize base (`base`, relative to the overlay: kustomize refuses
/// absolute paths), its image replaced by the one built here (and never
/// pulled), with one replica: one node. Nothing else changes: in-cluster
/// config dials the `kubernetes` Service's ClusterIP, which kube-proxy
/// routes.
fn eds_overlay(base: &Path) -> String {
    format!(
        r#"apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - {base}
images:
  - name: ghcr.io/eds-rs/eds-server
    newName: docker.io/eds-rs/eds-server
    newTag: {TAG}
replicas:
  - name: eds-server
    count: 1
patches:
  - target: {{ kind: Deployment, name: eds-server }}
    patch: |
      - op: replace
        path: /spec/template/spec/containers/0/imagePullPolicy
        value: Never
"#,
        base = base.display()
    )
}

async fn echo_once(addr: String) -> anyhow::Result<proto::echo::EchoReply> {
    let mut client = EchoClient::connect(format!("http://{addr}")).await?;
    Ok(client
        .echo(EchoRequest {
            message: "through the bridge".into(),
            work_us: 0,
        })
        .await?
        .into_inner())
}

fn scenario(plane: &ControlPlane, node: &Node, dir: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let echo = image::echo_backend_image(
        Path::new(env!("CARGO_BIN_EXE_echo-backend")),
        &format!("docker.io/eds-rs/echo-backend:{TAG}"),
    )?;
    let echo_tar = dir.join("images/echo-backend.tar");
    image::write_oci_archive(&echo, &echo_tar)?;
    node.containerd().import(&echo_tar)?;

    apply(plane, dir, "echo.yaml", &ECHO.replace("TAG", TAG))?;
    let diagnose = || workload::diagnosis(plane, &[node]);
    // The Deployment controller, the scheduler, the kubelet and the probe
    // all have to do their part for this.
    wait_for(
        "echo Deployment available",
        Duration::from_secs(120),
        || {
            let ready = kubectl(
                plane,
                &[
                    "-n",
                    "demo",
                    "get",
                    "deployment",
                    "echo",
                    "-o",
                    "jsonpath={.status.readyReplicas}",
                ],
            )?;
            Ok(if ready.trim() == "1" {
                Ok(())
            } else {
                Err(format!("readyReplicas {ready:?}"))
            })
        },
        diagnose,
    )?;
    eprintln!("echo ready on the node after {:.1?}", started.elapsed());
    let pod: serde_json::Value = serde_json::from_str(&kubectl(
        plane,
        &["-n", "demo", "get", "pods", "-l", "app=echo", "-o", "json"],
    )?)?;
    let pod = &pod["items"][0];
    let pod_name = pod["metadata"]["name"].as_str().context("pod name")?;
    let pod_ip: std::net::Ipv4Addr = pod["status"]["podIP"]
        .as_str()
        .context("no pod IP")?
        .parse()?;
    assert_eq!(pod["spec"]["nodeName"], node.state().name.as_str());
    let subnet: ipnet_like::Net = node.state().pod_cidr.parse()?;
    assert!(
        subnet.contains(pod_ip),
        "{pod_ip} comes from the node's bridge subnet {}",
        node.state().pod_cidr
    );

    // The real EndpointSlice controller publishes it, with the Node's zone.
    let slice = wait_for(
        "echo EndpointSlice with the pod",
        Duration::from_secs(30),
        || {
            let slices: serde_json::Value = serde_json::from_str(&kubectl(
                plane,
                &[
                    "-n",
                    "demo",
                    "get",
                    "endpointslices",
                    "-l",
                    "kubernetes.io/service-name=echo",
                    "-o",
                    "json",
                ],
            )?)?;
            let eps: Vec<serde_json::Value> = slices["items"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
                .collect();
            Ok(match eps.as_slice() {
                [one] if one["conditions"]["ready"] == true => Ok(one.clone()),
                other => Err(format!("{other:?}")),
            })
        },
        diagnose,
    )?;
    assert_eq!(slice["addresses"][0], pod_ip.to_string());
    assert_eq!(slice["nodeName"], node.state().name.as_str());
    assert_eq!(slice["zone"], node.state().zone.as_str());
    assert_eq!(slice["targetRef"]["name"], pod_name);

    // A real request into the container, after checking where it goes.
    plane.network().verify_route(pod_ip)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let reply = rt.block_on(echo_once(format!("{pod_ip}:8080")))?;
    assert_eq!(
        reply.pod, pod_name,
        "the pod name came from the downward API"
    );
    assert_eq!(reply.zone, "from-the-pod");

    // Cluster DNS: CoreDNS (asked at its pod IP, from the host) and the
    // kube-dns ClusterIP (asked from inside a pod's network namespace, so
    // through kube-proxy's DNAT) both name the echo Service's ClusterIP.
    let echo_cluster_ip: std::net::Ipv4Addr = kubectl(
        plane,
        &[
            "-n",
            "demo",
            "get",
            "service",
            "echo",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ],
    )?
    .trim()
    .parse()?;
    let dns_pod_ip: std::net::Ipv4Addr = kubectl(
        plane,
        &[
            "-n",
            "kube-system",
            "get",
            "pods",
            "-l",
            "k8s-app=kube-dns",
            "-o",
            "jsonpath={.items[0].status.podIP}",
        ],
    )?
    .trim()
    .parse()?;
    plane.network().verify_route(dns_pod_ip)?;
    let name = "echo.demo.svc.cluster.local";
    assert_eq!(
        dns_a((dns_pod_ip, 1053).into(), name)?,
        echo_cluster_ip,
        "CoreDNS answers for the Service"
    );
    let in_pod = pod_netns_dns(node, name, node::CLUSTER_DNS_IP)?;
    assert_eq!(in_pod, echo_cluster_ip, "kube-dns's ClusterIP, from a pod");

    // eds-server's image as operators install it (the kustomize base).
    // The same packages as `cargo xtask image --profile dev`, so both share
    // one feature resolution and one build.
    let eds_bin = cargo_build(&image::IMAGE_BINARIES)?.join("eds-server");
    let eds = image::eds_server_image(&eds_bin, &format!("docker.io/eds-rs/eds-server:{TAG}"))?;
    let eds_tar = dir.join("images/eds-server.tar");
    image::write_oci_archive(&eds, &eds_tar)?;
    node.containerd().import(&eds_tar)?;
    let overlay = dir.join("overlay");
    std::fs::create_dir_all(&overlay)?;
    let base = workspace().join("deploy/kustomize/base").canonicalize()?;
    std::fs::write(
        overlay.join("kustomization.yaml"),
        eds_overlay(&relative(&overlay.canonicalize()?, &base)),
    )?;
    // The base leaves the namespace to the operator, as operators expect.
    kubectl(plane, &["create", "namespace", "eds-system"])?;
    kubectl(plane, &["apply", "-k", overlay.to_str().context("UTF-8")?])?;
    let eds_pod = wait_for(
        "eds-server pod Ready",
        Duration::from_secs(120),
        || {
            let pods: serde_json::Value = serde_json::from_str(&kubectl(
                plane,
                &[
                    "-n",
                    "eds-system",
                    "get",
                    "pods",
                    "-l",
                    "app.kubernetes.io/name=eds-server",
                    "-o",
                    "json",
                ],
            )?)?;
            let ready = pods["items"].as_array().into_iter().flatten().find(|p| {
                p["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
            Ok(match ready {
                Some(p) => Ok(p.clone()),
                None => Err(format!(
                    "{} pods, none Ready",
                    pods["items"].as_array().map_or(0, Vec::len)
                )),
            })
        },
        diagnose,
    )?;
    eprintln!(
        "eds-server ready on the node after {:.1?}",
        started.elapsed()
    );
    let eds_ip: std::net::Ipv4Addr = eds_pod["status"]["podIP"]
        .as_str()
        .context("no eds-server pod IP")?
        .parse()?;
    assert_eq!(eds_pod["status"]["containerStatuses"][0]["ready"], true);
    // The base's securityContext, as the kernel enforces it on the process.
    let cid = eds_pod["status"]["containerStatuses"][0]["containerID"]
        .as_str()
        .context("a container id")?;
    let c = workload::confinement(workload::container_pid(node.state(), cid)?)?;
    eprintln!("eds-server from the kustomize base: {c:?}");
    ensure!(
        c.uids == [65532; 4]
            && c.cap_eff == 0
            && c.no_new_privs
            && c.seccomp == 2
            && c.root_read_only,
        "the kustomize base's securityContext is enforced: {c:?}"
    );

    // Its admin API has the echo endpoint, in the Node's zone, learned
    // through the API with its own ServiceAccount token.
    plane.network().verify_route(eds_ip)?;
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = eds_devkit::server::http_get(
                std::net::SocketAddr::from((eds_ip, 18001)),
                "/debug/snapshot",
            )
            .await;
            let healthy = got.as_ref().ok().and_then(|(_, body)| {
                let v: serde_json::Value = serde_json::from_str(body).ok()?;
                let echo = v["services"]
                    .as_array()?
                    .iter()
                    .find(|s| s["key"] == "echo.demo:8080")?;
                echo["zones"][node.state().zone.as_str()]["HEALTHY"].as_u64()
            });
            match healthy {
                Some(1) => return Ok(()),
                _ if Instant::now() > deadline => {
                    bail!("eds-server's snapshot never showed echo.demo:8080 healthy in its zone: {got:?}")
                }
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    })?;
    Ok(())
}

/// A DNS query for `name`'s A record: the first address answered.
fn dns_query(name: &str) -> Vec<u8> {
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// Asks `server` (UDP) for `name`'s A record, a few times (UDP may drop).
fn dns_a(server: std::net::SocketAddr, name: &str) -> anyhow::Result<std::net::Ipv4Addr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
    socket.set_read_timeout(Some(Duration::from_secs(2)))?;
    let query = dns_query(name);
    let mut last = None;
    for _ in 0..5 {
        socket.send_to(&query, server)?;
        let mut buf = [0u8; 512];
        match socket.recv(&mut buf) {
            Ok(n) => return parse_a(&buf[..n]),
            Err(e) => last = Some(e),
        }
    }
    bail!("no DNS answer from {server} for {name}: {last:?}")
}

/// The first A record of a DNS answer to one question.
fn parse_a(msg: &[u8]) -> anyhow::Result<std::net::Ipv4Addr> {
    ensure!(msg.len() > 12, "short DNS answer");
    let rcode = msg[3] & 0x0f;
    let answers = u16::from_be_bytes([msg[6], msg[7]]);
    ensure!(
        rcode == 0 && answers > 0,
        "rcode {rcode}, {answers} answers"
    );
    // Skip the question: a name (labels up to the 0) and type and class.
    let mut i = 12;
    while msg.get(i).copied().unwrap_or(0) != 0 {
        i += 1 + usize::from(msg[i]);
    }
    i += 5;
    for _ in 0..answers {
        // A compressed name is two bytes; otherwise labels.
        if msg.get(i).is_some_and(|b| b & 0xc0 == 0xc0) {
            i += 2;
        } else {
            while msg.get(i).copied().unwrap_or(0) != 0 {
                i += 1 + usize::from(msg[i]);
            }
            i += 1;
        }
        let rr = msg.get(i..i + 10).context("truncated record")?;
        let (kind, len) = (
            u16::from_be_bytes([rr[0], rr[1]]),
            usize::from(u16::from_be_bytes([rr[8], rr[9]])),
        );
        let data = msg.get(i + 10..i + 10 + len).context("truncated data")?;
        if kind == 1 && len == 4 {
            return Ok(std::net::Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        i += 10 + len;
    }
    bail!("no A record in the answer")
}

/// Asks `server` (port 53) for `name` from inside a pod's network namespace
/// on `node` (the first running task's), with Python's sockets: the images
/// hold no DNS client, and this must be the pod's own routing.
fn pod_netns_dns(node: &Node, name: &str, server: &str) -> anyhow::Result<std::net::Ipv4Addr> {
    let tasks = node.containerd().ctr(&["tasks", "ls"])?;
    let pid = tasks
        .lines()
        .skip(1)
        .find(|l| l.contains("RUNNING"))
        .and_then(|l| l.split_whitespace().nth(1))
        .context("no running task")?;
    // Each line its own literal: a `\` line continuation would eat the
    // indentation Python needs.
    let script = [
        "import socket,sys",
        "q=bytes.fromhex(sys.argv[1])",
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)",
        "s.settimeout(2)",
        "for _ in range(5):",
        "    s.sendto(q,(sys.argv[2],53))",
        "    try:",
        "        sys.stdout.write(s.recv(512).hex()); break",
        "    except socket.timeout:",
        "        pass",
    ]
    .join("\n");
    let hex: String = dns_query(name).iter().map(|b| format!("{b:02x}")).collect();
    let out = Command::new("nsenter")
        .args([
            "-t", pid, "-n", "--", "python3", "-c", &script, &hex, server,
        ])
        .output()?;
    ensure!(
        out.status.success(),
        "the query in the pod's namespace failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let bytes: Vec<u8> = (0..text.len() / 2)
        .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16))
        .collect::<Result<_, _>>()?;
    parse_a(&bytes)
}

/// A tiny IPv4 CIDR, enough to check a pod IP's subnet.
mod ipnet_like {
    use std::net::Ipv4Addr;

    pub(crate) struct Net(u32, u32);

    impl std::str::FromStr for Net {
        type Err = anyhow::Error;
        fn from_str(s: &str) -> anyhow::Result<Self> {
            let (ip, len) = s.split_once('/').ok_or_else(|| anyhow::anyhow!("{s}"))?;
            let ip: Ipv4Addr = ip.parse()?;
            let len: u32 = len.parse()?;
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            Ok(Net(u32::from(ip) & mask, mask))
        }
    }

    impl Net {
        pub(crate) fn contains(&self, ip: Ipv4Addr) -> bool {
            u32::from(ip) & self.1 == self.0
        }
    }
}

#[test]
#[ignore = "needs root and `cargo xtask cluster build --nodes`; about two minutes"]
fn a_deployment_runs_on_a_real_node() -> anyhow::Result<()> {
    let bins = node_build::node_binaries()?;
    ensure!(
        bins.present(),
        "the node components are not built: run `cargo xtask cluster build --nodes`"
    );
    let dir = test_dir();
    let started = Instant::now();
    let plane =
        ControlPlane::start_with(&dir, Lifetime::Tied, false, PlaneOptions { nodes: true })?;
    let images = node::build_node_images(&dir.join("images"), &bins)?;
    let mut node = Node::start(&plane, &bins, 1, &images, Lifetime::Tied)?;
    node::install_cluster_dns(&plane, &dir)?;
    eprintln!(
        "control plane and node-1 Ready after {:.1?}",
        started.elapsed()
    );
    let result = scenario(&plane, &node, &dir);
    if let Ok(()) = &result {
        report_cost(&plane, &node);
    }
    node.stop();
    drop(plane);
    std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    result
}

/// Prints what the node's processes cost (RSS now, CPU time so far).
fn report_cost(plane: &ControlPlane, node: &Node) {
    let _ = plane;
    for (name, pid) in [
        ("kubelet", node.state().kubelet_pid),
        ("containerd", node.containerd().pid()),
    ] {
        let rss = eds_devkit::cluster::rss_kib(pid).unwrap_or(0);
        let cpu = cpu_seconds(pid).unwrap_or(0.0);
        eprintln!("{name}: RSS {} MiB, CPU {cpu:.1} s since start", rss / 1024);
    }
}

//! A real Kubernetes node as local processes: one containerd and one
//! kubelet, both inside the pod network namespace ([`crate::netns`]), with
//! pods on a CNI bridge there.
//!
//! ```text
//!  host netns                       pod network netns (held by `sleep`)
//!  kube-apiserver 10.X.0.1:A <====> eth0 10.X.0.2, node IPs 10.X.0.1<n>
//!  route 10.X.0.0/16 -> edsh<pid>    kubelet n (--node-ip 10.X.0.1<n>, zone label)
//!                                    containerd n -> CNI bridge edsbr<n> 10.X.25<n>.1/24
//!                                       pod netns: eth0 10.X.25<n>.k/24,
//!                                       routes to 10.X.0.0/16 only (no default)
//! ```
//!
//! Why inside the namespace: the kubelet's iptables chains and the bridge
//! go away with it, and every pod address sits inside the /16 the host
//! routes into it, so [`crate::netns::PodNetwork::verify_route`] holds for
//! pods too. Pods get no default route: they can reach the API server, the
//! node and each other, and nothing else.
//!
//! Three things about this machine shape the kubelet's start (see
//! `../shared/LOCAL-CLUSTER.md`, "Nodes"): cgroups are v1
//! (`failCgroupV1: false`, no QoS cgroups); no CAP_SYS_RESOURCE (containerd's
//! `restrict_oom_score_adj`, kubelet `oomScoreAdj: 0`); and the kubelet
//! writes six kernel sysctls it wants (`kernel.panic_on_oops=1` among them)
//! unless they already have its values. This harness must not retune the
//! machine's kernel, so the kubelet runs in a mount namespace of its own
//! where those six `/proc/sys` files are covered with files holding the
//! kubelet's values; its root directory is a shared mount, so the volumes it
//! mounts there reach containerd in the host's mount namespace.
//!
//! Teardown ([`Node::stop`], [`NodeState::stop`]): kubelet first (nothing
//! restarts pods), then every container and sandbox through containerd,
//! containerd, then every mount under the node's directory (sandbox network
//! namespaces, volumes, the root bind mount), the container log links the
//! kubelet left in `/var/log/containers`, and the empty `k8s.io` cgroups.
//!
//! ClusterIPs: node 1 also runs kube-proxy (iptables mode) in the
//! namespace, one for all nodes since they share it. Pods route the Service
//! CIDR to their bridge, where kube-proxy's DNAT rewrites it; in the
//! namespace the CIDR is otherwise `unreachable`, so a ClusterIP without a
//! rule is refused rather than sent toward the host's default route.
//!
//! Names: CoreDNS runs as a pod behind `kube-dns` ([`install_cluster_dns`]),
//! answering for `cluster.local` only (no upstream).
//!
//! What this is not: a secure node: the kubelet and kube-proxy use the admin kubeconfig and the
//! kubelet answers its API without authorization checks.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::containerd::{self, Containerd, ContainerdConfig};
use super::node_build::NodeBinaries;
use super::{ClusterState, ControlPlane, SERVICE_CIDR};
use crate::image;
use crate::netns::run;
use crate::process::{ChildProcess, Lifetime, log_tail};

/// At most this many nodes: each takes one /24 of the pod network above
/// the block the process pods draw from (10.X.1-250.*).
pub const MAX_NODES: u8 = 5;

/// The zone of node `index` (1-based): `zone-a`, `zone-b`, ...
pub fn zone_of(index: u8) -> String {
    format!("zone-{}", char::from(b'a' + (index - 1) % 26))
}

/// What identifies a running node, enough to stop it from another process.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeState {
    /// The Node's name (`node-1`).
    pub name: String,
    /// Its `topology.kubernetes.io/zone`.
    pub zone: String,
    /// The directory it owns.
    pub dir: PathBuf,
    /// The node's address (the Node's InternalIP).
    pub ip: Ipv4Addr,
    /// The pods' subnet on its bridge.
    pub pod_cidr: String,
    /// The kubelet's pid.
    pub kubelet_pid: u32,
    /// containerd's pid.
    pub containerd_pid: u32,
    /// kube-proxy's pid: node 1 runs the one kube-proxy of the namespace
    /// all nodes share (iptables rules are per network namespace).
    #[serde(default)]
    pub kube_proxy_pid: Option<u32>,
    /// `ctr`, to kill containers at teardown.
    pub ctr: PathBuf,
}

impl NodeState {
    /// Stops a node that another process started and released.
    pub fn stop(&self) {
        if let Some(pid) = self.kube_proxy_pid {
            crate::process::stop_group(pid, Duration::from_secs(5));
        }
        crate::process::stop_group(self.kubelet_pid, Duration::from_secs(5));
        containerd::stop_detached(&self.ctr, &self.containerd_dir(), self.containerd_pid);
        finish_teardown(&self.dir);
    }

    fn containerd_dir(&self) -> PathBuf {
        self.dir.join("c")
    }

    /// Runs `ctr` against this node's containerd (Kubernetes' namespace).
    pub fn ctr(&self, args: &[&str]) -> anyhow::Result<String> {
        containerd::ctr_at(
            &self.ctr,
            &self.containerd_dir().join("containerd.sock"),
            args,
        )
    }
}

/// After the processes: every mount left under the node's directory, and
/// the kubelet's links in `/var/log/containers` into it.
fn finish_teardown(dir: &Path) {
    containerd::unmount_under(dir);
    if let Ok(links) = fs::read_dir("/var/log/containers") {
        for link in links.flatten() {
            if fs::read_link(link.path()).is_ok_and(|t| t.starts_with(dir)) {
                let _ = fs::remove_file(link.path());
            }
        }
        // The kubelet created it; gone only if nothing else uses it.
        let _ = fs::remove_dir("/var/log/containers");
    }
    // runc removes each container's cgroup, not the `k8s.io` parent the
    // CRI puts them under (cgroupfs, no QoS cgroups). rmdir only removes
    // an empty cgroup, so another node's running pods keep theirs.
    if let Ok(controllers) = fs::read_dir("/sys/fs/cgroup") {
        for c in controllers.flatten() {
            let _ = fs::remove_dir(c.path().join(CRI_CGROUP));
        }
    }
}

/// The cgroup (in every hierarchy) the CRI plugin puts pods' containers under.
const CRI_CGROUP: &str = "k8s.io";

/// A running node.
#[derive(Debug)]
pub struct Node {
    state: NodeState,
    kube_proxy: Option<ChildProcess>,
    kubelet: Option<ChildProcess>,
    containerd: Option<Containerd>,
}

/// The kubelet wants these sysctls at these values and writes them if they
/// differ (`pkg/kubelet/cm/container_manager_linux.go`,
/// `setupKernelTunables`).
const KUBELET_SYSCTLS: [(&str, &str); 6] = [
    ("vm/overcommit_memory", "1"),
    ("vm/panic_on_oom", "0"),
    ("kernel/panic", "10"),
    ("kernel/panic_on_oops", "1"),
    ("kernel/keys/root_maxkeys", "1000000"),
    ("kernel/keys/root_maxbytes", "25000000"),
];

/// The CNI network of node `index`: a bridge in the pod network namespace,
/// host-local addresses from `pod_cidr` (allocations kept in the node's
/// directory), and routes to the pod network and the Service CIDR only
/// (kube-proxy's DNAT in the namespace takes ClusterIPs from there).
pub fn cni_conflist(index: u8, pod_cidr: &str, pod_network: &str, ipam_dir: &Path) -> String {
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": format!("eds-node-{index}"),
        "plugins": [{
            "type": "bridge",
            "bridge": format!("edsbr{index}"),
            // The bridge's address is the pods' gateway; forwarding in the
            // namespace carries pod <-> host traffic.
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": pod_cidr }]],
                // No default route: a pod has no way off the machine.
                "routes": [{ "dst": pod_network }, { "dst": SERVICE_CIDR }],
                "dataDir": ipam_dir,
            },
        }],
    });
    serde_json::to_string_pretty(&conf).expect("a JSON value serialises")
}

/// The kubelet's configuration file (JSON is YAML).
fn kubelet_config(state: &NodeState, socket: &Path, ca: &Path) -> serde_json::Value {
    json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": state.ip.to_string(),
        "port": 10250,
        "readOnlyPort": 0,
        // Off: several kubelets share the namespace's loopback.
        "healthzPort": 0,
        "containerRuntimeEndpoint": format!("unix://{}", socket.display()),
        "podLogsDir": state.dir.join("logs"),
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": false,
        "cgroupsPerQOS": false,
        "enforceNodeAllocatable": [],
        "failSwapOn": false,
        "oomScoreAdj": 0,
        // Pods get no resolv.conf from the host: their DNS must never
        // leave the machine. They ask CoreDNS ([`install_cluster_dns`]).
        "resolvConf": "",
        "clusterDNS": [CLUSTER_DNS_IP],
        "clusterDomain": "cluster.local",
        "authentication": {
            "anonymous": { "enabled": false },
            "webhook": { "enabled": false },
            "x509": { "clientCAFile": ca },
        },
        "authorization": { "mode": "AlwaysAllow" },
        // Images come from `ctr images import` and cannot be pulled again:
        // never collect them, never evict for a nearly full test disk.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
        },
        "nodeStatusReportFrequency": "10s",
        "registerNode": true,
    })
}

impl Node {
    /// Starts node `index` (1-based) of `plane`: containerd with `images`
    /// imported ([`build_node_images`]: pause and CoreDNS) and a
    /// kubelet registering `node-<index>` in zone [`zone_of`]. Returns once
    /// the Node is Ready.
    pub fn start(
        plane: &ControlPlane,
        bins: &NodeBinaries,
        index: u8,
        images: &[PathBuf],
        lifetime: Lifetime,
    ) -> anyhow::Result<Self> {
        ensure!(
            (1..=MAX_NODES).contains(&index),
            "node index {index} outside 1..={MAX_NODES}"
        );
        ensure!(
            bins.present(),
            "the node components are not built: run `cargo xtask cluster build --nodes`"
        );
        let cluster: &ClusterState = plane.state();
        let net = &cluster.network;
        let holder = net.holder_pid;
        let octet = net.octet;
        let name = format!("node-{index}");
        let dir = cluster.dir.join(format!("n{index}"));
        if dir.exists() {
            finish_teardown(&dir);
            fs::remove_dir_all(&dir).with_context(|| format!("wiping {}", dir.display()))?;
        }
        fs::create_dir_all(&dir)?;
        let ip = Ipv4Addr::new(10, octet, 0, 10 + index);
        let pod_cidr = format!("10.{octet}.{}.0/24", 250 + index);
        let mut state = NodeState {
            name: name.clone(),
            zone: zone_of(index),
            dir: dir.clone(),
            ip,
            pod_cidr: pod_cidr.clone(),
            kubelet_pid: 0,
            containerd_pid: 0,
            kube_proxy_pid: None,
            ctr: bins.ctr.clone(),
        };

        // The node's own address, forwarding between eth0 and the bridges,
        // and proxy ARP on eth0: the host's route to the /16 is on-link, so
        // it asks for a pod's address on the veth and this namespace must
        // answer for the bridges behind it. All inside the namespace.
        let ns = |script: &str| {
            run(Command::new("nsenter")
                .arg("-t")
                .arg(holder.to_string())
                .args(["-n", "--", "sh", "-c", script]))
        };
        // The Service CIDR is unreachable in the namespace: a ClusterIP
        // packet kube-proxy has not rewritten (no rule yet, no endpoint) is
        // refused here instead of following the default route to the host.
        ns(&format!(
            "ip addr replace {ip}/32 dev eth0 && sysctl -qw net.ipv4.ip_forward=1 && sysctl -qw net.ipv4.conf.eth0.proxy_arp=1 && ip route replace unreachable {SERVICE_CIDR}"
        ))?;

        let ctd_config = ContainerdConfig {
            dir: state.containerd_dir(),
            sandbox_image: image::PAUSE_IMAGE.into(),
            cni_bin_dir: bins.cni_bin_dir.clone(),
            netns_of: Some(holder),
        };
        fs::create_dir_all(ctd_config.cni_conf_dir())?;
        fs::write(
            ctd_config.cni_conf_dir().join("10-eds.conflist"),
            cni_conflist(index, &pod_cidr, &net.cidr(), &dir.join("ipam")),
        )?;
        let containerd = Containerd::start(ctd_config, bins, lifetime)?;
        for tar in images {
            containerd.import(tar)?;
        }
        state.containerd_pid = containerd.pid();

        // The kubelet's root: a shared bind mount, so what the kubelet
        // mounts there from its own mount namespace shows in the host's,
        // where containerd and runc look for volumes.
        let root = dir.join("kubelet");
        fs::create_dir_all(&root)?;
        fs::create_dir_all(dir.join("logs"))?;
        let root_s = root.to_str().context("paths are UTF-8")?;
        run(Command::new("mount").args(["--bind", root_s, root_s]))?;
        run(Command::new("mount").args(["--make-rshared", root_s]))?;

        let ca = cluster.dir.join("pki").join("ca.crt");
        let config = dir.join("kubelet.json");
        fs::write(
            &config,
            serde_json::to_vec_pretty(&kubelet_config(&state, &containerd.socket(), &ca))?,
        )?;
        let sysctl_dir = dir.join("sysctl");
        fs::create_dir_all(&sysctl_dir)?;
        let mut script = String::from("set -e; mount --make-rprivate /proc; ");
        for (key, value) in KUBELET_SYSCTLS {
            let file = sysctl_dir.join(key.replace('/', "."));
            fs::write(&file, format!("{value}\n"))?;
            script.push_str(&format!(
                "mount --bind {} /proc/sys/{key}; ",
                file.display()
            ));
        }
        script.push_str("exec \"$@\"");
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t")
            .arg(holder.to_string())
            .args([
                "-n",
                "--",
                "unshare",
                "--mount",
                "--propagation",
                "unchanged",
            ])
            .args(["--", "sh", "-c", &script, "kubelet"])
            .arg(&bins.kubelet)
            .arg(format!("--config={}", config.display()))
            .arg(format!("--kubeconfig={}", cluster.kubeconfig.display()))
            .arg(format!("--root-dir={root_s}"))
            .arg(format!("--hostname-override={name}"))
            .arg(format!("--node-ip={ip}"))
            .arg(format!(
                "--node-labels=topology.kubernetes.io/zone={}",
                state.zone
            ));
        let kubelet = ChildProcess::spawn("kubelet", cmd, &dir.join("kubelet.log"), lifetime)?;
        state.kubelet_pid = kubelet.pid();
        let mut node = Self {
            state,
            kube_proxy: None,
            kubelet: Some(kubelet),
            containerd: Some(containerd),
        };
        node.wait_ready(plane, Duration::from_secs(90))?;
        if index == 1 {
            node.start_kube_proxy(plane, bins, lifetime)?;
        }
        Ok(node)
    }

    /// kube-proxy (iptables mode) in the pod network namespace, and waits
    /// until it has written the `kubernetes` Service's rule: from then on
    /// pods reach the API server through its ClusterIP.
    fn start_kube_proxy(
        &mut self,
        plane: &ControlPlane,
        bins: &NodeBinaries,
        lifetime: Lifetime,
    ) -> anyhow::Result<()> {
        let cluster = plane.state();
        let holder = cluster.network.holder_pid.to_string();
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &holder, "-n", "--"])
            .arg(&bins.kube_proxy)
            .arg(format!("--kubeconfig={}", cluster.kubeconfig.display()))
            .arg(format!("--hostname-override={}", self.state.name))
            .arg("--proxy-mode=iptables")
            // Without br_netfilter (a kernel module: the machine's, not
            // ours to load) a pod's reply to a pod on the same bridge skips
            // conntrack and so the reverse NAT; masquerading every Service
            // connection makes replies come back through the gateway.
            .arg("--masquerade-all")
            .arg(format!("--cluster-cidr={}", cluster.network.cidr()))
            // No CAP_SYS_RESOURCE here.
            .arg("--oom-score-adj=0")
            // Leave the kernel's conntrack table size (global, not per
            // namespace) and timeouts as they are.
            .arg("--conntrack-max-per-core=0")
            .arg("--conntrack-tcp-timeout-established=0")
            .arg("--conntrack-tcp-timeout-close-wait=0");
        let proxy = ChildProcess::spawn(
            "kube-proxy",
            cmd,
            &self.state.dir.join("kube-proxy.log"),
            lifetime,
        )?;
        self.state.kube_proxy_pid = Some(proxy.pid());
        self.kube_proxy = Some(proxy);
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(p) = self.kube_proxy.as_mut() {
                p.check_running()?;
            }
            let rules = run(Command::new("nsenter")
                .args(["-t", &holder, "-n", "--"])
                .args(["iptables", "-t", "nat", "-S", "KUBE-SERVICES"]))
            .unwrap_or_default();
            if rules.contains("default/kubernetes:https cluster IP") {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "kube-proxy wrote no rule for the kubernetes Service in 90 s; last lines of its log:\n{}",
                    log_tail(&self.state.dir.join("kube-proxy.log"), 30)
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Waits until the Node reports Ready.
    fn wait_ready(&mut self, plane: &ControlPlane, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(k) = self.kubelet.as_mut() {
                k.check_running()?;
            }
            let out = plane
                .kubectl()
                .args([
                    "get",
                    "node",
                    &self.state.name,
                    "-o",
                    "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
                ])
                .output()?;
            if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "True" {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} not Ready after {timeout:?}; last lines of its kubelet log:\n{}",
                    self.state.name,
                    log_tail(&self.state.dir.join("kubelet.log"), 30)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// What identifies it.
    pub fn state(&self) -> &NodeState {
        &self.state
    }

    /// Its containerd.
    pub fn containerd(&self) -> &Containerd {
        self.containerd
            .as_ref()
            .expect("containerd runs until stop or release")
    }

    /// Fails if the kubelet has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        match self.kubelet.as_mut() {
            Some(k) => k.check_running(),
            None => bail!("{} was stopped", self.state.name),
        }
    }

    /// Leaves a detached node running (for `cluster up`).
    pub fn release(mut self) -> NodeState {
        if let Some(p) = self.kube_proxy.take() {
            p.release();
        }
        if let Some(k) = self.kubelet.take() {
            k.release();
        }
        if let Some(c) = self.containerd.take() {
            c.release();
        }
        self.state.clone()
    }

    /// Stops the kubelet, every container, containerd, and detaches every
    /// mount under the node's directory. Best effort.
    pub fn stop(&mut self) {
        if self.kubelet.is_none() && self.containerd.is_none() {
            // Stopped already, or released: its mounts belong to whoever runs it.
            return;
        }
        if let Some(mut p) = self.kube_proxy.take() {
            p.stop(Duration::from_secs(5));
        }
        if let Some(mut k) = self.kubelet.take() {
            k.stop(Duration::from_secs(5));
        }
        if let Some(mut c) = self.containerd.take() {
            c.stop();
        }
        finish_teardown(&self.state.dir);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `kube-dns` Service's ClusterIP.
pub const CLUSTER_DNS_IP: &str = "10.96.0.10";

/// The images every node needs, written to `out`: pause (the sandbox) and
/// CoreDNS (the cluster DNS).
pub fn build_node_images(out: &Path, bins: &NodeBinaries) -> anyhow::Result<Vec<PathBuf>> {
    let pause = build_pause_image(out)?;
    let coredns = out.join("coredns.tar");
    image::write_oci_archive(&image::coredns_image(&bins.coredns)?, &coredns)?;
    Ok(vec![pause, coredns])
}

/// CoreDNS behind `kube-dns` (`kube-system`), as kubeadm installs it but
/// with no `forward`: names outside `cluster.local` get no answer rather
/// than a query to a server off the machine. It listens on 1053 (no
/// capability to bind 53 as non-root); the Service maps 53 to it.
const CLUSTER_DNS: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata: { name: coredns, namespace: kube-system }
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: { name: "system:coredns" }
rules:
  - apiGroups: [""]
    resources: [endpoints, services, pods, namespaces]
    verbs: [list, watch]
  - apiGroups: [discovery.k8s.io]
    resources: [endpointslices]
    verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: { name: "system:coredns" }
roleRef: { apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns" }
subjects: [{ kind: ServiceAccount, name: coredns, namespace: kube-system }]
---
apiVersion: v1
kind: ConfigMap
metadata: { name: coredns, namespace: kube-system }
data:
  Corefile: |
    .:1053 {
        errors
        ready :8181
        kubernetes cluster.local in-addr.arpa ip6.arpa {
            pods insecure
            fallthrough in-addr.arpa ip6.arpa
        }
        cache 30
    }
---
apiVersion: apps/v1
kind: Deployment
metadata: { name: coredns, namespace: kube-system, labels: { k8s-app: kube-dns } }
spec:
  replicas: 1
  selector: { matchLabels: { k8s-app: kube-dns } }
  template:
    metadata: { labels: { k8s-app: kube-dns } }
    spec:
      serviceAccountName: coredns
      dnsPolicy: Default
      securityContext: { runAsNonRoot: true, seccompProfile: { type: RuntimeDefault } }
      containers:
        - name: coredns
          image: IMAGE
          imagePullPolicy: Never
          args: ["-conf", "/etc/coredns/Corefile"]
          ports:
            - { name: dns, containerPort: 1053, protocol: UDP }
            - { name: dns-tcp, containerPort: 1053, protocol: TCP }
          readinessProbe:
            httpGet: { path: /ready, port: 8181 }
            periodSeconds: 1
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities: { drop: ["ALL"] }
          volumeMounts: [{ name: config, mountPath: /etc/coredns, readOnly: true }]
      volumes: [{ name: config, configMap: { name: coredns } }]
---
apiVersion: v1
kind: Service
metadata: { name: kube-dns, namespace: kube-system, labels: { k8s-app: kube-dns } }
spec:
  clusterIP: CLUSTER_IP
  selector: { k8s-app: kube-dns }
  ports:
    - { name: dns, port: 53, targetPort: 1053, protocol: UDP }
    - { name: dns-tcp, port: 53, targetPort: 1053, protocol: TCP }
"#;

/// Deploys CoreDNS behind `kube-dns` ([`CLUSTER_DNS_IP`]) and waits until
/// it is Ready. Every node must hold its image ([`build_node_images`]).
pub fn install_cluster_dns(plane: &ControlPlane, dir: &Path) -> anyhow::Result<()> {
    let file = dir.join("cluster-dns.yaml");
    fs::write(
        &file,
        CLUSTER_DNS
            .replace("IMAGE", image::COREDNS_IMAGE)
            .replace("CLUSTER_IP", CLUSTER_DNS_IP),
    )?;
    let out = plane.kubectl().args(["apply", "-f"]).arg(&file).output()?;
    ensure!(
        out.status.success(),
        "applying {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let out = plane
            .kubectl()
            .args([
                "-n",
                "kube-system",
                "get",
                "deployment",
                "coredns",
                "-o",
                "jsonpath={.status.readyReplicas}",
            ])
            .output()?;
        if String::from_utf8_lossy(&out.stdout).trim() == "1" {
            return Ok(());
        }
        if Instant::now() > deadline {
            let pods = plane
                .kubectl()
                .args(["-n", "kube-system", "get", "pods,events"])
                .output()?;
            bail!(
                "CoreDNS not Ready after 90 s:\n{}",
                String::from_utf8_lossy(&pods.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Compiles `deploy/pause/pause.c` static into `<out>/pause`; returns its
/// path. `cargo xtask image` uses it too.
pub fn build_pause(out: &Path) -> anyhow::Result<PathBuf> {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/pause/pause.c");
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let binary = out.join("pause");
    let output = Command::new("gcc")
        .args(["-static", "-Os", "-s", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&binary)
        .arg(&source)
        .output()
        .context("running gcc (Debian's gcc and libc6-dev build the pause program)")?;
    if !output.status.success() {
        bail!(
            "gcc failed on {} ({}); a static build needs libc6-dev's libc.a:\n{}",
            source.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(binary)
}

/// Compiles the pause program ([`build_pause`]) and writes the pause image
/// to `<out>/pause.tar`; returns its path.
pub fn build_pause_image(out: &Path) -> anyhow::Result<PathBuf> {
    let binary = build_pause(out)?;
    let tar = out.join("pause.tar");
    image::write_oci_archive(&image::pause_image(&binary)?, &tar)?;
    Ok(tar)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones_are_lettered() {
        assert_eq!(zone_of(1), "zone-a");
        assert_eq!(zone_of(3), "zone-c");
    }

    #[test]
    fn pods_route_to_the_pod_network_only() {
        let text = cni_conflist(2, "10.201.252.0/24", "10.201.0.0/16", Path::new("/d/ipam"));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let bridge = &v["plugins"][0];
        assert_eq!(bridge["type"], "bridge");
        assert_eq!(bridge["bridge"], "edsbr2");
        assert_eq!(bridge["ipMasq"], false);
        assert_eq!(
            bridge["ipam"]["routes"],
            json!([{ "dst": "10.201.0.0/16" }, { "dst": SERVICE_CIDR }]),
            "no default route out of a pod"
        );
        assert_eq!(bridge["ipam"]["dataDir"], "/d/ipam");
        assert_eq!(bridge["ipam"]["ranges"][0][0]["subnet"], "10.201.252.0/24");
    }
}

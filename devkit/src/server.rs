//! eds-server in-process for integration tests, and the small helpers the
//! tests use around it: its admin HTTP API, its Prometheus text, a
//! kubeconfig the API server refuses, and the echo Service most tests serve.
//!
//! ```text
//!  start_server(cluster, ns, flags)   eds_server::app::run_until on free loopback ports,
//!    .xds / .admin                    scoped to one namespace, stopped when dropped
//!    .wait_ready()                    polls /readyz
//!    .get("/debug/clients")           a minimal HTTP/1.0 GET: (status, body)
//!    .metric("eds_xds_nacks_total")   sum of a metric over its label sets
//!  echo_service(ns, n)                Service `echo` (port grpc 8080 -> 9090) + n ready pods
//!  serves_exactly(resp, key, addrs)   a response carries exactly these, all HEALTHY
//! ```
//!
//! The server is the real one (`eds_server::app`), configured through its
//! real command line. Not a process: it runs on the test's tokio runtime,
//! so a test can start several replicas cheaply.

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use lb_core::Health;
use proto::xds::pb::envoy::service::discovery::v3::DiscoveryResponse;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{PodSpec, ServicePortSpec, Target, TestCluster, TestNamespace, TestPod};
use crate::xds::endpoints_named;

/// How long the helpers here wait for the server.
pub const WAIT: Duration = Duration::from_secs(60);

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A running in-process eds-server; stopped when dropped.
#[derive(Debug)]
pub struct Server {
    /// The xDS gRPC address.
    pub xds: SocketAddr,
    /// The admin HTTP address.
    pub admin: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

impl Server {
    /// Starts eds-server with `flags` (no program name, no `--xds-addr` or
    /// `--admin-addr`: both are free loopback ports chosen here). Must be
    /// called on a tokio runtime; the server runs on it.
    pub fn start(flags: &[String]) -> anyhow::Result<Self> {
        let xds = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        Self::start_on(xds, admin, flags)
    }

    /// Like [`Server::start`] on given addresses: a restarted server keeps
    /// the address its clients know.
    pub fn start_on(xds: SocketAddr, admin: SocketAddr, flags: &[String]) -> anyhow::Result<Self> {
        let mut args = vec![
            "eds-server".to_owned(),
            format!("--xds-addr={xds}"),
            format!("--admin-addr={admin}"),
        ];
        args.extend(flags.iter().cloned());
        let config = eds_server::config::Args::try_parse_from(args)?.validate()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(eds_server::app::run_until(config, async move {
            let _ = stopped.await;
        }));
        Ok(Self {
            xds,
            admin,
            stop: Some(stop),
            task,
        })
    }

    /// GET `path` on the admin server: (status code, body).
    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        http_get(self.admin, path).await
    }

    /// GET `path`, which must answer 200 with JSON.
    pub async fn get_json(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let (code, body) = self.get(path).await?;
        anyhow::ensure!(code == 200, "GET {path}: {code} {body}");
        serde_json::from_str(&body).with_context(|| format!("GET {path}: not JSON: {body}"))
    }

    /// The sum of metric `name` over all its label sets (0 when absent).
    pub async fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let (code, body) = self.get("/metrics").await?;
        anyhow::ensure!(code == 200, "GET /metrics: {code} {body}");
        Ok(metric_sum(&body, name, &[]))
    }

    /// Waits until `/readyz` answers 200; fails early if the server stopped.
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        crate::harness::eventually("eds-server /readyz", WAIT, || async {
            anyhow::ensure!(
                !self.task.is_finished(),
                "eds-server stopped before it was ready (see the test log)"
            );
            Ok(match http_get(self.admin, "/readyz").await {
                Ok((200, _)) => Ok(()),
                Ok((code, body)) => Err(format!("{code} {body}")),
                Err(e) => Err(e.to_string()),
            })
        })
        .await
    }
}

/// Starts eds-server with the cluster's admin kubeconfig, watching only
/// namespace `ns`, with a 50 ms coalescing window, plus `extra` flags.
pub async fn start_server(
    cluster: &TestCluster,
    ns: &str,
    extra: &[&str],
) -> anyhow::Result<Server> {
    let mut flags = vec![
        format!("--kubeconfig={}", cluster.kubeconfig().display()),
        format!("--namespace={ns}"),
        "--coalesce-window=50ms".to_owned(),
    ];
    flags.extend(extra.iter().map(|s| (*s).to_owned()));
    Server::start(&flags)
}

/// Waits until `server`'s `/readyz` answers 200.
pub async fn wait_ready(server: &Server) -> anyhow::Result<()> {
    server.wait_ready().await
}

/// Writes a kubeconfig for the cluster whose identity (a made-up bearer
/// token) the API server refuses with 401, into the cluster directory
/// under `name`, and returns its path.
pub fn refused_kubeconfig(cluster: &TestCluster, name: &str) -> anyhow::Result<PathBuf> {
    let path = cluster.state().dir.join(format!("bad-kubeconfig-{name}"));
    let config = serde_json::json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": cluster.state().api_url, "certificate-authority": cluster.state().dir.join("pki/ca.crt")}}],
        "users": [{"name": "u", "user": {"token": "not-a-valid-token"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    });
    std::fs::write(&path, serde_json::to_vec(&config)?)?;
    Ok(path)
}

/// A minimal HTTP/1.0 GET: (status code, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await?;
    let code = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("bad HTTP response: {raw:?}"))?;
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((code, body))
}

/// The sum of the samples of metric `name` in Prometheus/OpenMetrics text
/// whose labels include every `key="value"` of `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let wanted = metric == name
                && labels
                    .iter()
                    .all(|(k, v)| label_text.split(',').any(|l| l == format!("{k}=\"{v}\"")));
            wanted.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// `<pod IP>:9090` of each pod: the endpoints the echo Service should have.
pub fn echo_addresses<'a>(pods: impl IntoIterator<Item = &'a TestPod>) -> BTreeSet<String> {
    pods.into_iter()
        .map(|p| format!("{}:9090", p.ip()))
        .collect()
}

/// Whether `resp` carries the ClusterLoadAssignment `key` with exactly the
/// addresses `want`, every one HEALTHY.
pub fn serves_exactly(resp: &DiscoveryResponse, key: &str, want: &BTreeSet<String>) -> bool {
    endpoints_named(resp, key)
        .ok()
        .flatten()
        .is_some_and(|set| {
            let all: BTreeSet<String> = set
                .endpoints()
                .iter()
                .map(|e| e.address.to_string())
                .collect();
            set.endpoints().iter().all(|e| e.health == Health::Healthy) && &all == want
        })
}

/// The node and zone the `i`-th echo pod goes to: two in zone-a, one in zone-b.
pub fn echo_placement(i: usize) -> (&'static str, &'static str) {
    if i % 3 == 2 {
        ("node-zone-b", "zone-b")
    } else {
        ("node-zone-a", "zone-a")
    }
}

/// Creates ready pod `name` of the echo Service, placed as the `i`-th one
/// ([`echo_placement`]), with container port `grpc` 9090 and label `shard=s<i>`.
pub async fn echo_pod(ns: &TestNamespace, name: &str, i: usize) -> anyhow::Result<TestPod> {
    let (node, _) = echo_placement(i);
    let pod = ns
        .pod(
            PodSpec::new(name, "echo", node)
                .port("grpc", 9090)
                .label("shard", &format!("s{i}")),
        )
        .await?;
    pod.set_ready(true).await?;
    Ok(pod)
}

/// Service `echo` (port `grpc` 8080 to the named container port `grpc`,
/// annotated `eds.rs/lb-policy: round-robin`) with ready pods `echo-0..n`
/// ([`echo_pod`]) on nodes in zone-a and zone-b.
pub async fn echo_service(ns: &TestNamespace, pods: usize) -> anyhow::Result<Vec<TestPod>> {
    ns.node("node-zone-a", "zone-a").await?;
    ns.node("node-zone-b", "zone-b").await?;
    ns.service(
        "echo",
        "echo",
        &[ServicePortSpec {
            name: "grpc".into(),
            port: 8080,
            target: Target::Name("grpc".into()),
        }],
        &[("eds.rs/lb-policy", "round-robin")],
    )
    .await?;
    let mut out = Vec::new();
    for i in 0..pods {
        out.push(echo_pod(ns, &format!("echo-{i}"), i).await?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::metric_sum;

    #[test]
    fn metric_sum_adds_matching_series() {
        let text = "# TYPE eds_xds_nacks counter\n\
                    eds_xds_nacks_total{protocol=\"sotw\",service=\"ads\"} 2\n\
                    eds_xds_nacks_total{protocol=\"delta\",service=\"ads\"} 1\n\
                    eds_xds_nacks_created 123.4\n\
                    eds_state{name=\"kube_events\"} 42\n\
                    # EOF\n";
        assert_eq!(metric_sum(text, "eds_xds_nacks_total", &[]), 3.0);
        assert_eq!(
            metric_sum(text, "eds_xds_nacks_total", &[("protocol", "sotw")]),
            2.0
        );
        assert_eq!(
            metric_sum(text, "eds_state", &[("name", "kube_events")]),
            42.0
        );
        assert_eq!(metric_sum(text, "eds_missing", &[]), 0.0);
    }
}

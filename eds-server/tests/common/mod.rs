//! What the binary-level tests share: free loopback ports, a kubeconfig
//! whose API server is a closed loopback port (the watchers retry in the
//! background, so no Kubernetes is needed), and a child process that is
//! killed when the test ends, however it ends.
//!
//! Not a test harness for the cluster tests: those live in `tests/` (the
//! `eds-tests` crate) and run on the local control plane.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use proto::xds::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;

/// Kills the server when the test ends, however it ends.
pub(crate) struct Killed(pub(crate) Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback address nothing listens on (for a moment).
fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Writes, in `dir`, a kubeconfig whose API server is a closed loopback port.
fn closed_kubeconfig(dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let closed = free_addr()?;
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://{closed}\n    insecure-skip-tls-verify: true\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\n"
        ),
    )?;
    Ok(kubeconfig)
}

/// An ADS client of the server at `xds`, retried until its port opens (the
/// binary binds it after parsing flags and building the kube client).
pub(crate) async fn ads_client(
    xds: SocketAddr,
) -> anyhow::Result<AggregatedDiscoveryServiceClient<tonic::transport::Channel>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match AggregatedDiscoveryServiceClient::connect(format!("http://{xds}")).await {
            Ok(c) => return Ok(c),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e).context("eds-server's xDS port never opened"),
        }
    }
}

/// The eds-server binary with a closed-port kubeconfig in `dir` and free xDS
/// and admin ports, its output discarded; the test adds its own flags and
/// spawns it. Returns the command and the xDS address.
pub(crate) fn server_command(dir: &Path) -> anyhow::Result<(Command, SocketAddr)> {
    let kubeconfig = closed_kubeconfig(dir)?;
    let (xds, admin) = (free_addr()?, free_addr()?);
    let mut command = Command::new(env!("CARGO_BIN_EXE_eds-server"));
    command
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg(format!("--xds-addr={xds}"))
        .arg(format!("--admin-addr={admin}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Ok((command, xds))
}

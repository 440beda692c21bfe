//! The eds-server binary on SIGTERM, as a Kubernetes rollout sends it: every
//! open xDS stream ends at once with UNAVAILABLE (so its client reconnects to
//! another replica instead of waiting on a dying one), the process exits
//! with success, and its xDS port no longer accepts connections.
//!
//! No Kubernetes is needed: the kubeconfig points at a closed loopback port,
//! so the server never syncs and the stream opened here waits, which is the
//! case where nothing else would ever end it. Bounded: every wait has a
//! timeout, and the process is killed when the test ends.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use proto::xds::pb::envoy::config::core::v3::Node;
use proto::xds::pb::envoy::service::discovery::v3::DiscoveryRequest;
use tokio::sync::mpsc;

use common::{Killed, ads_client, server_command};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_every_stream_with_unavailable_and_exits_cleanly() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("eds-sigterm-{}", std::process::id()));
    let (mut command, xds) = server_command(&dir)?;
    let server = command.spawn().context("starting eds-server")?;
    let mut server = Killed(server);

    // Two streams, as two clients would hold them.
    let mut streams = Vec::new();
    let mut senders = Vec::new();
    for id in ["sigterm-a", "sigterm-b"] {
        let mut client = ads_client(xds).await?;
        let (tx, rx) = mpsc::channel(1);
        tx.send(DiscoveryRequest {
            node: Some(Node {
                id: id.into(),
                ..Default::default()
            }),
            type_url: proto::resources::CLUSTER_LOAD_ASSIGNMENT_TYPE_URL.into(),
            resource_names: vec!["echo.demo:8080".into()],
            ..Default::default()
        })
        .await?;
        let response = client
            .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .with_context(|| format!("opening the stream of {id}"))?;
        streams.push((id, response.into_inner()));
        // Kept open: a client that has not gone away.
        senders.push(tx);
    }

    let pid = server.0.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status()?;
    ensure!(status.success(), "kill -TERM {pid}: {status}");

    for (id, mut stream) in streams {
        let ended = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .with_context(|| format!("the stream of {id} was still open 10 s after SIGTERM"))?;
        match ended {
            // The server's own status, not a reset connection's.
            Err(status) => ensure!(
                status.code() == tonic::Code::Unavailable
                    && status.message().contains("shutting down"),
                "the stream of {id} ended with {status:?}, not the shutdown's UNAVAILABLE"
            ),
            Ok(Some(response)) => {
                bail!("the stream of {id} was sent a response before any sync: {response:?}")
            }
            Ok(None) => bail!("the stream of {id} ended without a status"),
        }
    }

    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = server.0.try_wait()? {
            break exit;
        }
        ensure!(
            Instant::now() < deadline,
            "eds-server still running 10 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    ensure!(exit.success(), "eds-server exited with {exit} on SIGTERM");
    ensure!(
        tokio::net::TcpStream::connect(xds).await.is_err(),
        "the xDS port {xds} still accepts connections after exit"
    );
    drop(senders);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

//! The eds-server binary, run as an operator would with `--otlp-endpoint`,
//! exports its spans to an OTLP/gRPC collector (this test plays the
//! collector on loopback).
//!
//! No Kubernetes is needed for this: the kubeconfig points at a closed
//! loopback port, so the watchers retry in the background while an xDS
//! stream is opened and closed, which is one `xds_stream` span. Bounded:
//! every wait has a timeout, and the process is killed when the test ends.

mod common;

use std::time::Duration;

use anyhow::Context;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use proto::xds::pb::envoy::config::core::v3::Node;
use proto::xds::pb::envoy::service::discovery::v3::DiscoveryRequest;
use tokio::sync::mpsc;

use common::{Killed, ads_client, server_command};

struct Collector(mpsc::UnboundedSender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let _ = self.0.send(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_exports_stream_spans_over_otlp() -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let collector = listener.local_addr()?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector(tx)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let dir = std::env::temp_dir().join(format!("eds-otlp-{}", std::process::id()));
    let (mut command, xds) = server_command(&dir)?;
    let server = command
        .arg(format!("--otlp-endpoint=http://{collector}"))
        .env("OTEL_SERVICE_NAME", "eds-server-under-test")
        // Export within 100 ms of a span ending instead of the 5 s default.
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("RUST_LOG", "info")
        .spawn()
        .context("starting eds-server")?;
    let _server = Killed(server);

    // Open one ADS stream, ask for something, and close it.
    let mut client = ads_client(xds).await?;
    let request = DiscoveryRequest {
        node: Some(Node {
            id: "otlp-test".into(),
            ..Default::default()
        }),
        type_url: proto::resources::CLUSTER_LOAD_ASSIGNMENT_TYPE_URL.into(),
        resource_names: vec!["echo.demo:8080".into()],
        ..Default::default()
    };
    let (req_tx, req_rx) = mpsc::channel(1);
    req_tx.send(request).await?;
    let response = client
        .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(req_rx))
        .await?;
    // Nothing is served before the initial sync, so no response comes: close.
    drop(req_tx);
    drop(response);
    drop(client);

    let mut seen = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(export) = rx.recv().await {
            for rs in &export.resource_spans {
                let service = rs
                    .resource
                    .as_ref()
                    .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                    .and_then(|kv| kv.value.as_ref()?.value.clone());
                for span in rs.scope_spans.iter().flat_map(|s| &s.spans) {
                    seen.push(span.name.clone());
                    let protocol = span
                        .attributes
                        .iter()
                        .find(|kv| kv.key == "protocol")
                        .and_then(|kv| kv.value.as_ref()?.value.clone());
                    if span.name == "xds_stream" {
                        return (service, protocol);
                    }
                }
            }
        }
        (None, None)
    })
    .await
    .with_context(|| format!("no xds_stream span within 30 s; spans seen: {seen:?}"))?;
    assert_eq!(
        found,
        (
            Some(Value::StringValue("eds-server-under-test".into())),
            Some(Value::StringValue("sotw".into()))
        )
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

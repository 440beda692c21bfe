//! Logs and traces: the `tracing` subscriber eds-server runs under, with an
//! optional OpenTelemetry layer that exports spans over OTLP/gRPC.
//!
//! ```text
//!  tracing spans/events ─┬─> EnvFilter (RUST_LOG, default info) ─> fmt (text | json) ─> stderr
//!                        └─> tracing-opentelemetry ─> batch processor ─> OTLP/gRPC ─> collector
//! ```
//!
//! Export is off unless `--otlp-endpoint` (or `OTEL_EXPORTER_OTLP_ENDPOINT`)
//! is set. Spans are batched on a background thread and sent through tonic,
//! so a slow or absent collector costs dropped spans, never a stalled
//! request path. [`Telemetry`] flushes what is buffered when dropped, at exit.
//!
//! Not here: metrics (Prometheus, [`crate::metrics`]) and what is traced
//! (spans are opened where the work happens: publishing in
//! [`crate::watch`], streams in [`crate::serve`]).

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// The service name spans carry unless `OTEL_SERVICE_NAME` says otherwise.
pub const SERVICE_NAME: &str = "eds-server";

/// How long one OTLP export may take before it is abandoned.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter could not be built (bad endpoint).
    #[error("building the OTLP exporter for {endpoint}: {source}")]
    Exporter {
        /// The endpoint given.
        endpoint: String,
        /// What the exporter said.
        source: opentelemetry_otlp::ExporterBuildError,
    },
    /// A global subscriber was already installed.
    #[error("installing the tracing subscriber: {0}")]
    Install(#[from] tracing_subscriber::util::TryInitError),
}

/// Checks an OTLP endpoint as flags are validated, before anything starts:
/// it must be an absolute `http` or `https` URI with a host.
pub fn check_endpoint(endpoint: &str) -> Result<(), &'static str> {
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|_| "not a URI (expected e.g. http://otel-collector:4317)")?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(_)) => Ok(()),
        (Some(_), Some(_)) => Err("the scheme must be http or https"),
        _ => Err("not an absolute URI (expected e.g. http://otel-collector:4317)"),
    }
}

/// Keeps the trace pipeline alive; flushes and shuts it down when dropped.
#[derive(Debug)]
#[must_use = "dropping it stops trace export"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sends every buffered span now (tests and shutdown use it).
    pub fn flush(&self) {
        if let Some(p) = &self.provider
            && let Err(e) = p.force_flush()
        {
            tracing::warn!(%e, "flushing spans to the OTLP collector failed");
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take()
            && let Err(e) = p.shutdown()
        {
            // The subscriber may be gone by now: stderr is all that is left.
            eprintln!("eds-server: shutting down OTLP export: {e}");
        }
    }
}

/// A tracer provider exporting to `endpoint` in batches. Must be called
/// inside a tokio runtime: the gRPC channel's worker runs on it.
pub fn otlp_provider(endpoint: &str) -> Result<SdkTracerProvider, TelemetryError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|source| TelemetryError::Exporter {
            endpoint: endpoint.to_owned(),
            source,
        })?;
    // `Resource::builder` reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES;
    // the default name applies only when the environment sets none.
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(SERVICE_NAME);
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

/// The OpenTelemetry layer for `provider`, for any subscriber.
pub fn otel_layer<S>(provider: &SdkTracerProvider) -> impl Layer<S> + use<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_opentelemetry::layer().with_tracer(provider.tracer(SERVICE_NAME))
}

/// Installs the global subscriber: logs in `format` (`text` or `json`) to
/// stderr, filtered by `RUST_LOG` (default `info`), and, with an
/// `otlp_endpoint`, spans exported there. Call once, inside the runtime.
pub fn init(format: &str, otlp_endpoint: Option<&str>) -> Result<Telemetry, TelemetryError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if format == "json" {
        fmt.json().boxed()
    } else {
        fmt.boxed()
    };
    let provider = otlp_endpoint.map(otlp_provider).transpose()?;
    let otel = provider.as_ref().map(otel_layer::<Registry>);
    // One filter for both: what is not logged is not exported either.
    tracing_subscriber::registry()
        .with(otel)
        .with(fmt)
        .with(filter)
        .try_init()?;
    if let Some(endpoint) = otlp_endpoint {
        tracing::info!(endpoint, "exporting traces over OTLP/gRPC");
    }
    Ok(Telemetry { provider })
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::SocketAddr;

    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
        TraceService, TraceServiceServer,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use tokio::sync::mpsc;

    #[test]
    fn endpoints_are_checked_before_start() {
        assert!(check_endpoint("http://otel-collector:4317").is_ok());
        assert!(check_endpoint("https://10.0.0.1:4317").is_ok());
        assert!(check_endpoint("otel-collector:4317").is_err());
        assert!(check_endpoint("ftp://otel:4317").is_err());
        assert!(check_endpoint("http://").is_err());
        assert!(check_endpoint("not a uri").is_err());
    }

    /// A collector that forwards every export request to the test.
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
    async fn spans_reach_an_otlp_collector_with_their_fields() {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(Collector(tx)))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );

        let provider = otlp_provider(&format!("http://{addr}")).unwrap();
        let subscriber = tracing_subscriber::registry().with(otel_layer(&provider));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("publish", version = "abc123", services = 3_u64);
            span.in_scope(|| tracing::info!("built"));
        });
        // The batch processor exports on its own thread; flush blocks on it.
        let flushed = tokio::task::spawn_blocking(move || {
            let r = provider.force_flush();
            (provider, r)
        })
        .await
        .unwrap();
        flushed.1.unwrap();

        let request = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("the collector got an export within 10 s")
            .unwrap();
        let rs = &request.resource_spans[0];
        let service = rs
            .resource
            .as_ref()
            .unwrap()
            .attributes
            .iter()
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref()?.value.clone());
        let expected = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| SERVICE_NAME.into());
        assert_eq!(service, Some(Value::StringValue(expected)));
        let span = rs
            .scope_spans
            .iter()
            .flat_map(|s| &s.spans)
            .find(|s| s.name == "publish")
            .expect("the publish span was exported");
        let version = span
            .attributes
            .iter()
            .find(|kv| kv.key == "version")
            .and_then(|kv| kv.value.as_ref()?.value.clone());
        assert_eq!(version, Some(Value::StringValue("abc123".into())));
        assert!(
            span.events.iter().any(|e| e.name == "built"),
            "the event inside the span is a span event: {:?}",
            span.events
        );
        drop(flushed.0);
    }
}

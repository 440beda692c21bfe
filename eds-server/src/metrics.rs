//! Prometheus metrics of eds-server, in one registry owned by the server
//! (no global state), exposed at `/metrics` by the admin server.
//!
//! Counters and histograms are updated where things happen (stream glue,
//! watcher); gauges that describe state (endpoints by health, index skips)
//! are set from the latest topology and watch status when scraped. Not a
//! tracing layer: logs and metrics are separate on purpose.
//!
//! ```text
//!  eds_kube_watch_events_total{resource,event}      watch.rs, per event received
//!  eds_snapshot_builds_total                        watch.rs, per index -> topology build
//!  eds_snapshot_build_duration_seconds              watch.rs, time of that build
//!  eds_topology_publishes_total                     watch.rs, per topology published
//!  eds_xds_push_latency_seconds{protocol,type_name} serve.rs, published -> response in the outbox
//!  eds_propagation_latency_seconds{stage,protocol,type_name}
//!                                                   serve.rs, first Kubernetes event of a publish
//!                                                   -> response in the outbox (stage="send")
//!                                                   -> its ACK received (stage="ack")
//!  eds_xds_streams_open / eds_xds_streams_total / eds_xds_requests_total /
//!  eds_xds_responses_total / eds_xds_nacks_total    serve.rs
//!  eds_xds_connections_open                         connections.rs, open xDS connections
//!  eds_xds_connections_refused_total                connections.rs, closed at once: --max-connections
//! ```
//!
//! Latencies are measured with the process's monotonic clock from the
//! moment an event reached eds-server, not from Kubernetes timestamps:
//! object timestamps have one-second resolution and come from other
//! machines' clocks.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Latency buckets in seconds, 0.5 ms to 10 s: a push within one process is
/// sub-millisecond, a propagation includes the coalescing window (100 ms by
/// default) and a client's round trip, and anything beyond 10 s is an
/// outage rather than a latency.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Labels of Kubernetes watch events.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WatchEventLabels {
    /// `Service`, `EndpointSlice` or `Pod`.
    pub resource: String,
    /// The kube-runtime event: `init`, `init_apply`, `init_done`, `apply`
    /// or `delete`.
    pub event: String,
}

/// Labels of propagation latencies.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PropagationLabels {
    /// `send` (response written to the stream's outbox) or `ack` (the
    /// client acknowledged it).
    pub stage: String,
    /// `sotw` or `delta`.
    pub protocol: String,
    /// The resource type's message name.
    pub type_name: String,
}

/// Which end of a propagation is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The response is in the stream's outbox.
    Send,
    /// The client acknowledged it.
    Ack,
}

/// Labels of per-stream metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    /// `sotw` or `delta`.
    pub protocol: String,
    /// `ads` or the per-type service (`eds`, `cds`, `lds`, `rds`).
    pub service: String,
}

/// Labels of per-type metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabels {
    /// `sotw` or `delta`.
    pub protocol: String,
    /// The type URL as sent, shortened to the message name.
    pub type_name: String,
}

/// Labels of state gauges set at scrape time.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NameLabel {
    /// What is counted.
    pub name: String,
}

/// Every metric the server exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    streams_open: Family<StreamLabels, Gauge>,
    streams_total: Family<StreamLabels, Counter>,
    requests: Family<TypeLabels, Counter>,
    responses: Family<TypeLabels, Counter>,
    nacks: Family<StreamLabels, Counter>,
    push_latency: HistogramFamily<TypeLabels>,
    propagation: HistogramFamily<PropagationLabels>,
    watch_events: Family<WatchEventLabels, Counter>,
    snapshot_builds: Counter,
    snapshot_build_seconds: Histogram,
    /// Topologies published.
    pub publishes: Counter,
    /// Gauges of the current state (endpoints by health, services, index skips), set at scrape.
    pub state: Family<NameLabel, Gauge>,
    /// Kubernetes watch errors.
    pub watch_errors: Counter<u64, AtomicU64>,
    connections_open: Gauge,
    connections_refused: Counter,
}

/// The `type` label of a type URL. Type URLs come from clients, so only
/// the four served types keep their own name; anything else is `unknown`
/// (or `none` when empty): a hostile client must not mint label values.
fn short_type(type_url: &str) -> String {
    match proto::resources::ResourceType::from_type_url(type_url) {
        Some(ty) => ty
            .type_url()
            .rsplit('.')
            .next()
            .unwrap_or("unknown")
            .to_owned(),
        None if type_url.is_empty() => "none".to_owned(),
        None => "unknown".to_owned(),
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric registered under the `eds` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("eds");
        let m = Self {
            registry: Registry::default(),
            streams_open: Family::default(),
            streams_total: Family::default(),
            requests: Family::default(),
            responses: Family::default(),
            nacks: Family::default(),
            push_latency: Family::new_with_constructor(latency_histogram),
            propagation: Family::new_with_constructor(latency_histogram),
            watch_events: Family::default(),
            snapshot_builds: Counter::default(),
            snapshot_build_seconds: latency_histogram(),
            publishes: Counter::default(),
            state: Family::default(),
            watch_errors: Counter::default(),
            connections_open: Gauge::default(),
            connections_refused: Counter::default(),
        };
        registry.register(
            "xds_streams_open",
            "Open xDS streams",
            m.streams_open.clone(),
        );
        registry.register("xds_streams", "xDS streams opened", m.streams_total.clone());
        registry.register("xds_requests", "xDS requests received", m.requests.clone());
        registry.register("xds_responses", "xDS responses sent", m.responses.clone());
        registry.register(
            "xds_nacks",
            "xDS responses rejected by clients (NACK)",
            m.nacks.clone(),
        );
        registry.register(
            "xds_push_latency_seconds",
            "Time from a topology being published to a response it caused being written to a stream's outbox",
            m.push_latency.clone(),
        );
        registry.register(
            "propagation_latency_seconds",
            "Time from the first Kubernetes event folded into a published topology to its response being \
             written to a stream's outbox (stage=send) or acknowledged by the client (stage=ack)",
            m.propagation.clone(),
        );
        registry.register(
            "kube_watch_events",
            "Kubernetes watch events received",
            m.watch_events.clone(),
        );
        registry.register(
            "snapshot_builds",
            "Topologies built from the index (published or not)",
            m.snapshot_builds.clone(),
        );
        registry.register(
            "snapshot_build_duration_seconds",
            "Time to build a topology from the index",
            m.snapshot_build_seconds.clone(),
        );
        registry.register(
            "topology_publishes",
            "Topologies published to subscribers",
            m.publishes.clone(),
        );
        registry.register(
            "state",
            "Current state: endpoints by health, services, index skips",
            m.state.clone(),
        );
        registry.register(
            "kube_watch_errors",
            "Kubernetes watch errors (retried)",
            m.watch_errors.clone(),
        );
        registry.register(
            "xds_connections_open",
            "Open connections on the xDS port",
            m.connections_open.clone(),
        );
        registry.register(
            "xds_connections_refused",
            "xDS connections closed as soon as accepted because --max-connections were open",
            m.connections_refused.clone(),
        );
        Self { registry, ..m }
    }

    pub(crate) fn connection_opened(&self) {
        self.connections_open.inc();
    }

    pub(crate) fn connection_closed(&self) {
        self.connections_open.dec();
    }

    pub(crate) fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    pub(crate) fn stream_opened(&self, protocol: &str, service: &str) {
        let labels = StreamLabels {
            protocol: protocol.into(),
            service: service.into(),
        };
        self.streams_open.get_or_create(&labels).inc();
        self.streams_total.get_or_create(&labels).inc();
    }

    pub(crate) fn stream_closed(&self, protocol: &str, service: &str) {
        self.streams_open
            .get_or_create(&StreamLabels {
                protocol: protocol.into(),
                service: service.into(),
            })
            .dec();
    }

    pub(crate) fn request(&self, protocol: &str, type_url: &str) {
        self.requests
            .get_or_create(&TypeLabels {
                protocol: protocol.into(),
                type_name: short_type(type_url),
            })
            .inc();
    }

    pub(crate) fn response(&self, protocol: &str, type_url: &str) {
        self.responses
            .get_or_create(&TypeLabels {
                protocol: protocol.into(),
                type_name: short_type(type_url),
            })
            .inc();
    }

    pub(crate) fn nack(&self, protocol: &str, service: &str) {
        self.nacks
            .get_or_create(&StreamLabels {
                protocol: protocol.into(),
                service: service.into(),
            })
            .inc();
    }

    pub(crate) fn push_latency(&self, protocol: &str, type_url: &str, latency: Duration) {
        self.push_latency
            .get_or_create(&TypeLabels {
                protocol: protocol.into(),
                type_name: short_type(type_url),
            })
            .observe(latency.as_secs_f64());
    }

    pub(crate) fn propagation(
        &self,
        stage: Stage,
        protocol: &str,
        type_url: &str,
        latency: Duration,
    ) {
        let stage = match stage {
            Stage::Send => "send",
            Stage::Ack => "ack",
        };
        self.propagation
            .get_or_create(&PropagationLabels {
                stage: stage.into(),
                protocol: protocol.into(),
                type_name: short_type(type_url),
            })
            .observe(latency.as_secs_f64());
    }

    pub(crate) fn watch_event(&self, resource: &str, event: &str) {
        self.watch_events
            .get_or_create(&WatchEventLabels {
                resource: resource.into(),
                event: event.into(),
            })
            .inc();
    }

    pub(crate) fn snapshot_built(&self, took: Duration) {
        self.snapshot_builds.inc();
        self.snapshot_build_seconds.observe(took.as_secs_f64());
    }

    /// Sets one state gauge.
    pub fn set_state(&self, name: &str, value: i64) {
        self.state
            .get_or_create(&NameLabel { name: name.into() })
            .set(value);
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_new_metric_is_exported_with_its_labels() {
        let m = Metrics::new();
        m.snapshot_built(Duration::from_millis(3));
        m.watch_event("Pod", "apply");
        m.push_latency(
            "sotw",
            "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            Duration::from_micros(700),
        );
        m.propagation(
            Stage::Ack,
            "delta",
            "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            Duration::from_millis(120),
        );
        m.nack("sotw", "ads");
        let text = m.encode();
        for needle in [
            "eds_snapshot_builds_total 1",
            "eds_snapshot_build_duration_seconds_bucket{le=\"0.005\"} 1",
            "eds_kube_watch_events_total{resource=\"Pod\",event=\"apply\"} 1",
            "eds_xds_push_latency_seconds_bucket{le=\"0.001\",protocol=\"sotw\",type_name=\"Cluster\"} 1",
            "eds_propagation_latency_seconds_count{stage=\"ack\",protocol=\"delta\",type_name=\"ClusterLoadAssignment\"} 1",
            "eds_xds_nacks_total{protocol=\"sotw\",service=\"ads\"} 1",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }

    #[test]
    fn client_chosen_type_urls_never_mint_label_values() {
        let m = Metrics::new();
        for i in 0..1000 {
            m.request("sotw", &format!("type.googleapis.com/hostile.T{i}"));
        }
        m.request("sotw", "");
        m.request(
            "sotw",
            "type.googleapis.com/envoy.config.listener.v3.Listener",
        );
        let text = m.encode();
        let series = text
            .lines()
            .filter(|l| l.starts_with("eds_xds_requests_total{"))
            .count();
        assert_eq!(series, 3, "{text}");
        assert!(text.contains("type_name=\"unknown\"} 1000"), "{text}");
        assert!(text.contains("type_name=\"Listener\""), "{text}");
    }
}

//! Prometheus metrics of eds-server, in one registry owned by the server
//! (no global state), exposed at `/metrics` by the admin server.
//!
//! Counters are incremented where things happen (stream glue, watcher);
//! gauges that describe state (endpoints by health, index skips) are set
//! from the latest topology and watch status when scraped. Not a tracing
//! layer: logs and metrics are separate on purpose.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

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
    /// Topologies published.
    pub publishes: Counter,
    /// Gauges of the current state (endpoints by health, services, index skips), set at scrape.
    pub state: Family<NameLabel, Gauge>,
    /// Kubernetes watch errors.
    pub watch_errors: Counter<u64, AtomicU64>,
}

fn short_type(type_url: &str) -> String {
    let name = type_url.rsplit('.').next().unwrap_or(type_url);
    if name.is_empty() {
        "none".to_owned()
    } else {
        name.to_owned()
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
            publishes: Counter::default(),
            state: Family::default(),
            watch_errors: Counter::default(),
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
        Self { registry, ..m }
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

    pub(crate) fn nack(&self, service: &str) {
        self.nacks
            .get_or_create(&StreamLabels {
                protocol: "any".into(),
                service: service.into(),
            })
            .inc();
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

//! eds-server's command line: flags with environment fallbacks, validated
//! into the typed configuration of each part, reporting every bad setting
//! at once.
//!
//! Not where defaults are reasoned about: each part's `Default` (index,
//! publisher) says why; the flags here only expose them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::k8s::{IndexConfig, PublisherConfig};

/// Watches Kubernetes Services and EndpointSlices and serves them over Envoy xDS.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "eds-server", version, about)]
pub struct Args {
    /// Address of the xDS gRPC server (ADS, EDS, CDS, LDS, RDS; SotW and delta).
    #[arg(long, env = "EDS_XDS_ADDR", default_value = "0.0.0.0:18000")]
    pub xds_addr: SocketAddr,

    /// Address of the admin HTTP server (/healthz, /readyz, /metrics, /debug/*).
    #[arg(long, env = "EDS_ADMIN_ADDR", default_value = "0.0.0.0:18001")]
    pub admin_addr: SocketAddr,

    /// Kubeconfig to use; without it, in-cluster config or $KUBECONFIG.
    #[arg(long, env = "EDS_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Namespaces to watch (repeat or comma-separate); all when empty.
    #[arg(
        long = "namespace",
        short = 'n',
        env = "EDS_NAMESPACES",
        value_delimiter = ','
    )]
    pub namespaces: Vec<String>,

    /// Only Services matching this label selector are served (e.g. `eds.rs/expose=true`).
    #[arg(long, env = "EDS_SERVICE_SELECTOR")]
    pub service_selector: Option<String>,

    /// Pod labels to copy into endpoint metadata for every service (comma-separated);
    /// a Service's `eds.rs/pod-labels` annotation adds its own. Enables the Pod watch.
    #[arg(long, env = "EDS_POD_LABELS", value_delimiter = ',')]
    pub pod_labels: Vec<String>,

    /// Watch Pods for endpoint times. With Pods, `ready_since` comes from the Pod's
    /// Ready condition (and `drain_deadline` from its deletion), which is the same on
    /// every replica, so replicas agree on content versions and a client that
    /// reconnects elsewhere is sent nothing new. Without, `ready_since` is when this
    /// replica first saw the endpoint ready, and replicas may disagree. Needs RBAC to
    /// list and watch Pods; readiness never waits for them. Pods are watched anyway
    /// when pod labels are wanted.
    #[arg(long, env = "EDS_WATCH_PODS", default_value_t = true, action = clap::ArgAction::Set)]
    pub watch_pods: bool,

    /// Send not-serving endpoints as UNHEALTHY to every client instead of
    /// leaving them out. Without it, only clients that advertise the
    /// `eds.rs/unhealthy-endpoints` client feature (lb-client does) get them;
    /// stock gRPC clients ignore UNHEALTHY endpoints anyway. Zone spillover
    /// counts them either way. Envoy's panic mode would route to them: keep
    /// this off for Envoy, or set its healthy_panic_threshold to 0.
    #[arg(long, env = "EDS_INCLUDE_UNHEALTHY")]
    pub include_unhealthy: bool,

    /// Least time between two pushes (e.g. 100ms, 1s): a change after a quiet
    /// window is pushed at once; changes within the window after a push are
    /// coalesced into one push when it ends.
    #[arg(long, env = "EDS_COALESCE_WINDOW", default_value = "100ms", value_parser = parse_duration)]
    pub coalesce_window: Duration,

    /// An update that removes more than this share of a service's endpoints at
    /// once is held back for the grace period unless it persists (1 disables).
    #[arg(long, env = "EDS_MASS_DROP_FRACTION", default_value_t = 0.5)]
    pub mass_drop_fraction: f64,

    /// How long a mass drop is held back.
    #[arg(long, env = "EDS_MASS_DROP_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub mass_drop_grace: Duration,

    /// Shape locality weights per client zone (from the xDS Node locality).
    #[arg(long, env = "EDS_ZONE_AWARE", default_value_t = true, action = clap::ArgAction::Set)]
    pub zone_aware: bool,

    /// Responses buffered per xDS stream before its task waits for the client. A
    /// state-of-the-world stream holds at most one per type whatever this says (a newer
    /// response replaces an unsent one of its type); delta increments wait here. A slow
    /// client never delays others: its task skips to the latest topology meanwhile.
    #[arg(long, env = "EDS_SUBSCRIBER_QUEUE", default_value_t = 16)]
    pub subscriber_queue: usize,

    /// Largest xDS request message accepted, in bytes. A bigger one ends its
    /// stream with RESOURCE_EXHAUSTED naming both sizes; a real client's
    /// requests are a few KiB even with thousands of resource names.
    #[arg(long, env = "EDS_MAX_REQUEST_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_request_bytes: usize,

    /// HTTP/2 streams one xDS connection may hold open at once; streams
    /// beyond it are refused (REFUSED_STREAM), so one connection cannot hold
    /// unbounded server state. A stock client opens one (ADS) to five (one
    /// per type) per connection.
    #[arg(long, env = "EDS_MAX_STREAMS_PER_CONNECTION", default_value_t = 100)]
    pub max_streams_per_connection: u32,

    /// Interval of the server's HTTP/2 PINGs on xDS connections: a client
    /// that vanished without closing (lost node, dropped route) is noticed
    /// and its streams' state released, instead of being kept forever.
    #[arg(long, env = "EDS_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub keepalive_interval: Duration,

    /// How long a PING may go unanswered before the connection is closed.
    #[arg(long, env = "EDS_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub keepalive_timeout: Duration,

    /// Open xDS connections at most; one more is closed as soon as it is
    /// accepted (counted in eds_xds_connections_refused_total), so a flood of
    /// connections cannot take the memory the existing streams need.
    #[arg(long, env = "EDS_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// An xDS connection gets a GOAWAY after about this long (each one ± 10 %,
    /// so connections opened together do not all close together), and its
    /// client reconnects, perhaps to another replica: after a rollout or a
    /// scale-up, clients spread over the replicas there are now. 0: never.
    #[arg(long, env = "EDS_MAX_CONNECTION_AGE", default_value = "30m", value_parser = parse_duration)]
    pub max_connection_age: Duration,

    /// After that GOAWAY, how long the connection's open streams may go on
    /// before it is closed under them (xDS streams never end by themselves).
    #[arg(long, env = "EDS_MAX_CONNECTION_AGE_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub max_connection_age_grace: Duration,

    /// PEM certificate for the xDS and admin servers (TLS on when set).
    #[arg(long, env = "EDS_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for `--tls-cert`.
    #[arg(long, env = "EDS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA bundle; when set, xDS clients must present a certificate it signed (mTLS).
    #[arg(long, env = "EDS_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// How long to wait for streams to close on SIGTERM before exiting.
    #[arg(long, env = "EDS_SHUTDOWN_GRACE", default_value = "5s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Log format: `text` or `json`.
    #[arg(long, env = "EDS_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,

    /// Export traces over OTLP/gRPC to this collector (e.g. http://otel-collector:4317).
    /// Unset: no export. `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` are honoured.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

/// Everything wrong with a command line, reported together.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigErrors(pub Vec<String>);

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The flags as given.
    pub args: Args,
    /// Index rules.
    pub index: IndexConfig,
    /// Publishing rules.
    pub publisher: PublisherConfig,
}

impl Args {
    /// Validates every setting, collecting all problems.
    pub fn validate(self) -> Result<ServerConfig, ConfigErrors> {
        let mut errors = Vec::new();
        for ns in &self.namespaces {
            if lb_core::ServiceKey::new("x", ns, lb_core::PortRef::Number(1)).is_err() {
                errors.push(format!(
                    "--namespace {ns:?} is not a valid Kubernetes namespace name"
                ));
            }
        }
        if self.subscriber_queue == 0 {
            errors.push("--subscriber-queue must be at least 1".into());
        }
        if self.max_request_bytes < 1024 {
            errors.push(format!(
                "--max-request-bytes {} is too small for any real xDS request (at least 1024)",
                self.max_request_bytes
            ));
        }
        if !(1..=1_000_000).contains(&self.max_connections) {
            errors.push(format!(
                "--max-connections must be within 1..=1000000, got {}",
                self.max_connections
            ));
        }
        if self.max_streams_per_connection == 0 {
            errors.push("--max-streams-per-connection must be at least 1".into());
        }
        for (flag, d) in [
            ("--keepalive-interval", self.keepalive_interval),
            ("--keepalive-timeout", self.keepalive_timeout),
            ("--max-connection-age-grace", self.max_connection_age_grace),
        ] {
            if d.is_zero() {
                errors.push(format!("{flag} must be above zero"));
            }
        }
        for (flag, path) in [
            ("--tls-cert", &self.tls_cert),
            ("--tls-key", &self.tls_key),
            ("--tls-client-ca", &self.tls_client_ca),
            ("--kubeconfig", &self.kubeconfig),
        ] {
            if let Some(path) = path
                && !path.is_file()
            {
                errors.push(format!("{flag} {}: no such file", path.display()));
            }
        }
        if let Some(endpoint) = &self.otlp_endpoint
            && let Err(why) = crate::telemetry::check_endpoint(endpoint)
        {
            errors.push(format!("--otlp-endpoint {endpoint:?}: {why}"));
        }
        if self.xds_addr == self.admin_addr && self.xds_addr.port() != 0 {
            errors.push(format!(
                "--xds-addr and --admin-addr are both {}",
                self.xds_addr
            ));
        }
        let index = IndexConfig {
            pod_labels: self
                .pod_labels
                .iter()
                .filter(|l| !l.is_empty())
                .cloned()
                .collect(),
            watch_pods: self.watch_pods,
            ..IndexConfig::default()
        };
        let publisher = PublisherConfig {
            coalesce_window: self.coalesce_window,
            mass_drop_fraction: self.mass_drop_fraction,
            mass_drop_grace: self.mass_drop_grace,
            ..PublisherConfig::default()
        };
        if let Err(e) = publisher.validate() {
            errors.push(e.to_string());
        }
        if errors.is_empty() {
            Ok(ServerConfig {
                args: self,
                index,
                publisher,
            })
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

/// A duration flag: `250ms`, `5s`, `2m`, `1h30m` or a bare number of
/// seconds (the grammar is [`lb_core::duration`]'s, shared by every crate).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    lb_core::duration::parse(s).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<ServerConfig, String> {
        let mut argv = vec!["eds-server"];
        argv.extend_from_slice(args);
        Args::try_parse_from(argv)
            .map_err(|e| e.to_string())?
            .validate()
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_valid() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.args.coalesce_window, Duration::from_millis(100));
        assert!(config.args.zone_aware);
        assert!(
            config.index.watch_pods,
            "Pod times keep replicas in agreement"
        );
    }

    #[test]
    fn pod_watch_can_be_turned_off() {
        let config = parse(&["--watch-pods=false"]).unwrap();
        assert!(!config.index.watch_pods);
        assert!(parse(&["--watch-pods", "maybe"]).is_err());
    }

    #[test]
    fn durations_parse_in_every_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = parse(&[
            "--namespace",
            "Not_A_Namespace",
            "--subscriber-queue",
            "0",
            "--kubeconfig",
            "/nonexistent/kubeconfig",
            "--mass-drop-fraction",
            "1.5",
            "--max-connections",
            "0",
            "--max-connection-age-grace",
            "0s",
        ])
        .unwrap_err();
        for needle in [
            "Not_A_Namespace",
            "--max-connections must be within 1..=1000000, got 0",
            "--max-connection-age-grace must be above zero",
            "--subscriber-queue",
            "/nonexistent/kubeconfig",
            "1.5",
        ] {
            assert!(err.contains(needle), "{needle} missing from: {err}");
        }
    }

    #[test]
    fn tls_key_without_cert_is_refused() {
        assert!(parse(&["--tls-key", "/tmp/key.pem"]).is_err());
    }
}

//! Client configuration: a documented struct with reasoned defaults, plus
//! environment fallbacks for what differs per pod (zone, node id, control
//! plane address).
//!
//! Not a parser of flags or files: the application owns those and fills
//! this struct. `validate` reports a bad setting before anything starts.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use lb_core::outlier::OutlierConfig;
use lb_core::ring::LoadFactor;
use lb_core::slow_start::SlowStart;
use lb_core::{BalancerConfig, Policy, ServiceKey};

use crate::error::BuildError;

/// Everything an [`crate::LbClient`] needs.
#[derive(Debug, Clone)]
pub struct LbConfig {
    /// eds-server's xDS address, e.g. `http://eds-server.eds-system:18000`.
    /// `None` runs without a control plane (persisted snapshot and DNS only).
    pub control_plane: Option<String>,
    /// TLS towards the control plane (server CA, optional client identity).
    pub control_plane_tls: Option<tonic::transport::ClientTlsConfig>,
    /// The `Node.id` the server sees (defaults to `$HOSTNAME`, the pod name).
    pub node_id: String,
    /// This client's zone, for zone affinity and for the server's view.
    pub zone: Option<String>,
    /// Reconnection backoff towards the control plane.
    pub backoff: Backoff,
    /// HTTP/2 PING interval on the control-plane connection, sent even when
    /// nothing else is. With [`LbConfig::control_plane_keepalive_timeout`]
    /// it bounds how long a dead peer (a lost node, a network that drops
    /// packets silently) goes unnoticed: the ADS stream otherwise just
    /// waits for the next change, forever. TCP keepalive probes follow the
    /// same interval, for the kernel's side of the same check.
    pub control_plane_keepalive: Duration,
    /// How long a PING may go unanswered before the connection is declared
    /// dead and the client reconnects (with backoff, to any replica behind
    /// the address).
    pub control_plane_keepalive_timeout: Duration,
    /// Where to keep the last good endpoints for cold starts; `None` keeps
    /// nothing on disk.
    pub snapshot_file: Option<PathBuf>,
    /// DNS fallback for services the control plane never answered.
    pub dns_fallback: DnsFallback,
    /// Options for every service without an entry in `services`.
    pub default_service: ServiceOptions,
    /// Per-service options, by service key.
    pub services: HashMap<String, ServiceOptions>,
    /// TLS towards the endpoints (CA, optional client identity for mTLS);
    /// `None` dials plaintext HTTP/2. Each service's certificates are
    /// checked against [`ServiceOptions::tls_server_name`], by default the
    /// Service's cluster DNS name (`<svc>.<ns>.svc.<cluster_domain>`).
    pub backend_tls: Option<crate::BackendTls>,
    /// Timeout for one TCP connect plus (TLS and) HTTP/2 handshake to an endpoint.
    pub connect_timeout: Duration,
    /// Open connections as soon as endpoints are known rather than on the
    /// first request that picks them.
    pub eager_connect: bool,
    /// How long a request waits for a service's first endpoints.
    pub wait_for_endpoints: Duration,
    /// Retries on another endpoint when the request was never sent or
    /// the backend refused it unprocessed.
    pub retry: RetryConfig,
    /// Outlier detection (ejection and error-rate penalty).
    pub outlier: OutlierConfig,
    /// How often slow-start ramps, success-rate ejection and connection
    /// state are folded into the balancers.
    pub refresh_interval: Duration,
    /// The largest xDS response accepted, in bytes. gRPC's default of
    /// 4 MiB is less than one Service of tens of thousands of endpoints
    /// encodes to; a response over the limit would be refused on every
    /// reconnect. Default 64 MiB.
    pub max_xds_message_bytes: usize,
}

/// [`LbConfig::max_xds_message_bytes`]'s default.
pub const DEFAULT_MAX_XDS_MESSAGE_BYTES: usize = 64 << 20;

impl LbConfig {
    /// A configuration for `control_plane` with the defaults below and the
    /// environment's `EDS_ZONE` and `HOSTNAME` (see [`LbConfig::from_env`]).
    pub fn new(control_plane: impl Into<String>) -> Self {
        Self {
            control_plane: Some(control_plane.into()),
            ..Self::from_env()
        }
    }

    /// Defaults, with the environment filling in what differs per pod:
    /// `EDS_XDS_SERVER` (control plane), `EDS_ZONE` (zone), `EDS_NODE_ID` or
    /// `HOSTNAME` (node id), `EDS_SNAPSHOT_FILE` (snapshot file).
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Self {
            control_plane: var("EDS_XDS_SERVER"),
            control_plane_tls: None,
            backend_tls: None,
            node_id: var("EDS_NODE_ID")
                .or_else(|| var("HOSTNAME"))
                .unwrap_or_else(|| "lb-client".to_owned()),
            zone: var("EDS_ZONE"),
            backoff: Backoff::default(),
            // 10 s + 10 s: a dead control plane is noticed within 20 s, well
            // inside the 30 s the hardening brief allows, at one 17-byte
            // frame each way every 10 s.
            control_plane_keepalive: Duration::from_secs(10),
            control_plane_keepalive_timeout: Duration::from_secs(10),
            snapshot_file: var("EDS_SNAPSHOT_FILE").map(PathBuf::from),
            dns_fallback: DnsFallback::default(),
            default_service: ServiceOptions::default(),
            services: HashMap::new(),
            connect_timeout: Duration::from_secs(2),
            eager_connect: false,
            wait_for_endpoints: Duration::from_secs(10),
            retry: RetryConfig::default(),
            outlier: OutlierConfig::default(),
            refresh_interval: Duration::from_millis(500),
            max_xds_message_bytes: DEFAULT_MAX_XDS_MESSAGE_BYTES,
        }
    }

    /// Options for one service.
    pub fn service_options(&self, key: &ServiceKey) -> &ServiceOptions {
        self.services
            .get(&key.to_string())
            .unwrap_or(&self.default_service)
    }

    /// Checks every setting; the first problem is returned.
    pub fn validate(&self) -> Result<(), BuildError> {
        for (name, d) in [
            ("connect_timeout", self.connect_timeout),
            ("control_plane_keepalive", self.control_plane_keepalive),
            (
                "control_plane_keepalive_timeout",
                self.control_plane_keepalive_timeout,
            ),
            ("wait_for_endpoints", self.wait_for_endpoints),
            ("refresh_interval", self.refresh_interval),
            ("backoff.initial", self.backoff.initial),
            ("dns_fallback.after", self.dns_fallback.after),
        ] {
            if d.is_zero() {
                return Err(BuildError::ZeroDuration(name));
            }
        }
        if self.max_xds_message_bytes < 4 << 20 {
            return Err(BuildError::XdsMessageLimit(self.max_xds_message_bytes));
        }
        self.outlier.validate().map_err(BuildError::Outlier)?;
        if !(0.0..=1000.0).contains(&self.retry.ratio) {
            return Err(BuildError::RetryBudget {
                ratio: self.retry.ratio,
                min_per_sec: self.retry.min_per_sec,
            });
        }
        for (name, opts) in std::iter::once(("default", &self.default_service))
            .chain(self.services.iter().map(|(k, v)| (k.as_str(), v)))
        {
            if name != "default" {
                name.parse::<ServiceKey>().map_err(BuildError::ServiceKey)?;
            }
            if opts.max_in_flight_per_endpoint == Some(0) {
                return Err(BuildError::ZeroInFlightCap {
                    service: name.to_owned(),
                });
            }
            lb_core::Balancer::new(opts.balancer_config(self.zone.clone())).map_err(|source| {
                BuildError::Balancer {
                    service: name.to_owned(),
                    source,
                }
            })?;
        }
        Ok(())
    }
}

/// Exponential backoff with full jitter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// First delay.
    pub initial: Duration,
    /// Cap.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        // Short first delay: an eds-server rollout restarts a replica in
        // seconds, and clients keep serving from memory meanwhile.
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    /// Delay before attempt `n` (0-based) given a uniform `u` in [0, 1):
    /// "full jitter", so a fleet of clients that lost the server together
    /// does not come back together.
    pub fn delay(&self, attempt: u32, u: f64) -> Duration {
        let cap = self
            .initial
            .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX))
            .min(self.max);
        cap.mul_f64(u.clamp(0.0, 1.0))
            .max(Duration::from_millis(10))
    }
}

/// DNS fallback settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsFallback {
    /// Use DNS for a service when the control plane has never answered.
    pub enabled: bool,
    /// How long to wait for the control plane before resolving.
    pub after: Duration,
    /// The cluster domain for `<svc>.<ns>.svc.<domain>` names.
    pub cluster_domain: String,
    /// Names to resolve instead of the Service's cluster DNS name, by
    /// service key (for example a headless Service or a test address).
    pub overrides: HashMap<String, String>,
}

impl Default for DnsFallback {
    fn default() -> Self {
        Self {
            enabled: true,
            after: Duration::from_secs(3),
            cluster_domain: "cluster.local".to_owned(),
            overrides: HashMap::new(),
        }
    }
}

/// Where a hash policy takes its key from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum HashSource {
    /// Only from a [`crate::HashKey`] request extension.
    #[default]
    Extension,
    /// From this request header (a `HashKey` extension still wins).
    Header(String),
}

/// Per-service balancing options.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceOptions {
    /// The policy, when the application chooses it. `None` (the default)
    /// lets the control plane choose: the policy of the service's CDS
    /// `Cluster`, which eds-server builds from the Service's
    /// `eds.rs/lb-policy` annotation, and P2C (lb-core's default) until
    /// one arrives, when there is none, or when it names a policy lb-client
    /// does not implement. `Some` always wins over the control plane. The
    /// debug view and the `lb_client_policy` metric say which applied
    /// (`local`, `cds` or `default`).
    pub policy: Option<Policy>,
    /// Hash key source for the hash policies.
    pub hash: HashSource,
    /// Slow start for new endpoints (from their `ready_since`). When the
    /// policy comes from the control plane and its Cluster carries a
    /// `slow_start_config`, that one is used instead.
    pub slow_start: Option<SlowStart>,
    /// Below this share of healthy endpoints, use all of them.
    pub panic_threshold: f64,
    /// Bound for bounded-load hashing.
    pub load_factor: LoadFactor,
    /// Prefer the client's own zone, spilling over proportionally.
    pub zone_affinity: bool,
    /// With [`LbConfig::backend_tls`]: the name every endpoint's certificate
    /// must carry. `None`: the Service's cluster DNS name, which all its
    /// pods share.
    pub tls_server_name: Option<String>,
    /// At most this many requests in flight on one endpoint (`None`, the
    /// default: no cap). A request whose pick finds the endpoint full is
    /// picked again a few times, then fails with RESOURCE_EXHAUSTED rather
    /// than queue. Must be above zero.
    pub max_in_flight_per_endpoint: Option<u32>,
    /// A draining endpoint (its pod terminating) takes no new request once
    /// its drain deadline is closer than this, so requests already sent can
    /// finish before the kubelet kills it. Default 2 s.
    pub drain_margin: Duration,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        Self {
            policy: None,
            hash: HashSource::Extension,
            slow_start: Some(SlowStart::default()),
            panic_threshold: 0.5,
            load_factor: LoadFactor::default(),
            zone_affinity: true,
            tls_server_name: None,
            max_in_flight_per_endpoint: None,
            drain_margin: BalancerConfig::default().drain_margin,
        }
    }
}

impl ServiceOptions {
    /// These options with the policy set by the application, so the
    /// control plane's policy is not used.
    pub fn with_policy(self, policy: Policy) -> Self {
        Self {
            policy: Some(policy),
            ..self
        }
    }

    /// The lb-core balancer settings for a client in `zone`, before any
    /// policy from the control plane: the local policy, or lb-core's default.
    pub fn balancer_config(&self, zone: Option<String>) -> BalancerConfig {
        BalancerConfig {
            policy: self.policy.unwrap_or_default(),
            zone: zone.filter(|_| self.zone_affinity),
            slow_start: self.slow_start,
            panic_threshold: self.panic_threshold,
            load_factor: self.load_factor,
            drain_margin: self.drain_margin,
            ..BalancerConfig::default()
        }
    }
}

/// Retry budget for requests that were never processed: never sent
/// (connection failures) or refused by the backend unprocessed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryConfig {
    /// Attempts per request at most, the first included.
    pub max_attempts: u32,
    /// Retries allowed as a share of recent requests.
    pub ratio: f32,
    /// Retries allowed per second regardless of traffic.
    pub min_per_sec: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        // The ratio Linkerd and Finagle use: retries may add 20% load at most.
        Self {
            max_attempts: 3,
            ratio: 0.2,
            min_per_sec: 10,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_with_full_jitter() {
        let b = Backoff::default();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        assert!((ms(b.delay(0, 0.999)) - 99.9).abs() < 0.01);
        assert!(
            (ms(b.delay(3, 0.5)) - 400.0).abs() < 0.01,
            "100 ms doubled 3 times, half of it"
        );
        assert!(
            (ms(b.delay(40, 0.5)) - 5_000.0).abs() < 0.01,
            "capped at 10 s"
        );
        assert_eq!(
            b.delay(5, 0.0),
            Duration::from_millis(10),
            "never a busy loop"
        );
    }

    #[test]
    fn validate_names_the_bad_setting() {
        let mut c = LbConfig::from_env();
        assert!(c.validate().is_ok());
        c.connect_timeout = Duration::ZERO;
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "connect_timeout must be above zero"
        );
        let mut c = LbConfig::from_env();
        c.services
            .insert("not a key".into(), ServiceOptions::default());
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .starts_with("per-service options")
        );
        let mut c = LbConfig::from_env();
        c.default_service.panic_threshold = 2.0;
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("default") && e.contains("panic threshold"),
            "{e}"
        );
        let mut c = LbConfig::from_env();
        c.max_xds_message_bytes = 1 << 20;
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "max_xds_message_bytes must be at least 4 MiB (gRPC's default), got 1048576"
        );
        let mut c = LbConfig::from_env();
        c.default_service.max_in_flight_per_endpoint = Some(1);
        assert!(c.validate().is_ok());
        c.services.insert(
            "echo.demo:8080".into(),
            ServiceOptions {
                max_in_flight_per_endpoint: Some(0),
                ..ServiceOptions::default()
            },
        );
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "service echo.demo:8080: max_in_flight_per_endpoint must be above zero"
        );
    }
}

//! One service's endpoints as the client holds them: the lb-core
//! [`Balancer`], a connection and load counters per endpoint, and the
//! outlier detector, kept consistent under one lock.
//!
//! ```text
//!  update(set) --> handles (kept by address: connections and stats survive)
//!              --> balancer.set_endpoints --> refresh (ejections, down conns)
//!  set_cluster(policy from CDS) --> local policy set? keep it : rebuild the
//!              balancer with the Cluster's policy (or the default) over the same set
//!  pick(hash)  --> balancer.pick over live in-flight counters --> Arc<EndpointHandle> + InFlight
//!  record(outcome) --> outlier detector --(ejection)--> refresh
//!  tick(now)   --> success-rate evaluation, slow-start ramp, metrics sample
//! ```
//!
//! The lock is held for a pick (tens of nanoseconds) and for updates, never
//! across IO. Load lives in atomics on the handles so a response finishing
//! never needs the lock just to decrement a counter.
//!
//! The policy: the application's when it set one ([`ServiceOptions::policy`]),
//! else the service's CDS Cluster's ([`crate::cluster`]), else lb-core's
//! default; [`PolicySource`] records which, for the debug view and metrics.
//!
//! Not the network side: `channel` sends, `conn` connects.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime};

use lb_core::load::PeakEwma;
use lb_core::outlier::{EjectionReason, Outcome, OutlierConfig, OutlierDetector};
use lb_core::rng::hash_bytes;
use lb_core::slow_start::SlowStart;
use lb_core::{
    Balancer, BalancerConfig, Endpoint, EndpointSet, Health, Load, Pick, PickError, PickReason,
    Policy, ServiceKey, SmallRng, Tier,
};
use serde::Serialize;
use tokio::sync::watch;

use crate::cluster::{ClusterPolicy, PolicySource};
use crate::config::{HashSource, ServiceOptions};
use crate::conn::Connection;
use crate::error::ChannelError;
use crate::metrics::{EndpointCounters, Metrics};
use crate::tls::Dialer;

/// Where a service's current endpoints came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// Nothing known yet.
    None,
    /// eds-server, live.
    ControlPlane,
    /// The snapshot file, at a cold start before the control plane answered.
    SnapshotFile,
    /// The DNS fallback: the control plane never answered.
    Dns,
    /// Given by the application ([`crate::LbClient::set_endpoints`]).
    Static,
}

/// The policy and slow start one service balances with, and why.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Effective {
    pub(crate) policy: Policy,
    pub(crate) slow_start: Option<SlowStart>,
    pub(crate) source: PolicySource,
    /// What the operator should know: a Cluster's policy overridden locally
    /// or not supported.
    pub(crate) note: Option<String>,
}

/// Local configuration wins; then the Cluster; then the default. A Cluster's
/// slow start replaces the local one only when its policy is used.
pub(crate) fn effective(options: &ServiceOptions, cluster: Option<&ClusterPolicy>) -> Effective {
    match (options.policy, cluster) {
        (Some(policy), cluster) => Effective {
            policy,
            slow_start: options.slow_start,
            source: PolicySource::Local,
            note: cluster
                .and_then(|c| c.policy)
                .filter(|p| *p != policy)
                .map(|p| format!("the control plane asks for {p}; the local policy wins")),
        },
        (None, Some(c)) => match c.policy {
            Some(policy) => Effective {
                policy,
                slow_start: c.slow_start.or(options.slow_start),
                source: PolicySource::Cds,
                note: None,
            },
            None => Effective {
                policy: Policy::default(),
                slow_start: options.slow_start,
                source: PolicySource::Default,
                note: Some(format!(
                    "the Cluster asks only for policies lb-client does not support ({}); using the default",
                    c.unsupported.join(", ")
                )),
            },
        },
        (None, None) => Effective {
            policy: Policy::default(),
            slow_start: options.slow_start,
            source: PolicySource::Default,
            note: None,
        },
    }
}

/// One endpoint: its metadata, its connection and its load. A metadata
/// change makes a new handle sharing the old one's connection and counters,
/// so requests in flight on the old handle are still counted.
#[derive(Debug)]
pub(crate) struct EndpointHandle {
    pub(crate) endpoint: Endpoint,
    pub(crate) conn: Arc<Connection>,
    /// `host:port` for the request URI, built once here rather than
    /// formatted and parsed again for every request.
    pub(crate) authority: http::uri::Authority,
    stats: Arc<Stats>,
    counters: Arc<EndpointCounters>,
}

#[derive(Debug)]
struct Stats {
    /// Shared with the connection, whose writes are gathered only while
    /// more than one request is in flight on it (see `conn.rs`).
    in_flight: Arc<AtomicU32>,
    ewma: Mutex<PeakEwma>,
    /// The EWMA's value as f64 bits, readable by picks without a lock.
    ewma_bits: AtomicU64,
    picks: AtomicU64,
    successes: AtomicU64,
    failures: AtomicU64,
}

impl EndpointHandle {
    fn new(endpoint: Endpoint, dialer: Arc<Dialer>, counters: EndpointCounters) -> Self {
        // A new endpoint starts at a modest 10 ms guess so it is tried, and
        // the peak rule corrects it on the first slow answer.
        let initial = Duration::from_millis(10);
        let in_flight = Arc::new(AtomicU32::new(0));
        Self {
            conn: Arc::new(Connection::new(
                endpoint.address,
                dialer,
                Arc::clone(&in_flight),
            )),
            authority: authority_of(endpoint.address),
            counters: Arc::new(counters),
            endpoint,
            stats: Arc::new(Stats {
                in_flight,
                ewma: Mutex::new(PeakEwma::new(initial, Duration::from_secs(10))),
                ewma_bits: AtomicU64::new(initial.as_secs_f64().to_bits()),
                picks: AtomicU64::new(0),
                successes: AtomicU64::new(0),
                failures: AtomicU64::new(0),
            }),
        }
    }

    pub(crate) fn address(&self) -> SocketAddr {
        self.endpoint.address
    }

    /// Builds the request URI for this endpoint from the request's path,
    /// reusing the path's bytes (HTTP/2 needs scheme and authority; tonic
    /// gives only the path).
    pub(crate) fn set_uri<B>(&self, request: &mut http::Request<B>) {
        let mut parts = std::mem::take(request.uri_mut()).into_parts();
        parts.scheme = Some(self.conn.scheme());
        parts.authority = Some(self.authority.clone());
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        // Scheme, authority and path are all set, the only combination
        // `from_parts` checks for, so this cannot fail; keep the old URI's
        // parts out of it anyway rather than panic on a request path.
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
    }

    pub(crate) fn in_flight(&self) -> u32 {
        self.stats.in_flight.load(Ordering::Relaxed)
    }

    /// Feeds a response latency into the peak EWMA.
    pub(crate) fn observe_latency(&self, rtt: Duration, now_secs: f64) {
        let mut e = self.stats.ewma.lock().unwrap_or_else(|p| p.into_inner());
        e.observe(rtt.as_secs_f64(), now_secs);
        self.stats
            .ewma_bits
            .store(e.get().to_bits(), Ordering::Relaxed);
    }

    fn latency(&self) -> f64 {
        f64::from_bits(self.stats.ewma_bits.load(Ordering::Relaxed))
    }
}

/// `ip:port` (IPv6 in brackets) as a URI authority. A socket address always
/// prints as a valid authority, so the fallback is unreachable in practice.
fn authority_of(address: SocketAddr) -> http::uri::Authority {
    http::uri::Authority::try_from(address.to_string())
        .unwrap_or_else(|_| http::uri::Authority::from_static("localhost"))
}

/// Lends the handles' counters to lb-core pickers.
struct Loads<'a> {
    handles: &'a [Arc<EndpointHandle>],
    with_latency: bool,
    /// Endpoints an earlier attempt of the request already tried: shown to
    /// load-aware pickers as full. An endpoint that refuses every stream
    /// answers at once, so it looks idle and P2C would pick it again over
    /// any busy endpoint that works.
    avoid: &'a [SocketAddr],
}

impl Load for Loads<'_> {
    fn in_flight(&self, i: usize) -> u32 {
        let handle = &self.handles[i];
        if !self.avoid.is_empty() && self.avoid.contains(&handle.address()) {
            return u32::MAX / 2;
        }
        handle.in_flight()
    }

    fn latency(&self, i: usize) -> Option<f64> {
        self.with_latency.then(|| self.handles[i].latency())
    }
}

/// A request's claim on an endpoint: counted in flight until dropped.
#[derive(Debug)]
pub(crate) struct InFlight {
    pool: Arc<ServicePool>,
    handle: Arc<EndpointHandle>,
}

impl InFlight {
    pub(crate) fn handle(&self) -> &Arc<EndpointHandle> {
        &self.handle
    }

    pub(crate) fn pool(&self) -> &Arc<ServicePool> {
        &self.pool
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.handle.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.pool.total_in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A recent pick, for the debug view.
#[derive(Debug, Clone, Serialize)]
pub struct PickRecord {
    /// The endpoint.
    pub address: SocketAddr,
    /// Why it was chosen.
    pub reason: PickReason,
    /// Its in-flight count when picked.
    pub in_flight: u32,
    /// Milliseconds since the client started.
    pub at_ms: u64,
}

const RECENT_PICKS: usize = 32;

#[derive(Debug)]
struct Inner {
    source: Source,
    version: String,
    set: EndpointSet,
    handles: Vec<Arc<EndpointHandle>>,
    balancer: Balancer,
    outlier: OutlierDetector<SocketAddr>,
    rng: SmallRng,
    recent: VecDeque<PickRecord>,
    /// The last Cluster from the control plane, `None` until one arrives
    /// (or after it was deleted).
    cluster: Option<ClusterPolicy>,
    policy_source: PolicySource,
    policy_note: Option<String>,
}

/// What every pool of one client shares.
#[derive(Debug)]
pub(crate) struct PoolContext {
    pub(crate) zone: Option<String>,
    pub(crate) outlier: OutlierConfig,
    /// How this service's endpoints are dialled (timeout, TLS and name).
    pub(crate) dialer: Arc<Dialer>,
    pub(crate) epoch: Instant,
    pub(crate) metrics: Arc<Metrics>,
}

/// One service's balancing state. See the module docs.
#[derive(Debug)]
pub(crate) struct ServicePool {
    pub(crate) key: ServiceKey,
    pub(crate) name: String,
    /// The application's options, against which each Cluster is weighed.
    options: ServiceOptions,
    /// The header the hashing policies hash: the application's
    /// ([`HashSource::Header`]) or else the Cluster's. Read by every request
    /// that carries no `HashKey`; written only when a Cluster arrives.
    hash_header: RwLock<Option<http::HeaderName>>,
    dialer: Arc<Dialer>,
    epoch: Instant,
    metrics: Arc<Metrics>,
    inner: Mutex<Inner>,
    total_in_flight: AtomicU64,
    /// Bumped on every endpoint change; requests waiting for a first
    /// endpoint watch it.
    generation: watch::Sender<u64>,
}

impl ServicePool {
    pub(crate) fn new(
        key: ServiceKey,
        name: String,
        options: &ServiceOptions,
        context: PoolContext,
    ) -> Result<Self, ChannelError> {
        let hash_header = match &options.hash {
            HashSource::Extension => None,
            HashSource::Header(h) => Some(
                http::HeaderName::try_from(h.as_str())
                    .map_err(|_| ChannelError::BadHashHeader(h.clone()))?,
            ),
        };
        let PoolContext {
            zone,
            outlier,
            dialer,
            epoch,
            metrics,
        } = context;
        let start = effective(options, None);
        let balancer = Balancer::new(BalancerConfig {
            policy: start.policy,
            slow_start: start.slow_start,
            ..options.balancer_config(zone)
        })
        .map_err(|source| crate::error::BuildError::Balancer {
            service: name.clone(),
            source,
        })?;
        metrics.set_policy(&name, None, (start.policy, start.source));
        let outlier = OutlierDetector::new(outlier).map_err(crate::error::BuildError::Outlier)?;
        let seed = hash_bytes(name.as_bytes()) ^ epoch.elapsed().as_nanos() as u64;
        Ok(Self {
            key,
            name,
            options: options.clone(),
            hash_header: RwLock::new(hash_header),
            dialer,
            epoch,
            metrics,
            inner: Mutex::new(Inner {
                source: Source::None,
                version: String::new(),
                set: EndpointSet::default(),
                handles: Vec::new(),
                balancer,
                outlier,
                rng: SmallRng::seed_from_u64(seed),
                recent: VecDeque::with_capacity(RECENT_PICKS),
                cluster: None,
                policy_source: start.source,
                policy_note: start.note,
            }),
            total_in_flight: AtomicU64::new(0),
            generation: watch::Sender::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every
        // mutation is a whole-field assignment), so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub(crate) fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    pub(crate) fn source(&self) -> Source {
        self.lock().source
    }

    pub(crate) fn generation(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Replaces the endpoints. Handles of addresses that stay are kept, so
    /// their connections, load and outlier history carry over.
    pub(crate) fn update(&self, set: EndpointSet, source: Source, version: String, eager: bool) {
        let mut inner = self.lock();
        let mut old: HashMap<SocketAddr, Arc<EndpointHandle>> =
            inner.handles.drain(..).map(|h| (h.address(), h)).collect();
        let mut fresh = Vec::new();
        let handles: Vec<Arc<EndpointHandle>> = set
            .endpoints()
            .iter()
            .map(|e| match old.remove(&e.address) {
                // Metadata may change (health, weight): keep the connection, take the new data.
                Some(h) if h.endpoint == *e => h,
                Some(h) => {
                    let handle = Arc::new(EndpointHandle {
                        endpoint: e.clone(),
                        conn: h.conn.clone(),
                        authority: h.authority.clone(),
                        stats: h.stats.clone(),
                        counters: h.counters.clone(),
                    });
                    // Just became ready: as good as new for eager connects.
                    if h.endpoint.health == Health::Unhealthy {
                        fresh.push(handle.clone());
                    }
                    handle
                }
                None => {
                    let counters = self.metrics.endpoint(&self.name, e.address);
                    let h = Arc::new(EndpointHandle::new(
                        e.clone(),
                        self.dialer.clone(),
                        counters,
                    ));
                    fresh.push(h.clone());
                    h
                }
            })
            .collect();
        for gone in old.values() {
            self.metrics.forget_endpoint(&self.name, gone.address());
        }
        // Not-ready endpoints are never picked, so they have no outcomes to
        // judge and must not widen the ejection cap over the ready ones.
        let addresses: Vec<SocketAddr> = handles
            .iter()
            .filter(|h| h.endpoint.health != Health::Unhealthy)
            .map(|h| h.address())
            .collect();
        inner.outlier.set_members(addresses.iter());
        inner.balancer.set_endpoints(&set, SystemTime::now());
        inner.handles = handles;
        inner.set = set;
        inner.source = source;
        inner.version = version;
        self.refresh_locked(&mut inner);
        drop(inner);
        if eager {
            // A pod that is not ready yet may not even listen; connect when it is.
            for h in fresh
                .into_iter()
                .filter(|h| h.endpoint.health != Health::Unhealthy)
            {
                tokio::spawn(async move {
                    if let Err(e) = h.conn.sender().await {
                        tracing::debug!(address = %h.address(), error = %e, "eager connect failed");
                    }
                });
            }
        }
        self.generation.send_modify(|g| *g += 1);
    }

    /// A Cluster from the control plane (`None`: it was deleted or is not
    /// served). Rebuilds the balancer over the same endpoints when the
    /// policy or slow start changes; connections, load and outlier state
    /// live outside it and carry over.
    pub(crate) fn set_cluster(&self, cluster: Option<ClusterPolicy>) {
        let mut inner = self.lock();
        if inner.cluster == cluster {
            return;
        }
        let next = effective(&self.options, cluster.as_ref());
        if matches!(self.options.hash, HashSource::Extension) {
            // Validated when the Cluster was parsed, so this never drops one.
            let from_cluster = cluster
                .as_ref()
                .and_then(|c| c.hash_header.as_deref())
                .and_then(|h| http::HeaderName::try_from(h).ok());
            *self.hash_header.write().unwrap_or_else(|e| e.into_inner()) = from_cluster;
        }
        inner.cluster = cluster;
        let current = inner.balancer.config();
        let before = (current.policy, inner.policy_source);
        if next.policy != current.policy || next.slow_start != current.slow_start {
            let config = BalancerConfig {
                policy: next.policy,
                slow_start: next.slow_start,
                ..current.clone()
            };
            match Balancer::new(config) {
                Ok(mut balancer) => {
                    balancer.set_endpoints(&inner.set, SystemTime::now());
                    inner.balancer = balancer;
                    self.refresh_locked(&mut inner);
                }
                Err(e) => {
                    // Only settings validated at start go in, so this is not expected.
                    tracing::warn!(service = %self.name, error = %e, "cannot balance with the control plane's policy; keeping the current one");
                    return;
                }
            }
        }
        let from = inner
            .cluster
            .as_ref()
            .map_or("", |c| c.chosen_from.as_str());
        match (&next.note, next.source) {
            (Some(note), PolicySource::Default) => {
                tracing::warn!(service = %self.name, policy = %next.policy, "{note}");
            }
            (Some(note), _) => {
                tracing::debug!(service = %self.name, policy = %next.policy, "{note}");
            }
            (None, source) if before != (next.policy, source) => {
                tracing::info!(service = %self.name, policy = %next.policy, source = source.as_str(), %from, "balancing policy set");
            }
            (None, _) => {}
        }
        self.metrics
            .set_policy(&self.name, Some(before), (next.policy, next.source));
        inner.policy_source = next.source;
        inner.policy_note = next.note;
    }

    fn refresh_locked(&self, inner: &mut Inner) {
        let now = self.now();
        let instant = Instant::now();
        let Inner {
            handles,
            balancer,
            outlier,
            ..
        } = inner;
        balancer.refresh(
            SystemTime::now(),
            |i| outlier.is_ejected(&handles[i].address(), now) || handles[i].conn.is_down(instant),
            |i| outlier.weight_factor(&handles[i].address()),
        );
    }

    /// Periodic work: success-rate ejection, slow-start ramp, metrics.
    pub(crate) fn tick(&self) {
        let mut inner = self.lock();
        let now = self.now();
        for address in inner.outlier.evaluate(now) {
            self.metrics
                .ejection(&self.name, address, EjectionReason::SuccessRate);
            tracing::info!(service = %self.name, %address, "endpoint ejected: success rate far below its peers'");
        }
        self.refresh_locked(&mut inner);
        for (i, h) in inner.handles.iter().enumerate() {
            self.metrics
                .set_in_flight(&self.name, h.address(), h.in_flight());
            // A draining pod that picks no longer choose (others are ready,
            // or its deadline is near) has no use for a connection once its
            // last request ended: let it go before the pod does. Picks take
            // this lock too, so none can start on it meanwhile.
            if h.endpoint.health == Health::Draining
                && !inner.balancer.is_usable(i)
                && h.in_flight() == 0
                && h.conn.is_open()
            {
                h.conn.close();
                tracing::debug!(service = %self.name, address = %h.address(), "closed the idle connection to a draining endpoint");
            }
        }
    }

    /// The hash key of a request, when the policy hashes.
    pub(crate) fn hash_key<B>(&self, request: &http::Request<B>) -> Option<u64> {
        if let Some(k) = request.extensions().get::<crate::HashKey>() {
            return Some(k.0);
        }
        let header = self.hash_header.read().unwrap_or_else(|e| e.into_inner());
        request
            .headers()
            .get(header.as_ref()?)
            .map(|v| hash_bytes(v.as_bytes()))
    }

    /// The cap on requests in flight per endpoint, if any.
    pub(crate) fn max_in_flight(&self) -> Option<u32> {
        self.options.max_in_flight_per_endpoint
    }

    /// Picks an endpoint and counts the request in flight on it. Also
    /// returns the endpoint's in-flight count before this request: the
    /// count and the increment are one atomic step, so requests that each
    /// see fewer than a cap before them are never more than the cap.
    /// `avoid`: endpoints already tried by this request, which load-aware
    /// policies then see as full.
    pub(crate) fn pick(
        self: &Arc<Self>,
        hash: Option<u64>,
        avoid: &[SocketAddr],
    ) -> Result<(InFlight, Pick, u32), PickError> {
        let mut inner = self.lock();
        let Inner {
            handles,
            balancer,
            rng,
            recent,
            ..
        } = &mut *inner;
        let loads = Loads {
            handles,
            with_latency: balancer.config().policy == lb_core::Policy::PeakEwma,
            avoid,
        };
        let total = self.total_in_flight.load(Ordering::Relaxed);
        let pick = balancer.pick(&loads, hash, total, rng)?;
        let handle = handles[pick.index].clone();
        let in_flight = handle.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        self.total_in_flight.fetch_add(1, Ordering::Relaxed);
        handle.stats.picks.fetch_add(1, Ordering::Relaxed);
        if recent.len() == RECENT_PICKS {
            recent.pop_front();
        }
        recent.push_back(PickRecord {
            address: handle.address(),
            reason: pick.reason,
            in_flight,
            at_ms: self.now().as_millis() as u64,
        });
        drop(inner);
        handle.counters.pick(pick.reason);
        Ok((
            InFlight {
                pool: self.clone(),
                handle,
            },
            pick,
            in_flight,
        ))
    }

    /// Records how a request ended on an endpoint.
    pub(crate) fn record(&self, handle: &EndpointHandle, outcome: Outcome) {
        match outcome {
            Outcome::Success => handle.stats.successes.fetch_add(1, Ordering::Relaxed),
            Outcome::Failure => handle.stats.failures.fetch_add(1, Ordering::Relaxed),
        };
        handle.counters.outcome(outcome);
        let mut inner = self.lock();
        let now = self.now();
        if let Some(reason) = inner.outlier.record(&handle.address(), outcome, now) {
            tracing::info!(service = %self.name, address = %handle.address(), ?reason, "endpoint ejected");
            self.metrics.ejection(&self.name, handle.address(), reason);
            self.refresh_locked(&mut inner);
        }
    }

    /// A connect failed: avoid the endpoint at once, not at the next tick.
    pub(crate) fn connect_failed(&self, handle: &EndpointHandle) {
        handle.conn.mark_down();
        self.record(handle, Outcome::Failure);
        let mut inner = self.lock();
        self.refresh_locked(&mut inner);
    }

    /// What the pool knows, for the debug view.
    pub(crate) fn debug(&self) -> ServiceDebug {
        let inner = self.lock();
        let now = self.now();
        let instant = Instant::now();
        let weights = inner.balancer.weights();
        ServiceDebug {
            service: self.name.clone(),
            source: inner.source,
            version: inner.version.clone(),
            policy: inner.balancer.config().policy.to_string(),
            policy_source: inner.policy_source,
            policy_note: inner.policy_note.clone(),
            hash_header: self
                .hash_header
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .map(|h| h.as_str().to_owned()),
            slow_start_window_ms: inner
                .balancer
                .config()
                .slow_start
                .map(|s| u64::try_from(s.window().as_millis()).unwrap_or(u64::MAX)),
            tier: inner.balancer.tier(),
            usable: inner.balancer.usable_count(),
            zone_shares: inner
                .balancer
                .zone_shares()
                .into_iter()
                .map(|(z, s)| (z.to_owned(), s))
                .collect(),
            endpoints: inner
                .handles
                .iter()
                .enumerate()
                .map(|(i, h)| {
                    let status = inner.outlier.status(&h.address(), now);
                    EndpointDebug {
                        address: h.address(),
                        pod: h.endpoint.pod.clone(),
                        zone: h.endpoint.zone.clone(),
                        health: h.endpoint.health.to_string(),
                        weight: h.endpoint.weight.get(),
                        effective_weight: weights.get(i).copied().unwrap_or(0.0),
                        in_flight: h.in_flight(),
                        latency_ms: h.latency() * 1000.0,
                        picks: h.stats.picks.load(Ordering::Relaxed),
                        successes: h.stats.successes.load(Ordering::Relaxed),
                        failures: h.stats.failures.load(Ordering::Relaxed),
                        ejected: status.is_some_and(|s| s.ejected),
                        error_rate: status.map_or(0.0, |s| s.error_rate),
                        connected: h.conn.is_open(),
                        connection_down: h.conn.is_down(instant),
                    }
                })
                .collect(),
            recent_picks: inner.recent.iter().cloned().collect(),
        }
    }
}

/// One service, as the client sees it.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceDebug {
    /// The service key as subscribed.
    pub service: String,
    /// Where the endpoints came from.
    pub source: Source,
    /// The xDS version accepted (empty for other sources).
    pub version: String,
    /// The balancing policy.
    pub policy: String,
    /// Where the policy came from: `local`, `cds` or `default`.
    pub policy_source: PolicySource,
    /// Why the policy is not the Cluster's, when that is worth knowing (a
    /// local override, or a Cluster asking only for unsupported policies).
    pub policy_note: Option<String>,
    /// The request header hashed by the hashing policies: the application's
    /// ([`crate::HashSource::Header`]) or the Cluster's (`eds.rs/hash-header`
    /// on the Service). A `HashKey` extension on a request wins over both.
    pub hash_header: Option<String>,
    /// The slow-start window new endpoints ramp up over (the Cluster's or
    /// the local one, whichever the policy came with); `None`: off.
    pub slow_start_window_ms: Option<u64>,
    /// The tier picks come from.
    pub tier: Tier,
    /// Endpoints picks may choose from.
    pub usable: usize,
    /// This client's share of traffic per zone (empty without affinity).
    pub zone_shares: Vec<(String, f64)>,
    /// Every endpoint.
    pub endpoints: Vec<EndpointDebug>,
    /// The last picks, oldest first.
    pub recent_picks: Vec<PickRecord>,
}

/// One endpoint, as the client sees it.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointDebug {
    /// Address.
    pub address: SocketAddr,
    /// Pod name.
    pub pod: Option<String>,
    /// Zone.
    pub zone: Option<String>,
    /// Health from the control plane.
    pub health: String,
    /// Weight from the control plane.
    pub weight: u32,
    /// Weight after slow start and error penalty.
    pub effective_weight: f64,
    /// Requests in flight now.
    pub in_flight: u32,
    /// Peak-EWMA latency estimate.
    pub latency_ms: f64,
    /// Times picked.
    pub picks: u64,
    /// Requests that succeeded.
    pub successes: u64,
    /// Requests that failed (transport or server-blamed status).
    pub failures: u64,
    /// Ejected by outlier detection now.
    pub ejected: bool,
    /// Averaged error rate.
    pub error_rate: f64,
    /// An HTTP/2 connection is open.
    pub connected: bool,
    /// The last connect failed moments ago.
    pub connection_down: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cds(policy: Option<Policy>, slow: Option<SlowStart>) -> ClusterPolicy {
        ClusterPolicy {
            name: "echo.demo:8080".into(),
            policy,
            slow_start: slow,
            hash_header: None,
            chosen_from: "test".into(),
            unsupported: if policy.is_none() {
                vec!["type.googleapis.com/acme.Lb".into()]
            } else {
                Vec::new()
            },
        }
    }

    #[test]
    fn local_policy_wins_then_the_cluster_then_the_default() {
        let ramp = SlowStart::new(Duration::from_secs(60), 1.0, 0.1).unwrap();
        let unset = ServiceOptions::default();
        assert_eq!(unset.policy, None, "the control plane decides by default");

        let e = effective(&unset, None);
        assert_eq!(
            (e.policy, e.source, e.note),
            (Policy::P2c, PolicySource::Default, None)
        );
        assert_eq!(e.slow_start, unset.slow_start);

        let e = effective(&unset, Some(&cds(Some(Policy::RoundRobin), Some(ramp))));
        assert_eq!(
            (e.policy, e.source),
            (Policy::RoundRobin, PolicySource::Cds)
        );
        assert_eq!(e.slow_start, Some(ramp), "the Cluster's slow start");
        let e = effective(&unset, Some(&cds(Some(Policy::RingHash), None)));
        assert_eq!(e.slow_start, unset.slow_start, "else the local one");

        let e = effective(&unset, Some(&cds(None, Some(ramp))));
        assert_eq!((e.policy, e.source), (Policy::P2c, PolicySource::Default));
        assert!(e.note.unwrap().contains("acme.Lb"));

        let local = ServiceOptions::default().with_policy(Policy::Random);
        let e = effective(&local, Some(&cds(Some(Policy::RoundRobin), Some(ramp))));
        assert_eq!((e.policy, e.source), (Policy::Random, PolicySource::Local));
        assert_eq!(e.slow_start, local.slow_start, "local settings stay whole");
        assert!(e.note.unwrap().contains("round-robin"));
        let e = effective(&local, Some(&cds(Some(Policy::Random), None)));
        assert_eq!(e.note, None, "nothing to say when they agree");
    }

    #[test]
    fn the_clusters_hash_header_applies_unless_the_application_chose_one() {
        let pool = |options: &ServiceOptions| {
            let context = PoolContext {
                zone: None,
                outlier: OutlierConfig::default(),
                dialer: Arc::new(Dialer::plaintext(Duration::from_secs(1))),
                epoch: Instant::now(),
                metrics: Arc::new(Metrics::new()),
            };
            ServicePool::new(
                "echo.demo:8080".parse().unwrap(),
                "echo.demo:8080".into(),
                options,
                context,
            )
            .unwrap()
        };
        let request = |pairs: &[(&str, &str)]| {
            let mut r = http::Request::new(());
            for (k, v) in pairs {
                r.headers_mut().insert(
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            r
        };
        let hashing = ClusterPolicy {
            hash_header: Some("x-user".into()),
            ..cds(Some(Policy::RingHash), None)
        };
        let both = request(&[("x-user", "ann"), ("x-local", "bob")]);

        let p = pool(&ServiceOptions::default());
        assert_eq!(
            p.hash_key(&both),
            None,
            "no header before a Cluster names one"
        );
        p.set_cluster(Some(hashing.clone()));
        assert_eq!(p.hash_key(&both), Some(hash_bytes(b"ann")));
        assert_eq!(p.debug().hash_header.as_deref(), Some("x-user"));
        // A HashKey extension still wins; a request without the header has no key.
        let mut keyed = request(&[("x-user", "ann")]);
        keyed.extensions_mut().insert(crate::HashKey(7));
        assert_eq!(p.hash_key(&keyed), Some(7));
        assert_eq!(p.hash_key(&request(&[])), None);
        // The Cluster going away takes its header with it.
        p.set_cluster(None);
        assert_eq!(p.hash_key(&both), None);

        let local = ServiceOptions {
            hash: HashSource::Header("x-local".into()),
            ..ServiceOptions::default()
        };
        let p = pool(&local);
        p.set_cluster(Some(hashing));
        assert_eq!(
            p.hash_key(&both),
            Some(hash_bytes(b"bob")),
            "the application's header wins"
        );
        assert_eq!(p.debug().hash_header.as_deref(), Some("x-local"));
    }

    #[test]
    fn request_uri_gets_scheme_and_the_endpoints_authority() {
        let metrics = Metrics::new();
        for address in ["10.1.2.3:8080", "[fd00::7]:50051"] {
            let address: SocketAddr = address.parse().unwrap();
            let handle = EndpointHandle::new(
                Endpoint::new(address),
                Arc::new(Dialer::plaintext(Duration::from_secs(1))),
                metrics.endpoint("echo.demo:8080", address),
            );
            let mut request = http::Request::new(());
            *request.uri_mut() = "/eds.echo.v1.Echo/Echo?x=1".parse().unwrap();
            handle.set_uri(&mut request);
            assert_eq!(
                request.uri().to_string(),
                format!("http://{address}/eds.echo.v1.Echo/Echo?x=1")
            );
            // A retry on another endpoint replaces the authority of an absolute URI.
            let other: SocketAddr = "10.9.9.9:80".parse().unwrap();
            let second = EndpointHandle::new(
                Endpoint::new(other),
                Arc::new(Dialer::plaintext(Duration::from_secs(1))),
                metrics.endpoint("echo.demo:8080", other),
            );
            second.set_uri(&mut request);
            assert_eq!(
                request.uri().to_string(),
                "http://10.9.9.9:80/eds.echo.v1.Echo/Echo?x=1"
            );
            let mut bare = http::Request::new(());
            *bare.uri_mut() = http::Uri::default();
            handle.set_uri(&mut bare);
            assert_eq!(bare.uri().path(), "/");
            assert_eq!(bare.uri().authority(), Some(&handle.authority));
        }
    }
}

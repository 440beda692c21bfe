//! Simulator settings, the policies it compares, and their validation.
//!
//! This is where bad input stops: [`SimConfig::validate`] rejects every value
//! the engine could not run with (no backends, a utilisation of 1 or more, a
//! NaN sigma, ...) with a typed [`SimError`], so the engine itself never has
//! to panic or loop forever. It is not a command-line parser; `cargo xtask
//! simulate` maps its flags onto this struct.

use std::fmt;
use std::str::FromStr;

/// Largest number of backends: addresses are generated in 10.0.0.0/8 and
/// every client keeps a counter per backend.
pub const MAX_BACKENDS: usize = 1 << 16;

/// Largest `clients x backends`: the per-client load tables are that big.
pub const MAX_CLIENT_BACKEND_PAIRS: usize = 20_000_000;

/// Largest expected number of requests per policy. Every latency is kept
/// for exact percentiles (8 bytes each), so this bounds memory and run time.
pub const MAX_REQUESTS: f64 = 30_000_000.0;

/// A balancing policy as the simulator runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum SimPolicy {
    /// What kube-proxy does to gRPC: each client opens one long-lived
    /// connection to a backend chosen uniformly at connect time and sends
    /// every request over it.
    #[serde(rename = "l4-per-connection")]
    PerConnection,
    /// Per-request round robin (`Policy::RoundRobin`).
    #[serde(rename = "round-robin")]
    RoundRobin,
    /// Per-request uniform random (`Policy::Random`).
    #[serde(rename = "random")]
    Random,
    /// lb-core's least-request picker on in-flight requests (`Policy::P2c`):
    /// the least loaded of all backends up to
    /// [`crate::pick::SCAN_ALL_UP_TO`], power of two choices above.
    #[serde(rename = "p2c")]
    P2c,
    /// The same picker on peak-EWMA latency x pending (`Policy::PeakEwma`).
    #[serde(rename = "p2c-peak-ewma")]
    PeakEwma,
    /// `P2c` on in-flight within the zone that zone affinity with spillover
    /// chooses (`Policy::P2c` with the client's zone set).
    #[serde(rename = "zone-p2c")]
    ZoneP2c,
    /// Least loaded: every request goes to the backend with the fewest
    /// requests in flight in the client's view (a full scan, ties broken
    /// at random), whatever the backend count. Not an lb-core policy (lb-core's
    /// `P2c` scans only up to [`crate::pick::SCAN_ALL_UP_TO`] candidates):
    /// a peer for comparison, so it is not in [`SimPolicy::ALL`]; ask for
    /// it by name.
    #[serde(rename = "least-loaded")]
    LeastLoaded,
}

impl SimPolicy {
    /// Every policy, in the order tables print them.
    pub const ALL: [SimPolicy; 6] = [
        SimPolicy::PerConnection,
        SimPolicy::RoundRobin,
        SimPolicy::Random,
        SimPolicy::P2c,
        SimPolicy::PeakEwma,
        SimPolicy::ZoneP2c,
    ];

    /// The name used in flags and output.
    pub fn as_str(self) -> &'static str {
        match self {
            SimPolicy::PerConnection => "l4-per-connection",
            SimPolicy::RoundRobin => "round-robin",
            SimPolicy::Random => "random",
            SimPolicy::P2c => "p2c",
            SimPolicy::PeakEwma => "p2c-peak-ewma",
            SimPolicy::ZoneP2c => "zone-p2c",
            SimPolicy::LeastLoaded => "least-loaded",
        }
    }
}

impl fmt::Display for SimPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SimPolicy {
    type Err = SimError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SimPolicy::ALL
            .into_iter()
            .chain([SimPolicy::LeastLoaded])
            .find(|p| p.as_str() == s)
            .ok_or_else(|| SimError::UnknownPolicy(s.to_owned()))
    }
}

/// Distribution of a request's cost (its service time on a backend of
/// normal speed), always scaled so that its mean is
/// [`SimConfig::mean_cost_secs`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum CostModel {
    /// Every request costs the mean.
    Constant,
    /// Exponential: the M/M/1 and supermarket-model assumption.
    Exponential,
    /// Lognormal with shape `sigma` (the standard deviation of the log):
    /// sigma 1 gives a p99 about 6x the median, typical of RPC services.
    Lognormal {
        /// Standard deviation of ln(cost), in [0, 4].
        sigma: f64,
    },
    /// Two kinds of request: a share `expensive_fraction` costs
    /// `expensive_factor` times as much as the others.
    Mix {
        /// Share of expensive requests, in [0, 1].
        expensive_fraction: f64,
        /// How much more an expensive request costs, >= 1.
        expensive_factor: f64,
    },
}

/// Whose in-flight counts the pickers read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoadView {
    /// Each client sees only its own outstanding requests, as a real
    /// client-side balancer does.
    #[default]
    PerClient,
    /// Every client sees every backend's true number of requests in the
    /// system: the global view the supermarket model assumes.
    Global,
}

/// A spell during which the slow backends are slow; outside it they serve
/// at normal speed. Used by [`crate::sim::run_with_slow_window`] for "one
/// pod turns slow for a while" scenarios.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct SlowWindow {
    /// Simulated second the slowness starts.
    pub from_secs: f64,
    /// Simulated second it ends (exclusive).
    pub to_secs: f64,
}

impl SlowWindow {
    /// Whether a request whose service starts at `t` is served slowly.
    pub fn contains(&self, t: f64) -> bool {
        t >= self.from_secs && t < self.to_secs
    }

    /// Checks the window is a finite, non-empty span starting at or after 0.
    pub fn validate(&self) -> Result<(), SimError> {
        check(
            "slow window start",
            "a finite number >= 0",
            self.from_secs,
            |f| f >= 0.0,
        )?;
        check(
            "slow window end",
            "a finite number after the start",
            self.to_secs,
            |t| t > self.from_secs,
        )
    }
}

/// One simulation: the fleet, the workload and the policies to compare.
///
/// Backend `i` is in zone `i % zones` and the first `slow_backends` backends
/// are `slow_factor` times slower; client `j` is in zone `j % zones`. A
/// backend is one worker serving its queue in arrival order (FIFO), so its
/// utilisation is work received over time, and above 1 its queue grows
/// without bound.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SimConfig {
    /// Number of backends (>= 1).
    pub backends: usize,
    /// Number of zones, between 1 and `backends`.
    pub zones: usize,
    /// Number of clients (>= 1), each with its own balancer and load view.
    pub clients: usize,
    /// Request cost distribution.
    pub cost: CostModel,
    /// Mean request cost on a normal backend, in seconds.
    pub mean_cost_secs: f64,
    /// Target utilisation of the whole fleet, in (0, 1): the arrival rate
    /// is `utilization x total capacity / mean cost`, where slow backends
    /// count for `1 / slow_factor` of a normal one.
    pub utilization: f64,
    /// Simulated time, in seconds.
    pub duration_secs: f64,
    /// Initial simulated time left out of the figures, in seconds, so the
    /// queues start from a typical state rather than empty.
    pub warmup_secs: f64,
    /// Seed of every random stream.
    pub seed: u64,
    /// How many backends are slow (0 ..= backends).
    pub slow_backends: usize,
    /// How many times slower a slow backend is (> 0).
    pub slow_factor: f64,
    /// Whose load the pickers read.
    pub view: LoadView,
    /// Decay time of each client's peak-EWMA estimates, in seconds.
    pub ewma_decay_secs: f64,
    /// Policies to compare, in output order.
    pub policies: Vec<SimPolicy>,
}

impl Default for SimConfig {
    /// The headline scenario: 32 backends in 3 zones, 64 clients,
    /// lognormal costs with sigma 1 (mean 10 ms), 80% utilisation.
    fn default() -> Self {
        Self {
            backends: 32,
            zones: 3,
            clients: 64,
            cost: CostModel::Lognormal { sigma: 1.0 },
            mean_cost_secs: 0.010,
            utilization: 0.8,
            duration_secs: 60.0,
            warmup_secs: 5.0,
            seed: 1,
            slow_backends: 0,
            slow_factor: 3.0,
            view: LoadView::PerClient,
            // Finagle's and tower's default decay for peak EWMA.
            ewma_decay_secs: 10.0,
            policies: SimPolicy::ALL.to_vec(),
        }
    }
}

/// Why a simulation cannot run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SimError {
    /// No backends.
    #[error("at least one backend is needed, got 0")]
    NoBackends,
    /// More backends than the simulator supports.
    #[error("at most {max} backends are supported, got {backends}")]
    TooManyBackends {
        /// Requested.
        backends: usize,
        /// Supported.
        max: usize,
    },
    /// No clients.
    #[error("at least one client is needed, got 0")]
    NoClients,
    /// Zones must each hold at least one backend.
    #[error("zones must be between 1 and the number of backends ({backends}), got {zones}")]
    Zones {
        /// Requested zones.
        zones: usize,
        /// Backends available.
        backends: usize,
    },
    /// Utilisation outside (0, 1): at 1 or more the queues never settle.
    #[error("target utilization must be greater than 0 and less than 1, got {0}")]
    Utilization(f64),
    /// More slow backends than backends.
    #[error("slow backends ({slow}) cannot exceed backends ({backends})")]
    TooManySlow {
        /// Requested slow backends.
        slow: usize,
        /// Backends available.
        backends: usize,
    },
    /// A number outside its allowed range, or NaN.
    #[error("{name} must be {expected}, got {}", Short(*.value))]
    OutOfRange {
        /// The setting, as users write it.
        name: &'static str,
        /// The allowed range, in words.
        expected: &'static str,
        /// What was given.
        value: f64,
    },
    /// Nothing to compare.
    #[error("at least one policy is needed")]
    NoPolicies,
    /// An unknown policy name.
    #[error(
        "unknown simulator policy {0:?}; known: l4-per-connection, round-robin, random, p2c, p2c-peak-ewma, zone-p2c, least-loaded"
    )]
    UnknownPolicy(String),
    /// The balancer refused the configuration the simulator built for it.
    #[error("the balancer rejected the simulated configuration: {0}")]
    Balancer(#[from] crate::error::ConfigError),
    /// The balancer could not pick (a bug: every simulated backend is healthy).
    #[error("the balancer could not pick an endpoint: {0}")]
    Pick(#[from] crate::error::PickError),
    /// The run would need too much memory or time.
    #[error(
        "{what} would be about {value:.0}, more than the limit of {max:.0}; shorten the run or shrink the fleet"
    )]
    TooLarge {
        /// What is too large.
        what: &'static str,
        /// How large it would be.
        value: f64,
        /// The limit.
        max: f64,
    },
}

/// Prints huge and tiny numbers in exponent form, so an error message
/// quotes `1e305` rather than three hundred digits.
struct Short(f64);

impl fmt::Display for Short {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        if v.is_finite() && v != 0.0 && !(1e-6..1e9).contains(&v.abs()) {
            write!(f, "{v:e}")
        } else {
            write!(f, "{v}")
        }
    }
}

fn check(
    name: &'static str,
    expected: &'static str,
    value: f64,
    ok: impl Fn(f64) -> bool,
) -> Result<(), SimError> {
    if value.is_finite() && ok(value) {
        Ok(())
    } else {
        Err(SimError::OutOfRange {
            name,
            expected,
            value,
        })
    }
}

impl SimConfig {
    /// Checks every setting; the engine runs only validated configurations.
    pub fn validate(&self) -> Result<(), SimError> {
        if self.backends == 0 {
            return Err(SimError::NoBackends);
        }
        if self.backends > MAX_BACKENDS {
            return Err(SimError::TooManyBackends {
                backends: self.backends,
                max: MAX_BACKENDS,
            });
        }
        if self.clients == 0 {
            return Err(SimError::NoClients);
        }
        if self.zones == 0 || self.zones > self.backends {
            return Err(SimError::Zones {
                zones: self.zones,
                backends: self.backends,
            });
        }
        if !(self.utilization > 0.0 && self.utilization < 1.0) {
            return Err(SimError::Utilization(self.utilization));
        }
        if self.slow_backends > self.backends {
            return Err(SimError::TooManySlow {
                slow: self.slow_backends,
                backends: self.backends,
            });
        }
        match self.cost {
            CostModel::Constant | CostModel::Exponential => {}
            CostModel::Lognormal { sigma } => {
                // Beyond 4 the mean is dominated by draws too rare to simulate.
                check("lognormal sigma", "in [0, 4]", sigma, |s| {
                    (0.0..=4.0).contains(&s)
                })?;
            }
            CostModel::Mix {
                expensive_fraction,
                expensive_factor,
            } => {
                check("expensive fraction", "in [0, 1]", expensive_fraction, |f| {
                    (0.0..=1.0).contains(&f)
                })?;
                check(
                    "expensive factor",
                    "a finite number >= 1",
                    expensive_factor,
                    |f| f >= 1.0,
                )?;
            }
        }
        // Upper bounds keep every time a std Duration can hold.
        check(
            "mean cost",
            "more than 0 and at most 1e6 seconds",
            self.mean_cost_secs,
            |m| m > 0.0 && m <= 1e6,
        )?;
        check(
            "duration",
            "a positive finite number of seconds",
            self.duration_secs,
            |d| d > 0.0,
        )?;
        check(
            "warmup",
            "at least 0 and shorter than the duration",
            self.warmup_secs,
            |w| w >= 0.0 && w < self.duration_secs,
        )?;
        check(
            "slow factor",
            "a positive finite number",
            self.slow_factor,
            |f| f > 0.0,
        )?;
        check(
            "peak-EWMA decay",
            "more than 0 and at most 1e6 seconds",
            self.ewma_decay_secs,
            |d| d > 0.0 && d <= 1e6,
        )?;
        if self.policies.is_empty() {
            return Err(SimError::NoPolicies);
        }
        let pairs = self.clients.saturating_mul(self.backends);
        if pairs > MAX_CLIENT_BACKEND_PAIRS {
            return Err(SimError::TooLarge {
                what: "clients x backends",
                value: pairs as f64,
                max: MAX_CLIENT_BACKEND_PAIRS as f64,
            });
        }
        let requests = self.total_rate() * self.duration_secs;
        // Written so that a NaN product is rejected too.
        if requests.is_nan() || requests > MAX_REQUESTS {
            return Err(SimError::TooLarge {
                what: "the number of requests per policy",
                value: requests,
                max: MAX_REQUESTS,
            });
        }
        Ok(())
    }

    /// Service-time multiplier of backend `i`.
    pub fn slowness(&self, i: usize) -> f64 {
        if i < self.slow_backends {
            self.slow_factor
        } else {
            1.0
        }
    }

    /// Capacity of the fleet in normal backends.
    pub fn capacity(&self) -> f64 {
        (0..self.backends).map(|i| 1.0 / self.slowness(i)).sum()
    }

    /// Requests per second over all clients that give the target utilisation.
    pub fn total_rate(&self) -> f64 {
        self.utilization * self.capacity() / self.mean_cost_secs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_names_round_trip() {
        SimConfig::default().validate().unwrap();
        for p in SimPolicy::ALL {
            assert_eq!(p.as_str().parse::<SimPolicy>(), Ok(p));
        }
        assert!(matches!(
            "fastest".parse::<SimPolicy>(),
            Err(SimError::UnknownPolicy(_))
        ));
    }

    #[test]
    fn capacity_counts_slow_backends_as_fractions() {
        let c = SimConfig {
            backends: 10,
            slow_backends: 1,
            slow_factor: 3.0,
            ..Default::default()
        };
        assert!((c.capacity() - (9.0 + 1.0 / 3.0)).abs() < 1e-12);
    }
}

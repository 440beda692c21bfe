//! The deterministic load simulator: compares balancing policies on a
//! simulated fleet, driving lb-core's own pickers.
//!
//! ```text
//!   SimConfig --validate--> Fleet (EndpointSet, zones, slow backends)
//!                             |
//!   per policy:  clients (Poisson, own Balancer, own load view)
//!                  --pick--> FIFO backends --done--> in-flight, peak EWMA
//!                             |
//!                           Report: utilisation spread, latency, cross-zone
//! ```
//!
//! What it models: `clients` clients, each sending a Poisson stream of
//! requests (together giving the target utilisation), each choosing a
//! backend with its own [`crate::Balancer`] (or, for per-connection L4
//! balancing, with one uniformly random connection made at start), and
//! reading only its own in-flight requests unless [`LoadView::Global`] is
//! asked for. Backends serve one request at a time in arrival order; some
//! may be slower by a factor.
//!
//! What it is not: a network model (no RTT, no connection set-up, no
//! failures), a model of server concurrency (one worker per backend), or a
//! benchmark of pick speed (`cargo xtask bench picker` is). It reads no
//! clock and does no IO; the same configuration always gives the same
//! report. The
//! [`theory`] module holds the closed forms `tests/sim_theory.rs` checks it
//! against.

mod config;
mod engine;
mod report;
pub mod theory;

pub use config::{
    CostModel, LoadView, MAX_BACKENDS, MAX_CLIENT_BACKEND_PAIRS, MAX_REQUESTS, SimConfig, SimError,
    SimPolicy, SlowWindow,
};
pub use report::{BackendInfo, PolicyReport, Report};

/// Validates `config`, then simulates each of its policies in turn over the
/// same fleet and the same requests.
pub fn run(config: &SimConfig) -> Result<Report, SimError> {
    config.validate()?;
    simulate(config, None, config.total_rate())
}

/// Like [`run`], but the slow backends are slow only while `window` lasts
/// (a request is slow when its service starts inside it): "one pod turns
/// slow for 30 s". The arrival rate is that of the healthy fleet, so during
/// the window the fleet is short of capacity, as it would be in production.
pub fn run_with_slow_window(config: &SimConfig, window: SlowWindow) -> Result<Report, SimError> {
    config.validate()?;
    window.validate()?;
    let healthy = SimConfig {
        slow_backends: 0,
        ..config.clone()
    };
    simulate(config, Some(window), healthy.total_rate())
}

fn simulate(config: &SimConfig, window: Option<SlowWindow>, rate: f64) -> Result<Report, SimError> {
    let fleet = engine::Fleet::new(config);
    let policies = config
        .policies
        .iter()
        .map(|&p| engine::run_policy(config, &fleet, p, window, rate).map(|raw| raw.summarise(p)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Report {
        config: config.clone(),
        total_rate: rate,
        backends: fleet.describe(),
        policies,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One pod turns 20x slower for 20 s of a 40 s run: P2C, reading only
    /// each client's own in-flight requests, still steers away from it,
    /// round robin keeps feeding it. Seeded, so the figures are fixed.
    #[test]
    fn a_slow_spell_is_avoided_by_p2c_not_by_round_robin() {
        let config = SimConfig {
            backends: 8,
            zones: 1,
            clients: 16,
            duration_secs: 40.0,
            warmup_secs: 5.0,
            slow_backends: 1,
            slow_factor: 20.0,
            policies: vec![
                SimPolicy::RoundRobin,
                SimPolicy::P2c,
                SimPolicy::LeastLoaded,
            ],
            ..SimConfig::default()
        };
        let window = SlowWindow {
            from_secs: 10.0,
            to_secs: 30.0,
        };
        let report = run_with_slow_window(&config, window).unwrap();
        let share = |p: &PolicyReport| {
            p.requests_per_backend[0] as f64 / p.requests_per_backend.iter().sum::<u64>() as f64
        };
        let [rr, p2c, least] = &report.policies[..] else {
            panic!("three policies");
        };
        assert!(
            share(p2c) < share(rr) * 0.8,
            "{} vs {}",
            share(p2c),
            share(rr)
        );
        assert!(
            share(least) < share(rr),
            "{} vs {}",
            share(least),
            share(rr)
        );
        assert!(p2c.within_1s_fraction > rr.within_1s_fraction);
        assert!(p2c.p99_ms < rr.p99_ms);
        // The healthy fleet's rate, not the slowed one's.
        let healthy = SimConfig {
            slow_backends: 0,
            ..config.clone()
        };
        assert_eq!(report.total_rate, healthy.total_rate());
        // Deterministic: the same run gives the same report.
        assert_eq!(run_with_slow_window(&config, window).unwrap(), report);
    }

    #[test]
    fn bad_windows_are_rejected() {
        let config = SimConfig::default();
        for (from_secs, to_secs) in [(5.0, 5.0), (-1.0, 3.0), (1.0, f64::NAN)] {
            let w = SlowWindow { from_secs, to_secs };
            assert!(matches!(
                run_with_slow_window(&config, w),
                Err(SimError::OutOfRange { .. })
            ));
        }
    }

    #[test]
    fn least_loaded_is_named_but_not_in_all() {
        assert_eq!(
            "least-loaded".parse::<SimPolicy>(),
            Ok(SimPolicy::LeastLoaded)
        );
        assert!(!SimPolicy::ALL.contains(&SimPolicy::LeastLoaded));
    }
}

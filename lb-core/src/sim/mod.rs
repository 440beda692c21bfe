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
//! benchmark of pick speed (see `benches/pick.rs`). It reads no clock and
//! does no IO; the same configuration always gives the same report. The
//! [`theory`] module holds the closed forms `tests/sim_theory.rs` checks it
//! against.

mod config;
mod engine;
mod report;
pub mod theory;

pub use config::{
    CostModel, LoadView, MAX_BACKENDS, MAX_CLIENT_BACKEND_PAIRS, MAX_REQUESTS, SimConfig, SimError,
    SimPolicy,
};
pub use report::{BackendInfo, PolicyReport, Report};

/// Validates `config`, then simulates each of its policies in turn over the
/// same fleet and the same requests.
pub fn run(config: &SimConfig) -> Result<Report, SimError> {
    config.validate()?;
    let fleet = engine::Fleet::new(config);
    let policies = config
        .policies
        .iter()
        .map(|&p| engine::run_policy(config, &fleet, p).map(|raw| raw.summarise(p)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Report {
        config: config.clone(),
        total_rate: config.total_rate(),
        backends: fleet.describe(),
        policies,
    })
}

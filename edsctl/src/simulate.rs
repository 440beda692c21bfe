//! `edsctl simulate`: what `lb-core`'s [`Balancer`] would pick over a live
//! endpoint set, as a distribution, for one or more policies.
//!
//! ```text
//!  EndpointSet (from /debug/endpoints) ─> Balancer::new(policy, from zone) ─set_endpoints─┐
//!                                                                                         v
//!   for each of N requests: retire the oldest if `concurrency` are in flight, pick, count
//! ```
//!
//! The load model is deliberately simple and deterministic: a fixed number
//! of requests in flight (`concurrency`), each finishing in pick order, so
//! P2C sees real in-flight counts; randomness is a seeded `SmallRng`. Hash
//! policies use one fixed key for every request when `--key` is given (to
//! show where that key lands), else a distinct key per request (to show the
//! ring's spread). No outlier ejection and no slow start: the server does
//! not report outcomes or the service's slow-start window. Pure: no IO, and
//! time is passed in.

use std::collections::BTreeMap;
use std::time::SystemTime;

use lb_core::rng::hash_bytes;
use lb_core::{Balancer, BalancerConfig, EndpointSet, PickReason, Policy, SmallRng, Tier};
use serde::Serialize;

use crate::error::Error;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Policies to compare, in output order.
    pub policies: Vec<Policy>,
    /// The caller's zone; `None` turns zone affinity off.
    pub from_zone: Option<String>,
    /// One hash key for every request, or `None` for a key per request.
    pub key: Option<String>,
    /// Number of picks.
    pub requests: u64,
    /// Requests in flight at once (at least 1).
    pub concurrency: usize,
    /// RNG seed.
    pub seed: u64,
    /// The time slow start and `ready_since` are measured against.
    pub now: SystemTime,
}

/// One endpoint's row in the result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimEndpoint {
    /// `ip:port`.
    pub address: String,
    /// Pod name.
    pub pod: Option<String>,
    /// Zone (`""` unknown).
    pub zone: String,
    /// HEALTHY / DRAINING / UNHEALTHY.
    pub health: String,
}

/// One policy's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyResult {
    /// The policy.
    pub policy: String,
    /// The tier picks came from.
    pub tier: Tier,
    /// Picks per endpoint, in endpoint order.
    pub picks: Vec<u64>,
    /// Picks by reason (`local`, `spill`, `any-zone`, `hash`, `panic`, `draining`).
    pub reasons: BTreeMap<String, u64>,
    /// Share of traffic per zone the balancer intends, when zone affinity applies.
    pub zone_shares: BTreeMap<String, f64>,
    /// Picks that failed (no usable endpoint).
    pub failed: u64,
}

/// The whole simulation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimReport {
    /// The service key.
    pub key: String,
    /// Requests per policy.
    pub requests: u64,
    /// Requests in flight.
    pub concurrency: usize,
    /// The caller's zone.
    pub from_zone: Option<String>,
    /// The fixed hash key, if any.
    pub hash_key: Option<String>,
    /// The seed.
    pub seed: u64,
    /// Endpoints, sorted by address.
    pub endpoints: Vec<SimEndpoint>,
    /// One result per policy.
    pub results: Vec<PolicyResult>,
}

fn reason_name(r: PickReason) -> &'static str {
    match r {
        PickReason::Local => "local",
        PickReason::Spill => "spill",
        PickReason::AnyZone => "any-zone",
        PickReason::Hash => "hash",
        PickReason::Panic => "panic",
        PickReason::Draining => "draining",
    }
}

/// Runs the simulation for `key`'s endpoints.
pub fn simulate(key: &str, set: &EndpointSet, config: &SimConfig) -> Result<SimReport, Error> {
    if config.policies.is_empty() {
        return Err(Error::Usage {
            message: "no policy to simulate".into(),
            hint: Some("pass --policy p2c,round-robin,... or --policy all".into()),
        });
    }
    let concurrency = config.concurrency.max(1);
    let n = set.len();
    let mut results = Vec::new();
    for &policy in &config.policies {
        let mut balancer = Balancer::new(BalancerConfig {
            policy,
            zone: config.from_zone.clone(),
            ..BalancerConfig::default()
        })
        .map_err(|e| Error::Usage {
            message: format!("policy {policy}: {e}"),
            hint: None,
        })?;
        balancer.set_endpoints(set, config.now);
        let mut rng = SmallRng::seed_from_u64(config.seed);
        let mut in_flight = vec![0u32; n];
        let mut queue = std::collections::VecDeque::with_capacity(concurrency);
        let mut total_in_flight = 0u64;
        let mut picks = vec![0u64; n];
        let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
        let mut failed = 0u64;
        let fixed = config.key.as_deref().map(|k| hash_bytes(k.as_bytes()));
        for i in 0..config.requests {
            if queue.len() >= concurrency
                && let Some(done) = queue.pop_front()
            {
                let slot: &mut u32 = &mut in_flight[done];
                *slot = slot.saturating_sub(1);
                total_in_flight = total_in_flight.saturating_sub(1);
            }
            let hash = policy
                .is_hash()
                .then(|| fixed.unwrap_or_else(|| hash_bytes(format!("request-{i}").as_bytes())));
            match balancer.pick(&in_flight, hash, total_in_flight, &mut rng) {
                Ok(pick) if pick.index < n => {
                    picks[pick.index] += 1;
                    in_flight[pick.index] += 1;
                    total_in_flight += 1;
                    queue.push_back(pick.index);
                    *reasons
                        .entry(reason_name(pick.reason).to_owned())
                        .or_default() += 1;
                }
                _ => failed += 1,
            }
        }
        results.push(PolicyResult {
            policy: policy.as_str().to_owned(),
            tier: balancer.tier(),
            picks,
            reasons,
            zone_shares: balancer
                .zone_shares()
                .into_iter()
                .map(|(z, s)| (z.to_owned(), s))
                .collect(),
            failed,
        });
    }
    Ok(SimReport {
        key: key.to_owned(),
        requests: config.requests,
        concurrency,
        from_zone: config.from_zone.clone(),
        hash_key: config.key.clone(),
        seed: config.seed,
        endpoints: set
            .endpoints()
            .iter()
            .map(|e| SimEndpoint {
                address: e.address.to_string(),
                pod: e.pod.clone(),
                zone: e.zone_or_empty().to_owned(),
                health: e.health.as_str().to_owned(),
            })
            .collect(),
        results,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_core::{Endpoint, Health};
    use std::net::SocketAddr;

    fn set() -> EndpointSet {
        let ep = |last: u8, zone: &str, health: Health| {
            Endpoint::new(SocketAddr::from(([10, 0, 0, last], 9090)))
                .with_zone(zone)
                .with_health(health)
        };
        EndpointSet::merge(vec![
            ep(1, "zone-a", Health::Healthy),
            ep(2, "zone-a", Health::Healthy),
            ep(3, "zone-b", Health::Healthy),
            ep(4, "zone-b", Health::Draining),
        ])
    }

    fn config(policies: Vec<Policy>) -> SimConfig {
        SimConfig {
            policies,
            from_zone: None,
            key: None,
            requests: 3000,
            concurrency: 4,
            seed: 7,
            now: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn round_robin_spreads_evenly_and_never_picks_draining() {
        let r = simulate("echo.demo:8080", &set(), &config(vec![Policy::RoundRobin])).unwrap();
        assert_eq!(r.results[0].picks, [1000, 1000, 1000, 0]);
        assert_eq!(r.results[0].failed, 0);
        assert_eq!(r.results[0].tier, Tier::Normal);
    }

    #[test]
    fn zone_affinity_keeps_traffic_local_when_capacity_allows() {
        let mut c = config(vec![Policy::P2c]);
        c.from_zone = Some("zone-a".into());
        let r = simulate("k", &set(), &c).unwrap();
        let res = &r.results[0];
        // Every pick is accounted for, by endpoint and by reason.
        assert_eq!(res.picks.iter().sum::<u64>(), 3000);
        assert_eq!(res.reasons.values().sum::<u64>(), 3000);
        assert!(res.reasons.contains_key("local"), "{res:?}");
        assert_eq!(res.picks[3], 0, "draining endpoint picked");
    }

    #[test]
    fn a_fixed_hash_key_always_lands_on_one_endpoint_and_results_repeat() {
        let mut c = config(vec![Policy::RingHash]);
        c.key = Some("user-42".into());
        let r = simulate("k", &set(), &c).unwrap();
        assert_eq!(r.results[0].picks.iter().filter(|&&p| p > 0).count(), 1);
        assert_eq!(r.results[0].reasons.get("hash"), Some(&3000));
        assert_eq!(simulate("k", &set(), &c).unwrap(), r, "deterministic");
    }

    #[test]
    fn no_endpoints_fail_every_pick_without_panicking() {
        let r = simulate("k", &EndpointSet::default(), &config(Policy::ALL.to_vec())).unwrap();
        for res in &r.results {
            assert_eq!(res.failed, 3000, "{}", res.policy);
            assert_eq!(res.tier, Tier::Empty);
        }
        assert!(simulate("k", &set(), &config(vec![])).is_err());
    }
}

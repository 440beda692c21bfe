//! The discrete-event engine: Poisson clients, FIFO backends, and lb-core's
//! own balancer picking every request.
//!
//! Time is simulated seconds in an `f64`; nothing here reads a clock. Events
//! (a client's next request, a response reaching its client) sit in one
//! binary heap ordered by time and then by insertion order, so a run is a
//! pure function of its configuration and seed.
//!
//! Every backend serves its queue in order, one request at a time, so a
//! request's completion time is known the moment it is picked:
//! `max(now, backend free) + service`. Completion events exist only so that
//! in-flight counts fall and peak-EWMA estimates learn at the right moment,
//! which is all a client-side balancer can observe.
//!
//! Random streams are split per client and per purpose (arrivals, costs,
//! picks, connect), so every policy faces exactly the same requests at the
//! same times with the same costs; only the picks differ.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime};

use crate::balancer::{Balancer, BalancerConfig, Policy};
use crate::endpoint::Endpoint;
use crate::load::{Load, PeakEwma};
use crate::pick::random;
use crate::rng::{Rng, SmallRng, mix64};
use crate::snapshot::EndpointSet;

use super::config::{CostModel, LoadView, SimConfig, SimError, SimPolicy, SlowWindow};
use super::report::{BackendInfo, Raw};

/// The backends as every client's balancer sees them.
#[derive(Debug)]
pub(crate) struct Fleet {
    set: EndpointSet,
    /// Zone index of each backend, in `set` order.
    zone: Vec<usize>,
    /// Service-time multiplier of each backend, in `set` order.
    slowness: Vec<f64>,
    zone_names: Vec<String>,
}

fn zone_name(z: usize) -> String {
    match u8::try_from(z) {
        Ok(z) if z < 26 => format!("zone-{}", char::from(b'a' + z)),
        _ => format!("zone-{z}"),
    }
}

/// Backend `i`'s address: 10.x.y.z from `i + 1`, so address order is index order.
fn address(i: usize) -> SocketAddr {
    let n = u32::try_from(i + 1).unwrap_or(u32::MAX) & 0x00ff_ffff;
    SocketAddr::from((Ipv4Addr::from(0x0a00_0000 | n), 8080))
}

fn index_of(address: SocketAddr) -> usize {
    match address.ip() {
        std::net::IpAddr::V4(ip) => (u32::from(ip) & 0x00ff_ffff) as usize - 1,
        std::net::IpAddr::V6(_) => 0,
    }
}

impl Fleet {
    pub(crate) fn new(config: &SimConfig) -> Self {
        let zone_names: Vec<String> = (0..config.zones).map(zone_name).collect();
        let set = EndpointSet::merge(
            (0..config.backends)
                .map(|i| Endpoint::new(address(i)).with_zone(zone_names[i % config.zones].clone()))
                .collect(),
        );
        // The set sorts by address; derive each backend's traits from its
        // address rather than trusting that the order is unchanged.
        let (zone, slowness) = set
            .endpoints()
            .iter()
            .map(|e| {
                let i = index_of(e.address);
                (i % config.zones, config.slowness(i))
            })
            .unzip();
        Self {
            set,
            zone,
            slowness,
            zone_names,
        }
    }

    pub(crate) fn describe(&self) -> Vec<BackendInfo> {
        self.set
            .endpoints()
            .iter()
            .zip(&self.slowness)
            .map(|(e, &slowness)| BackendInfo {
                address: e.address.to_string(),
                zone: e.zone_or_empty().to_owned(),
                slowness,
            })
            .collect()
    }
}

/// What a picker reads: in-flight counts (the client's own or global) and
/// the client's peak-EWMA estimates.
struct View<'a> {
    in_flight: &'a [u32],
    ewma: &'a [PeakEwma],
}

impl Load for View<'_> {
    #[inline]
    fn in_flight(&self, i: usize) -> u32 {
        self.in_flight[i]
    }

    #[inline]
    fn latency(&self, i: usize) -> Option<f64> {
        Some(self.ewma[i].get())
    }
}

struct Client {
    zone: usize,
    arrivals: SmallRng,
    costs: SmallRng,
    picks: SmallRng,
    /// `None` for per-connection balancing, which never asks a balancer.
    balancer: Option<Balancer>,
    /// The long-lived connection's backend, for per-connection balancing.
    connection: Option<u32>,
    in_flight: Vec<u32>,
    ewma: Vec<PeakEwma>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// The client sends its next request.
    Arrival { client: u32 },
    /// A response reaches its client; `sent` is the send time's bits.
    Done {
        client: u32,
        backend: u32,
        sent: u64,
    },
}

/// Event queue keyed by (time bits, sequence). Times are never negative, and
/// the bits of non-negative floats order like the floats.
#[derive(Default)]
struct Queue {
    heap: BinaryHeap<Reverse<(u64, u64, Event)>>,
    seq: u64,
}

impl Queue {
    fn push(&mut self, at: f64, event: Event) {
        self.seq += 1;
        // `+ 0.0` turns a -0.0 (from -ln(1)) into +0.0, whose bits sort first.
        self.heap
            .push(Reverse(((at + 0.0).to_bits(), self.seq, event)));
    }

    fn pop(&mut self) -> Option<(f64, Event)> {
        self.heap
            .pop()
            .map(|Reverse((t, _, e))| (f64::from_bits(t), e))
    }
}

/// Seed of one client's stream for one purpose; independent of the policy.
fn stream(seed: u64, client: usize, purpose: u64) -> SmallRng {
    SmallRng::seed_from_u64(mix64(seed ^ mix64((client as u64) << 3 | purpose)))
}

fn exponential<R: Rng>(rng: &mut R) -> f64 {
    // 1 - unit() is in (0, 1], so the log is finite.
    -(1.0 - rng.unit()).ln()
}

fn standard_normal<R: Rng>(rng: &mut R) -> f64 {
    // Box-Muller, one of the pair: simple, exact, and cheap enough here.
    let r = (-2.0 * (1.0 - rng.unit()).ln()).sqrt();
    r * (std::f64::consts::TAU * rng.unit()).cos()
}

/// One request's cost in seconds on a normal backend.
fn sample_cost<R: Rng>(model: CostModel, mean: f64, rng: &mut R) -> f64 {
    match model {
        CostModel::Constant => mean,
        CostModel::Exponential => mean * exponential(rng),
        // E[exp(sigma Z - sigma^2 / 2)] = 1, so the mean stays `mean`.
        CostModel::Lognormal { sigma } => {
            mean * (sigma * standard_normal(rng) - sigma * sigma / 2.0).exp()
        }
        CostModel::Mix {
            expensive_fraction,
            expensive_factor,
        } => {
            let cheap = mean / (1.0 - expensive_fraction + expensive_fraction * expensive_factor);
            if rng.unit() < expensive_fraction {
                cheap * expensive_factor
            } else {
                cheap
            }
        }
    }
}

fn duration(name: &'static str, secs: f64) -> Result<Duration, SimError> {
    Duration::try_from_secs_f64(secs).map_err(|_| SimError::OutOfRange {
        name,
        expected: "a number of seconds a Duration can hold",
        value: secs,
    })
}

fn balancer_config(
    policy: SimPolicy,
    zone: &str,
    callers: &BTreeMap<String, f64>,
) -> Option<BalancerConfig> {
    let policy = match policy {
        SimPolicy::PerConnection | SimPolicy::LeastLoaded => return None,
        SimPolicy::RoundRobin => Policy::RoundRobin,
        SimPolicy::Random => Policy::Random,
        SimPolicy::P2c => Policy::P2c,
        SimPolicy::PeakEwma => Policy::PeakEwma,
        SimPolicy::ZoneP2c => {
            return Some(BalancerConfig {
                policy: Policy::P2c,
                zone: Some(zone.to_owned()),
                // eds-server knows every client's zone and can send the real
                // caller spread; the simulator knows it too.
                caller_zones: Some(callers.clone()),
                ..BalancerConfig::default()
            });
        }
    };
    Some(BalancerConfig {
        policy,
        ..BalancerConfig::default()
    })
}

/// Runs one policy over the fleet and returns the raw tallies.
///
/// `window`, when given, limits the slow backends' slowness to that spell;
/// `total_rate` is the request rate over all clients.
pub(crate) fn run_policy(
    config: &SimConfig,
    fleet: &Fleet,
    policy: SimPolicy,
    window: Option<SlowWindow>,
    total_rate: f64,
) -> Result<Raw, SimError> {
    let n = fleet.set.len();
    let initial = duration("mean cost", config.mean_cost_secs)?;
    let decay = duration("peak-EWMA decay", config.ewma_decay_secs)?;
    let mut callers: BTreeMap<String, f64> = BTreeMap::new();
    for c in 0..config.clients {
        *callers
            .entry(fleet.zone_names[c % config.zones].clone())
            .or_default() += 1.0;
    }
    // One balancer per zone, cloned into each client: building it is the
    // allocation-heavy part, picking is not.
    let mut templates = Vec::with_capacity(config.zones);
    for name in &fleet.zone_names {
        let template = match balancer_config(policy, name, &callers) {
            Some(bc) => {
                let mut b = Balancer::new(bc)?;
                b.set_endpoints(&fleet.set, SystemTime::UNIX_EPOCH);
                Some(b)
            }
            None => None,
        };
        templates.push(template);
    }
    let all: Vec<u32> = (0..u32::try_from(n).unwrap_or(u32::MAX)).collect();
    let no_load = vec![0u32; n];
    let ewma0 = vec![PeakEwma::new(initial, decay); n];
    let mut clients = Vec::with_capacity(config.clients);
    for c in 0..config.clients {
        let zone = c % config.zones;
        let mut connect = stream(config.seed, c, 3);
        let mut balancer = templates[zone].clone();
        let connection = match policy {
            // kube-proxy: one uniformly random backend per connection, for good.
            SimPolicy::PerConnection => random(&all, &mut connect),
            _ => None,
        };
        if let (SimPolicy::RoundRobin, Some(b)) = (policy, balancer.as_mut()) {
            // Clients start their rotation at a random place, as pick.rs
            // advises; the balancer has no setter, so advance it.
            let skip = connect.below(u32::try_from(n).unwrap_or(u32::MAX));
            let view = View {
                in_flight: &no_load,
                ewma: &ewma0,
            };
            for _ in 0..skip {
                b.pick(&view, None, 0, &mut connect)?;
            }
        }
        clients.push(Client {
            zone,
            arrivals: stream(config.seed, c, 0),
            costs: stream(config.seed, c, 1),
            picks: stream(config.seed, c, 2),
            balancer,
            connection,
            in_flight: vec![0; n],
            ewma: ewma0.clone(),
        });
    }

    let rate = total_rate / config.clients as f64;
    let end = config.duration_secs;
    let warmup = config.warmup_secs;
    let mut raw = Raw::new(n, warmup, end);
    let mut free_at = vec![0.0f64; n];
    let mut in_flight = vec![0u32; n];
    let mut total_in_flight: u64 = 0;
    let mut queue = Queue::default();
    for (c, client) in clients.iter_mut().enumerate() {
        let client_id = u32::try_from(c).unwrap_or(u32::MAX);
        queue.push(
            exponential(&mut client.arrivals) / rate,
            Event::Arrival { client: client_id },
        );
    }

    while let Some((now, event)) = queue.pop() {
        if now >= end {
            break;
        }
        match event {
            Event::Arrival { client: id } => {
                let client = &mut clients[id as usize];
                let cost = sample_cost(config.cost, config.mean_cost_secs, &mut client.costs);
                let backend = match (&mut client.balancer, client.connection) {
                    (_, Some(b)) => b as usize,
                    (None, None) if policy == SimPolicy::LeastLoaded => {
                        let view = match config.view {
                            LoadView::PerClient => &client.in_flight,
                            LoadView::Global => &in_flight,
                        };
                        least_loaded(view, &mut client.picks)
                    }
                    (Some(balancer), None) => {
                        let view = View {
                            in_flight: match config.view {
                                LoadView::PerClient => &client.in_flight,
                                LoadView::Global => &in_flight,
                            },
                            ewma: &client.ewma,
                        };
                        balancer
                            .pick(&view, None, total_in_flight, &mut client.picks)?
                            .index
                    }
                    // Per-connection with no backend cannot happen (n >= 1).
                    (None, None) => return Err(crate::error::PickError::NoEndpoints.into()),
                };
                let start = free_at[backend].max(now);
                let slowness = match window {
                    Some(w) if !w.contains(start) => 1.0,
                    _ => fleet.slowness[backend],
                };
                let service = cost * slowness;
                let done = start + service;
                free_at[backend] = done;
                in_flight[backend] += 1;
                client.in_flight[backend] += 1;
                total_in_flight += 1;
                raw.record(
                    backend,
                    now,
                    start,
                    done,
                    service,
                    client.zone != fleet.zone[backend],
                );
                queue.push(
                    done,
                    Event::Done {
                        client: id,
                        backend: backend as u32,
                        sent: now.to_bits(),
                    },
                );
                let next = now + exponential(&mut client.arrivals) / rate;
                queue.push(next, Event::Arrival { client: id });
            }
            Event::Done {
                client: id,
                backend,
                sent,
            } => {
                let client = &mut clients[id as usize];
                let b = backend as usize;
                in_flight[b] -= 1;
                client.in_flight[b] -= 1;
                total_in_flight -= 1;
                client.ewma[b].observe(now - f64::from_bits(sent), now);
            }
        }
    }
    Ok(raw)
}

/// The backend with the fewest requests in flight in `view`; among equals,
/// one chosen uniformly at random (reservoir sampling over the ties), so
/// ties spread evenly.
fn least_loaded<R: Rng>(view: &[u32], rng: &mut R) -> usize {
    let mut best = 0;
    let mut best_load = u32::MAX;
    let mut ties = 0u32;
    for (i, &load) in view.iter().enumerate() {
        if load < best_load {
            (best, best_load, ties) = (i, load, 1);
        } else if load == best_load {
            ties += 1;
            if rng.below(ties) == 0 {
                best = i;
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_loaded_takes_the_minimum_and_spreads_ties() {
        let mut rng = SmallRng::seed_from_u64(3);
        assert_eq!(least_loaded(&[3, 1, 2], &mut rng), 1);
        let mut seen = [0u32; 3];
        for _ in 0..300 {
            seen[least_loaded(&[0, 0, 5], &mut rng)] += 1;
        }
        assert_eq!(seen[2], 0);
        assert!(seen[0] > 100 && seen[1] > 100, "{seen:?}");
    }

    #[test]
    fn costs_have_the_configured_mean() {
        let mut rng = SmallRng::seed_from_u64(5);
        for model in [
            CostModel::Constant,
            CostModel::Exponential,
            CostModel::Lognormal { sigma: 1.0 },
            CostModel::Mix {
                expensive_fraction: 0.1,
                expensive_factor: 20.0,
            },
        ] {
            let k = 400_000;
            let mean = (0..k)
                .map(|_| sample_cost(model, 0.01, &mut rng))
                .sum::<f64>()
                / f64::from(k);
            assert!((mean / 0.01 - 1.0).abs() < 0.02, "{model:?}: {mean}");
        }
    }

    #[test]
    fn addresses_sort_like_indices() {
        for i in [0, 1, 254, 255, 256, 65_535] {
            assert_eq!(index_of(address(i)), i);
            assert!(address(i) < address(i + 1));
        }
    }
}

//! When to turn the index into a published [`Topology`], and what to hold
//! back: a pure state machine driven by the caller's clock.
//!
//! ```text
//!  coalescing, leading and trailing edge (W = coalesce_window):
//!
//!   quiet > W        burst                                  quiet > W
//!  ------------|c1 c2  c3 ......... c4   c5 ..........|----------|c6
//!              |                   |                 |           |
//!              publish at c1       publish at c1+W   publish at  publish at c6
//!              (at once)           (c2..c4)          c1+2W (c5)  (at once)
//!
//!  mass-drop guard, per service key, against what was last published:
//!
//!   baseline (published)   candidate (index)      published
//!   10 healthy        -->  3 healthy         -->  3 + the 7 dropped, as they were
//!                          (held from t; warn, count)
//!                          ...later build, drop gone        --> candidate (recovered)
//!                          ...build at t + grace, drop stays --> candidate (persisted)
//! ```
//!
//! A change that arrives when nothing was published within the last window
//! is published at once: a lone readiness flip costs no waiting, which a
//! propagation budget of tens of milliseconds needs. Changes that arrive
//! within the window after a publish wait for the window's end and go out
//! together, and later ones do not extend the wait. So pushes are at least
//! one window apart: a rollout's burst becomes one push at its start plus
//! one per window while it lasts, and a steady trickle still publishes once
//! per window.
//!
//! The window runs from the last *publish*, not the last build: a build that
//! found nothing new sent nothing, and letting it delay the next change
//! would cost exactly the case this is for (a Pod event that changes nothing
//! visible, then its EndpointSlice change a few milliseconds later). Builds
//! stay bounded by the index's changes, which only count when what the
//! index keeps changed.
//!
//! The guard only delays *removals*: a held key publishes the candidate plus
//! the healthy endpoints that vanished from it (or turned unhealthy), so
//! replacement pods that appear during the grace period are sent at once.
//! Draining endpoints leaving are planned and never count as a drop, and a
//! key that disappears (Service deleted, port removed) is simply gone.
//!
//! What it is not: no tokio, no timers, no clock. The async driver calls
//! [`Publisher::on_change`] when the index changed, sleeps until
//! [`Publisher::next_deadline`], and sends whatever [`Publisher::poll`]
//! returns.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lb_core::{Endpoint, EndpointSet, Health, ServiceKey, Snapshot};
use tracing::{info, warn};

use super::index::Index;
use crate::topology::Topology;

/// Publishing settings.
#[derive(Debug, Clone, PartialEq)]
pub struct PublisherConfig {
    /// The least time between two publishes: a change after a quiet window
    /// is published at once, and changes within the window after a publish
    /// are gathered into one push at the window's end.
    pub coalesce_window: Duration,
    /// A single update removing more than this share of a key's healthy
    /// endpoints is held back. 1.0 disables the guard.
    pub mass_drop_fraction: f64,
    /// Keys with fewer healthy endpoints than this are never guarded: for
    /// small services one pod is already a large share.
    pub mass_drop_min_endpoints: usize,
    /// How long a drop is held back before it is believed.
    pub mass_drop_grace: Duration,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        Self {
            coalesce_window: Duration::from_millis(100),
            mass_drop_fraction: 0.5,
            mass_drop_min_endpoints: 4,
            mass_drop_grace: Duration::from_secs(30),
        }
    }
}

/// A publisher setting out of range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PublishConfigError {
    /// The fraction is not in 0.0..=1.0 (or is NaN).
    #[error("mass-drop fraction must be between 0.0 and 1.0 (1.0 disables the guard), got {0}")]
    MassDropFraction(f64),
}

impl PublisherConfig {
    /// Checks every value is in range.
    pub fn validate(&self) -> Result<(), PublishConfigError> {
        if (0.0..=1.0).contains(&self.mass_drop_fraction) {
            Ok(())
        } else {
            Err(PublishConfigError::MassDropFraction(
                self.mass_drop_fraction,
            ))
        }
    }
}

/// Counters, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PublishStats {
    /// Topologies published.
    pub published: u64,
    /// Builds that produced what was already published, so nothing was sent.
    pub unchanged: u64,
    /// Mass drops held back (one per key and hold).
    pub held_back: u64,
    /// Holds released because the endpoints came back.
    pub recovered: u64,
    /// Holds released because the drop outlasted the grace period.
    pub persisted: u64,
}

/// One key whose drop is being held back.
#[derive(Debug, Clone)]
struct Hold {
    since: Instant,
    /// What was published before the drop; later builds are compared with it.
    baseline: EndpointSet,
}

/// Coalesces index changes and guards against mass drops. See the module
/// documentation.
#[derive(Debug)]
pub struct Publisher {
    config: PublisherConfig,
    /// When the first change not yet published arrived.
    pending: Option<Instant>,
    /// When the last topology was published: the window runs from here.
    last_publish: Option<Instant>,
    published: Option<Arc<Topology>>,
    holds: BTreeMap<ServiceKey, Hold>,
    stats: PublishStats,
}

impl Publisher {
    /// A publisher that has published nothing yet.
    pub fn new(config: PublisherConfig) -> Result<Self, PublishConfigError> {
        config.validate()?;
        Ok(Self {
            config,
            pending: None,
            last_publish: None,
            published: None,
            holds: BTreeMap::new(),
            stats: PublishStats::default(),
        })
    }

    /// The index changed at `now`. Call it after the initial lists too: the
    /// first topology is published at once.
    pub fn on_change(&mut self, now: Instant) {
        self.pending.get_or_insert(now);
    }

    /// When [`Publisher::poll`] next has something to do: a pending change
    /// (at once after a quiet window, else the window's end) or the end of a
    /// hold. `None`: nothing until the next change.
    pub fn next_deadline(&self) -> Option<Instant> {
        let window = self.window_end();
        let holds = self.holds.values().filter_map(|h| self.hold_end(h));
        window.into_iter().chain(holds).min()
    }

    /// Publishes from `index` if a deadline has passed and the result differs
    /// from what was last published.
    pub fn poll(&mut self, now: Instant, index: &Index) -> Option<Arc<Topology>> {
        self.poll_with(now, || index.topology())
    }

    /// [`Publisher::poll`] with any source of topologies.
    pub fn poll_with(
        &mut self,
        now: Instant,
        build: impl FnOnce() -> Topology,
    ) -> Option<Arc<Topology>> {
        let window_due = self.window_end().is_some_and(|end| now >= end);
        let hold_due = self
            .holds
            .values()
            .any(|h| self.hold_end(h).is_some_and(|end| now >= end));
        if !window_due && !hold_due {
            return None;
        }
        // The build sees every change so far, so nothing stays pending.
        self.pending = None;
        let topology = self.guard(now, build());
        if self.published.as_deref() == Some(&topology) {
            self.stats.unchanged += 1;
            return None;
        }
        let topology = Arc::new(topology);
        self.last_publish = Some(now);
        self.published = Some(Arc::clone(&topology));
        self.stats.published += 1;
        Some(topology)
    }

    /// What was last published.
    pub fn published(&self) -> Option<&Arc<Topology>> {
        self.published.as_ref()
    }

    /// Keys whose drop is held back, with the hold's start.
    pub fn held(&self) -> impl Iterator<Item = (&ServiceKey, Instant)> {
        self.holds.iter().map(|(k, h)| (k, h.since))
    }

    /// Counters so far.
    pub fn stats(&self) -> PublishStats {
        self.stats
    }

    /// When the pending change may be built: at once, unless the last
    /// publish is less than a window ago, then when that window ends.
    fn window_end(&self) -> Option<Instant> {
        let pending = self.pending?;
        let reopens = self
            .last_publish
            .and_then(|b| b.checked_add(self.config.coalesce_window));
        Some(reopens.map_or(pending, |r| r.max(pending)))
    }

    fn hold_end(&self, hold: &Hold) -> Option<Instant> {
        hold.since.checked_add(self.config.mass_drop_grace)
    }

    /// The candidate with held-back endpoints put back where a drop is too
    /// large; updates the holds.
    fn guard(&mut self, now: Instant, candidate: Topology) -> Topology {
        let Some(previous) = self.published.clone() else {
            // Nothing was published, so nothing can be dropped.
            return candidate;
        };
        let mut holds = std::mem::take(&mut self.holds);
        let mut restored: BTreeMap<ServiceKey, EndpointSet> = BTreeMap::new();
        for (key, new) in candidate.snapshot.services() {
            let hold = holds.remove(key);
            let baseline = match (&hold, previous.snapshot.get(key)) {
                (Some(h), _) => &h.baseline,
                (None, Some(published)) => published,
                (None, None) => continue,
            };
            let dropped = self.mass_drop(baseline, new);
            let before = baseline.health_counts().0;
            match (dropped, hold) {
                (None, None) => {}
                (None, Some(_)) => {
                    self.stats.recovered += 1;
                    info!(%key, "endpoints are back; mass-drop hold released");
                }
                (Some(_), Some(h)) if self.hold_end(&h).is_none_or(|end| now >= end) => {
                    self.stats.persisted += 1;
                    warn!(%key, healthy = new.health_counts().0, "mass drop persisted past the grace period; publishing it");
                }
                (Some(dropped), Some(h)) => {
                    restored.insert(key.clone(), with_restored(new, dropped));
                    self.holds.insert(key.clone(), h);
                }
                (Some(dropped), None) => {
                    self.stats.held_back += 1;
                    warn!(
                        %key,
                        before,
                        after = new.health_counts().0,
                        grace = ?self.config.mass_drop_grace,
                        "mass drop of endpoints; holding the previous ones back"
                    );
                    restored.insert(key.clone(), with_restored(new, dropped));
                    // No hold: the baseline was the published set.
                    let baseline = previous.snapshot.get(key).cloned().unwrap_or_default();
                    self.holds.insert(
                        key.clone(),
                        Hold {
                            since: now,
                            baseline,
                        },
                    );
                }
            }
        }
        // Holds left over belong to keys that are gone: nothing to guard.
        if restored.is_empty() {
            return candidate;
        }
        let Topology { snapshot, services } = candidate;
        let snapshot = Snapshot::new(snapshot.services().map(|(key, set)| {
            let set = restored.remove(key).unwrap_or_else(|| set.clone());
            (key.clone(), set)
        }));
        Topology { snapshot, services }
    }

    /// The baseline's healthy endpoints missing (or unhealthy) in `new`, if
    /// there are more than the configured share of them.
    fn mass_drop(&self, baseline: &EndpointSet, new: &EndpointSet) -> Option<Vec<Endpoint>> {
        let healthy: Vec<&Endpoint> = baseline
            .endpoints()
            .iter()
            .filter(|e| e.health == Health::Healthy)
            .collect();
        if healthy.len() < self.config.mass_drop_min_endpoints.max(1) {
            return None;
        }
        let dropped: Vec<Endpoint> = healthy
            .into_iter()
            .filter(|e| {
                new.get(&e.address)
                    .is_none_or(|now| now.health == Health::Unhealthy)
            })
            .cloned()
            .collect();
        // Counts are far below 2^52, so the conversions are exact.
        let (dropped_n, healthy_n) = (dropped.len() as f64, baseline.health_counts().0 as f64);
        (dropped_n > self.config.mass_drop_fraction * healthy_n).then_some(dropped)
    }
}

/// `new` with the dropped endpoints added back in their previous state; an
/// address that is present but unhealthy in `new` takes the healthy copy,
/// because merging keeps the best state.
fn with_restored(new: &EndpointSet, dropped: Vec<Endpoint>) -> EndpointSet {
    let mut all = new.endpoints().to_vec();
    all.extend(dropped);
    EndpointSet::merge(all)
}

#[cfg(test)]
mod tests;

//! The readiness gate: when the watches have seen enough of the cluster for
//! eds-server to publish, and so to serve.
//!
//! ```text
//!  every Service watch listed ──┐
//!  every EndpointSlice watch listed ──┼──> may publish (and /readyz says ready)
//!  first publish only: every running Pod watch listed ──┘
//! ```
//!
//! Serving before every watch has listed would hand clients a partial
//! cluster (a namespace's Services missing, or Services without their
//! slices), which they would take as endpoints gone. Pods are waited for
//! only before the first publish, and only when they are watched: published
//! earlier, the topology would carry first-seen `ready_since` times that
//! differ between replicas and then change once the Pods arrive. A Pod watch
//! started again later (Services want new labels) holds nothing back.
//!
//! What this is not: the watches themselves, or the publisher's coalescing
//! and mass-drop guard ([`crate::k8s::publish`]). It keeps no time: it is
//! told which watch finished a list, and answers.

use std::collections::BTreeSet;

/// One watch: its kind and its index among the watches of that kind (one
/// per namespace when eds-server is scoped to namespaces).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Watch {
    /// A Service watch.
    Services(usize),
    /// An EndpointSlice watch.
    Slices(usize),
    /// A Pod watch.
    Pods(usize),
}

/// Which watches have listed; see the module docs.
#[derive(Debug, Clone)]
pub struct Gate {
    service_watches: usize,
    slice_watches: usize,
    /// Pod watches running now; `None` before they start.
    pod_watches: Option<usize>,
    listed: BTreeSet<Watch>,
}

impl Gate {
    /// A gate for this many Service and EndpointSlice watches.
    pub fn new(service_watches: usize, slice_watches: usize) -> Self {
        Gate {
            service_watches,
            slice_watches,
            pod_watches: None,
            listed: BTreeSet::new(),
        }
    }

    /// `watch` delivered a complete list (its first, or a re-list).
    pub fn listed(&mut self, watch: Watch) {
        self.listed.insert(watch);
    }

    /// `count` Pod watches were (re)started: until each lists, the first
    /// publish waits for them. Lists of the Pod watches they replace count
    /// for nothing.
    pub fn pods_started(&mut self, count: usize) {
        self.listed.retain(|w| !matches!(w, Watch::Pods(_)));
        self.pod_watches = Some(count);
    }

    /// Whether Pod watches are running.
    pub fn pods_running(&self) -> bool {
        self.pod_watches.is_some()
    }

    /// Every Service watch has listed: the Services' wanted pod labels are
    /// known, so a Pod watch may start.
    pub fn services_listed(&self) -> bool {
        self.count(|w| matches!(w, Watch::Services(_))) >= self.service_watches
    }

    /// Whether a topology may be published now. `first` says whether none
    /// has been yet.
    pub fn may_publish(&self, first: bool) -> bool {
        let required = self.count(|w| matches!(w, Watch::Services(_) | Watch::Slices(_)));
        if required < self.service_watches + self.slice_watches {
            return false;
        }
        match self.pod_watches {
            Some(pods) if first => self.count(|w| matches!(w, Watch::Pods(_))) >= pods,
            _ => true,
        }
    }

    fn count(&self, kind: impl Fn(&Watch) -> bool) -> usize {
        self.listed.iter().filter(|w| kind(w)).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_publishes_until_every_service_and_slice_watch_has_listed() {
        // Two namespaces: a Service and a slice watch in each.
        let mut gate = Gate::new(2, 2);
        assert!(!gate.may_publish(true));
        gate.listed(Watch::Services(0));
        gate.listed(Watch::Slices(0));
        gate.listed(Watch::Slices(1));
        assert!(!gate.services_listed());
        assert!(
            !gate.may_publish(true),
            "one namespace's Services are missing"
        );
        gate.listed(Watch::Services(1));
        assert!(gate.services_listed());
        assert!(gate.may_publish(true));
    }

    #[test]
    fn a_watch_listing_again_keeps_the_gate_open() {
        let mut gate = Gate::new(1, 1);
        gate.listed(Watch::Services(0));
        gate.listed(Watch::Slices(0));
        assert!(gate.may_publish(true));
        // A watch error then a re-list: served state stays served.
        gate.listed(Watch::Slices(0));
        assert!(gate.may_publish(false));
    }

    #[test]
    fn the_first_publish_waits_for_running_pod_watches_later_ones_do_not() {
        let mut gate = Gate::new(1, 1);
        gate.listed(Watch::Services(0));
        gate.listed(Watch::Slices(0));
        assert!(!gate.pods_running());
        gate.pods_started(1);
        assert!(gate.pods_running());
        assert!(
            !gate.may_publish(true),
            "ready_since would change once Pods arrive"
        );
        assert!(
            gate.may_publish(false),
            "after the first publish Pods hold nothing"
        );
        gate.listed(Watch::Pods(0));
        assert!(gate.may_publish(true));
    }

    #[test]
    fn a_pod_watch_restarted_before_the_first_publish_must_list_again() {
        let mut gate = Gate::new(1, 1);
        gate.listed(Watch::Services(0));
        gate.listed(Watch::Slices(0));
        gate.pods_started(1);
        gate.listed(Watch::Pods(0));
        assert!(gate.may_publish(true));
        // New labels wanted: the Pod watch starts over, and its earlier list
        // was parsed without them.
        gate.pods_started(1);
        assert!(!gate.may_publish(true));
        gate.listed(Watch::Pods(0));
        assert!(gate.may_publish(true));
    }

    #[test]
    fn with_no_watches_at_all_the_gate_is_open() {
        // An empty namespace list cannot happen from flags, but the gate
        // must not wait for lists that will never come.
        assert!(Gate::new(0, 0).may_publish(true));
    }
}

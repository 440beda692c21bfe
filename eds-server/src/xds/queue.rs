//! A bounded per-subscriber outbox that keeps only the latest value per key,
//! so a slow subscriber costs bounded memory and never delays the others.
//!
//! ```text
//!   push(k, v) ──> k queued?  ── yes ──> replace (or merge) its value in place:
//!                    │                    position kept, so no key starves,
//!                    │                    nothing grows
//!                    no
//!                    │
//!                    ├── room ──> append k at the back
//!                    └── full ──> Err(QueueFull): the caller ends the stream;
//!                                 the client reconnects and resyncs (SotW: the
//!                                 full state; delta: initial_resource_versions)
//!   pop() ──> the oldest key with its latest value
//! ```
//!
//! Keys are whatever the glue chooses. For state of the world, one key per
//! type URL and the whole `DiscoveryResponse` as the value: a newer response
//! of a type carries the whole subscribed state and supersedes an unsent
//! older one (only the latest nonce matters to the SotW state machine). For
//! delta, one key per type URL with [`LatestQueue::push_with`] and
//! [`super::DeltaStream::coalesce`] as the merge, which keeps the latest
//! state per (type, resource) inside the pending response; or one key per
//! (type, resource name) for a glue that assembles responses when the stream
//! has room. Either way memory is bounded by the number of keys, not by how
//! far behind the subscriber is.
//!
//! What this module is not: it does no IO, no waiting and no waking; the
//! async glue pairs it with a `Notify` or a channel of capacity one.

use std::collections::{BTreeMap, VecDeque};
use std::num::NonZeroUsize;

/// What [`LatestQueue::push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// The key was not queued; it now waits at the back.
    Queued,
    /// The key was queued; its value was replaced (or merged) in place.
    Replaced,
}

/// The queue already holds its capacity of distinct keys. The rejected key
/// and value are handed back so nothing is silently lost.
#[derive(Debug, thiserror::Error)]
#[error("outbox full: {capacity} distinct keys are already waiting")]
pub struct QueueFull<K, V> {
    /// The queue's capacity in distinct keys.
    pub capacity: usize,
    /// The key that did not fit.
    pub key: K,
    /// Its value.
    pub value: V,
}

/// A FIFO of distinct keys, each with only its latest value.
#[derive(Debug, Clone)]
pub struct LatestQueue<K, V> {
    order: VecDeque<K>,
    values: BTreeMap<K, V>,
    capacity: NonZeroUsize,
    replaced: u64,
    high_water: usize,
}

impl<K: Ord + Clone, V> LatestQueue<K, V> {
    /// An empty queue holding at most `capacity` distinct keys.
    pub fn new(capacity: NonZeroUsize) -> Self {
        LatestQueue {
            order: VecDeque::new(),
            values: BTreeMap::new(),
            capacity,
            replaced: 0,
            high_water: 0,
        }
    }

    /// Queues `value` under `key`, replacing a value already waiting there.
    pub fn push(&mut self, key: K, value: V) -> Result<Pushed, QueueFull<K, V>> {
        self.push_with(key, value, |_older, newer| newer)
    }

    /// Queues `value` under `key`; if a value is already waiting there, it
    /// becomes `merge(older, value)`.
    pub fn push_with(
        &mut self,
        key: K,
        value: V,
        merge: impl FnOnce(V, V) -> V,
    ) -> Result<Pushed, QueueFull<K, V>> {
        if let Some(older) = self.values.remove(&key) {
            self.values.insert(key, merge(older, value));
            self.replaced += 1;
            return Ok(Pushed::Replaced);
        }
        if self.order.len() >= self.capacity.get() {
            return Err(QueueFull {
                capacity: self.capacity.get(),
                key,
                value,
            });
        }
        self.order.push_back(key.clone());
        self.values.insert(key, value);
        self.high_water = self.high_water.max(self.order.len());
        Ok(Pushed::Queued)
    }

    /// The oldest waiting key with its latest value.
    pub fn pop(&mut self) -> Option<(K, V)> {
        let key = self.order.pop_front()?;
        let value = self.values.remove(&key)?;
        Some((key, value))
    }

    /// Drops what waits under `key` (for example a type the client
    /// unsubscribed from entirely).
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let value = self.values.remove(key)?;
        self.order.retain(|k| k != key);
        Some(value)
    }

    /// The value waiting under `key`.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.values.get(key)
    }

    /// How many keys are waiting.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The most distinct keys the queue holds.
    pub fn capacity(&self) -> usize {
        self.capacity.get()
    }

    /// How many pushes replaced a waiting value (updates the subscriber
    /// never had to see), for metrics.
    pub fn replaced(&self) -> u64 {
        self.replaced
    }

    /// The most keys that were ever waiting at once, for metrics.
    pub fn high_water(&self) -> usize {
        self.high_water
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::fixtures::*;
    use crate::xds::{DeltaStream, ResourceType, StreamKind};
    use proto::xds::pb::envoy::service::discovery::v3::{
        DeltaDiscoveryResponse, DiscoveryResponse,
    };

    fn cap(n: usize) -> NonZeroUsize {
        NonZeroUsize::new(n).unwrap()
    }

    #[test]
    fn keeps_only_the_latest_value_per_key_in_first_queued_order() {
        let mut q = LatestQueue::new(cap(4));
        assert_eq!(q.push("eds/a", 1).unwrap(), Pushed::Queued);
        assert_eq!(q.push("eds/b", 1).unwrap(), Pushed::Queued);
        assert_eq!(q.push("eds/a", 2).unwrap(), Pushed::Replaced);
        assert_eq!(q.push("eds/a", 3).unwrap(), Pushed::Replaced);
        assert_eq!(q.len(), 2);
        assert_eq!(q.get(&"eds/a"), Some(&3));
        assert_eq!(q.pop(), Some(("eds/a", 3)), "a keeps its place");
        assert_eq!(q.pop(), Some(("eds/b", 1)));
        assert_eq!(q.pop(), None);
        assert_eq!(q.replaced(), 2);
        assert_eq!(q.high_water(), 2);
    }

    #[test]
    fn stays_bounded_however_far_behind_the_subscriber_is() {
        let mut q = LatestQueue::new(cap(3));
        for version in 0..10_000 {
            for key in ["cds", "eds", "lds"] {
                q.push(key, version).unwrap();
            }
        }
        assert_eq!(q.len(), 3);
        assert_eq!(q.high_water(), 3);
        let err = q.push("rds", 1).unwrap_err();
        assert_eq!((err.capacity, err.key, err.value), (3, "rds", 1));
        assert_eq!(
            err.to_string(),
            "outbox full: 3 distinct keys are already waiting"
        );
        assert_eq!(q.len(), 3, "a rejected push changes nothing");
        let drained: Vec<_> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(drained, [("cds", 9_999), ("eds", 9_999), ("lds", 9_999)]);
    }

    #[test]
    fn remove_drops_a_key_and_frees_its_place() {
        let mut q = LatestQueue::new(cap(2));
        q.push(1, "a").unwrap();
        q.push(2, "b").unwrap();
        assert_eq!(q.remove(&1), Some("a"));
        assert_eq!(q.remove(&1), None);
        q.push(3, "c").unwrap();
        assert_eq!(q.pop(), Some((2, "b")));
        assert_eq!(q.pop(), Some((3, "c")));
        assert!(q.is_empty());
    }

    #[test]
    fn sotw_outbox_sends_only_the_newest_response_per_type() {
        let mut q: LatestQueue<&str, DiscoveryResponse> = LatestQueue::new(cap(4));
        for nonce in ["1", "2", "3"] {
            let r = DiscoveryResponse {
                type_url: EDS.type_url().into(),
                nonce: nonce.into(),
                ..Default::default()
            };
            q.push(EDS.type_url(), r).unwrap();
        }
        let (_, r) = q.pop().unwrap();
        assert_eq!(r.nonce, "3");
        assert!(q.is_empty());
    }

    #[test]
    fn delta_outbox_merges_per_resource_through_the_stream() {
        let mut src = source(&[(EDS, "a.demo:80", "1"), (EDS, "b.demo:80", "1")]);
        let mut s = DeltaStream::new(StreamKind::Aggregated);
        let mut q: LatestQueue<ResourceType, DeltaDiscoveryResponse> = LatestQueue::new(cap(4));

        let r1 = s
            .handle_request(dreq(EDS).subscribe(["a.demo:80"]).into(), &src, t(0))
            .unwrap();
        for r in r1 {
            q.push_with(EDS, r, |o, n| s.coalesce(o, n)).unwrap();
        }
        src.insert(EDS, "a.demo:80", "2", b"");
        let r2 = s
            .handle_request(dreq(EDS).subscribe(["b.demo:80"]).into(), &src, t(0))
            .unwrap();
        for r in r2 {
            assert_eq!(
                q.push_with(EDS, r, |o, n| s.coalesce(o, n)).unwrap(),
                Pushed::Replaced
            );
        }
        let (_, merged) = q.pop().unwrap();
        assert_eq!(sent(&merged), ["a.demo:80@2", "b.demo:80@1"]);
    }
}

//! What each watch has listed, as keys: the bookkeeping that lets a
//! re-list delete what vanished while the watch was down, without holding
//! the objects.
//!
//! ```text
//!  watch i:  Init ── InitApply(obj)* ── InitDone        Apply(obj) / Delete(obj)
//!              │        │ apply at once   │                  │
//!              │        │ key -> listing  │ current \ listing: deleted by key
//!              └ listing = {}             └ current = listing
//! ```
//!
//! Why keys only: kube-runtime's watcher hands each object over once, and
//! the index keeps what it reads of it. Holding the objects as well (as a
//! reflector store does) cost the raw EndpointSlices and Pods again, twice
//! during a re-list, which buffered a second full list until `InitDone`.
//! Applying each listed object at once is safe because nothing is deleted
//! before `InitDone`: in between, the index holds the union of the old and
//! the new list, each object at its newest state, and the publisher only
//! ever sees states that lose nothing. An object that did not change
//! changes nothing, so an idle re-list publishes nothing.
//!
//! What this is not: it does not decode, filter or apply objects (the
//! caller's `apply` and `delete` do, against [`crate::k8s::Index`]), and it
//! does no IO.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use kube::runtime::watcher::Event;

use super::index::{ObjKey, PodFacts};

/// What identifies a watched object within its watch.
pub trait Keyed {
    /// `(namespace, name)`; empty strings for an object without them (the
    /// index ignores and counts such objects).
    fn key(&self) -> ObjKey;
}

impl Keyed for Service {
    fn key(&self) -> ObjKey {
        (self.namespace().unwrap_or_default(), self.name_any())
    }
}

impl Keyed for EndpointSlice {
    fn key(&self) -> ObjKey {
        (self.namespace().unwrap_or_default(), self.name_any())
    }
}

impl Keyed for PodFacts {
    fn key(&self) -> ObjKey {
        (self.namespace.clone(), self.name.clone())
    }
}

/// The keys each watch of one kind (one per namespace, or one for all)
/// holds now, and those of a list in progress.
#[derive(Debug, Default)]
pub struct Listing {
    listing: BTreeMap<usize, BTreeSet<ObjKey>>,
    current: BTreeMap<usize, BTreeSet<ObjKey>>,
}

/// What one event did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The index changed.
    pub changed: bool,
    /// The event ended a list (`InitDone`): the watch is synced.
    pub listed: bool,
}

impl Listing {
    /// Applies watch `watch`'s event through `apply` and `delete` (each
    /// returning whether the index changed).
    pub fn event<K: Keyed>(
        &mut self,
        watch: usize,
        ev: Event<K>,
        mut apply: impl FnMut(&K) -> bool,
        mut delete: impl FnMut(&ObjKey) -> bool,
    ) -> Outcome {
        let changed = |changed| Outcome {
            changed,
            listed: false,
        };
        match ev {
            Event::Init => {
                self.listing.insert(watch, BTreeSet::new());
                Outcome::default()
            }
            Event::InitApply(obj) => {
                let applied = apply(&obj);
                self.listing.entry(watch).or_default().insert(obj.key());
                changed(applied)
            }
            Event::InitDone => {
                let fresh = self.listing.remove(&watch).unwrap_or_default();
                let old = self.current.remove(&watch).unwrap_or_default();
                let mut deleted = false;
                for key in old.difference(&fresh) {
                    deleted |= delete(key);
                }
                self.current.insert(watch, fresh);
                Outcome {
                    changed: deleted,
                    listed: true,
                }
            }
            Event::Apply(obj) => {
                let applied = apply(&obj);
                self.current.entry(watch).or_default().insert(obj.key());
                changed(applied)
            }
            Event::Delete(obj) => {
                let key = obj.key();
                let deleted = delete(&key);
                self.current.entry(watch).or_default().remove(&key);
                changed(deleted)
            }
        }
    }

    /// How many objects watch `watch` holds now.
    pub fn len(&self, watch: usize) -> usize {
        self.current.get(&watch).map_or(0, BTreeSet::len)
    }

    /// Whether no watch holds anything.
    pub fn is_empty(&self) -> bool {
        self.current.values().all(BTreeSet::is_empty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::fixtures::svc;
    use crate::k8s::{Index, IndexConfig};

    fn service(name: &str, ns: &str) -> Service {
        svc(name, ns).port("grpc", 8080, None).build()
    }

    /// Feeds `events` of watch 0 to `index`; returns each outcome.
    fn feed(listing: &mut Listing, index: &mut Index, events: Vec<Event<Service>>) -> Vec<Outcome> {
        events
            .into_iter()
            .map(|ev| {
                let index = std::cell::RefCell::new(&mut *index);
                listing.event(
                    0,
                    ev,
                    |s| index.borrow_mut().apply_service(s),
                    |k| index.borrow_mut().delete_service_key(k),
                )
            })
            .collect()
    }

    #[test]
    fn a_relist_deletes_what_vanished_and_keeps_the_rest() {
        let mut index = Index::new(IndexConfig::default());
        let mut listing = Listing::default();
        let (a, b, c) = (service("a", "x"), service("b", "x"), service("c", "x"));
        let first = feed(
            &mut listing,
            &mut index,
            vec![
                Event::Init,
                Event::InitApply(a.clone()),
                Event::InitApply(b.clone()),
                Event::InitDone,
            ],
        );
        assert!(first[1].changed && first[3].listed);
        assert_eq!(listing.len(0), 2);

        // b vanished and c appeared while the watch was down; a is unchanged.
        let relist = feed(
            &mut listing,
            &mut index,
            vec![
                Event::Init,
                Event::InitApply(a),
                Event::InitApply(c),
                Event::InitDone,
            ],
        );
        assert!(!relist[1].changed, "an unchanged object changes nothing");
        assert!(relist[2].changed, "c is applied as it arrives");
        assert!(
            relist[3].changed && relist[3].listed,
            "b is deleted at the end"
        );
        assert_eq!(listing.len(0), 2);
        assert!(!index.delete_service(&b), "b is gone already");

        // Before InitDone nothing is deleted: the index holds the union.
        let mut held = Listing::default();
        let mut index = Index::new(IndexConfig::default());
        feed(
            &mut held,
            &mut index,
            vec![
                Event::Init,
                Event::InitApply(service("a", "x")),
                Event::InitDone,
            ],
        );
        feed(
            &mut held,
            &mut index,
            vec![Event::Init, Event::InitApply(service("d", "x"))],
        );
        assert!(
            index.delete_service(&service("a", "x")),
            "a is still served mid-list"
        );
    }

    #[test]
    fn watches_of_other_namespaces_are_left_alone() {
        let mut index = Index::new(IndexConfig::default());
        let mut listing = Listing::default();
        let mut event = |watch, ev| {
            let index = std::cell::RefCell::new(&mut index);
            listing.event(
                watch,
                ev,
                |s: &Service| index.borrow_mut().apply_service(s),
                |k| index.borrow_mut().delete_service_key(k),
            )
        };
        event(0, Event::Apply(service("a", "x")));
        event(1, Event::Apply(service("b", "y")));
        // Watch 1 re-lists empty: only its own object goes.
        event(1, Event::Init);
        assert!(event(1, Event::InitDone).changed);
        assert_eq!((listing.len(0), listing.len(1)), (1, 0));
        assert!(index.delete_service(&service("a", "x")));
    }
}

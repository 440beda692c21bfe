//! The async driver around the pure index and publisher: kube-runtime
//! watchers in, published topologies out.
//!
//! ```text
//!  watcher(Service)        ─┐  Init / InitApply* / InitDone -> reset_*
//!  watcher(EndpointSlice)  ─┼─> Index ──on_change──> Publisher ──poll at deadline──> TopologySender
//!  watcher(Pod, optional)  ─┘  Apply / Delete           (coalesce, mass-drop guard)
//! ```
//!
//! Nothing is published until every required watch (Services and
//! EndpointSlices in every watched namespace) has finished its first list:
//! an empty snapshot served at start-up would black-hole every client.
//! Watch errors (RBAC refusals, a restarting API server) are logged and
//! retried with kube-runtime's backoff; the last published topology stays
//! served meanwhile. This module has no rules of its own: they live in
//! [`crate::k8s`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use futures::StreamExt;
use futures::stream::{BoxStream, SelectAll};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::k8s::{Index, IndexConfig, IndexStats, PublishStats, Publisher, PublisherConfig};
use crate::topology::TopologySender;

/// What the watchers have done so far, for readiness and metrics.
#[derive(Debug, Clone, Default)]
pub struct WatchStatus {
    /// Every required watch has finished its first list and a topology was published.
    pub synced: bool,
    /// Watch errors so far (each is retried).
    pub errors: u64,
    /// The last watch error, for `/readyz` and logs.
    pub last_error: Option<String>,
    /// Events applied, by kind.
    pub events: u64,
    /// What the index skipped.
    pub index: IndexStats,
    /// What the publisher did.
    pub publish: PublishStats,
}

/// Which watch an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Source {
    Services(usize),
    Slices(usize),
    Pods(usize),
}

// Boxed: a Pod event is large and the stream holds one per watch.
enum Update {
    Service(Box<Event<Service>>),
    Slice(Box<Event<EndpointSlice>>),
    Pod(Box<Event<Pod>>),
}

type Tagged = (Source, Result<Update, watcher::Error>);

/// Watch scope: which namespaces and which Services.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// Namespaces to watch; all when empty.
    pub namespaces: Vec<String>,
    /// Label selector for Services.
    pub service_selector: Option<String>,
}

fn apis<K>(client: &Client, scope: &Scope) -> Vec<Api<K>>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    if scope.namespaces.is_empty() {
        vec![Api::all(client.clone())]
    } else {
        scope
            .namespaces
            .iter()
            .map(|ns| Api::namespaced(client.clone(), ns))
            .collect()
    }
}

fn tagged<K>(
    api: Api<K>,
    config: watcher::Config,
    source: Source,
    wrap: fn(Event<K>) -> Update,
) -> BoxStream<'static, Tagged>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
{
    watcher::watcher(api, config)
        .default_backoff()
        // Managed fields are large and never read; drop them before they are held anywhere.
        .modify(|obj: &mut K| obj.meta_mut().managed_fields = None)
        .map(move |r| (source, r.map(wrap)))
        .boxed()
}

/// Runs the watchers until `shutdown` fires, publishing topologies to
/// `sender` and progress to `status`.
pub async fn run(
    client: Client,
    scope: Scope,
    index_config: IndexConfig,
    publisher_config: PublisherConfig,
    sender: TopologySender,
    status: watch::Sender<WatchStatus>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut index = Index::new(index_config);
    let mut publisher = Publisher::new(publisher_config)?;
    let mut streams: SelectAll<BoxStream<'static, Tagged>> = SelectAll::new();
    let mut svc_config = watcher::Config::default();
    if let Some(selector) = &scope.service_selector {
        svc_config = svc_config.labels(selector);
    }
    let service_apis = apis::<Service>(&client, &scope);
    let slice_apis = apis::<EndpointSlice>(&client, &scope);
    let required = service_apis.len() + slice_apis.len();
    for (i, api) in service_apis.into_iter().enumerate() {
        streams.push(tagged(api, svc_config.clone(), Source::Services(i), |e| {
            Update::Service(Box::new(e))
        }));
    }
    for (i, api) in slice_apis.into_iter().enumerate() {
        streams.push(tagged(
            api,
            watcher::Config::default(),
            Source::Slices(i),
            |e| Update::Slice(Box::new(e)),
        ));
    }
    let mut pods_started = false;
    let start_pods = |streams: &mut SelectAll<_>, pods_started: &mut bool| {
        if !*pods_started {
            info!("watching Pods (pod labels or pod-accurate ready_since requested)");
            for (i, api) in apis::<Pod>(&client, &scope).into_iter().enumerate() {
                streams.push(tagged(
                    api,
                    watcher::Config::default(),
                    Source::Pods(i),
                    |e| Update::Pod(Box::new(e)),
                ));
            }
            *pods_started = true;
        }
    };
    if index.wants_pods() {
        start_pods(&mut streams, &mut pods_started);
    }

    let mut synced: BTreeSet<Source> = BTreeSet::new();
    let mut buffers = Buffers::default();
    loop {
        let deadline = publisher.next_deadline();
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            _ = sleep => {}
            next = streams.next() => {
                let Some((source, result)) = next else {
                    anyhow::bail!("every Kubernetes watch ended");
                };
                match result {
                    Err(e) => {
                        warn!(error = %e, ?source, "Kubernetes watch failed; retrying with backoff");
                        status.send_modify(|s| {
                            s.errors += 1;
                            s.last_error = Some(e.to_string());
                        });
                        continue;
                    }
                    Ok(update) => {
                        let now = SystemTime::now();
                        let changed = buffers.apply(&mut index, source, update, now, &mut synced);
                        status.send_modify(|s| s.events += 1);
                        if changed {
                            publisher.on_change(Instant::now());
                        }
                        if index.take_pod_resync() {
                            // New labels wanted: restart the Pod watch so its list carries them.
                            start_pods(&mut streams, &mut pods_started);
                        }
                    }
                }
            }
        }
        let all_synced = synced
            .iter()
            .filter(|s| !matches!(s, Source::Pods(_)))
            .count()
            >= required;
        if !all_synced {
            continue;
        }
        if publisher.published().is_none() && publisher.next_deadline().is_none() {
            // Everything listed but nothing changed since: publish the (possibly empty) first state.
            publisher.on_change(Instant::now());
        }
        if let Some(topology) = publisher.poll(Instant::now(), &index) {
            info!(
                version = %topology.snapshot.version(),
                keys = topology.snapshot.services().len(),
                "publishing topology"
            );
            sender.send_replace(Some(Arc::clone(&topology)));
        }
        let (index_stats, publish_stats, published) = (
            index.stats(),
            publisher.stats(),
            publisher.published().is_some(),
        );
        status.send_modify(|s| {
            s.synced = published;
            s.index = index_stats;
            s.publish = publish_stats;
        });
    }
}

/// Objects of an initial list (or a re-list after a watch restart), held
/// until `InitDone`, and what each watch currently has, so a re-list can
/// delete what vanished while the watch was down without touching the
/// objects of other namespaces' watches.
#[derive(Default)]
struct Buffers {
    services: Known<Service>,
    slices: Known<EndpointSlice>,
    pods: Known<Pod>,
}

type ObjKey = (String, String);

struct Known<K> {
    listing: BTreeMap<usize, Vec<K>>,
    current: BTreeMap<usize, BTreeMap<ObjKey, K>>,
}

impl<K> Default for Known<K> {
    fn default() -> Self {
        Self {
            listing: BTreeMap::new(),
            current: BTreeMap::new(),
        }
    }
}

fn key_of<K: ResourceExt>(obj: &K) -> ObjKey {
    (obj.namespace().unwrap_or_default(), obj.name_any())
}

impl<K: ResourceExt + Clone> Known<K> {
    /// Applies one event through `apply`/`delete`; returns whether the index changed.
    fn event(
        &mut self,
        i: usize,
        ev: Event<K>,
        mut apply: impl FnMut(&K) -> bool,
        mut delete: impl FnMut(&K) -> bool,
    ) -> (bool, bool) {
        match ev {
            Event::Init => {
                self.listing.insert(i, Vec::new());
                (false, false)
            }
            Event::InitApply(obj) => {
                self.listing.entry(i).or_default().push(obj);
                (false, false)
            }
            Event::InitDone => {
                let fresh: BTreeMap<ObjKey, K> = self
                    .listing
                    .remove(&i)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|o| (key_of(&o), o))
                    .collect();
                let old = self.current.insert(i, BTreeMap::new()).unwrap_or_default();
                let mut changed = false;
                for (key, obj) in &old {
                    if !fresh.contains_key(key) {
                        changed |= delete(obj);
                    }
                }
                for obj in fresh.values() {
                    changed |= apply(obj);
                }
                self.current.insert(i, fresh);
                (changed, true)
            }
            Event::Apply(obj) => {
                let changed = apply(&obj);
                self.current.entry(i).or_default().insert(key_of(&obj), obj);
                (changed, false)
            }
            Event::Delete(obj) => {
                let changed = delete(&obj);
                self.current.entry(i).or_default().remove(&key_of(&obj));
                (changed, false)
            }
        }
    }
}

impl Buffers {
    /// Applies one event; returns whether the index changed.
    fn apply(
        &mut self,
        index: &mut Index,
        source: Source,
        update: Update,
        now: SystemTime,
        synced: &mut BTreeSet<Source>,
    ) -> bool {
        let (changed, done) = match (source, update) {
            (Source::Services(i), Update::Service(ev)) => {
                let ev = *ev;
                let index = std::cell::RefCell::new(index);
                self.services.event(
                    i,
                    ev,
                    |s| index.borrow_mut().apply_service(s),
                    |s| index.borrow_mut().delete_service(s),
                )
            }
            (Source::Slices(i), Update::Slice(ev)) => {
                let ev = *ev;
                let index = std::cell::RefCell::new(index);
                self.slices.event(
                    i,
                    ev,
                    |s| index.borrow_mut().apply_slice(s, now),
                    |s| index.borrow_mut().delete_slice(s, now),
                )
            }
            (Source::Pods(i), Update::Pod(ev)) => {
                let ev = *ev;
                let index = std::cell::RefCell::new(index);
                self.pods.event(
                    i,
                    ev,
                    |p| index.borrow_mut().apply_pod(p),
                    |p| index.borrow_mut().delete_pod(p),
                )
            }
            _ => (false, false),
        };
        if done {
            synced.insert(source);
        }
        changed
    }
}

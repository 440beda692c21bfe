//! The async driver around the pure index and publisher: kube-runtime
//! watchers in, published topologies out.
//!
//! ```text
//!  watcher(Service)        ─┐  Init / InitApply* / InitDone (k8s::listing)
//!  watcher(EndpointSlice)  ─┼─> Index ──on_change──> Publisher ──poll at deadline──> TopologySender
//!  watcher(Pod, optional)  ─┘  Apply / Delete           (coalesce, mass-drop guard)     (Published:
//!    started once the Services are listed,                                              topology,
//!    restarted when Services want new pod labels                                        first event time)
//! ```
//!
//! Nothing is published until every Service and EndpointSlice watch (one
//! per watched namespace) has finished its first list, and, for the first
//! publish only, every running Pod watch too: the rules are
//! [`crate::k8s::gate`]'s, this loop only tells the gate which watch
//! listed. (So a Pod watch the server may not list holds readiness back;
//! `/readyz` names the refusal.)
//!
//! The Pod watch starts only after the Services' first list, because the
//! Services' `eds.rs/pod-labels` annotations decide which labels the index
//! keeps from each Pod; a Pod list taken earlier would miss them. When a
//! Service later asks for a label the index did not keep, the Pod watches
//! are ended and started again, so their fresh list carries it (each Pod
//! watch slot keeps what it listed, so the re-list also deletes what
//! vanished).
//!
//! Watch errors (RBAC refusals, a restarting API server) are logged and
//! retried with kube-runtime's backoff; the last published topology stays
//! served meanwhile. This module has no rules of its own: they live in
//! [`crate::k8s`]. It also records when the oldest unpublished change
//! arrived and publishes that time with the topology, for the propagation
//! latency metrics of [`crate::serve`].

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use futures::StreamExt;
use futures::stream::{AbortHandle, Abortable, BoxStream, SelectAll};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::k8s::gate::{Gate, Watch as Source};
use crate::k8s::index::PodFacts;
use crate::k8s::listing::{Listing, Outcome};
use crate::k8s::{Index, IndexConfig, IndexStats, PublishStats, Publisher, PublisherConfig};
use crate::metrics::Metrics;
use crate::topology::{Published, TopologySender};

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

// Boxed: a Pod event is large and the stream holds one per watch.
enum Update {
    Service(Box<Event<Service>>),
    Slice(Box<Event<EndpointSlice>>),
    Pod(Box<Event<PodFacts>>),
}

type Tagged = (Source, Result<Update, watcher::Error>);

impl Update {
    /// (resource kind, kube-runtime event name), for the events metric.
    fn describe(&self) -> (&'static str, &'static str) {
        fn event<K>(ev: &Event<K>) -> &'static str {
            match ev {
                Event::Init => "init",
                Event::InitApply(_) => "init_apply",
                Event::InitDone => "init_done",
                Event::Apply(_) => "apply",
                Event::Delete(_) => "delete",
            }
        }
        match self {
            Update::Service(ev) => ("Service", event(ev)),
            Update::Slice(ev) => ("EndpointSlice", event(ev)),
            Update::Pod(ev) => ("Pod", event(ev)),
        }
    }
}

/// Where the watcher's results go.
#[derive(Debug)]
pub struct Outputs {
    /// Published topologies.
    pub topology: TopologySender,
    /// Progress, for readiness and the admin view.
    pub status: watch::Sender<WatchStatus>,
    /// Event, build and publish metrics.
    pub metrics: Arc<Metrics>,
}

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

/// A Pod event as the facts the index reads: a k8s-openapi `Pod` takes
/// kilobytes even with its spec dropped (its structs are inline), and the
/// watch holds one per Pod, twice during a relist.
fn pod_facts(ev: Event<Pod>) -> Event<PodFacts> {
    match ev {
        Event::Init => Event::Init,
        Event::InitApply(p) => Event::InitApply(PodFacts::of(&p)),
        Event::InitDone => Event::InitDone,
        Event::Apply(p) => Event::Apply(PodFacts::of(&p)),
        Event::Delete(p) => Event::Delete(PodFacts::of(&p)),
    }
}

/// Runs the watchers until `shutdown` fires, publishing topologies and
/// progress to `out`.
pub async fn run(
    client: Client,
    scope: Scope,
    index_config: IndexConfig,
    publisher_config: PublisherConfig,
    out: Outputs,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let Outputs {
        topology: sender,
        status,
        metrics,
    } = out;
    let mut index = Index::new(index_config);
    let mut publisher = Publisher::new(publisher_config)?;
    let mut streams: SelectAll<BoxStream<'static, Tagged>> = SelectAll::new();
    let mut svc_config = watcher::Config::default();
    if let Some(selector) = &scope.service_selector {
        svc_config = svc_config.labels(selector);
    }
    let service_apis = apis::<Service>(&client, &scope);
    let slice_apis = apis::<EndpointSlice>(&client, &scope);
    let mut gate = Gate::new(service_apis.len(), slice_apis.len());
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
    // One abort handle per running Pod watch; `None` until started.
    let mut pod_watches: Option<Vec<AbortHandle>> = None;
    let start_pods = |streams: &mut SelectAll<_>| -> Vec<AbortHandle> {
        apis::<Pod>(&client, &scope)
            .into_iter()
            .enumerate()
            .map(|(i, api)| {
                let (handle, registration) = AbortHandle::new_pair();
                // Pods are the largest objects watched and the index reads
                // five fields of them: only those are kept, from arrival.
                let watch = tagged(api, watcher::Config::default(), Source::Pods(i), |e| {
                    Update::Pod(Box::new(pod_facts(e)))
                });
                streams.push(Abortable::new(watch, registration).boxed());
                handle
            })
            .collect()
    };

    let mut buffers = Buffers::default();
    // When the oldest change not yet published reached us (see `Published`).
    let mut first_change: Option<Instant> = None;
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
                        metrics.watch_errors.inc();
                        status.send_modify(|s| {
                            s.errors += 1;
                            s.last_error = Some(e.to_string());
                        });
                        continue;
                    }
                    Ok(update) => {
                        let (resource, event) = update.describe();
                        metrics.watch_event(resource, event);
                        let now = SystemTime::now();
                        let changed = buffers.apply(&mut index, source, update, now, &mut gate);
                        status.send_modify(|s| s.events += 1);
                        if changed {
                            let at = Instant::now();
                            publisher.on_change(at);
                            first_change.get_or_insert(at);
                        }
                        match pod_watch_action(&mut index, gate.services_listed(), gate.pods_running()) {
                            PodWatchAction::Keep => {}
                            PodWatchAction::Start => {
                                info!(
                                    labels = ?index.wanted_labels(),
                                    "watching Pods (pod labels or pod-accurate ready_since requested)"
                                );
                                let started = start_pods(&mut streams);
                                gate.pods_started(started.len());
                                pod_watches = Some(started);
                            }
                            PodWatchAction::Restart => {
                                info!(
                                    labels = ?index.wanted_labels(),
                                    "Services want new pod labels; restarting the Pod watch to list them"
                                );
                                for handle in pod_watches.iter().flatten() {
                                    handle.abort();
                                }
                                let started = start_pods(&mut streams);
                                gate.pods_started(started.len());
                                pod_watches = Some(started);
                            }
                        }
                    }
                }
            }
        }
        let first_publish = publisher.published().is_none();
        if !gate.may_publish(first_publish) {
            continue;
        }
        if first_publish && publisher.next_deadline().is_none() {
            // Everything listed but nothing changed since: publish the (possibly empty) first state.
            publisher.on_change(Instant::now());
        }
        let mut built = false;
        // One span per build: in traces (OTLP), how long builds take, whether
        // they were published, and how long the oldest change had waited.
        let span = tracing::info_span!(
            "build_topology",
            first = first_publish,
            published = false,
            version = tracing::field::Empty,
            keys = tracing::field::Empty,
            waited_ms = first_change.map(|t| t.elapsed().as_secs_f64() * 1e3),
        );
        let _in_span = span.enter();
        let published = publisher.poll_with(Instant::now(), || {
            let started = Instant::now();
            let topology = index.topology();
            metrics.snapshot_built(started.elapsed());
            built = true;
            topology
        });
        if built {
            // The build saw every change so far: published or not, none is
            // pending any more.
            let first_change = first_change.take().filter(|_| !first_publish);
            if let Some(topology) = published {
                span.record("published", true);
                span.record("version", topology.snapshot.version().to_string());
                span.record("keys", topology.snapshot.services().len());
                info!(
                    version = %topology.snapshot.version(),
                    keys = topology.snapshot.services().len(),
                    "publishing topology"
                );
                metrics.publishes.inc();
                sender.send_replace(Some(Published {
                    topology,
                    first_change,
                    published_at: Instant::now(),
                }));
            }
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

/// What to do with the Pod watch after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PodWatchAction {
    /// Leave it as it is (running or not).
    Keep,
    /// Start it: the Services are listed and Pods are wanted.
    Start,
    /// End the running watches and list again: Services want labels the
    /// stored Pods were parsed without.
    Restart,
}

/// Decides the Pod watch's fate. Before the Services' first list the wanted
/// labels are unknown: nothing starts, and the index's resync flag is left
/// set for later (starting then lists with every label anyway).
fn pod_watch_action(index: &mut Index, services_listed: bool, running: bool) -> PodWatchAction {
    if !services_listed {
        return PodWatchAction::Keep;
    }
    let resync = index.take_pod_resync();
    match (running, resync) {
        (true, true) => PodWatchAction::Restart,
        (false, _) if index.wants_pods() => PodWatchAction::Start,
        _ => PodWatchAction::Keep,
    }
}

/// What each watch currently has, by key (see [`crate::k8s::listing`]): a
/// re-list deletes what vanished while the watch was down without touching
/// the objects of other namespaces' watches.
#[derive(Default)]
struct Buffers {
    services: Listing,
    slices: Listing,
    pods: Listing,
}

impl Buffers {
    /// Applies one event; returns whether the index changed.
    fn apply(
        &mut self,
        index: &mut Index,
        source: Source,
        update: Update,
        now: SystemTime,
        gate: &mut Gate,
    ) -> bool {
        // Both closures borrow the index; only one runs at a time.
        let index = std::cell::RefCell::new(index);
        let outcome = match (source, update) {
            (Source::Services(i), Update::Service(ev)) => self.services.event(
                i,
                *ev,
                |s| index.borrow_mut().apply_service(s),
                |k| index.borrow_mut().delete_service_key(k),
            ),
            (Source::Slices(i), Update::Slice(ev)) => self.slices.event(
                i,
                *ev,
                |s| index.borrow_mut().apply_slice(s, now),
                |k| index.borrow_mut().delete_slice_key(k, now),
            ),
            (Source::Pods(i), Update::Pod(ev)) => self.pods.event(
                i,
                *ev,
                |p| index.borrow_mut().apply_pod_facts(p),
                |k| index.borrow_mut().delete_pod_key(k),
            ),
            _ => Outcome::default(),
        };
        if outcome.listed {
            gate.listed(source);
        }
        outcome.changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::fixtures::svc;

    fn labelled(name: &str, labels: &str) -> Service {
        svc(name, "demo")
            .port("grpc", 8080, None)
            .annotation("eds.rs/pod-labels", labels)
            .build()
    }

    #[test]
    fn pods_wait_for_the_services_list_then_start_once() {
        let mut index = Index::new(IndexConfig::default());
        index.apply_service(&labelled("echo", "shard"));
        assert_eq!(
            pod_watch_action(&mut index, false, false),
            PodWatchAction::Keep,
            "Services not listed yet"
        );
        assert_eq!(
            pod_watch_action(&mut index, true, false),
            PodWatchAction::Start
        );
        // The label that triggered the resync was consumed by the start.
        assert_eq!(
            pod_watch_action(&mut index, true, true),
            PodWatchAction::Keep
        );
    }

    #[test]
    fn a_new_label_restarts_running_pod_watches() {
        let mut index = Index::new(IndexConfig::default());
        index.apply_service(&labelled("echo", "shard"));
        assert_eq!(
            pod_watch_action(&mut index, true, false),
            PodWatchAction::Start
        );
        index.apply_service(&labelled("other", "track"));
        assert_eq!(
            pod_watch_action(&mut index, true, true),
            PodWatchAction::Restart
        );
        // A label already kept needs no re-list.
        index.apply_service(&labelled("third", "shard"));
        assert_eq!(
            pod_watch_action(&mut index, true, true),
            PodWatchAction::Keep
        );
    }

    #[test]
    fn without_labels_pods_follow_the_watch_pods_setting() {
        let mut off = Index::new(IndexConfig::default());
        assert_eq!(
            pod_watch_action(&mut off, true, false),
            PodWatchAction::Keep
        );
        let mut on = Index::new(IndexConfig {
            watch_pods: true,
            ..IndexConfig::default()
        });
        assert_eq!(
            pod_watch_action(&mut on, true, false),
            PodWatchAction::Start
        );
    }
}

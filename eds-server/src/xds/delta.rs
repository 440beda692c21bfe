//! Incremental (delta) xDS, one stream: per-resource subscriptions and
//! versions, `removed_resources`, ACK/NACK by nonce.
//!
//! ```text
//!  per resource name, per type            request: subscribe / unsubscribe / initial versions /
//!                                                  nonce (+ error_detail)
//!   ┌─────────────┐ subscribe        ┌──────────────────┐
//!   │ unknown     │ ───────────────> │ subscribed, owed │──┐ exists ──> sent @v ──> known @v ─┐
//!   └─────────────┘                  └──────────────────┘  │                                 │
//!        ^    ^ initial_resource_versions ─> known @v       └ missing ─> removed ─> wanted,   │
//!        │    │                       (not owed: the client       (reported once)  not known  │
//!        │    │                        has it; sent only if          │ appears               │
//!        │    │                        the version differs)          └──────> sent @v ───────>┤
//!        │    └───────────── unsubscribe (client drops it) ──────────────────────────────────┤
//!        └────────────────── deleted from the snapshot ──> removed ──────────────────────────┘
//!   known @v ── update to @w ──> sent @w ──> known @w      (NACK: known stays @w, not resent)
//!
//!   each response: nonce N ──> in flight ──ACK N──> acked versions per resource
//!                                        ──NACK N─> last NACK (version, resources, message)
//! ```
//!
//! Decisions, with the sections of the Envoy "xDS REST and gRPC protocol"
//! document they rest on ("Incremental xDS" unless named):
//!
//! - **What the client holds**: `known`, name to version. Filled from
//!   `initial_resource_versions` on the first request of a type on the
//!   stream (a reconnect), then from every response. A resource is sent when
//!   its version differs from `known`, so a reconnect does not resend what
//!   the client already has at the current version.
//! - **Subscribing** (`DeltaDiscoveryRequest.resource_names_subscribe`):
//!   "the server must respond with all resources listed, even if it believes
//!   the client has the most recent version" (the client may have dropped
//!   them and regained interest). Except names the same first request also
//!   lists in `initial_resource_versions`: there the client has just told us
//!   what it holds, which is the point of that field.
//! - **Missing resources** ("Deleting Resources", "Knowing When a Requested
//!   Resource Does Not Exist"): a subscribed name that does not exist is
//!   listed in `removed_resources` once (at subscribe time, or when deleted),
//!   then remembered; if it appears later it is sent.
//! - **Wildcard** (LDS/CDS only; "How the client specifies what resources
//!   to return"): the first request with an empty subscribe list is the
//!   legacy wildcard, `*` subscribes and unsubscribes it explicitly, and
//!   named subscriptions add to it. A wildcard resource deleted from the
//!   snapshot is removed. Unsubscribing a name the wildcard still covers
//!   leaves it with the client (Envoy keeps it as "ambiguous").
//! - **Unsubscribing** ("Unsubscribing From Resources"): forgotten; the
//!   client drops it itself, so no removal is sent.
//! - **ACK/NACK**: by nonce, with `error_detail` marking a NACK. Responses
//!   are not held back while one is in flight; each nonce remembers what it
//!   carried (a bounded window), so an ACK records per-resource versions even
//!   when it arrives after a newer response went out. The client answers in
//!   order, so an answer to nonce N also settles every older response still
//!   in flight: those were applied (a NACK would have answered them). When
//!   the window is full the oldest response is folded into the next one, so
//!   a late ACK still accounts for everything sent. A nonce outside the
//!   window is stale; its subscription changes still apply (the note added
//!   by envoyproxy/envoy#16659: "the server must honor changes to the
//!   subscription state even if the nonce is stale").
//! - **NACK**: logged, counted, kept. `known` already holds the rejected
//!   version, so it is not resent; a newer version is. Until then the
//!   resource is reported as rejected (`nacked_resources`, CSDS `ERROR`).
//! - **Cluster warming** ("Resource warming"): on ADS, when a cluster that
//!   the client had changes, its ClusterLoadAssignment of the same name is
//!   owed again, because Envoy re-warms the cluster and waits for one
//!   (go-control-plane#245). Cluster and assignment names are both the
//!   service key here (DESIGN.md, "Names everyone shares").
//! - `system_version_info` is a hash of what the client holds after the
//!   response; informational only.
//!
//! What this module is not: it does no IO and holds no resources. The async
//! glue sends every response it returns, in order (see [`crate::serve`]);
//! nothing merges or drops responses after they leave the state machine.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::SystemTime;

use proto::xds::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use tracing::{debug, warn};

use super::resource::{ClientInfo, Lookup, ResourceSource, ResourceVersion};
use super::stats::{Counters, NackRecord, Protocol, SubscriberStats, TypeStats};
use super::wire::DeltaResponse;
use super::{
    CHUNK_BYTES, NonceSeq, PUSH_ORDER, ResourceType, StreamIdentity, StreamKind, XdsError, chunked,
    content_version, is_full_state,
};

/// How many unacknowledged responses per type are tracked by nonce for
/// per-resource ACK bookkeeping. A client answers every response in order,
/// so more than a few in flight means it is far behind; the oldest is then
/// folded into the next, and its own nonce becomes stale (which only
/// affects the admin view). Bounds memory per stream whatever the client
/// does.
const IN_FLIGHT_WINDOW: usize = 16;

/// The incremental protocol state of one gRPC stream (delta ADS or a
/// per-type delta service).
#[derive(Debug)]
pub struct DeltaStream {
    id: StreamIdentity,
    nonces: NonceSeq,
    types: BTreeMap<ResourceType, TypeState>,
}

/// One type's state on the stream.
#[derive(Debug, Default)]
struct TypeState {
    wildcard: bool,
    /// Explicitly subscribed names (without `*`).
    subscribed: BTreeSet<String>,
    /// What the client holds, as far as we know: name to version.
    known: BTreeMap<String, ResourceVersion>,
    /// Names that must be answered (sent, or reported removed) even if
    /// `known` says the client has them.
    owed: BTreeSet<String>,
    /// Whether any response for this type went out.
    answered: bool,
    in_flight: VecDeque<InFlight>,
    last_system_version: Option<String>,
    acked_version: Option<String>,
    acked: BTreeMap<String, ResourceVersion>,
    /// Resources whose version in `known` the client rejected; cleared when
    /// another version (or a removal) is sent or the name is unsubscribed.
    rejected: BTreeMap<String, ResourceVersion>,
    last_ack_at: Option<SystemTime>,
    last_nack: Option<NackRecord>,
    counters: Counters,
}

/// What one unacknowledged response carried.
#[derive(Debug)]
struct InFlight {
    nonce: u64,
    system_version: String,
    /// Name to version sent, or `None` for a removal.
    changes: BTreeMap<String, Option<ResourceVersion>>,
}

impl TypeState {
    /// The response with `nonce`, if it is in flight. Older responses still
    /// in flight are settled as applied: the client answers in order, so
    /// one it did not answer on its own (a client may answer only the
    /// latest of a burst) was applied before this one.
    fn take_in_flight(&mut self, nonce: &str) -> Option<InFlight> {
        let n: u64 = nonce.parse().ok()?;
        let at = self.in_flight.iter().position(|f| f.nonce == n)?;
        let mut answered: Vec<InFlight> = self.in_flight.drain(..=at).collect();
        let flight = answered.pop()?;
        for older in answered {
            self.record_applied(older.changes);
        }
        Some(flight)
    }

    /// The client applied these changes.
    fn record_applied(&mut self, changes: BTreeMap<String, Option<ResourceVersion>>) {
        for (name, version) in changes {
            match version {
                Some(v) => self.acked.insert(name, v),
                None => self.acked.remove(&name),
            };
        }
    }

    fn stats(&self, ty: ResourceType) -> TypeStats {
        TypeStats {
            type_url: ty.type_url(),
            wildcard: self.wildcard,
            subscribed: self.subscribed.iter().cloned().collect(),
            sent_version: self.last_system_version.clone(),
            sent_resources: self.known.clone(),
            pending_nonce: self.in_flight.back().map(|f| f.nonce.to_string()),
            acked_version: self.acked_version.clone(),
            acked_resources: self.acked.clone(),
            nacked_resources: self.rejected.clone(),
            last_ack_at: self.last_ack_at,
            last_nack: self.last_nack.clone(),
            counters: self.counters,
        }
    }
}

impl DeltaStream {
    /// A new stream of `kind`. The client's identity comes from the first
    /// request that carries a `Node`.
    pub fn new(kind: StreamKind) -> Self {
        DeltaStream {
            id: StreamIdentity::new(kind),
            nonces: NonceSeq::default(),
            types: BTreeMap::new(),
        }
    }

    /// Who the client is (empty until a request with a `Node` arrived).
    pub fn client(&self) -> &ClientInfo {
        &self.id.client
    }

    /// Handles one request received at `now`, reading resources from
    /// `source`, and returns what to send: nothing or one response for the
    /// request's type; on ADS, a cluster change may add an EDS response.
    ///
    /// An error (unknown type URL, ...) should end the stream with the
    /// `tonic::Status` it converts into; the stream's state is unchanged.
    pub fn handle_request<S: ResourceSource + ?Sized>(
        &mut self,
        req: DeltaDiscoveryRequest,
        source: &S,
        now: SystemTime,
    ) -> Result<Vec<DeltaResponse>, XdsError> {
        let ty = self.id.admit(&req.type_url, req.node.as_ref(), "delta")?;
        let first = !self.types.contains_key(&ty);
        let st = self.types.entry(ty).or_default();
        st.counters.requests += 1;

        if !req.response_nonce.is_empty() {
            match (st.take_in_flight(&req.response_nonce), &req.error_detail) {
                (Some(flight), None) => {
                    st.counters.acks += 1;
                    st.record_applied(flight.changes);
                    st.acked_version = Some(flight.system_version);
                    st.last_ack_at = Some(now);
                }
                (flight, Some(detail)) => {
                    let stale = flight.is_none();
                    for (name, version) in flight.iter().flat_map(|f| &f.changes) {
                        // Only what the client would otherwise hold now: a
                        // newer version sent since is not rejected (yet).
                        if let Some(v) = version
                            && st.known.get(name) == Some(v)
                        {
                            st.rejected.insert(name.clone(), v.clone());
                        }
                    }
                    let record = NackRecord {
                        rejected_version: flight
                            .as_ref()
                            .map(|f| f.system_version.clone())
                            .unwrap_or_default(),
                        client_version: String::new(),
                        nonce: req.response_nonce.clone(),
                        code: detail.code,
                        message: detail.message.clone(),
                        resources: flight
                            .map(|f| f.changes.into_keys().collect())
                            .unwrap_or_default(),
                        stale,
                        at: now,
                    };
                    if stale {
                        st.counters.stale += 1;
                    }
                    warn!(
                        node = %self.id.client.node_id,
                        zone = self.id.client.zone.as_deref().unwrap_or(""),
                        r#type = ty.short_name(),
                        nonce = %record.nonce,
                        rejected_version = %record.rejected_version,
                        resources = ?record.resources,
                        stale,
                        code = record.code,
                        message = %record.message,
                        "client rejected a delta xDS response (NACK)"
                    );
                    st.counters.nacks += 1;
                    st.last_nack = Some(record);
                }
                (None, None) => {
                    st.counters.stale += 1;
                    debug!(
                        node = %self.id.client.node_id,
                        r#type = ty.short_name(),
                        nonce = %req.response_nonce,
                        "stale or unknown nonce: no ACK effect; subscription changes still apply"
                    );
                }
            }
        }

        let initial = req.initial_resource_versions;
        if first {
            for (name, version) in &initial {
                let version = ResourceVersion::new(version);
                st.known.insert(name.clone(), version.clone());
                st.acked.insert(name.clone(), version);
            }
        } else if !initial.is_empty() {
            // Only the first request of a type on a stream may carry it; the
            // stream's own bookkeeping is more accurate than a late claim.
            debug!(
                node = %self.id.client.node_id,
                r#type = ty.short_name(),
                count = initial.len(),
                "ignoring initial_resource_versions after the first request"
            );
        }

        if first && is_full_state(ty) && req.resource_names_subscribe.is_empty() {
            st.wildcard = true;
        }
        for name in req.resource_names_subscribe {
            if name == "*" && is_full_state(ty) {
                st.wildcard = true;
                continue;
            }
            if !(first && initial.contains_key(&name)) {
                st.owed.insert(name.clone());
            }
            st.subscribed.insert(name);
        }
        for name in req.resource_names_unsubscribe {
            if name == "*" && is_full_state(ty) {
                st.wildcard = false;
                continue;
            }
            st.subscribed.remove(&name);
            st.owed.remove(&name);
            if !st.wildcard {
                // The client drops it: it neither holds nor rejects it now.
                st.known.remove(&name);
                st.acked.remove(&name);
                st.rejected.remove(&name);
            }
        }

        let mut out = Vec::new();
        self.respond_to(ty, source, &mut out);
        if ty == ResourceType::Cluster && !out.is_empty() {
            self.respond_to(ResourceType::ClusterLoadAssignment, source, &mut out);
        }
        Ok(out)
    }

    /// A new snapshot arrived: what to send, in make-before-break order
    /// (CDS, EDS, LDS, RDS), one response per type with changes.
    pub fn on_update<S: ResourceSource + ?Sized>(&mut self, source: &S) -> Vec<DeltaResponse> {
        let mut out = Vec::new();
        for ty in PUSH_ORDER {
            self.respond_to(ty, source, &mut out);
        }
        out
    }

    /// The stream's counters summed over types; cheaper than
    /// [`Self::stats`] for glue that only needs to see what a request was.
    pub fn counters(&self) -> Counters {
        let mut counters = Counters::default();
        for st in self.types.values() {
            counters.add(&st.counters);
        }
        counters
    }

    /// A snapshot of this stream for the admin view.
    pub fn stats(&self) -> SubscriberStats {
        let mut counters = Counters::default();
        let types = PUSH_ORDER
            .into_iter()
            .filter_map(|ty| self.types.get(&ty).map(|st| (ty, st)))
            .map(|(ty, st)| {
                counters.add(&st.counters);
                st.stats(ty)
            })
            .collect();
        SubscriberStats {
            client: self.id.client.clone(),
            protocol: Protocol::Delta,
            stream: self.id.kind,
            counters,
            errors: self.id.errors,
            types,
        }
    }

    /// Appends the response for `ty` to `out` if one is due.
    fn respond_to<S: ResourceSource + ?Sized>(
        &mut self,
        ty: ResourceType,
        source: &S,
        out: &mut Vec<DeltaResponse>,
    ) {
        let DeltaStream {
            id, nonces, types, ..
        } = self;
        let Some(st) = types.get_mut(&ty) else {
            return;
        };
        let Some((responses, updated)) = respond(ty, st, source, &id.client, nonces) else {
            return;
        };
        if ty == ResourceType::Cluster
            && !updated.is_empty()
            && let Some(eds) = types.get_mut(&ResourceType::ClusterLoadAssignment)
        {
            // Envoy re-warms an updated cluster and waits for its
            // ClusterLoadAssignment even if it did not change.
            for name in updated {
                if eds.subscribed.contains(&name) {
                    eds.owed.insert(name);
                }
            }
        }
        out.extend(responses);
    }
}

/// The responses for `ty` if one is due (several when the change is larger
/// than [`CHUNK_BYTES`]), recording them as sent. Also returns the names
/// that replaced an older version the client had.
fn respond<S: ResourceSource + ?Sized>(
    ty: ResourceType,
    st: &mut TypeState,
    source: &S,
    client: &ClientInfo,
    nonces: &mut NonceSeq,
) -> Option<(Vec<DeltaResponse>, Vec<String>)> {
    let mut wanted: BTreeSet<String> = st.subscribed.clone();
    if st.wildcard {
        // Not ready: say nothing rather than "removed".
        wanted.extend(source.names(ty, client)?);
    }

    let mut resources = Vec::new();
    let mut changes: BTreeMap<String, Option<ResourceVersion>> = BTreeMap::new();
    let mut updated = Vec::new();
    for name in &wanted {
        let owed = st.owed.contains(name);
        match source.version_of(ty, name, client) {
            Lookup::Found(version) => {
                let had = st.known.get(name);
                if (owed || had != Some(&version))
                    && let Lookup::Found(res) = source.get(ty, name, client)
                {
                    if had.is_some_and(|h| *h != version) {
                        updated.push(name.clone());
                    }
                    resources.push(Arc::clone(&res));
                    changes.insert(name.clone(), Some(res.version().clone()));
                }
            }
            Lookup::DoesNotExist => {
                if owed || st.known.contains_key(name) {
                    changes.insert(name.clone(), None);
                }
            }
            // Neither sent nor removed; still owed for a later update.
            Lookup::NotReady => {}
        }
    }
    // Held by the client but covered by nothing any more (a wildcard
    // resource deleted from the snapshot).
    for name in st.known.keys() {
        if !wanted.contains(name) {
            changes.insert(name.clone(), None);
        }
    }

    let first_wildcard_answer = st.wildcard && !st.answered;
    if changes.is_empty() && !first_wildcard_answer {
        return None;
    }

    let mut removed_resources = Vec::new();
    for (name, change) in &changes {
        st.owed.remove(name);
        st.rejected.remove(name);
        match change {
            Some(v) => {
                st.known.insert(name.clone(), v.clone());
            }
            None => {
                st.known.remove(name);
                removed_resources.push(name.clone());
            }
        }
    }
    let system_version_info = content_version(
        st.known
            .iter()
            .map(|(name, version)| (name.as_str(), version.as_str())),
    );
    // A large change goes in parts of at most CHUNK_BYTES, each answered on
    // its own; removals travel with the first. Every part carries the
    // version of the whole change (the protocol uses it for debugging only).
    let mut parts = chunked(resources, CHUNK_BYTES).into_iter();
    let mut removed = Some(removed_resources);
    let mut responses = Vec::new();
    loop {
        let part = parts.next();
        if part.is_none() && removed.is_none() {
            break;
        }
        let resources = part.unwrap_or_default();
        let removed_resources = removed.take().unwrap_or_default();
        let mut part_changes: BTreeMap<String, Option<ResourceVersion>> = BTreeMap::new();
        for res in &resources {
            part_changes.insert(res.name().to_owned(), Some(res.version().clone()));
        }
        for name in &removed_resources {
            part_changes.insert(name.clone(), None);
        }
        let (n, nonce) = nonces.next();
        if st.in_flight.len() == IN_FLIGHT_WINDOW
            && let Some(oldest) = st.in_flight.pop_front()
            && let Some(next) = st.in_flight.front_mut()
        {
            // Far behind: the next response's answer will settle both, so it
            // carries the oldest one's changes it does not override.
            for (name, change) in oldest.changes {
                next.changes.entry(name).or_insert(change);
            }
        }
        st.in_flight.push_back(InFlight {
            nonce: n,
            system_version: system_version_info.clone(),
            changes: part_changes,
        });
        st.counters.responses += 1;
        responses.push(DeltaResponse {
            system_version_info: system_version_info.clone(),
            resources,
            type_url: ty.type_url().to_owned(),
            removed_resources,
            nonce,
        });
    }
    st.answered = true;
    st.last_system_version = Some(system_version_info);
    Some((responses, updated))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::MemorySource;
    use crate::xds::fixtures::*;
    use proto::xds::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse;

    fn ads() -> DeltaStream {
        DeltaStream::new(StreamKind::Aggregated)
    }

    #[test]
    fn a_large_subscription_arrives_in_parts_each_answered() {
        let (src, names) = large_eds();
        let mut s = ads();
        let out = s
            .handle_request(
                dreq(EDS).subscribe(names.iter().map(String::as_str)).into(),
                &src,
                t(0),
            )
            .unwrap();
        let parts: Vec<_> = out.iter().map(|r| r.resources.as_slice()).collect();
        assert_split_into_parts(&parts, &names);
        for r in &out {
            let ack = dreq(EDS).nonce(&r.nonce);
            assert!(s.handle_request(ack.into(), &src, t(1)).unwrap().is_empty());
        }
        let eds = s.stats().of(EDS).cloned().unwrap();
        assert_eq!(eds.acked_resources.len(), 5, "every part was acknowledged");
        assert_eq!(eds.pending_nonce, None);
    }

    fn ask(s: &mut DeltaStream, src: &MemorySource, r: DReq) -> Vec<DeltaDiscoveryResponse> {
        s.handle_request(r.into(), src, t(0))
            .expect("valid request")
            .iter()
            .map(DeltaResponse::to_proto)
            .collect()
    }

    fn one<R: Into<DeltaDiscoveryResponse> + std::fmt::Debug>(
        mut out: Vec<R>,
    ) -> DeltaDiscoveryResponse {
        assert_eq!(out.len(), 1, "exactly one response: {out:?}");
        out.remove(0).into()
    }

    fn ack(s: &mut DeltaStream, src: &MemorySource, ty: ResourceType, r: &DeltaDiscoveryResponse) {
        let out = ask(s, src, dreq(ty).nonce(&r.nonce));
        assert!(out.is_empty(), "an ACK needs no answer: {out:?}");
    }

    #[test]
    fn first_subscribe_sends_each_resource_with_its_version() {
        let src = source(&[(EDS, "a.demo:80", "1"), (EDS, "b.demo:80", "7")]);
        let mut s = ads();
        let r = one(ask(
            &mut s,
            &src,
            dreq(EDS)
                .node("pod", "zone-a")
                .subscribe(["a.demo:80", "b.demo:80"]),
        ));
        assert_eq!(r.type_url, EDS.type_url());
        assert_eq!(sent(&r), ["a.demo:80@1", "b.demo:80@7"]);
        assert!(r.removed_resources.is_empty());
        assert!(!r.nonce.is_empty());
        assert_eq!(s.client().zone.as_deref(), Some("zone-a"));
    }

    #[test]
    fn ack_records_per_resource_versions() {
        let src = source(&[(EDS, "a.demo:80", "1"), (EDS, "b.demo:80", "7")]);
        let mut s = ads();
        let r = one(ask(
            &mut s,
            &src,
            dreq(EDS).subscribe(["a.demo:80", "b.demo:80"]),
        ));
        let out = s
            .handle_request(dreq(EDS).nonce(&r.nonce).into(), &src, t(5))
            .unwrap();
        assert!(out.is_empty());
        let stats = s.stats();
        let eds = stats.of(EDS).unwrap();
        let acked: Vec<_> = eds
            .acked_resources
            .iter()
            .map(|(n, v)| format!("{n}@{v}"))
            .collect();
        assert_eq!(acked, ["a.demo:80@1", "b.demo:80@7"]);
        assert_eq!(
            eds.acked_version.as_deref(),
            Some(r.system_version_info.as_str())
        );
        assert_eq!(eds.last_ack_at, Some(t(5)));
        assert_eq!(eds.pending_nonce, None);
        assert_eq!(eds.counters.acks, 1);
    }

    #[test]
    fn only_changed_resources_are_sent_on_update() {
        let mut src = source(&[(EDS, "a.demo:80", "1"), (EDS, "b.demo:80", "1")]);
        let mut s = ads();
        let r = one(ask(
            &mut s,
            &src,
            dreq(EDS).subscribe(["a.demo:80", "b.demo:80"]),
        ));
        ack(&mut s, &src, EDS, &r);
        src.insert(EDS, "b.demo:80", "2", b"b.demo:80@2");
        let u = one(s.on_update(&src));
        assert_eq!(sent(&u), ["b.demo:80@2"]);
        assert!(s.on_update(&src).is_empty());
    }

    #[test]
    fn nack_is_recorded_and_the_same_version_is_not_resent() {
        let mut src = source(&[(EDS, "a.demo:80", "1")]);
        let mut s = ads();
        let r1 = one(ask(&mut s, &src, dreq(EDS).subscribe(["a.demo:80"])));
        ack(&mut s, &src, EDS, &r1);
        src.insert(EDS, "a.demo:80", "2", b"a.demo:80@2");
        let r2 = one(s.on_update(&src));
        let out = s
            .handle_request(
                dreq(EDS)
                    .nonce(&r2.nonce)
                    .nack("no healthy endpoint")
                    .into(),
                &src,
                t(9),
            )
            .unwrap();
        assert!(out.is_empty());
        assert!(s.on_update(&src).is_empty(), "v2 is not resent");

        let stats = s.stats();
        let eds = stats.of(EDS).unwrap();
        let last = eds.last_nack.as_ref().unwrap();
        assert_eq!(last.nonce, r2.nonce);
        assert_eq!(last.rejected_version, r2.system_version_info);
        assert_eq!(last.resources, ["a.demo:80"]);
        assert_eq!(last.message, "no healthy endpoint");
        assert_eq!(last.at, t(9));
        assert!(!last.stale);
        assert_eq!(eds.counters.nacks, 1);
        assert_eq!(
            eds.acked_resources.get("a.demo:80").map(|v| v.as_str()),
            Some("1"),
            "the client still runs v1"
        );

        src.insert(EDS, "a.demo:80", "3", b"a.demo:80@3");
        assert_eq!(sent(&one(s.on_update(&src))), ["a.demo:80@3"]);
    }

    #[test]
    fn update_while_an_ack_is_pending_goes_out_and_late_acks_still_count() {
        let mut src = source(&[(EDS, "a.demo:80", "1"), (EDS, "b.demo:80", "1")]);
        let mut s = ads();
        let r1 = one(ask(&mut s, &src, dreq(EDS).subscribe(["a.demo:80"])));
        let r2 = one(ask(&mut s, &src, dreq(EDS).subscribe(["b.demo:80"])));
        assert_ne!(r1.nonce, r2.nonce);
        src.insert(EDS, "a.demo:80", "2", b"a.demo:80@2");
        let r3 = one(s.on_update(&src));
        assert_eq!(sent(&r3), ["a.demo:80@2"]);

        // The ACKs arrive in order, after r3 went out.
        ack(&mut s, &src, EDS, &r1);
        ack(&mut s, &src, EDS, &r2);
        let stats = s.stats();
        let eds = stats.of(EDS).unwrap();
        assert_eq!(eds.counters.acks, 2);
        assert_eq!(eds.pending_nonce.as_deref(), Some(r3.nonce.as_str()));
        let acked: Vec<_> = eds
            .acked_resources
            .iter()
            .map(|(n, v)| format!("{n}@{v}"))
            .collect();
        assert_eq!(acked, ["a.demo:80@1", "b.demo:80@1"]);
    }

    #[test]
    fn resubscribing_resends_even_an_unchanged_resource() {
        let src = source(&[(EDS, "a.demo:80", "1")]);
        let mut s = ads();
        let r = one(ask(&mut s, &src, dreq(EDS).subscribe(["a.demo:80"])));
        ack(&mut s, &src, EDS, &r);
        assert!(ask(&mut s, &src, dreq(EDS).unsubscribe(["a.demo:80"])).is_empty());
        let again = one(ask(&mut s, &src, dreq(EDS).subscribe(["a.demo:80"])));
        assert_eq!(sent(&again), ["a.demo:80@1"]);
        // Even without the unsubscribe in between (DeltaSubscriptionStateTest.RemoveThenAdd).
        let twice = one(ask(&mut s, &src, dreq(EDS).subscribe(["a.demo:80"])));
        assert_eq!(sent(&twice), ["a.demo:80@1"]);
    }

    #[test]
    fn unsubscribed_resources_are_no_longer_sent() {
        let mut src = source(&[(EDS, "a.demo:80", "1"), (EDS, "b.demo:80", "1")]);
        let mut s = ads();
        one(ask(
            &mut s,
            &src,
            dreq(EDS).subscribe(["a.demo:80", "b.demo:80"]),
        ));
        let out = ask(&mut s, &src, dreq(EDS).unsubscribe(["b.demo:80"]));
        assert!(out.is_empty(), "the client drops it itself: {out:?}");
        src.insert(EDS, "b.demo:80", "2", b"")
            .remove(EDS, "a.demo:80");
        let u = one(s.on_update(&src));
        assert!(u.resources.is_empty());
        assert_eq!(u.removed_resources, ["a.demo:80"]);
        assert_eq!(
            s.stats().of(EDS).unwrap().subscribed,
            ["a.demo:80"],
            "still wanted: sent again if it comes back"
        );
    }

    #[test]
    fn missing_resource_is_reported_removed_once_and_sent_when_it_appears() {
        let mut src = source(&[(EDS, "a.demo:80", "1")]);
        let mut s = ads();
        let r = one(ask(
            &mut s,
            &src,
            dreq(EDS).subscribe(["a.demo:80", "nope.demo:80"]),
        ));
        assert_eq!(sent(&r), ["a.demo:80@1"]);
        assert_eq!(r.removed_resources, ["nope.demo:80"]);
        assert!(s.on_update(&src).is_empty(), "reported once");

        src.insert(EDS, "nope.demo:80", "1", b"");
        assert_eq!(sent(&one(s.on_update(&src))), ["nope.demo:80@1"]);
        src.remove(EDS, "nope.demo:80");
        assert_eq!(one(s.on_update(&src)).removed_resources, ["nope.demo:80"]);
    }

    #[test]
    fn reconnect_does_not_resend_what_the_client_has() {
        let src = source(&[(EDS, "a.demo:80", "1"), (EDS, "b.demo:80", "2")]);
        let mut s = ads();
        let r = one(ask(
            &mut s,
            &src,
            dreq(EDS)
                .subscribe(["a.demo:80", "b.demo:80", "c.demo:80"])
                .initial([("a.demo:80", "1"), ("b.demo:80", "1"), ("c.demo:80", "1")]),
        ));
        assert_eq!(sent(&r), ["b.demo:80@2"], "a is current; b changed");
        assert_eq!(r.removed_resources, ["c.demo:80"], "c is gone");
        let stats = s.stats();
        assert_eq!(
            stats
                .of(EDS)
                .unwrap()
                .acked_resources
                .get("a.demo:80")
                .map(|v| v.as_str()),
            Some("1"),
            "what the client said it has"
        );

        // Nothing at all when everything is current.
        let mut s = ads();
        let out = ask(
            &mut s,
            &src,
            dreq(EDS)
                .subscribe(["a.demo:80"])
                .initial([("a.demo:80", "1")]),
        );
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn initial_versions_after_the_first_request_are_ignored() {
        let src = source(&[(EDS, "a.demo:80", "1")]);
        let mut s = ads();
        one(ask(&mut s, &src, dreq(EDS).subscribe(["a.demo:80"])));
        let out = ask(&mut s, &src, dreq(EDS).initial([("a.demo:80", "0")]));
        assert!(out.is_empty(), "a late claim changes nothing: {out:?}");
    }

    #[test]
    fn wildcard_cds_gets_everything_and_deletions() {
        let mut src = source(&[(CDS, "a.demo:80", "1"), (CDS, "b.demo:80", "1")]);
        let mut s = ads();
        let r = one(ask(&mut s, &src, dreq(CDS)));
        assert_eq!(sent(&r), ["a.demo:80@1", "b.demo:80@1"]);
        assert!(s.stats().of(CDS).unwrap().wildcard);
        ack(&mut s, &src, CDS, &r);

        src.insert(CDS, "c.demo:80", "1", b"")
            .remove(CDS, "a.demo:80");
        let u = one(s.on_update(&src));
        assert_eq!(sent(&u), ["c.demo:80@1"]);
        assert_eq!(u.removed_resources, ["a.demo:80"]);
    }

    #[test]
    fn explicit_wildcard_and_named_subscriptions_combine() {
        let src = source(&[(LDS, "a.demo:80", "1"), (LDS, "b.demo:80", "1")]);
        let mut s = ads();
        let r = one(ask(&mut s, &src, dreq(LDS).subscribe(["*", "x.demo:80"])));
        assert_eq!(sent(&r), ["a.demo:80@1", "b.demo:80@1"]);
        assert_eq!(r.removed_resources, ["x.demo:80"]);
        // Leaving the wildcard removes what only it covered.
        let out = one(ask(&mut s, &src, dreq(LDS).unsubscribe(["*"])));
        assert_eq!(out.removed_resources, ["a.demo:80", "b.demo:80"]);
        assert!(!s.stats().of(LDS).unwrap().wildcard);
    }

    #[test]
    fn named_first_request_is_not_a_wildcard() {
        let src = source(&[(LDS, "a.demo:80", "1"), (LDS, "b.demo:80", "1")]);
        let mut s = ads();
        let r = one(ask(&mut s, &src, dreq(LDS).subscribe(["a.demo:80"])));
        assert_eq!(sent(&r), ["a.demo:80@1"]);
        assert!(!s.stats().of(LDS).unwrap().wildcard);
    }

    #[test]
    fn empty_wildcard_set_is_answered_once() {
        let src = MemorySource::new();
        let mut s = ads();
        let r = one(ask(&mut s, &src, dreq(CDS)));
        assert!(r.resources.is_empty() && r.removed_resources.is_empty());
        ack(&mut s, &src, CDS, &r);
        assert!(s.on_update(&src).is_empty());
    }

    #[test]
    fn stale_nonce_is_no_ack_but_subscriptions_apply() {
        let src = source(&[(EDS, "a.demo:80", "1"), (EDS, "b.demo:80", "1")]);
        let mut s = ads();
        one(ask(&mut s, &src, dreq(EDS).subscribe(["a.demo:80"])));
        let r = one(ask(
            &mut s,
            &src,
            dreq(EDS).nonce("999").subscribe(["b.demo:80"]),
        ));
        assert_eq!(sent(&r), ["b.demo:80@1"]);
        let stats = s.stats();
        let eds = stats.of(EDS).unwrap();
        assert_eq!(eds.counters.stale, 1);
        assert_eq!(eds.counters.acks, 0);
        assert!(eds.acked_resources.is_empty());

        // A NACK of an unknown nonce is kept, marked stale.
        ask(&mut s, &src, dreq(EDS).nonce("not-a-number").nack("late"));
        let nack = s.stats().of(EDS).unwrap().last_nack.clone().unwrap();
        assert!(nack.stale);
        assert!(nack.resources.is_empty());
    }

    #[test]
    fn unknown_type_url_is_a_precise_error() {
        let src = MemorySource::new();
        let mut s = ads();
        let err = s
            .handle_request(
                dreq(EDS).type_url("type.googleapis.com/foo.Bar").into(),
                &src,
                t(0),
            )
            .unwrap_err();
        assert!(matches!(err, XdsError::UnknownTypeUrl { .. }), "{err}");
        assert_eq!(s.stats().errors, 1);
        assert!(s.stats().types.is_empty());
    }

    #[test]
    fn per_zone_bodies_differ() {
        let mut src = source(&[(EDS, "echo.demo:8080", "1")]);
        src.insert_for_zone(EDS, "echo.demo:8080", "zone-a", "1-a", b"local-a");
        let mut a = ads();
        let mut b = ads();
        let ra = one(ask(
            &mut a,
            &src,
            dreq(EDS).node("a", "zone-a").subscribe(["echo.demo:8080"]),
        ));
        let rb = one(ask(
            &mut b,
            &src,
            dreq(EDS).node("b", "zone-b").subscribe(["echo.demo:8080"]),
        ));
        assert_eq!(sent(&ra), ["echo.demo:8080@1-a"]);
        assert_eq!(sent(&rb), ["echo.demo:8080@1"]);
    }

    #[test]
    fn not_ready_says_neither_present_nor_removed() {
        let mut src = source(&[(CDS, "a.demo:80", "1"), (EDS, "a.demo:80", "1")]);
        src.set_ready(false);
        let mut s = ads();
        assert!(ask(&mut s, &src, dreq(CDS)).is_empty());
        assert!(ask(&mut s, &src, dreq(EDS).subscribe(["a.demo:80"])).is_empty());
        src.set_ready(true);
        let out = s.on_update(&src);
        let got: Vec<_> = out.iter().flat_map(sent).collect();
        assert_eq!(got, ["a.demo:80@1", "a.demo:80@1"]);
        assert_eq!(out[0].type_url, CDS.type_url(), "CDS before EDS");
        assert!(out.iter().all(|r| r.removed_resources.is_empty()));
    }

    #[test]
    fn changed_cluster_resends_its_unchanged_endpoints() {
        let mut src = source(&[
            (CDS, "a.demo:80", "1"),
            (CDS, "b.demo:80", "1"),
            (EDS, "a.demo:80", "1"),
            (EDS, "b.demo:80", "1"),
        ]);
        let mut s = ads();
        let c = one(ask(&mut s, &src, dreq(CDS)));
        ack(&mut s, &src, CDS, &c);
        let e = one(ask(
            &mut s,
            &src,
            dreq(EDS).subscribe(["a.demo:80", "b.demo:80"]),
        ));
        ack(&mut s, &src, EDS, &e);

        src.insert(CDS, "a.demo:80", "2", b"");
        let out = s.on_update(&src);
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(sent(&out[0]), ["a.demo:80@2"]);
        assert_eq!(out[1].type_url, EDS.type_url());
        assert_eq!(sent(&out[1]), ["a.demo:80@1"], "only the changed cluster's");
        assert!(s.on_update(&src).is_empty());
    }
}

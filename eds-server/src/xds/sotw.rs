//! State-of-the-world xDS, one stream: subscriptions, ACK/NACK and what to
//! send, per resource type.
//!
//! ```text
//!  per type on the stream                       request (nonce N, names, error_detail?)
//!                                                        │
//!   ┌──────────┐ first request   ┌───────────────┐       ├─ N empty ........ initial / spontaneous;
//!   │ (absent) │ ──────────────> │ subscribed,   │       │                   version_info = what a
//!   └──────────┘  needs answer   │ nothing sent  │       │                   reconnecting client has
//!                                └──────┬────────┘       ├─ N == last sent
//!                      respond          │                │    ├─ no error .. ACK: record acked version
//!                  ┌────────────────────┘                │    └─ error ..... NACK: warn, count, keep;
//!                  v                                     │                   never resend that version
//!   ┌────────────────────────────┐ ACK   ┌─────────┐     └─ N older ........ stale: no ACK/NACK effect
//!   │ sent V, nonce N, awaiting  │ ────> │ acked V │
//!   │ ACK (never blocks updates) │ <──── │         │   every request also updates the subscription;
//!   └────────────────────────────┘ update└─────────┘   respond when the content to send differs from
//!          │ NACK  ^  update / names change              the last response, or an answer is owed
//!          v       │  (content differs from V)           (first request; a new LDS/CDS name; an EDS
//!   ┌─────────────────┐                                  resend after a cluster change)
//!   │ nacked V: hold  │
//!   └─────────────────┘
//! ```
//!
//! Decisions, with the sections of the Envoy "xDS REST and gRPC protocol"
//! document they rest on:
//!
//! - **Subscriptions** ("How the client specifies what resources to
//!   return"): every request carries the full list. LDS and CDS: an empty
//!   list is the legacy wildcard until the client has once sent a non-empty
//!   list; `*` is the explicit wildcard; afterwards an empty list
//!   unsubscribes from everything ("Unsubscribing From Resources"). EDS and
//!   RDS are always by name; an empty list means there is nothing to send.
//! - **Content** ("Grouping Resources into Responses", "Knowing When a
//!   Requested Resource Does Not Exist"): an LDS/CDS response carries every
//!   subscribed resource that exists (absence means deletion). An EDS/RDS
//!   response carries every one when an answer is owed, and otherwise only
//!   those the client does not hold at their current version: the client
//!   keeps the others, so a change costs what it changed, and a service too
//!   large for one response never traps a client with a 4 MiB receive
//!   limit in a reconnect loop. Such a change is split into responses of at
//!   most [`super::CHUNK_BYTES`] each. Resources that do not exist are omitted and
//!   the client's does-not-exist timer decides. EDS/RDS responses with
//!   nothing in them are not sent: for those types an empty response is a
//!   no-op ("Deleting Resources").
//! - **`version_info`** is a hash of the `(name, version)` pairs the client
//!   holds once the response is applied (the whole subscription, for the
//!   last part of a split change), so two replicas agree, and a change of
//!   subscription changes it.
//! - **When to respond** ("When to send an update"): only when that content
//!   differs from the last response, or when an answer is owed: the first
//!   request for a type; an LDS/CDS request naming something new even if its
//!   version is unchanged (go-control-plane#399: a proxyless client asks for
//!   one listener at a time and waits; a response without the name tells it
//!   at once that the listener does not exist); EDS after a cluster changed
//!   on the same ADS stream, because Envoy re-warms an updated cluster and
//!   waits for a ClusterLoadAssignment even if the endpoints did not change
//!   ("Resource warming"; go-control-plane#245).
//! - **Pending ACK** ("Resource updates"): the server never waits for an
//!   ACK. A newer state goes out at once with a new nonce; the older nonce
//!   becomes stale.
//! - **Stale nonces**: the document says not to *answer* a request with a
//!   stale nonce, and envoyproxy/envoy#10363 (and the delta note added by
//!   envoyproxy/envoy#16659) says a server that does not hold one response
//!   at a time must still *honour* its subscription change, or a client
//!   whose requests keep crossing updates never gets its new names. So a
//!   stale request is ignored for ACK/NACK purposes but its `resource_names`
//!   apply; it is answered only if that changes what we would send.
//! - **NACK** ("ACK/NACK and resource type instance version"): detected by
//!   `error_detail`, logged, counted, kept for the admin view. The rejected
//!   version is not sent again on this stream; the next different content is
//!   (the rejection may have depended on the client's state at the time, so
//!   an ACK of anything else clears the hold).
//! - **Reconnect**: a fresh stream whose first request carries
//!   `version_info` is answered anyway, with the current state (whose
//!   version equals the client's if nothing changed). The document allows
//!   skipping it only when the server knows the client subscribes to nothing
//!   new ("ACK/NACK and resource type instance version"), which SotW cannot
//!   tell for named subscriptions; and gRPC clients treat a stream that
//!   never receives a response as failed. One idempotent response per type
//!   and reconnect is cheap: bodies are shared.
//!
//! What this module is not: it does no IO and holds no resources; it reads
//! them from a [`ResourceSource`] on each call, and the caller moves every
//! response it returns to the wire, in order (see [`crate::serve`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use proto::xds::pb::envoy::service::discovery::v3::DiscoveryRequest;

use super::wire::SotwResponse;
use tracing::{debug, warn};

use super::resource::{ClientInfo, Lookup, ResourceSource, ResourceVersion};
use super::stats::{Counters, NackRecord, Protocol, SubscriberStats, TypeStats};
use super::{
    CHUNK_BYTES, NonceSeq, PUSH_ORDER, ResourceType, StreamIdentity, StreamKind, XdsError, chunked,
    content_version, is_full_state,
};

/// The state-of-the-world protocol state of one gRPC stream (ADS or a
/// per-type service).
#[derive(Debug)]
pub struct SotwStream {
    id: StreamIdentity,
    nonces: NonceSeq,
    types: BTreeMap<ResourceType, TypeState>,
}

/// One type's state on the stream.
#[derive(Debug)]
struct TypeState {
    /// Subscribed to everything the server has for this client (LDS/CDS).
    wildcard: bool,
    /// No request for this type has named anything yet, so an empty list
    /// still means the legacy wildcard.
    legacy_possible: bool,
    /// Explicitly subscribed names (without `*`).
    names: BTreeSet<String>,
    /// An answer is owed even if the content did not change.
    needs_answer: bool,
    last_sent: Option<Sent>,
    /// The nonce the client last ACKed or NACKed.
    answered_nonce: Option<String>,
    acked: Option<Acked>,
    /// The version the client rejected; not sent again until an ACK.
    nacked_version: Option<String>,
    last_nack: Option<NackRecord>,
    counters: Counters,
}

#[derive(Debug)]
struct Sent {
    nonce: String,
    version_info: String,
    /// What the client holds once it applied this response (and, for EDS
    /// and RDS, the ones before it): every resource of an LDS/CDS response;
    /// for EDS/RDS, what decides which resources the next change carries.
    resources: BTreeMap<String, ResourceVersion>,
}

#[derive(Debug)]
struct Acked {
    version: String,
    resources: BTreeMap<String, ResourceVersion>,
    at: SystemTime,
}

/// What a request says about earlier responses.
#[derive(Debug)]
enum Role<'a> {
    /// No nonce: the first request, or a spontaneous one before any response.
    Initial,
    /// The latest nonce without `error_detail`: this response was applied.
    Ack(&'a Sent),
    /// The latest nonce with `error_detail`: this response was rejected.
    Nack(&'a Sent),
    /// A nonce other than the latest one sent.
    Stale,
}

impl TypeState {
    fn new() -> Self {
        TypeState {
            wildcard: false,
            legacy_possible: true,
            names: BTreeSet::new(),
            needs_answer: false,
            last_sent: None,
            answered_nonce: None,
            acked: None,
            nacked_version: None,
            last_nack: None,
            counters: Counters::default(),
        }
    }

    fn role<'a>(last_sent: Option<&'a Sent>, req: &DiscoveryRequest) -> Role<'a> {
        if req.response_nonce.is_empty() {
            return Role::Initial;
        }
        match last_sent {
            Some(sent) if sent.nonce == req.response_nonce => {
                if req.error_detail.is_some() {
                    Role::Nack(sent)
                } else {
                    Role::Ack(sent)
                }
            }
            _ => Role::Stale,
        }
    }

    /// Applies a request's `resource_names`; true if it asks for something
    /// it was not subscribed to before.
    fn subscribe(&mut self, ty: ResourceType, names: Vec<String>) -> bool {
        let (wildcard, names): (bool, BTreeSet<String>) = if !is_full_state(ty) {
            (false, names.into_iter().collect())
        } else if names.is_empty() && self.legacy_possible {
            (true, BTreeSet::new())
        } else {
            self.legacy_possible = false;
            let wildcard = names.iter().any(|n| n == "*");
            (wildcard, names.into_iter().filter(|n| n != "*").collect())
        };
        let added = (wildcard && !self.wildcard) || names.difference(&self.names).next().is_some();
        if !is_full_state(ty)
            && let Some(sent) = &mut self.last_sent
        {
            // An EDS/RDS response may carry only what changed, so what the
            // client holds decides what is sent; a name it unsubscribed
            // from is gone at the client and is sent whole if asked again.
            sent.resources.retain(|name, _| names.contains(name));
        }
        self.wildcard = wildcard;
        self.names = names;
        added
    }

    /// The last response, if the client rejected it and nothing was sent
    /// since: a SotW response is accepted or rejected as a whole.
    fn rejected_last(&self) -> Option<&Sent> {
        self.last_sent.as_ref().filter(|s| {
            self.answered_nonce.as_deref() == Some(s.nonce.as_str())
                && self.nacked_version.as_deref() == Some(s.version_info.as_str())
        })
    }

    fn stats(&self, ty: ResourceType) -> TypeStats {
        let pending_nonce = self
            .last_sent
            .as_ref()
            .filter(|s| self.answered_nonce.as_deref() != Some(s.nonce.as_str()))
            .map(|s| s.nonce.clone());
        TypeStats {
            type_url: ty.type_url(),
            wildcard: self.wildcard,
            subscribed: self.names.iter().cloned().collect(),
            sent_version: self.last_sent.as_ref().map(|s| s.version_info.clone()),
            sent_resources: self
                .last_sent
                .as_ref()
                .map(|s| s.resources.clone())
                .unwrap_or_default(),
            pending_nonce,
            acked_version: self.acked.as_ref().map(|a| a.version.clone()),
            acked_resources: self
                .acked
                .as_ref()
                .map(|a| a.resources.clone())
                .unwrap_or_default(),
            nacked_resources: self
                .rejected_last()
                .map(|s| s.resources.clone())
                .unwrap_or_default(),
            last_ack_at: self.acked.as_ref().map(|a| a.at),
            last_nack: self.last_nack.clone(),
            counters: self.counters,
        }
    }
}

impl SotwStream {
    /// A new stream of `kind`. The client's identity comes from the first
    /// request that carries a `Node`.
    pub fn new(kind: StreamKind) -> Self {
        SotwStream {
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
    /// `source`, and returns what to send: usually nothing or one response
    /// for the request's type; on ADS, a cluster change may add an EDS
    /// response after it.
    ///
    /// An error (unknown type URL, ...) should end the stream with the
    /// `tonic::Status` it converts into; the stream's state is unchanged.
    pub fn handle_request<S: ResourceSource + ?Sized>(
        &mut self,
        req: DiscoveryRequest,
        source: &S,
        now: SystemTime,
    ) -> Result<Vec<SotwResponse>, XdsError> {
        let ty = self.id.admit(&req.type_url, req.node.as_ref(), "sotw")?;
        let first = !self.types.contains_key(&ty);
        let st = self.types.entry(ty).or_insert_with(TypeState::new);
        st.counters.requests += 1;

        match TypeState::role(st.last_sent.as_ref(), &req) {
            Role::Initial => {
                // A reconnecting client tells us what it has: show it in the
                // admin view until it acknowledges something on this stream.
                if st.acked.is_none() && !req.version_info.is_empty() {
                    st.acked = Some(Acked {
                        version: req.version_info.clone(),
                        resources: BTreeMap::new(),
                        at: now,
                    });
                }
            }
            Role::Ack(sent) => {
                st.counters.acks += 1;
                st.answered_nonce = Some(sent.nonce.clone());
                st.acked = Some(Acked {
                    version: req.version_info.clone(),
                    resources: sent.resources.clone(),
                    at: now,
                });
                st.nacked_version = None;
            }
            Role::Nack(sent) => {
                let record = nack_record(&req, Some(sent), false, now);
                st.answered_nonce = Some(sent.nonce.clone());
                st.nacked_version = Some(sent.version_info.clone());
                log_nack(&self.id.client, ty, &record);
                st.counters.nacks += 1;
                st.last_nack = Some(record);
            }
            Role::Stale => {
                st.counters.stale += 1;
                debug!(
                    node = %self.id.client.node_id,
                    r#type = ty.short_name(),
                    nonce = %req.response_nonce,
                    latest = st.last_sent.as_ref().map(|s| s.nonce.as_str()),
                    "stale nonce: not an ACK/NACK of the latest response; names still apply"
                );
                if req.error_detail.is_some() {
                    // Still a real rejection an operator wants to see, but
                    // of a response that has been superseded already.
                    let record = nack_record(&req, None, true, now);
                    log_nack(&self.id.client, ty, &record);
                    st.counters.nacks += 1;
                    st.last_nack = Some(record);
                }
            }
        }

        let added = st.subscribe(ty, req.resource_names);
        if first || (added && is_full_state(ty)) {
            st.needs_answer = true;
        }

        let mut out = Vec::new();
        self.respond_to(ty, source, &mut out);
        if ty == ResourceType::Cluster && !out.is_empty() {
            // A changed CDS response marked EDS as owed; send it right after.
            self.respond_to(ResourceType::ClusterLoadAssignment, source, &mut out);
        }
        Ok(out)
    }

    /// A new snapshot arrived: what to send, in make-before-break order
    /// (CDS, EDS, LDS, RDS), one response per type whose content changed.
    pub fn on_update<S: ResourceSource + ?Sized>(&mut self, source: &S) -> Vec<SotwResponse> {
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
            protocol: Protocol::Sotw,
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
        out: &mut Vec<SotwResponse>,
    ) {
        let SotwStream {
            id, nonces, types, ..
        } = self;
        let Some(st) = types.get_mut(&ty) else {
            return;
        };
        let previous = st.last_sent.as_ref().map(|s| s.version_info.clone());
        let responses = respond(ty, st, source, &id.client, nonces);
        let Some(response) = responses.last() else {
            return;
        };
        // Envoy re-warms a cluster whose definition changed and waits for
        // its ClusterLoadAssignment even if the endpoints are the same
        // ("Resource warming"), so a changed CDS response owes an EDS one.
        if ty == ResourceType::Cluster
            && previous.is_some_and(|p| p != response.version_info)
            && let Some(eds) = types.get_mut(&ResourceType::ClusterLoadAssignment)
        {
            eds.needs_answer = true;
        }
        out.extend(responses);
    }
}

/// The `(name, version)` pairs a response for `ty` would carry now, sorted by
/// name; `None` if the source cannot tell yet for a type whose responses
/// must be complete.
fn view<S: ResourceSource + ?Sized>(
    ty: ResourceType,
    st: &TypeState,
    source: &S,
    client: &ClientInfo,
) -> Option<Vec<(String, ResourceVersion)>> {
    let mut wanted: BTreeSet<String> = st.names.clone();
    if st.wildcard {
        wanted.extend(source.names(ty, client)?);
    }
    let mut view = Vec::with_capacity(wanted.len());
    for name in wanted {
        match source.version_of(ty, &name, client) {
            Lookup::Found(version) => view.push((name, version)),
            Lookup::DoesNotExist => {}
            // An LDS/CDS response without it would delete it at the client.
            Lookup::NotReady if is_full_state(ty) => return None,
            // EDS/RDS: send what is ready; this one follows in a later update.
            Lookup::NotReady => {}
        }
    }
    Some(view)
}

/// The responses for `ty` if one is due (several when an EDS or RDS change
/// is larger than [`CHUNK_BYTES`]), recording what the client now holds.
///
/// LDS and CDS responses carry everything (absence means deletion). An
/// EDS or RDS response carries everything when an answer is owed (a first
/// request, a cluster re-warming) and otherwise only the resources the
/// client does not hold at their current version: the protocol lets the
/// client keep the others ("Grouping Resources into Responses"), and a
/// one-endpoint change in one of many large services then costs one
/// ClusterLoadAssignment on the wire, not all of them.
fn respond<S: ResourceSource + ?Sized>(
    ty: ResourceType,
    st: &mut TypeState,
    source: &S,
    client: &ClientInfo,
    nonces: &mut NonceSeq,
) -> Vec<SotwResponse> {
    if !st.wildcard && st.names.is_empty() {
        // Nothing subscribed (an EDS request without names, or everything
        // unsubscribed): the client expects nothing.
        return Vec::new();
    }
    let Some(view) = view(ty, st, source, client) else {
        return Vec::new();
    };
    let full = is_full_state(ty);
    if !full && view.is_empty() {
        return Vec::new();
    }
    let version_info = content_version(view.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    // Whether the client holds something else than the view; not a version
    // comparison, because an EDS/RDS deletion changes what the client holds
    // without a response (see below).
    let changed = st.last_sent.as_ref().is_none_or(|s| {
        s.resources.len() != view.len()
            || !s
                .resources
                .iter()
                .zip(&view)
                .all(|((n, v), (name, version))| n == name && v == version)
    });
    if !changed && !st.needs_answer {
        return Vec::new();
    }
    if st.nacked_version.as_deref() == Some(version_info.as_str()) {
        debug!(
            node = %client.node_id,
            r#type = ty.short_name(),
            version = %version_info,
            "not resending a version the client rejected"
        );
        return Vec::new();
    }

    let held = match &st.last_sent {
        Some(sent) if !full && !st.needs_answer => Some(&sent.resources),
        _ => None,
    };
    // What the client holds once these responses are applied: first what
    // it keeps, then each response's resources.
    let mut holds = BTreeMap::new();
    let mut carried = Vec::new();
    for (name, version) in view {
        if held.and_then(|h| h.get(&name)) == Some(&version) {
            holds.insert(name, version);
        } else if let Lookup::Found(res) = source.get(ty, &name, client) {
            // version_of and get agree on one snapshot (ResourceSource
            // contract).
            carried.push(res);
        }
    }
    if carried.is_empty() && !full {
        // Only deletions: an EDS/RDS response without resources changes
        // nothing at the client, so none is sent; a later re-creation is
        // sent because the client no longer holds it.
        if let Some(sent) = &mut st.last_sent {
            sent.resources = holds;
        }
        return Vec::new();
    }

    let chunks = if full {
        vec![carried]
    } else {
        chunked(carried, CHUNK_BYTES)
    };
    let last = chunks.len() - 1;
    let mut out = Vec::with_capacity(chunks.len());
    for (i, resources) in chunks.into_iter().enumerate() {
        for res in &resources {
            holds.insert(res.name().to_owned(), res.version().clone());
        }
        // Each part names what the client holds after applying it; the last
        // one is the version of the whole view.
        let version = if i == last {
            version_info.clone()
        } else {
            content_version(holds.iter().map(|(n, v)| (n.as_str(), v.as_str())))
        };
        let (_, nonce) = nonces.next();
        st.counters.responses += 1;
        out.push(SotwResponse {
            version_info: version,
            resources,
            type_url: ty.type_url().to_owned(),
            nonce,
        });
    }
    st.last_sent = out.last().map(|r| Sent {
        nonce: r.nonce.clone(),
        version_info,
        resources: holds,
    });
    st.needs_answer = false;
    out
}

fn nack_record(
    req: &DiscoveryRequest,
    sent: Option<&Sent>,
    stale: bool,
    now: SystemTime,
) -> NackRecord {
    let detail = req.error_detail.clone().unwrap_or_default();
    NackRecord {
        rejected_version: sent.map(|s| s.version_info.clone()).unwrap_or_default(),
        client_version: req.version_info.clone(),
        nonce: req.response_nonce.clone(),
        code: detail.code,
        message: detail.message,
        resources: sent
            .map(|s| s.resources.keys().cloned().collect())
            .unwrap_or_default(),
        stale,
        at: now,
    }
}

fn log_nack(client: &ClientInfo, ty: ResourceType, record: &NackRecord) {
    warn!(
        node = %client.node_id,
        zone = client.zone.as_deref().unwrap_or(""),
        r#type = ty.short_name(),
        nonce = %record.nonce,
        rejected_version = %record.rejected_version,
        client_version = %record.client_version,
        stale = record.stale,
        code = record.code,
        message = %record.message,
        "client rejected an xDS response (NACK)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::MemorySource;
    use crate::xds::fixtures::*;
    use proto::resources::CLUSTER_TYPE_URL;
    use proto::xds::pb::envoy::service::discovery::v3::DiscoveryResponse;

    fn ads() -> SotwStream {
        SotwStream::new(StreamKind::Aggregated)
    }

    /// Sends one request and unwraps the result.
    fn ask(s: &mut SotwStream, src: &MemorySource, r: Req) -> Vec<DiscoveryResponse> {
        s.handle_request(r.into(), src, t(0))
            .expect("valid request")
            .iter()
            .map(SotwResponse::to_proto)
            .collect()
    }

    fn one<R: Into<DiscoveryResponse> + std::fmt::Debug>(mut out: Vec<R>) -> DiscoveryResponse {
        assert_eq!(out.len(), 1, "exactly one response: {out:?}");
        out.remove(0).into()
    }

    /// Subscribes to `names` and ACKs the answer; returns the response.
    fn subscribe_and_ack(
        s: &mut SotwStream,
        src: &MemorySource,
        ty: ResourceType,
        names: &[&str],
    ) -> DiscoveryResponse {
        let r = one(ask(s, src, req(ty).names(names.iter().copied())));
        let ack = req(ty)
            .names(names.iter().copied())
            .nonce(&r.nonce)
            .version(&r.version_info);
        assert!(ask(s, src, ack).is_empty(), "an ACK needs no answer");
        r
    }

    #[test]
    fn first_request_is_answered_with_the_named_resources() {
        let src = source(&[(EDS, "echo.demo:8080", "1"), (EDS, "other.demo:80", "1")]);
        let mut s = ads();
        let r = one(ask(
            &mut s,
            &src,
            req(EDS).node("pod-1", "zone-a").names(["echo.demo:8080"]),
        ));
        assert_eq!(r.type_url, EDS.type_url());
        assert_eq!(bodies(&r), ["echo.demo:8080@1"]);
        assert!(!r.nonce.is_empty());
        assert_eq!(r.version_info.len(), 16);
        assert_eq!(s.client().node_id, "pod-1");
        assert_eq!(s.client().zone.as_deref(), Some("zone-a"));
    }

    #[test]
    fn an_eds_change_carries_only_the_assignments_that_changed() {
        let names = ["a.demo:80", "b.demo:80", "c.demo:80"];
        let mut src = source(&[
            (EDS, names[0], "1"),
            (EDS, names[1], "1"),
            (EDS, names[2], "1"),
        ]);
        let mut s = ads();
        let first = subscribe_and_ack(&mut s, &src, EDS, &names);
        assert_eq!(bodies(&first).len(), 3, "a first answer carries everything");

        src.insert(EDS, "b.demo:80", "2", b"b.demo:80@2");
        let r = one(s.on_update(&src));
        assert_eq!(bodies(&r), ["b.demo:80@2"], "only what changed travels");
        // The version is the whole subscription's, as a fresh stream that
        // received everything would report it.
        let fresh = one(ask(&mut ads(), &src, req(EDS).names(names)));
        assert_eq!(bodies(&fresh).len(), 3);
        assert_eq!(r.version_info, fresh.version_info);
        let eds = s.stats().of(EDS).cloned().unwrap();
        assert_eq!(eds.sent_resources.len(), 3, "the client holds all three");

        // A re-warming cluster is owed its assignment whatever changed.
        src.insert(CDS, "b.demo:80", "2", b"cluster b");
        subscribe_and_ack(&mut s, &src, CDS, &["b.demo:80"]);
        src.insert(CDS, "b.demo:80", "3", b"cluster b, new policy");
        let out = s.on_update(&src);
        assert_eq!(out.len(), 2, "CDS, then the owed EDS: {out:?}");
        assert_eq!(bodies(&out[1]).len(), 3);
    }

    #[test]
    fn a_name_unsubscribed_then_asked_again_is_sent_again() {
        let src = source(&[(EDS, "a.demo:80", "1"), (EDS, "b.demo:80", "1")]);
        let mut s = ads();
        subscribe_and_ack(&mut s, &src, EDS, &["a.demo:80", "b.demo:80"]);
        // Dropping a name leaves nothing new to send.
        assert!(ask(&mut s, &src, req(EDS).names(["a.demo:80"])).is_empty());
        let r = one(ask(
            &mut s,
            &src,
            req(EDS).names(["a.demo:80", "b.demo:80"]),
        ));
        assert_eq!(bodies(&r), ["b.demo:80@1"]);
    }

    #[test]
    fn a_deleted_assignment_sends_nothing_and_its_return_is_sent() {
        let mut src = source(&[(EDS, "a.demo:80", "1"), (EDS, "b.demo:80", "1")]);
        let mut s = ads();
        subscribe_and_ack(&mut s, &src, EDS, &["a.demo:80", "b.demo:80"]);
        src.remove(EDS, "b.demo:80");
        assert!(
            s.on_update(&src).is_empty(),
            "an empty EDS response is a no-op"
        );
        src.insert(EDS, "b.demo:80", "1", b"b.demo:80@1");
        assert_eq!(bodies(&one(s.on_update(&src))), ["b.demo:80@1"]);
    }

    #[test]
    fn a_change_larger_than_a_chunk_is_split_into_responses_within_it() {
        let (src, names) = large_eds();
        let mut s = ads();
        let out = s
            .handle_request(
                req(EDS).names(names.iter().map(String::as_str)).into(),
                &src,
                t(0),
            )
            .unwrap();
        let parts: Vec<_> = out.iter().map(|r| r.resources.as_slice()).collect();
        assert_split_into_parts(&parts, &names);
        let versions: BTreeSet<&str> = out.iter().map(|r| r.version_info.as_str()).collect();
        assert_eq!(
            versions.len(),
            3,
            "each part names what the client then holds"
        );
        // The last part's version is the whole subscription's; an ACK of it
        // settles the stream, ACKs of earlier parts are stale.
        let last = out.last().unwrap();
        for r in &out {
            let ack = req(EDS)
                .names(names.iter().map(String::as_str))
                .nonce(&r.nonce)
                .version(&r.version_info);
            assert!(ask(&mut s, &src, ack).is_empty());
        }
        let eds = s.stats().of(EDS).cloned().unwrap();
        assert_eq!(
            eds.acked_version.as_deref(),
            Some(last.version_info.as_str())
        );
        assert_eq!(eds.acked_resources.len(), 5);
        assert_eq!(eds.pending_nonce, None);
        assert_eq!(eds.counters.stale, 2);
    }

    #[test]
    fn cds_is_never_split() {
        let big = vec![b'x'; 400 * 1024];
        let mut src = MemorySource::new();
        for i in 0..5 {
            src.insert(CDS, &format!("svc-{i}.demo:80"), "1", &big);
        }
        let r = one(ask(&mut ads(), &src, req(CDS)));
        assert_eq!(
            r.resources.len(),
            5,
            "absence from a CDS response means deletion"
        );
    }

    #[test]
    fn empty_eds_request_has_nothing_to_send() {
        let src = source(&[(EDS, "echo.demo:8080", "1")]);
        let mut s = ads();
        assert!(ask(&mut s, &src, req(EDS)).is_empty());
        assert!(s.on_update(&src).is_empty());
    }

    #[test]
    fn ack_records_the_version_and_sends_nothing() {
        let src = source(&[(EDS, "echo.demo:8080", "1")]);
        let mut s = ads();
        let r = subscribe_and_ack(&mut s, &src, EDS, &["echo.demo:8080"]);
        let stats = s.stats();
        let eds = stats.of(EDS).unwrap();
        assert_eq!(eds.acked_version.as_deref(), Some(r.version_info.as_str()));
        assert_eq!(eds.sent_version, eds.acked_version);
        assert_eq!(eds.pending_nonce, None);
        assert_eq!(
            eds.acked_resources
                .get("echo.demo:8080")
                .map(|v| v.as_str()),
            Some("1")
        );
        assert_eq!(eds.counters.acks, 1);
        assert!(s.on_update(&src).is_empty(), "nothing changed");
    }

    #[test]
    fn nack_is_recorded_and_the_same_version_is_not_resent() {
        let mut src = source(&[(EDS, "echo.demo:8080", "1")]);
        let mut s = ads();
        let v1 = subscribe_and_ack(&mut s, &src, EDS, &["echo.demo:8080"]);
        src.insert(EDS, "echo.demo:8080", "2", b"echo.demo:8080@2");
        let v2 = one(s.on_update(&src));

        let nack = req(EDS)
            .names(["echo.demo:8080"])
            .nonce(&v2.nonce)
            .version(&v1.version_info)
            .nack("duplicate address 10.0.0.1:80");
        let out = s.handle_request(nack.into(), &src, t(42)).unwrap();
        assert!(out.is_empty(), "the rejected version is not resent");
        assert!(s.on_update(&src).is_empty(), "nor on an unrelated update");

        let stats = s.stats();
        let eds = stats.of(EDS).unwrap();
        let last = eds.last_nack.as_ref().unwrap();
        assert_eq!(last.rejected_version, v2.version_info);
        assert_eq!(last.client_version, v1.version_info);
        assert_eq!(last.nonce, v2.nonce);
        assert_eq!(last.message, "duplicate address 10.0.0.1:80");
        assert_eq!(last.resources, ["echo.demo:8080"]);
        assert_eq!(last.at, t(42));
        assert!(!last.stale);
        assert_eq!(eds.counters.nacks, 1);
        assert_eq!(stats.counters.nacks, 1);
        assert_eq!(
            eds.acked_version.as_deref(),
            Some(v1.version_info.as_str()),
            "the client still runs v1"
        );

        // A newer version goes out again.
        src.insert(EDS, "echo.demo:8080", "3", b"echo.demo:8080@3");
        assert_eq!(bodies(&one(s.on_update(&src))), ["echo.demo:8080@3"]);
    }

    #[test]
    fn update_while_an_ack_is_pending_goes_out_at_once_with_a_new_nonce() {
        let mut src = source(&[(EDS, "echo.demo:8080", "1")]);
        let mut s = ads();
        let r1 = one(ask(&mut s, &src, req(EDS).names(["echo.demo:8080"])));
        src.insert(EDS, "echo.demo:8080", "2", b"echo.demo:8080@2");
        let r2 = one(s.on_update(&src));
        assert_ne!(r2.nonce, r1.nonce);
        assert_ne!(r2.version_info, r1.version_info);
        assert_eq!(bodies(&r2), ["echo.demo:8080@2"]);
        assert_eq!(
            s.stats().of(EDS).unwrap().pending_nonce.as_deref(),
            Some(r2.nonce.as_str())
        );

        // The late ACK of r1 is stale: it neither acks r2 nor triggers a resend.
        let late = req(EDS)
            .names(["echo.demo:8080"])
            .nonce(&r1.nonce)
            .version(&r1.version_info);
        assert!(ask(&mut s, &src, late).is_empty());
        let stats = s.stats();
        let eds = stats.of(EDS).unwrap();
        assert_eq!(eds.counters.stale, 1);
        assert_eq!(eds.counters.acks, 0);
        assert_eq!(eds.pending_nonce.as_deref(), Some(r2.nonce.as_str()));
    }

    #[test]
    fn subscribing_to_another_name_is_answered_with_it_alone() {
        let src = source(&[(EDS, "a.demo:80", "1"), (EDS, "b.demo:80", "1")]);
        let mut s = ads();
        let r1 = subscribe_and_ack(&mut s, &src, EDS, &["a.demo:80"]);
        let r2 = one(ask(
            &mut s,
            &src,
            req(EDS)
                .names(["a.demo:80", "b.demo:80"])
                .nonce(&r1.nonce)
                .version(&r1.version_info),
        ));
        // The client keeps a (EDS responses need not be complete).
        assert_eq!(bodies(&r2), ["b.demo:80@1"]);
        let eds = s.stats().of(EDS).cloned().unwrap();
        assert_eq!(eds.sent_resources.len(), 2);
    }

    #[test]
    fn unsubscribing_sends_nothing_then_nothing_for_it() {
        let mut src = source(&[(EDS, "a.demo:80", "1"), (EDS, "b.demo:80", "1")]);
        let mut s = ads();
        let r1 = subscribe_and_ack(&mut s, &src, EDS, &["a.demo:80", "b.demo:80"]);
        let out = ask(
            &mut s,
            &src,
            req(EDS)
                .names(["a.demo:80"])
                .nonce(&r1.nonce)
                .version(&r1.version_info),
        );
        assert!(out.is_empty(), "the client keeps a, and drops b itself");
        src.insert(EDS, "b.demo:80", "2", b"b.demo:80@2");
        assert!(s.on_update(&src).is_empty(), "b is no longer subscribed");
        assert_eq!(s.stats().of(EDS).unwrap().subscribed, ["a.demo:80"]);
    }

    #[test]
    fn new_listener_with_unchanged_version_is_answered() {
        // go-control-plane#399: a proxyless client asks for one listener at a
        // time and waits for each.
        let src = source(&[(LDS, "a.demo:80", "1"), (LDS, "b.demo:80", "1")]);
        let mut s = ads();
        let r1 = subscribe_and_ack(&mut s, &src, LDS, &["a.demo:80"]);
        let r2 = one(ask(
            &mut s,
            &src,
            req(LDS)
                .names(["a.demo:80", "b.demo:80"])
                .nonce(&r1.nonce)
                .version(&r1.version_info),
        ));
        assert_eq!(bodies(&r2), ["a.demo:80@1", "b.demo:80@1"]);
    }

    #[test]
    fn new_listener_that_does_not_exist_is_answered_without_it() {
        // The complete LDS set without the name tells the client at once.
        let src = source(&[(LDS, "a.demo:80", "1")]);
        let mut s = ads();
        let r1 = subscribe_and_ack(&mut s, &src, LDS, &["a.demo:80"]);
        let r2 = one(ask(
            &mut s,
            &src,
            req(LDS)
                .names(["a.demo:80", "nope.demo:80"])
                .nonce(&r1.nonce)
                .version(&r1.version_info),
        ));
        assert_eq!(bodies(&r2), ["a.demo:80@1"]);
        assert_eq!(r2.version_info, r1.version_info, "same content, new nonce");
        assert_ne!(r2.nonce, r1.nonce);
    }

    #[test]
    fn missing_eds_resources_are_omitted_and_sent_when_they_appear() {
        let mut src = source(&[(EDS, "a.demo:80", "1")]);
        let mut s = ads();
        let r = one(ask(
            &mut s,
            &src,
            req(EDS).names(["a.demo:80", "nope.demo:80"]),
        ));
        assert_eq!(bodies(&r), ["a.demo:80@1"]);

        let mut s = ads();
        assert!(
            ask(&mut s, &src, req(EDS).names(["nope.demo:80"])).is_empty(),
            "an empty EDS response is a no-op; the client's timer decides"
        );
        src.insert(EDS, "nope.demo:80", "1", b"nope.demo:80@1");
        assert_eq!(bodies(&one(s.on_update(&src))), ["nope.demo:80@1"]);
    }

    #[test]
    fn wildcard_lds_and_cds_get_the_full_set_and_deletions() {
        let mut src = source(&[
            (CDS, "a.demo:80", "1"),
            (CDS, "b.demo:80", "1"),
            (LDS, "a.demo:80", "1"),
        ]);
        let mut s = ads();
        let cds = one(ask(&mut s, &src, req(CDS)));
        assert_eq!(bodies(&cds), ["a.demo:80@1", "b.demo:80@1"]);
        let lds = one(ask(&mut s, &src, req(LDS).names(["*"])));
        assert_eq!(bodies(&lds), ["a.demo:80@1"]);
        assert!(s.stats().of(CDS).unwrap().wildcard);

        // ACK with an empty list keeps the legacy wildcard.
        let ack = req(CDS).nonce(&cds.nonce).version(&cds.version_info);
        assert!(ask(&mut s, &src, ack).is_empty());
        assert!(s.stats().of(CDS).unwrap().wildcard);

        // A deletion is a full set without it.
        src.remove(CDS, "b.demo:80");
        let out = s.on_update(&src);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].type_url, CLUSTER_TYPE_URL);
        assert_eq!(bodies(&out[0]), ["a.demo:80@1"]);

        // Deleting the last one sends an empty set: "delete them all".
        src.remove(CDS, "a.demo:80");
        assert!(one(s.on_update(&src)).resources.is_empty());
    }

    #[test]
    fn empty_wildcard_set_is_still_answered() {
        let src = MemorySource::new();
        let mut s = ads();
        let r = one(ask(&mut s, &src, req(CDS)));
        assert!(r.resources.is_empty(), "tells the client there are none");
    }

    #[test]
    fn named_list_ends_the_legacy_wildcard_and_empty_then_means_none() {
        let src = source(&[(CDS, "a.demo:80", "1"), (CDS, "b.demo:80", "1")]);
        let mut s = ads();
        let r1 = one(ask(&mut s, &src, req(CDS)));
        let r2 = one(ask(
            &mut s,
            &src,
            req(CDS)
                .names(["a.demo:80"])
                .nonce(&r1.nonce)
                .version(&r1.version_info),
        ));
        assert_eq!(bodies(&r2), ["a.demo:80@1"]);
        assert!(!s.stats().of(CDS).unwrap().wildcard);
        let out = ask(
            &mut s,
            &src,
            req(CDS).nonce(&r2.nonce).version(&r2.version_info),
        );
        assert!(out.is_empty(), "unsubscribed from everything");
        let stats = s.stats();
        let cds = stats.of(CDS).unwrap();
        assert!(!cds.wildcard && cds.subscribed.is_empty());
    }

    #[test]
    fn stale_request_still_changes_the_subscription() {
        let mut src = source(&[(EDS, "a.demo:80", "1"), (EDS, "b.demo:80", "1")]);
        let mut s = ads();
        let r1 = one(ask(&mut s, &src, req(EDS).names(["a.demo:80"])));
        src.insert(EDS, "a.demo:80", "2", b"a.demo:80@2");
        let r2 = one(s.on_update(&src));
        // The client had not seen r2 when it asked for b (nonce r1).
        let crossing = req(EDS)
            .names(["a.demo:80", "b.demo:80"])
            .nonce(&r1.nonce)
            .version(&r1.version_info);
        let r3 = one(ask(&mut s, &src, crossing));
        // a@2 is on its way in r2, which the client reads first.
        assert_eq!(bodies(&r3), ["b.demo:80@1"]);
        assert_ne!(r3.nonce, r2.nonce);
        let stats = s.stats();
        let eds = stats.of(EDS).unwrap();
        assert_eq!(eds.counters.stale, 1);
        assert_eq!(eds.acked_version, None, "a stale nonce acks nothing");
    }

    #[test]
    fn stale_nack_is_counted_but_holds_nothing_back() {
        let mut src = source(&[(EDS, "a.demo:80", "1")]);
        let mut s = ads();
        let r1 = one(ask(&mut s, &src, req(EDS).names(["a.demo:80"])));
        src.insert(EDS, "a.demo:80", "2", b"a.demo:80@2");
        let _r2 = one(s.on_update(&src));
        let nack = req(EDS).names(["a.demo:80"]).nonce(&r1.nonce).nack("bad");
        assert!(ask(&mut s, &src, nack).is_empty());
        let stats = s.stats();
        let eds = stats.of(EDS).unwrap();
        let last = eds.last_nack.as_ref().unwrap();
        assert!(last.stale);
        assert_eq!(last.rejected_version, "");
        assert_eq!(eds.counters.nacks, 1);
        assert_eq!(eds.counters.stale, 1);
    }

    #[test]
    fn reconnect_is_answered_with_the_same_version() {
        let src = source(&[(EDS, "a.demo:80", "1")]);
        let mut old = ads();
        let before = subscribe_and_ack(&mut old, &src, EDS, &["a.demo:80"]);

        // Another replica (a fresh state machine) with the same snapshot.
        let mut s = ads();
        let r = one(ask(
            &mut s,
            &src,
            req(EDS).names(["a.demo:80"]).version(&before.version_info),
        ));
        assert_eq!(r.version_info, before.version_info, "replicas agree");
        assert_eq!(bodies(&r), ["a.demo:80@1"]);
        assert_eq!(
            s.stats().of(EDS).unwrap().acked_version.as_deref(),
            Some(before.version_info.as_str()),
            "what the client said it has"
        );
    }

    #[test]
    fn unknown_type_url_is_a_precise_error() {
        let src = MemorySource::new();
        let mut s = ads();
        let secret = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
        let err = s
            .handle_request(req(EDS).type_url(secret).into(), &src, t(0))
            .unwrap_err();
        assert_eq!(
            err,
            XdsError::UnknownTypeUrl {
                type_url: secret.into()
            }
        );
        assert_eq!(s.stats().errors, 1);
        assert!(s.stats().types.is_empty(), "no state was created");

        let mut single = SotwStream::new(StreamKind::Single(EDS));
        let err = single
            .handle_request(req(CDS).into(), &src, t(0))
            .unwrap_err();
        assert!(matches!(err, XdsError::WrongType { .. }), "{err}");
        // The implicit type on a per-type stream is fine.
        let ok = single.handle_request(req(EDS).type_url("").into(), &src, t(0));
        assert!(ok.is_ok());
    }

    #[test]
    fn per_zone_bodies_differ_and_each_zone_shares_one() {
        let mut src = source(&[(EDS, "echo.demo:8080", "1")]);
        src.insert_for_zone(EDS, "echo.demo:8080", "zone-a", "1-a", b"local-a");
        let mut a = ads();
        let mut b = ads();
        let ra = one(ask(
            &mut a,
            &src,
            req(EDS).node("a", "zone-a").names(["echo.demo:8080"]),
        ));
        let rb = one(ask(
            &mut b,
            &src,
            req(EDS).node("b", "zone-b").names(["echo.demo:8080"]),
        ));
        assert_eq!(bodies(&ra), ["local-a"]);
        assert_eq!(bodies(&rb), ["echo.demo:8080@1"]);
        assert_ne!(ra.version_info, rb.version_info);
    }

    #[test]
    fn nothing_is_sent_until_the_source_is_ready() {
        let mut src = source(&[(CDS, "a.demo:80", "1"), (EDS, "a.demo:80", "1")]);
        src.set_ready(false);
        let mut s = ads();
        assert!(ask(&mut s, &src, req(CDS)).is_empty());
        assert!(ask(&mut s, &src, req(EDS).names(["a.demo:80"])).is_empty());
        src.set_ready(true);
        let out = s.on_update(&src);
        let types: Vec<_> = out.iter().map(|r| r.type_url.as_str()).collect();
        assert_eq!(types, [CDS.type_url(), EDS.type_url()], "CDS before EDS");
    }

    #[test]
    fn updates_go_out_in_make_before_break_order() {
        let mut src = source(&[
            (LDS, "a.demo:80", "1"),
            (RDS, "a.demo:80", "1"),
            (CDS, "a.demo:80", "1"),
            (EDS, "a.demo:80", "1"),
        ]);
        let mut s = ads();
        for ty in [LDS, RDS, CDS, EDS] {
            subscribe_and_ack(&mut s, &src, ty, &["a.demo:80"]);
        }
        for ty in [LDS, RDS, CDS, EDS] {
            src.insert(ty, "a.demo:80", "2", b"2");
        }
        let order: Vec<_> = s
            .on_update(&src)
            .iter()
            .map(|r| ResourceType::from_type_url(&r.type_url).unwrap())
            .collect();
        assert_eq!(order, [CDS, EDS, LDS, RDS]);
    }

    #[test]
    fn changed_cluster_resends_unchanged_endpoints_for_warming() {
        let mut src = source(&[(CDS, "a.demo:80", "1"), (EDS, "a.demo:80", "1")]);
        let mut s = ads();
        subscribe_and_ack(&mut s, &src, CDS, &[]);
        let eds1 = subscribe_and_ack(&mut s, &src, EDS, &["a.demo:80"]);
        src.insert(CDS, "a.demo:80", "2", b"a.demo:80@2");
        let out = s.on_update(&src);
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[0].type_url, CDS.type_url());
        assert_eq!(out[1].type_url, EDS.type_url());
        assert_eq!(out[1].version_info, eds1.version_info, "same endpoints");
        assert_ne!(out[1].nonce, eds1.nonce);
        assert!(s.on_update(&src).is_empty(), "owed once, not forever");
    }

    #[test]
    fn ads_keeps_types_apart() {
        let src = source(&[(CDS, "a.demo:80", "1"), (EDS, "a.demo:80", "1")]);
        let mut s = ads();
        let cds = one(ask(&mut s, &src, req(CDS)));
        let eds = one(ask(&mut s, &src, req(EDS).names(["a.demo:80"])));
        assert_ne!(cds.nonce, eds.nonce);
        // ACKing EDS says nothing about CDS, which still awaits its ACK.
        let ack = req(EDS)
            .names(["a.demo:80"])
            .nonce(&eds.nonce)
            .version(&eds.version_info);
        assert!(ask(&mut s, &src, ack).is_empty());
        let stats = s.stats();
        assert_eq!(
            stats.of(CDS).unwrap().pending_nonce.as_deref(),
            Some(cds.nonce.as_str())
        );
        assert_eq!(stats.of(EDS).unwrap().pending_nonce, None);
        assert_eq!(stats.counters.requests, 3);
        assert_eq!(stats.counters.responses, 2);
    }
}

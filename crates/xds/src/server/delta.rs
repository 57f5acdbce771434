//! Incremental (delta) ADS streams: each response carries only the resources
//! whose per-resource version changed since this stream last sent them, plus
//! `removed_resources` for the ones the proxy has that are gone.
//!
//! The server keeps, per type, the version of every resource the proxy holds
//! (seeded from `initial_resource_versions` on reconnect, so unchanged resources
//! are not sent again). The first request for a type is always answered, even
//! with nothing, so the proxy's initial fetch completes. A NACK is recorded; the
//! proxy is considered to hold what was sent (it keeps its last good copy), so
//! only a later change is sent.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use tokio_stream::StreamExt;
use tonic::Status;

use super::{
    Closed, Outbox, Resource, ResourceMap, Shared, Snapshot, StreamContext, Subscription,
    is_wildcard_type, log_unanswered, nack_text, push_order, until,
};
use crate::status::SyncStatus;
use crate::type_url;

use super::grpc::{Tx, delta_response};

/// Unacknowledged nonces remembered per type (to map an ACK to its version).
const PENDING_NONCES: usize = 32;

/// Serve one delta stream until the proxy or the snapshot source goes away.
pub(super) async fn run(
    ctx: StreamContext,
    mut requests: super::grpc::Requests<DeltaDiscoveryRequest>,
    tx: Tx,
) {
    let Some(Ok(first)) = requests.next().await else {
        return;
    };
    let shared = ctx.shared.clone();
    let (guard, mut snapshots) = match ctx.open(first.node.as_ref(), true) {
        Ok(opened) => opened,
        Err(status) => {
            let _ = tx.send(Err(status)).await;
            return;
        }
    };
    let mut stream = DeltaStream {
        stream_id: guard.stream_id,
        status: guard.status.clone(),
        shared: shared.clone(),
        snapshot: snapshots.borrow_and_update().clone(),
        types: HashMap::new(),
        nonce: 0,
        out: Outbox::new(tx, &guard.node.id),
    };
    if stream.on_request(first).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            request = requests.next() => match request {
                Some(Ok(request)) => {
                    if stream.on_request(request).await.is_err() {
                        return;
                    }
                }
                Some(Err(error)) => {
                    tracing::debug!(node = %guard.node.id, %error, "delta ADS stream error");
                    return;
                }
                None => return,
            },
            () = until(stream.out.slot.deadline()) => {
                tracing::debug!(node = %guard.node.id, "no ACK in time: push slot given up");
                stream.out.slot.release();
            }
            () = until(stream.out.unanswered.deadline(&shared)) => {
                log_unanswered(&guard.node.id, &shared);
                return;
            }
            changed = snapshots.changed() => {
                if changed.is_err() {
                    let _ = stream.out.tx.send(Err(Status::unavailable("control plane shutting down"))).await;
                    return;
                }
                stream.snapshot = snapshots.borrow_and_update().clone();
                if stream.push_all().await.is_err() {
                    return;
                }
            }
        }
    }
}

/// What one stream knows about one type. What the proxy holds is kept
/// without a per-stream copy of names or versions: the wanted resources of
/// `held` (the snapshot last answered, shared with every proxy that got it),
/// except the few names in `deviations`.
#[derive(Default)]
struct TypeState {
    subscription: Subscription,
    held: Option<Arc<ResourceMap>>,
    /// Names whose held version is not `held`'s: `Some(v)` the proxy has v
    /// (from `initial_resource_versions`), `None` it has nothing (newly
    /// subscribed, or to be sent again).
    deviations: HashMap<Arc<str>, Option<Arc<str>>>,
    /// Whether anything was sent yet (the first request is always answered).
    responded: bool,
    /// Sent nonces not yet ACKed or NACKed, with the version they carried.
    pending: VecDeque<(String, String)>,
}

impl TypeState {
    fn take_pending(&mut self, nonce: &str) -> Option<String> {
        let at = self.pending.iter().position(|(n, _)| n == nonce)?;
        self.pending.remove(at).map(|(_, version)| version)
    }

    /// The version of `name` the proxy holds, as far as this stream knows.
    fn holds(&self, name: &str) -> Option<&str> {
        if let Some(v) = self.deviations.get(name) {
            return v.as_deref();
        }
        if !self.subscription.wants(name) {
            return None;
        }
        self.held.as_ref()?.get(name).map(|r| &*r.version)
    }

    /// A (re)connecting proxy's first request: what it holds, from its
    /// `initial_resource_versions`. Against the current snapshot only the
    /// names that differ are kept (its version differs, or it lacks a wanted
    /// resource): a proxy that reconnects to a restarted pilot with the same
    /// config costs a comparison per name, not a copy of every name.
    fn resume(&mut self, snapshot: Option<&super::TypeSnapshot>, initial: HashMap<String, String>) {
        let sub = &self.subscription;
        let Some(snapshot) = snapshot.filter(|_| !initial.is_empty()) else {
            self.deviations = initial
                .into_iter()
                .filter(|(name, _)| sub.wants(name))
                .map(|(name, version)| (Arc::from(name), Some(Arc::from(version))))
                .collect();
            return;
        };
        let current = &snapshot.resources;
        let mut deviations = HashMap::new();
        for (name, version) in &initial {
            if !sub.wants(name) {
                continue;
            }
            match current.get_key_value(name.as_str()) {
                Some((_, r)) if *r.version == **version => {}
                Some((key, _)) => {
                    deviations.insert(key.clone(), Some(Arc::from(version.as_str())));
                }
                None => {
                    deviations.insert(Arc::from(name.as_str()), Some(Arc::from(version.as_str())));
                }
            }
        }
        let lacks = |name: &Arc<str>| !initial.contains_key(&**name);
        if sub.wildcard {
            for name in current.keys().filter(|n| lacks(n)) {
                deviations.insert(name.clone(), None);
            }
        } else {
            for name in sub
                .names
                .iter()
                .filter(|n| lacks(n) && current.contains_key(&***n))
            {
                deviations.insert(name.clone(), None);
            }
        }
        self.held = Some(current.clone());
        self.deviations = deviations;
    }

    /// A subscription change: names it now wants that `held` has but the
    /// proxy never got are marked as not held; names it dropped are
    /// forgotten (the proxy drops them too).
    fn resubscribe(&mut self, before: &Subscription) {
        let after = &self.subscription;
        if let Some(held) = &self.held {
            let newly: Vec<Arc<str>> = if after.wildcard && !before.wildcard {
                held.keys().filter(|n| !before.wants(n)).cloned().collect()
            } else {
                after
                    .names
                    .iter()
                    .filter(|n| !before.wants(n) && held.contains_key(&***n))
                    .cloned()
                    .collect()
            };
            for name in newly {
                self.deviations.entry(name).or_insert(None);
            }
        }
        self.deviations.retain(|name, _| after.wants(name));
    }
}

struct DeltaStream {
    stream_id: u64,
    status: SyncStatus,
    shared: Arc<Shared>,
    snapshot: Arc<Snapshot>,
    types: HashMap<String, TypeState>,
    nonce: u64,
    out: Outbox,
}

impl DeltaStream {
    async fn on_request(&mut self, request: DeltaDiscoveryRequest) -> Result<(), Closed> {
        let url = request.type_url;
        if url.is_empty() {
            tracing::warn!(
                stream_id = self.stream_id,
                "delta request without type_url ignored"
            );
            return Ok(());
        }
        let first_for_type = !self.types.contains_key(&url);
        let type_snapshot = self.snapshot.types.get(&url);
        let state = self.types.entry(url.clone()).or_default();
        if !request.response_nonce.is_empty() {
            let version = state.take_pending(&request.response_nonce);
            if let Some(detail) = &request.error_detail {
                let text = nack_text(detail);
                tracing::warn!(stream_id = self.stream_id, %url, error = %text, "NACK");
                self.status.nacked(self.stream_id, &url, &text);
            } else if let Some(version) = version {
                self.status.acked(self.stream_id, &url, &version);
            }
            if self.types.values().all(|t| t.pending.is_empty()) {
                self.out.all_answered();
            }
        }
        let state = self.types.entry(url.clone()).or_default();
        let before = state.subscription.clone();
        let initial = request.initial_resource_versions;
        if first_for_type {
            state.subscription.wildcard =
                request.resource_names_subscribe.is_empty() && is_wildcard_type(&url);
        }
        let names_change = !request.resource_names_subscribe.is_empty()
            || !request.resource_names_unsubscribe.is_empty();
        if names_change {
            let mut names = (*state.subscription.names).clone();
            for name in request.resource_names_subscribe {
                if name == "*" {
                    state.subscription.wildcard = true;
                } else {
                    names.insert(Subscription::name_in(type_snapshot, &name));
                }
            }
            for name in request.resource_names_unsubscribe {
                if name == "*" {
                    state.subscription.wildcard = false;
                } else {
                    names.remove(name.as_str());
                }
            }
            state.subscription.names = self.shared.names.intern(Arc::new(names));
        }
        if first_for_type {
            state.resume(type_snapshot, initial);
        } else if before != state.subscription {
            state.resubscribe(&before);
        }
        if first_for_type || before != state.subscription {
            self.status
                .subscribed(self.stream_id, &url, state.subscription.clone());
        }
        self.maybe_send(&url).await?;
        if url == type_url::CLUSTER {
            // Clusters it just sent may be waiting for their endpoints.
            self.maybe_send(type_url::ENDPOINT).await?;
        }
        Ok(())
    }

    /// After a snapshot change: every requested type, in Envoy's safe order.
    async fn push_all(&mut self) -> Result<(), Closed> {
        for url in push_order(self.types.keys()) {
            self.maybe_send(&url).await?;
        }
        Ok(())
    }

    /// Send what changed for the type since the proxy last got it, if anything
    /// (or an empty answer to the type's first request).
    async fn maybe_send(&mut self, url: &str) -> Result<(), Closed> {
        let (Some(state), Some(snapshot)) = (self.types.get_mut(url), self.snapshot.types.get(url))
        else {
            return Ok(());
        };
        let current = &snapshot.resources;
        let mut resources: Vec<Arc<Resource>> = Vec::new();
        let mut removed: Vec<Arc<str>> = Vec::new();
        let mut consider = |state: &TypeState, name: &Arc<str>| match current.get(&**name) {
            Some(r) => {
                if state.subscription.wants(name) && state.holds(name) != Some(&*r.version) {
                    resources.push(r.clone());
                }
            }
            None => {
                if state.holds(name).is_some() {
                    removed.push(name.clone());
                }
            }
        };
        match &state.held {
            // Unchanged since the last answer: only the exceptions can differ.
            Some(held) if Arc::ptr_eq(held, current) => {}
            // What changed between the two versions, computed once for
            // every stream that moves between them.
            Some(held) => {
                let diff = self.shared.diffs.diff(held, current);
                for r in &diff.changed {
                    if !state.deviations.contains_key(&*r.name) {
                        consider(state, &r.name);
                    }
                }
                for name in &diff.removed {
                    if !state.deviations.contains_key(&**name) {
                        consider(state, name);
                    }
                }
            }
            None => {
                for name in current.keys() {
                    if !state.deviations.contains_key(&**name) {
                        consider(state, name);
                    }
                }
            }
        }
        let deviating: Vec<Arc<str>> = state.deviations.keys().cloned().collect();
        for name in &deviating {
            consider(state, name);
        }
        resources.sort_by(|a, b| a.name.cmp(&b.name));
        removed.sort();
        state.held = Some(current.clone());
        state.deviations.clear();
        if resources.is_empty() && removed.is_empty() && state.responded {
            return Ok(());
        }
        state.responded = true;
        if url == type_url::CLUSTER {
            // Envoy warms an added or changed EDS cluster until it gets that
            // cluster's ClusterLoadAssignment again, even an unchanged one it
            // already holds (else it waits initial_fetch_timeout, 15 s): so
            // mark it as not held, and the EDS push that follows re-sends it.
            // (Our load assignments are named after their cluster.)
            if let Some(eds) = self.types.get_mut(type_url::ENDPOINT) {
                for r in &resources {
                    if eds.subscription.wants(&r.name) {
                        eds.deviations.insert(r.name.clone(), None);
                    }
                }
            }
        }
        let Some(state) = self.types.get_mut(url) else {
            return Ok(());
        };
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        if state.pending.len() >= PENDING_NONCES {
            state.pending.pop_front();
        }
        state
            .pending
            .push_back((nonce.clone(), snapshot.version.clone()));
        self.status.sent(
            self.stream_id,
            url,
            &snapshot.version,
            &nonce,
            resources.len(),
        );
        tracing::debug!(stream_id = self.stream_id, %url, version = %snapshot.version,
            changed = resources.len(), removed = removed.len(), "delta push");
        // Wait for a push slot before the bodies are copied into the message.
        if !resources.is_empty() || !removed.is_empty() {
            self.out.slot.acquire(&self.shared).await;
        }
        let response = delta_response(&snapshot.version, &resources, url, &removed, &nonce);
        self.out.send(response, &self.shared).await
    }
}

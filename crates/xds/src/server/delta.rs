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

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource as XdsResource,
};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::{Status, Streaming};

use super::{
    Closed, Snapshot, StreamContext, Subscription, is_wildcard_type, nack_text, push_order,
};
use crate::status::SyncStatus;
use crate::type_url;

type Tx = mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>;

/// Unacknowledged nonces remembered per type (to map an ACK to its version).
const PENDING_NONCES: usize = 32;

/// Serve one delta stream until the proxy or the snapshot source goes away.
pub(super) async fn run(
    ctx: StreamContext,
    mut requests: Streaming<DeltaDiscoveryRequest>,
    tx: Tx,
) {
    let Some(Ok(first)) = requests.next().await else {
        return;
    };
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
        snapshot: snapshots.borrow_and_update().clone(),
        types: HashMap::new(),
        nonce: 0,
        tx,
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
            changed = snapshots.changed() => {
                if changed.is_err() {
                    let _ = stream.tx.send(Err(Status::unavailable("control plane shutting down"))).await;
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

/// What one stream knows about one type.
#[derive(Default)]
struct TypeState {
    subscription: Subscription,
    /// Name -> version the proxy holds (as far as this stream knows).
    known: HashMap<String, String>,
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
}

struct DeltaStream {
    stream_id: u64,
    status: SyncStatus,
    snapshot: Arc<Snapshot>,
    types: HashMap<String, TypeState>,
    nonce: u64,
    tx: Tx,
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
        }
        let before = state.subscription.clone();
        if first_for_type {
            state.known = request.initial_resource_versions.into_iter().collect();
            state.subscription.wildcard =
                request.resource_names_subscribe.is_empty() && is_wildcard_type(&url);
        }
        for name in request.resource_names_subscribe {
            if name == "*" {
                state.subscription.wildcard = true;
            } else {
                state.subscription.names.insert(name);
            }
        }
        for name in request.resource_names_unsubscribe {
            if name == "*" {
                state.subscription.wildcard = false;
            } else {
                state.subscription.names.remove(&name);
            }
        }
        // The proxy drops what it unsubscribed from; forget it so a later
        // subscribe sends it again.
        let subscription = &state.subscription;
        state.known.retain(|name, _| subscription.wants(name));
        if first_for_type || before != state.subscription {
            self.status
                .subscribed(self.stream_id, &url, state.subscription.to_list());
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
        let resources: Vec<XdsResource> = snapshot
            .resources
            .values()
            .filter(|r| state.subscription.wants(&r.name))
            .filter(|r| state.known.get(&r.name) != Some(&r.version))
            .map(|r| XdsResource {
                name: r.name.clone(),
                version: r.version.clone(),
                resource: Some(super::to_wire(&r.body)),
                ..Default::default()
            })
            .collect();
        let mut removed: Vec<String> = state
            .known
            .keys()
            .filter(|name| !snapshot.resources.contains_key(*name))
            .cloned()
            .collect();
        removed.sort();
        if resources.is_empty() && removed.is_empty() && state.responded {
            return Ok(());
        }
        for name in &removed {
            state.known.remove(name);
        }
        for r in &resources {
            state.known.insert(r.name.clone(), r.version.clone());
        }
        state.responded = true;
        if url == type_url::CLUSTER {
            // Envoy warms an added or changed EDS cluster until it gets that
            // cluster's ClusterLoadAssignment again, even an unchanged one it
            // already holds (else it waits initial_fetch_timeout, 15 s): so
            // forget that the proxy has it, and the EDS push that follows
            // re-sends it. (Our load assignments are named after their cluster.)
            let names: Vec<String> = resources.iter().map(|r| r.name.clone()).collect();
            if let Some(eds) = self.types.get_mut(type_url::ENDPOINT) {
                for name in &names {
                    eds.known.remove(name);
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
        let response = DeltaDiscoveryResponse {
            system_version_info: snapshot.version.clone(),
            resources,
            type_url: url.to_string(),
            removed_resources: removed,
            nonce,
            ..Default::default()
        };
        self.tx.send(Ok(response)).await.map_err(|_| Closed)
    }
}

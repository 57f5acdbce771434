//! State-of-the-world ADS streams: every response carries the whole subscribed
//! set of a type (all of it for wildcard LDS/CDS, the requested names that exist
//! for EDS/RDS), with the type's snapshot version as `version_info`.
//!
//! A type is (re)sent when its snapshot version differs from the one last sent,
//! or when the proxy's subscribed names changed. Requests carrying a nonce other
//! than the last one sent for the type are stale and ignored: Envoy repeats its
//! current names in the ACK of the newer response anyway. The version and nonce
//! a proxy brings from a previous stream are not trusted: the first request for
//! a type on a stream is always answered in full.

use std::collections::HashMap;
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use tokio_stream::StreamExt;
use tonic::Status;

use super::{
    Closed, Outbox, Shared, Snapshot, StreamContext, Subscription, is_wildcard_type,
    log_unanswered, nack_text, push_order, until,
};
use crate::status::SyncStatus;
use crate::type_url;

use super::grpc::{Tx, sotw_response};

/// Serve one SotW stream until the proxy or the snapshot source goes away.
pub(super) async fn run(
    ctx: StreamContext,
    mut requests: super::grpc::Requests<DiscoveryRequest>,
    tx: Tx,
) {
    let Some(Ok(first)) = requests.next().await else {
        return;
    };
    let shared = ctx.shared.clone();
    let (guard, mut snapshots) = match ctx.open(first.node.as_ref(), false) {
        Ok(opened) => opened,
        Err(status) => {
            let _ = tx.send(Err(status)).await;
            return;
        }
    };
    let mut stream = SotwStream {
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
                    tracing::debug!(node = %guard.node.id, %error, "ADS stream error");
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

/// What one stream knows about one type.
#[derive(Default)]
struct TypeState {
    subscription: Subscription,
    sent_version: Option<String>,
    sent_nonce: Option<String>,
    /// The subscription the last response answered.
    sent_subscription: Option<Subscription>,
    /// The last response is not yet ACKed or NACKed.
    awaiting: bool,
}

struct SotwStream {
    stream_id: u64,
    status: SyncStatus,
    shared: Arc<Shared>,
    snapshot: Arc<Snapshot>,
    types: HashMap<String, TypeState>,
    nonce: u64,
    out: Outbox,
}

impl SotwStream {
    async fn on_request(&mut self, request: DiscoveryRequest) -> Result<(), Closed> {
        let url = request.type_url;
        if url.is_empty() {
            tracing::warn!(
                stream_id = self.stream_id,
                "ADS request without type_url ignored"
            );
            return Ok(());
        }
        let state = self.types.entry(url.clone()).or_default();
        let nonce = request.response_nonce;
        // Stale: answers an older response of this stream. (A nonce on a type not
        // yet answered on this stream comes from a previous stream: accept it.)
        let stale = matches!(&state.sent_nonce, Some(sent) if !nonce.is_empty() && *sent != nonce);
        if stale {
            tracing::debug!(stream_id = self.stream_id, %url, %nonce, "stale nonce ignored");
            return Ok(());
        }
        let answers_ours = !nonce.is_empty() && state.sent_nonce.is_some();
        if let Some(detail) = request.error_detail.as_ref().filter(|_| answers_ours) {
            let text = nack_text(detail);
            tracing::warn!(stream_id = self.stream_id, %url, version = %request.version_info, error = %text, "NACK");
            self.status.nacked(self.stream_id, &url, &text);
        } else if answers_ours {
            self.status
                .acked(self.stream_id, &url, &request.version_info);
        }
        if answers_ours {
            state.awaiting = false;
            if self.types.values().all(|t| !t.awaiting) {
                self.out.all_answered();
            }
        }
        let state = self.types.entry(url.clone()).or_default();
        let names = request.resource_names;
        let type_snapshot = self.snapshot.types.get(&url);
        let set = names
            .iter()
            .filter(|n| *n != "*")
            .map(|n| Subscription::name_in(type_snapshot, n))
            .collect();
        state.subscription = Subscription {
            wildcard: names.iter().any(|n| n == "*")
                || (names.is_empty() && is_wildcard_type(&url)),
            names: self.shared.names.intern(Arc::new(set)),
        };
        if state.sent_subscription.as_ref() != Some(&state.subscription) {
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

    /// Send the type if its version or the subscription changed since the last send.
    async fn maybe_send(&mut self, url: &str) -> Result<(), Closed> {
        let (Some(state), Some(snapshot)) = (self.types.get_mut(url), self.snapshot.types.get(url))
        else {
            return Ok(());
        };
        let unchanged = state.sent_version.as_deref() == Some(snapshot.version.as_str())
            && state.sent_subscription.as_ref() == Some(&state.subscription);
        if unchanged || state.subscription.is_empty() {
            return Ok(());
        }
        // Wait for a push slot before the bodies are copied into the message.
        self.out.slot.acquire(&self.shared).await;
        let resources: Vec<_> = snapshot
            .resources
            .values()
            .filter(|r| state.subscription.wants(&r.name))
            .cloned()
            .collect();
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        state.sent_version = Some(snapshot.version.clone());
        state.sent_nonce = Some(nonce.clone());
        state.sent_subscription = Some(state.subscription.clone());
        state.awaiting = true;
        if url == type_url::CLUSTER {
            // Envoy warms each added or changed EDS cluster until it gets the
            // cluster's ClusterLoadAssignment again, even unchanged (else it
            // waits initial_fetch_timeout, 15 s): re-send EDS after CDS.
            if let Some(eds) = self.types.get_mut(type_url::ENDPOINT) {
                eds.sent_version = None;
            }
        }
        self.status.sent(
            self.stream_id,
            url,
            &snapshot.version,
            &nonce,
            resources.len(),
        );
        tracing::debug!(stream_id = self.stream_id, %url, version = %snapshot.version, count = resources.len(), "push");
        let response = sotw_response(&snapshot.version, resources.iter(), url, &nonce);
        self.out.send(response, &self.shared).await
    }
}

//! State-of-the-world client stream: each response is the whole subscribed set
//! of its type, applied as is; the ACK repeats the version and nonce, a NACK
//! sends the previous good version with the error. Subscription changes for EDS
//! and RDS are new requests carrying the full list of names.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::{
    Backoff, ClientConfig, NAMED_TYPES, ResourceSink, StreamEnded, Want, connect, named_resource,
};
use crate::type_url;

/// What the client keeps across reconnects.
#[derive(Default)]
pub(super) struct SotwState {
    types: BTreeMap<String, TypeState>,
}

#[derive(Default)]
struct TypeState {
    /// Last version applied successfully ("" before any).
    acked_version: String,
    /// Nonce of the last response on the current stream.
    nonce: String,
    /// None until the type is subscribed.
    want: Option<Want>,
}

type Tx = mpsc::UnboundedSender<DiscoveryRequest>;

/// One stream, from connect to its end.
pub(super) async fn run(
    config: &ClientConfig,
    sink: &dyn ResourceSink,
    state: &mut SotwState,
    backoff: &mut Backoff,
) -> StreamEnded {
    let mut client = match connect(config).await {
        Ok(client) => client,
        Err(error) => return error,
    };
    let (tx, rx) = mpsc::unbounded_channel();
    for url in config.wildcard_types() {
        state.types.entry(url.to_string()).or_default().want = Some(Want::Wildcard);
    }
    let mut node = Some(config.node.clone());
    for (url, t) in &mut state.types {
        t.nonce.clear();
        if let Some(want) = t.want.as_ref().filter(|w| !w.is_empty()) {
            let _ = tx.send(DiscoveryRequest {
                version_info: t.acked_version.clone(),
                node: node.take(),
                resource_names: names(url, want),
                type_url: url.clone(),
                ..Default::default()
            });
        }
    }
    let mut responses = match client
        .stream_aggregated_resources(UnboundedReceiverStream::new(rx))
        .await
    {
        Ok(response) => response.into_inner(),
        Err(status) => return status.into(),
    };
    tracing::info!(endpoint = %config.endpoint, "xDS stream (SotW) established");
    loop {
        match responses.message().await {
            Ok(Some(response)) => {
                backoff.reset();
                on_response(sink, state, &tx, response);
            }
            Ok(None) => return StreamEnded::Closed,
            Err(status) => return status.into(),
        }
    }
}

fn on_response(
    sink: &dyn ResourceSink,
    state: &mut SotwState,
    tx: &Tx,
    response: DiscoveryResponse,
) {
    let url = response.type_url;
    let version = response.version_info;
    let t = state.types.entry(url.clone()).or_default();
    let result = response
        .resources
        .into_iter()
        .map(named_resource)
        .collect::<Result<BTreeMap<_, _>, String>>()
        .and_then(|mut resources| {
            // A response sent before our last names change may hold names we dropped.
            if let Some(Want::Names(names)) = &t.want {
                resources.retain(|name, _| names.contains(name));
            }
            sink.apply(&url, &version, &resources)
        });
    t.nonce = response.nonce;
    let error_detail = match result {
        Ok(()) => {
            tracing::debug!(type_url = %url, %version, "applied");
            t.acked_version = version;
            None
        }
        Err(message) => {
            tracing::warn!(type_url = %url, %version, error = %message, "rejected (NACK)");
            Some(RpcStatus {
                code: tonic::Code::InvalidArgument as i32,
                message,
                details: Vec::new(),
            })
        }
    };
    let _ = tx.send(DiscoveryRequest {
        version_info: t.acked_version.clone(),
        resource_names: t.want.as_ref().map(|w| names(&url, w)).unwrap_or_default(),
        type_url: url,
        response_nonce: t.nonce.clone(),
        error_detail,
        ..Default::default()
    });
    update_named(sink, state, tx);
}

/// Ask the sink which EDS/RDS names it wants and re-request the types whose
/// names changed.
fn update_named(sink: &dyn ResourceSink, state: &mut SotwState, tx: &Tx) {
    for url in NAMED_TYPES {
        let want = Want::from_sink(sink.wanted(url));
        let t = state.types.entry(url.to_string()).or_default();
        if t.want.as_ref() == Some(&want) || (t.want.is_none() && want.is_empty()) {
            continue;
        }
        tracing::debug!(type_url = %url, ?want, "subscription changed");
        let _ = tx.send(DiscoveryRequest {
            version_info: t.acked_version.clone(),
            resource_names: names(url, &want),
            type_url: url.to_string(),
            response_nonce: t.nonce.clone(),
            ..Default::default()
        });
        if want.is_empty() {
            // Nothing left to answer with: the sink's set is now empty.
            if let Err(error) = sink.apply(url, &t.acked_version, &BTreeMap::new()) {
                tracing::warn!(type_url = %url, %error, "rejected after unsubscribe");
            }
        }
        t.want = Some(want);
    }
}

/// `resource_names` for a subscription: empty means wildcard for LDS/CDS only;
/// other types spell the wildcard `*`.
fn names(url: &str, want: &Want) -> Vec<String> {
    match want {
        Want::Wildcard if url == type_url::CLUSTER || url == type_url::LISTENER => Vec::new(),
        Want::Wildcard => vec!["*".to_string()],
        Want::Names(names) => names.iter().cloned().collect(),
    }
}

//! Delta (incremental) client stream: responses carry changed resources and
//! removed names, merged here into a per-type map that the sink gets whole. The
//! merged map follows the server's view even after a NACK (the sink keeps its
//! own last good copy). On reconnect the client sends `initial_resource_versions`
//! of what it holds, so the server sends only what changed meanwhile.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost_types::Any;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::server::from_wire;

use super::{
    Backoff, ClientConfig, NAMED_TYPES, ResourceSink, StreamEnded, WILDCARD_TYPES, Want, connect,
};

/// What the client keeps across reconnects.
#[derive(Default)]
pub(super) struct DeltaState {
    types: BTreeMap<String, TypeState>,
}

#[derive(Default)]
struct TypeState {
    bodies: BTreeMap<String, Any>,
    versions: BTreeMap<String, String>,
    /// `system_version_info` of the last response.
    version: String,
    /// None until the type is subscribed.
    want: Option<Want>,
}

impl TypeState {
    /// Drop what the subscription no longer covers; true if anything went.
    fn retain_wanted(&mut self) -> bool {
        let before = self.bodies.len();
        if let Some(Want::Names(names)) = &self.want {
            self.bodies.retain(|name, _| names.contains(name));
            self.versions.retain(|name, _| names.contains(name));
        }
        self.bodies.len() != before
    }
}

type Tx = mpsc::UnboundedSender<DeltaDiscoveryRequest>;

/// One stream, from connect to its end.
pub(super) async fn run(
    config: &ClientConfig,
    sink: &dyn ResourceSink,
    state: &mut DeltaState,
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
    for (url, t) in &state.types {
        let Some(want) = t.want.as_ref().filter(|w| !w.is_empty()) else {
            continue;
        };
        let subscribe = match want {
            // An empty first subscribe is the (legacy) wildcard every server knows.
            Want::Wildcard if WILDCARD_TYPES.contains(&url.as_str()) => Vec::new(),
            Want::Wildcard => vec!["*".to_string()],
            Want::Names(names) => names.iter().cloned().collect(),
        };
        let _ = tx.send(DeltaDiscoveryRequest {
            node: node.take(),
            type_url: url.clone(),
            resource_names_subscribe: subscribe,
            initial_resource_versions: t
                .versions
                .iter()
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect::<HashMap<_, _>>(),
            ..Default::default()
        });
    }
    let mut responses = match client
        .delta_aggregated_resources(UnboundedReceiverStream::new(rx))
        .await
    {
        Ok(response) => response.into_inner(),
        Err(status) => return status.into(),
    };
    tracing::info!(endpoint = %config.endpoint, "xDS stream (delta) established");
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
    state: &mut DeltaState,
    tx: &Tx,
    response: DeltaDiscoveryResponse,
) {
    let url = response.type_url;
    let version = response.system_version_info;
    let t = state.types.entry(url.clone()).or_default();
    t.version.clone_from(&version);
    for resource in response.resources {
        // A response sent before our last unsubscribe may hold names we dropped.
        if matches!(&t.want, Some(Want::Names(names)) if !names.contains(&resource.name)) {
            continue;
        }
        match resource.resource {
            Some(body) => {
                t.versions.insert(resource.name.clone(), resource.version);
                t.bodies.insert(resource.name, from_wire(body));
            }
            None => {
                tracing::warn!(type_url = %url, name = %resource.name, "resource without body ignored")
            }
        }
    }
    for name in &response.removed_resources {
        t.bodies.remove(name);
        t.versions.remove(name);
    }
    let error_detail = match sink.apply(&url, &version, &t.bodies) {
        Ok(()) => {
            tracing::debug!(type_url = %url, %version, "applied");
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
    let _ = tx.send(DeltaDiscoveryRequest {
        type_url: url,
        response_nonce: response.nonce,
        error_detail,
        ..Default::default()
    });
    update_named(sink, state, tx);
}

/// Ask the sink which EDS/RDS names it wants and send subscribe/unsubscribe
/// for the difference.
fn update_named(sink: &dyn ResourceSink, state: &mut DeltaState, tx: &Tx) {
    for url in NAMED_TYPES {
        let want = Want::from_sink(sink.wanted(url));
        let t = state.types.entry(url.to_string()).or_default();
        if t.want.as_ref() == Some(&want) || (t.want.is_none() && want.is_empty()) {
            continue;
        }
        let star = || vec!["*".to_string()];
        let (subscribe, unsubscribe) = match (&t.want, &want) {
            (None | Some(Want::Wildcard), Want::Wildcard) => (star(), Vec::new()),
            (Some(Want::Names(old)), Want::Wildcard) => (star(), sorted(old)),
            (None, Want::Names(new)) => (sorted(new), Vec::new()),
            (Some(Want::Wildcard), Want::Names(new)) => (sorted(new), star()),
            (Some(Want::Names(old)), Want::Names(new)) => (
                new.difference(old).cloned().collect(),
                old.difference(new).cloned().collect(),
            ),
        };
        tracing::debug!(type_url = %url, ?subscribe, ?unsubscribe, "subscription changed");
        t.want = Some(want);
        let shrunk = t.retain_wanted();
        let _ = tx.send(DeltaDiscoveryRequest {
            type_url: url.to_string(),
            resource_names_subscribe: subscribe,
            resource_names_unsubscribe: unsubscribe,
            ..Default::default()
        });
        if shrunk {
            // The server says nothing about unsubscribed names: keep the sink's
            // set equal to the subscribed one. Nothing to NACK here.
            if let Err(error) = sink.apply(url, &t.version, &t.bodies) {
                tracing::warn!(type_url = %url, %error, "rejected after unsubscribe");
            }
        }
    }
}

fn sorted(names: &BTreeSet<String>) -> Vec<String> {
    names.iter().cloned().collect()
}

//! The ADS client (the proxy side): one long-lived stream to the control plane,
//! state-of-the-world or delta, that hands every type's full current set of
//! resources to a [`ResourceSink`] and ACKs or NACKs each response.
//!
//! It subscribes to CDS and LDS as wildcards at start; after every apply it asks
//! the sink which EDS and RDS names it wants and updates those subscriptions.
//! The sink only ever sees subscribed names: resources of names just dropped
//! (in a response already in flight) are filtered out, and dropping names
//! re-applies the smaller set.
//! When the control plane is unreachable or the stream breaks it retries forever
//! with jittered exponential backoff, while the sink keeps serving what it has.

mod delta;
mod sotw;

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use prost::Message;
use tonic::transport::{Channel, Endpoint};

use crate::server::{MAX_MESSAGE_SIZE, WireAny, from_wire};
use crate::type_url;

/// Where and how to reach the control plane.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// e.g. `http://127.0.0.1:15010`.
    pub endpoint: String,
    pub node: Node,
    /// Incremental (delta) ADS instead of state-of-the-world.
    pub delta: bool,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Types beyond CDS/EDS/LDS/RDS to subscribe to as wildcards (NDS).
    pub extra_types: Vec<&'static str>,
}

impl ClientConfig {
    /// The types subscribed as wildcards when a stream starts.
    fn wildcard_types(&self) -> impl Iterator<Item = &str> {
        WILDCARD_TYPES
            .iter()
            .copied()
            .chain(self.extra_types.iter().copied())
    }
}

/// The proxy side: applies resources and says which names it wants.
pub trait ResourceSink: Send + Sync + 'static {
    /// The full current set of resources of one type (after merging a delta, or
    /// a SotW response). Return Err(reason) to NACK; the sink keeps its own last
    /// good state (per resource). Also called, with no response to NACK, when
    /// dropping EDS/RDS names shrinks the set the server will not re-send.
    fn apply(
        &self,
        type_url: &str,
        version: &str,
        resources: &BTreeMap<String, prost_types::Any>,
    ) -> Result<(), String>;
    /// Names of this type the sink wants now; None = wildcard. Asked for EDS and
    /// RDS after every apply.
    fn wanted(&self, type_url: &str) -> Option<Vec<String>>;
}

/// Run the client until the returned task is aborted.
pub fn spawn(config: ClientConfig, sink: Arc<dyn ResourceSink>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = Backoff::new(config.initial_backoff, config.max_backoff);
        let mut sotw_state = sotw::SotwState::default();
        let mut delta_state = delta::DeltaState::default();
        loop {
            let ended = if config.delta {
                delta::run(&config, &*sink, &mut delta_state, &mut backoff).await
            } else {
                sotw::run(&config, &*sink, &mut sotw_state, &mut backoff).await
            };
            let wait = backoff.next_delay();
            tracing::warn!(endpoint = %config.endpoint, error = %ended, retry_in = ?wait, "xDS stream ended");
            tokio::time::sleep(wait).await;
        }
    })
}

/// Why a stream ended.
#[derive(Debug, thiserror::Error)]
enum StreamEnded {
    #[error("cannot connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("stream failed: {0}")]
    Status(#[from] tonic::Status),
    #[error("the control plane closed the stream")]
    Closed,
}

async fn connect(
    config: &ClientConfig,
) -> Result<AggregatedDiscoveryServiceClient<Channel>, StreamEnded> {
    let channel = Endpoint::from_shared(config.endpoint.clone())?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        // Notice a control plane that vanished without closing the connection.
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .connect()
        .await?;
    Ok(AggregatedDiscoveryServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE))
}

/// A subscription the client holds (or wants) for one type.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Want {
    Wildcard,
    Names(BTreeSet<String>),
}

impl Want {
    fn from_sink(wanted: Option<Vec<String>>) -> Want {
        match wanted {
            None => Want::Wildcard,
            Some(names) => Want::Names(names.into_iter().collect()),
        }
    }

    fn is_empty(&self) -> bool {
        matches!(self, Want::Names(names) if names.is_empty())
    }
}

/// Types whose names come from other resources; re-checked after every apply.
const NAMED_TYPES: [&str; 2] = [type_url::ENDPOINT, type_url::ROUTE];

/// Types subscribed as wildcards at start.
const WILDCARD_TYPES: [&str; 2] = [type_url::CLUSTER, type_url::LISTENER];

/// The name of a resource in a SotW response, and its body (unwrapping an
/// `envoy.service.discovery.v3.Resource` wrapper). Every type served over ADS
/// has its name as string field 1 (`Listener.name`, `Cluster.name`,
/// `RouteConfiguration.name`, `ClusterLoadAssignment.cluster_name`,
/// `Secret.name`), so this reads it from the wire without decoding the type.
fn named_resource(any: WireAny) -> Result<(String, prost_types::Any), String> {
    use envoy_types::pb::envoy::service::discovery::v3::Resource as XdsResource;
    if any
        .type_url
        .ends_with("/envoy.service.discovery.v3.Resource")
    {
        let wrapped = XdsResource::decode(any.value.as_slice()).map_err(|e| e.to_string())?;
        let body = wrapped
            .resource
            .ok_or_else(|| format!("resource {} has no body", wrapped.name))?;
        return Ok((wrapped.name, from_wire(body)));
    }
    if any.type_url == type_url::NAME_TABLE {
        // Field 1 of a NameTable is its map: the one resource has no name.
        return Ok((String::new(), from_wire(any)));
    }
    match field_one_string(&any.value) {
        Some(name) if !name.is_empty() => Ok((name, from_wire(any))),
        _ => Err(format!("a {} without a name", any.type_url)),
    }
}

/// String field 1 of an encoded message, if present.
fn field_one_string(mut buf: &[u8]) -> Option<String> {
    use prost::encoding::decode_varint;
    while !buf.is_empty() {
        let key = decode_varint(&mut buf).ok()?;
        let skip = match key & 7 {
            0 => {
                decode_varint(&mut buf).ok()?;
                0
            }
            1 => 8,
            2 => {
                let len = usize::try_from(decode_varint(&mut buf).ok()?).ok()?;
                if key >> 3 == 1 {
                    return String::from_utf8(buf.get(..len)?.to_vec()).ok();
                }
                len
            }
            5 => 4,
            _ => return None,
        };
        buf = buf.get(skip..)?;
    }
    None
}

/// Jittered exponential backoff: each delay is in [d/2, d] for d doubling from
/// `initial` up to `max`; reset once a stream gets a response.
struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    fn new(initial: Duration, max: Duration) -> Backoff {
        let initial = initial.max(Duration::from_millis(1));
        Backoff {
            initial,
            max: max.max(initial),
            current: initial,
        }
    }

    fn reset(&mut self) {
        self.current = self.initial;
    }

    fn next_delay(&mut self) -> Duration {
        let base = self.current;
        self.current = (self.current * 2).min(self.max);
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let half = base / 2;
        half + half.mul_f64((random % 1_000_001) as f64 / 1_000_000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::pb::envoy::config::listener::v3::Listener;
    use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
    use prost::Name;

    fn any<M: Message + Name>(m: &M) -> WireAny {
        crate::server::to_wire(&prost_types::Any::from_msg(m).unwrap())
    }

    #[test]
    fn names_come_from_field_one() {
        let cluster = Cluster {
            name: "outbound|80||a.default.svc.cluster.local".into(),
            ..Default::default()
        };
        let cla = ClusterLoadAssignment {
            cluster_name: "c".into(),
            ..Default::default()
        };
        let listener = Listener {
            name: "virtualOutbound".into(),
            ..Default::default()
        };
        let route = RouteConfiguration {
            name: "80".into(),
            ..Default::default()
        };
        let name = |a| named_resource(a).unwrap().0;
        assert_eq!(name(any(&cluster)), cluster.name);
        assert_eq!(name(any(&cla)), "c");
        assert_eq!(name(any(&listener)), "virtualOutbound");
        assert_eq!(name(any(&route)), "80");
        assert!(named_resource(any(&Cluster::default())).is_err());
    }

    #[test]
    fn wrapped_resources_are_unwrapped() {
        use envoy_types::pb::envoy::service::discovery::v3::Resource as XdsResource;
        let body = any(&Listener {
            name: "l".into(),
            ..Default::default()
        });
        let wrapped = any(&XdsResource {
            name: "l".into(),
            resource: Some(body.clone()),
            ..Default::default()
        });
        assert_eq!(
            named_resource(wrapped).unwrap(),
            ("l".to_string(), from_wire(body))
        );
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_max() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let bounds = [(50, 100), (100, 200), (175, 350), (175, 350)];
        for (lo, hi) in bounds {
            let d = b.next_delay();
            assert!(
                d >= Duration::from_millis(lo) && d <= Duration::from_millis(hi),
                "{d:?}"
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}

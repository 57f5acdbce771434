//! The simulated fleet: N sidecars, each one delta-ADS stream (about 100
//! streams share one HTTP/2 connection). Each behaves like Envoy: CDS and LDS
//! wildcard, then EDS for the clusters' service names and RDS for the HCMs'
//! route names; it ACKs every response and records, in a few atomics, when
//! each type last arrived. Resource bodies are never kept.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};

use super::lean;

/// The four xDS types, in the order of `TYPE_URLS`.
pub const CDS: usize = 0;
pub const EDS: usize = 1;
pub const LDS: usize = 2;
pub const RDS: usize = 3;
const TYPE_URLS: [&str; 4] = [
    "type.googleapis.com/envoy.config.cluster.v3.Cluster",
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
    "type.googleapis.com/envoy.config.listener.v3.Listener",
    "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
];
const ADS_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// Streams per HTTP/2 connection.
pub const STREAMS_PER_CHANNEL: usize = 100;

/// What one proxy has seen, as nanoseconds since the fleet's epoch (0 = never).
#[derive(Default)]
pub struct ProxyStats {
    /// When the proxy ACKed its first full config (CDS, EDS, LDS, RDS).
    pub synced: AtomicU64,
    /// Arrival of the latest response, per type.
    pub last: [AtomicU64; 4],
    /// Responses received, per type.
    pub responses: [AtomicU32; 4],
    /// The stream ended or failed.
    pub failed: AtomicU32,
}

/// Shared view of the whole fleet, read by the benchmark driver.
pub struct FleetStats {
    pub epoch: Instant,
    pub proxies: Vec<ProxyStats>,
    /// Resource body bytes received, per type (all proxies).
    pub bytes: [AtomicU64; 4],
}

impl FleetStats {
    /// Nanoseconds since the epoch (never 0).
    pub fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64 + 1
    }
}

/// The running fleet; dropping it ends every stream.
pub struct Fleet {
    pub stats: Arc<FleetStats>,
    tasks: Vec<JoinHandle<()>>,
}

/// Who a simulated proxy is.
pub struct Identity {
    pub namespace: String,
    pub app: String,
}

impl Fleet {
    /// Connect one proxy per identity to the pilot at `addr`.
    pub async fn start(
        addr: std::net::SocketAddr,
        identities: Vec<Identity>,
    ) -> anyhow::Result<Fleet> {
        let n = identities.len();
        let mut channels = Vec::new();
        for _ in 0..n.div_ceil(STREAMS_PER_CHANNEL) {
            let channel = Endpoint::from_shared(format!("http://{addr}"))?
                .tcp_nodelay(true)
                .initial_stream_window_size(Some(16 << 20))
                .initial_connection_window_size(Some(256 << 20))
                .connect()
                .await?;
            channels.push(channel);
        }
        let stats = Arc::new(FleetStats {
            epoch: Instant::now(),
            proxies: (0..n).map(|_| ProxyStats::default()).collect(),
            bytes: Default::default(),
        });
        let tasks = identities
            .into_iter()
            .enumerate()
            .map(|(i, who)| {
                let channel = channels[i / STREAMS_PER_CHANNEL].clone();
                let stats = stats.clone();
                tokio::spawn(async move {
                    let result = run_proxy(i, node(i, &who), channel, &stats).await;
                    stats.proxies[i].failed.store(1, Relaxed);
                    if let Err(e) = result {
                        eprintln!("proxy {i}: {e}");
                    }
                })
            })
            .collect();
        Ok(Fleet { stats, tasks })
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Istio's node id and metadata, as `halyard bootstrap` writes them.
fn node(i: usize, who: &Identity) -> Node {
    let ip = format!("10.{}.{}.{}", 200 + (i >> 16), (i >> 8) & 255, i & 255);
    let pod = format!("pod-{i}");
    let s = |v: &str| Value {
        kind: Some(Kind::StringValue(v.to_string())),
    };
    let mut labels = Struct::default();
    labels.fields.insert("app".into(), s(&who.app));
    labels.fields.insert("version".into(), s("v1"));
    let mut meta = Struct::default();
    for (k, v) in [
        ("NAMESPACE", who.namespace.as_str()),
        ("NAME", pod.as_str()),
        ("INSTANCE_IPS", ip.as_str()),
        ("SERVICE_ACCOUNT", "default"),
        ("INTERCEPTION_MODE", "REDIRECT"),
        ("WORKLOAD_NAME", who.app.as_str()),
        ("CLUSTER_ID", "Kubernetes"),
    ] {
        meta.fields.insert(k.into(), s(v));
    }
    meta.fields.insert(
        "LABELS".into(),
        Value {
            kind: Some(Kind::StructValue(labels)),
        },
    );
    Node {
        id: format!(
            "sidecar~{ip}~{pod}.{ns}~{ns}.svc.cluster.local",
            ns = who.namespace
        ),
        cluster: format!("{}.{}", who.app, who.namespace),
        metadata: Some(meta),
        ..Default::default()
    }
}

fn request(ty: usize) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: TYPE_URLS[ty].to_string(),
        ..Default::default()
    }
}

/// Names a proxy is subscribed to, as sorted hashes (8 bytes a name).
#[derive(Default)]
struct Names(Vec<u64>);

impl Names {
    fn hash(name: &str) -> u64 {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        BuildHasherDefault::<DefaultHasher>::default().hash_one(name)
    }
    /// Add; true if it was new.
    fn insert(&mut self, name: &str) -> bool {
        let h = Self::hash(name);
        match self.0.binary_search(&h) {
            Ok(_) => false,
            Err(at) => {
                self.0.insert(at, h);
                true
            }
        }
    }
    /// Remove; true if it was there.
    fn remove(&mut self, name: &str) -> bool {
        match self.0.binary_search(&Self::hash(name)) {
            Ok(at) => {
                self.0.remove(at);
                true
            }
            Err(_) => false,
        }
    }
}

/// One proxy's stream: subscribe, follow the dependency chain, ACK everything.
async fn run_proxy(
    i: usize,
    node: Node,
    channel: Channel,
    fleet: &FleetStats,
) -> anyhow::Result<()> {
    let stats = &fleet.proxies[i];
    let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(8);
    let mut cds = request(CDS);
    cds.node = Some(node);
    tx.send(cds).await?;
    tx.send(request(LDS)).await?;

    let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(usize::MAX);
    grpc.ready().await?;
    let codec = tonic_prost::ProstCodec::<DeltaDiscoveryRequest, lean::DeltaResponse>::default();
    let mut inbound = grpc
        .streaming(
            tonic::Request::new(ReceiverStream::new(rx)),
            PathAndQuery::from_static(ADS_PATH),
            codec,
        )
        .await?
        .into_inner();

    let mut eds = Names::default();
    let mut rds = Names::default();
    // Whether a type has answered since we last changed its subscription.
    let mut waiting = [true, false, true, false];
    let mut seen = [false; 4];
    let mut route_names = Vec::new();
    while let Some(resp) = inbound.message().await? {
        let Some(ty) = TYPE_URLS.iter().position(|u| *u == resp.type_url) else {
            continue;
        };
        let mut subscribe = DeltaDiscoveryRequest::default();
        let mut body_bytes = 0u64;
        for r in &resp.resources {
            let Some(body) = &r.resource else { continue };
            body_bytes += body.value.len() as u64;
            match ty {
                CDS => {
                    if let Some(name) = lean::eds_name(&body.value)
                        && eds.insert(&name)
                    {
                        subscribe.resource_names_subscribe.push(name);
                    }
                }
                LDS => {
                    route_names.clear();
                    lean::rds_names(&body.value, &mut route_names);
                    for name in route_names.drain(..) {
                        if rds.insert(&name) {
                            subscribe.resource_names_subscribe.push(name);
                        }
                    }
                }
                _ => {}
            }
        }
        // Istio's EDS name is the cluster name, so a removed cluster drops its
        // EDS subscription. Removed listeners keep their routes (shared by port).
        if ty == CDS {
            for name in &resp.removed_resources {
                if eds.remove(name) {
                    subscribe.resource_names_unsubscribe.push(name.clone());
                }
            }
        }
        if !subscribe.resource_names_subscribe.is_empty()
            || !subscribe.resource_names_unsubscribe.is_empty()
        {
            let dep = if ty == CDS { EDS } else { RDS };
            subscribe.type_url = TYPE_URLS[dep].to_string();
            if !subscribe.resource_names_subscribe.is_empty() {
                waiting[dep] = true;
            }
            tx.send(subscribe).await?;
        }
        let mut ack = request(ty);
        ack.response_nonce = resp.nonce;
        tx.send(ack).await?;

        let now = fleet.now();
        fleet.bytes[ty].fetch_add(body_bytes, Relaxed);
        stats.last[ty].store(now, Relaxed);
        stats.responses[ty].fetch_add(1, Relaxed);
        waiting[ty] = false;
        seen[ty] = true;
        let complete = seen[CDS]
            && seen[LDS]
            && !waiting.iter().any(|w| *w)
            && (eds.0.is_empty() || seen[EDS])
            && (rds.0.is_empty() || seen[RDS]);
        if complete && stats.synced.load(Relaxed) == 0 {
            stats.synced.store(now, Relaxed);
        }
    }
    anyhow::bail!("stream closed by the pilot")
}

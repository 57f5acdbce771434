//! The simulated fleet: N sidecars, each one delta-ADS stream (about 100
//! streams share one HTTP/2 connection). Each behaves like Envoy: CDS and LDS
//! wildcard, then EDS for the clusters' service names and RDS for the HCMs'
//! route names; it ACKs every response and records, in a few atomics, when
//! each type last arrived. Bodies are not kept, but every proxy keeps the
//! name and version of each resource it holds (interned: 8 bytes a
//! resource), so a reconnect sends `initial_resource_versions` as Envoy does
//! and the bench can compare a proxy's state with a fresh proxy's.
//!
//! When the stream fails (the pilot restarts), a proxy reconnects with
//! Envoy's jittered exponential back-off (500 ms base, 30 s cap).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// Envoy's gRPC mux back-off (base and cap).
const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// What one proxy has seen, as nanoseconds since the fleet's epoch (0 = never).
#[derive(Default)]
pub struct ProxyStats {
    /// When the proxy ACKed its first full config (CDS, EDS, LDS, RDS).
    pub synced: AtomicU64,
    /// When it was in sync again after its latest reconnect.
    pub resynced: AtomicU64,
    /// Arrival of the latest response, per type.
    pub last: [AtomicU64; 4],
    /// Responses received, per type.
    pub responses: [AtomicU32; 4],
    /// Resources received (all types, all streams).
    pub resources: AtomicU64,
    /// Streams opened after the first.
    pub reconnects: AtomicU32,
    /// The stream ended and the proxy gave up (fleets that do not reconnect).
    pub failed: AtomicU32,
}

/// Names and versions, interned once for the whole fleet.
#[derive(Default)]
pub struct Interner {
    ids: HashMap<Arc<str>, u32>,
    strings: Vec<Arc<str>>,
}

impl Interner {
    fn id(&mut self, s: &str) -> u32 {
        if let Some(id) = self.ids.get(s) {
            return *id;
        }
        let id = u32::try_from(self.strings.len()).unwrap_or(u32::MAX);
        let s: Arc<str> = Arc::from(s);
        self.strings.push(s.clone());
        self.ids.insert(s, id);
        id
    }

    fn get(&self, s: &str) -> Option<u32> {
        self.ids.get(s).copied()
    }

    pub fn string(&self, id: u32) -> &str {
        self.strings.get(id as usize).map_or("?", |s| s)
    }
}

/// What a proxy holds of each type: (name, version) ids sorted by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Held {
    pub types: [Vec<(u32, u32)>; 4],
}

impl Held {
    /// Apply one response: updates win over what was held, removals drop.
    fn apply(&mut self, ty: usize, mut updates: Vec<(u32, u32)>, mut removed: Vec<u32>) {
        // The last update of a name in one response wins.
        updates.reverse();
        updates.sort_by_key(|(n, _)| *n);
        updates.dedup_by_key(|(n, _)| *n);
        removed.sort_unstable();
        let old = std::mem::take(&mut self.types[ty]);
        let mut out = Vec::with_capacity(old.len() + updates.len());
        let mut ups = updates.into_iter().peekable();
        for (name, version) in old {
            while let Some(u) = ups.next_if(|u| u.0 < name) {
                out.push(u);
            }
            match ups.next_if(|u| u.0 == name) {
                Some(u) => out.push(u),
                None if removed.binary_search(&name).is_ok() => {}
                None => out.push((name, version)),
            }
        }
        out.extend(ups);
        self.types[ty] = out;
    }

    /// Forget resources of `ty` the proxy no longer subscribes to.
    fn retain(&mut self, ty: usize, subscribed: &[u32]) {
        self.types[ty].retain(|(n, _)| subscribed.binary_search(n).is_ok());
    }
}

/// Shared view of the whole fleet, read by the benchmark driver.
pub struct FleetStats {
    pub epoch: Instant,
    pub proxies: Vec<ProxyStats>,
    /// Resource body bytes received, per type (all proxies).
    pub bytes: [AtomicU64; 4],
    /// Each proxy's held resources.
    pub held: Vec<Mutex<Held>>,
    pub interner: Arc<Mutex<Interner>>,
}

impl FleetStats {
    /// Nanoseconds since the epoch (never 0).
    pub fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64 + 1
    }

    /// A copy of what proxy `i` holds.
    pub fn held(&self, i: usize) -> Held {
        self.held[i]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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
    /// Its index: pod name and IP derive from it.
    pub index: usize,
}

impl Fleet {
    /// Connect one proxy per identity to the pilot at `addr`; with
    /// `reconnect`, a failed stream is opened again after a back-off.
    pub async fn start(
        addr: std::net::SocketAddr,
        identities: Vec<Identity>,
        interner: Arc<Mutex<Interner>>,
        reconnect: bool,
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
            held: (0..n).map(|_| Mutex::new(Held::default())).collect(),
            interner,
        });
        let tasks = identities
            .into_iter()
            .enumerate()
            .map(|(i, who)| {
                let channel = channels[i / STREAMS_PER_CHANNEL].clone();
                let stats = stats.clone();
                tokio::spawn(async move {
                    let node = node(&who);
                    let mut subs = Subscriptions::default();
                    let mut attempt = 0u32;
                    loop {
                        let before = stats.proxies[i].total_responses();
                        let result = run_stream(i, &node, channel.clone(), &stats, &mut subs).await;
                        if !reconnect {
                            stats.proxies[i].failed.store(1, Relaxed);
                            if let Err(e) = result {
                                eprintln!("proxy {i}: {e}");
                            }
                            return;
                        }
                        // A stream that got anywhere resets the back-off.
                        if stats.proxies[i].total_responses() > before {
                            attempt = 0;
                        }
                        let cap = BACKOFF_BASE
                            .saturating_mul(1 << attempt.min(6))
                            .min(BACKOFF_MAX);
                        attempt += 1;
                        tokio::time::sleep(cap.mul_f64(jitter(i as u64, attempt))).await;
                        stats.proxies[i].resynced.store(0, Relaxed);
                        stats.proxies[i].reconnects.fetch_add(1, Relaxed);
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

/// A number in [0, 1), different per proxy and attempt (no RNG needed).
fn jitter(proxy: u64, attempt: u32) -> f64 {
    let mut x = proxy.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(attempt) << 32 ^ 0x5851_f42d;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// Istio's node id and metadata, as `halyard bootstrap` writes them.
pub fn node(who: &Identity) -> Node {
    let i = who.index;
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

/// The EDS and RDS names a proxy subscribes to (sorted interned ids); kept
/// across reconnects, as Envoy keeps its watches.
#[derive(Default)]
struct Subscriptions {
    eds: Vec<u32>,
    rds: Vec<u32>,
}

fn insert_sorted(v: &mut Vec<u32>, id: u32) -> bool {
    match v.binary_search(&id) {
        Ok(_) => false,
        Err(at) => {
            v.insert(at, id);
            true
        }
    }
}

/// The requests a (re)connecting proxy opens its stream with: every type it
/// watches, with the names it wants and the versions it holds.
fn opening_requests(
    node: &Node,
    subs: &Subscriptions,
    held: &Held,
    interner: &Interner,
) -> Vec<DeltaDiscoveryRequest> {
    let mut out = Vec::new();
    for ty in [CDS, LDS, EDS, RDS] {
        let names = match ty {
            EDS => &subs.eds,
            RDS => &subs.rds,
            _ => &Vec::new(),
        };
        if matches!(ty, EDS | RDS) && names.is_empty() {
            continue;
        }
        let mut r = request(ty);
        r.resource_names_subscribe = names
            .iter()
            .map(|id| interner.string(*id).to_string())
            .collect();
        r.initial_resource_versions = held.types[ty]
            .iter()
            .map(|(n, v)| {
                (
                    interner.string(*n).to_string(),
                    interner.string(*v).to_string(),
                )
            })
            .collect();
        out.push(r);
    }
    if let Some(first) = out.first_mut() {
        first.node = Some(node.clone());
    }
    out
}

/// A delta ADS stream on `channel` sending what `requests` yields, decoded
/// through the lean response type.
async fn open_stream(
    channel: Channel,
    requests: mpsc::Receiver<DeltaDiscoveryRequest>,
) -> anyhow::Result<tonic::Streaming<lean::DeltaResponse>> {
    let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(usize::MAX);
    grpc.ready().await?;
    let codec = tonic_prost::ProstCodec::<DeltaDiscoveryRequest, lean::DeltaResponse>::default();
    Ok(grpc
        .streaming(
            tonic::Request::new(ReceiverStream::new(requests)),
            PathAndQuery::from_static(ADS_PATH),
            codec,
        )
        .await?
        .into_inner())
}

/// One stream: subscribe (or resume), follow the dependency chain, ACK
/// everything, until the stream ends.
async fn run_stream(
    i: usize,
    node: &Node,
    channel: Channel,
    fleet: &FleetStats,
    subs: &mut Subscriptions,
) -> anyhow::Result<()> {
    let stats = &fleet.proxies[i];
    let resuming = stats.synced.load(Relaxed) != 0;
    let opening = {
        let held = fleet.held[i].lock().unwrap_or_else(|e| e.into_inner());
        let interner = fleet.interner.lock().unwrap_or_else(|e| e.into_inner());
        opening_requests(node, subs, &held, &interner)
    };
    // Whether a type has answered since we last changed its subscription.
    let mut waiting = [false; 4];
    for r in &opening {
        if let Some(ty) = TYPE_URLS.iter().position(|u| *u == r.type_url) {
            waiting[ty] = true;
        }
    }
    let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(8);
    for r in opening {
        tx.send(r).await?;
    }

    let mut inbound = open_stream(channel, rx).await?;

    let mut seen = [false; 4];
    let mut route_names = Vec::new();
    while let Some(resp) = inbound.message().await? {
        let Some(ty) = TYPE_URLS.iter().position(|u| *u == resp.type_url) else {
            continue;
        };
        let mut subscribe = DeltaDiscoveryRequest::default();
        let mut body_bytes = 0u64;
        let mut updates = Vec::with_capacity(resp.resources.len());
        let mut removed = Vec::new();
        {
            let mut interner = fleet.interner.lock().unwrap_or_else(|e| e.into_inner());
            for r in &resp.resources {
                updates.push((interner.id(&r.name), interner.id(&r.version)));
                let Some(body) = &r.resource else { continue };
                body_bytes += body.value.len() as u64;
                match ty {
                    CDS => {
                        if let Some(name) = lean::eds_name(&body.value)
                            && insert_sorted(&mut subs.eds, interner.id(&name))
                        {
                            subscribe.resource_names_subscribe.push(name);
                        }
                    }
                    LDS => {
                        route_names.clear();
                        lean::rds_names(&body.value, &mut route_names);
                        for name in route_names.drain(..) {
                            if insert_sorted(&mut subs.rds, interner.id(&name)) {
                                subscribe.resource_names_subscribe.push(name);
                            }
                        }
                    }
                    _ => {}
                }
            }
            for name in &resp.removed_resources {
                let Some(id) = interner.get(name) else {
                    continue;
                };
                removed.push(id);
                // Istio's EDS name is the cluster name, so a removed cluster
                // drops its EDS subscription. Removed listeners keep their
                // routes (shared by port).
                if ty == CDS
                    && let Ok(at) = subs.eds.binary_search(&id)
                {
                    subs.eds.remove(at);
                    subscribe.resource_names_unsubscribe.push(name.clone());
                }
            }
        }
        let unsubscribed = !subscribe.resource_names_unsubscribe.is_empty();
        {
            let mut held = fleet.held[i].lock().unwrap_or_else(|e| e.into_inner());
            stats.resources.fetch_add(updates.len() as u64, Relaxed);
            held.apply(ty, updates, removed);
            if unsubscribed {
                held.retain(EDS, &subs.eds);
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
            && (subs.eds.is_empty() || seen[EDS])
            && (subs.rds.is_empty() || seen[RDS]);
        if complete {
            if !resuming && stats.synced.load(Relaxed) == 0 {
                stats.synced.store(now, Relaxed);
            }
            if resuming && stats.resynced.load(Relaxed) == 0 {
                stats.resynced.store(now, Relaxed);
            }
        }
    }
    anyhow::bail!("stream closed by the pilot")
}

impl ProxyStats {
    fn total_responses(&self) -> u32 {
        self.responses.iter().map(|r| r.load(Relaxed)).sum()
    }
}

/// Stuck proxies: each opens its own connection with HTTP/2's default 64 KiB
/// window, asks for CDS and LDS, and never reads or answers. The pilot should
/// drop them after its send timeout without slowing anyone else.
pub struct Stuck {
    _streams: Vec<tonic::Streaming<lean::DeltaResponse>>,
    _requests: Vec<mpsc::Sender<DeltaDiscoveryRequest>>,
    /// Their node ids.
    pub ids: Vec<String>,
}

impl Stuck {
    pub async fn connect(
        addr: std::net::SocketAddr,
        identities: Vec<Identity>,
    ) -> anyhow::Result<Stuck> {
        let mut stuck = Stuck {
            _streams: Vec::new(),
            _requests: Vec::new(),
            ids: Vec::new(),
        };
        for who in identities {
            let channel = Endpoint::from_shared(format!("http://{addr}"))?
                .connect()
                .await?;
            let node = node(&who);
            stuck.ids.push(node.id.clone());
            let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(4);
            let mut cds = request(CDS);
            cds.node = Some(node);
            tx.send(cds).await?;
            tx.send(request(LDS)).await?;
            stuck._streams.push(open_stream(channel, rx).await?);
            stuck._requests.push(tx);
        }
        Ok(stuck)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_applies_updates_and_removals() {
        let mut h = Held::default();
        h.apply(CDS, vec![(3, 1), (1, 1), (2, 1)], vec![]);
        assert_eq!(h.types[CDS], vec![(1, 1), (2, 1), (3, 1)]);
        h.apply(CDS, vec![(2, 5), (4, 1), (2, 6)], vec![3]);
        assert_eq!(h.types[CDS], vec![(1, 1), (2, 6), (4, 1)]);
        h.retain(CDS, &[1, 4]);
        assert_eq!(h.types[CDS], vec![(1, 1), (4, 1)]);
    }

    #[test]
    fn jitter_is_spread_in_unit_interval() {
        let v: Vec<f64> = (0..1000).map(|p| jitter(p, 1)).collect();
        assert!(v.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        assert!((0.4..0.6).contains(&mean), "{mean}");
    }

    #[test]
    fn opening_requests_resume_what_is_held() {
        let mut interner = Interner::default();
        let (a, v1, e) = (interner.id("a"), interner.id("v1"), interner.id("e"));
        let mut held = Held::default();
        held.apply(CDS, vec![(a, v1)], vec![]);
        held.apply(EDS, vec![(e, v1)], vec![]);
        let subs = Subscriptions {
            eds: vec![e],
            rds: vec![],
        };
        let node = Node {
            id: "n".into(),
            ..Default::default()
        };
        let reqs = opening_requests(&node, &subs, &held, &interner);
        let urls: Vec<&str> = reqs.iter().map(|r| r.type_url.as_str()).collect();
        assert_eq!(urls, [TYPE_URLS[CDS], TYPE_URLS[LDS], TYPE_URLS[EDS]]);
        assert!(reqs[0].node.is_some() && reqs[1].node.is_none());
        assert_eq!(reqs[0].initial_resource_versions["a"], "v1");
        assert_eq!(reqs[2].resource_names_subscribe, ["e"]);
        assert_eq!(reqs[2].initial_resource_versions["e"], "v1");
    }
}

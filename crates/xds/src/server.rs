//! The ADS server: Envoy's aggregated discovery service over gRPC, both
//! state-of-the-world (`StreamAggregatedResources`) and incremental
//! (`DeltaAggregatedResources`). It serves immutable [`Snapshot`]s that a
//! [`SnapshotSource`] (the pilot) hands out per proxy, and knows nothing of what
//! the resources mean.
//!
//! ```text
//!  proxy ──first request (node)──▶ AdsServer ──subscribe(node)──▶ SnapshotSource
//!                                     │ one task per stream
//!        ◀── responses (mpsc) ─── stream task ◀── watch<Arc<Snapshot>> changes
//!        ─── ACK / NACK / names ─▶     │
//!                                     ▼
//!                                 SyncStatus (/debug/syncz)
//! ```
//!
//! Per stream and type the task tracks the subscribed names, what it last sent
//! and what the proxy ACKed or NACKed. On a snapshot change it pushes the types
//! whose content changed in Envoy's safe order (CDS, EDS, LDS, RDS, then the
//! rest), and only types the proxy has asked for. A NACK is recorded, never
//! answered with the same content again: the next snapshot change is.

mod delta;
mod grpc;
mod shared;
mod sotw;

pub use grpc::{AdsService, SdsService};

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use tokio::sync::watch;
use tonic::Status;

use crate::status::SyncStatus;
use crate::type_url;

/// Largest gRPC message either way (a big mesh's CDS/EDS can pass gRPC's 4 MiB default).
pub const MAX_MESSAGE_SIZE: usize = 64 << 20;

/// Responses buffered per stream before its task waits for the proxy to read.
const STREAM_BUFFER: usize = 16;

/// One resource as served: its name, a content version (hash), and its body.
/// Shared (`Arc`) by every snapshot and stream that holds it, so a mesh's
/// memory grows with its distinct config, not with the number of proxies.
#[derive(Clone, Debug)]
pub struct Resource {
    pub name: Arc<str>,
    pub version: Arc<str>,
    pub body: prost_types::Any,
    /// Its encoding as a delta `Resource` and, inside it, as an `Any`:
    /// made on first send, then shared by every response that carries it.
    wire: std::sync::OnceLock<(bytes::Bytes, bytes::Bytes)>,
}

impl PartialEq for Resource {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.version == other.version && self.body == other.body
    }
}

/// A type's resources by name.
pub type ResourceMap = BTreeMap<Arc<str>, Arc<Resource>>;

/// Everything one proxy should have, per type URL. Immutable; the pilot builds a
/// new one per change, sharing what did not change.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub types: BTreeMap<String, TypeSnapshot>,
}

/// All resources of one type, with the type's version (changes whenever any
/// resource of the type changes). Cloning shares the resources.
#[derive(Clone, Debug, Default)]
pub struct TypeSnapshot {
    pub version: String,
    pub resources: Arc<ResourceMap>,
}

impl Resource {
    /// A resource whose version is a hash of its encoded body. (Messages with
    /// protobuf maps, such as `Struct` metadata, may encode in varying order:
    /// then equal content can get a new version, which costs a push, no more.)
    pub fn new(name: impl Into<Arc<str>>, body: prost_types::Any) -> Resource {
        let version = format!("{:016x}", fnv1a(&[body.type_url.as_bytes(), &body.value]));
        Resource::with_version(name, version, body)
    }

    /// A resource with a version of the caller's choosing.
    pub fn with_version(
        name: impl Into<Arc<str>>,
        version: impl Into<Arc<str>>,
        body: prost_types::Any,
    ) -> Resource {
        Resource {
            name: name.into(),
            version: version.into(),
            body,
            wire: std::sync::OnceLock::new(),
        }
    }

    /// (delta `Resource` encoding, `Any` encoding within it).
    fn wire(&self) -> &(bytes::Bytes, bytes::Bytes) {
        self.wire.get_or_init(|| grpc::resource_wire(self))
    }
}

impl TypeSnapshot {
    /// The resources keyed by name, with a type version hashed from every
    /// (name, version) pair, so it changes exactly when some resource does.
    pub fn from_resources(resources: impl IntoIterator<Item = Resource>) -> TypeSnapshot {
        Self::from_shared(resources.into_iter().map(Arc::new))
    }

    /// Like [`TypeSnapshot::from_resources`], for resources already shared.
    pub fn from_shared(resources: impl IntoIterator<Item = Arc<Resource>>) -> TypeSnapshot {
        let resources: ResourceMap = resources.into_iter().map(|r| (r.name.clone(), r)).collect();
        Self::from_map(Arc::new(resources))
    }

    /// A snapshot of `resources`, its version hashed from names and versions.
    pub fn from_map(resources: Arc<ResourceMap>) -> TypeSnapshot {
        let parts: Vec<&[u8]> = resources
            .values()
            .flat_map(|r| [r.name.as_bytes(), b"\0", r.version.as_bytes(), b"\0"])
            .collect();
        TypeSnapshot {
            version: format!("{:016x}", fnv1a(&parts)),
            resources,
        }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Resource>> {
        self.resources.get(name)
    }
}

/// 64-bit FNV-1a: stable across processes and releases (unlike `DefaultHasher`).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    parts
        .iter()
        .flat_map(|p| p.iter())
        .fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
}

/// What the server needs from the control plane.
pub trait SnapshotSource: Send + Sync + 'static {
    /// A proxy connected (first request's node). Give it a watch of its snapshot;
    /// Err rejects the stream with the status.
    fn subscribe(&self, node: &Node) -> Result<watch::Receiver<Arc<Snapshot>>, Status>;
    /// The stream ended (optional hook).
    fn disconnected(&self, _node: &Node) {}
}

/// The ADS gRPC service. Cheap: each stream runs in its own task.
pub struct AdsServer {
    source: Arc<dyn SnapshotSource>,
    status: SyncStatus,
    shared: Arc<Shared>,
}

/// What every stream of one server shares.
struct Shared {
    diffs: shared::DiffCache,
    names: shared::NameSets,
    /// Streams with resources in flight (sent, not yet ACKed or NACKed).
    /// A burst of first syncs (a pilot restart) then holds at most this many
    /// encoded configs in memory at once, and each stream's push completes
    /// at the proxy's pace instead of all of them crawling together.
    pushes: Arc<tokio::sync::Semaphore>,
    /// How long a response may wait for the proxy to take it (None: forever).
    send_timeout: Option<std::time::Duration>,
}

/// Streams with a push in flight at once (Istio's `PILOT_PUSH_THROTTLE`
/// default).
pub const DEFAULT_PUSH_CONCURRENCY: usize = 100;

/// How long a stream keeps its push slot waiting for an ACK (a proxy that
/// stops reading must not hold the others back).
const PUSH_SLOT_HOLD: std::time::Duration = std::time::Duration::from_secs(5);

impl Shared {
    fn new(push_concurrency: usize) -> Self {
        Shared {
            diffs: Default::default(),
            names: Default::default(),
            pushes: Arc::new(tokio::sync::Semaphore::new(push_concurrency.max(1))),
            send_timeout: Some(DEFAULT_SEND_TIMEOUT),
        }
    }
}

/// A stream's push slot, while it has responses the proxy has not answered.
#[derive(Default)]
struct PushSlot {
    held: Option<(tokio::sync::OwnedSemaphorePermit, tokio::time::Instant)>,
}

impl PushSlot {
    /// Wait for a slot unless this stream holds one.
    async fn acquire(&mut self, shared: &Shared) {
        if self.held.is_none()
            && let Ok(permit) = shared.pushes.clone().acquire_owned().await
        {
            self.held = Some((permit, tokio::time::Instant::now() + PUSH_SLOT_HOLD));
        }
    }

    fn release(&mut self) {
        self.held = None;
    }

    /// When the slot is given up even without an answer.
    fn deadline(&self) -> Option<tokio::time::Instant> {
        self.held.as_ref().map(|(_, d)| *d)
    }
}

/// How long a response may wait for a proxy that does not read before its
/// stream is dropped (Istio's `PILOT_XDS_SEND_TIMEOUT`).
pub const DEFAULT_SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A stream's way to its proxy: the response queue, the push slot, since
/// when a response has gone unanswered, and the node id for logs. Both ADS
/// variants send through it.
struct Outbox {
    tx: grpc::Tx,
    slot: PushSlot,
    unanswered: Unanswered,
    node: String,
}

impl Outbox {
    fn new(tx: grpc::Tx, node: &str) -> Outbox {
        Outbox {
            tx,
            slot: PushSlot::default(),
            unanswered: Unanswered::default(),
            node: node.to_string(),
        }
    }

    /// Every response sent so far is answered: the slot is free again.
    fn all_answered(&mut self) {
        self.slot.release();
        self.unanswered.all_answered();
    }

    /// Queue a response for the proxy. While the proxy does not take it
    /// (its HTTP/2 window and the stream's buffer are full) the push slot is
    /// given up at its deadline, so other streams push meanwhile; after the
    /// send timeout the stream is dropped and logged: a proxy that stopped
    /// reading must not hold memory or a slot for ever.
    async fn send(&mut self, response: grpc::Encoded, shared: &Shared) -> Result<(), Closed> {
        self.unanswered.sent();
        let give_up = shared.send_timeout.map(|t| tokio::time::Instant::now() + t);
        let send = self.tx.send(Ok(response));
        tokio::pin!(send);
        loop {
            tokio::select! {
                sent = &mut send => return sent.map_err(|_| Closed),
                () = until(self.slot.deadline()) => self.slot.release(),
                () = until(give_up) => {
                    tracing::warn!(
                        node = %self.node,
                        timeout_s = shared.send_timeout.unwrap_or_default().as_secs_f64(),
                        "proxy is not reading its xDS stream: stream dropped"
                    );
                    return Err(Closed);
                }
            }
        }
    }
}

/// Since when a stream has had a response out that the proxy has not
/// answered (ACK or NACK). Envoy answers every response once applied; one
/// that answers nothing for the send timeout has stopped reading.
#[derive(Default)]
struct Unanswered {
    since: Option<tokio::time::Instant>,
}

impl Unanswered {
    fn sent(&mut self) {
        self.since.get_or_insert_with(tokio::time::Instant::now);
    }

    fn all_answered(&mut self) {
        self.since = None;
    }

    /// When the stream is given up.
    fn deadline(&self, shared: &Shared) -> Option<tokio::time::Instant> {
        Some(self.since? + shared.send_timeout?)
    }
}

/// Log that a stream is dropped for not answering.
fn log_unanswered(node: &str, shared: &Shared) {
    tracing::warn!(
        node,
        timeout_s = shared.send_timeout.unwrap_or_default().as_secs_f64(),
        "proxy has not answered its xDS pushes: stream dropped"
    );
}

/// Sleep until `deadline`, or forever without one.
async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

impl AdsServer {
    pub fn new(source: Arc<dyn SnapshotSource>, status: SyncStatus) -> Self {
        Self::with_push_concurrency(source, status, DEFAULT_PUSH_CONCURRENCY)
    }

    /// At most `n` streams with a push in flight at once.
    pub fn with_push_concurrency(
        source: Arc<dyn SnapshotSource>,
        status: SyncStatus,
        n: usize,
    ) -> Self {
        AdsServer {
            source,
            status,
            shared: Arc::new(Shared::new(n)),
        }
    }

    /// Drop a stream whose proxy has not taken a response for this long
    /// (None: never). Default [`DEFAULT_SEND_TIMEOUT`].
    pub fn with_send_timeout(mut self, timeout: Option<std::time::Duration>) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.send_timeout = timeout;
        }
        self
    }

    /// The same snapshots as Envoy's SDS service (`StreamSecrets`,
    /// `DeltaSecrets`), as an agent serves its proxy's certificates.
    pub fn into_sds_service(self) -> SdsService {
        SdsService(self.into_service())
    }

    /// The service for tonic's router (ADS, both variants, on their gRPC paths).
    pub fn into_service(self) -> AdsService {
        AdsService {
            source: self.source,
            status: self.status,
            shared: self.shared,
        }
    }
}

/// What a stream task needs from the server.
struct StreamContext {
    source: Arc<dyn SnapshotSource>,
    status: SyncStatus,
    shared: Arc<Shared>,
}

impl StreamContext {
    /// Accept a stream from its first request's node: subscribe to the proxy's
    /// snapshot and register it in the sync status. Err is the status to end
    /// the stream with.
    fn open(
        self,
        node: Option<&Node>,
        delta: bool,
    ) -> Result<(StreamGuard, watch::Receiver<Arc<Snapshot>>), Status> {
        let node = node
            .cloned()
            .ok_or_else(|| Status::invalid_argument("the first request must carry the node"))?;
        let snapshots = self.source.subscribe(&node)?;
        let stream_id = self.status.register(&node.id, delta);
        tracing::info!(node = %node.id, stream_id, delta, "ADS stream opened");
        let guard = StreamGuard {
            source: self.source,
            status: self.status,
            node,
            stream_id,
        };
        Ok((guard, snapshots))
    }
}

/// Registered stream; unregisters (and tells the source) when the task ends,
/// however it ends.
struct StreamGuard {
    source: Arc<dyn SnapshotSource>,
    status: SyncStatus,
    node: Node,
    stream_id: u64,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        tracing::info!(node = %self.node.id, stream_id = self.stream_id, "ADS stream closed");
        self.status.unregister(self.stream_id);
        self.source.disconnected(&self.node);
    }
}

/// The proxy went away (its response channel closed).
struct Closed;

/// Which names of a type a stream is subscribed to. The name set is
/// interned: streams subscribed to the same names share one copy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Subscription {
    pub wildcard: bool,
    pub names: Arc<BTreeSet<Arc<str>>>,
}

impl Subscription {
    pub fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    pub fn is_empty(&self) -> bool {
        !self.wildcard && self.names.is_empty()
    }

    /// The names, with `*` for a wildcard.
    pub fn to_list(&self) -> Vec<String> {
        let star = self.wildcard.then(|| "*".to_string());
        star.into_iter()
            .chain(self.names.iter().map(|n| n.to_string()))
            .collect()
    }

    /// `name` as an `Arc<str>`, the snapshot's own when it has the name.
    fn name_in(snapshot: Option<&TypeSnapshot>, name: &str) -> Arc<str> {
        snapshot
            .and_then(|s| s.resources.get_key_value(name))
            .map_or_else(|| Arc::from(name), |(k, _)| k.clone())
    }
}

/// LDS, CDS and NDS are wildcard when a proxy names nothing; EDS, RDS and SDS never are.
fn is_wildcard_type(url: &str) -> bool {
    url == type_url::LISTENER || url == type_url::CLUSTER || url == type_url::NAME_TABLE
}

/// The type URLs in Envoy's safe push order: CDS, EDS, LDS, RDS, then the rest.
fn push_order<'a>(urls: impl Iterator<Item = &'a String>) -> Vec<String> {
    let rank = |url: &str| match url {
        type_url::CLUSTER => 0,
        type_url::ENDPOINT => 1,
        type_url::LISTENER => 2,
        type_url::ROUTE => 3,
        _ => 4,
    };
    let mut urls: Vec<String> = urls.cloned().collect();
    urls.sort_by(|a, b| rank(a).cmp(&rank(b)).then_with(|| a.cmp(b)));
    urls
}

/// Envoy's generated messages carry their own `google.protobuf.Any`; ours is prost's.
pub(crate) type WireAny = envoy_types::pb::google::protobuf::Any;

#[cfg(test)]
pub(crate) fn to_wire(any: &prost_types::Any) -> WireAny {
    WireAny {
        type_url: any.type_url.clone(),
        value: any.value.clone(),
    }
}

pub(crate) fn from_wire(any: WireAny) -> prost_types::Any {
    prost_types::Any {
        type_url: any.type_url,
        value: any.value,
    }
}

/// The error text of a NACK (Envoy puts the reason in `error_detail.message`).
fn nack_text(detail: &envoy_types::pb::google::rpc::Status) -> String {
    if detail.message.is_empty() {
        format!("NACK (code {})", detail.code)
    } else {
        detail.message.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_version_follows_resource_versions() {
        let any = |v: &[u8]| prost_types::Any {
            type_url: type_url::CLUSTER.into(),
            value: v.to_vec(),
        };
        let a1 = Resource::new("a", any(b"1"));
        let b1 = Resource::new("b", any(b"1"));
        assert_eq!(a1.version, b1.version, "same body, same version");
        let v1 = TypeSnapshot::from_resources([a1.clone(), b1.clone()]);
        let again = TypeSnapshot::from_resources([b1.clone(), a1.clone()]);
        assert_eq!(v1.version, again.version);
        let v2 = TypeSnapshot::from_resources([a1.clone(), Resource::new("b", any(b"2"))]);
        assert_ne!(v1.version, v2.version);
        let v3 = TypeSnapshot::from_resources([a1]);
        assert_ne!(v1.version, v3.version);
        assert_eq!(v3.resources.len(), 1);
    }

    #[test]
    fn push_order_is_cds_eds_lds_rds_then_rest() {
        let urls = [
            type_url::SECRET,
            type_url::ROUTE,
            type_url::LISTENER,
            type_url::ENDPOINT,
            type_url::CLUSTER,
        ]
        .map(String::from);
        let shorts: Vec<_> = push_order(urls.iter())
            .iter()
            .map(|u| type_url::short(u))
            .collect();
        assert_eq!(shorts, ["CDS", "EDS", "LDS", "RDS", "SDS"]);
    }

    fn encoded() -> Result<grpc::Encoded, Status> {
        Err(Status::unavailable("a stand-in response"))
    }

    fn response() -> grpc::Encoded {
        grpc::sotw_response("1", std::iter::empty(), type_url::CLUSTER, "1")
    }

    /// A proxy that stops reading: its slot goes back to the pool at the
    /// slot deadline while the send still waits, and the stream is given up
    /// at the send timeout.
    #[tokio::test(start_paused = true)]
    async fn a_proxy_that_does_not_read_gives_up_its_slot_then_its_stream() {
        let shared = Shared {
            send_timeout: Some(std::time::Duration::from_secs(30)),
            ..Shared::new(1)
        };
        let (tx, _never_read) = tokio::sync::mpsc::channel(1);
        tx.send(encoded()).await.expect("fills the buffer");
        let mut out = Outbox::new(tx, "stuck");
        out.slot.acquire(&shared).await;
        assert_eq!(shared.pushes.available_permits(), 0);
        let start = tokio::time::Instant::now();
        let sending = out.send(response(), &shared);
        tokio::pin!(sending);
        // Still waiting at the slot deadline, but the slot is free again.
        assert!(
            tokio::time::timeout(
                PUSH_SLOT_HOLD + std::time::Duration::from_millis(1),
                &mut sending
            )
            .await
            .is_err()
        );
        assert_eq!(shared.pushes.available_permits(), 1);
        assert!(sending.await.is_err(), "dropped");
        assert_eq!(start.elapsed(), std::time::Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn a_reading_proxy_is_sent_to_at_once() {
        let shared = Shared::new(1);
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let mut out = Outbox::new(tx, "ok");
        out.slot.acquire(&shared).await;
        let start = tokio::time::Instant::now();
        assert!(out.send(response(), &shared).await.is_ok());
        assert_eq!(start.elapsed(), std::time::Duration::ZERO);
        assert_eq!(shared.pushes.available_permits(), 0, "held until the ACK");
        assert!(rx.recv().await.is_some());
    }
}

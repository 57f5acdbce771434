//! Shared harness for the ADS integration tests: an in-process server on an
//! ephemeral port (restartable on the same port), a snapshot builder, and a
//! recording sink whose EDS/RDS wants follow its CDS/LDS sets.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{Locality, Node};
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, LocalityLbEndpoints};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
use prost::{Message, Name};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use xds::client::{ClientConfig, ResourceSink};
use xds::server::{AdsServer, Resource, Snapshot, SnapshotSource, TypeSnapshot};
use xds::status::SyncStatus;
use xds::type_url::{CLUSTER, ENDPOINT, LISTENER, ROUTE};

pub const DEADLINE: Duration = Duration::from_secs(10);

/// Hands every proxy the same snapshot watch.
struct TestSource {
    snapshots: watch::Receiver<Arc<Snapshot>>,
}

impl SnapshotSource for TestSource {
    fn subscribe(&self, node: &Node) -> Result<watch::Receiver<Arc<Snapshot>>, tonic::Status> {
        if node.id == "rejected" {
            return Err(tonic::Status::permission_denied("not in this mesh"));
        }
        Ok(self.snapshots.clone())
    }
}

/// An ADS server on 127.0.0.1, serving whatever `set` last gave it.
pub struct TestServer {
    pub addr: SocketAddr,
    pub status: SyncStatus,
    snapshots: watch::Sender<Arc<Snapshot>>,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl TestServer {
    pub async fn start(snapshot: Snapshot) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::serve(listener, snapshot)
    }

    /// A server that drops a stream whose proxy answers nothing for `timeout`.
    #[allow(dead_code)]
    pub async fn start_with_send_timeout(snapshot: Snapshot, timeout: Duration) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::serve_with(listener, snapshot, Some(timeout))
    }

    /// Restart on a port a stopped server used.
    pub async fn start_on(addr: SocketAddr, snapshot: Snapshot) -> TestServer {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            match TcpListener::bind(addr).await {
                Ok(listener) => return Self::serve(listener, snapshot),
                Err(e) if tokio::time::Instant::now() > deadline => panic!("rebind {addr}: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    fn serve(listener: TcpListener, snapshot: Snapshot) -> TestServer {
        Self::serve_with(listener, snapshot, Some(xds::server::DEFAULT_SEND_TIMEOUT))
    }

    fn serve_with(
        listener: TcpListener,
        snapshot: Snapshot,
        send_timeout: Option<Duration>,
    ) -> TestServer {
        let addr = listener.local_addr().expect("local addr");
        let (snapshots, rx) = watch::channel(Arc::new(snapshot));
        let status = SyncStatus::default();
        let ads = AdsServer::new(Arc::new(TestSource { snapshots: rx }), status.clone())
            .with_send_timeout(send_timeout);
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(ads.into_service())
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stop.await;
                })
                .await
                .expect("serve");
        });
        TestServer {
            addr,
            status,
            snapshots,
            shutdown,
            task,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, snapshot: Snapshot) {
        self.snapshots.send_replace(Arc::new(snapshot));
    }

    /// Stop accepting, end every stream (as a control plane going away does),
    /// and wait until the port is free.
    pub async fn stop(self) {
        let _ = self.shutdown.send(());
        drop(self.snapshots);
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("server stops")
            .expect("server task");
    }

    /// The one connected proxy's status (panics unless exactly one).
    pub fn proxy(&self) -> xds::status::ProxyStatus {
        let mut all = self.status.snapshot();
        assert_eq!(all.len(), 1, "one proxy connected: {all:?}");
        all.remove(0)
    }

    /// Wait until exactly one proxy is connected and it ACKed `snapshot`'s
    /// version of each of `types`.
    pub async fn wait_acked(&self, snapshot: &Snapshot, types: &[&str]) {
        let ok = self
            .status
            .wait_until(DEADLINE, |proxies| {
                proxies.len() == 1
                    && types.iter().all(|url| {
                        let t = proxies[0].types.get(xds::type_url::short(url));
                        t.and_then(|t| t.acked_version.as_deref())
                            == Some(snapshot.types[*url].version.as_str())
                    })
            })
            .await;
        assert!(ok, "not ACKed in time: {:#?}", self.status.snapshot());
    }
}

/// Client config for a test server, with short backoffs.
pub fn client_config(server: &TestServer, delta: bool) -> ClientConfig {
    client_config_for(server.addr, delta)
}

/// Client config for a server that may not be listening yet.
pub fn client_config_for(addr: SocketAddr, delta: bool) -> ClientConfig {
    ClientConfig {
        endpoint: format!("http://{addr}"),
        node: Node {
            id: "sidecar~10.0.0.1~app.default~default.svc.cluster.local".into(),
            cluster: "app.default".into(),
            ..Default::default()
        },
        delta,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(100),
        extra_types: Vec::new(),
    }
}

/// A snapshot from `(type_url, [(name, tag)])`: each resource is a real Envoy
/// message named `name` carrying `tag` (its version) somewhere in its body.
pub fn snapshot(spec: &[(&str, &[(&str, &str)])]) -> Snapshot {
    let mut types: BTreeMap<String, TypeSnapshot> = [CLUSTER, ENDPOINT, LISTENER, ROUTE]
        .iter()
        .map(|url| (url.to_string(), type_snapshot(url, &[])))
        .collect();
    for (url, items) in spec {
        types.insert(url.to_string(), type_snapshot(url, items));
    }
    Snapshot { types }
}

fn type_snapshot(url: &str, items: &[(&str, &str)]) -> TypeSnapshot {
    let mut hasher = DefaultHasher::new();
    items.hash(&mut hasher);
    let resources = items
        .iter()
        .map(|(name, tag)| {
            let resource = Resource::with_version(*name, *tag, body(url, name, tag));
            (resource.name.clone(), std::sync::Arc::new(resource))
        })
        .collect();
    TypeSnapshot {
        version: format!("{:016x}", hasher.finish()),
        resources: std::sync::Arc::new(resources),
    }
}

/// The body of a test resource (what the sink should end up holding).
pub fn body(url: &str, name: &str, tag: &str) -> prost_types::Any {
    fn any<M: Message + Name>(m: M) -> prost_types::Any {
        prost_types::Any::from_msg(&m).expect("encode")
    }
    let (name, tag) = (name.to_string(), tag.to_string());
    match url {
        CLUSTER => any(Cluster {
            name,
            alt_stat_name: tag,
            ..Default::default()
        }),
        ENDPOINT => any(ClusterLoadAssignment {
            cluster_name: name,
            endpoints: vec![LocalityLbEndpoints {
                locality: Some(Locality {
                    zone: tag,
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        LISTENER => any(Listener {
            name,
            stat_prefix: tag,
            ..Default::default()
        }),
        ROUTE => any(RouteConfiguration {
            name,
            virtual_hosts: vec![VirtualHost {
                name: tag,
                ..Default::default()
            }],
            ..Default::default()
        }),
        other => panic!("no test body for {other}"),
    }
}

/// Records what it is given. Wants the EDS of every cluster it holds and the
/// RDS named after every listener it holds. Can be told to reject a type.
#[derive(Default)]
pub struct TestSink {
    applied: Mutex<HashMap<String, Applied>>,
    reject: Mutex<HashMap<String, String>>,
}

#[derive(Clone, Debug, Default)]
pub struct Applied {
    pub version: String,
    pub resources: BTreeMap<String, prost_types::Any>,
    /// Successful applies.
    pub count: u64,
}

impl TestSink {
    pub fn new() -> Arc<TestSink> {
        Arc::new(TestSink::default())
    }

    pub fn reject(&self, url: &str, error: Option<&str>) {
        let mut reject = self.reject.lock().unwrap();
        match error {
            Some(e) => reject.insert(url.to_string(), e.to_string()),
            None => reject.remove(url),
        };
    }

    pub fn get(&self, url: &str) -> Option<Applied> {
        self.applied.lock().unwrap().get(url).cloned()
    }

    pub fn names(&self, url: &str) -> Vec<String> {
        self.get(url)
            .map(|a| a.resources.into_keys().collect())
            .unwrap_or_default()
    }

    /// Holds exactly `items` (name, tag) of a type, with the right bodies.
    pub fn holds(&self, url: &str, items: &[(&str, &str)]) -> bool {
        let expected: BTreeMap<String, prost_types::Any> = items
            .iter()
            .map(|(name, tag)| (name.to_string(), body(url, name, tag)))
            .collect();
        self.get(url).map(|a| a.resources) == Some(expected)
    }
}

impl ResourceSink for TestSink {
    fn apply(
        &self,
        type_url: &str,
        version: &str,
        resources: &BTreeMap<String, prost_types::Any>,
    ) -> Result<(), String> {
        if let Some(error) = self.reject.lock().unwrap().get(type_url) {
            return Err(error.clone());
        }
        let mut applied = self.applied.lock().unwrap();
        let entry = applied.entry(type_url.to_string()).or_default();
        entry.version = version.to_string();
        entry.resources = resources.clone();
        entry.count += 1;
        Ok(())
    }

    fn wanted(&self, type_url: &str) -> Option<Vec<String>> {
        let from = match type_url {
            ENDPOINT => CLUSTER,
            ROUTE => LISTENER,
            _ => return None,
        };
        Some(self.names(from))
    }
}

/// Poll `cond` until it holds, panicking with `what` after the deadline.
pub async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The names as a set, for comparisons.
pub fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

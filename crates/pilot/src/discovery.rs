//! Serving the mesh to proxies: each connected proxy has a watch channel of its
//! own xDS snapshot; a new mesh regenerates every proxy's snapshot and the ADS
//! server pushes the types whose content changed (content-hash versions, so an
//! endpoint-only change pushes only EDS).

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use envoy_types::pb::envoy::config::core::v3::Node;
use prost::{Message, Name};
use tokio::sync::watch;
use xds::server::{Resource, Snapshot, SnapshotSource, TypeSnapshot};
use xds::type_url;

use crate::check::{self, Dropped};
use crate::mesh::Mesh;
use crate::node::ProxyNode;
use crate::translate::{ConfigKey, ProxyResources, config_key, translate};

struct Connected {
    node: ProxyNode,
    tx: watch::Sender<Arc<Snapshot>>,
    /// What the pre-push check left out of its current snapshot.
    dropped: Arc<Vec<Dropped>>,
}

/// A proxy's snapshot and what the pre-push check dropped from it.
type Checked = (Arc<Snapshot>, Arc<Vec<Dropped>>);

/// Snapshots for the current mesh, one per distinct [`ConfigKey`].
#[derive(Default)]
struct SnapshotCache {
    label_sensitive: bool,
    by_key: HashMap<ConfigKey, Checked>,
    /// NDS: the same for every proxy, built once per mesh.
    nds: TypeSnapshot,
    pool: ResourcePool,
}

/// `pilot_xds_push_errors{type}`: units the pre-push check dropped, counted
/// once per translation (proxies sharing a config share one).
#[derive(Debug, Default)]
pub struct PushErrors {
    by_type: [AtomicU64; 4],
}

impl PushErrors {
    const TYPES: [&'static str; 4] = ["CDS", "EDS", "LDS", "RDS"];

    fn add(&self, dropped: &[Dropped]) {
        for d in dropped {
            if let Some(i) = Self::TYPES.iter().position(|t| *t == d.type_short) {
                self.by_type[i].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// (type, count) for every type.
    pub fn counts(&self) -> Vec<(&'static str, u64)> {
        Self::TYPES
            .iter()
            .zip(&self.by_type)
            .map(|(t, c)| (*t, c.load(Ordering::Relaxed)))
            .collect()
    }
}

impl SnapshotCache {
    fn for_mesh(mesh: &Mesh, mut pool: ResourcePool) -> Self {
        SnapshotCache {
            label_sensitive: mesh.label_sensitive(),
            by_key: HashMap::new(),
            nds: type_snapshot(&[crate::names::nds(mesh)], |_| &NDS_NAME, &mut pool),
            pool,
        }
    }

    fn get(&mut self, mesh: &Mesh, proxy: &ProxyNode, errors: &PushErrors) -> Checked {
        let key = config_key(mesh, proxy, self.label_sensitive);
        self.by_key
            .entry(key)
            .or_insert_with(|| {
                let mut res = translate(mesh, proxy);
                let dropped = check::sanitize(mesh, &mut res);
                errors.add(&dropped);
                let mut snap = snapshot_pooled(&res, &mut self.pool);
                snap.types
                    .insert(type_url::NAME_TABLE.to_string(), self.nds.clone());
                (Arc::new(snap), Arc::new(dropped))
            })
            .clone()
    }
}

/// What one [`Discovery::update`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PushSummary {
    /// Configs translated in full.
    pub configs: usize,
    /// Configs carried over with only their endpoints rebuilt.
    pub incremental: usize,
    /// Proxies whose snapshot changed.
    pub proxies: usize,
}

impl SnapshotCache {
    /// `snap` (translated for `key` from the previous mesh) for the new one,
    /// when only the endpoints of `hosts` changed: the same clusters,
    /// listeners and routes (shared, not copied), the load assignments of
    /// those hosts rebuilt and checked, and this mesh's NDS.
    fn patch_endpoints(
        &mut self,
        mesh: &Mesh,
        key: &ConfigKey,
        (snap, dropped): (&Arc<Snapshot>, &Arc<Vec<Dropped>>),
        hosts: &std::collections::BTreeSet<String>,
        errors: &PushErrors,
    ) -> Checked {
        let mut types = snap.types.clone();
        types.insert(type_url::NAME_TABLE.to_string(), self.nds.clone());
        let Some(eds) = snap.types.get(type_url::ENDPOINT) else {
            return (Arc::new(Snapshot { types }), dropped.clone());
        };
        let mut rebuilt = Vec::new();
        let mut stale = std::collections::BTreeSet::new();
        for name in eds.resources.keys() {
            let Some((port, subset, host)) = crate::incremental::parse_outbound(name) else {
                continue;
            };
            if !hosts.contains(host) {
                continue;
            }
            stale.insert(name.clone());
            let Some(svc) = mesh.service(host) else {
                continue;
            };
            let Some(port) = svc.port(port) else {
                continue;
            };
            let rule = mesh.destination_rule(host, key.namespace(), &svc.namespace);
            let subset = match subset {
                "" => None,
                s => rule.and_then(|r| r.subset(s)),
            };
            let policy = crate::translate::endpoint::policy_for(rule, subset, port);
            rebuilt.push(crate::translate::endpoint::assignment(
                name,
                svc,
                port,
                subset,
                &policy,
                key.locality(),
            ));
        }
        if stale.is_empty() {
            return (Arc::new(Snapshot { types }), dropped.clone());
        }
        let mut new_drops = check::sanitize_endpoints(mesh, &mut rebuilt);
        errors.add(&new_drops);
        let mut map = (*eds.resources).clone();
        map.retain(|name, _| !stale.contains(name));
        let fresh = type_snapshot(&rebuilt, |e| &e.cluster_name, &mut self.pool);
        map.extend(fresh.resources.iter().map(|(k, v)| (k.clone(), v.clone())));
        types.insert(
            type_url::ENDPOINT.to_string(),
            TypeSnapshot::from_map(Arc::new(map)),
        );
        let mut all: Vec<Dropped> = dropped
            .iter()
            .filter(|d| !(d.type_short == "EDS" && stale.contains(d.resource.as_str())))
            .cloned()
            .collect();
        all.append(&mut new_drops);
        (Arc::new(Snapshot { types }), Arc::new(all))
    }
}

/// The pilot's side of ADS: current mesh plus every connected proxy.
pub struct Discovery {
    mesh: ArcSwap<Mesh>,
    proxies: Mutex<Vec<Connected>>,
    /// Valid for the mesh in `mesh`; replaced with it (lock order: proxies, cache).
    cache: Mutex<SnapshotCache>,
    pub push_errors: PushErrors,
}

impl Discovery {
    pub fn new(mesh: Mesh) -> Self {
        let cache = SnapshotCache::for_mesh(&mesh, ResourcePool::default());
        Discovery {
            mesh: ArcSwap::from_pointee(mesh),
            proxies: Mutex::new(Vec::new()),
            cache: Mutex::new(cache),
            push_errors: PushErrors::default(),
        }
    }

    pub fn mesh(&self) -> Arc<Mesh> {
        self.mesh.load_full()
    }

    /// Swap in a new mesh and push to every connected proxy. Translation runs
    /// once per distinct [`ConfigKey`], not once per proxy; when only
    /// endpoints changed, a config keeps everything but the load assignments
    /// of the changed services (see [`crate::incremental`]).
    pub fn update(&self, mesh: Mesh) -> PushSummary {
        let mesh = Arc::new(mesh);
        let mut proxies = self.proxies.lock().unwrap_or_else(|e| e.into_inner());
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let old_mesh = self.mesh.load_full();
        let pool = cache.pool.next_generation();
        let mut old = std::mem::replace(&mut *cache, SnapshotCache::for_mesh(&mesh, pool));
        let endpoints_only = crate::incremental::endpoint_only_change(&old_mesh, &mesh)
            .filter(|_| old.label_sensitive == cache.label_sensitive);
        self.mesh.store(mesh.clone());
        proxies.retain(|p| !p.tx.is_closed());
        let mut summary = PushSummary::default();
        let keys: Vec<ConfigKey> = proxies
            .iter()
            .map(|p| config_key(&mesh, &p.node, cache.label_sensitive))
            .collect();
        // Configs that need a full translation, one proxy each, on all cores.
        let mut work: Vec<(ConfigKey, &ProxyNode)> = Vec::new();
        let mut queued = std::collections::HashSet::new();
        for (key, p) in keys.iter().zip(proxies.iter()) {
            let patchable = endpoints_only.is_some() && old.by_key.contains_key(key);
            if !patchable && queued.insert(key) {
                work.push((key.clone(), &p.node));
            }
        }
        for ((key, _), (encoded, dropped)) in work.iter().zip(translate_parallel(&mesh, &work)) {
            self.push_errors.add(&dropped);
            let mut snap = adopt(encoded, &mut cache.pool);
            snap.types
                .insert(type_url::NAME_TABLE.to_string(), cache.nds.clone());
            cache
                .by_key
                .insert(key.clone(), (Arc::new(snap), Arc::new(dropped)));
            summary.configs += 1;
        }
        drop(work);
        for (p, key) in proxies.iter_mut().zip(keys) {
            let hit = cache.by_key.get(&key).cloned();
            let (snap, dropped) = match (hit, &endpoints_only) {
                (Some(hit), _) => hit,
                (None, Some(hosts)) if old.by_key.contains_key(&key) => {
                    let (snap, dropped) = old.by_key.remove(&key).unwrap_or_default();
                    let patched = cache.patch_endpoints(
                        &mesh,
                        &key,
                        (&snap, &dropped),
                        hosts,
                        &self.push_errors,
                    );
                    summary.incremental += 1;
                    cache.by_key.insert(key, patched.clone());
                    patched
                }
                (None, _) => cache.get(&mesh, &p.node, &self.push_errors),
            };
            p.dropped = dropped;
            let sent = p.tx.send_if_modified(|cur| {
                let changed = !same_versions(cur, &snap);
                if changed {
                    *cur = snap;
                }
                changed
            });
            summary.proxies += usize::from(sent);
        }
        summary
    }

    /// Number of proxies with an open stream.
    pub fn connected(&self) -> usize {
        let proxies = self.proxies.lock().unwrap_or_else(|e| e.into_inner());
        proxies.iter().filter(|p| !p.tx.is_closed()).count()
    }

    /// The snapshot last given to a connected proxy (for /debug/config_dump).
    pub fn snapshot_for(&self, node_id: &str) -> Option<Arc<Snapshot>> {
        let proxies = self.proxies.lock().unwrap_or_else(|e| e.into_inner());
        proxies
            .iter()
            .rev()
            .find(|p| p.node.id == node_id && !p.tx.is_closed())
            .map(|p| p.tx.borrow().clone())
    }

    /// Every connected proxy's node (for debug pages).
    pub fn proxy_nodes(&self) -> Vec<ProxyNode> {
        let proxies = self.proxies.lock().unwrap_or_else(|e| e.into_inner());
        proxies
            .iter()
            .filter(|p| !p.tx.is_closed())
            .map(|p| p.node.clone())
            .collect()
    }

    /// What the pre-push check dropped from each connected proxy's config
    /// (by node id; empty lists left out).
    pub fn dropped(&self) -> HashMap<String, Arc<Vec<Dropped>>> {
        let proxies = self.proxies.lock().unwrap_or_else(|e| e.into_inner());
        proxies
            .iter()
            .filter(|p| !p.tx.is_closed() && !p.dropped.is_empty())
            .map(|p| (p.node.id.clone(), p.dropped.clone()))
            .collect()
    }
}

fn same_versions(a: &Snapshot, b: &Snapshot) -> bool {
    a.types.len() == b.types.len()
        && a.types
            .iter()
            .zip(b.types.iter())
            .all(|((ka, va), (kb, vb))| ka == kb && va.version == vb.version)
}

impl SnapshotSource for Discovery {
    fn subscribe(&self, node: &Node) -> Result<watch::Receiver<Arc<Snapshot>>, tonic::Status> {
        let proxy = ProxyNode::from_node(node)
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        let mut proxies = self.proxies.lock().unwrap_or_else(|e| e.into_inner());
        let (snap, dropped) = {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            cache.get(&self.mesh.load(), &proxy, &self.push_errors)
        };
        let (tx, rx) = watch::channel(snap);
        proxies.retain(|p| !p.tx.is_closed());
        proxies.push(Connected {
            node: proxy,
            tx,
            dropped,
        });
        tracing::info!(node = %node.id, "proxy connected");
        Ok(rx)
    }

    fn disconnected(&self, node: &Node) {
        tracing::info!(node = %node.id, "proxy disconnected");
    }
}

/// NDS is one resource, unnamed (as Istio sends it).
static NDS_NAME: String = String::new();

/// Resources of the current and the previous mesh, by (type, name, version):
/// a resource that proxies with different configs share, or that did not
/// change since the last mesh, is one `Arc` (one body in memory, and an
/// identity the ADS server's diff compares in one step).
#[derive(Default)]
pub struct ResourcePool {
    current: HashMap<u64, Vec<Arc<Resource>>>,
    previous: HashMap<u64, Vec<Arc<Resource>>>,
}

impl ResourcePool {
    /// A pool for a new mesh, that reuses what this one holds.
    fn next_generation(&mut self) -> ResourcePool {
        ResourcePool {
            current: HashMap::new(),
            previous: std::mem::take(&mut self.current),
        }
    }

    fn key(type_url: &str, name: &str, version: &str) -> u64 {
        let mut h = DefaultHasher::new();
        (type_url, name, version).hash(&mut h);
        h.finish()
    }

    /// The shared copy of a resource with this name and version, made from
    /// `body` if there is none.
    fn share(
        &mut self,
        name: &str,
        version: String,
        body: impl FnOnce() -> prost_types::Any,
        type_url: &str,
    ) -> Arc<Resource> {
        let key = Self::key(type_url, name, &version);
        let same = |r: &&Arc<Resource>| {
            &*r.name == name && *r.version == *version && r.body.type_url == type_url
        };
        if let Some(r) = self.current.get(&key).and_then(|v| v.iter().find(same)) {
            return r.clone();
        }
        let r = self
            .previous
            .get(&key)
            .and_then(|v| v.iter().find(same))
            .cloned()
            .unwrap_or_else(|| Arc::new(Resource::with_version(name, version, body())));
        self.current.entry(key).or_default().push(r.clone());
        r
    }
}

/// Package translated resources as an xDS snapshot with content versions.
pub fn snapshot(res: &ProxyResources) -> Snapshot {
    snapshot_pooled(res, &mut ResourcePool::default())
}

fn snapshot_pooled(res: &ProxyResources, pool: &mut ResourcePool) -> Snapshot {
    adopt(encode(res), pool)
}

/// One type's resources encoded and versioned: (type URL, [(name, version, bytes)]).
type EncodedType = (String, Vec<(String, String, Vec<u8>)>);

/// Encode and version every resource (pure: runs on any thread).
fn encode(res: &ProxyResources) -> Vec<EncodedType> {
    vec![
        encode_type(&res.clusters, |c| &c.name),
        encode_type(&res.endpoints, |e| &e.cluster_name),
        encode_type(&res.listeners, |l| &l.name),
        encode_type(&res.routes, |r| &r.name),
    ]
}

fn encode_type<M: Message + Name>(items: &[M], name: impl Fn(&M) -> &String) -> EncodedType {
    let full_name = M::full_name();
    let encoded = items
        .iter()
        .map(|item| {
            let bytes = item.encode_to_vec();
            let version = crate::version::stable_version(&full_name, &bytes);
            (name(item).clone(), version, bytes)
        })
        .collect();
    (M::type_url(), encoded)
}

/// The snapshot of encoded resources, sharing what the pool already has.
fn adopt(types: Vec<EncodedType>, pool: &mut ResourcePool) -> Snapshot {
    let types = types
        .into_iter()
        .map(|(type_url, items)| {
            let shared: Vec<Arc<Resource>> = items
                .into_iter()
                .map(|(name, version, bytes)| {
                    pool.share(
                        &name,
                        version,
                        || prost_types::Any {
                            type_url: type_url.clone(),
                            value: bytes,
                        },
                        &type_url,
                    )
                })
                .collect();
            (type_url, TypeSnapshot::from_shared(shared))
        })
        .collect();
    Snapshot { types }
}

fn type_snapshot<M: Message + Name>(
    items: &[M],
    name: impl Fn(&M) -> &String,
    pool: &mut ResourcePool,
) -> TypeSnapshot {
    let mut snap = adopt(vec![encode_type(items, name)], pool);
    snap.types.pop_first().map(|(_, t)| t).unwrap_or_default()
}

/// Translate, check and encode each (key, proxy) on all cores; what each
/// returns is pure, so the order of work does not matter.
fn translate_parallel(
    mesh: &Mesh,
    work: &[(ConfigKey, &ProxyNode)],
) -> Vec<(Vec<EncodedType>, Vec<Dropped>)> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(work.len())
        .max(1);
    let one = |proxy: &ProxyNode| {
        let mut res = translate(mesh, proxy);
        let dropped = check::sanitize(mesh, &mut res);
        (encode(&res), dropped)
    };
    if threads == 1 {
        return work.iter().map(|(_, p)| one(p)).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut out: Vec<Option<(Vec<EncodedType>, Vec<Dropped>)>> = Vec::new();
    out.resize_with(work.len(), || None);
    let results = Mutex::new(out);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((_, proxy)) = work.get(i) else { break };
                    let r = one(proxy);
                    results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(Option::unwrap_or_default)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mesh(yaml: &str) -> Mesh {
        let (resources, errors) = api::load::load_str(std::path::Path::new("t.yaml"), yaml);
        assert!(errors.is_empty(), "{errors:?}");
        crate::compile::build(&resources)
    }

    const CONFIG: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: bookinfo}
spec:
  selector: {app: ratings}
  ports: [{name: http, port: 9080}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: ratings-1, namespace: bookinfo}
spec: {address: ADDRESS, labels: {app: ratings}}
"#;

    fn node() -> Node {
        Node {
            id: "sidecar~10.0.0.1~productpage-0.bookinfo~bookinfo.svc.cluster.local".into(),
            ..Default::default()
        }
    }

    #[test]
    fn endpoint_change_changes_only_eds() {
        let d = Discovery::new(mesh(&CONFIG.replace("ADDRESS", "10.0.0.7")));
        let mut rx = d.subscribe(&node()).expect("subscribe");
        let before = rx.borrow_and_update().clone();
        d.update(mesh(&CONFIG.replace("ADDRESS", "10.0.0.8")));
        assert!(rx.has_changed().expect("open"));
        let after = rx.borrow_and_update().clone();
        let changed: Vec<&str> = before
            .types
            .iter()
            .filter(|(url, t)| after.types[*url].version != t.version)
            .map(|(url, _)| type_url::short(url))
            .collect();
        assert_eq!(changed, vec!["EDS"]);
    }

    /// Subsets, two namespaces, a proxy that is itself an endpoint.
    const SUBSETS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: bookinfo}
spec:
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-1, namespace: bookinfo}
spec: {address: A1, labels: {app: reviews, version: v1}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-2, namespace: bookinfo}
spec: {address: A2, labels: {app: reviews, version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: bookinfo}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: other}
spec:
  selector: {app: ratings}
  ports: [{name: http, port: 9080}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: ratings-1, namespace: other}
spec: {address: 10.0.9.1, labels: {app: ratings}}
"#;

    fn versions(s: &Snapshot) -> Vec<(String, Vec<(String, String)>)> {
        s.types
            .iter()
            .map(|(url, t)| {
                let rs = t
                    .resources
                    .values()
                    .map(|r| (r.name.to_string(), r.version.to_string()))
                    .collect();
                (url.clone(), rs)
            })
            .collect()
    }

    #[test]
    fn endpoint_only_push_equals_a_fresh_translation() {
        let cfg = |a1: &str, a2: &str| mesh(&SUBSETS.replace("A1", a1).replace("A2", a2));
        let nodes: Vec<Node> = [
            "sidecar~10.0.0.1~productpage-0.bookinfo~bookinfo.svc.cluster.local",
            "sidecar~10.0.9.9~client-0.other~other.svc.cluster.local",
            // An endpoint of reviews before the change (inbound config), not after.
            "sidecar~10.0.1.1~reviews-0.bookinfo~bookinfo.svc.cluster.local",
        ]
        .iter()
        .map(|id| Node {
            id: id.to_string(),
            ..Default::default()
        })
        .collect();
        let d = Discovery::new(cfg("10.0.1.1", "10.0.1.2"));
        let rxs: Vec<_> = nodes.iter().map(|n| d.subscribe(n).expect("sub")).collect();
        // Several rounds of moves: each must equal what a fresh pilot sends.
        for (round, (a1, a2)) in [
            ("10.0.1.5", "10.0.1.2"),
            ("10.0.1.5", "10.0.1.6"),
            ("10.0.1.1", "10.0.1.6"),
        ]
        .into_iter()
        .enumerate()
        {
            let summary = d.update(cfg(a1, a2));
            assert!(summary.incremental >= 1, "round {round}: {summary:?}");
            let fresh = Discovery::new(cfg(a1, a2));
            for (n, rx) in nodes.iter().zip(&rxs) {
                let want = fresh.subscribe(n).expect("fresh").borrow().clone();
                assert_eq!(
                    versions(&rx.borrow()),
                    versions(&want),
                    "round {round}, {}",
                    n.id
                );
            }
        }
        // A routing change translates in full.
        let summary = d.update(mesh(&format!(
            "{}---\n{}",
            SUBSETS.replace("A1", "10.0.1.1").replace("A2", "10.0.1.6"),
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r, namespace: bookinfo}\nspec:\n  hosts: [reviews]\n  http: [{route: [{destination: {host: reviews, subset: v2}}]}]\n"
        )));
        assert_eq!(summary.incremental, 0);
        assert!(summary.configs >= 2);
    }

    #[test]
    fn identical_mesh_pushes_nothing() {
        let d = Discovery::new(mesh(&CONFIG.replace("ADDRESS", "10.0.0.7")));
        let mut rx = d.subscribe(&node()).expect("subscribe");
        rx.borrow_and_update();
        d.update(mesh(&CONFIG.replace("ADDRESS", "10.0.0.7")));
        assert!(!rx.has_changed().expect("open"));
        assert_eq!(d.connected(), 1);
        drop(rx);
        assert_eq!(d.connected(), 0);
    }

    #[test]
    fn replicas_share_one_translation() {
        let d = Discovery::new(mesh(&CONFIG.replace("ADDRESS", "10.0.0.7")));
        let a = d.subscribe(&node()).expect("a");
        let other = Node {
            id: "sidecar~10.0.0.2~productpage-1.bookinfo~bookinfo.svc.cluster.local".into(),
            ..Default::default()
        };
        let b = d.subscribe(&other).expect("b");
        assert!(Arc::ptr_eq(&a.borrow(), &b.borrow()));
        // The endpoint itself serves inbound ports: a different config.
        let endpoint = Node {
            id: "sidecar~10.0.0.7~ratings-0.bookinfo~bookinfo.svc.cluster.local".into(),
            ..Default::default()
        };
        let c = d.subscribe(&endpoint).expect("c");
        assert!(!Arc::ptr_eq(&a.borrow(), &c.borrow()));
    }

    #[test]
    fn bad_node_is_refused() {
        let d = Discovery::new(Mesh::default());
        let bad = Node {
            id: "nonsense".into(),
            ..Default::default()
        };
        assert!(d.subscribe(&bad).is_err());
    }
}

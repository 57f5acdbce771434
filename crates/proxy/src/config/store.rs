//! The proxy's config: static resources from the bootstrap plus the last good
//! version of every xDS resource, compiled into an immutable [`Snapshot`] that
//! the data path loads from an `ArcSwap` (in-flight work keeps the old one).
//! Updates arrive as full sets per type; each bad resource is rejected on its
//! own (the reasons become the NACK) and its previous version is kept.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use tokio::sync::watch;
use xds::type_url;

use super::cluster::{ClusterConfig, Discovery, XdsCluster};
use super::endpoint::{EndpointAddress, Health, LoadAssignment, XdsClusterLoadAssignment};
use super::listener::{ListenerConfig, NetworkFilter, RouteSource, XdsListener};
use super::route::{RouteConfig, XdsRouteConfiguration};
use crate::error::ConfigError;
use crate::stats::{Stats, XdsStats};
use crate::stream_info::StreamObserver;
use crate::upstream::UpstreamAddr;
use crate::upstream::cluster::{ClusterEndpoint, ClusterRuntime, UpstreamCluster};
use crate::upstream::priority::Placement;

/// A STRICT_DNS endpoint to resolve: host, port, weight, health, and where
/// its hosts sit (priority, locality).
pub type DnsTarget = (String, u16, u32, Health, Placement);

/// A resolved STRICT_DNS host: address, weight, health, placement.
pub type DnsHost = (SocketAddr, u32, Health, Placement);

/// A STRICT_DNS cluster to resolve: name, what to resolve, family, refresh rate.
#[derive(Debug, Clone)]
pub struct DnsCluster {
    pub name: String,
    pub targets: Vec<DnsTarget>,
    pub family: super::cluster::DnsLookupFamily,
    pub refresh: std::time::Duration,
}

/// Everything the data path needs, immutable.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub listeners: HashMap<String, Arc<ListenerConfig>>,
    /// Listeners by configured address, for original-destination hand-off.
    pub by_address: HashMap<SocketAddr, Arc<ListenerConfig>>,
    pub routes: HashMap<String, Arc<RouteConfig>>,
    pub clusters: HashMap<String, Arc<UpstreamCluster>>,
}

impl Snapshot {
    /// The listener an original destination is handed to: exact ip:port, else
    /// a wildcard address on that port.
    pub fn listener_for(&self, dst: SocketAddr) -> Option<&Arc<ListenerConfig>> {
        let wildcard = match dst {
            SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], dst.port())),
            SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], dst.port())),
        };
        self.by_address
            .get(&dst)
            .or_else(|| self.by_address.get(&wildcard))
    }
}

/// A resource as received (for config_dump) with its converted form.
#[derive(Debug)]
pub(crate) struct Versioned<D, P> {
    pub version: String,
    pub proto: P,
    pub config: Arc<D>,
}

/// The same version again (the converted form is shared, not copied).
impl<D, P: Clone> Clone for Versioned<D, P> {
    fn clone(&self) -> Self {
        Versioned {
            version: self.version.clone(),
            proto: self.proto.clone(),
            config: self.config.clone(),
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct State {
    pub ads: bool,
    pub static_listeners: Vec<(XdsListener, Arc<ListenerConfig>)>,
    pub static_clusters: Vec<(XdsCluster, Arc<ClusterConfig>)>,
    pub listeners: BTreeMap<String, Versioned<ListenerConfig, XdsListener>>,
    pub clusters: BTreeMap<String, Versioned<ClusterConfig, XdsCluster>>,
    pub routes: BTreeMap<String, Versioned<RouteConfig, XdsRouteConfiguration>>,
    pub endpoints: BTreeMap<String, Versioned<LoadAssignment, XdsClusterLoadAssignment>>,
    /// Resolved addresses of STRICT_DNS clusters, by cluster name.
    pub dns: HashMap<String, Vec<DnsHost>>,
    pub versions: HashMap<&'static str, String>,
    /// LDS, CDS and the EDS/RDS they need have all arrived (or static-only).
    pub warm: bool,
    runtime: HashMap<String, ClusterRuntime>,
}

pub struct ConfigStore {
    snapshot: ArcSwap<Snapshot>,
    state: Mutex<State>,
    pub stats: Arc<Stats>,
    ready: watch::Sender<bool>,
    /// Bumped whenever the listener set may have changed.
    listeners_changed: watch::Sender<u64>,
    lds: XdsStats,
    cds: XdsStats,
    /// Bind LDS listeners while applying them, so a listener that cannot bind
    /// is NACKed with the OS error (as Envoy does) instead of failing later.
    bind_on_apply: std::sync::atomic::AtomicBool,
    /// Sockets bound while applying LDS, until `Listeners` takes them.
    prebound: Mutex<HashMap<String, (SocketAddr, std::net::TcpListener)>>,
    /// The DNS proxy NDS feeds, when it runs.
    dns_proxy: std::sync::OnceLock<dns::DnsServer>,
    /// Who reads each finished HTTP stream's record (empty: no record kept).
    stream_observers: ArcSwap<Vec<Arc<dyn StreamObserver>>>,
    /// SDS secrets the TLS sockets use (`default`, `ROOTCA`).
    pub secrets: Arc<crate::tls::Secrets>,
    /// Istio's standard metrics, when the node names its workload
    /// (tcp_proxy takes its `istio_tcp_*` series from here).
    pub istio_metrics: std::sync::OnceLock<Arc<crate::istio_metrics::IstioMetrics>>,
}

impl std::fmt::Debug for ConfigStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigStore").finish_non_exhaustive()
    }
}

impl ConfigStore {
    /// A store holding the bootstrap's static resources; `ads` says whether
    /// readiness waits for the control plane.
    pub fn new(
        static_listeners: Vec<(XdsListener, Arc<ListenerConfig>)>,
        static_clusters: Vec<(XdsCluster, Arc<ClusterConfig>)>,
        ads: bool,
        stats: Arc<Stats>,
    ) -> Arc<Self> {
        let store = Arc::new(ConfigStore {
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            state: Mutex::new(State {
                ads,
                static_listeners,
                static_clusters,
                ..State::default()
            }),
            lds: XdsStats::new(&stats, "listener_manager.lds"),
            cds: XdsStats::new(&stats, "cluster_manager.cds"),
            stats,
            ready: watch::channel(false).0,
            listeners_changed: watch::channel(0).0,
            bind_on_apply: std::sync::atomic::AtomicBool::new(false),
            prebound: Mutex::new(HashMap::new()),
            dns_proxy: std::sync::OnceLock::new(),
            stream_observers: ArcSwap::from_pointee(Vec::new()),
            secrets: Arc::default(),
            istio_metrics: std::sync::OnceLock::new(),
        });
        let mut state = store.lock();
        store.publish(&mut state);
        drop(state);
        store
    }

    /// Hand every finished HTTP stream's record to `observer` (telemetry and
    /// access logs hook in here).
    pub fn add_stream_observer(&self, observer: Arc<dyn StreamObserver>) {
        self.stream_observers.rcu(|current| {
            let mut next = Vec::clone(current);
            next.push(observer.clone());
            next
        });
    }

    /// The observers, or None when there are none (one atomic load).
    pub(crate) fn stream_observers(&self) -> Option<Arc<Vec<Arc<dyn StreamObserver>>>> {
        let current = self.stream_observers.load();
        (!current.is_empty()).then(|| Arc::clone(&current))
    }

    /// NDS updates go to this DNS proxy from now on.
    pub fn set_dns_proxy(&self, server: dns::DnsServer) {
        let _ = self.dns_proxy.set(server);
    }

    /// NDS: one unnamed NameTable; a bad one is NACKed and the last good
    /// table keeps answering.
    fn apply_name_table(
        &self,
        resources: &BTreeMap<String, prost_types::Any>,
    ) -> Result<(), String> {
        let Some(server) = self.dns_proxy.get() else {
            return Ok(());
        };
        // One resource; an empty set empties the table.
        let mut table = dns::NameTable::new();
        for any in resources.values() {
            table = crate::dns_proxy::table_from_nds(any)?;
        }
        tracing::debug!(names = table.len(), "name table applied");
        server.set(table);
        Ok(())
    }

    /// From now on, bind each new LDS listener while applying it (the proxy
    /// does this once its `Listeners` follow the store).
    pub fn bind_on_apply(&self) {
        self.bind_on_apply
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The socket bound for listener `name` at `addr` while applying LDS.
    pub fn take_prebound(&self, name: &str, addr: SocketAddr) -> Option<std::net::TcpListener> {
        let mut prebound = self.prebound.lock().unwrap_or_else(|e| e.into_inner());
        match prebound.remove(name) {
            Some((a, socket)) if a == addr => Some(socket),
            _ => None,
        }
    }

    /// Drop prebound sockets of listeners that are gone or moved.
    pub fn forget_prebound(&self, keep: impl Fn(&str, SocketAddr) -> bool) {
        let mut prebound = self.prebound.lock().unwrap_or_else(|e| e.into_inner());
        prebound.retain(|name, (addr, _)| keep(name, *addr));
    }

    /// Bind every listener of this LDS update that is not bound yet; one that
    /// cannot bind is rejected (its previous version, if any, stays).
    fn prebind(
        &self,
        state: &mut State,
        old: &BTreeMap<String, Versioned<ListenerConfig, XdsListener>>,
        errors: &mut Vec<(String, String)>,
    ) {
        if !self
            .bind_on_apply
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        let mut prebound = self.prebound.lock().unwrap_or_else(|e| e.into_inner());
        let names: Vec<String> = state.listeners.keys().cloned().collect();
        for name in names {
            let l = state.listeners[&name].config.clone();
            let already = old
                .get(&name)
                .is_some_and(|p| p.config.bind_to_port && p.config.address == l.address)
                || prebound.get(&name).is_some_and(|(a, _)| *a == l.address);
            if !l.bind_to_port || already {
                continue;
            }
            match crate::downstream::bind_std(l.address) {
                Ok(socket) => {
                    prebound.insert(name, (l.address, socket));
                }
                Err(e) => {
                    errors.push((
                        name.clone(),
                        format!("listener {name}: cannot bind '{}': {e}", l.address),
                    ));
                    match old.get(&name) {
                        Some(prev) => {
                            state.listeners.insert(name, prev.clone());
                        }
                        None => {
                            state.listeners.remove(&name);
                        }
                    }
                }
            }
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current snapshot (cheap: one atomic load).
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.snapshot.load()
    }

    /// The current snapshot as an owned Arc, to hold across awaits.
    pub fn load_full_snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    pub fn ready(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Envoy's initial_fetch_timeout: once LDS and CDS are in, stop waiting for
    /// the EDS/RDS resources that have not arrived and become ready.
    pub fn initial_fetch_timed_out(&self) {
        let mut state = self.lock();
        if state.warm
            || !state.versions.contains_key(type_url::LISTENER)
            || !state.versions.contains_key(type_url::CLUSTER)
        {
            return;
        }
        tracing::warn!(
            missing_eds = ?eds_names(&state).into_iter().filter(|n| !state.endpoints.contains_key(n)).collect::<Vec<_>>(),
            missing_rds = ?rds_names(&state).into_iter().filter(|n| !state.routes.contains_key(n)).collect::<Vec<_>>(),
            "initial fetch timed out; ready without them"
        );
        state.warm = true;
        self.listeners_changed.send_modify(|g| *g += 1);
    }

    /// The listeners of the current snapshot are bound: ready if the config
    /// is warm (Envoy's init manager: listeners come up before LIVE).
    pub fn listeners_reconciled(&self) {
        if self.lock().warm && !self.is_ready() {
            self.ready.send_replace(true);
        }
    }

    pub fn listeners_changed(&self) -> watch::Receiver<u64> {
        self.listeners_changed.subscribe()
    }

    /// Apply the full current set of one resource type. Err lists every
    /// rejected resource with its reason; the others are applied.
    pub fn apply(
        &self,
        type_url: &str,
        version: &str,
        resources: &BTreeMap<String, prost_types::Any>,
    ) -> Result<(), String> {
        if type_url == type_url::NAME_TABLE {
            return self.apply_name_table(resources);
        }
        let mut state = self.lock();
        let mut errors = Vec::new();
        let previous_listeners: Vec<(String, Arc<ListenerConfig>)> =
            if type_url == type_url::LISTENER {
                state
                    .listeners
                    .iter()
                    .map(|(n, l)| (n.clone(), l.config.clone()))
                    .collect()
            } else {
                Vec::new()
            };
        match type_url {
            type_url::LISTENER => {
                self.lds.update_attempt.inc();
                let names = cluster_names(&state);
                let known = |n: &str| names.contains(n);
                let validate = |l: &ListenerConfig| l.check_inline_route_clusters(&known);
                let old = std::mem::take(&mut state.listeners);
                state.listeners =
                    convert_all(&old, resources, version, "listener", &validate, &mut errors);
                adopt_unchanged_chains(&mut state, &old);
                reject_duplicate_addresses(&mut state, &mut errors);
                self.prebind(&mut state, &old, &mut errors);
                state
                    .versions
                    .insert(type_url::LISTENER, version.to_string());
                let xs = &self.lds;
                if errors.is_empty() {
                    xs.update_success.inc()
                } else {
                    xs.update_rejected.inc()
                }
            }
            type_url::CLUSTER => {
                self.cds.update_attempt.inc();
                state.clusters = convert_all(
                    &state.clusters,
                    resources,
                    version,
                    "cluster",
                    &|_| Ok(()),
                    &mut errors,
                );
                state
                    .versions
                    .insert(type_url::CLUSTER, version.to_string());
                let xs = &self.cds;
                if errors.is_empty() {
                    xs.update_success.inc()
                } else {
                    xs.update_rejected.inc()
                }
            }
            type_url::ROUTE => {
                let mut per_route = Vec::new();
                let names = cluster_names(&state);
                let known = |n: &str| names.contains(n);
                let validate = |r: &RouteConfig| r.check_clusters(false, &known);
                let new = convert_all(
                    &state.routes,
                    resources,
                    version,
                    "route",
                    &validate,
                    &mut per_route,
                );
                state.routes = new;
                state.versions.insert(type_url::ROUTE, version.to_string());
                for name in resources.keys() {
                    let failed = per_route.iter().any(|(n, _): &(String, String)| n == name);
                    for prefix in hcm_prefixes_for_route(&state, name) {
                        let what = if failed {
                            "update_rejected"
                        } else {
                            "update_success"
                        };
                        self.stats
                            .counter(format!("http.{prefix}.rds.{name}.{what}"))
                            .inc();
                    }
                }
                errors = per_route;
            }
            type_url::ENDPOINT => {
                state.endpoints = convert_all(
                    &state.endpoints,
                    resources,
                    version,
                    "cluster_load_assignment",
                    &|_| Ok(()),
                    &mut errors,
                );
                state
                    .versions
                    .insert(type_url::ENDPOINT, version.to_string());
                for name in resources.keys() {
                    let failed = errors.iter().any(|(n, _)| n == name);
                    let what = if failed {
                        "update_rejected"
                    } else {
                        "update_success"
                    };
                    crate::stats::Scope::new("cluster", "cluster_name", name)
                        .counter(&self.stats, what)
                        .inc();
                }
            }
            other => return Err(format!("unsupported resource type {other}")),
        }
        self.publish(&mut state);
        if type_url == type_url::LISTENER {
            // Drain the connections of every chain that left its listener;
            // chains an in-place update kept carry on.
            for (name, old) in &previous_listeners {
                let new = state.listeners.get(name).map(|l| &l.config);
                if new.is_some_and(|n| Arc::ptr_eq(n, old)) {
                    continue;
                }
                for chain in old.chains() {
                    let kept = new.is_some_and(|n| n.chains().any(|c| Arc::ptr_eq(c, chain)));
                    if !kept {
                        chain.drain.send_replace(true);
                    }
                }
            }
            self.listeners_changed.send_modify(|g| *g += 1);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors
                .into_iter()
                .map(|(_, e)| e)
                .collect::<Vec<_>>()
                .join("; "))
        }
    }

    /// Names to subscribe to for EDS and RDS (None = wildcard for LDS/CDS).
    pub fn wanted(&self, type_url: &str) -> Option<Vec<String>> {
        let state = self.lock();
        match type_url {
            type_url::ENDPOINT => Some(eds_names(&state)),
            type_url::ROUTE => Some(rds_names(&state)),
            _ => None,
        }
    }

    /// STRICT_DNS clusters and the hosts to resolve for each.
    pub fn dns_targets(&self) -> Vec<DnsCluster> {
        let state = self.lock();
        all_clusters(&state)
            .filter_map(|c| match &c.discovery {
                Discovery::StrictDns(la) => Some(DnsCluster {
                    name: c.name.clone(),
                    targets: la
                        .endpoints
                        .iter()
                        .map(|e| {
                            let (host, port) = match &e.address {
                                EndpointAddress::Dns(h, p) => (h.clone(), *p),
                                EndpointAddress::Ip(a) => (a.ip().to_string(), a.port()),
                                // Refused for STRICT_DNS at conversion.
                                EndpointAddress::Pipe(_) => (String::new(), 0),
                            };
                            (host, port, e.weight, e.health, placement(e))
                        })
                        .collect(),
                    family: c.dns_lookup_family,
                    refresh: c.dns_refresh_rate,
                }),
                _ => None,
            })
            .collect()
    }

    /// Record the resolved addresses of a STRICT_DNS cluster.
    pub fn set_dns(&self, cluster: &str, resolved: Vec<DnsHost>) {
        let mut state = self.lock();
        if state.dns.get(cluster) == Some(&resolved) {
            return;
        }
        state.dns.insert(cluster.to_string(), resolved);
        self.publish(&mut state);
    }

    /// Rebuild the snapshot from the state and swap it in.
    fn publish(&self, state: &mut State) {
        let mut listeners = HashMap::new();
        for (_, l) in &state.static_listeners {
            listeners.insert(l.name.clone(), l.clone());
        }
        for (name, l) in &state.listeners {
            listeners.insert(name.clone(), l.config.clone());
        }
        let routes = state
            .routes
            .iter()
            .map(|(n, r)| (n.clone(), r.config.clone()))
            .collect();
        let configs: Vec<Arc<ClusterConfig>> = all_clusters(state).cloned().collect();
        let mut clusters = HashMap::new();
        for config in configs {
            let mut factor = crate::config::endpoint::DEFAULT_OVERPROVISIONING_FACTOR;
            let endpoints: Vec<ClusterEndpoint> = match &config.discovery {
                Discovery::Static(la) => {
                    factor = la.overprovisioning_factor;
                    ip_endpoints(la, &config)
                }
                Discovery::Eds(service) => state
                    .endpoints
                    .get(service)
                    .map(|v| {
                        factor = v.config.overprovisioning_factor;
                        ip_endpoints(&v.config, &config)
                    })
                    .unwrap_or_default(),
                Discovery::StrictDns(la) => {
                    factor = la.overprovisioning_factor;
                    state
                        .dns
                        .get(&config.name)
                        .map(|v| {
                            v.iter()
                                .map(|(a, w, h, place)| {
                                    ((*a).into(), *w, *h, config.transport.clone(), place.clone())
                                })
                                .collect()
                        })
                        .unwrap_or_default()
                }
                Discovery::OriginalDst => Vec::new(),
            };
            let runtime = state
                .runtime
                .entry(config.name.clone())
                .or_insert_with(|| ClusterRuntime::new(&self.stats, &config.stat_name));
            clusters.insert(
                config.name.clone(),
                Arc::new(runtime.build(config.clone(), &endpoints, factor)),
            );
        }
        state.runtime.retain(|name, _| clusters.contains_key(name));
        self.stats
            .gauge("cluster_manager.active_clusters")
            .set(clusters.len() as i64);
        self.stats
            .gauge("listener_manager.total_listeners_active")
            .set(listeners.len() as i64);
        let mut by_address = HashMap::with_capacity(listeners.len());
        for l in listeners.values() {
            by_address.entry(l.address).or_insert_with(|| l.clone());
        }
        self.snapshot.store(Arc::new(Snapshot {
            by_address,
            listeners,
            routes,
            clusters,
        }));
        if !state.warm && is_warm(state) {
            // Ready once the listeners are bound too: `Listeners` reconciles
            // on this bump, then calls `listeners_reconciled`.
            state.warm = true;
            self.listeners_changed.send_modify(|g| *g += 1);
        }
    }
}

/// Static clusters, then dynamic ones (a dynamic one cannot replace a static one).
fn all_clusters(state: &State) -> impl Iterator<Item = &Arc<ClusterConfig>> {
    let statics = state.static_clusters.iter().map(|(_, c)| c);
    let dynamics = state
        .clusters
        .values()
        .filter(|c| {
            !state
                .static_clusters
                .iter()
                .any(|(_, s)| s.name == c.config.name)
        })
        .map(|c| &c.config);
    statics.chain(dynamics)
}

/// Listeners whose update changed only filter chains keep the chains that
/// did not change (Envoy's in-place filter chain update).
fn adopt_unchanged_chains(
    state: &mut State,
    old: &BTreeMap<String, Versioned<ListenerConfig, XdsListener>>,
) {
    let without_chains = |l: &XdsListener| XdsListener {
        filter_chains: Vec::new(),
        default_filter_chain: None,
        ..l.clone()
    };
    for (name, new) in state.listeners.iter_mut() {
        let Some(prev) = old.get(name) else { continue };
        if Arc::ptr_eq(&new.config, &prev.config)
            || without_chains(&new.proto) != without_chains(&prev.proto)
        {
            continue;
        }
        if let Some(config) = Arc::get_mut(&mut new.config) {
            config.adopt_unchanged_chains(&prev.config);
        }
    }
}

/// Envoy refuses a listener whose address another listener already has
/// (port 0 = ephemeral, never a clash).
fn reject_duplicate_addresses(state: &mut State, errors: &mut Vec<(String, String)>) {
    let mut seen: HashMap<SocketAddr, String> = state
        .static_listeners
        .iter()
        .filter(|(_, l)| l.address.port() != 0)
        .map(|(_, l)| (l.address, l.name.clone()))
        .collect();
    let names: Vec<String> = state.listeners.keys().cloned().collect();
    for name in names {
        let addr = state.listeners[&name].config.address;
        if addr.port() == 0 {
            continue;
        }
        if let Some(other) = seen.get(&addr) {
            errors.push((
                name.clone(),
                format!("listener {name}: address: duplicate address {addr} as existing listener {other}"),
            ));
            state.listeners.remove(&name);
        } else {
            seen.insert(addr, name);
        }
    }
}

fn cluster_names(state: &State) -> std::collections::HashSet<String> {
    all_clusters(state).map(|c| c.name.clone()).collect()
}

fn all_listeners(state: &State) -> impl Iterator<Item = &Arc<ListenerConfig>> {
    state
        .static_listeners
        .iter()
        .map(|(_, l)| l)
        .chain(state.listeners.values().map(|l| &l.config))
}

/// The endpoints the proxy connects to as given (IPs and pipes), each with
/// the transport socket the cluster picks for it.
fn ip_endpoints(la: &LoadAssignment, config: &ClusterConfig) -> Vec<ClusterEndpoint> {
    la.endpoints
        .iter()
        .filter_map(|e| {
            let addr = match &e.address {
                EndpointAddress::Ip(a) => (*a).into(),
                EndpointAddress::Pipe(p) => UpstreamAddr::Pipe(p.clone()),
                EndpointAddress::Dns(..) => return None,
            };
            Some((
                addr,
                e.weight,
                e.health,
                config.transport_for(&e.transport_match),
                placement(e),
            ))
        })
        .collect()
}

/// Where an endpoint sits, as the load balancer keeps it.
fn placement(e: &super::endpoint::LbEndpoint) -> Placement {
    Placement {
        priority: e.priority,
        locality: e.locality.clone(),
        locality_weight: e.locality_weight.unwrap_or(0),
    }
}

fn eds_names(state: &State) -> Vec<String> {
    let mut names: Vec<String> = all_clusters(state)
        .filter_map(|c| match &c.discovery {
            Discovery::Eds(s) => Some(s.clone()),
            _ => None,
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

fn rds_names(state: &State) -> Vec<String> {
    let mut names: Vec<String> = all_listeners(state)
        .flat_map(|l| l.filter_chains.iter().chain(l.default_filter_chain.iter()))
        .filter_map(|fc| match &fc.filter {
            NetworkFilter::HttpConnectionManager(h) => match &h.routes {
                RouteSource::Rds(n) => Some(n.clone()),
                RouteSource::Inline(_) => None,
            },
            NetworkFilter::TcpProxy(_) => None,
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

fn hcm_prefixes_for_route(state: &State, route: &str) -> Vec<String> {
    let mut prefixes: Vec<String> = all_listeners(state)
        .flat_map(|l| l.filter_chains.iter().chain(l.default_filter_chain.iter()))
        .filter_map(|fc| match &fc.filter {
            NetworkFilter::HttpConnectionManager(h) => {
                matches!(&h.routes, RouteSource::Rds(n) if n == route)
                    .then(|| h.stat_prefix.clone())
            }
            NetworkFilter::TcpProxy(_) => None,
        })
        .collect();
    prefixes.sort();
    prefixes.dedup();
    prefixes
}

/// Ready: static-only, or LDS and CDS applied and every EDS/RDS name they
/// need has arrived.
fn is_warm(state: &State) -> bool {
    if !state.ads {
        return true;
    }
    state.versions.contains_key(type_url::LISTENER)
        && state.versions.contains_key(type_url::CLUSTER)
        && eds_names(state)
            .iter()
            .all(|n| state.endpoints.contains_key(n))
        && rds_names(state)
            .iter()
            .all(|n| state.routes.contains_key(n))
}

/// Envoy's rules for a whole xDS resource (`envoy-rules`), checked before
/// conversion so the NACK words them as the pilot's pre-push check does.
trait EnvoyRules {
    fn envoy_rules(&self) -> Vec<envoy_rules::Violation>;
}

impl EnvoyRules for XdsClusterLoadAssignment {
    fn envoy_rules(&self) -> Vec<envoy_rules::Violation> {
        envoy_rules::cluster_load_assignment(self)
    }
}

// Listeners, routes and clusters check their rules in their own conversion
// (the bootstrap's static resources use it too).
impl EnvoyRules for XdsListener {
    fn envoy_rules(&self) -> Vec<envoy_rules::Violation> {
        Vec::new()
    }
}

impl EnvoyRules for XdsRouteConfiguration {
    fn envoy_rules(&self) -> Vec<envoy_rules::Violation> {
        Vec::new()
    }
}

impl EnvoyRules for XdsCluster {
    fn envoy_rules(&self) -> Vec<envoy_rules::Violation> {
        Vec::new()
    }
}

/// Convert a full set of resources, keeping the previous version of each one
/// that fails. Errors are (resource name, "kind name: path: reason").
fn convert_all<D, P>(
    old: &BTreeMap<String, Versioned<D, P>>,
    resources: &BTreeMap<String, prost_types::Any>,
    version: &str,
    kind: &str,
    validate: &dyn Fn(&D) -> Result<(), ConfigError>,
    errors: &mut Vec<(String, String)>,
) -> BTreeMap<String, Versioned<D, P>>
where
    P: prost::Message + prost::Name + Default + Clone + PartialEq + EnvoyRules,
    D: for<'a> TryFrom<&'a P, Error = ConfigError>,
{
    let mut next = BTreeMap::new();
    for (name, any) in resources {
        let decoded = super::decode_any::<P>(&super::envoy_any(any), "");
        // Unchanged resources keep their converted form (and so their
        // connections: Envoy does not touch an unchanged listener either).
        if let (Ok(proto), Some(prev)) = (&decoded, old.get(name))
            && *proto == prev.proto
        {
            next.insert(name.clone(), prev.clone());
            continue;
        }
        let converted = decoded
            .and_then(|proto| {
                super::check_envoy_rules(proto.envoy_rules())?;
                Ok(proto)
            })
            .and_then(|proto| D::try_from(&proto).map(|d| (proto, d)))
            .and_then(|(proto, d)| validate(&d).map(|()| (proto, d)));
        match converted {
            Ok((proto, config)) => {
                next.insert(
                    name.clone(),
                    Versioned {
                        version: version.to_string(),
                        proto,
                        config: Arc::new(config),
                    },
                );
            }
            Err(e) => {
                errors.push((name.clone(), format!("{kind} {name}: {e}")));
                if let Some(prev) = old.get(name) {
                    next.insert(name.clone(), prev.clone());
                }
            }
        }
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(name: &str, port: u16) -> prost_types::Any {
        let l: XdsListener = xds::json::from_yaml(&format!(
            r#"
name: {name}
address: {{socket_address: {{address: 0.0.0.0, port_value: {port}}}}}
filter_chains:
- filters:
  - name: tcp
    typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: s, cluster: c}}
"#
        ))
        .unwrap();
        xds::json::to_any(&l)
    }

    #[test]
    fn duplicate_listener_addresses_are_rejected() {
        let store = ConfigStore::new(Vec::new(), Vec::new(), true, Arc::default());
        let set = BTreeMap::from([
            ("a".to_string(), listener("a", 15001)),
            ("b".to_string(), listener("b", 15001)),
            ("c".to_string(), listener("c", 15006)),
        ]);
        let err = store.apply(type_url::LISTENER, "1", &set).unwrap_err();
        assert_eq!(
            err,
            "listener b: address: duplicate address 0.0.0.0:15001 as existing listener a"
        );
        let snapshot = store.load();
        assert!(snapshot.listeners.contains_key("a") && snapshot.listeners.contains_key("c"));
        assert!(!snapshot.listeners.contains_key("b"));
        assert_eq!(
            snapshot
                .listener_for("10.0.0.1:15006".parse().unwrap())
                .map(|l| l.name.as_str()),
            Some("c")
        );
        assert_eq!(
            store.stats.value("listener_manager.lds.update_rejected"),
            Some(1)
        );
        assert!(!store.is_ready(), "no CDS yet");
    }

    #[test]
    fn initial_fetch_timeout_readies_without_missing_eds() {
        let store = ConfigStore::new(Vec::new(), Vec::new(), true, Arc::default());
        store.initial_fetch_timed_out();
        store.listeners_reconciled();
        assert!(!store.is_ready(), "LDS and CDS are still required");
        let c: XdsCluster = xds::json::from_yaml(
            "name: c\ntype: EDS\neds_cluster_config: {eds_config: {ads: {}}}\n",
        )
        .unwrap();
        let cds = BTreeMap::from([("c".to_string(), xds::json::to_any(&c))]);
        store.apply(type_url::CLUSTER, "1", &cds).unwrap();
        store
            .apply(type_url::LISTENER, "1", &BTreeMap::new())
            .unwrap();
        store.listeners_reconciled();
        assert!(!store.is_ready(), "EDS for c missing");
        store.initial_fetch_timed_out();
        store.listeners_reconciled();
        assert!(store.is_ready());
    }
}

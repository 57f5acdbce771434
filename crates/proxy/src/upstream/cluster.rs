//! A cluster as the data path sees it: its config, the hosts it may pick from
//! now, and the state that survives config updates (stats, round-robin
//! counter, hosts by address with their pools, ORIGINAL_DST hosts, outlier
//! detector, circuit breakers).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::config::cluster::{ClusterConfig, Discovery};
use crate::config::endpoint::Health;
use crate::config::transport::TransportSocket;
use crate::error::RequestError;
use crate::stats::{ClusterStats, Stats};
use crate::upstream::address::UpstreamAddr;
use crate::upstream::circuit::{CircuitBreakers, Permit, Resource};
use crate::upstream::host::{ActiveRequest, Host};
use crate::upstream::outlier::{Detector, Outcome};
use crate::upstream::priority::{Balancing, Placement, PrioritySet};

/// An endpoint as a cluster is built from: address, weight, EDS health,
/// transport socket, and where it sits.
pub type ClusterEndpoint = (UpstreamAddr, u32, Health, TransportSocket, Placement);

/// ORIGINAL_DST hosts kept before idle ones are forgotten.
const MAX_ORIGINAL_DST_HOSTS: usize = 1024;

/// The hosts of a cluster as the load balancer sees them: every member with
/// its weight and EDS health (and where it sits: priority, locality), and
/// the routable view built from them (see [`PrioritySet`]), swapped whole
/// when membership or an ejection changes it (with its consistent-hash
/// tables, so the tables always match the hosts).
#[derive(Debug)]
pub struct Routing {
    members: ArcSwap<Vec<(Arc<Host>, u32, Health)>>,
    routable: ArcSwap<PrioritySet>,
    /// Serialises rebuilds (membership updates and ejections; never
    /// requests), and holds the members' placement and how to balance.
    rebuild: Mutex<(Vec<Placement>, Balancing)>,
    stats: ClusterStats,
}

impl Routing {
    fn new(stats: ClusterStats) -> Self {
        Routing {
            members: ArcSwap::default(),
            routable: ArcSwap::default(),
            rebuild: Mutex::new((Vec::new(), Balancing::default())),
            stats,
        }
    }

    pub fn members(&self) -> Arc<Vec<(Arc<Host>, u32, Health)>> {
        self.members.load_full()
    }

    fn set_members(
        &self,
        all: Vec<(Arc<Host>, u32, Health)>,
        placement: Vec<Placement>,
        balancing: Balancing,
    ) {
        let mut layout = self.rebuild.lock().unwrap_or_else(|e| e.into_inner());
        *layout = (placement, balancing);
        self.members.store(Arc::new(all));
        self.rebuild_locked(&layout);
    }

    /// Recompute the routable view from the members and their ejections.
    pub fn rebuild(&self) {
        let layout = self.rebuild.lock().unwrap_or_else(|e| e.into_inner());
        self.rebuild_locked(&layout);
    }

    fn rebuild_locked(&self, (placement, balancing): &(Vec<Placement>, Balancing)) {
        let all = self.members.load();
        let healthy = all
            .iter()
            .filter(|(h, _, health)| health.routable() && !h.outlier.is_ejected())
            .count();
        self.stats.membership_total.set(all.len() as i64);
        self.stats.membership_healthy.set(healthy as i64);
        self.routable
            .store(Arc::new(PrioritySet::build(&all, placement, *balancing)));
    }

    /// The view the load balancer picks from now.
    pub fn routable(&self) -> arc_swap::Guard<Arc<PrioritySet>> {
        self.routable.load()
    }
}

/// State of a cluster name that outlives updates of its config or endpoints.
#[derive(Debug)]
pub struct ClusterRuntime {
    pub stats: ClusterStats,
    registry: Arc<Stats>,
    name: String,
    rr: Arc<AtomicU64>,
    /// By (address, transport socket key).
    hosts: HashMap<(UpstreamAddr, u64), Arc<Host>>,
    original_dst: Arc<ArcSwap<HashMap<SocketAddr, Arc<Host>>>>,
    routing: Arc<Routing>,
    outlier: Option<Arc<Detector>>,
    breakers: Option<Arc<CircuitBreakers>>,
    /// Built once already: later hosts are added to a running cluster.
    built: bool,
}

impl ClusterRuntime {
    pub fn new(stats: &Arc<Stats>, name: &str) -> Self {
        let cluster_stats = ClusterStats::new(stats, name);
        ClusterRuntime {
            routing: Arc::new(Routing::new(cluster_stats.clone())),
            stats: cluster_stats,
            registry: stats.clone(),
            name: name.to_string(),
            rr: Arc::default(),
            hosts: HashMap::new(),
            original_dst: Arc::default(),
            outlier: None,
            breakers: None,
            built: false,
        }
    }

    /// Build the data-path view of `config` with these endpoints (address,
    /// weight, health, socket, placement), reusing hosts whose address is
    /// unchanged; `overprovisioning_factor` is the assignment's.
    pub fn build(
        &mut self,
        config: Arc<ClusterConfig>,
        endpoints: &[ClusterEndpoint],
        overprovisioning_factor: u32,
    ) -> UpstreamCluster {
        let mut all = Vec::with_capacity(endpoints.len());
        let mut placement = Vec::with_capacity(endpoints.len());
        let mut next = HashMap::with_capacity(endpoints.len());
        for (addr, weight, health, transport, place) in endpoints {
            let key = (addr.clone(), transport.key());
            let host = self.hosts.get(&key).cloned().unwrap_or_else(|| {
                if self.built {
                    Host::added_now(addr.clone(), transport.clone())
                } else {
                    Host::with_transport(addr.clone(), transport.clone())
                }
            });
            host.priority.store(place.priority, Ordering::Relaxed);
            next.insert(key, host.clone());
            all.push((host, *weight, *health));
            placement.push(place.clone());
        }
        self.hosts = next;
        self.built = true;
        // A changed outlier_detection starts afresh, as Envoy's new cluster does.
        if self.outlier.as_ref().map(|d| &d.config) != config.outlier.as_ref() {
            if let Some(old) = self.outlier.take() {
                old.release_all();
            }
            self.outlier = config
                .outlier
                .clone()
                .map(|c| Detector::new(c, &self.registry, &self.name, self.routing.clone()));
        }
        self.routing.set_members(
            all.clone(),
            placement.clone(),
            Balancing {
                policy: config.lb_policy,
                panic_threshold: config.healthy_panic_threshold,
                overprovisioning_factor,
                locality_weighted: config.locality_weighted,
            },
        );
        let breakers = match &self.breakers {
            Some(b) => {
                b.configure(&config.circuit_breakers);
                b.clone()
            }
            None => {
                let b = CircuitBreakers::new(&self.registry, &self.name, &config.circuit_breakers);
                self.breakers = Some(b.clone());
                b
            }
        };
        UpstreamCluster {
            config,
            all,
            placement,
            routing: self.routing.clone(),
            outlier: self.outlier.clone(),
            breakers,
            stats: self.stats.clone(),
            rr: self.rr.clone(),
            original_dst: self.original_dst.clone(),
        }
    }
}

/// One cluster, immutable once built; a new one replaces it on updates.
/// Its routable hosts change with outlier ejections (see [`Routing`]).
#[derive(Debug)]
pub struct UpstreamCluster {
    pub config: Arc<ClusterConfig>,
    /// Every host with its weight and health, for `/clusters`.
    pub all: Vec<(Arc<Host>, u32, Health)>,
    /// Where each of `all` sits (same order).
    pub placement: Vec<Placement>,
    routing: Arc<Routing>,
    outlier: Option<Arc<Detector>>,
    /// The cluster's circuit breakers (shared by its versions).
    pub breakers: Arc<CircuitBreakers>,
    pub stats: ClusterStats,
    rr: Arc<AtomicU64>,
    original_dst: Arc<ArcSwap<HashMap<SocketAddr, Arc<Host>>>>,
}

impl UpstreamCluster {
    /// Choose a host for a request or connection whose downstream original
    /// destination is `original_dst`.
    pub fn pick(&self, original_dst: Option<SocketAddr>) -> Option<Arc<Host>> {
        self.pick_hashed(original_dst, None)
    }

    /// [`UpstreamCluster::pick`] for a request whose route's hash policy
    /// produced `hash` (RING_HASH and MAGLEV use it; other policies, and
    /// hash policies without a hash, pick as without one).
    pub fn pick_hashed(
        &self,
        original_dst: Option<SocketAddr>,
        hash: Option<u64>,
    ) -> Option<Arc<Host>> {
        if let Discovery::OriginalDst = self.config.discovery {
            return original_dst.map(|dst| self.original_dst_host(dst));
        }
        let set = self.routing.routable();
        let mut host = set.pick_hashed(self.config.lb_policy, &self.rr, hash)?;
        // Slow start re-picks only without a hash (a hashed pick is the
        // key's host, whatever its age).
        if let (Some(ss), None) = (&self.config.slow_start, hash) {
            for _ in 0..crate::upstream::slow_start::MAX_REPICKS {
                if ss.admits(host.added, crate::upstream::lb::random()) {
                    break;
                }
                host = set.pick(self.config.lb_policy, &self.rr)?;
            }
        }
        Some(host.clone())
    }

    /// The view the load balancer picks from now.
    pub fn routable(&self) -> Arc<PrioritySet> {
        self.routing.routable().clone()
    }

    /// A host for a retry after attempts on `tried`, with Envoy's
    /// `previous_priorities` (`update_frequency`): once `tried` holds a
    /// multiple of it, the priorities of those hosts get no load.
    pub fn pick_retry(
        &self,
        original_dst: Option<SocketAddr>,
        hash: Option<u64>,
        tried: &[Arc<Host>],
        update_frequency: u32,
    ) -> Option<Arc<Host>> {
        let f = update_frequency.max(1) as usize;
        if matches!(self.config.discovery, Discovery::OriginalDst) || tried.len() < f {
            return self.pick_hashed(original_dst, hash);
        }
        let counted = tried.len() / f * f;
        let excluded = tried[..counted]
            .iter()
            .map(|h| h.priority.load(Ordering::Relaxed))
            .filter(|p| *p < 128)
            .fold(0u128, |m, p| m | (1u128 << p));
        let set = self.routing.routable();
        set.pick_excluding(self.config.lb_policy, &self.rr, hash, excluded)
            .cloned()
    }

    /// Report one upstream result of `host` to outlier detection (a no-op
    /// without `outlier_detection`). The router calls it once per attempt
    /// when the result is known; the TCP proxy after each connect.
    pub fn report(&self, host: &Arc<Host>, outcome: Outcome) {
        if let Some(d) = &self.outlier {
            d.report(host, outcome);
        }
    }

    /// Report an attempt's result as the router knows it: the response's
    /// status (after a connect success), or the local-origin failure behind
    /// the error (connect failure or reset, connect or request timeout).
    /// Circuit-breaker overflows are not the host's fault and are not reported.
    pub fn report_result<B>(
        &self,
        host: &Arc<Host>,
        result: Result<&http::Response<B>, &RequestError>,
    ) {
        if self.outlier.is_none() {
            return;
        }
        match result {
            Ok(resp) => {
                self.report(host, Outcome::LocalOriginConnectSuccess);
                self.report(host, Outcome::Status(resp.status().as_u16()));
            }
            Err(e) => {
                if let Some(outcome) = Outcome::of_error(e) {
                    self.report(host, outcome);
                }
            }
        }
    }

    /// The outlier detector, when the cluster has one.
    pub fn outlier(&self) -> Option<&Arc<Detector>> {
        self.outlier.as_ref()
    }

    /// Start a request to `host` within `max_requests`: counts it active
    /// until the response body ends. Over the limit: `upstream_rq_active_overflow`
    /// (as Envoy 1.40 counts it) and a UO 503. Envoy checks this limit once a
    /// connection is ready (so may open one first); we check before connecting.
    pub fn start_request(&self, host: Arc<Host>) -> Result<ActiveRequest, RequestError> {
        let Some(permit) = self.breakers.try_acquire(Resource::Request) else {
            self.stats.upstream_rq_active_overflow.inc();
            return Err(RequestError::Overflow);
        };
        Ok(ActiveRequest::new(host, self.stats.upstream_rq_active.clone()).with_permit(permit))
    }

    /// A slot for one retry within `max_retries` (or the retry budget); hold
    /// it while the retry runs. `None`: do not retry (`upstream_rq_retry_overflow`
    /// counted).
    pub fn try_retry(&self) -> Option<Permit> {
        let permit = self.breakers.try_acquire(Resource::Retry);
        if permit.is_none() {
            self.stats.upstream_rq_retry_overflow.inc();
        }
        permit
    }

    /// The host for an original destination, created on first use so its
    /// connections are pooled like any other host's.
    fn original_dst_host(&self, dst: SocketAddr) -> Arc<Host> {
        if let Some(h) = self.original_dst.load().get(&dst) {
            return h.clone();
        }
        let mut created = None;
        self.original_dst.rcu(|map| {
            let mut map = HashMap::clone(map);
            if map.len() >= MAX_ORIGINAL_DST_HOSTS {
                // Forget hosts with nothing in flight (Envoy cleans up idle
                // ORIGINAL_DST hosts on cleanup_interval).
                map.retain(|_, h| h.rq_active.get() > 0 || h.cx_active.get() > 0);
            }
            let h = map
                .entry(dst)
                .or_insert_with(|| Host::with_transport(dst, self.config.transport.clone()))
                .clone();
            created = Some(h);
            map
        });
        created.unwrap_or_else(|| Host::with_transport(dst, self.config.transport.clone()))
    }

    /// Hosts shown by `/clusters` (ORIGINAL_DST ones as they are created),
    /// with where each sits.
    pub fn hosts_for_admin(&self) -> Vec<(Arc<Host>, u32, Health, Placement)> {
        if let Discovery::OriginalDst = self.config.discovery {
            return self
                .original_dst
                .load()
                .values()
                .map(|h| (h.clone(), 1, Health::Healthy, Placement::default()))
                .collect();
        }
        self.all
            .iter()
            .zip(
                self.placement
                    .iter()
                    .chain(std::iter::repeat(&Placement::default())),
            )
            .map(|((h, w, health), p)| (h.clone(), *w, *health, p.clone()))
            .collect()
    }
}

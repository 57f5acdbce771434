//! A cluster as the data path sees it: its config, the hosts it may pick from
//! now, and the state that survives config updates (stats, round-robin
//! counter, hosts by address with their pools, ORIGINAL_DST hosts).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use arc_swap::ArcSwap;

use crate::config::cluster::{ClusterConfig, Discovery};
use crate::config::endpoint::Health;
use crate::config::transport::TransportSocket;
use crate::stats::{ClusterStats, Stats};
use crate::upstream::address::UpstreamAddr;
use crate::upstream::host::Host;
use crate::upstream::lb::HostSet;

/// ORIGINAL_DST hosts kept before idle ones are forgotten.
const MAX_ORIGINAL_DST_HOSTS: usize = 1024;

/// State of a cluster name that outlives updates of its config or endpoints.
#[derive(Debug)]
pub struct ClusterRuntime {
    pub stats: ClusterStats,
    rr: Arc<AtomicU64>,
    /// By (address, transport socket key).
    hosts: HashMap<(UpstreamAddr, u64), Arc<Host>>,
    original_dst: Arc<ArcSwap<HashMap<SocketAddr, Arc<Host>>>>,
}

impl ClusterRuntime {
    pub fn new(stats: &Arc<Stats>, name: &str) -> Self {
        ClusterRuntime {
            stats: ClusterStats::new(stats, name),
            rr: Arc::default(),
            hosts: HashMap::new(),
            original_dst: Arc::default(),
        }
    }

    /// Build the data-path view of `config` with these endpoints (address,
    /// weight, health), reusing hosts whose address is unchanged.
    pub fn build(
        &mut self,
        config: Arc<ClusterConfig>,
        endpoints: &[(UpstreamAddr, u32, Health, TransportSocket)],
    ) -> UpstreamCluster {
        let mut all = Vec::with_capacity(endpoints.len());
        let mut routable = Vec::with_capacity(endpoints.len());
        let mut next = HashMap::with_capacity(endpoints.len());
        for (addr, weight, health, transport) in endpoints {
            let key = (addr.clone(), transport.key());
            let host = self
                .hosts
                .get(&key)
                .cloned()
                .unwrap_or_else(|| Host::with_transport(addr.clone(), transport.clone()));
            next.insert(key, host.clone());
            if health.routable() {
                routable.push((host.clone(), *weight));
            }
            all.push((host, *weight, *health));
        }
        self.hosts = next;
        self.stats.membership_total.set(all.len() as i64);
        self.stats.membership_healthy.set(routable.len() as i64);
        // Envoy's panic mode: too few healthy hosts, so balance over all.
        let threshold = config.healthy_panic_threshold as usize;
        if !all.is_empty() && routable.len() * 100 < threshold * all.len() {
            routable = all.iter().map(|(h, w, _)| (h.clone(), *w)).collect();
        }
        UpstreamCluster {
            config,
            all,
            routable: HostSet::new(routable),
            stats: self.stats.clone(),
            rr: self.rr.clone(),
            original_dst: self.original_dst.clone(),
        }
    }
}

/// One cluster, immutable once built; a new one replaces it on updates.
#[derive(Debug)]
pub struct UpstreamCluster {
    pub config: Arc<ClusterConfig>,
    /// Every host with its weight and health, for `/clusters`.
    pub all: Vec<(Arc<Host>, u32, Health)>,
    pub routable: HostSet,
    pub stats: ClusterStats,
    rr: Arc<AtomicU64>,
    original_dst: Arc<ArcSwap<HashMap<SocketAddr, Arc<Host>>>>,
}

impl UpstreamCluster {
    /// Choose a host for a request or connection whose downstream original
    /// destination is `original_dst`.
    pub fn pick(&self, original_dst: Option<SocketAddr>) -> Option<Arc<Host>> {
        if let Discovery::OriginalDst = self.config.discovery {
            return original_dst.map(|dst| self.original_dst_host(dst));
        }
        self.routable.pick(self.config.lb_policy, &self.rr).cloned()
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

    /// Hosts shown by `/clusters` (ORIGINAL_DST ones as they are created).
    pub fn hosts_for_admin(&self) -> Vec<(Arc<Host>, u32, Health)> {
        if let Discovery::OriginalDst = self.config.discovery {
            return self
                .original_dst
                .load()
                .values()
                .map(|h| (h.clone(), 1, Health::Healthy))
                .collect();
        }
        self.all.clone()
    }
}

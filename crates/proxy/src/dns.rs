//! STRICT_DNS clusters: resolve every endpoint host at start, then again every
//! cluster's dns_refresh_rate (Envoy's default 5 s); each address of each name
//! (of the cluster's dns_lookup_family) becomes a host, in its endpoint's
//! priority and locality.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::store::{ConfigStore, DnsCluster};

/// How often the refresher looks for clusters that are due.
const TICK: Duration = Duration::from_millis(250);

/// Resolve all STRICT_DNS clusters now.
pub async fn resolve_once(store: &ConfigStore) {
    for cluster in store.dns_targets() {
        resolve(store, &cluster).await;
    }
}

async fn resolve(store: &ConfigStore, cluster: &DnsCluster) {
    let mut resolved: Vec<crate::config::store::DnsHost> = Vec::new();
    for (host, port, weight, health, place) in &cluster.targets {
        match tokio::net::lookup_host((host.as_str(), *port)).await {
            Ok(addrs) => {
                for a in cluster.family.filter(addrs.collect()) {
                    if !resolved.iter().any(|(r, ..)| *r == a) {
                        resolved.push((a, *weight, *health, place.clone()));
                    }
                }
            }
            Err(e) => {
                tracing::warn!(cluster = %cluster.name, %host, error = %e, "DNS resolution failed")
            }
        }
    }
    store.set_dns(&cluster.name, resolved);
}

/// Re-resolve each cluster when its refresh rate has passed, forever.
pub async fn refresh(store: Arc<ConfigStore>) {
    let mut last: HashMap<String, Instant> = HashMap::new();
    loop {
        tokio::time::sleep(TICK).await;
        let now = Instant::now();
        let clusters = store.dns_targets();
        last.retain(|name, _| clusters.iter().any(|c| &c.name == name));
        for cluster in clusters {
            let due = last
                .get(&cluster.name)
                .is_none_or(|t| now.duration_since(*t) >= cluster.refresh);
            if due {
                last.insert(cluster.name.clone(), now);
                resolve(&store, &cluster).await;
            }
        }
    }
}

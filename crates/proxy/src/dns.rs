//! STRICT_DNS clusters: resolve every endpoint host at start and every
//! `DNS_REFRESH` after (Envoy's default dns_refresh_rate), all addresses of
//! each name becoming hosts.

use std::sync::Arc;
use std::time::Duration;

use crate::config::store::ConfigStore;

/// Envoy's default dns_refresh_rate.
pub const DNS_REFRESH: Duration = Duration::from_secs(5);

/// Resolve all STRICT_DNS clusters now.
pub async fn resolve_once(store: &ConfigStore) {
    for (cluster, targets) in store.dns_targets() {
        let mut resolved = Vec::new();
        for (host, port, weight, health) in targets {
            match tokio::net::lookup_host((host.as_str(), port)).await {
                Ok(addrs) => {
                    for a in addrs {
                        if !resolved.iter().any(|(r, _, _)| *r == a) {
                            resolved.push((a, weight, health));
                        }
                    }
                }
                Err(e) => tracing::warn!(%cluster, %host, error = %e, "DNS resolution failed"),
            }
        }
        store.set_dns(&cluster, resolved);
    }
}

/// Re-resolve forever.
pub async fn refresh(store: Arc<ConfigStore>) {
    loop {
        tokio::time::sleep(DNS_REFRESH).await;
        resolve_once(&store).await;
    }
}

//! `envoy.filters.network.rbac`: decide a connection from what is known of
//! it (TLS peer, addresses, SNI) before the terminal filter runs; a denied
//! connection is closed. Envoy decides on the first byte the client sends;
//! we decide when the chain starts (the inputs are the same: no request data
//! is looked at), so a client that never sends is counted too, and
//! server-first protocols are not held up.

use std::sync::OnceLock;

use crate::config::rbac::{Input, NetworkRbac};
use crate::downstream::Downstream;
use crate::http::rbac::RbacStats;
use crate::stats::Stats;
use crate::stream_info::DynamicMetadata;

/// One network RBAC filter of a chain, with its counters.
#[derive(Debug)]
pub struct NetworkRbacFilter {
    pub config: NetworkRbac,
    stats: OnceLock<RbacStats>,
}

impl NetworkRbacFilter {
    pub fn new(config: NetworkRbac) -> NetworkRbacFilter {
        NetworkRbacFilter {
            config,
            stats: OnceLock::new(),
        }
    }

    /// `<stat_prefix>rbac.*`, registered on first use.
    pub fn stats(&self, registry: &Stats) -> &RbacStats {
        self.stats.get_or_init(|| {
            RbacStats::new(
                registry,
                &self.config.stat_prefix,
                "",
                &self.config.shadow_rules_stat_prefix,
            )
        })
    }

    /// Whether the connection may go on (shadow rules only count).
    pub fn allows(&self, downstream: &Downstream, registry: &Stats) -> bool {
        let stats = self.stats(registry);
        let metadata = DynamicMetadata::default();
        let input = Input {
            downstream,
            remote_ip: downstream.peer.ip(),
            request: None,
            metadata: &metadata,
        };
        if let Some(shadow) = &self.config.shadow_rules {
            if shadow.evaluate(&input).0 {
                stats.shadow_allowed.inc();
            } else {
                stats.shadow_denied.inc();
            }
        }
        let Some(rules) = &self.config.rules else {
            return true;
        };
        let (allowed, policy) = rules.evaluate(&input);
        if allowed {
            stats.allowed.inc();
        } else {
            stats.denied.inc();
            tracing::debug!(
                details = %format!("rbac_access_denied_matched_policy[{}]", policy.unwrap_or("none")),
                peer = %downstream.peer,
                "network rbac: connection denied"
            );
        }
        allowed
    }
}

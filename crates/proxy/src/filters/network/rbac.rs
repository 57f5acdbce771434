//! `envoy.filters.network.rbac`: decide a connection from what is known of
//! it (TLS peer, addresses, SNI) before the terminal filter runs; a denied
//! connection is closed. Envoy decides on the first byte the client sends;
//! we decide when the chain starts (the inputs are the same: no request data
//! is looked at), so a client that never sends is counted too, and
//! server-first protocols are not held up.

use std::sync::{Arc, OnceLock};

use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};

use crate::config::listener::NetworkAuth;
use crate::config::rbac::{Input, NetworkRbac};
use crate::config::store::ConfigStore;
use crate::downstream::Downstream;
use crate::http::ext_authz::{Verdict, peers};
use crate::http::rbac::RbacStats;
use crate::stats::Stats;
use crate::stream_info::DynamicMetadata;

/// The connection metadata namespace the filter writes.
pub const METADATA_NAMESPACE: &str = "envoy.filters.network.rbac";

/// Run a chain's RBAC and ext_authz filters in order; false = close.
pub async fn admit(
    filters: &[NetworkAuth],
    downstream: &Downstream,
    store: &Arc<ConfigStore>,
) -> bool {
    let mut metadata = DynamicMetadata::default();
    for f in filters {
        match f {
            NetworkAuth::Rbac(r) => {
                if !r.allows(downstream, &store.stats, &mut metadata) {
                    return false;
                }
            }
            NetworkAuth::ExtAuthz(a) => {
                let prefix = if a.config.stat_prefix.ends_with('.') {
                    format!("{}ext_authz.", a.config.stat_prefix)
                } else {
                    format!("{}.ext_authz.", a.config.stat_prefix)
                };
                let stats = a.stats(&store.stats, &prefix);
                if !a.enabled(&metadata) {
                    stats.disabled.inc();
                    continue;
                }
                stats.total.inc();
                let (source, destination) = peers(downstream, a.config.include_peer_certificate);
                let req = CheckRequest {
                    attributes: Some(AttributeContext {
                        source: Some(source),
                        destination: Some(destination),
                        ..Default::default()
                    }),
                };
                match a.check(store, req).await {
                    Verdict::Ok(_) => stats.ok.inc(),
                    Verdict::Denied(_) => {
                        stats.denied.inc();
                        stats.cx_closed.inc();
                        return false;
                    }
                    Verdict::Error => {
                        stats.error.inc();
                        if a.config.failure_mode_allow {
                            stats.failure_mode_allowed.inc();
                        } else {
                            stats.cx_closed.inc();
                            return false;
                        }
                    }
                }
            }
        }
    }
    true
}

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

    /// Whether the connection may go on (shadow rules only count, and say
    /// what they decided in the connection's metadata).
    pub fn allows(
        &self,
        downstream: &Downstream,
        registry: &Stats,
        metadata: &mut DynamicMetadata,
    ) -> bool {
        let stats = self.stats(registry);
        if let Some(shadow) = &self.config.shadow_rules {
            let input = Input {
                downstream,
                remote_ip: downstream.peer.ip(),
                request: None,
                metadata,
            };
            let (allowed, policy) = shadow.evaluate(&input);
            let policy = policy.map(str::to_string);
            if allowed {
                stats.shadow_allowed.inc();
            } else {
                stats.shadow_denied.inc();
            }
            let prefix = &self.config.shadow_rules_stat_prefix;
            if let Some(id) = policy {
                metadata.set(
                    METADATA_NAMESPACE,
                    format!("{prefix}shadow_effective_policy_id"),
                    id.into(),
                );
            }
            metadata.set(
                METADATA_NAMESPACE,
                format!("{prefix}shadow_engine_result"),
                if allowed { "allowed" } else { "denied" }.into(),
            );
        }
        let Some(rules) = &self.config.rules else {
            return true;
        };
        let input = Input {
            downstream,
            remote_ip: downstream.peer.ip(),
            request: None,
            metadata,
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

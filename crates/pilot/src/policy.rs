//! DestinationRules compiled for translation: per host, the traffic policy
//! (rule-wide, per port, per subset) and the subsets (label selectors with
//! their own policy overrides), merged for one cluster as Istio merges them.

use std::collections::BTreeMap;

use api::networking::{
    ClientTlsSettings, ConnectionPoolSettings, ConsistentHashLb, LoadBalancerSettings,
    OutlierDetection, RetryBudget, SimpleLb,
};

/// DestinationRule `loadBalancer.simple`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LbAlgorithm {
    RoundRobin,
    LeastRequest,
    Random,
    /// Forward to the address the caller dialled (ORIGINAL_DST).
    Passthrough,
}

/// The four parts of a traffic policy a `portLevelSettings` entry replaces
/// as a whole, as written in the rule.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PolicyParts {
    pub load_balancer: Option<LoadBalancerSettings>,
    pub connection_pool: Option<ConnectionPoolSettings>,
    pub outlier_detection: Option<OutlierDetection>,
    /// `tls`: how the client sidecar talks to the destination.
    pub tls: Option<ClientTlsSettings>,
}

impl PolicyParts {
    /// `loadBalancer.simple`, if set to an algorithm.
    pub fn lb(&self) -> Option<LbAlgorithm> {
        match self.load_balancer.as_ref()?.simple? {
            SimpleLb::RoundRobin => Some(LbAlgorithm::RoundRobin),
            SimpleLb::LeastRequest | SimpleLb::LeastConn => Some(LbAlgorithm::LeastRequest),
            SimpleLb::Random => Some(LbAlgorithm::Random),
            SimpleLb::Passthrough => Some(LbAlgorithm::Passthrough),
            SimpleLb::Unspecified => None,
        }
    }

    /// `loadBalancer.consistentHash`, if set.
    pub fn consistent_hash(&self) -> Option<&ConsistentHashLb> {
        self.load_balancer.as_ref()?.consistent_hash.as_ref()
    }
}

/// A DestinationRule's (or a subset's) `trafficPolicy`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrafficPolicy {
    pub parts: PolicyParts,
    pub retry_budget: Option<RetryBudget>,
    /// `portLevelSettings` by port number.
    pub ports: BTreeMap<u32, PolicyParts>,
}

/// What applies to one cluster after merging.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Effective {
    pub parts: PolicyParts,
    pub retry_budget: Option<RetryBudget>,
}

impl TrafficPolicy {
    /// The policy for one port of one cluster, as Istio merges it
    /// (`GetPortLevelTrafficPolicy` then `MergeTrafficPolicy`): a
    /// port-level entry replaces the rule-wide load balancer, connection
    /// pool, outlier detection and TLS outright (an absent part means the
    /// default, not the rule's); a subset's parts replace the rule's one by
    /// one, and the subset's own port-level entry replaces all four again.
    pub fn effective(rule: &TrafficPolicy, subset: Option<&TrafficPolicy>, port: u32) -> Effective {
        let mut out = Effective {
            parts: rule
                .ports
                .get(&port)
                .cloned()
                .unwrap_or_else(|| rule.parts.clone()),
            retry_budget: rule.retry_budget.clone(),
        };
        let Some(subset) = subset else { return out };
        let s = &subset.parts;
        let p = &mut out.parts;
        if s.load_balancer.is_some() {
            p.load_balancer = s.load_balancer.clone();
        }
        if s.connection_pool.is_some() {
            p.connection_pool = s.connection_pool.clone();
        }
        if s.outlier_detection.is_some() {
            p.outlier_detection = s.outlier_detection.clone();
        }
        if s.tls.is_some() {
            p.tls = s.tls.clone();
        }
        if subset.retry_budget.is_some() {
            out.retry_budget = subset.retry_budget.clone();
        }
        if let Some(port_parts) = subset.ports.get(&port) {
            out.parts = port_parts.clone();
        }
        out
    }

    /// The consistent hash a route to (`subset`, `port`) hashes by, as
    /// Istio picks it for route `hash_policy`: the subset's port-level
    /// entry, else the subset's, else the rule's port-level entry, else
    /// the rule's; each only when it sets `consistentHash`. `port` is the
    /// destination's explicit port (VirtualService) or the service port
    /// (default route).
    pub fn hash_for<'a>(
        rule: &'a TrafficPolicy,
        subset: Option<&'a TrafficPolicy>,
        port: Option<u32>,
    ) -> Option<&'a ConsistentHashLb> {
        let at_port = |p: &'a TrafficPolicy| port.and_then(|n| p.ports.get(&n)?.consistent_hash());
        subset
            .and_then(at_port)
            .or_else(|| subset.and_then(|s| s.parts.consistent_hash()))
            .or_else(|| at_port(rule))
            .or_else(|| rule.parts.consistent_hash())
    }
}

/// A named subset of a service's endpoints.
#[derive(Clone, Debug, PartialEq)]
pub struct Subset {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub policy: TrafficPolicy,
}

/// One DestinationRule, with its host resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct DestinationPolicy {
    /// Fully qualified host or `*.suffix` wildcard.
    pub host: String,
    pub namespace: String,
    pub name: String,
    /// The rule has a `workloadSelector` (Istio gives sidecars a
    /// `credentialName` only from such rules).
    pub workload_selector: bool,
    pub policy: TrafficPolicy,
    pub subsets: Vec<Subset>,
    /// Which namespaces' proxies see it.
    pub export_to: crate::export::ExportTo,
}

impl DestinationPolicy {
    pub fn subset(&self, name: &str) -> Option<&Subset> {
        self.subsets.iter().find(|s| s.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::networking::{ClientTlsMode, TcpSettings};

    fn tls(mode: ClientTlsMode) -> Option<ClientTlsSettings> {
        Some(ClientTlsSettings {
            mode: Some(mode),
            ..Default::default()
        })
    }

    fn pool(max: i32) -> Option<ConnectionPoolSettings> {
        Some(ConnectionPoolSettings {
            tcp: Some(TcpSettings {
                max_connections: Some(max),
                ..Default::default()
            }),
            http: None,
        })
    }

    #[test]
    fn port_level_replaces_and_subset_overrides_part_by_part() {
        let rule = TrafficPolicy {
            parts: PolicyParts {
                connection_pool: pool(10),
                tls: tls(ClientTlsMode::IstioMutual),
                ..Default::default()
            },
            ports: [(
                8080,
                PolicyParts {
                    connection_pool: pool(20),
                    ..Default::default()
                },
            )]
            .into(),
            ..Default::default()
        };
        // Port-level: the rule's TLS does not carry over.
        let e = TrafficPolicy::effective(&rule, None, 8080);
        assert_eq!(e.parts.connection_pool, pool(20));
        assert_eq!(e.parts.tls, None);
        let e = TrafficPolicy::effective(&rule, None, 9090);
        assert_eq!(e.parts.connection_pool, pool(10));
        // A subset's part replaces just that part.
        let subset = TrafficPolicy {
            parts: PolicyParts {
                tls: tls(ClientTlsMode::Disable),
                ..Default::default()
            },
            ..Default::default()
        };
        let e = TrafficPolicy::effective(&rule, Some(&subset), 9090);
        assert_eq!(e.parts.connection_pool, pool(10));
        assert_eq!(e.parts.tls, tls(ClientTlsMode::Disable));
    }

    #[test]
    fn hash_precedence_skips_levels_without_a_hash() {
        let hash = |h: &str| {
            Some(LoadBalancerSettings {
                consistent_hash: Some(ConsistentHashLb {
                    http_header_name: Some(h.into()),
                    ..Default::default()
                }),
                ..Default::default()
            })
        };
        let rule = TrafficPolicy {
            parts: PolicyParts {
                load_balancer: hash("rule"),
                ..Default::default()
            },
            ports: [(8080, PolicyParts::default())].into(),
            ..Default::default()
        };
        let name = |c: Option<&ConsistentHashLb>| c.and_then(|c| c.http_header_name.clone());
        // A port entry without a hash falls back to the rule's.
        assert_eq!(
            name(TrafficPolicy::hash_for(&rule, None, Some(8080))),
            Some("rule".into())
        );
        let subset = TrafficPolicy {
            parts: PolicyParts {
                load_balancer: hash("subset"),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(
            name(TrafficPolicy::hash_for(&rule, Some(&subset), None)),
            Some("subset".into())
        );
    }
}

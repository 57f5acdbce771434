//! DestinationRules compiled for translation: per host, the traffic policy and
//! the subsets (label selectors with their own policy overrides).

use std::collections::BTreeMap;

use api::networking::ClientTlsSettings;

/// DestinationRule `loadBalancer.simple`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LbAlgorithm {
    RoundRobin,
    LeastRequest,
    Random,
    /// Forward to the address the caller dialled (ORIGINAL_DST).
    Passthrough,
}

/// The parts of a DestinationRule traffic policy that shape a cluster.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrafficPolicy {
    pub lb: Option<LbAlgorithm>,
    /// `tls`: how the client sidecar talks to the destination.
    pub tls: Option<ClientTlsSettings>,
    /// `portLevelSettings[].tls` by port number (None: the port's entry
    /// has no `tls`, which then means none, not the rule's).
    pub port_tls: BTreeMap<u32, Option<ClientTlsSettings>>,
}

impl TrafficPolicy {
    /// A subset's policy overrides the rule's field by field.
    pub fn merged_over(&self, base: &TrafficPolicy) -> TrafficPolicy {
        TrafficPolicy {
            lb: self.lb.or(base.lb),
            tls: self.tls.clone().or_else(|| base.tls.clone()),
            port_tls: self.port_tls.clone(),
        }
    }

    /// The TLS settings for one port, as Istio merges them
    /// (`MergeTrafficPolicy`): a port-level entry replaces the rule-wide
    /// settings outright; a subset's settings replace the rule's, and its
    /// own port-level entry replaces both.
    pub fn tls_for(
        rule: &TrafficPolicy,
        subset: Option<&TrafficPolicy>,
        port: u32,
    ) -> Option<ClientTlsSettings> {
        let base = match rule.port_tls.get(&port) {
            Some(t) => t.clone(),
            None => rule.tls.clone(),
        };
        let Some(subset) = subset else { return base };
        match subset.port_tls.get(&port) {
            Some(t) => t.clone(),
            None => subset.tls.clone().or(base),
        }
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
}

impl DestinationPolicy {
    pub fn subset(&self, name: &str) -> Option<&Subset> {
        self.subsets.iter().find(|s| s.name == name)
    }
}

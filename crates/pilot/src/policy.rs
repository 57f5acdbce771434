//! DestinationRules compiled for translation: per host, the traffic policy and
//! the subsets (label selectors with their own policy overrides).

use std::collections::BTreeMap;

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
}

impl TrafficPolicy {
    /// A subset's policy overrides the rule's field by field.
    pub fn merged_over(&self, base: &TrafficPolicy) -> TrafficPolicy {
        TrafficPolicy {
            lb: self.lb.or(base.lb),
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
    pub policy: TrafficPolicy,
    pub subsets: Vec<Subset>,
}

impl DestinationPolicy {
    pub fn subset(&self, name: &str) -> Option<&Subset> {
        self.subsets.iter().find(|s| s.name == name)
    }
}

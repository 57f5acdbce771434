//! DestinationRule `localityLbSetting` as Istio applies it to a load
//! assignment for one proxy: `distribute` sets each locality group's
//! `load_balancing_weight` (groups no rule sends to are emptied); with
//! outlier detection (failover needs it), `failoverPriority` splits groups
//! by how many of the listed labels match the proxy's, and `failover` /
//! the default give priority 0 to the proxy's region/zone/subzone, 1 to its
//! region/zone, 2 to its region, 3 to other regions (4 to regions a
//! `failover` entry does not send to), compacted to contiguous levels.

use std::collections::{BTreeMap, BTreeSet};

use api::networking::{LocalityDistribute, LocalityFailover, LocalityLbSetting};
use envoy_types::pb::envoy::config::endpoint::v3::LocalityLbEndpoints;
use envoy_types::pb::google::protobuf::UInt32Value;

use crate::model::{self, Locality};
use crate::policy::Effective;

/// What of the proxy locality load balancing reads.
#[derive(Clone, Copy, Debug)]
pub struct ProxyLocality<'a> {
    pub locality: &'a Locality,
    pub labels: &'a BTreeMap<String, String>,
}

/// The setting that applies to a cluster: the policy's, unless disabled
/// (`enabled: false`). The mesh default is Istio's (enabled, no rules).
pub fn setting(policy: &Effective) -> Option<LocalityLbSetting> {
    let s = policy
        .parts
        .load_balancer
        .as_ref()
        .and_then(|lb| lb.locality_lb_setting.clone())
        .unwrap_or_default();
    (s.enabled != Some(false)).then_some(s)
}

/// Whether the cluster gets `locality_weighted_lb_config` (Istio's
/// `applyLocalityLoadBalancer`: `distribute`, or explicit failover rules
/// with outlier detection).
pub fn weighted(policy: &Effective) -> bool {
    let failover = policy.parts.outlier_detection.is_some();
    setting(policy).is_some_and(|s| {
        !s.distribute.is_empty()
            || (failover && (!s.failover.is_empty() || !s.failover_priority.is_empty()))
    })
}

/// Whether the output of some cluster of `rules` depends on the proxy's
/// locality, and whether on its labels too (`failoverPriority`).
pub fn sensitivity<'a>(
    rules: impl Iterator<Item = &'a crate::policy::DestinationPolicy>,
) -> (bool, bool) {
    let (mut locality, mut labels) = (false, false);
    for r in rules {
        let policies = std::iter::once(&r.policy).chain(r.subsets.iter().map(|s| &s.policy));
        for p in policies {
            for parts in std::iter::once(&p.parts).chain(p.ports.values()) {
                let s = parts
                    .load_balancer
                    .as_ref()
                    .and_then(|lb| lb.locality_lb_setting.as_ref());
                if parts.outlier_detection.is_some() || s.is_some_and(|s| !s.distribute.is_empty())
                {
                    locality = true;
                }
                if s.is_some_and(|s| !s.failover_priority.is_empty()) {
                    labels = true;
                }
            }
        }
    }
    (locality, labels)
}

/// A locality group under construction, with the model endpoints behind
/// its `lb_endpoints` (same order) for `failoverPriority`.
pub struct Group<'a> {
    pub lb: LocalityLbEndpoints,
    pub endpoints: Vec<&'a model::Endpoint>,
}

/// Apply the cluster's setting to its groups for this proxy.
pub fn apply(groups: &mut Vec<Group<'_>>, policy: &Effective, proxy: ProxyLocality<'_>) {
    let Some(s) = setting(policy) else { return };
    if weighted(policy) {
        for g in groups.iter_mut() {
            let w: u32 =
                g.lb.lb_endpoints
                    .iter()
                    .map(|e| e.load_balancing_weight.as_ref().map_or(1, |w| w.value))
                    .sum();
            g.lb.load_balancing_weight = Some(UInt32Value { value: w });
        }
    }
    if !s.distribute.is_empty() {
        distribute(groups, proxy.locality, &s.distribute);
    } else if policy.parts.outlier_detection.is_some() {
        if !s.failover_priority.is_empty() {
            failover_priority(groups, proxy, &s.failover_priority);
            if !s.failover.is_empty() {
                failover(groups, proxy.locality, &s.failover);
            }
        } else {
            failover(groups, proxy.locality, &s.failover);
        }
    }
}

/// Istio's `LocalityMatch`: `region[/zone[/subzone]]` with `*` wildcards
/// (a missing zone or subzone matches any).
fn matches(l: &Locality, rule: &str) -> bool {
    let r = Locality::parse(rule, '/');
    let part = |want: &str, have: &str, optional: bool| {
        want == "*" || (optional && want.is_empty()) || want == have
    };
    part(&r.region, &l.region, false)
        && part(&r.zone, &l.zone, true)
        && part(&r.subzone, &l.subzone, true)
}

fn group_locality(g: &LocalityLbEndpoints) -> Locality {
    g.locality
        .as_ref()
        .map(|l| Locality {
            region: l.region.clone(),
            zone: l.zone.clone(),
            subzone: l.sub_zone.clone(),
        })
        .unwrap_or_default()
}

/// Istio's `applyLocalityWeights`: the first `from` matching the proxy;
/// each `to` shares its weight among the groups it matches (by their
/// weight, rounded up); groups no `to` matches lose their endpoints.
fn distribute(groups: &mut [Group<'_>], proxy: &Locality, rules: &[LocalityDistribute]) {
    let Some(rule) = rules.iter().find(|d| matches(proxy, &d.from)) else {
        return;
    };
    let mut unmatched: BTreeSet<usize> = (0..groups.len()).collect();
    for (to, weight) in &rule.to {
        let mut picked = Vec::new();
        let mut total = 0u64;
        for (i, g) in groups.iter().enumerate() {
            if unmatched.contains(&i) && matches(&group_locality(&g.lb), to) {
                unmatched.remove(&i);
                let w = g.lb.load_balancing_weight.as_ref().map_or(1, |w| w.value);
                total += u64::from(w);
                picked.push((i, w));
            }
        }
        for (i, w) in picked {
            let share = (u64::from(w) * u64::from(*weight)).div_ceil(total.max(1));
            if share > 0 {
                groups[i].lb.load_balancing_weight = Some(UInt32Value {
                    value: share as u32,
                });
            }
        }
    }
    for i in unmatched {
        groups[i].lb.lb_endpoints.clear();
        groups[i].endpoints.clear();
    }
}

/// Istio's `LbPriority`: 0 same subzone, 1 same zone, 2 same region, 3 else.
fn lb_priority(proxy: &Locality, l: &Locality) -> u32 {
    match (
        proxy.region == l.region,
        proxy.zone == l.zone,
        proxy.subzone == l.subzone,
    ) {
        (true, true, true) => 0,
        (true, true, false) => 1,
        (true, false, _) => 2,
        _ => 3,
    }
}

/// Istio's `applyLocalityFailover`, on top of priorities already given
/// (each counts five levels).
fn failover(groups: &mut [Group<'_>], proxy: &Locality, rules: &[LocalityFailover]) {
    for g in groups.iter_mut() {
        let l = group_locality(&g.lb);
        let mut p = lb_priority(proxy, &l);
        if p == 3
            && let Some(f) = rules.iter().find(|f| f.from == proxy.region)
            && l.region != f.to
        {
            p = 4;
        }
        g.lb.priority = g.lb.priority * 5 + p;
    }
    compact(groups);
}

/// Renumber priorities 0..N in order, without gaps.
fn compact(groups: &mut [Group<'_>]) {
    let used: BTreeSet<u32> = groups.iter().map(|g| g.lb.priority).collect();
    let rank: BTreeMap<u32, u32> = used.into_iter().zip(0..).collect();
    for g in groups.iter_mut() {
        g.lb.priority = rank[&g.lb.priority];
    }
}

/// Istio's `applyFailoverPriorities`: each endpoint's priority is how many
/// of the labels (in order; `label=value` pins the value) it fails to
/// match from the first mismatch on; each group splits by priority.
fn failover_priority(groups: &mut Vec<Group<'_>>, proxy: ProxyLocality<'_>, labels: &[String]) {
    let proxy_label = |k: &str| proxy.locality.label(proxy.labels, k).to_string();
    let has_labels = !proxy.labels.is_empty() || !proxy.locality.is_empty();
    if !has_labels || groups.is_empty() {
        return;
    }
    let n = labels.len() as u32;
    let wanted: Vec<(String, String)> = labels
        .iter()
        .map(|l| match l.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (l.clone(), proxy_label(l)),
        })
        .collect();
    let mut out = Vec::new();
    for g in groups.drain(..) {
        let mut by_priority: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (i, ep) in g.endpoints.iter().enumerate() {
            let p = wanted
                .iter()
                .enumerate()
                .find(|(_, (k, v))| ep.locality.label(&ep.labels, k) != v)
                .map_or(0, |(j, _)| n - j as u32);
            by_priority.entry(p).or_default().push(i);
        }
        for (p, idx) in by_priority {
            let mut lb = g.lb.clone();
            lb.lb_endpoints = idx.iter().map(|i| g.lb.lb_endpoints[*i].clone()).collect();
            lb.priority = p;
            let w: u32 = lb
                .lb_endpoints
                .iter()
                .map(|e| e.load_balancing_weight.as_ref().map_or(1, |w| w.value))
                .sum();
            lb.load_balancing_weight = Some(UInt32Value { value: w });
            out.push(Group {
                lb,
                endpoints: idx.iter().map(|i| g.endpoints[*i]).collect(),
            });
        }
    }
    compact(&mut out);
    *groups = out;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(s: &str) -> Locality {
        Locality::parse(s, '/')
    }

    #[test]
    fn istio_locality_match() {
        assert!(matches(&loc("us/a/1"), "us/*"));
        assert!(matches(&loc("us/a/1"), "us"));
        assert!(matches(&loc("us/a/1"), "us/a/*"));
        assert!(matches(&loc("us/a/1"), "*"));
        assert!(!matches(&loc("us/a/1"), "us/b/*"));
        assert!(!matches(&loc("eu/a/1"), "us/*"));
    }

    #[test]
    fn priority_by_locality_match() {
        let p = loc("us/a/1");
        assert_eq!(lb_priority(&p, &loc("us/a/1")), 0);
        assert_eq!(lb_priority(&p, &loc("us/a/2")), 1);
        assert_eq!(lb_priority(&p, &loc("us/b/1")), 2);
        assert_eq!(lb_priority(&p, &loc("eu/a/1")), 3);
    }
}

//! Cluster (CDS) and ClusterLoadAssignment (EDS, or a cluster's inline
//! `load_assignment`) rules: names, timeouts, discovery type and load
//! balancer pairing, and each endpoint's address for how it is used.

use envoy_types::pb::envoy::config::cluster::v3::{
    Cluster,
    cluster::{ClusterDiscoveryType, DiscoveryType, LbPolicy},
};
use envoy_types::pb::envoy::config::core::v3::HealthStatus;
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, lb_endpoint};

use crate::address::{self, AddressUse};
use crate::{Path, Report, Violation, collect};

/// Every rule a cluster breaks (its inline load_assignment included).
pub fn cluster(c: &Cluster) -> Vec<Violation> {
    collect(|r| {
        let root = Path::ROOT;
        r.min_len(&root.f("name"), &c.name);
        match &c.connect_timeout {
            Some(d) if d.seconds < 0 || d.nanos < 0 || (d.seconds == 0 && d.nanos == 0) => {
                r.bad(&root.f("connect_timeout"), "value must be greater than 0s")
            }
            _ => {}
        }
        let kind = match &c.cluster_discovery_type {
            Some(ClusterDiscoveryType::Type(t)) => match DiscoveryType::try_from(*t) {
                Ok(t) => Some(t),
                Err(_) => {
                    r.bad(
                        &root.f("type"),
                        "value must be one of the defined enum values",
                    );
                    None
                }
            },
            Some(ClusterDiscoveryType::ClusterType(_)) => None,
            None => Some(DiscoveryType::Static),
        };
        let lb = LbPolicy::try_from(c.lb_policy);
        if lb.is_err() {
            r.bad(
                &root.f("lb_policy"),
                "value must be one of the defined enum values",
            );
        }
        let original_dst = kind == Some(DiscoveryType::OriginalDst);
        match lb {
            Ok(LbPolicy::ClusterProvided) if !original_dst && kind.is_some() => r.bad(
                &root.f("lb_policy"),
                "LB policy CLUSTER_PROVIDED is only valid with cluster type ORIGINAL_DST",
            ),
            Ok(p) if original_dst && p != LbPolicy::ClusterProvided => r.bad(
                &root.f("lb_policy"),
                format!(
                    "LB policy {} is not valid for Cluster type ORIGINAL_DST. Only 'CLUSTER_PROVIDED' is allowed with cluster type 'ORIGINAL_DST'",
                    p.as_str_name()
                ),
            ),
            _ => {}
        }
        if kind == Some(DiscoveryType::Eds) && c.eds_cluster_config.is_none() {
            r.required(&root.f("eds_cluster_config"));
        }
        if let Some(la) = &c.load_assignment {
            let usage = match kind {
                Some(DiscoveryType::StrictDns | DiscoveryType::LogicalDns) => {
                    AddressUse::DnsEndpoint
                }
                _ => AddressUse::Endpoint,
            };
            endpoints(la, usage, &root.f("load_assignment"), r);
        }
    })
}

/// Every rule an EDS load assignment breaks (endpoints must be IPs or pipes).
pub fn cluster_load_assignment(cla: &ClusterLoadAssignment) -> Vec<Violation> {
    collect(|r| {
        r.min_len(&Path::ROOT.f("cluster_name"), &cla.cluster_name);
        endpoints(cla, AddressUse::Endpoint, &Path::ROOT, r);
    })
}

fn endpoints(cla: &ClusterLoadAssignment, usage: AddressUse, at: &Path<'_>, r: &mut Report<'_>) {
    let es = at.f("endpoints");
    for (li, l) in cla.endpoints.iter().enumerate() {
        let lat = es.i(li);
        if l.load_balancing_weight
            .as_ref()
            .is_some_and(|w| w.value < 1)
        {
            r.bad(
                &lat.f("load_balancing_weight"),
                "value must be greater than or equal to 1",
            );
        }
        if l.priority > 128 {
            r.bad(
                &lat.f("priority"),
                "value must be less than or equal to 128",
            );
        }
        let lbs = lat.f("lb_endpoints");
        for (ei, e) in l.lb_endpoints.iter().enumerate() {
            let eat = lbs.i(ei);
            match &e.host_identifier {
                Some(lb_endpoint::HostIdentifier::Endpoint(ep)) => {
                    let ep_at = eat.f("endpoint");
                    address::check(ep.address.as_ref(), usage, &ep_at.f("address"), r);
                }
                Some(lb_endpoint::HostIdentifier::EndpointName(_)) => {}
                None => r.required(&eat.f("endpoint")),
            }
            if e.load_balancing_weight
                .as_ref()
                .is_some_and(|w| w.value < 1)
            {
                r.bad(
                    &eat.f("load_balancing_weight"),
                    "value must be greater than or equal to 1",
                );
            }
            if HealthStatus::try_from(e.health_status).is_err() {
                r.bad(
                    &eat.f("health_status"),
                    "value must be one of the defined enum values",
                );
            }
        }
    }
}

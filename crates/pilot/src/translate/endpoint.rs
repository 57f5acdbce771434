//! EDS: the endpoints of each `outbound|PORT|SUBSET|HOST` cluster, filtered by
//! the subset's labels, each on the port the workload serves that service port on,
//! grouped by locality (sorted, as Istio) with the cluster's `localityLbSetting`
//! applied for the proxy (see `locality`).

use envoy_types::pb::envoy::config::core::v3::{HealthStatus, Locality as XdsLocality, Metadata};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint::HostIdentifier,
};
use envoy_types::pb::google::protobuf::{Struct, UInt32Value, Value, value::Kind};

use super::common::{endpoint_address, socket_address};
use super::locality::{self, Group, ProxyLocality};
use crate::model::{Service, ServicePort, labels_match};
use crate::policy::{DestinationPolicy, Effective, Subset, TrafficPolicy};

/// The merged traffic policy of a service port's cluster (and subset).
pub fn policy_for(
    rule: Option<&DestinationPolicy>,
    subset: Option<&Subset>,
    port: &ServicePort,
) -> Effective {
    let base = rule.map(|r| r.policy.clone()).unwrap_or_default();
    TrafficPolicy::effective(&base, subset.map(|s| &s.policy), port.number)
}

/// The load assignment for a service port, optionally narrowed to a subset,
/// for a proxy at `proxy`.
pub fn assignment(
    cluster_name: &str,
    svc: &Service,
    port: &ServicePort,
    subset: Option<&Subset>,
    policy: &Effective,
    proxy: ProxyLocality<'_>,
) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: cluster_name.to_string(),
        endpoints: locality_endpoints(svc, port, subset, policy, proxy),
        ..Default::default()
    }
}

/// The matching endpoints, one group per locality (sorted by
/// `region/zone/subzone`), with the locality setting applied.
pub fn locality_endpoints(
    svc: &Service,
    port: &ServicePort,
    subset: Option<&Subset>,
    policy: &Effective,
    proxy: ProxyLocality<'_>,
) -> Vec<LocalityLbEndpoints> {
    let mut by_locality: std::collections::BTreeMap<String, Group<'_>> = Default::default();
    for ep in svc
        .endpoints
        .iter()
        .filter(|ep| subset.is_none_or(|s| labels_match(&s.labels, &ep.labels)))
    {
        let Some(target) = ep.ports.get(&port.number).copied() else {
            continue;
        };
        let lb = LbEndpoint {
            host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                address: Some(endpoint_address(&ep.address, target)),
                ..Default::default()
            })),
            health_status: HealthStatus::Healthy as i32,
            load_balancing_weight: ep.weight.map(|value| UInt32Value { value }),
            metadata: endpoint_metadata(ep),
        };
        let group = by_locality
            .entry(ep.locality.key())
            .or_insert_with(|| Group {
                lb: LocalityLbEndpoints {
                    locality: (!ep.locality.is_empty()).then(|| XdsLocality {
                        region: ep.locality.region.clone(),
                        zone: ep.locality.zone.clone(),
                        sub_zone: ep.locality.subzone.clone(),
                    }),
                    ..Default::default()
                },
                endpoints: Vec::new(),
            });
        group.lb.lb_endpoints.push(lb);
        group.endpoints.push(ep);
    }
    let mut groups: Vec<Group<'_>> = by_locality.into_values().collect();
    if groups.is_empty() {
        return Vec::new();
    }
    locality::apply(&mut groups, policy, proxy);
    groups.into_iter().map(|g| g.lb).collect()
}

/// An endpoint's metadata: `filter_metadata.istio.service_account`, and
/// `envoy.transport_socket_match.tlsMode` from its
/// `security.istio.io/tlsMode` label (what auto-mTLS picks the socket by;
/// Istio leaves it out for `disabled`).
fn endpoint_metadata(ep: &crate::model::Endpoint) -> Option<Metadata> {
    let s = |v: &str| Value {
        kind: Some(Kind::StringValue(v.to_string())),
    };
    let mut m = Metadata::default();
    if let Some(sa) = ep.service_account.as_deref() {
        let mut istio = Struct::default();
        istio.fields.insert("service_account".into(), s(sa));
        m.filter_metadata.insert("istio".into(), istio);
    }
    if let Some(mode) = ep
        .labels
        .get(super::tls::TLS_MODE_LABEL)
        .filter(|m| !m.is_empty() && *m != "disabled")
    {
        let mut socket = Struct::default();
        socket.fields.insert("tlsMode".into(), s(mode));
        m.filter_metadata
            .insert(super::tls::TRANSPORT_SOCKET_MATCH.into(), socket);
    }
    (!m.filter_metadata.is_empty()).then_some(m)
}

/// A single fixed endpoint (inbound clusters to the local app).
pub fn static_assignment(cluster_name: &str, ip: &str, port: u32) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: cluster_name.to_string(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: vec![LbEndpoint {
                host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                    address: Some(socket_address(ip, port)),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

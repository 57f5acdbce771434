//! EDS: the endpoints of each `outbound|PORT|SUBSET|HOST` cluster, filtered by
//! the subset's labels, each on the port the workload serves that service port on.

use envoy_types::pb::envoy::config::core::v3::{HealthStatus, Metadata};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint::HostIdentifier,
};
use envoy_types::pb::google::protobuf::{Struct, UInt32Value, Value, value::Kind};

use super::common::{endpoint_address, socket_address};
use crate::model::{Service, ServicePort, labels_match};
use crate::policy::Subset;

/// The load assignment for a service port, optionally narrowed to a subset.
pub fn assignment(
    cluster_name: &str,
    svc: &Service,
    port: &ServicePort,
    subset: Option<&Subset>,
) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: cluster_name.to_string(),
        endpoints: locality_endpoints(svc, port, subset),
        ..Default::default()
    }
}

/// All matching endpoints in one locality group (localities come later).
pub fn locality_endpoints(
    svc: &Service,
    port: &ServicePort,
    subset: Option<&Subset>,
) -> Vec<LocalityLbEndpoints> {
    let lb_endpoints: Vec<LbEndpoint> = svc
        .endpoints
        .iter()
        .filter(|ep| subset.is_none_or(|s| labels_match(&s.labels, &ep.labels)))
        .filter_map(|ep| {
            let target = ep.ports.get(&port.number).copied()?;
            Some(LbEndpoint {
                host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                    address: Some(endpoint_address(&ep.address, target)),
                    ..Default::default()
                })),
                health_status: HealthStatus::Healthy as i32,
                load_balancing_weight: ep.weight.map(|value| UInt32Value { value }),
                metadata: endpoint_metadata(ep),
            })
        })
        .collect();
    if lb_endpoints.is_empty() {
        return Vec::new();
    }
    vec![LocalityLbEndpoints {
        lb_endpoints,
        ..Default::default()
    }]
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

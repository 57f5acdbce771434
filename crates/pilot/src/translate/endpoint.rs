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
                metadata: ep.service_account.as_deref().map(istio_workload_metadata),
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

/// `filter_metadata.istio.service_account` on an endpoint, as Istio sets it.
fn istio_workload_metadata(service_account: &str) -> Metadata {
    let mut istio = Struct::default();
    istio.fields.insert(
        "service_account".into(),
        Value {
            kind: Some(Kind::StringValue(service_account.to_string())),
        },
    );
    let mut m = Metadata::default();
    m.filter_metadata.insert("istio".into(), istio);
    m
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

//! ClusterLoadAssignment (EDS, or a cluster's inline load_assignment) as the
//! load balancer uses it: a flat list of endpoints with weight and health,
//! each with its locality group's priority, locality and locality weight.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use envoy_types::pb::envoy::config::core::v3::HealthStatus;
use envoy_types::pb::envoy::config::endpoint::v3 as xds_endpoint;

use super::{check_subset, host_port, subset};
use crate::error::ConfigError;

pub type XdsClusterLoadAssignment = xds_endpoint::ClusterLoadAssignment;

/// The highest priority level accepted (levels are kept in a small array).
pub const MAX_PRIORITY: u32 = 127;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadAssignment {
    pub cluster_name: String,
    pub endpoints: Vec<LbEndpoint>,
    /// `policy.overprovisioning_factor` in percent (Envoy's default 140).
    pub overprovisioning_factor: u32,
}

/// Envoy's default `overprovisioning_factor` (1.4).
pub const DEFAULT_OVERPROVISIONING_FACTOR: u32 = 140;

/// Where an endpoint is: `LocalityLbEndpoints.locality`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub sub_zone: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LbEndpoint {
    pub address: EndpointAddress,
    pub weight: u32,
    pub health: Health,
    /// `metadata.filter_metadata["envoy.transport_socket_match"]`: what the
    /// cluster's transport_socket_matches compare (Istio's `tlsMode`).
    pub transport_match: BTreeMap<String, String>,
    /// Its locality group's `priority` (0 is the highest).
    pub priority: u32,
    pub locality: Locality,
    /// Its locality group's `load_balancing_weight` (what
    /// `locality_weighted_lb_config` weighs localities by; unset is 0 there).
    pub locality_weight: Option<u32>,
}

/// An endpoint's address: an IP, a Unix domain socket (`pipe`), or a DNS
/// name for STRICT_DNS clusters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EndpointAddress {
    Ip(SocketAddr),
    Pipe(std::path::PathBuf),
    Dns(String, u16),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Healthy,
    Unhealthy,
    Draining,
    Degraded,
}

impl Health {
    /// Whether the load balancer may pick this endpoint.
    pub fn routable(self) -> bool {
        matches!(self, Health::Healthy | Health::Degraded)
    }

    /// Envoy's `/clusters` `health_flags` text.
    pub fn flags(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Unhealthy => "/failed_eds_health",
            Health::Draining => "/pending_dynamic_removal",
            Health::Degraded => "/degraded_eds_health",
        }
    }
}

impl TryFrom<&XdsClusterLoadAssignment> for LoadAssignment {
    type Error = ConfigError;

    fn try_from(cla: &XdsClusterLoadAssignment) -> Result<Self, ConfigError> {
        check_subset(cla, &subset::CLUSTER_LOAD_ASSIGNMENT)?;
        let mut endpoints = Vec::new();
        for (li, group) in cla.endpoints.iter().enumerate() {
            let lpath = format!("endpoints[{li}]");
            // Envoy's bound on priorities (PriorityStateManager).
            if group.priority > MAX_PRIORITY {
                return Err(ConfigError::new(
                    format!("{lpath}.priority"),
                    format!("must be at most {MAX_PRIORITY}"),
                ));
            }
            let locality = group
                .locality
                .as_ref()
                .map(|l| Locality {
                    region: l.region.clone(),
                    zone: l.zone.clone(),
                    sub_zone: l.sub_zone.clone(),
                })
                .unwrap_or_default();
            let locality_weight = group.load_balancing_weight.as_ref().map(|w| w.value);
            if locality_weight == Some(0) {
                return Err(ConfigError::new(
                    format!("{lpath}.load_balancing_weight"),
                    "must be at least 1",
                ));
            }
            for (ei, e) in group.lb_endpoints.iter().enumerate() {
                let epath = format!("{lpath}.lb_endpoints[{ei}]");
                let mut ep = lb_endpoint(e).map_err(|err| err.under(&epath))?;
                ep.priority = group.priority;
                ep.locality = locality.clone();
                ep.locality_weight = locality_weight;
                endpoints.push(ep);
            }
        }
        let overprovisioning_factor = cla
            .policy
            .as_ref()
            .and_then(|p| p.overprovisioning_factor.as_ref())
            .map_or(DEFAULT_OVERPROVISIONING_FACTOR, |f| f.value);
        if overprovisioning_factor == 0 {
            return Err(ConfigError::new(
                "policy.overprovisioning_factor",
                "must be at least 1",
            ));
        }
        Ok(LoadAssignment {
            cluster_name: cla.cluster_name.clone(),
            endpoints,
            overprovisioning_factor,
        })
    }
}

fn lb_endpoint(e: &xds_endpoint::LbEndpoint) -> Result<LbEndpoint, ConfigError> {
    use xds_endpoint::lb_endpoint::HostIdentifier;
    let Some(HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
        return Err(ConfigError::new("endpoint", "required"));
    };
    let pipe = match ep.address.as_ref().and_then(|a| a.address.as_ref()) {
        Some(envoy_types::pb::envoy::config::core::v3::address::Address::Pipe(p)) => {
            Some(std::path::PathBuf::from(&p.path))
        }
        _ => None,
    };
    let (host, port) = match &pipe {
        Some(_) => (String::new(), 0),
        None => host_port(ep.address.as_ref()).map_err(|err| err.under("endpoint.address"))?,
    };
    let address = match host.parse() {
        _ if pipe.is_some() => EndpointAddress::Pipe(pipe.unwrap_or_default()),
        Ok(ip) => EndpointAddress::Ip(SocketAddr::new(ip, port)),
        Err(_) if !host.is_empty() => EndpointAddress::Dns(host, port),
        Err(_) => {
            return Err(ConfigError::new(
                "endpoint.address.socket_address.address",
                "required",
            ));
        }
    };
    let weight = e.load_balancing_weight.as_ref().map_or(1, |w| w.value);
    if weight == 0 {
        return Err(ConfigError::new(
            "load_balancing_weight",
            "must be at least 1",
        ));
    }
    let health = match HealthStatus::try_from(e.health_status) {
        Ok(HealthStatus::Unhealthy | HealthStatus::Timeout) => Health::Unhealthy,
        Ok(HealthStatus::Draining) => Health::Draining,
        Ok(HealthStatus::Degraded) => Health::Degraded,
        _ => Health::Healthy,
    };
    // Envoy's consistent-hash key override; we hash hosts by address only.
    if e.metadata
        .as_ref()
        .and_then(|m| m.filter_metadata.get("envoy.lb"))
        .is_some_and(|s| s.fields.contains_key("hash_key"))
    {
        return Err(ConfigError::new(
            "metadata.filter_metadata[envoy.lb].hash_key",
            "unsupported: hosts are hashed by address",
        ));
    }
    let transport_match = e
        .metadata
        .as_ref()
        .and_then(|m| m.filter_metadata.get("envoy.transport_socket_match"))
        .map(|s| {
            super::transport::strings(s, "metadata.filter_metadata[envoy.transport_socket_match]")
        })
        .transpose()?
        .unwrap_or_default();
    Ok(LbEndpoint {
        address,
        weight,
        health,
        transport_match,
        priority: 0,
        locality: Locality::default(),
        locality_weight: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cla(yaml: &str) -> Result<LoadAssignment, ConfigError> {
        let c: XdsClusterLoadAssignment = xds::json::from_yaml(yaml).expect("parses");
        LoadAssignment::try_from(&c)
    }

    #[test]
    fn converts_endpoints_with_weight_and_health() {
        let la = cla(r#"
cluster_name: outbound|9080||reviews.default.svc.cluster.local
endpoints:
- lb_endpoints:
  - endpoint: {address: {socket_address: {address: 10.0.0.1, port_value: 9080}}}
    load_balancing_weight: 3
  - endpoint: {address: {socket_address: {address: 10.0.0.2, port_value: 9080}}}
    health_status: UNHEALTHY
"#)
        .unwrap();
        assert_eq!(la.endpoints.len(), 2);
        assert_eq!(la.endpoints[0].weight, 3);
        assert_eq!(
            la.endpoints[0].address,
            EndpointAddress::Ip("10.0.0.1:9080".parse().unwrap())
        );
        assert!(!la.endpoints[1].health.routable());
    }

    #[test]
    fn bad_endpoint_names_the_field() {
        let err = cla("cluster_name: c\nendpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 10.0.0.1}}}}]}]")
            .unwrap_err();
        assert_eq!(
            err.path,
            "endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value"
        );
        let err = cla("cluster_name: c\nendpoints: [{priority: 128}]").unwrap_err();
        assert_eq!(err.path, "endpoints[0].priority");
        let err = cla("cluster_name: c\nendpoints: [{load_balancing_weight: 0}]").unwrap_err();
        assert_eq!(err.path, "endpoints[0].load_balancing_weight");
        let err = cla("cluster_name: c\npolicy: {overprovisioning_factor: 0}").unwrap_err();
        assert_eq!(err.path, "policy.overprovisioning_factor");
    }

    #[test]
    fn keeps_priority_locality_and_locality_weight() {
        let la = cla(r#"
cluster_name: c
policy: {overprovisioning_factor: 200}
endpoints:
- locality: {region: us-east, zone: a, sub_zone: s1}
  load_balancing_weight: 80
  lb_endpoints:
  - endpoint: {address: {socket_address: {address: 10.0.0.1, port_value: 80}}}
- priority: 2
  lb_endpoints:
  - endpoint: {address: {socket_address: {address: 10.0.0.2, port_value: 80}}}
"#)
        .unwrap();
        assert_eq!(la.overprovisioning_factor, 200);
        assert_eq!(la.endpoints[0].priority, 0);
        assert_eq!(la.endpoints[0].locality.zone, "a");
        assert_eq!(la.endpoints[0].locality_weight, Some(80));
        assert_eq!(la.endpoints[1].priority, 2);
        assert_eq!(la.endpoints[1].locality, Locality::default());
        assert_eq!(la.endpoints[1].locality_weight, None);
    }

    #[test]
    fn refuses_a_hash_key() {
        let err = cla("cluster_name: c\nendpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 10.0.0.1, port_value: 80}}}, metadata: {filter_metadata: {envoy.lb: {hash_key: k}}}}]}]")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "endpoints[0].lb_endpoints[0].metadata.filter_metadata[envoy.lb].hash_key: unsupported: hosts are hashed by address"
        );
    }
}

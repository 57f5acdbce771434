//! Lean views of the xDS messages a simulated proxy reads: only the fields it
//! needs (versions, nonces, EDS service names, RDS route names). prost skips
//! every other field while decoding, so 2,000 proxies do not build full
//! `Cluster`/`Listener` trees. Tags are those of Envoy's v3 protos.

use prost::Message;

/// `envoy.service.discovery.v3.DeltaDiscoveryResponse`, minus what we ignore.
#[derive(Clone, PartialEq, Message)]
pub struct DeltaResponse {
    #[prost(string, tag = "1")]
    pub system_version_info: String,
    #[prost(message, repeated, tag = "2")]
    pub resources: Vec<Resource>,
    #[prost(string, tag = "4")]
    pub type_url: String,
    #[prost(string, tag = "5")]
    pub nonce: String,
    #[prost(string, repeated, tag = "6")]
    pub removed_resources: Vec<String>,
}

/// `envoy.service.discovery.v3.Resource`: name, version and body.
#[derive(Clone, PartialEq, Message)]
pub struct Resource {
    #[prost(string, tag = "1")]
    pub version: String,
    #[prost(message, optional, tag = "2")]
    pub resource: Option<Any>,
    #[prost(string, tag = "3")]
    pub name: String,
}

/// `google.protobuf.Any`: only the bytes (a slice of the received message,
/// not a copy).
#[derive(Clone, PartialEq, Message)]
pub struct Any {
    #[prost(bytes = "bytes", tag = "2")]
    pub value: bytes::Bytes,
}

/// `envoy.config.cluster.v3.Cluster`: name and EDS config.
#[derive(Clone, PartialEq, Message)]
pub struct Cluster {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "3")]
    pub eds_cluster_config: Option<EdsClusterConfig>,
}

/// `Cluster.EdsClusterConfig`: the name EDS is asked for.
#[derive(Clone, PartialEq, Message)]
pub struct EdsClusterConfig {
    /// Presence of the message (tag 1, `eds_config`) is all we need to know.
    #[prost(message, optional, tag = "1")]
    pub eds_config: Option<Empty>,
    #[prost(string, tag = "2")]
    pub service_name: String,
}

/// Any message whose content we skip.
#[derive(Clone, PartialEq, Message)]
pub struct Empty {}

/// `envoy.config.listener.v3.Listener`: its filter chains.
#[derive(Clone, PartialEq, Message)]
pub struct Listener {
    #[prost(message, repeated, tag = "3")]
    pub filter_chains: Vec<FilterChain>,
    #[prost(message, optional, tag = "25")]
    pub default_filter_chain: Option<FilterChain>,
}

/// `envoy.config.listener.v3.FilterChain`: its network filters.
#[derive(Clone, PartialEq, Message)]
pub struct FilterChain {
    #[prost(message, repeated, tag = "3")]
    pub filters: Vec<Filter>,
}

/// `envoy.config.listener.v3.Filter`: name and typed config.
#[derive(Clone, PartialEq, Message)]
pub struct Filter {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "4")]
    pub typed_config: Option<TypedAny>,
}

/// `google.protobuf.Any` with its type URL (to recognise the HCM).
#[derive(Clone, PartialEq, Message)]
pub struct TypedAny {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// `HttpConnectionManager`: only the `rds` route specifier.
#[derive(Clone, PartialEq, Message)]
pub struct HttpConnectionManager {
    #[prost(message, optional, tag = "3")]
    pub rds: Option<Rds>,
}

/// `HttpConnectionManager.Rds`: the route configuration name.
#[derive(Clone, PartialEq, Message)]
pub struct Rds {
    #[prost(string, tag = "2")]
    pub route_config_name: String,
}

const HCM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

/// The EDS name a cluster asks for, if it is an EDS cluster (Envoy falls back
/// to the cluster name when `service_name` is empty).
pub fn eds_name(body: &[u8]) -> Option<String> {
    let c = Cluster::decode(body).ok()?;
    let eds = c.eds_cluster_config?;
    Some(if eds.service_name.is_empty() {
        c.name
    } else {
        eds.service_name
    })
}

/// Every RDS route configuration name a listener's HTTP connection managers use.
pub fn rds_names(body: &[u8], out: &mut Vec<String>) {
    let Ok(l) = Listener::decode(body) else {
        return;
    };
    for chain in l.filter_chains.iter().chain(l.default_filter_chain.iter()) {
        for f in &chain.filters {
            let Some(tc) = &f.typed_config else { continue };
            if tc.type_url != HCM_TYPE {
                continue;
            }
            if let Ok(hcm) = HttpConnectionManager::decode(tc.value.as_slice())
                && let Some(rds) = hcm.rds
                && !rds.route_config_name.is_empty()
            {
                out.push(rds.route_config_name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::{Cluster as XCluster, cluster};
    use envoy_types::pb::envoy::config::listener::v3::{
        Filter as XFilter, FilterChain as XChain, Listener as XListener, filter,
    };
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
        HttpConnectionManager as XHcm, Rds as XRds, http_connection_manager::RouteSpecifier,
    };
    use prost::Name;

    #[test]
    fn reads_eds_service_name() {
        let c = XCluster {
            name: "outbound|8080||a".into(),
            eds_cluster_config: Some(cluster::EdsClusterConfig {
                eds_config: Some(Default::default()),
                service_name: "outbound|8080||a".into(),
            }),
            ..Default::default()
        };
        assert_eq!(
            eds_name(&c.encode_to_vec()).as_deref(),
            Some("outbound|8080||a")
        );
        let plain = XCluster {
            name: "PassthroughCluster".into(),
            ..Default::default()
        };
        assert_eq!(eds_name(&plain.encode_to_vec()), None);
    }

    #[test]
    fn reads_rds_name_through_hcm() {
        let hcm = XHcm {
            route_specifier: Some(RouteSpecifier::Rds(XRds {
                route_config_name: "8080".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let any = envoy_types::pb::google::protobuf::Any {
            type_url: XHcm::type_url(),
            value: hcm.encode_to_vec(),
        };
        assert_eq!(any.type_url, HCM_TYPE);
        let l = XListener {
            filter_chains: vec![XChain {
                filters: vec![XFilter {
                    name: "envoy.filters.network.http_connection_manager".into(),
                    config_type: Some(filter::ConfigType::TypedConfig(any)),
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut names = Vec::new();
        rds_names(&l.encode_to_vec(), &mut names);
        assert_eq!(names, vec!["8080".to_string()]);
    }
}

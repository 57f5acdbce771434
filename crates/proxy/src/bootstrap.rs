//! The bootstrap file (`envoy -c`): read as JSON or YAML, checked against the
//! subset (refused at start with the field path), split into the admin
//! address, static listeners and clusters, and the ADS connection.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use envoy_types::pb::envoy::config::core::v3 as core;

use crate::config::cluster::{ClusterConfig, Discovery, XdsCluster};
use crate::config::endpoint::EndpointAddress;
use crate::config::listener::{ListenerConfig, XdsListener};
use crate::config::{check_subset, socket_addr, subset};
use crate::descriptors::Descriptors;
use crate::error::{ConfigError, StartError};

/// Envoy's admin address when the bootstrap has none (Istio's port).
pub const DEFAULT_ADMIN: &str = "127.0.0.1:15000";

/// Where and how to reach the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ads {
    /// `http://IP:PORT` of the first endpoint of the named static cluster.
    pub endpoint: String,
    pub cluster: String,
    pub delta: bool,
    /// From lds_config/cds_config `initial_fetch_timeout` (Envoy's default
    /// 15 s; 0 = wait forever): how long readiness waits for EDS/RDS.
    pub initial_fetch_timeout: Option<std::time::Duration>,
}

/// Envoy's default initial_fetch_timeout.
pub const DEFAULT_INITIAL_FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

#[derive(Debug)]
pub struct BootstrapConfig {
    pub node: core::Node,
    pub admin: SocketAddr,
    pub listeners: Vec<(XdsListener, Arc<ListenerConfig>)>,
    pub clusters: Vec<(XdsCluster, Arc<ClusterConfig>)>,
    pub ads: Option<Ads>,
}

/// Read a bootstrap file: JSON if it says so by extension or first byte, else YAML.
pub fn load(path: &Path) -> Result<Bootstrap, StartError> {
    let text = std::fs::read_to_string(path).map_err(|source| StartError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let json = path.extension().is_some_and(|e| e == "json") || text.trim_start().starts_with('{');
    parse(&text, json)
}

/// Parse bootstrap text (JSON or YAML).
pub fn parse(text: &str, json: bool) -> Result<Bootstrap, StartError> {
    let read = |d: &Descriptors| {
        if json {
            let value: serde_json::Value =
                serde_json::from_str(text).map_err(|e| StartError::Parse(e.to_string()))?;
            d.from_json(&value).map_err(StartError::Parse)
        } else {
            d.from_yaml(text).map_err(StartError::Parse)
        }
    };
    // The proxy's own types first (small pool); a config that needs any other
    // Envoy type is read with all of them, so the subset check can name it.
    Descriptors::with(read).or_else(|_| Descriptors::with_all(read))
}

impl TryFrom<&Bootstrap> for BootstrapConfig {
    type Error = ConfigError;

    fn try_from(b: &Bootstrap) -> Result<Self, ConfigError> {
        check_subset(b, &subset::BOOTSTRAP)?;
        let admin = match b.admin.as_ref().and_then(|a| a.address.as_ref()) {
            Some(addr) => socket_addr(Some(addr)).map_err(|e| e.under("admin.address"))?,
            None => DEFAULT_ADMIN.parse().expect("valid default"),
        };
        let statics = b.static_resources.clone().unwrap_or_default();
        let listeners = statics
            .listeners
            .iter()
            .enumerate()
            .map(|(i, l)| {
                ListenerConfig::try_from(l)
                    .map(|c| (l.clone(), Arc::new(c)))
                    .map_err(|e| e.under(&format!("static_resources.listeners[{i}]")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let clusters = statics
            .clusters
            .iter()
            .enumerate()
            .map(|(i, c)| {
                ClusterConfig::try_from(c)
                    .map(|cfg| (c.clone(), Arc::new(cfg)))
                    .map_err(|e| e.under(&format!("static_resources.clusters[{i}]")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        for (i, (_, l)) in listeners.iter().enumerate() {
            let clash = listeners[..i]
                .iter()
                .find(|(_, o)| o.address == l.address && l.address.port() != 0);
            if let Some((_, other)) = clash {
                return Err(ConfigError::new(
                    format!("static_resources.listeners[{i}].address"),
                    format!(
                        "duplicate address {} as existing listener {}",
                        l.address, other.name
                    ),
                ));
            }
        }
        let known = |name: &str| clusters.iter().any(|(_, c)| c.name == name);
        for (i, (_, l)) in listeners.iter().enumerate() {
            l.check_inline_route_clusters(&known)
                .map_err(|e| e.under(&format!("static_resources.listeners[{i}]")))?;
        }
        let ads = ads(b, &clusters)?;
        Ok(BootstrapConfig {
            node: b.node.clone().unwrap_or_default(),
            admin,
            listeners,
            clusters,
            ads,
        })
    }
}

fn ads(
    b: &Bootstrap,
    clusters: &[(XdsCluster, Arc<ClusterConfig>)],
) -> Result<Option<Ads>, ConfigError> {
    use core::api_config_source::ApiType;
    use core::grpc_service::TargetSpecifier;
    let Some(dynamic) = &b.dynamic_resources else {
        return Ok(None);
    };
    let path = "dynamic_resources.ads_config";
    let Some(ads) = &dynamic.ads_config else {
        if dynamic.lds_config.is_some() || dynamic.cds_config.is_some() {
            return Err(ConfigError::new(
                path,
                "lds_config/cds_config need ads_config",
            ));
        }
        return Ok(None);
    };
    let delta = match ApiType::try_from(ads.api_type) {
        Ok(ApiType::Grpc | ApiType::AggregatedGrpc) => false,
        Ok(ApiType::DeltaGrpc | ApiType::AggregatedDeltaGrpc) => true,
        _ => {
            return Err(ConfigError::new(
                format!("{path}.api_type"),
                "GRPC or DELTA_GRPC required",
            ));
        }
    };
    let cluster = match ads.grpc_services.as_slice() {
        [svc] => match &svc.target_specifier {
            Some(TargetSpecifier::EnvoyGrpc(g)) => g.cluster_name.clone(),
            _ => {
                return Err(ConfigError::new(
                    format!("{path}.grpc_services[0]"),
                    "envoy_grpc required",
                ));
            }
        },
        _ => {
            return Err(ConfigError::new(
                format!("{path}.grpc_services"),
                "exactly one grpc service required",
            ));
        }
    };
    let Some((_, c)) = clusters.iter().find(|(_, c)| c.name == cluster) else {
        return Err(ConfigError::new(
            format!("{path}.grpc_services[0].envoy_grpc.cluster_name"),
            format!("no static cluster {cluster}"),
        ));
    };
    let first = match &c.discovery {
        Discovery::Static(la) | Discovery::StrictDns(la) => la.endpoints.first(),
        _ => None,
    };
    let endpoint = match first.map(|e| &e.address) {
        Some(EndpointAddress::Ip(a)) => format!("http://{a}"),
        Some(EndpointAddress::Dns(h, p)) => format!("http://{h}:{p}"),
        Some(EndpointAddress::Pipe(_)) => {
            return Err(ConfigError::new(
                format!("{path}.grpc_services[0].envoy_grpc.cluster_name"),
                format!("static cluster {cluster}: a pipe xDS server is not supported"),
            ));
        }
        None => {
            return Err(ConfigError::new(
                format!("{path}.grpc_services[0].envoy_grpc.cluster_name"),
                format!("static cluster {cluster} has no endpoint"),
            ));
        }
    };
    let configured = [&dynamic.lds_config, &dynamic.cds_config]
        .into_iter()
        .flatten()
        .find_map(|c| c.initial_fetch_timeout.as_ref());
    let initial_fetch_timeout = match configured {
        None => Some(DEFAULT_INITIAL_FETCH_TIMEOUT),
        Some(d) => Some(crate::config::duration(
            d,
            "dynamic_resources.lds_config.initial_fetch_timeout",
        )?)
        .filter(|d| !d.is_zero()),
    };
    Ok(Some(Ads {
        endpoint,
        cluster,
        delta,
        initial_fetch_timeout,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADS: &str = r#"
node: {id: "sidecar~10.0.0.1~a.ns~ns.svc.cluster.local", cluster: a.ns}
admin: {address: {socket_address: {address: 127.0.0.1, port_value: 0}}}
dynamic_resources:
  ads_config:
    api_type: DELTA_GRPC
    transport_api_version: V3
    grpc_services: [{envoy_grpc: {cluster_name: xds-grpc}}]
  cds_config: {ads: {}, resource_api_version: V3}
  lds_config: {ads: {}, resource_api_version: V3}
static_resources:
  clusters:
  - name: xds-grpc
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: xds-grpc
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 15010}}}}]}]
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
"#;

    #[test]
    fn ads_points_at_the_static_cluster() {
        let b = parse(ADS, false).unwrap();
        let cfg = BootstrapConfig::try_from(&b).unwrap();
        assert_eq!(
            cfg.ads,
            Some(Ads {
                endpoint: "http://127.0.0.1:15010".into(),
                cluster: "xds-grpc".into(),
                delta: true,
                initial_fetch_timeout: Some(DEFAULT_INITIAL_FETCH_TIMEOUT),
            })
        );
        assert_eq!(cfg.admin.port(), 0);
    }

    #[test]
    fn unsupported_bootstrap_field_is_named() {
        let b = parse(&format!("{ADS}\nstats_flush_interval: 5s\n"), false).unwrap();
        let err = BootstrapConfig::try_from(&b).unwrap_err();
        assert_eq!(err.to_string(), "stats_flush_interval: unsupported field");
    }
}

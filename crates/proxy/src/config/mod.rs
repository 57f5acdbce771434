//! Typed config: Envoy wire types converted at the edge (`TryFrom<&Xds...>`)
//! into the domain types the data path runs, one module per resource kind, and
//! the store that holds the last good version of each resource.

pub mod circuit_breakers;
pub mod cluster;
pub mod cors;
pub mod endpoint;
pub mod ext_authz;
pub mod fault;
pub mod hash_policy;
pub mod header_ops;
pub mod jwt_authn;
pub mod listener;
pub mod matcher;
pub mod outlier;
pub mod rbac;
pub mod retry;
pub mod route;
pub mod store;
pub mod subset;
pub mod tls;
pub mod transport;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::google::protobuf;

use crate::error::ConfigError;

/// `Address.socket_address` as a socket address; the path names the field.
pub(crate) fn socket_addr(addr: Option<&core::Address>) -> Result<SocketAddr, ConfigError> {
    let (host, port) = host_port(addr)?;
    let ip: IpAddr = host
        .parse()
        .map_err(|_| ConfigError::new("socket_address.address", format!("not an IP: {host}")))?;
    Ok(SocketAddr::new(ip, port))
}

/// `Address.socket_address` as (host, port) without resolving the host.
pub(crate) fn host_port(addr: Option<&core::Address>) -> Result<(String, u16), ConfigError> {
    let Some(core::address::Address::SocketAddress(sa)) = addr.and_then(|a| a.address.as_ref())
    else {
        return Err(ConfigError::new("socket_address", "required"));
    };
    let port = match sa.port_specifier {
        Some(core::socket_address::PortSpecifier::PortValue(p)) => u16::try_from(p)
            .map_err(|_| ConfigError::new("socket_address.port_value", "out of range"))?,
        _ => return Err(ConfigError::new("socket_address.port_value", "required")),
    };
    if sa.protocol != core::socket_address::Protocol::Tcp as i32 {
        return Err(ConfigError::new(
            "socket_address.protocol",
            "only TCP is supported",
        ));
    }
    Ok((sa.address.clone(), port))
}

/// A protobuf Duration as a std Duration (negative = error).
pub(crate) fn duration(d: &protobuf::Duration, path: &str) -> Result<Duration, ConfigError> {
    if d.seconds < 0 || d.nanos < 0 {
        return Err(ConfigError::new(path, "negative duration"));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

/// A message checked against a subset table (docs/xds-subset.md).
pub(crate) fn check_subset<M: prost::Message>(
    msg: &M,
    schema: &'static subset::Schema,
) -> Result<(), ConfigError> {
    subset::check(msg, schema)
}

/// The first rule of Envoy's (`envoy-rules`) the message breaks, as the
/// pilot's pre-push check words it: the same `path: reason` either side.
pub(crate) fn check_envoy_rules(
    violations: Vec<envoy_rules::Violation>,
) -> Result<(), ConfigError> {
    match violations.into_iter().next() {
        Some(v) => Err(ConfigError::new(v.path, v.reason)),
        None => Ok(()),
    }
}

/// Decode an `Any` of the expected type.
pub(crate) fn decode_any<M: prost::Message + prost::Name + Default>(
    any: &protobuf::Any,
    path: &str,
) -> Result<M, ConfigError> {
    let want = M::full_name();
    let got = any.type_url.rsplit('/').next().unwrap_or_default();
    if got != want {
        return Err(ConfigError::new(path, format!("unsupported type {got}")));
    }
    M::decode(any.value.as_slice()).map_err(|e| ConfigError::new(path, e.to_string()))
}

/// A `prost_types::Any` (the xDS client's) as envoy-types' own `Any`.
pub(crate) fn envoy_any(any: &prost_types::Any) -> protobuf::Any {
    protobuf::Any {
        type_url: any.type_url.clone(),
        value: any.value.clone(),
    }
}

/// Check a JSON dump of xDS resources (`{"listeners": [...], "routes":
/// [...], "clusters": [...], "endpoints": [...]}`, the pilot's goldens'
/// shape) against what the proxy runs: (kind, name, refusal) for each.
pub fn check_dump(dump: &serde_json::Value) -> Vec<(&'static str, String, Result<(), String>)> {
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::pb::envoy::config::listener::v3::Listener;
    use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
    fn one<M, C>(d: &crate::descriptors::Descriptors, v: &serde_json::Value) -> Result<(), String>
    where
        M: prost::Message + Default + prost::Name,
        C: for<'a> TryFrom<&'a M, Error = ConfigError>,
    {
        let m = d.from_json::<M>(v)?;
        C::try_from(&m).map(drop).map_err(|e| e.to_string())
    }
    crate::descriptors::Descriptors::with(|d| {
        let items = |key: &str| dump[key].as_array().cloned().unwrap_or_default();
        let name = |v: &serde_json::Value, key: &str| v[key].as_str().unwrap_or("?").to_string();
        let mut out = Vec::new();
        for v in items("listeners") {
            out.push((
                "listener",
                name(&v, "name"),
                one::<Listener, listener::ListenerConfig>(d, &v),
            ));
        }
        for v in items("routes") {
            out.push((
                "route",
                name(&v, "name"),
                one::<RouteConfiguration, route::RouteConfig>(d, &v),
            ));
        }
        for v in items("clusters") {
            out.push((
                "cluster",
                name(&v, "name"),
                one::<Cluster, cluster::ClusterConfig>(d, &v),
            ));
        }
        for v in items("endpoints") {
            out.push((
                "endpoints",
                name(&v, "cluster_name"),
                one::<ClusterLoadAssignment, endpoint::LoadAssignment>(d, &v),
            ));
        }
        out
    })
}

//! Envoy bootstrap JSON for a client and a server sidecar doing mesh mTLS
//! with Istio's SDS secrets (`default`, `ROOTCA` over `sds-grpc`): the
//! builders both our proxy and stock Envoy are started with.

use std::path::Path;

use serde_json::{Value, json};

use super::mesh_tls::{LOOPBACK, s};

pub fn sds() -> Value {
    json!({
        "resource_api_version": "V3",
        "initial_fetch_timeout": "0s",
        "api_config_source": {
            "api_type": "GRPC",
            "transport_api_version": "V3",
            "grpc_services": [{"envoy_grpc": {"cluster_name": "sds-grpc"}}]
        }
    })
}

/// Istio's common TLS context: certificate and roots over SDS, a SAN check.
pub fn common_tls(alpn: &[&str], san: Value) -> Value {
    json!({
        "alpn_protocols": alpn,
        "tls_certificate_sds_secret_configs": [{"name": "default", "sds_config": sds()}],
        "combined_validation_context": {
            "default_validation_context": {
                "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": san}]
            },
            "validation_context_sds_secret_config": {"name": "ROOTCA", "sds_config": sds()}
        }
    })
}

pub const TLS: &str = "envoy.transport_sockets.tls";
pub const TLS_TYPES: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.";

pub fn downstream_tls(alpn: &[&str]) -> Value {
    json!({"name": TLS, "typed_config": {
        "@type": format!("{TLS_TYPES}DownstreamTlsContext"),
        "require_client_certificate": true,
        "common_tls_context": common_tls(alpn, json!({"prefix": "spiffe://cluster.local/"}))
    }})
}

pub fn upstream_tls(alpn: &[&str]) -> Value {
    json!({"name": TLS, "typed_config": {
        "@type": format!("{TLS_TYPES}UpstreamTlsContext"),
        "sni": "outbound_.80_._.server.default.svc.cluster.local",
        "common_tls_context": common_tls(
            alpn,
            json!({"exact": "spiffe://cluster.local/ns/default/sa/server"})
        )
    }})
}

pub fn hcm(prefix: &str, cluster: &str, xfcc: bool) -> Value {
    let mut c = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": prefix,
        "route_config": {"name": "r", "virtual_hosts": [{
            "name": "all", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}]
        }]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
    });
    if xfcc {
        c["forward_client_cert_details"] = json!("APPEND_FORWARD");
        c["set_current_client_cert_details"] = json!({"uri": true});
    }
    json!({"name": "envoy.filters.network.http_connection_manager", "typed_config": c})
}

pub fn tcp(prefix: &str, cluster: &str) -> Value {
    json!({"name": "envoy.filters.network.tcp_proxy", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": prefix, "cluster": cluster}})
}

pub fn address(port: u16) -> Value {
    json!({"socket_address": {"address": LOOPBACK, "port_value": port}})
}

pub fn listener(name: &str, port: u16, tls: Option<Value>, filter: Value) -> Value {
    let mut chain = json!({"filters": [filter]});
    if let Some(t) = tls {
        chain["transport_socket"] = t;
    }
    json!({"name": name, "address": address(port), "filter_chains": [chain]})
}

pub fn cluster(name: &str, port: u16, tls: Option<Value>) -> Value {
    let mut c = json!({
        "name": name, "type": "STATIC", "connect_timeout": "2s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": address(port)}}]}]}
    });
    if let Some(t) = tls {
        c["transport_socket"] = t;
    }
    c
}

/// Istio's `sds-grpc` cluster (what `halyard bootstrap --sds-socket` adds).
pub fn sds_cluster(socket: &Path) -> Value {
    json!({
        "name": "sds-grpc", "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": "sds-grpc", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"pipe": {"path": s(socket)}}}}]}]},
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}}
    })
}

pub fn bootstrap(node: &str, admin: u16, listeners: Vec<Value>, clusters: Vec<Value>) -> Value {
    json!({
        "node": {"id": format!("sidecar~127.0.0.1~{node}.default~default.svc.cluster.local"),
                 "cluster": format!("{node}.default")},
        "admin": {"address": address(admin)},
        "static_resources": {"listeners": listeners, "clusters": clusters}
    })
}

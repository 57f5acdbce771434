//! LDS: Istio's listener layout. `virtualOutbound` (15001) hands captured
//! connections to per-port listeners by original destination; `virtualInbound`
//! (15006) serves the workload's own ports; Sidecar egress listeners bind for
//! real. HTTP ports get an HTTP connection manager on RDS route `PORT`, TCP
//! ports a tcp_proxy, unnamed ports both, chosen by http_inspector.

use envoy_types::pb::envoy::config::core::v3::{CidrRange, TrafficDirection};
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter, filter, listener_filter,
};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::http_inspector::v3::HttpInspector;
use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager::CodecType,
    http_connection_manager::RouteSpecifier, http_connection_manager::UpgradeConfig, http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    TcpProxy, tcp_proxy::ClusterSpecifier,
};
use envoy_types::pb::google::protobuf::{BoolValue, UInt32Value};

use super::common::{ads, any, socket_address};

pub const VIRTUAL_OUTBOUND: &str = "virtualOutbound";
pub const VIRTUAL_INBOUND: &str = "virtualInbound";
pub const OUTBOUND_PORT: u32 = 15001;
pub const INBOUND_PORT: u32 = 15006;
const HCM: &str = "envoy.filters.network.http_connection_manager";
const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";
/// What clients send when http_inspector sees HTTP.
const HTTP_ALPN: [&str; 2] = ["http/1.1", "h2c"];

/// How a listener (or filter chain) handles its traffic.
#[derive(Clone, Debug)]
pub enum Serve {
    /// HTTP connection manager on RDS route `route`.
    Http { route: String },
    /// HTTP connection manager with an inline route table.
    HttpInline(Box<RouteConfiguration>),
    /// Plain TCP to one cluster.
    Tcp { cluster: String },
    /// Sniff: HTTP to `route`, anything else to `cluster`.
    Auto { route: String, cluster: String },
    /// Sniff: HTTP through an inline route table, anything else to `cluster`.
    AutoInline(Box<RouteConfiguration>, String),
}

/// `virtualOutbound`: the target of the outbound capture rule. Connections go
/// to the per-port listener for their original destination, or to `fallback`.
pub fn virtual_outbound(fallback: &str) -> Listener {
    Listener {
        name: VIRTUAL_OUTBOUND.into(),
        address: Some(socket_address("0.0.0.0", OUTBOUND_PORT)),
        use_original_dst: Some(BoolValue { value: true }),
        listener_filters: vec![original_dst()],
        default_filter_chain: Some(chain(None, tcp_proxy("PassthroughCluster", fallback))),
        traffic_direction: TrafficDirection::Outbound as i32,
        ..Default::default()
    }
}

/// An outbound listener for one port (and optionally one VIP): virtual
/// (`bind_to_port: false`, reached through 15001) unless `bind` is set.
pub fn outbound(address: &str, port: u32, serve: &Serve, bind: bool) -> Listener {
    let name = format!("{address}_{port}");
    let stat_prefix = format!("outbound_{name}");
    let (listener_filters, filter_chains) = chains(&stat_prefix, serve, None);
    Listener {
        name,
        address: Some(socket_address(address, port)),
        bind_to_port: Some(BoolValue { value: bind }),
        listener_filters,
        filter_chains,
        traffic_direction: TrafficDirection::Outbound as i32,
        ..Default::default()
    }
}

/// `virtualInbound`: one filter chain per inbound port of the workload
/// (matched on the original destination port), the rest passed through.
pub fn virtual_inbound(ports: &[(u32, Serve)], passthrough_cluster: &str) -> Listener {
    let mut filter_chains = Vec::new();
    let mut sniff = false;
    for (port, serve) in ports {
        let stat_prefix = format!("inbound_0.0.0.0_{port}");
        let (filters, chains) = chains(&stat_prefix, serve, Some(*port));
        sniff |= !filters.is_empty();
        filter_chains.extend(chains);
    }
    let mut listener_filters = vec![original_dst()];
    if sniff {
        listener_filters.push(http_inspector());
    }
    Listener {
        name: VIRTUAL_INBOUND.into(),
        address: Some(socket_address("0.0.0.0", INBOUND_PORT)),
        listener_filters,
        filter_chains,
        default_filter_chain: Some(chain(
            None,
            tcp_proxy("InboundPassthroughCluster", passthrough_cluster),
        )),
        traffic_direction: TrafficDirection::Inbound as i32,
        ..Default::default()
    }
}

/// Listener filters and filter chains for one way of serving.
fn chains(
    stat_prefix: &str,
    serve: &Serve,
    port: Option<u32>,
) -> (Vec<ListenerFilter>, Vec<FilterChain>) {
    let m = |alpn: &[&str]| {
        (port.is_some() || !alpn.is_empty()).then(|| FilterChainMatch {
            destination_port: port.map(|value| UInt32Value { value }),
            application_protocols: alpn.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
    };
    match serve {
        Serve::Http { route } => (vec![], vec![chain(m(&[]), hcm_rds(stat_prefix, route))]),
        Serve::HttpInline(rc) => (vec![], vec![chain(m(&[]), hcm_inline(stat_prefix, rc))]),
        Serve::Tcp { cluster } => (vec![], vec![chain(m(&[]), tcp_proxy(stat_prefix, cluster))]),
        Serve::Auto { route, cluster } => (
            vec![http_inspector()],
            vec![
                chain(m(&HTTP_ALPN), hcm_rds(stat_prefix, route)),
                chain(m(&[]), tcp_proxy(stat_prefix, cluster)),
            ],
        ),
        Serve::AutoInline(rc, cluster) => (
            vec![http_inspector()],
            vec![
                chain(m(&HTTP_ALPN), hcm_inline(stat_prefix, rc)),
                chain(m(&[]), tcp_proxy(stat_prefix, cluster)),
            ],
        ),
    }
}

/// Restrict a chain to destination IPs (a TCP service's VIP).
pub fn with_prefix_ranges(mut l: Listener, ips: &[String]) -> Listener {
    for fc in &mut l.filter_chains {
        let m = fc.filter_chain_match.get_or_insert_with(Default::default);
        m.prefix_ranges = ips
            .iter()
            .map(|ip| CidrRange {
                address_prefix: ip.clone(),
                prefix_len: Some(UInt32Value {
                    value: if ip.contains(':') { 128 } else { 32 },
                }),
            })
            .collect();
    }
    l
}

/// Add one tcp_proxy chain per CIDR service on a wildcard listener, matched
/// on the destination ranges (Istio's treatment of ServiceEntry CIDR
/// `addresses`: no listener of their own, a chain on `0.0.0.0:PORT`).
pub fn with_cidr_chains(mut l: Listener, chains: &[(Vec<String>, String)]) -> Listener {
    let stat_prefix = format!("outbound_{}", l.name);
    for (cidrs, cluster) in chains {
        let m = FilterChainMatch {
            prefix_ranges: cidrs.iter().map(|c| cidr_range(c)).collect(),
            ..Default::default()
        };
        // Before the catch-all chains, as Istio orders them.
        l.filter_chains
            .insert(0, chain(Some(m), tcp_proxy(&stat_prefix, cluster)));
    }
    l
}

/// `A.B.C.D/LEN` as a CidrRange; a bare IP is a host route. An unparsable
/// length is kept as given for the pre-push check to name.
fn cidr_range(cidr: &str) -> CidrRange {
    let (ip, len) = match cidr.split_once('/') {
        Some((ip, len)) => (ip, len.parse().unwrap_or(u32::MAX)),
        None => (cidr, if cidr.contains(':') { 128 } else { 32 }),
    };
    CidrRange {
        address_prefix: ip.to_string(),
        prefix_len: Some(UInt32Value { value: len }),
    }
}

fn chain(filter_chain_match: Option<FilterChainMatch>, filter: Filter) -> FilterChain {
    FilterChain {
        filter_chain_match,
        filters: vec![filter],
        ..Default::default()
    }
}

fn original_dst() -> ListenerFilter {
    ListenerFilter {
        name: "envoy.filters.listener.original_dst".into(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(any(
            &OriginalDst {},
        ))),
        ..Default::default()
    }
}

fn http_inspector() -> ListenerFilter {
    ListenerFilter {
        name: "envoy.filters.listener.http_inspector".into(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(any(
            &HttpInspector {},
        ))),
        ..Default::default()
    }
}

fn tcp_proxy(stat_prefix: &str, cluster: &str) -> Filter {
    let tp = TcpProxy {
        stat_prefix: stat_prefix.into(),
        cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.into())),
        ..Default::default()
    };
    Filter {
        name: TCP_PROXY.into(),
        config_type: Some(filter::ConfigType::TypedConfig(any(&tp))),
    }
}

fn hcm_rds(stat_prefix: &str, route: &str) -> Filter {
    hcm(
        stat_prefix,
        RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: route.into(),
        }),
    )
}

fn hcm_inline(stat_prefix: &str, rc: &RouteConfiguration) -> Filter {
    hcm(stat_prefix, RouteSpecifier::RouteConfig(rc.clone()))
}

fn hcm(stat_prefix: &str, route_specifier: RouteSpecifier) -> Filter {
    let hcm = HttpConnectionManager {
        stat_prefix: stat_prefix.into(),
        codec_type: CodecType::Auto as i32,
        route_specifier: Some(route_specifier),
        // Istio's chain: the fault filter (routes carry its config) before
        // the router.
        http_filters: vec![
            HttpFilter {
                name: super::route::FAULT_FILTER.into(),
                config_type: Some(http_filter::ConfigType::TypedConfig(any(
                    &envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault::default(),
                ))),
                ..Default::default()
            },
            HttpFilter {
                name: "envoy.filters.http.router".into(),
                config_type: Some(http_filter::ConfigType::TypedConfig(
                    any(&Router::default()),
                )),
                ..Default::default()
            },
        ],
        upgrade_configs: vec![UpgradeConfig {
            upgrade_type: "websocket".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    Filter {
        name: HCM.into(),
        config_type: Some(filter::ConfigType::TypedConfig(any(&hcm))),
    }
}

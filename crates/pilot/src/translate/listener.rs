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
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager::CodecType,
    http_connection_manager::ForwardClientCertDetails,
    http_connection_manager::PathWithEscapedSlashesAction, http_connection_manager::RouteSpecifier,
    http_connection_manager::SetCurrentClientCertDetails, http_connection_manager::UpgradeConfig,
    http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    TcpProxy, tcp_proxy::ClusterSpecifier,
};
use envoy_types::pb::google::protobuf::{BoolValue, UInt32Value};

use super::common::{ads, any, socket_address};
use super::tls;
use crate::mesh::MeshTls;
use crate::peer_authn::{Effective, Mode};
use api::mesh_config::PathNormalization;

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

/// Mesh TLS on the inbound side: the workload's resolved
/// PeerAuthentication modes (None: no CA, plaintext as before).
#[derive(Clone, Copy, Debug)]
pub struct InboundTls<'a> {
    pub mesh: &'a MeshTls,
    pub modes: &'a Effective,
}

/// `virtualInbound`: one filter chain per inbound port of the workload
/// (matched on the original destination port), the rest passed through.
/// With mesh TLS, each port's chains follow Istio's matrix for its mode,
/// and the pass-through is filter chains of the workload's default mode
/// (plus ports only `portLevelMtls` names) instead of a default filter
/// chain: a connection that matches a port but none of its chains (say,
/// plaintext to a STRICT port) is closed, never passed through.
pub fn virtual_inbound(
    ports: &[(u32, Serve)],
    passthrough_cluster: &str,
    tls: Option<InboundTls<'_>>,
) -> Listener {
    let mut filter_chains = Vec::new();
    let mut sniff = false;
    for (port, serve) in ports {
        let stat_prefix = format!("inbound_0.0.0.0_{port}");
        let (http, chains) = match tls {
            Some(t) => inbound_chains(&stat_prefix, serve, Some(*port), t.modes.port(*port), t),
            None => {
                let (filters, chains) = chains(&stat_prefix, serve, Some(*port));
                (!filters.is_empty(), chains)
            }
        };
        sniff |= http;
        filter_chains.extend(chains);
    }
    let mut listener_filters = vec![original_dst()];
    let mut default_filter_chain = Some(chain(
        None,
        tcp_proxy("InboundPassthroughCluster", passthrough_cluster),
    ));
    if let Some(t) = tls {
        default_filter_chain = None;
        let passthrough = Serve::Tcp {
            cluster: passthrough_cluster.to_string(),
        };
        let declared: Vec<u32> = ports.iter().map(|(p, _)| *p).collect();
        for (port, mode) in t.modes.ports.iter().filter(|(p, _)| !declared.contains(p)) {
            let stat_prefix = format!("inbound_0.0.0.0_{port}");
            let (_, chains) = inbound_chains(&stat_prefix, &passthrough, Some(*port), *mode, t);
            filter_chains.extend(chains);
        }
        let (_, chains) = inbound_chains(
            "InboundPassthroughCluster",
            &passthrough,
            None,
            t.modes.default,
            t,
        );
        filter_chains.extend(chains);
        if filter_chains.iter().any(|c| {
            c.filter_chain_match
                .as_ref()
                .is_some_and(|m| !m.transport_protocol.is_empty())
        }) {
            listener_filters.push(tls_inspector());
        }
    }
    if sniff {
        listener_filters.push(http_inspector());
    }
    Listener {
        name: VIRTUAL_INBOUND.into(),
        address: Some(socket_address("0.0.0.0", INBOUND_PORT)),
        listener_filters,
        filter_chains,
        default_filter_chain,
        traffic_direction: TrafficDirection::Inbound as i32,
        ..Default::default()
    }
}

/// One inbound port's chains under mesh TLS, by Istio's filter-chain
/// matrix (`filterchain_options.go`): STRICT matches only TLS and
/// terminates it; PERMISSIVE terminates TLS that carries a sidecar's ALPN
/// and also takes plaintext (and, on TCP ports, an app's own TLS as
/// opaque TCP); DISABLE is plaintext as without a CA. Returns whether the
/// chains need http_inspector.
fn inbound_chains(
    stat_prefix: &str,
    serve: &Serve,
    port: Option<u32>,
    mode: Mode,
    t: InboundTls<'_>,
) -> (bool, Vec<FilterChain>) {
    let m = |transport: &str, alpn: &[&str]| {
        (port.is_some() || !transport.is_empty() || !alpn.is_empty()).then(|| FilterChainMatch {
            destination_port: port.map(|value| UInt32Value { value }),
            transport_protocol: transport.to_string(),
            application_protocols: alpn.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
    };
    let secure = |fc: FilterChain, http: bool| FilterChain {
        transport_socket: Some(tls::socket(&tls::downstream(t.mesh, http))),
        ..fc
    };
    let http_filter = |serve: &Serve| match serve {
        Serve::Http { route } | Serve::Auto { route, .. } => hcm_rds(stat_prefix, route, true),
        Serve::HttpInline(rc) | Serve::AutoInline(rc, _) => hcm_inline(stat_prefix, rc, true),
        Serve::Tcp { cluster } => tcp_proxy(stat_prefix, cluster),
    };
    let tcp = |cluster: &str| tcp_proxy(stat_prefix, cluster);
    const TLS: &str = "tls";
    const RAW: &str = "raw_buffer";
    match (serve, mode) {
        (Serve::Http { .. } | Serve::HttpInline(_), Mode::Strict) => (
            false,
            vec![secure(chain(m(TLS, &[]), http_filter(serve)), true)],
        ),
        (Serve::Http { .. } | Serve::HttpInline(_), Mode::Permissive) => (
            false,
            vec![
                secure(
                    chain(m(TLS, &tls::ALL_MTLS_ALPNS), http_filter(serve)),
                    true,
                ),
                chain(m(RAW, &[]), http_filter(serve)),
            ],
        ),
        (Serve::Http { .. } | Serve::HttpInline(_), Mode::Disable) => {
            (false, vec![chain(m("", &[]), http_filter(serve))])
        }
        (Serve::Tcp { cluster }, Mode::Strict) => {
            (false, vec![secure(chain(m(TLS, &[]), tcp(cluster)), false)])
        }
        (Serve::Tcp { cluster }, Mode::Permissive) => (
            false,
            vec![
                secure(chain(m(TLS, &tls::ALL_MTLS_ALPNS), tcp(cluster)), false),
                chain(m(TLS, &[]), tcp(cluster)),
                chain(m(RAW, &[]), tcp(cluster)),
            ],
        ),
        (Serve::Tcp { cluster }, Mode::Disable) => (false, vec![chain(m("", &[]), tcp(cluster))]),
        (Serve::Auto { cluster, .. } | Serve::AutoInline(_, cluster), Mode::Strict) => (
            false,
            vec![
                secure(
                    chain(m(TLS, &tls::MTLS_HTTP_ALPNS), http_filter(serve)),
                    true,
                ),
                secure(chain(m(TLS, &[]), tcp(cluster)), false),
            ],
        ),
        (Serve::Auto { cluster, .. } | Serve::AutoInline(_, cluster), Mode::Permissive) => (
            true,
            vec![
                secure(
                    chain(m(TLS, &tls::MTLS_HTTP_ALPNS), http_filter(serve)),
                    true,
                ),
                chain(m(RAW, &HTTP_ALPN), http_filter(serve)),
                secure(chain(m(TLS, &tls::MTLS_TCP_ALPNS), tcp(cluster)), false),
                chain(m(RAW, &[]), tcp(cluster)),
                chain(m(TLS, &[]), tcp(cluster)),
            ],
        ),
        (Serve::Auto { cluster, .. } | Serve::AutoInline(_, cluster), Mode::Disable) => (
            true,
            vec![
                chain(m("", &HTTP_ALPN), http_filter(serve)),
                chain(m("", &[]), tcp(cluster)),
            ],
        ),
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
        Serve::Http { route } => (
            vec![],
            vec![chain(m(&[]), hcm_rds(stat_prefix, route, false))],
        ),
        Serve::HttpInline(rc) => (
            vec![],
            vec![chain(m(&[]), hcm_inline(stat_prefix, rc, false))],
        ),
        Serve::Tcp { cluster } => (vec![], vec![chain(m(&[]), tcp_proxy(stat_prefix, cluster))]),
        Serve::Auto { route, cluster } => (
            vec![http_inspector()],
            vec![
                chain(m(&HTTP_ALPN), hcm_rds(stat_prefix, route, false)),
                chain(m(&[]), tcp_proxy(stat_prefix, cluster)),
            ],
        ),
        Serve::AutoInline(rc, cluster) => (
            vec![http_inspector()],
            vec![
                chain(m(&HTTP_ALPN), hcm_inline(stat_prefix, rc, false)),
                chain(m(&[]), tcp_proxy(stat_prefix, cluster)),
            ],
        ),
    }
}

/// An outbound listener of tcp/tls route chains ([`super::l4`]): each
/// chain matches `server_names` (tls_inspector reads the SNI) and
/// `prefix_ranges` (its subnets, else `vips`), then a tcp_proxy to its
/// cluster or weighted clusters. Virtual (reached through 15001).
pub fn outbound_l4(
    address: &str,
    port: u32,
    chains: &[super::l4::L4Chain],
    vips: &[String],
) -> Listener {
    let name = format!("{address}_{port}");
    let stat_prefix = format!("outbound_{name}");
    // A chain without subnets takes the VIP's: one equal to an earlier
    // chain's match is left out (Envoy rejects duplicate matches; Istio
    // keeps the first).
    let mut seen = std::collections::BTreeSet::new();
    let filter_chains: Vec<FilterChain> = chains
        .iter()
        .filter(|c| {
            let ranges = if c.prefix_ranges.is_empty() {
                vips
            } else {
                &c.prefix_ranges
            };
            let mut cidrs: Vec<(String, u32)> = ranges
                .iter()
                .map(|r| cidr_range(r))
                .map(|r| (r.address_prefix, r.prefix_len.map_or(0, |l| l.value)))
                .collect();
            cidrs.sort();
            let mut names = c.server_names.clone();
            names.sort();
            seen.insert((cidrs, names))
        })
        .map(|c| {
            let ranges: Vec<CidrRange> = if c.prefix_ranges.is_empty() {
                vips.iter().map(|v| cidr_range(v)).collect()
            } else {
                c.prefix_ranges.iter().map(|r| cidr_range(r)).collect()
            };
            let m = (!ranges.is_empty() || !c.server_names.is_empty()).then(|| FilterChainMatch {
                prefix_ranges: ranges,
                server_names: c.server_names.clone(),
                ..Default::default()
            });
            let filter = match c.clusters.as_slice() {
                [(one, _)] => tcp_proxy(&stat_prefix, one),
                many => weighted_tcp_proxy(&stat_prefix, many),
            };
            chain(m, filter)
        })
        .collect();
    let sni = chains.iter().any(|c| !c.server_names.is_empty());
    Listener {
        name,
        address: Some(socket_address(address, port)),
        bind_to_port: Some(BoolValue { value: false }),
        listener_filters: if sni { vec![tls_inspector()] } else { vec![] },
        filter_chains,
        traffic_direction: TrafficDirection::Outbound as i32,
        ..Default::default()
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

fn tls_inspector() -> ListenerFilter {
    ListenerFilter {
        name: "envoy.filters.listener.tls_inspector".into(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(any(
            &TlsInspector::default(),
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

/// tcp_proxy over weighted clusters (a tcp/tls route's destinations).
fn weighted_tcp_proxy(stat_prefix: &str, clusters: &[(String, u32)]) -> Filter {
    use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::{
        WeightedCluster, weighted_cluster::ClusterWeight,
    };
    let tp = TcpProxy {
        stat_prefix: stat_prefix.into(),
        cluster_specifier: Some(ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: clusters
                .iter()
                .map(|(name, weight)| ClusterWeight {
                    name: name.clone(),
                    weight: *weight,
                    ..Default::default()
                })
                .collect(),
        })),
        ..Default::default()
    };
    Filter {
        name: TCP_PROXY.into(),
        config_type: Some(filter::ConfigType::TypedConfig(any(&tp))),
    }
}

fn hcm_rds(stat_prefix: &str, route: &str, xfcc: bool) -> Filter {
    hcm(
        stat_prefix,
        RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: route.into(),
        }),
        xfcc,
    )
}

fn hcm_inline(stat_prefix: &str, rc: &RouteConfiguration, xfcc: bool) -> Filter {
    hcm(stat_prefix, RouteSpecifier::RouteConfig(rc.clone()), xfcc)
}

/// An HTTP connection manager; `xfcc`: a sidecar's inbound under mesh TLS,
/// which tells the app the verified caller in `x-forwarded-client-cert`
/// (Istio's `APPEND_FORWARD` with subject, URI and DNS).
fn hcm(stat_prefix: &str, route_specifier: RouteSpecifier, xfcc: bool) -> Filter {
    let mut hcm = HttpConnectionManager {
        stat_prefix: stat_prefix.into(),
        codec_type: CodecType::Auto as i32,
        route_specifier: Some(route_specifier),
        // Istio's chain: the fault and CORS filters (routes carry their
        // config) before the router.
        http_filters: vec![
            HttpFilter {
                name: super::route::FAULT_FILTER.into(),
                config_type: Some(http_filter::ConfigType::TypedConfig(any(
                    &envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault::default(),
                ))),
                ..Default::default()
            },
            HttpFilter {
                name: super::cors::CORS_FILTER.into(),
                config_type: Some(http_filter::ConfigType::TypedConfig(any(
                    &envoy_types::pb::envoy::extensions::filters::http::cors::v3::Cors::default(),
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
    set_path_normalization(&mut hcm, PathNormalization::Base);
    if xfcc {
        hcm.forward_client_cert_details = ForwardClientCertDetails::AppendForward as i32;
        hcm.set_current_client_cert_details = Some(SetCurrentClientCertDetails {
            subject: Some(BoolValue { value: true }),
            uri: true,
            dns: true,
            ..Default::default()
        });
    }
    Filter {
        name: HCM.into(),
        config_type: Some(filter::ConfigType::TypedConfig(any(&hcm))),
    }
}

/// meshConfig `pathNormalization` on one connection manager, as Istio maps
/// it: escaped slashes kept unless `DECODE_AND_MERGE_SLASHES` (which
/// unescapes and forwards them); `NONE` turns `normalize_path` off, every
/// other value on; the `MERGE_SLASHES` values add `merge_slashes`.
fn set_path_normalization(hcm: &mut HttpConnectionManager, n: PathNormalization) {
    use PathNormalization as P;
    hcm.normalize_path = Some(BoolValue {
        value: n != P::None,
    });
    hcm.merge_slashes = matches!(n, P::MergeSlashes | P::DecodeAndMergeSlashes);
    hcm.path_with_escaped_slashes_action = if n == P::DecodeAndMergeSlashes {
        PathWithEscapedSlashesAction::UnescapeAndForward
    } else {
        PathWithEscapedSlashesAction::KeepUnchanged
    } as i32;
}

/// Apply a non-default `pathNormalization` to every connection manager of
/// `listener` (they are built with `BASE`).
pub fn apply_path_normalization(listener: &mut Listener, n: PathNormalization) {
    use prost::{Message, Name};
    if matches!(n, PathNormalization::Base | PathNormalization::Default) {
        return;
    }
    let chains = listener
        .filter_chains
        .iter_mut()
        .chain(listener.default_filter_chain.as_mut());
    for chain in chains {
        for f in &mut chain.filters {
            let Some(filter::ConfigType::TypedConfig(any)) = &mut f.config_type else {
                continue;
            };
            if !any.type_url.ends_with(&HttpConnectionManager::full_name()) {
                continue;
            }
            if let Ok(mut hcm) = HttpConnectionManager::decode(any.value.as_slice()) {
                set_path_normalization(&mut hcm, n);
                any.value = hcm.encode_to_vec();
            }
        }
    }
}

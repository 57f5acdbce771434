//! Listener (LDS) as the proxy runs it: address, listener filters, filter chains
//! with their match, and the one terminal network filter of each chain (HCM or
//! tcp_proxy).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::watch;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::listener::v3 as xds_listener;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp;

use super::fault::FaultConfig;
use super::route::{RouteConfig, WeightedClusters};
use super::transport::{End, TransportSocket};
use super::{check_subset, decode_any, duration, socket_addr, subset};
use crate::error::ConfigError;
use crate::stats::{HttpStats, ListenerStats, Stats, TcpStats};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault as FaultProto;

pub type XdsListener = xds_listener::Listener;

/// Envoy's default listener_filters_timeout.
pub const DEFAULT_LISTENER_FILTERS_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug)]
pub struct ListenerConfig {
    pub name: String,
    pub address: SocketAddr,
    pub bind_to_port: bool,
    /// The original_dst listener filter: restore the pre-REDIRECT destination
    /// (for filter chain matching and ORIGINAL_DST clusters).
    pub original_dst: bool,
    /// `use_original_dst`: hand restored connections to the listener of their
    /// original destination (needs the original_dst filter to restore it).
    pub use_original_dst: bool,
    /// The http_inspector and tls_inspector listener filters, if present,
    /// with when each is skipped (`filter_disabled`).
    pub http_inspector: Option<FilterDisabled>,
    pub tls_inspector: Option<FilterDisabled>,
    /// How long listener filters may wait for bytes (None = forever; Envoy's
    /// default 15 s), and whether to carry on without them after that.
    pub listener_filters_timeout: Option<Duration>,
    pub continue_on_listener_filters_timeout: bool,
    /// Shared with the listener's next version when unchanged (an in-place
    /// filter chain update), so their connections carry on.
    pub filter_chains: Vec<Arc<FilterChain>>,
    pub default_filter_chain: Option<Arc<FilterChain>>,
    /// Listener `stat_prefix`, else the address as `IP_PORT`.
    pub stat_prefix: String,
    /// `traffic_direction` (Istio's metrics take the reporter from it).
    pub direction: crate::downstream::TrafficDirection,
    stats: OnceLock<ListenerStats>,
}

impl ListenerConfig {
    /// Every chain, the default one last.
    pub fn chains(&self) -> impl Iterator<Item = &Arc<FilterChain>> {
        self.filter_chains
            .iter()
            .chain(self.default_filter_chain.iter())
    }

    /// Envoy's in-place filter chain update: this listener replaces `old`
    /// with only its filter chains changed (`same_listener`), so each chain
    /// identical to one of `old`'s becomes that chain (its connections are
    /// not drained). Call before the config is shared.
    pub fn adopt_unchanged_chains(&mut self, old: &ListenerConfig) {
        let find = |fc: &Arc<FilterChain>| {
            old.chains()
                .find(|o| o.wire == fc.wire)
                .cloned()
                .unwrap_or_else(|| fc.clone())
        };
        self.filter_chains = self.filter_chains.iter().map(find).collect();
        self.default_filter_chain = self.default_filter_chain.as_ref().map(find);
    }

    /// `listener.<stat_prefix>.*`, registered on first use.
    pub fn stats(&self, registry: &Stats) -> &ListenerStats {
        self.stats
            .get_or_init(|| ListenerStats::new(registry, &self.stat_prefix))
    }
}

#[derive(Debug)]
pub struct FilterChain {
    pub name: String,
    pub matcher: FilterChainMatch,
    pub filter: NetworkFilter,
    /// `envoy.filters.network.rbac` and `envoy.filters.network.ext_authz`
    /// filters before the terminal one, in order.
    pub network_auth: Vec<NetworkAuth>,
    /// Set to true when the chain leaves the listener (removed, changed, or
    /// the whole listener replaced): its HTTP connections then drain (finish
    /// in-flight requests, close). Unchanged chains keep theirs.
    pub drain: watch::Sender<bool>,
    /// The chain as received, to recognise it in the listener's next version.
    pub(crate) wire: Vec<u8>,
    /// How the chain reads its connections.
    pub transport: TransportSocket,
    /// `transport_socket_connect_timeout`: how long a TLS handshake may take
    /// (None: no limit, Envoy's default).
    pub transport_connect_timeout: Option<Duration>,
}

/// `filter_chain_match`, the fields of the subset. Empty = matches anything.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FilterChainMatch {
    pub destination_port: Option<u16>,
    pub prefix_ranges: Vec<Cidr>,
    pub transport_protocol: Option<String>,
    pub application_protocols: Vec<String>,
    /// SNI names (lower case), exact or `*.suffix`.
    pub server_names: Vec<String>,
}

/// An IP prefix (`CidrRange`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = if self.len == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.len as u32)
                };
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = if self.len == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.len as u32)
                };
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// The terminal network filter of a chain.
#[derive(Debug, Clone)]
pub enum NetworkFilter {
    HttpConnectionManager(Arc<HttpConnectionManager>),
    TcpProxy(Arc<TcpProxy>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Auto,
    Http1,
    Http2,
}

/// Where an HCM's routes come from.
#[derive(Debug, Clone)]
pub enum RouteSource {
    Rds(String),
    Inline(Arc<RouteConfig>),
}

#[derive(Debug)]
pub struct HttpConnectionManager {
    pub stat_prefix: String,
    pub codec: Codec,
    pub routes: RouteSource,
    /// The HTTP filters before the router, in order.
    pub http_filters: Vec<HttpFilter>,
    pub websocket: bool,
    pub use_remote_address: bool,
    /// `internal_address_config.cidr_ranges`: a request from one of these
    /// (its one x-forwarded-for address, or the peer with
    /// `use_remote_address`) is internal and keeps its `x-envoy-*` control
    /// headers. Empty: nothing is internal (Envoy's default).
    pub internal_cidrs: Vec<Cidr>,
    pub normalize_path: bool,
    pub merge_slashes: bool,
    /// `path_with_escaped_slashes_action`.
    pub escaped_slashes: crate::http::path_normalization::EscapedSlashes,
    /// `forward_client_cert_details` and `set_current_client_cert_details`.
    pub forward_client_cert: ForwardClientCert,
    pub client_cert_details: ClientCertDetails,
    stats: OnceLock<HttpStats>,
}

/// What happens to `x-forwarded-client-cert` (Envoy's names; SANITIZE is
/// the default: a client's own header never reaches the app).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ForwardClientCert {
    #[default]
    Sanitize,
    /// Over mTLS, forward the header as it came (else sanitize).
    ForwardOnly,
    /// Over mTLS, append this hop's client certificate (else sanitize).
    AppendForward,
    /// Over mTLS, replace with this hop's client certificate (else sanitize).
    SanitizeSet,
    /// Forward as it came, TLS or not.
    AlwaysForwardOnly,
}

/// Which fields of the client certificate go into the header (`By` and
/// `Hash` always do).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientCertDetails {
    pub subject: bool,
    pub uri: bool,
    pub dns: bool,
}

impl HttpConnectionManager {
    /// `http.<stat_prefix>.*`, registered on first use.
    pub fn stats(&self, registry: &Stats) -> &HttpStats {
        self.stats
            .get_or_init(|| HttpStats::new(registry, &self.stat_prefix))
    }
}

/// An HTTP filter of the chain (the router, always last, is implicit).
#[derive(Debug)]
pub enum HttpFilter {
    /// `envoy.filters.http.fault` under its configured name, with its own
    /// config (a route's per-filter config for that name replaces it).
    Fault {
        name: String,
        config: Arc<FaultConfig>,
    },
    /// `envoy.filters.http.cors` under its configured name: it acts on
    /// routes whose per-filter config for that name is a CorsPolicy.
    Cors { name: String },
    /// `envoy.filters.http.rbac` under its configured name (a route's
    /// RBACPerRoute for that name replaces its rules).
    Rbac {
        name: String,
        filter: Arc<crate::http::rbac::RbacFilter>,
    },
    /// `envoy.filters.http.jwt_authn`.
    JwtAuthn {
        name: String,
        filter: Arc<crate::http::jwt_authn::JwtFilter>,
    },
    /// `envoy.filters.http.ext_authz` (gRPC service).
    ExtAuthz {
        name: String,
        filter: Arc<crate::http::ext_authz::ExtAuthzFilter>,
    },
}

/// A network filter before the terminal one.
#[derive(Debug, Clone)]
pub enum NetworkAuth {
    Rbac(Arc<crate::filters::network::rbac::NetworkRbacFilter>),
    ExtAuthz(Arc<crate::http::ext_authz::ExtAuthzFilter>),
}

#[derive(Debug)]
pub struct TcpProxy {
    pub stat_prefix: String,
    pub clusters: WeightedClusters,
    stats: OnceLock<TcpStats>,
}

impl TcpProxy {
    /// `tcp.<stat_prefix>.*`, registered on first use.
    pub fn stats(&self, registry: &Stats) -> &TcpStats {
        self.stats
            .get_or_init(|| TcpStats::new(registry, &self.stat_prefix))
    }
}

impl ListenerConfig {
    /// Inline route configs validate their clusters (Envoy's default for
    /// statically defined route tables).
    pub fn check_inline_route_clusters(
        &self,
        known: &dyn Fn(&str) -> bool,
    ) -> Result<(), ConfigError> {
        let chains = self
            .filter_chains
            .iter()
            .enumerate()
            .map(|(i, fc)| (format!("filter_chains[{i}]"), fc))
            .chain(
                self.default_filter_chain
                    .iter()
                    .map(|fc| ("default_filter_chain".to_string(), fc)),
            );
        for (path, fc) in chains {
            if let NetworkFilter::HttpConnectionManager(h) = &fc.filter
                && let RouteSource::Inline(rc) = &h.routes
            {
                rc.check_clusters(true, known).map_err(|e| {
                    e.under(&format!("{path}.filters[0].typed_config.route_config"))
                })?;
            }
        }
        Ok(())
    }
}

/// `ListenerFilterChainMatchPredicate`: when a listener filter is skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum FilterDisabled {
    /// Not set: the filter always runs.
    #[default]
    Never,
    Any,
    /// Destination port in [start, end).
    Ports(u32, u32),
    Or(Vec<FilterDisabled>),
    And(Vec<FilterDisabled>),
    Not(Box<FilterDisabled>),
}

impl FilterDisabled {
    /// Whether the filter is skipped for a connection to this port.
    pub fn skips(&self, port: u16) -> bool {
        let port = u32::from(port);
        match self {
            FilterDisabled::Never => false,
            FilterDisabled::Any => true,
            FilterDisabled::Ports(start, end) => (*start..*end).contains(&port),
            FilterDisabled::Or(v) => v.iter().any(|p| p.skips(port as u16)),
            FilterDisabled::And(v) => v.iter().all(|p| p.skips(port as u16)),
            FilterDisabled::Not(p) => !p.skips(port as u16),
        }
    }
}

impl TryFrom<&xds_listener::ListenerFilterChainMatchPredicate> for FilterDisabled {
    type Error = ConfigError;

    fn try_from(p: &xds_listener::ListenerFilterChainMatchPredicate) -> Result<Self, ConfigError> {
        use xds_listener::listener_filter_chain_match_predicate::Rule;
        let set = |s: &xds_listener::listener_filter_chain_match_predicate::MatchSet, at: &str| {
            s.rules
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    FilterDisabled::try_from(r).map_err(|e| e.under(&format!("{at}.rules[{i}]")))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(match &p.rule {
            None => return Err(ConfigError::new("rule", "required")),
            Some(Rule::AnyMatch(true)) => FilterDisabled::Any,
            Some(Rule::AnyMatch(false)) => {
                return Err(ConfigError::new("any_match", "must be true"));
            }
            Some(Rule::OrMatch(s)) => FilterDisabled::Or(set(s, "or_match")?),
            Some(Rule::AndMatch(s)) => FilterDisabled::And(set(s, "and_match")?),
            Some(Rule::NotMatch(n)) => FilterDisabled::Not(Box::new(
                FilterDisabled::try_from(n.as_ref()).map_err(|e| e.under("not_match"))?,
            )),
            Some(Rule::DestinationPortRange(r)) => {
                if r.start < 0 || r.end < r.start {
                    return Err(ConfigError::new(
                        "destination_port_range",
                        "start must be >= 0 and end >= start",
                    ));
                }
                FilterDisabled::Ports(r.start as u32, r.end as u32)
            }
        })
    }
}

impl TryFrom<&XdsListener> for ListenerConfig {
    type Error = ConfigError;

    fn try_from(l: &XdsListener) -> Result<Self, ConfigError> {
        check_subset(l, &subset::LISTENER)?;
        super::check_envoy_rules(envoy_rules::listener(l))?;
        let address = socket_addr(l.address.as_ref()).map_err(|e| e.under("address"))?;
        let mut original_dst_filter = false;
        let mut http_inspector = None;
        let mut tls_inspector = None;
        for (i, f) in l.listener_filters.iter().enumerate() {
            let path = format!("listener_filters[{i}]");
            // The name is free-form when typed_config is set; go by type.
            let type_name = match &f.config_type {
                Some(xds_listener::listener_filter::ConfigType::TypedConfig(any)) => {
                    any.type_url.rsplit('/').next().unwrap_or_default()
                }
                _ => "",
            };
            let disabled = || {
                f.filter_disabled
                    .as_ref()
                    .map(FilterDisabled::try_from)
                    .transpose()
                    .map(Option::unwrap_or_default)
                    .map_err(|e| e.under(&format!("{path}.filter_disabled")))
            };
            match (f.name.as_str(), type_name) {
                (_, subset::ORIGINAL_DST_TYPE) | ("envoy.filters.listener.original_dst", "") => {
                    original_dst_filter = true
                }
                (_, subset::HTTP_INSPECTOR_TYPE)
                | ("envoy.filters.listener.http_inspector", "") => {
                    http_inspector = Some(disabled()?)
                }
                (_, subset::TLS_INSPECTOR_TYPE) | ("envoy.filters.listener.tls_inspector", "") => {
                    tls_inspector = Some(disabled()?)
                }
                (other, _) => {
                    return Err(ConfigError::new(
                        path,
                        format!("unsupported listener filter {other}"),
                    ));
                }
            }
        }
        let use_original_dst = l.use_original_dst.as_ref().is_some_and(|b| b.value);
        let filter_chains = l
            .filter_chains
            .iter()
            .enumerate()
            .map(|(i, fc)| {
                FilterChain::try_from(fc)
                    .map(Arc::new)
                    .map_err(|e| e.under(&format!("filter_chains[{i}]")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let default_filter_chain = l
            .default_filter_chain
            .as_ref()
            .map(|fc| {
                FilterChain::try_from(fc)
                    .map(Arc::new)
                    .map_err(|e| e.under("default_filter_chain"))
            })
            .transpose()?;
        if filter_chains.is_empty() && default_filter_chain.is_none() {
            return Err(ConfigError::new(
                "filter_chains",
                "no filter chains and no default_filter_chain",
            ));
        }
        for (i, a) in filter_chains.iter().enumerate() {
            if filter_chains[..i].iter().any(|b| b.matcher == a.matcher) {
                return Err(ConfigError::new(
                    format!("filter_chains[{i}].filter_chain_match"),
                    "multiple filter chains with the same matching rules are defined",
                ));
            }
        }
        Ok(ListenerConfig {
            name: l.name.clone(),
            address,
            bind_to_port: l.bind_to_port.as_ref().is_none_or(|b| b.value),
            original_dst: original_dst_filter,
            use_original_dst: use_original_dst && original_dst_filter,
            http_inspector,
            tls_inspector,
            listener_filters_timeout: match &l.listener_filters_timeout {
                None => Some(DEFAULT_LISTENER_FILTERS_TIMEOUT),
                Some(d) => Some(duration(d, "listener_filters_timeout")?).filter(|d| !d.is_zero()),
            },
            continue_on_listener_filters_timeout: l.continue_on_listener_filters_timeout,
            filter_chains,
            default_filter_chain,
            stat_prefix: if l.stat_prefix.is_empty() {
                format!("{}_{}", address.ip(), address.port())
            } else {
                l.stat_prefix.clone()
            },
            direction: crate::downstream::TrafficDirection::from_xds(l.traffic_direction),
            stats: OnceLock::new(),
        })
    }
}

impl TryFrom<&xds_listener::FilterChain> for FilterChain {
    type Error = ConfigError;

    fn try_from(fc: &xds_listener::FilterChain) -> Result<Self, ConfigError> {
        let matcher = match &fc.filter_chain_match {
            None => FilterChainMatch::default(),
            Some(m) => FilterChainMatch::try_from(m).map_err(|e| e.under("filter_chain_match"))?,
        };
        let Some((filter, leading)) = fc.filters.split_last() else {
            return Err(ConfigError::new(
                "filters",
                "a terminal network filter (http_connection_manager or tcp_proxy) is required",
            ));
        };
        let mut network_auth = Vec::with_capacity(leading.len());
        for (i, f) in leading.iter().enumerate() {
            let path = format!("filters[{i}].typed_config");
            let Some(xds_listener::filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                return Err(ConfigError::new(path, "required"));
            };
            let type_name = any.type_url.rsplit('/').next().unwrap_or_default();
            if type_name == super::ext_authz::NETWORK_FILTER_TYPE {
                use envoy_types::pb::envoy::extensions::filters::network::ext_authz::v3::ExtAuthz;
                let proto: ExtAuthz = decode_any(any, &path)?;
                let config =
                    super::ext_authz::ExtAuthz::try_from(&proto).map_err(|e| e.under(&path))?;
                if config.stat_prefix.is_empty() {
                    return Err(ConfigError::new(format!("{path}.stat_prefix"), "required"));
                }
                network_auth.push(NetworkAuth::ExtAuthz(Arc::new(
                    crate::http::ext_authz::ExtAuthzFilter::new(config),
                )));
                continue;
            }
            if type_name != super::rbac::NETWORK_FILTER_TYPE {
                return Err(ConfigError::new(
                    path,
                    format!(
                        "unsupported type {type_name} before the terminal filter (only envoy.filters.network.rbac and ext_authz)"
                    ),
                ));
            }
            use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac;
            let proto: Rbac = decode_any(any, &path)?;
            let config = super::rbac::NetworkRbac::try_from(&proto).map_err(|e| e.under(&path))?;
            network_auth.push(NetworkAuth::Rbac(Arc::new(
                crate::filters::network::rbac::NetworkRbacFilter::new(config),
            )));
        }
        let last = fc.filters.len() - 1;
        let Some(xds_listener::filter::ConfigType::TypedConfig(any)) = &filter.config_type else {
            return Err(ConfigError::new(
                format!("filters[{last}].typed_config"),
                "required",
            ));
        };
        let path = &format!("filters[{last}].typed_config");
        let type_name = any.type_url.rsplit('/').next().unwrap_or_default();
        let filter = match type_name {
            subset::HCM_TYPE => {
                let h: hcm::HttpConnectionManager = decode_any(any, path)?;
                NetworkFilter::HttpConnectionManager(Arc::new(
                    HttpConnectionManager::try_from(&h).map_err(|e| e.under(path))?,
                ))
            }
            subset::TCP_PROXY_TYPE => {
                let t: tcp::TcpProxy = decode_any(any, path)?;
                NetworkFilter::TcpProxy(Arc::new(
                    TcpProxy::try_from(&t).map_err(|e| e.under(path))?,
                ))
            }
            other => {
                return Err(ConfigError::new(path, format!("unsupported type {other}")));
            }
        };
        Ok(FilterChain {
            name: fc.name.clone(),
            matcher,
            filter,
            network_auth,
            drain: watch::channel(false).0,
            wire: prost::Message::encode_to_vec(fc),
            transport: TransportSocket::parse(fc.transport_socket.as_ref(), End::Downstream)
                .map_err(|e| e.under("transport_socket"))?,
            transport_connect_timeout: fc
                .transport_socket_connect_timeout
                .as_ref()
                .map(|d| super::duration(d, "transport_socket_connect_timeout"))
                .transpose()?
                .filter(|d| !d.is_zero()),
        })
    }
}

impl TryFrom<&xds_listener::FilterChainMatch> for FilterChainMatch {
    type Error = ConfigError;

    fn try_from(m: &xds_listener::FilterChainMatch) -> Result<Self, ConfigError> {
        let destination_port = m
            .destination_port
            .as_ref()
            .map(|p| {
                u16::try_from(p.value)
                    .map_err(|_| ConfigError::new("destination_port", "out of range"))
            })
            .transpose()?;
        let prefix_ranges = m
            .prefix_ranges
            .iter()
            .enumerate()
            .map(|(i, c)| cidr(c).map_err(|e| e.under(&format!("prefix_ranges[{i}]"))))
            .collect::<Result<Vec<_>, _>>()?;
        let transport_protocol = match m.transport_protocol.as_str() {
            "" => None,
            // The values Envoy's own listener filters set (tls_inspector:
            // tls; raw_buffer otherwise).
            "raw_buffer" | "tls" => Some(m.transport_protocol.clone()),
            other => {
                return Err(ConfigError::new(
                    "transport_protocol",
                    format!("unsupported transport protocol {other} (raw_buffer or tls)"),
                ));
            }
        };
        for (i, n) in m.server_names.iter().enumerate() {
            let bad = n.is_empty() || n.trim_start_matches("*.").contains('*');
            if bad {
                return Err(ConfigError::new(
                    format!("server_names[{i}]"),
                    format!("{n:?}: want a name or a *.suffix wildcard"),
                ));
            }
        }
        Ok(FilterChainMatch {
            destination_port,
            prefix_ranges,
            transport_protocol,
            application_protocols: m.application_protocols.clone(),
            server_names: m
                .server_names
                .iter()
                .map(|n| n.to_ascii_lowercase())
                .collect(),
        })
    }
}

fn cidr(c: &core::CidrRange) -> Result<Cidr, ConfigError> {
    let addr: IpAddr = c.address_prefix.parse().map_err(|_| {
        ConfigError::new("address_prefix", format!("not an IP: {}", c.address_prefix))
    })?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = c.prefix_len.as_ref().map_or(max, |l| l.value);
    if len > max {
        return Err(ConfigError::new("prefix_len", "out of range"));
    }
    Ok(Cidr {
        addr,
        len: len as u8,
    })
}

impl TryFrom<&hcm::HttpConnectionManager> for HttpConnectionManager {
    type Error = ConfigError;

    fn try_from(h: &hcm::HttpConnectionManager) -> Result<Self, ConfigError> {
        use hcm::http_connection_manager::{CodecType, RouteSpecifier};
        let codec = match CodecType::try_from(h.codec_type) {
            Ok(CodecType::Auto) => Codec::Auto,
            Ok(CodecType::Http1) => Codec::Http1,
            Ok(CodecType::Http2) => Codec::Http2,
            _ => return Err(ConfigError::new("codec_type", "unsupported codec")),
        };
        let routes = match &h.route_specifier {
            Some(RouteSpecifier::Rds(rds)) => {
                if rds.route_config_name.is_empty() {
                    return Err(ConfigError::new("rds.route_config_name", "required"));
                }
                RouteSource::Rds(rds.route_config_name.clone())
            }
            Some(RouteSpecifier::RouteConfig(rc)) => RouteSource::Inline(Arc::new(
                RouteConfig::try_from(rc).map_err(|e| e.under("route_config"))?,
            )),
            _ => {
                return Err(ConfigError::new(
                    "route_specifier",
                    "rds or route_config required",
                ));
            }
        };
        let http_filters = http_filters(&h.http_filters)?;
        let mut websocket = false;
        for (i, u) in h.upgrade_configs.iter().enumerate() {
            if !u.upgrade_type.eq_ignore_ascii_case("websocket") {
                return Err(ConfigError::new(
                    format!("upgrade_configs[{i}].upgrade_type"),
                    format!("unsupported upgrade {}", u.upgrade_type),
                ));
            }
            websocket = u.enabled.as_ref().is_none_or(|b| b.value);
        }
        Ok(HttpConnectionManager {
            stat_prefix: h.stat_prefix.clone(),
            codec,
            routes,
            http_filters,
            websocket,
            use_remote_address: h.use_remote_address.as_ref().is_some_and(|b| b.value),
            internal_cidrs: h
                .internal_address_config
                .as_ref()
                .map(|c| {
                    c.cidr_ranges
                        .iter()
                        .enumerate()
                        .map(|(i, r)| {
                            cidr(r).map_err(|e| {
                                e.under(&format!("internal_address_config.cidr_ranges[{i}]"))
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
                .transpose()?
                .unwrap_or_default(),
            normalize_path: h.normalize_path.as_ref().is_some_and(|b| b.value),
            merge_slashes: h.merge_slashes,
            escaped_slashes: {
                use crate::http::path_normalization::EscapedSlashes as E;
                use hcm::http_connection_manager::PathWithEscapedSlashesAction as A;
                match A::try_from(h.path_with_escaped_slashes_action) {
                    Ok(A::ImplementationSpecificDefault | A::KeepUnchanged) => E::KeepUnchanged,
                    Ok(A::RejectRequest) => E::RejectRequest,
                    Ok(A::UnescapeAndRedirect) => E::UnescapeAndRedirect,
                    Ok(A::UnescapeAndForward) => E::UnescapeAndForward,
                    Err(_) => {
                        return Err(ConfigError::new(
                            "path_with_escaped_slashes_action",
                            format!("unknown value {}", h.path_with_escaped_slashes_action),
                        ));
                    }
                }
            },
            forward_client_cert: {
                use hcm::http_connection_manager::ForwardClientCertDetails as F;
                match F::try_from(h.forward_client_cert_details) {
                    Ok(F::Sanitize) => ForwardClientCert::Sanitize,
                    Ok(F::ForwardOnly) => ForwardClientCert::ForwardOnly,
                    Ok(F::AppendForward) => ForwardClientCert::AppendForward,
                    Ok(F::SanitizeSet) => ForwardClientCert::SanitizeSet,
                    Ok(F::AlwaysForwardOnly) => ForwardClientCert::AlwaysForwardOnly,
                    Err(_) => {
                        return Err(ConfigError::new(
                            "forward_client_cert_details",
                            format!("unknown value {}", h.forward_client_cert_details),
                        ));
                    }
                }
            },
            client_cert_details: h
                .set_current_client_cert_details
                .as_ref()
                .map(|d| ClientCertDetails {
                    subject: d.subject.as_ref().is_some_and(|b| b.value),
                    uri: d.uri,
                    dns: d.dns,
                })
                .unwrap_or_default(),
            stats: OnceLock::new(),
        })
    }
}

/// The chain: any fault filters, then the router (Envoy's terminal filter,
/// which must come last).
fn http_filters(list: &[hcm::HttpFilter]) -> Result<Vec<HttpFilter>, ConfigError> {
    let Some((last, rest)) = list.split_last() else {
        return Err(ConfigError::new(
            "http_filters",
            "the router filter is required",
        ));
    };
    let is_router = |f: &hcm::HttpFilter| f.name == "envoy.filters.http.router" || router_type(f);
    if !is_router(last) {
        return Err(ConfigError::new(
            format!("http_filters[{}]", list.len() - 1),
            format!(
                "non-terminal filter named {} is the last filter in a http filter chain",
                last.name
            ),
        ));
    }
    let mut out = Vec::with_capacity(rest.len());
    for (i, f) in rest.iter().enumerate() {
        let at = format!("http_filters[{i}]");
        if is_router(f) {
            return Err(ConfigError::new(
                at,
                "terminal filter named envoy.filters.http.router is not the last filter",
            ));
        }
        let cors_type = matches!(&f.config_type,
            Some(hcm::http_filter::ConfigType::TypedConfig(any))
                if any.type_url.ends_with(super::cors::FILTER_TYPE));
        if cors_type {
            out.push(HttpFilter::Cors {
                name: f.name.clone(),
            });
            continue;
        }
        if let Some(filter) = auth_filter(f, &at)? {
            out.push(filter);
            continue;
        }
        let config = match &f.config_type {
            Some(hcm::http_filter::ConfigType::TypedConfig(any)) => {
                let fault: FaultProto = super::decode_any(any, &format!("{at}.typed_config"))?;
                FaultConfig::try_from(&fault).map_err(|e| e.under(&format!("{at}.typed_config")))?
            }
            _ if f.name == super::fault::NAME => FaultConfig::default(),
            _ => {
                return Err(ConfigError::new(
                    at,
                    format!("unsupported http filter {}", f.name),
                ));
            }
        };
        out.push(HttpFilter::Fault {
            name: f.name.clone(),
            config: Arc::new(config),
        });
    }
    Ok(out)
}

/// The authentication and authorization filters (rbac, jwt_authn,
/// ext_authz), if `f` is one.
fn auth_filter(f: &hcm::HttpFilter, at: &str) -> Result<Option<HttpFilter>, ConfigError> {
    let Some(hcm::http_filter::ConfigType::TypedConfig(any)) = &f.config_type else {
        return Ok(None);
    };
    let path = format!("{at}.typed_config");
    let type_name = any.type_url.rsplit('/').next().unwrap_or_default();
    Ok(Some(match type_name {
        super::rbac::HTTP_FILTER_TYPE => {
            use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac;
            let proto: Rbac = super::decode_any(any, &path)?;
            let config = super::rbac::HttpRbac::try_from(&proto).map_err(|e| e.under(&path))?;
            HttpFilter::Rbac {
                name: f.name.clone(),
                filter: Arc::new(crate::http::rbac::RbacFilter::new(config)),
            }
        }
        super::jwt_authn::FILTER_TYPE => {
            use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::JwtAuthentication;
            let proto: JwtAuthentication = super::decode_any(any, &path)?;
            let config =
                super::jwt_authn::JwtAuthn::try_from(&proto).map_err(|e| e.under(&path))?;
            HttpFilter::JwtAuthn {
                name: f.name.clone(),
                filter: Arc::new(crate::http::jwt_authn::JwtFilter::new(config)),
            }
        }
        super::ext_authz::HTTP_FILTER_TYPE => {
            use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3::ExtAuthz;
            let proto: ExtAuthz = super::decode_any(any, &path)?;
            let config =
                super::ext_authz::ExtAuthz::try_from(&proto).map_err(|e| e.under(&path))?;
            HttpFilter::ExtAuthz {
                name: f.name.clone(),
                filter: Arc::new(crate::http::ext_authz::ExtAuthzFilter::new(config)),
            }
        }
        _ => return Ok(None),
    }))
}

fn router_type(f: &hcm::HttpFilter) -> bool {
    matches!(&f.config_type, Some(hcm::http_filter::ConfigType::TypedConfig(any))
        if any.type_url.ends_with("envoy.extensions.filters.http.router.v3.Router"))
}

impl TryFrom<&tcp::TcpProxy> for TcpProxy {
    type Error = ConfigError;

    fn try_from(t: &tcp::TcpProxy) -> Result<Self, ConfigError> {
        use tcp::tcp_proxy::ClusterSpecifier;
        let clusters = match &t.cluster_specifier {
            Some(ClusterSpecifier::Cluster(c)) if !c.is_empty() => WeightedClusters::single(c),
            Some(ClusterSpecifier::WeightedClusters(w)) => {
                let list = w
                    .clusters
                    .iter()
                    .map(|c| (c.name.clone(), c.weight))
                    .collect::<Vec<_>>();
                WeightedClusters::new(list).map_err(|e| e.under("weighted_clusters"))?
            }
            _ => {
                return Err(ConfigError::new(
                    "cluster",
                    "cluster or weighted_clusters required",
                ));
            }
        };
        Ok(TcpProxy {
            stat_prefix: t.stat_prefix.clone(),
            clusters,
            stats: OnceLock::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(yaml: &str) -> Result<ListenerConfig, ConfigError> {
        let l: XdsListener = xds::json::from_yaml(yaml).expect("parses");
        ListenerConfig::try_from(&l)
    }

    const GOOD: &str = r#"
name: l
address: {socket_address: {address: 0.0.0.0, port_value: 15001}}
use_original_dst: true
listener_filters:
- name: envoy.filters.listener.original_dst
  typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst}
filter_chains:
- filter_chain_match: {destination_port: 80, prefix_ranges: [{address_prefix: 10.0.0.0, prefix_len: 8}]}
  filters:
  - name: envoy.filters.network.tcp_proxy
    typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: s, cluster: c}
default_filter_chain:
  filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: h
      rds: {config_source: {ads: {}}, route_config_name: "80"}
      http_filters: [{name: envoy.filters.http.router, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}]
"#;

    #[test]
    fn converts_a_good_listener() {
        let l = listener(GOOD).unwrap();
        assert!(l.use_original_dst && l.bind_to_port);
        assert_eq!(l.filter_chains[0].matcher.destination_port, Some(80));
        assert!(l.filter_chains[0].matcher.prefix_ranges[0].contains("10.1.2.3".parse().unwrap()));
        assert!(matches!(
            &l.default_filter_chain.unwrap().filter,
            NetworkFilter::HttpConnectionManager(h) if matches!(&h.routes, RouteSource::Rds(n) if n == "80")
        ));
    }

    #[test]
    fn refuses_unsupported_http_filter_with_path() {
        let bad = GOOD.replace(
            "http_filters: [",
            "http_filters: [{name: envoy.filters.http.buffer, typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer}}, ",
        );
        let err = listener(&bad).unwrap_err();
        assert_eq!(
            err.to_string(),
            "default_filter_chain.filters[0].typed_config.http_filters[0].typed_config: unsupported type envoy.extensions.filters.http.buffer.v3.Buffer"
        );
        // The fault filter is supported, before the router only.
        let fault = "{name: envoy.filters.http.fault, typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault}}";
        let ok = GOOD.replace("http_filters: [", &format!("http_filters: [{fault}, "));
        assert!(listener(&ok).is_ok());
        let last = GOOD.replace("}}]\n", &format!("}}}}, {fault}]\n"));
        assert_ne!(last, GOOD);
        let err = listener(&last).unwrap_err();
        assert!(
            err.to_string()
                .contains("is the last filter in a http filter chain"),
            "{err}"
        );
    }

    #[test]
    fn refuses_missing_address_and_tls_match() {
        let err = listener("name: l\nfilter_chains: [{filters: []}]").unwrap_err();
        assert_eq!(err.to_string(), "address: is required");
        let bad = GOOD.replace(
            "destination_port: 80,",
            "destination_port: 80, transport_protocol: quic,",
        );
        assert_eq!(
            listener(&bad).unwrap_err().path,
            "filter_chains[0].filter_chain_match.transport_protocol"
        );
    }
}

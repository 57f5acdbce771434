//! Cluster (CDS or static) as the upstream side runs it: how endpoints are
//! discovered, the load-balancing policy, connect timeout and upstream HTTP
//! protocol.

use std::collections::BTreeMap;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3 as xds_cluster;
use envoy_types::pb::envoy::extensions::upstreams::http::v3 as upstream_http;

use super::circuit_breakers::{CircuitBreakerConfig, ConnectionPoolConfig};
use super::endpoint::LoadAssignment;
use super::outlier::OutlierConfig;
use super::transport::{End, TransportMatch, TransportSocket};
use super::{check_subset, decode_any, duration, subset};
use crate::error::ConfigError;
use crate::upstream::slow_start::SlowStart;

pub type XdsCluster = xds_cluster::Cluster;

/// Envoy's default connect_timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub name: String,
    /// Name in stats: `alt_stat_name`, else the name.
    pub stat_name: String,
    pub discovery: Discovery,
    pub lb_policy: LbPolicy,
    pub connect_timeout: Duration,
    pub protocol: UpstreamProtocol,
    /// Below this percentage of routable hosts the load balancer uses all
    /// hosts (Envoy's panic mode; default 50, 0 disables).
    pub healthy_panic_threshold: u32,
    /// `common_lb_config.locality_weighted_lb_config`: within a priority,
    /// pick a locality by its weight times its health first.
    pub locality_weighted: bool,
    /// STRICT_DNS: how often to re-resolve and which address families to use.
    pub dns_refresh_rate: Duration,
    pub dns_lookup_family: DnsLookupFamily,
    /// The socket to endpoints, unless a `transport_socket_matches` entry
    /// picks another for an endpoint.
    pub transport: TransportSocket,
    pub transport_matches: Vec<TransportMatch>,
    /// `upstream_http_protocol_options`: TLS SNI from each request's host,
    /// and that name checked against the server's DNS SANs.
    pub auto_sni: bool,
    pub auto_san_validation: bool,
    /// `outlier_detection`, when set (absent: no detector, as in Envoy).
    pub outlier: Option<OutlierConfig>,
    pub circuit_breakers: CircuitBreakerConfig,
    pub pool: ConnectionPoolConfig,
    /// `{round_robin,least_request}_lb_config.slow_start_config`.
    pub slow_start: Option<crate::upstream::slow_start::SlowStart>,
}

impl ClusterConfig {
    /// The socket for an endpoint with this `envoy.transport_socket_match`
    /// metadata.
    pub fn transport_for(&self, metadata: &BTreeMap<String, String>) -> TransportSocket {
        super::transport::transport_for(&self.transport_matches, &self.transport, metadata)
            .1
            .clone()
    }
}

/// `dns_lookup_family`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsLookupFamily {
    /// IPv6 if the name has any, else IPv4.
    Auto,
    V4Only,
    V6Only,
    /// IPv4 if the name has any, else IPv6.
    V4Preferred,
    All,
}

impl DnsLookupFamily {
    /// The addresses of one name this family keeps.
    pub fn filter(self, addrs: Vec<std::net::SocketAddr>) -> Vec<std::net::SocketAddr> {
        let has_v4 = addrs.iter().any(|a| a.is_ipv4());
        let has_v6 = addrs.iter().any(|a| a.is_ipv6());
        let keep_v4 = match self {
            DnsLookupFamily::V4Only => true,
            DnsLookupFamily::V6Only => false,
            DnsLookupFamily::Auto => !has_v6,
            DnsLookupFamily::V4Preferred => has_v4,
            DnsLookupFamily::All => return addrs,
        };
        addrs
            .into_iter()
            .filter(|a| a.is_ipv4() == keep_v4)
            .collect()
    }
}

/// Envoy's default dns_refresh_rate.
pub const DEFAULT_DNS_REFRESH_RATE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    Static(LoadAssignment),
    StrictDns(LoadAssignment),
    /// Endpoints come from the EDS resource with this name.
    Eds(String),
    /// Connect to the downstream connection's original destination.
    OriginalDst,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbPolicy {
    RoundRobin,
    LeastRequest,
    Random,
    ClusterProvided,
    /// `RING_HASH` with `ring_hash_lb_config`'s ring size bounds.
    RingHash {
        min_size: u64,
        max_size: u64,
    },
    /// `MAGLEV` with `maglev_lb_config.table_size` (a prime).
    Maglev {
        table_size: u64,
    },
}

/// Envoy's `ring_hash_lb_config` defaults and bound.
pub const RING_HASH_DEFAULT_MIN: u64 = 1024;
pub const RING_HASH_MAX: u64 = 8 * 1024 * 1024;

/// `RING_HASH` with its `ring_hash_lb_config` (XX_HASH only), `MAGLEV` with
/// its `maglev_lb_config`.
fn hash_lb_policy(c: &XdsCluster, maglev: bool) -> Result<LbPolicy, ConfigError> {
    use crate::upstream::hash_lb::{MAGLEV_DEFAULT_TABLE_SIZE, MAGLEV_MAX_TABLE_SIZE, is_prime};
    use xds_cluster::cluster::LbConfig;
    use xds_cluster::cluster::ring_hash_lb_config::HashFunction;
    if maglev {
        let table_size = match &c.lb_config {
            Some(LbConfig::MaglevLbConfig(m)) => m.table_size.as_ref().map(|t| t.value),
            _ => None,
        }
        .unwrap_or(MAGLEV_DEFAULT_TABLE_SIZE);
        if table_size > MAGLEV_MAX_TABLE_SIZE || !is_prime(table_size) {
            return Err(ConfigError::new(
                "maglev_lb_config.table_size",
                format!("must be a prime of at most {MAGLEV_MAX_TABLE_SIZE}, not {table_size}"),
            ));
        }
        return Ok(LbPolicy::Maglev { table_size });
    }
    let (mut min_size, mut max_size) = (RING_HASH_DEFAULT_MIN, RING_HASH_MAX);
    if let Some(LbConfig::RingHashLbConfig(r)) = &c.lb_config {
        if r.hash_function != HashFunction::XxHash as i32 {
            return Err(ConfigError::new(
                "ring_hash_lb_config.hash_function",
                "only XX_HASH is supported",
            ));
        }
        min_size = r.minimum_ring_size.as_ref().map_or(min_size, |v| v.value);
        max_size = r.maximum_ring_size.as_ref().map_or(max_size, |v| v.value);
    }
    if max_size > RING_HASH_MAX {
        return Err(ConfigError::new(
            "ring_hash_lb_config.maximum_ring_size",
            format!("must be at most {RING_HASH_MAX}"),
        ));
    }
    if min_size > max_size {
        return Err(ConfigError::new(
            "ring_hash_lb_config.minimum_ring_size",
            format!("{min_size} is above maximum_ring_size {max_size}"),
        ));
    }
    Ok(LbPolicy::RingHash { min_size, max_size })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    Http1,
    /// h2c with prior knowledge.
    Http2,
    /// Whatever the downstream request used.
    UseDownstream,
}

impl TryFrom<&XdsCluster> for ClusterConfig {
    type Error = ConfigError;

    fn try_from(c: &XdsCluster) -> Result<Self, ConfigError> {
        use xds_cluster::cluster::{ClusterDiscoveryType, DiscoveryType, LbPolicy as XLb};
        check_subset(c, &subset::CLUSTER)?;
        super::check_envoy_rules(envoy_rules::cluster(c))?;
        if c.name.is_empty() {
            return Err(ConfigError::new("name", "required"));
        }
        let kind = match &c.cluster_discovery_type {
            None => DiscoveryType::Static,
            Some(ClusterDiscoveryType::Type(t)) => DiscoveryType::try_from(*t)
                .map_err(|_| ConfigError::new("type", "unknown discovery type"))?,
            Some(ClusterDiscoveryType::ClusterType(_)) => {
                return Err(ConfigError::new(
                    "cluster_type",
                    "custom cluster types are unsupported",
                ));
            }
        };
        let assignment = || -> Result<LoadAssignment, ConfigError> {
            match &c.load_assignment {
                Some(la) => LoadAssignment::try_from(la).map_err(|e| e.under("load_assignment")),
                None => Ok(LoadAssignment {
                    cluster_name: c.name.clone(),
                    endpoints: Vec::new(),
                    overprovisioning_factor: super::endpoint::DEFAULT_OVERPROVISIONING_FACTOR,
                }),
            }
        };
        let discovery = match kind {
            DiscoveryType::Static => {
                let la = assignment()?;
                if let Some(i) = la
                    .endpoints
                    .iter()
                    .position(|e| matches!(e.address, super::endpoint::EndpointAddress::Dns(..)))
                {
                    return Err(ConfigError::new(
                        format!("load_assignment.endpoints[..].lb_endpoints[{i}].endpoint.address"),
                        "STATIC clusters need IP addresses",
                    ));
                }
                Discovery::Static(la)
            }
            DiscoveryType::StrictDns => Discovery::StrictDns(assignment()?),
            DiscoveryType::Eds => {
                if c.load_assignment.is_some() {
                    return Err(ConfigError::new(
                        "load_assignment",
                        "not allowed on EDS clusters",
                    ));
                }
                let service = c
                    .eds_cluster_config
                    .as_ref()
                    .map(|e| e.service_name.clone())
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| c.name.clone());
                Discovery::Eds(service)
            }
            DiscoveryType::OriginalDst => {
                if c.load_assignment.is_some() {
                    return Err(ConfigError::new(
                        "load_assignment",
                        "not allowed on ORIGINAL_DST clusters",
                    ));
                }
                Discovery::OriginalDst
            }
            other => {
                return Err(ConfigError::new(
                    "type",
                    format!("unsupported discovery type {}", other.as_str_name()),
                ));
            }
        };
        let lb_policy = match XLb::try_from(c.lb_policy) {
            Ok(XLb::RoundRobin) => LbPolicy::RoundRobin,
            Ok(XLb::LeastRequest) => LbPolicy::LeastRequest,
            Ok(XLb::Random) => LbPolicy::Random,
            Ok(XLb::ClusterProvided) => LbPolicy::ClusterProvided,
            Ok(XLb::RingHash) => hash_lb_policy(c, false)?,
            Ok(XLb::Maglev) => hash_lb_policy(c, true)?,
            Ok(other) => {
                return Err(ConfigError::new(
                    "lb_policy",
                    format!("unsupported lb_policy {}", other.as_str_name()),
                ));
            }
            Err(_) => return Err(ConfigError::new("lb_policy", "unknown lb_policy")),
        };
        match (&discovery, lb_policy) {
            (Discovery::OriginalDst, LbPolicy::ClusterProvided) => {}
            (Discovery::OriginalDst, _) | (_, LbPolicy::ClusterProvided) => {
                return Err(ConfigError::new(
                    "lb_policy",
                    "CLUSTER_PROVIDED goes with ORIGINAL_DST and only with it",
                ));
            }
            _ => {}
        }
        let connect_timeout = c
            .connect_timeout
            .as_ref()
            .map(|d| duration(d, "connect_timeout"))
            .transpose()?
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let mut protocol = UpstreamProtocol::Http1;
        let (mut auto_sni, mut auto_san_validation) = (false, false);
        let mut pool = ConnectionPoolConfig::default();
        for (key, any) in &c.typed_extension_protocol_options {
            let path = format!("typed_extension_protocol_options[\"{key}\"]");
            let opts: upstream_http::HttpProtocolOptions = decode_any(any, &path)?;
            protocol = upstream_protocol(&opts).map_err(|e| e.under(&path))?;
            if let Some(u) = &opts.upstream_http_protocol_options {
                (auto_sni, auto_san_validation) = (u.auto_sni, u.auto_san_validation);
            }
            pool_options(&opts, &mut pool).map_err(|e| e.under(&path))?;
        }
        if let Some(o) = &c.upstream_connection_options {
            pool.apply_connection_options(o);
        }
        let outlier = c
            .outlier_detection
            .as_ref()
            .map(|o| OutlierConfig::try_from(o).map_err(|e| e.under("outlier_detection")))
            .transpose()?;
        let circuit_breakers = c
            .circuit_breakers
            .as_ref()
            .map(|cb| CircuitBreakerConfig::try_from(cb).map_err(|e| e.under("circuit_breakers")))
            .transpose()?
            .unwrap_or_default();
        let healthy_panic_threshold = c
            .common_lb_config
            .as_ref()
            .and_then(|l| l.healthy_panic_threshold.as_ref())
            .map_or(50.0, |p| p.value);
        if !(0.0..=100.0).contains(&healthy_panic_threshold) {
            return Err(ConfigError::new(
                "common_lb_config.healthy_panic_threshold",
                "must be between 0 and 100",
            ));
        }
        // Deprecated in favour of the typed DNS cluster, still what Istio sets.
        #[allow(deprecated)]
        let dns_refresh_rate = match &c.dns_refresh_rate {
            Some(d) => duration(d, "dns_refresh_rate")?.max(Duration::from_millis(1)),
            None => DEFAULT_DNS_REFRESH_RATE,
        };
        use xds_cluster::cluster::DnsLookupFamily as F;
        let dns_lookup_family = match F::try_from(c.dns_lookup_family) {
            Ok(F::Auto) => DnsLookupFamily::Auto,
            Ok(F::V4Only) => DnsLookupFamily::V4Only,
            Ok(F::V6Only) => DnsLookupFamily::V6Only,
            Ok(F::V4Preferred) => DnsLookupFamily::V4Preferred,
            Ok(F::All) => DnsLookupFamily::All,
            Err(_) => return Err(ConfigError::new("dns_lookup_family", "unknown family")),
        };
        use xds_cluster::cluster::LbConfig;
        let slow_start = match &c.lb_config {
            Some(LbConfig::RoundRobinLbConfig(rr)) => rr.slow_start_config.as_ref().map(|s| {
                SlowStart::parse(s).map_err(|e| e.under("round_robin_lb_config.slow_start_config"))
            }),
            Some(LbConfig::LeastRequestLbConfig(lr)) => lr.slow_start_config.as_ref().map(|s| {
                SlowStart::parse(s)
                    .map_err(|e| e.under("least_request_lb_config.slow_start_config"))
            }),
            _ => None,
        }
        .transpose()?;
        Ok(ClusterConfig {
            name: c.name.clone(),
            stat_name: if c.alt_stat_name.is_empty() {
                c.name.clone()
            } else {
                c.alt_stat_name.clone()
            },
            discovery,
            lb_policy,
            connect_timeout,
            protocol,
            healthy_panic_threshold: healthy_panic_threshold.round() as u32,
            locality_weighted: matches!(
                c.common_lb_config
                    .as_ref()
                    .and_then(|l| l.locality_config_specifier.as_ref()),
                Some(xds_cluster::cluster::common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(_))
            ),
            dns_refresh_rate,
            dns_lookup_family,
            transport: TransportSocket::parse(c.transport_socket.as_ref(), End::Upstream)
                .map_err(|e| e.under("transport_socket"))?,
            transport_matches: c
                .transport_socket_matches
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    TransportMatch::try_from(m)
                        .map_err(|e| e.under(&format!("transport_socket_matches[{i}]")))
                })
                .collect::<Result<_, _>>()?,
            auto_sni,
            auto_san_validation,
            outlier,
            circuit_breakers,
            pool,
            slow_start,
        })
    }
}

/// The connection-pool parts of an HttpProtocolOptions.
fn pool_options(
    opts: &upstream_http::HttpProtocolOptions,
    pool: &mut ConnectionPoolConfig,
) -> Result<(), ConfigError> {
    use upstream_http::http_protocol_options::UpstreamProtocolOptions as P;
    if let Some(common) = &opts.common_http_protocol_options {
        pool.apply_common(common)?;
    }
    let h2 = match &opts.upstream_protocol_options {
        Some(P::ExplicitHttpConfig(e)) => match &e.protocol_config {
            Some(upstream_http::http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(o)) => Some((o, "explicit_http_config")),
            _ => None,
        },
        Some(P::UseDownstreamProtocolConfig(d)) => d
            .http2_protocol_options
            .as_ref()
            .map(|o| (o, "use_downstream_protocol_config")),
        _ => None,
    };
    if let Some((o, at)) = h2 {
        pool.apply_http2(o).map_err(|e| e.under(at))?;
    }
    Ok(())
}

fn upstream_protocol(
    opts: &upstream_http::HttpProtocolOptions,
) -> Result<UpstreamProtocol, ConfigError> {
    use upstream_http::http_protocol_options::UpstreamProtocolOptions as P;
    use upstream_http::http_protocol_options::explicit_http_config::ProtocolConfig;
    Ok(match &opts.upstream_protocol_options {
        None => UpstreamProtocol::Http1,
        Some(P::ExplicitHttpConfig(e)) => match &e.protocol_config {
            Some(ProtocolConfig::Http2ProtocolOptions(_)) => UpstreamProtocol::Http2,
            Some(ProtocolConfig::HttpProtocolOptions(_)) | None => UpstreamProtocol::Http1,
            Some(_) => {
                return Err(ConfigError::new(
                    "explicit_http_config",
                    "HTTP/3 is unsupported",
                ));
            }
        },
        Some(P::UseDownstreamProtocolConfig(_)) => UpstreamProtocol::UseDownstream,
        Some(_) => {
            return Err(ConfigError::new(
                "upstream_protocol_options",
                "only explicit_http_config or use_downstream_protocol_config",
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(yaml: &str) -> Result<ClusterConfig, ConfigError> {
        let c: XdsCluster = xds::json::from_yaml(yaml).expect("parses");
        ClusterConfig::try_from(&c)
    }

    #[test]
    fn converts_eds_h2_cluster() {
        let c = cluster(
            r#"
name: outbound|9080||reviews.default.svc.cluster.local
type: EDS
eds_cluster_config: {eds_config: {ads: {}, resource_api_version: V3}, service_name: svc}
connect_timeout: 2s
lb_policy: LEAST_REQUEST
typed_extension_protocol_options:
  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
    "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
    explicit_http_config: {http2_protocol_options: {}}
"#,
        )
        .unwrap();
        assert_eq!(c.discovery, Discovery::Eds("svc".into()));
        assert_eq!(c.lb_policy, LbPolicy::LeastRequest);
        assert_eq!(c.connect_timeout, Duration::from_secs(2));
        assert_eq!(c.protocol, UpstreamProtocol::Http2);
    }

    #[test]
    fn refuses_unsupported_type_and_policy() {
        let err = cluster("name: c\ntype: LOGICAL_DNS").unwrap_err();
        assert_eq!(err.path, "type");
        let err = cluster("name: c\nlb_policy: LOAD_BALANCING_POLICY_CONFIG").unwrap_err();
        assert_eq!(
            err.to_string(),
            "lb_policy: unsupported lb_policy LOAD_BALANCING_POLICY_CONFIG"
        );
        let err = cluster("name: c\noutlier_detection: {monitors: [{name: x}]}").unwrap_err();
        assert_eq!(
            err.to_string(),
            "outlier_detection.monitors: unsupported field"
        );
        let err = cluster("name: c\ncircuit_breakers: {per_host_thresholds: [{}]}").unwrap_err();
        assert_eq!(
            err.to_string(),
            "circuit_breakers.per_host_thresholds: unsupported field"
        );
    }

    #[test]
    fn converts_and_checks_hash_policies() {
        let c =
            cluster("name: c\nlb_policy: RING_HASH\nring_hash_lb_config: {minimum_ring_size: 512}")
                .unwrap();
        assert_eq!(
            c.lb_policy,
            LbPolicy::RingHash {
                min_size: 512,
                max_size: RING_HASH_MAX
            }
        );
        let c = cluster("name: c\nlb_policy: RING_HASH").unwrap();
        assert_eq!(
            c.lb_policy,
            LbPolicy::RingHash {
                min_size: 1024,
                max_size: RING_HASH_MAX
            }
        );
        let c = cluster("name: c\nlb_policy: MAGLEV").unwrap();
        assert_eq!(c.lb_policy, LbPolicy::Maglev { table_size: 65537 });
        let c = cluster("name: c\nlb_policy: MAGLEV\nmaglev_lb_config: {table_size: 251}").unwrap();
        assert_eq!(c.lb_policy, LbPolicy::Maglev { table_size: 251 });
        for (yaml, msg) in [
            (
                "lb_policy: MAGLEV\nmaglev_lb_config: {table_size: 65536}",
                "maglev_lb_config.table_size: must be a prime of at most 5000011, not 65536",
            ),
            (
                "lb_policy: RING_HASH\nring_hash_lb_config: {hash_function: MURMUR_HASH_2}",
                "ring_hash_lb_config.hash_function: only XX_HASH is supported",
            ),
            (
                "lb_policy: RING_HASH\nring_hash_lb_config: {minimum_ring_size: 4096, maximum_ring_size: 2048}",
                "ring_hash_lb_config.minimum_ring_size: 4096 is above maximum_ring_size 2048",
            ),
            (
                "lb_policy: RING_HASH\ncommon_lb_config: {consistent_hashing_lb_config: {use_hostname_for_hashing: true}}",
                "common_lb_config.consistent_hashing_lb_config: unsupported field",
            ),
        ] {
            let err = cluster(&format!("name: c\n{yaml}")).unwrap_err();
            assert_eq!(err.to_string(), msg, "{yaml}");
        }
    }
}

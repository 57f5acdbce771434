//! `Cluster.circuit_breakers` and the connection-pool options Istio emits
//! for a DestinationRule's `connectionPool`: per-connection request limits,
//! idle and age limits, h2 stream limits, TCP keepalive.

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3 as xds_cluster;
use envoy_types::pb::envoy::config::core::v3 as core;

use super::duration;
use crate::error::ConfigError;

/// The default-priority thresholds (Envoy's defaults when unset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircuitBreakerConfig {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    pub max_retries: u32,
    /// Publish `remaining_*` gauges.
    pub track_remaining: bool,
    pub retry_budget: Option<RetryBudget>,
}

/// Retries allowed as a share of the requests in flight, with a floor.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryBudget {
    /// 0..=100.
    pub budget_percent: f64,
    pub min_retry_concurrency: u32,
}

/// Validated to lie in 0..=100, so never NaN.
impl Eq for RetryBudget {}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        CircuitBreakerConfig {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
            track_remaining: false,
            retry_budget: None,
        }
    }
}

impl TryFrom<&xds_cluster::CircuitBreakers> for CircuitBreakerConfig {
    type Error = ConfigError;

    /// The DEFAULT thresholds. HIGH ones are checked and accepted, but no
    /// request runs at high priority (route `priority` is outside the
    /// subset), so they never apply: as in Envoy for such routes.
    fn try_from(cb: &xds_cluster::CircuitBreakers) -> Result<Self, ConfigError> {
        let mut out = CircuitBreakerConfig::default();
        let mut seen = [false; 2];
        for (i, t) in cb.thresholds.iter().enumerate() {
            let path = format!("thresholds[{i}]");
            let prio = usize::try_from(t.priority)
                .ok()
                .filter(|p| *p < 2)
                .ok_or_else(|| ConfigError::new(format!("{path}.priority"), "unknown priority"))?;
            if std::mem::replace(&mut seen[prio], true) {
                return Err(ConfigError::new(
                    format!("{path}.priority"),
                    "duplicate thresholds for this priority",
                ));
            }
            let n = |v: &Option<envoy_types::pb::google::protobuf::UInt32Value>, d: u32| {
                v.as_ref().map_or(d, |v| v.value)
            };
            let d = CircuitBreakerConfig::default();
            let retry_budget = t.retry_budget.as_ref().map(|b| RetryBudget {
                budget_percent: b.budget_percent.as_ref().map_or(20.0, |p| p.value),
                min_retry_concurrency: n(&b.min_retry_concurrency, 3),
            });
            if let Some(b) = &retry_budget
                && !(0.0..=100.0).contains(&b.budget_percent)
            {
                return Err(ConfigError::new(
                    format!("{path}.retry_budget.budget_percent"),
                    "must be between 0 and 100",
                ));
            }
            let parsed = CircuitBreakerConfig {
                max_connections: n(&t.max_connections, d.max_connections),
                max_pending_requests: n(&t.max_pending_requests, d.max_pending_requests),
                max_requests: n(&t.max_requests, d.max_requests),
                max_retries: n(&t.max_retries, d.max_retries),
                track_remaining: t.track_remaining,
                retry_budget,
            };
            if prio == 0 {
                out = parsed;
            }
        }
        Ok(out)
    }
}

/// Envoy's default upstream idle_timeout.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// How pooled upstream connections are used and retired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionPoolConfig {
    /// Close a connection after this many requests (None: no limit).
    pub max_requests_per_connection: Option<u32>,
    /// Close a connection idle this long (None: never; default 1 h).
    pub idle_timeout: Option<Duration>,
    /// Retire a connection this old (None: never).
    pub max_connection_duration: Option<Duration>,
    /// Streams per upstream h2 connection before another is opened.
    pub max_concurrent_streams: u32,
    /// TCP keepalive on upstream sockets (None: the OS default, off).
    pub tcp_keepalive: Option<TcpKeepalive>,
}

impl Default for ConnectionPoolConfig {
    fn default() -> Self {
        ConnectionPoolConfig {
            max_requests_per_connection: None,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            max_connection_duration: None,
            max_concurrent_streams: i32::MAX as u32,
            tcp_keepalive: None,
        }
    }
}

/// SO_KEEPALIVE with these settings; unset ones keep the OS defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpKeepalive {
    pub probes: Option<u32>,
    pub time: Option<Duration>,
    pub interval: Option<Duration>,
}

impl ConnectionPoolConfig {
    /// `common_http_protocol_options` of an HttpProtocolOptions.
    pub fn apply_common(&mut self, o: &core::HttpProtocolOptions) -> Result<(), ConfigError> {
        let path = "common_http_protocol_options";
        if let Some(d) = &o.idle_timeout {
            let d = duration(d, &format!("{path}.idle_timeout"))?;
            self.idle_timeout = (!d.is_zero()).then_some(d);
        }
        if let Some(d) = &o.max_connection_duration {
            let d = duration(d, &format!("{path}.max_connection_duration"))?;
            self.max_connection_duration = (!d.is_zero()).then_some(d);
        }
        if let Some(n) = &o.max_requests_per_connection {
            self.max_requests_per_connection = (n.value > 0).then_some(n.value);
        }
        Ok(())
    }

    /// `http2_protocol_options` for upstream h2.
    pub fn apply_http2(&mut self, o: &core::Http2ProtocolOptions) -> Result<(), ConfigError> {
        if let Some(n) = &o.max_concurrent_streams {
            if !(1..=i32::MAX as u32).contains(&n.value) {
                return Err(ConfigError::new(
                    "http2_protocol_options.max_concurrent_streams",
                    "value must be inside range [1, 2147483647]",
                ));
            }
            self.max_concurrent_streams = n.value;
        }
        Ok(())
    }

    /// `upstream_connection_options` of the cluster.
    pub fn apply_connection_options(&mut self, o: &xds_cluster::UpstreamConnectionOptions) {
        if let Some(k) = &o.tcp_keepalive {
            self.tcp_keepalive = Some(TcpKeepalive {
                probes: k.keepalive_probes.as_ref().map(|v| v.value),
                time: k
                    .keepalive_time
                    .as_ref()
                    .map(|v| Duration::from_secs(v.value.into())),
                interval: k
                    .keepalive_interval
                    .as_ref()
                    .map(|v| Duration::from_secs(v.value.into())),
            });
        }
    }
}

impl TcpKeepalive {
    /// Turn keepalive on for a connected socket.
    pub fn apply(&self, socket: socket2::SockRef<'_>) -> std::io::Result<()> {
        let mut k = socket2::TcpKeepalive::new();
        if let Some(t) = self.time {
            k = k.with_time(t);
        }
        if let Some(i) = self.interval {
            k = k.with_interval(i);
        }
        if let Some(p) = self.probes {
            k = k.with_retries(p);
        }
        socket.set_tcp_keepalive(&k)?;
        socket.set_keepalive(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::cluster::{ClusterConfig, XdsCluster};

    #[test]
    fn connection_pool_options_parse_and_keepalive_reaches_the_socket() {
        let c: XdsCluster = xds::json::from_yaml(
            r#"
name: c
typed_extension_protocol_options:
  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
    "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
    explicit_http_config: {http2_protocol_options: {max_concurrent_streams: 7}}
    common_http_protocol_options: {max_requests_per_connection: 3, idle_timeout: 0s, max_connection_duration: 60s}
upstream_connection_options: {tcp_keepalive: {keepalive_time: 40, keepalive_interval: 7, keepalive_probes: 4}}
"#,
        )
        .unwrap();
        let pool = ClusterConfig::try_from(&c).unwrap().pool;
        assert_eq!(pool.max_concurrent_streams, 7);
        assert_eq!(pool.max_requests_per_connection, Some(3));
        assert_eq!(pool.idle_timeout, None, "0 disables the idle timeout");
        assert_eq!(pool.max_connection_duration, Some(Duration::from_secs(60)));
        let ka = pool.tcp_keepalive.unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        ka.apply(socket2::SockRef::from(&s)).unwrap();
        let sock = socket2::SockRef::from(&s);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(40));
        assert_eq!(
            sock.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(7)
        );
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), 4);
        assert_eq!(
            ConnectionPoolConfig::default().idle_timeout,
            Some(DEFAULT_IDLE_TIMEOUT)
        );
    }

    #[test]
    fn overflow_is_a_uo_503() {
        let e = crate::error::RequestError::Overflow;
        assert_eq!((e.flag().code(), e.status().as_u16()), ("UO", 503));
        assert!(e.failure().is_none(), "an overflow is not retried");
    }
}

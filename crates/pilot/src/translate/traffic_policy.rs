//! A DestinationRule's merged traffic policy laid onto a cluster, as Istio's
//! `applyTrafficPolicy` does: the HTTP/2 upgrade, the connection pool
//! (circuit breakers, connect timeout, TCP keepalive, HTTP protocol
//! options), outlier detection and the load balancer (with
//! `locality_weighted_lb_config` when `localityLbSetting` asks for it).

use api::networking::{
    ConnectionPoolSettings, ConsistentHashLb, H2UpgradePolicy, LoadBalancerSettings,
    OutlierDetection, RetryBudget, SimpleLb,
};
use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster, OutlierDetection as XdsOutlierDetection, UpstreamConnectionOptions,
    circuit_breakers::Thresholds,
    circuit_breakers::thresholds::RetryBudget as XdsRetryBudget,
    cluster::{
        CommonLbConfig, LbConfig, LbPolicy, LeastRequestLbConfig, MaglevLbConfig, RingHashLbConfig,
        RoundRobinLbConfig, SlowStartConfig,
        common_lb_config::{LocalityConfigSpecifier, LocalityWeightedLbConfig},
    },
};
use envoy_types::pb::envoy::config::core::v3::{
    Http1ProtocolOptions, Http2ProtocolOptions, HttpProtocolOptions as CommonHttpProtocolOptions,
    RuntimeDouble, TcpKeepalive,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions,
    http_protocol_options::{
        ExplicitHttpConfig, UpstreamProtocolOptions, UseDownstreamHttpConfig,
        explicit_http_config::ProtocolConfig,
    },
};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::{UInt32Value, UInt64Value};

use super::common::{any, duration};
use crate::policy::Effective;

/// The key of `typed_extension_protocol_options` for HTTP upstreams.
pub const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// The cluster's HttpProtocolOptions, decoded (default when absent).
pub fn http_options(c: &Cluster) -> HttpProtocolOptions {
    c.typed_extension_protocol_options
        .get(HTTP_PROTOCOL_OPTIONS)
        .and_then(|a| prost::Message::decode(a.value.as_slice()).ok())
        .unwrap_or_default()
}

/// Store the cluster's HttpProtocolOptions. Envoy requires an upstream
/// protocol; without one it is explicit HTTP/1.1, as Istio's cluster
/// builder finishes it.
pub fn set_http_options(c: &mut Cluster, opts: &HttpProtocolOptions) {
    let mut opts = opts.clone();
    opts.upstream_protocol_options.get_or_insert_with(|| {
        UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
            protocol_config: Some(ProtocolConfig::HttpProtocolOptions(
                Http1ProtocolOptions::default(),
            )),
        })
    });
    c.typed_extension_protocol_options
        .insert(HTTP_PROTOCOL_OPTIONS.to_string(), any(&opts));
}

/// `explicit_http_config: {http2_protocol_options: {}}`.
pub fn explicit_h2() -> UpstreamProtocolOptions {
    UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
        protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(
            Http2ProtocolOptions::default(),
        )),
    })
}

/// An outbound service cluster: everything `applyTrafficPolicy` does for
/// the outbound direction (TLS is applied by the caller).
pub fn apply_outbound(c: &mut Cluster, policy: &Effective) {
    let pool = policy.parts.connection_pool.clone().unwrap_or_default();
    if should_h2_upgrade(&pool) {
        let mut opts = http_options(c);
        if opts.upstream_protocol_options.is_none() {
            opts.upstream_protocol_options = Some(explicit_h2());
        }
        set_http_options(c, &opts);
    }
    apply_connection_pool(c, &pool, policy.retry_budget.as_ref());
    if let Some(od) = &policy.parts.outlier_detection {
        apply_outlier_detection(c, od);
    }
    apply_load_balancer(c, policy.parts.load_balancer.as_ref());
    if c.lb_policy != LbPolicy::ClusterProvided as i32 && super::locality::weighted(policy) {
        c.common_lb_config
            .get_or_insert_with(CommonLbConfig::default)
            .locality_config_specifier = Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(
            LocalityWeightedLbConfig::default(),
        ));
    }
}

/// Istio's `shouldH2Upgrade` under the mesh default (DO_NOT_UPGRADE): only
/// an explicit `h2UpgradePolicy: UPGRADE` without `useClientProtocol`.
fn should_h2_upgrade(pool: &ConnectionPoolSettings) -> bool {
    pool.http.as_ref().is_some_and(|h| {
        h.use_client_protocol != Some(true) && h.h2_upgrade_policy == Some(H2UpgradePolicy::Upgrade)
    })
}

/// Istio's default thresholds: every limit at 2^32-1 (Envoy's defaults,
/// 1024 and 3 retries, trip during pod churn), remaining counts tracked.
pub fn default_thresholds() -> Thresholds {
    let max = || Some(UInt32Value { value: u32::MAX });
    Thresholds {
        max_connections: max(),
        max_pending_requests: max(),
        max_requests: max(),
        max_retries: max(),
        track_remaining: true,
        ..Default::default()
    }
}

/// `circuit_breakers` with Istio's defaults only (clusters without a
/// policy: inbound, passthrough).
pub fn default_circuit_breakers() -> CircuitBreakers {
    CircuitBreakers {
        thresholds: vec![default_thresholds()],
        ..Default::default()
    }
}

/// Istio's `applyConnectionPool` (values of 0 mean unset, as in Istio).
pub fn apply_connection_pool(
    c: &mut Cluster,
    pool: &ConnectionPoolSettings,
    retry_budget: Option<&RetryBudget>,
) {
    let positive = |v: Option<i32>| v.filter(|n| *n > 0).map(|n| n as u32);
    let mut t = default_thresholds();
    if let Some(rb) = retry_budget {
        t.retry_budget = Some(XdsRetryBudget {
            budget_percent: Some(Percent {
                value: rb.percent.unwrap_or(0.2),
            }),
            min_retry_concurrency: Some(UInt32Value {
                value: rb.min_retry_concurrency.filter(|n| *n > 0).unwrap_or(3),
            }),
            budget_interval: rb.budget_interval.map(|d| duration(d.get())),
        });
    }
    let mut idle_timeout = None;
    let mut max_requests_per_connection = None;
    let mut max_concurrent_streams = None;
    let mut max_connection_duration = None;
    if let Some(h) = &pool.http {
        if let Some(n) = positive(h.http2_max_requests) {
            t.max_requests = Some(UInt32Value { value: n });
        }
        if let Some(n) = positive(h.http1_max_pending_requests) {
            t.max_pending_requests = Some(UInt32Value { value: n });
        }
        if let Some(n) = positive(h.max_retries) {
            t.max_retries = Some(UInt32Value { value: n });
        }
        idle_timeout = h.idle_timeout;
        max_requests_per_connection = positive(h.max_requests_per_connection);
        max_concurrent_streams = positive(h.max_concurrent_streams);
    }
    if let Some(tcp) = &pool.tcp {
        if let Some(ct) = tcp.connect_timeout {
            c.connect_timeout = Some(duration(ct.get()));
        }
        if let Some(n) = positive(tcp.max_connections) {
            t.max_connections = Some(UInt32Value { value: n });
        }
        max_connection_duration = tcp.max_connection_duration;
        idle_timeout = idle_timeout.or(tcp.idle_timeout);
        if let Some(k) = &tcp.tcp_keepalive {
            let ka = c
                .upstream_connection_options
                .get_or_insert_with(|| UpstreamConnectionOptions {
                    tcp_keepalive: Some(TcpKeepalive::default()),
                    ..Default::default()
                })
                .tcp_keepalive
                .get_or_insert_with(TcpKeepalive::default);
            if let Some(p) = k.probes.filter(|p| *p > 0) {
                ka.keepalive_probes = Some(UInt32Value { value: p });
            }
            if let Some(d) = k.time {
                ka.keepalive_time = Some(UInt32Value {
                    value: d.get().as_secs() as u32,
                });
            }
            if let Some(d) = k.interval {
                ka.keepalive_interval = Some(UInt32Value {
                    value: d.get().as_secs() as u32,
                });
            }
        }
    }
    c.circuit_breakers = Some(CircuitBreakers {
        thresholds: vec![t],
        ..Default::default()
    });
    if idle_timeout.is_some()
        || max_requests_per_connection.is_some()
        || max_concurrent_streams.is_some()
        || max_connection_duration.is_some()
    {
        let mut opts = http_options(c);
        let common = opts
            .common_http_protocol_options
            .get_or_insert_with(CommonHttpProtocolOptions::default);
        if let Some(d) = idle_timeout {
            common.idle_timeout = Some(duration(d.get()));
        }
        if let Some(n) = max_requests_per_connection {
            common.max_requests_per_connection = Some(UInt32Value { value: n });
        }
        if let Some(d) = max_connection_duration {
            common.max_connection_duration = Some(duration(d.get()));
        }
        if let (
            Some(n),
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
                protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(h2)),
            })),
        ) = (
            max_concurrent_streams,
            opts.upstream_protocol_options.as_mut(),
        ) {
            h2.max_concurrent_streams = Some(UInt32Value { value: n });
        }
        set_http_options(c, &opts);
    }
    if pool.http.as_ref().and_then(|h| h.use_client_protocol) == Some(true) {
        let mut opts = http_options(c);
        opts.upstream_protocol_options = Some(
            UpstreamProtocolOptions::UseDownstreamProtocolConfig(UseDownstreamHttpConfig {
                http_protocol_options: Some(Http1ProtocolOptions::default()),
                http2_protocol_options: Some(Http2ProtocolOptions::default()),
                ..Default::default()
            }),
        );
        set_http_options(c, &opts);
    }
}

/// Istio's `applyOutlierDetection`: success-rate ejection off; 5xx and
/// gateway-error counts enforced at 100% when non-zero; local-origin
/// failures only with `splitExternalLocalOriginErrors`; the panic
/// threshold set to `minHealthPercent` (0, disabled, when unset). The
/// deprecated `consecutiveErrors` is ignored, as Istio 1.2x does.
fn apply_outlier_detection(c: &mut Cluster, od: &OutlierDetection) {
    let u = |value: u32| Some(UInt32Value { value });
    let enforcing = |v: u32| u(if v > 0 { 100 } else { 0 });
    let mut out = XdsOutlierDetection {
        enforcing_success_rate: u(0),
        ..Default::default()
    };
    if let Some(v) = od.consecutive_5xx_errors {
        out.consecutive_5xx = u(v);
        out.enforcing_consecutive_5xx = enforcing(v);
    }
    if let Some(v) = od.consecutive_gateway_errors {
        out.consecutive_gateway_failure = u(v);
        out.enforcing_consecutive_gateway_failure = enforcing(v);
    }
    out.interval = od.interval.map(|d| duration(d.get()));
    out.base_ejection_time = od.base_ejection_time.map(|d| duration(d.get()));
    if let Some(p) = od.max_ejection_percent.filter(|p| *p > 0) {
        out.max_ejection_percent = u(p as u32);
    }
    if od.split_external_local_origin_errors == Some(true) {
        out.split_external_local_origin_errors = true;
        if let Some(v) = od.consecutive_local_origin_failures.filter(|v| *v > 0) {
            out.consecutive_local_origin_failure = u(v);
            out.enforcing_consecutive_local_origin_failure = u(100);
        }
        out.enforcing_local_origin_success_rate = u(0);
    }
    c.outlier_detection = Some(out);
    let min_health = od.min_health_percent.unwrap_or(0);
    if min_health >= 0 {
        c.common_lb_config
            .get_or_insert_with(CommonLbConfig::default)
            .healthy_panic_threshold = Some(Percent {
            value: f64::from(min_health),
        });
    }
}

/// Istio's `applyLoadBalancer` for EDS and DNS clusters (ORIGINAL_DST ones
/// keep CLUSTER_PROVIDED): `simple` (LEAST_REQUEST when unset), slow start
/// from `warmup` or `warmupDurationSecs`, then `consistentHash` as
/// RING_HASH or MAGLEV.
fn apply_load_balancer(c: &mut Cluster, lb: Option<&LoadBalancerSettings>) {
    if c.lb_policy == LbPolicy::ClusterProvided as i32 {
        return;
    }
    let slow_start = lb.and_then(slow_start);
    match lb.and_then(|l| l.simple) {
        Some(SimpleLb::Random) => c.lb_policy = LbPolicy::Random as i32,
        Some(SimpleLb::RoundRobin) => {
            c.lb_policy = LbPolicy::RoundRobin as i32;
            if let Some(s) = slow_start {
                c.lb_config = Some(LbConfig::RoundRobinLbConfig(RoundRobinLbConfig {
                    slow_start_config: Some(s),
                }));
            }
        }
        // PASSTHROUGH made the cluster ORIGINAL_DST already.
        Some(SimpleLb::Passthrough) => {}
        _ => {
            c.lb_policy = LbPolicy::LeastRequest as i32;
            if let Some(s) = slow_start {
                c.lb_config = Some(LbConfig::LeastRequestLbConfig(LeastRequestLbConfig {
                    slow_start_config: Some(s),
                    ..Default::default()
                }));
            }
        }
    }
    if let Some(h) = lb.and_then(|l| l.consistent_hash.as_ref()) {
        apply_consistent_hash(c, h);
    }
}

/// `warmup` (window, aggression 1 and minimum 10% by default), else the
/// deprecated `warmupDurationSecs` (window only).
fn slow_start(lb: &LoadBalancerSettings) -> Option<SlowStartConfig> {
    if let Some(w) = &lb.warmup {
        return Some(SlowStartConfig {
            slow_start_window: Some(duration(w.duration.get())),
            aggression: Some(RuntimeDouble {
                default_value: w.aggression.unwrap_or(1.0),
                // Envoy requires a key; Istio's is one no runtime defines.
                runtime_key: "(".into(),
            }),
            min_weight_percent: Some(Percent {
                value: w.minimum_percent.unwrap_or(10.0),
            }),
        });
    }
    lb.warmup_duration_secs.map(|d| SlowStartConfig {
        slow_start_window: Some(duration(d.get())),
        ..Default::default()
    })
}

/// Istio's `ApplyRingHashLoadBalancer`: `maglev` → MAGLEV (table size if
/// set), `ringHash` → RING_HASH (minimum ring size if set), neither →
/// RING_HASH with the deprecated `minimumRingSize` or 1024.
fn apply_consistent_hash(c: &mut Cluster, h: &ConsistentHashLb) {
    if let Some(m) = &h.maglev {
        c.lb_policy = LbPolicy::Maglev as i32;
        if let Some(size) = m.table_size.filter(|s| *s != 0) {
            c.lb_config = Some(LbConfig::MaglevLbConfig(MaglevLbConfig {
                table_size: Some(UInt64Value { value: size }),
            }));
        }
    } else if let Some(r) = &h.ring_hash {
        c.lb_policy = LbPolicy::RingHash as i32;
        if let Some(size) = r.minimum_ring_size.filter(|s| *s != 0) {
            c.lb_config = Some(LbConfig::RingHashLbConfig(RingHashLbConfig {
                minimum_ring_size: Some(UInt64Value { value: size }),
                ..Default::default()
            }));
        }
    } else {
        c.lb_policy = LbPolicy::RingHash as i32;
        c.lb_config = Some(LbConfig::RingHashLbConfig(RingHashLbConfig {
            minimum_ring_size: Some(UInt64Value {
                value: h.minimum_ring_size.filter(|s| *s != 0).unwrap_or(1024),
            }),
            ..Default::default()
        }));
    }
}

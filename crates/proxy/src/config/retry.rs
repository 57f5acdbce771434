//! `RetryPolicy` (route or virtual host) as the router runs it: the
//! `retry_on` conditions in Envoy's grammar, how many retries, the per-try
//! timeout, the jittered back-off, the retriable status codes and whether a
//! retry avoids the hosts already tried (`previous_hosts`) and the
//! priorities already tried (`previous_priorities`).

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::route::v3 as xds_route;
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::extensions::retry::priority::previous_priorities::v3::PreviousPrioritiesConfig;

use super::{decode_any, duration};
use crate::error::ConfigError;

/// Envoy's default back-off base interval.
pub const DEFAULT_BASE_INTERVAL: Duration = Duration::from_millis(25);

/// `retry_on` conditions, one bit each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryOn(u32);

impl RetryOn {
    /// Any 5xx, or no response at all (connect failure, reset, timeout).
    pub const FIVE_XX: RetryOn = RetryOn(1);
    /// 502, 503, 504, or no response at all.
    pub const GATEWAY_ERROR: RetryOn = RetryOn(1 << 1);
    /// No response: disconnect, reset or per-try timeout.
    pub const RESET: RetryOn = RetryOn(1 << 2);
    /// The connection could not be opened (or timed out opening).
    pub const CONNECT_FAILURE: RetryOn = RetryOn(1 << 3);
    /// 409.
    pub const RETRIABLE_4XX: RetryOn = RetryOn(1 << 4);
    /// An h2 stream reset with REFUSED_STREAM.
    pub const REFUSED_STREAM: RetryOn = RetryOn(1 << 5);
    /// A status in `retriable_status_codes`.
    pub const RETRIABLE_STATUS_CODES: RetryOn = RetryOn(1 << 6);
    /// The upstream answered with `x-envoy-ratelimited`.
    pub const ENVOY_RATELIMITED: RetryOn = RetryOn(1 << 7);
    /// A reset before the request was sent upstream.
    pub const RESET_BEFORE_REQUEST: RetryOn = RetryOn(1 << 8);
    /// gRPC status codes in the response headers.
    pub const GRPC_CANCELLED: RetryOn = RetryOn(1 << 9);
    pub const GRPC_DEADLINE_EXCEEDED: RetryOn = RetryOn(1 << 10);
    pub const GRPC_RESOURCE_EXHAUSTED: RetryOn = RetryOn(1 << 11);
    pub const GRPC_UNAVAILABLE: RetryOn = RetryOn(1 << 12);
    pub const GRPC_INTERNAL: RetryOn = RetryOn(1 << 13);
    /// Any of the gRPC conditions.
    const GRPC_ANY: RetryOn = RetryOn(0b11111 << 9);

    /// Every token of Envoy's `retry_on` grammar this proxy enforces.
    /// `http3-post-connect-failure` is accepted and means nothing here: the
    /// proxy never speaks HTTP/3 upstream.
    const TOKENS: &[(&str, RetryOn)] = &[
        ("5xx", RetryOn::FIVE_XX),
        ("gateway-error", RetryOn::GATEWAY_ERROR),
        ("reset", RetryOn::RESET),
        ("reset-before-request", RetryOn::RESET_BEFORE_REQUEST),
        ("connect-failure", RetryOn::CONNECT_FAILURE),
        ("retriable-4xx", RetryOn::RETRIABLE_4XX),
        ("refused-stream", RetryOn::REFUSED_STREAM),
        ("retriable-status-codes", RetryOn::RETRIABLE_STATUS_CODES),
        ("envoy-ratelimited", RetryOn::ENVOY_RATELIMITED),
        ("http3-post-connect-failure", RetryOn(0)),
        ("cancelled", RetryOn::GRPC_CANCELLED),
        ("deadline-exceeded", RetryOn::GRPC_DEADLINE_EXCEEDED),
        ("resource-exhausted", RetryOn::GRPC_RESOURCE_EXHAUSTED),
        ("unavailable", RetryOn::GRPC_UNAVAILABLE),
        ("internal", RetryOn::GRPC_INTERNAL),
    ];

    /// Parse a comma-separated `retry_on`. Envoy ignores tokens it does not
    /// know; a condition nobody enforces is refused here instead, naming it.
    pub fn parse(s: &str) -> Result<RetryOn, String> {
        let mut on = RetryOn(0);
        for token in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            match RetryOn::TOKENS.iter().find(|(name, _)| *name == token) {
                Some((_, bit)) => on.0 |= bit.0,
                None if token == "retriable-headers" => {
                    return Err("retriable-headers is not supported".into());
                }
                None => return Err(format!("unknown retry condition {token:?}")),
            }
        }
        Ok(on)
    }

    /// A request's `x-envoy-retry-on` (HTTP conditions) or, with `grpc`,
    /// `x-envoy-retry-grpc-on`: tokens it does not know are ignored, as
    /// Envoy does for headers.
    pub fn parse_header(s: &str, grpc: bool) -> RetryOn {
        let mut on = RetryOn(0);
        for token in s.split(',').map(str::trim) {
            if let Some((_, bit)) = RetryOn::TOKENS.iter().find(|(name, _)| *name == token) {
                let is_grpc = bit.0 >= RetryOn::GRPC_CANCELLED.0;
                if is_grpc == grpc {
                    on.0 |= bit.0;
                }
            }
        }
        on
    }

    pub fn has(self, other: RetryOn) -> bool {
        self.0 & other.0 != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// How an attempt failed without a usable response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The connection could not be opened.
    ConnectFailure,
    /// The stream was refused (h2 REFUSED_STREAM) before any response.
    RefusedStream,
    /// Reset or closed before the response headers, after it was sent.
    Reset,
    /// The per-try timeout fired.
    PerTryTimeout,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    pub on: RetryOn,
    pub num_retries: u32,
    /// None: only the route's overall timeout bounds an attempt.
    pub per_try_timeout: Option<Duration>,
    pub retriable_status_codes: Vec<u16>,
    /// `previous_hosts`: a retry picks a host not tried yet when it can.
    pub avoid_previous_hosts: bool,
    /// How many times a retry may re-pick a host (Envoy's default is 1).
    pub host_selection_max_attempts: u32,
    pub base_interval: Duration,
    pub max_interval: Duration,
    /// `previous_priorities`' `update_frequency`: every that many attempts,
    /// a retry's priority load leaves out the priorities already tried.
    pub previous_priorities: Option<u32>,
}

impl RetryPolicy {
    /// Whether a response with this status (and headers) should be retried.
    /// A 2xx without `grpc-status` costs no header lookup unless a gRPC
    /// condition is on.
    pub fn retries_response(&self, status: u16, headers: &http::HeaderMap) -> bool {
        static OVERLOADED: http::HeaderName = http::HeaderName::from_static("x-envoy-overloaded");
        static RATELIMITED: http::HeaderName = http::HeaderName::from_static("x-envoy-ratelimited");
        let on = self.on;
        let wanted = (on.has(RetryOn::FIVE_XX) && (500..600).contains(&status))
            || (on.has(RetryOn::GATEWAY_ERROR) && matches!(status, 502..=504))
            || (on.has(RetryOn::RETRIABLE_4XX) && status == 409)
            || (on.has(RetryOn::RETRIABLE_STATUS_CODES)
                && self.retriable_status_codes.contains(&status))
            || (on.has(RetryOn::ENVOY_RATELIMITED) && headers.contains_key(&RATELIMITED))
            || (on.0 & RetryOn::GRPC_ANY.0 != 0 && self.retries_grpc(headers));
        wanted && !headers.contains_key(&OVERLOADED)
    }

    /// The gRPC conditions: a `grpc-status` in the response headers (a
    /// trailers-only response).
    fn retries_grpc(&self, headers: &http::HeaderMap) -> bool {
        static GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
        let Some(code) = headers
            .get(&GRPC_STATUS)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u32>().ok())
        else {
            return false;
        };
        let bit = match code {
            1 => RetryOn::GRPC_CANCELLED,
            4 => RetryOn::GRPC_DEADLINE_EXCEEDED,
            8 => RetryOn::GRPC_RESOURCE_EXHAUSTED,
            13 => RetryOn::GRPC_INTERNAL,
            14 => RetryOn::GRPC_UNAVAILABLE,
            _ => return false,
        };
        self.on.has(bit)
    }

    /// Whether an attempt that got no response should be retried. A per-try
    /// timeout and a reset count for `5xx`, `gateway-error` and `reset`, as
    /// in Envoy.
    pub fn retries_failure(&self, failure: Failure, sent: bool) -> bool {
        let on = self.on;
        if on.has(RetryOn::FIVE_XX) || on.has(RetryOn::GATEWAY_ERROR) || on.has(RetryOn::RESET) {
            return true;
        }
        match failure {
            Failure::ConnectFailure => {
                on.has(RetryOn::CONNECT_FAILURE) || on.has(RetryOn::RESET_BEFORE_REQUEST)
            }
            Failure::RefusedStream => {
                on.has(RetryOn::REFUSED_STREAM) || (!sent && on.has(RetryOn::RESET_BEFORE_REQUEST))
            }
            Failure::Reset | Failure::PerTryTimeout => {
                !sent && on.has(RetryOn::RESET_BEFORE_REQUEST)
            }
        }
    }

    /// The route's policy as an internal request's own retry headers
    /// change it (Envoy's `RetryStateImpl`): `x-envoy-retry-on` and
    /// `x-envoy-retry-grpc-on` add conditions (a policy of one retry when
    /// the route has none), `x-envoy-retriable-status-codes` adds codes,
    /// `x-envoy-max-retries` sets the count once any condition is on. The
    /// headers are consumed: none goes upstream. `steered`: an internal
    /// request came with `x-envoy-*` headers (the one scan of the names,
    /// done by `headers::internal_headers`); without, nothing is looked up.
    pub fn with_request_headers(
        route: Option<&Arc<RetryPolicy>>,
        h: &mut http::HeaderMap,
        steered: bool,
    ) -> Option<Arc<RetryPolicy>> {
        use crate::http::headers::{
            X_ENVOY_MAX_RETRIES, X_ENVOY_RETRIABLE_STATUS_CODES, X_ENVOY_RETRY_GRPC_ON,
            X_ENVOY_RETRY_ON,
        };
        if !steered {
            return route.cloned();
        }
        let text = |v: http::HeaderValue| v.to_str().map(str::to_owned).unwrap_or_default();
        let retry_on = h.remove(&X_ENVOY_RETRY_ON).map(text);
        let grpc_on = h.remove(&X_ENVOY_RETRY_GRPC_ON).map(text);
        let max = h.remove(&X_ENVOY_MAX_RETRIES).map(text);
        let codes = h.remove(&X_ENVOY_RETRIABLE_STATUS_CODES).map(text);
        for other in [
            "x-envoy-hedge-on-per-try-timeout",
            "x-envoy-retriable-header-names",
        ] {
            h.remove(other);
        }
        if retry_on.is_none() && grpc_on.is_none() && max.is_none() && codes.is_none() {
            return route.cloned();
        }
        let mut p = match route {
            Some(r) => RetryPolicy::clone(r),
            None if retry_on.is_some() || grpc_on.is_some() => RetryPolicy {
                on: RetryOn(0),
                num_retries: 1,
                per_try_timeout: None,
                retriable_status_codes: Vec::new(),
                avoid_previous_hosts: false,
                host_selection_max_attempts: 1,
                base_interval: DEFAULT_BASE_INTERVAL,
                max_interval: DEFAULT_BASE_INTERVAL * 10,
                previous_priorities: None,
            },
            None => return None,
        };
        if let Some(v) = &retry_on {
            p.on.0 |= RetryOn::parse_header(v, false).0;
        }
        if let Some(v) = &grpc_on {
            p.on.0 |= RetryOn::parse_header(v, true).0;
        }
        if let Some(v) = &codes {
            p.retriable_status_codes
                .extend(v.split(',').filter_map(|c| c.trim().parse::<u16>().ok()));
        }
        if !p.on.is_empty()
            && let Some(n) = max.as_deref().and_then(|m| m.trim().parse::<u32>().ok())
        {
            p.num_retries = n;
        }
        Some(Arc::new(p))
    }

    /// The wait before retry `n` (1-based): uniformly random below
    /// `(2^n - 1) × base`, capped at the max interval (Envoy's jittered
    /// exponential back-off). `random` is any u64.
    pub fn back_off(&self, n: u32, random: u64) -> Duration {
        let base = self.base_interval.as_millis().max(1) as u64;
        let max = self.max_interval.as_millis() as u64;
        let ceiling = ((1u64 << n.min(32)) - 1)
            .saturating_mul(base)
            .min(max.max(1));
        Duration::from_millis(random % ceiling)
    }
}

impl TryFrom<&xds_route::RetryPolicy> for RetryPolicy {
    type Error = ConfigError;

    fn try_from(p: &xds_route::RetryPolicy) -> Result<Self, ConfigError> {
        let on = RetryOn::parse(&p.retry_on).map_err(|e| ConfigError::new("retry_on", e))?;
        let retriable_status_codes = p
            .retriable_status_codes
            .iter()
            .enumerate()
            .map(|(i, c)| {
                u16::try_from(*c)
                    .ok()
                    .filter(|c| (100..600).contains(c))
                    .ok_or_else(|| {
                        ConfigError::new(
                            format!("retriable_status_codes[{i}]"),
                            format!("{c} is not an HTTP status"),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut avoid_previous_hosts = false;
        for (i, pred) in p.retry_host_predicate.iter().enumerate() {
            let at = format!("retry_host_predicate[{i}]");
            use xds_route::retry_policy::retry_host_predicate::ConfigType;
            match &pred.config_type {
                Some(ConfigType::TypedConfig(any)) => {
                    let _: PreviousHostsPredicate = decode_any(any, &format!("{at}.typed_config"))?;
                    avoid_previous_hosts = true;
                }
                None => {
                    return Err(ConfigError::new(
                        format!("{at}.typed_config"),
                        "required (only envoy.retry_host_predicates.previous_hosts is supported)",
                    ));
                }
            }
        }
        let mut previous_priorities = None;
        if let Some(pr) = &p.retry_priority {
            use xds_route::retry_policy::retry_priority::ConfigType;
            match &pr.config_type {
                Some(ConfigType::TypedConfig(any)) => {
                    let c: PreviousPrioritiesConfig =
                        decode_any(any, "retry_priority.typed_config")?;
                    if c.update_frequency <= 0 {
                        return Err(ConfigError::new(
                            "retry_priority.typed_config.update_frequency",
                            "must be above 0",
                        ));
                    }
                    previous_priorities = Some(c.update_frequency as u32);
                }
                None => {
                    return Err(ConfigError::new(
                        "retry_priority.typed_config",
                        "required (only envoy.retry_priorities.previous_priorities is supported)",
                    ));
                }
            }
        }
        let host_selection_max_attempts = match p.host_selection_retry_max_attempts {
            0 => 1,
            n if n < 0 => {
                return Err(ConfigError::new(
                    "host_selection_retry_max_attempts",
                    "must not be negative",
                ));
            }
            n => n.min(u32::MAX as i64) as u32,
        };
        let (base_interval, max_interval) = match &p.retry_back_off {
            None => (DEFAULT_BASE_INTERVAL, DEFAULT_BASE_INTERVAL * 10),
            Some(b) => {
                let at = "retry_back_off.base_interval";
                let base = match &b.base_interval {
                    Some(d) => duration(d, at)?,
                    None => Duration::ZERO,
                };
                if base.is_zero() {
                    return Err(ConfigError::new(at, "required, above 0"));
                }
                let max = match &b.max_interval {
                    Some(d) => duration(d, "retry_back_off.max_interval")?,
                    None => base * 10,
                };
                if max < base {
                    return Err(ConfigError::new(
                        "retry_back_off.max_interval",
                        "must not be below base_interval",
                    ));
                }
                (base, max)
            }
        };
        Ok(RetryPolicy {
            on,
            num_retries: p.num_retries.as_ref().map_or(1, |n| n.value),
            per_try_timeout: match &p.per_try_timeout {
                Some(d) => Some(duration(d, "per_try_timeout")?).filter(|d| !d.is_zero()),
                None => None,
            },
            retriable_status_codes,
            avoid_previous_hosts,
            host_selection_max_attempts,
            base_interval,
            max_interval,
            previous_priorities,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(on: &str) -> RetryPolicy {
        RetryPolicy {
            on: RetryOn::parse(on).expect("valid"),
            num_retries: 2,
            per_try_timeout: None,
            retriable_status_codes: vec![503],
            avoid_previous_hosts: true,
            host_selection_max_attempts: 5,
            base_interval: DEFAULT_BASE_INTERVAL,
            max_interval: DEFAULT_BASE_INTERVAL * 10,
            previous_priorities: None,
        }
    }

    #[test]
    fn istios_default_policy_retries_503_and_connect_failures_only() {
        let p =
            policy("connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes");
        let none = http::HeaderMap::new();
        assert!(p.retries_response(503, &none));
        assert!(!p.retries_response(500, &none));
        assert!(!p.retries_response(504, &none));
        assert!(p.retries_failure(Failure::ConnectFailure, false));
        assert!(p.retries_failure(Failure::RefusedStream, true));
        assert!(!p.retries_failure(Failure::Reset, true));
        assert!(!p.retries_failure(Failure::PerTryTimeout, true));
        let mut grpc = http::HeaderMap::new();
        grpc.insert("grpc-status", "14".parse().unwrap());
        assert!(p.retries_response(200, &grpc), "UNAVAILABLE");
        grpc.insert("grpc-status", "13".parse().unwrap());
        assert!(
            !p.retries_response(200, &grpc),
            "INTERNAL is not in the list"
        );
    }

    #[test]
    fn five_xx_and_gateway_error_cover_no_response_at_all() {
        let p = policy("5xx");
        let none = http::HeaderMap::new();
        assert!(p.retries_response(500, &none) && p.retries_response(599, &none));
        assert!(!p.retries_response(499, &none));
        for f in [
            Failure::Reset,
            Failure::PerTryTimeout,
            Failure::ConnectFailure,
        ] {
            assert!(p.retries_failure(f, true));
        }
        let g = policy("gateway-error");
        assert!(!g.retries_response(500, &none));
        assert!(g.retries_response(502, &none) && g.retries_response(504, &none));
        let mut overloaded = http::HeaderMap::new();
        overloaded.insert("x-envoy-overloaded", "true".parse().unwrap());
        assert!(!p.retries_response(503, &overloaded));
        assert!(policy("retriable-4xx").retries_response(409, &none));
    }

    #[test]
    fn unknown_conditions_are_refused_by_name() {
        assert_eq!(
            RetryOn::parse("5xx,connect-failures"),
            Err("unknown retry condition \"connect-failures\"".into())
        );
        assert!(RetryOn::parse("retriable-headers").is_err());
        assert!(RetryOn::parse(" 5xx , reset ").is_ok());
    }

    #[test]
    fn back_off_is_jittered_below_an_exponential_ceiling() {
        let p = policy("5xx");
        for r in [0u64, 7, 24, 1000, u64::MAX] {
            assert!(p.back_off(1, r) < Duration::from_millis(25));
            assert!(p.back_off(2, r) < Duration::from_millis(75));
            assert!(p.back_off(3, r) < Duration::from_millis(175));
            assert!(p.back_off(10, r) < Duration::from_millis(250));
        }
        assert_eq!(p.back_off(2, 74), Duration::from_millis(74));
    }
}

//! `envoy.filters.http.fault`: delay a share of requests by a fixed time, then
//! abort a share with an HTTP or gRPC status, as Envoy's fault filter does
//! (the route's `typed_per_filter_config` replaces the filter's own config;
//! delay and abort are rolled separately; an HTTP status wins over a gRPC
//! one; a gRPC abort is HTTP 200 with `grpc-status`). The delay runs on
//! tokio's clock, so it is tested with time paused.

use std::time::Duration;

use envoy_types::pb::envoy::extensions::filters::common::fault::v3 as common_fault;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3 as xds_fault;
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent};
use http::header::{self, HeaderValue};
use http::{HeaderMap, Response, StatusCode};

use super::body::ResponseBody;
use crate::error::ConfigError;

/// The filter's well-known name (the key of its per-route config).
pub const NAME: &str = "envoy.filters.http.fault";

/// The body of every abort, as Envoy sends it.
pub const ABORT_BODY: &str = "fault filter abort";

/// A share of requests: `numerator / denominator` (Envoy's FractionalPercent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fraction {
    pub numerator: u32,
    pub denominator: u32,
}

impl Fraction {
    /// Whether a request with this random value is in the share.
    pub fn hit(&self, random: u64) -> bool {
        (random % u64::from(self.denominator)) < u64::from(self.numerator.min(self.denominator))
    }

    fn parse(p: Option<&FractionalPercent>, at: &str) -> Result<Fraction, ConfigError> {
        use fractional_percent::DenominatorType as D;
        // Unset is the message's default, 0 of HUNDRED: never (as in Envoy).
        let Some(p) = p else {
            return Ok(Fraction {
                numerator: 0,
                denominator: 100,
            });
        };
        let denominator = match D::try_from(p.denominator) {
            Ok(D::Hundred) => 100,
            Ok(D::TenThousand) => 10_000,
            Ok(D::Million) => 1_000_000,
            Err(_) => {
                return Err(ConfigError::new(
                    format!("{at}.denominator"),
                    "value must be one of the defined enum values",
                ));
            }
        };
        Ok(Fraction {
            numerator: p.numerator,
            denominator,
        })
    }
}

/// What an abort answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortStatus {
    Http(StatusCode),
    Grpc(u32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delay {
    pub duration: Duration,
    pub share: Fraction,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Abort {
    pub status: AbortStatus,
    pub share: Fraction,
}

/// One HTTPFault (filter-level or per-route).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultConfig {
    pub delay: Option<Delay>,
    pub abort: Option<Abort>,
}

impl FaultConfig {
    pub fn is_empty(&self) -> bool {
        self.delay.is_none() && self.abort.is_none()
    }

    /// The delay for a request with this random value, if it gets one.
    pub fn delay_for(&self, random: u64) -> Option<Duration> {
        self.delay
            .as_ref()
            .filter(|d| d.share.hit(random) && !d.duration.is_zero())
            .map(|d| d.duration)
    }

    /// The abort for a request with this random value, if it gets one.
    pub fn abort_for(&self, random: u64) -> Option<AbortStatus> {
        self.abort
            .as_ref()
            .filter(|a| a.share.hit(random))
            .map(|a| a.status)
    }
}

impl TryFrom<&xds_fault::HttpFault> for FaultConfig {
    type Error = ConfigError;

    fn try_from(f: &xds_fault::HttpFault) -> Result<Self, ConfigError> {
        let delay = match &f.delay {
            None => None,
            Some(d) => {
                use common_fault::fault_delay::FaultDelaySecifier as S;
                let duration = match &d.fault_delay_secifier {
                    Some(S::FixedDelay(fixed)) => {
                        crate::config::duration(fixed, "delay.fixed_delay")?
                    }
                    _ => {
                        return Err(ConfigError::new(
                            "delay.fault_delay_secifier",
                            "fixed_delay is required (header_delay is not supported)",
                        ));
                    }
                };
                Some(Delay {
                    duration,
                    share: Fraction::parse(d.percentage.as_ref(), "delay.percentage")?,
                })
            }
        };
        let abort = match &f.abort {
            None => None,
            Some(a) => {
                use xds_fault::fault_abort::ErrorType as E;
                let status = match &a.error_type {
                    Some(E::HttpStatus(s)) => AbortStatus::Http(
                        u16::try_from(*s)
                            .ok()
                            .filter(|s| (200..600).contains(s))
                            .and_then(|s| StatusCode::from_u16(s).ok())
                            .ok_or_else(|| {
                                ConfigError::new(
                                    "abort.http_status",
                                    "value must be inside range [200, 600)",
                                )
                            })?,
                    ),
                    Some(E::GrpcStatus(s)) => AbortStatus::Grpc(*s),
                    _ => {
                        return Err(ConfigError::new(
                            "abort.error_type",
                            "http_status or grpc_status is required (header_abort is not supported)",
                        ));
                    }
                };
                Some(Abort {
                    status,
                    share: Fraction::parse(a.percentage.as_ref(), "abort.percentage")?,
                })
            }
        };
        Ok(FaultConfig { delay, abort })
    }
}

/// Envoy's local reply for an abort: plain for HTTP clients; for gRPC
/// clients a trailers-only response (HTTP 200, `grpc-status`), the status
/// mapped from the HTTP code when the abort gave one.
pub fn abort_response(status: AbortStatus, request: &HeaderMap) -> Response<ResponseBody> {
    let grpc_request = request
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"));
    if grpc_request {
        let code = match status {
            AbortStatus::Grpc(c) => c,
            AbortStatus::Http(s) => http_to_grpc(s),
        };
        let mut resp = Response::new(ResponseBody::local(bytes::Bytes::new()));
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert("grpc-status", HeaderValue::from(code));
        h.insert(
            "grpc-message",
            HeaderValue::from_static("fault%20filter%20abort"),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
        return resp;
    }
    let code = match status {
        AbortStatus::Http(s) => s,
        AbortStatus::Grpc(_) => StatusCode::OK,
    };
    let mut resp = Response::new(ResponseBody::local(bytes::Bytes::from_static(
        ABORT_BODY.as_bytes(),
    )));
    *resp.status_mut() = code;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(ABORT_BODY.len()));
    resp
}

/// Envoy's HTTP-to-gRPC status mapping (`Grpc::Utility::httpToGrpcStatus`).
fn http_to_grpc(s: StatusCode) -> u32 {
    match s.as_u16() {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(yaml: &str) -> Result<FaultConfig, ConfigError> {
        let f: xds_fault::HttpFault = xds::json::from_yaml(yaml).expect("HTTPFault");
        FaultConfig::try_from(&f)
    }

    #[test]
    fn istio_shapes_parse_and_roll() {
        let f = fault(
            "delay: {fixed_delay: 2s, percentage: {numerator: 500000, denominator: MILLION}}\nabort: {http_status: 503, percentage: {numerator: 1000, denominator: MILLION}}",
        )
        .expect("parse");
        assert_eq!(f.delay_for(0), Some(Duration::from_secs(2)));
        assert_eq!(f.delay_for(499_999), Some(Duration::from_secs(2)));
        assert_eq!(f.delay_for(500_000), None);
        // The seed's 0.1% abort: 1,000 in a million.
        let hits = (0..1_000_000u64)
            .filter(|r| f.abort_for(*r).is_some())
            .count();
        assert_eq!(hits, 1000);
        assert_eq!(
            f.abort_for(0),
            Some(AbortStatus::Http(StatusCode::SERVICE_UNAVAILABLE))
        );
        let g = fault("abort: {grpc_status: 14, percentage: {numerator: 100}}").expect("grpc");
        assert_eq!(g.abort_for(12345), Some(AbortStatus::Grpc(14)));
        let never = fault("abort: {grpc_status: 14}").expect("no percentage");
        assert_eq!(never.abort_for(0), None, "an unset percentage is 0%");
        assert!(fault("{}").expect("empty").is_empty());
    }

    #[test]
    fn bad_config_names_the_field() {
        let e = fault("abort: {http_status: 700}").expect_err("700");
        assert_eq!(
            e.to_string(),
            "abort.http_status: value must be inside range [200, 600)"
        );
        let e = fault("abort: {header_abort: {}}").expect_err("header");
        assert_eq!(e.path, "abort.error_type");
        let e = fault("delay: {header_delay: {}}").expect_err("header delay");
        assert_eq!(e.path, "delay.fault_delay_secifier");
    }

    #[test]
    fn aborts_answer_http_and_grpc_clients_as_envoy_does() {
        let plain = HeaderMap::new();
        let r = abort_response(AbortStatus::Http(StatusCode::SERVICE_UNAVAILABLE), &plain);
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()[header::CONTENT_LENGTH], "18");
        let r = abort_response(AbortStatus::Grpc(14), &plain);
        assert_eq!(
            r.status(),
            200,
            "a gRPC abort of a non-gRPC request is a 200"
        );
        let mut grpc = HeaderMap::new();
        grpc.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        let r = abort_response(AbortStatus::Grpc(14), &grpc);
        assert_eq!(
            (r.status().as_u16(), &r.headers()["grpc-status"]),
            (200, &HeaderValue::from(14))
        );
        let r = abort_response(AbortStatus::Http(StatusCode::NOT_FOUND), &grpc);
        assert_eq!(r.headers()["grpc-status"], "12");
    }
}

//! `envoy.filters.http.fault`'s config (HTTPFault v3), filter-level or per
//! route: a fixed delay and an HTTP or gRPC abort, each for a share of
//! requests (Envoy's FractionalPercent). `crate::http::fault` runs it.

use std::time::Duration;

use envoy_types::pb::envoy::extensions::filters::common::fault::v3 as common_fault;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3 as xds_fault;
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent};
use http::StatusCode;

use crate::error::ConfigError;

/// The filter's well-known name (the key of its per-route config).
pub const NAME: &str = "envoy.filters.http.fault";

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

    pub(crate) fn parse(p: Option<&FractionalPercent>, at: &str) -> Result<Fraction, ConfigError> {
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
                    Some(S::FixedDelay(fixed)) => super::duration(fixed, "delay.fixed_delay")?,
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
}

//! `Cluster.outlier_detection` as the detector runs it: Envoy's defaults
//! filled in, Envoy's validation rules applied. Every field in the subset is
//! enforced by `upstream::outlier`.

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3 as xds_cluster;
use envoy_types::pb::google::protobuf::UInt32Value;

use super::duration;
use crate::error::ConfigError;

/// The detector's settings (envoy.config.cluster.v3.OutlierDetection).
/// Percentages are 0..=100; the stdev factor is in thousandths, as Envoy's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierConfig {
    pub consecutive_5xx: u32,
    pub enforcing_consecutive_5xx: u32,
    pub consecutive_gateway_failure: u32,
    pub enforcing_consecutive_gateway_failure: u32,
    pub consecutive_local_origin_failure: u32,
    pub enforcing_consecutive_local_origin_failure: u32,
    /// Connect failures, resets and timeouts go to their own counter instead
    /// of counting as 503/504 responses.
    pub split_external_local_origin_errors: bool,
    pub interval: Duration,
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    pub max_ejection_time_jitter: Duration,
    pub max_ejection_percent: u32,
    pub always_eject_one_host: bool,
    pub enforcing_success_rate: u32,
    pub enforcing_local_origin_success_rate: u32,
    pub success_rate_minimum_hosts: u32,
    pub success_rate_request_volume: u32,
    pub success_rate_stdev_factor: u32,
    pub failure_percentage_threshold: u32,
    pub enforcing_failure_percentage: u32,
    pub enforcing_failure_percentage_local_origin: u32,
    pub failure_percentage_minimum_hosts: u32,
    pub failure_percentage_request_volume: u32,
}

impl Default for OutlierConfig {
    /// Envoy's defaults (outlier_detection.proto).
    fn default() -> Self {
        OutlierConfig {
            consecutive_5xx: 5,
            enforcing_consecutive_5xx: 100,
            consecutive_gateway_failure: 5,
            enforcing_consecutive_gateway_failure: 0,
            consecutive_local_origin_failure: 5,
            enforcing_consecutive_local_origin_failure: 100,
            split_external_local_origin_errors: false,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_time_jitter: Duration::ZERO,
            max_ejection_percent: 10,
            always_eject_one_host: false,
            enforcing_success_rate: 100,
            enforcing_local_origin_success_rate: 100,
            success_rate_minimum_hosts: 5,
            success_rate_request_volume: 100,
            success_rate_stdev_factor: 1900,
            failure_percentage_threshold: 85,
            enforcing_failure_percentage: 0,
            enforcing_failure_percentage_local_origin: 0,
            failure_percentage_minimum_hosts: 5,
            failure_percentage_request_volume: 50,
        }
    }
}

impl TryFrom<&xds_cluster::OutlierDetection> for OutlierConfig {
    type Error = ConfigError;

    fn try_from(o: &xds_cluster::OutlierDetection) -> Result<Self, ConfigError> {
        let d = OutlierConfig::default();
        let num = |v: &Option<UInt32Value>, default: u32| v.as_ref().map_or(default, |v| v.value);
        let pct = |v: &Option<UInt32Value>, default: u32, path: &str| match v {
            Some(v) if v.value > 100 => Err(ConfigError::new(
                path,
                "value must be less than or equal to 100",
            )),
            _ => Ok(num(v, default)),
        };
        let positive = |v: &Option<envoy_types::pb::google::protobuf::Duration>,
                        default: Duration,
                        path: &str| match v {
            Some(v) => match duration(v, path)? {
                Duration::ZERO => Err(ConfigError::new(path, "value must be greater than 0s")),
                d => Ok(d),
            },
            None => Ok(default),
        };
        let base_ejection_time = positive(
            &o.base_ejection_time,
            d.base_ejection_time,
            "base_ejection_time",
        )?;
        // Unset: Envoy's default or the base time, whichever is larger.
        let max_ejection_time = positive(
            &o.max_ejection_time,
            d.max_ejection_time.max(base_ejection_time),
            "max_ejection_time",
        )?;
        if max_ejection_time < base_ejection_time {
            return Err(ConfigError::new(
                "max_ejection_time",
                "cannot be smaller than base_ejection_time",
            ));
        }
        Ok(OutlierConfig {
            consecutive_5xx: num(&o.consecutive_5xx, d.consecutive_5xx),
            enforcing_consecutive_5xx: pct(
                &o.enforcing_consecutive_5xx,
                d.enforcing_consecutive_5xx,
                "enforcing_consecutive_5xx",
            )?,
            consecutive_gateway_failure: num(
                &o.consecutive_gateway_failure,
                d.consecutive_gateway_failure,
            ),
            enforcing_consecutive_gateway_failure: pct(
                &o.enforcing_consecutive_gateway_failure,
                d.enforcing_consecutive_gateway_failure,
                "enforcing_consecutive_gateway_failure",
            )?,
            consecutive_local_origin_failure: num(
                &o.consecutive_local_origin_failure,
                d.consecutive_local_origin_failure,
            ),
            enforcing_consecutive_local_origin_failure: pct(
                &o.enforcing_consecutive_local_origin_failure,
                d.enforcing_consecutive_local_origin_failure,
                "enforcing_consecutive_local_origin_failure",
            )?,
            split_external_local_origin_errors: o.split_external_local_origin_errors,
            interval: positive(&o.interval, d.interval, "interval")?,
            base_ejection_time,
            max_ejection_time,
            max_ejection_time_jitter: o
                .max_ejection_time_jitter
                .as_ref()
                .map(|j| duration(j, "max_ejection_time_jitter"))
                .transpose()?
                .unwrap_or(Duration::ZERO),
            max_ejection_percent: pct(
                &o.max_ejection_percent,
                d.max_ejection_percent,
                "max_ejection_percent",
            )?,
            always_eject_one_host: o.always_eject_one_host.as_ref().is_some_and(|b| b.value),
            enforcing_success_rate: pct(
                &o.enforcing_success_rate,
                d.enforcing_success_rate,
                "enforcing_success_rate",
            )?,
            enforcing_local_origin_success_rate: pct(
                &o.enforcing_local_origin_success_rate,
                d.enforcing_local_origin_success_rate,
                "enforcing_local_origin_success_rate",
            )?,
            success_rate_minimum_hosts: num(
                &o.success_rate_minimum_hosts,
                d.success_rate_minimum_hosts,
            ),
            success_rate_request_volume: num(
                &o.success_rate_request_volume,
                d.success_rate_request_volume,
            ),
            success_rate_stdev_factor: num(
                &o.success_rate_stdev_factor,
                d.success_rate_stdev_factor,
            ),
            failure_percentage_threshold: pct(
                &o.failure_percentage_threshold,
                d.failure_percentage_threshold,
                "failure_percentage_threshold",
            )?,
            enforcing_failure_percentage: pct(
                &o.enforcing_failure_percentage,
                d.enforcing_failure_percentage,
                "enforcing_failure_percentage",
            )?,
            enforcing_failure_percentage_local_origin: pct(
                &o.enforcing_failure_percentage_local_origin,
                d.enforcing_failure_percentage_local_origin,
                "enforcing_failure_percentage_local_origin",
            )?,
            failure_percentage_minimum_hosts: num(
                &o.failure_percentage_minimum_hosts,
                d.failure_percentage_minimum_hosts,
            ),
            failure_percentage_request_volume: num(
                &o.failure_percentage_request_volume,
                d.failure_percentage_request_volume,
            ),
        })
    }
}

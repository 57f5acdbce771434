//! Slow start (`round_robin_lb_config` / `least_request_lb_config`
//! `.slow_start_config`, Istio's DestinationRule `warmup`): a host added to a
//! running cluster gets a share of traffic that grows over the window, as
//! Envoy scales its weight: `max(min_weight, (t / window)^(1 / aggression))`.
//! Hosts of the cluster's first endpoint set start at full weight (Envoy does
//! not slow-start a new cluster). The scaling is applied by admission: a
//! picked host in slow start is kept with its weight factor as probability,
//! else the balancer picks again (a few times at most), which gives each
//! host a share proportional to its scaled weight with no per-pick state.

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3 as xds_cluster;
use tokio::time::Instant;

use crate::config::duration;
use crate::error::ConfigError;

/// Re-picks before a slow-starting pick is kept anyway.
pub const MAX_REPICKS: usize = 4;

#[derive(Debug, Clone, PartialEq)]
pub struct SlowStart {
    pub window: Duration,
    pub aggression: f64,
    /// 0..=1.
    pub min_weight: f64,
}

// The floats are checked finite when parsed, so equality is reflexive.
impl Eq for SlowStart {}

impl SlowStart {
    /// The weight factor of a host added `age` ago (1 once past the window).
    pub fn factor(&self, age: Duration) -> f64 {
        if age >= self.window || self.window.is_zero() {
            return 1.0;
        }
        let t = age.as_secs_f64() / self.window.as_secs_f64();
        t.powf(1.0 / self.aggression).max(self.min_weight)
    }

    /// Whether a pick of a host added at `since` is kept, for a random value.
    pub fn admits(&self, since: Option<Instant>, random: u64) -> bool {
        let Some(since) = since else { return true };
        let f = self.factor(since.elapsed());
        f >= 1.0 || (random % 1_000_000) as f64 / 1_000_000.0 < f
    }

    pub fn parse(c: &xds_cluster::cluster::SlowStartConfig) -> Result<SlowStart, ConfigError> {
        let window = match &c.slow_start_window {
            Some(d) => duration(d, "slow_start_window")?,
            None => return Err(ConfigError::new("slow_start_window", "required")),
        };
        let aggression = c.aggression.as_ref().map_or(1.0, |a| a.default_value);
        if !(aggression.is_finite() && aggression > 0.0) {
            return Err(ConfigError::new(
                "aggression.default_value",
                "must be above 0",
            ));
        }
        let min = c.min_weight_percent.as_ref().map_or(10.0, |p| p.value);
        if !(0.0..=100.0).contains(&min) {
            return Err(ConfigError::new(
                "min_weight_percent.value",
                "must be within 0..=100",
            ));
        }
        Ok(SlowStart {
            window,
            aggression,
            min_weight: min / 100.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ss() -> SlowStart {
        SlowStart {
            window: Duration::from_secs(60),
            aggression: 1.0,
            min_weight: 0.2,
        }
    }

    #[test]
    fn the_weight_grows_over_the_window_from_its_floor() {
        let s = ss();
        assert_eq!(s.factor(Duration::ZERO), 0.2);
        assert!((s.factor(Duration::from_secs(30)) - 0.5).abs() < 1e-9);
        assert_eq!(s.factor(Duration::from_secs(60)), 1.0);
        let aggressive = SlowStart {
            aggression: 2.0,
            ..ss()
        };
        assert!((aggressive.factor(Duration::from_secs(15)) - 0.5).abs() < 1e-9);
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_host_is_admitted_as_often_as_its_factor_says() {
        let s = ss();
        let since = Some(Instant::now());
        let admitted = |n: u64| (0..n).filter(|i| s.admits(since, i * 7919)).count();
        // At the start: the 20% floor.
        let share = admitted(10_000) as f64 / 10_000.0;
        assert!((share - 0.2).abs() < 0.02, "{share}");
        tokio::time::advance(Duration::from_secs(45)).await;
        let share = admitted(10_000) as f64 / 10_000.0;
        assert!((share - 0.75).abs() < 0.02, "{share}");
        tokio::time::advance(Duration::from_secs(15)).await;
        assert_eq!(admitted(100), 100);
        assert!(s.admits(None, 0), "first-set hosts are never slowed");
    }
}

//! The detector against Envoy's rules, on tokio's paused clock: sleeps
//! below advance virtual time only, and the interval timer runs on it.

use std::sync::Arc;
use std::time::Duration;

use super::Outcome;
use crate::config::cluster::{ClusterConfig, XdsCluster};
use crate::config::endpoint::Health;
use crate::config::transport::TransportSocket;
use crate::stats::Stats;
use crate::upstream::Host;
use crate::upstream::UpstreamAddr;
use crate::upstream::cluster::{ClusterRuntime, UpstreamCluster};

struct Fixture {
    stats: Arc<Stats>,
    _runtime: ClusterRuntime,
    cluster: UpstreamCluster,
}

impl Fixture {
    fn new(hosts: usize, extra: &str) -> Self {
        let yaml = format!("name: c\n{extra}");
        let xds: XdsCluster = xds::json::from_yaml(&yaml).expect("yaml");
        let config = Arc::new(ClusterConfig::try_from(&xds).expect("valid cluster"));
        let stats = Arc::new(Stats::default());
        let mut runtime = ClusterRuntime::new(&stats, "c");
        let endpoints: Vec<_> = (0..hosts)
            .map(|i| {
                let addr: std::net::SocketAddr = format!("127.0.0.1:{}", 1000 + i).parse().unwrap();
                (
                    UpstreamAddr::from(addr),
                    1,
                    Health::Healthy,
                    TransportSocket::RawBuffer,
                    crate::upstream::priority::Placement::default(),
                )
            })
            .collect();
        let cluster = runtime.build(config, &endpoints, 140);
        Fixture {
            stats,
            _runtime: runtime,
            cluster,
        }
    }

    fn host(&self, i: usize) -> Arc<Host> {
        self.cluster.all[i].0.clone()
    }

    fn report(&self, i: usize, outcome: Outcome, times: usize) {
        let h = self.host(i);
        for _ in 0..times {
            self.cluster.report(&h, outcome);
        }
    }

    fn stat(&self, name: &str) -> i64 {
        self.stats
            .value(&format!("cluster.c.outlier_detection.{name}"))
            .unwrap_or_else(|| panic!("no stat {name}"))
    }

    fn routable(&self) -> usize {
        self.cluster.routable().hosts().count()
    }

    fn ejected(&self, i: usize) -> bool {
        self.host(i).outlier.is_ejected()
    }
}

const ALL_HOSTS: &str =
    "outlier_detection: {max_ejection_percent: 100, interval: 1s, base_ejection_time: 10s}\n";

#[tokio::test(start_paused = true)]
async fn five_consecutive_5xx_eject_and_a_success_resets_the_count() {
    let f = Fixture::new(3, ALL_HOSTS);
    f.report(0, Outcome::Status(503), 4);
    f.report(0, Outcome::Status(200), 1);
    f.report(0, Outcome::Status(500), 4);
    assert!(!f.ejected(0), "a 200 in between resets the count");
    f.report(0, Outcome::Status(500), 1);
    assert!(f.ejected(0), "ejected at once on the fifth");
    assert_eq!(f.routable(), 2);
    assert!(
        f.cluster
            .routable()
            .hosts()
            .all(|h| !Arc::ptr_eq(h, &f.host(0)))
    );
    assert_eq!(f.stat("ejections_active"), 1);
    assert_eq!(f.stat("ejections_total"), 1);
    assert_eq!(f.stat("ejections_enforced_total"), 1);
    assert_eq!(f.stat("ejections_detected_consecutive_5xx"), 1);
    assert_eq!(f.stat("ejections_enforced_consecutive_5xx"), 1);
    // The same failures also count as gateway failures, but that check is
    // not enforced by default (enforcing_consecutive_gateway_failure 0).
    assert_eq!(f.stat("ejections_enforced_consecutive_gateway_failure"), 0);
    assert_eq!(
        f.stats.value("cluster.c.membership_healthy"),
        Some(2),
        "membership_healthy leaves ejected hosts out"
    );
}

#[tokio::test(start_paused = true)]
async fn gateway_failures_are_detected_but_enforced_only_when_asked() {
    let f = Fixture::new(
        3,
        "outlier_detection: {max_ejection_percent: 100, consecutive_5xx: 100, consecutive_gateway_failure: 3}\n",
    );
    f.report(0, Outcome::Status(502), 2);
    f.report(0, Outcome::Status(500), 1);
    f.report(0, Outcome::Status(504), 2);
    assert_eq!(
        f.stat("ejections_detected_consecutive_gateway_failure"),
        0,
        "a 500 is a 5xx but resets the gateway count"
    );
    f.report(0, Outcome::Status(503), 1);
    assert_eq!(f.stat("ejections_detected_consecutive_gateway_failure"), 1);
    assert_eq!(f.stat("ejections_enforced_consecutive_gateway_failure"), 0);
    assert!(
        !f.ejected(0),
        "enforcing_consecutive_gateway_failure defaults to 0"
    );

    let f = Fixture::new(
        3,
        "outlier_detection: {max_ejection_percent: 100, consecutive_5xx: 100, consecutive_gateway_failure: 3, enforcing_consecutive_gateway_failure: 100}\n",
    );
    f.report(1, Outcome::Status(503), 3);
    assert!(f.ejected(1));
    assert_eq!(f.stat("ejections_enforced_consecutive_gateway_failure"), 1);
    assert_eq!(
        f.stat("ejections_total"),
        0,
        "the deprecated total counts 5xx and success-rate only"
    );
}

#[tokio::test(start_paused = true)]
async fn local_origin_errors_count_as_5xx_unless_split() {
    let f = Fixture::new(3, ALL_HOSTS);
    f.report(0, Outcome::LocalOriginConnectFailed, 3);
    f.report(0, Outcome::LocalOriginConnectSuccess, 1);
    f.report(0, Outcome::LocalOriginTimeout, 2);
    assert!(
        f.ejected(0),
        "not split: 503/504 into the 5xx count, a connect success alone resets nothing"
    );
    assert_eq!(f.stat("ejections_enforced_consecutive_5xx"), 1);
    assert_eq!(
        f.stat("ejections_detected_consecutive_local_origin_failure"),
        0
    );

    let f = Fixture::new(
        3,
        "outlier_detection: {max_ejection_percent: 100, split_external_local_origin_errors: true}\n",
    );
    f.report(0, Outcome::LocalOriginConnectFailed, 4);
    f.report(0, Outcome::LocalOriginConnectSuccess, 1);
    f.report(0, Outcome::LocalOriginConnectFailed, 4);
    f.report(0, Outcome::Status(503), 4);
    assert!(
        !f.ejected(0),
        "split: a connect success resets, 5xx count apart"
    );
    f.report(0, Outcome::LocalOriginTimeout, 1);
    assert!(f.ejected(0));
    assert_eq!(
        f.stat("ejections_enforced_consecutive_local_origin_failure"),
        1
    );
    assert_eq!(f.stat("ejections_detected_consecutive_5xx"), 0);
}

#[tokio::test(start_paused = true)]
async fn ejection_time_is_base_times_ejections_and_shrinks_when_healthy() {
    let f = Fixture::new(3, ALL_HOSTS);
    let t0 = tokio::time::Instant::now();
    let at = |s: f64| tokio::time::sleep_until(t0 + Duration::from_secs_f64(s));
    at(0.5).await;
    f.report(0, Outcome::Status(503), 5);
    assert!(f.ejected(0));
    at(10.6).await;
    assert!(f.ejected(0), "10 s not yet up at the 10 s tick");
    at(11.1).await;
    assert!(!f.ejected(0), "returned by the first tick after 10 s");
    assert_eq!(f.stat("ejections_active"), 0);
    assert_eq!(f.routable(), 3);
    f.report(0, Outcome::Status(503), 4);
    assert!(!f.ejected(0), "counters reset on return");
    f.report(0, Outcome::Status(503), 1);
    assert!(f.ejected(0), "second ejection at 11.1 s: 20 s");
    at(31.0).await;
    assert!(f.ejected(0));
    at(32.1).await;
    assert!(!f.ejected(0));
    // Two healthy intervals bring the multiplier from 2 back to 0.
    at(34.5).await;
    f.report(0, Outcome::Status(503), 5);
    at(44.0).await;
    assert!(f.ejected(0));
    at(45.1).await;
    assert!(!f.ejected(0), "back to base time");
    assert_eq!(f.host(0).outlier.num_ejections(), 3);
}

#[tokio::test(start_paused = true)]
async fn ejection_time_is_capped_by_max_ejection_time() {
    let f = Fixture::new(
        3,
        "outlier_detection: {max_ejection_percent: 100, interval: 1s, base_ejection_time: 10s, max_ejection_time: 15s}\n",
    );
    let t0 = tokio::time::Instant::now();
    let at = |s: f64| tokio::time::sleep_until(t0 + Duration::from_secs_f64(s));
    at(0.5).await;
    f.report(0, Outcome::Status(503), 5);
    at(11.1).await;
    assert!(!f.ejected(0));
    f.report(0, Outcome::Status(503), 5);
    at(26.5).await;
    assert!(f.ejected(0), "15 s, not 20 s: still out at 26.5");
    at(27.1).await;
    assert!(!f.ejected(0), "back after 15 s");
}

#[tokio::test(start_paused = true)]
async fn max_ejection_percent_limits_ejections() {
    // Envoy: eject while 100 × (ejected + 1) / hosts ≤ max_ejection_percent.
    let f = Fixture::new(4, "outlier_detection: {max_ejection_percent: 25}\n");
    f.report(0, Outcome::Status(500), 5);
    f.report(1, Outcome::Status(500), 5);
    assert!(f.ejected(0));
    assert!(!f.ejected(1), "a second would be 50 %");
    assert_eq!(f.stat("ejections_overflow"), 1);
    assert_eq!(f.stat("ejections_detected_consecutive_5xx"), 2);

    let f = Fixture::new(3, "outlier_detection: {}\n");
    f.report(0, Outcome::Status(503), 5);
    assert!(!f.ejected(0), "default 10 % of 3 hosts allows none");
    assert_eq!(
        f.stat("ejections_overflow"),
        2,
        "as in Envoy, the unenforced gateway-failure detection overflows too"
    );

    let f = Fixture::new(3, "outlier_detection: {always_eject_one_host: true}\n");
    f.report(0, Outcome::Status(503), 5);
    f.report(1, Outcome::Status(503), 5);
    assert!(f.ejected(0), "always_eject_one_host allows one");
    assert!(!f.ejected(1));
}

#[tokio::test(start_paused = true)]
async fn panic_threshold_counts_ejected_hosts_as_unhealthy() {
    let f = Fixture::new(2, "outlier_detection: {max_ejection_percent: 100}\n");
    f.report(0, Outcome::Status(503), 5);
    assert_eq!(
        f.routable(),
        1,
        "50 % healthy is not below the 50 % threshold"
    );
    f.report(1, Outcome::Status(503), 5);
    assert!(f.ejected(1));
    assert_eq!(f.routable(), 2, "panic: balance over every host");

    let f = Fixture::new(
        2,
        "outlier_detection: {max_ejection_percent: 100}\ncommon_lb_config: {healthy_panic_threshold: {value: 0}}\n",
    );
    f.report(0, Outcome::Status(503), 5);
    f.report(1, Outcome::Status(503), 5);
    assert_eq!(f.routable(), 0, "threshold 0 disables panic mode");
    assert!(f.cluster.pick(None).is_none());
}

#[tokio::test(start_paused = true)]
async fn success_rate_ejects_the_outlier_on_the_interval() {
    let f = Fixture::new(
        5,
        "outlier_detection: {max_ejection_percent: 100, interval: 1s, consecutive_5xx: 1000}\n",
    );
    let t0 = tokio::time::Instant::now();
    for i in 0..5 {
        for n in 0..100 {
            let code = if i == 4 && n % 2 == 0 { 503 } else { 200 };
            f.report(i, Outcome::Status(code), 1);
        }
    }
    assert!(!f.ejected(4), "success rate is judged on the interval");
    tokio::time::sleep_until(t0 + Duration::from_millis(1100)).await;
    assert_eq!(f.stat("ejections_detected_success_rate"), 1);
    assert!(f.ejected(4));
    assert_eq!(f.stat("ejections_enforced_success_rate"), 1);
    assert!((0..4).all(|i| !f.ejected(i)));

    let f = Fixture::new(
        5,
        "outlier_detection: {max_ejection_percent: 100, interval: 1s, consecutive_5xx: 1000, enforcing_success_rate: 0}\n",
    );
    for i in 0..5 {
        for n in 0..100 {
            let code = if i == 4 && n % 2 == 0 { 503 } else { 200 };
            f.report(i, Outcome::Status(code), 1);
        }
    }
    tokio::time::sleep_until(t0 + Duration::from_millis(2300)).await;
    assert!(!f.ejected(4), "Istio's enforcing_success_rate: 0");
    assert_eq!(f.stat("ejections_detected_success_rate"), 1);
}

#[test]
fn config_defaults_and_refusals() {
    let c: XdsCluster =
        xds::json::from_yaml("name: c\noutlier_detection: {base_ejection_time: 400s}").unwrap();
    let o = ClusterConfig::try_from(&c).unwrap().outlier.unwrap();
    assert_eq!(o.consecutive_5xx, 5);
    assert_eq!(o.enforcing_consecutive_gateway_failure, 0);
    assert_eq!(o.interval, Duration::from_secs(10));
    assert_eq!(
        o.max_ejection_time,
        Duration::from_secs(400),
        "unset max: the larger of 300 s and base"
    );
    for (yaml, err) in [
        (
            "outlier_detection: {max_ejection_percent: 101}",
            "outlier_detection.max_ejection_percent: value must be less than or equal to 100",
        ),
        (
            "outlier_detection: {base_ejection_time: 30s, max_ejection_time: 10s}",
            "outlier_detection.max_ejection_time: cannot be smaller than base_ejection_time",
        ),
        (
            "outlier_detection: {interval: 0s}",
            "outlier_detection.interval: value must be greater than 0s",
        ),
        (
            "outlier_detection: {detect_degraded_hosts: true}",
            "outlier_detection.detect_degraded_hosts: unsupported field",
        ),
    ] {
        let c: XdsCluster = xds::json::from_yaml(&format!("name: c\n{yaml}")).unwrap();
        assert_eq!(ClusterConfig::try_from(&c).unwrap_err().to_string(), err);
    }
}

#[tokio::test(start_paused = true)]
async fn an_ejection_rebuilds_the_consistent_hash_table_with_the_hosts() {
    for policy in ["lb_policy: RING_HASH\n", "lb_policy: MAGLEV\n"] {
        let f = Fixture::new(3, &format!("{policy}{ALL_HOSTS}"));
        let hash = |k: u64| xxhash_rust::xxh64::xxh64(&k.to_le_bytes(), 0);
        let before: Vec<_> = (0..300)
            .map(|k| f.cluster.pick_hashed(None, Some(hash(k))).unwrap())
            .collect();
        assert!(before.iter().any(|h| Arc::ptr_eq(h, &f.host(0))));
        f.report(0, Outcome::Status(503), 5);
        assert!(f.ejected(0), "{policy}");
        let mut stayed = 0;
        for (k, b) in before.iter().enumerate() {
            let now = f.cluster.pick_hashed(None, Some(hash(k as u64))).unwrap();
            assert!(
                !Arc::ptr_eq(&now, &f.host(0)),
                "{policy}: ejected host picked"
            );
            if Arc::ptr_eq(&now, b) {
                stayed += 1;
            }
        }
        // Keys of the other hosts mostly keep their host.
        assert!(stayed >= 150, "{policy}: only {stayed} of 300 stayed");
    }
}

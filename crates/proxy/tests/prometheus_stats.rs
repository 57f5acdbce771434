//! `/stats/prometheus`: Envoy's stats with Istio's tag names as labels,
//! counters, gauges and histograms, counted by real requests.

mod common;

use std::time::Duration;

use common::*;

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn requests_show_up_labelled_with_histograms() {
    let b = backend("b").await;
    let yaml = http_bootstrap(
        "prom",
        r#"- name: known
  domains: [known]
  routes:
  - name: default
    match: {prefix: /}
    route: {cluster: backend}"#,
        &[("backend", b.addr)],
    );
    let proxy = start_static(&yaml).await;
    let http = proxy.listener_addr("http").expect("listener");
    for _ in 0..3 {
        assert_eq!(get(http, "known", "/x", &[]).await.status, 200);
    }
    assert_eq!(get(http, "unknown", "/x", &[]).await.status, 404);

    // Histograms are recorded when each response body is done with.
    let want = r#"envoy_http_downstream_rq_time_count{http_conn_manager_prefix="prom"}"#;
    let mut text = String::new();
    for _ in 0..200 {
        let (status, body) = admin_get(proxy.admin_addr(), "/stats/prometheus").await;
        assert_eq!(status, 200);
        text = body;
        if sample(&text, want) == Some(4.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let c = r#"cluster_name="backend""#;
    let h = r#"http_conn_manager_prefix="prom""#;
    for (series, value) in [
        (format!("envoy_cluster_upstream_rq_total{{{c}}}"), 3.0),
        (
            format!("envoy_cluster_upstream_rq{{response_code=\"200\",{c}}}"),
            3.0,
        ),
        (
            format!("envoy_cluster_upstream_rq_xx{{response_code_class=\"2\",{c}}}"),
            3.0,
        ),
        (format!("envoy_cluster_upstream_rq_time_count{{{c}}}"), 3.0),
        (
            format!("envoy_cluster_upstream_rq_time_bucket{{{c},le=\"+Inf\"}}"),
            3.0,
        ),
        (
            format!("envoy_cluster_upstream_cx_connect_ms_count{{{c}}}"),
            1.0,
        ),
        (format!("envoy_cluster_membership_healthy{{{c}}}"), 1.0),
        (format!("envoy_http_downstream_rq_total{{{h}}}"), 4.0),
        (
            format!("envoy_http_downstream_rq_xx{{response_code_class=\"4\",{h}}}"),
            1.0,
        ),
        (format!("envoy_http_downstream_rq_completed{{{h}}}"), 4.0),
        (format!("envoy_http_downstream_rq_time_count{{{h}}}"), 4.0),
    ] {
        assert_eq!(sample(&text, &series), Some(value), "{series} in\n{text}");
    }
    for ty in [
        "# TYPE envoy_cluster_upstream_rq_total counter",
        "# TYPE envoy_cluster_membership_healthy gauge",
        "# TYPE envoy_cluster_upstream_rq_time histogram",
    ] {
        assert!(text.lines().any(|l| l == ty), "{ty} in\n{text}");
    }
    // The flat names keep working on /stats, histograms as quantiles.
    let (_, flat) = admin_get(proxy.admin_addr(), "/stats").await;
    assert!(
        flat.lines()
            .any(|l| l == "cluster.backend.upstream_rq_200: 3"),
        "{flat}"
    );
    assert!(
        flat.lines()
            .any(|l| l.starts_with("cluster.backend.upstream_rq_time: P0(nan,")),
        "{flat}"
    );
}

//! The fault filter on tokio's clock (time paused: a 30 s delay takes no
//! wall time) and its config errors: a bad per-route fault is NACKed with
//! its field path while the route table's last good version keeps routing.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use proxy::xds_sink::StoreSink;
use xds::client::ResourceSink;
use xds::type_url;

fn bootstrap(backend: std::net::SocketAddr, route_fault: &str) -> String {
    http_bootstrap(
        "faults",
        &format!(
            r#"- name: all
  domains: ["*"]
  routes:
  - match: {{prefix: /slow}}
    route: {{cluster: backend, timeout: 0s}}
    typed_per_filter_config:
      envoy.filters.http.fault:
        "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
        {route_fault}
  - match: {{prefix: /}}
    route: {{cluster: backend}}"#
        ),
        &[("backend", backend)],
    )
}

#[tokio::test(start_paused = true)]
async fn a_fault_delay_runs_on_tokios_clock() {
    let b = backend("b").await;
    let yaml = bootstrap(
        b.addr,
        "delay: {fixed_delay: 30s, percentage: {numerator: 100}}",
    );
    let proxy = start_static(&yaml).await;
    let http = proxy.listener_addr("http").expect("listener");
    let wall = std::time::Instant::now();
    let virtual_start = tokio::time::Instant::now();
    let r = get(http, "svc", "/slow", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "b"));
    assert!(
        virtual_start.elapsed() >= Duration::from_secs(30),
        "not delayed"
    );
    assert!(wall.elapsed() < Duration::from_secs(10), "a real sleep");
    // Other routes are not delayed.
    let before = tokio::time::Instant::now();
    assert_eq!(get(http, "svc", "/", &[]).await.status, 200);
    assert!(before.elapsed() < Duration::from_secs(30));
    let (_, stats) = admin_get(proxy.admin_addr(), "/stats").await;
    assert!(
        stats.contains("http.faults.fault.delays_injected: 1\n"),
        "{stats}"
    );
    assert!(
        stats.contains("http.faults.fault.active_faults: 0\n"),
        "{stats}"
    );
}

#[tokio::test]
async fn a_bad_route_fault_is_nacked_and_the_last_good_routes_stay() {
    let b = backend("b").await;
    let proxy = start_static(&bootstrap(
        b.addr,
        "abort: {http_status: 503, percentage: {numerator: 0}}",
    ))
    .await;
    let sink = StoreSink(proxy.store().clone());
    let rc = |status: u32| {
        let yaml = format!(
            "name: \"80\"\nvirtual_hosts:\n- name: all\n  domains: [\"*\"]\n  routes:\n  - match: {{prefix: /}}\n    route: {{cluster: backend}}\n    typed_per_filter_config:\n      envoy.filters.http.fault:\n        \"@type\": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault\n        abort: {{http_status: {status}, percentage: {{numerator: 100}}}}\n"
        );
        let msg: RouteConfiguration = xds::json::from_yaml(&yaml).expect("route");
        BTreeMap::from([("80".to_string(), xds::json::to_any(&msg))])
    };
    sink.apply(type_url::ROUTE, "1", &rc(418)).expect("good");
    let err = sink.apply(type_url::ROUTE, "2", &rc(700)).expect_err("bad");
    assert_eq!(
        err,
        "route 80: virtual_hosts[0].routes[0].typed_per_filter_config[envoy.filters.http.fault].abort.http_status: value must be inside range [200, 600)"
    );
    // Version 1 is still the one in force.
    let snapshot = proxy.store().load_full_snapshot();
    let route = &snapshot.routes["80"].virtual_hosts[0].routes[0];
    let fault = route.fault("envoy.filters.http.fault").expect("v1 fault");
    assert_eq!(
        fault.abort_for(0),
        Some(proxy::http::fault::AbortStatus::Http(
            http::StatusCode::IM_A_TEAPOT
        ))
    );
}

/// A route timeout on tokio's clock: a backend that never answers gets the
/// client Envoy's 504 (UT) after exactly the route's timeout of virtual time.
#[tokio::test(start_paused = true)]
async fn a_route_timeout_runs_on_tokios_clock() {
    let silent = silent_backend().await;
    let proxy = start_static(&http_bootstrap(
        "timeouts",
        r#"- name: all
  domains: ["*"]
  routes:
  - match: {prefix: /}
    route: {cluster: silent, timeout: 7s}"#,
        &[("silent", silent)],
    ))
    .await;
    let http = proxy.listener_addr("http").expect("listener");
    let wall = std::time::Instant::now();
    let start = tokio::time::Instant::now();
    let r = get(http, "svc", "/", &[]).await;
    assert_eq!(r.status, 504);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(7) && waited < Duration::from_secs(8),
        "{waited:?}"
    );
    assert!(wall.elapsed() < Duration::from_secs(5), "a real wait");
    let (_, stats) = admin_get(proxy.admin_addr(), "/stats").await;
    assert!(
        stats.contains("cluster.silent.upstream_rq_timeout: 1\n"),
        "{stats}"
    );
}

//! A static bootstrap (no control plane): HCM with an inline route_config in
//! front of STATIC clusters of tiny hyper backends, tcp_proxy, h2c both ways,
//! admin pages, and refusal of config outside the subset.

mod common;

use std::net::SocketAddr;

use common::*;
use proxy::{Proxy, ProxyOptions};

fn cluster(name: &str, addrs: &[SocketAddr], extra: &str) -> String {
    let eps: Vec<String> = addrs
        .iter()
        .map(|a| {
            format!(
                "{{endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}}}",
                a.ip(),
                a.port()
            )
        })
        .collect();
    format!(
        "  - name: {name}\n    type: STATIC\n    connect_timeout: 1s\n{extra}    load_assignment: {{cluster_name: {name}, endpoints: [{{lb_endpoints: [{}]}}]}}\n",
        eps.join(", ")
    )
}

const H2_OPTIONS: &str = "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config: {http2_protocol_options: {}}\n";

const ROUTES: &str = r#"
            virtual_hosts:
            - name: backend
              domains: ["*"]
              routes:
              - match: {path: /exact}
                route: {cluster: b}
              - match: {safe_regex: {regex: "/re/[0-9]+"}}
                route: {cluster: b}
              - match:
                  prefix: /
                  headers: [{name: end-user, string_match: {exact: jason}}]
                route: {cluster: b}
              - match:
                  prefix: /
                  query_parameters: [{name: v, string_match: {exact: "2"}}]
                route: {cluster: b}
              - match: {prefix: /weighted}
                route: {weighted_clusters: {clusters: [{name: a, weight: 90}, {name: b, weight: 10}]}}
              - match: {prefix: /rr}
                route: {cluster: ab}
              - match: {prefix: /empty}
                route: {cluster: empty}
              - match: {prefix: /h2up}
                route: {cluster: h2}
              - match: {prefix: /missing}
                route: {cluster: no-such-cluster}
              - match: {prefix: /slow}
                route: {cluster: silent, timeout: 0.2s}
              - match: {prefix: /dns}
                route: {cluster: dns}
              - match: {prefix: /ws}
                route: {cluster: ws}
              - match: {prefix: /a}
                route: {cluster: a}
"#;

struct Setup {
    proxy: Proxy,
    a: Backend,
    b: Backend,
}

async fn setup() -> Setup {
    let a = backend("a").await;
    let b = backend("b").await;
    let c = backend("c").await;
    let echo = tcp_echo().await;
    let ws = upgrade_echo_backend().await;
    let silent = silent_backend().await;
    let yaml = format!(
        r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}}}
static_resources:
  listeners:
  - name: http
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_http
          normalize_path: true
          upgrade_configs: [{{upgrade_type: websocket}}]
          merge_slashes: true
          http_filters: [{{name: envoy.filters.http.router, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]
          route_config:
            name: local
            validate_clusters: false
{ROUTES}
  - name: sniff-strict
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    listener_filters_timeout: 0.1s
    listener_filters:
    - name: envoy.filters.listener.http_inspector
      typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector}}
    default_filter_chain:
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: raw, cluster: echo}}
  - name: sniff
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    listener_filters_timeout: 0.1s
    continue_on_listener_filters_timeout: true
    listener_filters:
    - name: envoy.filters.listener.http_inspector
      typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector}}
    filter_chains:
    - filter_chain_match: {{application_protocols: [http/1.1, h2c]}}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: sniffed
          http_filters: [{{name: envoy.filters.http.router, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]
          route_config: {{name: s, virtual_hosts: [{{name: v, domains: ["*"], routes: [{{match: {{prefix: /}}, route: {{cluster: a}}}}]}}]}}
    default_filter_chain:
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: raw, cluster: echo}}
  - name: tcp
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: tcp, cluster: echo}}
  clusters:
{}{}{}{}{}{}{}{}  - name: dns
    type: STRICT_DNS
    dns_lookup_family: V4_ONLY
    load_assignment: {{cluster_name: dns, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: localhost, port_value: {}}}}}}}}}]}}]}}
"#,
        cluster("a", &[a.addr], ""),
        cluster("b", &[b.addr], ""),
        cluster("ab", &[a.addr, b.addr], ""),
        cluster("empty", &[], ""),
        cluster("h2", &[c.addr], H2_OPTIONS),
        cluster("echo", &[echo], ""),
        cluster("ws", &[ws], ""),
        cluster("silent", &[silent], ""),
        b.addr.port(),
    );
    // The cached pool of `xds::json` keeps the many setups fast.
    let bootstrap = xds::json::from_yaml(&yaml).expect("bootstrap parses");
    let opts = ProxyOptions {
        ready_port: Some(0),
        ..ProxyOptions::default()
    };
    let proxy = Proxy::start(bootstrap, &opts).await.expect("proxy starts");
    Setup { proxy, a, b }
}

#[tokio::test]
async fn route_matches_pick_the_right_cluster() {
    let s = setup().await;
    let addr = s.proxy.listener_addr("http").unwrap();
    let mut c = H1::connect(addr).await;
    assert_eq!(c.get("x", "/a", &[]).await.body, "a");
    assert_eq!(c.get("x", "/exact", &[]).await.body, "b");
    assert_eq!(c.get("x", "/exact/not", &[]).await.status, 404);
    assert_eq!(c.get("x", "/re/42", &[]).await.body, "b");
    assert_eq!(c.get("x", "/a/x", &[("end-user", "jason")]).await.body, "b");
    assert_eq!(c.get("x", "/a?v=2", &[]).await.body, "b");
    assert_eq!(c.get("x", "/a?v=3", &[]).await.body, "a");
    let r = c.get("reviews:9080", "/a", &[]).await;
    assert_eq!(
        r.headers["x-seen-host"], "reviews:9080",
        "Host is kept as sent"
    );
    assert_eq!(
        r.headers["x-seen-request-id"].len(),
        36,
        "x-request-id generated"
    );
    let r = c.get("x", "/a", &[("x-request-id", "abc")]).await;
    assert_eq!(r.headers["x-seen-request-id"], "abc");
    assert!(r.headers.contains_key("x-envoy-upstream-service-time"));
}

#[tokio::test]
async fn weighted_clusters_split_90_10() {
    let s = setup().await;
    let mut c = H1::connect(s.proxy.listener_addr("http").unwrap()).await;
    let mut to_a = 0;
    for _ in 0..2000 {
        if c.get("x", "/weighted", &[]).await.body == "a" {
            to_a += 1;
        }
    }
    let pct = to_a as f64 / 20.0;
    assert!((87.0..=93.0).contains(&pct), "{pct}% to a");
}

#[tokio::test]
async fn round_robin_alternates_and_pools_connections() {
    let s = setup().await;
    let mut c = H1::connect(s.proxy.listener_addr("http").unwrap()).await;
    let mut bodies = Vec::new();
    for _ in 0..6 {
        bodies.push(c.get("x", "/rr", &[]).await.body);
    }
    for pair in bodies.windows(2) {
        assert_ne!(pair[0], pair[1], "{bodies:?}");
    }
    let before = s.a.connections.load(std::sync::atomic::Ordering::SeqCst);
    for _ in 0..20 {
        c.get("x", "/a", &[]).await;
    }
    // Sequential requests reuse one upstream connection per cluster and host
    // (clusters `ab` and `a` both reach backend a, each with its own pool).
    assert_eq!(before, 1);
    assert_eq!(s.a.connections.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(s.b.connections.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(s.a.requests.load(std::sync::atomic::Ordering::SeqCst), 23);
}

#[tokio::test]
async fn local_replies_404_and_503() {
    let s = setup().await;
    let addr = s.proxy.listener_addr("http").unwrap();
    let r = get(addr, "x", "/nothing-matches", &[]).await;
    assert_eq!(r.status, 404);
    let r = get(addr, "x", "/empty", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (503, "no healthy upstream"));
    let r = get(addr, "x", "/missing", &[]).await;
    assert_eq!(r.status, 503);
}

#[tokio::test]
async fn tcp_proxy_round_trip() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = setup().await;
    let mut conn = tokio::net::TcpStream::connect(s.proxy.listener_addr("tcp").unwrap())
        .await
        .unwrap();
    conn.write_all(b"hello through the mesh").await.unwrap();
    let mut buf = [0u8; 22];
    conn.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hello through the mesh");
}

#[tokio::test]
async fn h2c_downstream_and_upstream() {
    let s = setup().await;
    let addr = s.proxy.listener_addr("http").unwrap();
    let r = get_h2(addr, "reviews:9080", "/a").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["x-seen-version"], "HTTP/1.1");
    assert_eq!(r.headers["x-seen-host"], "reviews:9080");
    let r = get(addr, "ratings", "/h2up", &[]).await;
    assert_eq!(r.body, "c");
    assert_eq!(r.headers["x-seen-version"], "HTTP/2.0");
    assert_eq!(
        r.headers["x-seen-host"], "ratings",
        ":authority carries Host"
    );
    let r = get_h2(addr, "ratings", "/h2up").await;
    assert_eq!(
        (r.status, r.headers["x-seen-version"].to_str().unwrap()),
        (200, "HTTP/2.0")
    );
}

#[tokio::test]
async fn admin_pages() {
    let s = setup().await;
    let addr = s.proxy.listener_addr("http").unwrap();
    get(addr, "x", "/a", &[]).await;
    let admin = s.proxy.admin_addr();
    assert_eq!(
        admin_get(admin, "/ready").await,
        (200, "LIVE\n".to_string())
    );
    let ready = s.proxy.ready_addr().unwrap();
    let ready = SocketAddr::from(([127, 0, 0, 1], ready.port()));
    assert_eq!(admin_get(ready, "/healthz/ready").await.0, 200);
    let (_, stats) = admin_get(admin, "/stats").await;
    assert!(
        stats.contains("http.ingress_http.downstream_rq_total: 1\n"),
        "{stats}"
    );
    assert!(
        stats.contains("cluster.a.upstream_rq_total: 1\n"),
        "{stats}"
    );
    assert!(stats.contains("cluster.a.upstream_rq_2xx: 1\n"), "{stats}");
    assert!(stats.contains("cluster.a.upstream_rq_200: 1\n"), "{stats}");
    assert!(
        stats.contains("listener.127.0.0.1_0.downstream_cx_total: 1\n"),
        "{stats}"
    );
    let (_, clusters) = admin_get(admin, "/clusters").await;
    assert!(
        clusters.contains(&format!("a::{}::rq_total::1\n", s.a.addr)),
        "{clusters}"
    );
    assert!(
        clusters.contains(&format!("b::{}::health_flags::healthy\n", s.b.addr)),
        "{clusters}"
    );
    let (_, dump) = admin_get(admin, "/config_dump").await;
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    let clusters = &dump["configs"][1];
    assert_eq!(
        clusters["@type"],
        "type.googleapis.com/envoy.admin.v3.ClustersConfigDump"
    );
    assert_eq!(clusters["static_clusters"][0]["cluster"]["name"], "a");
}

#[tokio::test]
async fn unsupported_config_is_refused_with_its_path() {
    let yaml = r#"
static_resources:
  listeners:
  - name: l
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.redis_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy
          stat_prefix: r
"#;
    let bootstrap = proxy::bootstrap::parse(yaml, false).unwrap();
    let err = Proxy::start(
        bootstrap,
        &ProxyOptions {
            ready_port: None,
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config: unsupported type envoy.extensions.filters.network.redis_proxy.v3.RedisProxy"
    );
    let yaml = "static_resources:\n  clusters:\n  - {name: c, type: STATIC, lb_policy: MAGLEV, maglev_lb_config: {table_size: 100}}\n";
    let bootstrap = proxy::bootstrap::parse(yaml, false).unwrap();
    let err = Proxy::start(
        bootstrap,
        &ProxyOptions {
            ready_port: None,
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "static_resources.clusters[0].maglev_lb_config.table_size: must be a prime of at most 5000011, not 100"
    );
}

#[tokio::test]
async fn inline_routes_to_unknown_clusters_are_refused() {
    let yaml = r#"
static_resources:
  listeners:
  - name: l
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - filters:
      - name: hcm
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: s
          http_filters: [{name: envoy.filters.http.router, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}]
          route_config:
            virtual_hosts: [{name: v, domains: ["*"], routes: [{match: {prefix: /}, route: {cluster: nope}}]}]
"#;
    let bootstrap = proxy::bootstrap::parse(yaml, false).unwrap();
    let opts = ProxyOptions {
        ready_port: None,
        ..Default::default()
    };
    let err = Proxy::start(bootstrap, &opts).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0].routes[0].route: unknown cluster 'nope'"
    );
}

#[tokio::test]
async fn http10_gets_426_and_paths_are_normalized() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = setup().await;
    let addr = s.proxy.listener_addr("http").unwrap();
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /a HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    conn.read_to_string(&mut out).await.unwrap();
    assert!(
        out.starts_with("HTTP/1.0 426") || out.starts_with("HTTP/1.1 426"),
        "{out}"
    );
    let r = get(addr, "x", "//a/./b/../%7Ex?q=//y", &[]).await;
    assert_eq!(r.body, "a");
    assert_eq!(r.headers["x-seen-path"], "/a/~x?q=//y");
}

#[tokio::test]
async fn websocket_upgrade_passes_through() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = setup().await;
    let addr = s.proxy.listener_addr("http").unwrap();
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        conn.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    conn.write_all(b"ping frames").await.unwrap();
    let mut buf = [0u8; 11];
    conn.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping frames");
}

#[tokio::test]
async fn http_inspector_selects_chain_by_application_protocol() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = setup().await;
    let addr = s.proxy.listener_addr("sniff").unwrap();
    assert_eq!(get(addr, "x", "/", &[]).await.body, "a");
    assert_eq!(get_h2(addr, "x", "/").await.body, "a");
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"\x16\x03\x01 not http at all")
        .await
        .unwrap();
    let mut buf = [0u8; 19];
    conn.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"\x16\x03\x01 not http at all");

    // A silent client: after listener_filters_timeout, `sniff` carries on
    // (default chain, tcp_proxy to echo) while `sniff-strict` closes.
    let mut quiet = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    quiet.write_all(b"late").await.unwrap();
    let mut buf = [0u8; 4];
    quiet.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"late");
    let strict = s.proxy.listener_addr("sniff-strict").unwrap();
    let mut quiet = tokio::net::TcpStream::connect(strict).await.unwrap();
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), quiet.read(&mut buf))
        .await
        .expect("closed after the listener filter timeout")
        .unwrap_or(0);
    assert_eq!(n, 0);
}

#[tokio::test]
async fn route_timeout_gives_504_and_strict_dns_resolves() {
    let s = setup().await;
    let addr = s.proxy.listener_addr("http").unwrap();
    let r = get(addr, "x", "/slow", &[]).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (504, "upstream request timeout")
    );
    assert_eq!(get(addr, "x", "/dns", &[]).await.body, "b");
}

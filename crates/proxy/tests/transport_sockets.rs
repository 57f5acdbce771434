//! Transport sockets on filter chains and clusters: raw_buffer (explicit, or
//! picked per endpoint by transport_socket_matches on its
//! `envoy.transport_socket_match` metadata, as Istio sends for `tlsMode`)
//! carries traffic; a TLS socket without its context is refused with its
//! path (TLS itself: tests/mtls.rs).

mod common;

use common::*;

fn bootstrap(backend: std::net::SocketAddr, cluster_socket: &str) -> String {
    format!(
        r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}}}
static_resources:
  listeners:
  - name: http
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - transport_socket: {{name: envoy.transport_sockets.raw_buffer, typed_config: {{"@type": type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer}}}}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ts
          http_filters: [{{name: envoy.filters.http.router, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]
          route_config:
            virtual_hosts: [{{name: all, domains: ["*"], routes: [{{match: {{prefix: /}}, route: {{cluster: backend}}}}]}}]
  clusters:
  - name: backend
    type: STATIC
    connect_timeout: 1s
    {cluster_socket}
    transport_socket_matches:
    - name: tlsMode-istio
      match: {{tlsMode: istio}}
      transport_socket: {{name: envoy.transport_sockets.raw_buffer}}
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}
          metadata: {{filter_metadata: {{envoy.transport_socket_match: {{tlsMode: istio}}, istio: {{workload: b}}}}}}
"#,
        port = backend.port()
    )
}

#[tokio::test]
async fn raw_buffer_carries_traffic_and_an_untyped_tls_socket_is_refused_with_its_path() {
    let b = backend("b").await;
    let proxy = start_static(&bootstrap(
        b.addr,
        "transport_socket: {name: envoy.transport_sockets.raw_buffer}",
    ))
    .await;
    let http = proxy.listener_addr("http").expect("listener");
    let r = get(http, "svc", "/", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "b"));

    let yaml = bootstrap(
        b.addr,
        "transport_socket: {name: envoy.transport_sockets.tls}",
    );
    let refused = proxy::Proxy::start(
        xds::json::from_yaml(&yaml).expect("bootstrap"),
        &proxy::ProxyOptions {
            ready_port: None,
            ..proxy::ProxyOptions::default()
        },
    )
    .await;
    let Err(err) = refused else {
        panic!("a TLS transport socket was accepted");
    };
    let err = err.to_string();
    assert!(
        err.contains(
            "transport_socket.name: unsupported transport socket envoy.transport_sockets.tls"
        ),
        "{err}"
    );
}

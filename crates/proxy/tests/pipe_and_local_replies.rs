//! What Istio's own files need from the data path beyond forwarding to IPs:
//! endpoints on Unix domain sockets (`pipe` addresses, from `unix://`
//! ServiceEntry endpoints) reached over HTTP and tcp_proxy, and routes that
//! answer locally (`redirect`, `direct_response`).

mod common;

use std::path::Path;

use common::*;
use proxy::{Proxy, ProxyOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

/// An HTTP/1.1 backend on a Unix socket: answers `pipe:PATH` to every request.
fn unix_http_backend(path: &Path) {
    let listener = UnixListener::bind(path).expect("bind unix socket");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                loop {
                    let Ok(n) = s.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&seen[..end]).to_string();
                        seen.drain(..end + 4);
                        let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                        let body = format!("pipe:{path}");
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if s.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
}

/// A byte echo on a Unix socket.
fn unix_echo(path: &Path) {
    let listener = UnixListener::bind(path).expect("bind unix socket");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
}

#[tokio::test]
async fn pipe_endpoints_redirects_and_direct_responses() {
    let dir = tempfile::tempdir().unwrap();
    let http_sock = dir.path().join("http.sock");
    let echo_sock = dir.path().join("echo.sock");
    unix_http_backend(&http_sock);
    unix_echo(&echo_sock);
    let router = r#"http_filters: [{name: envoy.filters.http.router, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}]"#;
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
          {router}
          route_config:
            name: local
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: /old, headers: [{{name: testredirect, string_match: {{exact: enabled}}}}]}}
                redirect: {{path_redirect: /new/path, host_redirect: redirect2.test.istio.io}}
              - match: {{prefix: /moved}}
                redirect: {{https_redirect: true, response_code: PERMANENT_REDIRECT}}
              - match: {{prefix: /direct}}
                direct_response: {{status: 418, body: {{inline_string: "short and stout"}}}}
              - match: {{prefix: /}}
                route: {{cluster: unix-http}}
  - name: tcp
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: tcp, cluster: unix-echo}}
  clusters:
  - name: unix-http
    type: STATIC
    connect_timeout: 1s
    load_assignment: {{cluster_name: unix-http, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{pipe: {{path: "{http}"}}}}}}}}]}}]}}
  - name: unix-echo
    type: STATIC
    connect_timeout: 1s
    load_assignment: {{cluster_name: unix-echo, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{pipe: {{path: "{echo}"}}}}}}}}]}}]}}
"#,
        http = http_sock.display(),
        echo = echo_sock.display(),
    );
    let bootstrap = xds::json::from_yaml(&yaml).expect("bootstrap parses");
    let opts = ProxyOptions {
        ready_port: Some(0),
        ..ProxyOptions::default()
    };
    let proxy = Proxy::start(bootstrap, &opts).await.expect("proxy starts");
    let http = proxy.listener_addr("http").unwrap();

    let r = get(http, "example.unix.local:8001", "/hello", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "pipe:/hello"));

    let r = get(
        http,
        "redirect.test.istio.io:8080",
        "/old?q=1",
        &[("testredirect", "enabled")],
    )
    .await;
    assert_eq!(r.status, 301);
    assert_eq!(
        r.headers["location"],
        "http://redirect2.test.istio.io:8080/new/path?q=1"
    );
    let r = get(http, "a.example", "/moved/x", &[]).await;
    assert_eq!(r.status, 308);
    assert_eq!(r.headers["location"], "https://a.example/moved/x");

    let r = get(http, "x", "/direct", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (418, "short and stout"));

    let mut s = tokio::net::TcpStream::connect(proxy.listener_addr("tcp").unwrap())
        .await
        .unwrap();
    s.write_all(b"over a unix socket").await.unwrap();
    let mut buf = [0u8; 18];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"over a unix socket");
}

//! The CORS filter with Istio's per-route CorsPolicy: preflights answered
//! or forwarded, allow-origin on actual requests, nothing for requests
//! without an Origin. Compared header for header with a stock Envoy on the
//! same bootstrap.

mod common;

use std::net::SocketAddr;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

const POLICY: &str = r#"{"@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy, allow_origin_string_match: [{exact: "https://app.example"}, {prefix: "https://dev."}, {safe_regex: {regex: "https://[a-z]+\\.partner\\.example"}}], allow_methods: "GET,POST", allow_headers: "x-token,content-type", expose_headers: "x-backend", max_age: "600", allow_credentials: true, filter_enabled: {default_value: {numerator: 100}}, forward_not_matching_preflights: FORWARD}"#;

fn bootstrap(backend: SocketAddr) -> String {
    let yaml = http_bootstrap(
        "cors",
        &format!(
            r#"- name: all
  domains: ["*"]
  routes:
  - match: {{prefix: /strict}}
    route: {{cluster: backend}}
    typed_per_filter_config:
      envoy.filters.http.cors: {}
  - match: {{prefix: /}}
    route: {{cluster: backend}}
    response_headers_to_add: [{{header: {{key: x-route, value: "1"}}}}]
    typed_per_filter_config:
      envoy.filters.http.cors: {}"#,
            POLICY.replace("FORWARD", "false"),
            POLICY.replace("FORWARD", "true"),
        ),
        &[("backend", backend)],
    );
    // The CORS filter before the router, as Istio orders it.
    yaml.replace(
        "          - {name: envoy.filters.http.router,",
        "          - {name: envoy.filters.http.cors, typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors}}\n          - {name: envoy.filters.http.router,",
    )
}

/// Status, whether the backend answered, and every access-control and
/// route header of the response.
type Seen = (u16, bool, Vec<(String, String)>);

async fn send(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Seen {
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "svc");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = tx
        .send_request(req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let from_backend = resp.headers().contains_key("x-backend");
    let mut cors: Vec<(String, String)> = resp
        .headers()
        .iter()
        .filter(|(k, _)| k.as_str().starts_with("access-control-") || k.as_str() == "x-route")
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
        .collect();
    cors.sort();
    let _ = resp.into_body().collect().await;
    (status, from_backend, cors)
}

async fn cases(addr: SocketAddr) -> Vec<Seen> {
    let preflight = |origin| {
        [
            ("origin", origin),
            ("access-control-request-method", "POST"),
        ]
    };
    vec![
        send(addr, "OPTIONS", "/", &preflight("https://app.example")).await,
        send(addr, "OPTIONS", "/", &preflight("https://dev.team.example")).await,
        send(addr, "OPTIONS", "/", &preflight("https://evil.example")).await,
        send(
            addr,
            "OPTIONS",
            "/strict",
            &preflight("https://evil.example"),
        )
        .await,
        send(
            addr,
            "OPTIONS",
            "/strict",
            &preflight("https://acme.partner.example"),
        )
        .await,
        send(addr, "GET", "/", &[("origin", "https://app.example")]).await,
        send(addr, "GET", "/", &[("origin", "https://evil.example")]).await,
        send(addr, "GET", "/", &[]).await,
        send(addr, "OPTIONS", "/", &[("origin", "https://app.example")]).await,
    ]
}

#[tokio::test]
async fn cors_preflights_and_actual_requests_match_envoy() {
    let b = backend("b").await;
    let yaml = bootstrap(b.addr);
    let proxy = start_static(&yaml).await;
    let ours = cases(proxy.listener_addr("http").unwrap()).await;
    let allowed_preflight = |origin: &str| -> Seen {
        let mut h: Vec<(String, String)> = [
            ("access-control-allow-credentials", "true"),
            ("access-control-allow-headers", "x-token,content-type"),
            ("access-control-allow-methods", "GET,POST"),
            ("access-control-allow-origin", origin),
            ("access-control-expose-headers", "x-backend"),
            ("access-control-max-age", "600"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        h.sort();
        (200, false, h)
    };
    let routed = |extra: &[(&str, &str)]| -> Seen {
        let mut h: Vec<(String, String)> = extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .chain([("x-route".to_string(), "1".to_string())])
            .collect();
        h.sort();
        (200, true, h)
    };
    assert_eq!(ours[0], allowed_preflight("https://app.example"));
    assert_eq!(ours[1], allowed_preflight("https://dev.team.example"));
    assert_eq!(ours[2], routed(&[]), "a disallowed preflight is forwarded");
    // Or answered with the policy's lists but no allow-origin.
    let mut bare = allowed_preflight("-").2;
    bare.retain(|(k, _)| {
        k != "access-control-allow-origin" && k != "access-control-expose-headers"
    });
    assert_eq!(
        ours[3],
        (200, false, bare),
        "or answered without an allow-origin"
    );
    assert_eq!(ours[4], allowed_preflight("https://acme.partner.example"));
    assert_eq!(
        ours[5],
        routed(&[
            ("access-control-allow-credentials", "true"),
            ("access-control-allow-origin", "https://app.example"),
            ("access-control-expose-headers", "x-backend"),
        ])
    );
    assert_eq!(ours[6], routed(&[]));
    assert_eq!(ours[7], routed(&[]));
    assert_eq!(
        ours[8].0, 200,
        "OPTIONS without a request method is no preflight"
    );
    let (_, stats) = admin_get(proxy.admin_addr(), "/stats").await;
    assert!(
        stats.contains("http.cors.cors.origin_valid: 5\n"),
        "{stats}"
    );
    assert!(
        stats.contains("http.cors.cors.origin_invalid: 3\n"),
        "{stats}"
    );
    let Some(bin) = envoy::envoy_binary() else {
        eprintln!("no envoy binary: differential half skipped");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let e = envoy::start(&bin, &yaml, dir.path()).await;
    assert_eq!(cases(e.listener(Some("http")).await).await, ours);
    let envoy_stats = e.stats("cors.origin_").await;
    assert!(
        envoy_stats.contains(&("http.cors.cors.origin_valid".into(), 5)),
        "{envoy_stats:?}"
    );
}

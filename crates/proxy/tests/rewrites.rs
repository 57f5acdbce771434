//! Route rewrites (`prefix_rewrite`, `regex_rewrite`, `host_rewrite_literal`)
//! and gRPC timeouts (`max_grpc_timeout`, `grpc-timeout`): what the backend
//! sees through our proxy is what it sees through a stock Envoy on the same
//! bootstrap.

mod common;

use std::time::Duration;

use common::*;

fn bootstrap(backend: std::net::SocketAddr, hang: std::net::SocketAddr) -> String {
    http_bootstrap(
        "rewrites",
        r#"- name: all
  domains: ["*"]
  routes:
  - match: {prefix: /api/}
    route: {cluster: backend, prefix_rewrite: /v2/}
  - match: {prefix: /strip}
    route: {cluster: backend, prefix_rewrite: /}
  - match: {path: /exact}
    route: {cluster: backend, prefix_rewrite: /elsewhere}
  - match: {safe_regex: {regex: "/users/[0-9]+/profile"}}
    route: {cluster: backend, regex_rewrite: {pattern: {regex: "^/users/([0-9]+)/profile$"}, substitution: "/profiles/\\1"}}
  - match: {prefix: /host}
    route: {cluster: backend, host_rewrite_literal: rewritten.example}
  - match: {prefix: /grpc}
    route: {cluster: hang, timeout: 0s, max_grpc_timeout: 0s}
  - match: {prefix: /capped}
    route: {cluster: hang, timeout: 0s, max_grpc_timeout: 2s}
  - match: {prefix: /}
    route: {cluster: backend}"#,
        &[("backend", backend), ("hang", hang)],
    )
}

type Seen = (u16, String, String, String);

async fn seen(addr: std::net::SocketAddr) -> Vec<Seen> {
    let mut out = Vec::new();
    for path in [
        "/api/items?x=1",
        "/strip/me",
        "/stripped",
        "/exact?q",
        "/users/42/profile",
        "/host/x",
        "/plain",
    ] {
        let r = get(addr, "svc.local", path, &[]).await;
        let h = |n: &str| {
            r.headers
                .get(n)
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default()
        };
        out.push((
            r.status,
            h("x-seen-path"),
            h("x-seen-host"),
            h("x-seen-original-path"),
        ));
    }
    out
}

#[tokio::test]
async fn rewrites_reach_the_backend_as_through_envoy() {
    let b = backend("b").await;
    let yaml = bootstrap(b.addr, silent_backend().await);
    let proxy = start_static(&yaml).await;
    let ours = seen(proxy.listener_addr("http").unwrap()).await;
    let want: Vec<Seen> = [
        ("/v2/items?x=1", "svc.local", "/api/items?x=1"),
        // Envoy keeps the slash after the prefix: its documented `//etc`.
        ("//me", "svc.local", "/strip/me"),
        ("/ped", "svc.local", "/stripped"),
        ("/elsewhere?q", "svc.local", "/exact?q"),
        ("/profiles/42", "svc.local", "/users/42/profile"),
        ("/host/x", "rewritten.example", ""),
        ("/plain", "svc.local", ""),
    ]
    .into_iter()
    .map(|(p, h, o)| (200, p.to_string(), h.to_string(), o.to_string()))
    .collect();
    assert_eq!(ours, want);
    let Some(bin) = envoy::envoy_binary() else {
        eprintln!("no envoy binary: differential half skipped");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let e = envoy::start(&bin, &yaml, dir.path()).await;
    assert_eq!(seen(e.listener(Some("http")).await).await, ours);
}

/// `max_grpc_timeout: 0s`: a gRPC request's `grpc-timeout` is its timeout
/// (on tokio's clock here); a cap bounds it; plain HTTP keeps `timeout: 0s`.
#[tokio::test(start_paused = true)]
async fn grpc_timeout_headers_bound_grpc_requests() {
    let b = backend("b").await;
    let proxy = start_static(&bootstrap(b.addr, silent_backend().await)).await;
    let l = proxy.listener_addr("http").unwrap();
    let grpc = [("content-type", "application/grpc"), ("grpc-timeout", "3S")];
    let start = tokio::time::Instant::now();
    let r = get(l, "svc", "/grpc", &grpc).await;
    assert_eq!(r.status, 504);
    assert_eq!(start.elapsed().as_secs(), 3, "{:?}", start.elapsed());
    let start = tokio::time::Instant::now();
    let r = get(l, "svc", "/capped", &grpc).await;
    assert_eq!(r.status, 504);
    assert_eq!(
        start.elapsed().as_secs(),
        2,
        "capped: {:?}",
        start.elapsed()
    );
    // Without the header the cap is the timeout; without a cap, none.
    let start = tokio::time::Instant::now();
    let r = get(l, "svc", "/capped", &[("content-type", "application/grpc")]).await;
    assert_eq!((r.status, start.elapsed().as_secs()), (504, 2));
    let plain = tokio::time::timeout(Duration::from_secs(60), get(l, "svc", "/grpc", &[])).await;
    assert!(plain.is_err(), "plain HTTP has no timeout on this route");
}

//! Differential test against a stock Envoy: the same bootstrap runs in our
//! proxy and in `envoy`, the same requests go to both, and status, body and
//! what the backend saw must agree. Skipped when no Envoy binary is found
//! (`HALYARD_ENVOY`, `envoy` on PATH, or /work/cache/venv/bin/envoy).

mod common;

use std::net::SocketAddr;

use common::envoy::{self, envoy_binary};
use common::*;
use proxy::{Proxy, ProxyOptions};

fn bootstrap(a: SocketAddr, b: SocketAddr, closed: SocketAddr) -> String {
    let cluster = |name: &str, addr: Option<SocketAddr>| {
        let eps = addr.map_or(String::new(), |a| {
            format!(
                "{{endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}}}",
                a.ip(),
                a.port()
            )
        });
        format!(
            "  - name: {name}\n    type: STATIC\n    connect_timeout: 1s\n    load_assignment: {{cluster_name: {name}, endpoints: [{{lb_endpoints: [{eps}]}}]}}\n"
        )
    };
    format!(
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
          stat_prefix: conformance
          normalize_path: true
          merge_slashes: true
          http_filters: [{{name: envoy.filters.http.router, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]
          route_config:
            name: local
            validate_clusters: false
            virtual_hosts:
            - name: reviews
              domains: ["reviews", "reviews:9080", "reviews.default.svc.cluster.local"]
              routes:
              - match: {{path: /exact}}
                route: {{cluster: b}}
              - match: {{safe_regex: {{regex: "/re/[0-9]+"}}}}
                route: {{cluster: b}}
              - match: {{prefix: /CI, case_sensitive: false}}
                route: {{cluster: b}}
              - match:
                  prefix: /h
                  headers:
                  - {{name: end-user, string_match: {{exact: jason}}}}
                  - {{name: x-canary, present_match: true, invert_match: true}}
                route: {{cluster: b}}
              - match:
                  prefix: /h
                  headers: [{{name: x-version, string_match: {{prefix: v2}}, invert_match: true}}]
                route: {{cluster: b}}
              - match:
                  prefix: /q
                  query_parameters: [{{name: debug, present_match: true}}]
                route: {{cluster: b}}
              - match:
                  prefix: /q
                  query_parameters: [{{name: v, string_match: {{suffix: "-beta"}}}}]
                route: {{cluster: b}}
              - match:
                  prefix: /m
                  headers: [{{name: ":method", string_match: {{exact: POST}}}}]
                route: {{cluster: b}}
              - match: {{prefix: /nc}}
                route: {{cluster: no-such-cluster}}
              - match: {{prefix: /uh}}
                route: {{cluster: empty}}
              - match: {{prefix: /uf}}
                route: {{cluster: closed}}
              - match: {{prefix: /half-healthy}}
                route: {{cluster: half-healthy}}
              - match: {{prefix: /panic}}
                route: {{cluster: panic}}
              - match: {{prefix: /}}
                route: {{cluster: a}}
            - name: wildcard-suffix
              domains: ["*.example.com"]
              routes: [{{match: {{prefix: /}}, route: {{cluster: b}}}}]
            - name: wildcard-prefix
              domains: ["api.*"]
              routes: [{{match: {{prefix: /}}, route: {{cluster: a}}}}]
            - name: catch-all
              domains: ["*"]
              routes: [{{match: {{prefix: /only-here}}, route: {{cluster: a}}}}]
  clusters:
{}{}{}{}{}{}"#,
        health_cluster("half-healthy", a, "HEALTHY", b, "UNHEALTHY"),
        health_cluster("panic", a, "UNHEALTHY", b, "DRAINING"),
        cluster("a", Some(a)),
        cluster("b", Some(b)),
        cluster("empty", None),
        cluster("closed", Some(closed)),
    )
}

fn health_cluster(name: &str, a: SocketAddr, ha: &str, b: SocketAddr, hb: &str) -> String {
    let ep = |addr: SocketAddr, h: &str| {
        format!(
            "{{endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}, health_status: {h}}}",
            addr.ip(),
            addr.port()
        )
    };
    format!(
        "  - name: {name}\n    type: STATIC\n    connect_timeout: 1s\n    load_assignment: {{cluster_name: {name}, endpoints: [{{lb_endpoints: [{}, {}]}}]}}\n",
        ep(a, ha),
        ep(b, hb)
    )
}

async fn start_envoy(
    bin: &std::path::Path,
    yaml: &str,
    dir: &std::path::Path,
) -> (envoy::Envoy, SocketAddr) {
    let e = envoy::start(bin, yaml, dir).await;
    let addr = e.listener(None).await;
    (e, addr)
}

/// Host, path and extra headers of one request.
type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);

/// What a request produced, in the terms both must agree on.
fn summary(r: &Reply) -> String {
    let seen = |h: &str| {
        r.headers
            .get(h)
            .map_or("-".to_string(), |v| v.to_str().unwrap().to_string())
    };
    format!(
        "{} body={:?} path={} host={}",
        r.status,
        r.body,
        seen("x-seen-path"),
        seen("x-seen-host")
    )
}

#[tokio::test]
async fn routing_matches_stock_envoy() {
    let Some(bin) = envoy_binary() else {
        eprintln!("skipped: no envoy binary");
        return;
    };
    let a = backend("a").await;
    let b = backend("b").await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let yaml = bootstrap(a.addr, b.addr, closed);
    let dir = tempfile::tempdir().unwrap();
    let (_envoy, envoy_addr) = start_envoy(&bin, &yaml, dir.path()).await;
    let ours = Proxy::start(
        proxy::bootstrap::parse(&yaml, false).unwrap(),
        &ProxyOptions {
            ready_port: None,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let ours_addr = ours.listener_addr("http").unwrap();

    let cases: &[Case] = &[
        ("reviews", "/", &[]),
        ("reviews:9080", "/x", &[]),
        ("Reviews", "/x", &[]),
        ("reviews:1234", "/only-here", &[]),
        ("reviews:1234", "/elsewhere", &[]),
        ("a.example.com", "/", &[]),
        ("example.com", "/only-here", &[]),
        ("api.internal", "/", &[]),
        ("reviews", "/exact", &[]),
        ("reviews", "/exact?x=1", &[]),
        ("reviews", "/exact/", &[]),
        ("reviews", "/re/123", &[]),
        ("reviews", "/re/12x", &[]),
        ("reviews", "/ci/lower", &[]),
        ("reviews", "/h", &[("end-user", "jason")]),
        ("reviews", "/h", &[("end-user", "jason"), ("x-canary", "1")]),
        ("reviews", "/h", &[("x-version", "v2.1")]),
        ("reviews", "/h", &[("x-version", "v1")]),
        ("reviews", "/q?debug", &[]),
        ("reviews", "/q?v=1.0-beta", &[]),
        ("reviews", "/q?v=1.0", &[]),
        ("reviews", "/m", &[]),
        ("reviews", "//a/./b/../c//d?x=//y", &[]),
        ("reviews", "/a/%2E%2E/b%2Fc/%7Ex", &[]),
        ("reviews", "/nc", &[]),
        ("reviews", "/uh", &[]),
        ("reviews", "/uf", &[]),
        ("nowhere", "/", &[]),
    ];
    let mut ours_c = H1::connect(ours_addr).await;
    let mut envoy_c = H1::connect(envoy_addr).await;
    let mut diffs = Vec::new();
    for (host, path, headers) in cases {
        let theirs = summary(&envoy_c.get(host, path, headers).await);
        let mine = summary(&ours_c.get(host, path, headers).await);
        if std::env::var_os("HALYARD_CONFORMANCE_VERBOSE").is_some() {
            eprintln!("{host}{path} {headers:?}\n  envoy: {theirs}\n  ours:  {mine}");
        }
        if theirs != mine {
            diffs.push(format!(
                "{host}{path} {headers:?}\n  envoy: {theirs}\n  ours:  {mine}"
            ));
        }
    }
    assert!(
        diffs.is_empty(),
        "differences from Envoy:\n{}",
        diffs.join("\n")
    );
}

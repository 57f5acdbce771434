//! Differential test against a stock Envoy: the same bootstrap runs in our
//! proxy and in `envoy`, the same requests go to both, and status, body and
//! what the backend saw must agree. Skipped when no Envoy binary is found
//! (`HALYARD_ENVOY`, `envoy` on PATH, or /work/cache/venv/bin/envoy).

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use proxy::{Proxy, ProxyOptions};

fn envoy_binary() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("HALYARD_ENVOY") {
        return Some(PathBuf::from(p));
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("envoy"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let p = PathBuf::from("/work/cache/venv/bin/envoy");
        p.is_file().then_some(p)
    })
}

/// Kills the Envoy child when the test ends, pass or fail.
struct EnvoyProcess(Child);

impl Drop for EnvoyProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

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
    bin: &PathBuf,
    yaml: &str,
    dir: &std::path::Path,
) -> (EnvoyProcess, SocketAddr) {
    let config = dir.join("envoy.yaml");
    std::fs::write(&config, yaml).unwrap();
    let admin_path = dir.join("admin");
    let base_id = 10_000 + (std::process::id() % 50_000);
    let child = Command::new(bin)
        .args([
            "-c",
            config.to_str().unwrap(),
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "-l",
            "error",
        ])
        .args(["--base-id", &base_id.to_string()])
        .args(["--admin-address-path", admin_path.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("envoy starts");
    let envoy = EnvoyProcess(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    let admin: SocketAddr = loop {
        if let Ok(text) = std::fs::read_to_string(&admin_path)
            && let Ok(addr) = text.trim().parse()
        {
            break addr;
        }
        assert!(
            Instant::now() < deadline,
            "envoy did not write its admin address"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let listener = loop {
        let (status, body) = admin_get(admin, "/listeners?format=json").await;
        if status == 200
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&body)
            && let Some(sa) =
                v["listener_statuses"][0]["local_address"]["socket_address"].as_object()
            && sa["port_value"].as_u64().unwrap_or(0) != 0
        {
            let ip = sa["address"].as_str().unwrap();
            break SocketAddr::new(
                ip.parse().unwrap(),
                sa["port_value"].as_u64().unwrap() as u16,
            );
        }
        assert!(Instant::now() < deadline, "envoy listener not up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    (envoy, listener)
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

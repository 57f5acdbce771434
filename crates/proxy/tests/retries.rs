//! Route retry policies against failing backends: our proxy and a stock
//! Envoy run the same bootstrap and must agree on the outcome (status,
//! attempts seen upstream, backend hit counts, retry stats). Timing (per-try
//! timeouts, back-off) is checked on tokio's paused clock with our proxy.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// Requests seen, by (backend, path), with the attempt count each carried.
type Hits = Arc<Mutex<HashMap<(String, String), Vec<String>>>>;

/// A backend whose path (after the route's first segment) says how to fail:
/// `/ok` 200; `/503` always 503; `/fail/K/KEY` 503 for the first K requests
/// with that KEY (counted across every backend sharing `keys`), then 200
/// echoing the request body; `/reset` closes the connection without an
/// answer; `/hang/KEY` never answers the first request with that KEY.
struct Flaky {
    addr: SocketAddr,
}

async fn flaky(name: &'static str, hits: &Hits, keys: &Arc<Mutex<HashMap<String, u32>>>) -> Flaky {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (hits, keys) = (hits.clone(), keys.clone());
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let (hits, keys) = (hits.clone(), keys.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (hits, keys) = (hits.clone(), keys.clone());
                    async move { answer(name, req, &hits, &keys).await }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Flaky { addr }
}

async fn answer(
    name: &str,
    req: Request<Incoming>,
    hits: &Hits,
    keys: &Arc<Mutex<HashMap<String, u32>>>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let path = req.uri().path().to_string();
    let attempt = req
        .headers()
        .get("x-envoy-attempt-count")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    // With the other x-envoy-* headers that reached the backend.
    let mut envoy_headers: Vec<&str> = req
        .headers()
        .keys()
        .map(|k| k.as_str())
        .filter(|k| k.starts_with("x-envoy-") && *k != "x-envoy-attempt-count")
        .collect();
    envoy_headers.sort();
    hits.lock()
        .unwrap()
        .entry((name.to_string(), path.clone()))
        .or_default()
        .push(format!("{attempt}|{}", envoy_headers.join(",")));
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    let reply = |status: u16, body: Bytes| {
        let mut r = Response::new(Full::new(body));
        *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
        r.headers_mut().insert("x-backend", name.parse().unwrap());
        r.headers_mut()
            .insert("x-seen-attempt", attempt.parse().unwrap());
        Ok(r)
    };
    // The first segment picks the route (and its retry policy) in the proxy.
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').skip(1).collect();
    let seen = |key: &str| {
        let mut k = keys.lock().unwrap();
        let n = k.entry(key.to_string()).or_default();
        *n += 1;
        *n
    };
    match parts.as_slice() {
        ["503"] => reply(503, Bytes::new()),
        ["fail", k, key] => {
            if seen(key) <= k.parse::<u32>().unwrap() {
                reply(503, Bytes::new())
            } else {
                reply(200, body.unwrap_or_default())
            }
        }
        ["reset"] => Err(std::io::Error::other("reset on purpose")),
        ["hang", key] => {
            if seen(key) == 1 {
                std::future::pending::<()>().await;
            }
            reply(200, Bytes::from_static(b"late"))
        }
        _ => reply(200, Bytes::from(name.to_string())),
    }
}

/// One listener, one virtual host with a route per retry policy, and two
/// clusters: `mixed` (round robin over the endpoints given) and `bad`.
fn bootstrap(mixed: &[SocketAddr], bad: SocketAddr) -> String {
    let endpoints = |addrs: &[SocketAddr]| {
        addrs
            .iter()
            .map(|a| {
                format!(
                    "{{endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}}}",
                    a.ip(),
                    a.port()
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let predicate = r#"retry_host_predicate: [{name: envoy.retry_host_predicates.previous_hosts, typed_config: {"@type": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate}}], host_selection_retry_max_attempts: 5"#;
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
          stat_prefix: retries
          http_filters:
          - {{name: envoy.filters.http.router, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}
          route_config:
            name: local
            virtual_hosts:
            - name: all
              domains: ["*"]
              include_request_attempt_count: true
              include_attempt_count_in_response: true
              routes:
              - match: {{prefix: /bad/}}
                route:
                  cluster: bad
                  retry_policy: {{retry_on: "5xx", num_retries: 2}}
              - match: {{prefix: /istio/}}
                route:
                  cluster: mixed
                  retry_policy: {{retry_on: "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes", num_retries: 2, retriable_status_codes: [503], {predicate}}}
              - match: {{prefix: /five/}}
                route:
                  cluster: mixed
                  retry_policy: {{retry_on: "5xx", num_retries: 1, per_try_timeout: 0.3s, {predicate}}}
              - match: {{prefix: /none/}}
                route: {{cluster: mixed}}
  clusters:
  - name: mixed
    type: STATIC
    connect_timeout: 1s
    load_assignment: {{cluster_name: mixed, endpoints: [{{lb_endpoints: [{}]}}]}}
  - name: bad
    type: STATIC
    connect_timeout: 1s
    load_assignment: {{cluster_name: bad, endpoints: [{{lb_endpoints: [{}]}}]}}
"#,
        endpoints(mixed),
        endpoints(&[bad]),
    )
}

/// What one run through a proxy produced.
#[derive(Debug, Default, PartialEq)]
struct Outcome {
    statuses: Vec<u16>,
    /// The attempt count the client was told, per request.
    attempts: Vec<String>,
    /// Requests each backend saw.
    hits: Vec<(String, usize)>,
}

fn hit_counts(hits: &Hits) -> Vec<(String, usize)> {
    let mut by_backend: HashMap<String, usize> = HashMap::new();
    for ((b, _), v) in hits.lock().unwrap().iter() {
        *by_backend.entry(b.clone()).or_default() += v.len();
    }
    let mut out: Vec<_> = by_backend.into_iter().collect();
    out.sort();
    out
}

async fn run(listener: SocketAddr, path: &str, n: usize, hits: &Hits) -> Outcome {
    hits.lock().unwrap().clear();
    let mut out = Outcome::default();
    for i in 0..n {
        let p = path.replace("{i}", &i.to_string());
        let r = get(listener, "svc", &p, &[]).await;
        out.statuses.push(r.status);
        out.attempts.push(
            r.headers
                .get("x-envoy-attempt-count")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default(),
        );
    }
    out.hits = hit_counts(hits);
    out
}

/// A port with nothing listening (bound, then closed).
async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

struct Mesh {
    hits: Hits,
    keys: Arc<Mutex<HashMap<String, u32>>>,
    yaml: String,
}

async fn mesh(with_dead_endpoint: bool) -> Mesh {
    let hits = Hits::default();
    let keys = Arc::default();
    let good = flaky("good", &hits, &keys).await;
    let bad = flaky("bad", &hits, &keys).await;
    let mut mixed = vec![good.addr, bad.addr];
    if with_dead_endpoint {
        mixed = vec![good.addr, closed_port().await];
    }
    let yaml = bootstrap(&mixed, bad.addr);
    Mesh { hits, keys, yaml }
}

/// Both proxies on one bootstrap: ours, and Envoy when there is one.
async fn both(
    m: &Mesh,
    case: impl AsyncFn(SocketAddr, &Mesh) -> Outcome,
) -> (Outcome, Option<Outcome>) {
    let ours = start_static(&m.yaml).await;
    let ours_out = case(ours.listener_addr("http").unwrap(), m).await;
    let envoy_out = match envoy::envoy_binary() {
        Some(bin) => {
            let dir = tempfile::tempdir().unwrap();
            let e = envoy::start(&bin, &m.yaml, dir.path()).await;
            m.keys.lock().unwrap().clear();
            Some(case(e.listener(Some("http")).await, m).await)
        }
        None => {
            eprintln!("no envoy binary: differential half skipped");
            None
        }
    };
    (ours_out, envoy_out)
}

#[tokio::test]
async fn istios_default_policy_runs_out_of_retries_across_both_hosts_like_envoy() {
    let m = mesh(false).await;
    // Both hosts answer /503 with 503: every request spends its two
    // retries and the client gets the last 503.
    let (ours, envoy) = both(&m, async |l, m| run(l, "/istio/503", 10, &m.hits).await).await;
    assert!(ours.statuses.iter().all(|s| *s == 503), "{ours:?}");
    assert!(ours.attempts.iter().all(|a| a == "3"), "{ours:?}");
    let total: usize = ours.hits.iter().map(|(_, n)| n).sum();
    assert_eq!(total, 30, "{ours:?}");
    // previous_hosts: the 3 attempts of a request never stay on one host
    // when there are two.
    assert!(ours.hits.iter().all(|(_, n)| *n >= 10), "{ours:?}");
    if let Some(envoy) = envoy {
        assert_eq!(ours.statuses, envoy.statuses);
        assert_eq!(ours.attempts, envoy.attempts);
        let envoy_total: usize = envoy.hits.iter().map(|(_, n)| n).sum();
        assert_eq!(envoy_total, total, "{envoy:?}");
    }
}

#[tokio::test]
async fn a_failure_then_success_costs_one_retry_in_both() {
    let m = mesh(false).await;
    // Each request's first attempt fails (its own key), the retry succeeds.
    let (ours, envoy) = both(&m, async |l, m| {
        run(l, "/istio/fail/1/k{i}", 10, &m.hits).await
    })
    .await;
    assert_eq!(ours.statuses, vec![200; 10]);
    assert_eq!(ours.attempts, vec!["2".to_string(); 10]);
    let total: usize = ours.hits.iter().map(|(_, n)| n).sum();
    assert_eq!(total, 20);
    if let Some(envoy) = envoy {
        assert_eq!(
            ours,
            Outcome {
                hits: ours.hits.clone(),
                ..envoy
            }
        );
    }
}

#[tokio::test]
async fn connect_failures_are_retried_on_another_host_and_not_without_a_policy() {
    let m = mesh(true).await;
    let (ours, envoy) = both(&m, async |l, m| {
        let mut o = run(l, "/istio/ok", 10, &m.hits).await;
        let plain = run(l, "/none/ok", 10, &m.hits).await;
        o.statuses.extend(plain.statuses);
        o
    })
    .await;
    assert_eq!(&ours.statuses[..10], &[200; 10], "{ours:?}");
    let failed = ours.statuses[10..].iter().filter(|s| **s == 503).count();
    assert_eq!(failed, 5, "round robin over a dead endpoint: {ours:?}");
    if let Some(envoy) = envoy {
        assert_eq!(&envoy.statuses[..10], &[200; 10]);
        let envoy_failed = envoy.statuses[10..].iter().filter(|s| **s == 503).count();
        assert_eq!(envoy_failed, failed, "{envoy:?}");
    }
}

#[tokio::test]
async fn a_5xx_policy_retries_resets_and_gives_up_with_the_last_answer() {
    let m = mesh(false).await;
    let (ours, envoy) = both(&m, async |l, m| {
        let mut o = run(l, "/bad/503", 4, &m.hits).await;
        let reset = run(l, "/bad/reset", 4, &m.hits).await;
        let istio = run(l, "/istio/reset", 4, &m.hits).await;
        o.statuses.extend(reset.statuses);
        o.attempts.extend(reset.attempts);
        o.statuses.extend(istio.statuses);
        o.attempts.extend(istio.attempts);
        o.hits.extend(istio.hits);
        o
    })
    .await;
    assert_eq!(ours.statuses, vec![503; 12], "{ours:?}");
    // 5xx: three attempts each, for 503s and for resets alike; Istio's
    // default does not retry a reset after the request was sent.
    let want: Vec<String> = ["3"; 8]
        .into_iter()
        .chain(["1"; 4])
        .map(String::from)
        .collect();
    assert_eq!(ours.attempts, want);
    if let Some(envoy) = envoy {
        assert_eq!(ours.statuses, envoy.statuses);
        assert_eq!(ours.attempts, envoy.attempts);
    }
}

#[tokio::test]
async fn a_per_try_timeout_moves_on_and_the_retry_answers() {
    let m = mesh(false).await;
    let (ours, envoy) = both(&m, async |l, m| run(l, "/five/hang/h{i}", 3, &m.hits).await).await;
    assert_eq!(ours.statuses, vec![200; 3], "{ours:?}");
    assert_eq!(ours.attempts, vec!["2".to_string(); 3]);
    if let Some(envoy) = envoy {
        assert_eq!(ours.statuses, envoy.statuses);
        assert_eq!(ours.attempts, envoy.attempts);
    }
}

#[tokio::test]
async fn a_request_body_is_sent_again_whole() {
    let m = mesh(false).await;
    let proxy = start_static(&m.yaml).await;
    let l = proxy.listener_addr("http").unwrap();
    let body = "x".repeat(100_000);
    let r = post(l, "svc", "/istio/fail/1/body", body.clone()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), body.len(), "the retry carried the whole body");
    assert_eq!(r.headers["x-envoy-attempt-count"], "2");
    let (_, stats) = admin_get(proxy.admin_addr(), "/stats").await;
    for want in [
        "cluster.mixed.upstream_rq_retry: 1\n",
        "cluster.mixed.upstream_rq_retry_success: 1\n",
        "cluster.mixed.upstream_rq_503: 1\n",
        "cluster.mixed.upstream_rq_200: 1\n",
    ] {
        assert!(stats.contains(want), "{want}: {stats}");
    }
}

/// Per-try timeout and back-off on tokio's paused clock: a 5 s per-try
/// timeout and Envoy's 25 ms jittered back-off take no wall time.
#[tokio::test(start_paused = true)]
async fn per_try_timeouts_and_back_off_run_on_tokios_clock() {
    let m = mesh(false).await;
    let yaml = m
        .yaml
        .replace("per_try_timeout: 0.3s", "per_try_timeout: 5s");
    let proxy = start_static(&yaml).await;
    let l = proxy.listener_addr("http").unwrap();
    let wall = std::time::Instant::now();
    let start = tokio::time::Instant::now();
    let r = get(l, "svc", "/five/hang/paused", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "late"));
    let took = start.elapsed();
    assert!(took >= Duration::from_secs(5), "per-try timeout: {took:?}");
    assert!(
        took < Duration::from_secs(5) + Duration::from_millis(25),
        "one back-off below 25 ms: {took:?}"
    );
    // Three 503s back to back: two back-offs, below 25 ms and 75 ms.
    let start = tokio::time::Instant::now();
    let r = get(l, "svc", "/bad/503", &[]).await;
    assert_eq!(r.status, 503);
    assert!(
        start.elapsed() < Duration::from_millis(100),
        "{:?}",
        start.elapsed()
    );
    assert!(wall.elapsed() < Duration::from_secs(5), "a real sleep");
    let (_, clusters) = admin_get(proxy.admin_addr(), "/clusters").await;
    assert!(
        clusters
            .lines()
            .any(|l| l.starts_with("bad::") && l.ends_with("::rq_error::3")),
        "three 503s count as the host's errors: {clusters}"
    );
    let (_, stats) = admin_get(proxy.admin_addr(), "/stats").await;
    for want in [
        "cluster.mixed.upstream_rq_per_try_timeout: 1\n",
        "cluster.bad.upstream_rq_retry: 2\n",
        "cluster.bad.upstream_rq_retry_limit_exceeded: 1\n",
    ] {
        assert!(stats.contains(want), "{want}: {stats}");
    }
}

#[tokio::test]
async fn bad_retry_policies_are_refused_with_the_field_path() {
    for (policy, want) in [
        (
            r#"{retry_on: "5xx,connect-failures"}"#,
            "retry_policy.retry_on: unknown retry condition \"connect-failures\"",
        ),
        (
            r#"{retry_on: "5xx", retriable_status_codes: [99]}"#,
            "retry_policy.retriable_status_codes[0]: 99 is not an HTTP status",
        ),
        (
            r#"{retry_on: "5xx", retry_back_off: {base_interval: 1s, max_interval: 0.5s}}"#,
            "retry_policy.retry_back_off.max_interval: must not be below base_interval",
        ),
        (
            r#"{retry_on: "5xx", per_try_idle_timeout: 1s}"#,
            "per_try_idle_timeout",
        ),
    ] {
        let yaml = http_bootstrap(
            "bad",
            &format!(
                "- name: all\n  domains: [\"*\"]\n  routes:\n  - match: {{prefix: /}}\n    route: {{cluster: c, retry_policy: {policy}}}"
            ),
            &[("c", "127.0.0.1:1".parse().unwrap())],
        );
        let started = proxy::Proxy::start(
            xds::json::from_yaml(&yaml).expect("parses"),
            &proxy::ProxyOptions::default(),
        )
        .await;
        let Err(err) = started else {
            panic!("{policy}: accepted")
        };
        let err = err.to_string();
        assert!(err.contains(want), "{policy}: {err}");
    }
}

/// POST `body` over HTTP/1.1.
async fn post(addr: SocketAddr, host: &str, path: &str, body: String) -> Reply {
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::post(path)
        .header("host", host)
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// The client's own retry headers (`x-envoy-retry-on`, `-retry-grpc-on`,
/// `-max-retries`, `-retriable-status-codes`): the attempts each request
/// costs and the x-envoy-* headers the backend sees, with Envoy's default
/// (no address is internal, so they are dropped) and with
/// `internal_address_config` naming 10.0.0.0/8 (a request whose one
/// x-forwarded-for address is in it is internal and may steer retries).
#[tokio::test]
async fn client_retry_headers_as_envoy_honours_them() {
    let xff = ("x-forwarded-for", "10.1.2.3");
    let cases: &[(&str, &[(&str, &str)])] = &[
        ("/none/503", &[("x-envoy-retry-on", "5xx")]),
        ("/none/503", &[("x-envoy-retry-on", "5xx"), xff]),
        (
            "/none/503",
            &[
                ("x-envoy-retry-on", "5xx"),
                ("x-envoy-max-retries", "3"),
                xff,
            ],
        ),
        (
            "/none/503",
            &[
                ("x-envoy-retry-on", "retriable-status-codes"),
                ("x-envoy-retriable-status-codes", "503"),
                xff,
            ],
        ),
        (
            "/none/503",
            &[("x-envoy-retry-on", "retriable-status-codes"), xff],
        ),
        ("/bad/503", &[("x-envoy-max-retries", "0")]),
        ("/bad/503", &[("x-envoy-max-retries", "0"), xff]),
        (
            "/bad/503",
            &[
                ("x-envoy-max-retries", "1"),
                ("x-forwarded-for", "127.0.0.1"),
            ],
        ),
        (
            "/bad/503",
            &[
                ("x-envoy-max-retries", "1"),
                ("x-forwarded-for", "10.1.2.3, 10.1.2.4"),
            ],
        ),
        ("/bad/503", &[("x-envoy-max-retries", "x"), xff]),
        ("/none/503", &[("x-envoy-retry-on", "bogus,5xx"), xff]),
        ("/none/503", &[("x-envoy-retry-on", "gateway-error"), xff]),
        (
            "/none/503",
            &[("x-envoy-retry-grpc-on", "unavailable"), xff],
        ),
        (
            "/none/ok",
            &[
                ("x-envoy-upstream-rq-timeout-ms", "5"),
                ("x-envoy-ip-tags", "a"),
                xff,
            ],
        ),
        (
            "/none/ok",
            &[
                ("x-envoy-upstream-rq-timeout-ms", "5"),
                ("x-envoy-ip-tags", "a"),
            ],
        ),
        (
            "/none/ok",
            &[("x-envoy-internal", "true"), ("x-envoy-foo", "1")],
        ),
    ];
    for internal in [false, true] {
        let mut m = mesh(false).await;
        if internal {
            m.yaml = m.yaml.replace(
                "stat_prefix: retries\n",
                "stat_prefix: retries\n          internal_address_config: {cidr_ranges: [{address_prefix: 10.0.0.0, prefix_len: 8}]}\n",
            );
            assert!(m.yaml.contains("internal_address_config"));
        }
        let case = async |l: SocketAddr, m: &Mesh| {
            let mut o = Outcome::default();
            for (path, headers) in cases {
                m.hits.lock().unwrap().clear();
                let r = get(l, "svc", path, headers).await;
                o.statuses.push(r.status);
                let mut seen: Vec<String> =
                    m.hits.lock().unwrap().values().flatten().cloned().collect();
                seen.sort();
                o.attempts.push(seen.join(" "));
            }
            o
        };
        let (ours, envoy) = both(&m, case).await;
        if let Some(envoy) = envoy {
            for (i, (a, b)) in ours.attempts.iter().zip(&envoy.attempts).enumerate() {
                assert_eq!(
                    a, b,
                    "internal={internal} case {i} {:?}: ours vs Envoy",
                    cases[i]
                );
            }
            assert_eq!(ours.statuses, envoy.statuses);
        }
    }
}

/// A backend that answers the head and 2 of 10 body bytes at once, and the
/// rest after `stall`.
async fn slow_body(stall: Duration) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nab")
                    .await;
                tokio::time::sleep(stall).await;
                let _ = s.write_all(b"cdefghij").await;
                let _ = s.read(&mut buf).await;
            });
        }
    });
    addr
}

/// What a raw HTTP/1.1 client got before the connection closed.
async fn raw_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: svc\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Envoy's route timeout runs to the last byte of the response: a body
/// that stalls past it is cut off (the connection closes after the bytes
/// already sent) and counted in upstream_rq_timeout. A body that ends in
/// time is whole.
#[tokio::test]
async fn a_route_timeout_covers_the_response_body_like_envoy() {
    let slow = slow_body(Duration::from_millis(1500)).await;
    let fast = slow_body(Duration::from_millis(10)).await;
    let yaml = http_bootstrap(
        "timeouts",
        "- name: all\n  domains: [\"*\"]\n  routes:\n  - match: {prefix: /slow}\n    route: {cluster: slow, timeout: 0.4s}\n  - match: {prefix: /fast}\n    route: {cluster: fast, timeout: 0.4s}",
        &[("slow", slow), ("fast", fast)],
    );
    let outcome = async |listener: SocketAddr| {
        let cut = raw_get(listener, "/slow").await;
        let whole = raw_get(listener, "/fast").await;
        (cut, whole)
    };
    let ours = start_static(&yaml).await;
    let (cut, whole) = outcome(ours.listener_addr("http").unwrap()).await;
    assert!(cut.starts_with("HTTP/1.1 200"), "{cut}");
    assert!(
        cut.ends_with("\r\n\r\nab"),
        "cut after the bytes sent: {cut:?}"
    );
    assert!(whole.ends_with("abcdefghij"), "{whole:?}");
    let (_, stats) = admin_get(ours.admin_addr(), "/stats").await;
    assert!(
        stats.contains("cluster.slow.upstream_rq_timeout: 1\n"),
        "{stats}"
    );
    assert!(
        stats.contains("cluster.fast.upstream_rq_timeout: 0\n"),
        "{stats}"
    );
    let Some(bin) = envoy::envoy_binary() else {
        eprintln!("no envoy binary: differential half skipped");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let e = envoy::start(&bin, &yaml, dir.path()).await;
    let (e_cut, e_whole) = outcome(e.listener(Some("http")).await).await;
    let body = |r: &str| r.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
    assert_eq!(body(&cut), body(&e_cut), "ours {cut:?}\nenvoy {e_cut:?}");
    assert_eq!(body(&whole), body(&e_whole));
    let timeouts = e.stats("upstream_rq_timeout").await;
    assert!(
        timeouts.contains(&("cluster.slow.upstream_rq_timeout".to_string(), 1)),
        "{timeouts:?}"
    );
}

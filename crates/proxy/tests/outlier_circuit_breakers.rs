//! Outlier detection and circuit breakers end to end, ours against stock
//! Envoy on the same bootstrap: a host answering 503 is ejected after five
//! requests and later requests all succeed; max_requests and
//! max_pending_requests answer 503 UO (`x-envoy-overloaded`) at the limit;
//! the stat names match. Then the connection-pool limits (ours only, on
//! the paused clock).

mod common;

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Response;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// A backend answering `status`; with a gate, each answer waits until the
/// gate opens. Counts requests and connections.
struct StatusBackend {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
}

async fn status_backend(status: u16, gate: Option<watch::Receiver<bool>>) -> StatusBackend {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let connections = Arc::new(AtomicUsize::new(0));
    let (r, c) = (requests.clone(), connections.clone());
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            c.fetch_add(1, Ordering::SeqCst);
            let (r, gate) = (r.clone(), gate.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |_req| {
                    r.fetch_add(1, Ordering::SeqCst);
                    let gate = gate.clone();
                    async move {
                        if let Some(mut g) = gate {
                            let _ = g.wait_for(|open| *open).await;
                        }
                        let mut resp = Response::new(Full::new(Bytes::from_static(b"x")));
                        *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    StatusBackend {
        addr,
        requests,
        connections,
    }
}

fn endpoint(a: SocketAddr) -> String {
    format!(
        "{{endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}}}",
        a.ip(),
        a.port()
    )
}

/// A bootstrap with a route /NAME -> cluster NAME for each of `names`, and
/// the clusters as given (YAML list items).
fn bootstrap(names: &[&str], clusters: &str) -> String {
    let routes: String = names
        .iter()
        .map(|n| format!("\n  - match: {{prefix: /{n}}}\n    route: {{cluster: {n}}}"))
        .collect();
    let mut yaml = http_bootstrap(
        "cb",
        &format!("- name: all\n  domains: [\"*\"]\n  routes:{routes}"),
        &[],
    );
    yaml.push_str(clusters);
    yaml
}

fn outlier_cluster(hosts: &[SocketAddr]) -> String {
    let eps: Vec<String> = hosts.iter().map(|a| endpoint(*a)).collect();
    format!(
        "  - name: pool\n    type: STATIC\n    connect_timeout: 1s\n    outlier_detection: {{consecutive_5xx: 5, max_ejection_percent: 100, interval: 10s, base_ejection_time: 30s}}\n    load_assignment: {{cluster_name: pool, endpoints: [{{lb_endpoints: [{}]}}]}}\n",
        eps.join(", ")
    )
}

fn limited_cluster(name: &str, host: SocketAddr, thresholds: &str) -> String {
    format!(
        "  - name: {name}\n    type: STATIC\n    connect_timeout: 1s\n    circuit_breakers: {{thresholds: [{{{thresholds}, track_remaining: true}}]}}\n    load_assignment: {{cluster_name: {name}, endpoints: [{{lb_endpoints: [{}]}}]}}\n",
        endpoint(host)
    )
}

/// What one run (ours or Envoy's) measured.
#[derive(Debug, PartialEq)]
struct Ejection {
    /// Requests the 503 host got.
    bad_requests: usize,
    /// Statuses of the last 15 of 30 requests.
    late_statuses: Vec<u16>,
    enforced_total: u64,
    enforced_5xx: u64,
    active: u64,
    health_flags: String,
}

async fn run_ejection(
    http: SocketAddr,
    admin: SocketAddr,
    bad: &StatusBackend,
    stat: impl AsyncFn(&str) -> u64,
) -> Ejection {
    let mut statuses = Vec::new();
    for _ in 0..30 {
        statuses.push(get(http, "svc", "/pool", &[]).await.status);
    }
    let (_, clusters) = admin_get(admin, "/clusters").await;
    let flag_line = format!("pool::{}::health_flags::", bad.addr);
    let health_flags = clusters
        .lines()
        .find_map(|l| l.strip_prefix(&flag_line))
        .unwrap_or("missing")
        .to_string();
    Ejection {
        bad_requests: bad.requests.load(Ordering::SeqCst),
        late_statuses: statuses[15..].to_vec(),
        enforced_total: stat("cluster.pool.outlier_detection.ejections_enforced_total").await,
        enforced_5xx: stat("cluster.pool.outlier_detection.ejections_enforced_consecutive_5xx")
            .await,
        active: stat("cluster.pool.outlier_detection.ejections_active").await,
        health_flags,
    }
}

async fn ours_stat(admin: SocketAddr, name: &str) -> u64 {
    let (_, stats) = admin_get(admin, "/stats").await;
    stats
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no stat {name}"))
}

#[tokio::test]
async fn a_failing_host_is_ejected_like_envoy_ejects_it() {
    let bad = status_backend(503, None).await;
    let good = [
        status_backend(200, None).await,
        status_backend(200, None).await,
    ];
    let yaml = bootstrap(
        &["pool"],
        &outlier_cluster(&[good[0].addr, bad.addr, good[1].addr]),
    );
    let proxy = start_static(&yaml).await;
    let admin = proxy.admin_addr();
    let ours = run_ejection(
        proxy.listener_addr("http").unwrap(),
        admin,
        &bad,
        async |n: &str| ours_stat(admin, n).await,
    )
    .await;
    assert_eq!(ours.bad_requests, 5, "{ours:?}");
    assert!(ours.late_statuses.iter().all(|s| *s == 200), "{ours:?}");
    assert_eq!(
        (ours.enforced_total, ours.enforced_5xx, ours.active),
        (1, 1, 1)
    );
    assert_eq!(ours.health_flags, "/failed_outlier_check");
    assert_eq!(
        good.iter()
            .map(|g| g.requests.load(Ordering::SeqCst))
            .sum::<usize>(),
        25
    );

    let Some(bin) = envoy::envoy_binary() else {
        eprintln!("no envoy binary: skipping the Envoy half");
        return;
    };
    let bad = status_backend(503, None).await;
    let good = [
        status_backend(200, None).await,
        status_backend(200, None).await,
    ];
    let yaml = bootstrap(
        &["pool"],
        &outlier_cluster(&[good[0].addr, bad.addr, good[1].addr]),
    );
    let dir = tempfile::tempdir().unwrap();
    let e = envoy::start(&bin, &yaml, dir.path()).await;
    let http = e.listener(Some("http")).await;
    let theirs = run_ejection(http, e.admin, &bad, async |n: &str| {
        e.stats(n)
            .await
            .into_iter()
            .find(|(k, _)| k == n)
            .map_or(u64::MAX, |(_, v)| v)
    })
    .await;
    eprintln!("ours:   {ours:?}\nenvoy:  {theirs:?}");
    // Envoy ejects on its main thread, after the fifth failure's response:
    // allow it one more request to the bad host than ours.
    assert!(
        (5..=6).contains(&theirs.bad_requests),
        "envoy sent {} requests to the failing host",
        theirs.bad_requests
    );
    assert_eq!(ours.late_statuses, theirs.late_statuses);
    assert_eq!(
        (ours.enforced_total, ours.enforced_5xx, ours.active),
        (theirs.enforced_total, theirs.enforced_5xx, theirs.active)
    );
    assert_eq!(ours.health_flags, theirs.health_flags);

    // The outlier_detection stat names are Envoy's.
    let (_, ours_text) = admin_get(admin, "/stats").await;
    let names = |text: &str, part: &str| -> BTreeSet<String> {
        text.lines()
            .filter(|l| l.contains(part))
            .filter_map(|l| l.split_once(": ").map(|(k, _)| k.to_string()))
            .collect()
    };
    let (_, theirs_text) = admin_get(e.admin, "/stats").await;
    assert_eq!(
        names(&ours_text, "cluster.pool.outlier_detection."),
        names(&theirs_text, "cluster.pool.outlier_detection.")
    );
}

/// What the breakers did in one run.
#[derive(Debug, PartialEq)]
struct Overflow {
    /// max_requests 1: the second concurrent request's (status, body, x-envoy-overloaded).
    second: (u16, String, Option<String>),
    /// max_connections 1 + max_pending_requests 1: statuses of three concurrent requests.
    queued: Vec<u16>,
    slow_active_overflow: u64,
    queue_pending_overflow: u64,
    rq_open_during: u64,
    gauges: BTreeSet<String>,
}

async fn wait_for(n: &AtomicUsize, at_least: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while n.load(Ordering::SeqCst) < at_least {
        assert!(
            tokio::time::Instant::now() < deadline,
            "backend not reached"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn run_overflow(
    http: SocketAddr,
    admin: SocketAddr,
    slow: &StatusBackend,
    queue: &StatusBackend,
    open: &watch::Sender<bool>,
) -> Overflow {
    let first = tokio::spawn(async move { get(http, "svc", "/slow", &[]).await.status });
    wait_for(&slow.requests, 1).await;
    let r = get(http, "svc", "/slow", &[]).await;
    let second = (
        r.status,
        r.body.clone(),
        r.headers
            .get("x-envoy-overloaded")
            .map(|v| v.to_str().unwrap().to_string()),
    );
    let stats = |text: &str, name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(u64::MAX)
    };
    let (_, during) = admin_get(admin, "/stats").await;
    let rq_open_during = stats(&during, "cluster.slow.circuit_breakers.default.rq_open");

    // One connection, one pending: the third concurrent request overflows.
    let a = tokio::spawn(async move { get(http, "svc", "/queue", &[]).await.status });
    wait_for(&queue.requests, 1).await;
    let b = tokio::spawn(async move { get(http, "svc", "/queue", &[]).await.status });
    // Let the second become pending before the third arrives.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, s) = admin_get(admin, "/stats").await;
        if stats(&s, "cluster.queue.circuit_breakers.default.rq_pending_open") == 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never pending");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let c = get(http, "svc", "/queue", &[]).await.status;
    open.send_replace(true);
    let queued = vec![a.await.unwrap(), b.await.unwrap(), c];
    assert_eq!(first.await.unwrap(), 200);
    let (_, after) = admin_get(admin, "/stats").await;
    let gauges = after
        .lines()
        .filter(|l| l.starts_with("cluster.slow.circuit_breakers.default."))
        .filter_map(|l| l.split_once(": ").map(|(k, _)| k.to_string()))
        .collect();
    Overflow {
        second,
        queued,
        slow_active_overflow: stats(&after, "cluster.slow.upstream_rq_active_overflow"),
        queue_pending_overflow: stats(&after, "cluster.queue.upstream_rq_pending_overflow"),
        rq_open_during,
        gauges,
    }
}

async fn overflow_setup() -> (String, StatusBackend, StatusBackend, watch::Sender<bool>) {
    let (open, gate) = watch::channel(false);
    let slow = status_backend(200, Some(gate.clone())).await;
    let queue = status_backend(200, Some(gate)).await;
    let clusters = limited_cluster("slow", slow.addr, "max_requests: 1")
        + &limited_cluster(
            "queue",
            queue.addr,
            "max_connections: 1, max_pending_requests: 1",
        );
    (bootstrap(&["slow", "queue"], &clusters), slow, queue, open)
}

#[tokio::test]
async fn circuit_breakers_overflow_with_uo_like_envoy() {
    let (yaml, slow, queue, open) = overflow_setup().await;
    let proxy = start_static(&yaml).await;
    let ours = run_overflow(
        proxy.listener_addr("http").unwrap(),
        proxy.admin_addr(),
        &slow,
        &queue,
        &open,
    )
    .await;
    let uo = (
        503,
        "upstream connect error or disconnect/reset before headers. reset reason: overflow"
            .to_string(),
        Some("true".to_string()),
    );
    assert_eq!(ours.second, uo);
    assert_eq!(ours.queued, [200, 200, 503]);
    assert_eq!(
        (ours.slow_active_overflow, ours.queue_pending_overflow),
        (1, 1)
    );
    assert_eq!(ours.rq_open_during, 1);
    assert_eq!(
        queue.connections.load(Ordering::SeqCst),
        1,
        "the pending request waited for the one connection"
    );

    let Some(bin) = envoy::envoy_binary() else {
        eprintln!("no envoy binary: skipping the Envoy half");
        return;
    };
    let (yaml, slow, queue, open) = overflow_setup().await;
    let dir = tempfile::tempdir().unwrap();
    let e = envoy::start(&bin, &yaml, dir.path()).await;
    let http = e.listener(Some("http")).await;
    let theirs = run_overflow(http, e.admin, &slow, &queue, &open).await;
    eprintln!("ours:   {ours:?}\nenvoy:  {theirs:?}");
    assert_eq!(ours, theirs);
}

#[tokio::test(start_paused = true)]
async fn pooled_connections_retire_after_max_requests_and_idle_timeout() {
    let b = status_backend(200, None).await;
    let cluster = format!(
        "  - name: pool\n    type: STATIC\n    connect_timeout: 1s\n    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config: {{http_protocol_options: {{}}}}\n        common_http_protocol_options: {{max_requests_per_connection: 2, idle_timeout: 5s}}\n    upstream_connection_options: {{tcp_keepalive: {{keepalive_time: 30, keepalive_interval: 5, keepalive_probes: 3}}}}\n    load_assignment: {{cluster_name: pool, endpoints: [{{lb_endpoints: [{}]}}]}}\n",
        endpoint(b.addr)
    );
    let proxy = start_static(&bootstrap(&["pool"], &cluster)).await;
    let http = proxy.listener_addr("http").unwrap();
    for _ in 0..3 {
        assert_eq!(get(http, "svc", "/pool", &[]).await.status, 200);
    }
    assert_eq!(
        b.connections.load(Ordering::SeqCst),
        2,
        "two requests per connection, then a second one (left idle in the pool)"
    );
    // Idle past idle_timeout (virtual time): the pooled connection closes.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(get(http, "svc", "/pool", &[]).await.status, 200);
    assert_eq!(b.connections.load(Ordering::SeqCst), 3);
    let (_, stats) = admin_get(proxy.admin_addr(), "/stats").await;
    assert!(
        stats.contains("cluster.pool.upstream_cx_max_requests: 1\n"),
        "{stats}"
    );
    assert!(
        stats.contains("cluster.pool.upstream_cx_idle_timeout: 1\n"),
        "{stats}"
    );
}

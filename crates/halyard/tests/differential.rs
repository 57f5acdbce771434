//! Differential end-to-end test on loopback (no root): one pilot, three echo
//! backends (WorkloadEntries), and two proxies started from the same
//! `halyard bootstrap` output — a stock Envoy on 127.0.0.2 and `halyard proxy`
//! on 127.0.0.3, each with a Sidecar egress listener. Every routing scenario
//! must give both proxies the distribution the VirtualService asks for, Envoy
//! must ACK every resource, and a config edit under traffic fails no request.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use serde_json::Value;

const HOST: &str = "reviews.test.svc.cluster.local";
const ENVOY_IP: &str = "127.0.0.2";
const HALYARD_IP: &str = "127.0.0.3";

struct Mesh {
    dir: tempfile::TempDir,
    port: u16,
    debug: SocketAddr,
    envoy_admin: SocketAddr,
    halyard_admin: SocketAddr,
    pilot_args: Vec<String>,
    pilot: Option<Proc>,
    _procs: Vec<Proc>,
}

impl Mesh {
    fn start_pilot(&mut self) {
        self.pilot = Some(Proc::spawn(
            "pilot",
            halyard().args(&self.pilot_args),
            &self.dir.path().join("logs"),
        ));
    }
}

fn base_config(port: u16, backends: &[(String, u16)]) -> String {
    let mut s = format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews, namespace: test}}
spec:
  hosts: [{HOST}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {{number: {port}, name: http, protocol: HTTP}}
  workloadSelector:
    labels: {{app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: test}}
spec:
  host: reviews
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
  - {{name: v3, labels: {{version: v3}}}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: envoy-client, namespace: test}}
spec:
  workloadSelector: {{labels: {{app: envoy-client}}}}
  egress:
  - port: {{number: {port}, protocol: HTTP, name: http}}
    bind: {ENVOY_IP}
    captureMode: NONE
    hosts: ["./*"]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: halyard-client, namespace: test}}
spec:
  workloadSelector: {{labels: {{app: halyard-client}}}}
  egress:
  - port: {{number: {port}, protocol: HTTP, name: http}}
    bind: {HALYARD_IP}
    captureMode: NONE
    hosts: ["./*"]
"#
    );
    for (version, p) in backends {
        s.push_str(&format!(
            r#"---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: reviews-{version}, namespace: test}}
spec:
  address: 127.0.0.1
  ports: {{http: {p}}}
  labels: {{app: reviews, version: {version}}}
"#
        ));
    }
    s
}

fn write_vs(dir: &Path, http: &str) {
    let text = format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews, namespace: test}}\nspec:\n  hosts: [reviews]\n  http:\n{http}"
    );
    // Write then rename, so the pilot never reads half a file.
    let tmp = dir.join(".vs.yaml.tmp");
    std::fs::write(&tmp, text).expect("write vs");
    std::fs::rename(&tmp, dir.join("vs.yaml")).expect("rename vs");
}

fn start(envoy: &Path, sotw: bool) -> Mesh {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dir.path().join("logs");
    let config = dir.path().join("config");
    std::fs::create_dir_all(&logs).expect("logs");
    std::fs::create_dir_all(&config).expect("config");
    let mut procs = Vec::new();

    let mut backends = Vec::new();
    for version in ["v1", "v2", "v3"] {
        let p = free_port(&["127.0.0.1"]);
        procs.push(Proc::spawn(
            &format!("echo-{version}"),
            halyard()
                .args(["echo", "--bind", "127.0.0.1", "--port", &p.to_string()])
                .env("SERVICE_NAME", "reviews")
                .env("SERVICE_VERSION", version)
                .env("POD_NAME", format!("reviews-{version}-0")),
            &logs,
        ));
        backends.push((version.to_string(), p));
    }
    let port = free_port(&[ENVOY_IP, HALYARD_IP]);
    std::fs::write(config.join("base.yaml"), base_config(port, &backends)).expect("base");
    write_vs(
        &config,
        "  - route:\n    - destination: {host: reviews, subset: v1}\n",
    );

    let xds = SocketAddr::new(ip("127.0.0.1"), free_port(&["127.0.0.1"]));
    let debug = SocketAddr::new(ip("127.0.0.1"), free_port(&["127.0.0.1"]));
    let pilot_args: Vec<String> = [
        "pilot",
        "--config",
        config.to_str().expect("utf8"),
        "--xds",
        &xds.to_string(),
        "--debug",
        &debug.to_string(),
        "--debounce",
        "50ms",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();

    let envoy_admin = SocketAddr::new(ip("127.0.0.1"), free_port(&["127.0.0.1"]));
    let halyard_admin = SocketAddr::new(ip("127.0.0.1"), free_port(&["127.0.0.1"]));
    let bootstrap = |app: &str, node_ip: &str, admin: SocketAddr| {
        let mut cmd = halyard();
        if sotw {
            cmd.arg("bootstrap").arg("--sotw");
        } else {
            cmd.arg("bootstrap");
        }
        let out = cmd
            .args([
                "--node-id",
                &format!("sidecar~{node_ip}~{app}-0.test~test.svc.cluster.local"),
                "--xds",
                &xds.to_string(),
                "--admin",
                &admin.to_string(),
                "--label",
                &format!("app={app}"),
                "--interception-mode",
                "NONE",
                "--output",
                "yaml",
            ])
            .output()
            .expect("bootstrap");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = dir.path().join(format!("{app}.yaml"));
        std::fs::write(&path, out.stdout).expect("write bootstrap");
        path
    };
    let envoy_bootstrap = bootstrap("envoy-client", ENVOY_IP, envoy_admin);
    let halyard_bootstrap = bootstrap("halyard-client", HALYARD_IP, halyard_admin);
    procs.push(Proc::spawn(
        "envoy",
        std::process::Command::new(envoy).args([
            "-c",
            envoy_bootstrap.to_str().expect("utf8"),
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "-l",
            "warning",
        ]),
        &logs,
    ));
    let ready = free_port(&["127.0.0.1"]);
    procs.push(Proc::spawn(
        "halyard-proxy",
        halyard().args([
            "proxy",
            "--bootstrap",
            halyard_bootstrap.to_str().expect("utf8"),
            "--ready-port",
            &ready.to_string(),
            "--concurrency",
            "1",
        ]),
        &logs,
    ));
    let mut mesh = Mesh {
        dir,
        port,
        debug,
        envoy_admin,
        halyard_admin,
        pilot_args,
        pilot: None,
        _procs: procs,
    };
    mesh.start_pilot();
    for ip in [ENVOY_IP, HALYARD_IP] {
        let client = proxy_client(&mesh, ip);
        let url = format!("http://{HOST}:{port}/");
        wait_for(
            &format!("proxy on {ip} to route"),
            Duration::from_secs(30),
            || get(&client, &url).ok().filter(|(s, _)| *s == 200),
        );
    }
    mesh
}

fn proxy_client(mesh: &Mesh, ip_s: &str) -> reqwest::blocking::Client {
    client_via(HOST, SocketAddr::new(ip(ip_s), mesh.port))
}

/// RDS versions the pilot has sent and both proxies ACKed.
fn rds_acked(mesh: &Mesh) -> Option<Vec<String>> {
    let syncz: Value = reqwest::blocking::get(format!("http://{}/debug/syncz", mesh.debug))
        .ok()?
        .json()
        .ok()?;
    let proxies = syncz.as_array()?;
    if proxies.len() != 2 {
        return None;
    }
    proxies
        .iter()
        .map(|p| {
            let rds = &p["types"]["RDS"];
            let sent = rds["sent_version"].as_str()?;
            (rds["acked_version"].as_str()? == sent).then(|| sent.to_string())
        })
        .collect()
}

/// Apply a VirtualService and wait until both proxies ACKed the new routes.
fn apply_vs(mesh: &Mesh, http: &str) {
    // Settled first: with a push in flight, "before" would be unknown and any
    // ACK would look like the new one.
    let before = Some(wait_for(
        "both proxies to settle",
        Duration::from_secs(10),
        || rds_acked(mesh),
    ));
    write_vs(&mesh.dir.path().join("config"), http);
    wait_for(
        "both proxies to ACK the new routes",
        Duration::from_secs(10),
        || rds_acked(mesh).filter(|now| Some(now) != before.as_ref()),
    );
}

/// Send `n` requests through the proxy on `ip` and count answering versions.
fn distribution(
    mesh: &Mesh,
    ip: &str,
    path: &str,
    headers: &[(&str, &str)],
    n: usize,
) -> BTreeMap<String, usize> {
    let client = proxy_client(mesh, ip);
    let url = format!("http://{HOST}:{}{path}", mesh.port);
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let mut req = client.get(&url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req
            .send()
            .unwrap_or_else(|e| panic!("request via {ip}: {e}"));
        let status = resp.status().as_u16();
        let version = resp
            .headers()
            .get("x-echo-version")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .unwrap_or_else(|| format!("status {status}"));
        *counts.entry(version).or_insert(0) += 1;
    }
    counts
}

fn share(counts: &BTreeMap<String, usize>, version: &str) -> f64 {
    let total: usize = counts.values().sum();
    100.0 * *counts.get(version).unwrap_or(&0) as f64 / total as f64
}

fn both(
    mesh: &Mesh,
    path: &str,
    headers: &[(&str, &str)],
    n: usize,
    check: impl Fn(&str, &BTreeMap<String, usize>),
) {
    for (who, ip) in [("envoy", ENVOY_IP), ("halyard", HALYARD_IP)] {
        let counts = distribution(mesh, ip, path, headers, n);
        eprintln!("{who:<8} {path} {headers:?}: {counts:?}");
        check(who, &counts);
    }
}

fn only(version: &'static str) -> impl Fn(&str, &BTreeMap<String, usize>) {
    move |who, counts| {
        assert_eq!(
            counts.keys().collect::<Vec<_>>(),
            vec![version],
            "{who}: {counts:?}"
        );
    }
}

fn envoy_rejections(mesh: &Mesh) -> Vec<String> {
    let stats = reqwest::blocking::get(format!("http://{}/stats", mesh.envoy_admin))
        .and_then(|r| r.text())
        .expect("envoy stats");
    let rejected: Vec<String> = stats
        .lines()
        .filter(|l| l.contains("update_rejected") && !l.ends_with(": 0"))
        .map(str::to_string)
        .collect();
    assert!(
        stats.contains("update_rejected"),
        "envoy stats lack update_rejected"
    );
    rejected
}

#[test]
fn envoy_and_halyard_route_alike() {
    let Some(envoy) = envoy() else { return };
    let mesh = start(&envoy, false);

    // 90/10 split over 2,000 requests: each proxy within ±3 points.
    apply_vs(
        &mesh,
        "  - route:\n    - destination: {host: reviews, subset: v1}\n      weight: 90\n    - destination: {host: reviews, subset: v2}\n      weight: 10\n",
    );
    both(&mesh, "/", &[], 2000, |who, c| {
        let v1 = share(c, "v1");
        assert!((87.0..=93.0).contains(&v1), "{who}: v1 {v1:.1}% of {c:?}");
        assert_eq!(c.len(), 2, "{who}: {c:?}");
    });

    // Header match pins a subset; everything else goes to the default.
    apply_vs(
        &mesh,
        "  - match:\n    - headers:\n        x-canary: {exact: \"true\"}\n    route:\n    - destination: {host: reviews, subset: v3}\n  - route:\n    - destination: {host: reviews, subset: v1}\n",
    );
    both(&mesh, "/", &[("x-canary", "true")], 200, only("v3"));
    both(&mesh, "/", &[("x-canary", "false")], 200, only("v1"));
    both(&mesh, "/", &[], 200, only("v1"));

    // URI prefix and regex matches; route order (first match wins).
    apply_vs(
        &mesh,
        concat!(
            "  - match:\n    - uri: {prefix: /api}\n    route:\n    - destination: {host: reviews, subset: v2}\n",
            "  - match:\n    - uri: {regex: \"/v[0-9]+/items\"}\n    route:\n    - destination: {host: reviews, subset: v3}\n",
            "  - match:\n    - uri: {prefix: /a}\n    route:\n    - destination: {host: reviews, subset: v1}\n",
            "  - match:\n    - uri: {prefix: /a/b}\n    route:\n    - destination: {host: reviews, subset: v3}\n",
            "  - route:\n    - destination: {host: reviews, subset: v1}\n",
        ),
    );
    both(&mesh, "/api/ratings", &[], 100, only("v2"));
    both(&mesh, "/v2/items", &[], 100, only("v3"));
    both(&mesh, "/v2/items/extra", &[], 100, only("v1"));
    both(&mesh, "/a/b/c", &[], 100, only("v1"));

    // 3-way split 50/30/20.
    apply_vs(
        &mesh,
        concat!(
            "  - route:\n",
            "    - destination: {host: reviews, subset: v1}\n      weight: 50\n",
            "    - destination: {host: reviews, subset: v2}\n      weight: 30\n",
            "    - destination: {host: reviews, subset: v3}\n      weight: 20\n",
        ),
    );
    // 4,000 requests: ±3 points is then at least 3.8 standard deviations for
    // every bucket of a random split, so a correct proxy does not flake.
    both(&mesh, "/", &[], 4000, |who, c| {
        for (v, want) in [("v1", 50.0), ("v2", 30.0), ("v3", 20.0)] {
            let got = share(c, v);
            assert!(
                (got - want).abs() <= 3.0,
                "{who}: {v} {got:.1}% (want {want}%) of {c:?}"
            );
        }
    });

    assert_eq!(
        envoy_rejections(&mesh),
        Vec::<String>::new(),
        "Envoy rejected config"
    );
    assert_halyard_admin(&mesh);
}

/// Our proxy's admin answers like Envoy's: stats with no rejected updates,
/// a config dump with the dynamic listeners, routes and clusters.
fn assert_halyard_admin(mesh: &Mesh) {
    let admin = |path: &str| {
        reqwest::blocking::get(format!("http://{}{path}", mesh.halyard_admin))
            .and_then(|r| r.text())
            .unwrap_or_else(|e| panic!("halyard admin {path}: {e}"))
    };
    let stats = admin("/stats");
    for stat in [
        "listener_manager.lds.update_rejected",
        "cluster_manager.cds.update_rejected",
    ] {
        let line = stats
            .lines()
            .find(|l| l.starts_with(stat))
            .unwrap_or_else(|| panic!("no {stat} in halyard /stats"));
        assert!(line.ends_with(": 0"), "{line}");
    }
    let dump: Value = serde_json::from_str(&admin("/config_dump")).expect("config_dump is JSON");
    let text = dump.to_string();
    for needle in [
        "ListenersConfigDump",
        "RoutesConfigDump",
        "ClustersConfigDump",
        "outbound|",
        &format!("{HALYARD_IP}_"),
    ] {
        assert!(text.contains(needle), "config_dump lacks {needle}");
    }
    assert_eq!(admin("/ready").trim(), "LIVE");
    assert!(admin("/clusters").contains("outbound|"));
}

/// State-of-the-world ADS on both proxies; the pilot dies and comes back:
/// traffic never stops, both reconnect, and config flows again.
#[test]
fn pilot_restart_keeps_traffic_flowing_sotw() {
    let Some(envoy) = envoy() else { return };
    let mut mesh = start(&envoy, true);
    apply_vs(
        &mesh,
        "  - route:\n    - destination: {host: reviews, subset: v2}\n",
    );
    if let Some(mut pilot) = mesh.pilot.take() {
        pilot.kill();
    }
    // Without a pilot, both proxies keep their last config.
    both(&mesh, "/", &[], 200, only("v2"));
    mesh.start_pilot();
    wait_for("both proxies to reconnect", Duration::from_secs(30), || {
        rds_acked(&mesh)
    });
    both(&mesh, "/", &[], 50, only("v2"));
    apply_vs(
        &mesh,
        "  - route:\n    - destination: {host: reviews, subset: v3}\n",
    );
    both(&mesh, "/", &[], 50, only("v3"));
    let syncz: Value = reqwest::blocking::get(format!("http://{}/debug/syncz", mesh.debug))
        .and_then(|r| r.json())
        .expect("syncz");
    let proxies = syncz.as_array().expect("array");
    assert_eq!(proxies.len(), 2, "{syncz}");
    for p in proxies {
        assert_eq!(p["delta"], false, "{p}");
    }
}

#[test]
fn config_edit_under_traffic_fails_no_request() {
    let Some(envoy) = envoy() else { return };
    let mesh = Arc::new(start(&envoy, false));
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = [ENVOY_IP, HALYARD_IP]
        .into_iter()
        .map(|ip| {
            let (mesh, stop, failures, sent) =
                (mesh.clone(), stop.clone(), failures.clone(), sent.clone());
            std::thread::spawn(move || {
                let client = proxy_client(&mesh, ip);
                let url = format!("http://{HOST}:{}/", mesh.port);
                // Bounded: at most 20,000 requests per proxy.
                for _ in 0..20_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                    match get(&client, &url) {
                        Ok((200, _)) => {}
                        other => {
                            eprintln!("{ip}: {other:?}");
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    apply_vs(
        &mesh,
        "  - route:\n    - destination: {host: reviews, subset: v1}\n      weight: 50\n    - destination: {host: reviews, subset: v2}\n      weight: 50\n",
    );
    apply_vs(
        &mesh,
        "  - route:\n    - destination: {host: reviews, subset: v2}\n",
    );
    // A broken edit: the pilot keeps the last good VirtualService.
    std::fs::write(
        mesh.dir.path().join("config/vs.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: test}\nspec:\n  hosts: [reviews]\n  http:\n  - rout: []\n",
    )
    .expect("write");
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("worker");
    }
    assert!(
        sent.load(Ordering::Relaxed) > 100,
        "too little traffic to judge"
    );
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "requests failed during config edits"
    );
    both(&mesh, "/", &[], 50, only("v2"));
    let configz: Value = reqwest::blocking::get(format!("http://{}/debug/configz", mesh.debug))
        .and_then(|r| r.json())
        .expect("configz");
    let errors = configz["errors"].to_string();
    assert!(
        errors.contains("vs.yaml") && errors.contains("rout"),
        "{errors}"
    );
    assert!(
        configz["kept_last_good"]
            .to_string()
            .contains("VirtualService/test/reviews")
    );

    // The pilot runs istioctl's analyzers on what it loaded.
    std::fs::write(
        mesh.dir.path().join("config/ghost.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: ghost, namespace: test}\nspec:\n  hosts: [ghost.example.com]\n  http:\n  - route:\n    - destination: {host: nowhere}\n",
    )
    .expect("write");
    wait_for("IST0101 on /debug/analyze", Duration::from_secs(10), || {
        let v: Value = reqwest::blocking::get(format!("http://{}/debug/analyze", mesh.debug))
            .ok()?
            .json()
            .ok()?;
        v["messages"]
            .as_array()?
            .iter()
            .any(|m| {
                m.as_str()
                    .is_some_and(|m| m.contains("IST0101") && m.contains("ghost"))
            })
            .then_some(())
    });
}

/// One request through the proxy on `ip`: status, response headers, and the
/// request headers the echo backend saw.
fn exchange(
    mesh: &Mesh,
    ip: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    let client = proxy_client(mesh, ip);
    let mut req = client.get(format!("http://{HOST}:{}/", mesh.port));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req
        .send()
        .unwrap_or_else(|e| panic!("request via {ip}: {e}"));
    let status = resp.status().as_u16();
    let h = resp.headers().clone();
    let body: Value = serde_json::from_str(&resp.text().unwrap_or_default()).unwrap_or(Value::Null);
    (status, h, body["headers"].clone())
}

fn values(h: &reqwest::header::HeaderMap, name: &str) -> Vec<String> {
    h.get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap_or_default().to_string())
        .collect()
}

fn fault_stat(admin: SocketAddr, stat: &str) -> u64 {
    let stats = reqwest::blocking::get(format!("http://{admin}/stats"))
        .and_then(|r| r.text())
        .expect("stats");
    stats
        .lines()
        .filter(|l| l.starts_with("http.") && l.contains(&format!(".fault.{stat}:")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// VirtualService `headers` and `fault`, the same through both proxies.
#[test]
fn header_edits_and_faults_alike() {
    let Some(envoy) = envoy() else { return };
    let mesh = start(&envoy, false);

    // Route-level and destination-level edits, both directions.
    apply_vs(
        &mesh,
        concat!(
            "  - headers:\n",
            "      request: {set: {x-set: route}, add: {x-add: route}, remove: [x-remove]}\n",
            "      response: {set: {x-resp-set: route}, add: {x-resp-add: route}, remove: [x-echo-pod]}\n",
            "    route:\n",
            "    - destination: {host: reviews, subset: v1}\n",
            "      headers:\n",
            "        request: {set: {x-dest: v1, x-set: dest}}\n",
            "        response: {add: {x-resp-dest: v1}}\n",
        ),
    );
    let sent = [("x-remove", "1"), ("x-add", "client"), ("x-set", "client")];
    for ip in [ENVOY_IP, HALYARD_IP] {
        wait_for("the header edits to apply", Duration::from_secs(10), || {
            (exchange(&mesh, ip, &sent).2["x-dest"] == "v1").then_some(())
        });
    }
    let mut seen = Vec::new();
    for (who, ip) in [("envoy", ENVOY_IP), ("halyard", HALYARD_IP)] {
        let (status, h, req) = exchange(&mesh, ip, &sent);
        assert_eq!(status, 200, "{who}");
        assert!(req.get("x-remove").is_none(), "{who}: {req}");
        assert_eq!(req["x-dest"], "v1", "{who}: {req}");
        assert!(
            h.get("x-echo-pod").is_none(),
            "{who}: response header not removed"
        );
        let view = (
            req["x-set"].clone(),
            req["x-add"].clone(),
            values(&h, "x-resp-set"),
            values(&h, "x-resp-add"),
            values(&h, "x-resp-dest"),
        );
        eprintln!("{who}: {view:?}");
        seen.push(view);
    }
    assert_eq!(
        seen[0], seen[1],
        "envoy and halyard edit headers differently"
    );

    // Per-destination edits of a weighted split follow the destination.
    apply_vs(
        &mesh,
        concat!(
            "  - route:\n",
            "    - destination: {host: reviews, subset: v1}\n      weight: 50\n",
            "      headers: {request: {set: {x-dest: v1}}, response: {set: {x-resp-dest: v1}}}\n",
            "    - destination: {host: reviews, subset: v2}\n      weight: 50\n",
            "      headers: {request: {set: {x-dest: v2}}, response: {set: {x-resp-dest: v2}}}\n",
        ),
    );
    for (who, ip) in [("envoy", ENVOY_IP), ("halyard", HALYARD_IP)] {
        for _ in 0..20 {
            let (_, h, req) = exchange(&mesh, ip, &[]);
            let version = values(&h, "x-echo-version");
            assert_eq!(
                req["x-dest"].as_str().map(str::to_string),
                version.first().cloned(),
                "{who}"
            );
            assert_eq!(values(&h, "x-resp-dest"), version, "{who}");
        }
    }

    // A 100% delay holds every request about that long (Envoy's timers are
    // millisecond-grained and may fire a little early; an undelayed request
    // takes about a millisecond here).
    const DELAYED: Duration = Duration::from_millis(250);
    apply_vs(
        &mesh,
        "  - fault:\n      delay: {fixedDelay: 300ms, percentage: {value: 100}}\n    route:\n    - destination: {host: reviews, subset: v1}\n",
    );
    // Envoy ACKs RDS on its main thread and hands the routes to its worker
    // a moment later: wait until the change shows before counting.
    let delayed = |ip: &str| {
        let started = std::time::Instant::now();
        let _ = exchange(&mesh, ip, &[]);
        started.elapsed() >= DELAYED
    };
    for ip in [ENVOY_IP, HALYARD_IP] {
        wait_for("the delay to apply", Duration::from_secs(10), || {
            delayed(ip).then_some(())
        });
    }
    for (who, ip) in [("envoy", ENVOY_IP), ("halyard", HALYARD_IP)] {
        for _ in 0..3 {
            let started = std::time::Instant::now();
            let (status, h, _) = exchange(&mesh, ip, &[]);
            assert_eq!(status, 200, "{who}");
            let took = started.elapsed();
            assert!(took >= DELAYED, "{who}: not delayed ({took:?}; {h:?})");
        }
    }

    // A 50% abort over 2,000 requests: each proxy within ±3 points.
    apply_vs(
        &mesh,
        "  - fault:\n      abort: {httpStatus: 503, percentage: {value: 50}}\n    route:\n    - destination: {host: reviews, subset: v1}\n",
    );
    for ip in [ENVOY_IP, HALYARD_IP] {
        wait_for("the abort to apply", Duration::from_secs(10), || {
            (exchange(&mesh, ip, &[]).0 == 503).then_some(())
        });
    }
    both(&mesh, "/", &[], 2000, |who, c| {
        let aborted = share(c, "status 503");
        assert!(
            (47.0..=53.0).contains(&aborted),
            "{who}: {aborted:.1}% aborted of {c:?}"
        );
        assert_eq!(c.len(), 2, "{who}: {c:?}");
    });
    for (who, admin) in [("envoy", mesh.envoy_admin), ("halyard", mesh.halyard_admin)] {
        let n = fault_stat(admin, "aborts_injected");
        assert!(
            (900..=1100).contains(&n),
            "{who}: fault.aborts_injected {n}"
        );
        assert!(
            fault_stat(admin, "delays_injected") >= 3,
            "{who}: delays_injected"
        );
    }

    // A gRPC abort: gRPC clients get HTTP 200 with grpc-status, others a
    // plain 200 with the abort body; both proxies alike.
    apply_vs(
        &mesh,
        "  - fault:\n      abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}\n    route:\n    - destination: {host: reviews, subset: v1}\n",
    );
    for ip in [ENVOY_IP, HALYARD_IP] {
        wait_for("the gRPC abort to apply", Duration::from_secs(10), || {
            let (_, h, _) = exchange(&mesh, ip, &[("content-type", "application/grpc")]);
            h.contains_key("grpc-status").then_some(())
        });
    }
    let mut seen = Vec::new();
    for (who, ip) in [("envoy", ENVOY_IP), ("halyard", HALYARD_IP)] {
        let (status, h, _) = exchange(&mesh, ip, &[("content-type", "application/grpc")]);
        let grpc = (
            status,
            values(&h, "grpc-status"),
            values(&h, "content-type"),
        );
        let client = proxy_client(&mesh, ip);
        let plain = get(&client, &format!("http://{HOST}:{}/", mesh.port)).expect("plain");
        eprintln!("{who}: grpc {grpc:?}, plain {plain:?}");
        assert_eq!(grpc.1, ["14"], "{who}");
        seen.push((grpc, plain));
    }
    assert_eq!(seen[0], seen[1], "envoy and halyard abort differently");
    assert_eq!(seen[0].1, (200, "fault filter abort".to_string()));

    assert_eq!(
        envoy_rejections(&mesh),
        Vec::<String>::new(),
        "Envoy rejected config"
    );
}

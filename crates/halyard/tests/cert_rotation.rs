//! Workload certificates that rotate every few seconds, end to end: a pilot
//! CA with a short TTL, a client sidecar and a server sidecar doing mTLS
//! with the SDS secrets `default` and `ROOTCA` (our proxy keeping its own
//! certificate, and stock Envoy with `halyard agent`), a steady open-loop
//! load through them, part of it on fresh connections (a tcp_proxy hop:
//! one new mTLS handshake between the sidecars per request).
//!
//! - Under load: several rotations on every sidecar (serials read with
//!   `halyard proxy-config secret`), no failed request.
//! - Pilot down: the sidecars keep serving on their certificates, renewal
//!   retries with back-off, the expiry is logged naming the identity, and
//!   once the pilot is back (same CA dir, same root) the certificates are
//!   renewed and service resumes with no sidecar restarted.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use common::{Proc, halyard, wait_for};
use serde_json::{Value, json};

/// Requests per second through each pair.
const RATE: u64 = 200;
/// Every FRESH-th request goes over a new connection (and a new handshake).
const FRESH: u64 = 4;
const LOOPBACK: &str = "127.0.0.1";

/// `N` distinct free ports, below the kernel's ephemeral range: the load
/// opens hundreds of connections a second, and a port picked from that
/// range can be taken by one of them before the sidecar binds it.
fn ports<const N: usize>() -> [u16; N] {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let mut seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(1, |d| d.subsec_nanos() as u64)
        ^ u64::from(std::process::id()) << 32;
    let mut held = Vec::new();
    for _ in 0..10_000 {
        if held.len() == N {
            break;
        }
        // xorshift: spread over [10000, low).
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let port = 10_000 + (seed % u64::from(low.saturating_sub(10_000).max(1))) as u16;
        if let Ok(l) = std::net::TcpListener::bind((LOOPBACK, port)) {
            held.push(l);
        }
    }
    assert_eq!(held.len(), N, "no {N} free ports below {low}");
    std::array::from_fn(|i| held[i].local_addr().expect("addr").port())
}

fn s(p: &Path) -> String {
    p.to_str().expect("utf8").to_string()
}

/// A pilot with a CA, its ports kept so it can be restarted in place.
struct Pilot {
    dir: PathBuf,
    ttl: String,
    xds: u16,
    debug: u16,
    secure: u16,
    proc: Option<Proc>,
}

impl Pilot {
    fn new(dir: &Path, ttl: &str) -> Pilot {
        let ok = halyard()
            .args(["token", "--key", &s(&dir.join("sa.key")), "--new-key"])
            .output()
            .expect("token key");
        assert!(ok.status.success(), "{ok:?}");
        std::fs::create_dir_all(dir.join("config")).expect("mkdir");
        let [xds, debug, secure] = ports();
        let mut p = Pilot {
            dir: dir.to_path_buf(),
            ttl: ttl.to_string(),
            xds,
            debug,
            secure,
            proc: None,
        };
        p.start();
        p
    }

    fn start(&mut self) {
        let d = |f: &str| s(&self.dir.join(f));
        let proc = Proc::spawn(
            if self.proc.is_none() && !self.dir.join("pilot.log").exists() {
                "pilot"
            } else {
                "pilot-again"
            },
            halyard()
                .args(["pilot", "--config", &d("config"), "--ca-dir", &d("ca")])
                .args(["--token-key", &d("sa.key.pub")])
                .args(["--workload-cert-ttl", &self.ttl])
                .args(["--xds", &format!("{LOOPBACK}:{}", self.xds)])
                .args(["--debug", &format!("{LOOPBACK}:{}", self.debug)])
                .args(["--secure-xds", &format!("{LOOPBACK}:{}", self.secure)]),
            &self.dir,
        );
        self.proc = Some(proc);
        let secure = self.secure;
        wait_for("the pilot's CA port", Duration::from_secs(20), || {
            std::net::TcpStream::connect((LOOPBACK, secure)).ok()
        });
    }

    fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    fn token(&self, sa: &str) -> PathBuf {
        let out = halyard()
            .args(["token", "--key", &s(&self.dir.join("sa.key"))])
            .args(["--namespace", "default", "--service-account", sa])
            .output()
            .expect("token");
        assert!(out.status.success(), "{out:?}");
        let path = self.dir.join(format!("{sa}.token"));
        std::fs::write(&path, out.stdout).expect("write token");
        path
    }
}

fn sds() -> Value {
    json!({
        "resource_api_version": "V3",
        "initial_fetch_timeout": "0s",
        "api_config_source": {
            "api_type": "GRPC",
            "transport_api_version": "V3",
            "grpc_services": [{"envoy_grpc": {"cluster_name": "sds-grpc"}}]
        }
    })
}

/// Istio's common TLS context: certificate and roots over SDS, a SAN check.
fn common_tls(alpn: &[&str], san: Value) -> Value {
    json!({
        "alpn_protocols": alpn,
        "tls_certificate_sds_secret_configs": [{"name": "default", "sds_config": sds()}],
        "combined_validation_context": {
            "default_validation_context": {
                "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": san}]
            },
            "validation_context_sds_secret_config": {"name": "ROOTCA", "sds_config": sds()}
        }
    })
}

const TLS: &str = "envoy.transport_sockets.tls";
const TLS_TYPES: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.";

fn downstream_tls(alpn: &[&str]) -> Value {
    json!({"name": TLS, "typed_config": {
        "@type": format!("{TLS_TYPES}DownstreamTlsContext"),
        "require_client_certificate": true,
        "common_tls_context": common_tls(alpn, json!({"prefix": "spiffe://cluster.local/"}))
    }})
}

fn upstream_tls(alpn: &[&str]) -> Value {
    json!({"name": TLS, "typed_config": {
        "@type": format!("{TLS_TYPES}UpstreamTlsContext"),
        "sni": "outbound_.80_._.server.default.svc.cluster.local",
        "common_tls_context": common_tls(
            alpn,
            json!({"exact": "spiffe://cluster.local/ns/default/sa/server"})
        )
    }})
}

fn hcm(prefix: &str, cluster: &str, xfcc: bool) -> Value {
    let mut c = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": prefix,
        "route_config": {"name": "r", "virtual_hosts": [{
            "name": "all", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}]
        }]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
    });
    if xfcc {
        c["forward_client_cert_details"] = json!("APPEND_FORWARD");
        c["set_current_client_cert_details"] = json!({"uri": true});
    }
    json!({"name": "envoy.filters.network.http_connection_manager", "typed_config": c})
}

fn tcp(prefix: &str, cluster: &str) -> Value {
    json!({"name": "envoy.filters.network.tcp_proxy", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": prefix, "cluster": cluster}})
}

fn address(port: u16) -> Value {
    json!({"socket_address": {"address": LOOPBACK, "port_value": port}})
}

fn listener(name: &str, port: u16, tls: Option<Value>, filter: Value) -> Value {
    let mut chain = json!({"filters": [filter]});
    if let Some(t) = tls {
        chain["transport_socket"] = t;
    }
    json!({"name": name, "address": address(port), "filter_chains": [chain]})
}

fn cluster(name: &str, port: u16, tls: Option<Value>) -> Value {
    let mut c = json!({
        "name": name, "type": "STATIC", "connect_timeout": "2s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": address(port)}}]}]}
    });
    if let Some(t) = tls {
        c["transport_socket"] = t;
    }
    c
}

/// Istio's `sds-grpc` cluster (what `halyard bootstrap --sds-socket` adds).
fn sds_cluster(socket: &Path) -> Value {
    json!({
        "name": "sds-grpc", "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": "sds-grpc", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"pipe": {"path": s(socket)}}}}]}]},
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}}
    })
}

fn bootstrap(node: &str, admin: u16, listeners: Vec<Value>, clusters: Vec<Value>) -> Value {
    json!({
        "node": {"id": format!("sidecar~127.0.0.1~{node}.default~default.svc.cluster.local"),
                 "cluster": format!("{node}.default")},
        "admin": {"address": address(admin)},
        "static_resources": {"listeners": listeners, "clusters": clusters}
    })
}

/// One sidecar: our proxy with its own keeper, or Envoy with an agent.
struct Sidecar {
    name: String,
    admin: u16,
    /// Where the keeper logs (the proxy's, or the agent's).
    keeper: Proc,
    envoy: Option<Proc>,
}

impl Sidecar {
    fn start(
        ours: bool,
        envoy: Option<&Path>,
        pilot: &Pilot,
        name: &str,
        sa: &str,
        config: Value,
        admin: u16,
    ) -> Sidecar {
        let dir = pilot.dir.join(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let socket = dir.join("sds.sock");
        let mut config = config;
        config["static_resources"]["clusters"]
            .as_array_mut()
            .expect("clusters")
            .push(sds_cluster(&socket));
        std::fs::write(dir.join("bootstrap.json"), config.to_string()).expect("write");
        let token = pilot.token(sa);
        let identity = |c: &mut std::process::Command| {
            c.args(["--ca-address", &format!("{LOOPBACK}:{}", pilot.secure)])
                .args(["--ca-root", &s(&pilot.dir.join("ca/root-cert.pem"))])
                .args(["--token", &s(&token)])
                .args(["--namespace", "default", "--service-account", sa]);
        };
        if ours {
            let mut c = halyard();
            c.args(["proxy", "--bootstrap", &s(&dir.join("bootstrap.json"))])
                .arg("--no-ready-port");
            identity(&mut c);
            Sidecar {
                name: format!("{name} (halyard proxy)"),
                admin,
                keeper: Proc::spawn(&format!("{name}-proxy"), &mut c, &pilot.dir),
                envoy: None,
            }
        } else {
            let mut c = halyard();
            c.args(["agent", "--socket", &s(&socket)]);
            identity(&mut c);
            let agent = Proc::spawn(&format!("{name}-agent"), &mut c, &pilot.dir);
            let envoy = Proc::spawn(
                &format!("{name}-envoy"),
                std::process::Command::new(envoy.expect("envoy"))
                    .args(["-c", &s(&dir.join("bootstrap.json"))])
                    .args(["--base-id", &admin.to_string()])
                    .args(["-l", "warning"]),
                &pilot.dir,
            );
            Sidecar {
                name: format!("{name} (envoy + agent)"),
                admin,
                keeper: agent,
                envoy: Some(envoy),
            }
        }
    }

    fn pids(&self) -> Vec<u32> {
        std::iter::once(self.keeper.pid())
            .chain(self.envoy.as_ref().map(|e| e.pid()))
            .collect()
    }

    fn alive(&mut self) -> bool {
        self.keeper.alive() && self.envoy.as_mut().is_none_or(|e| e.alive())
    }
}

/// The workload certificate a sidecar holds now, from `proxy-config secret`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Held {
    serial: String,
    not_before: String,
    not_after: String,
}

/// One HTTP/1.1 GET on loopback, the whole answer as text.
fn raw_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect((LOOPBACK, port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn held(admin: u16) -> Option<Held> {
    let out = halyard()
        .args(["proxy-config", "secret", "--admin"])
        .arg(format!("{LOOPBACK}:{admin}"))
        .args(["--output", "json"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let rows: Value = serde_json::from_slice(&out.stdout).ok()?;
    let row = rows
        .as_array()?
        .iter()
        .find(|r| r["resource_name"] == "default")?;
    assert_eq!(
        row["identity"]
            .as_str()
            .map(|i| i.starts_with("spiffe://cluster.local/ns/default/sa/")),
        Some(true),
        "{row}"
    );
    Some(Held {
        serial: row["serial_number"].as_str()?.to_string(),
        not_before: row["not_before"].as_str()?.to_string(),
        not_after: row["not_after"].as_str()?.to_string(),
    })
}

fn parse_time(t: &str) -> SystemTime {
    let t = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{t}: {e}"));
    SystemTime::from(t)
}

/// A client pair (the app's side) and a server pair in front of an echo.
struct Pair {
    who: &'static str,
    client: Sidecar,
    server: Sidecar,
    /// Client sidecar: HTTP (pooled mTLS upstream) and TCP (one mTLS
    /// connection per downstream connection).
    out_http: SocketAddr,
    out_tcp: SocketAddr,
}

impl Pair {
    fn start(ours: bool, envoy: Option<&Path>, pilot: &Pilot, echo: u16) -> Pair {
        let who = if ours { "halyard" } else { "envoy" };
        let [
            in_http,
            in_tcp,
            out_http,
            out_tcp,
            server_admin,
            client_admin,
        ] = ports();
        let server = bootstrap(
            &format!("{who}-server"),
            server_admin,
            vec![
                listener(
                    "in_http",
                    in_http,
                    Some(downstream_tls(&["h2", "http/1.1"])),
                    hcm("inbound", "app", true),
                ),
                listener(
                    "in_tcp",
                    in_tcp,
                    Some(downstream_tls(&["istio-peer-exchange", "h2", "http/1.1"])),
                    tcp("inbound_tcp", "app"),
                ),
            ],
            vec![cluster("app", echo, None)],
        );
        let client = bootstrap(
            &format!("{who}-client"),
            client_admin,
            vec![
                listener(
                    "out_http",
                    out_http,
                    None,
                    hcm("outbound", "server_http", false),
                ),
                listener("out_tcp", out_tcp, None, tcp("outbound_tcp", "server_tcp")),
            ],
            vec![
                cluster(
                    "server_http",
                    in_http,
                    Some(upstream_tls(&["istio-http/1.1"])),
                ),
                cluster(
                    "server_tcp",
                    in_tcp,
                    Some(upstream_tls(&["istio-peer-exchange", "istio"])),
                ),
            ],
        );
        let server = Sidecar::start(
            ours,
            envoy,
            pilot,
            &format!("{who}-server"),
            "server",
            server,
            server_admin,
        );
        let client = Sidecar::start(
            ours,
            envoy,
            pilot,
            &format!("{who}-client"),
            "client",
            client,
            client_admin,
        );
        Pair {
            who,
            client,
            server,
            out_http: (std::net::Ipv4Addr::LOCALHOST, out_http).into(),
            out_tcp: (std::net::Ipv4Addr::LOCALHOST, out_tcp).into(),
        }
    }

    fn sidecars(&self) -> [&Sidecar; 2] {
        [&self.client, &self.server]
    }
}

/// The app's two clients: keep-alive, and a new connection per request.
#[derive(Clone)]
struct Clients {
    pooled: reqwest::Client,
    fresh: reqwest::Client,
}

impl Clients {
    fn new() -> Clients {
        let b = || {
            reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .no_proxy()
        };
        Clients {
            pooled: b().build().expect("client"),
            fresh: b().pool_max_idle_per_host(0).build().expect("client"),
        }
    }

    /// One request: `Ok(body)` for a 200.
    async fn get(&self, to: SocketAddr, fresh: bool) -> Result<String, String> {
        let c = if fresh { &self.fresh } else { &self.pooled };
        let r = c
            .get(format!("http://{to}/"))
            .header("host", "server.default.svc.cluster.local")
            .send()
            .await
            .map_err(|e| format!("{e:?}"))?;
        let status = r.status();
        let body = r.text().await.map_err(|e| e.to_string())?;
        if status != 200 {
            return Err(format!("{status}: {body}"));
        }
        Ok(body)
    }
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    fresh_ok: AtomicU64,
    failed: AtomicU64,
    errors: std::sync::Mutex<Vec<String>>,
}

impl Tally {
    fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
    fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }
    fn errors(&self) -> Vec<String> {
        self.errors.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

/// An open-loop load of RATE req/s on `pair` until `stop` says so (checked
/// each tick), every FRESH-th over a new connection; at most 256 in flight
/// (more counts as a failure: the path is stuck).
async fn load(
    pair: (SocketAddr, SocketAddr),
    stop: impl Fn() -> bool + Send + 'static,
    tally: Arc<Tally>,
) {
    let clients = Clients::new();
    let in_flight = Arc::new(tokio::sync::Semaphore::new(256));
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    let mut i = 0u64;
    while !stop() {
        tick.tick().await;
        i += 1;
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            tally.failed.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let fresh = i.is_multiple_of(FRESH);
        let to = if fresh { pair.1 } else { pair.0 };
        let (clients, tally) = (clients.clone(), tally.clone());
        tasks.spawn(async move {
            match clients.get(to, fresh).await {
                Ok(_) => {
                    tally.ok.fetch_add(1, Ordering::Relaxed);
                    if fresh {
                        tally.fresh_ok.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut errors) = tally.errors.lock()
                        && errors.len() < 10
                    {
                        errors.push(format!("{} {e}", if fresh { "fresh" } else { "pooled" }));
                    }
                }
            }
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

/// Wait until both paths of `pair` answer, and check the server saw the
/// client's identity (x-forwarded-client-cert).
async fn wait_serving(pair: &Pair) {
    let clients = Clients::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let http = clients.get(pair.out_http, false).await;
        let tcp = clients.get(pair.out_tcp, true).await;
        if let (Ok(body), Ok(_)) = (&http, &tcp) {
            assert!(
                body.contains("URI=spiffe://cluster.local/ns/default/sa/client"),
                "{}: the server sidecar forwards the verified caller: {body}",
                pair.who
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{}: not serving mTLS: {http:?} {tcp:?}",
            pair.who
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn start_echo(dir: &Path) -> (Proc, u16) {
    let [port] = ports();
    let echo = Proc::spawn(
        "echo",
        halyard().args(["echo", "--port", &port.to_string()]),
        dir,
    );
    wait_for("echo", Duration::from_secs(10), || {
        std::net::TcpStream::connect((LOOPBACK, port)).ok()
    });
    (echo, port)
}

/// The load on every pair at once, until `stop`.
async fn run_loads(pairs: &[Pair], tallies: &[Arc<Tally>], stop: &Arc<AtomicBool>) {
    let mut loads = tokio::task::JoinSet::new();
    for (p, tally) in pairs.iter().zip(tallies) {
        let stop = stop.clone();
        loads.spawn(load(
            (p.out_http, p.out_tcp),
            move || stop.load(Ordering::Relaxed),
            tally.clone(),
        ));
    }
    while loads.join_next().await.is_some() {}
}

fn pairs(pilot: &Pilot, echo: u16) -> Vec<Pair> {
    let envoy = common::envoy();
    let mut pairs = vec![Pair::start(true, None, pilot, echo)];
    if let Some(envoy) = envoy.as_deref() {
        pairs.push(Pair::start(false, Some(envoy), pilot, echo));
    }
    pairs
}

#[test]
fn certificates_rotate_under_load_with_no_failed_request() {
    let dir = tempfile::tempdir().expect("tmp");
    // 4 s certificates (whole seconds, so 3-4 s left at issue): renewed
    // about every 2 s.
    let pilot = Pilot::new(dir.path(), "4s");
    let (_echo, echo) = start_echo(dir.path());
    let pairs = pairs(&pilot, echo);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        for p in &pairs {
            wait_serving(p).await;
        }
    });

    // Serials each sidecar holds, polled while the load runs.
    let seen: Vec<(String, u16, std::sync::Mutex<BTreeSet<Held>>)> = pairs
        .iter()
        .flat_map(|p| p.sidecars())
        .map(|s| (s.name.clone(), s.admin, Default::default()))
        .collect();
    let rotations = |seen: &[(String, u16, std::sync::Mutex<BTreeSet<Held>>)]| {
        seen.iter()
            .map(|(_, _, h)| h.lock().map(|h| h.len()).unwrap_or(0).saturating_sub(1))
            .min()
            .unwrap_or(0)
    };
    let started = Instant::now();
    // At least 8 s, until every sidecar rotated 3 times, at most 20 s.
    let done = || {
        let t = started.elapsed();
        t > Duration::from_secs(20) || (t > Duration::from_secs(8) && rotations(&seen) >= 3)
    };
    let tallies: Vec<Arc<Tally>> = pairs.iter().map(|_| Arc::default()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done() {
                std::thread::sleep(Duration::from_millis(100));
            }
            stop.store(true, Ordering::Relaxed);
        });
        for (_, admin, held_set) in &seen {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(h) = held(*admin)
                        && let Ok(mut set) = held_set.lock()
                    {
                        set.insert(h);
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
            });
        }
        rt.block_on(run_loads(&pairs, &tallies, &stop));
    });
    let elapsed = started.elapsed();

    for (p, tally) in pairs.iter().zip(&tallies) {
        let ok = tally.ok();
        let fresh = tally.fresh_ok.load(Ordering::Relaxed);
        eprintln!(
            "{}: {ok} requests ok ({fresh} on fresh connections), {} failed, in {elapsed:.1?}",
            p.who,
            tally.failed()
        );
        assert_eq!(tally.failed(), 0, "{}: {:?}", p.who, tally.errors());
        let expected = RATE * elapsed.as_secs() * 9 / 10;
        assert!(
            ok >= expected,
            "{}: {ok} requests, expected ~{expected}",
            p.who
        );
        assert!(fresh >= ok / FRESH / 2, "{}: {fresh} fresh of {ok}", p.who);
    }
    for (name, _, h) in &seen {
        let h = h.lock().expect("lock");
        let serials: Vec<&str> = h.iter().map(|h| h.serial.as_str()).collect();
        let not_before: BTreeSet<&str> = h.iter().map(|h| h.not_before.as_str()).collect();
        eprintln!(
            "{name}: {} rotations seen ({} distinct not_before)",
            h.len() - 1,
            not_before.len()
        );
        assert!(h.len() >= 4, "{name}: serials {serials:?}");
        assert!(not_before.len() >= 3, "{name}: not_before {not_before:?}");
    }
    assert!(rotations(&seen) >= 3);
}

/// A log without ANSI colours.
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[test]
fn sidecars_ride_out_a_pilot_outage_and_renew_when_it_returns() {
    let dir = tempfile::tempdir().expect("tmp");
    // 6 s certificates: 5-6 s left at issue, renewed about every 3 s, so
    // each has at least ~2.5 s left when the pilot goes.
    let mut pilot = Pilot::new(dir.path(), "6s");
    let (_echo, echo) = start_echo(dir.path());
    let mut pairs = pairs(&pilot, echo);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        for p in &pairs {
            wait_serving(p).await;
        }
    });
    let pids: Vec<Vec<u32>> = pairs
        .iter()
        .flat_map(|p| p.sidecars())
        .map(|s| s.pids())
        .collect();
    let admins: Vec<(String, u16)> = pairs
        .iter()
        .flat_map(|p| p.sidecars())
        .map(|s| (s.name.clone(), s.admin))
        .collect();
    let all_held = || -> Vec<Held> {
        admins
            .iter()
            .map(|(name, admin)| {
                wait_for(
                    &format!("{name}'s certificate"),
                    Duration::from_secs(10),
                    || held(*admin),
                )
            })
            .collect()
    };

    // The load runs from before the pilot goes until 1 s before the first
    // certificate expires (wall clock, unix ms; set once that is known).
    let tallies: Vec<Arc<Tally>> = pairs.iter().map(|_| Arc::default()).collect();
    let stop_at = Arc::new(AtomicU64::new(u64::MAX));
    let (at_kill, held_at_kill, window) = std::thread::scope(|scope| {
        let loads = scope.spawn(|| {
            let stop = Arc::new(AtomicBool::new(false));
            let flag = stop.clone();
            let stop_at = stop_at.clone();
            let watch = std::thread::spawn(move || {
                while unix_ms(SystemTime::now()) < stop_at.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                flag.store(true, Ordering::Relaxed);
            });
            rt.block_on(run_loads(&pairs, &tallies, &stop));
            watch.join().expect("watch");
        });
        // Load with the pilot up, then the pilot goes.
        std::thread::sleep(Duration::from_millis(1500));
        let at_kill: Vec<u64> = tallies.iter().map(|t| t.ok()).collect();
        pilot.kill();
        let killed = Instant::now();
        // A renewal in flight at the kill has finished (or failed) by now.
        std::thread::sleep(Duration::from_millis(300));
        let held = all_held();
        let first_expiry = held
            .iter()
            .map(|h| parse_time(&h.not_after))
            .min()
            .expect("sidecars");
        let stop = first_expiry - Duration::from_secs(1);
        stop_at.store(unix_ms(stop), Ordering::Relaxed);
        loads.join().expect("load");
        (at_kill, held, killed.elapsed())
    });
    for (i, p) in pairs.iter().enumerate() {
        let t = &tallies[i];
        eprintln!(
            "{}: {} requests ok ({} with the pilot down, for {window:.1?}), {} failed",
            p.who,
            t.ok(),
            t.ok() - at_kill[i],
            t.failed()
        );
        assert_eq!(t.failed(), 0, "{}: {:?}", p.who, t.errors());
        assert!(
            t.ok() - at_kill[i] >= RATE,
            "{}: served on with the pilot down",
            p.who
        );
    }
    assert!(window >= Duration::from_millis(1500), "{window:?}");

    // Renewal retries with back-off; the expiry is logged, naming the
    // identity, serial and time.
    let last_expiry = held_at_kill
        .iter()
        .map(|h| parse_time(&h.not_after))
        .max()
        .expect("sidecars");
    for (p, h) in pairs.iter().flat_map(|p| p.sidecars()).zip(&held_at_kill) {
        let sa = if p.name.contains("client") {
            "client"
        } else {
            "server"
        };
        let id = format!("id=spiffe://cluster.local/ns/default/sa/{sa}");
        let log = wait_for(
            &format!("{} to log the expiry", p.name),
            Duration::from_secs(5)
                + last_expiry
                    .duration_since(SystemTime::now())
                    .unwrap_or_default(),
            || {
                let log = plain(&p.keeper.log_text());
                log.lines()
                    .any(|l| l.contains("workload certificate expired:") && l.contains(&id))
                    .then_some(log)
            },
        );
        let expired = log
            .lines()
            .find(|l| l.contains("workload certificate expired:"))
            .expect("line");
        eprintln!("{}: {expired}", p.name);
        assert!(
            expired.contains("ERROR")
                && expired.contains(&format!("serial={}", h.serial))
                && expired.contains(&format!("expired_at={}", h.not_after)),
            "{}: {expired}",
            p.name
        );
        for retry in ["retry_s=1", "retry_s=2"] {
            assert!(
                log.lines().any(|l| l.contains("certificate renewal failed")
                    && l.contains(retry)
                    && l.contains(&id)),
                "{}: no renewal failure with {retry}:\n{log}",
                p.name
            );
        }
    }
    // The expiry is real: once the last second of validity is over, a new
    // connection is refused by either pair (Envoy: BoringSSL re-verifies a
    // resumed session; ours rebuilds its TLS configs, session caches with
    // them, when its certificate expires, so the next handshake is full).
    let over = last_expiry + Duration::from_secs(1);
    if let Ok(d) = over.duration_since(SystemTime::now()) {
        std::thread::sleep(d + Duration::from_millis(100));
    }
    rt.block_on(async {
        let clients = Clients::new();
        for p in &pairs {
            let r = clients.get(p.out_tcp, true).await.map(|_| "ok");
            eprintln!("{}: a new connection after the expiry: {r:?}", p.who);
            assert!(r.is_err(), "{}: expired certificates accepted", p.who);
        }
    });
    // Our sidecars say why they are not ready (Envoy's 15000/ready knows
    // nothing of its agent's certificate).
    for p in pairs.iter().filter(|p| p.who != "envoy") {
        for s in p.sidecars() {
            let ready = raw_get(s.admin, "/ready");
            assert!(
                ready.starts_with("HTTP/1.1 503") && ready.contains("expired at"),
                "{}: {ready}",
                s.name
            );
        }
    }

    // The pilot comes back with the same CA dir (same root): every sidecar
    // renews on its next try and serves again, none restarted.
    pilot.start();
    let back = Instant::now();
    let renewed = wait_for("every sidecar renewed", Duration::from_secs(25), || {
        let now = SystemTime::now();
        let fresh: Vec<Held> = admins.iter().filter_map(|(_, a)| held(*a)).collect();
        (fresh.len() == admins.len()
            && fresh
                .iter()
                .zip(&held_at_kill)
                .all(|(f, old)| f.serial != old.serial && parse_time(&f.not_after) > now))
        .then_some(back.elapsed())
    });
    rt.block_on(async {
        for p in &pairs {
            wait_serving(p).await;
        }
    });
    let serving = back.elapsed();
    eprintln!("renewed {renewed:.1?} and serving {serving:.1?} after the pilot came back");
    let after: Vec<Arc<Tally>> = pairs.iter().map(|_| Arc::default()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(Duration::from_secs(2));
            stop.store(true, Ordering::Relaxed);
        });
        rt.block_on(run_loads(&pairs, &after, &stop));
    });
    for (p, t) in pairs.iter().zip(&after) {
        eprintln!("{} after: {} ok, {} failed", p.who, t.ok(), t.failed());
        assert_eq!(t.failed(), 0, "{}: {:?}", p.who, t.errors());
        assert!(t.ok() >= RATE, "{}", p.who);
    }
    for (i, s) in pairs
        .iter_mut()
        .flat_map(|p| [&mut p.client, &mut p.server])
        .enumerate()
    {
        assert!(s.alive(), "{} died", s.name);
        assert_eq!(s.pids(), pids[i], "{} was restarted", s.name);
        let log = plain(&s.keeper.log_text());
        assert!(
            log.lines().any(
                |l| l.contains("workload certificate renewed: the CA answers again")
                    && l.contains("was_expired=true")
            ),
            "{}: no renewal after the outage logged:\n{log}",
            s.name
        );
    }
}

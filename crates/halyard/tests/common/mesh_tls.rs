//! A pilot with a CA and sidecar pairs doing mTLS in front of an echo, for
//! certificate tests under load: our proxy pair (keeping its own
//! certificate) and the Envoy + `halyard agent` pair, an open-loop load of
//! RATE req/s through each (every FRESH-th request on a new connection),
//! and what each sidecar holds (`halyard proxy-config secret`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use super::sidecar_bootstrap::{
    bootstrap, cluster, downstream_tls, hcm, listener, sds_cluster, tcp, upstream_tls,
};
use super::{Proc, halyard, wait_for};

/// Requests per second through each pair.
pub const RATE: u64 = 200;
/// Every FRESH-th request goes over a new connection (and a new handshake).
pub const FRESH: u64 = 4;
pub const LOOPBACK: &str = "127.0.0.1";

/// `N` distinct free ports, below the kernel's ephemeral range: the load
/// opens hundreds of connections a second, and a port picked from that
/// range can be taken by one of them before the sidecar binds it.
pub fn ports<const N: usize>() -> [u16; N] {
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

pub fn s(p: &Path) -> String {
    p.to_str().expect("utf8").to_string()
}

/// A pilot with a CA, its ports kept so it can be restarted in place.
pub struct Pilot {
    pub dir: PathBuf,
    pub ttl: String,
    pub xds: u16,
    pub debug: u16,
    pub secure: u16,
    pub proc: Option<Proc>,
}

impl Pilot {
    pub fn new(dir: &Path, ttl: &str) -> Pilot {
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

    pub fn start(&mut self) {
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

    /// The running pilot's log.
    pub fn log(&self) -> String {
        self.proc.as_ref().map(Proc::log_text).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    pub fn token(&self, sa: &str) -> PathBuf {
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

/// One sidecar: our proxy with its own keeper, or Envoy with an agent.
pub struct Sidecar {
    pub name: String,
    pub admin: u16,
    /// Where the keeper logs (the proxy's, or the agent's).
    pub keeper: Proc,
    pub envoy: Option<Proc>,
}

impl Sidecar {
    pub fn start(
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

    pub fn pids(&self) -> Vec<u32> {
        std::iter::once(self.keeper.pid())
            .chain(self.envoy.as_ref().map(|e| e.pid()))
            .collect()
    }

    pub fn alive(&mut self) -> bool {
        self.keeper.alive() && self.envoy.as_mut().is_none_or(|e| e.alive())
    }
}

/// The workload certificate a sidecar holds now, from `proxy-config secret`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Held {
    pub serial: String,
    pub not_before: String,
    pub not_after: String,
}

/// One HTTP/1.1 GET on loopback, the whole answer as text.
pub fn raw_get(port: u16, path: &str) -> String {
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

pub fn held(admin: u16) -> Option<Held> {
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

pub fn parse_time(t: &str) -> SystemTime {
    let t = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{t}: {e}"));
    SystemTime::from(t)
}

/// A client pair (the app's side) and a server pair in front of an echo.
pub struct Pair {
    pub who: &'static str,
    pub client: Sidecar,
    pub server: Sidecar,
    /// Client sidecar: HTTP (pooled mTLS upstream) and TCP (one mTLS
    /// connection per downstream connection).
    pub out_http: SocketAddr,
    pub out_tcp: SocketAddr,
}

impl Pair {
    pub fn start(ours: bool, envoy: Option<&Path>, pilot: &Pilot, echo: u16) -> Pair {
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

    pub fn sidecars(&self) -> [&Sidecar; 2] {
        [&self.client, &self.server]
    }
}

/// The app's two clients: keep-alive, and a new connection per request.
#[derive(Clone)]
pub struct Clients {
    pub pooled: reqwest::Client,
    pub fresh: reqwest::Client,
}

impl Clients {
    pub fn new() -> Clients {
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
    pub async fn get(&self, to: SocketAddr, fresh: bool) -> Result<String, String> {
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
pub struct Tally {
    pub ok: AtomicU64,
    pub fresh_ok: AtomicU64,
    pub failed: AtomicU64,
    pub errors: std::sync::Mutex<Vec<String>>,
}

impl Tally {
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }
    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

/// An open-loop load of RATE req/s on `pair` until `stop` says so (checked
/// each tick), every FRESH-th over a new connection; at most 256 in flight
/// (more counts as a failure: the path is stuck).
pub async fn load(
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
pub async fn wait_serving(pair: &Pair) {
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

pub fn start_echo(dir: &Path) -> (Proc, u16) {
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
pub async fn run_loads(pairs: &[Pair], tallies: &[Arc<Tally>], stop: &Arc<AtomicBool>) {
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

pub fn pairs(pilot: &Pilot, echo: u16) -> Vec<Pair> {
    let envoy = super::envoy();
    let mut pairs = vec![Pair::start(true, None, pilot, echo)];
    if let Some(envoy) = envoy.as_deref() {
        pairs.push(Pair::start(false, Some(envoy), pilot, echo));
    }
    pairs
}

/// A pilot with a CA and `ttl` workload certificates, the echo, and every
/// pair (Envoy's when there is an Envoy binary), serving mTLS.
pub fn start_mesh(dir: &Path, ttl: &str) -> (Pilot, Proc, Vec<Pair>, tokio::runtime::Runtime) {
    let pilot = Pilot::new(dir, ttl);
    let (echo, echo_port) = start_echo(dir);
    let pairs = pairs(&pilot, echo_port);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        for p in &pairs {
            wait_serving(p).await;
        }
    });
    (pilot, echo, pairs, rt)
}

//! Harness for end-to-end tests: child processes that die with the test,
//! free ports, readiness polling with deadlines, the Envoy binary, and
//! meshes brought up by `halyard up` (`local_mesh`).
#![allow(dead_code)]

pub mod local_mesh;
pub mod mesh_tls;
pub mod sidecar_bootstrap;

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process killed (and reaped) when dropped, also on panic.
pub struct Proc {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, logdir: &Path) -> Proc {
        let log = logdir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child = cmd
            .stdout(Stdio::from(file.try_clone().expect("dup")))
            .stderr(Stdio::from(file))
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Proc {
            name: name.to_string(),
            child,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Still running?
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let text = self.log_text();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            eprintln!("--- last lines of {} ---", self.name);
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// The halyard binary under test.
pub fn halyard() -> Command {
    Command::new(env!("CARGO_BIN_EXE_halyard"))
}

/// A port free on every given IP right now.
pub fn free_port(ips: &[&str]) -> u16 {
    for _ in 0..100 {
        let first = TcpListener::bind((ips[0], 0)).expect("bind");
        let port = first.local_addr().expect("addr").port();
        if ips[1..]
            .iter()
            .all(|ip| TcpListener::bind((*ip, port)).is_ok())
        {
            return port;
        }
    }
    panic!("no common free port on {ips:?}");
}

/// Poll `f` until it returns Some, or panic after `timeout` naming `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The stock Envoy binary: `$HALYARD_ENVOY`, else `envoy` on PATH. None when
/// absent (tests then skip loudly, except under CI where that is a failure).
pub fn envoy() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HALYARD_ENVOY") {
        return Some(PathBuf::from(p));
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("envoy"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must provide Envoy: set HALYARD_ENVOY (scripts/test.sh does)"
        );
        eprintln!("SKIP: no Envoy binary; run the suite through scripts/test.sh");
    }
    found
}

/// Blocking HTTP GET with a Host override, through `addr`. Returns (status, body).
pub fn get(client: &reqwest::blocking::Client, url: &str) -> Result<(u16, String), String> {
    let resp = client.get(url).send().map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    Ok((status, resp.text().map_err(|e| e.to_string())?))
}

/// A client that sends requests for `host` to `addr` (like a captured app).
pub fn client_via(host: &str, addr: SocketAddr) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .resolve(host, addr)
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(4)
        .build()
        .expect("client")
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

//! The pilot under test: a `halyard pilot` subprocess (so its RSS and CPU are
//! its own), or in-process via `pilot::run` (smoke runs, when no binary is
//! built; then RSS/CPU are the whole bench process's). Plus the /proc readers.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A running pilot.
pub enum PilotUnderTest {
    Process {
        child: Child,
        addr: SocketAddr,
        debug: SocketAddr,
        spawn: Spawn,
    },
    InProcess {
        task: tokio::task::JoinHandle<()>,
        addr: SocketAddr,
        debug: SocketAddr,
    },
}

/// How the pilot subprocess was started (to start it again the same way).
#[derive(Clone, Debug)]
pub struct Spawn {
    pub bin: PathBuf,
    pub config_dir: PathBuf,
    pub log: PathBuf,
    /// Its `--send-timeout`.
    pub send_timeout: Duration,
}

/// CPU seconds and memory of a process, from /proc.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ProcUsage {
    /// utime + stime, all threads.
    pub cpu_s: f64,
    /// VmRSS now.
    pub rss_mib: f64,
    /// VmHWM: peak RSS so far.
    pub hwm_mib: f64,
}

impl PilotUnderTest {
    /// Start `halyard pilot` on free loopback ports.
    pub fn spawn(spawn: Spawn) -> anyhow::Result<PilotUnderTest> {
        let addr = free_port()?;
        let debug = free_port()?;
        let log = std::fs::File::create(&spawn.log).context("pilot log")?;
        let child = start(&spawn, addr, debug, log)?;
        Ok(PilotUnderTest::Process {
            child,
            addr,
            debug,
            spawn,
        })
    }

    /// Kill the pilot process (as a crash or a forced restart does) and start
    /// it again on the same ports; returns once it answers /ready.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let PilotUnderTest::Process {
            child,
            addr,
            debug,
            spawn,
        } = self
        else {
            bail!("only a pilot subprocess can be restarted");
        };
        let _ = child.kill();
        let _ = child.wait();
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(&spawn.log)
            .context("pilot log")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        // The old process's ports are free once it is gone.
        loop {
            match start(spawn, *addr, *debug, log.try_clone()?) {
                Ok(new) => {
                    *child = new;
                    return Ok(());
                }
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Run the pilot inside this process.
    pub async fn in_process(
        config_dir: &Path,
        send_timeout: Duration,
    ) -> anyhow::Result<PilotUnderTest> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let opts = pilot::PilotOptions {
            config_dir: config_dir.to_path_buf(),
            registry_dir: None,
            xds_addr: "127.0.0.1:0".parse()?,
            debug_addr: "127.0.0.1:0".parse()?,
            debounce: Duration::from_millis(100),
            dns_addr: None,
            auto_allocate: false,
            push_throttle: pilot::DEFAULT_PUSH_THROTTLE,
            send_timeout: Some(send_timeout),
            extension_providers: Vec::new(),
            access_log: None,
            path_normalization: Default::default(),
            ca: None,
        };
        let task = tokio::spawn(async move {
            if let Err(e) = pilot::run(opts, Some(tx)).await {
                eprintln!("in-process pilot: {e}");
            }
        });
        let started = rx.await.context("in-process pilot did not start")?;
        Ok(PilotUnderTest::InProcess {
            task,
            addr: started.xds_addr,
            debug: started.debug_addr,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        match self {
            PilotUnderTest::Process { addr, .. } | PilotUnderTest::InProcess { addr, .. } => *addr,
        }
    }

    /// Node ids of the proxies the pilot has a stream for (its /debug/syncz).
    pub fn connected_ids(&self) -> anyhow::Result<Vec<String>> {
        let debug = match self {
            PilotUnderTest::Process { debug, .. } | PilotUnderTest::InProcess { debug, .. } => {
                *debug
            }
        };
        let body = http_get(debug, "/debug/syncz")?;
        let v: serde_json::Value = serde_json::from_slice(&body).context("syncz JSON")?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p.get("node_id")?.as_str().map(str::to_string))
            .collect())
    }

    /// Whether RSS/CPU figures are the pilot's alone.
    pub fn isolated(&self) -> bool {
        matches!(self, PilotUnderTest::Process { .. })
    }

    /// The pilot's usage (the whole process's when in-process).
    pub fn usage(&self) -> ProcUsage {
        match self {
            PilotUnderTest::Process { child, .. } => usage(&format!("/proc/{}", child.id())),
            PilotUnderTest::InProcess { .. } => usage("/proc/self"),
        }
    }

    /// Stop it (only the process we started, by its handle).
    pub fn stop(self) {
        match self {
            PilotUnderTest::Process { mut child, .. } => {
                let _ = child.kill();
                let _ = child.wait();
            }
            PilotUnderTest::InProcess { task, .. } => task.abort(),
        }
    }
}

/// Start the subprocess and wait for its /ready.
fn start(
    spawn: &Spawn,
    addr: SocketAddr,
    debug: SocketAddr,
    log: std::fs::File,
) -> anyhow::Result<Child> {
    let mut child = Command::new(&spawn.bin)
        .args(["pilot", "--config"])
        .arg(&spawn.config_dir)
        .args(["--xds", &addr.to_string(), "--debug", &debug.to_string()])
        .args(["--debounce", "100ms"])
        .arg(format!(
            "--send-timeout={}ms",
            spawn.send_timeout.as_millis()
        ))
        // HALYARD_PILOT_LOG (e.g. `info`: per-reload push timings) overrides.
        .env(
            "HALYARD_LOG",
            std::env::var("HALYARD_PILOT_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("start {}", spawn.bin.display()))?;
    // Both ports are bound before the config is loaded; the debug server
    // answers only once loading is done, so wait for its /ready.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !http_ok(debug) {
        if let Some(status) = child.try_wait()? {
            bail!("pilot exited early ({status})");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("pilot did not answer on {debug}/ready within 120 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child)
}

/// The body of `GET path` on `addr` (HTTP/1.1, connection closed after).
fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<Vec<u8>> {
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: pilot\r\nConnection: close\r\n\r\n"
    )?;
    let mut all = Vec::new();
    conn.read_to_end(&mut all)?;
    let at = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no HTTP header end")?;
    anyhow::ensure!(all.starts_with(b"HTTP/1.1 200"), "GET {path}: not 200");
    let body = all.split_off(at + 4);
    // Chunked bodies: axum sends a length for JSON, so no de-chunking here.
    Ok(body)
}

/// Whether `GET /ready` on `addr` answers 200.
fn http_ok(addr: SocketAddr) -> bool {
    let Ok(mut conn) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
    if conn
        .write_all(b"GET /ready HTTP/1.1\r\nHost: pilot\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    conn.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}

fn free_port() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

/// Read /proc/PID/stat and /proc/PID/status (`proc_dir` = "/proc/PID").
pub fn usage(proc_dir: &str) -> ProcUsage {
    let mut u = ProcUsage::default();
    if let Ok(stat) = std::fs::read_to_string(format!("{proc_dir}/stat")) {
        // Fields after the parenthesised command name; utime, stime are 14, 15.
        if let Some((_, rest)) = stat.rsplit_once(')') {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
            u.cpu_s = (ticks(11) + ticks(12)) / clock_ticks();
        }
    }
    if let Ok(status) = std::fs::read_to_string(format!("{proc_dir}/status")) {
        for line in status.lines() {
            let kib = || {
                line.split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            if line.starts_with("VmRSS:") {
                u.rss_mib = kib() / 1024.0;
            } else if line.starts_with("VmHWM:") {
                u.hwm_mib = kib() / 1024.0;
            }
        }
    }
    u
}

/// Busy and total CPU seconds of the whole host since boot (/proc/stat).
pub fn host_cpu() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return (0.0, 0.0);
    };
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: f64 = f.iter().take(8).sum();
    // idle (3) and iowait (4) are not busy.
    let idle = f.get(3).copied().unwrap_or(0.0) + f.get(4).copied().unwrap_or(0.0);
    let t = clock_ticks();
    ((total - idle) / t, total / t)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// `halyard` next to this executable (target/release/halyard), if built.
pub fn default_pilot_bin() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?.join("halyard");
    bin.is_file().then_some(bin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_usage() {
        let u = usage("/proc/self");
        assert!(u.rss_mib > 0.0 && u.hwm_mib >= u.rss_mib, "{u:?}");
        assert!(u.cpu_s >= 0.0);
    }
}

//! A stock Envoy as a test peer: found via `HALYARD_ENVOY`, `envoy` on PATH
//! or /work/cache/venv/bin/envoy; started from a bootstrap file, killed when
//! dropped (pass or fail); its listeners and stats read from its admin.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::admin_get;

pub fn envoy_binary() -> Option<PathBuf> {
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

/// A running Envoy; killed on drop.
pub struct Envoy {
    child: Child,
    pub admin: SocketAddr,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start Envoy on `yaml` (written into `dir`) and wait for its admin.
pub async fn start(bin: &Path, yaml: &str, dir: &Path) -> Envoy {
    let config = dir.join("envoy.yaml");
    std::fs::write(&config, yaml).unwrap();
    let admin_path = dir.join("admin");
    // Distinct base ids let several Envoys run at once.
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let base_id = 10_000 + (std::process::id() % 50_000) * 8 + n;
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
    let mut envoy = Envoy {
        child,
        admin: "0.0.0.0:0".parse().unwrap(),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    envoy.admin = loop {
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
    envoy
}

impl Envoy {
    /// The bound address of listener `name` (or the first one), once up.
    pub async fn listener(&self, name: Option<&str>) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, body) = admin_get(self.admin, "/listeners?format=json").await;
            if status == 200
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&body)
                && let Some(list) = v["listener_statuses"].as_array()
                && let Some(l) = list.iter().find(|l| name.is_none_or(|n| l["name"] == n))
                && let Some(sa) = l["local_address"]["socket_address"].as_object()
                && sa["port_value"].as_u64().unwrap_or(0) != 0
            {
                let ip = sa["address"].as_str().unwrap();
                return SocketAddr::new(
                    ip.parse().unwrap(),
                    sa["port_value"].as_u64().unwrap() as u16,
                );
            }
            assert!(Instant::now() < deadline, "envoy listener {name:?} not up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Counters and gauges whose name contains `part`.
    pub async fn stats(&self, part: &str) -> Vec<(String, u64)> {
        let (_, body) = admin_get(self.admin, "/stats").await;
        body.lines()
            .filter(|l| l.contains(part))
            .filter_map(|l| {
                let (k, v) = l.split_once(": ")?;
                Some((k.to_string(), v.trim().parse().ok()?))
            })
            .collect()
    }
}

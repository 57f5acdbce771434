//! One fresh mesh per measured run: `halyard up --detach` on the benchmark
//! topology (bench/sidecar/topology.yaml plus a Namespace that is or is not
//! injected), read back from its status.json, and `halyard down` when the
//! guard drops, so no namespace, rule or process outlives a run, even on error.
//! Fresh namespaces per run also mean no conntrack entry of one mode can
//! steer a later mode's connection around a sidecar.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use local::state::{MeshStatus, PodStatus, StateDir};

use super::{Mode, Transport};

/// The topology every mode runs (Deployments `client` and `server`, Service `server`).
pub const TOPOLOGY: &str = include_str!("../../../../bench/sidecar/topology.yaml");

/// How to start meshes.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MeshConfig {
    pub halyard: PathBuf,
    /// Envoy executable for `--sidecar envoy` (None: `halyard up`'s default lookup).
    pub envoy: Option<PathBuf>,
    pub proxy_concurrency: usize,
    /// Namespace prefix (`--name`); short, since interface names derive from it.
    pub name: String,
    /// Scratch directory for manifests and state dirs.
    pub work: PathBuf,
}

/// A running mesh; `halyard down` on drop.
pub struct Mesh {
    halyard: PathBuf,
    state: PathBuf,
    name: String,
    pub status: MeshStatus,
    down: bool,
}

/// The pods and address a run needs.
pub struct Pods {
    pub client: PodStatus,
    pub server: PodStatus,
    pub service: SocketAddr,
}

/// Whether `halyard up` injects the sidecars: only for the pilot-configured
/// transport; the static ones start their own pair in an uninjected mesh.
fn injected(mode: Mode, transport: Transport) -> bool {
    mode.has_sidecars() && !transport.is_static()
}

/// Write the manifests for `mode` into `dir`.
fn write_manifests(dir: &Path, mode: Mode, transport: Transport) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let labels = if injected(mode, transport) {
        "\n  labels: {istio-injection: enabled}"
    } else {
        ""
    };
    let ns = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: bench{labels}\n");
    std::fs::write(dir.join("namespace.yaml"), ns)?;
    std::fs::write(dir.join("topology.yaml"), TOPOLOGY)?;
    Ok(())
}

impl Mesh {
    /// Bring up the topology for `mode`; `seq` keeps each run's files apart.
    pub fn up(
        cfg: &MeshConfig,
        mode: Mode,
        transport: Transport,
        seq: usize,
    ) -> anyhow::Result<Mesh> {
        let dir = cfg.work.join(format!("run-{seq}-{}", mode.name()));
        let manifests = dir.join("manifests");
        write_manifests(&manifests, mode, transport)?;
        let state = dir.join("state");
        let mut cmd = Command::new(&cfg.halyard);
        cmd.arg("up")
            .arg(&manifests)
            .arg("--detach")
            .args(["--name", &cfg.name])
            .arg("--state-dir")
            .arg(&state)
            .args(["--timeout", "60"])
            .args(["--proxy-concurrency", &cfg.proxy_concurrency.to_string()]);
        if mode == Mode::Envoy && injected(mode, transport) {
            cmd.args(["--sidecar", "envoy"]);
            if let Some(e) = &cfg.envoy {
                cmd.arg("--envoy").arg(e);
            }
        }
        // The guard exists before `up` runs, so a half-started mesh is torn down too.
        let mut mesh = Mesh {
            halyard: cfg.halyard.clone(),
            state: state.clone(),
            name: cfg.name.clone(),
            status: MeshStatus::default(),
            down: false,
        };
        let out = cmd
            .output()
            .with_context(|| format!("run {}", cfg.halyard.display()))?;
        if !out.status.success() {
            bail!(
                "halyard up ({}) failed: {}{}",
                mode.name(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        mesh.status = StateDir(state)
            .read_status()
            .context("status.json after halyard up")?;
        Ok(mesh)
    }

    /// The client and server pods and the server Service's cluster address.
    pub fn pods(&self) -> anyhow::Result<Pods> {
        let pod = |app: &str| {
            self.status
                .pods
                .iter()
                .find(|p| p.name.starts_with(&format!("{app}-")) && p.namespace == "bench")
                .cloned()
                .with_context(|| format!("no {app} pod in status.json"))
        };
        let (_, ip, ports) = self
            .status
            .services
            .iter()
            .find(|(name, _, _)| name == "server.bench")
            .context("no server.bench service in status.json")?;
        let port: u16 = ports
            .split(',')
            .next()
            .and_then(|p| p.trim().parse().ok())
            .context("server port")?;
        Ok(Pods {
            client: pod("client")?,
            server: pod("server")?,
            service: SocketAddr::new(ip.parse().context("cluster IP")?, port),
        })
    }

    /// Where this run keeps its files (bootstraps, sidecar logs).
    pub fn run_dir(&self) -> PathBuf {
        self.state
            .parent()
            .map_or_else(|| self.state.clone(), Path::to_path_buf)
    }

    /// `halyard down`, reporting failure (drop does it silently otherwise).
    pub fn down(mut self) -> anyhow::Result<()> {
        self.down = true;
        run_down(&self.halyard, &self.state, &self.name)
    }
}

fn run_down(halyard: &Path, state: &Path, name: &str) -> anyhow::Result<()> {
    let out = Command::new(halyard)
        .arg("down")
        .arg("--state-dir")
        .arg(state)
        .args(["--name", name])
        .output()?;
    if !out.status.success() {
        bail!("halyard down: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

impl Drop for Mesh {
    fn drop(&mut self) {
        if !self.down
            && let Err(e) = run_down(&self.halyard, &self.state, &self.name)
        {
            eprintln!("cleanup of mesh {}: {e:#}", self.name);
        }
    }
}

/// Network namespaces whose name starts with `prefix-` (leftovers check).
pub fn namespaces_with_prefix(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("{prefix}-")))
                .collect()
        })
        .unwrap_or_default()
}

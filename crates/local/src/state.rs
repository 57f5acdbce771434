//! The state directory of a running mesh: the plan, live status (for
//! `halyard status`), bootstraps, logs and the generated registry. `halyard
//! down` and a later `up` read it to clean up after a crash.

use std::path::{Path, PathBuf};

use crate::RuntimeError;
use crate::plan::Plan;

/// Pod phase as `halyard status` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Phase {
    /// Sidecar started, waiting for it to be ready.
    Pending,
    Running,
    /// An app process exited and waits to be restarted.
    CrashLoopBackOff,
}

/// One pod's live status.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PodStatus {
    pub id: String,
    pub namespace: String,
    pub name: String,
    pub ip: String,
    pub netns: String,
    pub phase: Phase,
    pub sidecar: bool,
    pub sidecar_ready: bool,
    /// Which proxy the sidecar is (`halyard` or `envoy`).
    #[serde(default)]
    pub proxy: Option<String>,
    /// In the registry (EDS): sidecar ready, containers running and ready.
    #[serde(default)]
    pub ready: bool,
    #[serde(default)]
    pub containers: Vec<ContainerStatus>,
    /// Restarts of the sidecar and every container.
    pub restarts: u32,
    /// The sidecar's pid (the proxy itself: `ip netns exec` and `setpriv` exec).
    pub sidecar_pid: Option<u32>,
    /// The containers' pids.
    pub app_pids: Vec<u32>,
}

/// One container's live status (the kubelet's ContainerStatus, abridged).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ContainerStatus {
    pub name: String,
    pub running: bool,
    /// Its startup probe passed (or it has none).
    pub started: bool,
    pub ready: bool,
    pub restarts: u32,
    /// Why it last stopped: `exit code 3`, `Liveness probe failed: ...`.
    pub last_state: Option<String>,
    pub last_probe_error: Option<String>,
}

impl PodStatus {
    /// `kubectl get pods`' READY: ready containers (and sidecar) of all.
    pub fn ready_column(&self) -> String {
        let ready = self.containers.iter().filter(|c| c.ready).count()
            + usize::from(self.sidecar && self.sidecar_ready);
        let total = self.containers.len() + usize::from(self.sidecar);
        format!("{ready}/{total}")
    }

    /// `kubectl get pods`' STATUS.
    pub fn status_column(&self) -> &'static str {
        match self.phase {
            Phase::CrashLoopBackOff => "CrashLoopBackOff",
            Phase::Pending if self.sidecar && !self.sidecar_ready => "PodInitializing",
            Phase::Pending => "Pending",
            Phase::Running => "Running",
        }
    }
}

/// What `halyard status` reads.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct MeshStatus {
    pub prefix: String,
    pub config_dir: PathBuf,
    pub supervisor_pid: u32,
    pub pilot_pid: Option<u32>,
    /// Every process the runtime started (for cleanup after a crash).
    pub pids: Vec<u32>,
    pub pods: Vec<PodStatus>,
    pub services: Vec<(String, String, String)>,
    /// Where the pilot's debug port is forwarded on the host, if it is.
    pub pilot_debug: Option<String>,
}

/// Paths inside the state directory.
#[derive(Clone, Debug)]
pub struct StateDir(pub PathBuf);

impl StateDir {
    pub fn status_file(&self) -> PathBuf {
        self.0.join("status.json")
    }
    pub fn plan_file(&self) -> PathBuf {
        self.0.join("plan.json")
    }
    pub fn registry(&self) -> PathBuf {
        self.0.join("registry")
    }
    pub fn pod_dir(&self, namespace: &str, pod: &str) -> PathBuf {
        self.0.join("pods").join(namespace).join(pod)
    }
    pub fn pilot_log(&self) -> PathBuf {
        self.0.join("pilot.log")
    }

    /// Create it, readable by the proxy's uid (bootstraps live here).
    pub fn create(&self) -> Result<(), RuntimeError> {
        std::fs::create_dir_all(&self.0).map_err(|e| RuntimeError::Io(self.0.clone(), e))?;
        chmod_755(&self.0)
    }

    pub fn write_status(&self, status: &MeshStatus) -> Result<(), RuntimeError> {
        write_json(&self.status_file(), status)
    }

    pub fn read_status(&self) -> Option<MeshStatus> {
        let text = std::fs::read_to_string(self.status_file()).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub fn write_plan(&self, plan: &Plan) -> Result<(), RuntimeError> {
        write_json(&self.plan_file(), plan)
    }
}

/// Make a directory (and its parents up to the state dir) traversable by uid 1337.
pub fn chmod_755(path: &Path) -> Result<(), RuntimeError> {
    chmod(path, 0o755)
}

pub fn chmod(path: &Path, mode: u32) -> Result<(), RuntimeError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| RuntimeError::Io(path.to_path_buf(), e))
}

/// Hand a file or directory to the sidecar's uid (its token, its SDS dir).
pub fn chown_proxy(path: &Path) -> Result<(), RuntimeError> {
    let id = crate::process::PROXY_UID;
    std::os::unix::fs::chown(path, Some(id), Some(id))
        .map_err(|e| RuntimeError::Io(path.to_path_buf(), e))
}

fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<(), RuntimeError> {
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(|e| RuntimeError::Io(tmp.clone(), e))?;
    std::fs::rename(&tmp, path).map_err(|e| RuntimeError::Io(path.to_path_buf(), e))
}

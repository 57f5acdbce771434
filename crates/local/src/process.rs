//! Processes the runtime starts inside pod namespaces: apps as root, sidecars
//! as uid 1337 (the uid capture excludes), each logging to a file and killed
//! when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::RuntimeError;

/// The proxy's uid and gid, excluded from capture (Istio's convention).
pub const PROXY_UID: u32 = 1337;

/// A running child with its log.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    pub log: PathBuf,
}

impl Proc {
    /// Start `argv` in network namespace `netns` (as uid 1337 when `as_proxy`).
    pub fn start(
        netns: &str,
        argv: &[String],
        env: &[(String, String)],
        as_proxy: bool,
        log: &Path,
    ) -> Result<Proc, RuntimeError> {
        Self::start_in(netns, argv, env, as_proxy, log, None)
    }

    /// [`Proc::start`] in working directory `cwd` (a sidecar's is its pod's
    /// directory, so Istio's relative SDS socket path works).
    pub fn start_in(
        netns: &str,
        argv: &[String],
        env: &[(String, String)],
        as_proxy: bool,
        log: &Path,
        cwd: Option<&Path>,
    ) -> Result<Proc, RuntimeError> {
        let mut cmd = Command::new("ip");
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        cmd.args(["netns", "exec", netns]);
        if as_proxy {
            let id = PROXY_UID.to_string();
            cmd.args(["setpriv", "--reuid", &id, "--regid", &id, "--clear-groups"]);
        }
        cmd.args(argv);
        crate::uts::apply(&mut cmd, netns);
        Self::spawn(cmd, env, log)
    }

    /// Start a command as given (already wrapped as needed).
    pub fn spawn(
        mut cmd: Command,
        env: &[(String, String)],
        log: &Path,
    ) -> Result<Proc, RuntimeError> {
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir).map_err(|e| RuntimeError::Io(dir.to_path_buf(), e))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| RuntimeError::Io(log.to_path_buf(), e))?;
        let err = file
            .try_clone()
            .map_err(|e| RuntimeError::Io(log.to_path_buf(), e))?;
        cmd.envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err);
        let child = cmd
            .spawn()
            .map_err(|e| RuntimeError::Command(format!("start {cmd:?}: {e}")))?;
        Ok(Proc {
            child,
            log: log.to_path_buf(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Has it exited? (reaps it)
    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// How it ended, once it has (reaps it): `exit code 3`, `signal 9`.
    pub fn exit_reason(&mut self) -> Option<String> {
        use std::os::unix::process::ExitStatusExt;
        let status = self.child.try_wait().ok().flatten()?;
        Some(match (status.code(), status.signal()) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(sig)) => format!("signal {sig}"),
            _ => "exited".to_string(),
        })
    }

    /// SIGTERM, a short grace period, then SIGKILL.
    pub fn stop(&mut self) {
        if self.exited() {
            return;
        }
        // SAFETY: signalling our own child by pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if self.exited() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Kill every process inside a network namespace (what a crashed run left
/// behind there): `ip netns pids` names exactly them, so no pid is guessed.
pub fn kill_all_in(netns: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "pids", netns]).output() else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        // SAFETY: plain kill(2) of a process that lives in our namespace.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

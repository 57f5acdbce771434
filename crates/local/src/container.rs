//! One container of a pod as the kubelet runs it: its process, restarts with
//! backoff, and its probes. Probes run on the runtime's tokio runtime from
//! inside the pod's namespaces. For pods with a Halyard sidecar, network
//! probes are rewritten like Istio's injector does: the kubelet side asks the
//! sidecar at `POD_IP:15020/app-health/CONTAINER/{startupz,livez,readyz}` and
//! the sidecar runs the original probe (handed over in
//! `ISTIO_KUBE_APP_PROBERS`); exec probes and other sidecars probe the app directly.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use probe::{AppProbers, Check, Kind};
use tokio::sync::watch;

use crate::RuntimeError;
use crate::plan::ContainerPlan;
use crate::prober::{self, Health, Probes, Timing};
use crate::process::Proc;

const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What a probe does once rewritten (or not).
#[derive(Clone, Debug)]
enum Action {
    Net(Check),
    Exec(Vec<String>),
}

/// One container.
pub struct Container {
    pub name: String,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    probes: Probes,
    actions: Arc<Vec<(Kind, Result<Action, String>)>>,
    pub proc: Option<Proc>,
    health: Option<watch::Receiver<Health>>,
    prober: Option<tokio::task::JoinHandle<()>>,
    pub restart_at: Option<Instant>,
    backoff: Duration,
    pub restarts: u32,
    /// Why it last stopped: `exit code 3`, `Liveness probe failed: ...`.
    pub last_state: Option<String>,
}

/// How a container is doing after a [`Container::poll`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Nothing,
    /// It exited or was killed and will be restarted after its backoff.
    Stopped(String),
}

impl Container {
    /// A container of the pod at `pod_ip`; `rewrite` when its sidecar serves
    /// `/app-health/...` (ours). Fills `probers` with what the sidecar must run.
    pub fn new(
        plan: &ContainerPlan,
        argv: Vec<String>,
        env: Vec<(String, String)>,
        pod_ip: IpAddr,
        rewrite: bool,
        probers: &mut AppProbers,
    ) -> Container {
        let mut probes = Probes::default();
        let mut actions = Vec::new();
        for (kind, spec) in [
            (Kind::Startup, &plan.startup_probe),
            (Kind::Liveness, &plan.liveness_probe),
            (Kind::Readiness, &plan.readiness_probe),
        ] {
            let Some(spec) = spec else { continue };
            let timing = Some(Timing::from(spec));
            match kind {
                Kind::Startup => probes.startup = timing,
                Kind::Liveness => probes.liveness = timing,
                Kind::Readiness => probes.readiness = timing,
            }
            let action = if let Some(exec) = &spec.exec {
                Ok(Action::Exec(exec.command.clone()))
            } else if rewrite {
                let path = kind.app_health_path(&plan.name);
                match probe::AppProber::of(spec, &plan.ports) {
                    Ok(Some(p)) => {
                        probers.insert(path.clone(), p);
                        Ok(Action::Net(Check::Http {
                            addr: SocketAddr::new(pod_ip, probe::APP_HEALTH_PORT),
                            path,
                            https: false,
                            headers: vec![],
                        }))
                    }
                    Ok(None) => Err("probe has no action".to_string()),
                    Err(e) => Err(e),
                }
            } else {
                match Check::of(spec, pod_ip, &plan.ports) {
                    Ok(Some(c)) => Ok(Action::Net(c)),
                    Ok(None) => Err("probe has no action".to_string()),
                    Err(e) => Err(e),
                }
            };
            actions.push((kind, action));
        }
        Container {
            name: plan.name.clone(),
            argv,
            env,
            probes,
            actions: Arc::new(actions),
            proc: None,
            health: None,
            prober: None,
            restart_at: None,
            backoff: Duration::from_secs(1),
            restarts: 0,
            last_state: None,
        }
    }

    /// Start the process in the pod and its prober.
    pub fn start(
        &mut self,
        netns: &str,
        log: &std::path::Path,
        rt: &tokio::runtime::Handle,
    ) -> Result<(), RuntimeError> {
        self.proc = Some(Proc::start(netns, &self.argv, &self.env, false, log)?);
        let (tx, rx) = watch::channel(Health::default());
        let actions = self.actions.clone();
        let ns = netns.to_string();
        let probes = self.probes;
        let check = move |kind: Kind| {
            let action = actions
                .iter()
                .find(|(k, _)| *k == kind)
                .map(|(_, a)| a.clone());
            let ns = ns.clone();
            async move {
                match action {
                    Some(Ok(Action::Net(check))) => check.run(|addr| connect(ns, addr)).await,
                    Some(Ok(Action::Exec(argv))) => exec(&ns, &argv).await,
                    Some(Err(e)) => Err(e),
                    None => Ok(()),
                }
            }
        };
        let started_at = tokio::time::Instant::now();
        self.prober = Some(rt.spawn(prober::run(probes, started_at, check, tx)));
        self.health = Some(rx);
        Ok(())
    }

    /// Stop the process and its prober.
    pub fn stop(&mut self) {
        if let Some(t) = self.prober.take() {
            t.abort();
        }
        self.health = None;
        if let Some(mut p) = self.proc.take() {
            p.stop();
        }
    }

    /// The prober's view (default when not running).
    pub fn health(&self) -> Health {
        self.health
            .as_ref()
            .map(|h| h.borrow().clone())
            .unwrap_or_default()
    }

    /// Running and its readiness passes.
    pub fn ready(&self) -> bool {
        self.proc.is_some() && self.health().ready
    }

    /// Handle an exit or a failed liveness/startup probe (kill it, schedule
    /// the restart with backoff), and restart it when its backoff is over.
    pub fn poll(
        &mut self,
        now: Instant,
        netns: &str,
        log: &std::path::Path,
        rt: &tokio::runtime::Handle,
    ) -> Result<Event, RuntimeError> {
        let mut event = Event::Nothing;
        let exited = self.proc.as_mut().and_then(Proc::exit_reason);
        let failed = self.health().restart;
        if let Some(why) = exited.or(failed) {
            self.stop();
            self.last_state = Some(why.clone());
            self.restart_at = Some(now + self.backoff);
            self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            self.restarts += 1;
            event = Event::Stopped(why);
        }
        if self.restart_at.is_some_and(|t| t <= now) {
            self.restart_at = None;
            self.start(netns, log, rt)?;
        }
        Ok(event)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TCP connection from inside the pod's network namespace.
async fn connect(netns: String, addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let std = tokio::task::spawn_blocking(move || {
        crate::nsconnect::connect(&netns, addr, Duration::from_secs(10))
    })
    .await
    .map_err(std::io::Error::other)??;
    std.set_nonblocking(true)?;
    tokio::net::TcpStream::from_std(std)
}

/// An exec probe: the command in the pod's namespaces; exit 0 is success.
async fn exec(netns: &str, argv: &[String]) -> Result<(), String> {
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", netns]).args(argv);
    crate::uts::apply(&mut cmd, netns);
    cmd.stdin(std::process::Stdio::null());
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    let out = cmd
        .output()
        .await
        .map_err(|e| format!("exec {argv:?}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&out.stdout).to_string();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    let text: String = text.trim().chars().take(200).collect();
    Err(match out.status.code() {
        Some(code) if text.is_empty() => format!("command {argv:?} exited with {code}"),
        Some(code) => format!("command {argv:?} exited with {code}: {text}"),
        None => format!("command {argv:?} was killed"),
    })
}

/// Where a container logs (one file per pod, as before).
pub fn log_path(pod_dir: &std::path::Path) -> PathBuf {
    pod_dir.join("app.log")
}

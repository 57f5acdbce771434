//! `halyard up`'s supervisor: builds the network, starts the pilot in the mesh
//! namespace, each sidecar (as uid 1337) and — once the sidecar is ready, like
//! Istio's holdApplicationUntilProxyStarts — the pod's containers; restarts
//! crashed processes with backoff, applies manifest edits, and tears
//! everything down when stopped.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::container::{self, Container, Event};
use crate::network::MeshNet;
use crate::plan::{self, GATEWAY, Plan, PodPlan};
use crate::process::Proc;
use crate::state::ContainerStatus;
use crate::state::{MeshStatus, Phase, PodStatus, StateDir};
use crate::{RuntimeError, nsconnect, registry};

pub const XDS_PORT: u16 = 15010;
pub const DEBUG_PORT: u16 = 15014;
/// The pilot's CA and xDS over TLS (Istio's 15012).
pub const SECURE_PORT: u16 = 15012;
/// Service-account tokens live this long (a projected token's hour) and
/// are rewritten at half-life, as the kubelet refreshes them.
const TOKEN_TTL: Duration = Duration::from_secs(3600);
/// Istio's paths inside the pod (relative to its directory here).
const TOKEN_PATH: &str = "var/run/secrets/tokens/istio-token";
/// Relative to the sidecar's working directory (the pod's), as Istio's: an
/// absolute path under a deep state dir could pass the 108-byte limit of a
/// Unix socket address.
const SDS_SOCKET: &str = "./var/run/secrets/workload-spiffe-uds/socket";
/// The cluster DNS every pod's resolv.conf names (the pilot answers it, on
/// the bridge's gateway address).
pub const DNS_PORT: u16 = 53;
const READY_PORT: u16 = 15021;
/// Both proxies answer `/ready` on their admin port once initialised.
const ADMIN_PORT: u16 = 15000;
const TICK: Duration = Duration::from_millis(100);

/// How to run a mesh.
#[derive(Clone, Debug)]
pub struct UpOptions {
    pub config_dir: PathBuf,
    pub state_dir: PathBuf,
    /// Prefix of every namespace this mesh creates.
    pub prefix: String,
    /// The halyard binary (pilot, proxy, and `halyard` in container commands).
    pub exe: PathBuf,
    /// Which proxy runs as the sidecar (a pod may choose the other with
    /// the `sidecar.halyard.io/proxy` annotation).
    pub sidecar: SidecarKind,
    /// The Envoy binary for pods that choose Envoy in a Halyard mesh.
    pub envoy: Option<PathBuf>,
    /// Worker threads per sidecar (Envoy's --concurrency).
    pub proxy_concurrency: usize,
}

/// The sidecar binary: ours, or a stock Envoy from the same bootstrap (for
/// side-by-side comparisons and benchmarks).
#[derive(Clone, Debug, PartialEq)]
pub enum SidecarKind {
    Halyard,
    /// Path to the `envoy` executable (the real binary, readable by uid 1337).
    Envoy(PathBuf),
}

struct PodRun {
    plan: PodPlan,
    /// Its sidecar proxy: the mesh's default or the pod's choice.
    kind: SidecarKind,
    netns: String,
    sidecar: Option<Proc>,
    sidecar_ready: bool,
    /// The sidecar's env: pod identity and ISTIO_KUBE_APP_PROBERS.
    sidecar_env: Vec<(String, String)>,
    apps: Vec<Container>,
    /// `halyard agent` beside a stock Envoy sidecar (SDS for its certificate).
    agent: Option<Proc>,
    /// When the pod's service-account token was last written.
    token_at: Option<Instant>,
    /// Sidecar restarts (containers count their own).
    restarts: u32,
    /// In the registry: sidecar ready, every container running and ready.
    ready: bool,
}

impl PodRun {
    fn compute_ready(&self) -> bool {
        (!self.plan.sidecar || self.sidecar_ready) && self.apps.iter().all(Container::ready)
    }
}

/// A running mesh.
pub struct Mesh {
    opts: UpOptions,
    state: StateDir,
    net: MeshNet,
    plan: Plan,
    pods: BTreeMap<String, PodRun>,
    pilot: Option<Proc>,
    registry_dirty: bool,
    /// Names pods' bridge-side veths uniquely for the life of the mesh.
    veth_seq: usize,
    /// Runs the containers' probers.
    rt: tokio::runtime::Runtime,
    /// Signs the pods' service-account tokens; the pilot's CA checks them.
    tokens: identity::TokenIssuer,
}

impl Mesh {
    /// Validate the manifests, clean up any previous run of this prefix, then
    /// build the network and start the pilot and every pod.
    pub fn start(opts: UpOptions) -> Result<Mesh, RuntimeError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(RuntimeError::NotRoot);
        }
        let (resources, errors) = api::load::load_path(&opts.config_dir);
        if !errors.is_empty() {
            return Err(RuntimeError::Manifests(
                errors.iter().map(|e| e.to_string()).collect(),
            ));
        }
        let plan = plan::plan(&resources);
        let state = StateDir(opts.state_dir.clone());
        let net = MeshNet {
            prefix: opts.prefix.clone(),
            dns_capture: opts.sidecar == SidecarKind::Halyard,
        };
        net.teardown();
        state.create()?;
        registry::write(&state.registry(), &[])?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("prober")
            .enable_all()
            .build()
            .map_err(|e| RuntimeError::Command(format!("prober runtime: {e}")))?;
        let mut mesh = Mesh {
            opts,
            state,
            net,
            plan: Plan::default(),
            pods: BTreeMap::new(),
            pilot: None,
            registry_dirty: false,
            veth_seq: 0,
            rt,
            tokens: identity::TokenIssuer::generate()
                .map_err(|e| RuntimeError::Command(format!("token signing key: {e}")))?,
        };
        if let Err(e) = mesh.build(plan) {
            mesh.shutdown();
            return Err(e);
        }
        Ok(mesh)
    }

    fn build(&mut self, plan: Plan) -> Result<(), RuntimeError> {
        self.net.create_mesh()?;
        for pod in &plan.pods {
            self.veth_seq += 1;
            self.net
                .create_pod(pod, self.veth_seq, &plan.pods, &plan.services)?;
        }
        self.state.write_plan(&plan)?;
        self.plan = plan;
        self.start_pilot()?;
        let debug = SocketAddr::from((GATEWAY, DEBUG_PORT));
        let mesh_ns = self.net.mesh_ns();
        wait(Duration::from_secs(20), || {
            nsconnect::http_status(&mesh_ns, debug, "/ready").ok() == Some(200)
        })
        .map_err(|_| {
            RuntimeError::Timeout(format!(
                "pilot to listen (see {})",
                self.state.pilot_log().display()
            ))
        })?;
        self.publish_root()?;
        for pod in self.plan.pods.clone() {
            self.start_pod(pod)?;
        }
        Ok(())
    }

    fn start_pilot(&mut self) -> Result<(), RuntimeError> {
        let argv: Vec<String> = vec![
            self.opts.exe.display().to_string(),
            "pilot".into(),
            "--config".into(),
            self.opts.config_dir.display().to_string(),
            "--registry".into(),
            self.state.registry().display().to_string(),
            "--xds".into(),
            format!("{GATEWAY}:{XDS_PORT}"),
            "--debug".into(),
            format!("{GATEWAY}:{DEBUG_PORT}"),
            "--dns".into(),
            format!("{GATEWAY}:{DNS_PORT}"),
            // Pods resolve ServiceEntry hosts to their VIPs (Istio's
            // ISTIO_META_DNS_AUTO_ALLOCATE), so TCP to them is routable.
            "--auto-allocate".into(),
            // The mesh CA: pods prove their service account with a token.
            "--ca-dir".into(),
            self.state.0.join("ca").display().to_string(),
            "--token-key".into(),
            self.token_key()?.display().to_string(),
            "--secure-xds".into(),
            format!("{GATEWAY}:{SECURE_PORT}"),
        ];
        self.pilot = Some(Proc::start(
            &self.net.mesh_ns(),
            &argv,
            &[],
            false,
            &self.state.pilot_log(),
        )?);
        Ok(())
    }

    /// The pod's sidecar proxy: its annotation's choice, else the mesh's.
    fn kind_of(&self, pod: &PodPlan) -> Result<SidecarKind, RuntimeError> {
        match (pod.wants_envoy(), &self.opts.envoy) {
            (None, _) => Ok(self.opts.sidecar.clone()),
            (Some(false), _) => Ok(SidecarKind::Halyard),
            (Some(true), Some(envoy)) => Ok(SidecarKind::Envoy(envoy.clone())),
            (Some(true), None) => match &self.opts.sidecar {
                SidecarKind::Envoy(e) => Ok(SidecarKind::Envoy(e.clone())),
                SidecarKind::Halyard => Err(RuntimeError::Command(format!(
                    "pod {} asks for an Envoy sidecar ({}: envoy) but no envoy binary was found; give --envoy PATH",
                    pod.id(),
                    crate::plan::PROXY_ANNOTATION
                ))),
            },
        }
    }

    /// The token verification key for the pilot, written once per run.
    fn token_key(&self) -> Result<PathBuf, RuntimeError> {
        let path = self.state.0.join("token-key.pub");
        std::fs::write(&path, self.tokens.public_pem())
            .map_err(|e| RuntimeError::Io(path.clone(), e))?;
        Ok(path)
    }

    /// The mesh root as sidecars read it (the CA directory itself is the
    /// pilot's alone: it holds the key).
    fn publish_root(&self) -> Result<PathBuf, RuntimeError> {
        let from = self.state.0.join("ca").join("root-cert.pem");
        let to = self.state.0.join("root-cert.pem");
        std::fs::copy(&from, &to).map_err(|e| RuntimeError::Io(from.clone(), e))?;
        crate::state::chmod(&to, 0o644)?;
        Ok(to)
    }

    /// Write the pod's service-account token where its sidecar (and only
    /// its sidecar's uid) can read it.
    fn write_token(&self, plan: &PodPlan, dir: &std::path::Path) -> Result<(), RuntimeError> {
        let token = self
            .tokens
            .issue(
                &plan.namespace,
                &plan.service_account,
                TOKEN_TTL,
                std::time::SystemTime::now(),
            )
            .map_err(|e| RuntimeError::Command(format!("token for {}: {e}", plan.id())))?;
        let path = dir.join(TOKEN_PATH);
        let parent = path.parent().unwrap_or(dir);
        std::fs::create_dir_all(parent).map_err(|e| RuntimeError::Io(parent.to_path_buf(), e))?;
        let tmp = path.with_extension("new");
        std::fs::write(&tmp, token).map_err(|e| RuntimeError::Io(tmp.clone(), e))?;
        crate::state::chmod(&tmp, 0o400)?;
        crate::state::chown_proxy(&tmp)?;
        std::fs::rename(&tmp, &path).map_err(|e| RuntimeError::Io(path.clone(), e))?;
        // The directories down to it are traversable; the SDS socket's is the
        // proxy uid's own (the agent creates the socket there).
        let mut d = parent.to_path_buf();
        while d.starts_with(dir) && d != dir {
            crate::state::chmod_755(&d)?;
            if !d.pop() {
                break;
            }
        }
        let sds = dir.join(SDS_SOCKET);
        if let Some(sds_dir) = sds.parent() {
            std::fs::create_dir_all(sds_dir)
                .map_err(|e| RuntimeError::Io(sds_dir.to_path_buf(), e))?;
            crate::state::chown_proxy(sds_dir)?;
        }
        Ok(())
    }

    fn start_pod(&mut self, pod: PodPlan) -> Result<(), RuntimeError> {
        let netns = self.net.pod_ns(&pod);
        let dir = self.state.pod_dir(&pod.namespace, &pod.name);
        std::fs::create_dir_all(&dir).map_err(|e| RuntimeError::Io(dir.clone(), e))?;
        for d in [
            self.state.0.join("pods"),
            self.state.0.join("pods").join(&pod.namespace),
            dir.clone(),
        ] {
            crate::state::chmod_755(&d)?;
        }
        // Istio's injector rewrites probes to our sidecar's /app-health;
        // a stock Envoy has no such endpoint, so its pods are probed directly.
        let kind = self.kind_of(&pod)?;
        let rewrite = pod.sidecar && kind == SidecarKind::Halyard;
        let mut probers = probe::AppProbers::new();
        let apps = pod
            .containers
            .iter()
            .map(|c| {
                let mut argv = c.argv.clone();
                if argv.first().map(String::as_str) == Some("halyard") {
                    argv[0] = self.opts.exe.display().to_string();
                }
                Container::new(
                    c,
                    argv,
                    app_env(&pod, &c.env),
                    pod.ip.into(),
                    rewrite,
                    &mut probers,
                )
            })
            .collect();
        let mut sidecar_env = vec![
            ("POD_NAME".to_string(), pod.name.clone()),
            ("POD_NAMESPACE".to_string(), pod.namespace.clone()),
            ("INSTANCE_IP".to_string(), pod.ip.to_string()),
        ];
        if rewrite {
            // Istio's DNS proxying (proxyMetadata ISTIO_META_DNS_CAPTURE).
            sidecar_env.push(("ISTIO_META_DNS_CAPTURE".to_string(), "true".to_string()));
        }
        if !probers.is_empty() {
            sidecar_env.push((
                probe::APP_PROBERS_ENV.to_string(),
                serde_json::to_string(&probers).unwrap_or_default(),
            ));
        }
        let mut run = PodRun {
            kind,
            netns,
            sidecar: None,
            sidecar_ready: false,
            sidecar_env,
            apps,
            agent: None,
            token_at: None,
            restarts: 0,
            ready: false,
            plan: pod,
        };
        if run.plan.sidecar {
            let bootstrap = dir.join("bootstrap.json");
            let spec = xds::bootstrap::BootstrapSpec {
                node_id: format!(
                    "sidecar~{}~{}.{}~{}.svc.cluster.local",
                    run.plan.ip, run.plan.name, run.plan.namespace, run.plan.namespace
                ),
                xds: format!("{GATEWAY}:{XDS_PORT}"),
                labels: run.plan.labels.clone(),
                admin: format!("127.0.0.1:{ADMIN_PORT}"),
                interception_mode: "REDIRECT".into(),
                service_account: run.plan.service_account.clone(),
                sotw: false,
                // Envoy reads its certificate from the agent over SDS; ours
                // keeps its own and needs no socket.
                sds_socket: matches!(run.kind, SidecarKind::Envoy(_))
                    .then(|| SDS_SOCKET.to_string()),
            };
            let json = xds::bootstrap::generate(&spec)
                .map_err(|e| RuntimeError::Command(e.to_string()))?;
            std::fs::write(
                &bootstrap,
                serde_json::to_string_pretty(&json).unwrap_or_default(),
            )
            .map_err(|e| RuntimeError::Io(bootstrap.clone(), e))?;
            self.write_token(&run.plan, &dir)?;
            run.token_at = Some(Instant::now());
            if matches!(run.kind, SidecarKind::Envoy(_)) {
                run.agent = Some(self.agent(&run, &dir)?);
            }
            run.sidecar = Some(self.sidecar(&run, &bootstrap)?);
        } else {
            start_apps(&mut run, &dir, self.rt.handle())?;
        }
        self.pods.insert(run.plan.id(), run);
        Ok(())
    }

    /// How a sidecar (ours, or the agent beside Envoy) gets its certificate.
    fn identity_args(&self, run: &PodRun, dir: &std::path::Path) -> Vec<String> {
        vec![
            "--ca-address".into(),
            format!("{GATEWAY}:{SECURE_PORT}"),
            "--ca-root".into(),
            self.state.0.join("root-cert.pem").display().to_string(),
            "--token".into(),
            dir.join(TOKEN_PATH).display().to_string(),
            "--namespace".into(),
            run.plan.namespace.clone(),
            "--service-account".into(),
            run.plan.service_account.clone(),
        ]
    }

    /// `halyard agent`: pilot-agent's SDS role beside a stock Envoy.
    fn agent(&self, run: &PodRun, dir: &std::path::Path) -> Result<Proc, RuntimeError> {
        let mut argv = vec![self.opts.exe.display().to_string(), "agent".into()];
        argv.extend(self.identity_args(run, dir));
        argv.extend(["--socket".into(), SDS_SOCKET.to_string()]);
        Proc::start_in(
            &run.netns,
            &argv,
            &[],
            true,
            &dir.join("agent.log"),
            Some(dir),
        )
    }

    fn sidecar(&self, run: &PodRun, bootstrap: &std::path::Path) -> Result<Proc, RuntimeError> {
        let concurrency = self.opts.proxy_concurrency.max(1).to_string();
        let dir = self.state.pod_dir(&run.plan.namespace, &run.plan.name);
        let argv = match &run.kind {
            SidecarKind::Halyard => {
                let mut argv = vec![
                    self.opts.exe.display().to_string(),
                    "proxy".into(),
                    "--bootstrap".into(),
                    bootstrap.display().to_string(),
                    "--ready-port".into(),
                    READY_PORT.to_string(),
                    "--concurrency".into(),
                    concurrency,
                ];
                argv.extend(self.identity_args(run, &dir));
                argv
            }
            SidecarKind::Envoy(envoy) => vec![
                envoy.display().to_string(),
                "-c".into(),
                bootstrap.display().to_string(),
                "--disable-hot-restart".into(),
                "--concurrency".into(),
                concurrency,
                "-l".into(),
                "warning".into(),
            ],
        };
        let log = self
            .state
            .pod_dir(&run.plan.namespace, &run.plan.name)
            .join("proxy.log");
        Proc::start_in(&run.netns, &argv, &run.sidecar_env, true, &log, Some(&dir))
    }

    /// One supervision step: readiness, crashes, restarts, registry, status.
    pub fn tick(&mut self) -> Result<(), RuntimeError> {
        let now = Instant::now();
        if self.pilot.as_mut().is_some_and(Proc::exited) {
            tracing::warn!("pilot exited; restarting");
            self.start_pilot()?;
        }
        let ids: Vec<String> = self.pods.keys().cloned().collect();
        for id in ids {
            let dir = {
                let run = &self.pods[&id];
                self.state.pod_dir(&run.plan.namespace, &run.plan.name)
            };
            let sidecar_died = self.pods[&id].sidecar.as_ref().is_some() && {
                let run = self.pods.get_mut(&id).ok_or(RuntimeError::Gone)?;
                run.sidecar.as_mut().is_some_and(Proc::exited)
            };
            let token_due = self.pods[&id]
                .token_at
                .is_some_and(|t| now.duration_since(t) >= TOKEN_TTL / 2);
            if token_due {
                let plan = self.pods[&id].plan.clone();
                self.write_token(&plan, &dir)?;
                let run = self.pods.get_mut(&id).ok_or(RuntimeError::Gone)?;
                run.token_at = Some(now);
            }
            let agent_died = {
                let run = self.pods.get_mut(&id).ok_or(RuntimeError::Gone)?;
                run.agent.as_mut().is_some_and(Proc::exited)
            };
            if agent_died {
                let fresh = self.agent(&self.pods[&id], &dir)?;
                tracing::warn!(pod = %id, "agent exited; restarting");
                let run = self.pods.get_mut(&id).ok_or(RuntimeError::Gone)?;
                run.agent = Some(fresh);
            }
            if sidecar_died {
                let bootstrap = dir.join("bootstrap.json");
                let fresh = self.sidecar(&self.pods[&id], &bootstrap)?;
                let run = self.pods.get_mut(&id).ok_or(RuntimeError::Gone)?;
                tracing::warn!(pod = %id, "sidecar exited; restarting");
                run.sidecar = Some(fresh);
                run.restarts += 1;
            }
            let run = self.pods.get_mut(&id).ok_or(RuntimeError::Gone)?;
            if run.sidecar.is_some() && !run.sidecar_ready {
                let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, ADMIN_PORT));
                if nsconnect::http_status(&run.netns, addr, "/ready").ok() == Some(200) {
                    run.sidecar_ready = true;
                    if run
                        .apps
                        .iter()
                        .all(|a| a.proc.is_none() && a.restart_at.is_none())
                    {
                        start_apps(run, &dir, self.rt.handle())?;
                    }
                }
            }
            let log = container::log_path(&dir);
            for app in &mut run.apps {
                if let Event::Stopped(why) = app.poll(now, &run.netns, &log, self.rt.handle())? {
                    tracing::warn!(pod = %id, container = %app.name, "{why}; restarting with backoff");
                }
            }
            let ready = run.compute_ready();
            if ready != run.ready {
                run.ready = ready;
                self.registry_dirty = true;
            }
        }
        if self.registry_dirty {
            let ready: Vec<&PodPlan> = self
                .pods
                .values()
                .filter(|r| r.ready)
                .map(|r| &r.plan)
                .collect();
            registry::write(&self.state.registry(), &ready)?;
            self.registry_dirty = false;
        }
        self.state.write_status(&self.status())
    }

    /// Apply edited manifests: replace changed pods, add new ones, remove
    /// deleted ones, refresh names and VIP forwarding everywhere.
    pub fn reload(&mut self) -> Result<(), RuntimeError> {
        let (resources, errors) = api::load::load_path(&self.opts.config_dir);
        if !errors.is_empty() {
            return Err(RuntimeError::Manifests(
                errors.iter().map(|e| e.to_string()).collect(),
            ));
        }
        let mut next = plan::plan(&resources);
        let previous: BTreeMap<String, Ipv4Addr> = self
            .pods
            .values()
            .map(|r| (r.plan.id(), r.plan.ip))
            .collect();
        plan::assign_ips(&mut next.pods, &previous);
        let keep: BTreeMap<String, &PodPlan> = next.pods.iter().map(|p| (p.id(), p)).collect();
        let stale: Vec<String> = self
            .pods
            .iter()
            .filter(|(id, r)| keep.get(*id).is_none_or(|p| **p != r.plan))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &stale {
            if let Some(mut run) = self.pods.remove(id) {
                stop_pod(&mut run);
                self.net.delete_pod(&run.plan)?;
            }
        }
        for pod in &next.pods {
            if !self.pods.contains_key(&pod.id()) {
                self.veth_seq += 1;
                self.net
                    .create_pod(pod, self.veth_seq, &next.pods, &next.services)?;
                self.start_pod(pod.clone())?;
            } else {
                self.net.refresh_pod(pod, &next.pods, &next.services)?;
            }
        }
        self.registry_dirty = true;
        self.state.write_plan(&next)?;
        self.plan = next;
        Ok(())
    }

    pub fn status(&self) -> MeshStatus {
        let mut pids: Vec<u32> = self.pilot.iter().map(Proc::pid).collect();
        let pods = self
            .pods
            .values()
            .map(|r| {
                pids.extend(r.sidecar.iter().map(Proc::pid));
                pids.extend(r.agent.iter().map(Proc::pid));
                pids.extend(r.apps.iter().filter_map(|a| a.proc.as_ref()).map(Proc::pid));
                let crashed = r.apps.iter().any(|a| a.restart_at.is_some());
                let containers = r
                    .apps
                    .iter()
                    .map(|a| {
                        let health = a.health();
                        ContainerStatus {
                            name: a.name.clone(),
                            running: a.proc.is_some(),
                            started: a.proc.is_some() && health.started,
                            ready: a.ready(),
                            restarts: a.restarts,
                            last_state: a.last_state.clone(),
                            last_probe_error: health.last_error,
                        }
                    })
                    .collect();
                PodStatus {
                    id: r.plan.id(),
                    namespace: r.plan.namespace.clone(),
                    name: r.plan.name.clone(),
                    ip: r.plan.ip.to_string(),
                    netns: r.netns.clone(),
                    phase: if crashed {
                        Phase::CrashLoopBackOff
                    } else if r.plan.sidecar && !r.sidecar_ready {
                        Phase::Pending
                    } else {
                        Phase::Running
                    },
                    sidecar: r.plan.sidecar,
                    sidecar_ready: r.sidecar_ready,
                    proxy: r.plan.sidecar.then(|| {
                        match r.kind {
                            SidecarKind::Halyard => "halyard",
                            SidecarKind::Envoy(_) => "envoy",
                        }
                        .to_string()
                    }),
                    ready: r.ready,
                    containers,
                    restarts: r.restarts + r.apps.iter().map(|a| a.restarts).sum::<u32>(),
                    sidecar_pid: r.sidecar.as_ref().map(Proc::pid),
                    app_pids: r
                        .apps
                        .iter()
                        .filter_map(|a| a.proc.as_ref())
                        .map(Proc::pid)
                        .collect(),
                }
            })
            .collect();
        MeshStatus {
            prefix: self.opts.prefix.clone(),
            config_dir: self.opts.config_dir.clone(),
            supervisor_pid: std::process::id(),
            pilot_pid: self.pilot.as_ref().map(Proc::pid),
            pids,
            pods,
            services: self
                .plan
                .services
                .iter()
                .map(|s| {
                    let ports: Vec<String> = s.ports.iter().map(|(p, _)| p.to_string()).collect();
                    (
                        format!("{}.{}", s.name, s.namespace),
                        s.vip.clone(),
                        ports.join(","),
                    )
                })
                .collect(),
            pilot_debug: None,
        }
    }

    /// Has the pilot taken in every ready pod, sent every sidecar its latest
    /// snapshot (no push in flight) and had it ACKed? (Then the first
    /// request after `up` is routed, and no late update resets a cluster.)
    pub fn converged(&self) -> bool {
        let debug = SocketAddr::from((GATEWAY, DEBUG_PORT));
        let ns = self.net.mesh_ns();
        let Ok(configz) = nsconnect::http_json(&ns, debug, "/debug/configz") else {
            return false;
        };
        let known: std::collections::BTreeSet<&str> = configz["resources"]
            .as_array()
            .map(|r| r.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        let registered = self.pods.values().filter(|r| r.ready).all(|r| {
            known.contains(format!("WorkloadEntry/{}/{}", r.plan.namespace, r.plan.name).as_str())
        });
        let Ok(syncz) = nsconnect::http_json(&ns, debug, "/debug/syncz") else {
            return false;
        };
        let proxies = syncz.as_array().map(Vec::as_slice).unwrap_or_default();
        let sidecars = self.pods.values().filter(|r| r.plan.sidecar).count();
        let acked = proxies.iter().all(|p| {
            p["types"].as_object().is_some_and(|types| {
                types.values().all(|t| {
                    t["acked_version"] == t["sent_version"]
                        && t["nack"].is_null()
                        && (t["latest_version"].is_null()
                            || t["latest_version"] == t["sent_version"])
                })
            })
        });
        registered && proxies.len() == sidecars && acked
    }

    /// Is every pod ready (sidecar ready, containers running, readiness passing)?
    pub fn all_ready(&self) -> bool {
        self.pods.values().all(|r| r.ready)
    }

    pub fn mesh_ns(&self) -> String {
        self.net.mesh_ns()
    }

    /// Stop every process and remove every namespace, hosts file and generated file.
    pub fn shutdown(&mut self) {
        for run in self.pods.values_mut() {
            stop_pod(run);
        }
        self.pods.clear();
        if let Some(mut p) = self.pilot.take() {
            p.stop();
        }
        self.net.teardown();
        let _ = std::fs::remove_file(self.state.status_file());
        let _ = std::fs::remove_file(self.state.plan_file());
        let _ = std::fs::remove_dir_all(self.state.registry());
    }

    /// Supervise until `stop` is set, then shut down.
    pub fn run_until(mut self, stop: Arc<AtomicBool>) -> Result<(), RuntimeError> {
        let mut fingerprint = pilot::config::fingerprint(&self.opts.config_dir);
        let mut last_check = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if let Err(e) = self.tick() {
                tracing::error!("{e}");
            }
            if last_check.elapsed() >= Duration::from_millis(500) {
                last_check = Instant::now();
                let now = pilot::config::fingerprint(&self.opts.config_dir);
                if now != fingerprint {
                    fingerprint = now;
                    match self.reload() {
                        Ok(()) => tracing::info!("manifests reloaded"),
                        Err(e) => tracing::error!("manifests not applied: {e}"),
                    }
                }
            }
            std::thread::sleep(TICK);
        }
        self.shutdown();
        Ok(())
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        if !self.pods.is_empty() || self.pilot.is_some() {
            self.shutdown();
        }
    }
}

fn start_apps(
    run: &mut PodRun,
    dir: &std::path::Path,
    rt: &tokio::runtime::Handle,
) -> Result<(), RuntimeError> {
    let log = container::log_path(dir);
    for app in &mut run.apps {
        app.start(&run.netns, &log, rt)?;
    }
    Ok(())
}

fn stop_pod(run: &mut PodRun) {
    for app in &mut run.apps {
        app.stop();
    }
    if let Some(mut p) = run.sidecar.take() {
        p.stop();
    }
    if let Some(mut p) = run.agent.take() {
        p.stop();
    }
}

/// The container's env plus what Kubernetes' downward API would give it, and
/// `SERVICE_NAME`/`SERVICE_VERSION` from the `app`/`version` labels (for
/// `halyard echo`) unless set.
fn app_env(pod: &PodPlan, env: &BTreeMap<String, String>) -> Vec<(String, String)> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    out.insert("POD_NAME".into(), pod.name.clone());
    out.insert("POD_NAMESPACE".into(), pod.namespace.clone());
    out.insert("INSTANCE_IP".into(), pod.ip.to_string());
    out.insert("SERVICE_ACCOUNT".into(), pod.service_account.clone());
    if let Some(app) = pod.labels.get("app") {
        out.insert("SERVICE_NAME".into(), app.clone());
    }
    if let Some(v) = pod.labels.get("version") {
        out.insert("SERVICE_VERSION".into(), v.clone());
    }
    out.extend(env.iter().map(|(k, v)| (k.clone(), v.clone())));
    out.into_iter().collect()
}

fn wait(timeout: Duration, mut ok: impl FnMut() -> bool) -> Result<(), ()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(())
}

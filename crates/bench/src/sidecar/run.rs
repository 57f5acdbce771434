//! One measured run (a mode × case × round on a fresh mesh) and the
//! interleaved loop over all of them: for each round, for each case, every
//! mode in turn, so drift on the machine hits every mode alike.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, bail};

use super::conn::{self, NsSockets, Target};
use super::load::{self, Load, LoadResult};
use super::mesh::Mesh;
use super::probe::{self, ProcSample};
use super::static_pair::{self, StaticPair};
use super::{Case, Mode, Options, Transport};

/// One sidecar's cost in one run.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SidecarRecord {
    pub side: String,
    pub pid: u32,
    pub exe: String,
    pub cpu_s_open: f64,
    pub cpu_s_per_1k_open: f64,
    pub cpu_s_closed: f64,
    pub cpu_s_per_1k_closed: f64,
    /// Closed-loop requests per CPU-second of this sidecar.
    pub rps_per_core_closed: f64,
    pub rss_idle_kib: u64,
    pub hwm_after_open_kib: u64,
    pub hwm_after_closed_kib: u64,
    /// downstream_rq_total deltas over each phase (must equal requests sent).
    pub rq_open: u64,
    pub rq_closed: u64,
    /// TLS handshakes its listeners completed in each loop (the server end
    /// of an mTLS hop; 0 elsewhere).
    #[serde(default)]
    pub tls_handshakes_open: u64,
    #[serde(default)]
    pub tls_handshakes_closed: u64,
    /// Key exchanges it counted over the whole run (`listener X25519MLKEM768`:
    /// as the server end; `cluster X25519`: as the client end, Envoy only).
    #[serde(default)]
    pub curves: BTreeMap<String, u64>,
}

/// Everything one run measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RunRecord {
    pub round: usize,
    pub mode: Mode,
    pub case: Case,
    pub open: LoadResult,
    pub closed: LoadResult,
    pub warmup_errors: u64,
    pub host_busy_pct_open: Option<f64>,
    pub host_busy_pct_closed: Option<f64>,
    /// Host CPU busy % in the open loop spent by processes other than the
    /// sidecars, the server app and this load generator (the shared machine).
    pub other_busy_pct_open: Option<f64>,
    /// The server app (`halyard echo`) for scale.
    pub app_cpu_s_per_1k_open: Option<f64>,
    pub sidecars: Vec<SidecarRecord>,
    /// Failed cross-checks (empty = all passed).
    pub checks: Vec<String>,
}

/// Run every (round, case, mode); `each` sees every record as it lands.
pub fn run_all(opts: &Options, mut each: impl FnMut(&RunRecord)) -> anyhow::Result<Vec<RunRecord>> {
    let mut out = Vec::new();
    let mut seq = 0;
    for round in 1..=opts.rounds {
        // Cases differing only in transport share this round's direct run.
        let mut direct_done = BTreeSet::new();
        for case in &opts.cases {
            for &mode in &opts.modes {
                if mode == Mode::Direct && !direct_done.insert(case.direct_key()) {
                    continue;
                }
                if super::stopping() {
                    bail!("interrupted after {} run(s)", out.len());
                }
                seq += 1;
                eprintln!(
                    "[{}] round {round}/{} {} {}",
                    crate::report::machine::utc_now(),
                    opts.rounds,
                    case.label(),
                    mode.name()
                );
                let rec = run_one(opts, *case, mode, round, seq)
                    .with_context(|| format!("round {round} {} {}", case.label(), mode.name()))?;
                eprintln!(
                    "    open: {:.1} rps ok={} err={} p50={:.3} p99={:.3} p99.9={:.3} ms | closed: {:.0} rps err={}{}",
                    rec.open.rps,
                    rec.open.ok,
                    rec.open.errors,
                    rec.open.latency_ms.p50,
                    rec.open.latency_ms.p99,
                    rec.open.latency_ms.p999,
                    rec.closed.rps,
                    rec.closed.errors,
                    if rec.checks.is_empty() {
                        String::new()
                    } else {
                        format!(" | CHECKS: {}", rec.checks.join("; "))
                    }
                );
                each(&rec);
                out.push(rec);
            }
        }
    }
    Ok(out)
}

/// Readings taken at one instant of a run.
struct Snapshot {
    procs: Vec<Option<ProcSample>>,
    app: Option<ProcSample>,
    /// This process (the load generator).
    bench: Option<ProcSample>,
    host: (u64, u64),
    rq: Vec<u64>,
    handshakes: Vec<u64>,
    curves: Vec<BTreeMap<String, u64>>,
}

fn run_one(
    opts: &Options,
    case: Case,
    mode: Mode,
    round: usize,
    seq: usize,
) -> anyhow::Result<RunRecord> {
    let mesh = Mesh::up(&opts.mesh, mode, case.transport, seq)?;
    let pods = mesh.pods()?;
    // The static transports' pair, started here (dropped, so stopped,
    // before the mesh goes down, also on error).
    let pair = if mode.has_sidecars() && case.transport.is_static() {
        let pki = match case.transport {
            Transport::Mtls => Some(opts.pki.as_ref().context("mTLS case without a PKI")?),
            _ => None,
        };
        Some(StaticPair::start(
            &opts.mesh,
            mode,
            &case,
            &pods,
            pki,
            &mesh.run_dir().join("pair"),
        )?)
    } else {
        None
    };
    let sides = [("client", &pods.client), ("server", &pods.server)];
    let mut sidecars = Vec::new();
    for (i, (side, pod)) in sides.into_iter().enumerate() {
        let pid = match &pair {
            Some(p) => Some(if i == 0 {
                p.client.pid()
            } else {
                p.server.pid()
            }),
            None => pod.sidecar_pid,
        };
        match (mode.has_sidecars(), pid) {
            (true, Some(pid)) => {
                let exe = probe::exe(pid);
                let want = if mode == Mode::Envoy {
                    "envoy"
                } else {
                    "halyard"
                };
                if !exe.rsplit('/').next().unwrap_or("").contains(want) {
                    bail!("{side} sidecar pid {pid} runs {exe:?}, not {want}");
                }
                sidecars.push((side, pod.netns.clone(), pid, exe));
            }
            (true, None) => bail!("{side} pod has no sidecar pid in status.json"),
            (false, Some(_)) => bail!("direct mode but the {side} pod has a sidecar"),
            (false, None) => {}
        }
    }
    // Static pair: the app talks to its sidecar's listener (no capture);
    // otherwise to the Service's cluster IP (captured, or direct).
    let addr = if pair.is_some() {
        static_pair::CLIENT_LISTENER
    } else {
        pods.service
    };
    let target = Target {
        netns: pods.client.netns.clone(),
        sockets: NsSockets::new(&pods.client.netns).context("client pod namespace")?,
        addr,
        authority: format!("server.bench:{}", pods.service.port()),
        path: format!("/?size={}", opts.body_bytes),
        protocol: case.protocol,
        body_len: opts.body_bytes,
        per_request: case.per_request,
    };
    sanity(&target, mode)?;
    let app_pid = pods.server.app_pids.first().copied();
    let snap = || -> anyhow::Result<Snapshot> {
        let (mut rq, mut handshakes, mut curves) = (Vec::new(), Vec::new(), Vec::new());
        for (_, netns, _, _) in &sidecars {
            let stats = probe::admin_stats(netns)?;
            rq.push(probe::downstream_rq(&stats));
            handshakes.push(probe::listener_handshakes(&stats));
            curves.push(probe::curves(&stats));
        }
        Ok(Snapshot {
            procs: sidecars
                .iter()
                .map(|(_, _, pid, _)| probe::proc_sample(*pid))
                .collect(),
            app: app_pid.and_then(probe::proc_sample),
            bench: probe::proc_sample(std::process::id()),
            host: probe::host_cpu(),
            rq,
            handshakes,
            curves,
        })
    };
    let idle = snap()?;
    let open = Load::Open {
        rate: opts.rate,
        duration: opts.duration,
    };
    let warm = load::run(
        &target,
        case.connections,
        Load::Open {
            rate: opts.rate,
            duration: opts.warmup,
        },
    )?;
    interrupted()?;
    let before = snap()?;
    let open_r = load::run(&target, case.connections, open)?;
    let after_open = snap()?;
    interrupted()?;
    let closed_r = load::run(
        &target,
        case.connections,
        Load::Closed {
            duration: opts.max_duration,
        },
    )?;
    let after_closed = snap()?;
    drop(pair);
    mesh.down()?;

    let tck = probe::clk_tck();
    let cpu = |a: &Option<ProcSample>, b: &Option<ProcSample>| match (a, b) {
        (Some(a), Some(b)) => b.ticks.saturating_sub(a.ticks) as f64 / tck,
        _ => f64::NAN,
    };
    let per_1k = |cpu_s: f64, n: u64| {
        if n > 0 {
            cpu_s / n as f64 * 1000.0
        } else {
            f64::NAN
        }
    };
    let mut checks = Vec::new();
    let mut records = Vec::new();
    for (i, (side, _, pid, exe)) in sidecars.iter().enumerate() {
        let (co, cc) = (
            cpu(&before.procs[i], &after_open.procs[i]),
            cpu(&after_open.procs[i], &after_closed.procs[i]),
        );
        let rq_open = after_open.rq[i] - before.rq[i];
        let rq_closed = after_closed.rq[i] - after_open.rq[i];
        if rq_open != open_r.sent || rq_closed != closed_r.sent {
            checks.push(format!(
                "{side} sidecar counted {rq_open}/{rq_closed} requests (open/closed), the client sent {}/{}",
                open_r.sent, closed_r.sent
            ));
        }
        let hs_open = after_open.handshakes[i] - before.handshakes[i];
        let hs_closed = after_closed.handshakes[i] - after_open.handshakes[i];
        if case.transport == Transport::Mtls && *side == "server" {
            // Proof of what the run measured: one full handshake per request
            // with a new connection per request; a pooled hop otherwise.
            if case.per_request && open_r.errors == 0 && hs_open != open_r.sent {
                checks.push(format!(
                    "server sidecar completed {hs_open} TLS handshakes for {} requests with a new connection each",
                    open_r.sent
                ));
            }
            if after_closed.curves[i]
                .keys()
                .all(|k| !k.starts_with("listener "))
            {
                checks.push("server sidecar counted no key exchange (ssl.curves.*)".into());
            }
        }
        let hwm = |s: &Option<ProcSample>| s.map_or(0, |s| s.hwm_kib);
        records.push(SidecarRecord {
            side: side.to_string(),
            pid: *pid,
            exe: exe.clone(),
            cpu_s_open: co,
            cpu_s_per_1k_open: per_1k(co, open_r.sent),
            cpu_s_closed: cc,
            cpu_s_per_1k_closed: per_1k(cc, closed_r.sent),
            rps_per_core_closed: if cc > 0.0 {
                closed_r.ok as f64 / cc
            } else {
                f64::NAN
            },
            rss_idle_kib: idle.procs[i].map_or(0, |s| s.rss_kib),
            hwm_after_open_kib: hwm(&after_open.procs[i]),
            hwm_after_closed_kib: hwm(&after_closed.procs[i]),
            rq_open,
            rq_closed,
            tls_handshakes_open: hs_open,
            tls_handshakes_closed: hs_closed,
            curves: after_closed.curves[i].clone(),
        });
    }
    if open_r.errors + closed_r.errors + warm.errors > 0 {
        checks.push(format!(
            "errors: warm-up {} open {} closed {} ({:?} {:?})",
            warm.errors, open_r.errors, closed_r.errors, open_r.error_kinds, closed_r.error_kinds
        ));
    }
    if open_r.not_sent > 0 {
        checks.push(format!(
            "open loop fell behind: {} requests never sent",
            open_r.not_sent
        ));
    }
    let app_cpu = cpu(&before.app, &after_open.app);
    let ours = records.iter().map(|r| r.cpu_s_open).sum::<f64>()
        + app_cpu
        + cpu(&before.bench, &after_open.bench);
    let host_s = after_open.host.0.saturating_sub(before.host.0) as f64 / tck;
    let total_s = after_open.host.1.saturating_sub(before.host.1) as f64 / tck;
    let other_busy_pct_open =
        (total_s > 0.0 && ours.is_finite()).then(|| 100.0 * (host_s - ours).max(0.0) / total_s);
    Ok(RunRecord {
        round,
        mode,
        case,
        warmup_errors: warm.errors,
        host_busy_pct_open: probe::busy_pct(before.host, after_open.host),
        host_busy_pct_closed: probe::busy_pct(after_open.host, after_closed.host),
        other_busy_pct_open,
        app_cpu_s_per_1k_open: app_cpu.is_finite().then(|| per_1k(app_cpu, open_r.sent)),
        open: open_r,
        closed: closed_r,
        sidecars: records,
        checks,
    })
}

fn interrupted() -> anyhow::Result<()> {
    if super::stopping() {
        bail!("interrupted");
    }
    Ok(())
}

/// One request before the load: 200, the whole body, and the sidecar's mark
/// (`x-envoy-upstream-service-time`) present exactly in the sidecar modes.
/// Retried for a while: `halyard up` returns when every pod is ready, but the
/// server pod joins the registry only then, so the client sidecar may get its
/// endpoint (EDS) a moment later and answer 503 until it does.
fn sanity(target: &Target, mode: Mode) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let a = loop {
        match conn::fetch(target) {
            Ok(a) if a.status == 200 => break a,
            other if std::time::Instant::now() > deadline => {
                let a = other.context("sanity request")?;
                bail!("sanity: status {} body {} bytes", a.status, a.body_len);
            }
            _ => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    };
    if a.body_len != target.body_len {
        bail!(
            "sanity: body {} bytes, want {}",
            a.body_len,
            target.body_len
        );
    }
    let proxied = a.headers.contains_key("x-envoy-upstream-service-time");
    if proxied != mode.has_sidecars() {
        bail!(
            "sanity: {} mode, but x-envoy-upstream-service-time is {}",
            mode.name(),
            if proxied { "present" } else { "absent" }
        );
    }
    Ok(())
}

//! `halyard-bench pilot`: the control plane at scale. For each size (N proxies
//! × M services, optionally with a Sidecar per namespace) a fresh pilot loads
//! a generated mesh, a simulated fleet of N delta-ADS sidecars connects, and
//! we time the first full sync and the convergence after an endpoint change,
//! a VirtualService change and a burst of 100 changes, with the pilot's RSS
//! and CPU from /proc. Then: every proxy's final resources are compared with
//! what fresh proxies get, stuck clients (never read) join while a change is
//! pushed and must be dropped, and the pilot is killed and restarted under
//! the whole fleet, which must resync.

pub mod check_cost;
pub mod fleet;
pub mod lean;
pub mod mesh_config;
pub mod phases;
pub mod pilot_proc;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet::{EDS, Fleet, FleetStats, Identity, Interner, RDS};
use mesh_config::{MeshFiles, has_routing, namespace_of};
use phases::Phase;
use pilot_proc::{PilotUnderTest, ProcUsage, Spawn};

/// How to run the control-plane benchmark.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Options {
    pub proxies: Vec<usize>,
    pub services: Vec<usize>,
    pub endpoints: usize,
    /// `halyard` binary to run the pilot from; None = in-process.
    pub pilot_bin: Option<PathBuf>,
    /// Bound on each phase.
    #[serde(rename = "timeout_s", with = "seconds")]
    pub timeout: Duration,
    /// The fleet is quiet after this long without a response.
    #[serde(rename = "quiet_s", with = "seconds")]
    pub quiet: Duration,
    /// Edits in the burst (on distinct services, capped at M).
    pub burst: usize,
    pub client_threads: usize,
    /// Run each size without (false) and/or with (true) a Sidecar per namespace.
    #[serde(default = "no_scope")]
    pub scopes: Vec<bool>,
    /// Stuck clients in the stuck phase (0: no such phase).
    #[serde(default)]
    pub stuck: usize,
    /// The pilot's `--send-timeout` (a stuck stream is dropped after it).
    #[serde(
        rename = "send_timeout_s",
        with = "seconds",
        default = "default_send_timeout"
    )]
    pub send_timeout: Duration,
    /// Kill and restart the pilot under the fleet (subprocess only).
    #[serde(default)]
    pub restart: bool,
}

fn no_scope() -> Vec<bool> {
    vec![false]
}

fn default_send_timeout() -> Duration {
    Duration::from_secs(10)
}

/// Durations as seconds in the JSON.
mod seconds {
    use serde::Deserialize;
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_secs_f64(f64::deserialize(d)?))
    }
}

/// Everything measured for one size.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct SizeResult {
    pub proxies: usize,
    pub services: usize,
    pub endpoints: usize,
    /// Each namespace had a Sidecar importing only itself.
    pub scoped: bool,
    pub config_yaml_bytes: u64,
    /// From the streams opening until each proxy ACKed CDS+EDS+LDS+RDS.
    pub first_sync: Phase,
    /// Per-proxy xDS bytes of the first sync (resource bodies), per type.
    pub first_sync_bytes_per_proxy: [u64; 4],
    pub endpoint_change: Phase,
    pub virtual_service_change: Phase,
    pub burst: Phase,
    pub burst_edits: usize,
    pub burst_write_ms: f64,
    /// After all edits: each proxy's resources against fresh proxies'.
    pub final_check: FinalCheck,
    /// A VirtualService change pushed while stuck clients are connected.
    pub stuck: StuckResult,
    /// From killing the pilot until each proxy is in sync with the new one.
    pub restart: Phase,
    /// Resources the restarted pilot sent per proxy (0: versions survived).
    pub restart_resources_per_proxy: f64,
    pub pilot: PilotFigures,
    pub client: ClientFigures,
    pub host: HostFigures,
    pub error: Option<String>,
}

/// Every proxy's final state against a fresh proxy of the same identity.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct FinalCheck {
    /// Proxies compared (0: not run).
    pub proxies: usize,
    /// Fresh proxies connected to compare with (one per identity).
    pub fresh: usize,
    /// Proxies whose (name, version) set differs from the fresh one's.
    pub mismatched: usize,
    /// Resources a proxy held on average (what was compared).
    pub resources_per_proxy: f64,
    /// The first difference found, for the report.
    pub example: Option<String>,
}

/// The stuck-client phase.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct StuckResult {
    pub clients: usize,
    /// The fleet's convergence on a VirtualService change meanwhile.
    pub virtual_service_change: Phase,
    /// Seconds from their connecting until the pilot had dropped them all.
    pub dropped_after_s: Option<f64>,
}

/// The pilot's resources over one size's run.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct PilotFigures {
    /// Figures are the pilot process's own (false: the whole bench process).
    pub isolated: bool,
    pub rss_after_load_mib: f64,
    pub rss_after_sync_mib: f64,
    pub peak_rss_mib: f64,
    pub cpu_s_load: f64,
    pub cpu_s_first_sync: f64,
    pub cpu_s_endpoint_change: f64,
    pub cpu_s_virtual_service_change: f64,
    pub cpu_s_burst: f64,
    pub cpu_s_total: f64,
    /// The restarted pilot: CPU until the fleet had resynced, and its peak RSS.
    pub cpu_s_restart: f64,
    pub restart_peak_rss_mib: f64,
}

/// The simulated fleet's own cost (the bench process).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ClientFigures {
    pub cpu_s: f64,
    pub rss_mib: f64,
}

/// The whole machine over one size's run: how busy it was, including other
/// users' processes (the machine may be shared).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct HostFigures {
    pub wall_s: f64,
    /// Mean busy cores over the run (all processes).
    pub busy_cores: f64,
    /// Busy CPU seconds not spent by the pilot or the fleet.
    pub other_cpu_s: f64,
}

/// Run every size, M-major, in a fresh pilot each.
pub fn run(opts: &Options, mut on_result: impl FnMut(&SizeResult)) -> Vec<SizeResult> {
    let mut results = Vec::new();
    let sizes = opts.services.iter().flat_map(|&m| {
        opts.proxies
            .iter()
            .flat_map(move |&n| opts.scopes.iter().map(move |&scoped| (m, n, scoped)))
    });
    for (m, n, scoped) in sizes {
        {
            eprintln!(
                "== pilot bench: N={n} proxies, M={m} services, K={}{}",
                opts.endpoints,
                if scoped {
                    ", Sidecar per namespace"
                } else {
                    ""
                }
            );
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(opts.client_threads.max(1))
                .enable_all()
                .build()
                .expect("tokio runtime");
            let mut r = SizeResult {
                proxies: n,
                services: m,
                endpoints: opts.endpoints,
                scoped,
                ..Default::default()
            };
            let (busy0, total0) = pilot_proc::host_cpu();
            let wall = std::time::Instant::now();
            if let Err(e) = rt.block_on(run_size(opts, &mut r)) {
                eprintln!("   failed: {e:#}");
                r.error = Some(format!("{e:#}"));
            }
            let (busy1, total1) = pilot_proc::host_cpu();
            let busy = busy1 - busy0;
            let cores = ((total1 - total0) / wall.elapsed().as_secs_f64())
                .round()
                .max(1.0);
            r.host = HostFigures {
                wall_s: wall.elapsed().as_secs_f64(),
                busy_cores: busy / (total1 - total0).max(1e-9) * cores,
                other_cpu_s: (busy - r.pilot.cpu_s_total - r.client.cpu_s).max(0.0),
            };
            eprintln!(
                "   host: {:.2} of {cores} cores busy on average; {:.1} CPU-s by other processes",
                r.host.busy_cores, r.host.other_cpu_s
            );
            rt.shutdown_timeout(Duration::from_secs(5));
            on_result(&r);
            results.push(r);
        }
    }
    results
}

fn cpu_delta(from: &mut ProcUsage, to: ProcUsage) -> f64 {
    let d = to.cpu_s - from.cpu_s;
    *from = to;
    d
}

async fn run_size(opts: &Options, r: &mut SizeResult) -> anyhow::Result<()> {
    let mut files = MeshFiles::create(r.services, r.endpoints, r.scoped)?;
    r.config_yaml_bytes = files.bytes();
    let mut pilot = match &opts.pilot_bin {
        Some(bin) => {
            let log = std::env::temp_dir().join(format!(
                "halyard-bench-pilot-n{}-m{}{}.log",
                r.proxies,
                r.services,
                if r.scoped { "-scoped" } else { "" }
            ));
            PilotUnderTest::spawn(Spawn {
                bin: bin.clone(),
                config_dir: files.dir().to_path_buf(),
                log,
                send_timeout: opts.send_timeout,
            })?
        }
        None => PilotUnderTest::in_process(files.dir(), opts.send_timeout).await?,
    };
    let client_start = pilot_proc::usage("/proc/self");
    let outcome = measure(opts, r, &mut files, &mut pilot).await;
    let client_end = pilot_proc::usage("/proc/self");
    r.client = ClientFigures {
        cpu_s: client_end.cpu_s - client_start.cpu_s,
        rss_mib: client_end.rss_mib,
    };
    if r.pilot.cpu_s_total == 0.0 {
        r.pilot.cpu_s_total = pilot.usage().cpu_s;
        r.pilot.peak_rss_mib = pilot.usage().hwm_mib;
    }
    pilot.stop();
    outcome
}

fn identity(index: usize, services: usize) -> Identity {
    let svc = index % services;
    Identity {
        namespace: namespace_of(svc),
        app: format!("svc-{svc}"),
        index,
    }
}

async fn measure(
    opts: &Options,
    r: &mut SizeResult,
    files: &mut MeshFiles,
    pilot: &mut PilotUnderTest,
) -> anyhow::Result<()> {
    let start = pilot.usage();
    r.pilot.isolated = pilot.isolated();
    r.pilot.rss_after_load_mib = start.rss_mib;
    r.pilot.cpu_s_load = start.cpu_s;
    let mut mark = start;

    let identities = (0..r.proxies).map(|p| identity(p, r.services)).collect();
    let interner = Arc::new(Mutex::new(Interner::default()));
    let fleet = Fleet::start(pilot.addr(), identities, interner.clone(), true).await?;
    let stats = fleet.stats.clone();
    r.first_sync = phases::first_sync(&stats, opts.timeout).await;
    for (t, b) in stats.bytes.iter().enumerate() {
        r.first_sync_bytes_per_proxy[t] =
            b.load(std::sync::atomic::Ordering::Relaxed) / r.proxies.max(1) as u64;
    }
    if !r.first_sync.timed_out {
        phases::settle(&stats, opts.quiet, opts.timeout).await;
    }
    let u = pilot.usage();
    r.pilot.rss_after_sync_mib = u.rss_mib;
    r.pilot.cpu_s_first_sync = cpu_delta(&mut mark, u);
    report("first sync", &r.first_sync);
    if r.first_sync.timed_out {
        anyhow::bail!("first sync did not complete; changes not measured");
    }

    // (a) One endpoint moves: an EDS push.
    // Which proxies a change of these services concerns: all of them, or
    // with a Sidecar per namespace only those in the services' namespaces.
    let (proxies, services, scoped) = (r.proxies, r.services, r.scoped);
    let concerns = move |edited: &[usize]| {
        let namespaces: Vec<String> = edited.iter().map(|s| namespace_of(*s)).collect();
        move |i: usize| !scoped || namespaces.contains(&identity(i, services).namespace)
    };
    let before = phases::counts(&stats, &[EDS]);
    let written = stats.now();
    files.move_endpoint(1 % r.services)?;
    r.endpoint_change = phases::convergence(
        &stats,
        &[EDS],
        &before,
        written,
        opts.quiet,
        opts.timeout,
        concerns(&[1 % r.services]),
    )
    .await;
    r.pilot.cpu_s_endpoint_change = cpu_delta(&mut mark, pilot.usage());
    report("endpoint change", &r.endpoint_change);

    // (b) One VirtualService's weights change: an RDS push.
    phases::settle(&stats, opts.quiet, opts.timeout).await;
    let before = phases::counts(&stats, &[RDS]);
    let written = stats.now();
    files.shift_weights(0)?;
    r.virtual_service_change = phases::convergence(
        &stats,
        &[RDS],
        &before,
        written,
        opts.quiet,
        opts.timeout,
        concerns(&[0]),
    )
    .await;
    r.pilot.cpu_s_virtual_service_change = cpu_delta(&mut mark, pilot.usage());
    report("VirtualService change", &r.virtual_service_change);

    // (c) A burst: one edit on each of the first `burst` services (weights
    // where there is a VirtualService, else an endpoint), timed from the last write.
    let edits = opts.burst.min(r.services);
    phases::settle(&stats, opts.quiet, opts.timeout).await;
    let before = phases::counts(&stats, &[EDS, RDS]);
    let t0 = stats.now();
    for i in 0..edits {
        if has_routing(i) {
            files.shift_weights(i)?;
        } else {
            files.move_endpoint(i)?;
        }
    }
    let written = stats.now();
    r.burst_edits = edits;
    r.burst_write_ms = (written - t0) as f64 / 1e6;
    let edited: Vec<usize> = (0..edits).collect();
    r.burst = phases::convergence(
        &stats,
        &[EDS, RDS],
        &before,
        written,
        opts.quiet,
        opts.timeout,
        concerns(&edited),
    )
    .await;
    r.pilot.cpu_s_burst = cpu_delta(&mut mark, pilot.usage());
    report("burst", &r.burst);
    // The figures the targets are about end here: what follows adds streams.
    r.pilot.cpu_s_total = pilot.usage().cpu_s;
    r.pilot.peak_rss_mib = pilot.usage().hwm_mib;

    // (d) Every proxy's final state equals a fresh proxy's.
    phases::settle(&stats, opts.quiet, opts.timeout).await;
    r.final_check = final_check(opts, pilot, &stats, &interner, r.services).await?;
    eprintln!(
        "   final check: {}/{} proxies differ from a fresh proxy{}",
        r.final_check.mismatched,
        r.final_check.proxies,
        r.final_check
            .example
            .as_ref()
            .map_or(String::new(), |e| format!(" (e.g. {e})"))
    );

    // (e) Stuck clients while a change is pushed; the pilot must drop them.
    if opts.stuck > 0 && r.services > 0 && has_routing(0) {
        r.stuck = stuck_phase(opts, pilot, &stats, files, proxies, concerns(&[0])).await?;
        report(
            "VirtualService change, stuck clients",
            &r.stuck.virtual_service_change,
        );
        eprintln!(
            "   {} stuck clients dropped after {}",
            r.stuck.clients,
            r.stuck
                .dropped_after_s
                .map_or("– (not within the bound)".to_string(), |s| format!(
                    "{s:.1} s"
                ))
        );
    }

    // (f) Kill the pilot and start it again: the fleet reconnects and resyncs.
    if opts.restart && pilot.isolated() {
        phases::settle(&stats, opts.quiet, opts.timeout).await;
        let received: u64 = stats
            .proxies
            .iter()
            .map(|p| p.resources.load(Relaxed))
            .sum();
        let killed = stats.now();
        pilot.restart()?;
        r.restart = phases::resync(&stats, killed, opts.timeout).await;
        phases::settle(&stats, opts.quiet, opts.timeout).await;
        let after: u64 = stats
            .proxies
            .iter()
            .map(|p| p.resources.load(Relaxed))
            .sum();
        r.restart_resources_per_proxy = (after - received) as f64 / r.proxies.max(1) as f64;
        let u = pilot.usage();
        r.pilot.cpu_s_restart = u.cpu_s;
        r.pilot.restart_peak_rss_mib = u.hwm_mib;
        report("restart (kill → every proxy resynced)", &r.restart);
        eprintln!(
            "   restarted pilot sent {:.1} resources per proxy",
            r.restart_resources_per_proxy
        );
    }
    drop(fleet);
    Ok(())
}

/// Fresh proxies, one per identity, against the fleet's final state.
async fn final_check(
    opts: &Options,
    pilot: &PilotUnderTest,
    stats: &FleetStats,
    interner: &Arc<Mutex<Interner>>,
    services: usize,
) -> anyhow::Result<FinalCheck> {
    let n = stats.proxies.len();
    let k = n.min(services);
    let fresh = Fleet::start(
        pilot.addr(),
        (0..k).map(|i| identity(i, services)).collect(),
        interner.clone(),
        false,
    )
    .await?;
    let synced = phases::first_sync(&fresh.stats, opts.timeout).await;
    anyhow::ensure!(!synced.timed_out, "fresh proxies did not sync");
    phases::settle(&fresh.stats, opts.quiet, opts.timeout).await;
    let mut check = FinalCheck {
        proxies: n,
        fresh: k,
        ..Default::default()
    };
    let mut resources = 0usize;
    for j in 0..n {
        let want = fresh.stats.held(j % k.max(1));
        let got = stats.held(j);
        resources += got.types.iter().map(Vec::len).sum::<usize>();
        if got != want {
            check.mismatched += 1;
            if check.example.is_none() {
                let int = interner.lock().unwrap_or_else(|e| e.into_inner());
                check.example = Some(difference(j, &got, &want, &int));
            }
        }
    }
    check.resources_per_proxy = resources as f64 / n.max(1) as f64;
    Ok(check)
}

/// The first (type, name) where two proxies' resources differ, in words.
fn difference(j: usize, got: &fleet::Held, want: &fleet::Held, int: &Interner) -> String {
    const TYPES: [&str; 4] = ["CDS", "EDS", "LDS", "RDS"];
    for (t, name) in TYPES.iter().enumerate() {
        let (g, w) = (&got.types[t], &want.types[t]);
        if g == w {
            continue;
        }
        let only = |a: &[(u32, u32)], b: &[(u32, u32)]| a.iter().find(|e| !b.contains(e)).copied();
        let show = |e: Option<(u32, u32)>| {
            e.map_or("nothing".to_string(), |(n, v)| {
                format!("{} @ {}", int.string(n), int.string(v))
            })
        };
        return format!(
            "proxy {j} {name}: holds {}, a fresh proxy {} ({} vs {} resources)",
            show(only(g, w)),
            show(only(w, g)),
            g.len(),
            w.len()
        );
    }
    format!("proxy {j}: differs")
}

/// Stuck clients connect, a VirtualService change is pushed to the fleet
/// meanwhile, then we wait for the pilot to drop them.
async fn stuck_phase(
    opts: &Options,
    pilot: &PilotUnderTest,
    stats: &FleetStats,
    files: &mut MeshFiles,
    proxies: usize,
    expected: impl Fn(usize) -> bool,
) -> anyhow::Result<StuckResult> {
    let services = files.services();
    phases::settle(stats, opts.quiet, opts.timeout).await;
    let connected = Instant::now();
    let stuck = fleet::Stuck::connect(
        pilot.addr(),
        (0..opts.stuck)
            .map(|i| identity(proxies + i, services))
            .collect(),
    )
    .await?;
    let before = phases::counts(stats, &[RDS]);
    let written = stats.now();
    files.shift_weights(0)?;
    let change = phases::convergence(
        stats,
        &[RDS],
        &before,
        written,
        opts.quiet,
        opts.timeout,
        expected,
    )
    .await;
    let bound = opts.send_timeout + Duration::from_secs(30);
    let mut dropped_after_s = None;
    while connected.elapsed() < bound {
        let ids = pilot.connected_ids()?;
        if !stuck.ids.iter().any(|s| ids.contains(s)) {
            dropped_after_s = Some(connected.elapsed().as_secs_f64());
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(stuck);
    Ok(StuckResult {
        clients: opts.stuck,
        virtual_service_change: change,
        dropped_after_s,
    })
}

use std::sync::atomic::Ordering::Relaxed;

fn report(what: &str, p: &Phase) {
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
    eprintln!(
        "   {what}: p50 {} ms, p99 {} ms, max {} ms ({}/{} proxies{})",
        ms(p.p50_ms),
        ms(p.p99_ms),
        ms(p.max_ms),
        p.converged,
        p.proxies,
        if p.timed_out { ", TIMED OUT" } else { "" }
    );
}

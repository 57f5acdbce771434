//! `halyard-bench pilot`: the control plane at scale. For each size (N proxies
//! × M services) a fresh pilot loads a generated mesh, a simulated fleet of N
//! delta-ADS sidecars connects, and we time the first full sync and the
//! convergence after an endpoint change, a VirtualService change and a burst
//! of 100 changes, with the pilot's RSS and CPU from /proc.

pub mod check_cost;
pub mod fleet;
pub mod lean;
pub mod mesh_config;
pub mod phases;
pub mod pilot_proc;

use std::path::PathBuf;
use std::time::Duration;

use fleet::{EDS, Fleet, Identity, RDS};
use mesh_config::{MeshFiles, has_routing, namespace_of};
use phases::Phase;
use pilot_proc::{PilotUnderTest, ProcUsage};

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
pub struct SizeResult {
    pub proxies: usize,
    pub services: usize,
    pub endpoints: usize,
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
    pub pilot: PilotFigures,
    pub client: ClientFigures,
    pub host: HostFigures,
    pub error: Option<String>,
}

/// The pilot's resources over one size's run.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
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
    for &m in &opts.services {
        for &n in &opts.proxies {
            eprintln!(
                "== pilot bench: N={n} proxies, M={m} services, K={}",
                opts.endpoints
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
    let mut files = MeshFiles::create(r.services, r.endpoints)?;
    r.config_yaml_bytes = files.bytes();
    let pilot = match &opts.pilot_bin {
        Some(bin) => {
            let log = std::env::temp_dir().join(format!(
                "halyard-bench-pilot-n{}-m{}.log",
                r.proxies, r.services
            ));
            PilotUnderTest::spawn(bin, files.dir(), &log)?
        }
        None => PilotUnderTest::in_process(files.dir()).await?,
    };
    let client_start = pilot_proc::usage("/proc/self");
    let outcome = measure(opts, r, &mut files, &pilot).await;
    let client_end = pilot_proc::usage("/proc/self");
    r.client = ClientFigures {
        cpu_s: client_end.cpu_s - client_start.cpu_s,
        rss_mib: client_end.rss_mib,
    };
    r.pilot.cpu_s_total = pilot.usage().cpu_s;
    r.pilot.peak_rss_mib = pilot.usage().hwm_mib;
    pilot.stop();
    outcome
}

async fn measure(
    opts: &Options,
    r: &mut SizeResult,
    files: &mut MeshFiles,
    pilot: &PilotUnderTest,
) -> anyhow::Result<()> {
    let start = pilot.usage();
    r.pilot.isolated = pilot.isolated();
    r.pilot.rss_after_load_mib = start.rss_mib;
    r.pilot.cpu_s_load = start.cpu_s;
    let mut mark = start;

    let identities = (0..r.proxies)
        .map(|p| {
            let svc = p % r.services;
            Identity {
                namespace: namespace_of(svc),
                app: format!("svc-{svc}"),
            }
        })
        .collect();
    let fleet = Fleet::start(pilot.addr(), identities).await?;
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
    let before = phases::counts(&stats, &[EDS]);
    let written = stats.now();
    files.move_endpoint(1 % r.services)?;
    r.endpoint_change =
        phases::convergence(&stats, &[EDS], &before, written, opts.quiet, opts.timeout).await;
    r.pilot.cpu_s_endpoint_change = cpu_delta(&mut mark, pilot.usage());
    report("endpoint change", &r.endpoint_change);

    // (b) One VirtualService's weights change: an RDS push.
    phases::settle(&stats, opts.quiet, opts.timeout).await;
    let before = phases::counts(&stats, &[RDS]);
    let written = stats.now();
    files.shift_weights(0)?;
    r.virtual_service_change =
        phases::convergence(&stats, &[RDS], &before, written, opts.quiet, opts.timeout).await;
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
    r.burst = phases::convergence(
        &stats,
        &[EDS, RDS],
        &before,
        written,
        opts.quiet,
        opts.timeout,
    )
    .await;
    r.pilot.cpu_s_burst = cpu_delta(&mut mark, pilot.usage());
    report("burst", &r.burst);
    drop(fleet);
    Ok(())
}

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

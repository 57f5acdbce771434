//! The `halyard-bench sidecar` command line: flags to [`Options`], the run,
//! and the report (rewritten after every run, so a long run that dies still
//! leaves its figures behind).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::mesh::{self, MeshConfig};
use super::report::{self, SidecarReport};
use super::{Case, Mode, Options, Protocol, Transport, run, summary};
use crate::report::machine::{Machine, compact_date};

#[derive(clap::Args, Debug)]
pub struct SidecarArgs {
    /// Open-loop run per case and mode (e.g. 30s, 500ms).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// Closed-loop (max throughput) run per case and mode.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    max_duration: Duration,
    /// Warm-up at the open-loop rate before measuring.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    warmup: Duration,
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Open-loop requests/s over all connections.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    #[arg(long, value_delimiter = ',', default_value = "16")]
    connections: Vec<usize>,
    /// http1 (keep-alive) and/or http2 (h2c, prior knowledge).
    #[arg(long, value_delimiter = ',', default_value = "http1,http2")]
    protocol: Vec<String>,
    /// Sidecar-to-sidecar transport(s), comma-separated: `plaintext` (halyard
    /// up injects the sidecars, the pilot configures them), `static` (the
    /// benchmark's fixed two-sidecar bootstraps, plaintext), `mtls` (the same
    /// with Istio's ISTIO_MUTUAL between them, one mesh CA).
    #[arg(long, value_delimiter = ',', default_value = "plaintext",
          value_parser = ["plaintext", "static", "mtls"])]
    transport: Vec<String>,
    /// Connection reuse, comma-separated: `keepalive` (pooled, Istio's
    /// default) and/or `per-request` (the load generator opens a new
    /// connection per request; with `static`/`mtls` the client sidecar is a
    /// tcp_proxy, so every request is a new sidecar-to-sidecar connection and,
    /// under mTLS, one full TLS handshake).
    #[arg(long, value_delimiter = ',', default_value = "keepalive",
          value_parser = ["keepalive", "per-request"])]
    reuse: Vec<String>,
    /// The client sidecar's route, comma-separated (static/mtls transports
    /// only): `none` (no retry policy) and/or `istio` (Istio's default retry
    /// policy and attempt-count header, what every route gets from the pilot).
    #[arg(long, value_delimiter = ',', default_value = "none",
          value_parser = ["none", "istio"])]
    retries: Vec<String>,
    /// The mTLS comparison: `--transport static,mtls --reuse keepalive,per-request`
    /// (per-request cases over HTTP/1.1 only).
    #[arg(long, conflicts_with_all = ["transport", "reuse"])]
    mtls: bool,
    #[arg(long, value_delimiter = ',', default_value = "direct,halyard,envoy")]
    modes: Vec<String>,
    /// 2 s per case, 1 round, 16 connections, http1 (1 s closed loop, 1 s warm-up).
    #[arg(long)]
    smoke: bool,
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Report file stem (default sidecar-YYYYMMDD, or sidecar-smoke).
    #[arg(long)]
    stem: Option<String>,
    /// The `halyard` binary (default: next to halyard-bench).
    #[arg(long)]
    halyard: Option<PathBuf>,
    /// The Envoy executable for the envoy mode (default: the test venv's).
    #[arg(long, env = "HALYARD_ENVOY")]
    envoy: Option<PathBuf>,
    #[arg(long, default_value_t = 2)]
    proxy_concurrency: usize,
    /// Namespace prefix of the benchmark's meshes.
    #[arg(long, default_value = "hbsc")]
    name: String,
    #[arg(long, default_value_t = 1024)]
    body_bytes: usize,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| s.split_at(i));
    let v: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "s" => v,
        "ms" => v / 1000.0,
        "m" => v * 60.0,
        _ => return Err(format!("bad duration unit in {s:?} (s, ms, m)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

fn default_envoy() -> Option<PathBuf> {
    [
        "/var/cache/halyard/venv/bin/envoy",
        "/work/cache/venv/bin/envoy",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
}

fn options(a: &SidecarArgs, work: PathBuf) -> anyhow::Result<Options> {
    let halyard = match &a.halyard {
        Some(h) => h.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("own directory")?
            .join("halyard"),
    };
    if !halyard.is_file() {
        bail!(
            "{} not found (cargo build --release -p halyard, or --halyard)",
            halyard.display()
        );
    }
    let mut modes = Vec::new();
    for m in &a.modes {
        modes.push(Mode::parse(m).with_context(|| format!("unknown mode {m}"))?);
    }
    let (transports, reuse) = if a.mtls {
        (vec![Transport::Static, Transport::Mtls], vec![false, true])
    } else {
        let mut t = Vec::new();
        for s in &a.transport {
            t.push(Transport::parse(s).with_context(|| format!("unknown transport {s}"))?);
        }
        (t, a.reuse.iter().map(|r| r == "per-request").collect())
    };
    let (protocols, conns) = if a.smoke {
        (vec![Protocol::Http1], vec![16])
    } else {
        let mut p = Vec::new();
        for s in &a.protocol {
            p.push(Protocol::parse(s).with_context(|| format!("unknown protocol {s}"))?);
        }
        (p, a.connections.clone())
    };
    // Keep-alive cases first (protocol × connections × transport), then the
    // new-connection-per-request ones; with --mtls those only over HTTP/1.1
    // (a new h2c connection per request measures nothing HTTP/2 is for).
    let mut cases = Vec::new();
    for &per_request in &reuse {
        for &protocol in &protocols {
            if per_request && a.mtls && protocol != Protocol::Http1 {
                continue;
            }
            for &connections in &conns {
                for &transport in &transports {
                    for retries in &a.retries {
                        let istio_retries = retries == "istio";
                        // Only the static pair has a route of the
                        // benchmark's own to put a policy on.
                        if istio_retries && (per_request || transport == Transport::Plaintext) {
                            continue;
                        }
                        cases.push(Case {
                            protocol,
                            connections,
                            transport,
                            per_request,
                            istio_retries,
                        });
                    }
                }
            }
        }
    }
    let pki = if cases.iter().any(|c| c.transport == Transport::Mtls) {
        Some(super::pki::Pki::create(&work.join("pki"))?)
    } else {
        None
    };
    let s = |d: u64| Duration::from_secs(d);
    Ok(Options {
        cases,
        modes,
        rounds: if a.smoke { 1 } else { a.rounds.max(1) },
        rate: a.rate,
        duration: if a.smoke { s(2) } else { a.duration },
        max_duration: if a.smoke { s(1) } else { a.max_duration },
        warmup: if a.smoke { s(1) } else { a.warmup },
        body_bytes: a.body_bytes,
        mesh: MeshConfig {
            halyard,
            envoy: a.envoy.clone().or_else(default_envoy),
            proxy_concurrency: a.proxy_concurrency,
            name: a.name.clone(),
            work,
        },
        pki,
    })
}

/// Run the benchmark and write its report.
pub fn main(a: SidecarArgs) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("halyard-bench sidecar needs root (network namespaces and iptables)");
    }
    if !mesh::namespaces_with_prefix(&a.name).is_empty() {
        bail!(
            "namespaces with prefix {}- exist already (halyard down --name {})",
            a.name,
            a.name
        );
    }
    super::install_signal_handlers();
    let work = tempfile::Builder::new()
        .prefix("halyard-bench-sidecar")
        .tempdir()?;
    let opts = options(&a, work.path().to_path_buf())?;
    let machine = Machine::probe();
    let stem = a.stem.clone().unwrap_or_else(|| {
        if a.smoke {
            "sidecar-smoke".into()
        } else {
            format!("sidecar-{}", compact_date(&machine.started_utc))
        }
    });
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let versions = report::versions(&opts);
    let started = Instant::now();
    let build = |runs: Vec<run::RunRecord>| SidecarReport {
        benchmark: "sidecar",
        machine: machine.clone(),
        versions: versions.clone(),
        command: command.clone(),
        options: opts.clone(),
        duration_s: started.elapsed().as_secs_f64(),
        summary: summary::summarize(&opts.cases, &runs),
        checks_failed: runs
            .iter()
            .flat_map(|r| {
                r.checks
                    .iter()
                    .map(move |c| format!("{} {} r{}: {c}", r.case.label(), r.mode.name(), r.round))
            })
            .collect(),
        runs,
    };
    let mut so_far = Vec::new();
    let runs = run::run_all(&opts, |r| {
        so_far.push(r.clone());
        if let Err(e) = build(so_far.clone()).write(&a.out, &stem) {
            eprintln!("cannot write the report: {e:#}");
        }
    })?;
    let full = build(runs);
    for p in full.write(&a.out, &stem)? {
        eprintln!("wrote {}", p.display());
    }
    if !full.checks_failed.is_empty() {
        bail!(
            "{} check(s) failed: {}",
            full.checks_failed.len(),
            full.checks_failed.join("; ")
        );
    }
    Ok(())
}

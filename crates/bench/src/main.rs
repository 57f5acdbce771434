//! `halyard-bench`: run a benchmark and write its report under bench/results.
//! One subcommand per benchmark (`pilot` now; the data plane comes next).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use bench::pilot_bench::{self, pilot_proc};
use bench::report;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "halyard-bench", about = "Halyard benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Control plane at scale: N simulated delta-ADS sidecars against one pilot
    /// holding M services; first sync, convergence after changes, RSS, CPU.
    Pilot(PilotArgs),
    /// Re-render a report's markdown and SVG from its JSON (after a format
    /// change, or to attach findings written after the run).
    Render(report::RenderArgs),
    /// The pre-push check's cost beside translation (one sidecar per
    /// namespace of the generated mesh), as a ratio.
    CheckCost(CheckCostArgs),
    /// Data plane: client → sidecar → sidecar → server against direct, with
    /// halyard and stock Envoy sidecars; latency, CPU, RSS, max rps.
    Sidecar(bench::sidecar::cli::SidecarArgs),
    /// Mutual-TLS handshake cost per key exchange group (the post-quantum
    /// hybrid X25519MLKEM768 against X25519 and P-256), in memory.
    Handshake(bench::handshake::HandshakeArgs),
}

#[derive(clap::Args)]
struct CheckCostArgs {
    /// Mesh size (Kubernetes Services).
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// WorkloadEntries per service.
    #[arg(long, default_value_t = 3)]
    endpoints: usize,
    /// Times every sidecar is translated and checked.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

#[derive(clap::Args)]
struct PilotArgs {
    /// Fleet sizes (simulated sidecars), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,2000")]
    proxies: Vec<usize>,
    /// Mesh sizes (Kubernetes Services), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    services: Vec<usize>,
    /// WorkloadEntries per service.
    #[arg(long, default_value_t = 3)]
    endpoints: usize,
    /// A few seconds: N=20, M=20 (overrides --proxies/--services).
    #[arg(long)]
    smoke: bool,
    /// Where the report goes.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// The `halyard` binary to run the pilot from (default: next to this one).
    #[arg(long)]
    pilot_bin: Option<PathBuf>,
    /// Run the pilot inside this process (RSS/CPU are then not the pilot's alone).
    #[arg(long, conflicts_with = "pilot_bin")]
    in_process: bool,
    /// Bound on each phase, in seconds; a phase past it is recorded as timed out.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// The fleet counts as settled after this many ms without a response.
    #[arg(long, default_value_t = 1000)]
    quiet_ms: u64,
    /// Edits in the burst (on distinct services, at most M).
    #[arg(long, default_value_t = 100)]
    burst: usize,
    /// Tokio worker threads for the simulated fleet.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Report file stem (default pilot-YYYYMMDD, or pilot-smoke).
    #[arg(long)]
    name: Option<String>,
    /// Sidecar scoping per size: `none` (no Sidecar), `namespace` (a Sidecar
    /// per namespace importing only `./*`), or both, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "none")]
    sidecar: Vec<SidecarScope>,
    /// Stuck clients (connect, never read) in the stuck phase; 0 skips it.
    #[arg(long, default_value_t = 20)]
    stuck: usize,
    /// The pilot's --send-timeout in seconds (a stuck stream is dropped after it).
    #[arg(long, default_value_t = 10)]
    send_timeout: u64,
    /// Skip the phase that kills and restarts the pilot under the fleet.
    #[arg(long)]
    no_restart: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum SidecarScope {
    None,
    Namespace,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Pilot(args) => pilot(args),
        Command::Render(args) => report::render(&args),
        Command::CheckCost(a) => {
            let c = bench::pilot_bench::check_cost::run(a.services, a.endpoints, a.rounds)?;
            println!(
                "M={} services, {} resources per sidecar: translate {:.1} ms, check {:.1} ms per sidecar; check/translate = {:.3}",
                c.services,
                c.resources,
                c.translate.as_secs_f64() * 1e3 / (a.rounds.max(1) * 10) as f64,
                c.check.as_secs_f64() * 1e3 / (a.rounds.max(1) * 10) as f64,
                c.ratio()
            );
            Ok(())
        }
        Command::Sidecar(args) => bench::sidecar::cli::main(args),
        Command::Handshake(args) => bench::handshake::run(&args),
    }
}

fn pilot(args: PilotArgs) -> anyhow::Result<()> {
    let (proxies, services) = if args.smoke {
        (vec![20], vec![20])
    } else {
        (args.proxies, args.services)
    };
    let pilot_bin = if args.in_process {
        None
    } else {
        let bin = args.pilot_bin.or_else(pilot_proc::default_pilot_bin);
        if bin.is_none() {
            eprintln!(
                "no halyard binary next to halyard-bench (cargo build --release -p halyard); \
                 running the pilot in-process"
            );
        }
        bin
    };
    let opts = pilot_bench::Options {
        proxies,
        services,
        endpoints: args.endpoints,
        pilot_bin,
        timeout: Duration::from_secs(args.timeout),
        quiet: Duration::from_millis(args.quiet_ms),
        burst: args.burst,
        client_threads: args.client_threads,
        scopes: args
            .sidecar
            .iter()
            .map(|s| *s == SidecarScope::Namespace)
            .collect(),
        stuck: args.stuck,
        send_timeout: Duration::from_secs(args.send_timeout),
        restart: !args.no_restart,
    };
    let machine = report::machine::Machine::probe();
    let stem = args.name.unwrap_or_else(|| {
        if args.smoke {
            "pilot-smoke".to_string()
        } else {
            format!(
                "pilot-{}",
                report::machine::compact_date(&machine.started_utc)
            )
        }
    });
    std::fs::create_dir_all(&args.out).with_context(|| format!("create {}", args.out.display()))?;
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let started = Instant::now();
    let mut so_far = Vec::new();
    let results = pilot_bench::run(&opts, |r| {
        // Write after every size, so a long run leaves partial results behind.
        so_far.push(r.clone());
        let partial = report::PilotReport::new(&machine, &opts, &command, started, so_far.clone());
        if let Err(e) = partial.write(&args.out, &stem) {
            eprintln!("cannot write the report: {e:#}");
        }
    });
    let full = report::PilotReport::new(&machine, &opts, &command, started, results);
    let paths = full.write(&args.out, &stem)?;
    for p in paths {
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

//! The sidecar benchmark's report: `STEM.json` (machine, versions, options,
//! every run, medians, ratios), `STEM.md` (the tables) and `STEM.svg`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::Options;
use super::run::RunRecord;
use super::summary::{CaseSummary, ModeSummary, PCTS};
use crate::report::machine::Machine;

/// Everything one invocation measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SidecarReport {
    pub benchmark: &'static str,
    pub machine: Machine,
    pub versions: Vec<(String, String)>,
    pub command: String,
    pub options: Options,
    pub duration_s: f64,
    pub summary: Vec<CaseSummary>,
    pub runs: Vec<RunRecord>,
    /// Every failed cross-check, tagged with its run.
    pub checks_failed: Vec<String>,
}

/// `halyard --version`-like strings of the software under test.
pub fn versions(opts: &Options) -> Vec<(String, String)> {
    let out = |cmd: &Path, arg: &str| {
        std::process::Command::new(cmd)
            .arg(arg)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let envoy = opts
        .mesh
        .envoy
        .clone()
        .unwrap_or_else(|| PathBuf::from("/var/cache/halyard/venv/bin/envoy"));
    let iptables = out(Path::new("iptables"), "--version");
    vec![
        ("halyard".into(), opts.mesh.halyard.display().to_string()),
        ("envoy".into(), out(&envoy, "--version")),
        ("iptables".into(), iptables),
    ]
}

impl SidecarReport {
    /// Write STEM.json, STEM.md and STEM.svg into `dir`.
    pub fn write(&self, dir: &Path, stem: &str) -> anyhow::Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir)?;
        let json = dir.join(format!("{stem}.json"));
        let md = dir.join(format!("{stem}.md"));
        let svg = dir.join(format!("{stem}.svg"));
        std::fs::write(&json, serde_json::to_string_pretty(self)? + "\n")
            .with_context(|| format!("write {}", json.display()))?;
        std::fs::write(&md, self.markdown(&format!("{stem}.svg")))?;
        std::fs::write(&svg, super::svg::chart(&self.summary))?;
        Ok(vec![json, md, svg])
    }

    fn markdown(&self, svg: &str) -> String {
        let o = &self.options;
        let m = &self.machine;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# halyard-bench sidecar: halyard vs Envoy sidecars vs direct\n"
        );
        let _ = writeln!(
            s,
            "- started {} UTC, took {:.0} s; {} ({} CPUs), {} MiB, kernel {}; commit {} (dirty: {})",
            m.started_utc,
            self.duration_s,
            m.cpu_model,
            m.cpus,
            m.mem_total_mib,
            m.kernel,
            m.git_commit.as_deref().unwrap_or("?"),
            m.git_dirty.map_or("?".into(), |d| d.to_string())
        );
        for (k, v) in &self.versions {
            let _ = writeln!(s, "- {k}: {}", v.lines().next().unwrap_or(""));
        }
        let _ = writeln!(
            s,
            "- per mode run (fresh mesh each): {} s warm-up, open loop {} req/s for {} s with latency \
             correction, closed loop {} s; {} round(s), modes interleaved ({}); proxy concurrency {}; \
             {}-byte bodies\n- command: `{}`\n",
            o.warmup.as_secs_f64(),
            o.rate,
            o.duration.as_secs_f64(),
            o.max_duration.as_secs_f64(),
            o.rounds,
            o.modes
                .iter()
                .map(|m| m.name())
                .collect::<Vec<_>>()
                .join(", "),
            o.mesh.proxy_concurrency,
            o.body_bytes,
            self.command
        );
        if self.summary.iter().any(|c| c.case.transport.is_static()) {
            let _ = writeln!(
                s,
                "Transports: `plaintext` = `halyard up` injects the sidecars (capture, pilot config); \
                 `static` / `mtls` = the benchmark's fixed two-sidecar bootstraps in an uninjected mesh \
                 (app → client sidecar 127.0.0.1:15001 → server pod :15006 → app), plaintext or Istio's \
                 ISTIO_MUTUAL between the sidecars (one mesh CA, P-256 workload certificates, exact \
                 SPIFFE id checked by the client, trust-domain prefix and a client certificate required \
                 by the server). `new-conn-per-request`: the load generator opens a connection per request \
                 and the client sidecar is a tcp_proxy, so every request is a new sidecar-to-sidecar \
                 connection (under mTLS one full handshake, checked against the server's ssl.handshake). \
                 Direct runs once per round and case shape, shared by the transports.\n"
            );
        }
        let _ = writeln!(s, "![chart]({svg})\n");
        for c in &self.summary {
            case_tables(&mut s, c);
        }
        let _ = writeln!(s, "## Per run\n");
        let _ = writeln!(
            s,
            "| case | mode | round | p50 | p99 | p99.9 | rps | errors | max rps | client CPU-s/1k | server CPU-s/1k | rq counted (client/server) vs sent | host busy % |"
        );
        let _ = writeln!(
            s,
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"
        );
        for r in &self.runs {
            let l = &r.open.latency_ms;
            let sc = |n: &str| r.sidecars.iter().find(|x| x.side == n);
            let rq = r
                .sidecars
                .iter()
                .map(|x| format!("{}+{}", x.rq_open, x.rq_closed))
                .collect::<Vec<_>>()
                .join(" / ");
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.1} | {} | {:.0} | {} | {} | {} vs {}+{} | {} |",
                r.case.label(),
                r.mode.name(),
                r.round,
                l.p50,
                l.p99,
                l.p999,
                r.open.rps,
                r.open.errors + r.closed.errors,
                r.closed.rps,
                f(sc("client").map(|x| x.cpu_s_per_1k_open), 4),
                f(sc("server").map(|x| x.cpu_s_per_1k_open), 4),
                if rq.is_empty() { "-".into() } else { rq },
                r.open.sent,
                r.closed.sent,
                f(r.host_busy_pct_open, 1)
            );
        }
        let _ = writeln!(
            s,
            "\nChecks: {}",
            if self.checks_failed.is_empty() {
                "all passed: no errors, and each sidecar's downstream_rq_total delta equals the requests the client sent in both loops (nothing bypassed a sidecar).".to_string()
            } else {
                self.checks_failed.join("; ")
            }
        );
        s
    }
}

fn f(v: Option<f64>, nd: usize) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.nd$}"),
        _ => "-".into(),
    }
}

fn case_tables(s: &mut String, c: &CaseSummary) {
    let _ = writeln!(s, "## {}\n", c.case.label());
    let _ = writeln!(
        s,
        "| mode | p50 | p90 | p99 | p99.9 | +p50 | +p90 | +p99 | +p99.9 | achieved rps | errors | max rps | host busy % (open) | of which other processes % |"
    );
    let _ = writeln!(
        s,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (name, m) in &c.modes {
        let lat: Vec<String> = PCTS
            .iter()
            .map(|p| f(m.latency_ms.get(*p).copied(), 3))
            .collect();
        let add: Vec<String> = PCTS
            .iter()
            .map(|p| {
                m.added_ms
                    .get(*p)
                    .map_or("-".into(), |v| format!("{v:+.3}"))
            })
            .collect();
        let _ = writeln!(
            s,
            "| {name} | {} | {} | {:.1} | {}/{} | {:.0} | {} | {} |",
            lat.join(" | "),
            add.join(" | "),
            m.achieved_rps,
            m.errors,
            m.sent_open,
            m.max_rps,
            f(m.host_busy_pct_open, 1),
            f(m.other_busy_pct_open, 1)
        );
    }
    let _ = writeln!(
        s,
        "\n| mode | pair CPU-s/1k @rate | client | server | pair CPU-s/1k @max | pair req/s per core @max | idle RSS MiB (client/server) | pair peak RSS MiB | app CPU-s/1k |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---|---:|---:|");
    for (name, m) in c.modes.iter().filter(|(n, _)| *n != "direct") {
        cost_row(s, name, m);
    }
    if let Some(d) = c.modes.get("direct") {
        let _ = writeln!(
            s,
            "| direct | - | - | - | - | - | - | - | {} |",
            f(d.app_cpu_s_per_1k_open, 4)
        );
    }
    if c.case.transport == super::Transport::Mtls {
        let _ = writeln!(
            s,
            "\n| mode | key exchange counted (side, where, group: handshakes) | server TLS handshakes per request (open loop) |"
        );
        let _ = writeln!(s, "|---|---|---:|");
        for (name, m) in c.modes.iter().filter(|(n, _)| *n != "direct") {
            let curves: Vec<String> = m.curves.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            let _ = writeln!(
                s,
                "| {name} | {} | {} |",
                if curves.is_empty() {
                    "-".into()
                } else {
                    curves.join(", ")
                },
                f(m.server_handshakes_per_request_open, 3)
            );
        }
    }
    let mtls: Vec<(String, &std::collections::BTreeMap<String, f64>)> = c
        .mtls_over_plaintext
        .iter()
        .map(|(p, m)| (format!("{p} mtls / {p} static plaintext"), m))
        .collect();
    for (title, map) in [
        ("halyard / envoy".to_string(), &c.halyard_over_envoy),
        ("halyard / direct".to_string(), &c.halyard_over_direct),
        ("envoy / direct".to_string(), &c.envoy_over_direct),
    ]
    .into_iter()
    .chain(mtls)
    {
        if map.is_empty() {
            continue;
        }
        let row: Vec<String> = map.iter().map(|(k, v)| format!("{k} {v:.2}")).collect();
        let _ = writeln!(s, "\n{title}: {}", row.join(", "));
    }
    let _ = writeln!(s);
}

fn cost_row(s: &mut String, name: &str, m: &ModeSummary) {
    let _ = writeln!(
        s,
        "| {name} | {} | {} | {} | {} | {} | {} / {} | {} | {} |",
        f(m.pair_cpu_s_per_1k_open, 4),
        f(m.client_cpu_s_per_1k_open, 4),
        f(m.server_cpu_s_per_1k_open, 4),
        f(m.pair_cpu_s_per_1k_closed, 4),
        f(m.pair_rps_per_core_closed, 0),
        f(m.client_rss_idle_mib, 1),
        f(m.server_rss_idle_mib, 1),
        f(m.pair_hwm_mib, 1),
        f(m.app_cpu_s_per_1k_open, 4)
    );
}

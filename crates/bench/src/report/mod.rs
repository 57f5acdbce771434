//! Benchmark reports: the JSON (every figure, machine-readable), a markdown
//! page with the tables, and the SVG chart, written side by side as
//! `STEM.json`, `STEM.md`, `STEM.svg`.

pub mod machine;
mod render;
pub mod svg;

pub use render::{RenderArgs, render};

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;

use crate::pilot_bench::phases::Phase;
use crate::pilot_bench::{Options, SizeResult};
use machine::Machine;

/// The control-plane benchmark's report.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct PilotReport {
    pub benchmark: String,
    pub machine: Machine,
    pub command: String,
    pub options: Options,
    pub duration_s: f64,
    pub results: Vec<SizeResult>,
    /// Findings written after the run (markdown), shown under "Findings".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
}

impl PilotReport {
    pub fn new(
        machine: &Machine,
        options: &Options,
        command: &str,
        started: Instant,
        results: Vec<SizeResult>,
    ) -> PilotReport {
        PilotReport {
            benchmark: "pilot".to_string(),
            machine: machine.clone(),
            command: command.to_string(),
            options: options.clone(),
            duration_s: started.elapsed().as_secs_f64(),
            results,
            notes: None,
        }
    }

    /// Read a report back from its JSON (to re-render the markdown and SVG).
    pub fn read(json: &Path) -> anyhow::Result<PilotReport> {
        let text =
            std::fs::read_to_string(json).with_context(|| format!("read {}", json.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parse {}", json.display()))
    }

    /// Write STEM.json, STEM.md and STEM.svg into `dir`.
    pub fn write(&self, dir: &Path, stem: &str) -> anyhow::Result<Vec<PathBuf>> {
        let json = dir.join(format!("{stem}.json"));
        let md = dir.join(format!("{stem}.md"));
        let svg_path = dir.join(format!("{stem}.svg"));
        std::fs::write(&json, serde_json::to_string_pretty(self)? + "\n")
            .with_context(|| format!("write {}", json.display()))?;
        std::fs::write(&md, self.markdown(&format!("{stem}.svg")))
            .with_context(|| format!("write {}", md.display()))?;
        std::fs::write(&svg_path, svg::convergence_chart(&self.results))
            .with_context(|| format!("write {}", svg_path.display()))?;
        Ok(vec![json, md, svg_path])
    }

    /// The markdown page.
    pub fn markdown(&self, chart: &str) -> String {
        let m = &self.machine;
        let o = &self.options;
        let mut s = String::new();
        let _ = writeln!(s, "# halyard pilot benchmark — {}\n", m.started_utc);
        let _ = writeln!(
            s,
            "Machine: {} × {} CPUs, {} MiB RAM, kernel {}. Source: {}{}. {}.\n",
            m.cpus,
            m.cpu_model,
            m.mem_total_mib,
            m.kernel,
            m.git_commit.as_deref().unwrap_or("unknown commit"),
            if m.git_dirty == Some(true) {
                " (working tree had uncommitted changes)"
            } else {
                ""
            },
            m.rustc.as_deref().unwrap_or("rustc unknown")
        );
        let _ = writeln!(
            s,
            "Command: `{}` (took {:.0} s).\n",
            self.command, self.duration_s
        );
        let _ = writeln!(
            s,
            "Config: K = {} WorkloadEntries per service, 10% of services with a DestinationRule \
             (v1/v2) and a 90/10 VirtualService; pilot {} with 100 ms debounce; \
             phase timeout {} s; settled after {} ms without a response; burst = {} edits; \
             fleet on {} tokio thread(s). See bench/README.md for what each figure means.\n",
            o.endpoints,
            match &o.pilot_bin {
                Some(b) => format!("`{}` as a subprocess", b.display()),
                None => "in-process (RSS/CPU include the fleet)".to_string(),
            },
            o.timeout.as_secs(),
            o.quiet.as_millis(),
            o.burst,
            o.client_threads
        );
        s.push_str("## Time until every proxy has ACKed (ms: p50 / p99 / max over proxies)\n\n");
        s.push_str(
            "| N proxies | M services | first full sync | (a) endpoint change | \
             (b) VirtualService change | (c) burst | burst pushes/proxy |\n\
             |---:|---:|---|---|---|---|---:|\n",
        );
        for r in &self.results {
            // With a Sidecar per namespace a change concerns fewer proxies.
            let scoped = |p: &Phase| {
                let c = cell(p);
                if r.scoped && p.proxies > 0 && p.proxies < r.proxies {
                    format!("{c} ({} proxies concerned)", p.proxies)
                } else {
                    c
                }
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} |",
                r.proxies,
                services(r),
                cell(&r.first_sync),
                scoped(&r.endpoint_change),
                scoped(&r.virtual_service_change),
                scoped(&r.burst),
                if r.burst.proxies == 0 {
                    "–".to_string()
                } else {
                    format!("{:.1}", r.burst.pushes_per_proxy)
                }
            );
        }
        if self
            .results
            .iter()
            .any(|r| r.final_check.proxies > 0 || r.restart.proxies > 0)
        {
            s.push_str(
                "\n## Correctness under churn, stuck clients, pilot restart\n\n\
                 | N | M | final state ≠ fresh proxy's | VirtualService change with stuck clients (ms) | \
                 stuck dropped after | restart: kill → all resynced (ms) | resources re-sent per proxy | \
                 restarted pilot CPU s | restarted pilot peak RSS |\n\
                 |---:|---:|---|---|---|---|---:|---:|---:|\n",
            );
            for r in &self.results {
                let fc = &r.final_check;
                let check = if fc.proxies == 0 {
                    "not run".to_string()
                } else {
                    format!(
                        "{} of {} ({} fresh, {:.0} resources each){}",
                        fc.mismatched,
                        fc.proxies,
                        fc.fresh,
                        fc.resources_per_proxy,
                        fc.example
                            .as_ref()
                            .map_or(String::new(), |e| format!(": {e}"))
                    )
                };
                let stuck = if r.stuck.clients == 0 {
                    "not run".to_string()
                } else {
                    format!(
                        "{} ({} stuck)",
                        cell(&r.stuck.virtual_service_change),
                        r.stuck.clients
                    )
                };
                let dropped = match (r.stuck.clients, r.stuck.dropped_after_s) {
                    (0, _) => "–".to_string(),
                    (_, Some(t)) => format!("{t:.1} s"),
                    (_, None) => "**not dropped**".to_string(),
                };
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    r.proxies,
                    services(r),
                    check,
                    stuck,
                    dropped,
                    cell(&r.restart),
                    if r.restart.proxies == 0 {
                        "–".to_string()
                    } else {
                        format!("{:.1}", r.restart_resources_per_proxy)
                    },
                    if r.restart.proxies == 0 {
                        "–".to_string()
                    } else {
                        format!("{:.2}", r.pilot.cpu_s_restart)
                    },
                    if r.restart.proxies == 0 {
                        "–".to_string()
                    } else {
                        format!("{:.1}", r.pilot.restart_peak_rss_mib)
                    },
                );
            }
        }
        s.push_str(
            "\n## Pilot resources (CPU seconds = utime+stime, all threads; RSS in MiB)\n\n\
             | N | M | RSS after load | RSS after sync | peak RSS (VmHWM) | CPU load | \
             CPU first sync | CPU (a) | CPU (b) | CPU (c) | CPU total | fleet CPU | fleet RSS | \
             wall s | host busy cores | other processes CPU |\n\
             |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for r in &self.results {
            let p = &r.pilot;
            let cpu = |phase: &Phase, v: f64| {
                if phase.proxies == 0 {
                    "–".to_string()
                } else {
                    format!("{v:.2}")
                }
            };
            let _ = writeln!(
                s,
                "| {} | {} | {:.1} | {:.1} | {:.1} | {:.2} | {:.2} | {} | {} | {} | {:.2} | {:.2} | {:.1} | {:.0} | {:.2} | {:.1} |",
                r.proxies,
                services(r),
                p.rss_after_load_mib,
                p.rss_after_sync_mib,
                p.peak_rss_mib,
                p.cpu_s_load,
                p.cpu_s_first_sync,
                cpu(&r.endpoint_change, p.cpu_s_endpoint_change),
                cpu(&r.virtual_service_change, p.cpu_s_virtual_service_change),
                cpu(&r.burst, p.cpu_s_burst),
                p.cpu_s_total,
                r.client.cpu_s,
                r.client.rss_mib,
                r.host.wall_s,
                r.host.busy_cores,
                r.host.other_cpu_s
            );
        }
        s.push_str(
            "\n## Config size per proxy (first sync, resource bodies in KiB)\n\n\
             | N | M | YAML on disk KiB | CDS | EDS | LDS | RDS |\n|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for r in &self.results {
            let b = r.first_sync_bytes_per_proxy.map(|b| b as f64 / 1024.0);
            let _ = writeln!(
                s,
                "| {} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} |",
                r.proxies,
                services(r),
                r.config_yaml_bytes as f64 / 1024.0,
                b[0],
                b[1],
                b[2],
                b[3]
            );
        }
        let errors: Vec<_> = self
            .results
            .iter()
            .filter_map(|r| r.error.as_ref().map(|e| (r, e)))
            .collect();
        if !errors.is_empty() {
            s.push_str("\n## Errors\n\n");
            for (r, e) in errors {
                let _ = writeln!(s, "- N={} M={}: {e}", r.proxies, r.services);
            }
        }
        let _ = writeln!(s, "\n![convergence p50/p99 per size]({chart})");
        if let Some(notes) = &self.notes {
            let _ = writeln!(s, "\n## Findings\n\n{}", notes.trim_end());
        }
        s
    }
}

/// The M column: the service count, marked when a Sidecar scoped each namespace.
fn services(r: &SizeResult) -> String {
    if r.scoped {
        format!("{} + Sidecar ./*", r.services)
    } else {
        r.services.to_string()
    }
}

/// `p50 / p99 / max`, or why not.
fn cell(p: &Phase) -> String {
    if p.proxies == 0 {
        return "not measured".to_string();
    }
    let ms = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.0}"));
    let mut c = format!("{} / {} / {}", ms(p.p50_ms), ms(p.p99_ms), ms(p.max_ms));
    if p.unexpected_pushes > 0 {
        let _ = write!(
            c,
            " (+{} pushes to proxies it does not concern)",
            p.unexpected_pushes
        );
    }
    if p.timed_out {
        let _ = write!(c, " **timed out** ({}/{})", p.converged, p.proxies);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_has_every_size() {
        let r = SizeResult {
            proxies: 2000,
            services: 1000,
            ..Default::default()
        };
        let opts = Options {
            proxies: vec![2000],
            services: vec![1000],
            endpoints: 3,
            pilot_bin: None,
            timeout: std::time::Duration::from_secs(120),
            quiet: std::time::Duration::from_secs(1),
            burst: 100,
            client_threads: 1,
            scopes: vec![false],
            stuck: 0,
            send_timeout: std::time::Duration::from_secs(10),
            restart: false,
        };
        let rep = PilotReport::new(&Machine::probe(), &opts, "x", Instant::now(), vec![r]);
        let md = rep.markdown("c.svg");
        assert!(md.contains("| 2000 | 1000 |"));
        assert!(md.contains("![convergence p50/p99 per size](c.svg)"));
    }
}

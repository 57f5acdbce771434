//! What the benchmark reads around each load phase: a process's CPU ticks
//! (utime+stime of all its threads) and memory from /proc, the host's busy
//! and total CPU time, and a sidecar's request counters from its admin
//! `/stats` (Envoy's names; `halyard proxy` serves the same ones).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::conn;

/// One reading of a process.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct ProcSample {
    /// utime + stime in clock ticks.
    pub ticks: u64,
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

/// Clock ticks per second (`getconf CLK_TCK`).
pub fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// Read /proc/PID/stat and /proc/PID/status; None if the process is gone.
pub fn proc_sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) in ")".
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime 15.
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    Some(ProcSample {
        ticks,
        rss_kib: kib("VmRSS:"),
        hwm_kib: kib("VmHWM:"),
    })
}

/// The executable behind a pid (which proxy is really running).
pub fn exe(pid: u32) -> String {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// (busy, total) jiffies of the whole host from /proc/stat, as `top` counts:
/// busy = user+nice+system+irq+softirq+steal, total = busy+idle+iowait.
pub fn host_cpu() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    let busy = at(0) + at(1) + at(2) + at(5) + at(6) + at(7);
    (busy, busy + at(3) + at(4))
}

/// Busy % of the host between two `host_cpu` readings.
pub fn busy_pct(a: (u64, u64), b: (u64, u64)) -> Option<f64> {
    let total = b.1.checked_sub(a.1)?;
    (total > 0).then(|| 100.0 * b.0.saturating_sub(a.0) as f64 / total as f64)
}

/// A sidecar's counters from its admin endpoint (127.0.0.1:15000 in its pod).
pub fn admin_stats(netns: &str) -> anyhow::Result<BTreeMap<String, u64>> {
    let admin: SocketAddr = ([127, 0, 0, 1], 15000).into();
    let text = conn::get_text(netns, admin, "/stats")?;
    Ok(parse_stats(&text))
}

/// `name: value` lines with integer values.
pub fn parse_stats(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(": ")?;
            Some((k.trim().to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// Requests the sidecar's HTTP connection managers counted on the traffic
/// listeners (`http.outbound_*` / `http.inbound_*`, not admin or readiness).
pub fn downstream_rq(stats: &BTreeMap<String, u64>) -> u64 {
    stats
        .iter()
        .filter(|(k, _)| {
            (k.starts_with("http.outbound_") || k.starts_with("http.inbound_"))
                && k.ends_with(".downstream_rq_total")
        })
        .map(|(_, v)| v)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process_and_host() {
        let s = proc_sample(std::process::id()).expect("own /proc");
        assert!(s.rss_kib > 0 && s.hwm_kib >= s.rss_kib, "{s:?}");
        let (busy, total) = host_cpu();
        assert!(total >= busy && total > 0);
    }

    #[test]
    fn counts_traffic_listener_requests_only() {
        let stats = parse_stats(
            "http.outbound_0.0.0.0_8080.downstream_rq_total: 7\n\
             http.inbound_0.0.0.0_8080.downstream_rq_total: 3\n\
             http.admin.downstream_rq_total: 9\n\
             http.agent.downstream_rq_total: 4\n\
             cluster.x.upstream_rq_total: 5\nhistogram: P0(nan,1)\n",
        );
        assert_eq!(downstream_rq(&stats), 10);
    }
}

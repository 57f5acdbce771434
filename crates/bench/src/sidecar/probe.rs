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
/// listeners (`http.outbound_*` / `http.inbound_*`, not admin or readiness),
/// plus connections its traffic tcp_proxies took (`tcp.outbound_*` /
/// `tcp.inbound_*`): the handshake-cost run's client sidecar is one, and
/// there every request is one connection.
pub fn downstream_rq(stats: &BTreeMap<String, u64>) -> u64 {
    let traffic = |k: &str, kind: &str| {
        k.starts_with(&format!("{kind}.outbound_")) || k.starts_with(&format!("{kind}.inbound_"))
    };
    stats
        .iter()
        .filter(|(k, _)| {
            (traffic(k, "http") && k.ends_with(".downstream_rq_total"))
                || (traffic(k, "tcp") && k.ends_with(".downstream_cx_total"))
        })
        .map(|(_, v)| v)
        .sum()
}

/// TLS handshakes the sidecar's listeners completed (`listener.*.ssl.handshake`,
/// the server end of the sidecar-to-sidecar hop).
pub fn listener_handshakes(stats: &BTreeMap<String, u64>) -> u64 {
    stats
        .iter()
        .filter(|(k, _)| k.starts_with("listener.") && k.ends_with(".ssl.handshake"))
        .map(|(_, v)| v)
        .sum()
}

/// Key exchanges counted, by group and where (`listener` = the server end,
/// `cluster` = the client end; Envoy counts both, halyard its listeners):
/// `ssl.curves.<group>` counters that are not zero, as `where group`.
pub fn curves(stats: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (k, v) in stats {
        if *v == 0 {
            continue;
        }
        if let Some((_, group)) = k.split_once(".ssl.curves.") {
            let end = if k.starts_with("listener.") {
                "listener"
            } else if k.starts_with("cluster.") {
                "cluster"
            } else {
                continue;
            };
            *out.entry(format!("{end} {group}")).or_default() += v;
        }
    }
    out
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
        let tcp = parse_stats(
            "tcp.outbound_tcp_8080.downstream_cx_total: 4\ntcp.sds.downstream_cx_total: 2\n",
        );
        assert_eq!(downstream_rq(&tcp), 4);
    }

    #[test]
    fn reads_key_exchanges_of_both_proxies() {
        // Envoy counts both ends; halyard its listeners (same names there).
        let stats = parse_stats(
            "listener.0.0.0.0_15006.ssl.curves.X25519MLKEM768: 3\n\
             listener.0.0.0.0_15006.ssl.curves.X25519: 0\n\
             listener.0.0.0.0_15006.ssl.handshake: 3\n\
             cluster.outbound|8080||server.bench.svc.cluster.local.ssl.curves.X25519: 2\n\
             listener.admin.downstream_cx_total: 1\n",
        );
        let c = curves(&stats);
        assert_eq!(c.get("listener X25519MLKEM768"), Some(&3));
        assert_eq!(c.get("cluster X25519"), Some(&2));
        assert_eq!(c.len(), 2);
        assert_eq!(listener_handshakes(&stats), 3);
    }
}

//! Where a benchmark ran: CPU, memory, kernel, the source revision, and when
//! (UTC, without a date crate).

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

/// The machine and software a run measured.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cpus: usize,
    pub mem_total_mib: u64,
    pub kernel: String,
    pub git_commit: Option<String>,
    /// Uncommitted changes in the working tree when the run started.
    pub git_dirty: Option<bool>,
    pub rustc: Option<String>,
    pub started_utc: String,
}

impl Machine {
    pub fn probe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default();
        let cpus = cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count();
        let mem_total_mib = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kib| kib / 1024);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string();
        Machine {
            cpu_model,
            cpus,
            mem_total_mib,
            kernel,
            git_commit: output("git", &["rev-parse", "HEAD"]),
            git_dirty: output("git", &["status", "--porcelain", "--untracked-files=no"])
                .map(|s| !s.is_empty()),
            rustc: output("rustc", &["--version"]),
            started_utc: utc_now(),
        }
    }
}

fn output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Now as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format_utc(secs)
}

fn format_utc(secs: u64) -> String {
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let t = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        t / 3600,
        t / 60 % 60,
        t % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// `YYYYMMDD` of a `utc_now()` string, for file names.
pub fn compact_date(utc: &str) -> String {
    utc.get(..10).unwrap_or("").replace('-', "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        // 2026-11-26 17:22:22 UTC
        assert_eq!(format_utc(1_795_713_742), "2026-11-26T17:22:22Z");
        assert_eq!(format_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(compact_date("2026-11-26T17:22:22Z"), "20261126");
    }

    #[test]
    fn probes_this_machine() {
        let m = Machine::probe();
        assert!(m.cpus >= 1 && m.mem_total_mib > 0, "{m:?}");
    }
}

//! Waiting on the fleet and turning its timestamps into figures: first sync,
//! and convergence after a change (per proxy: the write until the last
//! response of the affected types, once the fleet has gone quiet).

use std::time::{Duration, Instant};

use super::fleet::{FleetStats, ProxyStats};

/// One measured phase, over proxies.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Phase {
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// Proxies that got there / proxies in the fleet.
    pub converged: usize,
    pub proxies: usize,
    /// The deadline passed before every proxy got there.
    pub timed_out: bool,
    /// Mean responses of the affected types per proxy (pushes).
    pub pushes_per_proxy: f64,
    /// Pushes to proxies the change does not concern (should be 0).
    #[serde(default)]
    pub unexpected_pushes: u64,
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn phase(mut ms: Vec<f64>, proxies: usize, timed_out: bool, pushes: f64) -> Phase {
    ms.sort_by(f64::total_cmp);
    Phase {
        p50_ms: percentile(&ms, 50.0),
        p99_ms: percentile(&ms, 99.0),
        max_ms: ms.last().copied(),
        converged: ms.len(),
        proxies,
        timed_out,
        pushes_per_proxy: pushes,
        unexpected_pushes: 0,
    }
}

const POLL: Duration = Duration::from_millis(10);

/// Wait until every proxy has its first full config (or a stream failed, or
/// the deadline). Times are from the fleet's epoch (stream start).
pub async fn first_sync(fleet: &FleetStats, timeout: Duration) -> Phase {
    let n = fleet.proxies.len();
    let timed_out = !until_all(fleet, timeout, |p| {
        p.synced.load(Relaxed) != 0 || p.failed.load(Relaxed) != 0
    })
    .await;
    let ms = fleet
        .proxies
        .iter()
        .map(|p| p.synced.load(Relaxed))
        .filter(|t| *t != 0)
        .map(ns_to_ms)
        .collect::<Vec<_>>();
    let timed_out = timed_out || ms.len() < n;
    phase(ms, n, timed_out, 1.0)
}

/// Poll until `done` holds for every proxy; false if `timeout` passed first.
async fn until_all(
    fleet: &FleetStats,
    timeout: Duration,
    done: impl Fn(&ProxyStats) -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if fleet.proxies.iter().all(&done) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// After the pilot went away at `since` (fleet ns): wait until every proxy has
/// reconnected and is in sync again; per proxy, the time from `since`.
pub async fn resync(fleet: &FleetStats, since: u64, timeout: Duration) -> Phase {
    let n = fleet.proxies.len();
    let done = |p: &ProxyStats| p.resynced.load(Relaxed) > since;
    let timed_out = !until_all(fleet, timeout, done).await;
    let ms = fleet
        .proxies
        .iter()
        .filter(|p| done(p))
        .map(|p| ns_to_ms(p.resynced.load(Relaxed) - since))
        .collect::<Vec<_>>();
    let timed_out = timed_out || ms.len() < n;
    phase(ms, n, timed_out, 1.0)
}

/// Latest response arrival of any type, over the fleet.
fn latest(fleet: &FleetStats) -> u64 {
    fleet
        .proxies
        .iter()
        .flat_map(|p| p.last.iter().map(|t| t.load(Relaxed)))
        .max()
        .unwrap_or(0)
}

/// Wait until nothing has arrived for `quiet` (bounded by `timeout`).
pub async fn settle(fleet: &FleetStats, quiet: Duration, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let since = fleet.now().saturating_sub(latest(fleet));
        if since >= quiet.as_nanos() as u64 {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Counts of responses per proxy for the given types (a baseline before a change).
pub fn counts(fleet: &FleetStats, types: &[usize]) -> Vec<u32> {
    fleet
        .proxies
        .iter()
        .map(|p| types.iter().map(|t| p.responses[*t].load(Relaxed)).sum())
        .collect()
}

/// After a change written at `written` (fleet ns): wait until every live
/// proxy that `expected` names has a new response of `types` and the fleet
/// is quiet, then report per such proxy the time from the write to its last
/// such response. Proxies not expected to get the change (a Sidecar keeps
/// the service out of their config) are not waited for; any push they get
/// anyway is counted in `unexpected_pushes`.
pub async fn convergence(
    fleet: &FleetStats,
    types: &[usize],
    before: &[u32],
    written: u64,
    quiet: Duration,
    timeout: Duration,
    expected: impl Fn(usize) -> bool,
) -> Phase {
    let deadline = Instant::now() + timeout;
    let n = (0..fleet.proxies.len()).filter(|i| expected(*i)).count();
    let timed_out = loop {
        let now_counts = counts(fleet, types);
        let all_new = fleet
            .proxies
            .iter()
            .zip(now_counts.iter().zip(before))
            .enumerate()
            .all(|(i, (p, (now, was)))| !expected(i) || now > was || p.failed.load(Relaxed) != 0);
        let quiet_now = fleet.now().saturating_sub(latest(fleet)) >= quiet.as_nanos() as u64;
        if all_new && quiet_now {
            break false;
        }
        if Instant::now() > deadline {
            break true;
        }
        tokio::time::sleep(POLL).await;
    };
    let now_counts = counts(fleet, types);
    let mut ms = Vec::with_capacity(n);
    let mut pushes = 0u64;
    let mut unexpected = 0u64;
    for (i, p) in fleet.proxies.iter().enumerate() {
        if now_counts[i] <= before[i] {
            continue;
        }
        let got = u64::from(now_counts[i] - before[i]);
        if !expected(i) {
            unexpected += got;
            continue;
        }
        pushes += got;
        let last = types
            .iter()
            .map(|t| p.last[*t].load(Relaxed))
            .max()
            .unwrap_or(0);
        if last > written {
            ms.push(ns_to_ms(last - written));
        }
    }
    let timed_out = timed_out || ms.len() < n;
    let mut phase = phase(ms, n, timed_out, pushes as f64 / n.max(1) as f64);
    phase.unexpected_pushes = unexpected;
    phase
}

use std::sync::atomic::Ordering::Relaxed;

fn ns_to_ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn phase_counts_converged() {
        let p = phase(vec![3.0, 1.0, 2.0], 4, false, 1.5);
        assert_eq!(p.p50_ms, Some(2.0));
        assert_eq!(p.max_ms, Some(3.0));
        assert_eq!((p.converged, p.proxies), (3, 4));
    }
}

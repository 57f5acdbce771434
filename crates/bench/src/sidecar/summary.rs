//! Medians across rounds per (case, mode), latency added over `direct`, and
//! the ratios halyard/envoy and halyard/direct on every figure.

use std::collections::BTreeMap;

use super::run::RunRecord;
use super::{Case, Mode, Transport};

/// The latency percentiles the report shows, with their JSON names.
pub const PCTS: [&str; 4] = ["p50", "p90", "p99", "p99.9"];

/// One mode's medians in one case.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ModeSummary {
    pub rounds: usize,
    /// Open-loop latency percentiles (ms), in `PCTS` order.
    pub latency_ms: BTreeMap<String, f64>,
    /// Minus direct's median (ms); absent for direct itself.
    pub added_ms: BTreeMap<String, f64>,
    pub achieved_rps: f64,
    pub errors: u64,
    pub sent_open: u64,
    pub max_rps: f64,
    /// CPU-s per 1,000 requests, client + server sidecar, open loop.
    pub pair_cpu_s_per_1k_open: Option<f64>,
    pub client_cpu_s_per_1k_open: Option<f64>,
    pub server_cpu_s_per_1k_open: Option<f64>,
    pub pair_cpu_s_per_1k_closed: Option<f64>,
    /// Closed-loop requests per CPU-second of the pair.
    pub pair_rps_per_core_closed: Option<f64>,
    pub pair_rss_idle_mib: Option<f64>,
    pub pair_hwm_mib: Option<f64>,
    pub client_rss_idle_mib: Option<f64>,
    pub server_rss_idle_mib: Option<f64>,
    pub host_busy_pct_open: Option<f64>,
    pub other_busy_pct_open: Option<f64>,
    pub app_cpu_s_per_1k_open: Option<f64>,
    pub checks_failed: usize,
    /// Key exchanges counted over its runs, `side where group` -> count
    /// (e.g. `server listener X25519MLKEM768`): what the pair negotiated.
    pub curves: BTreeMap<String, u64>,
    /// TLS handshakes the server sidecar completed per request, open loop
    /// (1.0 with a new connection per request; near 0 when pooled).
    pub server_handshakes_per_request_open: Option<f64>,
}

/// A case's summary: per mode, and the ratios.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CaseSummary {
    pub case: Case,
    pub modes: BTreeMap<String, ModeSummary>,
    /// figure -> halyard / envoy.
    pub halyard_over_envoy: BTreeMap<String, f64>,
    /// figure -> halyard / direct (latency and max rps).
    pub halyard_over_direct: BTreeMap<String, f64>,
    /// figure -> envoy / direct.
    #[serde(default)]
    pub envoy_over_direct: BTreeMap<String, f64>,
    /// mTLS cases: proxy -> figure -> this case / the same case over the
    /// `static` (plaintext) pair in the same run: what mTLS costs each proxy.
    #[serde(default)]
    pub mtls_over_plaintext: BTreeMap<String, BTreeMap<String, f64>>,
}

pub fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn pct(r: &RunRecord, p: &str) -> f64 {
    let l = &r.open.latency_ms;
    match p {
        "p50" => l.p50,
        "p90" => l.p90,
        "p99" => l.p99,
        _ => l.p999,
    }
}

fn sum_sides(r: &RunRecord, f: impl Fn(&super::run::SidecarRecord) -> f64) -> f64 {
    if r.sidecars.is_empty() {
        f64::NAN
    } else {
        r.sidecars.iter().map(f).sum()
    }
}

fn side(r: &RunRecord, name: &str, f: impl Fn(&super::run::SidecarRecord) -> f64) -> f64 {
    r.sidecars
        .iter()
        .find(|s| s.side == name)
        .map_or(f64::NAN, f)
}

fn summarize_mode(rs: &[&RunRecord]) -> ModeSummary {
    let m = |f: &dyn Fn(&RunRecord) -> f64| median(rs.iter().map(|r| f(r)).collect());
    let mib = 1.0 / 1024.0;
    ModeSummary {
        rounds: rs.len(),
        latency_ms: PCTS
            .iter()
            .filter_map(|p| Some((p.to_string(), m(&|r| pct(r, p))?)))
            .collect(),
        added_ms: BTreeMap::new(),
        achieved_rps: m(&|r| r.open.rps).unwrap_or(0.0),
        errors: rs.iter().map(|r| r.open.errors + r.closed.errors).sum(),
        sent_open: rs.iter().map(|r| r.open.sent).sum(),
        max_rps: m(&|r| r.closed.rps).unwrap_or(0.0),
        pair_cpu_s_per_1k_open: m(&|r| sum_sides(r, |s| s.cpu_s_per_1k_open)),
        client_cpu_s_per_1k_open: m(&|r| side(r, "client", |s| s.cpu_s_per_1k_open)),
        server_cpu_s_per_1k_open: m(&|r| side(r, "server", |s| s.cpu_s_per_1k_open)),
        pair_cpu_s_per_1k_closed: m(&|r| sum_sides(r, |s| s.cpu_s_per_1k_closed)),
        pair_rps_per_core_closed: m(&|r| r.closed.ok as f64 / sum_sides(r, |s| s.cpu_s_closed)),
        pair_rss_idle_mib: m(&|r| sum_sides(r, |s| s.rss_idle_kib as f64 * mib)),
        pair_hwm_mib: m(&|r| sum_sides(r, |s| s.hwm_after_closed_kib as f64 * mib)),
        client_rss_idle_mib: m(&|r| side(r, "client", |s| s.rss_idle_kib as f64 * mib)),
        server_rss_idle_mib: m(&|r| side(r, "server", |s| s.rss_idle_kib as f64 * mib)),
        host_busy_pct_open: m(&|r| r.host_busy_pct_open.unwrap_or(f64::NAN)),
        other_busy_pct_open: m(&|r| r.other_busy_pct_open.unwrap_or(f64::NAN)),
        app_cpu_s_per_1k_open: m(&|r| r.app_cpu_s_per_1k_open.unwrap_or(f64::NAN)),
        checks_failed: rs.iter().map(|r| r.checks.len()).sum(),
        curves: rs
            .iter()
            .flat_map(|r| &r.sidecars)
            .flat_map(|s| {
                s.curves
                    .iter()
                    .map(move |(k, v)| (format!("{} {k}", s.side), *v))
            })
            .fold(BTreeMap::new(), |mut m, (k, v)| {
                *m.entry(k).or_default() += v;
                m
            }),
        server_handshakes_per_request_open: m(&|r| {
            let hs = side(r, "server", |s| s.tls_handshakes_open as f64);
            if hs > 0.0 && r.open.sent > 0 {
                hs / r.open.sent as f64
            } else {
                f64::NAN
            }
        }),
    }
}

/// The figures compared between modes, by name.
fn figures(s: &ModeSummary) -> Vec<(String, Option<f64>)> {
    let mut v: Vec<(String, Option<f64>)> = Vec::new();
    for p in PCTS {
        v.push((format!("latency_{p}"), s.latency_ms.get(p).copied()));
        v.push((format!("added_{p}"), s.added_ms.get(p).copied()));
    }
    v.push(("max_rps".into(), Some(s.max_rps)));
    v.push(("pair_cpu_s_per_1k_open".into(), s.pair_cpu_s_per_1k_open));
    v.push((
        "pair_cpu_s_per_1k_closed".into(),
        s.pair_cpu_s_per_1k_closed,
    ));
    v.push((
        "pair_rps_per_core_closed".into(),
        s.pair_rps_per_core_closed,
    ));
    v.push(("pair_rss_idle_mib".into(), s.pair_rss_idle_mib));
    v.push(("pair_hwm_mib".into(), s.pair_hwm_mib));
    v
}

fn ratios(a: &ModeSummary, b: &ModeSummary) -> BTreeMap<String, f64> {
    figures(a)
        .into_iter()
        .zip(figures(b))
        .filter_map(|((k, x), (_, y))| {
            let (x, y) = (x?, y?);
            (y.abs() > 1e-12 && x.is_finite() && y.is_finite()).then(|| (k, x / y))
        })
        .collect()
}

/// Summaries of every case, in the order the cases ran.
pub fn summarize(cases: &[Case], runs: &[RunRecord]) -> Vec<CaseSummary> {
    let mut out: Vec<CaseSummary> = cases
        .iter()
        .map(|case| {
            let mut modes = BTreeMap::new();
            for mode in [Mode::Direct, Mode::Halyard, Mode::Envoy] {
                // Direct runs once per round for all transports of a case.
                let rs: Vec<&RunRecord> = runs
                    .iter()
                    .filter(|r| {
                        r.mode == mode
                            && if mode == Mode::Direct {
                                r.case.direct_key() == case.direct_key()
                            } else {
                                r.case == *case
                            }
                    })
                    .collect();
                if !rs.is_empty() {
                    modes.insert(mode.name().to_string(), summarize_mode(&rs));
                }
            }
            if let Some(direct) = modes.get("direct").map(|d| d.latency_ms.clone()) {
                for (name, s) in modes.iter_mut() {
                    if name != "direct" {
                        s.added_ms = s
                            .latency_ms
                            .iter()
                            .filter_map(|(p, v)| Some((p.clone(), v - direct.get(p)?)))
                            .collect();
                    }
                }
            }
            let get = |m: &str| modes.get(m);
            let halyard_over_envoy = match (get("halyard"), get("envoy")) {
                (Some(h), Some(e)) => ratios(h, e),
                _ => BTreeMap::new(),
            };
            let halyard_over_direct = match (get("halyard"), get("direct")) {
                (Some(h), Some(d)) => ratios(h, d),
                _ => BTreeMap::new(),
            };
            let envoy_over_direct = match (get("envoy"), get("direct")) {
                (Some(e), Some(d)) => ratios(e, d),
                _ => BTreeMap::new(),
            };
            CaseSummary {
                case: *case,
                modes,
                halyard_over_envoy,
                halyard_over_direct,
                envoy_over_direct,
                mtls_over_plaintext: BTreeMap::new(),
            }
        })
        .collect();
    // mTLS against the plaintext static pair of the same shape, per proxy.
    let plain: Vec<(Case, BTreeMap<String, ModeSummary>)> = out
        .iter()
        .filter(|c| c.case.transport == Transport::Static)
        .map(|c| (c.case, c.modes.clone()))
        .collect();
    for c in out
        .iter_mut()
        .filter(|c| c.case.transport == Transport::Mtls)
    {
        let want = Case {
            transport: Transport::Static,
            ..c.case
        };
        let Some((_, base)) = plain.iter().find(|(k, _)| *k == want) else {
            continue;
        };
        for proxy in ["halyard", "envoy"] {
            if let (Some(m), Some(b)) = (c.modes.get(proxy), base.get(proxy)) {
                c.mtls_over_plaintext
                    .insert(proxy.to_string(), ratios(m, b));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![1.0, 2.0]), Some(1.5));
        assert_eq!(median(vec![f64::NAN]), None);
    }
}

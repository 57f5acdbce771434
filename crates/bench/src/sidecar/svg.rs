//! A hand-written SVG chart per case: open-loop latency percentiles per mode
//! (grouped bars, log scale), then the sidecar pair's CPU per 1k requests and
//! idle/peak RSS per proxy. No plotting dependency.

use std::fmt::Write as _;

use super::summary::{CaseSummary, PCTS};

const W: f64 = 900.0;
const ROW_H: f64 = 230.0;
const COLORS: [(&str, &str); 3] = [
    ("direct", "#718096"),
    ("halyard", "#2b6cb0"),
    ("envoy", "#dd6b20"),
];

fn color(mode: &str) -> &'static str {
    COLORS
        .iter()
        .find(|(m, _)| *m == mode)
        .map_or("#000", |(_, c)| c)
}

/// Bars of `groups` (label, [(mode, value)]) in a box at (x, y, w, h).
fn bars(
    s: &mut String,
    title: &str,
    groups: &[(String, Vec<(String, f64)>)],
    (x, y, w, h): (f64, f64, f64, f64),
    log: bool,
) {
    let max = groups
        .iter()
        .flat_map(|(_, v)| v.iter().map(|(_, x)| *x))
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    let _ = writeln!(
        s,
        "<text x=\"{x}\" y=\"{}\" font-weight=\"bold\">{title}</text>",
        y - 6.0
    );
    let _ = writeln!(
        s,
        "<line x1=\"{x}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#333\"/>",
        y + h,
        x + w,
        y + h
    );
    if max <= 0.0 {
        return;
    }
    let (lo, hi) = if log {
        let lo = groups
            .iter()
            .flat_map(|(_, v)| v.iter().map(|(_, x)| *x))
            .filter(|v| *v > 0.0)
            .fold(f64::MAX, f64::min);
        (
            lo.log10().floor(),
            max.log10().ceil().max(lo.log10().floor() + 1.0),
        )
    } else {
        (0.0, max * 1.1)
    };
    let scale = |v: f64| {
        let f = if log {
            (v.max(1e-9).log10() - lo) / (hi - lo)
        } else {
            v / hi
        };
        h * f.clamp(0.0, 1.0)
    };
    if log {
        let mut e = lo;
        while e <= hi {
            let yy = y + h - scale(10f64.powf(e));
            let _ = writeln!(
                s,
                "<line x1=\"{x}\" y1=\"{yy:.1}\" x2=\"{}\" y2=\"{yy:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" font-size=\"9\">{}</text>",
                x + w,
                x - 3.0,
                yy + 3.0,
                10f64.powf(e)
            );
            e += 1.0;
        }
    }
    let gw = w / groups.len().max(1) as f64;
    for (gi, (label, vals)) in groups.iter().enumerate() {
        let bw = (gw - 12.0) / vals.len().max(1) as f64;
        for (i, (mode, v)) in vals.iter().enumerate() {
            if !v.is_finite() {
                continue;
            }
            let bh = scale(*v);
            let bx = x + gi as f64 * gw + 6.0 + i as f64 * bw;
            let _ = writeln!(
                s,
                "<rect x=\"{bx:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"{}\"><title>{mode} {label}: {v:.4}</title></rect>\
                 <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"8\" text-anchor=\"middle\">{}</text>",
                y + h - bh,
                (bw - 2.0).max(1.0),
                color(mode),
                bx + bw / 2.0,
                y + h - bh - 2.0,
                short(*v)
            );
        }
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{label}</text>",
            x + gi as f64 * gw + gw / 2.0,
            y + h + 14.0
        );
    }
}

fn short(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The whole chart: one row per case.
pub fn chart(cases: &[CaseSummary]) -> String {
    let h = 50.0 + cases.len() as f64 * ROW_H;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"20\" y=\"20\" font-size=\"14\" font-weight=\"bold\">halyard-bench sidecar: direct vs halyard vs envoy</text>\n"
    );
    for (i, (m, c)) in COLORS.iter().enumerate() {
        let x = W - 260.0 + i as f64 * 80.0;
        let _ = writeln!(
            s,
            "<rect x=\"{x}\" y=\"10\" width=\"10\" height=\"10\" fill=\"{c}\"/><text x=\"{}\" y=\"19\">{m}</text>",
            x + 14.0
        );
    }
    for (ci, c) in cases.iter().enumerate() {
        let top = 60.0 + ci as f64 * ROW_H;
        let lat: Vec<(String, Vec<(String, f64)>)> = PCTS
            .iter()
            .map(|p| {
                let v = c
                    .modes
                    .iter()
                    .map(|(m, s)| (m.clone(), s.latency_ms.get(*p).copied().unwrap_or(f64::NAN)))
                    .collect();
                (p.to_string(), v)
            })
            .collect();
        let title = format!("{}: latency ms (log)", c.case.label());
        bars(&mut s, &title, &lat, (50.0, top + 10.0, 380.0, 160.0), true);
        let proxies =
            |f: &dyn Fn(&super::summary::ModeSummary) -> Option<f64>| -> Vec<(String, f64)> {
                c.modes
                    .iter()
                    .filter(|(m, _)| *m != "direct")
                    .map(|(m, s)| (m.clone(), f(s).unwrap_or(f64::NAN)))
                    .collect()
            };
        let cpu = vec![(
            "pair @rate".to_string(),
            proxies(&|s| s.pair_cpu_s_per_1k_open),
        )];
        bars(
            &mut s,
            "CPU-s / 1k req",
            &cpu,
            (470.0, top + 10.0, 130.0, 160.0),
            false,
        );
        let rss = vec![
            ("idle".to_string(), proxies(&|s| s.pair_rss_idle_mib)),
            ("peak".to_string(), proxies(&|s| s.pair_hwm_mib)),
        ];
        bars(
            &mut s,
            "pair RSS MiB",
            &rss,
            (640.0, top + 10.0, 230.0, 160.0),
            false,
        );
    }
    s.push_str("</svg>\n");
    s
}

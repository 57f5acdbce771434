//! A hand-written SVG chart: one panel per phase (first sync, endpoint change,
//! VirtualService change, burst), a pair of bars (p50, p99) per size, on a
//! log scale so 100 ms and 60 s fit on one axis. No plotting dependency.

use std::fmt::Write as _;

use crate::pilot_bench::SizeResult;
use crate::pilot_bench::phases::Phase;

const WIDTH: f64 = 860.0;
const PANEL_H: f64 = 190.0;
const LEFT: f64 = 70.0;
const TOP: f64 = 40.0;
const P50: &str = "#2b6cb0";
const P99: &str = "#90cdf4";

/// Picks one phase out of a size's result.
type PhaseOf = fn(&SizeResult) -> &Phase;

/// Convergence p50/p99 per size, as an SVG document.
pub fn convergence_chart(results: &[SizeResult]) -> String {
    let panels: [(&str, PhaseOf); 4] = [
        ("first full sync (from stream open)", |r| &r.first_sync),
        ("(a) one endpoint change", |r| &r.endpoint_change),
        ("(b) one VirtualService change", |r| {
            &r.virtual_service_change
        }),
        ("(c) burst of changes", |r| &r.burst),
    ];
    let values = results
        .iter()
        .flat_map(|r| panels.iter().map(move |(_, f)| f(r)))
        .flat_map(|p| [p.p50_ms, p.p99_ms])
        .flatten();
    let (lo, hi) = values.fold((f64::MAX, 1.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let lo_exp = lo.max(1.0).log10().floor() as i32;
    let hi_exp = (hi.log10().ceil() as i32).max(lo_exp + 1);
    let height = TOP + panels.len() as f64 * (PANEL_H + 40.0) + 20.0;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{LEFT}\" y=\"20\" font-size=\"14\" font-weight=\"bold\">halyard pilot: \
         time until proxies ACK (ms, log scale; N proxies × M services)</text>\n\
         <rect x=\"{}\" y=\"10\" width=\"10\" height=\"10\" fill=\"{P50}\"/>\
         <text x=\"{}\" y=\"19\">p50</text>\
         <rect x=\"{}\" y=\"10\" width=\"10\" height=\"10\" fill=\"{P99}\"/>\
         <text x=\"{}\" y=\"19\">p99</text>\n",
        WIDTH - 110.0,
        WIDTH - 96.0,
        WIDTH - 60.0,
        WIDTH - 46.0
    );
    let plot_w = WIDTH - LEFT - 20.0;
    let slot = plot_w / results.len().max(1) as f64;
    let y_of = |top: f64, v: f64| {
        let f = (v.max(1.0).log10() - f64::from(lo_exp)) / f64::from(hi_exp - lo_exp);
        top + PANEL_H * (1.0 - f.clamp(0.0, 1.0))
    };
    for (pi, (title, get)) in panels.iter().enumerate() {
        let top = TOP + pi as f64 * (PANEL_H + 40.0) + 16.0;
        let _ = writeln!(
            s,
            "<text x=\"{LEFT}\" y=\"{}\" font-weight=\"bold\">{title}</text>",
            top - 4.0
        );
        for e in lo_exp..=hi_exp {
            let y = y_of(top, 10f64.powi(e));
            let _ = writeln!(
                s,
                "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
                 <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                LEFT + plot_w,
                LEFT - 6.0,
                y + 4.0,
                label(10f64.powi(e))
            );
        }
        let base = top + PANEL_H;
        for (ri, r) in results.iter().enumerate() {
            let x = LEFT + ri as f64 * slot;
            let p = get(r);
            let bar_w = (slot * 0.3).min(40.0);
            let mid = x + slot / 2.0;
            for (k, (v, color)) in [(p.p50_ms, P50), (p.p99_ms, P99)].into_iter().enumerate() {
                let bx = mid - bar_w + k as f64 * bar_w;
                if let Some(v) = v {
                    let y = y_of(top, v);
                    let _ = writeln!(
                        s,
                        "<rect x=\"{bx:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" \
                         fill=\"{color}\"><title>{v:.1} ms</title></rect>\
                         <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"9\">{}</text>",
                        bar_w - 2.0,
                        (base - y).max(0.5),
                        bx + bar_w / 2.0 - 1.0,
                        y - 3.0,
                        label(v)
                    );
                }
            }
            if p.proxies == 0 {
                let _ = writeln!(
                    s,
                    "<text x=\"{mid:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#718096\">\
                     not measured</text>",
                    top + 14.0
                );
            } else if p.timed_out {
                let _ = writeln!(
                    s,
                    "<text x=\"{mid:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#c53030\">\
                     timed out ({}/{})</text>",
                    top + 14.0,
                    p.converged,
                    p.proxies
                );
            }
            let _ = writeln!(
                s,
                "<text x=\"{mid:.1}\" y=\"{:.1}\" text-anchor=\"middle\">N={} M={}{}</text>",
                base + 14.0,
                r.proxies,
                r.services,
                if r.scoped { " Sidecar" } else { "" }
            );
        }
        let _ = writeln!(
            s,
            "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{base}\" y2=\"{base}\" stroke=\"#333\"/>",
            LEFT + plot_w
        );
    }
    s.push_str("</svg>\n");
    s
}

fn label(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.1}s", ms / 1000.0)
    } else {
        format!("{ms:.0}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_bars_and_timeouts() {
        let mut a = SizeResult {
            proxies: 100,
            services: 100,
            ..Default::default()
        };
        a.endpoint_change.p50_ms = Some(120.0);
        a.endpoint_change.p99_ms = Some(180.0);
        let mut b = a.clone();
        b.proxies = 2000;
        b.burst.timed_out = true;
        b.burst.proxies = 2000;
        b.burst.converged = 10;
        let svg = convergence_chart(&[a, b]);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("120ms") && svg.contains("timed out (10/2000)"));
        assert!(svg.contains("not measured"));
        assert!(svg.contains("N=2000 M=100"));
    }
}

//! The visual report (`--report FILE.svg` or `FILE.html`): a hand-written SVG with the
//! end-to-end latency percentile plot (x: percentile on the usual log scale 0, 90, 99,
//! 99.9, …; y: ms), one curve per ramp step, and, for a ramp, the rate-vs-p99 curve
//! with the bound and the saturation point. The HTML form adds the text summary.

use anyhow::{Context, Result};
use std::fmt::Write as _;
use std::path::Path;

use crate::result::{RunResult, Summary};

/// One latency curve: label and (percentile, ms) points.
pub struct Curve {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

const W: f64 = 960.0;
const H: f64 = 420.0;
const ML: f64 = 70.0;
const MR: f64 = 250.0;
const MT: f64 = 40.0;
const MB: f64 = 50.0;
const COLORS: &[&str] = &[
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The smallest 1/2/5 × 10^k at or above `v`.
fn nice_max(v: f64) -> f64 {
    if !(v.is_finite() && v > 0.0) {
        return 1.0;
    }
    let e = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * e >= v * 0.999_999 {
            return m * e;
        }
    }
    10.0 * e
}

fn pct_x(p: f64) -> f64 {
    (100.0 / (100.0 - p).max(1e-9)).log10()
}

fn frame(s: &mut String, y0: f64, title: &str, xlabel: &str, ylabel: &str) {
    let _ = writeln!(
        s,
        r##"<g transform="translate(0,{y0})"><rect x="0" y="0" width="{W}" height="{H}" fill="#fff"/><text x="{}" y="24" font-size="16" text-anchor="middle" font-weight="bold">{}</text><text x="{}" y="{}" font-size="12" text-anchor="middle">{}</text><text transform="translate(18,{}) rotate(-90)" font-size="12" text-anchor="middle">{}</text></g>"##,
        (W - MR + ML) / 2.0,
        esc(title),
        (W - MR + ML) / 2.0,
        H - 10.0,
        esc(xlabel),
        (H - MB + MT) / 2.0,
        esc(ylabel)
    );
}

/// Latency percentile plot at vertical offset `y0`.
fn percentile_plot(s: &mut String, y0: f64, curves: &[Curve], title: &str) {
    frame(
        s,
        y0,
        title,
        "percentile",
        "latency from intended send time (ms)",
    );
    let pw = W - ML - MR;
    let ph = H - MT - MB;
    let xmax = curves
        .iter()
        .flat_map(|c| c.points.iter())
        .filter(|(p, _)| *p < 100.0)
        .map(|(p, _)| pct_x(*p))
        .fold(2.0f64, f64::max)
        .ceil()
        .min(6.0);
    let ymax = nice_max(
        curves
            .iter()
            .flat_map(|c| c.points.iter())
            .filter(|(p, _)| *p < 100.0)
            .map(|(_, v)| *v)
            .fold(0.0f64, f64::max),
    );
    let px = |x: f64| ML + x / xmax * pw;
    let py = |v: f64| y0 + MT + ph - (v / ymax).min(1.05) * ph;
    // Grid and ticks.
    let labels = ["0", "90", "99", "99.9", "99.99", "99.999", "99.9999"];
    for (i, l) in labels.iter().enumerate().take(xmax as usize + 1) {
        let x = px(i as f64);
        let _ = writeln!(
            s,
            r##"<line x1="{x}" y1="{}" x2="{x}" y2="{}" stroke="#ddd"/><text x="{x}" y="{}" font-size="11" text-anchor="middle">{l}%</text>"##,
            y0 + MT,
            y0 + MT + ph,
            y0 + MT + ph + 16.0
        );
    }
    for i in 0..=5 {
        let v = ymax * i as f64 / 5.0;
        let y = py(v);
        let _ = writeln!(
            s,
            r##"<line x1="{ML}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" font-size="11" text-anchor="end">{}</text>"##,
            ML + pw,
            ML - 6.0,
            y + 4.0,
            trim(v)
        );
    }
    let _ = writeln!(
        s,
        r##"<rect x="{ML}" y="{}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##,
        y0 + MT
    );
    for (i, c) in curves.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<String> = c
            .points
            .iter()
            .filter(|(p, _)| *p < 100.0)
            .map(|(p, v)| format!("{:.1},{:.1}", px(pct_x(*p)), py(*v)))
            .collect();
        if !pts.is_empty() {
            let _ = writeln!(
                s,
                r##"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"##,
                pts.join(" ")
            );
        }
        let max = c
            .points
            .iter()
            .filter(|(p, _)| *p >= 100.0)
            .map(|(_, v)| *v)
            .next_back();
        let ly = y0 + MT + 14.0 + 18.0 * i as f64;
        let _ = writeln!(
            s,
            r##"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}" font-size="11">{}{}</text>"##,
            W - MR + 10.0,
            ly - 4.0,
            W - MR + 28.0,
            ly - 4.0,
            W - MR + 32.0,
            ly,
            esc(&c.label),
            max.map_or(String::new(), |m| format!(" (max {})", trim(m)))
        );
    }
}

fn trim(v: f64) -> String {
    if (v == v.round() && v.abs() < 1e15) || v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// Rate-vs-p99 plot of a ramp at vertical offset `y0`.
fn ramp_plot(s: &mut String, y0: f64, r: &RunResult, bound_ms: f64) {
    let Some(steps) = &r.ramp else { return };
    frame(
        s,
        y0,
        "ramp: achieved deliveries/s vs p99",
        "deliveries per second (achieved)",
        "p99 latency (ms)",
    );
    let pw = W - ML - MR;
    let ph = H - MT - MB;
    let xmax = nice_max(
        steps
            .iter()
            .map(|s| s.deliveries_per_sec.max(s.expected_per_sec))
            .fold(1.0f64, f64::max),
    );
    let ymax = nice_max(
        steps
            .iter()
            .filter_map(|s| s.p99_ms)
            .fold(bound_ms * 1.2, f64::max),
    );
    let px = |x: f64| ML + x / xmax * pw;
    let py = |v: f64| y0 + MT + ph - (v / ymax).min(1.05) * ph;
    for i in 0..=5 {
        let x = px(xmax * i as f64 / 5.0);
        let y = py(ymax * i as f64 / 5.0);
        let _ = writeln!(
            s,
            r##"<line x1="{x}" y1="{}" x2="{x}" y2="{}" stroke="#ddd"/><text x="{x}" y="{}" font-size="11" text-anchor="middle">{}</text><line x1="{ML}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" font-size="11" text-anchor="end">{}</text>"##,
            y0 + MT,
            y0 + MT + ph,
            y0 + MT + ph + 16.0,
            trim(xmax * i as f64 / 5.0),
            ML + pw,
            ML - 6.0,
            y + 4.0,
            trim(ymax * i as f64 / 5.0)
        );
    }
    let _ = writeln!(
        s,
        r##"<rect x="{ML}" y="{}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##,
        y0 + MT
    );
    let by = py(bound_ms);
    let _ = writeln!(
        s,
        r##"<line x1="{ML}" y1="{by}" x2="{}" y2="{by}" stroke="#d62728" stroke-dasharray="6,4"/><text x="{}" y="{}" font-size="11" fill="#d62728">p99 bound {} ms</text>"##,
        ML + pw,
        W - MR + 6.0,
        by + 4.0,
        trim(bound_ms)
    );
    if let Some(sat) = r.saturation_deliveries_per_sec {
        let sx = px(sat);
        let _ = writeln!(
            s,
            r##"<line x1="{sx}" y1="{}" x2="{sx}" y2="{}" stroke="#2ca02c" stroke-dasharray="4,4"/><text x="{}" y="{}" font-size="11" fill="#2ca02c">saturation {}/s</text>"##,
            y0 + MT,
            y0 + MT + ph,
            W - MR + 6.0,
            y0 + MT + 40.0,
            trim(sat)
        );
    }
    let pts: Vec<String> = steps
        .iter()
        .filter_map(|st| {
            st.p99_ms
                .map(|p| format!("{:.1},{:.1}", px(st.deliveries_per_sec), py(p)))
        })
        .collect();
    let _ = writeln!(
        s,
        r##"<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="{}"/>"##,
        pts.join(" ")
    );
    for st in steps {
        if let Some(p) = st.p99_ms {
            let color = if st.ok { "#2ca02c" } else { "#d62728" };
            let _ = writeln!(
                s,
                r##"<circle cx="{:.1}" cy="{:.1}" r="4" fill="{color}"><title>step {}: {} events/s, {:.0} deliveries/s, p99 {} ms{}</title></circle>"##,
                px(st.deliveries_per_sec),
                py(p),
                st.step,
                trim(st.rate_events_per_sec),
                st.deliveries_per_sec,
                trim(p),
                if st.ok { "" } else { " (not ok)" }
            );
        }
    }
}

/// Render the SVG document.
pub fn svg(r: &RunResult, curves: &[Curve], bound_ms: f64) -> String {
    let panels = if r.ramp.is_some() { 2.0 } else { 1.0 };
    let mut s = String::new();
    let _ = writeln!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{}" viewBox="0 0 {W} {}" font-family="sans-serif">"##,
        H * panels,
        H * panels
    );
    let scenario = r.scenario.as_deref().unwrap_or_default();
    let established = r.connections.established.unwrap_or_default();
    let title = if r.ramp.is_some() {
        format!("{scenario} ramp: end-to-end latency per step ({established} connections)")
    } else {
        format!(
            "{scenario}: end-to-end latency ({established} connections, {:.0} deliveries/s)",
            r.deliveries.per_sec_achieved.unwrap_or_default()
        )
    };
    percentile_plot(&mut s, 0.0, curves, &title);
    if r.ramp.is_some() {
        ramp_plot(&mut s, H, r, bound_ms);
    }
    s.push_str("</svg>\n");
    s
}

/// Write `path` as SVG, or as HTML (summary + SVG) when it ends in `.html`.
pub fn write(path: &Path, r: &RunResult, curves: &[Curve], bound_ms: f64) -> Result<()> {
    let svg = svg(r, curves, bound_ms);
    let html = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("html") || e.eq_ignore_ascii_case("htm"));
    let body = if html {
        let scenario = esc(r.scenario.as_deref().unwrap_or_default());
        format!(
            "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>xcord-loadtest {}</title></head>\n<body style=\"font-family:sans-serif\">\n<h1>xcord-loadtest: {}</h1>\n<pre>{}</pre>\n{}</body></html>\n",
            scenario,
            scenario,
            esc(&r.summary()),
            svg
        )
    } else {
        svg
    };
    std::fs::write(path, body).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_max_rounds_up() {
        assert_eq!(nice_max(0.7), 1.0);
        assert_eq!(nice_max(1.2), 2.0);
        assert_eq!(nice_max(3.0), 5.0);
        assert_eq!(nice_max(50.0), 50.0);
        assert_eq!(nice_max(0.0), 1.0);
        assert!((pct_x(99.0) - 2.0).abs() < 1e-9);
    }
}

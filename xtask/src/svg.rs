//! Small self-contained SVG drawing for xtask's reports: the primitives
//! (escaping, word wrap, palette, document frame) that `cargo xtask
//! simulate` builds its per-backend panels from, and a generic chart
//! ([`chart`]) for `cargo xtask bench`: grouped bars, lines and cumulative
//! distributions, with axes, ticks and a legend.
//!
//! It writes text only: no fonts are measured (widths are estimated per
//! character), no JavaScript, no external tools. It is not a plotting
//! library; it draws the few shapes the reports need and nothing else.

use std::fmt::Write as _;

use eds_bench_report::report::{Chart, ChartKind, Series};

/// Series colours, colour-blind friendly (Tableau 10's first six).
pub(crate) const PALETTE: [&str; 6] = [
    "#4e79a7", "#59a14f", "#f28e2b", "#b07aa1", "#76b7b2", "#edc948",
];

/// Minimal XML escaping for text nodes and attribute values.
pub(crate) fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Greedy word wrap at `width` characters (at least one word per line).
pub(crate) fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    for word in text.split(' ') {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    lines.push(line);
    lines
}

/// The opening `<svg>` element and a white background; close with `</svg>\n`.
pub(crate) fn open(width: f64, height: f64) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" \
         viewBox=\"0 0 {width:.0} {height:.0}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    )
}

/// A short label for a tick value: no trailing zeros, no exponent for the
/// ranges reports use.
pub(crate) fn tick_label(v: f64) -> String {
    let a = v.abs();
    let s = if a == 0.0 {
        "0".to_owned()
    } else if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        // One decimal, trimmed below when it is zero: 99.9 stays, 10.0 is 10.
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.1}")
    } else if a >= 0.01 {
        format!("{v:.2}")
    } else {
        format!("{v:.1e}")
    };
    if s.contains('.') && !s.contains('e') {
        let suffix = if s.ends_with(['M', 'k']) {
            &s[s.len() - 1..]
        } else {
            ""
        };
        let body = s.trim_end_matches(['M', 'k']);
        let body = body.trim_end_matches('0').trim_end_matches('.');
        format!("{body}{suffix}")
    } else {
        s
    }
}

/// About five round tick values (steps of 1, 2 or 5 times a power of ten)
/// covering `[lo, hi]`; the first is at most `lo` and the last at least `hi`.
pub(crate) fn nice_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let (lo, hi) = if hi > lo { (lo, hi) } else { (lo, lo + 1.0) };
    let raw = (hi - lo) / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let start = (lo / step).floor() * step;
    let mut ticks = Vec::new();
    let mut t = start;
    // Bounded: at most a dozen steps cover the range by construction.
    for _ in 0..24 {
        ticks.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
        if t >= hi - step * 1e-9 {
            break;
        }
        t += step;
    }
    ticks
}

/// Decade ticks (1, 10, 100, ...) covering `[lo, hi]`, both positive.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let a = lo.log10().floor() as i32;
    let b = hi.log10().ceil().max(f64::from(a) + 1.0) as i32;
    (a..=b).map(|e| 10f64.powi(e)).collect()
}

/// An axis mapping data values to pixels, linear or log10.
#[derive(Debug, Clone)]
struct Axis {
    ticks: Vec<f64>,
    log: bool,
}

impl Axis {
    fn new(values: impl Iterator<Item = f64> + Clone, from_zero: bool, allow_log: bool) -> Axis {
        let finite = values.filter(|v| v.is_finite());
        let lo = finite.clone().fold(f64::INFINITY, f64::min);
        let hi = finite.fold(f64::NEG_INFINITY, f64::max);
        if !lo.is_finite() {
            return Axis {
                ticks: vec![0.0, 1.0],
                log: false,
            };
        }
        // A log axis when the values span more than about two decades,
        // so a 1 ms median and a 1 s tail are both readable.
        if allow_log && lo > 0.0 && hi / lo > 100.0 {
            return Axis {
                ticks: log_ticks(lo, hi),
                log: true,
            };
        }
        let lo = if from_zero { lo.min(0.0) } else { lo };
        Axis {
            ticks: nice_ticks(lo, hi),
            log: false,
        }
    }

    fn lo(&self) -> f64 {
        self.ticks.first().copied().unwrap_or(0.0)
    }

    fn hi(&self) -> f64 {
        self.ticks.last().copied().unwrap_or(1.0)
    }

    /// Position of `v` in [0, 1] along the axis (clamped).
    fn frac(&self, v: f64) -> f64 {
        let f = if self.log {
            let (lo, hi) = (self.lo().log10(), self.hi().log10());
            (v.max(f64::MIN_POSITIVE).log10() - lo) / (hi - lo)
        } else {
            (v - self.lo()) / (self.hi() - self.lo())
        };
        if f.is_finite() {
            f.clamp(0.0, 1.0)
        } else {
            0.0
        }
    }
}

/// The distinct x values of every series, in order, when they are few
/// enough to draw as categories (bars, percentile lines).
fn categories(series: &[Series]) -> Option<Vec<f64>> {
    let mut xs: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    (!xs.is_empty() && xs.len() <= 64).then_some(xs)
}

/// Draws `chart` as a complete SVG document.
pub(crate) fn chart(chart: &Chart) -> String {
    const LEFT: f64 = 70.0;
    const RIGHT: f64 = 20.0;
    const TOP: f64 = 58.0;
    const PLOT_H: f64 = 260.0;
    const BOTTOM: f64 = 52.0;

    let series = &chart.series;
    let cats = match chart.kind {
        ChartKind::Bars | ChartKind::Lines => categories(series),
        ChartKind::Cdf => None,
    };
    let n_cats = cats.as_ref().map_or(0, Vec::len);
    let plot_w = match chart.kind {
        ChartKind::Bars => {
            (n_cats as f64 * (10.0 + 8.0 * series.len() as f64)).clamp(480.0, 1200.0)
        }
        _ => 560.0,
    };
    // Wide enough for the title (bold 14 px, about 8 px a character) and
    // the legend on one line each.
    let title_w = 8.0 * chart.title.chars().count() as f64;
    let legend_w: f64 = series
        .iter()
        .map(|s| 30.0 + 7.0 * s.name.chars().count() as f64)
        .sum();
    let plot_w = plot_w.max(title_w).max(legend_w);
    let width = LEFT + plot_w + RIGHT;
    let height = TOP + PLOT_H + BOTTOM;
    let ys = series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let y_axis = match chart.kind {
        ChartKind::Cdf => Axis {
            ticks: vec![0.0, 0.25, 0.5, 0.75, 1.0],
            log: false,
        },
        ChartKind::Bars => Axis::new(ys, true, true),
        ChartKind::Lines => Axis::new(ys, true, true),
    };
    let x_axis = match &cats {
        Some(_) => None,
        None => Some(Axis::new(
            series.iter().flat_map(|s| s.points.iter().map(|p| p.0)),
            false,
            true,
        )),
    };
    let base = TOP + PLOT_H;
    let py = |v: f64| base - y_axis.frac(v) * PLOT_H;
    // Category slot centre, or the x axis mapping.
    let slot = if n_cats > 0 {
        plot_w / n_cats as f64
    } else {
        plot_w
    };
    let cat_x = |i: usize| LEFT + slot * (i as f64 + 0.5);
    let px = |x: f64| -> f64 {
        match (&cats, &x_axis) {
            (Some(c), _) => {
                let i = c.iter().position(|v| v.total_cmp(&x).is_eq()).unwrap_or(0);
                cat_x(i)
            }
            (None, Some(a)) => LEFT + a.frac(x) * plot_w,
            (None, None) => LEFT,
        }
    };

    let mut s = open(width, height);
    let _ = writeln!(
        s,
        r##"<text x="{LEFT}" y="20" font-size="14" font-weight="bold">{}</text>"##,
        esc(&chart.title)
    );
    // Legend, one entry per series.
    let mut lx = LEFT;
    for (k, ser) in series.iter().enumerate() {
        let colour = PALETTE[k % PALETTE.len()];
        let _ = writeln!(
            s,
            r##"<rect x="{lx:.1}" y="32" width="12" height="12" fill="{colour}"/><text x="{:.1}" y="42">{}</text>"##,
            lx + 16.0,
            esc(&ser.name)
        );
        lx += 30.0 + 7.0 * ser.name.chars().count() as f64;
    }
    // Y grid and tick labels.
    for &t in &y_axis.ticks {
        let y = py(t);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e5e5e5"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#555">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            y + 4.0,
            tick_label(t)
        );
    }
    // X ticks: every category (thinned when crowded), or the axis ticks.
    let x_ticks: Vec<(f64, String)> = match (&cats, &x_axis) {
        (Some(c), _) => {
            let every = c.len().div_ceil(20).max(1);
            c.iter()
                .enumerate()
                .filter(|(i, _)| i % every == 0)
                .map(|(i, v)| (cat_x(i), tick_label(*v)))
                .collect()
        }
        (None, Some(a)) => a
            .ticks
            .iter()
            .map(|&t| (LEFT + a.frac(t) * plot_w, tick_label(t)))
            .collect(),
        (None, None) => Vec::new(),
    };
    for (x, label) in &x_ticks {
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{base:.1}" x2="{x:.1}" y2="{:.1}" stroke="#333"/><text x="{x:.1}" y="{:.1}" text-anchor="middle" fill="#555">{}</text>"##,
            base + 4.0,
            base + 17.0,
            esc(label)
        );
    }

    match chart.kind {
        ChartKind::Bars => {
            let group = slot * 0.8;
            let bar = group / series.len().max(1) as f64;
            for (k, ser) in series.iter().enumerate() {
                let colour = PALETTE[k % PALETTE.len()];
                for &(x, y) in &ser.points {
                    let left = px(x) - group / 2.0 + bar * k as f64;
                    let top = py(y);
                    let _ = writeln!(
                        s,
                        r##"<rect x="{left:.1}" y="{top:.1}" width="{:.1}" height="{:.1}" fill="{colour}"><title>{}: {} = {}</title></rect>"##,
                        (bar - 0.5).max(0.5),
                        (base - top).max(0.0),
                        esc(&ser.name),
                        tick_label(x),
                        tick_label(y)
                    );
                }
            }
        }
        ChartKind::Lines | ChartKind::Cdf => {
            for (k, ser) in series.iter().enumerate() {
                let colour = PALETTE[k % PALETTE.len()];
                let mut pts = String::new();
                for (i, &(x, y)) in ser.points.iter().enumerate() {
                    if chart.kind == ChartKind::Cdf && i > 0 {
                        // A step: the fraction holds until the next value.
                        let _ = write!(pts, "{:.1},{:.1} ", px(x), py(ser.points[i - 1].1));
                    }
                    let _ = write!(pts, "{:.1},{:.1} ", px(x), py(y));
                }
                let _ = writeln!(
                    s,
                    r##"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"##,
                    pts.trim_end()
                );
                if chart.kind == ChartKind::Lines {
                    for &(x, y) in &ser.points {
                        let _ = writeln!(
                            s,
                            r##"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"><title>{}: {} = {}</title></circle>"##,
                            px(x),
                            py(y),
                            esc(&ser.name),
                            tick_label(x),
                            tick_label(y)
                        );
                    }
                }
            }
        }
    }

    // Axes and their labels.
    let log_note = |log: bool| if log { " (log scale)" } else { "" };
    let _ = writeln!(
        s,
        r##"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{base:.1}" stroke="#333"/><line x1="{LEFT}" y1="{base:.1}" x2="{:.1}" y2="{base:.1}" stroke="#333"/>"##,
        LEFT + plot_w
    );
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}{}</text>"##,
        LEFT + plot_w / 2.0,
        height - 12.0,
        esc(&chart.x_label),
        log_note(x_axis.as_ref().is_some_and(|a| a.log))
    );
    let _ = writeln!(
        s,
        r##"<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">{}{}</text>"##,
        TOP + PLOT_H / 2.0,
        TOP + PLOT_H / 2.0,
        esc(&chart.y_label),
        log_note(y_axis.log)
    );
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(kind: ChartKind, points: Vec<(f64, f64)>) -> Chart {
        Chart {
            id: "c".into(),
            title: "A <title> & more".into(),
            kind,
            x_label: "x".into(),
            y_label: "y".into(),
            series: vec![
                Series {
                    name: "ours".into(),
                    points: points.clone(),
                },
                Series {
                    name: "peer".into(),
                    points: points.iter().map(|&(x, y)| (x, y * 2.0)).collect(),
                },
            ],
        }
    }

    /// Every element opened is closed (or self-closing), in order: a cheap
    /// well-formedness check for the subset of XML this module writes.
    fn well_formed(doc: &str) -> bool {
        let mut stack: Vec<String> = Vec::new();
        let mut rest = doc;
        while let Some(start) = rest.find('<') {
            let Some(end) = rest[start..].find('>') else {
                return false;
            };
            let tag = &rest[start + 1..start + end];
            rest = &rest[start + end + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                if stack.pop().as_deref() != Some(name.trim()) {
                    return false;
                }
            } else if !tag.ends_with('/') {
                let name = tag.split_whitespace().next().unwrap_or("");
                stack.push(name.to_owned());
            }
        }
        stack.is_empty() && !doc.contains("NaN") && !doc.contains("inf")
    }

    #[test]
    fn every_kind_is_well_formed_and_escaped() {
        for kind in [ChartKind::Bars, ChartKind::Lines, ChartKind::Cdf] {
            let doc = chart(&sample(kind, vec![(1.0, 0.1), (2.0, 0.5), (3.0, 1.0)]));
            assert!(doc.starts_with("<svg"), "{doc}");
            assert!(well_formed(&doc), "{kind:?}: {doc}");
            assert!(doc.contains("A &lt;title&gt; &amp; more"));
            assert!(doc.contains(">ours</text>") && doc.contains(">peer</text>"));
        }
        let bars = chart(&sample(ChartKind::Bars, vec![(0.0, 3.0), (1.0, 4.0)]));
        // Background, two legend boxes, four bars.
        assert_eq!(bars.matches("<rect").count(), 1 + 2 + 4);
    }

    #[test]
    fn empty_and_degenerate_charts_still_draw() {
        let doc = chart(&sample(ChartKind::Lines, Vec::new()));
        assert!(well_formed(&doc), "{doc}");
        let flat = chart(&sample(ChartKind::Cdf, vec![(5.0, 1.0)]));
        assert!(well_formed(&flat), "{flat}");
    }

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(nice_ticks(0.0, 10.0), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let t = nice_ticks(0.0, 0.37);
        assert_eq!(t.first(), Some(&0.0));
        assert!(*t.last().unwrap() >= 0.37);
        assert_eq!(log_ticks(1.5, 900.0), vec![1.0, 10.0, 100.0, 1000.0]);
        assert_eq!(tick_label(0.5), "0.5");
        assert_eq!(tick_label(2.0), "2");
        assert_eq!(tick_label(25_000.0), "25k");
        assert_eq!(tick_label(99.9), "99.9");
        assert_eq!(tick_label(10.002), "10");
        assert_eq!(tick_label(1500.0), "1500");
        assert_eq!(tick_label(0.0), "0");
    }

    #[test]
    fn wide_ranges_get_a_log_axis() {
        let a = Axis::new([1.0, 1000.0].into_iter(), true, true);
        assert!(a.log);
        assert!((a.frac(31.62) - 0.5).abs() < 0.01);
        let b = Axis::new([1.0, 50.0].into_iter(), true, true);
        assert!(!b.log);
        assert_eq!(b.lo(), 0.0);
    }
}

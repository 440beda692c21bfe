//! Turns benchmark results into text: the Markdown of `docs/benchmarks.md`
//! (summary, then per benchmark the command, the machine, a table of ours
//! against the peer with median and spread, ratio and target, the charts
//! and the notes) and the plain table `cargo xtask bench` prints.
//!
//! Pure: it takes results already read and returns strings (the charts as
//! `(file name, SVG)` pairs); reading JSON, running programs and writing
//! files is `mod.rs`'s job. It judges nothing beyond what a row declares:
//! a target is met or not by our median, and a missing figure shows as
//! missing, never as zero.

use std::fmt::Write as _;

use eds_bench_report::machine::Machine;
use eds_bench_report::report::{BenchResult, Row, Target, median};

use super::{Entry, Status};
use crate::svg;

/// Median, min and max of `values`; `None` when there are none (or a NaN).
pub(crate) fn spread(values: &[f64]) -> Option<(f64, f64, f64)> {
    let m = median(values)?;
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Some((m, lo, hi))
}

/// A number with about three significant digits, never in exponent form
/// for the ranges benchmarks produce.
pub(crate) fn num(x: f64) -> String {
    let a = x.abs();
    if !x.is_finite() {
        return if x.is_nan() { "NaN" } else { "inf" }.to_owned();
    }
    if a >= 100.0 || a == 0.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else if a >= 0.001 {
        // Three significant digits below one.
        let digits = (-a.log10().floor()) as usize + 2;
        format!("{x:.digits$}")
    } else {
        format!("{x:.2e}")
    }
}

/// `median [min–max] (n=k)`, or `—` when there is no value.
pub(crate) fn cell(values: &[f64]) -> String {
    match spread(values) {
        None => "—".to_owned(),
        Some((m, lo, hi)) if values.len() == 1 || lo == hi => {
            format!("{} (n={})", num(m), values.len())
        }
        Some((m, lo, hi)) => format!("{} [{}–{}] (n={})", num(m), num(lo), num(hi), values.len()),
    }
}

/// Our median over the peer's, when both exist and the peer's is not zero.
pub(crate) fn ratio(row: &Row) -> Option<f64> {
    let ours = median(&row.ours)?;
    let peer = median(&row.peer)?;
    (peer != 0.0).then(|| ours / peer)
}

/// The ratio as `0.52×`, or `—` without a peer figure.
pub(crate) fn ratio_cell(row: &Row) -> String {
    ratio(row).map_or_else(|| "—".to_owned(), |r| format!("{}×", num(r)))
}

/// The target in words, for example `≤ 286.1 MiB` or `ours/peer ≥ 1`.
pub(crate) fn target_text(target: &Target, unit: &str) -> String {
    let unit = if unit.is_empty() {
        String::new()
    } else {
        format!(" {unit}")
    };
    match target {
        Target::AtMost(v) => format!("≤ {}{unit}", num(*v)),
        Target::AtLeast(v) => format!("≥ {}{unit}", num(*v)),
        Target::RatioAtMost(v) => format!("ours/peer ≤ {}", num(*v)),
        Target::RatioAtLeast(v) => format!("ours/peer ≥ {}", num(*v)),
    }
}

/// Whether the row meets its target: `None` when it has none, or when the
/// figure the target needs is missing.
pub(crate) fn met(row: &Row) -> Option<bool> {
    let target = row.target.as_ref()?;
    let ours = median(&row.ours)?;
    match *target {
        Target::AtMost(v) => Some(ours <= v),
        Target::AtLeast(v) => Some(ours >= v),
        Target::RatioAtMost(v) => ratio(row).map(|r| r <= v),
        Target::RatioAtLeast(v) => ratio(row).map(|r| r >= v),
    }
}

/// The target column: `≤ 200 ms: met`, `... **not met**`, `... no figure`.
fn target_cell(row: &Row) -> String {
    let Some(target) = &row.target else {
        return String::new();
    };
    let verdict = match met(row) {
        Some(true) => "met",
        Some(false) => "**not met**",
        None => "no figure",
    };
    format!("{}: {verdict}", target_text(target, &row.unit))
}

/// Markdown table cells may not contain `|` or line breaks.
fn md(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// `YYYY-MM-DD HH:MM UTC` from seconds since the epoch (proleptic
/// Gregorian, days-from-civil inverted), so no date crate is needed.
pub(crate) fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60
    )
}

fn machine_line(m: &Machine) -> String {
    let go =
        m.go.as_deref()
            .map(|g| format!(", {g}"))
            .unwrap_or_default();
    format!(
        "{} cores ({}), {:.1} GiB, Linux {}; {}{go}; commit `{}`; started {}, 1-minute load average {:.2}",
        m.cores,
        m.cpu_model,
        m.memory_mib as f64 / 1024.0,
        m.kernel,
        m.rustc,
        m.commit,
        utc(m.started_unix),
        m.load_average
    )
}

/// The rows of one result as a Markdown table.
pub(crate) fn table(result: &BenchResult) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| case | metric | ours: median [min–max] | peer: median [min–max] | ours/peer | target |"
    );
    let _ = writeln!(out, "| --- | --- | ---: | ---: | ---: | --- |");
    for row in &result.rows {
        let unit = if row.unit.is_empty() {
            String::new()
        } else {
            format!(" ({})", row.unit)
        };
        let better = match row.better {
            eds_bench_report::report::Better::Lower => "lower is better",
            eds_bench_report::report::Better::Higher => "higher is better",
        };
        let _ = writeln!(
            out,
            "| {} | {}{unit}, {better} | {} | {} | {} | {} |",
            md(&row.case),
            md(&row.metric),
            cell(&row.ours),
            if row.peer.is_empty() {
                "no peer figure".to_owned()
            } else {
                cell(&row.peer)
            },
            ratio_cell(row),
            md(&target_cell(row)),
        );
    }
    out
}

/// How many rows with a target meet it, out of how many have one.
fn targets(result: &BenchResult) -> (usize, usize) {
    let with: Vec<Option<bool>> = result
        .rows
        .iter()
        .filter(|r| r.target.is_some())
        .map(met)
        .collect();
    (
        with.iter().filter(|m| **m == Some(true)).count(),
        with.len(),
    )
}

/// The hand-written part of `docs/benchmarks.md`.
const PREAMBLE: &str = "\
# Benchmarks

This page is generated by `cargo xtask bench` from the JSON the benchmark
programs write (`target/bench/<name>.json`); do not edit it by hand.

Reproduce:

- everything: `cargo xtask bench` (each program runs ours and the peer
  alternately, several rounds, in one invocation);
- a short run: `cargo xtask bench --quick`;
- one benchmark: `cargo xtask bench picker` (any names below, several allowed);
- more rounds: `cargo xtask bench --rounds 9`;
- re-render this page from existing JSON without running anything:
  `cargo xtask bench --render-only`.

Every figure below shows the median over the repeated rounds with the lowest
and highest round in brackets and the number of rounds; nothing is dropped.
The ratio is our median over the peer's (below 1 is better for us where
lower is better). A target is judged on our median. Each section states the
exact command, the machine (with its load average when the run started: the
suite often runs next to other work) and how the peer was configured.
";

/// The whole of `docs/benchmarks.md` and the charts it links to, as
/// `(file name under docs/bench/, SVG)`.
pub(crate) fn markdown(
    entries: &[(Entry, Status, Option<BenchResult>)],
) -> (String, Vec<(String, String)>) {
    let mut out = String::from(PREAMBLE);
    let mut charts = Vec::new();
    let _ = writeln!(out, "\n## Summary\n");
    let _ = writeln!(out, "| benchmark | what | status | targets met |");
    let _ = writeln!(out, "| --- | --- | --- | --- |");
    for (entry, status, result) in entries {
        let state = match (status, result) {
            (Status::Failed(why), _) => format!("**failed**: {}", md(why)),
            (_, None) => "**missing**: no result (not run yet)".to_owned(),
            (Status::Ok, Some(r)) | (Status::NotRun, Some(r)) => {
                format!("ok, {}", utc(r.machine.started_unix))
            }
        };
        let met = result.as_ref().map_or_else(
            || "—".to_owned(),
            |r| match targets(r) {
                (_, 0) => "no targets".to_owned(),
                (m, n) if m == n => format!("{m} of {n}"),
                (m, n) => format!("**{m} of {n}**"),
            },
        );
        let _ = writeln!(
            out,
            "| [{}](#{}) | {} | {state} | {met} |",
            entry.name, entry.name, entry.what
        );
    }
    for (entry, status, result) in entries {
        let _ = writeln!(out, "\n<a id=\"{}\"></a>\n", entry.name);
        let Some(result) = result else {
            let _ = writeln!(out, "## {}: {}\n", entry.name, entry.what);
            let why = match status {
                Status::Failed(why) => format!("The last run failed: {why}."),
                _ => "No result: this benchmark has not been run into this output directory."
                    .to_owned(),
            };
            let _ = writeln!(
                out,
                "**Missing.** {why} Run it with `cargo xtask bench {}`.",
                entry.name
            );
            continue;
        };
        let _ = writeln!(out, "## {}: {}\n", entry.name, result.title);
        if let Status::Failed(why) = status {
            let _ = writeln!(
                out,
                "**The last run failed ({why}); the figures below are from an earlier run.**\n"
            );
        }
        let _ = writeln!(out, "- command: `{}`", result.command);
        let _ = writeln!(out, "- ours: {}", result.ours);
        let _ = writeln!(out, "- peer: {}", result.peer);
        let _ = writeln!(out, "- machine: {}\n", machine_line(&result.machine));
        out.push_str(&table(result));
        for chart in &result.charts {
            let file = format!("{}-{}.svg", entry.name, chart.id);
            let _ = writeln!(out, "\n![{}](bench/{file})", md(&chart.title));
            charts.push((file, svg::chart(chart)));
        }
        if !result.notes.is_empty() {
            out.push('\n');
            for note in &result.notes {
                let _ = writeln!(out, "- {note}");
            }
        }
    }
    (out, charts)
}

/// A plain-text table for the terminal.
pub(crate) fn plain(result: &BenchResult) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{} ({})", result.title, result.command);
    let _ = writeln!(
        out,
        "  {:<34} {:<30} {:>26} {:>26} {:>8}  target",
        "case", "metric", "ours", "peer", "ratio"
    );
    for row in &result.rows {
        let _ = writeln!(
            out,
            "  {:<34} {:<30} {:>26} {:>26} {:>8}  {}",
            row.case,
            format!("{} ({})", row.metric, row.unit),
            cell(&row.ours),
            cell(&row.peer),
            ratio_cell(row),
            target_cell(row).replace("**", "")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use eds_bench_report::report::{Better, Chart, ChartKind, Series};

    fn row(ours: &[f64], peer: &[f64], target: Option<Target>) -> Row {
        Row {
            case: "10 endpoints".into(),
            metric: "pick | time".into(),
            unit: "ns".into(),
            better: Better::Lower,
            ours: ours.to_vec(),
            peer: peer.to_vec(),
            target,
        }
    }

    fn machine() -> Machine {
        Machine {
            cores: 2,
            memory_mib: 8192,
            cpu_model: "Test CPU".into(),
            kernel: "6.1".into(),
            commit: "abc123".into(),
            rustc: "rustc 1.90".into(),
            go: None,
            load_average: 1.5,
            started_unix: 0,
        }
    }

    fn result(rows: Vec<Row>) -> BenchResult {
        BenchResult {
            name: "picker".into(),
            title: "Pick cost".into(),
            command: "cargo run --release -p eds-bench --bin picker".into(),
            ours: "lb-core".into(),
            peer: "tower".into(),
            machine: machine(),
            rows,
            charts: vec![Chart {
                id: "cost".into(),
                title: "Cost".into(),
                kind: ChartKind::Bars,
                x_label: "n".into(),
                y_label: "ns".into(),
                series: vec![Series {
                    name: "ours".into(),
                    points: vec![(10.0, 5.0)],
                }],
            }],
            notes: vec!["a note".into()],
        }
    }

    #[test]
    fn ratio_is_median_over_median() {
        let r = row(&[1.0, 2.0, 30.0], &[4.0, 4.0, 100.0], None);
        assert_eq!(ratio(&r), Some(0.5));
        assert_eq!(ratio_cell(&r), "0.500×");
        assert_eq!(ratio(&row(&[1.0], &[0.0], None)), None);
    }

    #[test]
    fn cells_show_median_spread_and_count() {
        assert_eq!(cell(&[3.0, 1.0, 2.0]), "2.00 [1.00–3.00] (n=3)");
        assert_eq!(cell(&[150.0, 250.0]), "200 [150–250] (n=2)");
        assert_eq!(cell(&[7.0]), "7.00 (n=1)");
        assert_eq!(cell(&[]), "—");
        assert_eq!(num(0.01234), "0.0123");
        assert_eq!(num(12.345), "12.3");
        assert_eq!(num(0.0), "0");
    }

    #[test]
    fn targets_met_unmet_and_without_figure() {
        assert_eq!(
            met(&row(&[1.0, 3.0, 2.0], &[], Some(Target::AtMost(2.0)))),
            Some(true)
        );
        assert_eq!(
            met(&row(&[3.0], &[], Some(Target::AtMost(2.0)))),
            Some(false)
        );
        assert_eq!(
            met(&row(&[3.0], &[], Some(Target::AtLeast(2.0)))),
            Some(true)
        );
        assert_eq!(
            met(&row(&[1.0], &[2.0], Some(Target::RatioAtMost(1.0)))),
            Some(true)
        );
        assert_eq!(
            met(&row(&[3.0], &[2.0], Some(Target::RatioAtMost(1.0)))),
            Some(false)
        );
        // A ratio target with no peer figure cannot be judged.
        assert_eq!(met(&row(&[1.0], &[], Some(Target::RatioAtMost(1.0)))), None);
        assert_eq!(met(&row(&[], &[], Some(Target::AtMost(1.0)))), None);
        assert_eq!(met(&row(&[1.0], &[], None)), None);
        assert_eq!(target_text(&Target::AtMost(286.1), "MiB"), "≤ 286 MiB");
    }

    #[test]
    fn table_handles_a_missing_peer_and_escapes_pipes() {
        let t = table(&result(vec![
            row(&[1.0], &[], Some(Target::AtMost(0.5))),
            row(&[1.0], &[2.0], None),
        ]));
        assert!(t.contains("no peer figure"), "{t}");
        assert!(t.contains("pick \\| time"), "{t}");
        assert!(t.contains("**not met**"), "{t}");
        assert!(t.contains("0.500×"), "{t}");
        assert_eq!(t.lines().count(), 4);
    }

    #[test]
    fn markdown_shows_missing_and_failed_benchmarks() {
        let entries = super::super::REGISTRY;
        let ok = result(vec![row(&[1.0], &[2.0], Some(Target::AtMost(2.0)))]);
        let (doc, charts) = markdown(&[
            (entries[0].clone(), Status::Ok, Some(ok)),
            (
                entries[1].clone(),
                Status::Failed("exit status 1".into()),
                None,
            ),
            (entries[2].clone(), Status::NotRun, None),
        ]);
        assert!(doc.starts_with("# Benchmarks"));
        assert!(doc.contains("**failed**: exit status 1"), "{doc}");
        assert!(doc.contains("**missing**"), "{doc}");
        assert!(doc.contains("| 1 of 1 |"), "{doc}");
        assert!(doc.contains("![Cost](bench/picker-cost.svg)"), "{doc}");
        assert!(doc.contains("1970-01-01 00:00 UTC"), "{doc}");
        assert!(doc.contains("- a note"));
        assert_eq!(charts.len(), 1);
        assert_eq!(charts[0].0, "picker-cost.svg");
        assert!(charts[0].1.starts_with("<svg"));
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        // 2024-02-29 12:34 UTC, a leap day.
        assert_eq!(utc(1_709_210_040), "2024-02-29 12:34 UTC");
    }
}

//! The JSON a benchmark program writes, and `cargo xtask bench` reads and
//! renders: one [`BenchResult`] per benchmark.
//!
//! Every row pairs our figure with a peer's, measured in the same run
//! (alternately where the benchmark allows). Each side holds every repeated
//! run, not a summary, so the report shows the median and the spread and
//! nothing is cherry-picked. This module is the format only: no measuring,
//! no rendering.

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::machine::Machine;

/// One benchmark's results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchResult {
    /// Short id, also the `cargo xtask bench <name>` argument: `picker`,
    /// `distribution`, `harness`, `overhead`, `fanout`, `propagation`, `scale`.
    pub name: String,
    /// Heading in the report.
    pub title: String,
    /// The exact command that produced this result.
    pub command: String,
    /// What "ours" is (for example `eds-server 0.1.0`).
    pub ours: String,
    /// What the peer is, with its version and configuration
    /// (for example `go-control-plane v0.13.4, LinearCache`).
    pub peer: String,
    /// Where and when it ran.
    pub machine: Machine,
    /// The figures.
    pub rows: Vec<Row>,
    /// Data for the report's charts.
    #[serde(default)]
    pub charts: Vec<Chart>,
    /// Plain statements the report prints under the table: shortfalls, caveats,
    /// how the peer was configured.
    #[serde(default)]
    pub notes: Vec<String>,
}

/// One figure, ours against the peer's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    /// The case, for example `10,000 SotW subscribers`.
    pub case: String,
    /// What is measured, for example `time until every subscriber has the change`.
    pub metric: String,
    /// Unit of every value, for example `ms`, `req/s`, `ns`, `MiB`, `%`.
    pub unit: String,
    /// Whether a smaller or a larger value is better.
    pub better: Better,
    /// Our value in each repeated run.
    pub ours: Vec<f64>,
    /// The peer's value in each repeated run; empty when there is no peer for
    /// this row (the report then shows no ratio).
    #[serde(default)]
    pub peer: Vec<f64>,
    /// A target from the issues, if there is one (same unit), for example
    /// `<= 1000`.
    #[serde(default)]
    pub target: Option<Target>,
}

/// Which direction is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    /// Smaller is better (latency, CPU, memory).
    Lower,
    /// Larger is better (throughput, share within a deadline).
    Higher,
}

/// A goal a row is held to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Our median must be at most this.
    AtMost(f64),
    /// Our median must be at least this.
    AtLeast(f64),
    /// Our median divided by the peer's median must be at most this.
    RatioAtMost(f64),
    /// Our median divided by the peer's median must be at least this.
    RatioAtLeast(f64),
}

/// A chart's data; the renderer draws it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Chart {
    /// File stem for the drawn chart, unique within the benchmark.
    pub id: String,
    /// Caption.
    pub title: String,
    /// How to draw it.
    pub kind: ChartKind,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// One line or bar group per series.
    pub series: Vec<Series>,
}

/// How a chart is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChartKind {
    /// Bars per x category (per-pod load: x is the pod index).
    Bars,
    /// Lines through points (latency percentiles: x is the percentile).
    Lines,
    /// A cumulative distribution: x is the value, y the fraction in [0, 1].
    Cdf,
}

/// One named series of (x, y) points.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Series {
    /// Legend entry, for example `eds-server` or `go-control-plane`.
    pub name: String,
    /// The points, in x order.
    pub points: Vec<(f64, f64)>,
}

impl BenchResult {
    /// Writes the result as pretty JSON, creating parent directories.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let json = serde_json::to_vec_pretty(self)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))
    }

    /// Reads a result written by [`BenchResult::write`].
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
    }
}

/// The median of `values` (the mean of the middle two for an even count);
/// `None` when empty or when any value is NaN.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() || values.iter().any(|v| v.is_nan()) {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len().is_multiple_of(2) {
        f64::midpoint(v[mid - 1], v[mid])
    } else {
        v[mid]
    })
}

/// The value at quantile `q` in [0, 1] of `sorted` (nearest rank); `None` when empty.
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[1.0, f64::NAN]), None);
    }

    #[test]
    fn quantile_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.99), Some(99.0));
        assert_eq!(quantile(&v, 0.5), Some(50.0));
        assert_eq!(quantile(&v, 1.0), Some(100.0));
        assert_eq!(quantile(&v, 0.0), Some(1.0));
        assert_eq!(quantile(&[], 0.5), None);
    }
}

//! `cargo xtask simulate`: runs lb-core's deterministic load simulator and
//! compares balancing policies side by side.
//!
//! This module only maps flags onto [`lb_core::sim::SimConfig`] and presents
//! the [`lb_core::sim::Report`]: a table on stdout, optionally JSON and an
//! SVG plot. It is not the simulator (that lives in `lb_core::sim`, so it
//! drives the very pickers lb-client ships) and it validates nothing itself:
//! bad flags come back from lb-core as typed errors and are printed as such.
//!
//! The defaults are the headline scenario of issue 2: 32 backends in 3
//! zones, 64 clients, lognormal costs with sigma 1, 80% utilisation.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, anyhow};
use lb_core::sim::{self, CostModel, LoadView, Report, SimConfig, SimPolicy};

use crate::svg::{self, PALETTE, esc, wrap};

fn defaults() -> SimConfig {
    SimConfig::default()
}

/// Request cost distributions (all scaled to `--mean-cost-ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Cost {
    /// Lognormal with `--sigma`.
    Lognormal,
    /// Exponential (the textbook M/M/1 assumption).
    Exponential,
    /// Every request costs the mean.
    Constant,
    /// Cheap and expensive requests: `--expensive-fraction` of them cost
    /// `--expensive-factor` times the others.
    Mix,
}

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Number of backends.
    #[arg(long, default_value_t = defaults().backends)]
    backends: usize,
    /// Number of zones; backend i and client j are in zones i % zones and j % zones.
    #[arg(long, default_value_t = defaults().zones)]
    zones: usize,
    /// Number of clients, each with its own balancer and its own view of load.
    #[arg(long, default_value_t = defaults().clients)]
    clients: usize,
    /// Request cost distribution.
    #[arg(long, value_enum, default_value_t = Cost::Lognormal)]
    cost: Cost,
    /// Shape of the lognormal distribution (standard deviation of ln cost).
    #[arg(long, default_value_t = 1.0)]
    sigma: f64,
    /// Share of expensive requests, for `--cost mix`.
    #[arg(long, default_value_t = 0.1)]
    expensive_fraction: f64,
    /// How many times more an expensive request costs, for `--cost mix`.
    #[arg(long, default_value_t = 10.0)]
    expensive_factor: f64,
    /// Mean request cost on a normal backend, in milliseconds.
    #[arg(long, default_value_t = defaults().mean_cost_secs * 1000.0)]
    mean_cost_ms: f64,
    /// Target utilisation of the whole fleet, in (0, 1).
    #[arg(long, visible_alias = "utilisation", default_value_t = defaults().utilization)]
    utilization: f64,
    /// Simulated seconds.
    #[arg(long, default_value_t = defaults().duration_secs)]
    duration: f64,
    /// Simulated seconds at the start left out of the figures.
    #[arg(long, default_value_t = defaults().warmup_secs)]
    warmup: f64,
    /// Seed of every random stream: the same seed gives the same figures.
    #[arg(long, default_value_t = defaults().seed)]
    seed: u64,
    /// How many backends are slow.
    #[arg(long, default_value_t = defaults().slow_backends)]
    slow_backends: usize,
    /// How many times slower a slow backend serves.
    #[arg(long, default_value_t = defaults().slow_factor)]
    slow_factor: f64,
    /// Let every picker read every backend's true in-flight count instead of
    /// only its own client's (the global view queueing theory assumes).
    #[arg(long)]
    global_view: bool,
    /// Decay time of peak-EWMA latency estimates, in seconds.
    #[arg(long, default_value_t = defaults().ewma_decay_secs)]
    ewma_decay: f64,
    /// Policies to compare, comma-separated [default: all: l4-per-connection,
    /// round-robin, random, p2c, p2c-peak-ewma, zone-p2c].
    #[arg(long, value_delimiter = ',', value_parser = parse_policy)]
    policies: Vec<SimPolicy>,
    /// Also write the figures as JSON to this file.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Also draw per-backend load per policy as an SVG to this file.
    #[arg(long, value_name = "PATH")]
    plot: Option<PathBuf>,
}

fn parse_policy(s: &str) -> Result<SimPolicy, sim::SimError> {
    s.parse()
}

impl Args {
    fn config(&self) -> SimConfig {
        SimConfig {
            backends: self.backends,
            zones: self.zones,
            clients: self.clients,
            cost: match self.cost {
                Cost::Lognormal => CostModel::Lognormal { sigma: self.sigma },
                Cost::Exponential => CostModel::Exponential,
                Cost::Constant => CostModel::Constant,
                Cost::Mix => CostModel::Mix {
                    expensive_fraction: self.expensive_fraction,
                    expensive_factor: self.expensive_factor,
                },
            },
            mean_cost_secs: self.mean_cost_ms / 1000.0,
            utilization: self.utilization,
            duration_secs: self.duration,
            warmup_secs: self.warmup,
            seed: self.seed,
            slow_backends: self.slow_backends,
            slow_factor: self.slow_factor,
            view: if self.global_view {
                LoadView::Global
            } else {
                LoadView::PerClient
            },
            ewma_decay_secs: self.ewma_decay,
            policies: if self.policies.is_empty() {
                SimPolicy::ALL.to_vec()
            } else {
                self.policies.clone()
            },
        }
    }
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let config = args.config();
    let report = sim::run(&config).map_err(|e| anyhow!("simulate: {e}"))?;
    print!("{}", table(&report));
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report).context("encoding the report")?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = &args.plot {
        std::fs::write(path, svg(&report))
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn describe(config: &SimConfig) -> String {
    let cost = match config.cost {
        CostModel::Constant => "constant".to_owned(),
        CostModel::Exponential => "exponential".to_owned(),
        CostModel::Lognormal { sigma } => format!("lognormal sigma {sigma}"),
        CostModel::Mix {
            expensive_fraction,
            expensive_factor,
        } => format!(
            "mix: {}% cost {expensive_factor}x",
            expensive_fraction * 100.0
        ),
    };
    let slow = if config.slow_backends > 0 {
        format!(
            ", {} backend(s) {}x slower",
            config.slow_backends, config.slow_factor
        )
    } else {
        String::new()
    };
    let view = match config.view {
        LoadView::PerClient => "each client sees its own in-flight requests",
        LoadView::Global => "pickers see global in-flight requests",
    };
    format!(
        "{} backends in {} zones{slow}, {} clients, {cost} costs (mean {} ms), {}% utilisation, \
         {} s simulated ({} s warm-up), seed {}; {view}",
        config.backends,
        config.zones,
        config.clients,
        config.mean_cost_secs * 1000.0,
        config.utilization * 100.0,
        config.duration_secs,
        config.warmup_secs,
        config.seed,
    )
}

fn ratio(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}")
    } else {
        "inf".to_owned()
    }
}

fn millis(x: f64) -> String {
    if x >= 1000.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

fn table(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", describe(&report.config));
    let _ = writeln!(
        out,
        "{:.0} requests/s in all; utilisation = work sent to a backend / its capacity \
         (over 100%: its queue grows without bound)\n",
        report.total_rate
    );
    let _ = writeln!(
        out,
        "{:<18} {:>8} {:>8} {:>8} {:>7} {:>8} {:>8} {:>8} {:>8} {:>6}",
        "policy",
        "max/mean",
        "max/min",
        "max util",
        "rate CV",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p999 ms",
        "x-zone"
    );
    for p in &report.policies {
        let _ = writeln!(
            out,
            "{:<18} {:>8} {:>8} {:>7.1}% {:>7.3} {:>8} {:>8} {:>8} {:>8} {:>5.1}%",
            p.policy.as_str(),
            ratio(p.max_over_mean_utilization),
            ratio(p.max_over_min_utilization),
            p.max_utilization * 100.0,
            p.request_rate_cv,
            millis(p.p50_ms),
            millis(p.p90_ms),
            millis(p.p99_ms),
            millis(p.p999_ms),
            p.cross_zone_fraction * 100.0,
        );
    }
    out
}

/// Per-backend utilisation, one panel per policy, all on the same scale so
/// panels compare at a glance; a dashed red line marks 100%.
fn svg(report: &Report) -> String {
    const LEFT: f64 = 56.0;
    const RIGHT: f64 = 16.0;
    const PANEL: f64 = 150.0;
    const PLOT: f64 = 100.0;
    // Bars taller than this are clipped and labelled, so one hot backend does
    // not flatten every other panel.
    const CAP: f64 = 3.0;

    let n = report.backends.len().max(1);
    let plot_w = (n as f64 * 18.0).clamp(640.0, 1400.0);
    let width = LEFT + plot_w + RIGHT;
    // About 6.5 px per character at 12 px sans-serif.
    let description = wrap(&describe(&report.config), (plot_w / 6.5) as usize);
    let legend_y = 42.0 + 15.0 * description.len() as f64;
    let top = legend_y + 14.0;
    let height = top + PANEL * report.policies.len() as f64 + 24.0;
    let top_util = report
        .policies
        .iter()
        .flat_map(|p| p.utilization.iter().copied())
        .filter(|u| u.is_finite())
        .fold(0.0f64, f64::max);
    // Round up to the next 50%, at least 125% so the 100% line has headroom.
    let y_max = ((top_util.min(CAP) * 2.0).ceil() / 2.0).max(1.25);
    let bar = plot_w / n as f64;
    let gap = if bar > 4.0 { bar * 0.15 } else { 0.0 };
    let zones: Vec<&str> = {
        let mut z: Vec<&str> = report.backends.iter().map(|b| b.zone.as_str()).collect();
        z.sort_unstable();
        z.dedup();
        z
    };
    let colour = |zone: &str| {
        let i = zones.iter().position(|z| *z == zone).unwrap_or(0);
        PALETTE[i % PALETTE.len()]
    };

    let mut s = svg::open(width, height);
    let _ = writeln!(
        s,
        r##"<text x="{LEFT}" y="20" font-size="14" font-weight="bold">Per-backend utilisation by policy</text>"##
    );
    for (i, line) in description.iter().enumerate() {
        let _ = writeln!(
            s,
            r##"<text x="{LEFT}" y="{}" fill="#555">{}</text>"##,
            38 + 15 * i,
            esc(line)
        );
    }
    let (box_y, text_y, line_y) = (legend_y - 9.0, legend_y, legend_y - 4.0);
    // Zone legend and the slow-backend mark.
    let mut x = LEFT;
    for z in &zones {
        let _ = writeln!(
            s,
            r##"<rect x="{x:.1}" y="{box_y}" width="10" height="10" fill="{}"/><text x="{:.1}" y="{text_y}">{}</text>"##,
            colour(z),
            x + 14.0,
            esc(z)
        );
        x += 24.0 + 7.0 * z.len() as f64;
    }
    if report.backends.iter().any(|b| b.slowness != 1.0) {
        let _ = writeln!(
            s,
            r##"<text x="{x:.1}" y="{text_y}" fill="#c00">▲ slow backend</text>"##
        );
        x += 110.0;
    }
    let _ = writeln!(
        s,
        r##"<line x1="{x:.1}" y1="{line_y}" x2="{:.1}" y2="{line_y}" stroke="#d62728" stroke-dasharray="4 3"/><text x="{:.1}" y="{text_y}">100% utilisation</text>"##,
        x + 24.0,
        x + 28.0
    );

    for (k, p) in report.policies.iter().enumerate() {
        let y0 = top + PANEL * k as f64;
        let base = y0 + 28.0 + PLOT;
        let y = |u: f64| base - u.min(y_max) / y_max * PLOT;
        let _ = writeln!(
            s,
            r##"<text x="{LEFT}" y="{:.1}"><tspan font-weight="bold">{}</tspan>  max/mean {}  max/min {}  max {:.1}%  p99 {} ms  cross-zone {:.0}%</text>"##,
            y0 + 18.0,
            esc(p.policy.as_str()),
            ratio(p.max_over_mean_utilization),
            ratio(p.max_over_min_utilization),
            p.max_utilization * 100.0,
            millis(p.p99_ms),
            p.cross_zone_fraction * 100.0
        );
        // Axis, ticks every 50%.
        let mut tick = 0.0;
        while tick <= y_max + 1e-9 {
            let ty = y(tick);
            let _ = writeln!(
                s,
                r##"<line x1="{LEFT}" y1="{ty:.1}" x2="{:.1}" y2="{ty:.1}" stroke="#e5e5e5"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#555">{:.0}%</text>"##,
                LEFT + plot_w,
                LEFT - 6.0,
                ty + 4.0,
                tick * 100.0
            );
            tick += 0.5;
        }
        for (i, (&u, b)) in p.utilization.iter().zip(&report.backends).enumerate() {
            let bx = LEFT + bar * i as f64 + gap / 2.0;
            let top = y(u);
            let over = u > 1.0;
            let _ = writeln!(
                s,
                r##"<rect x="{bx:.1}" y="{top:.1}" width="{:.1}" height="{:.1}" fill="{}"{}><title>{} ({}): {:.1}%</title></rect>"##,
                (bar - gap).max(0.5),
                (base - top).max(0.0),
                colour(&b.zone),
                if over {
                    r##" stroke="#d62728" stroke-width="1.5""##
                } else {
                    ""
                },
                esc(&b.address),
                esc(&b.zone),
                u * 100.0
            );
            if u > y_max {
                let _ = writeln!(
                    s,
                    r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="9" fill="#d62728">{:.0}%</text>"##,
                    bx + (bar - gap) / 2.0,
                    top + 10.0,
                    u * 100.0
                );
            }
            if b.slowness != 1.0 {
                let _ = writeln!(
                    s,
                    r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10" fill="#c00">▲</text>"##,
                    bx + (bar - gap) / 2.0,
                    base + 12.0
                );
            }
        }
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{base:.1}" x2="{:.1}" y2="{base:.1}" stroke="#333"/><line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#d62728" stroke-width="1.5" stroke-dasharray="6 4"/>"##,
            LEFT + plot_w,
            y(1.0),
            LEFT + plot_w,
            y(1.0)
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="{LEFT}" y="{:.0}" fill="#555">one bar per backend; utilisation = work sent / capacity (bars over 100% are outlined red)</text>"##,
        height - 8.0
    );
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_and_plot_cover_every_policy() {
        let config = SimConfig {
            backends: 4,
            zones: 2,
            clients: 4,
            duration_secs: 2.0,
            warmup_secs: 0.5,
            slow_backends: 1,
            ..SimConfig::default()
        };
        let report = sim::run(&config).unwrap();
        let t = table(&report);
        let plot = svg(&report);
        for p in SimPolicy::ALL {
            assert!(t.contains(p.as_str()), "{t}");
            assert!(plot.contains(p.as_str()));
        }
        assert!(plot.starts_with("<svg") && plot.trim_end().ends_with("</svg>"));
        assert_eq!(plot.matches("<rect").count(), 1 + 2 + 6 * 4);
    }
}

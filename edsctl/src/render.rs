//! Presenting views: aligned tables (`table`, `wide`), JSON and YAML.
//! Pure: every function takes the data (and, where ages are shown, the
//! reference time from the data itself) and returns a `String`, so golden
//! files pin the output byte for byte.
//!
//! ```text
//!  SnapshotView  ─ services ─┐
//!  EndpointsView ─ endpoints ┤                   ┌─ table / wide: Table::render(colour)
//!  ClientsView   ─ clients ──┼─> rows, or ──────>┤
//!  DiffReport    ─ diff ─────┤   Serialize       └─ json / yaml:  structured()
//!  SimReport     ─ simulate ─┘
//! ```
//!
//! Ordering is deterministic: rows follow the server's sorted keys and
//! addresses, clients by stream id, then type, then name. Colour is ANSI,
//! only when the caller says so (a terminal, NO_COLOR unset); padding is
//! computed on the uncoloured text so columns line up either way.
//! Not here: deciding whether to colour, or writing to stdout.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::cli::OutputFormat;
use crate::diff::{ClientVerdict, DiffReport, resource_state};
use crate::error::Error;
use crate::model::{ClientsView, EndpointsView, Protocol, SnapshotView};
use crate::simulate::SimReport;

/// How a cell is coloured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    /// No colour.
    Plain,
    /// Green: healthy, in agreement.
    Good,
    /// Yellow: draining, pending.
    Warn,
    /// Red: unhealthy, disagreement.
    Bad,
    /// Bold: headers.
    Header,
}

impl Tone {
    fn code(self) -> Option<&'static str> {
        match self {
            Tone::Plain => None,
            Tone::Good => Some("32"),
            Tone::Warn => Some("33"),
            Tone::Bad => Some("31;1"),
            Tone::Header => Some("1"),
        }
    }
}

/// `text` in `tone`, when colouring.
pub fn paint(text: &str, tone: Tone, color: bool) -> String {
    match (color, tone.code()) {
        (true, Some(code)) => format!("\x1b[{code}m{text}\x1b[0m"),
        _ => text.to_owned(),
    }
}

/// One table cell.
#[derive(Debug, Clone)]
pub struct Cell {
    text: String,
    tone: Tone,
}

impl Cell {
    /// A plain cell.
    pub fn plain(text: impl Into<String>) -> Self {
        Self::toned(text, Tone::Plain)
    }

    /// A coloured cell; empty text shows as `-`.
    pub fn toned(text: impl Into<String>, tone: Tone) -> Self {
        let text = text.into();
        Self {
            text: if text.is_empty() {
                "-".to_owned()
            } else {
                text
            },
            tone,
        }
    }
}

fn opt(v: &Option<String>) -> Cell {
    Cell::plain(v.clone().unwrap_or_default())
}

/// Columns separated by three spaces, like kubectl.
#[derive(Debug, Clone, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<Cell>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&str]) -> Self {
        Self {
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (as many cells as headers).
    pub fn row(&mut self, cells: Vec<Cell>) {
        self.rows.push(cells);
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The aligned text, one line per row, each ending in a newline.
    pub fn render(&self, color: bool) -> String {
        let n = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, c) in row.iter().enumerate().take(n) {
                widths[i] = widths[i].max(c.text.chars().count());
            }
        }
        let mut out = String::new();
        let mut line = |cells: Vec<(&str, Tone)>| {
            let last = cells.len().saturating_sub(1);
            let mut text = String::new();
            for (i, (t, tone)) in cells.into_iter().enumerate() {
                text.push_str(&paint(t, tone, color));
                if i < last {
                    let pad = widths[i].saturating_sub(t.chars().count()) + 3;
                    text.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        };
        line(
            self.headers
                .iter()
                .map(|h| (h.as_str(), Tone::Header))
                .collect(),
        );
        for row in &self.rows {
            line(row.iter().map(|c| (c.text.as_str(), c.tone)).collect());
        }
        out
    }
}

/// JSON (pretty, trailing newline) or YAML for any view.
pub fn structured<T: Serialize>(value: &T, format: OutputFormat) -> Result<String, Error> {
    match format {
        OutputFormat::Yaml => serde_saphyr::to_string(value).map_err(|e| Error::Format {
            format: "yaml",
            message: e.to_string(),
        }),
        _ => serde_json::to_string_pretty(value)
            .map(|mut s| {
                s.push('\n');
                s
            })
            .map_err(|e| Error::Format {
                format: "json",
                message: e.to_string(),
            }),
    }
}

/// A duration like kubectl's ages: `45s`, `3m12s`, `2h5m`, `3d4h`.
pub fn age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86_400, s % 86_400 / 3600),
    }
}

fn age_since(then: SystemTime, now: SystemTime) -> String {
    // A time after `now` (clock skew between server threads) shows as 0s.
    age(now.duration_since(then).unwrap_or_default())
}

fn health_tone(h: &str) -> Tone {
    match h {
        "HEALTHY" => Tone::Good,
        "DRAINING" => Tone::Warn,
        _ => Tone::Bad,
    }
}

fn zone_name(z: &str) -> &str {
    if z.is_empty() { "(none)" } else { z }
}

/// `edsctl services`.
pub fn services(view: &SnapshotView, wide: bool, color: bool) -> String {
    if view.services.is_empty() {
        return "No service keys.\n".to_owned();
    }
    let mut headers = vec![
        "KEY",
        "ENDPOINTS",
        "HEALTHY",
        "DRAINING",
        "UNHEALTHY",
        "ZONES",
        "SUBSCRIBERS",
        "VERSION",
    ];
    if wide {
        headers[5] = "ZONES (HEALTHY/DRAINING/UNHEALTHY)";
    }
    let mut t = Table::new(&headers);
    for s in &view.services {
        let zones: Vec<String> = s
            .zones
            .iter()
            .map(|(z, by)| {
                let get = |h: &str| by.get(h).copied().unwrap_or(0);
                if wide {
                    format!(
                        "{}={}/{}/{}",
                        zone_name(z),
                        get("HEALTHY"),
                        get("DRAINING"),
                        get("UNHEALTHY")
                    )
                } else {
                    format!("{}={}", zone_name(z), by.values().sum::<usize>())
                }
            })
            .collect();
        let (h, d, u) = (
            s.count(lb_core::Health::Healthy),
            s.count(lb_core::Health::Draining),
            s.count(lb_core::Health::Unhealthy),
        );
        let nonzero = |n: usize, tone: Tone| {
            Cell::toned(n.to_string(), if n > 0 { tone } else { Tone::Plain })
        };
        t.row(vec![
            Cell::plain(&s.key),
            Cell::toned(
                s.total().to_string(),
                if h == 0 { Tone::Bad } else { Tone::Plain },
            ),
            Cell::plain(h.to_string()),
            nonzero(d, Tone::Warn),
            nonzero(u, Tone::Bad),
            Cell::plain(zones.join(",")),
            Cell::plain(s.subscribers.to_string()),
            Cell::plain(&s.version),
        ]);
    }
    t.render(color)
}

/// `edsctl endpoints`.
pub fn endpoints(view: &EndpointsView, wide: bool, color: bool) -> String {
    if view.endpoints.is_empty() {
        return format!("No endpoints for {}.\n", view.canonical);
    }
    let mut headers = vec![
        "ADDRESS",
        "POD",
        "ZONE",
        "HEALTH",
        "WEIGHT",
        "READY-SINCE",
        "DRAIN-DEADLINE",
        "LABELS",
    ];
    if wide {
        headers.insert(2, "NODE");
    }
    let mut t = Table::new(&headers);
    for e in &view.endpoints {
        let labels: Vec<String> = e.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut row = vec![
            Cell::plain(&e.address),
            opt(&e.pod),
            opt(&e.zone),
            Cell::toned(&e.health, health_tone(&e.health)),
            Cell::plain(e.weight.to_string()),
            opt(&e.ready_since),
            opt(&e.drain_deadline),
            Cell::plain(labels.join(",")),
        ];
        if wide {
            row.insert(2, opt(&e.node));
        }
        t.row(row);
    }
    t.render(color)
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(max.saturating_sub(3)).collect();
        out.push_str("...");
        out
    }
}

fn verdict_tone(v: ClientVerdict) -> Tone {
    match v {
        ClientVerdict::Acked => Tone::Good,
        ClientVerdict::Pending | ClientVerdict::NotSent => Tone::Warn,
        ClientVerdict::Nacked => Tone::Bad,
    }
}

/// `edsctl clients`: one row per (stream, type, resource); ages are
/// measured from the server's own clock (`view.at`).
pub fn clients(view: &ClientsView, wide: bool, color: bool) -> String {
    if view.clients.is_empty() {
        return "No connected clients.\n".to_owned();
    }
    let now = view.at.0;
    let mut headers = vec![
        "STREAM",
        "NODE",
        "ZONE",
        "TYPE",
        "RESOURCE",
        "ACKED",
        "STATE",
        "LAST-ACK",
        "LAST-NACK",
    ];
    if wide {
        headers.extend([
            "SENT",
            "PROTOCOL",
            "PEER",
            "CONNECTED",
            "ACKS",
            "NACKS",
            "QUEUED",
            "SUPERSEDED",
        ]);
    }
    let mut t = Table::new(&headers);
    for c in &view.clients {
        let s = &c.stats;
        let protocol = match s.protocol {
            Protocol::Sotw => "sotw",
            Protocol::Delta => "delta",
        };
        let protocol = format!("{protocol}/{}", s.stream_kind());
        let mut rows = 0;
        for ty in &s.types {
            let mut names: Vec<&String> = ty
                .subscribed
                .iter()
                .chain(ty.sent_resources.keys())
                .collect();
            names.sort();
            names.dedup();
            if names.is_empty() && ty.wildcard {
                // A wildcard subscription with nothing sent yet still shows.
                names.push(&ty.type_url);
            }
            for name in names {
                let (verdict, reason) = resource_state(ty, name);
                let resource = if *name == ty.type_url {
                    "*".to_owned()
                } else {
                    name.clone()
                };
                let reason = reason.unwrap_or_default();
                let mut row = vec![
                    Cell::plain(c.id.to_string()),
                    Cell::plain(&s.client.node_id),
                    opt(&s.client.zone),
                    Cell::plain(ty.short_type()),
                    Cell::plain(resource),
                    Cell::plain(ty.acked_resources.get(name).cloned().unwrap_or_default()),
                    Cell::toned(verdict.as_str(), verdict_tone(verdict)),
                    Cell::plain(
                        ty.last_ack_at
                            .map(|a| format!("{} ago", age_since(a.0, now)))
                            .unwrap_or_default(),
                    ),
                    Cell::toned(if wide { reason } else { shorten(&reason, 40) }, Tone::Bad),
                ];
                if wide {
                    row.extend([
                        Cell::plain(ty.sent_resources.get(name).cloned().unwrap_or_default()),
                        Cell::plain(&protocol),
                        opt(&c.peer),
                        Cell::plain(format!("{} ago", age_since(c.connected_at.0, now))),
                        Cell::plain(ty.counters.acks.to_string()),
                        Cell::plain(ty.counters.nacks.to_string()),
                        backlog(c.backlog.queued),
                        Cell::plain(c.backlog.superseded.to_string()),
                    ]);
                }
                t.row(row);
                rows += 1;
            }
        }
        if rows == 0 {
            // Connected, but subscribed to nothing yet.
            let mut row = vec![
                Cell::plain(c.id.to_string()),
                Cell::plain(&s.client.node_id),
                opt(&s.client.zone),
                Cell::plain(""),
                Cell::plain(""),
                Cell::plain(""),
                Cell::toned("no subscriptions", Tone::Warn),
                Cell::plain(""),
                Cell::plain(""),
            ];
            if wide {
                row.extend([
                    Cell::plain(""),
                    Cell::plain(&protocol),
                    opt(&c.peer),
                    Cell::plain(format!("{} ago", age_since(c.connected_at.0, now))),
                    Cell::plain("0"),
                    Cell::plain("0"),
                    backlog(c.backlog.queued),
                    Cell::plain(c.backlog.superseded.to_string()),
                ]);
            }
            t.row(row);
        }
    }
    t.render(color)
}

/// A stream's queued responses: more than one means the client is not
/// reading what the server sends (each queued response is one type's
/// latest state or a delta increment).
fn backlog(queued: usize) -> Cell {
    let tone = if queued > 1 { Tone::Warn } else { Tone::Plain };
    Cell::toned(queued.to_string(), tone)
}

/// `edsctl diff`.
pub fn diff(report: &DiffReport, wide: bool, color: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} (server version {})",
        paint(&report.canonical, Tone::Header, color),
        report.server_version
    );
    out.push('\n');
    if report.endpoints.is_empty() {
        out.push_str("No endpoints in Kubernetes or on the server.\n");
    } else {
        let mut t = Table::new(&["ADDRESS", "POD", "KUBERNETES", "SERVER", "RESULT"]);
        for e in &report.endpoints {
            let tone = if e.verdict.agrees() {
                Tone::Good
            } else {
                Tone::Bad
            };
            t.row(vec![
                Cell::plain(&e.address),
                opt(&e.pod),
                Cell::plain(e.kubernetes.map(|k| k.as_str()).unwrap_or_default()),
                Cell::plain(e.server.clone().unwrap_or_default()),
                Cell::toned(e.verdict.as_str(), tone),
            ]);
        }
        out.push_str(&t.render(color));
    }
    out.push('\n');
    if report.clients.is_empty() {
        out.push_str("No client subscribes to this service key.\n");
    } else {
        let mut headers = vec![
            "STREAM", "NODE", "ZONE", "TYPE", "RESOURCE", "ACKED", "RESULT", "REASON",
        ];
        if wide {
            headers.insert(5, "SENT");
        }
        let mut t = Table::new(&headers);
        for c in &report.clients {
            let mut row = vec![
                Cell::plain(c.stream.to_string()),
                Cell::plain(&c.node_id),
                opt(&c.zone),
                Cell::plain(&c.type_),
                Cell::plain(&c.resource),
                opt(&c.acked),
                Cell::toned(c.verdict.as_str(), verdict_tone(c.verdict)),
                Cell::toned(
                    c.reason
                        .as_deref()
                        .map(|r| if wide { r.to_owned() } else { shorten(r, 60) })
                        .unwrap_or_default(),
                    Tone::Bad,
                ),
            ];
            if wide {
                row.insert(5, opt(&c.sent));
            }
            t.row(row);
        }
        out.push_str(&t.render(color));
    }
    out.push('\n');
    if report.agree {
        let _ = writeln!(
            out,
            "{}: Kubernetes, eds-server and every client agree.",
            paint("AGREE", Tone::Good, color)
        );
    } else {
        let _ = writeln!(
            out,
            "{}: {} endpoint(s) and {} client resource(s) disagree.",
            paint("DISAGREE", Tone::Bad, color),
            report.endpoint_disagreements(),
            report.client_disagreements()
        );
    }
    out
}

/// `edsctl simulate`: share of picks per endpoint, one column per policy.
pub fn simulate(report: &SimReport, wide: bool, color: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: {} requests, {} in flight, from zone {}, hash key {}, seed {}",
        paint(&report.key, Tone::Header, color),
        report.requests,
        report.concurrency,
        report
            .from_zone
            .as_deref()
            .unwrap_or("(none: no zone affinity)"),
        report.hash_key.as_deref().unwrap_or("(one per request)"),
        report.seed
    );
    out.push('\n');
    if report.endpoints.is_empty() {
        out.push_str("No endpoints: every pick fails.\n");
        return out;
    }
    let mut headers: Vec<&str> = vec!["ENDPOINT", "POD", "ZONE", "HEALTH"];
    headers.extend(report.results.iter().map(|r| r.policy.as_str()));
    let upper: Vec<String> = headers.iter().map(|h| h.to_uppercase()).collect();
    let upper_refs: Vec<&str> = upper.iter().map(String::as_str).collect();
    let mut t = Table::new(&upper_refs);
    let total = report.requests.max(1) as f64;
    for (i, e) in report.endpoints.iter().enumerate() {
        let mut row = vec![
            Cell::plain(&e.address),
            opt(&e.pod),
            Cell::plain(zone_name(&e.zone)),
            Cell::toned(&e.health, health_tone(&e.health)),
        ];
        for r in &report.results {
            let n = r.picks.get(i).copied().unwrap_or(0);
            let share = 100.0 * n as f64 / total;
            row.push(Cell::plain(if wide {
                format!("{share:.1}% ({n})")
            } else {
                format!("{share:.1}%")
            }));
        }
        t.row(row);
    }
    out.push_str(&t.render(color));
    out.push('\n');
    let mut t = Table::new(&["POLICY", "TIER", "REASONS", "ZONE-SHARES", "FAILED"]);
    for r in &report.results {
        let reasons: Vec<String> = r.reasons.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let shares: Vec<String> = r
            .zone_shares
            .iter()
            .map(|(z, s)| format!("{}={:.1}%", zone_name(z), 100.0 * s))
            .collect();
        let tier = serde_json::to_value(r.tier)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        t.row(vec![
            Cell::plain(&r.policy),
            Cell::plain(tier),
            Cell::plain(reasons.join(",")),
            Cell::plain(shares.join(",")),
            Cell::toned(
                r.failed.to_string(),
                if r.failed > 0 { Tone::Bad } else { Tone::Plain },
            ),
        ]);
    }
    out.push_str(&t.render(color));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_on_text_not_on_colour_codes() {
        let mut t = Table::new(&["A", "B"]);
        t.row(vec![Cell::toned("HEALTHY", Tone::Good), Cell::plain("x")]);
        t.row(vec![Cell::plain("1"), Cell::plain("")]);
        assert_eq!(t.render(false), "A         B\nHEALTHY   x\n1         -\n");
        let coloured = t.render(true);
        assert!(
            coloured.contains("\x1b[32mHEALTHY\x1b[0m   x"),
            "{coloured:?}"
        );
    }

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(age(Duration::from_secs(45)), "45s");
        assert_eq!(age(Duration::from_secs(192)), "3m12s");
        assert_eq!(age(Duration::from_secs(7500)), "2h5m");
        assert_eq!(age(Duration::from_secs(273_600)), "3d4h");
        assert_eq!(shorten("abcdefgh", 6), "abc...");
    }
}

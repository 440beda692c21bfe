//! `edsctl watch`: the changes between two polls of one service key, as
//! timestamped `+` / `-` / `~` events. Pure: the command polls and prints.
//!
//! ```text
//!  poll (version v1) ──┐
//!                      ├─ same version: nothing
//!  poll (version v2) ──┴─ EndpointSet::diff ─> [Event { at, op, address, changes }]
//!
//!  2024-05-01T12:00:01.5Z  + 10.1.0.7:9090   pod=echo-3 zone=zone-a HEALTHY
//!  2024-05-01T12:00:03Z    ~ 10.1.0.5:9090   health HEALTHY -> DRAINING, drain_deadline - -> 2024-05-01T12:00:33Z
//!  2024-05-01T12:00:33Z    - 10.1.0.5:9090   pod=echo-1 zone=zone-a DRAINING
//! ```
//!
//! Polling, not a stream: the admin API is plain HTTP and a content version
//! makes "did anything change" one string comparison. Not here: the poll
//! loop, its interval, or Ctrl-C.

use std::time::SystemTime;

use lb_core::{Endpoint, EndpointSet};
use serde::Serialize;

use crate::model::EndpointView;

/// What happened to one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Op {
    /// A new address.
    #[serde(rename = "+")]
    Added,
    /// An address that went away.
    #[serde(rename = "-")]
    Removed,
    /// An address whose health or metadata changed.
    #[serde(rename = "~")]
    Changed,
}

impl Op {
    /// `+`, `-` or `~`.
    pub fn symbol(self) -> &'static str {
        match self {
            Op::Added => "+",
            Op::Removed => "-",
            Op::Changed => "~",
        }
    }
}

/// One change, as printed (one line) and as JSON (one object per line).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// When the poll that saw it ran (RFC 3339).
    pub at: String,
    /// The service key.
    pub key: String,
    /// The endpoint set's version after the change.
    pub version: String,
    /// What happened.
    pub op: Op,
    /// `ip:port`.
    pub address: String,
    /// Field changes (`~`), e.g. `health HEALTHY -> DRAINING`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<String>,
    /// The endpoint after the change (before it, for `-`).
    pub endpoint: EndpointView,
}

fn summary(e: &Endpoint) -> String {
    let mut parts = Vec::new();
    if let Some(pod) = &e.pod {
        parts.push(format!("pod={pod}"));
    }
    if let Some(zone) = &e.zone {
        parts.push(format!("zone={zone}"));
    }
    parts.push(e.health.as_str().to_owned());
    parts.join(" ")
}

fn field_changes(old: &Endpoint, new: &Endpoint) -> Vec<String> {
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
    let time = |t: Option<SystemTime>| t.map_or_else(|| "-".to_owned(), crate::model::format_time);
    let mut out = Vec::new();
    let mut field = |name: &str, a: String, b: String| {
        if a != b {
            out.push(format!("{name} {a} -> {b}"));
        }
    };
    field("health", old.health.to_string(), new.health.to_string());
    field("weight", old.weight.to_string(), new.weight.to_string());
    field("zone", opt(&old.zone), opt(&new.zone));
    field("node", opt(&old.node), opt(&new.node));
    field("pod", opt(&old.pod), opt(&new.pod));
    field("ready_since", time(old.ready_since), time(new.ready_since));
    field(
        "drain_deadline",
        time(old.drain_deadline),
        time(new.drain_deadline),
    );
    let labels = |e: &Endpoint| {
        e.labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    field("labels", labels(old), labels(new));
    out
}

/// The events between `old` and `new`, removals first, then changes, then
/// additions, each by address.
pub fn events(key: &str, old: &EndpointSet, new: &EndpointSet, now: SystemTime) -> Vec<Event> {
    let diff = old.diff(new);
    let at = crate::model::format_time(now);
    let version = new.version().to_string();
    let event = |op, e: &Endpoint, changes| Event {
        at: at.clone(),
        key: key.to_owned(),
        version: version.clone(),
        op,
        address: e.address.to_string(),
        changes,
        endpoint: EndpointView::from_endpoint(e),
    };
    let mut out = Vec::new();
    out.extend(
        diff.removed
            .iter()
            .map(|e| event(Op::Removed, e, Vec::new())),
    );
    out.extend(
        diff.changed
            .iter()
            .map(|(a, b)| event(Op::Changed, b, field_changes(a, b))),
    );
    out.extend(diff.added.iter().map(|e| event(Op::Added, e, Vec::new())));
    out
}

/// One event as a line of text (no newline).
pub fn line(e: &Event) -> String {
    let detail = match e.op {
        Op::Changed => e.changes.join(", "),
        Op::Added | Op::Removed => e
            .endpoint
            .to_endpoint()
            .map(|ep| summary(&ep))
            .unwrap_or_else(|_| e.endpoint.health.clone()),
    };
    format!("{}  {} {}  {}", e.at, e.op.symbol(), e.address, detail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_core::Health;
    use std::net::SocketAddr;
    use std::time::Duration;

    fn ep(last: u8, health: Health) -> Endpoint {
        Endpoint::new(SocketAddr::from(([10, 0, 0, last], 9090)))
            .with_zone("zone-a")
            .with_pod(format!("echo-{last}"))
            .with_health(health)
    }

    #[test]
    fn additions_removals_and_changes_become_lines() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_714_564_800);
        let old = EndpointSet::merge(vec![ep(1, Health::Healthy), ep(2, Health::Healthy)]);
        let mut drained = ep(2, Health::Draining);
        drained.drain_deadline = Some(t0 + Duration::from_secs(30));
        let new = EndpointSet::merge(vec![drained, ep(3, Health::Healthy)]);
        let lines: Vec<String> = events("echo.demo:8080", &old, &new, t0)
            .iter()
            .map(line)
            .collect();
        assert_eq!(
            lines,
            [
                "2024-05-01T12:00:00Z  - 10.0.0.1:9090  pod=echo-1 zone=zone-a HEALTHY",
                "2024-05-01T12:00:00Z  ~ 10.0.0.2:9090  health HEALTHY -> DRAINING, drain_deadline - -> 2024-05-01T12:00:30Z",
                "2024-05-01T12:00:00Z  + 10.0.0.3:9090  pod=echo-3 zone=zone-a HEALTHY",
            ]
        );
        assert!(events("k", &new, &new, t0).is_empty());
        let json = serde_json::to_value(&events("k", &old, &new, t0)[0]).unwrap();
        assert_eq!(json["op"], "-");
    }
}

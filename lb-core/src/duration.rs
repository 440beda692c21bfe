//! Durations as people write them in flags and annotations: `250ms`, `5s`,
//! `2m`, `1h30m`, `1.5s`, ISO 8601's `PT5S`, or a bare number of seconds.
//!
//! One parser for every crate (eds-server's flags and Service annotations,
//! edsctl's flags), built on jiff's "friendly" duration grammar rather than
//! hand-written unit tables. The bare number is ours: the flags accepted it
//! before, and `3` meaning three seconds is what a reader expects.
//!
//! Not here: formatting for output, or negative spans (a timeout, window or
//! ramp below zero is a mistake, reported as one).

use std::time::Duration;

/// A text that is not a usable duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a duration (examples: 250ms, 5s, 2m, 1h30m): {reason}")]
pub struct DurationError {
    /// The rejected text.
    pub input: String,
    /// Why.
    pub reason: String,
}

/// Parses `s` (surrounding space ignored).
pub fn parse(s: &str) -> Result<Duration, DurationError> {
    let text = s.trim();
    let err = |reason: String| DurationError {
        input: s.to_owned(),
        reason,
    };
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let secs: f64 = text.parse().map_err(|_| err("not a number".into()))?;
        return Duration::try_from_secs_f64(secs).map_err(|e| err(e.to_string()));
    }
    let span: jiff::SignedDuration = text.parse().map_err(|e: jiff::Error| err(e.to_string()))?;
    if span.is_negative() {
        return Err(err("negative".into()));
    }
    Duration::try_from(span).map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forms_flags_and_annotations_use() {
        for (text, want) in [
            ("250ms", Duration::from_millis(250)),
            ("5s", Duration::from_secs(5)),
            ("2m", Duration::from_secs(120)),
            ("1h", Duration::from_secs(3600)),
            ("1h30m", Duration::from_secs(5400)),
            ("1.5s", Duration::from_millis(1500)),
            (" 10s ", Duration::from_secs(10)),
            ("3", Duration::from_secs(3)),
            ("0.25", Duration::from_millis(250)),
            ("PT5S", Duration::from_secs(5)),
            ("0s", Duration::ZERO),
        ] {
            assert_eq!(parse(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn mistakes_are_refused_with_the_input() {
        for text in ["", "soon", "5y", "5 parsecs", "-5s", "1..5", "ms"] {
            let e = parse(text).expect_err(text);
            assert_eq!(e.input, text);
            assert!(e.to_string().contains("is not a duration"), "{e}");
        }
    }
}

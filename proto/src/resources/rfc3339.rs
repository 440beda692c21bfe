//! RFC 3339 timestamps for endpoint metadata (`ready_since`, `drain_deadline`),
//! through jiff (the time crate k8s-openapi already brings).
//!
//! [`format()`] always writes UTC with a `Z` suffix and only as many fraction
//! digits as needed (like Go's `time.RFC3339Nano`), so a Kubernetes time,
//! which has whole seconds, stays `2024-05-01T12:00:00Z`; times outside
//! `0000-01-01T00:00:00Z..=9999-12-30T22:00:00Z` (four-digit years, within
//! jiff's range) are clamped to the nearest end.
//! [`parse()`] accepts what jiff's Temporal grammar accepts for an instant:
//! RFC 3339 and the ISO 8601 forms around it (numeric offsets with or
//! without a colon, a space for the `T`), because other tools write them.
//!
//! Not a calendar: time zones and leap seconds are jiff's business, and an
//! instant without an offset is refused (it names no point in time).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `0000-01-01T00:00:00Z` in seconds since the Unix epoch.
const MIN_SECS: i64 = -62_167_219_200;
/// The latest instant jiff represents, `9999-12-30T22:00:00Z` (it keeps
/// room for offsets), in seconds since the Unix epoch.
const MAX_SECS: i64 = 253_402_207_200;
const NANOS_PER_SEC: u32 = 1_000_000_000;

/// A string that is not an RFC 3339 timestamp.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not an RFC 3339 timestamp (e.g. 2024-05-01T12:00:00Z): {reason}")]
pub struct Rfc3339Error {
    /// The rejected input.
    pub input: String,
    /// What is wrong with it, in jiff's words.
    pub reason: String,
}

/// Formats a time as RFC 3339 in UTC, e.g. `2024-05-01T12:00:00.25Z`.
pub fn format(t: SystemTime) -> String {
    let (secs, nanos) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (
            i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            d.subsec_nanos(),
        ),
        Err(e) => {
            let d = e.duration();
            let secs = -i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            match d.subsec_nanos() {
                0 => (secs, 0),
                n => (secs - 1, NANOS_PER_SEC - n),
            }
        }
    };
    let (secs, nanos) = if secs < MIN_SECS {
        (MIN_SECS, 0)
    } else if secs >= MAX_SECS {
        (MAX_SECS, 0)
    } else {
        (secs, nanos)
    };
    let nanos = i32::try_from(nanos).expect("below a second");
    jiff::Timestamp::new(secs, nanos)
        .expect("years 0000..=9999 are in jiff's range")
        .to_string()
}

/// Parses an RFC 3339 timestamp (any offset) into a point in time.
pub fn parse(s: &str) -> Result<SystemTime, Rfc3339Error> {
    let err = |reason: String| Rfc3339Error {
        input: s.to_owned(),
        reason,
    };
    let ts: jiff::Timestamp = s.parse().map_err(|e: jiff::Error| err(e.to_string()))?;
    let d = ts.as_duration();
    let magnitude = Duration::new(d.as_secs().unsigned_abs(), d.subsec_nanos().unsigned_abs());
    if d.is_negative() {
        UNIX_EPOCH.checked_sub(magnitude)
    } else {
        UNIX_EPOCH.checked_add(magnitude)
    }
    .ok_or_else(|| err("out of this platform's time range".to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(secs: i64, nanos: u32) -> SystemTime {
        if secs >= 0 {
            UNIX_EPOCH + Duration::new(secs.unsigned_abs(), nanos)
        } else {
            UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
                + Duration::from_nanos(nanos.into())
        }
    }

    #[test]
    fn known_instants() {
        let cases: &[(i64, u32, &str)] = &[
            (0, 0, "1970-01-01T00:00:00Z"),
            (951_827_696, 789_000_000, "2000-02-29T12:34:56.789Z"),
            (-1, 500_000_000, "1969-12-31T23:59:59.5Z"),
            (1_714_564_800, 0, "2024-05-01T12:00:00Z"),
            (1_714_564_800, 1, "2024-05-01T12:00:00.000000001Z"),
            (MIN_SECS, 0, "0000-01-01T00:00:00Z"),
            (MAX_SECS, 0, "9999-12-30T22:00:00Z"),
            (-2_208_988_800, 0, "1900-01-01T00:00:00Z"),
        ];
        for &(secs, nanos, text) in cases {
            assert_eq!(format(at(secs, nanos)), text);
            assert_eq!(parse(text), Ok(at(secs, nanos)), "{text}");
        }
    }

    #[test]
    fn clamps_outside_four_digit_years() {
        assert_eq!(format(at(MAX_SECS + 1, 0)), "9999-12-30T22:00:00Z");
        assert_eq!(format(at(MIN_SECS - 1, 0)), "0000-01-01T00:00:00Z");
    }

    #[test]
    fn accepts_offsets_and_lower_case() {
        let noon = at(1_714_564_800, 0);
        for text in [
            "2024-05-01T13:00:00+01:00",
            "2024-05-01T07:30:00-04:30",
            "2024-05-01t12:00:00z",
            "2024-05-01T12:00:00.000000000Z",
        ] {
            assert_eq!(parse(text), Ok(noon), "{text}");
        }
    }

    #[test]
    fn the_iso_8601_forms_around_rfc3339_are_read_too() {
        let noon = at(1_714_564_800, 0);
        assert_eq!(parse("2024-05-01 12:00:00Z"), Ok(noon));
        assert_eq!(parse("2024-05-01T13:00:00+0100"), Ok(noon));
        // jiff reads a leap second as the second before it.
        assert_eq!(parse("2016-12-31T23:59:60Z"), Ok(at(1_483_228_799, 0)));
    }

    #[test]
    fn rejects_with_a_reason() {
        for text in [
            "",
            "2024-05-01",
            "2024-05-01T12:00:00",
            "2024-05-01T12:00:00.Z",
            "2024-05-01T12:00:00Zjunk",
            "2023-02-29T00:00:00Z",
            "2024-13-01T00:00:00Z",
            "2024-04-31T00:00:00Z",
            "2024-05-00T00:00:00Z",
            "2024-05-01T24:00:00Z",
            "2024-05-01T12:60:00Z",
            "+024-05-01T12:00:00Z",
            "２０２４-05-01T12:00:00Z",
        ] {
            let err = parse(text).expect_err(text);
            assert_eq!(err.input, text);
            assert!(err.to_string().contains("RFC 3339"));
        }
    }

    proptest! {
        #[test]
        fn format_then_parse_is_identity(secs in MIN_SECS..MAX_SECS, nanos in 0u32..NANOS_PER_SEC) {
            let t = at(secs, nanos);
            let text = format(t);
            prop_assert_eq!(text.len(), 20 + if nanos == 0 { 0 } else { 1 + format!("{nanos:09}").trim_end_matches('0').len() });
            prop_assert_eq!(parse(&text), Ok(t));
        }

        #[test]
        fn parsing_never_panics(s in "\\PC{0,40}") {
            let _ = parse(&s);
        }
    }
}

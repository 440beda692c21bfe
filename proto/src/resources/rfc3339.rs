//! RFC 3339 timestamps for endpoint metadata (`ready_since`, `drain_deadline`).
//!
//! [`format()`] always writes UTC with a `Z` suffix and only as many fraction
//! digits as needed (like Go's `time.RFC3339Nano`), so a Kubernetes time,
//! which has whole seconds, stays `2024-05-01T12:00:00Z`. [`parse()`]
//! accepts any RFC 3339 `date-time`, including numeric offsets, because
//! other tools may write them.
//!
//! Dates are converted with Howard Hinnant's `civil_from_days` /
//! `days_from_civil` algorithms (proleptic Gregorian calendar). This module
//! is not a calendar library: no time zones, no leap seconds (`:60` is
//! rejected, as Go's `time.Parse` does), and only the four-digit years
//! RFC 3339 can express; [`format()`] clamps times outside 0000..=9999 to the
//! nearest end.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `0000-01-01T00:00:00Z` in seconds since the Unix epoch.
const MIN_SECS: i64 = -62_167_219_200;
/// `9999-12-31T23:59:59Z` in seconds since the Unix epoch.
const MAX_SECS: i64 = 253_402_300_799;
const NANOS_PER_SEC: u32 = 1_000_000_000;

/// A string that is not an RFC 3339 timestamp.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not an RFC 3339 timestamp (e.g. 2024-05-01T12:00:00Z): {reason}")]
pub struct Rfc3339Error {
    /// The rejected input.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Formats a time as RFC 3339 in UTC, e.g. `2024-05-01T12:00:00.25Z`.
pub fn format(t: SystemTime) -> String {
    let (mut secs, mut nanos) = split(t);
    if secs < MIN_SECS {
        (secs, nanos) = (MIN_SECS, 0);
    } else if secs > MAX_SECS {
        (secs, nanos) = (MAX_SECS, NANOS_PER_SEC - 1);
    }
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    let mut out = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    );
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
    out.push('Z');
    out
}

/// Parses an RFC 3339 `date-time` (`T` or `t`, `Z`/`z` or `±hh:mm`, any
/// number of fraction digits; digits past nanoseconds are truncated).
pub fn parse(s: &str) -> Result<SystemTime, Rfc3339Error> {
    let err = |reason| Rfc3339Error {
        input: s.to_owned(),
        reason,
    };
    let b = s.as_bytes();
    if b.len() < 20 {
        return Err(err("too short"));
    }
    let num = |from: usize, to: usize| -> Result<i64, Rfc3339Error> {
        let digits = &b[from..to];
        if !digits.iter().all(u8::is_ascii_digit) {
            return Err(err("expected digits"));
        }
        Ok(digits.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let sep = |at: usize, allowed: &[u8], reason| {
        if allowed.contains(&b[at]) {
            Ok(())
        } else {
            Err(err(reason))
        }
    };
    let year = num(0, 4)?;
    sep(4, b"-", "expected '-' after the year")?;
    let month = num(5, 7)?;
    sep(7, b"-", "expected '-' after the month")?;
    let day = num(8, 10)?;
    sep(10, b"Tt", "expected 'T' between date and time")?;
    let hour = num(11, 13)?;
    sep(13, b":", "expected ':' after the hour")?;
    let minute = num(14, 16)?;
    sep(16, b":", "expected ':' after the minutes")?;
    let second = num(17, 19)?;

    if !(1..=12).contains(&month) {
        return Err(err("month out of range"));
    }
    if day < 1 || day > days_in_month(year, month) {
        return Err(err("day out of range for the month"));
    }
    if hour > 23 || minute > 59 {
        return Err(err("hour or minute out of range"));
    }
    if second > 59 {
        return Err(err("second out of range (leap seconds are not supported)"));
    }

    let mut rest = &b[19..];
    let mut nanos: u32 = 0;
    if let [b'.', tail @ ..] = rest {
        let n = tail.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return Err(err("expected digits after '.'"));
        }
        for (i, d) in tail[..n].iter().enumerate().take(9) {
            nanos += u32::from(d - b'0') * 10u32.pow(8 - i as u32);
        }
        rest = &tail[n..];
    }
    let offset = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let two = |a: u8, b: u8| -> Result<i64, Rfc3339Error> {
                if a.is_ascii_digit() && b.is_ascii_digit() {
                    Ok(i64::from(a - b'0') * 10 + i64::from(b - b'0'))
                } else {
                    Err(err("expected digits in the offset"))
                }
            };
            let (oh, om) = (two(*h1, *h2)?, two(*m1, *m2)?);
            if oh > 23 || om > 59 {
                return Err(err("offset out of range"));
            }
            let offset = oh * 3600 + om * 60;
            if *sign == b'-' { -offset } else { offset }
        }
        _ => return Err(err("expected 'Z' or an offset like +01:00 at the end")),
    };

    let secs =
        days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset;
    let time = if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::new(secs.unsigned_abs(), nanos))
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(secs.unsigned_abs()))
            .and_then(|t| t.checked_add(Duration::from_nanos(u64::from(nanos))))
    };
    time.ok_or_else(|| err("out of the range this platform can represent"))
}

/// Seconds (floored) and nanoseconds since the Unix epoch, also before it.
fn split(t: SystemTime) -> (i64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (
            i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            d.subsec_nanos(),
        ),
        Err(before) => {
            let d = before.duration();
            let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            match d.subsec_nanos() {
                0 => (-secs, 0),
                n => (-secs - 1, NANOS_PER_SEC - n),
            }
        }
    }
}

/// (year, month, day) of a day count since 1970-01-01 (Hinnant, `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March-based
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Day count since 1970-01-01 of a civil date (Hinnant, `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
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
            (MAX_SECS, 999_999_999, "9999-12-31T23:59:59.999999999Z"),
            (-2_208_988_800, 0, "1900-01-01T00:00:00Z"),
        ];
        for &(secs, nanos, text) in cases {
            assert_eq!(format(at(secs, nanos)), text);
            assert_eq!(parse(text), Ok(at(secs, nanos)), "{text}");
        }
    }

    #[test]
    fn clamps_outside_four_digit_years() {
        assert_eq!(
            format(at(MAX_SECS + 1, 0)),
            "9999-12-31T23:59:59.999999999Z"
        );
        assert_eq!(format(at(MIN_SECS - 1, 0)), "0000-01-01T00:00:00Z");
    }

    #[test]
    fn accepts_offsets_lower_case_and_long_fractions() {
        let noon = at(1_714_564_800, 0);
        for text in [
            "2024-05-01T13:00:00+01:00",
            "2024-05-01T07:30:00-04:30",
            "2024-05-01t12:00:00z",
            "2024-05-01T12:00:00.0000000000Z",
        ] {
            assert_eq!(parse(text), Ok(noon), "{text}");
        }
        assert_eq!(
            parse("2024-05-01T12:00:00.1234567891Z"),
            Ok(at(1_714_564_800, 123_456_789)),
            "digits past nanoseconds are truncated"
        );
    }

    #[test]
    fn rejects_with_a_reason() {
        for text in [
            "",
            "2024-05-01",
            "2024-05-01 12:00:00Z",
            "2024-05-01T12:00:00",
            "2024-05-01T12:00:00+0100",
            "2024-05-01T12:00:00.Z",
            "2024-05-01T12:00:00Zjunk",
            "2023-02-29T00:00:00Z",
            "2024-13-01T00:00:00Z",
            "2024-04-31T00:00:00Z",
            "2024-05-00T00:00:00Z",
            "2024-05-01T24:00:00Z",
            "2024-05-01T12:60:00Z",
            "2016-12-31T23:59:60Z",
            "2024-05-01T12:00:00+24:00",
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
        fn format_then_parse_is_identity(secs in MIN_SECS..=MAX_SECS, nanos in 0u32..NANOS_PER_SEC) {
            let t = at(secs, nanos);
            let text = format(t);
            prop_assert_eq!(text.len(), 20 + if nanos == 0 { 0 } else { 1 + format!("{nanos:09}").trim_end_matches('0').len() });
            prop_assert_eq!(parse(&text), Ok(t));
        }

        #[test]
        fn calendar_conversions_agree(days in -719_528i64..=2_932_896) {
            let (y, m, d) = civil_from_days(days);
            prop_assert!((1..=12).contains(&m) && d >= 1 && d <= days_in_month(y, m));
            prop_assert_eq!(days_from_civil(y, m, d), days);
        }

        #[test]
        fn parsing_never_panics(s in "\\PC{0,40}") {
            let _ = parse(&s);
        }
    }
}

//! Time as the database stores it: whole milliseconds since the Unix epoch (every `*_ms` column),
//! durations turned into such milliseconds, and such milliseconds as a UTC date and time (written
//! and read back). The one place these conversions are written.
//!
//! The calendar is the `time` crate's (actix-web builds it already, so it costs no crate); it
//! replaced hand-written day-count arithmetic with the same output for every day from 1900
//! to 2400, except that a date that does not exist (February 30th) is now refused instead of
//! rolled over. Neither function is on a hot path: a dashboard page writes one time per row
//! shown (at most 50), the CLI a few, and a dashboard filter reads one per request.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time};

/// Milliseconds since the Unix epoch now; 0 if the clock is set before 1970.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(millis)
        .unwrap_or(0)
}

/// A duration in whole milliseconds, saturating at `i64::MAX` (durations that long only come
/// from "never" settings).
pub fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// `YYYY-MM-DD HH:MM:SS` of a time (UTC). A time beyond the calendar's years ±9999 (no stored
/// time is) is shown as its milliseconds.
pub fn utc_text(ms: i64) -> String {
    match OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000)) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => format!("{ms} ms since 1970"),
    }
}

/// Reads `YYYY-MM-DDTHH:MM[:SS]` (a `datetime-local` field, taken as UTC) or
/// `YYYY-MM-DD HH:MM[:SS]` or `YYYY-MM-DD` (years 1970 to 9999) into unix ms. A date that
/// does not exist (February 30th) is refused.
pub fn parse_utc(text: &str) -> Result<i64, String> {
    let bad = || format!("`{text}` is not a time like 2026-12-02T14:30 (UTC)");
    let text = text.trim();
    let (date, time) = match text.split_once(['T', ' ']) {
        Some((d, t)) => (d, t),
        None => (text, "00:00"),
    };
    let mut date_parts = date.split('-').map(|p| p.parse::<i64>());
    let (Some(Ok(y)), Some(Ok(m)), Some(Ok(d)), None) = (
        date_parts.next(),
        date_parts.next(),
        date_parts.next(),
        date_parts.next(),
    ) else {
        return Err(bad());
    };
    let mut time_parts = time.split(':').map(|p| p.parse::<i64>());
    let (Some(Ok(hh)), Some(Ok(mm))) = (time_parts.next(), time_parts.next()) else {
        return Err(bad());
    };
    let ss = match time_parts.next() {
        Some(Ok(s)) => s,
        Some(Err(_)) => return Err(bad()),
        None => 0,
    };
    if !(1970..=9999).contains(&y) {
        return Err(bad());
    }
    let small = |n: i64| u8::try_from(n).ok();
    let date = small(m)
        .and_then(|m| Month::try_from(m).ok())
        .zip(small(d))
        .and_then(|(m, d)| Date::from_calendar_date(i32::try_from(y).ok()?, m, d).ok());
    let time = small(hh)
        .zip(small(mm))
        .zip(small(ss))
        .and_then(|((h, m), s)| Time::from_hms(h, m, s).ok());
    let (Some(date), Some(time)) = (date, time) else {
        return Err(bad());
    };
    Ok(PrimitiveDateTime::new(date, time)
        .assume_utc()
        .unix_timestamp()
        * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_truncates_and_saturates() {
        assert_eq!(millis(Duration::from_micros(1_999)), 1);
        assert_eq!(millis(Duration::MAX), i64::MAX);
        assert!(now_ms() > 1_700_000_000_000);
    }

    #[test]
    fn times_round_trip() {
        assert_eq!(utc_text(0), "1970-01-01 00:00:00");
        let at = parse_utc("2026-12-02T14:30").expect("valid");
        assert_eq!(utc_text(at), "2026-12-02 14:30:00");
        assert_eq!(
            parse_utc("2024-02-29 23:59:59").map(utc_text),
            Ok("2024-02-29 23:59:59".into())
        );
        assert!(parse_utc("yesterday").is_err());
        assert!(parse_utc("2026-13-01").is_err());
    }

    /// Representative times (checked against the hand-written conversions this module had
    /// before, over every day from 1900 to 2400, and against Python's `datetime`): before
    /// 1970, leap days (2000, 2024; not 2100), month and year ends, the last second of 9999.
    #[test]
    fn utc_text_of_representative_times() {
        for (ms, text) in [
            (0, "1970-01-01 00:00:00"),
            (-1, "1969-12-31 23:59:59"),
            (999, "1970-01-01 00:00:00"),
            (1_000, "1970-01-01 00:00:01"),
            (-86_400_001, "1969-12-30 23:59:59"),
            (-2_208_988_800_000, "1900-01-01 00:00:00"),
            (951_782_400_000, "2000-02-29 00:00:00"),
            (1_709_251_199_999, "2024-02-29 23:59:59"),
            (1_735_689_599_000, "2024-12-31 23:59:59"),
            (4_107_542_399_999, "2100-02-28 23:59:59"),
            (253_402_300_799_000, "9999-12-31 23:59:59"),
        ] {
            assert_eq!(utc_text(ms), text, "{ms}");
        }
        assert_eq!(utc_text(i64::MAX), format!("{} ms since 1970", i64::MAX));
    }

    /// The forms read, and what is refused: a time out of range, a date that does not exist
    /// (the hand-written code rolled February 30th over into March; refused now), or text
    /// that is not a date.
    #[test]
    fn parse_utc_reads_representative_times() {
        for (text, ms) in [
            ("1970-01-01", 0),
            ("2024-02-29", 1_709_164_800_000),
            ("2000-02-29 00:00", 951_782_400_000),
            ("2023-02-28T23:59:59", 1_677_628_799_000),
            ("2024-12-31T23:59:59", 1_735_689_599_000),
            ("2100-02-28", 4_107_456_000_000),
            ("9999-12-31T23:59:59", 253_402_300_799_000),
            (" 2026-12-02T14:30 ", 1_796_221_800_000),
            ("2026-1-5 7:5", 1_767_596_700_000),
        ] {
            assert_eq!(parse_utc(text), Ok(ms), "{text}");
        }
        for text in [
            "1969-12-31",
            "10000-01-01",
            "2026-13-01",
            "2026-00-10",
            "2026-12-00",
            "2026-12-32",
            "2023-02-29",
            "2100-02-29",
            "2026-04-31",
            "2026-02-30T10:00",
            "2026-12-02T24:00",
            "2026-12-02T14:60",
            "2026-12-02T14:30:60",
            "2026-12-02T14",
            "2026-12-02T14:30:xx",
            "2026-12",
            "2026-12-02-01",
            "",
            "yesterday",
            "-2026-12-02",
            "2026-12-02T-1:00",
        ] {
            assert_eq!(
                parse_utc(text),
                Err(format!(
                    "`{text}` is not a time like 2026-12-02T14:30 (UTC)"
                )),
                "{text}"
            );
        }
    }
}

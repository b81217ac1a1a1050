//! Time as the database stores it: whole milliseconds since the Unix epoch (every `*_ms` column),
//! durations turned into such milliseconds, and such milliseconds as a UTC date and time (written
//! and read back). The one place these conversions are written.

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

    /// The hand-written conversions this module had before it used the `time` crate, kept to
    /// compare with.
    mod hand_written {
        /// `YYYY-MM-DD HH:MM:SS` of a time (UTC).
        pub(super) fn utc_text(ms: i64) -> String {
            let secs = ms.div_euclid(1000);
            let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
            let t = secs.rem_euclid(86_400);
            format!(
                "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
                t / 3600,
                t % 3600 / 60,
                t % 60
            )
        }

        /// Reads `YYYY-MM-DDTHH:MM[:SS]` (a `datetime-local` field, taken as UTC) or
        /// `YYYY-MM-DD HH:MM[:SS]` or `YYYY-MM-DD` into unix ms.
        pub(super) fn parse_utc(text: &str) -> Result<i64, String> {
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
            if !(1..=12).contains(&m)
                || !(1..=31).contains(&d)
                || !(0..24).contains(&hh)
                || !(0..60).contains(&mm)
                || !(0..60).contains(&ss)
                || !(1970..=9999).contains(&y)
            {
                return Err(bad());
            }
            let days = days_from_civil(y, m, d);
            Ok(((days * 86_400) + hh * 3600 + mm * 60 + ss) * 1000)
        }

        /// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
        fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
            let y = if m <= 2 { y - 1 } else { y };
            let era = y.div_euclid(400);
            let yoe = y - era * 400;
            let mp = (m + 9) % 12;
            let doy = (153 * mp + 2) / 5 + d - 1;
            let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
            era * 146_097 + doe - 719_468
        }

        fn civil_from_days(z: i64) -> (i64, i64, i64) {
            let z = z + 719_468;
            let era = z.div_euclid(146_097);
            let doe = z - era * 146_097;
            let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
            let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
            let mp = (5 * doy + 2) / 153;
            let d = doy - (153 * mp + 2) / 5 + 1;
            let m = if mp < 10 { mp + 3 } else { mp - 9 };
            let y = yoe + era * 400 + i64::from(m <= 2);
            (y, m, d)
        }
    }

    /// Every day from 1900 to 2400 (leap years, 1900 and 2100 not among them, month ends,
    /// before 1970) at a time of day that moves through the day: the same text as before.
    #[test]
    fn utc_text_is_what_the_hand_written_code_wrote() {
        let first = -2_208_988_800_000_i64; // 1900-01-01
        let last = 13_569_465_600_000_i64; // 2400-01-01
        let mut ms = first;
        let mut compared = 0;
        while ms < last {
            assert_eq!(utc_text(ms), hand_written::utc_text(ms), "{ms}");
            ms += 86_400_000 + 1_013_017; // a day and a bit: every time of day in turn
            compared += 1;
        }
        assert!(compared > 180_000);
        for ms in [
            -1,
            0,
            1,
            999,
            1_000,
            -86_400_001,
            951_782_400_000,
            4_107_542_399_999,
        ] {
            assert_eq!(utc_text(ms), hand_written::utc_text(ms), "{ms}");
        }
    }

    /// Every valid date from 1970 to 2400 reads as before, as a date and with a time; so do
    /// the texts either way refused. Only dates that do not exist differ: they were rolled
    /// over into the next month and are now refused.
    #[test]
    fn parse_utc_reads_what_the_hand_written_code_read() {
        let mut ms = 0_i64;
        while ms < 13_569_465_600_000 {
            let date = utc_text(ms);
            let day = &date[..10];
            assert_eq!(parse_utc(day), hand_written::parse_utc(day), "{day}");
            let local = date.replacen(' ', "T", 1);
            assert_eq!(
                parse_utc(&local),
                hand_written::parse_utc(&local),
                "{local}"
            );
            assert_eq!(parse_utc(&local), Ok(ms - ms.rem_euclid(1000)), "{local}");
            ms += 86_400_000 + 1_013_017;
        }
        for text in [
            "2024-02-29",
            "2023-02-28T23:59:59",
            "2000-02-29 00:00",
            "2100-02-28",
            "1970-01-01",
            "9999-12-31T23:59:59",
            " 2026-12-02T14:30 ",
            "2026-1-5 7:5",
            "1969-12-31",
            "10000-01-01",
            "2026-13-01",
            "2026-00-10",
            "2026-12-00",
            "2026-12-32",
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
            assert_eq!(parse_utc(text), hand_written::parse_utc(text), "{text}");
        }
        for text in ["2023-02-29", "2100-02-29", "2026-04-31", "2026-02-30T10:00"] {
            assert!(hand_written::parse_utc(text).is_ok(), "{text}");
            assert!(parse_utc(text).is_err(), "{text}");
        }
    }
}

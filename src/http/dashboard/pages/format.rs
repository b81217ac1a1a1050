//! Text the pages show and links they build: times and durations in UTC, shortened text,
//! percent-encoded path segments and query values; and reading a time typed into a filter.

/// A path segment, percent-encoded (listener names are plain, but never trust that).
pub fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A query-string value, form-encoded.
pub fn query_value(s: &str) -> String {
    serde_urlencoded::to_string([("v", s)])
        .map(|e| e.trim_start_matches("v=").to_string())
        .unwrap_or_default()
}

pub(super) fn encode_pairs(pairs: &[(&str, String)]) -> String {
    serde_urlencoded::to_string(pairs).unwrap_or_default()
}

pub(super) fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let cut: String = text.chars().take(max).collect();
        format!("{cut}…")
    }
}

/// `HH:MM` of a time (UTC), for chart axes.
pub(super) fn clock(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let day_secs = secs.rem_euclid(86_400);
    format!("{:02}:{:02}", day_secs / 3600, day_secs % 3600 / 60)
}

/// `YYYY-MM-DD HH:MM:SS` of a time (UTC).
pub fn time_text(ms: i64) -> String {
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

/// A duration in words: `45 s`, `12 min`, `3.5 h`.
pub fn duration_text(ms: i64) -> String {
    let secs = ms / 1000;
    if secs < 120 {
        format!("{secs} s")
    } else if secs < 7200 {
        format!("{} min", secs / 60)
    } else {
        format!("{:.1} h", secs as f64 / 3600.0)
    }
}

/// Reads `YYYY-MM-DDTHH:MM[:SS]` (a `datetime-local` field, taken as UTC) or
/// `YYYY-MM-DD HH:MM[:SS]` or `YYYY-MM-DD` into unix ms.
pub fn parse_time(text: &str) -> Result<i64, String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip() {
        assert_eq!(time_text(0), "1970-01-01 00:00:00");
        let at = parse_time("2026-12-02T14:30").expect("valid");
        assert_eq!(time_text(at), "2026-12-02 14:30:00");
        assert_eq!(
            parse_time("2024-02-29 23:59:59").map(time_text),
            Ok("2024-02-29 23:59:59".into())
        );
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("2026-13-01").is_err());
        assert_eq!(
            clock(parse_time("2026-01-01T07:05").unwrap_or_default()),
            "07:05"
        );
    }

    #[test]
    fn encoding() {
        assert_eq!(path_segment("a b/c"), "a%20b%2Fc");
        assert_eq!(query_value("x&y=z"), "x%26y%3Dz");
    }
}

//! Text the pages show and links they build: chart-axis times and durations, shortened text,
//! percent-encoded path segments and query values. Dates are written and read by
//! [`crate::clock`].

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_shows_hours_and_minutes() {
        assert_eq!(
            clock(crate::clock::parse_utc("2026-01-01T07:05").unwrap_or_default()),
            "07:05"
        );
    }

    #[test]
    fn encoding() {
        assert_eq!(path_segment("a b/c"), "a%20b%2Fc");
        assert_eq!(query_value("x&y=z"), "x%26y%3Dz");
    }
}

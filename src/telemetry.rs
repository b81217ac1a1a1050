//! Telemetry: the `tracing` subscriber (pretty or JSON lines, filtered by `telemetry.level`
//! or `RUST_LOG`), and the scrubbing of personal data from log lines and stored error
//! messages (`data_protection.log_sanitization`).

use std::borrow::Cow;
use std::sync::OnceLock;

use regex::Regex;
use tracing_subscriber::EnvFilter;

use crate::config::{DataProtectionConfig, LogFormat, TelemetryConfig};

/// Installs the global subscriber; a second call (tests) leaves the first in place.
pub fn init(config: &TelemetryConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match config.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
    // Already installed (several servers in one test process): keep the first.
    let _ = result;
}

struct Scrubber {
    email: Regex,
    max_chars: usize,
}

static SCRUBBER: OnceLock<Option<Scrubber>> = OnceLock::new();

/// Sets how [`scrub`] treats text, once per process (later calls are ignored).
pub fn configure_scrubbing(config: &DataProtectionConfig) {
    let _ = SCRUBBER.get_or_init(|| {
        config.log_sanitization.then(|| Scrubber {
            // The local part of an address; the domain stays (it tells which system).
            email: Regex::new(r"([A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]*@([A-Za-z0-9.\-]+)")
                .unwrap_or_else(|_| unreachable!("the pattern is valid")),
            max_chars: config.max_content_length,
        })
    });
}

/// Text fit for a log line or a stored error message: with sanitization on, email addresses
/// are masked (`a…@example.com`) and the text is cut to `max_content_length` characters.
pub fn scrub(text: &str) -> Cow<'_, str> {
    match SCRUBBER.get().and_then(Option::as_ref) {
        None => Cow::Borrowed(text),
        Some(s) => {
            let masked = s.email.replace_all(text, "$1…@$2");
            match crate::events::truncate_chars(&masked, s.max_chars) {
                (cut, true) => Cow::Owned(cut),
                (_, false) => masked,
            }
        }
    }
}

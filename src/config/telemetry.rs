//! `[telemetry]` (log format, filter and file) and `[data_protection]` (how much of people's
//! messages logs and handlers keep).

use std::path::PathBuf;

use serde::{Deserialize, Deserializer};

use super::checked;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines; coloured only when stderr is a terminal.
    Pretty,
    /// Uncoloured lines without a timestamp, for journald (which adds its own).
    Plain,
    /// One JSON object per line, for log collectors.
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    pub format: LogFormat,
    /// An `EnvFilter` directive such as `info` or `info,zulip_listeners=debug`; `RUST_LOG` wins.
    #[serde(deserialize_with = "log_filter")]
    pub level: String,
    /// Write logs to this file instead of stderr; reopened on SIGHUP (for logrotate).
    #[serde(default)]
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataProtectionConfig {
    /// Longest message content (in characters) stored by handlers or written to logs.
    #[serde(deserialize_with = "checked::count::<1, { u64::MAX }, _, _>")]
    pub max_content_length: usize,
    /// Mask email addresses and cut message content in log lines and stored error messages.
    pub log_sanitization: bool,
}

fn log_filter<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    checked::text_where(deserializer, |level| {
        tracing_subscriber::EnvFilter::try_new(level)
            .map(drop)
            .map_err(|_| format!("`{level}` is not a log filter such as `info`"))
    })
}

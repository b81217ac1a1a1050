//! `[admin]` (the admin API's token and the dashboard's public path) and `[error_handling]`
//! (circuit breakers, auto-disable, and where their transitions are announced).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{Secret, checked};

/// Shortest admin token accepted, in characters.
pub const MIN_ADMIN_TOKEN_CHARS: usize = 24;

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Bearer token for `/admin/`; the admin API is off while it is empty.
    #[serde(default)]
    pub token: Secret,
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// The path in front of `/admin` under which the browser reaches the dashboard through a
    /// reverse proxy (e.g. `/listeners`); unset: the proxy's `X-Forwarded-Prefix`, if any.
    #[serde(default)]
    pub public_path: Option<String>,
}

impl fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminConfig")
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorHandlingConfig {
    /// Consecutive failures of a handler that open its circuit breaker.
    #[serde(deserialize_with = "checked::count::<1, { u64::MAX }, _, _>")]
    pub breaker_failures: u32,
    /// How long an open breaker keeps the handler from running.
    #[serde(with = "humantime_serde")]
    pub breaker_cooldown: Duration,
    /// Failures within an hour above which a handler is disabled until an operator enables it.
    #[serde(deserialize_with = "checked::count::<1, { u64::MAX }, _, _>")]
    pub max_failures_per_hour: u32,
    /// A URL that receives a JSON POST for every breaker and auto-disable transition.
    #[serde(default, deserialize_with = "checked::outbound_url")]
    pub notification_webhook: Option<String>,
    /// A bot (with api_key and site) that posts the transitions to `notification_stream`.
    #[serde(default)]
    pub notification_bot: Option<String>,
    #[serde(default)]
    pub notification_stream: Option<String>,
    #[serde(default)]
    pub notification_topic: Option<String>,
}

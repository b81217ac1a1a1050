//! `[forwarder]`: the signed batch intake (`POST /zulip/events`), the listeners forwarded
//! events go to, and the workers that retry them.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::listeners::ListenerList;
use super::{Secret, checked};

/// Listeners that receive forwarded events when `[forwarder] listeners` is not given.
pub const DEFAULT_FORWARDER_LISTENERS: &[&str] = &["message_logger", "user_activity_tracker"];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwarderConfig {
    /// Standard Webhooks signing secrets (`whsec_…`); several during a rotation. They are
    /// read into keys where they are used (`verification::signing_keys`).
    #[serde(default)]
    pub secrets: Vec<Secret>,
    /// A file with one secret per line, read in addition to `secrets`.
    #[serde(default)]
    pub secrets_file: Option<PathBuf>,
    /// Listeners that receive forwarded events (a handler name is the listener of that
    /// name); see [`ForwarderConfig::listener_names`].
    #[serde(default)]
    pub listeners: Option<Vec<String>>,
    /// `listeners` under its old name.
    #[serde(default, rename = "handlers")]
    pub(super) old_listeners: Option<Vec<String>>,
    /// Largest batch body accepted, in bytes (413 above it).
    #[serde(deserialize_with = "checked::count::<1024, { u64::MAX }, _, _>")]
    pub max_body_bytes: usize,
    /// Most events accepted in one batch (413 above it).
    #[serde(deserialize_with = "checked::count::<1, { u64::MAX }, _, _>")]
    pub max_batch_events: usize,
    /// How far `webhook-timestamp` may be from this server's clock, either way.
    #[serde(deserialize_with = "checked::duration::<1000, { u64::MAX }, _>")]
    pub tolerance: Duration,
    /// Worker tasks processing events (each realm's events go to one worker, in order).
    #[serde(deserialize_with = "checked::count::<1, 256, _, _>")]
    pub workers: usize,
    /// Retries after the first failed attempt before an event is dead.
    pub max_retries: u32,
    /// Delay before the first retry; doubled for each further one (at most 1 h).
    #[serde(deserialize_with = "checked::duration::<1, { u64::MAX }, _>")]
    pub retry_delay: Duration,
    /// How long one listener may take with one event (the key keeps its older name).
    #[serde(deserialize_with = "checked::duration::<10, { u64::MAX }, _>")]
    pub handler_timeout: Duration,
    /// How long an event handed to a worker stays claimed; after that (a crash on another
    /// instance sharing PostgreSQL) any instance may take it.
    #[serde(deserialize_with = "checked::duration::<1000, { u64::MAX }, _>")]
    pub claim_lease: Duration,
    /// Pending events above which new batches are refused with 429 until workers catch up.
    #[serde(deserialize_with = "checked::count::<1, { u64::MAX }, _, _>")]
    pub max_backlog: u64,
}

impl ForwarderConfig {
    /// The listeners forwarded events go to, in order.
    pub fn listener_names(&self) -> Vec<String> {
        self.list().names(DEFAULT_FORWARDER_LISTENERS)
    }

    /// The key the listeners were given under (`forwarder.listeners`, or the old
    /// `forwarder.handlers`), for messages about them.
    pub fn listeners_key(&self) -> String {
        format!("forwarder.{}", self.list().key())
    }

    pub(super) fn list(&self) -> ListenerList<'_> {
        ListenerList::new(&self.listeners, &self.old_listeners)
    }
}

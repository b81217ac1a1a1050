//! Handlers: the one trait every compiled-in feature implements, the explicit registry of
//! built-ins, and the context they run with. Configuration decides which handlers run (a bot's
//! `handlers` list, `[forwarder] handlers`) and with what settings (`[handlers.<name>]`).

mod command_bot;
pub mod health;
mod keyword_alerts;
mod message_logger;
mod relay;
mod user_activity_tracker;
mod welcome_bot;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::future::BoxFuture;

use crate::config::{Config, DataProtectionConfig, HandlerSettings};
use crate::db::writer::Effect;
use crate::db::{Db, DbError};
use crate::events::Event;

pub use command_bot::CommandBot;
pub use keyword_alerts::KeywordAlerts;
pub use message_logger::MessageLogger;
pub use relay::Relay;
pub use user_activity_tracker::UserActivityTracker;
pub use welcome_bot::WelcomeBot;

/// Every compiled-in handler, by name.
pub const KNOWN: &[&str] = &[
    CommandBot::NAME,
    MessageLogger::NAME,
    KeywordAlerts::NAME,
    Relay::NAME,
    UserActivityTracker::NAME,
    WelcomeBot::NAME,
];

pub fn is_known(name: &str) -> bool {
    KNOWN.contains(&name)
}

/// Which event types a handler wants.
#[derive(Debug, Clone, Copy)]
pub enum Interest {
    /// Only these Zulip event types.
    Types(&'static [&'static str]),
    /// Every event, including types this server has no Rust type for.
    All,
}

impl Interest {
    pub fn wants(&self, event_type: &str) -> bool {
        match self {
            Interest::Types(types) => types.contains(&event_type),
            Interest::All => true,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Interest::Types(types) => types.join(", "),
            Interest::All => "*".to_string(),
        }
    }
}

/// Why a handler run failed.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Database(#[from] DbError),
}

/// What a handler produced: a reply to post in the conversation, or nothing.
pub type HandlerResult = Result<Option<String>, HandlerError>;

/// A compiled-in handler.
pub trait Handler: Send + Sync + 'static {
    /// The name used in configuration and the event log.
    fn name(&self) -> &'static str;
    /// Event types it wants.
    fn interest(&self) -> Interest;
    /// `true` when [`Handler::handle`] only turns the event into effects: no I/O, no waiting,
    /// nothing read from the database. A forwarded event whose handlers are all pure is
    /// processed as it is accepted, and its effects are committed in the same transaction as
    /// the event itself; other events go to the inbox workers.
    fn is_pure(&self) -> bool {
        false
    }
    /// Handles one event. Changes to stored data go into `effects`: they are written in the
    /// same transaction as the run's event-log row (and, for forwarded events, the inbox
    /// status), so they take effect exactly once even if the event is delivered again.
    fn handle<'a>(
        &'a self,
        cx: &'a Context,
        event: &'a Event,
        effects: &'a mut Effects,
    ) -> BoxFuture<'a, HandlerResult>;
}

/// The changes a handler run asks for.
#[derive(Debug, Default)]
pub struct Effects(Vec<Effect>);

impl Effects {
    pub fn push(&mut self, effect: Effect) {
        self.0.push(effect);
    }

    pub fn into_inner(self) -> Vec<Effect> {
        self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What handlers may use while running.
pub struct Context {
    /// For reads; writes go through [`Effects`].
    pub db: Db,
    /// In dry-run mode handlers run but their effects are not written and they call nothing
    /// external.
    pub dry_run: bool,
    pub data_protection: DataProtectionConfig,
    pub registry: Arc<Registry>,
}

/// A handler and its runtime state.
pub struct Entry {
    pub handler: Box<dyn Handler>,
    enabled: AtomicBool,
    /// Disabled automatically after too many failures (events that need it wait), as opposed
    /// to disabled by an operator (events are handled without it).
    auto_disabled: AtomicBool,
    /// The `updated_at_ms` of this handler's database row when it was last applied.
    applied_row_at_ms: std::sync::atomic::AtomicI64,
    pub settings: HandlerSettings,
    pub health: health::Health,
    /// Its run metrics, registered on first use (after the metrics recorder is installed).
    runs: std::sync::OnceLock<crate::telemetry::metric::HandlerRuns>,
}

impl Entry {
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Enables or disables the handler on an operator's word.
    pub fn set_enabled(&self, enabled: bool) {
        self.enabled.store(enabled, Ordering::Relaxed);
        self.auto_disabled.store(false, Ordering::Relaxed);
    }

    /// Disables the handler because it failed too often.
    pub fn disable_automatically(&self) {
        self.enabled.store(false, Ordering::Relaxed);
        self.auto_disabled.store(true, Ordering::Relaxed);
    }

    /// Applies the handler's database row (enabled, and why not) if it changed since it was
    /// last applied; returns whether it did. Only changes are followed, so a stale read never
    /// undoes a newer decision made in memory.
    pub fn apply_row(&self, row: &crate::db::models::ListenerRow) -> bool {
        let seen = self.applied_row_at_ms.load(Ordering::Relaxed);
        if row.updated_at_ms <= seen {
            return false;
        }
        self.applied_row_at_ms
            .store(row.updated_at_ms, Ordering::Relaxed);
        let auto = row
            .disabled_reason
            .as_deref()
            .is_some_and(|r| r.starts_with(AUTO_DISABLED));
        if row.enabled && self.settings.enabled {
            if !self.enabled() {
                self.health.reset();
            }
            self.set_enabled(true);
        } else if !row.enabled && auto {
            self.disable_automatically();
        } else {
            self.set_enabled(false);
        }
        true
    }

    /// Records a run in the metrics.
    pub fn record_run(&self, ok: bool, seconds: f64) {
        self.runs
            .get_or_init(|| crate::telemetry::metric::HandlerRuns::new(self.handler.name()))
            .record(ok, seconds);
    }

    pub fn auto_disabled(&self) -> bool {
        !self.enabled() && self.auto_disabled.load(Ordering::Relaxed)
    }
}

/// The start of the stored reason of an automatic disable.
pub const AUTO_DISABLED: &str = "auto-disabled:";

/// Index of a handler in the [`Registry`].
pub type HandlerId = usize;

/// Every compiled-in handler, built with its settings.
pub struct Registry {
    entries: Vec<Entry>,
}

/// A handler's settings could not be used.
#[derive(Debug, thiserror::Error)]
#[error("configuration key `handlers.{handler}.{key}`: {problem}")]
pub struct SettingsError {
    pub handler: &'static str,
    pub key: String,
    pub problem: String,
}

impl Registry {
    /// Builds every built-in from `[handlers.<name>]`.
    pub fn build(config: &Config) -> Result<Registry, SettingsError> {
        let mut entries = Vec::with_capacity(KNOWN.len());
        for name in KNOWN {
            let settings = config.handler_settings(name);
            let handler: Box<dyn Handler> = match *name {
                CommandBot::NAME => Box::new(CommandBot::from_settings(&settings)?),
                MessageLogger::NAME => Box::new(MessageLogger::from_settings(&settings)?),
                KeywordAlerts::NAME => Box::new(KeywordAlerts::from_settings(&settings, config)?),
                Relay::NAME => Box::new(Relay::from_settings(&settings)?),
                UserActivityTracker::NAME => {
                    Box::new(UserActivityTracker::from_settings(&settings)?)
                }
                WelcomeBot::NAME => Box::new(WelcomeBot::from_settings(&settings, config)?),
                other => unreachable_handler(other)?,
            };
            entries.push(Entry {
                handler,
                enabled: AtomicBool::new(settings.enabled),
                auto_disabled: AtomicBool::new(false),
                applied_row_at_ms: std::sync::atomic::AtomicI64::new(i64::MIN),
                settings,
                health: health::Health::new((&config.error_handling).into()),
                runs: std::sync::OnceLock::new(),
            });
        }
        Ok(Registry { entries })
    }

    pub fn id(&self, name: &str) -> Option<HandlerId> {
        self.entries.iter().position(|e| e.handler.name() == name)
    }

    pub fn get(&self, id: HandlerId) -> Option<&Entry> {
        self.entries.get(id)
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// (name, settings as JSON) of every handler, for the `listeners` table.
    pub fn listener_rows(&self) -> Vec<(&'static str, String)> {
        self.entries
            .iter()
            .map(|e| {
                // Stored in the database and shown by tools: without secrets or URL paths.
                let settings = crate::redact::settings(&serde_json::Value::Object(
                    e.settings.settings.clone(),
                ))
                .to_string();
                (e.handler.name(), settings)
            })
            .collect()
    }

    /// Resolves handler names (already validated by the configuration) to ids.
    pub fn ids(&self, names: &[String]) -> Vec<HandlerId> {
        names.iter().filter_map(|n| self.id(n)).collect()
    }
}

fn unreachable_handler(name: &'static str) -> Result<Box<dyn Handler>, SettingsError> {
    Err(SettingsError {
        handler: name,
        key: "".into(),
        problem: "listed in KNOWN but not constructed by Registry::build".into(),
    })
}

/// Rejects keys a handler does not read, so that typos are caught at start-up.
pub(crate) fn only_keys(
    handler: &'static str,
    settings: &HandlerSettings,
    allowed: &[&str],
) -> Result<(), SettingsError> {
    match settings
        .settings
        .keys()
        .find(|k| !allowed.contains(&k.as_str()))
    {
        None => Ok(()),
        Some(key) => Err(SettingsError {
            handler,
            key: key.clone(),
            problem: if allowed.is_empty() {
                "unknown setting; this handler has only `enabled`".into()
            } else {
                format!("unknown setting; known: enabled, {}", allowed.join(", "))
            },
        }),
    }
}

/// An HTTP client for a handler that calls an external service, with the handler's `timeout`
/// setting (a duration such as "10s"; `default` when absent).
pub(crate) fn http_client(
    handler: &'static str,
    settings: &HandlerSettings,
    default: std::time::Duration,
) -> Result<reqwest::Client, SettingsError> {
    let problem = |problem: String| SettingsError {
        handler,
        key: "timeout".into(),
        problem,
    };
    let timeout = match settings.settings.get("timeout") {
        None => default,
        Some(value) => value
            .as_str()
            .and_then(|s| humantime::parse_duration(s).ok())
            .ok_or_else(|| problem(format!("`{value}` is not a duration like \"10s\"")))?,
    };
    crate::outbound::client(timeout).map_err(|e| problem(crate::redact::http_error(e)))
}

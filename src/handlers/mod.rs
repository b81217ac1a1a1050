//! Handlers: the one trait every compiled-in feature implements, the explicit list of
//! built-ins ([`KNOWN`], [`build`]), and the context they run with. Which handlers run, on
//! what and with which settings is decided by the listeners built from them
//! ([`crate::listeners`]).

mod command_bot;
pub mod health;
mod keyword_alerts;
mod message_logger;
mod relay;
mod user_activity_tracker;
mod welcome_bot;

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
}

/// A handler's settings could not be used.
#[derive(Debug, thiserror::Error)]
#[error("configuration key `handlers.{handler}.{key}`: {problem}")]
pub struct SettingsError {
    pub handler: &'static str,
    pub key: String,
    pub problem: String,
}

/// Builds the compiled-in handler `kind` with `settings`; `None` when no handler has that
/// name. Adding a handler means one line here and one in [`KNOWN`].
pub fn build(
    kind: &str,
    settings: &HandlerSettings,
    config: &Config,
) -> Option<Result<Box<dyn Handler>, SettingsError>> {
    fn boxed<H: Handler>(h: Result<H, SettingsError>) -> Result<Box<dyn Handler>, SettingsError> {
        h.map(|h| Box::new(h) as Box<dyn Handler>)
    }
    Some(match kind {
        CommandBot::NAME => boxed(CommandBot::from_settings(settings)),
        MessageLogger::NAME => boxed(MessageLogger::from_settings(settings)),
        KeywordAlerts::NAME => boxed(KeywordAlerts::from_settings(settings, config)),
        Relay::NAME => boxed(Relay::from_settings(settings)),
        UserActivityTracker::NAME => boxed(UserActivityTracker::from_settings(settings)),
        WelcomeBot::NAME => boxed(WelcomeBot::from_settings(settings, config)),
        _ => return None,
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

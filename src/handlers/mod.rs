//! Handlers: the one trait every compiled-in feature implements ([`Handler`]: its name, the
//! events it takes, its typed settings, how it is built and how it runs), the explicit list
//! of built-ins ([`BUILT_IN`], one line each, [`build`]), the context they run with, and what
//! a run may change ([`Effect`], [`CustomEffect`], collected in [`Effects`]). Which handlers
//! run, on what and with which settings is decided by the listeners built from them
//! ([`crate::listeners`]).
//!
//! A handler that keeps a table of its own defines it in its module with a [`CustomEffect`]
//! (as `welcome_bot/record.rs` does); only a table whose rows the writer must merge or insert
//! in bulk across runs (`messages`, `user_activity`, `keyword_alerts`) is a core table under
//! `db/tables` with an [`Effect`] variant.

mod command_bot;
mod effects;
mod keyword_alerts;
mod message_logger;
mod relay;
mod user_activity_tracker;
pub mod webhooks;
mod welcome_bot;

use futures_util::future::BoxFuture;

use crate::config::{Config, DataProtectionConfig, HandlerSettings, SettingFiles};
use crate::db::{Db, DbError};
use crate::events::Event;

pub use crate::db::writer::effect::{CustomEffect, Effect};
pub use command_bot::CommandBot;
pub use effects::Effects;
pub use keyword_alerts::KeywordAlerts;
pub use message_logger::MessageLogger;
pub use relay::Relay;
pub use user_activity_tracker::UserActivityTracker;
pub use welcome_bot::WelcomeBot;

/// Every compiled-in handler: the one registry of built-ins.
///
/// Adding a handler is its file (a type implementing [`Handler`]) and one line here.
const BUILT_IN: &[(&str, Constructor)] = &[
    built_in::<CommandBot>(),
    built_in::<MessageLogger>(),
    built_in::<KeywordAlerts>(),
    built_in::<Relay>(),
    built_in::<UserActivityTracker>(),
    built_in::<WelcomeBot>(),
];

/// Builds a handler from its settings (and the whole configuration, for handlers that refer
/// to a bot), type-erased for the registry.
type Constructor = fn(&HandlerSettings, &Config) -> Result<Box<dyn Runnable>, SettingsError>;

/// The registry line of handler `H`: its name and how it is built.
const fn built_in<H: Handler>() -> (&'static str, Constructor) {
    (H::NAME, construct::<H>)
}

/// The one way a handler is built: its settings read into [`Handler::Settings`] (an error
/// names the key at fault), then [`Handler::build`].
fn construct<H: Handler>(
    settings: &HandlerSettings,
    config: &Config,
) -> Result<Box<dyn Runnable>, SettingsError> {
    let typed = typed_settings::<H::Settings>(H::NAME, settings)?;
    let cx = BuildContext {
        listener: match settings.listener.as_str() {
            "" => H::NAME,
            name => name,
        },
        enabled: settings.enabled,
        files: &settings.files,
        config,
    };
    H::build(typed, &cx).map(|h| Box::new(h) as Box<dyn Runnable>)
}

/// What a handler is built with besides its own settings.
pub struct BuildContext<'a> {
    /// The listener being built: the handler's own name for its default listener. Handlers
    /// that record what they did use it to keep listeners of one handler apart.
    pub listener: &'a str,
    /// Whether the listener is enabled.
    pub enabled: bool,
    /// The files its `*_file` settings name, read when the configuration was loaded.
    pub files: &'a SettingFiles,
    /// The whole configuration, for handlers that refer to a bot.
    pub config: &'a Config,
}

impl BuildContext<'_> {
    /// A problem with setting `key` of handler `H`.
    pub fn problem<H: Handler>(&self, key: impl Into<String>, problem: String) -> SettingsError {
        SettingsError {
            handler: H::NAME,
            key: key.into(),
            problem,
        }
    }
}

/// The names of every compiled-in handler, in the order they are listed.
pub fn known() -> impl Iterator<Item = &'static str> {
    BUILT_IN.iter().map(|(name, _)| *name)
}

pub fn is_known(name: &str) -> bool {
    known().any(|k| k == name)
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

/// A compiled-in handler: what a handler author implements.
pub trait Handler: Send + Sync + Sized + 'static {
    /// The name used in configuration, and the name of the handler's own listener.
    const NAME: &'static str;
    /// Event types it wants.
    const INTEREST: Interest;
    /// `true` when [`Handler::handle`] only turns the event into effects: no I/O, no waiting,
    /// nothing read from the database. A forwarded event whose handlers are all pure is
    /// processed as it is accepted, and its effects are committed in the same transaction as
    /// the event itself; other events go to the inbox workers.
    const PURE: bool = false;

    /// The handler's settings (`[handlers.<name>]` or a listener's `settings`, without
    /// `enabled`), read by the registry before [`Handler::build`]. Every field must have a
    /// default (a bad value is traced to its key by reading each key alone), and the type
    /// should deny unknown fields so that typos are caught at start-up; [`NoSettings`] for a
    /// handler that has none.
    type Settings: serde::de::DeserializeOwned;

    /// Builds the handler from its settings; checks them across keys and against the rest
    /// of the configuration (a bot it posts as). Called at start-up and for every runtime
    /// change of a listener's settings, so it must not do I/O beyond building clients.
    fn build(settings: Self::Settings, cx: &BuildContext<'_>) -> Result<Self, SettingsError>;

    /// Whether a bot may list this listener as it is set up: `Err` says what it lacks, and
    /// the configuration is refused with the bot's key. Every listener may by default.
    fn check_bot_use(&self) -> Result<(), String> {
        Ok(())
    }

    /// Handles one event. Changes to stored data go into `effects`: they are written in the
    /// same transaction as the run's event-log row (and, for forwarded events, the inbox
    /// status), so they take effect exactly once even if the event is delivered again.
    /// Implement it as an `async fn`.
    fn handle(
        &self,
        cx: &Context,
        event: &Event,
        effects: &mut Effects,
    ) -> impl Future<Output = HandlerResult> + Send;
}

/// A handler as the registry and the processors hold it: [`Handler`] with its type erased,
/// implemented once for every handler.
pub trait Runnable: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn interest(&self) -> Interest;
    fn is_pure(&self) -> bool;
    fn check_bot_use(&self) -> Result<(), String>;
    fn handle<'a>(
        &'a self,
        cx: &'a Context,
        event: &'a Event,
        effects: &'a mut Effects,
    ) -> BoxFuture<'a, HandlerResult>;
}

impl<H: Handler> Runnable for H {
    fn name(&self) -> &'static str {
        H::NAME
    }

    fn interest(&self) -> Interest {
        H::INTEREST
    }

    fn is_pure(&self) -> bool {
        H::PURE
    }

    fn check_bot_use(&self) -> Result<(), String> {
        Handler::check_bot_use(self)
    }

    fn handle<'a>(
        &'a self,
        cx: &'a Context,
        event: &'a Event,
        effects: &'a mut Effects,
    ) -> BoxFuture<'a, HandlerResult> {
        Box::pin(Handler::handle(self, cx, event, effects))
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
/// name.
pub fn build(
    kind: &str,
    settings: &HandlerSettings,
    config: &Config,
) -> Option<Result<Box<dyn Runnable>, SettingsError>> {
    BUILT_IN
        .iter()
        .find(|(name, _)| *name == kind)
        .map(|(_, construct)| construct(settings, config))
}

/// Reads a handler's settings (without `enabled`) into its [`Handler::Settings`]; an error
/// names the key at fault (found by reading each key alone).
fn typed_settings<T: serde::de::DeserializeOwned>(
    handler: &'static str,
    settings: &HandlerSettings,
) -> Result<T, SettingsError> {
    let all = serde_json::Value::Object(settings.settings.clone());
    serde_json::from_value(all).map_err(|error| {
        let key = settings
            .settings
            .iter()
            .find(|(key, value)| {
                let alone = serde_json::Map::from_iter([((*key).clone(), (*value).clone())]);
                serde_json::from_value::<T>(serde_json::Value::Object(alone)).is_err()
            })
            .map(|(key, _)| key.clone())
            .unwrap_or_default();
        SettingsError {
            handler,
            key,
            problem: error.to_string(),
        }
    })
}

/// The settings of a handler that has none but `enabled`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoSettings {}

/// An HTTP client for a handler that calls an external service, with the handler's `timeout`
/// setting (`default` when absent).
pub(crate) fn http_client(
    handler: &'static str,
    timeout: Option<std::time::Duration>,
    default: std::time::Duration,
) -> Result<reqwest::Client, SettingsError> {
    crate::outbound::client(timeout.unwrap_or(default)).map_err(|e| SettingsError {
        handler,
        key: "timeout".into(),
        problem: crate::redact::http_error(e),
    })
}

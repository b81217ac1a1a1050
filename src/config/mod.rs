//! Configuration: what the server reads at start-up and how it is checked.
//!
//! Layers, later ones winning: the documented defaults in `config/default.toml` (compiled into
//! the binary), an optional file given with `--config`, bots imported from a Zulip
//! `botserverrc` (`--botserverrc`), then `ZULIP_LISTENERS_*` environment
//! variables (nested keys joined with `__`, e.g. `ZULIP_LISTENERS_DATABASE__URL`). Secrets may
//! be given inline, as a `*_file` path or through the environment; they are wrapped in
//! [`Secret`] so that they never reach a log line or `Debug` output.
//!
//! One file per section (or group of small sections). Values are typed and checked while they
//! are read ([`checked`]), so figment names the key at fault; the rules that relate several
//! keys are in [`validate`]. [`Config::load`] names the key at fault in every error.
//!
//! This module reads what is configured; it does not build what the configuration describes.
//! The forwarder's signing keys are read by `verification::signing_keys`, listeners and
//! handler settings by `listeners::Registry::build`.

mod admin;
mod bots;
mod botserverrc;
mod checked;
mod database;
pub mod files;
mod filters;
mod forwarder;
mod listeners;
mod rate_limits;
mod retention;
mod secret;
mod server;
mod telemetry;
mod validate;

use std::collections::BTreeMap;
use std::path::PathBuf;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::Deserialize;

pub use admin::{
    AdminConfig, DEFAULT_ADMIN_NAME, ErrorHandlingConfig, MIN_ADMIN_TOKEN_CHARS, ProxyRange,
};
pub use bots::{BotConfig, DEFAULT_BOT_LISTENERS, OutgoingConfig};
pub use botserverrc::{ImportedBot, parse_botserverrc, read_botserverrc};
pub use database::{DatabaseConfig, DatabaseTarget, Synchronous, parse_database_url};
pub use files::SettingFiles;
pub use filters::{FiltersConfig, RealmSelector};
pub use forwarder::{DEFAULT_FORWARDER_LISTENERS, ForwarderConfig};
pub use listeners::{ChannelSelector, HandlerSettings, ListenerConfig, Scope, UserSelector};
pub use rate_limits::{QuotaConfig, QuotaOverrides, RateLimitsConfig};
pub use retention::{MAX_RETENTION_DAYS, RetentionConfig};
pub use secret::Secret;
pub use server::{MemoryPlan, MetricsConfig, ServerConfig, parse_byte_size};
pub use telemetry::{DataProtectionConfig, LogFormat, TelemetryConfig};

use secret::read_secret_file;

/// The documented defaults, shipped in the repository and compiled into the binary.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

/// Prefix of every environment variable the server reads.
pub const ENV_PREFIX: &str = "ZULIP_LISTENERS_";

/// Top-level sections; environment variables outside these are ignored (so that variables such
/// as `ZULIP_LISTENERS_TEST_PG_URL` do not trip the unknown-key check).
const SECTIONS: &[&str] = &[
    "server",
    "database",
    "telemetry",
    "outgoing",
    "data_protection",
    "bots",
    "handlers",
    "listeners",
    "forwarder",
    "filters",
    "rate_limits",
    "metrics",
    "admin",
    "error_handling",
    "retention",
];

/// A configuration problem, always naming the key it concerns.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Parse(String),
    #[error("configuration key `{key}`: {problem}")]
    Invalid { key: String, problem: String },
    #[error("cannot read {what} `{path}`: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub telemetry: TelemetryConfig,
    pub outgoing: OutgoingConfig,
    pub data_protection: DataProtectionConfig,
    #[serde(default)]
    pub bots: BTreeMap<String, BotConfig>,
    #[serde(default)]
    pub handlers: BTreeMap<String, HandlerSettings>,
    /// Named listeners: instances of compiled-in handlers with their own scope and settings.
    #[serde(default)]
    pub listeners: BTreeMap<String, ListenerConfig>,
    pub forwarder: ForwarderConfig,
    pub filters: FiltersConfig,
    pub rate_limits: RateLimitsConfig,
    pub metrics: MetricsConfig,
    pub admin: AdminConfig,
    pub error_handling: ErrorHandlingConfig,
    pub retention: RetentionConfig,
}

/// Where the configuration comes from, as given on the command line.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub config_file: Option<PathBuf>,
    pub botserverrc: Option<PathBuf>,
}

impl Config {
    /// Reads every layer and validates the result.
    pub fn load(sources: &Sources) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
        if let Some(path) = &sources.config_file {
            if !path.is_file() {
                return Err(ConfigError::Io {
                    what: "configuration file",
                    path: path.clone(),
                    source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
                });
            }
            figment = figment.merge(Toml::file(path));
        }
        if let Some(path) = &sources.botserverrc {
            let bots = read_botserverrc(path)?;
            figment = figment.merge(Serialized::default("bots", bots));
        }
        figment = figment.merge(Env::prefixed(ENV_PREFIX).split("__").filter(|key| {
            let key = key.as_str().to_ascii_lowercase();
            SECTIONS.iter().any(|s| key.starts_with(s))
        }));
        Self::from_figment(figment)
    }

    /// Builds a configuration from TOML text layered over the defaults (used by tests and tools).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Self::from_figment(Figment::from(Toml::string(DEFAULT_TOML)).merge(Toml::string(text)))
    }

    pub(crate) fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let mut config: Config = figment.extract().map_err(|e| {
            let messages: Vec<String> = e.into_iter().map(|e| describe_figment_error(&e)).collect();
            ConfigError::Parse(messages.join("; "))
        })?;
        config.resolve_secret_files()?;
        config.validate()?;
        Ok(config)
    }

    fn resolve_secret_files(&mut self) -> Result<(), ConfigError> {
        for (name, bot) in &mut self.bots {
            if let Some(path) = bot.token_file.take() {
                bot.token = read_secret_file(&path, &format!("bots.{name}.token_file"))?;
            }
            if let Some(path) = bot.api_key_file.take() {
                bot.api_key = read_secret_file(&path, &format!("bots.{name}.api_key_file"))?;
            }
        }
        for (name, handler) in &mut self.handlers {
            handler.files = SettingFiles::read(&handler.settings, &format!("handlers.{name}."))?;
        }
        for (name, listener) in &mut self.listeners {
            listener.files =
                SettingFiles::read(&listener.settings, &format!("listeners.{name}.settings."))?;
        }
        if let Some(path) = self.admin.token_file.take() {
            self.admin.token = read_secret_file(&path, "admin.token_file")?;
        }
        self.admin.read_token_files(read_secret_file)?;
        if let Some(path) = self.forwarder.secrets_file.take() {
            let text = read_secret_file(&path, "forwarder.secrets_file")?;
            self.forwarder
                .secrets
                .extend(text.expose().split_whitespace().map(Secret::new));
        }
        Ok(())
    }

    /// Settings of one handler (empty when `[handlers.<name>]` is absent).
    pub fn handler_settings(&self, name: &str) -> HandlerSettings {
        self.handlers.get(name).cloned().unwrap_or(HandlerSettings {
            enabled: true,
            listener: String::new(),
            settings: serde_json::Map::new(),
            files: SettingFiles::default(),
        })
    }
}

/// One figment error as `key `a.b[0]`: problem (from source)`.
fn describe_figment_error(error: &figment::Error) -> String {
    let mut key = String::new();
    for part in &error.path {
        if !key.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
            key.push_str(&format!("[{part}]"));
        } else {
            if !key.is_empty() {
                key.push('.');
            }
            key.push_str(part);
        }
    }
    let origin = error
        .metadata
        .as_ref()
        .map(|m| format!(" (from {})", m.name))
        .unwrap_or_default();
    if key.is_empty() {
        format!("{}{origin}", error.kind)
    } else {
        format!("key `{key}`: {}{origin}", error.kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn defaults_are_valid() {
        let config = Config::from_toml("").expect("defaults load");
        assert_eq!(config.server.bind.to_string(), "127.0.0.1:8080");
        assert_eq!(config.server.reply_deadline(), Duration::from_secs(8));
        assert_eq!(
            config.server.zulip_outgoing_webhook_timeout,
            Duration::from_secs(10)
        );
        assert!(config.bots.is_empty());
        assert_eq!(
            config.forwarder.listener_names(),
            ["message_logger", "user_activity_tracker"]
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml("[server]\nbnid = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bnid"), "{err}");
    }

    #[test]
    fn values_out_of_range_are_refused_with_their_key() {
        for (toml, key) in [
            ("[forwarder]\nworkers = 0", "forwarder.workers"),
            ("[database]\npool_size = 0", "database.pool_size"),
            (
                "[rate_limits.per_user]\nper_minute = 0\nburst = 1",
                "rate_limits.per_user.per_minute",
            ),
            (
                "[database]\nsynchronous = \"sometimes\"",
                "database.synchronous",
            ),
            ("[telemetry]\nlevel = \"info,=[\"", "telemetry.level"),
            ("[metrics]\nbind = \"nowhere\"", "metrics.bind"),
            (
                "[bots.b]\nemail = \"b@x\"\ntoken = \"t\"\nlisteners = 7",
                "bots.b.listeners",
            ),
        ] {
            let err = Config::from_toml(toml).unwrap_err().to_string();
            assert!(err.contains(&format!("`{key}`")), "{toml}: {err}");
        }
        let err = Config::from_toml("[forwarder]\nsecrets = [\"a\", 2]")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`forwarder.secrets[1]`"), "{err}");
    }

    #[test]
    fn listener_keys_are_named() {
        let listener = "[listeners.l]\nhandler = \"relay\"\n";
        let config =
            Config::from_toml(&format!("{listener}realms = [7, \"acme\"]\n")).expect("valid");
        assert_eq!(config.listeners["l"].scope.realms.len(), 2);
        // `realms`, `streams` and `users` are read as one `Scope` (serde `flatten`), so figment
        // names the listener; the message names the field.
        for (extra, field) in [
            ("scope = 1\n", "`scope`"),
            ("realms = [true]\n", "realm id"),
            ("users = [true]\n", "`users`"),
        ] {
            let err = Config::from_toml(&format!("{listener}{extra}"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("`listeners.l`") && err.contains(field),
                "{extra}: {err}"
            );
        }
    }

    #[test]
    fn bot_without_token_is_rejected_with_its_key() {
        let err = Config::from_toml("[bots.helper]\nemail = \"helper-bot@example.com\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bots.helper.token"), "{err}");
    }

    #[test]
    fn listener_lists_are_read_under_their_old_name_too() {
        let bot = "[bots.b]\nemail = \"b@x\"\ntoken = \"t\"\n";
        for key in ["listeners", "handlers"] {
            let config = Config::from_toml(&format!(
                "[forwarder]\n{key} = [\"relay\"]\n{bot}{key} = [\"relay\", \"command_bot\"]\n"
            ))
            .expect("valid");
            assert_eq!(config.forwarder.listener_names(), ["relay"]);
            assert_eq!(config.forwarder.listeners_key(), format!("forwarder.{key}"));
            let b = &config.bots["b"];
            assert_eq!(b.listener_names(), ["relay", "command_bot"]);
            assert_eq!(b.listeners_key("b"), format!("bots.b.{key}"));
        }
        let default = Config::from_toml(bot).expect("valid");
        assert_eq!(default.bots["b"].listener_names(), DEFAULT_BOT_LISTENERS);
        for (toml, key) in [
            (
                "[forwarder]\nlisteners = [\"relay\"]\nhandlers = [\"relay\"]\n".to_string(),
                "forwarder.handlers",
            ),
            (
                format!("{bot}listeners = []\nhandlers = []\n"),
                "bots.b.handlers",
            ),
        ] {
            let err = Config::from_toml(&toml).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains("old name"), "{err}");
        }
        let err = Config::from_toml(&format!("{bot}handlers = []\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("bots.b.handlers") && err.contains("at least one"),
            "{err}"
        );
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let config =
            Config::from_toml("[bots.h]\nemail = \"h@x.org\"\ntoken = \"supersecrettoken\"")
                .expect("valid");
        let shown = format!("{config:?}");
        assert!(!shown.contains("supersecrettoken"), "{shown}");
    }
}

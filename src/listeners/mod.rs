//! Listeners: named instances of the compiled-in handlers, each with its own description,
//! event types, scope (realms, channels, users), settings and state. Built from
//! `[listeners.<name>]` and, for every handler, the listener of the handler's own name with
//! `[handlers.<name>]` settings; changed at runtime through [`changes`] (stored in the
//! database, winning over the file). This file holds the [`Registry`]: which names exist,
//! every definition checked against its handler, and stored rows applied; `live.rs` holds one
//! listener's runtime state, `view.rs` how it is shown.

pub mod breaker;
pub mod changes;
mod live;
pub mod scope;
mod view;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::{Config, HandlerSettings, QuotaConfig, Scope};
use crate::db::tables::listeners::ListenerRow;
use crate::guards::ratelimit::Limits;
use crate::handlers;
use changes::{FieldError, Overrides};

pub use live::{AUTO_DISABLED, Definition, Entry, Live, auto_disabled_row};
pub use view::{Breaker, ListenerState, ListenerView};

/// Index of a listener in the [`Registry`].
pub type ListenerId = usize;

/// A listener's configuration could not be used; `key` is the full configuration key.
#[derive(Debug, thiserror::Error)]
#[error("configuration key `{key}`: {problem}")]
pub struct ListenerError {
    pub key: String,
    pub problem: String,
}

/// Every listener, built with its handler.
pub struct Registry {
    entries: Vec<Entry>,
    config: Arc<Config>,
    /// Handlers built since the start, for runtime changes (checked or applied).
    rebuilt: AtomicU64,
}

impl Registry {
    /// Builds every listener from the configuration and checks every reference to one
    /// (`[forwarder] listeners`, each bot's `listeners`).
    pub fn build(config: &Config) -> Result<Registry, ListenerError> {
        for name in config.handlers.keys() {
            if !handlers::is_known(name) {
                return Err(ListenerError {
                    key: format!("handlers.{name}"),
                    problem: unknown_handler(name),
                });
            }
        }
        let mut entries = Vec::new();
        for (name, definition) in definitions(config)? {
            let legacy = !config.listeners.contains_key(&name);
            let live = prepare(&name, &definition, config).map_err(|e| ListenerError {
                key: config_key(&name, legacy, &e.field),
                problem: e.problem,
            })?;
            entries.push(Entry::new(
                name,
                definition,
                live,
                breaker::Health::new((&config.error_handling).into()),
            ));
        }
        let registry = Registry {
            entries,
            config: Arc::new(config.clone()),
            rebuilt: AtomicU64::new(0),
        };
        registry.check_references(config)?;
        Ok(registry)
    }

    fn check_references(&self, config: &Config) -> Result<(), ListenerError> {
        let unknown = |key: String, name: &str| ListenerError {
            key,
            problem: format!(
                "unknown listener `{name}`; defined are: {}",
                self.entries
                    .iter()
                    .map(|e| e.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        for (i, name) in config.forwarder.listener_names().iter().enumerate() {
            if self.id(name).is_none() {
                let key = config.forwarder.listeners_key();
                return Err(unknown(format!("{key}[{i}]"), name));
            }
        }
        for (bot, bot_config) in &config.bots {
            for (i, name) in bot_config.listener_names().iter().enumerate() {
                let key = format!("{}[{i}]", bot_config.listeners_key(bot));
                let Some(entry) = self.by_name(name) else {
                    return Err(unknown(key, name));
                };
                let live = entry.live();
                if let Err(problem) = live.handler.check_bot_use() {
                    return Err(ListenerError {
                        key,
                        problem: format!(
                            "`{name}` runs `{}`, which {problem}",
                            live.handler.name()
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    pub fn id(&self, name: &str) -> Option<ListenerId> {
        self.entries.iter().position(|e| e.name() == name)
    }

    pub fn get(&self, id: ListenerId) -> Option<&Entry> {
        self.entries.get(id)
    }

    pub fn by_name(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.name() == name)
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// How many handlers were built since the start for runtime changes (each change is
    /// built once where it is made, and once by every other server that applies it).
    pub fn rebuilt(&self) -> u64 {
        self.rebuilt.load(Ordering::Relaxed)
    }

    /// Forgets idle keys of the listeners' own quotas; returns the keys still tracked.
    pub fn limiter_housekeeping(&self) -> usize {
        self.entries
            .iter()
            .filter_map(|e| e.live().limits.as_ref().map(Limits::housekeeping))
            .sum()
    }

    /// Resolves listener names (already checked by [`Registry::build`]) to ids.
    pub fn ids(&self, names: &[String]) -> Vec<ListenerId> {
        names.iter().filter_map(|n| self.id(n)).collect()
    }

    /// (name, file definition as redacted JSON) of every listener, for the `listeners` table.
    pub fn listener_rows(&self) -> Vec<(String, String)> {
        self.entries
            .iter()
            .map(|e| {
                let json =
                    serde_json::to_string(e.file_definition()).unwrap_or_else(|_| "{}".into());
                (e.name().to_string(), json)
            })
            .collect()
    }

    /// What `entry` would be with `overrides` (the stored ones) applied, checked against its
    /// handler without changing anything. Overrides of a settings key that only the file may
    /// set (`*_file`, `secret`; stored by an older version) are refused.
    pub fn check(&self, entry: &Entry, overrides: &Overrides) -> Result<Live, FieldError> {
        if let Some(settings) = &overrides.settings {
            changes::refuse_file_only(settings)?;
        }
        self.rebuilt.fetch_add(1, Ordering::Relaxed);
        prepare(
            entry.name(),
            &entry.file_definition().with(overrides),
            &self.config,
        )
    }

    /// Applies a listener's database row if it changed since it was last applied (state and
    /// overrides; an operator's change closes an enabled listener's breaker); returns whether
    /// it did. Only changes are followed, so a stale read never undoes a newer decision made
    /// in memory. Overrides that no longer suit the handler (written by another version) are
    /// logged, shown with the listener, and left unapplied. Builds the handler when the
    /// definition changed: call it where blocking is allowed (not on an async worker).
    pub fn apply_row(&self, row: &ListenerRow) -> bool {
        self.apply(row, None)
    }

    /// Applies a change just stored through [`changes`] with the listener it built, so that
    /// the handler is not built a second time.
    pub fn apply_saved(&self, saved: changes::Saved) -> bool {
        self.apply(&saved.row, Some(saved.live))
    }

    fn apply(&self, row: &ListenerRow, built: Option<Live>) -> bool {
        let Some(entry) = self.by_name(&row.name) else {
            return false;
        };
        if !entry.mark_row_applied(row.updated_at_ms) {
            return false;
        }
        let definition = changes::effective(entry, row);
        let same = |live: &Live| {
            let mut current = live.definition.clone();
            current.enabled = definition.enabled;
            current == definition
        };
        if same(&entry.live()) {
            entry.set_overrides_problem(None);
        } else {
            let live = match built.filter(|live| same(live)) {
                Some(live) => Ok(live),
                None => self.check(entry, &Overrides::from_stored(row.overrides.as_deref())),
            };
            match live {
                Ok(live) => {
                    entry.replace(live);
                    entry.set_overrides_problem(None);
                }
                Err(error) => {
                    tracing::error!(
                        listener = entry.name(),
                        %error,
                        "stored runtime changes do not suit the handler; keeping the previous definition"
                    );
                    entry.set_overrides_problem(Some(error.to_string()));
                }
            }
        }
        if auto_disabled_row(row) {
            entry.disable_automatically();
        } else {
            // The row changed through an operator (the breaker only ever disables): a listener
            // they leave enabled gets a fresh start, its circuit breaker closed.
            if definition.enabled {
                entry.health.reset();
            }
            entry.set_enabled(definition.enabled);
        }
        true
    }
}

/// The configuration key of a field of a listener's definition.
fn config_key(name: &str, legacy: bool, field: &str) -> String {
    match (legacy, field.strip_prefix("settings.")) {
        (true, Some(key)) => format!("handlers.{name}.{key}"),
        (true, None) => format!("handlers.{name}"),
        (false, _) if field.is_empty() => format!("listeners.{name}"),
        (false, _) => format!("listeners.{name}.{field}"),
    }
}

fn unknown_handler(name: &str) -> String {
    format!(
        "unknown handler `{name}`; compiled-in handlers are: {}",
        handlers::known().collect::<Vec<_>>().join(", ")
    )
}

/// Every listener's file definition, by name: the listener of each handler's own name (from
/// `[handlers.<name>]`, unless `[listeners.<name>]` redefines it), then `[listeners.*]`.
fn definitions(config: &Config) -> Result<Vec<(String, Definition)>, ListenerError> {
    let mut out = Vec::new();
    for kind in handlers::known() {
        if config.listeners.contains_key(kind) {
            continue;
        }
        let settings = config.handler_settings(kind);
        out.push((
            kind.to_string(),
            Definition {
                handler: kind.to_string(),
                description: String::new(),
                events: Vec::new(),
                scope: Scope::default(),
                enabled: settings.enabled,
                settings: settings.settings,
                rate_limits: None,
                files: settings.files,
            },
        ));
    }
    for (name, listener) in &config.listeners {
        if !handlers::is_known(&listener.handler) {
            return Err(ListenerError {
                key: format!("listeners.{name}.handler"),
                problem: unknown_handler(&listener.handler),
            });
        }
        if handlers::is_known(name) && listener.handler != *name {
            return Err(ListenerError {
                key: format!("listeners.{name}.handler"),
                problem: format!(
                    "a listener named like the handler `{name}` must run `{name}`; choose another name"
                ),
            });
        }
        out.push((
            name.clone(),
            Definition {
                handler: listener.handler.clone(),
                description: listener.description.clone(),
                events: listener.events.clone(),
                scope: listener.scope.clone(),
                enabled: listener.enabled,
                settings: listener.settings.clone(),
                rate_limits: listener.rate_limits.clone(),
                files: listener.files.clone(),
            },
        ));
    }
    Ok(out)
}

/// Builds the handler a definition names with its settings, and checks its event types.
fn prepare(name: &str, definition: &Definition, config: &Config) -> Result<Live, FieldError> {
    let settings = HandlerSettings {
        enabled: definition.enabled,
        listener: name.to_string(),
        settings: definition.settings.clone(),
        files: definition.files.clone(),
    };
    let handler = match handlers::build(&definition.handler, &settings, config) {
        None => {
            return Err(FieldError::new(
                "handler",
                unknown_handler(&definition.handler),
            ));
        }
        Some(Err(e)) => {
            let field = if e.key.is_empty() {
                "settings".to_string()
            } else {
                format!("settings.{}", e.key)
            };
            return Err(FieldError::new(field, e.problem));
        }
        Some(Ok(handler)) => handler,
    };
    for (i, event_type) in definition.events.iter().enumerate() {
        if !handler.interest().wants(event_type) {
            return Err(FieldError::new(
                format!("events[{i}]"),
                format!(
                    "`{}` does not take `{event_type}` events; it takes: {}",
                    definition.handler,
                    handler.interest().describe()
                ),
            ));
        }
    }
    let limits = definition.rate_limits.as_ref().map(|quotas| {
        let unlimited = QuotaConfig {
            per_minute: NonZeroU32::MAX,
            burst: NonZeroU32::MAX,
        };
        Limits::new(
            &quotas.per_realm.unwrap_or(unlimited),
            &quotas.per_user.unwrap_or(unlimited),
        )
    });
    Ok(Live {
        definition: definition.clone(),
        handler,
        limits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(toml: &str) -> Result<Registry, String> {
        let config = Config::from_toml(toml).map_err(|e| e.to_string())?;
        Registry::build(&config).map_err(|e| e.to_string())
    }

    #[test]
    fn unknown_listener_in_a_bot_names_the_key() {
        let err = build("[bots.h]\nemail = \"h@x.org\"\ntoken = \"t\"\nhandlers = [\"nope\"]")
            .err()
            .unwrap_or_default();
        assert!(
            err.contains("bots.h.handlers[0]") && err.contains("nope"),
            "{err}"
        );
    }

    /// A handler says what a bot's listener lacks (`Handler::check_bot_use`): a relay with
    /// nowhere to relay to is refused with the bot's key; with a `url` it is accepted.
    #[test]
    fn a_bot_may_list_a_relay_only_with_a_url() {
        let bot =
            "[bots.h]\nemail = \"h@x.org\"\ntoken = \"t\"\nlisteners = [\"command_bot\", \"r\"]\n";
        let err = build(&format!("{bot}[listeners.r]\nhandler = \"relay\"\n"))
            .err()
            .unwrap_or_default();
        assert_eq!(
            err,
            "configuration key `bots.h.listeners[1]`: `r` runs `relay`, which needs a `url` setting"
        );
        let with_url = format!(
            "{bot}[listeners.r]\nhandler = \"relay\"\n[listeners.r.settings]\nurl = \"http://127.0.0.1:9/\"\n"
        );
        assert!(build(&with_url).is_ok());
        // Not listed by a bot, a relay without a url is fine.
        assert!(build("[listeners.r]\nhandler = \"relay\"\n").is_ok());
    }

    #[test]
    fn named_listeners_are_built_with_their_own_settings() {
        let registry = build(
            r#"
            [listeners.eng-deploys]
            handler = "keyword_alerts"
            description = "Deploy talk"
            events = ["message"]
            realms = [7, "zulip"]
            streams = ["engineering", 12]
            [listeners.eng-deploys.settings]
            rules = [{ name = "deploy", pattern = "(?i)deploy", webhook = "http://127.0.0.1:9/x" }]
            "#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let entry = registry.by_name("eng-deploys").expect("built");
        assert_eq!(entry.handler_name(), "keyword_alerts");
        assert_eq!(entry.live().definition.scope.realms.len(), 2);
        // Every handler keeps the listener of its own name.
        assert!(registry.by_name("keyword_alerts").is_some());
    }

    #[test]
    fn bad_listener_settings_name_the_key() {
        let err =
            build("[listeners.x]\nhandler = \"keyword_alerts\"\n[listeners.x.settings]\nbogus = 1")
                .err()
                .unwrap_or_default();
        assert!(err.contains("listeners.x.settings.bogus"), "{err}");
        let err = build("[listeners.x]\nhandler = \"nope\"")
            .err()
            .unwrap_or_default();
        assert!(err.contains("listeners.x.handler"), "{err}");
        let err = build("[listeners.x]\nhandler = \"command_bot\"\nevents = [\"presence\"]")
            .err()
            .unwrap_or_default();
        assert!(err.contains("listeners.x.events[0]"), "{err}");
        let err = build("[handlers.message_logger]\nbogus = 1")
            .err()
            .unwrap_or_default();
        assert!(err.contains("handlers.message_logger.bogus"), "{err}");
    }
}

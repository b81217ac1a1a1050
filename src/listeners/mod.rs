//! Listeners: named instances of the compiled-in handlers, each with its own description,
//! event types, scope (realms, channels, users), settings and state. Built from
//! `[listeners.<name>]` and, for every handler, the listener of the handler's own name with
//! `[handlers.<name>]` settings; changed at runtime through [`changes`] (stored in the
//! database, winning over the file). This module owns which names exist and checks every
//! definition against its handler.

pub mod changes;
pub mod scope;

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use serde::Serialize;

use crate::config::{Config, HandlerSettings, QuotaConfig, QuotaOverrides, Scope};
use crate::db::tables::listeners::ListenerRow;
use crate::events::Event;
use crate::handlers::{self, Handler, Runnable, health};
use crate::ratelimit::Limits;
use changes::{FieldError, Overrides};

/// Index of a listener in the [`Registry`].
pub type ListenerId = usize;

/// The start of the stored reason of an automatic disable.
pub const AUTO_DISABLED: &str = "auto-disabled:";

/// What a listener is: the file's values, or those with the runtime overrides applied.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Definition {
    /// The compiled-in handler it runs.
    pub handler: String,
    pub description: String,
    /// Narrows the handler's event types; empty = all of them.
    pub events: Vec<String>,
    #[serde(flatten)]
    pub scope: Scope,
    pub enabled: bool,
    #[serde(serialize_with = "redacted")]
    pub settings: serde_json::Map<String, serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<QuotaOverrides>,
}

fn redacted<S: serde::Serializer>(
    settings: &serde_json::Map<String, serde_json::Value>,
    s: S,
) -> Result<S::Ok, S::Error> {
    crate::redact::settings(&serde_json::Value::Object(settings.clone())).serialize(s)
}

/// A listener as it runs now: its definition, the handler built from it, and its own quotas.
pub struct Live {
    pub definition: Definition,
    pub handler: Box<dyn Runnable>,
    /// The listener's own quotas (`rate_limits`), when it has any.
    pub limits: Option<Limits>,
}

impl Live {
    /// Whether the listener takes events of this type at all.
    pub fn wants_type(&self, event_type: &str) -> bool {
        self.handler.interest().wants(event_type)
            && (self.definition.events.is_empty()
                || self.definition.events.iter().any(|e| e == event_type))
    }

    /// Whether this event is for the listener: its type and its scope.
    pub fn wants(&self, event: &Event) -> bool {
        self.wants_type(event.event_type()) && self.definition.scope.admits(event)
    }

    /// The event types it takes, for display.
    pub fn describe_events(&self) -> String {
        if self.definition.events.is_empty() {
            self.handler.interest().describe()
        } else {
            self.definition.events.join(", ")
        }
    }
}

/// A listener and its runtime state.
pub struct Entry {
    /// Leaked once when the registry is built (a handful of short names per process), so that
    /// it can travel in metric labels and database rows without copies.
    name: &'static str,
    /// The definition from the configuration file.
    file: Definition,
    live: RwLock<Arc<Live>>,
    enabled: AtomicBool,
    /// Disabled automatically after too many failures (events that need it wait), as opposed
    /// to disabled by an operator (events are handled without it).
    auto_disabled: AtomicBool,
    /// The `updated_at_ms` of this listener's database row when it was last applied.
    applied_row_at_ms: AtomicI64,
    pub health: health::Health,
    /// Its run metrics, registered on first use (after the metrics recorder is installed).
    runs: OnceLock<crate::telemetry::metric::HandlerRuns>,
}

impl Entry {
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The definition from the configuration file, before runtime changes.
    pub fn file_definition(&self) -> &Definition {
        &self.file
    }

    /// The listener as it runs now (a cheap clone; runtime changes replace it whole).
    pub fn live(&self) -> Arc<Live> {
        match self.live.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn replace(&self, live: Live) {
        let live = Arc::new(live);
        match self.live.write() {
            Ok(mut guard) => *guard = live,
            Err(poisoned) => *poisoned.into_inner() = live,
        }
    }

    /// The compiled-in handler it runs.
    pub fn handler_name(&self) -> &'static str {
        self.live().handler.name()
    }

    pub fn is_pure(&self) -> bool {
        self.live().handler.is_pure()
    }

    pub fn wants_type(&self, event_type: &str) -> bool {
        self.live().wants_type(event_type)
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Enables or disables the listener on an operator's word.
    pub fn set_enabled(&self, enabled: bool) {
        if enabled && !self.enabled() {
            self.health.reset();
        }
        self.enabled.store(enabled, Ordering::Relaxed);
        self.auto_disabled.store(false, Ordering::Relaxed);
    }

    /// Disables the listener because it failed too often.
    pub fn disable_automatically(&self) {
        self.enabled.store(false, Ordering::Relaxed);
        self.auto_disabled.store(true, Ordering::Relaxed);
    }

    pub fn auto_disabled(&self) -> bool {
        !self.enabled() && self.auto_disabled.load(Ordering::Relaxed)
    }

    /// Records a run in the metrics.
    pub fn record_run(&self, ok: bool, seconds: f64) {
        self.runs
            .get_or_init(|| crate::telemetry::metric::HandlerRuns::new(self.name))
            .record(ok, seconds);
    }
}

/// Whether a stored row says the listener was disabled by its breaker.
pub fn auto_disabled_row(row: &ListenerRow) -> bool {
    !row.enabled
        && row
            .disabled_reason
            .as_deref()
            .is_some_and(|r| r.starts_with(AUTO_DISABLED))
}

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
            entries.push(Entry {
                enabled: AtomicBool::new(definition.enabled),
                name: Box::leak(name.into_boxed_str()),
                file: definition,
                live: RwLock::new(Arc::new(live)),
                auto_disabled: AtomicBool::new(false),
                applied_row_at_ms: AtomicI64::new(i64::MIN),
                health: health::Health::new((&config.error_handling).into()),
                runs: OnceLock::new(),
            });
        }
        let registry = Registry {
            entries,
            config: Arc::new(config.clone()),
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
                    .map(|e| e.name)
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
                if live.handler.name() == handlers::Relay::NAME
                    && !handlers::Relay::is_configured(&HandlerSettings {
                        enabled: true,
                        listener: name.clone(),
                        settings: live.definition.settings.clone(),
                    })
                {
                    return Err(ListenerError {
                        key,
                        problem: format!("`{name}` runs `relay`, which needs a `url` setting"),
                    });
                }
            }
        }
        Ok(())
    }

    pub fn id(&self, name: &str) -> Option<ListenerId> {
        self.entries.iter().position(|e| e.name == name)
    }

    pub fn get(&self, id: ListenerId) -> Option<&Entry> {
        self.entries.get(id)
    }

    pub fn by_name(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.name == name)
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
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
                let json = serde_json::to_string(&e.file).unwrap_or_else(|_| "{}".into());
                (e.name.to_string(), json)
            })
            .collect()
    }

    /// What `entry` would be with `overrides` (the stored ones) applied, checked against its
    /// handler without changing anything.
    pub fn check(&self, entry: &Entry, overrides: &Overrides) -> Result<Live, FieldError> {
        prepare(entry.name, &entry.file.with(overrides), &self.config)
    }

    /// Applies a listener's database row if it changed since it was last applied (state and
    /// overrides; an operator's change closes an enabled listener's breaker); returns whether
    /// it did. Only changes are followed, so a stale read never
    /// undoes a newer decision made in memory. Overrides that no longer suit the handler
    /// (written by another version) are logged and left unapplied.
    pub fn apply_row(&self, row: &ListenerRow) -> bool {
        let Some(entry) = self.by_name(&row.name) else {
            return false;
        };
        let seen = entry.applied_row_at_ms.load(Ordering::Relaxed);
        if row.updated_at_ms <= seen {
            return false;
        }
        entry
            .applied_row_at_ms
            .store(row.updated_at_ms, Ordering::Relaxed);
        let definition = changes::effective(entry, row);
        let mut current = entry.live().definition.clone();
        current.enabled = definition.enabled;
        if current != definition {
            match prepare(entry.name, &definition, &self.config) {
                Ok(live) => entry.replace(live),
                Err(error) => tracing::error!(
                    listener = entry.name,
                    %error,
                    "stored runtime changes do not suit the handler; keeping the previous definition"
                ),
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

impl Registry {
    /// Who sends this listener events: `bot:<name>` for each bot listing it, `forwarder`.
    pub fn used_by(&self, name: &str) -> Vec<String> {
        let mut users: Vec<String> = self
            .config
            .bots
            .iter()
            .filter(|(_, b)| b.listener_names().iter().any(|h| h == name))
            .map(|(n, _)| format!("bot:{n}"))
            .collect();
        if self
            .config
            .forwarder
            .listener_names()
            .iter()
            .any(|h| h == name)
        {
            users.push("forwarder".into());
        }
        users
    }

    /// A listener as the admin API and the CLI show it: its definition as it runs here (with
    /// runtime changes; settings redacted), its state, which fields the database overrides,
    /// and who sends it events. `row` is its stored state, when read.
    pub fn view(&self, entry: &Entry, row: Option<&ListenerRow>) -> serde_json::Value {
        let live = entry.live();
        let now = std::time::Instant::now();
        let open_for = entry
            .health
            .open_until(now)
            .map(|u| u.saturating_duration_since(now));
        let state = if entry.auto_disabled() {
            "auto_disabled"
        } else if !entry.enabled()
            && !entry.file.enabled
            && row.is_none_or(|r| r.overrides.is_none())
        {
            "off"
        } else if !entry.enabled() {
            "disabled"
        } else if open_for.is_some() {
            "breaker_open"
        } else {
            "ok"
        };
        let overridden: Vec<&str> = row
            .map(|r| Overrides::from_stored(r.overrides.as_deref()))
            .map(|o| {
                let value = serde_json::to_value(&o).unwrap_or_default();
                changes::FIELDS
                    .iter()
                    .copied()
                    .filter(|f| value.get(*f).is_some())
                    .collect()
            })
            .unwrap_or_default();
        serde_json::json!({
            "name": entry.name,
            "handler": live.handler.name(),
            "description": live.definition.description,
            "events": live.describe_events(),
            "realms": live.definition.scope.realms,
            "streams": live.definition.scope.streams,
            "users": live.definition.scope.users,
            "settings": crate::redact::settings(&serde_json::Value::Object(live.definition.settings.clone())),
            "enabled": entry.enabled(),
            "state": state,
            "disabled_reason": row.and_then(|r| r.disabled_reason.clone()),
            "breaker": if open_for.is_some() { "open" } else { "closed" },
            "breaker_open_for_ms": open_for.map(|d| d.as_millis() as u64),
            "failures_last_hour": entry.health.failures_last_hour(now),
            "pure": live.handler.is_pure(),
            "overridden": overridden,
            "used_by": self.used_by(entry.name),
        })
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

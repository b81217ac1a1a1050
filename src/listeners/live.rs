//! One listener at run time: its [`Definition`] (the file's, or with runtime changes applied),
//! the [`Live`] handler built from it with its own quotas, and the [`Entry`] that holds it with
//! its state: enabled or disabled (by an operator, or automatically by its circuit breaker),
//! the breaker itself, and its run metrics.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use serde::Serialize;

use super::breaker;
use crate::config::{QuotaOverrides, Scope, SettingFiles};
use crate::db::tables::listeners::ListenerRow;
use crate::events::Event;
use crate::guards::ratelimit::Limits;
use crate::handlers::Runnable;

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
    /// The files the file's `*_file` settings name, read when the configuration was loaded
    /// (a runtime change cannot name another).
    #[serde(skip)]
    pub files: SettingFiles,
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
    /// Whether the listener takes events of this type at all. A handler that takes deletions
    /// (it keeps messages) gets them whatever the listener's `events` list: they only erase.
    pub fn wants_type(&self, event_type: &str) -> bool {
        self.handler.interest().wants(event_type)
            && (self.definition.events.is_empty()
                || event_type == "delete_message"
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
    /// Why the stored runtime changes last read are not applied, when they are not.
    overrides_problem: RwLock<Option<String>>,
    pub health: breaker::Health,
    /// Its run metrics, registered on first use (after the metrics recorder is installed).
    runs: OnceLock<crate::telemetry::metric::ListenerRuns>,
}

impl Entry {
    /// A listener as the registry builds it: enabled as its file definition says, its breaker
    /// closed, no database row applied yet.
    pub(super) fn new(
        name: String,
        file: Definition,
        live: Live,
        health: breaker::Health,
    ) -> Entry {
        Entry {
            enabled: AtomicBool::new(file.enabled),
            name: Box::leak(name.into_boxed_str()),
            file,
            live: RwLock::new(Arc::new(live)),
            auto_disabled: AtomicBool::new(false),
            applied_row_at_ms: AtomicI64::new(i64::MIN),
            overrides_problem: RwLock::new(None),
            health,
            runs: OnceLock::new(),
        }
    }

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

    pub(super) fn replace(&self, live: Live) {
        let live = Arc::new(live);
        match self.live.write() {
            Ok(mut guard) => *guard = live,
            Err(poisoned) => *poisoned.into_inner() = live,
        }
    }

    /// Notes that its database row as of `updated_at_ms` is being applied; `false` when that
    /// row (or a newer one) already was.
    pub(super) fn mark_row_applied(&self, updated_at_ms: i64) -> bool {
        if updated_at_ms <= self.applied_row_at_ms.load(Ordering::Relaxed) {
            return false;
        }
        self.applied_row_at_ms
            .store(updated_at_ms, Ordering::Relaxed);
        true
    }

    /// Why the stored runtime changes are not applied (they do not suit the handler); `None`
    /// when they are, or when there are none.
    pub fn overrides_problem(&self) -> Option<String> {
        match self.overrides_problem.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub(super) fn set_overrides_problem(&self, problem: Option<String>) {
        match self.overrides_problem.write() {
            Ok(mut guard) => *guard = problem,
            Err(poisoned) => *poisoned.into_inner() = problem,
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
            .get_or_init(|| crate::telemetry::metric::ListenerRuns::new(self.name))
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

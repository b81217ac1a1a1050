//! How a listener is shown by the admin API, the dashboard and the CLI: its definition as it
//! runs here (settings redacted), its [`ListenerState`], which fields the database overrides
//! (beside the file's values, and why they are not applied when they are not), and who sends it
//! events.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::changes::{self, Overridden, Overrides};
use super::{Entry, Registry};
use crate::db::tables::listeners::ListenerRow;

/// How a listener stands, as the admin API, the CLI, the dashboard and `GET /health` show it
/// (the field `state`, its [`ListenerState::as_str`] text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ListenerState {
    /// Enabled, its circuit breaker closed.
    Ok,
    /// Turned off in the configuration file, and not changed at run time: a choice.
    Off,
    /// Disabled at run time by an operator.
    Disabled,
    /// Disabled automatically after too many failures within an hour.
    AutoDisabled,
    /// Enabled, but its circuit breaker is open: paused until a trial run succeeds.
    BreakerOpen,
}

impl ListenerState {
    /// Every state, in declaration order.
    pub const ALL: [ListenerState; 5] = [
        ListenerState::Ok,
        ListenerState::Off,
        ListenerState::Disabled,
        ListenerState::AutoDisabled,
        ListenerState::BreakerOpen,
    ];

    /// The text shown for it.
    pub const fn as_str(self) -> &'static str {
        match self {
            ListenerState::Ok => "ok",
            ListenerState::Off => "off",
            ListenerState::Disabled => "disabled",
            ListenerState::AutoDisabled => "auto_disabled",
            ListenerState::BreakerOpen => "breaker_open",
        }
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
        serde_json::to_value(self.listener_view(entry, row)).unwrap_or_default()
    }

    /// [`Registry::view`] as its type: what the admin API answers (and documents).
    pub fn listener_view(&self, entry: &Entry, row: Option<&ListenerRow>) -> ListenerView {
        let live = entry.live();
        let now = std::time::Instant::now();
        let open_for = entry
            .health
            .open_until(now)
            .map(|u| u.saturating_duration_since(now));
        let state = if entry.auto_disabled() {
            ListenerState::AutoDisabled
        } else if !entry.enabled()
            && !entry.file_definition().enabled
            && row.is_none_or(|r| r.overrides.is_none())
        {
            ListenerState::Off
        } else if !entry.enabled() {
            ListenerState::Disabled
        } else if open_for.is_some() {
            ListenerState::BreakerOpen
        } else {
            ListenerState::Ok
        };
        let stored = row
            .map(|r| Overrides::from_stored(r.overrides.as_deref()))
            .unwrap_or_default();
        let value = serde_json::to_value(&stored).unwrap_or_default();
        let overridden = changes::FIELDS
            .iter()
            .filter(|f| value.get(**f).is_some())
            .map(|f| f.to_string())
            .collect();
        let selectors = |list: Value| match list {
            Value::Array(items) => items,
            _ => Vec::new(),
        };
        let scope = &live.definition.scope;
        ListenerView {
            name: entry.name().to_string(),
            handler: live.handler.name().to_string(),
            description: live.definition.description.clone(),
            events: live.describe_events(),
            realms: selectors(serde_json::to_value(&scope.realms).unwrap_or_default()),
            streams: selectors(serde_json::to_value(&scope.streams).unwrap_or_default()),
            users: selectors(serde_json::to_value(&scope.users).unwrap_or_default()),
            settings: crate::redact::settings(&Value::Object(live.definition.settings.clone())),
            enabled: entry.enabled(),
            state,
            disabled_reason: row.and_then(|r| r.disabled_reason.clone()),
            breaker: if open_for.is_some() {
                Breaker::Open
            } else {
                Breaker::Closed
            },
            breaker_open_for_ms: open_for.map(|d| d.as_millis() as u64),
            failures_last_hour: entry.health.failures_last_hour(now),
            pure: live.handler.is_pure(),
            overridden,
            overrides: changes::overridden(entry.file_definition(), &stored),
            overrides_problem: entry.overrides_problem(),
            used_by: self.used_by(entry.name()),
        }
    }
}

/// A listener's circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Breaker {
    Open,
    Closed,
}

/// One listener as shown: definition as it runs here, state, runtime changes, users.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ListenerView {
    pub name: String,
    /// The handler it runs (the kind, e.g. `echo`).
    pub handler: String,
    pub description: String,
    /// The events it handles, in words.
    pub events: String,
    /// Realms it is limited to (ids or subdomains); empty: every realm.
    pub realms: Vec<Value>,
    /// Channels it is limited to (ids or names); empty: anywhere.
    pub streams: Vec<Value>,
    /// Users it is limited to (ids or emails); empty: anyone.
    pub users: Vec<Value>,
    /// Its settings, secrets redacted.
    pub settings: Value,
    pub enabled: bool,
    pub state: ListenerState,
    /// Who disabled it, through what, and why.
    pub disabled_reason: Option<String>,
    pub breaker: Breaker,
    /// How long the open breaker stays open.
    pub breaker_open_for_ms: Option<u64>,
    pub failures_last_hour: usize,
    /// Whether its handler only answers (writes nothing, calls nothing).
    pub pure: bool,
    /// The fields the database overrides.
    pub overridden: Vec<String>,
    /// Each overridden field beside the file's value.
    pub overrides: Vec<Overridden>,
    /// Why the stored overrides are not applied, when they are not.
    pub overrides_problem: Option<String>,
    /// Who sends it events: `bot:<name>`, `forwarder`.
    pub used_by: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::ListenerState;

    #[test]
    fn a_state_is_shown_as_its_text() {
        for state in ListenerState::ALL {
            assert_eq!(serde_json::json!(state), state.as_str());
        }
    }
}

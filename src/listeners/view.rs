//! How a listener is shown by the admin API, the dashboard and the CLI: its definition as it
//! runs here (settings redacted), its [`ListenerState`], which fields the database overrides
//! (beside the file's values, and why they are not applied when they are not), and who sends it
//! events.

use super::changes::{self, Overrides};
use super::{Entry, Registry};
use crate::db::tables::listeners::ListenerRow;

/// How a listener stands, as the admin API, the CLI, the dashboard and `GET /health` show it
/// (the field `state`, its [`ListenerState::as_str`] text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
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
        let overridden: Vec<&str> = changes::FIELDS
            .iter()
            .copied()
            .filter(|f| value.get(*f).is_some())
            .collect();
        serde_json::json!({
            "name": entry.name(),
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
            "overrides": changes::overridden(entry.file_definition(), &stored),
            "overrides_problem": entry.overrides_problem(),
            "used_by": self.used_by(entry.name()),
        })
    }
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

//! Runtime changes to a listener: the fields an operator may change (`PATCH
//! /admin/listeners/{name}`, `zulip-listeners listeners set`), how they are read and checked,
//! how they combine with the file's definition, and the history they leave.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use diesel::Connection;

use super::{Definition, Entry, Registry};
use crate::clock::now_ms;
use crate::config::{ChannelSelector, RealmSelector, Scope, UserSelector};
use crate::db::tables::listeners::{HistoryRow, ListenerRow};
use crate::db::{self, DbConnection, DbError};

/// Fields an operator may change, as named in requests and in the history.
pub const FIELDS: &[&str] = &[
    "enabled",
    "description",
    "events",
    "realms",
    "streams",
    "users",
    "settings",
];

/// A problem with one field of a listener definition or change; `field` is relative to the
/// listener (`events[1]`, `settings.url`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}`: {problem}")]
pub struct FieldError {
    pub field: String,
    pub problem: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// Changed fields; absent ones keep their value. `settings` is a JSON merge patch (RFC
/// 7386): a key set to `null` goes back to the file's value or the handler's default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Overrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realms: Option<Vec<RealmSelector>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streams: Option<Vec<ChannelSelector>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<Vec<UserSelector>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<Map<String, Value>>,
}

impl Overrides {
    /// Reads a change from a JSON object, naming the field at fault.
    pub fn parse(value: &Value) -> Result<Overrides, FieldError> {
        let Some(object) = value.as_object() else {
            return Err(FieldError::new(
                "",
                "the body must be a JSON object of the fields to change",
            ));
        };
        if object.is_empty() {
            return Err(FieldError::new(
                "",
                format!("nothing to change; give any of {}", FIELDS.join(", ")),
            ));
        }
        let mut out = Overrides::default();
        for (key, value) in object {
            match key.as_str() {
                "enabled" => out.enabled = Some(field(key, value, "true or false")?),
                "description" => {
                    let text: String = field(key, value, "a string")?;
                    if text.chars().count() > 500 {
                        return Err(FieldError::new(key, "at most 500 characters"));
                    }
                    out.description = Some(text);
                }
                "events" => out.events = Some(list(key, value, "event type names")?),
                "realms" => out.realms = Some(list(key, value, "realm ids or subdomains")?),
                "streams" => out.streams = Some(list(key, value, "channel ids or names")?),
                "users" => out.users = Some(list(key, value, "user ids or emails")?),
                "settings" => {
                    if let Some(at) = crate::handlers::webhooks::signing_secret_key(value) {
                        return Err(FieldError::new(
                            format!("settings.{at}"),
                            "a signing secret is set only in the configuration file, not by a runtime change",
                        ));
                    }
                    out.settings = Some(field(key, value, "an object of the handler's settings")?)
                }
                other => {
                    return Err(FieldError::new(
                        other,
                        format!("not a field that can be changed; use {}", FIELDS.join(", ")),
                    ));
                }
            }
        }
        Ok(out)
    }

    /// The stored overrides with `newer` on top.
    pub fn merged(&self, newer: &Overrides) -> Overrides {
        let settings = match (&self.settings, &newer.settings) {
            (Some(old), Some(new)) => {
                let mut merged = old.clone();
                for (k, v) in new {
                    merged.insert(k.clone(), v.clone());
                }
                Some(merged)
            }
            (old, new) => new.clone().or_else(|| old.clone()),
        };
        Overrides {
            enabled: newer.enabled.or(self.enabled),
            description: newer.description.clone().or(self.description.clone()),
            events: newer.events.clone().or(self.events.clone()),
            realms: newer.realms.clone().or(self.realms.clone()),
            streams: newer.streams.clone().or(self.streams.clone()),
            users: newer.users.clone().or(self.users.clone()),
            settings,
        }
    }

    /// Reads stored overrides; unreadable ones (written by a newer version) count as none.
    pub fn from_stored(text: Option<&str>) -> Overrides {
        text.and_then(|t| serde_json::from_str(t).ok())
            .unwrap_or_default()
    }

    pub fn to_stored(&self) -> Option<String> {
        (self != &Overrides::default())
            .then(|| serde_json::to_string(self).unwrap_or_else(|_| "{}".to_string()))
    }
}

fn field<T: serde::de::DeserializeOwned>(
    key: &str,
    value: &Value,
    what: &str,
) -> Result<T, FieldError> {
    serde_json::from_value(value.clone())
        .map_err(|_| FieldError::new(key, format!("must be {what}, not {}", kind_of(value))))
}

fn list<T: serde::de::DeserializeOwned>(
    key: &str,
    value: &Value,
    what: &str,
) -> Result<Vec<T>, FieldError> {
    let Some(items) = value.as_array() else {
        return Err(FieldError::new(
            key,
            format!("must be a list of {what}, not {}", kind_of(value)),
        ));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            serde_json::from_value(item.clone()).map_err(|_| {
                FieldError::new(
                    format!("{key}[{i}]"),
                    format!("must be one of {what}, not {}", kind_of(item)),
                )
            })
        })
        .collect()
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

impl Definition {
    /// This definition with `overrides` applied.
    pub fn with(&self, overrides: &Overrides) -> Definition {
        let mut out = self.clone();
        if let Some(v) = overrides.enabled {
            out.enabled = v;
        }
        if let Some(v) = &overrides.description {
            out.description.clone_from(v);
        }
        if let Some(v) = &overrides.events {
            out.events.clone_from(v);
        }
        let scope = &mut out.scope;
        if let Some(v) = &overrides.realms {
            scope.realms.clone_from(v);
        }
        if let Some(v) = &overrides.streams {
            scope.streams.clone_from(v);
        }
        if let Some(v) = &overrides.users {
            scope.users.clone_from(v);
        }
        if let Some(patch) = &overrides.settings {
            for (k, v) in patch {
                if v.is_null() {
                    out.settings.remove(k);
                } else {
                    out.settings.insert(k.clone(), v.clone());
                }
            }
        }
        out
    }
}

/// One history row per field that differs between `old` and `new`; settings are shown
/// redacted (no secrets, URLs cut to their origin).
pub fn history(
    listener: &str,
    source: &str,
    old: &Definition,
    new: &Definition,
    at_ms: i64,
) -> Vec<HistoryRow> {
    let scope_json = |s: &Scope| serde_json::to_value(s).unwrap_or(Value::Null);
    let (old_scope, new_scope) = (scope_json(&old.scope), scope_json(&new.scope));
    let settings = |d: &Definition| crate::redact::settings(&Value::Object(d.settings.clone()));
    let pairs: [(&str, Value, Value); 7] = [
        (
            "enabled",
            Value::Bool(old.enabled),
            Value::Bool(new.enabled),
        ),
        (
            "description",
            Value::String(old.description.clone()),
            Value::String(new.description.clone()),
        ),
        ("events", strings(&old.events), strings(&new.events)),
        (
            "realms",
            old_scope["realms"].clone(),
            new_scope["realms"].clone(),
        ),
        (
            "streams",
            old_scope["streams"].clone(),
            new_scope["streams"].clone(),
        ),
        (
            "users",
            old_scope["users"].clone(),
            new_scope["users"].clone(),
        ),
        ("settings", settings(old), settings(new)),
    ];
    pairs
        .into_iter()
        .filter(|(_, a, b)| a != b)
        .map(|(field, a, b)| HistoryRow {
            id: 0,
            listener: listener.to_string(),
            changed_at_ms: at_ms,
            source: source.to_string(),
            field: field.to_string(),
            old_value: Some(a.to_string()),
            new_value: Some(b.to_string()),
            actor: None,
        })
        .collect()
}

fn strings(list: &[String]) -> Value {
    Value::Array(list.iter().cloned().map(Value::String).collect())
}

/// Where a change came from, as recorded in the history.
pub mod source {
    pub const ADMIN_API: &str = "admin API";
    pub const CLI: &str = "CLI";
    pub const BREAKER: &str = "breaker";
    pub const REPLAY: &str = "replay";
    pub const DASHBOARD: &str = "dashboard";
    /// The daily retention pass (dead letters discarded after `retention.dead_letter_days`).
    pub const RETENTION: &str = "retention";
}

/// Why a change was not made.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("no listener named `{0}`")]
    NotFound(String),
    #[error(transparent)]
    Invalid(FieldError),
    #[error(transparent)]
    Database(#[from] DbError),
}

impl From<diesel::result::Error> for ChangeError {
    fn from(e: diesel::result::Error) -> Self {
        ChangeError::Database(e.into())
    }
}

/// The stored state of a listener that has no row yet.
fn fresh_row(entry: &Entry) -> ListenerRow {
    ListenerRow {
        name: entry.name().to_string(),
        enabled: true,
        config: "{}".into(),
        disabled_reason: None,
        created_at_ms: now_ms(),
        updated_at_ms: 0,
        overrides: None,
    }
}

/// Applies an operator's change (one transaction): merges it with the stored overrides,
/// checks the result against the handler, stores it with one history row per changed field,
/// and returns the new row (apply it with [`Registry::apply_row`]) and the history. `reason`
/// is kept with a disable (default: where it came from); `actor` (the admin token's name) is
/// recorded in the history.
pub fn change(
    conn: &mut DbConnection,
    registry: &Registry,
    name: &str,
    patch: &Overrides,
    source: &str,
    reason: Option<&str>,
    actor: Option<&str>,
) -> Result<(ListenerRow, Vec<HistoryRow>), ChangeError> {
    save_change(conn, registry, name, source, actor, |entry, row| {
        let merged = Overrides::from_stored(row.overrides.as_deref()).merged(patch);
        registry
            .check(entry, &merged)
            .map_err(ChangeError::Invalid)?;
        let mut new_row = ListenerRow {
            overrides: merged.to_stored(),
            ..row
        };
        if let Some(enabled) = patch.enabled {
            new_row.enabled = enabled;
            new_row.disabled_reason = (!enabled).then(|| {
                reason.map_or_else(|| format!("disabled through the {source}"), str::to_string)
            });
        }
        Ok(new_row)
    })
}

/// Records that the breaker disabled a listener (`reason` starts with [`AUTO_DISABLED`]).
pub fn disable_automatically(
    conn: &mut DbConnection,
    registry: &Registry,
    name: &str,
    reason: &str,
) -> Result<ListenerRow, ChangeError> {
    let (row, _) = save_change(conn, registry, name, source::BREAKER, None, |_, row| {
        Ok(ListenerRow {
            enabled: false,
            disabled_reason: Some(reason.to_string()),
            ..row
        })
    })?;
    Ok(row)
}

/// One change of a listener's stored row, in one transaction that holds the row's write lock
/// from the start: `edit` turns the stored row into the new one; the fields that differ in
/// effect are written to the history, with where the change came from and who made it.
fn save_change(
    conn: &mut DbConnection,
    registry: &Registry,
    name: &str,
    source: &str,
    actor: Option<&str>,
    edit: impl FnOnce(&Entry, ListenerRow) -> Result<ListenerRow, ChangeError>,
) -> Result<(ListenerRow, Vec<HistoryRow>), ChangeError> {
    let entry = registry
        .by_name(name)
        .ok_or_else(|| ChangeError::NotFound(name.to_string()))?;
    conn.transaction::<_, ChangeError, _>(|conn| {
        db::tables::listeners::lock(conn, name)?;
        let row = db::tables::listeners::row(conn, name)?.unwrap_or_else(|| fresh_row(entry));
        let before = effective(entry, &row);
        let new_row = edit(entry, row)?;
        let after = effective(entry, &new_row);
        let mut history = history(name, source, &before, &after, now_ms());
        for row in &mut history {
            row.actor = actor.map(str::to_string);
        }
        let saved = db::tables::listeners::save(conn, &new_row, &history)?;
        Ok((saved, history))
    })
}

/// A listener's definition as a stored row makes it: the file's, the overrides on top, and
/// `enabled` as the operator or the breaker last left it.
pub fn effective(entry: &Entry, row: &ListenerRow) -> Definition {
    let overrides = Overrides::from_stored(row.overrides.as_deref());
    let mut definition = entry.file_definition().with(&overrides);
    definition.enabled = if super::auto_disabled_row(row) {
        false
    } else {
        overrides
            .enabled
            .unwrap_or(entry.file_definition().enabled && row.enabled)
    };
    definition
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn definition() -> Definition {
        Definition {
            handler: "keyword_alerts".into(),
            description: String::new(),
            events: vec![],
            scope: Scope::default(),
            enabled: true,
            settings: json!({"a": 1, "b": 2})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            rate_limits: None,
        }
    }

    #[test]
    fn parse_names_the_field_at_fault() {
        let err = Overrides::parse(&json!({"streams": ["eng", true]})).unwrap_err();
        assert_eq!(err.field, "streams[1]");
        let err = Overrides::parse(&json!({"enabled": "yes"})).unwrap_err();
        assert_eq!(err.field, "enabled");
        let err = Overrides::parse(&json!({"handler": "x"})).unwrap_err();
        assert_eq!(err.field, "handler");
        assert!(Overrides::parse(&json!({})).is_err());
        assert!(Overrides::parse(&json!([1])).is_err());
    }

    #[test]
    fn settings_merge_and_null_restores() {
        let first = Overrides::parse(&json!({"settings": {"a": 5, "c": 3}})).unwrap();
        let second = Overrides::parse(&json!({"settings": {"a": null}, "realms": [7]})).unwrap();
        let stored = first.merged(&second);
        let effective = definition().with(&stored);
        assert_eq!(Value::Object(effective.settings), json!({"b": 2, "c": 3}));
        assert_eq!(effective.scope.realms, vec![RealmSelector::Id(7)]);
        let round = Overrides::from_stored(stored.to_stored().as_deref());
        assert_eq!(round, stored);
    }

    #[test]
    fn history_lists_changed_fields_only() {
        let old = definition();
        let new =
            old.with(&Overrides::parse(&json!({"streams": ["eng"], "enabled": false})).unwrap());
        let rows = history("x", "admin API", &old, &new, 1);
        let fields: Vec<&str> = rows.iter().map(|r| r.field.as_str()).collect();
        assert_eq!(fields, vec!["enabled", "streams"]);
        assert_eq!(rows[1].new_value.as_deref(), Some("[\"eng\"]"));
    }
}

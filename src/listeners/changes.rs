//! Runtime changes to a listener: the fields an operator may change (`PATCH
//! /admin/listeners/{name}`, `zulip-listeners listeners set`, the dashboard's edit form) and
//! how they are dropped again ([`reset`]: `listeners reset`, `DELETE
//! /admin/listeners/{name}/overrides`), how they are read and checked (`overrides.rs`), how
//! they combine with the file's definition, and the history they leave. The CLI, the admin
//! API and the dashboard are thin wrappers around [`change`] and [`reset`].
//!
//! A change's handler is built once, before the transaction that stores it (the row's lock
//! is held only to compare and write), and handed back in [`Saved`] for
//! `Registry::apply_saved`; it never reads a file (see `config::files`).

mod overrides;
mod reset;

use serde_json::Value;

use diesel::Connection;

use super::{Definition, Entry, Live, Registry};
use crate::clock::now_ms;
use crate::config::Scope;
use crate::db::tables::listeners::{HistoryRow, ListenerRow};
use crate::db::{self, DbConnection, DbError};

pub(crate) use overrides::refuse_file_only;
pub use overrides::{Overrides, file_only_key, is_file_only};
pub use reset::{Overridden, ResetTarget, overridden, reset};

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
    /// A reset of a field the database does not override.
    #[error("`{listener}` has no runtime change of `{field}`; changed are: {overridden}")]
    NotOverridden {
        listener: String,
        field: String,
        overridden: String,
    },
    /// The stored changes kept changing while this one was checked.
    #[error("`{0}` was changed by another request at the same time; try again")]
    Conflict(String),
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

/// A change as stored: the new row, the history it left, and the listener built from it
/// (apply it with [`Registry::apply_saved`]).
pub struct Saved {
    pub row: ListenerRow,
    pub history: Vec<HistoryRow>,
    pub live: Live,
}

/// Applies an operator's change: merges it with the stored overrides, checks the result
/// against the handler, stores it with one history row per changed field (one transaction),
/// and returns it with the listener built from it. `reason` is kept with a disable (default:
/// where it came from); `actor` (the admin token's name) is recorded in the history.
pub fn change(
    conn: &mut DbConnection,
    registry: &Registry,
    name: &str,
    patch: &Overrides,
    source: &str,
    reason: Option<&str>,
    actor: Option<&str>,
) -> Result<Saved, ChangeError> {
    store_overrides(
        conn,
        registry,
        name,
        (source, actor),
        |stored| Ok(stored.merged(patch)),
        |mut row| {
            if let Some(enabled) = patch.enabled {
                row.enabled = enabled;
                row.disabled_reason = (!enabled).then(|| {
                    reason.map_or_else(|| format!("disabled through the {source}"), str::to_string)
                });
            }
            row
        },
    )
}

/// How often a change is checked again when the stored overrides changed meanwhile.
const ATTEMPTS: usize = 3;

/// Stores the overrides `next` makes of the stored ones, and the row as `edit_row` leaves it,
/// recorded with `(source, actor)`. The handler is built (and checked) first, outside the
/// transaction; the transaction then stores the change only if the stored overrides are
/// still those it was built from.
fn store_overrides(
    conn: &mut DbConnection,
    registry: &Registry,
    name: &str,
    (source, actor): (&str, Option<&str>),
    next: impl Fn(&Overrides) -> Result<Overrides, ChangeError>,
    edit_row: impl Fn(ListenerRow) -> ListenerRow,
) -> Result<Saved, ChangeError> {
    let entry = registry
        .by_name(name)
        .ok_or_else(|| ChangeError::NotFound(name.to_string()))?;
    for _ in 0..ATTEMPTS {
        let stored = db::tables::listeners::row(conn, name)?.and_then(|r| r.overrides);
        let overrides = next(&Overrides::from_stored(stored.as_deref()))?;
        let live = registry
            .check(entry, &overrides)
            .map_err(ChangeError::Invalid)?;
        let saved = save_change(conn, registry, name, source, actor, |_, row| {
            if row.overrides != stored {
                return Err(ChangeError::Conflict(name.to_string()));
            }
            Ok(edit_row(ListenerRow {
                overrides: overrides.to_stored(),
                ..row
            }))
        });
        match saved {
            Err(ChangeError::Conflict(_)) => continue,
            saved => {
                let (row, history) = saved?;
                return Ok(Saved { row, history, live });
            }
        }
    }
    Err(ChangeError::Conflict(name.to_string()))
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
    use crate::config::RealmSelector;
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
            files: Default::default(),
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
        // `a` is the file's again; `c` stays overridden; `b` was never touched.
        assert_eq!(
            Value::Object(effective.settings),
            json!({"a": 1, "b": 2, "c": 3})
        );
        assert_eq!(effective.scope.realms, vec![RealmSelector::Id(7)]);
        assert_eq!(stored.settings, json!({"c": 3}).as_object().cloned());
        let round = Overrides::from_stored(stored.to_stored().as_deref());
        assert_eq!(round, stored);
        // Null for a key the file has and nothing stored: the file's value, nothing stored.
        let only_null = Overrides::default()
            .merged(&Overrides::parse(&json!({"settings": {"b": null}})).unwrap());
        assert_eq!(only_null, Overrides::default());
        assert_eq!(
            definition().with(&only_null).settings,
            definition().settings
        );
        // A null stored by an older version does not delete the file's value either.
        let legacy = Overrides::from_stored(Some(r#"{"settings":{"a":null}}"#));
        assert_eq!(definition().with(&legacy).settings, definition().settings);
    }

    /// A registry with a `relay` listener and a migrated SQLite database beside it.
    fn relay_and_database(dir: &std::path::Path) -> (Registry, DbConnection) {
        let config = crate::config::Config::from_toml(&format!(
            "[database]\nurl = \"sqlite://{}/t.db\"\n[handlers.relay]\nurl = \"http://127.0.0.1:9/\"\n",
            dir.display()
        ))
        .expect("valid");
        let registry = Registry::build(&config).expect("built");
        let mut conn = db::establish(&config.database.url).expect("database");
        db::run_migrations(&mut conn).expect("migrations");
        db::tables::listeners::sync(&mut conn, &registry.listener_rows()).expect("rows");
        (registry, conn)
    }

    #[test]
    fn a_change_builds_its_handler_once_and_is_applied_with_it() {
        let dir = tempfile::tempdir().expect("dir");
        let (registry, mut conn) = relay_and_database(dir.path());
        let patch = Overrides::parse(&json!({"settings": {"timeout": "5s"}})).unwrap();
        let saved = change(
            &mut conn,
            &registry,
            "relay",
            &patch,
            source::CLI,
            None,
            None,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(registry.rebuilt(), 1, "checked once");
        assert!(registry.apply_saved(saved));
        assert_eq!(
            registry.rebuilt(),
            1,
            "applied with the handler the check built"
        );
        let live = registry.by_name("relay").map(|e| e.live()).expect("relay");
        assert_eq!(live.definition.settings["timeout"], "5s");

        // Another process reading the row builds it once, too.
        let (other, mut other_conn) = relay_and_database(dir.path());
        let row = db::tables::listeners::row(&mut other_conn, "relay")
            .expect("read")
            .expect("row");
        drop(other_conn);
        assert!(other.apply_row(&row));
        assert_eq!(other.rebuilt(), 1);
        // A refused change is checked once and stores nothing.
        let bad = Overrides::parse(&json!({"settings": {"timeout": "soon"}})).unwrap();
        let refused = change(&mut conn, &registry, "relay", &bad, source::CLI, None, None);
        assert!(matches!(refused, Err(ChangeError::Invalid(_))));
        assert_eq!(registry.rebuilt(), 2);
        let stored = db::tables::listeners::row(&mut conn, "relay").expect("read");
        assert_eq!(stored.and_then(|r| r.overrides), row.overrides);
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

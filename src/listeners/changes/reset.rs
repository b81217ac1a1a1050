//! Which fields of a listener the database overrides, beside the file's values
//! ([`overridden`]), and dropping those overrides again ([`reset`]): all of them, one field,
//! or one settings key, so that the file's value applies; stored and recorded in the history
//! like any change.

use serde::Serialize;
use serde_json::Value;

use super::{ChangeError, FIELDS, FieldError, Overrides, Saved, store_overrides};
use crate::db::DbConnection;
use crate::listeners::{Definition, Registry};

/// What a reset drops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResetTarget {
    /// Every runtime change of the listener.
    All,
    /// One field ([`FIELDS`]); `settings` drops every settings key.
    Field(&'static str),
    /// One settings key (`settings.url`).
    Setting(String),
}

impl ResetTarget {
    /// `None` (or empty): every field; else a field of [`FIELDS`] or `settings.KEY`.
    pub fn parse(field: Option<&str>) -> Result<ResetTarget, FieldError> {
        let Some(field) = field.map(str::trim).filter(|f| !f.is_empty()) else {
            return Ok(ResetTarget::All);
        };
        if let Some(known) = FIELDS.iter().find(|f| **f == field) {
            return Ok(ResetTarget::Field(known));
        }
        match field.strip_prefix("settings.") {
            Some(key) if !key.is_empty() && !key.contains(['.', '[']) => {
                Ok(ResetTarget::Setting(key.to_string()))
            }
            _ => Err(FieldError::new(
                "field",
                format!(
                    "`{field}` is not a field; use one of {} or settings.KEY",
                    FIELDS.join(", ")
                ),
            )),
        }
    }

    /// The field as requests and messages name it (`settings.url`; `all`).
    pub fn describe(&self) -> String {
        match self {
            ResetTarget::All => "all".into(),
            ResetTarget::Field(f) => (*f).to_string(),
            ResetTarget::Setting(key) => format!("settings.{key}"),
        }
    }

    fn drops_enabled(&self) -> bool {
        matches!(self, ResetTarget::All | ResetTarget::Field("enabled"))
    }

    /// `stored` without what this target drops; an error when it drops nothing it names.
    fn apply(
        &self,
        listener: &str,
        file: &Definition,
        stored: &Overrides,
    ) -> Result<Overrides, ChangeError> {
        let mut out = stored.clone();
        let dropped = match self {
            ResetTarget::All => return Ok(Overrides::default()),
            ResetTarget::Field(field) => match *field {
                "enabled" => out.enabled.take().is_some(),
                "description" => out.description.take().is_some(),
                "events" => out.events.take().is_some(),
                "realms" => out.realms.take().is_some(),
                "streams" => out.streams.take().is_some(),
                "users" => out.users.take().is_some(),
                _ => out.settings.take().is_some(),
            },
            ResetTarget::Setting(key) => {
                let settings = out.settings.get_or_insert_default();
                let removed = settings.remove(key).is_some();
                if settings.is_empty() {
                    out.settings = None;
                }
                removed
            }
        };
        if dropped {
            return Ok(out);
        }
        let changed: Vec<String> = overridden(file, stored)
            .into_iter()
            .map(|o| o.field)
            .collect();
        Err(ChangeError::NotOverridden {
            listener: listener.to_string(),
            field: self.describe(),
            overridden: if changed.is_empty() {
                "none".into()
            } else {
                changed.join(", ")
            },
        })
    }
}

/// Drops runtime changes of listener `name` (`target`), so that the file's values apply
/// again: checked, stored and recorded in the history (`source`) like any change, and
/// returned with the listener built from what remains. Dropping `enabled` also ends a
/// disable. Resetting a field that is not overridden is refused ([`ChangeError::NotOverridden`]);
/// resetting everything when nothing is overridden changes nothing. `actor` (the admin token's
/// name) is recorded in the history.
pub fn reset(
    conn: &mut DbConnection,
    registry: &Registry,
    name: &str,
    target: &ResetTarget,
    source: &str,
    actor: Option<&str>,
) -> Result<Saved, ChangeError> {
    let entry = registry
        .by_name(name)
        .ok_or_else(|| ChangeError::NotFound(name.to_string()))?;
    let file = entry.file_definition();
    let dropped_enabled = std::cell::Cell::new(false);
    store_overrides(
        conn,
        registry,
        name,
        (source, actor),
        |stored| {
            dropped_enabled.set(target.drops_enabled() && stored.enabled.is_some());
            target.apply(name, file, stored)
        },
        |mut row| {
            if dropped_enabled.get() {
                row.enabled = true;
                row.disabled_reason = None;
            }
            row
        },
    )
}

/// One field the database overrides: its value in the configuration file (`null` when the
/// file does not set it) and in the database; settings shown redacted.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Overridden {
    /// `streams`, or `settings.url` for one settings key.
    pub field: String,
    pub file: Value,
    pub database: Value,
}

/// Every field `overrides` changes (each settings key on its own), beside the file's value.
pub fn overridden(file: &Definition, overrides: &Overrides) -> Vec<Overridden> {
    let scope = serde_json::to_value(&file.scope).unwrap_or_default();
    let mut out = Vec::new();
    let mut push = |field: &str, file: Value, database: Value| {
        out.push(Overridden {
            field: field.to_string(),
            file,
            database,
        });
    };
    if let Some(v) = overrides.enabled {
        push("enabled", file.enabled.into(), v.into());
    }
    if let Some(v) = &overrides.description {
        push(
            "description",
            file.description.clone().into(),
            v.clone().into(),
        );
    }
    if let Some(v) = &overrides.events {
        push("events", json(&file.events), json(v));
    }
    if let Some(v) = &overrides.realms {
        push("realms", scope["realms"].clone(), json(v));
    }
    if let Some(v) = &overrides.streams {
        push("streams", scope["streams"].clone(), json(v));
    }
    if let Some(v) = &overrides.users {
        push("users", scope["users"].clone(), json(v));
    }
    let shown = |key: &str, value: Option<&Value>| match value {
        None => Value::Null,
        Some(value) => {
            let one = serde_json::Map::from_iter([(key.to_string(), value.clone())]);
            crate::redact::settings(&Value::Object(one))[key].clone()
        }
    };
    for (key, value) in overrides.settings.iter().flatten() {
        push(
            &format!("settings.{key}"),
            shown(key, file.settings.get(key)),
            shown(key, Some(value)),
        );
    }
    out
}

/// A value as JSON, for [`overridden`].
fn json<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Scope;
    use serde_json::json;

    fn file() -> Definition {
        Definition {
            handler: "relay".into(),
            description: "from the file".into(),
            events: vec![],
            scope: Scope::default(),
            enabled: true,
            settings: json!({"url": "https://bots.example.com/x?key=1", "timeout": "10s"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            rate_limits: None,
            files: Default::default(),
        }
    }

    #[test]
    fn targets_name_a_field_or_one_settings_key() {
        assert_eq!(ResetTarget::parse(None), Ok(ResetTarget::All));
        assert_eq!(ResetTarget::parse(Some(" ")), Ok(ResetTarget::All));
        assert_eq!(
            ResetTarget::parse(Some("streams")),
            Ok(ResetTarget::Field("streams"))
        );
        assert_eq!(
            ResetTarget::parse(Some("settings.url")),
            Ok(ResetTarget::Setting("url".into()))
        );
        for bad in ["handler", "settings.", "settings.rules[0]", "stream"] {
            let err = ResetTarget::parse(Some(bad)).unwrap_err();
            assert_eq!(err.field, "field", "{bad}");
        }
    }

    #[test]
    fn a_reset_drops_only_what_it_names() {
        let stored = Overrides::parse(&json!({
            "streams": ["eng"], "enabled": false, "settings": {"timeout": "2s", "token": "t"}
        }))
        .unwrap();
        let one = ResetTarget::Setting("timeout".into())
            .apply("r", &file(), &stored)
            .unwrap();
        assert_eq!(one.settings, json!({"token": "t"}).as_object().cloned());
        assert_eq!(one.streams, stored.streams);
        let settings = ResetTarget::Field("settings")
            .apply("r", &file(), &stored)
            .unwrap();
        assert_eq!(settings.settings, None);
        assert_eq!(
            ResetTarget::All.apply("r", &file(), &stored).unwrap(),
            Overrides::default()
        );
        let err = ResetTarget::Field("users")
            .apply("r", &file(), &stored)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no runtime change of `users`")
                && err.contains("enabled, streams, settings.timeout, settings.token"),
            "{err}"
        );
    }

    #[test]
    fn overrides_are_shown_beside_the_files_values_redacted() {
        let stored = Overrides::parse(&json!({
            "description": "changed",
            "settings": {"url": "https://other.example.com/y?key=2", "token": "s3cret"}
        }))
        .unwrap();
        let shown = serde_json::to_value(overridden(&file(), &stored)).unwrap();
        assert_eq!(
            shown,
            json!([
                {"field": "description", "file": "from the file", "database": "changed"},
                {"field": "settings.token", "file": null, "database": "<redacted>"},
                {"field": "settings.url", "file": "https://bots.example.com", "database": "https://other.example.com"},
            ])
        );
    }
}

//! What a runtime change may say: the fields of [`Overrides`], read from JSON with the field at
//! fault named ([`Overrides::parse`]), merged with the stored ones (a settings key set to
//! `null` goes back to the file's value) and applied to the file's definition
//! ([`Definition::with`]); and the one rule on settings a runtime change may not touch
//! ([`file_only_key`]).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{FIELDS, FieldError};
use crate::config::files::is_file_key;
use crate::config::{ChannelSelector, RealmSelector, UserSelector};
use crate::listeners::Definition;

/// Changed fields; absent ones keep their value. `settings` is a JSON merge patch (RFC
/// 7386) of the stored overrides: a key set to `null` is no longer overridden, so the file's
/// value (or the handler's default, when the file has none) applies again.
/// It is also the body of the admin API's `PATCH /admin/listeners/{name}`, as its OpenAPI
/// document describes it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Overrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Value>>)]
    pub realms: Option<Vec<RealmSelector>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Value>>)]
    pub streams: Option<Vec<ChannelSelector>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Value>>)]
    pub users: Option<Vec<UserSelector>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<Map<String, Value>>,
}

/// The settings keys that come only from the configuration file: every `*_file` key (a path
/// is read once, at start, and only the file names one) and a webhook signing `secret`.
pub fn is_file_only(key: &str) -> bool {
    is_file_key(key) || key == "secret"
}

/// Where `value` (a listener's settings, or part of them) names a key a runtime change may
/// not set, change or remove, at any depth (`token_file`, `rules[0].secret_file`), with why;
/// `None` when it names none.
pub fn file_only_key(value: &Value) -> Option<(String, &'static str)> {
    match value {
        Value::Object(map) => map.iter().find_map(|(key, v)| {
            if is_file_only(key) {
                let why = if is_file_key(key) {
                    "a file is named only in the configuration file, not by a runtime change"
                } else {
                    "a signing secret is set only in the configuration file, not by a runtime change"
                };
                return Some((key.clone(), why));
            }
            file_only_key(v).map(|(inner, why)| match inner.starts_with('[') {
                true => (format!("{key}{inner}"), why),
                false => (format!("{key}.{inner}"), why),
            })
        }),
        Value::Array(items) => items.iter().enumerate().find_map(|(i, v)| {
            file_only_key(v).map(|(inner, why)| (format!("[{i}].{inner}"), why))
        }),
        _ => None,
    }
}

/// The [`file_only_key`] rule as a field error (`settings.token_file`).
pub(crate) fn refuse_file_only(settings: &Map<String, Value>) -> Result<(), FieldError> {
    match file_only_key(&Value::Object(settings.clone())) {
        Some((at, why)) => Err(FieldError::new(format!("settings.{at}"), why)),
        None => Ok(()),
    }
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
                    let settings = field(key, value, "an object of the handler's settings")?;
                    refuse_file_only(&settings)?;
                    out.settings = Some(settings);
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

    /// The stored overrides with `newer` on top; a settings key `newer` sets to `null` is
    /// dropped (the file's value applies again).
    pub fn merged(&self, newer: &Overrides) -> Overrides {
        let settings = match &newer.settings {
            None => self.settings.clone(),
            Some(patch) => {
                let mut merged = self.settings.clone().unwrap_or_default();
                for (k, v) in patch {
                    if v.is_null() {
                        merged.remove(k);
                    } else {
                        merged.insert(k.clone(), v.clone());
                    }
                }
                (!merged.is_empty()).then_some(merged)
            }
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
    /// This definition with `overrides` applied. A settings key stored as `null` (by an
    /// older version) leaves the file's value.
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
        for (k, v) in overrides.settings.iter().flatten() {
            if !v.is_null() {
                out.settings.insert(k.clone(), v.clone());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn file_only_keys_are_refused_at_any_depth_also_as_null() {
        for (body, field) in [
            (
                json!({"token_file": "/proc/self/environ"}),
                "settings.token_file",
            ),
            (json!({"token_file": null}), "settings.token_file"),
            (json!({"api_key_file": "/x"}), "settings.api_key_file"),
            (json!({"secret": "whsec_x"}), "settings.secret"),
            (json!({"secret": null}), "settings.secret"),
            (
                json!({"rules": [{"name": "a"}, {"secret_file": "/x"}]}),
                "settings.rules[1].secret_file",
            ),
        ] {
            let err = Overrides::parse(&json!({ "settings": body })).unwrap_err();
            assert_eq!(err.field, field, "{body}");
            assert!(err.problem.contains("configuration file"), "{err}");
        }
        let fine = json!({"settings": {"token": "t", "rules": [{"name": "secret_file"}]}});
        assert!(Overrides::parse(&fine).is_ok());
    }
}

//! `listeners`: the table of every listener (or JSON), `listeners show` with statistics,
//! runtime changes beside the file's values and history, and `listeners
//! set|reset|enable|disable`, stored in the database like a change through the admin API and
//! followed by a running server within seconds.

use anyhow::Context as _;
use clap::Subcommand;

use super::connect;
use super::table::{align_table, format_ms};
use crate::config::Config;
use crate::db::tables;
use crate::listeners::Registry;
use crate::output::{out, outln};

#[derive(Debug, Subcommand)]
pub enum ListenerAction {
    /// One listener: definition, state, statistics of the last 24 hours, history.
    Show {
        name: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Change a listener at runtime (stored in the database, wins over the file, recorded in
    /// its history). Lists are comma-separated; an empty value clears the list.
    Set {
        name: String,
        #[arg(long)]
        description: Option<String>,
        /// Event types, narrowing the handler's own.
        #[arg(long, value_name = "TYPES")]
        events: Option<String>,
        /// Realm ids or subdomains.
        #[arg(long, value_name = "REALMS")]
        realms: Option<String>,
        /// Channel ids or names.
        #[arg(long, value_name = "CHANNELS")]
        streams: Option<String>,
        /// User ids or emails.
        #[arg(long, value_name = "USERS")]
        users: Option<String>,
        /// One setting, KEY=VALUE; VALUE is read as JSON when it is JSON, else as text;
        /// KEY=null drops the runtime change, so the file's value (or the handler's default)
        /// applies again (repeatable). `*_file` and `secret` keys are set only in the file.
        #[arg(long = "setting", value_name = "KEY=VALUE")]
        settings: Vec<String>,
        /// Any change as a JSON object, as for PATCH /admin/listeners/{name}.
        #[arg(long, value_name = "OBJECT")]
        json: Option<String>,
    },
    /// Drop a listener's runtime changes, so that the configuration file's values apply
    /// again (recorded in its history): all of them, or one FIELD (enabled, description,
    /// events, realms, streams, users, settings, or one settings key as settings.KEY).
    Reset { name: String, field: Option<String> },
    /// Enable a listener (also after an automatic disable).
    Enable { name: String },
    /// Disable a listener until it is enabled again.
    Disable {
        name: String,
        /// Kept with the listener and shown by `listeners`.
        #[arg(long, default_value = "disabled from the command line")]
        reason: String,
    },
}

pub(super) fn listeners(config: &Config, json: bool) -> anyhow::Result<()> {
    let registry = Registry::build(config)?;
    let mut conn = connect(config)?;
    let counts = tables::event_log::listener_counts(&mut conn)?;
    let persisted = crate::db::tables::listeners::rows(&mut conn)?;
    let mut rows = Vec::new();
    for entry in registry.entries() {
        let name = entry.name();
        let row = persisted.iter().find(|r| r.name == name);
        if let Some(row) = row {
            registry.apply_row(row);
        }
        let count = counts.iter().find(|c| c.listener == name);
        let mut view = registry.view(entry, row);
        let scope: Vec<String> = ["realms", "streams", "users"]
            .iter()
            .filter_map(|k| {
                let list = view[*k].as_array()?;
                (!list.is_empty()).then(|| {
                    let items: Vec<String> = list
                        .iter()
                        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                        .collect();
                    format!("{k}: {}", items.join(" "))
                })
            })
            .collect();
        view["scope"] = scope.join("; ").into();
        view["runs"] = count.map_or(0, |c| c.runs).into();
        view["failures"] = count.map_or(0, |c| c.failures).into();
        for key in ["breaker", "breaker_open_for_ms", "failures_last_hour"] {
            if let Some(object) = view.as_object_mut() {
                object.remove(key);
            }
        }
        rows.push(view);
    }
    if json {
        outln!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Bool(b) => (if *b { "yes" } else { "no" }).to_string(),
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::Array(a) if a.is_empty() => "-".to_string(),
        serde_json::Value::Array(a) => a
            .iter()
            .filter_map(|u| u.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    };
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            LISTENER_COLUMNS
                .iter()
                .map(|(key, _, _)| text(&row[*key]))
                .collect()
        })
        .collect();
    out!("{}", align_table(&LISTENER_COLUMNS, &table));
    Ok(())
}

/// The `listeners` table: JSON key, heading, right-aligned.
const LISTENER_COLUMNS: [(&str, &str, bool); 9] = [
    ("name", "listener", false),
    ("handler", "handler", false),
    ("events", "events", false),
    ("scope", "scope", false),
    ("enabled", "enabled", false),
    ("runs", "runs", true),
    ("failures", "failures", true),
    ("disabled_reason", "disabled why", false),
    ("used_by", "used by", false),
];

pub(super) fn set_listener(config: &Config, action: ListenerAction) -> anyhow::Result<()> {
    let mut reason = None;
    let (name, change) = match action {
        ListenerAction::Show { .. } => return Ok(()),
        ListenerAction::Reset { name, field } => return reset_listener(config, &name, field),
        ListenerAction::Enable { name } => (name, serde_json::json!({ "enabled": true })),
        ListenerAction::Disable { name, reason: why } => {
            reason = Some(why);
            (name, serde_json::json!({ "enabled": false }))
        }
        ListenerAction::Set {
            name,
            description,
            events,
            realms,
            streams,
            users,
            settings,
            json,
        } => {
            let mut change = match json {
                Some(text) => serde_json::from_str(&text)
                    .context("--json must be a JSON object of the fields to change")?,
                None => serde_json::json!({}),
            };
            let Some(object) = change.as_object_mut() else {
                anyhow::bail!("--json must be a JSON object of the fields to change");
            };
            if let Some(text) = description {
                object.insert("description".into(), text.into());
            }
            for (field, list) in [
                ("events", events),
                ("realms", realms),
                ("streams", streams),
                ("users", users),
            ] {
                if let Some(list) = list {
                    object.insert(field.into(), comma_list(&list, field != "events"));
                }
            }
            if !settings.is_empty() {
                let mut map = serde_json::Map::new();
                for pair in settings {
                    let Some((key, value)) = pair.split_once('=') else {
                        anyhow::bail!("--setting `{pair}` is not KEY=VALUE");
                    };
                    let value = serde_json::from_str(value)
                        .unwrap_or_else(|_| serde_json::Value::String(value.to_string()));
                    map.insert(key.trim().to_string(), value);
                }
                object.insert("settings".into(), serde_json::Value::Object(map));
            }
            (name, change)
        }
    };
    let registry = Registry::build(config)?;
    let patch = crate::listeners::changes::Overrides::parse(&change)
        .map_err(|e| anyhow::anyhow!("listener `{name}`: {e}"))?;
    let mut conn = connect(config)?;
    crate::db::tables::listeners::sync(&mut conn, &registry.listener_rows())?;
    let saved = crate::listeners::changes::change(
        &mut conn,
        &registry,
        &name,
        &patch,
        crate::listeners::changes::source::CLI,
        reason.as_deref(),
        None,
    )
    .map_err(|e| anyhow::anyhow!("listener `{name}`: {e}"))?;
    let history = saved.history;
    if let Some(enabled) = patch.enabled
        && patch
            == (crate::listeners::changes::Overrides {
                enabled: Some(enabled),
                ..Default::default()
            })
    {
        outln!(
            "{name} {}; a running server follows within {} seconds.",
            if enabled { "enabled" } else { "disabled" },
            crate::server::LISTENER_SYNC_SECONDS
        );
        return Ok(());
    }
    print_history(&name, &history);
    Ok(())
}

/// `listeners reset NAME [FIELD]`: through [`crate::listeners::changes::reset`], like the
/// admin API's `DELETE /admin/listeners/{name}/overrides[/{field}]`.
fn reset_listener(config: &Config, name: &str, field: Option<String>) -> anyhow::Result<()> {
    use crate::listeners::changes::{self, ResetTarget};
    let target = ResetTarget::parse(field.as_deref()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let registry = Registry::build(config)?;
    let mut conn = connect(config)?;
    crate::db::tables::listeners::sync(&mut conn, &registry.listener_rows())?;
    let saved = changes::reset(
        &mut conn,
        &registry,
        name,
        &target,
        changes::source::CLI,
        None,
    )
    .map_err(|e| anyhow::anyhow!("listener `{name}`: {e}"))?;
    print_history(name, &saved.history);
    Ok(())
}

/// What a change did, field by field, and when a running server follows.
fn print_history(name: &str, history: &[crate::db::tables::listeners::HistoryRow]) {
    if history.is_empty() {
        outln!("{name}: nothing changed.");
    }
    for change in history {
        outln!(
            "{name}: {} {} -> {}",
            change.field,
            change.old_value.as_deref().unwrap_or("-"),
            change.new_value.as_deref().unwrap_or("-"),
        );
    }
    outln!(
        "A running server follows within {} seconds.",
        crate::server::LISTENER_SYNC_SECONDS
    );
}

/// A comma-separated list as JSON; with `numbers`, items that are integers become numbers
/// (ids), the others stay text (names, emails).
fn comma_list(text: &str, numbers: bool) -> serde_json::Value {
    serde_json::Value::Array(
        text.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|item| match item.parse::<i64>() {
                Ok(n) if numbers => n.into(),
                _ => item.into(),
            })
            .collect(),
    )
}

pub(super) fn show_listener(config: &Config, name: &str, json: bool) -> anyhow::Result<()> {
    let registry = Registry::build(config)?;
    let Some(entry) = registry.by_name(name) else {
        anyhow::bail!(
            "no listener named `{name}`; defined are: {}",
            registry
                .entries()
                .iter()
                .map(|e| e.name())
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    let mut conn = connect(config)?;
    let row = crate::db::tables::listeners::row(&mut conn, name)?;
    if let Some(row) = &row {
        registry.apply_row(row);
    }
    let since = crate::clock::now_ms() - 86_400_000;
    let stats = crate::db::tables::event_log::run_stats(&mut conn, name, since)?;
    let history = crate::db::tables::listeners::history(&mut conn, name, 20)?;
    let mut view = registry.view(entry, row.as_ref());
    // The breaker lives in the serving process; this process has not run anything.
    if let Some(object) = view.as_object_mut() {
        for key in ["breaker", "breaker_open_for_ms", "failures_last_hour"] {
            object.remove(key);
        }
    }
    view["stats"] = serde_json::json!(stats);
    view["history"] = serde_json::json!(history);
    if json {
        outln!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(());
    }
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) if s.is_empty() => "-".to_string(),
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::Array(a) if a.is_empty() => "-".to_string(),
        other => other.to_string(),
    };
    for key in [
        "name",
        "handler",
        "description",
        "state",
        "disabled_reason",
        "events",
        "realms",
        "streams",
        "users",
        "settings",
        "used_by",
    ] {
        outln!("{key:<16} {}", text(&view[key]));
    }
    print_overrides(&view);
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1} ms"));
    outln!(
        "{:<16} {} runs, {} failures, success {}, avg {}, p95 {}",
        "last 24 h",
        stats.runs,
        stats.failures,
        stats
            .success_rate
            .map_or("-".to_string(), |r| format!("{:.1} %", r * 100.0)),
        ms(stats.avg_duration_ms),
        ms(stats.p95_duration_ms),
    );
    if let Some(error) = &stats.last_error {
        outln!("{:<16} {error}", "last error");
    }
    if !history.is_empty() {
        outln!("history (newest first):");
        for h in &history {
            outln!(
                "  {}  {:<10} {:<12} {} -> {}",
                format_ms(h.changed_at_ms),
                h.source,
                h.field,
                h.old_value.as_deref().unwrap_or("-"),
                h.new_value.as_deref().unwrap_or("-"),
            );
        }
    }
    Ok(())
}

/// The fields the database overrides, beside the file's values (`listeners show`,
/// `check-config`), and why they are not applied when they are not.
pub(super) fn print_overrides(view: &serde_json::Value) {
    let shown = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "(not set)".to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let list = view["overrides"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        outln!("{:<16} none (the file's values apply)", "overridden");
    } else {
        outln!("{:<16} by the database (file -> database):", "overridden");
        for o in &list {
            outln!(
                "  {:<22} {} -> {}",
                o["field"].as_str().unwrap_or_default(),
                shown(&o["file"]),
                shown(&o["database"])
            );
        }
        outln!(
            "  drop them with `zulip-listeners listeners reset {} [FIELD]`",
            view["name"].as_str().unwrap_or_default()
        );
    }
    if let Some(problem) = view["overrides_problem"].as_str() {
        outln!("  NOT APPLIED (they do not suit the handler): {problem}");
    }
}

/// `check-config`: the runtime changes the database holds over the file's values, listener by
/// listener, when the database can be read (it is neither created nor migrated for this).
pub(super) fn print_stored_changes(config: &Config, registry: &Registry) {
    let rows = match stored_rows(config) {
        Ok(Some(rows)) => rows,
        Ok(None) => {
            outln!("  runtime changes: none (no database yet)");
            return;
        }
        Err(error) => {
            outln!("  runtime changes: not read ({})", error.to_string().trim());
            return;
        }
    };
    let mut any = false;
    for row in rows.iter().filter(|r| r.overrides.is_some()) {
        let Some(entry) = registry.by_name(&row.name) else {
            continue;
        };
        registry.apply_row(row);
        any = true;
        outln!("  listener {}: runtime changes in the database", row.name);
        print_overrides(&registry.view(entry, Some(row)));
    }
    if !any {
        outln!("  runtime changes: none in the database");
    }
}

/// The stored listener rows; `None` when the SQLite file does not exist yet.
fn stored_rows(
    config: &Config,
) -> anyhow::Result<Option<Vec<crate::db::tables::listeners::ListenerRow>>> {
    use crate::config::DatabaseTarget;
    let target = match &config.database.url {
        DatabaseTarget::Sqlite(path) if !path.exists() => return Ok(None),
        DatabaseTarget::Postgres(url) if !url.contains("connect_timeout") => {
            let separator = if url.contains('?') { '&' } else { '?' };
            DatabaseTarget::Postgres(format!("{url}{separator}connect_timeout=5"))
        }
        other => other.clone(),
    };
    let mut conn = crate::db::establish(&target)?;
    Ok(Some(crate::db::tables::listeners::rows(&mut conn)?))
}

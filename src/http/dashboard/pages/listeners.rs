//! The listeners pages: the table of every listener (state, scope, runs, failure rate, p95,
//! a sparkline, an enable or disable button) and one listener's page (state, figures, a chart,
//! its runtime changes beside the file's values with reset links and the confirmation they
//! lead to, the edit form, the history of changes).

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use maud::{Markup, PreEscaped, html};

use super::format::{path_segment, query_value};
use super::{csrf_field, layout, notice, respond};
use crate::clock::utc_text;
use crate::db::tables::listeners::HistoryRow;
use crate::http::dashboard::charts;
use crate::http::dashboard::{Ctx, field};
use crate::listeners::Definition;
use crate::processing::dead_letters::MAX_REASON_CHARS;

/// One listener's row on the listeners page.
pub struct ListenerLine {
    pub view: serde_json::Value,
    pub runs: i64,
    pub failures: i64,
    pub p95_ms: Option<f64>,
    /// Runs and failures per `listener_stats` interval over the last 24 hours.
    pub runs_series: Vec<f64>,
    pub failures_series: Vec<f64>,
}

fn state_badge(view: &serde_json::Value) -> Markup {
    let state = view["state"].as_str().unwrap_or("unknown");
    html! { span.badge.(state) { (state.replace('_', " ")) } }
}

fn scope_text(view: &serde_json::Value) -> String {
    let mut parts = Vec::new();
    for key in ["realms", "streams", "users"] {
        if let Some(list) = view[key].as_array()
            && !list.is_empty()
        {
            parts.push(format!("{key}: {}", serde_json::Value::Array(list.clone())));
        }
    }
    if parts.is_empty() {
        "everything".into()
    } else {
        parts.join("; ")
    }
}

fn rate(runs: i64, failures: i64) -> String {
    if runs == 0 {
        "–".into()
    } else {
        format!("{:.1} %", failures as f64 * 100.0 / runs as f64)
    }
}

pub fn listeners(ctx: &Ctx, lines: &[ListenerLine], done: Option<&str>) -> HttpResponse {
    let body = html! {
        (notice(done))
        p.hint { "Runs, failure rate and the sparkline cover the last 24 hours (listener_stats and the event-log rows not aggregated yet); p95 the newest 1,000 runs." }
        div.scroll {
            table.listeners {
                thead {
                    tr {
                        th { "listener" } th { "state" } th { "scope" }
                        th.num { "runs" } th.num { "failed" } th.num { "p95" } th { "runs, 24 h" } th {}
                    }
                }
                tbody {
                    @for line in lines {
                        @let name = line.view["name"].as_str().unwrap_or_default();
                        tr id=(format!("listener-{name}")) {
                            td {
                                a href=(ctx.url(&format!("/ui/listeners/{}", path_segment(name)))) { (name) }
                                br;
                                small { (line.view["handler"].as_str().unwrap_or_default()) }
                            }
                            td.state {
                                (state_badge(&line.view))
                                @if line.view["breaker"] == "open" { " " span.badge.breaker_open { "breaker open" } }
                                @if let Some(reason) = line.view["disabled_reason"].as_str() {
                                    br; small { (reason) }
                                }
                            }
                            td { small { (scope_text(&line.view)) } }
                            td.num { (line.runs) }
                            td.num { (rate(line.runs, line.failures)) }
                            td.num { (line.p95_ms.map_or("–".to_string(), |ms| format!("{ms:.1} ms"))) }
                            td.spark { (PreEscaped(charts::sparkline(&line.runs_series, &line.failures_series).unwrap_or_default())) }
                            td { (toggle(ctx, name, &line.view)) }
                        }
                    }
                }
            }
        }
    };
    respond(
        StatusCode::OK,
        layout(&ctx.base, Some(ctx), "Listeners", "listeners", body),
    )
}

/// The enable or disable button of a listener; a disable takes the operator's reason
/// (optional: kept with the listener's state, with who disabled it).
fn toggle(ctx: &Ctx, name: &str, view: &serde_json::Value) -> Markup {
    let enabled = view["enabled"].as_bool().unwrap_or(false);
    let (action, label) = if enabled {
        ("disable", "Disable")
    } else {
        ("enable", "Enable")
    };
    html! {
        form.inline method="post" action=(ctx.url(&format!("/ui/listeners/{}", path_segment(name)))) {
            (csrf_field(ctx))
            input type="hidden" name="action" value=(action);
            @if enabled {
                input type="text" name="reason" id=(format!("reason-{name}"))
                    placeholder="reason (optional)" maxlength=(MAX_REASON_CHARS)
                    aria-label=(format!("Why {name} is disabled"));
            }
            button type="submit" id=(format!("{action}-{name}")) class=(action) { (label) }
        }
    }
}

/// What a refused edit posted, shown again with the problem.
pub struct Refused<'a> {
    pub posted: &'a [(String, String)],
    pub problem: &'a str,
}

/// JSON as shown in a table cell: strings without quotes, `null` as "not set".
fn shown(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => "– (not set)".into(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The fields the database overrides, beside the file's values, each with a reset link; and
/// why the stored changes are not applied, when they are not.
fn overrides(ctx: &Ctx, name: &str, view: &serde_json::Value) -> Markup {
    let list = view["overrides"].as_array().cloned().unwrap_or_default();
    let reset = |field: Option<&str>| {
        let path = format!("/ui/listeners/{}/reset", path_segment(name));
        ctx.url(&match field {
            Some(field) => format!("{path}?field={}", query_value(field)),
            None => path,
        })
    };
    html! {
        section id="overrides" {
            h2 { "Runtime changes" }
            @if let Some(problem) = view["overrides_problem"].as_str() {
                p.error id="overrides-problem" { "Not applied: " (problem) }
            }
            @if list.is_empty() {
                p.hint { "None: the configuration file's values apply." }
            } @else {
                div.scroll {
                    table id="overrides-table" {
                        thead { tr { th { "field" } th { "in the file" } th { "in the database (applies)" } th {} } }
                        tbody {
                            @for o in &list {
                                @let field = o["field"].as_str().unwrap_or_default();
                                tr {
                                    td { code { (field) } }
                                    td { small { (shown(&o["file"])) } }
                                    td { small { (shown(&o["database"])) } }
                                    td { a.button.reset href=(reset(Some(field))) { "Reset…" } }
                                }
                            }
                        }
                    }
                }
                p { a.button id="reset-all" href=(reset(None)) { "Reset all to the file…" } }
            }
        }
    }
}

/// The confirmation asked before dropping runtime changes (`target`) of listener `name`.
pub fn confirm_reset(
    ctx: &Ctx,
    name: &str,
    target: &crate::listeners::changes::ResetTarget,
    view: &serde_json::Value,
) -> HttpResponse {
    use crate::listeners::changes::ResetTarget;
    let field = target.describe();
    let affected: Vec<serde_json::Value> = view["overrides"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|o| {
            let f = o["field"].as_str().unwrap_or_default();
            match target {
                ResetTarget::All => true,
                ResetTarget::Field("settings") => f.starts_with("settings."),
                _ => f == field,
            }
        })
        .collect();
    let back = ctx.url(&format!("/ui/listeners/{}", path_segment(name)));
    let body = html! {
        @if affected.is_empty() {
            p.notice { "Nothing to reset: " code { (name) } " has no runtime change of " code { (field) } "." }
            p { a href=(back) { "Back to the listener" } }
        } @else {
            form.card method="post" action=(ctx.url(&format!("/ui/listeners/{}/reset", path_segment(name)))) {
                (csrf_field(ctx))
                @if *target != ResetTarget::All {
                    input type="hidden" name="field" value=(field);
                }
                p { "Drop these runtime changes of " code { (name) } ", so that the configuration file's values apply again? The change is recorded in the history." }
                ul {
                    @for o in &affected {
                        li { code { (o["field"].as_str().unwrap_or_default()) } ": " (shown(&o["database"])) " → " (shown(&o["file"])) }
                    }
                }
                button type="submit" id="confirm-reset" { "Reset" }
                " "
                a href=(back) { "Cancel" }
            }
        }
    };
    respond(
        StatusCode::OK,
        layout(
            &ctx.base,
            Some(ctx),
            &format!("Reset {name}"),
            "listeners",
            body,
        ),
    )
}

pub fn listener(
    ctx: &Ctx,
    line: &ListenerLine,
    definition: &Definition,
    history: &[HistoryRow],
    done: Option<&str>,
    refused: Option<Refused<'_>>,
) -> HttpResponse {
    let name = line.view["name"].as_str().unwrap_or_default();
    // The form shows the definition, or what a refused post sent: never the query string.
    let posted = refused.as_ref().map_or(&[][..], |r| r.posted);
    let typed = |key: &str, current: String| -> String {
        field(posted, key).map(str::to_string).unwrap_or(current)
    };
    let scope = serde_json::to_value(&definition.scope).unwrap_or_default();
    let scope_field =
        |key: &str| -> String { typed(key, scope.get(key).map_or("[]".into(), |v| v.to_string())) };
    let settings = crate::redact::settings(&serde_json::Value::Object(definition.settings.clone()));
    let events_url = ctx.url(&format!("/ui/events?listener={}", query_value(name)));
    let body = html! {
        (notice(done))
        @if let Some(refused) = &refused {
            p.error id="edit-error" { (refused.problem) }
        }
        section.card {
            p { "State: " span id="state" { (state_badge(&line.view)) }
                " · breaker " (line.view["breaker"].as_str().unwrap_or("closed"))
                " · failures in the last hour: " (line.view["failures_last_hour"]) }
            @if let Some(reason) = line.view["disabled_reason"].as_str() {
                p { "Reason: " (reason) }
            }
            p { "Handler " code { (line.view["handler"].as_str().unwrap_or_default()) }
                " · events: " (line.view["events"].as_str().unwrap_or_default())
                " · scope: " (scope_text(&line.view)) }
            p { (line.runs) " runs, " (rate(line.runs, line.failures)) " failed in 24 h · p95 "
                (line.p95_ms.map_or("–".to_string(), |ms| format!("{ms:.1} ms")))
                " · " a href=(events_url) { "its events" } }
            (toggle(ctx, name, &line.view))
        }
        (overrides(ctx, name, &line.view))
        @if !line.runs_series.is_empty() {
            section {
                h2 { "Runs, last 24 hours" }
                figure.chart.wide { (PreEscaped(charts::sparkline(&line.runs_series, &line.failures_series).unwrap_or_default())) }
            }
        }
        section {
            h2 { "Edit" }
            form.edit method="post" action=(ctx.url(&format!("/ui/listeners/{}", path_segment(name)))) {
                (csrf_field(ctx))
                input type="hidden" name="action" value="edit";
                label for="description" { "Description" }
                input id="description" name="description" value=(typed("description", definition.description.clone()));
                label for="events" { "Event types (comma-separated; empty: all the handler takes)" }
                input id="events" name="events" value=(typed("events", definition.events.join(", ")));
                label for="realms" { "Realms (JSON list of ids or subdomains, e.g. [2, \"zulip\"]; empty: all)" }
                textarea id="realms" name="realms" rows="2" { (scope_field("realms")) }
                label for="streams" { "Channels (JSON list of ids or names)" }
                textarea id="streams" name="streams" rows="2" { (scope_field("streams")) }
                label for="users" { "Users (JSON list)" }
                textarea id="users" name="users" rows="2" { (scope_field("users")) }
                label for="settings" { "Settings to change (JSON merge patch; a key set to null goes back to the file's value; *_file and secret keys only in the file)" }
                textarea id="settings" name="settings" rows="3" placeholder="{\"key\": \"value\"}" { (typed("settings", String::new())) }
                p.hint { "Current settings (secrets hidden): " code { (settings) } }
                button type="submit" id="save" { "Save" }
            }
        }
        section {
            h2 { "History" }
            @if history.is_empty() {
                p { "No changes recorded." }
            } @else {
                div.scroll {
                    table id="history" {
                        thead { tr { th { "when (UTC)" } th { "source" } th { "by" } th { "field" } th { "old" } th { "new" } } }
                        tbody {
                            @for h in history {
                                tr {
                                    td { (utc_text(h.changed_at_ms)) }
                                    td { (h.source) }
                                    td { (h.actor.as_deref().unwrap_or("–")) }
                                    td { (h.field) }
                                    td { small { (h.old_value.as_deref().unwrap_or("–")) } }
                                    td { small { (h.new_value.as_deref().unwrap_or("–")) } }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    respond(
        StatusCode::OK,
        layout(
            &ctx.base,
            Some(ctx),
            &format!("Listener {name}"),
            "listeners",
            body,
        ),
    )
}

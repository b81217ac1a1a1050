//! The listeners pages (`/admin/ui/listeners`, `/admin/ui/listeners/{name}`): every listener
//! with its state and figures of the last 24 hours, one listener with its history, its runtime
//! changes beside the file's values and its edit form, and the form posts that enable,
//! disable (with the operator's reason), edit one or reset its runtime changes (a
//! confirmation page, then the post; all through the admin API's `apply_change`, recorded with
//! source `dashboard` and the admin's name). The edit form shows the definition or what was
//! just posted, never values from the query string.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};

use super::pages::{self, ListenerLine};
use super::session::read_form;
use super::{
    Ctx, DAY_MS, DEFAULT_INTERVAL_MS, db_failed, field, given, listener_names, query, see_other,
};
use crate::clock::now_ms;
use crate::db::tables::listener_stats::IntervalRuns;
use crate::db::tables::listeners::ListenerRow;
use crate::db::{DbError, tables};
use crate::http::AppState;
use crate::http::admin::{self, Action};
use crate::listeners::changes::{self, ChangeError, Overrides, ResetTarget};
use crate::processing::dead_letters::MAX_REASON_CHARS;

/// Durations sampled for a listener's 95th percentile.
const P95_SAMPLE: i64 = 1_000;

fn p95(mut durations: Vec<i64>) -> Option<f64> {
    if durations.is_empty() {
        return None;
    }
    durations.sort_unstable();
    let rank = (0.95 * durations.len() as f64).ceil() as usize;
    durations
        .get(rank.clamp(1, durations.len()) - 1)
        .map(|us| *us as f64 / 1000.0)
}

/// Per-interval runs and failures over 24 hours, zeros where the listener did not run.
fn series(rows: &[IntervalRuns], now: i64, interval_ms: i64) -> (Vec<f64>, Vec<f64>) {
    let interval_ms = interval_ms.max(60_000);
    let first = (now - DAY_MS) / interval_ms * interval_ms;
    let n = usize::try_from(DAY_MS / interval_ms + 1).unwrap_or(0);
    let mut runs = vec![0.0; n];
    let mut failures = vec![0.0; n];
    for row in rows {
        if let Ok(i) = usize::try_from((row.start_ms - first) / interval_ms)
            && i < n
        {
            runs[i] += row.runs as f64;
            failures[i] += row.failures as f64;
        }
    }
    (runs, failures)
}

async fn read_listeners(
    state: &AppState,
    names: Vec<String>,
) -> Result<(Vec<ListenerRow>, Vec<ListenerFigures>, i64), DbError> {
    let now = now_ms();
    state
        .db
        .run(move |c| {
            let rows = crate::db::tables::listeners::rows(c)?;
            let mut interval_ms = DEFAULT_INTERVAL_MS;
            let mut figures = Vec::new();
            for name in names {
                // The same runs as the overview's (stored intervals and the event-log rows
                // not aggregated yet).
                let (length, intervals) = tables::listener_stats::recent_runs(
                    c,
                    now - DAY_MS,
                    Some(&name),
                    DEFAULT_INTERVAL_MS,
                )?;
                interval_ms = length;
                figures.push(ListenerFigures {
                    intervals,
                    durations: tables::event_log::recent_durations(
                        c,
                        &name,
                        now - DAY_MS,
                        P95_SAMPLE,
                    )?,
                });
            }
            Ok((rows, figures, interval_ms))
        })
        .await
}

struct ListenerFigures {
    intervals: Vec<IntervalRuns>,
    durations: Vec<i64>,
}

fn listener_line(
    state: &AppState,
    entry: &crate::listeners::Entry,
    rows: &[ListenerRow],
    figures: ListenerFigures,
    interval_ms: i64,
) -> ListenerLine {
    let view = state
        .registry
        .view(entry, rows.iter().find(|r| r.name == entry.name()));
    let (runs_series, failures_series) = series(&figures.intervals, now_ms(), interval_ms);
    ListenerLine {
        view,
        runs: figures.intervals.iter().map(|r| r.runs).sum(),
        failures: figures.intervals.iter().map(|r| r.failures).sum(),
        p95_ms: p95(figures.durations),
        runs_series,
        failures_series,
    }
}

/// The page for a listener name the registry does not know.
fn no_such_listener(ctx: &Ctx, name: &str) -> HttpResponse {
    pages::message(
        StatusCode::NOT_FOUND,
        &ctx.base,
        "No such listener",
        &format!("There is no listener named `{name}`."),
    )
}

pub(super) async fn listeners(ctx: Ctx, state: web::Data<AppState>) -> HttpResponse {
    let names = listener_names(&state);
    let (rows, figures, interval_ms) = match read_listeners(&state, names).await {
        Ok(read) => read,
        Err(e) => return db_failed(&ctx, e),
    };
    let lines: Vec<ListenerLine> = state
        .registry
        .entries()
        .iter()
        .zip(figures)
        .map(|(entry, f)| listener_line(&state, entry, &rows, f, interval_ms))
        .collect();
    let done = state.dashboard.take_notice(&ctx);
    pages::listeners(&ctx, &lines, done.as_deref())
}

pub(super) async fn listener(
    ctx: Ctx,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> HttpResponse {
    let name = path.into_inner();
    let Some(entry) = state.registry.by_name(&name) else {
        return no_such_listener(&ctx, &name);
    };
    let key = name.clone();
    let history = state
        .db
        .run(move |c| crate::db::tables::listeners::history(c, &key, 50))
        .await;
    let read = read_listeners(&state, vec![name]).await;
    let ((rows, mut figures, interval_ms), history) = match (read, history) {
        (Ok(read), Ok(history)) => (read, history),
        (Err(e), _) | (_, Err(e)) => return db_failed(&ctx, e),
    };
    let Some(figures) = figures.pop() else {
        return db_failed(&ctx, DbError::Invalid("no figures".into()));
    };
    let line = listener_line(&state, entry, &rows, figures, interval_ms);
    let definition = entry.live().definition.clone();
    let done = state.dashboard.take_notice(&ctx);
    pages::listener(&ctx, &line, &definition, &history, done.as_deref(), None)
}

/// `POST /admin/ui/listeners/{name}` with `action` = `enable`, `disable` (with an optional
/// `reason`) or `edit` (and the edited fields): the same change as the admin API's, recorded
/// with source `dashboard` and the admin's name.
pub(super) async fn change_listener(
    ctx: Ctx,
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    payload: web::Payload,
) -> HttpResponse {
    let form = match read_form(&req, &state, &ctx, payload).await {
        Ok(form) => form,
        Err(refused) => return refused,
    };
    let name = path.into_inner();
    let Some(entry) = state.registry.by_name(&name) else {
        return no_such_listener(&ctx, &name);
    };
    let patch = match field(&form, "action") {
        Some("enable") => Ok(Overrides {
            enabled: Some(true),
            ..Overrides::default()
        }),
        Some("disable") => Ok(Overrides {
            enabled: Some(false),
            ..Overrides::default()
        }),
        Some("edit") => edit_patch(&form, &entry.live().definition),
        _ => Err(changes::FieldError::new(
            "action",
            "use enable, disable or edit",
        )),
    };
    let reason = given(&form, "reason");
    let result = match (patch, reason.map(checked_reason)) {
        (Err(e), _) | (_, Some(Err(e))) => Err(Refusal::Invalid(e)),
        (Ok(patch), reason) => apply(&state, &ctx, &name, patch, reason.and_then(Result::ok)).await,
    };
    let back = format!(
        "{}/ui/listeners/{}",
        ctx.base,
        pages::format::path_segment(&name)
    );
    match result {
        Ok(changed) => {
            let done = if changed.is_empty() {
                "nothing changed".to_string()
            } else {
                format!("changed: {}", changed.join(", "))
            };
            state.dashboard.set_notice(&ctx, done);
            see_other(&back)
        }
        Err(Refusal::Invalid(e)) => {
            // Show the form again with the problem, keeping what was typed.
            let line = ListenerLine {
                view: state.registry.view(entry, None),
                runs: 0,
                failures: 0,
                p95_ms: None,
                runs_series: Vec::new(),
                failures_series: Vec::new(),
            };
            let problem = e.to_string();
            let refused = pages::Refused {
                posted: &form,
                problem: &problem,
            };
            let mut response = pages::listener(
                &ctx,
                &line,
                &entry.live().definition,
                &[],
                None,
                Some(refused),
            );
            *response.status_mut() = StatusCode::BAD_REQUEST;
            response
        }
        Err(Refusal::Database(e)) => db_failed(&ctx, e),
    }
}

enum Refusal {
    Invalid(changes::FieldError),
    Database(DbError),
}

/// The fields of the edit form that differ from the listener's definition, as the admin
/// API's PATCH body, checked by [`Overrides::parse`].
fn edit_patch(
    form: &[(String, String)],
    current: &crate::listeners::Definition,
) -> Result<Overrides, changes::FieldError> {
    let mut patch = serde_json::Map::new();
    if let Some(description) = field(form, "description")
        && description.trim() != current.description
    {
        patch.insert("description".into(), description.trim().into());
    }
    if let Some(events) = field(form, "events") {
        let list: Vec<String> = events
            .split([',', '\n'])
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(str::to_string)
            .collect();
        if list != current.events {
            patch.insert("events".into(), list.into());
        }
    }
    let scope = serde_json::to_value(&current.scope).unwrap_or_default();
    for key in ["realms", "streams", "users"] {
        let Some(text) = field(form, key) else {
            continue;
        };
        let text = if text.trim().is_empty() { "[]" } else { text };
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| changes::FieldError::new(key, format!("not JSON: {e}")))?;
        let unchanged = scope.get(key).is_some_and(|v| *v == value)
            || (scope.get(key).is_none() && value == serde_json::json!([]));
        if !unchanged {
            patch.insert(key.into(), value);
        }
    }
    if let Some(text) = given(form, "settings") {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| changes::FieldError::new("settings", format!("not JSON: {e}")))?;
        patch.insert("settings".into(), value);
    }
    if patch.is_empty() {
        return Ok(Overrides::default());
    }
    Overrides::parse(&serde_json::Value::Object(patch))
}

/// A disable's reason: at most [`MAX_REASON_CHARS`].
fn checked_reason(reason: &str) -> Result<&str, changes::FieldError> {
    if reason.chars().count() > MAX_REASON_CHARS {
        return Err(changes::FieldError::new(
            "reason",
            format!("at most {MAX_REASON_CHARS} characters"),
        ));
    }
    Ok(reason)
}

/// Applies a change through [`changes::change`] (source `dashboard`, the admin's name, the
/// reason of a disable), then to this server's registry; returns the fields that changed.
async fn apply(
    state: &AppState,
    ctx: &Ctx,
    name: &str,
    patch: Overrides,
    reason: Option<&str>,
) -> Result<Vec<String>, Refusal> {
    if patch == Overrides::default() {
        return Ok(Vec::new());
    }
    let history = match admin::apply_change(
        state,
        name,
        Action::Change(patch),
        changes::source::DASHBOARD,
        &ctx.admin,
        reason,
    )
    .await
    {
        Ok((_, history)) => history,
        Err(ChangeError::Invalid(e)) => return Err(Refusal::Invalid(e)),
        Err(ChangeError::Database(e)) => return Err(Refusal::Database(e)),
        Err(other) => {
            return Err(Refusal::Invalid(changes::FieldError::new(
                "",
                other.to_string(),
            )));
        }
    };
    Ok(history.into_iter().map(|h| h.field).collect())
}

/// `GET …/listeners/{name}/reset?field=`: asks for confirmation before dropping the runtime
/// changes of one field (`streams`, `settings.url`) or, without `field`, all of them.
pub(super) async fn confirm_reset(
    ctx: Ctx,
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> HttpResponse {
    let name = path.into_inner();
    let Some(entry) = state.registry.by_name(&name) else {
        return no_such_listener(&ctx, &name);
    };
    let pairs = query(&req);
    let target = match ResetTarget::parse(given(&pairs, "field")) {
        Ok(target) => target,
        Err(e) => {
            return pages::message(
                StatusCode::BAD_REQUEST,
                &ctx.base,
                "Not done",
                &e.to_string(),
            );
        }
    };
    let key = name.clone();
    let row = match state
        .db
        .run(move |c| crate::db::tables::listeners::row(c, &key))
        .await
    {
        Ok(row) => row,
        Err(e) => return db_failed(&ctx, e),
    };
    let view = state.registry.view(entry, row.as_ref());
    pages::confirm_reset(&ctx, &name, &target, &view)
}

/// `POST …/listeners/{name}/reset` with `field` (optional): drops those runtime changes
/// through [`changes::reset`] (source `dashboard`), then back to the listener's page.
pub(super) async fn reset(
    ctx: Ctx,
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    payload: web::Payload,
) -> HttpResponse {
    let form = match read_form(&req, &state, &ctx, payload).await {
        Ok(form) => form,
        Err(refused) => return refused,
    };
    let name = path.into_inner();
    if state.registry.by_name(&name).is_none() {
        return no_such_listener(&ctx, &name);
    }
    let target = match ResetTarget::parse(given(&form, "field")) {
        Ok(target) => target,
        Err(e) => {
            return pages::message(
                StatusCode::BAD_REQUEST,
                &ctx.base,
                "Not done",
                &e.to_string(),
            );
        }
    };
    let done = admin::apply_change(
        &state,
        &name,
        Action::Reset(target.clone()),
        changes::source::DASHBOARD,
        &ctx.admin,
        None,
    )
    .await;
    let back = format!(
        "{}/ui/listeners/{}",
        ctx.base,
        pages::format::path_segment(&name)
    );
    match done {
        Ok(_) => {
            let done = match target {
                ResetTarget::All => "runtime changes reset: the file's values apply".to_string(),
                other => format!("reset to the file's value: {}", other.describe()),
            };
            state.dashboard.set_notice(&ctx, done);
            see_other(&back)
        }
        Err(ChangeError::Database(e)) => db_failed(&ctx, e),
        Err(e @ ChangeError::NotOverridden { .. }) => {
            pages::message(StatusCode::NOT_FOUND, &ctx.base, "Not done", &e.to_string())
        }
        Err(e) => pages::message(
            StatusCode::BAD_REQUEST,
            &ctx.base,
            "Not done",
            &e.to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p95_is_nearest_rank() {
        let values: Vec<i64> = (1..=100).map(|v| v * 1000).collect();
        assert_eq!(p95(values), Some(95.0));
        assert_eq!(p95(Vec::new()), None);
    }
}

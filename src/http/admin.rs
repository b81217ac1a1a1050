//! The admin API under `/admin/`, behind the admin tokens compared in constant time (401
//! without one; the whole API answers 404 while no token is configured; every handler takes
//! the [`Admin`] whose token it was): listeners (list, show, change, drop runtime changes), the
//! event log, forwarded events by message, and statistics; the dead-letter routes are in
//! [`super::dead_letters`]. Each handler answers with a type of [`super::api`] and is
//! described by its `#[utoipa::path]` for the OpenAPI document ([`super::admin_api`]); domain
//! errors become [`ApiError`]s through its `From` conversions. Listener changes of the
//! dashboard go through [`apply_change`] here too, recorded with the admin's name.

use std::time::Instant;

use actix_web::{HttpRequest, HttpResponse, http::header, web};

use super::api::{
    CommonErrors, ErrorBody, EventQuery, EventsPage, InboxEvents, InboxQuery, ListenerChanged,
    ListenerDetail, ListenerList, ListenerPatch, ListenerSummary, Stats,
};
use super::{Admin, ApiError, AppState, typed_json};
use crate::clock::now_ms;
use crate::db::tables;
use crate::db::tables::event_log::EventLogFilter;
use crate::db::tables::listeners::{HistoryRow, ListenerRow};
use crate::listeners::changes::{self, ChangeError, Overrides, ResetTarget};
use crate::telemetry::metric;

/// Largest body of an admin request (a replay or discard list).
pub(super) const ADMIN_MAX_BODY: usize = 256 * 1024;

/// The admin whose token the request carries (`Authorization: Bearer <token>`): 404 while no
/// token is configured, 401 for a missing or unknown token.
pub(super) fn authorize(req: &HttpRequest, state: &AppState) -> Result<Admin, ApiError> {
    if state.admin.is_off() {
        return Err(ApiError::NotFound(
            "the admin API is off: set [admin] token or token_file, or [admin.tokens]".into(),
        ));
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    state
        .admin
        .identify(given.trim())
        .map(Admin::new)
        .ok_or_else(|| {
            ApiError::Unauthorized(
                "missing or wrong bearer token (Authorization: Bearer <admin token>)".into(),
            )
        })
}

/// Every listener with its definition, state and run counts.
#[utoipa::path(get, path = "/admin/listeners", tag = "listeners",
    responses((status = 200, description = "Every listener",
        body = ListenerList), CommonErrors))]
pub async fn listeners(
    _admin: Admin,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (counts, rows) = state
        .db
        .run(|c| {
            Ok((
                tables::event_log::listener_counts(c)?,
                crate::db::tables::listeners::rows(c)?,
            ))
        })
        .await?;
    let listeners = state
        .registry
        .entries()
        .iter()
        .map(|entry| {
            let name = entry.name();
            let count = counts.iter().find(|c| c.listener == name);
            ListenerSummary {
                listener: state
                    .registry
                    .listener_view(entry, rows.iter().find(|r| r.name == name)),
                runs: count.map_or(0, |c| c.runs),
                failures: count.map_or(0, |c| c.failures),
            }
        })
        .collect();
    typed_json(&ListenerList { listeners })
}

/// Statistics and history shown for one listener: the last 24 hours.
const STATS_WINDOW_MS: i64 = 86_400_000;
/// History rows shown for one listener.
const HISTORY_ROWS: i64 = 100;

/// One listener with its statistics of the last 24 hours and its history of changes.
#[utoipa::path(get, path = "/admin/listeners/{name}", tag = "listeners",
    params(("name" = String, Path, description = "The listener's name")),
    responses((status = 200, description = "The listener, its last 24 hours and its history",
        body = ListenerDetail), CommonErrors))]
pub async fn listener(
    _admin: Admin,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let name = path.into_inner();
    let entry = state
        .registry
        .by_name(&name)
        .ok_or_else(|| ApiError::NotFound(format!("no listener named `{name}`")))?;
    let key = name.clone();
    let (row, stats, history) = state
        .db
        .run(move |c| {
            Ok((
                crate::db::tables::listeners::row(c, &key)?,
                crate::db::tables::event_log::run_stats(c, &key, now_ms() - STATS_WINDOW_MS)?,
                crate::db::tables::listeners::history(c, &key, HISTORY_ROWS)?,
            ))
        })
        .await?;
    typed_json(&ListenerDetail {
        listener: state.registry.listener_view(entry, row.as_ref()),
        stats,
        history,
    })
}

/// Changes any of `enabled`, `description`, `events`, `realms`, `streams`, `users`,
/// `settings`: checked like the configuration file (400 naming the field), stored, applied
/// here at once and by other servers sharing the database within seconds, and recorded in the
/// listener's history.
#[utoipa::path(patch, path = "/admin/listeners/{name}", tag = "listeners",
    params(("name" = String, Path, description = "The listener's name")),
    request_body = ListenerPatch,
    responses((status = 200, description = "The listener as changed, and the fields that changed",
        body = ListenerChanged),
        (status = 400, description = "Not JSON, or a field at fault", body = ErrorBody),
        CommonErrors))]
pub async fn patch_listener(
    admin: Admin,
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = super::read_body(&req, payload, ADMIN_MAX_BODY, &state.body).await?;
    let value: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("the body is not JSON: {e}")))?;
    let patch = Overrides::parse(&value)?;
    answer_change(&state, &admin, path.into_inner(), Action::Change(patch)).await
}

/// Enables or disables a listener: the same as a PATCH of `enabled`.
#[utoipa::path(post, path = "/admin/listeners/{name}/{action}", tag = "listeners",
    params(("name" = String, Path, description = "The listener's name"),
        ("action" = String, Path, description = "`enable` or `disable`")),
    responses((status = 200, description = "The listener as it is now, and the fields that changed",
        body = ListenerChanged), CommonErrors))]
pub async fn set_listener(
    admin: Admin,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (name, action) = path.into_inner();
    let enabled = match action.as_str() {
        "enable" => true,
        "disable" => false,
        other => {
            return Err(ApiError::NotFound(format!(
                "unknown action `{other}`; use enable or disable"
            )));
        }
    };
    let patch = Overrides {
        enabled: Some(enabled),
        ..Overrides::default()
    };
    answer_change(&state, &admin, name, Action::Change(patch)).await
}

/// Drops every runtime change of a listener: the file's values apply again; recorded in the
/// history like a PATCH.
#[utoipa::path(delete, path = "/admin/listeners/{name}/overrides", tag = "listeners",
    params(("name" = String, Path, description = "The listener's name")),
    responses((status = 200, description = "The listener as it is now, and the fields that changed",
        body = ListenerChanged), CommonErrors))]
pub async fn reset_listener(
    admin: Admin,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    answer_change(
        &state,
        &admin,
        path.into_inner(),
        Action::Reset(ResetTarget::All),
    )
    .await
}

/// Drops the runtime change of one field (or one settings key as `settings.KEY`): the file's
/// value applies again. 404 when the field is not overridden.
#[utoipa::path(delete, path = "/admin/listeners/{name}/overrides/{field}", tag = "listeners",
    params(("name" = String, Path, description = "The listener's name"),
        ("field" = String, Path, description = "`enabled`, `streams`, … or `settings.KEY`")),
    responses((status = 200, description = "The listener as it is now, and the field that changed",
        body = ListenerChanged),
        (status = 400, description = "Not a field", body = ErrorBody), CommonErrors))]
pub async fn reset_listener_field(
    admin: Admin,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (name, field) = path.into_inner();
    let target = ResetTarget::parse(Some(&field))?;
    answer_change(&state, &admin, name, Action::Reset(target)).await
}

/// Makes the change and answers with the listener as it is now and the fields that changed.
async fn answer_change(
    state: &web::Data<AppState>,
    admin: &Admin,
    name: String,
    action: Action,
) -> Result<HttpResponse, ApiError> {
    let source = changes::source::ADMIN_API;
    let (row, history) = apply_change(state, &name, action, source, admin, None).await?;
    let entry = state
        .registry
        .by_name(&name)
        .ok_or_else(|| ApiError::NotFound(format!("no listener named `{name}`")))?;
    typed_json(&ListenerChanged {
        listener: state.registry.listener_view(entry, Some(&row)),
        changed: history.into_iter().map(|h| h.field).collect(),
    })
}

/// What an operator does to a listener: a change, or dropping runtime changes.
pub(super) enum Action {
    Change(Overrides),
    Reset(ResetTarget),
}

/// Makes an operator's change to a listener (through [`changes::change`] or
/// [`changes::reset`], recorded with `source` and the admin's name, on a blocking thread) and
/// applies it to this server at once with the handler it built: the one path of the admin API
/// and the dashboard. A disable keeps who made it, from where, and the operator's `reason`
/// when one is given.
pub(super) async fn apply_change(
    state: &AppState,
    name: &str,
    action: Action,
    source: &'static str,
    admin: &Admin,
    reason: Option<&str>,
) -> Result<(ListenerRow, Vec<HistoryRow>), ChangeError> {
    if state.registry.by_name(name).is_none() {
        return Err(ChangeError::NotFound(name.to_string()));
    }
    let registry = state.registry.clone();
    let key = name.to_string();
    let actor = admin.name().to_string();
    let disabled = match reason.map(str::trim).filter(|r| !r.is_empty()) {
        Some(reason) => format!("disabled by {actor} through the {source}: {reason}"),
        None => format!("disabled by {actor} through the {source}"),
    };
    let saved = state
        .db
        .run(move |c| {
            Ok(match &action {
                Action::Change(patch) => changes::change(
                    c,
                    &registry,
                    &key,
                    patch,
                    source,
                    Some(&disabled),
                    Some(&actor),
                ),
                Action::Reset(target) => {
                    changes::reset(c, &registry, &key, target, source, Some(&actor))
                }
            })
        })
        .await??;
    let (row, history) = (saved.row.clone(), saved.history.clone());
    state.registry.apply_saved(saved);
    if let Some(entry) = state.registry.by_name(name) {
        metric::listener_enabled(name, entry.enabled());
    }
    for change in &history {
        tracing::info!(
            listener = name,
            field = change.field,
            source,
            admin = admin.name(),
            "listener changed"
        );
    }
    Ok((row, history))
}

/// The event log, newest first, filtered and paged. `handler=` is the deprecated name of
/// `listener=` (the same filter; both with different values is refused).
/// The event log, newest first, filtered and paged.
#[utoipa::path(get, path = "/admin/events", tag = "events", params(EventQuery),
    responses((status = 200, description = "One page of the event log",
        body = EventsPage),
        (status = 400, description = "A filter that cannot be read", body = ErrorBody),
        CommonErrors))]
pub async fn events(
    _admin: Admin,
    state: web::Data<AppState>,
    query: web::Query<EventQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = query.into_inner();
    let page = q.page.unwrap_or(1).max(1);
    let per_page = q.per_page.unwrap_or(50).clamp(1, 500);
    let offset = (page - 1).checked_mul(per_page).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "page {page} is too large for per_page {per_page} (the offset overflows)"
        ))
    })?;
    let listener = match (q.listener, q.handler) {
        (Some(listener), Some(handler)) if listener != handler => {
            return Err(ApiError::InvalidField {
                field: "handler".into(),
                problem: format!(
                    "is the deprecated name of `listener`, which is given too with another value \
                     (`{listener}`); keep only `listener`"
                ),
            });
        }
        (listener, handler) => listener.or(handler),
    };
    let filter = EventLogFilter {
        listener,
        event_type: q.event_type,
        success: q.success,
        source: q.source.map(|s| s.as_str().to_string()),
        message_id: q.message_id,
        since_ms: q.since_ms,
    };
    let rows = state
        .db
        .run(move |c| tables::event_log::event_log_page(c, &filter, offset, per_page))
        .await?;
    typed_json(&EventsPage {
        page,
        per_page,
        events: rows,
    })
}

/// Most forwarded events listed for one message.
const EVENTS_PER_MESSAGE: i64 = 100;

/// The forwarded events about one Zulip message (its `message` event, edits, reactions),
/// oldest first, with their status and when they were received.
#[utoipa::path(get, path = "/admin/inbox", tag = "events", params(InboxQuery),
    responses((status = 200, description = "The forwarded events about the message",
        body = InboxEvents),
        (status = 400, description = "No `message_id`", body = ErrorBody), CommonErrors))]
pub async fn inbox(
    _admin: Admin,
    state: web::Data<AppState>,
    query: web::Query<InboxQuery>,
) -> Result<HttpResponse, ApiError> {
    let message_id = query.message_id.ok_or_else(|| ApiError::InvalidField {
        field: "message_id".into(),
        problem: "required: the Zulip message id whose forwarded events to list".into(),
    })?;
    let rows = state
        .db
        .run(move |c| tables::inbox::inbox_entries_about(c, message_id, EVENTS_PER_MESSAGE))
        .await?;
    typed_json(&InboxEvents {
        message_id,
        events: rows,
    })
}

/// Events per minute (last 5 minutes), error rate (last hour), time of the last event, and
/// the listeners that are active.
#[utoipa::path(get, path = "/admin/stats", tag = "events",
    responses((status = 200, description = "The statistics",
        body = Stats), CommonErrors))]
pub async fn stats(_admin: Admin, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let now = now_ms();
    let ((recent, _, last), (hour_runs, hour_failures, _)) = state
        .db
        .run(move |c| {
            Ok((
                tables::event_log::activity_since(c, now - 300_000)?,
                tables::event_log::activity_since(c, now - 3_600_000)?,
            ))
        })
        .await?;
    let active_listeners = state
        .registry
        .entries()
        .iter()
        .filter(|e| e.enabled() && e.health.open_until(Instant::now()).is_none())
        .map(|e| e.name().to_string())
        .collect();
    let error_rate = if hour_runs > 0 {
        hour_failures as f64 / hour_runs as f64
    } else {
        0.0
    };
    typed_json(&Stats {
        events_per_minute: recent as f64 / 5.0,
        error_rate,
        runs_last_hour: hour_runs,
        failures_last_hour: hour_failures,
        last_event_time_ms: last,
        active_listeners,
    })
}

//! The admin API under `/admin/`, behind a bearer token compared in constant time (401
//! without it; the whole API answers 404 while no token is configured), and the health
//! routes `/healthz`, `/readyz` and `/health`.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use actix_web::{HttpRequest, HttpResponse, http::header, web};
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, AppState, HealthFacts, json_ok};
use crate::clock::now_ms;
use crate::db::tables;
use crate::db::tables::inbox::InboxStatus;
use crate::db::tables::listeners::{HistoryRow, ListenerRow};
use crate::listeners::changes::{self, ChangeError, FieldError, Overrides};
use crate::telemetry::metric;
use crate::verification::token_matches;

/// How long `/readyz` waits for a database connection.
const READY_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one database ping answers `/readyz`.
const READY_CACHE: Duration = Duration::from_secs(1);
/// Largest body of an admin request (a replay list).
const ADMIN_MAX_BODY: usize = 256 * 1024;

/// `GET /healthz`: the process is alive; no dependency is checked.
pub async fn healthz() -> HttpResponse {
    json_ok(r#"{"status":"ok"}"#)
}

/// `GET /readyz`: 200 when the server takes traffic (database reachable, handlers loaded);
/// 503 once shutdown has begun or while the database cannot be reached.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let accepting = state.ready.load(Ordering::Relaxed);
    let database = database_reachable(&state).await;
    let handlers = state.registry.entries().len();
    let ok = accepting && database;
    let body = json!({
        "status": if ok { "ready" } else { "unavailable" },
        "accepting": accepting,
        // Never the database's own error text (it can name hosts and users): that goes to the
        // log.
        "database": if database { "ok" } else { "unreachable" },
        "handlers": handlers,
    });
    let mut response = if ok {
        HttpResponse::Ok()
    } else {
        HttpResponse::ServiceUnavailable()
    };
    response
        .insert_header((header::CONTENT_TYPE, super::JSON_UTF8))
        .body(body.to_string())
}

/// `GET /health`: `ok`, `degraded` (200, with one reason per handler whose circuit breaker
/// is open or that is disabled at runtime, and for dead letters or parked events) or
/// `unavailable` (503, when `/readyz` would answer 503). Every reason is the server's own
/// text: handler names, counts and the stored auto-disable reason; never a database error.
pub async fn health(state: web::Data<AppState>) -> HttpResponse {
    let body = health_report(&state).await;
    let mut response = if body["status"] == "unavailable" {
        HttpResponse::ServiceUnavailable()
    } else {
        HttpResponse::Ok()
    };
    response
        .insert_header((header::CONTENT_TYPE, super::JSON_UTF8))
        .body(body.to_string())
}

/// The body of `GET /health` (also shown on the dashboard's overview).
pub(super) async fn health_report(state: &AppState) -> serde_json::Value {
    let accepting = state.ready.load(Ordering::Relaxed);
    let database = database_reachable(state).await;
    let mut unavailable = Vec::new();
    if !accepting {
        unavailable.push("not accepting traffic: shutting down or still starting".to_string());
    }
    if !database {
        unavailable.push("the database cannot be reached".to_string());
    }
    let facts = if database {
        let facts = health_facts(state).await;
        if facts.is_none() {
            unavailable.push("the database did not answer the health query".to_string());
        }
        facts
    } else {
        None
    };

    let now = Instant::now();
    let mut reasons = Vec::new();
    let mut handlers = Vec::new();
    for entry in state.registry.entries() {
        let name = entry.name();
        let stored = facts.as_ref().and_then(|f| {
            f.disabled_reasons
                .iter()
                .find(|(n, _)| n == name)
                .and_then(|(_, r)| r.clone())
        });
        let handler_state = if !entry.enabled()
            && !entry.auto_disabled()
            && !entry.file_definition().enabled
            && stored.is_none()
        {
            // Off in the configuration file: a deliberate, static choice, not a degradation.
            "off"
        } else if entry.auto_disabled() {
            let why = stored
                .filter(|r| r.starts_with(crate::listeners::AUTO_DISABLED))
                .unwrap_or_else(|| {
                    format!(
                        "{} too many failures within an hour",
                        crate::listeners::AUTO_DISABLED
                    )
                });
            reasons.push(format!("listener `{name}` {why}"));
            "auto_disabled"
        } else if !entry.enabled() {
            reasons.push(format!(
                "listener `{name}` is disabled by an operator (admin API or command line)"
            ));
            "disabled"
        } else if let Some(until) = entry.health.open_until(now) {
            let secs = until.saturating_duration_since(now).as_secs_f64().ceil() as u64;
            reasons.push(format!(
                "listener `{name}`: circuit breaker open after repeated failures (trial run in {secs} s)"
            ));
            "breaker_open"
        } else {
            "ok"
        };
        handlers.push(json!({ "name": name, "state": handler_state }));
    }
    for name in state.coverage.unserved() {
        reasons.push(format!(
            "listener `{name}` is run by no live process: its forwarded events wait (start `serve --listeners` with it)"
        ));
    }
    if let Some(f) = &facts {
        if f.dead > 0 {
            reasons.push(format!(
                "{} dead letter(s): forwarded events that failed every retry (GET /admin/dead-letters)",
                f.dead
            ));
        }
        if f.parked > 0 {
            reasons.push(format!(
                "{} event(s) parked, waiting for a paused or disabled handler",
                f.parked
            ));
        }
    }

    let status = if !unavailable.is_empty() {
        "unavailable"
    } else if reasons.is_empty() {
        "ok"
    } else {
        "degraded"
    };
    unavailable.extend(reasons);
    json!({
        "status": status,
        "reasons": unavailable,
        "accepting": accepting,
        "database": if database { "ok" } else { "unreachable" },
        "listeners": handlers,
        "dead_letters": facts.as_ref().map(|f| f.dead),
        "parked_events": facts.as_ref().map(|f| f.parked),
    })
}

/// The database facts of `/health`, read at most once per [`READY_CACHE`] (an
/// unauthenticated route must not be a way to load the database); `None` when the query
/// failed or took longer than [`READY_TIMEOUT`] (the error goes to the log only).
async fn health_facts(state: &AppState) -> Option<HealthFacts> {
    let mut last = state.health_facts.lock().await;
    if let Some((at, facts)) = &*last
        && at.elapsed() < READY_CACHE
    {
        return facts.clone();
    }
    let query = state.outgoing.db().run(|c| {
        let rows = crate::db::tables::listeners::rows(c)?;
        let counts = tables::inbox::inbox_counts(c)?;
        let count = |status: InboxStatus| {
            counts
                .iter()
                .find(|(s, _)| *s == status)
                .map_or(0, |(_, n)| *n)
        };
        Ok(HealthFacts {
            disabled_reasons: rows
                .into_iter()
                .map(|r| (r.name, r.disabled_reason))
                .collect(),
            dead: count(InboxStatus::Dead),
            parked: count(InboxStatus::Parked),
        })
    });
    let facts = match tokio::time::timeout(READY_TIMEOUT, query).await {
        Ok(Ok(facts)) => Some(facts),
        Ok(Err(error)) => {
            tracing::warn!(%error, "health: reading handler states and dead letters failed");
            None
        }
        Err(_) => {
            tracing::warn!("health: the database did not answer within the readiness timeout");
            None
        }
    };
    *last = Some((Instant::now(), facts.clone()));
    facts
}

/// Whether the database answers, pinged at most once per [`READY_CACHE`]: concurrent
/// callers wait for the one ping in progress and share its result.
async fn database_reachable(state: &AppState) -> bool {
    let mut last = state.readiness.lock().await;
    if let Some((at, reachable)) = *last
        && at.elapsed() < READY_CACHE
    {
        return reachable;
    }
    let reachable = match state.outgoing.db().ping(READY_TIMEOUT).await {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(%error, "readiness: the database cannot be reached");
            false
        }
    };
    *last = Some((Instant::now(), reachable));
    reachable
}

pub(super) fn authorize(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    let Some(token) = &state.admin_token else {
        return Err(ApiError::NotFound(
            "the admin API is off: set [admin] token or token_file".into(),
        ));
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if token_matches(token, given.trim()) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized(
            "missing or wrong bearer token (Authorization: Bearer <admin token>)".into(),
        ))
    }
}

fn db_error(e: crate::db::DbError) -> ApiError {
    ApiError::Unavailable(format!("database: {e}"))
}

/// `GET /admin/listeners`: every listener with its definition, state and run counts.
pub async fn listeners(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let (counts, rows) = state
        .outgoing
        .db()
        .run(|c| {
            Ok((
                tables::event_log::listener_counts(c)?,
                crate::db::tables::listeners::rows(c)?,
            ))
        })
        .await
        .map_err(db_error)?;
    let list: Vec<_> = state
        .registry
        .entries()
        .iter()
        .map(|entry| {
            let name = entry.name();
            let count = counts.iter().find(|c| c.listener == name);
            let mut view = state
                .registry
                .view(entry, rows.iter().find(|r| r.name == name));
            view["runs"] = json!(count.map_or(0, |c| c.runs));
            view["failures"] = json!(count.map_or(0, |c| c.failures));
            view
        })
        .collect();
    Ok(json_ok(json!({ "listeners": list }).to_string()))
}

/// Statistics and history shown for one listener: the last 24 hours.
const STATS_WINDOW_MS: i64 = 86_400_000;
/// History rows shown for one listener.
const HISTORY_ROWS: i64 = 100;

/// `GET /admin/listeners/{name}`: one listener with its statistics of the last 24 hours and
/// its history of changes.
pub async fn listener(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let name = path.into_inner();
    let entry = state
        .registry
        .by_name(&name)
        .ok_or_else(|| ApiError::NotFound(format!("no listener named `{name}`")))?;
    let key = name.clone();
    let (row, stats, history) = state
        .outgoing
        .db()
        .run(move |c| {
            Ok((
                crate::db::tables::listeners::row(c, &key)?,
                crate::db::tables::event_log::run_stats(c, &key, now_ms() - STATS_WINDOW_MS)?,
                crate::db::tables::listeners::history(c, &key, HISTORY_ROWS)?,
            ))
        })
        .await
        .map_err(db_error)?;
    let mut view = state.registry.view(entry, row.as_ref());
    view["stats"] = json!(stats);
    view["history"] = json!(history);
    Ok(json_ok(view.to_string()))
}

/// `PATCH /admin/listeners/{name}` with any of `enabled`, `description`, `events`, `realms`,
/// `streams`, `users`, `settings`: checked like the configuration file (400 naming the
/// field), stored, applied here at once and by other servers sharing the database within
/// seconds, and recorded in the listener's history.
pub async fn patch_listener(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let body = super::read_body(&req, payload, ADMIN_MAX_BODY, &state.body).await?;
    let value: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("the body is not JSON: {e}")))?;
    let patch = Overrides::parse(&value).map_err(invalid_field)?;
    change_listener(&state, path.into_inner(), patch).await
}

/// `POST /admin/listeners/{name}/enable` or `…/disable`: the same as a PATCH of `enabled`.
pub async fn set_listener(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
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
    change_listener(&state, name, patch).await
}

fn invalid_field(e: FieldError) -> ApiError {
    ApiError::InvalidField {
        field: e.field,
        problem: e.problem,
    }
}

async fn change_listener(
    state: &web::Data<AppState>,
    name: String,
    patch: Overrides,
) -> Result<HttpResponse, ApiError> {
    let (row, history) = match apply_change(state, &name, patch, changes::source::ADMIN_API).await {
        Ok(done) => done,
        Err(ChangeError::NotFound(name)) => {
            return Err(ApiError::NotFound(format!("no listener named `{name}`")));
        }
        Err(ChangeError::Invalid(e)) => return Err(invalid_field(e)),
        Err(ChangeError::Database(e)) => return Err(db_error(e)),
    };
    let entry = state
        .registry
        .by_name(&name)
        .ok_or_else(|| ApiError::NotFound(format!("no listener named `{name}`")))?;
    let mut view = state.registry.view(entry, Some(&row));
    view["changed"] = json!(history.iter().map(|h| h.field.as_str()).collect::<Vec<_>>());
    Ok(json_ok(view.to_string()))
}

/// Makes an operator's change to a listener (through [`changes::change`], recorded with
/// `source`) and applies it to this server at once: the one path of the admin API and the
/// dashboard.
pub(super) async fn apply_change(
    state: &AppState,
    name: &str,
    patch: Overrides,
    source: &'static str,
) -> Result<(ListenerRow, Vec<HistoryRow>), ChangeError> {
    if state.registry.by_name(name).is_none() {
        return Err(ChangeError::NotFound(name.to_string()));
    }
    let registry = state.registry.clone();
    let key = name.to_string();
    let (row, history) = state
        .outgoing
        .db()
        .run(move |c| Ok(changes::change(c, &registry, &key, &patch, source, None)))
        .await??;
    state.registry.apply_row(&row);
    if let Some(entry) = state.registry.by_name(name) {
        metric::handler_enabled(name, entry.enabled());
    }
    for change in &history {
        tracing::info!(
            listener = name,
            field = change.field,
            source,
            "listener changed"
        );
    }
    Ok((row, history))
}

#[derive(Deserialize)]
pub struct EventQuery {
    handler: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    success: Option<bool>,
    page: Option<i64>,
    per_page: Option<i64>,
}

/// `GET /admin/events?handler=&type=&success=&page=&per_page=`: the event log, newest first.
pub async fn events(
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<EventQuery>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let q = query.into_inner();
    let page = q.page.unwrap_or(1).max(1);
    let per_page = q.per_page.unwrap_or(50).clamp(1, 500);
    let offset = (page - 1).checked_mul(per_page).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "page {page} is too large for per_page {per_page} (the offset overflows)"
        ))
    })?;
    let rows = state
        .outgoing
        .db()
        .run(move |c| {
            tables::event_log::event_log_page(
                c,
                q.handler.as_deref(),
                q.event_type.as_deref(),
                q.success,
                offset,
                per_page,
            )
        })
        .await
        .map_err(db_error)?;
    Ok(json_ok(
        json!({ "page": page, "per_page": per_page, "events": rows }).to_string(),
    ))
}

#[derive(Deserialize)]
pub struct InboxQuery {
    status: Option<String>,
    limit: Option<i64>,
}

/// The replayable status a request names; dead when it names none.
fn replayable(status: Option<String>) -> Result<InboxStatus, ApiError> {
    let Some(status) = status else {
        return Ok(InboxStatus::Dead);
    };
    InboxStatus::REPLAYABLE
        .into_iter()
        .find(|s| s.as_str() == status)
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "status `{status}` is not one of {}",
                InboxStatus::REPLAYABLE.map(InboxStatus::as_str).join(", ")
            ))
        })
}

/// `GET /admin/dead-letters?status=dead&limit=50`: forwarded events not processed.
pub async fn dead_letters(
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<InboxQuery>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let q = query.into_inner();
    let status = replayable(q.status)?;
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    let (rows, replays) = state
        .outgoing
        .db()
        .run(move |c| {
            Ok((
                tables::inbox::inbox_entries(c, &[status], limit)?,
                crate::db::tables::listeners::history(c, changes::REPLAYS, 20)?,
            ))
        })
        .await
        .map_err(db_error)?;
    Ok(json_ok(
        json!({ "events": rows, "replays": replays }).to_string(),
    ))
}

#[derive(Deserialize)]
pub struct ReplayRequest {
    #[serde(default)]
    ids: Vec<String>,
    #[serde(default)]
    all: bool,
    status: Option<String>,
}

/// `POST /admin/dead-letters/replay` with `{"ids": [...]}` or `{"all": true}` (and an
/// optional `status`): queues the events again with fresh retries.
pub async fn replay(
    req: HttpRequest,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let body = super::read_body(&req, payload, ADMIN_MAX_BODY, &state.body).await?;
    let request: ReplayRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadRequest(format!(
            "expected {{\"ids\": [...]}} or {{\"all\": true}}: {e}"
        ))
    })?;
    if request.all != request.ids.is_empty() {
        return Err(ApiError::BadRequest(
            "give either `ids` (a non-empty list) or `all: true`".into(),
        ));
    }
    let status = replayable(request.status)?;
    let ids = request.ids;
    let all = request.all;
    let requested = if all {
        "all".to_string()
    } else {
        format!("{} id(s)", ids.len())
    };
    let requeued = state
        .outgoing
        .db()
        .run(move |c| {
            let requeued =
                tables::inbox_work::requeue(c, &[status], (!all).then_some(ids.as_slice()))?;
            crate::db::tables::listeners::record(
                c,
                &[changes::replay_record(
                    changes::source::ADMIN_API,
                    status.as_str(),
                    &requested,
                    requeued,
                )],
            )?;
            Ok(requeued)
        })
        .await
        .map_err(db_error)?;
    Ok(json_ok(json!({ "requeued": requeued }).to_string()))
}

/// `GET /admin/stats`: events per minute (last 5 minutes), error rate (last hour), time of
/// the last event, and the handlers that are active.
pub async fn stats(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let now = now_ms();
    let ((recent, _, last), (hour_runs, hour_failures, _)) = state
        .outgoing
        .db()
        .run(move |c| {
            Ok((
                tables::event_log::activity_since(c, now - 300_000)?,
                tables::event_log::activity_since(c, now - 3_600_000)?,
            ))
        })
        .await
        .map_err(db_error)?;
    let active: Vec<&str> = state
        .registry
        .entries()
        .iter()
        .filter(|e| e.enabled() && e.health.open_until(Instant::now()).is_none())
        .map(|e| e.name())
        .collect();
    let error_rate = if hour_runs > 0 {
        hour_failures as f64 / hour_runs as f64
    } else {
        0.0
    };
    Ok(json_ok(
        json!({
            "events_per_minute": recent as f64 / 5.0,
            "error_rate": error_rate,
            "runs_last_hour": hour_runs,
            "failures_last_hour": hour_failures,
            "last_event_time_ms": last,
            "active_listeners": active,
        })
        .to_string(),
    ))
}

//! The admin API under `/admin/`, behind a bearer token compared in constant time (401
//! without it; the whole API answers 404 while no token is configured), and the health
//! routes `/healthz`, `/readyz` and `/health`.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use actix_web::{HttpRequest, HttpResponse, http::header, web};
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, AppState, HealthFacts, json_ok};
use crate::db::{now_ms, store};
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
    let accepting = state.ready.load(Ordering::Relaxed);
    let database = database_reachable(&state).await;
    let mut unavailable = Vec::new();
    if !accepting {
        unavailable.push("not accepting traffic: shutting down or still starting".to_string());
    }
    if !database {
        unavailable.push("the database cannot be reached".to_string());
    }
    let facts = if database {
        let facts = health_facts(&state).await;
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
        let name = entry.handler.name();
        let stored = facts.as_ref().and_then(|f| {
            f.disabled_reasons
                .iter()
                .find(|(n, _)| n == name)
                .and_then(|(_, r)| r.clone())
        });
        let handler_state = if !entry.settings.enabled {
            // Off in the configuration file: a deliberate, static choice, not a degradation.
            "off"
        } else if entry.auto_disabled() {
            let why = stored
                .filter(|r| r.starts_with(crate::handlers::AUTO_DISABLED))
                .unwrap_or_else(|| {
                    format!(
                        "{} too many failures within an hour",
                        crate::handlers::AUTO_DISABLED
                    )
                });
            reasons.push(format!("handler `{name}` {why}"));
            "auto_disabled"
        } else if !entry.enabled() {
            reasons.push(format!(
                "handler `{name}` is disabled by an operator (admin API or command line)"
            ));
            "disabled"
        } else if let Some(until) = entry.health.open_until(now) {
            let secs = until.saturating_duration_since(now).as_secs_f64().ceil() as u64;
            reasons.push(format!(
                "handler `{name}`: circuit breaker open after repeated failures (trial run in {secs} s)"
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
    let body = json!({
        "status": status,
        "reasons": unavailable,
        "accepting": accepting,
        "database": if database { "ok" } else { "unreachable" },
        "handlers": handlers,
        "dead_letters": facts.as_ref().map(|f| f.dead),
        "parked_events": facts.as_ref().map(|f| f.parked),
    });
    let mut response = if status == "unavailable" {
        HttpResponse::ServiceUnavailable()
    } else {
        HttpResponse::Ok()
    };
    response
        .insert_header((header::CONTENT_TYPE, super::JSON_UTF8))
        .body(body.to_string())
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
        let rows = store::listener_rows(c)?;
        let counts = store::inbox_counts(c)?;
        let count = |status: &str| {
            counts
                .iter()
                .find(|(s, _)| s == status)
                .map_or(0, |(_, n)| *n)
        };
        Ok(HealthFacts {
            disabled_reasons: rows
                .into_iter()
                .map(|r| (r.name, r.disabled_reason))
                .collect(),
            dead: count("dead"),
            parked: count("parked"),
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

/// `GET /admin/handlers`: every compiled-in handler with its state and statistics.
pub async fn handlers(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let (counts, rows) = state
        .outgoing
        .db()
        .run(|c| Ok((store::handler_counts(c)?, store::listener_rows(c)?)))
        .await
        .map_err(db_error)?;
    let now = Instant::now();
    let list: Vec<_> = state
        .registry
        .entries()
        .iter()
        .map(|entry| {
            let name = entry.handler.name();
            let count = counts.iter().find(|c| c.handler == name);
            let row = rows.iter().find(|r| r.name == name);
            let open_for = entry
                .health
                .open_until(now)
                .map(|u| u.saturating_duration_since(now));
            json!({
                "name": name,
                "event_types": entry.handler.interest().describe(),
                "enabled": entry.enabled(),
                "disabled_reason": row.and_then(|r| r.disabled_reason.clone()),
                "breaker": if open_for.is_some() { "open" } else { "closed" },
                "breaker_open_for_ms": open_for.map(|d| d.as_millis() as u64),
                "failures_last_hour": entry.health.failures_last_hour(now),
                "runs": count.map_or(0, |c| c.runs),
                "failures": count.map_or(0, |c| c.failures),
            })
        })
        .collect();
    Ok(json_ok(json!({ "handlers": list }).to_string()))
}

/// `POST /admin/handlers/{name}/{enable|disable}`: takes effect at once and is persisted.
pub async fn set_handler(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let (name, action) = path.into_inner();
    let enable = match action.as_str() {
        "enable" => true,
        "disable" => false,
        other => {
            return Err(ApiError::NotFound(format!(
                "unknown action `{other}`; use enable or disable"
            )));
        }
    };
    let id = state
        .registry
        .id(&name)
        .ok_or_else(|| ApiError::NotFound(format!("no handler named `{name}`")))?;
    let entry = state
        .registry
        .get(id)
        .ok_or_else(|| ApiError::NotFound(format!("no handler named `{name}`")))?;
    let handler = entry.handler.name();
    state
        .outgoing
        .db()
        .run(move |c| {
            store::set_listener_enabled(c, handler, enable, Some("disabled through the admin API"))
        })
        .await
        .map_err(db_error)?;
    if enable {
        entry.health.reset();
    }
    entry.set_enabled(enable);
    metric::handler_enabled(handler, enable);
    tracing::info!(
        handler,
        enabled = enable,
        "handler state changed through the admin API"
    );
    Ok(json_ok(
        json!({ "name": handler, "enabled": enable }).to_string(),
    ))
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
            store::event_log_page(
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

const REPLAYABLE: &[&str] = &["dead", "parked", "rate_limited", "expired", "filtered"];

fn replayable(status: Option<String>) -> Result<String, ApiError> {
    let status = status.unwrap_or_else(|| "dead".into());
    if REPLAYABLE.contains(&status.as_str()) {
        Ok(status)
    } else {
        Err(ApiError::BadRequest(format!(
            "status `{status}` is not one of {}",
            REPLAYABLE.join(", ")
        )))
    }
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
    let rows = state
        .outgoing
        .db()
        .run(move |c| store::inbox_entries(c, &[status.as_str()], limit))
        .await
        .map_err(db_error)?;
    Ok(json_ok(json!({ "events": rows }).to_string()))
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
    let requeued = state
        .outgoing
        .db()
        .run(move |c| store::requeue(c, &[status.as_str()], (!all).then_some(ids.as_slice())))
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
                store::activity_since(c, now - 300_000)?,
                store::activity_since(c, now - 3_600_000)?,
            ))
        })
        .await
        .map_err(db_error)?;
    let active: Vec<&str> = state
        .registry
        .entries()
        .iter()
        .filter(|e| e.enabled() && e.health.open_until(Instant::now()).is_none())
        .map(|e| e.handler.name())
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
            "active_handlers": active,
        })
        .to_string(),
    ))
}

//! The health routes, open to anyone: `/healthz` (the process is alive), `/readyz` (taking
//! traffic, database reachable) and `/health` (`ok`, `degraded` with reasons, or
//! `unavailable`), which the dashboard's overview shows too. Their database reads are cached
//! for a moment, so that they cannot be used to load the database.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use actix_web::{HttpResponse, http::header, web};
use serde_json::json;

use super::{AppState, json_ok};
use crate::db::tables;
use crate::db::tables::inbox::InboxStatus;
use crate::listeners::ListenerState;

/// How long `/readyz` waits for a database connection.
const READY_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one database ping answers `/readyz`.
const READY_CACHE: Duration = Duration::from_secs(1);

/// What `GET /health` reads from the database.
#[derive(Clone)]
pub struct HealthFacts {
    /// Each listener's stored disabled reason, if any.
    pub disabled_reasons: Vec<(String, Option<String>)>,
    pub dead: i64,
    pub parked: i64,
}

/// `GET /healthz`: the process is alive; no dependency is checked.
pub async fn healthz() -> HttpResponse {
    json_ok(r#"{"status":"ok"}"#)
}

/// `GET /readyz`: 200 when the server takes traffic (database reachable, listeners loaded; their
/// count is the field `listeners`, and `handlers`, its deprecated name); 503 once shutdown has begun or while the database cannot
/// be reached.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let accepting = state.ready.load(Ordering::Relaxed);
    let database = database_reachable(&state).await;
    let listeners = state.registry.entries().len();
    let ok = accepting && database;
    let body = json!({
        "status": if ok { "ready" } else { "unavailable" },
        "accepting": accepting,
        // Never the database's own error text (it can name hosts and users): that goes to the
        // log.
        "database": if database { "ok" } else { "unreachable" },
        "listeners": listeners,
        "handlers": listeners,
    });
    answer(ok, &body)
}

/// `GET /health`: `ok`, `degraded` (200, with one reason per listener whose circuit breaker
/// is open or that is disabled at runtime, and for dead letters or parked events) or
/// `unavailable` (503, when `/readyz` would answer 503). Every reason is the server's own
/// text: listener names, counts and the stored auto-disable reason; never a database error.
pub async fn health(state: web::Data<AppState>) -> HttpResponse {
    let body = health_report(&state).await;
    answer(body["status"] != "unavailable", &body)
}

/// 200 with `body`, or 503 when the server cannot take traffic.
fn answer(available: bool, body: &serde_json::Value) -> HttpResponse {
    let mut response = if available {
        HttpResponse::Ok()
    } else {
        HttpResponse::ServiceUnavailable()
    };
    response
        .insert_header((header::CONTENT_TYPE, super::JSON_UTF8))
        .body(body.to_string())
}

/// The body of `GET /health` (also shown on the dashboard's overview).
pub(super) async fn health_report(state: &AppState) -> serde_json::Value {
    let accepting = state.ready.load(Ordering::Relaxed);
    let reachable = database_reachable(state).await;
    let mut unavailable = Vec::new();
    if !accepting {
        unavailable.push("not accepting traffic: shutting down or still starting".to_string());
    }
    let facts = if reachable {
        health_facts(state).await
    } else {
        None
    };
    // A database that stops answering between the two queries is unreachable too.
    let database = facts.is_some();
    if !reachable {
        unavailable.push("the database cannot be reached".to_string());
    } else if !database {
        unavailable
            .push("the database cannot be reached: it did not answer the health query".to_string());
    }

    let now = Instant::now();
    let mut reasons = Vec::new();
    let mut listeners = Vec::new();
    for entry in state.registry.entries() {
        let name = entry.name();
        let stored = facts.as_ref().and_then(|f| {
            f.disabled_reasons
                .iter()
                .find(|(n, _)| n == name)
                .and_then(|(_, r)| r.clone())
        });
        let listener_state = if !entry.enabled()
            && !entry.auto_disabled()
            && !entry.file_definition().enabled
            && stored.is_none()
        {
            // Off in the configuration file: a deliberate, static choice, not a degradation.
            ListenerState::Off
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
            ListenerState::AutoDisabled
        } else if !entry.enabled() {
            reasons.push(format!(
                "listener `{name}` is disabled by an operator (admin API or command line)"
            ));
            ListenerState::Disabled
        } else if let Some(until) = entry.health.open_until(now) {
            let secs = until.saturating_duration_since(now).as_secs_f64().ceil() as u64;
            reasons.push(format!(
                "listener `{name}`: circuit breaker open after repeated failures (trial run in {secs} s)"
            ));
            ListenerState::BreakerOpen
        } else {
            ListenerState::Ok
        };
        listeners.push(json!({ "name": name, "state": listener_state }));
    }
    for name in state.coverage.unserved() {
        reasons.push(format!(
            "listener `{name}` is run by no live process: its forwarded events wait (start `serve --listeners` with it)"
        ));
    }
    let storage = state.storage.report();
    if let Some(why) = &storage.refusing {
        reasons.push(format!(
            "no room for new work in the database: {why} (forwarder batches get 503 until then)"
        ));
    }
    if let Some(f) = &facts {
        if f.dead > 0 {
            reasons.push(format!(
                "{} dead letter(s): forwarded events that failed every retry (GET /admin/dead-letters; replay or discard them)",
                f.dead
            ));
        }
        if f.parked > 0 {
            reasons.push(format!(
                "{} event(s) parked, waiting for a paused or disabled listener",
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
        "storage": storage,
        "listeners": listeners,
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
    let query = state.db.run(|c| {
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
    let reachable = match state.db.ping(READY_TIMEOUT).await {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(%error, "readiness: the database cannot be reached");
            false
        }
    };
    *last = Some((Instant::now(), reachable));
    reachable
}

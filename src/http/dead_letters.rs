//! The admin API's dead-letter routes (behind the admin token, like the rest of `/admin/`):
//! list, show one, replay, discard. Each parses the request, calls its action in
//! [`crate::processing::dead_letters`] (which records replays and discards in the audit
//! trail with source `admin API` and the admin token's name) and renders the result as JSON.

use actix_web::{HttpRequest, HttpResponse, web};

use super::admin::ADMIN_MAX_BODY;
use super::api::{
    ActionErrors, CommonErrors, DeadLetter, DeadLetterAction, DeadLetterList, DeadLetterQuery,
    Discarded, ErrorBody, Requeued,
};
use super::{Admin, ApiError, AppState, json_ok, typed_json};
use crate::db::tables::inbox::InboxStatus;
use crate::listeners::changes::{FieldError, source};
use crate::processing::dead_letters::{self, Target};

/// Replays and discards listed with the dead letters.
const AUDIT_ROWS: i64 = 20;

/// The status a request names (one of [`InboxStatus::LISTED`]); dead when it names none.
fn status_of(status: Option<&str>) -> Result<InboxStatus, ApiError> {
    let Some(status) = status else {
        return Ok(InboxStatus::Dead);
    };
    InboxStatus::LISTED
        .into_iter()
        .find(|s| s.as_str() == status)
        .ok_or_else(|| {
            ApiError::from(FieldError::new(
                "status",
                format!(
                    "`{status}` is not one of {}",
                    InboxStatus::LISTED.map(InboxStatus::as_str).join(", ")
                ),
            ))
        })
}

/// Forwarded events not processed (dead letters by default), newest first, with the last
/// replays and discards.
#[utoipa::path(get, path = "/admin/dead-letters", tag = "dead letters", params(DeadLetterQuery),
    responses((status = 200, description = "The events and the last replays and discards",
        body = DeadLetterList),
        (status = 400, description = "Not a status", body = ErrorBody), CommonErrors))]
pub async fn list(
    _admin: Admin,
    state: web::Data<AppState>,
    query: web::Query<DeadLetterQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = query.into_inner();
    let status = status_of(q.status.as_deref())?;
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    let (rows, (replays, discards)) = state
        .db
        .run(move |c| {
            Ok((
                dead_letters::list(c, status, q.listener.as_deref(), limit)?,
                dead_letters::audit(c, AUDIT_ROWS)?,
            ))
        })
        .await?;
    typed_json(&DeadLetterList {
        events: rows,
        replays,
        discards,
    })
}

/// One dead letter with its work per listener and its envelope, redacted as logs are.
#[utoipa::path(get, path = "/admin/dead-letters/{id}", tag = "dead letters",
    params(("id" = String, Path, description = "The event id")),
    responses((status = 200, description = "The dead letter",
        body = DeadLetter),
        (status = 409, description = "Not a dead letter; `status` names its status",
            body = ErrorBody), CommonErrors))]
pub async fn show(
    _admin: Admin,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let shown = state
        .db
        .run(move |c| Ok(dead_letters::show(c, &id)))
        .await??;
    // The struct's own key order, as this answer always had (not through a `Value`).
    let body = serde_json::to_string::<DeadLetter>(&shown)
        .map_err(|e| ApiError::Internal(format!("rendering the dead letter: {e}")))?;
    Ok(json_ok(body))
}

/// Reads a replay or discard body into what it targets.
struct ActionRequest;

impl ActionRequest {
    /// Reads the body: `{"ids": [...]}` or `{"all": true}` with an optional `status` and
    /// `listener` (they narrow `all`; with ids, each id must be a dead letter of any status).
    async fn read(
        req: &HttpRequest,
        state: &AppState,
        payload: web::Payload,
    ) -> Result<(DeadLetterAction, Target), ApiError> {
        let body = super::read_body(req, payload, ADMIN_MAX_BODY, &state.body).await?;
        let request: DeadLetterAction = serde_json::from_slice(&body).map_err(|e| {
            ApiError::BadRequest(format!(
                "expected {{\"ids\": [...]}} or {{\"all\": true}} (with `status`, `listener`, `reason`): {e}"
            ))
        })?;
        let status = status_of(request.status.as_deref())?;
        let target = match (request.all, request.ids.is_empty()) {
            (true, true) => Target::All {
                status,
                listener: request.listener.clone().filter(|l| !l.trim().is_empty()),
            },
            (false, false) if request.listener.is_none() => Target::Ids(request.ids.clone()),
            (false, false) => {
                return Err(ApiError::from(FieldError::new(
                    "listener",
                    "narrows `all: true`; with `ids` name the events alone",
                )));
            }
            _ => {
                return Err(ApiError::BadRequest(
                    "give either `ids` (a non-empty list) or `all: true`".into(),
                ));
            }
        };
        Ok((request, target))
    }
}

/// Queues the events named (`{"ids": [...]}`, or `{"all": true}` with an optional `status`
/// and `listener`) again with fresh retries.
#[utoipa::path(post, path = "/admin/dead-letters/replay", tag = "dead letters",
    request_body = DeadLetterAction,
    responses((status = 200, description = "The events queued again",
        body = Requeued),
        ActionErrors, CommonErrors))]
pub async fn replay(
    admin: Admin,
    req: HttpRequest,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (_, target) = ActionRequest::read(&req, &state, payload).await?;
    let requeued = state
        .db
        .run(move |c| {
            Ok(dead_letters::replay(
                c,
                &target,
                source::ADMIN_API,
                Some(admin.name()),
            ))
        })
        .await??;
    typed_json(&Requeued { requeued })
}

/// Sets the events named (`{"ids": [...]}` or `{"all": true}`, with a `reason`) aside for
/// good.
#[utoipa::path(post, path = "/admin/dead-letters/discard", tag = "dead letters",
    request_body = DeadLetterAction,
    responses((status = 200, description = "The events set aside",
        body = Discarded),
        ActionErrors, CommonErrors))]
pub async fn discard(
    admin: Admin,
    req: HttpRequest,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (request, target) = ActionRequest::read(&req, &state, payload).await?;
    let reason = request.reason.unwrap_or_default();
    let discarded = state
        .db
        .run(move |c| {
            Ok(dead_letters::discard(
                c,
                &target,
                &reason,
                source::ADMIN_API,
                Some(admin.name()),
            ))
        })
        .await??;
    typed_json(&Discarded { discarded })
}

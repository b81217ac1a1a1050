//! The admin API's dead-letter routes (behind the admin token, like the rest of `/admin/`):
//! list, show one, replay, discard. Each parses the request, calls its action in
//! [`crate::processing::dead_letters`] (which records replays and discards in the audit
//! trail with source `admin API` and the admin token's name) and renders the result as JSON.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use super::admin::{ADMIN_MAX_BODY, db_error, invalid_field};
use super::{Admin, ApiError, AppState, json_ok};
use crate::db::tables::inbox::InboxStatus;
use crate::listeners::changes::{FieldError, source};
use crate::processing::dead_letters::{self, DeadLetterError, Target};

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
            invalid_field(FieldError::new(
                "status",
                format!(
                    "`{status}` is not one of {}",
                    InboxStatus::LISTED.map(InboxStatus::as_str).join(", ")
                ),
            ))
        })
}

/// An error of a dead-letter action as the API answers it: 404 for an unknown event, 409
/// naming the status of one that is not a dead letter, 400 naming the field at fault.
fn refused(e: DeadLetterError) -> ApiError {
    match e {
        DeadLetterError::NotFound(_) => ApiError::NotFound(e.to_string()),
        DeadLetterError::NotADeadLetter { status, .. } => ApiError::WrongStatus {
            message: e.to_string(),
            status: status.to_string(),
        },
        DeadLetterError::Invalid(field) => invalid_field(field),
        DeadLetterError::Database(e) => db_error(e),
    }
}

#[derive(Deserialize)]
pub struct ListQuery {
    status: Option<String>,
    listener: Option<String>,
    limit: Option<i64>,
}

/// `GET /admin/dead-letters?status=dead&listener=&limit=50`: forwarded events not processed,
/// newest first, with the last replays and discards (`replays`, `discards`).
pub async fn list(
    _admin: Admin,
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
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
        .await
        .map_err(db_error)?;
    Ok(json_ok(
        json!({ "events": rows, "replays": replays, "discards": discards }).to_string(),
    ))
}

/// `GET /admin/dead-letters/{id}`: one dead letter with its work per listener and its
/// envelope, redacted as logs are.
pub async fn show(
    _admin: Admin,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let shown = state
        .db
        .run(move |c| Ok(dead_letters::show(c, &id)))
        .await
        .map_err(db_error)?
        .map_err(refused)?;
    let body = serde_json::to_string(&shown)
        .map_err(|e| ApiError::Internal(format!("rendering the dead letter: {e}")))?;
    Ok(json_ok(body))
}

/// The body of a replay or a discard.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    #[serde(default)]
    ids: Vec<String>,
    #[serde(default)]
    all: bool,
    status: Option<String>,
    listener: Option<String>,
    reason: Option<String>,
}

impl ActionRequest {
    /// Reads the body: `{"ids": [...]}` or `{"all": true}` with an optional `status` and
    /// `listener` (they narrow `all`; with ids, each id must be a dead letter of any status).
    async fn read(
        req: &HttpRequest,
        state: &AppState,
        payload: web::Payload,
    ) -> Result<(ActionRequest, Target), ApiError> {
        let body = super::read_body(req, payload, ADMIN_MAX_BODY, &state.body).await?;
        let request: ActionRequest = serde_json::from_slice(&body).map_err(|e| {
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
                return Err(invalid_field(FieldError::new(
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

/// `POST /admin/dead-letters/replay` with `{"ids": [...]}` or `{"all": true}` (and an
/// optional `status`, `listener`): queues the events again with fresh retries.
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
        .await
        .map_err(db_error)?
        .map_err(refused)?;
    Ok(json_ok(json!({ "requeued": requeued }).to_string()))
}

/// `POST /admin/dead-letters/discard` with `{"ids": [...], "reason": "..."}` or `{"all": true,
/// "reason": "..."}` (and an optional `status`, `listener`): sets the events aside for good.
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
        .await
        .map_err(db_error)?
        .map_err(refused)?;
    Ok(json_ok(json!({ "discarded": discarded }).to_string()))
}

//! The dead-letters pages (`/admin/ui/dead-letters`): forwarded events not processed, by
//! status; one event with its envelope (redacted); replay and discard, each a confirmation
//! page then the form post. The actions are those of [`crate::processing::dead_letters`],
//! recorded in the audit trail with source `dashboard` and the admin's name.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};

use super::session::read_form;
use super::{Ctx, db_failed, given, pages, query, see_other};
use crate::db::tables;
use crate::db::tables::inbox::InboxStatus;
use crate::http::AppState;
use crate::listeners::changes::source;
use crate::processing::dead_letters::{self, DeadLetterError, Target};

/// Dead letters listed per page.
const DEAD_LETTERS_SHOWN: i64 = 100;

/// The listed status a request names; dead by default.
fn status_of(pairs: &[(String, String)]) -> InboxStatus {
    let wanted = given(pairs, "status");
    InboxStatus::LISTED
        .into_iter()
        .find(|s| Some(s.as_str()) == wanted)
        .unwrap_or(InboxStatus::Dead)
}

/// What a form or a link names: event ids (`id`, repeatable) or `all=1` with the status.
fn target_of(pairs: &[(String, String)]) -> Option<Target> {
    let ids: Vec<String> = pairs
        .iter()
        .filter(|(k, v)| k == "id" && !v.trim().is_empty())
        .map(|(_, v)| v.trim().to_string())
        .collect();
    match (ids.is_empty(), given(pairs, "all") == Some("1")) {
        (false, false) => Some(Target::Ids(ids)),
        (true, true) => Some(Target::All {
            status: status_of(pairs),
            listener: None,
        }),
        _ => None,
    }
}

/// The page for an action that was refused.
fn refused(ctx: &Ctx, error: DeadLetterError) -> HttpResponse {
    let (status, title) = match error {
        DeadLetterError::Database(e) => return db_failed(ctx, e),
        DeadLetterError::NotFound(_) => (StatusCode::NOT_FOUND, "No such event"),
        DeadLetterError::NotADeadLetter { .. } => (StatusCode::CONFLICT, "Not a dead letter"),
        DeadLetterError::Invalid(_) => (StatusCode::BAD_REQUEST, "Not done"),
    };
    pages::message(status, &ctx.base, title, &error.to_string())
}

pub(super) async fn dead_letters(
    ctx: Ctx,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> HttpResponse {
    let pairs = query(&req);
    let status = status_of(&pairs);
    let read = state
        .db
        .run(move |c| {
            Ok((
                tables::inbox::inbox_counts(c)?,
                dead_letters::list(c, status, None, DEAD_LETTERS_SHOWN)?,
            ))
        })
        .await;
    let done = state.dashboard.take_notice(&ctx);
    match read {
        Ok((counts, rows)) => pages::dead_letters(&ctx, status, &counts, &rows, done.as_deref()),
        Err(e) => db_failed(&ctx, e),
    }
}

/// `GET …/dead-letters/{id}`: one event, its work per listener and its envelope.
pub(super) async fn dead_letter(
    ctx: Ctx,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> HttpResponse {
    let id = path.into_inner();
    match state.db.run(move |c| Ok(dead_letters::show(c, &id))).await {
        Ok(Ok(shown)) => pages::dead_letter(&ctx, &shown),
        Ok(Err(e)) => refused(&ctx, e),
        Err(e) => db_failed(&ctx, e),
    }
}

/// How many events a confirmation page is about.
async fn count(state: &AppState, target: Option<Target>) -> Result<i64, crate::db::DbError> {
    match target {
        None => Ok(0),
        Some(Target::Ids(ids)) => {
            state
                .db
                .run(move |c| {
                    let found = tables::inbox::statuses_of(c, &ids)?;
                    Ok(found
                        .iter()
                        .filter(|(_, s)| InboxStatus::REPLAYABLE.contains(s))
                        .count() as i64)
                })
                .await
        }
        Some(Target::All { status, .. }) if !InboxStatus::REPLAYABLE.contains(&status) => Ok(0),
        Some(Target::All { status, .. }) => {
            state
                .db
                .run(move |c| {
                    Ok(tables::inbox::inbox_counts(c)?
                        .into_iter()
                        .find(|(s, _)| *s == status)
                        .map_or(0, |(_, n)| n))
                })
                .await
        }
    }
}

/// `GET …/dead-letters/replay?status=&id=` (or `all=1`): asks for confirmation.
pub(super) async fn confirm_replay(
    ctx: Ctx,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> HttpResponse {
    confirm(ctx, req, state, pages::Confirm::Replay).await
}

/// `GET …/dead-letters/discard?status=&id=` (or `all=1`): asks for confirmation and a reason.
pub(super) async fn confirm_discard(
    ctx: Ctx,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> HttpResponse {
    confirm(ctx, req, state, pages::Confirm::Discard).await
}

async fn confirm(
    ctx: Ctx,
    req: HttpRequest,
    state: web::Data<AppState>,
    action: pages::Confirm,
) -> HttpResponse {
    let pairs = query(&req);
    let status = status_of(&pairs);
    let target = target_of(&pairs);
    if target.is_none() {
        return see_other(&ctx.url(&format!("/ui/dead-letters?status={status}")));
    }
    let id = match &target {
        Some(Target::Ids(ids)) => ids.first().cloned(),
        _ => None,
    };
    match count(&state, target).await {
        Ok(count) => pages::confirm(&ctx, action, status.as_str(), id.as_deref(), count),
        Err(e) => db_failed(&ctx, e),
    }
}

/// A replay or discard form: the form (CSRF checked), the status the list showed, and the
/// events it names; or the answer refusing it (`action` names it in the message).
async fn posted(
    ctx: &Ctx,
    req: &HttpRequest,
    state: &AppState,
    payload: web::Payload,
    action: &str,
) -> Result<(Vec<(String, String)>, InboxStatus, Target), HttpResponse> {
    let form = read_form(req, state, ctx, payload).await?;
    let status = status_of(&form);
    let Some(target) = target_of(&form) else {
        return Err(pages::message(
            StatusCode::BAD_REQUEST,
            &ctx.base,
            &format!("Nothing to {action}"),
            "Give either event ids or all=1.",
        ));
    };
    Ok((form, status, target))
}

/// Back to the list with a notice of how many events `did` (or the error).
fn answered(
    ctx: &Ctx,
    state: &AppState,
    status: InboxStatus,
    done: Result<Result<usize, DeadLetterError>, crate::db::DbError>,
    did: &str,
) -> HttpResponse {
    match done {
        Ok(Ok(n)) => {
            state
                .dashboard
                .set_notice(ctx, format!("{n} event(s) {did}."));
            see_other(&ctx.url(&format!("/ui/dead-letters?status={status}")))
        }
        Ok(Err(e)) => refused(ctx, e),
        Err(e) => db_failed(ctx, e),
    }
}

/// `POST …/dead-letters/replay` with `status` and `id` or `all=1`: queues the events again.
pub(super) async fn replay(
    ctx: Ctx,
    req: HttpRequest,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> HttpResponse {
    let (_, status, target) = match posted(&ctx, &req, &state, payload, "replay").await {
        Ok(posted) => posted,
        Err(refused) => return refused,
    };
    let admin = ctx.admin.clone();
    let done = state
        .db
        .run(move |c| {
            Ok(dead_letters::replay(
                c,
                &target,
                source::DASHBOARD,
                Some(admin.name()),
            ))
        })
        .await;
    answered(&ctx, &state, status, done, "queued again")
}

/// `POST …/dead-letters/discard` with `status`, `id` or `all=1`, and `reason`: sets the events
/// aside for good.
pub(super) async fn discard(
    ctx: Ctx,
    req: HttpRequest,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> HttpResponse {
    let (form, status, target) = match posted(&ctx, &req, &state, payload, "discard").await {
        Ok(posted) => posted,
        Err(refused) => return refused,
    };
    let reason = given(&form, "reason").unwrap_or_default().to_string();
    let admin = ctx.admin.clone();
    let done = state
        .db
        .run(move |c| {
            Ok(dead_letters::discard(
                c,
                &target,
                &reason,
                source::DASHBOARD,
                Some(admin.name()),
            ))
        })
        .await;
    answered(&ctx, &state, status, done, "discarded")
}

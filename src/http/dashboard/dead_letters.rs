//! The dead-letters pages (`/admin/ui/dead-letters`): forwarded events not processed, by
//! status, and their replay: a confirmation page, then the form post that queues them again.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};

use super::session::read_form;
use super::{Ctx, db_failed, given, pages, query, see_other};
use crate::db::tables;
use crate::db::tables::inbox::InboxStatus;
use crate::http::AppState;

/// Dead letters listed per page.
const DEAD_LETTERS_SHOWN: i64 = 100;

/// The replayable status a request names; dead by default.
fn status_of(pairs: &[(String, String)]) -> InboxStatus {
    let wanted = given(pairs, "status");
    InboxStatus::REPLAYABLE
        .into_iter()
        .find(|s| Some(s.as_str()) == wanted)
        .unwrap_or(InboxStatus::Dead)
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
                tables::inbox::inbox_entries(c, &[status], DEAD_LETTERS_SHOWN)?,
            ))
        })
        .await;
    match read {
        Ok((counts, rows)) => pages::dead_letters(&ctx, status, &counts, &rows, &pairs),
        Err(e) => db_failed(&ctx, e),
    }
}

/// `GET …/dead-letters/replay?status=&id=` (or `all=1`): asks for confirmation.
pub(super) async fn confirm_replay(
    ctx: Ctx,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> HttpResponse {
    let pairs = query(&req);
    let status = status_of(&pairs);
    let id = given(&pairs, "id").map(str::to_string);
    if id.is_none() && given(&pairs, "all") != Some("1") {
        return see_other(&ctx.url(&format!("/ui/dead-letters?status={status}")));
    }
    let count = match &id {
        Some(id) => {
            let key = id.clone();
            state
                .db
                .run(move |c| tables::inbox::inbox_has(c, &key, &[status]).map(i64::from))
                .await
        }
        None => {
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
    };
    match count {
        Ok(count) => pages::confirm_replay(&ctx, status.as_str(), id.as_deref(), count),
        Err(e) => db_failed(&ctx, e),
    }
}

/// `POST …/dead-letters/replay` with `status` and `id` or `all=1`: queues the events again.
pub(super) async fn replay(
    ctx: Ctx,
    req: HttpRequest,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> HttpResponse {
    let form = match read_form(&req, &state, &ctx, payload).await {
        Ok(form) => form,
        Err(refused) => return refused,
    };
    let status = status_of(&form);
    let ids: Vec<String> = form
        .iter()
        .filter(|(k, v)| k == "id" && !v.trim().is_empty())
        .map(|(_, v)| v.trim().to_string())
        .collect();
    let all = given(&form, "all") == Some("1");
    if ids.is_empty() != all {
        return pages::message(
            StatusCode::BAD_REQUEST,
            &ctx.base,
            "Nothing to replay",
            "Give either event ids or all=1.",
        );
    }
    let requeued = state
        .db
        .run(move |c| tables::inbox_work::requeue(c, &[status], (!all).then_some(ids.as_slice())))
        .await;
    match requeued {
        Ok(n) => {
            tracing::info!(
                requeued = n,
                status = status.as_str(),
                "dead letters replayed through the dashboard"
            );
            see_other(&ctx.url(&format!("/ui/dead-letters?status={status}&replayed={n}")))
        }
        Err(e) => db_failed(&ctx, e),
    }
}

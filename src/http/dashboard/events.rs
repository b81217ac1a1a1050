//! The event-log pages (`/admin/ui/events`, `/admin/ui/events/{id}`): a filtered page of the
//! event log, read in windows of ids so that a page stays fast on a large log, and one run
//! with the other runs of its event and its inbox entry.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};

use super::pages::{self, EventsPage, EventsQuery};
use super::{Ctx, db_failed, given, listener_names, query};
use crate::db::tables;
use crate::http::AppState;

/// Event-log ids one page of the event log looks at, at most.
const EVENT_WINDOW: i64 = 20_000;
/// Event-log rows per page.
const EVENTS_PER_PAGE: i64 = 50;

fn events_query(pairs: &[(String, String)]) -> EventsQuery {
    EventsQuery {
        filter: tables::event_log::EventFilter {
            listener: given(pairs, "listener").map(str::to_string),
            realm: given(pairs, "realm").map(str::to_string),
            event_type: given(pairs, "type").map(str::to_string),
            success: match given(pairs, "success") {
                Some("true" | "ok" | "1") => Some(true),
                Some("false" | "failed" | "0") => Some(false),
                _ => None,
            },
        },
        since: given(pairs, "since").map(str::to_string),
        until: given(pairs, "until").map(str::to_string),
        before: given(pairs, "before").and_then(|b| b.parse().ok()),
    }
}

pub(super) async fn events(ctx: Ctx, req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let pairs = query(&req);
    let q = events_query(&pairs);
    let names = listener_names(&state);
    let times = q
        .since
        .as_deref()
        .map(crate::clock::parse_utc)
        .transpose()
        .and_then(|since| {
            Ok((
                since,
                q.until
                    .as_deref()
                    .map(crate::clock::parse_utc)
                    .transpose()?,
            ))
        });
    let (since, until) = match times {
        Ok(times) => times,
        Err(problem) => {
            let empty = EventsPage {
                rows: Vec::new(),
                searched: None,
                older: None,
            };
            let mut response = pages::events(&ctx, &names, &q, &empty, Some(&problem));
            *response.status_mut() = StatusCode::BAD_REQUEST;
            return response;
        }
    };
    let filter = q.filter.clone();
    let before = q.before;
    let read = state
        .db
        .run(move |c| {
            let Some(newest) = tables::event_log::newest_event_id(c)? else {
                return Ok(EventsPage {
                    rows: Vec::new(),
                    searched: None,
                    older: None,
                });
            };
            let mut high = before.map_or(newest, |b| b.saturating_sub(1).min(newest));
            if let Some(until) = until {
                high = high.min(tables::event_log::id_at_or_before(c, until)?.unwrap_or(-1));
            }
            let mut floor = tables::event_log::oldest_event_id(c)?.unwrap_or(0);
            if let Some(since) = since {
                floor = floor.max(tables::event_log::id_at_or_after(c, since)?.unwrap_or(i64::MAX));
            }
            if high < floor {
                return Ok(EventsPage {
                    rows: Vec::new(),
                    searched: None,
                    older: None,
                });
            }
            let low = floor.max(high.saturating_sub(EVENT_WINDOW - 1));
            let mut rows =
                tables::event_log::event_window(c, &filter, low, high, EVENTS_PER_PAGE + 1)?;
            let older = if rows.len() > EVENTS_PER_PAGE as usize {
                rows.truncate(EVENTS_PER_PAGE as usize);
                rows.last().map(|r| r.id)
            } else if low > floor {
                Some(low)
            } else {
                None
            };
            let searched_low = if rows.len() == EVENTS_PER_PAGE as usize {
                rows.last().map_or(low, |r| r.id)
            } else {
                low
            };
            Ok(EventsPage {
                rows,
                searched: Some((searched_low, high)),
                older,
            })
        })
        .await;
    match read {
        Ok(page) => pages::events(&ctx, &names, &q, &page, None),
        Err(e) => db_failed(&ctx, e),
    }
}

/// Runs of the same event looked for around one row.
const SAME_EVENT_SPAN: i64 = 5_000;

pub(super) async fn event(
    ctx: Ctx,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> HttpResponse {
    let Ok(id) = path.into_inner().parse::<i64>() else {
        return pages::message(
            StatusCode::NOT_FOUND,
            &ctx.base,
            "No such event",
            "Event-log ids are numbers.",
        );
    };
    let read = state
        .db
        .run(move |c| {
            let Some(row) = tables::event_log::event_by_id(c, id)? else {
                return Ok(None);
            };
            let (related, inbox) = match &row.event_id {
                Some(event_id) => (
                    tables::event_log::runs_of_event(c, event_id, row.id, SAME_EVENT_SPAN)?,
                    tables::inbox::inbox_entry(c, event_id)?,
                ),
                None => (Vec::new(), None),
            };
            Ok(Some((row, related, inbox)))
        })
        .await;
    match read {
        Ok(Some((row, related, inbox))) => pages::event(&ctx, &row, &related, inbox.as_ref()),
        Ok(None) => pages::message(
            StatusCode::NOT_FOUND,
            &ctx.base,
            "No such event",
            &format!("The event log has no row {id} (it may have been cleaned up)."),
        ),
        Err(e) => db_failed(&ctx, e),
    }
}

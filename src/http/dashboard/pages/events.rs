//! The event-log pages: the filter form with a page of runs (newest first, paged by id), and
//! one run in detail with its inbox entry and the other runs of the same event.

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use maud::html;

use super::format::{encode_pairs, path_segment, shorten};
use super::{layout, respond};
use crate::clock::utc_text;
use crate::db::tables;
use crate::db::tables::{event_log::EventLogRow, inbox::InboxEntry};
use crate::http::dashboard::Ctx;

/// The event-log page's filters, from the query string.
pub struct EventsQuery {
    pub filter: tables::event_log::EventFilter,
    pub since: Option<String>,
    pub until: Option<String>,
    pub before: Option<i64>,
}

/// A page of the event log and where the next one starts.
pub struct EventsPage {
    pub rows: Vec<crate::db::tables::event_log::EventLogRow>,
    /// The ids looked at: `(low, high)`.
    pub searched: Option<(i64, i64)>,
    /// `before=` of the next (older) page.
    pub older: Option<i64>,
}

pub fn events(
    ctx: &Ctx,
    names: &[String],
    q: &EventsQuery,
    page: &EventsPage,
    error: Option<&str>,
) -> HttpResponse {
    let f = &q.filter;
    let mut keep: Vec<(&str, String)> = Vec::new();
    if let Some(v) = &f.listener {
        keep.push(("listener", v.clone()));
    }
    if let Some(v) = &f.realm {
        keep.push(("realm", v.clone()));
    }
    if let Some(v) = &f.event_type {
        keep.push(("type", v.clone()));
    }
    if let Some(v) = f.success {
        keep.push(("success", v.to_string()));
    }
    if let Some(v) = &q.since {
        keep.push(("since", v.clone()));
    }
    if let Some(v) = &q.until {
        keep.push(("until", v.clone()));
    }
    let older = page.older.map(|before| {
        let mut pairs = keep.clone();
        pairs.push(("before", before.to_string()));
        ctx.url(&format!("/ui/events?{}", encode_pairs(&pairs)))
    });
    let newest = ctx.url(&format!("/ui/events?{}", encode_pairs(&keep)));
    let body = html! {
        @if let Some(error) = error {
            p.error { (error) }
        }
        form.filters method="get" action=(ctx.url("/ui/events")) {
            label { "Listener "
                select name="listener" {
                    option value="" { "any" }
                    @for n in names {
                        option value=(n) selected[f.listener.as_deref() == Some(n.as_str())] { (n) }
                    }
                }
            }
            label { "Realm " input name="realm" size="10" value=(f.realm.clone().unwrap_or_default()); }
            label { "Type " input name="type" size="10" value=(f.event_type.clone().unwrap_or_default()); }
            label { "Outcome "
                select name="success" {
                    option value="" { "any" }
                    option value="true" selected[f.success == Some(true)] { "ok" }
                    option value="false" selected[f.success == Some(false)] { "failed" }
                }
            }
            label { "From (UTC) " input type="datetime-local" name="since" value=(q.since.clone().unwrap_or_default()); }
            label { "To (UTC) " input type="datetime-local" name="until" value=(q.until.clone().unwrap_or_default()); }
            button type="submit" id="filter" { "Filter" }
        }
        @if let Some((low, high)) = page.searched {
            p.hint { "Event-log ids " (low) "–" (high) ", newest first." }
        }
        @if page.rows.is_empty() {
            p id="no-events" { "No events here." }
        } @else {
            div.scroll {
                table id="events" {
                    thead { tr { th { "id" } th { "when (UTC)" } th { "listener" } th { "source" } th { "type" } th { "realm" } th.num { "ms" } th { "outcome" } } }
                    tbody {
                        @for r in &page.rows {
                            tr class=(if r.success { "ok" } else { "failed" }) {
                                td { a href=(ctx.url(&format!("/ui/events/{}", r.id))) { (r.id) } }
                                td { (utc_text(r.created_at_ms)) }
                                td { (r.listener) }
                                td { (r.source) }
                                td { (r.event_type) }
                                td { (r.realm.as_deref().unwrap_or("–")) }
                                td.num { (format!("{:.1}", r.duration_us as f64 / 1000.0)) }
                                td {
                                    @if r.success { "ok" } @else {
                                        "failed"
                                        @if let Some(e) = &r.error { br; small { (shorten(e, 80)) } }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        p.pager {
            @if q.before.is_some() { a href=(newest) { "« Newest" } " " }
            @if let Some(older) = older { a href=(older) id="older" { "Older »" } }
        }
    };
    respond(
        StatusCode::OK,
        layout(&ctx.base, Some(ctx), "Events", "events", body),
    )
}

pub fn event(
    ctx: &Ctx,
    row: &EventLogRow,
    related: &[EventLogRow],
    inbox: Option<&InboxEntry>,
) -> HttpResponse {
    let body = html! {
        dl.detail {
            dt { "listener" } dd { a href=(ctx.url(&format!("/ui/listeners/{}", path_segment(&row.listener)))) { (row.listener) } }
            dt { "when (UTC)" } dd { (utc_text(row.created_at_ms)) }
            dt { "source" } dd { (row.source) }
            dt { "type" } dd { (row.event_type) }
            dt { "bot" } dd { (row.bot.as_deref().unwrap_or("–")) }
            dt { "realm" } dd { (row.realm.as_deref().unwrap_or("–")) (row.realm_id.map(|id| format!(" (id {id})")).unwrap_or_default()) }
            dt { "user id" } dd { (row.user_id.map_or("–".to_string(), |u| u.to_string())) }
            dt { "message id" } dd { (row.message_id.map_or("–".to_string(), |u| u.to_string())) }
            dt { "event id" } dd { (row.event_id.as_deref().unwrap_or("–")) }
            dt { "duration" } dd { (format!("{:.3} ms", row.duration_us as f64 / 1000.0)) }
            dt { "outcome" } dd id="outcome" { (if row.success { "ok" } else { "failed" }) }
        }
        @if let Some(error) = &row.error {
            h2 { "Error" }
            pre.error id="error" { (error) }
        }
        @if let Some(entry) = inbox {
            h2 { "In the inbox" }
            p { "Status " strong { (entry.status) } ", " (entry.attempts) " attempt(s), received " (utc_text(entry.received_at_ms)) "." }
            @if let Some(e) = &entry.last_error { pre.error { (e) } }
        }
        @if related.len() > 1 {
            h2 { "Runs of the same event" }
            div.scroll {
                table {
                    thead { tr { th { "id" } th { "listener" } th { "outcome" } th { "error" } } }
                    tbody {
                        @for r in related {
                            tr {
                                td { a href=(ctx.url(&format!("/ui/events/{}", r.id))) { (r.id) } }
                                td { (r.listener) }
                                td { (if r.success { "ok" } else { "failed" }) }
                                td { small { (r.error.as_deref().map(|e| shorten(e, 120)).unwrap_or_default()) } }
                            }
                        }
                    }
                }
            }
        }
        p { a href=(ctx.url("/ui/events")) { "« All events" } }
    };
    respond(
        StatusCode::OK,
        layout(
            &ctx.base,
            Some(ctx),
            &format!("Event {}", row.id),
            "events",
            body,
        ),
    )
}

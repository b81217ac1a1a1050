//! The dead-letters pages: events by status with a tab per status, one event with its
//! envelope (redacted), and the confirmations asked before a replay or a discard.

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use maud::{Markup, html};

use super::format::{path_segment, query_value, shorten};
use super::{csrf_field, layout, notice, respond};
use crate::clock::utc_text;
use crate::db::tables::inbox::{InboxEntry, InboxStatus};
use crate::http::dashboard::Ctx;
use crate::processing::dead_letters::{DeadLetter, MAX_REASON_CHARS};

pub fn dead_letters(
    ctx: &Ctx,
    status: InboxStatus,
    counts: &[(InboxStatus, i64)],
    rows: &[InboxEntry],
    done: Option<&str>,
) -> HttpResponse {
    let count = |s: InboxStatus| counts.iter().find(|(c, _)| *c == s).map_or(0, |(_, n)| *n);
    let actionable = InboxStatus::REPLAYABLE.contains(&status);
    let body = html! {
        (notice(done))
        nav.tabs {
            @for s in InboxStatus::LISTED {
                a href=(ctx.url(&format!("/ui/dead-letters?status={s}"))) class=[(s == status).then_some("current")] {
                    (s.as_str().replace('_', " ")) " (" (count(s)) ")"
                }
            }
        }
        @if rows.is_empty() {
            p id="no-dead-letters" { "None." }
        } @else {
            @if actionable {
                p {
                    a.button id="replay-all" href=(ctx.url(&format!("/ui/dead-letters/replay?status={status}&all=1"))) { "Replay all " (count(status)) "…" }
                    " "
                    a.button id="discard-all" href=(ctx.url(&format!("/ui/dead-letters/discard?status={status}&all=1"))) { "Discard all " (count(status)) "…" }
                }
            }
            div.scroll {
                table id="dead-letters" {
                    thead { tr { th { "event" } th { "received (UTC)" } th { "realm" } th { "type" } th.num { "attempts" } th { "last error" } th {} } }
                    tbody {
                        @for r in rows {
                            tr {
                                td { small { a.show href=(ctx.url(&format!("/ui/dead-letters/{}", path_segment(&r.event_id)))) { (r.event_id) } } }
                                td { (utc_text(r.received_at_ms)) }
                                td { (r.realm) }
                                td { (r.event_type) (r.op.as_deref().map(|op| format!(" / {op}")).unwrap_or_default()) }
                                td.num { (r.attempts) }
                                td { small { (r.last_error.as_deref().map(|e| shorten(e, 160)).unwrap_or_default()) } }
                                td {
                                    @if actionable { (action_links(ctx, status.as_str(), &r.event_id)) }
                                }
                            }
                        }
                    }
                }
            }
            @if count(status) > rows.len() as i64 {
                p.hint { "The newest " (rows.len()) " of " (count(status)) " are shown." }
            }
        }
    };
    respond(
        StatusCode::OK,
        layout(&ctx.base, Some(ctx), "Dead letters", "dead-letters", body),
    )
}

/// The replay and discard links of one event.
fn action_links(ctx: &Ctx, status: &str, id: &str) -> Markup {
    let id = query_value(id);
    html! {
        a.button.replay href=(ctx.url(&format!("/ui/dead-letters/replay?status={status}&id={id}"))) { "Replay…" }
        " "
        a.button.discard href=(ctx.url(&format!("/ui/dead-letters/discard?status={status}&id={id}"))) { "Discard…" }
    }
}

/// One event: where it stands, its work per listener, its envelope (redacted).
pub fn dead_letter(ctx: &Ctx, d: &DeadLetter) -> HttpResponse {
    let e = &d.entry;
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "–".to_string());
    let body = html! {
        dl.detail {
            dt { "status" } dd id="status" { (e.status) }
            dt { "type" } dd { (e.event_type) (e.op.as_deref().map(|op| format!(" / {op}")).unwrap_or_default()) }
            dt { "realm" } dd { (e.realm) " (id " (e.realm_id) ")" }
            dt { "user id" } dd { (or_dash(e.user_id.map(|u| u.to_string()))) }
            dt { "attempts" } dd { (e.attempts) }
            dt { "batch" } dd { small { (d.webhook_id) } }
            dt { "emitted (UTC)" } dd { (or_dash(d.emitted_at_ms.map(utc_text))) }
            dt { "received (UTC)" } dd { (utc_text(e.received_at_ms)) }
            dt { "last change (UTC)" } dd { (utc_text(e.updated_at_ms)) }
        }
        @if let Some(error) = &e.last_error {
            h2 { "Last error" }
            pre.error id="last-error" { (error) }
        }
        @if InboxStatus::REPLAYABLE.contains(&e.status) {
            p { (action_links(ctx, e.status.as_str(), &e.event_id)) }
        }
        h2 { "Listeners" }
        @if d.listeners.is_empty() {
            p.hint { "No work left for any listener." }
        } @else {
            div.scroll {
                table id="work" {
                    thead { tr { th { "listener" } th { "status" } th.num { "attempts" } th { "last error" } } }
                    tbody {
                        @for w in &d.listeners {
                            tr {
                                td { (w.listener) }
                                td { (w.status.as_str()) }
                                td.num { (w.attempts) }
                                td { small { (w.last_error.as_deref().map(|e| shorten(e, 200)).unwrap_or_default()) } }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Envelope" }
        @match &d.payload {
            Some(payload) => {
                p.hint { "Secret-named fields masked and URLs cut to their origin, as in the logs." }
                pre id="payload" { (serde_json::to_string_pretty(payload).unwrap_or_default()) }
            }
            None => p.hint id="payload" { "Erased." },
        }
        p { a href=(ctx.url(&format!("/ui/dead-letters?status={}", e.status))) { "« All " (e.status) " events" } }
    };
    respond(
        StatusCode::OK,
        layout(
            &ctx.base,
            Some(ctx),
            &format!("Event {}", e.event_id),
            "dead-letters",
            body,
        ),
    )
}

/// The action a confirmation page asks about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirm {
    Replay,
    Discard,
}

pub fn confirm(
    ctx: &Ctx,
    action: Confirm,
    status: &str,
    id: Option<&str>,
    count: i64,
) -> HttpResponse {
    let (verb, path, button, title) = match action {
        Confirm::Replay => (
            "replay",
            "/ui/dead-letters/replay",
            "confirm-replay",
            "Replay",
        ),
        Confirm::Discard => (
            "discard",
            "/ui/dead-letters/discard",
            "confirm-discard",
            "Discard",
        ),
    };
    let body = html! {
        @if count == 0 {
            p.notice { "Nothing to " (verb) ": no " (status) " event matches." }
        } @else {
            form.card method="post" action=(ctx.url(path)) {
                (csrf_field(ctx))
                input type="hidden" name="status" value=(status);
                @match id {
                    Some(id) => {
                        input type="hidden" name="id" value=(id);
                        @match action {
                            Confirm::Replay => p { "Queue event " code { (id) } " again with fresh retries?" },
                            Confirm::Discard => p { "Discard event " code { (id) } " for good? It is never processed again and its envelope is erased." },
                        }
                    }
                    None => {
                        input type="hidden" name="all" value="1";
                        @match action {
                            Confirm::Replay => p { "Queue all " strong { (count) } " " (status) " event(s) again with fresh retries?" },
                            Confirm::Discard => p { "Discard all " strong { (count) } " " (status) " event(s) for good? They are never processed again and their envelopes are erased." },
                        }
                    }
                }
                @if action == Confirm::Discard {
                    label for="reason" { "Reason (kept in the audit trail)" }
                    input id="reason" type="text" name="reason" required maxlength=(MAX_REASON_CHARS);
                }
                button type="submit" id=(button) { (title) }
                " "
                a href=(ctx.url(&format!("/ui/dead-letters?status={status}"))) { "Cancel" }
            }
        }
    };
    respond(
        StatusCode::OK,
        layout(&ctx.base, Some(ctx), title, "dead-letters", body),
    )
}

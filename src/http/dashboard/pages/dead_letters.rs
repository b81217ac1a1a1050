//! The dead-letters pages: events by replayable status with a tab per status, and the
//! confirmation asked before a replay.

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use maud::html;

use super::format::{query_value, shorten};
use super::{csrf_field, flash, layout, respond};
use crate::clock::utc_text;
use crate::db::tables::inbox::{InboxEntry, InboxStatus};
use crate::http::dashboard::Ctx;

pub fn dead_letters(
    ctx: &Ctx,
    status: InboxStatus,
    counts: &[(InboxStatus, i64)],
    rows: &[InboxEntry],
    pairs: &[(String, String)],
) -> HttpResponse {
    let count = |s: InboxStatus| counts.iter().find(|(c, _)| *c == s).map_or(0, |(_, n)| *n);
    let body = html! {
        (flash(pairs))
        nav.tabs {
            @for s in InboxStatus::REPLAYABLE {
                a href=(ctx.url(&format!("/ui/dead-letters?status={s}"))) class=[(s == status).then_some("current")] {
                    (s.as_str().replace('_', " ")) " (" (count(s)) ")"
                }
            }
        }
        @if rows.is_empty() {
            p id="no-dead-letters" { "None." }
        } @else {
            p {
                a.button id="replay-all" href=(ctx.url(&format!("/ui/dead-letters/replay?status={status}&all=1"))) { "Replay all " (count(status)) "…" }
            }
            div.scroll {
                table id="dead-letters" {
                    thead { tr { th { "event" } th { "received (UTC)" } th { "realm" } th { "type" } th.num { "attempts" } th { "last error" } th {} } }
                    tbody {
                        @for r in rows {
                            tr {
                                td { small { (r.event_id) } }
                                td { (utc_text(r.received_at_ms)) }
                                td { (r.realm) }
                                td { (r.event_type) (r.op.as_deref().map(|op| format!(" / {op}")).unwrap_or_default()) }
                                td.num { (r.attempts) }
                                td { small { (r.last_error.as_deref().map(|e| shorten(e, 160)).unwrap_or_default()) } }
                                td {
                                    a.button.replay href=(ctx.url(&format!("/ui/dead-letters/replay?status={status}&id={}", query_value(&r.event_id)))) { "Replay…" }
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

pub fn confirm_replay(ctx: &Ctx, status: &str, id: Option<&str>, count: i64) -> HttpResponse {
    let body = html! {
        @if count == 0 {
            p.notice { "Nothing to replay: no " (status) " event matches." }
        } @else {
            form.card method="post" action=(ctx.url("/ui/dead-letters/replay")) {
                (csrf_field(ctx))
                input type="hidden" name="status" value=(status);
                @match id {
                    Some(id) => {
                        input type="hidden" name="id" value=(id);
                        p { "Queue event " code { (id) } " (" (status) ") again with fresh retries?" }
                    }
                    None => {
                        input type="hidden" name="all" value="1";
                        p { "Queue all " strong { (count) } " " (status) " event(s) again with fresh retries?" }
                    }
                }
                button type="submit" id="confirm-replay" { "Replay" }
                " "
                a href=(ctx.url(&format!("/ui/dead-letters?status={status}"))) { "Cancel" }
            }
        }
    };
    respond(
        StatusCode::OK,
        layout(&ctx.base, Some(ctx), "Replay", "dead-letters", body),
    )
}

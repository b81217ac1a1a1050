//! The dashboard's pages as maud templates (HTML checked when the crate compiles; every value
//! is escaped unless it is our own SVG): this file holds the frame every page shares (headers,
//! layout, navigation, messages, the sign-in form), one file per page the rest, and [`format`]
//! the text helpers.

mod dead_letters;
mod events;
pub mod format;
mod listeners;
mod overview;

use actix_web::HttpResponse;
use actix_web::http::{StatusCode, header};
use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::Ctx;

pub use dead_letters::{Confirm, confirm, dead_letter, dead_letters};
pub use events::{EventsPage, EventsQuery, event, events};
pub use listeners::{ListenerLine, Refused, confirm_reset, listener, listeners};
pub use overview::{Overview, overview};

/// Everything the dashboard loads is its own: no inline style or script runs.
const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self' data:; \
                   form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

fn respond(status: StatusCode, page: Markup) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header((header::CONTENT_TYPE, "text/html; charset=utf-8"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::REFERRER_POLICY, "same-origin"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(page.into_string())
}

/// The frame of every page: head, navigation (with sign-out for a session), content.
fn layout(base: &str, ctx: Option<&Ctx>, title: &str, current: &str, body: Markup) -> Markup {
    let nav = [
        ("overview", "Overview", format!("{base}/")),
        ("listeners", "Listeners", format!("{base}/ui/listeners")),
        ("events", "Events", format!("{base}/ui/events")),
        (
            "dead-letters",
            "Dead letters",
            format!("{base}/ui/dead-letters"),
        ),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · zulip-listeners" }
                link rel="stylesheet" href=(format!("{base}/ui/style.css"));
            }
            body {
                header {
                    span.brand { "zulip-listeners" }
                    @if let Some(ctx) = ctx {
                        nav {
                            @for (key, label, href) in &nav {
                                a href=(href) class=[(*key == current).then_some("current")] { (label) }
                            }
                        }
                        span.who id="signed-in-as" { "signed in as " strong { (ctx.admin.name()) } }
                        @if let Some(csrf) = &ctx.csrf {
                            form.logout method="post" action=(format!("{base}/logout")) {
                                input type="hidden" name="csrf" value=(csrf);
                                button type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main id="main" data-page=(current) {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// A page with one message (errors, refusals).
pub fn message(status: StatusCode, base: &str, title: &str, text: &str) -> HttpResponse {
    let body = html! {
        p.notice { (text) }
        p { a href=(format!("{base}/")) { "Back to the overview" } }
    };
    respond(status, layout(base, None, title, "message", body))
}

pub fn login(base: &str, error: Option<&str>, status: StatusCode) -> HttpResponse {
    let body = html! {
        @if let Some(error) = error {
            p.error id="login-error" { (error) }
        }
        form.card method="post" action=(format!("{base}/login")) {
            label for="token" { "Admin token" }
            input id="token" type="password" name="token" autocomplete="current-password" required autofocus;
            button type="submit" id="sign-in" { "Sign in" }
        }
        p.hint { "The token of " code { "[admin] token" } " in the server's configuration." }
    };
    respond(status, layout(base, None, "Sign in", "login", body))
}

/// The notice a form left in the session for this page (what was done); never text from
/// the request, so a link cannot make the dashboard say anything.
fn notice(text: Option<&str>) -> Markup {
    html! {
        @if let Some(text) = text {
            p.ok id="flash" { (text) }
        }
    }
}

fn svg(chart: Option<String>) -> Markup {
    match chart {
        Some(svg) => html! { figure.chart { (PreEscaped(svg)) } },
        None => html! { p.notice { "The chart could not be drawn." } },
    }
}

fn csrf_field(ctx: &Ctx) -> Markup {
    html! {
        @if let Some(csrf) = &ctx.csrf {
            input type="hidden" name="csrf" value=(csrf);
        }
    }
}

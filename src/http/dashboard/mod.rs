//! The admin dashboard in the browser, at `/admin/` (overview) and `/admin/ui/…`, on the
//! main HTTP server and behind the token of the admin API.
//!
//! - **Sign-in.** `/admin/login` takes an admin token (compared in constant time; the right
//!   one always signs in, wrong ones are slowed down per client address) and sets a session
//!   cookie: a random token kept in memory for 12 hours with the name of the admin token,
//!   `HttpOnly`, `SameSite=Strict`, `Path=` the admin prefix, `Secure` when the request came
//!   over HTTPS (`X-Forwarded-Proto`). Every page also accepts the bearer token. Without
//!   either, a page answers 303 to the sign-in form and a form post 401, before any request
//!   body is read.
//! - **Forms.** Every POST carries the session's CSRF token in a hidden field (compared in
//!   constant time) and, when the browser sends `Origin`, must come from the same host.
//!   Changes go through the same code as the admin API (`admin::apply_change`, and the actions
//!   of `processing::dead_letters`, recorded with source `dashboard` and the admin's name) and
//!   answer 303 back to a page (post/redirect/get); the notice saying what was done is kept in
//!   the session for that page. No form is ever filled from the query string.
//! - **Path prefix.** Links are built from `admin.public_path` or, when that is unset, the
//!   proxy's `X-Forwarded-Prefix`, so the dashboard works under e.g. `/listeners/admin/`.
//! - **No script.** Pages are HTML rendered with maud (checked at compile time), one
//!   stylesheet of our own, charts as inline SVG drawn by [`charts`]; a strict
//!   `Content-Security-Policy` allows nothing else.
//!
//! This file holds the route table and what every page's route shares; `session` the
//! sign-in, sessions and form checks; `throttle` the failed sign-ins; one file per page its routes (`overview`, `listeners`,
//! `events`, `dead_letters`), and `pages` their HTML.

mod charts;
mod dead_letters;
mod events;
mod listeners;
mod overview;
mod pages;
mod session;
mod throttle;

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};

use super::{AppState, resource};
use crate::db::DbError;

pub use session::Dashboard;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
/// The statistics interval assumed while `listener_stats` has no row.
const DEFAULT_INTERVAL_MS: i64 = 300_000;

const STYLESHEET: &str = include_str!("style.css");

/// Registers the dashboard's routes; they come before the `/admin` scope of the JSON API.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/admin", [web::get().to(to_overview)]))
        .service(resource("/admin/", [web::get().to(overview::overview)]))
        .service(resource(
            "/admin/login",
            [
                web::get().to(session::login_form),
                web::post().to(session::login),
            ],
        ))
        .service(resource("/admin/logout", [web::post().to(session::logout)]))
        .service(
            web::scope("/admin/ui")
                .service(resource("/style.css", [web::get().to(stylesheet)]))
                .service(resource(
                    "/listeners",
                    [web::get().to(listeners::listeners)],
                ))
                .service(resource(
                    "/listeners/{name}",
                    [
                        web::get().to(listeners::listener),
                        web::post().to(listeners::change_listener),
                    ],
                ))
                .service(resource(
                    "/listeners/{name}/reset",
                    [
                        web::get().to(listeners::confirm_reset),
                        web::post().to(listeners::reset),
                    ],
                ))
                .service(resource("/events", [web::get().to(events::events)]))
                .service(resource("/events/{id}", [web::get().to(events::event)]))
                .service(resource(
                    "/dead-letters",
                    [web::get().to(dead_letters::dead_letters)],
                ))
                .service(resource(
                    "/dead-letters/replay",
                    [
                        web::get().to(dead_letters::confirm_replay),
                        web::post().to(dead_letters::replay),
                    ],
                ))
                .service(resource(
                    "/dead-letters/discard",
                    [
                        web::get().to(dead_letters::confirm_discard),
                        web::post().to(dead_letters::discard),
                    ],
                ))
                .service(resource(
                    "/dead-letters/{id}",
                    [web::get().to(dead_letters::dead_letter)],
                )),
        );
}

/// What a page needs to know about the request.
pub struct Ctx {
    /// `/admin` as the browser reaches it (with any proxy prefix).
    pub base: String,
    /// The session's CSRF token; `None` when the request came with the bearer token.
    pub csrf: Option<String>,
    session: Option<String>,
    /// The admin whose token the request or its session came with.
    pub admin: crate::http::Admin,
}

impl Ctx {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// Every listener's name, in the registry's order.
fn listener_names(state: &AppState) -> Vec<String> {
    state
        .registry
        .entries()
        .iter()
        .map(|e| e.name().to_string())
        .collect()
}

fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn query(req: &HttpRequest) -> Vec<(String, String)> {
    serde_urlencoded::from_str(req.query_string()).unwrap_or_default()
}

/// A non-empty query or form value.
fn given<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    field(pairs, name).map(str::trim).filter(|v| !v.is_empty())
}

fn see_other(location: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, location))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish()
}

fn db_failed(ctx: &Ctx, error: DbError) -> HttpResponse {
    tracing::warn!(%error, "dashboard: a database query failed");
    pages::message(
        StatusCode::SERVICE_UNAVAILABLE,
        &ctx.base,
        "Database unavailable",
        "The database did not answer; see the server log.",
    )
}

async fn to_overview(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    see_other(&format!("{}/", session::base_of(&req, &state.dashboard)))
}

async fn stylesheet() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/css; charset=utf-8"))
        .insert_header((header::CACHE_CONTROL, "public, max-age=3600"))
        .body(STYLESHEET)
}

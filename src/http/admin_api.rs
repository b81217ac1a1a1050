//! The admin API's JSON routes as one table ([`ROUTES`]), which registers them with actix and
//! which [`admin_routes`] lists, and its OpenAPI document ([`openapi`]), generated from the
//! handlers' `#[utoipa::path]` attributes and the types of [`super::api`] and served at
//! `GET /admin/openapi.json`. A test checks that the document lists exactly the table's routes.
//! The dashboard's HTML pages (`/admin/`, `/admin/ui/…`) are not part of this API.

use std::sync::OnceLock;

use actix_web::http::Method;
use actix_web::{HttpResponse, Route, web};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::api::{CommonErrors, SourceParam};
use super::{Admin, ApiError, admin, dead_letters, json_ok};

/// Where the admin API lives.
pub const PREFIX: &str = "/admin";

/// One admin route: method, path below [`PREFIX`], and its handler.
struct AdminRoute {
    method: Method,
    path: &'static str,
    handler: fn() -> Route,
}

/// Every admin API route, in the order actix matches them: a fixed segment before a
/// `{placeholder}` in the same place (`/dead-letters/replay` before `/dead-letters/{id}`).
static ROUTES: [AdminRoute; 14] = [
    route(Method::GET, "/listeners", || {
        web::route().to(admin::listeners)
    }),
    route(Method::GET, "/listeners/{name}", || {
        web::route().to(admin::listener)
    }),
    route(Method::PATCH, "/listeners/{name}", || {
        web::route().to(admin::patch_listener)
    }),
    route(Method::DELETE, "/listeners/{name}/overrides", || {
        web::route().to(admin::reset_listener)
    }),
    route(
        Method::DELETE,
        "/listeners/{name}/overrides/{field}",
        || web::route().to(admin::reset_listener_field),
    ),
    route(Method::POST, "/listeners/{name}/{action}", || {
        web::route().to(admin::set_listener)
    }),
    route(Method::GET, "/events", || web::route().to(admin::events)),
    route(Method::GET, "/inbox", || web::route().to(admin::inbox)),
    route(Method::GET, "/dead-letters", || {
        web::route().to(dead_letters::list)
    }),
    route(Method::POST, "/dead-letters/replay", || {
        web::route().to(dead_letters::replay)
    }),
    route(Method::POST, "/dead-letters/discard", || {
        web::route().to(dead_letters::discard)
    }),
    route(Method::GET, "/dead-letters/{id}", || {
        web::route().to(dead_letters::show)
    }),
    route(Method::GET, "/stats", || web::route().to(admin::stats)),
    route(Method::GET, "/openapi.json", || web::route().to(document)),
];

const fn route(method: Method, path: &'static str, handler: fn() -> Route) -> AdminRoute {
    AdminRoute {
        method,
        path,
        handler,
    }
}

/// The admin API's routes as `(method, full path)`, e.g. `("GET", "/admin/listeners")`, in
/// the spelling of the OpenAPI document's paths.
pub fn admin_routes() -> Vec<(String, String)> {
    ROUTES
        .iter()
        .map(|r| (r.method.to_string(), format!("{PREFIX}{}", r.path)))
        .collect()
}

/// The admin scope: every route of [`ROUTES`], one resource per path (its methods together,
/// 405 for any other), behind `gate`.
pub(super) fn register(cfg: &mut web::ServiceConfig) {
    let mut scope = web::scope(PREFIX).wrap_fn(super::admin_gate);
    let mut done: Vec<&str> = Vec::new();
    for first in &ROUTES {
        if done.contains(&first.path) {
            continue;
        }
        done.push(first.path);
        let routes = ROUTES
            .iter()
            .filter(|r| r.path == first.path)
            .map(|r| (r.handler)().method(r.method.clone()));
        scope = scope.service(super::resource(first.path, routes));
    }
    cfg.service(scope);
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "zulip-listeners admin API",
        description = "Listeners, the event log, forwarded events, dead letters and statistics \
            of a zulip-listeners server. Every route takes an admin token as \
            `Authorization: Bearer <token>`; the whole API answers 404 while no admin token \
            is configured. Errors are JSON `{\"error\": code, \"message\": text}`."
    ),
    paths(
        admin::listeners,
        admin::listener,
        admin::patch_listener,
        admin::reset_listener,
        admin::reset_listener_field,
        admin::set_listener,
        admin::events,
        admin::inbox,
        admin::stats,
        dead_letters::list,
        dead_letters::show,
        dead_letters::replay,
        dead_letters::discard,
        document,
    ),
    // Types only a query string names (`IntoParams` refers to them without adding them).
    components(schemas(SourceParam)),
    modifiers(&BearerToken),
    security(("admin_token" = [])),
    tags(
        (name = "listeners", description = "Listeners: show, change, enable, disable, reset"),
        (name = "events", description = "The event log, forwarded events, statistics"),
        (name = "dead letters", description = "Forwarded events not processed"),
        (name = "meta", description = "This document"),
    )
)]
struct AdminApiDoc;

/// Declares the admin token as the `admin_token` bearer scheme every route requires.
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The admin API's OpenAPI 3 document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    AdminApiDoc::openapi()
}

/// This OpenAPI document: every admin route with its parameters, bodies and answers.
#[utoipa::path(get, path = "/admin/openapi.json", tag = "meta",
    responses((status = 200, description = "The OpenAPI 3 document", body = Object,
        content_type = "application/json"), CommonErrors))]
pub async fn document(_admin: Admin) -> Result<HttpResponse, ApiError> {
    static TEXT: OnceLock<Result<String, String>> = OnceLock::new();
    let text = TEXT.get_or_init(|| openapi().to_json().map_err(|e| e.to_string()));
    match text {
        Ok(text) => Ok(json_ok(text.clone())),
        Err(e) => Err(ApiError::Internal(format!(
            "rendering the OpenAPI document: {e}"
        ))),
    }
}

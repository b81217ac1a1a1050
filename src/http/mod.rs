//! The HTTP surface: the state the routes share, the route table, and the middleware
//! every request passes (requests in flight counted, metrics by route, upgrades refused, the
//! framework's own error answers turned into JSON with `Content-Type: application/json;
//! charset=utf-8`) and the admin token gate. The routes themselves live in the submodules; the
//! admin API's are listed in one table ([`admin_api`]), typed by [`api`].

mod admin;
pub mod admin_api;
pub mod api;
pub mod body;
pub mod connections;
mod dashboard;
mod dead_letters;
mod error;
mod forwarder;
mod health;
pub mod identity;
mod outgoing;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::web;
use actix_web::{
    HttpMessage, HttpRequest, HttpResponse, ResponseError, http::Method, http::header,
};

pub use admin_api::{admin_routes, openapi};
pub use body::{BodyRules, read_body};
pub use dashboard::Dashboard;
pub use error::{ApiError, JSON_UTF8, json_error, json_ok, typed_json};
use health::HealthFacts;
pub use identity::{Admin, AdminTokens};

/// The log target of the one INFO line per answered outgoing webhook and accepted forwarder
/// batch (no message content): `level = "info,zulip_listeners::traffic=warn"` drops them.
pub const TRAFFIC_LOG: &str = "zulip_listeners::traffic";

use crate::db::Db;
use crate::listeners::Registry;
use crate::processing::inbox::Inbox;
use crate::processing::outgoing::OutgoingService;
use crate::verification::SigningKey;

/// What the routes share.
pub struct AppState {
    pub db: Db,
    /// Room for the database: `/health` says when new work is refused for lack of it.
    pub storage: Arc<crate::db::storage::Storage>,
    pub outgoing: Arc<OutgoingService>,
    pub max_body_bytes: usize,
    /// `None` when no forwarder secret is configured.
    pub forwarder: Option<ForwarderState>,
    pub registry: Arc<Registry>,
    /// `false` once shutdown has begun (`/readyz` answers 503).
    pub ready: Arc<AtomicBool>,
    /// The admin tokens by name; none: the admin API and the dashboard are off.
    pub admin: AdminTokens,
    /// Deadline and shared budget for reading request bodies.
    pub body: BodyRules,
    /// The last database ping of `/readyz` (when, and whether it succeeded), reused for a
    /// moment so that `/readyz` cannot be used to hammer the database.
    pub readiness: tokio::sync::Mutex<Option<(std::time::Instant, bool)>>,
    /// The database facts of the last `GET /health` (listener rows, dead and parked counts),
    /// reused for a moment like the readiness ping; `None` inside: the query failed.
    pub health_facts: tokio::sync::Mutex<Option<(std::time::Instant, Option<HealthFacts>)>>,
    /// Which enabled forwarder listeners no live process runs (`serve --listeners`).
    pub coverage: Arc<crate::processing::processes::Coverage>,
    /// Sessions and sign-in attempts of the dashboard (`/admin/`, `/admin/ui/…`).
    pub dashboard: Dashboard,
}

/// What the forwarder route needs.
pub struct ForwarderState {
    pub inbox: Arc<Inbox>,
    pub keys: Vec<SigningKey>,
    pub tolerance_secs: i64,
    pub max_body_bytes: usize,
    pub max_batch_events: usize,
}

/// Registers every route.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource(
        "/zulip/outgoing",
        [web::post().to(outgoing::by_body)],
    ))
    .service(resource("/", [web::post().to(outgoing::by_body)]))
    .service(resource(
        "/bots/{name}",
        [web::post().to(outgoing::by_path)],
    ))
    .service(resource(
        "/zulip/events",
        [web::post().to(forwarder::intake)],
    ))
    .service(resource("/healthz", [web::get().to(health::healthz)]))
    .service(resource("/health", [web::get().to(health::health)]))
    .service(resource("/readyz", [web::get().to(health::readyz)]))
    // The dashboard's pages come first: they take a session cookie or the bearer token.
    .configure(dashboard::routes)
    .configure(admin_api::register)
    .default_service(web::to(not_found));
}

/// A resource answering with `routes`, and 405 in JSON to any other method.
fn resource(path: &str, routes: impl IntoIterator<Item = actix_web::Route>) -> actix_web::Resource {
    routes
        .into_iter()
        .fold(web::resource(path), |resource, route| resource.route(route))
        .default_service(web::to(method_not_allowed))
}

/// Routes of the metrics server: `GET /metrics` in Prometheus' text format.
pub fn metrics_routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/metrics", [web::get().to(metrics)]))
        .default_service(web::to(not_found));
}

async fn metrics() -> HttpResponse {
    crate::telemetry::process::refresh();
    let text = crate::telemetry::prometheus()
        .map(|handle| handle.render())
        .unwrap_or_default();
    HttpResponse::Ok()
        .insert_header((
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        ))
        .body(text)
}

/// Requests being answered; a graceful shutdown waits for it to reach zero.
#[derive(Clone, Default)]
pub struct InFlight(Arc<std::sync::atomic::AtomicUsize>);

impl InFlight {
    pub fn count(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

struct InFlightGuard(InFlight);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        (self.0).0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The method as a metric label: the standard methods by name, anything else `other` (a
/// client can invent any number of method tokens).
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// Routes patterns that may appear as a metric label; anything else is `unmatched`.
fn route_label(pattern: Option<String>) -> String {
    pattern.unwrap_or_else(|| "unmatched".into())
}

/// No route speaks WebSocket (or any other protocol reached through `Upgrade`). Such a
/// request is refused at once; left to the routes, its body would be read until the client
/// closes (the framework treats it as an upgraded stream and ignores `Content-Length`).
fn refuse_upgrade(req: &ServiceRequest) -> Option<HttpResponse> {
    if !req.head().upgrade() {
        return None;
    }
    tracing::debug!(path = req.path(), "upgrade request refused");
    let mut response = json_error(
        actix_web::http::StatusCode::BAD_REQUEST,
        "upgrade_not_supported",
        "this server does not upgrade connections (no WebSocket or other protocol upgrade); \
         send the request without `Connection: Upgrade`",
    );
    response
        .head_mut()
        .set_connection_type(actix_web::http::ConnectionType::Close);
    Some(response)
}

/// Error answers the framework produced itself (an extractor refusing a query string, path
/// or body, …) get the same JSON shape as ours.
fn json_errors<B: MessageBody>(response: ServiceResponse<B>) -> ServiceResponse<EitherBody<B>> {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        // The dashboard's own error pages are HTML on purpose.
        .is_some_and(|v| v.starts_with("application/json") || v.starts_with("text/html"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response.map_into_left_body();
    }
    let message = match response.response().error() {
        Some(_) if status.is_server_error() => "internal error; see the server log".to_string(),
        Some(error) => error.to_string(),
        None => status.canonical_reason().unwrap_or("error").to_string(),
    };
    if status.is_client_error() {
        tracing::debug!(status = status.as_u16(), %message, "client error");
    }
    let mut json = json_error(status, error::code_for_status(status), &message);
    for name in [header::RETRY_AFTER, header::ALLOW, header::WWW_AUTHENTICATE] {
        if let Some(value) = response.headers().get(&name) {
            json.headers_mut().insert(name, value.clone());
        }
    }
    let (req, _) = response.into_parts();
    ServiceResponse::new(req, json).map_into_right_body()
}

/// Wraps the application: counts requests in flight, counts and times every request by
/// route pattern, method and status, refuses upgrade requests, and gives the framework's own
/// error answers the JSON shape. Use with `App::wrap_fn`.
pub fn observe<S, B>(
    req: ServiceRequest,
    service: &S,
    in_flight: &InFlight,
) -> impl std::future::Future<Output = Result<ServiceResponse<EitherBody<B>>, actix_web::Error>>
+ use<S, B>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    in_flight
        .0
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let guard = InFlightGuard(in_flight.clone());
    let started = std::time::Instant::now();
    let method = method_label(req.method());
    let call = match refuse_upgrade(&req) {
        Some(refusal) => Err(req.into_response(refusal)),
        None => Ok(service.call(req)),
    };
    async move {
        let _guard = guard;
        let response = match call {
            Ok(call) => json_errors(call.await?),
            Err(refused) => refused.map_into_right_body(),
        };
        let route = route_label(response.request().match_pattern());
        crate::telemetry::metric::http_request(
            &route,
            method,
            response.status().as_u16(),
            started.elapsed().as_secs_f64(),
        );
        Ok(response)
    }
}

/// Checks the admin bearer token before anything else of the request is looked at (its
/// body is never read without the token) and puts the [`Admin`] it names on the request.
fn admin_gate<S, B>(
    req: ServiceRequest,
    service: &S,
) -> impl std::future::Future<Output = Result<ServiceResponse<EitherBody<B>>, actix_web::Error>>
+ use<S, B>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let checked = match req.app_data::<web::Data<AppState>>() {
        Some(state) => admin::authorize(req.request(), state),
        None => Err(ApiError::Internal(
            "the application state is missing".into(),
        )),
    };
    let call = match checked {
        // The handlers take the admin as an argument ([`Admin`]).
        Ok(admin) => {
            req.extensions_mut().insert(admin);
            Ok(service.call(req))
        }
        Err(error) => {
            let mut response = error.error_response();
            // The body was not read: do not keep a connection whose next bytes are that body.
            response
                .head_mut()
                .set_connection_type(actix_web::http::ConnectionType::Close);
            Err(req.into_response(response))
        }
    };
    async move {
        match call {
            Ok(call) => Ok(call.await?.map_into_left_body()),
            Err(refused) => Ok(refused.map_into_right_body()),
        }
    }
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound(format!(
        "no route for {} {}",
        req.method(),
        req.path()
    )))
}

async fn method_not_allowed(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed(format!(
        "{} is not allowed on {}",
        req.method(),
        req.path()
    )))
}

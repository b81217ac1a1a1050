//! The HTTP surface: routes, request-body limits, and turning every answer (errors included)
//! into JSON with `Content-Type: application/json; charset=utf-8`.

mod admin;
mod error;
mod forwarder;
mod outgoing;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use actix_web::web::{self, Bytes, BytesMut};
use actix_web::{HttpRequest, HttpResponse, http::header};
use futures_util::StreamExt;

pub use error::{ApiError, JSON_UTF8, json_ok};

use crate::config::Secret;
use crate::handlers::Registry;
use crate::processing::inbox::Inbox;
use crate::processing::outgoing::OutgoingService;
use crate::verification::SigningKey;

/// What request handlers share.
pub struct AppState {
    pub outgoing: Arc<OutgoingService>,
    pub max_body_bytes: usize,
    /// `None` when no forwarder secret is configured.
    pub forwarder: Option<ForwarderState>,
    pub registry: Arc<Registry>,
    /// `false` once shutdown has begun (`/readyz` answers 503).
    pub ready: Arc<AtomicBool>,
    /// `None`: the admin API is off.
    pub admin_token: Option<Secret>,
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
    cfg.service(
        web::resource("/zulip/outgoing")
            .route(web::post().to(outgoing::by_body))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/")
            .route(web::post().to(outgoing::by_body))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/bots/{name}")
            .route(web::post().to(outgoing::by_path))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/zulip/events")
            .route(web::post().to(forwarder::intake))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/healthz")
            .route(web::get().to(admin::healthz))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/readyz")
            .route(web::get().to(admin::readyz))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::scope("/admin")
            .service(
                web::resource("/handlers")
                    .route(web::get().to(admin::handlers))
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::resource("/handlers/{name}/{action}")
                    .route(web::post().to(admin::set_handler))
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::resource("/events")
                    .route(web::get().to(admin::events))
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::resource("/dead-letters")
                    .route(web::get().to(admin::dead_letters))
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::resource("/dead-letters/replay")
                    .route(web::post().to(admin::replay))
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::resource("/stats")
                    .route(web::get().to(admin::stats))
                    .default_service(web::to(method_not_allowed)),
            ),
    )
    .default_service(web::to(not_found));
}

/// Routes of the metrics listener: `GET /metrics` in Prometheus' text format.
pub fn metrics_routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/metrics")
            .route(web::get().to(metrics))
            .default_service(web::to(method_not_allowed)),
    )
    .default_service(web::to(not_found));
}

async fn metrics() -> HttpResponse {
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

/// Wraps the application: counts requests in flight, and counts and times every request by
/// route pattern, method and status. Use with `App::wrap_fn`.
pub fn observe<S, B>(
    req: actix_web::dev::ServiceRequest,
    service: &S,
    in_flight: &InFlight,
) -> impl std::future::Future<Output = Result<actix_web::dev::ServiceResponse<B>, actix_web::Error>>
+ use<S, B>
where
    S: actix_web::dev::Service<
            actix_web::dev::ServiceRequest,
            Response = actix_web::dev::ServiceResponse<B>,
            Error = actix_web::Error,
        >,
{
    in_flight
        .0
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let guard = InFlightGuard(in_flight.clone());
    let started = std::time::Instant::now();
    let method = req.method().to_string();
    let call = service.call(req);
    async move {
        let _guard = guard;
        let response = call.await?;
        let route = response
            .request()
            .match_pattern()
            .unwrap_or_else(|| "unmatched".into());
        crate::telemetry::metric::http_request(
            &route,
            &method,
            response.status().as_u16(),
            started.elapsed().as_secs_f64(),
        );
        Ok(response)
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

/// Reads the whole body, refusing more than `limit` bytes (413) before buffering it.
pub async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let mut body = BytesMut::with_capacity(declared.unwrap_or(1024).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::BadRequest(format!("the request body could not be read: {e}"))
        })?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

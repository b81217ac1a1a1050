//! The HTTP surface: routes, request-body limits, and turning every answer (errors included)
//! into JSON with `Content-Type: application/json; charset=utf-8`.

mod error;
mod forwarder;
mod outgoing;

use std::sync::Arc;

use actix_web::web::{self, Bytes, BytesMut};
use actix_web::{HttpRequest, HttpResponse, http::header};
use futures_util::StreamExt;

pub use error::{ApiError, JSON_UTF8, json_ok};

use crate::processing::inbox::Inbox;
use crate::processing::outgoing::OutgoingService;
use crate::verification::SigningKey;

/// What request handlers share.
pub struct AppState {
    pub outgoing: Arc<OutgoingService>,
    pub max_body_bytes: usize,
    /// `None` when no forwarder secret is configured.
    pub forwarder: Option<ForwarderState>,
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
            .route(web::get().to(healthz))
            .default_service(web::to(method_not_allowed)),
    )
    .default_service(web::to(not_found));
}

async fn healthz() -> HttpResponse {
    json_ok(r#"{"status":"ok"}"#)
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

//! The HTTP layer's errors and how they are rendered: a status code and a JSON body
//! `{"error": "<code>", "message": "<what is wrong>"}` ([`ErrorBody`]), and the conversions
//! of the domain's errors into them.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};

use super::api::ErrorBody;
use crate::db::DbError;
use crate::listeners::changes::{ChangeError, FieldError};
use crate::processing::dead_letters::DeadLetterError;

pub const JSON_UTF8: &str = "application/json; charset=utf-8";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    /// One field of the request is not acceptable; the body names it in `field`.
    #[error("`{field}`: {problem}")]
    InvalidField { field: String, problem: String },
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    NotFound(String),
    /// What the request names is in a state that does not allow it (a dead-letter action on an
    /// event that is not a dead letter); the body names the state in `status`.
    #[error("{message}")]
    WrongStatus { message: String, status: String },
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("the request body is larger than the {limit} bytes allowed")]
    PayloadTooLarge { limit: usize },
    #[error("{0}")]
    RequestTimeout(String),
    #[error("{0}")]
    TooManyEvents(String),
    #[error("{0}")]
    Signature(#[from] crate::verification::SignatureError),
    #[error("{0}")]
    TooManyRequests(String),
    #[error("{0}")]
    Unavailable(String),
    /// No room in the database for new work (a full disk): 503 `storage_full`.
    #[error("{0}")]
    StorageFull(String),
    #[error("{0}")]
    Internal(String),
}

/// A request body that cannot be read as an outgoing webhook is the client's mistake.
impl From<crate::events::PayloadError> for ApiError {
    fn from(e: crate::events::PayloadError) -> Self {
        ApiError::BadRequest(e.0)
    }
}

/// The database failing is not the client's mistake: 503, to be tried again.
impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        ApiError::Unavailable(format!("database: {e}"))
    }
}

/// One field of the request is not acceptable: 400 naming it.
impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError::InvalidField {
            field: e.field,
            problem: e.problem,
        }
    }
}

/// An operator's error in a listener change: 404 for an unknown listener or a field that is
/// not overridden, 400 naming the field at fault, 503 for a concurrent change.
impl From<ChangeError> for ApiError {
    fn from(error: ChangeError) -> Self {
        match error {
            ChangeError::NotFound(name) => {
                ApiError::NotFound(format!("no listener named `{name}`"))
            }
            ChangeError::Invalid(e) => e.into(),
            e @ ChangeError::NotOverridden { .. } => ApiError::NotFound(e.to_string()),
            e @ ChangeError::Conflict(_) => ApiError::Unavailable(e.to_string()),
            ChangeError::Database(e) => e.into(),
        }
    }
}

/// An error of a dead-letter action: 404 for an unknown event, 409 naming the status of one
/// that is not a dead letter, 400 naming the field at fault.
impl From<DeadLetterError> for ApiError {
    fn from(e: DeadLetterError) -> Self {
        match e {
            DeadLetterError::NotFound(_) => ApiError::NotFound(e.to_string()),
            DeadLetterError::NotADeadLetter { status, .. } => ApiError::WrongStatus {
                message: e.to_string(),
                status: status.to_string(),
            },
            DeadLetterError::Invalid(field) => field.into(),
            DeadLetterError::Database(e) => e.into(),
        }
    }
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "malformed_request",
            ApiError::InvalidField { .. } => "invalid_field",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::NotFound(_) => "not_found",
            ApiError::WrongStatus { .. } => "wrong_status",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::RequestTimeout(_) => "request_timeout",
            ApiError::TooManyEvents(_) => "too_many_events",
            ApiError::Signature(e) => e.code(),
            ApiError::TooManyRequests(_) => "over_capacity",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::StorageFull(_) => "storage_full",
            ApiError::Internal(_) => "internal_error",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) | ApiError::InvalidField { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::WrongStatus { .. } => StatusCode::CONFLICT,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge { .. } | ApiError::TooManyEvents(_) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Signature(_) => StatusCode::UNAUTHORIZED,
            ApiError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) | ApiError::StorageFull(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let body = ErrorBody {
            error: self.code().to_string(),
            field: match self {
                ApiError::InvalidField { field, .. } => Some(field.clone()),
                _ => None,
            },
            message: self.to_string(),
            status: match self {
                ApiError::WrongStatus { status, .. } => Some(status.clone()),
                _ => None,
            },
        };
        let mut response = HttpResponse::build(self.status_code());
        response.insert_header((header::CONTENT_TYPE, HeaderValue::from_static(JSON_UTF8)));
        match self {
            ApiError::Unavailable(_) | ApiError::StorageFull(_) => {
                response.insert_header((header::RETRY_AFTER, HeaderValue::from_static("5")));
            }
            ApiError::TooManyRequests(_) => {
                response.insert_header((header::RETRY_AFTER, HeaderValue::from_static("30")));
            }
            _ => {}
        }
        response.body(error_text(&body))
    }
}

/// The error body as text (it has only strings: it always serializes).
fn error_text(body: &ErrorBody) -> String {
    serde_json::to_string(body).unwrap_or_default()
}

/// A 200 answer with `body` as JSON, its keys in alphabetical order at every level (it is
/// serialized through a [`serde_json::Value`]), as the admin API has always answered.
pub fn typed_json<T: serde::Serialize>(body: &T) -> Result<HttpResponse, ApiError> {
    let value = serde_json::to_value(body)
        .map_err(|e| ApiError::Internal(format!("rendering the answer: {e}")))?;
    Ok(json_ok(value.to_string()))
}

/// A 200 answer with a JSON body.
pub fn json_ok<B: actix_web::body::MessageBody + 'static>(body: B) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, HeaderValue::from_static(JSON_UTF8)))
        .body(body)
}

/// The error code of the JSON body for a status that did not come from an [`ApiError`]
/// (the framework's own answers, e.g. an extractor refusing a query string).
pub fn code_for_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "malformed_request",
        401 => "unauthorized",
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "request_timeout",
        411 => "length_required",
        413 => "payload_too_large",
        414 => "uri_too_long",
        415 => "unsupported_media_type",
        429 => "over_capacity",
        503 => "unavailable",
        s if s >= 500 => "internal_error",
        _ => "bad_request",
    }
}

/// A JSON error answer `{"error": code, "message": message}`.
pub fn json_error(status: StatusCode, code: &str, message: &str) -> HttpResponse {
    let body = ErrorBody {
        error: code.to_string(),
        field: None,
        message: message.to_string(),
        status: None,
    };
    HttpResponse::build(status)
        .insert_header((header::CONTENT_TYPE, HeaderValue::from_static(JSON_UTF8)))
        .body(error_text(&body))
}

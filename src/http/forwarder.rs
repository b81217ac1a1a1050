//! `POST /zulip/events`: signed batches from the Django forwarder.
//!
//! The signature is checked on the raw bytes before anything is parsed; the answer is 200
//! only once every event of the batch is committed to the inbox. A temporary problem on our
//! side is a 503 with `Retry-After`, which the forwarder retries; only the sender's mistakes
//! are 4xx, which the forwarder sets aside.

use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::{HttpRequest, HttpResponse, web};
use tracing::Instrument;

use super::{ApiError, AppState, json_ok, read_body};
use crate::events::forwarded::{BatchError, parse_batch};
use crate::processing::inbox::IntakeError;
use crate::verification::{SignedHeaders, verify};

pub async fn intake(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let Some(forwarder) = &state.forwarder else {
        return Err(ApiError::NotFound(
            "the forwarder intake is off: set [forwarder] secrets to turn it on".into(),
        ));
    };
    let body = read_body(&req, payload, forwarder.max_body_bytes, &state.body).await?;
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let headers = SignedHeaders {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let webhook_id = verify(
        &forwarder.keys,
        headers,
        &body,
        now,
        forwarder.tolerance_secs,
    )
    .inspect_err(|e| tracing::warn!(reason = %e, "forwarder batch refused"))?;
    let events = parse_batch(&body, forwarder.max_batch_events).map_err(|e| match e {
        BatchError::TooMany(..) => ApiError::TooManyEvents(e.to_string()),
        BatchError::Malformed(message) => ApiError::BadRequest(message),
    })?;
    check_routing_header(&req, &events)?;
    let shed: u64 = events.iter().map(|e| e.shed_before).sum();
    let shed_realm = events
        .iter()
        .find(|e| e.shed_before > 0)
        .map(|e| e.realm_id);
    let count = events.len();
    let span = tracing::info_span!("forwarder_batch", webhook_id, events = count);
    let summary = forwarder
        .inbox
        .accept(webhook_id, events)
        .instrument(span)
        .await
        .map_err(|e| match e {
            IntakeError::Busy(why) => {
                tracing::warn!(reason = %why, "batch refused: the server is over capacity");
                ApiError::TooManyRequests(format!(
                    "over capacity, send the batch again later: {why}"
                ))
            }
            IntakeError::NoRoom(why) => {
                tracing::warn!(reason = %why, "batch refused: no room in the database");
                ApiError::StorageFull(format!(
                    "no room to store the batch; send it again later: {why}"
                ))
            }
            IntakeError::Failed(why) => {
                tracing::error!(error = %why, "batch not stored");
                ApiError::Unavailable(format!(
                    "the batch could not be stored; send it again: {why}"
                ))
            }
        })?;
    crate::telemetry::metric::forwarder_batch_accepted();
    if summary.duplicate_batch {
        tracing::info!("batch already accepted (webhook-id seen before)");
    } else {
        tracing::info!(
            target: super::TRAFFIC_LOG,
            webhook_id,
            events = count,
            accepted = summary.accepted,
            duplicates = summary.duplicates,
            expired = summary.expired,
            filtered = summary.filtered,
            rate_limited = summary.rate_limited,
            "forwarder batch accepted"
        );
    }
    if !summary.duplicate_batch && shed > 0 {
        // Counted once: a re-sent batch (same webhook-id) is not counted again.
        crate::telemetry::metric::forwarder_shed(shed);
        tracing::warn!(
            shed,
            realm = shed_realm,
            "the forwarder shed events before this batch (its queue was full): they are lost"
        );
    }
    let body = serde_json::to_string(&summary)
        .map_err(|e| ApiError::Internal(format!("cannot render the answer: {e}")))?;
    Ok(json_ok(body))
}

/// The forwarder names the realm of a batch in `X-Zulip-Listeners-Realm`, so that a proxy in
/// front of several instances can send each realm to the same instance (and so to the same
/// rate limiter). The header is not signed; the signed body is checked against it.
pub const ROUTING_HEADER: &str = "x-zulip-listeners-realm";

fn check_routing_header(
    req: &HttpRequest,
    events: &[crate::events::forwarded::ForwardedEvent],
) -> Result<(), ApiError> {
    let Some(value) = req.headers().get(ROUTING_HEADER) else {
        return Ok(());
    };
    let realm: i64 = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| {
            ApiError::BadRequest(format!("header `{ROUTING_HEADER}` must be a realm id"))
        })?;
    match events.iter().position(|e| e.realm_id != realm) {
        None => Ok(()),
        Some(i) => Err(ApiError::BadRequest(format!(
            "events[{i}] belongs to realm {}, but header `{ROUTING_HEADER}` says {realm}",
            events[i].realm_id
        ))),
    }
}

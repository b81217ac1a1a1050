//! Reading request bodies from clients that may be hostile.
//!
//! Memory follows what actually arrives, never what a client declares in `Content-Length`;
//! the whole body must arrive within `server.client_timeout` (408 otherwise); and all bodies
//! being read at once share one budget, `server.unverified_body_bytes` (503 with
//! `Retry-After` beyond it), so that many slow or idle connections cannot add up to more
//! than a fixed amount of memory before their requests are authenticated.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use actix_web::web::{self, Bytes, BytesMut};
use actix_web::{HttpRequest, http::header};
use futures_util::StreamExt;

use super::ApiError;
use crate::telemetry::metric;

/// The most reserved up front for a body, whatever its declared length.
const INITIAL_CAPACITY: usize = 16 * 1024;

/// How bodies are read: the deadline and the shared budget.
#[derive(Clone)]
pub struct BodyRules {
    pub deadline: Duration,
    pub budget: Arc<BodyBudget>,
}

impl BodyRules {
    pub fn new(deadline: Duration, budget_bytes: usize) -> BodyRules {
        BodyRules {
            deadline,
            budget: Arc::new(BodyBudget::new(budget_bytes)),
        }
    }
}

/// Bytes of bodies being read, over every request, against a fixed limit.
pub struct BodyBudget {
    limit: usize,
    in_use: AtomicUsize,
}

impl BodyBudget {
    pub fn new(limit: usize) -> BodyBudget {
        BodyBudget {
            limit,
            in_use: AtomicUsize::new(0),
        }
    }

    /// Bytes currently held by bodies being read.
    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Relaxed)
    }

    fn try_take(&self, n: usize) -> bool {
        self.in_use
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }

    fn give_back(&self, n: usize) {
        self.in_use.fetch_sub(n, Ordering::AcqRel);
    }
}

/// What one body holds of the budget; given back when the read ends, however it ends.
struct Reservation<'a> {
    budget: &'a BodyBudget,
    held: usize,
}

impl Reservation<'_> {
    fn grow(&mut self, n: usize) -> bool {
        if self.budget.try_take(n) {
            self.held += n;
            true
        } else {
            false
        }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.budget.give_back(self.held);
    }
}

/// Reads the whole body: at most `limit` bytes (413), within the deadline (408), within the
/// shared budget (503).
pub async fn read_body(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
    rules: &BodyRules,
) -> Result<Bytes, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let deadline = rules.deadline;
    match tokio::time::timeout(deadline, read_within(payload, declared, limit, rules)).await {
        Ok(result) => result,
        Err(_) => {
            metric::body_refused("timeout");
            tracing::info!(
                path = req.path(),
                "request body not received within server.client_timeout; answered 408"
            );
            Err(ApiError::RequestTimeout(format!(
                "the request body did not arrive within {} (server.client_timeout)",
                humantime::format_duration(deadline)
            )))
        }
    }
}

async fn read_within(
    mut payload: web::Payload,
    declared: Option<usize>,
    limit: usize,
    rules: &BodyRules,
) -> Result<Bytes, ApiError> {
    let mut reservation = Reservation {
        budget: &rules.budget,
        held: 0,
    };
    let mut body = BytesMut::with_capacity(declared.unwrap_or(1024).min(INITIAL_CAPACITY));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::BadRequest(format!("the request body could not be read: {e}"))
        })?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        if !reservation.grow(chunk.len()) {
            metric::body_refused("budget");
            tracing::warn!(
                in_use = rules.budget.in_use(),
                "too many request bodies being read at once (server.unverified_body_bytes); answered 503"
            );
            return Err(ApiError::Unavailable(
                "the server is reading too many request bodies at once \
                 (server.unverified_body_bytes); send it again later"
                    .into(),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_shared_and_given_back() {
        let budget = BodyBudget::new(100);
        {
            let mut a = Reservation {
                budget: &budget,
                held: 0,
            };
            assert!(a.grow(60));
            let mut b = Reservation {
                budget: &budget,
                held: 0,
            };
            assert!(!b.grow(41), "over the shared limit");
            assert!(b.grow(40));
            assert_eq!(budget.in_use(), 100);
        }
        assert_eq!(budget.in_use(), 0, "every reservation is given back");
        assert!(!budget.try_take(usize::MAX), "no overflow");
    }
}

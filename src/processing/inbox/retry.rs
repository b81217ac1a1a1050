//! What one attempt at an event comes to ([`AttemptResult`]): done, pending again after an
//! exponential back-off, parked behind a paused listener, or dead once `forwarder.max_retries`
//! is used up. [`decide`] and [`backoff`] are pure; [`Inbox::judge`] applies them to a run.

use std::time::Duration;

use super::Inbox;
use crate::clock::{millis, now_ms};
use crate::db::attempt::AttemptResult;
use crate::db::tables;
use crate::processing::Outcome;

/// Longest back-off between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

impl Inbox {
    /// What an attempt comes to. Effects are kept only when the event is done: a failed or
    /// deferred event runs all its listeners again, and applying the effects of the ones that
    /// succeeded now would apply them twice. Records of deliveries already made (alerts) are
    /// kept in every case: the retry skips them.
    pub(super) fn judge(
        &self,
        event_id: &str,
        outcome: &mut Outcome,
        attempts_before: i32,
    ) -> AttemptResult {
        if outcome.first_error.is_some() || outcome.deferred.is_some() {
            // Deliveries already made stay recorded, so that the retry does not repeat them.
            outcome
                .processed
                .effects
                .retain(crate::handlers::Effect::records_delivery);
        }
        self.decide_for(
            event_id,
            outcome.first_error.take(),
            outcome
                .deferred
                .as_ref()
                .map(|(name, at)| (name.as_str(), *at)),
            attempts_before,
        )
    }

    /// What a failure (`error`), or a listener that is paused (`deferred`), comes to after
    /// `attempts_before` attempts.
    pub(super) fn decide_for(
        &self,
        event_id: &str,
        error: Option<String>,
        deferred: Option<(&str, i64)>,
        attempts_before: i32,
    ) -> AttemptResult {
        let result = decide(
            error,
            deferred,
            attempts_before,
            self.config.max_retries,
            self.config.retry_delay,
            now_ms(),
        );
        if let AttemptResult::Dead { error } = &result {
            tracing::error!(
                event_id,
                attempts = attempts_before.saturating_add(1),
                %error,
                "event failed too often; moved to dead letters"
            );
        }
        result
    }
}

/// What a failure (`error`), or a listener that is paused until some time (`deferred`),
/// comes to after `attempts_before` attempts, with at most `max_retries` and back-off from
/// `retry_delay`.
fn decide(
    error: Option<String>,
    deferred: Option<(&str, i64)>,
    attempts_before: i32,
    max_retries: u32,
    retry_delay: Duration,
    now_ms: i64,
) -> AttemptResult {
    let Some(error) = error else {
        if let Some((listener, until_ms)) = deferred {
            // A listener it needs is paused by its circuit breaker: keep the work pending
            // until the breaker lets a trial run through, without counting an attempt.
            return AttemptResult::Parked {
                until_ms,
                reason: tables::inbox_work::parked_reason(listener),
            };
        }
        return AttemptResult::Done;
    };
    let attempts = attempts_before.saturating_add(1);
    if u32::try_from(attempts).unwrap_or(u32::MAX) > max_retries {
        AttemptResult::Dead { error }
    } else {
        AttemptResult::RetryAt {
            at_ms: now_ms + millis(backoff(retry_delay, attempts)),
            error,
        }
    }
}

/// `retry_delay × 2^(attempts − 1)`, at most an hour.
fn backoff(base: Duration, attempts: i32) -> Duration {
    let exponent = u32::try_from(attempts.saturating_sub(1))
        .unwrap_or(0)
        .min(20);
    base.saturating_mul(1u32 << exponent).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let base = Duration::from_secs(2);
        assert_eq!(backoff(base, 1), Duration::from_secs(2));
        assert_eq!(backoff(base, 2), Duration::from_secs(4));
        assert_eq!(backoff(base, 5), Duration::from_secs(32));
        assert_eq!(backoff(base, 40), MAX_BACKOFF);
    }

    #[test]
    fn a_failure_is_retried_with_back_off_then_dead() {
        let base = Duration::from_secs(2);
        let error = || Some("boom".to_string());
        assert_eq!(
            decide(error(), None, 0, 2, base, 1_000),
            AttemptResult::RetryAt {
                at_ms: 3_000,
                error: "boom".into()
            }
        );
        assert_eq!(
            decide(error(), None, 1, 2, base, 1_000),
            AttemptResult::RetryAt {
                at_ms: 5_000,
                error: "boom".into()
            }
        );
        assert_eq!(
            decide(error(), None, 2, 2, base, 1_000),
            AttemptResult::Dead {
                error: "boom".into()
            }
        );
    }

    #[test]
    fn a_paused_listener_parks_without_an_attempt_and_success_is_done() {
        let base = Duration::from_secs(2);
        let parked = decide(None, Some(("echo", 9_000)), 3, 2, base, 1_000);
        assert!(matches!(
            parked,
            AttemptResult::Parked {
                until_ms: 9_000,
                ..
            }
        ));
        assert!(!parked.counts_attempt());
        assert_eq!(decide(None, None, 5, 2, base, 1_000), AttemptResult::Done);
    }
}

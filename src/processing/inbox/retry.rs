//! What one attempt at an event comes to: done, pending again after a back-off (or parked
//! behind a paused listener), or dead once `max_retries` is used up.

use std::time::Duration;

use super::Inbox;
use crate::clock::{millis, now_ms};
use crate::db::store;
use crate::processing::Outcome;

/// Longest back-off between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// What one attempt at an event comes to.
pub(super) enum Verdict {
    Done,
    /// Pending again, due at `retry_at_ms`; `counts_attempt` is false when the event was
    /// deferred (a listener it needs is paused) without being tried.
    Retry {
        retry_at_ms: i64,
        error: String,
        counts_attempt: bool,
    },
    Dead {
        error: String,
    },
}

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
    ) -> Verdict {
        if outcome.first_error.is_some() || outcome.deferred.is_some() {
            // Deliveries already made stay recorded, so that the retry does not repeat them.
            outcome
                .processed
                .effects
                .retain(crate::handlers::Effect::records_delivery);
        }
        self.verdict(
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
    pub(super) fn verdict(
        &self,
        event_id: &str,
        error: Option<String>,
        deferred: Option<(&str, i64)>,
        attempts_before: i32,
    ) -> Verdict {
        let Some(error) = error else {
            if let Some((listener, until_ms)) = deferred {
                // A listener it needs is paused by its circuit breaker: keep the work pending
                // until the breaker lets a trial run through, without counting an attempt.
                return Verdict::Retry {
                    retry_at_ms: until_ms,
                    error: store::parked_reason(listener),
                    counts_attempt: false,
                };
            }
            return Verdict::Done;
        };
        let attempts = attempts_before.saturating_add(1);
        if u32::try_from(attempts).unwrap_or(u32::MAX) > self.config.max_retries {
            tracing::error!(
                event_id,
                attempts,
                %error,
                "event failed too often; moved to dead letters"
            );
            Verdict::Dead { error }
        } else {
            Verdict::Retry {
                retry_at_ms: now_ms() + millis(backoff(self.config.retry_delay, attempts)),
                error,
                counts_attempt: true,
            }
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
}

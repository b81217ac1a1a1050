//! What one listener's attempt at a forwarded event comes to ([`AttemptResult`]): the one
//! type the inbox workers decide (`processing::inbox`) and the writer records
//! (`inbox_work` status, attempts, due time and error).

use super::tables::inbox_work::{WorkStatus, WorkThen};

/// What one listener's attempt at a forwarded event comes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    /// The listener ran it: its work is finished.
    Done,
    /// Failed; pending again, due at `at_ms`.
    RetryAt { at_ms: i64, error: String },
    /// Not tried: the listener is paused (circuit breaker open, or disabled after failures).
    /// Parked until `until_ms`, without counting an attempt.
    Parked { until_ms: i64, reason: String },
    /// Failed with its retries used up: a dead letter.
    Dead { error: String },
    /// Skipped over the listener's own quota: set aside as `rate_limited`, replayable, not
    /// retried.
    SetAside { reason: String },
}

impl AttemptResult {
    /// Whether the attempt counts against `forwarder.max_retries` (a parked one was not tried).
    pub fn counts_attempt(&self) -> bool {
        !matches!(self, AttemptResult::Parked { .. })
    }

    /// Why the work is not finished; `None` when it is done.
    pub fn error(&self) -> Option<&str> {
        match self {
            AttemptResult::Done => None,
            AttemptResult::RetryAt { error, .. } | AttemptResult::Dead { error } => Some(error),
            AttemptResult::Parked { reason, .. } | AttemptResult::SetAside { reason } => {
                Some(reason)
            }
        }
    }

    /// When the work is due again, if it is to run again by itself.
    pub fn due_at_ms(&self) -> Option<i64> {
        match self {
            AttemptResult::RetryAt { at_ms, .. } => Some(*at_ms),
            AttemptResult::Parked { until_ms, .. } => Some(*until_ms),
            AttemptResult::Done | AttemptResult::Dead { .. } | AttemptResult::SetAside { .. } => {
                None
            }
        }
    }

    /// The `inbox_work` status the attempt leaves the work in; `None` when it is done (the
    /// row is deleted).
    pub fn work_status(&self) -> Option<WorkStatus> {
        match self {
            AttemptResult::Done => None,
            AttemptResult::RetryAt { .. } => Some(WorkStatus::Pending),
            AttemptResult::Parked { .. } => Some(WorkStatus::Parked),
            AttemptResult::Dead { .. } => Some(WorkStatus::Dead),
            AttemptResult::SetAside { .. } => Some(WorkStatus::RateLimited),
        }
    }

    /// What becomes of unfinished work in the store; `None` when it is done.
    pub fn then(&self) -> Option<WorkThen> {
        match self {
            AttemptResult::Done => None,
            AttemptResult::RetryAt { at_ms: at, .. }
            | AttemptResult::Parked { until_ms: at, .. } => Some(WorkThen::RetryAt(*at)),
            AttemptResult::Dead { .. } => Some(WorkThen::Dead),
            AttemptResult::SetAside { .. } => Some(WorkThen::SetAside),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_parked_attempt_is_not_counted() {
        let parked = AttemptResult::Parked {
            until_ms: 5,
            reason: "paused".into(),
        };
        assert!(!parked.counts_attempt());
        assert_eq!(parked.then(), Some(WorkThen::RetryAt(5)));
        assert_eq!(parked.work_status(), Some(WorkStatus::Parked));
        let retry = AttemptResult::RetryAt {
            at_ms: 7,
            error: "boom".into(),
        };
        assert!(retry.counts_attempt());
        assert_eq!(retry.error(), Some("boom"));
        assert_eq!(retry.due_at_ms(), Some(7));
        assert_eq!(AttemptResult::Done.then(), None);
        assert_eq!(AttemptResult::Done.error(), None);
        let set_aside = AttemptResult::SetAside {
            reason: "quota".into(),
        };
        assert_eq!(set_aside.then(), Some(WorkThen::SetAside));
        assert_eq!(set_aside.due_at_ms(), None);
    }
}

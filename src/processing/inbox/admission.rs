//! Admission of a forwarded batch: refused while too many of its realms' events wait for the
//! listeners they need (the backlog), and each event's stored status from the shared
//! [`Guards`] (`expired`, `filtered`, else `pending`). The quota is spent by the writer, once
//! it knows which events are new (see [`crate::guards`]).

use std::sync::Arc;
use std::time::Duration;

use super::{Inbox, IntakeError};
use crate::config::Config;
use crate::db::tables::inbox::InboxStatus;
use crate::events::forwarded::ForwardedEvent;
use crate::guards::filters::Filters;
use crate::guards::ratelimit::Limits;
use crate::guards::{Guard, Guards, Refused, Subject};

/// What decides whether a forwarded event is dispatched: its age, the filters, and the rate
/// limits; and how much may wait before batches are refused.
pub struct Admission {
    guards: Guards,
    max_backlog: u64,
    /// How long a batch waits for the writer to take it.
    pub(super) writer_wait: Duration,
}

impl Admission {
    pub fn new(config: &Config, filters: Arc<Filters>) -> Admission {
        Admission {
            guards: Guards::forwarder(config, filters),
            max_backlog: config.forwarder.max_backlog,
            writer_wait: config.database.connection_timeout,
        }
    }

    /// The status an accepted event is stored with, and why when it is not `pending`.
    pub(super) fn status(
        &self,
        event: &ForwardedEvent,
        now_ms: i64,
    ) -> (InboxStatus, Option<String>) {
        let subject = Subject {
            realm: &event.event.realm,
            realm_key: event.realm_id,
            user_id: event.user_id,
            emitted_at_ms: event.emitted_at_ms,
        };
        match self.guards.screen(subject, now_ms) {
            // Rate limits are charged by the writer, once it knows which events are new.
            Ok(()) => (InboxStatus::Pending, None),
            Err(Refused { guard, reason }) => (stored_status(guard), Some(reason)),
        }
    }

    /// The forwarder's limiter, for the writer to charge.
    pub(super) fn limits(&self) -> Option<Arc<Limits>> {
        self.guards.limits()
    }

    /// Forgets idle rate-limit keys; returns the keys still tracked.
    pub(super) fn housekeeping(&self) -> usize {
        self.guards.housekeeping()
    }
}

/// The inbox status a forwarded event refused by `guard` is stored with.
pub(crate) fn stored_status(guard: Guard) -> InboxStatus {
    match guard {
        Guard::MaxAge => InboxStatus::Expired,
        Guard::Filters => InboxStatus::Filtered,
        Guard::RateLimit => InboxStatus::RateLimited,
    }
}

impl Inbox {
    /// Refuses a batch while too many events of its realms wait for a listener its events
    /// need. Only the batch's own realms and the listeners its events need count: one realm's
    /// pile-up does not stop the others, a broken listener's pending events do not stop
    /// events that only other listeners want, and events parked behind a paused or disabled
    /// listener are not counted at all.
    pub(super) fn admit(&self, events: &[ForwardedEvent]) -> Result<(), IntakeError> {
        let max = i64::try_from(self.admission.max_backlog).unwrap_or(i64::MAX);
        let mut kinds: Vec<(i64, &str)> = events
            .iter()
            .map(|e| (e.realm_id, e.event_type.as_str()))
            .collect();
        kinds.sort_unstable();
        kinds.dedup();
        for (realm_id, event_type) in kinds {
            for listener in self.waits_for(event_type) {
                let backlog = self.backlog.of((realm_id, listener));
                if backlog > max {
                    let what = match listener.and_then(|id| self.processor.listener_name(id)) {
                        Some(name) => format!("waiting for `{name}`"),
                        None => "waiting to be processed".to_string(),
                    };
                    return Err(IntakeError::Busy(format!(
                        "{backlog} events of realm {realm_id} are {what} (forwarder.max_backlog {max})"
                    )));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_stored_under_its_outcome() {
        for guard in [Guard::MaxAge, Guard::Filters, Guard::RateLimit] {
            assert_eq!(stored_status(guard).as_str(), guard.outcome(), "{guard:?}");
        }
    }
}

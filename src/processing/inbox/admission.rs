//! Admission of forwarded events: the status an accepted event is stored with (expired,
//! filtered, or pending), from its age and the filters; the rate limits the writer charges.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::millis;
use crate::config::Config;
use crate::events::forwarded::ForwardedEvent;
use crate::filters::Filters;
use crate::ratelimit::Limits;

/// What decides whether a forwarded event is dispatched: its age, the filters, and the rate
/// limits.
pub struct Admission {
    filters: Arc<Filters>,
    pub(super) limits: Option<Arc<Limits>>,
    max_event_age: Option<Duration>,
    pub(super) max_backlog: u64,
    pub(super) writer_wait: Duration,
}

impl Admission {
    pub fn new(config: &Config, filters: Arc<Filters>) -> Admission {
        let limits = config.rate_limits.enabled.then(|| {
            let (per_realm, per_user) = config
                .rate_limits
                .quotas(&config.rate_limits.forwarder, None);
            Arc::new(Limits::new(&per_realm, &per_user))
        });
        Admission {
            filters,
            limits,
            max_event_age: config.filters.max_event_age(),
            max_backlog: config.forwarder.max_backlog,
            writer_wait: config.database.connection_timeout,
        }
    }

    /// The status an accepted event is stored with, and why when it is not `pending`.
    pub(super) fn status(
        &self,
        event: &ForwardedEvent,
        now_ms: i64,
    ) -> (&'static str, Option<String>) {
        if let (Some(age), Some(at)) = (self.max_event_age, event.emitted_at_ms)
            && now_ms.saturating_sub(at) > millis(age)
        {
            let why = format!(
                "emitted {} s ago, over filters.max_event_age",
                now_ms.saturating_sub(at) / 1000
            );
            return ("expired", Some(why));
        }
        if let Some(why) = self.filters.reject(&event.event.realm, event.user_id) {
            return ("filtered", Some(why));
        }
        // Rate limits are charged by the writer, once it knows which events are new.
        ("pending", None)
    }
}

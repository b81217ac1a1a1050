//! The guards a verified event passes before any listener runs it, in this order: its age
//! (`filters.max_event_age`; only forwarded events carry the time they were emitted), the
//! filters (`[filters]`: realm allow-list, blocked users), then the rate limits
//! (`[rate_limits]`). Both intakes use one [`Guards`]; each answers a refusal its own way.
//!
//! - Outgoing webhooks ([`crate::processing::outgoing`]): each bot has its own `Guards` (its quotas, the
//!   bot standing for its realm) and calls [`Guards::check`], which spends quota at once. A
//!   refusal becomes a 200 answer and an event-log row named after [`Guard::name`].
//! - Forwarded batches ([`crate::processing::inbox`]): [`Guards::screen`] (age and filters, which spend
//!   nothing) gives each event the status it is stored with. The quota is spent later, by
//!   the database writer, once it knows which events of the batch are new, so that a re-sent
//!   batch or event never costs quota twice: [`Guards::limits`] hands it the limiter, and an
//!   event over it is stored as [`Guard::RateLimit`]'s outcome, `rate_limited`.
//!
//! [`Guard::outcome`] is the label both paths count refusals under
//! (`zulip_listeners_events_received_total{outcome}`), and the text of the inbox status a
//! refused forwarded event is stored with (the inbox maps one to the other and tests that
//! they agree).
//!
//! The pipeline and its two mechanisms, [`filters`] and [`ratelimit`], live together here, one
//! layer above `config` and `events` and below `db`, rather than inside `processing`: the
//! database writer charges the forwarder's quota (`db::writer`) and each listener owns its own
//! limiter (`listeners::live`), and both sit below `processing`, so a `ratelimit` under
//! `processing` would be an upward import (and a module cycle). Nothing here imports `db`,
//! `listeners`, `processing` or `http`; `processing` (both intakes), `listeners`, `db::writer`
//! and `server` import it.

pub mod filters;
pub mod ratelimit;

use std::sync::Arc;
use std::time::Duration;

use crate::clock::millis;
use crate::config::{Config, QuotaOverrides};
use crate::events::Realm;
use filters::Filters;
use ratelimit::Limits;

/// The guards of one intake path.
pub struct Guards {
    filters: Arc<Filters>,
    /// `None`: events of any age pass (and on the outgoing path, which has no age).
    max_event_age: Option<Duration>,
    /// `None` when rate limits are off.
    limits: Option<Arc<Limits>>,
}

/// The guard that refused an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    /// Emitted longer ago than `filters.max_event_age`.
    MaxAge,
    /// Refused by `[filters]`.
    Filters,
    /// Over the realm's or the user's quota.
    RateLimit,
}

impl Guard {
    /// The outcome a refused event is counted under: the text of the inbox status a refused
    /// forwarded event is stored with.
    pub fn outcome(self) -> &'static str {
        match self {
            Guard::MaxAge => "expired",
            Guard::Filters => "filtered",
            Guard::RateLimit => "rate_limited",
        }
    }

    /// The name the guard goes by in logs and event-log rows.
    pub fn name(self) -> &'static str {
        match self {
            Guard::MaxAge => "max_event_age",
            Guard::Filters => "filters",
            Guard::RateLimit => "rate_limiter",
        }
    }
}

/// Why an event is not to be processed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub guard: Guard,
    pub reason: String,
}

/// What an event brings to the guards.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub realm: &'a Realm,
    /// The key the realm's quota is kept under (outgoing webhooks: 0, the bot stands for its
    /// realm).
    pub realm_key: i64,
    pub user_id: Option<i64>,
    /// When the event was emitted, if known.
    pub emitted_at_ms: Option<i64>,
}

impl Guards {
    pub fn new(
        filters: Arc<Filters>,
        max_event_age: Option<Duration>,
        limits: Option<Limits>,
    ) -> Guards {
        Guards {
            filters,
            max_event_age,
            limits: limits.map(Arc::new),
        }
    }

    /// The forwarder's guards: `filters.max_event_age`, the filters and
    /// `rate_limits.forwarder`.
    pub fn forwarder(config: &Config, filters: Arc<Filters>) -> Guards {
        Guards::new(
            filters,
            config.filters.max_event_age(),
            limits(config, &config.rate_limits.forwarder, None),
        )
    }

    /// A bot's guards: the filters and `rate_limits.outgoing` with the bot's own overrides.
    pub fn outgoing(
        config: &Config,
        filters: Arc<Filters>,
        bot: Option<&QuotaOverrides>,
    ) -> Guards {
        Guards::new(
            filters,
            None,
            limits(config, &config.rate_limits.outgoing, bot),
        )
    }

    /// Every guard in order, spending quota when the event passes the others.
    pub fn check(&self, subject: Subject<'_>, now_ms: i64) -> Result<(), Refused> {
        self.screen(subject, now_ms)?;
        self.charge(subject)
    }

    /// The guards that spend nothing: the event's age, then the filters.
    pub fn screen(&self, subject: Subject<'_>, now_ms: i64) -> Result<(), Refused> {
        if let (Some(age), Some(at)) = (self.max_event_age, subject.emitted_at_ms)
            && now_ms.saturating_sub(at) > millis(age)
        {
            return Err(Refused {
                guard: Guard::MaxAge,
                reason: format!(
                    "emitted {} s ago, over filters.max_event_age",
                    now_ms.saturating_sub(at) / 1000
                ),
            });
        }
        match self.filters.reject(subject.realm, subject.user_id) {
            Some(reason) => Err(Refused {
                guard: Guard::Filters,
                reason,
            }),
            None => Ok(()),
        }
    }

    /// The rate limits: spends one unit of the realm's and the user's quota, unless either
    /// is used up.
    pub fn charge(&self, subject: Subject<'_>) -> Result<(), Refused> {
        let Some(limits) = &self.limits else {
            return Ok(());
        };
        match limits.check(subject.realm_key, subject.user_id).reason() {
            Some(reason) => Err(Refused {
                guard: Guard::RateLimit,
                reason,
            }),
            None => Ok(()),
        }
    }

    /// The limiter, for a path that spends quota elsewhere (the forwarder's, in the writer).
    pub fn limits(&self) -> Option<Arc<Limits>> {
        self.limits.clone()
    }

    /// Forgets idle rate-limit keys; returns the keys still tracked.
    pub fn housekeeping(&self) -> usize {
        self.limits
            .as_ref()
            .map_or(0, |limits| limits.housekeeping())
    }
}

/// The limiter for a path's quotas (with a bot's overrides), when rate limits are on.
fn limits(config: &Config, path: &QuotaOverrides, bot: Option<&QuotaOverrides>) -> Option<Limits> {
    config.rate_limits.enabled.then(|| {
        let (per_realm, per_user) = config.rate_limits.quotas(path, bot);
        Limits::new(&per_realm, &per_user)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FiltersConfig, QuotaConfig};

    fn realm(id: i64) -> Realm {
        Realm {
            id: Some(id),
            ..Realm::default()
        }
    }

    fn subject(realm: &Realm, user_id: i64, emitted_at_ms: Option<i64>) -> Subject<'_> {
        Subject {
            realm,
            realm_key: realm.id.unwrap_or_default(),
            user_id: Some(user_id),
            emitted_at_ms,
        }
    }

    fn guards(max_event_age: Option<Duration>, burst: u32) -> Guards {
        let filters = FiltersConfig {
            max_event_age: Duration::ZERO,
            allowed_realms: Vec::new(),
            blocked_users: vec![99],
        };
        let quota = QuotaConfig {
            per_minute: std::num::NonZeroU32::MIN,
            burst: std::num::NonZeroU32::new(burst).expect("a test quota is not zero"),
        };
        Guards::new(
            Arc::new(Filters::new(&filters)),
            max_event_age,
            Some(Limits::new(&quota, &quota)),
        )
    }

    #[test]
    fn age_then_filters_then_limits() {
        let guards = guards(Some(Duration::from_secs(60)), 1);
        let r = realm(1);
        let now = 1_000_000;
        let old = guards.check(subject(&r, 99, Some(now - 61_000)), now);
        assert_eq!(old.map_err(|e| e.guard), Err(Guard::MaxAge));
        let blocked = guards.check(subject(&r, 99, Some(now)), now);
        assert_eq!(blocked.map_err(|e| e.guard), Err(Guard::Filters));
        assert_eq!(guards.check(subject(&r, 1, Some(now)), now), Ok(()));
        let limited = guards.check(subject(&r, 1, None), now);
        assert_eq!(limited.map_err(|e| e.guard), Err(Guard::RateLimit));
    }

    #[test]
    fn screening_spends_no_quota() {
        let guards = guards(None, 1);
        let r = realm(1);
        for _ in 0..3 {
            assert_eq!(guards.screen(subject(&r, 1, Some(0)), i64::MAX), Ok(()));
        }
        assert_eq!(guards.charge(subject(&r, 1, None)), Ok(()));
        assert!(guards.charge(subject(&r, 1, None)).is_err());
    }

    #[test]
    fn outcomes_and_names() {
        assert_eq!(Guard::MaxAge.outcome(), "expired");
        assert_eq!(Guard::Filters.outcome(), "filtered");
        assert_eq!(Guard::RateLimit.outcome(), "rate_limited");
        assert_eq!(Guard::Filters.name(), "filters");
        assert_eq!(Guard::RateLimit.name(), "rate_limiter");
    }
}

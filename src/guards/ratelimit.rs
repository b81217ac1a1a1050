//! Rate limiting: a pair of keyed `governor` limiters (GCRA) — one per realm, one per
//! (realm, user) — checked after a request is verified, since the keys come from its body.
//! Keys are integers only (realm ids, user ids; for outgoing webhooks the bot stands for its
//! realm), never emails or realm subdomains, which change. A housekeeping pass forgets keys
//! whose state is back to fresh, so memory stays bounded by the number of recently active
//! users.

use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

use crate::config::QuotaConfig;

/// The outcome of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// Over the realm's quota; a request would be allowed again after the duration.
    RealmLimited(Duration),
    /// Over the user's quota.
    UserLimited(Duration),
}

impl Decision {
    pub fn is_allowed(self) -> bool {
        self == Decision::Allowed
    }

    /// Why the request was limited, for logs and stored records.
    pub fn reason(self) -> Option<String> {
        match self {
            Decision::Allowed => None,
            Decision::RealmLimited(wait) => Some(format!(
                "over the realm's rate limit; allowed again in {} ms",
                wait.as_millis()
            )),
            Decision::UserLimited(wait) => Some(format!(
                "over the user's rate limit; allowed again in {} ms",
                wait.as_millis()
            )),
        }
    }
}

/// Builds a governor quota: `per_minute` sustained, bursts of `burst`.
pub fn quota(config: &QuotaConfig) -> Quota {
    Quota::per_minute(config.per_minute).allow_burst(config.burst)
}

type Keyed<K, C> = RateLimiter<K, DashMapStateStore<K>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// Per-realm and per-(realm, user) limiters for one intake path.
pub struct Limits<C: Clock = DefaultClock> {
    realms: Keyed<i64, C>,
    users: Keyed<(i64, i64), C>,
    clock: C,
}

impl<C: Clock> std::fmt::Debug for Limits<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("tracked_keys", &(self.realms.len() + self.users.len()))
            .finish()
    }
}

impl Limits<DefaultClock> {
    pub fn new(per_realm: &QuotaConfig, per_user: &QuotaConfig) -> Self {
        Self::with_clock(per_realm, per_user, DefaultClock::default())
    }
}

impl<C: Clock + Clone> Limits<C> {
    /// The same with a given clock (tests use governor's fake clock).
    pub fn with_clock(per_realm: &QuotaConfig, per_user: &QuotaConfig, clock: C) -> Self {
        Limits {
            realms: RateLimiter::dashmap_with_clock(quota(per_realm), clock.clone()),
            users: RateLimiter::dashmap_with_clock(quota(per_user), clock.clone()),
            clock,
        }
    }

    /// Counts one event of `realm` (and of `user` in it, when known). The realm is checked
    /// first, so a request refused for the realm costs the user nothing.
    pub fn check(&self, realm: i64, user: Option<i64>) -> Decision {
        if let Err(not_until) = self.realms.check_key(&realm) {
            return Decision::RealmLimited(not_until.wait_time_from(self.clock.now()));
        }
        if let Some(user) = user
            && let Err(not_until) = self.users.check_key(&(realm, user))
        {
            return Decision::UserLimited(not_until.wait_time_from(self.clock.now()));
        }
        Decision::Allowed
    }

    /// Forgets keys whose state is indistinguishable from fresh and frees their memory;
    /// returns how many keys are still tracked.
    pub fn housekeeping(&self) -> usize {
        self.realms.retain_recent();
        self.users.retain_recent();
        self.realms.shrink_to_fit();
        self.users.shrink_to_fit();
        self.tracked_keys()
    }

    /// Keys currently tracked (realms plus users).
    pub fn tracked_keys(&self) -> usize {
        self.realms.len() + self.users.len()
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    fn q(per_minute: u32, burst: u32) -> QuotaConfig {
        let n = |v| std::num::NonZeroU32::new(v).expect("a test quota is not zero");
        QuotaConfig {
            per_minute: n(per_minute),
            burst: n(burst),
        }
    }

    fn limits(
        realm: QuotaConfig,
        user: QuotaConfig,
    ) -> (Limits<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (Limits::with_clock(&realm, &user, clock.clone()), clock)
    }

    #[test]
    fn burst_then_refill() {
        let (l, clock) = limits(q(10_000, 10_000), q(60, 3));
        for _ in 0..3 {
            assert_eq!(l.check(1, Some(7)), Decision::Allowed);
        }
        let Decision::UserLimited(wait) = l.check(1, Some(7)) else {
            panic!("the fourth event in a burst of three is limited")
        };
        assert_eq!(
            wait,
            Duration::from_secs(1),
            "60/min refills one per second"
        );
        clock.advance(Duration::from_millis(999));
        assert!(!l.check(1, Some(7)).is_allowed());
        clock.advance(Duration::from_millis(1));
        assert!(l.check(1, Some(7)).is_allowed());
        assert!(!l.check(1, Some(7)).is_allowed(), "only one cell came back");
        clock.advance(Duration::from_secs(3));
        for _ in 0..3 {
            assert!(
                l.check(1, Some(7)).is_allowed(),
                "a full burst after three seconds"
            );
        }
    }

    #[test]
    fn users_are_isolated() {
        let (l, _) = limits(q(10_000, 10_000), q(60, 2));
        assert!(l.check(1, Some(7)).is_allowed());
        assert!(l.check(1, Some(7)).is_allowed());
        assert!(!l.check(1, Some(7)).is_allowed());
        assert!(
            l.check(1, Some(8)).is_allowed(),
            "another user of the realm is unaffected"
        );
        assert!(
            l.check(2, Some(7)).is_allowed(),
            "the same id in another realm is another user"
        );
    }

    #[test]
    fn the_realm_caps_all_its_users_together() {
        let (l, clock) = limits(q(60, 5), q(60, 3));
        for user in 0..5 {
            assert!(l.check(1, Some(user)).is_allowed());
        }
        assert!(matches!(l.check(1, Some(99)), Decision::RealmLimited(_)));
        assert!(
            l.check(2, Some(99)).is_allowed(),
            "other realms have their own quota"
        );
        // One realm cell comes back per second, for whichever user comes first.
        clock.advance(Duration::from_secs(1));
        assert!(l.check(1, Some(42)).is_allowed());
        // Events without a user count against the realm only.
        assert!(matches!(l.check(1, None), Decision::RealmLimited(_)));
    }

    #[test]
    fn housekeeping_forgets_idle_keys() {
        let (l, clock) = limits(q(10_000, 10_000), q(60, 10));
        for user in 0..100 {
            assert!(l.check(user % 3, Some(user)).is_allowed());
        }
        assert_eq!(l.tracked_keys(), 3 + 100);
        assert_eq!(l.housekeeping(), 103, "recently used keys stay");
        clock.advance(Duration::from_secs(60));
        assert_eq!(
            l.housekeeping(),
            0,
            "keys back to a fresh state are dropped"
        );
        assert!(l.check(0, Some(0)).is_allowed());
        assert_eq!(l.tracked_keys(), 2);
    }
}

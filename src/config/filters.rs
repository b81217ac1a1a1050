//! `[filters]`: which forwarded events are too old, from realms not served, or from blocked
//! users; and [`RealmSelector`], how a realm is named there and in a listener's scope.

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FiltersConfig {
    /// Events emitted longer ago than this are stored as `expired` and not dispatched;
    /// "0s" turns the check off.
    #[serde(with = "humantime_serde")]
    pub max_event_age: Duration,
    /// Realms served (numbers are realm ids, strings subdomains); empty = every realm.
    #[serde(default)]
    pub allowed_realms: Vec<RealmSelector>,
    /// User ids whose events are not processed.
    #[serde(default)]
    pub blocked_users: Vec<i64>,
}

impl FiltersConfig {
    pub fn max_event_age(&self) -> Option<Duration> {
        (!self.max_event_age.is_zero()).then_some(self.max_event_age)
    }
}

/// A realm named in `filters.allowed_realms` or a listener's scope.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(
    untagged,
    expecting = "expected a realm id (number) or subdomain (string)"
)]
pub enum RealmSelector {
    Id(i64),
    Subdomain(String),
}

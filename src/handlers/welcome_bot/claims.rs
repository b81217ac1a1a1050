//! Greetings this process is sending or sent a moment ago, so that two runs of one event (or
//! of Zulip's repeated events) do not both greet while the first one's record is not yet
//! committed: a claim held for the run, released if the greeting was not posted.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a greeting sent by this process is remembered in memory (its record is committed
/// long before).
const REMEMBER_SENT: Duration = Duration::from_secs(600);
/// Most greetings remembered in memory; older ones are forgotten first.
const MAX_REMEMBERED: usize = 10_000;

/// Greetings sent or being sent by this process: (realm, user, key) → when claimed.
#[derive(Default)]
pub(super) struct Claims(Mutex<HashMap<(i64, i64, String), Instant>>);

impl Claims {
    /// Claims a greeting for this run; `None` when it was sent or is being sent by another
    /// run in this process (its record may not be committed yet).
    pub(super) fn claim(&self, realm_id: i64, user_id: i64, key: &str) -> Option<Claim<'_>> {
        let mut claimed = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if claimed.len() >= MAX_REMEMBERED {
            claimed.retain(|_, at| now.duration_since(*at) < REMEMBER_SENT);
        }
        if claimed.len() >= MAX_REMEMBERED {
            // Still full of recent greetings: forget the oldest half.
            let mut ages: Vec<Instant> = claimed.values().copied().collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 2];
            claimed.retain(|_, at| *at > cut);
        }
        let slot = (realm_id, user_id, key.to_string());
        if claimed
            .get(&slot)
            .is_some_and(|at| now.duration_since(*at) < REMEMBER_SENT)
        {
            return None;
        }
        claimed.insert(slot.clone(), now);
        Some(Claim {
            owner: self,
            slot,
            sent: false,
        })
    }
}

/// A greeting being sent; released on drop unless it was sent (failed, or the run was cut
/// short by its timeout), so that the retry sends it.
pub(super) struct Claim<'a> {
    owner: &'a Claims,
    slot: (i64, i64, String),
    /// Set once the greeting is posted: the claim is then kept.
    pub(super) sent: bool,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if !self.sent {
            self.owner
                .0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&self.slot);
        }
    }
}

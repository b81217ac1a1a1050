//! Claims held for as long as a run waits or runs (PostgreSQL, where several processes share
//! the work). Work is claimed for `forwarder.claim_lease` when intake queues it or the sweeper
//! takes it, marked with this process's id (`inbox_work.claimed_by`). While the event is in
//! flight here (queued, running, or waiting for its result's commit) this process renews the
//! claims on its listeners' work every third of the lease, in one statement per
//! [`ROWS_PER_STATEMENT`](crate::db::bulk::ROWS_PER_STATEMENT) events, and learns which it
//! still holds. A run starts only while its claim is known to hold for a quarter of the lease
//! more; otherwise (renewals failed for a while) the claim is taken again in the database
//! first, and a run whose claim another process took does not start here.
//!
//! A process that dies stops renewing: its claims lapse after the lease and another process
//! that runs the listener takes the work (logged, `zulip_listeners_claims_total{outcome=
//! "taken_over"}`). On SQLite one server owns the database and releases every claim at
//! start-up, so nothing is renewed or checked there and the hot path costs what it did.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::Inbox;
use crate::clock::{millis, now_ms};
use crate::db::tables::claims::ClaimedWork;
use crate::db::{DbError, tables};
use crate::listeners::ListenerId;
use crate::telemetry::metric;

/// How often a claim that could not be checked (the database unreachable) is checked again.
const CHECK_AGAIN: Duration = Duration::from_secs(1);

/// This process's claims on the work of one event in flight: each listener whose work it
/// claimed, with the time until which the claim is known to hold (empty on SQLite).
pub(super) type Held = Vec<(&'static str, i64)>;

impl Inbox {
    /// Whether claims are shared with other processes (PostgreSQL), and so renewed and
    /// checked.
    fn claims_shared(&self) -> bool {
        !self.owner.is_empty()
    }

    fn lease_ms(&self) -> i64 {
        millis(self.config.claim_lease)
    }

    /// The claims held on an event's work, taken until `claim_until`.
    pub(super) fn held(&self, listeners: &[(ListenerId, i32)], claim_until: i64) -> Held {
        if !self.claims_shared() {
            return Vec::new();
        }
        listeners
            .iter()
            .map(|&(id, _)| (self.name(id), claim_until))
            .collect()
    }

    /// Renews the claims of the events in flight every third of the lease until `stop`.
    pub(super) async fn renew(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let every = (self.config.claim_lease / 3).max(Duration::from_millis(100));
        loop {
            tokio::select! {
                biased;
                _ = stop.changed() => return,
                _ = tokio::time::sleep(every) => {}
            }
            if let Err(error) = self.renew_once().await {
                tracing::warn!(
                    %error,
                    "renewing this process's claims failed; trying again (runs whose claims lapse are checked before they start)"
                );
            }
        }
    }

    /// One renewal of every claim held on events in flight; returns how many still hold.
    async fn renew_once(&self) -> Result<usize, DbError> {
        let ids: Vec<String> = self
            .in_flight
            .iter()
            .filter(|e| !e.value().is_empty())
            .map(|e| e.key().clone())
            .collect();
        if ids.is_empty() {
            return Ok(0);
        }
        let until = now_ms() + self.lease_ms();
        let owner = self.owner.clone();
        let held = self
            .db
            .run(move |c| {
                let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
                tables::claims::renew_claims(c, &owner, &ids, until)
            })
            .await?;
        for (event_id, listener) in &held {
            if let Some(mut claims) = self.in_flight.get_mut(event_id) {
                for (name, held_until) in claims.iter_mut() {
                    if *name == listener.as_str() {
                        *held_until = (*held_until).max(until);
                    }
                }
            }
        }
        Ok(held.len())
    }

    /// Whether this process may start the run of listener `id` on an event in flight (with
    /// `attempts` made before): its claim is known to hold, or was taken again just now. A
    /// claim another process took, or that cannot be checked, leaves the work to whoever
    /// holds it, or to the next sweep.
    pub(super) async fn claim_holds(&self, event_id: &str, id: ListenerId, attempts: i32) -> bool {
        if !self.claims_shared() {
            return true;
        }
        let name = self.name(id);
        let now = now_ms();
        let margin = self.lease_ms() / 4;
        let known = self.in_flight.get(event_id).is_some_and(|claims| {
            claims
                .iter()
                .any(|&(n, until)| n == name && until > now + margin)
        });
        if known {
            return true;
        }
        let mut waited = false;
        loop {
            let until = now_ms() + self.lease_ms();
            let (owner, event, listener) = (self.owner.clone(), event_id.to_string(), name);
            let taken = self
                .db
                .run(move |c| {
                    tables::claims::retake_claim(c, &owner, &event, listener, attempts, until)
                })
                .await;
            match taken {
                Ok(true) => {
                    if let Some(mut claims) = self.in_flight.get_mut(event_id) {
                        for (n, held_until) in claims.iter_mut() {
                            if *n == name {
                                *held_until = (*held_until).max(until);
                            }
                        }
                    }
                    if waited {
                        tracing::info!(event_id, listener = name, "claim checked again; running");
                    }
                    return true;
                }
                Ok(false) => {
                    metric::claims("lost", 1);
                    tracing::warn!(
                        event_id,
                        listener = name,
                        "not running: the claim on this work lapsed before it was renewed and another process took it (or it has a result already)"
                    );
                    return false;
                }
                // The database cannot be reached: nothing can be written, and no other
                // process can take the work meanwhile either. The event stays in flight here
                // (its own claim would keep this process's sweeper from it for the rest of the
                // lease) and the check is made again once the database answers.
                Err(error) if !*self.stopping.borrow() => {
                    if !waited {
                        tracing::warn!(
                            event_id,
                            listener = name,
                            %error,
                            "the claim on this work cannot be checked; waiting for the database"
                        );
                        waited = true;
                    }
                    tokio::time::sleep(CHECK_AGAIN).await;
                }
                Err(error) => {
                    tracing::warn!(
                        event_id,
                        listener = name,
                        %error,
                        "not running: stopping, and the claim on this work cannot be checked; a later sweep takes it"
                    );
                    return false;
                }
            }
        }
    }

    /// Logs (and counts) the work the sweeper just claimed that another process had claimed
    /// and stopped renewing: it died, or lost the database for longer than the lease.
    pub(super) fn note_taken_over(&self, rows: &[ClaimedWork]) {
        if !self.claims_shared() {
            return;
        }
        let mut from: Vec<(&str, u64)> = Vec::new();
        for row in rows {
            if row.claimed_until_ms <= 0
                || row.claimed_by.is_empty()
                || row.claimed_by == self.owner
            {
                continue;
            }
            match from.iter_mut().find(|(owner, _)| *owner == row.claimed_by) {
                Some((_, n)) => *n += 1,
                None => from.push((&row.claimed_by, 1)),
            }
        }
        for (previous, count) in from {
            metric::claims("taken_over", count);
            tracing::warn!(
                previous_owner = previous,
                count,
                "took over work whose claim lapsed: the process holding it stopped renewing (it died or lost the database)"
            );
        }
    }
}

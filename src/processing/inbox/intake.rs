//! Intake of a verified batch ([`Inbox::accept`]), step by step: admit (the backlog; see
//! [`super::admission`]), plan (rows, statuses, pure listeners run here; see
//! [`super::plan`]), one write of the whole batch, then the batch's counts and dispatch of
//! the new events to the workers.

use std::collections::HashMap;

use tokio::sync::mpsc;

use super::Inbox;
use super::plan::{Dispatch, Plan};
use crate::db::tables::inbox::InboxStatus;
use crate::db::writer::{IntakeBatch, IntakeResult, IntakeWriteError, WriteOp};
use crate::events::forwarded::ForwardedEvent;
use crate::telemetry::metric;

/// What intake stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct IntakeSummary {
    /// Newly stored events.
    pub accepted: usize,
    /// Events already stored before (a re-sent batch, or a replayed dead-letter file).
    pub duplicates: usize,
    /// Stored as `expired` (older than `filters.max_event_age`), not dispatched.
    pub expired: usize,
    /// Stored as `filtered` (realm not allowed, user blocked), not dispatched.
    pub filtered: usize,
    /// Stored as `rate_limited`, not dispatched.
    pub rate_limited: usize,
    /// Of the accepted events, those already processed when the batch was acknowledged (their
    /// listeners are all pure); the others are with the workers.
    pub processed: usize,
    /// The whole batch (`webhook-id`) had been accepted before.
    pub duplicate_batch: bool,
}

/// Why a batch was not stored.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// Too much is waiting already; the sender should try again later.
    #[error("{0}")]
    Busy(String),
    /// No room in the database for new work (see `db::storage`); the reason.
    #[error("{0}")]
    NoRoom(String),
    /// Storing failed; nothing was acknowledged.
    #[error("{0}")]
    Failed(String),
}

impl Inbox {
    /// Stores a verified batch (one transaction) and returns only after the commit; `Err`
    /// means nothing was acknowledged. An event whose listeners are all pure is processed
    /// right here and its effects are committed with it (unless an earlier event of its realm
    /// is still with a worker: order is kept); the others go to the workers after the commit.
    pub async fn accept(
        &self,
        webhook_id: &str,
        events: Vec<ForwardedEvent>,
    ) -> Result<IntakeSummary, IntakeError> {
        if let Some(reason) = self.writer.storage().refusal() {
            return Err(IntakeError::NoRoom(reason));
        }
        self.admit(&events)?;
        // Batches hold one realm's events: learn its id and subdomain once per realm.
        let mut last_realm = None;
        for event in &events {
            if last_realm != Some(event.realm_id) {
                self.processor.realms().learn(event.realm_id, &event.realm);
                last_realm = Some(event.realm_id);
            }
        }
        let Plan {
            batch,
            order,
            dispatch,
        } = self.plan(webhook_id, events);
        // Each stored row's status as intake decided it, to count the batch once the
        // writer has said which events were known or rate-limited.
        let statuses: HashMap<String, InboxStatus> = batch
            .rows
            .iter()
            .map(|row| (row.event_id.clone(), row.status))
            .collect();
        let stored = self.write(batch).await?;
        let mut summary = count(&order, &statuses, &stored);
        if stored.duplicate_batch {
            summary.duplicate_batch = true;
            return Ok(summary);
        }
        summary.processed = self.dispatch(dispatch, &stored).await;
        Ok(summary)
    }

    /// Writes the batch in one transaction.
    async fn write(&self, batch: IntakeBatch) -> Result<IntakeResult, IntakeError> {
        self.writer
            .intake(batch, self.admission.writer_wait)
            .await
            .map_err(|e| match e {
                IntakeWriteError::Busy => {
                    IntakeError::Busy("the database writer is behind; try again shortly".into())
                }
                IntakeWriteError::NoRoom(reason) => IntakeError::NoRoom(reason),
                IntakeWriteError::Failed(e) => IntakeError::Failed(e),
            })
    }

    /// After the commit, for the events that were new: counts those left pending in their
    /// realm's backlog and hands the queued ones to their lanes' workers (a full queue leaves
    /// them to the sweeper). Returns how many events were processed here.
    async fn dispatch(&self, plan: Dispatch, stored: &IntakeResult) -> usize {
        let new = |id: &String| !stored.known.contains(id) && !stored.rate_limited.contains(id);
        let processed = plan.done.iter().filter(|id| new(id)).count();
        for (realm_id, event_type, _) in plan.waiting.iter().filter(|(_, _, id)| new(id)) {
            self.count_in(*realm_id, event_type);
        }
        let mut released = Vec::new();
        for queued in plan.queued {
            if !new(&queued.event_id) {
                continue;
            }
            self.count_in(queued.realm_id, queued.event.event_type());
            let (lane, work) = self.track(
                queued.event_id,
                queued.event,
                queued.listeners,
                queued.realm_id,
                true,
                queued.claim_until,
            );
            match self.lanes[lane].queue.try_send(work) {
                Ok(()) => {}
                Err(
                    mpsc::error::TrySendError::Full(work) | mpsc::error::TrySendError::Closed(work),
                ) => released.push(work.guard.event_id.clone()),
            }
        }
        if !released.is_empty() {
            tracing::warn!(
                count = released.len(),
                "worker queues are full; the sweeper will take these events"
            );
            self.writer
                .send(WriteOp::Release(released, self.mine_names.clone()))
                .await;
        }
        processed
    }
}

/// The batch's counts: every event lands in exactly one bucket, published to the metrics.
fn count(
    order: &[(Option<String>, String)],
    statuses: &HashMap<String, InboxStatus>,
    stored: &IntakeResult,
) -> IntakeSummary {
    let mut summary = IntakeSummary::default();
    let mut tally = Tally::default();
    for (event_id, event_type) in order {
        let bucket = match event_id {
            _ if stored.duplicate_batch => "duplicate",
            None => "duplicate",
            Some(id) if stored.known.contains(id) => "duplicate",
            Some(id) if stored.rate_limited.contains(id) => "rate_limited",
            Some(id) => match statuses.get(id).copied() {
                Some(InboxStatus::Expired) => "expired",
                Some(InboxStatus::Filtered) => "filtered",
                _ => "accepted",
            },
        };
        match bucket {
            "duplicate" => summary.duplicates += 1,
            "rate_limited" => summary.rate_limited += 1,
            "expired" => summary.expired += 1,
            "filtered" => summary.filtered += 1,
            _ => summary.accepted += 1,
        }
        tally.add(event_type, bucket);
    }
    tally.publish();
    summary
}

/// Events received per (type, outcome) in one batch, published to the metrics once per batch
/// rather than once per event.
#[derive(Default)]
struct Tally(Vec<(String, &'static str, u64)>);

impl Tally {
    fn add(&mut self, event_type: &str, outcome: &'static str) {
        match self
            .0
            .iter_mut()
            .find(|(t, o, _)| *o == outcome && t == event_type)
        {
            Some((_, _, n)) => *n += 1,
            None => self.0.push((event_type.to_string(), outcome, 1)),
        }
    }

    fn publish(self) {
        for (event_type, outcome, n) in self.0 {
            metric::events_received("forwarder", &event_type, outcome, n);
        }
    }
}

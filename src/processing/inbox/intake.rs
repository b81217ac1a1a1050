//! Intake of a verified batch: backlog check, per-event admission and processing of events
//! whose listeners are all pure, one write of rows and work, then dispatch of the rest to the
//! workers and the batch's counts.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc;

use super::Inbox;
use super::retry::Verdict;
use crate::clock::{millis, now_ms};
use crate::db::models::{NewInboxRow, NewWorkRow};
use crate::db::writer::{IntakeBatch, IntakeWriteError, WriteOp};
use crate::events::forwarded::ForwardedEvent;
use crate::listeners::ListenerId as HandlerId;
use crate::processing::Outcome;
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
    /// handlers are all pure); the others are with the workers.
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
    /// Storing failed; nothing was acknowledged.
    #[error("{0}")]
    Failed(String),
}

impl Inbox {
    /// Stores a verified batch (one transaction) and returns only after the commit; `Err`
    /// means nothing was acknowledged. An event whose handlers are all pure is processed
    /// right here and its effects are committed with it (unless an earlier event of its realm
    /// is still with a worker: order is kept); the others go to the workers after the commit.
    pub async fn accept(
        &self,
        webhook_id: &str,
        events: Vec<ForwardedEvent>,
    ) -> Result<IntakeSummary, IntakeError> {
        // Only the batch's own realms and the listeners its events need count: one realm's
        // pile-up does not stop the others, a broken handler's pending events do not stop
        // events that only other handlers want, and events parked behind a paused or
        // disabled handler are not counted at all.
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
                    let what = match listener.and_then(|id| self.processor.handler_name(id)) {
                        Some(name) => format!("waiting for `{name}`"),
                        None => "waiting to be processed".to_string(),
                    };
                    return Err(IntakeError::Busy(format!(
                        "{backlog} events of realm {realm_id} are {what} (forwarder.max_backlog {max})"
                    )));
                }
            }
        }
        let now = now_ms();
        let claim_until = now + millis(self.config.claim_lease);
        let mut summary = IntakeSummary::default();
        let mut seen = HashSet::with_capacity(events.len());
        let mut rows = Vec::with_capacity(events.len());
        let mut processed = Vec::with_capacity(events.len());
        let mut payloads = Vec::new();
        // Every event of the batch, by its event id when it was the first with that id
        // (else `None`: repeated within the batch), with its type.
        let mut order: Vec<(Option<String>, String)> = Vec::with_capacity(events.len());
        // Events for the workers (lane, id, event), and ids of events processed here that
        // stay pending (a failure to retry, or a paused handler) or are done.
        let mut queued = Vec::new();
        let mut waiting = Vec::new();
        let mut done = Vec::new();
        // Work rows for listener runs not completed here.
        let mut work: Vec<NewWorkRow> = Vec::new();
        // Lanes this batch must not overtake: a worker has events of theirs, or an earlier
        // event of this batch went to their worker.
        let mut held: Vec<bool> = self
            .lanes
            .iter()
            .map(|lane| lane.outstanding.load(Ordering::Acquire) > 0)
            .collect();
        for event in events {
            if !seen.insert(event.event_id.clone()) {
                order.push((None, event.event_type));
                continue;
            }
            order.push((Some(event.event_id.clone()), event.event_type.clone()));
            let (status, reason) = self.admission.status(&event, now);
            let pending = status == "pending";
            if let Some(reason) = &reason {
                tracing::info!(event_id = %event.event_id, status, %reason, "event stored, not dispatched");
            }
            let mut row = NewInboxRow {
                event_id: event.event_id,
                webhook_id: webhook_id.to_string(),
                realm_id: event.realm_id,
                realm: event.realm,
                user_id: event.user_id,
                event_type: event.event_type,
                op: event.op,
                payload: event.payload,
                status,
                attempts: 0,
                next_attempt_at_ms: now,
                claimed_until_ms: 0,
                last_error: reason,
                emitted_at_ms: event.emitted_at_ms,
                received_at_ms: now,
                updated_at_ms: now,
            };
            if pending {
                let lane = self.lane_of(&event.event);
                let outcome = (!held[lane] && self.processor.all_pure(&row.event_type, &self.mine))
                    .then(|| self.processor.run_now(&event.event, &self.mine))
                    .flatten();
                match outcome {
                    Some(outcome)
                        if !self.split
                            && outcome.first_error.is_none()
                            && outcome.deferred.is_none() =>
                    {
                        // Every listener ran it: nothing is left to track.
                        row.status = "done";
                        row.attempts = 1;
                        // Kept only while the event may be processed or replayed
                        // (the writer puts it back if the event is rate-limited).
                        payloads.push((rows.len(), std::mem::take(&mut row.payload)));
                        done.push(row.event_id.clone());
                        processed.push((rows.len(), outcome.processed));
                    }
                    Some(outcome) => {
                        // A listener failed or waits, or other processes run some: work rows
                        // for what is left, effects of the runs that succeeded kept.
                        let mut left = self.left_after_intake(&row, &outcome, now);
                        left.extend(self.remote_work(&row, now));
                        if left.is_empty() {
                            row.status = "done";
                            row.attempts = 1;
                            payloads.push((rows.len(), std::mem::take(&mut row.payload)));
                            done.push(row.event_id.clone());
                        } else {
                            let settled =
                                |w: &NewWorkRow| w.status == "dead" || w.status == "rate_limited";
                            let tried = left.iter().any(|w| w.attempts > 0 && !settled(w));
                            summarise(&mut row, &left);
                            if left
                                .iter()
                                .any(|w| !settled(w) && self.mine_names.contains(&w.listener))
                            {
                                held[lane] = true;
                            }
                            if row.status == "pending" && tried {
                                waiting.push((
                                    row.realm_id,
                                    row.event_type.clone(),
                                    row.event_id.clone(),
                                ));
                            }
                            work.extend(left);
                        }
                        processed.push((rows.len(), outcome.processed));
                    }
                    None => {
                        let local: Vec<HandlerId> = self
                            .wanting(&self.mine, &row.event_type)
                            .into_iter()
                            .filter(|&id| self.needs_work(id))
                            .collect();
                        let before = work.len();
                        for &id in &local {
                            work.push(self.work_row(&row.event_id, id, claim_until, now));
                        }
                        work.extend(self.remote_work(&row, now));
                        if !local.is_empty() {
                            held[lane] = true;
                            let local = local.into_iter().map(|id| (id, 0)).collect();
                            queued.push((
                                lane,
                                row.realm_id,
                                row.event_id.clone(),
                                event.event,
                                local,
                            ));
                        } else if work.len() == before {
                            // No listener wants it.
                            row.status = "done";
                            row.attempts = 1;
                            payloads.push((rows.len(), std::mem::take(&mut row.payload)));
                            done.push(row.event_id.clone());
                        }
                    }
                }
            }
            rows.push(row);
        }
        // Each stored row's status as intake decided it, to count the batch once the
        // writer has said which events were known or rate-limited.
        let statuses: std::collections::HashMap<String, &'static str> = rows
            .iter()
            .map(|row| (row.event_id.clone(), row.status))
            .collect();
        let stored = self
            .writer
            .intake(
                IntakeBatch {
                    webhook_id: webhook_id.to_string(),
                    rows,
                    processed,
                    payloads,
                    work,
                    limits: self.admission.limits.clone(),
                },
                self.admission.writer_wait,
            )
            .await
            .map_err(|e| match e {
                IntakeWriteError::Busy => {
                    IntakeError::Busy("the database writer is behind; try again shortly".into())
                }
                IntakeWriteError::Failed(e) => IntakeError::Failed(e),
            })?;
        // Every event of the batch lands in exactly one bucket.
        let mut tally = Tally::default();
        for (event_id, event_type) in &order {
            let bucket = match event_id {
                _ if stored.duplicate_batch => "duplicate",
                None => "duplicate",
                Some(id) if stored.known.contains(id) => "duplicate",
                Some(id) if stored.rate_limited.contains(id) => "rate_limited",
                Some(id) => match statuses.get(id).copied() {
                    Some("expired") => "expired",
                    Some("filtered") => "filtered",
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
        if stored.duplicate_batch {
            summary.duplicate_batch = true;
            return Ok(summary);
        }
        let new = |id: &String| !stored.known.contains(id) && !stored.rate_limited.contains(id);
        summary.processed = done.iter().filter(|id| new(id)).count();
        for (realm_id, event_type, _) in waiting.iter().filter(|(_, _, id)| new(id)) {
            self.count_in(*realm_id, event_type);
        }
        let mut released = Vec::new();
        for (lane, realm_id, event_id, event, listeners) in queued {
            if !new(&event_id) {
                continue;
            }
            self.count_in(realm_id, event.event_type());
            let work = self.track(lane, event_id, event, listeners, realm_id, true);
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
        Ok(summary)
    }

    /// A pending work row for listener `id`, claimed until `claim_until` (0: unclaimed).
    fn work_row(&self, event_id: &str, id: HandlerId, claim_until: i64, now: i64) -> NewWorkRow {
        NewWorkRow {
            event_id: event_id.to_string(),
            listener: self.name(id),
            status: "pending",
            attempts: 0,
            next_attempt_at_ms: now,
            claimed_until_ms: claim_until,
            last_error: None,
            updated_at_ms: now,
        }
    }

    /// Work rows for the listeners other processes run.
    fn remote_work(&self, row: &NewInboxRow, now: i64) -> Vec<NewWorkRow> {
        if !self.split {
            return Vec::new();
        }
        self.wanting(&self.handlers, &row.event_type)
            .into_iter()
            .filter(|id| !self.mine.contains(id) && self.needs_work(*id))
            .map(|id| self.work_row(&row.event_id, id, 0, now))
            .collect()
    }

    /// What is left of an event after this process's listeners ran it at intake: a work row
    /// per listener that failed (to retry, or dead) or did not run because it is paused.
    fn left_after_intake(&self, row: &NewInboxRow, outcome: &Outcome, now: i64) -> Vec<NewWorkRow> {
        let mut left = Vec::new();
        for id in self.wanting(&self.mine, &row.event_type) {
            let name = self.name(id);
            let (error, deferred) = match outcome.processed.logs.iter().find(|l| l.handler == name)
            {
                Some(log) if log.success => continue,
                Some(log) if crate::db::listeners::is_rate_limited(log) => {
                    // Skipped over the listener's own quota: set aside, replayable.
                    let mut work = self.work_row(&row.event_id, id, 0, now);
                    work.attempts = 1;
                    work.status = "rate_limited";
                    work.last_error = Some(format!(
                        "{name}: {}",
                        log.error.as_deref().unwrap_or("rate limited")
                    ));
                    left.push(work);
                    continue;
                }
                Some(log) => (
                    Some(format!(
                        "{name}: {}",
                        log.error.as_deref().unwrap_or("failed")
                    )),
                    None,
                ),
                None => match outcome.deferred {
                    Some((_, at)) if self.is_paused(id) => (None, Some((name, at))),
                    // Disabled by an operator, or did not run at all: nothing to do.
                    _ => continue,
                },
            };
            let mut work = self.work_row(&row.event_id, id, 0, now);
            match self.verdict(&row.event_id, error, deferred, 0) {
                Verdict::Done => continue,
                Verdict::Retry {
                    retry_at_ms,
                    error,
                    counts_attempt,
                } => {
                    work.attempts = i32::from(counts_attempt);
                    work.status = if counts_attempt { "pending" } else { "parked" };
                    work.next_attempt_at_ms = retry_at_ms;
                    work.last_error = Some(error);
                }
                Verdict::Dead { error } => {
                    work.attempts = 1;
                    work.status = "dead";
                    work.last_error = Some(error);
                }
            }
            left.push(work);
        }
        left
    }

    /// Whether a listener is paused: disabled after failures, or its circuit breaker open.
    fn is_paused(&self, id: HandlerId) -> bool {
        self.processor.registry().get(id).is_some_and(|e| {
            e.auto_disabled() || e.health.open_until(std::time::Instant::now()).is_some()
        })
    }
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

/// Sets an inbox row's status from the work left of its event: `pending` while a listener
/// may still run it, `parked` while every one left waits for a paused listener, `dead` when
/// what is left is dead, `rate_limited` when it is only skips over listeners' own quotas.
fn summarise(row: &mut NewInboxRow, left: &[NewWorkRow]) {
    row.status = if left.iter().any(|w| w.status == "pending") {
        "pending"
    } else if left.iter().any(|w| w.status == "parked") {
        "parked"
    } else if left.iter().any(|w| w.status == "dead") {
        "dead"
    } else {
        "rate_limited"
    };
    row.attempts = left.iter().map(|w| w.attempts).max().unwrap_or(0);
    if let Some(next) = left
        .iter()
        .filter(|w| w.status != "dead" && w.status != "rate_limited")
        .map(|w| w.next_attempt_at_ms)
        .min()
    {
        row.next_attempt_at_ms = next;
    }
    if let Some(error) = left.iter().find_map(|w| w.last_error.clone()) {
        row.last_error = Some(error);
    }
}

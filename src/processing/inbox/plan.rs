//! Planning a verified batch before it is written: each event's inbox row and status (from
//! [`super::Admission`]), the events whose listeners are all pure run right here, the work
//! rows for what is left, and the events to hand to the workers once the batch is committed.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use super::Inbox;
use crate::clock::{millis, now_ms};
use crate::db::attempt::AttemptResult;
use crate::db::event_key::EventKey;
use crate::db::tables::inbox::{InboxStatus, NewInboxRow};
use crate::db::tables::inbox_work::{self, NewWorkRow, WorkStatus};
use crate::db::writer::IntakeBatch;
use crate::events::erasure::message_with_text;
use crate::events::forwarded::ForwardedEvent;
use crate::events::{Event, EventKind};
use crate::listeners::ListenerId;
use crate::processing::Outcome;

/// What intake decided for a batch: what to write, and what to do once it is committed.
pub(super) struct Plan {
    pub(super) batch: IntakeBatch,
    /// Every event of the batch, by its event id when it was the first with that id
    /// (else `None`: repeated within the batch), with its type.
    pub(super) order: Vec<(Option<String>, String)>,
    pub(super) dispatch: Dispatch,
}

/// What intake does once the batch is committed, for the events that turn out to be new.
#[derive(Default)]
pub(super) struct Dispatch {
    /// Events for the workers.
    pub(super) queued: Vec<Queued>,
    /// Events processed here that stay pending (a failure to retry): (realm, type, id).
    pub(super) waiting: Vec<(i64, String, String)>,
    /// Events processed here and done.
    pub(super) done: Vec<String>,
}

/// An event for a worker: its realm, the listeners that are to run it, and until when their
/// work is claimed for this process.
pub(super) struct Queued {
    pub(super) claim_until: i64,
    pub(super) realm_id: i64,
    pub(super) event_id: String,
    pub(super) event: Event,
    pub(super) listeners: Vec<(ListenerId, i32)>,
}

impl Plan {
    /// Marks `row` (the next to be pushed) done: nothing is left to track.
    fn finish(&mut self, row: &mut NewInboxRow) {
        row.status = InboxStatus::Done;
        row.attempts = 1;
        // The envelope is kept only while the event may be processed or replayed (the writer
        // puts it back if the event is rate-limited). The message id stays: a processed
        // message is still found by it (`zulip-listeners verify`, `GET /admin/inbox`).
        let index = self.batch.rows.len();
        self.batch
            .payloads
            .push((index, std::mem::take(&mut row.payload), row.message_id));
        self.dispatch.done.push(row.event_id.clone());
    }
}

impl Inbox {
    /// Plans a batch: one row per distinct event, processed here when every listener it
    /// needs is pure and no earlier event of its realm is still with a worker.
    pub(super) fn plan(&self, webhook_id: &str, events: Vec<ForwardedEvent>) -> Plan {
        let now = now_ms();
        let claim_until = now + millis(self.config.claim_lease);
        let mut plan = Plan {
            batch: IntakeBatch {
                webhook_id: webhook_id.to_string(),
                rows: Vec::with_capacity(events.len()),
                processed: Vec::with_capacity(events.len()),
                payloads: Vec::new(),
                work: Vec::new(),
                limits: self.admission.limits(),
            },
            order: Vec::with_capacity(events.len()),
            dispatch: Dispatch::default(),
        };
        let mut seen = HashSet::with_capacity(events.len());
        // Lanes this batch must not overtake: a worker has events of theirs, or an earlier
        // event of this batch went to their worker.
        let mut held: Vec<bool> = self
            .lanes
            .iter()
            .map(|lane| lane.outstanding.load(Ordering::Acquire) > 0)
            .collect();
        for event in events {
            if !seen.insert(event.event_id.clone()) {
                plan.order.push((None, event.event_type));
                continue;
            }
            plan.order
                .push((Some(event.event_id.clone()), event.event_type.clone()));
            let (status, reason) = self.admission.status(&event, now);
            if let Some(reason) = &reason {
                tracing::info!(event_id = %event.event_id, status = status.as_str(), %reason, "event stored, not dispatched");
            }
            // Filtered events keep only what de-duplication and counting need.
            let (payload, message_id) = match status {
                InboxStatus::Filtered => (String::new(), None),
                _ => (event.payload, message_with_text(&event.event.kind)),
            };
            let erases = match &event.event.kind {
                EventKind::DeleteMessage(delete) => delete.ids(),
                _ => Vec::new(),
            };
            let mut row = NewInboxRow {
                event_key: EventKey::of(&event.event_id),
                event_id: event.event_id,
                webhook_id: webhook_id.to_string(),
                realm_id: event.realm_id,
                realm: event.realm,
                user_id: event.user_id,
                event_type: event.event_type,
                op: event.op,
                payload,
                status,
                attempts: 0,
                next_attempt_at_ms: now,
                claimed_until_ms: 0,
                last_error: reason,
                emitted_at_ms: event.emitted_at_ms,
                received_at_ms: now,
                updated_at_ms: now,
                message_id,
                erases,
            };
            if status == InboxStatus::Pending {
                self.plan_pending(
                    &mut plan,
                    &mut row,
                    event.event,
                    &mut held,
                    claim_until,
                    now,
                );
            }
            plan.batch.rows.push(row);
        }
        plan
    }

    /// Plans a pending event (`row`, about to be pushed): run here, queued for a worker, or
    /// left as work rows for other processes.
    fn plan_pending(
        &self,
        plan: &mut Plan,
        row: &mut NewInboxRow,
        event: Event,
        held: &mut [bool],
        claim_until: i64,
        now: i64,
    ) {
        let index = plan.batch.rows.len();
        let lane = self.lane_of(&event);
        let outcome = (!held[lane] && self.processor.all_pure(&row.event_type, &self.mine))
            .then(|| self.processor.run_now(&event, &self.mine))
            .flatten();
        match outcome {
            Some(outcome)
                if !self.split && outcome.first_error.is_none() && outcome.deferred.is_none() =>
            {
                // Every listener ran it: nothing is left to track.
                plan.finish(row);
                plan.batch.processed.push((index, outcome.processed));
            }
            Some(outcome) => {
                // A listener failed or waits, or other processes run some: work rows for what
                // is left, effects of the runs that succeeded kept.
                let mut left = self.left_after_intake(row, &outcome, now);
                left.extend(self.remote_work(row, now));
                if left.is_empty() {
                    plan.finish(row);
                } else {
                    let settled = |w: &NewWorkRow| !w.status.is_open();
                    let tried = left.iter().any(|w| w.attempts > 0 && !settled(w));
                    summarise(row, &left);
                    if left
                        .iter()
                        .any(|w| !settled(w) && self.mine_names.contains(&w.listener))
                    {
                        held[lane] = true;
                    }
                    if row.status == InboxStatus::Pending && tried {
                        plan.dispatch.waiting.push((
                            row.realm_id,
                            row.event_type.clone(),
                            row.event_id.clone(),
                        ));
                    }
                    plan.batch.work.extend(left);
                }
                plan.batch.processed.push((index, outcome.processed));
            }
            None => {
                let local: Vec<ListenerId> = self
                    .wanting(&self.mine, &row.event_type)
                    .into_iter()
                    .filter(|&id| self.needs_work(id))
                    .collect();
                let before = plan.batch.work.len();
                for &id in &local {
                    plan.batch
                        .work
                        .push(self.work_row(&row.event_id, id, claim_until, now));
                }
                plan.batch.work.extend(self.remote_work(row, now));
                if !local.is_empty() {
                    held[lane] = true;
                    plan.dispatch.queued.push(Queued {
                        claim_until,
                        realm_id: row.realm_id,
                        event_id: row.event_id.clone(),
                        event,
                        listeners: local.into_iter().map(|id| (id, 0)).collect(),
                    });
                } else if plan.batch.work.len() == before {
                    // No listener wants it.
                    plan.finish(row);
                }
            }
        }
    }

    /// A pending work row for listener `id`, claimed by this process until `claim_until` (0:
    /// unclaimed).
    fn work_row(&self, event_id: &str, id: ListenerId, claim_until: i64, now: i64) -> NewWorkRow {
        NewWorkRow {
            event_id: event_id.to_string(),
            listener: self.name(id),
            status: WorkStatus::Pending,
            attempts: 0,
            next_attempt_at_ms: now,
            claimed_until_ms: claim_until,
            last_error: None,
            updated_at_ms: now,
            claimed_by: if claim_until > 0 {
                self.owner.clone()
            } else {
                String::new()
            },
        }
    }

    /// Work rows for the listeners other processes run.
    fn remote_work(&self, row: &NewInboxRow, now: i64) -> Vec<NewWorkRow> {
        if !self.split {
            return Vec::new();
        }
        self.wanting(&self.listeners, &row.event_type)
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
            let result = match outcome.processed.logs.iter().find(|l| l.listener == name) {
                Some(log) if log.success => continue,
                // Skipped over the listener's own quota: set aside, replayable.
                Some(log) if crate::db::tables::event_log::is_rate_limited(log) => {
                    AttemptResult::SetAside {
                        reason: format!(
                            "{name}: {}",
                            log.error.as_deref().unwrap_or("rate limited")
                        ),
                    }
                }
                Some(log) => {
                    let error = format!("{name}: {}", log.error.as_deref().unwrap_or("failed"));
                    self.decide_for(&row.event_id, Some(error), None, 0)
                }
                None => match outcome.deferred {
                    Some((_, at)) if self.is_paused(id) => {
                        self.decide_for(&row.event_id, None, Some((name, at)), 0)
                    }
                    // Disabled by an operator, or did not run at all: nothing to do.
                    _ => continue,
                },
            };
            let (Some(error), Some(status)) = (result.error(), result.work_status()) else {
                continue;
            };
            let mut work = self.work_row(&row.event_id, id, 0, now);
            work.attempts = i32::from(result.counts_attempt());
            work.status = status;
            if let Some(at) = result.due_at_ms() {
                work.next_attempt_at_ms = at;
            }
            work.last_error = Some(error.to_string());
            left.push(work);
        }
        left
    }

    /// Whether a listener is paused: disabled after failures, or its circuit breaker open.
    fn is_paused(&self, id: ListenerId) -> bool {
        self.processor.registry().get(id).is_some_and(|e| {
            e.auto_disabled() || e.health.open_until(std::time::Instant::now()).is_some()
        })
    }
}

/// Sets an inbox row's status from the work left of its event: `pending` while a listener
/// may still run it, `parked` while every one left waits for a paused listener, `dead` when
/// what is left is dead, `rate_limited` when it is only skips over listeners' own quotas.
fn summarise(row: &mut NewInboxRow, left: &[NewWorkRow]) {
    row.status = inbox_work::event_status(left.iter().map(|w| w.status));
    row.attempts = left.iter().map(|w| w.attempts).max().unwrap_or(0);
    if let Some(next) = left
        .iter()
        .filter(|w| w.status.is_open())
        .map(|w| w.next_attempt_at_ms)
        .min()
    {
        row.next_attempt_at_ms = next;
    }
    if let Some(error) = left.iter().find_map(|w| w.last_error.clone()) {
        row.last_error = Some(error);
    }
}

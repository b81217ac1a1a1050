//! The forwarder path: durable intake, workers, retries and dead letters.
//!
//! A verified batch is written to the `inbox` table in one transaction and acknowledged only
//! after the commit. Newly stored events then go straight to in-memory worker queues (one
//! queue per worker, chosen by realm, so each realm's events are handled in order). Each
//! event's handler effects, event-log rows and new inbox status are committed together.
//! A failed event is retried with exponential back-off and, once `max_retries` is used up,
//! marked dead; operators replay dead letters with `zulip-listeners dead-letters replay`.
//!
//! Nothing acknowledged is lost: events handed to workers are *claimed* in the database
//! until a lease runs out, and a sweeper picks up whatever is due and unclaimed — retries,
//! replays, and everything left pending by a crash.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use dashmap::DashSet;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::Processor;
use crate::config::{Config, ForwarderConfig};
use crate::db::models::NewInboxRow;
use crate::db::writer::{AfterCommit, InboxOutcome, IntakeWriteError, WriteOp, Writer};
use crate::db::{Backend, Db, DbError, now_ms, store};
use crate::events::Event;
use crate::events::forwarded::{ForwardedEvent, parse_stored};
use crate::filters::Filters;
use crate::handlers::HandlerId;
use crate::ratelimit::Limits;
use crate::telemetry::metric;

/// Events a worker queue holds before intake leaves the rest to the sweeper.
const QUEUE_CAPACITY: usize = 8_192;
/// Rows the sweeper claims per query.
const SWEEP_BATCH: i64 = 1_000;
/// How often the sweeper looks for due events.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Longest back-off between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// One event for a worker.
struct Work {
    event_id: String,
    event: Event,
    attempts: i32,
}

/// Keeps an event id in the in-flight set until dropped (after the commit of its result).
struct InFlight {
    set: Arc<DashSet<String>>,
    event_id: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.set.remove(&self.event_id);
    }
}

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
    /// The whole batch (`webhook-id`) had been accepted before.
    pub duplicate_batch: bool,
}

/// What decides whether a forwarded event is dispatched: its age, the filters, and the rate
/// limits.
pub struct Admission {
    filters: Arc<Filters>,
    limits: Option<Limits>,
    max_event_age: Option<Duration>,
    max_backlog: u64,
    writer_wait: Duration,
}

impl Admission {
    pub fn new(config: &Config, filters: Arc<Filters>) -> Admission {
        let limits = config.rate_limits.enabled.then(|| {
            let (per_realm, per_user) = config
                .rate_limits
                .quotas(&config.rate_limits.forwarder, None);
            Limits::new(&per_realm, &per_user)
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
    fn status(&self, event: &ForwardedEvent, now_ms: i64) -> (&'static str, Option<String>) {
        if let (Some(age), Some(at)) = (self.max_event_age, event.emitted_at_ms)
            && now_ms.saturating_sub(at) > millis(age)
        {
            let why = format!(
                "emitted {} s ago, over filters.max_event_age",
                (now_ms - at) / 1000
            );
            return ("expired", Some(why));
        }
        if let Some(why) = self.filters.reject(&event.event.realm, event.user_id) {
            return ("filtered", Some(why));
        }
        if let Some(limits) = &self.limits
            && let Some(why) = limits.check(event.realm_id, event.user_id).reason()
        {
            return ("rate_limited", Some(why));
        }
        ("pending", None)
    }
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

/// The inbox service.
pub struct Inbox {
    processor: Processor,
    writer: Writer,
    db: Db,
    handlers: Arc<[HandlerId]>,
    queues: Vec<mpsc::Sender<Work>>,
    in_flight: Arc<DashSet<String>>,
    config: ForwarderConfig,
    admission: Admission,
    /// Pending events this server knows of (stored, not yet done or dead).
    backlog: Arc<AtomicI64>,
}

/// The running workers and sweeper, to be stopped at shutdown.
pub struct InboxTasks {
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl InboxTasks {
    /// Lets each worker finish the event in hand, then stops them all.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

impl Inbox {
    /// Starts the workers and the sweeper. On SQLite (one server per database) claims left
    /// by a previous run are released first, so a crash's leftovers are processed at once.
    pub async fn start(
        processor: Processor,
        db: Db,
        handlers: Vec<HandlerId>,
        admission: Admission,
        config: ForwarderConfig,
    ) -> Result<(Arc<Inbox>, InboxTasks), DbError> {
        let pending = db
            .run(|c| {
                Ok(store::inbox_counts(c)?
                    .into_iter()
                    .find(|(s, _)| s == "pending"))
            })
            .await?
            .map_or(0, |(_, n)| n);
        if db.backend() == Backend::Sqlite {
            let released = db.run(store::release_all_claims).await?;
            if released > 0 {
                tracing::info!(
                    released,
                    "events left in progress by the previous run are due again"
                );
            }
        }
        let (shutdown, watch_rx) = watch::channel(false);
        let mut queues = Vec::new();
        let mut receivers = Vec::new();
        for _ in 0..config.workers.max(1) {
            let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
            queues.push(tx);
            receivers.push(rx);
        }
        let inbox = Arc::new(Inbox {
            writer: processor.writer().clone(),
            processor,
            db,
            handlers: handlers.into(),
            queues,
            in_flight: Arc::new(DashSet::new()),
            config,
            admission,
            backlog: Arc::new(AtomicI64::new(pending)),
        });
        let mut tasks = Vec::new();
        for rx in receivers {
            tasks.push(tokio::spawn(inbox.clone().work(rx, watch_rx.clone())));
        }
        tasks.push(tokio::spawn(inbox.clone().sweep(watch_rx)));
        Ok((inbox, InboxTasks { shutdown, tasks }))
    }

    /// Stores a verified batch (one transaction) and hands the new events to the workers.
    /// Returns only after the commit; `Err` means nothing was acknowledged.
    pub async fn accept(
        &self,
        webhook_id: &str,
        events: Vec<ForwardedEvent>,
    ) -> Result<IntakeSummary, IntakeError> {
        let backlog = self.backlog.load(Ordering::Relaxed);
        if backlog > i64::try_from(self.admission.max_backlog).unwrap_or(i64::MAX) {
            return Err(IntakeError::Busy(format!(
                "{backlog} events are waiting to be processed (forwarder.max_backlog {})",
                self.admission.max_backlog
            )));
        }
        let now = now_ms();
        let claim_until = now + millis(self.config.claim_lease);
        let mut summary = IntakeSummary::default();
        let mut seen = HashSet::with_capacity(events.len());
        let mut rows = Vec::with_capacity(events.len());
        let mut work = Vec::with_capacity(events.len());
        for event in events {
            if !seen.insert(event.event_id.clone()) {
                summary.duplicates += 1;
                metric::event_received("forwarder", &event.event_type, "duplicate");
                continue;
            }
            let (status, reason) = self.admission.status(&event, now);
            let pending = status == "pending";
            metric::event_received(
                "forwarder",
                &event.event_type,
                if pending { "accepted" } else { status },
            );
            if let Some(reason) = &reason {
                tracing::info!(event_id = %event.event_id, status, %reason, "event stored, not dispatched");
            }
            rows.push(NewInboxRow {
                event_id: event.event_id.clone(),
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
                claimed_until_ms: if pending { claim_until } else { 0 },
                last_error: reason,
                emitted_at_ms: event.emitted_at_ms,
                received_at_ms: now,
                updated_at_ms: now,
            });
            match status {
                "expired" => summary.expired += 1,
                "filtered" => summary.filtered += 1,
                "rate_limited" => summary.rate_limited += 1,
                _ => {}
            }
            if pending {
                work.push(Work {
                    event_id: event.event_id,
                    event: event.event,
                    attempts: 0,
                });
            }
        }
        let stored = self
            .writer
            .intake(webhook_id.to_string(), rows, self.admission.writer_wait)
            .await
            .map_err(|e| match e {
                IntakeWriteError::Busy => {
                    IntakeError::Busy("the database writer is behind; try again shortly".into())
                }
                IntakeWriteError::Failed(e) => IntakeError::Failed(e),
            })?;
        if stored.duplicate_batch {
            return Ok(IntakeSummary {
                duplicate_batch: true,
                duplicates: seen.len() + summary.duplicates,
                ..IntakeSummary::default()
            });
        }
        summary.duplicates += stored.known.len();
        let not_dispatched = summary.expired + summary.filtered + summary.rate_limited;
        summary.accepted = seen.len() - stored.known.len() - not_dispatched;
        let mut released = Vec::new();
        for item in work {
            if stored.known.contains(&item.event_id) {
                continue;
            }
            self.backlog.fetch_add(1, Ordering::Relaxed);
            if let Err(event_id) = self.dispatch(item) {
                released.push(event_id);
            }
        }
        if !released.is_empty() {
            tracing::warn!(
                count = released.len(),
                "worker queues are full; the sweeper will take these events"
            );
            self.writer.send(WriteOp::Release(released)).await;
        }
        Ok(summary)
    }

    /// Forgets idle rate-limit keys; returns the keys still tracked.
    pub fn limiter_housekeeping(&self) -> usize {
        self.admission
            .limits
            .as_ref()
            .map_or(0, Limits::housekeeping)
    }

    /// Queues an event for the worker of its realm; gives its id back when the queue is full.
    fn dispatch(&self, item: Work) -> Result<(), String> {
        let queue = self.queue_for(&item.event);
        self.in_flight.insert(item.event_id.clone());
        match queue.try_send(item) {
            Ok(()) => Ok(()),
            Err(
                mpsc::error::TrySendError::Full(item) | mpsc::error::TrySendError::Closed(item),
            ) => {
                self.in_flight.remove(&item.event_id);
                Err(item.event_id)
            }
        }
    }

    /// Each realm's events go to one worker, so that they are handled in order.
    fn queue_for(&self, event: &Event) -> &mpsc::Sender<Work> {
        let realm = event.realm.id.unwrap_or_default().unsigned_abs();
        let index = usize::try_from(realm % self.queues.len() as u64).unwrap_or(0);
        &self.queues[index]
    }

    async fn work(
        self: Arc<Self>,
        mut queue: mpsc::Receiver<Work>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let item = tokio::select! {
                biased;
                _ = shutdown.changed() => return,
                item = queue.recv() => match item {
                    Some(item) => item,
                    None => return,
                },
            };
            self.process(item).await;
        }
    }

    async fn process(&self, item: Work) {
        let outcome = self
            .processor
            .run(
                &item.event,
                &self.handlers,
                Some(self.config.handler_timeout),
                None,
            )
            .await;
        let mut processed = outcome.processed;
        if let (None, Some((handler, until_ms))) = (&outcome.first_error, outcome.deferred) {
            // A handler it needs is paused by its circuit breaker: keep the event pending
            // until the breaker lets a trial run through, without counting an attempt.
            processed.effects.clear();
            processed.after_commit = Some(AfterCommit(Box::new(InFlight {
                set: self.in_flight.clone(),
                event_id: item.event_id.clone(),
            })));
            processed.inbox = Some(InboxOutcome {
                event_id: item.event_id.clone(),
                attempts_before: item.attempts,
                counts_attempt: false,
                failure: Some((
                    Some(until_ms),
                    format!(
                        "waiting for `{handler}`: its circuit breaker is open or it was disabled after failures"
                    ),
                )),
            });
            self.writer
                .send(WriteOp::Processed(Box::new(processed)))
                .await;
            return;
        }
        if outcome.first_error.is_some() {
            // A failed event runs all its handlers again; applying the effects of the ones
            // that succeeded now would apply them twice.
            processed.effects.clear();
        }
        // The event stays "in flight" (hidden from the sweeper) until its result is committed.
        processed.after_commit = Some(AfterCommit(Box::new(InFlight {
            set: self.in_flight.clone(),
            event_id: item.event_id.clone(),
        })));
        let finished = match &outcome.first_error {
            None => true,
            Some(_) => {
                u32::try_from(item.attempts + 1).unwrap_or(u32::MAX) > self.config.max_retries
            }
        };
        if finished {
            // Clamped: replays from the command line were never counted in.
            let _ = self
                .backlog
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    Some((n - 1).max(0))
                });
        }
        let failure = outcome.first_error.map(|error| {
            let retry_at = (!finished)
                .then(|| now_ms() + millis(backoff(self.config.retry_delay, item.attempts + 1)));
            if finished {
                tracing::error!(
                    event_id = %item.event_id,
                    attempts = item.attempts + 1,
                    %error,
                    "event failed too often; moved to dead letters"
                );
            }
            (retry_at, error)
        });
        processed.inbox = Some(InboxOutcome {
            event_id: item.event_id.clone(),
            attempts_before: item.attempts,
            counts_attempt: true,
            failure,
        });
        // `in_flight` is cleared by the guard once the writer has committed this.
        self.writer
            .send(WriteOp::Processed(Box::new(processed)))
            .await;
    }

    async fn sweep(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(SWEEP_INTERVAL) => {}
            }
            loop {
                match self.sweep_once().await {
                    Ok(claimed) if claimed >= SWEEP_BATCH as usize => continue,
                    Ok(_) => break,
                    Err(error) => {
                        tracing::warn!(%error, "inbox sweep failed; trying again shortly");
                        break;
                    }
                }
            }
        }
    }

    /// Claims due events and queues them; returns how many were claimed.
    async fn sweep_once(&self) -> Result<usize, DbError> {
        let skip: HashSet<String> = self.in_flight.iter().map(|id| id.clone()).collect();
        let claim_until = now_ms() + millis(self.config.claim_lease);
        let rows = self
            .db
            .run(move |c| store::claim_due(c, SWEEP_BATCH, claim_until, &skip))
            .await?;
        let claimed = rows.len();
        for row in rows {
            let event = match parse_stored(&row.payload) {
                Ok(parsed) => parsed.event,
                Err(e) => {
                    let processed = crate::db::writer::Processed {
                        inbox: Some(InboxOutcome {
                            event_id: row.event_id,
                            attempts_before: row.attempts,
                            counts_attempt: true,
                            failure: Some((
                                None,
                                format!("stored envelope cannot be read: {}", e.0),
                            )),
                        }),
                        ..Default::default()
                    };
                    self.writer
                        .send(WriteOp::Processed(Box::new(processed)))
                        .await;
                    continue;
                }
            };
            let queue = self.queue_for(&event);
            self.in_flight.insert(row.event_id.clone());
            let work = Work {
                event_id: row.event_id,
                event,
                attempts: row.attempts,
            };
            if let Err(e) = queue.send(work).await {
                self.in_flight.remove(&e.0.event_id);
            }
        }
        if claimed > 0 {
            tracing::debug!(claimed, "sweeper queued due events");
        }
        Ok(claimed)
    }
}

/// `retry_delay × 2^(attempts − 1)`, at most an hour.
fn backoff(base: Duration, attempts: i32) -> Duration {
    let exponent = u32::try_from(attempts.saturating_sub(1))
        .unwrap_or(0)
        .min(20);
    base.saturating_mul(1u32 << exponent).min(MAX_BACKOFF)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let base = Duration::from_secs(2);
        assert_eq!(backoff(base, 1), Duration::from_secs(2));
        assert_eq!(backoff(base, 2), Duration::from_secs(4));
        assert_eq!(backoff(base, 5), Duration::from_secs(32));
        assert_eq!(backoff(base, 40), MAX_BACKOFF);
    }
}

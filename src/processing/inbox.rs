//! The forwarder path: durable intake, workers, retries and dead letters.
//!
//! A verified batch is written to the `inbox` table in one transaction and acknowledged only
//! after the commit. Newly stored events then go straight to in-memory worker queues (one
//! queue per worker, chosen by realm, so each realm's events are handled in order). Each
//! event's handler effects, event-log rows and new inbox status are committed together.
//! A failed event is retried with exponential back-off and, once `max_retries` is used up,
//! marked dead; operators replay dead letters with `zulip-listeners dead-letters replay`.
//!
//! Work is tracked per (event, listener): every listener run not completed at intake has an
//! `inbox_work` row, deleted in the transaction that commits that listener's effects and
//! event-log row; the inbox row's status sums up what is left (`done` when nothing is). A
//! retry or a replay runs only the listeners that did not succeed. With `serve --listeners`
//! a process runs only some listeners and leaves the others' work to the processes that run
//! them (PostgreSQL; see [`super::processes`]).
//!
//! Nothing acknowledged is lost: work handed to workers is *claimed* in the database until a
//! lease runs out, and a sweeper picks up whatever of its listeners' work is due and
//! unclaimed — retries, replays, and everything left pending by a crash.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::{DashMap, DashSet};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::{Outcome, Processor};
use crate::clock::{millis, now_ms};
use crate::config::{Config, ForwarderConfig};
use crate::db::tables::inbox::{InboxStatus, NewInboxRow};
use crate::db::tables::inbox_work::{self, NewWorkRow, WorkStatus};
use crate::db::writer::{
    AfterCommit, InboxOutcome, IntakeBatch, IntakeWriteError, WriteOp, Writer,
};
use crate::db::{Backend, Db, DbError, tables};
use crate::events::Event;
use crate::events::forwarded::{ForwardedEvent, parse_stored};
use crate::filters::Filters;
use crate::listeners::ListenerId as HandlerId;
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

/// One event for a worker, tracked as in flight until its result is committed.
struct Work {
    event: Event,
    /// This process's listeners that still have to run the event (in configuration order),
    /// with the attempts each has made.
    listeners: Vec<(HandlerId, i32)>,
    guard: InFlight,
    /// The event's realm, and whether it is counted in that realm's backlog (it is pending,
    /// not parked).
    realm_id: i64,
    counted: bool,
}

/// Keeps an event id in the in-flight set, and counted in its lane, until dropped (after the
/// commit of its result).
struct InFlight {
    set: Arc<DashSet<String>>,
    lane: Arc<AtomicUsize>,
    event_id: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.set.remove(&self.event_id);
        self.lane.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One worker's queue. Each realm's events go to one lane, so that they are handled in order.
struct Lane {
    queue: mpsc::Sender<Work>,
    /// Events queued or being processed in this lane, until their result is committed. A lane
    /// with none lets new events of its realms be processed at intake without overtaking any.
    outstanding: Arc<AtomicUsize>,
}

/// What one attempt at an event comes to.
enum Verdict {
    Done,
    /// Pending again, due at `retry_at_ms`; `counts_attempt` is false when the event was
    /// deferred (a handler it needs is paused) without being tried.
    Retry {
        retry_at_ms: i64,
        error: String,
        counts_attempt: bool,
    },
    Dead {
        error: String,
    },
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
    /// Of the accepted events, those already processed when the batch was acknowledged (their
    /// handlers are all pure); the others are with the workers.
    pub processed: usize,
    /// The whole batch (`webhook-id`) had been accepted before.
    pub duplicate_batch: bool,
}

/// What decides whether a forwarded event is dispatched: its age, the filters, and the rate
/// limits.
pub struct Admission {
    filters: Arc<Filters>,
    limits: Option<Arc<Limits>>,
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
    fn status(&self, event: &ForwardedEvent, now_ms: i64) -> (InboxStatus, Option<String>) {
        if let (Some(age), Some(at)) = (self.max_event_age, event.emitted_at_ms)
            && now_ms.saturating_sub(at) > millis(age)
        {
            let why = format!(
                "emitted {} s ago, over filters.max_event_age",
                now_ms.saturating_sub(at) / 1000
            );
            return (InboxStatus::Expired, Some(why));
        }
        if let Some(why) = self.filters.reject(&event.event.realm, event.user_id) {
            return (InboxStatus::Filtered, Some(why));
        }
        // Rate limits are charged by the writer, once it knows which events are new.
        (InboxStatus::Pending, None)
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
    /// Every forwarder listener (`[forwarder] handlers`): each enabled one runs every
    /// forwarded event it wants exactly once, in whichever process runs it.
    handlers: Arc<[HandlerId]>,
    /// The listeners this process runs (`serve --listeners`; all of them by default).
    mine: Arc<[HandlerId]>,
    mine_names: Vec<&'static str>,
    /// `mine` is not every listener: other processes run the rest.
    split: bool,
    /// The enabled listeners no live process runs (PostgreSQL; see [`super::processes`]).
    pub coverage: Arc<super::processes::Coverage>,
    lanes: Vec<Lane>,
    in_flight: Arc<DashSet<String>>,
    config: ForwarderConfig,
    admission: Admission,
    /// Pending events this server knows of (stored, not yet done, dead or parked), per
    /// realm and per listener they wait for: a realm whose events pile up behind one handler
    /// is refused new batches of events that need that handler; other handlers' events and
    /// other realms are not.
    backlog: Backlog,
}

/// What a pending event is counted against: its realm, and a non-pure handler it waits for
/// (`None`: it waits only for pure handlers, queued behind earlier events of its realm).
type BacklogKey = (i64, Option<HandlerId>);

/// Pending events per [`BacklogKey`]. An event that needs several non-pure handlers is
/// counted against each of them.
#[derive(Default)]
struct Backlog(DashMap<BacklogKey, i64>);

impl Backlog {
    fn add(&self, key: BacklogKey, n: i64) {
        if n != 0 {
            *self.0.entry(key).or_insert(0) += n;
        }
    }

    /// One fewer; clamped at zero (replays from the command line were never counted in).
    fn done(&self, key: BacklogKey) {
        if let Some(mut n) = self.0.get_mut(&key) {
            *n = (*n - 1).max(0);
        }
    }

    fn of(&self, key: BacklogKey) -> i64 {
        self.0.get(&key).map_or(0, |n| *n)
    }
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
        mine: Option<Vec<HandlerId>>,
        admission: Admission,
        config: ForwarderConfig,
    ) -> Result<(Arc<Inbox>, InboxTasks), DbError> {
        let mine = mine.unwrap_or_else(|| handlers.clone());
        let split = handlers.iter().any(|id| !mine.contains(id));
        let mine_names: Vec<&'static str> = mine
            .iter()
            .filter_map(|&id| processor.handler_name(id))
            .collect();
        let pending = db.run(tables::inbox::pending_by_realm_and_type).await?;
        let backlog = Backlog::default();
        for (realm_id, event_type, n) in pending {
            for listener in waits_for(&processor, &mine, &event_type) {
                backlog.add((realm_id, listener), n);
            }
        }
        if db.backend() == Backend::Sqlite {
            let released = db.run(tables::inbox_work::release_all_claims).await?;
            if released > 0 {
                tracing::info!(
                    released,
                    "events left in progress by the previous run are due again"
                );
            }
        }
        let (shutdown, watch_rx) = watch::channel(false);
        let mut lanes = Vec::new();
        let mut receivers = Vec::new();
        for _ in 0..config.workers.max(1) {
            let (queue, rx) = mpsc::channel(QUEUE_CAPACITY);
            lanes.push(Lane {
                queue,
                outstanding: Arc::new(AtomicUsize::new(0)),
            });
            receivers.push(rx);
        }
        let inbox = Arc::new(Inbox {
            writer: processor.writer().clone(),
            processor,
            db,
            handlers: handlers.into(),
            mine: mine.into(),
            mine_names,
            split,
            coverage: Arc::default(),
            lanes,
            in_flight: Arc::new(DashSet::new()),
            config,
            admission,
            backlog,
        });
        let mut tasks = Vec::new();
        for rx in receivers {
            tasks.push(tokio::spawn(inbox.clone().work(rx, watch_rx.clone())));
        }
        if inbox.db.backend() == Backend::Postgres {
            tasks.push(tokio::spawn(super::processes::run(
                inbox.db.clone(),
                inbox.processor.clone(),
                inbox.handlers.clone(),
                inbox.mine_names.clone(),
                inbox.coverage.clone(),
                watch_rx.clone(),
            )));
        }
        tasks.push(tokio::spawn(inbox.clone().sweep(watch_rx)));
        Ok((inbox, InboxTasks { shutdown, tasks }))
    }

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
            let pending = status == InboxStatus::Pending;
            if let Some(reason) = &reason {
                tracing::info!(event_id = %event.event_id, status = status.as_str(), %reason, "event stored, not dispatched");
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
                        row.status = InboxStatus::Done;
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
                            row.status = InboxStatus::Done;
                            row.attempts = 1;
                            payloads.push((rows.len(), std::mem::take(&mut row.payload)));
                            done.push(row.event_id.clone());
                        } else {
                            let settled = |w: &NewWorkRow| !w.status.is_open();
                            let tried = left.iter().any(|w| w.attempts > 0 && !settled(w));
                            summarise(&mut row, &left);
                            if left
                                .iter()
                                .any(|w| !settled(w) && self.mine_names.contains(&w.listener))
                            {
                                held[lane] = true;
                            }
                            if row.status == InboxStatus::Pending && tried {
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
                            row.status = InboxStatus::Done;
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
        let statuses: std::collections::HashMap<String, InboxStatus> = rows
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

    /// The listeners that get forwarded events.
    pub fn listeners(&self) -> &[HandlerId] {
        &self.handlers
    }

    /// On SQLite this one server runs every forwarder listener: each has one live process
    /// (`zulip_listeners_listener_live_processes`; on PostgreSQL the heartbeat sets it).
    pub fn refresh_gauges(&self) {
        if self.db.backend() == Backend::Sqlite {
            for &id in self.handlers.iter() {
                metric::listener_live_processes(self.name(id), 1);
            }
        }
    }

    /// Forgets idle rate-limit keys; returns the keys still tracked.
    pub fn limiter_housekeeping(&self) -> usize {
        self.admission
            .limits
            .as_ref()
            .map_or(0, |limits| limits.housekeeping())
    }

    /// Marks an event in flight, counted in its lane, and wraps it for the lane's worker.
    /// Dropping the work (a full queue) undoes both.
    fn track(
        &self,
        lane: usize,
        event_id: String,
        event: Event,
        listeners: Vec<(HandlerId, i32)>,
        realm_id: i64,
        counted: bool,
    ) -> Work {
        self.in_flight.insert(event_id.clone());
        let outstanding = self.lanes[lane].outstanding.clone();
        outstanding.fetch_add(1, Ordering::AcqRel);
        Work {
            event,
            listeners,
            realm_id,
            counted,
            guard: InFlight {
                set: self.in_flight.clone(),
                lane: outstanding,
                event_id,
            },
        }
    }

    /// The listeners an event of `event_type` is counted against (see [`BacklogKey`]).
    fn waits_for(&self, event_type: &str) -> Vec<Option<HandlerId>> {
        waits_for(&self.processor, &self.mine, event_type)
    }

    /// The listeners of `list` that want `event_type`, in order.
    fn wanting(&self, list: &[HandlerId], event_type: &str) -> Vec<HandlerId> {
        let registry = &self.processor.registry();
        list.iter()
            .copied()
            .filter(|&id| registry.get(id).is_some_and(|e| e.wants_type(event_type)))
            .collect()
    }

    /// Whether a listener gets work: it is enabled, or disabled after failures (events wait
    /// for it). A listener disabled by an operator is left out, as it is from a run.
    fn needs_work(&self, id: HandlerId) -> bool {
        self.processor
            .registry()
            .get(id)
            .is_some_and(|e| e.enabled() || e.auto_disabled())
    }

    fn name(&self, id: HandlerId) -> &'static str {
        self.processor.handler_name(id).unwrap_or("unknown")
    }

    /// A pending work row for listener `id`, claimed until `claim_until` (0: unclaimed).
    fn work_row(&self, event_id: &str, id: HandlerId, claim_until: i64, now: i64) -> NewWorkRow {
        NewWorkRow {
            event_id: event_id.to_string(),
            listener: self.name(id),
            status: WorkStatus::Pending,
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
            let (error, deferred) = match outcome.processed.logs.iter().find(|l| l.listener == name)
            {
                Some(log) if log.success => continue,
                Some(log) if crate::db::tables::event_log::is_rate_limited(log) => {
                    // Skipped over the listener's own quota: set aside, replayable.
                    let mut work = self.work_row(&row.event_id, id, 0, now);
                    work.attempts = 1;
                    work.status = WorkStatus::RateLimited;
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
                    work.status = if counts_attempt {
                        WorkStatus::Pending
                    } else {
                        WorkStatus::Parked
                    };
                    work.next_attempt_at_ms = retry_at_ms;
                    work.last_error = Some(error);
                }
                Verdict::Dead { error } => {
                    work.attempts = 1;
                    work.status = WorkStatus::Dead;
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

    /// Counts one more pending event of `realm_id` and `event_type`.
    fn count_in(&self, realm_id: i64, event_type: &str) {
        for listener in self.waits_for(event_type) {
            self.backlog.add((realm_id, listener), 1);
        }
    }

    /// Each realm's events go to one lane, so that they are handled in order.
    fn lane_of(&self, event: &Event) -> usize {
        let realm = event.realm.id.unwrap_or_default().unsigned_abs();
        usize::try_from(realm % self.lanes.len() as u64).unwrap_or(0)
    }

    /// What an attempt comes to. Effects are kept only when the event is done: a failed or
    /// deferred event runs all its handlers again, and applying the effects of the ones that
    /// succeeded now would apply them twice. Records of deliveries already made (alerts) are
    /// kept in every case: the retry skips them.
    fn judge(&self, event_id: &str, outcome: &mut Outcome, attempts_before: i32) -> Verdict {
        if outcome.first_error.is_some() || outcome.deferred.is_some() {
            // Deliveries already made stay recorded, so that the retry does not repeat them.
            outcome
                .processed
                .effects
                .retain(crate::db::writer::Effect::records_delivery);
        }
        self.verdict(
            event_id,
            outcome.first_error.take(),
            outcome
                .deferred
                .as_ref()
                .map(|(name, at)| (name.as_str(), *at)),
            attempts_before,
        )
    }

    /// What a failure (`error`), or a listener that is paused (`deferred`), comes to after
    /// `attempts_before` attempts.
    fn verdict(
        &self,
        event_id: &str,
        error: Option<String>,
        deferred: Option<(&str, i64)>,
        attempts_before: i32,
    ) -> Verdict {
        let Some(error) = error else {
            if let Some((handler, until_ms)) = deferred {
                // A listener it needs is paused by its circuit breaker: keep the work pending
                // until the breaker lets a trial run through, without counting an attempt.
                return Verdict::Retry {
                    retry_at_ms: until_ms,
                    error: tables::inbox_work::parked_reason(handler),
                    counts_attempt: false,
                };
            }
            return Verdict::Done;
        };
        let attempts = attempts_before.saturating_add(1);
        if u32::try_from(attempts).unwrap_or(u32::MAX) > self.config.max_retries {
            tracing::error!(
                event_id,
                attempts,
                %error,
                "event failed too often; moved to dead letters"
            );
            Verdict::Dead { error }
        } else {
            Verdict::Retry {
                retry_at_ms: now_ms() + millis(backoff(self.config.retry_delay, attempts)),
                error,
                counts_attempt: true,
            }
        }
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
        let Work {
            event,
            listeners,
            guard,
            realm_id,
            counted,
        } = item;
        // Each listener's run is its own result (its effects, event-log row and work row
        // committed together), so that one listener's failure never repeats another's run.
        let mut results = Vec::with_capacity(listeners.len());
        let mut retrying = false;
        for (id, attempts) in listeners {
            let mut outcome = self
                .processor
                .run(&event, &[id], Some(self.config.handler_timeout), None)
                .await;
            let skipped = outcome
                .processed
                .logs
                .iter()
                .find(|l| crate::db::tables::event_log::is_rate_limited(l))
                .map(|l| format!("{}: {}", self.name(id), l.error.as_deref().unwrap_or("")));
            let verdict = self.judge(&guard.event_id, &mut outcome, attempts);
            let (counts_attempt, failure) = match verdict {
                // Skipped over the listener's own quota: set aside, replayable, not retried.
                _ if skipped.is_some() => (true, skipped.clone().map(|e| (None, e))),
                Verdict::Done => (true, None),
                Verdict::Retry {
                    retry_at_ms,
                    error,
                    counts_attempt,
                } => {
                    retrying |= counts_attempt;
                    (counts_attempt, Some((Some(retry_at_ms), error)))
                }
                Verdict::Dead { error } => (true, Some((None, error))),
            };
            let mut processed = outcome.processed;
            processed.inbox = Some(InboxOutcome {
                event_id: guard.event_id.clone(),
                listener: self.name(id),
                attempts_before: attempts,
                counts_attempt,
                failure,
                rate_limited: skipped.is_some(),
            });
            results.push(processed);
        }
        // Finished or parked: out of the realm's backlog, if it was in (a parked event is
        // not, nor is it when it runs again).
        if counted && !retrying {
            for listener in self.waits_for(event.event_type()) {
                self.backlog.done((realm_id, listener));
            }
        }
        // The event stays in flight (hidden from the sweeper, its lane busy) until the writer
        // has committed its results, together, and drops the guard.
        match results.last_mut() {
            Some(last) => last.after_commit = Some(AfterCommit(Box::new(guard))),
            None => drop(guard),
        }
        self.writer.send(WriteOp::ProcessedAll(results)).await;
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

    /// Claims due work of this process's listeners and queues it, one item per event;
    /// returns how many work rows were claimed.
    async fn sweep_once(&self) -> Result<usize, DbError> {
        let skip: HashSet<String> = self.in_flight.iter().map(|id| id.clone()).collect();
        let claim_until = now_ms() + millis(self.config.claim_lease);
        let names = self.mine_names.clone();
        let processor = self.processor.clone();
        let all = self.handlers.clone();
        let rows = self
            .db
            .run(move |c| {
                let wanted_by = |event_type: &str| -> Vec<&'static str> {
                    let registry = processor.registry();
                    all.iter()
                        .copied()
                        .filter(|&id| {
                            registry.get(id).is_some_and(|e| {
                                e.wants_type(event_type) && (e.enabled() || e.auto_disabled())
                            })
                        })
                        .filter_map(|id| processor.handler_name(id))
                        .collect()
                };
                tables::claims::claim_work(c, SWEEP_BATCH, claim_until, &skip, &names, &wanted_by)
            })
            .await?;
        let claimed = rows.len();
        let registry = self.processor.registry().clone();
        let mut rows = rows.into_iter().peekable();
        while let Some(first) = rows.next() {
            let mut group = vec![first];
            while let Some(next) = rows.next_if(|r| r.event_id == group[0].event_id) {
                group.push(next);
            }
            let head = &group[0];
            let event = match parse_stored(&head.payload) {
                Ok(parsed) => parsed.event,
                Err(e) => {
                    for row in &group {
                        let Some(listener) =
                            self.mine_names.iter().copied().find(|n| *n == row.listener)
                        else {
                            continue;
                        };
                        let processed = crate::db::writer::Processed {
                            inbox: Some(InboxOutcome {
                                event_id: row.event_id.clone(),
                                listener,
                                attempts_before: row.attempts,
                                counts_attempt: true,
                                failure: Some((
                                    None,
                                    format!("stored envelope cannot be read: {}", e.0),
                                )),
                                rate_limited: false,
                            }),
                            ..Default::default()
                        };
                        self.writer
                            .send(WriteOp::Processed(Box::new(processed)))
                            .await;
                    }
                    continue;
                }
            };
            let mut listeners: Vec<(HandlerId, i32)> = group
                .iter()
                .filter_map(|r| registry.id(&r.listener).map(|id| (id, r.attempts)))
                .collect();
            listeners.sort_by_key(|(id, _)| self.mine.iter().position(|m| m == id));
            let counted = group.iter().any(|r| r.status == WorkStatus::Pending);
            let lane = self.lane_of(&event);
            let work = self.track(
                lane,
                head.event_id.clone(),
                event,
                listeners,
                head.realm_id,
                counted,
            );
            // A closed queue (shutting down) drops the work, which releases it.
            let _ = self.lanes[lane].queue.send(work).await;
        }
        if claimed > 0 {
            tracing::debug!(claimed, "sweeper queued due work");
        }
        Ok(claimed)
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

/// The non-pure handlers of `handlers` that want `event_type`, or `[None]` when there is
/// none (see [`BacklogKey`]).
fn waits_for(
    processor: &Processor,
    handlers: &[HandlerId],
    event_type: &str,
) -> Vec<Option<HandlerId>> {
    let impure = processor.impure_for(event_type, handlers);
    if impure.is_empty() {
        vec![None]
    } else {
        impure.into_iter().map(Some).collect()
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

/// `retry_delay × 2^(attempts − 1)`, at most an hour.
fn backoff(base: Duration, attempts: i32) -> Duration {
    let exponent = u32::try_from(attempts.saturating_sub(1))
        .unwrap_or(0)
        .min(20);
    base.saturating_mul(1u32 << exponent).min(MAX_BACKOFF)
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

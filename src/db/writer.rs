//! The background writer: one thread with its own connection that takes work from a channel
//! and writes whatever has accumulated in one transaction (group commit). Everything the
//! server writes while running goes through it, so SQLite sees a single writer:
//!
//! * forwarder intake — a batch's events, answered only after the commit;
//! * the results of processing one event — handler effects, event-log rows and the inbox
//!   status, always inside one transaction together, so effects land exactly once;
//! * the outgoing-webhook retry record.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use diesel::Connection;
use diesel::connection::SimpleConnection;
use tokio::sync::{mpsc, oneshot};

use super::checkpoint::{Checkpointer, WRITER_AUTOCHECKPOINT_PAGES};
use super::tables::{
    event_log::EventLogRow,
    inbox::{InboxStatus, NewInboxRow},
    inbox_work::NewWorkRow,
    keyword_alerts::AlertRecord,
    messages::{MessageEdit, MessageRow},
    replies::ReplyRecord,
    user_activity::ActivityDelta,
};
use super::{DbConnection, DbError, establish, tables};
use crate::config::DatabaseTarget;
use crate::ratelimit::Limits;

/// How much work may wait for the writer before senders are slowed down.
const CHANNEL_CAPACITY: usize = 16_384;
/// How often a failing batch is tried again before it is written item by item.
const BATCH_ATTEMPTS: u32 = 5;

/// A change a handler asks for; written with the run's event-log row.
#[derive(Debug)]
pub enum Effect {
    StoreMessage(Box<MessageRow>),
    EditMessage(Box<MessageEdit>),
    DeleteMessages(Vec<i64>),
    Activity(ActivityDelta),
    AlertSent(AlertRecord),
    /// A write to a handler's own table, defined in the handler's module.
    Custom(Box<dyn CustomEffect>),
}

impl Effect {
    /// Whether the effect records something already done outside (an alert delivered): such
    /// effects are kept when the run fails, so that a retry does not do it again. The others
    /// are applied only with a successful run (a retry produces them again).
    pub fn records_delivery(&self) -> bool {
        match self {
            Effect::AlertSent(_) => true,
            Effect::Custom(custom) => custom.records_delivery(),
            _ => false,
        }
    }
}

/// A handler's own kind of write, so that a handler with a table of its own needs no variant
/// here. Applied in the writer's transaction together with the run's other effects, its
/// event-log row and the inbox status. Make it idempotent (insert-or-ignore): two runs can
/// record the same thing (an event delivered twice, two processes).
pub trait CustomEffect: Send + Sync + std::fmt::Debug {
    fn apply(&self, conn: &mut DbConnection) -> Result<(), diesel::result::Error>;
    /// See [`Effect::records_delivery`].
    fn records_delivery(&self) -> bool {
        false
    }
}

/// What became of one listener's attempt at a forwarded event.
#[derive(Debug, Clone)]
pub struct InboxOutcome {
    pub event_id: String,
    /// The listener whose work this is (its `inbox_work` row).
    pub listener: &'static str,
    /// Attempts made before this one.
    pub attempts_before: i32,
    /// `false` when the event was deferred without being tried (a circuit breaker is open).
    pub counts_attempt: bool,
    /// `None` when the event was processed; else when to try again (`None`: it is dead) and
    /// why it failed.
    pub failure: Option<(Option<i64>, String)>,
    /// The failure is the listener skipping the event over its own quota: its work is set
    /// aside as `rate_limited` (replayable), not retried.
    pub rate_limited: bool,
}

/// Everything one event's processing writes.
#[derive(Debug, Default)]
pub struct Processed {
    pub effects: Vec<Effect>,
    pub logs: Vec<EventLogRow>,
    pub inbox: Option<InboxOutcome>,
    /// Dropped only once the writer has committed this work (or given up on it).
    pub after_commit: Option<AfterCommit>,
}

/// A value whose `Drop` must wait until the work it travels with is committed.
pub struct AfterCommit(pub Box<dyn Send>);

impl std::fmt::Debug for AfterCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AfterCommit")
    }
}

/// An intake's rows and the results processed with them.
type IntakeData = (Vec<NewInboxRow>, Vec<(usize, Processed)>);

/// A verified forwarder batch to store.
#[derive(Debug)]
pub struct Intake {
    pub webhook_id: String,
    pub rows: Vec<NewInboxRow>,
    /// Results of events processed as they were accepted, by index in `rows`: written in the
    /// same transaction, and only for rows that were not stored before.
    pub processed: Vec<(usize, Processed)>,
    /// Payloads of rows processed at intake and stored without theirs (by index in `rows`),
    /// put back if the row turns out to be rate-limited.
    pub payloads: Vec<(usize, String)>,
    /// Work rows for listener runs not completed at intake, stored only with their event
    /// (not for events stored before or rate-limited).
    pub work: Vec<NewWorkRow>,
    /// The forwarder's rate limits, charged here for newly stored events only, after the
    /// duplicate checks: a re-sent batch or event never consumes quota.
    pub limits: Option<Arc<Limits>>,
    /// The limiter's decisions once made (row index → reason), so that a retried write does
    /// not charge the quota twice.
    pub limited: Option<HashMap<usize, String>>,
    pub reply: oneshot::Sender<Result<IntakeResult, String>>,
}

/// What [`Writer::intake`] stores: see [`Intake`].
#[derive(Debug)]
pub struct IntakeBatch {
    pub webhook_id: String,
    pub rows: Vec<NewInboxRow>,
    pub processed: Vec<(usize, Processed)>,
    pub payloads: Vec<(usize, String)>,
    pub work: Vec<NewWorkRow>,
    pub limits: Option<Arc<Limits>>,
}

/// Why intake did not store a batch.
#[derive(Debug)]
pub enum IntakeWriteError {
    /// The writer did not take the batch in time.
    Busy,
    Failed(String),
}

/// What intake stored.
#[derive(Debug, Clone, Default)]
pub struct IntakeResult {
    /// The batch's `webhook-id` had been accepted before; nothing was stored.
    pub duplicate_batch: bool,
    /// Event ids that were already in the inbox (not stored again).
    pub known: HashSet<String>,
    /// Newly stored event ids that were over a rate limit: stored as `rate_limited`, their
    /// results from intake (if any) discarded.
    pub rate_limited: HashSet<String>,
}

/// Work for the writer.
#[derive(Debug)]
pub enum WriteOp {
    Intake(Box<Intake>),
    Processed(Box<Processed>),
    /// Several results committed in one transaction (one event's listeners).
    ProcessedAll(Vec<Processed>),
    Reply(ReplyRecord),
    /// Makes the work of these listeners on these claimed events due again at once.
    Release(Vec<String>, Vec<&'static str>),
    /// Answered once everything sent before it is committed.
    Flush(oneshot::Sender<()>),
    /// Like `Flush`, then the writer stops.
    Stop(oneshot::Sender<()>),
}

impl WriteOp {
    /// The kind of work and how much of it, without any of its data (for log lines).
    pub fn summary(&self) -> String {
        let processed = |p: &Processed| {
            format!(
                "{} effect(s), {} event-log row(s){}",
                p.effects.len(),
                p.logs.len(),
                if p.inbox.is_some() {
                    ", an inbox result"
                } else {
                    ""
                }
            )
        };
        match self {
            WriteOp::Intake(i) => format!(
                "intake of a batch: {} event(s), {} processed",
                i.rows.len(),
                i.processed.len()
            ),
            WriteOp::Processed(p) => format!("processed event: {}", processed(p)),
            WriteOp::ProcessedAll(all) => format!("{} results of one processed event", all.len()),
            WriteOp::Reply(_) => "an outgoing-webhook reply record".to_string(),
            WriteOp::Release(ids, _) => format!("release of {} claim(s)", ids.len()),
            WriteOp::Flush(_) => "flush".to_string(),
            WriteOp::Stop(_) => "stop".to_string(),
        }
    }
}

/// The sending side; cheap to clone.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<WriteOp>,
}

/// The writer thread, to be joined at shutdown.
pub struct WriterThread {
    thread: JoinHandle<()>,
    janitor: JoinHandle<()>,
    checkpointer: Option<Checkpointer>,
}

impl WriterThread {
    pub fn join(self) {
        if self.thread.join().is_err() {
            tracing::error!("the database writer thread panicked");
        }
        // The writer is gone, so is the janitor's channel: it ends once it has freed the rest.
        if self.janitor.join().is_err() {
            tracing::error!("the database janitor thread panicked");
        }
        if let Some(checkpointer) = self.checkpointer {
            checkpointer.stop();
        }
    }
}

/// The writer's own connection. On SQLite it leaves checkpoints to the [`Checkpointer`] and
/// does one itself only if the log grows far beyond the usual.
fn connect(target: &DatabaseTarget, synchronous: &str) -> Result<DbConnection, DbError> {
    let mut conn = establish(target)?;
    if let DbConnection::Sqlite(c) = &mut conn {
        c.batch_execute(&format!(
            "PRAGMA wal_autocheckpoint = {WRITER_AUTOCHECKPOINT_PAGES}; PRAGMA synchronous = {synchronous};"
        ))?;
    }
    Ok(conn)
}

impl Writer {
    /// Opens the writer's connection and starts its thread. `synchronous` is the SQLite
    /// `PRAGMA synchronous` of the writer's connection (`FULL`, `EXTRA` or `NORMAL`).
    pub fn spawn(
        target: &DatabaseTarget,
        batch_size: usize,
        synchronous: &'static str,
    ) -> Result<(Writer, WriterThread), DbError> {
        let conn = connect(target, synchronous)?;
        let checkpointer = Checkpointer::start(target)?;
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let (trash, spent) = std::sync::mpsc::channel::<Spent>();
        let janitor = std::thread::Builder::new()
            .name("db-janitor".into())
            .spawn(move || spent.into_iter().for_each(drop))
            .map_err(|e| DbError::Task(format!("cannot start the janitor thread: {e}")))?;
        let target = target.clone();
        let thread = std::thread::Builder::new()
            .name("db-writer".into())
            .spawn(move || run(conn, target, synchronous, rx, batch_size, trash))
            .map_err(|e| DbError::Task(format!("cannot start the writer thread: {e}")))?;
        Ok((
            Writer { tx },
            WriterThread {
                thread,
                janitor,
                checkpointer,
            },
        ))
    }

    /// Queues work; waits only when the writer is far behind.
    pub async fn send(&self, op: WriteOp) {
        if let Err(e) = self.tx.send(op).await {
            // Only the kind of work and its size: the work itself holds message content,
            // emails and event payloads.
            tracing::error!(op = %e.0.summary(), "database writer has stopped; not written");
        }
    }

    /// Stores a forwarder batch and waits for the commit. `Busy` when the writer has not
    /// taken the batch within `wait` (it is far behind).
    pub async fn intake(
        &self,
        batch: IntakeBatch,
        wait: Duration,
    ) -> Result<IntakeResult, IntakeWriteError> {
        let (reply, answer) = oneshot::channel();
        let op = WriteOp::Intake(Box::new(Intake {
            webhook_id: batch.webhook_id,
            rows: batch.rows,
            processed: batch.processed,
            payloads: batch.payloads,
            work: batch.work,
            limits: batch.limits,
            limited: None,
            reply,
        }));
        match tokio::time::timeout(wait, self.tx.send(op)).await {
            Err(_) => return Err(IntakeWriteError::Busy),
            Ok(Err(_)) => {
                return Err(IntakeWriteError::Failed(
                    "the database writer has stopped".into(),
                ));
            }
            Ok(Ok(())) => {}
        }
        match answer.await {
            Ok(result) => result.map_err(IntakeWriteError::Failed),
            Err(_) => Err(IntakeWriteError::Failed(
                "the database writer stopped before committing".into(),
            )),
        }
    }

    /// Waits until everything queued so far is committed.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        self.send(WriteOp::Flush(tx)).await;
        let _ = rx.await;
    }

    /// Writes everything queued so far, then stops the writer.
    pub async fn stop(&self) {
        let (tx, rx) = oneshot::channel();
        self.send(WriteOp::Stop(tx)).await;
        let _ = rx.await;
    }
}

#[derive(Default)]
struct Batch {
    intakes: Vec<Intake>,
    processed: Vec<Processed>,
    replies: Vec<ReplyRecord>,
    releases: Vec<(Vec<String>, Vec<&'static str>)>,
    waiters: Vec<oneshot::Sender<()>>,
    stop: bool,
    rows: usize,
}

impl Batch {
    fn push(&mut self, op: WriteOp) {
        match op {
            WriteOp::Intake(intake) => {
                self.rows += intake.rows.len() + 1;
                for (_, p) in &intake.processed {
                    self.rows += p.effects.len() + p.logs.len();
                }
                self.intakes.push(*intake);
            }
            WriteOp::Processed(p) => {
                self.rows += p.effects.len() + p.logs.len() + 1;
                self.processed.push(*p);
            }
            WriteOp::ProcessedAll(all) => {
                for p in all {
                    self.rows += p.effects.len() + p.logs.len() + 1;
                    self.processed.push(p);
                }
            }
            WriteOp::Reply(row) => {
                self.rows += 1;
                self.replies.push(row);
            }
            WriteOp::Release(ids, listeners) => {
                self.rows += ids.len();
                self.releases.push((ids, listeners));
            }
            WriteOp::Flush(tx) => self.waiters.push(tx),
            WriteOp::Stop(tx) => {
                self.waiters.push(tx);
                self.stop = true;
            }
        }
    }

    /// Writes everything in one transaction; returns what each intake stored.
    fn write(&mut self, conn: &mut DbConnection) -> Result<Vec<IntakeResult>, DbError> {
        conn.transaction(|conn| {
            let mut results = Vec::with_capacity(self.intakes.len());
            let mut processed: Vec<&Processed> = Vec::new();
            for intake in &mut self.intakes {
                let result = store_intake(conn, intake)?;
                if !result.duplicate_batch {
                    processed.extend(
                        intake
                            .processed
                            .iter()
                            .filter(|(row, _)| {
                                intake.rows.get(*row).is_some_and(|r| {
                                    !result.known.contains(&r.event_id)
                                        && !result.rate_limited.contains(&r.event_id)
                                })
                            })
                            .map(|(_, p)| p),
                    );
                }
                results.push(result);
            }
            processed.extend(self.processed.iter());
            write_processed(conn, &processed)?;
            tables::replies::insert_replies(conn, &self.replies)?;
            for (ids, listeners) in &self.releases {
                tables::inbox_work::release_claims(conn, ids, listeners)?;
            }
            Ok(results)
        })
    }

    /// Answers whoever waits for this batch. Returns what is left to free (the janitor does
    /// that, not the writer) and whether the writer stops.
    fn finish(self, intake_results: Result<Vec<IntakeResult>, String>) -> (Spent, bool) {
        let mut spent = Spent {
            _intakes: Vec::with_capacity(self.intakes.len()),
            _processed: self.processed,
        };
        let mut results = intake_results.map(Vec::into_iter);
        for intake in self.intakes {
            let Intake {
                rows,
                processed,
                reply,
                ..
            } = intake;
            let result = match &mut results {
                Ok(results) => results
                    .next()
                    .ok_or_else(|| "the writer lost track of a batch".to_string()),
                Err(error) => Err(error.clone()),
            };
            let _ = reply.send(result);
            spent._intakes.push((rows, processed));
        }
        for waiter in self.waiters {
            let _ = waiter.send(());
        }
        (spent, self.stop)
    }
}

/// A committed batch's data. Freeing it takes time (many small allocations), so the writer
/// hands it to the janitor thread instead; commit guards in it are dropped there too, after
/// the commit as they require.
struct Spent {
    _intakes: Vec<IntakeData>,
    _processed: Vec<Processed>,
}

fn store_intake(conn: &mut DbConnection, intake: &mut Intake) -> Result<IntakeResult, DbError> {
    let count = i32::try_from(intake.rows.len()).unwrap_or(i32::MAX);
    if !tables::batches::record_batch(conn, &intake.webhook_id, count)? {
        return Ok(IntakeResult {
            duplicate_batch: true,
            ..IntakeResult::default()
        });
    }
    let known = tables::inbox::insert_inbox(conn, &intake.rows)?;
    // Quota is charged only now that duplicates are known, once per newly stored event that
    // would be dispatched; the few over quota are turned into `rate_limited` rows.
    if intake.limited.is_none() {
        let mut limited = HashMap::new();
        if let Some(limits) = &intake.limits {
            for (index, row) in intake.rows.iter().enumerate() {
                if matches!(row.status, InboxStatus::Expired | InboxStatus::Filtered)
                    || known.contains(&row.event_id)
                {
                    continue;
                }
                if let Some(why) = limits.check(row.realm_id, row.user_id).reason() {
                    tracing::info!(event_id = %row.event_id, reason = %why, "event stored as rate_limited, not dispatched");
                    limited.insert(index, why);
                }
            }
        }
        intake.limited = Some(limited);
    }
    let mut rate_limited = HashSet::new();
    for (index, why) in intake.limited.iter().flatten() {
        let Some(row) = intake.rows.get(*index) else {
            continue;
        };
        let payload = match intake.payloads.iter().find(|(i, _)| i == index) {
            Some((_, payload)) => payload.as_str(),
            None => row.payload.as_str(),
        };
        tables::inbox::mark_rate_limited(conn, &row.event_id, payload, why)?;
        rate_limited.insert(row.event_id.clone());
    }
    let work: Vec<&NewWorkRow> = intake
        .work
        .iter()
        .filter(|w| !known.contains(&w.event_id) && !rate_limited.contains(&w.event_id))
        .collect();
    tables::inbox_work::insert_work(conn, &work)?;
    Ok(IntakeResult {
        duplicate_batch: false,
        known,
        rate_limited,
    })
}

/// Writes the results of processing, grouped into as few statements as possible: messages,
/// alerts and event-log rows as multi-row inserts, activity summed per (realm, user), inbox
/// rows marked done together. Message effects keep their order, so a message is stored before
/// a later edit of it applies.
fn write_processed(conn: &mut DbConnection, processed: &[&Processed]) -> Result<(), DbError> {
    let mut messages: Vec<&MessageRow> = Vec::new();
    let mut alerts: Vec<&AlertRecord> = Vec::new();
    let mut activity: HashMap<(i64, i64), ActivityDelta> = HashMap::new();
    let mut logs: Vec<&EventLogRow> = Vec::with_capacity(processed.len() * 2);
    // Work statuses go first: a result for work that is no longer pending at that attempt
    // is a duplicate (two workers held it after a claim ran out), and its effects must not
    // be applied again. Successes are recorded in bulk, failures one by one.
    let mut events: Vec<&str> = processed
        .iter()
        .filter_map(|p| p.inbox.as_ref())
        .map(|o| o.event_id.as_str())
        .collect();
    if events.is_empty() {
        // Outgoing-webhook results only.
    } else {
        events.sort_unstable();
        events.dedup();
        tables::inbox::lock_events(conn, &events)?;
    }
    let mut done_by_work: HashMap<(&str, i32), Vec<&str>> = HashMap::new();
    for outcome in processed.iter().filter_map(|p| p.inbox.as_ref()) {
        if outcome.failure.is_none() {
            done_by_work
                .entry((outcome.listener, outcome.attempts_before))
                .or_default()
                .push(&outcome.event_id);
        }
    }
    let mut applied: HashSet<(String, &str)> = HashSet::new();
    for ((listener, attempts_before), ids) in &done_by_work {
        for id in tables::inbox_work::finish_work_done(conn, listener, *attempts_before, ids)? {
            applied.insert((id, listener));
        }
    }
    // Events whose work changed, with the attempts made and the newest failure.
    let mut settle: HashMap<&str, i32> = HashMap::new();
    let mut errors: HashMap<&str, &str> = HashMap::new();
    for p in processed {
        if let Some(outcome) = &p.inbox {
            let attempts_after = outcome.attempts_before + i32::from(outcome.counts_attempt);
            let finished = match &outcome.failure {
                None => applied.contains(&(outcome.event_id.clone(), outcome.listener)),
                Some((retry_at, error)) => {
                    let applied = tables::inbox_work::finish_work_failed(
                        conn,
                        &outcome.event_id,
                        outcome.listener,
                        outcome.attempts_before,
                        attempts_after,
                        match (retry_at, outcome.rate_limited) {
                            (Some(at), _) => tables::inbox_work::WorkThen::RetryAt(*at),
                            (None, true) => tables::inbox_work::WorkThen::SetAside,
                            (None, false) => tables::inbox_work::WorkThen::Dead,
                        },
                        error,
                    )?;
                    if applied {
                        errors.insert(&outcome.event_id, error);
                    }
                    applied
                }
            };
            if !finished {
                tracing::warn!(event_id = %outcome.event_id, listener = outcome.listener, "a second result for work already finished; ignored");
                continue;
            }
            let most = settle.entry(&outcome.event_id).or_insert(0);
            *most = (*most).max(attempts_after);
        }
        for effect in &p.effects {
            match effect {
                Effect::StoreMessage(m) => messages.push(m),
                Effect::EditMessage(edit) => {
                    tables::messages::insert_messages(conn, &messages)?;
                    messages.clear();
                    tables::messages::apply_edit(conn, edit)?;
                }
                Effect::DeleteMessages(ids) => {
                    tables::messages::insert_messages(conn, &messages)?;
                    messages.clear();
                    tables::messages::mark_deleted(conn, ids)?;
                }
                Effect::Activity(delta) => merge_activity(&mut activity, delta),
                Effect::AlertSent(alert) => alerts.push(alert),
                Effect::Custom(custom) => custom.apply(conn)?,
            }
        }
        logs.extend(p.logs.iter());
    }
    tables::messages::insert_messages(conn, &messages)?;
    tables::keyword_alerts::insert_alerts(conn, &alerts)?;
    tables::user_activity::add_activity(conn, activity.values())?;
    tables::inbox_work::settle_events(conn, &settle, &errors)?;
    tables::event_log::insert_event_logs(conn, &logs)
}

/// Adds one user's activity to what the batch already has for them.
fn merge_activity(into: &mut HashMap<(i64, i64), ActivityDelta>, delta: &ActivityDelta) {
    match into.entry((delta.realm_id, delta.user_id)) {
        Entry::Vacant(slot) => {
            slot.insert(delta.clone());
        }
        Entry::Occupied(mut slot) => {
            let sum = slot.get_mut();
            sum.seen_at_ms = sum.seen_at_ms.max(delta.seen_at_ms);
            sum.messages += delta.messages;
            sum.reactions += delta.reactions;
            if let Some(at) = delta.presence_at_ms
                && sum.presence_at_ms.is_none_or(|seen| at >= seen)
            {
                sum.presence.clone_from(&delta.presence);
                sum.presence_at_ms = Some(at);
            }
            sum.typing_at_ms = sum.typing_at_ms.max(delta.typing_at_ms);
        }
    }
}

fn run(
    mut conn: DbConnection,
    target: DatabaseTarget,
    synchronous: &'static str,
    mut rx: mpsc::Receiver<WriteOp>,
    batch_size: usize,
    janitor: std::sync::mpsc::Sender<Spent>,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = Batch::default();
        batch.push(first);
        while batch.rows < batch_size && !batch.stop {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let results = if batch.rows > 0 {
            write_with_retries(&mut conn, &target, synchronous, &mut batch)
        } else {
            Ok(Vec::new())
        };
        let (spent, stop) = batch.finish(results);
        if let Err(unsent) = janitor.send(spent) {
            drop(unsent.0);
        }
        if stop {
            return;
        }
    }
}

/// Writes the batch, retrying with back-off. Intakes wait for one retry at most (their HTTP
/// request is waiting; the forwarder re-sends on a 503); other work is retried longer and,
/// as a last resort, item by item so that one bad row cannot hold back the rest.
fn write_with_retries(
    conn: &mut DbConnection,
    target: &DatabaseTarget,
    synchronous: &str,
    batch: &mut Batch,
) -> Result<Vec<IntakeResult>, String> {
    let mut delay = Duration::from_millis(50);
    let mut intake_error = None;
    for attempt in 1..=BATCH_ATTEMPTS {
        match batch.write(conn) {
            Ok(results) => return intake_error.map_or(Ok(results), Err),
            Err(error) => {
                tracing::warn!(%error, attempt, rows = batch.rows, "database write failed; retrying");
                if attempt >= 2 && !batch.intakes.is_empty() {
                    let message = error.to_string();
                    for intake in batch.intakes.drain(..) {
                        let _ = intake.reply.send(Err(message.clone()));
                    }
                    intake_error = Some(message);
                }
                std::thread::sleep(delay);
                delay = (delay * 4).min(Duration::from_secs(5));
                if let Ok(fresh) = connect(target, synchronous) {
                    *conn = fresh;
                }
            }
        }
    }
    write_item_by_item(conn, batch);
    Err(intake_error.unwrap_or_else(|| "database write failed".into()))
}

fn write_item_by_item(conn: &mut DbConnection, batch: &Batch) {
    let mut failed = 0usize;
    for p in &batch.processed {
        failed += usize::from(conn.transaction(|c| write_processed(c, &[p])).is_err());
    }
    for row in &batch.replies {
        failed +=
            usize::from(tables::replies::insert_replies(conn, std::slice::from_ref(row)).is_err());
    }
    for (ids, listeners) in &batch.releases {
        failed += usize::from(tables::inbox_work::release_claims(conn, ids, listeners).is_err());
    }
    if failed > 0 {
        tracing::error!(failed, "database writer could not store some results");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(seen: i64, presence: Option<(&str, i64)>) -> ActivityDelta {
        ActivityDelta {
            realm_id: 1,
            user_id: 7,
            seen_at_ms: seen,
            messages: 1,
            reactions: 0,
            presence: presence.map(|(s, _)| s.to_string()),
            presence_at_ms: presence.map(|(_, at)| at),
            typing_at_ms: None,
        }
    }

    #[test]
    fn activity_of_one_user_sums_and_keeps_the_latest_presence() {
        let mut sums = HashMap::new();
        merge_activity(&mut sums, &delta(10, Some(("active", 10))));
        merge_activity(&mut sums, &delta(30, None));
        // Arrives later in the batch but was seen earlier: does not replace "active".
        merge_activity(&mut sums, &delta(20, Some(("idle", 5))));
        let sum = &sums[&(1, 7)];
        assert_eq!(
            (
                sum.seen_at_ms,
                sum.messages,
                sum.presence.as_deref(),
                sum.presence_at_ms
            ),
            (30, 3, Some("active"), Some(10))
        );
        merge_activity(&mut sums, &delta(40, Some(("idle", 40))));
        let sum = &sums[&(1, 7)];
        assert_eq!(
            (sum.presence.as_deref(), sum.presence_at_ms),
            (Some("idle"), Some(40))
        );
    }
}

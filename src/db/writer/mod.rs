//! The background writer: one thread with its own connection that takes work from a channel
//! and writes whatever has accumulated in one transaction (group commit). Everything the
//! server writes while running goes through it, so SQLite sees a single writer:
//!
//! * forwarder intake — a batch's events, answered only after the commit;
//! * the results of processing one event — handler effects, event-log rows and the inbox
//!   status, always inside one transaction together, so effects land exactly once;
//! * the outgoing-webhook retry record.
//!
//! Here: the work the writer takes ([`WriteOp`] and what it carries) and its handle
//! ([`Writer`], [`WriterThread`]). `batch` is the thread's loop (batching, retries, the
//! item-by-item fallback), `apply` writes each kind of work inside the transaction, and
//! [`effect`] defines the handler effects it applies.

mod apply;
mod batch;
pub mod effect;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use tokio::sync::{mpsc, oneshot};

use super::attempt::AttemptResult;
use super::checkpoint::{Checkpointer, WRITER_AUTOCHECKPOINT_PAGES};
use super::tables::{
    event_log::EventLogRow, inbox::NewInboxRow, inbox_work::NewWorkRow, replies::ReplyRecord,
};
use super::{Connector, DbConnection, DbError};
use crate::ratelimit::Limits;
use batch::{Spent, run};
use effect::Effect;

/// How much work may wait for the writer before senders are slowed down.
const CHANNEL_CAPACITY: usize = 16_384;

/// What became of one listener's attempt at a forwarded event.
#[derive(Debug, Clone)]
pub struct InboxOutcome {
    pub event_id: String,
    /// The listener whose work this is (its `inbox_work` row).
    pub listener: &'static str,
    /// Attempts made before this one.
    pub attempts_before: i32,
    pub result: AttemptResult,
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

/// A verified forwarder batch to store ([`Writer::intake`]).
#[derive(Debug)]
pub struct IntakeBatch {
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
}

/// A batch on its way through the writer, with whoever waits for its commit.
#[derive(Debug)]
pub struct Intake {
    pub batch: IntakeBatch,
    /// The limiter's decisions once made (row index → reason), so that a retried write does
    /// not charge the quota twice.
    pub limited: Option<HashMap<usize, String>>,
    pub reply: oneshot::Sender<Result<IntakeResult, String>>,
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
                i.batch.rows.len(),
                i.batch.processed.len()
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
fn connect(connector: &Connector, synchronous: &str) -> Result<DbConnection, DbError> {
    let mut conn = connector.open()?;
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
        connector: &Connector,
        batch_size: usize,
        synchronous: &'static str,
    ) -> Result<(Writer, WriterThread), DbError> {
        let conn = connect(connector, synchronous)?;
        let checkpointer = Checkpointer::start(connector)?;
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let (trash, spent) = std::sync::mpsc::channel::<Spent>();
        let janitor = std::thread::Builder::new()
            .name("db-janitor".into())
            .spawn(move || spent.into_iter().for_each(drop))
            .map_err(|e| DbError::Task(format!("cannot start the janitor thread: {e}")))?;
        let connector = connector.clone();
        let thread = std::thread::Builder::new()
            .name("db-writer".into())
            .spawn(move || run(conn, connector, synchronous, rx, batch_size, trash))
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
            batch,
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

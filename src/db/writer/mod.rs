//! The background writer: a thread with its own connection that takes work from a channel
//! and writes whatever has accumulated in one transaction (group commit). Everything the
//! server writes while running goes through it, so SQLite sees a single writer:
//!
//! * forwarder intake — a batch's events, answered only after the commit;
//! * the results of processing one event — handler effects, event-log rows and the inbox
//!   status, always inside one transaction together, so effects land exactly once;
//! * the outgoing-webhook retry record.
//!
//! On PostgreSQL there may be several such threads (`database.writers`), each with its own
//! connection and the realms whose id falls to it (`realm_id mod writers`): one realm's work
//! is always committed by the same thread, in the order it was sent, so per-realm order and
//! exactly-once effects hold as with one writer, while realms are written in parallel. A
//! forwarder batch that spans several writers' realms is split between them (`shards`).
//!
//! Here: the work the writer takes ([`WriteOp`] and what it carries) and its handle
//! ([`Writer`], [`WriterThread`]). `batch` is a thread's loop (batching, retries, the
//! item-by-item fallback), `apply` writes each kind of work inside the transaction, and
//! [`effect`] defines the handler effects it applies.

mod apply;
mod batch;
pub mod effect;
mod shards;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use tokio::sync::{mpsc, oneshot};

use super::attempt::AttemptResult;
use super::checkpoint::{Checkpointer, WRITER_AUTOCHECKPOINT_PAGES};
use super::storage::Storage;
use super::tables::{
    event_log::EventLogRow, inbox::NewInboxRow, inbox_work::NewWorkRow, replies::ReplyRecord,
};
use super::{Connector, DbConnection, DbError};
use crate::guards::ratelimit::Limits;
use batch::{Retrying, Spent, run};
use effect::Effect;

/// How much work may wait for the writer before senders are slowed down.
const CHANNEL_CAPACITY: usize = 16_384;

/// What became of one listener's attempt at a forwarded event.
#[derive(Debug, Clone)]
pub struct InboxOutcome {
    pub event_id: String,
    /// The event's realm: its results are committed by that realm's writer.
    pub realm_id: i64,
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
    /// The answer given to an outgoing webhook, kept for Zulip's retries: committed with the
    /// rows of the run that produced it.
    pub reply: Option<ReplyRecord>,
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
    /// Payloads (and the message whose text each holds) of rows processed at intake and
    /// stored without theirs (by index in `rows`), put back if the row turns out to be
    /// rate-limited.
    pub payloads: Vec<(usize, String, Option<i64>)>,
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
    pub reply: oneshot::Sender<Result<IntakeResult, IntakeWriteError>>,
}

/// Why intake did not store a batch.
#[derive(Debug, Clone)]
pub enum IntakeWriteError {
    /// The writer did not take the batch in time.
    Busy,
    /// No room for it (see [`super::storage`]): the reason.
    NoRoom(String),
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
    /// Makes the work of these listeners on these claimed events due again at once.
    Release(Vec<String>, Vec<&'static str>),
}

/// What a writer thread takes from its channel.
#[derive(Debug)]
enum Command {
    Write(WriteOp),
    /// Answered once everything sent before it is committed.
    Flush(oneshot::Sender<()>),
    /// Like `Flush`, then the thread stops.
    Stop(oneshot::Sender<()>),
}

impl WriteOp {
    /// The kind of work and how much of it, without any of its data (for log lines).
    pub fn summary(&self) -> String {
        let processed = |p: &Processed| {
            format!(
                "{} effect(s), {} event-log row(s){}{}",
                p.effects.len(),
                p.logs.len(),
                if p.inbox.is_some() {
                    ", an inbox result"
                } else {
                    ""
                },
                if p.reply.is_some() {
                    ", an outgoing-webhook reply record"
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
            WriteOp::Release(ids, _) => format!("release of {} claim(s)", ids.len()),
        }
    }

    /// The realm whose writer commits this work: an event's results go with the event's
    /// realm; outgoing-webhook results (with their reply records) and claim releases to the
    /// first writer.
    fn realm(&self) -> Option<i64> {
        let of = |p: &Processed| p.inbox.as_ref().map(|o| o.realm_id);
        match self {
            WriteOp::Processed(p) => of(p),
            WriteOp::ProcessedAll(all) => all.iter().find_map(of),
            WriteOp::Intake(_) | WriteOp::Release(..) => None,
        }
    }
}

/// The sending side; cheap to clone.
#[derive(Clone)]
pub struct Writer {
    /// One channel per writer thread; realm `r`'s work goes to `shards[r mod len]`.
    shards: Arc<[mpsc::Sender<Command>]>,
    /// Room for the database; the writers commit nothing new while it refuses.
    storage: Arc<Storage>,
    /// Set when the server stops: a writer waiting for room tries once more and gives up.
    stopping: Arc<AtomicBool>,
    /// Per writer thread: why it is retrying a failed write, if it is.
    retrying: Arc<[Arc<Retrying>]>,
}

/// The writer threads, to be joined at shutdown.
pub struct WriterThread {
    threads: Vec<JoinHandle<()>>,
    janitor: JoinHandle<()>,
    checkpointer: Option<Checkpointer>,
}

impl WriterThread {
    pub fn join(self) {
        for thread in self.threads {
            if thread.join().is_err() {
                tracing::error!("a database writer thread panicked");
            }
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
    let mut conn = connector.open_writer()?;
    if let DbConnection::Sqlite(c) = &mut conn {
        c.batch_execute(&format!(
            "PRAGMA wal_autocheckpoint = {WRITER_AUTOCHECKPOINT_PAGES}; PRAGMA synchronous = {synchronous}; \
             PRAGMA temp_store = MEMORY;"
        ))?;
    }
    Ok(conn)
}

impl Writer {
    /// Opens the writers' connections and starts their threads: `writers` of them (more than
    /// one only on PostgreSQL; the configuration refuses it for SQLite). `synchronous` is the
    /// SQLite `PRAGMA synchronous` of the writer's connection (`FULL`, `EXTRA` or `NORMAL`).
    pub fn spawn(
        connector: &Connector,
        batch_size: usize,
        synchronous: &'static str,
        writers: usize,
        storage: Arc<Storage>,
    ) -> Result<(Writer, WriterThread), DbError> {
        let connections = (0..writers.max(1))
            .map(|_| connect(connector, synchronous))
            .collect::<Result<Vec<_>, _>>()?;
        storage.measure();
        let checkpointer = Checkpointer::start(connector, storage.clone())?;
        let stopping = Arc::new(AtomicBool::new(false));
        let (trash, spent) = std::sync::mpsc::channel::<Spent>();
        let janitor = std::thread::Builder::new()
            .name("db-janitor".into())
            .spawn(move || spent.into_iter().for_each(drop))
            .map_err(|e| DbError::Task(format!("cannot start the janitor thread: {e}")))?;
        let mut shards = Vec::with_capacity(connections.len());
        let mut threads = Vec::with_capacity(connections.len());
        let mut retrying = Vec::with_capacity(connections.len());
        for (index, conn) in connections.into_iter().enumerate() {
            let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
            let failing = Arc::new(Retrying::default());
            let room = batch::Room {
                storage: storage.clone(),
                stopping: stopping.clone(),
                retrying: failing.clone(),
            };
            let connector = connector.clone();
            let trash = trash.clone();
            let thread = std::thread::Builder::new()
                .name(format!("db-writer-{index}"))
                .spawn(move || run(conn, connector, synchronous, rx, batch_size, trash, room))
                .map_err(|e| DbError::Task(format!("cannot start a writer thread: {e}")))?;
            shards.push(tx);
            threads.push(thread);
            retrying.push(failing);
        }
        Ok((
            Writer {
                shards: shards.into(),
                storage,
                stopping,
                retrying: retrying.into(),
            },
            WriterThread {
                threads,
                janitor,
                checkpointer,
            },
        ))
    }

    /// Room for the database: whether new work is refused, and why.
    pub fn storage(&self) -> &Arc<Storage> {
        &self.storage
    }

    /// Whether a writer is retrying a failed write (the database unreachable, say): new runs
    /// would only add results that cannot be written, and fail on their own reads.
    pub fn is_retrying(&self) -> bool {
        self.retrying.iter().any(|r| r.why().is_some())
    }

    /// The channel of the writer that commits `realm_id`'s work.
    fn shard(&self, realm_id: Option<i64>) -> &mpsc::Sender<Command> {
        let index = shards::index(realm_id.unwrap_or(0), self.shards.len());
        &self.shards[index]
    }

    /// Queues work; waits only when its writer is far behind.
    pub async fn send(&self, op: WriteOp) {
        if let Err(e) = self.shard(op.realm()).send(Command::Write(op)).await {
            // Only the kind of work and its size: the work itself holds message content,
            // emails and event payloads.
            let op = match &e.0 {
                Command::Write(op) => op.summary(),
                Command::Flush(_) | Command::Stop(_) => "flush".to_string(),
            };
            tracing::error!(%op, "database writer has stopped; not written");
        }
    }

    /// Stores a forwarder batch and waits for the commit. `Busy` when a writer has not taken
    /// the batch (or its part of it) within `wait` (it is far behind); `Failed` at once while
    /// the writer is retrying a failed write (the database is unreachable, say), rather than
    /// after its retries.
    pub async fn intake(
        &self,
        batch: IntakeBatch,
        wait: Duration,
    ) -> Result<IntakeResult, IntakeWriteError> {
        if self.shards.len() == 1 {
            return self.intake_part(0, batch, wait).await;
        }
        let parts = shards::split(batch, self.shards.len());
        let answers = parts.into_iter().map(|part| async move {
            let result = self.intake_part(part.shard, part.batch, wait).await;
            (part.event_ids, result)
        });
        shards::merge(futures_util::future::join_all(answers).await)
    }

    /// Stores a batch, or the part of one, through the writer `shard`.
    async fn intake_part(
        &self,
        shard: usize,
        batch: IntakeBatch,
        wait: Duration,
    ) -> Result<IntakeResult, IntakeWriteError> {
        let (reply, answer) = oneshot::channel();
        let op = Command::Write(WriteOp::Intake(Box::new(Intake {
            batch,
            limited: None,
            reply,
        })));
        let Some(tx) = self.shards.get(shard) else {
            return Err(IntakeWriteError::Failed(
                "no database writer for a part of the batch".into(),
            ));
        };
        if let Some(why) = self.retrying.get(shard).and_then(|r| r.why()) {
            return Err(IntakeWriteError::Failed(format!(
                "the database writer is retrying a failed write: {why}"
            )));
        }
        match tokio::time::timeout(wait, tx.send(op)).await {
            Err(_) => return Err(IntakeWriteError::Busy),
            Ok(Err(_)) => {
                return Err(IntakeWriteError::Failed(
                    "the database writer has stopped".into(),
                ));
            }
            Ok(Ok(())) => {}
        }
        match answer.await {
            Ok(result) => result,
            Err(_) => Err(IntakeWriteError::Failed(
                "the database writer stopped before committing".into(),
            )),
        }
    }

    /// Waits until everything queued so far is committed.
    pub async fn flush(&self) {
        self.each_shard(Command::Flush).await;
    }

    /// Writes everything queued so far, then stops the writers. A writer waiting for room
    /// tries once more and gives up (what it could not write is logged).
    pub async fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.each_shard(Command::Stop).await;
    }

    /// Sends every writer the command and waits for all their answers.
    async fn each_shard(&self, command: fn(oneshot::Sender<()>) -> Command) {
        let answers = self.shards.iter().map(|shard| async move {
            let (tx, rx) = oneshot::channel();
            if shard.send(command(tx)).await.is_ok() {
                let _ = rx.await;
            }
        });
        futures_util::future::join_all(answers).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DatabaseTarget;
    use diesel::prelude::*;
    use diesel::sql_types::BigInt;

    #[derive(QueryableByName)]
    struct Value {
        #[diesel(sql_type = BigInt)]
        value: i64,
    }

    fn pragma(conn: &mut diesel::SqliteConnection, name: &str) -> i64 {
        diesel::sql_query(format!("SELECT {name} AS value FROM pragma_{name}"))
            .get_result::<Value>(conn)
            .unwrap_or_else(|e| panic!("PRAGMA {name}: {e}"))
            .value
    }

    #[test]
    fn the_writers_connection_keeps_its_cache_and_statement_journals_in_memory() {
        let dir = tempfile::tempdir().expect("dir");
        let connector = Connector {
            target: DatabaseTarget::Sqlite(dir.path().join("w.db")),
            cache_size: -512,
            writer_cache_size: -8192,
        };
        let DbConnection::Sqlite(mut conn) = connect(&connector, "FULL").expect("connect") else {
            panic!("expected SQLite");
        };
        assert_eq!(pragma(&mut conn, "cache_size"), -8192, "the writer's share");
        // 2 = MEMORY: statement journals (a multi-row insert's undo copy of each page it
        // changes) stay in memory instead of spilling to a temporary file.
        assert_eq!(pragma(&mut conn, "temp_store"), 2);
        assert_eq!(pragma(&mut conn, "synchronous"), 2, "FULL");
    }
}

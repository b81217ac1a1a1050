//! The writer thread's loop (group commit): take what has queued up into one [`Batch`], write
//! it in one transaction, retry with back-off (saying so, so that intake refuses at once), fall
//! back to item-by-item writes or, while the database is unreachable, keep the work for the
//! next batch, answer whoever waits, and hand the spent batch to the janitor thread to free.
//! While there is no room for new work ([`Room`]) intakes are refused and the rest waits, so
//! that nothing acknowledged is dropped and the checkpoint goes first.

mod held;

use std::time::{Duration, Instant};

use diesel::Connection;
use tokio::sync::{mpsc, oneshot};

use super::apply::{store_intake, write_processed};
use super::{
    Command, Intake, IntakeBatch, IntakeResult, IntakeWriteError, Processed, WriteOp, connect,
};
use crate::db::Connector;
use crate::db::storage::is_disk_full;
use crate::db::tables::{inbox::NewInboxRow, replies::ReplyRecord};
use crate::db::{DbConnection, DbError, tables};

/// How often a failing batch is tried again before it is written item by item.
const BATCH_ATTEMPTS: u32 = 5;

/// How long the writer waits before it tries again the work it could not write while the
/// database was unreachable, when no other work comes (see [`Unwritten`]).
const UNWRITTEN_PAUSE: Duration = Duration::from_secs(1);

/// How long a batch that nobody waits for (results of outgoing-webhook runs, retry records,
/// claim releases — none of them holds up an answer or a worker) may wait for more work before
/// it is committed. Under outgoing-webhook load this turns many small commits, each writing the
/// same last pages of the event log and syncing the log, into fewer large ones. An intake, a
/// flush, a stop or an inbox worker's results arriving meanwhile end the wait at once (within
/// [`LINGER_STEP`]).
const LINGER: Duration = Duration::from_millis(3);
const LINGER_STEP: Duration = Duration::from_micros(250);

use held::Unwritten;
pub(crate) use held::{Retrying, Room};

/// An intake's rows and the results processed with them.
type IntakeData = (Vec<NewInboxRow>, Vec<(usize, Processed)>);

/// The work taken from the channel for one transaction, and who waits for it.
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
    /// Whether committing this batch can wait for more work: nobody waits for it (no intake,
    /// flush or stop, and no inbox worker whose event stays in flight until the commit), and
    /// it is not full.
    fn may_linger(&self, batch_size: usize) -> bool {
        self.intakes.is_empty()
            && self.waiters.is_empty()
            && !self.stop
            && self.processed.iter().all(|p| p.after_commit.is_none())
            && self.rows < batch_size
    }

    /// Whether the batch holds work besides intakes (and waiters).
    fn has_results(&self) -> bool {
        !self.processed.is_empty() || !self.replies.is_empty() || !self.releases.is_empty()
    }

    /// Takes whatever has queued up, up to `batch_size` rows.
    fn take_queued(&mut self, rx: &mut mpsc::Receiver<Command>, batch_size: usize) {
        while self.rows < batch_size && !self.stop {
            match rx.try_recv() {
                Ok(op) => self.push(op),
                Err(_) => break,
            }
        }
    }

    fn push_processed(&mut self, mut p: Processed) {
        self.rows += p.effects.len() + p.logs.len() + 1;
        if let Some(reply) = p.reply.take() {
            self.rows += 1;
            self.replies.push(reply);
        }
        self.processed.push(p);
    }

    fn push(&mut self, command: Command) {
        let op = match command {
            Command::Write(op) => op,
            Command::Flush(tx) => return self.waiters.push(tx),
            Command::Stop(tx) => {
                self.waiters.push(tx);
                self.stop = true;
                return;
            }
        };
        match op {
            WriteOp::Intake(intake) => {
                self.rows += intake.batch.rows.len() + 1;
                for (_, p) in &intake.batch.processed {
                    self.rows += p.effects.len() + p.logs.len();
                }
                self.intakes.push(*intake);
            }
            WriteOp::Processed(p) => self.push_processed(*p),
            WriteOp::ProcessedAll(all) => {
                for p in all {
                    self.push_processed(p);
                }
            }
            WriteOp::Release(ids, listeners) => {
                self.rows += ids.len();
                self.releases.push((ids, listeners));
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
                            .batch
                            .processed
                            .iter()
                            .filter(|(row, _)| {
                                intake.batch.rows.get(*row).is_some_and(|r| {
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
    fn finish(self, intake_results: Result<Vec<IntakeResult>, IntakeWriteError>) -> (Spent, bool) {
        let mut spent = Spent {
            _intakes: Vec::with_capacity(self.intakes.len()),
            _processed: self.processed,
        };
        let mut results = intake_results.map(Vec::into_iter);
        for intake in self.intakes {
            let Intake {
                batch: IntakeBatch {
                    rows, processed, ..
                },
                reply,
                ..
            } = intake;
            let result = match &mut results {
                Ok(results) => results.next().ok_or_else(|| {
                    IntakeWriteError::Failed("the writer lost track of a batch".to_string())
                }),
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

/// What became of a batch's write.
enum Written {
    /// Committed, or given up on (`Err`: what intakes were told).
    Done(Result<Vec<IntakeResult>, IntakeWriteError>),
    /// The database is unreachable: intakes were refused, the rest is to be kept.
    Unreachable(IntakeWriteError),
}

/// A committed batch's data. Freeing it takes time (many small allocations), so the writer
/// hands it to the janitor thread instead; commit guards in it are dropped there too, after
/// the commit as they require.
pub(super) struct Spent {
    _intakes: Vec<IntakeData>,
    _processed: Vec<Processed>,
}

pub(super) fn run(
    mut conn: DbConnection,
    connector: Connector,
    synchronous: &'static str,
    mut rx: mpsc::Receiver<Command>,
    batch_size: usize,
    janitor: std::sync::mpsc::Sender<Spent>,
    room: Room,
) {
    let retrying = &*room.retrying;
    let mut left = Unwritten::default();
    loop {
        let mut batch = Batch::default();
        if left.is_empty() {
            let Some(first) = rx.blocking_recv() else {
                return;
            };
            batch.push(first);
        } else {
            if rx.is_closed() {
                tracing::error!("database writer stopped with results it could not write");
                return;
            }
            std::thread::sleep(UNWRITTEN_PAUSE);
            batch.put_back(std::mem::take(&mut left));
        }
        batch.take_queued(&mut rx, batch_size);
        let linger_until = Instant::now() + LINGER;
        while batch.may_linger(batch_size) && Instant::now() < linger_until {
            std::thread::sleep(LINGER_STEP);
            batch.take_queued(&mut rx, batch_size);
        }
        let results = if batch.rows > 0 {
            let started = Instant::now();
            let mut writing = Writing {
                conn: &mut conn,
                connector: &connector,
                synchronous,
                rx: &mut rx,
                batch_size,
                room: &room,
            };
            let written = writing.write_with_retries(&mut batch);
            tracing::debug!(
                rows = batch.rows,
                intakes = batch.intakes.len(),
                processed = batch.processed.len(),
                replies = batch.replies.len(),
                micros = started.elapsed().as_micros() as u64,
                "batch written"
            );
            match written {
                Written::Done(results) => results,
                Written::Unreachable(why) => {
                    left = batch.take_unwritten();
                    tracing::warn!(
                        results = left.processed.len(),
                        "the database is unreachable: results kept to be written when it is back"
                    );
                    Err(why)
                }
            }
        } else {
            Ok(Vec::new())
        };
        // While work is kept, intakes are still refused at once.
        if left.is_empty() {
            retrying.set(None);
        }
        let (spent, stop) = batch.finish(results);
        if let Err(unsent) = janitor.send(spent) {
            drop(unsent.0);
        }
        if stop {
            if !left.is_empty() {
                tracing::error!(
                    results = left.processed.len(),
                    "database writer stopped with results it could not write (their events run again after their claim lease)"
                );
            }
            return;
        }
    }
}

/// What a write needs besides the batch.
struct Writing<'a> {
    conn: &'a mut DbConnection,
    connector: &'a Connector,
    synchronous: &'static str,
    rx: &'a mut mpsc::Receiver<Command>,
    batch_size: usize,
    room: &'a Room,
}

impl Writing<'_> {
    /// Writes the batch, retrying with back-off. Intakes wait for one retry at most (their
    /// HTTP request is waiting; the forwarder re-sends on a 503); other work is retried longer
    /// and, as a last resort, item by item so that one bad row cannot hold back the rest —
    /// unless the database cannot be reached at all, when the work is kept instead
    /// ([`Unwritten`]). A write that fails for lack of room is not counted as an attempt: the
    /// batch waits for room ([`Room::wait`]) and is tried again, so no result is dropped for a
    /// full disk.
    fn write_with_retries(&mut self, batch: &mut Batch) -> Written {
        let mut delay = Duration::from_millis(50);
        let mut intake_error = None;
        let mut attempt = 0;
        // Why the last attempt to replace the connection failed: a write on the old one then
        // fails for that reason (the database is unreachable), whatever the old one says.
        let mut unreachable: Option<String> = None;
        loop {
            if let Some(reason) = self.room.wait(batch, self.rx, self.batch_size) {
                intake_error.get_or_insert(IntakeWriteError::NoRoom(reason));
            }
            if batch.intakes.is_empty() && !batch.has_results() {
                return Written::Done(intake_error.map_or(Ok(Vec::new()), Err));
            }
            let error = match batch.write(self.conn) {
                Ok(results) => {
                    self.room.storage.write_succeeded();
                    return Written::Done(intake_error.map_or(Ok(results), Err));
                }
                Err(error) => error,
            };
            if is_disk_full(&error) && !self.room.stopping() && !batch.stop {
                tracing::warn!(%error, rows = batch.rows, "database write failed for lack of room; waiting for room");
                self.room.storage.write_failed_full(&error.to_string());
                continue;
            }
            attempt += 1;
            let message = unreachable.take().unwrap_or_else(|| error.to_string());
            tracing::warn!(error = %message, attempt, rows = batch.rows, "database write failed; retrying");
            self.room.retrying.set(Some(message.clone()));
            if attempt >= 2 && !batch.intakes.is_empty() {
                let failed = IntakeWriteError::Failed(message);
                for intake in batch.intakes.drain(..) {
                    let _ = intake.reply.send(Err(failed.clone()));
                }
                intake_error = Some(failed);
            }
            std::thread::sleep(delay);
            delay = (delay * 4).min(Duration::from_secs(5));
            // A fresh connection for the next attempt; after the last one, whether the
            // database can be reached at all decides between item by item and keeping the work.
            match connect(self.connector, self.synchronous) {
                Ok(fresh) => *self.conn = fresh,
                Err(e) => unreachable = Some(e.to_string()),
            }
            if attempt >= BATCH_ATTEMPTS {
                break;
            }
        }
        if let Some(why) = unreachable {
            // Item by item would fail alike.
            return Written::Unreachable(intake_error.unwrap_or(IntakeWriteError::Failed(why)));
        }
        write_item_by_item(self.conn, batch);
        Written::Done(Err(intake_error.unwrap_or_else(|| {
            IntakeWriteError::Failed("database write failed".into())
        })))
    }
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
    use super::super::AfterCommit;
    use super::*;

    fn processed(after_commit: Option<AfterCommit>) -> Command {
        Command::Write(WriteOp::Processed(Box::new(Processed {
            after_commit,
            ..Processed::default()
        })))
    }

    #[test]
    fn only_work_nobody_waits_for_lingers() {
        let mut batch = Batch::default();
        batch.push(processed(None));
        assert!(batch.may_linger(100), "an outgoing run's results");
        assert!(!batch.may_linger(1), "a full batch is written at once");
        batch.push(processed(Some(AfterCommit(Box::new(())))));
        assert!(
            !batch.may_linger(100),
            "an inbox worker's event stays in flight until the commit"
        );

        let mut batch = Batch::default();
        batch.push(processed(None));
        let (tx, _rx) = oneshot::channel();
        batch.push(Command::Flush(tx));
        assert!(!batch.may_linger(100), "a flush waits");
    }

    #[test]
    fn work_kept_while_the_database_is_unreachable_goes_into_the_next_batch() {
        let mut batch = Batch::default();
        batch.push(processed(Some(AfterCommit(Box::new(())))));
        batch.push(Command::Write(WriteOp::Release(
            vec!["e".into()],
            vec!["message_logger"],
        )));
        let rows = batch.rows;
        let left = batch.take_unwritten();
        assert!(!left.is_empty() && batch.processed.is_empty());
        let mut next = Batch::default();
        next.put_back(left);
        assert_eq!(
            (next.rows, next.processed.len(), next.releases.len()),
            (rows, 1, 1)
        );
        assert!(
            !next.may_linger(100),
            "a forwarded event's kept results are written at once"
        );
    }
}

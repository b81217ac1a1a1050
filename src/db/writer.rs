//! The background writer: one thread with its own connection that takes rows from a channel
//! and writes whatever has accumulated in one transaction. Request handlers never wait for
//! these writes, and SQLite sees a single writer.

use std::thread::JoinHandle;
use std::time::Duration;

use diesel::Connection;
use tokio::sync::{mpsc, oneshot};

use super::models::{NewEventLog, NewMessage, ReplyRecord};
use super::{DbConnection, DbError, establish, store};
use crate::config::DatabaseTarget;

/// How many rows may wait for the writer before senders are slowed down.
const CHANNEL_CAPACITY: usize = 65_536;
/// How often a failing batch is tried again before it is written row by row.
const BATCH_ATTEMPTS: u32 = 5;

/// A row (or a request) for the writer.
#[derive(Debug)]
pub enum WriteOp {
    EventLog(NewEventLog),
    Message(NewMessage),
    Reply(ReplyRecord),
    /// Answered once everything sent before it is committed.
    Flush(oneshot::Sender<()>),
    /// Like `Flush`, then the writer stops.
    Stop(oneshot::Sender<()>),
}

/// The sending side; cheap to clone.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<WriteOp>,
}

/// The writer thread, to be joined at shutdown.
pub struct WriterThread(JoinHandle<()>);

impl WriterThread {
    pub fn join(self) {
        if self.0.join().is_err() {
            tracing::error!("the database writer thread panicked");
        }
    }
}

impl Writer {
    /// Opens the writer's connection and starts its thread.
    pub fn spawn(
        target: &DatabaseTarget,
        batch_size: usize,
    ) -> Result<(Writer, WriterThread), DbError> {
        let conn = establish(target)?;
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let target = target.clone();
        let thread = std::thread::Builder::new()
            .name("db-writer".into())
            .spawn(move || run(conn, target, rx, batch_size))
            .map_err(|e| DbError::Task(format!("cannot start the writer thread: {e}")))?;
        Ok((Writer { tx }, WriterThread(thread)))
    }

    /// Queues a row; waits only when the writer is far behind.
    pub async fn send(&self, op: WriteOp) {
        if let Err(e) = self.tx.send(op).await {
            tracing::error!(op = ?e.0, "database writer has stopped; row not written");
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
    event_logs: Vec<NewEventLog>,
    messages: Vec<NewMessage>,
    replies: Vec<ReplyRecord>,
    waiters: Vec<oneshot::Sender<()>>,
    stop: bool,
}

impl Batch {
    fn push(&mut self, op: WriteOp) {
        match op {
            WriteOp::EventLog(row) => self.event_logs.push(row),
            WriteOp::Message(row) => self.messages.push(row),
            WriteOp::Reply(row) => self.replies.push(row),
            WriteOp::Flush(tx) => self.waiters.push(tx),
            WriteOp::Stop(tx) => {
                self.waiters.push(tx);
                self.stop = true;
            }
        }
    }

    fn rows(&self) -> usize {
        self.event_logs.len() + self.messages.len() + self.replies.len()
    }

    fn write(&self, conn: &mut DbConnection) -> Result<(), DbError> {
        conn.transaction(|conn| {
            store::insert_replies(conn, &self.replies)?;
            store::insert_messages(conn, &self.messages)?;
            store::insert_event_logs(conn, &self.event_logs)
        })
    }

    /// Last resort after repeated failures: each row on its own, so one bad row cannot hold
    /// back the others.
    fn write_row_by_row(&self, conn: &mut DbConnection) {
        let mut failed = 0usize;
        for row in &self.replies {
            failed += usize::from(store::insert_replies(conn, std::slice::from_ref(row)).is_err());
        }
        for row in &self.messages {
            failed += usize::from(store::insert_messages(conn, std::slice::from_ref(row)).is_err());
        }
        for row in &self.event_logs {
            failed +=
                usize::from(store::insert_event_logs(conn, std::slice::from_ref(row)).is_err());
        }
        if failed > 0 {
            tracing::error!(failed, "database writer could not store some rows");
        }
    }

    fn finish(self) -> bool {
        for waiter in self.waiters {
            let _ = waiter.send(());
        }
        self.stop
    }
}

fn run(
    mut conn: DbConnection,
    target: DatabaseTarget,
    mut rx: mpsc::Receiver<WriteOp>,
    batch_size: usize,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = Batch::default();
        batch.push(first);
        while batch.rows() < batch_size && !batch.stop {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        if batch.rows() > 0 {
            write_with_retries(&mut conn, &target, &batch);
        }
        if batch.finish() {
            return;
        }
    }
}

fn write_with_retries(conn: &mut DbConnection, target: &DatabaseTarget, batch: &Batch) {
    let mut delay = Duration::from_millis(50);
    for attempt in 1..=BATCH_ATTEMPTS {
        match batch.write(conn) {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(%error, attempt, rows = batch.rows(), "database write failed; retrying");
                std::thread::sleep(delay);
                delay = (delay * 4).min(Duration::from_secs(5));
                if let Ok(fresh) = establish(target) {
                    *conn = fresh;
                }
            }
        }
    }
    batch.write_row_by_row(conn);
}

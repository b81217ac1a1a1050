//! Background WAL checkpoints on SQLite. Committing through the write-ahead log is cheap;
//! copying the log back into the database file (a checkpoint) is not. Left to SQLite, the
//! connection whose commit crosses the threshold does it — the single writer, which then stops
//! taking work for the length of the copy and its fsync. Here a thread with its own connection
//! checkpoints in `PASSIVE` mode (it never waits for or blocks the writer) every 250 ms,
//! so that by the time the writer's own threshold ([`WRITER_AUTOCHECKPOINT_PAGES`]) is
//! reached there is little left for it to copy; that last checkpoint, done by the writer
//! between two transactions, lets the log start over from its beginning. (A `RESTART`
//! checkpoint from this thread would have to win the write lock from a writer that hardly
//! ever lets go of it, and would then hold the writer back while waiting for readers.)
//!
//! Each round also measures the room left ([`Storage::measure`]). While new work is refused
//! for lack of room (the writer is idle then), or the log is over `database.max_wal_size`, the
//! checkpoint is a `TRUNCATE`: it waits for the writer's lock, copies everything and empties
//! the log file, which gives its space back to the filesystem.

use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use diesel::connection::SimpleConnection;

use super::storage::Storage;
use super::{Connector, DbConnection, DbError};

/// How often the log is copied back.
const INTERVAL: Duration = Duration::from_millis(250);

/// Log pages after which the writer checkpoints itself: it copies what this thread has not
/// yet, and the log then starts over (64 MiB with 16 KiB pages).
pub const WRITER_AUTOCHECKPOINT_PAGES: u32 = 4_096;

/// The running checkpointer; stopping it runs one last checkpoint.
pub struct Checkpointer {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

impl Checkpointer {
    /// Starts checkpointing the database when it is SQLite; `None` for PostgreSQL (which
    /// manages its own).
    pub fn start(
        connector: &Connector,
        storage: Arc<Storage>,
    ) -> Result<Option<Checkpointer>, DbError> {
        let DbConnection::Sqlite(mut conn) = connector.open()? else {
            return Ok(None);
        };
        let (stop, stopped) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("db-checkpoint".into())
            .spawn(move || {
                let mut failing = None;
                loop {
                    let last = !matches!(
                        stopped.recv_timeout(INTERVAL),
                        Err(mpsc::RecvTimeoutError::Timeout)
                    );
                    let truncate = storage.wants_truncate();
                    let result = checkpoint(&mut conn, truncate).map_err(|e| e.to_string());
                    match &result {
                        Err(error) if failing.as_ref() != Some(error) => {
                            tracing::warn!(%error, truncate, "WAL checkpoint failed; trying again shortly");
                            failing = Some(error.clone());
                        }
                        Ok(()) if failing.take().is_some() => {
                            tracing::info!("WAL checkpoint succeeded again");
                        }
                        _ => {}
                    }
                    storage.checkpoint_done(result);
                    storage.measure();
                    if last {
                        return;
                    }
                }
            })
            .map_err(|e| DbError::Task(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(Some(Checkpointer { stop, thread }))
    }

    pub fn stop(self) {
        let _ = self.stop.send(());
        if self.thread.join().is_err() {
            tracing::error!("the WAL checkpoint thread panicked");
        }
    }
}

/// Copies what it can of the log into the database file without waiting for anyone; with
/// `truncate`, waits for the writer (up to the busy timeout), copies all of it and empties the
/// log file.
fn checkpoint(conn: &mut diesel::SqliteConnection, truncate: bool) -> Result<(), DbError> {
    let sql = if truncate {
        "PRAGMA wal_checkpoint(TRUNCATE);"
    } else {
        "PRAGMA wal_checkpoint(PASSIVE);"
    };
    Ok(conn.batch_execute(sql)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DatabaseTarget;
    use crate::db::establish;

    #[test]
    fn copies_the_log_into_the_database_file_without_the_writer() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("c.db");
        let wal = dir.path().join("c.db-wal");
        let target = DatabaseTarget::Sqlite(path.clone());
        let DbConnection::Sqlite(mut writer) = establish(&target).expect("connect") else {
            unreachable!("a SQLite target gives a SQLite connection");
        };
        // Like the writer, and stricter: never checkpoint on commit. About 75 MB of log.
        writer
            .batch_execute("PRAGMA wal_autocheckpoint = 0; CREATE TABLE t (x BLOB NOT NULL);")
            .expect("setup");
        for _ in 0..50 {
            writer
                .batch_execute(
                    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100) \
                     INSERT INTO t SELECT randomblob(15000) FROM n;",
                )
                .expect("insert");
        }
        let size = |p: &std::path::Path| std::fs::metadata(p).map_or(0, |m| m.len());
        let before = size(&path);
        assert!(size(&wal) > 70_000_000, "the rows are in the log");

        let connector = Connector {
            target,
            cache_size: -2000,
            writer_cache_size: -2000,
        };
        let storage = Arc::new(Storage::new(
            connector.target(),
            crate::db::storage::StorageLimits {
                min_free_bytes: 0,
                max_wal_bytes: u64::MAX,
            },
        ));
        let checkpointer = Checkpointer::start(&connector, storage)
            .expect("start")
            .expect("SQLite");
        // Only a checkpoint grows the database file; only a restarted log is cut back to
        // `journal_size_limit` (64 MiB) by the next commit.
        let copied_and_restarted = || size(&path) > before + 70_000_000 && size(&wal) <= 67_108_864;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !copied_and_restarted() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            writer
                .batch_execute("INSERT INTO t VALUES (randomblob(10));")
                .expect("insert");
        }
        assert!(
            copied_and_restarted(),
            "database {} bytes (was {before}), log {} bytes",
            size(&path),
            size(&wal)
        );
        checkpointer.stop();
    }
}

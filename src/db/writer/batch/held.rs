//! What a writer holds back, and why: while there is no room for new work ([`Room`]: intakes
//! refused, the rest waits), while it retries a failed write ([`Retrying`]: intake refuses at
//! once), and the work it keeps while the database is unreachable ([`Unwritten`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

use super::{Batch, Command, IntakeWriteError, Processed};
use crate::db::storage::Storage;
use crate::db::tables::replies::ReplyRecord;

/// How often a writer waiting for room measures again.
const ROOM_POLL: Duration = Duration::from_millis(250);

/// Room for the database, as the writer sees it.
pub(crate) struct Room {
    pub(crate) storage: Arc<Storage>,
    /// The server is stopping: no more waiting for room.
    pub(crate) stopping: Arc<AtomicBool>,
    /// Says why while this writer retries a failed write, so that intake refuses at once.
    pub(crate) retrying: Arc<Retrying>,
}

impl Room {
    pub(super) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Waits while new work is refused for lack of room: the batch's intakes are answered at
    /// once (the forwarder sends them again), the rest — results of runs already made —
    /// waits until there is room, or the server stops. Returns the reason if it refused.
    pub(super) fn wait(
        &self,
        batch: &mut Batch,
        rx: &mut mpsc::Receiver<Command>,
        batch_size: usize,
    ) -> Option<String> {
        let mut refused = None;
        while let Some(reason) = self.storage.measure() {
            for intake in batch.intakes.drain(..) {
                let _ = intake
                    .reply
                    .send(Err(IntakeWriteError::NoRoom(reason.clone())));
            }
            if refused.is_none() && batch.has_results() {
                tracing::warn!(
                    processed = batch.processed.len(),
                    replies = batch.replies.len(),
                    "results wait for room in the database"
                );
            }
            refused = Some(reason);
            if !batch.has_results() || batch.stop || self.stopping() {
                break;
            }
            std::thread::sleep(ROOM_POLL);
            batch.take_queued(rx, batch_size);
        }
        refused
    }
}

/// Why a writer's write failed while it is retrying it (`None` otherwise). Intake reads it to
/// refuse a batch at once instead of waiting behind the retries and their back-off (seconds
/// while the database is unreachable).
#[derive(Default)]
pub(crate) struct Retrying(std::sync::Mutex<Option<String>>);

impl Retrying {
    pub(super) fn set(&self, why: Option<String>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = why;
    }

    pub(crate) fn why(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Work the writer could not commit because the database was unreachable (its connection
/// could not be replaced after the last attempt), kept for its next batch instead of being
/// given up on. A forwarded event's results keep the event in flight until they are
/// committed, so it is neither run again meanwhile nor left claimed until its lease runs
/// out (`forwarder.claim_lease`, minutes) once the database is back.
#[derive(Default)]
pub(super) struct Unwritten {
    pub(super) processed: Vec<Processed>,
    replies: Vec<ReplyRecord>,
    releases: Vec<(Vec<String>, Vec<&'static str>)>,
}

impl Unwritten {
    pub(super) fn is_empty(&self) -> bool {
        self.processed.is_empty() && self.replies.is_empty() && self.releases.is_empty()
    }
}

impl Batch {
    /// Takes out what is left to write once intakes have been answered.
    pub(super) fn take_unwritten(&mut self) -> Unwritten {
        Unwritten {
            processed: std::mem::take(&mut self.processed),
            replies: std::mem::take(&mut self.replies),
            releases: std::mem::take(&mut self.releases),
        }
    }

    /// Puts work left from the last batch back in.
    pub(super) fn put_back(&mut self, left: Unwritten) {
        for p in left.processed {
            self.push_processed(p);
        }
        self.rows += left.replies.len();
        self.replies.extend(left.replies);
        for (ids, listeners) in left.releases {
            self.rows += ids.len();
            self.releases.push((ids, listeners));
        }
    }
}

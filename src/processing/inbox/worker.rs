//! The workers: each takes events from its lane's queue, runs the listeners left for each
//! (each run only while this process's claim on its work holds) and sends every listener's
//! result to the writer. While the database has no room for new work (`db::storage`), or a
//! writer retries a failed write, they wait before starting a run: its results could not be
//! committed.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};

/// How often a worker waiting for room in the database looks again.
const ROOM_POLL: std::time::Duration = std::time::Duration::from_millis(250);

use super::Inbox;
use super::lanes::Work;
use crate::db::attempt::AttemptResult;
use crate::db::writer::{AfterCommit, InboxOutcome, WriteOp};

impl Inbox {
    pub(super) async fn work(
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
            // No room for new work, or the database unreachable (a writer retries): a run now
            // would fail on its own reads, count against its listener's breaker, and add
            // results that cannot be written.
            while self.writer.storage().is_refusing() || self.writer.is_retrying() {
                tokio::select! {
                    biased;
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(ROOM_POLL) => {}
                }
            }
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
            // Another process took the work (this one's claim lapsed): it is theirs to run.
            if !self.claim_holds(&guard.event_id, id, attempts).await {
                continue;
            }
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
            let judged = self.judge(&guard.event_id, &mut outcome, attempts);
            let result = match skipped {
                // Skipped over the listener's own quota: set aside, replayable, not retried.
                Some(reason) => AttemptResult::SetAside { reason },
                None => judged,
            };
            retrying |= matches!(result, AttemptResult::RetryAt { .. });
            let mut processed = outcome.processed;
            processed.inbox = Some(InboxOutcome {
                event_id: guard.event_id.clone(),
                realm_id,
                listener: self.name(id),
                attempts_before: attempts,
                result,
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
}

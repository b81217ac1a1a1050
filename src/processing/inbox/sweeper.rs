//! The sweeper: claims this process's due, unclaimed work (retries, replays, leftovers of a
//! crash or of full queues) and queues it on the lanes.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::Inbox;
use crate::clock::{millis, now_ms};
use crate::db::attempt::AttemptResult;
use crate::db::tables::inbox_work::WorkStatus;
use crate::db::writer::{InboxOutcome, WriteOp};
use crate::db::{DbError, tables};
use crate::events::forwarded::parse_stored;
use crate::listeners::ListenerId;

/// Rows the sweeper claims per query.
const SWEEP_BATCH: i64 = 1_000;
/// How often the sweeper looks for due events.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

impl Inbox {
    pub(super) async fn sweep(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(SWEEP_INTERVAL) => {}
            }
            // No room in the database, or it is unreachable: claiming is a write, and the
            // work would wait anyway.
            if self.writer.storage().is_refusing() || self.writer.is_retrying() {
                continue;
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
        let skip: HashSet<String> = self.in_flight.iter().map(|e| e.key().clone()).collect();
        let claim_until = now_ms() + millis(self.config.claim_lease);
        let names = self.mine_names.clone();
        let owner = self.owner.clone();
        let processor = self.processor.clone();
        let all = self.listeners.clone();
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
                        .filter_map(|id| processor.listener_name(id))
                        .collect()
                };
                tables::claims::claim_work(
                    c,
                    SWEEP_BATCH,
                    &owner,
                    claim_until,
                    &skip,
                    &names,
                    &wanted_by,
                )
            })
            .await?;
        let claimed = rows.len();
        self.note_taken_over(&rows);
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
                                realm_id: row.realm_id,
                                listener,
                                attempts_before: row.attempts,
                                result: AttemptResult::Dead {
                                    error: format!("stored envelope cannot be read: {}", e.0),
                                },
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
            let mut listeners: Vec<(ListenerId, i32)> = group
                .iter()
                .filter_map(|r| registry.id(&r.listener).map(|id| (id, r.attempts)))
                .collect();
            listeners.sort_by_key(|(id, _)| self.mine.iter().position(|m| m == id));
            let counted = group.iter().any(|r| r.status == WorkStatus::Pending);
            let (lane, work) = self.track(
                head.event_id.clone(),
                event,
                listeners,
                head.realm_id,
                counted,
                claim_until,
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

//! Several writers (PostgreSQL): which writer commits a realm's work, and how a forwarder batch
//! whose events span several writers' realms is split between them and answered as one.
//!
//! Each part is stored in its writer's own transaction, under its own batch key
//! (`<webhook-id>#<writer>`), so a part is exactly-once on its own: when one part fails and
//! the forwarder sends the batch again, the parts already committed are recognised as
//! duplicates and only the others are stored.

use std::collections::HashMap;

use super::{IntakeBatch, IntakeResult, IntakeWriteError};

/// The writer (of `writers`) that commits realm `realm_id`'s work.
pub(super) fn index(realm_id: i64, writers: usize) -> usize {
    let writers = i64::try_from(writers.max(1)).unwrap_or(1);
    usize::try_from(realm_id.rem_euclid(writers)).unwrap_or(0)
}

/// A batch's events that one writer stores.
pub(super) struct Part {
    pub(super) shard: usize,
    pub(super) batch: IntakeBatch,
    /// The part's event ids: all of them count as known when the part was stored before.
    pub(super) event_ids: Vec<String>,
}

/// Splits a batch by the writer of each event's realm, keeping the events' order within each
/// part. A batch with no events is one (empty) part for the first writer.
pub(super) fn split(batch: IntakeBatch, writers: usize) -> Vec<Part> {
    let IntakeBatch {
        webhook_id,
        rows,
        processed,
        payloads,
        work,
        limits,
    } = batch;
    let mut parts: Vec<Option<Part>> = (0..writers.max(1)).map(|_| None).collect();
    let mut place = Vec::with_capacity(rows.len());
    let mut shard_of_event: HashMap<String, usize> = HashMap::with_capacity(rows.len());
    let open = |parts: &mut [Option<Part>], shard: usize| {
        let slot = &mut parts[shard];
        if slot.is_none() {
            *slot = Some(Part {
                shard,
                batch: IntakeBatch {
                    webhook_id: format!("{webhook_id}#{shard}"),
                    rows: Vec::new(),
                    processed: Vec::new(),
                    payloads: Vec::new(),
                    work: Vec::new(),
                    limits: limits.clone(),
                },
                event_ids: Vec::new(),
            });
        }
    };
    for row in rows {
        let shard = index(row.realm_id, writers);
        open(&mut parts, shard);
        if let Some(p) = parts[shard].as_mut() {
            place.push((shard, p.batch.rows.len()));
            shard_of_event.insert(row.event_id.clone(), shard);
            p.event_ids.push(row.event_id.clone());
            p.batch.rows.push(row);
        }
    }
    if place.is_empty() {
        open(&mut parts, 0);
    }
    for (row, result) in processed {
        if let Some(&(shard, at)) = place.get(row)
            && let Some(p) = parts[shard].as_mut()
        {
            p.batch.processed.push((at, result));
        }
    }
    for (row, payload) in payloads {
        if let Some(&(shard, at)) = place.get(row)
            && let Some(p) = parts[shard].as_mut()
        {
            p.batch.payloads.push((at, payload));
        }
    }
    for w in work {
        if let Some(&shard) = shard_of_event.get(&w.event_id)
            && let Some(p) = parts[shard].as_mut()
        {
            p.batch.work.push(w);
        }
    }
    parts.into_iter().flatten().collect()
}

/// One answer for the whole batch from its parts' answers: a duplicate batch when every part
/// was stored before; otherwise every event of a part stored before counts as known. Any
/// part's failure fails the batch (the forwarder sends it again), `Failed` before `NoRoom`
/// before `Busy`.
pub(super) fn merge(
    answers: Vec<(Vec<String>, Result<IntakeResult, IntakeWriteError>)>,
) -> Result<IntakeResult, IntakeWriteError> {
    let mut merged = IntakeResult {
        duplicate_batch: true,
        ..IntakeResult::default()
    };
    let mut busy = false;
    let mut failed = None;
    let mut no_room = None;
    for (event_ids, answer) in answers {
        match answer {
            Ok(result) if result.duplicate_batch => merged.known.extend(event_ids),
            Ok(result) => {
                merged.duplicate_batch = false;
                merged.known.extend(result.known);
                merged.rate_limited.extend(result.rate_limited);
            }
            Err(IntakeWriteError::Busy) => busy = true,
            Err(IntakeWriteError::Failed(error)) => {
                failed.get_or_insert(error);
            }
            Err(IntakeWriteError::NoRoom(reason)) => {
                no_room.get_or_insert(reason);
            }
        }
    }
    match (failed, no_room, busy) {
        (Some(error), _, _) => Err(IntakeWriteError::Failed(error)),
        (None, Some(reason), _) => Err(IntakeWriteError::NoRoom(reason)),
        (None, None, true) => Err(IntakeWriteError::Busy),
        (None, None, false) => Ok(merged),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::event_key::EventKey;
    use crate::db::tables::inbox::{InboxStatus, NewInboxRow};
    use crate::db::tables::inbox_work::{NewWorkRow, WorkStatus};
    use crate::db::writer::Processed;

    fn row(event_id: &str, realm_id: i64) -> NewInboxRow {
        NewInboxRow {
            event_id: event_id.into(),
            event_key: EventKey::of(event_id),
            webhook_id: "msg_1".into(),
            realm_id,
            realm: format!("r{realm_id}"),
            user_id: Some(10),
            event_type: "message".into(),
            op: None,
            payload: String::new(),
            status: InboxStatus::Pending,
            attempts: 0,
            next_attempt_at_ms: 0,
            claimed_until_ms: 0,
            last_error: None,
            emitted_at_ms: None,
            received_at_ms: 0,
            updated_at_ms: 0,
            message_id: None,
        }
    }

    fn work(event_id: &str) -> NewWorkRow {
        NewWorkRow {
            event_id: event_id.into(),
            listener: "logger",
            status: WorkStatus::Pending,
            attempts: 0,
            next_attempt_at_ms: 0,
            claimed_until_ms: 0,
            last_error: None,
            updated_at_ms: 0,
        }
    }

    #[test]
    fn realms_map_to_writers_including_negative_ids() {
        assert_eq!(index(7, 4), 3);
        assert_eq!(index(8, 4), 0);
        assert_eq!(index(-1, 4), 3);
        assert_eq!(index(5, 1), 0);
        assert_eq!(index(5, 0), 0);
    }

    #[test]
    fn a_batch_is_split_by_realm_with_its_results_payloads_and_work() {
        let batch = IntakeBatch {
            webhook_id: "msg_1".into(),
            rows: vec![row("a", 1), row("b", 2), row("c", 3), row("d", 2)],
            processed: vec![(0, Processed::default()), (3, Processed::default())],
            payloads: vec![(3, "payload of d".into())],
            work: vec![work("c"), work("b")],
            limits: None,
        };
        let parts = split(batch, 2);
        assert_eq!(parts.len(), 2);
        let (odd, even) = (&parts[1], &parts[0]);
        assert_eq!((odd.shard, even.shard), (1, 0));
        assert_eq!(odd.batch.webhook_id, "msg_1#1");
        assert_eq!(even.batch.webhook_id, "msg_1#0");
        assert_eq!(odd.event_ids, ["a", "c"]);
        assert_eq!(even.event_ids, ["b", "d"]);
        // Indexes now point into each part's own rows.
        let at = |p: &Part| {
            p.batch
                .processed
                .iter()
                .map(|(i, _)| *i)
                .collect::<Vec<_>>()
        };
        assert_eq!(at(odd), [0]);
        assert_eq!(at(even), [1]);
        assert_eq!(even.batch.payloads, [(1, "payload of d".to_string())]);
        assert!(odd.batch.payloads.is_empty());
        let work_of = |p: &Part| {
            p.batch
                .work
                .iter()
                .map(|w| w.event_id.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(work_of(odd), ["c"]);
        assert_eq!(work_of(even), ["b"]);
    }

    #[test]
    fn an_empty_batch_is_one_part() {
        let batch = IntakeBatch {
            webhook_id: "msg_2".into(),
            rows: Vec::new(),
            processed: Vec::new(),
            payloads: Vec::new(),
            work: Vec::new(),
            limits: None,
        };
        let parts = split(batch, 3);
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].batch.webhook_id, "msg_2#0");
    }

    #[test]
    fn parts_answer_as_one_batch() {
        let stored = |known: &[&str], limited: &[&str]| IntakeResult {
            duplicate_batch: false,
            known: known.iter().map(|s| s.to_string()).collect(),
            rate_limited: limited.iter().map(|s| s.to_string()).collect(),
        };
        let duplicate = || IntakeResult {
            duplicate_batch: true,
            ..IntakeResult::default()
        };
        let ids = |ids: &[&str]| ids.iter().map(|s| s.to_string()).collect::<Vec<_>>();

        let all_seen = merge(vec![
            (ids(&["a"]), Ok(duplicate())),
            (ids(&["b"]), Ok(duplicate())),
        ]);
        assert!(all_seen.is_ok_and(|r| r.duplicate_batch));

        // One part stored before (a re-send after the other part failed).
        let merged = merge(vec![
            (ids(&["a", "c"]), Ok(duplicate())),
            (ids(&["b", "d"]), Ok(stored(&["d"], &["b"]))),
        ]);
        let merged = merged.unwrap_or_default();
        assert!(!merged.duplicate_batch);
        let mut known: Vec<_> = merged.known.into_iter().collect();
        known.sort();
        assert_eq!(known, ["a", "c", "d"]);
        assert_eq!(merged.rate_limited.len(), 1);

        let failed = merge(vec![
            (ids(&["a"]), Err(IntakeWriteError::Busy)),
            (
                ids(&["b"]),
                Err(IntakeWriteError::Failed("disk full".into())),
            ),
            (ids(&["c"]), Ok(stored(&[], &[]))),
        ]);
        assert!(matches!(failed, Err(IntakeWriteError::Failed(e)) if e == "disk full"));
        let busy = merge(vec![
            (ids(&["a"]), Err(IntakeWriteError::Busy)),
            (ids(&["b"]), Ok(stored(&[], &[]))),
        ]);
        assert!(matches!(busy, Err(IntakeWriteError::Busy)));
    }
}

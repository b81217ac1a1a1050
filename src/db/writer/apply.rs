//! What the writer does with the work in a batch, inside its transaction: store a forwarder
//! intake (batch id, inbox rows, quota, work rows, and the erasure of what its deletions
//! delete) and apply processing results (work statuses, handler effects grouped into
//! multi-row statements, event-log rows).

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};

use super::effect::Effect;
use super::{Intake, IntakeResult, Processed};
use crate::db::attempt::AttemptResult;
use crate::db::tables::{
    event_log::EventLogRow, inbox::InboxStatus, inbox_work::NewWorkRow,
    keyword_alerts::AlertRecord, messages::MessageWrites, user_activity::ActivityDelta,
};
use crate::db::{DbConnection, DbError, tables};
use crate::events::erasure::Removal;

/// Stores a forwarder batch: nothing when its `webhook-id` was seen before; else its new inbox
/// rows, the quota charged for them (those over it stored as `rate_limited`) and the work rows
/// of the rest. Each new `delete_message`, whatever its status, erases its messages' text
/// wherever it is stored ([`erase_deleted`]).
pub(super) fn store_intake(
    conn: &mut DbConnection,
    intake: &mut Intake,
) -> Result<IntakeResult, DbError> {
    let batch = &intake.batch;
    let count = i32::try_from(batch.rows.len()).unwrap_or(i32::MAX);
    if !tables::batches::record_batch(conn, &batch.webhook_id, count)? {
        return Ok(IntakeResult {
            duplicate_batch: true,
            ..IntakeResult::default()
        });
    }
    let known = tables::inbox::insert_inbox(conn, &batch.rows)?;
    // Quota is charged only now that duplicates are known, once per newly stored event that
    // would be dispatched; the few over quota are turned into `rate_limited` rows.
    if intake.limited.is_none() {
        let mut limited = HashMap::new();
        if let Some(limits) = &batch.limits {
            for (index, row) in batch.rows.iter().enumerate() {
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
        let Some(row) = batch.rows.get(*index) else {
            continue;
        };
        let envelope = match batch.payloads.iter().find(|(i, _, _)| i == index) {
            Some((_, payload, message_id)) => (payload.as_str(), *message_id),
            None => (row.payload.as_str(), row.message_id),
        };
        tables::inbox::mark_rate_limited(conn, &row.event_id, envelope, why)?;
        rate_limited.insert(row.event_id.clone());
    }
    // Deletions are few; those of a batch are applied together, per realm.
    let mut deleted: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for row in batch.rows.iter().filter(|r| !r.erases.is_empty()) {
        if !known.contains(&row.event_id) {
            deleted.entry(row.realm_id).or_default().extend(&row.erases);
        }
    }
    for (realm_id, ids) in deleted {
        erase_deleted(conn, realm_id, &ids)?;
    }
    let work: Vec<&NewWorkRow> = batch
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

/// Erases messages of realm `realm_id` deleted in Zulip wherever their text is stored, before
/// any listener runs the deletion (or when none will: it may be expired, filtered or over
/// quota): the inbox envelopes that hold it, the `messages` copy (a tombstone stays) and the
/// answers recorded for them on the outgoing path. A listener that keeps messages also gets
/// the deletion in its turn, after the message in its realm's order.
fn erase_deleted(conn: &mut DbConnection, realm_id: i64, ids: &[i64]) -> Result<(), DbError> {
    let envelopes = tables::inbox::erase_message_texts(conn, realm_id, ids, Removal::Deleted)?;
    tables::messages::mark_deleted_in_realm(conn, realm_id, ids)?;
    let replies = tables::replies::forget_replies_to(conn, ids)?;
    tracing::debug!(
        messages = ids.len(),
        envelopes,
        replies,
        "deleted messages erased"
    );
    Ok(())
}

/// Writes the results of processing, grouped into as few statements as possible: messages,
/// alerts and event-log rows as multi-row inserts, activity summed per (realm, user), inbox
/// rows marked done together. Message stores, edits and deletions are grouped by
/// [`MessageWrites`], with the result of applying them in order (a message is stored before a
/// later edit of it applies).
pub(super) fn write_processed(
    conn: &mut DbConnection,
    processed: &[&Processed],
) -> Result<(), DbError> {
    let mut messages = MessageWrites::default();
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
        if outcome.result == AttemptResult::Done {
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
            let attempts_after =
                outcome.attempts_before + i32::from(outcome.result.counts_attempt());
            let finished = match (outcome.result.then(), outcome.result.error()) {
                (Some(then), Some(error)) => {
                    let applied = tables::inbox_work::finish_work_failed(
                        conn,
                        &outcome.event_id,
                        outcome.listener,
                        outcome.attempts_before,
                        attempts_after,
                        then,
                        error,
                    )?;
                    if applied {
                        errors.insert(&outcome.event_id, error);
                    }
                    applied
                }
                _ => applied.contains(&(outcome.event_id.clone(), outcome.listener)),
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
                Effect::StoreMessage(m) => messages.store(conn, m)?,
                Effect::EditMessage(edit) => messages.edit(conn, edit)?,
                Effect::DeleteMessages(ids) => messages.delete(ids),
                Effect::Activity(delta) => merge_activity(&mut activity, delta),
                Effect::AlertSent(alert) => alerts.push(alert),
                Effect::Custom(custom) => custom.apply(conn)?,
            }
        }
        logs.extend(p.logs.iter());
    }
    messages.flush(conn)?;
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

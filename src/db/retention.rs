//! Data retention: the two maintenance jobs that delete or erase old stored data, both plain
//! functions on a connection (run them through [`super::Db::run`] or
//! [`super::Db::run_blocking`]):
//!
//! * [`cleanup`] deletes what is older than a cut-off — event-log rows, finished inbox events
//!   (with their work rows), accepted forwarder batch ids, outgoing-webhook replies and
//!   aggregated statistics — in bounded batches, each its own short transaction, so that
//!   neither backend holds a long write lock while the server keeps writing.
//! * [`expire_personal_data`] does the same for personal data, each kind with its own period:
//!   it erases the content and personal columns of stored messages (keeping a tombstone), and
//!   deletes the activity of users not seen for long and old keyword-alert records.
//!
//! Both work on SQLite and PostgreSQL with the same queries, and add no index to the hot
//! tables: they walk tables in primary-key order. (The aggregation of the event log into
//! statistics, which used to live here, is [`super::tables::listener_stats`].)

use std::collections::BTreeMap;

use diesel::prelude::*;

use super::schema::{
    event_log, forwarder_batches, inbox, inbox_work, keyword_alerts, listener_stats, messages,
    outgoing_replies, user_activity,
};
use super::tables::inbox::InboxStatus;
use super::{DbConnection, DbError};

/// The largest batch [`cleanup`] deletes at once (larger requests are reduced to it): keeps
/// the key list of one statement well below the bound-parameter limits of both backends.
pub const MAX_BATCH_SIZE: i64 = 10_000;

/// Rows deleted per table by [`cleanup`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CleanupReport {
    /// Event-log rows.
    pub event_log: usize,
    /// Finished inbox events (see [`InboxStatus::FINISHED`]).
    pub inbox: usize,
    /// Remembered forwarder batch ids.
    pub forwarder_batches: usize,
    /// Recorded outgoing-webhook replies.
    pub outgoing_replies: usize,
    /// Aggregated statistics rows.
    pub listener_stats: usize,
}

impl CleanupReport {
    /// Rows deleted from all tables together.
    pub fn total(&self) -> usize {
        self.event_log
            + self.inbox
            + self.forwarder_batches
            + self.outgoing_replies
            + self.listener_stats
    }
}

/// Cut-offs (Unix ms) for [`expire_personal_data`]; `None` keeps that kind of data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PersonalCutoffs {
    /// Messages stored before this lose their content and personal columns.
    pub messages: Option<i64>,
    /// Users last seen before this lose their `user_activity` row.
    pub activity: Option<i64>,
    /// Keyword-alert records sent before this are deleted.
    pub alerts: Option<i64>,
}

/// Rows changed per table by [`expire_personal_data`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PersonalReport {
    /// Messages whose content and personal columns were erased.
    pub messages_erased: usize,
    /// `user_activity` rows deleted.
    pub user_activity: usize,
    /// `keyword_alerts` rows deleted.
    pub keyword_alerts: usize,
}

impl PersonalReport {
    /// Rows changed in all tables together.
    pub fn total(&self) -> usize {
        self.messages_erased + self.user_activity + self.keyword_alerts
    }
}

/// Deletes data older than `before_ms`:
///
/// * `event_log` rows created before it;
/// * `inbox` events that are finished or rate-limited (see [`InboxStatus::FINISHED`]) and
///   were last updated before it — pending, parked and dead events are kept;
/// * `forwarder_batches` received before it (a batch that old is refused by its signature's
///   timestamp anyway);
/// * `outgoing_replies` created before it;
/// * `listener_stats` rows for intervals starting before it.
///
/// Each table is cleared in batches of at most `batch_size` rows (capped at
/// [`MAX_BATCH_SIZE`]): the keys of a batch are selected with a LIMIT and deleted, under the
/// same conditions, by one short transaction; a table is done when a batch finds fewer than
/// `batch_size` rows. `progress` is called after every batch with the table's name and the
/// rows deleted from it so far.
pub fn cleanup(
    conn: &mut DbConnection,
    before_ms: i64,
    batch_size: i64,
    progress: &mut dyn FnMut(&str, usize),
) -> Result<CleanupReport, DbError> {
    if batch_size < 1 {
        return Err(DbError::Invalid(format!(
            "the cleanup batch size must be positive, not {batch_size}"
        )));
    }
    let limit = batch_size.min(MAX_BATCH_SIZE);
    Ok(CleanupReport {
        event_log: clean_event_log(conn, before_ms, limit, progress)?,
        inbox: clean_inbox(conn, before_ms, limit, progress)?,
        forwarder_batches: clean_forwarder_batches(conn, before_ms, limit, progress)?,
        outgoing_replies: clean_outgoing_replies(conn, before_ms, limit, progress)?,
        listener_stats: clean_listener_stats(conn, before_ms, limit, progress)?,
    })
}

/// Applies the personal-data retention, in batches like [`cleanup`]:
///
/// * `messages` stored before `cutoffs.messages` have their content, topic, sender email and
///   name and direct-message recipients erased (the row stays as a tombstone, as for a message
///   deleted in Zulip);
/// * `user_activity` rows of users last seen before `cutoffs.activity` are deleted;
/// * `keyword_alerts` records sent before `cutoffs.alerts` are deleted.
pub fn expire_personal_data(
    conn: &mut DbConnection,
    cutoffs: &PersonalCutoffs,
    batch_size: i64,
    progress: &mut dyn FnMut(&str, usize),
) -> Result<PersonalReport, DbError> {
    if batch_size < 1 {
        return Err(DbError::Invalid(format!(
            "the cleanup batch size must be positive, not {batch_size}"
        )));
    }
    let limit = batch_size.min(MAX_BATCH_SIZE);
    let mut report = PersonalReport::default();
    if let Some(before) = cutoffs.messages {
        report.messages_erased = erase_old_messages(conn, before, limit, progress)?;
    }
    if let Some(before) = cutoffs.activity {
        report.user_activity = clean_user_activity(conn, before, limit, progress)?;
    }
    if let Some(before) = cutoffs.alerts {
        report.keyword_alerts = clean_keyword_alerts(conn, before, limit, progress)?;
    }
    Ok(report)
}

/// Messages stored before `before_ms` that still hold content or personal data, walked in id
/// order; each batch erases them with the same conditions repeated.
fn erase_old_messages(
    conn: &mut DbConnection,
    before_ms: i64,
    limit: i64,
    progress: &mut dyn FnMut(&str, usize),
) -> Result<usize, DbError> {
    let mut after = i64::MIN;
    in_batches(conn, "messages", limit, progress, |conn| {
        let not_erased = messages::content
            .ne("")
            .or(messages::topic.is_not_null())
            .or(messages::dm_recipients.is_not_null())
            .or(messages::sender_email.is_not_null())
            .or(messages::sender_name.is_not_null());
        let ids: Vec<i64> = messages::table
            .select(messages::message_id)
            .filter(messages::message_id.gt(after))
            .filter(messages::stored_at_ms.lt(before_ms))
            .filter(not_erased)
            .order(messages::message_id)
            .limit(limit)
            .load(conn)?;
        let Some(&last) = ids.last() else {
            return Ok((0, 0));
        };
        after = last;
        let erased = diesel::update(
            messages::table
                .filter(messages::message_id.eq_any(&ids))
                .filter(messages::stored_at_ms.lt(before_ms)),
        )
        .set(super::tables::messages::scrubbed_message())
        .execute(conn)?;
        Ok((ids.len(), erased))
    })
}

/// Activity of users last seen before `before_ms`; a batch's keys are deleted per realm in one
/// transaction, repeating the condition (a user seen meanwhile is kept).
fn clean_user_activity(
    conn: &mut DbConnection,
    before_ms: i64,
    limit: i64,
    progress: &mut dyn FnMut(&str, usize),
) -> Result<usize, DbError> {
    in_batches(conn, "user_activity", limit, progress, |conn| {
        let keys: Vec<(i64, i64)> = user_activity::table
            .select((user_activity::realm_id, user_activity::user_id))
            .filter(user_activity::last_seen_ms.lt(before_ms))
            .order((user_activity::realm_id, user_activity::user_id))
            .limit(limit)
            .load(conn)?;
        let selected = keys.len();
        let deleted = conn.transaction::<_, DbError, _>(|conn| {
            let mut deleted = 0;
            for (realm_id, users) in group_keys(keys) {
                deleted += diesel::delete(
                    user_activity::table
                        .filter(user_activity::realm_id.eq(realm_id))
                        .filter(user_activity::user_id.eq_any(&users))
                        .filter(user_activity::last_seen_ms.lt(before_ms)),
                )
                .execute(conn)?;
            }
            Ok(deleted)
        })?;
        Ok((selected, deleted))
    })
}

/// Keyword-alert records sent before `before_ms`; deleted per rule in one transaction.
fn clean_keyword_alerts(
    conn: &mut DbConnection,
    before_ms: i64,
    limit: i64,
    progress: &mut dyn FnMut(&str, usize),
) -> Result<usize, DbError> {
    in_batches(conn, "keyword_alerts", limit, progress, |conn| {
        let keys: Vec<(String, i64)> = keyword_alerts::table
            .select((keyword_alerts::rule, keyword_alerts::message_id))
            .filter(keyword_alerts::sent_at_ms.lt(before_ms))
            .order((keyword_alerts::rule, keyword_alerts::message_id))
            .limit(limit)
            .load(conn)?;
        let selected = keys.len();
        let deleted = conn.transaction::<_, DbError, _>(|conn| {
            let mut deleted = 0;
            for (rule, ids) in group_keys(keys) {
                deleted += diesel::delete(
                    keyword_alerts::table
                        .filter(keyword_alerts::rule.eq(&rule))
                        .filter(keyword_alerts::message_id.eq_any(&ids))
                        .filter(keyword_alerts::sent_at_ms.lt(before_ms)),
                )
                .execute(conn)?;
            }
            Ok(deleted)
        })?;
        Ok((selected, deleted))
    })
}

/// Runs `batch` (which returns the rows it selected and deleted) until it selects fewer than
/// `limit` rows, reporting progress after each; returns the rows deleted.
fn in_batches(
    conn: &mut DbConnection,
    table: &str,
    limit: i64,
    progress: &mut dyn FnMut(&str, usize),
    mut batch: impl FnMut(&mut DbConnection) -> Result<(usize, usize), DbError>,
) -> Result<usize, DbError> {
    let full = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut deleted = 0;
    loop {
        let (selected, removed) = batch(conn)?;
        deleted += removed;
        progress(table, deleted);
        if selected < full {
            return Ok(deleted);
        }
    }
}

/// Event-log rows, walked in id order (ids grow with time, so old rows come first); each
/// batch continues after the previous one's last id rather than rescanning from the start.
fn clean_event_log(
    conn: &mut DbConnection,
    before_ms: i64,
    limit: i64,
    progress: &mut dyn FnMut(&str, usize),
) -> Result<usize, DbError> {
    let mut after = i64::MIN;
    in_batches(conn, "event_log", limit, progress, |conn| {
        let ids: Vec<i64> = event_log::table
            .select(event_log::id)
            .filter(event_log::id.gt(after))
            .filter(event_log::created_at_ms.lt(before_ms))
            .order(event_log::id)
            .limit(limit)
            .load(conn)?;
        let Some(&last) = ids.last() else {
            return Ok((0, 0));
        };
        after = last;
        let deleted = diesel::delete(
            event_log::table
                .filter(event_log::id.eq_any(&ids))
                .filter(event_log::created_at_ms.lt(before_ms)),
        )
        .execute(conn)?;
        Ok((ids.len(), deleted))
    })
}

/// Finished inbox events, walked in id order. The delete repeats the status condition, so an
/// event requeued between the look-up and the delete is kept.
fn clean_inbox(
    conn: &mut DbConnection,
    before_ms: i64,
    limit: i64,
    progress: &mut dyn FnMut(&str, usize),
) -> Result<usize, DbError> {
    let mut after = i64::MIN;
    in_batches(conn, "inbox", limit, progress, |conn| {
        let keys: Vec<(i64, String)> = inbox::table
            .select((inbox::id, inbox::event_id))
            .filter(inbox::id.gt(after))
            .filter(inbox::status.eq_any(InboxStatus::FINISHED))
            .filter(inbox::updated_at_ms.lt(before_ms))
            .order(inbox::id)
            .limit(limit)
            .load(conn)?;
        let Some(&(last, _)) = keys.last() else {
            return Ok((0, 0));
        };
        after = last;
        let (ids, event_ids): (Vec<i64>, Vec<String>) = keys.into_iter().unzip();
        // Work set aside with the event (listeners' quota skips) goes with it.
        diesel::delete(inbox_work::table.filter(inbox_work::event_id.eq_any(&event_ids)))
            .execute(conn)?;
        let deleted = diesel::delete(
            inbox::table
                .filter(inbox::id.eq_any(&ids))
                .filter(inbox::status.eq_any(InboxStatus::FINISHED))
                .filter(inbox::updated_at_ms.lt(before_ms)),
        )
        .execute(conn)?;
        Ok((ids.len(), deleted))
    })
}

/// Accepted batch ids, walked in key order.
fn clean_forwarder_batches(
    conn: &mut DbConnection,
    before_ms: i64,
    limit: i64,
    progress: &mut dyn FnMut(&str, usize),
) -> Result<usize, DbError> {
    let mut after: Option<String> = None;
    in_batches(conn, "forwarder_batches", limit, progress, |conn| {
        let old = forwarder_batches::table
            .select(forwarder_batches::webhook_id)
            .filter(forwarder_batches::received_at_ms.lt(before_ms))
            .order(forwarder_batches::webhook_id)
            .limit(limit);
        let ids: Vec<String> = match &after {
            None => old.load(conn)?,
            Some(after) => old
                .filter(forwarder_batches::webhook_id.gt(after))
                .load(conn)?,
        };
        let Some(last) = ids.last() else {
            return Ok((0, 0));
        };
        after = Some(last.clone());
        let deleted = diesel::delete(
            forwarder_batches::table
                .filter(forwarder_batches::webhook_id.eq_any(&ids))
                .filter(forwarder_batches::received_at_ms.lt(before_ms)),
        )
        .execute(conn)?;
        Ok((ids.len(), deleted))
    })
}

/// Outgoing-webhook replies, oldest first through `outgoing_replies_created`; a batch's keys
/// are deleted per bot in one transaction.
fn clean_outgoing_replies(
    conn: &mut DbConnection,
    before_ms: i64,
    limit: i64,
    progress: &mut dyn FnMut(&str, usize),
) -> Result<usize, DbError> {
    in_batches(conn, "outgoing_replies", limit, progress, |conn| {
        let keys: Vec<(String, i64)> = outgoing_replies::table
            .select((outgoing_replies::bot, outgoing_replies::message_id))
            .filter(outgoing_replies::created_at_ms.lt(before_ms))
            .order(outgoing_replies::created_at_ms)
            .limit(limit)
            .load(conn)?;
        let selected = keys.len();
        let deleted = conn.transaction::<_, DbError, _>(|conn| {
            let mut deleted = 0;
            for (bot, ids) in group_keys(keys) {
                deleted += diesel::delete(
                    outgoing_replies::table
                        .filter(outgoing_replies::bot.eq(&bot))
                        .filter(outgoing_replies::message_id.eq_any(&ids))
                        .filter(outgoing_replies::created_at_ms.lt(before_ms)),
                )
                .execute(conn)?;
            }
            Ok(deleted)
        })?;
        Ok((selected, deleted))
    })
}

/// Statistics rows, oldest first through `listener_stats_interval`; a batch's keys are
/// deleted per listener in one transaction.
fn clean_listener_stats(
    conn: &mut DbConnection,
    before_ms: i64,
    limit: i64,
    progress: &mut dyn FnMut(&str, usize),
) -> Result<usize, DbError> {
    in_batches(conn, "listener_stats", limit, progress, |conn| {
        let keys: Vec<(String, i64)> = listener_stats::table
            .select((listener_stats::listener, listener_stats::interval_start_ms))
            .filter(listener_stats::interval_start_ms.lt(before_ms))
            .order(listener_stats::interval_start_ms)
            .limit(limit)
            .load(conn)?;
        let selected = keys.len();
        let deleted = conn.transaction::<_, DbError, _>(|conn| {
            let mut deleted = 0;
            for (listener, starts) in group_keys(keys) {
                deleted += diesel::delete(
                    listener_stats::table
                        .filter(listener_stats::listener.eq(&listener))
                        .filter(listener_stats::interval_start_ms.eq_any(&starts))
                        .filter(listener_stats::interval_start_ms.lt(before_ms)),
                )
                .execute(conn)?;
            }
            Ok(deleted)
        })?;
        Ok((selected, deleted))
    })
}

/// Groups two-column keys by their first column.
fn group_keys<K: Ord>(keys: Vec<(K, i64)>) -> BTreeMap<K, Vec<i64>> {
    let mut grouped: BTreeMap<K, Vec<i64>> = BTreeMap::new();
    for (first, second) in keys {
        grouped.entry(first).or_default().push(second);
    }
    grouped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_grouped_by_their_first_column() {
        let grouped = group_keys(vec![
            ("b".to_string(), 1),
            ("a".to_string(), 2),
            ("b".to_string(), 3),
        ]);
        assert_eq!(grouped.len(), 2);
        assert_eq!(grouped["a"], vec![2]);
        assert_eq!(grouped["b"], vec![1, 3]);
    }

    #[test]
    fn a_report_adds_up() {
        let report = CleanupReport {
            event_log: 1,
            inbox: 2,
            forwarder_batches: 3,
            outgoing_replies: 4,
            listener_stats: 5,
        };
        assert_eq!(report.total(), 15);
    }
}

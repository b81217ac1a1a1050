//! Data retention: the two maintenance jobs that delete or erase old stored data, both plain
//! functions on a connection (run them through [`super::Db::run`] or
//! [`super::Db::run_blocking`]):
//!
//! * [`cleanup`] deletes what is older than a cut-off — event-log rows, finished inbox events
//!   (with their work rows), accepted forwarder batch ids, outgoing-webhook replies and
//!   aggregated statistics — and erases the envelopes of the inbox events it keeps (pending,
//!   parked, dead), in bounded batches, each its own short transaction, so that neither
//!   backend holds a long write lock while the server keeps writing.
//! * [`expire_personal_data`] does the same for personal data, each kind with its own period:
//!   it erases the content and personal columns of stored messages (keeping a tombstone), and
//!   deletes the activity of users not seen for long and old keyword-alert records.
//!
//! Both work on SQLite and PostgreSQL with the same queries, and add no index to the hot
//! tables: they walk tables in primary-key order. (The aggregation of the event log into
//! statistics, which used to live here, is [`super::tables::listener_stats`].)

use std::collections::BTreeMap;

use diesel::prelude::*;

use super::event_key::EventKey;
use super::schema::{
    event_log, forwarder_batches, inbox, inbox_work, keyword_alerts, listener_stats, messages,
    outgoing_replies, user_activity,
};
use super::tables::inbox::{InboxStatus, not_erased, rewrite_payloads};
use super::{DbConnection, DbError};
use crate::events::erasure::Removal;

/// The largest batch [`cleanup`] deletes at once (larger requests are reduced to it): keeps
/// the key list of one statement well below the bound-parameter limits of both backends.
pub const MAX_BATCH_SIZE: i64 = 10_000;

/// Rows deleted per table by [`cleanup`] (and the inbox envelopes it erased).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CleanupReport {
    /// Event-log rows.
    pub event_log: usize,
    /// Finished inbox events (see [`InboxStatus::FINISHED`]).
    pub inbox: usize,
    /// Envelopes of open inbox events (see [`InboxStatus::OPEN`]) whose content was erased.
    pub inbox_erased: usize,
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

impl PersonalCutoffs {
    /// The cut-offs of `[retention]` at `now_ms`; `None` for a kind kept forever.
    pub fn from_config(config: &crate::config::RetentionConfig, now_ms: i64) -> PersonalCutoffs {
        let before = |days: u32| {
            (days > 0).then(|| now_ms.saturating_sub(i64::from(days).saturating_mul(86_400_000)))
        };
        PersonalCutoffs {
            messages: before(config.message_retention_days),
            activity: before(config.activity_retention_days),
            alerts: before(config.alert_retention_days),
        }
    }
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

/// Deletes the rows of a table keyed by two columns, `(first: type, second)` (the second an
/// `i64`), whose `time` column is before `before`, through [`Batches::run`]: each batch
/// reads keys in `order`, then deletes them per first column in one transaction, repeating
/// the time condition (a row touched meanwhile is kept). Evaluates to the rows deleted.
macro_rules! keyed_cleanup {
    ($conn:expr, $batches:expr, $table:ident, ($first:ident: $key:ty, $second:ident),
     $time:ident < $before:expr, order $order:expr) => {
        $batches.run($conn, stringify!($table), |conn, limit| {
            let keys: Vec<($key, i64)> = $table::table
                .select(($table::$first, $table::$second))
                .filter($table::$time.lt($before))
                .order($order)
                .limit(limit)
                .load(conn)?;
            let selected = keys.len();
            let deleted = conn.transaction::<_, DbError, _>(|conn| {
                let mut deleted = 0;
                for (first, seconds) in group_keys(keys) {
                    deleted += diesel::delete(
                        $table::table
                            .filter($table::$first.eq(&first))
                            .filter($table::$second.eq_any(&seconds))
                            .filter($table::$time.lt($before)),
                    )
                    .execute(conn)?;
                }
                Ok(deleted)
            })?;
            Ok((selected, deleted))
        })
    };
}

/// Deletes data older than `before_ms`:
///
/// * `event_log` rows created before it;
/// * `inbox` events that are finished or rate-limited (see [`InboxStatus::FINISHED`]) and
///   were last updated before it; pending, parked and dead events received before it are
///   kept, still to be processed or replayed, with their envelopes erased (ids and metadata
///   stay, content goes: [`crate::events::erasure`]);
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
    let mut batches = Batches::new(batch_size, progress)?;
    Ok(CleanupReport {
        event_log: clean_event_log(conn, before_ms, &mut batches)?,
        inbox: clean_inbox(conn, before_ms, &mut batches)?,
        inbox_erased: erase_open_inbox(conn, before_ms, &mut batches)?,
        forwarder_batches: clean_forwarder_batches(conn, before_ms, &mut batches)?,
        // Oldest first through `outgoing_replies_created`.
        outgoing_replies: keyed_cleanup!(conn, batches, outgoing_replies,
            (bot: String, message_id), created_at_ms < before_ms,
            order outgoing_replies::created_at_ms)?,
        // Oldest first through `listener_stats_interval`.
        listener_stats: keyed_cleanup!(conn, batches, listener_stats,
            (listener: String, interval_start_ms), interval_start_ms < before_ms,
            order listener_stats::interval_start_ms)?,
    })
}

/// Applies the personal-data retention, in batches like [`cleanup`]:
///
/// * `messages` stored before `cutoffs.messages` have their content, topic, sender email and
///   name and direct-message recipients erased (the row stays as a tombstone, as for a message
///   deleted in Zulip);
/// * `user_activity` rows of users last seen before `cutoffs.activity` are deleted (a user
///   seen meanwhile is kept);
/// * `keyword_alerts` records sent before `cutoffs.alerts` are deleted.
pub fn expire_personal_data(
    conn: &mut DbConnection,
    cutoffs: &PersonalCutoffs,
    batch_size: i64,
    progress: &mut dyn FnMut(&str, usize),
) -> Result<PersonalReport, DbError> {
    let mut batches = Batches::new(batch_size, progress)?;
    let mut report = PersonalReport::default();
    if let Some(before) = cutoffs.messages {
        report.messages_erased = erase_old_messages(conn, before, &mut batches)?;
    }
    if let Some(before) = cutoffs.activity {
        report.user_activity = keyed_cleanup!(conn, batches, user_activity,
            (realm_id: i64, user_id), last_seen_ms < before,
            order (user_activity::realm_id, user_activity::user_id))?;
    }
    if let Some(before) = cutoffs.alerts {
        report.keyword_alerts = keyed_cleanup!(conn, batches, keyword_alerts,
            (rule: String, message_id), sent_at_ms < before,
            order (keyword_alerts::rule, keyword_alerts::message_id))?;
    }
    Ok(report)
}

/// How a retention job walks a table: at most `limit` rows a batch, `progress` told after
/// each.
struct Batches<'p> {
    limit: i64,
    progress: &'p mut dyn FnMut(&str, usize),
}

impl<'p> Batches<'p> {
    /// Refuses a batch size below 1 and caps it at [`MAX_BATCH_SIZE`].
    fn new(batch_size: i64, progress: &'p mut dyn FnMut(&str, usize)) -> Result<Self, DbError> {
        if batch_size < 1 {
            return Err(DbError::Invalid(format!(
                "the cleanup batch size must be positive, not {batch_size}"
            )));
        }
        Ok(Batches {
            limit: batch_size.min(MAX_BATCH_SIZE),
            progress,
        })
    }

    /// Runs `batch` (given the limit; it returns the rows it selected and deleted) until it
    /// selects fewer than the limit, reporting progress after each; returns the rows deleted.
    fn run(
        &mut self,
        conn: &mut DbConnection,
        table: &str,
        mut batch: impl FnMut(&mut DbConnection, i64) -> Result<(usize, usize), DbError>,
    ) -> Result<usize, DbError> {
        let full = usize::try_from(self.limit).unwrap_or(usize::MAX);
        let mut deleted = 0;
        loop {
            let (selected, removed) = batch(conn, self.limit)?;
            deleted += removed;
            (self.progress)(table, deleted);
            if selected < full {
                return Ok(deleted);
            }
        }
    }
}

/// Messages stored before `before_ms` that still hold content or personal data, walked in id
/// order; each batch erases them with the same conditions repeated.
fn erase_old_messages(
    conn: &mut DbConnection,
    before_ms: i64,
    b: &mut Batches,
) -> Result<usize, DbError> {
    let mut after = i64::MIN;
    b.run(conn, "messages", |conn, limit| {
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

/// Event-log rows, walked in id order (ids grow with time, so old rows come first); each
/// batch continues after the previous one's last id rather than rescanning from the start.
fn clean_event_log(
    conn: &mut DbConnection,
    before_ms: i64,
    b: &mut Batches,
) -> Result<usize, DbError> {
    let mut after = i64::MIN;
    b.run(conn, "event_log", |conn, limit| {
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
fn clean_inbox(conn: &mut DbConnection, before_ms: i64, b: &mut Batches) -> Result<usize, DbError> {
    let mut after = i64::MIN;
    b.run(conn, "inbox", |conn, limit| {
        let keys: Vec<(i64, EventKey)> = inbox::table
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
        let (ids, event_ids): (Vec<i64>, Vec<EventKey>) = keys.into_iter().unzip();
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

/// Envelopes of open events received before `before_ms` and not erased yet, walked in id
/// order; each is rewritten without its content (a row finished meanwhile keeps no envelope
/// and is left alone).
fn erase_open_inbox(
    conn: &mut DbConnection,
    before_ms: i64,
    b: &mut Batches,
) -> Result<usize, DbError> {
    let mut after = i64::MIN;
    b.run(conn, "inbox envelopes", |conn, limit| {
        let rows: Vec<(i64, String)> = inbox::table
            .select((inbox::id, inbox::payload))
            .filter(inbox::id.gt(after))
            .filter(inbox::status.eq_any(InboxStatus::OPEN))
            .filter(inbox::received_at_ms.lt(before_ms))
            .filter(inbox::payload.ne(""))
            .filter(not_erased())
            .order(inbox::id)
            .limit(limit)
            .load(conn)?;
        let Some(&(last, _)) = rows.last() else {
            return Ok((0, 0));
        };
        after = last;
        let selected = rows.len();
        let erased = conn.transaction(|conn| rewrite_payloads(conn, rows, Removal::Retention))?;
        Ok((selected, erased))
    })
}

/// Accepted batch ids, walked in key order.
fn clean_forwarder_batches(
    conn: &mut DbConnection,
    before_ms: i64,
    b: &mut Batches,
) -> Result<usize, DbError> {
    let mut after: Option<String> = None;
    b.run(conn, "forwarder_batches", |conn, limit| {
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
            inbox_erased: 6,
            forwarder_batches: 3,
            outgoing_replies: 4,
            listener_stats: 5,
        };
        assert_eq!(report.total(), 15, "erased envelopes are not deleted rows");
    }
}

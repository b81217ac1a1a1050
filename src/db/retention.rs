//! Statistics aggregation and data retention.
//!
//! This module owns the `listener_stats` table and the two maintenance jobs over the stored
//! data, both plain functions on a connection (run them through [`super::Db::run`] or
//! [`super::Db::run_blocking`]):
//!
//! * [`aggregate_stats`] folds the event log into one `listener_stats` row per handler per
//!   completed interval (runs, failures, total and maximum duration), so that statistics
//!   outlive the event log's retention. [`stats_since`] reads them back.
//! * [`cleanup`] deletes what is older than a cut-off — event-log rows, finished inbox events,
//!   accepted forwarder batch ids, outgoing-webhook replies and aggregated statistics — in
//!   bounded batches, each its own short transaction, so that neither backend holds a long
//!   write lock while the server keeps writing.
//! * [`expire_personal_data`] does the same for personal data, each kind with its own period:
//!   it erases the content and personal columns of stored messages (keeping a tombstone), and
//!   deletes the activity of users not seen for long and old keyword-alert records.
//!
//! Both work on SQLite and PostgreSQL with the same queries. Neither adds an index to the hot
//! tables: the aggregation reads the event log through its `(handler, created_at_ms)` index one
//! handler at a time, and the retention walks tables in primary-key order.
//!
//! Times are Unix milliseconds (never before the epoch): intervals are aligned to multiples of
//! the interval length since the epoch.

use std::collections::BTreeMap;

use diesel::dsl::{case_when, count, count_star, max, not, sql};
use diesel::prelude::*;
use diesel::sql_types::BigInt;
use diesel::upsert::excluded;

use super::schema::{
    event_log, forwarder_batches, inbox, inbox_work, keyword_alerts, listener_stats, messages,
    outgoing_replies, user_activity,
};
use super::{DbConnection, DbError};

/// Inbox statuses that may be deleted once old. `rate_limited` events keep their envelope
/// (the message content) for a replay, so they go after the retention period like the rest of
/// the stored data. `pending`, `parked` and `dead` events are kept whatever their age: they
/// are still to be processed, or to be looked at by an operator.
pub const FINISHED_INBOX_STATUSES: [&str; 4] = ["done", "expired", "filtered", "rate_limited"];

/// The largest batch [`cleanup`] deletes at once (larger requests are reduced to it): keeps
/// the key list of one statement well below the bound-parameter limits of both backends.
pub const MAX_BATCH_SIZE: i64 = 10_000;

/// Rows per multi-row INSERT when writing statistics (8 parameters a row).
const ROWS_PER_STATEMENT: usize = 500;

/// One handler's runs in one interval, as stored in `listener_stats`.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable, serde::Serialize)]
#[diesel(table_name = listener_stats)]
pub struct StatsRow {
    /// The handler's name, as in the event log.
    pub handler: String,
    /// Start of the interval (Unix ms, a multiple of `interval_ms`).
    pub interval_start_ms: i64,
    /// Length of the interval in milliseconds.
    pub interval_ms: i64,
    /// Runs logged in the interval.
    pub runs: i64,
    /// Runs that failed.
    pub failures: i64,
    /// Sum of the runs' durations in microseconds.
    pub total_duration_us: i64,
    /// Longest run in microseconds.
    pub max_duration_us: i64,
    /// When the row was last (re)computed (Unix ms).
    pub updated_at_ms: i64,
}

/// Rows deleted per table by [`cleanup`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CleanupReport {
    /// Event-log rows.
    pub event_log: usize,
    /// Finished inbox events (see [`FINISHED_INBOX_STATUSES`]).
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

/// Start of the interval of length `interval_ms` that contains `at_ms`.
fn interval_start(at_ms: i64, interval_ms: i64) -> i64 {
    at_ms.div_euclid(interval_ms) * interval_ms
}

/// Aggregates the event log into `listener_stats`: for every completed interval (aligned to
/// multiples of `interval_ms` since the epoch and ending at or before `now_ms`) one row per
/// handler that ran in it, with its runs, failures, and the sum and maximum of the durations.
/// An existing row for the same (handler, interval) is replaced, so running it again gives
/// the same table, and event-log rows committed late into an interval that was already
/// aggregated are counted by the next run. The interval still open at `now_ms` is left alone.
///
/// The work is bounded: only intervals from one before the latest aggregated interval onward
/// are recomputed (from each handler's oldest event-log row when nothing is aggregated yet).
/// Rows arriving later than that are not counted. `now_ms` is also written as the rows'
/// `updated_at_ms`. Returns the number of rows written.
///
/// Use one interval length for a database: rows keep the length they were computed with, but
/// the resume point is the latest row whatever its length.
pub fn aggregate_stats(
    conn: &mut DbConnection,
    interval_ms: i64,
    now_ms: i64,
) -> Result<usize, DbError> {
    if interval_ms <= 0 {
        return Err(DbError::Invalid(format!(
            "the statistics interval must be positive, not {interval_ms} ms"
        )));
    }
    // Intervals starting before `end` are complete.
    let end = interval_start(now_ms, interval_ms);
    let latest: Option<i64> = listener_stats::table
        .select(max(listener_stats::interval_start_ms))
        .get_result(conn)?;
    let resume_from = latest.map(|l| interval_start(l.saturating_sub(interval_ms), interval_ms));
    // The grouping expression is written out with the interval as a literal (it is an
    // integer, so this is safe): PostgreSQL accepts a grouped expression in the select list
    // only if it is the same text, which two bound parameters would not be.
    let bucket = format!("created_at_ms / {interval_ms} * {interval_ms}");

    let mut rows = Vec::new();
    for handler in logged_handlers(conn)? {
        let start = match resume_from {
            Some(start) => start,
            None => {
                let oldest: Option<i64> = event_log::table
                    .filter(event_log::handler.eq(&handler))
                    .select(event_log::created_at_ms)
                    .order(event_log::created_at_ms)
                    .first(conn)
                    .optional()?;
                match oldest {
                    Some(oldest) => interval_start(oldest, interval_ms),
                    None => continue,
                }
            }
        };
        if start >= end {
            continue;
        }
        let groups: Vec<(i64, i64, i64, i64, Option<i64>)> = event_log::table
            .filter(event_log::handler.eq(&handler))
            .filter(event_log::created_at_ms.ge(start))
            .filter(event_log::created_at_ms.lt(end))
            .group_by(sql::<BigInt>(&bucket))
            .select((
                sql::<BigInt>(&bucket),
                count_star(),
                count(case_when::<_, _, BigInt>(not(event_log::success), 1i64)),
                // SUM of a BIGINT is NUMERIC on PostgreSQL.
                sql::<BigInt>("CAST(SUM(duration_us) AS BIGINT)"),
                max(event_log::duration_us),
            ))
            .load(conn)?;
        rows.extend(
            groups
                .into_iter()
                .map(|(start, runs, failures, total, longest)| StatsRow {
                    handler: handler.clone(),
                    interval_start_ms: start,
                    interval_ms,
                    runs,
                    failures,
                    total_duration_us: total,
                    max_duration_us: longest.unwrap_or(0),
                    updated_at_ms: now_ms,
                }),
        );
    }
    if rows.is_empty() {
        return Ok(0);
    }
    // Diesel writes an upsert of several rows for PostgreSQL only; SQLite gets one prepared
    // statement per row, which costs it no round trips.
    macro_rules! upsert {
        ($values:expr, $c:expr) => {
            diesel::insert_into(listener_stats::table)
                .values($values)
                .on_conflict((listener_stats::handler, listener_stats::interval_start_ms))
                .do_update()
                .set((
                    listener_stats::interval_ms.eq(excluded(listener_stats::interval_ms)),
                    listener_stats::runs.eq(excluded(listener_stats::runs)),
                    listener_stats::failures.eq(excluded(listener_stats::failures)),
                    listener_stats::total_duration_us
                        .eq(excluded(listener_stats::total_duration_us)),
                    listener_stats::max_duration_us.eq(excluded(listener_stats::max_duration_us)),
                    listener_stats::updated_at_ms.eq(excluded(listener_stats::updated_at_ms)),
                ))
                .execute($c)
        };
    }
    conn.transaction::<_, DbError, _>(|conn| {
        match conn {
            DbConnection::Sqlite(c) => {
                for row in &rows {
                    upsert!(row, c)?;
                }
            }
            DbConnection::Postgres(c) => {
                for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                    upsert!(chunk, c)?;
                }
            }
        }
        Ok(())
    })?;
    Ok(rows.len())
}

/// The distinct handler names in the event log, one index look-up each (a loose index scan
/// over `(handler, created_at_ms)`, which neither backend does by itself for `DISTINCT`).
fn logged_handlers(conn: &mut DbConnection) -> Result<Vec<String>, DbError> {
    let mut handlers = Vec::new();
    let mut next: Option<String> = event_log::table
        .select(event_log::handler)
        .order(event_log::handler)
        .first(conn)
        .optional()?;
    while let Some(handler) = next {
        next = event_log::table
            .select(event_log::handler)
            .filter(event_log::handler.gt(&handler))
            .order(event_log::handler)
            .first(conn)
            .optional()?;
        handlers.push(handler);
    }
    Ok(handlers)
}

/// Aggregated statistics for intervals starting at or after `since_ms`, ordered by interval,
/// then handler.
pub fn stats_since(conn: &mut DbConnection, since_ms: i64) -> Result<Vec<StatsRow>, DbError> {
    Ok(listener_stats::table
        .filter(listener_stats::interval_start_ms.ge(since_ms))
        .order((listener_stats::interval_start_ms, listener_stats::handler))
        .select(StatsRow::as_select())
        .load(conn)?)
}

/// Deletes data older than `before_ms`:
///
/// * `event_log` rows created before it;
/// * `inbox` events that are finished or rate-limited (see [`FINISHED_INBOX_STATUSES`]) and
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
        .set(super::store::scrubbed_message())
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
            .filter(inbox::status.eq_any(FINISHED_INBOX_STATUSES))
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
                .filter(inbox::status.eq_any(FINISHED_INBOX_STATUSES))
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
/// deleted per handler in one transaction.
fn clean_listener_stats(
    conn: &mut DbConnection,
    before_ms: i64,
    limit: i64,
    progress: &mut dyn FnMut(&str, usize),
) -> Result<usize, DbError> {
    in_batches(conn, "listener_stats", limit, progress, |conn| {
        let keys: Vec<(String, i64)> = listener_stats::table
            .select((listener_stats::handler, listener_stats::interval_start_ms))
            .filter(listener_stats::interval_start_ms.lt(before_ms))
            .order(listener_stats::interval_start_ms)
            .limit(limit)
            .load(conn)?;
        let selected = keys.len();
        let deleted = conn.transaction::<_, DbError, _>(|conn| {
            let mut deleted = 0;
            for (handler, starts) in group_keys(keys) {
                deleted += diesel::delete(
                    listener_stats::table
                        .filter(listener_stats::handler.eq(&handler))
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
    fn intervals_are_aligned_to_the_epoch() {
        assert_eq!(interval_start(0, 60_000), 0);
        assert_eq!(interval_start(59_999, 60_000), 0);
        assert_eq!(interval_start(60_000, 60_000), 60_000);
        assert_eq!(
            interval_start(1_700_000_123_456, 3_600_000),
            1_699_999_200_000
        );
    }

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

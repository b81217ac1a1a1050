//! The reads of the admin dashboard (`/admin/`), each bounded so that a page stays fast with
//! millions of event-log rows: counts through the `event_log_created` index, listener figures
//! from `listener_stats`, and event-log pages that look at a bounded range of ids.

use diesel::dsl::{count_star, sql};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Text};

use super::models::{EventLogRow, InboxEntry};
use super::schema::{event_log, inbox, listener_stats};
use super::{DbConnection, DbError};

/// Event-log runs per bucket of `bucket_ms` since `since_ms`, by source and outcome:
/// `(bucket start, source, success, count)`.
pub fn runs_by_bucket(
    conn: &mut DbConnection,
    since_ms: i64,
    bucket_ms: i64,
) -> Result<Vec<(i64, String, bool, i64)>, DbError> {
    let bucket_ms = bucket_ms.max(1);
    // An integer written into the SQL (see `retention::aggregate_stats`): PostgreSQL accepts a
    // grouped expression only when the select list repeats it as the same text.
    let bucket = format!("created_at_ms / {bucket_ms} * {bucket_ms}");
    Ok(event_log::table
        .filter(event_log::created_at_ms.ge(since_ms))
        .group_by(sql::<BigInt>(&format!("{bucket}, source, success")))
        .select(sql::<(BigInt, Text, Bool, BigInt)>(&format!(
            "{bucket}, source, success, COUNT(*)"
        )))
        .load(conn)?)
}

/// `listener_stats` rows since `since_ms`, summed over listeners per interval:
/// `(interval start, runs, failures)`, oldest first.
pub fn stats_by_interval(
    conn: &mut DbConnection,
    since_ms: i64,
) -> Result<Vec<(i64, i64, i64)>, DbError> {
    Ok(listener_stats::table
        .filter(listener_stats::interval_start_ms.ge(since_ms))
        .group_by(listener_stats::interval_start_ms)
        .select((
            listener_stats::interval_start_ms,
            sql::<BigInt>("CAST(SUM(runs) AS BIGINT)"),
            sql::<BigInt>("CAST(SUM(failures) AS BIGINT)"),
        ))
        .order(listener_stats::interval_start_ms)
        .load(conn)?)
}

/// The newest `listener_stats` interval: `(start, length)`, if it has rows.
pub fn newest_interval(conn: &mut DbConnection) -> Result<Option<(i64, i64)>, DbError> {
    Ok(listener_stats::table
        .order(listener_stats::interval_start_ms.desc())
        .select((
            listener_stats::interval_start_ms,
            listener_stats::interval_ms,
        ))
        .first(conn)
        .optional()?)
}

/// One listener's `listener_stats` rows since `since_ms`: `(interval start, runs,
/// failures, max duration µs)`, oldest first.
pub fn listener_intervals(
    conn: &mut DbConnection,
    name: &str,
    since_ms: i64,
) -> Result<Vec<(i64, i64, i64, i64)>, DbError> {
    Ok(listener_stats::table
        .filter(listener_stats::handler.eq(name))
        .filter(listener_stats::interval_start_ms.ge(since_ms))
        .order(listener_stats::interval_start_ms)
        .select((
            listener_stats::interval_start_ms,
            listener_stats::runs,
            listener_stats::failures,
            listener_stats::max_duration_us,
        ))
        .load(conn)?)
}

/// Durations (µs) of a listener's newest runs (at most `limit`) since `since_ms`, read
/// through the `(handler, created_at_ms)` index.
pub fn recent_durations(
    conn: &mut DbConnection,
    name: &str,
    since_ms: i64,
    limit: i64,
) -> Result<Vec<i64>, DbError> {
    Ok(event_log::table
        .filter(event_log::handler.eq(name))
        .filter(event_log::created_at_ms.ge(since_ms))
        .order(event_log::created_at_ms.desc())
        .limit(limit)
        .select(event_log::duration_us)
        .load(conn)?)
}

/// The newest id of the event log, if it has rows.
pub fn newest_event_id(conn: &mut DbConnection) -> Result<Option<i64>, DbError> {
    Ok(event_log::table
        .order(event_log::id.desc())
        .select(event_log::id)
        .first(conn)
        .optional()?)
}

/// The oldest id of the event log, if it has rows.
pub fn oldest_event_id(conn: &mut DbConnection) -> Result<Option<i64>, DbError> {
    Ok(event_log::table
        .order(event_log::id)
        .select(event_log::id)
        .first(conn)
        .optional()?)
}

/// The id of the newest run created at or before `at_ms` (a time filter turned into an id,
/// through the `event_log_created` index).
pub fn id_at_or_before(conn: &mut DbConnection, at_ms: i64) -> Result<Option<i64>, DbError> {
    Ok(event_log::table
        .filter(event_log::created_at_ms.le(at_ms))
        .order(event_log::created_at_ms.desc())
        .select(event_log::id)
        .first(conn)
        .optional()?)
}

/// The id of the oldest run created at or after `at_ms`.
pub fn id_at_or_after(conn: &mut DbConnection, at_ms: i64) -> Result<Option<i64>, DbError> {
    Ok(event_log::table
        .filter(event_log::created_at_ms.ge(at_ms))
        .order(event_log::created_at_ms)
        .select(event_log::id)
        .first(conn)
        .optional()?)
}

/// What the event-log page filters on.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub handler: Option<String>,
    pub realm: Option<String>,
    pub event_type: Option<String>,
    pub success: Option<bool>,
}

/// Rows with ids in `low..=high` that pass `filter`, newest first, at most `limit`: a page
/// of the event log reads at most `high - low + 1` rows however rare the filter's matches
/// are (keyset pagination by id; the caller moves the window).
pub fn event_window(
    conn: &mut DbConnection,
    filter: &EventFilter,
    low: i64,
    high: i64,
    limit: i64,
) -> Result<Vec<EventLogRow>, DbError> {
    let mut query = event_log::table
        .filter(event_log::id.ge(low))
        .filter(event_log::id.le(high))
        .into_boxed();
    if let Some(handler) = &filter.handler {
        // Written so that no index on `handler` applies: the id range is the bounded read,
        // where the `(handler, created_at_ms)` index would visit every run of the listener.
        query = query.filter(sql::<Bool>("handler || '' = ").bind::<Text, _>(handler.clone()));
    }
    if let Some(realm) = &filter.realm {
        query = query.filter(event_log::realm.eq(realm.clone()));
    }
    if let Some(event_type) = &filter.event_type {
        query = query.filter(event_log::event_type.eq(event_type.clone()));
    }
    if let Some(success) = filter.success {
        query = query.filter(event_log::success.eq(success));
    }
    Ok(query
        .order(event_log::id.desc())
        .limit(limit)
        .select(EventLogRow::as_select())
        .load(conn)?)
}

/// One event-log row.
pub fn event_by_id(conn: &mut DbConnection, id: i64) -> Result<Option<EventLogRow>, DbError> {
    Ok(event_log::table
        .find(id)
        .select(EventLogRow::as_select())
        .first(conn)
        .optional()?)
}

/// Other runs of the same event (other listeners, retries) among the ids within `span` of
/// `id`: a bounded search, as `event_id` has no index of its own.
pub fn runs_of_event(
    conn: &mut DbConnection,
    event_id: &str,
    id: i64,
    span: i64,
) -> Result<Vec<EventLogRow>, DbError> {
    Ok(event_log::table
        .filter(event_log::id.ge(id.saturating_sub(span)))
        .filter(event_log::id.le(id.saturating_add(span)))
        .filter(event_log::event_id.eq(event_id))
        .order(event_log::id)
        .limit(100)
        .select(EventLogRow::as_select())
        .load(conn)?)
}

/// A forwarded event in the inbox, by its event id (unique index).
pub fn inbox_entry(conn: &mut DbConnection, event_id: &str) -> Result<Option<InboxEntry>, DbError> {
    Ok(inbox::table
        .filter(inbox::event_id.eq(event_id))
        .select(InboxEntry::as_select())
        .first(conn)
        .optional()?)
}

/// Whether an inbox row with this event id and one of `statuses` exists.
pub fn inbox_has(
    conn: &mut DbConnection,
    event_id: &str,
    statuses: &[&str],
) -> Result<bool, DbError> {
    let n: i64 = inbox::table
        .filter(inbox::event_id.eq(event_id))
        .filter(inbox::status.eq_any(statuses))
        .select(count_star())
        .first(conn)?;
    Ok(n > 0)
}

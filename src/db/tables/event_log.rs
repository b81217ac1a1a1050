//! The `event_log` table: one row per listener run (written in bulk by the writer), and its
//! reads — run counts, a listener's run statistics, and the bounded reads of the admin
//! dashboard and API (counts through the `event_log_created` index, pages that look at a
//! bounded range of ids), each fast with millions of rows.

use std::borrow::Cow;

use diesel::dsl::{count_star, max, sql};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Text};

use crate::db::bulk::{self, bulk_row};
use crate::db::schema::event_log;
use crate::db::{DbConnection, DbError};

/// One listener run: written in bulk by the writer ([`insert_event_logs`]; `None` fields are
/// NULL, never a column default), and listed by the admin API and the dashboard. As JSON it is
/// its fields by name, plus `handler`, the deprecated name of `listener` (same value).
#[derive(Debug, Clone, Insertable, Queryable, Selectable)]
#[diesel(table_name = event_log, treat_none_as_default_value = false)]
#[derive(serde::Deserialize, utoipa::ToSchema)]
pub struct EventLogRow {
    /// The database's id: 0 until the row is stored (never inserted).
    #[diesel(skip_insertion)]
    pub id: i64,
    /// The listener that ran (or the guard that refused the event).
    pub listener: String,
    /// `outgoing` or `forwarder` when written by this server.
    #[schema(value_type = String)]
    pub source: Cow<'static, str>,
    pub event_type: String,
    pub bot: Option<String>,
    pub realm: Option<String>,
    pub realm_id: Option<i64>,
    pub user_id: Option<i64>,
    pub message_id: Option<i64>,
    pub event_id: Option<String>,
    pub duration_us: i64,
    pub success: bool,
    pub error: Option<String>,
    pub created_at_ms: i64,
}

impl serde::Serialize for EventLogRow {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        // Every field named, so that a new one cannot be left out of the JSON unnoticed.
        let EventLogRow {
            id,
            listener,
            source,
            event_type,
            bot,
            realm,
            realm_id,
            user_id,
            message_id,
            event_id,
            duration_us,
            success,
            error,
            created_at_ms,
        } = self;
        let mut row = serializer.serialize_struct("EventLogRow", 15)?;
        row.serialize_field("id", id)?;
        row.serialize_field("listener", listener)?;
        row.serialize_field("source", source)?;
        row.serialize_field("event_type", event_type)?;
        row.serialize_field("bot", bot)?;
        row.serialize_field("realm", realm)?;
        row.serialize_field("realm_id", realm_id)?;
        row.serialize_field("user_id", user_id)?;
        row.serialize_field("message_id", message_id)?;
        row.serialize_field("event_id", event_id)?;
        row.serialize_field("duration_us", duration_us)?;
        row.serialize_field("success", success)?;
        row.serialize_field("error", error)?;
        row.serialize_field("created_at_ms", created_at_ms)?;
        row.serialize_field(DEPRECATED_LISTENER_KEY, listener)?;
        row.end()
    }
}

/// The deprecated name of the `listener` field in the JSON of event-log and statistics rows,
/// written beside it until it is removed (docs/deprecations.md).
pub const DEPRECATED_LISTENER_KEY: &str = "handler";

bulk_row! {
    EventLogRow => event_log,
    sqlite: "INSERT OR FAIL INTO" + "",
    postgres: "",
    columns: (
        listener, source, event_type, bot, realm, realm_id, user_id, message_id, event_id,
        duration_us, success, error, created_at_ms,
    ),
    generated: (id),
}

/// Runs and failures of one listener, counted from the event log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListenerCounts {
    pub listener: String,
    pub runs: i64,
    pub failures: i64,
}

/// The start of the event-log error of an event a listener skipped because it was over its
/// own quota: not a failure, and counted apart in the statistics.
pub const RATE_LIMITED: &str = "rate_limited: ";

/// Whether an event-log row is a listener's skip over its own quota (not a failure).
pub fn is_rate_limited(row: &EventLogRow) -> bool {
    !row.success
        && row
            .error
            .as_deref()
            .is_some_and(|e| e.starts_with(RATE_LIMITED))
}

/// Appends listener runs.
pub fn insert_event_logs(conn: &mut DbConnection, rows: &[&EventLogRow]) -> Result<(), DbError> {
    bulk::insert(conn, rows)
}

/// Runs and failures per listener, from the event log.
pub fn listener_counts(conn: &mut DbConnection) -> Result<Vec<ListenerCounts>, DbError> {
    let runs: Vec<(String, i64)> = event_log::table
        .group_by(event_log::listener)
        .select((event_log::listener, count_star()))
        .load(conn)?;
    let failures: Vec<(String, i64)> = event_log::table
        .filter(event_log::success.eq(false))
        .group_by(event_log::listener)
        .select((event_log::listener, count_star()))
        .load(conn)?;
    let mut counts: Vec<ListenerCounts> = runs
        .into_iter()
        .map(|(listener, runs)| {
            let failures = failures
                .iter()
                .find(|(l, _)| *l == listener)
                .map_or(0, |(_, n)| *n);
            ListenerCounts {
                listener,
                runs,
                failures,
            }
        })
        .collect();
    counts.sort_by(|a, b| a.listener.cmp(&b.listener));
    Ok(counts)
}

/// Rows in the event log. For tests and benchmarks.
pub fn count_event_logs(conn: &mut DbConnection) -> Result<i64, DbError> {
    Ok(event_log::table.count().get_result(conn)?)
}

/// Which event-log rows a page holds; `None` matches any.
#[derive(Debug, Clone, Default)]
pub struct EventLogFilter {
    pub listener: Option<String>,
    pub event_type: Option<String>,
    pub success: Option<bool>,
    /// `outgoing` or `forwarder`.
    pub source: Option<String>,
    /// Runs on events about this Zulip message.
    pub message_id: Option<i64>,
    /// Rows created at or after this time (Unix ms): with it, a look-up by message reads
    /// only the recent part of the `event_log_created` index.
    pub since_ms: Option<i64>,
}

/// A page of the event log, newest first, filtered.
pub fn event_log_page(
    conn: &mut DbConnection,
    filter: &EventLogFilter,
    offset: i64,
    limit: i64,
) -> Result<Vec<EventLogRow>, DbError> {
    let mut query = event_log::table.into_boxed();
    if let Some(listener) = &filter.listener {
        query = query.filter(event_log::listener.eq(listener.clone()));
    }
    if let Some(event_type) = &filter.event_type {
        query = query.filter(event_log::event_type.eq(event_type.clone()));
    }
    if let Some(success) = filter.success {
        query = query.filter(event_log::success.eq(success));
    }
    if let Some(source) = &filter.source {
        query = query.filter(event_log::source.eq(source.clone()));
    }
    if let Some(message_id) = filter.message_id {
        query = query.filter(event_log::message_id.eq(message_id));
    }
    if let Some(since_ms) = filter.since_ms {
        query = query.filter(event_log::created_at_ms.ge(since_ms));
    }
    Ok(query
        .order(event_log::id.desc())
        .offset(offset)
        .limit(limit)
        .select(EventLogRow::as_select())
        .load(conn)?)
}

/// Listener runs and failures since `since_ms`, and the time of the newest run.
pub fn activity_since(
    conn: &mut DbConnection,
    since_ms: i64,
) -> Result<(i64, i64, Option<i64>), DbError> {
    let runs: i64 = event_log::table
        .filter(event_log::created_at_ms.ge(since_ms))
        .count()
        .get_result(conn)?;
    let failures: i64 = event_log::table
        .filter(event_log::created_at_ms.ge(since_ms))
        .filter(event_log::success.eq(false))
        .count()
        .get_result(conn)?;
    let last: Option<i64> = event_log::table
        .select(max(event_log::created_at_ms))
        .first(conn)?;
    Ok((runs, failures, last))
}

/// Runs whose durations make the average and the 95th percentile.
const DURATION_SAMPLE: i64 = 10_000;

/// What a listener's runs since some time came to; times are of the newest 10,000 runs.
#[derive(
    Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct RunStats {
    /// Runs (events skipped over the listener's own quota are not runs).
    pub runs: i64,
    pub failures: i64,
    /// Events skipped because the listener was over its own quota.
    pub rate_limited: i64,
    /// Share of runs that succeeded, 0 to 1; `None` without runs.
    pub success_rate: Option<f64>,
    pub avg_duration_ms: Option<f64>,
    pub p95_duration_ms: Option<f64>,
    pub last_run_at_ms: Option<i64>,
    pub last_error: Option<String>,
    pub last_error_at_ms: Option<i64>,
}

/// Run statistics of one listener from its event-log rows created since `since_ms` (read
/// through the `(listener, created_at_ms)` index).
pub fn run_stats(conn: &mut DbConnection, name: &str, since_ms: i64) -> Result<RunStats, DbError> {
    let recent = || {
        event_log::table
            .filter(event_log::listener.eq(name))
            .filter(event_log::created_at_ms.ge(since_ms))
    };
    let runs: i64 = recent().select(count_star()).first(conn)?;
    if runs == 0 {
        return Ok(RunStats::default());
    }
    let unsuccessful: i64 = recent()
        .filter(event_log::success.eq(false))
        .select(count_star())
        .first(conn)?;
    let rate_limited: i64 = recent()
        .filter(event_log::success.eq(false))
        .filter(event_log::error.like(format!("{RATE_LIMITED}%")))
        .select(count_star())
        .first(conn)?;
    let failures = unsuccessful - rate_limited;
    let runs = runs - rate_limited;
    let last_run_at_ms: Option<i64> = recent().select(max(event_log::created_at_ms)).first(conn)?;
    // Times from the newest runs only: a bounded read however busy the listener is.
    let durations: Vec<i64> = recent()
        .filter(
            event_log::success
                .eq(true)
                .or(event_log::error.not_like(format!("{RATE_LIMITED}%"))),
        )
        .order(event_log::id.desc())
        .limit(DURATION_SAMPLE)
        .select(event_log::duration_us)
        .load(conn)?;
    let sampled = durations.len().max(1) as f64;
    let total: i64 = durations.iter().sum();
    let mut sorted = durations;
    sorted.sort_unstable();
    let p95 = percentile(&sorted, 0.95);
    let last_error: Option<(Option<String>, i64)> = recent()
        .filter(event_log::success.eq(false))
        .filter(event_log::error.not_like(format!("{RATE_LIMITED}%")))
        .order(event_log::id.desc())
        .select((event_log::error, event_log::created_at_ms))
        .first(conn)
        .optional()?;
    Ok(RunStats {
        runs,
        failures,
        rate_limited,
        success_rate: (runs > 0).then(|| (runs - failures) as f64 / runs as f64),
        avg_duration_ms: (runs > 0).then(|| total as f64 / sampled / 1000.0),
        p95_duration_ms: p95.map(|us| us as f64 / 1000.0),
        last_run_at_ms,
        last_error: last_error.as_ref().and_then(|(e, _)| e.clone()),
        last_error_at_ms: last_error.map(|(_, at)| at),
    })
}

/// The nearest-rank percentile of sorted values.
fn percentile(sorted: &[i64], p: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// Event-log runs per bucket of `bucket_ms` since `since_ms`, by source and outcome:
/// `(bucket start, source, success, count)`.
pub fn runs_by_bucket(
    conn: &mut DbConnection,
    since_ms: i64,
    bucket_ms: i64,
) -> Result<Vec<(i64, String, bool, i64)>, DbError> {
    let bucket_ms = bucket_ms.max(1);
    // An integer written into the SQL (see `listener_stats::aggregate_stats`): PostgreSQL
    // accepts a grouped expression only when the select list repeats it as the same text.
    let bucket = format!("created_at_ms / {bucket_ms} * {bucket_ms}");
    Ok(event_log::table
        .filter(event_log::created_at_ms.ge(since_ms))
        .group_by(sql::<BigInt>(&format!("{bucket}, source, success")))
        .select(sql::<(BigInt, Text, Bool, BigInt)>(&format!(
            "{bucket}, source, success, COUNT(*)"
        )))
        .load(conn)?)
}

/// Durations (µs) of a listener's newest runs (at most `limit`) since `since_ms`, read
/// through the `(listener, created_at_ms)` index.
pub fn recent_durations(
    conn: &mut DbConnection,
    name: &str,
    since_ms: i64,
    limit: i64,
) -> Result<Vec<i64>, DbError> {
    Ok(event_log::table
        .filter(event_log::listener.eq(name))
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

/// What the dashboard's event-log page filters on.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub listener: Option<String>,
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
    if let Some(listener) = &filter.listener {
        // Written so that no index on `listener` applies: the id range is the bounded read,
        // where the `(listener, created_at_ms)` index would visit every run of the listener.
        query = query.filter(sql::<Bool>("listener || '' = ").bind::<Text, _>(listener.clone()));
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

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn nearest_rank_percentile() {
        let values: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&values, 0.95), Some(95));
        assert_eq!(percentile(&[7], 0.95), Some(7));
        assert_eq!(percentile(&[1, 2], 0.95), Some(2));
        assert_eq!(percentile(&[], 0.95), None);
    }
}

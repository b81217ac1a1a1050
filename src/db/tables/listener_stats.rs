//! The `listener_stats` table: listener runs aggregated per interval from the event log, so
//! that statistics outlive the event log's retention. [`aggregate_stats`] writes it (the
//! `stats aggregate` command and the server's maintenance), the admin API and dashboard read
//! it (the dashboard through [`recent_runs`], with the rows not aggregated yet);
//! [`crate::db::retention`] deletes old intervals.
//!
//! Times are Unix milliseconds (never before the epoch): intervals are aligned to multiples of
//! the interval length since the epoch.

use diesel::dsl::{case_when, count, count_star, max, not, sql};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text};
use diesel::upsert::excluded;

use crate::db::bulk::ROWS_PER_STATEMENT;
use crate::db::schema::{event_log, listener_stats};
use crate::db::tables::event_log::DEPRECATED_LISTENER_KEY;
use crate::db::{DbConnection, DbError};

/// One listener's runs in one interval, as stored in `listener_stats`. As JSON it is its
/// fields by name, plus `handler`, the deprecated name of `listener` (same value).
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = listener_stats)]
pub struct StatsRow {
    /// The listener's name, as in the event log.
    pub listener: String,
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

impl serde::Serialize for StatsRow {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        // Every field named, so that a new one cannot be left out of the JSON unnoticed.
        let StatsRow {
            listener,
            interval_start_ms,
            interval_ms,
            runs,
            failures,
            total_duration_us,
            max_duration_us,
            updated_at_ms,
        } = self;
        let mut row = serializer.serialize_struct("StatsRow", 9)?;
        row.serialize_field("listener", listener)?;
        row.serialize_field("interval_start_ms", interval_start_ms)?;
        row.serialize_field("interval_ms", interval_ms)?;
        row.serialize_field("runs", runs)?;
        row.serialize_field("failures", failures)?;
        row.serialize_field("total_duration_us", total_duration_us)?;
        row.serialize_field("max_duration_us", max_duration_us)?;
        row.serialize_field("updated_at_ms", updated_at_ms)?;
        row.serialize_field(DEPRECATED_LISTENER_KEY, listener)?;
        row.end()
    }
}

/// Start of the interval of length `interval_ms` that contains `at_ms`.
fn interval_start(at_ms: i64, interval_ms: i64) -> i64 {
    at_ms.div_euclid(interval_ms) * interval_ms
}

/// Aggregates the event log into `listener_stats`: for every completed interval (aligned to
/// multiples of `interval_ms` since the epoch and ending at or before `now_ms`) one row per
/// listener that ran in it, with its runs, failures, and the sum and maximum of the durations.
/// An existing row for the same (listener, interval) is replaced, so running it again gives
/// the same table, and event-log rows committed late into an interval that was already
/// aggregated are counted by the next run. The interval still open at `now_ms` is left alone.
///
/// The work is bounded: only intervals from one before the latest aggregated interval onward
/// are recomputed (from each listener's oldest event-log row when nothing is aggregated yet).
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
    for listener in logged_listeners(conn)? {
        let start = match resume_from {
            Some(start) => start,
            None => {
                let oldest: Option<i64> = event_log::table
                    .filter(event_log::listener.eq(&listener))
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
            .filter(event_log::listener.eq(&listener))
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
                    listener: listener.clone(),
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
                .on_conflict((listener_stats::listener, listener_stats::interval_start_ms))
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

/// The distinct listener names in the event log, one index look-up each (a loose index scan
/// over `(listener, created_at_ms)`, which neither backend does by itself for `DISTINCT`).
fn logged_listeners(conn: &mut DbConnection) -> Result<Vec<String>, DbError> {
    let mut listeners = Vec::new();
    let mut next: Option<String> = event_log::table
        .select(event_log::listener)
        .order(event_log::listener)
        .first(conn)
        .optional()?;
    while let Some(listener) = next {
        next = event_log::table
            .select(event_log::listener)
            .filter(event_log::listener.gt(&listener))
            .order(event_log::listener)
            .first(conn)
            .optional()?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Aggregated statistics for intervals starting at or after `since_ms`, ordered by interval,
/// then listener.
pub fn stats_since(conn: &mut DbConnection, since_ms: i64) -> Result<Vec<StatsRow>, DbError> {
    Ok(listener_stats::table
        .filter(listener_stats::interval_start_ms.ge(since_ms))
        .order((listener_stats::interval_start_ms, listener_stats::listener))
        .select(StatsRow::as_select())
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

/// One listener's runs in one interval, stored in `listener_stats` or counted from event-log
/// rows not aggregated yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntervalRuns {
    pub listener: String,
    /// Start of the interval (Unix ms).
    pub start_ms: i64,
    pub runs: i64,
    pub failures: i64,
    pub max_duration_us: i64,
}

/// Runs per listener and interval since `since_ms`, up to now: the stored `listener_stats`
/// intervals, then the event-log rows after the newest stored interval (not aggregated yet),
/// counted as [`aggregate_stats`] counts them, in intervals of the same length. Every listener's,
/// or `listener`'s only. Returns the interval length (`default_interval_ms` while nothing is
/// stored) and the rows, oldest first.
///
/// The one source of the dashboard's runs (the overview's 24 hours, the listeners pages), so
/// that traffic shows there as soon as it is in the event log, as on the events page and in
/// `listeners`, instead of after the next aggregation.
pub fn recent_runs(
    conn: &mut DbConnection,
    since_ms: i64,
    listener: Option<&str>,
    default_interval_ms: i64,
) -> Result<(i64, Vec<IntervalRuns>), DbError> {
    let newest = newest_interval(conn)?;
    let interval_ms = newest.map_or(default_interval_ms, |(_, len)| len).max(1);
    let mut stored = listener_stats::table
        .filter(listener_stats::interval_start_ms.ge(since_ms))
        .select((
            listener_stats::listener,
            listener_stats::interval_start_ms,
            listener_stats::runs,
            listener_stats::failures,
            listener_stats::max_duration_us,
        ))
        .into_boxed();
    if let Some(name) = listener {
        stored = stored.filter(listener_stats::listener.eq(name));
    }
    let stored: Vec<(String, i64, i64, i64, i64)> = stored.load(conn)?;
    // Rows from the end of the newest stored interval on are in no stored interval yet.
    let tail_start = newest
        .map_or(since_ms, |(start, len)| start + len)
        .max(since_ms);
    // As in `aggregate_stats`: the grouping expression is written out with the interval as a
    // literal (an integer), which PostgreSQL needs to match it in the select list.
    let bucket = format!("created_at_ms / {interval_ms} * {interval_ms}");
    let grouped = sql::<(Text, BigInt, BigInt, BigInt, Nullable<BigInt>)>(&format!(
        "listener, {bucket}, COUNT(*), COUNT(CASE WHEN success THEN NULL ELSE 1 END), \
         MAX(duration_us)"
    ));
    let recent = event_log::table.filter(event_log::created_at_ms.ge(tail_start));
    let tail: Vec<(String, i64, i64, i64, Option<i64>)> = match listener {
        Some(name) => recent
            .filter(event_log::listener.eq(name))
            .group_by(sql::<BigInt>(&format!("listener, {bucket}")))
            .select(grouped)
            .load(conn)?,
        None => recent
            .group_by(sql::<BigInt>(&format!("listener, {bucket}")))
            .select(grouped)
            .load(conn)?,
    };
    let mut rows: Vec<IntervalRuns> = stored
        .into_iter()
        .chain(tail.into_iter().map(|(l, start, runs, failures, longest)| {
            (l, start, runs, failures, longest.unwrap_or(0))
        }))
        .map(
            |(listener, start_ms, runs, failures, max_duration_us)| IntervalRuns {
                listener,
                start_ms,
                runs,
                failures,
                max_duration_us,
            },
        )
        .collect();
    rows.sort_by(|a, b| (a.start_ms, &a.listener).cmp(&(b.start_ms, &b.listener)));
    Ok((interval_ms, rows))
}

#[cfg(test)]
mod tests {
    use super::interval_start;

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
}

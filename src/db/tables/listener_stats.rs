//! The `listener_stats` table: listener runs aggregated per interval from the event log, so
//! that statistics outlive the event log's retention. [`aggregate_stats`] writes it (the
//! `stats aggregate` command and the server's maintenance), the admin API and dashboard read
//! it; [`crate::db::retention`] deletes old intervals.
//!
//! Times are Unix milliseconds (never before the epoch): intervals are aligned to multiples of
//! the interval length since the epoch.

use diesel::dsl::{case_when, count, count_star, max, not, sql};
use diesel::prelude::*;
use diesel::sql_types::BigInt;
use diesel::upsert::excluded;

use crate::db::bulk::ROWS_PER_STATEMENT;
use crate::db::schema::{event_log, listener_stats};
use crate::db::{DbConnection, DbError};

/// One listener's runs in one interval, as stored in `listener_stats`.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable, serde::Serialize)]
#[diesel(table_name = listener_stats)]
pub struct StatsRow {
    /// The listener's name, as in the event log (shown as `handler` by the admin API).
    #[serde(rename = "handler")]
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
        .filter(listener_stats::listener.eq(name))
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

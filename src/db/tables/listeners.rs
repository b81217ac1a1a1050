//! The `listeners` and `listener_history` tables, and the per-listener run statistics read
//! from the event log.

use diesel::dsl::{count_star, max};
use diesel::prelude::*;

use super::models::{HistoryRow, ListenerRow};
use super::schema::{event_log, listener_history, listeners};
use super::{DbConnection, DbError, now_ms};

/// The start of the event-log error of an event a listener skipped because it was over its
/// own quota: not a failure, and counted apart in the statistics.
pub const RATE_LIMITED: &str = "rate_limited: ";

/// Whether an event-log row is a listener's skip over its own quota (not a failure).
pub fn is_rate_limited(row: &super::models::NewEventLog) -> bool {
    !row.success
        && row
            .error
            .as_deref()
            .is_some_and(|e| e.starts_with(RATE_LIMITED))
}

/// Makes sure every listener has a row, records its file definition (redacted) and returns
/// all rows.
pub fn sync(
    conn: &mut DbConnection,
    defined: &[(String, String)],
) -> Result<Vec<ListenerRow>, DbError> {
    let now = now_ms();
    conn.transaction::<_, DbError, _>(|conn| {
        for (name, config) in defined {
            let updated = diesel::update(listeners::table.find(name))
                .set((
                    listeners::config.eq(config),
                    listeners::updated_at_ms.eq(now),
                ))
                .execute(conn)?;
            if updated == 0 {
                diesel::insert_into(listeners::table)
                    .values(ListenerRow {
                        name: name.clone(),
                        enabled: true,
                        config: config.clone(),
                        disabled_reason: None,
                        created_at_ms: now,
                        updated_at_ms: now,
                        overrides: None,
                    })
                    .execute(conn)?;
            }
        }
        Ok(())
    })?;
    rows(conn)
}

/// Every listener's persisted state.
pub fn rows(conn: &mut DbConnection) -> Result<Vec<ListenerRow>, DbError> {
    Ok(listeners::table.order(listeners::name).load(conn)?)
}

/// Within a transaction, takes the write lock on a listener's row before anything is read:
/// on SQLite a transaction that reads first and writes later fails at once ("database is
/// locked") when another connection wrote in between; on PostgreSQL two concurrent changes
/// to one listener then follow each other instead of one overwriting the other.
pub fn lock(conn: &mut DbConnection, name: &str) -> Result<(), DbError> {
    diesel::update(listeners::table.find(name))
        .set(listeners::updated_at_ms.eq(listeners::updated_at_ms))
        .execute(conn)?;
    Ok(())
}

/// One listener's persisted state.
pub fn row(conn: &mut DbConnection, name: &str) -> Result<Option<ListenerRow>, DbError> {
    Ok(listeners::table.find(name).first(conn).optional()?)
}

/// Writes a listener's new state and the history of the change (one transaction, which the
/// caller may already have opened). `updated_at_ms` always moves forward, so that every
/// server sharing the database applies the change.
pub fn save(
    conn: &mut DbConnection,
    row: &ListenerRow,
    history: &[HistoryRow],
) -> Result<ListenerRow, DbError> {
    conn.transaction::<_, DbError, _>(|conn| {
        let previous: Option<i64> = listeners::table
            .find(&row.name)
            .select(listeners::updated_at_ms)
            .first(conn)
            .optional()?;
        let updated_at_ms = now_ms().max(previous.map_or(i64::MIN, |p| p + 1));
        let saved = ListenerRow {
            updated_at_ms,
            ..row.clone()
        };
        let n = diesel::update(listeners::table.find(&row.name))
            .set((
                listeners::enabled.eq(saved.enabled),
                listeners::disabled_reason.eq(&saved.disabled_reason),
                listeners::overrides.eq(&saved.overrides),
                listeners::updated_at_ms.eq(updated_at_ms),
            ))
            .execute(conn)?;
        if n == 0 {
            diesel::insert_into(listeners::table)
                .values(&saved)
                .execute(conn)?;
        }
        record(conn, history)?;
        Ok(saved)
    })
}

/// Records history rows on their own (a dead-letter replay).
pub fn record(conn: &mut DbConnection, history: &[HistoryRow]) -> Result<(), DbError> {
    // One statement per row: a handful per change, and multi-row inserts are not portable.
    for row in history {
        diesel::insert_into(listener_history::table)
            .values(row)
            .execute(conn)?;
    }
    Ok(())
}

/// A listener's history, newest first.
pub fn history(
    conn: &mut DbConnection,
    name: &str,
    limit: i64,
) -> Result<Vec<HistoryRow>, DbError> {
    Ok(listener_history::table
        .filter(listener_history::listener.eq(name))
        .order(listener_history::id.desc())
        .limit(limit)
        .load(conn)?)
}

/// Runs whose durations make the average and the 95th percentile.
const DURATION_SAMPLE: i64 = 10_000;

/// What a listener's runs since some time came to; times are of the newest 10,000 runs.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
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
/// through the `(handler, created_at_ms)` index).
pub fn run_stats(conn: &mut DbConnection, name: &str, since_ms: i64) -> Result<RunStats, DbError> {
    let recent = || {
        event_log::table
            .filter(event_log::handler.eq(name))
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

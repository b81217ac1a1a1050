//! Claiming due work of `inbox_work` for the sweeper: `'*'` rows (every listener) are first
//! expanded into one row per listener that wants the event, then the due rows of this
//! process's listeners are read with their event (oldest first) and marked claimed. On
//! PostgreSQL rows another process holds are skipped (`FOR UPDATE … SKIP LOCKED`).

use std::collections::{HashMap, HashSet};

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Binary, Text};

use super::inbox::lock_events;
use super::inbox_work::{EVERY_LISTENER, NewWorkRow, WorkStatus, insert_work, settle_events};
use crate::clock::now_ms;
use crate::db::bulk::ROWS_PER_STATEMENT;
use crate::db::event_key::EventKey;
use crate::db::schema::inbox_work;
use crate::db::{DbConnection, DbError};

/// A work row claimed for processing, with its event.
#[derive(Debug, Clone, QueryableByName)]
pub struct ClaimedWork {
    #[diesel(sql_type = Binary, deserialize_as = EventKey)]
    pub event_id: String,
    #[diesel(sql_type = Text)]
    pub listener: String,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pub attempts: i32,
    /// `pending`, or `parked` (waiting for a paused or disabled listener).
    #[diesel(sql_type = Text)]
    pub status: WorkStatus,
    #[diesel(sql_type = Text)]
    pub payload: String,
    #[diesel(sql_type = BigInt)]
    pub realm_id: i64,
    #[diesel(sql_type = Text)]
    pub event_type: String,
}

/// Lists names for SQL text. Listener names are compiled in (letters and underscores); any
/// other character is dropped rather than quoted.
fn sql_names(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| {
            let clean: String = n
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
                .collect();
            format!("'{clean}'")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A `'*'` work row to expand.
#[derive(QueryableByName)]
struct StarRow {
    #[diesel(sql_type = Binary, deserialize_as = EventKey)]
    event_id: String,
    #[diesel(sql_type = Text)]
    event_type: String,
    #[diesel(sql_type = Text)]
    status: WorkStatus,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    attempts: i32,
    #[diesel(sql_type = BigInt)]
    next_attempt_at_ms: i64,
}

/// Claims up to `limit` due work rows of `listeners` (oldest event first) until
/// `claim_until_ms`, skipping events in `skip` (in flight here). Work rows for `'*'` (every
/// listener) are first expanded into one row per listener that `wanted_by` names for the
/// event's type. On PostgreSQL rows locked by another process's claim are skipped.
pub fn claim_work(
    conn: &mut DbConnection,
    limit: i64,
    claim_until_ms: i64,
    skip: &HashSet<String>,
    listeners: &[&str],
    wanted_by: &dyn Fn(&str) -> Vec<&'static str>,
) -> Result<Vec<ClaimedWork>, DbError> {
    let now = now_ms();
    let pg = matches!(conn, DbConnection::Postgres(_));
    let lock = if pg {
        " FOR UPDATE OF w SKIP LOCKED"
    } else {
        ""
    };
    let open = WorkStatus::OPEN
        .iter()
        .map(|s| format!("'{s}'"))
        .collect::<Vec<_>>()
        .join(", ");
    conn.transaction(|conn| {
        let query = format!(
            "SELECT w.event_id, i.event_type, w.status, w.attempts, w.next_attempt_at_ms \
             FROM inbox_work w JOIN inbox i ON i.event_id = w.event_id \
             WHERE w.listener = '{EVERY_LISTENER}' AND w.status IN ({open}) \
             ORDER BY i.id LIMIT {limit}{lock}"
        );
        let stars: Vec<StarRow> =
            crate::per_backend!(&mut *conn, c => diesel::sql_query(&query).load(c))?;
        if !stars.is_empty() {
            let mut rows = Vec::new();
            for star in &stars {
                for listener in wanted_by(&star.event_type) {
                    rows.push(NewWorkRow {
                        event_id: star.event_id.clone(),
                        listener,
                        status: star.status,
                        attempts: star.attempts,
                        next_attempt_at_ms: star.next_attempt_at_ms,
                        claimed_until_ms: 0,
                        last_error: None,
                        updated_at_ms: now,
                    });
                }
            }
            insert_work(conn, &rows.iter().collect::<Vec<_>>())?;
            let ids: Vec<&str> = stars.iter().map(|s| s.event_id.as_str()).collect();
            for chunk in ids.chunks(ROWS_PER_STATEMENT) {
                diesel::delete(
                    inbox_work::table
                        .filter(inbox_work::listener.eq(EVERY_LISTENER))
                        .filter(inbox_work::event_id.eq_any(EventKey::all(chunk.iter().copied()))),
                )
                .execute(conn)?;
            }
            // An event no listener wants any more is done.
            let attempts: HashMap<&str, i32> = stars
                .iter()
                .map(|s| (s.event_id.as_str(), s.attempts))
                .collect();
            lock_events(conn, &ids)?;
            settle_events(conn, &attempts, &HashMap::new())?;
        }
        if listeners.is_empty() {
            return Ok(Vec::new());
        }
        // The literal status condition matches the partial index `inbox_work_due`.
        let query = format!(
            "SELECT w.event_id, w.listener, w.attempts, w.status, i.payload, i.realm_id, \
             i.event_type FROM inbox_work w JOIN inbox i ON i.event_id = w.event_id \
             WHERE w.status IN ({open}) AND w.next_attempt_at_ms <= {now} \
             AND w.claimed_until_ms <= {now} AND w.listener IN ({}) \
             ORDER BY i.id, w.listener LIMIT {limit}{lock}",
            sql_names(listeners)
        );
        let rows: Vec<ClaimedWork> =
            crate::per_backend!(&mut *conn, c => diesel::sql_query(&query).load(c))?;
        let rows: Vec<ClaimedWork> = rows
            .into_iter()
            .filter(|r| !skip.contains(&r.event_id))
            .collect();
        let mut by_listener: HashMap<&str, Vec<&str>> = HashMap::new();
        for row in &rows {
            by_listener
                .entry(row.listener.as_str())
                .or_default()
                .push(row.event_id.as_str());
        }
        for (listener, ids) in by_listener {
            for chunk in ids.chunks(ROWS_PER_STATEMENT) {
                diesel::update(
                    inbox_work::table
                        .filter(inbox_work::listener.eq(listener))
                        .filter(inbox_work::event_id.eq_any(EventKey::all(chunk.iter().copied()))),
                )
                .set(inbox_work::claimed_until_ms.eq(claim_until_ms))
                .execute(conn)?;
            }
        }
        Ok(rows)
    })
}

//! Claims on the work of `inbox_work`. The sweeper claims due work ([`claim_work`]): `'*'`
//! rows (every listener) are first expanded into one row per listener that wants the event,
//! then the due rows of this process's listeners are read with their event (oldest first)
//! and marked claimed, by this process (`claimed_by`). On PostgreSQL rows another process
//! holds are skipped (`FOR UPDATE … SKIP LOCKED`). While a run waits or runs its process
//! renews the claim ([`renew_claims`]); one that may have lapsed is taken again, or found
//! lost, before the run starts ([`retake_claim`]).

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
    /// The process that held the work before (empty: none) and until when: a claim that
    /// lapsed, when that was another process (it died or lost the database).
    #[diesel(sql_type = Text)]
    pub claimed_by: String,
    #[diesel(sql_type = BigInt)]
    pub claimed_until_ms: i64,
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

/// Claims up to `limit` due work rows of `listeners` (oldest event first) for `owner` until
/// `claim_until_ms`, skipping events in `skip` (in flight here). Work rows for `'*'` (every
/// listener) are first expanded into one row per listener that `wanted_by` names for the
/// event's type. On PostgreSQL rows locked by another process's claim are skipped.
pub fn claim_work(
    conn: &mut DbConnection,
    limit: i64,
    owner: &str,
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
                        claimed_by: String::new(),
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
             i.event_type, w.claimed_by, w.claimed_until_ms FROM inbox_work w JOIN inbox i ON i.event_id = w.event_id \
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
                .set((
                    inbox_work::claimed_until_ms.eq(claim_until_ms),
                    inbox_work::claimed_by.eq(owner),
                ))
                .execute(conn)?;
            }
        }
        Ok(rows)
    })
}

/// A claim [`renew_claims`] renewed.
#[derive(QueryableByName)]
struct Renewed {
    #[diesel(sql_type = Binary, deserialize_as = EventKey)]
    event_id: String,
    #[diesel(sql_type = Text)]
    listener: String,
}

/// Extends `owner`'s claims on the open work of `event_ids` to `until_ms` (a claim already
/// longer is kept) and returns the (event id, listener) pairs it holds: a claim that lapsed
/// and was taken by another process, or that its work no longer has (done, failed, released),
/// is not among them. On PostgreSQL rows locked at the moment (a result being written, a
/// lapsed claim being taken) are skipped rather than waited for, so that renewal never
/// deadlocks with the writer; they are renewed next time if still held.
pub fn renew_claims(
    conn: &mut DbConnection,
    owner: &str,
    event_ids: &[&str],
    until_ms: i64,
) -> Result<Vec<(String, String)>, DbError> {
    let open = WorkStatus::OPEN
        .iter()
        .map(|s| format!("'{s}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let pg = format!(
        "UPDATE inbox_work w SET claimed_until_ms = GREATEST(w.claimed_until_ms, $1) \
         FROM (SELECT event_id, listener FROM inbox_work WHERE event_id = ANY($2) \
         AND claimed_by = $3 AND claimed_until_ms > 0 AND status IN ({open}) \
         FOR UPDATE SKIP LOCKED) held \
         WHERE w.event_id = held.event_id AND w.listener = held.listener \
         RETURNING w.event_id, w.listener"
    );
    let mut held = Vec::with_capacity(event_ids.len());
    for chunk in event_ids.chunks(ROWS_PER_STATEMENT) {
        let keys = EventKey::all(chunk.iter().copied());
        let rows: Vec<Renewed> = match conn {
            DbConnection::Postgres(c) => diesel::sql_query(&pg)
                .bind::<BigInt, _>(until_ms)
                .bind::<diesel::sql_types::Array<Binary>, _>(keys)
                .bind::<Text, _>(owner)
                .load(c)?,
            // One server owns a SQLite database, so nothing calls this there; the same
            // update, without locks to skip.
            DbConnection::Sqlite(c) => diesel::update(
                inbox_work::table
                    .filter(inbox_work::event_id.eq_any(keys))
                    .filter(inbox_work::claimed_by.eq(owner))
                    .filter(inbox_work::claimed_until_ms.gt(0i64))
                    .filter(inbox_work::status.eq_any(WorkStatus::OPEN)),
            )
            .set(
                inbox_work::claimed_until_ms.eq(diesel::dsl::sql::<BigInt>(&format!(
                    "MAX(claimed_until_ms, {until_ms})"
                ))),
            )
            .returning((inbox_work::event_id, inbox_work::listener))
            .get_results::<(EventKey, String)>(c)?
            .into_iter()
            .map(|(event_id, listener)| Renewed {
                event_id: event_id.id(),
                listener,
            })
            .collect(),
        };
        held.extend(rows.into_iter().map(|r| (r.event_id, r.listener)));
    }
    Ok(held)
}

/// Takes `owner`'s claim on one listener's work again, until `until_ms`, if nobody else holds
/// it and the work is still open at `attempts`: it is `owner`'s still, or its claim has run
/// out. `false`: another process holds it, or it has a result already.
pub fn retake_claim(
    conn: &mut DbConnection,
    owner: &str,
    event_id: &str,
    listener: &str,
    attempts: i32,
    until_ms: i64,
) -> Result<bool, DbError> {
    let now = now_ms();
    let taken = diesel::update(
        inbox_work::table
            .filter(inbox_work::event_id.eq(EventKey::of(event_id)))
            .filter(inbox_work::listener.eq(listener))
            .filter(inbox_work::status.eq_any(WorkStatus::OPEN))
            .filter(inbox_work::attempts.eq(attempts))
            .filter(
                inbox_work::claimed_by
                    .eq(owner)
                    .or(inbox_work::claimed_until_ms.le(now)),
            ),
    )
    .set((
        inbox_work::claimed_until_ms.eq(until_ms),
        inbox_work::claimed_by.eq(owner),
    ))
    .execute(conn)?;
    Ok(taken == 1)
}

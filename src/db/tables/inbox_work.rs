//! The `inbox_work` table: the work of each listener on each forwarded event that was not
//! completed when the event was accepted ([`WorkStatus`]). A row is deleted when its listener
//! has run the event successfully, so an event is done exactly when it has no work rows left;
//! every change to an event's work settles its [`InboxStatus`] here ([`settle_events`]). The
//! sweeper claims due work ([`super::claims`]); an operator's replay puts work back
//! ([`requeue`]).

use std::collections::{HashMap, HashSet};

use diesel::dsl::count_star;
use diesel::prelude::*;

use super::inbox::InboxStatus;
use crate::clock::now_ms;
use crate::db::bulk::ROWS_PER_STATEMENT;
use crate::db::event_key::EventKey;
use crate::db::schema::{inbox, inbox_work};
use crate::db::text_enum::text_enum;
use crate::db::{DbConnection, DbError};

text_enum! {
    /// Where one listener's work on one event stands (`inbox_work.status`).
    pub enum WorkStatus {
        /// To run when due.
        Pending = "pending",
        /// Waiting for the listener, paused or disabled after failures; retried when due.
        Parked = "parked",
        /// Retries used up: a dead letter.
        Dead = "dead",
        /// Skipped over the listener's own quota: kept, replayable.
        RateLimited = "rate_limited",
    }
}

impl WorkStatus {
    /// Work that may still run (what the partial index `inbox_work_due` holds).
    pub const OPEN: [WorkStatus; 2] = [WorkStatus::Pending, WorkStatus::Parked];

    /// Whether the work may still run.
    pub fn is_open(self) -> bool {
        Self::OPEN.contains(&self)
    }
}

/// The status of an event from the statuses of its work left (at least one row): `pending`
/// while a listener may still run it, `parked` while every one left waits for a paused
/// listener, `dead` when what is left is dead, `rate_limited` when it is only skips over
/// listeners' own quotas (replayable for them).
pub fn event_status(left: impl IntoIterator<Item = WorkStatus>) -> InboxStatus {
    let rank = |status: WorkStatus| match status {
        WorkStatus::Pending => (0, InboxStatus::Pending),
        WorkStatus::Parked => (1, InboxStatus::Parked),
        WorkStatus::Dead => (2, InboxStatus::Dead),
        WorkStatus::RateLimited => (3, InboxStatus::RateLimited),
    };
    left.into_iter()
        .map(rank)
        .min_by_key(|(rank, _)| *rank)
        .map_or(InboxStatus::RateLimited, |(_, status)| status)
}

/// The `listener` of a work row that stands for every listener wanting the event (rows from
/// before the table existed, and replayed events that never had work); the sweeper expands
/// it into one row per listener.
pub const EVERY_LISTENER: &str = "*";

/// Work for one listener on one forwarded event.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = inbox_work, treat_none_as_default_value = false)]
pub struct NewWorkRow {
    #[diesel(serialize_as = EventKey)]
    pub event_id: String,
    pub listener: &'static str,
    pub status: WorkStatus,
    pub attempts: i32,
    pub next_attempt_at_ms: i64,
    pub claimed_until_ms: i64,
    pub last_error: Option<String>,
    pub updated_at_ms: i64,
    /// The process holding the claim (`claimed_by`): empty when unclaimed, and on SQLite.
    pub claimed_by: String,
}

/// Stores work rows for events just stored; a row already there is kept.
pub fn insert_work(conn: &mut DbConnection, rows: &[&NewWorkRow]) -> Result<(), DbError> {
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let chunk: Vec<NewWorkRow> = chunk.iter().map(|r| (*r).clone()).collect();
        match conn {
            DbConnection::Sqlite(c) => diesel::insert_or_ignore_into(inbox_work::table)
                .values(chunk)
                .execute(c)?,
            DbConnection::Postgres(c) => diesel::insert_into(inbox_work::table)
                .values(chunk)
                .on_conflict_do_nothing()
                .execute(c)?,
        };
    }
    Ok(())
}

/// Records successful runs of `listener` (deleting their work rows) for events whose work is
/// still pending or parked at the given attempt count; returns the event ids it applied to
/// (the others already have a result: a second run after a claim ran out).
pub fn finish_work_done(
    conn: &mut DbConnection,
    listener: &str,
    attempts_before: i32,
    ids: &[&str],
) -> Result<HashSet<String>, DbError> {
    let mut applied = HashSet::with_capacity(ids.len());
    for chunk in ids.chunks(ROWS_PER_STATEMENT) {
        let target = inbox_work::table
            .filter(inbox_work::listener.eq(listener))
            .filter(inbox_work::event_id.eq_any(EventKey::all(chunk.iter().copied())))
            .filter(inbox_work::status.eq_any(WorkStatus::OPEN))
            .filter(inbox_work::attempts.eq(attempts_before));
        let done: Vec<EventKey> = crate::per_backend!(conn, c => diesel::delete(target)
            .returning(inbox_work::event_id)
            .get_results(c))?;
        applied.extend(done.into_iter().map(String::from));
    }
    Ok(applied)
}

/// What becomes of a listener's work after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkThen {
    /// Tried again at this time (parked when the attempt was not counted).
    RetryAt(i64),
    /// Retries used up: a dead letter.
    Dead,
    /// Skipped over the listener's own quota: kept as `rate_limited`, replayable.
    SetAside,
}

/// Records a failed attempt of `listener` at an event: `pending` again with `retry_at`
/// (`parked` when it was not tried because the listener is paused or disabled), or `dead`
/// when `retry_at` is `None`. Applies only if the work is still pending (or parked) at the
/// attempt it was taken at; returns whether it applied.
pub fn finish_work_failed(
    conn: &mut DbConnection,
    event_id: &str,
    listener: &str,
    attempts_before: i32,
    attempts_after: i32,
    then: WorkThen,
    error: &str,
) -> Result<bool, DbError> {
    let target = inbox_work::table
        .filter(inbox_work::event_id.eq(EventKey::of(event_id)))
        .filter(inbox_work::listener.eq(listener))
        .filter(inbox_work::status.eq_any(WorkStatus::OPEN))
        .filter(inbox_work::attempts.eq(attempts_before));
    let (status, retry_at) = match then {
        WorkThen::SetAside => (WorkStatus::RateLimited, None),
        WorkThen::Dead => (WorkStatus::Dead, None),
        WorkThen::RetryAt(at) if attempts_after == attempts_before => {
            (WorkStatus::Parked, Some(at))
        }
        WorkThen::RetryAt(at) => (WorkStatus::Pending, Some(at)),
    };
    let updated = diesel::update(target)
        .set((
            inbox_work::status.eq(status),
            inbox_work::attempts.eq(attempts_after),
            inbox_work::next_attempt_at_ms.eq(retry_at.unwrap_or(0)),
            inbox_work::claimed_until_ms.eq(0i64),
            inbox_work::claimed_by.eq(""),
            inbox_work::last_error.eq(error),
            inbox_work::updated_at_ms.eq(now_ms()),
        ))
        .execute(conn)?;
    Ok(updated == 1)
}

/// Brings the inbox rows of events whose work changed up to date: `done` (payload dropped)
/// when no work is left, else `pending` while a listener may still run it, `parked` while
/// every listener left waits for a paused one, `dead` once all that is left is dead.
/// `attempts` is the most any listener made (at least `attempts` given per event); `errors`
/// holds the newest failure per event, kept as the row's `last_error`.
pub fn settle_events(
    conn: &mut DbConnection,
    attempts: &HashMap<&str, i32>,
    errors: &HashMap<&str, &str>,
) -> Result<(), DbError> {
    let now = now_ms();
    // Done first, grouped by attempts so that each group is one statement.
    let mut by_attempts: HashMap<i32, Vec<&str>> = HashMap::new();
    for (id, n) in attempts {
        by_attempts.entry(*n).or_default().push(id);
    }
    let mut done = HashSet::new();
    for (n, ids) in &by_attempts {
        for chunk in ids.chunks(ROWS_PER_STATEMENT) {
            let target = inbox::table
                .filter(inbox::event_id.eq_any(EventKey::all(chunk.iter().copied())))
                .filter(inbox::status.eq_any(InboxStatus::OPEN))
                .filter(diesel::dsl::not(diesel::dsl::exists(
                    inbox_work::table.filter(inbox_work::event_id.eq(inbox::event_id)),
                )));
            let changes = (
                inbox::status.eq(InboxStatus::Done),
                // What a listener keeps of an event is in its own tables; the inbox keeps
                // the envelope only while the event may still be processed or replayed.
                inbox::payload.eq(""),
                inbox::attempts.eq(diesel::dsl::sql::<diesel::sql_types::Integer>(&format!(
                    "CASE WHEN attempts > {n} THEN attempts ELSE {n} END"
                ))),
                inbox::claimed_until_ms.eq(0i64),
                inbox::last_error.eq(None::<String>),
                inbox::updated_at_ms.eq(now),
            );
            let ids: Vec<EventKey> = crate::per_backend!(conn, c => diesel::update(target)
                .set(changes)
                .returning(inbox::event_id)
                .get_results(c))?;
            done.extend(ids.into_iter().map(String::from));
        }
    }
    // The others still have work: their status follows what is left.
    for (id, n) in attempts {
        if done.contains(*id) {
            continue;
        }
        let key = EventKey::of(id);
        let left: Vec<(WorkStatus, i32, i64)> = inbox_work::table
            .filter(inbox_work::event_id.eq(&key))
            .select((
                inbox_work::status,
                inbox_work::attempts,
                inbox_work::next_attempt_at_ms,
            ))
            .load(conn)?;
        let status = event_status(left.iter().map(|(s, _, _)| *s));
        let most = left.iter().map(|(_, a, _)| *a).max().unwrap_or(0).max(*n);
        let next = left
            .iter()
            .filter(|(s, _, _)| s.is_open())
            .map(|(_, _, at)| *at)
            .min()
            .unwrap_or(0);
        let target = inbox::table
            .filter(inbox::event_id.eq(&key))
            .filter(inbox::status.eq_any(InboxStatus::OPEN));
        match errors.get(id) {
            Some(error) => diesel::update(target)
                .set((
                    inbox::status.eq(status),
                    inbox::attempts.eq(most),
                    inbox::next_attempt_at_ms.eq(next),
                    inbox::claimed_until_ms.eq(0i64),
                    inbox::last_error.eq(*error),
                    inbox::updated_at_ms.eq(now),
                ))
                .execute(conn)?,
            None => diesel::update(target)
                .set((
                    inbox::status.eq(status),
                    inbox::attempts.eq(most),
                    inbox::next_attempt_at_ms.eq(next),
                    inbox::claimed_until_ms.eq(0i64),
                    inbox::updated_at_ms.eq(now),
                ))
                .execute(conn)?,
        };
    }
    Ok(())
}

/// Gives work back to the next sweep at once (it could not be queued in memory): the work of
/// `listeners` on these events.
pub fn release_claims(
    conn: &mut DbConnection,
    ids: &[String],
    listeners: &[&str],
) -> Result<(), DbError> {
    for chunk in ids.chunks(ROWS_PER_STATEMENT) {
        diesel::update(
            inbox_work::table
                .filter(
                    inbox_work::event_id.eq_any(EventKey::all(chunk.iter().map(String::as_str))),
                )
                .filter(inbox_work::listener.eq_any(listeners)),
        )
        .set((
            inbox_work::claimed_until_ms.eq(0i64),
            inbox_work::claimed_by.eq(""),
        ))
        .execute(conn)?;
    }
    Ok(())
}

/// Ends every claim (single-instance start-up: nothing else can be working on them).
pub fn release_all_claims(conn: &mut DbConnection) -> Result<usize, DbError> {
    Ok(diesel::update(
        inbox_work::table
            .filter(inbox_work::status.eq_any(WorkStatus::OPEN))
            .filter(inbox_work::claimed_until_ms.gt(0i64)),
    )
    .set((
        inbox_work::claimed_until_ms.eq(0i64),
        inbox_work::claimed_by.eq(""),
    ))
    .execute(conn)?)
}

/// The reason stored with an event parked behind `listener`.
pub fn parked_reason(listener: &str) -> String {
    format!(
        "waiting for `{listener}`: its circuit breaker is open or it was disabled after failures"
    )
}

/// Parked work per listener it waits for.
pub fn parked_by_listener(conn: &mut DbConnection) -> Result<Vec<(String, i64)>, DbError> {
    Ok(inbox_work::table
        .filter(inbox_work::status.eq(WorkStatus::Parked))
        .group_by(inbox_work::listener)
        .select((inbox_work::listener, count_star()))
        .load(conn)?)
}

/// The changes that put an `inbox` or `inbox_work` row back to `$status` with fresh retries,
/// due at once and unclaimed.
macro_rules! fresh_retries {
    ($table:ident, $status:expr, $now:expr) => {
        (
            $table::status.eq($status),
            $table::attempts.eq(0),
            $table::next_attempt_at_ms.eq(0i64),
            $table::claimed_until_ms.eq(0i64),
            $table::updated_at_ms.eq($now),
        )
    };
}

/// Puts events with one of `statuses` back to pending with fresh attempts; `ids` limits it to
/// those events. Only the listeners that did not succeed run again: the event's work rows
/// (dead or parked ones) become pending; an event that has none (it was never dispatched:
/// rate-limited, expired) gets a `'*'` row, every listener that wants it. An event stored
/// without its envelope (filtered) has nothing to replay and is left alone. Returns how many
/// were requeued.
pub fn requeue(
    conn: &mut DbConnection,
    statuses: &[InboxStatus],
    ids: Option<&[String]>,
) -> Result<usize, DbError> {
    let now = now_ms();
    conn.transaction(|conn| {
        let target = || {
            inbox::table
                .filter(inbox::status.eq_any(statuses))
                .filter(inbox::payload.ne(""))
        };
        let found: Vec<EventKey> = match ids {
            Some(ids) => {
                let mut found = Vec::new();
                for chunk in ids.chunks(ROWS_PER_STATEMENT) {
                    found.extend(
                        target()
                            .filter(
                                inbox::event_id
                                    .eq_any(EventKey::all(chunk.iter().map(String::as_str))),
                            )
                            .select(inbox::event_id)
                            .load::<EventKey>(conn)?,
                    );
                }
                found
            }
            None => target().select(inbox::event_id).load(conn)?,
        };
        let mut requeued = 0;
        for chunk in found.chunks(ROWS_PER_STATEMENT) {
            let with_work: HashSet<EventKey> = inbox_work::table
                .filter(inbox_work::event_id.eq_any(chunk))
                .select(inbox_work::event_id)
                .distinct()
                .load::<EventKey>(conn)?
                .into_iter()
                .collect();
            diesel::update(inbox_work::table.filter(inbox_work::event_id.eq_any(chunk)))
                .set(fresh_retries!(inbox_work, WorkStatus::Pending, now))
                .execute(conn)?;
            let stars: Vec<NewWorkRow> = chunk
                .iter()
                .filter(|id| !with_work.contains(*id))
                .map(|id| NewWorkRow {
                    event_id: id.id(),
                    listener: EVERY_LISTENER,
                    status: WorkStatus::Pending,
                    attempts: 0,
                    next_attempt_at_ms: 0,
                    claimed_until_ms: 0,
                    last_error: None,
                    updated_at_ms: now,
                    claimed_by: String::new(),
                })
                .collect();
            insert_work(conn, &stars.iter().collect::<Vec<_>>())?;
            requeued += diesel::update(
                inbox::table
                    .filter(inbox::status.eq_any(statuses))
                    .filter(inbox::payload.ne(""))
                    .filter(inbox::event_id.eq_any(chunk)),
            )
            .set(fresh_retries!(inbox, InboxStatus::Pending, now))
            .execute(conn)?;
        }
        Ok(requeued)
    })
}

/// One listener's work left on an event, as `dead-letters show` lists it.
#[derive(Debug, Clone, Queryable, Selectable, serde::Serialize)]
#[diesel(table_name = inbox_work)]
#[derive(serde::Deserialize, utoipa::ToSchema)]
pub struct WorkEntry {
    pub listener: String,
    pub status: WorkStatus,
    pub attempts: i32,
    pub next_attempt_at_ms: i64,
    pub last_error: Option<String>,
    pub updated_at_ms: i64,
}

/// The work left on an event, by listener.
pub fn work_of(conn: &mut DbConnection, event_id: &str) -> Result<Vec<WorkEntry>, DbError> {
    Ok(inbox_work::table
        .filter(inbox_work::event_id.eq(EventKey::of(event_id)))
        .order(inbox_work::listener)
        .select(WorkEntry::as_select())
        .load(conn)?)
}

/// Sets these events aside for good, those that still have one of `statuses`: status
/// `discarded`, envelope erased, `note` kept as `last_error`, and their work deleted, so that
/// no sweep, retry or replay runs them again (a result of a run in flight finds no work and
/// is ignored). Call it within a transaction; returns the ids discarded.
pub fn discard(
    conn: &mut DbConnection,
    statuses: &[InboxStatus],
    ids: &[String],
    note: &str,
) -> Result<Vec<String>, DbError> {
    let now = now_ms();
    let mut discarded = Vec::new();
    for chunk in ids.chunks(ROWS_PER_STATEMENT) {
        let keys = EventKey::all(chunk.iter().map(String::as_str));
        // PostgreSQL: the inbox rows in id order first, as the writer locks them.
        super::inbox::lock_events(conn, &chunk.iter().map(String::as_str).collect::<Vec<_>>())?;
        let target = inbox::table
            .filter(inbox::event_id.eq_any(&keys))
            .filter(inbox::status.eq_any(statuses));
        let changes = (
            inbox::status.eq(InboxStatus::Discarded),
            inbox::payload.eq(""),
            inbox::next_attempt_at_ms.eq(0i64),
            inbox::claimed_until_ms.eq(0i64),
            inbox::last_error.eq(note),
            inbox::updated_at_ms.eq(now),
        );
        let done: Vec<EventKey> = crate::per_backend!(conn, c => diesel::update(target)
            .set(changes)
            .returning(inbox::event_id)
            .get_results(c))?;
        if !done.is_empty() {
            diesel::delete(inbox_work::table.filter(inbox_work::event_id.eq_any(&done)))
                .execute(conn)?;
        }
        discarded.extend(done.into_iter().map(String::from));
    }
    Ok(discarded)
}

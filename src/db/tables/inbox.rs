//! The queries: every read and write the server makes, as plain functions on a connection.
//! Callers run them through [`super::Db::run`] or the background [`super::writer`].

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use diesel::dsl::count_star;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text};

use super::models::{
    ActivityDelta, ActivityRow, AlertRecord, ClaimedWork, EventLogRow, HandlerCounts, InboxEntry,
    MessageEdit, MessageRow, NewEventLog, NewInboxRow, NewMessage, NewWorkRow, ProcessRow,
    ReplyRecord,
};
use super::schema::{
    event_log, forwarder_batches, inbox, inbox_work, keyword_alerts, listener_processes, messages,
    outgoing_replies, user_activity,
};
use super::{DbConnection, DbError, now_ms, sqlite_rows};

/// Rows per multi-row statement: keeps every statement below SQLite's 32,766 bound
/// parameters and PostgreSQL's 65,535.
const ROWS_PER_STATEMENT: usize = 500;

// Bulk inserts: on PostgreSQL one statement of column arrays per chunk; on SQLite multi-row
// statements of fixed sizes, each prepared once (see `sqlite_rows`).

pub fn insert_event_logs(conn: &mut DbConnection, rows: &[&NewEventLog]) -> Result<(), DbError> {
    match conn {
        DbConnection::Sqlite(c) => {
            sqlite_rows::insert(c, rows)?;
        }
        DbConnection::Postgres(c) => {
            for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                pg_insert_event_logs(c, chunk)?;
            }
        }
    }
    Ok(())
}

/// On PostgreSQL, rows go in as one array per column (`unnest`): the statement stays short
/// and the same for any number of rows, where a multi-row VALUES list would be parsed and
/// planned anew, parameter by parameter, for every batch.
fn pg_insert_event_logs(
    c: &mut diesel::PgConnection,
    rows: &[&NewEventLog],
) -> Result<(), DbError> {
    use diesel::sql_types::{Array, Bool};
    diesel::sql_query(
        "INSERT INTO event_log (handler, source, event_type, bot, realm, realm_id, user_id, \
         message_id, event_id, duration_us, success, error, created_at_ms) \
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
         $6::bigint[], $7::bigint[], $8::bigint[], $9::text[], $10::bigint[], $11::boolean[], \
         $12::text[], $13::bigint[])",
    )
    .bind::<Array<Text>, _>(rows.iter().map(|r| r.handler.as_str()).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(rows.iter().map(|r| r.source).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(
        rows.iter()
            .map(|r| r.event_type.as_str())
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Nullable<Text>>, _>(rows.iter().map(|r| r.bot.as_deref()).collect::<Vec<_>>())
    .bind::<Array<Nullable<Text>>, _>(rows.iter().map(|r| r.realm.as_deref()).collect::<Vec<_>>())
    .bind::<Array<Nullable<BigInt>>, _>(rows.iter().map(|r| r.realm_id).collect::<Vec<_>>())
    .bind::<Array<Nullable<BigInt>>, _>(rows.iter().map(|r| r.user_id).collect::<Vec<_>>())
    .bind::<Array<Nullable<BigInt>>, _>(rows.iter().map(|r| r.message_id).collect::<Vec<_>>())
    .bind::<Array<Nullable<Text>>, _>(
        rows.iter()
            .map(|r| r.event_id.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind::<Array<BigInt>, _>(rows.iter().map(|r| r.duration_us).collect::<Vec<_>>())
    .bind::<Array<Bool>, _>(rows.iter().map(|r| r.success).collect::<Vec<_>>())
    .bind::<Array<Nullable<Text>>, _>(rows.iter().map(|r| r.error.as_deref()).collect::<Vec<_>>())
    .bind::<Array<BigInt>, _>(rows.iter().map(|r| r.created_at_ms).collect::<Vec<_>>())
    .execute(c)?;
    Ok(())
}

/// Stores messages; a message id already stored is left as it is.
pub fn insert_messages(conn: &mut DbConnection, rows: &[&NewMessage]) -> Result<(), DbError> {
    match conn {
        DbConnection::Sqlite(c) => {
            sqlite_rows::insert(c, rows)?;
        }
        DbConnection::Postgres(c) => {
            for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                pg_insert_messages(c, chunk)?;
            }
        }
    }
    Ok(())
}

/// Messages as column arrays (see [`pg_insert_event_logs`]).
fn pg_insert_messages(c: &mut diesel::PgConnection, rows: &[&NewMessage]) -> Result<(), DbError> {
    use diesel::sql_types::{Array, Bool};
    diesel::sql_query(
        "INSERT INTO messages (message_id, realm, realm_id, message_type, stream_id, channel, \
         topic, dm_recipients, sender_id, sender_email, sender_name, content, content_truncated, \
         sent_at, source, deleted, edited_at, stored_at_ms) \
         SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::bigint[], \
         $6::text[], $7::text[], $8::text[], $9::bigint[], $10::text[], $11::text[], $12::text[], \
         $13::boolean[], $14::bigint[], $15::text[], $16::boolean[], $17::bigint[], $18::bigint[]) \
         ON CONFLICT DO NOTHING",
    )
    .bind::<Array<BigInt>, _>(rows.iter().map(|r| r.message_id).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(rows.iter().map(|r| r.realm.as_str()).collect::<Vec<_>>())
    .bind::<Array<Nullable<BigInt>>, _>(rows.iter().map(|r| r.realm_id).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(
        rows.iter()
            .map(|r| r.message_type.as_str())
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Nullable<BigInt>>, _>(rows.iter().map(|r| r.stream_id).collect::<Vec<_>>())
    .bind::<Array<Nullable<Text>>, _>(
        rows.iter()
            .map(|r| r.channel.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Nullable<Text>>, _>(rows.iter().map(|r| r.topic.as_deref()).collect::<Vec<_>>())
    .bind::<Array<Nullable<Text>>, _>(
        rows.iter()
            .map(|r| r.dm_recipients.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Nullable<BigInt>>, _>(rows.iter().map(|r| r.sender_id).collect::<Vec<_>>())
    .bind::<Array<Nullable<Text>>, _>(
        rows.iter()
            .map(|r| r.sender_email.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Nullable<Text>>, _>(
        rows.iter()
            .map(|r| r.sender_name.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Text>, _>(rows.iter().map(|r| r.content.as_str()).collect::<Vec<_>>())
    .bind::<Array<Bool>, _>(rows.iter().map(|r| r.content_truncated).collect::<Vec<_>>())
    .bind::<Array<Nullable<BigInt>>, _>(rows.iter().map(|r| r.sent_at).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(rows.iter().map(|r| r.source).collect::<Vec<_>>())
    .bind::<Array<Bool>, _>(rows.iter().map(|r| r.deleted).collect::<Vec<_>>())
    .bind::<Array<Nullable<BigInt>>, _>(rows.iter().map(|r| r.edited_at).collect::<Vec<_>>())
    .bind::<Array<BigInt>, _>(rows.iter().map(|r| r.stored_at_ms).collect::<Vec<_>>())
    .execute(c)?;
    Ok(())
}

/// An id returned by an insert.
#[derive(QueryableByName)]
struct InsertedEventId {
    #[diesel(sql_type = Text)]
    event_id: String,
}

/// Inbox rows as column arrays (see [`pg_insert_event_logs`]); returns the ids inserted (the
/// others were stored before).
fn pg_insert_inbox(
    c: &mut diesel::PgConnection,
    rows: &[NewInboxRow],
) -> Result<HashSet<String>, DbError> {
    use diesel::sql_types::{Array, Integer};
    let inserted: Vec<InsertedEventId> = diesel::sql_query(
        "INSERT INTO inbox (event_id, webhook_id, realm_id, realm, user_id, event_type, op, \
         payload, status, attempts, next_attempt_at_ms, claimed_until_ms, last_error, \
         emitted_at_ms, received_at_ms, updated_at_ms) \
         SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::bigint[], \
         $6::text[], $7::text[], $8::text[], $9::text[], $10::integer[], $11::bigint[], \
         $12::bigint[], $13::text[], $14::bigint[], $15::bigint[], $16::bigint[]) \
         ON CONFLICT DO NOTHING RETURNING event_id",
    )
    .bind::<Array<Text>, _>(rows.iter().map(|r| r.event_id.as_str()).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(
        rows.iter()
            .map(|r| r.webhook_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind::<Array<BigInt>, _>(rows.iter().map(|r| r.realm_id).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(rows.iter().map(|r| r.realm.as_str()).collect::<Vec<_>>())
    .bind::<Array<Nullable<BigInt>>, _>(rows.iter().map(|r| r.user_id).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(
        rows.iter()
            .map(|r| r.event_type.as_str())
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Nullable<Text>>, _>(rows.iter().map(|r| r.op.as_deref()).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(rows.iter().map(|r| r.payload.as_str()).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(rows.iter().map(|r| r.status).collect::<Vec<_>>())
    .bind::<Array<Integer>, _>(rows.iter().map(|r| r.attempts).collect::<Vec<_>>())
    .bind::<Array<BigInt>, _>(
        rows.iter()
            .map(|r| r.next_attempt_at_ms)
            .collect::<Vec<_>>(),
    )
    .bind::<Array<BigInt>, _>(rows.iter().map(|r| r.claimed_until_ms).collect::<Vec<_>>())
    .bind::<Array<Nullable<Text>>, _>(
        rows.iter()
            .map(|r| r.last_error.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Nullable<BigInt>>, _>(rows.iter().map(|r| r.emitted_at_ms).collect::<Vec<_>>())
    .bind::<Array<BigInt>, _>(rows.iter().map(|r| r.received_at_ms).collect::<Vec<_>>())
    .bind::<Array<BigInt>, _>(rows.iter().map(|r| r.updated_at_ms).collect::<Vec<_>>())
    .load(c)?;
    Ok(inserted.into_iter().map(|r| r.event_id).collect())
}

/// Records the answers given to outgoing webhooks; a (bot, message id) already recorded is kept.
pub fn insert_replies(conn: &mut DbConnection, rows: &[ReplyRecord]) -> Result<(), DbError> {
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        match conn {
            DbConnection::Sqlite(c) => diesel::insert_or_ignore_into(outgoing_replies::table)
                .values(chunk)
                .execute(c)?,
            DbConnection::Postgres(c) => diesel::insert_into(outgoing_replies::table)
                .values(chunk)
                .on_conflict_do_nothing()
                .execute(c)?,
        };
    }
    Ok(())
}

/// Answers recorded since `since_ms`, to rebuild the retry record at start-up.
pub fn replies_since(conn: &mut DbConnection, since_ms: i64) -> Result<Vec<ReplyRecord>, DbError> {
    Ok(outgoing_replies::table
        .filter(outgoing_replies::created_at_ms.ge(since_ms))
        .load(conn)?)
}

/// Forgets answers older than `before_ms`; returns how many were deleted.
pub fn delete_replies_before(conn: &mut DbConnection, before_ms: i64) -> Result<usize, DbError> {
    Ok(diesel::delete(
        outgoing_replies::table.filter(outgoing_replies::created_at_ms.lt(before_ms)),
    )
    .execute(conn)?)
}

/// Runs and failures per handler, from the event log.
pub fn handler_counts(conn: &mut DbConnection) -> Result<Vec<HandlerCounts>, DbError> {
    let runs: Vec<(String, i64)> = event_log::table
        .group_by(event_log::handler)
        .select((event_log::handler, count_star()))
        .load(conn)?;
    let failures: Vec<(String, i64)> = event_log::table
        .filter(event_log::success.eq(false))
        .group_by(event_log::handler)
        .select((event_log::handler, count_star()))
        .load(conn)?;
    let mut counts: Vec<HandlerCounts> = runs
        .into_iter()
        .map(|(handler, runs)| {
            let failures = failures
                .iter()
                .find(|(h, _)| *h == handler)
                .map_or(0, |(_, n)| *n);
            HandlerCounts {
                handler,
                runs,
                failures,
            }
        })
        .collect();
    counts.sort_by(|a, b| a.handler.cmp(&b.handler));
    Ok(counts)
}

pub fn message_by_id(conn: &mut DbConnection, id: i64) -> Result<Option<MessageRow>, DbError> {
    Ok(messages::table
        .filter(messages::message_id.eq(id))
        .select(MessageRow::as_select())
        .first(conn)
        .optional()?)
}

pub fn count_event_logs(conn: &mut DbConnection) -> Result<i64, DbError> {
    Ok(event_log::table.count().get_result(conn)?)
}

/// Records a signed batch by its `webhook-id`; `false` when it was already recorded.
pub fn record_batch(
    conn: &mut DbConnection,
    webhook_id: &str,
    events: i32,
) -> Result<bool, DbError> {
    let row = (
        forwarder_batches::webhook_id.eq(webhook_id),
        forwarder_batches::events.eq(events),
        forwarder_batches::received_at_ms.eq(now_ms()),
    );
    let inserted = match conn {
        DbConnection::Sqlite(c) => diesel::insert_or_ignore_into(forwarder_batches::table)
            .values(row)
            .execute(c)?,
        DbConnection::Postgres(c) => diesel::insert_into(forwarder_batches::table)
            .values(row)
            .on_conflict_do_nothing()
            .execute(c)?,
    };
    Ok(inserted == 1)
}

/// Stores accepted events; an event id already stored is left as it is. Returns the ids
/// that were already stored.
pub fn insert_inbox(
    conn: &mut DbConnection,
    rows: &[NewInboxRow],
) -> Result<HashSet<String>, DbError> {
    let mut known = HashSet::new();
    match conn {
        DbConnection::Sqlite(c) => {
            let rows: Vec<&NewInboxRow> = rows.iter().collect();
            sqlite_rows::insert_each_chunk(c, &rows, |c, chunk, inserted| {
                if inserted < chunk.len() {
                    known.extend(sqlite_known_events(c, chunk, inserted)?);
                }
                Ok(())
            })?;
        }
        DbConnection::Postgres(c) => {
            for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                let inserted = pg_insert_inbox(c, chunk)?;
                known.extend(
                    chunk
                        .iter()
                        .filter(|r| !inserted.contains(&r.event_id))
                        .map(|r| r.event_id.clone()),
                );
            }
        }
    }
    Ok(known)
}

/// The events of a multi-row `INSERT OR IGNORE` that were in the inbox before it: the
/// statement skipped them. The rows it did insert got consecutive ids ending at
/// `last_insert_rowid()` (an `INTEGER PRIMARY KEY` without AUTOINCREMENT takes the largest
/// id plus one), so the skipped ones are those with a smaller id.
fn sqlite_known_events(
    c: &mut diesel::SqliteConnection,
    chunk: &[&NewInboxRow],
    inserted: usize,
) -> QueryResult<Vec<String>> {
    let ids = chunk.iter().map(|r| r.event_id.as_str());
    if inserted == 0 {
        return Ok(ids.map(str::to_string).collect());
    }
    let last: i64 =
        diesel::select(diesel::dsl::sql::<BigInt>("last_insert_rowid()")).get_result(c)?;
    let first_new = last - i64::try_from(inserted).unwrap_or(i64::MAX) + 1;
    inbox::table
        .select(inbox::event_id)
        .filter(inbox::event_id.eq_any(ids.collect::<Vec<_>>()))
        .filter(inbox::id.lt(first_new))
        .load(c)
}

/// Statuses of an inbox row whose event still has work (or is dead).
const OPEN_STATUSES: [&str; 3] = ["pending", "parked", "dead"];

/// Stores work rows for events just stored; a row already there is kept.
pub fn insert_work(conn: &mut DbConnection, rows: &[&NewWorkRow]) -> Result<(), DbError> {
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let chunk: Vec<NewWorkRow> = chunk.iter().map(|r| (*r).clone()).collect();
        match conn {
            DbConnection::Sqlite(c) => diesel::insert_or_ignore_into(inbox_work::table)
                .values(&chunk)
                .execute(c)?,
            DbConnection::Postgres(c) => diesel::insert_into(inbox_work::table)
                .values(&chunk)
                .on_conflict_do_nothing()
                .execute(c)?,
        };
    }
    Ok(())
}

/// On PostgreSQL, locks the inbox rows of `event_ids` (in id order, so that two writers never
/// wait for each other in a cycle) for the rest of the transaction: two processes finishing
/// different listeners of one event then settle its status one after the other, each seeing
/// the other's work rows as committed. SQLite has one writer; nothing to do.
pub fn lock_events(conn: &mut DbConnection, event_ids: &[&str]) -> Result<(), DbError> {
    if let DbConnection::Postgres(c) = conn {
        for chunk in event_ids.chunks(ROWS_PER_STATEMENT) {
            inbox::table
                .filter(inbox::event_id.eq_any(chunk))
                .order(inbox::id)
                .select(inbox::id)
                .for_update()
                .load::<i64>(c)?;
        }
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
            .filter(inbox_work::event_id.eq_any(chunk))
            .filter(inbox_work::status.eq_any(["pending", "parked"]))
            .filter(inbox_work::attempts.eq(attempts_before));
        let done: Vec<String> = crate::per_backend!(conn, c => diesel::delete(target)
            .returning(inbox_work::event_id)
            .get_results(c))?;
        applied.extend(done);
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
        .filter(inbox_work::event_id.eq(event_id))
        .filter(inbox_work::listener.eq(listener))
        .filter(inbox_work::status.eq_any(["pending", "parked"]))
        .filter(inbox_work::attempts.eq(attempts_before));
    let (status, retry_at) = match then {
        WorkThen::SetAside => ("rate_limited", None),
        WorkThen::Dead => ("dead", None),
        WorkThen::RetryAt(at) if attempts_after == attempts_before => ("parked", Some(at)),
        WorkThen::RetryAt(at) => ("pending", Some(at)),
    };
    let updated = diesel::update(target)
        .set((
            inbox_work::status.eq(status),
            inbox_work::attempts.eq(attempts_after),
            inbox_work::next_attempt_at_ms.eq(retry_at.unwrap_or(0)),
            inbox_work::claimed_until_ms.eq(0i64),
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
                .filter(inbox::event_id.eq_any(chunk))
                .filter(inbox::status.eq_any(OPEN_STATUSES))
                .filter(diesel::dsl::not(diesel::dsl::exists(
                    inbox_work::table.filter(inbox_work::event_id.eq(inbox::event_id)),
                )));
            let changes = (
                inbox::status.eq("done"),
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
            let ids: Vec<String> = crate::per_backend!(conn, c => diesel::update(target)
                .set(changes)
                .returning(inbox::event_id)
                .get_results(c))?;
            done.extend(ids);
        }
    }
    // The others still have work: their status follows what is left.
    for (id, n) in attempts {
        if done.contains(*id) {
            continue;
        }
        let left: Vec<(String, i32, i64)> = inbox_work::table
            .filter(inbox_work::event_id.eq(*id))
            .select((
                inbox_work::status,
                inbox_work::attempts,
                inbox_work::next_attempt_at_ms,
            ))
            .load(conn)?;
        let status = if left.iter().any(|(s, _, _)| s == "pending") {
            "pending"
        } else if left.iter().any(|(s, _, _)| s == "parked") {
            "parked"
        } else if left.iter().any(|(s, _, _)| s == "dead") {
            "dead"
        } else {
            // Only listeners that skipped it over their own quota: replayable for them.
            "rate_limited"
        };
        let most = left.iter().map(|(_, a, _)| *a).max().unwrap_or(0).max(*n);
        let next = left
            .iter()
            .filter(|(s, _, _)| s != "dead" && s != "rate_limited")
            .map(|(_, _, at)| *at)
            .min()
            .unwrap_or(0);
        let target = inbox::table
            .filter(inbox::event_id.eq(*id))
            .filter(inbox::status.eq_any(OPEN_STATUSES));
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

/// Turns a row just stored by intake into a `rate_limited` one, with its envelope (rows
/// processed at intake were stored without it) and no claim or result.
pub fn mark_rate_limited(
    conn: &mut DbConnection,
    event_id: &str,
    payload: &str,
    reason: &str,
) -> Result<(), DbError> {
    diesel::update(inbox::table.filter(inbox::event_id.eq(event_id)))
        .set((
            inbox::status.eq("rate_limited"),
            inbox::payload.eq(payload),
            inbox::attempts.eq(0),
            inbox::claimed_until_ms.eq(0i64),
            inbox::last_error.eq(reason),
            inbox::updated_at_ms.eq(now_ms()),
        ))
        .execute(conn)?;
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
                .filter(inbox_work::event_id.eq_any(chunk))
                .filter(inbox_work::listener.eq_any(listeners)),
        )
        .set(inbox_work::claimed_until_ms.eq(0i64))
        .execute(conn)?;
    }
    Ok(())
}

/// Ends every claim (single-instance start-up: nothing else can be working on them).
pub fn release_all_claims(conn: &mut DbConnection) -> Result<usize, DbError> {
    Ok(diesel::update(
        inbox_work::table
            .filter(inbox_work::status.eq_any(["pending", "parked"]))
            .filter(inbox_work::claimed_until_ms.gt(0i64)),
    )
    .set(inbox_work::claimed_until_ms.eq(0i64))
    .execute(conn)?)
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
    #[diesel(sql_type = Text)]
    event_id: String,
    #[diesel(sql_type = Text)]
    event_type: String,
    #[diesel(sql_type = Text)]
    status: String,
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
    conn.transaction(|conn| {
        let query = format!(
            "SELECT w.event_id, i.event_type, w.status, w.attempts, w.next_attempt_at_ms \
             FROM inbox_work w JOIN inbox i ON i.event_id = w.event_id \
             WHERE w.listener = '*' AND w.status IN ('pending', 'parked') \
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
                        status: if star.status == "parked" {
                            "parked"
                        } else {
                            "pending"
                        },
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
                        .filter(inbox_work::listener.eq("*"))
                        .filter(inbox_work::event_id.eq_any(chunk)),
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
             WHERE w.status IN ('pending', 'parked') AND w.next_attempt_at_ms <= {now} \
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
                        .filter(inbox_work::event_id.eq_any(chunk)),
                )
                .set(inbox_work::claimed_until_ms.eq(claim_until_ms))
                .execute(conn)?;
            }
        }
        Ok(rows)
    })
}

/// Inbox rows with one of `statuses`, newest first.
pub fn inbox_entries(
    conn: &mut DbConnection,
    statuses: &[&str],
    limit: i64,
) -> Result<Vec<InboxEntry>, DbError> {
    Ok(inbox::table
        .filter(inbox::status.eq_any(statuses))
        .order(inbox::id.desc())
        .limit(limit)
        .select(InboxEntry::as_select())
        .load(conn)?)
}

/// Puts events with one of `statuses` back to pending with fresh attempts; `ids` limits it to
/// those events. Only the listeners that did not succeed run again: the event's work rows
/// (dead or parked ones) become pending; an event that has none (it was never dispatched:
/// rate-limited, filtered, expired) gets a `'*'` row, every listener that wants it. Returns
/// how many were requeued.
pub fn requeue(
    conn: &mut DbConnection,
    statuses: &[&str],
    ids: Option<&[String]>,
) -> Result<usize, DbError> {
    let now = now_ms();
    conn.transaction(|conn| {
        let target = || inbox::table.filter(inbox::status.eq_any(statuses));
        let found: Vec<String> = match ids {
            Some(ids) => {
                let mut found = Vec::new();
                for chunk in ids.chunks(ROWS_PER_STATEMENT) {
                    found.extend(
                        target()
                            .filter(inbox::event_id.eq_any(chunk))
                            .select(inbox::event_id)
                            .load::<String>(conn)?,
                    );
                }
                found
            }
            None => target().select(inbox::event_id).load(conn)?,
        };
        let mut requeued = 0;
        for chunk in found.chunks(ROWS_PER_STATEMENT) {
            let with_work: HashSet<String> = inbox_work::table
                .filter(inbox_work::event_id.eq_any(chunk))
                .select(inbox_work::event_id)
                .distinct()
                .load::<String>(conn)?
                .into_iter()
                .collect();
            diesel::update(inbox_work::table.filter(inbox_work::event_id.eq_any(chunk)))
                .set((
                    inbox_work::status.eq("pending"),
                    inbox_work::attempts.eq(0),
                    inbox_work::next_attempt_at_ms.eq(0i64),
                    inbox_work::claimed_until_ms.eq(0i64),
                    inbox_work::updated_at_ms.eq(now),
                ))
                .execute(conn)?;
            let stars: Vec<NewWorkRow> = chunk
                .iter()
                .filter(|id| !with_work.contains(*id))
                .map(|id| NewWorkRow {
                    event_id: id.clone(),
                    listener: "*",
                    status: "pending",
                    attempts: 0,
                    next_attempt_at_ms: 0,
                    claimed_until_ms: 0,
                    last_error: None,
                    updated_at_ms: now,
                })
                .collect();
            insert_work(conn, &stars.iter().collect::<Vec<_>>())?;
            requeued += diesel::update(
                inbox::table
                    .filter(inbox::status.eq_any(statuses))
                    .filter(inbox::event_id.eq_any(chunk)),
            )
            .set((
                inbox::status.eq("pending"),
                inbox::attempts.eq(0),
                inbox::next_attempt_at_ms.eq(0i64),
                inbox::claimed_until_ms.eq(0i64),
                inbox::updated_at_ms.eq(now),
            ))
            .execute(conn)?;
        }
        Ok(requeued)
    })
}

/// Pending events (due or not), counted through the partial index `inbox_due`.
pub fn pending_count(conn: &mut DbConnection) -> Result<i64, DbError> {
    Ok(inbox::table
        .filter(diesel::dsl::sql::<diesel::sql_types::Bool>(
            "status = 'pending'",
        ))
        .select(count_star())
        .first(conn)?)
}

/// Pending events (due or not) per realm id and event type.
pub fn pending_by_realm_and_type(
    conn: &mut DbConnection,
) -> Result<Vec<(i64, String, i64)>, DbError> {
    Ok(inbox::table
        .filter(diesel::dsl::sql::<diesel::sql_types::Bool>(
            "status = 'pending'",
        ))
        .group_by((inbox::realm_id, inbox::event_type))
        .select((inbox::realm_id, inbox::event_type, count_star()))
        .load(conn)?)
}

/// The reason stored with an event parked behind `handler`.
pub fn parked_reason(handler: &str) -> String {
    format!(
        "waiting for `{handler}`: its circuit breaker is open or it was disabled after failures"
    )
}

/// Parked work per listener it waits for.
pub fn parked_by_handler(conn: &mut DbConnection) -> Result<Vec<(String, i64)>, DbError> {
    Ok(inbox_work::table
        .filter(inbox_work::status.eq("parked"))
        .group_by(inbox_work::listener)
        .select((inbox_work::listener, count_star()))
        .load(conn)?)
}

/// Records this process and its listeners, or refreshes its heartbeat.
pub fn heartbeat(conn: &mut DbConnection, row: &ProcessRow) -> Result<(), DbError> {
    let updated = diesel::update(listener_processes::table.find(&row.process_id))
        .set((
            listener_processes::listeners.eq(&row.listeners),
            listener_processes::heartbeat_at_ms.eq(row.heartbeat_at_ms),
        ))
        .execute(conn)?;
    if updated == 0 {
        diesel::insert_into(listener_processes::table)
            .values(row)
            .execute(conn)?;
    }
    Ok(())
}

/// Every registered process.
pub fn processes(conn: &mut DbConnection) -> Result<Vec<ProcessRow>, DbError> {
    Ok(listener_processes::table
        .order(listener_processes::started_at_ms)
        .select(ProcessRow::as_select())
        .load(conn)?)
}

/// Forgets a process (it stopped), and processes silent since before `stale_before_ms`.
pub fn forget_process(
    conn: &mut DbConnection,
    process_id: &str,
    stale_before_ms: i64,
) -> Result<(), DbError> {
    diesel::delete(
        listener_processes::table.filter(
            listener_processes::process_id
                .eq(process_id)
                .or(listener_processes::heartbeat_at_ms.lt(stale_before_ms)),
        ),
    )
    .execute(conn)?;
    Ok(())
}

/// Events per inbox status.
pub fn inbox_counts(conn: &mut DbConnection) -> Result<Vec<(String, i64)>, DbError> {
    Ok(inbox::table
        .group_by(inbox::status)
        .select((inbox::status, count_star()))
        .order(inbox::status)
        .load(conn)?)
}

/// When the oldest pending forwarded event was received (unix ms), if any is pending.
pub fn oldest_pending_ms(conn: &mut DbConnection) -> Result<Option<i64>, DbError> {
    Ok(oldest_pending_by_type(conn)?
        .into_iter()
        .map(|(_, at)| at)
        .min())
}

/// When the oldest pending event of each type was received (read through the index of
/// pending rows).
pub fn oldest_pending_by_type(conn: &mut DbConnection) -> Result<Vec<(String, i64)>, DbError> {
    let rows: Vec<(String, Option<i64>)> = inbox::table
        .filter(inbox::status.eq("pending"))
        .group_by(inbox::event_type)
        .select((inbox::event_type, diesel::dsl::min(inbox::received_at_ms)))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .filter_map(|(t, at)| at.map(|at| (t, at)))
        .collect())
}

/// Applies an `update_message` to stored messages.
pub fn apply_edit(conn: &mut DbConnection, edit: &MessageEdit) -> Result<(), DbError> {
    if let (Some(id), Some((content, truncated))) = (edit.message_id, &edit.content) {
        // A deleted message keeps no content, whatever a late edit carries.
        diesel::update(
            messages::table
                .filter(messages::message_id.eq(id))
                .filter(messages::deleted.eq(false)),
        )
        .set((
            messages::content.eq(content),
            messages::content_truncated.eq(truncated),
            messages::edited_at.eq(edit.edited_at),
        ))
        .execute(conn)?;
    }
    let moved: Vec<i64> = if edit.message_ids.is_empty() {
        edit.message_id.into_iter().collect()
    } else {
        edit.message_ids.clone()
    };
    for chunk in moved.chunks(ROWS_PER_STATEMENT) {
        if let Some(topic) = &edit.topic {
            diesel::update(
                messages::table
                    .filter(messages::message_id.eq_any(chunk))
                    .filter(messages::deleted.eq(false)),
            )
            .set((
                messages::topic.eq(topic),
                messages::edited_at.eq(edit.edited_at),
            ))
            .execute(conn)?;
        }
        if let Some(stream_id) = edit.stream_id {
            diesel::update(messages::table.filter(messages::message_id.eq_any(chunk)))
                .set((
                    messages::stream_id.eq(stream_id),
                    messages::channel.eq(None::<String>),
                    messages::edited_at.eq(edit.edited_at),
                ))
                .execute(conn)?;
        }
    }
    Ok(())
}

/// Marks stored messages deleted and erases what they said and who was in them: the content,
/// the topic, the sender's email and name and the direct-message recipients are cleared. The
/// row stays as a tombstone (ids, channel, times), so that the log keeps its history and a
/// re-sent copy of the message is not stored again.
pub fn mark_deleted(conn: &mut DbConnection, ids: &[i64]) -> Result<(), DbError> {
    for chunk in ids.chunks(ROWS_PER_STATEMENT) {
        diesel::update(messages::table.filter(messages::message_id.eq_any(chunk)))
            .set((messages::deleted.eq(true), scrubbed_message()))
            .execute(conn)?;
    }
    Ok(())
}

/// The column values of a message whose content and personal data are erased.
#[allow(clippy::type_complexity)]
pub(crate) fn scrubbed_message() -> (
    diesel::dsl::Eq<messages::content, &'static str>,
    diesel::dsl::Eq<messages::content_truncated, bool>,
    diesel::dsl::Eq<messages::topic, Option<String>>,
    diesel::dsl::Eq<messages::dm_recipients, Option<String>>,
    diesel::dsl::Eq<messages::sender_email, Option<String>>,
    diesel::dsl::Eq<messages::sender_name, Option<String>>,
) {
    (
        messages::content.eq(""),
        messages::content_truncated.eq(false),
        messages::topic.eq(None),
        messages::dm_recipients.eq(None),
        messages::sender_email.eq(None),
        messages::sender_name.eq(None),
    )
}

/// Activity rows per upsert statement (8 parameters each).
const ACTIVITY_ROWS_PER_STATEMENT: usize = 500;

pub(super) const ACTIVITY_UPSERT_HEAD: &str = "INSERT INTO user_activity \
    (realm_id, user_id, last_seen_ms, message_count, reaction_count, last_presence, last_presence_at_ms, last_typing_at_ms) \
    VALUES ";

pub(super) const ACTIVITY_UPSERT_TAIL: &str = " ON CONFLICT (realm_id, user_id) DO UPDATE SET \
    last_seen_ms = CASE WHEN excluded.last_seen_ms > user_activity.last_seen_ms THEN excluded.last_seen_ms ELSE user_activity.last_seen_ms END, \
    message_count = user_activity.message_count + excluded.message_count, \
    reaction_count = user_activity.reaction_count + excluded.reaction_count, \
    last_presence = COALESCE(excluded.last_presence, user_activity.last_presence), \
    last_presence_at_ms = COALESCE(excluded.last_presence_at_ms, user_activity.last_presence_at_ms), \
    last_typing_at_ms = COALESCE(excluded.last_typing_at_ms, user_activity.last_typing_at_ms)";

/// Adds activity per (realm, user), creating rows on first sight: multi-row upserts, so that
/// a batch costs a few statements rather than one per user. Each (realm, user) may appear
/// only once in `deltas` (PostgreSQL refuses to update a row twice in one statement); the
/// writer sums them first.
pub fn add_activity<'a>(
    conn: &mut DbConnection,
    deltas: impl ExactSizeIterator<Item = &'a ActivityDelta>,
) -> Result<(), DbError> {
    let deltas: Vec<&ActivityDelta> = deltas.collect();
    match conn {
        DbConnection::Sqlite(c) => {
            sqlite_rows::insert(c, &deltas)?;
        }
        DbConnection::Postgres(c) => {
            for chunk in deltas.chunks(ACTIVITY_ROWS_PER_STATEMENT) {
                pg_add_activity(c, chunk)?;
            }
        }
    }
    Ok(())
}

fn pg_add_activity(c: &mut diesel::PgConnection, deltas: &[&ActivityDelta]) -> Result<(), DbError> {
    let mut sql = String::with_capacity(
        ACTIVITY_UPSERT_HEAD.len() + ACTIVITY_UPSERT_TAIL.len() + deltas.len() * 48,
    );
    sql.push_str(ACTIVITY_UPSERT_HEAD);
    for i in 0..deltas.len() {
        if i > 0 {
            sql.push_str(", ");
        }
        let n = i * 8;
        let _ = write!(
            sql,
            "(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${})",
            n + 1,
            n + 2,
            n + 3,
            n + 4,
            n + 5,
            n + 6,
            n + 7,
            n + 8
        );
    }
    sql.push_str(ACTIVITY_UPSERT_TAIL);
    let mut query = diesel::sql_query(sql).into_boxed();
    for d in deltas {
        query = query
            .bind::<BigInt, _>(d.realm_id)
            .bind::<BigInt, _>(d.user_id)
            .bind::<BigInt, _>(d.seen_at_ms)
            .bind::<BigInt, _>(d.messages)
            .bind::<BigInt, _>(d.reactions)
            .bind::<Nullable<Text>, _>(d.presence.as_deref())
            .bind::<Nullable<BigInt>, _>(d.presence_at_ms)
            .bind::<Nullable<BigInt>, _>(d.typing_at_ms);
    }
    query.execute(c)?;
    Ok(())
}

pub fn activity_of(
    conn: &mut DbConnection,
    realm: i64,
    user: i64,
) -> Result<Option<ActivityRow>, DbError> {
    Ok(user_activity::table
        .find((realm, user))
        .select(ActivityRow::as_select())
        .first(conn)
        .optional()?)
}

/// Records sent alerts; one already recorded is kept.
pub fn insert_alerts(conn: &mut DbConnection, rows: &[&AlertRecord]) -> Result<(), DbError> {
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        match conn {
            DbConnection::Sqlite(c) => diesel::insert_or_ignore_into(keyword_alerts::table)
                .values(chunk.to_vec())
                .execute(c)?,
            DbConnection::Postgres(c) => diesel::insert_into(keyword_alerts::table)
                .values(chunk.to_vec())
                .on_conflict_do_nothing()
                .execute(c)?,
        };
    }
    Ok(())
}

/// Which of `rules` already alerted about a message.
pub fn alerted_rules(conn: &mut DbConnection, message_id: i64) -> Result<HashSet<String>, DbError> {
    Ok(keyword_alerts::table
        .filter(keyword_alerts::message_id.eq(message_id))
        .select(keyword_alerts::rule)
        .load::<String>(conn)?
        .into_iter()
        .collect())
}

/// A page of the event log, newest first, optionally filtered.
pub fn event_log_page(
    conn: &mut DbConnection,
    handler: Option<&str>,
    event_type: Option<&str>,
    success: Option<bool>,
    offset: i64,
    limit: i64,
) -> Result<Vec<EventLogRow>, DbError> {
    let mut query = event_log::table.into_boxed();
    if let Some(handler) = handler {
        query = query.filter(event_log::handler.eq(handler.to_string()));
    }
    if let Some(event_type) = event_type {
        query = query.filter(event_log::event_type.eq(event_type.to_string()));
    }
    if let Some(success) = success {
        query = query.filter(event_log::success.eq(success));
    }
    Ok(query
        .order(event_log::id.desc())
        .offset(offset)
        .limit(limit)
        .select(EventLogRow::as_select())
        .load(conn)?)
}

/// Handler runs and failures since `since_ms`, and the time of the newest run.
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
        .select(diesel::dsl::max(event_log::created_at_ms))
        .first(conn)?;
    Ok((runs, failures, last))
}

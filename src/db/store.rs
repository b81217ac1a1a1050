//! The queries: every read and write the server makes, as plain functions on a connection.
//! Callers run them through [`super::Db::run`] or the background [`super::writer`].

use diesel::dsl::count_star;
use diesel::prelude::*;

use super::models::{HandlerCounts, ListenerRow, MessageRow, NewEventLog, NewMessage, ReplyRecord};
use super::schema::{event_log, listeners, messages, outgoing_replies};
use super::{DbConnection, DbError, now_ms};

/// Rows per INSERT statement: keeps every statement below SQLite's 32,766 bound parameters.
const ROWS_PER_STATEMENT: usize = 500;

pub fn insert_event_logs(conn: &mut DbConnection, rows: &[NewEventLog]) -> Result<(), DbError> {
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        crate::per_backend!(conn, c => diesel::insert_into(event_log::table).values(chunk).execute(c))?;
    }
    Ok(())
}

/// Stores messages; a message id already stored is left as it is.
pub fn insert_messages(conn: &mut DbConnection, rows: &[NewMessage]) -> Result<(), DbError> {
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        match conn {
            DbConnection::Sqlite(c) => diesel::insert_or_ignore_into(messages::table)
                .values(chunk)
                .execute(c)?,
            DbConnection::Postgres(c) => diesel::insert_into(messages::table)
                .values(chunk)
                .on_conflict_do_nothing()
                .execute(c)?,
        };
    }
    Ok(())
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

/// Makes sure every compiled-in handler has a `listeners` row, records its current settings,
/// and returns all rows.
pub fn sync_listeners(
    conn: &mut DbConnection,
    handlers: &[(&'static str, String)],
) -> Result<Vec<ListenerRow>, DbError> {
    let now = now_ms();
    conn.transaction::<_, DbError, _>(|conn| {
        for (name, config) in handlers {
            let updated = diesel::update(listeners::table.find(*name))
                .set((
                    listeners::config.eq(config),
                    listeners::updated_at_ms.eq(now),
                ))
                .execute(conn)?;
            if updated == 0 {
                diesel::insert_into(listeners::table)
                    .values(ListenerRow {
                        name: name.to_string(),
                        enabled: true,
                        config: config.clone(),
                        disabled_reason: None,
                        created_at_ms: now,
                        updated_at_ms: now,
                    })
                    .execute(conn)?;
            }
        }
        Ok(())
    })?;
    Ok(listeners::table.order(listeners::name).load(conn)?)
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

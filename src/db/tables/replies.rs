//! The `outgoing_replies` table: the answer given to each (bot, message id) of an outgoing
//! webhook, so that Zulip's retries are answered the same without running twice. An answer
//! may quote the message (`echo`): it is forgotten when the message is deleted.

use diesel::prelude::*;

use crate::db::bulk::{self, bulk_row};
use crate::db::schema::outgoing_replies;
use crate::db::{DbConnection, DbError};

/// The answer given to a (bot, message id).
#[derive(Debug, Clone, Insertable, Queryable)]
#[diesel(table_name = outgoing_replies)]
pub struct ReplyRecord {
    pub bot: String,
    pub message_id: i64,
    pub response: String,
    pub created_at_ms: i64,
}

bulk_row! {
    ReplyRecord => outgoing_replies,
    sqlite: "INSERT OR IGNORE INTO" + "",
    postgres: "ON CONFLICT DO NOTHING",
    columns: (bot, message_id, response, created_at_ms),
}

/// Records the answers given to outgoing webhooks; a (bot, message id) already recorded is kept.
pub fn insert_replies(conn: &mut DbConnection, rows: &[ReplyRecord]) -> Result<(), DbError> {
    let rows: Vec<&ReplyRecord> = rows.iter().collect();
    bulk::insert(conn, &rows)
}

/// Answers recorded since `since_ms`, to rebuild the retry record at start-up.
pub fn replies_since(conn: &mut DbConnection, since_ms: i64) -> Result<Vec<ReplyRecord>, DbError> {
    Ok(outgoing_replies::table
        .filter(outgoing_replies::created_at_ms.ge(since_ms))
        .load(conn)?)
}

/// Forgets the answers given to messages `ids` (deleted in Zulip); returns how many. The
/// table's key is (bot, message id): the few bots are found by hopping along the key
/// (one index look-up each), then each bot's answers are deleted by key.
pub fn forget_replies_to(conn: &mut DbConnection, ids: &[i64]) -> Result<usize, DbError> {
    let mut bots: Vec<String> = Vec::new();
    loop {
        let next = outgoing_replies::table.select(diesel::dsl::min(outgoing_replies::bot));
        let next: Option<String> = match bots.last() {
            None => next.first(conn)?,
            Some(last) => next.filter(outgoing_replies::bot.gt(last)).first(conn)?,
        };
        match next {
            Some(bot) => bots.push(bot),
            None => break,
        }
    }
    let mut forgotten = 0;
    if bots.is_empty() {
        return Ok(0);
    }
    for chunk in ids.chunks(bulk::ROWS_PER_STATEMENT) {
        forgotten += diesel::delete(
            outgoing_replies::table
                .filter(outgoing_replies::bot.eq_any(&bots))
                .filter(outgoing_replies::message_id.eq_any(chunk)),
        )
        .execute(conn)?;
    }
    Ok(forgotten)
}

/// Forgets answers older than `before_ms`; returns how many were deleted.
pub fn delete_replies_before(conn: &mut DbConnection, before_ms: i64) -> Result<usize, DbError> {
    Ok(diesel::delete(
        outgoing_replies::table.filter(outgoing_replies::created_at_ms.lt(before_ms)),
    )
    .execute(conn)?)
}

//! The `outgoing_replies` table: the answer given to each (bot, message id) of an outgoing
//! webhook, so that Zulip's retries are answered the same without running twice.

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

/// Forgets answers older than `before_ms`; returns how many were deleted.
pub fn delete_replies_before(conn: &mut DbConnection, before_ms: i64) -> Result<usize, DbError> {
    Ok(diesel::delete(
        outgoing_replies::table.filter(outgoing_replies::created_at_ms.lt(before_ms)),
    )
    .execute(conn)?)
}

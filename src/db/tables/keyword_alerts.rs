//! The `keyword_alerts` table: one row per (rule, message) alerted, so that a redelivered
//! message does not alert twice.

use std::collections::HashSet;

use diesel::prelude::*;

use crate::db::bulk::ROWS_PER_STATEMENT;
use crate::db::schema::keyword_alerts;
use crate::db::{DbConnection, DbError};

/// An alert sent by keyword_alerts.
#[derive(Debug, Clone, Insertable, Queryable)]
#[diesel(table_name = keyword_alerts)]
pub struct AlertRecord {
    pub rule: String,
    pub message_id: i64,
    pub realm: String,
    pub target: String,
    pub sent_at_ms: i64,
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

/// The rules that already alerted about a message.
pub fn alerted_rules(conn: &mut DbConnection, message_id: i64) -> Result<HashSet<String>, DbError> {
    Ok(keyword_alerts::table
        .filter(keyword_alerts::message_id.eq(message_id))
        .select(keyword_alerts::rule)
        .load::<String>(conn)?
        .into_iter()
        .collect())
}

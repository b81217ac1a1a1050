//! The `forwarder_batches` table: signed batches already accepted, by `webhook-id`, so that
//! a re-sent batch is not stored twice.

use diesel::prelude::*;

use crate::clock::now_ms;
use crate::db::schema::forwarder_batches;
use crate::db::{DbConnection, DbError};

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

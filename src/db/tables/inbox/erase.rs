//! Erasing a message's text from the inbox envelopes that hold it: on a deletion in Zulip
//! ([`erase_message_texts`], through the `message_id` column and its index `inbox_message`)
//! and by retention ([`rewrite_payloads`] of what [`not_erased`] finds).

use diesel::prelude::*;

use crate::db::bulk::ROWS_PER_STATEMENT;
use crate::db::schema::inbox;
use crate::db::{DbConnection, DbError};
use crate::events::erasure::{ERASED_PREFIX, Removal, erase_envelope};

/// Erases the text of messages `ids` of realm `realm_id` from every inbox envelope that holds
/// it, whatever the row's status (found through the index `inbox_message`): the envelope keeps
/// its metadata and ids and is marked `why` ([`erase_envelope`]). Returns the envelopes
/// erased.
pub fn erase_message_texts(
    conn: &mut DbConnection,
    realm_id: i64,
    ids: &[i64],
    why: Removal,
) -> Result<usize, DbError> {
    let mut erased = 0;
    for chunk in ids.chunks(ROWS_PER_STATEMENT) {
        let found: Vec<(i64, String)> = inbox::table
            .filter(inbox::message_id.eq_any(chunk))
            .filter(inbox::realm_id.eq(realm_id))
            .filter(inbox::payload.ne(""))
            .filter(not_erased())
            .select((inbox::id, inbox::payload))
            .load(conn)?;
        erased += rewrite_payloads(conn, found, why)?;
    }
    Ok(erased)
}

/// Payloads not erased yet: they do not start with the marker.
pub(crate) fn not_erased() -> diesel::dsl::Escape<diesel::dsl::NotLike<inbox::payload, String>> {
    let pattern = format!("{}%", ERASED_PREFIX.replace('_', "\\_"));
    inbox::payload.not_like(pattern).escape('\\')
}

/// Writes the erased form of each `(id, payload)`, unless the row lost its envelope meanwhile.
pub(crate) fn rewrite_payloads(
    conn: &mut DbConnection,
    rows: Vec<(i64, String)>,
    why: Removal,
) -> Result<usize, DbError> {
    let mut erased = 0;
    for (id, payload) in rows {
        erased += diesel::update(
            inbox::table
                .filter(inbox::id.eq(id))
                .filter(inbox::payload.ne("")),
        )
        .set(inbox::payload.eq(erase_envelope(&payload, why)))
        .execute(conn)?;
    }
    Ok(erased)
}

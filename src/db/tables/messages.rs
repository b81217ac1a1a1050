//! The `messages` table: messages stored by `message_logger` (written in bulk; a message id
//! already stored is kept), their later edits and deletions, and the erasure of what a
//! message said and who was in it (used by deletions and by [`crate::db::retention`]).
//! [`MessageWrites`] groups a transaction's message effects into few statements.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use diesel::prelude::*;

use crate::db::bulk::{self, ROWS_PER_STATEMENT, bulk_row};
use crate::db::schema::messages;
use crate::db::{DbConnection, DbError};

/// A message stored by `message_logger` (written in bulk), as read back by tests.
#[derive(Debug, Clone, Insertable, Queryable, Selectable)]
#[diesel(table_name = messages, treat_none_as_default_value = false)]
pub struct MessageRow {
    pub message_id: i64,
    pub realm: String,
    pub realm_id: Option<i64>,
    pub message_type: String,
    pub stream_id: Option<i64>,
    pub channel: Option<String>,
    pub topic: Option<String>,
    pub dm_recipients: Option<String>,
    pub sender_id: Option<i64>,
    pub sender_email: Option<String>,
    pub sender_name: Option<String>,
    pub content: String,
    pub content_truncated: bool,
    pub sent_at: Option<i64>,
    /// `outgoing` or `forwarder`.
    pub source: Cow<'static, str>,
    pub deleted: bool,
    pub edited_at: Option<i64>,
    pub stored_at_ms: i64,
}

bulk_row! {
    MessageRow => messages,
    sqlite: "INSERT OR IGNORE INTO" + "",
    postgres: "ON CONFLICT DO NOTHING",
    columns: (
        message_id, realm, realm_id, message_type, stream_id, channel, topic, dm_recipients,
        sender_id, sender_email, sender_name, content, content_truncated, sent_at, source,
        deleted, edited_at, stored_at_ms,
    ),
}

/// A change to stored messages from an `update_message` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageEdit {
    /// The edited message (content edits apply to it only).
    pub message_id: Option<i64>,
    /// Every message the edit touches (topic and channel moves).
    pub message_ids: Vec<i64>,
    /// New content (already cut to the data-protection length) and whether it was cut.
    pub content: Option<(String, bool)>,
    pub topic: Option<String>,
    pub stream_id: Option<i64>,
    pub edited_at: Option<i64>,
}

/// Stores messages; a message id already stored is left as it is.
pub fn insert_messages(conn: &mut DbConnection, rows: &[&MessageRow]) -> Result<(), DbError> {
    bulk::insert(conn, rows)
}

/// One stored message. For tests and benchmarks (the server never reads messages back).
pub fn message_by_id(conn: &mut DbConnection, id: i64) -> Result<Option<MessageRow>, DbError> {
    Ok(messages::table
        .filter(messages::message_id.eq(id))
        .select(MessageRow::as_select())
        .first(conn)
        .optional()?)
}

/// Applies an `update_message` to stored messages.
pub fn apply_edit(conn: &mut DbConnection, edit: &MessageEdit) -> Result<(), DbError> {
    if let (Some(id), Some((content, truncated))) = (edit.message_id, &edit.content) {
        set_content(conn, id, content, *truncated, edit.edited_at)?;
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

/// Sets a message's content unless it is deleted: a deleted message keeps no content,
/// whatever a late edit carries.
fn set_content(
    conn: &mut DbConnection,
    id: i64,
    content: &str,
    truncated: bool,
    edited_at: Option<i64>,
) -> Result<usize, DbError> {
    Ok(diesel::update(
        messages::table
            .filter(messages::message_id.eq(id))
            .filter(messages::deleted.eq(false)),
    )
    .set((
        messages::content.eq(content),
        messages::content_truncated.eq(truncated),
        messages::edited_at.eq(edited_at),
    ))
    .execute(conn)?)
}

/// Content edits of messages that are not deleted, in one PostgreSQL statement of column
/// arrays per [`ROWS_PER_STATEMENT`] edits (each message at most once).
const PG_SET_CONTENTS: &str = "UPDATE messages AS m \
    SET content = v.content, content_truncated = v.content_truncated, edited_at = v.edited_at \
    FROM unnest($1::bigint[], $2::text[], $3::boolean[], $4::bigint[]) \
    AS v(message_id, content, content_truncated, edited_at) \
    WHERE m.message_id = v.message_id AND NOT m.deleted";

/// A content-only edit waiting in [`MessageWrites`].
struct ContentEdit<'a> {
    message_id: i64,
    content: &'a str,
    truncated: bool,
    edited_at: Option<i64>,
}

/// The message effects of one transaction, written in few statements with the same result as
/// applying them one by one in their order. Stores, content-only edits and deletions each wait
/// in a group; [`MessageWrites::flush`] writes the groups in that order (stores, edits,
/// deletions), which is the order of any two effects on one message within the groups. An
/// effect that must come after a waiting one on the same message in a later group (a store
/// after an edit or deletion of its id, an edit after a deletion) flushes the groups first, as
/// does an edit that moves messages (applied on its own, as it comes). A later content edit
/// of a message replaces an earlier waiting one: it would overwrite all that one sets.
#[derive(Default)]
pub struct MessageWrites<'a> {
    stores: Vec<&'a MessageRow>,
    edits: Vec<ContentEdit<'a>>,
    /// Index in `edits` by message id.
    edited: HashMap<i64, usize>,
    deletes: Vec<i64>,
    deleted: HashSet<i64>,
}

impl<'a> MessageWrites<'a> {
    /// A message to store (kept as it is if its id is stored already).
    pub fn store(&mut self, conn: &mut DbConnection, row: &'a MessageRow) -> Result<(), DbError> {
        if self.edited.contains_key(&row.message_id) || self.deleted.contains(&row.message_id) {
            self.flush(conn)?;
        }
        self.stores.push(row);
        Ok(())
    }

    /// An `update_message` to apply.
    pub fn edit(&mut self, conn: &mut DbConnection, edit: &'a MessageEdit) -> Result<(), DbError> {
        let content_only = edit.topic.is_none() && edit.stream_id.is_none();
        let (Some(id), Some((content, truncated)), true) =
            (edit.message_id, &edit.content, content_only)
        else {
            self.flush(conn)?;
            return apply_edit(conn, edit);
        };
        if self.deleted.contains(&id) {
            self.flush(conn)?;
        }
        let waiting = ContentEdit {
            message_id: id,
            content,
            truncated: *truncated,
            edited_at: edit.edited_at,
        };
        match self.edited.get(&id) {
            Some(&index) => self.edits[index] = waiting,
            None => {
                self.edited.insert(id, self.edits.len());
                self.edits.push(waiting);
            }
        }
        Ok(())
    }

    /// Messages to mark deleted and erase ([`mark_deleted`]).
    pub fn delete(&mut self, ids: &[i64]) {
        for &id in ids {
            if self.deleted.insert(id) {
                self.deletes.push(id);
            }
        }
    }

    /// Writes everything waiting: stores, then edits, then deletions.
    pub fn flush(&mut self, conn: &mut DbConnection) -> Result<(), DbError> {
        insert_messages(conn, &self.stores)?;
        self.stores.clear();
        set_contents(conn, &self.edits)?;
        self.edits.clear();
        self.edited.clear();
        mark_deleted(conn, &self.deletes)?;
        self.deletes.clear();
        self.deleted.clear();
        Ok(())
    }
}

/// Applies content edits, each to a different message: on PostgreSQL in statements of column
/// arrays, on SQLite one prepared statement per edit (no round trip there).
fn set_contents(conn: &mut DbConnection, edits: &[ContentEdit<'_>]) -> Result<(), DbError> {
    use diesel::sql_types::{Array, BigInt, Bool, Nullable, Text};
    if edits.is_empty() {
        return Ok(());
    }
    if let DbConnection::Postgres(c) = conn {
        for chunk in edits.chunks(ROWS_PER_STATEMENT) {
            diesel::sql_query(PG_SET_CONTENTS)
                .bind::<Array<BigInt>, _>(chunk.iter().map(|e| e.message_id).collect::<Vec<_>>())
                .bind::<Array<Text>, _>(chunk.iter().map(|e| e.content).collect::<Vec<_>>())
                .bind::<Array<Bool>, _>(chunk.iter().map(|e| e.truncated).collect::<Vec<_>>())
                .bind::<Array<Nullable<BigInt>>, _>(
                    chunk.iter().map(|e| e.edited_at).collect::<Vec<_>>(),
                )
                .execute(c)?;
        }
        return Ok(());
    }
    for e in edits {
        set_content(conn, e.message_id, e.content, e.truncated, e.edited_at)?;
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

/// [`mark_deleted`] for a deletion in realm `realm_id`: only messages of that realm, or of no
/// known realm id (stored from an outgoing webhook, which names none), are touched, so that
/// the same message id from another Zulip server's realm is left alone.
pub fn mark_deleted_in_realm(
    conn: &mut DbConnection,
    realm_id: i64,
    ids: &[i64],
) -> Result<usize, DbError> {
    let mut marked = 0;
    for chunk in ids.chunks(ROWS_PER_STATEMENT) {
        marked += diesel::update(
            messages::table
                .filter(messages::message_id.eq_any(chunk))
                .filter(
                    messages::realm_id
                        .eq(realm_id)
                        .or(messages::realm_id.is_null()),
                ),
        )
        .set((messages::deleted.eq(true), scrubbed_message()))
        .execute(conn)?;
    }
    Ok(marked)
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

//! The `messages` table: messages stored by `message_logger` (written in bulk; a message id
//! already stored is kept), their later edits and deletions, and the erasure of what a
//! message said and who was in it (used by deletions and by [`crate::db::retention`]).

use std::borrow::Cow;

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

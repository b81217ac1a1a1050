//! Row types: what is inserted into and read from the tables in [`super::schema`].

use diesel::prelude::*;

use super::schema::{event_log, listener_history, listeners, messages, outgoing_replies};

/// One handler run. The writer inserts these in bulk (`store::insert_event_logs`); `None`
/// fields are NULL, never a column default.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = event_log, treat_none_as_default_value = false)]
pub struct NewEventLog {
    pub handler: String,
    pub source: &'static str,
    pub event_type: String,
    pub bot: Option<String>,
    pub realm: Option<String>,
    pub realm_id: Option<i64>,
    pub user_id: Option<i64>,
    pub message_id: Option<i64>,
    pub event_id: Option<String>,
    pub duration_us: i64,
    pub success: bool,
    pub error: Option<String>,
    pub created_at_ms: i64,
}

/// A message stored by `message_logger`.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = messages, treat_none_as_default_value = false)]
pub struct NewMessage {
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
    pub source: &'static str,
    pub deleted: bool,
    pub edited_at: Option<i64>,
    pub stored_at_ms: i64,
}

/// A stored message as read back.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = messages)]
pub struct MessageRow {
    pub message_id: i64,
    pub realm: String,
    pub message_type: String,
    pub channel: Option<String>,
    pub topic: Option<String>,
    pub dm_recipients: Option<String>,
    pub sender_id: Option<i64>,
    pub sender_email: Option<String>,
    pub sender_name: Option<String>,
    pub content: String,
    pub content_truncated: bool,
    pub deleted: bool,
    pub edited_at: Option<i64>,
}

/// The answer given to a (bot, message id).
#[derive(Debug, Clone, Insertable, Queryable)]
#[diesel(table_name = outgoing_replies)]
pub struct ReplyRecord {
    pub bot: String,
    pub message_id: i64,
    pub response: String,
    pub created_at_ms: i64,
}

/// A listener's persisted state: its file definition (redacted, for tools), the operator's
/// or breaker's enable state, and the runtime overrides (JSON) that win over the file.
#[derive(Debug, Clone, Insertable, Queryable, Selectable)]
#[diesel(table_name = listeners)]
pub struct ListenerRow {
    pub name: String,
    pub enabled: bool,
    pub config: String,
    pub disabled_reason: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub overrides: Option<String>,
}

/// One change of one field of a listener.
#[derive(Debug, Clone, PartialEq, Eq, Insertable, Queryable, Selectable, serde::Serialize)]
#[diesel(table_name = listener_history)]
pub struct HistoryRow {
    #[diesel(skip_insertion)]
    #[serde(skip)]
    pub id: i64,
    pub listener: String,
    pub changed_at_ms: i64,
    /// `admin API`, `CLI`, `breaker` or `replay`.
    pub source: String,
    pub field: String,
    pub old_value: Option<String>,
    pub new_value: Option<String>,
}

/// Runs and failures of one handler, counted from the event log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HandlerCounts {
    pub handler: String,
    pub runs: i64,
    pub failures: i64,
}

/// An event accepted from the forwarder.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = super::schema::inbox, treat_none_as_default_value = false)]
pub struct NewInboxRow {
    pub event_id: String,
    pub webhook_id: String,
    pub realm_id: i64,
    pub realm: String,
    pub user_id: Option<i64>,
    pub event_type: String,
    pub op: Option<String>,
    pub payload: String,
    pub status: &'static str,
    pub attempts: i32,
    pub next_attempt_at_ms: i64,
    pub claimed_until_ms: i64,
    pub last_error: Option<String>,
    pub emitted_at_ms: Option<i64>,
    pub received_at_ms: i64,
    pub updated_at_ms: i64,
}

/// An inbox row as listed by `dead-letters list`.
#[derive(Debug, Clone, Queryable, Selectable, serde::Serialize)]
#[diesel(table_name = super::schema::inbox)]
pub struct InboxEntry {
    pub event_id: String,
    pub realm_id: i64,
    pub realm: String,
    pub user_id: Option<i64>,
    pub event_type: String,
    pub op: Option<String>,
    pub status: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub received_at_ms: i64,
    pub updated_at_ms: i64,
}

/// A pending inbox row claimed for processing.
#[derive(Debug, Clone, Queryable)]
pub struct ClaimedRow {
    pub event_id: String,
    pub payload: String,
    pub attempts: i32,
    /// `pending`, or `parked` (waiting for a paused or disabled handler).
    pub status: String,
    pub realm_id: i64,
}

/// Work for one listener on one forwarded event (see the `inbox_work` table).
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = super::schema::inbox_work, treat_none_as_default_value = false)]
pub struct NewWorkRow {
    pub event_id: String,
    pub listener: &'static str,
    pub status: &'static str,
    pub attempts: i32,
    pub next_attempt_at_ms: i64,
    pub claimed_until_ms: i64,
    pub last_error: Option<String>,
    pub updated_at_ms: i64,
}

/// A work row claimed for processing, with its event.
#[derive(Debug, Clone, QueryableByName)]
pub struct ClaimedWork {
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub event_id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub listener: String,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pub attempts: i32,
    /// `pending`, or `parked` (waiting for a paused or disabled listener).
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub status: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub payload: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub realm_id: i64,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub event_type: String,
}

/// A serving process and the listeners it runs.
#[derive(Debug, Clone, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = super::schema::listener_processes)]
pub struct ProcessRow {
    pub process_id: String,
    pub host: String,
    pub pid: i64,
    /// Comma-separated listener names.
    pub listeners: String,
    pub started_at_ms: i64,
    pub heartbeat_at_ms: i64,
}

/// What user_activity_tracker adds for one (realm, user).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivityDelta {
    pub realm_id: i64,
    pub user_id: i64,
    pub seen_at_ms: i64,
    pub messages: i64,
    pub reactions: i64,
    /// The last presence status seen and when; the two are set together.
    pub presence: Option<String>,
    pub presence_at_ms: Option<i64>,
    pub typing_at_ms: Option<i64>,
}

/// A user's activity as stored.
#[derive(Debug, Clone, Queryable, Selectable, PartialEq, Eq)]
#[diesel(table_name = super::schema::user_activity)]
pub struct ActivityRow {
    pub realm_id: i64,
    pub user_id: i64,
    pub last_seen_ms: i64,
    pub message_count: i64,
    pub reaction_count: i64,
    pub last_presence: Option<String>,
    pub last_presence_at_ms: Option<i64>,
    pub last_typing_at_ms: Option<i64>,
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

/// An alert sent by keyword_alerts.
#[derive(Debug, Clone, Insertable, Queryable)]
#[diesel(table_name = super::schema::keyword_alerts)]
pub struct AlertRecord {
    pub rule: String,
    pub message_id: i64,
    pub realm: String,
    pub target: String,
    pub sent_at_ms: i64,
}

/// An event-log row as listed by the admin API.
#[derive(Debug, Clone, Queryable, Selectable, serde::Serialize)]
#[diesel(table_name = super::schema::event_log)]
pub struct EventLogRow {
    pub id: i64,
    pub handler: String,
    pub source: String,
    pub event_type: String,
    pub bot: Option<String>,
    pub realm: Option<String>,
    pub realm_id: Option<i64>,
    pub user_id: Option<i64>,
    pub message_id: Option<i64>,
    pub event_id: Option<String>,
    pub duration_us: i64,
    pub success: bool,
    pub error: Option<String>,
    pub created_at_ms: i64,
}

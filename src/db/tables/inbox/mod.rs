//! The `inbox` table: every event accepted from the forwarder, stored before its batch is
//! acknowledged, and where it stands ([`InboxStatus`]). Intake writes it in bulk; the work
//! per listener is in [`super::inbox_work`], which settles an event's status as its work
//! changes and replays events. Here: the backlog figures, the operator's listing, and the
//! erasure of a deleted message's text from every envelope that holds it
//! ([`erase_message_texts`], through the `message_id` column and its index).

use std::collections::HashSet;

use diesel::dsl::count_star;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Binary};

use crate::clock::now_ms;
use crate::db::bulk::{self, ROWS_PER_STATEMENT, bulk_row};
use crate::db::event_key::EventKey;
use crate::db::schema::{inbox, inbox_work};
use crate::db::text_enum::text_enum;
use crate::db::{DbConnection, DbError};
mod erase;

pub use erase::erase_message_texts;
pub(crate) use erase::{not_erased, rewrite_payloads};

text_enum! {
    /// Where a forwarded event stands (`inbox.status`).
    pub enum InboxStatus {
        /// Some listener may still run it (due now or later).
        Pending = "pending",
        /// Every listener left waits for one that is paused or disabled after failures.
        Parked = "parked",
        /// Every listener that wanted it ran it; its envelope is dropped.
        Done = "done",
        /// A listener used up its retries (and none is left to run it).
        Dead = "dead",
        /// Too old when received: not processed.
        Expired = "expired",
        /// Only listeners over their own quota are left: set aside, replayable for them.
        RateLimited = "rate_limited",
        /// Refused by the intake filters: not processed, stored without its envelope (only
        /// what de-duplication and counting need), so not replayable.
        Filtered = "filtered",
        /// Set aside for good by an operator or by expiry (`processing::dead_letters`): never
        /// processed again, envelope erased, `last_error` says why; kept, so that a re-sent copy
        /// counts as a duplicate, until retention deletes it.
        Discarded = "discarded",
    }
}

impl InboxStatus {
    /// An event that still has work rows (or dead ones): changes to its work settle it.
    pub const OPEN: [InboxStatus; 3] =
        [InboxStatus::Pending, InboxStatus::Parked, InboxStatus::Dead];

    /// Events that may be deleted once old. `rate_limited` events keep their envelope (the
    /// message content) for a replay, so they go after the retention period like the rest of
    /// the stored data. Pending, parked and dead events are kept whatever their age: they are
    /// still to be processed, or to be looked at by an operator (or discarded, see
    /// `retention.dead_letter_days`); retention erases their envelopes' content instead.
    pub const FINISHED: [InboxStatus; 5] = [
        InboxStatus::Done,
        InboxStatus::Expired,
        InboxStatus::Filtered,
        InboxStatus::RateLimited,
        InboxStatus::Discarded,
    ];

    /// What an operator may list and replay, in the order the admin API and the dashboard
    /// show them: the dead letters (in the broad sense), which may also be shown and
    /// discarded.
    pub const REPLAYABLE: [InboxStatus; 5] = [
        InboxStatus::Dead,
        InboxStatus::Parked,
        InboxStatus::RateLimited,
        InboxStatus::Expired,
        InboxStatus::Filtered,
    ];

    /// What an operator may list and show: the replayable statuses, and what was discarded.
    pub const LISTED: [InboxStatus; 6] = [
        InboxStatus::Dead,
        InboxStatus::Parked,
        InboxStatus::RateLimited,
        InboxStatus::Expired,
        InboxStatus::Filtered,
        InboxStatus::Discarded,
    ];
}

/// An event accepted from the forwarder.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = inbox, treat_none_as_default_value = false)]
pub struct NewInboxRow {
    #[diesel(skip_insertion)]
    pub event_id: String,
    /// How `event_id` is stored: `EventKey::of(&event_id)`.
    #[diesel(column_name = event_id)]
    pub event_key: EventKey,
    pub webhook_id: String,
    pub realm_id: i64,
    pub realm: String,
    pub user_id: Option<i64>,
    pub event_type: String,
    pub op: Option<String>,
    pub payload: String,
    pub status: InboxStatus,
    pub attempts: i32,
    pub next_attempt_at_ms: i64,
    pub claimed_until_ms: i64,
    pub last_error: Option<String>,
    pub emitted_at_ms: Option<i64>,
    pub received_at_ms: i64,
    pub updated_at_ms: i64,
    /// The message whose text the event carries (`events::erasure::message_with_text`: a
    /// message, or an edit of one), kept once the event is processed and its envelope dropped,
    /// so that its arrival can be looked up (`GET /admin/inbox?message_id=`); `None` for a
    /// filtered event, stored without its envelope. A deletion erases the text of the rows
    /// that still hold an envelope.
    pub message_id: Option<i64>,
    /// Messages this event (a `delete_message`) deletes: their text is erased when the row
    /// is stored (not a column).
    #[diesel(skip_insertion)]
    pub erases: Vec<i64>,
}

bulk_row! {
    NewInboxRow => inbox,
    sqlite: "INSERT OR IGNORE INTO" + "",
    postgres: "ON CONFLICT DO NOTHING RETURNING event_id",
    columns: (
        event_id = event_key, webhook_id, realm_id, realm, user_id, event_type, op, payload, status,
        attempts, next_attempt_at_ms, claimed_until_ms, last_error, emitted_at_ms,
        received_at_ms, updated_at_ms, message_id,
    ),
    generated: (id),
}

/// An inbox row as listed by `dead-letters list`, the admin API and the dashboard.
#[derive(Debug, Clone, Queryable, Selectable, serde::Serialize)]
#[diesel(table_name = inbox)]
#[derive(serde::Deserialize, utoipa::ToSchema)]
pub struct InboxEntry {
    #[diesel(deserialize_as = EventKey)]
    pub event_id: String,
    pub realm_id: i64,
    pub realm: String,
    pub user_id: Option<i64>,
    pub event_type: String,
    pub op: Option<String>,
    pub status: InboxStatus,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub received_at_ms: i64,
    pub updated_at_ms: i64,
}

/// An id returned by an insert.
#[derive(QueryableByName)]
struct InsertedEventId {
    #[diesel(sql_type = Binary)]
    event_id: EventKey,
}

/// Stores accepted events; an event id already stored is left as it is. Returns the ids
/// that were already stored.
pub fn insert_inbox(
    conn: &mut DbConnection,
    rows: &[NewInboxRow],
) -> Result<HashSet<String>, DbError> {
    let rows: Vec<&NewInboxRow> = rows.iter().collect();
    let mut known = HashSet::new();
    match conn {
        DbConnection::Sqlite(c) => {
            crate::db::sqlite_rows::insert_each_chunk(c, &rows, |c, chunk, inserted| {
                if inserted < chunk.len() {
                    known.extend(sqlite_known_events(c, chunk, inserted)?);
                }
                Ok(())
            })?;
        }
        DbConnection::Postgres(c) => {
            for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                let inserted: HashSet<String> = bulk::pg_query(chunk)
                    .load::<InsertedEventId>(c)?
                    .into_iter()
                    .map(|r| r.event_id.id())
                    .collect();
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
    if inserted == 0 {
        return Ok(chunk.iter().map(|r| r.event_id.clone()).collect());
    }
    let last: i64 =
        diesel::select(diesel::dsl::sql::<BigInt>("last_insert_rowid()")).get_result(c)?;
    let first_new = last - i64::try_from(inserted).unwrap_or(i64::MAX) + 1;
    let known: Vec<EventKey> = inbox::table
        .select(inbox::event_id)
        .filter(inbox::event_id.eq_any(chunk.iter().map(|r| &r.event_key).collect::<Vec<_>>()))
        .filter(inbox::id.lt(first_new))
        .load(c)?;
    Ok(known.into_iter().map(String::from).collect())
}

/// On PostgreSQL, locks the inbox rows of `event_ids` (in id order, so that two writers never
/// wait for each other in a cycle) for the rest of the transaction: two processes finishing
/// different listeners of one event then settle its status one after the other, each seeing
/// the other's work rows as committed. SQLite has one writer; nothing to do.
pub fn lock_events(conn: &mut DbConnection, event_ids: &[&str]) -> Result<(), DbError> {
    if let DbConnection::Postgres(c) = conn {
        for chunk in event_ids.chunks(ROWS_PER_STATEMENT) {
            inbox::table
                .filter(inbox::event_id.eq_any(EventKey::all(chunk.iter().copied())))
                .order(inbox::id)
                .select(inbox::id)
                .for_update()
                .load::<i64>(c)?;
        }
    }
    Ok(())
}

/// Turns a row just stored by intake into a `rate_limited` one, with its envelope and the
/// message whose text it holds (rows processed at intake were stored without them) and no
/// claim or result.
pub fn mark_rate_limited(
    conn: &mut DbConnection,
    event_id: &str,
    (payload, message_id): (&str, Option<i64>),
    reason: &str,
) -> Result<(), DbError> {
    diesel::update(inbox::table.filter(inbox::event_id.eq(EventKey::of(event_id))))
        .set((
            inbox::status.eq(InboxStatus::RateLimited),
            inbox::payload.eq(payload),
            inbox::message_id.eq(message_id),
            inbox::attempts.eq(0),
            inbox::claimed_until_ms.eq(0i64),
            inbox::last_error.eq(reason),
            inbox::updated_at_ms.eq(now_ms()),
        ))
        .execute(conn)?;
    Ok(())
}

/// `status = 'pending'` as literal SQL: the form the partial index `inbox_due` matches.
fn is_pending() -> diesel::expression::SqlLiteral<diesel::sql_types::Bool> {
    diesel::dsl::sql(&format!("status = '{}'", InboxStatus::Pending))
}

/// Pending events (due or not), counted through the partial index `inbox_due`.
pub fn pending_count(conn: &mut DbConnection) -> Result<i64, DbError> {
    Ok(inbox::table
        .filter(is_pending())
        .select(count_star())
        .first(conn)?)
}

/// Pending events (due or not) per realm id and event type.
pub fn pending_by_realm_and_type(
    conn: &mut DbConnection,
) -> Result<Vec<(i64, String, i64)>, DbError> {
    Ok(inbox::table
        .filter(is_pending())
        .group_by((inbox::realm_id, inbox::event_type))
        .select((inbox::realm_id, inbox::event_type, count_star()))
        .load(conn)?)
}

/// Events per inbox status.
pub fn inbox_counts(conn: &mut DbConnection) -> Result<Vec<(InboxStatus, i64)>, DbError> {
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
        .filter(inbox::status.eq(InboxStatus::Pending))
        .group_by(inbox::event_type)
        .select((inbox::event_type, diesel::dsl::min(inbox::received_at_ms)))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .filter_map(|(t, at)| at.map(|at| (t, at)))
        .collect())
}

/// Inbox rows with one of `statuses`, newest first.
pub fn inbox_entries(
    conn: &mut DbConnection,
    statuses: &[InboxStatus],
    limit: i64,
) -> Result<Vec<InboxEntry>, DbError> {
    Ok(inbox::table
        .filter(inbox::status.eq_any(statuses))
        .order(inbox::id.desc())
        .limit(limit)
        .select(InboxEntry::as_select())
        .load(conn)?)
}

/// A forwarded event in the inbox, by its event id (unique index).
pub fn inbox_entry(conn: &mut DbConnection, event_id: &str) -> Result<Option<InboxEntry>, DbError> {
    Ok(inbox::table
        .filter(inbox::event_id.eq(EventKey::of(event_id)))
        .select(InboxEntry::as_select())
        .first(conn)
        .optional()?)
}

/// Forwarded events about Zulip message `message_id` (through the `inbox_message` index),
/// oldest first, at most `limit`.
pub fn inbox_entries_about(
    conn: &mut DbConnection,
    message_id: i64,
    limit: i64,
) -> Result<Vec<InboxEntry>, DbError> {
    Ok(inbox::table
        .filter(inbox::message_id.eq(message_id))
        .order(inbox::id.asc())
        .limit(limit)
        .select(InboxEntry::as_select())
        .load(conn)?)
}

/// Whether an inbox row with this event id and one of `statuses` exists.
pub fn inbox_has(
    conn: &mut DbConnection,
    event_id: &str,
    statuses: &[InboxStatus],
) -> Result<bool, DbError> {
    let n: i64 = inbox::table
        .filter(inbox::event_id.eq(EventKey::of(event_id)))
        .filter(inbox::status.eq_any(statuses))
        .select(count_star())
        .first(conn)?;
    Ok(n > 0)
}

/// A forwarded event as `dead-letters show` shows it: the listed fields, the batch it came
/// in, when it was emitted and is due, and its stored envelope (empty once done or
/// discarded).
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = inbox)]
pub struct InboxDetail {
    #[diesel(embed)]
    pub entry: InboxEntry,
    pub webhook_id: String,
    pub emitted_at_ms: Option<i64>,
    pub next_attempt_at_ms: i64,
    pub payload: String,
}

/// A forwarded event with its envelope, by its event id.
pub fn inbox_detail(
    conn: &mut DbConnection,
    event_id: &str,
) -> Result<Option<InboxDetail>, DbError> {
    Ok(inbox::table
        .filter(inbox::event_id.eq(EventKey::of(event_id)))
        .select(InboxDetail::as_select())
        .first(conn)
        .optional()?)
}

/// Inbox rows with `status` that still have work of `listener` (dead, parked or set aside
/// for it), newest first.
pub fn inbox_entries_of(
    conn: &mut DbConnection,
    status: InboxStatus,
    listener: &str,
    limit: i64,
) -> Result<Vec<InboxEntry>, DbError> {
    Ok(inbox::table
        .filter(inbox::status.eq(status))
        .filter(inbox::event_id.eq_any(work_of_listener(listener)))
        .order(inbox::id.desc())
        .limit(limit)
        .select(InboxEntry::as_select())
        .load(conn)?)
}

/// The events that still have work of `listener`.
fn work_of_listener(
    listener: &str,
) -> diesel::dsl::Select<
    diesel::dsl::Filter<inbox_work::table, diesel::dsl::Eq<inbox_work::listener, &str>>,
    inbox_work::event_id,
> {
    inbox_work::table
        .filter(inbox_work::listener.eq(listener))
        .select(inbox_work::event_id)
}

/// The ids of at most `limit` events with `status`, oldest first: given a listener, only
/// those with work of it left; given a time, only those last changed before it.
pub fn event_ids_with(
    conn: &mut DbConnection,
    status: InboxStatus,
    listener: Option<&str>,
    changed_before_ms: Option<i64>,
    limit: i64,
) -> Result<Vec<String>, DbError> {
    let base = inbox::table
        .filter(inbox::status.eq(status))
        .filter(inbox::updated_at_ms.lt(changed_before_ms.unwrap_or(i64::MAX)))
        .order(inbox::id)
        .limit(limit)
        .select(inbox::event_id);
    let keys: Vec<EventKey> = match listener {
        None => base.load(conn)?,
        Some(listener) => base
            .filter(inbox::event_id.eq_any(work_of_listener(listener)))
            .load(conn)?,
    };
    Ok(keys.into_iter().map(String::from).collect())
}

/// The status of each of these events that is stored.
pub fn statuses_of(
    conn: &mut DbConnection,
    event_ids: &[String],
) -> Result<Vec<(String, InboxStatus)>, DbError> {
    let mut found = Vec::new();
    for chunk in event_ids.chunks(ROWS_PER_STATEMENT) {
        let rows: Vec<(EventKey, InboxStatus)> = inbox::table
            .filter(inbox::event_id.eq_any(EventKey::all(chunk.iter().map(String::as_str))))
            .select((inbox::event_id, inbox::status))
            .load(conn)?;
        found.extend(rows.into_iter().map(|(id, s)| (String::from(id), s)));
    }
    Ok(found)
}

//! The `user_activity` table: what `user_activity_tracker` knows about each (realm, user),
//! added to by multi-row upserts (one statement per many users rather than one per user).

use diesel::prelude::*;

use crate::db::bulk::{self, bulk_row};
use crate::db::schema::user_activity;
use crate::db::{DbConnection, DbError};

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

/// How a delta is added to a stored row (the same clause on both backends).
const ADD_TO_STORED: &str = "ON CONFLICT (realm_id, user_id) DO UPDATE SET \
    last_seen_ms = CASE WHEN excluded.last_seen_ms > user_activity.last_seen_ms THEN excluded.last_seen_ms ELSE user_activity.last_seen_ms END, \
    message_count = user_activity.message_count + excluded.message_count, \
    reaction_count = user_activity.reaction_count + excluded.reaction_count, \
    last_presence = COALESCE(excluded.last_presence, user_activity.last_presence), \
    last_presence_at_ms = COALESCE(excluded.last_presence_at_ms, user_activity.last_presence_at_ms), \
    last_typing_at_ms = COALESCE(excluded.last_typing_at_ms, user_activity.last_typing_at_ms)";

bulk_row! {
    ActivityDelta => user_activity,
    sqlite: "INSERT OR FAIL INTO" + ADD_TO_STORED,
    postgres: ADD_TO_STORED,
    columns: (
        realm_id, user_id, last_seen_ms = seen_at_ms, message_count = messages,
        reaction_count = reactions, last_presence = presence,
        last_presence_at_ms = presence_at_ms, last_typing_at_ms = typing_at_ms,
    ),
}

/// A user's activity as stored.
#[derive(Debug, Clone, Queryable, Selectable, PartialEq, Eq)]
#[diesel(table_name = user_activity)]
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

/// Adds activity per (realm, user), creating rows on first sight. Each (realm, user) may
/// appear only once in `deltas` (PostgreSQL refuses to update a row twice in one statement);
/// the writer sums them first.
pub fn add_activity<'a>(
    conn: &mut DbConnection,
    deltas: impl ExactSizeIterator<Item = &'a ActivityDelta>,
) -> Result<(), DbError> {
    let deltas: Vec<&ActivityDelta> = deltas.collect();
    bulk::insert(conn, &deltas)
}

/// One user's stored activity. For tests and benchmarks.
pub fn activity_of(
    conn: &mut DbConnection,
    realm: i64,
    user: i64,
) -> Result<Option<ActivityRow>, DbError> {
    Ok(user_activity::table
        .find((realm, user))
        .select(ActivityRow::as_select())
        .first(conn)
        .optional()?)
}

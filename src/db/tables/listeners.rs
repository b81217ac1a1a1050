//! The `listeners` and `listener_history` tables: each configured listener's persisted state
//! (its file definition, the operator's or breaker's enable state, runtime overrides) and
//! the history of changes to it.

use diesel::prelude::*;

use crate::clock::now_ms;
use crate::db::schema::{listener_history, listeners};
use crate::db::{DbConnection, DbError};

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
#[derive(serde::Deserialize, utoipa::ToSchema)]
pub struct HistoryRow {
    #[diesel(skip_insertion)]
    #[serde(skip)]
    pub id: i64,
    pub listener: String,
    pub changed_at_ms: i64,
    /// `admin API`, `CLI`, `dashboard`, `breaker` or `retention`.
    pub source: String,
    pub field: String,
    pub old_value: Option<String>,
    pub new_value: Option<String>,
    /// Who made the change: the name of the admin token (admin API, dashboard); `None` for
    /// the command line, the breaker and retention.
    pub actor: Option<String>,
}

/// Makes sure every listener has a row, records its file definition (redacted) and returns
/// all rows.
pub fn sync(
    conn: &mut DbConnection,
    defined: &[(String, String)],
) -> Result<Vec<ListenerRow>, DbError> {
    let now = now_ms();
    conn.transaction::<_, DbError, _>(|conn| {
        for (name, config) in defined {
            let updated = diesel::update(listeners::table.find(name))
                .set((
                    listeners::config.eq(config),
                    listeners::updated_at_ms.eq(now),
                ))
                .execute(conn)?;
            if updated == 0 {
                diesel::insert_into(listeners::table)
                    .values(ListenerRow {
                        name: name.clone(),
                        enabled: true,
                        config: config.clone(),
                        disabled_reason: None,
                        created_at_ms: now,
                        updated_at_ms: now,
                        overrides: None,
                    })
                    .execute(conn)?;
            }
        }
        Ok(())
    })?;
    rows(conn)
}

/// Every listener's persisted state.
pub fn rows(conn: &mut DbConnection) -> Result<Vec<ListenerRow>, DbError> {
    Ok(listeners::table.order(listeners::name).load(conn)?)
}

/// Within a transaction, takes the write lock on a listener's row before anything is read:
/// on SQLite a transaction that reads first and writes later fails at once ("database is
/// locked") when another connection wrote in between; on PostgreSQL two concurrent changes
/// to one listener then follow each other instead of one overwriting the other.
pub fn lock(conn: &mut DbConnection, name: &str) -> Result<(), DbError> {
    diesel::update(listeners::table.find(name))
        .set(listeners::updated_at_ms.eq(listeners::updated_at_ms))
        .execute(conn)?;
    Ok(())
}

/// One listener's persisted state.
pub fn row(conn: &mut DbConnection, name: &str) -> Result<Option<ListenerRow>, DbError> {
    Ok(listeners::table.find(name).first(conn).optional()?)
}

/// Writes a listener's new state and the history of the change (one transaction, which the
/// caller may already have opened). `updated_at_ms` always moves forward, so that every
/// server sharing the database applies the change.
pub fn save(
    conn: &mut DbConnection,
    row: &ListenerRow,
    history: &[HistoryRow],
) -> Result<ListenerRow, DbError> {
    conn.transaction::<_, DbError, _>(|conn| {
        let previous: Option<i64> = listeners::table
            .find(&row.name)
            .select(listeners::updated_at_ms)
            .first(conn)
            .optional()?;
        let updated_at_ms = now_ms().max(previous.map_or(i64::MIN, |p| p + 1));
        let saved = ListenerRow {
            updated_at_ms,
            ..row.clone()
        };
        let n = diesel::update(listeners::table.find(&row.name))
            .set((
                listeners::enabled.eq(saved.enabled),
                listeners::disabled_reason.eq(&saved.disabled_reason),
                listeners::overrides.eq(&saved.overrides),
                listeners::updated_at_ms.eq(updated_at_ms),
            ))
            .execute(conn)?;
        if n == 0 {
            diesel::insert_into(listeners::table)
                .values(&saved)
                .execute(conn)?;
        }
        record(conn, history)?;
        Ok(saved)
    })
}

/// Records history rows on their own (a dead-letter replay or discard).
pub fn record(conn: &mut DbConnection, history: &[HistoryRow]) -> Result<(), DbError> {
    // One statement per row: a handful per change, and multi-row inserts are not portable.
    for row in history {
        diesel::insert_into(listener_history::table)
            .values(row)
            .execute(conn)?;
    }
    Ok(())
}

/// A listener's history, newest first.
pub fn history(
    conn: &mut DbConnection,
    name: &str,
    limit: i64,
) -> Result<Vec<HistoryRow>, DbError> {
    Ok(listener_history::table
        .filter(listener_history::listener.eq(name))
        .order(listener_history::id.desc())
        .limit(limit)
        .load(conn)?)
}

/// A listener's history of one field, newest first (the replays or the discards of dead
/// letters, kept under the listener `*`).
pub fn history_of_field(
    conn: &mut DbConnection,
    name: &str,
    field: &str,
    limit: i64,
) -> Result<Vec<HistoryRow>, DbError> {
    Ok(listener_history::table
        .filter(listener_history::listener.eq(name))
        .filter(listener_history::field.eq(field))
        .order(listener_history::id.desc())
        .limit(limit)
        .load(conn)?)
}

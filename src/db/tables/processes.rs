//! The `listener_processes` table: serving processes and the listeners each runs
//! (`serve --listeners`), with a heartbeat, so that a listener no live process runs is
//! noticed.

use diesel::prelude::*;

use crate::db::schema::listener_processes;
use crate::db::{DbConnection, DbError};

/// A serving process and the listeners it runs.
#[derive(Debug, Clone, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = listener_processes)]
pub struct ProcessRow {
    pub process_id: String,
    pub host: String,
    pub pid: i64,
    /// Comma-separated listener names.
    pub listeners: String,
    pub started_at_ms: i64,
    pub heartbeat_at_ms: i64,
}

/// Records this process and its listeners, or refreshes its heartbeat.
pub fn heartbeat(conn: &mut DbConnection, row: &ProcessRow) -> Result<(), DbError> {
    let updated = diesel::update(listener_processes::table.find(&row.process_id))
        .set((
            listener_processes::listeners.eq(&row.listeners),
            listener_processes::heartbeat_at_ms.eq(row.heartbeat_at_ms),
        ))
        .execute(conn)?;
    if updated == 0 {
        diesel::insert_into(listener_processes::table)
            .values(row)
            .execute(conn)?;
    }
    Ok(())
}

/// Every registered process.
pub fn processes(conn: &mut DbConnection) -> Result<Vec<ProcessRow>, DbError> {
    Ok(listener_processes::table
        .order(listener_processes::started_at_ms)
        .select(ProcessRow::as_select())
        .load(conn)?)
}

/// Forgets a process (it stopped), and processes silent since before `stale_before_ms`.
pub fn forget_process(
    conn: &mut DbConnection,
    process_id: &str,
    stale_before_ms: i64,
) -> Result<(), DbError> {
    diesel::delete(
        listener_processes::table.filter(
            listener_processes::process_id
                .eq(process_id)
                .or(listener_processes::heartbeat_at_ms.lt(stale_before_ms)),
        ),
    )
    .execute(conn)?;
    Ok(())
}

//! One module per table (or per tightly bound pair): each holds the table's row types, its
//! queries as plain functions on a connection, and, for tables written in bulk, its column
//! list for [`super::bulk`]. [`claims`] is the sweeper's claim on `inbox_work`, kept apart
//! from that table's other queries for size. Callers run the queries through [`super::Db::run`] or the
//! background [`super::writer`]. Deleting old rows is [`super::retention`]'s job.
//!
//! A few readers exist for tests and benchmarks only (they say so): the server itself never
//! reads a message or an activity row back one at a time.

pub mod batches;
pub mod claims;
pub mod event_log;
pub mod inbox;
pub mod inbox_work;
pub mod keyword_alerts;
pub mod listener_stats;
pub mod listeners;
pub mod messages;
pub mod processes;
pub mod replies;
pub mod user_activity;

#[cfg(test)]
mod tests {
    //! Every bulk insert ([`crate::db::bulk`]) writes exactly its table's columns (all but a
    //! generated `id`), in the same order in both backends' statements. That each list names
    //! every column is checked by `bulk_row!` itself at compile time; these tests read the
    //! statements it derives.

    use diesel::prelude::*;
    use diesel::sqlite::Sqlite;

    use super::event_log::EventLogRow;
    use super::inbox::NewInboxRow;
    use super::messages::MessageRow;
    use super::replies::ReplyRecord;
    use super::user_activity::ActivityDelta;
    use crate::db::bulk::BulkRow;
    use crate::db::schema::{event_log, inbox, messages, outgoing_replies, user_activity};

    /// The column names of a `SELECT` diesel wrote, e.g. from "SELECT `t`.`a`, `t`.`b` FROM".
    fn selected_columns(sql: &str) -> Vec<String> {
        let list = sql
            .strip_prefix("SELECT ")
            .and_then(|rest| rest.split(" FROM ").next())
            .unwrap_or_default();
        list.split(", ")
            .map(|c| {
                c.rsplit('.')
                    .next()
                    .unwrap_or(c)
                    .trim_matches('`')
                    .to_string()
            })
            .collect()
    }

    /// The names between the first `(` and `)` of an INSERT.
    fn inserted_columns(sql: &str) -> Vec<String> {
        let start = sql.find('(').map_or(0, |i| i + 1);
        let end = sql.find(')').unwrap_or(sql.len());
        sql[start..end].split(", ").map(str::to_string).collect()
    }

    /// Checks `R` against the table's columns (from its `all_columns`) less `generated`.
    fn check<R: BulkRow>(schema_select: String, generated: &[&str]) {
        let mut expected = selected_columns(&schema_select);
        expected.retain(|c| !generated.contains(&c.as_str()));
        assert!(!expected.is_empty(), "{schema_select}");
        let mut written: Vec<String> = R::COLUMNS.iter().map(|c| c.to_string()).collect();
        assert_eq!(inserted_columns(R::INSERT), written, "{}", R::TABLE);
        assert_eq!(inserted_columns(R::pg_sql()), written, "{}", R::pg_sql());
        assert_eq!(R::PG_ARRAYS.len(), written.len());
        assert!(
            R::pg_sql().contains(&format!("${}::", written.len())),
            "{}",
            R::pg_sql()
        );
        written.sort();
        expected.sort();
        assert_eq!(written, expected, "{}: columns written vs schema", R::TABLE);
    }

    fn select_all<T: diesel::query_builder::QueryFragment<Sqlite>>(query: T) -> String {
        diesel::debug_query::<Sqlite, _>(&query).to_string()
    }

    #[test]
    fn bulk_inserts_write_every_column_of_their_table() {
        check::<EventLogRow>(
            select_all(event_log::table.select(event_log::all_columns)),
            &["id"],
        );
        check::<MessageRow>(
            select_all(messages::table.select(messages::all_columns)),
            &[],
        );
        check::<NewInboxRow>(select_all(inbox::table.select(inbox::all_columns)), &["id"]);
        check::<ActivityDelta>(
            select_all(user_activity::table.select(user_activity::all_columns)),
            &[],
        );
        check::<ReplyRecord>(
            select_all(outgoing_replies::table.select(outgoing_replies::all_columns)),
            &[],
        );
    }

    #[test]
    fn the_postgres_statement_sends_one_array_per_column() {
        assert_eq!(
            MessageRow::pg_sql(),
            "INSERT INTO messages (message_id, realm, realm_id, message_type, stream_id, \
             channel, topic, dm_recipients, sender_id, sender_email, sender_name, content, \
             content_truncated, sent_at, source, deleted, edited_at, stored_at_ms) \
             SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[], \
             $5::bigint[], $6::text[], $7::text[], $8::text[], $9::bigint[], $10::text[], \
             $11::text[], $12::text[], $13::boolean[], $14::bigint[], $15::text[], \
             $16::boolean[], $17::bigint[], $18::bigint[]) ON CONFLICT DO NOTHING"
        );
    }
}

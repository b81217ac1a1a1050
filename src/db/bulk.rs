//! Bulk inserts on both backends from one column list per table.
//!
//! A table written in bulk declares its row type once with [`bulk_row!`]: the columns (names
//! and SQL types come from [`super::schema`], so a column that is renamed or retyped there
//! fails to compile here; and every column of the table must be listed once, written or
//! generated, so a column added there and forgotten here fails to compile too) and the
//! statement's verb and tail per backend. From that one list
//! the macro derives the SQLite multi-row statement ([`super::sqlite_rows`]) and the
//! PostgreSQL statement of column arrays (`INSERT … SELECT * FROM unnest($1::text[], …)`,
//! short and the same for any number of rows, where a multi-row VALUES list would be parsed
//! and planned anew for every batch). [`insert`] picks the backend.

use std::fmt::Write as _;

use diesel::RunQueryDsl;
use diesel::pg::Pg;
use diesel::query_builder::{BoxedSqlQuery, SqlQuery};
use diesel::sql_types::{BigInt, Binary, Bool, Integer, Nullable, SqlType, Text};

use super::sqlite_rows::{self, SqliteRow};
use super::{DbConnection, DbError};

/// Rows (or keys) per statement: keeps every statement below SQLite's 32,766 bound
/// parameters and PostgreSQL's 65,535.
pub const ROWS_PER_STATEMENT: usize = 500;

/// A row type written in bulk on both backends; implemented by [`bulk_row!`].
pub trait BulkRow: SqliteRow {
    /// The table written.
    const TABLE: &'static str;
    /// The columns written, in binding order (their names in the schema).
    const COLUMNS: &'static [&'static str];
    /// The PostgreSQL array type of each column, e.g. `bigint[]`.
    const PG_ARRAYS: &'static [&'static str];
    /// What follows the PostgreSQL statement: an `ON CONFLICT` or `RETURNING` clause.
    const PG_TAIL: &'static str;

    /// The PostgreSQL statement ([`pg_statement`]), built once.
    fn pg_sql() -> &'static str;

    /// Binds one array per column of `rows` to the PostgreSQL statement.
    fn pg_bind<'a>(
        rows: &'a [&'a Self],
        query: BoxedSqlQuery<'a, Pg, SqlQuery>,
    ) -> BoxedSqlQuery<'a, Pg, SqlQuery>;
}

/// The PostgreSQL array type a column's values are sent as.
pub trait PgArray: SqlType {
    const ARRAY: &'static str;
}

impl PgArray for Text {
    const ARRAY: &'static str = "text[]";
}

impl PgArray for Binary {
    const ARRAY: &'static str = "bytea[]";
}

impl PgArray for BigInt {
    const ARRAY: &'static str = "bigint[]";
}

impl PgArray for Integer {
    const ARRAY: &'static str = "integer[]";
}

impl PgArray for Bool {
    const ARRAY: &'static str = "boolean[]";
}

impl<T: PgArray + SqlType<IsNull = diesel::sql_types::is_nullable::NotNull>> PgArray
    for Nullable<T>
{
    const ARRAY: &'static str = T::ARRAY;
}

/// `INSERT INTO table (a, b) SELECT * FROM unnest($1::text[], $2::bigint[]) tail`.
pub fn pg_statement<R: BulkRow>() -> String {
    let mut sql = format!(
        "INSERT INTO {} ({}) SELECT * FROM unnest(",
        R::TABLE,
        R::COLUMNS.join(", ")
    );
    for (i, array) in R::PG_ARRAYS.iter().enumerate() {
        let comma = if i == 0 { "" } else { ", " };
        let _ = write!(sql, "{comma}${}::{array}", i + 1);
    }
    sql.push(')');
    if !R::PG_TAIL.is_empty() {
        sql.push(' ');
        sql.push_str(R::PG_TAIL);
    }
    sql
}

/// One PostgreSQL statement for `rows` (at most [`ROWS_PER_STATEMENT`]), bound and ready to
/// run, for callers that read what it returns.
pub fn pg_query<'a, R: BulkRow>(rows: &'a [&'a R]) -> BoxedSqlQuery<'a, Pg, SqlQuery> {
    R::pg_bind(rows, diesel::sql_query(R::pg_sql()).into_boxed())
}

/// Inserts `rows`: on SQLite in statements of 64, 16, 4 and 1 rows, each prepared once; on
/// PostgreSQL one statement of column arrays per [`ROWS_PER_STATEMENT`] rows.
pub fn insert<R: BulkRow>(conn: &mut DbConnection, rows: &[&R]) -> Result<(), DbError> {
    match conn {
        DbConnection::Sqlite(c) => sqlite_rows::insert(c, rows)?,
        DbConnection::Postgres(c) => {
            for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                pg_query(chunk).execute(c)?;
            }
        }
    }
    Ok(())
}

/// Whether no two of `names` are the same (at compile time: `str` equality is not `const`).
pub const fn all_distinct(names: &[&str]) -> bool {
    let mut i = 0;
    while i < names.len() {
        let mut j = i + 1;
        while j < names.len() {
            let (a, b) = (names[i].as_bytes(), names[j].as_bytes());
            if a.len() == b.len() {
                let mut k = 0;
                while k < a.len() && a[k] == b[k] {
                    k += 1;
                }
                if k == a.len() {
                    return false;
                }
            }
            j += 1;
        }
        i += 1;
    }
    true
}

/// One place in a pattern over a table's `all_columns` tuple (see [`bulk_row!`]).
macro_rules! column_place {
    ($column:ident) => {
        _
    };
}

/// The value of a row's column: the field of the same name, or the field given after `=`.
macro_rules! bulk_field {
    ($row:expr, $column:ident) => {
        $row.$column
    };
    ($row:expr, $column:ident, $field:ident) => {
        $row.$field
    };
}

/// Implements [`SqliteRow`] and [`BulkRow`] for a row type from its table's column list:
///
/// ```ignore
/// bulk_row! {
///     MessageRow => messages,
///     sqlite: "INSERT OR IGNORE INTO" + "",
///     postgres: "ON CONFLICT DO NOTHING",
///     columns: (message_id, realm, /* … */ last_seen_ms = seen_at_ms),
///     generated: (id),
/// }
/// ```
///
/// Each column is read from the field of the same name, or from the field named after `=`.
/// `generated` names the columns the database fills (an auto-increment `id`); it may be left
/// out when there are none.
///
/// The list is checked against the table at compile time: every column of the schema's
/// `table!` appears once, in `columns` or in `generated`. A column missing from the list is a
/// "mismatched types … a tuple with N elements" error on the macro (the pattern over the
/// table's `all_columns` has too few places); one listed twice fails the `all_distinct`
/// assertion.
///
/// The SQLite verb is `INSERT OR IGNORE INTO` where a duplicate is skipped, else `INSERT OR
/// FAIL INTO`, never a plain `INSERT INTO`: with the default conflict action (ABORT) a
/// multi-row statement keeps a statement journal, a copy of every page it changes that the
/// transaction had changed before, so that it alone can be undone. Every caller undoes the
/// whole transaction on an error, so that copy (16 KiB per page) would be wasted; `FAIL`
/// stops the statement where it fails, and the transaction is rolled back all the same.
macro_rules! bulk_row {
    (
        $row:ty => $table:ident,
        sqlite: $verb:literal + $sqlite_tail:expr,
        postgres: $pg_tail:expr,
        columns: (
            $first:ident $(= $first_field:ident)?
            $(, $column:ident $(= $field:ident)?)* $(,)?
        )
        $(, generated: ($($generated:ident),* $(,)?))? $(,)?
    ) => {
        // Every column of the table is listed once: one place per column in the pattern
        // (arity), and no name twice.
        const _: () = {
            #[allow(dead_code)]
            fn every_column_of_the_table_is_listed() {
                let (
                    $crate::db::bulk::column_place!($first),
                    $($crate::db::bulk::column_place!($column),)*
                    $($($crate::db::bulk::column_place!($generated),)*)?
                ) = $crate::db::schema::$table::all_columns;
            }
            assert!(
                $crate::db::bulk::all_distinct(&[
                    <$crate::db::schema::$table::$first as diesel::Column>::NAME,
                    $(<$crate::db::schema::$table::$column as diesel::Column>::NAME,)*
                    $($(<$crate::db::schema::$table::$generated as diesel::Column>::NAME,)*)?
                ]),
                concat!("bulk_row! lists a column of `", stringify!($table), "` twice"),
            );
        };

        impl $crate::db::sqlite_rows::SqliteRow for $row {
            const INSERT: &'static str = concat!(
                $verb, " ", stringify!($table), " (", stringify!($first),
                $(", ", stringify!($column),)* ") VALUES "
            );
            const TAIL: &'static str = $sqlite_tail;

            fn bind<'b>(
                &'b self,
                v: &mut $crate::db::sqlite_rows::Values<'_, '_, 'b>,
            ) -> diesel::QueryResult<()> {
                v.bind::<diesel::dsl::SqlTypeOf<$crate::db::schema::$table::$first>, _>(
                    &$crate::db::bulk::bulk_field!(self, $first $(, $first_field)?),
                )?;
                $(
                    v.bind::<diesel::dsl::SqlTypeOf<$crate::db::schema::$table::$column>, _>(
                        &$crate::db::bulk::bulk_field!(self, $column $(, $field)?),
                    )?;
                )*
                Ok(())
            }
        }

        impl $crate::db::bulk::BulkRow for $row {
            const TABLE: &'static str = stringify!($table);
            const COLUMNS: &'static [&'static str] = &[
                <$crate::db::schema::$table::$first as diesel::Column>::NAME,
                $(<$crate::db::schema::$table::$column as diesel::Column>::NAME,)*
            ];
            const PG_ARRAYS: &'static [&'static str] = &[
                <diesel::dsl::SqlTypeOf<$crate::db::schema::$table::$first>
                    as $crate::db::bulk::PgArray>::ARRAY,
                $(<diesel::dsl::SqlTypeOf<$crate::db::schema::$table::$column>
                    as $crate::db::bulk::PgArray>::ARRAY,)*
            ];
            const PG_TAIL: &'static str = $pg_tail;

            fn pg_sql() -> &'static str {
                static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
                SQL.get_or_init($crate::db::bulk::pg_statement::<Self>)
            }

            fn pg_bind<'a>(
                rows: &'a [&'a Self],
                query: diesel::query_builder::BoxedSqlQuery<
                    'a,
                    diesel::pg::Pg,
                    diesel::query_builder::SqlQuery,
                >,
            ) -> diesel::query_builder::BoxedSqlQuery<
                'a,
                diesel::pg::Pg,
                diesel::query_builder::SqlQuery,
            > {
                query
                    .bind::<diesel::sql_types::Array<
                        diesel::dsl::SqlTypeOf<$crate::db::schema::$table::$first>,
                    >, _>(
                        rows.iter()
                            .map(|r| &$crate::db::bulk::bulk_field!(r, $first $(, $first_field)?))
                            .collect::<Vec<_>>(),
                    )
                    $(
                        .bind::<diesel::sql_types::Array<
                            diesel::dsl::SqlTypeOf<$crate::db::schema::$table::$column>,
                        >, _>(
                            rows.iter()
                                .map(|r| &$crate::db::bulk::bulk_field!(r, $column $(, $field)?))
                                .collect::<Vec<_>>(),
                        )
                    )*
            }
        }
    };
}

pub(crate) use {bulk_field, bulk_row, column_place};

#[cfg(test)]
mod tests {
    use super::all_distinct;

    #[test]
    fn a_column_listed_twice_is_found() {
        assert!(all_distinct(&["a", "ab", "b"]));
        assert!(all_distinct(&[]));
        assert!(!all_distinct(&["a", "ab", "ab"]));
        assert!(!all_distinct(&["created_at_ms", "bot", "created_at_ms"]));
    }
}

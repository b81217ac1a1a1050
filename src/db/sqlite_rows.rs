//! Bulk inserts on SQLite: many rows per statement, each statement prepared once and kept in
//! diesel's statement cache.
//!
//! diesel's own `insert_into(..).values(..)` walks its whole query tree several times per
//! statement (to decide whether it may be cached, to collect the binds, to look for default
//! values), and a multi-row insert of a `Vec` is a new statement — new SQL, parsed anew — for
//! every row count. Here a table's row type says once how its values are bound
//! ([`SqliteRow`]), and a statement holds a fixed number of rows (64, 16, 4 or 1), so there are
//! four prepared statements per table, each with a static query id, and the bind pass is the
//! only walk that does any work. The row types are declared with [`super::bulk::bulk_row!`],
//! which also gives them their PostgreSQL statement.

use std::marker::PhantomData;

use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::serialize::ToSql;
use diesel::sql_types::HasSqlType;
use diesel::sqlite::{Sqlite, SqliteConnection};
use diesel::{QueryResult, RunQueryDsl};

/// A row type written by [`insert`].
pub trait SqliteRow: 'static {
    /// The statement up to its values, e.g. `INSERT INTO t (a, b) VALUES `.
    const INSERT: &'static str;
    /// What follows the values (after a space), e.g. an `ON CONFLICT` clause.
    const TAIL: &'static str = "";
    /// Binds the row's values in column order, through [`Values::bind`].
    fn bind<'b>(&'b self, values: &mut Values<'_, '_, 'b>) -> QueryResult<()>;
}

/// Writes one row's `?, ?, …` and collects its values.
pub struct Values<'p, 'a, 'b> {
    out: &'p mut AstPass<'a, 'b, Sqlite>,
    first: bool,
}

impl<'b> Values<'_, '_, 'b> {
    /// The next column's value, as SQL type `T`.
    pub fn bind<T, U>(&mut self, value: &'b U) -> QueryResult<&mut Self>
    where
        Sqlite: HasSqlType<T>,
        U: ToSql<T, Sqlite> + ?Sized,
    {
        if !self.first {
            self.out.push_sql(", ");
        }
        self.first = false;
        self.out.push_bind_param::<T, U>(value)?;
        Ok(self)
    }
}

/// Statement sizes, largest first: a batch goes out in as few statements as these allow.
const SIZES: [usize; 4] = [64, 16, 4, 1];

/// Inserts `rows` in statements of 64, 16, 4 and 1 rows.
pub fn insert<R: SqliteRow>(conn: &mut SqliteConnection, rows: &[&R]) -> QueryResult<()> {
    insert_each_chunk(conn, rows, |_, _, _| Ok(()))
}

/// Like [`insert`]; `on_chunk` sees each statement's rows with the count the database
/// reports as inserted (fewer when `INSERT OR IGNORE` skipped some), for callers that need
/// to know which rows were skipped.
pub fn insert_each_chunk<R: SqliteRow>(
    conn: &mut SqliteConnection,
    rows: &[&R],
    mut on_chunk: impl FnMut(&mut SqliteConnection, &[&R], usize) -> QueryResult<()>,
) -> QueryResult<()> {
    let mut rest = rows;
    while !rest.is_empty() {
        let size = SIZES
            .into_iter()
            .find(|size| *size <= rest.len())
            .unwrap_or(1);
        let (chunk, tail) = rest.split_at(size);
        let count = match size {
            64 => Chunk::<R, 64>::new(chunk).execute(conn)?,
            16 => Chunk::<R, 16>::new(chunk).execute(conn)?,
            4 => Chunk::<R, 4>::new(chunk).execute(conn)?,
            _ => Chunk::<R, 1>::new(chunk).execute(conn)?,
        };
        on_chunk(conn, chunk, count)?;
        rest = tail;
    }
    Ok(())
}

/// One statement of exactly `N` rows.
struct Chunk<'a, R, const N: usize> {
    rows: &'a [&'a R],
}

impl<'a, R, const N: usize> Chunk<'a, R, N> {
    /// `rows` holds exactly `N` rows ([`insert`] splits them so).
    fn new(rows: &'a [&'a R]) -> Self {
        debug_assert_eq!(rows.len(), N);
        Chunk { rows }
    }
}

/// The cache key of a statement of `N` rows of `R`.
struct ChunkId<R, const N: usize>(PhantomData<R>);

impl<R: SqliteRow, const N: usize> QueryId for Chunk<'_, R, N> {
    type QueryId = ChunkId<R, N>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl<R: SqliteRow, const N: usize> QueryFragment<Sqlite> for Chunk<'_, R, N> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        out.push_sql(R::INSERT);
        for (i, row) in self.rows.iter().enumerate() {
            out.push_sql(if i == 0 { "(" } else { ", (" });
            row.bind(&mut Values {
                out: &mut out,
                first: true,
            })?;
            out.push_sql(")");
        }
        if !R::TAIL.is_empty() {
            out.push_sql(" ");
            out.push_sql(R::TAIL);
        }
        Ok(())
    }
}

impl<R, const N: usize> RunQueryDsl<SqliteConnection> for Chunk<'_, R, N> {}

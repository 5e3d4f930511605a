//! SQLite through rusqlite, run in the calling thread: the store's reads and its hot write batches.
//!
//! sqlx-sqlite serves each connection from a thread of its own and sends it every statement over
//! a channel, so each query costs two hand-overs between threads; on this service's hot paths
//! (a payment read by id or intent, a create's three round trips) those hand-overs, not SQLite,
//! were most of the store's CPU (`perf`: the connection threads at 32% of `serve` on returns,
//! mostly parking and waking). A SQLite statement on a hot path takes microseconds, so paybridge
//! runs it where the caller is: reads on the async worker that asked, write batches on the
//! writer's thread (`writer.rs`). sqlx stays for PostgreSQL, the migrations and the SQLite
//! writes that hold a transaction across awaits.
//!
//! Statements keep the `$n` parameters both engines share: SQLite treats `$7` as a parameter
//! named "$7", and each one is bound to the `n`-th value by its name.

use std::sync::Mutex;

use rusqlite::types::{FromSql, ToSqlOutput, ValueRef};
use rusqlite::{Connection, ErrorCode, OpenFlags, Row, ToSql};
use tokio::sync::Semaphore;

use super::rows::{LookupRow, PaymentRow};
use super::writer::Bound;
use super::{StoreError, closed, lock};

/// Opens one connection to the SQLite file of `url` (`sqlite:path`, as sqlx reads it), set up as
/// every one of paybridge's: WAL lets readers run beside the one writer; busy_timeout makes a
/// writer wait for the lock instead of failing the caller (another process may write too). Each
/// connection keeps its own page cache; at 1 MiB they stay small, and a miss is a read from the
/// OS page cache.
pub(super) fn open(url: &str) -> Result<Connection, StoreError> {
    use std::str::FromStr;
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)?;
    let conn = Connection::open_with_flags(
        options.get_filename(),
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.execute_batch(PRAGMAS)?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

/// The settings of every SQLite connection (sqlx's ones get them too). `temp_store = memory`
/// keeps the statement journal of a savepoint (the pages a batch changed, as they were before it)
/// in memory: in a temporary file it was a `pwrite` per page and 28% of the writer's time.
pub(super) const PRAGMAS: &str = "pragma journal_mode = wal; pragma busy_timeout = 10000; \
     pragma foreign_keys = on; pragma synchronous = normal; pragma cache_size = -1024; \
     pragma temp_store = memory;";

/// A fixed set of connections for reads, each used by one caller at a time and only for the
/// length of one synchronous query: a point read holds its worker thread for microseconds. In
/// WAL mode a reader does not wait for the writer; it can wait only while another process
/// recovers the file after a crash (busy_timeout bounds that).
#[derive(Debug)]
pub(super) struct Readers {
    idle: Mutex<Vec<Connection>>,
    /// One permit per connection in `idle`.
    permits: Semaphore,
}

impl Readers {
    pub(super) fn open(url: &str, connections: u32) -> Result<Readers, StoreError> {
        let idle = (0..connections.max(1))
            .map(|_| open(url))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Readers {
            permits: Semaphore::new(idle.len()),
            idle: Mutex::new(idle),
        })
    }

    /// Runs `sql` with `values` and maps every row.
    pub(super) async fn read<R: FromSqliteRow>(
        &self,
        sql: &str,
        values: &[Bound],
    ) -> Result<Vec<R>, StoreError> {
        let _permit = self.permits.acquire().await.map_err(|_| closed())?;
        let conn = Checkout::take(&self.idle).ok_or_else(closed)?;
        Ok(query(conn.conn(), sql, values, R::from_sqlite)?)
    }

    /// Closes every connection; later reads fail as unavailable.
    pub(super) fn close(&self) {
        self.permits.close();
        drop(std::mem::take(&mut *lock(&self.idle)));
    }
}

/// A connection taken from the idle set; put back when dropped, also if the query panicked.
struct Checkout<'a> {
    conn: Option<Connection>,
    idle: &'a Mutex<Vec<Connection>>,
}

impl<'a> Checkout<'a> {
    fn take(idle: &'a Mutex<Vec<Connection>>) -> Option<Checkout<'a>> {
        let conn = lock(idle).pop()?;
        Some(Checkout {
            conn: Some(conn),
            idle,
        })
    }

    fn conn(&self) -> &Connection {
        self.conn.as_ref().expect("held until dropped")
    }
}

impl Drop for Checkout<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            lock(self.idle).push(conn);
        }
    }
}

/// Runs one statement (cached per connection) and maps its rows.
fn query<R>(
    conn: &Connection,
    sql: &str,
    values: &[Bound],
    map: impl Fn(&Row<'_>) -> rusqlite::Result<R>,
) -> rusqlite::Result<Vec<R>> {
    let mut statement = conn.prepare_cached(sql)?;
    bind(&mut statement, values)?;
    let mut rows = statement.raw_query();
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(map(row)?);
    }
    Ok(out)
}

/// Runs the statements of `batch` (`;`-separated, no transaction control: the caller holds the
/// transaction) in order and returns the payment rows they return.
pub(super) fn run_batch(
    conn: &Connection,
    batch: &str,
    values: &[Bound],
) -> rusqlite::Result<Vec<PaymentRow>> {
    let mut out = Vec::new();
    for sql in batch.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        out.extend(query(conn, sql, values, PaymentRow::from_sqlite)?);
    }
    Ok(out)
}

/// Binds each `$n` of the statement to `values[n - 1]`.
fn bind(statement: &mut rusqlite::CachedStatement<'_>, values: &[Bound]) -> rusqlite::Result<()> {
    for index in 1..=statement.parameter_count() {
        let value = statement
            .parameter_name(index)
            .and_then(|name| name.strip_prefix('$'))
            .and_then(|n| n.parse::<usize>().ok())
            .and_then(|n| values.get(n.checked_sub(1)?))
            .ok_or(rusqlite::Error::InvalidParameterCount(index, values.len()))?;
        statement.raw_bind_parameter(index, value)?;
    }
    Ok(())
}

impl ToSql for Bound {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Bound::Text(Some(text)) => ValueRef::Text(text.as_bytes()),
            Bound::Int(Some(int)) => ValueRef::Integer(*int),
            Bound::Text(None) | Bound::Int(None) => ValueRef::Null,
        }))
    }
}

/// A row type the store reads from SQLite, by column position.
pub(super) trait FromSqliteRow: Sized {
    fn from_sqlite(row: &Row<'_>) -> rusqlite::Result<Self>;
}

impl FromSqliteRow for PaymentRow {
    fn from_sqlite(row: &Row<'_>) -> rusqlite::Result<Self> {
        PaymentRow::from_sqlite_at(row, 0)
    }
}

impl FromSqliteRow for LookupRow {
    fn from_sqlite(row: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(LookupRow {
            request_fingerprint: row.get(0)?,
            payment: PaymentRow::from_sqlite_at(row, 1)?,
        })
    }
}

impl<A: FromSql> FromSqliteRow for (A,) {
    fn from_sqlite(row: &Row<'_>) -> rusqlite::Result<Self> {
        Ok((row.get(0)?,))
    }
}

impl<A: FromSql, B: FromSql, C: FromSql> FromSqliteRow for (A, B, C) {
    fn from_sqlite(row: &Row<'_>) -> rusqlite::Result<Self> {
        Ok((row.get(0)?, row.get(1)?, row.get(2)?))
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> Self {
        let code = match &error {
            rusqlite::Error::SqliteFailure(failure, _) => Some(*failure),
            _ => None,
        };
        match code {
            Some(failure)
                if failure.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                    || failure.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY =>
            {
                StoreError::Conflict
            }
            // The file cannot be reached or locked in time: unavailable, not a wrong request.
            Some(failure)
                if matches!(
                    failure.code,
                    ErrorCode::DatabaseBusy
                        | ErrorCode::DatabaseLocked
                        | ErrorCode::SystemIoFailure
                        | ErrorCode::CannotOpen
                        | ErrorCode::DiskFull
                ) =>
            {
                StoreError::Unavailable(Box::new(error))
            }
            _ => StoreError::Database(Box::new(error)),
        }
    }
}

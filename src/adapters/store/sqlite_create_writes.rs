//! SQLite's two create writes ([`OneTrip`](super::OneTrip)) on rusqlite, in the calling thread,
//! and SQLite's one writer lock. Everything else, on both engines, runs on sqlx.
//!
//! SQLite takes one writer at a time, so every SQLite write, on sqlx or here, first holds
//! [`SqliteCreateWrites::hold`]: writers queue in order on a lock instead of colliding on the
//! database's. A batch is synchronous: a caller that goes away cannot cut it short, and one that
//! fails part way is rolled back whole.
//!
//! Kept alone, beside sqlx, for its figure (SQLite creates at 64 callers, 2 cores, alternated
//! with the binary before the store's rewrite at 5,627–5,769/s and 164–167 µs of serve's CPU):
//! - the batches on sqlx-sqlite (each statement handed to the connection's thread, its result
//!   streamed back), sqlx's one-connection write pool as the lock: 1,244–1,582/s, 395–442 µs;
//! - the batches here, the pool still the lock (each write waits for the pool's hand-off and
//!   its ping of the connection): 1,569–1,593/s, 358–382 µs;
//! - the batches here, behind this lock: 3,109–3,206/s, 288 µs (the target is 2,000/s);
//! - the same batches on sqlx-sqlite, behind this lock, on a sqlx connection kept for them
//!   (alternated with the line above at 3,096–3,176/s, 293–301 µs): 2,032–2,060/s, p99 40–42 ms,
//!   446–458 µs.

use tokio::sync::{Mutex, MutexGuard};

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags, ToSql};

use super::SqlValue;
use super::payments::PaymentRow;
use crate::app::ports::StoreError;

/// SQLite's writer: the rusqlite connection the create's batches run on, behind the lock every
/// SQLite write holds.
#[derive(Debug)]
pub(super) struct SqliteCreateWrites {
    conn: Mutex<Connection>,
}

/// SQLite's one writer, held; on its connection the create's batches run.
pub(super) type SqliteWriter<'a> = MutexGuard<'a, Connection>;

impl SqliteCreateWrites {
    /// Opens the database file of `url` (which sqlx created) with `pragmas`.
    pub(super) fn open(url: &str, pragmas: &str) -> Result<SqliteCreateWrites, StoreError> {
        use std::str::FromStr;
        let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)?;
        let conn = Connection::open_with_flags(
            options.get_filename(),
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .and_then(|conn| conn.execute_batch(pragmas).map(|()| conn))
        .map_err(unavailable)?;
        Ok(SqliteCreateWrites {
            conn: Mutex::new(conn),
        })
    }

    /// Waits for SQLite's one writer.
    pub(super) async fn hold(&self) -> SqliteWriter<'_> {
        self.conn.lock().await
    }

    /// Runs `batch` (statements separated by `;`, `$n` parameters into `values`) in one
    /// transaction; answers the payment rows its statements return.
    pub(super) fn run(
        conn: &SqliteWriter<'_>,
        batch: &str,
        values: &[SqlValue],
    ) -> Result<Vec<PaymentRow>, StoreError> {
        conn.execute_batch("begin immediate").map_err(unavailable)?;
        match run_statements(conn, batch, values).and_then(|rows| {
            conn.execute_batch("commit")?;
            Ok(rows)
        }) {
            Ok(rows) => Ok(rows),
            Err(error) => {
                let _ = conn.execute_batch("rollback");
                Err(refused(error))
            }
        }
    }
}

fn run_statements(
    conn: &Connection,
    batch: &str,
    values: &[SqlValue],
) -> rusqlite::Result<Vec<PaymentRow>> {
    let mut rows = Vec::new();
    for sql in batch
        .split(';')
        .map(str::trim)
        .filter(|sql| !sql.is_empty())
    {
        let mut statement = conn.prepare_cached(sql)?;
        for index in 1..=statement.parameter_count() {
            let value = statement
                .parameter_name(index)
                .and_then(|name| name.strip_prefix('$'))
                .and_then(|number| number.parse::<usize>().ok())
                .and_then(|number| values.get(number.checked_sub(1)?))
                .ok_or(rusqlite::Error::InvalidParameterCount(index, values.len()))?;
            statement.raw_bind_parameter(index, value)?;
        }
        let mut returned = statement.raw_query();
        while let Some(row) = returned.next()? {
            rows.push(PaymentRow::from_rusqlite(row)?);
        }
    }
    Ok(rows)
}

impl ToSql for SqlValue {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            SqlValue::Text(Some(text)) => ValueRef::Text(text.as_bytes()),
            SqlValue::Int(Some(int)) => ValueRef::Integer(*int),
            SqlValue::Text(None) | SqlValue::Int(None) => ValueRef::Null,
        }))
    }
}

/// The database could not be used at all (the file, the lock).
fn unavailable(error: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(Box::new(error))
}

/// A statement failed: a unique index (`Conflict`), or anything else.
fn refused(error: rusqlite::Error) -> StoreError {
    match error.sqlite_error_code() {
        Some(rusqlite::ErrorCode::ConstraintViolation) => StoreError::Conflict,
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            unavailable(error)
        }
        _ => StoreError::Database(Box::new(error)),
    }
}

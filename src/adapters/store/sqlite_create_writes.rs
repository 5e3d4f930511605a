//! SQLite's two create writes ([`OneTrip`](super::OneTrip)) on rusqlite, in the calling thread,
//! and SQLite's one writer lock. Everything else, on both engines, runs on sqlx.
//!
//! SQLite takes one writer at a time, so every SQLite write, on sqlx or here, first holds
//! [`SqliteCreateWrites::hold`]: writers queue in order on a lock instead of colliding on the
//! database's. A batch is synchronous: a caller that goes away cannot cut it short, and one that
//! fails part way is rolled back whole.
//!
//! Group commit: the create batches that queued while the writer was busy run in one transaction
//! (a savepoint each, so a failing one is rolled back alone; every caller is answered after the
//! commit), run by the first of their callers to get the writer. A caller that goes away before
//! its batch was taken takes it out of the queue.
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
//!   446–458 µs;
//! - group commit (alternated with the line before it on a busier VM, 2 runs × 3 s each):
//!   1,261 / 1,892 → 2,215 / 2,199/s, p99 134 / 53 → 60 / 63 ms, 382 / 347 → 277 / 261 µs;
//!   full runs 1,913 / 1,301 → 1,889 / 1,577/s, 443 / 448 → 344 / 333 µs.

use tokio::sync::{Mutex, MutexGuard, oneshot};

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags, ToSql};

use super::SqlValue;
use super::payment_row::PaymentRow;
use crate::app::ports::StoreError;

/// SQLite's writer: the rusqlite connection the create's batches run on, behind the lock every
/// SQLite write holds.
#[derive(Debug)]
pub(super) struct SqliteCreateWrites {
    conn: Mutex<Connection>,
    /// Create batches waiting for the writer; whoever holds it next runs them all.
    waiting: std::sync::Mutex<Waiting>,
}

/// Create batches waiting for the writer, in arrival order.
#[derive(Debug, Default)]
struct Waiting {
    next_id: u64,
    batches: Vec<Batch>,
}

type Answer = Result<Vec<PaymentRow>, StoreError>;

#[derive(Debug)]
struct Batch {
    id: u64,
    sql: &'static str,
    values: Vec<SqlValue>,
    reply: oneshot::Sender<Answer>,
}

/// Takes a caller's batch out of the queue if it goes away before the batch ran.
struct Unqueue<'a> {
    waiting: &'a std::sync::Mutex<Waiting>,
    id: u64,
}

impl Drop for Unqueue<'_> {
    fn drop(&mut self) {
        lock(self.waiting)
            .batches
            .retain(|batch| batch.id != self.id);
    }
}

fn lock(waiting: &std::sync::Mutex<Waiting>) -> std::sync::MutexGuard<'_, Waiting> {
    waiting
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
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
            waiting: std::sync::Mutex::default(),
        })
    }

    /// Waits for SQLite's one writer.
    pub(super) async fn hold(&self) -> SqliteWriter<'_> {
        self.conn.lock().await
    }

    /// Runs `batch` (statements separated by `;`, `$n` parameters into `values`) in a
    /// transaction; answers the payment rows its statements return. Batches that queued while
    /// the writer was busy share one transaction (group commit): a savepoint each, so a failing
    /// one is rolled back alone, and every caller is answered after the commit.
    pub(super) async fn run(&self, sql: &'static str, values: Vec<SqlValue>) -> Answer {
        let (reply, mut answer) = oneshot::channel();
        let id = {
            let mut waiting = lock(&self.waiting);
            let id = waiting.next_id;
            waiting.next_id += 1;
            waiting.batches.push(Batch {
                id,
                sql,
                values,
                reply,
            });
            id
        };
        let unqueue = Unqueue {
            waiting: &self.waiting,
            id,
        };
        let writer = self.hold().await;
        // The writer's last holder may have run this batch with its own.
        if let Ok(done) = answer.try_recv() {
            return done;
        }
        let batches = std::mem::take(&mut lock(&self.waiting).batches);
        drop(unqueue);
        run_together(&writer, batches);
        drop(writer);
        answer.try_recv().unwrap_or_else(|_| {
            Err(StoreError::Database(
                "the create's batch was not run".into(),
            ))
        })
    }
}

/// Runs `batches` in one transaction, each in a savepoint, and answers each once committed.
fn run_together(conn: &Connection, batches: Vec<Batch>) {
    if let Err(error) = conn.execute_batch("begin immediate") {
        let message = error.to_string();
        for batch in batches {
            let _ = batch
                .reply
                .send(Err(StoreError::Unavailable(message.clone().into())));
        }
        return;
    }
    let mut answers = Vec::with_capacity(batches.len());
    for batch in batches {
        let answer = conn
            .execute_batch("savepoint batch")
            .and_then(|()| run_statements(conn, batch.sql, &batch.values))
            .and_then(|rows| conn.execute_batch("release batch").map(|()| rows))
            .map_err(|error| {
                let _ = conn.execute_batch("rollback to batch; release batch");
                refused(error)
            });
        answers.push((batch.reply, answer));
    }
    match conn.execute_batch("commit") {
        Ok(()) => {
            for (reply, answer) in answers {
                let _ = reply.send(answer);
            }
        }
        Err(error) => {
            let _ = conn.execute_batch("rollback");
            let message = error.to_string();
            for (reply, _) in answers {
                let _ = reply.send(Err(StoreError::Unavailable(message.clone().into())));
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

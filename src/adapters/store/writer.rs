//! Where the store's writes run.
//!
//! SQLite takes one writer at a time, so paybridge gives it exactly one connection of its own,
//! held by one write at a time: writers queue in order for it instead of colliding on the
//! database lock (whose busy handler sleeps 1, 2, 5… 100 ms between retries). It is a plain
//! connection, not a pool of one: a pool pings a connection on its thread each time it is handed
//! back, and on the one writer that round trip sat between every two transactions.
//!
//! PostgreSQL writes use the shared pool: its writers do not wait for each other.

use std::sync::Arc;

use sqlx::any::{AnyArguments, AnyRow};
use sqlx::query::QueryAs;
use sqlx::{Any, AnyConnection, AnyPool, Connection, Executor};
use tokio::sync::{Mutex, OwnedMutexGuard};

use super::StoreError;

/// Where writes run.
#[derive(Debug, Clone)]
pub(super) enum Writer {
    /// The one SQLite writer connection; `None` once the store is closed.
    Sqlite(Arc<Mutex<Option<AnyConnection>>>),
    Postgres(AnyPool),
}

/// One write transaction, begun with [`Writer::begin`]. Dropped without `commit`, it is rolled
/// back (on SQLite before the next writer gets the connection).
pub(super) struct WriteTx {
    inner: Option<TxInner>,
}

enum TxInner {
    Pooled(sqlx::Transaction<'static, Any>),
    Sqlite(OwnedMutexGuard<Option<AnyConnection>>),
}

/// An owned value bound to a write batch (owned, so the batch can run on a task of its own).
pub(super) enum Bound {
    Text(Option<String>),
    Int(Option<i64>),
}

impl Bound {
    pub(super) fn text(value: &str) -> Bound {
        Bound::Text(Some(value.to_owned()))
    }
}

impl Writer {
    /// Opens the SQLite writer connection.
    pub(super) fn sqlite(connection: AnyConnection) -> Writer {
        Writer::Sqlite(Arc::new(Mutex::new(Some(connection))))
    }

    /// Begins a write transaction: `begin immediate` on SQLite, so the lock is taken at the
    /// start (another process may write to the file too, and busy_timeout applies then).
    pub(super) async fn begin(&self) -> Result<WriteTx, StoreError> {
        let inner = match self {
            Writer::Postgres(pool) => TxInner::Pooled(pool.begin().await?),
            Writer::Sqlite(connection) => {
                let mut guard = Arc::clone(connection).lock_owned().await;
                let conn = guard.as_mut().ok_or(closed())?;
                conn.execute("begin immediate").await?;
                TxInner::Sqlite(guard)
            }
        };
        Ok(WriteTx { inner: Some(inner) })
    }

    /// Runs one write transaction in one round trip to the database and returns the rows it
    /// selects: on SQLite `sqlite` — `begin immediate; …; commit;` — runs on the connection's
    /// thread in one go, so the lock is never held while a task waits to be scheduled; on
    /// PostgreSQL `postgres` is one statement (data-modifying `with` clauses), atomic by itself.
    ///
    /// The batch runs on a task of its own, so a caller that goes away (a cancelled RPC) cannot
    /// leave it half done with its transaction open on the shared connection.
    pub(super) async fn run_batch<R>(
        &self,
        sqlite: &'static str,
        postgres: &'static str,
        values: Vec<Bound>,
    ) -> Result<Vec<R>, StoreError>
    where
        R: for<'r> sqlx::FromRow<'r, AnyRow> + Send + Unpin + 'static,
    {
        let writer = self.clone();
        let batch = tokio::spawn(async move {
            match writer {
                Writer::Postgres(pool) => Ok(bind_all(sqlx::query_as::<_, R>(postgres), values)
                    .fetch_all(&pool)
                    .await?),
                Writer::Sqlite(connection) => {
                    let mut guard = connection.lock_owned().await;
                    let conn = guard.as_mut().ok_or(closed())?;
                    let result = bind_all(sqlx::query_as::<_, R>(sqlite), values)
                        .fetch_all(&mut *conn)
                        .await;
                    if result.is_err() {
                        // SQLite stopped at the failing statement, inside the transaction
                        // (unless `begin` itself failed: then there is nothing to roll back).
                        roll_back(&mut guard).await;
                    }
                    Ok(result?)
                }
            }
        });
        batch.await.map_err(|join| {
            StoreError::Database(sqlx::Error::Protocol(format!(
                "write task ended abnormally: {join}"
            )))
        })?
    }

    /// Closes the SQLite connection; later writes fail as unavailable.
    pub(super) async fn close(&self) {
        match self {
            Writer::Postgres(pool) => pool.close().await,
            Writer::Sqlite(connection) => {
                if let Some(conn) = connection.lock().await.take() {
                    let _ = conn.close().await;
                }
            }
        }
    }
}

impl WriteTx {
    /// The transaction's connection, to run statements on.
    pub(super) fn conn(&mut self) -> &mut AnyConnection {
        match self.inner.as_mut() {
            Some(TxInner::Pooled(tx)) => tx,
            Some(TxInner::Sqlite(guard)) => guard
                .as_mut()
                .expect("a begun SQLite write holds an open connection"),
            None => unreachable!("a write transaction is used after it ended"),
        }
    }

    pub(super) async fn commit(mut self) -> Result<(), StoreError> {
        match self.inner.take() {
            Some(TxInner::Pooled(tx)) => tx.commit().await?,
            Some(TxInner::Sqlite(mut guard)) => {
                let conn = guard.as_mut().ok_or(closed())?;
                if let Err(error) = conn.execute("commit").await {
                    roll_back(&mut guard).await;
                    return Err(error.into());
                }
            }
            None => {}
        }
        Ok(())
    }

    pub(super) async fn rollback(mut self) -> Result<(), StoreError> {
        match self.inner.take() {
            Some(TxInner::Pooled(tx)) => tx.rollback().await?,
            Some(TxInner::Sqlite(mut guard)) => roll_back(&mut guard).await,
            None => {}
        }
        Ok(())
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        // The pooled transaction rolls itself back; the SQLite one is rolled back before the
        // guard lets the next writer in.
        if let Some(TxInner::Sqlite(mut guard)) = self.inner.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(async move { roll_back(&mut guard).await });
                }
                // No runtime to roll back on (the process is ending): close the connection,
                // which SQLite rolls back.
                Err(_) => drop(guard.take()),
            }
        }
    }
}

/// Rolls back whatever transaction the SQLite connection has open. If that fails for any reason
/// other than there being none, the connection is closed (SQLite rolls back on close), so that
/// no later writer runs inside a stale transaction.
async fn roll_back(guard: &mut OwnedMutexGuard<Option<AnyConnection>>) {
    let Some(conn) = guard.as_mut() else { return };
    if let Err(error) = conn.execute("rollback").await {
        let no_transaction = matches!(&error, sqlx::Error::Database(db)
            if db.message().contains("no transaction is active"));
        if !no_transaction {
            tracing::error!(%error, "rolling back a failed write; closing the writer connection");
            if let Some(conn) = guard.take() {
                let _ = conn.close_hard().await;
            }
        }
    }
}

/// The error of a write after the store was closed (on shutdown).
fn closed() -> StoreError {
    StoreError::Unavailable(sqlx::Error::PoolClosed)
}

fn bind_all<'q, R>(
    mut query: QueryAs<'q, Any, R, AnyArguments<'q>>,
    values: Vec<Bound>,
) -> QueryAs<'q, Any, R, AnyArguments<'q>> {
    for value in values {
        query = match value {
            Bound::Text(text) => query.bind(text),
            Bound::Int(int) => query.bind(int),
        };
    }
    query
}

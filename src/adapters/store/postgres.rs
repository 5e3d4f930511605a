//! PostgreSQL's connections: a fixed-size set that paybridge keeps itself instead of sqlx's pool.
//!
//! sqlx's pool pings every connection when it comes back (`PoolConnection`'s drop spawns a task
//! that sends `Sync` and waits for `ReadyForQuery`), so each query cost the server two round trips
//! and two wake-ups, and the client a spawned task; on a create (three statements) that was
//! six round trips where three do the work (`perf` on the server: about 40% of its CPU in the
//! kernel, sending, receiving and switching). Here a connection goes back to the set without a
//! round trip when the statement (or transaction) it ran ended cleanly, and is closed otherwise:
//! after a lost connection, a dropped future (a cancelled call may have left a reply unread) or a
//! transaction that did not end. A session the server ended (restart, failover) fails its next
//! statement as unavailable and is closed then; the next caller opens a new one.

use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::any::{AnyConnectOptions, AnyRow};
use sqlx::{AnyConnection, ConnectOptions, Connection, FromRow};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::writer::{Bound, bind_all};
use super::{StoreError, closed, lock};

/// How long a caller waits for a connection (a free one, or a new one to open).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection older than this is closed when it comes back, so that connections move to a
/// replaced server or a rebalanced pooler over time (sqlx's pool's default lifetime).
const MAX_LIFETIME: Duration = Duration::from_secs(30 * 60);

/// When PostgreSQL plans a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Planned {
    /// Prepared once per connection; its plan is kept until the tables' statistics change.
    Once,
    /// Planned at each run, for the tables as they are then: for a statement whose plan depends
    /// on the sizes of the tables it joins (see `grouped.rs`).
    EachRun,
}

/// At most `max` connections, opened when first needed, each used by one caller at a time.
pub(super) struct Connections {
    options: AnyConnectOptions,
    idle: Mutex<Vec<Idle>>,
    /// One permit per connection that is idle, in use, or may still be opened.
    permits: Arc<Semaphore>,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The options hold the URL and its password: not printed.
        f.debug_struct("Connections")
            .field("idle", &lock(&self.idle).len())
            .field("available", &self.permits.available_permits())
            .finish_non_exhaustive()
    }
}

struct Idle {
    conn: AnyConnection,
    opened: Instant,
}

impl Connections {
    /// Connects once to check the URL and the server (the connection is kept for later use).
    pub(super) async fn connect(url: &str, max: u32) -> Result<Arc<Connections>, StoreError> {
        let connections = Arc::new(Connections {
            options: AnyConnectOptions::from_str(url)?,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(max.max(1) as usize)),
        });
        connections.acquire().await?.release();
        Ok(connections)
    }

    /// Takes an idle connection, or opens one while fewer than `max` are open.
    pub(super) async fn acquire(self: &Arc<Self>) -> Result<Held, StoreError> {
        let wait = async {
            let permit = Arc::clone(&self.permits)
                .acquire_owned()
                .await
                .map_err(|_| closed())?;
            let idle = lock(&self.idle).pop();
            let (conn, opened) = match idle {
                Some(idle) => (idle.conn, idle.opened),
                None => (self.options.connect().await?, Instant::now()),
            };
            Ok::<_, StoreError>(Held {
                conn: Some(conn),
                opened,
                reusable: false,
                home: Arc::clone(self),
                _permit: permit,
            })
        };
        tokio::time::timeout(ACQUIRE_TIMEOUT, wait)
            .await
            .map_err(|_| StoreError::Unavailable(Box::new(sqlx::Error::PoolTimedOut)))?
    }

    /// Runs one statement (`values` bound to `$1`, `$2`, …) and returns its rows. The statement
    /// is prepared once per connection and its plan kept.
    pub(super) async fn fetch_rows<R>(
        self: &Arc<Self>,
        sql: &str,
        values: Vec<Bound>,
    ) -> Result<Vec<R>, StoreError>
    where
        R: for<'r> FromRow<'r, AnyRow>,
    {
        self.fetch(sql, values, Planned::Once).await
    }

    /// [`Connections::fetch_rows`] with a choice of when the statement is planned.
    pub(super) async fn fetch<R>(
        self: &Arc<Self>,
        sql: &str,
        values: Vec<Bound>,
        planned: Planned,
    ) -> Result<Vec<R>, StoreError>
    where
        R: for<'r> FromRow<'r, AnyRow>,
    {
        let mut held = self.acquire().await?;
        let query = sqlx::query(sql).persistent(planned == Planned::Once);
        let rows = bind_all(query, values).fetch_all(held.conn()).await;
        let rows = held.ended(rows)?;
        Ok(rows
            .iter()
            .map(R::from_row)
            .collect::<Result<Vec<R>, sqlx::Error>>()?)
    }

    /// Closes every idle connection; later calls fail as unavailable, and connections in use are
    /// closed when they come back.
    pub(super) async fn close(&self) {
        self.permits.close();
        let idle = std::mem::take(&mut *lock(&self.idle));
        for idle in idle {
            let _ = idle.conn.close().await;
        }
    }
}

/// A connection taken from the set. Dropped, it goes back only if [`Held::release`] (or
/// [`Held::ended`] with a result that leaves it usable) said so; otherwise it is closed, and the
/// server rolls back whatever it had open.
pub(super) struct Held {
    conn: Option<AnyConnection>,
    opened: Instant,
    reusable: bool,
    home: Arc<Connections>,
    _permit: OwnedSemaphorePermit,
}

impl Held {
    pub(super) fn conn(&mut self) -> &mut AnyConnection {
        self.conn.as_mut().expect("held until dropped")
    }

    /// The connection is idle (no statement running, no transaction open): it may go back.
    pub(super) fn release(mut self) {
        self.reusable = true;
    }

    /// After a statement that leaves no transaction open (one outside a transaction, or the
    /// `commit`/`rollback` ending one): the connection goes back unless the error says it is lost. Returns the result as a store error.
    pub(super) fn ended<T>(mut self, result: Result<T, sqlx::Error>) -> Result<T, StoreError> {
        let result = result.map_err(StoreError::from);
        self.reusable = !matches!(result, Err(StoreError::Unavailable(_)));
        result
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        if self.reusable && !self.home.permits.is_closed() && self.opened.elapsed() < MAX_LIFETIME {
            lock(&self.home.idle).push(Idle {
                conn,
                opened: self.opened,
            });
        } else if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            // Tell the server goodbye (it ends the session and rolls back what was open).
            runtime.spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(5), conn.close()).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use sqlx::Executor;

    use super::*;

    /// The throwaway cluster `scripts/test` starts.
    async fn connections(max: u32) -> Arc<Connections> {
        sqlx::any::install_default_drivers();
        let url = std::env::var("PAYBRIDGE_TEST_POSTGRES_URL")
            .expect("PAYBRIDGE_TEST_POSTGRES_URL is not set: run the suite with scripts/test");
        Connections::connect(&url, max).await.expect("connect")
    }

    async fn backend_pid(connections: &Arc<Connections>) -> i32 {
        let rows: Vec<(i32,)> = connections
            .fetch_rows("select pg_backend_pid()", vec![])
            .await
            .expect("pg_backend_pid");
        rows[0].0
    }

    /// Runs `sql` outside a transaction on a connection of the set.
    async fn execute(connections: &Arc<Connections>, sql: &str) {
        let mut held = connections.acquire().await.expect("acquire");
        held.conn().execute(sql).await.expect(sql);
        held.release();
    }

    fn table_name() -> String {
        format!("connections_test_{}", std::process::id())
    }

    #[tokio::test]
    async fn a_statement_the_database_refuses_leaves_the_connection_in_use() {
        let connections = connections(1).await;
        let before = backend_pid(&connections).await;
        let failed = connections
            .fetch_rows::<(i32,)>("select 1 / 0", vec![])
            .await;
        assert!(matches!(failed, Err(StoreError::Database(_))), "{failed:?}");
        assert_eq!(backend_pid(&connections).await, before, "the same session");
    }

    #[tokio::test]
    async fn a_transaction_dropped_before_its_end_is_closed_and_rolled_back() {
        let connections = connections(1).await;
        let table = format!("{}_dropped", table_name());
        execute(
            &connections,
            &format!("drop table if exists {table}; create table {table} (n int)"),
        )
        .await;
        let before = backend_pid(&connections).await;

        let mut held = connections.acquire().await.expect("acquire");
        held.conn().execute("begin").await.expect("begin");
        held.conn()
            .execute(format!("insert into {table} values (1)").as_str())
            .await
            .expect("insert");
        drop(held);

        // The only connection was closed; the next caller gets a new session, and the insert
        // was never committed.
        assert_ne!(backend_pid(&connections).await, before, "a new session");
        let rows: Vec<(i64,)> = connections
            .fetch_rows(&format!("select count(*) from {table}"), vec![])
            .await
            .expect("count");
        assert_eq!(rows[0].0, 0);
        execute(&connections, &format!("drop table {table}")).await;
    }

    #[tokio::test]
    async fn at_most_max_connections_are_open_and_a_closed_set_refuses() {
        let connections = connections(2).await;
        let first = connections.acquire().await.expect("first");
        let second = connections.acquire().await.expect("second");
        let third = tokio::time::timeout(Duration::from_millis(200), connections.acquire()).await;
        assert!(third.is_err(), "a third caller waits while two are in use");
        first.release();
        let third = connections
            .acquire()
            .await
            .expect("third, after one came back");
        third.release();
        second.release();
        connections.close().await;
        assert!(matches!(
            connections.acquire().await,
            Err(StoreError::Unavailable(_))
        ));
    }
}

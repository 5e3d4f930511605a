//! Where the store's writes run.
//!
//! SQLite takes one writer at a time, so paybridge gives it exactly one writer, a thread of its own
//! (`paybridge-sqlite-writer`) that owns the write connections. Writes queue for it in order
//! instead of colliding on the database lock (whose busy handler sleeps 1, 2, 5… 100 ms between
//! retries). The hot writes are batches the writer runs itself, on a rusqlite connection in its
//! own thread (`sqlite.rs`), without waiting for the requesting task to be scheduled in between.
//! Batches that queued up while the writer was busy are committed together (group commit): each
//! in a savepoint of one transaction, so one that fails is rolled back alone and the others go on;
//! every caller is answered only after the commit. Other writes borrow the writer's sqlx
//! connection for a transaction ([`Writer::begin`]) and hand it back when they end.
//!
//! PostgreSQL writes use the shared set of connections (`postgres.rs`): its writers do not wait
//! for each other, except the two writes of a create, which concurrent calls share statements for
//! ([`Writer::run_grouped`], `grouped.rs`).

use std::sync::Arc;

use sqlx::any::AnyArguments;
use sqlx::query::Query;
use sqlx::{Any, AnyConnection, Connection, Executor};
use tokio::sync::{mpsc, oneshot};

use super::grouped::{GroupedWrite, Groups};
use super::postgres::{Connections, Held};
use super::rows::PaymentRow;
use super::sqlite;
use super::{StoreError, closed};

/// At most this many queued batches share one commit (bounds how long the first one waits).
const MAX_GROUP: usize = 64;

/// Where writes run.
#[derive(Debug, Clone)]
pub(super) enum Writer {
    /// The SQLite writer task's queue.
    Sqlite(mpsc::UnboundedSender<Request>),
    /// The connection set, and the queues of the writes that concurrent calls share a statement
    /// for (`grouped.rs`).
    Postgres(Arc<Connections>, Arc<Groups>),
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::Batch { sql, .. } => f.debug_struct("Batch").field("sql", sql).finish(),
            Request::Lend { .. } => f.write_str("Lend"),
        }
    }
}

/// What the SQLite writer task is asked to do.
pub(super) enum Request {
    /// Run a batch of statements in the writer's transaction and answer its payment rows once
    /// committed.
    Batch {
        sql: &'static str,
        values: Vec<Bound>,
        reply: oneshot::Sender<Result<Vec<PaymentRow>, StoreError>>,
    },
    /// Lend the connection for a transaction; it comes back through the `Loan`.
    Lend { reply: oneshot::Sender<Loan> },
}

/// The SQLite connection on loan from the writer task. Dropped, it goes back (rolled back
/// first if its transaction did not end).
#[derive(Debug)]
pub(super) struct Loan {
    conn: Option<AnyConnection>,
    in_transaction: bool,
    back: Option<oneshot::Sender<Returned>>,
}

#[derive(Debug)]
pub(super) struct Returned {
    conn: AnyConnection,
    in_transaction: bool,
}

impl Loan {
    /// The borrowed connection.
    pub(super) fn conn(&mut self) -> Result<&mut AnyConnection, StoreError> {
        self.conn.as_mut().ok_or_else(closed)
    }
}

impl Drop for Loan {
    fn drop(&mut self) {
        if let (Some(conn), Some(back)) = (self.conn.take(), self.back.take()) {
            let _ = back.send(Returned {
                conn,
                in_transaction: self.in_transaction,
            });
        }
    }
}

/// One write transaction, begun with [`Writer::begin`]. Dropped without `commit`, it is rolled
/// back (on SQLite before the writer task does anything else).
pub(super) struct WriteTx {
    inner: Option<TxInner>,
}

enum TxInner {
    /// A PostgreSQL connection with `begin` run on it; closed if dropped before the end.
    Postgres(Held),
    Sqlite(Loan),
}

/// An owned value bound to a write batch (owned, so the batch can be handed to the writer task).
#[derive(Debug)]
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
    /// Starts the SQLite writer on a thread of its own, owning `connection` (sqlx, for borrowed
    /// transactions) and `batches` (rusqlite, for batches), two connections to the same file that
    /// it uses one at a time. The writer ends (closing both) when the last `Writer` is dropped or
    /// [`Writer::close`] is called.
    pub(super) fn sqlite(
        connection: AnyConnection,
        batches: rusqlite::Connection,
    ) -> std::io::Result<Writer> {
        let (requests, queue) = mpsc::unbounded_channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("paybridge-sqlite-writer".to_owned())
            .spawn(move || runtime.block_on(run_sqlite_writer(connection, batches, queue)))?;
        Ok(Writer::Sqlite(requests))
    }

    /// Borrows the SQLite writer's sqlx connection, outside any transaction (the migrations
    /// run on it). Nothing else writes until the loan is dropped.
    pub(super) async fn lend(&self) -> Result<Loan, StoreError> {
        let Writer::Sqlite(requests) = self else {
            return Err(StoreError::Database(
                "only the SQLite writer lends its connection".into(),
            ));
        };
        let (reply, loan) = oneshot::channel();
        requests
            .send(Request::Lend { reply })
            .map_err(|_| closed())?;
        loan.await.map_err(|_| closed())
    }

    /// Begins a write transaction: `begin immediate` on SQLite, so the lock is taken at the
    /// start (another process may write to the file too, and busy_timeout applies then).
    pub(super) async fn begin(&self) -> Result<WriteTx, StoreError> {
        let inner = match self {
            Writer::Postgres(connections, _) => {
                let mut held = connections.acquire().await?;
                held.conn().execute("begin").await?;
                TxInner::Postgres(held)
            }
            Writer::Sqlite(_) => {
                let mut loan = self.lend().await?;
                loan.conn()?.execute("begin immediate").await?;
                loan.in_transaction = true;
                TxInner::Sqlite(loan)
            }
        };
        Ok(WriteTx { inner: Some(inner) })
    }

    /// Runs one write transaction in one round trip to the database and returns the payment rows
    /// it returns: on SQLite the writer runs the statements of `sqlite` in its transaction
    /// (shared with the batches queued beside it, each in a savepoint); on PostgreSQL `postgres`
    /// is one statement (data-modifying `with` clauses), atomic by itself. Answered after the
    /// commit. A caller that goes away meanwhile (a cancelled RPC) cannot leave either half done.
    pub(super) async fn run_batch(
        &self,
        sqlite: &'static str,
        postgres: &'static str,
        values: Vec<Bound>,
    ) -> Result<Vec<PaymentRow>, StoreError> {
        match self {
            Writer::Postgres(connections, _) => connections.fetch_rows(postgres, values).await,
            Writer::Sqlite(requests) => {
                let (reply, answer) = oneshot::channel();
                requests
                    .send(Request::Batch {
                        sql: sqlite,
                        values,
                        reply,
                    })
                    .map_err(|_| closed())?;
                answer.await.map_err(|_| closed())?
            }
        }
    }

    /// [`Writer::run_batch`] for a write that concurrent calls may share a statement for on
    /// PostgreSQL (`grouped.rs`); the SQLite writer commits queued batches together anyway.
    pub(super) async fn run_grouped(
        &self,
        sqlite: &'static str,
        postgres: &'static GroupedWrite,
        values: Vec<Bound>,
    ) -> Result<Vec<PaymentRow>, StoreError> {
        match self {
            Writer::Postgres(_, groups) => groups.run(postgres, values).await,
            Writer::Sqlite(_) => self.run_batch(sqlite, postgres.one, values).await,
        }
    }

    /// Closes the PostgreSQL connections, or ends the SQLite writer task once the writes queued
    /// before are done; later writes fail as unavailable.
    pub(super) async fn close(&self) {
        match self {
            Writer::Postgres(connections, _) => connections.close().await,
            // The task ends when every sender is gone; this one is not the last while the store
            // is shared, so ask for a loan and keep it: nothing runs after it.
            Writer::Sqlite(requests) => {
                let (reply, loan) = oneshot::channel();
                if requests.send(Request::Lend { reply }).is_ok()
                    && let Ok(mut loan) = loan.await
                    && let Some(conn) = loan.conn.take()
                {
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
            Some(TxInner::Postgres(held)) => held.conn(),
            Some(TxInner::Sqlite(loan)) => loan
                .conn
                .as_mut()
                .expect("a begun SQLite write holds the connection"),
            None => unreachable!("a write transaction is used after it ended"),
        }
    }

    pub(super) async fn commit(self) -> Result<(), StoreError> {
        self.end(true).await
    }

    pub(super) async fn rollback(self) -> Result<(), StoreError> {
        self.end(false).await
    }

    /// Commits (`commit`) or rolls back.
    async fn end(mut self, commit: bool) -> Result<(), StoreError> {
        let statement = if commit { "commit" } else { "rollback" };
        match self.inner.take() {
            Some(TxInner::Postgres(mut held)) => {
                // PostgreSQL ends the transaction either way; the connection goes back unless
                // it was lost.
                let ended = held.conn().execute(statement).await;
                held.ended(ended)?;
            }
            Some(TxInner::Sqlite(mut loan)) => {
                // On failure the loan goes back still in the transaction: rolled back there.
                loan.conn()?.execute(statement).await?;
                loan.in_transaction = false;
            }
            None => {}
        }
        Ok(())
    }
}

/// A batch waiting for its group's commit.
struct Batch {
    sql: &'static str,
    values: Vec<Bound>,
    reply: oneshot::Sender<Result<Vec<PaymentRow>, StoreError>>,
}

/// The SQLite writer: runs batches (those queued together in one commit) and lends the sqlx
/// connection, one request at a time.
async fn run_sqlite_writer(
    mut conn: AnyConnection,
    batches: rusqlite::Connection,
    mut queue: mpsc::UnboundedReceiver<Request>,
) {
    let mut next = None;
    loop {
        let request = match next.take() {
            Some(request) => request,
            None => match queue.recv().await {
                Some(request) => request,
                None => break,
            },
        };
        match request {
            Request::Batch { sql, values, reply } => {
                let mut group = vec![Batch { sql, values, reply }];
                while group.len() < MAX_GROUP {
                    match queue.try_recv() {
                        Ok(Request::Batch { sql, values, reply }) => {
                            group.push(Batch { sql, values, reply })
                        }
                        Ok(lend) => {
                            next = Some(lend);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                if !commit_group(&batches, group) {
                    return;
                }
            }
            Request::Lend { reply } => {
                let (back, returned) = oneshot::channel();
                let loan = Loan {
                    conn: Some(conn),
                    in_transaction: false,
                    back: Some(back),
                };
                // A borrower that went away before taking it drops it here: it comes straight back.
                drop(reply.send(loan));
                let Ok(Returned {
                    conn: mut returned,
                    in_transaction,
                }) = returned.await
                else {
                    // Kept for good: the store was closed.
                    return;
                };
                if in_transaction && !roll_back(&mut returned).await {
                    return;
                }
                conn = returned;
            }
        }
    }
    let _ = conn.close().await;
}

/// Runs a group of batches in one transaction, each in a savepoint, commits, then answers each
/// caller (an error for a batch that failed, which was rolled back alone). False when rolling
/// back failed: the writer then stops (see `roll_back`).
fn commit_group(conn: &rusqlite::Connection, group: Vec<Batch>) -> bool {
    if let Err(error) = conn.execute_batch("begin immediate") {
        let message = error.to_string();
        answer_failed(group, Some(StoreError::from(error)), &message);
        return true;
    }
    let results = match run_group(conn, &group) {
        Ok(results) => results,
        Err(error) => {
            tracing::error!(%error, "rolling back a failed write batch failed; the SQLite writer stops");
            let _ = conn.execute_batch("rollback");
            return false;
        }
    };
    // A batch alone ran without a savepoint: if it failed, its transaction is rolled back whole.
    let end = if matches!(results.as_slice(), [Err(_)]) {
        "rollback"
    } else {
        "commit"
    };
    if let Err(error) = conn.execute_batch(end) {
        let message = error.to_string();
        if let Err(error) = conn.execute_batch("rollback") {
            tracing::error!(%error, "rolling back a failed write failed; the SQLite writer stops");
            return false;
        }
        answer_failed(group, None, &message);
        return true;
    }
    for (batch, result) in group.into_iter().zip(results) {
        let _ = batch.reply.send(result);
    }
    true
}

/// Runs the group's batches inside the open transaction: a batch alone as it is, several each in
/// a savepoint. The outer error is a failure to roll a savepoint back.
fn run_group(
    conn: &rusqlite::Connection,
    group: &[Batch],
) -> rusqlite::Result<Vec<Result<Vec<PaymentRow>, StoreError>>> {
    let run = |conn: &rusqlite::Connection, batch: &Batch| {
        sqlite::run_batch(conn, batch.sql, &batch.values)
    };
    if let [batch] = group {
        return Ok(vec![run(conn, batch).map_err(StoreError::from)]);
    }
    group
        .iter()
        .map(|batch| Ok(savepoint(conn, |conn| run(conn, batch))?.map_err(StoreError::from)))
        .collect()
}

/// Answers every batch of a group whose transaction could not begin or end: `first` (if any) to
/// the first, the others that the transaction failed with `message`.
fn answer_failed(group: Vec<Batch>, mut first: Option<StoreError>, message: &str) {
    for batch in group {
        let error = first.take().unwrap_or_else(|| failed_commit(message));
        let _ = batch.reply.send(Err(error));
    }
}

/// Runs `run` in a savepoint: released when it succeeded, rolled back to when it failed. The
/// outer error is a failure to roll back.
fn savepoint<T>(
    conn: &rusqlite::Connection,
    run: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T>,
) -> rusqlite::Result<rusqlite::Result<T>> {
    if let Err(error) = conn.prepare_cached("savepoint batch")?.execute([]) {
        return Ok(Err(error));
    }
    let result = run(conn);
    if result.is_err() {
        conn.prepare_cached("rollback to batch")?.execute([])?;
    }
    conn.prepare_cached("release batch")?.execute([])?;
    Ok(result)
}

/// What each batch of a group whose transaction could not begin or commit is answered.
fn failed_commit(message: &str) -> StoreError {
    StoreError::Unavailable(format!("the write transaction failed: {message}").into())
}

/// Rolls back whatever transaction the connection has open. False when that failed for any
/// reason other than there being none: the connection is then closed (SQLite rolls back on
/// close) and the writer stops, so that no later write runs inside a stale transaction.
async fn roll_back(conn: &mut AnyConnection) -> bool {
    match conn.execute("rollback").await {
        Ok(_) => true,
        Err(sqlx::Error::Database(db)) if db.message().contains("no transaction is active") => true,
        Err(error) => {
            tracing::error!(%error, "rolling back a failed write failed; the SQLite writer stops");
            false
        }
    }
}

/// Binds `values` in order to `$1`, `$2`, … of a sqlx query.
pub(super) fn bind_all<'q>(
    mut query: Query<'q, Any, AnyArguments<'q>>,
    values: Vec<Bound>,
) -> Query<'q, Any, AnyArguments<'q>> {
    for value in values {
        query = match value {
            Bound::Text(text) => query.bind(text),
            Bound::Int(int) => query.bind(int),
        };
    }
    query
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn sqlite_writer() -> (tempfile::TempDir, String, Writer) {
        sqlx::any::install_default_drivers();
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite:{}?mode=rwc", dir.path().join("w.db").display());
        let mut conn = AnyConnection::connect(&url).await.expect("connect");
        conn.execute(
            "pragma journal_mode = wal; \
             create table t (id integer primary key, name text not null unique);",
        )
        .await
        .expect("schema");
        let batches = sqlite::open(&url).expect("rusqlite connection");
        (dir, url, Writer::sqlite(conn, batches).expect("writer"))
    }

    async fn insert_name(tx: &mut WriteTx, name: &str) {
        sqlx::query("insert into t (name) values ($1)")
            .bind(name)
            .execute(tx.conn())
            .await
            .expect("insert");
    }

    async fn names(url: &str) -> Vec<String> {
        let mut conn = AnyConnection::connect(url).await.expect("reader");
        let rows: Vec<(String,)> = sqlx::query_as("select name from t order by id")
            .fetch_all(&mut conn)
            .await
            .expect("read");
        rows.into_iter().map(|(name,)| name).collect()
    }

    #[tokio::test]
    async fn a_transaction_dropped_before_commit_is_rolled_back_before_the_next_write() {
        let (_dir, url, writer) = sqlite_writer().await;
        let mut tx = writer.begin().await.expect("begin");
        insert_name(&mut tx, "dropped").await;
        drop(tx);
        // The next write gets the connection only after the rollback, outside any transaction.
        let mut tx = writer.begin().await.expect("begin again");
        insert_name(&mut tx, "kept").await;
        tx.commit().await.expect("commit");
        assert_eq!(names(&url).await, ["kept"]);
    }

    #[tokio::test]
    async fn a_batch_failing_half_way_leaves_nothing_and_the_writer_goes_on() {
        let (_dir, url, writer) = sqlite_writer().await;
        const BATCH: &str = "insert into t (name) values ($1); insert into t (name) values ($2)";
        let ok = writer
            .run_batch(BATCH, BATCH, vec![Bound::text("a"), Bound::text("b")])
            .await;
        assert!(ok.is_ok(), "{ok:?}");
        // The second insert breaks the unique index after the first one ran.
        let failed = writer
            .run_batch(BATCH, BATCH, vec![Bound::text("c"), Bound::text("a")])
            .await;
        assert!(matches!(failed, Err(StoreError::Conflict)), "{failed:?}");
        let ok = writer
            .run_batch(BATCH, BATCH, vec![Bound::text("d"), Bound::text("e")])
            .await;
        assert!(ok.is_ok(), "{ok:?}");
        assert_eq!(names(&url).await, ["a", "b", "d", "e"]);
    }

    #[tokio::test]
    async fn a_batch_whose_caller_went_away_still_runs_to_its_end() {
        let (_dir, url, writer) = sqlite_writer().await;
        const BATCH: &str = "insert into t (name) values ($1); insert into t (name) values ($2)";
        let abandoned = writer.run_batch(BATCH, BATCH, vec![Bound::text("x"), Bound::text("y")]);
        // Polled once (the request is queued), then dropped, as a cancelled RPC would be.
        let _ = tokio::time::timeout(std::time::Duration::ZERO, abandoned).await;
        let mut tx = writer.begin().await.expect("begin after");
        insert_name(&mut tx, "z").await;
        tx.commit().await.expect("commit");
        assert_eq!(names(&url).await, ["x", "y", "z"]);
    }

    #[tokio::test]
    async fn batches_queued_together_commit_together_and_a_failing_one_is_rolled_back_alone() {
        let (_dir, url, writer) = sqlite_writer().await;
        const BATCH: &str = "insert into t (name) values ($1); insert into t (name) values ($2)";
        // A borrowed transaction keeps the writer busy while three batches queue behind it.
        let mut tx = writer.begin().await.expect("begin");
        insert_name(&mut tx, "held").await;
        let mut first =
            Box::pin(writer.run_batch(BATCH, BATCH, vec![Bound::text("p"), Bound::text("q")]));
        // Its second insert takes the name the first batch inserted in the same transaction.
        let mut second =
            Box::pin(writer.run_batch(BATCH, BATCH, vec![Bound::text("r"), Bound::text("p")]));
        let mut third =
            Box::pin(writer.run_batch(BATCH, BATCH, vec![Bound::text("s"), Bound::text("t")]));
        for queued in [&mut first, &mut second, &mut third] {
            assert!(
                futures::poll!(queued.as_mut()).is_pending(),
                "queued, not answered"
            );
        }
        tx.commit().await.expect("commit");
        let (first, second, third) = tokio::join!(first, second, third);
        assert!(first.is_ok(), "{first:?}");
        assert!(matches!(second, Err(StoreError::Conflict)), "{second:?}");
        assert!(third.is_ok(), "{third:?}");
        assert_eq!(names(&url).await, ["held", "p", "q", "s", "t"]);
    }
}

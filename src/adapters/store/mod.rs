//! The store: the [`PaymentStore`](crate::app::ports::PaymentStore) port on SQLite (the embedded
//! default) or PostgreSQL (production), through sqlx's `Any` driver and its pools. Both engines
//! run the same SQL (`$n` parameters, partial unique indexes, `on conflict`); they differ only in
//! their migrations, their pools, the reconciler's row locks, and how a committed change reaches
//! the watchers of other replicas.
//!
//! - **SQLite** takes one writer at a time, so the store has a write pool of exactly one
//!   connection: writes queue for it in order instead of colliding on the database lock. Reads
//!   run beside it on a read pool (WAL mode lets them). Changes are announced in this process
//!   after their commit: SQLite means one replica.
//! - **PostgreSQL**: one pool for reads and writes. A trigger on `payment_event` sends `NOTIFY`
//!   at commit (migration `…_announce_changes`); each replica's listener forwards it.
//!
//! One file per concern: [`payments`] (the `payment` table and its row type), [`refunds`] (the
//! `refund` table, its row type, and the payment's refund amounts), [`idempotency`],
//! [`webhook_events`], [`reconcile_claims`], [`customers`], [`change_feed`] (the event log and
//! the announcements) and [`push_deliveries`] (where each tenant's pushes stand). A status
//! change (of a payment or of a refund) is written with its event in
//! one transaction, and counted and announced once committed: through a [`WriteTx`], or, for the
//! create's two writes, as a [`OneTrip`] (one round trip each), which concurrent creates share:
//! one statement for many on PostgreSQL ([`postgres_grouped_creates`]), one transaction on SQLite
//! ([`sqlite_create_writes`]).

mod budget_shares;
mod captures;
mod change_feed;
mod customers;
mod event_feed;
mod idempotency;
mod payment_links;
mod payment_row;
mod payments;
mod postgres_grouped_creates;
mod push_deliveries;
mod reconcile_claims;
mod refunds;
mod sqlite_create_writes;
mod webhook_events;

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions, install_default_drivers};
use sqlx::{Any, AnyConnection, AnyPool, Executor};

pub use self::budget_shares::BudgetShare;
use crate::app::ports::StoreError;
use crate::domain::{EventSource, PaymentStatus, RefundStatus};

/// Which database engine a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database URL that is neither `sqlite:FILE` nor `postgres://…`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("database URL must be sqlite:FILE (not in memory) or postgres://…")]
pub struct UnsupportedUrl;

impl Backend {
    /// Reads the engine from the URL scheme.
    pub fn from_url(url: &str) -> Result<Backend, UnsupportedUrl> {
        if url.starts_with("sqlite:") && !url.contains(":memory:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            Err(UnsupportedUrl)
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict,
            // PostgreSQL going away under a session (shutdown, restart, failover) or refusing
            // new ones: the database is unavailable, not the request wrong. SQLSTATE class 08
            // (connection exception), 57P01–57P03 (admin or crash shutdown, cannot connect now),
            // 53300 (too many connections).
            sqlx::Error::Database(db)
                if db.code().is_some_and(|code| {
                    code.starts_with("08")
                        || matches!(code.as_ref(), "57P01" | "57P02" | "57P03" | "53300")
                }) =>
            {
                StoreError::Unavailable(Box::new(error))
            }
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Tls(_) => StoreError::Unavailable(Box::new(error)),
            _ => StoreError::Database(Box::new(error)),
        }
    }
}

static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Set on every SQLite connection: WAL lets reads run beside the one writer; `busy_timeout`
/// bounds the wait when another process holds the lock (a second `paybridge migrate`, a
/// recovery after a crash); `synchronous = normal` is durable in WAL mode up to the last
/// checkpoint's power loss, never corrupt.
const SQLITE_PRAGMAS: &str = "pragma journal_mode = wal; pragma busy_timeout = 10000; \
     pragma foreign_keys = on; pragma synchronous = normal; pragma temp_store = memory;";

/// How long a call waits for a free connection before the database counts as unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// The store: its pools and the payments' change announcements.
#[derive(Debug, Clone)]
pub struct Store {
    /// Where writes run: one connection on SQLite, the shared pool on PostgreSQL.
    write: AnyPool,
    /// Where reads run: a pool beside the writer on SQLite, the shared pool on PostgreSQL.
    read: AnyPool,
    backend: Backend,
    /// On SQLite, where the create's two writes run (see [`sqlite_create_writes`]).
    sqlite_create_writes: Option<std::sync::Arc<sqlite_create_writes::SqliteCreateWrites>>,
    /// On PostgreSQL, the queues of the create's two writes (see [`postgres_grouped_creates`]).
    grouped_creates: [std::sync::Arc<postgres_grouped_creates::GroupedWrite>; 2],
    /// Ids of payments as their changes commit (see [`change_feed`]).
    changes: tokio::sync::broadcast::Sender<String>,
}

impl Store {
    /// Connects (creating the SQLite file if needed). Does not migrate.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store, StoreError> {
        install_default_drivers();
        let backend =
            Backend::from_url(url).map_err(|error| StoreError::Database(Box::new(error)))?;
        let mut sqlite_create_writes = None;
        let (write, read) = match backend {
            Backend::Sqlite => {
                let options = AnyConnectOptions::from_str(&sqlite_url_creating_file(url))?;
                // The writer first: it creates the file and switches it to WAL.
                let write = sqlite_pool(1).connect_with(options.clone()).await?;
                let read = sqlite_pool(max_connections.max(1))
                    .connect_with(options)
                    .await?;
                sqlite_create_writes = Some(std::sync::Arc::new(
                    sqlite_create_writes::SqliteCreateWrites::open(url, SQLITE_PRAGMAS)?,
                ));
                (write, read)
            }
            Backend::Postgres => {
                let pool = pool_options(max_connections.max(1)).connect(url).await?;
                (pool.clone(), pool)
            }
        };
        let changes = change_feed::start(backend, url).await?;
        Ok(Store {
            write,
            read,
            backend,
            sqlite_create_writes,
            grouped_creates: Default::default(),
            changes,
        })
    }

    fn migrator(&self) -> &'static sqlx::migrate::Migrator {
        match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATOR,
            Backend::Postgres => &POSTGRES_MIGRATOR,
        }
    }

    /// Applies the migrations of this engine.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let _writer = self.hold_writer().await;
        self.migrator()
            .run(&self.write)
            .await
            .map_err(|error| match error {
                sqlx::migrate::MigrateError::Execute(error) => StoreError::from(error),
                other => StoreError::Database(Box::new(other)),
            })
    }

    /// True when the database answers and every migration this binary knows is applied.
    pub async fn is_ready(&self) -> Result<bool, StoreError> {
        let applied: Vec<(i64,)> =
            match sqlx::query_as("select version from _sqlx_migrations where success")
                .fetch_all(&self.read)
                .await
                .map_err(StoreError::from)
            {
                Ok(rows) => rows,
                // No migration table yet: reachable but not migrated.
                Err(StoreError::Database(_)) => return Ok(false),
                Err(other) => return Err(other),
            };
        Ok(self
            .migrator()
            .iter()
            .all(|m| applied.iter().any(|(version,)| *version == m.version)))
    }

    /// Closes the database connections (on shutdown).
    pub async fn close(&self) {
        self.write.close().await;
        self.read.close().await;
    }

    /// On SQLite, waits for its one writer (see [`sqlite_create_writes`]); every SQLite write
    /// holds it.
    async fn hold_writer(&self) -> Option<sqlite_create_writes::SqliteWriter<'_>> {
        match &self.sqlite_create_writes {
            Some(writes) => Some(writes.hold().await),
            None => None,
        }
    }

    /// Begins a write transaction.
    async fn begin(&self) -> Result<WriteTx<'_>, StoreError> {
        let writer = self.hold_writer().await;
        Ok(WriteTx {
            tx: self.write.begin().await?,
            _writer: writer,
            store: self,
            changes: Vec::new(),
        })
    }
}

/// The event log's insert, up to its values: the one place that names its columns. `tenant` is
/// the payment's and `object` the JSON of the payment's row or the refund's as it stood right
/// after the change ([`json_of_row`]), both read in the insert from the row the transaction just
/// wrote; `commit_group` is left to its default (PostgreSQL: the writing transaction's id; SQLite:
/// 0), see [`event_feed`].
const EVENT_INSERT: &str = "insert into payment_event \
     (payment_id, source, from_status, to_status, stripe_event_id, created_at, refund_id, \
      tenant, object)";

/// The SQL expression of the JSON text of `alias`'s `columns` (an event's `object`): SQLite's
/// `json_object`, PostgreSQL's `json_build_object`. Columns are named by their row type's
/// `COLUMNS`, so a new column reaches the feed by itself.
fn json_of_row(backend: Backend, alias: &str, columns: &[&str]) -> String {
    let pairs: Vec<String> = columns
        .iter()
        .map(|column| format!("'{column}', {alias}.{column}"))
        .collect();
    match backend {
        Backend::Sqlite => format!("json_object({})", pairs.join(", ")),
        Backend::Postgres => format!("json_build_object({})::text", pairs.join(", ")),
    }
}

/// What an event of a payment's log records: a change of the payment's status, or of one of its
/// refunds' (whose id the event then names).
#[derive(Debug, Clone, Copy)]
enum Transition {
    Payment {
        from: Option<PaymentStatus>,
        to: PaymentStatus,
    },
    Refund {
        from: Option<RefundStatus>,
        to: RefundStatus,
    },
    /// A change of the payment's dispute (the payment's status unchanged).
    Dispute,
}

impl Transition {
    fn old_name(self) -> Option<&'static str> {
        match self {
            Transition::Payment { from, .. } => from.map(PaymentStatus::as_str),
            Transition::Refund { from, .. } => from.map(RefundStatus::as_str),
            Transition::Dispute => None,
        }
    }

    fn new_name(self) -> &'static str {
        match self {
            Transition::Payment { to, .. } => to.as_str(),
            Transition::Refund { to, .. } => to.as_str(),
            Transition::Dispute => "dispute",
        }
    }
}

/// One change appended to a payment's event log.
#[derive(Debug)]
struct AppendedEvent<'a> {
    payment_id: &'a str,
    /// The refund that changed, for a [`Transition::Refund`].
    refund_id: Option<&'a str>,
    source: EventSource,
    transition: Transition,
    /// The webhook event that made the change, where one did.
    stripe_event_id: Option<&'a str>,
    now: i64,
}

/// A committed change, to count and announce (as a change of its payment).
#[derive(Debug)]
struct Change {
    payment_id: String,
    source: EventSource,
    transition: Transition,
}

/// One of the create's two writes (a payment and its first event; its intent and that event),
/// written in one round trip because every create makes both: on PostgreSQL one statement whose
/// data-modifying `with` clauses write the row and its event (a statement is atomic on its own);
/// on SQLite, which has no such clauses, the same writes as a batch of statements in one
/// transaction (see [`sqlite_create_writes`]). Both answer the payment's row when they wrote
/// it, nothing otherwise.
#[derive(Debug)]
struct OneTrip {
    sqlite: String,
    postgres: String,
    /// On PostgreSQL, the same write for many calls at once (see [`postgres_grouped_creates`]):
    /// `$1` is a JSON array with one object per call, holding its values under `fields` (the
    /// names of `$1`, `$2`, … in order). Answers the rows the calls' own statements would.
    postgres_many: String,
    fields: Vec<&'static str>,
    /// Which value (0-based) is the payment id: a returned row answers the call with that id.
    key: usize,
    /// Which of the store's `grouped_creates` queues the write waits in.
    queue: usize,
}

/// A value bound to a [`OneTrip`] write's parameter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum SqlValue {
    Text(Option<String>),
    Int(Option<i64>),
}

impl From<String> for SqlValue {
    fn from(text: String) -> Self {
        SqlValue::Text(Some(text))
    }
}

impl From<&str> for SqlValue {
    fn from(text: &str) -> Self {
        SqlValue::Text(Some(text.to_owned()))
    }
}

impl From<Option<String>> for SqlValue {
    fn from(text: Option<String>) -> Self {
        SqlValue::Text(text)
    }
}

impl From<i64> for SqlValue {
    fn from(int: i64) -> Self {
        SqlValue::Int(Some(int))
    }
}

impl From<Option<i64>> for SqlValue {
    fn from(int: Option<i64>) -> Self {
        SqlValue::Int(int)
    }
}

impl Store {
    /// Runs a [`OneTrip`] write; when it wrote a row, counts and announces `change`.
    async fn write_in_one_trip(
        &self,
        write: &'static OneTrip,
        values: Vec<SqlValue>,
        change: Change,
    ) -> Result<Vec<payment_row::PaymentRow>, StoreError> {
        let rows = match &self.sqlite_create_writes {
            None => {
                let queue = &self.grouped_creates[write.queue];
                queue.run(&self.write, write, values).await?
            }
            Some(writes) => writes.run(&write.sqlite, values).await?,
        };
        if !rows.is_empty() {
            self.committed([change]);
        }
        Ok(rows)
    }

    /// After a commit: counts each change in its transitions metric (the payments' or the
    /// refunds') and announces it as a change of its payment (see [`change_feed`]).
    fn committed(&self, changes: impl IntoIterator<Item = Change>) {
        for change in changes {
            let metrics = &crate::metrics::METRICS;
            let family = match change.transition {
                Transition::Payment { .. } => &metrics.transitions,
                Transition::Refund { .. } => &metrics.refund_transitions,
                Transition::Dispute => {
                    metrics
                        .dispute_changes
                        .get_or_create(&crate::metrics::SourceLabels {
                            source: change.source.as_str(),
                        })
                        .inc();
                    self.announce_committed(change.payment_id);
                    continue;
                }
            };
            family
                .get_or_create(&crate::metrics::TransitionLabels {
                    from: change.transition.old_name().unwrap_or("none"),
                    to: change.transition.new_name(),
                    source: change.source.as_str(),
                })
                .inc();
            self.announce_committed(change.payment_id);
        }
    }
}

/// A write transaction. Dropped without [`WriteTx::commit`], it is rolled back.
struct WriteTx<'s> {
    tx: sqlx::Transaction<'static, Any>,
    /// SQLite's one writer, held until the transaction ends (dropped after `tx`).
    _writer: Option<sqlite_create_writes::SqliteWriter<'s>>,
    store: &'s Store,
    /// The changes appended so far, counted and announced once committed.
    changes: Vec<Change>,
}

impl WriteTx<'_> {
    fn conn(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }

    /// Appends a change of a payment or of one of its refunds to the payment's event log, with
    /// the payment's tenant and the changed row (the payment's, or the refund's) as it stands now,
    /// after the change.
    async fn append_event(&mut self, event: AppendedEvent<'_>) -> Result<(), StoreError> {
        /// `{EVENT_INSERT}` of the parameters and of the changed row, per engine and kind.
        fn sql(backend: Backend, refund: bool) -> String {
            let (table, alias, key, json) = if refund {
                let json = refunds::refund_json(backend, "r");
                ("refund", "r", "refund_id = $7", json)
            } else {
                let json = payment_row::payment_json(backend, "p");
                ("payment", "p", "payment_id = $1", json)
            };
            format!(
                "{EVENT_INSERT} select $1, $2, $3, $4, $5, $6, $7, {alias}.tenant, {json} \
                 from {table} {alias} where {alias}.{key}"
            )
        }
        static SQL: std::sync::LazyLock<[String; 4]> = std::sync::LazyLock::new(|| {
            [
                sql(Backend::Sqlite, false),
                sql(Backend::Sqlite, true),
                sql(Backend::Postgres, false),
                sql(Backend::Postgres, true),
            ]
        });
        debug_assert_eq!(
            event.refund_id.is_some(),
            matches!(event.transition, Transition::Refund { .. }),
            "a refund's event names its refund, a payment's none"
        );
        let index = match self.store.backend {
            Backend::Sqlite => 0,
            Backend::Postgres => 2,
        } + usize::from(event.refund_id.is_some());
        let appended = sqlx::query(&SQL[index])
            .bind(event.payment_id)
            .bind(event.source.as_str())
            .bind(event.transition.old_name())
            .bind(event.transition.new_name())
            .bind(event.stripe_event_id)
            .bind(event.now)
            .bind(event.refund_id)
            .execute(self.conn())
            .await?
            .rows_affected();
        if appended != 1 {
            return Err(StoreError::Corrupt(format!(
                "event of payment {} (refund {:?}): its row is missing",
                event.payment_id, event.refund_id
            )));
        }
        self.changes.push(Change {
            payment_id: event.payment_id.to_owned(),
            source: event.source,
            transition: event.transition,
        });
        Ok(())
    }

    /// Commits, then counts the changes and announces them.
    async fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().await?;
        self.store.committed(self.changes);
        Ok(())
    }
}

fn pool_options(max_connections: u32) -> AnyPoolOptions {
    AnyPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        // A dead connection fails its statement (answered as unavailable) and is dropped when
        // it comes back; a ping before every use would add a round trip to each statement.
        .test_before_acquire(false)
}

fn sqlite_pool(max_connections: u32) -> AnyPoolOptions {
    pool_options(max_connections).after_connect(|conn, _| {
        Box::pin(async move {
            conn.execute(SQLITE_PRAGMAS).await?;
            Ok(())
        })
    })
}

/// `sqlite:path` → `sqlite:path?mode=rwc`, so the file is created on first start.
fn sqlite_url_creating_file(url: &str) -> String {
    if url.contains("mode=") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    }
}

fn parse_status(text: &str) -> Result<PaymentStatus, StoreError> {
    PaymentStatus::from_str(text).map_err(|()| StoreError::Corrupt(format!("status {text:?}")))
}

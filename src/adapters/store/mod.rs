//! The payment store: one implementation for SQLite (the embedded default) and PostgreSQL
//! (production). Both speak the same SQL here (`$n` parameters, partial unique indexes,
//! `on conflict`), except the migrations, the connection set-up, how a write transaction begins,
//! and the writes on the hot path, which go to the database as one round trip each: a batch of
//! statements run by the SQLite writer, one statement with data-modifying `with` clauses on
//! PostgreSQL. PostgreSQL runs on sqlx's `Any` driver; SQLite's reads and batches on rusqlite in
//! the calling thread (`sqlite.rs`), its transactions held across awaits on sqlx.

mod grouped;
mod postgres;
mod readers;
mod rows;
mod sqlite;
mod writer;

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::install_default_drivers;
use sqlx::{AnyConnection, Connection, Executor};

use crate::domain::{LastPaymentError, Payment, PaymentStatus, StatusChange};
use grouped::{GroupedWrite, Groups};
use postgres::Connections;
use readers::Readers;
use rows::{LookupRow, PaymentRow};
use writer::{Bound, WriteTx, Writer};

/// Which database engine the URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// Reads the engine from the URL scheme.
    pub fn from_url(url: &str) -> Result<Backend, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            Err(StoreError::UnsupportedUrl)
        }
    }
}

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL is neither `sqlite:` nor `postgres://`.
    #[error("database URL must start with sqlite: or postgres://")]
    UnsupportedUrl,
    /// A unique index refused the write: a concurrent writer got there first.
    #[error("a concurrent write took the same unique key")]
    Conflict,
    /// The database could not be reached (connection refused, pool timed out, I/O, locked).
    #[error("database unavailable")]
    Unavailable(#[source] BoxError),
    /// A stored row could not be read back into the domain (a bug or a hand-edited row).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error")]
    Database(#[source] BoxError),
}

/// The cause of a store error, from sqlx or rusqlite.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

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

/// Whether a change is announced on PostgreSQL (`NOTIFY` at commit, which every replica's
/// watchers hear; on SQLite this process's watchers always hear at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announce {
    Yes,
    /// For the first attach of a payment, inside the create call that wrote it: its id has not
    /// been answered to anyone yet, so only a caller who listed it in those milliseconds could be
    /// watching, and a watcher re-reads every 5 s anyway (`app::watch`). The announcement cost
    /// the server about 60 µs of CPU per create (a signal to each listening session, which wakes
    /// and forwards it), 15% of its work on a create.
    No,
}

/// What the idempotency table remembers of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    pub request_fingerprint: String,
    pub payment_id: String,
}

/// What a create finds before it writes (see [`Store::find_for_create`]).
#[derive(Debug, Default)]
pub struct CreateLookup {
    /// The idempotency key's record and the payment it names.
    pub key: Option<(IdempotencyRecord, Payment)>,
    /// The invoice's open or succeeded payment.
    pub live: Option<Payment>,
}

/// Where a status change came from; stored in `payment_event.source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventSource {
    Create,
    Return,
    Webhook,
    Reconcile,
    Cancel,
    Refresh,
}

impl EventSource {
    fn as_str(self) -> &'static str {
        match self {
            EventSource::Create => "create",
            EventSource::Return => "return",
            EventSource::Webhook => "webhook",
            EventSource::Reconcile => "reconcile",
            EventSource::Cancel => "cancel",
            EventSource::Refresh => "refresh",
        }
    }
}

/// A position in the newest-first listing: the last row of the previous page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListCursor {
    pub created_at: i64,
    pub payment_id: String,
}

/// Filter and page of `list_payments`.
#[derive(Debug, Clone)]
pub struct ListQuery<'a> {
    pub tenant: &'a str,
    pub invoice_id: Option<&'a str>,
    pub status: Option<PaymentStatus>,
    pub after: Option<ListCursor>,
    pub limit: u32,
}

/// The payment store.
#[derive(Debug, Clone)]
pub struct Store {
    /// Where reads run: on SQLite a set of rusqlite connections read in the calling thread (see
    /// `sqlite.rs`), on PostgreSQL the shared set of connections (`postgres.rs`).
    readers: Arc<Readers>,
    /// Where write transactions run: on SQLite the one writer thread and its connections (see
    /// `writer.rs`), on PostgreSQL the same connections as reads.
    writer: Writer,
    backend: Backend,
    /// Ids of payments that changed. On SQLite the store sends them after each commit; on
    /// PostgreSQL a `LISTEN` task forwards `pg_notify`s sent inside each changing transaction, so
    /// every replica's watchers hear every replica's changes.
    changes: tokio::sync::broadcast::Sender<String>,
}

/// The PostgreSQL channel payment changes are announced on.
const CHANGE_CHANNEL: &str = "paybridge_payment_changed";

/// What `record_webhook_event` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventRecorded {
    /// The event (and its change, if any) is committed.
    Recorded,
    /// The event id was recorded before: nothing done.
    Duplicate,
    /// The payment changed meanwhile: nothing done, try again.
    Conflict,
}

/// A verified webhook event as stored.
#[derive(Debug, Clone)]
pub struct WebhookEventRecord<'a> {
    pub stripe_event_id: &'a str,
    pub event_type: &'a str,
    pub event_created: i64,
    pub payment_id: Option<&'a str>,
    /// applied, ignored, stale, mismatch, not_ours
    pub result: &'a str,
}

static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The columns of a `payment` row as [`PaymentRow`] reads them, as a literal for `concat!`, so
/// that the hot statements are built at compile time.
macro_rules! payment_columns {
    () => {
        "payment_id, tenant, invoice_id, amount, currency, status, \
         stripe_payment_intent_id, stripe_customer_id, client_secret, description, metadata, \
         success_url, failure_url, last_payment_error_code, last_payment_error_message, \
         created_at, updated_at, last_event_created"
    };
}

const PAYMENT_COLUMNS: &str = payment_columns!();

impl Store {
    /// Connects (creating the SQLite file if needed). Does not migrate.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store, StoreError> {
        install_default_drivers();
        let backend = Backend::from_url(url)?;
        let (readers, writer) = match backend {
            Backend::Sqlite => {
                let url = sqlite_url_creating_file(url);
                // The writer first: it creates the file and switches it to WAL.
                let writer = Writer::sqlite(open_sqlite(&url).await?, sqlite::open(&url)?)
                    .map_err(|error| StoreError::Unavailable(Box::new(error)))?;
                let readers = Readers::Sqlite(sqlite::Readers::open(&url, max_connections)?);
                (readers, writer)
            }
            Backend::Postgres => {
                let connections = Connections::connect(url, max_connections).await?;
                let groups = Groups::new(Arc::clone(&connections));
                (
                    Readers::Postgres(Arc::clone(&connections)),
                    Writer::Postgres(connections, groups),
                )
            }
        };
        let (changes, _) = tokio::sync::broadcast::channel(1024);
        if backend == Backend::Postgres {
            let mut listener = sqlx::postgres::PgListener::connect(url).await?;
            listener.listen(CHANGE_CHANNEL).await?;
            tokio::spawn(forward_notifications(listener, changes.clone()));
        }
        Ok(Store {
            readers: Arc::new(readers),
            writer,
            backend,
            changes,
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Applies the migrations of this backend.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match &self.writer {
            Writer::Sqlite(_) => {
                SQLITE_MIGRATOR
                    .run(self.writer.lend().await?.conn()?)
                    .await?
            }
            Writer::Postgres(connections, _) => {
                let mut held = connections.acquire().await?;
                POSTGRES_MIGRATOR.run(held.conn()).await?;
                held.release();
            }
        }
        Ok(())
    }

    /// True when the database answers and every migration this binary knows is applied.
    pub async fn is_ready(&self) -> Result<bool, StoreError> {
        let migrator = match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATOR,
            Backend::Postgres => &POSTGRES_MIGRATOR,
        };
        let applied: Vec<(i64,)> = match self
            .readers
            .read("select version from _sqlx_migrations where success", vec![])
            .await
        {
            Ok(rows) => rows,
            // No migration table yet: reachable but not migrated.
            Err(StoreError::Database(_)) => return Ok(false),
            Err(other) => return Err(other),
        };
        Ok(migrator
            .iter()
            .all(|m| applied.iter().any(|(version,)| *version == m.version)))
    }

    /// Closes the database connections (on shutdown).
    pub async fn close(&self) {
        self.writer.close().await;
        self.readers.close().await;
    }

    /// Ids of payments as they change (on any replica, on PostgreSQL). A receiver that falls
    /// behind loses ids (`Lagged`) and should re-read what it follows.
    pub fn subscribe_changes(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.changes.subscribe()
    }

    /// Inside a changing transaction: on PostgreSQL, announce the change on commit.
    async fn announce_in(&self, tx: &mut WriteTx, payment_id: &str) -> Result<(), StoreError> {
        if self.backend == Backend::Postgres {
            sqlx::query("select pg_notify($1, $2)")
                .bind(CHANGE_CHANNEL)
                .bind(payment_id)
                .execute(tx.conn())
                .await?;
        }
        Ok(())
    }

    /// After a commit: on SQLite (one process), tell this process's watchers directly.
    fn announce_committed(&self, payment_id: &str) {
        if self.backend == Backend::Sqlite {
            let _ = self.changes.send(payment_id.to_owned());
        }
    }

    /// What a create must know before it writes, in one query: the payment an idempotency key
    /// already names (with the fingerprint of the request that named it), and the invoice's live
    /// payment — open or succeeded, at most one by the unique index. Often the same payment.
    pub async fn find_for_create(
        &self,
        tenant: &str,
        idempotency_key: &str,
        invoice_id: &str,
    ) -> Result<CreateLookup, StoreError> {
        const SQL: &str = concat!(
            "select request_fingerprint, ",
            payment_columns!(),
            " from (select payment_id, request_fingerprint from idempotency_key \
                   where tenant = $1 and idempotency_key = $2) as k \
             join payment using (payment_id) \
             union all \
             select null, ",
            payment_columns!(),
            " from payment where tenant = $1 and invoice_id = $3 and status <> 'canceled'"
        );
        let rows: Vec<LookupRow> = self
            .readers
            .read(
                SQL,
                vec![
                    Bound::text(tenant),
                    Bound::text(idempotency_key),
                    Bound::text(invoice_id),
                ],
            )
            .await?;
        let mut lookup = CreateLookup::default();
        for row in rows {
            let payment = Payment::try_from(row.payment)?;
            match row.request_fingerprint {
                Some(request_fingerprint) => {
                    lookup.key = Some((
                        IdempotencyRecord {
                            request_fingerprint,
                            payment_id: payment.id.clone(),
                        },
                        payment,
                    ));
                }
                None => lookup.live = Some(payment),
            }
        }
        Ok(lookup)
    }

    /// The payment of a PaymentIntent, only if it belongs to `tenant` (when given).
    pub async fn find_payment_by_intent(
        &self,
        tenant: Option<&str>,
        intent_id: &str,
    ) -> Result<Option<Payment>, StoreError> {
        const SQL: &str = concat!(
            "select ",
            payment_columns!(),
            " from payment where stripe_payment_intent_id = $1 and ($2 is null or tenant = $2)"
        );
        self.fetch_one_payment(SQL, intent_id, tenant).await
    }

    /// One payment by id, only if it belongs to `tenant` (when given).
    pub async fn get_payment(
        &self,
        tenant: Option<&str>,
        payment_id: &str,
    ) -> Result<Option<Payment>, StoreError> {
        const SQL: &str = concat!(
            "select ",
            payment_columns!(),
            " from payment where payment_id = $1 and ($2 is null or tenant = $2)"
        );
        self.fetch_one_payment(SQL, payment_id, tenant).await
    }

    /// The payment `sql` (two parameters) finds, if any.
    async fn fetch_one_payment(
        &self,
        sql: &'static str,
        first: &str,
        second: Option<&str>,
    ) -> Result<Option<Payment>, StoreError> {
        let mut rows: Vec<PaymentRow> = self
            .readers
            .read(
                sql,
                vec![Bound::text(first), Bound::Text(second.map(str::to_owned))],
            )
            .await?;
        rows.pop().map(Payment::try_from).transpose()
    }

    /// Writes a new payment (in `Creating`), its idempotency key and its first event in one
    /// transaction, sent as one statement batch, unless the key is taken or the invoice has a live
    /// payment (open or succeeded): then nothing is written and the answer is false. So the
    /// usual create (a new key, a free invoice) reads nothing first. `Conflict` when a concurrent
    /// create took the key or the invoice after this one looked.
    pub async fn insert_payment(
        &self,
        payment: &Payment,
        idempotency_key: &str,
        request_fingerprint: &str,
    ) -> Result<bool, StoreError> {
        // $1–$18 the payment's columns, $19 the key, $20 the fingerprint. The key and the event
        // are written only beside a payment this batch wrote (its id is new).
        const SQLITE: &str = concat!(
            "insert into payment (",
            payment_columns!(),
            ") select $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18 \
             where not exists (select 1 from idempotency_key where tenant = $2 and idempotency_key = $19) \
               and not exists (select 1 from payment \
                               where tenant = $2 and invoice_id = $3 and status <> 'canceled') \
             returning ",
            payment_columns!(),
            "; insert into idempotency_key \
             (tenant, idempotency_key, request_fingerprint, payment_id, created_at) \
             select $2, $19, $20, $1, $16 where exists (select 1 from payment where payment_id = $1); \
             insert into payment_event \
             (payment_id, source, from_status, to_status, stripe_event_id, created_at) \
             select $1, 'create', null, $6, null, $16 \
             where exists (select 1 from payment where payment_id = $1)"
        );
        // One statement: PostgreSQL runs the three inserts atomically, foreign keys checked at
        // its end. For many calls (`grouped.rs`) the checks are lateral lookups, so that each
        // call's key and invoice are looked up in their indexes whatever the planner thinks of
        // the tables' sizes.
        static POSTGRES: GroupedWrite = GroupedWrite {
            one: concat!(
                "with new_payment as (insert into payment (",
                payment_columns!(),
                ") select $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18 \
                   where not exists (select 1 from idempotency_key \
                                     where tenant = $2 and idempotency_key = $19) \
                     and not exists (select 1 from payment \
                                     where tenant = $2 and invoice_id = $3 and status <> 'canceled') \
                   returning ",
                payment_columns!(),
                "), new_key as (insert into idempotency_key \
                   (tenant, idempotency_key, request_fingerprint, payment_id, created_at) \
                   select $2, $19, $20, payment_id, $16 from new_payment), \
                 new_event as (insert into payment_event \
                   (payment_id, source, from_status, to_status, stripe_event_id, created_at) \
                   select payment_id, 'create', null, $6, null, $16 from new_payment) \
                 select * from new_payment"
            ),
            many: concat!(
                "with call as (select * from json_to_recordset($1::json) as c(\
                   payment_id text, tenant text, invoice_id text, amount bigint, currency text, \
                   status text, stripe_payment_intent_id text, stripe_customer_id text, \
                   client_secret text, description text, metadata text, success_url text, \
                   failure_url text, last_payment_error_code text, \
                   last_payment_error_message text, created_at bigint, updated_at bigint, \
                   last_event_created bigint, idempotency_key text, request_fingerprint text)), \
                 new_payment as (insert into payment (",
                payment_columns!(),
                ") select ",
                payment_columns!(),
                " from call c \
                   left join lateral (select true as taken from idempotency_key k \
                     where k.tenant = c.tenant and k.idempotency_key = c.idempotency_key \
                     limit 1) key_taken on true \
                   left join lateral (select true as live from payment p \
                     where p.tenant = c.tenant and p.invoice_id = c.invoice_id \
                       and p.status <> 'canceled' limit 1) invoice_live on true \
                   where key_taken.taken is null and invoice_live.live is null \
                   returning ",
                payment_columns!(),
                "), new_key as (insert into idempotency_key \
                   (tenant, idempotency_key, request_fingerprint, payment_id, created_at) \
                   select c.tenant, c.idempotency_key, c.request_fingerprint, n.payment_id, \
                     n.created_at \
                   from new_payment n join call c on c.payment_id = n.payment_id), \
                 new_event as (insert into payment_event \
                   (payment_id, source, from_status, to_status, stripe_event_id, created_at) \
                   select payment_id, 'create', null, status, null, created_at from new_payment) \
                 select * from new_payment"
            ),
            fields: &[
                "payment_id",
                "tenant",
                "invoice_id",
                "amount",
                "currency",
                "status",
                "stripe_payment_intent_id",
                "stripe_customer_id",
                "client_secret",
                "description",
                "metadata",
                "success_url",
                "failure_url",
                "last_payment_error_code",
                "last_payment_error_message",
                "created_at",
                "updated_at",
                "last_event_created",
                "idempotency_key",
                "request_fingerprint",
            ],
            key: 0,
        };
        let metadata = serde_json::to_string(&payment.metadata)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let error = payment.last_payment_error.clone().unwrap_or_default();
        let values = vec![
            Bound::text(&payment.id),
            Bound::text(&payment.tenant),
            Bound::text(&payment.invoice_id),
            Bound::Int(Some(payment.amount)),
            Bound::text(&payment.currency),
            Bound::text(payment.status.as_str()),
            Bound::Text(payment.stripe_payment_intent_id.clone()),
            Bound::Text(payment.stripe_customer_id.clone()),
            Bound::Text(payment.client_secret.clone()),
            Bound::Text(payment.description.clone()),
            Bound::Text(Some(metadata)),
            Bound::text(&payment.success_url),
            Bound::text(&payment.failure_url),
            Bound::Text(error.code),
            Bound::Text(error.message),
            Bound::Int(Some(payment.created_at)),
            Bound::Int(Some(payment.updated_at)),
            Bound::Int(payment.last_event_created),
            Bound::text(idempotency_key),
            Bound::text(request_fingerprint),
        ];
        let written = !self
            .writer
            .run_grouped(SQLITE, &POSTGRES, values)
            .await?
            .is_empty();
        if written {
            count_transition(None, payment.status, EventSource::Create);
        }
        Ok(written)
    }

    /// Points another idempotency key at an existing payment (a second key for an invoice whose
    /// open payment matches). `Conflict` when the key was taken concurrently.
    pub async fn insert_idempotency_key(
        &self,
        tenant: &str,
        idempotency_key: &str,
        request_fingerprint: &str,
        payment_id: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await?;
        insert_idempotency_key(
            &mut tx,
            tenant,
            idempotency_key,
            request_fingerprint,
            payment_id,
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records the intent Stripe created for a `Creating` payment, with the status it reported.
    /// Returns the payment as stored afterwards (unchanged if another writer finished it first).
    /// On PostgreSQL the change is announced to every replica's watchers only with
    /// [`Announce::Yes`] (see there).
    pub async fn attach_intent(
        &self,
        payment_id: &str,
        intent_id: &str,
        client_secret: Option<&str>,
        change: &StatusChange,
        now: i64,
        announce: Announce,
    ) -> Result<Payment, StoreError> {
        // The update returns the row only when it changed it; the event is written only then.
        const SQLITE: &str = concat!(
            "update payment set stripe_payment_intent_id = $1, client_secret = $2, status = $3, \
             last_payment_error_code = $4, last_payment_error_message = $5, updated_at = $6 \
             where payment_id = $7 and status = 'creating' \
             returning ",
            payment_columns!(),
            "; insert into payment_event \
             (payment_id, source, from_status, to_status, stripe_event_id, created_at) \
             select $7, 'create', 'creating', $3, null, $6 where changes() = 1"
        );
        // The statement, then (announced) a `pg_notify` per changed row, and the row.
        macro_rules! attach_postgres {
            ($tail:literal) => {
                concat!(
                    "with attached as (update payment set stripe_payment_intent_id = $1, \
                       client_secret = $2, status = $3, last_payment_error_code = $4, \
                       last_payment_error_message = $5, updated_at = $6 \
                       where payment_id = $7 and status = 'creating' \
                       returning ",
                    payment_columns!(),
                    "), event as (insert into payment_event \
                       (payment_id, source, from_status, to_status, stripe_event_id, created_at) \
                       select payment_id, 'create', 'creating', status, null, $6 from attached)",
                    $tail
                )
            };
        }
        const POSTGRES_ANNOUNCED: &str = attach_postgres!(
            ", announced as (select pg_notify($8, payment_id) from attached) \
             select attached.* from attached cross join (select count(*) from announced) as sent"
        );
        // Quiet, concurrent creates' attaches share a statement (`grouped.rs`).
        static POSTGRES_QUIET: GroupedWrite = GroupedWrite {
            one: attach_postgres!(" select * from attached"),
            // The calls' columns have names of their own, so that the returned columns are
            // the payment's without naming its table.
            many: concat!(
                "with call as (select * from json_to_recordset($1::json) as c(\
                   new_intent_id text, new_client_secret text, new_status text, \
                   new_error_code text, new_error_message text, new_updated_at bigint, id text)), \
                 attached as (update payment set \
                   stripe_payment_intent_id = new_intent_id, client_secret = new_client_secret, \
                   status = new_status, last_payment_error_code = new_error_code, \
                   last_payment_error_message = new_error_message, updated_at = new_updated_at \
                   from call where payment_id = id and status = 'creating' \
                   returning ",
                payment_columns!(),
                "), event as (insert into payment_event \
                   (payment_id, source, from_status, to_status, stripe_event_id, created_at) \
                   select payment_id, 'create', 'creating', status, null, updated_at \
                   from attached) \
                 select * from attached"
            ),
            fields: &[
                "new_intent_id",
                "new_client_secret",
                "new_status",
                "new_error_code",
                "new_error_message",
                "new_updated_at",
                "id",
            ],
            key: 6,
        };
        let error = change.last_payment_error.clone().unwrap_or_default();
        let mut values = vec![
            Bound::text(intent_id),
            Bound::Text(client_secret.map(str::to_owned)),
            Bound::text(change.to.as_str()),
            Bound::Text(error.code),
            Bound::Text(error.message),
            Bound::Int(Some(now)),
            Bound::text(payment_id),
        ];
        let mut rows = match announce {
            Announce::Yes => {
                values.push(Bound::text(CHANGE_CHANNEL));
                (self.writer)
                    .run_batch(SQLITE, POSTGRES_ANNOUNCED, values)
                    .await?
            }
            Announce::No => {
                (self.writer)
                    .run_grouped(SQLITE, &POSTGRES_QUIET, values)
                    .await?
            }
        };
        match rows.pop() {
            Some(row) => {
                count_transition(
                    Some(PaymentStatus::Creating),
                    change.to,
                    EventSource::Create,
                );
                self.announce_committed(payment_id);
                Payment::try_from(row)
            }
            // Another writer finished it first: answer what it stored.
            None => self
                .get_payment(None, payment_id)
                .await?
                .ok_or_else(|| StoreError::Corrupt(format!("payment {payment_id} vanished"))),
        }
    }

    /// Applies a status change if the payment is still in `change.from` (compare-and-set), and
    /// appends the event. Returns the payment as stored afterwards and whether this call changed it.
    pub async fn apply_change(
        &self,
        payment_id: &str,
        change: &StatusChange,
        source: EventSource,
        stripe_event_id: Option<&str>,
        now: i64,
    ) -> Result<(Payment, bool), StoreError> {
        let mut tx = self.writer.begin().await?;
        let error = change.last_payment_error.clone().unwrap_or_default();
        let updated = sqlx::query(
            "update payment set status = $1, last_payment_error_code = $2, \
             last_payment_error_message = $3, updated_at = $4 \
             where payment_id = $5 and status = $6",
        )
        .bind(change.to.as_str())
        .bind(error.code)
        .bind(error.message)
        .bind(now)
        .bind(payment_id)
        .bind(change.from.as_str())
        .execute(tx.conn())
        .await?
        .rows_affected();
        let changed = updated == 1;
        if changed {
            insert_event(
                &mut tx,
                payment_id,
                source,
                Some(change.from),
                change.to,
                stripe_event_id,
                now,
            )
            .await?;
            self.announce_in(&mut tx, payment_id).await?;
        }
        let payment = fetch_payment(&mut tx, payment_id).await?;
        tx.commit().await?;
        if changed {
            self.announce_committed(payment_id);
        }
        Ok((payment, changed))
    }

    /// Records a verified webhook event once and, with it, the change it makes (compare-and-set on
    /// `change.from`), in one transaction: when this returns `Recorded`, both are durable.
    pub async fn record_webhook_event(
        &self,
        event: &WebhookEventRecord<'_>,
        change: Option<&StatusChange>,
        now: i64,
    ) -> Result<EventRecorded, StoreError> {
        let mut tx = self.writer.begin().await?;
        let inserted = sqlx::query(
            "insert into stripe_event \
             (stripe_event_id, event_type, event_created, payment_id, result, received_at) \
             values ($1, $2, $3, $4, $5, $6) on conflict (stripe_event_id) do nothing",
        )
        .bind(event.stripe_event_id)
        .bind(event.event_type)
        .bind(event.event_created)
        .bind(event.payment_id)
        .bind(event.result)
        .bind(now)
        .execute(tx.conn())
        .await?
        .rows_affected();
        if inserted == 0 {
            tx.rollback().await?;
            return Ok(EventRecorded::Duplicate);
        }
        let changed_payment = match (change, event.payment_id) {
            (Some(change), Some(payment_id)) => {
                let error = change.last_payment_error.clone().unwrap_or_default();
                let updated = sqlx::query(
                    "update payment set status = $1, last_payment_error_code = $2, \
                     last_payment_error_message = $3, updated_at = $4, last_event_created = $5 \
                     where payment_id = $6 and status = $7",
                )
                .bind(change.to.as_str())
                .bind(error.code)
                .bind(error.message)
                .bind(now)
                .bind(event.event_created)
                .bind(payment_id)
                .bind(change.from.as_str())
                .execute(tx.conn())
                .await?
                .rows_affected();
                if updated == 0 {
                    tx.rollback().await?;
                    return Ok(EventRecorded::Conflict);
                }
                insert_event(
                    &mut tx,
                    payment_id,
                    EventSource::Webhook,
                    Some(change.from),
                    change.to,
                    Some(event.stripe_event_id),
                    now,
                )
                .await?;
                self.announce_in(&mut tx, payment_id).await?;
                Some(payment_id)
            }
            _ => None,
        };
        tx.commit().await?;
        if let Some(payment_id) = changed_payment {
            self.announce_committed(payment_id);
        }
        Ok(EventRecorded::Recorded)
    }

    /// Claims up to `limit` payments the reconciler should look at — open ones unchanged since
    /// `changed_before`, `Creating` ones included — that no replica holds a lease on, and leases
    /// them until `lease_until`. On PostgreSQL, `for update skip locked` lets replicas claim side
    /// by side without taking the same payment.
    pub async fn claim_for_reconcile(
        &self,
        now: i64,
        changed_before: i64,
        lease_until: i64,
        limit: u32,
    ) -> Result<Vec<Payment>, StoreError> {
        let lock = match self.backend {
            Backend::Postgres => "for update skip locked",
            // SQLite has one writer at a time: `begin immediate` already excludes others.
            Backend::Sqlite => "",
        };
        let sql = format!(
            "update payment set reconcile_lease_until = $1 \
             where payment_id in ( \
                 select payment_id from payment \
                 where status not in ('succeeded', 'canceled') \
                   and updated_at < $2 \
                   and (reconcile_lease_until is null or reconcile_lease_until < $3) \
                 order by updated_at \
                 limit $4 {lock}) \
             returning {PAYMENT_COLUMNS}"
        );
        let mut tx = self.writer.begin().await?;
        let rows: Vec<PaymentRow> = sqlx::query_as(&sql)
            .bind(lease_until)
            .bind(changed_before)
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(tx.conn())
            .await?;
        tx.commit().await?;
        rows.into_iter().map(Payment::try_from).collect()
    }

    /// Leaves a payment alone until `until` (unix ms): the reconciler found nothing new.
    pub async fn defer_reconcile(&self, payment_id: &str, until: i64) -> Result<(), StoreError> {
        const SQL: &str = "update payment set reconcile_lease_until = $1 where payment_id = $2";
        self.writer
            .run_batch(
                SQL,
                SQL,
                vec![Bound::Int(Some(until)), Bound::text(payment_id)],
            )
            .await?;
        Ok(())
    }

    /// A tenant's payments, newest first.
    pub async fn list_payments(&self, query: ListQuery<'_>) -> Result<Vec<Payment>, StoreError> {
        let (after_created, after_id) = match &query.after {
            Some(cursor) => (Some(cursor.created_at), Some(cursor.payment_id.as_str())),
            None => (None, None),
        };
        let sql = format!(
            "select {PAYMENT_COLUMNS} from payment \
             where tenant = $1 \
               and ($2 is null or invoice_id = $2) \
               and ($3 is null or status = $3) \
               and ($4 is null or created_at < $4 or (created_at = $4 and payment_id < $5)) \
             order by created_at desc, payment_id desc \
             limit $6"
        );
        let rows: Vec<PaymentRow> = self
            .readers
            .read(
                &sql,
                vec![
                    Bound::text(query.tenant),
                    Bound::Text(query.invoice_id.map(str::to_owned)),
                    Bound::Text(query.status.map(|s| s.as_str().to_owned())),
                    Bound::Int(after_created),
                    Bound::Text(after_id.map(str::to_owned)),
                    Bound::Int(Some(i64::from(query.limit))),
                ],
            )
            .await?;
        rows.into_iter().map(Payment::try_from).collect()
    }

    /// The Stripe customer created earlier for this tenant and email.
    pub async fn find_customer(
        &self,
        tenant: &str,
        email: &str,
    ) -> Result<Option<String>, StoreError> {
        let mut rows: Vec<(String,)> = self
            .readers
            .read(
                "select stripe_customer_id from customer where tenant = $1 and email = $2",
                vec![Bound::text(tenant), Bound::text(email)],
            )
            .await?;
        Ok(rows.pop().map(|(id,)| id))
    }

    /// Remembers the Stripe customer of a tenant's email; the first writer wins and every caller
    /// gets the winner's id back.
    pub async fn remember_customer(
        &self,
        tenant: &str,
        email: &str,
        stripe_customer_id: &str,
        now: i64,
    ) -> Result<String, StoreError> {
        let mut tx = self.writer.begin().await?;
        sqlx::query(
            "insert into customer (tenant, email, stripe_customer_id, created_at) \
             values ($1, $2, $3, $4) on conflict (tenant, email) do nothing",
        )
        .bind(tenant)
        .bind(email)
        .bind(stripe_customer_id)
        .bind(now)
        .execute(tx.conn())
        .await?;
        let (id,): (String,) = sqlx::query_as(
            "select stripe_customer_id from customer where tenant = $1 and email = $2",
        )
        .bind(tenant)
        .bind(email)
        .fetch_one(tx.conn())
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    /// The statuses a payment went through, oldest first, with their sources.
    pub async fn payment_events(
        &self,
        payment_id: &str,
    ) -> Result<Vec<(String, Option<String>, String)>, StoreError> {
        self.readers
            .read(
                "select source, from_status, to_status from payment_event \
                 where payment_id = $1 order by payment_event_id",
                vec![Bound::text(payment_id)],
            )
            .await
    }
}

/// One recorded status change, for watchers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusEvent {
    /// Increasing within a payment.
    pub payment_event_id: i64,
    pub to: PaymentStatus,
    /// Unix milliseconds.
    pub created_at: i64,
}

impl Store {
    /// The status changes of a payment recorded after `after` (an event id; 0 for all), oldest
    /// first.
    pub async fn status_events_after(
        &self,
        payment_id: &str,
        after: i64,
    ) -> Result<Vec<StatusEvent>, StoreError> {
        let rows: Vec<(i64, String, i64)> = self
            .readers
            .read(
                "select payment_event_id, to_status, created_at from payment_event \
                 where payment_id = $1 and payment_event_id > $2 order by payment_event_id",
                vec![Bound::text(payment_id), Bound::Int(Some(after))],
            )
            .await?;
        rows.into_iter()
            .map(|(payment_event_id, to, created_at)| {
                Ok(StatusEvent {
                    payment_event_id,
                    to: parse_status(&to)?,
                    created_at,
                })
            })
            .collect()
    }
}

/// Forwards PostgreSQL notifications to this process's watchers. `PgListener` reconnects by
/// itself; notifications sent while it was away are lost, which is why watchers also re-read on
/// a timer.
async fn forward_notifications(
    mut listener: sqlx::postgres::PgListener,
    changes: tokio::sync::broadcast::Sender<String>,
) {
    loop {
        match listener.recv().await {
            Ok(notification) => {
                let _ = changes.send(notification.payload().to_owned());
            }
            Err(error) => {
                tracing::warn!(%error, "listening for payment changes");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn insert_idempotency_key(
    tx: &mut WriteTx,
    tenant: &str,
    idempotency_key: &str,
    request_fingerprint: &str,
    payment_id: &str,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "insert into idempotency_key \
         (tenant, idempotency_key, request_fingerprint, payment_id, created_at) \
         values ($1, $2, $3, $4, $5)",
    )
    .bind(tenant)
    .bind(idempotency_key)
    .bind(request_fingerprint)
    .bind(payment_id)
    .bind(now)
    .execute(tx.conn())
    .await?;
    Ok(())
}

async fn insert_event(
    tx: &mut WriteTx,
    payment_id: &str,
    source: EventSource,
    from: Option<PaymentStatus>,
    to: PaymentStatus,
    stripe_event_id: Option<&str>,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "insert into payment_event \
         (payment_id, source, from_status, to_status, stripe_event_id, created_at) \
         values ($1, $2, $3, $4, $5, $6)",
    )
    .bind(payment_id)
    .bind(source.as_str())
    .bind(from.map(PaymentStatus::as_str))
    .bind(to.as_str())
    .bind(stripe_event_id)
    .bind(now)
    .execute(tx.conn())
    .await?;
    count_transition(from, to, source);
    Ok(())
}

/// Counts a recorded status change in the transitions metric.
fn count_transition(from: Option<PaymentStatus>, to: PaymentStatus, source: EventSource) {
    crate::metrics::METRICS
        .transitions
        .get_or_create(&crate::metrics::TransitionLabels {
            from: from.map_or("none", PaymentStatus::as_str),
            to: to.as_str(),
            source: source.as_str(),
        })
        .inc();
}

async fn fetch_payment(tx: &mut WriteTx, payment_id: &str) -> Result<Payment, StoreError> {
    const SQL: &str = concat!(
        "select ",
        payment_columns!(),
        " from payment where payment_id = $1"
    );
    let row: PaymentRow = sqlx::query_as(SQL)
        .bind(payment_id)
        .fetch_one(tx.conn())
        .await?;
    Payment::try_from(row)
}

/// The SQLite writer's sqlx connection (transactions held across awaits, the migrations), set up
/// as the rusqlite ones (`sqlite::PRAGMAS`).
async fn open_sqlite(url: &str) -> Result<AnyConnection, StoreError> {
    let mut conn = AnyConnection::connect(url).await?;
    conn.execute(sqlite::PRAGMAS).await?;
    Ok(conn)
}

/// `sqlite:path` → `sqlite:path?mode=rwc`, so the file is created on first start.
fn sqlite_url_creating_file(url: &str) -> String {
    if url.contains("mode=") || url.contains(":memory:") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    }
}

/// The error of a read or write after the store was closed (on shutdown) or its SQLite writer
/// stopped.
fn closed() -> StoreError {
    StoreError::Unavailable(Box::new(sqlx::Error::PoolClosed))
}

/// Locks a mutex of the store's connection sets; a panic elsewhere cannot leave them unusable.
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn parse_metadata(text: &str) -> Result<BTreeMap<String, String>, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("metadata: {e}")))
}

fn parse_status(text: &str) -> Result<PaymentStatus, StoreError> {
    PaymentStatus::from_str(text).map_err(|()| StoreError::Corrupt(format!("status {text:?}")))
}

fn last_payment_error(code: Option<String>, message: Option<String>) -> Option<LastPaymentError> {
    (code.is_some() || message.is_some()).then_some(LastPaymentError { code, message })
}

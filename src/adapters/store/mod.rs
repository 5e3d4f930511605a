//! The payment store on sqlx's `Any` driver: one implementation for SQLite (the embedded default)
//! and PostgreSQL (production). Both speak the same SQL here (`$n` parameters, partial unique
//! indexes, `on conflict`), so the only differences are the migrations, the connection set-up and
//! how a write transaction begins.

mod rows;

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Executor};

use crate::domain::{LastPaymentError, Payment, PaymentStatus, StatusChange};
use rows::PaymentRow;

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
    /// The database could not be reached (connection refused, pool timed out, I/O).
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// A stored row could not be read back into the domain (a bug or a hand-edited row).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error")]
    Database(#[source] sqlx::Error),
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
                StoreError::Unavailable(error)
            }
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Tls(_) => StoreError::Unavailable(error),
            _ => StoreError::Database(error),
        }
    }
}

/// What the idempotency table remembers of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    pub request_fingerprint: String,
    pub payment_id: String,
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
    pool: AnyPool,
    /// Where write transactions run. On SQLite a pool of one connection: writers queue for it
    /// in order instead of colliding on the database lock, whose busy handler sleeps (1, 2, 5…
    /// 100 ms) between retries — at 64 concurrent creates that sleeping cost most of the time.
    /// On PostgreSQL the same pool as reads.
    writer: AnyPool,
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

const PAYMENT_COLUMNS: &str = "payment_id, tenant, invoice_id, amount, currency, status, \
     stripe_payment_intent_id, stripe_customer_id, client_secret, description, metadata, \
     success_url, failure_url, last_payment_error_code, last_payment_error_message, \
     created_at, updated_at, last_event_created";

impl Store {
    /// Connects (creating the SQLite file if needed). Does not migrate.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store, StoreError> {
        install_default_drivers();
        let backend = Backend::from_url(url)?;
        let options = |max_connections: u32| {
            AnyPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(Duration::from_secs(5))
        };
        let (pool, writer) = match backend {
            Backend::Sqlite => {
                // WAL lets readers run beside the one writer; busy_timeout makes a writer wait for
                // the lock instead of failing the caller (another process may write too). Each
                // connection keeps its own page cache (SQLite's default is 2 MiB): at 1 MiB the
                // pool's caches stay under 17 MiB, and a miss is a read from the OS page cache.
                let sqlite = |max_connections: u32| {
                    options(max_connections).after_connect(|conn, _meta| {
                        Box::pin(async move {
                            conn.execute(
                                "pragma journal_mode = wal; pragma busy_timeout = 10000; \
                                 pragma foreign_keys = on; pragma synchronous = normal; \
                                 pragma cache_size = -1024;",
                            )
                            .await?;
                            Ok(())
                        })
                    })
                };
                let url = sqlite_url_creating_file(url);
                let pool = sqlite(max_connections).connect(&url).await?;
                // Writers wait for the one connection as long as they would for the lock.
                let writer = sqlite(1)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect(&url)
                    .await?;
                (pool, writer)
            }
            Backend::Postgres => {
                let pool = options(max_connections).connect(url).await?;
                (pool.clone(), pool)
            }
        };
        let (changes, _) = tokio::sync::broadcast::channel(1024);
        if backend == Backend::Postgres {
            let mut listener = sqlx::postgres::PgListener::connect(url).await?;
            listener.listen(CHANGE_CHANNEL).await?;
            tokio::spawn(forward_notifications(listener, changes.clone()));
        }
        Ok(Store {
            pool,
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
        match self.backend {
            Backend::Sqlite => SQLITE_MIGRATOR.run(&self.pool).await?,
            Backend::Postgres => POSTGRES_MIGRATOR.run(&self.pool).await?,
        }
        Ok(())
    }

    /// True when the database answers and every migration this binary knows is applied.
    pub async fn is_ready(&self) -> Result<bool, StoreError> {
        let migrator = match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATOR,
            Backend::Postgres => &POSTGRES_MIGRATOR,
        };
        let applied: Vec<(i64,)> =
            match sqlx::query_as("select version from _sqlx_migrations where success")
                .fetch_all(&self.pool)
                .await
            {
                Ok(rows) => rows,
                // No migration table yet: reachable but not migrated.
                Err(sqlx::Error::Database(_)) => return Ok(false),
                Err(other) => return Err(other.into()),
            };
        Ok(migrator
            .iter()
            .all(|m| applied.iter().any(|(version,)| *version == m.version)))
    }

    /// Closes the pool (on shutdown).
    pub async fn close(&self) {
        self.pool.close().await;
        self.writer.close().await;
    }

    /// Ids of payments as they change (on any replica, on PostgreSQL). A receiver that falls
    /// behind loses ids (`Lagged`) and should re-read what it follows.
    pub fn subscribe_changes(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.changes.subscribe()
    }

    /// Inside a changing transaction: on PostgreSQL, announce the change on commit.
    async fn announce_in(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        payment_id: &str,
    ) -> Result<(), StoreError> {
        if self.backend == Backend::Postgres {
            sqlx::query("select pg_notify($1, $2)")
                .bind(CHANGE_CHANNEL)
                .bind(payment_id)
                .execute(&mut **tx)
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

    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        Ok(match self.backend {
            // Take the write lock at the start, so the busy timeout applies instead of a
            // deadlock error when two readers both try to upgrade.
            Backend::Sqlite => self.writer.begin_with("begin immediate").await?,
            Backend::Postgres => self.writer.begin().await?,
        })
    }

    pub async fn find_idempotency_key(
        &self,
        tenant: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        let row: Option<(String, String)> = sqlx::query_as(
            "select request_fingerprint, payment_id from idempotency_key \
             where tenant = $1 and idempotency_key = $2",
        )
        .bind(tenant)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        Ok(
            row.map(|(request_fingerprint, payment_id)| IdempotencyRecord {
                request_fingerprint,
                payment_id,
            }),
        )
    }

    /// The payment of an invoice that is open or succeeded (at most one, by the unique index).
    pub async fn find_live_payment_for_invoice(
        &self,
        tenant: &str,
        invoice_id: &str,
    ) -> Result<Option<Payment>, StoreError> {
        self.find_payment(
            "tenant = $1 and invoice_id = $2 and status <> 'canceled'",
            tenant,
            Some(invoice_id),
        )
        .await
    }

    /// The payment of a PaymentIntent, only if it belongs to `tenant` (when given).
    pub async fn find_payment_by_intent(
        &self,
        tenant: Option<&str>,
        intent_id: &str,
    ) -> Result<Option<Payment>, StoreError> {
        self.find_payment(
            "stripe_payment_intent_id = $1 and ($2 is null or tenant = $2)",
            intent_id,
            tenant,
        )
        .await
    }

    /// One payment by id, only if it belongs to `tenant` (when given).
    pub async fn get_payment(
        &self,
        tenant: Option<&str>,
        payment_id: &str,
    ) -> Result<Option<Payment>, StoreError> {
        self.find_payment(
            "payment_id = $1 and ($2 is null or tenant = $2)",
            payment_id,
            tenant,
        )
        .await
    }

    /// The payment matching `filter` (two parameters), if any.
    async fn find_payment(
        &self,
        filter: &'static str,
        first: &str,
        second: Option<&str>,
    ) -> Result<Option<Payment>, StoreError> {
        let sql = format!("select {PAYMENT_COLUMNS} from payment where {filter}");
        let row: Option<PaymentRow> = sqlx::query_as(&sql)
            .bind(first)
            .bind(second)
            .fetch_optional(&self.pool)
            .await?;
        row.map(Payment::try_from).transpose()
    }

    /// Writes a new payment (in `Creating`), its idempotency key and its first event in one
    /// transaction. `Conflict` when the key or the invoice was taken concurrently.
    pub async fn insert_payment(
        &self,
        payment: &Payment,
        idempotency_key: &str,
        request_fingerprint: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let metadata = serde_json::to_string(&payment.metadata)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let sql = format!(
            "insert into payment ({PAYMENT_COLUMNS}) values \
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)"
        );
        let error = payment.last_payment_error.clone().unwrap_or_default();
        sqlx::query(&sql)
            .bind(&payment.id)
            .bind(&payment.tenant)
            .bind(&payment.invoice_id)
            .bind(payment.amount)
            .bind(&payment.currency)
            .bind(payment.status.as_str())
            .bind(&payment.stripe_payment_intent_id)
            .bind(&payment.stripe_customer_id)
            .bind(&payment.client_secret)
            .bind(&payment.description)
            .bind(metadata)
            .bind(&payment.success_url)
            .bind(&payment.failure_url)
            .bind(error.code)
            .bind(error.message)
            .bind(payment.created_at)
            .bind(payment.updated_at)
            .bind(payment.last_event_created)
            .execute(&mut *tx)
            .await?;
        insert_idempotency_key(
            &mut tx,
            &payment.tenant,
            idempotency_key,
            request_fingerprint,
            &payment.id,
            payment.created_at,
        )
        .await?;
        insert_event(
            &mut tx,
            &payment.id,
            EventSource::Create,
            None,
            payment.status,
            None,
            payment.created_at,
        )
        .await?;
        tx.commit().await?;
        Ok(())
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
        let mut tx = self.begin_write().await?;
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
    pub async fn attach_intent(
        &self,
        payment_id: &str,
        intent_id: &str,
        client_secret: Option<&str>,
        change: &StatusChange,
        now: i64,
    ) -> Result<Payment, StoreError> {
        let mut tx = self.begin_write().await?;
        let error = change.last_payment_error.clone().unwrap_or_default();
        let updated = sqlx::query(
            "update payment set stripe_payment_intent_id = $1, client_secret = $2, status = $3, \
             last_payment_error_code = $4, last_payment_error_message = $5, updated_at = $6 \
             where payment_id = $7 and status = 'creating'",
        )
        .bind(intent_id)
        .bind(client_secret)
        .bind(change.to.as_str())
        .bind(error.code)
        .bind(error.message)
        .bind(now)
        .bind(payment_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 1 {
            insert_event(
                &mut tx,
                payment_id,
                EventSource::Create,
                Some(PaymentStatus::Creating),
                change.to,
                None,
                now,
            )
            .await?;
            self.announce_in(&mut tx, payment_id).await?;
        }
        let payment = fetch_payment(&mut tx, payment_id).await?;
        tx.commit().await?;
        if updated == 1 {
            self.announce_committed(payment_id);
        }
        Ok(payment)
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
        let mut tx = self.begin_write().await?;
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
        .execute(&mut *tx)
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
        let mut tx = self.begin_write().await?;
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
        .execute(&mut *tx)
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
                .execute(&mut *tx)
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
        let mut tx = self.begin_write().await?;
        let rows: Vec<PaymentRow> = sqlx::query_as(&sql)
            .bind(lease_until)
            .bind(changed_before)
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        rows.into_iter().map(Payment::try_from).collect()
    }

    /// Leaves a payment alone until `until` (unix ms): the reconciler found nothing new.
    pub async fn defer_reconcile(&self, payment_id: &str, until: i64) -> Result<(), StoreError> {
        sqlx::query("update payment set reconcile_lease_until = $1 where payment_id = $2")
            .bind(until)
            .bind(payment_id)
            .execute(&self.writer)
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
        let rows: Vec<PaymentRow> = sqlx::query_as(&sql)
            .bind(query.tenant)
            .bind(query.invoice_id)
            .bind(query.status.map(PaymentStatus::as_str))
            .bind(after_created)
            .bind(after_id)
            .bind(i64::from(query.limit))
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(Payment::try_from).collect()
    }

    /// The Stripe customer created earlier for this tenant and email.
    pub async fn find_customer(
        &self,
        tenant: &str,
        email: &str,
    ) -> Result<Option<String>, StoreError> {
        let row: Option<(String,)> = sqlx::query_as(
            "select stripe_customer_id from customer where tenant = $1 and email = $2",
        )
        .bind(tenant)
        .bind(email)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(id,)| id))
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
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "insert into customer (tenant, email, stripe_customer_id, created_at) \
             values ($1, $2, $3, $4) on conflict (tenant, email) do nothing",
        )
        .bind(tenant)
        .bind(email)
        .bind(stripe_customer_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let (id,): (String,) = sqlx::query_as(
            "select stripe_customer_id from customer where tenant = $1 and email = $2",
        )
        .bind(tenant)
        .bind(email)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    /// The statuses a payment went through, oldest first, with their sources.
    pub async fn payment_events(
        &self,
        payment_id: &str,
    ) -> Result<Vec<(String, Option<String>, String)>, StoreError> {
        Ok(sqlx::query_as(
            "select source, from_status, to_status from payment_event \
             where payment_id = $1 order by payment_event_id",
        )
        .bind(payment_id)
        .fetch_all(&self.pool)
        .await?)
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
        let rows: Vec<(i64, String, i64)> = sqlx::query_as(
            "select payment_event_id, to_status, created_at from payment_event \
             where payment_id = $1 and payment_event_id > $2 order by payment_event_id",
        )
        .bind(payment_id)
        .bind(after)
        .fetch_all(&self.pool)
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
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
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
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn insert_event(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
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
    .execute(&mut **tx)
    .await?;
    crate::metrics::METRICS
        .transitions
        .get_or_create(&crate::metrics::TransitionLabels {
            from: from.map_or("none", PaymentStatus::as_str),
            to: to.as_str(),
            source: source.as_str(),
        })
        .inc();
    Ok(())
}

async fn fetch_payment(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    payment_id: &str,
) -> Result<Payment, StoreError> {
    let sql = format!("select {PAYMENT_COLUMNS} from payment where payment_id = $1");
    let row: PaymentRow = sqlx::query_as(&sql)
        .bind(payment_id)
        .fetch_one(&mut **tx)
        .await?;
    Payment::try_from(row)
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

fn parse_metadata(text: &str) -> Result<BTreeMap<String, String>, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("metadata: {e}")))
}

fn parse_status(text: &str) -> Result<PaymentStatus, StoreError> {
    PaymentStatus::from_str(text).map_err(|()| StoreError::Corrupt(format!("status {text:?}")))
}

fn last_payment_error(code: Option<String>, message: Option<String>) -> Option<LastPaymentError> {
    (code.is_some() || message.is_some()).then_some(LastPaymentError { code, message })
}

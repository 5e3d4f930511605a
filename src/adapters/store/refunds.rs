//! The `refund` table: its row type and [`RefundRecords`]. A refund's amount counts in its
//! payment's `amount_refund_pending` or `amount_refunded` (by [`RefundStatus::bucket`]); every
//! write of a refund moves those amounts and appends the refund's event to its payment's log in
//! the same transaction (a [`WriteTx`]), counted and announced as a change of the payment once
//! committed.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::LazyLock;

use async_trait::async_trait;
use sqlx::Any;
use sqlx::any::AnyArguments;
use sqlx::query::Query;

use super::reconcile_claims::Claimable;
use super::{AppendedEvent, Backend, Store, Transition, WriteTx, json_of_row};

/// The reconciler re-reads refunds not final at Stripe yet.
const REFUNDS: Claimable = Claimable {
    table: "refund",
    id_column: "refund_id",
    open: "status in ('creating', 'pending', 'requires_action')",
};
use crate::app::ports::{RefundListQuery, RefundRecords, RefundUpdate, StoreError};
use crate::domain::{EventSource, Refund, RefundBucket, RefundSource, RefundStatus};

/// Declares the `refund` row once: the struct sqlx reads rows into, the column list of its
/// inserts, and the values bound to them, in one order. (The caller's idempotency key and
/// request fingerprint, and the reconciler's lease, are columns of the table but not of a
/// [`Refund`]: the inserts and reads that need them name them.)
macro_rules! refund_row {
    ($($column:ident: $type:ty,)*) => {
        /// One `refund` row as the database holds it (or as an event's `object` recorded it).
        #[derive(Debug, sqlx::FromRow, serde::Deserialize)]
        struct RefundRow {
            $($column: $type,)*
        }

        impl RefundRow {
            const COLUMNS: &'static [&'static str] = &[$(stringify!($column)),*];

            /// Binds the row's values, in [`RefundRow::COLUMNS`] order, to the next parameters.
            fn bind_to<'q>(
                self,
                query: Query<'q, Any, AnyArguments<'q>>,
            ) -> Query<'q, Any, AnyArguments<'q>> {
                $(let query = query.bind(self.$column);)*
                query
            }
        }
    };
}

refund_row! {
    refund_id: String,
    payment_id: String,
    tenant: String,
    amount: i64,
    currency: String,
    status: String,
    reason: Option<String>,
    stripe_refund_id: Option<String>,
    failure_reason: Option<String>,
    source: String,
    metadata: String,
    created_at: i64,
    updated_at: i64,
    last_event_created: Option<i64>,
}

/// The SQL expression of the JSON of the refund row `alias` (an event's `object`).
pub(super) fn refund_json(backend: Backend, alias: &str) -> String {
    json_of_row(backend, alias, RefundRow::COLUMNS)
}

/// A refund as an event's `object` recorded it.
pub(super) fn refund_from_json(object: &str) -> Result<Refund, StoreError> {
    let row: RefundRow = serde_json::from_str(object)
        .map_err(|e| StoreError::Corrupt(format!("event object (refund): {e}")))?;
    Refund::try_from(row)
}

/// `insert into refund (<the row's columns>[, extra]) values ($1, …)`.
fn insert_refund_sql(extra: &[&str], suffix: &str) -> String {
    let columns: Vec<&str> = RefundRow::COLUMNS.iter().chain(extra).copied().collect();
    let values: Vec<String> = (1..=columns.len()).map(|n| format!("${n}")).collect();
    format!(
        "insert into refund ({}) values ({}) {suffix}",
        columns.join(", "),
        values.join(", ")
    )
}

impl TryFrom<&Refund> for RefundRow {
    type Error = StoreError;

    fn try_from(refund: &Refund) -> Result<RefundRow, StoreError> {
        Ok(RefundRow {
            refund_id: refund.id.clone(),
            payment_id: refund.payment_id.clone(),
            tenant: refund.tenant.clone(),
            amount: refund.amount,
            currency: refund.currency.clone(),
            status: refund.status.as_str().to_owned(),
            reason: refund.reason.map(|reason| reason.as_str().to_owned()),
            stripe_refund_id: refund.stripe_refund_id.clone(),
            failure_reason: refund.failure_reason.clone(),
            source: refund.source.as_str().to_owned(),
            metadata: serde_json::to_string(&refund.metadata)
                .map_err(|e| StoreError::Corrupt(format!("refund metadata: {e}")))?,
            created_at: refund.created_at,
            updated_at: refund.updated_at,
            last_event_created: refund.last_event_created,
        })
    }
}

impl TryFrom<RefundRow> for Refund {
    type Error = StoreError;

    fn try_from(row: RefundRow) -> Result<Refund, StoreError> {
        let corrupt =
            |what: &str, text: &str| StoreError::Corrupt(format!("refund {what} {text:?}"));
        let metadata: BTreeMap<String, String> = serde_json::from_str(&row.metadata)
            .map_err(|e| StoreError::Corrupt(format!("refund metadata: {e}")))?;
        Ok(Refund {
            status: RefundStatus::from_str(&row.status)
                .map_err(|()| corrupt("status", &row.status))?,
            reason: row
                .reason
                .as_deref()
                .map(|reason| reason.parse().map_err(|()| corrupt("reason", reason)))
                .transpose()?,
            source: RefundSource::from_str(&row.source)
                .map_err(|()| corrupt("source", &row.source))?,
            metadata,
            id: row.refund_id,
            payment_id: row.payment_id,
            tenant: row.tenant,
            amount: row.amount,
            currency: row.currency,
            stripe_refund_id: row.stripe_refund_id,
            failure_reason: row.failure_reason,
            created_at: row.created_at,
            updated_at: row.updated_at,
            last_event_created: row.last_event_created,
        })
    }
}

/// What a refund of `amount` in `status` adds to its payment's `amount_refunded` and
/// `amount_refund_pending` when it is first recorded.
fn first_amounts(status: RefundStatus, amount: i64) -> (i64, i64) {
    match status.bucket() {
        RefundBucket::Pending => (0, amount),
        RefundBucket::Refunded => (amount, 0),
        RefundBucket::Released => (0, 0),
    }
}

impl WriteTx<'_> {
    /// Adds `(refunded, pending)` to a payment's refund amounts.
    async fn move_refund_amounts(
        &mut self,
        payment_id: &str,
        (refunded, pending): (i64, i64),
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "update payment set amount_refunded = amount_refunded + $1, \
             amount_refund_pending = amount_refund_pending + $2, updated_at = $3 \
             where payment_id = $4",
        )
        .bind(refunded)
        .bind(pending)
        .bind(now)
        .bind(payment_id)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    /// Applies a refund's change if the refund is still in `update.change.from`, attaching
    /// `update.stripe_refund_id` if it has none yet and, with `event_created`, recording the
    /// newest applied webhook event's time; moves its payment's amounts and appends its event.
    /// True when it changed.
    pub(super) async fn change_refund(
        &mut self,
        update: RefundUpdate<'_>,
        source: EventSource,
        stripe_event_id: Option<&str>,
        event_created: Option<i64>,
        now: i64,
    ) -> Result<bool, StoreError> {
        let change = update.change;
        let changed: Option<(String, i64)> = sqlx::query_as(
            "update refund set status = $1, failure_reason = $2, \
             stripe_refund_id = coalesce(stripe_refund_id, $3), updated_at = $4, \
             last_event_created = coalesce($5, last_event_created) \
             where refund_id = $6 and status = $7 \
             returning payment_id, amount",
        )
        .bind(change.to.as_str())
        .bind(change.failure_reason.as_deref())
        .bind(update.stripe_refund_id)
        .bind(now)
        .bind(event_created)
        .bind(update.refund_id)
        .bind(change.from.as_str())
        .fetch_optional(self.conn())
        .await?;
        let Some((payment_id, amount)) = changed else {
            return Ok(false);
        };
        self.move_refund_amounts(&payment_id, change.amount_deltas(amount), now)
            .await?;
        self.append_event(AppendedEvent {
            payment_id: &payment_id,
            refund_id: Some(update.refund_id),
            source,
            transition: Transition::Refund {
                from: Some(change.from),
                to: change.to,
            },
            stripe_event_id,
            now,
        })
        .await?;
        Ok(true)
    }

    /// Records a refund made at Stripe directly, adds its amount to its payment's amounts and
    /// appends its first event. False when its Stripe id is recorded already (nothing written).
    pub(super) async fn insert_external_refund(
        &mut self,
        refund: &Refund,
        source: EventSource,
        stripe_event_id: Option<&str>,
        now: i64,
    ) -> Result<bool, StoreError> {
        static SQL: LazyLock<String> =
            LazyLock::new(|| insert_refund_sql(&[], "on conflict (stripe_refund_id) do nothing"));
        let inserted = RefundRow::try_from(refund)?
            .bind_to(sqlx::query(&SQL))
            .execute(self.conn())
            .await?
            .rows_affected();
        if inserted == 0 {
            return Ok(false);
        }
        self.move_refund_amounts(
            &refund.payment_id,
            first_amounts(refund.status, refund.amount),
            now,
        )
        .await?;
        self.append_event(AppendedEvent {
            payment_id: &refund.payment_id,
            refund_id: Some(&refund.id),
            source,
            transition: Transition::Refund {
                from: None,
                to: refund.status,
            },
            stripe_event_id,
            now,
        })
        .await?;
        Ok(true)
    }
}

#[async_trait]
impl RefundRecords for Store {
    #[tracing::instrument(name = "store.insert_refund", skip_all)]
    async fn insert_refund(
        &self,
        refund: &Refund,
        idempotency_key: &str,
        request_fingerprint: &str,
    ) -> Result<bool, StoreError> {
        static INSERT: LazyLock<String> =
            LazyLock::new(|| insert_refund_sql(&["idempotency_key", "request_fingerprint"], ""));
        debug_assert_eq!(
            refund.status,
            RefundStatus::Creating,
            "a new refund is creating"
        );
        let mut tx = self.begin().await?;
        // The check and the reservation, in one statement on the payment's row: on PostgreSQL
        // a concurrent refund waits for this row's lock and then checks the amounts this one
        // left (READ COMMITTED re-reads the row it waited for); SQLite has one writer.
        let reserved = sqlx::query(
            "update payment set amount_refund_pending = amount_refund_pending + $1, \
             updated_at = $2 \
             where payment_id = $3 and tenant = $4 and status = 'succeeded' \
               and amount_received - amount_refunded - amount_refund_pending >= $1",
        )
        .bind(refund.amount)
        .bind(refund.created_at)
        .bind(&refund.payment_id)
        .bind(&refund.tenant)
        .execute(tx.conn())
        .await?
        .rows_affected();
        if reserved == 0 {
            // Not refundable, or not that much. A concurrent request with the same key that
            // reserved first (and committed while this one waited) is a taken key, not a refusal.
            let taken: Option<(String,)> = sqlx::query_as(
                "select refund_id from refund where tenant = $1 and idempotency_key = $2",
            )
            .bind(&refund.tenant)
            .bind(idempotency_key)
            .fetch_optional(tx.conn())
            .await?;
            return match taken {
                Some(_) => Err(StoreError::Conflict),
                None => Ok(false),
            };
        }
        // The tenant's key taken concurrently breaks its unique index: `Conflict`, and the
        // reservation is rolled back with the transaction.
        RefundRow::try_from(refund)?
            .bind_to(sqlx::query(&INSERT))
            .bind(idempotency_key)
            .bind(request_fingerprint)
            .execute(tx.conn())
            .await?;
        tx.append_event(AppendedEvent {
            payment_id: &refund.payment_id,
            refund_id: Some(&refund.id),
            source: EventSource::Refund,
            transition: Transition::Refund {
                from: None,
                to: refund.status,
            },
            stripe_event_id: None,
            now: refund.created_at,
        })
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    #[tracing::instrument(name = "store.insert_external_refund", skip_all)]
    async fn insert_external_refund(
        &self,
        refund: &Refund,
        source: EventSource,
        now: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let inserted = tx.insert_external_refund(refund, source, None, now).await?;
        if inserted {
            tx.commit().await?;
        }
        Ok(inserted)
    }

    #[tracing::instrument(name = "store.get_refund", skip_all)]
    async fn get_refund(
        &self,
        tenant: Option<&str>,
        refund_id: &str,
    ) -> Result<Option<Refund>, StoreError> {
        let row: Option<RefundRow> = sqlx::query_as(
            "select * from refund where refund_id = $1 and ($2 is null or tenant = $2)",
        )
        .bind(refund_id)
        .bind(tenant)
        .fetch_optional(&self.read)
        .await?;
        row.map(Refund::try_from).transpose()
    }

    #[tracing::instrument(name = "store.find_refund_by_key", skip_all)]
    async fn find_refund_by_key(
        &self,
        tenant: &str,
        idempotency_key: &str,
    ) -> Result<Option<(String, Refund)>, StoreError> {
        /// A refund with the fingerprint of the request whose key named it.
        #[derive(Debug, sqlx::FromRow)]
        struct KeyedRow {
            request_fingerprint: Option<String>,
            #[sqlx(flatten)]
            refund: RefundRow,
        }
        let row: Option<KeyedRow> =
            sqlx::query_as("select * from refund where tenant = $1 and idempotency_key = $2")
                .bind(tenant)
                .bind(idempotency_key)
                .fetch_optional(&self.read)
                .await?;
        row.map(|row| {
            let refund = Refund::try_from(row.refund)?;
            let fingerprint = row.request_fingerprint.ok_or_else(|| {
                StoreError::Corrupt(format!("refund {} has a key but no fingerprint", refund.id))
            })?;
            Ok((fingerprint, refund))
        })
        .transpose()
    }

    #[tracing::instrument(name = "store.find_refund_by_stripe_id", skip_all)]
    async fn find_refund_by_stripe_id(
        &self,
        stripe_refund_id: &str,
    ) -> Result<Option<Refund>, StoreError> {
        let row: Option<RefundRow> =
            sqlx::query_as("select * from refund where stripe_refund_id = $1")
                .bind(stripe_refund_id)
                .fetch_optional(&self.read)
                .await?;
        row.map(Refund::try_from).transpose()
    }

    #[tracing::instrument(name = "store.list_refunds", skip_all)]
    async fn list_refunds(&self, query: RefundListQuery<'_>) -> Result<Vec<Refund>, StoreError> {
        let (after_created, after_id) = match &query.after {
            Some(cursor) => (Some(cursor.created_at), Some(cursor.id.as_str())),
            None => (None, None),
        };
        let rows: Vec<RefundRow> = sqlx::query_as(
            "select * from refund \
             where tenant = $1 \
               and ($2 is null or payment_id = $2) \
               and ($3 is null or created_at < $3 or (created_at = $3 and refund_id < $4)) \
             order by created_at desc, refund_id desc \
             limit $5",
        )
        .bind(query.tenant)
        .bind(query.payment_id)
        .bind(after_created)
        .bind(after_id)
        .bind(i64::from(query.limit))
        .fetch_all(&self.read)
        .await?;
        rows.into_iter().map(Refund::try_from).collect()
    }

    #[tracing::instrument(name = "store.apply_refund_change", skip_all)]
    async fn apply_refund_change(
        &self,
        update: RefundUpdate<'_>,
        source: EventSource,
        now: i64,
    ) -> Result<(Refund, bool), StoreError> {
        let mut tx = self.begin().await?;
        let changed = tx.change_refund(update, source, None, None, now).await?;
        let row: Option<RefundRow> = sqlx::query_as("select * from refund where refund_id = $1")
            .bind(update.refund_id)
            .fetch_optional(tx.conn())
            .await?;
        let row = row
            .ok_or_else(|| StoreError::Corrupt(format!("refund {} not found", update.refund_id)))?;
        tx.commit().await?;
        Ok((Refund::try_from(row)?, changed))
    }

    #[tracing::instrument(name = "store.claim_refunds_for_reconcile", skip_all)]
    async fn claim_refunds_for_reconcile(
        &self,
        now: i64,
        changed_before: i64,
        lease_until: i64,
        limit: u32,
    ) -> Result<Vec<Refund>, StoreError> {
        let rows: Vec<RefundRow> = self
            .claim_rows(&REFUNDS, now, changed_before, lease_until, limit)
            .await?;
        rows.into_iter().map(Refund::try_from).collect()
    }

    #[tracing::instrument(name = "store.defer_refund_reconcile", skip_all)]
    async fn defer_refund_reconcile(&self, refund_id: &str, until: i64) -> Result<(), StoreError> {
        self.defer_row(&REFUNDS, refund_id, until).await
    }

    async fn renew_refund_reconcile_claims(
        &self,
        refund_ids: &[String],
        held: i64,
        lease_until: i64,
    ) -> Result<u64, StoreError> {
        self.renew_rows(&REFUNDS, refund_ids, held, lease_until)
            .await
    }
}

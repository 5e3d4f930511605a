//! The `payment_capture` table ([`CaptureRecords`]): a CapturePayment's intent, written before
//! Stripe is called, at most one per payment; and a payment's dispute ([`DisputeRecords`]),
//! written with an event of its payment's log that names the dispute.

use async_trait::async_trait;

use super::payment_row::{PaymentRow, payment_json};
use super::{Backend, Change, Store, Transition, WriteTx};
use crate::app::ports::{CaptureRecord, CaptureRecords, DisputeRecords, DisputeUpdate, StoreError};
use crate::domain::{Dispute, EventSource, Payment};

/// The statuses of an open dispute, as SQL.
const OPEN_DISPUTE: &str = "dispute_status in ('warning_needs_response', 'warning_under_review', \
     'needs_response', 'under_review')";

#[derive(Debug, sqlx::FromRow)]
struct CaptureRow {
    payment_id: String,
    tenant: String,
    amount: i64,
    request_fingerprint: String,
    created_at: i64,
}

impl From<CaptureRow> for CaptureRecord {
    fn from(row: CaptureRow) -> CaptureRecord {
        CaptureRecord {
            payment_id: row.payment_id,
            tenant: row.tenant,
            amount: row.amount,
            request_fingerprint: row.request_fingerprint,
            created_at: row.created_at,
        }
    }
}

#[async_trait]
impl CaptureRecords for Store {
    async fn insert_capture(
        &self,
        record: &CaptureRecord,
        idempotency_key: &str,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        // The payment's row decides, in the insert: authorized, for as much, no capture yet (the
        // primary key refuses a second one, answered as not capturable by the caller's lookup).
        let inserted = sqlx::query(
            "insert into payment_capture \
             (payment_id, tenant, idempotency_key, request_fingerprint, amount, created_at) \
             select payment_id, tenant, $2, $3, $4, $5 from payment \
             where payment_id = $1 and tenant = $6 and status = 'requires_capture' \
               and amount_capturable >= $4 \
               and not exists (select 1 from payment_capture c where c.payment_id = $1)",
        )
        .bind(&record.payment_id)
        .bind(idempotency_key)
        .bind(&record.request_fingerprint)
        .bind(record.amount)
        .bind(record.created_at)
        .bind(&record.tenant)
        .execute(tx.conn())
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(inserted == 1)
    }

    async fn find_capture_by_key(
        &self,
        tenant: &str,
        idempotency_key: &str,
    ) -> Result<Option<CaptureRecord>, StoreError> {
        let row: Option<CaptureRow> = sqlx::query_as(
            "select payment_id, tenant, amount, request_fingerprint, created_at \
             from payment_capture where tenant = $1 and idempotency_key = $2",
        )
        .bind(tenant)
        .bind(idempotency_key)
        .fetch_optional(&self.read)
        .await?;
        Ok(row.map(CaptureRecord::from))
    }

    async fn find_capture(&self, payment_id: &str) -> Result<Option<CaptureRecord>, StoreError> {
        let row: Option<CaptureRow> = sqlx::query_as(
            "select payment_id, tenant, amount, request_fingerprint, created_at \
             from payment_capture where payment_id = $1",
        )
        .bind(payment_id)
        .fetch_optional(&self.read)
        .await?;
        Ok(row.map(CaptureRecord::from))
    }

    async fn count_authorizations_expiring(&self, deadline: i64) -> Result<u64, StoreError> {
        let (count,): (i64,) = sqlx::query_as(
            "select count(*) from payment \
             where status = 'requires_capture' and capture_before < $1",
        )
        .bind(deadline)
        .fetch_one(&self.read)
        .await?;
        Ok(u64::try_from(count).unwrap_or_default())
    }
}

#[async_trait]
impl DisputeRecords for Store {
    async fn apply_dispute(
        &self,
        update: DisputeUpdate<'_>,
        source: EventSource,
        now: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let changed = tx.set_dispute(update, source, None, None, now).await?;
        tx.commit().await?;
        Ok(changed)
    }

    async fn claim_open_disputes(
        &self,
        now: i64,
        checked_before: i64,
        limit: u32,
    ) -> Result<Vec<Payment>, StoreError> {
        let mut tx = self.begin().await?;
        let lock = match self.backend {
            Backend::Sqlite => "",
            Backend::Postgres => "for update skip locked",
        };
        let sql = format!(
            "update payment set dispute_checked_at = $1 \
             where payment_id in (select payment_id from payment \
                 where status = 'succeeded' and {OPEN_DISPUTE} \
                   and (dispute_checked_at is null or dispute_checked_at < $2) \
                 order by dispute_checked_at nulls first limit $3 {lock}) \
             returning *"
        );
        let rows: Vec<PaymentRow> = sqlx::query_as(&sql)
            .bind(now)
            .bind(checked_before)
            .bind(i64::from(limit))
            .fetch_all(tx.conn())
            .await?;
        tx.commit().await?;
        rows.into_iter().map(Payment::try_from).collect()
    }
}

impl WriteTx<'_> {
    /// Writes a payment's dispute if it is still `update.expected` (compare-and-set on its id,
    /// status and the fields that change), with an event of the payment's log naming the
    /// dispute; with `event_created`, also the newest applied dispute event's time. True when it
    /// changed.
    pub(super) async fn set_dispute(
        &mut self,
        update: DisputeUpdate<'_>,
        source: EventSource,
        stripe_event_id: Option<&str>,
        event_created: Option<i64>,
        now: i64,
    ) -> Result<bool, StoreError> {
        let expected = update.expected;
        let new: &Dispute = update.dispute;
        let updated = sqlx::query(
            "update payment set dispute_id = $1, dispute_status = $2, dispute_reason = $3, \
                 dispute_amount = $4, dispute_evidence_due_by = $5, \
                 dispute_is_charge_refundable = $6, \
                 dispute_last_event_created = coalesce($7, dispute_last_event_created), \
                 updated_at = $8 \
             where payment_id = $9 \
               and coalesce(dispute_id, '') = $10 and coalesce(dispute_status, '') = $11 \
               and coalesce(dispute_amount, -1) = $12 \
               and coalesce(dispute_is_charge_refundable, -1) = $13 \
               and coalesce(dispute_evidence_due_by, -1) = $14",
        )
        .bind(&new.id)
        .bind(new.status.as_str())
        .bind(&new.reason)
        .bind(new.amount)
        .bind(new.evidence_due_by)
        .bind(i64::from(new.is_charge_refundable))
        .bind(event_created)
        .bind(now)
        .bind(update.payment_id)
        .bind(expected.map_or("", |d| d.id.as_str()))
        .bind(expected.map_or("", |d| d.status.as_str()))
        .bind(expected.map_or(-1, |d| d.amount))
        .bind(expected.map_or(-1, |d| i64::from(d.is_charge_refundable)))
        .bind(expected.and_then(|d| d.evidence_due_by).unwrap_or(-1))
        .execute(self.conn())
        .await?
        .rows_affected();
        if updated != 1 {
            return Ok(false);
        }
        self.append_dispute_event(update.payment_id, &new.id, source, stripe_event_id, now)
            .await?;
        Ok(true)
    }

    /// Appends a dispute's change to its payment's event log: the payment's status on both
    /// sides, the payment as it stands now, and the dispute's id.
    async fn append_dispute_event(
        &mut self,
        payment_id: &str,
        dispute_id: &str,
        source: EventSource,
        stripe_event_id: Option<&str>,
        now: i64,
    ) -> Result<(), StoreError> {
        fn sql(backend: Backend) -> String {
            format!(
                "insert into payment_event \
                 (payment_id, source, from_status, to_status, stripe_event_id, created_at, \
                  refund_id, tenant, object, dispute_id) \
                 select p.payment_id, $2, p.status, p.status, $3, $4, null, p.tenant, {}, $5 \
                 from payment p where p.payment_id = $1",
                payment_json(backend, "p")
            )
        }
        static SQL: std::sync::LazyLock<[String; 2]> =
            std::sync::LazyLock::new(|| [sql(Backend::Sqlite), sql(Backend::Postgres)]);
        let appended = sqlx::query(&SQL[usize::from(self.store.backend == Backend::Postgres)])
            .bind(payment_id)
            .bind(source.as_str())
            .bind(stripe_event_id)
            .bind(now)
            .bind(dispute_id)
            .execute(self.conn())
            .await?
            .rows_affected();
        if appended != 1 {
            return Err(StoreError::Corrupt(format!(
                "dispute event of payment {payment_id}: its row is missing"
            )));
        }
        self.changes.push(Change {
            payment_id: payment_id.to_owned(),
            source,
            transition: Transition::Dispute,
        });
        Ok(())
    }
}

//! The `idempotency_key` table: the first answer to a create's key is the payment it named.

use async_trait::async_trait;

use super::Store;
use super::payment_row::PaymentRow;
use crate::app::ports::{CreateLookup, IdempotencyKeys, IdempotencyRecord, StoreError};
use crate::domain::Payment;

/// A row of [`IdempotencyKeys::find_for_create`]: a payment, with the fingerprint of the request
/// whose idempotency key named it (null on the invoice's row).
#[derive(Debug, sqlx::FromRow)]
struct LookupRow {
    request_fingerprint: Option<String>,
    #[sqlx(flatten)]
    payment: PaymentRow,
}

#[async_trait]
impl IdempotencyKeys for Store {
    #[tracing::instrument(name = "store.find_for_create", skip_all)]
    async fn find_for_create(
        &self,
        tenant: &str,
        idempotency_key: &str,
        invoice_id: &str,
    ) -> Result<CreateLookup, StoreError> {
        let rows: Vec<LookupRow> = sqlx::query_as(
            "select k.request_fingerprint, p.* from idempotency_key k \
             join payment p on p.payment_id = k.payment_id \
             where k.tenant = $1 and k.idempotency_key = $2 \
             union all \
             select null, p.* from payment p \
             where p.tenant = $1 and p.invoice_id = $3 and p.status <> 'canceled'",
        )
        .bind(tenant)
        .bind(idempotency_key)
        .bind(invoice_id)
        .fetch_all(&self.read)
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

    #[tracing::instrument(name = "store.insert_idempotency_key", skip_all)]
    async fn insert_idempotency_key(
        &self,
        tenant: &str,
        idempotency_key: &str,
        request_fingerprint: &str,
        payment_id: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        // A key taken concurrently breaks the primary key: `Conflict`.
        let _writer = self.hold_writer().await;
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
        .execute(&self.write)
        .await?;
        Ok(())
    }
}

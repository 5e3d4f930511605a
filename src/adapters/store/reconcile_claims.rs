//! The reconciler's leases on open payments (`payment.reconcile_lease_until`).

use async_trait::async_trait;

use super::payments::PaymentRow;
use super::{Backend, Store};
use crate::app::ports::{ReconcileClaims, StoreError};
use crate::domain::Payment;

#[async_trait]
impl ReconcileClaims for Store {
    async fn claim_for_reconcile(
        &self,
        now: i64,
        changed_before: i64,
        lease_until: i64,
        limit: u32,
    ) -> Result<Vec<Payment>, StoreError> {
        // On PostgreSQL, `skip locked` lets replicas claim side by side without taking the same
        // payment; SQLite has one writer at a time, which already excludes the others.
        const CLAIM: &str = "update payment set reconcile_lease_until = $1 \
             where payment_id in ( \
                 select payment_id from payment \
                 where status not in ('succeeded', 'canceled') \
                   and updated_at < $2 \
                   and (reconcile_lease_until is null or reconcile_lease_until < $3) \
                 order by updated_at \
                 limit $4 LOCK) \
             returning *";
        static SQLITE: std::sync::LazyLock<String> =
            std::sync::LazyLock::new(|| CLAIM.replace("LOCK", ""));
        static POSTGRES: std::sync::LazyLock<String> =
            std::sync::LazyLock::new(|| CLAIM.replace("LOCK", "for update skip locked"));
        let sql = match self.backend {
            Backend::Sqlite => &SQLITE,
            Backend::Postgres => &POSTGRES,
        };
        let _writer = self.hold_writer().await;
        let rows: Vec<PaymentRow> = sqlx::query_as(sql.as_str())
            .bind(lease_until)
            .bind(changed_before)
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(&self.write)
            .await?;
        rows.into_iter().map(Payment::try_from).collect()
    }

    async fn defer_reconcile(&self, payment_id: &str, until: i64) -> Result<(), StoreError> {
        let _writer = self.hold_writer().await;
        sqlx::query("update payment set reconcile_lease_until = $1 where payment_id = $2")
            .bind(until)
            .bind(payment_id)
            .execute(&self.write)
            .await?;
        Ok(())
    }
}

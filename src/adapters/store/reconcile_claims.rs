//! The reconciler's leases (`reconcile_lease_until`) on open payments and on refunds not final
//! yet: one claim and one deferral, for either table.

use async_trait::async_trait;

use super::payment_row::PaymentRow;
use super::{Backend, Store};
use crate::app::ports::{ReconcileClaims, StoreError, TransientPayments};
use crate::domain::Payment;

/// A table the reconciler claims rows of.
pub(super) struct Claimable {
    pub table: &'static str,
    pub id_column: &'static str,
    /// The SQL condition of a row the reconciler should look at.
    pub open: &'static str,
}

const PAYMENTS: Claimable = Claimable {
    table: "payment",
    id_column: "payment_id",
    open: "status not in ('succeeded', 'canceled')",
};

impl Store {
    /// Claims up to `limit` open rows unchanged since `changed_before` that no replica holds a
    /// lease on, leasing them until `lease_until`. On PostgreSQL, `skip locked` lets replicas
    /// claim side by side without taking the same row; SQLite has one writer at a time, which
    /// already excludes the others.
    pub(super) async fn claim_rows<R>(
        &self,
        claimable: &Claimable,
        now: i64,
        changed_before: i64,
        lease_until: i64,
        limit: u32,
    ) -> Result<Vec<R>, StoreError>
    where
        R: for<'r> sqlx::FromRow<'r, sqlx::any::AnyRow> + Send + Unpin,
    {
        let Claimable {
            table,
            id_column,
            open,
        } = claimable;
        let lock = match self.backend {
            Backend::Sqlite => "",
            Backend::Postgres => "for update skip locked",
        };
        let sql = format!(
            "update {table} set reconcile_lease_until = $1 \
             where {id_column} in ( \
                 select {id_column} from {table} \
                 where {open} \
                   and updated_at < $2 \
                   and (reconcile_lease_until is null or reconcile_lease_until < $3) \
                 order by updated_at \
                 limit $4 {lock}) \
             returning *"
        );
        let _writer = self.hold_writer().await;
        Ok(sqlx::query_as(&sql)
            .bind(lease_until)
            .bind(changed_before)
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(&self.write)
            .await?)
    }

    /// Extends to `lease_until` the lease of those of `ids` still leased until `held`.
    pub(super) async fn renew_rows(
        &self,
        claimable: &Claimable,
        ids: &[String],
        held: i64,
        lease_until: i64,
    ) -> Result<u64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let placeholders: Vec<String> = (3..ids.len() + 3).map(|n| format!("${n}")).collect();
        let sql = format!(
            "update {} set reconcile_lease_until = $1 \
             where reconcile_lease_until = $2 and {} in ({})",
            claimable.table,
            claimable.id_column,
            placeholders.join(", ")
        );
        let mut query = sqlx::query(&sql).bind(lease_until).bind(held);
        for id in ids {
            query = query.bind(id.as_str());
        }
        let _writer = self.hold_writer().await;
        Ok(query.execute(&self.write).await?.rows_affected())
    }

    /// Leaves a row alone until `until` (unix ms).
    pub(super) async fn defer_row(
        &self,
        claimable: &Claimable,
        id: &str,
        until: i64,
    ) -> Result<(), StoreError> {
        let sql = format!(
            "update {} set reconcile_lease_until = $1 where {} = $2",
            claimable.table, claimable.id_column
        );
        let _writer = self.hold_writer().await;
        sqlx::query(&sql)
            .bind(until)
            .bind(id)
            .execute(&self.write)
            .await?;
        Ok(())
    }
}

#[async_trait]
impl ReconcileClaims for Store {
    #[tracing::instrument(name = "store.claim_for_reconcile", skip_all)]
    async fn claim_for_reconcile(
        &self,
        now: i64,
        changed_before: i64,
        lease_until: i64,
        limit: u32,
    ) -> Result<Vec<Payment>, StoreError> {
        let rows: Vec<PaymentRow> = self
            .claim_rows(&PAYMENTS, now, changed_before, lease_until, limit)
            .await?;
        rows.into_iter().map(Payment::try_from).collect()
    }

    #[tracing::instrument(name = "store.defer_reconcile", skip_all)]
    async fn defer_reconcile(&self, payment_id: &str, until: i64) -> Result<(), StoreError> {
        self.defer_row(&PAYMENTS, payment_id, until).await
    }

    async fn renew_reconcile_claims(
        &self,
        payment_ids: &[String],
        held: i64,
        lease_until: i64,
    ) -> Result<u64, StoreError> {
        self.renew_rows(&PAYMENTS, payment_ids, held, lease_until)
            .await
    }

    #[tracing::instrument(name = "store.transient_payments", skip_all)]
    async fn transient_payments(&self) -> Result<Vec<TransientPayments>, StoreError> {
        // Read from the partial index `payment_transient` (only these rows are in it).
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "select status, count(*), min(updated_at) from payment \
             where status in ('creating', 'processing') group by status",
        )
        .fetch_all(&self.read)
        .await?;
        rows.into_iter()
            .map(|(status, count, oldest_updated_at)| {
                Ok(TransientPayments {
                    status: super::parse_status(&status)?,
                    count: u64::try_from(count).unwrap_or(0),
                    oldest_updated_at,
                })
            })
            .collect()
    }
}

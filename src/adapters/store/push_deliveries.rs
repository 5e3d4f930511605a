//! The `push_delivery` table: where each tenant's pushes stand, and which replica sends them
//! (a lease, as the reconciler's claims).

use async_trait::async_trait;

use super::{Backend, Store};
use crate::app::ports::{FeedPosition, PushDeliveries, PushDelivery, PushProgress, StoreError};

#[derive(Debug, sqlx::FromRow)]
struct PushDeliveryRow {
    tenant: String,
    commit_group: Option<i64>,
    event_id: Option<i64>,
    attempts: i64,
    next_attempt_at: i64,
    first_failure_at: Option<i64>,
    lease_until: Option<i64>,
}

impl TryFrom<PushDeliveryRow> for PushDelivery {
    type Error = StoreError;

    fn try_from(row: PushDeliveryRow) -> Result<Self, Self::Error> {
        let position = match (row.commit_group, row.event_id) {
            (Some(commit_group), Some(event_id)) => Some(FeedPosition {
                commit_group,
                event_id,
            }),
            (None, None) => None,
            _ => {
                return Err(StoreError::Corrupt(format!(
                    "push_delivery of {}: half a position",
                    row.tenant
                )));
            }
        };
        Ok(PushDelivery {
            attempts: u32::try_from(row.attempts).map_err(|_| {
                StoreError::Corrupt(format!("push_delivery of {}: attempts", row.tenant))
            })?,
            tenant: row.tenant,
            position,
            next_attempt_at: row.next_attempt_at,
            first_failure_at: row.first_failure_at,
            lease_until: row.lease_until,
        })
    }
}

const COLUMNS: &str =
    "tenant, commit_group, event_id, attempts, next_attempt_at, first_failure_at, lease_until";

#[async_trait]
impl PushDeliveries for Store {
    #[tracing::instrument(name = "store.push_delivery", skip_all)]
    async fn push_delivery(&self, tenant: &str) -> Result<Option<PushDelivery>, StoreError> {
        let row: Option<PushDeliveryRow> = sqlx::query_as(&format!(
            "select {COLUMNS} from push_delivery where tenant = $1"
        ))
        .bind(tenant)
        .fetch_optional(&self.read)
        .await?;
        row.map(PushDelivery::try_from).transpose()
    }

    #[tracing::instrument(name = "store.claim_push_delivery", skip_all)]
    async fn claim_push_delivery(
        &self,
        tenant: &str,
        now: i64,
        lease_until: i64,
    ) -> Result<Option<PushDelivery>, StoreError> {
        // On PostgreSQL a replica claiming at the same moment skips the locked row instead of
        // waiting for it; SQLite has one writer at a time.
        let lock = match self.backend {
            Backend::Sqlite => "",
            Backend::Postgres => "for update skip locked",
        };
        let mut tx = self.begin().await?;
        sqlx::query(
            "insert into push_delivery (tenant, attempts, next_attempt_at, updated_at) \
             values ($1, 0, 0, $2) on conflict (tenant) do nothing",
        )
        .bind(tenant)
        .bind(now)
        .execute(tx.conn())
        .await?;
        let row: Option<PushDeliveryRow> = sqlx::query_as(&format!(
            "update push_delivery set lease_until = $1, updated_at = $2 \
             where tenant in ( \
                 select tenant from push_delivery \
                 where tenant = $3 \
                   and next_attempt_at <= $2 \
                   and (lease_until is null or lease_until < $2) {lock}) \
             returning {COLUMNS}"
        ))
        .bind(lease_until)
        .bind(now)
        .bind(tenant)
        .fetch_optional(tx.conn())
        .await?;
        tx.commit().await?;
        row.map(PushDelivery::try_from).transpose()
    }

    #[tracing::instrument(name = "store.record_push", skip_all)]
    async fn record_push(
        &self,
        tenant: &str,
        held: i64,
        progress: &PushProgress,
        now: i64,
    ) -> Result<bool, StoreError> {
        let _writer = self.hold_writer().await;
        let done = sqlx::query(
            "update push_delivery set commit_group = $1, event_id = $2, attempts = $3, \
                 next_attempt_at = $4, first_failure_at = $5, lease_until = $6, updated_at = $7 \
             where tenant = $8 and lease_until = $9",
        )
        .bind(progress.position.map(|p| p.commit_group))
        .bind(progress.position.map(|p| p.event_id))
        .bind(i64::from(progress.attempts))
        .bind(progress.next_attempt_at)
        .bind(progress.first_failure_at)
        .bind(progress.lease_until)
        .bind(now)
        .bind(tenant)
        .bind(held)
        .execute(&self.write)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

//! The `customer` table: the Stripe customer paybridge made for a tenant's customer email.

use async_trait::async_trait;

use super::Store;
use crate::app::ports::{CustomerRecords, StoreError};

#[async_trait]
impl CustomerRecords for Store {
    #[tracing::instrument(name = "store.find_customer", skip_all)]
    async fn find_customer(&self, tenant: &str, email: &str) -> Result<Option<String>, StoreError> {
        let found: Option<(String,)> = sqlx::query_as(
            "select stripe_customer_id from customer where tenant = $1 and email = $2",
        )
        .bind(tenant)
        .bind(email)
        .fetch_optional(&self.read)
        .await?;
        Ok(found.map(|(id,)| id))
    }

    #[tracing::instrument(name = "store.remember_customer", skip_all)]
    async fn remember_customer(
        &self,
        tenant: &str,
        email: &str,
        stripe_customer_id: &str,
        now: i64,
    ) -> Result<String, StoreError> {
        let mut tx = self.begin().await?;
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
}

//! The `payment_link` table: hosted payment page links, by their token's hash.

use async_trait::async_trait;

use super::Store;
use crate::app::ports::{PaymentLinks, StoreError};

#[async_trait]
impl PaymentLinks for Store {
    async fn insert_payment_link(
        &self,
        token_sha256: &str,
        payment_id: &str,
        tenant: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "insert into payment_link (token_sha256, payment_id, tenant, created_at, expires_at) \
             values ($1, $2, $3, $4, $5)",
        )
        .bind(token_sha256)
        .bind(payment_id)
        .bind(tenant)
        .bind(now)
        .bind(expires_at)
        .execute(tx.conn())
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn find_payment_link(
        &self,
        token_sha256: &str,
        now: i64,
    ) -> Result<Option<String>, StoreError> {
        // One indexed look-up whether the link is unknown, expired or working.
        let found: Option<(String,)> = sqlx::query_as(
            "select payment_id from payment_link where token_sha256 = $1 and expires_at > $2",
        )
        .bind(token_sha256)
        .bind(now)
        .fetch_optional(&self.read)
        .await?;
        Ok(found.map(|(id,)| id))
    }

    async fn delete_expired_payment_links(&self, before: i64) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        let done = sqlx::query("delete from payment_link where expires_at < $1")
            .bind(before)
            .execute(tx.conn())
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }
}

//! Hosted page links, in memory.

use async_trait::async_trait;

use super::FakeStore;
use crate::app::ports::{PaymentLinks, StoreError};

#[async_trait]
impl PaymentLinks for FakeStore {
    async fn insert_payment_link(
        &self,
        token_sha256: &str,
        payment_id: &str,
        _tenant: &str,
        _now: i64,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let mut state = self.state()?;
        if state.links.contains_key(token_sha256) {
            return Err(StoreError::Conflict);
        }
        state
            .links
            .insert(token_sha256.to_owned(), (payment_id.to_owned(), expires_at));
        Ok(())
    }

    async fn find_payment_link(
        &self,
        token_sha256: &str,
        now: i64,
    ) -> Result<Option<String>, StoreError> {
        Ok(self
            .state()?
            .links
            .get(token_sha256)
            .filter(|(_, expires_at)| *expires_at > now)
            .map(|(payment_id, _)| payment_id.clone()))
    }

    async fn delete_expired_payment_links(&self, before: i64) -> Result<u64, StoreError> {
        let mut state = self.state()?;
        let count = state.links.len();
        state
            .links
            .retain(|_, (_, expires_at)| *expires_at >= before);
        Ok((count - state.links.len()) as u64)
    }
}

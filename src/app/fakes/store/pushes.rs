//! The push deliveries, in memory: a claim leases a due, unheld delivery; a record needs the
//! lease it was given.

use async_trait::async_trait;

use super::FakeStore;
use crate::app::ports::{PushDeliveries, PushDelivery, PushProgress, StoreError};

#[async_trait]
impl PushDeliveries for FakeStore {
    async fn push_delivery(&self, tenant: &str) -> Result<Option<PushDelivery>, StoreError> {
        Ok(self.state()?.push_deliveries.get(tenant).cloned())
    }

    async fn claim_push_delivery(
        &self,
        tenant: &str,
        now: i64,
        lease_until: i64,
    ) -> Result<Option<PushDelivery>, StoreError> {
        let mut state = self.state()?;
        let delivery = state
            .push_deliveries
            .entry(tenant.to_owned())
            .or_insert_with(|| PushDelivery {
                tenant: tenant.to_owned(),
                position: None,
                attempts: 0,
                next_attempt_at: 0,
                first_failure_at: None,
                lease_until: None,
            });
        if delivery.next_attempt_at > now || delivery.lease_until.is_some_and(|held| held >= now) {
            return Ok(None);
        }
        delivery.lease_until = Some(lease_until);
        Ok(Some(delivery.clone()))
    }

    async fn record_push(
        &self,
        tenant: &str,
        held: i64,
        progress: &PushProgress,
        _now: i64,
    ) -> Result<bool, StoreError> {
        let mut state = self.state()?;
        let Some(delivery) = state.push_deliveries.get_mut(tenant) else {
            return Ok(false);
        };
        if delivery.lease_until != Some(held) {
            return Ok(false);
        }
        delivery.position = progress.position;
        delivery.attempts = progress.attempts;
        delivery.next_attempt_at = progress.next_attempt_at;
        delivery.first_failure_at = progress.first_failure_at;
        delivery.lease_until = progress.lease_until;
        Ok(true)
    }
}

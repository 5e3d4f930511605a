//! Captures and disputes, in memory.

use async_trait::async_trait;

use super::{FakeStore, StoreState};
use crate::app::ports::{
    CaptureRecord, CaptureRecords, DisputeRecords, DisputeUpdate, FeedObject, StoreError,
};
use crate::domain::{EventSource, Payment, PaymentStatus};

impl StoreState {
    /// Writes a payment's dispute if it is still `update.expected`; true when it changed.
    pub(super) fn set_dispute(
        &mut self,
        update: DisputeUpdate<'_>,
        source: EventSource,
        event_created: Option<i64>,
        now: i64,
    ) -> bool {
        let Some(payment) = self.payments.get_mut(update.payment_id) else {
            return false;
        };
        if payment.dispute.as_ref() != update.expected {
            return false;
        }
        payment.dispute = Some(update.dispute.clone());
        if event_created.is_some() {
            payment.dispute_last_event_created = event_created;
        }
        payment.updated_at = now;
        let payment = payment.clone();
        self.push_feed(source, now, FeedObject::Dispute(Box::new(payment)));
        true
    }
}

#[async_trait]
impl CaptureRecords for FakeStore {
    async fn insert_capture(
        &self,
        record: &CaptureRecord,
        idempotency_key: &str,
    ) -> Result<bool, StoreError> {
        let mut state = self.state()?;
        if state
            .captures
            .values()
            .any(|(other, key)| other.tenant == record.tenant && key == idempotency_key)
        {
            return Err(StoreError::Conflict);
        }
        let fits = state.payments.get(&record.payment_id).is_some_and(|p| {
            p.tenant == record.tenant
                && p.status == PaymentStatus::RequiresCapture
                && p.amount_capturable >= record.amount
        });
        if !fits || state.captures.contains_key(&record.payment_id) {
            return Ok(false);
        }
        state.captures.insert(
            record.payment_id.clone(),
            (record.clone(), idempotency_key.to_owned()),
        );
        Ok(true)
    }

    async fn find_capture_by_key(
        &self,
        tenant: &str,
        idempotency_key: &str,
    ) -> Result<Option<CaptureRecord>, StoreError> {
        Ok(self
            .state()?
            .captures
            .values()
            .find(|(record, key)| record.tenant == tenant && key == idempotency_key)
            .map(|(record, _)| record.clone()))
    }

    async fn find_capture(&self, payment_id: &str) -> Result<Option<CaptureRecord>, StoreError> {
        Ok(self
            .state()?
            .captures
            .get(payment_id)
            .map(|(record, _)| record.clone()))
    }

    async fn count_authorizations_expiring(&self, deadline: i64) -> Result<u64, StoreError> {
        Ok(self
            .state()?
            .payments
            .values()
            .filter(|p| {
                p.status == PaymentStatus::RequiresCapture
                    && p.capture_before.is_some_and(|at| at < deadline)
            })
            .count() as u64)
    }
}

#[async_trait]
impl DisputeRecords for FakeStore {
    async fn apply_dispute(
        &self,
        update: DisputeUpdate<'_>,
        source: EventSource,
        now: i64,
    ) -> Result<bool, StoreError> {
        let changed = self.state()?.set_dispute(update, source, None, now);
        if changed {
            let _ = self.changes.send(update.payment_id.to_owned());
        }
        Ok(changed)
    }

    async fn claim_open_disputes(
        &self,
        now: i64,
        checked_before: i64,
        limit: u32,
    ) -> Result<Vec<Payment>, StoreError> {
        let mut state = self.state()?;
        let claimed: Vec<Payment> = state
            .payments
            .values()
            .filter(|p| {
                p.status == PaymentStatus::Succeeded
                    && p.dispute.as_ref().is_some_and(|d| !d.status.is_final())
            })
            .filter(|p| {
                state
                    .dispute_checks
                    .get(&p.id)
                    .is_none_or(|at| *at < checked_before)
            })
            .take(limit as usize)
            .cloned()
            .collect();
        for payment in &claimed {
            state.dispute_checks.insert(payment.id.clone(), now);
        }
        Ok(claimed)
    }
}

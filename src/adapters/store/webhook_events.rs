//! The `stripe_event` table: every verified webhook event, recorded once, with the change it
//! makes in the same transaction.

use async_trait::async_trait;

use super::{AppendedEvent, Store};
use crate::app::ports::{
    EventRecorded, StoreError, WebhookChange, WebhookEventLog, WebhookEventRecord,
};
use crate::domain::EventSource;

#[async_trait]
impl WebhookEventLog for Store {
    async fn record_webhook_event(
        &self,
        event: &WebhookEventRecord<'_>,
        change: Option<WebhookChange<'_>>,
        now: i64,
    ) -> Result<EventRecorded, StoreError> {
        let mut tx = self.begin().await?;
        let inserted = sqlx::query(
            "insert into stripe_event \
             (stripe_event_id, event_type, event_created, payment_id, result, received_at) \
             values ($1, $2, $3, $4, $5, $6) on conflict (stripe_event_id) do nothing",
        )
        .bind(event.stripe_event_id)
        .bind(event.event_type)
        .bind(event.event_created)
        .bind(event.payment_id)
        .bind(event.result)
        .bind(now)
        .execute(tx.conn())
        .await?
        .rows_affected();
        if inserted == 0 {
            return Ok(EventRecorded::Duplicate);
        }
        if let (Some(WebhookChange::Payment(change)), Some(payment_id)) = (change, event.payment_id)
        {
            if !tx
                .set_status(payment_id, change, now, Some(event.event_created))
                .await?
            {
                // The payment moved on since the caller read it: nothing recorded.
                return Ok(EventRecorded::Conflict);
            }
            tx.append_event(AppendedEvent {
                payment_id,
                source: EventSource::Webhook,
                from: Some(change.from),
                to: change.to,
                stripe_event_id: Some(event.stripe_event_id),
                now,
            })
            .await?;
        }
        tx.commit().await?;
        Ok(EventRecorded::Recorded)
    }
}

#[async_trait]
impl crate::app::ports::RefundRecords for Store {
    async fn insert_refund(
        &self,
        _refund: &crate::domain::Refund,
        _idempotency_key: &str,
        _request_fingerprint: &str,
    ) -> Result<bool, StoreError> {
        todo!("refunds: store")
    }
    async fn insert_external_refund(
        &self,
        _refund: &crate::domain::Refund,
        _source: crate::domain::EventSource,
        _now: i64,
    ) -> Result<bool, StoreError> {
        todo!("refunds: store")
    }
    async fn get_refund(
        &self,
        _tenant: Option<&str>,
        _refund_id: &str,
    ) -> Result<Option<crate::domain::Refund>, StoreError> {
        todo!("refunds: store")
    }
    async fn find_refund_by_key(
        &self,
        _tenant: &str,
        _idempotency_key: &str,
    ) -> Result<Option<(String, crate::domain::Refund)>, StoreError> {
        todo!("refunds: store")
    }
    async fn find_refund_by_stripe_id(
        &self,
        _stripe_refund_id: &str,
    ) -> Result<Option<crate::domain::Refund>, StoreError> {
        todo!("refunds: store")
    }
    async fn list_refunds(
        &self,
        _query: crate::app::ports::RefundListQuery<'_>,
    ) -> Result<Vec<crate::domain::Refund>, StoreError> {
        todo!("refunds: store")
    }
    async fn apply_refund_change(
        &self,
        _update: crate::app::ports::RefundUpdate<'_>,
        _source: crate::domain::EventSource,
        _now: i64,
    ) -> Result<(crate::domain::Refund, bool), StoreError> {
        todo!("refunds: store")
    }
    async fn claim_refunds_for_reconcile(
        &self,
        _now: i64,
        _changed_before: i64,
        _lease_until: i64,
        _limit: u32,
    ) -> Result<Vec<crate::domain::Refund>, StoreError> {
        todo!("refunds: store")
    }
    async fn defer_refund_reconcile(
        &self,
        _refund_id: &str,
        _until: i64,
    ) -> Result<(), StoreError> {
        todo!("refunds: store")
    }
}

//! The `stripe_event` table: every verified webhook event, recorded once, with the change it
//! makes in the same transaction.

use async_trait::async_trait;

use super::{AppendedEvent, Store};
use crate::app::ports::{EventRecorded, StoreError, WebhookEventLog, WebhookEventRecord};
use crate::domain::{EventSource, StatusChange};

#[async_trait]
impl WebhookEventLog for Store {
    async fn record_webhook_event(
        &self,
        event: &WebhookEventRecord<'_>,
        change: Option<&StatusChange>,
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
        if let (Some(change), Some(payment_id)) = (change, event.payment_id) {
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

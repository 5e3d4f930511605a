//! The `stripe_event` table: every verified webhook event, recorded once, with the change it
//! makes (to a payment, or to one of its refunds) in the same transaction.

use async_trait::async_trait;

use super::{AppendedEvent, Store, Transition};
use crate::app::ports::{
    EventRecorded, StoreError, WebhookChange, WebhookEventLog, WebhookEventRecord,
};
use crate::domain::{EventSource, Refund};

#[async_trait]
impl WebhookEventLog for Store {
    #[tracing::instrument(name = "store.record_webhook_event", skip_all)]
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
        let applied = match (change, event.payment_id) {
            (Some(WebhookChange::Payment(change)), Some(payment_id)) => {
                let changed = tx
                    .set_status(payment_id, change, now, Some(event.event_created))
                    .await?;
                if changed {
                    tx.append_event(AppendedEvent {
                        payment_id,
                        refund_id: None,
                        source: EventSource::Webhook,
                        transition: Transition::Payment {
                            from: Some(change.from),
                            to: change.to,
                        },
                        stripe_event_id: Some(event.stripe_event_id),
                        now,
                    })
                    .await?;
                }
                changed
            }
            (Some(WebhookChange::Refund(update)), _) => {
                tx.change_refund(
                    update,
                    EventSource::Webhook,
                    Some(event.stripe_event_id),
                    Some(event.event_created),
                    now,
                )
                .await?
            }
            (Some(WebhookChange::ExternalRefund(refund)), _) => {
                let refund = Refund {
                    last_event_created: Some(event.event_created),
                    ..refund.clone()
                };
                // Its first event says where it came from; the webhook's id is kept with it.
                tx.insert_external_refund(
                    &refund,
                    EventSource::External,
                    Some(event.stripe_event_id),
                    now,
                )
                .await?
            }
            (Some(WebhookChange::Dispute(update)), _) => {
                tx.set_dispute(
                    update,
                    EventSource::Webhook,
                    Some(event.stripe_event_id),
                    Some(event.event_created),
                    now,
                )
                .await?
            }
            (Some(WebhookChange::Payment(_)), None) | (None, _) => true,
        };
        if !applied {
            // The payment or the refund moved on since the caller read it, or (an external
            // refund) its Stripe id was recorded meanwhile: nothing recorded.
            return Ok(EventRecorded::Conflict);
        }
        tx.commit().await?;
        Ok(EventRecorded::Recorded)
    }
}

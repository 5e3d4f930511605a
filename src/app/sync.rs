//! Bringing a payment up to date with its PaymentIntent at Stripe.

use super::create::observation_of;
use super::{AppError, Payments, now_millis};
use crate::domain::{EventSource, Observation, Payment};

impl Payments {
    /// Re-reads the payment's intent from Stripe and records any change. Terminal payments are
    /// returned without a Stripe call; a `Creating` payment is finished instead.
    pub(crate) async fn sync_with_provider(
        &self,
        payment: Payment,
        source: EventSource,
    ) -> Result<Payment, AppError> {
        if payment.status.is_terminal() {
            return Ok(payment);
        }
        let Some(intent_id) = payment.stripe_payment_intent_id.clone() else {
            return self.finish_creating(payment).await;
        };
        let intent = self
            .intent_reads
            .retrieve(self.provider.as_ref(), &intent_id)
            .await?;
        payment
            .check_intent(&intent.id, intent.amount, &intent.currency, &intent.metadata)
            .map_err(|mismatch| {
                tracing::error!(payment_id = %payment.id, payment_intent = %intent_id, %mismatch, "intent at Stripe does not match the payment; nothing recorded");
                AppError::IntentMismatch(mismatch)
            })?;
        self.record_observation(payment, &observation_of(&intent), source)
            .await
    }

    /// Records what Stripe says of the payment, if it changes anything.
    pub(crate) async fn record_observation(
        &self,
        payment: Payment,
        observation: &Observation,
        source: EventSource,
    ) -> Result<Payment, AppError> {
        let Some(change) = payment.observe(observation) else {
            return Ok(payment);
        };
        let (payment, changed) = self
            .store
            .apply_change(&payment.id, &change, source, now_millis())
            .await?;
        if changed {
            tracing::info!(payment_id = %payment.id, from = %change.from, to = %change.to, "payment status changed");
        }
        Ok(payment)
    }
}

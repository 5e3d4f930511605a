//! Bringing a payment up to date with its PaymentIntent at Stripe.

use super::create::observation_at;
use super::ports::{ProviderDispute, ProviderIntent};
use super::{AppError, Payments, now_millis};
use crate::domain::{EventSource, Observation, Payment, PaymentStatus};

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
        let observation = self.observe_intent(&payment, &intent, now_millis()).await;
        self.record_observation(payment, &observation, source).await
    }

    /// What an intent says of the payment, true at `observed_at` (unix ms). An authorization
    /// seen for the first time gets its deadline from its charge
    /// (`payment_method_details.card.capture_before`), read at Stripe once; without one (or
    /// when the read fails) it holds 7 days from `observed_at`.
    pub(crate) async fn observe_intent(
        &self,
        payment: &Payment,
        intent: &ProviderIntent,
        observed_at: i64,
    ) -> Observation {
        let mut observation = observation_at(intent, observed_at);
        if observation.status == PaymentStatus::RequiresCapture
            && observation.capture_before.is_none()
            && payment.capture_before.is_none()
            && let Some(charge) = &intent.latest_charge
        {
            match self.provider.retrieve_charge(charge).await {
                Ok(charge) => observation.capture_before = charge.capture_before,
                Err(error) => {
                    tracing::warn!(payment_id = %payment.id, %error, "reading the authorization's charge failed; it holds 7 days");
                }
            }
        }
        observation
    }

    /// The PaymentIntent a dispute is about: named by the dispute, or read from its charge.
    pub(crate) async fn dispute_intent(
        &self,
        observed: &ProviderDispute,
    ) -> Result<Option<String>, AppError> {
        if let Some(intent) = &observed.payment_intent {
            return Ok(Some(intent.clone()));
        }
        match &observed.charge {
            Some(charge) => Ok(self.provider.retrieve_charge(charge).await?.payment_intent),
            None => Ok(None),
        }
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

//! CancelPayment.

use super::create::observation_of;
use super::ports::ProviderError;
use super::{AppError, Payments, now_millis};
use crate::domain::{EventSource, Payment, PaymentStatus};

impl Payments {
    /// Cancels a payment that has not succeeded: cancels its PaymentIntent at Stripe and records
    /// `Canceled`. Cancelling a cancelled payment answers it again.
    #[tracing::instrument(skip(self), fields(payment_id = %payment_id))]
    pub async fn cancel_payment(
        &self,
        tenant: &str,
        payment_id: &str,
    ) -> Result<Payment, AppError> {
        let payment = self.load(Some(tenant), payment_id).await?;
        match payment.status {
            PaymentStatus::Canceled => return Ok(payment),
            PaymentStatus::Succeeded => {
                return Err(AppError::NotCancelable {
                    status: payment.status,
                });
            }
            _ => {}
        }
        // A payment still creating gets its intent first (the same one a crash left behind, if
        // any), so that nothing can be paid after the cancel.
        let payment = self.finish_creating(payment).await?;
        let _guard = self.locks.lock(&payment.id).await;
        let payment = self.load(Some(tenant), payment_id).await?;
        if payment.status.is_terminal() {
            return match payment.status {
                PaymentStatus::Succeeded => Err(AppError::NotCancelable {
                    status: payment.status,
                }),
                _ => Ok(payment),
            };
        }
        let intent_id = payment
            .stripe_payment_intent_id
            .clone()
            .ok_or_else(|| AppError::Internal("open payment without an intent".to_owned()))?;
        // A key per call: retries inside this call are safe, and a later cancel is not answered
        // with an old refusal.
        let idempotency_key = format!("paybridge-cancel-{}-{}", payment.id, now_millis());
        let intent = match self
            .provider
            .cancel_payment_intent(&intent_id, &idempotency_key)
            .await
        {
            Ok(intent) => intent,
            // Stripe refuses to cancel an intent that has moved on (succeeded, processing):
            // record where it is and answer from that.
            Err(ProviderError::Rejected { message, .. }) => {
                tracing::info!(%message, "Stripe refused the cancel; reading the intent");
                self.provider.retrieve_payment_intent(&intent_id).await?
            }
            Err(other) => return Err(other.into()),
        };
        payment
            .check_intent(
                &intent.id,
                intent.amount,
                &intent.currency,
                &intent.metadata,
            )
            .map_err(|mismatch| AppError::Internal(format!("intent mismatch: {mismatch}")))?;
        let payment = self
            .record_observation(payment, &observation_of(&intent), EventSource::Cancel)
            .await?;
        match payment.status {
            PaymentStatus::Canceled => Ok(payment),
            status => Err(AppError::NotCancelable { status }),
        }
    }
}

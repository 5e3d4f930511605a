//! CapturePayment: an authorized payment's money taken, in full or in part, exactly once. The
//! create's pattern: the intent to capture recorded first (`payment_capture`, at most one per
//! payment), then Stripe with a key derived from the payment id, the answer recorded; a retry
//! with the same key or the reconciler finishes what a crash or a lost answer left.

use super::fingerprint::Fingerprint;

use super::create::observation_of;
use super::ports::{CaptureRecord, ProviderError, StoreError};
use super::{AppError, Payments, now_millis};
use crate::domain::{
    Amount, EventSource, FieldViolation, IdempotencyKey, Payment, PaymentId, PaymentStatus,
    ValidationError,
};

/// A parsed, valid CapturePayment request.
#[derive(Debug, Clone)]
pub struct CaptureCommand {
    pub idempotency_key: IdempotencyKey,
    pub payment_id: PaymentId,
    /// `None`: all that is capturable.
    pub amount: Option<Amount>,
}

impl CaptureCommand {
    /// A digest of what the request asks for, to tell a replay from a different request under
    /// the same key ("all that is capturable" kept as asked).
    fn fingerprint(&self) -> String {
        let mut fingerprint = Fingerprint::default();
        let mut part = |text: &str| fingerprint.part(text);
        part("capture");
        part(self.payment_id.as_str());
        match self.amount {
            Some(amount) => part(&amount.minor_units().to_string()),
            None => part("all-capturable"),
        }
        fingerprint.finish()
    }
}

/// Stripe's `Idempotency-Key` of a payment's capture: one capture per payment, so its id.
pub(crate) fn capture_key(payment_id: &str) -> String {
    format!("paybridge-capture-{payment_id}")
}

/// How often a capture starts again after losing a race (a concurrent capture of the same
/// payment, or of the same key).
const MAX_RACE_RETRIES: usize = 4;

fn count_capture_request(outcome: &'static str) {
    crate::metrics::METRICS
        .capture_requests
        .get_or_create(&crate::metrics::OutcomeLabels { outcome })
        .inc();
}

impl Payments {
    /// Captures (part of) an authorized payment of `tenant`, or answers the payment again for
    /// the same idempotency key.
    #[tracing::instrument(skip_all, fields(tenant = %tenant, payment_id = %command.payment_id))]
    pub async fn capture_payment(
        &self,
        tenant: &str,
        command: CaptureCommand,
    ) -> Result<Payment, AppError> {
        let answer = self.try_capture_payment(tenant, &command).await;
        count_capture_request(match &answer {
            Ok((_, true)) => "captured",
            Ok((_, false)) => "replayed",
            Err(AppError::NotCapturable { .. }) => "not_capturable",
            Err(AppError::Invalid(_)) => "exceeds_capturable",
            Err(AppError::IdempotencyKeyReused) => "key_reused",
            Err(AppError::ProviderRejected { .. }) => "stripe_refused",
            Err(AppError::ProviderUnavailable(_)) => "stripe_unavailable",
            Err(AppError::NotFound) => "not_found",
            Err(_) => "error",
        });
        answer.map(|(payment, _)| payment)
    }

    async fn try_capture_payment(
        &self,
        tenant: &str,
        command: &CaptureCommand,
    ) -> Result<(Payment, bool), AppError> {
        let fingerprint = command.fingerprint();
        let key = command.idempotency_key.as_str();
        for _ in 0..MAX_RACE_RETRIES {
            // 1. The same key again: the payment as it is, finishing a capture left unfinished.
            if let Some(record) = self.store.find_capture_by_key(tenant, key).await? {
                if record.request_fingerprint != fingerprint {
                    return Err(AppError::IdempotencyKeyReused);
                }
                return Ok((self.finish_capture(&record).await?, false));
            }

            // 2. What the payment allows: authorized, not captured yet, for as much.
            let payment = self.load(Some(tenant), command.payment_id.as_str()).await?;
            if payment.status != PaymentStatus::RequiresCapture
                || self.store.find_capture(&payment.id).await?.is_some()
            {
                return Err(AppError::NotCapturable {
                    status: payment.status,
                });
            }
            let requested = command
                .amount
                .map_or(payment.amount_capturable, |amount| amount.minor_units());
            if requested <= 0 || requested > payment.amount_capturable {
                return Err(AppError::Invalid(ValidationError::from(
                    FieldViolation::new(
                        "amount",
                        format!(
                            "{requested} exceeds what is capturable ({})",
                            payment.amount_capturable
                        ),
                    ),
                )));
            }

            // 3. The intent to capture first; the database refuses it when the payment moved on
            //    or a concurrent capture got there first (then look again).
            let record = CaptureRecord {
                payment_id: payment.id.clone(),
                tenant: tenant.to_owned(),
                amount: requested,
                request_fingerprint: fingerprint.clone(),
                created_at: now_millis(),
            };
            let _guard = self.locks.lock(&payment.id).await;
            match self.store.insert_capture(&record, key).await {
                Ok(true) => {}
                Ok(false) | Err(StoreError::Conflict) => continue,
                Err(other) => return Err(other.into()),
            }
            tracing::info!(payment_id = %payment.id, amount = requested, "capture recorded");

            // 4. Stripe, with the key derived from the payment id.
            return Ok((self.capture_at_provider(payment, &record).await?, true));
        }
        Err(AppError::Internal(
            "capture kept losing races with concurrent captures".to_owned(),
        ))
    }

    /// Finishes the capture recorded for an authorized payment, if one is (the reconciler).
    pub(crate) async fn finish_recorded_capture(
        &self,
        payment: Payment,
    ) -> Result<Payment, AppError> {
        if payment.status != PaymentStatus::RequiresCapture {
            return Ok(payment);
        }
        match self.store.find_capture(&payment.id).await? {
            Some(record) => self.finish_capture(&record).await,
            None => Ok(payment),
        }
    }

    /// Makes sure a recorded capture reached Stripe: a payment still awaiting capture is
    /// captured with the key derived from its id (Stripe answers a repeated key with the same
    /// capture); one past it is answered as it is.
    pub(crate) async fn finish_capture(&self, record: &CaptureRecord) -> Result<Payment, AppError> {
        let payment = self.load(None, &record.payment_id).await?;
        if payment.status != PaymentStatus::RequiresCapture {
            return Ok(payment);
        }
        let _guard = self.locks.lock(&payment.id).await;
        let payment = self.load(None, &record.payment_id).await?;
        if payment.status != PaymentStatus::RequiresCapture {
            return Ok(payment);
        }
        self.capture_at_provider(payment, record).await
    }

    /// Captures at Stripe and records the answer; the caller holds the payment's lock. A
    /// refusal (the authorization lapsed, say) records what Stripe holds now; an unreachable
    /// Stripe leaves the capture recorded, to be finished with the same key.
    async fn capture_at_provider(
        &self,
        payment: Payment,
        record: &CaptureRecord,
    ) -> Result<Payment, AppError> {
        let intent_id = payment
            .stripe_payment_intent_id
            .clone()
            .ok_or_else(|| AppError::Internal("authorized payment without an intent".to_owned()))?;
        let answer = self
            .provider
            .capture_payment_intent(&intent_id, record.amount, &capture_key(&payment.id))
            .await;
        let (intent, refusal) = match answer {
            Ok(intent) => (intent, None),
            Err(ProviderError::Rejected { code, message, .. }) => {
                tracing::warn!(payment_id = %payment.id, ?code, %message, "Stripe refused the capture; reading the intent");
                let intent = self.provider.retrieve_payment_intent(&intent_id).await?;
                (intent, Some(message))
            }
            Err(other) => {
                tracing::warn!(payment_id = %payment.id, error = %other, "capturing at Stripe failed; the capture stays recorded");
                return Err(other.into());
            }
        };
        payment
            .check_intent(
                &intent.id,
                intent.amount,
                &intent.currency,
                &intent.metadata,
            )
            .map_err(AppError::IntentMismatch)?;
        let payment = self
            .record_observation(payment, &observation_of(&intent), EventSource::Capture)
            .await?;
        match (payment.status, refusal) {
            (PaymentStatus::Succeeded, _) => {
                tracing::info!(payment_id = %payment.id, amount_received = payment.amount_received, "payment captured");
                Ok(payment)
            }
            (_, Some(message)) => Err(AppError::ProviderRejected { message }),
            // Stripe captures cards at once; anything else is still on its way.
            (_, None) => Ok(payment),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::fakes::Harness;

    /// A manual payment of 4200 the customer authorized (recorded by a refresh).
    async fn authorized(harness: &Harness) -> Payment {
        let mut command = crate::app::fakes::command("k-1", "inv-1", 4200);
        command.capture_method = crate::domain::CaptureMethod::Manual;
        let created = harness.submit(command).await.expect("created");
        harness
            .refreshed_after(&created, |intent| {
                intent.status = PaymentStatus::RequiresCapture;
                intent.amount_capturable = 4200;
            })
            .await
    }

    fn command(key: &str, payment: &Payment, amount: i64) -> CaptureCommand {
        CaptureCommand {
            idempotency_key: IdempotencyKey::parse(key).expect("key"),
            payment_id: PaymentId::parse(&payment.id).expect("id"),
            amount: (amount > 0).then(|| Amount::parse(amount).expect("amount")),
        }
    }

    #[tokio::test]
    async fn a_capture_whose_answer_was_lost_is_finished_by_the_reconciler_with_the_same_key() {
        let harness = Harness::new();
        let payment = authorized(&harness).await;
        assert_eq!(payment.amount_capturable, 4200);
        harness
            .provider
            .fail_with(Some(ProviderError::Unavailable("timed out".to_owned())));
        let lost = harness
            .payments
            .capture_payment("billing", command("c-1", &payment, 3000))
            .await
            .expect_err("Stripe unreachable");
        assert!(matches!(lost, AppError::ProviderUnavailable(_)), "{lost:?}");
        harness.provider.fail_with(None);
        let mut aged = harness.store.payments().pop().expect("payment");
        aged.updated_at -= 3_600_000;
        harness.store.put(aged);
        harness
            .payments
            .reconcile_once(
                std::time::Duration::from_secs(60),
                10,
                std::time::Duration::from_secs(60),
            )
            .await
            .expect("swept");
        let captured = harness.store.payments().pop().expect("payment");
        assert_eq!(captured.status, PaymentStatus::Succeeded);
        assert_eq!(captured.amount_received, 3000);
        let key = format!("capture_payment_intent {} 3000", capture_key(&payment.id));
        let captures = harness
            .provider
            .calls()
            .iter()
            .filter(|call| **call == key)
            .count();
        assert_eq!(captures, 2, "the lost call, then the same key again");
        // The caller's retry answers without another call.
        let replayed = harness
            .payments
            .capture_payment("billing", command("c-1", &payment, 3000))
            .await
            .expect("replayed");
        assert_eq!(replayed.amount_received, 3000);
        assert_eq!(
            harness
                .provider
                .calls()
                .iter()
                .filter(|call| **call == key)
                .count(),
            2
        );
    }
}

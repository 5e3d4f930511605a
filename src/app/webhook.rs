//! HandleStripeEvent: a verified event is recorded once, with the change it makes, before it is
//! acknowledged; events arrive late, twice and out of order, and some are not about our payments.

use super::ports::{EventRecorded, WebhookEventRecord, WebhookRefused};
use super::{AppError, Payments, now_millis};
use crate::domain::{EventVerdict, FieldViolation, Observation, ValidationError};

/// What became of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOutcome {
    /// Recorded and applied to its payment.
    Applied,
    /// Seen before: nothing done.
    Duplicate,
    /// Recorded, without effect: not ours, not a type that changes payments, older than what was
    /// applied, or not matching its payment (amount, currency, metadata).
    Ignored(IgnoredBecause),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IgnoredBecause {
    NotOurs,
    OtherType,
    Stale,
    NoChange,
    Mismatch,
}

impl EventOutcome {
    /// Stored in `stripe_event.result` and used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            EventOutcome::Applied => "applied",
            EventOutcome::Duplicate => "duplicate",
            EventOutcome::Ignored(IgnoredBecause::NotOurs) => "not_ours",
            EventOutcome::Ignored(IgnoredBecause::OtherType) => "other_type",
            EventOutcome::Ignored(IgnoredBecause::Stale) => "stale",
            EventOutcome::Ignored(IgnoredBecause::NoChange) => "no_change",
            EventOutcome::Ignored(IgnoredBecause::Mismatch) => "mismatch",
        }
    }
}

/// How often recording restarts when the payment changed under it.
const MAX_CONFLICTS: usize = 5;

fn invalid(field: &str, description: impl Into<String>) -> AppError {
    AppError::Invalid(ValidationError::from(FieldViolation::new(
        field,
        description,
    )))
}

impl Payments {
    /// Verifies and applies one webhook delivery. Returns the event id and what became of it;
    /// `Ok` means the event is durably recorded.
    #[tracing::instrument(skip_all, fields(event_id))]
    pub async fn handle_stripe_event(
        &self,
        payload: &[u8],
        signature: &str,
    ) -> Result<(String, EventOutcome), AppError> {
        let answer = self.record_stripe_event(payload, signature).await;
        let (event_type, result) = match &answer {
            Ok((_, outcome, event_type)) => (*event_type, outcome.as_str()),
            Err(AppError::Invalid(_)) => ("unknown", "refused"),
            Err(_) => ("unknown", "error"),
        };
        crate::metrics::METRICS
            .webhook_events
            .get_or_create(&crate::metrics::WebhookLabels { event_type, result })
            .inc();
        answer.map(|(id, outcome, _)| (id, outcome))
    }

    async fn record_stripe_event(
        &self,
        payload: &[u8],
        signature: &str,
    ) -> Result<(String, EventOutcome, &'static str), AppError> {
        let verifier = self.settings.webhook_verifier.as_ref().ok_or_else(|| {
            AppError::NotConfigured("PAYBRIDGE_STRIPE_WEBHOOK_SECRET is not set".to_owned())
        })?;
        let event = verifier
            .verify_event(payload, signature, now_millis() / 1000)
            .map_err(|refused| match refused {
                WebhookRefused::Signature(error) => {
                    tracing::warn!(%error, "webhook signature refused");
                    invalid("stripe_signature", error)
                }
                WebhookRefused::Payload(error) => invalid("payload", error),
            })?;
        let type_label = event.type_label;
        tracing::Span::current().record("event_id", event.id.as_str());

        for _ in 0..MAX_CONFLICTS {
            let (payment, change, outcome) = match &event.intent {
                None => (None, None, EventOutcome::Ignored(IgnoredBecause::OtherType)),
                Some(intent) => match self.store.find_payment_by_intent(None, &intent.id).await? {
                    None => (None, None, EventOutcome::Ignored(IgnoredBecause::NotOurs)),
                    Some(payment) => {
                        if let Err(mismatch) = payment.check_intent(
                            &intent.id,
                            intent.amount,
                            &intent.currency,
                            &intent.metadata,
                        ) {
                            tracing::error!(payment_id = %payment.id, event_id = %event.id, %mismatch, "webhook event does not match its payment; not applied");
                            (
                                Some(payment),
                                None,
                                EventOutcome::Ignored(IgnoredBecause::Mismatch),
                            )
                        } else {
                            let observation = Observation {
                                status: intent.status,
                                last_payment_error: intent.last_payment_error.clone(),
                            };
                            match payment.observe_event(&observation, event.created) {
                                EventVerdict::Apply(change) => {
                                    (Some(payment), Some(change), EventOutcome::Applied)
                                }
                                EventVerdict::NoChange => (
                                    Some(payment),
                                    None,
                                    EventOutcome::Ignored(IgnoredBecause::NoChange),
                                ),
                                EventVerdict::Stale => (
                                    Some(payment),
                                    None,
                                    EventOutcome::Ignored(IgnoredBecause::Stale),
                                ),
                            }
                        }
                    }
                },
            };
            let record = WebhookEventRecord {
                stripe_event_id: &event.id,
                event_type: &event.event_type,
                event_created: event.created,
                payment_id: payment.as_ref().map(|p| p.id.as_str()),
                result: outcome.as_str(),
            };
            match self
                .store
                .record_webhook_event(&record, change.as_ref(), now_millis())
                .await?
            {
                EventRecorded::Duplicate => {
                    tracing::info!(event_id = %event.id, "duplicate webhook event acknowledged");
                    return Ok((event.id, EventOutcome::Duplicate, type_label));
                }
                EventRecorded::Conflict => continue,
                EventRecorded::Recorded => {
                    tracing::info!(
                        event_id = %event.id,
                        event_type = %event.event_type,
                        payment_id = payment.as_ref().map(|p| p.id.as_str()).unwrap_or("-"),
                        result = outcome.as_str(),
                        "webhook event recorded"
                    );
                    return Ok((event.id, outcome, type_label));
                }
            }
        }
        Err(AppError::Internal(
            "webhook event kept conflicting with concurrent changes".to_owned(),
        ))
    }
}

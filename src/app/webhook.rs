//! HandleStripeEvent: a verified event is recorded once, with the change it makes, before it is
//! acknowledged; events arrive late, twice and out of order, and some are not about our payments.

use super::dispute::dispute_matches;
use super::ports::{
    DisputeUpdate, EventRecorded, ProviderDispute, ProviderEvent, ProviderIntent, ProviderRefund,
    RefundUpdate, WebhookChange, WebhookEventRecord, WebhookRefused,
};
use super::refund::{check_provider_refund, external_refund, observation_of_refund};
use super::{AppError, Payments, now_millis};
use crate::domain::{
    Dispute, DisputeVerdict, EventSource, EventVerdict, FieldViolation, Refund, RefundChange,
    RefundVerdict, StatusChange, ValidationError, observe_dispute,
};

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
            // Its own result: a rotated secret not deployed yet shows as these (an alert).
            Err(AppError::Invalid(refused))
                if refused
                    .violations
                    .iter()
                    .any(|violation| violation.field == "stripe_signature") =>
            {
                ("unknown", "bad_signature")
            }
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

        // `charge.refunded` names the charge's intent, not the refund: read the intent's refunds
        // at Stripe and record what is new (before the event, so that a failure here is answered
        // with an error and Stripe delivers the event again).
        let mut refunds_synced = None;
        if let Some(intent_id) = &event.refunded_intent
            && let Some(payment) = self.store.find_payment_by_intent(None, intent_id).await?
        {
            let before = payment.refund_amounts();
            let synced = self.sync_refunds(payment, EventSource::Webhook).await?;
            refunds_synced = Some((synced.id.clone(), synced.refund_amounts() != before));
        }

        for _ in 0..MAX_CONFLICTS {
            let decision = if let Some(intent) = &event.intent {
                self.decide_intent_event(&event, intent).await?
            } else if let Some(refund) = &event.refund {
                self.decide_refund_event(&event, refund).await?
            } else if let Some(dispute) = &event.dispute {
                self.decide_dispute_event(&event, dispute).await?
            } else if event.refunded_intent.is_some() {
                match &refunds_synced {
                    None => Decision::ignored(None, IgnoredBecause::NotOurs),
                    Some((payment_id, true)) => Decision {
                        payment_id: Some(payment_id.clone()),
                        effect: Effect::None,
                        outcome: EventOutcome::Applied,
                    },
                    Some((payment_id, false)) => {
                        Decision::ignored(Some(payment_id.clone()), IgnoredBecause::NoChange)
                    }
                }
            } else {
                Decision::ignored(None, IgnoredBecause::OtherType)
            };
            let record = WebhookEventRecord {
                stripe_event_id: &event.id,
                event_type: &event.event_type,
                event_created: event.created,
                payment_id: decision.payment_id.as_deref(),
                result: decision.outcome.as_str(),
            };
            match self
                .store
                .record_webhook_event(&record, decision.change(), now_millis())
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
                        payment_id = decision.payment_id.as_deref().unwrap_or("-"),
                        result = decision.outcome.as_str(),
                        "webhook event recorded"
                    );
                    return Ok((event.id, decision.outcome, type_label));
                }
            }
        }
        Err(AppError::Internal(
            "webhook event kept conflicting with concurrent changes".to_owned(),
        ))
    }
}

/// What a webhook event does, decided from what is stored before it is recorded.
#[derive(Debug)]
struct Decision {
    /// The payment the event is about (for a refund: the refunded payment), if ours.
    payment_id: Option<String>,
    effect: Effect,
    outcome: EventOutcome,
}

/// The change recorded with the event.
#[derive(Debug)]
enum Effect {
    None,
    Payment(StatusChange),
    Refund {
        refund_id: String,
        change: RefundChange,
        /// Stripe's id, for a refund whose create answer has not been recorded yet.
        attach: Option<String>,
    },
    ExternalRefund(Box<Refund>),
    Dispute {
        /// The dispute as read before (compare-and-set).
        expected: Option<Box<Dispute>>,
        dispute: Box<Dispute>,
    },
}

impl Decision {
    fn ignored(payment_id: Option<String>, because: IgnoredBecause) -> Decision {
        Decision {
            payment_id,
            effect: Effect::None,
            outcome: EventOutcome::Ignored(because),
        }
    }

    fn change(&self) -> Option<WebhookChange<'_>> {
        match &self.effect {
            Effect::None => None,
            Effect::Payment(change) => Some(WebhookChange::Payment(change)),
            Effect::Refund {
                refund_id,
                change,
                attach,
            } => Some(WebhookChange::Refund(RefundUpdate {
                refund_id,
                change,
                stripe_refund_id: attach.as_deref(),
            })),
            Effect::ExternalRefund(refund) => Some(WebhookChange::ExternalRefund(refund)),
            Effect::Dispute { expected, dispute } => Some(WebhookChange::Dispute(DisputeUpdate {
                payment_id: self.payment_id.as_deref().unwrap_or_default(),
                expected: expected.as_deref(),
                dispute,
            })),
        }
    }
}

impl Payments {
    /// A `payment_intent.*` event: the change it makes to its payment, if ours.
    async fn decide_intent_event(
        &self,
        event: &ProviderEvent,
        intent: &ProviderIntent,
    ) -> Result<Decision, AppError> {
        let Some(payment) = self.store.find_payment_by_intent(None, &intent.id).await? else {
            return Ok(Decision::ignored(None, IgnoredBecause::NotOurs));
        };
        if let Err(mismatch) = payment.check_intent(
            &intent.id,
            intent.amount,
            &intent.currency,
            &intent.metadata,
        ) {
            tracing::error!(payment_id = %payment.id, event_id = %event.id, %mismatch, "webhook event does not match its payment; not applied");
            return Ok(Decision::ignored(
                Some(payment.id),
                IgnoredBecause::Mismatch,
            ));
        }
        let observation = self
            .observe_intent(&payment, intent, event.created.saturating_mul(1000))
            .await;
        Ok(match payment.observe_event(&observation, event.created) {
            EventVerdict::Apply(change) => Decision {
                payment_id: Some(payment.id),
                effect: Effect::Payment(change),
                outcome: EventOutcome::Applied,
            },
            EventVerdict::NoChange => Decision::ignored(Some(payment.id), IgnoredBecause::NoChange),
            EventVerdict::Stale => Decision::ignored(Some(payment.id), IgnoredBecause::Stale),
        })
    }

    /// A `charge.dispute.*` event: the change it makes to the dispute of its payment (found
    /// through the disputed charge's intent), if ours. A closed dispute never reopens; an older
    /// event than the newest applied is stale.
    async fn decide_dispute_event(
        &self,
        event: &ProviderEvent,
        observed: &ProviderDispute,
    ) -> Result<Decision, AppError> {
        let intent_id = self.dispute_intent(observed).await?;
        let payment = match intent_id.as_deref() {
            Some(intent_id) => self.store.find_payment_by_intent(None, intent_id).await?,
            None => None,
        };
        let Some(payment) = payment else {
            return Ok(Decision::ignored(None, IgnoredBecause::NotOurs));
        };
        if !dispute_matches(&payment, intent_id.as_deref(), observed) {
            tracing::error!(payment_id = %payment.id, event_id = %event.id, "dispute event does not match its payment; not applied");
            return Ok(Decision::ignored(
                Some(payment.id),
                IgnoredBecause::Mismatch,
            ));
        }
        Ok(
            match observe_dispute(
                payment.dispute.as_ref(),
                payment.dispute_last_event_created,
                &observed.dispute,
                Some(event.created),
            ) {
                DisputeVerdict::Apply => Decision {
                    effect: Effect::Dispute {
                        expected: payment.dispute.clone().map(Box::new),
                        dispute: Box::new(observed.dispute.clone()),
                    },
                    payment_id: Some(payment.id),
                    outcome: EventOutcome::Applied,
                },
                DisputeVerdict::NoChange => {
                    Decision::ignored(Some(payment.id), IgnoredBecause::NoChange)
                }
                DisputeVerdict::Stale => Decision::ignored(Some(payment.id), IgnoredBecause::Stale),
            },
        )
    }

    /// A `refund.*` event: the change it makes to a refund paybridge knows (found by Stripe id,
    /// or by the refund id in its metadata when the echo arrives before the create's answer), or
    /// a refund of one of our payments made at Stripe directly.
    async fn decide_refund_event(
        &self,
        event: &ProviderEvent,
        observed: &ProviderRefund,
    ) -> Result<Decision, AppError> {
        if let Some(known) = self.find_known_refund(observed).await? {
            if check_provider_refund(&known, observed).is_err() {
                return Ok(Decision::ignored(
                    Some(known.payment_id),
                    IgnoredBecause::Mismatch,
                ));
            }
            let attach = known
                .stripe_refund_id
                .is_none()
                .then(|| observed.id.clone());
            return Ok(
                match known.observe(&observation_of_refund(observed), Some(event.created)) {
                    RefundVerdict::Apply(change) => Decision {
                        payment_id: Some(known.payment_id),
                        effect: Effect::Refund {
                            refund_id: known.id,
                            change,
                            attach,
                        },
                        outcome: EventOutcome::Applied,
                    },
                    RefundVerdict::NoChange => {
                        Decision::ignored(Some(known.payment_id), IgnoredBecause::NoChange)
                    }
                    RefundVerdict::Stale => {
                        Decision::ignored(Some(known.payment_id), IgnoredBecause::Stale)
                    }
                },
            );
        }
        let payment = match observed.payment_intent.as_deref() {
            Some(intent_id) => self.store.find_payment_by_intent(None, intent_id).await?,
            None => None,
        };
        let Some(payment) = payment else {
            return Ok(Decision::ignored(None, IgnoredBecause::NotOurs));
        };
        if observed.releases_uncaptured {
            // Stripe's release of an authorization's uncaptured rest: nothing received goes back.
            return Ok(Decision::ignored(
                Some(payment.id),
                IgnoredBecause::OtherType,
            ));
        }
        let mut refund = external_refund(&payment, observed);
        refund.last_event_created = Some(event.created);
        tracing::info!(refund_id = %refund.id, stripe_refund_id = %observed.id, payment_id = %payment.id, "refund made at Stripe directly");
        Ok(Decision {
            payment_id: Some(payment.id),
            effect: Effect::ExternalRefund(Box::new(refund)),
            outcome: EventOutcome::Applied,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::CreatedPayment;
    use crate::app::fakes::Harness;
    use crate::app::ports::ProviderEvent;
    use crate::domain::{EventSource, PaymentStatus};

    /// A `payment_intent.*` event about the payment's intent as the provider holds it, with
    /// `status`, created at `created`.
    fn event(
        harness: &Harness,
        created_payment: &CreatedPayment,
        id: &str,
        status: PaymentStatus,
        created: i64,
    ) -> Vec<u8> {
        let intent_id = created_payment
            .payment
            .stripe_payment_intent_id
            .as_deref()
            .expect("intent");
        let mut intent = harness.provider.intent(intent_id);
        intent.status = status;
        harness.webhooks.deliver(ProviderEvent {
            id: id.to_owned(),
            event_type: "payment_intent.succeeded".to_owned(),
            created,
            intent: Some(intent),
            refund: None,
            refunded_intent: None,
            dispute: None,
            type_label: "payment_intent.succeeded",
        })
    }

    /// What became of a validly signed delivery.
    async fn outcome_of(harness: &Harness, payload: &[u8]) -> EventOutcome {
        let (_, outcome) = harness
            .payments
            .handle_stripe_event(payload, "valid")
            .await
            .expect("recorded");
        outcome
    }

    #[tokio::test]
    async fn an_event_is_applied_once_and_its_duplicate_changes_nothing() {
        let harness = Harness::new();
        let created = harness.create("k-1", "inv-1").await;
        let payload = event(&harness, &created, "evt_1", PaymentStatus::Succeeded, 100);
        let first = harness
            .payments
            .handle_stripe_event(&payload, "valid")
            .await;
        assert_eq!(
            first.expect("recorded"),
            ("evt_1".to_owned(), EventOutcome::Applied)
        );
        let again = harness
            .payments
            .handle_stripe_event(&payload, "valid")
            .await;
        assert_eq!(
            again.expect("acknowledged"),
            ("evt_1".to_owned(), EventOutcome::Duplicate)
        );
        let webhook_changes = harness
            .store
            .events_of(&created.payment.id)
            .into_iter()
            .filter(|(source, _, _)| *source == EventSource::Webhook)
            .count();
        assert_eq!(webhook_changes, 1);
    }

    #[tokio::test]
    async fn an_older_event_arriving_late_is_stale_and_moves_nothing_back() {
        let harness = Harness::new();
        let created = harness.create("k-1", "inv-1").await;
        let processing = event(
            &harness,
            &created,
            "evt_new",
            PaymentStatus::Processing,
            200,
        );
        let older = event(
            &harness,
            &created,
            "evt_old",
            PaymentStatus::RequiresAction,
            100,
        );
        harness
            .payments
            .handle_stripe_event(&processing, "valid")
            .await
            .expect("applied");
        let outcome = outcome_of(&harness, &older).await;
        assert_eq!(outcome, EventOutcome::Ignored(IgnoredBecause::Stale));
        let [payment] = harness.store.payments().try_into().expect("one payment");
        assert_eq!(payment.status, PaymentStatus::Processing);
    }

    #[tokio::test]
    async fn an_event_whose_amount_differs_is_recorded_as_a_mismatch_and_not_applied() {
        let harness = Harness::new();
        let created = harness.create("k-1", "inv-1").await;
        let intent_id = created
            .payment
            .stripe_payment_intent_id
            .clone()
            .expect("intent");
        harness
            .provider
            .update_intent(&intent_id, |intent| intent.amount = 1);
        let payload = event(&harness, &created, "evt_1", PaymentStatus::Succeeded, 100);
        let outcome = outcome_of(&harness, &payload).await;
        assert_eq!(outcome, EventOutcome::Ignored(IgnoredBecause::Mismatch));
        let [payment] = harness.store.payments().try_into().expect("one payment");
        assert_eq!(payment.status, PaymentStatus::RequiresPaymentMethod);
    }

    #[tokio::test]
    async fn events_about_other_intents_or_without_one_are_acknowledged_and_ignored() {
        let harness = Harness::new();
        let created = harness.create("k-1", "inv-1").await;
        let intent_id = created
            .payment
            .stripe_payment_intent_id
            .clone()
            .expect("intent");
        // An intent paybridge never made (another system's on the same Stripe account).
        let mut someone_elses = harness.provider.intent(&intent_id);
        someone_elses.id = "pi_someone_elses".to_owned();
        let mut foreign = harness.webhooks.deliver(ProviderEvent {
            id: "evt_foreign".to_owned(),
            event_type: "payment_intent.succeeded".to_owned(),
            created: 1,
            intent: Some(someone_elses),
            refund: None,
            refunded_intent: None,
            dispute: None,
            type_label: "payment_intent.succeeded",
        });
        let mut other = harness.webhooks.deliver(ProviderEvent {
            id: "evt_other".to_owned(),
            event_type: "customer.created".to_owned(),
            created: 1,
            intent: None,
            refund: None,
            refunded_intent: None,
            dispute: None,
            type_label: "other",
        });
        for (payload, because) in [
            (&mut foreign, IgnoredBecause::NotOurs),
            (&mut other, IgnoredBecause::OtherType),
        ] {
            let outcome = outcome_of(&harness, payload).await;
            assert_eq!(outcome, EventOutcome::Ignored(because));
        }
    }

    #[tokio::test]
    async fn a_bad_signature_is_invalid_and_records_nothing() {
        let harness = Harness::new();
        let created = harness.create("k-1", "inv-1").await;
        let payload = event(&harness, &created, "evt_1", PaymentStatus::Succeeded, 100);
        let error = harness
            .payments
            .handle_stripe_event(&payload, "t=1,v1=forged")
            .await
            .expect_err("refused");
        assert!(matches!(error, AppError::Invalid(_)), "{error:?}");
        // Not recorded: the real delivery afterwards is applied, not a duplicate.
        let outcome = outcome_of(&harness, &payload).await;
        assert_eq!(outcome, EventOutcome::Applied);
    }
}

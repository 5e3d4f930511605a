//! RefundPayment, GetRefund and ListRefunds: money of a succeeded payment given back exactly once,
//! never more than was received. The create's pattern: the refund row first (its amount reserved
//! on the payment), then Stripe with a key derived from the refund id, the answer recorded; a
//! retry, the reconciler or the webhook echo finishes what a crash or a lost answer left.

use super::fingerprint::Fingerprint;

use super::ports::{
    ListCursor, NewRefund, ProviderError, ProviderRefund, RefundListQuery, RefundUpdate, StoreError,
};
use super::{AppError, Payments, now_millis};
use crate::domain::{
    Amount, EventSource, IdempotencyKey, Metadata, Payment, PaymentId, PaymentStatus, Refund,
    RefundChange, RefundId, RefundObservation, RefundReason, RefundSource, RefundStatus,
    RefundVerdict, refund_stripe_metadata,
};

/// A parsed, valid RefundPayment request.
#[derive(Debug, Clone)]
pub struct RefundCommand {
    pub idempotency_key: IdempotencyKey,
    pub payment_id: PaymentId,
    /// `None`: all that remains refundable.
    pub amount: Option<Amount>,
    pub reason: Option<RefundReason>,
    pub metadata: Metadata,
}

impl RefundCommand {
    /// A digest of everything the request asks for, to tell a replay from a different request
    /// under the same key. "All that remains" is kept as asked, not as the amount it came to.
    fn fingerprint(&self) -> String {
        let mut fingerprint = Fingerprint::default();
        let mut part = |text: &str| fingerprint.part(text);
        part("refund");
        part(self.payment_id.as_str());
        match self.amount {
            Some(amount) => part(&amount.minor_units().to_string()),
            None => part("all-that-remains"),
        }
        part(self.reason.map_or("", RefundReason::as_str));
        for (key, value) in self.metadata.as_map() {
            part(key);
            part(value);
        }
        fingerprint.finish()
    }
}

/// What RefundPayment answers.
#[derive(Debug, Clone)]
pub struct RefundAnswer {
    pub refund: Refund,
    /// False when an earlier answer was returned (the same key again).
    pub created: bool,
}

/// A parsed ListRefunds request.
#[derive(Debug, Clone)]
pub struct ListRefundsQuery {
    pub payment_id: Option<PaymentId>,
    /// 1..=MAX_PAGE_SIZE.
    pub page_size: u32,
    pub after: Option<ListCursor>,
}

/// One page of refunds, and where the next one starts (if there may be one).
#[derive(Debug, Clone)]
pub struct RefundPage {
    pub refunds: Vec<Refund>,
    pub next: Option<ListCursor>,
}

/// How often a refund starts again after losing a race (a concurrent refund of the same payment
/// took the room it counted on, or its key).
const MAX_RACE_RETRIES: usize = 8;

/// Counts a RefundPayment answer by outcome (never amounts or ids).
fn count_refund_request(outcome: &'static str) {
    crate::metrics::METRICS
        .refund_requests
        .get_or_create(&crate::metrics::OutcomeLabels { outcome })
        .inc();
}

impl Payments {
    /// Refunds (part of) a succeeded payment of `tenant`, or returns the first answer for the
    /// same idempotency key.
    #[tracing::instrument(skip_all, fields(tenant = %tenant, payment_id = %command.payment_id))]
    pub async fn refund_payment(
        &self,
        tenant: &str,
        command: RefundCommand,
    ) -> Result<RefundAnswer, AppError> {
        let answer = self.try_refund_payment(tenant, &command).await;
        count_refund_request(match &answer {
            Ok(RefundAnswer { created: true, .. }) => "created",
            Ok(RefundAnswer { created: false, .. }) => "replayed",
            Err(AppError::NotRefundable { .. }) => "not_refundable",
            Err(AppError::PaymentDisputed { .. }) => "disputed",
            Err(AppError::RefundExceedsRemaining { .. }) => "exceeds_remaining",
            Err(AppError::IdempotencyKeyReused) => "key_reused",
            Err(AppError::RefundRejected { .. }) => "stripe_refused",
            Err(AppError::ProviderUnavailable(_)) => "stripe_unavailable",
            Err(AppError::NotFound) => "not_found",
            Err(_) => "error",
        });
        answer
    }

    async fn try_refund_payment(
        &self,
        tenant: &str,
        command: &RefundCommand,
    ) -> Result<RefundAnswer, AppError> {
        let fingerprint = command.fingerprint();
        let key = command.idempotency_key.as_str();
        for _ in 0..MAX_RACE_RETRIES {
            // 1. The same key again: the same request gets the first answer, without a Stripe
            //    call unless the first call left the refund unfinished.
            if let Some((recorded, refund)) = self.store.find_refund_by_key(tenant, key).await? {
                if recorded != fingerprint {
                    return Err(AppError::IdempotencyKeyReused);
                }
                let refund = self.finish_creating_refund(refund).await?;
                return Ok(RefundAnswer {
                    refund,
                    created: false,
                });
            }

            // 2. What the payment allows: only a succeeded one, never more than remains.
            let payment = self.load(Some(tenant), command.payment_id.as_str()).await?;
            if payment.status != PaymentStatus::Succeeded {
                return Err(AppError::NotRefundable {
                    status: payment.status,
                });
            }
            // A dispute the bank decides (or decided against the merchant) forbids a refund.
            if let Some(dispute) = payment.dispute.as_ref().filter(|d| d.blocks_refunds()) {
                return Err(AppError::PaymentDisputed {
                    status: dispute.status,
                });
            }
            let refundable = payment.refund_amounts().refundable();
            let requested = command
                .amount
                .map_or(refundable, |amount| amount.minor_units());
            if requested == 0 || requested > refundable {
                return Err(AppError::RefundExceedsRemaining {
                    requested,
                    refundable,
                });
            }

            // 3. The row first, its amount reserved: the database refuses it if a concurrent
            //    refund took the room meanwhile (then look again).
            let refund = new_refund(&payment, requested, command);
            let _guard = self.locks.lock(&refund.id).await;
            match self.store.insert_refund(&refund, key, &fingerprint).await {
                Ok(true) => {}
                Ok(false) | Err(StoreError::Conflict) => continue,
                Err(other) => return Err(other.into()),
            }
            tracing::info!(refund_id = %refund.id, amount = refund.amount, "refund recorded");

            // 4. Stripe, with the key derived from the refund id.
            let refund = self.create_refund_at_provider(refund, &payment).await?;
            return Ok(RefundAnswer {
                refund,
                created: true,
            });
        }
        Err(AppError::Internal(
            "refund kept losing races with concurrent refunds".to_owned(),
        ))
    }

    /// Makes sure a `Creating` refund exists at Stripe: creates it with the key derived from its
    /// id (a retry after a crash or a lost answer gets the same Stripe refund back) and records
    /// the answer. Refunds past `Creating` are returned as they are.
    pub(crate) async fn finish_creating_refund(&self, refund: Refund) -> Result<Refund, AppError> {
        if refund.status != RefundStatus::Creating {
            return Ok(refund);
        }
        let _guard = self.locks.lock(&refund.id).await;
        // Another call (or the webhook echo) may have finished it while this one waited.
        let refund = self.load_refund(None, &refund.id).await?;
        if refund.status != RefundStatus::Creating {
            return Ok(refund);
        }
        let payment = self.load(None, &refund.payment_id).await?;
        self.create_refund_at_provider(refund, &payment).await
    }

    /// Creates the Stripe refund of a `Creating` refund and records Stripe's answer; the caller
    /// holds the refund's lock. A refusal is recorded as `Failed` (its amount is refundable
    /// again); an unreachable Stripe leaves it `Creating`, to be finished with the same key.
    async fn create_refund_at_provider(
        &self,
        refund: Refund,
        payment: &Payment,
    ) -> Result<Refund, AppError> {
        let payment_intent = payment.stripe_payment_intent_id.clone().ok_or_else(|| {
            AppError::Internal("succeeded payment without a PaymentIntent".to_owned())
        })?;
        let request = NewRefund {
            payment_intent,
            amount: refund.amount,
            reason: refund.reason,
            metadata: refund_stripe_metadata(
                &refund.metadata,
                &refund.id,
                &refund.payment_id,
                &refund.tenant,
            ),
            idempotency_key: format!("paybridge-refund-{}", refund.id),
        };
        match self.provider.create_refund(request).await {
            Ok(created) => {
                check_provider_refund(&refund, &created)?;
                let refund = self
                    .record_refund_observation(refund, &created, EventSource::Refund)
                    .await?;
                tracing::info!(
                    refund_id = %refund.id,
                    stripe_refund_id = %created.id,
                    status = %refund.status,
                    "refund created at Stripe"
                );
                Ok(refund)
            }
            Err(refusal @ (ProviderError::Rejected { .. } | ProviderError::NotFound)) => {
                // Stripe gives the same refusal for this key every time (the charge is already
                // refunded, say): the refund cannot be made.
                let (code, message) = match refusal {
                    ProviderError::Rejected { code, message, .. } => (code, message),
                    _ => (
                        Some("resource_missing".to_owned()),
                        "Stripe has no such PaymentIntent".to_owned(),
                    ),
                };
                tracing::warn!(refund_id = %refund.id, ?code, %message, "Stripe refused the refund");
                let change = RefundChange {
                    from: RefundStatus::Creating,
                    to: RefundStatus::Failed,
                    failure_reason: Some(code.unwrap_or_else(|| "stripe_refused".to_owned())),
                };
                self.store
                    .apply_refund_change(
                        RefundUpdate {
                            refund_id: &refund.id,
                            change: &change,
                            stripe_refund_id: None,
                        },
                        EventSource::Refund,
                        now_millis(),
                    )
                    .await?;
                Err(AppError::RefundRejected { message })
            }
            Err(other) => {
                tracing::warn!(refund_id = %refund.id, error = %other, "creating the refund at Stripe failed; the refund stays creating");
                Err(other.into())
            }
        }
    }

    /// Records what Stripe says of a refund paybridge knows, attaching Stripe's id to a refund
    /// still without one. Returns the refund as stored afterwards.
    pub(crate) async fn record_refund_observation(
        &self,
        refund: Refund,
        observed: &ProviderRefund,
        source: EventSource,
    ) -> Result<Refund, AppError> {
        let attach = refund
            .stripe_refund_id
            .is_none()
            .then_some(observed.id.as_str());
        let observation = observation_of_refund(observed);
        let RefundVerdict::Apply(change) = refund.observe(&observation, None) else {
            return Ok(refund);
        };
        let (stored, changed) = self
            .store
            .apply_refund_change(
                RefundUpdate {
                    refund_id: &refund.id,
                    change: &change,
                    stripe_refund_id: attach,
                },
                source,
                now_millis(),
            )
            .await?;
        if changed {
            tracing::info!(refund_id = %stored.id, from = %change.from, to = %change.to, "refund status changed");
        }
        Ok(stored)
    }

    /// One of the tenant's refunds; with `refresh`, re-read from Stripe first (a refund still
    /// creating is finished instead).
    #[tracing::instrument(skip(self), fields(refund_id = %refund_id))]
    pub async fn get_refund(
        &self,
        tenant: &str,
        refund_id: &str,
        refresh: bool,
    ) -> Result<Refund, AppError> {
        let refund = self.load_refund(Some(tenant), refund_id).await?;
        if !refresh {
            return Ok(refund);
        }
        self.sync_refund(refund, EventSource::Refresh).await
    }

    /// Brings one refund up to date with Stripe.
    pub(crate) async fn sync_refund(
        &self,
        refund: Refund,
        source: EventSource,
    ) -> Result<Refund, AppError> {
        let Some(stripe_refund_id) = refund.stripe_refund_id.clone() else {
            return self.finish_creating_refund(refund).await;
        };
        let observed = self.provider.retrieve_refund(&stripe_refund_id).await?;
        check_provider_refund(&refund, &observed)?;
        self.record_refund_observation(refund, &observed, source)
            .await
    }

    /// The tenant's refunds (of one payment, when given), newest first.
    pub async fn list_refunds(
        &self,
        tenant: &str,
        query: ListRefundsQuery,
    ) -> Result<RefundPage, AppError> {
        if let Some(payment_id) = &query.payment_id {
            // Another tenant's payment is not found, as everywhere.
            self.load(Some(tenant), payment_id.as_str()).await?;
        }
        let mut refunds = self
            .store
            .list_refunds(RefundListQuery {
                tenant,
                payment_id: query.payment_id.as_ref().map(PaymentId::as_str),
                after: query.after,
                limit: query.page_size + 1,
            })
            .await?;
        let more = refunds.len() > query.page_size as usize;
        refunds.truncate(query.page_size as usize);
        let next = more
            .then(|| refunds.last())
            .flatten()
            .map(|last| ListCursor {
                created_at: last.created_at,
                id: last.id.clone(),
            });
        Ok(RefundPage { refunds, next })
    }

    /// Reads every refund of a succeeded payment at Stripe and records what paybridge did not
    /// know: changes of its own refunds and refunds made at Stripe directly (`External`).
    /// Returns the payment as stored afterwards.
    pub(crate) async fn sync_refunds(
        &self,
        payment: Payment,
        source: EventSource,
    ) -> Result<Payment, AppError> {
        let Some(intent_id) = payment.stripe_payment_intent_id.clone() else {
            return Ok(payment);
        };
        if payment.status != PaymentStatus::Succeeded {
            return Ok(payment);
        }
        let observed = self.provider.list_refunds(&intent_id).await?;
        // Stripe's own refund of an authorization's uncaptured rest gives back nothing that was
        // received: not a refund of this payment.
        for refund in observed.iter().filter(|refund| !refund.releases_uncaptured) {
            self.record_observed_refund(&payment, refund, source)
                .await?;
        }
        self.load(None, &payment.id).await
    }

    /// Records one refund read at Stripe for `payment`: a change of a refund paybridge knows (by
    /// Stripe id, or by the `paybridge_refund_id` its metadata carries when the answer to its
    /// create was lost), or a new external refund.
    pub(crate) async fn record_observed_refund(
        &self,
        payment: &Payment,
        observed: &ProviderRefund,
        source: EventSource,
    ) -> Result<(), AppError> {
        if observed.releases_uncaptured {
            return Ok(());
        }
        for _ in 0..MAX_RACE_RETRIES {
            if let Some(known) = self.find_known_refund(observed).await? {
                check_provider_refund(&known, observed)?;
                self.record_refund_observation(known, observed, source)
                    .await?;
                return Ok(());
            }
            let external = external_refund(payment, observed);
            if self
                .store
                .insert_external_refund(&external, EventSource::External, now_millis())
                .await?
            {
                tracing::info!(refund_id = %external.id, stripe_refund_id = %observed.id, payment_id = %payment.id, "refund made at Stripe directly recorded");
                return Ok(());
            }
            // Recorded concurrently (the webhook, another replica): look again.
        }
        Err(AppError::Internal(
            "recording a refund kept losing races".to_owned(),
        ))
    }

    /// The refund paybridge recorded for a Stripe refund: by its Stripe id, else by the refund id
    /// paybridge put in its metadata (a refund whose create answer has not been recorded yet).
    pub(crate) async fn find_known_refund(
        &self,
        observed: &ProviderRefund,
    ) -> Result<Option<Refund>, AppError> {
        if let Some(refund) = self.store.find_refund_by_stripe_id(&observed.id).await? {
            return Ok(Some(refund));
        }
        match observed.metadata.get(crate::domain::REFUND_ID_METADATA_KEY) {
            Some(refund_id) => Ok(self.store.get_refund(None, refund_id).await?),
            None => Ok(None),
        }
    }

    async fn load_refund(&self, tenant: Option<&str>, refund_id: &str) -> Result<Refund, AppError> {
        self.store
            .get_refund(tenant, refund_id)
            .await?
            .ok_or(AppError::RefundNotFound)
    }
}

/// A new refund in `Creating` of `amount` for the request.
fn new_refund(payment: &Payment, amount: i64, command: &RefundCommand) -> Refund {
    let now = now_millis();
    Refund {
        id: RefundId::generate().as_str().to_owned(),
        payment_id: payment.id.clone(),
        tenant: payment.tenant.clone(),
        amount,
        currency: payment.currency.clone(),
        status: RefundStatus::Creating,
        reason: command.reason,
        stripe_refund_id: None,
        failure_reason: None,
        source: RefundSource::Api,
        metadata: command.metadata.as_map().clone(),
        created_at: now,
        updated_at: now,
        last_event_created: None,
    }
}

/// A refund made at Stripe directly, as first recorded.
pub(crate) fn external_refund(payment: &Payment, observed: &ProviderRefund) -> Refund {
    let now = now_millis();
    Refund {
        id: RefundId::generate().as_str().to_owned(),
        payment_id: payment.id.clone(),
        tenant: payment.tenant.clone(),
        amount: observed.amount,
        currency: observed.currency.clone(),
        status: observed.status,
        reason: observed.reason,
        stripe_refund_id: Some(observed.id.clone()),
        failure_reason: observed.failure_reason.clone(),
        source: RefundSource::External,
        metadata: Default::default(),
        created_at: now,
        updated_at: now,
        last_event_created: None,
    }
}

pub(crate) fn observation_of_refund(observed: &ProviderRefund) -> RefundObservation {
    RefundObservation {
        status: observed.status,
        failure_reason: observed.failure_reason.clone(),
    }
}

/// A Stripe refund that claims to be this refund must have its amount and currency, and must not
/// name another paybridge refund or carry another Stripe id.
pub(crate) fn check_provider_refund(
    refund: &Refund,
    observed: &ProviderRefund,
) -> Result<(), AppError> {
    let names_other = observed
        .metadata
        .get(crate::domain::REFUND_ID_METADATA_KEY)
        .is_some_and(|id| *id != refund.id);
    let other_stripe_id = refund
        .stripe_refund_id
        .as_ref()
        .is_some_and(|id| *id != observed.id);
    if observed.amount != refund.amount
        || observed.currency != refund.currency
        || names_other
        || other_stripe_id
    {
        tracing::error!(refund_id = %refund.id, stripe_refund_id = %observed.id, "the refund at Stripe does not match the refund; nothing recorded");
        return Err(AppError::Internal(
            "the refund at Stripe does not match the recorded refund".to_owned(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::fakes::Harness;

    /// A payment of 4200 that succeeded (its intent paid and the change recorded).
    async fn succeeded(harness: &Harness, key: &str) -> Payment {
        let created = harness.create(key, &format!("inv-{key}")).await;
        harness
            .refreshed_after(&created, |intent| intent.status = PaymentStatus::Succeeded)
            .await
    }

    fn command(key: &str, payment: &Payment, amount: i64) -> RefundCommand {
        RefundCommand {
            idempotency_key: IdempotencyKey::parse(key).expect("key"),
            payment_id: PaymentId::parse(&payment.id).expect("id"),
            amount: (amount > 0).then(|| Amount::parse(amount).expect("amount")),
            reason: None,
            metadata: Metadata::default(),
        }
    }

    #[tokio::test]
    async fn a_lost_answer_is_finished_by_the_retry_with_the_same_stripe_key() {
        let harness = Harness::new();
        let payment = succeeded(&harness, "k-1").await;
        harness
            .provider
            .lose_next_refund_answer(ProviderError::Unavailable("timed out".to_owned()));
        let lost = harness
            .payments
            .refund_payment("billing", command("r-1", &payment, 1000))
            .await
            .expect_err("the answer is lost");
        assert!(matches!(lost, AppError::ProviderUnavailable(_)), "{lost:?}");
        let retried = harness
            .payments
            .refund_payment("billing", command("r-1", &payment, 1000))
            .await
            .expect("finished");
        assert!(!retried.created);
        assert_eq!(retried.refund.status, RefundStatus::Succeeded);
        assert_eq!(harness.provider.refunds().len(), 1, "one Stripe refund");
        let payment = harness.store.payments().pop().expect("payment");
        assert_eq!(
            (payment.amount_refunded, payment.amount_refund_pending),
            (1000, 0)
        );
    }

    #[tokio::test]
    async fn a_refund_stripe_refuses_is_failed_and_frees_its_amount() {
        let harness = Harness::new();
        let payment = succeeded(&harness, "k-1").await;
        harness
            .provider
            .fail_next_refund_create(ProviderError::Rejected {
                status: 400,
                code: Some("charge_disputed".to_owned()),
                message: "Charge has been disputed".to_owned(),
            });
        let refused = harness
            .payments
            .refund_payment("billing", command("r-1", &payment, 0))
            .await
            .expect_err("refused");
        assert!(
            matches!(refused, AppError::RefundRejected { .. }),
            "{refused:?}"
        );
        let payment = harness.store.payments().pop().expect("payment");
        assert_eq!(payment.refund_amounts().refundable(), 4200);
        let again = harness
            .payments
            .refund_payment("billing", command("r-2", &payment, 0))
            .await
            .expect("refunded");
        assert_eq!(again.refund.amount, 4200);
    }

    #[tokio::test]
    async fn only_a_succeeded_payment_is_refundable() {
        let harness = Harness::new();
        let open = harness.create("k-1", "inv-1").await.payment;
        let refused = harness
            .payments
            .refund_payment("billing", command("r-1", &open, 100))
            .await
            .expect_err("open");
        assert!(
            matches!(refused, AppError::NotRefundable { .. }),
            "{refused:?}"
        );
        assert!(harness.provider.refunds().is_empty());
    }
}

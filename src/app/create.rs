//! CreateInvoicePayment: idempotency, the double-charge guard, and crash-safe creation of the
//! PaymentIntent (row first, then Stripe with a key derived from the payment id).

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::fingerprint::Fingerprint;

use super::ports::{NewCustomer, NewPaymentIntent, ProviderError, StoreError};
use super::{AppError, IssuedLink, Payments, now_millis};
use crate::domain::{
    CancellationReason, CaptureMethod, Customer, Description, EventSource, IdempotencyKey,
    InvoiceId, LastPaymentError, LinkTtl, Metadata, Money, Observation, PAYMENT_ID_METADATA_KEY,
    Payment, PaymentId, PaymentStatus, RedirectUrl, StatusChange,
};
use crate::tenants::Tenant;

/// A parsed, valid CreateInvoicePayment request.
#[derive(Debug, Clone)]
pub struct CreatePaymentCommand {
    pub idempotency_key: IdempotencyKey,
    pub invoice_id: InvoiceId,
    pub money: Money,
    pub customer: Option<Customer>,
    pub description: Option<Description>,
    pub metadata: Metadata,
    pub success_url: Option<RedirectUrl>,
    pub failure_url: Option<RedirectUrl>,
    pub capture_method: CaptureMethod,
    /// `hosted_page`: how long the link in the answer works. Left out of the fingerprint: it
    /// asks for a link to the payment, not for another payment.
    pub hosted_page: Option<LinkTtl>,
}

impl CreatePaymentCommand {
    /// A digest of everything the request asks for, to tell a replay from a different request
    /// under the same key. Each part is length-prefixed so that no two requests collide.
    fn fingerprint(&self) -> String {
        let mut fingerprint = Fingerprint::default();
        let mut part = |text: &str| fingerprint.part(text);
        part(self.invoice_id.as_str());
        part(&self.money.amount().minor_units().to_string());
        part(self.money.currency().as_str());
        match &self.customer {
            None => part("no-customer"),
            Some(Customer::Existing(id)) => {
                part("existing");
                part(id.as_str());
            }
            Some(Customer::New { email, name }) => {
                part("email");
                part(email.as_str());
                part(name.as_ref().map_or("", |n| n.as_str()));
            }
        }
        part(self.description.as_ref().map_or("", |d| d.as_str()));
        for (key, value) in self.metadata.as_map() {
            part(key);
            part(value);
        }
        part(self.success_url.as_ref().map_or("", |u| u.as_str()));
        part(self.failure_url.as_ref().map_or("", |u| u.as_str()));
        // Only when asked for, so that the fingerprints of keys recorded before manual capture
        // existed stay the same.
        if self.capture_method == CaptureMethod::Manual {
            part("capture-manual");
        }
        fingerprint.finish()
    }
}

/// What CreateInvoicePayment answers.
#[derive(Clone)]
pub struct CreatedPayment {
    pub payment: Payment,
    pub client_secret: String,
    pub publishable_key: String,
    pub return_url: String,
    /// False when an earlier answer was returned.
    pub created: bool,
    /// The hosted page link, when the request asked for one.
    pub link: Option<IssuedLink>,
}

impl std::fmt::Debug for CreatedPayment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedPayment")
            .field("payment", &self.payment)
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

/// How often a create starts again after losing a race on a unique index.
const MAX_RACE_RETRIES: usize = 5;

impl Payments {
    /// Creates (or idempotently returns) the payment for one invoice.
    #[tracing::instrument(skip_all, fields(tenant = %tenant.id(), invoice_id = %command.invoice_id))]
    pub async fn create_invoice_payment(
        &self,
        tenant: &Tenant,
        command: CreatePaymentCommand,
    ) -> Result<CreatedPayment, AppError> {
        let fingerprint = command.fingerprint();
        for _ in 0..MAX_RACE_RETRIES {
            // `None`: a concurrent create took the key or the invoice first; start again, and
            // this time find what it wrote.
            if let Some(mut answer) = self.try_create(tenant, &command, &fingerprint).await? {
                if let Some(ttl) = command.hosted_page {
                    // A new link on every answer, replays too: only the first could be the same,
                    // and the store keeps no token to hand out again.
                    answer.link = Some(self.issue_link(&answer.payment, ttl).await?);
                }
                return Ok(answer);
            }
        }
        Err(AppError::Internal(
            "create kept losing races on unique indexes".to_owned(),
        ))
    }

    async fn try_create(
        &self,
        tenant: &Tenant,
        command: &CreatePaymentCommand,
        fingerprint: &str,
    ) -> Result<Option<CreatedPayment>, AppError> {
        let tenant_id = tenant.id().as_str();
        let key = command.idempotency_key.as_str();

        // The usual create first: a new key for an invoice without a live payment. When the
        // customer needs no lookup (none, or an existing Stripe customer), the payment is
        // written without reading first; the write does nothing if the key or the invoice is
        // taken, and the reads below find what took it.
        let known_customer = match &command.customer {
            None => Some(None),
            Some(Customer::Existing(id)) => Some(Some(id.as_str().to_owned())),
            Some(Customer::New { .. }) => None,
        };
        if let Some(stripe_customer_id) = known_customer {
            let payment = new_payment(tenant, command, stripe_customer_id);
            if let Some(created) = self.record_and_create(payment, key, fingerprint).await? {
                return Ok(Some(created));
            }
        }

        let now = now_millis();
        let found = self
            .store
            .find_for_create(tenant_id, key, command.invoice_id.as_str())
            .await?;

        // 1. The same key again: the same request gets the first answer.
        if let Some((record, payment)) = found.key {
            if record.request_fingerprint != fingerprint {
                return Err(AppError::IdempotencyKeyReused);
            }
            let payment = self.finish_creating(payment).await?;
            return self.answer(payment, false).map(Some);
        }

        // 2. The double-charge guard: one open or succeeded payment per invoice.
        if let Some(live) = found.live {
            if live.status == PaymentStatus::Succeeded {
                return Err(AppError::AlreadyPaid {
                    payment_id: live.id,
                });
            }
            if live.amount != command.money.amount().minor_units()
                || live.currency != command.money.currency().as_str()
            {
                return Err(AppError::InvoiceHasOpenPayment {
                    payment_id: live.id,
                });
            }
            match self
                .store
                .insert_idempotency_key(tenant_id, key, fingerprint, &live.id, now)
                .await
            {
                Err(StoreError::Conflict) => return Ok(None),
                other => other?,
            }
            let payment = self.finish_creating(live).await?;
            return self.answer(payment, false).map(Some);
        }

        // 3. A new payment for a customer looked up (or made) by email.
        let stripe_customer_id = self
            .resolve_customer(tenant, command.customer.as_ref())
            .await?;
        let payment = new_payment(tenant, command, stripe_customer_id);
        self.record_and_create(payment, key, fingerprint).await
    }

    /// Writes a new payment (in `Creating`, committed before Stripe hears of it), then creates
    /// its intent. `None` when the key or the invoice was taken: nothing was written.
    async fn record_and_create(
        &self,
        payment: Payment,
        key: &str,
        fingerprint: &str,
    ) -> Result<Option<CreatedPayment>, AppError> {
        // Locked before the row exists, so no other call of this process can start on it, and
        // the intent is created from the row as written, without reading it back.
        let _guard = self.locks.lock(&payment.id).await;
        match self.store.insert_payment(&payment, key, fingerprint).await {
            Ok(true) => {}
            Ok(false) | Err(StoreError::Conflict) => return Ok(None),
            Err(other) => return Err(other.into()),
        }
        tracing::info!(payment_id = %payment.id, "payment recorded");
        let payment = self.create_intent(payment).await?;
        self.answer(payment, true).map(Some)
    }

    /// Makes sure a `Creating` payment has its PaymentIntent: creates it at Stripe with the key
    /// derived from the payment id (so a retry after a crash or a lost answer gets the same
    /// intent back) and records it. Payments past `Creating` are returned as they are.
    pub(crate) async fn finish_creating(&self, payment: Payment) -> Result<Payment, AppError> {
        if payment.status != PaymentStatus::Creating {
            return Ok(payment);
        }
        let _guard = self.locks.lock(&payment.id).await;
        // Another call may have finished it while this one waited.
        let payment = self.load(None, &payment.id).await?;
        if payment.status != PaymentStatus::Creating {
            return Ok(payment);
        }
        self.create_intent(payment).await
    }

    /// Creates the intent of a `Creating` payment at Stripe and records it; the caller holds the
    /// payment's lock.
    async fn create_intent(&self, payment: Payment) -> Result<Payment, AppError> {
        let result = self
            .provider
            .create_payment_intent(intent_request(&payment))
            .await;
        match result {
            Ok(intent) => {
                payment
                    .check_intent(
                        &intent.id,
                        intent.amount,
                        &intent.currency,
                        &intent.metadata,
                    )
                    .map_err(|mismatch| {
                        AppError::Internal(format!(
                            "Stripe answered an intent that is not this payment's: {mismatch}"
                        ))
                    })?;
                let change = StatusChange::status_only(
                    PaymentStatus::Creating,
                    intent.status,
                    intent.last_payment_error.clone(),
                );
                let payment = self
                    .store
                    .attach_intent(
                        &payment.id,
                        &intent.id,
                        intent.client_secret.as_deref(),
                        &change,
                        now_millis(),
                    )
                    .await?;
                tracing::info!(
                    payment_id = %payment.id,
                    payment_intent = %intent.id,
                    status = %payment.status,
                    "payment intent created"
                );
                Ok(payment)
            }
            Err(refusal @ (ProviderError::Rejected { .. } | ProviderError::NotFound)) => {
                // Stripe will give the same refusal for this key (an unknown customer, say): the
                // payment cannot be made. Record it as cancelled so the invoice is free for a
                // corrected request.
                let (code, message) = match refusal {
                    ProviderError::Rejected { code, message, .. } => (code, message),
                    _ => (
                        Some("resource_missing".to_owned()),
                        "Stripe has no such object (check the customer id)".to_owned(),
                    ),
                };
                tracing::warn!(payment_id = %payment.id, ?code, %message, "Stripe refused the payment intent");
                let change = StatusChange {
                    cancellation_reason: Some(CancellationReason::Other),
                    ..StatusChange::status_only(
                        PaymentStatus::Creating,
                        PaymentStatus::Canceled,
                        Some(LastPaymentError {
                            code: code.clone(),
                            message: Some(message.clone()),
                        }),
                    )
                };
                self.store
                    .apply_change(&payment.id, &change, EventSource::Create, now_millis())
                    .await?;
                Err(AppError::ProviderRejected { message })
            }
            Err(other) => {
                tracing::warn!(payment_id = %payment.id, error = %other, "creating the payment intent failed; the payment stays creating");
                Err(other.into())
            }
        }
    }

    /// The Stripe customer for the request: the given one, or the one paybridge made earlier for
    /// this tenant and email, or a new one.
    async fn resolve_customer(
        &self,
        tenant: &Tenant,
        customer: Option<&Customer>,
    ) -> Result<Option<String>, AppError> {
        let (email, name) = match customer {
            None => return Ok(None),
            Some(Customer::Existing(id)) => return Ok(Some(id.as_str().to_owned())),
            Some(Customer::New { email, name }) => (email, name),
        };
        let tenant_id = tenant.id().as_str();
        let email_key = email.as_str().to_ascii_lowercase();
        if let Some(id) = self.store.find_customer(tenant_id, &email_key).await? {
            return Ok(Some(id));
        }
        let name = name.as_ref().map(|n| n.as_str().to_owned());
        // The key covers everything sent, so concurrent first payments of one customer make one
        // Stripe customer, and a later request with another name is not refused as a key reuse.
        let mut hasher = Sha256::new();
        for part in [tenant_id, &email_key, name.as_deref().unwrap_or("")] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part.as_bytes());
        }
        let idempotency_key = format!("paybridge-customer-{}", hex::encode(hasher.finalize()));
        let created = self
            .provider
            .create_customer(NewCustomer {
                email: email.as_str().to_owned(),
                name,
                metadata: BTreeMap::from([("tenant".to_owned(), tenant_id.to_owned())]),
                idempotency_key,
            })
            .await?;
        let id = self
            .store
            .remember_customer(tenant_id, &email_key, &created, now_millis())
            .await?;
        Ok(Some(id))
    }

    fn answer(&self, payment: Payment, created: bool) -> Result<CreatedPayment, AppError> {
        let client_secret = payment.client_secret.clone().ok_or_else(|| {
            AppError::Internal(format!("payment {} has no client secret", payment.id))
        })?;
        Ok(CreatedPayment {
            payment,
            client_secret,
            publishable_key: self.settings.publishable_key.clone(),
            return_url: self.settings.return_url.clone(),
            created,
            link: None,
        })
    }
}

/// The PaymentIntent for a payment, built only from its row, so that a retry or the reconciler
/// sends exactly what the first attempt sent.
fn intent_request(payment: &Payment) -> NewPaymentIntent {
    let mut metadata = payment.metadata.clone();
    metadata.insert(PAYMENT_ID_METADATA_KEY.to_owned(), payment.id.clone());
    metadata.insert("invoice_id".to_owned(), payment.invoice_id.clone());
    metadata.insert("tenant".to_owned(), payment.tenant.clone());
    NewPaymentIntent {
        amount: payment.amount,
        currency: payment.currency.clone(),
        customer: payment.stripe_customer_id.clone(),
        description: payment.description.clone(),
        metadata,
        capture_method: payment.capture_method,
        idempotency_key: format!("paybridge-create-{}", payment.id),
    }
}

/// The observation an intent makes (used by refresh and cancel).
pub(crate) fn observation_of(intent: &super::ports::ProviderIntent) -> Observation {
    observation_at(intent, now_millis())
}

/// The observation an intent makes, true at `observed_at` (unix ms).
pub(crate) fn observation_at(
    intent: &super::ports::ProviderIntent,
    observed_at: i64,
) -> Observation {
    Observation {
        status: intent.status,
        last_payment_error: intent.last_payment_error.clone(),
        amount_received: intent.amount_received,
        amount_capturable: intent.amount_capturable,
        capture_before: intent.capture_before,
        cancellation_reason: intent.cancellation_reason.clone(),
        observed_at,
    }
}

/// A new payment in `Creating` for the request, with the tenant's default URLs where the request
/// gives none.
fn new_payment(
    tenant: &Tenant,
    command: &CreatePaymentCommand,
    stripe_customer_id: Option<String>,
) -> Payment {
    let now = now_millis();
    Payment {
        id: PaymentId::generate().as_str().to_owned(),
        tenant: tenant.id().as_str().to_owned(),
        invoice_id: command.invoice_id.as_str().to_owned(),
        amount: command.money.amount().minor_units(),
        currency: command.money.currency().as_str().to_owned(),
        status: PaymentStatus::Creating,
        stripe_payment_intent_id: None,
        stripe_customer_id,
        client_secret: None,
        description: command.description.as_ref().map(|d| d.as_str().to_owned()),
        metadata: command.metadata.as_map().clone(),
        success_url: command
            .success_url
            .as_ref()
            .unwrap_or(tenant.success_url())
            .as_str()
            .to_owned(),
        failure_url: command
            .failure_url
            .as_ref()
            .unwrap_or(tenant.failure_url())
            .as_str()
            .to_owned(),
        last_payment_error: None,
        created_at: now,
        updated_at: now,
        last_event_created: None,
        amount_received: 0,
        amount_refunded: 0,
        amount_refund_pending: 0,
        capture_method: command.capture_method,
        amount_capturable: 0,
        capture_before: None,
        cancellation_reason: None,
        dispute: None,
        dispute_last_event_created: None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::app::fakes::{Harness, command};

    fn creates(harness: &Harness) -> Vec<String> {
        harness
            .provider
            .calls()
            .into_iter()
            .filter(|call| call.starts_with("create_payment_intent"))
            .collect()
    }

    #[tokio::test]
    async fn a_new_key_records_the_payment_then_creates_its_intent_with_a_key_from_its_id() {
        let harness = Harness::new();
        let created = harness
            .submit(command("k-1", "inv-1", 4200))
            .await
            .expect("created");
        assert!(created.created);
        let payment = &created.payment;
        assert_eq!(payment.status, PaymentStatus::RequiresPaymentMethod);
        assert_eq!(payment.success_url, "https://billing.example.com/paid");
        assert_eq!(
            creates(&harness),
            [format!(
                "create_payment_intent paybridge-create-{}",
                payment.id
            )]
        );
        let intent = harness
            .provider
            .intent(payment.stripe_payment_intent_id.as_deref().expect("intent"));
        assert_eq!(crate::app::fakes::payment_id_of(&intent), payment.id);
        assert_eq!(intent.metadata["invoice_id"], "inv-1");
        assert_eq!(intent.metadata["order"], "o-1");
        assert_eq!(created.client_secret, intent.client_secret.expect("secret"));
        assert_eq!(
            harness.store.events_of(&payment.id),
            [
                (EventSource::Create, None, PaymentStatus::Creating),
                (
                    EventSource::Create,
                    Some(PaymentStatus::Creating),
                    PaymentStatus::RequiresPaymentMethod
                ),
            ]
        );
    }

    #[tokio::test]
    async fn a_replayed_key_answers_the_first_payment_without_calling_stripe_again() {
        let harness = Harness::new();
        let first = harness
            .submit(command("k-1", "inv-1", 4200))
            .await
            .expect("created");
        let again = harness
            .submit(command("k-1", "inv-1", 4200))
            .await
            .expect("replayed");
        assert!(!again.created);
        assert_eq!(again.payment.id, first.payment.id);
        assert_eq!(creates(&harness).len(), 1);
    }

    #[tokio::test]
    async fn a_reused_key_with_another_request_is_refused() {
        let harness = Harness::new();
        harness
            .submit(command("k-1", "inv-1", 4200))
            .await
            .expect("created");
        let error = harness
            .submit(command("k-1", "inv-1", 4300))
            .await
            .expect_err("another amount under the same key");
        assert!(matches!(error, AppError::IdempotencyKeyReused), "{error:?}");
    }

    #[tokio::test]
    async fn an_invoice_keeps_one_open_payment_and_refuses_another_amount() {
        let harness = Harness::new();
        let first = harness
            .submit(command("k-1", "inv-1", 4200))
            .await
            .expect("created");
        let same = harness
            .submit(command("k-2", "inv-1", 4200))
            .await
            .expect("a second key for the same amount");
        assert!(!same.created);
        assert_eq!(same.payment.id, first.payment.id);
        let error = harness
            .submit(command("k-3", "inv-1", 9900))
            .await
            .expect_err("another amount");
        assert!(
            matches!(&error, AppError::InvoiceHasOpenPayment { payment_id } if *payment_id == first.payment.id),
            "{error:?}"
        );
        assert_eq!(harness.store.payments().len(), 1);
        assert_eq!(creates(&harness).len(), 1);
    }

    #[tokio::test]
    async fn a_paid_invoice_refuses_a_new_payment() {
        let harness = Harness::new();
        let first = harness
            .submit(command("k-1", "inv-1", 4200))
            .await
            .expect("created");
        let mut paid = first.payment.clone();
        paid.status = PaymentStatus::Succeeded;
        harness.store.put(paid);
        let error = harness
            .submit(command("k-2", "inv-1", 4200))
            .await
            .expect_err("already paid");
        assert!(matches!(error, AppError::AlreadyPaid { .. }), "{error:?}");
    }

    #[tokio::test]
    async fn stripe_unavailable_leaves_the_payment_creating_and_a_retry_finishes_it_with_the_same_key()
     {
        let harness = Harness::new();
        harness
            .provider
            .fail_with(Some(ProviderError::Unavailable("timeout".to_owned())));
        let error = harness
            .submit(command("k-1", "inv-1", 4200))
            .await
            .expect_err("Stripe is down");
        assert!(
            matches!(error, AppError::ProviderUnavailable(_)),
            "{error:?}"
        );
        let [left] = harness.store.payments().try_into().expect("one payment");
        assert_eq!(
            left.status,
            PaymentStatus::Creating,
            "recorded before Stripe"
        );

        harness.provider.fail_with(None);
        let retried = harness
            .submit(command("k-1", "inv-1", 4200))
            .await
            .expect("retried");
        assert_eq!(retried.payment.id, left.id);
        assert_eq!(retried.payment.status, PaymentStatus::RequiresPaymentMethod);
        let key = format!("create_payment_intent paybridge-create-{}", left.id);
        assert_eq!(creates(&harness), [key.clone(), key]);
    }

    #[tokio::test]
    async fn a_refused_intent_cancels_the_payment_and_frees_the_invoice() {
        let harness = Harness::new();
        harness.provider.fail_with(Some(ProviderError::Rejected {
            status: 400,
            code: Some("resource_missing".to_owned()),
            message: "No such customer".to_owned(),
        }));
        let error = harness
            .submit(command("k-1", "inv-1", 4200))
            .await
            .expect_err("refused");
        assert!(
            matches!(error, AppError::ProviderRejected { .. }),
            "{error:?}"
        );
        let [refused] = harness.store.payments().try_into().expect("one payment");
        assert_eq!(refused.status, PaymentStatus::Canceled);
        assert_eq!(
            refused.last_payment_error.and_then(|e| e.code).as_deref(),
            Some("resource_missing")
        );

        harness.provider.fail_with(None);
        let corrected = harness
            .submit(command("k-2", "inv-1", 4200))
            .await
            .expect("the invoice is free again");
        assert_ne!(corrected.payment.id, refused.id);
    }

    #[tokio::test]
    async fn the_database_down_answers_unavailable_without_calling_stripe() {
        let harness = Harness::new();
        harness.store.down.store(true, Ordering::SeqCst);
        let error = harness
            .submit(command("k-1", "inv-1", 4200))
            .await
            .expect_err("no database");
        assert!(matches!(error, AppError::StoreUnavailable(_)), "{error:?}");
        assert!(harness.provider.calls().is_empty());
    }

    #[tokio::test]
    async fn a_new_customer_email_is_made_once_at_stripe_and_remembered() {
        let harness = Harness::new();
        for (key, invoice) in [("k-1", "inv-1"), ("k-2", "inv-2")] {
            let mut request = command(key, invoice, 4200);
            request.customer = Some(Customer::New {
                email: crate::domain::Email::parse("Ada@Example.com").expect("email"),
                name: None,
            });
            let created = harness.submit(request).await.expect("created");
            assert!(created.payment.stripe_customer_id.is_some());
        }
        let customers = harness
            .provider
            .calls()
            .into_iter()
            .filter(|call| call.starts_with("create_customer"))
            .count();
        assert_eq!(customers, 1);
    }
}

//! CreateInvoicePayment: idempotency, the double-charge guard, and crash-safe creation of the
//! PaymentIntent (row first, then Stripe with a key derived from the payment id).

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::ports::{NewCustomer, NewPaymentIntent, ProviderError, StoreError};
use super::{AppError, Payments, now_millis};
use crate::domain::{
    Customer, Description, EventSource, IdempotencyKey, InvoiceId, LastPaymentError, Metadata,
    Money, Observation, PAYMENT_ID_METADATA_KEY, Payment, PaymentId, PaymentStatus, RedirectUrl,
    StatusChange,
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
}

impl CreatePaymentCommand {
    /// A digest of everything the request asks for, to tell a replay from a different request
    /// under the same key. Each part is length-prefixed so that no two requests collide.
    fn fingerprint(&self) -> String {
        let mut hasher = Sha256::new();
        let mut part = |text: &str| {
            hasher.update((text.len() as u64).to_be_bytes());
            hasher.update(text.as_bytes());
        };
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
        hex::encode(hasher.finalize())
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
            if let Some(answer) = self.try_create(tenant, &command, &fingerprint).await? {
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
                let change = StatusChange {
                    from: PaymentStatus::Creating,
                    to: intent.status,
                    last_payment_error: intent.last_payment_error.clone(),
                };
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
                    from: PaymentStatus::Creating,
                    to: PaymentStatus::Canceled,
                    last_payment_error: Some(LastPaymentError {
                        code: code.clone(),
                        message: Some(message.clone()),
                    }),
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
        idempotency_key: format!("paybridge-create-{}", payment.id),
    }
}

/// The observation an intent makes (used by refresh and cancel).
pub(crate) fn observation_of(intent: &super::ports::ProviderIntent) -> Observation {
    Observation {
        status: intent.status,
        last_payment_error: intent.last_payment_error.clone(),
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
    }
}

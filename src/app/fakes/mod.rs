//! In-memory fakes of the ports, for fast unit tests of the use cases' branches. The black-box
//! tests on both real databases and the local Stripe are the proof that the adapters keep the
//! same promises; these fakes keep the promises the use cases rely on (one live payment per
//! invoice, one payment per key, compare-and-set changes, each webhook event recorded once).

mod provider;
mod push;
mod store;

use std::sync::{Arc, Mutex};

use crate::app::{AppError, CreatePaymentCommand, CreatedPayment, PaymentSettings, Payments};

pub(crate) use provider::{FakeProvider, FakeWebhooks, payment_id_of};
pub(crate) use push::{FakeFeed, FakePusher};
pub(crate) use store::FakeStore;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The use cases over fresh fakes, for the tenant [`tenant`].
pub(crate) struct Harness {
    pub(crate) payments: Arc<Payments>,
    pub(crate) store: Arc<FakeStore>,
    pub(crate) provider: Arc<FakeProvider>,
    pub(crate) webhooks: Arc<FakeWebhooks>,
}

impl Harness {
    pub(crate) fn new() -> Harness {
        let store = Arc::new(FakeStore::default());
        let provider = Arc::new(FakeProvider::default());
        let webhooks = Arc::new(FakeWebhooks::default());
        let payments = Arc::new(Payments::new(
            store.clone(),
            provider.clone(),
            PaymentSettings {
                publishable_key: "pk_test_fake".to_owned(),
                return_url: "https://pay.example.com/payment/return".to_owned(),
                public_url: "https://pay.example.com".to_owned(),
                webhook_verifier: Some(webhooks.clone()),
            },
        ));
        Harness {
            payments,
            store,
            provider,
            webhooks,
        }
    }

    /// Sends a create as the tenant [`tenant`].
    pub(crate) async fn submit(
        &self,
        command: CreatePaymentCommand,
    ) -> Result<CreatedPayment, AppError> {
        self.payments
            .create_invoice_payment(&tenant(), command)
            .await
    }

    /// Creates a payment of 42.00 USD for `invoice` as the tenant [`tenant`].
    pub(crate) async fn create(&self, key: &str, invoice: &str) -> CreatedPayment {
        self.submit(command(key, invoice, 4200))
            .await
            .expect("created")
    }

    /// Changes the created payment's intent at the fake Stripe (as the customer's payment
    /// would), then reads the payment with `refresh`, so that it takes the intent's state.
    pub(crate) async fn refreshed_after(
        &self,
        created: &CreatedPayment,
        change: impl FnOnce(&mut crate::app::ports::ProviderIntent),
    ) -> crate::domain::Payment {
        let intent_id = created
            .payment
            .stripe_payment_intent_id
            .as_deref()
            .expect("intent");
        self.provider.update_intent(intent_id, change);
        self.payments
            .get_payment("billing", &created.payment.id, true)
            .await
            .expect("refreshed")
    }
}

/// A CreateInvoicePayment request in USD with one metadata entry.
pub(crate) fn command(key: &str, invoice: &str, amount: i64) -> CreatePaymentCommand {
    use crate::domain::{IdempotencyKey, InvoiceId, Metadata, Money};
    CreatePaymentCommand {
        idempotency_key: IdempotencyKey::parse(key).expect("key"),
        invoice_id: InvoiceId::parse(invoice).expect("invoice"),
        money: Money::parse(amount, "usd").expect("money"),
        customer: None,
        description: None,
        metadata: Metadata::parse([("order".to_owned(), "o-1".to_owned())]).expect("metadata"),
        success_url: None,
        failure_url: None,
        capture_method: crate::domain::CaptureMethod::Automatic,
        hosted_page: None,
    }
}

/// The tenant `billing`, whose pages live on https://billing.example.com.
pub(crate) fn tenant() -> crate::tenants::Tenant {
    tenant_named("billing")
}

/// A tenant like [`tenant`] with another id.
pub(crate) fn tenant_named(id: &str) -> crate::tenants::Tenant {
    use sha2::Digest;
    let hash = hex::encode(sha2::Sha256::digest(format!("{id}-token")));
    let toml = format!(
        "[[tenants]]\nid = \"{id}\"\ntoken_sha256 = \"{}\"\n\
         allowed_redirect_origins = [\"https://billing.example.com\"]\n\
         success_url = \"https://billing.example.com/paid\"\n\
         failure_url = \"https://billing.example.com/failed\"\n",
        hash
    );
    let tenants = crate::tenants::Tenants::parse_toml(&toml).expect("a valid tenants file");
    tenants.get(id).expect("the tenant").clone()
}

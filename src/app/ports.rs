//! The ports the use cases need: the payment provider (Stripe) and the store.

use std::collections::BTreeMap;

use async_trait::async_trait;

pub use crate::domain::LastPaymentError;
use crate::domain::PaymentStatus;

/// A customer to create at the provider.
#[derive(Debug, Clone)]
pub struct NewCustomer {
    pub email: String,
    pub name: Option<String>,
    pub metadata: BTreeMap<String, String>,
    /// Sent as Stripe's `Idempotency-Key`; the same key on a retry returns the same customer.
    pub idempotency_key: String,
}

/// A PaymentIntent to create at the provider.
#[derive(Debug, Clone)]
pub struct NewPaymentIntent {
    /// Minor units, > 0.
    pub amount: i64,
    /// Lowercase ISO 4217.
    pub currency: String,
    /// Provider customer id (`cus_…`), if any.
    pub customer: Option<String>,
    pub description: Option<String>,
    /// Includes `paybridge_payment_id`, `invoice_id` and `tenant`.
    pub metadata: BTreeMap<String, String>,
    /// Sent as Stripe's `Idempotency-Key`; derived from the payment id so that a retry after a
    /// crash can never make a second intent.
    pub idempotency_key: String,
}

/// The provider's view of a PaymentIntent.
#[derive(Clone, PartialEq, Eq)]
pub struct ProviderIntent {
    /// `pi_…`
    pub id: String,
    pub status: PaymentStatus,
    pub amount: i64,
    pub currency: String,
    /// Secret handed to the browser; never logged (hence the manual Debug).
    pub client_secret: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub last_payment_error: Option<LastPaymentError>,
}

impl std::fmt::Debug for ProviderIntent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderIntent")
            .field("id", &self.id)
            .field("status", &self.status)
            .field("amount", &self.amount)
            .field("currency", &self.currency)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "[redacted]"),
            )
            .field("metadata", &self.metadata)
            .field("last_payment_error", &self.last_payment_error)
            .finish()
    }
}

/// What can go wrong when talking to the provider.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// The provider could not be reached or kept failing (connection errors, timeouts, 429, 5xx)
    /// after the retries. Safe to retry later with the same idempotency key. Becomes `UNAVAILABLE`.
    #[error("payment provider unavailable: {0}")]
    Unavailable(String),
    /// The provider has no such object (404).
    #[error("payment provider has no such object")]
    NotFound,
    /// The provider refused the request (other 4xx): a bug or a misconfiguration on our side, or
    /// a parameter the provider does not accept. Becomes `FAILED_PRECONDITION` or `INTERNAL`.
    #[error("payment provider refused the request ({status}): {message}")]
    Rejected {
        status: u16,
        code: Option<String>,
        message: String,
    },
    /// The provider answered something we could not understand.
    #[error("unexpected answer from the payment provider: {0}")]
    Unexpected(String),
}

/// The payment provider: Stripe in production, localstripe in tests.
#[async_trait]
pub trait PaymentProvider: Send + Sync + std::fmt::Debug + 'static {
    /// Creates a customer and returns its id (`cus_…`).
    async fn create_customer(&self, customer: NewCustomer) -> Result<String, ProviderError>;
    /// Creates a PaymentIntent (not confirmed: the platform's page confirms it with Stripe.js).
    async fn create_payment_intent(
        &self,
        intent: NewPaymentIntent,
    ) -> Result<ProviderIntent, ProviderError>;
    /// Reads a PaymentIntent.
    async fn retrieve_payment_intent(&self, id: &str) -> Result<ProviderIntent, ProviderError>;
    /// Cancels a PaymentIntent. `idempotency_key` makes a retried cancel harmless.
    async fn cancel_payment_intent(
        &self,
        id: &str,
        idempotency_key: &str,
    ) -> Result<ProviderIntent, ProviderError>;
}

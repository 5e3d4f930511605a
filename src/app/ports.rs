//! The ports the use cases need: the payment provider (Stripe), its webhooks, and the store.
//! Adapters implement them; the use cases know nothing else of Stripe or the database.

use std::collections::BTreeMap;

use async_trait::async_trait;

pub use crate::domain::LastPaymentError;
use crate::domain::{EventSource, Payment, PaymentStatus, StatusChange};

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

// --- Webhooks ------------------------------------------------------------------------------------

/// A provider event whose signature was verified, as far as the use cases read it.
#[derive(Debug, Clone)]
pub struct ProviderEvent {
    /// `evt_…`
    pub id: String,
    /// e.g. `payment_intent.succeeded`.
    pub event_type: String,
    /// The provider's `created`, unix seconds.
    pub created: i64,
    /// The PaymentIntent the event carries, for the event types paybridge applies.
    pub intent: Option<ProviderIntent>,
    /// `event_type` when it is one paybridge applies, else `other`: a bounded metric label.
    pub type_label: &'static str,
}

/// Why a webhook delivery was refused; the caller answers 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookRefused {
    /// The signature is missing, malformed, stale or matches no secret.
    #[error("{0}")]
    Signature(String),
    /// The signature holds but the payload is not an event.
    #[error("{0}")]
    Payload(String),
}

/// Checks a webhook delivery's signature and reads its event.
pub trait WebhookVerification: Send + Sync + std::fmt::Debug + 'static {
    /// The event in `payload` if `signature` signs it at `now_seconds` (unix seconds).
    fn verify_event(
        &self,
        payload: &[u8],
        signature: &str,
        now_seconds: i64,
    ) -> Result<ProviderEvent, WebhookRefused>;
}

// --- The store -----------------------------------------------------------------------------------

/// The cause of a store error, from the database driver.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique index refused the write: a concurrent writer got there first.
    #[error("a concurrent write took the same unique key")]
    Conflict,
    /// The database could not be reached (connection refused, pool timed out, I/O, shut down).
    #[error("database unavailable")]
    Unavailable(#[source] BoxError),
    /// A stored row could not be read back into the domain (a bug or a hand-edited row).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// Anything else the database refused.
    #[error("database error")]
    Database(#[source] BoxError),
}

/// What the idempotency table remembers of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    pub request_fingerprint: String,
    pub payment_id: String,
}

/// What a create finds before it writes (see [`IdempotencyKeys::find_for_create`]).
#[derive(Debug, Default)]
pub struct CreateLookup {
    /// The idempotency key's record and the payment it names.
    pub key: Option<(IdempotencyRecord, Payment)>,
    /// The invoice's open or succeeded payment.
    pub live: Option<Payment>,
}

/// A position in the newest-first listing: the last row of the previous page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListCursor {
    pub created_at: i64,
    pub payment_id: String,
}

/// Filter and page of [`PaymentRecords::list_payments`].
#[derive(Debug, Clone)]
pub struct ListQuery<'a> {
    pub tenant: &'a str,
    pub invoice_id: Option<&'a str>,
    pub status: Option<PaymentStatus>,
    pub after: Option<ListCursor>,
    pub limit: u32,
}

/// A verified webhook event as recorded.
#[derive(Debug, Clone)]
pub struct WebhookEventRecord<'a> {
    pub stripe_event_id: &'a str,
    pub event_type: &'a str,
    pub event_created: i64,
    pub payment_id: Option<&'a str>,
    /// What became of it: applied, other_type, not_ours, stale, no_change, mismatch.
    pub result: &'a str,
}

/// What [`WebhookEventLog::record_webhook_event`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventRecorded {
    /// The event (and its change, if any) is committed.
    Recorded,
    /// The event id was recorded before: nothing done.
    Duplicate,
    /// The payment changed meanwhile: nothing done, try again.
    Conflict,
}

/// One recorded status change of a payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusEvent {
    /// Increasing within a payment.
    pub payment_event_id: i64,
    pub source: EventSource,
    pub from: Option<PaymentStatus>,
    pub to: PaymentStatus,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// Payments as recorded. Every status change is written with its entry in the payment's event
/// log, in one transaction, and announced to [`ChangeFeed`] subscribers once committed.
#[async_trait]
pub trait PaymentRecords: Send + Sync + std::fmt::Debug + 'static {
    /// Writes a new payment (in `Creating`), its idempotency key and its first event in one
    /// transaction, unless the key is taken or the invoice has a live payment (open or
    /// succeeded): then nothing is written and the answer is false.
    async fn insert_payment(
        &self,
        payment: &Payment,
        idempotency_key: &str,
        request_fingerprint: &str,
    ) -> Result<bool, StoreError>;

    /// One payment by id, only if it belongs to `tenant` (when given).
    async fn get_payment(
        &self,
        tenant: Option<&str>,
        payment_id: &str,
    ) -> Result<Option<Payment>, StoreError>;

    /// The payment of a PaymentIntent, only if it belongs to `tenant` (when given).
    async fn find_payment_by_intent(
        &self,
        tenant: Option<&str>,
        intent_id: &str,
    ) -> Result<Option<Payment>, StoreError>;

    /// A tenant's payments, newest first.
    async fn list_payments(&self, query: ListQuery<'_>) -> Result<Vec<Payment>, StoreError>;

    /// Records the intent the provider created for a `Creating` payment, with the status it
    /// reported. Returns the payment as stored afterwards (unchanged if another writer finished
    /// it first).
    async fn attach_intent(
        &self,
        payment_id: &str,
        intent_id: &str,
        client_secret: Option<&str>,
        change: &StatusChange,
        now: i64,
    ) -> Result<Payment, StoreError>;

    /// Applies a status change if the payment is still in `change.from` (compare-and-set).
    /// Returns the payment as stored afterwards and whether this call changed it.
    async fn apply_change(
        &self,
        payment_id: &str,
        change: &StatusChange,
        source: EventSource,
        now: i64,
    ) -> Result<(Payment, bool), StoreError>;
}

/// The idempotency keys of creates.
#[async_trait]
pub trait IdempotencyKeys: Send + Sync + std::fmt::Debug + 'static {
    /// What a create must know before it writes: the payment an idempotency key already names
    /// (with the fingerprint of the request that named it), and the invoice's live payment (open
    /// or succeeded; at most one). Often the same payment.
    async fn find_for_create(
        &self,
        tenant: &str,
        idempotency_key: &str,
        invoice_id: &str,
    ) -> Result<CreateLookup, StoreError>;

    /// Points another idempotency key at an existing payment. `Conflict` when the key was taken
    /// concurrently.
    async fn insert_idempotency_key(
        &self,
        tenant: &str,
        idempotency_key: &str,
        request_fingerprint: &str,
        payment_id: &str,
        now: i64,
    ) -> Result<(), StoreError>;
}

/// Verified webhook events, each recorded once.
#[async_trait]
pub trait WebhookEventLog: Send + Sync + std::fmt::Debug + 'static {
    /// Records the event once and, with it, the change it makes (compare-and-set on
    /// `change.from`), in one transaction: when this returns `Recorded`, both are durable.
    async fn record_webhook_event(
        &self,
        event: &WebhookEventRecord<'_>,
        change: Option<&StatusChange>,
        now: i64,
    ) -> Result<EventRecorded, StoreError>;
}

/// The reconciler's claims on open payments, shared by every replica.
#[async_trait]
pub trait ReconcileClaims: Send + Sync + std::fmt::Debug + 'static {
    /// Claims up to `limit` payments the reconciler should look at (open ones unchanged since
    /// `changed_before`, `Creating` ones included) that no replica holds a lease on, and leases
    /// them until `lease_until`. Replicas claiming side by side never take the same payment.
    async fn claim_for_reconcile(
        &self,
        now: i64,
        changed_before: i64,
        lease_until: i64,
        limit: u32,
    ) -> Result<Vec<Payment>, StoreError>;

    /// Leaves a payment alone until `until` (unix ms): the reconciler found nothing new.
    async fn defer_reconcile(&self, payment_id: &str, until: i64) -> Result<(), StoreError>;
}

/// The provider customers paybridge made for tenants' customer emails.
#[async_trait]
pub trait CustomerRecords: Send + Sync + std::fmt::Debug + 'static {
    /// The provider customer made earlier for this tenant and (lowercased) email.
    async fn find_customer(&self, tenant: &str, email: &str) -> Result<Option<String>, StoreError>;

    /// Remembers the provider customer of a tenant's email; the first writer wins and every
    /// caller gets the winner's id back.
    async fn remember_customer(
        &self,
        tenant: &str,
        email: &str,
        stripe_customer_id: &str,
        now: i64,
    ) -> Result<String, StoreError>;
}

/// Who changed: the ids of payments as their changes commit (on every replica), and each
/// payment's event log.
#[async_trait]
pub trait ChangeFeed: Send + Sync + std::fmt::Debug + 'static {
    /// Ids of payments as they change. A receiver that falls behind loses ids (`Lagged`), and a
    /// lost connection loses some, so a follower also re-reads what it follows now and then.
    fn subscribe_changes(&self) -> tokio::sync::broadcast::Receiver<String>;

    /// The status changes of a payment recorded after `after` (an event id; 0 for all), oldest
    /// first.
    async fn status_events_after(
        &self,
        payment_id: &str,
        after: i64,
    ) -> Result<Vec<StatusEvent>, StoreError>;
}

/// The whole store the use cases need, one trait object.
pub trait PaymentStore:
    PaymentRecords + IdempotencyKeys + WebhookEventLog + ReconcileClaims + CustomerRecords + ChangeFeed
{
}

impl<T> PaymentStore for T where
    T: PaymentRecords
        + IdempotencyKeys
        + WebhookEventLog
        + ReconcileClaims
        + CustomerRecords
        + ChangeFeed
{
}

//! The ports the use cases need: the payment provider (Stripe), its webhooks, and the store.
//! Adapters implement them; the use cases know nothing else of Stripe or the database.

use std::collections::BTreeMap;

use async_trait::async_trait;

pub use crate::domain::LastPaymentError;
use crate::domain::{
    CaptureMethod, Dispute, EventSource, Payment, PaymentStatus, Refund, RefundChange,
    RefundReason, RefundStatus, StatusChange,
};

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
    /// Sent as `capture_method` when manual (automatic is Stripe's default and not sent).
    pub capture_method: CaptureMethod,
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
    /// What was received (captured), minor units.
    pub amount_received: i64,
    /// What can still be captured (in `RequiresCapture`), minor units.
    pub amount_capturable: i64,
    /// Unix milliseconds: the latest charge's `payment_method_details.card.capture_before`, when
    /// the charge was read with the intent.
    pub capture_before: Option<i64>,
    /// Stripe's `cancellation_reason`, as given.
    pub cancellation_reason: Option<String>,
    /// The latest charge's id (`ch_…`), where there is one.
    pub latest_charge: Option<String>,
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
            .field("amount_received", &self.amount_received)
            .field("amount_capturable", &self.amount_capturable)
            .field("capture_before", &self.capture_before)
            .field("cancellation_reason", &self.cancellation_reason)
            .field("latest_charge", &self.latest_charge)
            .finish()
    }
}

/// A refund to create at the provider.
#[derive(Debug, Clone)]
pub struct NewRefund {
    /// The refunded PaymentIntent, `pi_…`.
    pub payment_intent: String,
    /// Minor units, > 0 (always sent: the provider's "all that remains" is never relied on).
    pub amount: i64,
    pub reason: Option<RefundReason>,
    /// The caller's metadata plus `paybridge_refund_id`, `paybridge_payment_id` and `tenant`.
    pub metadata: BTreeMap<String, String>,
    /// Sent as Stripe's `Idempotency-Key`; derived from the refund id so that a retry after a
    /// crash or a lost answer can never make a second refund.
    pub idempotency_key: String,
}

/// The provider's view of a Refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderRefund {
    /// `re_…`
    pub id: String,
    /// The refunded PaymentIntent, `pi_…` (none for refunds of charges made without one).
    pub payment_intent: Option<String>,
    pub amount: i64,
    pub currency: String,
    /// Never `Creating`.
    pub status: RefundStatus,
    pub reason: Option<RefundReason>,
    pub failure_reason: Option<String>,
    pub metadata: BTreeMap<String, String>,
    /// Unix seconds.
    pub created: i64,
    /// Stripe's own refund of an authorization's uncaptured rest (reason
    /// `expired_uncaptured_charge`): money that was never received, so not a refund of ours.
    pub releases_uncaptured: bool,
}

/// What paybridge reads of a Charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderCharge {
    /// `ch_…`
    pub id: String,
    /// Its PaymentIntent, `pi_…` (none for charges made without one).
    pub payment_intent: Option<String>,
    /// Unix milliseconds: `payment_method_details.card.capture_before`, when the charge is an
    /// uncaptured card authorization and Stripe says when it lapses.
    pub capture_before: Option<i64>,
}

/// The provider's view of a Dispute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderDispute {
    /// The disputed charge's PaymentIntent, `pi_…`, when the dispute names it (else read from
    /// the charge).
    pub payment_intent: Option<String>,
    /// The disputed charge, `ch_…`.
    pub charge: Option<String>,
    /// Its currency, lowercase.
    pub currency: String,
    pub dispute: Dispute,
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
    /// Creates a refund of a PaymentIntent's charge. The same idempotency key returns the same
    /// refund.
    async fn create_refund(&self, refund: NewRefund) -> Result<ProviderRefund, ProviderError>;
    /// Reads a refund.
    async fn retrieve_refund(&self, id: &str) -> Result<ProviderRefund, ProviderError>;
    /// Every refund of a PaymentIntent, newest first (all pages).
    async fn list_refunds(
        &self,
        payment_intent: &str,
    ) -> Result<Vec<ProviderRefund>, ProviderError>;
    /// Refunds of the whole account created at or after `created_since` (unix seconds), newest
    /// first, at most `limit`: how the reconciler finds refunds made at Stripe directly.
    async fn list_recent_refunds(
        &self,
        created_since: i64,
        limit: u32,
    ) -> Result<Vec<ProviderRefund>, ProviderError>;
    /// Captures an authorized PaymentIntent: `amount_to_capture` of it, releasing the rest. The
    /// same idempotency key answers the same capture.
    async fn capture_payment_intent(
        &self,
        id: &str,
        amount_to_capture: i64,
        idempotency_key: &str,
    ) -> Result<ProviderIntent, ProviderError>;
    /// Reads a charge: its intent and, for an authorization, when it lapses.
    async fn retrieve_charge(&self, id: &str) -> Result<ProviderCharge, ProviderError>;
    /// The disputes of a PaymentIntent's charges, newest first.
    async fn list_disputes(
        &self,
        payment_intent: &str,
    ) -> Result<Vec<ProviderDispute>, ProviderError>;
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
    /// The PaymentIntent the event carries, for the `payment_intent.*` types paybridge applies.
    pub intent: Option<ProviderIntent>,
    /// The Refund the event carries, for `refund.*` and `charge.refund.updated`.
    pub refund: Option<ProviderRefund>,
    /// The PaymentIntent of the charge a `charge.refunded` event carries: its refunds are read
    /// from the provider (the event's charge does not list them).
    pub refunded_intent: Option<String>,
    /// The Dispute a `charge.dispute.*` event carries.
    pub dispute: Option<ProviderDispute>,
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

/// A position in a newest-first listing (of payments or refunds): the last row of the previous
/// page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListCursor {
    pub created_at: i64,
    /// The row's id (`pay_…` or `ref_…`).
    pub id: String,
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

/// What a webhook event changes, written in one transaction with the event's record.
#[derive(Debug, Clone, Copy)]
pub enum WebhookChange<'a> {
    /// A payment's status (compare-and-set on `from`).
    Payment(&'a StatusChange),
    /// A recorded refund (compare-and-set on `change.from`).
    Refund(RefundUpdate<'a>),
    /// A refund made at Stripe directly, first heard of in this event.
    ExternalRefund(&'a Refund),
    /// A payment's dispute (compare-and-set on the dispute as it was read).
    Dispute(DisputeUpdate<'a>),
}

/// A change of a payment's dispute: written only if the payment's dispute is still `expected`
/// (compare-and-set), with an event of the payment's log.
#[derive(Debug, Clone, Copy)]
pub struct DisputeUpdate<'a> {
    pub payment_id: &'a str,
    pub expected: Option<&'a Dispute>,
    pub dispute: &'a Dispute,
}

/// What a CapturePayment key recorded: the request and the payment it captures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureRecord {
    pub payment_id: String,
    pub tenant: String,
    /// Minor units to capture.
    pub amount: i64,
    pub request_fingerprint: String,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// The captures asked for: at most one per payment, each under its tenant's idempotency key.
#[async_trait]
pub trait CaptureRecords: Send + Sync + std::fmt::Debug + 'static {
    /// Records the intent to capture `record.amount` of a payment under a tenant's key, only if
    /// the payment is `RequiresCapture`, capturable for as much, and has no capture recorded
    /// yet: false when not (nothing written); `Conflict` when the key was taken concurrently.
    async fn insert_capture(
        &self,
        record: &CaptureRecord,
        idempotency_key: &str,
    ) -> Result<bool, StoreError>;

    /// The capture a tenant's key named.
    async fn find_capture_by_key(
        &self,
        tenant: &str,
        idempotency_key: &str,
    ) -> Result<Option<CaptureRecord>, StoreError>;

    /// The capture recorded for a payment, if any.
    async fn find_capture(&self, payment_id: &str) -> Result<Option<CaptureRecord>, StoreError>;

    /// How many payments await capture with `capture_before` before `deadline` (unix ms).
    async fn count_authorizations_expiring(&self, deadline: i64) -> Result<u64, StoreError>;
}

/// The disputes of payments (their `dispute` field) beyond the webhook's own write.
#[async_trait]
pub trait DisputeRecords: Send + Sync + std::fmt::Debug + 'static {
    /// Records a dispute change found by a read at Stripe (compare-and-set on
    /// `update.expected`), with its event; true when it changed.
    async fn apply_dispute(
        &self,
        update: DisputeUpdate<'_>,
        source: EventSource,
        now: i64,
    ) -> Result<bool, StoreError>;

    /// Claims up to `limit` succeeded payments whose dispute is open and that were not looked at
    /// since `checked_before`, marking them looked at `now`.
    async fn claim_open_disputes(
        &self,
        now: i64,
        checked_before: i64,
        limit: u32,
    ) -> Result<Vec<Payment>, StoreError>;
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
    /// A payment's change also records `event.event_created` as its `last_event_created`, and
    /// so does a refund's. `Conflict` when the compare-and-set failed or (for an external
    /// refund) its Stripe id was recorded meanwhile.
    async fn record_webhook_event(
        &self,
        event: &WebhookEventRecord<'_>,
        change: Option<WebhookChange<'_>>,
        now: i64,
    ) -> Result<EventRecorded, StoreError>;
}

/// A change of a recorded refund (see [`RefundRecords::apply_refund_change`]).
#[derive(Debug, Clone, Copy)]
pub struct RefundUpdate<'a> {
    pub refund_id: &'a str,
    pub change: &'a RefundChange,
    /// Stripe's id to attach to a refund still without one (the answer to its create, or its
    /// webhook echo arriving first).
    pub stripe_refund_id: Option<&'a str>,
}

/// Filter and page of [`RefundRecords::list_refunds`].
#[derive(Debug, Clone)]
pub struct RefundListQuery<'a> {
    pub tenant: &'a str,
    pub payment_id: Option<&'a str>,
    pub after: Option<ListCursor>,
    pub limit: u32,
}

/// Refunds as recorded. Every refund change is written in one transaction with its entry in its
/// payment's event log (naming the refund) and with the payment's refund amounts
/// (`amount_refunded`, `amount_refund_pending`), and announced to [`ChangeFeed`] subscribers as a
/// change of its payment once committed.
#[async_trait]
pub trait RefundRecords: Send + Sync + std::fmt::Debug + 'static {
    /// Writes a new refund made through paybridge (in `Creating`) with its idempotency key and
    /// its first event, reserving its amount in the payment's `amount_refund_pending`, in one
    /// transaction, only if the payment is `Succeeded` and what remains refundable
    /// (`amount_received − amount_refunded − amount_refund_pending`) covers the amount. The
    /// check and the reservation are one statement on the payment's row, so concurrent refunds
    /// (on any replica) never reserve more than was received. False when it did not fit (nothing
    /// written); `Conflict` when the tenant's key was taken concurrently.
    async fn insert_refund(
        &self,
        refund: &Refund,
        idempotency_key: &str,
        request_fingerprint: &str,
    ) -> Result<bool, StoreError>;

    /// Records a refund made at Stripe directly (`source` external, with its Stripe id and
    /// status), adding its amount to its payment's amounts without the refundable check (Stripe
    /// made it). False when its Stripe id is recorded already (nothing written).
    async fn insert_external_refund(
        &self,
        refund: &Refund,
        source: EventSource,
        now: i64,
    ) -> Result<bool, StoreError>;

    /// One refund by id, only if it belongs to `tenant` (when given).
    async fn get_refund(
        &self,
        tenant: Option<&str>,
        refund_id: &str,
    ) -> Result<Option<Refund>, StoreError>;

    /// The refund a tenant's idempotency key named, with the fingerprint of the request that
    /// named it.
    async fn find_refund_by_key(
        &self,
        tenant: &str,
        idempotency_key: &str,
    ) -> Result<Option<(String, Refund)>, StoreError>;

    /// The refund recorded for a Stripe refund id.
    async fn find_refund_by_stripe_id(
        &self,
        stripe_refund_id: &str,
    ) -> Result<Option<Refund>, StoreError>;

    /// A tenant's refunds (of one payment, when given), newest first.
    async fn list_refunds(&self, query: RefundListQuery<'_>) -> Result<Vec<Refund>, StoreError>;

    /// Applies a refund change if the refund is still in `update.change.from` (compare-and-set),
    /// with its event and its payment's amounts. Returns the refund as stored afterwards and
    /// whether this call changed it.
    async fn apply_refund_change(
        &self,
        update: RefundUpdate<'_>,
        source: EventSource,
        now: i64,
    ) -> Result<(Refund, bool), StoreError>;

    /// Claims up to `limit` refunds the reconciler should look at (`Creating`, `Pending` or
    /// `RequiresAction`, unchanged since `changed_before`) that no replica holds a lease on, and
    /// leases them until `lease_until`.
    async fn claim_refunds_for_reconcile(
        &self,
        now: i64,
        changed_before: i64,
        lease_until: i64,
        limit: u32,
    ) -> Result<Vec<Refund>, StoreError>;

    /// Leaves a refund alone until `until` (unix ms).
    async fn defer_refund_reconcile(&self, refund_id: &str, until: i64) -> Result<(), StoreError>;

    /// Extends to `lease_until` the lease of those of `refund_ids` still leased until `held`
    /// (the claim's lease, or its last renewal: a refund already deferred or claimed by another
    /// replica is left alone). Returns how many were extended.
    async fn renew_refund_reconcile_claims(
        &self,
        refund_ids: &[String],
        held: i64,
        lease_until: i64,
    ) -> Result<u64, StoreError>;
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

    /// Extends to `lease_until` the lease of those of `payment_ids` still leased until `held`
    /// (the claim's lease, or its last renewal: a payment already deferred or claimed by another
    /// replica is left alone). Returns how many were extended.
    async fn renew_reconcile_claims(
        &self,
        payment_ids: &[String],
        held: i64,
        lease_until: i64,
    ) -> Result<u64, StoreError>;

    /// How many payments are in each of [`TRANSIENT_STATUSES`] and when the oldest of them last
    /// changed: a status that should pass within minutes (`Creating`) or days (`Processing`).
    async fn transient_payments(&self) -> Result<Vec<TransientPayments>, StoreError>;
}

/// The statuses a payment should not stay in for long, watched by the reconciler's gauges.
pub const TRANSIENT_STATUSES: [PaymentStatus; 2] =
    [PaymentStatus::Creating, PaymentStatus::Processing];

/// The payments in one of [`TRANSIENT_STATUSES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransientPayments {
    pub status: PaymentStatus,
    pub count: u64,
    /// The oldest one's last change (unix ms).
    pub oldest_updated_at: i64,
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
    /// first; its refunds' changes, which share its event log, are left out.
    async fn status_events_after(
        &self,
        payment_id: &str,
        after: i64,
    ) -> Result<Vec<StatusEvent>, StoreError>;
}

// --- The event feed (issue 16) ---------------------------------------------------------------

/// A place in the event feed: right after one event. The feed is ordered by (`commit_group`,
/// `event_id`): on PostgreSQL `commit_group` is the writing transaction's id, and only events of
/// transactions older than every transaction still running are read, so an event can never
/// appear before one already read (sequence values are not committed in order); on SQLite (one
/// writer, ids committed in order) it is 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FeedPosition {
    pub commit_group: i64,
    /// `payment_event.payment_event_id`.
    pub event_id: i64,
}

/// What a feed event is about, as it stood right after the change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedObject {
    Payment(Box<Payment>),
    Refund(Box<Refund>),
    /// A change of the payment's dispute: the payment, with its dispute.
    Dispute(Box<Payment>),
}

/// The kinds of feed events, to filter by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FeedEventType {
    PaymentUpdated,
    RefundUpdated,
    DisputeUpdated,
}

/// One committed change in a tenant's feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedEvent {
    pub position: FeedPosition,
    pub tenant: String,
    /// What caused it.
    pub source: EventSource,
    /// Unix milliseconds.
    pub created_at: i64,
    pub object: FeedObject,
}

/// Where a position stands in a tenant's feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PositionState {
    /// An event of this tenant that is still kept.
    Retained,
    /// Older than the oldest event kept (deleted by retention).
    Expired,
    /// No event of this tenant was ever there.
    Unknown,
}

/// Every committed change, per tenant, in one order that never changes once read.
#[async_trait]
pub trait EventFeed: Send + Sync + std::fmt::Debug + 'static {
    /// The tenant's events after `after` (from the oldest kept when `None`), in feed order, at
    /// most `limit`, of `types` (every type when empty). Returns only events that no transaction
    /// still running can precede.
    async fn events_after(
        &self,
        tenant: &str,
        after: Option<FeedPosition>,
        types: &[FeedEventType],
        limit: u32,
    ) -> Result<Vec<FeedEvent>, StoreError>;

    /// Whether `position` names one of the tenant's events, kept or expired.
    async fn position_state(
        &self,
        tenant: &str,
        position: FeedPosition,
    ) -> Result<PositionState, StoreError>;

    /// Deletes events created before `created_before` (unix ms); returns how many.
    async fn delete_events_before(&self, created_before: i64) -> Result<u64, StoreError>;
}

// --- Pushes (issue 16) -----------------------------------------------------------------------

/// Where a tenant's pushes stand, as recorded (one per tenant whose pushes were ever claimed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushDelivery {
    pub tenant: String,
    /// The last event delivered or given up; `None` before the first (pushes start at the oldest
    /// event kept).
    pub position: Option<FeedPosition>,
    /// Failed attempts of the next event (the first after `position`).
    pub attempts: u32,
    /// Unix ms: the next event is not sent before.
    pub next_attempt_at: i64,
    /// Unix ms of the next event's first failed attempt.
    pub first_failure_at: Option<i64>,
    /// Unix ms: the replica sending holds the delivery until then. A claim's value is also its
    /// fence: each claim sets a later one, so a replica that lost its lease writes nothing.
    pub lease_until: Option<i64>,
}

/// What a replica holding a delivery's lease records (see [`PushDeliveries::record_push`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushProgress {
    pub position: Option<FeedPosition>,
    pub attempts: u32,
    pub next_attempt_at: i64,
    pub first_failure_at: Option<i64>,
    /// The lease from now on: a later time to keep sending, `None` to let it go.
    pub lease_until: Option<i64>,
}

/// Each tenant's push delivery, shared by every replica: leases like the reconciler's claims, so
/// one tenant's events are sent by one replica at a time, and a replica that dies loses its
/// lease to another (at least once).
#[async_trait]
pub trait PushDeliveries: Send + Sync + std::fmt::Debug + 'static {
    /// The tenant's delivery as recorded, without claiming it.
    async fn push_delivery(&self, tenant: &str) -> Result<Option<PushDelivery>, StoreError>;

    /// Leases the tenant's delivery until `lease_until` if its next attempt is due at `now` and
    /// no replica holds it (a lease ended before `now` is free), making it first if need be.
    /// `None` when it is not due or held. Replicas claiming at once never both get it.
    async fn claim_push_delivery(
        &self,
        tenant: &str,
        now: i64,
        lease_until: i64,
    ) -> Result<Option<PushDelivery>, StoreError>;

    /// Records `progress` if the delivery is still held under the lease `held` (the
    /// `lease_until` this replica claimed or last recorded). False when the lease was lost:
    /// nothing written, and the caller stops sending.
    async fn record_push(
        &self,
        tenant: &str,
        held: i64,
        progress: &PushProgress,
        now: i64,
    ) -> Result<bool, StoreError>;
}

/// The answer to one push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushOutcome {
    /// A 2xx answer.
    Delivered,
    /// Any other HTTP answer, with its status.
    Refused(u16),
    /// No answer in time.
    TimedOut,
    /// No connection (refused, reset, DNS, TLS).
    Unreachable(String),
}

impl PushOutcome {
    /// A bounded metric label.
    pub fn label(&self) -> &'static str {
        match self {
            PushOutcome::Delivered => "delivered",
            PushOutcome::Refused(_) => "refused",
            PushOutcome::TimedOut => "timeout",
            PushOutcome::Unreachable(_) => "unreachable",
        }
    }
}

/// Sends one event to a tenant's push endpoint: POSTs it as the proto's canonical JSON, signed
/// with `Paybridge-Signature: t=<unix s>,v1=<hex HMAC-SHA256 of "t.body">` and named by
/// `Paybridge-Event-Id`. Every failure is an outcome, never an error: the worker retries.
#[async_trait]
pub trait EventPusher: Send + Sync + std::fmt::Debug + 'static {
    async fn push(
        &self,
        endpoint: &crate::tenants::PushEndpoint,
        event: &FeedEvent,
        now_seconds: i64,
    ) -> PushOutcome;
}

// --- Hosted payment page links (issue 18) ----------------------------------------------------

/// The links to the hosted payment page: each a token's hash, bound to one payment, expiring.
#[async_trait]
pub trait PaymentLinks: Send + Sync + std::fmt::Debug + 'static {
    /// Records a new link (its token's hex SHA-256) of `payment_id`, working until `expires_at`.
    async fn insert_payment_link(
        &self,
        token_sha256: &str,
        payment_id: &str,
        tenant: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<(), StoreError>;

    /// The payment of the link with this hash, if there is one that still works at `now`.
    async fn find_payment_link(
        &self,
        token_sha256: &str,
        now: i64,
    ) -> Result<Option<String>, StoreError>;

    /// Deletes the links that expired before `before`; returns how many.
    async fn delete_expired_payment_links(&self, before: i64) -> Result<u64, StoreError>;
}

/// The whole store the use cases need, one trait object.
pub trait PaymentStore:
    PaymentRecords
    + IdempotencyKeys
    + WebhookEventLog
    + ReconcileClaims
    + CustomerRecords
    + ChangeFeed
    + RefundRecords
    + EventFeed
    + PushDeliveries
    + CaptureRecords
    + DisputeRecords
    + PaymentLinks
{
}

impl<T> PaymentStore for T where
    T: PaymentRecords
        + IdempotencyKeys
        + WebhookEventLog
        + ReconcileClaims
        + CustomerRecords
        + ChangeFeed
        + RefundRecords
        + EventFeed
        + PushDeliveries
        + CaptureRecords
        + DisputeRecords
        + PaymentLinks
{
}

//! Pure domain: no tonic, sqlx or Stripe imports.
//!
//! Input is parsed once, at the edge, into these types; each has a private field, so holding one
//! proves the value was checked. Every refusal is a [`FieldViolation`] naming the gRPC request
//! field it came from.

mod capture;
mod checked_string;
mod customer;
mod description;
mod dispute;
mod ids;
mod metadata;
mod money;
mod payment;
mod payment_link;
mod redirect;
mod refund;
mod return_outcome;
mod return_query;
mod status;
mod validation;

pub use capture::{CancellationReason, CaptureMethod, DEFAULT_AUTHORIZATION_VALIDITY_MS};
pub use customer::{Customer, CustomerName, Email, StripeCustomerId};
pub use description::Description;
pub use dispute::{Dispute, DisputeStatus, DisputeVerdict, observe_dispute};
pub use ids::{IdempotencyKey, InvoiceId, PaymentId, RefundId, TenantId};
pub use metadata::{Metadata, refund_stripe_metadata};
pub use money::{Amount, Currency, Money};
pub use payment::{
    EventSource, EventVerdict, IntentMismatch, LastPaymentError, Observation,
    PAYMENT_ID_METADATA_KEY, Payment, StatusChange,
};
pub use payment_link::{LinkTtl, PAYMENT_LINK_TOKEN_LEN, PaymentLinkToken};
pub use redirect::{RedirectOrigin, RedirectUrl};
pub use refund::{
    REFUND_ID_METADATA_KEY, Refund, RefundAmounts, RefundBucket, RefundChange, RefundObservation,
    RefundReason, RefundSource, RefundStatus, RefundVerdict,
};
pub use return_outcome::ReturnOutcome;
pub use return_query::{ReturnQuery, ReturnQueryField};
pub use status::PaymentStatus;
pub use validation::{FieldViolation, ValidationError};

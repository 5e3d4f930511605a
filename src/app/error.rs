//! The use cases' error: one variant per answer a caller can get. Only the transport layer turns
//! it into a gRPC status.

use crate::app::ports::{ProviderError, StoreError};
use crate::domain::{DisputeStatus, IntentMismatch, PaymentStatus, ValidationError};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Bad input. → `INVALID_ARGUMENT` with `BadRequest` field violations.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// No such payment for this caller (also when it exists but is another tenant's).
    /// → `NOT_FOUND`.
    #[error("payment not found")]
    NotFound,
    /// No such refund for this caller (also when it exists but is another tenant's).
    /// → `NOT_FOUND`.
    #[error("refund not found")]
    RefundNotFound,
    /// Only a succeeded payment can be refunded. → `FAILED_PRECONDITION` `NOT_REFUNDABLE`.
    #[error("payment is {status} and cannot be refunded; only a succeeded payment can")]
    NotRefundable { status: PaymentStatus },
    /// The refund asks for more than remains refundable (what the payment received less its
    /// refunds that succeeded or are not final yet). → `FAILED_PRECONDITION`
    /// `REFUND_EXCEEDS_REMAINING`.
    #[error("refund of {requested} exceeds what remains refundable ({refundable})")]
    RefundExceedsRemaining { requested: i64, refundable: i64 },
    /// Only a payment in `RequiresCapture` without a capture under way can be captured.
    /// → `FAILED_PRECONDITION` `NOT_CAPTURABLE`.
    #[error("payment is {status} and cannot be captured; only an authorized payment can, once")]
    NotCapturable { status: PaymentStatus },
    /// The payment's dispute forbids a refund (open and the charge not refundable, or lost).
    /// → `FAILED_PRECONDITION` `PAYMENT_DISPUTED`.
    #[error("payment's dispute is {status}; it cannot be refunded")]
    PaymentDisputed { status: DisputeStatus },
    /// Stripe refused the refund; it is recorded as failed and its amount is refundable again.
    /// → `FAILED_PRECONDITION` `STRIPE_REFUSED`.
    #[error("Stripe refused the refund: {message}")]
    RefundRejected { message: String },
    /// The idempotency key was used before with a different request. → `FAILED_PRECONDITION`.
    #[error("idempotency key was already used with a different request")]
    IdempotencyKeyReused,
    /// The invoice has a succeeded payment: the double-charge guard. → `FAILED_PRECONDITION`.
    #[error("invoice is already paid by payment {payment_id}")]
    AlreadyPaid { payment_id: String },
    /// The invoice has an open payment for another amount or currency. → `FAILED_PRECONDITION`.
    #[error(
        "invoice has an open payment {payment_id} for a different amount or currency; cancel it first"
    )]
    InvoiceHasOpenPayment { payment_id: String },
    /// The payment is in a status that does not allow the operation. → `FAILED_PRECONDITION`.
    #[error("payment is {status} and cannot be cancelled")]
    NotCancelable { status: PaymentStatus },
    /// A hosted page link was asked for a payment that succeeded or was cancelled.
    /// → `FAILED_PRECONDITION` `PAYMENT_NOT_OPEN`.
    #[error("payment is {status}: a payment link is only made for an open payment")]
    PaymentNotOpen { status: PaymentStatus },
    /// Stripe refused to create the payment (for example an unknown customer); the payment is
    /// recorded as cancelled. → `FAILED_PRECONDITION`.
    #[error("Stripe refused the payment: {message}")]
    ProviderRejected { message: String },
    /// Stripe could not be reached; retry later with the same idempotency key. → `UNAVAILABLE`.
    #[error("Stripe is unavailable; retry with the same idempotency key")]
    ProviderUnavailable(#[source] ProviderError),
    /// The database could not be reached. → `UNAVAILABLE`.
    #[error("database unavailable")]
    StoreUnavailable(#[source] StoreError),
    /// The intent at Stripe is not this payment's (amount, currency or metadata differ): nothing
    /// is recorded. → `INTERNAL` (VerifyReturn answers REJECTED instead).
    #[error("the PaymentIntent at Stripe does not match the payment: {0}")]
    IntentMismatch(IntentMismatch),
    /// The event cursor is older than the events kept (`PAYBRIDGE_EVENT_RETENTION`): what came
    /// after it is gone. → `FAILED_PRECONDITION` `CURSOR_EXPIRED`.
    #[error("the cursor is older than the events kept; start again from an empty cursor")]
    CursorExpired,
    /// A setting the operation needs is missing. → `FAILED_PRECONDITION`.
    #[error("not configured: {0}")]
    NotConfigured(String),
    /// Anything else: logged with its cause, answered without it. → `INTERNAL`.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for AppError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(_) => AppError::StoreUnavailable(error),
            other => AppError::Internal(error_chain(&other)),
        }
    }
}

impl From<ProviderError> for AppError {
    fn from(error: ProviderError) -> Self {
        match error {
            ProviderError::Unavailable(_) => AppError::ProviderUnavailable(error),
            ProviderError::Rejected { message, .. } => AppError::ProviderRejected { message },
            ProviderError::NotFound | ProviderError::Unexpected(_) => {
                AppError::Internal(error.to_string())
            }
        }
    }
}

/// An error and its sources, one line.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

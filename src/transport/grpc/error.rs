//! `AppError` → `tonic::Status`. Internal causes are logged here and never sent to the caller.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::app::AppError;
use crate::app::error_chain;

impl From<AppError> for Status {
    fn from(error: AppError) -> Status {
        match error {
            AppError::Invalid(invalid) => {
                let violations: Vec<FieldViolation> = invalid
                    .violations
                    .iter()
                    .map(|v| FieldViolation::new(v.field.clone(), v.description.clone()))
                    .collect();
                Status::with_error_details(
                    Code::InvalidArgument,
                    invalid.to_string(),
                    ErrorDetails::with_bad_request(violations),
                )
            }
            AppError::NotFound => Status::not_found("payment not found"),
            AppError::RefundNotFound => Status::not_found("refund not found"),
            AppError::NotRefundable { .. } => precondition(&error, "NOT_REFUNDABLE", "payment_id"),
            AppError::RefundExceedsRemaining { .. } => {
                precondition(&error, "REFUND_EXCEEDS_REMAINING", "amount")
            }
            AppError::RefundRejected { .. } => precondition(&error, "STRIPE_REFUSED", "stripe"),
            AppError::IdempotencyKeyReused => {
                precondition(&error, "IDEMPOTENCY_KEY_REUSED", "idempotency_key")
            }
            AppError::AlreadyPaid { .. } => precondition(&error, "ALREADY_PAID", "invoice_id"),
            AppError::InvoiceHasOpenPayment { .. } => {
                precondition(&error, "INVOICE_HAS_OPEN_PAYMENT", "invoice_id")
            }
            AppError::CursorExpired => precondition(&error, "CURSOR_EXPIRED", "after_cursor"),
            AppError::NotCancelable { .. } => precondition(&error, "NOT_CANCELABLE", "id"),
            AppError::NotCapturable { .. } => precondition(&error, "NOT_CAPTURABLE", "payment_id"),
            AppError::PaymentDisputed { .. } => {
                precondition(&error, "PAYMENT_DISPUTED", "payment_id")
            }
            AppError::PaymentNotOpen { .. } => {
                precondition(&error, "PAYMENT_NOT_OPEN", "payment_id")
            }
            AppError::ProviderRejected { .. } => precondition(&error, "STRIPE_REFUSED", "stripe"),
            AppError::NotConfigured(_) => {
                tracing::error!(%error, "operation needs a setting");
                precondition(&error, "NOT_CONFIGURED", "configuration")
            }
            AppError::ProviderUnavailable(ref cause) => {
                tracing::warn!(error = %error_chain(cause), "Stripe unavailable");
                Status::unavailable(error.to_string())
            }
            AppError::StoreUnavailable(ref cause) => {
                tracing::error!(error = %error_chain(cause), "database unavailable");
                Status::unavailable("database unavailable; retry later")
            }
            AppError::IntentMismatch(ref mismatch) => {
                tracing::error!(%mismatch, "intent mismatch");
                Status::internal("the PaymentIntent at Stripe does not match the payment")
            }
            AppError::Internal(ref cause) => {
                tracing::error!(error = %cause, "internal error");
                Status::internal("internal error")
            }
        }
    }
}

fn precondition(error: &AppError, kind: &str, subject: &str) -> Status {
    let description = error.to_string();
    Status::with_error_details(
        Code::FailedPrecondition,
        description.clone(),
        ErrorDetails::with_precondition_failure_violation(kind, subject, description),
    )
}

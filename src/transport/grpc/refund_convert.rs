//! proto ⇄ domain conversion of refunds.

use super::convert::{decode_cursor, page_size, timestamp};
use crate::app::{ListRefundsQuery, RefundCommand};
use crate::domain::{
    Amount, FieldViolation, IdempotencyKey, Metadata, PaymentId, Refund, RefundId, RefundReason,
    RefundSource, RefundStatus, ValidationError,
};
use crate::pb::v1 as pb;

/// Parses RefundPayment, reporting every bad field at once.
pub(super) fn refund_command(
    request: pb::RefundPaymentRequest,
) -> Result<RefundCommand, ValidationError> {
    match (
        IdempotencyKey::parse(&request.idempotency_key),
        PaymentId::parse_field(&request.payment_id, "payment_id"),
        refund_amount(request.amount),
        refund_reason(request.reason),
        Metadata::parse(request.metadata),
    ) {
        (Ok(idempotency_key), Ok(payment_id), Ok(amount), Ok(reason), Ok(metadata)) => {
            Ok(RefundCommand {
                idempotency_key,
                payment_id,
                amount,
                reason,
                metadata,
            })
        }
        (idempotency_key, payment_id, amount, reason, metadata) => Err(ValidationError::collect([
            idempotency_key.err(),
            payment_id.err(),
            amount.err(),
            reason.err(),
            metadata.err(),
        ])),
    }
}

/// 0 means all that remains; otherwise the limits of a payment's amount.
fn refund_amount(raw: i64) -> Result<Option<Amount>, FieldViolation> {
    match raw {
        0 => Ok(None),
        ..0 => Err(FieldViolation::new(
            "amount",
            "must not be negative (0 refunds all that remains)",
        )),
        _ => Amount::parse(raw).map(Some),
    }
}

fn refund_reason(raw: i32) -> Result<Option<RefundReason>, FieldViolation> {
    match pb::RefundReason::try_from(raw) {
        Ok(pb::RefundReason::Unspecified) => Ok(None),
        Ok(pb::RefundReason::RequestedByCustomer) => Ok(Some(RefundReason::RequestedByCustomer)),
        Ok(pb::RefundReason::Duplicate) => Ok(Some(RefundReason::Duplicate)),
        Ok(pb::RefundReason::Fraudulent) => Ok(Some(RefundReason::Fraudulent)),
        Err(_) => Err(FieldViolation::new("reason", "unknown refund reason")),
    }
}

/// Parses a refund id from GetRefund's `id`.
pub(super) fn refund_id(raw: &str) -> Result<RefundId, ValidationError> {
    RefundId::parse(raw).map_err(ValidationError::from)
}

/// Parses ListRefunds, reporting every bad field at once.
pub(super) fn list_refunds_query(
    request: pb::ListRefundsRequest,
) -> Result<ListRefundsQuery, ValidationError> {
    let payment_id = if request.payment_id.is_empty() {
        Ok(None)
    } else {
        PaymentId::parse_field(&request.payment_id, "payment_id").map(Some)
    };
    match (
        payment_id,
        page_size(request.page_size),
        decode_cursor(&request.page_token, |id| RefundId::parse(id).is_ok()),
    ) {
        (Ok(payment_id), Ok(page_size), Ok(after)) => Ok(ListRefundsQuery {
            payment_id,
            page_size,
            after,
        }),
        (payment_id, page_size, after) => Err(ValidationError::collect([
            payment_id.err(),
            page_size.err(),
            after.err(),
        ])),
    }
}

fn status_to_proto(status: RefundStatus) -> pb::RefundStatus {
    match status {
        RefundStatus::Creating => pb::RefundStatus::Creating,
        RefundStatus::Pending => pb::RefundStatus::Pending,
        RefundStatus::RequiresAction => pb::RefundStatus::RequiresAction,
        RefundStatus::Succeeded => pb::RefundStatus::Succeeded,
        RefundStatus::Failed => pb::RefundStatus::Failed,
        RefundStatus::Canceled => pb::RefundStatus::Canceled,
    }
}

fn reason_to_proto(reason: Option<RefundReason>) -> pb::RefundReason {
    match reason {
        None => pb::RefundReason::Unspecified,
        Some(RefundReason::RequestedByCustomer) => pb::RefundReason::RequestedByCustomer,
        Some(RefundReason::Duplicate) => pb::RefundReason::Duplicate,
        Some(RefundReason::Fraudulent) => pb::RefundReason::Fraudulent,
    }
}

pub(super) fn refund_to_proto(refund: Refund) -> pb::Refund {
    pb::Refund {
        status: status_to_proto(refund.status).into(),
        reason: reason_to_proto(refund.reason).into(),
        source: match refund.source {
            RefundSource::Api => pb::RefundSource::Api,
            RefundSource::External => pb::RefundSource::External,
        }
        .into(),
        created_at: Some(timestamp(refund.created_at)),
        updated_at: Some(timestamp(refund.updated_at)),
        metadata: refund.metadata.into_iter().collect(),
        id: refund.id,
        payment_id: refund.payment_id,
        tenant: refund.tenant,
        amount: refund.amount,
        currency: refund.currency,
        stripe_refund_id: refund.stripe_refund_id.unwrap_or_default(),
        failure_reason: refund.failure_reason.unwrap_or_default(),
    }
}

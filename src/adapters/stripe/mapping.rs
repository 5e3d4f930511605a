//! From async-stripe's types to the port's types, and error mapping.

use std::collections::BTreeMap;

use stripe_shared::{PaymentIntent, PaymentIntentStatus, Refund};

use super::transport::StripeHttpError;
use crate::app::ports::{
    LastPaymentError, ProviderCharge, ProviderDispute, ProviderError, ProviderIntent,
    ProviderRefund,
};
use crate::domain::{Dispute, DisputeStatus, PaymentStatus, RefundReason, RefundStatus};

/// Stripe's PaymentIntent status onto the local status.
///
/// Every variant async-stripe 1.0.0-rc.10 knows is named. The crate marks the enum
/// `#[non_exhaustive]`, so the compiler insists on a final catch-all arm; it, like `Unknown(..)`,
/// is an answer we cannot interpret.
pub(crate) fn map_status(status: &PaymentIntentStatus) -> Result<PaymentStatus, ProviderError> {
    match status {
        PaymentIntentStatus::RequiresPaymentMethod => Ok(PaymentStatus::RequiresPaymentMethod),
        PaymentIntentStatus::RequiresConfirmation => Ok(PaymentStatus::RequiresConfirmation),
        PaymentIntentStatus::RequiresAction => Ok(PaymentStatus::RequiresAction),
        PaymentIntentStatus::Processing => Ok(PaymentStatus::Processing),
        PaymentIntentStatus::RequiresCapture => Ok(PaymentStatus::RequiresCapture),
        PaymentIntentStatus::Succeeded => Ok(PaymentStatus::Succeeded),
        PaymentIntentStatus::Canceled => Ok(PaymentStatus::Canceled),
        PaymentIntentStatus::Unknown(other) => Err(ProviderError::Unexpected(format!(
            "unknown PaymentIntent status `{other}`"
        ))),
        other => Err(ProviderError::Unexpected(format!(
            "PaymentIntent status `{}` is not mapped",
            other.as_str()
        ))),
    }
}

pub(crate) fn to_provider_intent(pi: PaymentIntent) -> Result<ProviderIntent, ProviderError> {
    let status = map_status(&pi.status)?;
    let last_payment_error = pi.last_payment_error.map(|e| LastPaymentError {
        code: e
            .code
            .as_ref()
            .map(|c| c.as_str().to_owned())
            .or(e.decline_code.clone()),
        message: e.message.clone(),
    });
    // Only an expanded charge says when its authorization lapses.
    let capture_before = match &pi.latest_charge {
        Some(stripe_types::Expandable::Object(charge)) => charge
            .payment_method_details
            .as_ref()
            .and_then(|details| details.card.as_ref())
            .and_then(|card| card.capture_before)
            .map(|seconds| seconds.saturating_mul(1000)),
        _ => None,
    };
    Ok(ProviderIntent {
        id: pi.id.as_str().to_owned(),
        status,
        amount: pi.amount,
        currency: pi.currency.to_string(),
        client_secret: pi.client_secret,
        metadata: pi.metadata.into_iter().collect::<BTreeMap<_, _>>(),
        last_payment_error,
        amount_received: pi.amount_received,
        amount_capturable: pi.amount_capturable,
        capture_before,
        cancellation_reason: pi
            .cancellation_reason
            .as_ref()
            .map(|reason| reason.as_str().to_owned()),
        latest_charge: pi
            .latest_charge
            .as_ref()
            .map(|charge| charge.id().as_str().to_owned()),
    })
}

/// Stripe's Refund status onto the local status. async-stripe 1.0.0-rc.10 leaves it a string;
/// each of Stripe's five values is named, anything else is an answer we cannot interpret (never
/// `creating`, which is ours).
pub(crate) fn map_refund_status(status: Option<&str>) -> Result<RefundStatus, ProviderError> {
    match status {
        Some("pending") => Ok(RefundStatus::Pending),
        Some("requires_action") => Ok(RefundStatus::RequiresAction),
        Some("succeeded") => Ok(RefundStatus::Succeeded),
        Some("failed") => Ok(RefundStatus::Failed),
        Some("canceled") => Ok(RefundStatus::Canceled),
        Some(other) => Err(ProviderError::Unexpected(format!(
            "unknown Refund status `{other}`"
        ))),
        None => Err(ProviderError::Unexpected(
            "a Refund without a status".to_owned(),
        )),
    }
}

/// Stripe's refund reason onto ours: the three a caller can give. `expired_uncaptured_charge`
/// (Stripe's own, for an authorisation that lapsed) and reasons Stripe may add are no reason of
/// ours. The crate marks the enum `#[non_exhaustive]`, hence the final catch-all.
pub(crate) fn map_refund_reason(reason: &stripe_shared::RefundReason) -> Option<RefundReason> {
    use stripe_shared::RefundReason as Stripe;
    match reason {
        Stripe::RequestedByCustomer => Some(RefundReason::RequestedByCustomer),
        Stripe::Duplicate => Some(RefundReason::Duplicate),
        Stripe::Fraudulent => Some(RefundReason::Fraudulent),
        Stripe::ExpiredUncapturedCharge | Stripe::Unknown(_) => None,
        _ => None,
    }
}

pub(crate) fn to_provider_refund(refund: Refund) -> Result<ProviderRefund, ProviderError> {
    let status = map_refund_status(refund.status.as_deref())?;
    Ok(ProviderRefund {
        id: refund.id.as_str().to_owned(),
        payment_intent: refund
            .payment_intent
            .as_ref()
            .map(|intent| intent.id().as_str().to_owned()),
        amount: refund.amount,
        currency: refund.currency.to_string(),
        status,
        reason: refund.reason.as_ref().and_then(map_refund_reason),
        failure_reason: refund.failure_reason,
        releases_uncaptured: matches!(
            refund.reason,
            Some(stripe_shared::RefundReason::ExpiredUncapturedCharge)
        ),
        metadata: refund.metadata.unwrap_or_default().into_iter().collect(),
        created: refund.created,
    })
}

/// Stripe's Dispute status onto ours; each of Stripe's eight values is named.
pub(crate) fn map_dispute_status(status: &str) -> Result<DisputeStatus, ProviderError> {
    status
        .parse()
        .map_err(|()| ProviderError::Unexpected(format!("unknown Dispute status `{status}`")))
}

/// A Dispute as paybridge reads it: the fields it keeps, by serde (Stripe adds fields to
/// disputes often; evidence and balance transactions are not read).
#[derive(serde::Deserialize)]
pub(crate) struct DisputeObject {
    id: String,
    object: String,
    amount: i64,
    currency: String,
    status: String,
    reason: String,
    is_charge_refundable: bool,
    #[serde(default)]
    payment_intent: Option<serde_json::Value>,
    #[serde(default)]
    charge: Option<serde_json::Value>,
    #[serde(default)]
    evidence_details: Option<EvidenceDetails>,
}

/// The id of an expandable field: the id itself, or the expanded object's `id`.
fn expandable_id(
    value: Option<serde_json::Value>,
    field: &str,
) -> Result<Option<String>, ProviderError> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(id)) => Ok(Some(id)),
        Some(serde_json::Value::Object(object)) => match object.get("id") {
            Some(serde_json::Value::String(id)) => Ok(Some(id.clone())),
            _ => Err(ProviderError::Unexpected(format!(
                "an expanded {field} has no id"
            ))),
        },
        Some(_) => Err(ProviderError::Unexpected(format!(
            "{field} is neither an id nor an object"
        ))),
    }
}

/// A Charge as paybridge reads it, by serde: its intent, and when an authorization lapses.
#[derive(serde::Deserialize)]
pub(crate) struct ChargeObject {
    id: String,
    object: String,
    #[serde(default)]
    payment_intent: Option<serde_json::Value>,
    #[serde(default)]
    payment_method_details: Option<ChargeMethodDetails>,
}

#[derive(serde::Deserialize)]
struct ChargeMethodDetails {
    #[serde(default)]
    card: Option<ChargeCard>,
}

#[derive(serde::Deserialize)]
struct ChargeCard {
    #[serde(default)]
    capture_before: Option<i64>,
}

/// The fields of a Charge paybridge reads.
pub(crate) const CHARGE_REQUIRED: &[(&str, Kind)] =
    &[("id", Kind::String), ("object", Kind::String)];

pub(crate) fn to_provider_charge(object: ChargeObject) -> Result<ProviderCharge, ProviderError> {
    if object.object != "charge" {
        return Err(ProviderError::Unexpected(format!(
            "not a Charge: object `{}`",
            object.object
        )));
    }
    Ok(ProviderCharge {
        payment_intent: expandable_id(object.payment_intent, "payment_intent")?,
        capture_before: object
            .payment_method_details
            .and_then(|details| details.card)
            .and_then(|card| card.capture_before)
            .map(|seconds| seconds.saturating_mul(1000)),
        id: object.id,
    })
}

#[derive(serde::Deserialize)]
struct EvidenceDetails {
    #[serde(default)]
    due_by: Option<i64>,
}

/// The fields of a Dispute paybridge reads.
pub(crate) const DISPUTE_REQUIRED: &[(&str, Kind)] = &[
    ("id", Kind::String),
    ("object", Kind::String),
    ("amount", Kind::Integer),
    ("currency", Kind::String),
    ("status", Kind::String),
    ("reason", Kind::String),
    ("is_charge_refundable", Kind::Bool),
];

pub(crate) fn to_provider_dispute(object: DisputeObject) -> Result<ProviderDispute, ProviderError> {
    if object.object != "dispute" || !object.id.starts_with("dp_") {
        return Err(ProviderError::Unexpected(format!(
            "not a Dispute: object `{}`",
            object.object
        )));
    }
    Ok(ProviderDispute {
        payment_intent: expandable_id(object.payment_intent, "payment_intent")?,
        charge: expandable_id(object.charge, "charge")?,
        currency: object.currency.to_ascii_lowercase(),
        dispute: Dispute {
            status: map_dispute_status(&object.status)?,
            id: object.id,
            reason: object.reason,
            amount: object.amount,
            evidence_due_by: object
                .evidence_details
                .and_then(|details| details.due_by)
                .map(|seconds| seconds.saturating_mul(1000)),
            is_charge_refundable: object.is_charge_refundable,
        },
    })
}

/// The transport or Stripe error onto the port's error.
pub(crate) fn map_http_error(error: StripeHttpError) -> ProviderError {
    match error {
        StripeHttpError::Status { status: 404, .. } => ProviderError::NotFound,
        StripeHttpError::Status {
            status,
            code,
            message,
        } if (400..500).contains(&status) && status != 429 && status != 409 => {
            ProviderError::Rejected {
                status,
                code,
                message,
            }
        }
        // 409/429/5xx that Stripe said not to retry, or a retryable error out of retries.
        e @ StripeHttpError::Status {
            status: 409 | 429 | 500..=599,
            ..
        } => ProviderError::Unavailable(e.to_string()),
        e @ (StripeHttpError::Exhausted { .. }
        | StripeHttpError::OverBudget
        | StripeHttpError::Connection(_)
        | StripeHttpError::Timeout(_)) => ProviderError::Unavailable(e.to_string()),
        e @ (StripeHttpError::Status { .. }
        | StripeHttpError::Build(_)
        | StripeHttpError::Deserialize(_)) => ProviderError::Unexpected(e.to_string()),
    }
}

/// JSON kinds of the fields async-stripe requires (non-`Option` in its structs).
#[derive(Clone, Copy)]
pub(crate) enum Kind {
    Integer,
    String,
    Bool,
    Object,
    Array,
}

impl Kind {
    fn matches(self, v: &serde_json::Value) -> bool {
        match self {
            Kind::Integer => v.is_i64(),
            Kind::String => v.is_string(),
            Kind::Bool => v.is_boolean(),
            Kind::Object => v.is_object(),
            Kind::Array => v.is_array(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Integer => "an integer",
            Kind::String => "a string",
            Kind::Bool => "a boolean",
            Kind::Object => "an object",
            Kind::Array => "an array",
        }
    }
}

/// The fields `stripe_shared::PaymentIntent` (1.0.0-rc.10) cannot do without.
pub(crate) const PAYMENT_INTENT_REQUIRED: &[(&str, Kind)] = &[
    ("amount", Kind::Integer),
    ("amount_capturable", Kind::Integer),
    ("amount_received", Kind::Integer),
    ("capture_method", Kind::String),
    ("confirmation_method", Kind::String),
    ("created", Kind::Integer),
    ("currency", Kind::String),
    ("id", Kind::String),
    ("livemode", Kind::Bool),
    ("metadata", Kind::Object),
    ("payment_method_types", Kind::Array),
    ("status", Kind::String),
];

/// The fields `stripe_shared::Customer` (1.0.0-rc.10) cannot do without.
pub(crate) const CUSTOMER_REQUIRED: &[(&str, Kind)] = &[
    ("created", Kind::Integer),
    ("id", Kind::String),
    ("livemode", Kind::Bool),
];

/// The fields `stripe_shared::Refund` (1.0.0-rc.10) cannot do without.
pub(crate) const REFUND_REQUIRED: &[(&str, Kind)] = &[
    ("amount", Kind::Integer),
    ("created", Kind::Integer),
    ("currency", Kind::String),
    ("id", Kind::String),
];

/// The fields of a list (`stripe_types::List`); its items' are [`REFUND_REQUIRED`].
pub(crate) const LIST_REQUIRED: &[(&str, Kind)] = &[
    ("data", Kind::Array),
    ("has_more", Kind::Bool),
    ("url", Kind::String),
];

/// async-stripe parses with miniserde, which only says "error deserializing request data".
/// Re-read the body with serde_json and name what is missing or mistyped.
pub(crate) fn explain_parse_failure(
    type_name: &str,
    body: Option<&[u8]>,
    required: &[(&str, Kind)],
) -> ProviderError {
    explain(type_name, body, |map| {
        let mut problems = field_problems(map, required, "");
        if let Some(err) = map.get("last_payment_error").filter(|v| !v.is_null())
            && err.get("type").is_none_or(|t| !t.is_string())
        {
            problems.push("`last_payment_error.type` is missing".to_owned());
        }
        problems
    })
}

/// Like [`explain_parse_failure`] for a list (`{"data": [...], "has_more": …, "url": …}`) whose
/// items need `item_required`; an item's problem is named with its index, `data[3].amount`.
pub(crate) fn explain_list_parse_failure(
    type_name: &str,
    body: Option<&[u8]>,
    item_required: &[(&str, Kind)],
) -> ProviderError {
    explain(type_name, body, |map| {
        let mut problems = field_problems(map, LIST_REQUIRED, "");
        if let Some(serde_json::Value::Array(items)) = map.get("data") {
            for (i, item) in items.iter().enumerate() {
                match item {
                    serde_json::Value::Object(item) => {
                        problems.extend(field_problems(item, item_required, &format!("data[{i}].")))
                    }
                    _ => problems.push(format!("`data[{i}]` is not an object")),
                }
            }
        }
        problems
    })
}

fn explain(
    type_name: &str,
    body: Option<&[u8]>,
    problems: impl FnOnce(&serde_json::Map<String, serde_json::Value>) -> Vec<String>,
) -> ProviderError {
    let detail = match body {
        None => "the response body was not kept".to_owned(),
        Some(body) => match serde_json::from_slice::<serde_json::Value>(body) {
            Err(e) => format!("the body is not JSON ({} bytes): {e}", body.len()),
            Ok(serde_json::Value::Object(map)) => {
                let problems = problems(&map);
                if problems.is_empty() {
                    "every required top-level field is present; a nested object or a field's \
                     type does not match async-stripe's definition"
                        .to_owned()
                } else {
                    problems.join(", ")
                }
            }
            Ok(_) => "the body is JSON but not an object".to_owned(),
        },
    };
    ProviderError::Unexpected(format!(
        "could not parse the {type_name} Stripe sent: {detail}"
    ))
}

/// What is missing, null or of the wrong kind among `required` in `map` (field names prefixed
/// with `prefix`).
fn field_problems(
    map: &serde_json::Map<String, serde_json::Value>,
    required: &[(&str, Kind)],
    prefix: &str,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (field, kind) in required {
        match map.get(*field) {
            None => problems.push(format!("`{prefix}{field}` is missing")),
            Some(serde_json::Value::Null) => problems.push(format!("`{prefix}{field}` is null")),
            Some(v) if !kind.matches(v) => {
                problems.push(format!("`{prefix}{field}` is not {}", kind.name()))
            }
            Some(_) => {}
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16) -> StripeHttpError {
        StripeHttpError::Status {
            status,
            code: Some("some_code".to_owned()),
            message: "m".to_owned(),
        }
    }

    #[test]
    fn http_errors_map_onto_provider_errors() {
        assert!(matches!(
            map_http_error(status(404)),
            ProviderError::NotFound
        ));
        assert!(matches!(
            map_http_error(status(402)),
            ProviderError::Rejected { status: 402, .. }
        ));
        for s in [409, 429, 500, 503] {
            assert!(matches!(
                map_http_error(status(s)),
                ProviderError::Unavailable(_)
            ));
        }
        assert!(matches!(
            map_http_error(status(302)),
            ProviderError::Unexpected(_)
        ));
        assert!(matches!(
            map_http_error(StripeHttpError::Timeout(std::time::Duration::from_secs(1))),
            ProviderError::Unavailable(_)
        ));
        assert!(matches!(
            map_http_error(StripeHttpError::Exhausted {
                attempts: 3,
                last: Box::new(status(500)),
            }),
            ProviderError::Unavailable(_)
        ));
    }
}
